//! Reports and server administration: writing jobs on the writer thread (each audited in
//! its own transaction) and their reads. The rules are `crate::rules`'s, as for PostgreSQL.

use natter_proto::rest::{AdminUser, AuditEntry, Report, ReportStatus};
use natter_proto::{Ack, Committed, ConversationId, DeviceId, EntryBody, Seq, UserId};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{internal, read, write};
use crate::codec::now_ms;
use crate::{NewReport, ReportTarget, Result, StoreError, rules};

/// One audit row, in the transaction of the action it records.
#[derive(Default)]
pub(super) struct Audit {
    pub(super) target_user: Option<UserId>,
    pub(super) conversation: Option<ConversationId>,
    pub(super) seq: Option<Seq>,
    pub(super) report: Option<i64>,
    pub(super) details: serde_json::Value,
}

pub(super) fn audit(c: &Connection, actor: Option<UserId>, action: &str, a: Audit) -> Result<()> {
    let details = if a.details.is_null() { "{}".to_owned() } else { a.details.to_string() };
    c.prepare_cached(
        "INSERT INTO audit_log
             (actor, action, target_user, conversation_id, seq, report_id, details, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut st| {
        st.execute(params![
            actor.map(|u| u.0),
            action,
            a.target_user.map(|u| u.0),
            a.conversation.map(|c| c.0),
            a.seq.map(|s| s as i64),
            a.report,
            details,
            now_ms()
        ])
    })
    .map_err(internal)?;
    Ok(())
}

pub(super) fn create_report(c: &Connection, r: &NewReport) -> Result<i64> {
    let (subject, conv, seq, snapshot) = match r.target {
        ReportTarget::Message { conversation, seq } => {
            let member = match r.reporter {
                Some(reporter) => write::role(c, reporter, conversation)?.is_some(),
                None => false,
            };
            let may_read = member || r.reporter.is_none();
            let target = if may_read { write::message(c, conversation, seq)? } else { None };
            let author = target.filter(|m| !m.deleted).map(|m| m.sender);
            let subject = rules::report_message(r.reporter, member, author)?;
            let page =
                read::entries(c, conversation, crate::Range::After(seq.saturating_sub(1)), 1)?;
            let entry = page.entries.into_iter().find(|e| e.seq == seq);
            let entry = entry.ok_or(StoreError::NotFound("message"))?;
            let snapshot = serde_json::to_string(&entry).map_err(internal)?;
            (subject, Some(conversation), Some(seq), snapshot)
        }
        ReportTarget::User(user) => {
            let shares = match r.reporter {
                Some(reporter) => shares(c, reporter, user)?,
                None => false,
            };
            rules::report_user(r.reporter, user, shares)?;
            let profile = read::users(c, &[user])?.pop().ok_or(StoreError::NotFound("user"))?;
            (user, None, None, serde_json::to_string(&profile).map_err(internal)?)
        }
    };
    c.prepare_cached(
        "INSERT INTO reports (reporter, subject, conversation_id, seq, reason, snapshot, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut st| {
        st.execute(params![
            r.reporter.map(|u| u.0),
            subject.0,
            conv.map(|c| c.0),
            seq.map(|s| s as i64),
            r.reason,
            snapshot,
            now_ms()
        ])
    })
    .map_err(internal)?;
    Ok(c.last_insert_rowid())
}

/// Whether two users share a conversation whatever blocks lie between them (one may report
/// a user one has blocked).
fn shares(c: &Connection, a: UserId, b: UserId) -> Result<bool> {
    c.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM members x JOIN members y
             ON y.conversation_id = x.conversation_id WHERE x.user_id = ?1 AND y.user_id = ?2)",
    )
    .and_then(|mut st| st.query_row(params![a.0, b.0], |r| r.get(0)))
    .map_err(internal)
}

const REPORT_COLUMNS: &str = "r.id, r.reporter, a.handle, r.subject, s.handle, r.conversation_id,
     r.seq, r.reason, r.snapshot, r.status, r.created_at, r.note, r.resolved_by, r.resolved_at
     FROM reports r LEFT JOIN users a ON a.id = r.reporter JOIN users s ON s.id = r.subject";

