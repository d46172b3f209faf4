//! Session lifecycle, shared by every transport: [`open`] registers a session with the
//! router and presence and returns its queue; dropping the [`SessionGuard`] undoes it all
//! (deregister, typing stopped, presence possibly offline), however the session ends.
//! A user has at most `max_sessions_per_user` sessions on a node, whatever their transport.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};

use natter_cluster::SessionId;
use natter_proto::{DeviceId, ErrorCode, UserId};
use natter_store::{Principal, TokenHash};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cluster::Registration;
use crate::delivery::Outbound;
use crate::error::ApiError;
use crate::state::AppState;

/// How the router and handlers reach one live session.
#[derive(Clone)]
pub(crate) struct SessionHandle {
    /// The device (token) the session authenticated as: revoking it ends the session.
    pub(crate) device: DeviceId,
    tx: mpsc::Sender<Outbound>,
    /// Bytes queued and not yet written ([`Outbound::size`]): added here when an item is
    /// queued, released by the [`SessionQueue`] once the transport wrote it. An atomic, not a
    /// lock: the router adds to it for every entry it fans out.
    queued: Arc<AtomicUsize>,
    /// `outbound_queue_bytes`: past it the session is a slow consumer, like a full queue.
    max_queued: usize,
    pub(crate) kill: CancellationToken,
    /// The close code to send when `kill` fires (0: none chosen).
    pub(crate) close_code: Arc<AtomicU16>,
}

impl SessionHandle {
    /// Queues a frame without waiting; a full queue (`outbound_queue` frames or
    /// `outbound_queue_bytes`) ends the session as a slow consumer (it resumes by
    /// reconnecting), so one slow reader never holds up fan-out nor holds much memory.
    pub(crate) fn offer(&self, item: Outbound) {
        let size = item.size();
        if !self.reserve(size) {
            return;
        }
        match self.tx.try_send(item) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.release(size);
                self.slow_consumer();
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.release(size),
        }
    }

    /// Queues a reply to the session's own request, waiting while the queue has no free
    /// slot (that pauses the session's reader, not anyone else); past `outbound_queue_bytes`
    /// the session is a slow consumer.
    pub(crate) async fn send(&self, item: Outbound) {
        let size = item.size();
        if !self.reserve(size) {
            return;
        }
        if self.tx.send(item).await.is_err() {
            self.release(size);
        }
    }

    /// Counts `size` more bytes queued, or ends the session if that would pass the cap.
    fn reserve(&self, size: usize) -> bool {
        let before = self.queued.fetch_add(size, Ordering::Relaxed);
        if before + size <= self.max_queued {
            return true;
        }
        self.release(size);
        self.slow_consumer();
        false
    }

    fn release(&self, size: usize) {
        self.queued.fetch_sub(size, Ordering::Relaxed);
    }

    fn slow_consumer(&self) {
        if !self.kill.is_cancelled() {
            metrics::counter!("natter_slow_consumers_total").increment(1);
            self.close(natter_proto::close::SLOW_CONSUMER);
        }
    }

    /// Ends the session with `code`.
    pub(crate) fn close(&self, code: u16) {
        let _ = self.close_code.compare_exchange(0, code, Ordering::Relaxed, Ordering::Relaxed);
        self.kill.cancel();
    }

    pub(crate) fn close_code(&self) -> u16 {
        self.close_code.load(Ordering::Relaxed)
    }
}

/// The receiving end of a session's queue. What it hands out stays counted against
/// `outbound_queue_bytes` until the transport calls [`SessionQueue::written`].
pub(crate) struct SessionQueue {
    rx: mpsc::Receiver<Outbound>,
    queued: Arc<AtomicUsize>,
    /// Bytes handed out since the last `written`.
    taken: usize,
}

impl SessionQueue {
    /// Like [`mpsc::Receiver::recv_many`] (and as cancel-safe).
    pub(crate) async fn recv_many(&mut self, buf: &mut Vec<Outbound>, limit: usize) -> usize {
        let start = buf.len();
        let n = self.rx.recv_many(buf, limit).await;
        self.taken += buf[start..].iter().map(Outbound::size).sum::<usize>();
        n
    }

    /// The next item if one is queued.
    pub(crate) fn try_recv(&mut self) -> Option<Outbound> {
        let item = self.rx.try_recv().ok()?;
        self.taken += item.size();
        Some(item)
    }

