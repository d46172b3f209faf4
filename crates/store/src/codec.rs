//! What both backends store the same way: role, conversation-kind and entry-kind names, commit timestamps, and
//! the ack and feed entry of a freshly appended log entry.

use std::time::{SystemTime, UNIX_EPOCH};

use natter_proto::{
    Ack, Committed, ConversationId, ConversationKind, Entry, EntryBody, Role, Seq, UserId,
};

/// The `LIKE` pattern of a case-insensitive prefix search: `prefix` lower-cased, with `\`,
/// `%` and `_` escaped (by `\`), then `%`.
pub(crate) fn prefix_pattern(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 1);
    for ch in prefix.to_lowercase().chars() {
        if matches!(ch, '\\' | '%' | '_') {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('%');
    out
}

/// The lower-case copy of a display name that searches compare with.
pub(crate) fn display_key(name: &str) -> String {
    name.to_lowercase()
}

/// Commit time: milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub(crate) fn role_str(role: Role) -> &'static str {
    match role {
        Role::Member => "member",
        Role::Admin => "admin",
        Role::Owner => "owner",
    }
}

pub(crate) fn parse_role(s: &str) -> Role {
    match s {
        "owner" => Role::Owner,
        "admin" => Role::Admin,
        _ => Role::Member,
    }
}

/// The conversations' `kind` column.
pub(crate) fn conversation_kind_str(kind: ConversationKind) -> &'static str {
    match kind {
        ConversationKind::Direct => "direct",
        ConversationKind::Group => "group",
    }
}

pub(crate) fn parse_conversation_kind(s: &str) -> ConversationKind {
    if s == "direct" { ConversationKind::Direct } else { ConversationKind::Group }
}

/// The entries' `kind` column: the entry's tag, stored beside its JSON for queries.
pub(crate) fn kind_str(body: &EntryBody) -> &'static str {
    match body {
        EntryBody::Message { .. } => "message",
        EntryBody::Edit { .. } => "edit",
        EntryBody::Delete { .. } => "delete",
        EntryBody::Reaction { .. } => "reaction",
        EntryBody::Created { .. } => "created",
        EntryBody::MemberAdded { .. } => "member_added",
        EntryBody::MemberRemoved { .. } => "member_removed",
        EntryBody::RoleChanged { .. } => "role_changed",
        EntryBody::TitleChanged { .. } => "title_changed",
        EntryBody::MemberMuted { .. } => "member_muted",
        EntryBody::GroupSettings { .. } => "group_settings",
    }
}

/// Whether an entry changes who is in its conversation.
pub fn changes_members(body: &EntryBody) -> bool {
    matches!(
        body,
        EntryBody::Created { .. } | EntryBody::MemberAdded { .. } | EntryBody::MemberRemoved { .. }
    )
}

/// An appended entry, as its ack and as the entry pushed to the commit feed.
pub(crate) struct Appended<'a> {
    pub(crate) conversation: ConversationId,
    pub(crate) seq: Seq,
    pub(crate) id: String,
    pub(crate) sender: UserId,
    pub(crate) ts: i64,
    pub(crate) client_msg_id: Option<&'a str>,
    pub(crate) body: EntryBody,
    /// The conversation's membership version after this entry (see `Committed::members_seq`).
    pub(crate) members_seq: Seq,
}

impl Appended<'_> {
    /// Pushes the entry to `out` (the batch's feed) and returns its ack.
    pub(crate) fn push(self, out: &mut Vec<Committed>) -> Ack {
        let client_msg_id = self.client_msg_id.map(str::to_owned);
        let ack = Ack {
            conversation: self.conversation,
            seq: self.seq,
            id: self.id.clone(),
            ts: self.ts,
            client_msg_id: client_msg_id.clone(),
        };
        let entry = Entry {
            conversation: self.conversation,
            seq: self.seq,
            id: self.id,
            sender: self.sender,
            ts: self.ts,
            client_msg_id,
            body: self.body,
            state: None,
        };
        out.push(Committed { entry, members_seq: self.members_seq });
        ack
    }
}
