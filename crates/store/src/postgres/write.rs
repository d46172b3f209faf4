//! Writing jobs: each runs on the committer inside its own savepoint of a batch transaction
//! (READ COMMITTED), and pushes the entries it appends to `out`. What a job may do is decided
//! by `crate::rules`, as for SQLite; this file loads the facts a rule needs and applies the
//! effect it returns. Where two nodes could race, a row lock (`FOR UPDATE`, the counter
//! `UPDATE`) taken before the facts are read, or a unique key, decides. An invitee's pending
//! invitations are counted under a lock on their `users` row (`FOR NO KEY UPDATE`, which
//! logins and new memberships, taking `KEY SHARE` for their foreign keys, do not wait for).

use natter_proto::rest::{ProfileUpdate, User};
use natter_proto::{Ack, Committed, ConversationId, DeviceId, EntryBody, Receipt, Role, UserId};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::{Conn, Fail, Op, Out, PgResult, read};
use crate::codec::{
    Appended, changes_members, conversation_kind_str, kind_str, now_ms, parse_conversation_kind,
    parse_role, role_str,
};
use crate::rules::{self, Addition, Admit, Direct, GroupEffect, NewConversation};
use crate::search;
use crate::{
    Added, Append, Collected, CursorUpdate, GroupChange, MediaRecord, NewGroup, NewMedia,
    StoreError, StoreLimits, TokenHash,
};

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

pub(super) async fn execute(c: &Conn, sql: &str, params: Params<'_>) -> PgResult<u64> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.execute(&st, params).await?)
}

/// Runs one job.
pub(super) async fn run(
    c: &Conn,
    op: &Op,
    out: &mut Vec<Committed>,
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
            Out::Group(create_group(c, out, limits, *owner, title, members).await?)
        }
        Op::Append(a) => Out::Ack(append(c, out, a).await?),
        Op::AddMember { actor, conversation, user, role } => {
            Out::Added(add_member(c, out, limits, *actor, *conversation, *user, *role).await?)
        }
        Op::ChangeGroup { actor, conversation, change } => {
            Out::Ack(change_group(c, out, *actor, *conversation, change).await?)
        }
        Op::SetCursors(updates) => Out::Receipts(set_cursors(c, updates).await?),
        Op::AcceptInvitation { user, conversation } => {
            Out::Ack(accept_invitation(c, out, cap, *user, *conversation).await?)
        }
        Op::CreateMedia(media) => {
            create_media(c, media).await?;
            Out::Done
        }
        Op::CollectMedia { unattached_before, orphaned_before } => {
            Out::Collected(collect_media(c, *unattached_before, *orphaned_before).await?)
        }
        Op::DeleteDevice(token) => {
            execute(c, "DELETE FROM devices WHERE token_hash = $1", &[&&token[..]]).await?;
            Out::Done
        }
        Op::Admin(op) => Out::Admin(super::admin::run(c, op, out).await?),
        Op::DeclineInvitation { user, conversation } => {
            let sql = "DELETE FROM invitations WHERE conversation_id = $1 AND user_id = $2";
            let n = execute(c, sql, &[&conversation.0, &user.0]).await?;
            rules::decline_invitation(n)?;
            Out::Done
        }
    })
}

const ROLE_SQL: &str = "SELECT role FROM members WHERE conversation_id = $1 AND user_id = $2";

pub(super) async fn role(c: &Conn, user: UserId, conv: ConversationId) -> PgResult<Option<Role>> {
    let row = query_opt(c, ROLE_SQL, &[&conv.0, &user.0]).await?;
    Ok(row.map(|r| parse_role(r.get::<_, &str>(0))))
}

