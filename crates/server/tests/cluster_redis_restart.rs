//! Cluster mode, Redis killed and started again (same port, empty) under traffic across
//! nodes: senders (SDK) on node-1, receivers (raw WebSockets, so that no SDK gap filling
//! hides what the server sent) on node-2 and node-3.
//!
//! While Redis is down sends are still acked (PostgreSQL is up). Round one stops sending
//! before Redis comes back, so that the entries committed meanwhile are the tail of the log
//! and no later entry reveals them: the nodes must reconnect, resubscribe and catch their
//! sessions up by themselves. Then the registry is rebuilt and a new message crosses nodes
//! live. Round two restarts Redis while traffic flows. Each receiver ends with exactly the
//! store's log, every entry once, in order.

mod cluster_traffic;

use std::time::{Duration, Instant};

use cluster_traffic::{
    Member, Raw, Traffic, ack_counts, assert_contiguous_log, assert_same_log,
    assert_sends_committed_once, store_log, wait_all_acked, wait_more_acks,
};
use natter_proto::{ConversationId, UserId};
use natter_testkit::process::{FAST, ProcessCluster, Redis, register};
use natter_testkit::{poll_until, within};

/// The binary under test, built by cargo before these tests run.
const NATTER: &str = env!("CARGO_BIN_EXE_natter");

const HEARTBEAT_MS: u64 = 300;
/// Each sender queues `BURST` messages every `PACE`: several on the wire at once.
const PACE: Duration = Duration::from_millis(50);
const BURST: usize = 3;
/// A node's Redis connections retry at least once a second; then a few heartbeats (the
/// registry is rebuilt, and the sessions catch up, within this of Redis's restart).
const REGISTRY_WITHIN: Duration = Duration::from_millis(1000 + 5 * HEARTBEAT_MS + 2000);
/// What a node logs when a Redis call timed out (crates/server/src/cluster.rs).
const REDIS_TIMED_OUT: &str = "the bus did not answer within";
/// From an ack on node-1 to the entry on another node's session, Redis being up.
const LIVE_WITHIN: Duration = Duration::from_secs(3);

/// Whether every `(user, node)` has its registry entry and every node its live entry.
async fn registry_rebuilt(redis: &Redis, expected: &[(UserId, &str)]) -> bool {
    for (user, node) in expected {
        let entry = redis.zset(&format!("natter:u:{}", user.0)).await;
        if !entry.iter().any(|(n, _)| n == node) {
            return false;
        }
    }
    let nodes = redis.zset("natter:nodes").await;
    ["node-1", "node-2", "node-3"].iter().all(|n| nodes.iter().any(|(m, _)| m == n))
}

/// Waits until each receiver was sent its conversations up to the store's last seq; the
/// store's logs.
async fn wait_receivers_caught_up(
    api: &natter_client::Api,
    expect: &[(&Raw, ConversationId)],
) -> Vec<Vec<natter_proto::Entry>> {
    let mut logs = Vec::new();
    for (raw, conv) in expect {
        let log = store_log(api, *conv).await;
        raw.wait_upto(*conv, log.last().map_or(0, |e| e.seq)).await;
        logs.push(log);
    }
    logs
}

