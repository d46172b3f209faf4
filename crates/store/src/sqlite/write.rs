//! Writing jobs: each runs on the writer thread inside its own savepoint of a batch
//! transaction, and pushes the entries it appends to `out`. What a job may do is decided by
//! `crate::rules`; this file loads the facts a rule needs and applies the effect it returns.
//! The writer thread is the only writer, so what a job reads stays true until it commits.

use natter_proto::rest::ProfileUpdate;
use natter_proto::{Ack, Committed, ConversationId, DeviceId, EntryBody, Receipt, Role, UserId};
use rusqlite::{Connection, ErrorCode as SqliteCode, OptionalExtension, params};

use super::{internal, read};
use crate::codec::{
    Appended, changes_members, conversation_kind_str, kind_str, now_ms, parse_conversation_kind,
    parse_role, role_str,
};
use crate::rules::{self, Addition, Admit, Direct, GroupEffect, NewConversation};
use crate::search;
use crate::{
    Added, Append, Collected, CursorUpdate, GroupChange, MediaRecord, NewGroup, NewMedia, Result,
    StoreError, StoreLimits, TokenHash,
};

fn is_unique_violation(err: &rusqlite::Error) -> bool {
    matches!(err, rusqlite::Error::SqliteFailure(e, _) if e.code == SqliteCode::ConstraintViolation)
}

pub(super) fn role(c: &Connection, user: UserId, conv: ConversationId) -> Result<Option<Role>> {
    c.prepare_cached("SELECT role FROM members WHERE conversation_id = ?1 AND user_id = ?2")
        .and_then(|mut st| {
            st.query_row(params![conv.0, user.0], |r| r.get::<_, String>(0)).optional()
        })
        .map(|r| r.map(|s| parse_role(&s)))
        .map_err(internal)
}

pub(super) fn create_user(c: &Connection, handle: &str, hash: &str) -> Result<UserId> {
    match c.execute(
        "INSERT INTO users (handle, handle_key, password_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![handle, rules::handle_key(handle), hash, now_ms()],
    ) {
        Ok(_) => Ok(UserId(c.last_insert_rowid())),
        Err(err) if is_unique_violation(&err) => Err(rules::handle_taken()),
        Err(err) => Err(internal(err)),
    }
}

/// Gives accounts created before handle keys existed their key (at open, after the
/// migrations). Two old accounts with look-alike handles cannot both have one: the later is
/// left without (it still logs in; only new registrations are checked against it).
pub(super) fn backfill_handle_keys(c: &Connection) -> Result<()> {
    let rows: Vec<(i64, String)> = c
        .prepare("SELECT id, handle FROM users WHERE handle_key IS NULL ORDER BY id")
        .and_then(|mut st| {
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()
        })
        .map_err(internal)?;
    for (id, handle) in rows {
        let key = rules::handle_key(&handle);
        match c.execute("UPDATE users SET handle_key = ?1 WHERE id = ?2", params![key, id]) {
            Ok(_) => {}
            Err(err) if is_unique_violation(&err) => {
                tracing::warn!(user = id, %handle, "handle looks like an older account's; no key");
            }
            Err(err) => return Err(internal(err)),
        }
    }
    Ok(())
}

/// Indexes the live messages from before search (when its migration is applied): their
/// attachment names into `message_state`, their tokens into the index.
pub(super) fn backfill_search(c: &Connection) -> Result<()> {
    let rows: Vec<(i64, i64, String, String)> = c
        .prepare(
            "SELECT e.conversation_id, e.seq, s.body, e.body
             FROM entries e JOIN message_state s USING (conversation_id, seq)
             WHERE e.kind = 'message' AND s.deleted = 0",
        )
        .and_then(|mut st| {
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                .collect::<Result<_, _>>()
        })
        .map_err(internal)?;
    let tx = c.unchecked_transaction().map_err(internal)?;
    for (conv, seq, body, json) in rows {
        let (names, none) = search::names_in_json(&json);
        if !none {
            tx.execute(
                "UPDATE message_state SET has_attachment = 1, names = ?3
                 WHERE conversation_id = ?1 AND seq = ?2",
                params![conv, seq, names],
            )
            .map_err(internal)?;
        }
        let tokens = search::index_document(&body, &names);
        let doc = search::doc_id(ConversationId(conv), seq as u64);
        if let (Some(doc), false) = (doc, tokens.is_empty()) {
            tx.execute(
                "INSERT INTO search_index (rowid, tokens) VALUES (?1, ?2)",
                params![doc, tokens],
            )
            .map_err(internal)?;
        }
    }
    tx.commit().map_err(internal)
}

pub(super) fn create_device(
    c: &Connection,
    user: UserId,
    name: &str,
    token: &TokenHash,
) -> Result<DeviceId> {
    // A suspension committed while the login checked the password wins.
    let until: Option<i64> = c
        .prepare_cached("SELECT suspended_until FROM users WHERE id = ?1")
        .and_then(|mut st| st.query_row(params![user.0], |r| r.get(0)))
        .map_err(internal)?;
    if rules::suspended(until, now_ms()) {
        return Err(StoreError::Forbidden("the account is suspended"));
    }
    c.execute(
        "INSERT INTO devices (user_id, name, token_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![user.0, name, &token[..], now_ms()],
    )
    .map_err(internal)?;
    Ok(DeviceId(c.last_insert_rowid()))
}

