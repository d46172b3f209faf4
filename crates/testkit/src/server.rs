//! Nodes under test. [`TestServer`]: one node, in process (`start`, `start_with`: fast, and
//! its configuration is a struct) or as the real `natter` binary (`binary`: for what only a
//! process shows, `kill -9` and exit codes); either way it derefs to its [`Endpoint`], so a
//! test says `server.user("alice")`. [`TestCluster`]: nodes of one process sharing one
//! SQLite store on an in-process bus that drops, duplicates and delays (so reorders)
//! messages on command.
//!
//! Stop on drop: a dropped in-process node is told to shut down (its token is cancelled),
//! a dropped binary is killed. `stop` is the graceful stop a test can check.

use std::ops::Deref;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::Arc;

use natter_server::{Config, Faults, LocalHub, RunningServer};

use crate::http::Endpoint;
use crate::process::Node;
use crate::wait::within;

/// The `metrics_token` every in-process test node is started with.
pub const METRICS_TOKEN: &str = "natter-test-metrics-token";

/// A running node and what it needs to be reached.
pub struct TestServer {
    endpoint: Endpoint,
    kind: Kind,
}

enum Kind {
    InProcess {
        /// `None` between `terminate` and `restart`.
        server: Option<RunningServer>,
        /// What `restart` starts again (with `listen` set to the first start's address).
        /// Boxed: a `Config` is large next to the other variant.
        cfg: Box<Config>,
        /// The bus the node joined, when it is one of a [`TestCluster`].
        hub: Option<LocalHub>,
        /// Shared by the nodes of a [`TestCluster`].
        dir: Arc<tempfile::TempDir>,
    },
    Binary(Box<Node>),
}

impl TestServer {
    /// A node in this process with the default configuration, on `127.0.0.1:0` and a temp
    /// data directory.
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// A node in this process whose configuration `tweak` adjusts (caps, timeouts).
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let mut cfg = Config {
            listen: "127.0.0.1:0".parse().expect("addr"),
            data_dir: dir.path().to_path_buf(),
            metrics_token: Some(METRICS_TOKEN.to_owned()),
            ..Config::default()
        };
        tweak(&mut cfg);
        TestServer::in_process(cfg, None, dir).await
    }

    /// The real binary at `bin` (natter-server's tests pass `env!("CARGO_BIN_EXE_natter")`;
    /// see [`crate::process`]) as `natter serve` on a port the system picks and a temp data
    /// directory, with `args` after those; returns once `/readyz` answers 200.
    pub async fn binary(bin: impl AsRef<Path>, args: &[&str]) -> TestServer {
        let node = Node::spawn_args(bin.as_ref(), "natter", args).await;
        node.wait_ready().await;
        TestServer { endpoint: node.endpoint(), kind: Kind::Binary(Box::new(node)) }
    }

    async fn in_process(
        mut cfg: Config,
        hub: Option<LocalHub>,
        dir: Arc<tempfile::TempDir>,
    ) -> TestServer {
        let server = launch(&cfg, hub.as_ref()).await;
        cfg.listen = server.addr();
        TestServer {
            endpoint: Endpoint::new(server.addr()),
            kind: Kind::InProcess { server: Some(server), cfg: Box::new(cfg), hub, dir },
        }
    }

    /// Where the node keeps its store.
    pub fn data_dir(&self) -> &Path {
        match &self.kind {
            Kind::InProcess { dir, .. } => dir.path(),
            Kind::Binary(node) => node.data_dir(),
        }
    }

    /// The child process of a [`TestServer::binary`] (its pid, logs); panics in process.
    pub fn process(&self) -> &Node {
        match &self.kind {
            Kind::Binary(node) => node,
            Kind::InProcess { .. } => panic!("an in-process node has no process"),
        }
    }

    /// Runs the node's media collection now (what its timer does every
    /// `media_gc_interval_secs`); panics for a binary.
    pub async fn collect_media(&self) -> natter_server::Collected {
        match &self.kind {
            Kind::InProcess { server: Some(server), .. } => {
                within("a media collection", server.collect_media()).await.expect("collected")
            }
            _ => panic!("collect_media needs a running in-process node"),
        }
    }

    /// Makes `handle` a server administrator through the node's own store, as
    /// `natter admin grant HANDLE` does; panics for a binary (run its command instead).
    pub async fn grant_admin(&self, handle: &str) {
        match &self.kind {
            Kind::InProcess { cfg, .. } => {
                within("granting administration", natter_server::set_admin(cfg, handle, true))
                    .await
                    .expect("granted")
            }
            Kind::Binary(_) => panic!("grant_admin runs in process; run `natter admin grant`"),
        }
    }

    /// Stops the node gracefully (and checks that it stopped cleanly).
    pub async fn stop(mut self) {
        self.terminate().await;
    }

    /// Stops the node gracefully and checks that it stopped cleanly (a binary: SIGTERM and
    /// exit status 0), keeping its data directory and port for [`TestServer::restart`].
    pub async fn terminate(&mut self) {
        match &mut self.kind {
            Kind::InProcess { server, .. } => {
                if let Some(server) = server.take() {
                    server.stop().await.expect("clean stop");
                }
            }
            Kind::Binary(node) => node.stop_gracefully().await,
        }
    }

    /// SIGKILL to a [`TestServer::binary`], then reaps it; its exit status. The data
    /// directory and port are kept for [`TestServer::restart`]. Panics in process.
    pub async fn kill(&mut self) -> ExitStatus {
        match &mut self.kind {
            Kind::Binary(node) => node.kill9().await,
            Kind::InProcess { .. } => panic!("an in-process node cannot be killed: use binary"),
        }
    }

    /// Starts the stopped node again on the same data directory, port and configuration;
    /// returns once it serves.
    pub async fn restart(&mut self) {
        match &mut self.kind {
            Kind::InProcess { server, cfg, hub, .. } => {
                assert!(server.is_none(), "the node is still running");
                let started = launch(cfg, hub.as_ref()).await;
                assert_eq!(started.addr(), self.endpoint.addr, "restarted on its port");
                *server = Some(started);
            }
            Kind::Binary(node) => {
                node.respawn().await;
                node.wait_ready().await;
            }
        }
    }
}

