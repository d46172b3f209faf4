//! Writing jobs: each runs on the committer inside its own savepoint of a batch transaction
//! (READ COMMITTED), and pushes the entries it appends to `out`. The same rules as
//! `sqlite/write.rs`; where two nodes could race, a row lock (`FOR UPDATE`, the counter
//! `UPDATE`) or a unique key decides.

use natter_proto::{
    Ack, ConversationId, ConversationKind, DeviceId, Entry, EntryBody, NewEntry, Receipt, Role,
    UserId,
};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::{Conn, Fail, Op, Out, PgResult};
use crate::codec::{Appended, changes_members, kind_str, now_ms, parse_role, role_str};
use crate::{Append, CursorUpdate, GroupChange, StoreError, StoreLimits, TokenHash};

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

pub(super) async fn query(c: &Conn, sql: &str, params: Params<'_>) -> PgResult<Vec<Row>> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.query(&st, params).await?)
}

pub(super) async fn query_opt(c: &Conn, sql: &str, params: Params<'_>) -> PgResult<Option<Row>> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.query_opt(&st, params).await?)
}

pub(super) async fn query_one(c: &Conn, sql: &str, params: Params<'_>) -> PgResult<Row> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.query_one(&st, params).await?)
}

async fn execute(c: &Conn, sql: &str, params: Params<'_>) -> PgResult<u64> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.execute(&st, params).await?)
}

/// Runs one job.
pub(super) async fn run(
    c: &Conn,
    op: &Op,
    out: &mut Vec<Entry>,
    limits: &StoreLimits,
) -> PgResult<Out> {
    let cap = limits.max_group_members;
    Ok(match op {
        Op::CreateUser { handle, hash } => Out::User(create_user(c, handle, hash).await?),
        Op::CreateDevice { user, name, token } => {
            Out::Device(create_device(c, *user, name, token).await?)
        }
        Op::CreateDirect { a, b } => {
            let (id, created) = create_direct(c, out, *a, *b).await?;
            Out::Direct(id, created)
        }
        Op::CreateGroup { owner, title, members } => {
            Out::Group(create_group(c, out, cap, *owner, title, members).await?)
        }
        Op::Append(a) => Out::Ack(append(c, out, a).await?),
        Op::ChangeGroup { actor, conversation, change } => {
            Out::Ack(change_group(c, out, cap, *actor, *conversation, change).await?)
        }
        Op::SetCursors(updates) => Out::Receipts(set_cursors(c, updates).await?),
        Op::DeleteDevice(token) => {
            execute(c, "DELETE FROM devices WHERE token_hash = $1", &[&&token[..]]).await?;
            Out::Done
        }
    })
}

const ROLE_SQL: &str = "SELECT role FROM members WHERE conversation_id = $1 AND user_id = $2";

pub(super) async fn role(c: &Conn, user: UserId, conv: ConversationId) -> PgResult<Option<Role>> {
    let row = query_opt(c, ROLE_SQL, &[&conv.0, &user.0]).await?;
    Ok(row.map(|r| parse_role(r.get::<_, &str>(0))))
}

async fn user_exists(c: &Conn, user: UserId) -> PgResult<bool> {
    Ok(query_opt(c, "SELECT 1 FROM users WHERE id = $1", &[&user.0]).await?.is_some())
}

async fn create_user(c: &Conn, handle: &str, hash: &str) -> PgResult<UserId> {
    let st = c
        .prepare_cached(
            "INSERT INTO users (handle, password_hash, created_at) VALUES ($1, $2, $3)
             RETURNING id",
        )
        .await?;
    match c.query_one(&st, &[&handle, &hash, &now_ms()]).await {
        Ok(row) => Ok(UserId(row.get(0))),
        Err(err) => match err.code() {
            Some(code) if *code == SqlState::UNIQUE_VIOLATION => {
                Err(StoreError::Conflict("handle is taken").into())
            }
            _ => Err(err.into()),
        },
    }
}

