//! Natter's wire types: what crosses a WebSocket or an HTTP body, and nothing else.
//!
//! - [`ClientFrame`] and [`ServerFrame`] are the two closed enums of the WebSocket protocol
//!   (`{"type": "...", ...}` JSON objects).
//! - [`Entry`] is one `seq` of a conversation's log, as sync, history and live delivery show it.
//! - [`ErrorCode`] is the closed set of stable, machine-readable error codes.
//! - [`rest`] holds the bodies of the REST API under `/v1/`.
//!
//! This crate does no I/O; the server, the SDK and the tests all speak through it.
//! docs/protocol.md is the prose contract for these types.

pub mod rest;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A user account's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct UserId(pub i64);

/// A conversation's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct ConversationId(pub i64);

/// A device's id: one per login, each with its own token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(transparent)]
pub struct DeviceId(pub i64);

/// A request id chosen by the client; the reply echoes it.
pub type ReqId = u64;

/// A position in one conversation's log: 1, 2, 3… with no gaps.
pub type Seq = u64;

/// The largest `seq` a request may name (`before`, `after`, cursors, targets): the stores
/// keep seqs as signed 64-bit integers. Larger values are `bad_request`.
pub const MAX_SEQ: Seq = i64::MAX as Seq;

macro_rules! display_id {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    )*};
}
display_id!(UserId, ConversationId, DeviceId);

/// The stable error codes. A client switches on these, never on the message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is well-formed JSON but its content is invalid (a bad field value).
    BadRequest,
    /// The frame or body is not valid JSON, or lacks a required field.
    MalformedFrame,
    /// The frame's `type` is not one this server knows.
    UnknownType,
    /// No valid credentials: missing, wrong or revoked token, or wrong password.
    Unauthenticated,
    /// Authenticated, but the action is not allowed to this user (for example a member
    /// removing the owner, or editing someone else's message).
    Forbidden,
    /// No such thing, or the caller may not know that it exists (a conversation the caller
    /// is not a member of is reported exactly as a missing one).
    NotFound,
    /// The request conflicts with the current state (a handle already taken, a full group).
    Conflict,
    /// A body, frame, title or other field exceeds its configured cap.
    TooLarge,
    /// Rate limited; retry later.
    TooManyRequests,
    /// A dependency (the store) is temporarily unavailable; the request may be retried and
    /// nothing was committed.
    Unavailable,
    /// An unexpected server fault; details are in the server's log, not here.
    Internal,
    /// The request (its body) did not arrive in time; the connection is closed.
    RequestTimeout,
    /// An upload's content is not of an allowed type (sniffed from its bytes), or its bytes
    /// do not match the type it claims, or an image cannot be decoded.
    UnsupportedMediaType,
    /// The user's media storage quota would be exceeded.
    QuotaExceeded,
    /// The sender is muted in this group until a time (`retry_after_ms` says how long).
    Muted,
    /// The server's content rules or its moderation webhook refused the message.
    ContentRejected,
}

impl ErrorCode {
    /// Every code (the OpenAPI document lists their statuses as each route's error answers).
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::BadRequest,
        ErrorCode::MalformedFrame,
        ErrorCode::UnknownType,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::TooLarge,
        ErrorCode::TooManyRequests,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::RequestTimeout,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::QuotaExceeded,
        ErrorCode::ContentRejected,
        ErrorCode::Muted,
    ];

    /// The HTTP status that carries this code on REST routes.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::MalformedFrame | ErrorCode::UnknownType => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::QuotaExceeded | ErrorCode::Muted => 403,
            ErrorCode::ContentRejected => 422,
        }
    }

    /// Whether a client should retry the same request later (with the same `client_msg_id`).
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Unavailable | ErrorCode::TooManyRequests | ErrorCode::RequestTimeout
        )
    }
}

/// An error as it appears on the wire (the `error` frame's fields, and REST error bodies).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// With `too_many_requests`: milliseconds to wait before retrying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody { code, message: message.into(), retry_after_ms: None }
    }
}

/// Conversation kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ConversationKind {
    /// Exactly two users; one per pair.
    Direct,
    /// Owner, admins and members, up to the configured member cap.
    Group,
}

/// A member's role in a group (members of a direct conversation are all `member`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Member,
    Admin,
    Owner,
}

/// One entry of a conversation's log.
///
/// On the wire a `message` entry's `state.body` is left out when it equals `body` (the
/// message was never edited, or it was deleted and both are empty), so each text is sent
/// once; reading an entry fills it back in, so here `state.body` is always the current text.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "wire::EntryIn")]
pub struct Entry {
    pub conversation: ConversationId,
    pub seq: Seq,
    /// A server-chosen unique id (UUIDv7).
    pub id: String,
    /// Who wrote it (for system entries: who caused it).
    pub sender: UserId,
    /// Server time of the commit, in milliseconds since the Unix epoch.
    pub ts: i64,
    /// The sender's idempotency key, for entries that clients sent.
    pub client_msg_id: Option<String>,
    pub body: EntryBody,
    /// For `message` entries read from the store (sync, history): the message's current state
    /// after every later edit, deletion and reaction. Live entries carry none: the edits that
    /// follow arrive as entries of their own.
    pub state: Option<MessageState>,
}

