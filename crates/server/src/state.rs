//! [`AppState`]: the cheap-clone handle every handler and session gets.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};

use metrics_exporter_prometheus::PrometheusHandle;
use natter_cluster::{Registry, SessionId};
use natter_store::{CursorUpdate, Store};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::members::MemberCache;
use crate::ws::Outbound;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    cfg: Config,
    store: Arc<dyn Store>,
    sessions: Registry<SessionHandle>,
    members: MemberCache,
    receipts_tx: mpsc::Sender<CursorUpdate>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    next_session: AtomicU64,
    metrics: PrometheusHandle,
}

impl AppState {
    pub(crate) fn new(
        cfg: Config,
        store: Arc<dyn Store>,
        receipts_tx: mpsc::Sender<CursorUpdate>,
        metrics: PrometheusHandle,
    ) -> AppState {
        AppState(Arc::new(Inner {
            members: MemberCache::new(store.clone()),
            cfg,
            store,
            sessions: Registry::default(),
            receipts_tx,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            next_session: AtomicU64::new(1),
            metrics,
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
    pub(crate) fn receipts_tx(&self) -> &mpsc::Sender<CursorUpdate> {
        &self.0.receipts_tx
    }
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.0.shutdown
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
}

/// How the router and handlers reach one live session.
#[derive(Clone)]
pub(crate) struct SessionHandle {
    pub(crate) tx: mpsc::Sender<Outbound>,
    pub(crate) kill: CancellationToken,
    /// The close code to send when `kill` fires (0: none chosen).
    pub(crate) close_code: Arc<AtomicU16>,
}

impl SessionHandle {
    /// Queues a frame without waiting; a full queue ends the session as a slow consumer
    /// (it resumes by reconnecting), so one slow reader never holds up fan-out.
    pub(crate) fn offer(&self, item: Outbound) {
        match self.tx.try_send(item) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.kill.is_cancelled() {
                    metrics::counter!("natter_slow_consumers_total").increment(1);
                    self.close(natter_proto::close::SLOW_CONSUMER);
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Ends the session with `code`.
    pub(crate) fn close(&self, code: u16) {
        let _ = self
            .close_code
            .compare_exchange(0, code, Ordering::Relaxed, Ordering::Relaxed);
        self.kill.cancel();
    }
}
