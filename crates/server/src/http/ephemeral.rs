//! # Typing and presence over REST, for clients on the HTTP transports
//!
//! `POST /v1/conversations/{id}/typing`, and a stream session's presence subscriptions and
//! status (`PUT /v1/streams/{id}/presence|status`, by the session id an SSE or long-poll
//! stream announced in its `ready`).

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use natter_proto::ConversationId;
use natter_proto::rest::{PresenceSubscribed, PresenceSubscription, SetStatus, Typing};

use crate::auth::Auth;
use crate::error::{ApiResult, JsonBody};
use crate::handlers::presence;
use crate::state::AppState;

/// `POST /v1/conversations/{id}/typing`.
#[utoipa::path(
    post, path = "/v1/conversations/{id}/typing", tag = "live",
    params(("id" = i64, Path, description = "the conversation's id")),
    request_body = Typing,
    responses((status = 204, description = "told the members"))
)]
pub(super) async fn typing(
    State(state): State<AppState>,
    auth: Auth,
    id: Result<Path<i64>, PathRejection>,
    body: Result<Json<Typing>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let conv = ConversationId(id?.0);
    let Json(req) = body?;
    state.typing().report(&state, auth.principal.user_id, None, conv, req.typing).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v1/streams/{id}/presence`.
#[utoipa::path(
    put, path = "/v1/streams/{id}/presence", tag = "live",
    params(("id" = u64, Path, description = "the stream's session id (`stream` of `POST /v1/poll`, the SSE `hello`)")),
    request_body = PresenceSubscription,
    responses((status = 200, description = "subscribed", body = PresenceSubscribed))
)]
pub(super) async fn subscribe_presence(
    State(state): State<AppState>,
    auth: Auth,
    id: Result<Path<u64>, PathRejection>,
    body: JsonBody<PresenceSubscription>,
) -> ApiResult<Json<PresenceSubscribed>> {
    let sid = id?.0;
    let JsonBody(req) = body;
    let (users, denied) =
        presence::subscribe(&state, auth.principal.user_id, sid, req.users).await?;
    Ok(Json(PresenceSubscribed { users, denied }))
}

/// `PUT /v1/streams/{id}/status`.
#[utoipa::path(
    put, path = "/v1/streams/{id}/status", tag = "live",
    params(("id" = u64, Path, description = "the stream's session id (`stream` of `POST /v1/poll`, the SSE `hello`)")),
    request_body = SetStatus,
    responses((status = 204, description = "set"))
)]
pub(super) async fn set_status(
    State(state): State<AppState>,
    auth: Auth,
    id: Result<Path<u64>, PathRejection>,
    body: Result<Json<SetStatus>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let sid = id?.0;
    let Json(req) = body?;
    presence::set_status(&state, auth.principal.user_id, sid, req.status)?;
    Ok(StatusCode::NO_CONTENT)
}
