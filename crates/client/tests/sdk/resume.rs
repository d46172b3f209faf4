//! App restarts with a [`FileStore`]: G5 resume from the persisted cursors (the restarted app
//! gets exactly what it missed, nothing it had already), and the persisted outbox — sends
//! written while the server was unreachable, then the app quit — delivered by the next run
//! exactly once, in order, with their acks reported to it.

use std::sync::Arc;

use crate::support::*;
use natter_client::proto::{ConversationId, NewEntry};
use natter_client::{Api, Event, FileStore, MemoryStore, Snapshot, StateStore};
use natter_testkit::{poll_until, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_app_resumes_cursors_and_delivers_the_persisted_outbox() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = start_node().await;
    let url = node.base_url();
    let (alice_id, alice_token) = account(&url, "alice").await;
    let (bob_id, bob_token) = account(&url, "bob").await;
    let api = Api::new(&url).expect("url").with_token(&bob_token);
    let conv: ConversationId = api.create_direct(alice_id).await.expect("direct").id;
    let state = FileStore::new(dir.path().join("alice.json"));

    let (bob, mut bob_events) =
        connect(config(&url, &bob_token, Arc::new(MemoryStore::new()))).await;
    let mut b_seen = Vec::new();
    wait_connected(&mut bob_events, &mut b_seen).await;

    // Run 1: alice reads seq 1..=4, then quits.
    let (alice, mut events) = connect(config(&url, &alice_token, Arc::new(state.clone()))).await;
    let mut seen = Vec::new();
    wait_connected(&mut events, &mut seen).await;
    for k in 0..3 {
        bob.send(conv, format!("bob {k}")).await.expect("send");
    }
    wait_for(&mut events, &mut seen, "seq 4", |e| {
        matches!(e, Event::Entry(entry) if entry.seq == 4).then_some(())
    })
    .await;
    alice.close().await.expect("close");
    assert_eq!(state.load().expect("load").cursors.get(&conv), Some(&4));

    // While alice is gone: seq 5..=7.
    for k in 3..6 {
        bob.send(conv, format!("bob {k}")).await.expect("send");
    }

    // Run 2: the server is unreachable; alice writes three messages and quits.
    let proxy = Proxy::start(None).await;
    let (alice, mut events) =
        connect(config(&proxy.url(), &alice_token, Arc::new(state.clone()))).await;
    let mut queued = Vec::new();
    for k in 0..3 {
        queued.push(alice.send_nowait(conv, format!("alice {k}")).await.expect("queued"));
    }
    // Quit only once it has tried the (unreachable) server: closing first could end the
    // run before any attempt.
    poll_until(
        "run 2 to try to connect",
        || async { (proxy.n_accepted() > 0).then_some(()) },
        String::new,
    )
    .await;
    alice.close().await.expect("close");
    let mut run2 = Vec::new();
    while let Some(e) = events.next().await {
        run2.push(e);
    }
    assert!(proxy.n_accepted() > 0, "run 2 did try to connect");
    assert!(
        !run2.iter().any(|e| matches!(e, Event::Entry(_) | Event::Acked(_))),
        "run 2 never reached the server: {run2:?}"
    );
    let saved = state.load().expect("load");
    let saved_ids: Vec<&str> = saved.outbox.iter().map(|i| i.client_msg_id.as_str()).collect();
    assert_eq!(saved_ids, queued, "the outbox is persisted in the written order");
    assert_eq!(saved.cursors.get(&conv), Some(&4));

    // Run 3: reachable again. It gets 5..=7 (not 1..=4 again), then its own three sends,
    // acked with seqs 8..=10 in the order written.
    let (alice, mut events) = connect(config(&url, &alice_token, Arc::new(state.clone()))).await;
    let mut seen = Vec::new();
    let (mut n_acks, mut last_seq) = (0, 0);
    wait_for(&mut events, &mut seen, "three acks and seq 10", |e| {
        match e {
            Event::Acked(_) => n_acks += 1,
            Event::Entry(entry) if entry.conversation == conv => last_seq = entry.seq,
            _ => {}
        }
        (n_acks == 3 && last_seq == 10).then_some(())
    })
    .await;
    let entries = entries_of(&seen, conv);
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (5..=10).collect::<Vec<_>>(), "resumed after the persisted cursor");
    let acks: Vec<(String, u64)> = seen
        .iter()
        .filter_map(|e| match e {
            Event::Acked(ack) => Some((ack.client_msg_id.clone()?, ack.seq)),
            _ => None,
        })
        .collect();
    let want: Vec<(String, u64)> = queued.iter().cloned().zip(8..=10).collect();
    assert_eq!(acks, want, "the previous run's sends, acked in the order written");
    let own: Vec<&str> = entries[3..].iter().filter_map(|e| body(e)).collect();
    assert_eq!(own, ["alice 0", "alice 1", "alice 2"]);

    // Bob got them once each, in order.
    wait_for(&mut bob_events, &mut b_seen, "seq 10 at bob", |e| {
        matches!(e, Event::Entry(entry) if entry.seq == 10).then_some(())
    })
    .await;
    let at_bob = entries_of(&b_seen, conv);
    assert_contiguous(&at_bob);
    let from_alice: Vec<&str> =
        at_bob.iter().filter(|e| e.sender == alice_id).filter_map(|e| body(e)).collect();
    assert_eq!(from_alice, ["alice 0", "alice 1", "alice 2"]);

    // The saved state has nothing left to send and the cursor at the end.
    alice.close().await.expect("close");
    let saved = state.load().expect("load");
    assert_eq!(saved.outbox, Vec::new());
    assert_eq!(saved.cursors.get(&conv), Some(&10));
    assert_eq!(saved.user, Some(alice_id));

    // Run 4 has nothing to catch up on: no entry arrives before it is connected.
    let (alice, mut events) = connect(config(&url, &alice_token, Arc::new(state.clone()))).await;
    let mut seen = Vec::new();
    wait_connected(&mut events, &mut seen).await;
    assert!(!seen.iter().any(|e| matches!(e, Event::Entry(_) | Event::Acked(_))), "{seen:?}");
    alice.close().await.expect("close");

    bob.close().await.expect("close");
    let _ = bob_id;
    node.stop().await;
}

