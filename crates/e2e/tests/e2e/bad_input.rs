//! G7 (bounded, bad input) and security: every kind of bad input gets its documented answer
//! and hurts nobody else. Oversized frames close only their own connection (1009); bodies over
//! the cap are `too_large` and store nothing; malformed, unknown and binary frames are errors
//! that leave the session usable; tokens, passwords, handles and `Origin` are checked; a
//! non-member learns nothing about a conversation (`not_found`, exactly as for a missing
//! one); a number out of range is `bad_request` on REST and on the WebSocket alike; a slow
//! consumer is dropped with 4008 without slowing the sender or other readers, and resumes
//! exactly. After each bad case a healthy pair of users still talks live.

use std::collections::BTreeMap;

use natter_proto::rest::{
    AddMember, ConversationPage, Credentials, PostEntry, SetCursors, SyncRequest, SyncResponse,
    UpdateConversation, UpdateMember,
};
use natter_proto::{
    ClientFrame, ConversationId, ConversationSummary, Entry, EntryBody, ErrorBody, ErrorCode,
    NewEntry, ReqId, Role, Seq, ServerFrame, close,
};
use natter_testkit::{PASSWORD, TestServer, TestUser, WsClient, assert_contiguous, within};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

/// Two users with live, synced sessions on a direct conversation: the bystanders that bad
/// input must not disturb.
struct LivePair {
    a: WsClient,
    b: WsClient,
    conv: ConversationId,
    n_checks: u32,
}

impl LivePair {
    async fn new(server: &TestServer) -> LivePair {
        let a_user = server.user("pair_a").await;
        let b_user = server.user("pair_b").await;
        let conv = server.create_direct(&a_user, &b_user).await;
        let mut a = server.ws(&a_user).await;
        let mut b = server.ws(&b_user).await;
        a.sync(BTreeMap::new()).await;
        b.sync(BTreeMap::new()).await;
        let mut pair = LivePair { a, b, conv, n_checks: 0 };
        pair.check().await;
        pair
    }

    /// `a` sends a message; `b` gets it live (and `a` its own copy), with the next seq.
    async fn check(&mut self) {
        self.n_checks += 1;
        let body = format!("still here {}", self.n_checks);
        let ack = self.a.send_msg(self.conv, &format!("pair-{}", self.n_checks), &body).await;
        // seq 1 is `created`; each check appends one message.
        assert_eq!(ack.seq, 1 + Seq::from(self.n_checks), "pair ack");
        for ws in [&mut self.b, &mut self.a] {
            let entry = ws.next_entry().await;
            assert_eq!((entry.conversation, entry.seq), (self.conv, ack.seq));
            assert_eq!(message_body(&entry), body);
        }
    }
}

