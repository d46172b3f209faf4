/**
 * Web Push in the page (issue 14): when this browser has service workers, the Push API and
 * notifications, and the server lists `webpush` (`GET /v1/push/config`), the account panel
 * offers **Enable notifications**. That asks for permission, registers the service worker
 * (`sw.ts`, at `/app/sw.js`), subscribes with the server's VAPID key and registers the
 * subscription with the server (`POST /v1/me/push`, provider `webpush`); the registration's
 * id is kept per user and device in `localStorage`. The server pushes only while this user
 * has no live session, so the tab's own notifications (`app.ts`) and these do not overlap.
 *
 * At each start a registration made before is kept in step: a subscription the browser
 * dropped or changed, or a registration the server dropped (a dead endpoint), is made again;
 * a permission taken back drops it. Every failure (no push service, as in a headless
 * browser, a refused permission, a server error) is said in the panel and changes nothing
 * else.
 */
import type { Api, ConversationId } from "@natter/sdk";
import { byId } from "./dom.js";

const SW_URL = "/app/sw.js";
/** The script's own directory: a push-only worker needs to control no page. */
const SW_SCOPE = "/app/";
const KEY_PREFIX = "natter.push.";
/** How long the browser's push service may take to subscribe; some never answer. */
const SUBSCRIBE_TIMEOUT_MS = 20_000;
/** How long a sign-out waits for the subscription to be dropped. */
const FORGET_TIMEOUT_MS = 2_000;

/** What is kept of this device's registration. */
interface Registered {
  id: number;
  endpoint: string;
}

/** What the service worker posts to the page (sw.ts `ToPage`). */
interface FromWorker {
  t: "open";
  conversation: ConversationId;
}

type Status = { kind: "off" } | { kind: "busy"; text: string } | { kind: "on" } | { kind: "denied" } | { kind: "failed"; text: string };

let setup: { api: Api; key: string; vapid: Uint8Array<ArrayBuffer> } | undefined;
let status: Status = { kind: "off" };

/** Whether this browser can do Web Push at all. */
export function pushSupported(): boolean {
  return "serviceWorker" in navigator && typeof PushManager !== "undefined" && typeof Notification !== "undefined";
}

/** Whether the account panel offers push (the browser can and the server has `webpush`). */
export function pushOffered(): boolean {
  return setup !== undefined;
}

/**
 * After sign-in: asks the server whether it does Web Push, shows the control, keeps an
 * earlier registration in step, and opens conversations the service worker asks for
 * (`open`, a notification's click).
 */
export async function startPush(api: Api, key: string, open: (conv: ConversationId) => void): Promise<void> {
  if (!pushSupported()) return;
  navigator.serviceWorker.addEventListener("message", (e: MessageEvent<Partial<FromWorker>>) => {
    if (e.data?.t === "open" && typeof e.data.conversation === "number") open(e.data.conversation);
  });
  navigator.serviceWorker.startMessages();
  // A server without the endpoint (older) or with push off: no control.
  const config = await api.pushConfig().catch(() => undefined);
  if (!config?.providers.includes("webpush") || !config.vapid_public_key) return;
  let vapid: Uint8Array<ArrayBuffer>;
  try {
    vapid = fromBase64Url(config.vapid_public_key);
  } catch {
    return;
  }
  setup = { api, key, vapid };
  byId("push").hidden = false;
  byId("push-toggle").onclick = () => void (status.kind === "on" ? disablePush() : enablePush());
  const kept = stored();
  status = kept ? { kind: "on" } : Notification.permission === "denied" ? { kind: "denied" } : { kind: "off" };
  render();
  if (kept) await resync(kept).catch((err: unknown) => show({ kind: "failed", text: `Notifications may not arrive: ${messageOf(err)}` }));
}

/** Asks permission, subscribes and registers with the server. */
export async function enablePush(): Promise<void> {
  const s = setup;
  if (!s || status.kind === "busy") return;
  show({ kind: "busy", text: "Turning notifications on…" });
  try {
    const permission = await Notification.requestPermission();
    if (permission !== "granted") {
      return show(permission === "denied" ? { kind: "denied" } : { kind: "failed", text: "Notifications were not allowed." });
    }
    await register(s, await subscribe(await worker(), s.vapid));
    show({ kind: "on" });
  } catch (err) {
    show({ kind: "failed", text: `Notifications could not be turned on: ${messageOf(err)}` });
  }
}

/** Unregisters from the server and drops the browser's subscription. */
export async function disablePush(): Promise<void> {
  const s = setup;
  if (!s || status.kind === "busy") return;
  show({ kind: "busy", text: "Turning notifications off…" });
  try {
    const kept = stored();
    if (kept) await s.api.unregisterPush(kept.id).catch(ignoreNotFound);
    localStorage.removeItem(KEY_PREFIX + s.key);
    const reg = await navigator.serviceWorker.getRegistration(SW_SCOPE);
    await (await reg?.pushManager.getSubscription())?.unsubscribe();
    show({ kind: "off" });
  } catch (err) {
    show({ kind: "failed", text: `Notifications could not be turned off: ${messageOf(err)}` });
  }
}

