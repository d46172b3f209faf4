/**
 * REST calls under `/v1/` (docs/protocol.md, "REST under /v1/" and "Media"): accounts and
 * sessions, conversations and members, invitations, history pages, cursors, tickets, the
 * long-poll request and media uploads. Stateless request/response; the live side is
 * {@link Client}. The token is sent as `Authorization: Bearer …` and never logged.
 */
import { backoffDelay } from "./backoff.js";
import { NatterError } from "./errors.js";
import type {
  Ack,
  AdminUser,
  AuditEntry,
  Ban,
  GroupSettings,
  Report,
  ReportStatus,
  AddedMember,
  ConversationId,
  ConversationPage,
  ConversationSummary,
  CreatedConversation,
  Cursors,
  EntryPage,
  ErrorBody,
  HistoryRange,
  Invitation,
  Me,
  Media,
  Member,
  NewEntry,
  PollResponse,
  PresenceSubscribed,
  Receipt,
  Role,
  SearchOptions,
  SearchResults,
  Seq,
  Session,
  Status,
  SyncResponse,
  Ticket,
  UploadCreated,
  Device,
  DeviceId,
  ProfileUpdate,
  PushConfig,
  User,
  UserId,
} from "./types.js";

/** The parts of a `fetch` Response the SDK reads. */
export interface FetchResponseLike {
  readonly status: number;
  readonly ok: boolean;
  readonly headers: { get(name: string): string | null };
  text(): Promise<string>;
  arrayBuffer(): Promise<ArrayBuffer>;
}

export interface FetchInitLike {
  method?: string;
  headers?: Record<string, string>;
  body?: string | Uint8Array;
  signal?: AbortSignal;
}

/** A `fetch` (the global one by default). */
export type FetchLike = (url: string, init?: FetchInitLike) => Promise<FetchResponseLike>;

/** What a resumable upload reads from: bytes in memory, or a Blob/File (browsers). */
export type UploadSource =
  | Uint8Array
  | { readonly size: number; slice(start: number, end: number): { arrayBuffer(): Promise<ArrayBuffer> } };

export interface UploadOptions {
  /** The declared type; the server sniffs the bytes and refuses a contradiction. */
  contentType?: string;
  name?: string;
  signal?: AbortSignal;
  /** Called with the bytes the server holds so far and the total. */
  onProgress?: (sent: number, total: number) => void;
}

export interface ResumableUploadOptions extends UploadOptions {
  /** Bytes per `PATCH` (and held in memory at once); default 4 MiB as the Rust SDK. */
  chunkBytes?: number;
  /** Failed attempts in a row (no byte got through) before giving up; default 8. */
  maxFailures?: number;
}

export interface PollRequest {
  stream?: number;
  cursors: Cursors;
  timeout_ms?: number;
  limit?: number;
}

export const UPLOAD_CHUNK = 4 * 1024 * 1024;
const UPLOAD_BACKOFF = { initialMs: 50, maxMs: 2_000, stableAfterMs: 10_000 };

function defaultFetch(): FetchLike {
  const f = (globalThis as { fetch?: FetchLike }).fetch;
  if (!f) throw new Error("no global fetch: pass `fetch` in the options");
  return f.bind(globalThis);
}

function abortError(): NatterError {
  return new NatterError("aborted", "the request was aborted");
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortError());
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(abortError());
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** The error an unsuccessful answer carries. */
async function refusal(res: FetchResponseLike): Promise<NatterError> {
  const text = await res.text().catch(() => "");
  try {
    const body = JSON.parse(text) as ErrorBody;
    if (typeof body.code === "string") return NatterError.server(body, res.status);
  } catch {
    // Not the server's error shape: described below.
  }
  return new NatterError("protocol", `HTTP ${res.status}: ${text.slice(0, 200)}`, undefined, res.status);
}

function uploadOffset(res: FetchResponseLike): number {
  const v = Number(res.headers.get("upload-offset"));
  if (!Number.isSafeInteger(v) || v < 0) throw new NatterError("protocol", "no Upload-Offset in the answer");
  return v;
}

async function readChunk(source: UploadSource, start: number, end: number): Promise<Uint8Array> {
  if (source instanceof Uint8Array) return source.subarray(start, end);
  return new Uint8Array(await source.slice(start, end).arrayBuffer());
}

