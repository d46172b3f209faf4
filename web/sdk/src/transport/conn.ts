/**
 * What the client needs of one live connection, whatever carries it: the WebSocket
 * ({@link WsConn}), Server-Sent Events plus REST ({@link SseConn}) or long-polling plus REST
 * ({@link PollConn}). A connection is opened until the server's `ready`; frames that arrive
 * before {@link Conn.start} are held, so the client sees every frame, in order.
 */
import type { Ack, ConversationId, DeviceId, EntryPage, HistoryRange, PresenceSubscribed, Seq, ServerFrame, Status, UserId } from "../types.js";
import type { OutboxItem } from "../outbox.js";

export type TransportName = "ws" | "sse" | "poll";

export interface Ready {
  user_id: UserId;
  device_id: DeviceId;
  session_id?: number;
}

/** Why a connection ended. */
export interface Drop {
  reason: string;
  /** The server refused the token: stop for good. */
  unauthenticated?: boolean;
}

export interface ConnHandlers {
  /** Every frame after `ready`, in the order received (replies too). */
  frame(frame: ServerFrame): void;
  /** The connection ended (not called after `close()`). */
  closed(drop: Drop): void;
}

export interface Conn {
  readonly transport: TransportName;
  readonly ready: Ready;
  /** Starts handing frames to `handlers` (held ones first). */
  start(handlers: ConnHandlers): void;
  /** Ends the connection; `handlers.closed` is not called. */
  close(): void;
  append(item: OutboxItem): Promise<Ack>;
  cursor(conversation: ConversationId, which: "delivered" | "read", seq: Seq): Promise<void>;
  typing(conversation: ConversationId, typing: boolean): Promise<void>;
  subscribePresence(users: UserId[]): Promise<PresenceSubscribed>;
  setStatus(status: Status): Promise<void>;
  history(conversation: ConversationId, range: HistoryRange, limit?: number): Promise<EntryPage>;
}

/** A typed, JSON-serializable error for "the connection is gone". */
export class DropError extends Error {
  readonly drop: Drop;
  constructor(drop: Drop) {
    super(drop.reason);
    this.name = "DropError";
    this.drop = drop;
  }
}

/** Starts `handlers` on frames held so far, then passes the rest straight through. */
export class FrameGate {
  private held: ServerFrame[] = [];
  private handlers: ConnHandlers | undefined;
  private pendingDrop: Drop | undefined;
  private ended = false;

  start(handlers: ConnHandlers): void {
    this.handlers = handlers;
    const held = this.held;
    this.held = [];
    for (const f of held) {
      if (this.ended) return;
      handlers.frame(f);
    }
    if (this.pendingDrop && !this.ended) {
      this.ended = true;
      handlers.closed(this.pendingDrop);
    }
  }

  frame(f: ServerFrame): void {
    if (this.ended) return;
    if (this.handlers) this.handlers.frame(f);
    else this.held.push(f);
  }

  closed(drop: Drop): void {
    if (this.ended) return;
    if (this.handlers) {
      this.ended = true;
      this.handlers.closed(drop);
    } else {
      this.pendingDrop ??= drop;
    }
  }

  /** Closed by the client: nothing more is handed on. */
  end(): void {
    this.ended = true;
    this.held = [];
  }

  get isEnded(): boolean {
    return this.ended;
  }
}

export function parseFrame(data: unknown): ServerFrame | undefined {
  let text: string;
  if (typeof data === "string") text = data;
  else if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) text = new TextDecoder().decode(data as ArrayBuffer);
  else text = String(data);
  try {
    const f = JSON.parse(text) as ServerFrame;
    return typeof f === "object" && f !== null && typeof f.type === "string" ? f : undefined;
  } catch {
    return undefined;
  }
}

/** The cursors as `conv:seq,conv:seq` (SSE `?cursors=`). */
export function encodeCursors(cursors: ReadonlyMap<ConversationId, Seq>): string {
  return [...cursors].sort((a, b) => a[0] - b[0]).map(([c, s]) => `${c}:${s}`).join(",");
}

export function cursorsRecord(cursors: ReadonlyMap<ConversationId, Seq>): Record<string, Seq> {
  const out: Record<string, Seq> = {};
  for (const [c, s] of cursors) out[String(c)] = s;
  return out;
}