impl Serialize for Entry {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = match &self.body {
            EntryBody::Message { body, .. } => Some(body.as_str()),
            _ => None,
        };
        let state = self.state.as_ref().map(|s| wire::StateOut {
            body: (text != Some(s.body.as_str())).then_some(s.body.as_str()),
            edited_seq: s.edited_seq,
            deleted: s.deleted,
            reactions: &s.reactions,
        });
        wire::EntryOut {
            conversation: self.conversation,
            seq: self.seq,
            id: &self.id,
            sender: self.sender,
            ts: self.ts,
            client_msg_id: self.client_msg_id.as_deref(),
            body: &self.body,
            state,
        }
        .serialize(serializer)
    }
}

/// [`Entry`] as it crosses the wire: `state.body` only when it differs from `body`.
mod wire {
    use serde::{Deserialize, Serialize};

    use super::{ConversationId, EntryBody, MessageState, ReactionSummary, Seq, UserId, is_false};

    #[derive(Serialize)]
    pub(super) struct EntryOut<'a> {
        pub(super) conversation: ConversationId,
        pub(super) seq: Seq,
        pub(super) id: &'a str,
        pub(super) sender: UserId,
        pub(super) ts: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub(super) client_msg_id: Option<&'a str>,
        #[serde(flatten)]
        pub(super) body: &'a EntryBody,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub(super) state: Option<StateOut<'a>>,
    }

    #[derive(Serialize)]
    pub(super) struct StateOut<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        pub(super) body: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub(super) edited_seq: Option<Seq>,
        #[serde(skip_serializing_if = "is_false")]
        pub(super) deleted: bool,
        #[serde(skip_serializing_if = "<[ReactionSummary]>::is_empty")]
        pub(super) reactions: &'a [ReactionSummary],
    }

    /// One entry of a conversation's log: its place (`conversation`, `seq`), who wrote it
    /// and when, and what it says (`kind` and its fields). `state`: for `message` entries
    /// read from the store (sync, history), the message's current state after every later
    /// edit, deletion and reaction (`state.body` only when it differs from `body`).
    #[derive(Deserialize)]
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Entry))]
    pub(super) struct EntryIn {
        conversation: ConversationId,
        seq: Seq,
        id: String,
        sender: UserId,
        ts: i64,
        #[serde(default)]
        client_msg_id: Option<String>,
        #[serde(flatten)]
        body: EntryBody,
        #[serde(default)]
        state: Option<StateIn>,
    }

    /// A message's current state, as history and sync show it.
    #[derive(Deserialize)]
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = EntryState))]
    pub(super) struct StateIn {
        #[serde(default)]
        body: Option<String>,
        #[serde(default)]
        edited_seq: Option<Seq>,
        #[serde(default)]
        deleted: bool,
        #[serde(default)]
        reactions: Vec<ReactionSummary>,
    }

    impl From<EntryIn> for super::Entry {
        fn from(e: EntryIn) -> super::Entry {
            let state = e.state.map(|s| MessageState {
                body: s.body.unwrap_or_else(|| match &e.body {
                    EntryBody::Message { body, .. } => body.clone(),
                    _ => String::new(),
                }),
                edited_seq: s.edited_seq,
                deleted: s.deleted,
                reactions: s.reactions,
            });
            super::Entry {
                conversation: e.conversation,
                seq: e.seq,
                id: e.id,
                sender: e.sender,
                ts: e.ts,
                client_msg_id: e.client_msg_id,
                body: e.body,
                state,
            }
        }
    }
}

/// The schema of an [`Entry`] is its wire form's.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Entry {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <wire::EntryIn as utoipa::PartialSchema>::schema()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Entry {
    fn name() -> std::borrow::Cow<'static, str> {
        <wire::EntryIn as utoipa::ToSchema>::name()
    }
    fn schemas(
        schemas: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>,
    ) {
        <wire::EntryIn as utoipa::ToSchema>::schemas(schemas);
    }
}

/// A committed entry as nodes handle it, never sent to clients (they get the [`Entry`]):
/// what the store's commit feed yields and what the bus between nodes carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Committed {
    pub entry: Entry,
    /// The `seq` of the conversation's latest membership change as of this entry (itself, for
    /// `created`, `member_added` and `member_removed`). A node routing the entry reloads a
    /// member list older than this, so another node's membership change is never routed
    /// around.
    pub members_seq: Seq,
}

