//! # HTTP fallback transports: Server-Sent Events (`GET /v1/events`) and long-polling
//! (`POST /v1/poll`), plus the REST forms of typing and presence for them.
//!
//! Both are sessions like a WebSocket (registered for live entries, receipts, typing and
//! presence; same [`Deliverer`], so the same order guarantees), only the framing differs.
//! Their resume state lives with the client, so any node can serve the next request:
//! - SSE: every `entry` event's id is the client's whole cursor map (`conv:seq,conv:seq`);
//!   a reconnecting `EventSource` sends it back as `Last-Event-ID` and resumes exactly there.
//! - Long-poll: each request carries the cursors; the response returns the new ones. A poll
//!   stream (a server-side session kept `http_stream_ttl_ms` between requests) holds the
//!   ephemeral events that arrive between polls.

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use natter_cluster::SessionId;
use natter_proto::rest::{
    PollRequest, PresenceSubscribed, PresenceSubscription, SetStatus, Typing,
};
use natter_proto::{ConversationId, Seq, ServerFrame, SyncConversation, UserId};
use natter_store::Principal;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::auth::Auth;
use crate::delivery::{Deliverer, Outbound, Produced};
use crate::error::{ApiError, ApiResult};
use crate::handlers::presence;
use crate::session::{self, SessionGuard, SessionHandle};
use crate::state::AppState;

/// Items drained from a session queue per step.
const BATCH: usize = 256;

fn parse_cursors(text: &str) -> ApiResult<BTreeMap<ConversationId, Seq>> {
    natter_proto::parse_cursors(text)
        .ok_or_else(|| ApiError::bad_request("cursors are conv:seq pairs separated by commas"))
}

fn entry_frames(convs: Vec<SyncConversation>, out: &mut Vec<Produced>) {
    for conv in convs {
        for entry in conv.entries {
            let key = (entry.conversation, entry.seq);
            out.push(Produced {
                frame: ServerFrame::Entry { entry }.to_json().into(),
                entry: Some(key),
            });
        }
    }
}