async fn create_user(c: &Conn, handle: &str, hash: &str) -> PgResult<UserId> {
    let st = c
        .prepare_cached(
            "INSERT INTO users (handle, handle_key, password_hash, created_at)
             VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .await?;
    let key = rules::handle_key(handle);
    match c.query_one(&st, &[&handle, &key, &hash, &now_ms()]).await {
        Ok(row) => Ok(UserId(row.get(0))),
        Err(err) => match err.code() {
            Some(code) if *code == SqlState::UNIQUE_VIOLATION => Err(rules::handle_taken().into()),
            _ => Err(err.into()),
        },
    }
}

pub(crate) async fn set_profile(c: &Conn, user: UserId, update: &ProfileUpdate) -> PgResult<User> {
    let cleared = |v: &str| (!v.is_empty()).then(|| v.to_owned());
    if let Some(name) = &update.display_name {
        let name = cleared(name);
        let key = name.as_deref().map(crate::codec::display_key);
        query(
            c,
            "UPDATE users SET display_name = $2, display_key = $3 WHERE id = $1",
            &[&user.0, &name, &key],
        )
        .await?;
    }
    if let Some(status) = &update.status_text {
        query(c, "UPDATE users SET status_text = $2 WHERE id = $1", &[&user.0, &cleared(status)])
            .await?;
    }
    if let Some(avatar) = &update.avatar {
        let avatar = cleared(avatar);
        if let Some(id) = &avatar {
            let found = query_opt(
                c,
                "SELECT content_type FROM media WHERE id = $1 AND owner = $2",
                &[id, &user.0],
            )
            .await?;
            rules::avatar(found.as_ref().map(|r| r.get::<_, &str>(0)))?;
        }
        query(c, "UPDATE users SET avatar = $2 WHERE id = $1", &[&user.0, &avatar]).await?;
    }
    read::users(c, &[user]).await?.pop().ok_or_else(|| StoreError::NotFound("user").into())
}

pub(crate) async fn touch_device(c: &Conn, device: DeviceId, at: i64) -> PgResult<()> {
    query(c, "UPDATE devices SET last_used_at = $2 WHERE id = $1", &[&device.0, &at]).await?;
    Ok(())
}

/// The new hash and the other devices' deletion in one statement (one transaction).
pub(crate) async fn set_password(
    c: &Conn,
    user: UserId,
    hash: &str,
    keep: DeviceId,
) -> PgResult<Vec<DeviceId>> {
    let rows = query(
        c,
        "WITH u AS (UPDATE users SET password_hash = $2 WHERE id = $1)
         DELETE FROM devices WHERE user_id = $1 AND id <> $3 RETURNING id",
        &[&user.0, &hash, &keep.0],
    )
    .await?;
    Ok(rows.iter().map(|r| DeviceId(r.get(0))).collect())
}

/// The account's deletion in one statement (one transaction).
pub(crate) async fn delete_user(c: &Conn, user: UserId) -> PgResult<Vec<DeviceId>> {
    let rows = query(
        c,
        "WITH u AS (UPDATE users SET deleted_at = $2, password_hash = '!', display_name = NULL,
                        display_key = NULL, status_text = NULL, avatar = NULL
                    WHERE id = $1),
              i AS (DELETE FROM invitations WHERE user_id = $1)
         DELETE FROM devices WHERE user_id = $1 RETURNING id",
        &[&user.0, &now_ms()],
    )
    .await?;
    Ok(rows.iter().map(|r| DeviceId(r.get(0))).collect())
}

pub(crate) async fn free_deleted_handles(c: &Conn, deleted_before: i64) -> PgResult<u64> {
    let rows = query(
        c,
        "UPDATE users SET handle = '~deleted-' || id, handle_key = NULL
         WHERE deleted_at < $1 AND handle_key IS NOT NULL RETURNING id",
        &[&deleted_before],
    )
    .await?;
    Ok(rows.len() as u64)
}

pub(super) async fn unban(
    c: &Conn,
    actor: UserId,
    conv: ConversationId,
    user: UserId,
) -> PgResult<()> {
    let row = group_row(c, conv).await?;
    let actor = rules::group_actor(actor, row, role(c, actor, conv).await?)?;
    rules::unban(&actor)?;
    let sql = "DELETE FROM group_bans WHERE conversation_id = $1 AND user_id = $2";
    execute(c, sql, &[&conv.0, &user.0]).await?;
    Ok(())
}

pub(super) async fn block(c: &Conn, blocker: UserId, blocked: UserId, max: u32) -> PgResult<()> {
    let row = query_one(
        c,
        "SELECT EXISTS (SELECT 1 FROM users WHERE id = $2 AND deleted_at IS NULL),
                EXISTS (SELECT 1 FROM blocks WHERE blocker = $1 AND blocked = $2),
                (SELECT count(*) FROM blocks WHERE blocker = $1)",
        &[&blocker.0, &blocked.0],
    )
    .await?;
    let n = row.get::<_, i64>(2) as u64;
    if rules::block(blocker, blocked, row.get(0), row.get(1), n, max)? {
        execute(
            c,
            "INSERT INTO blocks (blocker, blocked, created_at) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            &[&blocker.0, &blocked.0, &now_ms()],
        )
        .await?;
    }
    Ok(())
}

pub(super) async fn unblock(c: &Conn, blocker: UserId, blocked: UserId) -> PgResult<()> {
    execute(c, "DELETE FROM blocks WHERE blocker = $1 AND blocked = $2", &[&blocker.0, &blocked.0])
        .await?;
    Ok(())
}

