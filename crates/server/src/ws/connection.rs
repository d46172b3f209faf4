//! One WebSocket session: authenticate, register, then a reader and a writer until either
//! ends, the session is killed (slow consumer, idle, a bad frame) or the server stops.
//!
//! The writer is the only producer of what the client sees: it drains everything queued,
//! turns it into frames with the session's [`Deliverer`] (which keeps every conversation a
//! contiguous run of `seq`), feeds them to the socket and flushes once.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use natter_cluster::SessionId;
use natter_proto::{ClientFrame, ErrorBody, ErrorCode, ServerFrame, close};
use natter_store::{Principal, TokenHash};
use tokio::sync::Semaphore;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tracing::Instrument;

use crate::auth;
use crate::delivery::{Deliverer, Outbound, Produced};
use crate::rate::ConnLimits;
use crate::session::{self, SessionHandle, SessionQueue};
use crate::state::AppState;
use crate::ws::dispatch;

/// A session's socket: the upgraded connection, with or without permessage-deflate.
type WebSocket = WebSocketStream<
    natter_wsdeflate::MaybeDeflate<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>,
>;

/// Frames the writer drains per wake-up (then one flush).
const WRITE_BATCH: usize = 256;

pub(crate) async fn run(
    state: AppState,
    mut socket: WebSocket,
    principal: Option<(Principal, TokenHash)>,
) {
    let (principal, token) = match principal {
        Some(p) => p,
        None => match authenticate_first_frame(&state, &mut socket).await {
            Some(p) => p,
            None => {
                let frame = ServerFrame::Error {
                    req_id: None,
                    error: ErrorBody::new(
                        ErrorCode::Unauthenticated,
                        "the first frame must be a valid auth frame",
                    ),
                };
                let _ = socket.send(Message::Text(frame.to_json().into())).await;
                let _ = send_close(&mut socket, close::UNAUTHENTICATED, "unauthenticated").await;
                return;
            }
        },
    };
    let opened = match session::open(&state, principal, "ws") {
        Ok(opened) => opened,
        Err(err) => {
            let frame = ServerFrame::Error { req_id: None, error: err.body() };
            let _ = socket.send(Message::Text(frame.to_json().into())).await;
            let _ = send_close(&mut socket, close::TOO_MANY_SESSIONS, "too many sessions").await;
            return;
        }
    };
    session::recheck(&state, &opened.handle, token).await;
    let span = tracing::info_span!("session", conn_id = opened.id, user_id = principal.user_id.0);
    run_session(state, socket, principal, opened).instrument(span).await;
}

async fn run_session(
    state: AppState,
    socket: WebSocket,
    principal: Principal,
    opened: session::OpenSession,
) {
    let session::OpenSession { id, handle, rx, guard, registered } = opened;
    tracing::debug!("session started");
    let (sink, stream) = socket.split();
    tokio::join!(
        write_loop(&state, principal, sink, rx, &handle, registered),
        read_loop(&state, principal, id, stream, &handle),
    );
    drop(guard);
    tracing::debug!(close_code = handle.close_code(), "session ended");
}

async fn authenticate_first_frame(
    state: &AppState,
    socket: &mut WebSocket,
) -> Option<(Principal, TokenHash)> {
    let first = tokio::time::timeout(state.cfg().limits.auth_timeout(), socket.next()).await;
    let Ok(Some(Ok(Message::Text(text)))) = first else { return None };
    let Ok(ClientFrame::Auth { token }) = ClientFrame::parse(&text) else { return None };
    let principal = auth::authenticate(state, &token).await.ok().flatten()?;
    Some((principal, auth::token_hash(&token)))
}

