/**
 * The live client as the page sees it, wherever it runs. Tabs of one browser profile share
 * one {@link Client} in a SharedWorker (`worker.ts`), so the server sees one session per
 * device, not per tab; where SharedWorker is missing (Chrome on Android) or fails to start,
 * the tab runs its own client. Either way the page gets the same calls and events.
 *
 * Tab → worker: `hello` (which account), `call` (a client method, answered by `reply`),
 * `presence` (this tab's watched users; the worker watches the union), `bye` (tab closing).
 * Worker → tab: `event` (every client event, to every tab), `reply`.
 */
import { Client, IndexedDbStore } from "@natter/sdk";
import type {
  Ack,
  ClientEvent,
  ConnectionState,
  ConversationId,
  EntryPage,
  NewEntry,
  OutboxItem,
  PresenceSubscribed,
  Seq,
  UserId,
} from "@natter/sdk";

/** Who the client is for: the server, the token, and a key naming the stored state. */
export interface Account {
  baseUrl: string;
  token: string;
  /** `user_id:device_id`: the IndexedDB database of cursors and outbox. */
  key: string;
}

/** The client methods the page calls, by name, with JSON arguments and results. */
export interface Calls {
  enqueue(conversation: ConversationId, entry: NewEntry, clientMsgId?: string): Promise<string>;
  read(conversation: ConversationId, seq: Seq): Promise<void>;
  typing(conversation: ConversationId, typing: boolean): Promise<void>;
  history(conversation: ConversationId, range: { before?: Seq; after?: Seq }, limit?: number): Promise<EntryPage>;
  outbox(): Promise<OutboxItem[]>;
  connection(): Promise<ConnectionState>;
  waitForAck(clientMsgId: string): Promise<Ack>;
  /** The browser's online state: offline drops the connection at once and holds sends. */
  setOnline(online: boolean): Promise<void>;
}
export type Method = keyof Calls;

export type ToWorker =
  | { t: "hello"; account: Account }
  | { t: "call"; id: number; method: Method; args: unknown[] }
  | { t: "presence"; id: number; users: UserId[] }
  | { t: "bye" };
export type FromWorker =
  | { t: "event"; event: ClientEvent }
  | { t: "reply"; id: number; ok: true; value: unknown }
  | { t: "reply"; id: number; ok: false; error: { message: string; code?: string } };

export interface Live {
  /** Runs a client method. */
  call<M extends Method>(method: M, ...args: Parameters<Calls[M]>): ReturnType<Calls[M]>;
  /** Replaces the users this page watches. */
  watch(users: UserId[]): Promise<PresenceSubscribed>;
  /** Every client event. */
  onEvent(handler: (event: ClientEvent) => void): void;
  /** Whether the connection is shared with other tabs. */
  readonly shared: boolean;
  /** Leaves the client: the last tab to leave a shared one, or a tab's own, closes it. */
  close(): Promise<void>;
}

/** The stored state of one account: cursors and outbox in IndexedDB. */
export function openClient(account: Account): Promise<Client> {
  return Client.connect({
    baseUrl: account.baseUrl,
    token: account.token,
    store: new IndexedDbStore(account.key, { prefix: "natter" }),
    // The browser offers permessage-deflate; asking lets the server agree (`ws_compression`).
    compress: true,
  });
}

/** Calls one of {@link Calls} on a client. */
export function run(client: Client, method: Method, args: unknown[]): Promise<unknown> {
  const f = (client as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>)[method];
  if (typeof f !== "function") return Promise.reject(new Error(`no such call: ${method}`));
  return f.apply(client, args);
}

export async function connect(account: Account, options: { shared?: boolean } = {}): Promise<Live> {
  const canShare = typeof SharedWorker !== "undefined" && options.shared !== false;
  if (canShare) {
    try {
      return await sharedLive(account);
    } catch (err) {
      console.warn("natter: the shared worker did not start; this tab connects by itself", err);
    }
  }
  return localLive(account);
}

async function localLive(account: Account): Promise<Live> {
  const client = await openClient(account);
  const handlers: Array<(e: ClientEvent) => void> = [];
  client.on("*", (event: ClientEvent) => handlers.forEach((h) => h(event)));
  return {
    shared: false,
    call: ((method: Method, ...args: unknown[]) => run(client, method, args)) as Live["call"],
    watch: (users) => client.subscribePresence(users),
    onEvent: (h) => void handlers.push(h),
    close: () => client.close(),
  };
}

function sharedLive(account: Account): Promise<Live> {
  const worker = new SharedWorker("/app/worker.js", { type: "module", name: "natter" });
  const port = worker.port;
  const handlers: Array<(e: ClientEvent) => void> = [];
  const waiting = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();
  let next = 0;
  const ask = (msg: { t: "call"; method: Method; args: unknown[] } | { t: "presence"; users: UserId[] }) =>
    new Promise<unknown>((resolve, reject) => {
      const id = ++next;
      waiting.set(id, { resolve, reject });
      port.postMessage({ ...msg, id } as ToWorker);
    });
  port.onmessage = (m: MessageEvent<FromWorker>) => {
    const msg = m.data;
    if (msg.t === "event") {
      handlers.forEach((h) => h(msg.event));
    } else {
      const w = waiting.get(msg.id);
      waiting.delete(msg.id);
      if (!w) return;
      if (msg.ok) w.resolve(msg.value);
      else w.reject(Object.assign(new Error(msg.error.message), { code: msg.error.code }));
    }
  };
  port.start();
  const bye = () => port.postMessage({ t: "bye" } satisfies ToWorker);
  addEventListener("pagehide", bye);
  port.postMessage({ t: "hello", account } satisfies ToWorker);
  const live: Live = {
    shared: true,
    call: ((method: Method, ...args: unknown[]) => ask({ t: "call", method, args })) as Live["call"],
    watch: (users) => ask({ t: "presence", users }) as Promise<PresenceSubscribed>,
    onEvent: (h) => void handlers.push(h),
    close: async () => {
      removeEventListener("pagehide", bye);
      bye();
      port.close();
    },
  };
  // The worker answers once it has the client: a worker that cannot start never does.
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no answer from the shared worker")), 10_000);
    worker.onerror = (e) => {
      clearTimeout(timer);
      reject(new Error(e.message || "shared worker error"));
    };
    live.call("connection").then(
      () => {
        clearTimeout(timer);
        resolve(live);
      },
      (err) => {
        clearTimeout(timer);
        reject(err);
      },
    );
  });
}
