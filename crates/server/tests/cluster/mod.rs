//! Harness for the cluster tests (`tests/cluster_*.rs`, each with `mod cluster;`): real
//! processes on 127.0.0.1 free ports — a throwaway PostgreSQL, a `redis-server`, `natter
//! serve` nodes (the binary under test) and `haproxy` in TCP mode in front of them.
//!
//! Every process is killed when its handle drops, and its output is drained for its whole
//! life (so it never blocks on a full pipe) and kept: `logs()` returns it, and a handle
//! dropped while the test panics prints its last lines to stderr. Every wait polls a
//! condition under a deadline (`WAIT`) and panics with what it was waiting for.

// Each test file uses a different part of this module, and the module is private to each
// test crate, so "unused" and "unreachable pub" say nothing here.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use natter_proto::{ClientFrame, ReqId, ServerFrame, UserId};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single wait may take (a process to be ready, a frame to arrive).
pub const WAIT: Duration = Duration::from_secs(30);
/// Between two polls of a condition.
const POLL: Duration = Duration::from_millis(50);
pub const PASSWORD: &str = "correct horse battery";
/// Node settings for tests: a 300 ms heartbeat under a 1.5 s registry TTL, and presence,
/// typing and receipts that show within a fraction of a second. Tests that compute bounds
/// from these say so beside their constants.
pub const FAST: &[&str] = &[
    "--heartbeat-ms",
    "300",
    "--registry-ttl-ms",
    "1500",
    "--presence-grace-ms",
    "300",
    "--presence-batch-ms",
    "100",
    "--typing-throttle-ms",
    "200",
    "--receipt-flush-ms",
    "50",
];
/// Lines of a process's output printed when its handle drops during a panic.
const TAIL: usize = 60;

