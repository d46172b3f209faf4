//! The external services of cluster tests, each a real process on a free port of
//! 127.0.0.1: a throwaway PostgreSQL, a `redis-server`, `haproxy` in TCP mode, and a whole
//! [`ProcessCluster`] of `natter` nodes on them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use super::{Logs, Node, TAIL, exited, free_port, retry_launch, run, signal};
use crate::wait::{POLL, WAIT, poll_until, within};

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

// ---- S3 ----

/// An S3-compatible server on a free port: moto's server mode (`moto_server`, from PyPI;
/// `scripts/test.sh` installs it in a virtualenv and names it in `NATTER_MOTO_SERVER`),
/// holding one empty bucket.
pub struct S3Server {
    port: u16,
    bucket: String,
    _child: Child,
    logs: Logs,
}

impl S3Server {
    /// Starts moto and creates bucket `bucket`.
    pub async fn start(bucket: &str) -> S3Server {
        let bin = std::env::var("NATTER_MOTO_SERVER").unwrap_or_else(|_| "moto_server".to_owned());
        for attempt in 0.. {
            let port = free_port();
            let mut child = Command::new(&bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run {bin} ({e}): run scripts/test.sh, or pip install 'moto[server]'"
                    )
                });
            let logs = Logs::default();
            logs.attach(&mut child);
            let http = reqwest::Client::new();
            let url = format!("http://127.0.0.1:{port}/{bucket}");
            let deadline = Instant::now() + WAIT;
            loop {
                if exited(&mut child).is_some() {
                    break;
                }
                // moto takes unsigned requests: a PUT of the bucket creates it.
                if let Ok(res) = http.put(&url).send().await
                    && res.status().is_success()
                {
                    return S3Server { port, bucket: bucket.to_owned(), _child: child, logs };
                }
                assert!(
                    Instant::now() < deadline,
                    "moto not ready after {WAIT:?}:\n{}",
                    logs.tail(TAIL)
                );
                tokio::time::sleep(POLL).await;
            }
            assert!(attempt < 5, "moto did not start:\n{}", logs.tail(TAIL));
        }
        unreachable!()
    }

    /// `http://127.0.0.1:PORT`: what `AWS_ENDPOINT_URL` is set to.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The keys under `prefix` in the bucket (a `ListObjectsV2`).
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let url = format!("{}/{}?list-type=2&prefix={prefix}", self.endpoint(), self.bucket);
        let text = within("an S3 listing", async { reqwest::get(&url).await?.text().await })
            .await
            .expect("list the bucket");
        text.split("<Key>")
            .skip(1)
            .filter_map(|k| k.split("</Key>").next())
            .map(str::to_owned)
            .collect()
    }

    pub fn logs(&self) -> &Logs {
        &self.logs
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.logs.dump_if_panicking("moto");
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
        Haproxy::start_checking(servers, false).await
    }

    /// HAProxy in front of `servers`; with `readiness`, its health check is `GET /readyz`
    /// (a draining node fails it), else a TCP connect.
    pub async fn start_checking(servers: &[SocketAddr], readiness: bool) -> Haproxy {
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
            if readiness {
                cfg.push_str("    option httpchk GET /readyz\n    http-check expect status 200\n");
            }
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
pub struct ProcessCluster {
    pub haproxy: Option<Haproxy>,
    pub nodes: Vec<Node>,
    pub redis: Redis,
    pub pg: Postgres,
}

impl ProcessCluster {
    /// `n_nodes` nodes of the `natter` binary at `bin`, each with `extra_args` after the
    /// cluster flags.
    pub async fn start(
        bin: impl AsRef<Path>,
        n_nodes: usize,
        extra_args: &[&str],
    ) -> ProcessCluster {
        let bin = bin.as_ref();
        let (pg, redis) = tokio::join!(Postgres::start(), Redis::start());
        let mut nodes = Vec::new();
        // One at a time: the first start migrates the shared database.
        for i in 1..=n_nodes {
            nodes.push(Node::spawn(bin, &format!("node-{i}"), &pg, &redis, extra_args).await);
        }
        ProcessCluster { haproxy: None, nodes, redis, pg }
    }

    /// Puts HAProxy in front of the nodes (HAProxy's `node-i` is `nodes[i - 1]`).
    pub async fn with_haproxy(mut self) -> ProcessCluster {
        let addrs: Vec<SocketAddr> = self.nodes.iter().map(Node::addr).collect();
        self.haproxy = Some(Haproxy::start(&addrs).await);
        self
    }

    /// HAProxy in front of the nodes, checking each one's `/readyz`.
    pub async fn with_haproxy_on_readiness(mut self) -> ProcessCluster {
        let addrs: Vec<SocketAddr> = self.nodes.iter().map(Node::addr).collect();
        self.haproxy = Some(Haproxy::start_checking(&addrs, true).await);
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
