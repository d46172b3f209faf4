//! Bodies of the REST API under `/v1/` (see docs/protocol.md for the routes).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    Ack, ConversationId, ConversationSummary, DeviceId, Entry, Invitation, Receipt, Role, Seq,
    SyncConversation, UserId,
};

/// `POST /v1/accounts`, and the password half of `POST /v1/sessions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Credentials {
    pub handle: String,
    pub password: String,
    /// For `POST /v1/sessions`: a name for the device being logged in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// A user as others see them: the handle, and the profile they set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct User {
    pub user_id: UserId,
    pub handle: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// A short status text ("on holiday until Monday").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar: Option<Avatar>,
    /// The account was deleted (`DELETE /v1/me`): show a deleted user; its messages stay.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

impl User {
    /// A user with no profile set.
    pub fn new(user_id: UserId, handle: impl Into<String>) -> User {
        User {
            user_id,
            handle: handle.into(),
            display_name: None,
            status_text: None,
            avatar: None,
            deleted: false,
        }
    }
}

/// `DELETE /v1/me`: the password again, to delete the account.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeleteAccount {
    pub password: String,
}

/// A profile's picture: an image its user uploaded (`POST /v1/media`). The URLs are signed
/// and expire like attachments' (`media_url_ttl_secs`); anyone who may see the profile may
/// load them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Avatar {
    /// The media id.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A smaller copy, when the image is larger than a thumbnail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail_url: Option<String>,
    /// Whether the image has a thumbnail: what the store says, for the server to sign
    /// `thumbnail_url`; not on the wire.
    #[serde(skip)]
    pub has_thumbnail: bool,
}

/// One device (login) of the caller, `GET /v1/me/devices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Device {
    pub device_id: DeviceId,
    /// The name given at login.
    pub name: String,
    /// ms since the Unix epoch.
    pub created_at: i64,
    /// When it was last used (to the minute), if ever after its login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<i64>,
}

/// `GET /v1/me/blocks`: whom the caller blocks, by id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Blocks {
    pub blocked: Vec<UserId>,
}

/// `GET /v1/me/devices`: the caller's devices, oldest first, and which one is asking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Devices {
    pub devices: Vec<Device>,
    pub current: DeviceId,
}

/// `PUT /v1/me/password`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChangePassword {
    pub current_password: String,
    pub new_password: String,
}

/// `PATCH /v1/me/profile`: the fields to change; an absent field stays, an empty one is
/// cleared.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProfileUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_text: Option<String>,
    /// The media id of an image you uploaded; empty: no avatar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
}

/// `GET /v1/users?ids=1,2,3`: the users of those ids that exist, in the order asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Users {
    pub users: Vec<User>,
}

/// `POST /v1/sessions`: a bearer token for one device. Shown once; only its hash is stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Session {
    pub token: String,
    pub user_id: UserId,
    pub device_id: DeviceId,
}

/// `GET /v1/me`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Me {
    pub user_id: UserId,
    pub handle: String,
    pub device_id: DeviceId,
    /// A server administrator (the admin API answers them).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailOnFile>,
}

/// `POST /v1/conversations`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CreateConversation {
    /// The direct conversation with `peer`; returns the existing one if there is one.
    Direct { peer: UserId },
    /// A new group owned by the caller, with these other members.
    Group {
        title: String,
        #[serde(default)]
        members: Vec<UserId>,
    },
}

/// The answer to `POST /v1/conversations`: the conversation's summary, and (for a group) who
/// was invited instead of added because they share no conversation with the creator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedConversation {
    #[serde(flatten)]
    pub conversation: ConversationSummary,
    /// Invited, not members: they join if they accept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invited: Vec<UserId>,
}

/// `GET /v1/conversations`: most recent activity first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConversationPage {
    pub conversations: Vec<ConversationSummary>,
    /// Pass as `before` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `PATCH /v1/conversations/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdateConversation {
    pub title: String,
}

/// One row of `GET /v1/conversations/{id}/members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Member {
    pub user_id: UserId,
    pub handle: String,
    pub role: Role,
    pub delivered_seq: Seq,
    pub read_seq: Seq,
    /// Muted until then (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub muted_until: Option<i64>,
}

/// `PUT /v1/conversations/{id}/settings`: a group's moderation settings (owner, admins).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupSettings {
    /// 0: off; at most a day.
    #[serde(default)]
    pub slow_mode_secs: u32,
    #[serde(default)]
    pub locked: bool,
}

/// `PUT /v1/conversations/{id}/members/{user_id}/mute`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Mute {
    /// How long, from now; at most `max_mute_secs`.
    pub for_secs: u64,
}

/// One row of `GET /v1/conversations/{id}/bans`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Ban {
    pub user_id: UserId,
    pub banned_by: UserId,
    /// ms since the epoch.
    pub banned_at: i64,
}

/// `POST /v1/conversations/{id}/members`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AddMember {
    pub user_id: UserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
}