function sourceSize(source: UploadSource): number {
  return source instanceof Uint8Array ? source.byteLength : source.size;
}

/** A REST client for one server, with or without a token. Cheap to copy. */
export class Api {
  readonly baseUrl: string;
  readonly #token: string | undefined;
  private readonly fetchImpl: FetchLike;

  /** A client for the server at `baseUrl` (`http://host:port` or `https://…`). */
  constructor(baseUrl: string, options: { token?: string; fetch?: FetchLike } = {}) {
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    if (!/^https?:\/\//.test(this.baseUrl)) throw new Error(`base url must start with http:// or https://`);
    this.#token = options.token;
    this.fetchImpl = options.fetch ?? defaultFetch();
  }

  /** The same server, authenticated with `token`. */
  withToken(token: string): Api {
    return new Api(this.baseUrl, { token, fetch: this.fetchImpl });
  }

  /** Never shows the token. */
  toJSON(): { baseUrl: string; token: string | undefined } {
    return { baseUrl: this.baseUrl, token: this.#token === undefined ? undefined : "…" };
  }

  // --- plumbing ---------------------------------------------------------------------

  /** One HTTP request with the token; network failures become `kind: "network"`. */
  async raw(
    method: string,
    path: string,
    init: { query?: Record<string, string | number | undefined>; body?: string | Uint8Array; headers?: Record<string, string>; signal?: AbortSignal } = {},
  ): Promise<FetchResponseLike> {
    let url = `${this.baseUrl}${path}`;
    if (init.query) {
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(init.query)) if (v !== undefined) q.set(k, String(v));
      const text = q.toString();
      if (text) url += `?${text}`;
    }
    const headers: Record<string, string> = { ...init.headers };
    if (this.#token !== undefined) headers["authorization"] = `Bearer ${this.#token}`;
    const req: FetchInitLike = { method, headers };
    if (init.body !== undefined) req.body = init.body;
    if (init.signal) req.signal = init.signal;
    try {
      return await this.fetchImpl(url, req);
    } catch (err) {
      if (init.signal?.aborted) throw abortError();
      throw new NatterError("network", `${method} ${path}: ${(err as Error)?.message ?? String(err)}`);
    }
  }

  private async call<T>(method: string, path: string, body?: unknown, query?: Record<string, string | number | undefined>, signal?: AbortSignal): Promise<T> {
    const init: Parameters<Api["raw"]>[2] = {};
    if (query) init.query = query;
    if (signal) init.signal = signal;
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers = { "content-type": "application/json" };
    }
    const res = await this.raw(method, path, init);
    if (!res.ok) throw await refusal(res);
    let text: string;
    try {
      text = await res.text();
    } catch (err) {
      if (signal?.aborted) throw abortError();
      throw new NatterError("network", `${method} ${path}: reading the answer failed: ${(err as Error)?.message}`);
    }
    if (res.status === 204 || text === "") return undefined as T;
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new NatterError("protocol", `${path}: answer does not parse`);
    }
  }

  // --- accounts -----------------------------------------------------------------------

  /** `POST /v1/accounts`. */
  register(handle: string, password: string): Promise<User> {
    return this.call("POST", "/v1/accounts", { handle, password });
  }

  /** `POST /v1/sessions`: logs one device in; the token is in the answer (shown once). */
  login(handle: string, password: string, device?: string): Promise<Session> {
    return this.call("POST", "/v1/sessions", device === undefined ? { handle, password } : { handle, password, device });
  }

  /** Registers `handle` unless it exists already, then logs in. */
  async registerOrLogin(handle: string, password: string, device?: string): Promise<Session> {
    try {
      await this.register(handle, password);
    } catch (err) {
      if (!(err instanceof NatterError && err.code === "conflict")) throw err;
    }
    return this.login(handle, password, device);
  }

  /** `DELETE /v1/sessions/current`: revokes this client's token. */
  logout(): Promise<void> {
    return this.call("DELETE", "/v1/sessions/current");
  }

  /** `GET /v1/me`. */
  me(signal?: AbortSignal): Promise<Me> {
    return this.call("GET", "/v1/me", undefined, undefined, signal);
  }

