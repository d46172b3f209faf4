//! The SDK's push, mention and email calls (issue 14) against a real node with the webhook
//! provider on: the push configuration lists it, a registration is made, listed and removed;
//! a message sent with mention ids and an `@handle` carries the members it mentions; setting
//! an email address is refused on a node without email. Message search pages, filters and
//! marks its snippets, and finds nothing for a stranger.

use std::sync::Arc;

use crate::support::*;
use natter_client::proto::rest::NewPushRegistration;
use natter_client::proto::{EntryBody, ErrorCode, NewEntry};
use natter_client::{Api, HistoryRange, MemoryStore, SearchOptions};
use natter_testkit::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_registrations_mentions_and_email_through_the_sdk() {
    // The gateway is never called: nobody registered is away when a message goes.
    let node =
        TestServer::start_with(|c| c.push.webhook_url = Some("http://127.0.0.1:9/push".into()))
            .await;
    let url = node.base_url();
    let (_, alice_token) = account(&url, "alice").await;
    let (bob_id, bob_token) = account(&url, "bob").await;
    let (carol_id, _) = account(&url, "carol").await;
    let api = Api::new(&url).expect("url");
    let (alice_api, bob_api) = (api.with_token(&alice_token), api.with_token(&bob_token));

    let offered = bob_api.push_config().await.expect("config");
    assert_eq!((offered.providers, offered.vapid_public_key), (vec!["webhook".to_owned()], None));
    let reg = NewPushRegistration {
        provider: "webhook".into(),
        token: "bob-phone".into(),
        p256dh: None,
        auth: None,
    };
    let id = bob_api.register_push(&reg).await.expect("register");
    let listed = bob_api.push_registrations().await.expect("list");
    assert_eq!(
        listed.iter().map(|r| (r.id, r.provider.as_str())).collect::<Vec<_>>(),
        [(id, "webhook")]
    );
    bob_api.unregister_push(id).await.expect("unregister");
    assert!(bob_api.push_registrations().await.expect("list").is_empty());

    for other in [bob_id, carol_id] {
        alice_api.create_direct(other).await.expect("a contact");
    }
    let group =
        alice_api.create_group("club", &[bob_id, carol_id]).await.expect("group").conversation.id;
    let (alice, _events) = connect(config(&url, &alice_token, Arc::new(MemoryStore::new()))).await;
    let entry = NewEntry::Message {
        body: "ping @BOB".into(),
        reply_to: None,
        attachments: Vec::new(),
        mentions: vec![carol_id],
    };
    let ack = alice.append(group, entry).await.expect("queued").ack().await.expect("acked");
    let page =
        alice.history(group, HistoryRange::After(ack.seq - 1), Some(1)).await.expect("history");
    let EntryBody::Message { mentions, .. } = &page.entries[0].body else { panic!("a message") };
    let mut want = vec![bob_id, carol_id];
    want.sort_unstable();
    assert_eq!(mentions, &want);

    let refused = bob_api.set_email(Some("bob@example.test")).await.expect_err("no email here");
    assert_eq!(refused.code(), Some(ErrorCode::BadRequest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_through_the_sdk_pages_and_filters() {
    let node = start_node().await;
    let url = node.base_url();
    let (_, alice_token) = account(&url, "alice").await;
    let (bob_id, bob_token) = account(&url, "bob").await;
    let (_, carol_token) = account(&url, "carol").await;
    let api = Api::new(&url).expect("url");
    let (alice_api, bob_api) = (api.with_token(&alice_token), api.with_token(&bob_token));
    let direct = alice_api.create_direct(bob_id).await.expect("direct").id;
    let (alice, _events) = connect(config(&url, &alice_token, Arc::new(MemoryStore::new()))).await;
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(
            alice.send(direct, format!("quarterly report part {i}")).await.expect("sent").seq,
        );
    }
    let (bob, _bob_events) = connect(config(&url, &bob_token, Arc::new(MemoryStore::new()))).await;
    let from_bob = bob.send(direct, "my quarterly numbers").await.expect("sent").seq;

    // Pages of two, newest first, every hit once.
    let mut cursor = None;
    let mut seen = Vec::new();
    loop {
        let options = SearchOptions { limit: Some(2), cursor, ..Default::default() };
        let page = bob_api.search("quarterl*", &options).await.expect("search");
        seen.extend(page.hits.iter().map(|h| h.seq));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let mut want = sent.clone();
    want.push(from_bob);
    want.reverse();
    assert_eq!(seen, want);
    // A sender filter, a phrase, snippets marked; a stranger finds nothing.
    let options = SearchOptions { sender: Some(bob_id), ..Default::default() };
    let mine = bob_api.search("quarterly", &options).await.expect("search");
    assert_eq!(mine.hits.iter().map(|h| h.seq).collect::<Vec<_>>(), vec![from_bob]);
    let phrase =
        alice_api.search("\"report part 3\"", &SearchOptions::default()).await.expect("search");
    assert_eq!(phrase.hits.len(), 1);
    let marked: Vec<&str> =
        phrase.hits[0].snippet.iter().filter(|p| p.hit).map(|p| p.text.as_str()).collect();
    assert_eq!(marked, ["report part 3"]);
    let carol = api.with_token(&carol_token);
    assert!(
        carol.search("quarterly", &SearchOptions::default()).await.expect("search").hits.is_empty()
    );
    let refused = carol.search("", &SearchOptions::default()).await.expect_err("empty");
    assert_eq!(refused.code(), Some(ErrorCode::BadRequest));
}
