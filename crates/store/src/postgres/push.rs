//! Push registrations and the durable push queue (issue 14) on PostgreSQL: the same queue
//! as `sqlite/push.rs`. Nodes claim due jobs with `FOR UPDATE SKIP LOCKED` under a lease, so
//! two nodes never hold one job, and a dead node's jobs are claimed again when their lease
//! lapses.

use natter_proto::{ConversationId, DeviceId, UserId};
use tokio_postgres::Row;

use super::write::{execute, query, query_one, query_opt};
use super::{Conn, PgResult};
use crate::codec::now_ms;
use crate::{
    NewPushRegistration, PushCandidate, PushJob, PushKind, PushOutcome, PushRegistration,
    StoreError,
};

pub(crate) async fn add_registration(
    c: &Conn,
    user: UserId,
    device: DeviceId,
    r: &NewPushRegistration,
) -> PgResult<i64> {
    let n: i64 = query_one(
        c,
        "SELECT count(*) FROM push_registrations
         WHERE user_id = $1 AND NOT (provider = $2 AND token = $3)",
        &[&user.0, &r.provider, &r.token],
    )
    .await?
    .get(0);
    if n >= crate::MAX_PUSH_REGISTRATIONS {
        return Err(StoreError::Conflict("too many push registrations").into());
    }
    let row = query_one(
        c,
        "INSERT INTO push_registrations (user_id, device_id, provider, token, p256dh, auth, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (provider, token) DO UPDATE SET user_id = excluded.user_id,
             device_id = excluded.device_id, p256dh = excluded.p256dh, auth = excluded.auth
         RETURNING id",
        &[&user.0, &device.0, &r.provider, &r.token, &r.p256dh, &r.auth, &now_ms()],
    )
    .await?;
    Ok(row.get(0))
}

fn registration_row(r: &Row) -> PushRegistration {
    PushRegistration {
        id: r.get(0),
        user: UserId(r.get(1)),
        device: DeviceId(r.get(2)),
        provider: r.get(3),
        token: r.get(4),
        p256dh: r.get(5),
        auth: r.get(6),
        created_at: r.get(7),
    }
}

pub(crate) async fn registrations(c: &Conn, user: UserId) -> PgResult<Vec<PushRegistration>> {
    let rows = query(
        c,
        "SELECT id, user_id, device_id, provider, token, p256dh, auth, created_at
         FROM push_registrations WHERE user_id = $1 ORDER BY id",
        &[&user.0],
    )
    .await?;
    Ok(rows.iter().map(registration_row).collect())
}

pub(crate) async fn delete_registration(c: &Conn, user: UserId, id: i64) -> PgResult<()> {
    let sql = "DELETE FROM push_registrations WHERE id = $1 AND user_id = $2";
    if execute(c, sql, &[&id, &user.0]).await? == 0 {
        return Err(StoreError::NotFound("push registration").into());
    }
    Ok(())
}

pub(crate) async fn drop_token(c: &Conn, provider: &str, token: &str) -> PgResult<()> {
    let sql = "DELETE FROM push_registrations WHERE provider = $1 AND token = $2";
    execute(c, sql, &[&provider, &token]).await?;
    Ok(())
}

pub(crate) async fn mute(
    c: &Conn,
    user: UserId,
    conv: Option<ConversationId>,
    until: Option<i64>,
) -> PgResult<()> {
    match conv {
        Some(conv) => {
            let sql = "UPDATE members SET push_muted_until = $3
                       WHERE conversation_id = $1 AND user_id = $2";
            if execute(c, sql, &[&conv.0, &user.0, &until]).await? == 0 {
                return Err(StoreError::NotFound("conversation").into());
            }
        }
        None => {
            execute(c, "UPDATE users SET dnd_until = $2 WHERE id = $1", &[&user.0, &until]).await?;
        }
    }
    Ok(())
}

pub(crate) async fn queue(c: &Conn, candidates: &[PushCandidate], now: i64) -> PgResult<u64> {
    let mut n = 0;
    for p in candidates {
        n += execute(
            c,
            "INSERT INTO push_jobs (user_id, conversation_id, kind, first_seq, last_seq, count,
                                    sender, preview, due_at, created_at)
             SELECT $1, $2, 'notify', $3, $3, 1, $4, $5, $6, $7
             WHERE EXISTS (SELECT 1 FROM push_registrations WHERE user_id = $1)
               AND NOT EXISTS (SELECT 1 FROM users WHERE id = $1 AND dnd_until > $7)
               AND EXISTS (SELECT 1 FROM members WHERE conversation_id = $2 AND user_id = $1
                           AND coalesce(push_muted_until, 0) <= $7 AND read_seq < $3)
             ON CONFLICT (user_id, conversation_id, kind) DO UPDATE SET
                 last_seq = GREATEST(push_jobs.last_seq, excluded.last_seq),
                 count = push_jobs.count + 1,
                 sender = excluded.sender, preview = excluded.preview",
            &[
                &p.user.0,
                &p.conversation.0,
                &(p.seq as i64),
                &p.sender.0,
                &p.preview,
                &p.due_at,
                &now,
            ],
        )
        .await?;
    }
    Ok(n)
}

