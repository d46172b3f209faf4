/**
 * Wire types, mirroring `crates/proto` (docs/protocol.md is the contract). Every value here
 * is plain JSON: ids are numbers, times are milliseconds since the Unix epoch.
 */

export type UserId = number;
export type ConversationId = number;
export type DeviceId = number;
/** A position in one conversation's log: 1, 2, 3… with no gaps. */
export type Seq = number;
export type ReqId = number;

export type ErrorCode =
  | "bad_request"
  | "malformed_frame"
  | "unknown_type"
  | "unauthenticated"
  | "forbidden"
  | "not_found"
  | "conflict"
  | "too_large"
  | "too_many_requests"
  | "unavailable"
  | "internal"
  | "request_timeout"
  | "unsupported_media_type"
  | "quota_exceeded"
  | "muted"
  | "content_rejected";

/** Worth retrying with the same `client_msg_id` (as `ErrorCode::retryable` in Rust). */
export function retryable(code: ErrorCode): boolean {
  return code === "unavailable" || code === "too_many_requests" || code === "request_timeout";
}

export interface ErrorBody {
  code: ErrorCode;
  message: string;
  retry_after_ms?: number;
}

export type ConversationKind = "direct" | "group";
export type Role = "member" | "admin" | "owner";
export type Status = "online" | "away" | "offline";

export interface Dimensions {
  width: number;
  height: number;
}

/** An upload as a message carries it (and as an upload answers, with `sha256`). */
export interface Attachment {
  id: string;
  content_type: string;
  size: number;
  name?: string;
  width?: number;
  height?: number;
  placeholder?: string;
  thumbnail?: Dimensions;
  /** Signed for the reader, relative to the server's base URL. */
  url?: string;
  thumbnail_url?: string;
}

export interface Media extends Attachment {
  sha256: string;
}

export interface ReactionSummary {
  emoji: string;
  users: UserId[];
}

/** A message as it is now (entries read from the store carry it; live ones do not). */
export interface MessageState {
  /** The current text; the SDK fills it in when the server left it out (never edited). */
  body?: string;
  edited_seq?: Seq;
  deleted?: boolean;
  reactions?: ReactionSummary[];
}

export type EntryBody =
  | { kind: "message"; body: string; reply_to?: Seq; attachments?: Attachment[]; mentions?: UserId[] }
  | { kind: "edit"; target: Seq; body: string }
  | { kind: "delete"; target: Seq }
  | { kind: "reaction"; target: Seq; emoji: string; remove?: boolean }
  | { kind: "created"; conversation_kind: ConversationKind; title?: string; members: UserId[] }
  | { kind: "member_added"; user: UserId; role: Role }
  | { kind: "member_removed"; user: UserId; banned?: boolean }
  | { kind: "member_muted"; user: UserId; until?: number }
  | { kind: "group_settings"; slow_mode_secs?: number; locked?: boolean }
  | { kind: "role_changed"; user: UserId; role: Role }
  | { kind: "title_changed"; title: string };

/** One log entry: the common fields and its `kind` with that kind's fields, flattened. */
export type Entry = {
  conversation: ConversationId;
  seq: Seq;
  id: string;
  sender: UserId;
  ts: number;
  client_msg_id?: string;
  state?: MessageState;
} & EntryBody;

/** What a client appends (a `send`, `edit`, `delete` or `react`). */
export type NewEntry =
  | { kind: "message"; body: string; reply_to?: Seq; attachments?: string[]; mentions?: UserId[] }
  | { kind: "edit"; target: Seq; body: string }
  | { kind: "delete"; target: Seq }
  | { kind: "reaction"; target: Seq; emoji: string; remove?: boolean };

export interface Ack {
  conversation: ConversationId;
  seq: Seq;
  id: string;
  ts: number;
  client_msg_id?: string;
}

export interface MessagePreview {
  seq: Seq;
  sender: UserId;
  ts: number;
  text: string;
  truncated?: boolean;
  edited?: boolean;
  deleted?: boolean;
  attachments?: string[];
}

export interface User {
  user_id: UserId;
  handle: string;
  display_name?: string;
  status_text?: string;
  avatar?: Avatar;
  /** The account was deleted: show a deleted user; its messages stay. */
  deleted?: boolean;
}

/** A profile's picture: signed URLs that expire like attachments'. */
export interface Avatar {
  id: string;
  url?: string;
  thumbnail_url?: string;
}

/** One of your devices (logins), `GET /v1/me/devices`. */
export interface Device {
  device_id: DeviceId;
  name: string;
  created_at: number;
  last_used_at?: number;
}