async fn create_device(
    c: &Conn,
    user: UserId,
    name: &str,
    token: &TokenHash,
) -> PgResult<DeviceId> {
    let row = query_one(
        c,
        "INSERT INTO devices (user_id, name, token_hash, created_at) VALUES ($1, $2, $3, $4)
         RETURNING id",
        &[&user.0, &name, &&token[..], &now_ms()],
    )
    .await?;
    Ok(DeviceId(row.get(0)))
}

async fn insert_member(
    c: &Conn,
    conv: ConversationId,
    user: UserId,
    role: Role,
    joined_seq: u64,
) -> PgResult<()> {
    execute(
        c,
        "INSERT INTO members (conversation_id, user_id, role, joined_seq) VALUES ($1, $2, $3, $4)",
        &[&conv.0, &user.0, &role_str(role), &(joined_seq as i64)],
    )
    .await?;
    execute(c, "UPDATE conversations SET n_members = n_members + 1 WHERE id = $1", &[&conv.0])
        .await?;
    Ok(())
}

async fn create_direct(
    c: &Conn,
    out: &mut Vec<Entry>,
    a: UserId,
    b: UserId,
) -> PgResult<(ConversationId, bool)> {
    if a == b {
        return Err(
            StoreError::BadRequest("a direct conversation needs another user".into()).into()
        );
    }
    let key = format!("{}:{}", a.0.min(b.0), a.0.max(b.0));
    let existing =
        query_opt(c, "SELECT id FROM conversations WHERE direct_key = $1", &[&key]).await?;
    if let Some(row) = existing {
        return Ok((ConversationId(row.get(0)), false));
    }
    if !user_exists(c, b).await? {
        return Err(StoreError::NotFound("user").into());
    }
    let now = now_ms();
    // Another node may create the same pair at the same time: the unique key makes one wait
    // for the other, and the loser runs again and finds the winner's conversation.
    let row = query_opt(
        c,
        "INSERT INTO conversations (kind, direct_key, last_activity, created_at)
         VALUES ('direct', $1, $2, $2)
         ON CONFLICT (direct_key) DO NOTHING RETURNING id",
        &[&key, &now],
    )
    .await?;
    let Some(row) = row else {
        return Err(Fail::Redo);
    };
    let conv = ConversationId(row.get(0));
    insert_member(c, conv, a, Role::Member, 1).await?;
    insert_member(c, conv, b, Role::Member, 1).await?;
    let body = EntryBody::Created {
        conversation_kind: ConversationKind::Direct,
        title: None,
        members: vec![a, b],
    };
    append_entry(c, out, conv, a, None, body, now).await?;
    Ok((conv, true))
}

async fn create_group(
    c: &Conn,
    out: &mut Vec<Entry>,
    cap: u32,
    owner: UserId,
    title: &str,
    members: &[UserId],
) -> PgResult<ConversationId> {
    let mut all = vec![owner];
    for &m in members {
        if !all.contains(&m) {
            all.push(m);
        }
    }
    if all.len() > cap as usize {
        return Err(StoreError::Conflict("too many members for a group").into());
    }
    for &m in &all[1..] {
        if !user_exists(c, m).await? {
            return Err(StoreError::NotFound("user").into());
        }
    }
    let now = now_ms();
    let row = query_one(
        c,
        "INSERT INTO conversations (kind, title, last_activity, created_at)
         VALUES ('group', $1, $2, $2) RETURNING id",
        &[&title, &now],
    )
    .await?;
    let conv = ConversationId(row.get(0));
    for &m in &all {
        insert_member(c, conv, m, if m == owner { Role::Owner } else { Role::Member }, 1).await?;
    }
    let body = EntryBody::Created {
        conversation_kind: ConversationKind::Group,
        title: Some(title.to_owned()),
        members: all,
    };
    append_entry(c, out, conv, owner, None, body, now).await?;
    Ok(conv)
}

