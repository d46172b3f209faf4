//! The durable part of Natter: accounts, devices, conversations, members, each
//! conversation's append-only log, message state and cursors.
//!
//! # Layout
//! - [`Store`] is the one interface the server uses, as `Arc<dyn Store>`.
//! - [`sqlite::SqliteStore`] is the embedded default: one writer thread that commits jobs in
//!   batches (group commit, `seq` assigned inside the transaction) and a pool of readers.
//! - Every committed entry is also handed, in commit order, to the [`CommitFeed`] given at
//!   open: that is where routing starts ("store first, deliver second").
//!
//! - [`postgres::PgStore`] is the same store for several nodes sharing one PostgreSQL.
//!
//! Authorization that must be atomic with a write (membership, roles, ownership of the
//! message being edited, the member cap, who may be added and who only invited, idempotency)
//! is checked inside the writing transaction, by the pure functions of `rules`: each backend loads the facts a rule needs
//! and applies the effect it returns, so only the SQL differs between them.

mod codec;
mod rules;
pub mod search;

pub use codec::changes_members;
pub use rules::{handle_key, suspended};
pub mod postgres;
pub mod sqlite;

use async_trait::async_trait;
use natter_proto::{
    Ack, Attachment, Committed, ConversationId, ConversationSummary, DeviceId, Dimensions, Entry,
    ErrorCode, Invitation, NewEntry, Receipt, Role, Seq, UserId,
    rest::{Device, Member, ProfileUpdate, User},
};
use tokio::sync::{mpsc, oneshot};

/// Errors of the store. Each maps to one wire [`ErrorCode`]; details stay in logs.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The thing does not exist, or the caller may not know it exists.
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("conflict: {0}")]
    Conflict(&'static str),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("media storage quota exceeded")]
    QuotaExceeded,
    /// The sender is muted in the group until `until` (ms since the epoch).
    #[error("muted in this group")]
    Muted { until: i64 },
    /// The group is in slow mode: the sender's next message is due in `retry_after_ms`.
    #[error("slow mode: wait before sending again")]
    SlowMode { retry_after_ms: u64 },
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store fault: {0}")]
    Internal(String),
}

impl StoreError {
    /// The wire code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::NotFound(_) => ErrorCode::NotFound,
            StoreError::Forbidden(_) => ErrorCode::Forbidden,
            StoreError::Conflict(_) => ErrorCode::Conflict,
            StoreError::BadRequest(_) => ErrorCode::BadRequest,
            StoreError::QuotaExceeded => ErrorCode::QuotaExceeded,
            StoreError::Muted { .. } => ErrorCode::Muted,
            StoreError::SlowMode { .. } => ErrorCode::TooManyRequests,
            StoreError::Unavailable(_) => ErrorCode::Unavailable,
            StoreError::Internal(_) => ErrorCode::Internal,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// SHA-256 of a bearer token: tokens are stored only as this.
pub type TokenHash = [u8; 32];

/// Where committed entries go, one batch per commit, in commit order.
pub type CommitFeed = mpsc::Sender<Vec<Committed>>;

/// Limits the store enforces inside its transactions.
#[derive(Debug, Clone)]
pub struct StoreLimits {
    /// Most members a group may have, owner included.
    pub max_group_members: u32,
    /// Connections a pooled backend (PostgreSQL) may open.
    pub pool_size: usize,
    /// Most invitations one user may have pending, so that nobody can be flooded with them.
    pub max_pending_invitations: u32,
    /// PostgreSQL's text search configuration for message search (`simple`: no stemming;
    /// `english`, `german`, …: stemmed); SQLite does not stem.
    pub text_search_config: String,
    /// SQLite: the WAL's size past which its checkpoint restarts it from the beginning, and
    /// to which it is then truncated (under steady writes passive checkpoints alone never
    /// get to restart it, and it would grow without end).
    pub wal_limit_bytes: u64,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            max_group_members: 1000,
            pool_size: 16,
            max_pending_invitations: 100,
            text_search_config: "simple".to_owned(),
            wal_limit_bytes: 64 * 1024 * 1024,
        }
    }
}

/// An account as stored, with its password hash (never leaves the server).
#[derive(Debug, Clone)]
pub struct UserRecord {
    pub id: UserId,
    pub handle: String,
    pub password_hash: String,
    /// Suspended until then (ms since the epoch; [`BANNED`] for a ban).
    pub suspended_until: Option<i64>,
}

