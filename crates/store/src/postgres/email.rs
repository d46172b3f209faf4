//! Email addresses and the digest queue (issue 14) on PostgreSQL: the same queue as
//! `sqlite/email.rs`, claimed with `FOR UPDATE SKIP LOCKED` under a lease.

use natter_proto::{ConversationId, UserId};

use super::write::{execute, query, query_opt};
use super::{Conn, PgResult};
use crate::{DigestJob, DigestOutcome, EmailAddress, MAX_DIGEST_CONVERSATIONS};

pub(crate) async fn set_email(c: &Conn, user: UserId, email: Option<&str>) -> PgResult<()> {
    execute(
        c,
        "UPDATE users SET
             email_verified_at = CASE WHEN email IS NOT DISTINCT FROM $2 THEN email_verified_at END,
             digests_off = CASE WHEN email IS NOT DISTINCT FROM $2 THEN digests_off ELSE FALSE END,
             email = $2
         WHERE id = $1",
        &[&user.0, &email],
    )
    .await?;
    if email.is_none() {
        execute(c, "DELETE FROM email_digests WHERE user_id = $1", &[&user.0]).await?;
    }
    Ok(())
}

pub(crate) async fn email(c: &Conn, user: UserId) -> PgResult<Option<EmailAddress>> {
    let row = query_opt(
        c,
        "SELECT email, email_verified_at IS NOT NULL, NOT digests_off FROM users
         WHERE id = $1 AND email IS NOT NULL",
        &[&user.0],
    )
    .await?;
    Ok(row.map(|r| EmailAddress { email: r.get(0), verified: r.get(1), digests: r.get(2) }))
}

pub(crate) async fn verify_email(c: &Conn, user: UserId, email: &str, now: i64) -> PgResult<bool> {
    let n = execute(
        c,
        "UPDATE users SET email_verified_at = coalesce(email_verified_at, $3)
         WHERE id = $1 AND email = $2",
        &[&user.0, &email, &now],
    )
    .await?;
    Ok(n == 1)
}

pub(crate) async fn set_digests(c: &Conn, user: UserId, email: &str, on: bool) -> PgResult<bool> {
    let n = execute(
        c,
        "UPDATE users SET digests_off = $3 WHERE id = $1 AND email = $2",
        &[&user.0, &email, &!on],
    )
    .await?;
    if !on {
        execute(c, "DELETE FROM email_digests WHERE user_id = $1", &[&user.0]).await?;
    }
    Ok(n == 1)
}

pub(crate) async fn queue(
    c: &Conn,
    users: &[UserId],
    due_at: i64,
    period_ms: i64,
) -> PgResult<u64> {
    let ids: Vec<i64> = users.iter().map(|u| u.0).collect();
    execute(
        c,
        "INSERT INTO email_digests (user_id, due_at)
         SELECT id, GREATEST($2, coalesce(last_digest_at, 0) + $3) FROM users
         WHERE id = ANY($1) AND email IS NOT NULL AND email_verified_at IS NOT NULL
           AND NOT digests_off
         ON CONFLICT (user_id) DO NOTHING",
        &[&ids, &due_at, &period_ms],
    )
    .await
}

pub(crate) async fn claim(
    c: &Conn,
    now: i64,
    lease_ms: i64,
    limit: u32,
) -> PgResult<Vec<DigestJob>> {
    let claimed = query(
        c,
        "UPDATE email_digests d SET claimed_until = $2
         FROM (SELECT user_id FROM email_digests
               WHERE due_at <= $1 AND coalesce(claimed_until, 0) <= $1
               ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED) due
         WHERE d.user_id = due.user_id
         RETURNING d.user_id, (SELECT email FROM users u
                               WHERE u.id = d.user_id
                                 AND u.email_verified_at IS NOT NULL AND NOT u.digests_off)",
        &[&now, &now.saturating_add(lease_ms), &i64::from(limit)],
    )
    .await?;
    let mut jobs = Vec::with_capacity(claimed.len());
    for row in claimed {
        let user = UserId(row.get(0));
        let Some(email) = row.get::<_, Option<String>>(1) else {
            finish(c, user, DigestOutcome::Nothing).await?;
            continue;
        };
        let rows = query(
            c,
            "SELECT m.conversation_id FROM members m
             JOIN conversations k ON k.id = m.conversation_id
             WHERE m.user_id = $1 AND k.last_seq > m.read_seq
               AND coalesce(m.push_muted_until, 0) <= $2
             ORDER BY k.last_activity DESC, k.id DESC LIMIT $3",
            &[&user.0, &now, &i64::from(MAX_DIGEST_CONVERSATIONS)],
        )
        .await?;
        let conversations = rows.iter().map(|r| ConversationId(r.get(0))).collect();
        jobs.push(DigestJob { user, email, conversations });
    }
    Ok(jobs)
}

pub(crate) async fn finish(c: &Conn, user: UserId, outcome: DigestOutcome) -> PgResult<()> {
    match outcome {
        DigestOutcome::Retry { due_at } => {
            execute(
                c,
                "UPDATE email_digests SET due_at = $2, claimed_until = NULL WHERE user_id = $1",
                &[&user.0, &due_at],
            )
            .await?;
        }
        DigestOutcome::Sent { at } => {
            execute(c, "UPDATE users SET last_digest_at = $2 WHERE id = $1", &[&user.0, &at])
                .await?;
            execute(c, "DELETE FROM email_digests WHERE user_id = $1", &[&user.0]).await?;
        }
        DigestOutcome::Nothing => {
            execute(c, "DELETE FROM email_digests WHERE user_id = $1", &[&user.0]).await?;
        }
    }
    Ok(())
}