/// Message projection row: `(sender, deleted)`.
async fn message_row(c: &Conn, conv: ConversationId, seq: u64) -> PgResult<Option<(i64, bool)>> {
    let row = query_opt(
        c,
        "SELECT sender, deleted FROM message_state WHERE conversation_id = $1 AND seq = $2",
        &[&conv.0, &(seq as i64)],
    )
    .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// The target of an edit, deletion or reaction: it must be a live message, and for edits and
/// deletions the caller's own.
async fn check_target(
    c: &Conn,
    conv: ConversationId,
    target: u64,
    sender: UserId,
    must_own: bool,
) -> PgResult<()> {
    match message_row(c, conv, target).await? {
        None => Err(StoreError::BadRequest(format!("seq {target} is not a message")).into()),
        Some((_, true)) => Err(StoreError::Conflict("message is deleted").into()),
        Some((owner, false)) if must_own && owner != sender.0 => {
            Err(StoreError::Forbidden("only the sender may change a message").into())
        }
        Some(_) => Ok(()),
    }
}

async fn append(c: &Conn, out: &mut Vec<Entry>, a: &Append) -> PgResult<Ack> {
    // Three statements in one round trip (tokio-postgres pipelines futures polled together;
    // the server runs them in order). The counter row's lock comes before the membership
    // check: a membership change committed by another node while this waited is then
    // visible to it (each statement reads what was committed before it started), so a
    // removed member's send cannot slip in after the removal.
    // Prepared first, so that the three go out together and in this order (a cached
    // statement would otherwise be sent while another is still being prepared).
    let idempotency = c
        .prepare_cached(
            "SELECT seq, id, ts FROM entries
             WHERE conversation_id = $1 AND sender = $2 AND client_msg_id = $3",
        )
        .await?;
    let lock = c.prepare_cached("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE").await?;
    let membership = c.prepare_cached(ROLE_SQL).await?;
    let key: Params<'_> = &[&a.conversation.0, &a.sender.0, &a.client_msg_id];
    let conv: Params<'_> = &[&a.conversation.0];
    let who: Params<'_> = &[&a.conversation.0, &a.sender.0];
    let (existing, conversation, member) = tokio::join!(
        c.query_opt(&idempotency, key),
        c.query_opt(&lock, conv),
        c.query_opt(&membership, who),
    );
    if let Some(row) = existing? {
        return Ok(Ack {
            conversation: a.conversation,
            seq: row.get::<_, i64>(0) as u64,
            id: row.get(1),
            ts: row.get(2),
            client_msg_id: Some(a.client_msg_id.clone()),
        });
    }
    if conversation?.is_none() || member?.is_none() {
        return Err(StoreError::NotFound("conversation").into());
    }
    let body = match &a.entry {
        NewEntry::Message { body, reply_to } => {
            if let Some(target) = *reply_to
                && message_row(c, a.conversation, target).await?.is_none()
            {
                return Err(StoreError::BadRequest(format!("seq {target} is not a message")).into());
            }
            EntryBody::Message { body: body.clone(), reply_to: *reply_to }
        }
        NewEntry::Edit { target, body } => {
            check_target(c, a.conversation, *target, a.sender, true).await?;
            EntryBody::Edit { target: *target, body: body.clone() }
        }
        NewEntry::Delete { target } => {
            check_target(c, a.conversation, *target, a.sender, true).await?;
            EntryBody::Delete { target: *target }
        }
        NewEntry::Reaction { target, emoji, remove } => {
            check_target(c, a.conversation, *target, a.sender, false).await?;
            EntryBody::Reaction { target: *target, emoji: emoji.clone(), remove: *remove }
        }
    };
    let id = Some(a.client_msg_id.as_str());
    append_entry(c, out, a.conversation, a.sender, id, body, now_ms()).await
}

async fn change_group(
    c: &Conn,
    out: &mut Vec<Entry>,
    cap: u32,
    actor: UserId,
    conv: ConversationId,
    change: &GroupChange,
) -> PgResult<Ack> {
    // The row lock serializes group changes (the member cap, roles) across nodes; what is
    // read after it is current.
    let row = query_opt(
        c,
        "SELECT kind, n_members FROM conversations WHERE id = $1 FOR UPDATE",
        &[&conv.0],
    )
    .await?;
    let Some(row) = row else {
        return Err(StoreError::NotFound("conversation").into());
    };
    let (kind, n_members): (String, i64) = (row.get(0), row.get(1));
    let Some(actor_role) = role(c, actor, conv).await? else {
        return Err(StoreError::NotFound("conversation").into());
    };
    if kind != "group" {
        return Err(StoreError::Forbidden("a direct conversation cannot change").into());
    }
    let now = now_ms();
    match change {
        GroupChange::AddMember { user, role: new_role } => {
            if actor_role < Role::Admin {
                return Err(StoreError::Forbidden("only admins add members").into());
            }
            if *new_role == Role::Owner || (*new_role == Role::Admin && actor_role != Role::Owner) {
                return Err(
                    StoreError::Forbidden("that role cannot be given by this member").into()
                );
            }
            if !user_exists(c, *user).await? {
                return Err(StoreError::NotFound("user").into());
            }
            if role(c, *user, conv).await?.is_some() {
                return Err(StoreError::Conflict("already a member").into());
            }
            if n_members >= i64::from(cap) {
                return Err(StoreError::Conflict("the group is full").into());
            }
            let body = EntryBody::MemberAdded { user: *user, role: *new_role };
            let ack = append_entry(c, out, conv, actor, None, body, now).await?;
            insert_member(c, conv, *user, *new_role, ack.seq).await?;
            Ok(ack)
        }
        GroupChange::RemoveMember { user } => {
            let Some(target_role) = role(c, *user, conv).await? else {
                return Err(StoreError::NotFound("member").into());
            };
            if *user != actor {
                let allowed = actor_role == Role::Owner
                    || (actor_role == Role::Admin && target_role == Role::Member);
                if !allowed {
                    return Err(StoreError::Forbidden("not allowed to remove this member").into());
                }
            }
            let body = EntryBody::MemberRemoved { user: *user };
            let ack = append_entry(c, out, conv, actor, None, body, now).await?;
            execute(
                c,
                "DELETE FROM members WHERE conversation_id = $1 AND user_id = $2",
                &[&conv.0, &user.0],
            )
            .await?;
            execute(
                c,
                "UPDATE conversations SET n_members = n_members - 1 WHERE id = $1",
                &[&conv.0],
            )
            .await?;
            if target_role == Role::Owner {
                // The owner left: the longest-standing admin, else member, takes over.
                let heir = query_opt(
                    c,
                    "SELECT user_id FROM members WHERE conversation_id = $1
                     ORDER BY role = 'admin' DESC, joined_seq, user_id LIMIT 1",
                    &[&conv.0],
                )
                .await?;
                if let Some(heir) = heir {
                    let heir = UserId(heir.get(0));
                    set_role(c, conv, heir, Role::Owner).await?;
                    let body = EntryBody::RoleChanged { user: heir, role: Role::Owner };
                    append_entry(c, out, conv, actor, None, body, now).await?;
                }
            }
            Ok(ack)
        }
        GroupChange::SetRole { user, role: new_role } => {
            if actor_role != Role::Owner {
                return Err(StoreError::Forbidden("only the owner changes roles").into());
            }
            if *new_role == Role::Owner || *user == actor {
                return Err(StoreError::BadRequest(
                    "ownership passes on only when the owner leaves".into(),
                )
                .into());
            }
            if role(c, *user, conv).await?.is_none() {
                return Err(StoreError::NotFound("member").into());
            }
            set_role(c, conv, *user, *new_role).await?;
            let body = EntryBody::RoleChanged { user: *user, role: *new_role };
            append_entry(c, out, conv, actor, None, body, now).await
        }
        GroupChange::SetTitle { title } => {
            if actor_role < Role::Admin {
                return Err(StoreError::Forbidden("only admins change the title").into());
            }
            execute(c, "UPDATE conversations SET title = $2 WHERE id = $1", &[&conv.0, title])
                .await?;
            let body = EntryBody::TitleChanged { title: title.clone() };
            append_entry(c, out, conv, actor, None, body, now).await
        }
    }
}

async fn set_role(c: &Conn, conv: ConversationId, user: UserId, role: Role) -> PgResult<()> {
    execute(
        c,
        "UPDATE members SET role = $3 WHERE conversation_id = $1 AND user_id = $2",
        &[&conv.0, &user.0, &role_str(role)],
    )
    .await?;
    Ok(())
}

/// Appends one entry at the conversation's next seq and keeps the message projection in step.
async fn append_entry(
    c: &Conn,
    out: &mut Vec<Entry>,
    conv: ConversationId,
    sender: UserId,
    client_msg_id: Option<&str>,
    body: EntryBody,
    now: i64,
) -> PgResult<Ack> {
    // The counter row and the entry in one statement. The row's lock is held until commit,
    // so no other transaction (on any node) takes a seq of this conversation in between.
    // No row back: a concurrent append with the same key (another node) committed while
    // this one waited for the lock: run again, and the lookup finds its ack.
    let id = uuid::Uuid::now_v7().to_string();
    let json = serde_json::to_string(&body).map_err(crate::postgres::internal)?;
    let target = body.target().map(|t| t as i64);
    let row = query_opt(
        c,
        "WITH counter AS (
             UPDATE conversations SET last_seq = last_seq + 1, last_activity = $5,
                 members_seq = CASE WHEN $9 THEN last_seq + 1 ELSE members_seq END
             WHERE id = $1
             RETURNING last_seq, members_seq)
         INSERT INTO entries
             (conversation_id, seq, id, sender, client_msg_id, ts, kind, target, body)
         SELECT $1, counter.last_seq, $2, $3, $4, $5, $6, $7, $8 FROM counter
         ON CONFLICT ON CONSTRAINT entries_idempotency DO NOTHING
         RETURNING seq, (SELECT members_seq FROM counter)",
        &[
            &conv.0,
            &id,
            &sender.0,
            &client_msg_id,
            &now,
            &kind_str(&body),
            &target,
            &json,
            &changes_members(&body),
        ],
    )
    .await?;
    let Some(row) = row else {
        return Err(Fail::Redo);
    };
    let seq = row.get::<_, i64>(0) as u64;
    let members_seq = row.get::<_, i64>(1) as u64;
    project(c, conv, seq, sender, &body).await?;
    let appended =
        Appended { conversation: conv, seq, id, sender, ts: now, client_msg_id, body, members_seq };
    Ok(appended.push(out))
}