/// What a log entry says. Entries that change another entry name it by its `target` seq.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EntryBody {
    /// A message, optionally replying to an earlier message of the same conversation.
    Message {
        body: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<Seq>,
        /// Uploaded media, in the order the sender attached them (see [`Attachment`]).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attachments: Vec<Attachment>,
        /// Members the message mentions, ascending: the ids the sender named and the members
        /// whose `@handle` the body has, resolved when it was sent.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        mentions: Vec<UserId>,
    },
    /// The sender replaced the text of their own message `target`.
    Edit { target: Seq, body: String },
    /// The sender deleted their own message `target` (it becomes a tombstone).
    Delete { target: Seq },
    /// The sender added (or, with `remove`, took back) a reaction to message `target`.
    Reaction {
        target: Seq,
        emoji: String,
        #[serde(default, skip_serializing_if = "is_false")]
        remove: bool,
    },
    /// The conversation was created with these members (always `seq` 1).
    Created {
        conversation_kind: ConversationKind,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
        members: Vec<UserId>,
    },
    /// `user` was added to the group by the sender.
    MemberAdded { user: UserId, role: Role },
    /// `user` was removed from the group by the sender (when `user` is the sender: they left);
    /// with `banned`, they were banned too and cannot be added again until unbanned.
    MemberRemoved {
        user: UserId,
        #[serde(default, skip_serializing_if = "is_false")]
        banned: bool,
    },
    /// `user` was muted by the sender until `until` (ms since the epoch), or unmuted (no
    /// `until`): a muted member's messages, edits and reactions are refused (`muted`).
    MemberMuted {
        user: UserId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<i64>,
    },
    /// The group's moderation settings, as the sender set them: in slow mode a member
    /// (not an admin) sends at most one message per `slow_mode_secs`; a locked group takes
    /// messages from its owner and admins only (an announcement channel).
    GroupSettings {
        #[serde(default, skip_serializing_if = "is_zero")]
        slow_mode_secs: u32,
        #[serde(default, skip_serializing_if = "is_false")]
        locked: bool,
    },
    /// `user`'s role was changed by the sender.
    RoleChanged { user: UserId, role: Role },
    /// The group's title was changed by the sender.
    TitleChanged { title: String },
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl EntryBody {
    /// A text message that replies to nothing and carries no attachments.
    pub fn text(body: impl Into<String>) -> EntryBody {
        EntryBody::Message {
            body: body.into(),
            reply_to: None,
            attachments: Vec::new(),
            mentions: Vec::new(),
        }
    }

    /// The attachments of a message entry (none for other kinds).
    pub fn attachments(&self) -> &[Attachment] {
        match self {
            EntryBody::Message { attachments, .. } => attachments,
            _ => &[],
        }
    }

    /// The attachments of a message entry, to fill in their URLs.
    pub fn attachments_mut(&mut self) -> &mut [Attachment] {
        match self {
            EntryBody::Message { attachments, .. } => attachments,
            _ => &mut [],
        }
    }

    /// The message this entry changes, for edits, deletions and reactions.
    pub fn target(&self) -> Option<Seq> {
        match self {
            EntryBody::Edit { target, .. }
            | EntryBody::Delete { target }
            | EntryBody::Reaction { target, .. } => Some(*target),
            _ => None,
        }
    }
}

/// One uploaded file attached to a message, as the entry carries it. Everything but the URLs
/// is fixed when the message is committed (from the upload's record); `url` and
/// `thumbnail_url` are signed for the reader each time the entry is sent, and never stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Attachment {
    /// The media id (`POST /v1/media`).
    pub id: String,
    /// The type sniffed from the bytes on upload.
    pub content_type: String,
    /// Bytes.
    pub size: u64,
    /// The file name the uploader gave, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Pixel dimensions, for images (as displayed: after the EXIF orientation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// A BlurHash of the image, to paint before the thumbnail arrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placeholder: Option<String>,
    /// The thumbnail's pixel dimensions, when one was made (images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail: Option<Dimensions>,
    /// A download URL signed for the reader, expiring (see docs/protocol.md, "Media").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The thumbnail's signed URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail_url: Option<String>,
}

/// Width and height in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Dimensions {
    pub width: u32,
    pub height: u32,
}

/// The current state of a message, as history and sync show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MessageState {
    /// The current text: the last edit's, or empty for a deleted message. Sent only when it
    /// differs from the entry's `body` (see [`Entry`]).
    pub body: String,
    /// `seq` of the last edit, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_seq: Option<Seq>,
    /// Whether the message was deleted (a tombstone).
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleted: bool,
    /// Reactions by emoji, each with the users who gave it (in the order they reacted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<ReactionSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReactionSummary {
    pub emoji: String,
    pub users: Vec<UserId>,
}

/// What a client asks to append to a conversation's log (REST body of
/// `POST /v1/conversations/{id}/entries`, and the WebSocket `send`/`edit`/`delete`/`react`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NewEntry {
    Message {
        body: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<Seq>,
        /// Media ids of the sender's own uploads (`POST /v1/media`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attachments: Vec<String>,
        /// Members to mention besides those whose `@handle` the body has (non-members are
        /// dropped).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        mentions: Vec<UserId>,
    },
    Edit {
        target: Seq,
        body: String,
    },
    Delete {
        target: Seq,
    },
    Reaction {
        target: Seq,
        emoji: String,
        #[serde(default)]
        remove: bool,
    },
}

