//! # `POST /v1/poll`: the long-poll transport
//!
//! Each request carries the client's cursors (the truth: an earlier response may have been
//! lost) and the response returns the new ones, so any node can serve the next request. A
//! poll stream, a session kept `http_stream_ttl_ms` between requests, holds the receipts,
//! typing and presence that arrive between polls; the HTTP layer owns the streams
//! ([`PollStreams`]), not the node's shared state.
//!
//! A token holds at most `max_poll_streams_per_token` streams: each poll without a live
//! `stream` opens one, and beyond the cap it ends the token's least recently polled idle
//! stream (a client only uses its newest) or, when every one has a request in flight, gets
//! `too_many_requests`. Each stream is also one of the user's `max_sessions_per_user`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use natter_cluster::SessionId;
use natter_proto::rest::PollRequest;
use natter_proto::{DeviceId, ErrorCode, UserId};
use natter_store::Principal;

use super::sse::{BATCH, entry_frames};
use crate::auth::Auth;
use crate::delivery::Deliverer;
use crate::error::{ApiError, ApiResult, JsonBody};
use crate::session::{self, SessionGuard, SessionHandle, SessionQueue};
use crate::state::AppState;

/// The node's long-poll streams, by session id.
#[derive(Default)]
pub(crate) struct PollStreams {
    // A std mutex: lookups and inserts only; each stream has its own async lock.
    inner: Mutex<Streams>,
}

#[derive(Default)]
struct Streams {
    by_id: HashMap<SessionId, Arc<PollStream>>,
    /// The streams of each token (a token is one device's login), oldest first.
    by_device: HashMap<DeviceId, Vec<SessionId>>,
}

impl Streams {
    fn insert(&mut self, id: SessionId, stream: Arc<PollStream>) {
        self.by_device.entry(stream.device).or_default().push(id);
        self.by_id.insert(id, stream);
    }

    fn remove(&mut self, id: SessionId) -> Option<Arc<PollStream>> {
        let stream = self.by_id.remove(&id)?;
        if let Some(ids) = self.by_device.get_mut(&stream.device) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.by_device.remove(&stream.device);
            }
        }
        Some(stream)
    }

    /// Makes room for one more stream of `device` under `cap`: ends its least recently
    /// polled idle stream (a killed one first) if it has `cap` already; false when every
    /// one is being polled.
    fn make_room(&mut self, device: DeviceId, cap: usize) -> bool {
        let Some(ids) = self.by_device.get(&device).filter(|ids| ids.len() >= cap) else {
            return true;
        };
        let idle = ids.iter().filter_map(|id| Some((*id, self.by_id.get(id)?)));
        let idle = idle.filter(|(_, s)| s.is_idle());
        let oldest = idle.map(|(id, s)| (!s.handle.kill.is_cancelled(), s.last_used(), id));
        let Some((_, _, victim)) = oldest.min() else { return false };
        if let Some(stream) = self.remove(victim) {
            stream.handle.kill.cancel();
            metrics::counter!("natter_poll_streams_evicted_total").increment(1);
        }
        true
    }
}

impl PollStreams {
    /// Ends streams that nobody polled for `ttl`, or that were killed.
    pub(crate) fn reap(&self, ttl: Duration) {
        let now = Instant::now();
        let mut polls = self.inner.lock().expect("polls lock poisoned");
        let ended: Vec<SessionId> = polls
            .by_id
            .iter()
            .filter(|(_, s)| {
                s.handle.kill.is_cancelled() || (s.last_used() + ttl <= now && s.is_idle())
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ended {
            polls.remove(id);
        }
    }

    /// Ends every stream (the node is stopping).
    pub(crate) fn clear(&self) {
        let mut polls = self.inner.lock().expect("polls lock poisoned");
        polls.by_id.clear();
        polls.by_device.clear();
    }
}

/// A long-poll stream: a session that outlives each request by `http_stream_ttl_ms`.
pub(crate) struct PollStream {
    user: UserId,
    device: DeviceId,
    handle: SessionHandle,
    inner: tokio::sync::Mutex<PollInner>,
    // A std mutex: read and written in one statement.
    last_used: Mutex<Instant>,
    _guard: SessionGuard,
}

impl PollStream {
    fn last_used(&self) -> Instant {
        *self.last_used.lock().expect("last_used lock poisoned")
    }

    /// No request in flight: one holds `inner` for as long as it runs.
    fn is_idle(&self) -> bool {
        self.inner.try_lock().is_ok()
    }
}

impl Drop for PollStream {
    fn drop(&mut self) {
        metrics::gauge!("natter_poll_streams").decrement(1.0);
    }
}

struct PollInner {
    rx: SessionQueue,
    deliverer: Deliverer,
}

/// The caller's poll stream `id`, or a new one (`true` when new): after making room among
/// the token's streams (`max_poll_streams_per_token`), and within the user's sessions.
fn poll_stream(
    state: &AppState,
    streams: &PollStreams,
    principal: Principal,
    id: Option<u64>,
) -> ApiResult<(SessionId, Arc<PollStream>, bool)> {
    let mut polls = streams.inner.lock().expect("polls lock poisoned");
    if let Some(stream) = id.and_then(|id| polls.by_id.get(&id))
        && stream.user == principal.user_id
        && stream.handle.device == principal.device_id
        && !stream.handle.kill.is_cancelled()
    {
        return Ok((id.expect("found by id"), stream.clone(), false));
    }
    if !polls.make_room(principal.device_id, state.cfg().limits.max_poll_streams_per_token) {
        let message = "too many long-poll streams for this token: pass `stream` to reuse one";
        return Err(ApiError::new(ErrorCode::TooManyRequests, message));
    }
    let opened = session::open(state, principal, "poll")?;
    let stream = Arc::new(PollStream {
        user: principal.user_id,
        device: principal.device_id,
        handle: opened.handle,
        inner: tokio::sync::Mutex::new(PollInner {
            rx: opened.rx,
            deliverer: Deliverer::new(state.clone(), principal.user_id, opened.registered, "poll"),
        }),
        last_used: Mutex::new(Instant::now()),
        _guard: opened.guard,
    });
    metrics::gauge!("natter_poll_streams").increment(1.0);
    polls.insert(opened.id, stream.clone());
    Ok((opened.id, stream, true))
}

/// `POST /v1/poll`.
#[utoipa::path(
    post, path = "/v1/poll", tag = "live",
    request_body = PollRequest,
    responses((status = 200, description = "events after the cursors, or none by the timeout", body = natter_proto::rest::PollResponse))
)]
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
    let (id, stream, new) = poll_stream(&state, &streams, auth.principal, req.stream)?;
    if new {
        session::recheck(&state, &stream.handle, auth.token_hash).await;
    }
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
    // The token was revoked while this request waited (the stream is gone with it).
    if stream.handle.close_code() == natter_proto::close::UNAUTHENTICATED {
        return Err(ApiError::unauthenticated());
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
