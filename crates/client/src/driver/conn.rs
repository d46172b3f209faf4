//! One WebSocket connection: opening it (token on the upgrade, then `ready`), writing frames,
//! and what the server's close codes mean to the reconnect loop.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use natter_proto::{ClientFrame, DeviceId, NewEntry, ReqId, ServerFrame, UserId, close};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::Sent;
use crate::store::OutboxItem;

pub(super) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why a connection (or the whole driver) stopped.
#[derive(Debug)]
pub(super) enum Stop {
    /// Lost or refused for now: reconnect after the backoff.
    Dropped(String),
    /// The token was refused: stop for good.
    Unauthenticated,
    /// The app closed the client, or dropped every handle.
    Closed,
}

/// What `ready` told about the session.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ready {
    pub(super) user_id: UserId,
    pub(super) device_id: DeviceId,
    pub(super) session_id: Option<u64>,
}

/// One open WebSocket.
pub(super) struct Conn {
    pub(super) sink: SplitSink<Ws, Message>,
    pub(super) stream: SplitStream<Ws>,
    pub(super) ready: Ready,
    /// Requests written on this connection and not answered, by `req_id`.
    pub(super) sent: HashMap<ReqId, Sent>,
    /// The first sync round finished (no `has_more` left): live, and the outbox may go.
    pub(super) caught_up: bool,
    pub(super) opened: Instant,
    pub(super) last_received: Instant,
}

impl Conn {
    pub(super) async fn send(&mut self, frame: &ClientFrame) -> Result<(), Stop> {
        let text = serde_json::to_string(frame).expect("client frames always serialize");
        self.sink
            .feed(Message::text(text))
            .await
            .map_err(|err| Stop::Dropped(format!("write failed: {err}")))
    }

    pub(super) async fn flush(&mut self) -> Result<(), Stop> {
        self.sink.flush().await.map_err(|err| Stop::Dropped(format!("write failed: {err}")))
    }
}

/// Opens the WebSocket with the token on the upgrade and waits for `ready`.
pub(super) async fn connect(
    url: String,
    token: String,
    timeout: Duration,
) -> Result<(Ws, Ready), Stop> {
    let open = async {
        let mut req = url
            .into_client_request()
            .map_err(|err| Stop::Dropped(format!("bad websocket url: {err}")))?;
        let auth =
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| Stop::Unauthenticated)?;
        req.headers_mut().insert("authorization", auth);
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.map_err(|err| match err {
            tungstenite::Error::Http(res) if res.status() == 401 => Stop::Unauthenticated,
            err => Stop::Dropped(format!("connect failed: {err}")),
        })?;
        loop {
            let text = match ws.next().await {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(frame))) => return Err(closed_by_server(frame)),
                Some(Ok(_)) => continue,
                Some(Err(err)) => return Err(Stop::Dropped(format!("read failed: {err}"))),
                None => return Err(Stop::Dropped("closed before ready".into())),
            };
            return match serde_json::from_str::<ServerFrame>(&text) {
                Ok(ServerFrame::Ready { user_id, device_id, session_id }) => {
                    Ok((ws, Ready { user_id, device_id, session_id }))
                }
                Ok(ServerFrame::Error { error, .. })
                    if error.code == natter_proto::ErrorCode::Unauthenticated =>
                {
                    Err(Stop::Unauthenticated)
                }
                _ => Err(Stop::Dropped(format!("expected ready, got {text}"))),
            };
        }
    };
    match tokio::time::timeout(timeout, open).await {
        Ok(res) => res,
        Err(_) => Err(Stop::Dropped("connect timed out".into())),
    }
}

pub(super) fn closed_by_server(frame: Option<CloseFrame>) -> Stop {
    match frame {
        Some(f) if u16::from(f.code) == close::UNAUTHENTICATED => Stop::Unauthenticated,
        Some(f) => {
            Stop::Dropped(format!("closed by the server: {} {}", u16::from(f.code), f.reason))
        }
        None => Stop::Dropped("closed by the server".into()),
    }
}

/// `http://host:port/prefix` → `ws://host:port/prefix/v1/ws`.
pub(super) fn ws_url(base_url: &str) -> String {
    let base = base_url.trim_end_matches('/');
    let rest = base.strip_prefix("http").unwrap_or(base);
    format!("ws{rest}/v1/ws")
}

pub(super) fn append_frame(req_id: ReqId, item: OutboxItem) -> ClientFrame {
    let OutboxItem { client_msg_id, conversation, entry } = item;
    match entry {
        NewEntry::Message { body, reply_to, attachments, mentions } => ClientFrame::Send {
            req_id,
            conversation,
            client_msg_id,
            body,
            reply_to,
            attachments,
            mentions,
        },
        NewEntry::Edit { target, body } => {
            ClientFrame::Edit { req_id, conversation, client_msg_id, target, body }
        }
        NewEntry::Delete { target } => {
            ClientFrame::Delete { req_id, conversation, client_msg_id, target }
        }
        NewEntry::Reaction { target, emoji, remove } => {
            ClientFrame::React { req_id, conversation, client_msg_id, target, emoji, remove }
        }
    }
}

pub(super) fn frame_req_id(frame: &ClientFrame) -> Option<ReqId> {
    match frame {
        ClientFrame::History { req_id, .. } | ClientFrame::SubscribePresence { req_id, .. } => {
            Some(*req_id)
        }
        ClientFrame::SetStatus { req_id, .. } => *req_id,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_url_follows_the_base_url() {
        assert_eq!(ws_url("http://127.0.0.1:8080"), "ws://127.0.0.1:8080/v1/ws");
        assert_eq!(ws_url("http://h:1/chat/"), "ws://h:1/chat/v1/ws");
        assert_eq!(ws_url("https://h"), "wss://h/v1/ws");
    }
}