impl NewEntry {
    /// A text message that replies to nothing and carries no attachments.
    pub fn text(body: impl Into<String>) -> NewEntry {
        NewEntry::Message {
            body: body.into(),
            reply_to: None,
            attachments: Vec::new(),
            mentions: Vec::new(),
        }
    }
}

/// Stage one of delivery: the entry is durably committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Ack {
    pub conversation: ConversationId,
    pub seq: Seq,
    /// The entry's id.
    pub id: String,
    /// Server commit time, ms since the Unix epoch.
    pub ts: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
}

/// A conversation as one member sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConversationSummary {
    pub id: ConversationId,
    pub kind: ConversationKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The caller's role.
    pub role: Role,
    pub last_seq: Seq,
    /// Time of the last entry, ms since the Unix epoch.
    pub last_activity: i64,
    pub delivered_seq: Seq,
    pub read_seq: Seq,
    /// Entries after `read_seq` written by others.
    pub unread: u64,
    /// The other member of a direct conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<rest::User>,
    /// The newest message as it reads now, for a conversation list; none before the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message: Option<MessagePreview>,
    /// A group in slow mode: members send at most one message per this many seconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub slow_mode_secs: u32,
    /// A locked group: only its owner and admins send messages.
    #[serde(default, skip_serializing_if = "is_false")]
    pub locked: bool,
    /// The caller is muted here until then (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub muted_until: Option<i64>,
}

/// The newest message of a conversation, cut down for a list: the text as it reads after
/// edits (empty once deleted), at most [`PREVIEW_CHARS`] characters, and the attachments'
/// content types.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MessagePreview {
    pub seq: Seq,
    pub sender: UserId,
    /// Time of the message, ms since the Unix epoch.
    pub ts: i64,
    pub text: String,
    /// The text was longer than [`PREVIEW_CHARS`].
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub edited: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleted: bool,
    /// The content type of each attachment, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<String>,
}

/// Characters of text a [`MessagePreview`] keeps.
pub const PREVIEW_CHARS: usize = 160;

impl MessagePreview {
    /// The preview of a message whose current text is `text` and whose log entry is `body`.
    pub fn new(
        seq: Seq,
        sender: UserId,
        ts: i64,
        text: &str,
        edited: bool,
        deleted: bool,
        body: &EntryBody,
    ) -> MessagePreview {
        let (cut, truncated) = match text.char_indices().nth(PREVIEW_CHARS) {
            Some((at, _)) => (&text[..at], true),
            None => (text, false),
        };
        let attachments = if deleted {
            Vec::new()
        } else {
            body.attachments().iter().map(|a| a.content_type.clone()).collect()
        };
        MessagePreview {
            seq,
            sender,
            ts,
            text: cut.to_owned(),
            truncated,
            edited,
            deleted,
            attachments,
        }
    }
}

/// An invitation to join a group: what adding someone who shares no conversation with the
/// adder makes instead of a member. It stays pending until the invitee accepts it (and
/// becomes a member) or declines it; until then they are not a member in any way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Invitation {
    /// The group.
    pub conversation: ConversationId,
    /// The group's title, as it is now.
    pub title: String,
    /// Who is invited.
    pub user: UserId,
    /// Who invited them.
    pub inviter: UserId,
    /// The inviter's handle (the invitee may have no other way to learn it).
    pub inviter_handle: String,
    /// The role the invitee gets on accepting (`member` or `admin`).
    pub role: Role,
    /// When the invitation was made, ms since the Unix epoch.
    pub invited_at: i64,
}

/// A user's availability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Online,
    Away,
    Offline,
}

/// One user's presence as a watcher sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Presence {
    pub user: UserId,
    pub status: Status,
    /// When the user was last seen online (ms since the Unix epoch), if ever on this server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<i64>,
}

/// One member's cursors, as receipts carry them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Receipt {
    pub conversation: ConversationId,
    pub user: UserId,
    pub delivered_seq: Seq,
    pub read_seq: Seq,
}

/// One conversation's part of a `sync` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SyncConversation {
    pub conversation: ConversationSummary,
    /// Entries after the client's cursor, in `seq` order, at most the sync limit (fewer when
    /// the reply's byte budget ran out).
    pub entries: Vec<Entry>,
    /// More entries follow: sync again with the last `seq` of `entries` as the cursor.
    pub has_more: bool,
}

