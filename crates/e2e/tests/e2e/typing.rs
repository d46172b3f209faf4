//! G6 for typing indicators: ephemeral is cheap. A `typing` report (frame or
//! `POST /v1/conversations/{id}/typing`) reaches every other member's live sessions, all their
//! devices, and no one else (not the typist's own sessions, not a non-member). It is never
//! stored (no seq, no history, nothing in sync), it is throttled (a burst forwards once; a
//! steady stream refreshes at most once per `typing_throttle_ms`), `typing: false` forwards
//! one stop and a repeated one nothing, and it lapses by itself when the typist's session
//! drops or when the client goes quiet for `typing_ttl_ms`. A non-member is `not_found`.
//!
//! "No frame" is shown with a barrier: after the typing event a message is committed in a
//! conversation the observer is in, and the observer's next frame must be that entry.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use natter_proto::rest::Typing;
use natter_proto::{ClientFrame, ConversationId, ConversationSummary, ErrorCode, Seq, ServerFrame};
use natter_testkit::{TestServer, TestUser, WAIT, WsClient, reply_id};
use reqwest::{Method, StatusCode};

/// A connected session that has synced, so live entries (the barriers) reach it.
async fn live(server: &TestServer, token: &str) -> WsClient {
    let mut ws = server.ws_token(token).await;
    ws.sync(BTreeMap::new()).await;
    ws
}

/// Reports typing with a `req_id` and waits for its `ok`: once it arrives, the forwards
/// are queued at every recipient.
async fn report(ws: &mut WsClient, conv: ConversationId, typing: bool) {
    let reply = ws
        .request(|req_id| ClientFrame::Typing { req_id: Some(req_id), conversation: conv, typing })
        .await;
    assert!(matches!(reply, ServerFrame::Ok { .. }), "typing report: {reply:?}");
}

/// The frame a recipient gets for `user` typing (`ttl_ms` only on `typing: true`).
fn typing_frame(conv: ConversationId, user: &TestUser, typing: bool, ttl_ms: u64) -> ServerFrame {
    ServerFrame::Typing {
        conversation: conv,
        user: user.id,
        typing,
        ttl_ms: typing.then_some(ttl_ms),
    }
}

/// The session's very next frame must be `want`.
async fn expect_next(ws: &mut WsClient, want: &ServerFrame) {
    let got = ws.next().await;
    assert_eq!(&got, want);
}

/// The barrier: the session's next frame (replies to its own requests aside) must be the
/// live entry `(conv, seq)`; anything else (a typing frame above all) fails.
async fn expect_entry_next(ws: &mut WsClient, conv: ConversationId, seq: Seq) {
    loop {
        let frame = ws.next().await;
        if reply_id(&frame).is_some() {
            continue;
        }
        match frame {
            ServerFrame::Entry { entry } if entry.conversation == conv && entry.seq == seq => {
                return;
            }
            other => panic!("expected entry {conv}:{seq} next, got {other:?}"),
        }
    }
}

/// Reads up to the barrier entry `(conv, seq)` and returns the typing frames seen before it;
/// any other frame fails.
async fn typing_until(ws: &mut WsClient, conv: ConversationId, seq: Seq) -> Vec<ServerFrame> {
    let mut seen = Vec::new();
    loop {
        let frame = ws.next().await;
        match frame {
            ServerFrame::Typing { .. } => seen.push(frame),
            ServerFrame::Entry { entry } if entry.conversation == conv && entry.seq == seq => {
                return seen;
            }
            other => panic!("expected typing frames, then entry {conv}:{seq}; got {other:?}"),
        }
    }
}

async fn summary(
    server: &TestServer,
    user: &TestUser,
    conv: ConversationId,
) -> ConversationSummary {
    let path = format!("/v1/conversations/{conv}");
    server.ok::<(), _>(Method::GET, &path, &user.token, None, StatusCode::OK).await
}

async fn post_typing(
    server: &TestServer,
    user: &TestUser,
    conv: ConversationId,
    typing: bool,
) -> (StatusCode, serde_json::Value) {
    let path = format!("/v1/conversations/{conv}/typing");
    server.call(Method::POST, &path, Some(&user.token), Some(&Typing { typing })).await
}

const DEFAULT_TTL_MS: u64 = 6_000;

