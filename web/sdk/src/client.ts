/**
 * {@link Client}: one live connection to one server as one user, with the Rust SDK's
 * guarantees (crates/client/src/lib.rs) on every transport:
 *
 * - **Order, no gap, no duplicate** per conversation: `entry` events are strictly increasing
 *   and contiguous in `seq`, across reconnects, restarts and transport switches. A `seq` jump
 *   on the live stream is held and filled from history before what follows ({@link Timelines}).
 * - **Resume**: the last `seq` handed to the app per conversation is kept in the
 *   {@link StateStore}; every (re)connect resumes from those cursors (WebSocket: `sync`,
 *   again while `more`; SSE: `?cursors=`; long-poll: every poll carries them).
 * - **Outbox**: a send is saved in the outbox before it goes on the wire and retried over every
 *   reconnect with the same `client_msg_id` until the server acks or refuses it, so each is
 *   stored exactly once, in the order written; acks are reported in that order.
 * - **Receipts**: `delivered` cursors are reported automatically (coalesced), `read` ones with
 *   {@link Client.read}.
 *
 * Everything runs on the one JavaScript thread, so the state needs no lock: frames, timers and
 * app calls each run to completion. Results of a connection that has since been replaced are
 * ignored (what they stood for is done again on the next one: sends are idempotent).
 */
import { Api, type FetchLike } from "./api.js";
import { type Backoff, backoffDelay, defaultBackoff } from "./backoff.js";
import { NatterError } from "./errors.js";
import { type ClientEvent, type CloseReason, type ConnectionState, Emitter, type EventOf, type EventType } from "./events.js";
import { Outbox, type OutboxItem } from "./outbox.js";
import { MemoryStore, type Snapshot, type StateStore } from "./store.js";
import { type Fill, Timelines } from "./timeline.js";
import { type Conn, cursorsRecord, type Drop, DropError, type TransportName } from "./transport/conn.js";
import { PollConn } from "./transport/poll.js";
import { type EventSourceConstructor, SseConn } from "./transport/sse.js";
import { appendFrame, type WebSocketConstructor, WsConn, wsUrl } from "./transport/ws.js";
import {
  type Ack,
  type Attachment,
  type ConversationId,
  type Cursors,
  type Entry,
  type EntryPage,
  type HistoryRange,
  type NewEntry,
  normalizeEntry,
  type PresenceSubscribed,
  retryable,
  type Seq,
  type ServerFrame,
  type Status,
  type UserId,
} from "./types.js";

export interface ClientOptions {
  /** The server's base URL, `http://host:port` (the WebSocket is `ws://host:port/v1/ws`). */
  baseUrl: string;
  /** A bearer token from {@link Api.login}. Never logged. */
  token: string;
  /** Where cursors and the outbox are kept between runs (default: in memory). */
  store?: StateStore;
  /** Transports to use, in order of preference (default `["ws", "sse", "poll"]`). */
  transports?: TransportName[];
  /** The WebSocket constructor (default: the global one; in Node 20 pass `ws`'s). */
  WebSocket?: WebSocketConstructor;
  /** The EventSource constructor (default: the global one; in Node pass `eventsource`'s). */
  EventSource?: EventSourceConstructor;
  /** The `fetch` for REST (default: the global one). */
  fetch?: FetchLike;
  /** The WebSocket URL, if not derived from `baseUrl`. */
  wsUrl?: string;
  /**
   * Ask for permessage-deflate on the WebSocket (`?compress=deflate`; default off). The
   * server compresses when its `ws_compression` allows it and the WebSocket implementation
   * offers the extension (browsers and `ws` do); JSON frames shrink to a fraction. With
   * `wsUrl` given, put `?compress=deflate` in it instead.
   */
  compress?: boolean;
  /** Reconnect delays (full-jitter exponential). */
  backoff?: Partial<Backoff>;
  /** Most sends waiting in the outbox; beyond it sends fail with `outbox_full` (10,000). */
  maxOutbox?: number;
  /** The server's `max_frame_bytes` (64 KiB): a larger send fails with `too_large`. */
  maxFrameBytes?: number;
  /** Most sends written and not yet acked on a WebSocket (64; HTTP transports send one at a time). */
  maxInFlight?: number;
  /** `delivered` cursors are reported at most once per this window (250 ms). */
  deliveredDelayMs?: number;
  /** Cursor moves and acks are saved at most once per this window (200 ms). */
  persistDelayMs?: number;
  /** WebSocket pings (20 s) and the silence after which the socket is dropped (50 s). */
  pingIntervalMs?: number;
  idleTimeoutMs?: number;
  /** Time to establish a connection up to the server's `ready` (10 s). */
  connectTimeoutMs?: number;
  /** Entries per conversation per sync page (the server's default). */
  syncLimit?: number;
  /** Failed establishments in a row before falling back to the next transport (3). */
  fallbackAfter?: number;
  /** While on a fallback, how often the preferred transports are tried again (60 s; 0: never). */
  preferredRetryMs?: number;
  /** Long-poll wait per request (25 s; the server caps it at `max_poll_timeout_ms`). */
  pollTimeoutMs?: number;
  /** Events one `events()` iterator may hold before the client stops taking frames (10,000). */
  maxBufferedEvents?: number;
  /** Where the SDK's diagnostics go (never with the token); default: nowhere. */
  log?: (level: "debug" | "warn", message: string) => void;
}

interface Settings {
  maxOutbox: number;
  maxFrameBytes: number;
  maxInFlight: number;
  deliveredDelayMs: number;
  persistDelayMs: number;
  pingIntervalMs: number;
  idleTimeoutMs: number;
  connectTimeoutMs: number;
  syncLimit: number | undefined;
  fallbackAfter: number;
  preferredRetryMs: number;
  pollTimeoutMs: number;
  maxBufferedEvents: number;
}