/// Between two attempts to start a service again (its port may linger a moment): panics
/// with its last log lines once `deadline` passed.
async fn retry_launch(what: &str, port: u16, logs: &Logs, deadline: Instant) {
    assert!(
        Instant::now() < deadline,
        "{what} did not start again on port {port}:\n{}",
        logs.tail(TAIL)
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// `fut`, or a panic naming `what` after `WAIT`.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Polls `check` until it returns `Some`, or panics naming `what` (and `context()`, e.g. the
/// logs) after `WAIT`.
pub async fn poll_until<T, F, Fut>(what: &str, mut check: F, context: impl Fn() -> String) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}\n{}", context());
        }
        tokio::time::sleep(POLL).await;
    }
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
    fn push(&self, line: String) {
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
    fn dump_if_panicking(&self, name: &str) {
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
    fn attach(&self, child: &mut Child) {
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
async fn run(what: &str, cmd: &mut Command) -> String {
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
fn exited(child: &mut Child) -> Option<ExitStatus> {
    child.try_wait().expect("try_wait")
}

// ---- PostgreSQL ----

/// A throwaway PostgreSQL cluster (its own data directory and port), with a `natter`
/// database owned by the superuser `natter` (trust auth, fsync off).
pub struct Postgres {
    bindir: PathBuf,
    /// The postgres user's uid and gid when we are root (PostgreSQL refuses to run as root).
    owner: Option<(u32, u32)>,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    logs: Logs,
}

impl Postgres {
    pub async fn start() -> Postgres {
        let bindir = pg_bindir();
        let dir = tempfile::Builder::new().prefix("natter-pg").tempdir().expect("temp dir");
        let owner = if is_root() { Some(postgres_ids()) } else { None };
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown pg dir");
        }
        let mut initdb = Command::new(bindir.join("initdb"));
        initdb.arg("-D").arg(dir.path().join("data"));
        initdb.args(["-U", "natter", "--auth=trust", "-E", "UTF8", "--no-sync"]);
        as_owner(&mut initdb, owner);
        run("initdb", &mut initdb).await;
        let mut pg = Postgres { bindir, owner, dir, port: 0, child: None, logs: Logs::default() };
        // A port can be taken between choosing and binding it: try a few.
        for attempt in 0.. {
            pg.port = free_port();
            if pg.launch().await {
                break;
            }
            assert!(attempt < 5, "postgres did not start:\n{}", pg.logs.tail(TAIL));
        }
        let mut createdb = Command::new(pg.bindir.join("createdb"));
        createdb.args(["-h", "127.0.0.1", "-p", &pg.port.to_string(), "-U", "natter", "natter"]);
        run("createdb", &mut createdb).await;
        pg
    }

    /// `postgres://natter@127.0.0.1:PORT/natter`.
    pub fn url(&self) -> String {
        format!("postgres://natter@127.0.0.1:{}/natter", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Immediate shutdown (SIGQUIT: no checkpoint, crash recovery on the next start), then
    /// waits for the exit. Connections to it fail from here on.
    pub async fn stop(&mut self) {
        let mut child = self.child.take().expect("postgres is running");
        if let Some(pid) = child.id() {
            signal(pid, "QUIT");
        }
        within("postgres to stop", child.wait()).await.expect("wait for postgres");
        self.logs.push("---- stopped (harness) ----".to_owned());
    }

    /// Starts it again on the same data directory and port.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "postgres is still running");
        self.logs.push("---- started again (harness) ----".to_owned());
        // The port was ours a moment ago; retry in case its socket lingers.
        let deadline = Instant::now() + WAIT;
        while !self.launch().await {
            retry_launch("postgres", self.port, &self.logs, deadline).await;
        }
    }

    /// Runs `sql` with psql against the `natter` database; its unaligned, tuples-only output.
    pub async fn psql(&self, sql: &str) -> String {
        let mut psql = Command::new(self.bindir.join("psql"));
        psql.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "natter", "-d"]);
        psql.args(["natter", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]);
        run("psql", &mut psql).await
    }

    pub fn logs(&self) -> &Logs {
        &self.logs
    }

    /// Starts the server on `self.port`; true once it accepts connections, false if it
    /// exited first (port taken).
    async fn launch(&mut self) -> bool {
        let mut cmd = Command::new(self.bindir.join("postgres"));
        cmd.arg("-D").arg(self.dir.path().join("data"));
        cmd.args(["-p", &self.port.to_string(), "-k"]).arg(self.dir.path());
        // fsync off: only processes die in these tests, never the machine, and the OS
        // keeps what was written. (Not synchronous_commit off: an immediate stop would then
        // lose commits that were acknowledged.)
        for setting in ["listen_addresses=127.0.0.1", "fsync=off", "max_connections=300"] {
            cmd.args(["-c", setting]);
        }
        as_owner(&mut cmd, self.owner);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn postgres");
        self.logs.attach(&mut child);
        let deadline = Instant::now() + WAIT;
        loop {
            if exited(&mut child).is_some() {
                return false;
            }
            let ready = Command::new(self.bindir.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "natter"])
                .args(["-d", "postgres"])
                .stdin(Stdio::null())
                .status()
                .await
                .expect("run pg_isready");
            if ready.success() {
                self.child = Some(child);
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "postgres not ready after {WAIT:?}:\n{}",
                self.logs.tail(TAIL)
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.logs.dump_if_panicking("postgres");
        // An immediate shutdown rather than SIGKILL, so that the postmaster removes its
        // shared memory; SIGKILL (kill_on_drop) only if it does not exit promptly.
        if let Some(child) = &mut self.child
            && let Some(pid) = child.id()
        {
            signal(pid, "QUIT");
            let deadline = Instant::now() + Duration::from_secs(5);
            while exited(child).is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// The newest installed PostgreSQL's bin directory (Debian layout), as scripts/test.sh finds it.
fn pg_bindir() -> PathBuf {
    let mut found: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e
                .file_name()
                .to_str()?
                .split('.')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/pg_ctl): run \
             scripts/test.sh, or apt-get install postgresql"
        )
    })
}

fn is_root() -> bool {
    // /proc/self is owned by the process's effective uid.
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").expect("/proc/self")) == 0
}

/// The `postgres` user's uid and gid, from /etc/passwd.
fn postgres_ids() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.first() == Some(&"postgres") && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .expect("no postgres user (apt-get install postgresql creates it)")
}

fn as_owner(cmd: &mut Command, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        // Set directly (no runuser in between), so that killing the child kills PostgreSQL.
        cmd.uid(uid).gid(gid);
    }
}

