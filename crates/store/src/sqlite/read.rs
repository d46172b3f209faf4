//! Reading queries, run on the reader pool.

use natter_proto::{
    ConversationId, ConversationKind, ConversationSummary, DeviceId, Entry, EntryBody, Invitation,
    MessagePreview, MessageState, ReactionSummary, UserId,
    rest::{Avatar, Ban, Device, Member, User},
};
use rusqlite::{Connection, OptionalExtension, Row, params, types::Type};

use super::internal;
use crate::codec::{parse_conversation_kind, parse_role};
use crate::{ListCursor, Page, Principal, Range, Result, StoreError, TokenHash, UserRecord};

pub(super) fn user_by_handle(c: &Connection, handle: &str) -> Result<Option<UserRecord>> {
    c.prepare_cached(
        "SELECT id, handle, password_hash, suspended_until FROM users
         WHERE handle = ?1 AND deleted_at IS NULL",
    )
    .and_then(|mut st| {
        st.query_row(params![handle], |r| {
            Ok(UserRecord {
                id: UserId(r.get(0)?),
                handle: r.get(1)?,
                password_hash: r.get(2)?,
                suspended_until: r.get(3)?,
            })
        })
        .optional()
    })
    .map_err(internal)
}

pub(super) fn user_handle(c: &Connection, user: UserId) -> Result<Option<String>> {
    c.prepare_cached("SELECT handle FROM users WHERE id = ?1")
        .and_then(|mut st| st.query_row(params![user.0], |r| r.get(0)).optional())
        .map_err(internal)
}

/// The columns of a user with their profile, from `users u`.
pub(super) const USER_COLUMNS: &str = "u.id, u.handle, u.display_name, u.status_text, u.avatar,
     (SELECT m.thumb_sha256 IS NOT NULL FROM media m WHERE m.id = u.avatar),
     u.deleted_at IS NOT NULL";

pub(super) fn user_row(r: &Row<'_>) -> rusqlite::Result<User> {
    let avatar = r.get::<_, Option<String>>(4)?.map(|id| Avatar {
        id,
        url: None,
        thumbnail_url: None,
        has_thumbnail: false,
    });
    let has_thumbnail = r.get::<_, Option<bool>>(5)?.unwrap_or(false);
    Ok(User {
        user_id: UserId(r.get(0)?),
        handle: r.get(1)?,
        display_name: r.get(2)?,
        status_text: r.get(3)?,
        avatar: avatar.map(|a| Avatar { has_thumbnail, ..a }),
        deleted: r.get(6)?,
    })
}

pub(super) fn users(c: &Connection, ids: &[UserId]) -> Result<Vec<User>> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users u WHERE u.id = ?1");
    let mut st = c.prepare_cached(&sql).map_err(internal)?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(user) = st.query_row(params![id.0], user_row).optional().map_err(internal)? {
            out.push(user);
        }
    }
    Ok(out)
}

pub(super) fn search_users(
    c: &Connection,
    user: UserId,
    prefix: &str,
    everyone: bool,
    limit: u32,
) -> Result<Vec<User>> {
    let sql = format!(
        "SELECT {USER_COLUMNS} FROM users u
         WHERE u.id <> ?1 AND u.deleted_at IS NULL
           AND (lower(u.handle) LIKE ?2 ESCAPE '\\' OR u.display_key LIKE ?2 ESCAPE '\\')
           AND (?3 OR EXISTS (SELECT 1 FROM members a JOIN members b
                                ON b.conversation_id = a.conversation_id
                              WHERE a.user_id = ?1 AND b.user_id = u.id))
         ORDER BY lower(u.handle) LIMIT ?4"
    );
    let pattern = crate::codec::prefix_pattern(prefix);
    let mut st = c.prepare_cached(&sql).map_err(internal)?;
    let rows = st
        .query_map(params![user.0, pattern, everyone, i64::from(limit)], user_row)
        .map_err(internal)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(internal)
}

