//! The real-binary and external-service harness, for what only real processes can show
//! (`kill -9`, a database or Redis going away, a load balancer in front): [`Node`], a
//! `natter serve` child process; in `services.rs`, a throwaway [`Postgres`], a
//! [`Redis`], [`Haproxy`] in TCP mode and a whole [`ProcessCluster`] of them.
//!
//! Every process is killed when its handle drops, and its output is drained for its whole
//! life (so it never blocks on a full pipe) and kept in [`Logs`]: `logs()` returns it, and a
//! handle dropped while the test panics prints its last lines to stderr. Every wait polls a
//! condition under [`WAIT`] and panics with what it was waiting for.
//!
//! **Which binary.** Every function that starts `natter` takes its path. Cargo knows it
//! only in natter-server's own integration tests, as `env!("CARGO_BIN_EXE_natter")`, and
//! builds the binary before running them, so it is never missing or stale there; other
//! test crates get no such guarantee (the binary may be absent, or older than the
//! sources), so the kit does not guess a path under `target/`.

mod services;

pub use services::{FAST, Haproxy, Postgres, ProcessCluster, Redis, S3Server};

use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use crate::fixtures::TestUser;
use crate::http::Endpoint;
use crate::wait::{WAIT, poll_until, within};

/// Lines of a process's output printed when its handle drops during a panic.
const TAIL: usize = 60;

/// The media URL key every node of a test cluster shares (cluster mode requires one).
pub const MEDIA_SECRET: &str = "natter-test-cluster-media-secret-0123456789";

/// Between two attempts to start a service again (its port may linger a moment): panics
/// with its last log lines once `deadline` passed.
pub(crate) async fn retry_launch(what: &str, port: u16, logs: &Logs, deadline: Instant) {
    assert!(
        Instant::now() < deadline,
        "{what} did not start again on port {port}:\n{}",
        logs.tail(TAIL)
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// A port nobody listens on right now (another process may take it before we bind it;
/// starts retry on a new port where they can).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

// ---- process plumbing ----

/// A process's output, line by line, shared with the tasks draining its pipes.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<String>>>);

impl Logs {
    pub(crate) fn push(&self, line: String) {
        self.0.lock().expect("logs").push(line);
    }

    /// Everything so far.
    pub fn all(&self) -> String {
        self.0.lock().expect("logs").join("\n")
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.0.lock().expect("logs");
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Whether some line contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        self.0.lock().expect("logs").iter().any(|l| l.contains(needle))
    }

    /// Prints the tail to stderr when the thread is panicking (called from `Drop`s).
    pub(crate) fn dump_if_panicking(&self, name: &str) {
        if std::thread::panicking() {
            eprintln!(
                "---- {name}: last {TAIL} lines ----\n{}\n---- end of {name} ----",
                self.tail(TAIL)
            );
        }
    }

    /// Drains `pipe` into the logs for as long as it is open.
    fn drain(&self, pipe: impl AsyncRead + Unpin + Send + 'static) {
        let logs = self.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                logs.push(line);
            }
        });
    }

    /// Drains a child's stdout and stderr.
    pub(crate) fn attach(&self, child: &mut Child) {
        if let Some(out) = child.stdout.take() {
            self.drain(out);
        }
        if let Some(err) = child.stderr.take() {
            self.drain(err);
        }
    }
}

