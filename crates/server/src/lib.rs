//! The Natter server: one node's HTTP and WebSocket gateway, message service and router.
//!
//! # Layout
//! - [`config`]: the typed configuration (file, `NATTER_*` environment, flags).
//! - `http`: REST routes under `/v1/`, health and metrics; `ws`: the WebSocket session
//!   (`ws/connection.rs` reader and writer, `ws/dispatch.rs` the frame `match`); `http/sse.rs`
//!   and `http/poll.rs` the HTTP transports.
//! - `handlers`: what requests do, shared by both transports (messages, sync, cursors).
//! - `router`: fans committed entries (local, and other nodes' from the bus port) out to
//!   sessions; `receipts` coalesces cursors into receipts.
//! - `port`: where the router meets the bus; `cluster`: this node's registry, publisher,
//!   bus receiver and heartbeat on a [`natter_cluster::Bus`] (in process on a single node,
//!   Redis in cluster mode: one code path).
//! - `state`: [`AppState`], the cheap-clone handle to the store, sessions and shutdown.
//! - `serve`: the accept loop (connection caps, read timeouts) that feeds `http`'s router.
//!
//! [`start`] runs a node on a bound listener and returns a [`RunningServer`]; the `natter`
//! binary and the end-to-end tests both use it.

pub mod backup;
pub mod config;
pub mod metrics;
pub mod telemetry;

mod auth;
mod blocks;
mod cluster;
mod delivery;
mod error;
mod handlers;
mod http;
mod media;
mod members;
mod moderation;
mod port;
mod presence;
mod push;
mod rate;
mod receipts;
mod router;
mod sequencer;
mod serve;
mod session;
mod state;
mod typing;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use natter_cluster::redis::RedisBus;
use natter_cluster::{Bus, BusReceiver};
use natter_store::postgres::PgStore;
use natter_store::sqlite::SqliteStore;
use natter_store::{Store, StoreLimits};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use config::{Config, Limits, S3Settings, ServeArgs};
pub use natter_cluster::local::{Faults, LocalHub};
pub use natter_store::Collected;
pub use push::vapid_keys;
pub use state::AppState;

/// Committed batches waiting for the router. The store's writer blocks past this, which
/// slows commits rather than growing memory; the router only ever does non-blocking sends.
const FEED_QUEUE: usize = 1024;
/// Cursor reports waiting for the coalescer.
const RECEIPT_QUEUE: usize = 64 * 1024;
/// Bus deliveries waiting for the router; beyond it the bus's own capped queue fills and
/// reports an overflow (a catch-up follows).
const INBOUND_QUEUE: usize = 1024;

/// A started node.
pub struct RunningServer {
    addr: SocketAddr,
    state: AppState,
    done: JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    /// The address the node listens on (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops gracefully: no new connections, sessions told to reconnect (close 1012),
    /// pending cursor writes and commits flushed, then the store closed.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.state.shutdown_token().cancel();
        self.done.await.context("server task panicked")?
    }

    /// The deploy-friendly stop (SIGTERM): `/readyz` fails at once, so that balancers stop
    /// sending new connections here; the node keeps serving for `drain_unready_ms`; then it
    /// closes its sessions one at a time, evenly over `drain_spread_ms`, each with close
    /// 1012 (reconnect: through the balancer, to another node); then it stops as
    /// [`RunningServer::stop`] does, finishing in-flight commits. Returns once the last
    /// session was told; [`RunningServer::wait`] for the exit.
    pub async fn drain(&self) {
        let state = &self.state;
        state.draining().cancel();
        let cfg = state.cfg();
        tracing::info!(unready_ms = cfg.drain_unready_ms, "draining: /readyz fails from now on");
        tokio::time::sleep(cfg.drain_unready()).await;
        let mut sessions = Vec::new();
        state.sessions().for_each(|_, _, session| sessions.push(session.clone()));
        let (n, start) = (sessions.len(), tokio::time::Instant::now());
        tracing::info!(n, spread_ms = cfg.drain_spread_ms, "draining: closing sessions");
        for (i, session) in sessions.iter().enumerate() {
            let at = cfg.drain_spread().mul_f64(i as f64 / n as f64);
            tokio::time::sleep_until(start + at).await;
            session.close(natter_proto::close::SERVICE_RESTART);
        }
        state.shutdown_token().cancel();
    }

    /// Waits until the node stops (after [`RunningServer::stop`] or a fatal error).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.done.await.context("server task panicked")?
    }

    /// Collects media now (as the node does every `media_gc_interval_secs`): uploads never
    /// attached within `media_unattached_ttl_secs`, then blobs nothing references.
    pub async fn collect_media(&self) -> anyhow::Result<Collected> {
        let ttl = std::time::Duration::from_secs(self.state.cfg().limits.media_unattached_ttl_secs);
        let store = self.state.store().clone();
        self.state
            .media()
            .collect(store.as_ref(), ttl)
            .await
            .map_err(|e| anyhow::anyhow!(e.message))
    }

    /// A token that stops the node when cancelled.
    pub fn shutdown_token(&self) -> tokio_util::sync::CancellationToken {
        self.state.shutdown_token().clone()
    }
}