/// A device's push registration to record ([`Store::add_push_registration`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPushRegistration {
    /// `webhook` (the server's own push gateway setting), `webpush`, `fcm` or `apns`.
    pub provider: String,
    /// The provider's address of the device: a gateway token, a Web Push endpoint URL, an
    /// FCM or APNs device token.
    pub token: String,
    /// Web Push: the subscription's keys (base64url).
    pub p256dh: Option<String>,
    pub auth: Option<String>,
}

/// A push registration as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRegistration {
    pub id: i64,
    pub user: UserId,
    pub device: DeviceId,
    pub provider: String,
    pub token: String,
    pub p256dh: Option<String>,
    pub auth: Option<String>,
    pub created_at: i64,
}

/// A message that may become a push ([`Store::queue_pushes`]): for `user`, who has no live
/// session anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushCandidate {
    pub user: UserId,
    pub conversation: ConversationId,
    pub seq: Seq,
    pub sender: UserId,
    /// The text a push may show (cut short; the payload setting decides).
    pub preview: String,
    /// When a new job is due (ms): later messages coalesce into it until then.
    pub due_at: i64,
}

/// What a push job sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushKind {
    /// New messages `first_seq..=last_seq` (`count` of them).
    Notify,
    /// The user read the conversation elsewhere: remove the notification shown.
    Clear,
}

/// A claimed push job, with what sending it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushJob {
    pub id: i64,
    pub user: UserId,
    pub conversation: ConversationId,
    pub kind: PushKind,
    pub first_seq: Seq,
    pub last_seq: Seq,
    pub count: u64,
    pub sender: UserId,
    pub sender_handle: String,
    /// The group's title (none for a direct conversation).
    pub title: Option<String>,
    pub preview: String,
    pub attempts: u32,
    pub registrations: Vec<PushRegistration>,
}

/// How sending a job ended ([`Store::finish_push`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Sent (or nothing left to send): what it covered, up to `last_seq` and `count`
    /// messages, is done; messages that coalesced into it while it was out stay queued, due
    /// at `next_due`. `shown`: a notification of this conversation was shown to this user,
    /// so reading clears it (and a read that came while it was out queues the clear now).
    Done { last_seq: Seq, count: u64, shown: Option<(UserId, ConversationId)>, next_due: i64 },
    /// Try again at `due_at` (a provider error or a time-out).
    Retry { due_at: i64 },
}

/// What to search ([`Store::search`]): the query and its filters, newest first or by
/// relevance, a page after `cursor`.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub query: search::Query,
    pub conversation: Option<ConversationId>,
    pub sender: Option<UserId>,
    /// Only messages with attachments.
    pub has_attachment: bool,
    /// `ts >= after` and `ts < before`, ms since the epoch.
    pub after: Option<i64>,
    pub before: Option<i64>,
    pub order: SearchOrder,
    /// The `next` of the page before.
    pub cursor: Option<String>,
    pub limit: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchOrder {
    Newest,
    Relevance,
}

/// One message found, with its current text (for the snippet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchHit {
    pub conversation: ConversationId,
    pub seq: Seq,
    pub sender: UserId,
    pub ts: i64,
    pub text: String,
}

/// A page of hits; `next` pages on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPage {
    pub hits: Vec<SearchHit>,
    pub next: Option<String>,
}

/// A user's email address as on file ([`Store::email`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailAddress {
    pub email: String,
    /// The address's owner followed the signed link mailed to it.
    pub verified: bool,
    /// Digests go to it (off after its one-click unsubscribe).
    pub digests: bool,
}

/// A digest owed ([`Store::claim_digests`]): to whom, and their unread conversations (most
/// recent activity first, at most [`MAX_DIGEST_CONVERSATIONS`], none muted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestJob {
    pub user: UserId,
    pub email: String,
    pub conversations: Vec<ConversationId>,
}

/// Most conversations one digest lists.
pub const MAX_DIGEST_CONVERSATIONS: u32 = 20;

/// How a claimed digest ended ([`Store::finish_digest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestOutcome {
    /// Mailed at this time (the next is due no sooner than a period after it).
    Sent { at: i64 },
    /// Nothing to send (read first, or no address any more).
    Nothing,
    /// Try again at `due_at` (the SMTP server failed).
    Retry { due_at: i64 },
}

