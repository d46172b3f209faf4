//! G4 idempotent sends: the same `(sender, conversation, client_msg_id)` sent again — in
//! sequence, concurrently from two WebSocket sessions and REST at once, after a dropped
//! connection, or across transports — commits one entry and returns the original ack (seq, id,
//! ts) every time, and live receivers see that entry exactly once. The same `client_msg_id`
//! from another sender or in another conversation is a different entry, and a rejected send
//! does not use its key up.

use std::collections::BTreeMap;

use futures_util::future::join_all;
use natter_proto::{
    Ack, ClientFrame, ConversationId, Entry, EntryBody, ErrorCode, NewEntry, ReqId, Seq,
    ServerFrame,
};
use natter_testkit::{TestServer, TestUser, WsClient, reply_id};
use reqwest::StatusCode;

fn send(req_id: ReqId, conv: ConversationId, client_msg_id: &str, body: &str) -> ClientFrame {
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

/// Sends `n` copies of one send frame back to back, then collects every reply as an ack.
async fn ws_burst(
    ws: &mut WsClient,
    conv: ConversationId,
    client_msg_id: &str,
    n: usize,
) -> Vec<Ack> {
    let mut req_ids = Vec::with_capacity(n);
    for _ in 0..n {
        let req_id = ws.req_id();
        ws.send_frame(&send(req_id, conv, client_msg_id, "racing")).await;
        req_ids.push(req_id);
    }
    let mut acks = Vec::with_capacity(n);
    for req_id in req_ids {
        match ws.next_matching(|f| reply_id(f) == Some(req_id)).await {
            ServerFrame::Ack { ack, .. } => acks.push(ack),
            other => panic!("expected an ack for {req_id}, got {other:?}"),
        }
    }
    acks
}

/// `n` concurrent REST sends of the same message.
async fn rest_burst(
    server: &TestServer,
    user: &TestUser,
    conv: ConversationId,
    client_msg_id: &str,
    n: usize,
) -> Vec<Ack> {
    join_all((0..n).map(|_| server.send_rest(user, conv, client_msg_id, "racing"))).await
}

/// The entries of `conv` that `sender` sent with `client_msg_id`.
async fn entries_with(
    server: &TestServer,
    reader: &TestUser,
    conv: ConversationId,
    sender: &TestUser,
    client_msg_id: &str,
) -> Vec<Entry> {
    server
        .all_entries(reader, conv, 50)
        .await
        .into_iter()
        .filter(|e| e.sender == sender.id && e.client_msg_id.as_deref() == Some(client_msg_id))
        .collect()
}

/// Checks that `entry` is the one `ack` acknowledged.
fn assert_acked(entry: &Entry, ack: &Ack) {
    assert_eq!(
        (entry.conversation, entry.seq, &entry.id, entry.ts),
        (ack.conversation, ack.seq, &ack.id, ack.ts),
        "the stored entry is not the acked one"
    );
    assert_eq!(entry.client_msg_id, ack.client_msg_id);
}

/// Reads the next `n` live entries and returns their `(seq, client_msg_id)`.
async fn live(ws: &mut WsClient, n: usize) -> Vec<(Seq, String)> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let e = ws.next_entry().await;
        out.push((e.seq, e.client_msg_id.unwrap_or_default()));
    }
    out
}

fn seq_ids(pairs: &[(Seq, &str)]) -> Vec<(Seq, String)> {
    pairs.iter().map(|&(s, c)| (s, c.to_owned())).collect()
}

