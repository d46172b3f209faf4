//! Writing jobs: each runs on the writer thread inside its own savepoint of a batch
//! transaction, and pushes the entries it appends to `out`.

use natter_proto::{
    Ack, ConversationId, ConversationKind, DeviceId, Entry, EntryBody, NewEntry, Receipt, Role,
    UserId,
};
use rusqlite::{Connection, ErrorCode as SqliteCode, OptionalExtension, params};

use super::internal;
use crate::codec::{Appended, changes_members, kind_str, now_ms, parse_role, role_str};
use crate::{Append, CursorUpdate, GroupChange, Result, StoreError, TokenHash};

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

fn user_exists(c: &Connection, user: UserId) -> Result<bool> {
    c.prepare_cached("SELECT 1 FROM users WHERE id = ?1")
        .and_then(|mut st| st.exists(params![user.0]))
        .map_err(internal)
}

pub(super) fn create_user(c: &Connection, handle: &str, hash: &str) -> Result<UserId> {
    match c.execute(
        "INSERT INTO users (handle, password_hash, created_at) VALUES (?1, ?2, ?3)",
        params![handle, hash, now_ms()],
    ) {
        Ok(_) => Ok(UserId(c.last_insert_rowid())),
        Err(err) if is_unique_violation(&err) => Err(StoreError::Conflict("handle is taken")),
        Err(err) => Err(internal(err)),
    }
}

pub(super) fn create_device(
    c: &Connection,
    user: UserId,
    name: &str,
    token: &TokenHash,
) -> Result<DeviceId> {
    c.execute(
        "INSERT INTO devices (user_id, name, token_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![user.0, name, &token[..], now_ms()],
    )
    .map_err(internal)?;
    Ok(DeviceId(c.last_insert_rowid()))
}

pub(super) fn delete_device(c: &Connection, token: &TokenHash) -> Result<()> {
    c.execute("DELETE FROM devices WHERE token_hash = ?1", params![&token[..]])
        .map_err(internal)?;
    Ok(())
}

