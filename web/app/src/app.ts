/**
 * Natter's web client: sign in, the conversation list by last activity, direct chats and
 * groups, history that scrolls back, sends shown at once while the outbox holds them,
 * delivered and read marks, typing, presence, replies, edits, deletions, reactions,
 * attachments with previews and upload progress, a visible reconnecting state, and desktop
 * notifications while the tab is hidden; message search (results with the matches marked,
 * opening the chat at the message found); your profile and account (devices, password,
 * blocked users, a download of your data, and Web Push notifications for while Natter is
 * closed: `push.ts`, `sw.ts`); blocking and reporting; group moderation for a
 * group's admins; and the admin page (`admin.ts`) for server administrators. The live side
 * is `link.ts` (one connection shared by this profile's tabs); REST calls go straight from
 * the tab.
 */
import { Api, NatterError } from "@natter/sdk";
import type {
  Attachment,
  User,
  ClientEvent,
  ConnectionState,
  ConversationId,
  ConversationSummary,
  Entry,
  Invitation,
  Media,
  Member,
  OutboxItem,
  Presence,
  SearchHit,
  Seq,
  UserId,
} from "@natter/sdk";
import { bindAdmin, hideAdmin, showAdmin } from "./admin.js";
import { byId, bytes, clear, h, time } from "./dom.js";
import { type Live, connect } from "./link.js";
import { closePushed, enablePush, forgetPush, pushOffered, startPush } from "./push.js";

const BASE = location.origin;
const SESSION_KEY = "natter.session";
const PAGE = 50;
/** Entries loaded on each side of a message opened from search. */
const AROUND = 25;
/** How long a message opened from search stays highlighted. */
const FOUND_MS = 4_000;
const QUICK_REACTIONS = ["👍", "❤️", "😂", "🎉", "😮"];
const TYPING_REPEAT_MS = 3_000;
const started = Date.now();

interface Saved {
  token: string;
  user_id: UserId;
  device_id: number;
  handle: string;
}

/** A message as it reads now. */
interface Msg {
  kind: "msg";
  seq: Seq;
  id: string;
  sender: UserId;
  ts: number;
  body: string;
  reply_to?: Seq;
  attachments: Attachment[];
  edited: boolean;
  deleted: boolean;
  /** Deleted by someone else than its author: a moderator. */
  removed: boolean;
  reactions: Map<string, Set<UserId>>;
}
/** A system entry (created, members, roles, title), shown as a line. */
interface Note {
  kind: "note";
  seq: Seq;
  ts: number;
  text: string;
}

/** One open conversation's loaded part of the log. */
interface View {
  conv: ConversationId;
  items: Map<Seq, Msg | Note>;
  min: Seq;
  max: Seq;
  hasOlder: boolean;
  /** A window around a message opened from search that ends before the log does: newer
   * entries are read when it moves to the latest ("Jump to the latest messages"). */
  hasNewer: boolean;
  loadingOlder: boolean;
  catchingUp: boolean;
  queued: Entry[];
  members: Member[];
}

interface Upload {
  key: number;
  name: string;
  size: number;
  sent: number;
  preview?: string;
  media?: Media;
  error?: string;
  /** Settles when the upload ends, either way. */
  done: Promise<void>;
}

/** The search panel: its query, the hits so far and the cursor of the page after. */
interface Search {
  q: string;
  hits: SearchHit[];
  next?: string;
  loading: boolean;
  error?: string;
  /** The hit opened last, `conv:seq`. */
  opened?: string;
  /** Ends this search's request when another one replaces it or the panel closes. */
  abort: AbortController;
}

const state = {
  me: undefined as Saved | undefined,
  api: new Api(BASE),
  live: undefined as Live | undefined,
  convs: new Map<ConversationId, ConversationSummary>(),
  invitations: [] as Invitation[],
  handles: new Map<UserId, string>(),
  presence: new Map<UserId, Presence>(),
  views: new Map<ConversationId, View>(),
  open: undefined as ConversationId | undefined,
  pending: new Map<string, OutboxItem & { error?: string }>(),
  typing: new Map<ConversationId, Map<UserId, number>>(),
  connection: undefined as ConnectionState | undefined,
  replyTo: undefined as Seq | undefined,
  editing: undefined as Seq | undefined,
  uploads: [] as Upload[],
  actionsFor: undefined as Seq | undefined,
  lastTypingSent: 0,
  watched: "",
  profile: undefined as User | undefined,
  /** Whom you block (synced from every device by `blocks` events). */
  blocked: new Set<UserId>(),
  /** The message whose report form is open. */
  reporting: undefined as Seq | undefined,
  search: undefined as Search | undefined,
  /** The message opened from search, highlighted for a moment. */
  found: undefined as { conv: ConversationId; seq: Seq } | undefined,
};

// ---- start -------------------------------------------------------------------------------

function saved(): Saved | undefined {
  try {
    const s = JSON.parse(localStorage.getItem(SESSION_KEY) ?? "null") as Saved | null;
    return s?.token ? s : undefined;
  } catch {
    return undefined;
  }
}

async function start(): Promise<void> {
  bindStatic();
  const s = saved();
  if (!s) return showLogin();
  state.api = new Api(BASE, { token: s.token });
  try {
    await state.api.me();
  } catch (err) {
    if ((err as { code?: string }).code === "unauthenticated") {
      localStorage.removeItem(SESSION_KEY);
      return showLogin("Your session ended; sign in again.");
    }
    // The server is unreachable: go on; the live client reconnects by itself.
  }
  await enter(s);
}

function showLogin(message?: string): void {
  document.body.classList.remove("signed-in");
  byId("login-error").textContent = message ?? "";
  byId<HTMLInputElement>("handle").focus();
}

async function signIn(register: boolean): Promise<void> {
  const handle = byId<HTMLInputElement>("handle").value.trim();
  const password = byId<HTMLInputElement>("password").value;
  const err = byId("login-error");
  err.textContent = "";
  try {
    const api = new Api(BASE);
    if (register) await api.register(handle, password);
    const session = await api.login(handle, password, deviceName());
    const s: Saved = { token: session.token, user_id: session.user_id, device_id: session.device_id, handle };
    localStorage.setItem(SESSION_KEY, JSON.stringify(s));
    state.api = api.withToken(session.token);
    await enter(s);
  } catch (e) {
    err.textContent = (e as Error).message;
  }
}

function deviceName(): string {
  const ua = navigator.userAgent;
  const browser = /Firefox/.test(ua) ? "Firefox" : /Edg\//.test(ua) ? "Edge" : /Chrom/.test(ua) ? "Chrome" : /Safari/.test(ua) ? "Safari" : "Browser";
  return `${browser} (web)`;
}

async function enter(s: Saved): Promise<void> {
  state.me = s;
  state.handles.set(s.user_id, s.handle);
  document.body.classList.add("signed-in");
  byId("me").textContent = s.handle;
  const live = await connect({ baseUrl: BASE, token: s.token, key: `${s.user_id}:${s.device_id}` });
  state.live = live;
  live.onEvent(onEvent);
  byId("shared").textContent = live.shared ? "shared by this browser's tabs" : "this tab only";
  if (!navigator.onLine) await live.call("setOnline", false);
  onConnection(await live.call("connection"));
  for (const item of await live.call("outbox")) state.pending.set(item.client_msg_id, item);
  await loadConversations();
  void loadInvitations();
  void loadProfile().catch(() => undefined);
  void loadAccount().catch(() => undefined);
  void state.api.me().then((me) => (byId("admin-open").hidden = !me.admin), () => undefined);
  void startPush(state.api, `${s.user_id}:${s.device_id}`, (conv) => void openPushed(conv)).catch(() => undefined);
  const wanted = Number(new URLSearchParams(location.hash.slice(1)).get("c"));
  if (wanted && state.convs.has(wanted)) await openConversation(wanted);
  renderList();
}