/// The answer to `POST /v1/conversations/{id}/members`: `201` with the ack of the
/// `member_added` entry (the user shares a conversation with the caller), or `202` with the
/// invitation made instead (they do not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum AddedMember {
    Invited(Invitation),
    Member(Ack),
}

/// `GET /v1/invitations`: the caller's pending invitations, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Invitations {
    pub invitations: Vec<Invitation>,
}

/// `PATCH /v1/conversations/{id}/members/{user_id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdateMember {
    pub role: Role,
}

/// `POST /v1/conversations/{id}/entries`: the entry plus its idempotency key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PostEntry {
    pub client_msg_id: String,
    #[serde(flatten)]
    pub entry: crate::NewEntry,
}

/// `GET /v1/conversations/{id}/entries`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EntryPage {
    pub conversation: ConversationId,
    pub entries: Vec<Entry>,
    pub has_more: bool,
}

/// `PUT /v1/conversations/{id}/cursors`: either or both.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SetCursors {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_seq: Option<Seq>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_seq: Option<Seq>,
}

/// `GET /v1/conversations/{id}/receipts`: every member's cursors.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Receipts {
    pub receipts: Vec<Receipt>,
}

/// `POST /v1/sync`: the same request and answer as the WebSocket `sync` frame.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SyncRequest {
    #[serde(default, deserialize_with = "crate::cursor_map")]
    /// Keyed by conversation id (as JSON object keys are, in decimal).
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, u64>))]
    pub cursors: BTreeMap<ConversationId, Seq>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SyncResponse {
    pub conversations: Vec<SyncConversation>,
    /// The reply reached its budget before everything: sync again with the updated cursors
    /// (as the `synced` frame's `more`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
}

/// `POST /v1/conversations/{id}/typing`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Typing {
    pub typing: bool,
}

/// `PUT /v1/streams/{id}/presence`: the users an HTTP stream watches (replaces the list).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PresenceSubscription {
    pub users: Vec<UserId>,
}

/// The answer to a presence subscription: current presence, and the refused ids.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PresenceSubscribed {
    pub users: Vec<crate::Presence>,
    pub denied: Vec<UserId>,
}

/// `PUT /v1/streams/{id}/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SetStatus {
    pub status: crate::Status,
}

/// `POST /v1/poll`: wait up to `timeout_ms` for anything after `cursors`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PollRequest {
    /// The stream of the previous poll (keeps receipts, typing and presence that arrived
    /// between polls); absent or expired: a new stream is opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<u64>,
    /// Last seen `seq` per conversation, as for `sync`.
    #[serde(default, deserialize_with = "crate::cursor_map")]
    /// Keyed by conversation id (as JSON object keys are, in decimal).
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, u64>))]
    pub cursors: BTreeMap<ConversationId, Seq>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// The answer to `POST /v1/poll`: the same frames a WebSocket would carry, and the cursors
/// to send with the next poll.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PollResponse {
    pub stream: u64,
    #[serde(deserialize_with = "crate::cursor_map")]
    /// Keyed by conversation id (as JSON object keys are, in decimal).
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, u64>))]
    pub cursors: BTreeMap<ConversationId, Seq>,
    pub events: Vec<crate::ServerFrame>,
}

/// The answer to a finished upload (`POST /v1/media`, the last `PATCH` of a resumable one)
/// and to `GET /v1/media/{id}`: the attachment as a message will carry it, with URLs signed
/// for the caller, and the SHA-256 of the stored bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Uploaded {
    #[serde(flatten)]
    pub attachment: crate::Attachment,
    /// Hex SHA-256 of the stored bytes: of the upload itself, or for an image of the bytes
    /// left once its metadata (EXIF, XMP, IPTC, text chunks) was stripped.
    pub sha256: String,
}

/// `POST /v1/media/uploads`: starts a resumable upload of `length` bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewUpload {
    pub length: u64,
    /// The type the client believes the bytes are; checked against the bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The file name to show (at most 255 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The answer to `POST /v1/media/uploads`: `PATCH /v1/media/uploads/{id}` from `offset`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UploadCreated {
    pub id: String,
    pub offset: u64,
    pub length: u64,
}

/// The answer to `POST /v1/tickets`: a single-use ticket for `GET /v1/events?ticket=`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Ticket {
    pub ticket: String,
    pub expires_in_ms: u64,
}

// ---- reports and server administration (issue 13, parts 4 and 5) ----

/// `POST /v1/reports`: a message (`conversation` and `seq`) or a user (`user`), with a reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewReport {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<ConversationId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<Seq>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserId>,
    pub reason: String,
}

/// `201` of `POST /v1/reports`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReportId {
    pub id: i64,
}

/// Where a report is in the moderation queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ReportStatus {
    Open,
    /// A moderator acted on it.
    Resolved,
    /// A moderator found nothing to do.
    Dismissed,
}

