/**
 * Long-polling (`POST /v1/poll`) for what the server sends, REST for what the client sends.
 * Each poll carries the client's cursors (the request's cursors are the truth: a lost answer
 * is simply polled again), so the stream resumes exactly where the client is, on any node.
 * The `stream` keeps receipts, typing and presence between polls; when it lapsed (or the
 * server restarted) the server opens a new one and its `ready` comes first again: the client
 * renews its presence watch on the new session.
 */
import type { Api } from "../api.js";
import { NatterError } from "../errors.js";
import type { ConversationId, Seq, ServerFrame } from "../types.js";
import { type Conn, type ConnHandlers, cursorsRecord, type Drop, DropError, FrameGate, type Ready } from "./conn.js";
import { RestOps } from "./rest.js";

function pollDrop(err: unknown): Drop {
  if (err instanceof NatterError && err.code === "unauthenticated") {
    return { reason: "the server refused the token", unauthenticated: true };
  }
  return { reason: `poll: ${(err as Error)?.message ?? String(err)}` };
}

export class PollConn extends RestOps implements Conn {
  readonly transport = "poll";
  ready: Ready;
  private stream: number;
  private readonly gate = new FrameGate();
  private readonly controller = new AbortController();
  private readonly cursors: () => ReadonlyMap<ConversationId, Seq>;
  private readonly timeoutMs: number;
  private readonly limit: number | undefined;

  private constructor(api: Api, stream: number, ready: Ready, cursors: () => ReadonlyMap<ConversationId, Seq>, timeoutMs: number, limit: number | undefined) {
    super(api);
    this.stream = stream;
    this.ready = ready;
    this.cursors = cursors;
    this.timeoutMs = timeoutMs;
    this.limit = limit;
  }

  /** The first poll opens a stream; its answer starts with `ready` (held for `start`). */
  static async open(
    api: Api,
    cursors: () => ReadonlyMap<ConversationId, Seq>,
    pollTimeoutMs: number,
    limit: number | undefined,
    connectTimeoutMs: number,
  ): Promise<PollConn> {
    let res;
    try {
      res = await api.poll(PollConn.body(undefined, cursors(), 0, limit), AbortSignal.timeout(connectTimeoutMs));
    } catch (err) {
      throw new DropError(pollDrop(err));
    }
    const first = res.events[0];
    if (first?.type !== "ready") throw new DropError({ reason: "the poll stream did not start with ready" });
    const ready: Ready = { user_id: first.user_id, device_id: first.device_id, session_id: first.session_id ?? res.stream };
    const conn = new PollConn(api, res.stream, ready, cursors, pollTimeoutMs, limit);
    for (const f of res.events.slice(1)) conn.gate.frame(f);
    return conn;
  }

  private static body(stream: number | undefined, cursors: ReadonlyMap<ConversationId, Seq>, timeoutMs: number, limit: number | undefined) {
    return {
      ...(stream !== undefined ? { stream } : {}),
      cursors: cursorsRecord(cursors),
      timeout_ms: timeoutMs,
      ...(limit !== undefined ? { limit } : {}),
    };
  }

  start(handlers: ConnHandlers): void {
    this.gate.start(handlers);
    void this.loop();
  }

  close(): void {
    this.gate.end();
    this.controller.abort();
  }

  private async loop(): Promise<void> {
    while (!this.gate.isEnded) {
      // A poll that outlives its wait by this much is taken as a dead connection.
      const deadline = AbortSignal.timeout(this.timeoutMs + 15_000);
      const signal = AbortSignal.any([this.controller.signal, deadline]);
      let events: ServerFrame[];
      try {
        const res = await this.api.poll(PollConn.body(this.stream, this.cursors(), this.timeoutMs, this.limit), signal);
        this.stream = res.stream;
        events = res.events;
      } catch (err) {
        if (!this.gate.isEnded) this.gate.closed(pollDrop(err));
        return;
      }
      for (const f of events) {
        if (f.type === "ready") {
          // A new stream: the old one lapsed.
          this.ready = { user_id: f.user_id, device_id: f.device_id, session_id: f.session_id ?? this.stream };
        }
        this.gate.frame(f);
      }
    }
  }
}