  /** `GET /v1/users/{handle}`. */
  user(handle: string): Promise<User> {
    return this.call("GET", `/v1/users/${encodeURIComponent(handle)}`);
  }

  /** `GET /v1/users?ids=`: those that exist, in the order asked (at most 100 ids). */
  async users(ids: UserId[]): Promise<User[]> {
    const res = await this.call<{ users: User[] }>("GET", "/v1/users", undefined, { ids: ids.join(",") });
    return res.users;
  }

  /** `GET /v1/users?q=`: users whose handle or display name starts with `prefix`, among your contacts. */
  async searchUsers(prefix: string, limit?: number): Promise<User[]> {
    const query: Record<string, string | undefined> = { q: prefix, limit: limit === undefined ? undefined : String(limit) };
    const res = await this.call<{ users: User[] }>("GET", "/v1/users", undefined, query);
    return res.users;
  }

  /** `GET /v1/me/devices`: your logins with their last use, and which one is asking. */
  devices(): Promise<{ devices: Device[]; current: DeviceId }> {
    return this.call("GET", "/v1/me/devices");
  }

  /** `DELETE /v1/me/devices/{id}`: logs that device out; its sessions end on every node. */
  async revokeDevice(device: DeviceId): Promise<void> {
    await this.call<unknown>("DELETE", `/v1/me/devices/${device}`);
  }

  /** `DELETE /v1/me`: deletes your account (every session ends; your messages stay). */
  async deleteAccount(password: string): Promise<void> {
    await this.call<unknown>("DELETE", "/v1/me", { password });
  }

  /** `PUT /v1/me/password`: every other device is logged out. */
  async changePassword(currentPassword: string, newPassword: string): Promise<void> {
    await this.call<unknown>("PUT", "/v1/me/password", { current_password: currentPassword, new_password: newPassword });
  }

  /** `PATCH /v1/me/profile`: an absent field stays, an empty one is cleared; the profile as it is now. */
  setProfile(update: ProfileUpdate): Promise<User> {
    return this.call<User>("PATCH", "/v1/me/profile", update);
  }

  /** `GET /v1/me/export`: your data as one JSON archive (profile, devices, conversations, own messages, uploads). */
  exportData(): Promise<Record<string, unknown>> {
    return this.call("GET", "/v1/me/export");
  }

  // --- push notifications ---------------------------------------------------------------

  /** `GET /v1/push/config`: the providers the server has enabled, and the VAPID key when Web Push is on. */
  pushConfig(): Promise<PushConfig> {
    return this.call("GET", "/v1/push/config");
  }

  /** `PUT /v1/me/email`: an address for email digests (mailed a link to verify it), or
   * `null` to remove it. */
  async setEmail(email: string | null): Promise<void> {
    await this.call<unknown>("PUT", "/v1/me/email", { email });
  }

  /** `PUT /v1/me/email/digests`: digests to the verified address on or off. */
  async setDigests(on: boolean): Promise<void> {
    await this.call<unknown>("PUT", "/v1/me/email/digests", { on });
  }

  /** `POST /v1/me/push`: this device's push registration; its id. */
  async registerPush(registration: { provider: string; token: string; p256dh?: string; auth?: string }): Promise<number> {
    const res = await this.call<{ id: number }>("POST", "/v1/me/push", registration);
    return res.id;
  }

  /** `GET /v1/me/push`. */
  async pushRegistrations(): Promise<{ id: number; provider: string; device_id: DeviceId; created_at: number }[]> {
    const res = await this.call<{ registrations: { id: number; provider: string; device_id: DeviceId; created_at: number }[] }>("GET", "/v1/me/push");
    return res.registrations;
  }

  /** `DELETE /v1/me/push/{id}`. */
  async unregisterPush(id: number): Promise<void> {
    await this.call<unknown>("DELETE", `/v1/me/push/${id}`);
  }

  /** Mutes a conversation's pushes (or, without `conv`, all of them: do not disturb) until `until`, forever, or (neither) no more. */
  async muteNotifications(conv: ConversationId | undefined, mute: { until?: number; forever?: boolean } = {}): Promise<void> {
    await this.call<unknown>("PUT", conv === undefined ? "/v1/me/notifications" : `/v1/conversations/${conv}/notifications`, mute);
  }

  // --- blocks and reports -------------------------------------------------------------

