//! G6 for presence: ephemeral is cheap, and presence is never broadcast. A session sees the
//! presence of the users it subscribed to (`subscribe_presence`, or
//! `PUT /v1/streams/{session_id}/presence` for HTTP streams), and nobody else's:
//! - liveness comes from the transport: a client that stops answering pings is closed as
//!   idle (4009) and its user turns offline, with a `last_seen`;
//! - only users who share a conversation can be watched, at most `max_presence_subscriptions`
//!   of them; the rest come back in `denied` and are never reported;
//! - a session that did not subscribe gets no presence frame, whoever comes and goes;
//! - changes are batched (one frame per `presence_batch_ms` for many changes) and damped (a
//!   reconnect within `presence_grace_ms` is no change at all);
//! - `set_status` moves a user between `online` and `away` (away only when every session is).
//!
//! "No frame" is shown with barriers: a later change or message that must arrive after
//! anything the server could have sent before it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use futures_util::{StreamExt, stream};
use natter_proto::rest::{PollRequest, PollResponse, PresenceSubscribed, PresenceSubscription};
use natter_proto::{ClientFrame, ErrorCode, Presence, ServerFrame, Status, UserId, close};
use natter_testkit::{TestServer, TestUser, WAIT, WsClient};
use reqwest::{Method, StatusCode};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A WebSocket authenticated by header, with the session id its `ready` frame names.
async fn connect(server: &TestServer, token: &str) -> (WsClient, u64) {
    let mut req = server.ws_url().into_client_request().expect("ws request");
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
    let mut ws = WsClient::connect(req).await.expect("ws connects");
    match ws.next().await {
        ServerFrame::Ready { session_id: Some(sid), .. } => (ws, sid),
        other => panic!("expected ready with a session id, got {other:?}"),
    }
}

/// `subscribe_presence`, and its reply (the harness's `reply_id` does not know
/// `presence_subscribed`, so the reply is matched here).
async fn subscribe(ws: &mut WsClient, users: &[UserId]) -> (Vec<Presence>, Vec<UserId>) {
    let id = ws.req_id();
    ws.send_frame(&ClientFrame::SubscribePresence { req_id: id, users: users.to_vec() }).await;
    let reply = ws
        .next_matching(|f| match f {
            ServerFrame::PresenceSubscribed { req_id, .. } => *req_id == id,
            ServerFrame::Error { req_id, .. } => *req_id == Some(id),
            _ => false,
        })
        .await;
    match reply {
        ServerFrame::PresenceSubscribed { users, denied, .. } => (users, denied),
        other => panic!("expected presence_subscribed, got {other:?}"),
    }
}

/// Sets this session's status and waits for the `ok`: the change is then recorded.
async fn set_status(ws: &mut WsClient, status: Status) {
    let reply = ws.request(|req_id| ClientFrame::SetStatus { req_id: Some(req_id), status }).await;
    assert!(matches!(reply, ServerFrame::Ok { .. }), "set_status {status:?}: {reply:?}");
}

/// The next `presence` frame's users (other frames are kept).
async fn next_presence(ws: &mut WsClient) -> Vec<Presence> {
    match ws.next_matching(|f| matches!(f, ServerFrame::Presence { .. })).await {
        ServerFrame::Presence { users } => users,
        _ => unreachable!("matched a presence frame"),
    }
}

/// Reads `presence` frames until one mentions `user`; returns every frame read, that one
/// last.
async fn presence_until(ws: &mut WsClient, user: UserId) -> Vec<Vec<Presence>> {
    let mut frames = Vec::new();
    loop {
        let users = next_presence(ws).await;
        let done = users.iter().any(|p| p.user == user);
        frames.push(users);
        if done {
            return frames;
        }
    }
}

fn status_in(list: &[Presence], user: UserId) -> Option<Status> {
    list.iter().find(|p| p.user == user).map(|p| p.status)
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as i64
}

#[tokio::test]
async fn a_client_that_stops_answering_pings_goes_offline() {
    // With pings every 100 ms the harness's per-read timeout restarts on every ping, so a
    // missing frame would hang instead of failing: this bounds the whole test.
    tokio::time::timeout(3 * WAIT, silent_client_goes_offline())
        .await
        .expect("the test did not finish in time");
}

