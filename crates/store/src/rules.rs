//! The store's rules, written once for both backends: who may change a group and how (roles,
//! the owner's hand-off, the member cap, "already a member", direct conversations never
//! change), who is added to a group at once and who only invited (the adder's contacts, that
//! is users who share a conversation with them, are added; anyone else gets an invitation,
//! one per group and at most `max_pending` per invitee) and what accepting or declining one
//! checks, who may edit or delete a message (only its sender, never once deleted), what an
//! append must name (a seq that is a message), idempotent appends (an earlier ack for the same
//! `(sender, conversation, client_msg_id)` is the answer), what creating a direct conversation
//! or a group checks, how cursors advance, and what a deletion leaves of a message.
//!
//! Each rule is a pure function over the facts a backend loaded inside its writing
//! transaction (a role as `Option<Role>`, a message's sender and deleted flag, a member count,
//! whether an account exists, an earlier ack, ...), and returns the effect to apply or the
//! [`StoreError`] to answer. `sqlite/write.rs` and `postgres/write.rs` only load those facts
//! and apply the effects in SQL, so the two backends cannot drift apart (STYLE.md section 13);
//! when and how the facts are read (the writer thread, PostgreSQL's row locks) stays theirs.

use natter_proto::{
    Ack, Attachment, ConversationId, ConversationKind, EntryBody, NewEntry, Receipt, Role, Seq,
    UserId,
};

use crate::{Append, CursorUpdate, GroupChange, MediaRecord, Result, StoreError};

// ---- create ----

/// The answer to a handle that is already taken (the backend saw its unique index refuse).
pub(crate) fn handle_taken() -> StoreError {
    StoreError::Conflict("handle is taken")
}

/// The key that keeps handles apart: two handles conflict when their keys are equal. NFKC
/// (fullwidth `ａ` is `a`), lower case (handles are unique ignoring case), then the UTS #39
/// confusable skeleton (Cyrillic `а` and Latin `a` share one; so do `0` and `O`, `1` and
/// `l`, `rn` and `m`), lower-cased again because some prototypes are capitals (`0` → `O`).
/// Lower-casing first makes the key case-insensitive at the price of capital `I` versus
/// `l` (their skeletons agree only before lower-casing).
pub fn handle_key(handle: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let folded: String = handle.nfkc().collect::<String>().to_lowercase();
    let skeleton: String = unicode_security::skeleton(&folded).collect();
    skeleton.to_lowercase()
}

/// A conversation to create: its row, its members, and the `created` entry opening its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewConversation {
    pub(crate) kind: ConversationKind,
    pub(crate) title: Option<String>,
    /// `min:max` of a direct conversation's two user ids: the unique key that keeps one
    /// conversation per pair.
    pub(crate) direct_key: Option<String>,
    /// Every member with their role, the creator first (they send the `created` entry).
    pub(crate) members: Vec<(UserId, Role)>,
}

impl NewConversation {
    /// Who sends the `created` entry.
    pub(crate) fn creator(&self) -> UserId {
        self.members.first().map(|&(user, _)| user).expect("a new conversation has its creator")
    }

    /// The ids of the members besides the creator, whose accounts the backend counts for
    /// [`others_exist`].
    pub(crate) fn other_ids(&self) -> Vec<i64> {
        self.members.iter().skip(1).map(|&(user, _)| user.0).collect()
    }

    /// The entry that opens the log.
    pub(crate) fn created(&self) -> EntryBody {
        EntryBody::Created {
            conversation_kind: self.kind,
            title: self.title.clone(),
            members: self.members.iter().map(|&(user, _)| user).collect(),
        }
    }
}

/// What `create_direct` does for a pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Direct {
    /// The pair already has this conversation: nothing is written.
    Exists(ConversationId),
    Create(NewConversation),
}

/// The key of the direct conversation of `a` and `b`, the same in either order: the backend
/// looks the pair up by it before [`create_direct`].
pub(crate) fn direct_key(a: UserId, b: UserId) -> Result<String> {
    if a == b {
        return Err(StoreError::BadRequest("a direct conversation needs another user".into()));
    }
    Ok(format!("{}:{}", a.0.min(b.0), a.0.max(b.0)))
}

/// The other member of the direct conversation whose [`direct_key`] is `key`.
pub(crate) fn direct_peer(key: &str, me: UserId) -> Option<UserId> {
    let (a, b) = key.split_once(':')?;
    let (a, b) = (a.parse().ok()?, b.parse().ok()?);
    match (a == me.0, b == me.0) {
        (true, false) => Some(UserId(b)),
        (false, true) => Some(UserId(a)),
        _ => None,
    }
}

/// `existing`: the conversation found under [`direct_key`]; `b_exists`: whether `b` has an
/// account that is not deleted and does not block `a` (the caller `a` is authenticated, so it
/// has one; a block reads like an unknown user).
pub(crate) fn create_direct(
    a: UserId,
    b: UserId,
    existing: Option<ConversationId>,
    b_exists: bool,
) -> Result<Direct> {
    let key = direct_key(a, b)?;
    // Asking again for a pair is idempotent and writes nothing; only creating needs `b`.
    if let Some(conv) = existing {
        return Ok(Direct::Exists(conv));
    }
    if !b_exists {
        return Err(StoreError::NotFound("user"));
    }
    Ok(Direct::Create(NewConversation {
        kind: ConversationKind::Direct,
        title: None,
        direct_key: Some(key),
        members: vec![(a, Role::Member), (b, Role::Member)],
    }))
}

/// The group `owner` asked for: the owner first, then `members` without repeats, within the
/// cap (which counts the owner, and the members who will only be invited). The backend then
/// checks the others' accounts with [`others_exist`] and sorts them with [`seat_or_invite`].
pub(crate) fn create_group(
    owner: UserId,
    title: &str,
    members: &[UserId],
    cap: u32,
) -> Result<NewConversation> {
    let mut all = vec![owner];
    for &m in members {
        if !all.contains(&m) {
            all.push(m);
        }
    }
    if all.len() > cap as usize {
        return Err(StoreError::Conflict("too many members for a group"));
    }
    let members =
        all.into_iter().map(|m| (m, if m == owner { Role::Owner } else { Role::Member })).collect();
    Ok(NewConversation {
        kind: ConversationKind::Group,
        title: Some(title.to_owned()),
        direct_key: None,
        members,
    })
}

/// `n_found`: how many of the members of `new` besides its creator have an account.
pub(crate) fn others_exist(new: &NewConversation, n_found: u64) -> Result<()> {
    if n_found < new.members.len().saturating_sub(1) as u64 {
        return Err(StoreError::NotFound("user"));
    }
    Ok(())
}

/// A group to create once its members are sorted by [`seat_or_invite`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewGroup {
    /// The owner and the owner's contacts: the members its `created` entry lists.
    pub(crate) conversation: NewConversation,
    /// The others, to invite as members.
    pub(crate) invited: Vec<UserId>,
}

/// Sorts the members of a new group (from [`create_group`]): the owner's contacts stay
/// members, the others are invited instead, each only if they have fewer than `max_pending`
/// invitations pending. `contacts`: those of them who share a conversation with the owner;
/// `pending`: pending invitation counts (a user not listed has none).
pub(crate) fn seat_or_invite(
    new: NewConversation,
    contacts: &[UserId],
    pending: &[(UserId, u64)],
    max_pending: u32,
) -> Result<NewGroup> {
    let creator = new.creator();
    let (members, strangers): (Vec<_>, Vec<_>) = new
        .members
        .iter()
        .copied()
        .partition(|&(user, _)| user == creator || contacts.contains(&user));
    let mut invited = Vec::with_capacity(strangers.len());
    for (user, _) in strangers {
        let n_pending = pending.iter().find(|&&(u, _)| u == user).map_or(0, |&(_, n)| n);
        if n_pending >= u64::from(max_pending) {
            return Err(too_many_invitations());
        }
        invited.push(user);
    }
    Ok(NewGroup { conversation: NewConversation { members, ..new }, invited })
}

fn too_many_invitations() -> StoreError {
    StoreError::Conflict("too many pending invitations")
}

/// What an earlier append with the same `(sender, conversation, client_msg_id)` committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Earlier {
    pub(crate) seq: Seq,
    pub(crate) id: String,
    pub(crate) ts: i64,
}

/// How an append goes on once its key and its sender's membership are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Admit {
    /// A retry: answer the original ack and write nothing.
    Repeat(Ack),
    /// A new entry: load the message at [`append_target`], then build it with [`append_body`].
    Append,
}

