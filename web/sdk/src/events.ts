/**
 * What the client tells the app: plain JSON-serializable objects (they can cross a
 * `MessagePort` as they are), delivered to `on(type, handler)` handlers synchronously and
 * to `events()` async iterators through a bounded queue.
 */
import type { TransportName } from "./transport/conn.js";
import type {
  Ack,
  ConversationId,
  ConversationSummary,
  DeviceId,
  Entry,
  ErrorBody,
  Invitation,
  Presence,
  Receipt,
  User,
  UserId,
} from "./types.js";

export type CloseReason = "client" | "unauthenticated";

/** The connection's life cycle, for a UI that shows "reconnecting". */
export type ConnectionState =
  /** Opening a connection; `attempt` counts failed attempts since the last stable one. */
  | { state: "connecting"; attempt: number; transport: TransportName }
  /** Authenticated and caught up (WebSocket: the first sync round is done); the outbox goes. */
  | { state: "connected"; transport: TransportName; user_id: UserId; device_id: DeviceId; session_id?: number }
  /** The connection failed or dropped; the next attempt, on `transport`, is in `retry_in_ms`. */
  | { state: "reconnecting"; reason: string; retry_in_ms: number; transport: TransportName }
  /** The app said the network is gone (`setOnline(false)`): nothing is tried until it is back. */
  | { state: "offline"; transport: TransportName }
  /** Stopped for good; no more events follow. */
  | { state: "closed"; reason: CloseReason };

export type ClientEvent =
  | ({ type: "connection" } & ConnectionState)
  /** A conversation's summary, sent by each sync for every conversation with something new. */
  | { type: "conversation"; conversation: ConversationSummary }
  /** The next entry of a conversation: strictly increasing `seq`, no gap, no duplicate. */
  | { type: "entry"; entry: Entry }
  /** A send from the outbox is stored with this `seq`: once per send, in the order written. */
  | { type: "acked"; ack: Ack }
  /** The server refused a send for good; it left the outbox. */
  | { type: "send_failed"; conversation: ConversationId; client_msg_id: string; error: ErrorBody }
  | { type: "receipt"; receipt: Receipt }
  | { type: "typing"; conversation: ConversationId; user: UserId; typing: boolean; ttl_ms?: number }
  /** Watched users' presence: changes, and the current state after each (re)subscribe. */
  | { type: "presence"; users: Presence[] }
  | { type: "invitation"; invitation: Invitation }
  /** A user's profile changed (yours, or that of someone who shares a conversation with you). */
  | { type: "profile"; user: User }
  /** Your block list changed (on this device or another): hide these users' messages. */
  | { type: "blocks"; blocked: UserId[] };

export type EventType = ClientEvent["type"];
export type EventOf<T extends EventType> = Extract<ClientEvent, { type: T }>;
export type Handler<T extends EventType | "*"> = (event: T extends EventType ? EventOf<T> : ClientEvent) => void;

/** One `events()` iterator's queue. */
class Queue implements AsyncIterableIterator<ClientEvent> {
  items: ClientEvent[] = [];
  private waiter: ((r: IteratorResult<ClientEvent>) => void) | undefined;
  done = false;
  constructor(private readonly onDrain: () => void, private readonly onReturn: (q: Queue) => void) {}

  push(event: ClientEvent): void {
    if (this.done) return;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w({ value: event, done: false });
      return;
    }
    // A connection state replaces one still queued: the app needs the latest.
    const last = this.items[this.items.length - 1];
    if (event.type === "connection" && last?.type === "connection" && last.state !== "closed") this.items.pop();
    this.items.push(event);
  }

  end(): void {
    if (this.done) return;
    this.done = true;
    if (this.waiter && this.items.length === 0) {
      const w = this.waiter;
      this.waiter = undefined;
      w({ value: undefined, done: true });
    }
  }

  next(): Promise<IteratorResult<ClientEvent>> {
    const item = this.items.shift();
    if (item) {
      this.onDrain();
      return Promise.resolve({ value: item, done: false });
    }
    if (this.done) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => (this.waiter = resolve));
  }

  return(): Promise<IteratorResult<ClientEvent>> {
    this.done = true;
    this.items = [];
    this.onReturn(this);
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<ClientEvent> {
    return this;
  }
}

export class Emitter {
  private handlers = new Map<string, Set<(e: ClientEvent) => void>>();
  private queues = new Set<Queue>();
  private drained: (() => void) | undefined;
  readonly maxBuffered: number;
  private readonly onError: (err: unknown) => void;

  constructor(maxBuffered: number, onError: (err: unknown) => void) {
    this.maxBuffered = Math.max(1, maxBuffered);
    this.onError = onError;
  }

  on(type: string, handler: (e: ClientEvent) => void): void {
    let set = this.handlers.get(type);
    if (!set) this.handlers.set(type, (set = new Set()));
    set.add(handler);
  }

  off(type: string, handler: (e: ClientEvent) => void): void {
    this.handlers.get(type)?.delete(handler);
  }

  iterator(): AsyncIterableIterator<ClientEvent> {
    const q = new Queue(() => this.checkDrained(), (q) => {
      this.queues.delete(q);
      this.checkDrained();
    });
    this.queues.add(q);
    return q;
  }

  emit(event: ClientEvent): void {
    for (const type of [event.type, "*"]) {
      const set = this.handlers.get(type);
      if (!set) continue;
      for (const h of [...set]) {
        try {
          h(event);
        } catch (err) {
          this.onError(err);
        }
      }
    }
    for (const q of this.queues) q.push(event);
  }

  /** Whether some iterator holds `maxBuffered` events: the client stops taking frames. */
  full(): boolean {
    for (const q of this.queues) if (q.items.length >= this.maxBuffered) return true;
    return false;
  }

  /** Resolves once every iterator is below half its cap. */
  whenDrained(): Promise<void> {
    if (!this.overHalf()) return Promise.resolve();
    return new Promise((resolve) => (this.drained = resolve));
  }

  private overHalf(): boolean {
    for (const q of this.queues) if (q.items.length > this.maxBuffered / 2) return true;
    return false;
  }

  private checkDrained(): void {
    if (this.drained && !this.overHalf()) {
      const d = this.drained;
      this.drained = undefined;
      d();
    }
  }

  end(): void {
    for (const q of this.queues) q.end();
    this.queues.clear();
    this.drained?.();
  }
}