#[tokio::test]
async fn typing_reaches_every_other_members_sessions_and_no_one_else() {
    let server = TestServer::start().await;
    let [alice, bob, carol, dave] = server.users(["alice", "bob", "carol", "dave"]).await;
    server.contacts(&alice, &[&bob, &carol]).await;
    let group = server.create_group(&alice, "team", &[&bob, &carol]).await;
    // Dave is no member of the group; he shares a direct conversation with each typist so
    // that barriers can reach him.
    let alice_dave = server.create_direct(&alice, &dave).await;
    let bob_dave = server.create_direct(&bob, &dave).await;

    let mut a1 = live(&server, &alice.token).await;
    let mut a2 = live(&server, &server.login("alice").await).await;
    let mut b1 = live(&server, &bob.token).await;
    let mut b2 = live(&server, &server.login("bob").await).await;
    let mut c1 = live(&server, &carol.token).await;
    let mut d1 = live(&server, &dave.token).await;

    // Alice types from her first device.
    report(&mut a1, group, true).await;
    let want = typing_frame(group, &alice, true, DEFAULT_TTL_MS);
    for ws in [&mut b1, &mut b2, &mut c1] {
        expect_next(ws, &want).await;
    }
    let in_group = a1.send_msg(group, "g1", "after typing").await.seq;
    let with_dave = a1.send_msg(alice_dave, "d1", "barrier").await.seq;
    for ws in [&mut a1, &mut a2, &mut b1, &mut b2, &mut c1] {
        expect_entry_next(ws, group, in_group).await;
    }
    for ws in [&mut a1, &mut a2, &mut d1] {
        expect_entry_next(ws, alice_dave, with_dave).await;
    }

    // Bob types from his second device: Alice's two devices and Carol hear it; not Bob's
    // other device, not Dave.
    report(&mut b2, group, true).await;
    let want = typing_frame(group, &bob, true, DEFAULT_TTL_MS);
    for ws in [&mut a1, &mut a2, &mut c1] {
        expect_next(ws, &want).await;
    }
    let in_group = b2.send_msg(group, "g2", "after typing").await.seq;
    let with_dave = b2.send_msg(bob_dave, "d2", "barrier").await.seq;
    for ws in [&mut a1, &mut a2, &mut b1, &mut b2, &mut c1] {
        expect_entry_next(ws, group, in_group).await;
    }
    for ws in [&mut b1, &mut b2, &mut d1] {
        expect_entry_next(ws, bob_dave, with_dave).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn typing_is_never_stored() {
    let server = TestServer::start().await;
    let (alice, bob, conv) = server.direct_pair().await;
    server.send_rest(&alice, conv, "m1", "hello").await;
    let before = summary(&server, &alice, conv).await.last_seq;
    let history = server.all_entries(&alice, conv, 100).await;
    assert_eq!(before, 2);

    let mut a = live(&server, &alice.token).await;
    let mut b = live(&server, &bob.token).await;
    report(&mut a, conv, true).await;
    expect_next(&mut b, &typing_frame(conv, &alice, true, DEFAULT_TTL_MS)).await;
    report(&mut a, conv, false).await;
    expect_next(&mut b, &typing_frame(conv, &alice, false, DEFAULT_TTL_MS)).await;
    let (status, body) = post_typing(&server, &bob, conv, true).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    expect_next(&mut a, &typing_frame(conv, &bob, true, DEFAULT_TTL_MS)).await;

    // No seq was used, history is the same, and sync has nothing after `last_seq`.
    assert_eq!(summary(&server, &alice, conv).await.last_seq, before);
    assert_eq!(summary(&server, &bob, conv).await.last_seq, before);
    assert_eq!(server.all_entries(&bob, conv, 100).await, history);
    let mut fresh = server.ws(&bob).await;
    assert!(fresh.sync(BTreeMap::from([(conv, before)])).await.is_empty());
    let synced = server.ws(&bob).await.sync(BTreeMap::new()).await;
    assert_eq!(synced.len(), 1);
    assert_eq!(synced[0].conversation.last_seq, before);
    let seqs: Vec<Seq> = synced[0].entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1, 2]);
    // The next entry takes the very next seq.
    let seq = a.send_msg(conv, "m2", "next").await.seq;
    assert_eq!(seq, before + 1);
    // Bob's own session did not hear his REST report.
    expect_entry_next(&mut b, conv, seq).await;
    server.stop().await;
}

