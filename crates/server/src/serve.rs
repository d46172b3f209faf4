//! The accept loop: admission (`max_connections` per node, `max_connections_per_ip` per
//! client address), `TCP_NODELAY`, then HTTP/1 on hyper with read timeouts, the axum router
//! as the service, WebSocket upgrades and graceful shutdown.
//!
//! `axum::serve` has no read timeouts: a client that opened sockets and sent nothing, or
//! dripped headers a byte at a time, or promised a body it never sent, held a socket (and a
//! file descriptor) for ever. Here every connection is one of three things at any moment:
//! reading headers (`http_header_timeout_ms`, counted from the accept or the end of the
//! previous response, so idle keep-alive connections end too), reading a body (the whole
//! body within `http_body_timeout_ms` of its headers, else 408 `request_timeout`; for media
//! uploads, which may be large, each chunk within `http_body_timeout_ms` of the one before),
//! or being
//! answered (a handler's own limits apply: poll timeout, SSE and WebSocket keep-alives).
//!
//! A connection over a cap is closed as soon as it is accepted, before anything is read or
//! written: answering would cost a write to a client that is likely flooding, and an
//! accepted-and-closed socket frees its descriptor at once. The admission is held by the
//! socket itself ([`Admitted`]), so an upgraded WebSocket keeps counting until it closes.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::config::Limits;

/// Largest request head (request line and headers) a connection may buffer; hyper's
/// default (~400 KiB) would let 16,000 slow clients hold 6 GiB. Tokens are short.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// File descriptors kept for everything but client connections (the store's files and
/// readers, PostgreSQL and Redis connections, the runtime's own), when `max_connections`
/// is lowered to fit the process's open-file limit.
const FD_RESERVE: usize = 256;

/// Serves `app` on `listener` until `shutdown` is cancelled, then waits up to `drain` for
/// the requests in flight (upgraded WebSockets are sessions: `lib.rs` waits for those).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &Limits,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let gate = Gate::new(connection_cap(limits.max_connections), limits.max_connections_per_ip);
    let body_timeout = limits.http_body_timeout();
    let header_timeout = limits.http_header_timeout();
    let conns = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            res = listener.accept() => match res {
                Ok(accepted) => accepted,
                Err(err) => {
                    accept_failed(err, &shutdown).await;
                    continue;
                }
            },
        };
        let admission = match gate.admit(peer.ip()) {
            Ok(admission) => admission,
            Err(reason) => {
                metrics::counter!("natter_connections_refused_total", "reason" => reason)
                    .increment(1);
                tracing::debug!(%peer, reason, "connection refused");
                continue;
            }
        };
        // Nagle off: an ack or entry written after another small frame must not wait for
        // the client's delayed ACK (it cost ~40 ms of ack latency at low load).
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
        let io = TokioIo::new(Admitted { tcp, _admission: admission });
        let service = App { router: app.clone(), body_timeout, peer };
        let shutdown = shutdown.clone();
        conns.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(io, service)
                .with_upgrades();
            let mut conn = pin!(conn);
            let res = tokio::select! {
                res = conn.as_mut() => res,
                () = shutdown.cancelled() => {
                    // Idle connections close now; a request in flight is answered first.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(err) = res {
                tracing::debug!(%peer, error = %err, "connection ended");
            }
        });
    }
    drop(listener);
    conns.close();
    if tokio::time::timeout(drain, conns.wait()).await.is_err() {
        tracing::warn!(n_connections = conns.len(), "HTTP drain timeout; closing anyway");
    }
}

/// The router behind one connection, its request bodies under the body deadline, each
/// request carrying the peer address (`ConnectInfo`: login limits and hash queueing key on
/// it).
#[derive(Clone)]
struct App {
    router: Router,
    body_timeout: Duration,
    peer: SocketAddr,
}

impl hyper::service::Service<Request<Incoming>> for App {
    type Response = Response;
    type Error = Infallible;
    type Future = tower::util::Oneshot<Router, Request<TimedBody>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let deadline = tokio::time::Instant::now() + self.body_timeout;
        // Uploads stream to disk: only a stall is a timeout, not a long body.
        let idle = req.uri().path().starts_with("/v1/media").then_some(self.body_timeout);
        let mut req = req.map(|body| TimedBody { body, deadline, idle, sleep: None });
        req.extensions_mut().insert(axum::extract::ConnectInfo(self.peer));
        self.router.clone().oneshot(req)
    }
}

/// A request body that must end by its deadline (`http_body_timeout_ms` after the headers),
/// or with `idle`, whose every chunk must arrive within `idle` of the one before.
struct TimedBody {
    body: Incoming,
    deadline: tokio::time::Instant,
    idle: Option<Duration>,
    /// Set on the first read that has to wait: most bodies are empty or already buffered.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// The error a [`TimedBody`] ends with; [`is_body_timeout`] finds it in a rejection.
#[derive(Debug)]
struct BodyTimeout;

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body did not arrive within http_body_timeout_ms")
    }
}

impl std::error::Error for BodyTimeout {}