pub(super) fn contacts_of(c: &Connection, user: UserId) -> Result<Vec<UserId>> {
    let mut st = c
        .prepare_cached(
            "SELECT DISTINCT b.user_id FROM members a JOIN members b
               ON b.conversation_id = a.conversation_id
             WHERE a.user_id = ?1 AND b.user_id <> ?1",
        )
        .map_err(internal)?;
    let rows = st.query_map(params![user.0], |r| Ok(UserId(r.get(0)?))).map_err(internal)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(internal)
}

pub(super) fn blocks(c: &Connection, user: UserId) -> Result<Vec<UserId>> {
    let mut st = c
        .prepare_cached("SELECT blocked FROM blocks WHERE blocker = ?1 ORDER BY blocked")
        .map_err(internal)?;
    let rows = st.query_map(params![user.0], |r| Ok(UserId(r.get(0)?))).map_err(internal)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(internal)
}

pub(super) fn block_relations(c: &Connection, user: UserId) -> Result<Vec<UserId>> {
    let mut st = c
        .prepare_cached(
            "SELECT blocked FROM blocks WHERE blocker = ?1
             UNION SELECT blocker FROM blocks WHERE blocked = ?1",
        )
        .map_err(internal)?;
    let rows = st.query_map(params![user.0], |r| Ok(UserId(r.get(0)?))).map_err(internal)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(internal)
}

pub(super) fn devices(c: &Connection, user: UserId) -> Result<Vec<Device>> {
    let mut st = c
        .prepare_cached(
            "SELECT id, name, created_at, last_used_at FROM devices WHERE user_id = ?1 ORDER BY id",
        )
        .map_err(internal)?;
    let rows = st
        .query_map(params![user.0], |r| {
            Ok(Device {
                device_id: DeviceId(r.get(0)?),
                name: r.get(1)?,
                created_at: r.get(2)?,
                last_used_at: r.get(3)?,
            })
        })
        .map_err(internal)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(internal)
}

pub(super) fn password_hash(c: &Connection, user: UserId) -> Result<Option<String>> {
    c.prepare_cached("SELECT password_hash FROM users WHERE id = ?1")
        .and_then(|mut st| st.query_row(params![user.0], |r| r.get(0)).optional())
        .map_err(internal)
}

pub(super) fn authenticate(c: &Connection, token: &TokenHash) -> Result<Option<Principal>> {
    c.prepare_cached("SELECT user_id, id FROM devices WHERE token_hash = ?1")
        .and_then(|mut st| {
            st.query_row(params![&token[..]], |r| {
                Ok(Principal { user_id: UserId(r.get(0)?), device_id: DeviceId(r.get(1)?) })
            })
            .optional()
        })
        .map_err(internal)
}

const SUMMARY_COLUMNS: &str = "c.id, c.kind, c.title, m.role, c.last_seq, c.last_activity,
     m.delivered_seq, m.read_seq, m.user_id, c.slow_mode_secs, c.locked, m.muted_until";

fn summary(c: &Connection, r: &Row<'_>) -> rusqlite::Result<ConversationSummary> {
    let id = ConversationId(r.get(0)?);
    let kind: String = r.get(1)?;
    let role: String = r.get(3)?;
    let read_seq = r.get::<_, i64>(7)? as u64;
    let user: i64 = r.get(8)?;
    // Unread: messages after the read cursor written by someone else. System entries,
    // edits and reactions change what is shown but are not new messages to read.
    let unread: i64 = c
        .prepare_cached(
            "SELECT count(*) FROM entries
             WHERE conversation_id = ?1 AND seq > ?2 AND sender <> ?3 AND kind = 'message'",
        )?
        .query_row(params![id.0, read_seq as i64, user], |r| r.get(0))?;
    let kind = parse_conversation_kind(&kind);
    let peer = match kind {
        ConversationKind::Direct => c
            .prepare_cached(&format!(
                "SELECT {USER_COLUMNS} FROM members pm JOIN users u ON u.id = pm.user_id
                     WHERE pm.conversation_id = ?1 AND pm.user_id <> ?2"
            ))?
            .query_row(params![id.0, user], user_row)
            .optional()?,
        ConversationKind::Group => None,
    };
    let last_message = c
        .prepare_cached(
            "SELECT s.seq, s.sender, e.ts, s.body, s.edited_seq IS NOT NULL, s.deleted, e.body
             FROM message_state s JOIN entries e
               ON e.conversation_id = s.conversation_id AND e.seq = s.seq
             WHERE s.conversation_id = ?1 ORDER BY s.seq DESC LIMIT 1",
        )?
        .query_row(params![id.0], |r| {
            let text: String = r.get(3)?;
            let body: String = r.get(6)?;
            let body = serde_json::from_str(&body).map_err(|err| {
                rusqlite::Error::FromSqlConversionFailure(6, Type::Text, Box::new(err))
            })?;
            Ok(MessagePreview::new(
                r.get::<_, i64>(0)? as u64,
                UserId(r.get(1)?),
                r.get(2)?,
                &text,
                r.get(4)?,
                r.get(5)?,
                &body,
            ))
        })
        .optional()?;
    Ok(ConversationSummary {
        id,
        kind,
        title: r.get(2)?,
        role: parse_role(&role),
        last_seq: r.get::<_, i64>(4)? as u64,
        last_activity: r.get(5)?,
        delivered_seq: r.get::<_, i64>(6)? as u64,
        read_seq,
        unread: unread as u64,
        peer,
        last_message,
        slow_mode_secs: r.get(9)?,
        locked: r.get(10)?,
        muted_until: r.get(11)?,
    })
}

