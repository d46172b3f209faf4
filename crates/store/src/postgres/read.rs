//! Reading queries, each on a pooled connection.

use std::collections::HashSet;

use natter_proto::{
    ConversationId, ConversationSummary, DeviceId, Entry, EntryBody, Invitation, MessagePreview,
    MessageState, ReactionSummary, UserId,
    rest::{Avatar, Ban, Device, Member, User},
};
use tokio_postgres::Row;

use super::write::{query, query_opt};
use super::{Conn, PgResult, internal};
use crate::codec::{parse_conversation_kind, parse_role};
use crate::{ListCursor, Page, Principal, Range, StoreError, TokenHash, UserRecord};

pub(super) async fn user_by_handle(c: &Conn, handle: &str) -> PgResult<Option<UserRecord>> {
    let row = query_opt(
        c,
        "SELECT id, handle, password_hash, suspended_until FROM users
         WHERE lower(handle) = lower($1) AND deleted_at IS NULL",
        &[&handle],
    )
    .await?;
    Ok(row.map(|r| UserRecord {
        id: UserId(r.get(0)),
        handle: r.get(1),
        password_hash: r.get(2),
        suspended_until: r.get(3),
    }))
}

pub(super) async fn user_handle(c: &Conn, user: UserId) -> PgResult<Option<String>> {
    let row = query_opt(c, "SELECT handle FROM users WHERE id = $1", &[&user.0]).await?;
    Ok(row.map(|r| r.get(0)))
}

/// The columns of a user with their profile, from `users u`.
pub(super) const USER_COLUMNS: &str = "u.id, u.handle, u.display_name, u.status_text, u.avatar,
     (SELECT m.thumb_sha256 IS NOT NULL FROM media m WHERE m.id = u.avatar),
     u.deleted_at IS NOT NULL";

/// A user from [`USER_COLUMNS`] starting at column `at`.
pub(super) fn user_at(r: &Row, at: usize) -> User {
    let has_thumbnail = r.get::<_, Option<bool>>(at + 5).unwrap_or(false);
    User {
        user_id: UserId(r.get(at)),
        handle: r.get(at + 1),
        display_name: r.get(at + 2),
        status_text: r.get(at + 3),
        avatar: r.get::<_, Option<String>>(at + 4).map(|id| Avatar {
            id,
            url: None,
            thumbnail_url: None,
            has_thumbnail,
        }),
        deleted: r.get(at + 6),
    }
}

fn user_row(r: &Row) -> User {
    user_at(r, 0)
}

pub(super) async fn users(c: &Conn, ids: &[UserId]) -> PgResult<Vec<User>> {
    let wanted: Vec<i64> = ids.iter().map(|u| u.0).collect();
    let sql = format!("SELECT {USER_COLUMNS} FROM users u WHERE u.id = ANY($1)");
    let rows = query(c, &sql, &[&wanted]).await?;
    let found: std::collections::HashMap<i64, User> =
        rows.iter().map(|r| (r.get::<_, i64>(0), user_row(r))).collect();
    Ok(wanted.iter().filter_map(|id| found.get(id).cloned()).collect())
}

pub(super) async fn search_users(
    c: &Conn,
    user: UserId,
    prefix: &str,
    everyone: bool,
    limit: u32,
) -> PgResult<Vec<User>> {
    let sql = format!(
        "SELECT {USER_COLUMNS} FROM users u
         WHERE u.id <> $1 AND u.deleted_at IS NULL
           AND (lower(u.handle) LIKE $2 OR u.display_key LIKE $2)
           AND ($3 OR EXISTS (SELECT 1 FROM members a JOIN members b
                                ON b.conversation_id = a.conversation_id
                              WHERE a.user_id = $1 AND b.user_id = u.id))
         ORDER BY lower(u.handle) LIMIT $4"
    );
    let pattern = crate::codec::prefix_pattern(prefix);
    let rows = query(c, &sql, &[&user.0, &pattern, &everyone, &i64::from(limit)]).await?;
    Ok(rows.iter().map(user_row).collect())
}

pub(super) async fn contacts_of(c: &Conn, user: UserId) -> PgResult<Vec<UserId>> {
    let rows = query(
        c,
        "SELECT DISTINCT b.user_id FROM members a JOIN members b
           ON b.conversation_id = a.conversation_id
         WHERE a.user_id = $1 AND b.user_id <> $1",
        &[&user.0],
    )
    .await?;
    Ok(rows.iter().map(|r| UserId(r.get(0))).collect())
}

pub(super) async fn devices(c: &Conn, user: UserId) -> PgResult<Vec<Device>> {
    let rows = query(
        c,
        "SELECT id, name, created_at, last_used_at FROM devices WHERE user_id = $1 ORDER BY id",
        &[&user.0],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| Device {
            device_id: DeviceId(r.get(0)),
            name: r.get(1),
            created_at: r.get(2),
            last_used_at: r.get(3),
        })
        .collect())
}