/** `PATCH /v1/me/profile`: an absent field stays, an empty one is cleared. */
export interface ProfileUpdate {
  display_name?: string;
  status_text?: string;
  /** The media id of an image you uploaded; empty: no avatar. */
  avatar?: string;
}

export interface ConversationSummary {
  id: ConversationId;
  kind: ConversationKind;
  title?: string;
  role: Role;
  last_seq: Seq;
  last_activity: number;
  delivered_seq: Seq;
  read_seq: Seq;
  unread: number;
  peer?: User;
  last_message?: MessagePreview;
  /** A group in slow mode: members send at most one message per this many seconds. */
  slow_mode_secs?: number;
  /** A locked group: only its owner and admins send messages. */
  locked?: boolean;
  /** You are muted here until then (ms since the epoch). */
  muted_until?: number;
}

export interface CreatedConversation extends ConversationSummary {
  invited?: UserId[];
}

export interface Invitation {
  conversation: ConversationId;
  title: string;
  user: UserId;
  inviter: UserId;
  inviter_handle: string;
  role: Role;
  invited_at: number;
}

export interface Presence {
  user: UserId;
  status: Status;
  last_seen?: number;
}

export interface Receipt {
  conversation: ConversationId;
  user: UserId;
  delivered_seq: Seq;
  read_seq: Seq;
}

export interface SyncConversation {
  conversation: ConversationSummary;
  entries: Entry[];
  has_more: boolean;
}

/** Cursors on the wire: conversation id (as a JSON object key) to the last seq seen. */
export type Cursors = Record<string, Seq>;

export type ClientFrame =
  | { type: "auth"; token: string }
  | {
      type: "send";
      req_id: ReqId;
      conversation: ConversationId;
      client_msg_id: string;
      body: string;
      reply_to?: Seq;
      attachments?: string[];
      mentions?: UserId[];
    }
  | { type: "edit"; req_id: ReqId; conversation: ConversationId; client_msg_id: string; target: Seq; body: string }
  | { type: "delete"; req_id: ReqId; conversation: ConversationId; client_msg_id: string; target: Seq }
  | {
      type: "react";
      req_id: ReqId;
      conversation: ConversationId;
      client_msg_id: string;
      target: Seq;
      emoji: string;
      remove?: boolean;
    }
  | { type: "delivered"; req_id?: ReqId; conversation: ConversationId; seq: Seq }
  | { type: "read"; req_id?: ReqId; conversation: ConversationId; seq: Seq }
  | { type: "sync"; req_id: ReqId; cursors: Cursors; limit?: number }
  | { type: "history"; req_id: ReqId; conversation: ConversationId; before?: Seq; after?: Seq; limit?: number }
  | { type: "ping"; req_id?: ReqId }
  | { type: "typing"; req_id?: ReqId; conversation: ConversationId; typing: boolean }
  | { type: "subscribe_presence"; req_id: ReqId; users: UserId[] }
  | { type: "set_status"; req_id?: ReqId; status: Status };

export type ServerFrame =
  | { type: "ready"; user_id: UserId; device_id: DeviceId; session_id?: number }
  | ({ type: "ack"; req_id: ReqId } & Ack)
  | { type: "entry"; entry: Entry }
  | ({ type: "receipt" } & Receipt)
  | { type: "synced"; req_id: ReqId; conversations: SyncConversation[]; more?: boolean }
  | { type: "history"; req_id: ReqId; conversation: ConversationId; entries: Entry[]; has_more: boolean }
  | { type: "ok"; req_id: ReqId }
  | { type: "typing"; conversation: ConversationId; user: UserId; typing: boolean; ttl_ms?: number }
  | { type: "presence_subscribed"; req_id: ReqId; users: Presence[]; denied: UserId[] }
  | { type: "presence"; users: Presence[] }
  | { type: "invitation"; invitation: Invitation }
  | { type: "profile"; user: User }
  | { type: "blocks"; blocked: UserId[] }
  | { type: "pong"; req_id?: ReqId }
  | ({ type: "error"; req_id?: ReqId } & ErrorBody);

// --- REST bodies (crates/proto/src/rest.rs) ---------------------------------------------

export interface Session {
  token: string;
  user_id: UserId;
  device_id: DeviceId;
}

export interface Me {
  user_id: UserId;
  handle: string;
  device_id: DeviceId;
  /** A server administrator. */
  admin?: boolean;
  /** The address on file for email digests. */
  email?: { email: string; verified: boolean; digests: boolean };
}

/** `GET /v1/push/config`: which push providers the server has enabled. */
export interface PushConfig {
  /** `webhook`, `webpush`, …: the `provider`s `registerPush` accepts. */
  providers: string[];
  /** The VAPID public key (base64url, unpadded: a 65-byte uncompressed P-256 point), when `webpush` is on. */
  vapid_public_key?: string | null;
}