/// `earlier`: the entry under the append's key, if any; `sender_role`: the sender's role in
/// the conversation, `None` if not a member (or no such conversation).
/// The sender of an append as a member of its conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Poster {
    pub(crate) role: Role,
    /// The conversation is a group.
    pub(crate) group: bool,
    /// The conversation is direct and one of its two members blocks the other: neither
    /// writes in it (deleting one's own messages excepted) until the block is lifted.
    pub(crate) blocked: bool,
    /// The sender is muted in the group until then (ms).
    pub(crate) muted_until: Option<i64>,
    /// When the sender last sent a message here, if slow mode stamped it (ms).
    pub(crate) last_post_at: Option<i64>,
    /// The group's settings.
    pub(crate) slow_mode_secs: u32,
    pub(crate) locked: bool,
}

impl Poster {
    /// Whether the sender moderates the group: owner and admins of a group delete anyone's
    /// messages, and post in a locked or slow group freely.
    pub(crate) fn moderates(&self) -> bool {
        self.group && self.role >= Role::Admin
    }

    /// Whether this append must record the time of the sender's post (slow mode).
    pub(crate) fn stamps(&self, entry: &NewEntry) -> bool {
        self.slow_mode_secs > 0 && !self.moderates() && matches!(entry, NewEntry::Message { .. })
    }
}

#[cfg(test)]
impl Poster {
    pub(crate) fn member(role: Role) -> Poster {
        Poster {
            role,
            group: true,
            blocked: false,
            muted_until: None,
            last_post_at: None,
            slow_mode_secs: 0,
            locked: false,
        }
    }
}

/// `poster`: the sender as a member, `None` if it is not one; `now` in ms. After membership
/// and blocks: a muted sender writes nothing but deletions of their own; in a locked group
/// only moderators post or edit; in slow mode a member's message waits `slow_mode_secs`
/// after their last one (`too_many_requests` with the time left).
pub(crate) fn admit_append(
    a: &Append,
    earlier: Option<Earlier>,
    poster: Option<Poster>,
    now: i64,
) -> Result<Admit> {
    // The key is checked before membership: a sender removed since still gets the ack of what
    // it sent while a member, whatever the retry carries this time.
    if let Some(Earlier { seq, id, ts }) = earlier {
        return Ok(Admit::Repeat(Ack {
            conversation: a.conversation,
            seq,
            id,
            ts,
            client_msg_id: Some(a.client_msg_id.clone()),
        }));
    }
    let Some(poster) = poster else {
        return Err(StoreError::NotFound("conversation"));
    };
    let writes = !matches!(a.entry, NewEntry::Delete { .. });
    if poster.blocked && writes {
        return Err(StoreError::Forbidden("this conversation is blocked"));
    }
    if let Some(until) = poster.muted_until
        && until > now
        && writes
    {
        return Err(StoreError::Muted { until });
    }
    if poster.moderates() {
        return Ok(Admit::Append);
    }
    if poster.locked && matches!(a.entry, NewEntry::Message { .. } | NewEntry::Edit { .. }) {
        return Err(StoreError::Forbidden("only admins post in this group"));
    }
    if let (true, Some(last)) = (poster.stamps(&a.entry), poster.last_post_at) {
        let next = last.saturating_add(i64::from(poster.slow_mode_secs) * 1000);
        if next > now {
            return Err(StoreError::SlowMode { retry_after_ms: (next - now) as u64 });
        }
    }
    Ok(Admit::Append)
}

/// A message's projection row, as the rules need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Message {
    pub(crate) sender: UserId,
    pub(crate) deleted: bool,
}

/// The seq whose message row [`append_body`] needs, if the entry names one.
pub(crate) fn append_target(entry: &NewEntry) -> Option<Seq> {
    match entry {
        NewEntry::Message { reply_to, .. } => *reply_to,
        NewEntry::Edit { target, .. }
        | NewEntry::Delete { target }
        | NewEntry::Reaction { target, .. } => Some(*target),
    }
}

/// Most attachments one message may carry.
pub(crate) const MAX_ATTACHMENTS: usize = 10;

/// The media ids a message attaches (empty for every other entry).
pub(crate) fn attachment_ids(entry: &NewEntry) -> &[String] {
    match entry {
        NewEntry::Message { attachments, .. } => attachments,
        _ => &[],
    }
}

/// The media rows an append must load for [`attachments`]: none when there are more ids than
/// a message may carry (the rule refuses them unread).
pub(crate) fn media_to_load(ids: &[String]) -> &[String] {
    if ids.len() > MAX_ATTACHMENTS { &[] } else { ids }
}

/// Most members one message may mention by id (`@handle`s past this many are left as text).
pub(crate) const MAX_MENTIONS: usize = 50;

/// Whom a message may mention, to look up among the conversation's members: the ids the
/// sender named and the [`handle_key`]s of the `@handle`s in its body (an `@` that does not
/// follow a handle character, then handle characters, less a trailing `.` or `-`, so
/// `mail@example.com` mentions nobody and `@ann.` mentions `ann`). `None` when there is
/// nothing to look up, which is the common case and costs no query.
pub(crate) fn mentions_to_resolve(entry: &NewEntry) -> Result<Option<(Vec<i64>, Vec<String>)>> {
    let NewEntry::Message { body, mentions, .. } = entry else { return Ok(None) };
    if mentions.len() > MAX_MENTIONS {
        return Err(StoreError::BadRequest(format!("at most {MAX_MENTIONS} mentions")));
    }
    let handle_char = |c: char| c.is_alphanumeric() || matches!(c, '_' | '-' | '.');
    let mut keys = Vec::new();
    let mut prev: Option<char> = None;
    let mut rest = body.as_str();
    while let Some(at) = rest.find('@') {
        let before = rest[..at].chars().next_back().or(if at == 0 { prev } else { None });
        let after = &rest[at + 1..];
        let len = after.find(|c: char| !handle_char(c)).unwrap_or(after.len());
        let handle = after[..len].trim_end_matches(['.', '-']);
        if !before.is_some_and(handle_char) && !handle.is_empty() && keys.len() < MAX_MENTIONS {
            keys.push(handle_key(handle));
        }
        prev = Some('@');
        rest = after;
    }
    if mentions.is_empty() && keys.is_empty() {
        return Ok(None);
    }
    keys.sort_unstable();
    keys.dedup();
    Ok(Some((mentions.iter().map(|u| u.0).collect(), keys)))
}

/// A message entry with the members it mentions (`found`: the lookup of
/// [`mentions_to_resolve`], in any order).
pub(crate) fn with_mentions(body: EntryBody, mut found: Vec<UserId>) -> EntryBody {
    match body {
        EntryBody::Message { body, reply_to, attachments, .. } => {
            found.sort_unstable();
            found.dedup();
            EntryBody::Message { body, reply_to, attachments, mentions: found }
        }
        other => other,
    }
}

/// Whether an upload of `size` bytes fits its owner's quota, who stores `used` already.
/// An avatar must be an image its user uploaded: `found` is that media's content type when
/// the user owns one of that id.
pub(crate) fn avatar(found: Option<&str>) -> Result<()> {
    match found {
        None => Err(StoreError::NotFound("media")),
        Some(t) if t.starts_with("image/") => Ok(()),
        Some(_) => Err(StoreError::BadRequest("an avatar must be an image".to_owned())),
    }
}

pub(crate) fn within_quota(used: u64, size: u64, quota: u64) -> Result<()> {
    if used.saturating_add(size) > quota { Err(StoreError::QuotaExceeded) } else { Ok(()) }
}

/// A message's attachments, in the order given. `found`: the media rows of those of `ids`
/// that exist. Someone else's upload reads exactly like a missing one (`NotFound`), so a
/// send cannot probe which ids exist.
pub(crate) fn attachments(
    sender: UserId,
    ids: &[String],
    found: Vec<MediaRecord>,
) -> Result<Vec<Attachment>> {
    if ids.len() > MAX_ATTACHMENTS {
        return Err(StoreError::BadRequest(format!("at most {MAX_ATTACHMENTS} attachments")));
    }
    let mut seen = std::collections::HashSet::new();
    if !ids.iter().all(|id| seen.insert(id.as_str())) {
        return Err(StoreError::BadRequest("duplicate attachment".to_owned()));
    }
    ids.iter()
        .map(|id| {
            found
                .iter()
                .find(|m| &m.id == id && m.owner == sender)
                .map(MediaRecord::attachment)
                .ok_or(StoreError::NotFound("media"))
        })
        .collect()
}