pub(crate) async fn revoke_device(c: &Conn, user: UserId, device: DeviceId) -> PgResult<()> {
    let rows = query(
        c,
        "DELETE FROM devices WHERE id = $1 AND user_id = $2 RETURNING id",
        &[&device.0, &user.0],
    )
    .await?;
    if rows.is_empty() { Err(StoreError::NotFound("device").into()) } else { Ok(()) }
}

async fn create_device(
    c: &Conn,
    user: UserId,
    name: &str,
    token: &TokenHash,
) -> PgResult<DeviceId> {
    // A suspension committed while the login checked the password wins.
    let row = query_one(c, "SELECT suspended_until FROM users WHERE id = $1", &[&user.0]).await?;
    if rules::suspended(row.get(0), now_ms()) {
        return Err(StoreError::Forbidden("the account is suspended").into());
    }
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

/// Writes what `rules` decided to create: the row, its members, the `created` entry.
async fn insert_conversation(
    c: &Conn,
    out: &mut Vec<Committed>,
    new: NewConversation,
) -> PgResult<ConversationId> {
    let now = now_ms();
    // Another node may create the same direct pair at the same time: the unique key makes one
    // wait for the other, and the loser runs again and finds the winner's conversation. (A
    // group has no key, so it never conflicts.)
    let row = query_opt(
        c,
        "INSERT INTO conversations (kind, title, direct_key, last_activity, created_at)
         VALUES ($1, $2, $3, $4, $4)
         ON CONFLICT (direct_key) DO NOTHING RETURNING id",
        &[&conversation_kind_str(new.kind), &new.title, &new.direct_key, &now],
    )
    .await?;
    let Some(row) = row else {
        return Err(Fail::Redo);
    };
    let conv = ConversationId(row.get(0));
    for &(user, role) in &new.members {
        insert_member(c, conv, user, role, 1).await?;
    }
    append_entry(c, out, conv, new.creator(), None, new.created(), now).await?;
    Ok(conv)
}

async fn create_direct(
    c: &Conn,
    out: &mut Vec<Committed>,
    a: UserId,
    b: UserId,
) -> PgResult<(ConversationId, bool)> {
    let key = rules::direct_key(a, b)?;
    let row = query_one(
        c,
        "SELECT (SELECT id FROM conversations WHERE direct_key = $1),
                EXISTS (SELECT 1 FROM users WHERE id = $2 AND deleted_at IS NULL)
                AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = $2 AND blocked = $3)",
        &[&key, &b.0, &a.0],
    )
    .await?;
    let existing = row.get::<_, Option<i64>>(0).map(ConversationId);
    match rules::create_direct(a, b, existing, row.get(1))? {
        Direct::Exists(conv) => Ok((conv, false)),
        Direct::Create(new) => Ok((insert_conversation(c, out, new).await?, true)),
    }
}

async fn create_group(
    c: &Conn,
    out: &mut Vec<Committed>,
    limits: &StoreLimits,
    owner: UserId,
    title: &str,
    members: &[UserId],
) -> PgResult<NewGroup> {
    let new = rules::create_group(owner, title, members, limits.max_group_members)?;
    let ids = new.other_ids();
    // Their rows are locked (in id order, so two creations cannot deadlock over them) before
    // their pending invitations are counted; the rows found are the accounts that exist.
    let sql = "SELECT id FROM users WHERE id = ANY($1) AND deleted_at IS NULL
                 AND NOT EXISTS (SELECT 1 FROM blocks WHERE blocker = users.id AND blocked = $2)
               ORDER BY id FOR NO KEY UPDATE";
    let found = query(c, sql, &[&ids, &owner.0]).await?;
    rules::others_exist(&new, found.len() as u64)?;
    let contacts: Vec<UserId> = query(
        c,
        "SELECT DISTINCT b.user_id FROM members a JOIN members b
             ON b.conversation_id = a.conversation_id
         WHERE a.user_id = $1 AND b.user_id = ANY($2)",
        &[&owner.0, &ids],
    )
    .await?
    .iter()
    .map(|r| UserId(r.get(0)))
    .collect();
    let pending: Vec<(UserId, u64)> = query(
        c,
        "SELECT user_id, count(*) FROM invitations WHERE user_id = ANY($1) GROUP BY user_id",
        &[&ids],
    )
    .await?
    .iter()
    .map(|r| (UserId(r.get(0)), r.get::<_, i64>(1) as u64))
    .collect();
    let group = rules::seat_or_invite(new, &contacts, &pending, limits.max_pending_invitations)?;
    let id = insert_conversation(c, out, group.conversation).await?;
    if group.invited.is_empty() {
        return Ok(NewGroup { id, invitations: Vec::new() });
    }
    let now = now_ms();
    for &user in &group.invited {
        insert_invitation(c, id, user, owner, Role::Member, now).await?;
    }
    Ok(NewGroup { id, invitations: read::group_invitations(c, id).await? })
}