/// Frames a client sends over the WebSocket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Authenticate (when the upgrade carried no `Authorization` header). Must be first.
    Auth { token: String },
    /// Append a message.
    Send {
        req_id: ReqId,
        conversation: ConversationId,
        client_msg_id: String,
        body: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<Seq>,
        /// Media ids of the sender's own uploads.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attachments: Vec<String>,
        /// Members to mention besides those whose `@handle` the body has.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        mentions: Vec<UserId>,
    },
    /// Replace the text of one of the caller's messages.
    Edit {
        req_id: ReqId,
        conversation: ConversationId,
        client_msg_id: String,
        target: Seq,
        body: String,
    },
    /// Delete one of the caller's messages.
    Delete { req_id: ReqId, conversation: ConversationId, client_msg_id: String, target: Seq },
    /// Add or remove a reaction to a message.
    React {
        req_id: ReqId,
        conversation: ConversationId,
        client_msg_id: String,
        target: Seq,
        emoji: String,
        #[serde(default)]
        remove: bool,
    },
    /// "I have received everything up to `seq`."
    Delivered {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req_id: Option<ReqId>,
        conversation: ConversationId,
        seq: Seq,
    },
    /// "I have read everything up to `seq`" (implies delivered).
    Read {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req_id: Option<ReqId>,
        conversation: ConversationId,
        seq: Seq,
    },
    /// Catch up: the last seen `seq` per conversation; unlisted conversations are new to the
    /// client. Starts the live stream for every conversation whose reply has no `has_more`.
    Sync {
        req_id: ReqId,
        #[serde(default, deserialize_with = "cursor_map")]
        /// Keyed by conversation id (as JSON object keys are, in decimal).
        #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, u64>))]
        cursors: BTreeMap<ConversationId, Seq>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// A page of one conversation's log.
    History {
        req_id: ReqId,
        conversation: ConversationId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<Seq>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<Seq>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// Keep-alive; answered by `pong`.
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req_id: Option<ReqId>,
    },
    /// "I am typing in this conversation" (or, with `typing: false`, "I stopped"). Never
    /// stored; forwarded, throttled, to the other members' live sessions.
    Typing {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req_id: Option<ReqId>,
        conversation: ConversationId,
        typing: bool,
    },
    /// Replace this session's presence subscriptions with `users` (at most the configured
    /// cap). Only users who share a conversation with the caller can be watched.
    SubscribePresence { req_id: ReqId, users: Vec<UserId> },
    /// Set this session's own status (`online` or `away`; a user is offline when no
    /// session is alive).
    SetStatus {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req_id: Option<ReqId>,
        status: Status,
    },
    /// Any `type` this server does not know (answered with `unknown_type`).
    #[serde(other)]
    Unknown,
}

impl ClientFrame {
    /// The request id the reply must echo, if the frame carries one.
    pub fn req_id(&self) -> Option<ReqId> {
        match self {
            ClientFrame::Send { req_id, .. }
            | ClientFrame::Edit { req_id, .. }
            | ClientFrame::Delete { req_id, .. }
            | ClientFrame::React { req_id, .. }
            | ClientFrame::Sync { req_id, .. }
            | ClientFrame::History { req_id, .. }
            | ClientFrame::SubscribePresence { req_id, .. } => Some(*req_id),
            ClientFrame::Delivered { req_id, .. }
            | ClientFrame::Read { req_id, .. }
            | ClientFrame::Ping { req_id }
            | ClientFrame::Typing { req_id, .. }
            | ClientFrame::SetStatus { req_id, .. } => *req_id,
            ClientFrame::Auth { .. } | ClientFrame::Unknown => None,
        }
    }

    /// Parses one text frame. On failure, returns the error code and the `req_id` if one
    /// could be read, so that the error can still be matched to the request: not JSON, a
    /// missing field or a wrong type is `malformed_frame`; a number out of its field's range
    /// is `bad_request` (see [`from_json_value`]).
    pub fn parse(text: &str) -> Result<ClientFrame, (Option<ReqId>, ErrorBody)> {
        match serde_json::from_str::<ClientFrame>(text) {
            Ok(ClientFrame::Unknown) => Err((
                peek_req_id(text),
                ErrorBody::new(ErrorCode::UnknownType, "unknown frame type"),
            )),
            Ok(frame) => Ok(frame),
            Err(err) => {
                let error = match serde_json::from_str::<serde_json::Value>(text) {
                    Ok(value) if err.is_data() => json_error::<ClientFrame>(value, &err),
                    _ => {
                        ErrorBody::new(ErrorCode::MalformedFrame, format!("malformed frame: {err}"))
                    }
                };
                Err((peek_req_id(text), error))
            }
        }
    }
}

/// Reads a request body (or frame) already parsed as JSON. A value of the wrong shape (a
/// missing field, a string for a number) is `malformed_frame`; the right shape with a number
/// out of its field's range (negative, beyond the integer type, not an integer) is
/// `bad_request`, as the same value is in a query string, so one bad value gets one code on
/// REST and on the WebSocket.
pub fn from_json_value<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
) -> Result<T, ErrorBody> {
    match T::deserialize(&value) {
        Ok(v) => Ok(v),
        Err(err) => Err(json_error::<T>(value, &err)),
    }
}