/** At sign-out (the server deletes the device's registration itself): drops the subscription, briefly. */
export async function forgetPush(): Promise<void> {
  if (!setup) return;
  localStorage.removeItem(KEY_PREFIX + setup.key);
  const drop = (async () => {
    const reg = await navigator.serviceWorker.getRegistration(SW_SCOPE);
    await (await reg?.pushManager.getSubscription())?.unsubscribe();
  })().catch(() => undefined);
  await Promise.race([drop, new Promise((r) => setTimeout(r, FORGET_TIMEOUT_MS))]);
}

/** Closes the pushed notifications of a conversation being read here. */
export function closePushed(conv: ConversationId): void {
  if (!setup) return;
  void navigator.serviceWorker
    .getRegistration(SW_SCOPE)
    .then((reg) => reg?.getNotifications({ tag: `c${conv}` }))
    .then((shown) => shown?.forEach((n) => n.close()))
    .catch(() => undefined);
}

// ---- the steps ---------------------------------------------------------------------------

/** The service worker's registration once its worker is active (a subscription needs one). */
async function worker(): Promise<ServiceWorkerRegistration> {
  const reg = await navigator.serviceWorker.register(SW_URL, { scope: SW_SCOPE });
  if (reg.active) return reg;
  const w = reg.installing ?? reg.waiting;
  if (!w) throw new Error("the service worker did not start");
  await new Promise<void>((resolve, reject) => {
    const check = (): void => {
      if (w.state === "activated" || reg.active) resolve();
      else if (w.state === "redundant") reject(new Error("the service worker did not install"));
    };
    w.addEventListener("statechange", check);
    check();
  });
  return reg;
}

/** This origin's subscription for `vapid`: the existing one, or a new one. */
async function subscribe(reg: ServiceWorkerRegistration, vapid: Uint8Array<ArrayBuffer>): Promise<PushSubscription> {
  const existing = await reg.pushManager.getSubscription();
  if (existing) {
    const key = existing.options.applicationServerKey;
    if (key && sameBytes(new Uint8Array(key), vapid)) return existing;
    // Made with another server key (the server's changed): a new one is needed.
    await existing.unsubscribe();
  }
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error("the browser's push service did not answer")), SUBSCRIBE_TIMEOUT_MS);
  });
  try {
    return await Promise.race([reg.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: vapid }), late]);
  } finally {
    clearTimeout(timer);
  }
}

/** Registers `sub` with the server (the same endpoint again moves it to this device) and keeps its id. */
async function register(s: NonNullable<typeof setup>, sub: PushSubscription): Promise<void> {
  const p256dh = sub.getKey("p256dh");
  const auth = sub.getKey("auth");
  if (!p256dh || !auth) throw new Error("the subscription has no encryption keys");
  const id = await s.api.registerPush({ provider: "webpush", token: sub.endpoint, p256dh: toBase64Url(p256dh), auth: toBase64Url(auth) });
  const kept: Registered = { id, endpoint: sub.endpoint };
  localStorage.setItem(KEY_PREFIX + s.key, JSON.stringify(kept));
}

/** Makes an earlier registration true again, or drops it when permission was taken back. */
async function resync(kept: Registered): Promise<void> {
  const s = setup!;
  if (Notification.permission !== "granted") {
    localStorage.removeItem(KEY_PREFIX + s.key);
    await s.api.unregisterPush(kept.id).catch(ignoreNotFound);
    return show(Notification.permission === "denied" ? { kind: "denied" } : { kind: "off" });
  }
  const reg = await worker();
  const sub = await subscribe(reg, s.vapid);
  const known = (await s.api.pushRegistrations()).some((r) => r.id === kept.id);
  if (sub.endpoint === kept.endpoint && known) return;
  if (known) await s.api.unregisterPush(kept.id).catch(ignoreNotFound);
  await register(s, sub);
}

// ---- the control -------------------------------------------------------------------------

function show(next: Status): void {
  status = next;
  render();
}

function render(): void {
  const note = byId("push-note");
  const toggle = byId<HTMLButtonElement>("push-toggle");
  toggle.hidden = status.kind === "denied";
  toggle.disabled = status.kind === "busy";
  toggle.textContent = status.kind === "on" ? "Turn notifications off" : "Enable notifications";
  note.classList.toggle("error", status.kind === "failed");
  note.textContent =
    status.kind === "on"
      ? "Notifications are on for this browser, also when Natter is closed."
      : status.kind === "denied"
        ? "This browser blocks Natter's notifications: allow them in the site settings."
        : status.kind === "busy" || status.kind === "failed"
          ? status.text
          : "Get notified of new messages when Natter is closed.";
}

// ---- helpers -----------------------------------------------------------------------------

function stored(): Registered | undefined {
  if (!setup) return undefined;
  try {
    const r = JSON.parse(localStorage.getItem(KEY_PREFIX + setup.key) ?? "null") as Registered | null;
    return typeof r?.id === "number" && typeof r.endpoint === "string" ? r : undefined;
  } catch {
    return undefined;
  }
}

function ignoreNotFound(err: unknown): void {
  if ((err as { code?: string }).code !== "not_found") throw err;
}

function messageOf(err: unknown): string {
  return (err as Error)?.message || String(err);
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function fromBase64Url(text: string): Uint8Array<ArrayBuffer> {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const raw = atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4));
  return Uint8Array.from(raw, (c) => c.charCodeAt(0));
}

function toBase64Url(buf: ArrayBuffer): string {
  let raw = "";
  for (const b of new Uint8Array(buf)) raw += String.fromCharCode(b);
  return btoa(raw).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}