pub(super) fn set_profile(c: &Connection, user: UserId, update: &ProfileUpdate) -> Result<()> {
    let cleared = |v: &str| (!v.is_empty()).then(|| v.to_owned());
    if let Some(name) = &update.display_name {
        let name = cleared(name);
        let key = name.as_deref().map(crate::codec::display_key);
        c.execute(
            "UPDATE users SET display_name = ?2, display_key = ?3 WHERE id = ?1",
            params![user.0, name, key],
        )
        .map_err(internal)?;
    }
    if let Some(status) = &update.status_text {
        c.execute(
            "UPDATE users SET status_text = ?2 WHERE id = ?1",
            params![user.0, cleared(status)],
        )
        .map_err(internal)?;
    }
    if let Some(avatar) = &update.avatar {
        let avatar = cleared(avatar);
        if let Some(id) = &avatar {
            let found: Option<String> = c
                .prepare_cached("SELECT content_type FROM media WHERE id = ?1 AND owner = ?2")
                .and_then(|mut st| st.query_row(params![id, user.0], |r| r.get(0)).optional())
                .map_err(internal)?;
            rules::avatar(found.as_deref())?;
        }
        c.execute("UPDATE users SET avatar = ?2 WHERE id = ?1", params![user.0, avatar])
            .map_err(internal)?;
    }
    Ok(())
}

pub(super) fn touch_device(c: &Connection, device: DeviceId, at: i64) -> Result<()> {
    c.execute("UPDATE devices SET last_used_at = ?2 WHERE id = ?1", params![device.0, at])
        .map_err(internal)?;
    Ok(())
}

pub(super) fn set_password(
    c: &Connection,
    user: UserId,
    hash: &str,
    keep: DeviceId,
) -> Result<Vec<DeviceId>> {
    c.execute("UPDATE users SET password_hash = ?2 WHERE id = ?1", params![user.0, hash])
        .map_err(internal)?;
    c.prepare("DELETE FROM devices WHERE user_id = ?1 AND id <> ?2 RETURNING id")
        .and_then(|mut st| {
            st.query_map(params![user.0, keep.0], |r| Ok(DeviceId(r.get(0)?)))?.collect()
        })
        .map_err(internal)
}

pub(super) fn delete_user(c: &Connection, user: UserId) -> Result<Vec<DeviceId>> {
    c.execute(
        "UPDATE users SET deleted_at = ?2, password_hash = '!', display_name = NULL,
             display_key = NULL, status_text = NULL, avatar = NULL
         WHERE id = ?1",
        params![user.0, now_ms()],
    )
    .map_err(internal)?;
    c.execute("DELETE FROM invitations WHERE user_id = ?1", params![user.0]).map_err(internal)?;
    c.prepare("DELETE FROM devices WHERE user_id = ?1 RETURNING id")
        .and_then(|mut st| st.query_map(params![user.0], |r| Ok(DeviceId(r.get(0)?)))?.collect())
        .map_err(internal)
}

pub(super) fn free_deleted_handles(c: &Connection, deleted_before: i64) -> Result<u64> {
    let n = c
        .execute(
            "UPDATE users SET handle = '~deleted-' || id, handle_key = NULL
             WHERE deleted_at < ?1 AND handle_key IS NOT NULL",
            params![deleted_before],
        )
        .map_err(internal)?;
    Ok(n as u64)
}

pub(super) fn unban(
    c: &Connection,
    actor: UserId,
    conv: ConversationId,
    user: UserId,
) -> Result<()> {
    let actor = rules::group_actor(actor, group_row(c, conv)?, role(c, actor, conv)?)?;
    rules::unban(&actor)?;
    c.prepare_cached("DELETE FROM group_bans WHERE conversation_id = ?1 AND user_id = ?2")
        .and_then(|mut st| st.execute(params![conv.0, user.0]))
        .map_err(internal)?;
    Ok(())
}

pub(super) fn block(c: &Connection, blocker: UserId, blocked: UserId, max: u32) -> Result<()> {
    let (exists, already, n): (bool, bool, i64) = c
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM users WHERE id = ?2 AND deleted_at IS NULL),
                    EXISTS (SELECT 1 FROM blocks WHERE blocker = ?1 AND blocked = ?2),
                    (SELECT count(*) FROM blocks WHERE blocker = ?1)",
        )
        .and_then(|mut st| {
            st.query_row(params![blocker.0, blocked.0], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        })
        .map_err(internal)?;
    if rules::block(blocker, blocked, exists, already, n as u64, max)? {
        c.prepare_cached("INSERT INTO blocks (blocker, blocked, created_at) VALUES (?1, ?2, ?3)")
            .and_then(|mut st| st.execute(params![blocker.0, blocked.0, now_ms()]))
            .map_err(internal)?;
    }
    Ok(())
}

pub(super) fn unblock(c: &Connection, blocker: UserId, blocked: UserId) -> Result<()> {
    c.prepare_cached("DELETE FROM blocks WHERE blocker = ?1 AND blocked = ?2")
        .and_then(|mut st| st.execute(params![blocker.0, blocked.0]))
        .map_err(internal)?;
    Ok(())
}

pub(super) fn revoke_device(c: &Connection, user: UserId, device: DeviceId) -> Result<()> {
    let n = c
        .execute("DELETE FROM devices WHERE id = ?1 AND user_id = ?2", params![device.0, user.0])
        .map_err(internal)?;
    if n == 0 { Err(StoreError::NotFound("device")) } else { Ok(()) }
}

pub(super) fn delete_device(c: &Connection, token: &TokenHash) -> Result<()> {
    c.execute("DELETE FROM devices WHERE token_hash = ?1", params![&token[..]])
        .map_err(internal)?;
    Ok(())
}

fn insert_member(
    c: &Connection,
    conv: ConversationId,
    user: UserId,
    role: Role,
    joined_seq: u64,
) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO members (conversation_id, user_id, role, joined_seq) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut st| st.execute(params![conv.0, user.0, role_str(role), joined_seq as i64]))
    .map_err(internal)?;
    c.prepare_cached("UPDATE conversations SET n_members = n_members + 1 WHERE id = ?1")
        .and_then(|mut st| st.execute(params![conv.0]))
        .map_err(internal)?;
    Ok(())
}