async fn insert_invitation(
    c: &Conn,
    conv: ConversationId,
    user: UserId,
    inviter: UserId,
    role: Role,
    now: i64,
) -> PgResult<()> {
    execute(
        c,
        "INSERT INTO invitations (conversation_id, user_id, inviter, role, invited_at)
         VALUES ($1, $2, $3, $4, $5)",
        &[&conv.0, &user.0, &inviter.0, &role_str(role), &now],
    )
    .await?;
    Ok(())
}

async fn add_member(
    c: &Conn,
    out: &mut Vec<Committed>,
    limits: &StoreLimits,
    actor: UserId,
    conv: ConversationId,
    user: UserId,
    role: Role,
) -> PgResult<Added> {
    let row = group_row(c, conv).await?;
    let actor = rules::group_actor(actor, row, self::role(c, actor, conv).await?)?;
    // The invitee's row, before their pending invitations are counted (see the module doc).
    query_opt(c, "SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE", &[&user.0]).await?;
    let subject = subject(c, conv, user).await?;
    let row = query_one(
        c,
        "SELECT EXISTS (SELECT 1 FROM members a JOIN members b
                 ON b.conversation_id = a.conversation_id
                 WHERE a.user_id = $1 AND b.user_id = $2),
                EXISTS (SELECT 1 FROM invitations WHERE conversation_id = $3 AND user_id = $2),
                (SELECT count(*) FROM invitations WHERE user_id = $2),
                EXISTS (SELECT 1 FROM users WHERE id = $2 AND deleted_at IS NOT NULL)
                OR EXISTS (SELECT 1 FROM blocks WHERE blocker = $2 AND blocked = $1),
                EXISTS (SELECT 1 FROM group_bans WHERE conversation_id = $3 AND user_id = $2)",
        &[&actor.user.0, &user.0, &conv.0],
    )
    .await?;
    let reach = rules::Reach {
        contact: row.get(0),
        invited: row.get(1),
        n_pending: row.get::<_, i64>(2) as u64,
        unreachable: row.get(3),
        banned: row.get(4),
    };
    let (cap, max_pending) = (limits.max_group_members, limits.max_pending_invitations);
    match rules::add_member(&actor, cap, max_pending, user, role, subject, reach)? {
        Addition::Member(effect) => {
            Ok(Added::Member(apply(c, out, conv, actor.user, &effect, now_ms()).await?))
        }
        Addition::Invite { user, role } => {
            insert_invitation(c, conv, user, actor.user, role, now_ms()).await?;
            let invitation = read::invitation(c, conv, user)
                .await?
                .ok_or_else(|| crate::postgres::internal("the invitation just made is missing"))?;
            Ok(Added::Invited(invitation))
        }
    }
}

async fn accept_invitation(
    c: &Conn,
    out: &mut Vec<Committed>,
    cap: u32,
    user: UserId,
    conv: ConversationId,
) -> PgResult<Ack> {
    // The group's row lock first, as for every membership change: the member count and the
    // invitation read after it are current.
    let row = group_row(c, conv).await?;
    let sql = "SELECT role FROM invitations WHERE conversation_id = $1 AND user_id = $2";
    let offered = query_opt(c, sql, &[&conv.0, &user.0]).await?.map(|r| parse_role(r.get(0)));
    let effect = rules::accept_invitation(user, offered, row, role(c, user, conv).await?, cap)?;
    apply(c, out, conv, user, &effect, now_ms()).await
}

/// The conversation row a group change (or an accepted invitation) reads first, locked: the
/// lock serializes membership changes of the group (the member cap, roles) across nodes, and
/// what is read after it is current.
async fn group_row(c: &Conn, conv: ConversationId) -> PgResult<Option<rules::GroupRow>> {
    let row = query_opt(
        c,
        "SELECT kind, n_members FROM conversations WHERE id = $1 FOR UPDATE",
        &[&conv.0],
    )
    .await?;
    Ok(row.map(|r| rules::GroupRow {
        kind: parse_conversation_kind(r.get(0)),
        n_members: r.get::<_, i64>(1) as u64,
    }))
}

