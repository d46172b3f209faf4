//! # The admin API, `/v1/admin/…` (issue 13, part 5), and `POST /v1/reports`
//!
//! Server administrators (granted by `natter admin grant HANDLE` or the `admins` setting)
//! list users, suspend or ban them (every session ends on every node, logins are refused,
//! messages optionally removed), remove any message (a `delete` entry sent by the
//! administrator: every client's history follows), review and resolve reports, and read the
//! audit log, which records each of these actions in the transaction that makes it.
//!
//! To anyone else every admin route answers exactly as a route that does not exist
//! (`404 not_found "no such route"`), after authentication as everywhere.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use natter_proto::rest::{
    AdminUsers, AuditLog, NewReport, ReportId, ReportStatus, Reports, ResolveReport, Suspend,
    Suspended,
};
use natter_proto::{Ack, ConversationId, ErrorCode, UserId};
use natter_store::ReportTarget;
use serde::Deserialize;

use crate::auth::Auth;
use crate::error::{ApiError, ApiResult, JsonBody};
use crate::state::AppState;

/// Most rows one admin page returns, and the default.
const MAX_PAGE: u32 = 200;
const DEFAULT_PAGE: u32 = 50;
/// Messages removed per store transaction when a suspension removes a user's messages.
const REMOVE_BATCH: u32 = 500;
/// Longest report reason, suspension reason or resolution note, in characters.
const MAX_REASON_CHARS: usize = 1000;

/// A caller who is a server administrator.
pub(super) struct Admin(UserId);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Admin, ApiError> {
        let auth = Auth::from_request_parts(parts, state).await?;
        let me = auth.principal.user_id;
        if state.store().is_admin(me).await? { Ok(Admin(me)) } else { Err(no_such_route()) }
    }
}

/// What the router answers for a path it does not know.
pub(super) fn no_such_route() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

fn reason(field: &str, text: &str) -> ApiResult<String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(ApiError::bad_request(format!("{field} is empty")));
    }
    if text.chars().count() > MAX_REASON_CHARS {
        return Err(ApiError::too_large(format!("{field} is over {MAX_REASON_CHARS} characters")));
    }
    Ok(text.to_owned())
}

fn page(limit: Option<u32>) -> u32 {
    limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE)
}

/// `POST /v1/reports`: any member reports a message of their conversation, or a user who
/// shares a conversation with them; rate-limited (`reports_per_hour`).
#[utoipa::path(
    post, path = "/v1/reports", tag = "moderation",
    request_body = NewReport,
    responses((status = 201, description = "the report is queued", body = ReportId))
)]
pub(super) async fn report(
    State(state): State<AppState>,
    auth: Auth,
    body: JsonBody<NewReport>,
) -> ApiResult<(StatusCode, Json<ReportId>)> {
    let JsonBody(req) = body;
    let target = match (req.conversation, req.seq, req.user) {
        (Some(conversation), Some(seq), None) => {
            ReportTarget::Message { conversation, seq: crate::error::check_seq("seq", seq)? }
        }
        (None, None, Some(user)) => ReportTarget::User(user),
        _ => return Err(ApiError::bad_request("report a message (conversation, seq) or a user")),
    };
    let reason = reason("reason", &req.reason)?;
    let me = auth.principal.user_id;
    state.rate().check(crate::rate::Action::Report, me)?;
    let report = natter_store::NewReport { reporter: Some(me), target, reason };
    let id = state.store().create_report(report).await?;
    tracing::info!(report = id, reporter = me.0, "report filed");
    Ok((StatusCode::CREATED, Json(ReportId { id })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct UsersQuery {
    q: Option<String>,
    after: Option<i64>,
    limit: Option<u32>,
}

/// `GET /v1/admin/users?q=&after=&limit=`: everyone (deleted accounts too), by id; `q`
/// keeps those whose handle or display name starts with it.
#[utoipa::path(
    get, path = "/v1/admin/users", tag = "admin",
    params(UsersQuery),
    responses((status = 200, description = "a page of accounts", body = AdminUsers))
)]
pub(super) async fn users(
    State(state): State<AppState>,
    _admin: Admin,
    query: Result<Query<UsersQuery>, QueryRejection>,
) -> ApiResult<Json<AdminUsers>> {
    let Query(q) = query?;
    let limit = page(q.limit);
    let prefix = q.q.map(|p| p.trim().to_owned()).filter(|p| !p.is_empty());
    let after = q.after.map(UserId);
    let mut users = state.store().admin_users(prefix, after, limit).await?;
    users.iter_mut().for_each(|u| state.media().sign_user(&mut u.user));
    let next =
        (users.len() == limit as usize).then(|| users.last().map(|u| u.user.user_id)).flatten();
    Ok(Json(AdminUsers { users, next }))
}

/// `POST /v1/admin/users/{id}/suspend`: for `for_secs`, or a ban without it. Every login of
/// the user ends (their sessions close on every node) and logins are refused until it ends;
/// with `remove_messages`, each of their messages is removed as by a moderator.
#[utoipa::path(
    post, path = "/v1/admin/users/{id}/suspend", tag = "admin",
    params(("id" = i64, Path, description = "the user id")),
    request_body = Suspend,
    responses((status = 200, description = "suspended (or banned)", body = Suspended))
)]
pub(super) async fn suspend(
    State(state): State<AppState>,
    Admin(admin): Admin,
    id: Result<Path<i64>, PathRejection>,
    body: JsonBody<Suspend>,
) -> ApiResult<Json<Suspended>> {
    let user = UserId(id?.0);
    let JsonBody(req) = body;
    let reason = reason("reason", &req.reason)?;
    let until = match req.for_secs {
        None => natter_store::BANNED,
        Some(0) => return Err(ApiError::bad_request("for_secs is at least 1")),
        Some(secs) => crate::now_ms()
            .saturating_add(i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX))
            .min(natter_store::BANNED - 1),
    };
    let devices = state.store().suspend(admin, user, until, reason).await?;
    for device in &devices {
        super::accounts::end_device(&state, user, *device).await;
    }
    let mut removed = 0;
    if req.remove_messages {
        loop {
            let n = state.store().remove_messages_by(admin, user, REMOVE_BATCH).await?;
            removed += n;
            if n == 0 {
                break;
            }
        }
    }
    tracing::info!(admin = admin.0, user = user.0, until, removed, "account suspended");
    Ok(Json(Suspended { devices: devices.len() as u64, messages_removed: removed }))
}