async fn launch(cfg: &Config, hub: Option<&LocalHub>) -> RunningServer {
    let res = match hub {
        Some(hub) => natter_server::start_on_hub(cfg.clone(), hub).await,
        None => natter_server::start(cfg.clone()).await,
    };
    res.expect("server starts")
}

impl Deref for TestServer {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // A binary is killed by its own handle (`kill_on_drop`).
        if let Kind::InProcess { server: Some(server), .. } = &self.kind {
            server.shutdown_token().cancel();
        }
    }
}

/// Nodes of one process on one in-process bus (with faults, if asked), sharing one data
/// directory and so one SQLite store: what a cluster on PostgreSQL and Redis does, in
/// process and fast enough to repeat over many seeds.
pub struct TestCluster {
    pub hub: LocalHub,
    pub nodes: Vec<TestServer>,
}

impl TestCluster {
    /// `n` nodes named `node-0`.. on a hub with `faults`; `tweak` adjusts each node's
    /// configuration (it starts with a 100 ms heartbeat, so catch-ups come quickly).
    pub async fn start(n: usize, faults: Faults, tweak: impl Fn(&mut Config)) -> TestCluster {
        let hub = LocalHub::with_faults(faults);
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let mut cfg = Config {
                listen: "127.0.0.1:0".parse().expect("addr"),
                data_dir: dir.path().to_path_buf(),
                node_id: Some(format!("node-{i}")),
                metrics_token: Some(METRICS_TOKEN.to_owned()),
                ..Config::default()
            };
            cfg.limits.heartbeat_ms = 100;
            cfg.limits.registry_ttl_ms = 1_000;
            tweak(&mut cfg);
            nodes.push(TestServer::in_process(cfg, Some(hub.clone()), dir.clone()).await);
        }
        TestCluster { hub, nodes }
    }

    /// The `i`th node (0-based).
    pub fn node(&self, i: usize) -> &TestServer {
        &self.nodes[i]
    }

    /// Stops every node gracefully.
    pub async fn stop(self) {
        for node in self.nodes {
            node.stop().await;
        }
    }
}