fn insert_conversation(
    c: &Connection,
    kind: ConversationKind,
    title: Option<&str>,
    direct_key: Option<&str>,
    now: i64,
) -> Result<ConversationId> {
    let kind = match kind {
        ConversationKind::Direct => "direct",
        ConversationKind::Group => "group",
    };
    c.execute(
        "INSERT INTO conversations (kind, title, direct_key, last_activity, created_at)
         VALUES (?1, ?2, ?3, ?4, ?4)",
        params![kind, title, direct_key, now],
    )
    .map_err(internal)?;
    Ok(ConversationId(c.last_insert_rowid()))
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

pub(super) fn create_direct(
    c: &Connection,
    out: &mut Vec<Entry>,
    a: UserId,
    b: UserId,
) -> Result<(ConversationId, bool)> {
    if a == b {
        return Err(StoreError::BadRequest("a direct conversation needs another user".into()));
    }
    let key = format!("{}:{}", a.0.min(b.0), a.0.max(b.0));
    let existing: Option<i64> = c
        .query_row("SELECT id FROM conversations WHERE direct_key = ?1", params![key], |r| r.get(0))
        .optional()
        .map_err(internal)?;
    if let Some(id) = existing {
        return Ok((ConversationId(id), false));
    }
    if !user_exists(c, b)? {
        return Err(StoreError::NotFound("user"));
    }
    let now = now_ms();
    let conv = insert_conversation(c, ConversationKind::Direct, None, Some(&key), now)?;
    insert_member(c, conv, a, Role::Member, 1)?;
    insert_member(c, conv, b, Role::Member, 1)?;
    let body = EntryBody::Created {
        conversation_kind: ConversationKind::Direct,
        title: None,
        members: vec![a, b],
    };
    append_entry(c, out, conv, a, None, body, now)?;
    Ok((conv, true))
}

pub(super) fn create_group(
    c: &Connection,
    out: &mut Vec<Entry>,
    cap: u32,
    owner: UserId,
    title: &str,
    members: &[UserId],
) -> Result<ConversationId> {
    let mut all = vec![owner];
    for &m in members {
        if !all.contains(&m) {
            all.push(m);
        }
    }
    if all.len() > cap as usize {
        return Err(StoreError::Conflict("too many members for a group"));
    }
    for &m in &all[1..] {
        if !user_exists(c, m)? {
            return Err(StoreError::NotFound("user"));
        }
    }
    let now = now_ms();
    let conv = insert_conversation(c, ConversationKind::Group, Some(title), None, now)?;
    for &m in &all {
        insert_member(c, conv, m, if m == owner { Role::Owner } else { Role::Member }, 1)?;
    }
    let body = EntryBody::Created {
        conversation_kind: ConversationKind::Group,
        title: Some(title.to_owned()),
        members: all,
    };
    append_entry(c, out, conv, owner, None, body, now)?;
    Ok(conv)
}

/// Message projection row: `(sender, deleted)`.
fn message_row(c: &Connection, conv: ConversationId, seq: u64) -> Result<Option<(i64, bool)>> {
    c.prepare_cached(
        "SELECT sender, deleted FROM message_state WHERE conversation_id = ?1 AND seq = ?2",
    )
    .and_then(|mut st| {
        st.query_row(params![conv.0, seq as i64], |r| Ok((r.get(0)?, r.get(1)?))).optional()
    })
    .map_err(internal)
}

/// The target of an edit, deletion or reaction: it must be a live message, and for edits and
/// deletions the caller's own.
fn check_target(
    c: &Connection,
    conv: ConversationId,
    target: u64,
    sender: UserId,
    must_own: bool,
) -> Result<()> {
    match message_row(c, conv, target)? {
        None => Err(StoreError::BadRequest(format!("seq {target} is not a message"))),
        Some((_, true)) => Err(StoreError::Conflict("message is deleted")),
        Some((owner, false)) if must_own && owner != sender.0 => {
            Err(StoreError::Forbidden("only the sender may change a message"))
        }
        Some(_) => Ok(()),
    }
}

pub(super) fn append(c: &Connection, out: &mut Vec<Entry>, a: &Append) -> Result<Ack> {
    let existing = c
        .prepare_cached(
            "SELECT seq, id, ts FROM entries
             WHERE conversation_id = ?1 AND sender = ?2 AND client_msg_id = ?3",
        )
        .and_then(|mut st| {
            st.query_row(params![a.conversation.0, a.sender.0, a.client_msg_id], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
            })
            .optional()
        })
        .map_err(internal)?;
    if let Some((seq, id, ts)) = existing {
        return Ok(Ack {
            conversation: a.conversation,
            seq: seq as u64,
            id,
            ts,
            client_msg_id: Some(a.client_msg_id.clone()),
        });
    }
    if role(c, a.sender, a.conversation)?.is_none() {
        return Err(StoreError::NotFound("conversation"));
    }
    let body = match &a.entry {
        NewEntry::Message { body, reply_to } => {
            if let Some(target) = *reply_to
                && message_row(c, a.conversation, target)?.is_none()
            {
                return Err(StoreError::BadRequest(format!("seq {target} is not a message")));
            }
            EntryBody::Message { body: body.clone(), reply_to: *reply_to }
        }
        NewEntry::Edit { target, body } => {
            check_target(c, a.conversation, *target, a.sender, true)?;
            EntryBody::Edit { target: *target, body: body.clone() }
        }
        NewEntry::Delete { target } => {
            check_target(c, a.conversation, *target, a.sender, true)?;
            EntryBody::Delete { target: *target }
        }
        NewEntry::Reaction { target, emoji, remove } => {
            check_target(c, a.conversation, *target, a.sender, false)?;
            EntryBody::Reaction { target: *target, emoji: emoji.clone(), remove: *remove }
        }
    };
    let id = Some(a.client_msg_id.as_str());
    append_entry(c, out, a.conversation, a.sender, id, body, now_ms())
}