/// Opens the store, binds the listener and starts serving: on the Redis bus when
/// `redis_url` is set, else alone on an in-process bus.
pub async fn start(cfg: Config) -> anyhow::Result<RunningServer> {
    start_with_bus(cfg, None).await
}

/// Starts a node that joins `hub`, an in-process bus shared with the other nodes of this
/// process (in-process clusters in tests; `redis_url` must be unset). Nodes sharing one
/// `data_dir` share its SQLite store, each with a writer of its own: SQLite's write lock
/// serializes their commits and `seq` is assigned inside each transaction.
pub async fn start_on_hub(cfg: Config, hub: &LocalHub) -> anyhow::Result<RunningServer> {
    anyhow::ensure!(cfg.redis_url.is_none(), "a node on an in-process hub takes no redis_url");
    start_with_bus(cfg, Some(hub)).await
}

async fn start_with_bus(cfg: Config, hub: Option<&LocalHub>) -> anyhow::Result<RunningServer> {
    cfg.validate()?;
    auth::warm_up();
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
    let node = cfg.node_id.clone().unwrap_or_else(generated_node_id);
    let metrics = metrics::install(&node);
    let (feed_tx, feed_rx) = mpsc::channel(FEED_QUEUE);
    let store = open_store(&cfg, feed_tx).await?;
    grant_admins(store.as_ref(), &cfg.admins).await?;
    let (bus, bus_rx): (Arc<dyn Bus>, BusReceiver) = match (&cfg.redis_url, hub) {
        (Some(url), _) => {
            let ttl = cfg.limits.registry_ttl();
            let (bus, rx) = RedisBus::connect(url, &node, ttl, cfg.limits.bus_queue)
                .await
                .context("joining the cluster on Redis")?;
            tracing::info!(%node, "joined the cluster");
            (Arc::new(bus), rx)
        }
        (None, Some(hub)) => {
            let (bus, rx) = hub.join(&node, cfg.limits.bus_queue);
            (Arc::new(bus), rx)
        }
        (None, None) => {
            let (bus, rx) = LocalHub::standalone(&node, cfg.limits.bus_queue);
            (Arc::new(bus), rx)
        }
    };
    let (presence_tx, presence_rx) = mpsc::unbounded_channel();
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
    let joined = cluster::Cluster::join(bus, bus_rx, &cfg.limits, presence_rx, inbound_tx)
        .await
        .context("joining the bus")?;

    let listener =
        TcpListener::bind(cfg.listen).await.with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let drain = cfg.drain_timeout();
    let (receipts_tx, receipts_rx) = mpsc::channel(RECEIPT_QUEUE);
    let cluster::Joined { cluster, port, tasks } = joined;
    let secret = media::load_secret(cfg.media_secret.as_deref(), &cfg.data_dir)
        .context("loading the server secret")?;
    let media = media::Media::open(&cfg, &secret).await.context("opening media storage")?;
    let tickets = auth::ticket::Tickets::new(&secret);
    let content = moderation::ContentFilter::new(&cfg.content_rules)?;
    let (push, push_rx) = push::Push::new(&cfg, &secret)?;
    if cfg.redis_url.is_some() && cfg.media_url.is_none() {
        tracing::warn!(
            "cluster mode with media on this node's disk: other nodes cannot serve its uploads; \
             set media_url (s3://bucket/prefix) so that every node shares one blob store"
        );
    }
    let state = AppState::new(
        cfg,
        store.clone(),
        receipts_tx,
        metrics,
        (cluster, port),
        presence_tx,
        (media, tickets, content, push),
    );
    let cluster_stop = tokio_util::sync::CancellationToken::new();
    let cluster_tasks = cluster::spawn(&state, tasks, &cluster_stop);

    let router_task = tokio::spawn(router::run(state.clone(), feed_rx, inbound_rx));
    let receipts_task = tokio::spawn(receipts::run(state.clone(), receipts_rx));
    let polls = Arc::new(http::PollStreams::default());
    let ephemeral_task = tokio::spawn(run_ephemeral(state.clone(), polls.clone()));
    let media_task = tokio::spawn(collect_media(state.clone()));
    let push_tasks = [
        tokio::spawn(push::queue(state.clone(), push_rx)),
        tokio::spawn(push::dispatch(state.clone())),
        tokio::spawn(push::email::digests(state.clone())),
    ];
    let app = http::router(state.clone(), polls.clone());
    let serve_state = state.clone();
    let done = tokio::spawn(async move {
        let token = serve_state.shutdown_token().clone();
        let limits = &serve_state.cfg().limits;
        serve::serve(listener, app, limits, token, drain).await;
        // Sessions watch the same token: they send close 1012 and end. Wait for them, then
        // flush cursors, then close the store (the writer commits what is queued), which
        // ends the commit feed and so the router.
        serve_state.tasks().close();
        if tokio::time::timeout(drain, serve_state.tasks().wait()).await.is_err() {
            tracing::warn!(n_tasks = serve_state.tasks().len(), "drain timeout; closing anyway");
        }
        let _ = receipts_task.await;
        let _ = ephemeral_task.await;
        let _ = media_task.await;
        for task in push_tasks {
            let _ = task.await;
        }
        // Poll streams hold sessions between requests; they end with the server.
        polls.clear();
        store.close().await;
        let _ = router_task.await;
        cluster_stop.cancel();
        for task in cluster_tasks {
            let _ = task.await;
        }
        serve_state.cluster().leave().await;
        tracing::info!("stopped");
        Ok(())
    });
    Ok(RunningServer { addr, state, done })
}

