//! End-to-end harness: a real Natter node on `127.0.0.1:0` with its own temporary data
//! directory, real WebSocket clients (tokio-tungstenite) and a real HTTP client (reqwest).
//!
//! Every wait has a generous timeout and panics with what it was waiting for; nothing here
//! sleeps to let time pass.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use natter_proto::rest::{
    CreateConversation, Credentials, PollRequest, PollResponse, PostEntry, Session, User,
};
use natter_proto::{
    Ack, ClientFrame, ConversationId, ConversationSummary, Entry, NewEntry, ReqId, Seq,
    ServerFrame, SyncConversation, UserId,
};
use natter_server::{Config, Faults, LocalHub, RunningServer};
use reqwest::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

pub const PASSWORD: &str = "correct horse battery";

/// A running node and what it needs to be reached.
pub struct TestServer {
    server: Option<RunningServer>,
    pub addr: SocketAddr,
    /// Shared by the nodes of a [`TestCluster`].
    pub data_dir: Arc<tempfile::TempDir>,
    pub http: reqwest::Client,
}

/// Nodes of one process on one in-process bus (with faults, if asked), sharing one data
/// directory and so one SQLite store: what a cluster on PostgreSQL and Redis does, in
/// process and fast enough to repeat over many seeds.
pub struct TestCluster {
    pub hub: LocalHub,
    pub nodes: Vec<TestServer>,
}

impl TestCluster {
    /// `n` nodes named `node-0`.. on a hub with `faults`; `tweak` adjusts each node's
    /// configuration (it starts with a 100 ms heartbeat, so catch-ups come quickly).
    pub async fn start(n: usize, faults: Faults, tweak: impl Fn(&mut Config)) -> TestCluster {
        let hub = LocalHub::with_faults(faults);
        let data_dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let mut cfg = Config {
                listen: "127.0.0.1:0".parse().expect("addr"),
                data_dir: data_dir.path().to_path_buf(),
                node_id: Some(format!("node-{i}")),
                ..Config::default()
            };
            cfg.limits.heartbeat_ms = 100;
            cfg.limits.registry_ttl_ms = 1_000;
            tweak(&mut cfg);
            let server = natter_server::start_on_hub(cfg, &hub).await.expect("node starts");
            nodes.push(TestServer::wrap(server, data_dir.clone()));
        }
        TestCluster { hub, nodes }
    }

    /// Stops every node gracefully.
    pub async fn stop(self) {
        for node in self.nodes {
            node.stop().await;
        }
    }
}

/// A registered, logged-in user.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: UserId,
    pub handle: String,
    pub token: String,
}