/// The store's logs are 1..=N, every send is in them once, in order, and each receiver was
/// sent exactly its conversations' logs (`senders[1]` alone writes to the second one).
async fn check_all(
    what: &str,
    convs: [(&natter_client::Api, ConversationId); 2],
    senders: &[&Member; 2],
    expect: &[(&Raw, ConversationId)],
) {
    let mut logs = Vec::new();
    for (api, conv) in convs {
        let log = store_log(api, conv).await;
        assert_contiguous_log(conv, &log);
        logs.push((conv, log));
    }
    assert_sends_committed_once(logs[0].0, &logs[0].1, senders, &[], true);
    assert_sends_committed_once(logs[1].0, &logs[1].1, &senders[1..], &[], true);
    for (raw, conv) in expect {
        let log = &logs.iter().find(|(c, _)| c == conv).expect("a checked conversation").1;
        raw.wait_upto(*conv, log.last().map_or(0, |e| e.seq)).await;
        assert_same_log(&format!("{} ({what})", raw.name), *conv, &raw.entries(*conv), log);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_under_traffic_loses_nothing() {
    let mut c = ProcessCluster::start(NATTER, 3, FAST).await;
    let (n1, n2, n3) = (c.node(0).addr(), c.node(1).addr(), c.node(2).addr());
    let sol = register(n1, "sol").await;
    let sam = register(n1, "sam").await;
    let rex = register(n2, "rex").await;
    let roy = register(n3, "roy").await;
    sol.contacts(n1, &[&sam, &rex, &roy]).await;
    let g = within("create a group", sol.api(n1).create_group("all", &[sam.id, rex.id, roy.id]))
        .await
        .expect("group created")
        .conversation
        .id;
    let d = within("create a direct", sam.api(n1).create_direct(roy.id))
        .await
        .expect("direct created")
        .id;
    let api = sol.api(n1);
    let api_d = sam.api(n1);

    let rex_raw = Raw::receiver(&rex, n2).await;
    let roy_raw = Raw::receiver(&roy, n3).await;
    let expect = [(&rex_raw, g), (&roy_raw, g), (&roy_raw, d)];
    let sol_m = Member::connect(&sol, n1).await;
    let sam_m = Member::connect(&sam, n1).await;
    let senders = [&sol_m, &sam_m];
    for m in senders {
        m.wait_connects(1).await;
    }
    let registered =
        [(sol.id, "node-1"), (sam.id, "node-1"), (rex.id, "node-2"), (roy.id, "node-3")];
    poll_until(
        "every session's registry entry",
        || async { registry_rebuilt(&c.redis, &registered).await.then_some(()) },
        String::new,
    )
    .await;
    let flows = [(&sol_m, g), (&sam_m, g), (&sam_m, d)];
    // ---- Round one: the tail committed while Redis is down reaches the receivers. ----
    let traffic = Traffic::start(&flows, PACE, BURST);
    for (raw, conv) in expect {
        raw.wait_upto(conv, 10).await;
    }
    let at_kill = ack_counts(&senders);
    c.redis.kill().await;
    wait_more_acks("sends acked while Redis is down", &senders, &at_kill, 20).await;
    // Long enough that the nodes' Redis calls time out, not just fail at once.
    for i in 0..3 {
        let node = c.node(i);
        poll_until(
            &format!("{} to time out on Redis", node.name()),
            || async { node.logs().contains(REDIS_TIMED_OUT).then_some(()) },
            || node.logs().tail(20),
        )
        .await;
    }
    traffic.stop().await;
    wait_all_acked(&senders).await;
    // Nothing crosses nodes without Redis: each receiver is missing the tail now.
    for (raw, conv) in expect {
        let last = senders.iter().map(|m| m.max_acked(conv)).max().unwrap_or(0);
        let upto = raw.log().upto(conv);
        assert!(upto < last, "{} was sent {conv} up to {upto} of {last} with Redis down", raw.name);
    }

    c.redis.start_again().await;
    let restarted_at = Instant::now();
    let rebuilt = async {
        poll_until(
            "the registry to be rebuilt",
            || async { registry_rebuilt(&c.redis, &registered).await.then(Instant::now) },
            String::new,
        )
        .await
    };
    let caught_up_then_live = async {
        wait_receivers_caught_up(&api, &[expect[0], expect[1]]).await;
        wait_receivers_caught_up(&api_d, &[expect[2]]).await;
        let caught_up_at = Instant::now();
        // At once, before anything else happens: a new message crosses nodes live.
        let ack = sol_m.send_recorded(g, "right after the restart").await;
        let acked_at = Instant::now();
        let mut late = Vec::new();
        for raw in [&rex_raw, &roy_raw] {
            let deadline = acked_at + LIVE_WITHIN;
            let got = loop {
                let upto = raw.log().upto(g);
                if upto >= ack.seq || Instant::now() > deadline {
                    break upto >= ack.seq;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            if !got {
                late.push(raw.name.clone());
            }
        }
        (caught_up_at, acked_at, ack, late)
    };
    let (rebuilt_at, (caught_up_at, acked_at, ack, late)) =
        tokio::join!(rebuilt, caught_up_then_live);
    let registry = rebuilt_at - restarted_at;
    let caught_up = caught_up_at - restarted_at;
    assert!(
        late.is_empty(),
        "seq {} of {g}, acked {:?} after Redis restarted (receivers caught up after {caught_up:?}, \
         registry rebuilt after {registry:?}), did not reach {late:?} within {LIVE_WITHIN:?}",
        ack.seq,
        acked_at - restarted_at,
    );
    assert!(
        caught_up <= REGISTRY_WITHIN,
        "the receivers caught up {caught_up:?} after Redis restarted (heartbeat {HEARTBEAT_MS} ms)"
    );
    assert!(
        registry <= REGISTRY_WITHIN,
        "the registry was rebuilt {registry:?} after Redis restarted (heartbeat {HEARTBEAT_MS} ms)"
    );
    check_all("round one", [(&api, g), (&api_d, d)], &senders, &expect).await;

    // ---- Round two: Redis restarts while traffic flows. ----
    let traffic = Traffic::start(&flows, PACE, BURST);
    let start: Vec<u64> = expect.iter().map(|(raw, conv)| raw.log().upto(*conv)).collect();
    for ((raw, conv), s) in expect.iter().zip(&start) {
        raw.wait_upto(*conv, s + 10).await;
    }
    let at_kill = ack_counts(&senders);
    c.redis.kill().await;
    wait_more_acks("sends acked while Redis is down", &senders, &at_kill, 20).await;
    c.redis.start_again().await;
    let at_restart: Vec<u64> = expect
        .iter()
        .map(|(_, conv)| senders.iter().map(|m| m.max_acked(*conv)).max().unwrap_or(0))
        .collect();
    // Entries committed after the restart reach the receivers live (with the gap before them
    // filled from the store).
    for ((raw, conv), s) in expect.iter().zip(&at_restart) {
        raw.wait_upto(*conv, s + 20).await;
    }
    traffic.stop().await;
    wait_all_acked(&senders).await;
    check_all("round two", [(&api, g), (&api_d, d)], &senders, &expect).await;

    eprintln!(
        "after the restart: receivers caught up in {caught_up:?}, registry rebuilt in \
         {registry:?}; {} sends",
        senders.iter().map(|m| m.log().sent.len()).sum::<usize>()
    );
    for m in [sol_m, sam_m] {
        m.close().await;
    }
}
