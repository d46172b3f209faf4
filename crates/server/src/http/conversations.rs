//! # Conversations, members, entries, cursors and sync over REST
//!
//! Every route answers `not_found` for a conversation the caller is not a member of, exactly
//! as for one that does not exist. Adding someone to a group (or naming them when creating
//! one) who shares no conversation with the caller invites them instead (`http/invitations.rs`).

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use natter_proto::rest::{
    AddMember, ConversationPage, CreateConversation, CreatedConversation, EntryPage, Member,
    PostEntry, Receipts, SetCursors, SyncRequest, SyncResponse, UpdateConversation, UpdateMember,
};
use natter_proto::{Ack, ConversationId, ConversationSummary, Receipt, Role, Seq, UserId};
use natter_store::{Added, GroupChange};
use serde::Deserialize;
use tracing::Instrument;

use crate::auth::Auth;
use crate::error::{ApiError, ApiResult, JsonBody};
use crate::handlers::{cursors, messages};
use crate::http::invitations;
use crate::rate::Action;
use crate::state::AppState;

type IdPath = Result<Path<i64>, PathRejection>;

fn conv_id(path: IdPath) -> ApiResult<ConversationId> {
    Ok(ConversationId(path?.0))
}

fn check_title(state: &AppState, title: &str) -> ApiResult<()> {
    if title.trim().is_empty() {
        return Err(ApiError::bad_request("title must not be empty"));
    }
    if title.len() > state.cfg().limits.max_title_bytes {
        return Err(ApiError::too_large("title too long"));
    }
    Ok(())
}

/// A direct conversation (the existing one: `200`), or a group whose members are the
/// caller's contacts named in `members`; the others named are invited (`invited`).
#[utoipa::path(
    post, path = "/v1/conversations", tag = "conversations",
    request_body = CreateConversation,
    responses((status = 201, description = "created", body = CreatedConversation), (status = 200, description = "the existing direct conversation", body = CreatedConversation))
)]
pub(super) async fn create(
    State(state): State<AppState>,
    auth: Auth,
    body: JsonBody<CreateConversation>,
) -> ApiResult<(StatusCode, Json<CreatedConversation>)> {
    let JsonBody(req) = body;
    let me = auth.principal.user_id;
    state.rate().check(Action::CreateConversation, me)?;
    let store = state.store();
    let mut invited = Vec::new();
    let (conv, created) = match req {
        CreateConversation::Direct { peer } => {
            // The store refuses a new pair with a deleted account; its old pair stays
            // readable but is not handed out again.
            if store.users(&[peer]).await?.first().is_some_and(|u| u.deleted) {
                return Err(ApiError::not_found("user"));
            }
            store.create_direct(me, peer).await?
        }
        CreateConversation::Group { title, members } => {
            check_title(&state, &title)?;
            // Checked here too (the store checks again atomically) so that a huge list is
            // refused before the writer looks each member up.
            let others: std::collections::HashSet<UserId> =
                members.iter().copied().filter(|m| *m != me).collect();
            if others.len() + 1 > state.cfg().limits.max_group_members as usize {
                return Err(ApiError::new(
                    natter_proto::ErrorCode::Conflict,
                    "too many members for a group",
                ));
            }
            let group = store.create_group(me, &title, &members).await?;
            for invitation in group.invitations {
                invited.push(invitation.user);
                invitations::announce(&state, invitation);
            }
            (group.id, true)
        }
    };
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    let mut conversation = store.conversation(me, conv).await?;
    state.media().sign_summary(&mut conversation);
    Ok((status, Json(CreatedConversation { conversation, invited })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    limit: Option<u32>,
    /// `next` of the previous page: `{last_activity}:{id}`.
    before: Option<String>,
}

#[utoipa::path(
    get, path = "/v1/conversations", tag = "conversations",
    params(ListQuery),
    responses((status = 200, description = "most recent activity first", body = ConversationPage))
)]
pub(super) async fn list(
    State(state): State<AppState>,
    auth: Auth,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<ConversationPage>> {
    let Query(q) = query?;
    let before = match q.before.as_deref() {
        None => None,
        Some(cursor) => {
            let parsed = cursor
                .split_once(':')
                .and_then(|(at, id)| Some((at.parse().ok()?, ConversationId(id.parse().ok()?))));
            Some(parsed.ok_or_else(|| ApiError::bad_request("malformed before cursor"))?)
        }
    };
    let limit = state.cfg().limits.page(q.limit);
    let mut conversations =
        state.store().conversations(auth.principal.user_id, before, limit).await?;
    conversations.iter_mut().for_each(|c| state.media().sign_summary(c));
    let next = (conversations.len() == limit as usize)
        .then(|| conversations.last().map(|c| format!("{}:{}", c.last_activity, c.id)))
        .flatten();
    Ok(Json(ConversationPage { conversations, next }))
}

#[utoipa::path(
    get, path = "/v1/conversations/{id}", tag = "conversations",
    params(("id" = i64, Path, description = "the conversation's id")),
    responses((status = 200, description = "the summary", body = ConversationSummary))
)]
pub(super) async fn get(
    State(state): State<AppState>,
    auth: Auth,
    id: IdPath,
) -> ApiResult<Json<ConversationSummary>> {
    let mut summary = state.store().conversation(auth.principal.user_id, conv_id(id)?).await?;
    state.media().sign_summary(&mut summary);
    Ok(Json(summary))
}