/** Options of one message send. */
export interface SendOptions {
  reply_to?: Seq;
  /** Upload ids (from {@link Api.upload} / {@link Api.uploadResumable}), at most 10. */
  attachments?: Array<string | Attachment>;
  /** Members to mention besides those whose `@handle` the body has (the server resolves
   * those itself), at most 50. */
  mentions?: UserId[];
  /** The idempotency key (default: a random UUID). */
  client_msg_id?: string;
}

type Stop =
  | { kind: "dropped"; reason: string }
  | { kind: "unauthenticated" }
  | { kind: "closed" }
  | { kind: "switch"; next: Conn; index: number };

interface Waiter {
  resolve(ack: Ack): void;
  reject(err: Error): void;
}

interface AppRequest {
  kind: "history" | "presence" | "status";
  run(conn: Conn): Promise<unknown>;
  resolve(v: unknown): void;
  reject(err: Error): void;
  /** The connection it is running on. */
  on: Conn | undefined;
}

/** The longest a rate-limited outbox waits, whatever the server says. */
const MAX_SEND_PAUSE_MS = 60_000;
const encoder = new TextEncoder();

function closedError(): NatterError {
  return new NatterError("closed", "the client is closed");
}

function toDrop(err: unknown): Drop {
  if (err instanceof DropError) return err.drop;
  if (err instanceof NatterError && err.code === "unauthenticated") return { reason: err.message, unauthenticated: true };
  return { reason: (err as Error)?.message ?? String(err) };
}

function isRefusal(err: unknown): err is NatterError {
  return err instanceof NatterError && err.kind === "server" && err.code !== undefined && !retryable(err.code);
}

export class Client {
  /** The REST API, authenticated with this client's token. */
  readonly api: Api;
  readonly #token: string;
  private readonly store: StateStore;
  private readonly settings: Settings;
  private readonly backoff: Backoff;
  private readonly transports: TransportName[];
  private readonly WebSocketCtor: WebSocketConstructor | undefined;
  private readonly EventSourceCtor: EventSourceConstructor | undefined;
  private readonly wsUrl: string;
  private readonly log: (level: "debug" | "warn", message: string) => void;
  private readonly emitter: Emitter;

  private timelines: Timelines;
  private readonly outboxState: Outbox;
  /** Sends being saved; in the snapshot, not yet in the outbox. */
  private staged: OutboxItem[] = [];
  /** Whose state was loaded, and which outbox items came with it (checked at `ready`). */
  private loaded: { user: UserId; ids: Set<string> } | undefined;
  private user: UserId | undefined;
  private readonly waiters = new Map<string, Waiter[]>();
  private readonly requests = new Set<AppRequest>();
  /** Read cursors not yet confirmed by the server, the highest per conversation. */
  private readonly reads = new Map<ConversationId, Seq>();
  /** Conversations whose delivered cursor moved since it was last reported. */
  private readonly delivered = new Set<ConversationId>();
  private presence: UserId[] | undefined;
  private status: Status = "online";

  private tIndex = 0;
  private readonly failures: number[];
  private conn: Conn | undefined;
  private caughtUp = false;
  private stopConn: ((stop: Stop) => void) | undefined;
  private readonly syncReqs = new Set<number>();
  private readonly fillReqs = new Map<number, ConversationId>();
  private sendsPausedUntil = 0;
  /** The latest write of each send on the wire: answers to an older write are stale. */
  private readonly writes = new Map<string, number>();
  private nextWrite = 0;
  private state: ConnectionState;

  private timers = {
    delivered: undefined as ReturnType<typeof setTimeout> | undefined,
    save: undefined as ReturnType<typeof setTimeout> | undefined,
    pump: undefined as ReturnType<typeof setTimeout> | undefined,
    ping: undefined as ReturnType<typeof setInterval> | undefined,
    probe: undefined as ReturnType<typeof setTimeout> | undefined,
  };
  private saveChain: Promise<void> = Promise.resolve();
  private closing = false;
  /** The app said the network is gone ({@link Client.setOnline}): nothing is attempted. */
  private offline = false;
  /** Waits to cut short when the app says the network is back. */
  private readonly onlineWaiters = new Set<() => void>();
  /** Waits (backoff pauses, connects) to cut short when the client closes. */
  private readonly wakers = new Set<() => void>();
  private finished!: Promise<void>;