pub(super) async fn password_hash(c: &Conn, user: UserId) -> PgResult<Option<String>> {
    let row = query_opt(c, "SELECT password_hash FROM users WHERE id = $1", &[&user.0]).await?;
    Ok(row.map(|r| r.get(0)))
}

pub(super) async fn authenticate(c: &Conn, token: &TokenHash) -> PgResult<Option<Principal>> {
    let row = query_opt(c, "SELECT user_id, id FROM devices WHERE token_hash = $1", &[&&token[..]])
        .await?;
    Ok(row.map(|r| Principal { user_id: UserId(r.get(0)), device_id: DeviceId(r.get(1)) }))
}

/// Unread: messages after the read cursor written by someone else. System entries, edits and
/// reactions change what is shown but are not new messages to read.
const SUMMARY_COLUMNS: &str = "c.id, c.kind, c.title, m.role, c.last_seq, c.last_activity,
     m.delivered_seq, m.read_seq,
     (SELECT count(*) FROM entries e
      WHERE e.conversation_id = c.id AND e.seq > m.read_seq AND e.sender <> m.user_id
        AND e.kind = 'message'),
     p.id, p.handle, p.display_name, p.status_text, p.avatar, p.has_thumbnail, p.deleted,
     l.seq, l.sender, l.ts, l.text, l.edited, l.deleted, l.body,
     c.slow_mode_secs, c.locked, m.muted_until";

/// The caller's membership, the conversation, the other member of a direct one, and the
/// newest message.
const SUMMARY_FROM: &str = "FROM members m JOIN conversations c ON c.id = m.conversation_id
     LEFT JOIN LATERAL (
         SELECT u.id, u.handle, u.display_name, u.status_text, u.avatar,
                (SELECT m.thumb_sha256 IS NOT NULL FROM media m WHERE m.id = u.avatar)
                    AS has_thumbnail,
                u.deleted_at IS NOT NULL AS deleted
         FROM members pm JOIN users u ON u.id = pm.user_id
         WHERE c.kind = 'direct' AND pm.conversation_id = c.id AND pm.user_id <> m.user_id
         LIMIT 1) p ON true
     LEFT JOIN LATERAL (
         SELECT s.seq, s.sender, e.ts, s.body AS text, s.edited_seq IS NOT NULL AS edited,
                s.deleted, e.body
         FROM message_state s JOIN entries e
           ON e.conversation_id = s.conversation_id AND e.seq = s.seq
         WHERE s.conversation_id = c.id ORDER BY s.seq DESC LIMIT 1) l ON true";

fn summary(r: &Row) -> PgResult<ConversationSummary> {
    let kind: &str = r.get(1);
    let peer = r.get::<_, Option<i64>>(9).map(|_| user_at(r, 9));
    let last_message = match r.get::<_, Option<i64>>(16) {
        Some(seq) => {
            let body: EntryBody = serde_json::from_str(r.get::<_, &str>(22)).map_err(internal)?;
            Some(MessagePreview::new(
                seq as u64,
                UserId(r.get(17)),
                r.get(18),
                r.get(19),
                r.get(20),
                r.get(21),
                &body,
            ))
        }
        None => None,
    };
    Ok(ConversationSummary {
        id: ConversationId(r.get(0)),
        kind: parse_conversation_kind(kind),
        title: r.get(2),
        role: parse_role(r.get(3)),
        last_seq: r.get::<_, i64>(4) as u64,
        last_activity: r.get(5),
        delivered_seq: r.get::<_, i64>(6) as u64,
        read_seq: r.get::<_, i64>(7) as u64,
        unread: r.get::<_, i64>(8) as u64,
        peer,
        last_message,
        slow_mode_secs: r.get::<_, i32>(23) as u32,
        locked: r.get(24),
        muted_until: r.get(25),
    })
}

pub(super) async fn conversation(
    c: &Conn,
    user: UserId,
    conv: ConversationId,
) -> PgResult<ConversationSummary> {
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS} {SUMMARY_FROM} WHERE m.user_id = $1 AND m.conversation_id = $2"
    );
    let row = query_opt(c, &sql, &[&user.0, &conv.0]).await?;
    summary(&row.ok_or(StoreError::NotFound("conversation"))?)
}

pub(super) async fn conversations(
    c: &Conn,
    user: UserId,
    before: Option<ListCursor>,
    limit: Option<u32>,
) -> PgResult<Vec<ConversationSummary>> {
    let (at, id) = before.map_or((i64::MAX, i64::MAX), |(at, id)| (at, id.0));
    // LIMIT NULL is no limit.
    let limit = limit.map(i64::from);
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS} {SUMMARY_FROM}
         WHERE m.user_id = $1 AND (c.last_activity, c.id) < ($2, $3)
         ORDER BY c.last_activity DESC, c.id DESC LIMIT $4"
    );
    let rows = query(c, &sql, &[&user.0, &at, &id, &limit]).await?;
    rows.iter().map(summary).collect()
}