pub(super) fn conversation(
    c: &Connection,
    user: UserId,
    conv: ConversationId,
) -> Result<ConversationSummary> {
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS} FROM members m JOIN conversations c ON c.id = m.conversation_id
         WHERE m.user_id = ?1 AND m.conversation_id = ?2"
    );
    c.prepare_cached(&sql)
        .and_then(|mut st| st.query_row(params![user.0, conv.0], |r| summary(c, r)).optional())
        .map_err(internal)?
        .ok_or(StoreError::NotFound("conversation"))
}

pub(super) fn conversations(
    c: &Connection,
    user: UserId,
    before: Option<ListCursor>,
    limit: Option<u32>,
) -> Result<Vec<ConversationSummary>> {
    let (at, id) = before.map_or((i64::MAX, i64::MAX), |(at, id)| (at, id.0));
    let limit = limit.map_or(-1, i64::from);
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS} FROM members m JOIN conversations c ON c.id = m.conversation_id
         WHERE m.user_id = ?1 AND (c.last_activity, c.id) < (?2, ?3)
         ORDER BY c.last_activity DESC, c.id DESC LIMIT ?4"
    );
    let mut st = c.prepare_cached(&sql).map_err(internal)?;
    let rows = st.query_map(params![user.0, at, id, limit], |r| summary(c, r)).map_err(internal)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(internal)
}

pub(super) fn share_conversation(
    c: &Connection,
    user: UserId,
    others: &[UserId],
) -> Result<Vec<UserId>> {
    let mut st = c
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM members a JOIN members b
                 ON b.conversation_id = a.conversation_id
             WHERE a.user_id = ?1 AND b.user_id = ?2)
             AND NOT EXISTS (SELECT 1 FROM blocks
                 WHERE (blocker = ?1 AND blocked = ?2) OR (blocker = ?2 AND blocked = ?1))",
        )
        .map_err(internal)?;
    let mut shared = Vec::new();
    for other in others {
        let yes: bool = st.query_row(params![user.0, other.0], |r| r.get(0)).map_err(internal)?;
        if yes {
            shared.push(*other);
        }
    }
    Ok(shared)
}

pub(super) fn members(c: &Connection, conv: ConversationId) -> Result<Vec<Member>> {
    let mut st = c
        .prepare_cached(
            "SELECT m.user_id, u.handle, m.role, m.delivered_seq, m.read_seq, m.muted_until
             FROM members m JOIN users u ON u.id = m.user_id
             WHERE m.conversation_id = ?1 ORDER BY m.joined_seq, m.user_id",
        )
        .map_err(internal)?;
    let rows = st
        .query_map(params![conv.0], |r| {
            Ok(Member {
                user_id: UserId(r.get(0)?),
                handle: r.get(1)?,
                role: parse_role(&r.get::<_, String>(2)?),
                delivered_seq: r.get::<_, i64>(3)? as u64,
                read_seq: r.get::<_, i64>(4)? as u64,
                muted_until: r.get(5)?,
            })
        })
        .map_err(internal)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(internal)
}