/// Most push registrations one user may have (`conflict` past it).
pub const MAX_PUSH_REGISTRATIONS: i64 = 20;

/// The `suspended_until` of a ban: a suspension with no end.
pub const BANNED: i64 = i64::MAX;

/// What a report names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportTarget {
    /// A message of a conversation the reporter is a member of.
    Message { conversation: ConversationId, seq: Seq },
    /// A user who shares a conversation with the reporter.
    User(UserId),
}

/// A report to file ([`Store::create_report`]).
#[derive(Debug, Clone)]
pub struct NewReport {
    /// `None`: the server flags a message (content rules, moderation webhook); only
    /// [`ReportTarget::Message`], and no membership is checked.
    pub reporter: Option<UserId>,
    pub target: ReportTarget,
    pub reason: String,
}

/// Who a bearer token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    pub user_id: UserId,
    pub device_id: DeviceId,
}

/// A client's request to append an entry.
#[derive(Debug, Clone)]
pub struct Append {
    pub conversation: ConversationId,
    pub sender: UserId,
    pub client_msg_id: String,
    pub entry: NewEntry,
}

/// A change to a group that becomes a system entry of its log. (Adding a member is
/// [`Store::add_member`]: it may make an invitation instead.)
#[derive(Debug, Clone)]
pub enum GroupChange {
    /// Removing oneself is leaving; an owner who leaves hands ownership on.
    RemoveMember {
        user: UserId,
    },
    SetRole {
        user: UserId,
        role: Role,
    },
    SetTitle {
        title: String,
    },
    /// Mutes a member until `until` (ms), or unmutes them (`None`); owner and admins, over
    /// members of a lower role.
    Mute {
        user: UserId,
        until: Option<i64>,
    },
    /// Removes a member and bans them from the group (they cannot be added or invited until
    /// unbanned, [`Store::unban`]); owner and admins, over members of a lower role.
    Ban {
        user: UserId,
    },
    /// The group's moderation settings (owner and admins).
    Settings {
        slow_mode_secs: u32,
        locked: bool,
    },
}

/// Longest a group's slow mode may be, in seconds.
pub const MAX_SLOW_MODE_SECS: u32 = 86_400;

/// A new group: its id, and the invitations made to the members named at creation who
/// share no conversation with the owner (the others are members, in its `created` entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGroup {
    pub id: ConversationId,
    pub invitations: Vec<Invitation>,
}

/// What [`Store::add_member`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added {
    /// The user shares a conversation with the actor: a member now, by this `member_added`.
    Member(Ack),
    /// They do not: invited; nothing entered the log.
    Invited(Invitation),
}

/// Which part of a log to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// Entries with `seq > after`, oldest first; `has_more` means newer ones follow.
    After(Seq),
    /// The newest entries with `seq < before`; `has_more` means older ones precede.
    Before(Seq),
    /// The newest entries; `has_more` means older ones precede.
    Latest,
}

/// A page of a log, always in ascending `seq`.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub entries: Vec<Entry>,
    pub has_more: bool,
}

/// One member's reported cursors ("up to seq N"); either may be absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorUpdate {
    pub conversation: ConversationId,
    pub user: UserId,
    pub delivered: Option<Seq>,
    pub read: Option<Seq>,
}

/// The ack of an append that was queued in order and is being committed.
pub struct PendingAck(pub oneshot::Receiver<Result<Ack>>);

impl PendingAck {
    /// Waits for the commit.
    pub async fn wait(self) -> Result<Ack> {
        match self.0.await {
            Ok(res) => res,
            Err(_) => Err(StoreError::Unavailable("store writer stopped".to_owned())),
        }
    }
}

/// An upload to record ([`Store::create_media`]); its object (and thumbnail) is stored.
#[derive(Debug, Clone)]
pub struct NewMedia {
    pub id: String,
    pub owner: UserId,
    pub sha256: String,
    pub size: u64,
    pub content_type: String,
    pub name: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub placeholder: Option<String>,
    pub thumbnail: Option<NewThumbnail>,
    /// The owner's quota: the sizes of their media rows, this one included, may not pass it.
    pub quota_bytes: u64,
}