pub(super) async fn blocks(c: &Conn, user: UserId) -> PgResult<Vec<UserId>> {
    let rows =
        query(c, "SELECT blocked FROM blocks WHERE blocker = $1 ORDER BY blocked", &[&user.0])
            .await?;
    Ok(rows.iter().map(|r| UserId(r.get(0))).collect())
}

pub(super) async fn block_relations(c: &Conn, user: UserId) -> PgResult<Vec<UserId>> {
    let rows = query(
        c,
        "SELECT blocked FROM blocks WHERE blocker = $1
         UNION SELECT blocker FROM blocks WHERE blocked = $1",
        &[&user.0],
    )
    .await?;
    Ok(rows.iter().map(|r| UserId(r.get(0))).collect())
}

pub(super) async fn share_conversation(
    c: &Conn,
    user: UserId,
    others: &[UserId],
) -> PgResult<Vec<UserId>> {
    let ids: Vec<i64> = others.iter().map(|u| u.0).collect();
    let rows = query(
        c,
        "SELECT DISTINCT b.user_id FROM members a JOIN members b
             ON b.conversation_id = a.conversation_id
         WHERE a.user_id = $1 AND b.user_id = ANY($2)
           AND NOT EXISTS (SELECT 1 FROM blocks k
               WHERE (k.blocker = $1 AND k.blocked = b.user_id)
                  OR (k.blocker = b.user_id AND k.blocked = $1))",
        &[&user.0, &ids],
    )
    .await?;
    let shared: HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    Ok(others.iter().copied().filter(|u| shared.contains(&u.0)).collect())
}

pub(super) async fn members(c: &Conn, conv: ConversationId) -> PgResult<Vec<Member>> {
    let rows = query(
        c,
        "SELECT m.user_id, u.handle, m.role, m.delivered_seq, m.read_seq, m.muted_until
         FROM members m JOIN users u ON u.id = m.user_id
         WHERE m.conversation_id = $1 ORDER BY m.joined_seq, m.user_id",
        &[&conv.0],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| Member {
            user_id: UserId(r.get(0)),
            handle: r.get(1),
            role: parse_role(r.get(2)),
            delivered_seq: r.get::<_, i64>(3) as u64,
            read_seq: r.get::<_, i64>(4) as u64,
            muted_until: r.get(5),
        })
        .collect())
}

pub(super) async fn bans(c: &Conn, conv: ConversationId) -> PgResult<Vec<Ban>> {
    let rows = query(
        c,
        "SELECT user_id, banned_by, banned_at FROM group_bans
         WHERE conversation_id = $1 ORDER BY user_id",
        &[&conv.0],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| Ban {
            user_id: UserId(r.get(0)),
            banned_by: UserId(r.get(1)),
            banned_at: r.get(2),
        })
        .collect())
}

pub(super) async fn member_ids(c: &Conn, conv: ConversationId) -> PgResult<Vec<UserId>> {
    let rows =
        query(c, "SELECT user_id FROM members WHERE conversation_id = $1", &[&conv.0]).await?;
    Ok(rows.iter().map(|r| UserId(r.get(0))).collect())
}

const INVITATIONS: &str = "SELECT i.conversation_id, c.title, i.user_id, i.inviter, u.handle,
         i.role, i.invited_at
     FROM invitations i JOIN conversations c ON c.id = i.conversation_id
     JOIN users u ON u.id = i.inviter";

fn invitation_row(r: &Row) -> Invitation {
    Invitation {
        conversation: ConversationId(r.get(0)),
        title: r.get::<_, Option<String>>(1).unwrap_or_default(),
        user: UserId(r.get(2)),
        inviter: UserId(r.get(3)),
        inviter_handle: r.get(4),
        role: parse_role(r.get(5)),
        invited_at: r.get(6),
    }
}

/// `user`'s pending invitations, oldest first.
pub(super) async fn invitations(c: &Conn, user: UserId) -> PgResult<Vec<Invitation>> {
    let sql =
        format!("{INVITATIONS} WHERE i.user_id = $1 ORDER BY i.invited_at, i.conversation_id");
    let rows = query(c, &sql, &[&user.0]).await?;
    Ok(rows.iter().map(invitation_row).collect())
}

/// `user`'s invitation to one group, if any (the committer reads back what it just made).
pub(super) async fn invitation(
    c: &Conn,
    conv: ConversationId,
    user: UserId,
) -> PgResult<Option<Invitation>> {
    let sql = format!("{INVITATIONS} WHERE i.conversation_id = $1 AND i.user_id = $2");
    Ok(query_opt(c, &sql, &[&conv.0, &user.0]).await?.as_ref().map(invitation_row))
}