    /// What was handed out so far is written (or handed to the HTTP body): it no longer
    /// counts against the session's queue.
    pub(crate) fn written(&mut self) {
        let taken = std::mem::take(&mut self.taken);
        self.queued.fetch_sub(taken, Ordering::Relaxed);
    }
}

/// A registered session: its id, its handle, the receiving end of its queue, and the guard
/// that deregisters it.
pub(crate) struct OpenSession {
    pub(crate) id: SessionId,
    pub(crate) handle: SessionHandle,
    pub(crate) rx: SessionQueue,
    pub(crate) guard: SessionGuard,
    /// Resolves once the cluster registry routes the user's entries here; the session's
    /// deliverer waits for it before its first store read.
    pub(crate) registered: Registration,
}

/// Registers a session of `principal`, whose `ready` frame is queued before anything else
/// can be; `too_many_requests` when the user already has `max_sessions_per_user` here.
/// `transport` (`ws`, `sse`, `poll`) labels its metrics.
pub(crate) fn open(
    state: &AppState,
    principal: Principal,
    transport: &'static str,
) -> Result<OpenSession, ApiError> {
    let id = state.next_session_id();
    let user = principal.user_id;
    let limits = &state.cfg().limits;
    let (tx, rx) = mpsc::channel(limits.outbound_queue);
    let queued = Arc::new(AtomicUsize::new(0));
    let rx = SessionQueue { rx, queued: queued.clone(), taken: 0 };
    let handle = SessionHandle {
        device: principal.device_id,
        tx,
        queued,
        max_queued: limits.outbound_queue_bytes,
        kill: CancellationToken::new(),
        close_code: Arc::new(AtomicU16::new(0)),
    };
    let ready = natter_proto::ServerFrame::Ready {
        user_id: user,
        device_id: principal.device_id,
        session_id: Some(id),
    };
    // Queued before registering, so it is the first frame the client sees.
    handle.offer(Outbound::Frame(ready.to_json().into()));
    if !state.sessions().try_register(user, id, handle.clone(), limits.max_sessions_per_user) {
        metrics::counter!("natter_sessions_refused_total").increment(1);
        return Err(ApiError::new(ErrorCode::TooManyRequests, "too many sessions for this user"));
    }
    let registered = state.cluster().register(user);
    state.presence().session_started(user, id, handle.clone());
    metrics::gauge!("natter_connections").increment(1.0);
    metrics::counter!("natter_sessions_opened_total", "transport" => transport).increment(1);
    let guard = SessionGuard { state: state.clone(), user, id };
    Ok(OpenSession { id, handle, rx, guard, registered })
}

/// Ends this node's sessions of `principal`'s device with `code` (its token was revoked).
pub(crate) fn end_device(state: &AppState, principal: Principal, code: u16) {
    let mut n = 0;
    state.sessions().for_each_session(&[principal.user_id], |_, _, session| {
        if session.device == principal.device_id {
            session.close(code);
            n += 1;
        }
    });
    if n > 0 {
        tracing::info!(
            user_id = principal.user_id.0,
            device_id = principal.device_id.0,
            n,
            "ended the sessions of a revoked token"
        );
    }
}

/// Checks, once a session is registered, that its token still holds, and ends it (4001)
/// if not. A revocation committed after this read is published after it too, and so
/// reaches the registered session; one committed between the session's authentication and
/// its registration is caught here.
pub(crate) async fn recheck(state: &AppState, handle: &SessionHandle, token: TokenHash) {
    if let Ok(None) = state.store().authenticate(token).await {
        handle.close(natter_proto::close::UNAUTHENTICATED);
    }
}

/// Undoes [`open`] when dropped.
pub(crate) struct SessionGuard {
    state: AppState,
    user: UserId,
    id: SessionId,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.state.sessions().deregister(self.user, self.id);
        if self.state.sessions().n_sessions(self.user) == 0 {
            self.state.cluster().deregister(self.user);
        }
        self.state.typing().session_ended(&self.state, self.user, self.id);
        let grace = self.state.cfg().limits.presence_grace();
        self.state.presence().session_ended(self.user, self.id, grace);
        metrics::gauge!("natter_connections").decrement(1.0);
    }
}