// ---- Redis ----

/// A `redis-server` on a free port, without persistence.
pub struct Redis {
    port: u16,
    child: Option<Child>,
    logs: Logs,
}

impl Redis {
    pub async fn start() -> Redis {
        let mut redis = Redis { port: 0, child: None, logs: Logs::default() };
        for attempt in 0.. {
            redis.port = free_port();
            if redis.launch().await {
                return redis;
            }
            assert!(attempt < 5, "redis-server did not start:\n{}", redis.logs.tail(TAIL));
        }
        unreachable!()
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// SIGKILL, then waits for the exit. Everything it held is gone (no persistence).
    pub async fn kill(&mut self) {
        let mut child = self.child.take().expect("redis is running");
        child.start_kill().expect("SIGKILL redis");
        within("redis to exit", child.wait()).await.expect("wait for redis");
        self.logs.push("---- killed (harness) ----".to_owned());
    }

    /// Starts an empty redis-server again on the same port.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis is still running");
        self.logs.push("---- started again (harness) ----".to_owned());
        let deadline = Instant::now() + WAIT;
        while !self.launch().await {
            retry_launch("redis", self.port, &self.logs, deadline).await;
        }
    }

    /// A new connection (the `redis` crate, multiplexed).
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url()).expect("redis url");
        within("a redis connection", client.get_multiplexed_async_connection())
            .await
            .expect("connect to redis")
    }

    /// Runs one command, e.g. `cmd(&["ZRANGE", "natter:u:5", "0", "-1", "WITHSCORES"])`.
    pub async fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut conn = self.conn().await;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        within("a redis command", cmd.query_async(&mut conn))
            .await
            .unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }

    /// A sorted set's members and scores (e.g. a registry key `natter:u:{id}`: node id →
    /// expiry in unix ms), lowest score first.
    pub async fn zset(&self, key: &str) -> Vec<(String, f64)> {
        self.cmd(&["ZRANGE", key, "0", "-1", "WITHSCORES"]).await
    }

    /// redis-cli against this server; its output.
    pub async fn cli(&self, args: &[&str]) -> String {
        let mut cli = Command::new("redis-cli");
        cli.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]).args(args);
        run("redis-cli", &mut cli).await
    }

    pub fn logs(&self) -> &Logs {
        &self.logs
    }

    async fn launch(&mut self) -> bool {
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            // The working directory is where it would write dumps; none are written.
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}): run scripts/test.sh or apt-get install redis-server")
            });
        self.logs.attach(&mut child);
        let client = redis::Client::open(self.url()).expect("redis url");
        let deadline = Instant::now() + WAIT;
        loop {
            if exited(&mut child).is_some() {
                return false;
            }
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok()
            {
                self.child = Some(child);
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "redis not ready after {WAIT:?}:\n{}",
                self.logs.tail(TAIL)
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.logs.dump_if_panicking("redis");
    }
}

// ---- natter nodes ----

/// A `natter serve` child process (the binary under test) with its own data directory.
pub struct Node {
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
    pub async fn spawn(name: &str, pg: &Postgres, redis: &Redis, extra_args: &[&str]) -> Node {
        let mut args = vec!["--database-url".to_owned(), pg.url()];
        args.extend(["--redis-url".to_owned(), redis.url()]);
        args.extend(["--node-id".to_owned(), name.to_owned()]);
        args.extend(extra_args.iter().map(|a| (*a).to_owned()));
        Node::spawn_args(name, &args).await
    }