/// A thumbnail's stored object (its size is not counted against the quota).
#[derive(Debug, Clone)]
pub struct NewThumbnail {
    pub sha256: String,
    pub size: u64,
    pub width: u32,
    pub height: u32,
}

/// An upload as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRecord {
    pub id: String,
    pub owner: UserId,
    pub sha256: String,
    pub size: u64,
    pub content_type: String,
    pub name: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub placeholder: Option<String>,
    /// The thumbnail's object and dimensions.
    pub thumbnail: Option<(String, Dimensions)>,
    pub created_at: i64,
}

impl MediaRecord {
    /// The attachment a message carries for this upload (URLs are signed later, per reader).
    pub fn attachment(&self) -> Attachment {
        Attachment {
            id: self.id.clone(),
            content_type: self.content_type.clone(),
            size: self.size,
            name: self.name.clone(),
            width: self.width,
            height: self.height,
            placeholder: self.placeholder.clone(),
            thumbnail: self.thumbnail.as_ref().map(|(_, d)| *d),
            url: None,
            thumbnail_url: None,
        }
    }
}

/// What [`Store::collect_media`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected {
    /// Media rows removed.
    pub media: u64,
    /// Objects whose rows were removed: the caller must now delete them.
    pub blobs: Vec<String>,
}

/// Keyset position in the conversation list: `(last_activity, id)` of the last row seen.
pub type ListCursor = (i64, ConversationId);

