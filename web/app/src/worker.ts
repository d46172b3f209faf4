/**
 * The SharedWorker that holds one live client for every tab of this browser profile (see
 * `link.ts`). It keeps one client per account: a tab saying hello with another account (a
 * logout and a login elsewhere) closes the old one. Events go to every tab; each tab's
 * watched users are kept apart and the client watches their union. When the last tab says
 * bye, the client closes after a short grace, so a reload reuses the connection.
 */
import type { Client, ClientEvent, UserId } from "@natter/sdk";
import { type Account, type FromWorker, type ToWorker, openClient, run } from "./link.js";

/** The SharedWorker's global scope (the DOM library types the page; this is all we use). */
declare const self: { onconnect: ((e: MessageEvent) => void) | null };

/** How long a client outlives its last tab (a reload comes back within it). */
const GRACE_MS = 5_000;

interface Held {
  account: Account;
  client: Promise<Client>;
  ports: Set<MessagePort>;
  watched: Map<MessagePort, UserId[]>;
  idle: ReturnType<typeof setTimeout> | undefined;
}

let held: Held | undefined;

function post(port: MessagePort, msg: FromWorker): void {
  port.postMessage(msg);
}

function errorOf(err: unknown): { message: string; code?: string } {
  const e = err as { message?: string; code?: string };
  return { message: e?.message ?? String(err), ...(e?.code ? { code: e.code } : {}) };
}

function drop(h: Held): void {
  if (held === h) held = undefined;
  if (h.idle) clearTimeout(h.idle);
  void h.client.then((c) => c.close()).catch(() => undefined);
}

function hold(account: Account, port: MessagePort): Held {
  if (held && (held.account.key !== account.key || held.account.token !== account.token)) drop(held);
  if (!held) {
    const h: Held = {
      account,
      client: openClient(account),
      ports: new Set(),
      watched: new Map(),
      idle: undefined,
    };
    void h.client.then(
      (client) =>
        client.on("*", (event: ClientEvent) => {
          for (const p of h.ports) post(p, { t: "event", event });
        }),
      () => drop(h),
    );
    held = h;
  }
  if (held.idle) {
    clearTimeout(held.idle);
    held.idle = undefined;
  }
  held.ports.add(port);
  return held;
}

function leave(h: Held, port: MessagePort): void {
  h.ports.delete(port);
  h.watched.delete(port);
  if (h.ports.size === 0) h.idle = setTimeout(() => drop(h), GRACE_MS);
}

self.onconnect = (e: MessageEvent) => {
  const port = e.ports[0]!;
  let mine: Held | undefined;
  port.onmessage = async (m: MessageEvent<ToWorker>) => {
    const msg = m.data;
    if (msg.t === "hello") {
      mine = hold(msg.account, port);
      return;
    }
    if (msg.t === "bye") {
      if (mine) leave(mine, port);
      mine = undefined;
      return;
    }
    const h = mine;
    if (!h || held !== h) {
      post(port, { t: "reply", id: msg.id, ok: false, error: { message: "not connected", code: "closed" } });
      return;
    }
    try {
      const client = await h.client;
      let value: unknown;
      if (msg.t === "presence") {
        h.watched.set(port, msg.users);
        const union = [...new Set([...h.watched.values()].flat())];
        value = await client.subscribePresence(union);
      } else {
        value = await run(client, msg.method, msg.args);
      }
      post(port, { t: "reply", id: msg.id, ok: true, value });
    } catch (err) {
      post(port, { t: "reply", id: msg.id, ok: false, error: errorOf(err) });
    }
  };
  port.start();
};
