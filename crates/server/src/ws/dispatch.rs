//! Dispatch: one `match` over [`ClientFrame`]. Every frame with a `req_id` gets exactly one
//! reply or error. Appends are queued to the store in arrival order (so one session's sends
//! commit in the order it sent them) and acked by a tracked task when their batch commits;
//! at most `max_in_flight` requests of one session are pending at a time.

use std::sync::Arc;

use natter_proto::{
    ClientFrame, ConversationId, ErrorBody, ErrorCode, NewEntry, ReqId, ServerFrame,
};
use natter_store::Principal;
use tokio::sync::{Semaphore, mpsc};

use crate::error::ApiError;
use crate::handlers::{cursors, messages};
use crate::state::AppState;
use crate::ws::Outbound;

pub(crate) async fn reply(tx: &mpsc::Sender<Outbound>, frame: ServerFrame) {
    let _ = tx.send(Outbound::Frame(frame.to_json().into())).await;
}

fn error(req_id: Option<ReqId>, err: ApiError) -> ServerFrame {
    ServerFrame::Error {
        req_id,
        error: err.body(),
    }
}

pub(crate) async fn frame(
    state: &AppState,
    principal: Principal,
    tx: &mpsc::Sender<Outbound>,
    in_flight: &Arc<Semaphore>,
    text: &str,
) {
    let frame = match ClientFrame::parse(text) {
        Ok(frame) => frame,
        Err((req_id, error)) => return reply(tx, ServerFrame::Error { req_id, error }).await,
    };
    let user = principal.user_id;
    let (req_id, conversation, client_msg_id, entry) = match frame {
        ClientFrame::Send {
            req_id,
            conversation,
            client_msg_id,
            body,
            reply_to,
        } => (
            req_id,
            conversation,
            client_msg_id,
            NewEntry::Message { body, reply_to },
        ),
        ClientFrame::Edit {
            req_id,
            conversation,
            client_msg_id,
            target,
            body,
        } => (
            req_id,
            conversation,
            client_msg_id,
            NewEntry::Edit { target, body },
        ),
        ClientFrame::Delete {
            req_id,
            conversation,
            client_msg_id,
            target,
        } => (
            req_id,
            conversation,
            client_msg_id,
            NewEntry::Delete { target },
        ),
        ClientFrame::React {
            req_id,
            conversation,
            client_msg_id,
            target,
            emoji,
            remove,
        } => (
            req_id,
            conversation,
            client_msg_id,
            NewEntry::Reaction {
                target,
                emoji,
                remove,
            },
        ),
        ClientFrame::Delivered {
            req_id,
            conversation,
            seq,
        } => {
            return cursor(state, user, tx, req_id, conversation, Some(seq), None).await;
        }
        ClientFrame::Read {
            req_id,
            conversation,
            seq,
        } => {
            return cursor(state, user, tx, req_id, conversation, None, Some(seq)).await;
        }
        ClientFrame::Sync {
            req_id,
            cursors,
            limit,
        } => {
            let _ = tx
                .send(Outbound::Sync {
                    req_id,
                    cursors,
                    limit,
                })
                .await;
            return;
        }
        ClientFrame::History {
            req_id,
            conversation,
            before,
            after,
            limit,
        } => {
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return;
            };
            let (state2, tx) = (state.clone(), tx.clone());
            state.tasks().spawn(async move {
                let res = messages::history(&state2, user, conversation, before, after, limit);
                let frame = match res.await {
                    Ok(page) => ServerFrame::History {
                        req_id,
                        conversation,
                        entries: page.entries,
                        has_more: page.has_more,
                    },
                    Err(err) => error(Some(req_id), err),
                };
                reply(&tx, frame).await;
                drop(permit);
            });
            return;
        }
        ClientFrame::Ping { req_id } => return reply(tx, ServerFrame::Pong { req_id }).await,
        ClientFrame::Auth { .. } => {
            let err = ApiError::bad_request("already authenticated");
            return reply(tx, error(None, err)).await;
        }
        ClientFrame::Unknown => {
            let error = ErrorBody {
                code: ErrorCode::UnknownType,
                message: "unknown frame type".into(),
            };
            return reply(
                tx,
                ServerFrame::Error {
                    req_id: None,
                    error,
                },
            )
            .await;
        }
    };
    let Ok(permit) = in_flight.clone().acquire_owned().await else {
        return;
    };
    match messages::submit(state, user, conversation, client_msg_id, entry).await {
        Err(err) => reply(tx, error(Some(req_id), err)).await,
        Ok(pending) => {
            let tx = tx.clone();
            state.tasks().spawn(async move {
                let frame = match pending.wait().await {
                    Ok(ack) => ServerFrame::Ack { req_id, ack },
                    Err(err) => error(Some(req_id), err.into()),
                };
                reply(&tx, frame).await;
                drop(permit);
            });
        }
    }
}

async fn cursor(
    state: &AppState,
    user: natter_proto::UserId,
    tx: &mpsc::Sender<Outbound>,
    req_id: Option<ReqId>,
    conversation: ConversationId,
    delivered: Option<u64>,
    read: Option<u64>,
) {
    let res = cursors::report(state, user, conversation, delivered, read).await;
    match (req_id, res) {
        (Some(req_id), Ok(())) => reply(tx, ServerFrame::Ok { req_id }).await,
        (req_id, Err(err)) => reply(tx, error(req_id, err)).await,
        (None, Ok(())) => {}
    }
}
