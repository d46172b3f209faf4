//! Blocking (issue 13, part 3): a blocked user cannot open a direct conversation with the
//! blocker or add them to a group (refused exactly as for an unknown user), neither writes
//! in their direct conversation any more, presence stops both ways at once and cannot be
//! subscribed again, and the blocked user's typing never reaches the blocker in a group
//! they share (others still see it). The list syncs to the blocker's devices as `blocks`
//! frames; the blocked user is told nothing.

use std::collections::BTreeMap;

use natter_proto::rest::{Blocks, CreateConversation};
use natter_proto::{ClientFrame, ConversationId, Presence, ServerFrame, Status, UserId};
use natter_testkit::{TestServer, WsClient, reply_id};
use reqwest::{Method, StatusCode};

async fn synced(server: &TestServer, token: &str) -> WsClient {
    let mut ws = server.ws_token(token).await;
    ws.sync(BTreeMap::new()).await;
    ws
}

async fn subscribe(ws: &mut WsClient, users: &[UserId]) -> (Vec<Presence>, Vec<UserId>) {
    let id = ws.req_id();
    ws.send_frame(&ClientFrame::SubscribePresence { req_id: id, users: users.to_vec() }).await;
    match ws
        .next_matching(
            |f| matches!(f, ServerFrame::PresenceSubscribed { req_id, .. } if *req_id == id),
        )
        .await
    {
        ServerFrame::PresenceSubscribed { users, denied, .. } => (users, denied),
        _ => unreachable!(),
    }
}

async fn next_blocks(ws: &mut WsClient) -> Vec<UserId> {
    match ws.next_matching(|f| matches!(f, ServerFrame::Blocks { .. })).await {
        ServerFrame::Blocks { blocked } => blocked,
        _ => unreachable!(),
    }
}

async fn set_block(server: &TestServer, token: &str, user: UserId, on: bool) -> StatusCode {
    let method = if on { Method::PUT } else { Method::DELETE };
    let path = format!("/v1/me/blocks/{}", user.0);
    server.call(method, &path, Some(token), None::<&()>).await.0
}

