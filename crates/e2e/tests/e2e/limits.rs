//! G7 (bounded) at the connection level, over raw sockets against a real node with small
//! caps: sockets that send headers or bodies too slowly (slowloris), or nothing at all, are
//! closed after their read timeout while real requests go on; connections over the node's
//! cap or over one address's cap are closed as soon as they are accepted, and real requests
//! get in again once others close; a user's sessions are capped on every transport (close
//! 4029 or 429, other users unaffected); a token's long-poll streams are capped (the least
//! recently polled one makes room), so polling without a stream id cannot pile up sessions.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use natter_proto::rest::PollRequest;
use natter_proto::{ClientFrame, ErrorCode, ServerFrame, close};
use natter_testkit::{TestServer, TestUser, WAIT, WsClient};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The read timeouts the tests configure: short, so a test waits for the close, not for time.
const TIMEOUT_MS: u64 = 300;
/// How late after its timeout a close may come on a loaded machine.
const MARGIN: Duration = Duration::from_secs(3);

/// Reads until the server ends the connection (EOF or reset); returns what it sent and how
/// long that took. Panics if it stays open for [`WAIT`].
async fn read_until_closed(sock: &mut TcpStream) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(start + WAIT, sock.read(&mut buf)).await {
            Err(_) => panic!(
                "the server did not close the connection within {WAIT:?}; it sent {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, start.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// One `GET /healthz` on an open socket (keep-alive); the response's status line.
async fn get_healthz_on(sock: &mut TcpStream) -> String {
    sock.write_all(b"GET /healthz HTTP/1.1\r\nHost: natter\r\n\r\n").await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    // The body is `ok`: the response is complete when it ends the buffer.
    while !got.ends_with(b"\r\n\r\nok") {
        let n = tokio::time::timeout(WAIT, sock.read(&mut buf))
            .await
            .expect("healthz answer timed out")
            .expect("read");
        assert!(n > 0, "connection closed before the answer: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    text.lines().next().unwrap_or_default().to_owned()
}

/// `GET /healthz` on a new connection (no pooled one); `None` if the connection failed.
async fn healthz(addr: SocketAddr) -> Option<StatusCode> {
    let client =
        reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("reqwest client");
    let res = tokio::time::timeout(WAIT, client.get(format!("http://{addr}/healthz")).send())
        .await
        .expect("healthz timed out");
    res.ok().map(|r| r.status())
}

/// Waits until a new connection gets `/healthz` answered (others must close first).
async fn healthz_gets_in(addr: SocketAddr) {
    let deadline = Instant::now() + WAIT;
    let mut retry = tokio::time::interval(Duration::from_millis(20));
    loop {
        retry.tick().await;
        if healthz(addr).await == Some(StatusCode::OK) {
            return;
        }
        assert!(Instant::now() < deadline, "no request got in within {WAIT:?}");
    }
}

/// A connection to `addr` from the local address `from`.
async fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().expect("socket");
    sock.bind(format!("{from}:0").parse().expect("address")).expect("bind");
    sock.connect(addr).await.expect("connect")
}

#[tokio::test]
async fn slowloris_headers_are_cut_off_at_the_header_timeout() {
    let server = TestServer::start_with(|cfg| cfg.limits.http_header_timeout_ms = TIMEOUT_MS).await;
    let mut sock = TcpStream::connect(server.addr).await.expect("connect");
    let start = Instant::now();
    sock.write_all(b"GET /healthz HTTP/1.1\r\nHost: natter\r\nX-Drip: ").await.expect("write");
    // One header byte every 50 ms, never the end of the headers; the read sees the close.
    let mut drip = tokio::time::interval(Duration::from_millis(50));
    let mut buf = [0u8; 256];
    let mut real_request_done = false;
    let got = loop {
        tokio::select! {
            _ = drip.tick() => {
                if sock.write_all(b"a").await.is_err() {
                    break 0;
                }
            }
            read = sock.read(&mut buf) => break read.unwrap_or(0),
        }
        // Meanwhile a real request is served as usual.
        if !real_request_done {
            assert_eq!(healthz(server.addr).await, Some(StatusCode::OK));
            real_request_done = true;
        }
        assert!(start.elapsed() < WAIT, "the dripping socket is still open after {WAIT:?}");
    };
    let elapsed = start.elapsed();
    assert_eq!(got, 0, "a cut-off request gets no answer: {:?}", &buf[..got]);
    assert!(real_request_done);
    let timeout = Duration::from_millis(TIMEOUT_MS);
    assert!(elapsed >= timeout, "closed after {elapsed:?}, before the header timeout");
    assert!(elapsed < timeout + MARGIN, "closed only after {elapsed:?}");
    assert_eq!(healthz(server.addr).await, Some(StatusCode::OK));
    server.stop().await;
}

#[tokio::test]
async fn silent_and_idle_keep_alive_connections_are_closed() {
    let server = TestServer::start_with(|cfg| cfg.limits.http_header_timeout_ms = TIMEOUT_MS).await;
    let timeout = Duration::from_millis(TIMEOUT_MS);

    // Connected, never a byte.
    let mut silent = TcpStream::connect(server.addr).await.expect("connect");
    let (got, elapsed) = read_until_closed(&mut silent).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert!(elapsed < timeout + MARGIN, "a silent connection lived {elapsed:?}");

    // One request answered, then nothing: the keep-alive connection ends as well.
    let mut kept = TcpStream::connect(server.addr).await.expect("connect");
    assert_eq!(get_healthz_on(&mut kept).await, "HTTP/1.1 200 OK");
    let (got, elapsed) = read_until_closed(&mut kept).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert!(elapsed < timeout + MARGIN, "an idle keep-alive connection lived {elapsed:?}");
    server.stop().await;
}

#[tokio::test]
async fn bodies_that_never_arrive_get_408_and_the_connection_ends() {
    let server = TestServer::start_with(|cfg| cfg.limits.http_body_timeout_ms = TIMEOUT_MS).await;
    let timeout = Duration::from_millis(TIMEOUT_MS);

    // 10 bytes of a promised 100.
    let mut short = TcpStream::connect(server.addr).await.expect("connect");
    let head = "POST /v1/sessions HTTP/1.1\r\nHost: natter\r\nContent-Type: application/json\r\n\
                Content-Length: 100\r\n\r\n{\"handle\":";
    short.write_all(head.as_bytes()).await.expect("write");
    let (got, elapsed) = read_until_closed(&mut short).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains(r#""code":"request_timeout""#), "{text}");
    assert!(elapsed >= timeout && elapsed < timeout + MARGIN, "answered after {elapsed:?}");

    // `Expect: 100-continue`, then no body at all.
    let mut expect = TcpStream::connect(server.addr).await.expect("connect");
    let head = "POST /v1/sessions HTTP/1.1\r\nHost: natter\r\nContent-Type: application/json\r\n\
                Content-Length: 50\r\nExpect: 100-continue\r\n\r\n";
    expect.write_all(head.as_bytes()).await.expect("write");
    let (got, elapsed) = read_until_closed(&mut expect).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 408"), "{text}");
    assert!(elapsed < timeout + MARGIN, "answered after {elapsed:?}");

    assert_eq!(healthz(server.addr).await, Some(StatusCode::OK));
    server.stop().await;
}

#[tokio::test]
async fn connections_over_the_node_cap_are_closed_at_once() {
    const CAP: usize = 6;
    let server = TestServer::start_with(|cfg| cfg.limits.max_connections = CAP).await;
    let mut held = Vec::new();
    for _ in 0..CAP {
        held.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    // The server accepts in connection order, so these are the ones over the cap.
    for _ in 0..3 {
        let mut extra = TcpStream::connect(server.addr).await.expect("the kernel accepts");
        let (got, _) = read_until_closed(&mut extra).await;
        assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    }
    assert_eq!(healthz(server.addr).await, None, "a new connection over the cap is refused");
    // The admitted ones are served.
    assert_eq!(get_healthz_on(&mut held[0]).await, "HTTP/1.1 200 OK");
    held.truncate(CAP - 2);
    healthz_gets_in(server.addr).await;
    drop(held);
    server.stop().await;
}

#[tokio::test]
async fn connections_over_one_address_cap_are_closed_but_other_addresses_get_in() {
    const CAP: usize = 3;
    let server = TestServer::start_with(|cfg| cfg.limits.max_connections_per_ip = CAP).await;
    let mut held = Vec::new();
    for _ in 0..CAP {
        held.push(connect_from("127.0.0.1", server.addr).await);
    }
    let mut extra = connect_from("127.0.0.1", server.addr).await;
    let (got, _) = read_until_closed(&mut extra).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));

    // Another client address is not affected.
    let mut other = connect_from("127.0.0.2", server.addr).await;
    assert_eq!(get_healthz_on(&mut other).await, "HTTP/1.1 200 OK");
    assert_eq!(get_healthz_on(&mut held[0]).await, "HTTP/1.1 200 OK");

    held.pop();
    healthz_gets_in(server.addr).await;
    drop(held);
    server.stop().await;
}

/// A WebSocket of `token` (by header, or by a first `auth` frame) up to its first frame.
async fn ws_first_frame(
    server: &TestServer,
    token: &str,
    by_header: bool,
) -> (WsClient, ServerFrame) {
    let mut req = server.ws_url().into_client_request().expect("ws request");
    if by_header {
        let value = format!("Bearer {token}").parse().expect("header");
        req.headers_mut().insert("authorization", value);
    }
    let mut ws = WsClient::connect(req).await.expect("ws connects");
    if !by_header {
        ws.send_frame(&ClientFrame::Auth { token: token.to_owned() }).await;
    }
    let first = ws.next().await;
    (ws, first)
}

/// The refusal of a session over the cap: `too_many_requests`, then close 4029.
async fn assert_refused(mut ws: WsClient, first: ServerFrame) {
    match first {
        ServerFrame::Error { req_id: None, error } => {
            assert_eq!(error.code, ErrorCode::TooManyRequests, "{error:?}")
        }
        other => panic!("expected a too_many_requests error, got {other:?}"),
    }
    let frame = ws.closed().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), close::TOO_MANY_SESSIONS);
}

async fn poll_new_stream(server: &TestServer, token: &str) -> (StatusCode, Value) {
    let body =
        PollRequest { stream: None, cursors: BTreeMap::new(), timeout_ms: Some(0), limit: None };
    server.call(Method::POST, "/v1/poll", Some(token), Some(&body)).await
}

#[tokio::test]
async fn sessions_per_user_are_capped_on_every_transport() {
    let server = TestServer::start_with(|cfg| cfg.limits.max_sessions_per_user = 3).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let mut ws1 = server.ws(&alice).await;
    let _ws2 = server.ws(&alice).await;
    let _sse = server.sse(&alice, None, None).await;

    // A fourth session, on any transport and with any device's token, is refused.
    let (ws, first) = ws_first_frame(&server, &alice.token, true).await;
    assert_refused(ws, first).await;
    let (ws, first) = ws_first_frame(&server, &alice.token, false).await;
    assert_refused(ws, first).await;
    let other_device = server.login("alice").await;
    let (ws, first) = ws_first_frame(&server, &other_device, true).await;
    assert_refused(ws, first).await;
    let res = server.http.get(server.url("/v1/events")).bearer_auth(&alice.token).send().await;
    let res = res.expect("SSE request");
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let json: Value = res.json().await.expect("error body");
    assert_eq!(json["code"], "too_many_requests", "{json}");
    let (status, json) = poll_new_stream(&server, &alice.token).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{json}");
    assert_eq!(json["code"], "too_many_requests", "{json}");

    // Another user is not affected, and alice's live sessions still work.
    let mut bob_ws = server.ws(&bob).await;
    let conv = server.create_direct(&alice, &bob).await;
    ws1.sync(BTreeMap::new()).await;
    bob_ws.sync(BTreeMap::new()).await;
    bob_ws.send_msg(conv, "b1", "hi").await;
    assert_eq!(ws1.next_entry().await.seq, 2);

    // Once one of alice's sessions ends, a new one gets in.
    ws1.close().await;
    let deadline = Instant::now() + WAIT;
    let mut retry = tokio::time::interval(Duration::from_millis(20));
    loop {
        retry.tick().await;
        match ws_first_frame(&server, &alice.token, true).await {
            (_, ServerFrame::Ready { user_id, .. }) => {
                assert_eq!(user_id, alice.id);
                break;
            }
            (ws, first) => assert_refused(ws, first).await,
        }
        assert!(Instant::now() < deadline, "no session got in after one closed");
    }
    server.stop().await;
}

#[tokio::test]
async fn long_poll_streams_per_token_are_capped() {
    const CAP: usize = 3;
    let server = TestServer::start_with(|cfg| {
        cfg.limits.max_poll_streams_per_token = CAP;
        cfg.limits.max_sessions_per_user = 4;
    })
    .await;
    let alice = server.user("alice").await;
    let cursors = BTreeMap::new();

    // Polls without a stream id, each opening a stream that would live 30 s.
    let mut ids = Vec::new();
    for _ in 0..40 {
        let res = server.poll(&alice, None, &cursors, Some(0), None).await;
        assert!(matches!(res.events.first(), Some(ServerFrame::Ready { .. })), "{res:?}");
        ids.push(res.stream);
    }
    // Only the newest CAP are alive: polling one of them keeps it ...
    for id in &ids[ids.len() - CAP..] {
        let res = server.poll(&alice, Some(*id), &cursors, Some(0), None).await;
        assert_eq!(res.stream, *id, "a recent stream is kept");
    }
    // ... and an older one was ended to make room (polling it opens a new stream).
    let res = server.poll(&alice, Some(ids[0]), &cursors, Some(0), None).await;
    assert_ne!(res.stream, ids[0], "the oldest stream was ended");
    assert!(!ids.contains(&res.stream));

    // Per user: another device's streams count among alice's sessions (4 here).
    let token = server.login("alice").await;
    let device = TestUser { token: token.clone(), ..alice.clone() };
    server.poll(&device, None, &cursors, Some(0), None).await;
    let (status, json) = poll_new_stream(&server, &token).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{json}");
    assert_eq!(json["code"], "too_many_requests", "{json}");
    server.stop().await;
}
