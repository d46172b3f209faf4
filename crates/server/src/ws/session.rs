//! One WebSocket session: authenticate, register, then a reader and a writer until either
//! ends, the session is killed (slow consumer, idle, oversized frame) or the server stops.
//!
//! The writer is the only producer of what the client sees. It drains everything queued,
//! feeds it to the socket and flushes once (one write for many frames), and it owns the
//! per-conversation [`Delivery`] state that makes each conversation a contiguous run of
//! `seq`: entries already sent are dropped, a gap is filled from the store before the entry
//! after it, and `sync` runs here so that its reply and the live stream cannot interleave
//! wrongly (subscribe first — the session is registered before any sync — read the store
//! second, merge by `seq`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use natter_proto::{ClientFrame, ConversationId, ErrorBody, ErrorCode, ServerFrame, close};
use natter_store::{Principal, Range};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::auth;
use crate::handlers::sync::{Delivery, sync};
use crate::state::{AppState, SessionHandle};
use crate::ws::{Outbound, dispatch};

/// Frames the writer drains per wake-up (then one flush).
const WRITE_BATCH: usize = 256;

pub(crate) async fn run(state: AppState, socket: WebSocket, principal: Option<Principal>) {
    let conn_id = state.next_session_id();
    let span = tracing::info_span!("session", conn_id, user_id = tracing::field::Empty);
    run_session(state, socket, principal, conn_id)
        .instrument(span)
        .await;
}

async fn run_session(
    state: AppState,
    mut socket: WebSocket,
    principal: Option<Principal>,
    conn_id: u64,
) {
    let principal = match principal {
        Some(p) => p,
        None => match authenticate_first_frame(&state, &mut socket).await {
            Some(p) => p,
            None => {
                let frame = ServerFrame::Error {
                    req_id: None,
                    error: ErrorBody {
                        code: ErrorCode::Unauthenticated,
                        message: "the first frame must be a valid auth frame".to_owned(),
                    },
                };
                let _ = socket.send(Message::Text(frame.to_json().into())).await;
                let _ = send_close(&mut socket, close::UNAUTHENTICATED, "unauthenticated").await;
                return;
            }
        },
    };
    let user = principal.user_id;
    tracing::Span::current().record("user_id", user.0);

    let limits = &state.cfg().limits;
    let (tx, rx) = mpsc::channel(limits.outbound_queue);
    let handle = SessionHandle {
        tx: tx.clone(),
        kill: CancellationToken::new(),
        close_code: Arc::new(AtomicU16::new(0)),
    };
    let ready = ServerFrame::Ready {
        user_id: user,
        device_id: principal.device_id,
    };
    // Queued before registering, so it is the first frame the client sees.
    let _ = tx.try_send(Outbound::Frame(ready.to_json().into()));
    state.sessions().register(user, conn_id, handle.clone());
    metrics::gauge!("natter_connections").increment(1.0);
    tracing::debug!("session started");

    let (sink, stream) = socket.split();
    tokio::join!(
        write_loop(&state, principal, sink, rx, &handle),
        read_loop(&state, principal, stream, tx, &handle),
    );

    state.sessions().deregister(user, conn_id);
    metrics::gauge!("natter_connections").decrement(1.0);
    tracing::debug!(
        close_code = handle.close_code.load(Ordering::Relaxed),
        "session ended"
    );
}

async fn authenticate_first_frame(state: &AppState, socket: &mut WebSocket) -> Option<Principal> {
    let first = tokio::time::timeout(state.cfg().limits.auth_timeout(), socket.recv()).await;
    let Ok(Some(Ok(Message::Text(text)))) = first else {
        return None;
    };
    let Ok(ClientFrame::Auth { token }) = ClientFrame::parse(&text) else {
        return None;
    };
    auth::authenticate(state, &token).await.ok().flatten()
}