/// An app that stops reading its events and closes the client: the close does not wait for
/// room in the event queue, and nothing the app was not given is lost — the saved cursor is
/// the last entry it got, and a send whose ack it was not told is reported by the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_without_reading_events_loses_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = start_node().await;
    let url = node.base_url();
    let (alice_id, alice_token) = account(&url, "alice").await;
    let (_, bob_token) = account(&url, "bob").await;
    let bob_api = Api::new(&url).expect("url").with_token(&bob_token);
    let conv = bob_api.create_direct(alice_id).await.expect("direct").id;
    let state = FileStore::new(dir.path().join("alice.json"));

    let small = |base: &str| natter_client::Config {
        event_buffer: 4,
        ..config(base, &alice_token, Arc::new(state.clone()))
    };
    let (alice, mut events) = connect(small(&url)).await;
    let mut seen = Vec::new();
    wait_connected(&mut events, &mut seen).await;
    let mut got: Vec<u64> = entries_of(&seen, conv).iter().map(|e| e.seq).collect();
    for k in 0..20 {
        bob_api
            .post_entry(conv, &format!("b{k}"), message(&format!("bob {k}")))
            .await
            .expect("send");
    }
    let mine = alice.send_nowait(conv, "from alice").await.expect("queued");
    within("a close that does not hang", alice.close()).await.expect("close");
    let mut n_acked = 0;
    while let Some(e) = events.next().await {
        match e {
            Event::Entry(entry) if entry.conversation == conv => got.push(entry.seq),
            Event::Acked(ack) if ack.client_msg_id.as_deref() == Some(mine.as_str()) => {
                n_acked += 1
            }
            _ => {}
        }
    }
    let last = *got.last().expect("seq 1 at least");
    assert_eq!(got, (1..=last).collect::<Vec<_>>());
    assert_eq!(state.load().expect("load").cursors.get(&conv), Some(&last));

    // The next run continues right after what the app got, and reports the ack if this
    // run could not.
    let (alice, mut events) = connect(config(&url, &alice_token, Arc::new(state.clone()))).await;
    let mut seen = Vec::new();
    wait_for(&mut events, &mut seen, "seq 22", |e| {
        matches!(e, Event::Entry(entry) if entry.seq == 22).then_some(())
    })
    .await;
    if n_acked == 0 {
        wait_for(&mut events, &mut seen, "the ack", |e| {
            matches!(e, Event::Acked(ack) if ack.client_msg_id.as_deref() == Some(mine.as_str()))
                .then_some(())
        })
        .await;
    }
    let seqs: Vec<u64> = entries_of(&seen, conv).iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (last + 1..=22).collect::<Vec<_>>());
    let n_acked_2 = seen.iter().filter(|e| matches!(e, Event::Acked(_))).count();
    assert_eq!(n_acked + n_acked_2, 1, "the send's ack is reported exactly once");
    alice.close().await.expect("close");
    node.stop().await;
}