// ---- your profile ------------------------------------------------------------------------

function showProfile(me: User): void {
  state.profile = me;
  clear(byId("my-avatar"), avatarOf(me, me.display_name ?? me.handle));
  byId("me").textContent = me.display_name ?? me.handle;
}

async function loadProfile(): Promise<void> {
  const [me] = await state.api.users([state.me!.user_id]);
  if (!me) return;
  showProfile(me);
  byId<HTMLInputElement>("display-name").value = me.display_name ?? "";
  byId<HTMLInputElement>("status-text").value = me.status_text ?? "";
}

async function saveProfile(avatar?: string): Promise<void> {
  const note = byId("profile-note");
  note.textContent = "Saving…";
  try {
    const update = {
      display_name: byId<HTMLInputElement>("display-name").value,
      status_text: byId<HTMLInputElement>("status-text").value,
      ...(avatar !== undefined ? { avatar } : {}),
    };
    showProfile(await state.api.setProfile(update));
    note.textContent = "Saved.";
  } catch (err) {
    note.textContent = `Not saved: ${(err as Error).message}`;
  }
}

async function uploadAvatar(file: File): Promise<void> {
  const note = byId("profile-note");
  try {
    const media = await state.api.uploadResumable(file, {
      name: file.name,
      ...(file.type ? { contentType: file.type } : {}),
      onProgress: (sent, total) => (note.textContent = `Uploading… ${Math.round((100 * sent) / Math.max(total, 1))}%`),
    });
    await saveProfile(media.id);
  } catch (err) {
    note.textContent = `Not uploaded: ${(err as Error).message}`;
  }
}

// ---- your account: devices, password, blocked users, your data -------------------------

async function loadAccount(): Promise<void> {
  const [devices, blocked] = await Promise.all([state.api.devices(), state.api.blocks()]);
  state.blocked = new Set(blocked);
  renderBlocked();
  clear(
    byId("devices"),
    ...devices.devices.map((d) =>
      h(
        "li",
        {},
        h("span", {}, `${d.name}${d.device_id === devices.current ? " (this one)" : ""}${d.last_used_at ? ` · ${time(d.last_used_at)}` : ""}`),
        d.device_id === devices.current
          ? null
          : h("button", { class: "secondary", onclick: () => void state.api.revokeDevice(d.device_id).then(loadAccount) }, "Sign out"),
      ),
    ),
  );
}

function renderBlocked(): void {
  const list = [...state.blocked];
  if (list.length) void learnHandles(list);
  clear(
    byId("blocked"),
    ...(list.length
      ? list.map((u) => h("li", { "data-blocked": u }, h("span", {}, handleOf(u)), h("button", { class: "secondary", onclick: () => void setBlock(u, false) }, "Unblock")))
      : [h("li", { class: "note-line" }, "Nobody.")]),
  );
}

async function setBlock(user: UserId, on: boolean): Promise<void> {
  if (on && !confirm(`Block ${handleOf(user)}? They will not be able to message you or see when you are online.`)) return;
  await (on ? state.api.block(user) : state.api.unblock(user));
  if (on) state.blocked.add(user);
  else state.blocked.delete(user);
  renderBlocked();
  schedule();
}

async function changePassword(): Promise<void> {
  const note = byId("account-note");
  try {
    await state.api.changePassword(byId<HTMLInputElement>("current-password").value, byId<HTMLInputElement>("new-password").value);
    byId<HTMLFormElement>("password-form").reset();
    note.textContent = "Password changed; your other devices are signed out.";
    await loadAccount();
  } catch (err) {
    note.textContent = `Not changed: ${(err as Error).message}`;
  }
}

async function downloadData(): Promise<void> {
  const note = byId("account-note");
  try {
    const archive = await state.api.exportData();
    const url = URL.createObjectURL(new Blob([JSON.stringify(archive, null, 2)], { type: "application/json" }));
    h("a", { href: url, download: "natter-export.json" }).click();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
    note.textContent = "Your data is downloading.";
  } catch (err) {
    note.textContent = `Not exported: ${(err as Error).message}`;
  }
}

async function report(target: { conversation: ConversationId; seq: Seq } | { user: UserId }, reason: string): Promise<void> {
  try {
    if ("user" in target) await state.api.reportUser(target.user, reason);
    else await state.api.reportMessage(target.conversation, target.seq, reason);
    byId("composer-note").textContent = "Reported. Thank you: a moderator will look at it.";
  } catch (err) {
    byId("composer-note").textContent = `Not reported: ${(err as Error).message}`;
  }
}

async function logout(): Promise<void> {
  await forgetPush();
  try {
    await state.api.logout();
  } catch {
    // Signing out locally is what matters; a dead token is dead anyway.
  }
  await state.live?.close();
  localStorage.removeItem(SESSION_KEY);
  location.hash = "";
  location.reload();
}

// ---- conversations -----------------------------------------------------------------------

async function loadConversations(): Promise<void> {
  for await (const c of state.api.allConversations(100)) upsert(c);
  renderList();
  watchPresence();
}

async function loadInvitations(): Promise<void> {
  try {
    state.invitations = await state.api.invitations();
    renderList();
  } catch {
    // Shown next time.
  }
}

function upsert(c: ConversationSummary): void {
  state.convs.set(c.id, c);
  if (c.peer) state.handles.set(c.peer.user_id, c.peer.handle);
}

function titleOf(c: ConversationSummary): string {
  if (c.kind === "direct") return c.peer?.display_name ?? c.peer?.handle ?? "direct chat";
  return c.title ?? "group";
}

/** A small round picture: the avatar's thumbnail, or the name's first letter. */
function avatarOf(user: User | undefined, label: string): HTMLElement {
  const url = user?.avatar?.thumbnail_url ?? user?.avatar?.url;
  return h("span", { class: "avatar", "aria-hidden": "true" }, url ? h("img", { src: url, alt: "" }) : [...label][0]?.toUpperCase() ?? "?");
}

function handleOf(u: UserId): string {
  const known = state.handles.get(u);
  if (known) return known;
  void learnHandles([u]);
  return `user ${u}`;
}

const asked = new Set<UserId>();
async function learnHandles(ids: UserId[]): Promise<void> {
  const fresh = ids.filter((u) => !state.handles.has(u) && !asked.has(u)).slice(0, 100);
  if (!fresh.length) return;
  fresh.forEach((u) => asked.add(u));
  try {
    for (const u of await state.api.users(fresh)) state.handles.set(u.user_id, u.handle);
    schedule();
  } catch {
    fresh.forEach((u) => asked.delete(u));
  }
}

function previewText(c: ConversationSummary): string {
  const m = c.last_message;
  if (!m) return "No messages yet";
  if (m.deleted) return "Message deleted";
  const who = m.sender === state.me?.user_id ? "You: " : c.kind === "group" ? `${handleOf(m.sender)}: ` : "";
  const files = m.attachments?.length ? `📎 ${m.attachments.length === 1 ? kindName(m.attachments[0]!) : `${m.attachments.length} files`} ` : "";
  return `${who}${files}${m.text}${m.truncated ? "…" : ""}`;
}

function kindName(type: string): string {
  const top = type.split("/")[0];
  return top === "image" ? "Photo" : top === "video" ? "Video" : top === "audio" ? "Audio" : "File";
}

function sortedConversations(): ConversationSummary[] {
  return [...state.convs.values()].sort((a, b) => b.last_activity - a.last_activity || b.id - a.id);
}

async function startDirect(handle: string): Promise<void> {
  const user = await state.api.user(handle);
  const c = await state.api.createDirect(user.user_id);
  upsert(c);
  watchPresence();
  await openConversation(c.id);
}