/// The message projection row at `seq`, if that seq is a message.
pub(super) async fn message(
    c: &Conn,
    conv: ConversationId,
    seq: u64,
) -> PgResult<Option<rules::Message>> {
    let row = query_opt(
        c,
        "SELECT sender, deleted FROM message_state WHERE conversation_id = $1 AND seq = $2",
        &[&conv.0, &(seq as i64)],
    )
    .await?;
    Ok(row.map(|r| rules::Message { sender: UserId(r.get(0)), deleted: r.get(1) }))
}

/// The sender's [`rules::Poster`] facts: role, a block in a direct conversation, the
/// member's mute and last post, the group's settings.
const POSTER_SQL: &str = "SELECT m.role,
        c.kind = 'direct' AND EXISTS (
            SELECT 1 FROM members o JOIN blocks b
              ON (b.blocker = o.user_id AND b.blocked = m.user_id)
              OR (b.blocker = m.user_id AND b.blocked = o.user_id)
            WHERE o.conversation_id = m.conversation_id AND o.user_id <> m.user_id),
        c.kind = 'group', m.muted_until, m.last_post_at, c.slow_mode_secs, c.locked
     FROM members m JOIN conversations c ON c.id = m.conversation_id
     WHERE m.conversation_id = $1 AND m.user_id = $2";

async fn append(c: &Conn, out: &mut Vec<Committed>, a: &Append) -> PgResult<Ack> {
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
    let membership = c.prepare_cached(POSTER_SQL).await?;
    let key: Params<'_> = &[&a.conversation.0, &a.sender.0, &a.client_msg_id];
    let conv: Params<'_> = &[&a.conversation.0];
    let who: Params<'_> = &[&a.conversation.0, &a.sender.0];
    let (existing, conversation, member) = tokio::join!(
        c.query_opt(&idempotency, key),
        c.query_opt(&lock, conv),
        c.query_opt(&membership, who),
    );
    let earlier = existing?.map(|row| rules::Earlier {
        seq: row.get::<_, i64>(0) as u64,
        id: row.get(1),
        ts: row.get(2),
    });
    // No counter row: no such conversation, which reads like not being a member.
    let poster = conversation?.and(member?).map(|row| rules::Poster {
        role: parse_role(row.get::<_, &str>(0)),
        blocked: row.get(1),
        group: row.get(2),
        muted_until: row.get(3),
        last_post_at: row.get(4),
        slow_mode_secs: row.get::<_, i32>(5) as u32,
        locked: row.get(6),
    });
    let now = now_ms();
    if let Admit::Repeat(ack) = rules::admit_append(a, earlier, poster, now)? {
        return Ok(ack);
    }
    let poster =
        poster.ok_or_else(|| crate::postgres::internal("an admitted append has no poster"))?;
    let target = match rules::append_target(&a.entry) {
        Some(seq) => message(c, a.conversation, seq).await?,
        None => None,
    };
    let ids = rules::attachment_ids(&a.entry);
    let found = match rules::media_to_load(ids) {
        [] => Vec::new(),
        load => media_rows(c, load).await?,
    };
    let attachments = rules::attachments(a.sender, ids, found)?;
    let mut body = rules::append_body(a, target, attachments, poster.moderates())?;
    if let Some((ids, keys)) = rules::mentions_to_resolve(&a.entry)? {
        body = rules::with_mentions(body, mentioned(c, a.conversation, &ids, &keys).await?);
    }
    let id = Some(a.client_msg_id.as_str());
    let ack = append_entry(c, out, a.conversation, a.sender, id, body, now).await?;
    if poster.stamps(&a.entry) {
        let sql =
            "UPDATE members SET last_post_at = $3 WHERE conversation_id = $1 AND user_id = $2";
        execute(c, sql, &[&a.conversation.0, &a.sender.0, &now]).await?;
    }
    for media in ids {
        execute(
            c,
            "INSERT INTO media_refs (media_id, conversation_id, seq) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
            &[media, &a.conversation.0, &(ack.seq as i64)],
        )
        .await?;
    }
    Ok(ack)
}

/// The members of `conv` among the users `ids` and the handle keys `keys`.
async fn mentioned(
    c: &Conn,
    conv: ConversationId,
    ids: &[i64],
    keys: &[String],
) -> PgResult<Vec<UserId>> {
    let sql = "SELECT m.user_id FROM members m JOIN users u ON u.id = m.user_id
               WHERE m.conversation_id = $1 AND (m.user_id = ANY($2) OR u.handle_key = ANY($3))";
    let rows = query(c, sql, &[&conv.0, &ids, &keys]).await?;
    Ok(rows.iter().map(|r| UserId(r.get(0))).collect())
}

