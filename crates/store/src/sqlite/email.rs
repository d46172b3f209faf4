//! Email addresses and the digest queue (issue 14) on SQLite: one row per user owed a
//! digest, claimed under a lease like push jobs.

use natter_proto::{ConversationId, UserId};
use rusqlite::{Connection, OptionalExtension, params};

use super::internal;
use crate::{DigestJob, DigestOutcome, EmailAddress, MAX_DIGEST_CONVERSATIONS, Result};

pub(super) fn set_email(c: &Connection, user: UserId, email: Option<&str>) -> Result<()> {
    c.prepare_cached(
        "UPDATE users SET
             email_verified_at = CASE WHEN email IS ?2 THEN email_verified_at END,
             digests_off = CASE WHEN email IS ?2 THEN digests_off ELSE 0 END,
             email = ?2
         WHERE id = ?1",
    )
    .and_then(|mut st| st.execute(params![user.0, email]))
    .map_err(internal)?;
    if email.is_none() {
        c.prepare_cached("DELETE FROM email_digests WHERE user_id = ?1")
            .and_then(|mut st| st.execute(params![user.0]))
            .map_err(internal)?;
    }
    Ok(())
}

pub(super) fn email(c: &Connection, user: UserId) -> Result<Option<EmailAddress>> {
    c.prepare_cached(
        "SELECT email, email_verified_at IS NOT NULL, digests_off = 0 FROM users
         WHERE id = ?1 AND email IS NOT NULL",
    )
    .and_then(|mut st| {
        st.query_row(params![user.0], |r| {
            Ok(EmailAddress { email: r.get(0)?, verified: r.get(1)?, digests: r.get(2)? })
        })
        .optional()
    })
    .map_err(internal)
}

pub(super) fn verify_email(c: &Connection, user: UserId, email: &str, now: i64) -> Result<bool> {
    let n = c
        .prepare_cached(
            "UPDATE users SET email_verified_at = coalesce(email_verified_at, ?3)
             WHERE id = ?1 AND email = ?2",
        )
        .and_then(|mut st| st.execute(params![user.0, email, now]))
        .map_err(internal)?;
    Ok(n == 1)
}

pub(super) fn set_digests(c: &Connection, user: UserId, email: &str, on: bool) -> Result<bool> {
    let n = c
        .prepare_cached("UPDATE users SET digests_off = ?3 WHERE id = ?1 AND email = ?2")
        .and_then(|mut st| st.execute(params![user.0, email, !on]))
        .map_err(internal)?;
    if !on {
        c.prepare_cached("DELETE FROM email_digests WHERE user_id = ?1")
            .and_then(|mut st| st.execute(params![user.0]))
            .map_err(internal)?;
    }
    Ok(n == 1)
}

pub(super) fn queue(c: &Connection, users: &[UserId], due_at: i64, period_ms: i64) -> Result<u64> {
    let mut st = c
        .prepare_cached(
            "INSERT INTO email_digests (user_id, due_at)
             SELECT id, max(?2, coalesce(last_digest_at, 0) + ?3) FROM users
             WHERE id = ?1 AND email IS NOT NULL AND email_verified_at IS NOT NULL
               AND digests_off = 0
             ON CONFLICT (user_id) DO NOTHING",
        )
        .map_err(internal)?;
    let mut n = 0;
    for user in users {
        n += st.execute(params![user.0, due_at, period_ms]).map_err(internal)? as u64;
    }
    Ok(n)
}

pub(super) fn claim(c: &Connection, now: i64, lease_ms: i64, limit: u32) -> Result<Vec<DigestJob>> {
    let claimed: Vec<(i64, Option<String>)> = c
        .prepare_cached(
            "UPDATE email_digests SET claimed_until = ?2
             WHERE user_id IN (SELECT user_id FROM email_digests
                               WHERE due_at <= ?1 AND coalesce(claimed_until, 0) <= ?1
                               ORDER BY due_at LIMIT ?3)
             RETURNING user_id, (SELECT email FROM users u
                                 WHERE u.id = email_digests.user_id
                                   AND u.email_verified_at IS NOT NULL AND u.digests_off = 0)",
        )
        .and_then(|mut st| {
            st.query_map(params![now, now.saturating_add(lease_ms), i64::from(limit)], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect()
        })
        .map_err(internal)?;
    let mut jobs = Vec::with_capacity(claimed.len());
    for (user, email) in claimed {
        let Some(email) = email else {
            finish(c, UserId(user), DigestOutcome::Nothing)?;
            continue;
        };
        let conversations = c
            .prepare_cached(
                "SELECT m.conversation_id FROM members m
                 JOIN conversations k ON k.id = m.conversation_id
                 WHERE m.user_id = ?1 AND k.last_seq > m.read_seq
                   AND coalesce(m.push_muted_until, 0) <= ?2
                 ORDER BY k.last_activity DESC, k.id DESC LIMIT ?3",
            )
            .and_then(|mut st| {
                st.query_map(params![user, now, MAX_DIGEST_CONVERSATIONS], |r| {
                    Ok(ConversationId(r.get(0)?))
                })?
                .collect()
            })
            .map_err(internal)?;
        jobs.push(DigestJob { user: UserId(user), email, conversations });
    }
    Ok(jobs)
}

pub(super) fn finish(c: &Connection, user: UserId, outcome: DigestOutcome) -> Result<()> {
    match outcome {
        DigestOutcome::Retry { due_at } => {
            c.prepare_cached(
                "UPDATE email_digests SET due_at = ?2, claimed_until = NULL WHERE user_id = ?1",
            )
            .and_then(|mut st| st.execute(params![user.0, due_at]))
            .map_err(internal)?;
        }
        DigestOutcome::Sent { at } => {
            c.prepare_cached("UPDATE users SET last_digest_at = ?2 WHERE id = ?1")
                .and_then(|mut st| st.execute(params![user.0, at]))
                .map_err(internal)?;
            c.prepare_cached("DELETE FROM email_digests WHERE user_id = ?1")
                .and_then(|mut st| st.execute(params![user.0]))
                .map_err(internal)?;
        }
        DigestOutcome::Nothing => {
            c.prepare_cached("DELETE FROM email_digests WHERE user_id = ?1")
                .and_then(|mut st| st.execute(params![user.0]))
                .map_err(internal)?;
        }
    }
    Ok(())
}