#[utoipa::path(
    patch, path = "/v1/conversations/{id}", tag = "conversations",
    params(("id" = i64, Path, description = "the conversation's id")),
    request_body = UpdateConversation,
    responses((status = 200, description = "the `title_changed` entry", body = Ack))
)]
pub(super) async fn update(
    State(state): State<AppState>,
    auth: Auth,
    id: IdPath,
    body: JsonBody<UpdateConversation>,
) -> ApiResult<Json<Ack>> {
    let conv = conv_id(id)?;
    let JsonBody(req) = body;
    check_title(&state, &req.title)?;
    let change = GroupChange::SetTitle { title: req.title };
    Ok(Json(state.store().change_group(auth.principal.user_id, conv, change).await?))
}

/// Fails with `not_found` unless the caller is a member.
async fn require_member(state: &AppState, user: UserId, conv: ConversationId) -> ApiResult<Role> {
    state.store().role(user, conv).await?.ok_or_else(|| ApiError::not_found("conversation"))
}

#[utoipa::path(
    get, path = "/v1/conversations/{id}/members", tag = "conversations",
    params(("id" = i64, Path, description = "the conversation's id")),
    responses((status = 200, description = "the members", body = Vec<Member>))
)]
pub(super) async fn members(
    State(state): State<AppState>,
    auth: Auth,
    id: IdPath,
) -> ApiResult<Json<Vec<Member>>> {
    let conv = conv_id(id)?;
    require_member(&state, auth.principal.user_id, conv).await?;
    Ok(Json(state.store().members(conv).await?))
}

/// `201` with the ack of `member_added` for a contact of the caller; `202` with the
/// invitation for anyone else.
#[utoipa::path(
    post, path = "/v1/conversations/{id}/members", tag = "conversations",
    params(("id" = i64, Path, description = "the conversation's id")),
    request_body = AddMember,
    responses((status = 201, description = "the `member_added` entry", body = Ack), (status = 202, description = "invited", body = natter_proto::rest::AddedMember))
)]
pub(super) async fn add_member(
    State(state): State<AppState>,
    auth: Auth,
    id: IdPath,
    body: JsonBody<AddMember>,
) -> ApiResult<Response> {
    let conv = conv_id(id)?;
    let JsonBody(req) = body;
    let me = auth.principal.user_id;
    state.rate().check(Action::AddMember, me)?;
    let role = req.role.unwrap_or(Role::Member);
    Ok(match state.store().add_member(me, conv, req.user_id, role).await? {
        Added::Member(ack) => (StatusCode::CREATED, Json(ack)).into_response(),
        Added::Invited(invitation) => {
            invitations::announce(&state, invitation.clone());
            (StatusCode::ACCEPTED, Json(invitation)).into_response()
        }
    })
}

#[utoipa::path(
    patch, path = "/v1/conversations/{id}/members/{user_id}", tag = "conversations",
    params(("id" = i64, Path, description = "the conversation's id"), ("user_id" = i64, Path, description = "the member's user id")),
    request_body = UpdateMember,
    responses((status = 200, description = "the `role_changed` entry", body = Ack))
)]
pub(super) async fn update_member(
    State(state): State<AppState>,
    auth: Auth,
    path: Result<Path<(i64, i64)>, PathRejection>,
    body: JsonBody<UpdateMember>,
) -> ApiResult<Json<Ack>> {
    let Path((conv, user)) = path?;
    let JsonBody(req) = body;
    let change = GroupChange::SetRole { user: UserId(user), role: req.role };
    Ok(Json(
        state.store().change_group(auth.principal.user_id, ConversationId(conv), change).await?,
    ))
}

