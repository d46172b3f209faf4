//! Cluster mode, a rolling restart under traffic: three nodes behind HAProxy, which checks
//! each node's `/readyz`, and SDK clients sending through it throughout. Each node in turn
//! gets SIGTERM and drains: its `/readyz` fails first (HAProxy takes it out), it keeps
//! serving for `--drain-unready-ms`, then closes its sessions one at a time over
//! `--drain-spread-ms` (close 1012), finishes its commits and exits 0; it is started again
//! before the next one goes. Every acked message is stored exactly once, in the order it
//! was sent, and every member ends with the store's whole log; no session of a draining node
//! closed before its readiness failed; its closes were spread over the window.

mod cluster_traffic;

use std::time::{Duration, Instant};

use cluster_traffic::{
    Member, Traffic, ack_counts, assert_contiguous_log, assert_member_saw_log,
    assert_sends_committed_once, connect_all, members_on, store_log, wait_all_acked,
    wait_more_acks,
};
use natter_testkit::poll_until;
use natter_testkit::process::{FAST, ProcessCluster, get, register};

/// The binary under test, built by cargo before these tests run.
const NATTER: &str = env!("CARGO_BIN_EXE_natter");

/// HAProxy checks every 200 ms and takes a node out at its first failed check.
const UNREADY_MS: u64 = 1000;
const SPREAD_MS: u64 = 1500;
const PACE: Duration = Duration::from_millis(50);
const BURST: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_traffic_drops_loses_and_repeats_nothing() {
    let (unready, spread) = (UNREADY_MS.to_string(), SPREAD_MS.to_string());
    let mut args = FAST.to_vec();
    args.extend(["--drain-unready-ms", &unready, "--drain-spread-ms", &spread]);
    let mut c = ProcessCluster::start(NATTER, 3, &args).await.with_haproxy_on_readiness().await;
    let names = ["node-1", "node-2", "node-3"];
    for name in names {
        c.haproxy.as_ref().expect("haproxy").wait_status(name, "UP").await;
    }
    let direct = c.node(1).addr();

    // Nine clients in three groups, through the balancer: three on each node.
    let mut accounts = Vec::new();
    for i in 0..9 {
        accounts.push(register(direct, &format!("user{i}")).await);
    }
    let mut groups = Vec::new();
    for g in 0..3 {
        let (owner, others) = (&accounts[3 * g], [&accounts[3 * g + 1], &accounts[3 * g + 2]]);
        owner.contacts(direct, &others).await;
        let ids = others.map(|m| m.id);
        let conv = owner.api(direct).create_group("team", &ids).await.expect("a group");
        groups.push(conv.conversation.id);
    }
    let front = c.front();
    let members = connect_all(&accounts, front).await;
    let all: Vec<&Member> = members.iter().collect();
    let senders: Vec<_> = members.iter().enumerate().map(|(i, m)| (m, groups[i / 3])).collect();
    let traffic = Traffic::start(&senders, PACE, BURST);
    wait_more_acks("traffic to flow", &all, &vec![0; all.len()], 10).await;

    for (i, name) in names.iter().enumerate() {
        let addr = c.node(i).addr();
        // Who is on the node about to go, and how often each was dropped so far.
        let on_node = members_on(&c.redis, &members, name).await;
        let drops_before: Vec<usize> = members.iter().map(|m| m.log().drops.len()).collect();
        let acks_before = ack_counts(&all);

        let asked = Instant::now();
        c.node(i).sigterm();
        let unready_at = poll_until(
            &format!("{name}'s /readyz to fail"),
            || async { (get(addr, "/readyz").await.0 == 503).then(Instant::now) },
            String::new,
        )
        .await;
        let dropped: Vec<&str> = members
            .iter()
            .zip(&drops_before)
            .filter(|(m, before)| m.log().drops.len() > **before)
            .map(|(m, _)| m.name())
            .collect();
        assert!(dropped.is_empty(), "{name}: {dropped:?} dropped before /readyz failed");
        c.haproxy.as_ref().expect("haproxy").wait_status(name, "DOWN").await;
        let status = c.node_mut(i).wait().await;
        assert!(status.success(), "{name} exited with {status}");

        // Its clients were closed one at a time over the window, and came back elsewhere.
        let mut closes = Vec::new();
        for m in &on_node {
            let before = drops_before[members.iter().position(|x| x.id() == m.id()).unwrap()];
            let log = m.log();
            let at = *log.drop_times.get(before).unwrap_or_else(|| {
                panic!("{}: on {name}, not dropped by its drain: {:?}", m.name(), log.drops)
            });
            closes.push(at);
        }
        closes.sort();
        if let (Some(first), Some(last)) = (closes.first(), closes.last()) {
            assert!(*first >= unready_at, "{name}: a session closed before /readyz failed");
            assert!(
                *first >= asked + Duration::from_millis(UNREADY_MS / 2),
                "{name}: the first close came {:?} after SIGTERM (unready window {UNREADY_MS} ms)",
                *first - asked
            );
            if closes.len() >= 2 {
                // Evenly spread: n closes span (n-1)/n of the window; half of it is plenty.
                let n = closes.len() as u64;
                let least = Duration::from_millis(SPREAD_MS * (n - 1) / n / 2);
                let span = *last - *first;
                assert!(
                    span >= least,
                    "{name}: {n} closes within {span:?} (spread {SPREAD_MS} ms)"
                );
            }
        }
        eprintln!(
            "{name}: unready {:?} after SIGTERM, {} sessions closed {:?} after it",
            unready_at - asked,
            closes.len(),
            closes.iter().map(|t| *t - asked).collect::<Vec<_>>()
        );
        assert!(i > 0 || !on_node.is_empty(), "round robin put nobody on node-1");

        c.node_mut(i).respawn().await;
        c.node(i).wait_ready().await;
        c.haproxy.as_ref().expect("haproxy").wait_status(name, "UP").await;
        wait_more_acks(&format!("traffic after {name}'s restart"), &all, &acks_before, 10).await;
    }
    traffic.stop().await;
    wait_all_acked(&all).await;

    for (g, &conv) in groups.iter().enumerate() {
        let log = store_log(&accounts[3 * g].api(direct), conv).await;
        assert_contiguous_log(conv, &log);
        assert_sends_committed_once(conv, &log, &all[3 * g..3 * g + 3], &[], true);
        for m in &all[3 * g..3 * g + 3] {
            assert_member_saw_log(m, conv, &log).await;
        }
    }
    for m in members {
        m.close().await;
    }
}
