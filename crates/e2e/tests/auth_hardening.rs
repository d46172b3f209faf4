//! Hardening of accounts and sessions, over real sockets against real nodes: logout ends
//! every session of the token at once (on this node and on the others), failed logins back
//! off per handle and per address, one address flooding logins does not hold up another's,
//! an unknown handle costs a login as long as a known one, weak passwords and look-alike
//! handles are refused, `Origin` is compared by scheme, host and port, and `/metrics` wants
//! its token.
//!
//! Clients that must look like different machines bind their sockets to other loopback
//! addresses (127.0.0.2, 127.0.0.3, …): the server sees each as its own client address.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use natter_proto::rest::{Credentials, PollRequest};
use natter_proto::{ClientFrame, ServerFrame, close};
use natter_server::Faults;
use natter_testkit::{METRICS_TOKEN, PASSWORD, TestCluster, TestServer, TestUser, WAIT, WsClient};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Logout's promise: every session of the token ends within this.
const END_WITHIN: Duration = Duration::from_secs(1);

/// Tests that measure password hashing share the process's hashing threads: one at a time.
static HASHING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// An HTTP client whose connections come from `ip` (a loopback address).
fn client_from(ip: &str) -> reqwest::Client {
    let ip: IpAddr = ip.parse().expect("an address");
    reqwest::Client::builder().local_address(ip).build().expect("an HTTP client")
}

fn creds(handle: &str, password: &str) -> Credentials {
    Credentials { handle: handle.to_owned(), password: password.to_owned(), device: None }
}

/// `POST path` with a JSON body from `http`: the status and the body.
async fn post(
    http: &reqwest::Client,
    server: &TestServer,
    path: &str,
    body: &impl serde::Serialize,
) -> (StatusCode, Value) {
    let res = tokio::time::timeout(WAIT, http.post(server.url(path)).json(body).send())
        .await
        .expect("HTTP request timed out")
        .expect("HTTP request failed");
    let status = res.status();
    let bytes = res.bytes().await.expect("HTTP body");
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn logout(server: &TestServer, token: &str) {
    let (status, body) =
        server.call::<()>(Method::DELETE, "/v1/sessions/current", Some(token), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "logout: {body}");
}

/// A WebSocket upgrade with these headers: whether it was accepted, or the refusal's status.
async fn upgrade(server: &TestServer, headers: &[(&str, String)]) -> Result<WsClient, u16> {
    let mut req = server.ws_url().into_client_request().expect("ws request");
    for (name, value) in headers {
        let name: reqwest::header::HeaderName = name.parse().expect("header name");
        req.headers_mut().insert(name, value.parse().expect("header value"));
    }
    match WsClient::connect(req).await {
        Ok(ws) => Ok(ws),
        Err(err) => match err.downcast_ref::<tokio_tungstenite::tungstenite::Error>() {
            Some(tokio_tungstenite::tungstenite::Error::Http(res)) => Err(res.status().as_u16()),
            _ => panic!("upgrade failed without an HTTP answer: {err:#}"),
        },
    }
}

/// A ping answered by a pong: the session is alive.
async fn assert_alive(ws: &mut WsClient) {
    let reply = ws.request(|req_id| ClientFrame::Ping { req_id: Some(req_id) }).await;
    assert!(matches!(reply, ServerFrame::Pong { .. }), "{reply:?}");
}

async fn assert_revoked_close(ws: &mut WsClient, started: Instant) {
    let frame = ws.closed().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), close::UNAUTHENTICATED, "{frame:?}");
    let took = started.elapsed();
    assert!(took < END_WITHIN, "the WebSocket closed {took:?} after the logout");
}

// ---- logout ends the token's sessions ----

