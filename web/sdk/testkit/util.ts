/**
 * What the SDK tests share: accounts, clients with test settings (fast backoff and cursor
 * reports), an event recorder whose waits are bounded (never sleeps), and the checks every
 * guarantee test makes (contiguous, once, in order).
 */
import assert from "node:assert/strict";
import { EventSource } from "eventsource";
import WebSocket from "ws";
import { Api } from "../src/api.js";
import { Client, type ClientOptions } from "../src/client.js";
import type { ClientEvent } from "../src/events.js";
import type { ConversationId, Entry, UserId } from "../src/types.js";

export const PASSWORD = "correct horse battery staple 42";
/** The longest any single wait in a test may take. */
export const WAIT_MS = 20_000;

export async function account(baseUrl: string, handle: string): Promise<{ id: UserId; token: string; api: Api }> {
  const api = new Api(baseUrl);
  const session = await api.registerOrLogin(handle, PASSWORD, "test");
  return { id: session.user_id, token: session.token, api: api.withToken(session.token) };
}

const openClients = new Set<Client>();

/** Closes every client the test opened (a failed assertion must not leave one reconnecting). */
export async function closeClients(): Promise<void> {
  const all = [...openClients];
  openClients.clear();
  await Promise.all(all.map((c) => c.close().catch(() => undefined)));
}

/** A client for tests: `ws` and `eventsource` as constructors, fast backoff and reports. */
export async function connect(baseUrl: string, token: string, options: Partial<ClientOptions> = {}): Promise<Client> {
  const client = await Client.connect({
    baseUrl,
    token,
    WebSocket: WebSocket,
    EventSource: EventSource,
    backoff: { initialMs: 20, maxMs: 200, stableAfterMs: 5_000 },
    deliveredDelayMs: 20,
    persistDelayMs: 20,
    ...options,
  });
  openClients.add(client);
  return client;
}

/** Records every event of a client; `waitFor` reads on from where the last wait stopped. */
export class Recorder {
  readonly seen: ClientEvent[] = [];
  private pos = 0;
  private wake: (() => void) | undefined;

  constructor(client: Client) {
    client.on("*", (e) => {
      this.seen.push(e);
      this.wake?.();
    });
  }

  async waitFor<T>(what: string, pick: (e: ClientEvent) => T | undefined, timeoutMs = WAIT_MS): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      while (this.pos < this.seen.length) {
        const e = this.seen[this.pos++] as ClientEvent;
        const v = pick(e);
        if (v !== undefined && v !== false) return v;
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        const tail = this.seen.slice(-15).map((e) => JSON.stringify(e).slice(0, 200)).join("\n");
        throw new Error(`timed out waiting for ${what}; last events:\n${tail}`);
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.wake = () => {
          clearTimeout(timer);
          this.wake = undefined;
          resolve();
        };
      });
    }
  }

  connected(): Promise<string> {
    return this.waitFor("connected", (e) => (e.type === "connection" && e.state === "connected" ? e.transport : undefined));
  }

  entry(conv: ConversationId, seq: number): Promise<Entry> {
    return this.waitFor(`seq ${seq} of ${conv}`, (e) => (e.type === "entry" && e.entry.conversation === conv && e.entry.seq === seq ? e.entry : undefined));
  }

  entries(conv: ConversationId): Entry[] {
    return entriesOf(this.seen, conv);
  }

  /** Waits until every id was acked; returns the acks in the order of `ids`. */
  async acks(ids: string[]): Promise<Array<{ client_msg_id: string; seq: number }>> {
    const missing = new Set(ids);
    const found = (): void => {
      for (const e of this.seen) if (e.type === "acked" && e.ack.client_msg_id) missing.delete(e.ack.client_msg_id);
    };
    found();
    if (missing.size > 0) {
      await this.waitFor(`${missing.size} acks`, (e) => {
        if (e.type === "acked" && e.ack.client_msg_id) missing.delete(e.ack.client_msg_id);
        return missing.size === 0 ? true : undefined;
      });
    }
    return ids.map((id) => {
      const ev = this.seen.find((e) => e.type === "acked" && e.ack.client_msg_id === id);
      assert.ok(ev && ev.type === "acked");
      return { client_msg_id: id, seq: ev.ack.seq };
    });
  }

  /** Every `acked` event's client_msg_id, in the order reported. */
  ackedIds(): string[] {
    return this.seen.flatMap((e) => (e.type === "acked" && e.ack.client_msg_id ? [e.ack.client_msg_id] : []));
  }
}

export function entriesOf(seen: ClientEvent[], conv: ConversationId): Entry[] {
  return seen.flatMap((e) => (e.type === "entry" && e.entry.conversation === conv ? [e.entry] : []));
}

export function body(entry: Entry): string | undefined {
  return entry.kind === "message" ? entry.body : undefined;
}

/** Messages from `sender`, as their texts, in the order the app got them. */
export function textsFrom(entries: Entry[], sender: UserId): string[] {
  return entries.filter((e) => e.sender === sender).flatMap((e) => (e.kind === "message" ? [e.body] : []));
}

/** Strictly increasing seqs with no gap (the order guarantee as the app sees it). */
export function assertContiguous(entries: Entry[]): void {
  const seqs = entries.map((e) => e.seq);
  const first = seqs[0];
  if (first === undefined) return;
  assert.deepEqual(seqs, seqs.map((_, i) => first + i), "entries must be contiguous, once each, in order");
}

/** The whole log of a conversation, read over REST page by page. */
export async function wholeLog(api: Api, conv: ConversationId): Promise<Entry[]> {
  const out: Entry[] = [];
  let after = 0;
  for (;;) {
    const page = await api.history(conv, { after }, 500);
    out.push(...page.entries);
    const last = page.entries[page.entries.length - 1];
    if (last) after = last.seq;
    if (!page.has_more) return out;
  }
}
