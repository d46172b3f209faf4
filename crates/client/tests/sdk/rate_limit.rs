//! A well-behaved SDK client that hits the server's send rate limit slows down instead of
//! failing: every message is acked (none reported failed), the peer sees each once and in
//! order, the connection stays up, and it took about as long as the limit allows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use natter_client::{ConnectionState, Event, MemoryStore};
use natter_testkit::TestServer;

const N: usize = 40;
const PER_SEC: u32 = 20;
const BURST: u32 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_client_over_the_send_limit_slows_down_and_delivers_everything() {
    let node = TestServer::start_with(|cfg| {
        cfg.limits.send_per_sec = PER_SEC;
        cfg.limits.send_burst = BURST;
    })
    .await;
    let url = node.base_url();
    let (_, alice_token) = account(&url, "alice").await;
    let (bob_id, bob_token) = account(&url, "bob").await;
    let alice_api = natter_client::Api::new(&url).expect("url").with_token(&alice_token);
    let conv = alice_api.create_direct(bob_id).await.expect("direct").id;

    let (alice, mut a_events) =
        connect(config(&url, &alice_token, Arc::new(MemoryStore::new()))).await;
    let (_bob, mut b_events) =
        connect(config(&url, &bob_token, Arc::new(MemoryStore::new()))).await;
    let (mut a_seen, mut b_seen) = (Vec::new(), Vec::new());
    wait_connected(&mut a_events, &mut a_seen).await;
    wait_connected(&mut b_events, &mut b_seen).await;

    let connected_at = a_seen.len();
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..N {
        ids.push(alice.send_nowait(conv, format!("m{i}")).await.expect("queued"));
    }
    let mut acked = Vec::new();
    while acked.len() < N {
        let id = wait_for(&mut a_events, &mut a_seen, "every ack", |e| match e {
            Event::Acked(ack) => ack.client_msg_id.clone(),
            Event::SendFailed { error, .. } => panic!("a rate-limited send failed: {error:?}"),
            _ => None,
        })
        .await;
        acked.push(id);
    }
    let elapsed = started.elapsed();
    assert_eq!(acked, ids, "acks in the order written");
    // The burst goes at once, the rest at PER_SEC: (40 - 5) / 20 = 1.75 s at the least.
    let least = Duration::from_secs_f64((N as u32 - BURST) as f64 / PER_SEC as f64 * 0.9);
    assert!(elapsed >= least, "{elapsed:?}: the client cannot have gone faster than the limit");
    let reconnected = a_seen[connected_at..]
        .iter()
        .filter(|e| matches!(e, Event::Connection(ConnectionState::Connecting { .. })))
        .count();
    assert_eq!(reconnected, 0, "slowing down needs no reconnect: {:#?}", &a_seen[connected_at..]);

    // Bob gets each message once, in order, in the order Alice wrote them.
    let mut n_messages = 0;
    wait_for(&mut b_events, &mut b_seen, "every message at the peer", |e| {
        if matches!(e, Event::Entry(entry) if entry.conversation == conv && body(entry).is_some()) {
            n_messages += 1;
        }
        (n_messages == N).then_some(())
    })
    .await;
    let entries = entries_of(&b_seen, conv);
    assert_contiguous(&entries);
    let bodies: Vec<&str> = entries.iter().filter_map(|e| body(e)).collect();
    let want: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
    assert_eq!(bodies, want);
}
