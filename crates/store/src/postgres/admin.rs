//! Reports and server administration on PostgreSQL: the writing jobs run on the committer
//! (each audited in its own savepoint), the reads on the pool. The rules are
//! `crate::rules`'s, as for SQLite.

use natter_proto::rest::{AdminUser, AuditEntry, Report, ReportStatus};
use natter_proto::{Ack, Committed, ConversationId, DeviceId, EntryBody, Seq, UserId};
use tokio_postgres::Row;

use super::write::{append_entry, execute, message, query, query_opt, role};
use super::{Conn, PgResult, read};
use crate::codec::now_ms;
use crate::{NewReport, ReportTarget, StoreError, rules};

/// A writing job of this module.
#[derive(Debug)]
pub(crate) enum AdminOp {
    CreateReport(NewReport),
    ResolveReport { admin: UserId, id: i64, status: ReportStatus, note: Option<String> },
    SetAdmin { user: UserId, admin: bool, actor: Option<UserId> },
    Suspend { admin: UserId, user: UserId, until: i64, reason: String },
    Restore { admin: UserId, user: UserId },
    RemoveMessage { admin: UserId, conversation: ConversationId, seq: Seq },
    RemoveMessagesBy { admin: UserId, user: UserId, limit: u32 },
}

/// What an [`AdminOp`] returns.
#[derive(Debug)]
pub(crate) enum AdminOut {
    Id(i64),
    Devices(Vec<DeviceId>),
    Ack(Ack),
    Count(u64),
    Done,
}

impl AdminOp {
    /// The conversation whose counter row the job locks first (0: none).
    pub(crate) fn lock_order(&self) -> i64 {
        match self {
            AdminOp::RemoveMessage { conversation, .. } => conversation.0,
            _ => 0,
        }
    }
}

pub(crate) async fn run(c: &Conn, op: &AdminOp, out: &mut Vec<Committed>) -> PgResult<AdminOut> {
    Ok(match op {
        AdminOp::CreateReport(r) => AdminOut::Id(create_report(c, r).await?),
        AdminOp::ResolveReport { admin, id, status, note } => {
            resolve_report(c, *admin, *id, *status, note.as_deref()).await?;
            AdminOut::Done
        }
        AdminOp::SetAdmin { user, admin, actor } => {
            set_admin(c, *user, *admin, *actor).await?;
            AdminOut::Done
        }
        AdminOp::Suspend { admin, user, until, reason } => {
            AdminOut::Devices(suspend(c, *admin, *user, *until, reason).await?)
        }
        AdminOp::Restore { admin, user } => {
            restore(c, *admin, *user).await?;
            AdminOut::Done
        }
        AdminOp::RemoveMessage { admin, conversation, seq } => {
            AdminOut::Ack(remove_message(c, out, *admin, *conversation, *seq).await?)
        }
        AdminOp::RemoveMessagesBy { admin, user, limit } => {
            AdminOut::Count(remove_messages_by(c, out, *admin, *user, *limit).await?)
        }
    })
}

/// One audit row, in the transaction of the action it records.
#[derive(Default)]
struct Audit {
    target_user: Option<UserId>,
    conversation: Option<ConversationId>,
    seq: Option<Seq>,
    report: Option<i64>,
    details: serde_json::Value,
}

async fn audit(c: &Conn, actor: Option<UserId>, action: &str, a: Audit) -> PgResult<()> {
    let details = if a.details.is_null() { "{}".to_owned() } else { a.details.to_string() };
    execute(
        c,
        "INSERT INTO audit_log
             (actor, action, target_user, conversation_id, seq, report_id, details, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &actor.map(|u| u.0),
            &action,
            &a.target_user.map(|u| u.0),
            &a.conversation.map(|c| c.0),
            &a.seq.map(|s| s as i64),
            &a.report,
            &details,
            &now_ms(),
        ],
    )
    .await?;
    Ok(())
}