/// Typing frames `ws` gets before the live entry `(conv, seq)`, the barrier; other frames
/// (replies, presence) are skipped.
async fn typing_before(ws: &mut WsClient, conv: ConversationId, seq: u64) -> Vec<UserId> {
    let mut typists = Vec::new();
    loop {
        match ws.next().await {
            ServerFrame::Typing { user, .. } => typists.push(user),
            ServerFrame::Entry { entry } if entry.conversation == conv && entry.seq == seq => {
                return typists;
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_user_reaches_nothing_of_the_blocker() {
    let server = TestServer::start().await;
    let [alice, bob, carol, dave] = server.users(["alice", "bob", "carol", "dave"]).await;
    let ab = server.create_direct(&alice, &bob).await;
    server.create_direct(&alice, &carol).await;
    server.create_direct(&bob, &carol).await;
    let group = server.create_group(&alice, "trio", &[&bob, &carol]).await;
    let mut alice_phone = synced(&server, &alice.token).await;
    let alice_laptop_token = server.login("alice").await;
    let mut alice_laptop = synced(&server, &alice_laptop_token).await;
    let mut bob_ws = synced(&server, &bob.token).await;
    let mut carol_ws = synced(&server, &carol.token).await;
    let (now, denied) = subscribe(&mut bob_ws, &[alice.id]).await;
    assert!(denied.is_empty());
    assert_eq!(now[0].status, Status::Online, "bob sees alice before the block");

    // Alice blocks bob (twice: the same) and dave; both her devices get the list.
    assert_eq!(set_block(&server, &alice.token, bob.id, true).await, StatusCode::NO_CONTENT);
    assert_eq!(next_blocks(&mut alice_laptop).await, vec![bob.id]);
    assert_eq!(next_blocks(&mut alice_phone).await, vec![bob.id]);
    assert_eq!(set_block(&server, &alice.token, bob.id, true).await, StatusCode::NO_CONTENT);
    assert_eq!(set_block(&server, &alice.token, dave.id, true).await, StatusCode::NO_CONTENT);
    let list: Blocks =
        server.ok(Method::GET, "/v1/me/blocks", &alice.token, None::<&()>, StatusCode::OK).await;
    assert_eq!(list.blocked, vec![bob.id, dave.id]);

    // Presence: bob is told alice is offline (no last-seen), cannot watch her again, and
    // she cannot watch him.
    let gone = match bob_ws.next_matching(|f| matches!(f, ServerFrame::Presence { .. })).await {
        ServerFrame::Presence { users } => users,
        _ => unreachable!(),
    };
    assert_eq!(gone, vec![Presence { user: alice.id, status: Status::Offline, last_seen: None }]);
    assert_eq!(subscribe(&mut bob_ws, &[alice.id, carol.id]).await.1, vec![alice.id]);
    assert_eq!(subscribe(&mut alice_phone, &[bob.id]).await.1, vec![bob.id]);

    // Their direct conversation takes no more messages, from either side.
    let (status, json) = server
        .post_entry(
            &bob,
            ab,
            "b1",
            natter_proto::NewEntry::Message {
                body: "hello?".into(),
                reply_to: None,
                attachments: vec![],
                mentions: Vec::new(),
            },
        )
        .await;
    assert_eq!((status, json["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")));
    let (status, _) = server
        .post_entry(
            &alice,
            ab,
            "a1",
            natter_proto::NewEntry::Message {
                body: "go away".into(),
                reply_to: None,
                attachments: vec![],
                mentions: Vec::new(),
            },
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Dave cannot open a conversation with alice, and bob cannot add her to his group: both
    // answered exactly as for an account that does not exist.
    let unknown = UserId(999_999);
    let direct = |peer| CreateConversation::Direct { peer };
    let to_alice = server
        .call(Method::POST, "/v1/conversations", Some(&dave.token), Some(&direct(alice.id)))
        .await;
    let to_nobody = server
        .call(Method::POST, "/v1/conversations", Some(&dave.token), Some(&direct(unknown)))
        .await;
    assert_eq!(to_alice.0, StatusCode::NOT_FOUND);
    assert_eq!(to_alice, to_nobody);
    let bobs = server.create_group(&bob, "bob's", &[&carol]).await;
    let path = format!("/v1/conversations/{bobs}/members");
    let add = |user: UserId| serde_json::json!({ "user_id": user.0 });
    let add_alice = server.call(Method::POST, &path, Some(&bob.token), Some(&add(alice.id))).await;
    let add_nobody = server.call(Method::POST, &path, Some(&bob.token), Some(&add(unknown))).await;
    assert_eq!(add_alice.0, StatusCode::NOT_FOUND, "{}", add_alice.1);
    assert_eq!(add_alice, add_nobody);
    let created = server
        .call(
            Method::POST,
            "/v1/conversations",
            Some(&bob.token),
            Some(&CreateConversation::Group { title: "again".into(), members: vec![alice.id] }),
        )
        .await;
    assert_eq!(created.0, StatusCode::NOT_FOUND);

    // In the group they share, bob's typing reaches carol and not alice; carol's reaches
    // both. The barrier is a message committed after the typing reports.
    let ok = bob_ws
        .request(|r| ClientFrame::Typing { req_id: Some(r), conversation: group, typing: true })
        .await;
    assert!(matches!(ok, ServerFrame::Ok { .. }), "{ok:?}");
    let ok = carol_ws
        .request(|r| ClientFrame::Typing { req_id: Some(r), conversation: group, typing: true })
        .await;
    assert!(matches!(ok, ServerFrame::Ok { .. }), "{ok:?}");
    let barrier = server.send_rest(&carol, group, "barrier", "after typing").await;
    assert_eq!(typing_before(&mut alice_phone, group, barrier.seq).await, vec![carol.id]);
    assert_eq!(typing_before(&mut bob_ws, group, barrier.seq).await, vec![carol.id]);
    let mut carol_saw = typing_before(&mut carol_ws, group, barrier.seq).await;
    carol_saw.sort();
    assert_eq!(carol_saw, vec![bob.id]);
    // Messages in the group still flow both ways (clients hide them by the list).
    let from_bob = bob_ws.send_msg(group, "g1", "still here").await;
    assert!(typing_before(&mut alice_phone, group, from_bob.seq).await.is_empty());

    // Bob was told nothing of the block: no blocks frame reached him before his next entry.
    let barrier = server.send_rest(&carol, group, "barrier2", "x").await;
    loop {
        match bob_ws.next().await {
            ServerFrame::Blocks { .. } => panic!("the blocked user is told of the block"),
            ServerFrame::Entry { entry } if entry.seq == barrier.seq => break,
            f if reply_id(&f).is_some() => {}
            _ => {}
        }
    }

    // Unblocked: the list syncs, writing and presence come back.
    assert_eq!(set_block(&server, &alice.token, bob.id, false).await, StatusCode::NO_CONTENT);
    // (After the lists of the repeated block and of dave's.)
    assert_eq!(next_blocks(&mut alice_laptop).await, vec![bob.id]);
    assert_eq!(next_blocks(&mut alice_laptop).await, vec![bob.id, dave.id]);
    assert_eq!(next_blocks(&mut alice_laptop).await, vec![dave.id]);
    server.send_rest(&bob, ab, "b2", "friends again").await;
    let (now, denied) = subscribe(&mut bob_ws, &[alice.id]).await;
    assert!(denied.is_empty());
    assert_eq!(now[0].status, Status::Online);

    // Bad input.
    assert_eq!(set_block(&server, &alice.token, alice.id, true).await, StatusCode::BAD_REQUEST);
    assert_eq!(set_block(&server, &alice.token, unknown, true).await, StatusCode::NOT_FOUND);
    let (status, json) =
        server.call(Method::PUT, "/v1/me/blocks/x", Some(&alice.token), None::<&()>).await;
    assert_eq!((status, json["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")));
}