async function startGroup(title: string, handles: string[]): Promise<string> {
  const users = await Promise.all(handles.map((x) => state.api.user(x)));
  users.forEach((u) => state.handles.set(u.user_id, u.handle));
  const c = await state.api.createGroup(title, users.map((u) => u.user_id));
  upsert(c);
  await openConversation(c.id);
  const invited = (c.invited ?? []).map(handleOf);
  return invited.length ? `Invited (they share no chat with you yet): ${invited.join(", ")}` : "";
}

/** Opens a conversation a notification was clicked for (one joined since the list loaded too). */
async function openPushed(conv: ConversationId): Promise<void> {
  if (!state.convs.has(conv)) {
    try {
      upsert(await state.api.conversation(conv));
      watchPresence();
    } catch {
      return;
    }
  }
  await openConversation(conv);
}

// ---- message search ----------------------------------------------------------------------

/** Searches for `q` (newest first) in the results panel, replacing any search before. */
function startSearch(q: string): void {
  state.search?.abort.abort();
  const s: Search = { q, hits: [], loading: false, abort: new AbortController() };
  state.search = s;
  document.body.classList.add("searching");
  byId("search").hidden = false;
  void fetchHits(s);
}

/** The next page of `s`: the first, or the one after `s.next`. */
async function fetchHits(s: Search): Promise<void> {
  if (s.loading) return;
  s.loading = true;
  delete s.error;
  renderSearch();
  try {
    const page = await state.api.search(s.q, { order: "newest", ...(s.next !== undefined ? { cursor: s.next } : {}) }, s.abort.signal);
    if (state.search !== s) return;
    s.hits.push(...page.hits);
    if (page.next !== undefined) s.next = page.next;
    else delete s.next;
    void learnHandles(page.hits.map((hit) => hit.sender));
    void learnConversations(page.hits.map((hit) => hit.conversation));
  } catch (err) {
    if (state.search !== s) return;
    s.error = `Search failed: ${reason(err)}`;
  } finally {
    s.loading = false;
  }
  renderSearch();
}

function closeSearch(): void {
  state.search?.abort.abort();
  state.search = undefined;
  searchShown = "";
  document.body.classList.remove("searching");
  byId("search").hidden = true;
  byId("search-q").focus();
}

/** Opens the conversation of a hit at its message. */
async function openHit(hit: SearchHit): Promise<void> {
  const s = state.search;
  if (s) s.opened = `${hit.conversation}:${hit.seq}`;
  renderSearch();
  try {
    if (!state.convs.has(hit.conversation)) upsert(await state.api.conversation(hit.conversation));
    await openConversation(hit.conversation, hit.seq);
  } catch (err) {
    if (s && state.search === s) {
      s.error = `Could not open that message: ${reason(err)}`;
      renderSearch();
    }
  }
}

/** What went wrong, as a person would say it. */
function reason(err: unknown): string {
  if (err instanceof NatterError && err.body) {
    const wait = err.body.retry_after_ms;
    if (err.body.code === "too_many_requests" && wait !== undefined) return `too many searches; try again in ${Math.ceil(wait / 1000)} s`;
    return err.body.message;
  }
  return (err as Error)?.message ?? String(err);
}

const askedConvs = new Set<ConversationId>();
/** Conversations hits are in that the list does not have yet (joined since it loaded). */
async function learnConversations(ids: ConversationId[]): Promise<void> {
  const fresh = [...new Set(ids)].filter((c) => !state.convs.has(c) && !askedConvs.has(c));
  fresh.forEach((c) => askedConvs.add(c));
  for (const c of fresh) {
    try {
      upsert(await state.api.conversation(c));
    } catch {
      askedConvs.delete(c);
    }
  }
  if (fresh.length) schedule();
}

/** What the results panel shows now, so that it is rebuilt only when that changes (a
 * rebuild loses a click in progress). */
let searchShown = "";

function renderSearch(): void {
  const s = state.search;
  if (!s) return;
  const rows = s.hits.map((hit) => {
    const c = state.convs.get(hit.conversation);
    const blocked = hit.sender !== state.me?.user_id && state.blocked.has(hit.sender);
    return {
      hit,
      key: `${hit.conversation}:${hit.seq}`,
      title: c ? titleOf(c) : "a chat",
      sender: hit.sender === state.me?.user_id ? "You" : handleOf(hit.sender),
      when: time(hit.ts),
      blocked,
    };
  });
  const shown = JSON.stringify([s.q, s.loading, s.error, s.next !== undefined, s.opened, rows.map((r) => [r.key, r.title, r.sender, r.when, r.blocked])]);
  if (shown === searchShown) return;
  searchShown = shown;
  const note = byId("search-note");
  note.classList.toggle("error", s.error !== undefined);
  note.textContent =
    s.error ?? (s.loading && !s.hits.length ? "Searching…" : `${s.hits.length}${s.next !== undefined ? "+" : ""} ${s.hits.length === 1 && s.next === undefined ? "message" : "messages"}`);
  const items: HTMLElement[] = rows.map((r) =>
    h(
      "li",
      {},
      h(
        "button",
        {
          class: `hit${s.opened === r.key ? " active" : ""}`,
          "data-key": `h${r.key}`,
          "data-conv": r.hit.conversation,
          "data-seq": r.hit.seq,
          "aria-current": s.opened === r.key ? "true" : undefined,
          onclick: () => void openHit(r.hit),
        },
        h("span", { class: "title" }, r.title),
        h("time", { class: "when", datetime: new Date(r.hit.ts).toISOString(), title: new Date(r.hit.ts).toLocaleString() }, r.when),
        h(
          "span",
          { class: "snippet" },
          h("span", { class: "sender" }, `${r.sender}: `),
          ...(r.blocked ? [h("em", {}, "Message from a blocked user")] : r.hit.snippet.map((p) => (p.hit ? h("mark", {}, p.text) : p.text))),
        ),
      ),
    ),
  );
  if (!s.loading && s.error === undefined && !s.hits.length) items.push(h("li", { class: "empty" }, `No messages match “${s.q}”.`));
  if (s.next !== undefined || (s.loading && s.hits.length)) {
    items.push(h("li", { class: "more-hits" }, h("button", { class: "secondary", "data-key": "more-hits", disabled: s.loading, onclick: () => void fetchHits(s) }, s.loading ? "Loading…" : "Load more")));
  }
  const list = byId("search-hits");
  const focused = (document.activeElement as HTMLElement | null)?.closest("#search-hits") ? (document.activeElement as HTMLElement).dataset.key : undefined;
  clear(list, ...items);
  if (focused) (list.querySelector(`[data-key="${focused}"]`) as HTMLElement | null)?.focus();
}

/** Arrow keys move between the search box, the hits and "Load more"; Escape closes. */
function searchKeys(e: KeyboardEvent): void {
  if (!state.search) return;
  if (e.key === "Escape") {
    e.preventDefault();
    closeSearch();
    return;
  }
  if (e.key !== "ArrowDown" && e.key !== "ArrowUp") return;
  const stops = [byId("search-q"), ...byId("search-hits").querySelectorAll<HTMLButtonElement>("button:not([disabled])")];
  const at = stops.indexOf(document.activeElement as HTMLElement);
  if (at < 0) return;
  e.preventDefault();
  stops[Math.max(0, Math.min(stops.length - 1, at + (e.key === "ArrowDown" ? 1 : -1)))]?.focus();
}

// ---- one conversation --------------------------------------------------------------------

function newView(conv: ConversationId): View {
  return { conv, items: new Map(), min: 0, max: 0, hasOlder: false, hasNewer: false, loadingOlder: false, catchingUp: false, queued: [], members: [] };
}

/**
 * Opens a conversation at its latest page, or (`at`, from search) around that message, which
 * is scrolled to and highlighted; a message outside what is loaded replaces the view with a
 * window around it.
 */