fn message_body(entry: &Entry) -> &str {
    match &entry.body {
        EntryBody::Message { body, .. } => body,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// The `req_id` and error of an `error` frame.
fn error_frame(frame: ServerFrame) -> (Option<ReqId>, ErrorBody) {
    match frame {
        ServerFrame::Error { req_id, error } => (req_id, error),
        other => panic!("expected an error frame, got {other:?}"),
    }
}

fn assert_code(json: &Value, code: &str) {
    assert_eq!(json["code"], code, "error body: {json}");
    assert!(json["message"].is_string(), "error body has a message: {json}");
}

/// Opens `/v1/ws` with these headers: the connected client (nothing read yet), or the
/// status and body of the refused upgrade.
async fn upgrade(
    server: &TestServer,
    headers: &[(&'static str, String)],
) -> Result<WsClient, (StatusCode, Value)> {
    let mut req = server.ws_url().into_client_request().expect("ws request");
    for (name, value) in headers {
        req.headers_mut().insert(*name, value.parse().expect("header value"));
    }
    match WsClient::connect(req).await {
        Ok(client) => Ok(client),
        Err(err) => match err.downcast_ref::<tungstenite::Error>() {
            Some(tungstenite::Error::Http(res)) => {
                let body = res
                    .body()
                    .as_deref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                let status = StatusCode::from_u16(res.status().as_u16()).expect("status");
                Err((status, body))
            }
            _ => panic!("upgrade failed without an HTTP answer: {err:#}"),
        },
    }
}

async fn expect_ready(ws: &mut WsClient, user: &TestUser) {
    match ws.next().await {
        ServerFrame::Ready { user_id, .. } => assert_eq!(user_id, user.id),
        other => panic!("expected ready, got {other:?}"),
    }
}

fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

/// The close code of the server's close frame (panics when the connection ended without one).
async fn close_code(ws: &mut WsClient) -> u16 {
    let frame = ws.closed().await.expect("the server sent a close frame with a code");
    u16::from(frame.code)
}

async fn last_seq(server: &TestServer, user: &TestUser, conv: ConversationId) -> Seq {
    let summary: ConversationSummary = server
        .ok::<(), _>(
            Method::GET,
            &format!("/v1/conversations/{conv}"),
            &user.token,
            None,
            StatusCode::OK,
        )
        .await;
    summary.last_seq
}

fn send_frame(req_id: ReqId, conv: ConversationId, client_msg_id: &str, body: &str) -> ClientFrame {
    ClientFrame::Send {
        req_id,
        conversation: conv,
        client_msg_id: client_msg_id.to_owned(),
        body: body.to_owned(),
        reply_to: None,
        attachments: Vec::new(),
        mentions: Vec::new(),
    }
}

fn message(body: &str) -> NewEntry {
    NewEntry::Message {
        body: body.to_owned(),
        reply_to: None,
        attachments: Vec::new(),
        mentions: Vec::new(),
    }
}

fn small_frames() -> impl FnOnce(&mut natter_server::Config) {
    |c| {
        c.limits.max_frame_bytes = 16 * 1024;
        c.limits.max_body_bytes = 8 * 1024;
    }
}

#[tokio::test]
async fn oversized_frame_closes_only_that_connection_with_1009() {
    let server = TestServer::start_with(small_frames()).await;
    let mut pair = LivePair::new(&server).await;
    let [carol, dan] = server.users(["carol", "dan"]).await;
    let conv = server.create_direct(&carol, &dan).await;
    let mut victim = server.synced_ws(&carol).await;
    // carol's other device, which must survive her first device's mistake.
    let mut carol2 = server.ws_token(&server.login("carol").await).await;
    carol2.sync(BTreeMap::new()).await;

    // A well-formed send whose frame (20 KiB) exceeds max_frame_bytes (16 KiB).
    let frame = send_frame(7, conv, "big", &"x".repeat(20 * 1024));
    victim.send_frame(&frame).await;
    assert_eq!(close_code(&mut victim).await, 1009);
    pair.check().await;

    // Nothing was stored, and carol's other session works.
    assert_eq!(last_seq(&server, &carol, conv).await, 1);
    let ack = carol2.send_msg(conv, "after", "small one").await;
    assert_eq!(ack.seq, 2);

    // The same for a binary frame over the cap.
    let mut victim = server.ws(&carol).await;
    let blob = vec![0u8; 17 * 1024];
    let _ = victim.send_raw(Message::Binary(blob.into())).await;
    assert_eq!(close_code(&mut victim).await, 1009);
    pair.check().await;
    assert_eq!(last_seq(&server, &carol, conv).await, 2);
    server.stop().await;
}

#[tokio::test]
async fn body_over_cap_is_too_large_and_stores_nothing() {
    let server = TestServer::start_with(small_frames()).await;
    let mut pair = LivePair::new(&server).await;
    let [carol, dan] = server.users(["carol", "dan"]).await;
    let conv = server.create_direct(&carol, &dan).await;
    let mut c = server.ws(&carol).await;
    let mut d = server.ws(&dan).await;
    c.sync(BTreeMap::new()).await;
    d.sync(BTreeMap::new()).await;
    let ack = c.send_msg(conv, "m1", "hello").await;
    assert_eq!(ack.seq, 2);
    assert_eq!(d.next_entry().await.seq, 2);

    // The cap counts bytes of UTF-8: 8192 bytes is accepted, 8193 is not.
    let exact = "é".repeat(4 * 1024);
    assert_eq!(exact.len(), 8 * 1024);
    let over = format!("{exact}a");

    // WebSocket send: the frame (about 8 KiB) is within max_frame_bytes, the body is not.
    // (`request` waits for the reply that echoes its req_id.)
    let reply = c.request(|req_id| send_frame(req_id, conv, "too-big", &over)).await;
    assert_eq!(error_frame(reply).1.code, ErrorCode::TooLarge);
    // An edit with a body over the cap is refused the same way.
    let reply = c
        .request(|req_id| ClientFrame::Edit {
            req_id,
            conversation: conv,
            client_msg_id: "edit-too-big".into(),
            target: 2,
            body: over.clone(),
        })
        .await;
    assert_eq!(error_frame(reply).1.code, ErrorCode::TooLarge);
    // REST: 413 with the same code.
    let (status, json) = server.post_entry(&carol, conv, "rest-too-big", message(&over)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_code(&json, "too_large");
    // A REST request body over max_http_body_bytes (256 KiB) is refused before parsing.
    let huge = PostEntry { client_msg_id: "huge".into(), entry: message(&"y".repeat(300 * 1024)) };
    let (status, json) = server
        .call(
            Method::POST,
            &format!("/v1/conversations/{conv}/entries"),
            Some(&carol.token),
            Some(&huge),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_code(&json, "too_large");
    assert_eq!(last_seq(&server, &carol, conv).await, 2, "nothing stored");

    // The session is still usable; the next entry is seq 3, and the refused client_msg_id
    // is free (nothing was recorded under it).
    let ack = c.send_msg(conv, "too-big", &exact).await;
    assert_eq!(ack.seq, 3);
    let got = d.next_entry().await;
    assert_eq!((got.seq, message_body(&got)), (3, exact.as_str()));
    pair.check().await;
    server.stop().await;
}

#[tokio::test]
async fn malformed_unknown_and_binary_frames_get_errors_and_the_session_lives_on() {
    let server = TestServer::start().await;
    let mut pair = LivePair::new(&server).await;
    let [carol, dan] = server.users(["carol", "dan"]).await;
    let conv = server.create_direct(&carol, &dan).await;
    let mut c = server.synced_ws(&carol).await;

    let cases: &[(&str, Option<ReqId>, ErrorCode)] = &[
        ("{not json", None, ErrorCode::MalformedFrame),
        (r#"{"type":"send","#, None, ErrorCode::MalformedFrame),
        ("", None, ErrorCode::MalformedFrame),
        ("[1,2,3]", None, ErrorCode::MalformedFrame),
        ("null", None, ErrorCode::MalformedFrame),
        // Missing fields.
        (r#"{"type":"send","req_id":41}"#, Some(41), ErrorCode::MalformedFrame),
        (r#"{"type":"history","req_id":42}"#, Some(42), ErrorCode::MalformedFrame),
        (r#"{"req_id":43}"#, Some(43), ErrorCode::MalformedFrame),
        // A field of the wrong type.
        (
            r#"{"type":"send","req_id":44,"conversation":"one","client_msg_id":"c","body":"b"}"#,
            Some(44),
            ErrorCode::MalformedFrame,
        ),
        (r#"{"type":"teleport","req_id":45}"#, Some(45), ErrorCode::UnknownType),
        (r#"{"type":"teleport"}"#, None, ErrorCode::UnknownType),
    ];
    for (text, req_id, code) in cases {
        c.send_text(text).await;
        let (echoed, err) = error_frame(c.next().await);
        assert_eq!((echoed, err.code), (*req_id, *code), "frame {text:?}");
    }
    c.send_raw(Message::Binary(br#"{"type":"ping","req_id":46}"#.to_vec().into()))
        .await
        .expect("binary frame sent");
    let (echoed, err) = error_frame(c.next().await);
    assert_eq!((echoed, err.code), (None, ErrorCode::MalformedFrame));
    pair.check().await;

    // Still open and usable: ping, send, sync.
    let pong = c.request(|req_id| ClientFrame::Ping { req_id: Some(req_id) }).await;
    assert!(matches!(pong, ServerFrame::Pong { req_id: Some(_) }));
    let ack = c.send_msg(conv, "m1", "after the garbage").await;
    assert_eq!(ack.seq, 2, "no bad frame stored anything");
    // The session already delivered everything (its own entry, live): nothing new.
    assert_eq!(c.next_entry().await.seq, 2);
    let synced = c.sync(BTreeMap::new()).await;
    assert!(synced.is_empty(), "{synced:?}");
    pair.check().await;
    server.stop().await;
}

#[tokio::test]
async fn out_of_range_numbers_are_bad_requests_on_rest_and_websocket_alike() {
    let server = TestServer::start().await;
    let mut pair = LivePair::new(&server).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let conv = server.create_direct(&alice, &bob).await;
    server.send_rest(&alice, conv, "m2", "two").await;
    let mut ws = server.ws(&alice).await;
    let max = u64::MAX.to_string();
    let rest = async |method: Method, path: &str, body: Option<Value>| {
        let (status, json) = server.call(method, path, Some(&alice.token), body.as_ref()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body:?}: {json}");
        json["code"].as_str().expect("an error code").to_owned()
    };
    let mut frame_code = async |frame: String| {
        let req_id = ws.req_id();
        ws.send_text(&frame.replace("REQ", &req_id.to_string())).await;
        let reply = ws.next_matching(|f| natter_testkit::reply_id(f) == Some(req_id)).await;
        match reply {
            ServerFrame::Error { error, .. } => error.code,
            other => panic!("{frame}: expected an error, got {other:?}"),
        }
    };

    // History: `after=2^64-1` once wrapped to -1 and returned the log from seq 1. Each bad
    // value is `bad_request` in the query and in the frame alike.
    for value in [
        format!("after={max}"),
        format!("before={max}"),
        "after=-1".to_owned(),
        "after=18446744073709551616".to_owned(),
        "limit=4294967296".to_owned(),
    ] {
        let path = format!("/v1/conversations/{conv}/entries?{value}");
        assert_eq!(rest(Method::GET, &path, None).await, "bad_request", "{value}");
        let (field, number) = value.split_once('=').expect("a pair");
        let frame = format!(
            r#"{{"type":"history","req_id":REQ,"conversation":{conv},"{field}":{number}}}"#
        );
        assert_eq!(frame_code(frame).await, ErrorCode::BadRequest, "{value} on the websocket");
    }
    // Sync cursors, in a REST body and in a frame.
    for cursor in [json!(u64::MAX), json!(-1), json!(1.5)] {
        let body = json!({"cursors": {conv.to_string(): cursor}});
        assert_eq!(rest(Method::POST, "/v1/sync", Some(body)).await, "bad_request", "{cursor}");
        let frame = format!(r#"{{"type":"sync","req_id":REQ,"cursors":{{"{conv}":{cursor}}}}}"#);
        assert_eq!(frame_code(frame).await, ErrorCode::BadRequest, "cursor {cursor}");
    }
    // A read cursor and a reply target beyond what the log can hold.
    let path = format!("/v1/conversations/{conv}/cursors");
    let body = json!({"read_seq": u64::MAX});
    assert_eq!(rest(Method::PUT, &path, Some(body)).await, "bad_request");
    let frame = format!(r#"{{"type":"read","req_id":REQ,"conversation":{conv},"seq":{max}}}"#);
    assert_eq!(frame_code(frame).await, ErrorCode::BadRequest);
    let path = format!("/v1/conversations/{conv}/entries");
    let body = json!({"client_msg_id": "r", "kind": "message", "body": "re", "reply_to": -2});
    assert_eq!(rest(Method::POST, &path, Some(body)).await, "bad_request");
    let frame = format!(
        r#"{{"type":"send","req_id":REQ,"conversation":{conv},"client_msg_id":"r","body":"re","reply_to":{max}}}"#
    );
    assert_eq!(frame_code(frame).await, ErrorCode::BadRequest);
    // A value of the wrong type is still a malformed frame or body, on both.
    let body = json!({"cursors": {conv.to_string(): "7"}});
    assert_eq!(rest(Method::POST, "/v1/sync", Some(body)).await, "malformed_frame");
    let frame = format!(r#"{{"type":"history","req_id":REQ,"conversation":{conv},"after":"7"}}"#);
    assert_eq!(frame_code(frame).await, ErrorCode::MalformedFrame);

    // Nothing was stored, the largest valid seq is fine, and the session lives on.
    let path = format!("/v1/conversations/{conv}/entries?after={}", i64::MAX);
    let page: natter_proto::rest::EntryPage =
        server.ok::<(), _>(Method::GET, &path, &alice.token, None, StatusCode::OK).await;
    assert!(page.entries.is_empty() && !page.has_more);
    assert_eq!(last_seq(&server, &alice, conv).await, 2);
    assert_eq!(ws.send_msg(conv, "m3", "still here").await.seq, 3);
    pair.check().await;
    server.stop().await;
}

#[tokio::test]
async fn websocket_auth_by_header_or_first_frame() {
    let server = TestServer::start().await;
    let mut pair = LivePair::new(&server).await;
    let carol = server.user("carol").await;

    // A present but bad Authorization header fails the upgrade with 401.
    for value in [
        "Bearer nt_not-a-real-token".to_owned(),
        "Basic Y2Fyb2w6cHc=".to_owned(),
        "Bearer".to_owned(),
        carol.token.clone(),
    ] {
        let Err((status, body)) = upgrade(&server, &[("authorization", value.clone())]).await
        else {
            panic!("upgrade with Authorization {value:?} was accepted");
        };
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{value:?}");
        assert_code(&body, "unauthenticated");
    }
    pair.check().await;

    // Anonymous: a first frame that is not a valid `auth` gets `unauthenticated` and 4001.
    let bad_first: Vec<Message> = vec![
        Message::Text(r#"{"type":"ping","req_id":1}"#.into()),
        Message::Text(r#"{"type":"auth","token":"nt_wrong"}"#.into()),
        Message::Text(r#"{"type":"auth"}"#.into()),
        Message::Text("hello".into()),
        Message::Binary(
            format!(r#"{{"type":"auth","token":"{}"}}"#, carol.token).into_bytes().into(),
        ),
        Message::Text(
            serde_json::to_string(&send_frame(1, pair.conv, "x", "sneaky")).expect("json").into(),
        ),
    ];
    for first in bad_first {
        let mut ws = server.ws_anonymous().await;
        ws.send_raw(first.clone()).await.expect("first frame sent");
        let (req_id, err) = error_frame(ws.next().await);
        assert_eq!((req_id, err.code), (None, ErrorCode::Unauthenticated), "{first:?}");
        assert_eq!(close_code(&mut ws).await, close::UNAUTHENTICATED, "{first:?}");
        pair.check().await;
    }
    // (Each `check` above also shows that the anonymous `send` stored nothing: the pair's
    // seqs stayed contiguous.)

    // A valid `auth` frame first: `ready`, then a working session.
    let mut ws = server.ws_anonymous().await;
    ws.send_frame(&ClientFrame::Auth { token: carol.token.clone() }).await;
    expect_ready(&mut ws, &carol).await;
    let synced = ws.sync(BTreeMap::new()).await;
    assert!(synced.is_empty(), "carol has no conversations yet");
    // A second `auth` on an authenticated session is a bad request, not a re-login.
    ws.send_frame(&ClientFrame::Auth { token: "nt_other".into() }).await;
    assert_eq!(error_frame(ws.next().await).1.code, ErrorCode::BadRequest);
    assert!(matches!(
        ws.request(|req_id| ClientFrame::Ping { req_id: Some(req_id) }).await,
        ServerFrame::Pong { .. }
    ));
    pair.check().await;
    server.stop().await;
}

#[tokio::test]
async fn logout_revokes_only_that_token() {
    let server = TestServer::start().await;
    let mut pair = LivePair::new(&server).await;
    let carol = server.user("carol").await;
    let other_device = server.login("carol").await;

    let (status, _) = server.call::<()>(Method::GET, "/v1/me", Some(&carol.token), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) =
        server.call::<()>(Method::DELETE, "/v1/sessions/current", Some(&carol.token), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

    // The revoked token: REST 401, WebSocket upgrade 401, `auth` frame 4001.
    let (status, body) = server.call::<()>(Method::GET, "/v1/me", Some(&carol.token), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_code(&body, "unauthenticated");
    let (status, body) =
        server.call::<()>(Method::DELETE, "/v1/sessions/current", Some(&carol.token), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_code(&body, "unauthenticated");
    let Err((status, body)) = upgrade(&server, &[bearer(&carol.token)]).await else {
        panic!("a revoked token opened a WebSocket");
    };
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_code(&body, "unauthenticated");
    let mut ws = server.ws_anonymous().await;
    ws.send_frame(&ClientFrame::Auth { token: carol.token.clone() }).await;
    assert_eq!(error_frame(ws.next().await).1.code, ErrorCode::Unauthenticated);
    assert_eq!(close_code(&mut ws).await, close::UNAUTHENTICATED);

    // carol's other device is unaffected.
    let (status, me) = server.call::<()>(Method::GET, "/v1/me", Some(&other_device), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["handle"], "carol");
    let mut ws = server.ws_token(&other_device).await;
    ws.sync(BTreeMap::new()).await;
    pair.check().await;
    server.stop().await;
}

#[tokio::test]
async fn every_rest_route_needs_a_valid_token() {
    let server = TestServer::start().await;
    let mut pair = LivePair::new(&server).await;
    let conv = pair.conv;
    let entry = PostEntry { client_msg_id: "x".into(), entry: message("hi") };
    let routes: Vec<(Method, String, Value)> = vec![
        (Method::DELETE, "/v1/sessions/current".into(), Value::Null),
        (Method::GET, "/v1/me".into(), Value::Null),
        (Method::GET, "/v1/users/pair_a".into(), Value::Null),
        (
            Method::POST,
            "/v1/conversations".into(),
            json!({"kind": "group", "title": "t", "members": []}),
        ),
        (Method::GET, "/v1/conversations".into(), Value::Null),
        (Method::GET, format!("/v1/conversations/{conv}"), Value::Null),
        (
            Method::PATCH,
            format!("/v1/conversations/{conv}"),
            serde_json::to_value(UpdateConversation { title: "t".into() }).expect("json"),
        ),
        (Method::GET, format!("/v1/conversations/{conv}/members"), Value::Null),
        (
            Method::POST,
            format!("/v1/conversations/{conv}/members"),
            serde_json::to_value(AddMember { user_id: natter_proto::UserId(1), role: None })
                .expect("json"),
        ),
        (
            Method::PATCH,
            format!("/v1/conversations/{conv}/members/1"),
            serde_json::to_value(UpdateMember { role: Role::Admin }).expect("json"),
        ),
        (Method::DELETE, format!("/v1/conversations/{conv}/members/1"), Value::Null),
        (Method::GET, format!("/v1/conversations/{conv}/entries"), Value::Null),
        (
            Method::POST,
            format!("/v1/conversations/{conv}/entries"),
            serde_json::to_value(&entry).expect("json"),
        ),
        (
            Method::PUT,
            format!("/v1/conversations/{conv}/cursors"),
            serde_json::to_value(SetCursors { delivered_seq: Some(1), read_seq: Some(1) })
                .expect("json"),
        ),
        (Method::GET, format!("/v1/conversations/{conv}/receipts"), Value::Null),
        (
            Method::POST,
            "/v1/sync".into(),
            serde_json::to_value(SyncRequest::default()).expect("json"),
        ),
    ];
    for (method, path, body) in &routes {
        let body = (!body.is_null()).then_some(body);
        for token in [None, Some("nt_garbage"), Some("")] {
            let (status, json) = server.call(method.clone(), path, token, body).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with token {token:?}: {json}"
            );
            assert_code(&json, "unauthenticated");
        }
    }
    // Nothing above changed the conversation.
    pair.check().await;
    assert_eq!(pair.n_checks, 2);
    server.stop().await;
}

#[tokio::test]
async fn passwords_and_handles_are_checked() {
    let server = TestServer::start().await;
    let mut pair = LivePair::new(&server).await;
    server.user("carol").await;

    let login = |handle: &str, password: &str| Credentials {
        handle: handle.to_owned(),
        password: password.to_owned(),
        device: None,
    };
    let (status, wrong_password) = server
        .call(Method::POST, "/v1/sessions", None, Some(&login("carol", "not the password")))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_code(&wrong_password, "unauthenticated");
    // An unknown handle looks exactly like a wrong password (no account enumeration).
    let (status, unknown) =
        server.call(Method::POST, "/v1/sessions", None, Some(&login("nobody", PASSWORD))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown, wrong_password);

    // Handles are unique case-insensitively.
    for handle in ["carol", "CAROL", "Carol"] {
        let (status, json) =
            server.call(Method::POST, "/v1/accounts", None, Some(&login(handle, PASSWORD))).await;
        assert_eq!(status, StatusCode::CONFLICT, "{handle}: {json}");
        assert_code(&json, "conflict");
    }
    // The original account is intact.
    server.login("carol").await;
    pair.check().await;
    server.stop().await;
}

#[tokio::test]
async fn websocket_origin_is_checked() {
    let server = TestServer::start().await;
    let mut pair = LivePair::new(&server).await;
    let carol = server.user("carol").await;

    for origin in [
        "http://evil.example".to_owned(),
        "https://evil.example".to_owned(),
        format!("http://{}.evil.example", server.addr),
        "null".to_owned(),
    ] {
        let res = upgrade(&server, &[bearer(&carol.token), ("origin", origin.clone())]).await;
        let Err((status, body)) = res else {
            panic!("origin {origin} was accepted");
        };
        assert_eq!(status, StatusCode::FORBIDDEN, "{origin}");
        assert_code(&body, "forbidden");
    }
    pair.check().await;

    // The server's own origin, and no Origin at all (not a browser), are accepted.
    let own = format!("http://{}", server.addr);
    let mut ws = upgrade(&server, &[bearer(&carol.token), ("origin", own)])
        .await
        .expect("own origin accepted");
    expect_ready(&mut ws, &carol).await;
    let mut ws = upgrade(&server, &[bearer(&carol.token)]).await.expect("no origin accepted");
    expect_ready(&mut ws, &carol).await;
    server.stop().await;

    // A configured origin is accepted; others still are not.
    let server = TestServer::start_with(|c| {
        c.allowed_origins = vec!["https://app.example".to_owned()];
    })
    .await;
    let mut pair = LivePair::new(&server).await;
    let carol = server.user("carol").await;
    let mut ws =
        upgrade(&server, &[bearer(&carol.token), ("origin", "https://app.example".to_owned())])
            .await
            .expect("configured origin accepted");
    expect_ready(&mut ws, &carol).await;
    let res =
        upgrade(&server, &[bearer(&carol.token), ("origin", "http://evil.example".to_owned())])
            .await;
    assert_eq!(res.err().map(|e| e.0), Some(StatusCode::FORBIDDEN));
    // Anonymous upgrades (auth by first frame) are checked too.
    let res = upgrade(&server, &[("origin", "http://evil.example".to_owned())]).await;
    assert_eq!(res.err().map(|e| e.0), Some(StatusCode::FORBIDDEN));
    pair.check().await;
    server.stop().await;
}

#[tokio::test]
async fn non_member_sees_not_found_exactly_as_for_a_missing_conversation() {
    let server = TestServer::start().await;
    let [alice, bob, dave, erin] = server.users(["alice", "bob", "dave", "erin"]).await;
    let conv = server.create_direct(&alice, &bob).await;
    server.send_rest(&alice, conv, "s1", "secret").await;
    let dave_conv = server.create_direct(&erin, &dave).await;
    let missing = ConversationId(conv.0 + 1000);

    // Every REST route: 404 `not_found`, byte for byte the same as for a missing id.
    let rest_probes = |id: ConversationId| -> Vec<(Method, String, Value)> {
        vec![
            (Method::GET, format!("/v1/conversations/{id}"), Value::Null),
            (Method::GET, format!("/v1/conversations/{id}/entries"), Value::Null),
            (Method::GET, format!("/v1/conversations/{id}/entries?after=0&limit=10"), Value::Null),
            (Method::GET, format!("/v1/conversations/{id}/entries?before=5"), Value::Null),
            (Method::GET, format!("/v1/conversations/{id}/members"), Value::Null),
            (Method::GET, format!("/v1/conversations/{id}/receipts"), Value::Null),
            (
                Method::POST,
                format!("/v1/conversations/{id}/entries"),
                serde_json::to_value(PostEntry {
                    client_msg_id: "d1".into(),
                    entry: message("let me in"),
                })
                .expect("json"),
            ),
            (Method::PUT, format!("/v1/conversations/{id}/cursors"), json!({"read_seq": 2})),
            (Method::PATCH, format!("/v1/conversations/{id}"), json!({"title": "mine now"})),
            (Method::POST, format!("/v1/conversations/{id}/members"), json!({"user_id": dave.id})),
            (
                Method::PATCH,
                format!("/v1/conversations/{id}/members/{}", alice.id),
                json!({"role": "admin"}),
            ),
            (Method::DELETE, format!("/v1/conversations/{id}/members/{}", bob.id), Value::Null),
            (Method::DELETE, format!("/v1/conversations/{id}/members/{}", dave.id), Value::Null),
        ]
    };
    for ((method, path, body), (_, missing_path, _)) in
        rest_probes(conv).into_iter().zip(rest_probes(missing))
    {
        let body = (!body.is_null()).then_some(&body);
        let foreign = server.call(method.clone(), &path, Some(&dave.token), body).await;
        let absent = server.call(method.clone(), &missing_path, Some(&dave.token), body).await;
        assert_eq!(foreign.0, StatusCode::NOT_FOUND, "{method} {path}: {}", foreign.1);
        assert_code(&foreign.1, "not_found");
        assert_eq!(foreign, absent, "{method} {path} vs {missing_path}");
    }
    // Nothing changed: still `created` and one message, and bob is still a member.
    assert_eq!(last_seq(&server, &alice, conv).await, 2);
    let (status, _) = server
        .call::<()>(Method::GET, &format!("/v1/conversations/{conv}"), Some(&bob.token), None)
        .await;
    assert_eq!(status, StatusCode::OK);

    // REST listings never include it.
    let page: ConversationPage = server
        .ok::<(), _>(Method::GET, "/v1/conversations", &dave.token, None, StatusCode::OK)
        .await;
    let ids: Vec<ConversationId> = page.conversations.iter().map(|c| c.id).collect();
    assert_eq!(ids, vec![dave_conv]);
    let synced: SyncResponse = server
        .ok(Method::POST, "/v1/sync", &dave.token, Some(&SyncRequest::default()), StatusCode::OK)
        .await;
    let ids: Vec<ConversationId> = synced.conversations.iter().map(|c| c.conversation.id).collect();
    assert_eq!(ids, vec![dave_conv]);

    // WebSocket: history, send (and edit, react), read and delivered answer `not_found`, the
    // same error for the foreign and the missing id.
    let mut a = server.ws(&alice).await;
    let mut b = server.ws(&bob).await;
    let mut d = server.ws(&dave).await;
    a.sync(BTreeMap::new()).await;
    b.sync(BTreeMap::new()).await;
    let synced = d.sync(BTreeMap::new()).await;
    let ids: Vec<ConversationId> = synced.iter().map(|c| c.conversation.id).collect();
    assert_eq!(ids, vec![dave_conv]);
    let ws_probes: Vec<Box<dyn Fn(ReqId, ConversationId) -> ClientFrame>> = vec![
        Box::new(|req_id, conversation| ClientFrame::History {
            req_id,
            conversation,
            before: None,
            after: None,
            limit: None,
        }),
        Box::new(|req_id, conversation| ClientFrame::History {
            req_id,
            conversation,
            before: None,
            after: Some(0),
            limit: Some(5),
        }),
        Box::new(|req_id, conversation| send_frame(req_id, conversation, "d2", "let me in")),
        Box::new(|req_id, conversation| ClientFrame::Edit {
            req_id,
            conversation,
            client_msg_id: "d3".into(),
            target: 2,
            body: "edited".into(),
        }),
        Box::new(|req_id, conversation| ClientFrame::React {
            req_id,
            conversation,
            client_msg_id: "d4".into(),
            target: 2,
            emoji: "+1".into(),
            remove: false,
        }),
        Box::new(|req_id, conversation| ClientFrame::Delete {
            req_id,
            conversation,
            client_msg_id: "d5".into(),
            target: 2,
        }),
        Box::new(|req_id, conversation| ClientFrame::Read {
            req_id: Some(req_id),
            conversation,
            seq: 2,
        }),
        Box::new(|req_id, conversation| ClientFrame::Delivered {
            req_id: Some(req_id),
            conversation,
            seq: 2,
        }),
    ];
    // (`request` waits for the reply that echoes its req_id.)
    for probe in &ws_probes {
        let foreign = error_frame(d.request(|req_id| probe(req_id, conv)).await).1;
        let absent = error_frame(d.request(|req_id| probe(req_id, missing)).await).1;
        assert_eq!(foreign.code, ErrorCode::NotFound, "{foreign:?}");
        assert_eq!(foreign, absent);
    }
    assert_eq!(last_seq(&server, &alice, conv).await, 2);

    // Live: alice and bob talk and alice reads; dave gets none of it. The barrier: an entry
    // in dave's own conversation committed after all that is the very next frame he gets.
    let ack = a.send_msg(conv, "s2", "secret 2").await;
    assert_eq!(ack.seq, 3);
    assert_eq!(b.next_entry().await.seq, 3);
    a.send_frame(&ClientFrame::Read { req_id: None, conversation: conv, seq: 3 }).await;
    let receipt = b.next_matching(|f| matches!(f, ServerFrame::Receipt { .. })).await;
    let ServerFrame::Receipt { receipt } = receipt else { unreachable!("matched a receipt") };
    assert_eq!((receipt.user, receipt.read_seq), (alice.id, 3));
    let barrier = server.send_rest(&erin, dave_conv, "e1", "barrier").await;
    match d.next().await {
        ServerFrame::Entry { entry } => {
            assert_eq!((entry.conversation, entry.seq), (dave_conv, barrier.seq));
        }
        other => panic!("dave got something before the barrier: {other:?}"),
    }
    // The session has delivered everything dave may see: a sync has nothing new.
    let synced = d.sync(BTreeMap::new()).await;
    assert!(synced.is_empty(), "dave's sync shows nothing new: {synced:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_dropped_without_blocking_others_and_resumes_exactly() {
    let server = TestServer::start_with(|c| c.limits.outbound_queue = 8).await;
    let [alice, bob, carol] = server.users(["alice", "bob", "carol"]).await;
    // (Contacts of alice, so that the group's creation adds them.)
    let ab = server.contacts(&alice, &[&bob, &carol]).await[0];
    let conv = server.create_group(&alice, "flood", &[&bob, &carol]).await;

    // bob syncs, reads a few entries later, and otherwise leaves his socket alone.
    let mut slow = server.ws(&bob).await;
    let synced = slow.sync(BTreeMap::new()).await;
    assert_eq!(synced[0].entries.last().map(|e| e.seq), Some(1));
    // carol reads everything as it comes, up to the last message.
    let mut healthy = server.synced_ws(&carol).await;
    let reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        loop {
            let entry = healthy.next_entry().await;
            assert_eq!(entry.conversation, conv);
            seqs.push(entry.seq);
            if message_body(&entry) == "the end" {
                return (healthy, seqs);
            }
        }
    });

    // alice floods over REST with 14 KiB messages: every send is acked, in order, whatever
    // bob does. The flood goes on until the server has dropped a slow consumer (once the
    // kernel's socket buffers, the writer's batch and the 8-frame queue are full: about
    // 4 MiB here), then 50 more.
    let dropped_before = slow_consumers_total(&server).await;
    let filler = "z".repeat(14 * 1024);
    let mut n_sent: u64 = 0;
    let mut n_after_drop: Option<u64> = None;
    while n_after_drop != Some(50) {
        let ack = server
            .send_rest(&alice, conv, &format!("f{n_sent}"), &format!("{n_sent} {filler}"))
            .await;
        assert_eq!(ack.seq, 2 + n_sent);
        n_sent += 1;
        if let Some(n) = &mut n_after_drop {
            *n += 1;
        } else if n_sent.is_multiple_of(50) && slow_consumers_total(&server).await > dropped_before
        {
            n_after_drop = Some(0);
        }
        assert!(n_sent < 2000, "the slow consumer was never dropped (28 MiB sent)");
    }
    let end = server.send_rest(&alice, conv, "end", "the end").await;
    assert_eq!(end.seq, n_sent + 2);
    let (mut healthy, seqs) = within("carol to keep up", reader).await.expect("reader task");
    assert_contiguous(&seqs, 2, end.seq).expect("carol got every entry in order");

    // bob finally reads: the first entries are there, then the close as a slow consumer.
    let mut seen = 1;
    for _ in 0..5 {
        let entry = slow.next_entry().await;
        assert_eq!(entry.seq, seen + 1);
        seen = entry.seq;
    }
    assert_eq!(close_code(&mut slow).await, close::SLOW_CONSUMER);

    // bob reconnects and resumes from what he saw: exactly the rest, then live.
    let mut bob_ws = server.ws(&bob).await;
    let mut got: Vec<Entry> = Vec::new();
    loop {
        let cursor = got.last().map_or(seen, |e| e.seq);
        let synced = bob_ws.sync(BTreeMap::from([(conv, cursor), (ab, 1)])).await;
        assert_eq!(synced.len(), 1);
        got.extend(synced[0].entries.iter().cloned());
        if !synced[0].has_more {
            break;
        }
    }
    let got_seqs: Vec<Seq> = got.iter().map(|e| e.seq).collect();
    assert_contiguous(&got_seqs, seen + 1, end.seq).expect("resume is exact");
    for e in &got[..got.len() - 1] {
        assert!(message_body(e).starts_with(&format!("{} ", e.seq - 2)));
    }
    let ack = server.send_rest(&alice, conv, "after", "after the flood").await;
    assert_eq!(bob_ws.next_entry().await.seq, ack.seq);
    assert_eq!(healthy.next_entry().await.seq, ack.seq);
    server.stop().await;
}

/// `natter_slow_consumers_total` from `/metrics` (shared by every server in this process).
async fn slow_consumers_total(server: &TestServer) -> f64 {
    let text = server.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix("natter_slow_consumers_total "))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}