/// Before: the WebSocket stayed open and its sends were acked; the SSE stream streamed on.
#[tokio::test]
async fn logout_ends_every_session_of_the_token_on_this_node() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let conv = server.create_direct(&alice, &bob).await;
    let phone = server.login("alice").await;

    let mut ws = server.ws(&alice).await;
    ws.sync(BTreeMap::new()).await;
    let mut sse = server.sse(&alice, None, None).await;
    assert!(matches!(sse.next_event().await.1, ServerFrame::Ready { .. }));
    assert_eq!(sse.next_entry().await.1.conversation, conv, "the catch-up");
    // A long-poll stream of the token, its next poll waiting.
    let opened = server.poll(&alice, None, &BTreeMap::new(), None, None).await;
    let req = PollRequest {
        stream: Some(opened.stream),
        cursors: opened.cursors.clone(),
        timeout_ms: Some(WAIT.as_millis() as u64),
        limit: None,
    };
    let waiting = {
        let (http, url, token) = (server.http.clone(), server.url("/v1/poll"), alice.token.clone());
        tokio::spawn(async move {
            let res = http.post(url).bearer_auth(token).json(&req).send().await.expect("poll");
            res.status()
        })
    };
    let mut other_device = server.ws_token(&phone).await;
    other_device.sync(BTreeMap::new()).await;

    let started = Instant::now();
    logout(&server, &alice.token).await;
    assert_revoked_close(&mut ws, started).await;
    sse.ended().await;
    let polled = tokio::time::timeout(WAIT, waiting).await.expect("the poll returns").unwrap();
    assert_eq!(polled, StatusCode::UNAUTHORIZED, "the waiting poll of the revoked token");
    let took = started.elapsed();
    assert!(took < END_WITHIN, "sessions ended {took:?} after the logout");

    // The token opens nothing any more; the other device's session goes on.
    let bearer = ("authorization", format!("Bearer {}", alice.token));
    assert_eq!(upgrade(&server, &[bearer]).await.err(), Some(401));
    let ack = server.send_rest(&bob, conv, "after-logout", "still there?").await;
    assert_eq!(other_device.next_entry().await.seq, ack.seq);
    assert_alive(&mut other_device).await;
    server.stop().await;
}

/// Before: a session on another node outlived the logout altogether.
#[tokio::test]
async fn logout_on_one_node_ends_the_token_s_sessions_on_the_others() {
    let cluster = TestCluster::start(3, Faults::default(), |_| {}).await;
    let [n0, n1, n2] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let alice = n0.user("alice").await;
    let phone = n1.login("alice").await;
    let mut ws = n1.ws(&alice).await;
    let mut sse = n2.sse(&alice, None, None).await;
    assert!(matches!(sse.next_event().await.1, ServerFrame::Ready { .. }));
    let mut other_device = n1.ws_token(&phone).await;

    let started = Instant::now();
    logout(n0, &alice.token).await;
    assert_revoked_close(&mut ws, started).await;
    sse.ended().await;
    let took = started.elapsed();
    assert!(took < END_WITHIN, "sessions on other nodes ended {took:?} after the logout");
    assert_alive(&mut other_device).await;
    cluster.stop().await;
}

// ---- login limits ----

/// Before: every wrong password was just another 401, at full speed.
#[tokio::test]
async fn failed_logins_back_off_per_handle_and_per_address() {
    let server = TestServer::start().await;
    let carol = server.user("carol").await;
    server.user("dave").await;
    let (guesser, carol_elsewhere) = (client_from("127.0.0.2"), client_from("127.0.0.3"));

    // Five wrong passwords for carol are answered; the sixth backs off.
    for i in 0..5 {
        let (status, body) =
            post(&guesser, &server, "/v1/sessions", &creds("carol", &format!("guess {i}"))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "guess {i}: {body}");
    }
    let (status, body) = post(&guesser, &server, "/v1/sessions", &creds("carol", "guess 5")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["code"], "too_many_requests");
    let wait = body["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!((1..=1_000).contains(&wait), "the first back-off is login_backoff_ms: {wait}");
    // Even the right password, from anywhere (look-alike spellings included), waits.
    for handle in ["carol", "CAROL", "c\u{430}rol"] {
        let (status, _) =
            post(&carol_elsewhere, &server, "/v1/sessions", &creds(handle, PASSWORD)).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{handle}");
    }
    // Other handles are not affected, from the guessing address either.
    let (status, _) = post(&guesser, &server, "/v1/sessions", &creds("dave", PASSWORD)).await;
    assert_eq!(status, StatusCode::CREATED);

    // One address guessing across handles backs off after twenty failures.
    let sprayer = client_from("127.0.0.4");
    for i in 0..20 {
        let login = creds(&format!("nobody{i}"), "a wrong password");
        let (status, body) = post(&sprayer, &server, "/v1/sessions", &login).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "spray {i}: {body}");
    }
    let (status, body) = post(&sprayer, &server, "/v1/sessions", &creds("dave", PASSWORD)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body["retry_after_ms"].as_u64().is_some(), "{body}");
    let (status, _) =
        post(&carol_elsewhere, &server, "/v1/sessions", &creds("dave", PASSWORD)).await;
    assert_eq!(status, StatusCode::CREATED, "another address logs in");
    // carol's sessions from before are untouched.
    assert_alive(&mut server.ws(&carol).await).await;
    server.stop().await;
}