    /// A node started with exactly `serve --listen 127.0.0.1:0 --data-dir TEMP` + `args`.
    pub async fn spawn_args<S: AsRef<std::ffi::OsStr>>(name: &str, args: &[S]) -> Node {
        let data_dir = tempfile::Builder::new().prefix("natter-node").tempdir().expect("temp dir");
        let args: Vec<OsString> = args.iter().map(|a| a.as_ref().to_owned()).collect();
        let logs = Logs::default();
        let listen: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let (child, addr) = launch_node(name, listen, data_dir.path(), &args, &logs)
            .await
            .unwrap_or_else(|| panic!("{name} exited before listening:\n{}", logs.tail(TAIL)));
        Node { name: name.to_owned(), child, addr, data_dir, args, logs }
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
            if let Some((child, addr)) =
                launch_node(&self.name, self.addr, self.data_dir.path(), &self.args, &self.logs)
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
    name: &str,
    listen: SocketAddr,
    data_dir: &Path,
    args: &[OsString],
    logs: &Logs,
) -> Option<(Child, SocketAddr)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_natter"))
        .arg("serve")
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("NATTER_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn natter");
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

// ---- HAProxy ----

/// `haproxy` in TCP mode on a free port, round-robin over the given servers (`node-1`, …,
/// in order), health-checked every 200 ms (one failure marks a server down, one success up).
pub struct Haproxy {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    child: Child,
    logs: Logs,
}

impl Haproxy {
    pub async fn start(servers: &[SocketAddr]) -> Haproxy {
        let dir = tempfile::Builder::new().prefix("natter-haproxy").tempdir().expect("temp dir");
        let sock = dir.path().join("admin.sock");
        for attempt in 0.. {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let mut cfg = format!(
                "global\n\
                 \x20   stats socket {sock} level admin\n\
                 defaults\n\
                 \x20   mode tcp\n\
                 \x20   timeout connect 2s\n\
                 \x20   timeout client 1h\n\
                 \x20   timeout server 1h\n\
                 \x20   option redispatch\n\
                 \x20   retries 3\n\
                 listen natter\n\
                 \x20   bind {addr}\n\
                 \x20   balance roundrobin\n",
                sock = sock.display()
            );
            for (i, server) in servers.iter().enumerate() {
                cfg.push_str(&format!(
                    "    server node-{} {server} check inter 200ms fall 1 rise 1\n",
                    i + 1
                ));
            }
            let cfg_path = dir.path().join("haproxy.cfg");
            std::fs::write(&cfg_path, cfg).expect("write haproxy.cfg");
            let _ = std::fs::remove_file(&sock);
            let logs = Logs::default();
            let mut child = Command::new("haproxy")
                .arg("-f")
                .arg(&cfg_path)
                .arg("-db")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run haproxy ({e}): run scripts/test.sh or apt-get install haproxy"
                    )
                });
            logs.attach(&mut child);
            let deadline = Instant::now() + WAIT;
            let up = loop {
                if exited(&mut child).is_some() {
                    break false;
                }
                if TcpStream::connect(addr).await.is_ok() && sock.exists() {
                    break true;
                }
                assert!(
                    Instant::now() < deadline,
                    "haproxy not ready after {WAIT:?}:\n{}",
                    logs.tail(TAIL)
                );
                tokio::time::sleep(POLL).await;
            };
            if up {
                return Haproxy { addr, dir, child, logs };
            }
            assert!(attempt < 5, "haproxy did not start:\n{}", logs.tail(TAIL));
        }
        unreachable!()
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn logs(&self) -> &Logs {
        &self.logs
    }

    /// One command on the admin socket (e.g. `show stat`); its answer.
    pub async fn admin(&self, command: &str) -> String {
        within("haproxy's admin socket", async {
            let mut s = tokio::net::UnixStream::connect(self.dir.path().join("admin.sock"))
                .await
                .expect("connect to haproxy's admin socket");
            s.write_all(format!("{command}\n").as_bytes()).await.expect("write admin command");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read admin answer");
            out
        })
        .await
    }

    /// Each server's health as HAProxy sees it: `node-1` → `UP`, `DOWN`, `MAINT`, …
    pub async fn server_status(&self) -> BTreeMap<String, String> {
        let csv = self.admin("show stat").await;
        let mut lines = csv.lines();
        let header: Vec<&str> =
            lines.next().expect("a header").trim_start_matches("# ").split(',').collect();
        let col = |name: &str| header.iter().position(|h| *h == name).expect("a stat column");
        let (px, sv, status) = (col("pxname"), col("svname"), col("status"));
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > status && f[px] == "natter" && f[sv].starts_with("node-"))
            .map(|f| (f[sv].to_owned(), f[status].to_owned()))
            .collect()
    }

    /// Waits until HAProxy reports `server` (`node-1`, …) with `status` (`"UP"`, `"DOWN"`):
    /// e.g. after killing a node, before counting on new connections avoiding it.
    pub async fn wait_status(&self, server: &str, status: &str) {
        poll_until(
            &format!("haproxy to see {server} {status}"),
            || async {
                let now = self.server_status().await;
                // "UP 1/2" and the like while a check is in progress count as not yet.
                (now.get(server).map(String::as_str) == Some(status)).then_some(())
            },
            || self.logs.tail(TAIL),
        )
        .await;
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        self.logs.dump_if_panicking("haproxy");
        let _ = self.child.start_kill();
    }
}