#[derive(Deserialize)]
pub(super) struct EventsQuery {
    /// Starting cursors (`conv:seq,…`); `Last-Event-ID` takes precedence on reconnects.
    cursors: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/events`: the live stream as Server-Sent Events. Each event's data is one frame
/// exactly as on the WebSocket; entry events carry the cursor map as their id.
pub(super) async fn events(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let Query(q) = query?;
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let cursors = match last_event_id.or(q.cursors.as_deref()) {
        Some(text) => parse_cursors(text)?,
        None => BTreeMap::new(),
    };
    let opened = session::open(&state, auth.principal);
    let sse = SseStream {
        deliverer: Deliverer::new(state.clone(), auth.principal.user_id, opened.registered),
        ids: cursors.clone(),
        catch_up: Some(cursors),
        limit: q.limit,
        rx: opened.rx,
        handle: opened.handle,
        _guard: opened.guard,
        state: state.clone(),
        pending: std::collections::VecDeque::new(),
        done: false,
    };
    let keep_alive = KeepAlive::new().interval(state.cfg().limits.ping_interval());
    Ok(Sse::new(sse.into_stream()).keep_alive(keep_alive))
}

struct SseStream {
    state: AppState,
    deliverer: Deliverer,
    /// What the client holds: the id of the next entry event.
    ids: BTreeMap<ConversationId, Seq>,
    /// Cursors still to catch up from, before the live stream.
    catch_up: Option<BTreeMap<ConversationId, Seq>>,
    limit: Option<u32>,
    rx: mpsc::Receiver<Outbound>,
    handle: SessionHandle,
    _guard: SessionGuard,
    pending: std::collections::VecDeque<Event>,
    done: bool,
}

impl SseStream {
    fn into_stream(self) -> impl Stream<Item = Result<Event, Infallible>> {
        futures_util::stream::unfold(self, |mut st| async move {
            loop {
                if let Some(event) = st.pending.pop_front() {
                    return Some((Ok(event), st));
                }
                if st.done {
                    return None;
                }
                st.step().await;
            }
        })
    }

    async fn step(&mut self) {
        let mut out = Vec::new();
        if let Some(cursors) = self.catch_up.take() {
            // `ready` was queued first: it leads.
            if let Ok(first) = self.rx.try_recv() {
                self.deliverer.process(first, &mut out).await;
            }
            match self.deliverer.sync(&cursors, self.limit).await {
                Ok(convs) => {
                    let replied: HashSet<ConversationId> =
                        convs.iter().map(|c| c.conversation.id).collect();
                    // Conversations with nothing new are caught up where the server says.
                    for (conv, upto) in self.deliverer.cursors() {
                        if !replied.contains(&conv) {
                            self.ids.insert(conv, upto);
                        }
                    }
                    if convs.iter().any(|c| c.has_more) {
                        self.catch_up = Some(self.deliverer.cursors());
                    }
                    entry_frames(convs, &mut out);
                }
                Err(err) => {
                    let frame = ServerFrame::Error { req_id: None, error: err.body() };
                    out.push(Produced { frame: frame.to_json().into(), entry: None });
                    self.done = true;
                }
            }
        } else {
            let mut buf = Vec::with_capacity(BATCH);
            tokio::select! {
                biased;
                () = self.state.shutdown_token().cancelled() => self.done = true,
                () = self.handle.kill.cancelled() => self.done = true,
                n = self.rx.recv_many(&mut buf, BATCH) => {
                    if n == 0 {
                        self.done = true;
                    }
                    for item in buf {
                        self.deliverer.process(item, &mut out).await;
                    }
                    self.deliverer.record_latencies();
                }
            }
        }
        for produced in out {
            let mut event = Event::default().data(produced.frame.as_str());
            if let Some((conv, seq)) = produced.entry {
                self.ids.insert(conv, seq);
                event = event.id(natter_proto::encode_cursors(&self.ids));
            }
            self.pending.push_back(event);
        }
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
    rx: mpsc::Receiver<Outbound>,
    deliverer: Deliverer,
}

/// The caller's poll stream `id`, or a new one (`true` when new).
fn poll_stream(
    state: &AppState,
    principal: Principal,
    id: Option<u64>,
) -> (SessionId, Arc<PollStream>, bool) {
    let mut polls = state.polls().lock().expect("polls lock poisoned");
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

/// Ends poll streams that nobody polled for `http_stream_ttl_ms`, or that were killed.
pub(crate) fn reap_poll_streams(state: &AppState) {
    let ttl = state.cfg().limits.http_stream_ttl();
    let now = Instant::now();
    let mut polls = state.polls().lock().expect("polls lock poisoned");
    polls.retain(|_, s| {
        let idle = *s.last_used.lock().expect("last_used lock poisoned") + ttl <= now;
        // A stream whose lock is held has a request in flight: it is not idle.
        !(s.handle.kill.is_cancelled() || (idle && s.inner.try_lock().is_ok()))
    });
}

/// `POST /v1/poll`.
pub(super) async fn poll(
    State(state): State<AppState>,
    auth: Auth,
    body: Result<Json<PollRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(req) = body?;
    let limits = &state.cfg().limits;
    let wait = Duration::from_millis(req.timeout_ms.unwrap_or(limits.max_poll_timeout_ms))
        .min(Duration::from_millis(limits.max_poll_timeout_ms));
    let (id, stream, new) = poll_stream(&state, auth.principal, req.stream);
    let mut inner = stream.inner.lock().await;
    let PollInner { rx, deliverer } = &mut *inner;
    let mut out = Vec::new();
    if new && let Ok(ready) = rx.try_recv() {
        deliverer.process(ready, &mut out).await;
    }
    // The request's cursors are the truth: an earlier response may have been lost.
    deliverer.reset();
    entry_frames(deliverer.sync(&req.cursors, req.limit).await?, &mut out);
    while let Ok(item) = rx.try_recv() {
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
    let cursors = serde_json::to_string(&deliverer.cursors()).expect("cursors serialize");
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

/// `POST /v1/conversations/{id}/typing`.
pub(super) async fn typing(
    State(state): State<AppState>,
    auth: Auth,
    id: Result<Path<i64>, PathRejection>,
    body: Result<Json<Typing>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let conv = ConversationId(id?.0);
    let Json(req) = body?;
    state.typing().report(&state, auth.principal.user_id, None, conv, req.typing).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /v1/streams/{id}/presence`.
pub(super) async fn subscribe_presence(
    State(state): State<AppState>,
    auth: Auth,
    id: Result<Path<u64>, PathRejection>,
    body: Result<Json<PresenceSubscription>, JsonRejection>,
) -> ApiResult<Json<PresenceSubscribed>> {
    let sid = id?.0;
    let Json(req) = body?;
    let (users, denied) =
        presence::subscribe(&state, auth.principal.user_id, sid, req.users).await?;
    Ok(Json(PresenceSubscribed { users, denied }))
}

/// `PUT /v1/streams/{id}/status`.
pub(super) async fn set_status(
    State(state): State<AppState>,
    auth: Auth,
    id: Result<Path<u64>, PathRejection>,
    body: Result<Json<SetStatus>, JsonRejection>,
) -> ApiResult<StatusCode> {
    let sid = id?.0;
    let Json(req) = body?;
    presence::set_status(&state, auth.principal.user_id, sid, req.status)?;
    Ok(StatusCode::NO_CONTENT)
}