/// Writes what `rules` decided to create: the row, its members, the `created` entry.
fn insert_conversation(
    c: &Connection,
    out: &mut Vec<Committed>,
    new: NewConversation,
) -> Result<ConversationId> {
    let now = now_ms();
    c.execute(
        "INSERT INTO conversations (kind, title, direct_key, last_activity, created_at)
         VALUES (?1, ?2, ?3, ?4, ?4)",
        params![conversation_kind_str(new.kind), new.title, new.direct_key, now],
    )
    .map_err(internal)?;
    let conv = ConversationId(c.last_insert_rowid());
    for &(user, role) in &new.members {
        insert_member(c, conv, user, role, 1)?;
    }
    append_entry(c, out, conv, new.creator(), None, new.created(), now)?;
    Ok(conv)
}

pub(super) fn create_direct(
    c: &Connection,
    out: &mut Vec<Committed>,
    a: UserId,
    b: UserId,
) -> Result<(ConversationId, bool)> {
    let key = rules::direct_key(a, b)?;
    let (existing, b_exists): (Option<i64>, bool) = c
        .query_row(
            "SELECT (SELECT id FROM conversations WHERE direct_key = ?1),
                    EXISTS (SELECT 1 FROM users WHERE id = ?2 AND deleted_at IS NULL)
                    AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = ?2 AND blocked = ?3)",
            params![key, b.0, a.0],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(internal)?;
    match rules::create_direct(a, b, existing.map(ConversationId), b_exists)? {
        Direct::Exists(conv) => Ok((conv, false)),
        Direct::Create(new) => Ok((insert_conversation(c, out, new)?, true)),
    }
}

pub(super) fn create_group(
    c: &Connection,
    out: &mut Vec<Committed>,
    limits: &StoreLimits,
    owner: UserId,
    title: &str,
    members: &[UserId],
) -> Result<NewGroup> {
    let new = rules::create_group(owner, title, members, limits.max_group_members)?;
    let ids = serde_json::to_string(&new.other_ids()).map_err(internal)?;
    let n_found: i64 = c
        .query_row(
            "SELECT count(*) FROM users
             WHERE id IN (SELECT value FROM json_each(?1)) AND deleted_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = users.id AND blocked = ?2)",
            params![ids, owner.0],
            |r| r.get(0),
        )
        .map_err(internal)?;
    rules::others_exist(&new, n_found as u64)?;
    let mut st = c
        .prepare_cached(
            "SELECT DISTINCT b.user_id FROM members a JOIN members b
                 ON b.conversation_id = a.conversation_id
             WHERE a.user_id = ?1 AND b.user_id IN (SELECT value FROM json_each(?2))",
        )
        .map_err(internal)?;
    let contacts = st
        .query_map(params![owner.0, ids], |r| Ok(UserId(r.get(0)?)))
        .map_err(internal)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(internal)?;
    let mut st = c
        .prepare_cached(
            "SELECT user_id, count(*) FROM invitations
             WHERE user_id IN (SELECT value FROM json_each(?1)) GROUP BY user_id",
        )
        .map_err(internal)?;
    let pending = st
        .query_map(params![ids], |r| Ok((UserId(r.get(0)?), r.get::<_, i64>(1)? as u64)))
        .map_err(internal)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(internal)?;
    let group = rules::seat_or_invite(new, &contacts, &pending, limits.max_pending_invitations)?;
    let id = insert_conversation(c, out, group.conversation)?;
    if group.invited.is_empty() {
        return Ok(NewGroup { id, invitations: Vec::new() });
    }
    let now = now_ms();
    for &user in &group.invited {
        insert_invitation(c, id, user, owner, Role::Member, now)?;
    }
    Ok(NewGroup { id, invitations: read::group_invitations(c, id)? })
}

fn insert_invitation(
    c: &Connection,
    conv: ConversationId,
    user: UserId,
    inviter: UserId,
    role: Role,
    now: i64,
) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO invitations (conversation_id, user_id, inviter, role, invited_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut st| st.execute(params![conv.0, user.0, inviter.0, role_str(role), now]))
    .map_err(internal)?;
    Ok(())
}

pub(super) fn add_member(
    c: &Connection,
    out: &mut Vec<Committed>,
    limits: &StoreLimits,
    actor: UserId,
    conv: ConversationId,
    user: UserId,
    role: Role,
) -> Result<Added> {
    let actor = rules::group_actor(actor, group_row(c, conv)?, self::role(c, actor, conv)?)?;
    let subject = subject(c, conv, user)?;
    let reach = c
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM members a JOIN members b
                     ON b.conversation_id = a.conversation_id
                     WHERE a.user_id = ?1 AND b.user_id = ?2),
                    EXISTS (SELECT 1 FROM invitations WHERE conversation_id = ?3 AND user_id = ?2),
                    (SELECT count(*) FROM invitations WHERE user_id = ?2),
                    EXISTS (SELECT 1 FROM users WHERE id = ?2 AND deleted_at IS NOT NULL)
                    OR EXISTS (SELECT 1 FROM blocks WHERE blocker = ?2 AND blocked = ?1),
                    EXISTS (SELECT 1 FROM group_bans WHERE conversation_id = ?3 AND user_id = ?2)",
        )
        .and_then(|mut st| {
            st.query_row(params![actor.user.0, user.0, conv.0], |r| {
                Ok(rules::Reach {
                    contact: r.get(0)?,
                    invited: r.get(1)?,
                    n_pending: r.get::<_, i64>(2)? as u64,
                    unreachable: r.get(3)?,
                    banned: r.get(4)?,
                })
            })
        })
        .map_err(internal)?;
    let (cap, max_pending) = (limits.max_group_members, limits.max_pending_invitations);
    match rules::add_member(&actor, cap, max_pending, user, role, subject, reach)? {
        Addition::Member(effect) => {
            Ok(Added::Member(apply(c, out, conv, actor.user, &effect, now_ms())?))
        }
        Addition::Invite { user, role } => {
            insert_invitation(c, conv, user, actor.user, role, now_ms())?;
            let invitation = read::invitation(c, conv, user)?
                .ok_or_else(|| internal("the invitation just made is missing"))?;
            Ok(Added::Invited(invitation))
        }
    }
}

