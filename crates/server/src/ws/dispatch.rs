//! Dispatch: one `match` over [`ClientFrame`]. Every frame with a `req_id` gets exactly one
//! reply or error. Appends are queued to the store in arrival order (so one session's sends
//! commit in the order it sent them) and acked by a tracked task when their batch commits;
//! at most `max_in_flight` requests of one session are pending at a time.

use std::sync::Arc;

use natter_cluster::SessionId;
use natter_proto::{
    ClientFrame, ConversationId, ErrorBody, ErrorCode, NewEntry, ReqId, ServerFrame,
};
use natter_store::Principal;
use tokio::sync::Semaphore;

use crate::delivery::Outbound;
use crate::error::{ApiError, ApiResult};
use crate::handlers::{cursors, messages, presence};
use crate::rate::ConnLimits;
use crate::session::SessionHandle;
use crate::state::AppState;

/// What dispatch needs of the session it serves.
pub(crate) struct Ctx<'a> {
    pub(crate) state: &'a AppState,
    pub(crate) principal: Principal,
    pub(crate) session: SessionId,
    /// Where replies are queued (counted against the session's queue caps).
    pub(crate) out: &'a SessionHandle,
    pub(crate) in_flight: &'a Arc<Semaphore>,
    /// The connection's bucket for request frames.
    pub(crate) frames: &'a ConnLimits,
}

pub(crate) async fn reply(out: &SessionHandle, frame: ServerFrame) {
    out.send(Outbound::Frame(frame.to_json().into())).await;
}

fn error(req_id: Option<ReqId>, err: ApiError) -> ServerFrame {
    err.count("ws");
    ServerFrame::Error { req_id, error: err.body() }
}

/// Replies `ok` (when a `req_id` was given) or the error.
async fn done(tx: &SessionHandle, req_id: Option<ReqId>, res: ApiResult<()>) {
    match (req_id, res) {
        (Some(req_id), Ok(())) => reply(tx, ServerFrame::Ok { req_id }).await,
        (req_id, Err(err)) => reply(tx, error(req_id, err)).await,
        (None, Ok(())) => {}
    }
}

pub(crate) async fn frame(ctx: &Ctx<'_>, text: &str) {
    let Ctx { state, principal, session, out: tx, in_flight, frames } = *ctx;
    // Every frame takes a token, a malformed one too (its error reply costs as much).
    let limited = frames.check();
    let frame = match ClientFrame::parse(text) {
        Ok(frame) => frame,
        Err((req_id, error)) => {
            let error = limited.err().map_or(error, |err| err.body());
            return reply(tx, ServerFrame::Error { req_id, error }).await;
        }
    };
    if let Err(err) = limited {
        return reply(tx, error(frame.req_id(), err)).await;
    }
    let user = principal.user_id;
    let (req_id, conversation, client_msg_id, entry) = match frame {
        ClientFrame::Send {
            req_id,
            conversation,
            client_msg_id,
            body,
            reply_to,
            attachments,
            mentions,
        } => (
            req_id,
            conversation,
            client_msg_id,
            NewEntry::Message { body, reply_to, attachments, mentions },
        ),
        ClientFrame::Edit { req_id, conversation, client_msg_id, target, body } => {
            (req_id, conversation, client_msg_id, NewEntry::Edit { target, body })
        }
        ClientFrame::Delete { req_id, conversation, client_msg_id, target } => {
            (req_id, conversation, client_msg_id, NewEntry::Delete { target })
        }
        ClientFrame::React { req_id, conversation, client_msg_id, target, emoji, remove } => {
            (req_id, conversation, client_msg_id, NewEntry::Reaction { target, emoji, remove })
        }
        ClientFrame::Delivered { req_id, conversation, seq } => {
            let res = cursors::report(state, user, conversation, Some(seq), None).await;
            return done(tx, req_id, res).await;
        }
        ClientFrame::Read { req_id, conversation, seq } => {
            let res = cursors::report(state, user, conversation, None, Some(seq)).await;
            return done(tx, req_id, res).await;
        }
        ClientFrame::Typing { req_id, conversation, typing } => {
            let res = state.typing().report(state, user, Some(session), conversation, typing);
            return done(tx, req_id, res.await).await;
        }
        ClientFrame::SubscribePresence { req_id, users } => {
            let frame = match presence::subscribe(state, user, session, users).await {
                Ok((users, denied)) => ServerFrame::PresenceSubscribed { req_id, users, denied },
                Err(err) => error(Some(req_id), err),
            };
            return reply(tx, frame).await;
        }
        ClientFrame::SetStatus { req_id, status } => {
            let res = presence::set_status(state, user, session, status);
            return done(tx, req_id, res).await;
        }
        ClientFrame::Sync { req_id, cursors, limit } => {
            return tx.send(Outbound::Sync { req_id, cursors, limit }).await;
        }
        ClientFrame::History { req_id, conversation, before, after, limit } => {
            return history(ctx, req_id, conversation, (before, after, limit)).await;
        }
        ClientFrame::Ping { req_id } => return reply(tx, ServerFrame::Pong { req_id }).await,
        ClientFrame::Auth { .. } => {
            let err = ApiError::bad_request("already authenticated");
            return reply(tx, error(None, err)).await;
        }
        ClientFrame::Unknown => {
            let error = ErrorBody::new(ErrorCode::UnknownType, "unknown frame type");
            return reply(tx, ServerFrame::Error { req_id: None, error }).await;
        }
    };
    if let Err(err) = frames.admit_append(&client_msg_id) {
        return reply(tx, error(Some(req_id), err)).await;
    }
    let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
    let id = client_msg_id.clone();
    let arrived = std::time::Instant::now();
    let span = tracing::info_span!("append", %conversation, req_id, seq = tracing::field::Empty);
    let submitted = {
        use tracing::Instrument;
        messages::submit(state, user, conversation, client_msg_id, entry)
            .instrument(span.clone())
            .await
    };
    match submitted {
        Err(err) => {
            frames.append_refused(&id, &err);
            reply(tx, error(Some(req_id), err)).await
        }
        Ok(pending) => {
            let tx = tx.clone();
            let acked = async move {
                let frame = match pending.wait().await {
                    Ok(ack) => {
                        tracing::Span::current().record("seq", ack.seq);
                        metrics::histogram!("natter_send_ack_seconds", "transport" => "ws")
                            .record(arrived.elapsed().as_secs_f64());
                        ServerFrame::Ack { req_id, ack }
                    }
                    Err(err) => error(Some(req_id), err.into()),
                };
                reply(&tx, frame).await;
                drop(permit);
            };
            state.tasks().spawn(tracing::Instrument::instrument(acked, span));
        }
    }
}

async fn history(
    ctx: &Ctx<'_>,
    req_id: ReqId,
    conversation: ConversationId,
    (before, after, limit): (Option<u64>, Option<u64>, Option<u32>),
) {
    let Ok(permit) = ctx.in_flight.clone().acquire_owned().await else { return };
    let (state, tx, user) = (ctx.state.clone(), ctx.out.clone(), ctx.principal.user_id);
    ctx.state.tasks().spawn(async move {
        let res = messages::history(&state, user, conversation, before, after, limit);
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
}
