//! # `delivered` and `read` frames and `PUT /v1/conversations/{id}/cursors`

use natter_proto::{ConversationId, Seq, UserId};
use natter_store::CursorUpdate;

use crate::error::{ApiError, ApiResult, check_seq};
use crate::state::AppState;

/// Hands a cursor report to the coalescer, which writes it and tells the other members.
pub(crate) async fn report(
    state: &AppState,
    user: UserId,
    conversation: ConversationId,
    delivered: Option<Seq>,
    read: Option<Seq>,
) -> ApiResult<()> {
    state.rate().check(crate::rate::Action::Cursor, user)?;
    for seq in delivered.into_iter().chain(read) {
        check_seq("seq", seq)?;
    }
    if !state.members().contains(conversation, user).await? {
        return Err(ApiError::not_found("conversation"));
    }
    let update = CursorUpdate { conversation, user, delivered, read };
    state
        .receipts_tx()
        .send(update)
        .await
        .map_err(|_| ApiError::new(natter_proto::ErrorCode::Unavailable, "shutting down"))
}