fn message(body: &str) -> natter_client::proto::NewEntry {
    natter_client::proto::NewEntry::Message {
        body: body.to_owned(),
        reply_to: None,
        attachments: Vec::new(),
        mentions: Vec::new(),
    }
}

/// A backlog far larger than one sync reply (two groups of 100 messages of 16 KiB: 3.3 MB;
/// the server's replies hold at most 256 KiB) arrives whole: the SDK syncs again while a
/// reply says `more`, and reports the connection only once it is caught up. One device
/// resumes from the start of both logs; another, with no cursors, gets each latest page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_larger_than_a_sync_reply_arrives_whole() {
    let node = start_node().await;
    let url = node.base_url();
    let (_, alice_token) = account(&url, "alice").await;
    let (bob_id, bob_token) = account(&url, "bob").await;
    let api = Api::new(&url).expect("url").with_token(&alice_token);
    // Contacts first, so that Bob is added to the groups, not invited.
    api.create_direct(bob_id).await.expect("direct");
    let mut groups = Vec::new();
    for title in ["one", "two"] {
        let g = api.create_group(title, &[bob_id]).await.expect("group").conversation.id;
        for i in 0..100 {
            let mut body = format!("{title} {i:03} ");
            body.extend(std::iter::repeat_n('x', 16 * 1024 - body.len()));
            let entry = NewEntry::Message {
                body,
                reply_to: None,
                attachments: Vec::new(),
                mentions: Vec::new(),
            };
            api.post_entry(g, &format!("{title}-{i}"), entry).await.expect("send");
        }
        groups.push(g);
    }

    let store = MemoryStore::new();
    let cursors = groups.iter().map(|&g| (g, 0)).collect();
    let snapshot = Snapshot { user: Some(bob_id), cursors, outbox: Vec::new() };
    store.save(&snapshot).expect("seeded");
    let (_bob, mut events) = connect(config(&url, &bob_token, Arc::new(store))).await;
    let mut seen = Vec::new();
    wait_connected(&mut events, &mut seen).await;
    for &g in &groups {
        let entries = entries_of(&seen, g);
        assert_contiguous(&entries);
        assert_eq!(
            entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=101).collect::<Vec<_>>()
        );
        let title = if g == groups[0] { "one" } else { "two" };
        let last = body(entries[100]).expect("a message");
        assert!(last.starts_with(&format!("{title} 099 ")), "the last message of {title}");
    }

    let (_other, mut events) =
        connect(config(&url, &bob_token, Arc::new(MemoryStore::new()))).await;
    let mut seen = Vec::new();
    wait_connected(&mut events, &mut seen).await;
    for &g in &groups {
        let entries = entries_of(&seen, g);
        assert_contiguous(&entries);
        let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (2..=101).collect::<Vec<_>>(), "the latest page, whole");
    }
}