const MEDIA_COLUMNS: &str = "id, owner, sha256, size, content_type, name, width, height, \
     placeholder, thumb_sha256, thumb_width, thumb_height, created_at";

fn media_row(r: &Row) -> MediaRecord {
    let thumb: Option<String> = r.get(9);
    let dims = match (r.get::<_, Option<i64>>(10), r.get::<_, Option<i64>>(11)) {
        (Some(width), Some(height)) => {
            Some(natter_proto::Dimensions { width: width as u32, height: height as u32 })
        }
        _ => None,
    };
    MediaRecord {
        id: r.get(0),
        owner: UserId(r.get(1)),
        sha256: r.get(2),
        size: r.get::<_, i64>(3) as u64,
        content_type: r.get(4),
        name: r.get(5),
        width: r.get::<_, Option<i64>>(6).map(|v| v as u32),
        height: r.get::<_, Option<i64>>(7).map(|v| v as u32),
        placeholder: r.get(8),
        thumbnail: thumb.zip(dims),
        created_at: r.get(12),
    }
}

/// The media rows of those of `ids` that exist.
pub(super) async fn media_rows(c: &Conn, ids: &[String]) -> PgResult<Vec<MediaRecord>> {
    let sql = format!("SELECT {MEDIA_COLUMNS} FROM media WHERE id = ANY($1)");
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    Ok(query(c, &sql, &[&ids]).await?.iter().map(media_row).collect())
}

pub(super) async fn media_of(
    c: &Conn,
    user: UserId,
    after: Option<&str>,
    limit: u32,
) -> PgResult<Vec<MediaRecord>> {
    let sql = format!(
        "SELECT {MEDIA_COLUMNS} FROM media WHERE owner = $1 AND id > $2 ORDER BY id LIMIT $3"
    );
    let rows = query(c, &sql, &[&user.0, &after.unwrap_or(""), &i64::from(limit)]).await?;
    Ok(rows.iter().map(media_row).collect())
}

pub(super) async fn media_usage(c: &Conn, user: UserId) -> PgResult<u64> {
    let row = query_one(
        c,
        "SELECT coalesce(sum(size), 0)::BIGINT FROM media WHERE owner = $1",
        &[&user.0],
    )
    .await?;
    Ok(row.get::<_, i64>(0) as u64)
}

pub(super) async fn media_access(c: &Conn, user: UserId, id: &str) -> PgResult<bool> {
    let row = query_one(
        c,
        "SELECT EXISTS (SELECT 1 FROM media WHERE id = $1 AND owner = $2)
             OR EXISTS (SELECT 1 FROM media_refs r JOIN members m
                            ON m.conversation_id = r.conversation_id
                        WHERE r.media_id = $1 AND m.user_id = $2)",
        &[&id, &user.0],
    )
    .await?;
    Ok(row.get(0))
}

async fn create_media(c: &Conn, m: &NewMedia) -> PgResult<()> {
    // The owner's row lock serializes uploads of one owner across nodes (the quota check).
    query_opt(c, "SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE", &[&m.owner.0]).await?;
    rules::within_quota(media_usage(c, m.owner).await?, m.size, m.quota_bytes)?;
    let now = now_ms();
    let upsert =
        "INSERT INTO blobs (sha256, size, created_at, orphaned_at) VALUES ($1, $2, $3, NULL)
         ON CONFLICT (sha256) DO UPDATE SET orphaned_at = NULL";
    execute(c, upsert, &[&m.sha256, &(m.size as i64), &now]).await?;
    if let Some(t) = &m.thumbnail {
        execute(c, upsert, &[&t.sha256, &(t.size as i64), &now]).await?;
    }
    let thumb = m.thumbnail.as_ref();
    let st = c
        .prepare_cached(
            "INSERT INTO media (id, owner, sha256, size, content_type, name, width, height,
                 placeholder, thumb_sha256, thumb_width, thumb_height, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .await?;
    let res = c
        .execute(
            &st,
            &[
                &m.id,
                &m.owner.0,
                &m.sha256,
                &(m.size as i64),
                &m.content_type,
                &m.name,
                &m.width.map(i64::from),
                &m.height.map(i64::from),
                &m.placeholder,
                &thumb.map(|t| t.sha256.as_str()),
                &thumb.map(|t| i64::from(t.width)),
                &thumb.map(|t| i64::from(t.height)),
                &now,
            ],
        )
        .await;
    match res {
        Ok(_) => Ok(()),
        Err(err) if err.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            Err(StoreError::Conflict("media id is taken").into())
        }
        Err(err) => Err(err.into()),
    }
}