#[tokio::test]
async fn a_burst_of_fifty_reports_forwards_one() {
    const THROTTLE_MS: u64 = 2_000;
    // The forwarding throttle, not the report rate limit (rate_limits.rs), is under test.
    let server = TestServer::start_with(|c| {
        c.limits.typing_throttle_ms = THROTTLE_MS;
        c.limits.typing_per_sec = 0;
    })
    .await;
    let [alice, bob, carol] = server.users(["alice", "bob", "carol"]).await;
    server.contacts(&alice, &[&bob, &carol]).await;
    let group = server.create_group(&alice, "team", &[&bob, &carol]).await;
    let mut a = live(&server, &alice.token).await;
    let mut b = live(&server, &bob.token).await;
    let mut c = live(&server, &carol.token).await;

    // 50 reports as fast as the socket takes them; only the last asks for a reply, which
    // comes after all 50 were handled (a session's frames are handled in order).
    let start = Instant::now();
    for _ in 0..49 {
        let frame = ClientFrame::Typing { req_id: None, conversation: group, typing: true };
        a.send_frame(&frame).await;
    }
    report(&mut a, group, true).await;
    let elapsed = start.elapsed();
    let seq = a.send_msg(group, "barrier", "barrier").await.seq;

    // The server handled every report within `elapsed`, so forwards are spaced by the
    // throttle within it: exactly one when it is shorter than the throttle.
    let bound = elapsed.as_millis() as usize / THROTTLE_MS as usize + 1;
    let want = typing_frame(group, &alice, true, DEFAULT_TTL_MS);
    for ws in [&mut b, &mut c] {
        let seen = typing_until(ws, group, seq).await;
        assert!(seen.iter().all(|f| f == &want), "{seen:?}");
        assert!(!seen.is_empty() && seen.len() <= bound, "{} forwards in {elapsed:?}", seen.len());
        if elapsed < Duration::from_millis(THROTTLE_MS) {
            assert_eq!(seen.len(), 1, "50 reports in {elapsed:?}");
        }
    }
    expect_entry_next(&mut a, group, seq).await;
    server.stop().await;
}

#[tokio::test]
async fn steady_reports_refresh_at_most_once_per_throttle() {
    const THROTTLE_MS: u64 = 300;
    const TTL_MS: u64 = 30_000;
    // The forwarding throttle, not the report rate limit (rate_limits.rs), is under test.
    let server = TestServer::start_with(|c| {
        c.limits.typing_throttle_ms = THROTTLE_MS;
        c.limits.typing_ttl_ms = TTL_MS;
        c.limits.typing_per_sec = 0;
    })
    .await;
    let (alice, bob, conv) = server.direct_pair().await;
    let mut a = live(&server, &alice.token).await;
    let mut b = live(&server, &bob.token).await;

    // Alice keeps typing, one report per round trip, until Bob has seen three forwards:
    // the first and two refreshes.
    let want = typing_frame(conv, &alice, true, TTL_MS);
    let start = Instant::now();
    let mut n_reports = 0;
    let mut n_forwards = 0;
    while n_forwards < 3 {
        assert!(start.elapsed() < WAIT, "{n_forwards} forwards after {n_reports} reports");
        report(&mut a, conv, true).await;
        n_reports += 1;
        while let Some(frame) = b.next_within(Duration::ZERO).await {
            assert_eq!(frame, want);
            n_forwards += 1;
        }
    }
    let elapsed = start.elapsed();
    let seq = a.send_msg(conv, "barrier", "barrier").await.seq;
    let late = typing_until(&mut b, conv, seq).await;
    assert!(late.iter().all(|f| f == &want), "{late:?}");
    let n_forwards = n_forwards + late.len();

    // Every report was handled within `elapsed`; forwards at least a throttle apart fit at
    // most this many times in it, however the reports were scheduled.
    let bound = elapsed.as_millis() as usize / THROTTLE_MS as usize + 1;
    assert!(
        n_forwards <= bound,
        "{n_forwards} forwards of {n_reports} reports in {elapsed:?} (at most {bound})"
    );
    assert!(n_reports > n_forwards, "{n_reports} reports, {n_forwards} forwards");
    // Three forwards need two full throttle windows.
    assert!(elapsed >= Duration::from_millis(2 * THROTTLE_MS), "{elapsed:?}");
    server.stop().await;
}

#[tokio::test]
async fn an_explicit_stop_forwards_one_false() {
    let server = TestServer::start().await;
    let (alice, bob, conv) = server.direct_pair().await;
    let mut a = live(&server, &alice.token).await;
    let mut b = live(&server, &bob.token).await;

    report(&mut a, conv, true).await;
    expect_next(&mut b, &typing_frame(conv, &alice, true, DEFAULT_TTL_MS)).await;
    report(&mut a, conv, false).await;
    expect_next(&mut b, &typing_frame(conv, &alice, false, DEFAULT_TTL_MS)).await;
    // A second stop, and a stop from someone who never started, forward nothing.
    report(&mut a, conv, false).await;
    let mut b2 = live(&server, &server.login("bob").await).await;
    report(&mut b2, conv, false).await;
    let seq = a.send_msg(conv, "barrier", "barrier").await.seq;
    expect_entry_next(&mut b, conv, seq).await;
    expect_entry_next(&mut a, conv, seq).await;

    // Typing again after a stop is a fresh start: forwarded at once despite the throttle.
    report(&mut a, conv, true).await;
    expect_next(&mut b, &typing_frame(conv, &alice, true, DEFAULT_TTL_MS)).await;
    server.stop().await;
}