  private constructor(options: ClientOptions, snapshot: Snapshot | undefined) {
    const fetchOpt = options.fetch ? { fetch: options.fetch } : {};
    this.api = new Api(options.baseUrl, { token: options.token, ...fetchOpt });
    this.#token = options.token;
    this.store = options.store ?? new MemoryStore();
    this.settings = {
      maxOutbox: options.maxOutbox ?? 10_000,
      maxFrameBytes: options.maxFrameBytes ?? 64 * 1024,
      maxInFlight: options.maxInFlight ?? 64,
      deliveredDelayMs: options.deliveredDelayMs ?? 250,
      persistDelayMs: options.persistDelayMs ?? 200,
      pingIntervalMs: options.pingIntervalMs ?? 20_000,
      idleTimeoutMs: options.idleTimeoutMs ?? 50_000,
      connectTimeoutMs: options.connectTimeoutMs ?? 10_000,
      syncLimit: options.syncLimit,
      fallbackAfter: Math.max(1, options.fallbackAfter ?? 3),
      preferredRetryMs: options.preferredRetryMs ?? 60_000,
      pollTimeoutMs: options.pollTimeoutMs ?? 25_000,
      maxBufferedEvents: options.maxBufferedEvents ?? 10_000,
    };
    this.backoff = { ...defaultBackoff, ...options.backoff };
    const g = globalThis as { WebSocket?: WebSocketConstructor; EventSource?: EventSourceConstructor };
    this.WebSocketCtor = options.WebSocket ?? g.WebSocket;
    this.EventSourceCtor = options.EventSource ?? g.EventSource;
    const wanted = options.transports ?? ["ws", "sse", "poll"];
    this.transports = wanted.filter(
      (t, i) => wanted.indexOf(t) === i && (t === "poll" || (t === "ws" ? !!this.WebSocketCtor : !!this.EventSourceCtor)),
    );
    if (this.transports.length === 0) {
      throw new Error("no usable transport: pass a WebSocket or EventSource constructor, or allow \"poll\"");
    }
    this.failures = this.transports.map(() => 0);
    this.wsUrl = options.wsUrl ?? wsUrl(this.api.baseUrl, options.compress ?? false);
    this.log = options.log ?? (() => undefined);
    this.emitter = new Emitter(this.settings.maxBufferedEvents, (err) =>
      this.log("warn", `an event handler threw: ${(err as Error)?.message ?? String(err)}`),
    );
    const cursors = new Map<ConversationId, Seq>();
    for (const [c, s] of Object.entries(snapshot?.cursors ?? {})) cursors.set(Number(c), s);
    this.timelines = new Timelines(cursors);
    this.outboxState = new Outbox(snapshot?.outbox ?? []);
    this.user = snapshot?.user;
    if (snapshot?.user !== undefined) {
      this.loaded = { user: snapshot.user, ids: new Set((snapshot.outbox ?? []).map((i) => i.client_msg_id)) };
    }
    this.state = { state: "connecting", attempt: 0, transport: this.transports[0] as TransportName };
  }

  private wake(): void {
    for (const w of [...this.wakers]) w();
    this.wakers.clear();
  }

  /**
   * Loads the state from `options.store` and starts the connection. Resolves at once,
   * connected or not: progress arrives as `connection` events, and calls made before the
   * connection is up are queued (sends in the outbox, reads and requests until it is).
   */
  static async connect(options: ClientOptions): Promise<Client> {
    const store = options.store ?? new MemoryStore();
    let snapshot: Snapshot | undefined;
    try {
      snapshot = await store.load();
    } catch (err) {
      throw new NatterError("store", `loading the client state failed: ${(err as Error)?.message}`);
    }
    const client = new Client({ ...options, store }, snapshot);
    client.finished = client.run();
    return client;
  }

  // --- events ----------------------------------------------------------------------------

  /** Calls `handler` for every event of `type` (or every event, with `"*"`), synchronously. */
  on<T extends EventType>(type: T, handler: (event: EventOf<T>) => void): () => void;
  on(type: "*", handler: (event: ClientEvent) => void): () => void;
  on(type: string, handler: (event: never) => void): () => void {
    const h = handler as (e: ClientEvent) => void;
    this.emitter.on(type, h);
    return () => this.emitter.off(type, h);
  }

  off<T extends EventType>(type: T, handler: (event: EventOf<T>) => void): void;
  off(type: "*", handler: (event: ClientEvent) => void): void;
  off(type: string, handler: (event: never) => void): void {
    this.emitter.off(type, handler as (e: ClientEvent) => void);
  }

  /**
   * Every event from now on, as an async iterator that ends after `closed`. Keep reading it:
   * once it holds `maxBufferedEvents` the client drops its connection and reconnects (and
   * resumes) only after the backlog halved.
   */
  events(): AsyncIterableIterator<ClientEvent> {
    return this.emitter.iterator();
  }

  /** The connection's current state. */
  connection(): ConnectionState {
    return { ...this.state };
  }

  // --- sends -----------------------------------------------------------------------------

  /**
   * Queues any append (message, edit, deletion, reaction) in the outbox; resolves with its
   * `client_msg_id` once it is saved there (before anything goes on the wire). Its outcome
   * comes as an `acked` or `send_failed` event, and from {@link Client.waitForAck}.
   */
  async enqueue(conversation: ConversationId, entry: NewEntry, clientMsgId?: string): Promise<string> {
    const item: OutboxItem = { client_msg_id: clientMsgId ?? crypto.randomUUID(), conversation, entry };
    await this.stage(item);
    return item.client_msg_id;
  }

  /** Queues an append and waits for its ack (rejects if the server refuses it for good). */
  async append(conversation: ConversationId, entry: NewEntry, clientMsgId?: string): Promise<Ack> {
    const item: OutboxItem = { client_msg_id: clientMsgId ?? crypto.randomUUID(), conversation, entry };
    const acked = new Promise<Ack>((resolve, reject) => this.addWaiter(item.client_msg_id, { resolve, reject }));
    acked.catch(() => undefined);
    try {
      await this.stage(item);
    } catch (err) {
      this.waiters.delete(item.client_msg_id);
      throw err;
    }
    return acked;
  }

  /** Sends a message and waits for its ack. */
  send(conversation: ConversationId, body: string, options: SendOptions = {}): Promise<Ack> {
    return this.append(conversation, messageEntry(body, options), options.client_msg_id);
  }

  /** Queues a message; resolves with its `client_msg_id` once saved (the ack comes as an event). */
  sendNowait(conversation: ConversationId, body: string, options: SendOptions = {}): Promise<string> {
    return this.enqueue(conversation, messageEntry(body, options), options.client_msg_id);
  }

  /** Replaces the text of one of your messages. */
  edit(conversation: ConversationId, target: Seq, body: string): Promise<Ack> {
    return this.append(conversation, { kind: "edit", target, body });
  }

  /** Deletes one of your messages (a tombstone; its text is redacted on the server). */
  delete(conversation: ConversationId, target: Seq): Promise<Ack> {
    return this.append(conversation, { kind: "delete", target });
  }

  /** Adds (or with `remove`, takes back) a reaction to a message. */
  react(conversation: ConversationId, target: Seq, emoji: string, remove = false): Promise<Ack> {
    return this.append(conversation, remove ? { kind: "reaction", target, emoji, remove } : { kind: "reaction", target, emoji });
  }