pub(crate) async fn claim(c: &Conn, now: i64, lease_ms: i64, limit: u32) -> PgResult<Vec<PushJob>> {
    let rows = query(
        c,
        "UPDATE push_jobs j SET claimed_until = $2
         FROM (SELECT id FROM push_jobs
               WHERE due_at <= $1 AND coalesce(claimed_until, 0) <= $1
               ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED) due
         WHERE j.id = due.id
         RETURNING j.id, j.user_id, j.conversation_id, j.kind, j.first_seq, j.last_seq, j.count,
                   j.sender, j.preview, j.attempts,
                   (SELECT title FROM conversations WHERE id = j.conversation_id AND kind = 'group'),
                   (SELECT handle FROM users WHERE id = j.sender)",
        &[&now, &now.saturating_add(lease_ms), &i64::from(limit)],
    )
    .await?;
    let mut jobs = Vec::with_capacity(rows.len());
    for r in rows {
        let user = UserId(r.get(1));
        jobs.push(PushJob {
            id: r.get(0),
            user,
            conversation: ConversationId(r.get(2)),
            kind: if r.get::<_, &str>(3) == "clear" { PushKind::Clear } else { PushKind::Notify },
            first_seq: r.get::<_, i64>(4) as u64,
            last_seq: r.get::<_, i64>(5) as u64,
            count: r.get::<_, i64>(6) as u64,
            sender: UserId(r.get(7)),
            sender_handle: r.get::<_, Option<String>>(11).unwrap_or_default(),
            title: r.get(10),
            preview: r.get(8),
            attempts: r.get::<_, i64>(9) as u32,
            registrations: registrations(c, user).await?,
        });
    }
    Ok(jobs)
}

pub(crate) async fn finish(c: &Conn, id: i64, outcome: PushOutcome) -> PgResult<()> {
    let PushOutcome::Done { last_seq, count, shown, next_due } = outcome else {
        let PushOutcome::Retry { due_at } = outcome else { unreachable!() };
        execute(
            c,
            "UPDATE push_jobs SET due_at = $2, attempts = attempts + 1, claimed_until = NULL
             WHERE id = $1",
            &[&id, &due_at],
        )
        .await?;
        return Ok(());
    };
    let last = last_seq as i64;
    // What coalesced into the job while it was out stays; the rest goes. Each statement
    // re-checks `last_seq`, so a message joining in between is never dropped.
    let done = loop {
        let kept = query_opt(
            c,
            "UPDATE push_jobs SET first_seq = $2 + 1, count = GREATEST(count - $3, 1),
                 due_at = $4, attempts = 0, claimed_until = NULL
             WHERE id = $1 AND kind = 'notify' AND last_seq > $2
             RETURNING user_id, conversation_id, kind",
            &[&id, &last, &(count as i64), &next_due],
        )
        .await?;
        if kept.is_some() {
            break kept;
        }
        let gone = query_opt(
            c,
            "DELETE FROM push_jobs WHERE id = $1 AND (kind = 'clear' OR last_seq <= $2)
             RETURNING user_id, conversation_id, kind",
            &[&id, &last],
        )
        .await?;
        if gone.is_some() {
            break gone;
        }
        if query_opt(c, "SELECT 1 FROM push_jobs WHERE id = $1", &[&id]).await?.is_none() {
            // Gone already: the user read the conversation while it was out, so the
            // notification just shown is stale at once.
            if let Some((user, conv)) = shown {
                queue_clear(c, user, conv, last).await?;
            }
            return Ok(());
        }
    };
    if let Some(row) = done
        && shown.is_some()
        && row.get::<_, &str>(2) == "notify"
    {
        execute(
            c,
            "INSERT INTO push_state (user_id, conversation_id, pushed_upto) VALUES ($1, $2, $3)
             ON CONFLICT (user_id, conversation_id)
             DO UPDATE SET pushed_upto = GREATEST(push_state.pushed_upto, excluded.pushed_upto)",
            &[&row.get::<_, i64>(0), &row.get::<_, i64>(1), &last],
        )
        .await?;
    }
    Ok(())
}

/// `user` read `conv` up to `read` (in `set_cursors`' transaction): pending notifications
/// of it are dropped, and if one was shown, a `clear` job is queued (due now).
pub(crate) async fn clear_read(
    c: &Conn,
    user: UserId,
    conv: ConversationId,
    read: i64,
) -> PgResult<()> {
    execute(
        c,
        "DELETE FROM push_jobs
         WHERE user_id = $1 AND conversation_id = $2 AND kind = 'notify' AND last_seq <= $3",
        &[&user.0, &conv.0, &read],
    )
    .await?;
    // A job that also covers later messages now starts after what was read.
    execute(
        c,
        "UPDATE push_jobs SET first_seq = $3 + 1,
             count = GREATEST(1, (SELECT count(*) FROM entries e
                                  WHERE e.conversation_id = $2 AND e.seq > $3
                                    AND e.seq <= push_jobs.last_seq
                                    AND e.kind = 'message' AND e.sender <> $1))
         WHERE user_id = $1 AND conversation_id = $2 AND kind = 'notify' AND first_seq <= $3",
        &[&user.0, &conv.0, &read],
    )
    .await?;
    let shown = query_opt(
        c,
        "DELETE FROM push_state WHERE user_id = $1 AND conversation_id = $2 AND pushed_upto <= $3
         RETURNING pushed_upto",
        &[&user.0, &conv.0, &read],
    )
    .await?;
    if shown.is_some() {
        queue_clear(c, user, conv, read).await?;
    }
    Ok(())
}

/// A silent push removing `user`'s notification of `conv` (read up to `read`), due now.
async fn queue_clear(c: &Conn, user: UserId, conv: ConversationId, read: i64) -> PgResult<()> {
    let now = now_ms();
    execute(
        c,
        "INSERT INTO push_jobs (user_id, conversation_id, kind, first_seq, last_seq, count,
                                sender, preview, due_at, created_at)
         VALUES ($1, $2, 'clear', $3, $3, 0, 0, '', $4, $4)
         ON CONFLICT (user_id, conversation_id, kind)
         DO UPDATE SET last_seq = GREATEST(push_jobs.last_seq, excluded.last_seq),
                       due_at = excluded.due_at",
        &[&user.0, &conv.0, &read, &now],
    )
    .await?;
    Ok(())
}