pub(super) fn accept_invitation(
    c: &Connection,
    out: &mut Vec<Committed>,
    cap: u32,
    user: UserId,
    conv: ConversationId,
) -> Result<Ack> {
    let offered = c
        .prepare_cached("SELECT role FROM invitations WHERE conversation_id = ?1 AND user_id = ?2")
        .and_then(|mut st| {
            st.query_row(params![conv.0, user.0], |r| r.get::<_, String>(0)).optional()
        })
        .map_err(internal)?
        .map(|s| parse_role(&s));
    let effect =
        rules::accept_invitation(user, offered, group_row(c, conv)?, role(c, user, conv)?, cap)?;
    apply(c, out, conv, user, &effect, now_ms())
}

pub(super) fn decline_invitation(c: &Connection, user: UserId, conv: ConversationId) -> Result<()> {
    let n = c
        .prepare_cached("DELETE FROM invitations WHERE conversation_id = ?1 AND user_id = ?2")
        .and_then(|mut st| st.execute(params![conv.0, user.0]))
        .map_err(internal)?;
    rules::decline_invitation(n as u64)
}

/// The message projection row at `seq`, if that seq is a message.
pub(super) fn message(
    c: &Connection,
    conv: ConversationId,
    seq: u64,
) -> Result<Option<rules::Message>> {
    c.prepare_cached(
        "SELECT sender, deleted FROM message_state WHERE conversation_id = ?1 AND seq = ?2",
    )
    .and_then(|mut st| {
        st.query_row(params![conv.0, seq as i64], |r| {
            Ok(rules::Message { sender: UserId(r.get(0)?), deleted: r.get(1)? })
        })
        .optional()
    })
    .map_err(internal)
}

/// The sender's [`rules::Poster`] facts as a member: role, mute, last post. The
/// conversation's come with its counters (`Counters`), read once per append; and a direct
/// conversation's blocks apart (`blocked_between`): folded into one statement with joins
/// and subqueries, these reads halved the writer's rate (docs/benchmarks.md, "Accounts and
/// moderation").
const POSTER_SQL: &str = "SELECT role, muted_until, last_post_at FROM members
     WHERE conversation_id = ?1 AND user_id = ?2";

/// A conversation's row as an append needs it: the counters `append_entry` advances, and
/// the facts of the rules (kind, settings, a direct conversation's key).
struct Counters {
    last_seq: i64,
    members_seq: i64,
    group: bool,
    slow_mode_secs: u32,
    locked: bool,
    direct_key: Option<String>,
}

fn counters(c: &Connection, conv: ConversationId) -> Result<Option<Counters>> {
    c.prepare_cached(
        "SELECT last_seq, members_seq, kind = 'group', slow_mode_secs, locked, direct_key
         FROM conversations WHERE id = ?1",
    )
    .and_then(|mut st| {
        st.query_row(params![conv.0], |r| {
            Ok(Counters {
                last_seq: r.get(0)?,
                members_seq: r.get(1)?,
                group: r.get(2)?,
                slow_mode_secs: r.get(3)?,
                locked: r.get(4)?,
                direct_key: r.get(5)?,
            })
        })
        .optional()
    })
    .map_err(internal)
}

/// Whether either of two users blocks the other.
fn blocked_between(c: &Connection, a: UserId, b: UserId) -> Result<bool> {
    c.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM blocks WHERE blocker = ?1 AND blocked = ?2)
             OR EXISTS (SELECT 1 FROM blocks WHERE blocker = ?2 AND blocked = ?1)",
    )
    .and_then(|mut st| st.query_row(params![a.0, b.0], |r| r.get(0)))
    .map_err(internal)
}

