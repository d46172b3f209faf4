//! # Group moderation over REST (issue 13, part 6)
//!
//! `PUT /v1/conversations/{id}/settings` (slow mode, lock), `PUT`/`DELETE
//! /v1/conversations/{id}/members/{user_id}/mute`, `GET /v1/conversations/{id}/bans` and
//! `PUT`/`DELETE /v1/conversations/{id}/bans/{user_id}`. The store decides who may (owner and
//! admins, over members of a lower role); a conversation the caller is not in is
//! `not_found`, as everywhere. Settings, mutes and bans are entries of the group's log
//! (`group_settings`, `member_muted`, `member_removed` with `banned`), so every member's
//! client follows them; lifting a ban writes nothing to the log.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use natter_proto::rest::{Ban, GroupSettings, Mute};
use natter_proto::{Ack, ConversationId, Role, UserId};
use natter_store::GroupChange;

use crate::auth::Auth;
use crate::error::{ApiError, ApiResult, JsonBody};
use crate::state::AppState;

type MemberPath = Result<Path<(i64, i64)>, PathRejection>;

fn member_path(path: MemberPath) -> ApiResult<(ConversationId, UserId)> {
    let Path((conv, user)) = path?;
    Ok((ConversationId(conv), UserId(user)))
}

async fn change(
    state: &AppState,
    auth: &Auth,
    conv: ConversationId,
    change: GroupChange,
) -> ApiResult<Json<Ack>> {
    Ok(Json(state.store().change_group(auth.principal.user_id, conv, change).await?))
}

#[utoipa::path(
    put, path = "/v1/conversations/{id}/settings", tag = "moderation",
    params(("id" = i64, Path, description = "the conversation's id")),
    request_body = GroupSettings,
    responses((status = 200, description = "the `group_settings` entry", body = Ack))
)]
pub(super) async fn settings(
    State(state): State<AppState>,
    auth: Auth,
    id: Result<Path<i64>, PathRejection>,
    body: JsonBody<GroupSettings>,
) -> ApiResult<Json<Ack>> {
    let conv = ConversationId(id?.0);
    let JsonBody(GroupSettings { slow_mode_secs, locked }) = body;
    change(&state, &auth, conv, GroupChange::Settings { slow_mode_secs, locked }).await
}

/// Mutes the member for `for_secs` from now (1 s to `max_mute_secs`).
#[utoipa::path(
    put, path = "/v1/conversations/{id}/members/{user_id}/mute", tag = "moderation",
    params(("id" = i64, Path, description = "the conversation's id"), ("user_id" = i64, Path, description = "the member's user id")),
    request_body = Mute,
    responses((status = 200, description = "the `member_muted` entry", body = Ack))
)]
pub(super) async fn mute(
    State(state): State<AppState>,
    auth: Auth,
    path: MemberPath,
    body: JsonBody<Mute>,
) -> ApiResult<Json<Ack>> {
    let (conv, user) = member_path(path)?;
    let JsonBody(Mute { for_secs }) = body;
    let max = state.cfg().limits.max_mute_secs;
    if for_secs == 0 || for_secs > max {
        return Err(ApiError::bad_request(format!("for_secs is 1 to {max}")));
    }
    let until = crate::now_ms().saturating_add(i64::try_from(for_secs * 1000).unwrap_or(i64::MAX));
    change(&state, &auth, conv, GroupChange::Mute { user, until: Some(until) }).await
}

#[utoipa::path(
    delete, path = "/v1/conversations/{id}/members/{user_id}/mute", tag = "moderation",
    params(("id" = i64, Path, description = "the conversation's id"), ("user_id" = i64, Path, description = "the member's user id")),
    responses((status = 200, description = "the `member_muted` entry without `until`", body = Ack))
)]
pub(super) async fn unmute(
    State(state): State<AppState>,
    auth: Auth,
    path: MemberPath,
) -> ApiResult<Json<Ack>> {
    let (conv, user) = member_path(path)?;
    change(&state, &auth, conv, GroupChange::Mute { user, until: None }).await
}

/// Removes the member and bans them.
#[utoipa::path(
    put, path = "/v1/conversations/{id}/bans/{user_id}", tag = "moderation",
    params(("id" = i64, Path, description = "the conversation's id"), ("user_id" = i64, Path, description = "the member's user id")),
    responses((status = 200, description = "the `member_removed` entry with `banned`", body = Ack))
)]
pub(super) async fn ban(
    State(state): State<AppState>,
    auth: Auth,
    path: MemberPath,
) -> ApiResult<Json<Ack>> {
    let (conv, user) = member_path(path)?;
    change(&state, &auth, conv, GroupChange::Ban { user }).await
}

#[utoipa::path(
    delete, path = "/v1/conversations/{id}/bans/{user_id}", tag = "moderation",
    params(("id" = i64, Path, description = "the conversation's id"), ("user_id" = i64, Path, description = "the member's user id")),
    responses((status = 204, description = "the ban is lifted"))
)]
pub(super) async fn unban(
    State(state): State<AppState>,
    auth: Auth,
    path: MemberPath,
) -> ApiResult<StatusCode> {
    let (conv, user) = member_path(path)?;
    state.store().unban(auth.principal.user_id, conv, user).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The group's bans, for its owner and admins (`forbidden` for a member, `not_found` for
/// anyone else).
#[utoipa::path(
    get, path = "/v1/conversations/{id}/bans", tag = "moderation",
    params(("id" = i64, Path, description = "the conversation's id")),
    responses((status = 200, description = "the bans", body = Vec<Ban>))
)]
pub(super) async fn bans(
    State(state): State<AppState>,
    auth: Auth,
    id: Result<Path<i64>, PathRejection>,
) -> ApiResult<Json<Vec<Ban>>> {
    let conv = ConversationId(id?.0);
    match state.store().role(auth.principal.user_id, conv).await? {
        None => Err(ApiError::not_found("conversation")),
        Some(Role::Member) => {
            Err(ApiError::new(natter_proto::ErrorCode::Forbidden, "only admins see the bans"))
        }
        Some(_) => Ok(Json(state.store().bans(conv).await?)),
    }
}
