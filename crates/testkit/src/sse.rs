//! [`SseClient`]: a Server-Sent Events client of `GET /v1/events`, opened by
//! [`Endpoint::sse`], and the cursor encoding its event ids use.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use natter_proto::{ConversationId, Entry, Seq, ServerFrame, encode_cursors};
use reqwest::StatusCode;

use crate::fixtures::TestUser;
use crate::http::Endpoint;
use crate::wait::WAIT;

impl Endpoint {
    /// An SSE stream (`GET /v1/events`) of `user`, starting from `cursors` (the `?cursors=`
    /// query, when given) or from `last_event_id` (the `Last-Event-ID` header, when given).
    /// Panics unless the server answers 200 with `text/event-stream`.
    pub async fn sse(
        &self,
        user: &TestUser,
        cursors: Option<&BTreeMap<ConversationId, Seq>>,
        last_event_id: Option<&str>,
    ) -> SseClient {
        let mut query = Vec::new();
        if let Some(cursors) = cursors {
            query.push(("cursors", encode_cursors(cursors)));
        }
        self.sse_query(&user.token, &query, last_event_id).await
    }

    /// An SSE stream with arbitrary query parameters (`cursors`, `limit`).
    pub async fn sse_query(
        &self,
        token: &str,
        query: &[(&str, String)],
        last_event_id: Option<&str>,
    ) -> SseClient {
        let mut req = self.http.get(self.url("/v1/events")).bearer_auth(token).query(query);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let res = tokio::time::timeout(WAIT, req.send())
            .await
            .expect("SSE connect timed out")
            .expect("SSE connect failed");
        assert_eq!(res.status(), StatusCode::OK, "GET /v1/events");
        let content_type = res
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(content_type.starts_with("text/event-stream"), "content type {content_type:?}");
        SseClient {
            res,
            buf: Vec::new(),
            event: SseEventBuf::default(),
            ready: VecDeque::new(),
            stash: VecDeque::new(),
            last_id: None,
            keep_alives: 0,
            ended: false,
        }
    }
}

/// A Server-Sent Events client of `GET /v1/events`: parses `text/event-stream` incrementally
/// from the response body (`data:` and `id:` fields, `:` comments, events ended by a blank
/// line; `\n` or `\r\n` line ends) into Natter frames.
pub struct SseClient {
    res: reqwest::Response,
    /// Bytes of an incomplete line.
    buf: Vec<u8>,
    /// The event being assembled.
    event: SseEventBuf,
    /// Complete events not yet returned.
    ready: VecDeque<(Option<String>, ServerFrame)>,
    /// Events read while waiting for something else, returned first by `next_event`.
    stash: VecDeque<(Option<String>, ServerFrame)>,
    last_id: Option<String>,
    keep_alives: usize,
    ended: bool,
}

#[derive(Default)]
struct SseEventBuf {
    data: Vec<String>,
    id: Option<String>,
}

impl SseClient {
    /// The next event (its own `id:` field, if it had one, and its frame), or `None` when
    /// the stream ends or `wait` passes.
    pub async fn next_event_within(
        &mut self,
        wait: Duration,
    ) -> Option<(Option<String>, ServerFrame)> {
        if let Some(event) = self.stash.pop_front() {
            return Some(event);
        }
        self.read_one(wait).await
    }

    /// The next event; panics on timeout or end of stream.
    pub async fn next_event(&mut self) -> (Option<String>, ServerFrame) {
        self.next_event_within(WAIT).await.expect("expected an SSE event before the timeout")
    }

    /// The next event whose frame matches `pred`; events before it are kept for later.
    pub async fn next_matching(
        &mut self,
        mut pred: impl FnMut(&ServerFrame) -> bool,
    ) -> (Option<String>, ServerFrame) {
        if let Some(i) = self.stash.iter().position(|(_, f)| pred(f)) {
            return self.stash.remove(i).expect("index exists");
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut skipped = VecDeque::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(event) = self.read_one(left).await else {
                panic!("no matching SSE event before timeout/end; saw {skipped:?}");
            };
            if pred(&event.1) {
                self.stash.extend(skipped);
                return event;
            }
            skipped.push_back(event);
        }
    }