async fn silent_client_goes_offline() {
    let server = TestServer::start_with(|c| {
        c.limits.ping_interval_ms = 100;
        c.limits.idle_timeout_ms = 800;
        c.limits.presence_grace_ms = 100;
        c.limits.presence_batch_ms = 100;
    })
    .await;
    let [alice, bob, carol, erin] = server.users(["alice", "bob", "carol", "erin"]).await;
    server.contacts(&alice, &[&bob, &carol, &erin]).await;
    server.create_group(&alice, "team", &[&bob, &carol, &erin]).await;

    // Bob's session (and its idle timer) starts after this instant.
    let connected_at = now_ms();
    let (bob_ws, _) = connect(&server, &bob.token).await;
    // Erin sends nothing of her own, but her client reads, so it answers every ping.
    let (mut erin_ws, _) = connect(&server, &erin.token).await;
    let erin_reader =
        tokio::spawn(async move { while erin_ws.next_within(WAIT).await.is_some() {} });
    let (mut a, _) = connect(&server, &alice.token).await;

    // The reply shows current status: Bob and Erin connected, Carol never was.
    let (now, denied) = subscribe(&mut a, &[bob.id, carol.id, erin.id]).await;
    assert!(denied.is_empty(), "{denied:?}");
    assert_eq!(
        now,
        vec![
            Presence { user: bob.id, status: Status::Online, last_seen: None },
            Presence { user: carol.id, status: Status::Offline, last_seen: None },
            Presence { user: erin.id, status: Status::Online, last_seen: None },
        ]
    );

    // Bob's client hangs: the socket stays open but nothing reads it, so no pong goes back.
    let mut bob_ws = bob_ws;
    let frames = presence_until(&mut a, bob.id).await;
    let got = frames.concat();
    assert_eq!(got.len(), 1, "only Bob changed: {frames:?}");
    assert_eq!(got[0].status, Status::Offline);
    let last_seen = got[0].last_seen.expect("an offline user has a last_seen");
    assert!(
        last_seen >= connected_at + 800 && last_seen <= now_ms(),
        "last_seen {last_seen}, connected at {connected_at}"
    );
    // The server closed it (`closed` fails if not), as idle. The close frame may be lost:
    // reading the pings queued before it makes the client answer them, on a socket the
    // server already closed, which can reset the connection first.
    if let Some(frame) = bob_ws.closed().await {
        assert_eq!(u16::from(frame.code), close::IDLE);
    }

    // Erin answered every ping all along: still online. Bob stays offline; Carol never came.
    let (now, _) = subscribe(&mut a, &[bob.id, carol.id, erin.id]).await;
    assert_eq!(
        now,
        vec![
            Presence { user: bob.id, status: Status::Offline, last_seen: Some(last_seen) },
            Presence { user: carol.id, status: Status::Offline, last_seen: None },
            Presence { user: erin.id, status: Status::Online, last_seen: None },
        ]
    );
    erin_reader.abort();
    server.stop().await;
}

#[tokio::test]
async fn no_presence_without_a_shared_conversation() {
    let server = TestServer::start_with(|c| {
        c.limits.presence_batch_ms = 100;
        c.limits.presence_grace_ms = 0;
    })
    .await;
    let [alice, bob, eve, frank] = server.users(["alice", "bob", "eve", "frank"]).await;
    server.create_direct(&alice, &bob).await;
    // Eve shares a conversation with Frank only.
    server.create_direct(&frank, &eve).await;

    let (mut bob_ws, _) = connect(&server, &bob.token).await;
    let (mut a, _) = connect(&server, &alice.token).await;
    let (mut f, _) = connect(&server, &frank.token).await;
    let (now, denied) = subscribe(&mut a, &[bob.id, eve.id, UserId(999_999)]).await;
    assert_eq!(now, vec![Presence { user: bob.id, status: Status::Online, last_seen: None }]);
    assert_eq!(denied, vec![eve.id, UserId(999_999)]);
    let (now, denied) = subscribe(&mut f, &[eve.id]).await;
    assert!(denied.is_empty());
    assert_eq!(status_in(&now, eve.id), Some(Status::Offline));

    // Eve comes, goes away, comes back and leaves; Frank (who may watch her) sees each
    // change published.
    let (mut e, _) = connect(&server, &eve.token).await;
    wait_for_all(&mut f, &[eve.id], Status::Online).await;
    set_status(&mut e, Status::Away).await;
    wait_for_all(&mut f, &[eve.id], Status::Away).await;
    set_status(&mut e, Status::Online).await;
    wait_for_all(&mut f, &[eve.id], Status::Online).await;
    e.close().await;
    wait_for_all(&mut f, &[eve.id], Status::Offline).await;

    // Barrier: Bob goes away after all of Eve's changes were published; nothing about Eve
    // reached Alice before or with it.
    set_status(&mut bob_ws, Status::Away).await;
    let frames = presence_until(&mut a, bob.id).await;
    assert_eq!(
        frames,
        vec![vec![Presence { user: bob.id, status: Status::Away, last_seen: None }]]
    );
    server.stop().await;
}