async function openConversation(conv: ConversationId, at?: Seq): Promise<void> {
  state.open = conv;
  state.replyTo = state.editing = state.actionsFor = undefined;
  location.hash = `c=${conv}`;
  document.body.classList.add("chat-open");
  closePushed(conv);
  let v = state.views.get(conv);
  if (v && at !== undefined && (at < v.min || at > v.max)) v = undefined;
  if (!v) {
    v = newView(conv);
    state.views.set(conv, v);
    v.catchingUp = true;
    try {
      await loadView(v, at);
    } catch (err) {
      // A window that did not load is not kept: opening the message again tries again.
      if (at !== undefined && state.views.get(conv) === v) state.views.delete(conv);
      throw err;
    } finally {
      v.catchingUp = false;
    }
    drainQueued(v);
  }
  watchPresence();
  if (at === undefined) {
    render(true);
  } else if (state.open === conv) {
    highlight(conv, at);
    render(false);
    byId("messages").querySelector(`[data-seq="${at}"]`)?.scrollIntoView({ block: "center" });
  }
  markRead();
  // A hit opened from the results keeps the focus there (the next one is an arrow away),
  // unless the results are out of sight (one column: the chat replaced them).
  const from = document.activeElement as HTMLElement | null;
  if (at === undefined || !from?.closest("#search") || !from.offsetParent) byId<HTMLTextAreaElement>("text").focus();
}

/** Loads a new view: the latest page, or the entries up to `at` and on from it
 * (docs/protocol.md, "Search": `before=seq+1` and `after=seq`). */
async function loadView(v: View, at?: Seq): Promise<void> {
  const [upTo, from, members] = await Promise.all([
    at === undefined ? state.api.history(v.conv, {}, PAGE) : state.api.history(v.conv, { before: at + 1 }, AROUND),
    at === undefined ? undefined : state.api.history(v.conv, { after: at }, AROUND),
    state.api.members(v.conv),
  ]);
  v.members = members;
  members.forEach((m) => state.handles.set(m.user_id, m.handle));
  fromStore(v, upTo.entries);
  v.hasOlder = upTo.has_more || (upTo.entries[0]?.seq ?? 1) > 1;
  if (from) {
    fromStore(v, from.entries);
    v.hasNewer = from.has_more;
  }
  if (!v.hasNewer) await catchUp(v);
}

/** Leaves a window around a found message for the latest page. */
async function showLatest(conv: ConversationId): Promise<void> {
  state.views.delete(conv);
  await openConversation(conv);
}

let foundTimer: ReturnType<typeof setTimeout> | undefined;
function highlight(conv: ConversationId, seq: Seq): void {
  state.found = { conv, seq };
  clearTimeout(foundTimer);
  foundTimer = setTimeout(() => {
    state.found = undefined;
    schedule();
  }, FOUND_MS);
}

/** Entries read from the store carry their message's current state. */
function fromStore(v: View, entries: Entry[]): void {
  for (const e of entries) {
    if (e.kind === "delete") {
      const t = v.items.get(e.target);
      if (t?.kind === "msg" && t.sender !== e.sender) t.removed = true;
    }
    const item = itemOf(e);
    if (item) v.items.set(e.seq, item);
    if (!v.min || e.seq < v.min) v.min = e.seq;
    if (e.seq > v.max) v.max = e.seq;
    if (e.kind === "message" && e.client_msg_id && e.sender === state.me?.user_id) state.pending.delete(e.client_msg_id);
  }
}

function itemOf(e: Entry): Msg | Note | undefined {
  switch (e.kind) {
    case "message": {
      const st = e.state;
      const reactions = new Map<string, Set<UserId>>();
      for (const r of st?.reactions ?? []) reactions.set(r.emoji, new Set(r.users));
      return {
        kind: "msg",
        seq: e.seq,
        id: e.id,
        sender: e.sender,
        ts: e.ts,
        body: st?.body ?? e.body,
        ...(e.reply_to !== undefined ? { reply_to: e.reply_to } : {}),
        attachments: st?.deleted ? [] : (e.attachments ?? []),
        edited: st?.edited_seq !== undefined,
        deleted: st?.deleted ?? false,
        removed: false,
        reactions,
      };
    }
    case "created":
      return note(e, e.conversation_kind === "group" ? `${handleOf(e.sender)} created the group “${e.title ?? ""}”` : "Chat started");
    case "member_added":
      return note(e, `${handleOf(e.sender)} added ${handleOf(e.user)}`);
    case "member_removed":
      if (e.banned) return note(e, `${handleOf(e.sender)} banned ${handleOf(e.user)}`);
      return note(e, e.user === e.sender ? `${handleOf(e.user)} left` : `${handleOf(e.sender)} removed ${handleOf(e.user)}`);
    case "member_muted":
      return note(e, e.until ? `${handleOf(e.sender)} muted ${handleOf(e.user)} until ${time(e.until)}` : `${handleOf(e.sender)} unmuted ${handleOf(e.user)}`);
    case "group_settings": {
      const parts = [e.locked ? "only admins post" : "everyone posts", e.slow_mode_secs ? `slow mode ${e.slow_mode_secs} s` : "no slow mode"];
      return note(e, `${handleOf(e.sender)} set: ${parts.join(", ")}`);
    }
    case "role_changed":
      return note(e, `${handleOf(e.user)} is now ${e.role}`);
    case "title_changed":
      return note(e, `${handleOf(e.sender)} renamed the group “${e.title}”`);
    default:
      return undefined;
  }
}

function note(e: Entry, text: string): Note {
  return { kind: "note", seq: e.seq, ts: e.ts, text };
}

/** A live entry: applied in order; a jump past what is loaded is filled from history first. */
function live(v: View, e: Entry): void {
  if (v.catchingUp) {
    v.queued.push(e);
    return;
  }
  if (e.seq <= v.max) return;
  if (v.hasNewer) {
    // A window into older history: what follows it is read when it moves to the latest,
    // but a change to a message it shows applies now (and members still come and go).
    amend(v, e);
    if (e.kind === "member_added" || e.kind === "member_removed") void refreshMembers(v);
    return;
  }
  if (e.seq > v.max + 1) {
    v.queued.push(e);
    v.catchingUp = true;
    void catchUp(v)
      .catch(() => undefined)
      .finally(() => {
        v.catchingUp = false;
        drainQueued(v);
        schedule();
      });
    return;
  }
  apply(v, e);
}

async function catchUp(v: View): Promise<void> {
  for (;;) {
    const page = await state.api.history(v.conv, { after: v.max }, 200);
    fromStore(v, page.entries);
    if (!page.has_more) return;
  }
}

function drainQueued(v: View): void {
  const q = v.queued.sort((a, b) => a.seq - b.seq);
  v.queued = [];
  for (const e of q) live(v, e);
}

function apply(v: View, e: Entry): void {
  v.max = e.seq;
  if (!v.min) v.min = e.seq;
  if (amend(v, e)) return;
  const item = itemOf(e);
  if (item) v.items.set(e.seq, item);
  if (e.kind === "message" && e.client_msg_id && e.sender === state.me?.user_id) state.pending.delete(e.client_msg_id);
  if (e.kind === "member_added" || e.kind === "member_removed") void refreshMembers(v);
}

/** An edit, deletion or reaction, applied to its message when that is loaded; false for any
 * other entry. */
function amend(v: View, e: Entry): boolean {
  const target = "target" in e ? v.items.get(e.target) : undefined;
  const msg = target?.kind === "msg" ? target : undefined;
  switch (e.kind) {
    case "edit":
      if (msg) Object.assign(msg, { body: e.body, edited: true });
      return true;
    case "delete":
      if (msg) Object.assign(msg, { body: "", deleted: true, removed: e.sender !== msg.sender, attachments: [], reactions: new Map() });
      return true;
    case "reaction":
      if (msg) {
        const users = msg.reactions.get(e.emoji) ?? new Set<UserId>();
        if (e.remove) users.delete(e.sender);
        else users.add(e.sender);
        if (users.size) msg.reactions.set(e.emoji, users);
        else msg.reactions.delete(e.emoji);
      }
      return true;
    default:
      return false;
  }
}