/// The durable store. Methods are create / read / update / delete, in that order.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // ---- create ----

    /// Creates an account; `Conflict` if the handle is taken: another handle has the same
    /// [`handle_key`] (equal ignoring case, or a look-alike).
    async fn create_user(&self, handle: &str, password_hash: &str) -> Result<UserId>;
    /// Registers a device with its token's hash.
    async fn create_device(&self, user: UserId, name: &str, token: TokenHash) -> Result<DeviceId>;
    /// The direct conversation of `a` and `b`, created if needed; `true` if created now.
    async fn create_direct(&self, a: UserId, b: UserId) -> Result<(ConversationId, bool)>;
    /// A new group owned by `owner`: those of `members` who share a conversation with the
    /// owner are members at once, the others are invited (within the member cap, which
    /// counts them all, and each invitee's cap of pending invitations).
    async fn create_group(
        &self,
        owner: UserId,
        title: &str,
        members: &[UserId],
    ) -> Result<NewGroup>;
    /// Queues an append behind every append submitted before it (so one session's sends keep
    /// their order) and returns at once; the [`PendingAck`] resolves once it is committed. A
    /// repeated `(sender, conversation, client_msg_id)` resolves to the original ack.
    async fn submit_append(&self, append: Append) -> Result<PendingAck>;
    /// Adds `user` to a group as `actor` (an admin): at once if they share a conversation with
    /// the actor, else as an invitation to accept.
    async fn add_member(
        &self,
        actor: UserId,
        conversation: ConversationId,
        user: UserId,
        role: Role,
    ) -> Result<Added>;
    /// Applies a group change as a system entry, checking the actor's role.
    async fn change_group(
        &self,
        actor: UserId,
        conversation: ConversationId,
        change: GroupChange,
    ) -> Result<Ack>;
    /// Lifts `user`'s ban from the group (`actor`: its owner or an admin); nothing enters the
    /// log.
    async fn unban(&self, actor: UserId, conversation: ConversationId, user: UserId) -> Result<()>;
    /// Records an upload in one transaction: `QuotaExceeded` if the owner's media sizes plus
    /// this one pass `quota_bytes`; its blob rows (object and thumbnail) are upserted as no
    /// longer orphaned.
    async fn create_media(&self, media: NewMedia) -> Result<()>;

    // ---- read ----

    async fn user_by_handle(&self, handle: &str) -> Result<Option<UserRecord>>;
    async fn user_handle(&self, user: UserId) -> Result<Option<String>>;
    /// Users with their profiles: those of `ids` that exist, in the order asked.
    async fn users(&self, ids: &[UserId]) -> Result<Vec<User>>;
    /// Users other than `user` whose handle or display name starts with `prefix`, ignoring
    /// case (`%` and `_` are literal): only those who share a conversation with `user` unless
    /// `everyone`; at most `limit`, by handle.
    async fn search_users(
        &self,
        user: UserId,
        prefix: &str,
        everyone: bool,
        limit: u32,
    ) -> Result<Vec<User>>;
    /// Everyone who shares at least one conversation with `user` (not `user`).
    async fn contacts_of(&self, user: UserId) -> Result<Vec<UserId>>;
    /// Whom `user` blocks, by id.
    async fn blocks(&self, user: UserId) -> Result<Vec<UserId>>;
    /// Everyone `user` blocks or is blocked by (who sees nothing ephemeral of `user`, and of
    /// whom `user` sees nothing).
    async fn block_relations(&self, user: UserId) -> Result<Vec<UserId>>;
    /// `user`'s devices (logins), oldest first.
    async fn devices(&self, user: UserId) -> Result<Vec<Device>>;
    /// `user`'s password hash (PHC string); `None` for an unknown user.
    async fn password_hash(&self, user: UserId) -> Result<Option<String>>;
    /// The principal a token hash belongs to, unless revoked.
    async fn authenticate(&self, token: TokenHash) -> Result<Option<Principal>>;
    /// The conversation as `user` sees it; `NotFound` if it is not a member.
    async fn conversation(
        &self,
        user: UserId,
        conversation: ConversationId,
    ) -> Result<ConversationSummary>;
    /// `user`'s conversations, most recent activity first, after `before`.
    async fn conversations(
        &self,
        user: UserId,
        before: Option<ListCursor>,
        limit: u32,
    ) -> Result<Vec<ConversationSummary>>;
    /// Every conversation `user` is a member of (for sync), with its summary.
    async fn memberships(&self, user: UserId) -> Result<Vec<ConversationSummary>>;
    /// Which of `others` share at least one conversation with `user` and have no block
    /// between them either way (who may see their presence).
    async fn share_conversation(&self, user: UserId, others: &[UserId]) -> Result<Vec<UserId>>;
    /// `user`'s role in the conversation, or `None` if not a member.
    async fn role(&self, user: UserId, conversation: ConversationId) -> Result<Option<Role>>;
    /// The conversation's members with handles, roles and cursors.
    async fn members(&self, conversation: ConversationId) -> Result<Vec<Member>>;
    /// Who is banned from the group, by user id.
    async fn bans(&self, conversation: ConversationId) -> Result<Vec<natter_proto::rest::Ban>>;
    /// The conversation's member ids (for routing).
    async fn member_ids(&self, conversation: ConversationId) -> Result<Vec<UserId>>;
    /// A page of the log, message entries with their current state.
    async fn entries(&self, conversation: ConversationId, range: Range, limit: u32)
    -> Result<Page>;
    /// `user`'s pending invitations, oldest first.
    async fn invitations(&self, user: UserId) -> Result<Vec<Invitation>>;
    async fn media(&self, id: &str) -> Result<Option<MediaRecord>>;
    /// The sum of the sizes of `user`'s media rows.
    async fn media_usage(&self, user: UserId) -> Result<u64>;
    /// Messages `user` sent that are not deleted, by conversation then seq, after `after`
    /// (for the data export); at most `limit`, each with its current state.
    async fn messages_by(
        &self,
        user: UserId,
        after: Option<(ConversationId, Seq)>,
        limit: u32,
    ) -> Result<Vec<Entry>>;
    /// `user`'s uploads by id, after `after` (for the data export); at most `limit`.
    async fn media_of(
        &self,
        user: UserId,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<MediaRecord>>;
    /// Whether `user` may read the media: its owner, or a current member of a conversation
    /// with a message attaching it. `false` for an unknown id.
    async fn media_access(&self, user: UserId, id: &str) -> Result<bool>;

    // ---- update ----

    /// Advances cursors (never backwards, clamped to `last_seq`, `read` implies `delivered`)
    /// for members; returns the receipts that changed. Non-members are skipped.
    async fn set_cursors(&self, updates: Vec<CursorUpdate>) -> Result<Vec<Receipt>>;
    /// `user` accepts their invitation to a group: a `member_added` entry (sent by them) makes
    /// them a member, if the group still has members and room.
    async fn accept_invitation(&self, user: UserId, conversation: ConversationId) -> Result<Ack>;
    /// Changes `user`'s profile (an absent field stays, an empty one is cleared; the caller
    /// has checked the values); the profile as it is now.
    async fn set_profile(&self, user: UserId, update: ProfileUpdate) -> Result<User>;
    /// Records that `device` was used at `at` (ms).
    async fn touch_device(&self, device: DeviceId, at: i64) -> Result<()>;
    /// Replaces `user`'s password hash and deletes every device of theirs but `keep`, in one
    /// transaction; the deleted devices.
    async fn set_password(&self, user: UserId, hash: &str, keep: DeviceId)
    -> Result<Vec<DeviceId>>;
    /// Deletes `user`'s account: no password, profile, devices or invitations any more, and
    /// marked deleted (memberships and messages stay); the deleted devices.
    async fn delete_user(&self, user: UserId) -> Result<Vec<DeviceId>>;
    /// Frees the handles of accounts deleted before `deleted_before` (ms); how many.
    async fn free_deleted_handles(&self, deleted_before: i64) -> Result<u64>;
    /// `blocker` blocks `blocked` (again: nothing changes): `NotFound` for an unknown or
    /// deleted user, `BadRequest` for oneself, `Conflict` once `blocker` blocks `max` users.
    async fn block(&self, blocker: UserId, blocked: UserId, max: u32) -> Result<()>;
    /// `blocker` no longer blocks `blocked` (whether it did or not).
    async fn unblock(&self, blocker: UserId, blocked: UserId) -> Result<()>;
    /// Deletes one of `user`'s devices (its token stops working); `NotFound` if it is not
    /// theirs.
    async fn revoke_device(&self, user: UserId, device: DeviceId) -> Result<()>;

    // ---- delete ----

    /// Revokes a token (logout).
    async fn delete_device(&self, token: TokenHash) -> Result<()>;
    /// `user` declines their invitation to a group: it is deleted; nobody is told.
    async fn decline_invitation(&self, user: UserId, conversation: ConversationId) -> Result<()>;
    /// In one transaction (times in ms since the epoch): deletes media rows no message
    /// attaches created before `unattached_before`; marks blobs nothing references as
    /// orphaned now; deletes blob rows orphaned at or before `orphaned_before` that nothing
    /// references still, returning their shas (the caller deletes the objects).
    async fn collect_media(
        &self,
        unattached_before: i64,
        orphaned_before: i64,
    ) -> Result<Collected>;

    // ---- push notifications ----

    /// Records a push registration of `device` (the same provider and token again moves it
    /// to this device); its id.
    async fn add_push_registration(
        &self,
        user: UserId,
        device: DeviceId,
        registration: NewPushRegistration,
    ) -> Result<i64>;
    /// `user`'s push registrations, oldest first.
    async fn push_registrations(&self, user: UserId) -> Result<Vec<PushRegistration>>;
    /// Deletes one of `user`'s registrations; `NotFound` if it is not theirs.
    async fn delete_push_registration(&self, user: UserId, id: i64) -> Result<()>;
    /// Deletes a registration the provider says is dead.
    async fn drop_push_token(&self, provider: &str, token: &str) -> Result<()>;
    /// Mutes `user`'s notifications until `until` (ms; `None` lifts it): of one conversation
    /// (`NotFound` if they are not a member), or all of them (do not disturb).
    async fn mute_notifications(
        &self,
        user: UserId,
        conversation: Option<ConversationId>,
        until: Option<i64>,
    ) -> Result<()>;
    /// Queues pushes in one transaction (now: `now`): each candidate joins its user's pending
    /// job for the conversation, or starts one due at its `due_at`; skipped when the user has
    /// no registration, is in do-not-disturb, muted the conversation, or has read it. How
    /// many jobs were made or grew.
    async fn queue_pushes(&self, candidates: Vec<PushCandidate>, now: i64) -> Result<u64>;
    /// Claims up to `limit` jobs due at `now` whose lease lapsed, for `lease_ms`.
    async fn claim_pushes(&self, now: i64, lease_ms: i64, limit: u32) -> Result<Vec<PushJob>>;
    /// Ends a claimed job's attempt.
    async fn finish_push(&self, id: i64, outcome: PushOutcome) -> Result<()>;

    // ---- search ----

    /// Messages `user` may read that match: in conversations they are a member of, from the
    /// `seq` they joined at (a member who left sees none of it; a conversation filter of
    /// theirs they are not in finds nothing). `BadRequest` for a cursor of another order.
    async fn search(&self, user: UserId, request: SearchRequest) -> Result<SearchPage>;

    // ---- email digests ----

    /// Sets (or with `None` removes) `user`'s email address. A new address is unverified
    /// and gets digests once verified; setting the same one again changes nothing.
    async fn set_email(&self, user: UserId, email: Option<String>) -> Result<()>;
    async fn email(&self, user: UserId) -> Result<Option<EmailAddress>>;
    /// Marks `email` verified (at `now`) if it is still `user`'s address; `false` if not.
    async fn verify_email(&self, user: UserId, email: &str, now: i64) -> Result<bool>;
    /// Turns digests to `email` on or off if it is still `user`'s address; `false` if not.
    async fn set_digests(&self, user: UserId, email: &str, on: bool) -> Result<bool>;
    /// Owes each of `users` with a verified address that takes digests one digest, due at
    /// `due_at` and no sooner than `period_ms` after their last; one already owed keeps its
    /// time. How many were owed now.
    async fn queue_digests(&self, users: Vec<UserId>, due_at: i64, period_ms: i64) -> Result<u64>;
    /// Claims up to `limit` digests due at `now` whose lease lapsed, for `lease_ms`, with the
    /// address and unread conversations of each (a user with neither is dropped here).
    async fn claim_digests(&self, now: i64, lease_ms: i64, limit: u32) -> Result<Vec<DigestJob>>;
    async fn finish_digest(&self, user: UserId, outcome: DigestOutcome) -> Result<()>;

    // ---- reports and server administration ----

    /// Files a report with a snapshot of what it names as it is now (the message entry with
    /// its state, or the user's profile): `NotFound` for a conversation the reporter is not
    /// in, a seq that is no live message, or a user who shares no conversation with them;
    /// `BadRequest` for reporting oneself. The new report's id.
    async fn create_report(&self, report: NewReport) -> Result<i64>;
    /// Reports, newest first, with `id < before`; only those in `status` if given.
    async fn reports(
        &self,
        status: Option<natter_proto::rest::ReportStatus>,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<natter_proto::rest::Report>>;
    /// An administrator resolves or dismisses a report (audited).
    async fn resolve_report(
        &self,
        admin: UserId,
        id: i64,
        status: natter_proto::rest::ReportStatus,
        note: Option<String>,
    ) -> Result<()>;
    /// Whether `user` is a server administrator.
    async fn is_admin(&self, user: UserId) -> Result<bool>;
    /// Grants or revokes server administration (audited; `actor` `None`: the command line or
    /// the config file).
    async fn set_admin(&self, user: UserId, admin: bool, actor: Option<UserId>) -> Result<()>;
    /// Users by id after `after`, whose handle or display name starts with `prefix` if
    /// given (deleted accounts included), with their administration facts.
    async fn admin_users(
        &self,
        prefix: Option<String>,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<natter_proto::rest::AdminUser>>;
    /// Suspends `user` until `until` ([`BANNED`]: a ban) in one transaction: marked, every
    /// device deleted (returned, so that their sessions end), audited. `NotFound` for an
    /// unknown user, `BadRequest` for oneself, `Forbidden` for an administrator.
    async fn suspend(
        &self,
        admin: UserId,
        user: UserId,
        until: i64,
        reason: String,
    ) -> Result<Vec<DeviceId>>;
    /// Lifts a suspension or ban (audited).
    async fn restore(&self, admin: UserId, user: UserId) -> Result<()>;
    /// An administrator removes a message of any conversation: a `delete` entry sent by them
    /// (audited); `NotFound` if it is no message, `Conflict` if already deleted.
    async fn remove_message(
        &self,
        admin: UserId,
        conversation: ConversationId,
        seq: Seq,
    ) -> Result<Ack>;
    /// Removes up to `limit` of `user`'s live messages as [`Store::remove_message`] does, in
    /// one transaction (audited once); how many. Called until it returns 0.
    async fn remove_messages_by(&self, admin: UserId, user: UserId, limit: u32) -> Result<u64>;
    /// The audit log, newest first, with `id < before`.
    async fn audit_log(
        &self,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<natter_proto::rest::AuditEntry>>;

    /// Flushes pending commits and stops the writer; later writes fail with `Unavailable`.
    async fn close(&self);
}