/// The configured store: PostgreSQL with `database_url`, else SQLite in the data directory.
async fn open_store(
    cfg: &Config,
    feed_tx: natter_store::CommitFeed,
) -> anyhow::Result<Arc<dyn Store>> {
    let limits = StoreLimits {
        max_group_members: cfg.limits.max_group_members,
        pool_size: cfg.limits.db_pool_size,
        max_pending_invitations: cfg.limits.max_pending_invitations,
        text_search_config: cfg.search_language.clone(),
        wal_limit_bytes: cfg.limits.sqlite_wal_limit_bytes,
    };
    Ok(match &cfg.database_url {
        Some(url) => Arc::new(
            PgStore::connect(url, limits, feed_tx).await.context("connecting to PostgreSQL")?,
        ),
        None => {
            let db_path = cfg.data_dir.join("natter.db");
            let store = SqliteStore::open(&db_path, limits, feed_tx)
                .with_context(|| format!("opening the store at {}", db_path.display()))?;
            Arc::new(store)
        }
    })
}

/// Grants the `admins` setting's handles at start (audited once, when first granted).
async fn grant_admins(store: &dyn Store, handles: &[String]) -> anyhow::Result<()> {
    for handle in handles {
        let handle = auth::policy::normalize_handle(handle);
        match store.user_by_handle(&handle).await? {
            None => tracing::warn!(%handle, "admins: no such account; skipped"),
            Some(user) if store.is_admin(user.id).await? => {}
            Some(user) => {
                store.set_admin(user.id, true, None).await?;
                tracing::info!(%handle, "admins: granted server administration");
            }
        }
    }
    Ok(())
}

/// `natter admin grant|revoke HANDLE`: grants or takes back server administration in the
/// configured store (a running server sees it at the account's next request).
pub async fn set_admin(cfg: &Config, handle: &str, admin: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
    // Nothing is appended, so the commit feed is only drained.
    let (feed_tx, mut feed_rx) = mpsc::channel(16);
    let drain = tokio::spawn(async move { while feed_rx.recv().await.is_some() {} });
    let store = open_store(cfg, feed_tx).await?;
    let handle = auth::policy::normalize_handle(handle);
    let res = match store.user_by_handle(&handle).await? {
        None => Err(anyhow::anyhow!("no account has the handle {handle}")),
        Some(user) => store.set_admin(user.id, admin, None).await.map_err(Into::into),
    };
    store.close().await;
    drop(store);
    let _ = drain.await;
    res
}

/// Now, in milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A node id for a node started without one: unique enough among concurrent nodes.
fn generated_node_id() -> String {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    format!("node-{}-{:08x}", std::process::id(), u32::from_be_bytes(bytes))
}

/// Housekeeping every `media_gc_interval_secs`: collects unattached uploads and unreferenced
/// blobs, and frees the handles of accounts deleted over the grace period ago.
async fn collect_media(state: AppState) {
    let limits = &state.cfg().limits;
    let every = std::time::Duration::from_secs(limits.media_gc_interval_secs.max(1));
    let ttl = std::time::Duration::from_secs(limits.media_unattached_ttl_secs);
    let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = state.shutdown_token().cancelled() => return,
            _ = timer.tick() => {
                if let Err(err) = state.media().collect(state.store().as_ref(), ttl).await {
                    tracing::warn!(error = %err.message, "media collection failed");
                }
                free_deleted_handles(&state).await;
            }
        }
    }
}

/// Frees the handles of accounts deleted over `deleted_handle_grace_secs` ago.
async fn free_deleted_handles(state: &AppState) {
    let grace = i64::try_from(state.cfg().limits.deleted_handle_grace_secs.saturating_mul(1000))
        .unwrap_or(i64::MAX);
    match state.store().free_deleted_handles(now_ms().saturating_sub(grace)).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(n, "freed the handles of deleted accounts"),
        Err(err) => tracing::warn!(error = %err, "freeing deleted accounts' handles failed"),
    }
}

/// Timers of the ephemeral features: typing expiry, presence batches and offline grace,
/// idle long-poll streams.
async fn run_ephemeral(state: AppState, polls: Arc<http::PollStreams>) {
    let mut presence = tokio::time::interval(state.cfg().limits.presence_batch());
    let mut sweep = tokio::time::interval(std::time::Duration::from_millis(250));
    for timer in [&mut presence, &mut sweep] {
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        tokio::select! {
            () = state.shutdown_token().cancelled() => return,
            _ = presence.tick() => state.presence().tick(),
            _ = sweep.tick() => {
                state.typing().expire(&state);
                polls.reap(state.cfg().limits.http_stream_ttl());
                state.rate().sweep();
            }
        }
    }
}
