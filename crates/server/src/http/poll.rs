//! # `POST /v1/poll`: the long-poll transport
//!
//! Each request carries the client's cursors (the truth: an earlier response may have been
//! lost) and the response returns the new ones, so any node can serve the next request. A
//! poll stream, a session kept `http_stream_ttl_ms` between requests, holds the receipts,
//! typing and presence that arrive between polls; the HTTP layer owns the streams
//! ([`PollStreams`]), not the node's shared state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use natter_cluster::SessionId;
use natter_proto::UserId;
use natter_proto::rest::PollRequest;
use natter_store::Principal;

use super::sse::{BATCH, entry_frames};
use crate::auth::Auth;
use crate::delivery::Deliverer;
use crate::error::{ApiResult, JsonBody};
use crate::session::{self, SessionGuard, SessionHandle, SessionQueue};
use crate::state::AppState;

/// The node's long-poll streams, by session id.
#[derive(Default)]
pub(crate) struct PollStreams {
    // A std mutex: lookups and inserts only; each stream has its own async lock.
    by_id: Mutex<HashMap<SessionId, Arc<PollStream>>>,
}

impl PollStreams {
    /// Ends streams that nobody polled for `ttl`, or that were killed.
    pub(crate) fn reap(&self, ttl: Duration) {
        let now = Instant::now();
        let mut polls = self.by_id.lock().expect("polls lock poisoned");
        polls.retain(|_, s| {
            let idle = *s.last_used.lock().expect("last_used lock poisoned") + ttl <= now;
            // A stream whose lock is held has a request in flight: it is not idle.
            !(s.handle.kill.is_cancelled() || (idle && s.inner.try_lock().is_ok()))
        });
    }

    /// Ends every stream (the node is stopping).
    pub(crate) fn clear(&self) {
        self.by_id.lock().expect("polls lock poisoned").clear();
    }
}

/// A long-poll stream: a session that outlives each request by `http_stream_ttl_ms`.
pub(crate) struct PollStream {
    user: UserId,
    handle: SessionHandle,
    inner: tokio::sync::Mutex<PollInner>,
    // A std mutex: read and written in one statement.
    last_used: Mutex<Instant>,
    _guard: SessionGuard,
}

struct PollInner {
    rx: SessionQueue,
    deliverer: Deliverer,
}

/// The caller's poll stream `id`, or a new one (`true` when new).
fn poll_stream(
    state: &AppState,
    streams: &PollStreams,
    principal: Principal,
    id: Option<u64>,
) -> (SessionId, Arc<PollStream>, bool) {
    let mut polls = streams.by_id.lock().expect("polls lock poisoned");
    if let Some(stream) = id.and_then(|id| polls.get(&id))
        && stream.user == principal.user_id
        && !stream.handle.kill.is_cancelled()
    {
        return (id.expect("found by id"), stream.clone(), false);
    }
    let opened = session::open(state, principal);
    let stream = Arc::new(PollStream {
        user: principal.user_id,
        handle: opened.handle,
        inner: tokio::sync::Mutex::new(PollInner {
            rx: opened.rx,
            deliverer: Deliverer::new(state.clone(), principal.user_id, opened.registered),
        }),
        last_used: Mutex::new(Instant::now()),
        _guard: opened.guard,
    });
    polls.insert(opened.id, stream.clone());
    (opened.id, stream, true)
}

/// `POST /v1/poll`.
pub(super) async fn poll(
    State(state): State<AppState>,
    Extension(streams): Extension<Arc<PollStreams>>,
    auth: Auth,
    body: JsonBody<PollRequest>,
) -> ApiResult<Response> {
    let JsonBody(req) = body;
    let limits = &state.cfg().limits;
    let wait = Duration::from_millis(req.timeout_ms.unwrap_or(limits.max_poll_timeout_ms))
        .min(Duration::from_millis(limits.max_poll_timeout_ms));
    let (id, stream, new) = poll_stream(&state, &streams, auth.principal, req.stream);
    let mut inner = stream.inner.lock().await;
    let PollInner { rx, deliverer } = &mut *inner;
    let mut out = Vec::new();
    if new && let Some(ready) = rx.try_recv() {
        deliverer.process(ready, &mut out).await;
    }
    // The request's cursors are the truth: an earlier response may have been lost. A reply
    // cut by its budget returns at once (it has entries); the next poll goes on from its
    // cursors.
    deliverer.reset();
    entry_frames(deliverer.sync(&req.cursors, req.limit).await?.conversations, &mut out);
    while let Some(item) = rx.try_recv() {
        deliverer.process(item, &mut out).await;
    }
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = Vec::with_capacity(BATCH);
    while out.is_empty() {
        tokio::select! {
            biased;
            () = state.shutdown_token().cancelled() => break,
            () = stream.handle.kill.cancelled() => break,
            () = tokio::time::sleep_until(deadline) => break,
            n = rx.recv_many(&mut buf, BATCH) => {
                if n == 0 {
                    break;
                }
                for item in buf.drain(..) {
                    deliverer.process(item, &mut out).await;
                }
            }
        }
    }
    deliverer.record_latencies();
    rx.written();
    let cursors = deliverer.next_cursors(&req.cursors);
    let cursors = serde_json::to_string(&cursors).expect("cursors serialize");
    drop(inner);
    *stream.last_used.lock().expect("last_used lock poisoned") = Instant::now();
    // The frames are already JSON: the body is assembled around them, not re-serialized.
    let mut body = format!(r#"{{"stream":{id},"cursors":{cursors},"events":["#);
    for (i, produced) in out.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(produced.frame.as_str());
    }
    body.push_str("]}");
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}