async function refreshMembers(v: View): Promise<void> {
  try {
    v.members = await state.api.members(v.conv);
    v.members.forEach((m) => state.handles.set(m.user_id, m.handle));
    schedule();
  } catch {
    // Removed from the group: the list shows it on the next load.
  }
}

async function loadOlder(v: View): Promise<void> {
  if (v.loadingOlder || !v.hasOlder) return;
  v.loadingOlder = true;
  const box = byId("messages");
  const fromBottom = box.scrollHeight - box.scrollTop;
  try {
    const page = await state.api.history(v.conv, { before: v.min }, PAGE);
    fromStore(v, page.entries);
    v.hasOlder = page.has_more;
  } finally {
    v.loadingOlder = false;
  }
  if (state.views.get(v.conv) !== v) return; // replaced meanwhile (a message opened from search)
  renderMessages();
  box.scrollTop = box.scrollHeight - fromBottom;
}

function markRead(): void {
  const conv = state.open;
  if (conv === undefined || document.visibilityState !== "visible") return;
  const v = state.views.get(conv);
  const c = state.convs.get(conv);
  if (!v || !c || v.max <= c.read_seq) return;
  c.read_seq = v.max;
  if (!v.hasNewer) c.unread = 0;
  void state.live?.call("read", conv, v.max).catch(() => undefined);
  renderList();
}

// ---- live events -------------------------------------------------------------------------

function onEvent(e: ClientEvent): void {
  switch (e.type) {
    case "connection":
      onConnection(e);
      return;
    case "conversation":
      upsert(e.conversation);
      break;
    case "entry":
      onEntry(e.entry);
      break;
    case "acked": {
      const v = state.views.get(e.ack.conversation);
      if (e.ack.client_msg_id && v && e.ack.seq <= v.max) state.pending.delete(e.ack.client_msg_id);
      break;
    }
    case "send_failed": {
      const p = state.pending.get(e.client_msg_id);
      if (p) p.error = e.error.message;
      break;
    }
    case "receipt": {
      const r = e.receipt;
      const m = state.views.get(r.conversation)?.members.find((x) => x.user_id === r.user);
      if (m) Object.assign(m, { delivered_seq: r.delivered_seq, read_seq: r.read_seq });
      const c = state.convs.get(r.conversation);
      if (c && r.user === state.me?.user_id && r.read_seq > c.read_seq) {
        c.read_seq = r.read_seq;
        if (r.read_seq >= c.last_seq) c.unread = 0;
      }
      break;
    }
    case "typing": {
      const who = state.typing.get(e.conversation) ?? new Map<UserId, number>();
      if (e.typing) who.set(e.user, Date.now() + (e.ttl_ms ?? 6_000));
      else who.delete(e.user);
      state.typing.set(e.conversation, who);
      break;
    }
    case "presence":
      for (const p of e.users) state.presence.set(p.user, p);
      break;
    case "invitation":
      state.invitations = [...state.invitations.filter((i) => i.conversation !== e.invitation.conversation), e.invitation];
      break;
    case "blocks":
      state.blocked = new Set(e.blocked);
      renderBlocked();
      break;
    case "profile":
      // A contact changed their profile: their direct chats show it at once.
      for (const c of state.convs.values()) if (c.peer?.user_id === e.user.user_id) c.peer = e.user;
      if (e.user.user_id === state.me?.user_id) showProfile(e.user);
      break;
  }
  schedule();
}

function onEntry(e: Entry): void {
  const c = state.convs.get(e.conversation);
  if (!c) {
    void state.api.conversation(e.conversation).then((s) => {
      upsert(s);
      watchPresence();
      schedule();
    });
  } else if (e.seq > c.last_seq) {
    c.last_seq = e.seq;
    c.last_activity = Math.max(c.last_activity, e.ts);
    const lm = c.last_message;
    if (e.kind === "message") {
      c.last_message = {
        seq: e.seq,
        sender: e.sender,
        ts: e.ts,
        text: [...e.body].slice(0, 160).join(""),
        ...(e.attachments?.length ? { attachments: e.attachments.map((a) => a.content_type) } : {}),
      };
      const seen = state.open === e.conversation && document.visibilityState === "visible";
      if (e.sender !== state.me?.user_id && !seen) c.unread += 1;
    } else if (e.kind === "edit" && lm?.seq === e.target) {
      Object.assign(lm, { text: [...e.body].slice(0, 160).join(""), edited: true });
    } else if (e.kind === "delete" && lm?.seq === e.target) {
      Object.assign(lm, { text: "", deleted: true, attachments: [] });
    } else if (e.kind === "title_changed") {
      c.title = e.title;
    }
  }
  const v = state.views.get(e.conversation);
  if (v) live(v, e);
  if (e.conversation === state.open) markRead();
  if (e.kind === "message" && e.sender !== state.me?.user_id) {
    state.typing.get(e.conversation)?.delete(e.sender);
    notify(e);
  }
}

function notify(e: Entry & { kind: "message" }): void {
  if (!document.hidden || e.ts < started || typeof Notification === "undefined" || Notification.permission !== "granted") return;
  const c = state.convs.get(e.conversation);
  const title = c?.kind === "group" ? `${handleOf(e.sender)} in ${titleOf(c)}` : handleOf(e.sender);
  const n = new Notification(title, { body: e.body || "📎 attachment", tag: e.id, icon: "/app/icon.svg" });
  n.onclick = () => {
    focus();
    void openConversation(e.conversation);
  };
}

function onConnection(s: ConnectionState): void {
  state.connection = s;
  if (s.state === "closed" && s.reason === "unauthenticated") {
    localStorage.removeItem(SESSION_KEY);
    location.reload();
  }
  if (s.state === "connected") watchPresence(true);
  schedule();
}

function watchPresence(force = false): void {
  const users = new Set<UserId>();
  for (const c of state.convs.values()) if (c.peer) users.add(c.peer.user_id);
  const open = state.open !== undefined ? state.views.get(state.open) : undefined;
  for (const m of open?.members ?? []) if (m.user_id !== state.me?.user_id) users.add(m.user_id);
  const list = [...users].slice(0, 256);
  const key = list.join(",");
  if (!state.live || (!force && key === state.watched)) return;
  state.watched = key;
  void state.live.watch(list).then(
    (r) => {
      for (const p of r.users) state.presence.set(p.user, p);
      schedule();
    },
    () => (state.watched = ""),
  );
}

// ---- sending -----------------------------------------------------------------------------

/** Sends in the order they were written, whatever each waits for (uploads, the save). */
let sending: Promise<void> = Promise.resolve();

