//! Push registrations and the durable push queue (issue 14) on SQLite. The queue's rules
//! live in its SQL: one pending `notify` job per user and conversation that later messages
//! join until it is due, claimed by a node with a lease, and dropped or turned into a
//! `clear` job when the user reads the conversation (`clear_read`, from `set_cursors`).

use natter_proto::{ConversationId, DeviceId, UserId};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::internal;
use crate::codec::now_ms;
use crate::{
    NewPushRegistration, PushCandidate, PushJob, PushKind, PushOutcome, PushRegistration, Result,
    StoreError,
};

/// Most push registrations one user may have.
pub(crate) const MAX_REGISTRATIONS: i64 = crate::MAX_PUSH_REGISTRATIONS;

pub(super) fn add_registration(
    c: &Connection,
    user: UserId,
    device: DeviceId,
    r: &NewPushRegistration,
) -> Result<i64> {
    let n: i64 = c
        .prepare_cached(
            "SELECT count(*) FROM push_registrations
             WHERE user_id = ?1 AND NOT (provider = ?2 AND token = ?3)",
        )
        .and_then(|mut st| st.query_row(params![user.0, r.provider, r.token], |r| r.get(0)))
        .map_err(internal)?;
    if n >= MAX_REGISTRATIONS {
        return Err(StoreError::Conflict("too many push registrations"));
    }
    c.prepare_cached(
        "INSERT INTO push_registrations (user_id, device_id, provider, token, p256dh, auth, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (provider, token) DO UPDATE SET user_id = excluded.user_id,
             device_id = excluded.device_id, p256dh = excluded.p256dh, auth = excluded.auth
         RETURNING id",
    )
    .and_then(|mut st| {
        st.query_row(
            params![user.0, device.0, r.provider, r.token, r.p256dh, r.auth, now_ms()],
            |r| r.get(0),
        )
    })
    .map_err(internal)
}

const REGISTRATION_COLUMNS: &str =
    "id, user_id, device_id, provider, token, p256dh, auth, created_at";

fn registration_row(r: &Row<'_>) -> rusqlite::Result<PushRegistration> {
    Ok(PushRegistration {
        id: r.get(0)?,
        user: UserId(r.get(1)?),
        device: DeviceId(r.get(2)?),
        provider: r.get(3)?,
        token: r.get(4)?,
        p256dh: r.get(5)?,
        auth: r.get(6)?,
        created_at: r.get(7)?,
    })
}

pub(super) fn registrations(c: &Connection, user: UserId) -> Result<Vec<PushRegistration>> {
    let sql = format!(
        "SELECT {REGISTRATION_COLUMNS} FROM push_registrations WHERE user_id = ?1 ORDER BY id"
    );
    let mut st = c.prepare_cached(&sql).map_err(internal)?;
    let rows = st.query_map(params![user.0], registration_row).map_err(internal)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(internal)
}

pub(super) fn delete_registration(c: &Connection, user: UserId, id: i64) -> Result<()> {
    let n = c
        .prepare_cached("DELETE FROM push_registrations WHERE id = ?1 AND user_id = ?2")
        .and_then(|mut st| st.execute(params![id, user.0]))
        .map_err(internal)?;
    if n == 0 { Err(StoreError::NotFound("push registration")) } else { Ok(()) }
}

pub(super) fn drop_token(c: &Connection, provider: &str, token: &str) -> Result<()> {
    c.prepare_cached("DELETE FROM push_registrations WHERE provider = ?1 AND token = ?2")
        .and_then(|mut st| st.execute(params![provider, token]))
        .map_err(internal)?;
    Ok(())
}

pub(super) fn mute(
    c: &Connection,
    user: UserId,
    conv: Option<ConversationId>,
    until: Option<i64>,
) -> Result<()> {
    match conv {
        Some(conv) => {
            let n = c
                .prepare_cached(
                    "UPDATE members SET push_muted_until = ?3
                     WHERE conversation_id = ?1 AND user_id = ?2",
                )
                .and_then(|mut st| st.execute(params![conv.0, user.0, until]))
                .map_err(internal)?;
            if n == 0 {
                return Err(StoreError::NotFound("conversation"));
            }
        }
        None => {
            c.prepare_cached("UPDATE users SET dnd_until = ?2 WHERE id = ?1")
                .and_then(|mut st| st.execute(params![user.0, until]))
                .map_err(internal)?;
        }
    }
    Ok(())
}