/// The entry to append. `target`: the message row at [`append_target`], `None` if that seq is
/// not a message (or the entry names none). A reply may quote a deleted message; edits,
/// deletions and reactions need a live one, and only its sender edits or deletes it.
/// `attachments`: what [`attachments`] made of the message's media ids (empty otherwise).
/// `moderates`: the sender may delete others' messages ([`Poster::moderates`]).
pub(crate) fn append_body(
    a: &Append,
    target: Option<Message>,
    attachments: Vec<Attachment>,
    moderates: bool,
) -> Result<EntryBody> {
    let live = |seq: Seq, must_own: bool| -> Result<()> {
        match target {
            None => Err(not_a_message(seq)),
            Some(Message { deleted: true, .. }) => Err(StoreError::Conflict("message is deleted")),
            Some(Message { sender, .. }) if must_own && sender != a.sender => {
                Err(StoreError::Forbidden("only the sender may change a message"))
            }
            Some(_) => Ok(()),
        }
    };
    match &a.entry {
        NewEntry::Message { body, reply_to, .. } => {
            if let Some(seq) = *reply_to
                && target.is_none()
            {
                return Err(not_a_message(seq));
            }
            Ok(EntryBody::Message {
                body: body.clone(),
                reply_to: *reply_to,
                attachments,
                mentions: Vec::new(),
            })
        }
        NewEntry::Edit { target, body } => {
            live(*target, true)?;
            Ok(EntryBody::Edit { target: *target, body: body.clone() })
        }
        NewEntry::Delete { target } => {
            // A group's owner and admins delete anyone's messages (a moderator's deletion:
            // the entry's sender is not the message's).
            live(*target, !moderates)?;
            Ok(EntryBody::Delete { target: *target })
        }
        NewEntry::Reaction { target, emoji, remove } => {
            live(*target, false)?;
            Ok(EntryBody::Reaction { target: *target, emoji: emoji.clone(), remove: *remove })
        }
    }
}

fn not_a_message(seq: Seq) -> StoreError {
    StoreError::BadRequest(format!("seq {seq} is not a message"))
}

// ---- update: group changes ----

/// The conversation row a group change reads first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GroupRow {
    pub(crate) kind: ConversationKind,
    pub(crate) n_members: u64,
}

/// Who makes a group change, once [`group_actor`] let them, and the group's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Actor {
    pub(crate) user: UserId,
    pub(crate) role: Role,
    pub(crate) n_members: u64,
}

/// `row`: the conversation, `None` if there is none; `role`: the actor's role in it, `None`
/// if not a member (reported exactly like a missing conversation).
pub(crate) fn group_actor(
    user: UserId,
    row: Option<GroupRow>,
    role: Option<Role>,
) -> Result<Actor> {
    let (Some(row), Some(role)) = (row, role) else {
        return Err(StoreError::NotFound("conversation"));
    };
    if row.kind != ConversationKind::Group {
        return Err(StoreError::Forbidden("a direct conversation cannot change"));
    }
    Ok(Actor { user, role, n_members: row.n_members })
}

/// The user a change names, as loaded: whether they have an account, and their role in the
/// group if a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Subject {
    pub(crate) exists: bool,
    pub(crate) role: Option<Role>,
}

/// The user whose [`Subject`] facts `change` needs, if any.
pub(crate) fn subject_of(change: &GroupChange) -> Option<UserId> {
    match change {
        GroupChange::RemoveMember { user } | GroupChange::SetRole { user, .. } => Some(*user),
        GroupChange::Mute { user, .. } | GroupChange::Ban { user } => Some(*user),
        GroupChange::SetTitle { .. } | GroupChange::Settings { .. } => None,
    }
}

/// What a group change writes: [`GroupEffect::entry`] is appended to the log, then the rows
/// change as each variant says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GroupEffect {
    /// Insert the member, joined at the seq of the `member_added` entry, and delete their
    /// invitation to the group if they had one.
    Add {
        user: UserId,
        role: Role,
    },
    /// Delete the member. If they owned the group, the backend picks the heir (the
    /// longest-standing admin, else member) and applies [`hand_on`] to them; with no heir
    /// the group is left empty, and its pending invitations are deleted with it (nobody can
    /// join a group nobody is in).
    Remove {
        user: UserId,
        owner_left: bool,
    },
    SetRole {
        user: UserId,
        role: Role,
    },
    SetTitle {
        title: String,
    },
    /// Set the member's `muted_until`.
    Mute {
        user: UserId,
        until: Option<i64>,
    },
    /// Delete the member (never the owner), delete their invitation, and record the ban.
    Ban {
        user: UserId,
    },
    Settings {
        slow_mode_secs: u32,
        locked: bool,
    },
}

impl GroupEffect {
    /// The system entry that records the change.
    pub(crate) fn entry(&self) -> EntryBody {
        match self {
            GroupEffect::Add { user, role } => EntryBody::MemberAdded { user: *user, role: *role },
            GroupEffect::Remove { user, .. } => {
                EntryBody::MemberRemoved { user: *user, banned: false }
            }
            GroupEffect::Ban { user } => EntryBody::MemberRemoved { user: *user, banned: true },
            GroupEffect::Mute { user, until } => {
                EntryBody::MemberMuted { user: *user, until: *until }
            }
            GroupEffect::Settings { slow_mode_secs, locked } => {
                EntryBody::GroupSettings { slow_mode_secs: *slow_mode_secs, locked: *locked }
            }
            GroupEffect::SetRole { user, role } => {
                EntryBody::RoleChanged { user: *user, role: *role }
            }
            GroupEffect::SetTitle { title } => EntryBody::TitleChanged { title: title.clone() },
        }
    }
}

/// The owner left: ownership passes to `heir`.
pub(crate) fn hand_on(heir: UserId) -> GroupEffect {
    GroupEffect::SetRole { user: heir, role: Role::Owner }
}

/// Checks `change` against the actor's role and the facts of the user it names (`subject`,
/// loaded for [`subject_of`]), and returns what to write. Removing oneself is leaving, which
/// every member may do.
pub(crate) fn change_group(
    actor: &Actor,
    change: &GroupChange,
    subject: Option<Subject>,
) -> Result<GroupEffect> {
    let subject = || {
        subject
            .ok_or_else(|| StoreError::Internal("the changed user's facts were not loaded".into()))
    };
    match change {
        GroupChange::RemoveMember { user } => {
            let Some(target_role) = subject()?.role else {
                return Err(StoreError::NotFound("member"));
            };
            if *user != actor.user {
                let allowed = actor.role == Role::Owner
                    || (actor.role == Role::Admin && target_role == Role::Member);
                if !allowed {
                    return Err(StoreError::Forbidden("not allowed to remove this member"));
                }
            }
            Ok(GroupEffect::Remove { user: *user, owner_left: target_role == Role::Owner })
        }
        GroupChange::SetRole { user, role } => {
            if actor.role != Role::Owner {
                return Err(StoreError::Forbidden("only the owner changes roles"));
            }
            if *role == Role::Owner || *user == actor.user {
                return Err(StoreError::BadRequest(
                    "ownership passes on only when the owner leaves".into(),
                ));
            }
            if subject()?.role.is_none() {
                return Err(StoreError::NotFound("member"));
            }
            Ok(GroupEffect::SetRole { user: *user, role: *role })
        }
        GroupChange::SetTitle { title } => {
            if actor.role < Role::Admin {
                return Err(StoreError::Forbidden("only admins change the title"));
            }
            Ok(GroupEffect::SetTitle { title: title.clone() })
        }
        GroupChange::Mute { user, until } => {
            moderate(actor, *user, subject()?)?;
            Ok(GroupEffect::Mute { user: *user, until: *until })
        }
        GroupChange::Ban { user } => {
            moderate(actor, *user, subject()?)?;
            Ok(GroupEffect::Ban { user: *user })
        }
        GroupChange::Settings { slow_mode_secs, locked } => {
            if actor.role < Role::Admin {
                return Err(StoreError::Forbidden("only admins change the settings"));
            }
            if *slow_mode_secs > crate::MAX_SLOW_MODE_SECS {
                let max = crate::MAX_SLOW_MODE_SECS;
                return Err(StoreError::BadRequest(format!("slow mode is at most {max} s")));
            }
            Ok(GroupEffect::Settings { slow_mode_secs: *slow_mode_secs, locked: *locked })
        }
    }
}

/// Whether `actor` may mute or ban `user`: owner and admins, over a member of a lower role
/// (an admin over members, the owner over everyone else).
fn moderate(actor: &Actor, user: UserId, subject: Subject) -> Result<()> {
    if actor.role < Role::Admin {
        return Err(StoreError::Forbidden("only admins moderate members"));
    }
    if user == actor.user {
        return Err(StoreError::BadRequest("one cannot moderate oneself".into()));
    }
    match subject.role {
        None => Err(StoreError::NotFound("member")),
        Some(role) if role >= actor.role => {
            Err(StoreError::Forbidden("not allowed to moderate this member"))
        }
        Some(_) => Ok(()),
    }
}

/// Whether `actor` (from [`group_actor`]) may lift a ban: owner and admins.
pub(crate) fn unban(actor: &Actor) -> Result<()> {
    if actor.role < Role::Admin {
        return Err(StoreError::Forbidden("only admins lift bans"));
    }
    Ok(())
}

// ---- create: adding members and invitations ----