  /** Waits for the ack of a send in the outbox (one queued by a previous run, say). */
  waitForAck(clientMsgId: string): Promise<Ack> {
    const queued = [...this.outboxState.items(), ...this.staged].some((i) => i.client_msg_id === clientMsgId);
    if (!queued) return Promise.reject(new NatterError("protocol", "no such send in the outbox"));
    return new Promise((resolve, reject) => this.addWaiter(clientMsgId, { resolve, reject }));
  }

  /** The sends not yet acked, in the order written (for optimistic display). */
  outbox(): Promise<OutboxItem[]> {
    return Promise.resolve(JSON.parse(JSON.stringify([...this.outboxState.items(), ...this.staged])) as OutboxItem[]);
  }

  /** The last seq handed to the app, per conversation. */
  cursors(): Promise<Cursors> {
    return Promise.resolve(cursorsRecord(this.timelines.cursors()));
  }

  // --- receipts, typing, presence, history ---------------------------------------------------

  /** Marks everything up to `seq` read (implies delivered); sent now or on the next connection. */
  read(conversation: ConversationId, seq: Seq): Promise<void> {
    if (this.closing) return Promise.reject(closedError());
    if ((this.reads.get(conversation) ?? -1) >= seq) return Promise.resolve();
    this.reads.set(conversation, seq);
    if (this.conn && this.caughtUp) this.sendRead(this.conn, conversation, seq);
    return Promise.resolve();
  }

  /** Says the user is (or stopped) typing. Ephemeral: dropped while disconnected. */
  async typing(conversation: ConversationId, typing: boolean): Promise<void> {
    if (this.closing) throw closedError();
    const conn = this.conn;
    if (conn && this.caughtUp) await conn.typing(conversation, typing).catch(() => undefined);
  }

  /**
   * Watches these users' presence (replacing the previous list); resolves with their current
   * presence and the ids refused. Changes follow as `presence` events; the list is renewed on
   * every reconnect (and its answer comes as a `presence` event then).
   */
  subscribePresence(users: UserId[]): Promise<PresenceSubscribed> {
    this.presence = [...users];
    return this.request("presence", (conn) => conn.subscribePresence(users)) as Promise<PresenceSubscribed>;
  }

  /** Sets this session's status (`online` or `away`); kept across reconnects. */
  async setStatus(status: Status): Promise<void> {
    this.status = status;
    await this.request("status", (conn) => conn.setStatus(status));
  }

  /**
   * A page of a conversation's log (entries carry each message's current `state`): `{}` is
   * the latest page, `{ before }` walks back, `{ after }` forward. Returned as is: it does not
   * go through the event stream. Waits for a connection (and is asked again after a drop).
   */
  history(conversation: ConversationId, range: HistoryRange = {}, limit?: number): Promise<EntryPage> {
    return this.request("history", async (conn) => {
      const page = await conn.history(conversation, range, limit);
      page.entries.forEach(normalizeEntry);
      return page;
    }) as Promise<EntryPage>;
  }

  /**
   * Stops the client: reports pending `delivered` cursors if connected, saves the state,
   * closes the connection and ends the events. Sends not yet acked stay in the store's outbox.
   */
  async close(): Promise<void> {
    if (!this.closing) {
      this.closing = true;
      if (this.conn && this.caughtUp) await withTimeout(this.flushDelivered(), 1_000);
      this.wake();
      if (this.conn) this.stop(this.conn, { kind: "closed" });
    }
    await this.finished;
  }

  /**
   * Tells the client whether the network is there (a browser's `online`/`offline` events).
   * Offline, the connection is dropped at once (a socket whose network went can look alive
   * until its idle timeout), no connection is attempted and sends wait in the outbox; the
   * state is `offline`. Back online, the client connects at once, without backoff.
   */
  async setOnline(online: boolean): Promise<void> {
    if (online !== this.offline || this.closing) return;
    this.offline = !online;
    if (this.offline) {
      if (this.conn) this.stop(this.conn, { kind: "dropped", reason: "offline" });
    } else {
      for (const w of [...this.onlineWaiters]) w();
      this.onlineWaiters.clear();
    }
  }

