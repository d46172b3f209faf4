//! # Accounts and sessions: `POST /v1/accounts`, `POST /v1/sessions`,
//! `DELETE /v1/sessions/current`, `GET /v1/me`, `PATCH /v1/me/profile`, `GET /v1/users…`

use std::time::Instant;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use natter_proto::close;
use natter_proto::rest::{Credentials, Me, ProfileUpdate, Session, User};

use crate::auth::{self, Auth, ClientAddr, policy};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::{cluster, session};

/// `POST /v1/accounts`.
#[utoipa::path(
    post, path = "/v1/accounts", tag = "accounts",
    security(()),
    request_body = Credentials,
    responses((status = 201, description = "registered", body = User))
)]
pub(super) async fn register(
    State(state): State<AppState>,
    addr: ClientAddr,
    body: Result<Json<Credentials>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<User>)> {
    let Json(creds) = body?;
    let limits = &state.cfg().limits;
    let handle = policy::normalize_handle(&creds.handle);
    policy::check_handle(limits, &handle)?;
    policy::check_password(limits, &handle, &creds.password)?;
    let hash = auth::hash_password(&state, addr, creds.password).await?;
    let user_id = state.store().create_user(&handle, &hash).await?;
    Ok((StatusCode::CREATED, Json(User::new(user_id, handle))))
}

/// `POST /v1/sessions`: refused before any hashing while the address or the handle backs
/// off; an unknown handle costs one hash like a known one and answers the same.
#[utoipa::path(
    post, path = "/v1/sessions", tag = "accounts",
    security(()),
    request_body = Credentials,
    responses((status = 201, description = "logged in: the token", body = Session))
)]
pub(super) async fn login(
    State(state): State<AppState>,
    addr: ClientAddr,
    body: Result<Json<Credentials>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Session>)> {
    let Json(creds) = body?;
    let limits = &state.cfg().limits;
    let handle = policy::normalize_handle(&creds.handle);
    // No account has a longer handle (registration caps it), and a long one must not become
    // a key of the failure counts (their cap is in entries, not bytes).
    if handle.chars().count() > limits.max_handle_chars {
        return Err(ApiError::unauthenticated());
    }
    let key = natter_store::handle_key(&handle);
    if let Some(wait) = state.logins().blocked(addr, &key, Instant::now()) {
        return Err(ApiError::too_many_requests("too many failed logins; retry later", wait));
    }
    let user = if creds.password.len() > limits.max_password_bytes {
        None
    } else {
        let user = state.store().user_by_handle(&handle).await?;
        let phc = user.as_ref().map(|u| u.password_hash.clone());
        let ok = auth::verify_password(&state, addr, creds.password, phc).await?;
        user.filter(|_| ok)
    };
    let Some(user) = user else {
        state.logins().failed(limits, addr, &key, Instant::now());
        return Err(ApiError::unauthenticated());
    };
    state.logins().succeeded(&key);
    // Told only to someone who knows the password.
    if natter_store::suspended(user.suspended_until, crate::now_ms()) {
        return Err(ApiError::new(natter_proto::ErrorCode::Forbidden, "the account is suspended"));
    }
    let token = auth::new_token();
    let mut device = creds.device.unwrap_or_else(|| "unnamed".to_owned());
    device.truncate(device.floor_char_boundary(64));
    let device_id = state.store().create_device(user.id, &device, auth::token_hash(&token)).await?;
    Ok((StatusCode::CREATED, Json(Session { token, user_id: user.id, device_id })))
}