/// Removes a member, or leaves when the member is the caller.
#[utoipa::path(
    delete, path = "/v1/conversations/{id}/members/{user_id}", tag = "conversations",
    params(("id" = i64, Path, description = "the conversation's id"), ("user_id" = i64, Path, description = "the member's user id")),
    responses((status = 200, description = "the `member_removed` entry", body = Ack))
)]
pub(super) async fn remove_member(
    State(state): State<AppState>,
    auth: Auth,
    path: Result<Path<(i64, i64)>, PathRejection>,
) -> ApiResult<Json<Ack>> {
    let Path((conv, user)) = path?;
    let change = GroupChange::RemoveMember { user: UserId(user) };
    Ok(Json(
        state.store().change_group(auth.principal.user_id, ConversationId(conv), change).await?,
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct HistoryQuery {
    before: Option<Seq>,
    after: Option<Seq>,
    limit: Option<u32>,
}

#[utoipa::path(
    get, path = "/v1/conversations/{id}/entries", tag = "conversations",
    params(("id" = i64, Path, description = "the conversation's id"), HistoryQuery),
    responses((status = 200, description = "a page of the log", body = EntryPage))
)]
pub(super) async fn history(
    State(state): State<AppState>,
    auth: Auth,
    id: IdPath,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> ApiResult<Json<EntryPage>> {
    let conv = conv_id(id)?;
    let Query(q) = query?;
    let page =
        messages::history(&state, auth.principal.user_id, conv, q.before, q.after, q.limit).await?;
    Ok(Json(EntryPage { conversation: conv, entries: page.entries, has_more: page.has_more }))
}

/// Appends an entry; the same ack and idempotency as the WebSocket `send`.
#[utoipa::path(
    post, path = "/v1/conversations/{id}/entries", tag = "conversations",
    params(("id" = i64, Path, description = "the conversation's id")),
    request_body = PostEntry,
    responses((status = 201, description = "committed (or committed before, with the same `client_msg_id`)", body = Ack))
)]
pub(super) async fn post_entry(
    State(state): State<AppState>,
    auth: Auth,
    id: IdPath,
    body: JsonBody<PostEntry>,
) -> ApiResult<(StatusCode, Json<Ack>)> {
    let conv = conv_id(id)?;
    let JsonBody(req) = body;
    let user = auth.principal.user_id;
    let arrived = std::time::Instant::now();
    let span = tracing::info_span!("append", conversation = %conv, seq = tracing::field::Empty);
    async {
        let pending = messages::submit(&state, user, conv, req.client_msg_id, req.entry).await?;
        let ack = pending.wait().await?;
        tracing::Span::current().record("seq", ack.seq);
        metrics::histogram!("natter_send_ack_seconds", "transport" => "rest")
            .record(arrived.elapsed().as_secs_f64());
        Ok((StatusCode::CREATED, Json(ack)))
    }
    .instrument(span)
    .await
}

#[utoipa::path(
    put, path = "/v1/conversations/{id}/cursors", tag = "conversations",
    params(("id" = i64, Path, description = "the conversation's id")),
    request_body = SetCursors,
    responses((status = 204, description = "moved"))
)]
pub(super) async fn set_cursors(
    State(state): State<AppState>,
    auth: Auth,
    id: IdPath,
    body: JsonBody<SetCursors>,
) -> ApiResult<StatusCode> {
    let conv = conv_id(id)?;
    let JsonBody(req) = body;
    cursors::report(&state, auth.principal.user_id, conv, req.delivered_seq, req.read_seq).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get, path = "/v1/conversations/{id}/receipts", tag = "conversations",
    params(("id" = i64, Path, description = "the conversation's id")),
    responses((status = 200, description = "every member's cursors", body = Receipts))
)]
pub(super) async fn receipts(
    State(state): State<AppState>,
    auth: Auth,
    id: IdPath,
) -> ApiResult<Json<Receipts>> {
    let conv = conv_id(id)?;
    require_member(&state, auth.principal.user_id, conv).await?;
    let receipts = state
        .store()
        .members(conv)
        .await?
        .into_iter()
        .map(|m| Receipt {
            conversation: conv,
            user: m.user_id,
            delivered_seq: m.delivered_seq,
            read_seq: m.read_seq,
        })
        .collect();
    Ok(Json(Receipts { receipts }))
}

#[utoipa::path(
    post, path = "/v1/sync", tag = "conversations",
    request_body = SyncRequest,
    responses((status = 200, description = "what is new after the cursors", body = SyncResponse))
)]
pub(super) async fn sync(
    State(state): State<AppState>,
    auth: Auth,
    body: JsonBody<SyncRequest>,
) -> ApiResult<Json<SyncResponse>> {
    let JsonBody(req) = body;
    let user = auth.principal.user_id;
    let reply = crate::delivery::sync(&state, user, &req.cursors, req.limit, None, None).await?;
    Ok(Json(SyncResponse { conversations: reply.conversations, more: reply.more }))
}