async fn send_close<S>(sink: &mut S, code: u16, reason: &'static str) -> Result<(), WsError>
where
    S: SinkExt<Message, Error = WsError> + Unpin,
{
    // A slow consumer's socket is full: its close frame goes out only once the client reads
    // what is already in flight, so it gets longer (its queue is already freed).
    let wait = Duration::from_secs(if code == close::SLOW_CONSUMER { 5 } else { 1 });
    let frame = CloseFrame { code: code.into(), reason: Utf8Bytes::from_static(reason) };
    match tokio::time::timeout(wait, sink.send(Message::Close(Some(frame)))).await {
        Ok(res) => res,
        Err(_) => Ok(()),
    }
}

fn close_reason(code: u16) -> &'static str {
    match code {
        close::UNAUTHENTICATED => "token revoked: log in again",
        close::SLOW_CONSUMER => "slow consumer: reconnect and sync",
        close::IDLE => "idle timeout",
        close::TOO_MANY_SESSIONS => "too many sessions",
        close::PROTOCOL_ERROR => "websocket protocol error",
        close::INVALID_PAYLOAD => "invalid payload: not utf-8, or not deflate data",
        1009 => "frame too large",
        1012 => "server restarting: reconnect and sync",
        _ => "closing",
    }
}

async fn write_loop(
    state: &AppState,
    principal: Principal,
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: SessionQueue,
    handle: &SessionHandle,
    registered: crate::cluster::Registration,
) {
    let mut deliverer = Deliverer::new(state.clone(), principal.user_id, registered, "ws");
    // Both buffers start empty and shrink back after bursts: an idle session costs no
    // batch-sized buffers (256 slots of each would be ~25 KiB per connection).
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let period = state.cfg().limits.ping_interval();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let code = loop {
        tokio::select! {
            biased;
            () = state.shutdown_token().cancelled() => break 1012,
            () = handle.kill.cancelled() => break handle.close_code(),
            n = rx.recv_many(&mut buf, WRITE_BATCH) => if n == 0 { break 0 },
            _ = ping.tick() => {
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    break 0;
                }
                continue;
            }
        }
        // A client that stops reading blocks this write; the kill (slow consumer) ends it.
        let res = tokio::select! {
            () = handle.kill.cancelled() => break handle.close_code(),
            // Boxed: the batch future (sync, gap fill) is large, and an idle session should
            // not carry its space.
            res = Box::pin(write_batch(&mut deliverer, &mut sink, &mut buf, &mut out)) => res,
        };
        if let Err(err) = res {
            log_write_error(&err);
            break 0;
        }
        // Written: the batch no longer counts against `outbound_queue_bytes`.
        rx.written();
    };
    handle.kill.cancel();
    drop((rx, buf));
    if code != 0 {
        let _ = send_close(&mut sink, code, close_reason(code)).await;
    } else {
        // tungstenite answers a client's Close itself (it queues the echo, or 1002 for a code
        // a client must not send), but the answer reaches the wire only on a later write or
        // flush: without this, the client would see TCP end with no Close.
        let _ = tokio::time::timeout(Duration::from_secs(1), sink.flush()).await;
    }
}

/// A write fails when the client is gone (logged at debug), or when a frame does not fit the
/// write buffer (a server bug: no reply may be that large; logged as an error, as the
/// client only sees its connection end).
fn log_write_error(err: &WsError) {
    match err {
        WsError::WriteBufferFull(_) => {
            tracing::error!(error = %err, "a frame did not fit the write buffer; closing");
        }
        _ => tracing::debug!(error = %err, "write failed"),
    }
}

async fn write_batch(
    deliverer: &mut Deliverer,
    sink: &mut SplitSink<WebSocket, Message>,
    buf: &mut Vec<Outbound>,
    out: &mut Vec<Produced>,
) -> Result<(), WsError> {
    for item in buf.drain(..) {
        deliverer.process(item, out).await;
    }
    for produced in out.drain(..) {
        sink.feed(Message::Text(produced.frame)).await?;
    }
    sink.flush().await?;
    deliverer.record_latencies();
    if buf.capacity() > 64 {
        buf.shrink_to(16);
    }
    if out.capacity() > 64 {
        out.shrink_to(16);
    }
    Ok(())
}