  /** `GET /v1/me/blocks`: whom you block. */
  async blocks(): Promise<UserId[]> {
    const res = await this.call<{ blocked: UserId[] }>("GET", "/v1/me/blocks");
    return res.blocked;
  }

  /** `PUT /v1/me/blocks/{user}`: your sessions get a `blocks` event. */
  async block(user: UserId): Promise<void> {
    await this.call<unknown>("PUT", `/v1/me/blocks/${user}`);
  }

  /** `DELETE /v1/me/blocks/{user}`. */
  async unblock(user: UserId): Promise<void> {
    await this.call<unknown>("DELETE", `/v1/me/blocks/${user}`);
  }

  /** `POST /v1/reports` of a message; the report's id. */
  async reportMessage(conv: ConversationId, seq: Seq, reason: string): Promise<number> {
    const res = await this.call<{ id: number }>("POST", "/v1/reports", { conversation: conv, seq, reason });
    return res.id;
  }

  /** `POST /v1/reports` of a user; the report's id. */
  async reportUser(user: UserId, reason: string): Promise<number> {
    const res = await this.call<{ id: number }>("POST", "/v1/reports", { user, reason });
    return res.id;
  }

  // --- group moderation (owner and admins) ----------------------------------------------

  /** `PUT /v1/conversations/{id}/settings`: slow mode (0: off) and lock. */
  setGroupSettings(conv: ConversationId, settings: GroupSettings): Promise<Ack> {
    return this.call("PUT", `/v1/conversations/${conv}/settings`, settings);
  }

  /** `PUT /v1/conversations/{id}/members/{user}/mute` for `forSecs`. */
  mute(conv: ConversationId, user: UserId, forSecs: number): Promise<Ack> {
    return this.call("PUT", `/v1/conversations/${conv}/members/${user}/mute`, { for_secs: forSecs });
  }

  /** `DELETE /v1/conversations/{id}/members/{user}/mute`. */
  unmute(conv: ConversationId, user: UserId): Promise<Ack> {
    return this.call("DELETE", `/v1/conversations/${conv}/members/${user}/mute`);
  }

  /** `PUT /v1/conversations/{id}/bans/{user}`: removed and banned. */
  ban(conv: ConversationId, user: UserId): Promise<Ack> {
    return this.call("PUT", `/v1/conversations/${conv}/bans/${user}`);
  }

  /** `DELETE /v1/conversations/{id}/bans/{user}`. */
  async unban(conv: ConversationId, user: UserId): Promise<void> {
    await this.call<unknown>("DELETE", `/v1/conversations/${conv}/bans/${user}`);
  }

  /** `GET /v1/conversations/{id}/bans`. */
  bans(conv: ConversationId): Promise<Ban[]> {
    return this.call("GET", `/v1/conversations/${conv}/bans`);
  }

  // --- server administration (administrators only; anyone else gets not_found) ----------

  /** `GET /v1/admin/users`. */
  adminUsers(query: { q?: string; after?: UserId; limit?: number } = {}): Promise<{ users: AdminUser[]; next?: UserId }> {
    return this.call("GET", "/v1/admin/users", undefined, query);
  }

  /** `POST /v1/admin/users/{id}/suspend`: for `forSecs`, or a ban without it. */
  suspend(user: UserId, reason: string, options: { forSecs?: number; removeMessages?: boolean } = {}): Promise<{ devices: number; messages_removed: number }> {
    const body: Record<string, unknown> = { reason, remove_messages: options.removeMessages ?? false };
    if (options.forSecs !== undefined) body.for_secs = options.forSecs;
    return this.call("POST", `/v1/admin/users/${user}/suspend`, body);
  }

  /** `POST /v1/admin/users/{id}/restore`. */
  async restore(user: UserId): Promise<void> {
    await this.call<unknown>("POST", `/v1/admin/users/${user}/restore`);
  }

  /** `DELETE /v1/admin/conversations/{id}/entries/{seq}`: removes any message. */
  removeMessage(conv: ConversationId, seq: Seq): Promise<Ack> {
    return this.call("DELETE", `/v1/admin/conversations/${conv}/entries/${seq}`);
  }