#[tokio::test]
async fn a_session_that_did_not_subscribe_gets_no_presence() {
    const N: usize = 100;
    let server = TestServer::start_with(|c| {
        c.limits.presence_batch_ms = 100;
        c.limits.presence_grace_ms = 0;
    })
    .await;
    let [olga, wally] = server.users(["olga", "wally"]).await;
    let handles: Vec<String> = (0..N).map(|i| format!("user{i:03}")).collect();
    let users = register_all(&server, &handles).await;
    let ids: Vec<UserId> = users.iter().map(|u| u.id).collect();
    let mut members: Vec<&TestUser> = users.iter().collect();
    members.push(&wally);
    // Strangers to olga: each joins by accepting the invitation.
    let group = server.create_group_joined(&olga, "everyone", &members).await;

    // Olga shares a conversation with all of them and never subscribes; Wally watches them
    // all, to know when each change was published.
    let (mut o, _) = connect(&server, &olga.token).await;
    o.sync(BTreeMap::new()).await;
    let (mut w, _) = connect(&server, &wally.token).await;
    let (now, denied) = subscribe(&mut w, &ids).await;
    assert!(denied.is_empty(), "{denied:?}");
    assert!(now.iter().all(|p| p.status == Status::Offline));

    let clients = join_all(users.iter().map(|u| connect(&server, &u.token))).await;
    wait_for_all(&mut w, &ids, Status::Online).await;
    join_all(clients.into_iter().map(|(ws, _)| ws.close())).await;
    wait_for_all(&mut w, &ids, Status::Offline).await;

    // Barrier: every presence frame the server made is already out (Wally got the last
    // one); a message sent now must be the first thing Olga ever receives after her sync.
    let ack = server.send_rest(&wally, group, "barrier", "barrier").await;
    match o.next().await {
        ServerFrame::Entry { entry } => {
            assert_eq!((entry.conversation, entry.seq), (group, ack.seq))
        }
        other => panic!("a non-subscriber got {other:?}"),
    }
    server.stop().await;
}

/// Registers `handles`, a few at a time: argon2 is slow on purpose, and with all of them at
/// once single requests would queue past the harness timeout on a busy machine.
async fn register_all(server: &TestServer, handles: &[String]) -> Vec<TestUser> {
    stream::iter(handles).map(|h| server.user(h)).buffered(4).collect().await
}

/// Folds a presence frame into a view of who is what.
fn apply(view: &mut HashMap<UserId, Status>, users: &[Presence]) {
    for p in users {
        view.insert(p.user, p.status);
    }
}

/// Reads presence frames until every one of `users` was last reported with `status`.
async fn wait_for_all(ws: &mut WsClient, users: &[UserId], status: Status) {
    let mut pending: HashSet<UserId> = users.iter().copied().collect();
    while !pending.is_empty() {
        for p in next_presence(ws).await {
            if p.status == status {
                pending.remove(&p.user);
            } else {
                pending.insert(p.user);
            }
        }
    }
}

