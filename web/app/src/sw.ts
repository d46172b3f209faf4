/**
 * The service worker of Web Push (issue 14), served at `/app/sw.js`. Its scope is its own
 * directory, `/app/`, which holds no page (the app is `/`): a push worker needs to control
 * none, it only owns this origin's push subscription, so the server serves it like the
 * app's other scripts. `push.ts` registers it and subscribes; the server encrypts each
 * notification to the subscription, and the browser's push service wakes this worker with
 * it, also when no tab of the app is open.
 *
 * - A `notify` push shows one notification per conversation: its tag is the payload's
 *   `collapse_id`, so a later push for the same conversation replaces it. The title is the
 *   group's title, else the sender, else "Natter"; the body the payload's (a group's with
 *   the sender in front), else "New message" (what shows depends on the server's
 *   `push.payload` setting).
 * - A `clear` push (the conversation was read on another device) closes that tag's
 *   notifications and shows nothing. Chromium's `userVisibleOnly` allows the occasional push
 *   that shows nothing, and this one follows a notification shown before; the Web Push
 *   guidance is to close it, not to replace it with a notification that says nothing.
 * - A click focuses a tab of the app and asks it to open the conversation, or opens one at
 *   `/#c=<conversation>` (the app's address of a conversation).
 */

/** This script runs in a ServiceWorkerGlobalScope (tsconfig.sw.json gives its types). */
declare const self: ServiceWorkerGlobalScope;

/** What the server sends (crates/server/src/push.rs `Payload`); absent fields are the privacy setting. */
interface Payload {
  kind: "notify" | "clear";
  conversation: number;
  collapse_id: string;
  first_seq?: number;
  last_seq?: number;
  count?: number;
  title?: string;
  sender?: string;
  body?: string;
}

/** What a notification carries for its click. */
interface Shown {
  conversation: number;
}

/** What this worker posts to a tab of the app (push.ts reads it). */
interface ToPage {
  t: "open";
  conversation: number;
}

self.addEventListener("install", () => {
  // A new version takes over at once: it controls no page whose state it could break.
  void self.skipWaiting();
});

self.addEventListener("push", (event) => {
  event.waitUntil(onPush(parse(event.data)));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const data = event.notification.data as Partial<Shown> | null;
  event.waitUntil(openApp(typeof data?.conversation === "number" ? data.conversation : undefined));
});

function parse(data: PushMessageData | null): Payload | undefined {
  try {
    const p = data?.json() as Partial<Payload> | undefined;
    if (p && (p.kind === "notify" || p.kind === "clear") && typeof p.conversation === "number") {
      return { collapse_id: `c${p.conversation}`, ...p } as Payload;
    }
  } catch {
    // Not JSON: shown as a plain "new message" below.
  }
  return undefined;
}

async function onPush(p: Payload | undefined): Promise<void> {
  if (p?.kind === "clear") {
    for (const n of await self.registration.getNotifications({ tag: p.collapse_id })) n.close();
    return;
  }
  // A group's notification names the group, and the sender in front of the text.
  const title = p?.title ?? p?.sender ?? "Natter";
  const text = p?.body ?? "New message";
  const body = p?.title !== undefined && p.sender !== undefined ? `${p.sender}: ${text}` : text;
  const options: NotificationOptions & { renotify?: boolean } = {
    body,
    icon: "/app/icon.svg",
  };
  if (p) {
    options.tag = p.collapse_id;
    // The replacement of an earlier notification of the conversation alerts again.
    options.renotify = true;
    options.data = { conversation: p.conversation } satisfies Shown;
  }
  await self.registration.showNotification(title, options);
}

async function openApp(conversation: number | undefined): Promise<void> {
  const app = new URL("/", self.location.origin);
  // The app's tabs are not controlled by this worker (its scope is /app/): include them.
  const tabs = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  const tab = tabs.find((c) => new URL(c.url).pathname === app.pathname);
  if (tab) {
    await tab.focus().catch(() => undefined);
    if (conversation !== undefined) tab.postMessage({ t: "open", conversation } satisfies ToPage);
    return;
  }
  if (conversation !== undefined) app.hash = `c=${conversation}`;
  await self.clients.openWindow(app.href);
}

export {};
