//! The SDK's API against a real server, one feature after another: REST helpers (register,
//! login, lookups), typed events for entries, receipts (delivered reported automatically,
//! read by call), typing and presence (G6: only for watched users), history pages, a
//! conversation announced live, invitations (live as an event, listed, accepted, declined), a
//! refused send reported without blocking the outbox (and an oversized one refused before it),
//! and a refused token ending the client.

use std::sync::Arc;
use std::time::Duration;

use crate::support::*;
use natter_client::proto::rest::AddedMember;
use natter_client::proto::{EntryBody, ErrorCode, Role, Status};
use natter_client::{
    Api, Client, CloseReason, ConnectionState, Error, Event, HistoryRange, MemoryStore,
};
use natter_testkit::PASSWORD;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_typing_presence_and_history() {
    let node = start_node().await;
    let url = node.base_url();
    let api = Api::new(&url).expect("url");
    let alice_user = api.register("alice", PASSWORD).await.expect("register");
    assert_eq!(
        api.register("alice", PASSWORD).await.expect_err("taken").code(),
        Some(ErrorCode::Conflict)
    );
    let alice_session = api.login("alice", PASSWORD, Some("laptop")).await.expect("login");
    assert_eq!(alice_session.user_id, alice_user.user_id);
    let (bob_id, bob_token) = account(&url, "bob").await;
    let alice_api = api.with_token(&alice_session.token);
    assert_eq!(alice_api.me().await.expect("me").handle, "alice");
    assert_eq!(alice_api.user("bob").await.expect("lookup").user_id, bob_id);
    let conv = alice_api.create_direct(bob_id).await.expect("direct").id;

    let store = Arc::new(MemoryStore::new());
    let (alice, mut a_events) = connect(config(&url, &alice_session.token, store)).await;
    let (bob, mut b_events) = connect(config(&url, &bob_token, Arc::new(MemoryStore::new()))).await;
    let (mut a_seen, mut b_seen) = (Vec::new(), Vec::new());
    wait_connected(&mut a_events, &mut a_seen).await;
    wait_connected(&mut b_events, &mut b_seen).await;
    assert!(
        a_seen.iter().any(|e| matches!(e, Event::Conversation(c) if c.id == conv)),
        "sync reports the conversation's summary"
    );

    // An entry, then bob's delivered cursor comes back as a receipt without bob doing
    // anything; his read cursor when he calls `read`.
    let ack = alice.send(conv, "hi bob").await.expect("send");
    let entry = wait_for(&mut b_events, &mut b_seen, "the message", |e| match e {
        Event::Entry(entry) if entry.seq == ack.seq => Some(entry.clone()),
        _ => None,
    })
    .await;
    assert!(matches!(entry.body, EntryBody::Message { ref body, .. } if body == "hi bob"));
    assert_eq!(entry.client_msg_id, ack.client_msg_id);
    wait_for(&mut a_events, &mut a_seen, "bob's delivered receipt", |e| {
        matches!(e, Event::Receipt(r) if r.user == bob_id && r.delivered_seq == ack.seq)
            .then_some(())
    })
    .await;
    bob.read(conv, ack.seq).await.expect("read");
    wait_for(&mut a_events, &mut a_seen, "bob's read receipt", |e| {
        matches!(e, Event::Receipt(r) if r.user == bob_id && r.read_seq == ack.seq).then_some(())
    })
    .await;

    // Typing reaches the other member.
    bob.typing(conv, true).await.expect("typing");
    let ttl = wait_for(&mut a_events, &mut a_seen, "bob typing", |e| match e {
        Event::Typing { conversation, user, typing: true, ttl }
            if *conversation == conv && *user == bob_id =>
        {
            Some(*ttl)
        }
        _ => None,
    })
    .await;
    assert!(ttl.is_some_and(|t| t > Duration::ZERO));

    // Presence: asked for, then changes as they happen.
    let watched = alice.subscribe_presence(vec![bob_id]).await.expect("subscribe");
    assert_eq!(watched.denied, Vec::new());
    assert_eq!(watched.users.len(), 1);
    assert_eq!((watched.users[0].user, watched.users[0].status), (bob_id, Status::Online));
    bob.set_status(Status::Away).await.expect("away");
    wait_for(&mut a_events, &mut a_seen, "bob away", |e| match e {
        Event::Presence(users) => {
            users.iter().any(|p| p.user == bob_id && p.status == Status::Away).then_some(())
        }
        _ => None,
    })
    .await;

    // History pages over the WebSocket.
    for k in 0..4 {
        alice.send(conv, format!("more {k}")).await.expect("send");
    }
    let page = alice.history(conv, HistoryRange::Before(6), Some(2)).await.expect("history");
    let seqs: Vec<u64> = page.entries.iter().map(|e| e.seq).collect();
    assert_eq!((seqs, page.has_more), (vec![4, 5], true));
    let page = alice.history(conv, HistoryRange::After(5), None).await.expect("history");
    let seqs: Vec<u64> = page.entries.iter().map(|e| e.seq).collect();
    assert_eq!((seqs, page.has_more), (vec![6], false));

    // A group bob creates with alice is announced to her live, from its first entry.
    let bob_api = api.with_token(&bob_token);
    let created = bob_api.create_group("plans", &[alice_user.user_id]).await.expect("group");
    assert!(created.invited.is_empty(), "alice shares a conversation with bob: a member");
    let group = created.conversation.id;
    bob.send(group, "welcome").await.expect("send");
    wait_for(&mut a_events, &mut a_seen, "the group's message", |e| {
        matches!(e, Event::Entry(entry) if entry.conversation == group && entry.seq == 2)
            .then_some(())
    })
    .await;
    let in_group: Vec<u64> = entries_of(&a_seen, group).iter().map(|e| e.seq).collect();
    assert_eq!(in_group, [1, 2]);

    // Bob leaves: he turns offline for alice, who watches him.
    bob.close().await.expect("close");
    wait_for(&mut a_events, &mut a_seen, "bob offline", |e| match e {
        Event::Presence(users) => {
            users.iter().any(|p| p.user == bob_id && p.status == Status::Offline).then_some(())
        }
        _ => None,
    })
    .await;
    assert_contiguous(&entries_of(&a_seen, conv));

    alice.close().await.expect("close");
    let closed = wait_for(&mut a_events, &mut a_seen, "closed", |e| match e {
        Event::Connection(ConnectionState::Closed { reason }) => Some(*reason),
        _ => None,
    })
    .await;
    assert_eq!(closed, CloseReason::Client);
    assert!(a_events.next().await.is_none(), "nothing follows Closed");
    assert!(matches!(alice.send(conv, "late").await, Err(Error::Closed)));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invitations_are_events_listed_accepted_and_declined() {
    let node = start_node().await;
    let url = node.base_url();
    let (_, alice_token) = account(&url, "alice").await;
    let (sam_id, sam_token) = account(&url, "sam").await;
    let alice_api = Api::new(&url).expect("url").with_token(&alice_token);
    let sam_api = Api::new(&url).expect("url").with_token(&sam_token);
    let (sam, mut events) = connect(config(&url, &sam_token, Arc::new(MemoryStore::new()))).await;
    let mut seen = Vec::new();
    wait_connected(&mut events, &mut seen).await;

    // sam shares nothing with alice: creating a group naming him invites him.
    let created = alice_api.create_group("one", &[sam_id]).await.expect("group");
    assert_eq!(created.invited, vec![sam_id]);
    let one = created.conversation.id;
    let invitation = wait_for(&mut events, &mut seen, "the invitation", |e| match e {
        Event::Invitation(inv) => Some(inv.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        (invitation.conversation, invitation.user, invitation.role),
        (one, sam_id, Role::Member)
    );
    assert_eq!(invitation.inviter_handle, "alice");
    // So does adding him to another.
    let two = alice_api.create_group("two", &[]).await.expect("group").conversation.id;
    let added = alice_api.add_member(two, sam_id, None).await.expect("add");
    assert!(matches!(&added, AddedMember::Invited(inv) if inv.conversation == two), "{added:?}");
    let listed = sam_api.invitations().await.expect("list");
    assert_eq!(listed.iter().map(|i| i.conversation).collect::<Vec<_>>(), vec![one, two]);

    // Declined: gone. Accepted: a member, and the group's entries follow as events.
    sam_api.decline_invitation(two).await.expect("decline");
    let ack = sam_api.accept_invitation(one).await.expect("accept");
    assert_eq!(ack.seq, 2);
    assert!(sam_api.invitations().await.expect("list").is_empty());
    let joined = wait_for(&mut events, &mut seen, "the group's entries", |e| match e {
        Event::Entry(entry) if entry.conversation == one && entry.seq == 2 => Some(entry.clone()),
        _ => None,
    })
    .await;
    assert_eq!(joined.body, EntryBody::MemberAdded { user: sam_id, role: Role::Member });
    assert_eq!(
        sam_api.accept_invitation(two).await.expect_err("declined").code(),
        Some(ErrorCode::NotFound)
    );
    // Now a contact of alice's, sam is added to her groups directly.
    let three = alice_api.create_group("three", &[sam_id]).await.expect("group");
    assert!(three.invited.is_empty());
    assert!(matches!(
        alice_api.add_member(two, sam_id, None).await.expect("add"),
        AddedMember::Member(_)
    ));
    sam.close().await.expect("close");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_sends_fail_alone_and_a_refused_token_closes_the_client() {
    let node = start_node().await;
    let url = node.base_url();
    let (_, alice_token) = account(&url, "alice").await;
    let (bob_id, bob_token) = account(&url, "bob").await;
    let (carol_id, _) = account(&url, "carol").await;
    let bob_api = Api::new(&url).expect("url").with_token(&bob_token);
    let theirs = bob_api.create_direct(carol_id).await.expect("direct").id;
    let ours = bob_api.create_direct(account(&url, "alice").await.0).await.expect("direct").id;

    let (alice, mut events) =
        connect(config(&url, &alice_token, Arc::new(MemoryStore::new()))).await;
    let mut seen = Vec::new();
    wait_connected(&mut events, &mut seen).await;

    // A send to a conversation alice is not in is refused for good; the one after it in the
    // outbox still goes.
    let refused = alice.append(
        theirs,
        natter_client::proto::NewEntry::Message {
            body: "intruding".into(),
            reply_to: None,
            attachments: Vec::new(),
            mentions: Vec::new(),
        },
    );
    let refused = refused.await.expect("queued");
    let refused_id = refused.client_msg_id().to_owned();
    let after = alice.send_nowait(ours, "fine").await.expect("queued");
    let err = refused.ack().await.expect_err("refused");
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
    let failed = wait_for(&mut events, &mut seen, "send failed", |e| match e {
        Event::SendFailed { conversation, client_msg_id, error } => {
            Some((*conversation, client_msg_id.clone(), error.code))
        }
        _ => None,
    })
    .await;
    assert_eq!(failed, (theirs, refused_id, ErrorCode::NotFound));
    wait_for(&mut events, &mut seen, "the next send's ack", |e| {
        matches!(e, Event::Acked(a) if a.client_msg_id.as_deref() == Some(after.as_str()))
            .then_some(())
    })
    .await;
    // A send the server would close the connection over never enters the outbox.
    let huge = alice.send(ours, "x".repeat(70 * 1024)).await;
    assert!(matches!(huge, Err(Error::TooLarge)), "{huge:?}");
    alice.close().await.expect("close");

    // A revoked token: the client stops for good instead of retrying forever.
    Api::new(&url).expect("url").with_token(&alice_token).logout().await.expect("logout");
    let (client, mut events): (Client, _) =
        connect(config(&url, &alice_token, Arc::new(MemoryStore::new()))).await;
    let mut seen = Vec::new();
    let reason = wait_for(&mut events, &mut seen, "closed", |e| match e {
        Event::Connection(ConnectionState::Closed { reason }) => Some(*reason),
        _ => None,
    })
    .await;
    assert_eq!(reason, CloseReason::Unauthenticated);
    assert!(matches!(client.send(ours, "x").await, Err(Error::Closed)));
    let _ = bob_id;
    node.stop().await;
}