async fn send_close<S>(sink: &mut S, code: u16, reason: &'static str) -> Result<(), axum::Error>
where
    S: SinkExt<Message, Error = axum::Error> + Unpin,
{
    // A slow consumer's socket is full: its close frame goes out only once the client reads
    // what is already in flight, so it gets longer (its queue is already freed).
    let wait = Duration::from_secs(if code == close::SLOW_CONSUMER { 5 } else { 1 });
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    match tokio::time::timeout(wait, sink.send(Message::Close(Some(frame)))).await {
        Ok(res) => res,
        Err(_) => Ok(()),
    }
}

fn close_reason(code: u16) -> &'static str {
    match code {
        close::SLOW_CONSUMER => "slow consumer: reconnect and sync",
        close::IDLE => "idle timeout",
        1009 => "frame too large",
        1012 => "server restarting: reconnect and sync",
        _ => "closing",
    }
}

async fn write_loop(
    state: &AppState,
    principal: Principal,
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Outbound>,
    handle: &SessionHandle,
) {
    let mut writer = Writer {
        state,
        principal,
        delivery: HashMap::new(),
        synced: false,
    };
    let mut buf = Vec::with_capacity(WRITE_BATCH);
    let period = state.cfg().limits.ping_interval();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let code = loop {
        tokio::select! {
            biased;
            () = state.shutdown_token().cancelled() => break 1012,
            () = handle.kill.cancelled() => break handle.close_code.load(Ordering::Relaxed),
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
            () = handle.kill.cancelled() => break handle.close_code.load(Ordering::Relaxed),
            res = writer.write_batch(&mut sink, &mut buf) => res,
        };
        if let Err(err) = res {
            tracing::debug!(error = %err, "write failed");
            break 0;
        }
    };
    handle.kill.cancel();
    drop((rx, buf));
    if code != 0 {
        let _ = send_close(&mut sink, code, close_reason(code)).await;
    }
}

struct Writer<'a> {
    state: &'a AppState,
    principal: Principal,
    delivery: HashMap<ConversationId, Delivery>,
    /// Whether a sync ran: only then are conversations new to the session announced.
    synced: bool,
}