/// `POST /v1/admin/users/{id}/restore`: lifts a suspension or ban.
#[utoipa::path(
    post, path = "/v1/admin/users/{id}/restore", tag = "admin",
    params(("id" = i64, Path, description = "the user id")),
    responses((status = 204, description = "the suspension is lifted"))
)]
pub(super) async fn restore(
    State(state): State<AppState>,
    Admin(admin): Admin,
    id: Result<Path<i64>, PathRejection>,
) -> ApiResult<StatusCode> {
    state.store().restore(admin, UserId(id?.0)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/admin/conversations/{id}/entries/{seq}`: removes a message of any
/// conversation.
#[utoipa::path(
    delete, path = "/v1/admin/conversations/{id}/entries/{seq}", tag = "admin",
    params(("id" = i64, Path, description = "the conversation's id"), ("seq" = u64, Path, description = "the message's seq")),
    responses((status = 200, description = "the `delete` entry", body = Ack))
)]
pub(super) async fn remove_message(
    State(state): State<AppState>,
    Admin(admin): Admin,
    path: Result<Path<(i64, u64)>, PathRejection>,
) -> ApiResult<Json<Ack>> {
    let Path((conv, seq)) = path?;
    let seq = crate::error::check_seq("seq", seq)?;
    Ok(Json(state.store().remove_message(admin, ConversationId(conv), seq).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    status: Option<String>,
    before: Option<i64>,
    limit: Option<u32>,
}

/// `GET /v1/admin/reports?status=open&before=&limit=`: the moderation queue, newest first.
#[utoipa::path(
    get, path = "/v1/admin/reports", tag = "admin",
    params(ListQuery),
    responses((status = 200, description = "a page of reports, newest first", body = Reports))
)]
pub(super) async fn reports(
    State(state): State<AppState>,
    _admin: Admin,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<Reports>> {
    let Query(q) = query?;
    let status =
        match q.status.as_deref() {
            None | Some("all") => None,
            Some(s) => Some(ReportStatus::parse(s).ok_or_else(|| {
                ApiError::bad_request("status is open, resolved, dismissed or all")
            })?),
        };
    let limit = page(q.limit);
    let reports = state.store().reports(status, q.before, limit).await?;
    let next = (reports.len() == limit as usize).then(|| reports.last().map(|r| r.id)).flatten();
    Ok(Json(Reports { reports, next }))
}

/// `POST /v1/admin/reports/{id}/resolve` `{status: resolved|dismissed, note?}`.
#[utoipa::path(
    post, path = "/v1/admin/reports/{id}/resolve", tag = "admin",
    params(("id" = i64, Path, description = "the report id")),
    request_body = ResolveReport,
    responses((status = 204, description = "resolved"))
)]
pub(super) async fn resolve(
    State(state): State<AppState>,
    Admin(admin): Admin,
    id: Result<Path<i64>, PathRejection>,
    body: JsonBody<ResolveReport>,
) -> ApiResult<StatusCode> {
    let id = id?.0;
    let JsonBody(req) = body;
    let note = req.note.as_deref().map(|n| reason("note", n)).transpose()?;
    state.store().resolve_report(admin, id, req.status, note).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditQuery {
    /// `next` of the previous page.
    before: Option<i64>,
    limit: Option<u32>,
}

/// `GET /v1/admin/audit?before=&limit=`: every administrator's action, newest first.
#[utoipa::path(
    get, path = "/v1/admin/audit", tag = "admin",
    params(AuditQuery),
    responses((status = 200, description = "a page of the audit log, newest first", body = AuditLog))
)]
pub(super) async fn audit(
    State(state): State<AppState>,
    _admin: Admin,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> ApiResult<Json<AuditLog>> {
    let Query(q) = query?;
    let limit = page(q.limit);
    let entries = state.store().audit_log(q.before, limit).await?;
    let next = (entries.len() == limit as usize).then(|| entries.last().map(|e| e.id)).flatten();
    Ok(Json(AuditLog { entries, next }))
}