/// What the backend loaded about the user an add names, beyond their [`Subject`] facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reach {
    /// They share a conversation with the actor (they are the actor's contact).
    pub(crate) contact: bool,
    /// They have an invitation to this group already.
    pub(crate) invited: bool,
    /// Their pending invitations, to any group.
    pub(crate) n_pending: u64,
    /// Their account is deleted, or they block the actor: the add is refused as for an
    /// unknown user, so the actor learns nothing of a block.
    pub(crate) unreachable: bool,
    /// They are banned from the group.
    pub(crate) banned: bool,
}

/// What adding a user to a group does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Addition {
    /// A contact of the actor: a member at once ([`GroupEffect::Add`]).
    Member(GroupEffect),
    /// Anyone else: an invitation row; nothing enters the log.
    Invite { user: UserId, role: Role },
}

/// `actor` (from [`group_actor`]) adds `user` as `role`; `subject` and `reach` are that user's
/// facts. Everything an add checks comes first, in the same order whoever the user is, so an
/// invitation tells the actor nothing an add would not (an unknown id is `not_found` either
/// way); only then does a contact become a member and anyone else an invitation, which must
/// be the first to this group and within the invitee's `max_pending`.
pub(crate) fn add_member(
    actor: &Actor,
    cap: u32,
    max_pending: u32,
    user: UserId,
    role: Role,
    subject: Subject,
    reach: Reach,
) -> Result<Addition> {
    if actor.role < Role::Admin {
        return Err(StoreError::Forbidden("only admins add members"));
    }
    if role == Role::Owner || (role == Role::Admin && actor.role != Role::Owner) {
        return Err(StoreError::Forbidden("that role cannot be given by this member"));
    }
    if !subject.exists {
        return Err(StoreError::NotFound("user"));
    }
    if subject.role.is_some() {
        return Err(StoreError::Conflict("already a member"));
    }
    if reach.unreachable {
        return Err(StoreError::NotFound("user"));
    }
    if reach.banned {
        return Err(StoreError::Forbidden("banned from this group"));
    }
    if actor.n_members >= u64::from(cap) {
        return Err(StoreError::Conflict("the group is full"));
    }
    if reach.contact {
        return Ok(Addition::Member(GroupEffect::Add { user, role }));
    }
    if reach.invited {
        return Err(StoreError::Conflict("already invited"));
    }
    if reach.n_pending >= u64::from(max_pending) {
        return Err(too_many_invitations());
    }
    Ok(Addition::Invite { user, role })
}

/// `user` accepts an invitation. `offered`: the role their invitation to the group offers,
/// `None` if they have none; `row`: the group, `None` if there is none; `role`: their role in
/// it now. The group must still have members (an empty group is gone) and room; the
/// `member_added` entry is sent by the user who joined.
pub(crate) fn accept_invitation(
    user: UserId,
    offered: Option<Role>,
    row: Option<GroupRow>,
    role: Option<Role>,
    cap: u32,
) -> Result<GroupEffect> {
    let Some(offered) = offered else {
        return Err(StoreError::NotFound("invitation"));
    };
    let Some(row) = row.filter(|r| r.kind == ConversationKind::Group && r.n_members > 0) else {
        return Err(StoreError::NotFound("conversation"));
    };
    if role.is_some() {
        return Err(StoreError::Conflict("already a member"));
    }
    if row.n_members >= u64::from(cap) {
        return Err(StoreError::Conflict("the group is full"));
    }
    Ok(GroupEffect::Add { user, role: offered })
}

/// `n_deleted`: how many invitations declining deleted (0 or 1).
pub(crate) fn decline_invitation(n_deleted: u64) -> Result<()> {
    if n_deleted == 0 {
        return Err(StoreError::NotFound("invitation"));
    }
    Ok(())
}

// ---- update: cursors and redaction ----

/// A member's cursors after `u`, given the stored `delivered` and `read` and the
/// conversation's `last` seq: never backwards, never past `last`, and `read` implies
/// `delivered`. `None` if nothing changes (no receipt, no write).
pub(crate) fn advance_cursors(
    u: &CursorUpdate,
    delivered: Seq,
    read: Seq,
    last: Seq,
) -> Option<Receipt> {
    let new_read = read.max(u.read.unwrap_or(0).min(last));
    let new_delivered = delivered.max(u.delivered.unwrap_or(0).min(last)).max(new_read);
    if (new_delivered, new_read) == (delivered, read) {
        return None;
    }
    Some(Receipt {
        conversation: u.conversation,
        user: u.user,
        delivered_seq: new_delivered,
        read_seq: new_read,
    })
}

/// What a deleted message's log entries become, as the JSON their `body` column stores:
/// `(message, edit)`. Both lose their text; the message keeps the reply it was (read from
/// `original`, its stored JSON), every edit keeps its target.
pub(crate) fn redacted(original: Option<&str>, target: Seq) -> Result<(String, String)> {
    let reply_to =
        original.and_then(|json| serde_json::from_str::<EntryBody>(json).ok()).and_then(|body| {
            match body {
                EntryBody::Message { reply_to, .. } => reply_to,
                _ => None,
            }
        });
    let message = EntryBody::Message {
        body: String::new(),
        reply_to,
        attachments: Vec::new(),
        mentions: Vec::new(),
    };
    let edit = EntryBody::Edit { target, body: String::new() };
    let json = |body: &EntryBody| {
        serde_json::to_string(body).map_err(|err| StoreError::Internal(err.to_string()))
    };
    Ok((json(&message)?, json(&edit)?))
}

/// `blocker` blocks `blocked`: `exists` whether `blocked` has an account that is not
/// deleted, `already` whether the block is there, `n_blocks` how many users `blocker` blocks.
/// `true` if a row must be written.
pub(crate) fn block(
    blocker: UserId,
    blocked: UserId,
    exists: bool,
    already: bool,
    n_blocks: u64,
    max: u32,
) -> Result<bool> {
    if blocker == blocked {
        return Err(StoreError::BadRequest("one cannot block oneself".into()));
    }
    if !exists {
        return Err(StoreError::NotFound("user"));
    }
    if already {
        return Ok(false);
    }
    if n_blocks >= u64::from(max) {
        return Err(StoreError::Conflict("too many blocked users"));
    }
    Ok(true)
}

// ---- reports and server administration ----

/// A message report: `member` whether the reporter is in the conversation, `author` the
/// live message's author (`None`: no message there, or a deleted one). The reported user.
/// `reporter` `None`: the server flags it (no membership needed).
pub(crate) fn report_message(
    reporter: Option<UserId>,
    member: bool,
    author: Option<UserId>,
) -> Result<UserId> {
    if reporter.is_some() && !member {
        return Err(StoreError::NotFound("conversation"));
    }
    let author = author.ok_or(StoreError::NotFound("message"))?;
    if Some(author) == reporter {
        return Err(StoreError::BadRequest("one cannot report oneself".into()));
    }
    Ok(author)
}

/// A user report: `shares` whether the user shares a conversation with the reporter (a
/// stranger reads like an unknown user).
pub(crate) fn report_user(reporter: Option<UserId>, user: UserId, shares: bool) -> Result<()> {
    let Some(reporter) = reporter else {
        return Err(StoreError::BadRequest("the server flags messages, not users".into()));
    };
    if reporter == user {
        return Err(StoreError::BadRequest("one cannot report oneself".into()));
    }
    if !shares {
        return Err(StoreError::NotFound("user"));
    }
    Ok(())
}

/// `status`: the report's now (`None`: no such report); `to`: where it goes.
pub(crate) fn resolve_report(
    status: Option<natter_proto::rest::ReportStatus>,
    to: natter_proto::rest::ReportStatus,
) -> Result<&'static str> {
    use natter_proto::rest::ReportStatus;
    if status.is_none() {
        return Err(StoreError::NotFound("report"));
    }
    match to {
        ReportStatus::Open => {
            Err(StoreError::BadRequest("a report is resolved or dismissed".into()))
        }
        ReportStatus::Resolved => Ok("resolve_report"),
        ReportStatus::Dismissed => Ok("dismiss_report"),
    }
}

/// `admin` suspends `user`: `target_admin` whether `user` is an administrator (`None`: no
/// such user). The audit action.
pub(crate) fn suspend(
    admin: UserId,
    user: UserId,
    target_admin: Option<bool>,
    until: i64,
) -> Result<&'static str> {
    if admin == user {
        return Err(StoreError::BadRequest("one cannot suspend oneself".into()));
    }
    match target_admin {
        None => Err(StoreError::NotFound("user")),
        Some(true) => Err(StoreError::Forbidden("an administrator cannot be suspended")),
        Some(false) => Ok(if until == crate::BANNED { "ban" } else { "suspend" }),
    }
}

/// A moderator's removal of message `target` (any conversation, any author).
pub(crate) fn remove_message(target: Option<Message>) -> Result<()> {
    match target {
        None => Err(StoreError::NotFound("message")),
        Some(Message { deleted: true, .. }) => Err(StoreError::Conflict("message is deleted")),
        Some(_) => Ok(()),
    }
}

