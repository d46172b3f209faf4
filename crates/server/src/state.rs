//! [`AppState`]: the cheap-clone handle every handler and session gets.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics_exporter_prometheus::PrometheusHandle;
use natter_cluster::{Registry, SessionId};
use natter_store::{CursorUpdate, Store};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::limits::LoginGuard;
use crate::auth::ticket::Tickets;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::media::Media;
use crate::members::MemberCache;
use crate::port::Port;
use crate::presence::{LocalPresence, PresenceHub};
use crate::rate::RateLimits;
use crate::session::SessionHandle;
use crate::typing::TypingHub;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    cfg: Config,
    store: Arc<dyn Store>,
    sessions: Registry<SessionHandle>,
    members: MemberCache,
    typing: TypingHub,
    rate: RateLimits,
    presence: PresenceHub,
    /// This node's part in the cluster (a single node is a cluster of one).
    cluster: Cluster,
    /// Where the router meets the bus.
    port: Port,
    receipts_tx: mpsc::Sender<CursorUpdate>,
    shutdown: CancellationToken,
    /// Cancelled when a drain (SIGTERM) begins: `/readyz` fails from then on.
    draining: CancellationToken,
    tasks: TaskTracker,
    next_session: AtomicU64,
    metrics: PrometheusHandle,
    /// Failed logins per address and handle (back-off).
    logins: LoginGuard,
    media: Media,
    tickets: Tickets,
    touches: crate::auth::Touches,
    blocks: crate::blocks::BlockCache,
    content: crate::moderation::ContentFilter,
    push: crate::push::Push,
}

impl AppState {
    pub(crate) fn new(
        cfg: Config,
        store: Arc<dyn Store>,
        receipts_tx: mpsc::Sender<CursorUpdate>,
        metrics: PrometheusHandle,
        (cluster, port): (Cluster, Port),
        presence_changes: mpsc::UnboundedSender<LocalPresence>,
        (media, tickets, content, push): (
            Media,
            Tickets,
            crate::moderation::ContentFilter,
            crate::push::Push,
        ),
    ) -> AppState {
        let rate = RateLimits::new(&cfg.limits);
        AppState(Arc::new(Inner {
            members: MemberCache::new(store.clone()),
            logins: LoginGuard::new(&cfg.limits),
            cfg,
            store,
            sessions: Registry::default(),
            typing: TypingHub::default(),
            rate,
            presence: PresenceHub::new(presence_changes),
            cluster,
            port,
            receipts_tx,
            shutdown: CancellationToken::new(),
            draining: CancellationToken::new(),
            tasks: TaskTracker::new(),
            next_session: AtomicU64::new(1),
            metrics,
            media,
            tickets,
            touches: crate::auth::Touches::default(),
            blocks: crate::blocks::BlockCache::default(),
            content,
            push,
        }))
    }

    pub fn cfg(&self) -> &Config {
        &self.0.cfg
    }
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.0.store
    }
    pub(crate) fn sessions(&self) -> &Registry<SessionHandle> {
        &self.0.sessions
    }
    pub(crate) fn members(&self) -> &MemberCache {
        &self.0.members
    }
    pub(crate) fn rate(&self) -> &RateLimits {
        &self.0.rate
    }
    pub(crate) fn typing(&self) -> &TypingHub {
        &self.0.typing
    }
    pub(crate) fn presence(&self) -> &PresenceHub {
        &self.0.presence
    }
    pub(crate) fn cluster(&self) -> &Cluster {
        &self.0.cluster
    }
    pub(crate) fn port(&self) -> &Port {
        &self.0.port
    }
    pub(crate) fn receipts_tx(&self) -> &mpsc::Sender<CursorUpdate> {
        &self.0.receipts_tx
    }
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.0.shutdown
    }
    pub(crate) fn draining(&self) -> &CancellationToken {
        &self.0.draining
    }
    pub(crate) fn tasks(&self) -> &TaskTracker {
        &self.0.tasks
    }
    pub(crate) fn next_session_id(&self) -> SessionId {
        self.0.next_session.fetch_add(1, Ordering::Relaxed)
    }
    pub(crate) fn metrics(&self) -> &PrometheusHandle {
        &self.0.metrics
    }
    pub(crate) fn logins(&self) -> &LoginGuard {
        &self.0.logins
    }
    pub(crate) fn media(&self) -> &Media {
        &self.0.media
    }
    pub(crate) fn tickets(&self) -> &Tickets {
        &self.0.tickets
    }
    pub(crate) fn push(&self) -> &crate::push::Push {
        &self.0.push
    }

    pub(crate) fn content(&self) -> &crate::moderation::ContentFilter {
        &self.0.content
    }

    pub(crate) fn blocks(&self) -> &crate::blocks::BlockCache {
        &self.0.blocks
    }

    pub(crate) fn touches(&self) -> &crate::auth::Touches {
        &self.0.touches
    }
}
