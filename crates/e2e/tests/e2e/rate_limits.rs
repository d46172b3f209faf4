//! Rate limits (G7): a user or a connection that goes over its bucket gets
//! `too_many_requests` with `retry_after_ms` (and `Retry-After` on REST), what it was refused
//! is not stored, and nobody else is slowed: another user's sends go through at once. Each
//! kind of request has its own bucket (appends, typing, cursors, creation, member adds;
//! request frames per connection).

use natter_proto::rest::AddMember;
use natter_proto::{ClientFrame, ErrorBody, ErrorCode, ServerFrame};
use natter_testkit::{TestServer, WsClient, within};
use reqwest::{Method, StatusCode};

/// The error a frame got, if it got one.
fn refused(frame: &ServerFrame) -> Option<&ErrorBody> {
    match frame {
        ServerFrame::Error { error, .. } => Some(error),
        _ => None,
    }
}

fn assert_limited(error: &ErrorBody, max_wait_ms: u64) {
    assert_eq!(error.code, ErrorCode::TooManyRequests, "{error:?}");
    let wait = error.retry_after_ms.expect("a refusal says when to retry");
    assert!((1..=max_wait_ms).contains(&wait), "retry after {wait} ms");
}

/// Sends `n` messages without waiting, then reads every reply: (acked ids, refusals).
async fn flood(
    ws: &mut WsClient,
    conv: natter_proto::ConversationId,
    n: usize,
) -> (Vec<String>, Vec<ErrorBody>) {
    let mut pending = std::collections::HashMap::new();
    for i in 0..n {
        let req_id = ws.req_id();
        let client_msg_id = format!("flood-{i}");
        ws.send_frame(&ClientFrame::Send {
            req_id,
            conversation: conv,
            client_msg_id: client_msg_id.clone(),
            body: format!("message {i}"),
            reply_to: None,
            attachments: Vec::new(),
            mentions: Vec::new(),
        })
        .await;
        pending.insert(req_id, client_msg_id);
    }
    let (mut acked, mut refusals) = (Vec::new(), Vec::new());
    while !pending.is_empty() {
        let frame = ws
            .next_matching(|f| matches!(f, ServerFrame::Ack { .. } | ServerFrame::Error { .. }))
            .await;
        match frame {
            ServerFrame::Ack { req_id, ack } => {
                assert_eq!(pending.remove(&req_id).as_deref(), ack.client_msg_id.as_deref());
                acked.push(ack.client_msg_id.expect("a send's ack names it"));
            }
            ServerFrame::Error { req_id: Some(req_id), error } => {
                pending.remove(&req_id).expect("an error for a pending send");
                refusals.push(error);
            }
            other => panic!("unexpected reply {other:?}"),
        }
    }
    (acked, refusals)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_sender_is_refused_and_others_are_not() {
    // 5 at once, then one every 100 ms.
    let server = TestServer::start_with(|c| {
        c.limits.send_per_sec = 10;
        c.limits.send_burst = 5;
    })
    .await;
    let [alice, bob, carol] = server.users(["alice", "bob", "carol"]).await;
    let ab = server.create_direct(&alice, &bob).await;
    let bc = server.create_direct(&bob, &carol).await;
    let mut a = server.synced_ws(&alice).await;
    let started = std::time::Instant::now();
    let (acked, refusals) = flood(&mut a, ab, 50).await;
    let elapsed_ms = started.elapsed().as_millis() as usize;
    // The burst, and at most one more per 100 ms that passed.
    assert!(acked.len() >= 5, "{} acked", acked.len());
    assert!(acked.len() <= 5 + elapsed_ms / 100 + 1, "{} acked in {elapsed_ms} ms", acked.len());
    assert_eq!(acked.len() + refusals.len(), 50);
    for error in &refusals {
        assert_limited(error, 100);
    }
    // What was refused is not stored.
    let log = server.all_entries(&alice, ab, 100).await;
    assert_eq!(log.len(), 1 + acked.len(), "created + what was acked");

    // Bob has a bucket of his own: his send goes through at once.
    let mut b = server.synced_ws(&bob).await;
    b.send_msg(bc, "bob-1", "unaffected").await;

    // Over REST: 429, `Retry-After` in whole seconds, the same body.
    let mut limited = None;
    for i in 0..20 {
        let res = server
            .http
            .post(server.url(&format!("/v1/conversations/{bc}/entries")))
            .bearer_auth(&carol.token)
            .json(&serde_json::json!({"client_msg_id": format!("rest-{i}"), "kind": "message", "body": "hi"}))
            .send()
            .await
            .expect("request");
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(res);
            break;
        }
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    let res = limited.expect("a burst of REST sends is refused once the bucket is empty");
    let retry_after = res.headers().get("retry-after").expect("Retry-After header").clone();
    assert_eq!(retry_after.to_str().expect("ascii"), "1", "100 ms round up to a second");
    let error: ErrorBody = res.json().await.expect("an error body");
    assert_limited(&error, 100);

    // A refused send retried after the wait it was given is stored, once.
    let id = "flood-retried";
    let ack = within("a retried send to be acked", async {
        loop {
            let reply = a
                .request(|req_id| ClientFrame::Send {
                    req_id,
                    conversation: ab,
                    client_msg_id: id.into(),
                    body: "at last".into(),
                    reply_to: None,
                    attachments: Vec::new(),
                    mentions: Vec::new(),
                })
                .await;
            match reply {
                ServerFrame::Ack { ack, .. } => return ack,
                ServerFrame::Error { error, .. } => {
                    assert_limited(&error, 100);
                    let wait = error.retry_after_ms.expect("checked");
                    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(ack.client_msg_id.as_deref(), Some(id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_cursors_creation_and_member_adds_have_buckets_of_their_own() {
    let server = TestServer::start_with(|c| {
        c.limits.typing_per_sec = 1;
        c.limits.typing_burst = 2;
        c.limits.cursor_per_sec = 1;
        c.limits.cursor_burst = 2;
        c.limits.create_per_min = 1;
        c.limits.create_burst = 2;
        c.limits.member_adds_per_min = 1;
        c.limits.member_adds_burst = 1;
    })
    .await;
    let [alice, bob, carol, dave] = server.users(["alice", "bob", "carol", "dave"]).await;
    let conv = server.create_direct(&alice, &bob).await;
    // Contacts of whoever adds them below, made by the others (each in their own creation
    // bucket): carol of alice and of bob, dave of bob.
    server.create_direct(&carol, &alice).await;
    server.create_direct(&carol, &bob).await;
    server.create_direct(&dave, &bob).await;
    let mut a = server.synced_ws(&alice).await;

    let typing = |typing| {
        move |req_id| ClientFrame::Typing { req_id: Some(req_id), conversation: conv, typing }
    };
    for typing_now in [true, false] {
        assert!(matches!(a.request(typing(typing_now)).await, ServerFrame::Ok { .. }));
    }
    let reply = a.request(typing(true)).await;
    assert_limited(refused(&reply).expect("the third typing report is refused"), 1_000);

    let read =
        |seq| move |req_id| ClientFrame::Read { req_id: Some(req_id), conversation: conv, seq };
    for seq in [1, 1] {
        assert!(matches!(a.request(read(seq)).await, ServerFrame::Ok { .. }));
    }
    let reply = a.request(read(1)).await;
    assert_limited(refused(&reply).expect("the third cursor report is refused"), 1_000);
    // Sends have their own bucket.
    a.send_msg(conv, "still-sends", "typing and cursors do not take send tokens").await;

    // Alice already created one conversation: one more passes, the third is refused.
    server.create_group(&alice, "one", &[&carol]).await;
    let body = natter_proto::rest::CreateConversation::Group {
        title: "two".into(),
        members: vec![dave.id],
    };
    let (status, json) =
        server.call(Method::POST, "/v1/conversations", Some(&alice.token), Some(&body)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{json}");
    // Bob is not limited by Alice's creations.
    let group = server.create_group(&bob, "bob's", &[&carol]).await;

    let add = |user| AddMember { user_id: user, role: None };
    let path = format!("/v1/conversations/{group}/members");
    let (status, json) =
        server.call(Method::POST, &path, Some(&bob.token), Some(&add(dave.id))).await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
    let (status, json) =
        server.call(Method::POST, &path, Some(&bob.token), Some(&add(alice.id))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{json}");
    let members = server
        .ok::<(), Vec<serde_json::Value>>(Method::GET, &path, &bob.token, None, StatusCode::OK)
        .await;
    assert_eq!(members.len(), 3, "the refused add changed nothing: {members:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flooding_requests_is_refused_frame_by_frame_and_stays_usable() {
    let server = TestServer::start_with(|c| {
        c.limits.frames_per_sec = 10;
        c.limits.frames_burst = 5;
    })
    .await;
    let (alice, _bob, conv) = server.direct_pair().await;
    let mut a = server.synced_ws(&alice).await;
    let mut ids = Vec::new();
    for _ in 0..30 {
        let req_id = a.req_id();
        a.send_frame(&ClientFrame::Ping { req_id: Some(req_id) }).await;
        ids.push(req_id);
    }
    let (mut pongs, mut refusals) = (0, 0);
    for _ in &ids {
        match a
            .next_matching(|f| matches!(f, ServerFrame::Pong { .. } | ServerFrame::Error { .. }))
            .await
        {
            ServerFrame::Pong { .. } => pongs += 1,
            ServerFrame::Error { error, .. } => {
                assert_limited(&error, 100);
                refusals += 1;
            }
            _ => unreachable!("matched"),
        }
    }
    // The burst of 5, less the sync that opened the session.
    assert!(pongs >= 4 && refusals > 0, "{pongs} pongs, {refusals} refusals");
    // Another connection of the same user has its own bucket.
    let mut other = server.synced_ws(&alice).await;
    other.send_msg(conv, "other-conn", "fine").await;
}

/// A refused send holds back the later sends of its connection until it is retried, even
/// when a token comes back first: one connection's sends commit in the order sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_send_goes_before_the_sends_after_it() {
    // One at once, then one every 50 ms.
    let server = TestServer::start_with(|c| {
        c.limits.send_per_sec = 20;
        c.limits.send_burst = 1;
    })
    .await;
    let (alice, _bob, conv) = server.direct_pair().await;
    let mut a = server.synced_ws(&alice).await;
    let send = |id: &'static str| {
        move |req_id| ClientFrame::Send {
            req_id,
            conversation: conv,
            client_msg_id: id.into(),
            body: id.into(),
            reply_to: None,
            attachments: Vec::new(),
            mentions: Vec::new(),
        }
    };
    assert!(matches!(a.request(send("m0")).await, ServerFrame::Ack { .. }));
    let reply = a.request(send("m1")).await;
    let error = refused(&reply).expect("the burst was one: m1 is refused");
    assert_limited(error, 50);
    // The wait the server gave has passed: a token is back. m2 must still wait for m1.
    let wait = error.retry_after_ms.expect("checked") + 20;
    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
    let reply = a.request(send("m2")).await;
    assert_limited(refused(&reply).expect("m2 waits for the refused m1"), 50);
    // m1's retry goes through, then m2 (once its token is back).
    for id in ["m1", "m2"] {
        let ack = within("the send to be acked", async {
            loop {
                match a.request(send(id)).await {
                    ServerFrame::Ack { ack, .. } => return ack,
                    ServerFrame::Error { error, .. } => {
                        assert_limited(&error, 50);
                        let ms = error.retry_after_ms.expect("checked");
                        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        })
        .await;
        assert_eq!(ack.client_msg_id.as_deref(), Some(id));
    }
    let log: Vec<Option<String>> =
        server.all_entries(&alice, conv, 100).await.into_iter().map(|e| e.client_msg_id).collect();
    assert_eq!(log, [None, Some("m0".into()), Some("m1".into()), Some("m2".into())]);
}