/// Keeps `message_state` and `reactions` equal to the log's effect.
async fn project(
    c: &Conn,
    conv: ConversationId,
    seq: u64,
    sender: UserId,
    body: &EntryBody,
) -> PgResult<()> {
    let seq = seq as i64;
    match body {
        EntryBody::Message { body, .. } => {
            execute(
                c,
                "INSERT INTO message_state (conversation_id, seq, sender, body)
                 VALUES ($1, $2, $3, $4)",
                &[&conv.0, &seq, &sender.0, body],
            )
            .await?;
        }
        EntryBody::Edit { target, body } => {
            execute(
                c,
                "UPDATE message_state SET body = $3, edited_seq = $4
                 WHERE conversation_id = $1 AND seq = $2",
                &[&conv.0, &(*target as i64), body, &seq],
            )
            .await?;
        }
        EntryBody::Delete { target } => {
            execute(
                c,
                "UPDATE message_state SET body = '', deleted = true
                 WHERE conversation_id = $1 AND seq = $2",
                &[&conv.0, &(*target as i64)],
            )
            .await?;
            redact(c, conv, *target).await?;
        }
        EntryBody::Reaction { target, emoji, remove: false } => {
            execute(
                c,
                "INSERT INTO reactions (conversation_id, seq, emoji, user_id, at_seq)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &[&conv.0, &(*target as i64), emoji, &sender.0, &seq],
            )
            .await?;
        }
        EntryBody::Reaction { target, emoji, remove: true } => {
            execute(
                c,
                "DELETE FROM reactions
                 WHERE conversation_id = $1 AND seq = $2 AND emoji = $3 AND user_id = $4",
                &[&conv.0, &(*target as i64), emoji, &sender.0],
            )
            .await?;
        }
        _ => {}
    }
    Ok(())
}

