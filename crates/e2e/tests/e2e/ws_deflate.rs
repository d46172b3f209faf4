//! permessage-deflate on the WebSocket (issue 16): negotiated as `ws_compression` says, and a
//! compressed session is an ordinary one — sends are acked, entries arrive, sync pages come —
//! with the server's frames compressed on the wire. The compression bomb and memory are in
//! tests/ws_deflate_memory.rs (a process of its own: it measures the process).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use futures_util::{SinkExt, StreamExt};
use natter_proto::{ClientFrame, ServerFrame};
use natter_testkit::{TestServer, TestUser, within};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// The upgrade's answer: its status code and its `Sec-WebSocket-Extensions`, if any.
async fn handshake(server: &TestServer, query: &str, offer: bool) -> (u16, Option<String>) {
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    let offer = if offer {
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    } else {
        ""
    };
    let request = format!(
        "GET /v1/ws{query} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{offer}\r\n",
        server.addr
    );
    tcp.write_all(request.as_bytes()).await.expect("request");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(within("the answer", tcp.read_u8()).await.expect("a byte"));
    }
    let head = String::from_utf8(head).expect("utf-8");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status");
    let extensions = head.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-extensions").then(|| value.trim().to_owned())
    });
    (status, extensions)
}

const AGREED: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

#[tokio::test]
async fn compression_is_negotiated_as_ws_compression_says() {
    // (setting, query, offer) -> agreed?
    let cases = [
        ("off", "?compress=deflate", true, false),
        ("requested", "", true, false),
        ("requested", "?compress=deflate", true, true),
        ("requested", "?compress=deflate", false, false),
        ("offered", "", true, true),
        ("offered", "", false, false),
    ];
    for (setting, query, offer, agreed) in cases {
        let server = TestServer::start_with(|cfg| cfg.ws_compression = setting.to_owned()).await;
        let (status, extensions) = handshake(&server, query, offer).await;
        assert_eq!(status, 101, "{setting} {query} {offer}");
        let want = agreed.then(|| AGREED.to_owned());
        assert_eq!(extensions, want, "{setting} {query:?} offer: {offer}");
    }
}

/// Counts the bytes that come off the wire.
struct Counted {
    tcp: TcpStream,
    read: Arc<AtomicU64>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.tcp).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.read.fetch_add(n, Ordering::Relaxed);
        res
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

type Deflated = tokio_tungstenite::WebSocketStream<natter_wsdeflate::MaybeDeflate<Counted>>;

/// A session of `user` over permessage-deflate, as the web client opens it, and the count of
/// bytes read off its wire.
async fn deflated(server: &TestServer, user: &TestUser) -> (Deflated, Arc<AtomicU64>) {
    let read = Arc::new(AtomicU64::new(0));
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let auth = format!("Bearer {}", user.token);
    let (ws, _) = within(
        "a compressed upgrade",
        natter_wsdeflate::client::connect(
            Counted { tcp, read: read.clone() },
            &server.addr.to_string(),
            "/v1/ws?compress=deflate",
            &[("Authorization", &auth)],
            // Replies may be larger than the 64 KiB frames the server accepts.
            natter_wsdeflate::DeflateConfig {
                max_message_bytes: 1 << 20,
                ..natter_wsdeflate::DeflateConfig::default()
            },
            None,
        ),
    )
    .await
    .expect("the server agrees");
    (ws, read)
}

/// The next frame that `pred` picks (within one deadline: pings do not extend it), adding
/// the text of every frame read on the way to `text`.
async fn next_where(
    ws: &mut Deflated,
    text: &mut u64,
    mut pred: impl FnMut(&ServerFrame) -> bool,
) -> ServerFrame {
    let read = async {
        loop {
            let msg = ws.next().await.expect("open").expect("a frame");
            if let Message::Text(t) = msg {
                *text += t.len() as u64;
                let frame: ServerFrame = serde_json::from_str(&t).expect("a server frame");
                if pred(&frame) {
                    return frame;
                }
            }
        }
    };
    within("a frame", read).await
}

#[tokio::test]
async fn a_compressed_session_sends_receives_and_syncs() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let conv = server.contacts(&alice, &[&bob]).await[0];
    // History for the sync page below.
    for n in 0..40 {
        server
            .send_rest(
                &bob,
                conv,
                &format!("old-{n}"),
                &format!("an earlier message, number {n}, of a long thread"),
            )
            .await;
    }
    let (mut ws, wire) = deflated(&server, &alice).await;
    let mut text = 0;
    next_where(&mut ws, &mut text, |f| matches!(f, ServerFrame::Ready { .. })).await;

    // A sync page of the history comes compressed (one large frame), and subscribes the
    // session to the live stream.
    let sync = ClientFrame::Sync { req_id: 1, cursors: Default::default(), limit: Some(100) };
    ws.send(Message::Text(serde_json::to_string(&sync).unwrap().into())).await.expect("sync");
    let page = next_where(&mut ws, &mut text, |f| matches!(f, ServerFrame::Synced { .. })).await;
    let ServerFrame::Synced { conversations, .. } = page else { unreachable!() };
    assert_eq!(conversations[0].entries.len(), 41, "created + 40 messages");

    // A send bigger than the compression threshold goes out compressed, and is acked.
    let body = "a message long enough to be compressed on its way up: ".repeat(4);
    let send = ClientFrame::Send {
        req_id: 2,
        conversation: conv,
        client_msg_id: "up-1".into(),
        body: body.clone(),
        reply_to: None,
        attachments: Vec::new(),
        mentions: Vec::new(),
    };
    ws.send(Message::Text(serde_json::to_string(&send).unwrap().into())).await.expect("send");
    let ack = next_where(&mut ws, &mut text, |f| matches!(f, ServerFrame::Ack { .. })).await;
    let ServerFrame::Ack { req_id: 2, ack } = ack else { panic!("{ack:?}") };
    let mut bob_ws = server.ws(&bob).await;
    let synced = bob_ws.sync(Default::default()).await;
    let entry = synced[0].entries.iter().find(|e| e.seq == ack.seq).expect("bob has it");
    assert!(matches!(&entry.body, natter_proto::EntryBody::Message { body: b, .. } if *b == body));

    // Bob's message reaches alice live.
    bob_ws.send_msg(conv, "down-1", "hello alice, over a plain socket").await;
    let live = next_where(
        &mut ws,
        &mut text,
        |f| matches!(f, ServerFrame::Entry { entry } if entry.sender == bob.id),
    )
    .await;
    let ServerFrame::Entry { entry } = live else { unreachable!() };
    assert!(
        matches!(&entry.body, natter_proto::EntryBody::Message { body, .. } if body.starts_with("hello alice"))
    );

    // What came off the wire is much less than the JSON it carried.
    let wire = wire.load(Ordering::Relaxed);
    assert!(wire * 2 < text, "{wire} bytes on the wire for {text} bytes of frames");
    ws.close(None).await.expect("close");
}
