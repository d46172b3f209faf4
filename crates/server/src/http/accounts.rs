//! # Accounts and sessions: `POST /v1/accounts`, `POST /v1/sessions`,
//! `DELETE /v1/sessions/current`, `GET /v1/me`, `GET /v1/users/{handle}`

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use natter_proto::rest::{Credentials, Me, Session, User};

use crate::auth::{self, Auth};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

fn check_handle(state: &AppState, handle: &str) -> ApiResult<()> {
    let n = handle.chars().count();
    let ok_chars = handle.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if n == 0 || n > state.cfg().limits.max_handle_chars || !ok_chars {
        return Err(ApiError::bad_request(
            "handle must be 1 to max_handle_chars letters, digits, '_', '-' or '.'",
        ));
    }
    Ok(())
}

pub(super) async fn register(
    State(state): State<AppState>,
    body: Result<Json<Credentials>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<User>)> {
    let Json(creds) = body?;
    check_handle(&state, &creds.handle)?;
    let limits = &state.cfg().limits;
    if creds.password.chars().count() < limits.min_password_chars {
        return Err(ApiError::bad_request("password too short"));
    }
    if creds.password.len() > limits.max_password_bytes {
        return Err(ApiError::too_large("password too long"));
    }
    let hash = auth::hash_password(creds.password).await?;
    let user_id = state.store().create_user(&creds.handle, &hash).await?;
    Ok((StatusCode::CREATED, Json(User { user_id, handle: creds.handle })))
}

pub(super) async fn login(
    State(state): State<AppState>,
    body: Result<Json<Credentials>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Session>)> {
    let Json(creds) = body?;
    if creds.password.len() > state.cfg().limits.max_password_bytes {
        return Err(ApiError::unauthenticated());
    }
    let Some(user) = state.store().user_by_handle(&creds.handle).await? else {
        return Err(ApiError::unauthenticated());
    };
    if !auth::verify_password(creds.password, user.password_hash).await? {
        return Err(ApiError::unauthenticated());
    }
    let token = auth::new_token();
    let mut device = creds.device.unwrap_or_else(|| "unnamed".to_owned());
    device.truncate(device.floor_char_boundary(64));
    let device_id = state.store().create_device(user.id, &device, auth::token_hash(&token)).await?;
    Ok((StatusCode::CREATED, Json(Session { token, user_id: user.id, device_id })))
}

pub(super) async fn logout(State(state): State<AppState>, auth: Auth) -> ApiResult<StatusCode> {
    state.store().delete_device(auth::token_hash(&auth.token)).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn me(State(state): State<AppState>, auth: Auth) -> ApiResult<Json<Me>> {
    let p = auth.principal;
    let handle =
        state.store().user_handle(p.user_id).await?.ok_or_else(ApiError::unauthenticated)?;
    Ok(Json(Me { user_id: p.user_id, handle, device_id: p.device_id }))
}

/// Looks a user up by handle, to start a conversation with them.
pub(super) async fn user(
    State(state): State<AppState>,
    _auth: Auth,
    handle: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<User>> {
    let Path(handle) = handle?;
    let user =
        state.store().user_by_handle(&handle).await?.ok_or_else(|| ApiError::not_found("user"))?;
    Ok(Json(User { user_id: user.id, handle: user.handle }))
}