/// Whether a login of an account suspended until `until` is refused at `now`.
pub fn suspended(until: Option<i64>, now: i64) -> bool {
    until.is_some_and(|until| until > now)
}

#[cfg(test)]
mod tests {
    use natter_proto::ErrorCode;

    use super::*;

    const A: UserId = UserId(1);
    const B: UserId = UserId(2);
    const C: UserId = UserId(3);
    const CONV: ConversationId = ConversationId(7);

    /// The error's code and message, which is what clients and the suite see.
    fn err<T: std::fmt::Debug>(res: Result<T>) -> (ErrorCode, String) {
        let e = res.expect_err("the rule should refuse");
        (e.code(), e.to_string())
    }

    fn append_of(sender: UserId, entry: NewEntry) -> Append {
        Append { conversation: CONV, sender, client_msg_id: "m1".to_owned(), entry }
    }

    fn msg(reply_to: Option<Seq>) -> NewEntry {
        NewEntry::Message {
            body: "hi".to_owned(),
            reply_to,
            attachments: Vec::new(),
            mentions: Vec::new(),
        }
    }

    fn live(sender: UserId) -> Option<Message> {
        Some(Message { sender, deleted: false })
    }

    fn actor(user: UserId, role: Role) -> Actor {
        Actor { user, role, n_members: 3 }
    }

    fn member(role: Role) -> Option<Subject> {
        Some(Subject { exists: true, role: Some(role) })
    }

    fn outsider() -> Option<Subject> {
        Some(stranger())
    }

    fn stranger() -> Subject {
        Subject { exists: true, role: None }
    }

    const CONTACT: Reach =
        Reach { contact: true, invited: false, n_pending: 0, unreachable: false, banned: false };
    const STRANGER: Reach =
        Reach { contact: false, invited: false, n_pending: 0, unreachable: false, banned: false };

    // ---- create ----

    #[test]
    fn handle_taken_is_a_conflict() {
        let e = handle_taken();
        assert_eq!(
            (e.code(), e.to_string()),
            (ErrorCode::Conflict, "conflict: handle is taken".into())
        );
    }

    #[test]
    fn look_alike_handles_share_a_key() {
        let alice = handle_key("alice");
        assert_eq!(alice, "alice");
        // Cyrillic а, fullwidth letters, capitals in either script.
        for twin in
            ["\u{430}lice", "\u{ff41}\u{ff4c}\u{ff49}\u{ff43}\u{ff45}", "ALICE", "\u{410}LICE"]
        {
            assert_eq!(handle_key(twin), alice, "{twin}");
        }
        assert_eq!(handle_key("b0b"), handle_key("bob"));
        assert_eq!(handle_key("ji11"), handle_key("jill"));
        assert_eq!(handle_key("rnary"), handle_key("mary"));
        assert_ne!(handle_key("alice"), handle_key("alicia"));
        assert_ne!(handle_key("bob"), handle_key("bab"));
    }

    #[test]
    fn direct_key_is_the_same_in_either_order_and_needs_two_users() {
        assert_eq!(direct_key(B, A).expect("key"), "1:2");
        assert_eq!(direct_key(A, B).expect("key"), "1:2");
        assert_eq!(
            err(direct_key(A, A)),
            (ErrorCode::BadRequest, "bad request: a direct conversation needs another user".into())
        );
    }

    #[test]
    fn create_direct_reuses_the_pair_or_creates_it() {
        let existing = ConversationId(5);
        assert_eq!(
            create_direct(A, B, Some(existing), true).expect("exists"),
            Direct::Exists(existing)
        );
        // The existing pair is found before the other account is looked at.
        assert_eq!(
            create_direct(A, B, Some(existing), false).expect("exists"),
            Direct::Exists(existing)
        );
        let Direct::Create(new) = create_direct(B, A, None, true).expect("create") else {
            panic!("expected a new conversation");
        };
        assert_eq!(new.kind, ConversationKind::Direct);
        assert_eq!(new.title, None);
        assert_eq!(new.direct_key.as_deref(), Some("1:2"));
        assert_eq!(new.members, vec![(B, Role::Member), (A, Role::Member)]);
        assert_eq!(new.creator(), B);
        assert_eq!(new.other_ids(), vec![1]);
        assert_eq!(
            new.created(),
            EntryBody::Created {
                conversation_kind: ConversationKind::Direct,
                title: None,
                members: vec![B, A]
            }
        );
    }

    #[test]
    fn create_direct_refuses_oneself_and_unknown_users() {
        assert_eq!(err(create_direct(A, A, None, true)).0, ErrorCode::BadRequest);
        assert_eq!(
            err(create_direct(A, B, None, false)),
            (ErrorCode::NotFound, "user not found".into())
        );
    }

    #[test]
    fn create_group_puts_the_owner_first_and_drops_repeats() {
        let new = create_group(A, "team", &[B, A, C, B], 10).expect("group");
        assert_eq!(new.kind, ConversationKind::Group);
        assert_eq!(new.title.as_deref(), Some("team"));
        assert_eq!(new.direct_key, None);
        assert_eq!(new.members, vec![(A, Role::Owner), (B, Role::Member), (C, Role::Member)]);
        assert_eq!(new.creator(), A);
        assert_eq!(new.other_ids(), vec![2, 3]);
        assert_eq!(
            new.created(),
            EntryBody::Created {
                conversation_kind: ConversationKind::Group,
                title: Some("team".to_owned()),
                members: vec![A, B, C]
            }
        );
        // Alone is a group too.
        assert_eq!(create_group(A, "me", &[], 1).expect("solo").members, vec![(A, Role::Owner)]);
    }

    #[test]
    fn create_group_cap_counts_the_owner_once() {
        assert!(create_group(A, "at cap", &[B, C], 3).is_ok());
        assert!(create_group(A, "repeats", &[B, C, B, A], 3).is_ok());
        assert_eq!(
            err(create_group(A, "over", &[B, C], 2)),
            (ErrorCode::Conflict, "conflict: too many members for a group".into())
        );
    }

    #[test]
    fn the_other_members_must_all_exist() {
        let new = create_group(A, "team", &[B, C], 10).expect("group");
        assert!(others_exist(&new, 2).is_ok());
        assert_eq!(err(others_exist(&new, 1)), (ErrorCode::NotFound, "user not found".into()));
        let solo = create_group(A, "me", &[], 10).expect("group");
        assert!(others_exist(&solo, 0).is_ok());
    }

    #[test]
    fn a_new_group_seats_the_owners_contacts_and_invites_the_others() {
        let d = UserId(4);
        let new = create_group(A, "team", &[B, C, d], 10).expect("group");
        let group = seat_or_invite(new.clone(), &[C], &[(B, 99), (C, 100)], 100).expect("sorted");
        assert_eq!(group.conversation.members, vec![(A, Role::Owner), (C, Role::Member)]);
        assert_eq!(group.invited, vec![B, d]);
        assert_eq!(
            group.conversation.created(),
            EntryBody::Created {
                conversation_kind: ConversationKind::Group,
                title: Some("team".to_owned()),
                members: vec![A, C]
            }
        );
        // Only a stranger's own pending invitations count, and only for strangers.
        assert_eq!(
            err(seat_or_invite(new.clone(), &[C], &[(B, 100)], 100)),
            (ErrorCode::Conflict, "conflict: too many pending invitations".into())
        );
        let everyone = seat_or_invite(new, &[B, C, d], &[(B, 100)], 100).expect("contacts");
        assert_eq!(everyone.conversation.members.len(), 4);
        assert!(everyone.invited.is_empty());
    }

    // ---- appends ----

    #[test]
    fn a_repeated_key_gets_the_earlier_ack_even_after_leaving() {
        let a = append_of(A, NewEntry::Delete { target: 99 });
        let earlier = Earlier { seq: 4, id: "e4".to_owned(), ts: 1234 };
        let want = Ack {
            conversation: CONV,
            seq: 4,
            id: "e4".to_owned(),
            ts: 1234,
            client_msg_id: Some("m1".to_owned()),
        };
        for poster in [Some(Poster::member(Role::Member)), None] {
            let admit = admit_append(&a, Some(earlier.clone()), poster, 0).expect("repeat");
            assert_eq!(admit, Admit::Repeat(want.clone()));
        }
    }

    #[test]
    fn a_new_append_needs_a_member() {
        let a = append_of(A, msg(None));
        let member = Poster::member(Role::Member);
        assert_eq!(admit_append(&a, None, Some(member), 0).expect("member"), Admit::Append);
        assert_eq!(
            err(admit_append(&a, None, None, 0)),
            (ErrorCode::NotFound, "conversation not found".into())
        );
    }

    #[test]
    fn the_peer_of_a_direct_key() {
        let key = direct_key(A, B).unwrap();
        assert_eq!(direct_peer(&key, A), Some(B));
        assert_eq!(direct_peer(&key, B), Some(A));
        assert_eq!(direct_peer(&key, UserId(9)), None);
        assert_eq!(direct_peer("nonsense", A), None);
    }