/// The error for JSON `value` that failed to read as `T` with `err`: `bad_request` if only a
/// number's value is wrong (it reads once every number is 0), else `malformed_frame`.
fn json_error<T: serde::de::DeserializeOwned>(
    mut value: serde_json::Value,
    err: &serde_json::Error,
) -> ErrorBody {
    if zero_numbers(&mut value) && T::deserialize(&value).is_ok() {
        return ErrorBody::new(ErrorCode::BadRequest, format!("a number is out of range: {err}"));
    }
    ErrorBody::new(ErrorCode::MalformedFrame, format!("malformed frame: {err}"))
}

/// Replaces every number in `value` with 0, and every object key that is an integer (a
/// conversation id in a cursor map) with `"0"`. Returns whether anything was replaced.
fn zero_numbers(value: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::Number(_) => {
            *value = Value::from(0);
            true
        }
        Value::Array(items) => items.iter_mut().fold(false, |any, v| zero_numbers(v) | any),
        Value::Object(map) => {
            let mut any = false;
            let old = std::mem::take(map);
            for (key, mut v) in old {
                any |= zero_numbers(&mut v);
                let digits = key.strip_prefix('-').unwrap_or(&key);
                let numeric = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
                if numeric && key != "0" {
                    any = true;
                    map.insert("0".to_owned(), v);
                } else {
                    map.insert(key, v);
                }
            }
            any
        }
        _ => false,
    }
}

/// Reads a `{"<conversation id>": seq}` map. JSON object keys are strings, and serde's
/// buffering of internally tagged enums does not turn them back into integers by itself.
pub fn cursor_map<'de, D>(de: D) -> Result<BTreeMap<ConversationId, Seq>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let raw = BTreeMap::<String, Seq>::deserialize(de)?;
    raw.into_iter()
        .map(|(k, v)| match k.parse::<i64>() {
            Ok(id) => Ok((ConversationId(id), v)),
            Err(_) => Err(serde::de::Error::custom(format!("bad conversation id {k:?}"))),
        })
        .collect()
}

/// Encodes cursors as `conv:seq,conv:seq`: the SSE event id and the `cursors` query parameter.
pub fn encode_cursors(cursors: &BTreeMap<ConversationId, Seq>) -> String {
    let parts: Vec<String> = cursors.iter().map(|(c, s)| format!("{c}:{s}")).collect();
    parts.join(",")
}

/// Parses what [`encode_cursors`] writes; `None` if it is not `conv:seq` pairs.
pub fn parse_cursors(text: &str) -> Option<BTreeMap<ConversationId, Seq>> {
    text.split(',')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (c, s) = part.split_once(':')?;
            Some((ConversationId(c.trim().parse().ok()?), s.trim().parse().ok()?))
        })
        .collect()
}

fn peek_req_id(text: &str) -> Option<ReqId> {
    #[derive(Deserialize)]
    struct Peek {
        req_id: Option<ReqId>,
    }
    serde_json::from_str::<Peek>(text).ok().and_then(|p| p.req_id)
}

/// Frames the server sends over the WebSocket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The session is authenticated; requests may follow.
    Ready {
        user_id: UserId,
        device_id: DeviceId,
        /// This session's id (HTTP streams name it to subscribe to presence).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session_id: Option<u64>,
    },
    /// Stage one: the entry is committed (also the reply to a retried send).
    Ack {
        req_id: ReqId,
        #[serde(flatten)]
        ack: Ack,
    },
    /// A committed entry of one of the caller's conversations, live.
    Entry { entry: Entry },
    /// A member's cursors moved (stage two and three of delivery: delivered, read).
    Receipt {
        #[serde(flatten)]
        receipt: Receipt,
    },
    /// The reply to `sync`: conversations with entries the client has not seen. `more`: the
    /// reply reached its byte or conversation budget before everything (some conversation has
    /// `has_more`, or was not reached): sync again with the updated cursors.
    Synced {
        req_id: ReqId,
        conversations: Vec<SyncConversation>,
        #[serde(default, skip_serializing_if = "is_false")]
        more: bool,
    },
    /// The reply to `history`.
    History { req_id: ReqId, conversation: ConversationId, entries: Vec<Entry>, has_more: bool },
    /// The reply to a request that returns nothing else (cursors, typing, status).
    Ok { req_id: ReqId },
    /// A member started or stopped typing (ephemeral; `typing: true` lapses by itself after
    /// `ttl_ms` unless refreshed).
    Typing {
        conversation: ConversationId,
        user: UserId,
        typing: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_ms: Option<u64>,
    },
    /// The reply to `subscribe_presence`: the watched users' current presence, and the ids
    /// that were refused (no shared conversation, unknown, or over the cap).
    PresenceSubscribed { req_id: ReqId, users: Vec<Presence>, denied: Vec<UserId> },
    /// Presence changes of watched users, batched (at most one frame per session per window).
    Presence { users: Vec<Presence> },
    /// The user was invited to a group (sent to their sessions when the invitation is made;
    /// `GET /v1/invitations` lists the pending ones).
    Invitation { invitation: Invitation },
    /// A user's profile changed: sent to their own sessions and to those of everyone who
    /// shares a conversation with them.
    Profile { user: rest::User },
    /// The user's block list changed (on another device, or this one): whom they block now,
    /// by id. Sent to the user's own sessions only; clients hide these users' messages in
    /// the groups they share.
    Blocks { blocked: Vec<UserId> },
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req_id: Option<ReqId>,
    },
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req_id: Option<ReqId>,
        #[serde(flatten)]
        error: ErrorBody,
    },
}