impl TestServer {
    /// A node with the default configuration.
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// A node whose configuration `tweak` adjusts (caps, timeouts).
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut cfg = Config {
            listen: "127.0.0.1:0".parse().expect("addr"),
            data_dir: data_dir.path().to_path_buf(),
            ..Config::default()
        };
        tweak(&mut cfg);
        let server = natter_server::start(cfg).await.expect("server starts");
        TestServer::wrap(server, Arc::new(data_dir))
    }

    fn wrap(server: RunningServer, data_dir: Arc<tempfile::TempDir>) -> TestServer {
        TestServer {
            addr: server.addr(),
            server: Some(server),
            data_dir,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// Stops the node gracefully.
    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await.expect("clean stop");
        }
    }

    /// A JSON request; returns the status and the parsed body (`Value::Null` when empty).
    pub async fn call<B: Serialize>(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&B>,
    ) -> (StatusCode, serde_json::Value) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let res = tokio::time::timeout(WAIT, req.send())
            .await
            .expect("HTTP request timed out")
            .expect("HTTP request failed");
        let status = res.status();
        let bytes = res.bytes().await.expect("HTTP body");
        let json = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
            })
        };
        (status, json)
    }

    /// A request expected to succeed with `status`, parsed as `R`.
    pub async fn ok<B: Serialize, R: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&B>,
        status: StatusCode,
    ) -> R {
        let (got, json) = self.call(method, path, Some(token), body).await;
        assert_eq!(got, status, "{path}: {json}");
        serde_json::from_value(json).expect("response body parses")
    }

    /// Registers `handle` and logs in one device.
    pub async fn user(&self, handle: &str) -> TestUser {
        let creds =
            Credentials { handle: handle.to_owned(), password: PASSWORD.to_owned(), device: None };
        let (status, json) =
            self.call(reqwest::Method::POST, "/v1/accounts", None, Some(&creds)).await;
        assert_eq!(status, StatusCode::CREATED, "register {handle}: {json}");
        let user: User = serde_json::from_value(json).expect("user");
        let token = self.login(handle).await;
        TestUser { id: user.user_id, handle: handle.to_owned(), token }
    }

    /// Logs in another device of an existing user; returns its token.
    pub async fn login(&self, handle: &str) -> String {
        let creds = Credentials {
            handle: handle.to_owned(),
            password: PASSWORD.to_owned(),
            device: Some("test".to_owned()),
        };
        let (status, json) =
            self.call(reqwest::Method::POST, "/v1/sessions", None, Some(&creds)).await;
        assert_eq!(status, StatusCode::CREATED, "login {handle}: {json}");
        let session: Session = serde_json::from_value(json).expect("session");
        session.token
    }

    pub async fn create_direct(&self, a: &TestUser, b: &TestUser) -> ConversationId {
        let body = CreateConversation::Direct { peer: b.id };
        let (status, json) = self
            .call(reqwest::Method::POST, "/v1/conversations", Some(&a.token), Some(&body))
            .await;
        assert!(status.is_success(), "create direct: {json}");
        serde_json::from_value::<ConversationSummary>(json).expect("summary").id
    }

    pub async fn create_group(
        &self,
        owner: &TestUser,
        title: &str,
        members: &[&TestUser],
    ) -> ConversationId {
        let body = CreateConversation::Group {
            title: title.to_owned(),
            members: members.iter().map(|m| m.id).collect(),
        };
        let summary: ConversationSummary = self
            .ok(
                reqwest::Method::POST,
                "/v1/conversations",
                &owner.token,
                Some(&body),
                StatusCode::CREATED,
            )
            .await;
        summary.id
    }

    /// Appends over REST; returns the status and body.
    pub async fn post_entry(
        &self,
        user: &TestUser,
        conv: ConversationId,
        client_msg_id: &str,
        entry: NewEntry,
    ) -> (StatusCode, serde_json::Value) {
        let body = PostEntry { client_msg_id: client_msg_id.to_owned(), entry };
        let path = format!("/v1/conversations/{conv}/entries");
        self.call(reqwest::Method::POST, &path, Some(&user.token), Some(&body)).await
    }

    /// Sends a message over REST and returns its ack.
    pub async fn send_rest(
        &self,
        user: &TestUser,
        conv: ConversationId,
        client_msg_id: &str,
        body: &str,
    ) -> Ack {
        let entry = NewEntry::Message { body: body.to_owned(), reply_to: None };
        let (status, json) = self.post_entry(user, conv, client_msg_id, entry).await;
        assert_eq!(status, StatusCode::CREATED, "send: {json}");
        serde_json::from_value(json).expect("ack")
    }

    /// Every entry of a conversation through REST history pages of `page` entries, oldest
    /// first, walking forwards with `after`.
    pub async fn all_entries(
        &self,
        user: &TestUser,
        conv: ConversationId,
        page: u32,
    ) -> Vec<Entry> {
        let mut out: Vec<Entry> = Vec::new();
        loop {
            let after = out.last().map_or(0, |e| e.seq);
            let path = format!("/v1/conversations/{conv}/entries?after={after}&limit={page}");
            let res: natter_proto::rest::EntryPage = self
                .ok::<(), _>(reqwest::Method::GET, &path, &user.token, None, StatusCode::OK)
                .await;
            out.extend(res.entries);
            if !res.has_more {
                return out;
            }
        }
    }

    /// The value of the Prometheus sample `natter_<name>` on `/metrics` (0 when absent).
    /// Metrics are shared by every server in the process.
    pub async fn metric(&self, name: &str) -> f64 {
        let get = self.http.get(self.url("/metrics")).send();
        let res = tokio::time::timeout(WAIT, get).await.expect("metrics in time");
        let text = res.expect("GET /metrics").text().await.expect("metrics text");
        let prefix = format!("natter_{name} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map_or(0.0, |v| v.trim().parse().expect("a number"))
    }

    /// A WebSocket authenticated by header, after its `ready` frame.
    pub async fn ws(&self, user: &TestUser) -> WsClient {
        self.ws_token(&user.token).await
    }

    pub async fn ws_token(&self, token: &str) -> WsClient {
        let mut req = self.ws_url().into_client_request().expect("ws request");
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().expect("header"));
        let mut client = WsClient::connect(req).await.expect("ws connects");
        match client.next().await {
            ServerFrame::Ready { .. } => client,
            other => panic!("expected ready, got {other:?}"),
        }
    }

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

    /// One long-poll request (`POST /v1/poll`); panics unless it answers 200. The HTTP wait
    /// is the poll's own timeout plus [`WAIT`].
    pub async fn poll(
        &self,
        user: &TestUser,
        stream: Option<u64>,
        cursors: &BTreeMap<ConversationId, Seq>,
        timeout_ms: Option<u64>,
        limit: Option<u32>,
    ) -> PollResponse {
        let body = PollRequest { stream, cursors: cursors.clone(), timeout_ms, limit };
        let wait = WAIT + Duration::from_millis(timeout_ms.unwrap_or(0));
        let req = self.http.post(self.url("/v1/poll")).bearer_auth(&user.token).json(&body);
        let res = tokio::time::timeout(wait, req.send())
            .await
            .expect("poll timed out")
            .expect("poll failed");
        let status = res.status();
        let bytes = res.bytes().await.expect("poll body");
        assert_eq!(status, StatusCode::OK, "poll: {}", String::from_utf8_lossy(&bytes));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!("poll response does not parse ({e}): {}", String::from_utf8_lossy(&bytes))
        })
    }

    /// A WebSocket with no credentials yet (for `auth` frame and rejection tests).
    pub async fn ws_anonymous(&self) -> WsClient {
        let req = self.ws_url().into_client_request().expect("ws request");
        WsClient::connect(req).await.expect("ws connects")
    }
}

