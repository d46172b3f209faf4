/**
 * The WebSocket transport (`GET /v1/ws`): authenticates with an `auth` first frame (which a
 * browser can send), waits for `ready`, then carries every request as a frame with a
 * `req_id`; each reply resolves its request. Sync and gap-fill replies are handled by the
 * client in frame order (they carry entries), so they are plain `request`s too.
 */
import { NatterError } from "../errors.js";
import type { OutboxItem } from "../outbox.js";
import type {
  Ack,
  ClientFrame,
  ConversationId,
  EntryPage,
  HistoryRange,
  PresenceSubscribed,
  ReqId,
  Seq,
  ServerFrame,
  Status,
  UserId,
} from "../types.js";
import { CloseCode } from "../types.js";
import { type Conn, type ConnHandlers, type Drop, DropError, FrameGate, parseFrame, type Ready } from "./conn.js";

/** A WebSocket constructor: the browser's global, or `ws`'s in Node. */
export type WebSocketConstructor = new (url: string) => unknown;

/** The parts of a WebSocket used here (browser and `ws` alike). */
interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code?: number; reason?: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

const OPEN = 1;

/**
 * `http://host:port/prefix` → `ws://host:port/prefix/v1/ws`; with `compress`, asking for
 * permessage-deflate (`?compress=deflate`).
 */
export function wsUrl(baseUrl: string, compress = false): string {
  const base = baseUrl.replace(/\/+$/, "");
  return `ws${base.replace(/^http/, "")}/v1/ws${compress ? "?compress=deflate" : ""}`;
}

/** The frame that carries an outbox item. */
export function appendFrame(reqId: ReqId, item: OutboxItem): ClientFrame {
  const { client_msg_id, conversation, entry } = item;
  switch (entry.kind) {
    case "message": {
      const f: ClientFrame = { type: "send", req_id: reqId, conversation, client_msg_id, body: entry.body };
      if (entry.reply_to !== undefined) f.reply_to = entry.reply_to;
      if (entry.attachments && entry.attachments.length > 0) f.attachments = entry.attachments;
      if (entry.mentions && entry.mentions.length > 0) f.mentions = entry.mentions;
      return f;
    }
    case "edit":
      return { type: "edit", req_id: reqId, conversation, client_msg_id, target: entry.target, body: entry.body };
    case "delete":
      return { type: "delete", req_id: reqId, conversation, client_msg_id, target: entry.target };
    case "reaction": {
      const f: ClientFrame = { type: "react", req_id: reqId, conversation, client_msg_id, target: entry.target, emoji: entry.emoji };
      if (entry.remove) f.remove = true;
      return f;
    }
  }
}

function closeDrop(code: number | undefined, reason: string | undefined): Drop {
  if (code === CloseCode.unauthenticated) return { reason: "the server refused the token (4001)", unauthenticated: true };
  return { reason: `closed by the server: ${code ?? "?"}${reason ? ` ${reason}` : ""}` };
}

interface Pending {
  resolve(frame: ServerFrame): void;
  reject(err: Error): void;
}

export class WsConn implements Conn {
  readonly transport = "ws";
  readonly ready: Ready;
  /** When the last frame arrived (for the idle check). */
  lastReceived = Date.now();
  private readonly ws: WebSocketLike;
  private readonly gate = new FrameGate();
  private readonly pending = new Map<ReqId, Pending>();
  private nextReq = 0;

  private constructor(ws: WebSocketLike, ready: Ready) {
    this.ws = ws;
    this.ready = ready;
    ws.onmessage = (ev) => {
      this.lastReceived = Date.now();
      const frame = parseFrame(ev.data);
      if (frame) this.received(frame);
    };
    ws.onclose = (ev) => this.ended(closeDrop(ev.code, ev.reason));
    ws.onerror = () => undefined; // the close event follows
  }