/// A deleted message's text leaves the server: the message entry and every edit of it keep
/// their place in the log (seq, id, sender, time) but lose their text, and its reactions go.
async fn redact(c: &Conn, conv: ConversationId, target: u64) -> PgResult<()> {
    let target = target as i64;
    let original = query_opt(
        c,
        "SELECT body FROM entries WHERE conversation_id = $1 AND seq = $2",
        &[&conv.0, &target],
    )
    .await?;
    let reply_to = original
        .and_then(|row| serde_json::from_str::<EntryBody>(row.get::<_, &str>(0)).ok())
        .and_then(|b| match b {
            EntryBody::Message { reply_to, .. } => reply_to,
            _ => None,
        });
    let message = EntryBody::Message { body: String::new(), reply_to };
    let edit = EntryBody::Edit { target: target as u64, body: String::new() };
    let message = serde_json::to_string(&message).map_err(crate::postgres::internal)?;
    let edit = serde_json::to_string(&edit).map_err(crate::postgres::internal)?;
    execute(
        c,
        "UPDATE entries SET body = $3 WHERE conversation_id = $1 AND seq = $2",
        &[&conv.0, &target, &message],
    )
    .await?;
    execute(
        c,
        "UPDATE entries SET body = $3
         WHERE conversation_id = $1 AND target = $2 AND kind = 'edit'",
        &[&conv.0, &target, &edit],
    )
    .await?;
    execute(
        c,
        "DELETE FROM reactions WHERE conversation_id = $1 AND seq = $2",
        &[&conv.0, &target],
    )
    .await?;
    Ok(())
}