pub(super) fn append(c: &Connection, out: &mut Vec<Committed>, a: &Append) -> Result<Ack> {
    let earlier = c
        .prepare_cached(
            "SELECT seq, id, ts FROM entries
             WHERE conversation_id = ?1 AND sender = ?2 AND client_msg_id = ?3",
        )
        .and_then(|mut st| {
            st.query_row(params![a.conversation.0, a.sender.0, a.client_msg_id], |r| {
                let seq = r.get::<_, i64>(0)? as u64;
                Ok(rules::Earlier { seq, id: r.get(1)?, ts: r.get(2)? })
            })
            .optional()
        })
        .map_err(internal)?;
    let member = c
        .prepare_cached(POSTER_SQL)
        .and_then(|mut st| {
            st.query_row(params![a.conversation.0, a.sender.0], |r| {
                Ok((parse_role(&r.get::<_, String>(0)?), r.get(1)?, r.get(2)?))
            })
            .optional()
        })
        .map_err(internal)?;
    let conv = match member {
        Some(_) => counters(c, a.conversation)?,
        None => None,
    };
    let poster = match (member, &conv) {
        (Some((role, muted_until, last_post_at)), Some(conv)) => {
            let blocked =
                match conv.direct_key.as_deref().and_then(|k| rules::direct_peer(k, a.sender)) {
                    Some(peer) => blocked_between(c, a.sender, peer)?,
                    None => false,
                };
            Some(rules::Poster {
                role,
                blocked,
                group: conv.group,
                muted_until,
                last_post_at,
                slow_mode_secs: conv.slow_mode_secs,
                locked: conv.locked,
            })
        }
        _ => None,
    };
    let now = now_ms();
    if let Admit::Repeat(ack) = rules::admit_append(a, earlier, poster, now)? {
        return Ok(ack);
    }
    let poster = poster.ok_or_else(|| internal("an admitted append has no poster"))?;
    let target = match rules::append_target(&a.entry) {
        Some(seq) => message(c, a.conversation, seq)?,
        None => None,
    };
    let ids = rules::attachment_ids(&a.entry);
    let found = match rules::media_to_load(ids) {
        [] => Vec::new(),
        load => media_rows(c, load)?,
    };
    let attachments = rules::attachments(a.sender, ids, found)?;
    let mut body = rules::append_body(a, target, attachments, poster.moderates())?;
    if let Some((ids, keys)) = rules::mentions_to_resolve(&a.entry)? {
        body = rules::with_mentions(body, mentioned(c, a.conversation, &ids, &keys)?);
    }
    let id = Some(a.client_msg_id.as_str());
    let counters = conv.map(|k| (k.last_seq, k.members_seq));
    let ack = append_entry_at(c, out, a.conversation, a.sender, id, body, now, counters)?;
    if poster.stamps(&a.entry) {
        c.prepare_cached(
            "UPDATE members SET last_post_at = ?3 WHERE conversation_id = ?1 AND user_id = ?2",
        )
        .and_then(|mut st| st.execute(params![a.conversation.0, a.sender.0, now]))
        .map_err(internal)?;
    }
    for media in ids {
        c.prepare_cached(
            "INSERT OR IGNORE INTO media_refs (media_id, conversation_id, seq) VALUES (?1, ?2, ?3)",
        )
        .and_then(|mut st| st.execute(params![media, a.conversation.0, ack.seq as i64]))
        .map_err(internal)?;
    }
    Ok(ack)
}

/// The members of `conv` among the users `ids` and the handle keys `keys`.
fn mentioned(
    c: &Connection,
    conv: ConversationId,
    ids: &[i64],
    keys: &[String],
) -> Result<Vec<UserId>> {
    let ids = serde_json::to_string(ids).map_err(internal)?;
    let keys = serde_json::to_string(keys).map_err(internal)?;
    c.prepare_cached(
        "SELECT m.user_id FROM members m JOIN users u ON u.id = m.user_id
         WHERE m.conversation_id = ?1
           AND (m.user_id IN (SELECT value FROM json_each(?2))
                OR u.handle_key IN (SELECT value FROM json_each(?3)))",
    )
    .and_then(|mut st| {
        st.query_map(params![conv.0, ids, keys], |r| Ok(UserId(r.get(0)?)))?.collect()
    })
    .map_err(internal)
}

const MEDIA_COLUMNS: &str = "id, owner, sha256, size, content_type, name, width, height, \
     placeholder, thumb_sha256, thumb_width, thumb_height, created_at";

fn media_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<MediaRecord> {
    let thumb: Option<String> = r.get(9)?;
    let dims = |w: Option<i64>, h: Option<i64>| match (w, h) {
        (Some(width), Some(height)) => {
            Some(natter_proto::Dimensions { width: width as u32, height: height as u32 })
        }
        _ => None,
    };
    Ok(MediaRecord {
        id: r.get(0)?,
        owner: UserId(r.get(1)?),
        sha256: r.get(2)?,
        size: r.get::<_, i64>(3)? as u64,
        content_type: r.get(4)?,
        name: r.get(5)?,
        width: r.get::<_, Option<i64>>(6)?.map(|v| v as u32),
        height: r.get::<_, Option<i64>>(7)?.map(|v| v as u32),
        placeholder: r.get(8)?,
        thumbnail: thumb.zip(dims(r.get(10)?, r.get(11)?)),
        created_at: r.get(12)?,
    })
}

/// The media rows of those of `ids` that exist.
pub(super) fn media_rows(c: &Connection, ids: &[String]) -> Result<Vec<MediaRecord>> {
    let json = serde_json::to_string(ids).map_err(internal)?;
    let sql =
        format!("SELECT {MEDIA_COLUMNS} FROM media WHERE id IN (SELECT value FROM json_each(?1))");
    c.prepare_cached(&sql)
        .and_then(|mut st| st.query_map(params![json], media_row)?.collect())
        .map_err(internal)
}

pub(super) fn media_of(
    c: &Connection,
    user: UserId,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<MediaRecord>> {
    let sql = format!(
        "SELECT {MEDIA_COLUMNS} FROM media WHERE owner = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
    );
    c.prepare_cached(&sql)
        .and_then(|mut st| {
            st.query_map(params![user.0, after.unwrap_or(""), i64::from(limit)], media_row)?
                .collect()
        })
        .map_err(internal)
}

pub(super) fn media_usage(c: &Connection, user: UserId) -> Result<u64> {
    c.prepare_cached("SELECT coalesce(sum(size), 0) FROM media WHERE owner = ?1")
        .and_then(|mut st| st.query_row(params![user.0], |r| r.get::<_, i64>(0)))
        .map(|n| n as u64)
        .map_err(internal)
}

pub(super) fn media_access(c: &Connection, user: UserId, id: &str) -> Result<bool> {
    c.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM media WHERE id = ?1 AND owner = ?2)
             OR EXISTS (SELECT 1 FROM media_refs r JOIN members m
                            ON m.conversation_id = r.conversation_id
                        WHERE r.media_id = ?1 AND m.user_id = ?2)",
    )
    .and_then(|mut st| st.query_row(params![id, user.0], |r| r.get(0)))
    .map_err(internal)
}