/// `DELETE /v1/sessions/current`: the token stops working, and every session opened with
/// it ends (WebSocket close 4001, SSE end of stream, long-poll stream gone), here at once
/// and on the other nodes through the bus.
#[utoipa::path(
    delete, path = "/v1/sessions/current", tag = "accounts",
    responses((status = 204, description = "the token used is revoked"))
)]
pub(super) async fn logout(State(state): State<AppState>, auth: Auth) -> ApiResult<StatusCode> {
    state.store().delete_device(auth.token_hash).await?;
    end_device(&state, auth.principal.user_id, auth.principal.device_id).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Ends every session of `device` here and on the other nodes (its token is gone).
pub(super) async fn end_device(
    state: &AppState,
    user: natter_proto::UserId,
    device: natter_proto::DeviceId,
) {
    let principal = natter_store::Principal { user_id: user, device_id: device };
    session::end_device(state, principal, close::UNAUTHENTICATED);
    cluster::revoke(state, principal).await;
}

/// `GET /v1/me/devices`: the caller's logins with their last use.
#[utoipa::path(
    get, path = "/v1/me/devices", tag = "accounts",
    responses((status = 200, description = "your logins", body = natter_proto::rest::Devices))
)]
pub(super) async fn devices(
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<Json<natter_proto::rest::Devices>> {
    let devices = state.store().devices(auth.principal.user_id).await?;
    Ok(Json(natter_proto::rest::Devices { devices, current: auth.principal.device_id }))
}

/// `DELETE /v1/me/devices/{id}`: revokes one of the caller's logins (the current one too):
/// its token stops working and its sessions end on every node.
#[utoipa::path(
    delete, path = "/v1/me/devices/{id}", tag = "accounts",
    params(("id" = i64, Path, description = "the device id")),
    responses((status = 204, description = "that login's token stops working"))
)]
pub(super) async fn revoke_device(
    State(state): State<AppState>,
    auth: Auth,
    id: Result<Path<i64>, PathRejection>,
) -> ApiResult<StatusCode> {
    let Path(id) = id.map_err(|_| ApiError::bad_request("a device id is a number"))?;
    let (user, device) = (auth.principal.user_id, natter_proto::DeviceId(id));
    state.store().revoke_device(user, device).await?;
    end_device(&state, user, device).await;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v1/me/password`: the current password, then the new one under the same rules as
/// at registration. Every other device of the account is logged out (its sessions end on
/// every node); the one asking stays.
#[utoipa::path(
    put, path = "/v1/me/password", tag = "accounts",
    request_body = natter_proto::rest::ChangePassword,
    responses((status = 204, description = "changed; other devices are logged out"))
)]
pub(super) async fn change_password(
    State(state): State<AppState>,
    auth: Auth,
    addr: ClientAddr,
    body: Result<Json<natter_proto::rest::ChangePassword>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let Json(req) = body?;
    let limits = &state.cfg().limits;
    let me = auth.principal.user_id;
    let handle = check_current_password(&state, addr, me, req.current_password).await?;
    policy::check_password(limits, &handle, &req.new_password)?;
    let hash = auth::hash_password(&state, addr, req.new_password).await?;
    let removed = state.store().set_password(me, &hash, auth.principal.device_id).await?;
    for device in removed {
        end_device(&state, me, device).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/me`: deletes the caller's account after checking the password (as a login
/// would, back-off included). Every session of it ends on every node; its messages stay,
/// from a user shown as deleted; its handle is free again after `deleted_handle_grace_secs`.
#[utoipa::path(
    delete, path = "/v1/me", tag = "accounts",
    request_body = natter_proto::rest::DeleteAccount,
    responses((status = 204, description = "the account is deleted"))
)]
pub(super) async fn delete_account(
    State(state): State<AppState>,
    auth: Auth,
    addr: ClientAddr,
    body: Result<Json<natter_proto::rest::DeleteAccount>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let Json(req) = body?;
    let me = auth.principal.user_id;
    check_current_password(&state, addr, me, req.password).await?;
    for device in state.store().delete_user(me).await? {
        end_device(&state, me, device).await;
    }
    tracing::info!(user_id = me.0, "account deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's password, checked like a login: refused while the handle backs off, and a
/// wrong one counts as a failed login (`403 forbidden`). The caller's handle.
async fn check_current_password(
    state: &AppState,
    addr: ClientAddr,
    me: natter_proto::UserId,
    password: String,
) -> ApiResult<String> {
    let limits = &state.cfg().limits;
    let handle = state.store().user_handle(me).await?.ok_or_else(ApiError::unauthenticated)?;
    // Wrong passwords count like failed logins of the handle: a stolen token does not get
    // unlimited guesses at the password.
    let key = natter_store::handle_key(&handle);
    if let Some(wait) = state.logins().blocked(addr, &key, Instant::now()) {
        return Err(ApiError::too_many_requests("too many failed logins; retry later", wait));
    }
    let phc = state.store().password_hash(me).await?;
    if password.len() > limits.max_password_bytes
        || !auth::verify_password(state, addr, password, phc).await?
    {
        state.logins().failed(limits, addr, &key, Instant::now());
        return Err(ApiError::new(natter_proto::ErrorCode::Forbidden, "the password is wrong"));
    }
    Ok(handle)
}

/// `POST /v1/tickets`: a ticket for `GET /v1/events?ticket=` (a browser's `EventSource`
/// cannot send an `Authorization` header), good for one use within 30 s (`auth/ticket.rs`).
#[utoipa::path(
    post, path = "/v1/tickets", tag = "accounts",
    responses((status = 201, description = "a one-use ticket for `GET /v1/events`", body = natter_proto::rest::Ticket))
)]
pub(super) async fn ticket(
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<(StatusCode, Json<natter_proto::rest::Ticket>)> {
    let ticket = state.tickets().issue(&auth.token_hash, crate::now_ms());
    let expires_in_ms = u64::try_from(auth::ticket::TICKET_TTL.as_millis()).unwrap_or(u64::MAX);
    Ok((StatusCode::CREATED, Json(natter_proto::rest::Ticket { ticket, expires_in_ms })))
}

#[utoipa::path(
    get, path = "/v1/me", tag = "accounts",
    responses((status = 200, description = "the caller", body = Me))
)]
pub(super) async fn me(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<Me>> {
    let p = auth.principal;
    let handle =
        state.store().user_handle(p.user_id).await?.ok_or_else(ApiError::unauthenticated)?;
    let admin = state.store().is_admin(p.user_id).await?;
    let email = state.store().email(p.user_id).await?.map(|e| natter_proto::rest::EmailOnFile {
        email: e.email,
        verified: e.verified,
        digests: e.digests,
    });
    Ok(Json(Me { user_id: p.user_id, handle, device_id: p.device_id, admin, email }))
}

/// Most ids one `GET /v1/users?ids=` looks up.
const MAX_USER_IDS: usize = 100;

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct UsersQuery {
    ids: Option<String>,
    q: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/users?ids=1,2,3`: profiles by id (a client rendering a member list or a
/// conversation's senders), those that exist, in the order asked; at most 100 ids.
/// `GET /v1/users?q=…&limit=`: a search (see [`search`]).
#[utoipa::path(
    get, path = "/v1/users", tag = "accounts",
    params(UsersQuery),
    responses((status = 200, description = "the users asked for, or found", body = natter_proto::rest::Users))
)]
pub(super) async fn users(
    State(state): State<AppState>,
    auth: Auth,
    query: Result<axum::extract::Query<UsersQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<natter_proto::rest::Users>> {
    let axum::extract::Query(q) = query?;
    let ids = match (q.ids, q.q) {
        (Some(ids), None) => ids,
        (None, Some(prefix)) => return search(&state, auth, &prefix, q.limit).await,
        _ => return Err(ApiError::bad_request("ask for either ids= or q=")),
    };
    let ids: Vec<i64> = ids
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim()
                .parse::<i64>()
                .map_err(|_| ApiError::bad_request("ids are numbers separated by commas"))
        })
        .collect::<ApiResult<_>>()?;
    if ids.len() > MAX_USER_IDS {
        return Err(ApiError::too_large(format!("at most {MAX_USER_IDS} ids at once")));
    }
    let ids: Vec<natter_proto::UserId> = ids.into_iter().map(natter_proto::UserId).collect();
    let mut users = state.store().users(&ids).await?;
    users.iter_mut().for_each(|u| state.media().sign_user(u));
    Ok(Json(natter_proto::rest::Users { users }))
}

/// Looks a user up by handle, to start a conversation with them.
#[utoipa::path(
    get, path = "/v1/users/{handle}", tag = "accounts",
    params(("handle" = String, Path, description = "the handle")),
    responses((status = 200, description = "the user", body = User))
)]
pub(super) async fn user(
    State(state): State<AppState>,
    _auth: Auth,
    handle: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<User>> {
    let Path(handle) = handle?;
    let handle = policy::normalize_handle(&handle);
    let user =
        state.store().user_by_handle(&handle).await?.ok_or_else(|| ApiError::not_found("user"))?;
    let mut found = state.store().users(&[user.id]).await?.pop();
    let user = found.as_mut().ok_or_else(|| ApiError::not_found("user"))?;
    state.media().sign_user(user);
    Ok(Json(user.clone()))
}

/// Most users one search returns, and the default.
const MAX_SEARCH: u32 = 50;
const DEFAULT_SEARCH: u32 = 20;

/// Users whose handle or display name starts with `prefix`, ignoring case, among those who
/// share a conversation with the caller (everyone with `user_directory`); rate-limited per
/// user.
async fn search(
    state: &AppState,
    auth: Auth,
    prefix: &str,
    limit: Option<u32>,
) -> ApiResult<Json<natter_proto::rest::Users>> {
    let limits = &state.cfg().limits;
    let prefix = prefix.trim();
    if prefix.is_empty() {
        return Err(ApiError::bad_request("q is empty"));
    }
    if prefix.chars().count() > limits.max_display_name_chars.max(limits.max_handle_chars) {
        return Err(ApiError::too_large("q is longer than any handle or display name"));
    }
    let limit = limit.unwrap_or(DEFAULT_SEARCH).clamp(1, MAX_SEARCH);
    let me = auth.principal.user_id;
    state.rate().check(crate::rate::Action::Search, me)?;
    let mut users = state.store().search_users(me, prefix, limits.user_directory, limit).await?;
    users.iter_mut().for_each(|u| state.media().sign_user(u));
    Ok(Json(natter_proto::rest::Users { users }))
}

/// `PATCH /v1/me/profile`: sets the display name and the status text (an absent field
/// stays, an empty one is cleared), then tells the caller's sessions and those of everyone
/// who shares a conversation with them (a `profile` frame, on every node).
#[utoipa::path(
    patch, path = "/v1/me/profile", tag = "accounts",
    request_body = ProfileUpdate,
    responses((status = 200, description = "the profile as it is now", body = User))
)]
pub(super) async fn set_profile(
    State(state): State<AppState>,
    auth: Auth,
    body: Result<Json<ProfileUpdate>, JsonRejection>,
) -> ApiResult<Json<User>> {
    let Json(mut update) = body?;
    let limits = &state.cfg().limits;
    update.display_name = update
        .display_name
        .map(|v| profile_text("display_name", &v, limits.max_display_name_chars))
        .transpose()?;
    update.status_text = update
        .status_text
        .map(|v| profile_text("status_text", &v, limits.max_status_chars))
        .transpose()?;
    let me = auth.principal.user_id;
    let mut user = state.store().set_profile(me, update).await?;
    state.media().sign_user(&mut user);
    let mut to = state.store().contacts_of(me).await?;
    to.push(me);
    let frame = natter_proto::ServerFrame::Profile { user: user.clone() }.to_json();
    crate::router::to_users(&state, to, frame.into());
    Ok(Json(user))
}

/// A profile field trimmed, checked for length and control characters.
fn profile_text(field: &str, value: &str, max_chars: usize) -> ApiResult<String> {
    let value = value.trim();
    if value.chars().count() > max_chars {
        return Err(ApiError::too_large(format!("{field} is longer than {max_chars} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!("{field} has control characters")));
    }
    Ok(value.to_owned())
}