impl Writer<'_> {
    async fn write_batch(
        &mut self,
        sink: &mut SplitSink<WebSocket, Message>,
        buf: &mut Vec<Outbound>,
    ) -> Result<(), axum::Error> {
        let mut delivered = Vec::new();
        for item in buf.drain(..) {
            match item {
                Outbound::Frame(text) => sink.feed(Message::Text(text)).await?,
                Outbound::Entry(routed) => {
                    if self
                        .entry(sink, &routed.frame, routed.conversation, routed.seq)
                        .await?
                    {
                        delivered.push(routed.routed_at);
                    }
                }
                Outbound::Sync {
                    req_id,
                    cursors,
                    limit,
                } => {
                    let user = self.principal.user_id;
                    let res = sync(self.state, user, &cursors, limit, Some(&mut self.delivery));
                    let frame = match res.await {
                        Ok(conversations) => {
                            self.synced = true;
                            ServerFrame::Synced {
                                req_id,
                                conversations,
                            }
                        }
                        Err(err) => ServerFrame::Error {
                            req_id: Some(req_id),
                            error: err.body(),
                        },
                    };
                    sink.feed(Message::Text(frame.to_json().into())).await?;
                }
            }
        }
        sink.flush().await?;
        for at in delivered {
            metrics::histogram!("natter_delivery_seconds").record(at.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// Sends one live entry if it is next for its conversation, after filling any gap from
    /// the store. Returns whether the routed frame itself was sent.
    async fn entry(
        &mut self,
        sink: &mut SplitSink<WebSocket, Message>,
        frame: &Utf8Bytes,
        conv: ConversationId,
        seq: u64,
    ) -> Result<bool, axum::Error> {
        let upto = match self.delivery.get(&conv) {
            Some(Delivery::Live(upto)) => *upto,
            // Paging through a backlog: the next sync brings this entry.
            Some(Delivery::Behind(_)) => return Ok(false),
            // Before the first sync the client has not asked for anything yet.
            None if !self.synced => return Ok(false),
            // A conversation new to this session (created, or the user was added): announce
            // it with its latest page, as sync does.
            None => {
                let limit = self.state.cfg().limits.default_page;
                let page = self.state.store().entries(conv, Range::Latest, limit).await;
                let Ok(page) = page else { return Ok(false) };
                let first = page.entries.first().map_or(seq, |e| e.seq);
                let upto = first.saturating_sub(1);
                self.delivery.insert(conv, Delivery::Live(upto));
                upto
            }
        };
        if seq <= upto {
            return Ok(false);
        }
        if seq > upto + 1 && !self.fill_gap(sink, conv, upto, seq).await? {
            return Ok(false);
        }
        sink.feed(Message::Text(frame.clone())).await?;
        self.delivery.insert(conv, Delivery::Live(seq));
        Ok(true)
    }

    /// Sends entries `upto+1 .. seq-1` from the store. Returns false (and leaves the state
    /// where the store left it) if the store could not supply them.
    async fn fill_gap(
        &mut self,
        sink: &mut SplitSink<WebSocket, Message>,
        conv: ConversationId,
        mut upto: u64,
        seq: u64,
    ) -> Result<bool, axum::Error> {
        let max_page = self.state.cfg().limits.max_page;
        while upto + 1 < seq {
            let want = ((seq - 1 - upto) as u32).min(max_page);
            let page = match self
                .state
                .store()
                .entries(conv, Range::After(upto), want)
                .await
            {
                Ok(page) if !page.entries.is_empty() => page,
                Ok(_) => return Ok(false),
                Err(err) => {
                    tracing::warn!(%conv, error = %err, "gap fill failed");
                    return Ok(false);
                }
            };
            for entry in page.entries {
                if entry.seq >= seq {
                    break;
                }
                upto = entry.seq;
                let text = ServerFrame::Entry { entry }.to_json();
                sink.feed(Message::Text(text.into())).await?;
            }
            self.delivery.insert(conv, Delivery::Live(upto));
        }
        Ok(true)
    }
}

async fn read_loop(
    state: &AppState,
    principal: Principal,
    mut stream: SplitStream<WebSocket>,
    tx: mpsc::Sender<Outbound>,
    handle: &SessionHandle,
) {
    let limits = &state.cfg().limits;
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight));
    let idle = limits.idle_timeout();
    loop {
        let next = tokio::select! {
            biased;
            () = state.shutdown_token().cancelled() => return,
            () = handle.kill.cancelled() => return,
            next = tokio::time::timeout(idle, stream.next()) => next,
        };
        match next {
            Err(_) => {
                handle.close(close::IDLE);
                return;
            }
            Ok(None) | Ok(Some(Ok(Message::Close(_)))) => break,
            Ok(Some(Err(err))) => {
                if is_too_large(err) {
                    metrics::counter!("natter_oversized_frames_total").increment(1);
                    handle.close(1009);
                    return;
                }
                break;
            }
            Ok(Some(Ok(Message::Text(text)))) => {
                dispatch::frame(state, principal, &tx, &in_flight, &text).await;
            }
            Ok(Some(Ok(Message::Binary(_)))) => {
                let error = ErrorBody {
                    code: ErrorCode::MalformedFrame,
                    message: "frames are JSON text; binary frames are not accepted".to_owned(),
                };
                dispatch::reply(
                    &tx,
                    ServerFrame::Error {
                        req_id: None,
                        error,
                    },
                )
                .await;
            }
            // Pings are answered by the WebSocket layer; pongs only prove liveness.
            Ok(Some(Ok(_))) => {}
        }
    }
    handle.kill.cancel();
}

fn is_too_large(err: axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let inner = err.into_inner();
    matches!(inner.downcast_ref::<WsError>(), Some(WsError::Capacity(_)))
}