async fn collect_media(
    c: &Conn,
    unattached_before: i64,
    orphaned_before: i64,
) -> PgResult<Collected> {
    let media = execute(
        c,
        "DELETE FROM media WHERE created_at < $1
             AND NOT EXISTS (SELECT 1 FROM media_refs r WHERE r.media_id = media.id)
             AND NOT EXISTS (SELECT 1 FROM users u WHERE u.avatar = media.id)",
        &[&unattached_before],
    )
    .await?;
    let unreferenced = "NOT EXISTS (SELECT 1 FROM media m WHERE m.sha256 = blobs.sha256)
         AND NOT EXISTS (SELECT 1 FROM media m WHERE m.thumb_sha256 = blobs.sha256)";
    let sql =
        format!("UPDATE blobs SET orphaned_at = $1 WHERE orphaned_at IS NULL AND {unreferenced}");
    execute(c, &sql, &[&now_ms()]).await?;
    let sql =
        format!("DELETE FROM blobs WHERE orphaned_at <= $1 AND {unreferenced} RETURNING sha256");
    let blobs = query(c, &sql, &[&orphaned_before]).await?.iter().map(|r| r.get(0)).collect();
    Ok(Collected { media, blobs })
}

async fn change_group(
    c: &Conn,
    out: &mut Vec<Committed>,
    actor: UserId,
    conv: ConversationId,
    change: &GroupChange,
) -> PgResult<Ack> {
    let row = group_row(c, conv).await?;
    let actor = rules::group_actor(actor, row, role(c, actor, conv).await?)?;
    let subject = match rules::subject_of(change) {
        Some(user) => Some(subject(c, conv, user).await?),
        None => None,
    };
    let effect = rules::change_group(&actor, change, subject)?;
    let now = now_ms();
    let ack = apply(c, out, conv, actor.user, &effect, now).await?;
    if let GroupEffect::Remove { owner_left: true, .. } = effect {
        // The longest-standing admin, else member, takes over.
        let heir = query_opt(
            c,
            "SELECT user_id FROM members WHERE conversation_id = $1
             ORDER BY role = 'admin' DESC, joined_seq, user_id LIMIT 1",
            &[&conv.0],
        )
        .await?;
        match heir {
            Some(heir) => {
                apply(c, out, conv, actor.user, &rules::hand_on(UserId(heir.get(0))), now).await?;
            }
            None => {
                let sql = "DELETE FROM invitations WHERE conversation_id = $1";
                execute(c, sql, &[&conv.0]).await?;
            }
        }
    }
    Ok(ack)
}

/// The facts of the user a group change names.
async fn subject(c: &Conn, conv: ConversationId, user: UserId) -> PgResult<rules::Subject> {
    let row = query_one(
        c,
        "SELECT EXISTS (SELECT 1 FROM users WHERE id = $2),
                (SELECT role FROM members WHERE conversation_id = $1 AND user_id = $2)",
        &[&conv.0, &user.0],
    )
    .await?;
    let role = row.get::<_, Option<&str>>(1).map(parse_role);
    Ok(rules::Subject { exists: row.get(0), role })
}

/// Appends the entry of a group change and writes its rows.
async fn apply(
    c: &Conn,
    out: &mut Vec<Committed>,
    conv: ConversationId,
    actor: UserId,
    effect: &GroupEffect,
    now: i64,
) -> PgResult<Ack> {
    let ack = append_entry(c, out, conv, actor, None, effect.entry(), now).await?;
    match effect {
        GroupEffect::Add { user, role } => {
            insert_member(c, conv, *user, *role, ack.seq).await?;
            let sql = "DELETE FROM invitations WHERE conversation_id = $1 AND user_id = $2";
            execute(c, sql, &[&conv.0, &user.0]).await?;
        }
        GroupEffect::Remove { user, .. } => {
            let sql = "DELETE FROM members WHERE conversation_id = $1 AND user_id = $2";
            execute(c, sql, &[&conv.0, &user.0]).await?;
            let sql = "UPDATE conversations SET n_members = n_members - 1 WHERE id = $1";
            execute(c, sql, &[&conv.0]).await?;
        }
        GroupEffect::SetRole { user, role } => {
            let sql = "UPDATE members SET role = $3 WHERE conversation_id = $1 AND user_id = $2";
            execute(c, sql, &[&conv.0, &user.0, &role_str(*role)]).await?;
        }
        GroupEffect::SetTitle { title } => {
            let sql = "UPDATE conversations SET title = $2 WHERE id = $1";
            execute(c, sql, &[&conv.0, title]).await?;
        }
        GroupEffect::Mute { user, until } => {
            let sql =
                "UPDATE members SET muted_until = $3 WHERE conversation_id = $1 AND user_id = $2";
            execute(c, sql, &[&conv.0, &user.0, until]).await?;
        }
        GroupEffect::Ban { user } => {
            let sql = "DELETE FROM members WHERE conversation_id = $1 AND user_id = $2";
            let n = execute(c, sql, &[&conv.0, &user.0]).await? as i64;
            let sql = "UPDATE conversations SET n_members = n_members - $2 WHERE id = $1";
            execute(c, sql, &[&conv.0, &n]).await?;
            let sql = "DELETE FROM invitations WHERE conversation_id = $1 AND user_id = $2";
            execute(c, sql, &[&conv.0, &user.0]).await?;
            execute(
                c,
                "INSERT INTO group_bans (conversation_id, user_id, banned_by, banned_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (conversation_id, user_id)
                 DO UPDATE SET banned_by = $3, banned_at = $4",
                &[&conv.0, &user.0, &actor.0, &now],
            )
            .await?;
        }
        GroupEffect::Settings { slow_mode_secs, locked } => {
            let sql = "UPDATE conversations SET slow_mode_secs = $2, locked = $3 WHERE id = $1";
            execute(c, sql, &[&conv.0, &(*slow_mode_secs as i32), locked]).await?;
        }
    }
    Ok(ack)
}

