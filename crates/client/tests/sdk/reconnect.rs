//! The SDK against a real server that goes away: G1 (order, no gap, no duplicate as the app
//! sees it), G3/G5 (resume from the SDK's cursors) and G4 (the outbox retries with the same
//! `client_msg_id`, so every send is stored exactly once, in the order it was written, and
//! every send gets exactly one ack).
//!
//! - a server restart on the same data directory and port, with sends queued while it is down;
//! - every connection cut, again and again, while the app keeps sending.

use std::collections::HashSet;
use std::sync::Arc;

use crate::support::*;
use natter_client::proto::ConversationId;
use natter_client::{Api, ConnectionState, Event, MemoryStore};

/// Messages from `sender` in `seen`, as (seq, body), in the order the app got them.
fn messages_from(
    seen: &[Event],
    conv: ConversationId,
    sender: natter_client::proto::UserId,
) -> Vec<(u64, String)> {
    entries_of(seen, conv)
        .into_iter()
        .filter(|e| e.sender == sender)
        .filter_map(|e| Some((e.seq, body(e)?.to_owned())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_resumes_and_delivers_the_outbox() {
    let mut node = start_node().await;
    let url = node.base_url();
    let (alice_id, alice_token) = account(&url, "alice").await;
    let (bob_id, bob_token) = account(&url, "bob").await;
    let conv = Api::new(&url).expect("url").with_token(&alice_token).create_direct(bob_id).await;
    let conv = conv.expect("direct conversation").id;

    let (alice, mut alice_events) =
        connect(config(&url, &alice_token, Arc::new(MemoryStore::new()))).await;
    let (bob, mut bob_events) =
        connect(config(&url, &bob_token, Arc::new(MemoryStore::new()))).await;
    let (mut a_seen, mut b_seen) = (Vec::new(), Vec::new());
    wait_connected(&mut alice_events, &mut a_seen).await;
    wait_connected(&mut bob_events, &mut b_seen).await;

    for k in 0..5 {
        let ack = alice.send(conv, format!("before {k}")).await.expect("send");
        assert_eq!(ack.seq, 2 + k, "seq 1 is the conversation's creation");
    }
    wait_for(&mut bob_events, &mut b_seen, "seq 6", |e| {
        matches!(e, Event::Entry(entry) if entry.seq == 6).then_some(())
    })
    .await;

    node.terminate().await;
    wait_for(&mut alice_events, &mut a_seen, "the drop", |e| {
        matches!(e, Event::Connection(ConnectionState::Disconnected { .. })).then_some(())
    })
    .await;
    // Written while the server is down: queued in the outbox.
    let mut queued = Vec::new();
    for k in 0..5 {
        queued.push(alice.send_nowait(conv, format!("during {k}")).await.expect("queued"));
    }
    node.restart().await;

    let acks = wait_for_acks(&mut alice_events, &mut a_seen, &queued).await;
    let seqs: Vec<u64> = acks.iter().map(|a| a.seq).collect();
    assert_eq!(seqs, [7, 8, 9, 10, 11], "the outbox is delivered in the order it was written");
    wait_for(&mut bob_events, &mut b_seen, "seq 11", |e| {
        matches!(e, Event::Entry(entry) if entry.seq == 11).then_some(())
    })
    .await;

    let got = messages_from(&b_seen, conv, alice_id);
    let want: Vec<(u64, String)> = (0..5)
        .map(|k| (2 + k, format!("before {k}")))
        .chain((0..5).map(|k| (7 + k, format!("during {k}"))))
        .collect();
    assert_eq!(got, want, "bob sees every message once, in order, across the restart");
    assert_contiguous(&entries_of(&b_seen, conv));
    // Alice's own copies of her sends (an ack and the entry are separate frames).
    if !entries_of(&a_seen, conv).iter().any(|e| e.seq == 11) {
        wait_for(&mut alice_events, &mut a_seen, "seq 11 at alice", |e| {
            matches!(e, Event::Entry(entry) if entry.seq == 11).then_some(())
        })
        .await;
    }
    let at_alice = entries_of(&a_seen, conv);
    assert_contiguous(&at_alice);
    assert_eq!((at_alice[0].seq, at_alice.len()), (1, 11));

    alice.close().await.expect("close");
    bob.close().await.expect("close");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connections_while_sending_lose_and_repeat_nothing() {
    const BATCHES: usize = 5;
    const PER_BATCH: usize = 80;
    const N: usize = BATCHES * PER_BATCH;
    let node = start_node().await;
    let proxy = Proxy::start(Some(node.addr)).await;
    let (alice_id, alice_token) = account(&node.base_url(), "alice").await;
    let (bob_id, bob_token) = account(&node.base_url(), "bob").await;
    let api = Api::new(node.base_url()).expect("url").with_token(&alice_token);
    let conv = api.create_direct(bob_id).await.expect("direct conversation").id;

    // Both clients go through the proxy, so each cut drops both of them.
    let (alice, mut alice_events) =
        connect(config(&proxy.url(), &alice_token, Arc::new(MemoryStore::new()))).await;
    let (bob, mut bob_events) =
        connect(config(&proxy.url(), &bob_token, Arc::new(MemoryStore::new()))).await;
    let (mut a_seen, mut b_seen) = (Vec::new(), Vec::new());
    wait_connected(&mut alice_events, &mut a_seen).await;
    wait_connected(&mut bob_events, &mut b_seen).await;

    // Bob reads in the background until he has every message.
    let bob_task = tokio::spawn(async move {
        let mut n = 0;
        wait_for(&mut bob_events, &mut b_seen, "every message at bob", |e| {
            if matches!(e, Event::Entry(entry) if entry.sender == alice_id) {
                n += 1;
            }
            (n >= N).then_some(())
        })
        .await;
        (bob_events, b_seen)
    });

    // Each batch is queued at once; when its first ack is in (the rest are in flight or
    // still queued) every connection is cut, and the next batch is queued once alice has
    // seen the drop.
    let mut ids = Vec::new();
    for batch in 0..BATCHES {
        let mut batch_ids = HashSet::new();
        for k in 0..PER_BATCH {
            let id = alice.send_nowait(conv, format!("m{}", batch * PER_BATCH + k)).await;
            let id = id.expect("queued");
            batch_ids.insert(id.clone());
            ids.push(id);
        }
        wait_for(&mut alice_events, &mut a_seen, "an ack of the batch", |e| {
            matches!(e, Event::Acked(ack)
                if ack.client_msg_id.as_ref().is_some_and(|id| batch_ids.contains(id)))
            .then_some(())
        })
        .await;
        proxy.cut();
        wait_for(&mut alice_events, &mut a_seen, "the cut", |e| {
            matches!(e, Event::Connection(ConnectionState::Disconnected { .. })).then_some(())
        })
        .await;
    }
    let acks = wait_for_acks(&mut alice_events, &mut a_seen, &ids).await;
    let (_bob_events, b_seen) = bob_task.await.expect("bob's reader");

    // Exactly one ack per send, reported in the written order, with increasing seqs.
    let acked: Vec<&String> = a_seen
        .iter()
        .filter_map(|e| match e {
            Event::Acked(ack) => ack.client_msg_id.as_ref(),
            _ => None,
        })
        .collect();
    assert_eq!(acked, ids.iter().collect::<Vec<_>>(), "one ack event per send, in order");
    assert!(acks.windows(2).all(|w| w[0].seq < w[1].seq), "seqs in written order: {acks:?}");
    let n_drops = a_seen
        .iter()
        .filter(|e| matches!(e, Event::Connection(ConnectionState::Disconnected { .. })))
        .count();
    assert!(n_drops >= BATCHES, "alice was cut {n_drops} times");

    // Bob got every message once, in order, with contiguous seqs.
    let want: Vec<String> = (0..N).map(|k| format!("m{k}")).collect();
    let got: Vec<String> =
        messages_from(&b_seen, conv, alice_id).into_iter().map(|m| m.1).collect();
    assert_eq!(got, want);
    assert_contiguous(&entries_of(&b_seen, conv));
    assert_contiguous(&entries_of(&a_seen, conv));

    // The log itself holds each message exactly once (idempotent retries).
    let mut stored = Vec::new();
    let mut after = 0;
    loop {
        let page = api.history(conv, natter_client::HistoryRange::After(after), Some(500)).await;
        let page = page.expect("history");
        after = page.entries.last().map_or(after, |e| e.seq);
        stored.extend(page.entries.iter().filter_map(|e| body(e).map(str::to_owned)));
        if !page.has_more {
            break;
        }
    }
    assert_eq!(stored, want, "the log holds every message exactly once, in order");

    alice.close().await.expect("close");
    bob.close().await.expect("close");
    drop(proxy);
    node.stop().await;
}

/// Waits until every id in `ids` was acked; returns the acks in the order of `ids`.
async fn wait_for_acks(
    events: &mut natter_client::Events,
    seen: &mut Vec<Event>,
    ids: &[String],
) -> Vec<natter_client::proto::Ack> {
    let mut missing: HashSet<&String> = ids.iter().collect();
    for e in seen.iter() {
        if let Event::Acked(ack) = e {
            missing.remove(ack.client_msg_id.as_ref().expect("acks carry the id"));
        }
    }
    if !missing.is_empty() {
        wait_for(events, seen, "every ack", |e| {
            if let Event::Acked(ack) = e {
                missing.remove(ack.client_msg_id.as_ref().expect("acks carry the id"));
            }
            missing.is_empty().then_some(())
        })
        .await;
    }
    ids.iter()
        .map(|id| {
            seen.iter()
                .find_map(|e| match e {
                    Event::Acked(ack) if ack.client_msg_id.as_ref() == Some(id) => {
                        Some(ack.clone())
                    }
                    _ => None,
                })
                .expect("acked")
        })
        .collect()
}