    #[test]
    fn a_blocked_direct_conversation_takes_only_deletions() {
        let blocked = Some(Poster { blocked: true, ..Poster::member(Role::Member) });
        for entry in [msg(None), NewEntry::Edit { target: 2, body: "x".into() }] {
            let refused = admit_append(&append_of(A, entry), None, blocked, 0);
            assert_eq!(err(refused).0, ErrorCode::Forbidden);
        }
        let delete = append_of(A, NewEntry::Delete { target: 2 });
        assert_eq!(admit_append(&delete, None, blocked, 0).expect("delete"), Admit::Append);
    }

    #[test]
    fn append_target_is_the_seq_an_entry_names() {
        assert_eq!(append_target(&msg(None)), None);
        assert_eq!(append_target(&msg(Some(3))), Some(3));
        assert_eq!(append_target(&NewEntry::Edit { target: 4, body: String::new() }), Some(4));
        assert_eq!(append_target(&NewEntry::Delete { target: 5 }), Some(5));
        let react = NewEntry::Reaction { target: 6, emoji: "+1".to_owned(), remove: false };
        assert_eq!(append_target(&react), Some(6));
    }

    #[test]
    fn messages_and_replies() {
        let body = append_body(&append_of(A, msg(None)), None, Vec::new(), false).expect("message");
        assert_eq!(
            body,
            EntryBody::Message {
                body: "hi".to_owned(),
                reply_to: None,
                attachments: Vec::new(),
                mentions: Vec::new()
            }
        );
        // A reply may quote anyone's message, deleted or not.
        let reply = append_of(A, msg(Some(3)));
        for target in [live(B), Some(Message { sender: B, deleted: true })] {
            let body = append_body(&reply, target, Vec::new(), false).expect("reply");
            assert_eq!(
                body,
                EntryBody::Message {
                    body: "hi".to_owned(),
                    reply_to: Some(3),
                    attachments: Vec::new(),
                    mentions: Vec::new(),
                }
            );
        }
        assert_eq!(
            err(append_body(&reply, None, Vec::new(), false)),
            (ErrorCode::BadRequest, "bad request: seq 3 is not a message".into())
        );
    }

    #[test]
    fn only_the_sender_edits_or_deletes_a_live_message() {
        let edit = NewEntry::Edit { target: 2, body: "fixed".to_owned() };
        let delete = NewEntry::Delete { target: 2 };
        assert_eq!(
            append_body(&append_of(A, edit.clone()), live(A), Vec::new(), false).expect("own edit"),
            EntryBody::Edit { target: 2, body: "fixed".to_owned() }
        );
        assert_eq!(
            append_body(&append_of(A, delete.clone()), live(A), Vec::new(), false)
                .expect("own delete"),
            EntryBody::Delete { target: 2 }
        );
        for entry in [edit, delete] {
            let a = append_of(A, entry);
            assert_eq!(
                err(append_body(&a, live(B), Vec::new(), false)),
                (ErrorCode::Forbidden, "forbidden: only the sender may change a message".into())
            );
            // Deleted wins over ownership: nobody may change it any more.
            for sender in [A, B] {
                assert_eq!(
                    err(append_body(
                        &a,
                        Some(Message { sender, deleted: true }),
                        Vec::new(),
                        false
                    )),
                    (ErrorCode::Conflict, "conflict: message is deleted".into())
                );
            }
            assert_eq!(
                err(append_body(&a, None, Vec::new(), false)),
                (ErrorCode::BadRequest, "bad request: seq 2 is not a message".into())
            );
        }
    }

    #[test]
    fn anyone_reacts_to_a_live_message() {
        let react = NewEntry::Reaction { target: 2, emoji: "+1".to_owned(), remove: true };
        let a = append_of(A, react);
        assert_eq!(
            append_body(&a, live(B), Vec::new(), false).expect("react"),
            EntryBody::Reaction { target: 2, emoji: "+1".to_owned(), remove: true }
        );
        assert_eq!(
            err(append_body(&a, Some(Message { sender: A, deleted: true }), Vec::new(), false)),
            (ErrorCode::Conflict, "conflict: message is deleted".into())
        );
        assert_eq!(err(append_body(&a, None, Vec::new(), false)).0, ErrorCode::BadRequest);
    }

    // ---- group changes ----

    #[test]
    fn group_actor_must_be_a_member_of_a_group() {
        let group = Some(GroupRow { kind: ConversationKind::Group, n_members: 4 });
        let direct = Some(GroupRow { kind: ConversationKind::Direct, n_members: 2 });
        assert_eq!(
            group_actor(A, group, Some(Role::Admin)).expect("actor"),
            Actor { user: A, role: Role::Admin, n_members: 4 }
        );
        let not_found = (ErrorCode::NotFound, "conversation not found".to_owned());
        assert_eq!(err(group_actor(A, group, None)), not_found);
        assert_eq!(err(group_actor(A, None, None)), not_found);
        assert_eq!(err(group_actor(A, None, Some(Role::Owner))), not_found);
        // A non-member of a direct conversation cannot tell it exists.
        assert_eq!(err(group_actor(A, direct, None)), not_found);
        assert_eq!(
            err(group_actor(A, direct, Some(Role::Member))),
            (ErrorCode::Forbidden, "forbidden: a direct conversation cannot change".into())
        );
    }

    #[test]
    fn subject_of_names_the_changed_user() {
        assert_eq!(subject_of(&GroupChange::RemoveMember { user: B }), Some(B));
        assert_eq!(subject_of(&GroupChange::SetRole { user: C, role: Role::Admin }), Some(C));
        assert_eq!(subject_of(&GroupChange::SetTitle { title: "t".to_owned() }), None);
    }

    #[test]
    fn add_member_needs_an_admin_and_a_role_they_may_give() {
        let ok = |a: &Actor, role| {
            add_member(a, 10, 100, C, role, stranger(), CONTACT).map(|added| match added {
                Addition::Member(effect) => effect,
                other => panic!("a contact is added: {other:?}"),
            })
        };
        assert_eq!(
            ok(&actor(A, Role::Admin), Role::Member).expect("admin adds"),
            GroupEffect::Add { user: C, role: Role::Member }
        );
        assert_eq!(
            ok(&actor(A, Role::Owner), Role::Admin).expect("owner adds admin"),
            GroupEffect::Add { user: C, role: Role::Admin }
        );
        assert_eq!(
            err(ok(&actor(A, Role::Member), Role::Member)),
            (ErrorCode::Forbidden, "forbidden: only admins add members".into())
        );
        let cannot = (
            ErrorCode::Forbidden,
            "forbidden: that role cannot be given by this member".to_owned(),
        );
        assert_eq!(err(ok(&actor(A, Role::Admin), Role::Admin)), cannot);
        assert_eq!(err(ok(&actor(A, Role::Owner), Role::Owner)), cannot);
        // Permission is checked before anything about the user.
        let ghost = Subject { exists: false, role: None };
        assert_eq!(
            err(add_member(&actor(A, Role::Member), 10, 100, C, Role::Member, ghost, CONTACT)).0,
            ErrorCode::Forbidden
        );
    }

    #[test]
    fn add_member_needs_an_account_not_yet_in_a_group_with_room() {
        let owner = actor(A, Role::Owner);
        let ghost = Subject { exists: false, role: None };
        let in_group = |role| Subject { exists: true, role: Some(role) };
        // The same answers whether the user is a contact (an add) or not (an invitation).
        for reach in [CONTACT, STRANGER] {
            let add = |cap, subject| add_member(&owner, cap, 100, C, Role::Member, subject, reach);
            assert_eq!(err(add(10, ghost)), (ErrorCode::NotFound, "user not found".into()));
            assert_eq!(
                err(add(10, in_group(Role::Member))),
                (ErrorCode::Conflict, "conflict: already a member".into())
            );
            // n_members is 3: a cap of 3 is full, 4 has room for one more.
            assert_eq!(
                err(add(3, stranger())),
                (ErrorCode::Conflict, "conflict: the group is full".into())
            );
            assert!(add(4, stranger()).is_ok());
            // "already a member" wins over "full": the cap is about newcomers.
            assert_eq!(err(add(3, in_group(Role::Admin))).1, "conflict: already a member");
        }
    }

