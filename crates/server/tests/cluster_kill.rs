//! Cluster mode, a node killed with `kill -9` under traffic: three nodes behind HAProxy, SDK
//! clients in two groups sending continuously through the balancer. Node-1 dies with some of
//! them on it; they reconnect through HAProxy to the survivors and resume. Acks come after
//! the PostgreSQL commit, so nothing is lost: every send handed to an outbox is stored
//! exactly once, in the order it was written, and every member ends with the store's whole
//! log, 1..=N. Node-1's Redis entries (registry, presence, live nodes) are gone within their
//! TTL, and a user who was connected to node-1 alone is seen offline by watchers on both
//! other nodes.
//!
//! The second test kills a node in the narrowest spot: it committed (and acked) an entry and
//! did not publish it to the bus yet (Redis is frozen meanwhile so that it cannot). Nothing
//! routes that entry again (a retried send is answered from the store), so only the
//! survivors can bring it to their sessions.

mod cluster_traffic;

use std::time::{Duration, Instant};

use cluster_traffic::{
    Member, Raw, Traffic, ack_counts, assert_contiguous_log, assert_member_saw_log,
    assert_sends_committed_once, connect_all, members_on, store_log, wait_all_acked,
    wait_more_acks,
};
use natter_proto::{ClientFrame, Status};
use natter_testkit::process::{FAST, ProcessCluster, Redis, register, signal};
use natter_testkit::{WsClient, poll_until, within};

/// The binary under test, built by cargo before these tests run.
const NATTER: &str = env!("CARGO_BIN_EXE_natter");

const TTL_MS: u64 = 1500;
const HEARTBEAT_MS: u64 = 300;
/// The dead node's entries lapse at most `TTL` after its last heartbeat; a survivor's
/// heartbeat finds it within a period, and sweeps. The rest is slack for a loaded machine.
const GONE_WITHIN: Duration = Duration::from_millis(TTL_MS + 3000);
/// Each sender queues `BURST` messages every `PACE`: several on the wire at once.
const PACE: Duration = Duration::from_millis(50);
const BURST: usize = 3;

/// The tests of this file run one at a time: each runs a cluster, the machine has 2 cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every Redis entry naming `node`: members of `natter:u:*`, `natter:p:*` and
/// `natter:nodes`, and its user set `natter:nu:{node}`.
async fn entries_naming(redis: &Redis, node: &str) -> Vec<String> {
    let mut conn = redis.conn().await;
    let mut keys: Vec<String> = within(
        "redis KEYS",
        redis::cmd("KEYS").arg("natter:[up]:*").query_async::<Vec<String>>(&mut conn),
    )
    .await
    .expect("redis KEYS");
    keys.push("natter:nodes".to_owned());
    let mut found = Vec::new();
    for key in keys {
        let members: Vec<String> = within(
            "redis ZRANGE",
            redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).query_async(&mut conn),
        )
        .await
        .expect("redis ZRANGE");
        let status_of_node = format!("{node}|");
        found.extend(
            members
                .into_iter()
                .filter(|m| m == node || m.starts_with(&status_of_node))
                .map(|m| format!("{key} {m}")),
        );
    }
    let set = format!("natter:nu:{node}");
    let exists: bool =
        within("redis EXISTS", redis::cmd("EXISTS").arg(&set).query_async(&mut conn))
            .await
            .expect("redis EXISTS");
    if exists {
        found.push(set);
    }
    found
}