pub(super) fn queue(c: &Connection, candidates: &[PushCandidate], now: i64) -> Result<u64> {
    let mut st = c
        .prepare_cached(
            "INSERT INTO push_jobs (user_id, conversation_id, kind, first_seq, last_seq, count,
                                    sender, preview, due_at, created_at)
             SELECT ?1, ?2, 'notify', ?3, ?3, 1, ?4, ?5, ?6, ?7
             WHERE EXISTS (SELECT 1 FROM push_registrations WHERE user_id = ?1)
               AND NOT EXISTS (SELECT 1 FROM users WHERE id = ?1 AND dnd_until > ?7)
               AND EXISTS (SELECT 1 FROM members WHERE conversation_id = ?2 AND user_id = ?1
                           AND coalesce(push_muted_until, 0) <= ?7 AND read_seq < ?3)
             ON CONFLICT (user_id, conversation_id, kind) DO UPDATE SET
                 last_seq = max(push_jobs.last_seq, excluded.last_seq),
                 count = push_jobs.count + 1,
                 sender = excluded.sender, preview = excluded.preview",
        )
        .map_err(internal)?;
    let mut n = 0;
    for p in candidates {
        n += st
            .execute(params![
                p.user.0,
                p.conversation.0,
                p.seq as i64,
                p.sender.0,
                p.preview,
                p.due_at,
                now
            ])
            .map_err(internal)? as u64;
    }
    Ok(n)
}