function submit(): void {
  const conv = state.open;
  const live = state.live;
  if (conv === undefined || !live) return;
  const box = byId<HTMLTextAreaElement>("text");
  const text = box.value.trim();
  // What the composer holds now is this message: the next one may be typed while it is saved.
  box.value = "";
  state.lastTypingSent = 0;
  if (state.editing !== undefined) {
    const target = state.editing;
    state.editing = undefined;
    render(false);
    if (text) sending = sending.then(() => void live.call("enqueue", conv, { kind: "edit", target, body: text }));
    return;
  }
  const uploads = state.uploads;
  const replyTo = state.replyTo;
  if (!text && !uploads.some((u) => !u.error)) return;
  state.uploads = [];
  state.replyTo = undefined;
  void live.call("typing", conv, false).catch(() => undefined);
  // Written under older history opened from search: the chat moves to the latest, where it shows.
  if (state.views.get(conv)?.hasNewer) void showLatest(conv);
  render(true);
  sending = sending
    .then(async () => {
      if (uploads.some((u) => !u.media && !u.error)) {
        byId("composer-note").textContent = "Sending when the uploads finish…";
        await Promise.all(uploads.map((u) => u.done));
        byId("composer-note").textContent = "";
      }
      const attachments = uploads.flatMap((u) => (u.media ? [u.media.id] : []));
      uploads.forEach((u) => u.preview && URL.revokeObjectURL(u.preview));
      if (!text && !attachments.length) return;
      const entry = {
        kind: "message" as const,
        body: text,
        ...(replyTo !== undefined ? { reply_to: replyTo } : {}),
        ...(attachments.length ? { attachments } : {}),
      };
      const id = await live.call("enqueue", conv, entry);
      // Shown at once; the entry replaces it when it arrives.
      state.pending.set(id, { client_msg_id: id, conversation: conv, entry });
      renderMessages(true);
    })
    .catch((err: Error) => {
      byId("composer-note").textContent = `Not sent: ${err.message}`;
    });
}

function typed(): void {
  const conv = state.open;
  if (conv === undefined || !state.live || state.editing !== undefined) return;
  const empty = byId<HTMLTextAreaElement>("text").value.trim() === "";
  const now = Date.now();
  if (empty) {
    if (state.lastTypingSent) void state.live.call("typing", conv, false).catch(() => undefined);
    state.lastTypingSent = 0;
  } else if (now - state.lastTypingSent > TYPING_REPEAT_MS) {
    state.lastTypingSent = now;
    void state.live.call("typing", conv, true).catch(() => undefined);
  }
}

function attach(files: FileList | File[]): void {
  for (const file of Array.from(files).slice(0, 10 - state.uploads.length)) {
    const up: Upload = { key: Math.random(), name: file.name, size: file.size, sent: 0, done: Promise.resolve() };
    if (file.type.startsWith("image/")) up.preview = URL.createObjectURL(file);
    state.uploads.push(up);
    up.done = state.api
      .uploadResumable(file, {
        name: file.name,
        ...(file.type ? { contentType: file.type } : {}),
        onProgress: (sent) => {
          up.sent = sent;
          renderComposer();
        },
      })
      .then(
        (media) => void (up.media = media),
        (err: Error) => void (up.error = err.message),
      )
      .finally(renderComposer);
  }
  renderComposer();
}

async function react(seq: Seq, emoji: string): Promise<void> {
  const conv = state.open;
  const v = conv !== undefined ? state.views.get(conv) : undefined;
  const msg = v?.items.get(seq);
  if (conv === undefined || !state.live || msg?.kind !== "msg") return;
  const mine = msg.reactions.get(emoji)?.has(state.me!.user_id) ?? false;
  state.actionsFor = undefined;
  await state.live.call("enqueue", conv, { kind: "reaction", target: seq, emoji, remove: mine });
}

async function remove(seq: Seq): Promise<void> {
  if (state.open === undefined || !state.live || !confirm("Delete this message for everyone?")) return;
  state.actionsFor = undefined;
  await state.live.call("enqueue", state.open, { kind: "delete", target: seq });
}

// ---- rendering ---------------------------------------------------------------------------

let frame = 0;
/** Renders on the next animation frame (many events, one render). */
function schedule(): void {
  if (!frame) frame = requestAnimationFrame(() => render(false));
}

function render(scrollToEnd: boolean): void {
  if (frame) cancelAnimationFrame(frame);
  frame = 0;
  renderBanner();
  renderList();
  renderHeader();
  renderMessages(scrollToEnd);
  renderComposer();
  renderSearch();
}

function renderBanner(): void {
  const s = state.connection;
  const banner = byId("banner");
  const status = byId("status");
  let text = "";
  if (!s || s.state === "connecting") text = "Connecting…";
  else if (s.state === "reconnecting") text = `Reconnecting in ${Math.ceil(s.retry_in_ms / 1000)} s…`;
  else if (s.state === "offline") text = "Offline: what you write is kept and sent when you are back.";
  banner.textContent = text;
  banner.hidden = !text;
  status.textContent = s?.state === "connected" ? `online · ${s.transport === "ws" ? "WebSocket" : s.transport === "sse" ? "SSE" : "long-poll"}` : "offline";
  document.body.dataset.connection = s?.state ?? "connecting";
}

function dot(user: UserId | undefined): HTMLElement {
  const p = user !== undefined ? state.presence.get(user) : undefined;
  const status = p?.status ?? "offline";
  const label = status === "offline" && p?.last_seen ? `offline, last seen ${time(p.last_seen)}` : status;
  return h("span", { class: `dot ${status}`, title: label, role: "img", "aria-label": label });
}

function typingText(conv: ConversationId): string {
  const who = [...(state.typing.get(conv)?.entries() ?? [])].filter(([, until]) => until > Date.now()).map(([u]) => handleOf(u));
  if (!who.length) return "";
  return who.length === 1 ? `${who[0]} is typing…` : `${who.join(", ")} are typing…`;
}

function renderList(): void {
  const list = byId("convs");
  const items: HTMLElement[] = [];
  for (const inv of state.invitations) {
    items.push(
      h(
        "li",
        { class: "invitation" },
        h("div", { class: "title" }, `Invitation to “${inv.title}”`),
        h("div", { class: "preview" }, `from ${inv.inviter_handle}`),
        h("button", { onclick: () => void answerInvitation(inv, true) }, "Join"),
        h("button", { class: "secondary", onclick: () => void answerInvitation(inv, false) }, "Decline"),
      ),
    );
  }
  for (const c of sortedConversations()) {
    const typing = typingText(c.id);
    items.push(
      h(
        "li",
        {},
        h(
          "button",
          {
            class: `conv${c.id === state.open ? " active" : ""}`,
            "data-conv": c.id,
            "aria-current": c.id === state.open ? "true" : undefined,
            onclick: () => void openConversation(c.id),
          },
          c.kind === "direct" ? dot(c.peer?.user_id) : h("span", { class: "dot group", "aria-hidden": "true" }),
          h("span", { class: "title" }, titleOf(c)),
          h("span", { class: "when" }, c.last_message ? time(c.last_activity) : ""),
          h("span", { class: `preview${typing ? " typing" : ""}` }, typing || previewText(c)),
          c.unread ? h("span", { class: "badge", "aria-label": `${c.unread} unread` }, String(c.unread)) : null,
        ),
      ),
    );
  }
  if (!items.length) items.push(h("li", { class: "empty" }, "No chats yet. Start one above."));
  clear(list, ...items);
}

async function answerInvitation(inv: Invitation, accept: boolean): Promise<void> {
  if (accept) await state.api.acceptInvitation(inv.conversation);
  else await state.api.declineInvitation(inv.conversation);
  state.invitations = state.invitations.filter((i) => i.conversation !== inv.conversation);
  if (accept) {
    upsert(await state.api.conversation(inv.conversation));
    await openConversation(inv.conversation);
  }
  renderList();
}