pub(super) fn change_group(
    c: &Connection,
    out: &mut Vec<Entry>,
    cap: u32,
    actor: UserId,
    conv: ConversationId,
    change: &GroupChange,
) -> Result<Ack> {
    let Some(actor_role) = role(c, actor, conv)? else {
        return Err(StoreError::NotFound("conversation"));
    };
    let (kind, n_members): (String, i64) = c
        .query_row(
            "SELECT kind, n_members FROM conversations WHERE id = ?1",
            params![conv.0],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(internal)?;
    if kind != "group" {
        return Err(StoreError::Forbidden("a direct conversation cannot change"));
    }
    let now = now_ms();
    match change {
        GroupChange::AddMember { user, role: new_role } => {
            if actor_role < Role::Admin {
                return Err(StoreError::Forbidden("only admins add members"));
            }
            if *new_role == Role::Owner || (*new_role == Role::Admin && actor_role != Role::Owner) {
                return Err(StoreError::Forbidden("that role cannot be given by this member"));
            }
            if !user_exists(c, *user)? {
                return Err(StoreError::NotFound("user"));
            }
            if role(c, *user, conv)?.is_some() {
                return Err(StoreError::Conflict("already a member"));
            }
            if n_members >= i64::from(cap) {
                return Err(StoreError::Conflict("the group is full"));
            }
            let body = EntryBody::MemberAdded { user: *user, role: *new_role };
            let ack = append_entry(c, out, conv, actor, None, body, now)?;
            insert_member(c, conv, *user, *new_role, ack.seq)?;
            Ok(ack)
        }
        GroupChange::RemoveMember { user } => {
            let Some(target_role) = role(c, *user, conv)? else {
                return Err(StoreError::NotFound("member"));
            };
            if *user != actor {
                let allowed = actor_role == Role::Owner
                    || (actor_role == Role::Admin && target_role == Role::Member);
                if !allowed {
                    return Err(StoreError::Forbidden("not allowed to remove this member"));
                }
            }
            let ack = append_entry(
                c,
                out,
                conv,
                actor,
                None,
                EntryBody::MemberRemoved { user: *user },
                now,
            )?;
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
            if target_role == Role::Owner {
                // The owner left: the longest-standing admin, else member, takes over.
                let heir: Option<i64> = c
                    .query_row(
                        "SELECT user_id FROM members WHERE conversation_id = ?1
                         ORDER BY role = 'admin' DESC, joined_seq, user_id LIMIT 1",
                        params![conv.0],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(internal)?;
                if let Some(heir) = heir {
                    set_role(c, conv, UserId(heir), Role::Owner)?;
                    let body = EntryBody::RoleChanged { user: UserId(heir), role: Role::Owner };
                    append_entry(c, out, conv, actor, None, body, now)?;
                }
            }
            Ok(ack)
        }
        GroupChange::SetRole { user, role: new_role } => {
            if actor_role != Role::Owner {
                return Err(StoreError::Forbidden("only the owner changes roles"));
            }
            if *new_role == Role::Owner || *user == actor {
                return Err(StoreError::BadRequest(
                    "ownership passes on only when the owner leaves".into(),
                ));
            }
            if role(c, *user, conv)?.is_none() {
                return Err(StoreError::NotFound("member"));
            }
            set_role(c, conv, *user, *new_role)?;
            let body = EntryBody::RoleChanged { user: *user, role: *new_role };
            append_entry(c, out, conv, actor, None, body, now)
        }
        GroupChange::SetTitle { title } => {
            if actor_role < Role::Admin {
                return Err(StoreError::Forbidden("only admins change the title"));
            }
            c.execute("UPDATE conversations SET title = ?2 WHERE id = ?1", params![conv.0, title])
                .map_err(internal)?;
            append_entry(
                c,
                out,
                conv,
                actor,
                None,
                EntryBody::TitleChanged { title: title.clone() },
                now,
            )
        }
    }
}

fn set_role(c: &Connection, conv: ConversationId, user: UserId, role: Role) -> Result<()> {
    c.execute(
        "UPDATE members SET role = ?3 WHERE conversation_id = ?1 AND user_id = ?2",
        params![conv.0, user.0, role_str(role)],
    )
    .map_err(internal)?;
    Ok(())
}

/// Appends one entry at `last_seq + 1` and keeps the message projection in step.
fn append_entry(
    c: &Connection,
    out: &mut Vec<Entry>,
    conv: ConversationId,
    sender: UserId,
    client_msg_id: Option<&str>,
    body: EntryBody,
    now: i64,
) -> Result<Ack> {
    let (last, members_seq): (i64, i64) = c
        .prepare_cached("SELECT last_seq, members_seq FROM conversations WHERE id = ?1")
        .and_then(|mut st| st.query_row(params![conv.0], |r| Ok((r.get(0)?, r.get(1)?))))
        .map_err(internal)?;
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
    project(c, conv, seq, sender, &body)?;
    let appended =
        Appended { conversation: conv, seq, id, sender, ts: now, client_msg_id, body, members_seq };
    Ok(appended.push(out))
}

/// Keeps `message_state` and `reactions` equal to the log's effect.
fn project(
    c: &Connection,
    conv: ConversationId,
    seq: u64,
    sender: UserId,
    body: &EntryBody,
) -> Result<()> {
    let (sql, args): (&str, Vec<rusqlite::types::Value>) = match body {
        EntryBody::Message { body, .. } => (
            "INSERT INTO message_state (conversation_id, seq, sender, body) VALUES (?1, ?2, ?3, ?4)",
            vec![conv.0.into(), (seq as i64).into(), sender.0.into(), body.clone().into()],
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
    let target = target as i64;
    let original: Option<String> = c
        .query_row(
            "SELECT body FROM entries WHERE conversation_id = ?1 AND seq = ?2",
            params![conv.0, target],
            |r| r.get(0),
        )
        .optional()
        .map_err(internal)?;
    let reply_to = original
        .and_then(|json| serde_json::from_str::<EntryBody>(&json).ok())
        .and_then(|b| match b {
            EntryBody::Message { reply_to, .. } => reply_to,
            _ => None,
        });
    let message = EntryBody::Message { body: String::new(), reply_to };
    let edit = EntryBody::Edit { target: target as u64, body: String::new() };
    c.execute(
        "UPDATE entries SET body = ?3 WHERE conversation_id = ?1 AND seq = ?2",
        params![conv.0, target, serde_json::to_string(&message).map_err(internal)?],
    )
    .map_err(internal)?;
    c.execute(
        "UPDATE entries SET body = ?3
         WHERE conversation_id = ?1 AND target = ?2 AND kind = 'edit'",
        params![conv.0, target, serde_json::to_string(&edit).map_err(internal)?],
    )
    .map_err(internal)?;
    c.execute(
        "DELETE FROM reactions WHERE conversation_id = ?1 AND seq = ?2",
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
        let (delivered, read, last) = (delivered as u64, read as u64, last as u64);
        let new_read = read.max(u.read.unwrap_or(0).min(last));
        let new_delivered = delivered.max(u.delivered.unwrap_or(0).min(last)).max(new_read);
        if (new_delivered, new_read) == (delivered, read) {
            continue;
        }
        c.prepare_cached(
            "UPDATE members SET delivered_seq = ?3, read_seq = ?4
             WHERE conversation_id = ?1 AND user_id = ?2",
        )
        .and_then(|mut st| {
            st.execute(params![u.conversation.0, u.user.0, new_delivered as i64, new_read as i64])
        })
        .map_err(internal)?;
        changed.push(Receipt {
            conversation: u.conversation,
            user: u.user,
            delivered_seq: new_delivered,
            read_seq: new_read,
        });
    }
    Ok(changed)
}
