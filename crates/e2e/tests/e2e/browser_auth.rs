//! What a browser needs to reach a node: a single-use ticket for `EventSource`, which
//! cannot send an `Authorization` header (`POST /v1/tickets`, then
//! `GET /v1/events?ticket=`), CORS for the origins of `allowed_origins` only, users
//! looked up by id, and a conversation list that names the peer and previews the newest
//! message.

use natter_proto::rest::Ticket;
use natter_testkit::{TestServer, within};
use reqwest::{Method, StatusCode, header};

async fn events_with(server: &TestServer, ticket: &str) -> reqwest::Response {
    let url = server.url(&format!("/v1/events?ticket={ticket}"));
    within("an events answer", server.http.get(url).send()).await.expect("events request")
}

#[tokio::test]
async fn a_ticket_opens_one_event_stream_once() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let t: Ticket = server
        .ok(Method::POST, "/v1/tickets", &alice.token, None::<&()>, StatusCode::CREATED)
        .await;
    assert_eq!(t.expires_in_ms, 30_000);
    assert!(!t.ticket.contains(&alice.token), "a ticket does not carry the token");
    let res = events_with(&server, &t.ticket).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/event-stream"));
    drop(res);
    // Used once: refused after, as are forged or missing ones.
    let again = events_with(&server, &t.ticket).await;
    assert_eq!(again.status(), StatusCode::UNAUTHORIZED);
    let mut forged = t.ticket.clone().into_bytes();
    forged[5] = if forged[5] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    assert_eq!(events_with(&server, &forged).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(events_with(&server, "").await.status(), StatusCode::UNAUTHORIZED);
    // Only the event stream takes one.
    let t: Ticket = server
        .ok(Method::POST, "/v1/tickets", &alice.token, None::<&()>, StatusCode::CREATED)
        .await;
    let me =
        server.http.get(server.url(&format!("/v1/me?ticket={}", t.ticket))).send().await.unwrap();
    assert_eq!(me.status(), StatusCode::UNAUTHORIZED);
    // A revoked token's tickets fail.
    let (status, _) =
        server.call(Method::DELETE, "/v1/sessions/current", Some(&alice.token), None::<&()>).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(events_with(&server, &t.ticket).await.status(), StatusCode::UNAUTHORIZED);
    // And none without a token.
    let (status, _) = server.call(Method::POST, "/v1/tickets", None, None::<&()>).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn cors_answers_allowed_origins_only() {
    let server = TestServer::start_with(|cfg| {
        cfg.allowed_origins = vec!["http://app.example:3000".to_owned()];
    })
    .await;
    let alice = server.user("alice").await;
    let preflight = |origin: &'static str| {
        server
            .http
            .request(Method::OPTIONS, server.url("/v1/media"))
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "authorization,content-type")
            .send()
    };
    let ok = within("a preflight", preflight("http://app.example:3000")).await.unwrap();
    let h = ok.headers();
    assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "http://app.example:3000");
    assert!(h[header::ACCESS_CONTROL_ALLOW_METHODS].to_str().unwrap().contains("POST"));
    let allowed = h[header::ACCESS_CONTROL_ALLOW_HEADERS].to_str().unwrap().to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("upload-offset"), "{allowed}");
    assert!(h.get(header::ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());
    let other = within("a preflight", preflight("http://evil.example")).await.unwrap();
    assert!(other.headers().get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    // A real request from the allowed origin carries the header (and exposes the upload
    // headers); from another origin it does not, so its page cannot read the answer.
    let me = |origin: &'static str| {
        server
            .http
            .get(server.url("/v1/me"))
            .bearer_auth(&alice.token)
            .header(header::ORIGIN, origin)
            .send()
    };
    let res = within("a request", me("http://app.example:3000")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "http://app.example:3000");
    let exposed =
        res.headers()[header::ACCESS_CONTROL_EXPOSE_HEADERS].to_str().unwrap().to_ascii_lowercase();
    assert!(exposed.contains("upload-offset"), "{exposed}");
    let res = within("a request", me("http://evil.example")).await.unwrap();
    assert!(res.headers().get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
}

#[tokio::test]
async fn users_are_looked_up_by_id() {
    let server = TestServer::start().await;
    let [alice, bob] = server.users(["alice", "bob"]).await;
    let path = format!("/v1/users?ids={},{},999999", bob.id.0, alice.id.0);
    let found: natter_proto::rest::Users =
        server.ok(Method::GET, &path, &alice.token, None::<&()>, StatusCode::OK).await;
    let got: Vec<(i64, &str)> =
        found.users.iter().map(|u| (u.user_id.0, u.handle.as_str())).collect();
    assert_eq!(
        got,
        [(bob.id.0, "bob"), (alice.id.0, "alice")],
        "existing ones, in the order asked"
    );
    let (status, json) =
        server.call(Method::GET, "/v1/users?ids=1,x", Some(&alice.token), None::<&()>).await;
    assert_eq!(
        (status, &json["code"]),
        (StatusCode::BAD_REQUEST, &serde_json::json!("bad_request"))
    );
    let many: Vec<String> = (1..=101).map(|i| i.to_string()).collect();
    let path = format!("/v1/users?ids={}", many.join(","));
    let (status, _) = server.call(Method::GET, &path, Some(&alice.token), None::<&()>).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _) = server.call(Method::GET, "/v1/users?ids=1", None, None::<&()>).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_conversation_list_names_the_peer_and_previews_the_newest_message() {
    let server = TestServer::start().await;
    let [alice, bob] = server.users(["alice", "bob"]).await;
    let conv = server.create_direct(&alice, &bob).await;
    let ack = server.send_rest(&bob, conv, "c1", "see you at 6").await;
    let page: serde_json::Value = server
        .ok(Method::GET, "/v1/conversations", &alice.token, None::<&()>, StatusCode::OK)
        .await;
    let listed = &page["conversations"][0];
    assert_eq!(listed["peer"], serde_json::json!({"user_id": bob.id.0, "handle": "bob"}));
    assert_eq!(
        listed["last_message"],
        serde_json::json!({"seq": ack.seq, "sender": bob.id.0, "ts": ack.ts, "text": "see you at 6"})
    );
    assert_eq!(listed["unread"], 1);
    server.stop().await;
}