#[tokio::test]
async fn flapping_users_are_batched() {
    const N: usize = 20;
    const CYCLES: usize = 5;
    const BATCH_MS: u64 = 1_000;
    let server = TestServer::start_with(|c| {
        c.limits.presence_batch_ms = BATCH_MS;
        c.limits.presence_grace_ms = 0;
    })
    .await;
    let sam = server.user("sam").await;
    let handles: Vec<String> = (0..N).map(|i| format!("flap{i:02}")).collect();
    let users = register_all(&server, &handles).await;
    let ids: Vec<UserId> = users.iter().map(|u| u.id).collect();
    let members = users.iter().collect::<Vec<_>>();
    server.contacts(&sam, &members).await;
    server.create_group(&sam, "flappers", &members).await;
    let (mut s, _) = connect(&server, &sam.token).await;
    let (now, denied) = subscribe(&mut s, &ids).await;
    assert!(denied.is_empty());
    assert!(now.iter().all(|p| p.status == Status::Offline));

    // Every user connects and disconnects CYCLES times, all at once (2 * N * CYCLES changes):
    // CYCLES - 1 quick round trips, then a last connection kept until Sam has seen everyone
    // online, so that each user is seen online at least once whatever the batch timing.
    let started = Instant::now();
    let flap = |u: &TestUser| {
        let token = u.token.clone();
        let server = &server;
        async move {
            for _ in 1..CYCLES {
                let (ws, _) = connect(server, &token).await;
                ws.close().await;
            }
            connect(server, &token).await.0
        }
    };
    let last = join_all(users.iter().map(flap)).await;
    let mut frames: Vec<Vec<Presence>> = Vec::new();
    let mut view: HashMap<UserId, Status> = now.iter().map(|p| (p.user, p.status)).collect();
    while view.values().any(|s| *s != Status::Online) {
        frames.push(next_presence(&mut s).await);
        apply(&mut view, frames.last().expect("just pushed"));
    }
    join_all(last.into_iter().map(WsClient::close)).await;
    let n_changes = 2 * N * CYCLES;

    // Read until every user is seen offline, then check that against the server's own view
    // (a subscribe reply); a close the server had not handled yet means more to read.
    loop {
        while view.values().any(|s| *s != Status::Offline) {
            frames.push(next_presence(&mut s).await);
            apply(&mut view, frames.last().expect("just pushed"));
        }
        let (now, _) = subscribe(&mut s, &ids).await;
        view = now.iter().map(|p| (p.user, p.status)).collect();
        if view.values().all(|s| *s == Status::Offline) {
            break;
        }
    }
    let elapsed = started.elapsed();

    // At most one frame per batch window, far fewer than the changes, each with a user at
    // most once and several users on average.
    let n_windows = (elapsed.as_millis() / BATCH_MS as u128) as usize + 1;
    let n_reports: usize = frames.iter().map(Vec::len).sum();
    assert!(frames.len() <= n_windows, "{} frames in {elapsed:?}", frames.len());
    assert!(frames.len() * 4 <= n_changes, "{} frames for {n_changes} changes", frames.len());
    assert!(n_reports >= 2 * frames.len(), "few users per frame: {frames:?}");
    for users in &frames {
        let distinct: HashSet<UserId> = users.iter().map(|p| p.user).collect();
        assert_eq!(distinct.len(), users.len(), "a user twice in one frame: {users:?}");
        assert!(users.iter().all(|p| ids.contains(&p.user)), "not watched: {users:?}");
    }
    // Every user was seen online at some point, and last seen offline with a last_seen.
    for id in &ids {
        let mine: Vec<&Presence> = frames.iter().flatten().filter(|p| p.user == *id).collect();
        assert!(mine.iter().any(|p| p.status == Status::Online), "{id}: {mine:?}");
        let last = mine.last().expect("reported");
        assert_eq!(last.status, Status::Offline, "{id}: {mine:?}");
        assert!(last.last_seen.is_some(), "{last:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_reconnect_within_the_grace_is_no_change() {
    const GRACE_MS: u64 = 1_500;
    let server = TestServer::start_with(|c| {
        c.limits.presence_batch_ms = 100;
        c.limits.presence_grace_ms = GRACE_MS;
    })
    .await;
    let [sam, dan, eli] = server.users(["sam", "dan", "eli"]).await;
    server.contacts(&sam, &[&dan, &eli]).await;
    server.create_group(&sam, "team", &[&dan, &eli]).await;
    let (dan_ws, _) = connect(&server, &dan.token).await;
    let (eli_ws, _) = connect(&server, &eli.token).await;
    let (mut s, _) = connect(&server, &sam.token).await;
    let (now, _) = subscribe(&mut s, &[dan.id, eli.id]).await;
    assert!(now.iter().all(|p| p.status == Status::Online), "{now:?}");

    // Dan drops and comes straight back; then Eli leaves for good.
    let dropped = Instant::now();
    dan_ws.close().await;
    let (_dan_again, _) = connect(&server, &dan.token).await;
    let back_after = dropped.elapsed();
    assert!(back_after < Duration::from_millis(GRACE_MS), "reconnect took {back_after:?}");
    let eli_left = Instant::now();
    eli_ws.close().await;

    // Eli's offline is published only after the grace. Had the server counted Dan's drop
    // (handled before his new session started, or it counts for nothing), that was before
    // Eli's: an offline for Dan would have been due no later, so it would be here already.
    let frames = presence_until(&mut s, eli.id).await;
    let got = frames.concat();
    assert_eq!(got.len(), 1, "{frames:?}");
    assert_eq!((got[0].user, got[0].status), (eli.id, Status::Offline));
    assert!(eli_left.elapsed() >= Duration::from_millis(GRACE_MS), "{:?}", eli_left.elapsed());
    let (now, _) = subscribe(&mut s, &[dan.id]).await;
    assert_eq!(status_in(&now, dan.id), Some(Status::Online));
    server.stop().await;
}

#[tokio::test]
async fn set_status_away_and_back() {
    let server = TestServer::start_with(|c| {
        c.limits.presence_batch_ms = 100;
        c.limits.presence_grace_ms = 0;
    })
    .await;
    let [sam, ann, ctl] = server.users(["sam", "ann", "ctl"]).await;
    server.contacts(&sam, &[&ann, &ctl]).await;
    server.create_group(&sam, "team", &[&ann, &ctl]).await;
    let (mut ann1, _) = connect(&server, &ann.token).await;
    let (mut ann2, _) = connect(&server, &server.login("ann").await).await;
    let (mut c, _) = connect(&server, &ctl.token).await;
    let (mut s, _) = connect(&server, &sam.token).await;
    subscribe(&mut s, &[ann.id, ctl.id]).await;

    // One of Ann's two sessions away: she is still online (barrier: Ctl's change comes
    // alone).
    set_status(&mut ann1, Status::Away).await;
    set_status(&mut c, Status::Away).await;
    assert_eq!(
        presence_until(&mut s, ctl.id).await,
        vec![vec![Presence { user: ctl.id, status: Status::Away, last_seen: None }]]
    );
    // Both away: away.
    set_status(&mut ann2, Status::Away).await;
    assert_eq!(
        next_presence(&mut s).await,
        vec![Presence { user: ann.id, status: Status::Away, last_seen: None }]
    );
    // Online again from one session: online.
    set_status(&mut ann1, Status::Online).await;
    assert_eq!(
        next_presence(&mut s).await,
        vec![Presence { user: ann.id, status: Status::Online, last_seen: None }]
    );
    // `offline` is not a status one sets.
    let reply = ann1
        .request(|req_id| ClientFrame::SetStatus { req_id: Some(req_id), status: Status::Offline })
        .await;
    match reply {
        ServerFrame::Error { error, .. } => assert_eq!(error.code, ErrorCode::BadRequest),
        other => panic!("expected bad_request, got {other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn subscriptions_are_capped() {
    let server = TestServer::start_with(|c| c.limits.max_presence_subscriptions = 3).await;
    let sam = server.user("sam").await;
    let mut users = Vec::new();
    for h in ["u1", "u2", "u3", "u4", "u5"] {
        users.push(server.user(h).await);
    }
    let ids: Vec<UserId> = users.iter().map(|u| u.id).collect();
    let members = users.iter().collect::<Vec<_>>();
    server.contacts(&sam, &members).await;
    server.create_group(&sam, "team", &members).await;
    let (mut s, _) = connect(&server, &sam.token).await;

    // Duplicates count once; the first three are watched, the rest refused.
    let mut asked = ids.clone();
    asked.insert(1, ids[0]);
    let (now, denied) = subscribe(&mut s, &asked).await;
    assert_eq!(now.iter().map(|p| p.user).collect::<Vec<_>>(), ids[..3]);
    assert_eq!(denied, ids[3..]);
    // Within the cap, everything is accepted (the list is replaced, not added to).
    let (now, denied) = subscribe(&mut s, &ids[2..]).await;
    assert_eq!(now.iter().map(|p| p.user).collect::<Vec<_>>(), ids[2..]);
    assert!(denied.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn http_streams_subscribe_by_session_id() {
    let server = TestServer::start_with(|c| {
        c.limits.presence_batch_ms = 100;
        c.limits.presence_grace_ms = 0;
    })
    .await;
    let [alice, bob, mallory] = server.users(["alice", "bob", "mallory"]).await;
    server.contacts(&alice, &[&bob, &mallory]).await;
    server.create_group(&alice, "team", &[&bob, &mallory]).await;
    let (mut bob_ws, _) = connect(&server, &bob.token).await;

    // A WebSocket session's id, from its `ready` frame.
    let (mut a, sid) = connect(&server, &alice.token).await;
    let path = format!("/v1/streams/{sid}/presence");
    let body = PresenceSubscription { users: vec![bob.id] };
    let res: PresenceSubscribed =
        server.ok(Method::PUT, &path, &alice.token, Some(&body), StatusCode::OK).await;
    assert_eq!(res.users, vec![Presence { user: bob.id, status: Status::Online, last_seen: None }]);
    assert!(res.denied.is_empty());
    set_status(&mut bob_ws, Status::Away).await;
    assert_eq!(
        next_presence(&mut a).await,
        vec![Presence { user: bob.id, status: Status::Away, last_seen: None }]
    );
    // Someone else's session, or one that does not exist, is not found.
    for (token, sid) in [(&mallory.token, sid), (&alice.token, 999_999)] {
        let path = format!("/v1/streams/{sid}/presence");
        let (status, json) = server.call(Method::PUT, &path, Some(token), Some(&body)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{json}");
        assert_eq!(json["code"], "not_found");
    }

    // A long-poll stream: its id comes with the first response (its `ready` names it too).
    let first =
        poll(&server, &alice, PollRequest { timeout_ms: Some(0), ..Default::default() }).await;
    match first.events.first() {
        Some(ServerFrame::Ready { session_id, .. }) => assert_eq!(*session_id, Some(first.stream)),
        other => panic!("expected ready first, got {other:?}"),
    }
    let path = format!("/v1/streams/{}/presence", first.stream);
    let res: PresenceSubscribed =
        server.ok(Method::PUT, &path, &alice.token, Some(&body), StatusCode::OK).await;
    assert_eq!(status_in(&res.users, bob.id), Some(Status::Away));
    // A stream's status is set over REST too (Bob's WebSocket watches Alice). With her
    // WebSocket away, the poll stream keeps her online until it says away as well.
    subscribe(&mut bob_ws, &[alice.id]).await;
    set_status(&mut a, Status::Away).await;
    let path = format!("/v1/streams/{}/status", first.stream);
    let away = natter_proto::rest::SetStatus { status: Status::Away };
    let (status, json) = server.call(Method::PUT, &path, Some(&alice.token), Some(&away)).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{json}");
    assert_eq!(
        next_presence(&mut bob_ws).await,
        vec![Presence { user: alice.id, status: Status::Away, last_seen: None }]
    );
    let (status, _) = server.call(Method::PUT, &path, Some(&mallory.token), Some(&away)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Bob comes back online: the next poll of the stream carries it.
    set_status(&mut bob_ws, Status::Online).await;
    let req = PollRequest {
        stream: Some(first.stream),
        cursors: first.cursors.clone(),
        timeout_ms: Some(WAIT.as_millis() as u64),
        limit: None,
    };
    let next = poll(&server, &alice, req).await;
    assert_eq!(next.stream, first.stream);
    assert_eq!(
        next.events,
        vec![ServerFrame::Presence {
            users: vec![Presence { user: bob.id, status: Status::Online, last_seen: None }]
        }]
    );
    server.stop().await;
}

async fn poll(server: &TestServer, user: &TestUser, req: PollRequest) -> PollResponse {
    server.ok(Method::POST, "/v1/poll", &user.token, Some(&req), StatusCode::OK).await
}
