//! # `GET /v1/events`: the Server-Sent Events transport
//!
//! A session like a WebSocket (registered for live entries, receipts, typing and presence;
//! the same [`Deliverer`], so the same order guarantees); only the framing differs. Every
//! `entry` event's id is the client's whole cursor map (`conv:seq,conv:seq`): a reconnecting
//! `EventSource` sends it back as `Last-Event-ID` and resumes exactly there, on any node.

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use natter_proto::{ConversationId, Seq, ServerFrame, SyncConversation};
use serde::Deserialize;

use crate::auth::Auth;
use crate::delivery::{Deliverer, Produced};
use crate::error::{ApiError, ApiResult, check_seq};
use crate::session::{self, SessionGuard, SessionHandle, SessionQueue};
use crate::state::AppState;

/// Items drained from a session queue per step.
pub(super) const BATCH: usize = 256;

fn parse_cursors(text: &str) -> ApiResult<BTreeMap<ConversationId, Seq>> {
    let cursors = natter_proto::parse_cursors(text)
        .ok_or_else(|| ApiError::bad_request("cursors are conv:seq pairs separated by commas"))?;
    for &seq in cursors.values() {
        check_seq("cursor", seq)?;
    }
    Ok(cursors)
}

pub(super) fn entry_frames(convs: Vec<SyncConversation>, out: &mut Vec<Produced>) {
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

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct EventsQuery {
    /// Starting cursors (`conv:seq,…`); `Last-Event-ID` takes precedence on reconnects.
    cursors: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/events`: the live stream as Server-Sent Events. Each event's data is one frame
/// exactly as on the WebSocket; entry events carry the cursor map as their id.
#[utoipa::path(
    get, path = "/v1/events", tag = "live",
    security(("bearer" = []), ("ticket" = [])),
    params(EventsQuery),
    responses((status = 200, description = "the live stream as Server-Sent Events", body = String, content_type = "text/event-stream"))
)]
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
    let opened = session::open(&state, auth.principal, "sse")?;
    session::recheck(&state, &opened.handle, auth.token_hash).await;
    let sse = SseStream {
        deliverer: Deliverer::new(state.clone(), auth.principal.user_id, opened.registered, "sse"),
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
    rx: SessionQueue,
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
            if let Some(first) = self.rx.try_recv() {
                self.deliverer.process(first, &mut out).await;
            }
            match self.deliverer.sync(&cursors, self.limit).await {
                Ok(reply) => {
                    let replied: HashSet<ConversationId> =
                        reply.conversations.iter().map(|c| c.conversation.id).collect();
                    // Conversations with nothing new are caught up where the server says.
                    for (conv, upto) in self.deliverer.cursors() {
                        if !replied.contains(&conv) {
                            self.ids.insert(conv, upto);
                        }
                    }
                    // Cut by its budget: the next step syncs on, from the client's own cursors
                    // for what this one did not reach.
                    if reply.more {
                        self.catch_up = Some(self.deliverer.next_cursors(&cursors));
                    }
                    entry_frames(reply.conversations, &mut out);
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
        // What was taken from the queue is in `pending` now, on its way to the body.
        self.rx.written();
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