pub(super) fn create_media(c: &Connection, m: &NewMedia) -> Result<()> {
    rules::within_quota(media_usage(c, m.owner)?, m.size, m.quota_bytes)?;
    let now = now_ms();
    let upsert =
        "INSERT INTO blobs (sha256, size, created_at, orphaned_at) VALUES (?1, ?2, ?3, NULL)
         ON CONFLICT (sha256) DO UPDATE SET orphaned_at = NULL";
    c.prepare_cached(upsert)
        .and_then(|mut st| st.execute(params![m.sha256, m.size as i64, now]))
        .map_err(internal)?;
    if let Some(t) = &m.thumbnail {
        c.prepare_cached(upsert)
            .and_then(|mut st| st.execute(params![t.sha256, t.size as i64, now]))
            .map_err(internal)?;
    }
    let thumb = m.thumbnail.as_ref();
    c.prepare_cached(
        "INSERT INTO media (id, owner, sha256, size, content_type, name, width, height,
             placeholder, thumb_sha256, thumb_width, thumb_height, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )
    .and_then(|mut st| {
        st.execute(params![
            m.id,
            m.owner.0,
            m.sha256,
            m.size as i64,
            m.content_type,
            m.name,
            m.width,
            m.height,
            m.placeholder,
            thumb.map(|t| &t.sha256),
            thumb.map(|t| t.width),
            thumb.map(|t| t.height),
            now
        ])
    })
    .map_err(|err| {
        if is_unique_violation(&err) {
            StoreError::Conflict("media id is taken")
        } else {
            internal(err)
        }
    })?;
    Ok(())
}

pub(super) fn collect_media(
    c: &Connection,
    unattached_before: i64,
    orphaned_before: i64,
) -> Result<Collected> {
    let media = c
        .execute(
            "DELETE FROM media WHERE created_at < ?1
                 AND NOT EXISTS (SELECT 1 FROM media_refs r WHERE r.media_id = media.id)
                 AND NOT EXISTS (SELECT 1 FROM users u WHERE u.avatar = media.id)",
            params![unattached_before],
        )
        .map_err(internal)? as u64;
    let unreferenced = "NOT EXISTS (SELECT 1 FROM media m WHERE m.sha256 = blobs.sha256)
         AND NOT EXISTS (SELECT 1 FROM media m WHERE m.thumb_sha256 = blobs.sha256)";
    c.execute(
        &format!("UPDATE blobs SET orphaned_at = ?1 WHERE orphaned_at IS NULL AND {unreferenced}"),
        params![now_ms()],
    )
    .map_err(internal)?;
    let blobs = c
        .prepare(&format!(
            "DELETE FROM blobs WHERE orphaned_at <= ?1 AND {unreferenced} RETURNING sha256"
        ))
        .and_then(|mut st| st.query_map(params![orphaned_before], |r| r.get(0))?.collect())
        .map_err(internal)?;
    Ok(Collected { media, blobs })
}

pub(super) fn change_group(
    c: &Connection,
    out: &mut Vec<Committed>,
    actor: UserId,
    conv: ConversationId,
    change: &GroupChange,
) -> Result<Ack> {
    let actor = rules::group_actor(actor, group_row(c, conv)?, role(c, actor, conv)?)?;
    let subject = match rules::subject_of(change) {
        Some(user) => Some(subject(c, conv, user)?),
        None => None,
    };
    let effect = rules::change_group(&actor, change, subject)?;
    let now = now_ms();
    let ack = apply(c, out, conv, actor.user, &effect, now)?;
    if let GroupEffect::Remove { owner_left: true, .. } = effect {
        // The longest-standing admin, else member, takes over.
        let heir: Option<i64> = c
            .query_row(
                "SELECT user_id FROM members WHERE conversation_id = ?1
                 ORDER BY role = 'admin' DESC, joined_seq, user_id LIMIT 1",
                params![conv.0],
                |r| r.get(0),
            )
            .optional()
            .map_err(internal)?;
        match heir {
            Some(heir) => {
                apply(c, out, conv, actor.user, &rules::hand_on(UserId(heir)), now)?;
            }
            None => {
                c.execute("DELETE FROM invitations WHERE conversation_id = ?1", params![conv.0])
                    .map_err(internal)?;
            }
        }
    }
    Ok(ack)
}

/// The conversation row a group change (or an accepted invitation) reads first.
fn group_row(c: &Connection, conv: ConversationId) -> Result<Option<rules::GroupRow>> {
    c.prepare_cached("SELECT kind, n_members FROM conversations WHERE id = ?1")
        .and_then(|mut st| {
            st.query_row(params![conv.0], |r| {
                let kind = parse_conversation_kind(&r.get::<_, String>(0)?);
                Ok(rules::GroupRow { kind, n_members: r.get::<_, i64>(1)? as u64 })
            })
            .optional()
        })
        .map_err(internal)
}

/// The facts of the user a group change names.
fn subject(c: &Connection, conv: ConversationId, user: UserId) -> Result<rules::Subject> {
    c.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM users WHERE id = ?2),
                (SELECT role FROM members WHERE conversation_id = ?1 AND user_id = ?2)",
    )
    .and_then(|mut st| {
        st.query_row(params![conv.0, user.0], |r| {
            let role = r.get::<_, Option<String>>(1)?;
            Ok(rules::Subject { exists: r.get(0)?, role: role.as_deref().map(parse_role) })
        })
    })
    .map_err(internal)
}