fn unix_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.expect("the clock is after 1970").as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_traffic_loses_and_repeats_nothing() {
    let _serial = SERIAL.lock().await;
    let mut c = ProcessCluster::start(NATTER, 3, FAST).await.with_haproxy().await;
    let haproxy = c.haproxy.as_ref().expect("haproxy");
    for server in ["node-1", "node-2", "node-3"] {
        haproxy.wait_status(server, "UP").await;
    }
    let (n1, n2, n3) = (c.node(0).addr(), c.node(1).addr(), c.node(2).addr());

    // Accounts and conversations over node-2 directly: the balancer only sees the SDK
    // clients, so its round robin spreads them over the three nodes.
    let mut accounts = Vec::new();
    for handle in ["ann", "bea", "cid", "dan", "eve", "fay"] {
        accounts.push(register(n2, handle).await);
    }
    let group = |owner: usize, title: &'static str, others: [usize; 2]| {
        let (owner, api) = (&accounts[owner], accounts[owner].api(n2));
        let members = others.map(|i| &accounts[i]);
        async move {
            // The owner's contacts, so that the creation adds them.
            owner.contacts(n2, &members).await;
            let ids = members.map(|m| m.id);
            let conv = within("create a group", api.create_group(title, &ids)).await;
            conv.expect("group created").conversation.id
        }
    };
    let g1 = group(0, "one", [1, 2]).await;
    let g2 = group(3, "two", [4, 5]).await;

    // Zed is on node-1 only and never reconnects; Wes (node-2) and Wyn (node-3) watch him.
    let zed = register(n2, "zed").await;
    let wes = register(n2, "wes").await;
    let wyn = register(n3, "wyn").await;
    zed.contacts(n2, &[&wes, &wyn]).await;
    within("create a group", zed.api(n2).create_group("watch", &[wes.id, wyn.id]))
        .await
        .expect("group created");
    let zed_ws = WsClient::open(n1, &zed.token).await;
    let watch = [ClientFrame::SubscribePresence { req_id: 1, users: vec![zed.id] }];
    let watchers = [
        Raw::start("wes", WsClient::open(n2, &wes.token).await, &watch).await,
        Raw::start("wyn", WsClient::open(n3, &wyn.token).await, &watch).await,
    ];
    for w in &watchers {
        w.wait_status(zed.id, Status::Online).await;
    }

    let front = c.front();
    let members = connect_all(&accounts, front).await;
    // Where the balancer put each client: the registry says.
    let on_victim: Vec<String> = members_on(&c.redis, &members, "node-1")
        .await
        .into_iter()
        .map(|m| m.name().to_owned())
        .collect();
    assert!(!on_victim.is_empty(), "round robin over three nodes put no client on node-1");
    let before_kill = entries_naming(&c.redis, "node-1").await;
    assert!(
        before_kill.contains(&"natter:nodes node-1".to_owned())
            && before_kill.contains(&format!("natter:u:{} node-1", zed.id.0))
            && before_kill.contains(&format!("natter:p:{} node-1|online", zed.id.0)),
        "node-1's entries before the kill: {before_kill:?}"
    );

    let all: Vec<&Member> = members.iter().collect();
    let senders: Vec<_> =
        members.iter().enumerate().map(|(i, m)| (m, if i < 3 { g1 } else { g2 })).collect();
    let traffic = Traffic::start(&senders, PACE, BURST);
    wait_more_acks("traffic to flow", &all, &vec![0; all.len()], 10).await;

    let at_kill = ack_counts(&all);
    // The clients about to lose their node have sends on the wire at the kill: the outbox
    // retries them on the next node, which must store each once (node-1 may have committed
    // some without acking them: the short pause lets it get that far).
    let mut in_flight = 0;
    for (i, m) in members.iter().enumerate() {
        if on_victim.iter().any(|n| n == m.name()) {
            for k in 0..5 {
                m.queue(if i < 3 { g1 } else { g2 }, &format!("{} at the kill {k}", m.name()))
                    .await;
            }
            in_flight += m.log().unacked();
        }
    }
    tokio::time::sleep(Duration::from_millis(4)).await;
    let killed_at = Instant::now();
    let killed_ms = unix_ms();
    c.node_mut(0).kill9().await;
    drop(zed_ws);

    // Node-1's Redis entries go while traffic goes on.
    let redis = &c.redis;
    let gone_at = poll_until(
        "node-1's Redis entries to be removed",
        || async { entries_naming(redis, "node-1").await.is_empty().then(Instant::now) },
        String::new,
    )
    .await;
    let gone_after = gone_at - killed_at;
    assert!(
        gone_after <= GONE_WITHIN,
        "node-1's entries lasted {gone_after:?} after the kill (TTL {TTL_MS} ms, heartbeat \
         {HEARTBEAT_MS} ms)"
    );

    // The clients that were on node-1 came back through the balancer; everyone keeps sending.
    c.haproxy.as_ref().expect("haproxy").wait_status("node-1", "DOWN").await;
    for m in members.iter().filter(|m| on_victim.iter().any(|n| n == m.name())) {
        m.wait_connects(2).await;
    }
    wait_more_acks("traffic to flow after the kill", &all, &at_kill, 30).await;
    traffic.stop().await;
    wait_all_acked(&all).await;

    let api = accounts[0].api(n3);
    let api2 = accounts[3].api(n3);
    for (conv, api, group) in [(g1, &api, &all[..3]), (g2, &api2, &all[3..])] {
        let log = store_log(api, conv).await;
        assert_contiguous_log(conv, &log);
        assert_sends_committed_once(conv, &log, group, &[], true);
        for m in group {
            assert_member_saw_log(m, conv, &log).await;
        }
    }

    // Sends node-1 had committed but not acked when it died (acked after the kill with an
    // earlier commit time): the next node recognized the retry by its client_msg_id.
    let retried_after_commit: usize = all
        .iter()
        .map(|m| {
            let log = m.log();
            log.acks
                .iter()
                .zip(&log.ack_times)
                .filter(|(a, at)| **at > killed_at && a.ts < killed_ms)
                .count()
        })
        .sum();
    eprintln!(
        "clients on node-1: {on_victim:?}, {in_flight} of their sends unacked at the kill \
         ({retried_after_commit} committed, not acked); its entries gone {gone_after:?} \
         after the kill; {} sends",
        all.iter().map(|m| m.log().sent.len()).sum::<usize>()
    );

    // Both watchers were told Zed went offline (checked last, so that a failure here does
    // not hide the checks above), within the same bound as the entries.
    let mut offline_after = Vec::new();
    for (w, node) in watchers.iter().zip(["node-2", "node-3"]) {
        let deadline = killed_at + GONE_WITHIN;
        let seen = loop {
            let seen = w.log().status_of(zed.id);
            if seen.is_some_and(|(_, s)| s == Status::Offline) || Instant::now() > deadline {
                break seen;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        match seen {
            Some((at, Status::Offline)) if at <= deadline => offline_after.push(at - killed_at),
            other => panic!(
                "{} on {node} last saw zed (connected to node-1 alone) {:?}, and no offline \
                 within {GONE_WITHIN:?} of node-1's kill ({:?} ago)",
                w.name,
                other.map(|(_, status)| status),
                killed_at.elapsed()
            ),
        }
    }
    eprintln!("zed offline {offline_after:?} after the kill");
    for m in members {
        m.close().await;
    }
}

/// The pid of the Redis server (INFO says).
async fn redis_pid(redis: &Redis) -> u32 {
    let info: String = redis.cmd(&["INFO", "server"]).await;
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap_or_else(|| panic!("no process_id in INFO: {info}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_a_killed_node_committed_but_did_not_publish_reaches_the_others() {
    let _serial = SERIAL.lock().await;
    let mut c = ProcessCluster::start(NATTER, 2, FAST).await;
    let (n1, n2) = (c.node(0).addr(), c.node(1).addr());
    let vic = register(n1, "vic").await;
    let rae = register(n2, "rae").await;
    let d = within("create a direct", vic.api(n1).create_direct(rae.id))
        .await
        .expect("direct created")
        .id;
    // Vic sends on node-1 (raw: nothing retries); Rae reads on node-2.
    let mut vic_ws = WsClient::open(n1, &vic.token).await;
    let rae_raw = Raw::receiver(&rae, n2).await;
    let first = vic_ws.send_msg(d, "first", "first").await;
    rae_raw.wait_upto(d, first.seq).await;

    // Redis frozen, node-1 commits and acks the next message (PostgreSQL is up) but its
    // publisher waits on Redis; node-1 dies right there. The entry was never published.
    let redis_pid = redis_pid(&c.redis).await;
    signal(redis_pid, "STOP");
    let last = vic_ws.send_msg(d, "last words", "last words").await;
    let killed_at = Instant::now();
    c.node_mut(0).kill9().await;
    signal(redis_pid, "CONT");

    // Committed means it reaches every member: here, once node-2 finds node-1 dead.
    let deadline = killed_at + GONE_WITHIN;
    while rae_raw.log().upto(d) < last.seq && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let upto = rae_raw.log().upto(d);
    assert!(
        upto >= last.seq,
        "node-1 committed and acked seq {} of {d}, and died before publishing it; {:?} later \
         rae on node-2 has been sent up to seq {upto} only",
        last.seq,
        killed_at.elapsed()
    );
    let log = store_log(&rae.api(n2), d).await;
    assert_contiguous_log(d, &log);
    cluster_traffic::assert_same_log("rae", d, &rae_raw.entries(d), &log);
}