async fn create_report(c: &Conn, r: &NewReport) -> PgResult<i64> {
    let (subject, conv, seq, snapshot) = match r.target {
        ReportTarget::Message { conversation, seq } => {
            let member = match r.reporter {
                Some(reporter) => role(c, reporter, conversation).await?.is_some(),
                None => false,
            };
            let may_read = member || r.reporter.is_none();
            let target = if may_read { message(c, conversation, seq).await? } else { None };
            let author = target.filter(|m| !m.deleted).map(|m| m.sender);
            let subject = rules::report_message(r.reporter, member, author)?;
            let range = crate::Range::After(seq.saturating_sub(1));
            let page = read::entries(c, conversation, range, 1).await?;
            let entry = page.entries.into_iter().find(|e| e.seq == seq);
            let entry = entry.ok_or(StoreError::NotFound("message"))?;
            let snapshot = serde_json::to_string(&entry).map_err(crate::postgres::internal)?;
            (subject, Some(conversation), Some(seq), snapshot)
        }
        ReportTarget::User(user) => {
            let shares = match r.reporter {
                Some(reporter) => query_opt(
                    c,
                    "SELECT 1 FROM members x JOIN members y
                       ON y.conversation_id = x.conversation_id
                     WHERE x.user_id = $1 AND y.user_id = $2 LIMIT 1",
                    &[&reporter.0, &user.0],
                )
                .await?
                .is_some(),
                None => false,
            };
            rules::report_user(r.reporter, user, shares)?;
            let profile =
                read::users(c, &[user]).await?.pop().ok_or(StoreError::NotFound("user"))?;
            let snapshot = serde_json::to_string(&profile).map_err(crate::postgres::internal)?;
            (user, None, None, snapshot)
        }
    };
    let row = query(
        c,
        "INSERT INTO reports (reporter, subject, conversation_id, seq, reason, snapshot, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        &[
            &r.reporter.map(|u| u.0),
            &subject.0,
            &conv.map(|c| c.0),
            &seq.map(|s| s as i64),
            &r.reason,
            &snapshot,
            &now_ms(),
        ],
    )
    .await?;
    Ok(row[0].get(0))
}

const REPORT_COLUMNS: &str = "r.id, r.reporter, a.handle, r.subject, s.handle, r.conversation_id,
     r.seq, r.reason, r.snapshot, r.status, r.created_at, r.note, r.resolved_by, r.resolved_at
     FROM reports r LEFT JOIN users a ON a.id = r.reporter JOIN users s ON s.id = r.subject";

fn report_row(r: &Row) -> Report {
    Report {
        id: r.get(0),
        reporter: r.get::<_, Option<i64>>(1).map(UserId),
        reporter_handle: r.get(2),
        subject: UserId(r.get(3)),
        subject_handle: r.get(4),
        conversation: r.get::<_, Option<i64>>(5).map(ConversationId),
        seq: r.get::<_, Option<i64>>(6).map(|s| s as u64),
        reason: r.get(7),
        snapshot: serde_json::from_str(r.get(8)).unwrap_or(serde_json::Value::Null),
        status: ReportStatus::parse(r.get(9)).unwrap_or(ReportStatus::Open),
        created_at: r.get(10),
        note: r.get(11),
        resolved_by: r.get::<_, Option<i64>>(12).map(UserId),
        resolved_at: r.get(13),
    }
}

pub(crate) async fn reports(
    c: &Conn,
    status: Option<ReportStatus>,
    before: Option<i64>,
    limit: u32,
) -> PgResult<Vec<Report>> {
    let sql = format!(
        "SELECT {REPORT_COLUMNS} WHERE r.id < $1 AND ($2::TEXT IS NULL OR r.status = $2)
         ORDER BY r.id DESC LIMIT $3"
    );
    let status = status.map(ReportStatus::as_str);
    let rows = query(c, &sql, &[&before.unwrap_or(i64::MAX), &status, &i64::from(limit)]).await?;
    Ok(rows.iter().map(report_row).collect())
}

async fn resolve_report(
    c: &Conn,
    admin: UserId,
    id: i64,
    to: ReportStatus,
    note: Option<&str>,
) -> PgResult<()> {
    let row = query_opt(c, "SELECT status FROM reports WHERE id = $1 FOR UPDATE", &[&id]).await?;
    let now = row.as_ref().and_then(|r| ReportStatus::parse(r.get(0)));
    let action = rules::resolve_report(now, to)?;
    execute(
        c,
        "UPDATE reports SET status = $2, note = $3, resolved_by = $4, resolved_at = $5 WHERE id = $1",
        &[&id, &to.as_str(), &note, &admin.0, &now_ms()],
    )
    .await?;
    let details = serde_json::json!({ "note": note });
    audit(c, Some(admin), action, Audit { report: Some(id), details, ..Audit::default() }).await
}

pub(crate) async fn is_admin(c: &Conn, user: UserId) -> PgResult<bool> {
    let row = query_opt(c, "SELECT is_admin FROM users WHERE id = $1", &[&user.0]).await?;
    Ok(row.is_some_and(|r| r.get(0)))
}

async fn set_admin(c: &Conn, user: UserId, admin: bool, actor: Option<UserId>) -> PgResult<()> {
    let sql = "UPDATE users SET is_admin = $2 WHERE id = $1 AND deleted_at IS NULL";
    if execute(c, sql, &[&user.0, &admin]).await? == 0 {
        return Err(StoreError::NotFound("user").into());
    }
    let action = if admin { "grant_admin" } else { "revoke_admin" };
    audit(c, actor, action, Audit { target_user: Some(user), ..Audit::default() }).await
}