impl ReportStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportStatus::Open => "open",
            ReportStatus::Resolved => "resolved",
            ReportStatus::Dismissed => "dismissed",
        }
    }

    pub fn parse(s: &str) -> Option<ReportStatus> {
        match s {
            "open" => Some(ReportStatus::Open),
            "resolved" => Some(ReportStatus::Resolved),
            "dismissed" => Some(ReportStatus::Dismissed),
            _ => None,
        }
    }
}

/// A report as the moderation queue shows it. `snapshot` is what was reported, as it was
/// when reported: the message entry (with its state then) or the user's profile; later
/// edits and deletions do not change it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Report {
    pub id: i64,
    /// Absent: flagged by the server's content rules or moderation webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reporter: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reporter_handle: Option<String>,
    /// The reported user (a message report's: the message's author).
    pub subject: UserId,
    pub subject_handle: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<ConversationId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<Seq>,
    pub reason: String,
    pub snapshot: serde_json::Value,
    pub status: ReportStatus,
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_by: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at: Option<i64>,
}

/// `GET /v1/admin/reports`: newest first; `next` is the `before` of the next page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Reports {
    pub reports: Vec<Report>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<i64>,
}

/// `POST /v1/admin/reports/{id}/resolve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResolveReport {
    /// `resolved` or `dismissed`.
    pub status: ReportStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A user as the admin API shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AdminUser {
    pub user: User,
    pub admin: bool,
    /// Suspended until then (ms since the epoch); absent when not suspended or banned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended_until: Option<i64>,
    /// Banned: suspended with no end.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub banned: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspension_reason: Option<String>,
    pub created_at: i64,
}

/// `GET /v1/admin/users`: by id; `next` is the `after` of the next page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AdminUsers {
    pub users: Vec<AdminUser>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<UserId>,
}

/// `POST /v1/admin/users/{id}/suspend`: for `for_secs`, or with none a ban (no end).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Suspend {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_secs: Option<u64>,
    pub reason: String,
    /// Also remove every message of theirs (a moderator's deletion in each conversation).
    #[serde(default)]
    pub remove_messages: bool,
}

/// What a suspension did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Suspended {
    /// Logins ended (their sessions closed on every node).
    pub devices: u64,
    /// Messages removed.
    pub messages_removed: u64,
}

/// One row of the audit log: a server administrator's action (`actor` absent: the command
/// line or the config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    pub id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<UserId>,
    /// `grant_admin`, `revoke_admin`, `suspend`, `ban`, `restore`, `remove_message`,
    /// `remove_messages`, `resolve_report`, `dismiss_report`.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_user: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<ConversationId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<Seq>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<i64>,
    pub details: serde_json::Value,
    pub created_at: i64,
}

/// `GET /v1/admin/audit`: newest first; `next` is the `before` of the next page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditLog {
    pub entries: Vec<AuditEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<i64>,
}

// ---- push notifications (issue 14) ----

/// `POST /v1/me/push`: this device's push registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewPushRegistration {
    /// `webhook` (the server's push gateway); `webpush`, `fcm` and `apns` are to come.
    pub provider: String,
    /// The provider's address of this device (for `webhook`: the gateway's token).
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p256dh: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
}

/// One row of `GET /v1/me/push`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PushRegistration {
    pub id: i64,
    pub provider: String,
    pub device_id: DeviceId,
    pub created_at: i64,
}

/// `GET /v1/search`: a page of messages found, newest first or by relevance; `next` is the
/// `cursor` of the page after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SearchResults {
    pub hits: Vec<SearchHit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// A message found: where it is (open the history around `seq`), who sent it when, and a
/// snippet of it as it reads now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SearchHit {
    pub conversation: crate::ConversationId,
    pub seq: crate::Seq,
    pub sender: UserId,
    pub ts: i64,
    pub snippet: Vec<SnippetPart>,
}

/// A run of a snippet's text; `hit`: what the query matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SnippetPart {
    pub text: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hit: bool,
}

/// `PUT /v1/me/email`: an address to verify and then mail digests to, or `null` to remove
/// it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EmailUpdate {
    pub email: Option<String>,
}

/// `PUT /v1/me/email/digests`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DigestsSetting {
    pub on: bool,
}

/// The caller's address on file, in `GET /v1/me`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EmailOnFile {
    pub email: String,
    /// Its owner followed the link mailed to it (digests go only to verified addresses).
    pub verified: bool,
    /// Digests go to it (off after its unsubscribe link).
    pub digests: bool,
}

/// `GET /v1/push/config`: the push providers on (`webhook`, `webpush`, `fcm`, `apns`) and,
/// with Web Push on, the VAPID public key (base64url) a browser subscribes with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PushConfig {
    pub providers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vapid_public_key: Option<String>,
}

/// `GET /v1/me/push`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PushRegistrations {
    pub registrations: Vec<PushRegistration>,
}

/// `PUT /v1/me/notifications` (do not disturb) and `PUT
/// /v1/conversations/{id}/notifications` (mute one): until a time, forever, or (neither)
/// lifted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MuteNotifications {
    /// ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forever: bool,
}