// ---- a whole cluster ----

/// PostgreSQL, Redis and `n` nodes named `node-1`, `node-2`, …, optionally behind HAProxy.
/// Fields drop in order: the proxy and nodes before the services they use.
pub struct Cluster {
    pub haproxy: Option<Haproxy>,
    pub nodes: Vec<Node>,
    pub redis: Redis,
    pub pg: Postgres,
}

impl Cluster {
    /// Every node gets `extra_args` after the cluster flags.
    pub async fn start(n_nodes: usize, extra_args: &[&str]) -> Cluster {
        let (pg, redis) = tokio::join!(Postgres::start(), Redis::start());
        let mut nodes = Vec::new();
        // One at a time: the first start migrates the shared database.
        for i in 1..=n_nodes {
            nodes.push(Node::spawn(&format!("node-{i}"), &pg, &redis, extra_args).await);
        }
        Cluster { haproxy: None, nodes, redis, pg }
    }

    /// Puts HAProxy in front of the nodes (HAProxy's `node-i` is `nodes[i - 1]`).
    pub async fn with_haproxy(mut self) -> Cluster {
        let addrs: Vec<SocketAddr> = self.nodes.iter().map(Node::addr).collect();
        self.haproxy = Some(Haproxy::start(&addrs).await);
        self
    }

    /// The `i`th node (0-based).
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    pub fn node_mut(&mut self, i: usize) -> &mut Node {
        &mut self.nodes[i]
    }

    /// HAProxy's address.
    pub fn front(&self) -> SocketAddr {
        self.haproxy.as_ref().expect("started with_haproxy").addr()
    }
}

// ---- REST ----

/// A registered user with a session token.
#[derive(Debug, Clone)]
pub struct Account {
    pub id: UserId,
    pub handle: String,
    pub token: String,
}

impl Account {
    /// The SDK's REST client for `addr`, authenticated as this user.
    pub fn api(&self, addr: SocketAddr) -> natter_client::Api {
        api(addr).with_token(&self.token)
    }
}

/// The SDK's REST client for the server at `addr`, without a token.
pub fn api(addr: SocketAddr) -> natter_client::Api {
    natter_client::Api::new(format!("http://{addr}")).expect("an http url")
}

/// Registers `handle` (password `PASSWORD`) through `addr`, then logs in one device there.
pub async fn register(addr: SocketAddr, handle: &str) -> Account {
    let user = within("register", api(addr).register(handle, PASSWORD))
        .await
        .unwrap_or_else(|e| panic!("register {handle} via {addr}: {e}"));
    let account = login(addr, handle).await;
    assert_eq!(account.id, user.user_id);
    account
}