pub(super) fn bans(c: &Connection, conv: ConversationId) -> Result<Vec<Ban>> {
    let mut st = c
        .prepare_cached(
            "SELECT user_id, banned_by, banned_at FROM group_bans
             WHERE conversation_id = ?1 ORDER BY user_id",
        )
        .map_err(internal)?;
    let rows = st
        .query_map(params![conv.0], |r| {
            Ok(Ban {
                user_id: UserId(r.get(0)?),
                banned_by: UserId(r.get(1)?),
                banned_at: r.get(2)?,
            })
        })
        .map_err(internal)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(internal)
}

pub(super) fn member_ids(c: &Connection, conv: ConversationId) -> Result<Vec<UserId>> {
    let mut st = c
        .prepare_cached("SELECT user_id FROM members WHERE conversation_id = ?1")
        .map_err(internal)?;
    let rows = st.query_map(params![conv.0], |r| Ok(UserId(r.get(0)?))).map_err(internal)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(internal)
}

const INVITATIONS: &str = "SELECT i.conversation_id, c.title, i.user_id, i.inviter, u.handle,
         i.role, i.invited_at
     FROM invitations i JOIN conversations c ON c.id = i.conversation_id
     JOIN users u ON u.id = i.inviter";

fn invitation_row(r: &Row<'_>) -> rusqlite::Result<Invitation> {
    Ok(Invitation {
        conversation: ConversationId(r.get(0)?),
        title: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
        user: UserId(r.get(2)?),
        inviter: UserId(r.get(3)?),
        inviter_handle: r.get(4)?,
        role: parse_role(&r.get::<_, String>(5)?),
        invited_at: r.get(6)?,
    })
}

/// `user`'s pending invitations, oldest first.
pub(super) fn invitations(c: &Connection, user: UserId) -> Result<Vec<Invitation>> {
    let sql =
        format!("{INVITATIONS} WHERE i.user_id = ?1 ORDER BY i.invited_at, i.conversation_id");
    let mut st = c.prepare_cached(&sql).map_err(internal)?;
    let rows = st.query_map(params![user.0], invitation_row).map_err(internal)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(internal)
}

/// `user`'s invitation to one group, if any (the writer reads back what it just made).
pub(super) fn invitation(
    c: &Connection,
    conv: ConversationId,
    user: UserId,
) -> Result<Option<Invitation>> {
    let sql = format!("{INVITATIONS} WHERE i.conversation_id = ?1 AND i.user_id = ?2");
    c.prepare_cached(&sql)
        .and_then(|mut st| st.query_row(params![conv.0, user.0], invitation_row).optional())
        .map_err(internal)
}

/// The pending invitations to one group (the writer reads back what it just made).
pub(super) fn group_invitations(c: &Connection, conv: ConversationId) -> Result<Vec<Invitation>> {
    let sql = format!("{INVITATIONS} WHERE i.conversation_id = ?1 ORDER BY i.user_id");
    let mut st = c.prepare_cached(&sql).map_err(internal)?;
    let rows = st.query_map(params![conv.0], invitation_row).map_err(internal)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(internal)
}