fn report_row(r: &Row<'_>) -> rusqlite::Result<Report> {
    let snapshot: String = r.get(8)?;
    let status: String = r.get(9)?;
    Ok(Report {
        id: r.get(0)?,
        reporter: r.get::<_, Option<i64>>(1)?.map(UserId),
        reporter_handle: r.get(2)?,
        subject: UserId(r.get(3)?),
        subject_handle: r.get(4)?,
        conversation: r.get::<_, Option<i64>>(5)?.map(ConversationId),
        seq: r.get::<_, Option<i64>>(6)?.map(|s| s as u64),
        reason: r.get(7)?,
        snapshot: serde_json::from_str(&snapshot).unwrap_or(serde_json::Value::Null),
        status: ReportStatus::parse(&status).unwrap_or(ReportStatus::Open),
        created_at: r.get(10)?,
        note: r.get(11)?,
        resolved_by: r.get::<_, Option<i64>>(12)?.map(UserId),
        resolved_at: r.get(13)?,
    })
}

pub(super) fn reports(
    c: &Connection,
    status: Option<ReportStatus>,
    before: Option<i64>,
    limit: u32,
) -> Result<Vec<Report>> {
    let sql = format!(
        "SELECT {REPORT_COLUMNS} WHERE r.id < ?1 AND (?2 IS NULL OR r.status = ?2)
         ORDER BY r.id DESC LIMIT ?3"
    );
    let mut st = c.prepare_cached(&sql).map_err(internal)?;
    let status = status.map(ReportStatus::as_str);
    let rows = st
        .query_map(params![before.unwrap_or(i64::MAX), status, i64::from(limit)], report_row)
        .map_err(internal)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(internal)
}

pub(super) fn resolve_report(
    c: &Connection,
    admin: UserId,
    id: i64,
    to: ReportStatus,
    note: Option<&str>,
) -> Result<()> {
    let now: Option<String> = c
        .prepare_cached("SELECT status FROM reports WHERE id = ?1")
        .and_then(|mut st| st.query_row(params![id], |r| r.get(0)).optional())
        .map_err(internal)?;
    let action = rules::resolve_report(now.as_deref().and_then(ReportStatus::parse), to)?;
    c.prepare_cached(
        "UPDATE reports SET status = ?2, note = ?3, resolved_by = ?4, resolved_at = ?5 WHERE id = ?1",
    )
    .and_then(|mut st| st.execute(params![id, to.as_str(), note, admin.0, now_ms()]))
    .map_err(internal)?;
    let details = serde_json::json!({ "note": note });
    audit(c, Some(admin), action, Audit { report: Some(id), details, ..Audit::default() })
}

pub(super) fn is_admin(c: &Connection, user: UserId) -> Result<bool> {
    c.prepare_cached("SELECT is_admin FROM users WHERE id = ?1")
        .and_then(|mut st| st.query_row(params![user.0], |r| r.get(0)).optional())
        .map(|v| v.unwrap_or(false))
        .map_err(internal)
}

pub(super) fn set_admin(
    c: &Connection,
    user: UserId,
    admin: bool,
    actor: Option<UserId>,
) -> Result<()> {
    let n = c
        .prepare_cached("UPDATE users SET is_admin = ?2 WHERE id = ?1 AND deleted_at IS NULL")
        .and_then(|mut st| st.execute(params![user.0, admin]))
        .map_err(internal)?;
    if n == 0 {
        return Err(StoreError::NotFound("user"));
    }
    let action = if admin { "grant_admin" } else { "revoke_admin" };
    audit(c, actor, action, Audit { target_user: Some(user), ..Audit::default() })
}

pub(super) fn admin_users(
    c: &Connection,
    prefix: Option<&str>,
    after: Option<UserId>,
    limit: u32,
) -> Result<Vec<AdminUser>> {
    let sql = format!(
        "SELECT {}, u.is_admin, u.suspended_until, u.suspension_reason, u.created_at
         FROM users u
         WHERE u.id > ?1
           AND (?2 IS NULL OR lower(u.handle) LIKE ?2 ESCAPE '\\' OR u.display_key LIKE ?2 ESCAPE '\\')
         ORDER BY u.id LIMIT ?3",
        read::USER_COLUMNS
    );
    let pattern = prefix.map(crate::codec::prefix_pattern);
    let mut st = c.prepare_cached(&sql).map_err(internal)?;
    let rows = st
        .query_map(params![after.map_or(0, |u| u.0), pattern, i64::from(limit)], |r| {
            let until: Option<i64> = r.get(8)?;
            Ok(AdminUser {
                user: read::user_row(r)?,
                admin: r.get(7)?,
                suspended_until: until.filter(|u| *u != crate::BANNED),
                banned: until == Some(crate::BANNED),
                suspension_reason: r.get(9)?,
                created_at: r.get(10)?,
            })
        })
        .map_err(internal)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(internal)
}