/// Before: all password hashes shared one FIFO, so a real login waited behind the whole
/// flood (~190 of 200 flooding logins finished while it waited).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_flooding_logins_does_not_hold_up_another() {
    let _serial = HASHING.lock().await;
    let server = Arc::new(TestServer::start().await);
    server.user("flooder").await;
    server.user("victim").await;
    let flood = client_from("127.0.0.2");
    let (done, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
    let (first_tx, mut first_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut workers = Vec::new();
    for _ in 0..200 {
        let (server, flood, done, stop) =
            (server.clone(), flood.clone(), done.clone(), stop.clone());
        let first_tx = first_tx.clone();
        workers.push(tokio::spawn(async move {
            let login = creds("flooder", PASSWORD);
            while !stop.load(Ordering::Relaxed) {
                let (status, body) = post(&flood, &server, "/v1/sessions", &login).await;
                match status {
                    StatusCode::CREATED => {
                        done.fetch_add(1, Ordering::Relaxed);
                        let _ = first_tx.try_send(());
                    }
                    // Its share of the queue is full: come back as soon as told.
                    StatusCode::TOO_MANY_REQUESTS => {
                        let ms = body["retry_after_ms"].as_u64().expect("retry_after_ms");
                        tokio::time::sleep(Duration::from_millis(ms.min(50))).await;
                    }
                    other => panic!("flood login: {other} {body}"),
                }
            }
        }));
    }
    drop(first_tx);
    // The flood is being hashed: its requests are queued.
    tokio::time::timeout(WAIT, first_rx.recv()).await.expect("the flood is served");

    let before = done.load(Ordering::Relaxed);
    let started = Instant::now();
    let (status, body) =
        post(&client_from("127.0.0.3"), &server, "/v1/sessions", &creds("victim", PASSWORD)).await;
    let (took, during) = (started.elapsed(), done.load(Ordering::Relaxed) - before);
    assert_eq!(status, StatusCode::CREATED, "the real login: {body}");
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.expect("flood worker");
    }
    eprintln!("the real login took {took:?}; {during} flood logins finished meanwhile");
    let server = Arc::try_unwrap(server).ok().expect("the workers are done");
    server.stop().await;
    // Round robin between the two addresses: at most a hash or two of the flood's per thread
    // before the real one (generously: eight).
    assert!(during <= 8, "{during} flood logins were served while the real one waited");
}