function renderHeader(): void {
  const c = state.open !== undefined ? state.convs.get(state.open) : undefined;
  const title = byId("chat-title");
  const sub = byId("chat-sub");
  const tools = byId("chat-tools");
  if (!c) {
    clear(title, "Pick a chat");
    sub.textContent = "";
    clear(tools);
    return;
  }
  const peer = c.kind === "direct" ? c.peer?.user_id : undefined;
  clear(
    tools,
    peer !== undefined
      ? h("button", { class: "secondary", onclick: () => void setBlock(peer, !state.blocked.has(peer)) }, state.blocked.has(peer) ? "Unblock" : "Block")
      : null,
    peer !== undefined
      ? h(
          "button",
          {
            class: "secondary",
            onclick: () => {
              const reason = prompt(`Why are you reporting ${handleOf(peer)}?`)?.trim();
              if (reason) void report({ user: peer }, reason);
            },
          },
          "Report",
        )
      : null,
    moderating()
      ? h(
          "button",
          {
            class: "secondary",
            onclick: () => void state.api.setGroupSettings(c.id, { locked: !c.locked, slow_mode_secs: c.slow_mode_secs ?? 0 }).then(() => state.api.conversation(c.id).then(upsert)).then(schedule),
          },
          c.locked ? "Let everyone post" : "Only admins post",
        )
      : null,
  );
  clear(title, c.kind === "direct" ? avatarOf(c.peer, titleOf(c)) : "", c.kind === "direct" ? dot(c.peer?.user_id) : "", titleOf(c));
  const typing = typingText(c.id);
  const v = state.views.get(c.id);
  if (typing) sub.textContent = typing;
  else if (c.kind === "direct") {
    const p = c.peer ? state.presence.get(c.peer.user_id) : undefined;
    const seen = !p ? "" : p.status === "offline" ? (p.last_seen ? `last seen ${time(p.last_seen)}` : "offline") : p.status;
    sub.textContent = [c.peer?.status_text, seen].filter(Boolean).join(" · ");
  } else sub.textContent = `${v?.members.length ?? "…"} members`;
}

function marks(v: View, seq: Seq): { text: string; label: string; cls: string } {
  const others = v.members.filter((m) => m.user_id !== state.me?.user_id);
  if (others.length && others.every((m) => m.read_seq >= seq)) return { text: "✓✓", label: "read", cls: "read" };
  if (others.length && others.every((m) => m.delivered_seq >= seq)) return { text: "✓✓", label: "delivered", cls: "delivered" };
  return { text: "✓", label: "sent", cls: "sent" };
}

function attachmentView(a: Attachment): HTMLElement {
  const url = a.url ?? "#";
  if (a.thumbnail_url || (a.content_type.startsWith("image/") && a.url)) {
    const src = a.thumbnail_url ?? url;
    const dims = a.thumbnail ?? (a.width && a.height ? { width: a.width, height: a.height } : undefined);
    return h(
      "a",
      { class: "image", href: url, target: "_blank", rel: "noopener" },
      h("img", { src, alt: a.name ?? "image", loading: "lazy", width: dims?.width, height: dims?.height }),
    );
  }
  return h("a", { class: "file", href: url, target: "_blank", rel: "noopener" }, `📄 ${a.name ?? "file"} · ${bytes(a.size)}`);
}

function quoted(v: View, seq: Seq): HTMLElement {
  const t = v.items.get(seq);
  const text = t?.kind === "msg" ? (t.deleted ? "deleted message" : `${handleOf(t.sender)}: ${t.body || "📎"}`) : "an earlier message";
  return h("div", { class: "quote" }, `↪ ${text.slice(0, 120)}`);
}

/** Whether you moderate the open group (its owner or an admin). */
function moderating(): boolean {
  const c = state.open !== undefined ? state.convs.get(state.open) : undefined;
  return c?.kind === "group" && (c.role === "admin" || c.role === "owner");
}

function reportForm(v: View, m: Msg): HTMLElement {
  const input = h("input", { "aria-label": "Why are you reporting this message?", placeholder: "reason", required: true, maxlength: 1000 });
  return h(
    "form",
    {
      class: "report-form",
      onsubmit: (e: Event) => {
        e.preventDefault();
        state.reporting = state.actionsFor = undefined;
        void report({ conversation: v.conv, seq: m.seq }, input.value.trim());
        renderMessages();
      },
    },
    input,
    h("button", { type: "submit" }, "Send report"),
  );
}

function isFound(v: View, m: Msg): boolean {
  return state.found?.conv === v.conv && state.found.seq === m.seq;
}

function messageView(v: View, m: Msg, group: boolean): HTMLElement {
  const mine = m.sender === state.me?.user_id;
  if (!mine && !m.deleted && state.blocked.has(m.sender)) {
    return h(
      "div",
      { class: `msg blocked${isFound(v, m) ? " found" : ""}`, "data-seq": m.seq, "data-key": `m${m.seq}` },
      group ? h("div", { class: "sender" }, handleOf(m.sender)) : null,
      h("div", { class: "bubble" }, h("em", {}, "Message from a blocked user")),
    );
  }
  const mark = mine && !m.deleted ? marks(v, m.seq) : undefined;
  const reactions = [...m.reactions.entries()].map(([emoji, users]) =>
    h(
      "button",
      {
        class: `reaction${users.has(state.me!.user_id) ? " mine" : ""}`,
        title: [...users].map(handleOf).join(", "),
        "aria-label": `${emoji} ${users.size}`,
        onclick: () => void react(m.seq, emoji),
      },
      `${emoji} ${users.size}`,
    ),
  );
  const open = state.actionsFor === m.seq;
  const actions = open
    ? h(
        "div",
        { class: "actions", role: "toolbar", "aria-label": "Message actions" },
        ...QUICK_REACTIONS.map((e) => h("button", { "aria-label": `React ${e}`, onclick: () => void react(m.seq, e) }, e)),
        h("button", { onclick: () => ((state.replyTo = m.seq), (state.actionsFor = undefined), render(false), byId("text").focus()) }, "Reply"),
        mine
          ? h(
              "button",
              {
                onclick: () => {
                  state.editing = m.seq;
                  state.actionsFor = undefined;
                  byId<HTMLTextAreaElement>("text").value = m.body;
                  render(false);
                  byId("text").focus();
                },
              },
              "Edit",
            )
          : null,
        mine || moderating() ? h("button", { class: "danger", onclick: () => void remove(m.seq) }, "Delete") : null,
        mine ? null : h("button", { onclick: () => ((state.reporting = m.seq), renderMessages()) }, "Report"),
        state.reporting === m.seq ? reportForm(v, m) : null,
      )
    : null;
  return h(
    "div",
    { class: `msg${mine ? " mine" : ""}${m.deleted ? " deleted" : ""}${isFound(v, m) ? " found" : ""}`, "data-seq": m.seq, "data-key": `m${m.seq}` },
    group && !mine ? h("div", { class: "sender" }, handleOf(m.sender)) : null,
    h(
      "div",
      { class: "bubble" },
      m.reply_to !== undefined && !m.deleted ? quoted(v, m.reply_to) : null,
      m.deleted ? h("em", {}, m.removed ? "Removed by a moderator" : "Message deleted") : m.body ? h("div", { class: "text" }, m.body) : null,
      ...m.attachments.map(attachmentView),
      h(
        "div",
        { class: "meta" },
        m.edited && !m.deleted ? h("span", { class: "edited" }, "edited") : null,
        h("time", { datetime: new Date(m.ts).toISOString() }, time(m.ts)),
        mark ? h("span", { class: `mark ${mark.cls}`, title: mark.label, "aria-label": mark.label }, mark.text) : null,
      ),
    ),
    reactions.length ? h("div", { class: "reactions" }, ...reactions) : null,
    m.deleted
      ? null
      : h(
          "button",
          {
            class: "more",
            "aria-label": "Actions",
            "aria-expanded": open ? "true" : "false",
            "data-key": `a${m.seq}`,
            onclick: () => ((state.actionsFor = open ? undefined : m.seq), renderMessages()),
          },
          "⋯",
        ),
    actions,
  );
}

