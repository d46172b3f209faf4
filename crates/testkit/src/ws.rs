//! [`WsClient`]: a raw WebSocket client (tokio-tungstenite) speaking Natter frames, with no
//! SDK in between, so a test sees exactly what the server sent. Frames read while waiting
//! for something else are kept and returned first by the next read.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use natter_proto::SyncConversation;
use natter_proto::{Ack, ClientFrame, ConversationId, Entry, ReqId, Seq, ServerFrame};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::fixtures::TestUser;
use crate::http::Endpoint;
use crate::wait::{WAIT, within};

impl Endpoint {
    /// A WebSocket authenticated by header, after its `ready` frame.
    pub async fn ws(&self, user: &TestUser) -> WsClient {
        self.ws_token(&user.token).await
    }

    /// A WebSocket authenticated by header with `token`, after its `ready` frame.
    pub async fn ws_token(&self, token: &str) -> WsClient {
        WsClient::open(self.addr, token).await
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
    /// Completes the WebSocket handshake of `req` (nothing read yet).
    pub async fn connect(req: tungstenite::handshake::client::Request) -> anyhow::Result<WsClient> {
        let (ws, _) = within("a ws handshake", tokio_tungstenite::connect_async(req)).await?;
        Ok(WsClient { ws, next_req: 1, stash: VecDeque::new() })
    }

    /// Connects to the node at `addr` with `token` in the upgrade's Authorization header and
    /// waits for `ready`.
    pub async fn open(addr: SocketAddr, token: &str) -> WsClient {
        let mut req = format!("ws://{addr}/v1/ws").into_client_request().expect("ws request");
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().expect("header"));
        let mut client =
            WsClient::connect(req).await.unwrap_or_else(|e| panic!("ws connect to {addr}: {e}"));
        match client.next().await {
            ServerFrame::Ready { .. } => client,
            other => panic!("expected ready, got {other:?}"),
        }
    }

    /// A fresh `req_id`.
    pub fn req_id(&mut self) -> ReqId {
        self.next_req += 1;
        self.next_req
    }

    pub async fn send_frame(&mut self, frame: &ClientFrame) {
        let text = serde_json::to_string(frame).expect("frame serializes");
        self.send_text(&text).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        within("a ws send", self.ws.send(Message::Text(text.into()))).await.expect("ws send");
    }

    pub async fn send_raw(&mut self, msg: Message) -> Result<(), tungstenite::Error> {
        within("a ws send", self.ws.send(msg)).await
    }

    /// The next frame within `wait` (kept frames first): `Ok(None)` if none came,
    /// `Err(close code)` once the connection ended (the code of the server's close frame,
    /// if it sent one).
    pub async fn read_within(
        &mut self,
        wait: Duration,
    ) -> Result<Option<ServerFrame>, Option<u16>> {
        if let Some(frame) = self.stash.pop_front() {
            return Ok(Some(frame));
        }
        // One deadline for the whole wait: pings and pongs must not restart it.
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let Ok(msg) = tokio::time::timeout_at(deadline, self.ws.next()).await else {
                return Ok(None);
            };
            match msg {
                Some(Ok(Message::Text(text))) => {
                    return Ok(Some(serde_json::from_str(&text).unwrap_or_else(|e| {
                        panic!("server sent a frame the proto cannot parse ({e}): {text}")
                    })));
                }
                Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    /// The next frame, or `None` on close or when `wait` passes.
    pub async fn next_within(&mut self, wait: Duration) -> Option<ServerFrame> {
        self.read_within(wait).await.ok().flatten()
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

    /// Sends a request built with a fresh `req_id` and returns its reply (an error frame
    /// with that `req_id` included).
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
                attachments: Vec::new(),
                mentions: Vec::new(),
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
                attachments: Vec::new(),
                mentions: Vec::new(),
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
        let _ = within("a ws close", self.ws.close(None)).await;
    }

    /// The underlying stream, for a test that drives it itself (e.g. split into a sink and
    /// a stream to pipeline); no frame may be kept unread.
    pub fn into_inner(self) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
        assert!(self.stash.is_empty(), "frames kept unread: {:?}", self.stash);
        self.ws
    }

    /// Drops the TCP connection without a WebSocket close.
    pub fn abort(self) {
        drop(self);
    }
}

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