/// Appends the entry of a group change and writes its rows.
fn apply(
    c: &Connection,
    out: &mut Vec<Committed>,
    conv: ConversationId,
    actor: UserId,
    effect: &GroupEffect,
    now: i64,
) -> Result<Ack> {
    let ack = append_entry(c, out, conv, actor, None, effect.entry(), now)?;
    match effect {
        GroupEffect::Add { user, role } => {
            insert_member(c, conv, *user, *role, ack.seq)?;
            c.prepare_cached("DELETE FROM invitations WHERE conversation_id = ?1 AND user_id = ?2")
                .and_then(|mut st| st.execute(params![conv.0, user.0]))
                .map_err(internal)?;
        }
        GroupEffect::Remove { user, .. } => {
            c.execute(
                "DELETE FROM members WHERE conversation_id = ?1 AND user_id = ?2",
                params![conv.0, user.0],
            )
            .map_err(internal)?;
            c.execute(
                "UPDATE conversations SET n_members = n_members - 1 WHERE id = ?1",
                params![conv.0],
            )
            .map_err(internal)?;
        }
        GroupEffect::SetRole { user, role } => {
            c.execute(
                "UPDATE members SET role = ?3 WHERE conversation_id = ?1 AND user_id = ?2",
                params![conv.0, user.0, role_str(*role)],
            )
            .map_err(internal)?;
        }
        GroupEffect::SetTitle { title } => {
            c.execute("UPDATE conversations SET title = ?2 WHERE id = ?1", params![conv.0, title])
                .map_err(internal)?;
        }
        GroupEffect::Mute { user, until } => {
            c.execute(
                "UPDATE members SET muted_until = ?3 WHERE conversation_id = ?1 AND user_id = ?2",
                params![conv.0, user.0, until],
            )
            .map_err(internal)?;
        }
        GroupEffect::Ban { user } => {
            let n = c
                .execute(
                    "DELETE FROM members WHERE conversation_id = ?1 AND user_id = ?2",
                    params![conv.0, user.0],
                )
                .map_err(internal)?;
            c.execute(
                "UPDATE conversations SET n_members = n_members - ?2 WHERE id = ?1",
                params![conv.0, n as i64],
            )
            .map_err(internal)?;
            c.execute(
                "DELETE FROM invitations WHERE conversation_id = ?1 AND user_id = ?2",
                params![conv.0, user.0],
            )
            .map_err(internal)?;
            c.execute(
                "INSERT OR REPLACE INTO group_bans (conversation_id, user_id, banned_by, banned_at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![conv.0, user.0, actor.0, now],
            )
            .map_err(internal)?;
        }
        GroupEffect::Settings { slow_mode_secs, locked } => {
            c.execute(
                "UPDATE conversations SET slow_mode_secs = ?2, locked = ?3 WHERE id = ?1",
                params![conv.0, slow_mode_secs, locked],
            )
            .map_err(internal)?;
        }
    }
    Ok(ack)
}

/// Appends one entry at `last_seq + 1` and keeps the message projection in step.
pub(super) fn append_entry(
    c: &Connection,
    out: &mut Vec<Committed>,
    conv: ConversationId,
    sender: UserId,
    client_msg_id: Option<&str>,
    body: EntryBody,
    now: i64,
) -> Result<Ack> {
    append_entry_at(c, out, conv, sender, client_msg_id, body, now, None)
}

/// [`append_entry`] with the conversation's `(last_seq, members_seq)` when the caller has
/// read them already in this transaction.
#[allow(clippy::too_many_arguments)]
fn append_entry_at(
    c: &Connection,
    out: &mut Vec<Committed>,
    conv: ConversationId,
    sender: UserId,
    client_msg_id: Option<&str>,
    body: EntryBody,
    now: i64,
    counters: Option<(i64, i64)>,
) -> Result<Ack> {
    let (last, members_seq): (i64, i64) = match counters {
        Some(counters) => counters,
        None => c
            .prepare_cached("SELECT last_seq, members_seq FROM conversations WHERE id = ?1")
            .and_then(|mut st| st.query_row(params![conv.0], |r| Ok((r.get(0)?, r.get(1)?))))
            .map_err(internal)?,
    };
    let seq = last as u64 + 1;
    let members_seq = if changes_members(&body) { seq } else { members_seq as u64 };
    let id = uuid::Uuid::now_v7().to_string();
    let json = serde_json::to_string(&body).map_err(internal)?;
    let target = body.target().map(|t| t as i64);
    c.prepare_cached(
        "INSERT INTO entries
             (conversation_id, seq, id, sender, client_msg_id, ts, kind, target, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .and_then(|mut st| {
        st.execute(params![
            conv.0,
            seq as i64,
            id,
            sender.0,
            client_msg_id,
            now,
            kind_str(&body),
            target,
            json
        ])
    })
    .map_err(internal)?;
    c.prepare_cached(
        "UPDATE conversations SET last_seq = ?2, last_activity = ?3, members_seq = ?4 WHERE id = ?1",
    )
    .and_then(|mut st| st.execute(params![conv.0, seq as i64, now, members_seq as i64]))
    .map_err(internal)?;
    project(c, conv, seq, sender, now, &body)?;
    index_search(c, conv, seq, &body)?;
    let appended =
        Appended { conversation: conv, seq, id, sender, ts: now, client_msg_id, body, members_seq };
    Ok(appended.push(out))
}

/// Keeps the search index equal to the live messages' text (issue 15; `crate::search`):
/// FTS5 holds a live message's folded tokens under `search::doc_id`, made again on an edit
/// and removed on a deletion. `message_state` (which `project` has just written) holds the
/// text, time and attachment names that hits and filters read.
fn index_search(c: &Connection, conv: ConversationId, seq: u64, body: &EntryBody) -> Result<()> {
    let (target, text) = match body {
        EntryBody::Message { body, attachments, .. } => {
            (seq, Some(search::index_document(body, &search::attachment_names(attachments))))
        }
        EntryBody::Edit { target, body } => {
            let names: String = c
                .prepare_cached(
                    "SELECT names FROM message_state WHERE conversation_id = ?1 AND seq = ?2",
                )
                .and_then(|mut st| st.query_row(params![conv.0, *target as i64], |r| r.get(0)))
                .map_err(internal)?;
            (*target, Some(search::index_document(body, &names)))
        }
        EntryBody::Delete { target } => (*target, None),
        _ => return Ok(()),
    };
    let Some(doc) = search::doc_id(conv, target) else {
        tracing::warn!(conversation = conv.0, seq = target, "past what search can index");
        return Ok(());
    };
    if !matches!(body, EntryBody::Message { .. }) {
        c.prepare_cached("DELETE FROM search_index WHERE rowid = ?1")
            .and_then(|mut st| st.execute(params![doc]))
            .map_err(internal)?;
    }
    if let Some(tokens) = text.filter(|t| !t.is_empty()) {
        c.prepare_cached("INSERT INTO search_index (rowid, tokens) VALUES (?1, ?2)")
            .and_then(|mut st| st.execute(params![doc, tokens]))
            .map_err(internal)?;
    }
    Ok(())
}

/// Keeps `message_state` and `reactions` equal to the log's effect.
fn project(
    c: &Connection,
    conv: ConversationId,
    seq: u64,
    sender: UserId,
    ts: i64,
    body: &EntryBody,
) -> Result<()> {
    let (sql, args): (&str, Vec<rusqlite::types::Value>) = match body {
        EntryBody::Message { body, attachments, .. } => (
            "INSERT INTO message_state (conversation_id, seq, sender, body, ts, has_attachment, names)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            vec![
                conv.0.into(),
                (seq as i64).into(),
                sender.0.into(),
                body.clone().into(),
                ts.into(),
                i64::from(!attachments.is_empty()).into(),
                search::attachment_names(attachments).into(),
            ],
        ),
        EntryBody::Edit { target, body } => (
            "UPDATE message_state SET body = ?3, edited_seq = ?4 WHERE conversation_id = ?1 AND seq = ?2",
            vec![conv.0.into(), (*target as i64).into(), body.clone().into(), (seq as i64).into()],
        ),
        EntryBody::Delete { target } => (
            "UPDATE message_state SET body = '', deleted = 1 WHERE conversation_id = ?1 AND seq = ?2",
            vec![conv.0.into(), (*target as i64).into()],
        ),
        EntryBody::Reaction { target, emoji, remove: false } => (
            "INSERT OR IGNORE INTO reactions (conversation_id, seq, emoji, user_id, at_seq)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            vec![
                conv.0.into(),
                (*target as i64).into(),
                emoji.clone().into(),
                sender.0.into(),
                (seq as i64).into(),
            ],
        ),
        EntryBody::Reaction { target, emoji, remove: true } => (
            "DELETE FROM reactions WHERE conversation_id = ?1 AND seq = ?2 AND emoji = ?3 AND user_id = ?4",
            vec![conv.0.into(), (*target as i64).into(), emoji.clone().into(), sender.0.into()],
        ),
        _ => return Ok(()),
    };
    c.prepare_cached(sql)
        .and_then(|mut st| st.execute(rusqlite::params_from_iter(args)))
        .map_err(internal)?;
    if let EntryBody::Delete { target } = body {
        redact(c, conv, *target)?;
    }
    Ok(())
}