/// Whether `err` (a body rejection, say) was caused by a body that came too slowly.
pub(crate) fn is_body_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(err) = next {
        if err.is::<BodyTimeout>() {
            return true;
        }
        next = err.source();
    }
    false
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(sleep) = &mut this.sleep
            && sleep.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(idle) = this.idle {
                    this.deadline = tokio::time::Instant::now() + idle;
                    if let Some(sleep) = &mut this.sleep {
                        sleep.as_mut().reset(this.deadline);
                    }
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let deadline = this.deadline;
                let sleep =
                    this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Admission at accept. A semaphore for the node (as mini-redis's `limit_connections`) and
/// a count per address.
struct Gate {
    all: Arc<Semaphore>,
    /// 0: no cap per address.
    per_ip_cap: usize,
    per_ip: Arc<PerIp>,
}

/// Open connections per client address (absent: none).
// A std mutex: one map update per accept and per close, never across an await.
type PerIp = Mutex<HashMap<IpAddr, usize>>;

impl Gate {
    fn new(max_connections: usize, per_ip_cap: usize) -> Gate {
        Gate { all: Arc::new(Semaphore::new(max_connections)), per_ip_cap, per_ip: Arc::default() }
    }

    /// Admits a connection from `ip`, or names the cap it would exceed.
    fn admit(&self, ip: IpAddr) -> Result<Admission, &'static str> {
        let Ok(permit) = self.all.clone().try_acquire_owned() else {
            return Err("max_connections");
        };
        // One key per client as the login limits see it: IPv4 clients of an IPv6 listener
        // (::ffff:a.b.c.d) as IPv4, IPv6 by /64 (one host may hold a whole /64).
        let ip = crate::auth::ClientAddr::from_ip(ip).ip();
        let per_ip = if self.per_ip_cap > 0 {
            let mut counts = self.per_ip.lock().expect("per-address counts lock poisoned");
            let n = counts.entry(ip).or_insert(0);
            if *n >= self.per_ip_cap {
                return Err("max_connections_per_ip");
            }
            *n += 1;
            Some((ip, self.per_ip.clone()))
        } else {
            None
        };
        metrics::gauge!("natter_tcp_connections").increment(1.0);
        Ok(Admission { _permit: permit, per_ip })
    }
}

/// One admitted connection; dropping it gives its place back.
struct Admission {
    _permit: OwnedSemaphorePermit,
    per_ip: Option<(IpAddr, Arc<PerIp>)>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some((ip, counts)) = &self.per_ip {
            let mut counts = counts.lock().expect("per-address counts lock poisoned");
            if let Some(n) = counts.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(ip);
                }
            }
        }
        metrics::gauge!("natter_tcp_connections").decrement(1.0);
    }
}

/// A socket that carries its admission, through an upgrade too.
struct Admitted {
    tcp: TcpStream,
    _admission: Admission,
}

impl AsyncRead for Admitted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// An accept that failed: the client gave up already (go on), or the process is out of
/// descriptors or memory (pause, or the loop would spin on the same error).
async fn accept_failed(err: io::Error, shutdown: &CancellationToken) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(err.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    tracing::error!(error = %err, "accept failed");
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(Duration::from_millis(100)) => {}
    }
}

/// `max_connections`, lowered to fit the process's open-file limit: past that limit
/// `accept` fails and every client times out, the real ones too.
fn connection_cap(max_connections: usize) -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").ok();
    let Some(fd_limit) = limits.as_deref().and_then(open_file_limit) else {
        return max_connections;
    };
    let room = fd_limit.saturating_sub(FD_RESERVE).max(fd_limit / 2);
    if max_connections <= room {
        return max_connections;
    }
    tracing::warn!(
        max_connections,
        open_file_limit = fd_limit,
        lowered_to = room,
        "max_connections exceeds what the open-file limit allows (raise ulimit -n)"
    );
    room
}

/// The soft "Max open files" of a `/proc/<pid>/limits` text (`None`: unlimited or absent).
fn open_file_limit(limits: &str) -> Option<usize> {
    let line = limits.lines().find_map(|l| l.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_soft_open_file_limit() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max processes             63432                63432                processes \n\
                    Max open files            1024                 524288               files     \n";
        assert_eq!(open_file_limit(text), Some(1024));
        assert_eq!(open_file_limit("Max open files  unlimited  unlimited  files"), None);
        assert_eq!(open_file_limit(""), None);
    }

    #[test]
    fn gate_counts_per_node_and_per_address() {
        let gate = Gate::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        let a1 = gate.admit(a).unwrap();
        let _a2 = gate.admit(a).unwrap();
        assert_eq!(gate.admit(a).err(), Some("max_connections_per_ip"));
        let _b1 = gate.admit(b).unwrap();
        assert_eq!(gate.admit("10.0.0.3".parse().unwrap()).err(), Some("max_connections"));
        drop(a1);
        let _a3 = gate.admit(a).unwrap();
        let counts = gate.per_ip.lock().unwrap();
        assert_eq!(counts.get(&"10.0.0.2".parse::<IpAddr>().unwrap()), Some(&1));
    }

    #[test]
    fn per_address_cap_zero_means_none() {
        let gate = Gate::new(10, 0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..10).map(|_| gate.admit(a).unwrap()).collect();
        assert_eq!(gate.admit(a).err(), Some("max_connections"));
        assert!(gate.per_ip.lock().unwrap().is_empty());
        drop(held);
    }
}
