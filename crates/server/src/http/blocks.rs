//! # `GET /v1/me/blocks`, `PUT` and `DELETE /v1/me/blocks/{user_id}`
//!
//! The caller's block list. A change answers once the store holds it, and every session of
//! the caller then gets a `blocks` frame with the whole list (so the list syncs to every
//! device); the blocked user is told nothing.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use natter_proto::UserId;
use natter_proto::rest::Blocks;

use crate::auth::Auth;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

#[utoipa::path(
    get, path = "/v1/me/blocks", tag = "blocking",
    responses((status = 200, description = "whom you block", body = Blocks))
)]
pub(super) async fn list(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<Blocks>> {
    let blocked = state.store().blocks(auth.principal.user_id).await?;
    Ok(Json(Blocks { blocked }))
}

/// Blocks the user (again: nothing changes); `not_found` for an unknown or deleted user,
/// `conflict` past `max_blocks`.
#[utoipa::path(
    put, path = "/v1/me/blocks/{id}", tag = "blocking",
    params(("id" = i64, Path, description = "the user id")),
    responses((status = 204, description = "blocked"))
)]
pub(super) async fn block(
    State(state): State<AppState>,
    auth: Auth,
    id: Result<Path<i64>, PathRejection>,
) -> ApiResult<StatusCode> {
    let (me, them) = (auth.principal.user_id, user_id(id)?);
    state.store().block(me, them, state.cfg().limits.max_blocks).await?;
    crate::blocks::publish(&state, me, them).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Unblocks the user (whether they were blocked or not).
#[utoipa::path(
    delete, path = "/v1/me/blocks/{id}", tag = "blocking",
    params(("id" = i64, Path, description = "the user id")),
    responses((status = 204, description = "not blocked"))
)]
pub(super) async fn unblock(
    State(state): State<AppState>,
    auth: Auth,
    id: Result<Path<i64>, PathRejection>,
) -> ApiResult<StatusCode> {
    let (me, them) = (auth.principal.user_id, user_id(id)?);
    state.store().unblock(me, them).await?;
    crate::blocks::publish(&state, me, them).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn user_id(id: Result<Path<i64>, PathRejection>) -> ApiResult<UserId> {
    let Path(id) = id.map_err(|_| ApiError::bad_request("a user id is a number"))?;
    Ok(UserId(id))
}
