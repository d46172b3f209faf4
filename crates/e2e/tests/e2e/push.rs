//! Push notifications, first part (issue 14): registrations per device with the `webhook`
//! provider (the app's own gateway, here a real HTTP server on loopback that checks each
//! request's signature), for members with no live session. Fifty quick messages to an
//! offline member make one notification; a connected member gets none; reading on another
//! device drops the pending one and sends a `clear` for the one shown; a muted conversation
//! and do-not-disturb get none; a user's pushes are capped per minute (the extra waits); a
//! gateway 5xx is retried, a 410 deletes the token; logging
//! out deletes the device's registrations. A group of 1,000 pushes only to the members a
//! message mentions (by id or `@handle`) and to the author of the message it replies to.
//! In a three-node cluster, a member connected to another node gets no push, one
//! connected nowhere gets exactly one (whichever node claims it).

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use hmac::{KeyInit, Mac};
use natter_proto::rest::PushRegistrations;
use natter_testkit::{TestServer, TestUser, poll_until};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const SECRET: &str = "the push gateway's shared secret";

/// Every call the gateway got: its body and whether the signature checked out.
type Calls = Arc<Mutex<Vec<(Value, bool)>>>;

/// The app's push gateway: `dead…` tokens answer 410; a `flaky…` token's first call 503.
async fn gateway() -> (String, Calls) {
    let calls: Calls = Arc::default();
    let log = calls.clone();
    let app = axum::Router::new().route(
        "/push",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let log = log.clone();
            async move {
                let mut mac =
                    hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
                mac.update(&body);
                let want: String =
                    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
                let signed = headers.get("x-natter-signature").and_then(|v| v.to_str().ok())
                    == Some(format!("sha256={want}").as_str());
                let call: Value = serde_json::from_slice(&body).unwrap();
                let token = call["registration"].as_str().unwrap_or_default().to_owned();
                let mut log = log.lock().unwrap();
                let earlier =
                    log.iter().filter(|(c, _)| c["registration"] == token.as_str()).count();
                log.push((call, signed));
                if token.starts_with("dead") {
                    AxumStatus::GONE
                } else if token.starts_with("flaky") && earlier == 0 {
                    AxumStatus::SERVICE_UNAVAILABLE
                } else {
                    AxumStatus::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/push", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, calls)
}

async fn register(server: &TestServer, token: &str, push_token: &str) {
    let body = json!({"provider": "webhook", "token": push_token});
    let (status, json) = server.call(Method::POST, "/v1/me/push", Some(token), Some(&body)).await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
}

/// The calls for `push_token` so far.
fn calls_for(calls: &Calls, push_token: &str) -> Vec<Value> {
    calls
        .lock()
        .unwrap()
        .iter()
        .filter(|(c, _)| c["registration"] == push_token)
        .map(|(c, _)| c.clone())
        .collect()
}

/// Waits until `push_token` has had `n` calls; returns them.
async fn wait_calls(calls: &Calls, push_token: &str, n: usize) -> Vec<Value> {
    poll_until(
        &format!("{n} pushes to {push_token}"),
        || async { Some(calls_for(calls, push_token)).filter(|c| c.len() >= n) },
        || format!("got {:?}", calls_for(calls, push_token)),
    )
    .await
}

pub(crate) async fn read_up_to(
    server: &TestServer,
    user: &TestUser,
    conv: natter_proto::ConversationId,
    seq: u64,
) {
    let body = json!({"read_seq": seq});
    let path = format!("/v1/conversations/{conv}/cursors");
    let (status, json) = server.call(Method::PUT, &path, Some(&user.token), Some(&body)).await;
    assert!(status.is_success(), "{json}");
    // Cursors are written in batches: wait until this one is.
    let members = format!("/v1/conversations/{conv}/members");
    poll_until(
        "the read cursor stored",
        || async {
            let list: Vec<natter_proto::rest::Member> =
                server.ok(Method::GET, &members, &user.token, None::<&()>, StatusCode::OK).await;
            list.iter().any(|m| m.user_id == user.id && m.read_seq >= seq).then_some(())
        },
        || "not yet".into(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_members_get_one_coalesced_push_and_nobody_else_does() {
    let (url, calls) = gateway().await;
    let server = TestServer::start_with(move |c| {
        c.push.webhook_url = Some(url);
        c.push.webhook_secret = Some(SECRET.into());
        c.push.window_ms = 1_500;
        c.limits.receipt_flush_ms = 20;
    })
    .await;
    let [alice, bob, carol] = server.users(["alice", "bob", "carol"]).await;
    server.contacts(&alice, &[&bob, &carol]).await;
    let group = server.create_group(&alice, "trio", &[&bob, &carol]).await;
    register(&server, &bob.token, "bob-phone").await;
    register(&server, &carol.token, "carol-phone").await;
    let _carol_online = server.synced_ws(&carol).await;

    // Fifty quick messages: bob, away, gets one notification for all of them, signed.
    let mut last = 0;
    for i in 0..50 {
        last = server.send_rest(&alice, group, &format!("m{i}"), &format!("message {i}")).await.seq;
    }
    let first = wait_calls(&calls, "bob-phone", 1).await;
    assert_eq!(first[0]["kind"], "notify");
    assert_eq!(first[0]["count"], 50, "{:?}", first[0]);
    assert_eq!(first[0]["last_seq"], last);
    assert_eq!(first[0]["sender"], "alice");
    assert_eq!(first[0]["title"], "trio");
    assert_eq!(first[0]["body"], "50 new messages");
    assert_eq!(first[0]["collapse_id"], format!("c{group}"));
    assert!(calls.lock().unwrap().iter().all(|(_, signed)| *signed), "every call is signed");

    // Bob reads on another device: the notification shown is cleared.
    read_up_to(&server, &bob, group, last).await;
    let seen = wait_calls(&calls, "bob-phone", 2).await;
    assert_eq!(
        (seen[1]["kind"].as_str(), seen[1]["last_seq"].as_u64()),
        (Some("clear"), Some(last))
    );
    assert!(seen[1].get("body").is_none(), "a clear carries no text");

    // A message bob reads before its window ends is never pushed: the next notification
    // starts at the message after it.
    let read_first = server.send_rest(&alice, group, "r", "read before it is due").await.seq;
    read_up_to(&server, &bob, group, read_first).await;
    let barrier = server.send_rest(&alice, group, "b1", "the barrier").await.seq;
    let seen = wait_calls(&calls, "bob-phone", 3).await;
    assert_eq!(seen[2]["first_seq"], barrier);
    assert_eq!(
        (seen[2]["count"].as_u64(), seen[2]["body"].as_str()),
        (Some(1), Some("the barrier"))
    );

    // Carol was connected all along: nothing for her.
    assert!(calls_for(&calls, "carol-phone").is_empty());

    // Muted, the group pushes nothing to bob; their direct chat still does.
    let ab = server.create_direct(&alice, &bob).await;
    let path = format!("/v1/conversations/{group}/notifications");
    let (status, _) =
        server.call(Method::PUT, &path, Some(&bob.token), Some(&json!({"forever": true}))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    server.send_rest(&alice, group, "g", "muted for bob").await;
    let direct = server.send_rest(&alice, ab, "d", "hi bob").await.seq;
    let seen = wait_calls(&calls, "bob-phone", 4).await;
    let conv_of = |c: &Value| c["conversation"].as_i64().unwrap();
    assert!(seen[3..].iter().all(|c| conv_of(c) == ab.0), "{seen:?}");
    assert_eq!(seen[3]["last_seq"], direct);
    assert!(seen[3].get("title").is_none(), "a direct chat has no title");
    // Do not disturb: nothing at all (shown with a barrier: a push to dora, who was never
    // connected, queued after bob's message).
    let (status, _) = server
        .call(
            Method::PUT,
            "/v1/me/notifications",
            Some(&bob.token),
            Some(&json!({"forever": true})),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    server.send_rest(&alice, ab, "d2", "while bob is away from it all").await;
    let dora = server.user("dora").await;
    register(&server, &dora.token, "dora-phone").await;
    let ad = server.create_direct(&alice, &dora).await;
    server.send_rest(&alice, ad, "c1", "for dora").await;
    wait_calls(&calls, "dora-phone", 1).await;
    assert_eq!(calls_for(&calls, "bob-phone").len(), 4, "do not disturb");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_failures_retry_dead_tokens_go_and_logout_removes_registrations() {
    let (url, calls) = gateway().await;
    let server = TestServer::start_with(move |c| {
        c.push.webhook_url = Some(url);
        c.push.webhook_secret = Some(SECRET.into());
        c.push.window_ms = 100;
    })
    .await;
    let [alice, dave, erin] = server.users(["alice", "dave", "erin"]).await;
    let ad = server.create_direct(&alice, &dave).await;
    let ae = server.create_direct(&alice, &erin).await;
    register(&server, &dave.token, "dead-token").await;
    register(&server, &erin.token, "flaky-phone").await;

    // A 410 deletes the token after its first call.
    server.send_rest(&alice, ad, "a1", "to dave").await;
    wait_calls(&calls, "dead-token", 1).await;
    poll_until(
        "the dead token deleted",
        || async {
            let list: PushRegistrations = server
                .ok(Method::GET, "/v1/me/push", &dave.token, None::<&()>, StatusCode::OK)
                .await;
            list.registrations.is_empty().then_some(())
        },
        || "still registered".into(),
    )
    .await;
    server.send_rest(&alice, ad, "a2", "again").await;
    // A 503 is retried (after a second), and the notification arrives once.
    let sent = server.send_rest(&alice, ae, "e1", "to erin").await.seq;
    let got = wait_calls(&calls, "flaky-phone", 2).await;
    assert_eq!(got[0]["last_seq"], sent);
    assert_eq!(got[1]["last_seq"], sent, "the same notification again");
    assert_eq!(calls_for(&calls, "dead-token").len(), 1, "never called again");

    // Bad input, and a registration that goes with its device's logout.
    let bad = json!({"provider": "carrier-pigeon", "token": "x"});
    assert_eq!(
        server.call(Method::POST, "/v1/me/push", Some(&erin.token), Some(&bad)).await.0,
        StatusCode::BAD_REQUEST
    );
    let long = json!({"provider": "webhook", "token": "x".repeat(3000)});
    assert_eq!(
        server.call(Method::POST, "/v1/me/push", Some(&erin.token), Some(&long)).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let tablet = server.login("erin").await;
    register(&server, &tablet, "erin-tablet").await;
    let list: PushRegistrations =
        server.ok(Method::GET, "/v1/me/push", &erin.token, None::<&()>, StatusCode::OK).await;
    assert_eq!(list.registrations.len(), 2);
    let (status, _) =
        server.call(Method::DELETE, "/v1/sessions/current", Some(&tablet), None::<&()>).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let list: PushRegistrations =
        server.ok(Method::GET, "/v1/me/push", &erin.token, None::<&()>, StatusCode::OK).await;
    assert_eq!(list.registrations.len(), 1, "the tablet's went with its logout");
    let id = list.registrations[0].id;
    let (status, _) = server
        .call(Method::DELETE, &format!("/v1/me/push/{id}"), Some(&alice.token), None::<&()>)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not alice's");
    let (status, _) = server
        .call(Method::DELETE, &format!("/v1/me/push/{id}"), Some(&erin.token), None::<&()>)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

/// Seeds `n` users `u0000`.. into a fresh SQLite store in `dir`, each with a device and a
/// webhook registration `phone-<handle>`, and a group of them all owned by the first:
/// what 2,000 password hashes over REST would make, in a few seconds.
async fn seed_town(
    dir: &std::path::Path,
    n: usize,
) -> (Vec<TestUser>, natter_proto::ConversationId) {
    use natter_store::sqlite::SqliteStore;
    use natter_store::{NewPushRegistration, Store, StoreLimits};
    use sha2::Digest;
    let (feed_tx, mut feed_rx) = tokio::sync::mpsc::channel(1024);
    let drain = tokio::spawn(async move { while feed_rx.recv().await.is_some() {} });
    let limits = StoreLimits { max_group_members: 1000, pool_size: 1, ..StoreLimits::default() };
    let store = SqliteStore::open(&dir.join("natter.db"), limits, feed_tx).expect("a store");
    // Never logged in with: no argon2 hash is needed.
    let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2VlZHNlZWQ$c2VlZHNlZWRzZWVkc2VlZA";
    let mut users = Vec::with_capacity(n);
    for i in 0..n {
        let handle = format!("u{i:04}");
        let id = store.create_user(&handle, hash).await.expect("a user");
        let token = format!("seeded-token-{handle}");
        let device = store
            .create_device(id, "seed", sha2::Sha256::digest(token.as_bytes()).into())
            .await
            .expect("a device");
        let reg = NewPushRegistration {
            provider: "webhook".into(),
            token: format!("phone-{handle}"),
            p256dh: None,
            auth: None,
        };
        store.add_push_registration(id, device, reg).await.expect("a registration");
        users.push(TestUser { id, handle, token });
    }
    let others: Vec<_> = users[1..].iter().map(|u| u.id).collect();
    let group = store.create_group(users[0].id, "town hall", &others).await.expect("a group").id;
    for u in &users[1..] {
        store.accept_invitation(u.id, group).await.expect("joins");
    }
    store.close().await;
    drop(store);
    drain.await.unwrap();
    (users, group)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_member_group_pushes_only_to_the_mentioned_and_the_replied_to() {
    let (url, calls) = gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let (town, group) = seed_town(dir.path(), 1000).await;
    let data_dir = dir.path().to_path_buf();
    let server = TestServer::start_with(move |c| {
        c.data_dir = data_dir;
        c.push.webhook_url = Some(url);
        c.push.webhook_secret = Some(SECRET.into());
        c.push.window_ms = 200;
    })
    .await;
    let send = |from: usize, body: Value| {
        let (server, token) = (&server, town[from].token.clone());
        async move {
            let path = format!("/v1/conversations/{group}/entries");
            let (status, json) = server.call(Method::POST, &path, Some(&token), Some(&body)).await;
            assert_eq!(status, StatusCode::CREATED, "{json}");
            json["seq"].as_u64().expect("a seq")
        }
    };
    let message =
        |id: &str, text: &str| json!({"client_msg_id": id, "kind": "message", "body": text});
    // Nobody is connected, everyone has a phone: a plain message pushes to nobody.
    send(0, message("plain", "good morning, town")).await;
    // Two by handle (one in other case), one by id; a reply pushes to the replied-to.
    let mention = json!({"client_msg_id": "m", "kind": "message",
        "body": "@u0007 and @U0123: see @nobody", "mentions": [town[500].id]});
    let mentioned = send(0, mention).await;
    let question = send(42, message("q", "a question")).await;
    let reply = json!({"client_msg_id": "r", "kind": "message",
        "body": "an answer", "reply_to": question});
    let answer = send(0, reply).await;
    // The log says whom the message mentions.
    let path = format!("/v1/conversations/{group}/entries?after={}&limit=1", mentioned - 1);
    let (_, page) = server.call(Method::GET, &path, Some(&town[0].token), None::<&()>).await;
    let ids: Vec<i64> = [7, 123, 500].iter().map(|&i| town[i].id.0).collect();
    assert_eq!(page["entries"][0]["mentions"], json!(ids), "{page}");

    for (i, seq) in [(7, mentioned), (123, mentioned), (500, mentioned), (42, answer)] {
        let got = wait_calls(&calls, &format!("phone-u{i:04}"), 1).await;
        assert_eq!(got[0]["last_seq"], seq, "u{i:04}: {got:?}");
    }
    // A barrier: a direct message, queued after all of the above, is pushed after them.
    let direct = server.create_direct(&town[0], &town[999]).await;
    server.send_rest(&town[0], direct, "d", "psst").await;
    wait_calls(&calls, "phone-u0999", 1).await;
    let mut pushed: Vec<String> = calls
        .lock()
        .unwrap()
        .iter()
        .map(|(c, _)| c["registration"].as_str().unwrap().to_owned())
        .collect();
    pushed.sort();
    assert_eq!(pushed, ["phone-u0007", "phone-u0042", "phone-u0123", "phone-u0500", "phone-u0999"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_three_node_cluster_only_members_connected_nowhere_get_a_push() {
    let (url, calls) = gateway().await;
    let cluster =
        natter_testkit::TestCluster::start(3, natter_server::Faults::default(), move |c| {
            c.push.webhook_url = Some(url.clone());
            c.push.webhook_secret = Some(SECRET.into());
            c.push.window_ms = 300;
        })
        .await;
    let (n0, n1, n2) = (cluster.node(0), cluster.node(1), cluster.node(2));
    let [alice, bob, carol] = n0.users(["alice", "bob", "carol"]).await;
    n0.contacts(&alice, &[&bob, &carol]).await;
    let group = n0.create_group(&alice, "trio", &[&bob, &carol]).await;
    register(n1, &bob.token, "bob-phone").await;
    register(n2, &carol.token, "carol-phone").await;
    // Bob is connected to node 1 only; carol to none. Alice sends through node 0.
    let _bob_online = n1.synced_ws(&bob).await;
    for i in 0..5 {
        n0.send_rest(&alice, group, &format!("m{i}"), &format!("message {i}")).await;
    }
    let got = wait_calls(&calls, "carol-phone", 1).await;
    assert_eq!(got[0]["count"], 5, "{got:?}");
    // A barrier: a later message's push to carol; by then bob's would have come.
    let ac = n2.create_direct(&alice, &carol).await;
    n2.send_rest(&alice, ac, "b", "barrier").await;
    let got = wait_calls(&calls, "carol-phone", 2).await;
    assert_eq!(got[1]["conversation"], ac.0);
    assert_eq!(calls_for(&calls, "carol-phone").len(), 2, "each sent once, by one node");
    assert!(calls_for(&calls, "bob-phone").is_empty(), "bob is online on node 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_pushes_are_capped_per_minute() {
    let (url, calls) = gateway().await;
    let server = TestServer::start_with(move |c| {
        c.push.webhook_url = Some(url);
        c.push.window_ms = 100;
        c.push.per_user_per_min = 2;
    })
    .await;
    let [alice, bob, carol, dan] = server.users(["alice", "bob", "carol", "dan"]).await;
    register(&server, &bob.token, "bob-phone").await;
    register(&server, &dan.token, "dan-phone").await;
    // Three conversations with bob, one message each: three notifications owed, two a
    // minute allowed; the third waits (about half a minute) instead of going now.
    for (i, from) in [&alice, &carol, &dan].into_iter().enumerate() {
        let conv = server.create_direct(from, &bob).await;
        server.send_rest(from, conv, &format!("m{i}"), "hi bob").await;
        if i < 2 {
            wait_calls(&calls, "bob-phone", i + 1).await;
        }
    }
    // A barrier: dan's own push, queued after bob's third, arrives; bob's third has not.
    let ad = server.create_direct(&alice, &dan).await;
    server.send_rest(&alice, ad, "b", "for dan").await;
    wait_calls(&calls, "dan-phone", 1).await;
    assert_eq!(calls_for(&calls, "bob-phone").len(), 2, "the cap holds the third back");
}