    /// The next `entry` event (other events are kept) and its id; panics if it has none.
    pub async fn next_entry(&mut self) -> (String, Entry) {
        match self.next_matching(|f| matches!(f, ServerFrame::Entry { .. })).await {
            (Some(id), ServerFrame::Entry { entry }) => (id, entry),
            (None, frame) => panic!("entry event without an id: {frame:?}"),
            _ => unreachable!("matched an entry frame"),
        }
    }

    /// The `id:` of the last event that had one (what `Last-Event-ID` resumes from).
    pub fn last_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// How many keep-alive comments (`:` lines) the stream carried so far.
    pub fn keep_alives(&self) -> usize {
        self.keep_alives
    }

    /// Waits until at least one more keep-alive comment arrives; events read meanwhile are
    /// kept for later.
    pub async fn next_keep_alive(&mut self) {
        let want = self.keep_alives + 1;
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.keep_alives < want {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                panic!("no keep-alive comment before the timeout");
            }
            if let Ok(more) = tokio::time::timeout(left, self.fill()).await {
                assert!(more, "the SSE stream ended while waiting for a keep-alive");
            }
            let ready = std::mem::take(&mut self.ready);
            self.stash.extend(ready);
        }
    }

    /// Waits for the server to end the stream; panics if it sends another event first.
    pub async fn ended(&mut self) {
        if let Some(event) = self.read_one(WAIT).await {
            panic!("expected the SSE stream to end, got {event:?}");
        }
        assert!(self.ended, "the SSE stream did not end before the timeout");
    }

    async fn read_one(&mut self, wait: Duration) -> Option<(Option<String>, ServerFrame)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            if self.ended {
                return None;
            }
            // `chunk` yields whole chunks or nothing, so a timeout here loses no bytes.
            let more = tokio::time::timeout_at(deadline, self.fill()).await.ok()?;
            if !more {
                return self.ready.pop_front();
            }
        }
    }

    /// Reads one chunk and parses every complete line in it; false at the end of the body.
    async fn fill(&mut self) -> bool {
        match self.res.chunk().await {
            Ok(Some(chunk)) => {
                self.buf.extend_from_slice(&chunk);
                while let Some(at) = self.buf.iter().position(|b| *b == b'\n') {
                    let mut line: Vec<u8> = self.buf.drain(..=at).collect();
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    let line = String::from_utf8(line).expect("SSE lines are UTF-8");
                    self.line(&line);
                }
                true
            }
            Ok(None) | Err(_) => {
                self.ended = true;
                false
            }
        }
    }

    fn line(&mut self, line: &str) {
        if line.is_empty() {
            let event = std::mem::take(&mut self.event);
            if let Some(id) = &event.id {
                self.last_id = Some(id.clone());
            }
            // An event with no data is not dispatched (the keep-alive's blank line).
            if event.data.is_empty() {
                return;
            }
            let data = event.data.join("\n");
            let frame = serde_json::from_str(&data).unwrap_or_else(|e| {
                panic!("server sent an SSE event the proto cannot parse ({e}): {data}")
            });
            self.ready.push_back((event.id, frame));
            return;
        }
        if line.starts_with(':') {
            self.keep_alives += 1;
            return;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "data" => self.event.data.push(value.to_owned()),
            "id" => self.event.id = Some(value.to_owned()),
            "event" | "retry" => {}
            other => panic!("unexpected SSE field {other:?} in line {line:?}"),
        }
    }
}

/// Parses an SSE event id (`conv:seq,conv:seq`); panics on anything else.
pub fn parse_cursors(text: &str) -> BTreeMap<ConversationId, Seq> {
    natter_proto::parse_cursors(text).unwrap_or_else(|| panic!("bad cursors {text:?}"))
}