    #[test]
    fn a_contact_is_added_and_anyone_else_invited_once_within_their_cap() {
        let admin = actor(A, Role::Admin);
        let add = |reach| add_member(&admin, 10, 100, C, Role::Member, stranger(), reach);
        assert_eq!(
            add(CONTACT).expect("contact"),
            Addition::Member(GroupEffect::Add { user: C, role: Role::Member })
        );
        assert_eq!(
            add(STRANGER).expect("stranger"),
            Addition::Invite { user: C, role: Role::Member }
        );
        let owner = actor(A, Role::Owner);
        assert_eq!(
            add_member(&owner, 10, 100, C, Role::Admin, stranger(), STRANGER).expect("invite"),
            Addition::Invite { user: C, role: Role::Admin }
        );
        // One invitation per group; a contact is added even with one pending (it is dropped).
        let invited = Reach { invited: true, ..STRANGER };
        assert_eq!(err(add(invited)), (ErrorCode::Conflict, "conflict: already invited".into()));
        assert!(matches!(add(Reach { contact: true, ..invited }), Ok(Addition::Member(_))));
        // At most 100 pending per invitee; their cap does not limit adding a contact.
        assert!(add(Reach { n_pending: 99, ..STRANGER }).is_ok());
        let full = Reach { n_pending: 100, ..STRANGER };
        assert_eq!(
            err(add(full)),
            (ErrorCode::Conflict, "conflict: too many pending invitations".into())
        );
        assert!(matches!(add(Reach { contact: true, ..full }), Ok(Addition::Member(_))));
        // A deleted account, or one that blocks the actor, is an unknown user, contact or not.
        for reach in [CONTACT, STRANGER] {
            let refused = add(Reach { unreachable: true, ..reach });
            assert_eq!(err(refused), (ErrorCode::NotFound, "user not found".into()));
        }
    }

    #[test]
    fn mutes_locks_and_slow_mode_hold_back_members_not_moderators() {
        let now = 1_000_000;
        let message = append_of(A, msg(None));
        let react =
            append_of(A, NewEntry::Reaction { target: 2, emoji: "x".into(), remove: false });
        let delete = append_of(A, NewEntry::Delete { target: 2 });
        let muted = Poster { muted_until: Some(now + 5), ..Poster::member(Role::Member) };
        for a in [&message, &react] {
            assert!(matches!(
                admit_append(a, None, Some(muted), now),
                Err(StoreError::Muted { .. })
            ));
        }
        assert_eq!(admit_append(&delete, None, Some(muted), now).unwrap(), Admit::Append);
        let lapsed = Poster { muted_until: Some(now), ..muted };
        assert_eq!(admit_append(&message, None, Some(lapsed), now).unwrap(), Admit::Append);

        let locked = Poster { locked: true, ..Poster::member(Role::Member) };
        assert_eq!(err(admit_append(&message, None, Some(locked), now)).0, ErrorCode::Forbidden);
        assert_eq!(admit_append(&react, None, Some(locked), now).unwrap(), Admit::Append);
        let admin = Poster { role: Role::Admin, ..locked };
        assert_eq!(admit_append(&message, None, Some(admin), now).unwrap(), Admit::Append);

        let slow = Poster {
            slow_mode_secs: 10,
            last_post_at: Some(now - 4_000),
            ..Poster::member(Role::Member)
        };
        match admit_append(&message, None, Some(slow), now) {
            Err(StoreError::SlowMode { retry_after_ms }) => assert_eq!(retry_after_ms, 6_000),
            other => panic!("{other:?}"),
        }
        assert!(slow.stamps(&message.entry) && !slow.stamps(&react.entry));
        assert_eq!(admit_append(&react, None, Some(slow), now).unwrap(), Admit::Append);
        let due = Poster { last_post_at: Some(now - 10_000), ..slow };
        assert_eq!(admit_append(&message, None, Some(due), now).unwrap(), Admit::Append);
        let first = Poster { last_post_at: None, ..slow };
        assert_eq!(admit_append(&message, None, Some(first), now).unwrap(), Admit::Append);
        let slow_admin = Poster { role: Role::Admin, ..slow };
        assert!(!slow_admin.stamps(&message.entry));
        assert_eq!(admit_append(&message, None, Some(slow_admin), now).unwrap(), Admit::Append);
    }

    #[test]
    fn only_a_higher_role_mutes_or_bans() {
        let mute = |actor_role, user, subject| {
            change_group(
                &actor(A, actor_role),
                &GroupChange::Mute { user, until: Some(1) },
                subject,
            )
        };
        assert!(mute(Role::Admin, B, member(Role::Member)).is_ok());
        assert!(mute(Role::Owner, B, member(Role::Admin)).is_ok());
        assert_eq!(err(mute(Role::Admin, B, member(Role::Admin))).0, ErrorCode::Forbidden);
        assert_eq!(err(mute(Role::Admin, B, member(Role::Owner))).0, ErrorCode::Forbidden);
        assert_eq!(err(mute(Role::Member, B, member(Role::Member))).0, ErrorCode::Forbidden);
        assert_eq!(err(mute(Role::Owner, A, member(Role::Owner))).0, ErrorCode::BadRequest);
        let absent = Some(Subject { exists: true, role: None });
        assert_eq!(err(mute(Role::Admin, B, absent)).0, ErrorCode::NotFound);
        let ban = change_group(
            &actor(A, Role::Admin),
            &GroupChange::Ban { user: B },
            member(Role::Member),
        );
        assert_eq!(ban.unwrap().entry(), EntryBody::MemberRemoved { user: B, banned: true });
        let settings = GroupChange::Settings { slow_mode_secs: 5, locked: true };
        assert_eq!(
            err(change_group(&actor(A, Role::Member), &settings, None)).0,
            ErrorCode::Forbidden
        );
        assert!(change_group(&actor(A, Role::Admin), &settings, None).is_ok());
        assert_eq!(err(unban(&actor(A, Role::Member))).0, ErrorCode::Forbidden);
    }

    #[test]
    fn a_block_needs_another_live_user_and_room_and_repeats_quietly() {
        assert!(block(A, B, true, false, 0, 2).unwrap());
        assert!(!block(A, B, true, true, 2, 2).unwrap(), "blocking again writes nothing");
        assert_eq!(err(block(A, A, true, false, 0, 2)).0, ErrorCode::BadRequest);
        assert_eq!(
            err(block(A, B, false, false, 0, 2)),
            (ErrorCode::NotFound, "user not found".into())
        );
        assert_eq!(err(block(A, B, true, false, 2, 2)).0, ErrorCode::Conflict);
    }

    #[test]
    fn accepting_needs_the_invitation_and_a_group_with_members_and_room() {
        let group = |n_members| Some(GroupRow { kind: ConversationKind::Group, n_members });
        assert_eq!(
            accept_invitation(C, Some(Role::Admin), group(3), None, 10).expect("join"),
            GroupEffect::Add { user: C, role: Role::Admin }
        );
        assert_eq!(
            GroupEffect::Add { user: C, role: Role::Member }.entry(),
            EntryBody::MemberAdded { user: C, role: Role::Member }
        );
        assert_eq!(
            err(accept_invitation(C, None, group(3), None, 10)),
            (ErrorCode::NotFound, "invitation not found".into())
        );
        let gone = (ErrorCode::NotFound, "conversation not found".to_owned());
        assert_eq!(err(accept_invitation(C, Some(Role::Member), None, None, 10)), gone);
        assert_eq!(err(accept_invitation(C, Some(Role::Member), group(0), None, 10)), gone);
        let direct = Some(GroupRow { kind: ConversationKind::Direct, n_members: 2 });
        assert_eq!(err(accept_invitation(C, Some(Role::Member), direct, None, 10)), gone);
        assert_eq!(
            err(accept_invitation(C, Some(Role::Member), group(3), Some(Role::Member), 10)),
            (ErrorCode::Conflict, "conflict: already a member".into())
        );
        assert_eq!(
            err(accept_invitation(C, Some(Role::Member), group(3), None, 3)),
            (ErrorCode::Conflict, "conflict: the group is full".into())
        );
        assert!(decline_invitation(1).is_ok());
        assert_eq!(
            err(decline_invitation(0)),
            (ErrorCode::NotFound, "invitation not found".into())
        );
    }

    #[test]
    fn remove_member_by_rank_and_leaving() {
        let remove = |user| GroupChange::RemoveMember { user };
        let removed = |user, owner_left| GroupEffect::Remove { user, owner_left };
        // The owner removes anyone; an admin removes members only.
        for role in [Role::Member, Role::Admin] {
            assert_eq!(
                change_group(&actor(A, Role::Owner), &remove(B), member(role)).expect("owner"),
                removed(B, false)
            );
        }
        assert_eq!(
            change_group(&actor(A, Role::Admin), &remove(B), member(Role::Member)).expect("admin"),
            removed(B, false)
        );
        let denied =
            (ErrorCode::Forbidden, "forbidden: not allowed to remove this member".to_owned());
        for role in [Role::Admin, Role::Owner] {
            assert_eq!(err(change_group(&actor(A, Role::Admin), &remove(B), member(role))), denied);
        }
        assert_eq!(
            err(change_group(&actor(A, Role::Member), &remove(B), member(Role::Member))),
            denied
        );
        // Anyone may leave; an owner who leaves hands ownership on.
        assert_eq!(
            change_group(&actor(A, Role::Member), &remove(A), member(Role::Member)).expect("leave"),
            removed(A, false)
        );
        assert_eq!(
            change_group(&actor(A, Role::Owner), &remove(A), member(Role::Owner)).expect("leave"),
            removed(A, true)
        );
        // Someone who is not a member is not found, whoever asks.
        for role in [Role::Member, Role::Owner] {
            assert_eq!(
                err(change_group(&actor(A, role), &remove(C), outsider())),
                (ErrorCode::NotFound, "member not found".into())
            );
        }
    }

