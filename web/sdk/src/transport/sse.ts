/**
 * Server-Sent Events (`GET /v1/events`) for what the server sends, REST for what the client
 * sends. `EventSource` cannot send headers, so each (re)connect takes a fresh single-use
 * ticket (`POST /v1/tickets`, good for 30 s) and passes the client's own cursors in
 * `?cursors=` rather than relying on `Last-Event-ID`: the cursors travel with the client, so
 * it can come from (or go to) any transport. The browser's own reconnect is never used: on
 * the first error the source is closed and the client reconnects with backoff.
 */
import type { Api } from "../api.js";
import { NatterError } from "../errors.js";
import type { ConversationId, Seq } from "../types.js";
import { type Conn, type ConnHandlers, type Drop, DropError, encodeCursors, FrameGate, parseFrame, type Ready } from "./conn.js";
import { RestOps } from "./rest.js";

/** An EventSource constructor: the browser's global, or the `eventsource` package's. */
export type EventSourceConstructor = new (url: string) => unknown;

interface EventSourceLike {
  onmessage: ((ev: { data: unknown }) => void) | null;
  onerror: ((ev: { code?: number; message?: string }) => void) | null;
  close(): void;
}

export class SseConn extends RestOps implements Conn {
  readonly transport = "sse";
  readonly ready: Ready;
  private readonly es: EventSourceLike;
  private readonly gate = new FrameGate();

  private constructor(api: Api, es: EventSourceLike, ready: Ready) {
    super(api);
    this.es = es;
    this.ready = ready;
    es.onmessage = (ev) => {
      const frame = parseFrame(ev.data);
      if (frame) this.gate.frame(frame);
    };
    es.onerror = (ev) => {
      this.es.close();
      this.gate.closed({ reason: `event stream ended${ev?.code ? ` (HTTP ${ev.code})` : ""}` });
    };
  }

  static async open(
    api: Api,
    Ctor: EventSourceConstructor,
    cursors: ReadonlyMap<ConversationId, Seq>,
    limit: number | undefined,
    timeoutMs: number,
  ): Promise<SseConn> {
    let ticket: string;
    try {
      ticket = (await api.ticket(AbortSignal.timeout(timeoutMs))).ticket;
    } catch (err) {
      if (err instanceof NatterError && err.code === "unauthenticated") {
        throw new DropError({ reason: "the server refused the token", unauthenticated: true });
      }
      throw new DropError({ reason: `ticket: ${(err as Error).message}` });
    }
    const query = new URLSearchParams({ ticket });
    const encoded = encodeCursors(cursors);
    if (encoded) query.set("cursors", encoded);
    if (limit !== undefined) query.set("limit", String(limit));
    const url = `${api.baseUrl}/v1/events?${query.toString()}`;
    return new Promise<SseConn>((resolve, reject) => {
      let es: EventSourceLike;
      try {
        es = new Ctor(url) as EventSourceLike;
      } catch (err) {
        reject(new DropError({ reason: `event source: ${(err as Error)?.message}` }));
        return;
      }
      let settled = false;
      const fail = (drop: Drop): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        es.onmessage = es.onerror = null;
        es.close();
        reject(new DropError(drop));
      };
      const timer = setTimeout(() => fail({ reason: "connect timed out" }), timeoutMs);
      // Entries may follow `ready` at once: the new conn's gate holds them until it starts.
      let conn: SseConn | undefined;
      es.onerror = (ev) => fail({ reason: `event stream refused${ev?.code ? ` (HTTP ${ev.code})` : ""}` });
      es.onmessage = (ev) => {
        if (conn) return;
        const frame = parseFrame(ev.data);
        if (!frame) return fail({ reason: "expected ready, got something unreadable" });
        if (frame.type !== "ready") return fail({ reason: `expected ready, got ${frame.type}` });
        settled = true;
        clearTimeout(timer);
        const ready: Ready = { user_id: frame.user_id, device_id: frame.device_id };
        if (frame.session_id !== undefined) ready.session_id = frame.session_id;
        conn = new SseConn(api, es, ready);
        resolve(conn);
      };
    });
  }

  start(handlers: ConnHandlers): void {
    this.gate.start(handlers);
  }

  close(): void {
    this.gate.end();
    this.es.onmessage = this.es.onerror = null;
    this.es.close();
  }
}
