//! # Push registrations and notification settings (issue 14)
//!
//! `GET /v1/push/config`: what a client may register. `POST`/`GET /v1/me/push`, `DELETE /v1/me/push/{id}`: the caller's device registers where
//! its pushes go (a registration belongs to the device that made it: its logout deletes
//! it). `PUT /v1/me/notifications` is do-not-disturb, `PUT
//! /v1/conversations/{id}/notifications` mutes one conversation's pushes.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use natter_proto::ConversationId;
use natter_proto::rest::{
    MuteNotifications, NewPushRegistration, PushConfig, PushRegistration, PushRegistrations,
    ReportId,
};

use crate::auth::Auth;
use crate::error::{ApiError, ApiResult, JsonBody};
use crate::state::AppState;

/// Longest provider token (a Web Push endpoint URL is the longest kind).
const MAX_TOKEN_BYTES: usize = 2048;
/// Longest Web Push key (`p256dh` is 87 base64url characters, `auth` 22).
const MAX_KEY_BYTES: usize = 128;

/// `GET /v1/push/config`: the providers this server pushes through, and the VAPID key a
/// browser subscribes with.
#[utoipa::path(
    get, path = "/v1/push/config", tag = "push",
    responses((status = 200, description = "the providers this server has on", body = PushConfig))
)]
pub(super) async fn config(State(state): State<AppState>, _auth: Auth) -> Json<PushConfig> {
    let push = state.push();
    Json(PushConfig {
        providers: push.providers().into_iter().map(str::to_owned).collect(),
        vapid_public_key: push.vapid_public_key().map(str::to_owned),
    })
}

#[utoipa::path(
    post, path = "/v1/me/push", tag = "push",
    request_body = NewPushRegistration,
    responses((status = 201, description = "registered: its id", body = ReportId))
)]
pub(super) async fn register(
    State(state): State<AppState>,
    auth: Auth,
    body: JsonBody<NewPushRegistration>,
) -> ApiResult<(StatusCode, Json<ReportId>)> {
    let JsonBody(req) = body;
    if req.token.len() > MAX_TOKEN_BYTES {
        return Err(ApiError::too_large(format!("token is over {MAX_TOKEN_BYTES} bytes")));
    }
    if req.token.is_empty() || req.token.chars().any(char::is_control) {
        return Err(ApiError::bad_request("token is empty or has control characters"));
    }
    let keys = (req.p256dh.as_deref(), req.auth.as_deref());
    if keys.0.is_some_and(|k| k.len() > MAX_KEY_BYTES)
        || keys.1.is_some_and(|k| k.len() > MAX_KEY_BYTES)
    {
        return Err(ApiError::too_large(format!("a key is over {MAX_KEY_BYTES} bytes")));
    }
    state.push().check(&req.provider, &req.token, keys.0, keys.1).map_err(ApiError::bad_request)?;
    let reg = natter_store::NewPushRegistration {
        provider: req.provider,
        token: req.token,
        p256dh: req.p256dh,
        auth: req.auth,
    };
    let p = auth.principal;
    let id = state.store().add_push_registration(p.user_id, p.device_id, reg).await?;
    Ok((StatusCode::CREATED, Json(ReportId { id })))
}

#[utoipa::path(
    get, path = "/v1/me/push", tag = "push",
    responses((status = 200, description = "your registrations", body = PushRegistrations))
)]
pub(super) async fn list(
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<Json<PushRegistrations>> {
    let registrations = state
        .store()
        .push_registrations(auth.principal.user_id)
        .await?
        .into_iter()
        .map(|r| PushRegistration {
            id: r.id,
            provider: r.provider,
            device_id: r.device,
            created_at: r.created_at,
        })
        .collect();
    Ok(Json(PushRegistrations { registrations }))
}

#[utoipa::path(
    delete, path = "/v1/me/push/{id}", tag = "push",
    params(("id" = i64, Path, description = "the registration id")),
    responses((status = 204, description = "unregistered"))
)]
pub(super) async fn unregister(
    State(state): State<AppState>,
    auth: Auth,
    id: Result<Path<i64>, PathRejection>,
) -> ApiResult<StatusCode> {
    state.store().delete_push_registration(auth.principal.user_id, id?.0).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn until(req: &MuteNotifications) -> Option<i64> {
    if req.forever { Some(i64::MAX) } else { req.until }
}

/// `PUT /v1/me/notifications`: do not disturb.
#[utoipa::path(
    put, path = "/v1/me/notifications", tag = "push",
    request_body = MuteNotifications,
    responses((status = 204, description = "set"))
)]
pub(super) async fn dnd(
    State(state): State<AppState>,
    auth: Auth,
    body: JsonBody<MuteNotifications>,
) -> ApiResult<StatusCode> {
    let JsonBody(req) = body;
    state.store().mute_notifications(auth.principal.user_id, None, until(&req)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v1/conversations/{id}/notifications`: one conversation's pushes.
#[utoipa::path(
    put, path = "/v1/conversations/{id}/notifications", tag = "push",
    params(("id" = i64, Path, description = "the conversation's id")),
    request_body = MuteNotifications,
    responses((status = 204, description = "set"))
)]
pub(super) async fn mute(
    State(state): State<AppState>,
    auth: Auth,
    id: Result<Path<i64>, PathRejection>,
    body: JsonBody<MuteNotifications>,
) -> ApiResult<StatusCode> {
    let conv = ConversationId(id?.0);
    let JsonBody(req) = body;
    state.store().mute_notifications(auth.principal.user_id, Some(conv), until(&req)).await?;
    Ok(StatusCode::NO_CONTENT)
}