    #[test]
    fn only_the_owner_sets_roles_and_never_ownership() {
        let set = |user, role| GroupChange::SetRole { user, role };
        let owner = actor(A, Role::Owner);
        assert_eq!(
            change_group(&owner, &set(B, Role::Admin), member(Role::Member)).expect("promote"),
            GroupEffect::SetRole { user: B, role: Role::Admin }
        );
        assert_eq!(
            change_group(&owner, &set(B, Role::Member), member(Role::Admin)).expect("demote"),
            GroupEffect::SetRole { user: B, role: Role::Member }
        );
        assert_eq!(
            err(change_group(&actor(A, Role::Admin), &set(B, Role::Member), member(Role::Member))),
            (ErrorCode::Forbidden, "forbidden: only the owner changes roles".into())
        );
        let ownership = (
            ErrorCode::BadRequest,
            "bad request: ownership passes on only when the owner leaves".to_owned(),
        );
        assert_eq!(
            err(change_group(&owner, &set(B, Role::Owner), member(Role::Member))),
            ownership
        );
        assert_eq!(err(change_group(&owner, &set(A, Role::Admin), member(Role::Owner))), ownership);
        assert_eq!(
            err(change_group(&owner, &set(C, Role::Admin), outsider())),
            (ErrorCode::NotFound, "member not found".into())
        );
    }

    #[test]
    fn only_admins_set_the_title() {
        let set = GroupChange::SetTitle { title: "new".to_owned() };
        for role in [Role::Admin, Role::Owner] {
            assert_eq!(
                change_group(&actor(A, role), &set, None).expect("title"),
                GroupEffect::SetTitle { title: "new".to_owned() }
            );
        }
        assert_eq!(
            err(change_group(&actor(A, Role::Member), &set, None)),
            (ErrorCode::Forbidden, "forbidden: only admins change the title".into())
        );
    }

    #[test]
    fn a_change_that_names_a_user_needs_their_facts() {
        let remove = GroupChange::RemoveMember { user: C };
        assert_eq!(err(change_group(&actor(A, Role::Owner), &remove, None)).0, ErrorCode::Internal);
    }

    #[test]
    fn group_effects_record_their_entries() {
        assert_eq!(
            GroupEffect::Add { user: B, role: Role::Admin }.entry(),
            EntryBody::MemberAdded { user: B, role: Role::Admin }
        );
        assert_eq!(
            GroupEffect::Remove { user: B, owner_left: true }.entry(),
            EntryBody::MemberRemoved { user: B, banned: false }
        );
        assert_eq!(
            GroupEffect::SetRole { user: B, role: Role::Member }.entry(),
            EntryBody::RoleChanged { user: B, role: Role::Member }
        );
        assert_eq!(
            GroupEffect::SetTitle { title: "t".to_owned() }.entry(),
            EntryBody::TitleChanged { title: "t".to_owned() }
        );
        assert_eq!(hand_on(C), GroupEffect::SetRole { user: C, role: Role::Owner });
        assert_eq!(hand_on(C).entry(), EntryBody::RoleChanged { user: C, role: Role::Owner });
    }

    // ---- cursors and redaction ----

    fn update(delivered: Option<Seq>, read: Option<Seq>) -> CursorUpdate {
        CursorUpdate { conversation: CONV, user: A, delivered, read }
    }

    fn receipt(delivered_seq: Seq, read_seq: Seq) -> Option<Receipt> {
        Some(Receipt { conversation: CONV, user: A, delivered_seq, read_seq })
    }

    #[test]
    fn cursors_advance_clamped_and_read_implies_delivered() {
        assert_eq!(advance_cursors(&update(Some(5), None), 2, 1, 10), receipt(5, 1));
        assert_eq!(advance_cursors(&update(None, Some(4)), 2, 1, 10), receipt(4, 4));
        // Past the end is clamped to the last seq.
        assert_eq!(advance_cursors(&update(Some(50), Some(40)), 2, 1, 10), receipt(10, 10));
        // Never backwards, and no change is no receipt.
        assert_eq!(advance_cursors(&update(Some(1), Some(1)), 6, 3, 10), None);
        assert_eq!(advance_cursors(&update(None, None), 6, 3, 10), None);
        assert_eq!(advance_cursors(&update(Some(6), Some(2)), 6, 3, 10), None);
        assert_eq!(advance_cursors(&update(Some(3), Some(5)), 6, 3, 10), receipt(6, 5));
    }

    #[test]
    fn redaction_blanks_text_and_keeps_structure() {
        let original = r#"{"kind":"message","body":"secret","reply_to":3}"#;
        let (message, edit) = redacted(Some(original), 8).expect("redact");
        assert_eq!(
            serde_json::from_str::<EntryBody>(&message).expect("json"),
            EntryBody::Message {
                body: String::new(),
                reply_to: Some(3),
                attachments: Vec::new(),
                mentions: Vec::new()
            }
        );
        assert_eq!(
            serde_json::from_str::<EntryBody>(&edit).expect("json"),
            EntryBody::Edit { target: 8, body: String::new() }
        );
        for original in [None, Some("not json"), Some(r#"{"kind":"delete","target":1}"#)] {
            let (message, _) = redacted(original, 8).expect("redact");
            assert_eq!(
                serde_json::from_str::<EntryBody>(&message).expect("json"),
                EntryBody::Message {
                    body: String::new(),
                    reply_to: None,
                    attachments: Vec::new(),
                    mentions: Vec::new()
                }
            );
        }
    }

    fn media(id: &str, owner: UserId) -> MediaRecord {
        MediaRecord {
            id: id.to_owned(),
            owner,
            sha256: format!("sha-{id}"),
            size: 10,
            content_type: "image/png".to_owned(),
            name: Some(format!("{id}.png")),
            width: Some(4),
            height: Some(3),
            placeholder: None,
            thumbnail: Some(("t".to_owned(), natter_proto::Dimensions { width: 2, height: 1 })),
            created_at: 0,
        }
    }

    #[test]
    fn attachments_are_the_senders_own_uploads_in_order() {
        let ids = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let found = vec![media("b", A), media("a", A), media("c", B)];
        let got = attachments(A, &ids(&["a", "b"]), found.clone()).expect("own uploads");
        assert_eq!(got.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(got[0], media("a", A).attachment());
        assert_eq!(got[0].thumbnail, Some(natter_proto::Dimensions { width: 2, height: 1 }));
        assert!(got[0].url.is_none() && got[0].thumbnail_url.is_none());
        assert_eq!(attachments(A, &[], Vec::new()).expect("none"), Vec::new());
        // Someone else's upload reads like a missing one.
        let not_found = (ErrorCode::NotFound, "media not found".to_owned());
        assert_eq!(err(attachments(A, &ids(&["a", "c"]), found.clone())), not_found);
        assert_eq!(err(attachments(A, &ids(&["zz"]), found.clone())), not_found);
        assert_eq!(err(attachments(A, &ids(&["a", "a"]), found.clone())).0, ErrorCode::BadRequest);
        let many: Vec<String> = (0..11).map(|i| i.to_string()).collect();
        let all: Vec<MediaRecord> = many.iter().map(|id| media(id, A)).collect();
        assert_eq!(
            err(attachments(A, &many, all.clone())),
            (ErrorCode::BadRequest, "bad request: at most 10 attachments".to_owned())
        );
        assert_eq!(attachments(A, &many[..10], all).expect("ten").len(), 10);
    }

    #[test]
    fn a_message_carries_its_attachments() {
        let att = vec![media("a", A).attachment()];
        let body =
            append_body(&append_of(A, msg(None)), None, att.clone(), false).expect("message");
        assert_eq!(
            body,
            EntryBody::Message {
                body: "hi".to_owned(),
                reply_to: None,
                attachments: att,
                mentions: Vec::new()
            }
        );
    }

    #[test]
    fn redaction_drops_attachments() {
        let original = EntryBody::Message {
            body: "hi".to_owned(),
            reply_to: Some(1),
            attachments: vec![media("a", A).attachment()],
            mentions: Vec::new(),
        };
        let json = serde_json::to_string(&original).expect("json");
        let (message, _) = redacted(Some(&json), 2).expect("redacted");
        let body: EntryBody = serde_json::from_str(&message).expect("parses");
        assert_eq!(
            body,
            EntryBody::Message {
                body: String::new(),
                reply_to: Some(1),
                attachments: Vec::new(),
                mentions: Vec::new()
            }
        );
    }
}
