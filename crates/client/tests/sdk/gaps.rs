//! Gap detection (G1 as the app sees it, whatever the network does): a proxy between the
//! server and the SDK drops live `entry` frames, so `seq` jumps; the SDK holds what follows,
//! fills the gap from history and hands the app a contiguous run with no duplicate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::support::*;
use natter_client::proto::ServerFrame;
use natter_client::{Api, Event, MemoryStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_live_entries_are_filled_from_history_before_what_follows() {
    let node = start_node().await;
    let proxy = Proxy::start(Some(node.addr)).await;
    let (alice_id, alice_token) = account(&node.base_url(), "alice").await;
    let (bob_id, bob_token) = account(&node.base_url(), "bob").await;
    let conv = Api::new(node.base_url()).expect("url").with_token(&alice_token);
    let conv = conv.create_direct(bob_id).await.expect("direct").id;

    // Bob listens through the proxy, which loses the live frames of seq 4 and of seq 7..=9
    // (once each: the history pages that fill the gaps get through).
    let lost = [4, 7, 8, 9].map(|seq| (seq, AtomicBool::new(false)));
    proxy.drop_frames(move |frame| match frame {
        ServerFrame::Entry { entry } if entry.conversation == conv => {
            lost.iter().any(|(seq, done)| *seq == entry.seq && !done.swap(true, Ordering::SeqCst))
        }
        _ => false,
    });
    let (bob, mut bob_events) =
        connect(config(&proxy.url(), &bob_token, Arc::new(MemoryStore::new()))).await;
    let (alice, mut alice_events) =
        connect(config(&node.base_url(), &alice_token, Arc::new(MemoryStore::new()))).await;
    let (mut a_seen, mut b_seen) = (Vec::new(), Vec::new());
    wait_connected(&mut bob_events, &mut b_seen).await;
    wait_connected(&mut alice_events, &mut a_seen).await;

    for k in 0..10 {
        alice.send(conv, format!("m{k}")).await.expect("send");
    }
    wait_for(&mut bob_events, &mut b_seen, "seq 11", |e| {
        matches!(e, Event::Entry(entry) if entry.seq == 11).then_some(())
    })
    .await;
    assert_eq!(proxy.n_dropped(), 4, "the proxy did lose four live entries");
    let at_bob = entries_of(&b_seen, conv);
    let seqs: Vec<u64> = at_bob.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=11).collect::<Vec<_>>());
    let bodies: Vec<&str> =
        at_bob.iter().filter(|e| e.sender == alice_id).filter_map(|e| body(e)).collect();
    let want: Vec<String> = (0..10).map(|k| format!("m{k}")).collect();
    assert_eq!(bodies, want);

    alice.close().await.expect("close");
    bob.close().await.expect("close");
    drop(proxy);
    node.stop().await;
}