pub(super) fn suspend(
    c: &Connection,
    admin: UserId,
    user: UserId,
    until: i64,
    reason: &str,
) -> Result<Vec<DeviceId>> {
    let action = rules::suspend(admin, user, is_admin_opt(c, user)?, until)?;
    c.prepare_cached("UPDATE users SET suspended_until = ?2, suspension_reason = ?3 WHERE id = ?1")
        .and_then(|mut st| st.execute(params![user.0, until, reason]))
        .map_err(internal)?;
    let devices: Vec<DeviceId> = c
        .prepare_cached("DELETE FROM devices WHERE user_id = ?1 RETURNING id")
        .and_then(|mut st| st.query_map(params![user.0], |r| Ok(DeviceId(r.get(0)?)))?.collect())
        .map_err(internal)?;
    let until = (until != crate::BANNED).then_some(until);
    let details = serde_json::json!({ "reason": reason, "until": until, "devices": devices.len() });
    audit(c, Some(admin), action, Audit { target_user: Some(user), details, ..Audit::default() })?;
    Ok(devices)
}

/// Whether the user is an administrator; `None` if there is no such account.
fn is_admin_opt(c: &Connection, user: UserId) -> Result<Option<bool>> {
    c.prepare_cached("SELECT is_admin FROM users WHERE id = ?1 AND deleted_at IS NULL")
        .and_then(|mut st| st.query_row(params![user.0], |r| r.get(0)).optional())
        .map_err(internal)
}

pub(super) fn restore(c: &Connection, admin: UserId, user: UserId) -> Result<()> {
    let n = c
        .prepare_cached(
            "UPDATE users SET suspended_until = NULL, suspension_reason = NULL WHERE id = ?1",
        )
        .and_then(|mut st| st.execute(params![user.0]))
        .map_err(internal)?;
    if n == 0 {
        return Err(StoreError::NotFound("user"));
    }
    audit(c, Some(admin), "restore", Audit { target_user: Some(user), ..Audit::default() })
}

pub(super) fn remove_message(
    c: &Connection,
    out: &mut Vec<Committed>,
    admin: UserId,
    conv: ConversationId,
    seq: Seq,
) -> Result<Ack> {
    let target = write::message(c, conv, seq)?;
    rules::remove_message(target)?;
    let ack = write::append_entry(
        c,
        out,
        conv,
        admin,
        None,
        EntryBody::Delete { target: seq },
        now_ms(),
    )?;
    let author = target.map(|m| m.sender);
    let a =
        Audit { target_user: author, conversation: Some(conv), seq: Some(seq), ..Audit::default() };
    audit(c, Some(admin), "remove_message", a)?;
    Ok(ack)
}

pub(super) fn remove_messages_by(
    c: &Connection,
    out: &mut Vec<Committed>,
    admin: UserId,
    user: UserId,
    limit: u32,
) -> Result<u64> {
    let live: Vec<(i64, i64)> = c
        .prepare_cached(
            "SELECT conversation_id, seq FROM message_state
             WHERE sender = ?1 AND NOT deleted ORDER BY conversation_id, seq LIMIT ?2",
        )
        .and_then(|mut st| {
            st.query_map(params![user.0, i64::from(limit)], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .map_err(internal)?;
    let now = now_ms();
    for &(conv, seq) in &live {
        let body = EntryBody::Delete { target: seq as u64 };
        write::append_entry(c, out, ConversationId(conv), admin, None, body, now)?;
    }
    let n = live.len() as u64;
    if n > 0 {
        let details = serde_json::json!({ "count": n });
        let a = Audit { target_user: Some(user), details, ..Audit::default() };
        audit(c, Some(admin), "remove_messages", a)?;
    }
    Ok(n)
}

pub(super) fn audit_log(
    c: &Connection,
    before: Option<i64>,
    limit: u32,
) -> Result<Vec<AuditEntry>> {
    let mut st = c
        .prepare_cached(
            "SELECT id, actor, action, target_user, conversation_id, seq, report_id, details,
                    created_at
             FROM audit_log WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
        )
        .map_err(internal)?;
    let rows = st
        .query_map(params![before.unwrap_or(i64::MAX), i64::from(limit)], |r| {
            let details: String = r.get(7)?;
            Ok(AuditEntry {
                id: r.get(0)?,
                actor: r.get::<_, Option<i64>>(1)?.map(UserId),
                action: r.get(2)?,
                target_user: r.get::<_, Option<i64>>(3)?.map(UserId),
                conversation: r.get::<_, Option<i64>>(4)?.map(ConversationId),
                seq: r.get::<_, Option<i64>>(5)?.map(|s| s as u64),
                report: r.get(6)?,
                details: serde_json::from_str(&details).unwrap_or(serde_json::Value::Null),
                created_at: r.get(8)?,
            })
        })
        .map_err(internal)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(internal)
}
