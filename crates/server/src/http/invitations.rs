//! # Invitations over REST: the invitee's side
//!
//! Adding someone to a group who shares no conversation with the adder (`http/conversations.rs`)
//! makes an invitation instead of a member; the invitee hears of it live ([`announce`]), lists
//! theirs (`GET /v1/invitations`), accepts one (`POST /v1/invitations/{id}/accept`: a
//! `member_added` entry, after which the group reaches their sessions like any other) or
//! declines it (`DELETE /v1/invitations/{id}`). Until they accept they are not a member: no
//! entries, no presence, no sync of the group.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use natter_proto::rest::Invitations;
use natter_proto::{Ack, ConversationId, Invitation, ServerFrame};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::auth::Auth;
use crate::error::ApiResult;
use crate::state::AppState;

/// `GET /v1/invitations`: the caller's pending invitations, oldest first.
#[utoipa::path(
    get, path = "/v1/invitations", tag = "invitations",
    responses((status = 200, description = "your pending invitations", body = Invitations))
)]
pub(super) async fn list(
    State(state): State<AppState>,
    auth: Auth,
) -> ApiResult<Json<Invitations>> {
    let invitations = state.store().invitations(auth.principal.user_id).await?;
    Ok(Json(Invitations { invitations }))
}

/// `POST /v1/invitations/{id}/accept`: the caller joins the group (`201` with the ack of the
/// `member_added` entry they send).
#[utoipa::path(
    post, path = "/v1/invitations/{id}/accept", tag = "invitations",
    params(("id" = i64, Path, description = "the group id")),
    responses((status = 201, description = "the `member_added` entry", body = Ack))
)]
pub(super) async fn accept(
    State(state): State<AppState>,
    auth: Auth,
    id: Result<Path<i64>, PathRejection>,
) -> ApiResult<(StatusCode, Json<Ack>)> {
    let conv = ConversationId(id?.0);
    let ack = state.store().accept_invitation(auth.principal.user_id, conv).await?;
    Ok((StatusCode::CREATED, Json(ack)))
}

/// `DELETE /v1/invitations/{id}`: the caller declines (`204`); nobody is told.
#[utoipa::path(
    delete, path = "/v1/invitations/{id}", tag = "invitations",
    params(("id" = i64, Path, description = "the group id")),
    responses((status = 204, description = "declined"))
)]
pub(super) async fn decline(
    State(state): State<AppState>,
    auth: Auth,
    id: Result<Path<i64>, PathRejection>,
) -> ApiResult<StatusCode> {
    let conv = ConversationId(id?.0);
    state.store().decline_invitation(auth.principal.user_id, conv).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Tells the invitee's live sessions, on every node, of an invitation just made (best effort,
/// like receipts: the list is the record).
pub(super) fn announce(state: &AppState, invitation: Invitation) {
    let user = invitation.user;
    let frame = Utf8Bytes::from(ServerFrame::Invitation { invitation }.to_json());
    crate::router::to_users(state, vec![user], frame);
}