/// A raw WebSocket client speaking Natter frames.
pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_req: ReqId,
    /// Frames read while waiting for something else, returned first by `next`.
    stash: VecDeque<ServerFrame>,
}

impl WsClient {
    pub async fn connect(req: tungstenite::handshake::client::Request) -> anyhow::Result<WsClient> {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .context("ws connect timed out")??;
        Ok(WsClient { ws, next_req: 1, stash: VecDeque::new() })
    }

    pub fn req_id(&mut self) -> ReqId {
        self.next_req += 1;
        self.next_req
    }

    pub async fn send_frame(&mut self, frame: &ClientFrame) {
        let text = serde_json::to_string(frame).expect("frame serializes");
        self.send_text(&text).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::Text(text.into())).await.expect("ws send");
    }

    pub async fn send_raw(&mut self, msg: Message) -> Result<(), tungstenite::Error> {
        self.ws.send(msg).await
    }

    /// The next frame, or `None` on close or when `wait` passes.
    pub async fn next_within(&mut self, wait: Duration) -> Option<ServerFrame> {
        if let Some(frame) = self.stash.pop_front() {
            return Some(frame);
        }
        // One deadline for the whole wait: pings and pongs must not restart it.
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next()).await.ok()??;
            match msg {
                Ok(Message::Text(text)) => {
                    return Some(serde_json::from_str(&text).unwrap_or_else(|e| {
                        panic!("server sent a frame the proto cannot parse ({e}): {text}")
                    }));
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// The frames read while waiting for a reply, in arrival order: they came before it.
    pub fn take_stashed(&mut self) -> Vec<ServerFrame> {
        self.stash.drain(..).collect()
    }

    /// The next frame; panics on timeout or close.
    pub async fn next(&mut self) -> ServerFrame {
        self.next_within(WAIT).await.expect("expected a frame before the timeout or close")
    }

    /// The next frame matching `pred`; frames before it are kept for later `next` calls.
    pub async fn next_matching(
        &mut self,
        mut pred: impl FnMut(&ServerFrame) -> bool,
    ) -> ServerFrame {
        if let Some(i) = self.stash.iter().position(&mut pred) {
            return self.stash.remove(i).expect("index exists");
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut skipped = VecDeque::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = self.read_one(left).await;
            let Some(frame) = frame else {
                panic!("no matching frame before timeout/close; saw {skipped:?}");
            };
            if pred(&frame) {
                self.stash.extend(skipped);
                return frame;
            }
            skipped.push_back(frame);
        }
    }

    async fn read_one(&mut self, wait: Duration) -> Option<ServerFrame> {
        let saved = std::mem::take(&mut self.stash);
        let frame = self.next_within(wait).await;
        self.stash = saved;
        frame
    }

    /// Sends a request built with a fresh `req_id` and returns its reply.
    pub async fn request(&mut self, build: impl FnOnce(ReqId) -> ClientFrame) -> ServerFrame {
        let req_id = self.req_id();
        self.send_frame(&build(req_id)).await;
        self.next_matching(|f| reply_id(f) == Some(req_id)).await
    }

    /// Sends a message and waits for its ack.
    pub async fn send_msg(&mut self, conv: ConversationId, client_msg_id: &str, body: &str) -> Ack {
        let reply = self
            .request(|req_id| ClientFrame::Send {
                req_id,
                conversation: conv,
                client_msg_id: client_msg_id.to_owned(),
                body: body.to_owned(),
                reply_to: None,
            })
            .await;
        match reply {
            ServerFrame::Ack { ack, .. } => ack,
            other => panic!("expected ack, got {other:?}"),
        }
    }

    /// Sends messages `(client_msg_id, body)` to `conv` without waiting between them, then
    /// waits for every ack (in any order). Use a session that has not synced: it receives
    /// no live entries, so nothing but acks comes back.
    pub async fn send_all(
        &mut self,
        conv: ConversationId,
        messages: impl IntoIterator<Item = (String, String)>,
    ) -> Vec<Ack> {
        let mut waiting = std::collections::HashSet::new();
        for (client_msg_id, body) in messages {
            let req_id = self.req_id();
            let frame = ClientFrame::Send {
                req_id,
                conversation: conv,
                client_msg_id,
                body,
                reply_to: None,
            };
            self.send_frame(&frame).await;
            waiting.insert(req_id);
        }
        let mut acks = Vec::new();
        while !waiting.is_empty() {
            match self.next().await {
                ServerFrame::Ack { req_id, ack } if waiting.remove(&req_id) => acks.push(ack),
                other => panic!("expected acks, got {other:?}"),
            }
        }
        acks
    }

    /// One `sync` request: the reply's conversations, whether it says `more`, and the length
    /// of its JSON (the proto writes exactly what the server wrote).
    pub async fn sync_page(
        &mut self,
        cursors: BTreeMap<ConversationId, Seq>,
    ) -> (Vec<SyncConversation>, bool, usize) {
        match self.request(|req_id| ClientFrame::Sync { req_id, cursors, limit: None }).await {
            frame @ ServerFrame::Synced { .. } => {
                let size = frame.to_json().len();
                let ServerFrame::Synced { conversations, more, .. } = frame else {
                    unreachable!("matched a synced frame")
                };
                (conversations, more, size)
            }
            other => panic!("expected synced, got {other:?}"),
        }
    }

    /// Syncs with these cursors and returns the reply's conversations.
    pub async fn sync(&mut self, cursors: BTreeMap<ConversationId, Seq>) -> Vec<SyncConversation> {
        self.sync_limit(cursors, None).await
    }

    pub async fn sync_limit(
        &mut self,
        cursors: BTreeMap<ConversationId, Seq>,
        limit: Option<u32>,
    ) -> Vec<SyncConversation> {
        match self.request(|req_id| ClientFrame::Sync { req_id, cursors, limit }).await {
            ServerFrame::Synced { conversations, .. } => conversations,
            other => panic!("expected synced, got {other:?}"),
        }
    }

    /// The next live entry (other frames are kept).
    pub async fn next_entry(&mut self) -> Entry {
        match self.next_matching(|f| matches!(f, ServerFrame::Entry { .. })).await {
            ServerFrame::Entry { entry } => entry,
            _ => unreachable!("matched an entry frame"),
        }
    }

    /// Reads until the server closes; returns its close frame, if any.
    pub async fn closed(&mut self) -> Option<CloseFrame> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("the server did not close the connection"),
                Ok(None) => return None,
                Ok(Some(Ok(Message::Close(frame)))) => return frame,
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_))) => return None,
            }
        }
    }

    /// The next frame, or the server's close code (`None`: the connection ended without a
    /// close frame) when it closes first; panics on timeout.
    pub async fn next_or_close(&mut self) -> Result<ServerFrame, Option<u16>> {
        if let Some(frame) = self.stash.pop_front() {
            return Ok(frame);
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("neither a frame nor a close before the timeout"),
                Ok(Some(Ok(Message::Text(text)))) => {
                    return Ok(serde_json::from_str(&text).unwrap_or_else(|e| {
                        panic!("server sent a frame the proto cannot parse ({e}): {text}")
                    }));
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return Err(frame.map(|f| u16::from(f.code)));
                }
                Ok(Some(Ok(_))) => continue,
                Ok(None) | Ok(Some(Err(_))) => return Err(None),
            }
        }
    }

    /// Closes from the client side.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Drops the TCP connection without a WebSocket close.
    pub fn abort(self) {
        drop(self);
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

pub use natter_proto::encode_cursors;

/// The `req_id` a reply frame echoes.
pub fn reply_id(frame: &ServerFrame) -> Option<ReqId> {
    match frame {
        ServerFrame::Ack { req_id, .. }
        | ServerFrame::Synced { req_id, .. }
        | ServerFrame::History { req_id, .. }
        | ServerFrame::PresenceSubscribed { req_id, .. }
        | ServerFrame::Ok { req_id } => Some(*req_id),
        ServerFrame::Pong { req_id } | ServerFrame::Error { req_id, .. } => *req_id,
        _ => None,
    }
}

/// Checks that `seqs` is exactly `from..=to`, in order.
pub fn assert_contiguous(seqs: &[Seq], from: Seq, to: Seq) -> anyhow::Result<()> {
    let want: Vec<Seq> = (from..=to).collect();
    if seqs != want.as_slice() {
        bail!("expected seq {from}..={to} in order, got {seqs:?}");
    }
    Ok(())
}