  /** Resolves once the app says the network is back, or the client closes. */
  private untilOnline(): Promise<void> {
    if (!this.offline || this.closing) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        this.wakers.delete(done);
        this.onlineWaiters.delete(done);
        resolve();
      };
      this.wakers.add(done);
      this.onlineWaiters.add(done);
    });
  }

  // --- the connection loop ---------------------------------------------------------------------

  private async run(): Promise<void> {
    let attempt = 0;
    let adopt: Conn | undefined;
    let reason: CloseReason = "client";
    while (!this.closing) {
      if (this.offline) {
        adopt?.close();
        adopt = undefined;
        this.setState({ state: "offline", transport: this.transport() });
        await this.untilOnline();
        attempt = 0;
        continue;
      }
      let conn = adopt;
      adopt = undefined;
      if (!conn) {
        this.setState({ state: "connecting", attempt, transport: this.transport() });
        try {
          conn = await this.interruptible(this.openTransport(this.tIndex));
        } catch (err) {
          if (this.closing) break;
          if (this.offline) continue;
          const drop = toDrop(err);
          if (drop.unauthenticated || (await this.establishFailed(this.tIndex))) {
            reason = "unauthenticated";
            break;
          }
          const delay = backoffDelay(this.backoff, attempt);
          attempt += 1;
          this.log("debug", `connect failed: ${drop.reason}; retry in ${delay} ms`);
          this.setState({ state: "reconnecting", reason: drop.reason, retry_in_ms: delay, transport: this.transport() });
          await this.pause(delay);
          continue;
        }
        if (!conn) break; // closed meanwhile
        if (this.offline) {
          conn.close();
          continue;
        }
      }
      this.failures[this.tIndex] = 0;
      const opened = Date.now();
      const stop = await this.serve(conn);
      if (Date.now() - opened >= this.backoff.stableAfterMs) attempt = 0;
      this.disconnected();
      if (stop.kind === "closed") break;
      if (stop.kind === "unauthenticated") {
        reason = "unauthenticated";
        break;
      }
      if (stop.kind === "switch") {
        this.tIndex = stop.index;
        adopt = stop.next;
        attempt = 0;
        continue;
      }
      if (this.offline) continue;
      const delay = backoffDelay(this.backoff, attempt);
      attempt += 1;
      this.log("debug", `disconnected: ${stop.reason}; retry in ${delay} ms`);
      this.setState({ state: "reconnecting", reason: stop.reason, retry_in_ms: delay, transport: this.transport() });
      // An app whose events() backlog is full is read down to half before the next connection.
      if (this.emitter.full()) await this.interruptible(this.emitter.whenDrained());
      await this.pause(delay);
    }
    await this.shutdown(reason);
  }

  private transport(): TransportName {
    return this.transports[this.tIndex] as TransportName;
  }

  private openTransport(index: number): Promise<Conn> {
    const t = this.settings.connectTimeoutMs;
    switch (this.transports[index]) {
      case "ws":
        return WsConn.open(this.wsUrl, this.#token, this.WebSocketCtor as WebSocketConstructor, t);
      case "sse":
        return SseConn.open(this.api, this.EventSourceCtor as EventSourceConstructor, this.timelines.cursors(), this.settings.syncLimit, t);
      default:
        return PollConn.open(this.api, () => this.timelines.cursors(), this.settings.pollTimeoutMs, this.settings.syncLimit, t);
    }
  }

  /**
   * A connection could not be established. After `fallbackAfter` in a row, the next
   * transport is tried, but only if the server answers HTTP: a server that is down is not a
   * reason to leave the preferred transport. Resolves true when the token was refused.
   */
  private async establishFailed(index: number): Promise<boolean> {
    const n = (this.failures[index] ?? 0) + 1;
    this.failures[index] = n;
    if (n < this.settings.fallbackAfter || index >= this.transports.length - 1) return false;
    try {
      await this.interruptible(this.api.me(AbortSignal.timeout(this.settings.connectTimeoutMs)));
    } catch (err) {
      return err instanceof NatterError && err.code === "unauthenticated";
    }
    if (this.closing) return false;
    this.failures[index] = 0;
    this.tIndex = index + 1;
    this.log("debug", `falling back from ${this.transports[index]} to ${this.transport()}`);
    return false;
  }

  /** Resolves with `p`'s value, or undefined once the client closes (closing what `p` opens). */
  private async interruptible<T>(p: Promise<T>): Promise<T | undefined> {
    if (this.closing) {
      p.then((v) => (v as { close?: () => void } | undefined)?.close?.(), () => undefined);
      return undefined;
    }
    let waker: (() => void) | undefined;
    const closed = new Promise<undefined>((resolve) => {
      waker = () => resolve(undefined);
      this.wakers.add(waker);
    });
    try {
      const winner = await Promise.race([p.then((v) => ({ v })), closed]);
      if (winner) return winner.v;
      p.then((v) => (v as { close?: () => void } | undefined)?.close?.(), () => undefined);
      return undefined;
    } finally {
      if (waker) this.wakers.delete(waker);
    }
  }

  private pause(ms: number): Promise<void> {
    if (this.closing) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.wakers.delete(done);
        this.onlineWaiters.delete(done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wakers.add(done);
      // The network coming back cuts a backoff short.
      this.onlineWaiters.add(done);
    });
  }

  /** Runs one connection until it stops. */
  private serve(conn: Conn): Promise<Stop> {
    return new Promise<Stop>((resolve) => {
      this.conn = conn;
      this.caughtUp = false;
      this.stopConn = resolve;
      this.checkUser(conn.ready.user_id);
      conn.start({
        frame: (f) => this.frame(conn, f),
        closed: (d) => this.stop(conn, d.unauthenticated ? { kind: "unauthenticated" } : { kind: "dropped", reason: d.reason }),
      });
      if (this.conn !== conn) return;
      if (conn instanceof WsConn) {
        this.sendSync(conn);
        this.startPing(conn);
      } else {
        // SSE and long-poll catch up by themselves from the cursors they were opened with.
        this.caughtUpNow(conn);
      }
      this.scheduleProbe(conn);
    });
  }

  /** Ends the current connection (if it is `conn`) with `stop`. */
  private stop(conn: Conn, stop: Stop): void {
    if (this.conn !== conn) return;
    this.conn = undefined;
    this.caughtUp = false;
    clearInterval(this.timers.ping);
    clearTimeout(this.timers.probe);
    conn.close();
    const resolve = this.stopConn;
    this.stopConn = undefined;
    resolve?.(stop);
  }

  private drop(conn: Conn, reason: string): void {
    this.stop(conn, { kind: "dropped", reason });
  }

  /** The connection is gone: what was on its wire is unsent again. */
  private disconnected(): void {
    this.timelines.disconnected();
    this.outboxState.disconnected();
    this.writes.clear();
    this.syncReqs.clear();
    this.fillReqs.clear();
  }

  private setState(state: ConnectionState): void {
    this.state = state;
    this.emitter.emit({ type: "connection", ...state } as ClientEvent);
  }

  private startPing(conn: WsConn): void {
    const every = Math.max(10, Math.min(this.settings.pingIntervalMs, this.settings.idleTimeoutMs / 2));
    this.timers.ping = setInterval(() => {
      if (conn !== this.conn) return;
      if (Date.now() - conn.lastReceived > this.settings.idleTimeoutMs) {
        this.drop(conn, "nothing received within the idle timeout");
        return;
      }
      conn.send({ type: "ping" });
    }, every);
  }

  /** While on a fallback, every `preferredRetryMs` the preferred transports are tried again. */
  private scheduleProbe(conn: Conn): void {
    if (this.tIndex === 0 || !(this.settings.preferredRetryMs > 0)) return;
    clearTimeout(this.timers.probe);
    this.timers.probe = setTimeout(() => void this.probe(conn), this.settings.preferredRetryMs);
  }

  private async probe(conn: Conn): Promise<void> {
    for (let index = 0; index < this.tIndex; index++) {
      if (conn !== this.conn || this.closing) return;
      let next: Conn;
      try {
        next = await this.openTransport(index);
      } catch {
        continue;
      }
      if (conn !== this.conn || this.closing) {
        next.close();
        return;
      }
      this.log("debug", `back on ${this.transports[index]}`);
      this.failures.fill(0);
      this.stop(conn, { kind: "switch", next, index });
      return;
    }
    if (conn === this.conn) this.scheduleProbe(conn);
  }

  // --- frames --------------------------------------------------------------------------------

  private frame(conn: Conn, f: ServerFrame): void {
    if (conn !== this.conn) return;
    switch (f.type) {
      case "entry":
        this.entries(conn, [f.entry]);
        break;
      case "synced": {
        if (!this.syncReqs.delete(f.req_id)) return;
        let more = f.more === true;
        for (const sc of f.conversations) {
          more ||= sc.has_more;
          this.emitter.emit({ type: "conversation", conversation: sc.conversation });
          this.entries(conn, sc.entries);
          if (conn !== this.conn) return;
        }
        if (more) this.sendSync(conn as WsConn);
        else if (!this.caughtUp) this.caughtUpNow(conn);
        break;
      }
      case "history": {
        const conv = this.fillReqs.get(f.req_id);
        if (conv === undefined) return;
        this.fillReqs.delete(f.req_id);
        this.filled(conn, conv, f.entries);
        break;
      }
      case "receipt": {
        const { type: _t, ...receipt } = f;
        this.emitter.emit({ type: "receipt", receipt });
        break;
      }
      case "typing": {
        const e: ClientEvent = { type: "typing", conversation: f.conversation, user: f.user, typing: f.typing };
        if (f.ttl_ms !== undefined) e.ttl_ms = f.ttl_ms;
        this.emitter.emit(e);
        break;
      }
      case "presence":
        this.emitter.emit({ type: "presence", users: f.users });
        break;
      case "invitation":
        this.emitter.emit({ type: "invitation", invitation: f.invitation });
        break;
      case "profile":
        this.emitter.emit({ type: "profile", user: f.user });
        break;
      case "blocks":
        this.emitter.emit({ type: "blocks", blocked: f.blocked });
        break;
      case "ready":
        // A long-poll stream lapsed and a new one started: renew what lives on the session.
        if (this.caughtUp) this.renewSession(conn);
        break;
      case "error":
        if (f.req_id === undefined) this.log("warn", `server error: ${f.code}: ${f.message}`);
        break;
      default:
        break; // replies: their requests resolve
    }
  }

  private sendSync(conn: WsConn): void {
    const req_id = conn.reqId();
    this.syncReqs.add(req_id);
    const frame = { type: "sync" as const, req_id, cursors: cursorsRecord(this.timelines.cursors()) };
    const limit = this.settings.syncLimit;
    conn.request(limit === undefined ? frame : { ...frame, limit }).catch((err: Error) => {
      if (conn !== this.conn || !this.syncReqs.delete(req_id)) return;
      this.drop(conn, `sync failed: ${err.message}`);
    });
  }

  /** Entries from the server (live or a sync page) through gap detection to the app. */
  private entries(conn: Conn, entries: Entry[]): void {
    const out: Entry[] = [];
    for (const entry of entries) {
      const fill = this.timelines.accept(normalizeEntry(entry), out);
      if (fill) this.requestFill(conn, fill);
    }
    this.deliver(out);
  }

  private requestFill(conn: Conn, fill: Fill): void {
    this.log("debug", `filling a gap in ${fill.conversation} after ${fill.after} (${fill.limit})`);
    if (conn instanceof WsConn) {
      // The reply is handled in frame order (`history` in `frame`); only errors come here.
      const req_id = conn.reqId();
      this.fillReqs.set(req_id, fill.conversation);
      conn
        .request({ type: "history", req_id, conversation: fill.conversation, after: fill.after, limit: fill.limit })
        .catch((err: unknown) => {
          if (conn !== this.conn || !this.fillReqs.delete(req_id)) return;
          this.fillError(conn, fill.conversation, err);
        });
      return;
    }
    conn.history(fill.conversation, { after: fill.after }, fill.limit).then(
      (page) => {
        if (conn === this.conn) this.filled(conn, fill.conversation, page.entries);
      },
      (err: unknown) => {
        if (conn === this.conn) this.fillError(conn, fill.conversation, err);
      },
    );
  }

  private filled(conn: Conn, conv: ConversationId, entries: Entry[]): void {
    const out: Entry[] = [];
    const next = this.timelines.filled(conv, entries.map(normalizeEntry), out);
    this.deliver(out);
    if (next && conn === this.conn) this.requestFill(conn, next);
  }

  private fillError(conn: Conn, conv: ConversationId, err: unknown): void {
    if (isRefusal(err)) {
      this.log("warn", `gap fill refused (${err.code}); skipping the gap`);
      const out: Entry[] = [];
      this.timelines.fillFailed(conv, out);
      this.deliver(out);
    } else {
      this.drop(conn, `gap fill failed: ${(err as Error)?.message}`);
    }
  }

  private deliver(entries: Entry[]): void {
    if (entries.length === 0) return;
    for (const entry of entries) {
      this.emitter.emit({ type: "entry", entry });
      this.delivered.add(entry.conversation);
    }
    this.saveLater();
    this.scheduleDelivered(this.settings.deliveredDelayMs);
    if (this.conn && this.emitter.full()) this.drop(this.conn, "the app's event buffer is full");
  }

  /** Caught up: report the connection and write everything queued. */
  private caughtUpNow(conn: Conn): void {
    this.caughtUp = true;
    const { user_id, device_id, session_id } = conn.ready;
    const state: ConnectionState = { state: "connected", transport: conn.transport, user_id, device_id };
    if (session_id !== undefined) state.session_id = session_id;
    this.setState(state);
    for (const r of this.requests) this.runRequest(r, conn);
    this.renewSession(conn, true);
    for (const [conv, seq] of this.reads) this.sendRead(conn, conv, seq);
    if (this.delivered.size > 0) this.scheduleDelivered(0);
    this.pump();
  }

  /** The presence watch list and status live on the session: set them on a new one. */
  private renewSession(conn: Conn, skipAsked = false): void {
    const asked = (kind: AppRequest["kind"]): boolean => skipAsked && [...this.requests].some((r) => r.kind === kind);
    const users = this.presence;
    if (users && !asked("presence")) {
      conn.subscribePresence(users).then(
        (res) => {
          if (conn === this.conn) this.emitter.emit({ type: "presence", users: res.users });
        },
        (err: unknown) => this.log("debug", `presence subscription failed: ${(err as Error)?.message}`),
      );
    }
    if (this.status !== "online" && !asked("status")) {
      conn.setStatus(this.status).catch((err: unknown) => this.log("debug", `status failed: ${(err as Error)?.message}`));
    }
  }

  // --- requests --------------------------------------------------------------------------------

  private request(kind: AppRequest["kind"], run: (conn: Conn) => Promise<unknown>): Promise<unknown> {
    if (this.closing) return Promise.reject(closedError());
    return new Promise((resolve, reject) => {
      const r: AppRequest = { kind, run, resolve, reject, on: undefined };
      this.requests.add(r);
      if (this.conn && this.caughtUp) this.runRequest(r, this.conn);
    });
  }

  private runRequest(r: AppRequest, conn: Conn): void {
    if (r.on === conn) return;
    r.on = conn;
    r.run(conn).then(
      (v) => {
        if (!this.requests.delete(r)) return;
        r.resolve(v);
      },
      (err: unknown) => {
        if (!this.requests.has(r)) return;
        if (err instanceof NatterError && err.kind === "network" && !this.closing) {
          // Lost with its connection: asked again on the next one.
          if (r.on === conn) r.on = undefined;
          if (conn === this.conn) this.drop(conn, err.message);
          return;
        }
        this.requests.delete(r);
        r.reject(err instanceof Error ? err : new Error(String(err)));
      },
    );
  }

  private sendRead(conn: Conn, conv: ConversationId, seq: Seq): void {
    conn.cursor(conv, "read", seq).then(
      () => this.readDone(conv, seq),
      (err: unknown) => {
        if (isRefusal(err)) this.readDone(conv, seq);
      },
    );
  }

  private readDone(conv: ConversationId, seq: Seq): void {
    if ((this.reads.get(conv) ?? Infinity) <= seq) this.reads.delete(conv);
  }

  private scheduleDelivered(delay: number): void {
    if (this.timers.delivered !== undefined) return;
    this.timers.delivered = setTimeout(() => {
      this.timers.delivered = undefined;
      void this.flushDelivered();
    }, delay);
  }

  /** Reports the delivered cursors that moved (kept for the next connection if it fails). */
  private flushDelivered(): Promise<unknown> {
    const conn = this.conn;
    if (!conn || !this.caughtUp || this.delivered.size === 0) return Promise.resolve();
    const cursors = this.timelines.cursors();
    const convs = [...this.delivered];
    this.delivered.clear();
    const sent: Promise<unknown>[] = [];
    for (const conv of convs) {
      const seq = cursors.get(conv);
      if (seq === undefined) continue;
      sent.push(
        conn.cursor(conv, "delivered", seq).catch((err: unknown) => {
          if (!isRefusal(err)) this.delivered.add(conv);
        }),
      );
    }
    return Promise.all(sent);
  }

  // --- the outbox ------------------------------------------------------------------------------

  private addWaiter(id: string, w: Waiter): void {
    const list = this.waiters.get(id);
    if (list) list.push(w);
    else this.waiters.set(id, [w]);
  }

  /** Saves a send in the outbox (the whole snapshot), then lets it go on the wire. */
  private async stage(item: OutboxItem): Promise<void> {
    if (this.closing) throw closedError();
    if (this.outboxState.length + this.staged.length >= this.settings.maxOutbox) {
      throw new NatterError("outbox_full", "the outbox is full");
    }
    const frame = JSON.stringify(appendFrame(Number.MAX_SAFE_INTEGER, item));
    if (encoder.encode(frame).length > this.settings.maxFrameBytes) {
      throw new NatterError("too_large", "the send is larger than max_frame_bytes");
    }
    this.staged.push(item);
    try {
      await this.save();
    } catch (err) {
      throw new NatterError("store", `saving the outbox failed: ${(err as Error)?.message}`);
    } finally {
      this.staged = this.staged.filter((i) => i !== item);
    }
    if (this.closing) {
      // Saved: the next client delivers it.
      return;
    }
    this.outboxState.push(item);
    this.pump();
  }

  /** Writes outbox items, in order, while fewer than the window await their ack. */
  private pump(): void {
    const conn = this.conn;
    if (!conn || !this.caughtUp || this.closing) return;
    const wait = this.sendsPausedUntil - Date.now();
    if (wait > 0) {
      // Timers may fire a little early by the wall clock: always leave one set.
      clearTimeout(this.timers.pump);
      this.timers.pump = setTimeout(() => this.pump(), wait + 1);
      return;
    }
    const window = conn.transport === "ws" ? this.settings.maxInFlight : 1;
    for (let item = this.outboxState.nextToSend(window); item; item = this.outboxState.nextToSend(window)) {
      const sent = item;
      const write = ++this.nextWrite;
      this.writes.set(sent.client_msg_id, write);
      conn.append(sent).then(
        (ack) => this.acked(conn, ack),
        (err: unknown) => {
          // A refusal of a write that was since written again (after a throttle) is stale.
          if (this.writes.get(sent.client_msg_id) === write) this.appendFailed(conn, sent, err);
        },
      );
    }
  }

  private acked(conn: Conn, ack: Ack): void {
    if (conn !== this.conn) return;
    this.reportAcks(this.outboxState.acked(ack));
    this.pump();
  }

  private reportAcks(done: Array<[OutboxItem, Ack]>): void {
    if (done.length === 0) return;
    this.saveLater();
    for (const [item, ack] of done) {
      this.writes.delete(item.client_msg_id);
      this.emitter.emit({ type: "acked", ack });
      const waiters = this.waiters.get(item.client_msg_id);
      this.waiters.delete(item.client_msg_id);
      for (const w of waiters ?? []) w.resolve(ack);
    }
  }

  private appendFailed(conn: Conn, item: OutboxItem, err: unknown): void {
    if (conn !== this.conn) return;
    if (!(err instanceof NatterError) || err.kind !== "server" || !err.body) {
      // The connection is in trouble (a REST failure on the HTTP transports): reconnect.
      this.drop(conn, `send failed: ${(err as Error)?.message}`);
      return;
    }
    const body = err.body;
    if (body.code === "too_many_requests") {
      // Slow down, keep the connection: this send and the ones after it go again, in order.
      const wait = Math.min(body.retry_after_ms ?? 1_000, MAX_SEND_PAUSE_MS);
      this.sendsPausedUntil = Math.max(this.sendsPausedUntil, Date.now() + wait);
      this.outboxState.throttled(item.client_msg_id);
      this.pump();
      return;
    }
    if (retryable(body.code)) {
      this.drop(conn, `server busy: ${body.message}`);
      return;
    }
    const [removed, done] = this.outboxState.refused(item.client_msg_id);
    this.writes.delete(item.client_msg_id);
    if (removed) {
      this.saveLater();
      this.emitter.emit({ type: "send_failed", conversation: removed.conversation, client_msg_id: removed.client_msg_id, error: body });
      const waiters = this.waiters.get(removed.client_msg_id);
      this.waiters.delete(removed.client_msg_id);
      for (const w of waiters ?? []) w.reject(err);
    }
    this.reportAcks(done);
    this.pump();
  }

  // --- state -----------------------------------------------------------------------------------

  /** A loaded state of another user is dropped (cursors and sends), never resumed as this one. */
  private checkUser(user: UserId): void {
    const loaded = this.loaded;
    this.loaded = undefined;
    if (loaded && loaded.user !== user) {
      this.log("warn", "stored state belongs to another user; discarding it");
      this.timelines.clear();
      for (const item of this.outboxState.clear()) {
        if (!loaded.ids.has(item.client_msg_id)) this.outboxState.push(item);
      }
      for (const id of loaded.ids) {
        const waiters = this.waiters.get(id);
        this.waiters.delete(id);
        for (const w of waiters ?? []) w.reject(new NatterError("store", "the send belonged to another user's state"));
      }
    }
    if (this.user !== user) {
      this.user = user;
      void this.save().catch(() => undefined);
    }
  }

  private snapshot(): Snapshot {
    const s: Snapshot = {
      cursors: cursorsRecord(this.timelines.cursors()),
      outbox: [...this.outboxState.items(), ...this.staged],
    };
    if (this.user !== undefined) s.user = this.user;
    return s;
  }

  /** Saves the state as it is when the save starts; saves run one after another. */
  private save(): Promise<void> {
    const run = this.saveChain.then(() => this.store.save(this.snapshot()));
    this.saveChain = run.catch((err: unknown) => this.log("warn", `saving the client state failed: ${(err as Error)?.message}`));
    return run;
  }

  private saveLater(): void {
    if (this.timers.save !== undefined) return;
    this.timers.save = setTimeout(() => {
      this.timers.save = undefined;
      void this.save().catch(() => undefined);
    }, this.settings.persistDelayMs);
  }

  private async shutdown(reason: CloseReason): Promise<void> {
    this.closing = true;
    this.wake();
    for (const t of [this.timers.delivered, this.timers.save, this.timers.pump, this.timers.probe]) clearTimeout(t);
    clearInterval(this.timers.ping);
    await this.save().catch(() => undefined);
    for (const r of this.requests) r.reject(closedError());
    this.requests.clear();
    for (const list of this.waiters.values()) for (const w of list) w.reject(closedError());
    this.waiters.clear();
    this.setState({ state: "closed", reason });
    this.emitter.end();
  }
}

function messageEntry(body: string, options: SendOptions): NewEntry {
  const entry: NewEntry = { kind: "message", body };
  if (options.reply_to !== undefined) entry.reply_to = options.reply_to;
  if (options.attachments && options.attachments.length > 0) {
    entry.attachments = options.attachments.map((a) => (typeof a === "string" ? a : a.id));
  }
  if (options.mentions && options.mentions.length > 0) entry.mentions = options.mentions;
  return entry;
}

async function withTimeout(p: Promise<unknown>, ms: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([p.catch(() => undefined), new Promise((resolve) => (timer = setTimeout(resolve, ms)))]);
  clearTimeout(timer);
}