async fn read_loop(
    state: &AppState,
    principal: Principal,
    session: SessionId,
    mut stream: SplitStream<WebSocket>,
    handle: &SessionHandle,
) {
    let limits = &state.cfg().limits;
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight));
    let idle = limits.idle_timeout();
    let frames = ConnLimits::new(limits);
    let ctx = dispatch::Ctx {
        state,
        principal,
        session,
        out: handle,
        in_flight: &in_flight,
        frames: &frames,
    };
    loop {
        let next = tokio::select! {
            biased;
            () = state.shutdown_token().cancelled() => return,
            () = handle.kill.cancelled() => return,
            next = tokio::time::timeout(idle, stream.next()) => next,
        };
        match next {
            // Nothing, not even a pong to our pings: the client is gone (presence TTL).
            Err(_) => {
                handle.close(close::IDLE);
                return;
            }
            Ok(None) | Ok(Some(Ok(Message::Close(_)))) => break,
            Ok(Some(Err(err))) => {
                let code = read_error_close_code(&err);
                if code == 0 {
                    break;
                }
                if code == 1009 {
                    metrics::counter!("natter_oversized_frames_total").increment(1);
                }
                tracing::debug!(error = %err, close_code = code, "bad frame");
                handle.close(code);
                return;
            }
            // Boxed for the same reason: requests are rare next to idle time.
            Ok(Some(Ok(Message::Text(text)))) => Box::pin(dispatch::frame(&ctx, &text)).await,
            Ok(Some(Ok(Message::Binary(_)))) => {
                let error = ErrorBody::new(
                    ErrorCode::MalformedFrame,
                    "frames are JSON text; binary frames are not accepted",
                );
                dispatch::reply(handle, ServerFrame::Error { req_id: None, error }).await;
            }
            // Pings are answered by the WebSocket layer; pongs only prove liveness.
            Ok(Some(Ok(_))) => {}
        }
    }
    handle.kill.cancel();
}

/// The close code for an error the WebSocket layer reported while reading, or 0 when the
/// connection is gone and no close frame can reach the client. tungstenite leaves the
/// connection open for writing after these errors, so the writer can still send the close.
fn read_error_close_code(err: &WsError) -> u16 {
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    match err {
        WsError::Capacity(_) => 1009,
        // Invalid UTF-8 in a text message (also across fragments) or in a close reason.
        WsError::Utf8(_) => close::INVALID_PAYLOAD,
        // TCP ended without a Close: nobody is left to tell.
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => 0,
        // RSV bits, reserved opcodes, fragmented or oversized control frames, unmasked
        // frames, continuations of nothing, malformed close frames.
        WsError::Protocol(_) => close::PROTOCOL_ERROR,
        // permessage-deflate refused a message: larger than the frame cap once inflated
        // (1009), not valid deflate data (1007), or framed against the extension's rules
        // (1002). The layer keeps the connection writable for the close.
        WsError::Io(io) => {
            natter_wsdeflate::DeflateError::from_io(io).map_or(0, |e| e.close_code())
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};

    use super::*;

    #[test]
    fn read_errors_map_to_close_codes() {
        let code = |err: WsError| read_error_close_code(&err);
        let too_long = CapacityError::MessageTooLong { size: 2, max_size: 1 };
        assert_eq!(code(WsError::Capacity(too_long)), 1009);
        assert_eq!(code(WsError::Utf8("bad".into())), close::INVALID_PAYLOAD);
        assert_eq!(
            code(WsError::Protocol(ProtocolError::NonZeroReservedBits)),
            close::PROTOCOL_ERROR
        );
        assert_eq!(
            code(WsError::Protocol(ProtocolError::UnmaskedFrameFromClient)),
            close::PROTOCOL_ERROR
        );
        // The client is gone: no close frame to send.
        assert_eq!(code(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)), 0);
        assert_eq!(code(WsError::Io(std::io::ErrorKind::ConnectionReset.into())), 0);
        let deflate = |e: natter_wsdeflate::DeflateError| code(WsError::Io(e.into()));
        assert_eq!(deflate(natter_wsdeflate::DeflateError::MessageTooBig), 1009);
        assert_eq!(deflate(natter_wsdeflate::DeflateError::CorruptData), close::INVALID_PAYLOAD);
        assert_eq!(
            deflate(natter_wsdeflate::DeflateError::Protocol("rsv1")),
            close::PROTOCOL_ERROR
        );
    }
}