/// A deleted message's text leaves the server: the message entry and every edit of it keep
/// their place in the log (seq, id, sender, time) but lose their text, and its reactions go.
fn redact(c: &Connection, conv: ConversationId, target: u64) -> Result<()> {
    let original: Option<String> = c
        .query_row(
            "SELECT body FROM entries WHERE conversation_id = ?1 AND seq = ?2",
            params![conv.0, target as i64],
            |r| r.get(0),
        )
        .optional()
        .map_err(internal)?;
    let (message, edit) = rules::redacted(original.as_deref(), target)?;
    let target = target as i64;
    c.execute(
        "UPDATE entries SET body = ?3 WHERE conversation_id = ?1 AND seq = ?2",
        params![conv.0, target, message],
    )
    .map_err(internal)?;
    c.execute(
        "UPDATE entries SET body = ?3
         WHERE conversation_id = ?1 AND target = ?2 AND kind = 'edit'",
        params![conv.0, target, edit],
    )
    .map_err(internal)?;
    c.execute(
        "DELETE FROM reactions WHERE conversation_id = ?1 AND seq = ?2",
        params![conv.0, target],
    )
    .map_err(internal)?;
    c.execute(
        "DELETE FROM media_refs WHERE conversation_id = ?1 AND seq = ?2",
        params![conv.0, target],
    )
    .map_err(internal)?;
    Ok(())
}

pub(super) fn set_cursors(c: &Connection, updates: &[CursorUpdate]) -> Result<Vec<Receipt>> {
    let mut changed = Vec::new();
    for u in updates {
        let row: Option<(i64, i64, i64)> = c
            .prepare_cached(
                "SELECT m.delivered_seq, m.read_seq, c.last_seq
                 FROM members m JOIN conversations c ON c.id = m.conversation_id
                 WHERE m.conversation_id = ?1 AND m.user_id = ?2",
            )
            .and_then(|mut st| {
                st.query_row(params![u.conversation.0, u.user.0], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()
            })
            .map_err(internal)?;
        let Some((delivered, read, last)) = row else {
            continue;
        };
        let Some(receipt) = rules::advance_cursors(u, delivered as u64, read as u64, last as u64)
        else {
            continue;
        };
        c.prepare_cached(
            "UPDATE members SET delivered_seq = ?3, read_seq = ?4
             WHERE conversation_id = ?1 AND user_id = ?2",
        )
        .and_then(|mut st| {
            st.execute(params![
                u.conversation.0,
                u.user.0,
                receipt.delivered_seq as i64,
                receipt.read_seq as i64
            ])
        })
        .map_err(internal)?;
        if receipt.read_seq > read as u64 {
            super::push::clear_read(c, u.user, u.conversation, receipt.read_seq as i64)?;
        }
        changed.push(receipt);
    }
    Ok(changed)
}