impl ServerFrame {
    /// The JSON text of this frame.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialize")
    }
}

/// WebSocket close codes the server uses (besides the standard ones: 1000 normal, 1009 a
/// frame over the size cap, 1012 server restarting).
pub mod close {
    /// The server is restarting (RFC 6455's "Service Restart"): reconnect, and resume with
    /// `sync`, after a moment (through a balancer this reaches another node).
    pub const SERVICE_RESTART: u16 = 1012;
    /// A WebSocket protocol violation: reserved bits or opcodes, a fragmented or oversized
    /// control frame, an unmasked client frame, a bad close frame (RFC 6455 §7.4.1).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame (or a close reason) that is not valid UTF-8 (RFC 6455 §7.4.1).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// The first frame was not a valid `auth`, or it came too late.
    pub const UNAUTHENTICATED: u16 = 4001;
    /// The session's outbound queue filled up: reconnect and `sync`.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// No frame (not even a pong) for longer than the idle timeout.
    pub const IDLE: u16 = 4009;
    /// The user already has `max_sessions_per_user` sessions on this node (HTTP's 429).
    pub const TOO_MANY_SESSIONS: u16 = 4029;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_send_and_reports_unknown_and_malformed() {
        let f = ClientFrame::parse(
            r#"{"type":"send","req_id":7,"conversation":3,"client_msg_id":"a","body":"hi"}"#,
        )
        .unwrap();
        assert!(matches!(f, ClientFrame::Send { req_id: 7, .. }));

        let (req_id, err) = ClientFrame::parse(r#"{"type":"fly","req_id":9}"#).unwrap_err();
        assert_eq!((req_id, err.code), (Some(9), ErrorCode::UnknownType));

        let (req_id, err) = ClientFrame::parse(r#"{"type":"send","req_id":4}"#).unwrap_err();
        assert_eq!((req_id, err.code), (Some(4), ErrorCode::MalformedFrame));

        let f =
            ClientFrame::parse(r#"{"type":"sync","req_id":1,"cursors":{"12":5,"3":0}}"#).unwrap();
        let ClientFrame::Sync { cursors, .. } = f else { panic!("not a sync: {f:?}") };
        assert_eq!(
            cursors.into_iter().collect::<Vec<_>>(),
            vec![(ConversationId(3), 0), (ConversationId(12), 5)]
        );
        let (req_id, err) =
            ClientFrame::parse(r#"{"type":"sync","req_id":2,"cursors":{"x":5}}"#).unwrap_err();
        assert_eq!((req_id, err.code), (Some(2), ErrorCode::MalformedFrame));

        let (req_id, err) = ClientFrame::parse("{not json").unwrap_err();
        assert_eq!((req_id, err.code), (None, ErrorCode::MalformedFrame));
    }

    #[test]
    fn out_of_range_numbers_are_bad_requests_and_wrong_shapes_malformed() {
        let code = |text: &str| ClientFrame::parse(text).map(|_| ()).map_err(|(r, e)| (r, e.code));
        let bad = Err((Some(3), ErrorCode::BadRequest));
        let malformed = Err((Some(3), ErrorCode::MalformedFrame));
        // A seq beyond u64, a negative one, a fraction, a limit beyond u32, an id beyond i64,
        // a cursor map key beyond i64.
        for text in [
            r#"{"type":"history","req_id":3,"conversation":1,"after":18446744073709551616}"#,
            r#"{"type":"history","req_id":3,"conversation":1,"before":-1}"#,
            r#"{"type":"history","req_id":3,"conversation":1,"after":1.5}"#,
            r#"{"type":"history","req_id":3,"conversation":1,"limit":4294967296}"#,
            r#"{"type":"read","req_id":3,"conversation":9223372036854775808,"seq":1}"#,
            r#"{"type":"sync","req_id":3,"cursors":{"1":-4}}"#,
            r#"{"type":"sync","req_id":3,"cursors":{"99999999999999999999":4}}"#,
        ] {
            assert_eq!(code(text), bad, "{text}");
        }
        for text in [
            r#"{"type":"history","req_id":3,"conversation":1,"after":"7"}"#,
            r#"{"type":"history","req_id":3,"conversation":"x"}"#,
            r#"{"type":"send","req_id":3,"conversation":1,"client_msg_id":"a","body":5}"#,
            r#"{"type":"sync","req_id":3,"cursors":{"x":5}}"#,
        ] {
            assert_eq!(code(text), malformed, "{text}");
        }
        // u64::MAX is a u64: its range is the handlers' to check (MAX_SEQ).
        let text = r#"{"type":"history","req_id":3,"conversation":1,"after":18446744073709551615}"#;
        assert_eq!(code(text), Ok(()));
        let body = serde_json::json!({"cursors": {"1": -1}});
        let err = from_json_value::<rest::SyncRequest>(body).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        let body = serde_json::json!({"cursors": [1]});
        let err = from_json_value::<rest::SyncRequest>(body).unwrap_err();
        assert_eq!(err.code, ErrorCode::MalformedFrame);
    }

    #[test]
    fn a_message_state_carries_its_text_only_when_it_differs() {
        let entry = |body: &str, state: &str, edited_seq| Entry {
            conversation: ConversationId(1),
            seq: 2,
            id: "x".into(),
            sender: UserId(3),
            ts: 4,
            client_msg_id: None,
            body: EntryBody::Message {
                body: body.into(),
                reply_to: None,
                attachments: Vec::new(),
                mentions: Vec::new(),
            },
            state: Some(MessageState {
                body: state.into(),
                edited_seq,
                deleted: false,
                reactions: Vec::new(),
            }),
        };
        let plain = entry("same text", "same text", None);
        let json = serde_json::to_string(&plain).unwrap();
        assert_eq!(json.matches("same text").count(), 1, "{json}");
        assert!(json.contains(r#""state":{}"#), "{json}");
        assert_eq!(serde_json::from_str::<Entry>(&json).unwrap(), plain);
        let edited = entry("first", "second", Some(5));
        let json = serde_json::to_string(&edited).unwrap();
        assert!(json.contains(r#""state":{"body":"second","edited_seq":5}"#), "{json}");
        assert_eq!(serde_json::from_str::<Entry>(&json).unwrap(), edited);
    }

    #[test]
    fn cursors_round_trip() {
        let map: BTreeMap<_, _> = [(ConversationId(3), 7), (ConversationId(12), 0)].into();
        assert_eq!(encode_cursors(&map), "3:7,12:0");
        assert_eq!(parse_cursors("3:7,12:0"), Some(map));
        assert_eq!(parse_cursors(""), Some(BTreeMap::new()));
        assert_eq!(parse_cursors("3-7"), None);
        assert_eq!(parse_cursors("x:1"), None);
    }

    #[test]
    fn all_error_codes_are_listed_once() {
        // A new code fails to compile here until it is given a place in `ALL`.
        let index = |code: ErrorCode| match code {
            ErrorCode::BadRequest => 0,
            ErrorCode::MalformedFrame => 1,
            ErrorCode::UnknownType => 2,
            ErrorCode::Unauthenticated => 3,
            ErrorCode::Forbidden => 4,
            ErrorCode::NotFound => 5,
            ErrorCode::Conflict => 6,
            ErrorCode::TooLarge => 7,
            ErrorCode::TooManyRequests => 8,
            ErrorCode::Unavailable => 9,
            ErrorCode::Internal => 10,
            ErrorCode::RequestTimeout => 11,
            ErrorCode::UnsupportedMediaType => 12,
            ErrorCode::QuotaExceeded => 13,
            ErrorCode::ContentRejected => 14,
            ErrorCode::Muted => 15,
        };
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(index(*code), i, "{code:?}");
        }
    }

    #[test]
    fn entry_round_trips_with_flattened_kind() {
        let e = Entry {
            conversation: ConversationId(1),
            seq: 2,
            id: "x".into(),
            sender: UserId(3),
            ts: 4,
            client_msg_id: Some("c".into()),
            body: EntryBody::Reaction { target: 1, emoji: "+1".into(), remove: false },
            state: None,
        };
        let json = serde_json::to_string(&ServerFrame::Entry { entry: e.clone() }).unwrap();
        assert!(json.contains(r#""kind":"reaction""#), "{json}");
        let back: ServerFrame = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ServerFrame::Entry { entry: e });
    }

    #[test]
    fn invitation_frames_and_add_answers_tell_invitations_from_acks() {
        let invitation = Invitation {
            conversation: ConversationId(5),
            title: "team".into(),
            user: UserId(2),
            inviter: UserId(1),
            inviter_handle: "alice".into(),
            role: Role::Member,
            invited_at: 7,
        };
        let frame = ServerFrame::Invitation { invitation: invitation.clone() };
        let json = frame.to_json();
        assert!(
            json.starts_with(r#"{"type":"invitation","invitation":{"conversation":5,"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<ServerFrame>(&json).unwrap(), frame);

        use rest::AddedMember;
        let invited = serde_json::to_string(&invitation).unwrap();
        assert_eq!(
            serde_json::from_str::<AddedMember>(&invited).unwrap(),
            AddedMember::Invited(invitation)
        );
        let ack = Ack {
            conversation: ConversationId(5),
            seq: 2,
            id: "e".into(),
            ts: 9,
            client_msg_id: None,
        };
        let added = serde_json::to_string(&ack).unwrap();
        assert_eq!(serde_json::from_str::<AddedMember>(&added).unwrap(), AddedMember::Member(ack));
    }
}