#[tokio::test]
async fn sequential_resend_over_websocket_returns_the_original_ack() {
    let server = TestServer::start().await;
    let (alice, bob, conv) = server.direct_pair().await;
    let mut a = server.ws(&alice).await;
    let mut b = server.ws(&bob).await;
    a.sync(BTreeMap::new()).await;
    b.sync(BTreeMap::new()).await;

    let first = a.send_msg(conv, "m1", "hello").await;
    assert_eq!(first.seq, 2);
    assert_eq!(first.conversation, conv);
    assert_eq!(first.client_msg_id.as_deref(), Some("m1"));
    let second = a.send_msg(conv, "m1", "hello").await;
    assert_eq!(second, first, "a resend must return the original ack");
    // A resend with other content is still the same send: the original ack, nothing new.
    let third = a.send_msg(conv, "m1", "hello, changed").await;
    assert_eq!(third, first);

    let marker = a.send_msg(conv, "m2", "marker").await;
    assert_eq!(marker.seq, 3, "the resends must not have used up a seq");

    let stored = entries_with(&server, &bob, conv, &alice, "m1").await;
    assert_eq!(stored.len(), 1, "one entry per client_msg_id: {stored:?}");
    assert_acked(&stored[0], &first);
    assert!(
        matches!(&stored[0].body, EntryBody::Message { body, .. } if body == "hello"),
        "the first send's content is kept: {:?}",
        stored[0].body
    );
    // The receiver and the sender's own session each see the entry once, then the marker.
    let want = seq_ids(&[(2, "m1"), (3, "m2")]);
    assert_eq!(live(&mut b, 2).await, want);
    assert_eq!(live(&mut a, 2).await, want);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_over_two_sessions_and_rest_commit_once() {
    const ROUNDS: usize = 5;
    let server = TestServer::start().await;
    let (alice, bob, conv) = server.direct_pair().await;
    // Two sessions of alice (two devices), plus REST with the first device's token.
    let mut a1 = server.ws(&alice).await;
    let mut a2 = server.ws_token(&server.login("alice").await).await;
    let mut b = server.ws(&bob).await;
    for ws in [&mut a1, &mut a2, &mut b] {
        ws.sync(BTreeMap::new()).await;
    }

    let mut acked = Vec::new();
    for round in 0..ROUNDS {
        let cmid = format!("race-{round}");
        // 3 + 3 + 4 = 10 concurrent sends of the same client_msg_id.
        let (acks1, acks2, acks3) = tokio::join!(
            ws_burst(&mut a1, conv, &cmid, 3),
            ws_burst(&mut a2, conv, &cmid, 3),
            rest_burst(&server, &alice, conv, &cmid, 4),
        );
        let all: Vec<Ack> = acks1.into_iter().chain(acks2).chain(acks3).collect();
        assert_eq!(all.len(), 10);
        let first = all[0].clone();
        for ack in &all {
            assert_eq!(ack, &first, "round {round}: every racer gets the same ack");
        }
        assert_eq!(first.seq, 2 + round as Seq, "round {round}: one seq per round");
        acked.push(first);
    }

    let marker = a1.send_msg(conv, "marker", "done").await;
    assert_eq!(marker.seq, 2 + ROUNDS as Seq);

    let entries = server.all_entries(&bob, conv, 4).await;
    let seqs: Vec<Seq> = entries.iter().map(|e| e.seq).collect();
    natter_testkit::assert_contiguous(&seqs, 1, marker.seq).unwrap();
    for (round, ack) in acked.iter().enumerate() {
        let cmid = format!("race-{round}");
        let with: Vec<&Entry> =
            entries.iter().filter(|e| e.client_msg_id.as_deref() == Some(cmid.as_str())).collect();
        assert_eq!(with.len(), 1, "{cmid} stored {} times", with.len());
        assert_acked(with[0], ack);
    }

    // Every live session sees each entry exactly once, in order, up to the marker.
    let mut want: Vec<(Seq, String)> =
        acked.iter().map(|a| (a.seq, a.client_msg_id.clone().unwrap_or_default())).collect();
    want.push((marker.seq, "marker".to_owned()));
    for ws in [&mut b, &mut a1, &mut a2] {
        assert_eq!(live(ws, ROUNDS + 1).await, want);
    }
    server.stop().await;
}

#[tokio::test]
async fn resend_after_reconnect_returns_the_original_ack() {
    let server = TestServer::start().await;
    let (alice, bob, conv) = server.direct_pair().await;
    let mut b = server.synced_ws(&bob).await;

    // The ack was read, then the connection died: the retry on a new connection is answered
    // with the same ack.
    let mut a = server.ws(&alice).await;
    let first = a.send_msg(conv, "after-ack", "one").await;
    assert_eq!(first.seq, 2);
    a.abort();
    let mut a = server.ws(&alice).await;
    assert_eq!(a.send_msg(conv, "after-ack", "one").await, first);

    // The connection died before the ack was read: whether or not the first attempt
    // committed, the retry and any later retry get one and the same ack, for one entry.
    let req_id = a.req_id();
    a.send_frame(&send(req_id, conv, "before-ack", "two")).await;
    a.abort();
    let mut a = server.ws(&alice).await;
    let retried = a.send_msg(conv, "before-ack", "two").await;
    assert_eq!(retried.seq, 3);
    assert_eq!(a.send_msg(conv, "before-ack", "two").await, retried);
    a.abort();
    let mut a = server.ws(&alice).await;
    assert_eq!(a.send_msg(conv, "before-ack", "two").await, retried);

    let marker = a.send_msg(conv, "marker", "done").await;
    assert_eq!(marker.seq, 4);
    let after = entries_with(&server, &alice, conv, &alice, "after-ack").await;
    assert_eq!(after.len(), 1, "{after:?}");
    assert_acked(&after[0], &first);
    let before = entries_with(&server, &alice, conv, &alice, "before-ack").await;
    assert_eq!(before.len(), 1, "{before:?}");
    assert_acked(&before[0], &retried);

    // The receiver, connected throughout, saw each entry once.
    let want = seq_ids(&[(2, "after-ack"), (3, "before-ack"), (4, "marker")]);
    assert_eq!(live(&mut b, 3).await, want);
    server.stop().await;
}

#[tokio::test]
async fn resend_across_transports_returns_the_original_ack() {
    let server = TestServer::start().await;
    let (alice, bob, conv) = server.direct_pair().await;
    let mut a = server.ws(&alice).await;
    let mut b = server.ws(&bob).await;
    a.sync(BTreeMap::new()).await;
    b.sync(BTreeMap::new()).await;

    // WebSocket first, then REST.
    let ws_first = a.send_msg(conv, "ws-first", "one").await;
    assert_eq!(ws_first.seq, 2);
    let rest_again = server.send_rest(&alice, conv, "ws-first", "one").await;
    assert_eq!(rest_again, ws_first);

    // REST first, then WebSocket.
    let rest_first = server.send_rest(&alice, conv, "rest-first", "two").await;
    assert_eq!(rest_first.seq, 3);
    assert_eq!(a.send_msg(conv, "rest-first", "two").await, rest_first);
    assert_eq!(server.send_rest(&alice, conv, "rest-first", "two").await, rest_first);

    let marker = a.send_msg(conv, "marker", "done").await;
    assert_eq!(marker.seq, 4);
    for (cmid, ack) in [("ws-first", &ws_first), ("rest-first", &rest_first)] {
        let stored = entries_with(&server, &bob, conv, &alice, cmid).await;
        assert_eq!(stored.len(), 1, "{cmid}: {stored:?}");
        assert_acked(&stored[0], ack);
    }
    let want = seq_ids(&[(2, "ws-first"), (3, "rest-first"), (4, "marker")]);
    assert_eq!(live(&mut b, 3).await, want);
    server.stop().await;
}

#[tokio::test]
async fn same_key_from_another_sender_or_conversation_is_another_entry() {
    let server = TestServer::start().await;
    let [alice, bob, carol] = server.users(["alice", "bob", "carol"]).await;
    let direct = server.create_direct(&alice, &bob).await;
    server.contacts(&alice, &[&carol]).await;
    let group = server.create_group(&alice, "trio", &[&bob, &carol]).await;
    let mut a = server.ws(&alice).await;

    let from_alice = a.send_msg(direct, "same", "alice's").await;
    assert_eq!(from_alice.seq, 2);
    // Another sender, same conversation, same key: a new entry.
    let from_bob = server.send_rest(&bob, direct, "same", "bob's").await;
    assert_eq!(from_bob.seq, 3);
    assert_ne!(from_bob.id, from_alice.id);
    // The same sender and key in another conversation: a new entry there.
    let in_group = a.send_msg(group, "same", "alice's, in the group").await;
    assert_eq!((in_group.conversation, in_group.seq), (group, 2));
    assert_ne!(in_group.id, from_alice.id);
    // And each of those is itself idempotent.
    assert_eq!(a.send_msg(direct, "same", "alice's").await, from_alice);
    assert_eq!(server.send_rest(&bob, direct, "same", "bob's").await, from_bob);
    assert_eq!(server.send_rest(&alice, group, "same", "again").await, in_group);

    let direct_entries = server.all_entries(&bob, direct, 10).await;
    let same: Vec<(Seq, natter_proto::UserId)> = direct_entries
        .iter()
        .filter(|e| e.client_msg_id.as_deref() == Some("same"))
        .map(|e| (e.seq, e.sender))
        .collect();
    assert_eq!(same, vec![(2, alice.id), (3, bob.id)]);
    let group_entries = server.all_entries(&carol, group, 10).await;
    assert_eq!(group_entries.len(), 2, "{group_entries:?}");
    assert_acked(&group_entries[1], &in_group);
    server.stop().await;
}

#[tokio::test]
async fn rejected_send_does_not_use_up_its_key() {
    let server = TestServer::start().await;
    let (alice, bob, conv) = server.direct_pair().await;
    let mut a = server.ws(&alice).await;

    // A reply to a seq that does not exist is refused and stores nothing…
    let reply = a
        .request(|req_id| ClientFrame::Send {
            req_id,
            conversation: conv,
            client_msg_id: "k".to_owned(),
            body: "re: nothing".to_owned(),
            reply_to: Some(99),
            attachments: Vec::new(),
            mentions: Vec::new(),
        })
        .await;
    match reply {
        ServerFrame::Error { error, .. } => assert_eq!(error.code, ErrorCode::BadRequest),
        other => panic!("expected bad_request, got {other:?}"),
    }
    // …so the same key then sends a valid message once.
    let ack = a.send_msg(conv, "k", "valid").await;
    assert_eq!(ack.seq, 2);
    assert_eq!(a.send_msg(conv, "k", "valid").await, ack);
    let stored = entries_with(&server, &bob, conv, &alice, "k").await;
    assert_eq!(stored.len(), 1);
    assert_acked(&stored[0], &ack);
    server.stop().await;
}

#[tokio::test]
async fn edits_deletions_and_reactions_are_idempotent_too() {
    let server = TestServer::start().await;
    let (alice, bob, conv) = server.direct_pair().await;
    let mut a = server.ws(&alice).await;
    let msg = a.send_msg(conv, "m", "original").await;

    let edit = |req_id| ClientFrame::Edit {
        req_id,
        conversation: conv,
        client_msg_id: "e".to_owned(),
        target: msg.seq,
        body: "edited".to_owned(),
    };
    let react = |req_id| ClientFrame::React {
        req_id,
        conversation: conv,
        client_msg_id: "r".to_owned(),
        target: msg.seq,
        emoji: "+1".to_owned(),
        remove: false,
    };
    let delete = |req_id| ClientFrame::Delete {
        req_id,
        conversation: conv,
        client_msg_id: "d".to_owned(),
        target: msg.seq,
    };
    let mut acks = Vec::new();
    for build in [&edit as &dyn Fn(ReqId) -> ClientFrame, &react, &delete] {
        let once = match a.request(build).await {
            ServerFrame::Ack { ack, .. } => ack,
            other => panic!("expected an ack, got {other:?}"),
        };
        acks.push(once);
    }
    // Retried after the deletion too: the original acks, not a conflict.
    for (build, ack) in
        [&edit as &dyn Fn(ReqId) -> ClientFrame, &react, &delete].into_iter().zip(&acks)
    {
        match a.request(build).await {
            ServerFrame::Ack { ack: again, .. } => assert_eq!(&again, ack),
            other => panic!("expected the original ack, got {other:?}"),
        }
    }
    // The REST route answers a retried edit the same way.
    let (status, json) = server
        .post_entry(
            &alice,
            conv,
            "e",
            NewEntry::Edit { target: msg.seq, body: "edited".to_owned() },
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
    assert_eq!(serde_json::from_value::<Ack>(json).unwrap(), acks[0]);

    let seqs: Vec<Seq> = acks.iter().map(|a| a.seq).collect();
    assert_eq!(seqs, vec![3, 4, 5]);
    let entries = server.all_entries(&bob, conv, 10).await;
    assert_eq!(entries.len(), 5, "{entries:?}");
    server.stop().await;
}