/// Before: an unknown handle answered in 0.3 ms, a known one (a wrong password) in ~20 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_known_handles_cost_a_login_the_same() {
    let _serial = HASHING.lock().await;
    let server = TestServer::start_with(|c| {
        c.limits.login_failures_per_handle = 1_000;
        c.limits.login_failures_per_address = 1_000;
    })
    .await;
    server.user("erin").await;
    let http = client_from("127.0.0.5");
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for i in 0..15 {
        for (handle, times) in [("erin", &mut known), ("nobody-here", &mut unknown)] {
            let started = Instant::now();
            let (status, body) =
                post(&http, &server, "/v1/sessions", &creds(handle, &format!("wrong {i}"))).await;
            times.push(started.elapsed());
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{handle}: {body}");
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (known, unknown) = (median(&mut known), median(&mut unknown));
    eprintln!("median login: known handle {known:?}, unknown handle {unknown:?}");
    assert!(
        unknown * 3 > known && known * 3 > unknown,
        "an unknown handle ({unknown:?}) is told apart from a known one ({known:?}) by time"
    );
    server.stop().await;
}

// ---- passwords and handles ----

/// Before: `password`, eight spaces and the handle itself were accepted, and Cyrillic and
/// fullwidth look-alikes of an existing handle registered.
#[tokio::test]
async fn weak_passwords_and_look_alike_handles_are_refused() {
    let server = TestServer::start().await;
    let register = |handle: &str, password: &str| {
        let body = creds(handle, password);
        let server = &server;
        async move { server.call(Method::POST, "/v1/accounts", None, Some(&body)).await }
    };
    for (handle, password, why) in [
        ("frank", "password", "too common"),
        ("frank", "PASSWORD", "too common"),
        ("frank", "iloveyou", "too common"),
        ("frank", "        ", "too short"),
        ("frankly", "frankly!", "handle"),
        ("frankly", "Frankly!!1", "handle"),
    ] {
        let (status, body) = register(handle, password).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{handle}/{password:?}: {body}");
        assert_eq!(body["code"], "bad_request");
        let message = body["message"].as_str().expect("a message");
        assert!(message.contains(why), "{password:?}: {message}");
    }
    let (status, body) = register("frank", "a long unusual passphrase").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let alice: TestUser = server.user("alice").await;
    for twin in [
        "\u{430}lice",                              // Cyrillic а
        "\u{410}LICE",                              // Cyrillic А, capitals
        "\u{ff41}\u{ff4c}\u{ff49}\u{ff43}\u{ff45}", // fullwidth
        "ALICE",
    ] {
        let (status, body) = register(twin, PASSWORD).await;
        assert_eq!(status, StatusCode::CONFLICT, "{twin}: {body}");
        assert_eq!(body["code"], "conflict");
    }
    // Handles are taken in NFKC: the fullwidth spelling logs alice in.
    let login = creds("\u{ff41}\u{ff4c}\u{ff49}\u{ff43}\u{ff45}", PASSWORD);
    let (status, body) = server.call(Method::POST, "/v1/sessions", None, Some(&login)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["user_id"], alice.id.0);
    server.stop().await;
}

// ---- Origin ----

/// Before: `chrome-extension://<host:port>` (and `https://` for an http server) passed as
/// the server's own origin: only what follows `://` was compared.
#[tokio::test]
async fn websocket_origin_compares_scheme_host_and_port() {
    let server = TestServer::start_with(|c| {
        c.allowed_origins = vec!["https://app.example:8443".to_owned()];
    })
    .await;
    let carol = server.user("carol").await;
    let bearer = || ("authorization", format!("Bearer {}", carol.token));
    let addr = server.addr;
    for origin in [
        format!("chrome-extension://{addr}"),
        format!("https://{addr}"),
        format!("ws://{addr}"),
        format!("http://{}:{}", addr.ip(), addr.port() + 1),
        "http://app.example:8443".to_owned(),
        "https://app.example".to_owned(),
    ] {
        let res = upgrade(&server, &[bearer(), ("origin", origin.clone())]).await;
        assert_eq!(res.err(), Some(403), "{origin} was accepted");
    }
    for origin in [format!("http://{addr}"), "https://app.example:8443".to_owned()] {
        let mut ws = upgrade(&server, &[bearer(), ("origin", origin.clone())])
            .await
            .unwrap_or_else(|status| panic!("{origin}: {status}"));
        assert!(matches!(ws.next().await, ServerFrame::Ready { .. }), "{origin}");
    }
    server.stop().await;

    // Behind a TLS proxy the server's own origin is https.
    let server = TestServer::start_with(|c| c.public_scheme = "https".to_owned()).await;
    let carol = server.user("carol").await;
    let bearer = ("authorization", format!("Bearer {}", carol.token));
    let own = format!("https://{}", server.addr);
    assert!(upgrade(&server, &[bearer.clone(), ("origin", own)]).await.is_ok());
    let plain = format!("http://{}", server.addr);
    assert_eq!(upgrade(&server, &[bearer, ("origin", plain)]).await.err(), Some(403));
    server.stop().await;
}

// ---- /metrics ----

/// Before: anyone could read `/metrics`.
#[tokio::test]
async fn metrics_want_their_token() {
    let server = TestServer::start().await;
    for token in [None, Some("nt_wrong"), Some("natter-test-metrics-tokem")] {
        let (status, body) = server.call::<()>(Method::GET, "/metrics", token, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "token {token:?}: {body}");
    }
    let (status, body) =
        server.call::<()>(Method::GET, "/metrics", Some(METRICS_TOKEN), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.as_str().expect("text").contains("natter_"), "{body}");
    server.stop().await;

    // Without a token configured, /metrics is off.
    let server = TestServer::start_with(|c| c.metrics_token = None).await;
    let (status, body) =
        server.call::<()>(Method::GET, "/metrics", Some(METRICS_TOKEN), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    server.stop().await;
}