  /** `GET /v1/admin/reports`, newest first. */
  reports(query: { status?: ReportStatus | "all"; before?: number; limit?: number } = {}): Promise<{ reports: Report[]; next?: number }> {
    return this.call("GET", "/v1/admin/reports", undefined, query);
  }

  /** `POST /v1/admin/reports/{id}/resolve`. */
  async resolveReport(id: number, status: "resolved" | "dismissed", note?: string): Promise<void> {
    await this.call<unknown>("POST", `/v1/admin/reports/${id}/resolve`, note === undefined ? { status } : { status, note });
  }

  /** `GET /v1/admin/audit`, newest first. */
  auditLog(query: { before?: number; limit?: number } = {}): Promise<{ entries: AuditEntry[]; next?: number }> {
    return this.call("GET", "/v1/admin/audit", undefined, query);
  }

  // --- conversations ------------------------------------------------------------------

  /** `POST /v1/conversations`: the direct conversation with `peer` (the existing one, if any). */
  createDirect(peer: UserId): Promise<ConversationSummary> {
    return this.call("POST", "/v1/conversations", { kind: "direct", peer });
  }

  /** `POST /v1/conversations`: a group; contacts among `members` join, others are invited. */
  createGroup(title: string, members: UserId[] = []): Promise<CreatedConversation> {
    return this.call("POST", "/v1/conversations", { kind: "group", title, members });
  }

  /** `GET /v1/conversations`: most recent activity first; pass `next` as `before`. */
  conversations(page: { limit?: number | undefined; before?: string | undefined } = {}): Promise<ConversationPage> {
    return this.call("GET", "/v1/conversations", undefined, { limit: page.limit, before: page.before });
  }

  /** Every conversation, page after page. */
  async *allConversations(limit?: number): AsyncGenerator<ConversationSummary> {
    let before: string | undefined;
    for (;;) {
      const page = await this.conversations(before === undefined ? { limit } : { limit, before });
      yield* page.conversations;
      if (!page.next) return;
      before = page.next;
    }
  }

  /** `GET /v1/conversations/{id}`. */
  conversation(conv: ConversationId): Promise<ConversationSummary> {
    return this.call("GET", `/v1/conversations/${conv}`);
  }

  /** `PATCH /v1/conversations/{id}`: renames a group. */
  setTitle(conv: ConversationId, title: string): Promise<Ack> {
    return this.call("PATCH", `/v1/conversations/${conv}`, { title });
  }

  /** `GET /v1/conversations/{id}/members`. */
  members(conv: ConversationId): Promise<Member[]> {
    return this.call("GET", `/v1/conversations/${conv}/members`);
  }

  /** `POST /v1/conversations/{id}/members`: added at once (a contact) or invited. */
  async addMember(conv: ConversationId, user: UserId, role?: Role): Promise<AddedMember> {
    const res = await this.raw("POST", `/v1/conversations/${conv}/members`, {
      body: JSON.stringify(role === undefined ? { user_id: user } : { user_id: user, role }),
      headers: { "content-type": "application/json" },
    });
    if (!res.ok) throw await refusal(res);
    const body = JSON.parse(await res.text()) as Ack | Invitation;
    return res.status === 202 ? { added: false, invitation: body as Invitation } : { added: true, ack: body as Ack };
  }

  /** `PATCH /v1/conversations/{id}/members/{user}`. */
  setRole(conv: ConversationId, user: UserId, role: Role): Promise<Ack> {
    return this.call("PATCH", `/v1/conversations/${conv}/members/${user}`, { role });
  }

  /** `DELETE /v1/conversations/{id}/members/{user}`: removes a member (yourself: leave). */
  removeMember(conv: ConversationId, user: UserId): Promise<Ack> {
    return this.call("DELETE", `/v1/conversations/${conv}/members/${user}`);
  }

  /** `GET /v1/invitations`: the caller's pending invitations, oldest first. */
  async invitations(): Promise<Invitation[]> {
    return (await this.call<{ invitations: Invitation[] }>("GET", "/v1/invitations")).invitations;
  }

  /** `POST /v1/invitations/{id}/accept`: joins the group. */
  acceptInvitation(conv: ConversationId): Promise<Ack> {
    return this.call("POST", `/v1/invitations/${conv}/accept`);
  }

  /** `DELETE /v1/invitations/{id}`: declines it. */
  declineInvitation(conv: ConversationId): Promise<void> {
    return this.call("DELETE", `/v1/invitations/${conv}`);
  }