pub(super) fn claim(c: &Connection, now: i64, lease_ms: i64, limit: u32) -> Result<Vec<PushJob>> {
    let mut jobs: Vec<PushJob> = c
        .prepare_cached(
            "UPDATE push_jobs SET claimed_until = ?2
             WHERE id IN (SELECT id FROM push_jobs
                          WHERE due_at <= ?1 AND coalesce(claimed_until, 0) <= ?1
                          ORDER BY due_at LIMIT ?3)
             RETURNING id, user_id, conversation_id, kind, first_seq, last_seq, count, sender,
                       preview, attempts",
        )
        .and_then(|mut st| {
            st.query_map(params![now, now.saturating_add(lease_ms), i64::from(limit)], |r| {
                let kind: String = r.get(3)?;
                Ok(PushJob {
                    id: r.get(0)?,
                    user: UserId(r.get(1)?),
                    conversation: ConversationId(r.get(2)?),
                    kind: if kind == "clear" { PushKind::Clear } else { PushKind::Notify },
                    first_seq: r.get::<_, i64>(4)? as u64,
                    last_seq: r.get::<_, i64>(5)? as u64,
                    count: r.get::<_, i64>(6)? as u64,
                    sender: UserId(r.get(7)?),
                    sender_handle: String::new(),
                    title: None,
                    preview: r.get(8)?,
                    attempts: r.get::<_, i64>(9)? as u32,
                    registrations: Vec::new(),
                })
            })?
            .collect()
        })
        .map_err(internal)?;
    for job in &mut jobs {
        let (title, handle): (Option<String>, Option<String>) = c
            .prepare_cached(
                "SELECT (SELECT title FROM conversations WHERE id = ?1 AND kind = 'group'),
                        (SELECT handle FROM users WHERE id = ?2)",
            )
            .and_then(|mut st| {
                st.query_row(params![job.conversation.0, job.sender.0], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
            })
            .map_err(internal)?;
        job.title = title;
        job.sender_handle = handle.unwrap_or_default();
        job.registrations = registrations(c, job.user)?;
    }
    Ok(jobs)
}

pub(super) fn finish(c: &Connection, id: i64, outcome: PushOutcome) -> Result<()> {
    match outcome {
        PushOutcome::Retry { due_at } => {
            c.prepare_cached(
                "UPDATE push_jobs SET due_at = ?2, attempts = attempts + 1, claimed_until = NULL
                 WHERE id = ?1",
            )
            .and_then(|mut st| st.execute(params![id, due_at]))
            .map_err(internal)?;
        }
        PushOutcome::Done { last_seq, count, shown, next_due } => {
            let job: Option<(i64, i64, String, i64)> = c
                .prepare_cached(
                    "SELECT user_id, conversation_id, kind, last_seq FROM push_jobs WHERE id = ?1",
                )
                .and_then(|mut st| {
                    st.query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                        .optional()
                })
                .map_err(internal)?;
            let Some((user, conv, kind, now_last)) = job else {
                // Gone already: the user read the conversation while it was out, so the
                // notification just shown is stale at once.
                if let Some((user, conv)) = shown {
                    queue_clear(c, user, conv, last_seq as i64)?;
                }
                return Ok(());
            };
            if now_last as u64 > last_seq && kind == "notify" {
                c.prepare_cached(
                    "UPDATE push_jobs SET first_seq = ?2, count = max(count - ?3, 1),
                         due_at = ?4, attempts = 0, claimed_until = NULL
                     WHERE id = ?1",
                )
                .and_then(|mut st| {
                    st.execute(params![id, last_seq as i64 + 1, count as i64, next_due])
                })
                .map_err(internal)?;
            } else {
                c.prepare_cached("DELETE FROM push_jobs WHERE id = ?1")
                    .and_then(|mut st| st.execute(params![id]))
                    .map_err(internal)?;
            }
            if kind == "notify" && shown.is_some() {
                c.prepare_cached(
                    "INSERT INTO push_state (user_id, conversation_id, pushed_upto) VALUES (?1, ?2, ?3)
                     ON CONFLICT (user_id, conversation_id)
                     DO UPDATE SET pushed_upto = max(pushed_upto, excluded.pushed_upto)",
                )
                .and_then(|mut st| st.execute(params![user, conv, last_seq as i64]))
                .map_err(internal)?;
            }
        }
    }
    Ok(())
}

/// `user` read `conv` up to `read`: pending notifications of it are dropped, and if one was
/// shown, a `clear` job is queued (due now).
pub(super) fn clear_read(
    c: &Connection,
    user: UserId,
    conv: ConversationId,
    read: i64,
) -> Result<()> {
    c.prepare_cached(
        "DELETE FROM push_jobs
         WHERE user_id = ?1 AND conversation_id = ?2 AND kind = 'notify' AND last_seq <= ?3",
    )
    .and_then(|mut st| st.execute(params![user.0, conv.0, read]))
    .map_err(internal)?;
    // A job that also covers later messages now starts after what was read.
    c.prepare_cached(
        "UPDATE push_jobs SET first_seq = ?3 + 1,
             count = max(1, (SELECT count(*) FROM entries e
                             WHERE e.conversation_id = ?2 AND e.seq > ?3
                               AND e.seq <= push_jobs.last_seq
                               AND e.kind = 'message' AND e.sender <> ?1))
         WHERE user_id = ?1 AND conversation_id = ?2 AND kind = 'notify' AND first_seq <= ?3",
    )
    .and_then(|mut st| st.execute(params![user.0, conv.0, read]))
    .map_err(internal)?;
    let shown: Option<i64> = c
        .prepare_cached(
            "DELETE FROM push_state WHERE user_id = ?1 AND conversation_id = ?2 AND pushed_upto <= ?3
             RETURNING pushed_upto",
        )
        .and_then(|mut st| st.query_row(params![user.0, conv.0, read], |r| r.get(0)).optional())
        .map_err(internal)?;
    if shown.is_some() {
        queue_clear(c, user, conv, read)?;
    }
    Ok(())
}

/// A silent push removing `user`'s notification of `conv` (read up to `read`), due now.
fn queue_clear(c: &Connection, user: UserId, conv: ConversationId, read: i64) -> Result<()> {
    let now = now_ms();
    c.prepare_cached(
        "INSERT INTO push_jobs (user_id, conversation_id, kind, first_seq, last_seq, count,
                                sender, preview, due_at, created_at)
         VALUES (?1, ?2, 'clear', ?3, ?3, 0, 0, '', ?4, ?4)
         ON CONFLICT (user_id, conversation_id, kind)
         DO UPDATE SET last_seq = max(last_seq, excluded.last_seq), due_at = excluded.due_at",
    )
    .and_then(|mut st| st.execute(params![user.0, conv.0, read, now]))
    .map_err(internal)?;
    Ok(())
}
