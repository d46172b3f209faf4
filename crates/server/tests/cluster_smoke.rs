//! Cluster mode, smallest case: two `natter` processes on one PostgreSQL and one Redis,
//! behind HAProxy. Both join through Redis; an account registered through one node logs in
//! through the other (the store is shared); HAProxy passes requests to both, and when a node
//! is killed HAProxy marks it down, the other keeps answering, and the node comes back on its
//! address.

use natter_testkit::poll_until;
use natter_testkit::process::{Postgres, ProcessCluster, Redis, get, login, register};

/// The binary under test, built by cargo before these tests run.
const NATTER: &str = env!("CARGO_BIN_EXE_natter");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_the_store_behind_haproxy() {
    let mut c = ProcessCluster::start(NATTER, 2, &[]).await.with_haproxy().await;
    let (a, b) = (c.node(0).addr(), c.node(1).addr());
    // Both joined through Redis: each is in the live-node set.
    let redis = &c.redis;
    poll_until(
        "both nodes in natter:nodes",
        || async {
            let nodes: Vec<String> =
                redis.zset("natter:nodes").await.into_iter().map(|m| m.0).collect();
            (nodes == ["node-1", "node-2"] || nodes == ["node-2", "node-1"]).then_some(())
        },
        || c.node(0).logs().tail(20),
    )
    .await;

    let alice = register(a, "alice").await;
    let again = login(b, "alice").await;
    assert_eq!(again.id, alice.id, "node-2 knows the account node-1 created");
    let me = again.api(a).me().await.expect("node-1 accepts node-2's token");
    assert_eq!(me.user_id, alice.id);

    let haproxy = c.haproxy.as_ref().expect("haproxy");
    haproxy.wait_status("node-1", "UP").await;
    haproxy.wait_status("node-2", "UP").await;
    for _ in 0..4 {
        assert_eq!(get(c.front(), "/healthz").await, (200, "ok".to_owned()));
    }
    // Round robin: logins through the proxy land on both nodes; each answers for the account.
    for _ in 0..4 {
        assert_eq!(login(c.front(), "alice").await.id, alice.id);
    }

    // A killed node is taken out of rotation; the survivor serves every request.
    c.node_mut(0).kill9().await;
    let haproxy = c.haproxy.as_ref().expect("haproxy");
    haproxy.wait_status("node-1", "DOWN").await;
    for _ in 0..4 {
        assert_eq!(get(c.front(), "/healthz").await, (200, "ok".to_owned()));
        assert_eq!(login(c.front(), "alice").await.id, alice.id);
    }

    // Back on the same address, it is put back in rotation and still knows everyone.
    c.node_mut(0).respawn().await;
    assert_eq!(c.node(0).addr(), a);
    let haproxy = c.haproxy.as_ref().expect("haproxy");
    haproxy.wait_status("node-1", "UP").await;
    assert_eq!(login(a, "alice").await.id, alice.id);
    let bob = register(c.front(), "bob").await;
    assert_eq!(login(b, "bob").await.id, bob.id);
    c.node_mut(1).stop_gracefully().await;
}

/// The harness's own restarts, which the failure tests build on: PostgreSQL stops and comes
/// back on its port with its data, Redis comes back empty on its port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_and_redis_restart_on_their_ports() {
    let (mut pg, mut redis) = tokio::join!(Postgres::start(), Redis::start());
    pg.psql("CREATE TABLE t (v int); INSERT INTO t VALUES (7)").await;
    let port = pg.port();
    pg.stop().await;
    let down = tokio::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "natter", "-c", "SELECT 1"])
        .output()
        .await
        .expect("run psql");
    assert!(!down.status.success(), "postgres answers after stop");
    pg.start_again().await;
    assert_eq!(pg.port(), port);
    assert_eq!(pg.psql("SELECT v FROM t").await.trim(), "7", "the data survived");

    let _: () = redis.cmd(&["ZADD", "natter:u:5", "1000", "node-1"]).await;
    assert_eq!(redis.zset("natter:u:5").await, vec![("node-1".to_owned(), 1000.0)]);
    assert_eq!(redis.cli(&["ZCARD", "natter:u:5"]).await.trim(), "1");
    let port = redis.port();
    redis.kill().await;
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err(), "redis is gone");
    redis.start_again().await;
    assert_eq!(redis.port(), port);
    assert!(redis.zset("natter:u:5").await.is_empty(), "a restarted redis is empty");
}