pub(crate) async fn admin_users(
    c: &Conn,
    prefix: Option<&str>,
    after: Option<UserId>,
    limit: u32,
) -> PgResult<Vec<AdminUser>> {
    let sql = format!(
        "SELECT {}, u.is_admin, u.suspended_until, u.suspension_reason, u.created_at
         FROM users u
         WHERE u.id > $1
           AND ($2::TEXT IS NULL OR lower(u.handle) LIKE $2 OR u.display_key LIKE $2)
         ORDER BY u.id LIMIT $3",
        read::USER_COLUMNS
    );
    let pattern = prefix.map(crate::codec::prefix_pattern);
    let rows = query(c, &sql, &[&after.map_or(0, |u| u.0), &pattern, &i64::from(limit)]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let until: Option<i64> = r.get(8);
            AdminUser {
                user: read::user_at(r, 0),
                admin: r.get(7),
                suspended_until: until.filter(|u| *u != crate::BANNED),
                banned: until == Some(crate::BANNED),
                suspension_reason: r.get(9),
                created_at: r.get(10),
            }
        })
        .collect())
}

async fn suspend(
    c: &Conn,
    admin: UserId,
    user: UserId,
    until: i64,
    reason: &str,
) -> PgResult<Vec<DeviceId>> {
    let row = query_opt(
        c,
        "SELECT is_admin FROM users WHERE id = $1 AND deleted_at IS NULL FOR UPDATE",
        &[&user.0],
    )
    .await?;
    let action = rules::suspend(admin, user, row.map(|r| r.get(0)), until)?;
    let rows = query(
        c,
        "WITH u AS (UPDATE users SET suspended_until = $2, suspension_reason = $3 WHERE id = $1)
         DELETE FROM devices WHERE user_id = $1 RETURNING id",
        &[&user.0, &until, &reason],
    )
    .await?;
    let devices: Vec<DeviceId> = rows.iter().map(|r| DeviceId(r.get(0))).collect();
    let until = (until != crate::BANNED).then_some(until);
    let details = serde_json::json!({ "reason": reason, "until": until, "devices": devices.len() });
    audit(c, Some(admin), action, Audit { target_user: Some(user), details, ..Audit::default() })
        .await?;
    Ok(devices)
}

async fn restore(c: &Conn, admin: UserId, user: UserId) -> PgResult<()> {
    let sql = "UPDATE users SET suspended_until = NULL, suspension_reason = NULL WHERE id = $1";
    if execute(c, sql, &[&user.0]).await? == 0 {
        return Err(StoreError::NotFound("user").into());
    }
    audit(c, Some(admin), "restore", Audit { target_user: Some(user), ..Audit::default() }).await
}

async fn remove_message(
    c: &Conn,
    out: &mut Vec<Committed>,
    admin: UserId,
    conv: ConversationId,
    seq: Seq,
) -> PgResult<Ack> {
    let target = message(c, conv, seq).await?;
    rules::remove_message(target)?;
    let body = EntryBody::Delete { target: seq };
    let ack = append_entry(c, out, conv, admin, None, body, now_ms()).await?;
    let author = target.map(|m| m.sender);
    let a =
        Audit { target_user: author, conversation: Some(conv), seq: Some(seq), ..Audit::default() };
    audit(c, Some(admin), "remove_message", a).await?;
    Ok(ack)
}

async fn remove_messages_by(
    c: &Conn,
    out: &mut Vec<Committed>,
    admin: UserId,
    user: UserId,
    limit: u32,
) -> PgResult<u64> {
    let rows = query(
        c,
        "SELECT conversation_id, seq FROM message_state
         WHERE sender = $1 AND NOT deleted ORDER BY conversation_id, seq LIMIT $2",
        &[&user.0, &i64::from(limit)],
    )
    .await?;
    let now = now_ms();
    for r in &rows {
        let (conv, seq): (i64, i64) = (r.get(0), r.get(1));
        let body = EntryBody::Delete { target: seq as u64 };
        append_entry(c, out, ConversationId(conv), admin, None, body, now).await?;
    }
    let n = rows.len() as u64;
    if n > 0 {
        let details = serde_json::json!({ "count": n });
        let a = Audit { target_user: Some(user), details, ..Audit::default() };
        audit(c, Some(admin), "remove_messages", a).await?;
    }
    Ok(n)
}

pub(crate) async fn audit_log(
    c: &Conn,
    before: Option<i64>,
    limit: u32,
) -> PgResult<Vec<AuditEntry>> {
    let rows = query(
        c,
        "SELECT id, actor, action, target_user, conversation_id, seq, report_id, details,
                created_at
         FROM audit_log WHERE id < $1 ORDER BY id DESC LIMIT $2",
        &[&before.unwrap_or(i64::MAX), &i64::from(limit)],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| AuditEntry {
            id: r.get(0),
            actor: r.get::<_, Option<i64>>(1).map(UserId),
            action: r.get(2),
            target_user: r.get::<_, Option<i64>>(3).map(UserId),
            conversation: r.get::<_, Option<i64>>(4).map(ConversationId),
            seq: r.get::<_, Option<i64>>(5).map(|s| s as u64),
            report: r.get(6),
            details: serde_json::from_str(r.get(7)).unwrap_or(serde_json::Value::Null),
            created_at: r.get(8),
        })
        .collect())
}