/// The pending invitations to one group (the committer reads back what it just made).
pub(super) async fn group_invitations(c: &Conn, conv: ConversationId) -> PgResult<Vec<Invitation>> {
    let sql = format!("{INVITATIONS} WHERE i.conversation_id = $1 ORDER BY i.user_id");
    let rows = query(c, &sql, &[&conv.0]).await?;
    Ok(rows.iter().map(invitation_row).collect())
}

pub(super) async fn entries(
    c: &Conn,
    conv: ConversationId,
    range: Range,
    limit: u32,
) -> PgResult<Page> {
    const SELECT: &str = "SELECT e.seq, e.id, e.sender, e.client_msg_id, e.ts, e.body,
         s.body, s.edited_seq, s.deleted
         FROM entries e LEFT JOIN message_state s
         ON s.conversation_id = e.conversation_id AND s.seq = e.seq";
    let (sql, bound) = match range {
        Range::After(after) => (
            format!(
                "{SELECT} WHERE e.conversation_id = $1 AND e.seq > $2 ORDER BY e.seq ASC LIMIT $3"
            ),
            after as i64,
        ),
        Range::Before(before) => (
            format!(
                "{SELECT} WHERE e.conversation_id = $1 AND e.seq < $2 ORDER BY e.seq DESC LIMIT $3"
            ),
            before.min(i64::MAX as u64) as i64,
        ),
        Range::Latest => (
            format!(
                "{SELECT} WHERE e.conversation_id = $1 AND e.seq < $2 ORDER BY e.seq DESC LIMIT $3"
            ),
            i64::MAX,
        ),
    };
    // One row more than asked tells whether there is more.
    let rows = query(c, &sql, &[&conv.0, &bound, &(i64::from(limit) + 1)]).await?;
    let mut entries = rows.iter().map(|r| entry_row(conv, r)).collect::<PgResult<Vec<_>>>()?;
    let has_more = entries.len() > limit as usize;
    entries.truncate(limit as usize);
    // Seqs are contiguous, so descending pages are reversed into ascending order here.
    if !matches!(range, Range::After(_)) {
        entries.reverse();
    }
    add_reactions(c, conv, &mut entries).await?;
    Ok(Page { entries, has_more })
}

pub(super) async fn messages_by(
    c: &Conn,
    user: UserId,
    after: Option<(ConversationId, u64)>,
    limit: u32,
) -> PgResult<Vec<Entry>> {
    let (conv, seq) = after.map_or((i64::MIN, 0), |(c, s)| (c.0, s as i64));
    let rows = query(
        c,
        "SELECT e.seq, e.id, e.sender, e.client_msg_id, e.ts, e.body,
                s.body, s.edited_seq, s.deleted, s.conversation_id
         FROM message_state s JOIN entries e
           ON e.conversation_id = s.conversation_id AND e.seq = s.seq
         WHERE s.sender = $1 AND NOT s.deleted AND (s.conversation_id, s.seq) > ($2, $3)
         ORDER BY s.conversation_id, s.seq LIMIT $4",
        &[&user.0, &conv, &seq, &i64::from(limit)],
    )
    .await?;
    rows.iter().map(|r| entry_row(ConversationId(r.get(9)), r)).collect()
}

fn entry_row(conv: ConversationId, r: &Row) -> PgResult<Entry> {
    let body: EntryBody = serde_json::from_str(r.get::<_, &str>(5)).map_err(internal)?;
    let state = match &body {
        EntryBody::Message { .. } => Some(MessageState {
            body: r.get::<_, Option<String>>(6).unwrap_or_default(),
            edited_seq: r.get::<_, Option<i64>>(7).map(|s| s as u64),
            deleted: r.get::<_, Option<bool>>(8).unwrap_or(false),
            reactions: Vec::new(),
        }),
        _ => None,
    };
    Ok(Entry {
        conversation: conv,
        seq: r.get::<_, i64>(0) as u64,
        id: r.get(1),
        sender: UserId(r.get(2)),
        client_msg_id: r.get(3),
        ts: r.get(4),
        body,
        state,
    })
}

async fn add_reactions(c: &Conn, conv: ConversationId, entries: &mut [Entry]) -> PgResult<()> {
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return Ok(());
    };
    let (lo, hi) = (first.seq, last.seq);
    let rows = query(
        c,
        "SELECT seq, emoji, user_id FROM reactions
         WHERE conversation_id = $1 AND seq BETWEEN $2 AND $3 ORDER BY at_seq",
        &[&conv.0, &(lo as i64), &(hi as i64)],
    )
    .await?;
    for r in rows {
        let (seq, emoji, user) =
            (r.get::<_, i64>(0) as u64, r.get::<_, String>(1), UserId(r.get(2)));
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