async fn set_cursors(c: &Conn, updates: &[CursorUpdate]) -> PgResult<Vec<Receipt>> {
    let mut changed = Vec::new();
    for u in updates {
        // The member row is locked: two nodes advancing one cursor cannot move it backwards.
        let row = query_opt(
            c,
            "SELECT m.delivered_seq, m.read_seq, c.last_seq
             FROM members m JOIN conversations c ON c.id = m.conversation_id
             WHERE m.conversation_id = $1 AND m.user_id = $2 FOR UPDATE OF m",
            &[&u.conversation.0, &u.user.0],
        )
        .await?;
        let Some(row) = row else {
            continue;
        };
        let (delivered, read, last) =
            (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64, row.get::<_, i64>(2) as u64);
        let new_read = read.max(u.read.unwrap_or(0).min(last));
        let new_delivered = delivered.max(u.delivered.unwrap_or(0).min(last)).max(new_read);
        if (new_delivered, new_read) == (delivered, read) {
            continue;
        }
        execute(
            c,
            "UPDATE members SET delivered_seq = $3, read_seq = $4
             WHERE conversation_id = $1 AND user_id = $2",
            &[&u.conversation.0, &u.user.0, &(new_delivered as i64), &(new_read as i64)],
        )
        .await?;
        changed.push(Receipt {
            conversation: u.conversation,
            user: u.user,
            delivered_seq: new_delivered,
            read_seq: new_read,
        });
    }
    Ok(changed)
}