  // --- the log ------------------------------------------------------------------------

  /** `GET /v1/conversations/{id}/entries`: one page, ascending `seq`; `{}` is the latest. */
  history(conv: ConversationId, range: HistoryRange = {}, limit?: number, signal?: AbortSignal): Promise<EntryPage> {
    return this.call("GET", `/v1/conversations/${conv}/entries`, undefined, { before: range.before, after: range.after, limit }, signal);
  }

  /**
   * `GET /v1/search`: messages you may read that match `q` (words, `"quoted phrases"`,
   * `prefix*`), newest first unless `order: "relevance"`, each with a snippet whose `hit`
   * parts are what matched; pass `next` as `cursor` for the page after.
   */
  search(q: string, options: SearchOptions = {}, signal?: AbortSignal): Promise<SearchResults> {
    const query = {
      q,
      conversation: options.conversation,
      sender: options.sender,
      has: options.hasAttachment ? "attachment" : undefined,
      after: options.after,
      before: options.before,
      order: options.order,
      cursor: options.cursor,
      limit: options.limit,
    };
    return this.call("GET", "/v1/search", undefined, query, signal);
  }

  /** `POST /v1/conversations/{id}/entries`: one append, idempotent by `client_msg_id`. */
  postEntry(conv: ConversationId, clientMsgId: string, entry: NewEntry): Promise<Ack> {
    return this.call("POST", `/v1/conversations/${conv}/entries`, { client_msg_id: clientMsgId, ...entry });
  }

  /** `PUT /v1/conversations/{id}/cursors`. */
  setCursors(conv: ConversationId, cursors: { delivered_seq?: Seq; read_seq?: Seq }): Promise<void> {
    return this.call("PUT", `/v1/conversations/${conv}/cursors`, cursors);
  }

  /** `GET /v1/conversations/{id}/receipts`: every member's cursors. */
  async receipts(conv: ConversationId): Promise<Receipt[]> {
    return (await this.call<{ receipts: Receipt[] }>("GET", `/v1/conversations/${conv}/receipts`)).receipts;
  }

  /** `POST /v1/sync`: one bounded reply (sync again while `more`). */
  sync(cursors: Cursors, limit?: number): Promise<SyncResponse> {
    return this.call("POST", "/v1/sync", limit === undefined ? { cursors } : { cursors, limit });
  }

  /** `POST /v1/conversations/{id}/typing`. */
  typing(conv: ConversationId, typing: boolean): Promise<void> {
    return this.call("POST", `/v1/conversations/${conv}/typing`, { typing });
  }

  // --- HTTP streams -------------------------------------------------------------------

  /** `POST /v1/tickets`: one use of `GET /v1/events?ticket=`, good for 30 s. */
  ticket(signal?: AbortSignal): Promise<Ticket> {
    return this.call("POST", "/v1/tickets", undefined, undefined, signal);
  }

  /** `POST /v1/poll`. */
  poll(req: PollRequest, signal?: AbortSignal): Promise<PollResponse> {
    return this.call("POST", "/v1/poll", req, undefined, signal);
  }

  /** `PUT /v1/streams/{id}/presence`: an SSE or long-poll session's presence watch list. */
  streamPresence(sessionId: number, users: UserId[]): Promise<PresenceSubscribed> {
    return this.call("PUT", `/v1/streams/${sessionId}/presence`, { users });
  }

  /** `PUT /v1/streams/{id}/status`. */
  streamStatus(sessionId: number, status: Status): Promise<void> {
    return this.call("PUT", `/v1/streams/${sessionId}/status`, { status });
  }

  // --- media --------------------------------------------------------------------------

  /** `POST /v1/media`: uploads `bytes` in one request. */
  async upload(bytes: Uint8Array, options: UploadOptions = {}): Promise<Media> {
    const headers: Record<string, string> = {};
    if (options.contentType) headers["content-type"] = options.contentType;
    options.onProgress?.(0, bytes.byteLength);
    const init: Parameters<Api["raw"]>[2] = { body: bytes, headers, query: { filename: options.name } };
    if (options.signal) init.signal = options.signal;
    const res = await this.raw("POST", "/v1/media", init);
    if (!res.ok) throw await refusal(res);
    const media = JSON.parse(await res.text()) as Media;
    options.onProgress?.(bytes.byteLength, bytes.byteLength);
    return media;
  }