  /** Opens the socket, sends `auth`, waits for `ready` (or fails: refused, closed, timed out). */
  static open(url: string, token: string, Ctor: WebSocketConstructor, timeoutMs: number): Promise<WsConn> {
    return new Promise<WsConn>((resolve, reject) => {
      let ws: WebSocketLike;
      try {
        ws = new Ctor(url) as WebSocketLike;
      } catch (err) {
        reject(new DropError({ reason: `websocket: ${(err as Error)?.message}` }));
        return;
      }
      let settled = false;
      const fail = (drop: Drop): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
        try {
          ws.close();
        } catch {
          // Already closing.
        }
        reject(new DropError(drop));
      };
      const timer = setTimeout(() => fail({ reason: "connect timed out" }), timeoutMs);
      ws.onopen = () => {
        try {
          ws.send(JSON.stringify({ type: "auth", token }));
        } catch {
          fail({ reason: "write failed" });
        }
      };
      ws.onerror = () => undefined;
      ws.onclose = (ev) => fail(ev.code === 1006 || ev.code === undefined ? { reason: "websocket refused or closed before ready" } : closeDrop(ev.code, ev.reason));
      ws.onmessage = (ev) => {
        const frame = parseFrame(ev.data);
        if (!frame) return fail({ reason: "expected ready, got something unreadable" });
        if (frame.type === "ready") {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          const ready: Ready = { user_id: frame.user_id, device_id: frame.device_id };
          if (frame.session_id !== undefined) ready.session_id = frame.session_id;
          resolve(new WsConn(ws, ready));
        } else if (frame.type === "error" && frame.code === "unauthenticated") {
          fail({ reason: "the server refused the token", unauthenticated: true });
        } else {
          fail({ reason: `expected ready, got ${frame.type}` });
        }
      };
    });
  }

  start(handlers: ConnHandlers): void {
    this.gate.start(handlers);
  }

  close(): void {
    this.gate.end();
    this.rejectAll({ reason: "closed by the client" });
    try {
      this.ws.close(CloseCode.normal, "bye");
    } catch {
      // Already closed.
    }
  }

  reqId(): ReqId {
    this.nextReq += 1;
    return this.nextReq;
  }

  /** Writes a frame; a failed write ends the connection. */
  send(frame: ClientFrame): void {
    if (this.gate.isEnded) return;
    try {
      if (this.ws.readyState !== OPEN) throw new Error("not open");
      this.ws.send(JSON.stringify(frame));
    } catch {
      this.ended({ reason: "write failed" });
      try {
        this.ws.close();
      } catch {
        // Already closed.
      }
    }
  }

  /** Writes a request frame (it carries `req_id`) and waits for its reply. */
  request(frame: ClientFrame & { req_id: ReqId }): Promise<ServerFrame> {
    if (this.gate.isEnded) return Promise.reject(new NatterError("network", "the connection is closed"));
    const reply = new Promise<ServerFrame>((resolve, reject) => this.pending.set(frame.req_id, { resolve, reject }));
    this.send(frame);
    return reply;
  }

  private received(frame: ServerFrame): void {
    // The client sees every frame first, in order; then the request it answers resolves.
    this.gate.frame(frame);
    const reqId = "req_id" in frame ? frame.req_id : undefined;
    if (reqId === undefined) return;
    const p = this.pending.get(reqId);
    if (!p) return;
    this.pending.delete(reqId);
    if (frame.type === "error") {
      const body = { code: frame.code, message: frame.message, ...(frame.retry_after_ms !== undefined ? { retry_after_ms: frame.retry_after_ms } : {}) };
      p.reject(NatterError.server(body));
    } else {
      p.resolve(frame);
    }
  }

  private rejectAll(drop: Drop): void {
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const p of pending) p.reject(new NatterError("network", `connection lost: ${drop.reason}`));
  }

  private ended(drop: Drop): void {
    this.rejectAll(drop);
    this.gate.closed(drop);
  }

  // --- Conn -----------------------------------------------------------------------------

  async append(item: OutboxItem): Promise<Ack> {
    const reply = await this.request(appendFrame(this.reqId(), item) as ClientFrame & { req_id: ReqId });
    if (reply.type !== "ack") throw new NatterError("protocol", `unexpected reply ${reply.type}`);
    const { type: _type, req_id: _req, ...ack } = reply;
    ack.client_msg_id ??= item.client_msg_id;
    return ack;
  }

  async cursor(conversation: ConversationId, which: "delivered" | "read", seq: Seq): Promise<void> {
    await this.request({ type: which, req_id: this.reqId(), conversation, seq });
  }

  typing(conversation: ConversationId, typing: boolean): Promise<void> {
    this.send({ type: "typing", conversation, typing });
    return Promise.resolve();
  }

  async subscribePresence(users: UserId[]): Promise<PresenceSubscribed> {
    const reply = await this.request({ type: "subscribe_presence", req_id: this.reqId(), users });
    if (reply.type !== "presence_subscribed") throw new NatterError("protocol", `unexpected reply ${reply.type}`);
    return { users: reply.users, denied: reply.denied };
  }

  async setStatus(status: Status): Promise<void> {
    await this.request({ type: "set_status", req_id: this.reqId(), status });
  }

  async history(conversation: ConversationId, range: HistoryRange, limit?: number): Promise<EntryPage> {
    const frame: ClientFrame = { type: "history", req_id: this.reqId(), conversation };
    if (range.before !== undefined) frame.before = range.before;
    if (range.after !== undefined) frame.after = range.after;
    if (limit !== undefined) frame.limit = limit;
    const reply = await this.request(frame);
    if (reply.type !== "history") throw new NatterError("protocol", `unexpected reply ${reply.type}`);
    return { conversation: reply.conversation, entries: reply.entries, has_more: reply.has_more };
  }
}