export interface ConversationPage {
  conversations: ConversationSummary[];
  /** Pass as `before` for the next page. */
  next?: string;
}

export interface Member {
  user_id: UserId;
  handle: string;
  role: Role;
  delivered_seq: Seq;
  read_seq: Seq;
  muted_until?: number;
}

export interface GroupSettings {
  slow_mode_secs?: number;
  locked?: boolean;
}

export interface Ban {
  user_id: UserId;
  banned_by: UserId;
  banned_at: number;
}

export type ReportStatus = "open" | "resolved" | "dismissed";

/** A report in the moderation queue; `snapshot` is what was reported, as it was then. */
export interface Report {
  id: number;
  /** Absent: flagged by the server's content rules or moderation webhook. */
  reporter?: UserId;
  reporter_handle?: string;
  subject: UserId;
  subject_handle: string;
  conversation?: ConversationId;
  seq?: Seq;
  reason: string;
  snapshot: unknown;
  status: ReportStatus;
  created_at: number;
  note?: string;
  resolved_by?: UserId;
  resolved_at?: number;
}

export interface AdminUser {
  user: User;
  admin: boolean;
  suspended_until?: number;
  banned?: boolean;
  suspension_reason?: string;
  created_at: number;
}

export interface AuditEntry {
  id: number;
  actor?: UserId;
  action: string;
  target_user?: UserId;
  conversation?: ConversationId;
  seq?: Seq;
  report?: number;
  details: Record<string, unknown>;
  created_at: number;
}

/** `POST …/members`: an ack when the user was a contact (added), an invitation otherwise. */
export type AddedMember = { added: true; ack: Ack } | { added: false; invitation: Invitation };

export interface EntryPage {
  conversation: ConversationId;
  entries: Entry[];
  has_more: boolean;
}

export interface SyncResponse {
  conversations: SyncConversation[];
  more?: boolean;
}

export interface PresenceSubscribed {
  users: Presence[];
  denied: UserId[];
}

export interface PollResponse {
  stream: number;
  cursors: Cursors;
  events: ServerFrame[];
}

export interface UploadCreated {
  id: string;
  offset: number;
  length: number;
}

export interface Ticket {
  ticket: string;
  expires_in_ms: number;
}

/** `GET /v1/search`: a page of messages found; `next` is the `cursor` of the page after
 * (absent on the last page). */
export interface SearchResults {
  hits: SearchHit[];
  next?: string;
}

/** A message found: where it is (open the history around `seq`), who sent it when, and a
 * snippet of it as it reads now. */
export interface SearchHit {
  conversation: ConversationId;
  seq: Seq;
  sender: UserId;
  ts: number;
  snippet: SnippetPart[];
}

/** A run of a snippet's text; `hit`: what the query matched (absent when false). */
export interface SnippetPart {
  text: string;
  hit?: boolean;
}

/** Filters, order and page of one search (all optional; as the Rust SDK's `SearchOptions`). */
export interface SearchOptions {
  conversation?: ConversationId;
  sender?: UserId;
  /** Only messages with attachments. */
  hasAttachment?: boolean;
  /** Sent at or after / before these times (ms since the epoch): `after` ≤ ts < `before`. */
  after?: number;
  before?: number;
  /** `newest` first (the default) or by `relevance`. */
  order?: "newest" | "relevance";
  /** The `next` of the page before. */
  cursor?: string;
  /** Hits per page (the server's default 20, at most 50). */
  limit?: number;
}

/** Which page of a conversation's log: the latest, or walking back or forward from a seq. */
export type HistoryRange = { before?: Seq; after?: Seq };

/** Close codes the server uses (docs/protocol.md, "Closing"). */
export const CloseCode = {
  normal: 1000,
  protocolError: 1002,
  invalidPayload: 1007,
  tooBig: 1009,
  restarting: 1012,
  unauthenticated: 4001,
  slowConsumer: 4008,
  idle: 4009,
  tooManySessions: 4029,
} as const;

/** A message's current text (`state.body ?? body`), as docs/protocol.md defines it. */
export function currentText(entry: Entry): string | undefined {
  if (entry.kind !== "message") return undefined;
  if (entry.state?.deleted) return "";
  return entry.state?.body ?? entry.body;
}

/** Fills `state.body` in where the server left it out (the text was never edited). */
export function normalizeEntry(entry: Entry): Entry {
  if (entry.kind === "message" && entry.state && entry.state.body === undefined) {
    entry.state.body = entry.body;
  }
  return entry;
}