/// Sends `signal` (`"TERM"`, `"QUIT"`, …) to `pid` with kill(1) (no `unsafe` for libc).
pub fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Runs a short command to completion; panics with its output unless it succeeds.
pub(crate) async fn run(what: &str, cmd: &mut Command) -> String {
    let out = within(what, cmd.stdin(Stdio::null()).output())
        .await
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The child's exit status if it has exited.
pub(crate) fn exited(child: &mut Child) -> Option<ExitStatus> {
    child.try_wait().expect("try_wait")
}

// ---- natter nodes ----

/// A `natter serve` child process (the binary under test) with its own data directory.
pub struct Node {
    bin: PathBuf,
    name: String,
    child: Child,
    addr: SocketAddr,
    data_dir: tempfile::TempDir,
    /// The arguments after `serve`, except `--listen` and `--data-dir`.
    args: Vec<OsString>,
    logs: Logs,
}

impl Node {
    /// A cluster node: `--database-url` of `pg`, `--redis-url` of `redis`, `--node-id name`,
    /// then `extra_args` (e.g. `["--heartbeat-ms", "200"]`).
    pub async fn spawn(
        bin: impl AsRef<Path>,
        name: &str,
        pg: &Postgres,
        redis: &Redis,
        extra_args: &[&str],
    ) -> Node {
        let mut args = vec!["--database-url".to_owned(), pg.url()];
        args.extend(["--redis-url".to_owned(), redis.url()]);
        args.extend(["--node-id".to_owned(), name.to_owned()]);
        // Every node of a cluster signs and checks media URLs with the same key.
        args.extend(["--media-secret".to_owned(), MEDIA_SECRET.to_owned()]);
        args.extend(extra_args.iter().map(|a| (*a).to_owned()));
        Node::spawn_args(bin.as_ref(), name, &args).await
    }

    /// `bin serve --listen 127.0.0.1:0 --data-dir TEMP` + `args`: a port the system picks
    /// (no race with other processes), kept across [`Node::respawn`].
    pub async fn spawn_args<S: AsRef<std::ffi::OsStr>>(
        bin: impl AsRef<Path>,
        name: &str,
        args: &[S],
    ) -> Node {
        let bin = bin.as_ref();
        let data_dir = tempfile::Builder::new().prefix("natter-node").tempdir().expect("temp dir");
        let args: Vec<OsString> = args.iter().map(|a| a.as_ref().to_owned()).collect();
        let logs = Logs::default();
        let listen: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let (child, addr) = launch_node(bin, name, listen, data_dir.path(), &args, &logs)
            .await
            .unwrap_or_else(|| panic!("{name} exited before listening:\n{}", logs.tail(TAIL)));
        Node { bin: bin.to_owned(), name: name.to_owned(), child, addr, data_dir, args, logs }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The SDK's REST client for this node, without a token.
    pub fn api(&self) -> natter_client::Api {
        api(self.addr)
    }

    /// The node as a client reaches it: REST helpers, WebSockets, fixtures.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new(self.addr)
    }

    /// Waits until `GET /readyz` answers 200 (the store answers reads).
    pub async fn wait_ready(&self) {
        let endpoint = self.endpoint();
        poll_until(
            &format!("{} to be ready", self.name),
            || async {
                let res = endpoint.http.get(endpoint.url("/readyz")).send().await;
                res.ok().filter(|r| r.status().is_success()).map(|_| ())
            },
            || self.logs.tail(TAIL),
        )
        .await;
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("the node is running")
    }

    pub fn logs(&self) -> &Logs {
        &self.logs
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// SIGKILL, then reap.
    pub async fn kill9(&mut self) -> ExitStatus {
        self.child.start_kill().expect("SIGKILL");
        let status =
            within("the killed node to exit", self.child.wait()).await.expect("wait for the node");
        self.logs.push(format!("---- killed (harness): {status} ----"));
        status
    }

    /// SIGTERM (graceful stop); `wait` for the exit.
    pub fn sigterm(&self) {
        signal(self.pid(), "TERM");
    }

    /// Waits for the process to exit.
    pub async fn wait(&mut self) -> ExitStatus {
        within(&format!("{} to exit", self.name), self.child.wait()).await.expect("wait for node")
    }

    /// SIGTERM and a clean exit (status 0).
    pub async fn stop_gracefully(&mut self) {
        self.sigterm();
        let status = self.wait().await;
        assert!(status.success(), "{} exited with {status}:\n{}", self.name, self.logs.tail(TAIL));
    }

    /// Starts the (exited) node again with the same arguments, data directory and address
    /// (so a proxy in front finds it again).
    pub async fn respawn(&mut self) {
        assert!(exited(&mut self.child).is_some(), "{} is still running", self.name);
        self.logs.push("---- respawned (harness) ----".to_owned());
        let deadline = Instant::now() + WAIT;
        loop {
            // Fails only when the port is not free yet (or the node cannot start at all).
            if let Some((child, addr)) = launch_node(
                &self.bin,
                &self.name,
                self.addr,
                self.data_dir.path(),
                &self.args,
                &self.logs,
            )
            .await
            {
                assert_eq!(addr, self.addr);
                self.child = child;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not start again on {}:\n{}",
                self.name,
                self.addr,
                self.logs.tail(TAIL)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.logs.dump_if_panicking(&self.name);
    }
}

/// Spawns `natter serve` and reads its stdout up to the listening line: the child and its
/// address, or `None` if it exited first.
async fn launch_node(
    bin: &Path,
    name: &str,
    listen: SocketAddr,
    data_dir: &Path,
    args: &[OsString],
    logs: &Logs,
) -> Option<(Child, SocketAddr)> {
    let mut child = Command::new(bin)
        .arg("serve")
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("NATTER_LOG", "info")
        .env("NO_COLOR", "1")
        // SIGTERM drains at once unless a test asks for the staged drain with the flags.
        .env("NATTER_DRAIN_UNREADY_MS", "0")
        .env("NATTER_DRAIN_SPREAD_MS", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    logs.drain(child.stderr.take().expect("stderr"));
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr = within(&format!("{name}'s listening line"), async {
        loop {
            let line = stdout.next_line().await.expect("read stdout")?;
            if let Some(rest) = line.strip_prefix("natter listening on http://") {
                let addr = rest.split_whitespace().next().expect("an address");
                return Some(addr.parse::<SocketAddr>().expect("a socket address"));
            }
            logs.push(line);
        }
    })
    .await;
    logs.drain(stdout.into_inner());
    match addr {
        Some(addr) => Some((child, addr)),
        None => {
            within("the failed node to exit", child.wait()).await.expect("wait");
            None
        }
    }
}

// ---- REST on an address ----

/// The SDK's REST client for the server at `addr`, without a token.
pub fn api(addr: SocketAddr) -> natter_client::Api {
    natter_client::Api::new(format!("http://{addr}")).expect("an http url")
}

/// Registers `handle` through `addr`, then logs in one device there.
pub async fn register(addr: SocketAddr, handle: &str) -> TestUser {
    Endpoint::new(addr).user(handle).await
}

/// Logs `handle` in through `addr` (a new device and token).
pub async fn login(addr: SocketAddr, handle: &str) -> TestUser {
    let session = Endpoint::new(addr).session(handle).await;
    TestUser { id: session.user_id, handle: handle.to_owned(), token: session.token }
}

/// `GET {path}` through `addr` without a token: status code and body text.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    Endpoint::new(addr).get(path).await
}