#[tokio::test]
async fn typing_stops_when_the_typists_session_drops() {
    // A TTL far beyond the harness timeout: only the disconnect can stop it in time.
    const TTL_MS: u64 = 120_000;
    let server = TestServer::start_with(|c| c.limits.typing_ttl_ms = TTL_MS).await;
    let [alice, bob, carol] = server.users(["alice", "bob", "carol"]).await;
    server.contacts(&alice, &[&bob, &carol]).await;
    let group = server.create_group(&alice, "team", &[&bob, &carol]).await;
    let mut a1 = live(&server, &alice.token).await;
    let mut a2 = live(&server, &server.login("alice").await).await;
    let mut b = live(&server, &bob.token).await;
    let mut c = live(&server, &carol.token).await;

    report(&mut a1, group, true).await;
    for ws in [&mut b, &mut c] {
        expect_next(ws, &typing_frame(group, &alice, true, TTL_MS)).await;
    }
    // The TCP connection just goes away (no close frame); Alice's other device stays.
    a1.abort();
    for ws in [&mut b, &mut c] {
        expect_next(ws, &typing_frame(group, &alice, false, TTL_MS)).await;
    }
    let seq = a2.send_msg(group, "barrier", "barrier").await.seq;
    for ws in [&mut a2, &mut b, &mut c] {
        expect_entry_next(ws, group, seq).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn typing_lapses_when_the_client_goes_quiet() {
    const TTL_MS: u64 = 500;
    let server = TestServer::start_with(|c| c.limits.typing_ttl_ms = TTL_MS).await;
    let (alice, bob, conv) = server.direct_pair().await;
    let mut a = live(&server, &alice.token).await;
    let mut b = live(&server, &bob.token).await;

    let start = Instant::now();
    report(&mut a, conv, true).await;
    expect_next(&mut b, &typing_frame(conv, &alice, true, TTL_MS)).await;
    // Alice stays connected and says nothing more.
    expect_next(&mut b, &typing_frame(conv, &alice, false, TTL_MS)).await;
    assert!(start.elapsed() >= Duration::from_millis(TTL_MS), "lapsed after {:?}", start.elapsed());
    let seq = a.send_msg(conv, "barrier", "barrier").await.seq;
    expect_entry_next(&mut b, conv, seq).await;
    expect_entry_next(&mut a, conv, seq).await;
    server.stop().await;
}

#[tokio::test]
async fn rest_typing_works_like_the_frame_and_non_members_get_not_found() {
    let server = TestServer::start().await;
    let [alice, bob, dave] = server.users(["alice", "bob", "dave"]).await;
    let conv = server.create_direct(&alice, &bob).await;
    let bob_dave = server.create_direct(&bob, &dave).await;
    let mut a = live(&server, &alice.token).await;
    let mut b = live(&server, &bob.token).await;
    let mut d = live(&server, &dave.token).await;

    let (status, body) = post_typing(&server, &alice, conv, true).await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, serde_json::Value::Null));
    expect_next(&mut b, &typing_frame(conv, &alice, true, DEFAULT_TTL_MS)).await;
    // Repeated within the throttle: accepted, not forwarded.
    let (status, _) = post_typing(&server, &alice, conv, true).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = post_typing(&server, &alice, conv, false).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    expect_next(&mut b, &typing_frame(conv, &alice, false, DEFAULT_TTL_MS)).await;

    // Dave is no member: `not_found` over REST and over the socket, and nobody hears him.
    for (conv, user) in [(conv, &dave), (ConversationId(999_999), &alice)] {
        let (status, body) = post_typing(&server, user, conv, true).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["code"], "not_found");
    }
    let reply = d
        .request(|req_id| ClientFrame::Typing {
            req_id: Some(req_id),
            conversation: conv,
            typing: true,
        })
        .await;
    match reply {
        ServerFrame::Error { error, .. } => assert_eq!(error.code, ErrorCode::NotFound),
        other => panic!("expected not_found, got {other:?}"),
    }
    // The typist's own session heard none of it; Bob heard nothing of Dave.
    let seq = a.send_msg(conv, "barrier", "barrier").await.seq;
    expect_entry_next(&mut a, conv, seq).await;
    expect_entry_next(&mut b, conv, seq).await;
    let seq = b.send_msg(bob_dave, "barrier", "barrier").await.seq;
    expect_entry_next(&mut d, bob_dave, seq).await;
    server.stop().await;
}