  /**
   * Uploads resumably: `POST /v1/media/uploads`, then `PATCH`es of `chunkBytes`; after a
   * broken connection it asks the server where the upload stands (`HEAD`, `Upload-Offset`)
   * and goes on from there, giving up after `maxFailures` failures in a row. An abort drops
   * the unfinished upload on the server (best effort).
   */
  async uploadResumable(source: UploadSource, options: ResumableUploadOptions = {}): Promise<Media> {
    const { signal } = options;
    const length = sourceSize(source);
    const chunk = Math.max(1, options.chunkBytes ?? UPLOAD_CHUNK);
    const maxFailures = options.maxFailures ?? 8;
    const created = await this.call<UploadCreated>("POST", "/v1/media/uploads", {
      length,
      ...(options.contentType ? { content_type: options.contentType } : {}),
      ...(options.name ? { name: options.name } : {}),
    }, undefined, signal);
    const path = `/v1/media/uploads/${encodeURIComponent(created.id)}`;
    let offset = created.offset;
    let failures = 0;
    try {
      for (;;) {
        options.onProgress?.(offset, length);
        const bytes = await readChunk(source, offset, Math.min(offset + chunk, length));
        let failed: NatterError | undefined;
        try {
          const init: Parameters<Api["raw"]>[2] = {
            body: bytes,
            headers: { "upload-offset": String(offset), "content-type": "application/offset+octet-stream" },
          };
          if (signal) init.signal = signal;
          const res = await this.raw("PATCH", path, init);
          if (res.status === 201) {
            const media = JSON.parse(await res.text()) as Media;
            options.onProgress?.(length, length);
            return media;
          }
          if (res.status === 204) {
            offset = uploadOffset(res);
            failures = 0;
            continue;
          }
          // A conflict: the offset moved (an earlier PATCH landed after all); ask.
          if (res.status !== 409) throw await refusal(res);
          await res.text().catch(() => "");
          failed = new NatterError("protocol", "upload keeps conflicting");
        } catch (err) {
          if (!(err instanceof NatterError) || err.kind !== "network") throw err;
          failed = err;
        }
        failures += 1;
        if (failures >= maxFailures) throw failed;
        await sleep(backoffDelay(UPLOAD_BACKOFF, failures), signal);
        let res: FetchResponseLike;
        try {
          res = await this.raw("HEAD", path, signal ? { signal } : {});
        } catch (err) {
          if (err instanceof NatterError && err.kind === "network") continue; // still unreachable
          throw err;
        }
        if (res.ok) {
          const now = uploadOffset(res);
          if (now > offset) failures = 0;
          offset = now;
        } else if (res.status === 404) {
          throw NatterError.server({ code: "not_found", message: "the upload is gone; start again" }, 404);
        } else {
          throw await refusal(res);
        }
      }
    } catch (err) {
      if (err instanceof NatterError && err.kind === "aborted") {
        this.raw("DELETE", path).catch(() => undefined);
      }
      throw err;
    }
  }

  /** `DELETE /v1/media/uploads/{id}`: drops an unfinished upload. */
  cancelUpload(id: string): Promise<void> {
    return this.call("DELETE", `/v1/media/uploads/${encodeURIComponent(id)}`);
  }

  /** `GET /v1/media/{id}`: the media with freshly signed URLs (and `sha256`). */
  media(id: string): Promise<Media> {
    return this.call("GET", `/v1/media/${encodeURIComponent(id)}`);
  }

  /** Downloads a signed URL (an attachment's `url`, relative to the server) whole. */
  async download(url: string, signal?: AbortSignal): Promise<Uint8Array> {
    const full = /^https?:\/\//.test(url) ? url : `${this.baseUrl}${url}`;
    let res: FetchResponseLike;
    try {
      res = await this.fetchImpl(full, signal ? { signal } : {});
    } catch (err) {
      if (signal?.aborted) throw abortError();
      throw new NatterError("network", `download: ${(err as Error)?.message}`);
    }
    if (!res.ok) throw await refusal(res);
    return new Uint8Array(await res.arrayBuffer());
  }
}