/// Appends one entry at the conversation's next seq and keeps the message projection in step.
pub(super) async fn append_entry(
    c: &Conn,
    out: &mut Vec<Committed>,
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
    project(c, conv, seq, sender, now, &body).await?;
    let appended =
        Appended { conversation: conv, seq, id, sender, ts: now, client_msg_id, body, members_seq };
    Ok(appended.push(out))
}

/// Keeps `message_state` and `reactions` equal to the log's effect, and with them the search
/// index (issue 15; `crate::search`): a live message's `tsv` holds its folded tokens under
/// the connection's `default_text_search_config` (the store's `text_search_config`), made
/// again on an edit and cleared on a deletion.
async fn project(
    c: &Conn,
    conv: ConversationId,
    seq: u64,
    sender: UserId,
    ts: i64,
    body: &EntryBody,
) -> PgResult<()> {
    let seq = seq as i64;
    match body {
        EntryBody::Message { body, attachments, .. } => {
            let names = search::attachment_names(attachments);
            let tokens = search::index_document(body, &names);
            execute(
                c,
                "INSERT INTO message_state
                     (conversation_id, seq, sender, body, ts, has_attachment, names, tsv)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, to_tsvector($8))",
                &[&conv.0, &seq, &sender.0, body, &ts, &!attachments.is_empty(), &names, &tokens],
            )
            .await?;
        }
        EntryBody::Edit { target, body } => {
            let target = *target as i64;
            let names: String = query_one(
                c,
                "SELECT names FROM message_state WHERE conversation_id = $1 AND seq = $2",
                &[&conv.0, &target],
            )
            .await?
            .get(0);
            let tokens = search::index_document(body, &names);
            execute(
                c,
                "UPDATE message_state SET body = $3, edited_seq = $4, tsv = to_tsvector($5)
                 WHERE conversation_id = $1 AND seq = $2",
                &[&conv.0, &target, body, &seq, &tokens],
            )
            .await?;
        }
        EntryBody::Delete { target } => {
            execute(
                c,
                "UPDATE message_state SET body = '', deleted = true, tsv = NULL
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
    let original = query_opt(
        c,
        "SELECT body FROM entries WHERE conversation_id = $1 AND seq = $2",
        &[&conv.0, &(target as i64)],
    )
    .await?;
    let (message, edit) = rules::redacted(original.as_ref().map(|row| row.get(0)), target)?;
    let target = target as i64;
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
    execute(
        c,
        "DELETE FROM media_refs WHERE conversation_id = $1 AND seq = $2",
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
        let Some(receipt) = rules::advance_cursors(u, delivered, read, last) else {
            continue;
        };
        execute(
            c,
            "UPDATE members SET delivered_seq = $3, read_seq = $4
             WHERE conversation_id = $1 AND user_id = $2",
            &[
                &u.conversation.0,
                &u.user.0,
                &(receipt.delivered_seq as i64),
                &(receipt.read_seq as i64),
            ],
        )
        .await?;
        if receipt.read_seq > read {
            super::push::clear_read(c, u.user, u.conversation, receipt.read_seq as i64).await?;
        }
        changed.push(receipt);
    }
    Ok(changed)
}