pub(super) fn entries(
    c: &Connection,
    conv: ConversationId,
    range: Range,
    limit: u32,
) -> Result<Page> {
    const COLUMNS: &str = "e.seq, e.id, e.sender, e.client_msg_id, e.ts, e.body,
         s.body, s.edited_seq, s.deleted";
    const FROM: &str = "FROM entries e LEFT JOIN message_state s
         ON s.conversation_id = e.conversation_id AND s.seq = e.seq";
    let (sql, bound) = match range {
        Range::After(after) => (
            format!(
                "SELECT {COLUMNS} {FROM} WHERE e.conversation_id = ?1 AND e.seq > ?2 ORDER BY e.seq ASC LIMIT ?3"
            ),
            after as i64,
        ),
        Range::Before(before) => (
            format!(
                "SELECT {COLUMNS} {FROM} WHERE e.conversation_id = ?1 AND e.seq < ?2 ORDER BY e.seq DESC LIMIT ?3"
            ),
            before as i64,
        ),
        Range::Latest => (
            format!(
                "SELECT {COLUMNS} {FROM} WHERE e.conversation_id = ?1 AND e.seq < ?2 ORDER BY e.seq DESC LIMIT ?3"
            ),
            i64::MAX,
        ),
    };
    // One row more than asked tells whether there is more.
    let mut st = c.prepare_cached(&sql).map_err(internal)?;
    let mut entries = st
        .query_map(params![conv.0, bound, i64::from(limit) + 1], |r| entry_row(conv, r))
        .map_err(internal)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(internal)?;
    let has_more = entries.len() > limit as usize;
    entries.truncate(limit as usize);
    // Seqs are contiguous, so descending pages are reversed into ascending order here.
    if !matches!(range, Range::After(_)) {
        entries.reverse();
    }
    add_reactions(c, conv, &mut entries)?;
    Ok(Page { entries, has_more })
}

pub(super) fn messages_by(
    c: &Connection,
    user: UserId,
    after: Option<(ConversationId, u64)>,
    limit: u32,
) -> Result<Vec<Entry>> {
    let (conv, seq) = after.map_or((i64::MIN, 0), |(c, s)| (c.0, s as i64));
    let mut st = c
        .prepare_cached(
            "SELECT e.seq, e.id, e.sender, e.client_msg_id, e.ts, e.body,
                    s.body, s.edited_seq, s.deleted, s.conversation_id
             FROM message_state s JOIN entries e
               ON e.conversation_id = s.conversation_id AND e.seq = s.seq
             WHERE s.sender = ?1 AND NOT s.deleted
               AND (s.conversation_id, s.seq) > (?2, ?3)
             ORDER BY s.conversation_id, s.seq LIMIT ?4",
        )
        .map_err(internal)?;
    let rows = st
        .query_map(params![user.0, conv, seq, i64::from(limit)], |r| {
            entry_row(ConversationId(r.get(9)?), r)
        })
        .map_err(internal)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(internal)
}

fn entry_row(conv: ConversationId, r: &Row<'_>) -> rusqlite::Result<Entry> {
    let body_json: String = r.get(5)?;
    let body: EntryBody = serde_json::from_str(&body_json)
        .map_err(|err| rusqlite::Error::FromSqlConversionFailure(5, Type::Text, Box::new(err)))?;
    let state = match &body {
        EntryBody::Message { .. } => Some(MessageState {
            body: r.get::<_, Option<String>>(6)?.unwrap_or_default(),
            edited_seq: r.get::<_, Option<i64>>(7)?.map(|s| s as u64),
            deleted: r.get::<_, Option<bool>>(8)?.unwrap_or(false),
            reactions: Vec::new(),
        }),
        _ => None,
    };
    Ok(Entry {
        conversation: conv,
        seq: r.get::<_, i64>(0)? as u64,
        id: r.get(1)?,
        sender: UserId(r.get(2)?),
        client_msg_id: r.get(3)?,
        ts: r.get(4)?,
        body,
        state,
    })
}

fn add_reactions(c: &Connection, conv: ConversationId, entries: &mut [Entry]) -> Result<()> {
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return Ok(());
    };
    let (lo, hi) = (first.seq, last.seq);
    let mut st = c
        .prepare_cached(
            "SELECT seq, emoji, user_id FROM reactions
             WHERE conversation_id = ?1 AND seq BETWEEN ?2 AND ?3 ORDER BY at_seq",
        )
        .map_err(internal)?;
    let rows = st
        .query_map(params![conv.0, lo as i64, hi as i64], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?, UserId(r.get(2)?)))
        })
        .map_err(internal)?;
    for row in rows {
        let (seq, emoji, user) = row.map_err(internal)?;
        let idx = (seq - lo) as usize;
        let Some(state) = entries.get_mut(idx).and_then(|e| e.state.as_mut()) else {
            continue;
        };
        match state.reactions.iter_mut().find(|r| r.emoji == emoji) {
            Some(summary) => summary.users.push(user),
            None => state.reactions.push(ReactionSummary { emoji, users: vec![user] }),
        }
    }
    Ok(())
}