function pendingView(p: OutboxItem & { error?: string }): HTMLElement | null {
  if (p.entry.kind !== "message") return null;
  const body = p.entry.body;
  return h(
    "div",
    { class: `msg mine pending${p.error ? " failed" : ""}`, "data-pending": p.client_msg_id },
    h(
      "div",
      { class: "bubble" },
      body ? h("div", { class: "text" }, body) : null,
      p.entry.attachments?.length ? h("div", { class: "file" }, `📎 ${p.entry.attachments.length} attachment(s)`) : null,
      h(
        "div",
        { class: "meta" },
        p.error
          ? h("span", { class: "error" }, `Not sent: ${p.error} `, h("button", { onclick: () => (state.pending.delete(p.client_msg_id), renderMessages()) }, "Dismiss"))
          : h("span", { class: "mark pending", title: "sending", "aria-label": "sending" }, "🕓"),
      ),
    ),
  );
}

function renderMessages(scrollToEnd = false): void {
  const box = byId("messages");
  const conv = state.open;
  const v = conv !== undefined ? state.views.get(conv) : undefined;
  if (conv === undefined || !v) {
    clear(box, h("p", { class: "empty" }, "Choose a chat on the left, or start a new one."));
    return;
  }
  const atEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  const focused = (document.activeElement as HTMLElement | null)?.dataset.key;
  const group = state.convs.get(conv)?.kind === "group";
  const nodes: HTMLElement[] = [];
  if (v.hasOlder) nodes.push(h("p", { class: "older" }, v.loadingOlder ? "Loading…" : "Scroll up for older messages"));
  for (const seq of [...v.items.keys()].sort((a, b) => a - b)) {
    const item = v.items.get(seq)!;
    nodes.push(item.kind === "note" ? h("p", { class: "note", "data-seq": seq }, item.text) : messageView(v, item, group));
  }
  if (v.hasNewer) nodes.push(h("button", { class: "secondary newer", "data-key": "newer", onclick: () => void showLatest(v.conv) }, "Jump to the latest messages"));
  for (const p of state.pending.values()) {
    if (p.conversation !== conv) continue;
    const el = pendingView(p);
    if (el) nodes.push(el);
  }
  clear(box, ...nodes);
  if (focused) (box.querySelector(`[data-key="${focused}"]`) as HTMLElement | null)?.focus();
  if (scrollToEnd || atEnd) box.scrollTop = box.scrollHeight;
}

function renderComposer(): void {
  const conv = state.open;
  byId("composer").hidden = conv === undefined;
  const v = conv !== undefined ? state.views.get(conv) : undefined;
  const context = byId("context");
  if (state.editing !== undefined) {
    clear(context, h("span", {}, "Editing message"), h("button", { class: "secondary", onclick: cancelContext }, "Cancel"));
  } else if (state.replyTo !== undefined && v) {
    clear(context, quoted(v, state.replyTo), h("button", { class: "secondary", onclick: cancelContext }, "Cancel"));
  } else clear(context);
  context.hidden = !context.childNodes.length;
  const ups = byId("uploads");
  clear(
    ups,
    ...state.uploads.map((u) =>
      h(
        "div",
        { class: `upload${u.error ? " failed" : ""}` },
        u.preview ? h("img", { src: u.preview, alt: "" }) : h("span", { class: "icon" }, "📄"),
        h("span", { class: "name" }, u.name),
        u.error
          ? h("span", { class: "error" }, u.error)
          : h("progress", { max: u.size || 1, value: u.media ? u.size : u.sent, "aria-label": `uploading ${u.name}` }),
        h("button", { class: "secondary", "aria-label": `Remove ${u.name}`, onclick: () => ((state.uploads = state.uploads.filter((x) => x !== u)), renderComposer()) }, "✕"),
      ),
    ),
  );
  ups.hidden = !state.uploads.length;
}

function cancelContext(): void {
  if (state.editing !== undefined) byId<HTMLTextAreaElement>("text").value = "";
  state.editing = state.replyTo = undefined;
  renderComposer();
}

// ---- wiring ------------------------------------------------------------------------------

function bindStatic(): void {
  byId("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    void signIn(false);
  });
  byId("register").addEventListener("click", () => void signIn(true));
  byId("logout").addEventListener("click", () => void logout());
  byId("profile-form").addEventListener("submit", (e) => {
    e.preventDefault();
    void saveProfile();
  });
  const avatarFile = byId<HTMLInputElement>("avatar-file");
  avatarFile.addEventListener("change", () => {
    const file = avatarFile.files?.[0];
    if (file) void uploadAvatar(file);
    avatarFile.value = "";
  });
  byId("avatar-clear").addEventListener("click", () => void saveProfile(""));
  byId("password-form").addEventListener("submit", (e) => {
    e.preventDefault();
    void changePassword();
  });
  byId("export").addEventListener("click", () => void downloadData());
  bindAdmin(hideAdmin);
  byId("admin-open").addEventListener("click", () => void showAdmin(state.api).catch((err: Error) => (byId("admin-note").textContent = err.message)));
  byId("back").addEventListener("click", () => {
    document.body.classList.remove("chat-open");
    state.open = undefined;
    location.hash = "";
    render(false);
  });
  byId("notify").addEventListener("click", () => {
    if (pushOffered()) void enablePush().then(renderNotify);
    else if (typeof Notification !== "undefined") void Notification.requestPermission().then(renderNotify);
  });
  renderNotify();
  byId("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = byId<HTMLInputElement>("search-q").value.trim();
    if (q) startSearch(q);
  });
  byId("search-form").addEventListener("keydown", searchKeys);
  byId("search").addEventListener("keydown", searchKeys);
  byId("search-close").addEventListener("click", closeSearch);
  byId("new-direct").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = byId<HTMLInputElement>("peer");
    const out = byId("new-error");
    out.textContent = "";
    startDirect(input.value.trim()).then(
      () => (input.value = ""),
      (err: Error) => (out.textContent = err.message),
    );
  });
  byId("new-group").addEventListener("submit", (e) => {
    e.preventDefault();
    const title = byId<HTMLInputElement>("group-title");
    const members = byId<HTMLInputElement>("group-members");
    const out = byId("new-error");
    out.textContent = "";
    const handles = members.value.split(/[\s,]+/).filter(Boolean);
    startGroup(title.value.trim(), handles).then(
      (msg) => ((title.value = members.value = ""), (out.textContent = msg)),
      (err: Error) => (out.textContent = err.message),
    );
  });
  const text = byId<HTMLTextAreaElement>("text");
  byId("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    submit();
  });
  text.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      submit();
    } else if (e.key === "Escape") cancelContext();
  });
  text.addEventListener("input", typed);
  text.addEventListener("paste", (e) => {
    const files = e.clipboardData?.files;
    if (files?.length) attach(files);
  });
  const file = byId<HTMLInputElement>("file");
  file.addEventListener("change", () => {
    if (file.files) attach(file.files);
    file.value = "";
  });
  const box = byId("messages");
  box.addEventListener("scroll", () => {
    const v = state.open !== undefined ? state.views.get(state.open) : undefined;
    if (v && box.scrollTop < 120) void loadOlder(v);
  });
  box.addEventListener("dragover", (e) => e.preventDefault());
  box.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer?.files.length) attach(e.dataTransfer.files);
  });
  document.addEventListener("visibilitychange", markRead);
  // Browsers say when the network goes: the connection is dropped at once (a socket would
  // otherwise look alive until its idle timeout) and sends wait in the outbox.
  addEventListener("offline", () => void state.live?.call("setOnline", false));
  addEventListener("online", () => void state.live?.call("setOnline", true));
  addEventListener("focus", markRead);
  // Typing indicators lapse by themselves.
  setInterval(() => {
    if ([...state.typing.values()].some((m) => m.size)) {
      for (const m of state.typing.values()) for (const [u, until] of m) if (until <= Date.now()) m.delete(u);
      schedule();
    }
  }, 1_000);
}

function renderNotify(): void {
  const b = byId<HTMLButtonElement>("notify");
  const p = typeof Notification === "undefined" ? "denied" : Notification.permission;
  b.hidden = p !== "default";
}

void start();