/// Logs `handle` in through `addr` (a new device and token).
pub async fn login(addr: SocketAddr, handle: &str) -> Account {
    let session = within("login", api(addr).login(handle, PASSWORD, None))
        .await
        .unwrap_or_else(|e| panic!("login {handle} via {addr}: {e}"));
    Account { id: session.user_id, handle: handle.to_owned(), token: session.token }
}

/// `GET {path}` without a token: status code and body text.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let res = within(path, reqwest::get(format!("http://{addr}{path}")))
        .await
        .unwrap_or_else(|e| panic!("GET {path} via {addr}: {e}"));
    let status = res.status().as_u16();
    (status, within("a body", res.text()).await.expect("body"))
}

// ---- WebSocket ----

/// A raw WebSocket session speaking Natter frames.
pub struct Ws {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_req: ReqId,
    /// The `ready` frame's fields.
    pub user_id: UserId,
}

impl Ws {
    /// Connects to `addr` with `token` in the upgrade's Authorization header and waits for
    /// `ready`.
    pub async fn connect(addr: SocketAddr, token: &str) -> Ws {
        let mut req = format!("ws://{addr}/v1/ws").into_client_request().expect("ws request");
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().expect("header"));
        let (ws, _) = within("ws connect", tokio_tungstenite::connect_async(req))
            .await
            .unwrap_or_else(|e| panic!("ws connect to {addr}: {e}"));
        let mut ws = Ws { ws, next_req: 0, user_id: UserId(0) };
        match ws.next().await {
            ServerFrame::Ready { user_id, .. } => ws.user_id = user_id,
            other => panic!("expected ready, got {other:?}"),
        }
        ws
    }

    /// A fresh `req_id`.
    pub fn req_id(&mut self) -> ReqId {
        self.next_req += 1;
        self.next_req
    }

    pub async fn send(&mut self, frame: &ClientFrame) {
        let text = serde_json::to_string(frame).expect("frame serializes");
        within("a ws send", self.ws.send(Message::Text(text.into()))).await.expect("ws send");
    }

    /// The next frame; panics after `WAIT` or if the connection ends.
    pub async fn next(&mut self) -> ServerFrame {
        match self.next_within(WAIT).await {
            Ok(Some(frame)) => frame,
            Ok(None) => panic!("no frame within {WAIT:?}"),
            Err(close) => panic!("the connection ended (close code {close:?})"),
        }
    }

    /// The next frame within `wait`: `Ok(None)` if none came, `Err(close code)` if the
    /// connection ended.
    pub async fn next_within(
        &mut self,
        wait: Duration,
    ) -> Result<Option<ServerFrame>, Option<u16>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Ok(None),
                Ok(msg) => msg,
            };
            match msg {
                Some(Ok(Message::Text(text))) => {
                    let frame = serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("unparsable frame ({e}): {text}"));
                    return Ok(Some(frame));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(frame.map(|f| u16::from(f.code)));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    /// Skips frames until one matches `pred` (within `WAIT` in all).
    pub async fn next_matching(
        &mut self,
        what: &str,
        mut pred: impl FnMut(&ServerFrame) -> bool,
    ) -> ServerFrame {
        let deadline = Instant::now() + WAIT;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_within(left).await {
                Ok(Some(frame)) if pred(&frame) => return frame,
                Ok(Some(frame)) => skipped.push(frame),
                Ok(None) => panic!("no {what} within {WAIT:?}; skipped {skipped:?}"),
                Err(close) => {
                    panic!("connection ended ({close:?}) before {what}; skipped {skipped:?}")
                }
            }
        }
    }

    /// Waits for the server to end the connection; its close code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            match self.next_within(WAIT).await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the connection did not end within {WAIT:?}"),
                Err(code) => return code,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = within("a ws close", self.ws.close(None)).await;
    }
}
