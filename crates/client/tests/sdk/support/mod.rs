//! SDK test support on top of natter-testkit (which starts the node, in process, and can stop
//! and restart it on the same data directory and port): SDK accounts and configuration,
//! waits on SDK events bounded by the kit's `WAIT` (never sleeps), and a TCP proxy that can
//! refuse, cut every connection or drop chosen WebSocket frames.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use natter_client::proto::{ConversationId, Entry, EntryBody, ServerFrame, UserId};
use natter_client::{Api, Backoff, Client, Config, ConnectionState, Event, Events, StateStore};
use natter_testkit::{PASSWORD, TestServer, WAIT, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A node in process with the SDK tests' settings: receipts and presence that show
/// quickly, and a short drain so that a stop does not wait long for clients.
pub async fn start_node() -> TestServer {
    TestServer::start_with(|cfg| {
        cfg.limits.receipt_flush_ms = 20;
        cfg.limits.presence_batch_ms = 50;
        cfg.limits.presence_grace_ms = 100;
        cfg.drain_timeout_ms = 2_000;
    })
    .await
}

/// Registers `handle` and logs one device in through the SDK's REST client.
pub async fn account(base_url: &str, handle: &str) -> (UserId, String) {
    let api = Api::new(base_url).expect("url");
    let session = api.register_or_login(handle, PASSWORD, Some("test")).await.expect("login");
    (session.user_id, session.token)
}

/// An SDK configuration for tests: fast backoff and cursor reports.
pub fn config(base_url: &str, token: &str, store: Arc<dyn StateStore>) -> Config {
    Config {
        store,
        backoff: Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
            stable_after: Duration::from_secs(5),
        },
        delivered_delay: Duration::from_millis(20),
        persist_delay: Duration::from_millis(20),
        ..Config::new(base_url, token)
    }
}

pub async fn connect(cfg: Config) -> (Client, Events) {
    Client::connect(cfg).await.expect("client starts")
}

/// The next event; panics after [`WAIT`] or when the stream ends.
pub async fn next_event(events: &mut Events) -> Event {
    within("an SDK event", events.next()).await.expect("the event stream ended")
}

/// Reads events until `pick` returns something; every event read goes to `seen` first.
pub async fn wait_for<T>(
    events: &mut Events,
    seen: &mut Vec<Event>,
    what: &str,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("the event stream ended while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}; saw {seen:#?}"),
        };
        let picked = pick(&event);
        seen.push(event);
        if let Some(t) = picked {
            return t;
        }
    }
}

pub async fn wait_connected(events: &mut Events, seen: &mut Vec<Event>) {
    wait_for(events, seen, "connected", |e| {
        matches!(e, Event::Connection(ConnectionState::Connected { .. })).then_some(())
    })
    .await;
}

pub fn entries_of(seen: &[Event], conv: ConversationId) -> Vec<&Entry> {
    seen.iter()
        .filter_map(|e| match e {
            Event::Entry(entry) if entry.conversation == conv => Some(entry),
            _ => None,
        })
        .collect()
}

pub fn body(entry: &Entry) -> Option<&str> {
    match &entry.body {
        EntryBody::Message { body, .. } => Some(body),
        _ => None,
    }
}

/// Checks that the entries' seqs are strictly increasing with no gap (G1 as the app sees it).
pub fn assert_contiguous(entries: &[&Entry]) {
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    if let Some(first) = seqs.first() {
        let want: Vec<u64> = (*first..*first + seqs.len() as u64).collect();
        assert_eq!(seqs, want, "entries must be contiguous and in order");
    }
}

type FramePredicate = Arc<dyn Fn(&ServerFrame) -> bool + Send + Sync>;

/// A TCP proxy in front of a node. It can refuse connections (no target), cut every open
/// connection, and drop server-to-client WebSocket text frames that match a predicate.
pub struct Proxy {
    pub addr: SocketAddr,
    inner: Arc<ProxyInner>,
    task: tokio::task::JoinHandle<()>,
}

struct ProxyInner {
    target: Mutex<Option<SocketAddr>>,
    /// Bumped by `cut`; every connection ends when it changes.
    generation: watch::Sender<u64>,
    drop_frame: Mutex<Option<FramePredicate>>,
    n_dropped: AtomicUsize,
    n_accepted: AtomicUsize,
}

impl Proxy {
    pub async fn start(target: Option<SocketAddr>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().expect("proxy addr");
        let inner = Arc::new(ProxyInner {
            target: Mutex::new(target),
            generation: watch::channel(0).0,
            drop_frame: Mutex::new(None),
            n_dropped: AtomicUsize::new(0),
            n_accepted: AtomicUsize::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, inner.clone()));
        Proxy { addr, inner, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where new connections go; `None` closes them at once (the server looks down).
    pub fn set_target(&self, target: Option<SocketAddr>) {
        *self.inner.target.lock().expect("lock") = target;
    }

    /// Closes every open connection (both directions).
    pub fn cut(&self) {
        self.inner.generation.send_modify(|g| *g += 1);
    }

    /// Drops server-to-client text frames for which `pred` is true.
    pub fn drop_frames(&self, pred: impl Fn(&ServerFrame) -> bool + Send + Sync + 'static) {
        *self.inner.drop_frame.lock().expect("lock") = Some(Arc::new(pred));
    }

    pub fn n_dropped(&self) -> usize {
        self.inner.n_dropped.load(Ordering::SeqCst)
    }

    pub fn n_accepted(&self) -> usize {
        self.inner.n_accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, inner: Arc<ProxyInner>) {
    while let Ok((client, _)) = listener.accept().await {
        inner.n_accepted.fetch_add(1, Ordering::SeqCst);
        let target = *inner.target.lock().expect("lock");
        let Some(target) = target else { continue };
        let mut cut = inner.generation.subscribe();
        let inner = inner.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(target).await else { return };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_rx, mut client_tx) = client.into_split();
            let (server_rx, server_tx) = server.into_split();
            let up = async {
                let mut client_rx = client_rx;
                let mut server_tx = server_tx;
                let _ = tokio::io::copy(&mut client_rx, &mut server_tx).await;
            };
            tokio::select! {
                _ = cut.changed() => {}
                () = up => {}
                () = downstream(server_rx, &mut client_tx, &inner) => {}
            }
            // Dropping both sockets closes them.
        });
    }
}

/// Server to client: the HTTP response head as is; after a `101` upgrade, frame by frame so
/// that chosen text frames can be dropped.
async fn downstream(mut from: OwnedReadHalf, to: &mut OwnedWriteHalf, inner: &ProxyInner) {
    let mut buf = Vec::with_capacity(16 * 1024);
    let upgraded = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = buf.drain(..end + 4).collect();
            if to.write_all(&head).await.is_err() {
                return;
            }
            break head.starts_with(b"HTTP/1.1 101");
        }
        match from.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    };
    if !upgraded {
        if to.write_all(&buf).await.is_err() {
            return;
        }
        let _ = tokio::io::copy(&mut from, to).await;
        return;
    }
    loop {
        while let Some((len, opcode, payload)) = parse_frame(&buf) {
            let drop = opcode == 1 && {
                let pred = inner.drop_frame.lock().expect("lock").clone();
                match (pred, serde_json::from_slice::<ServerFrame>(&buf[payload])) {
                    (Some(pred), Ok(frame)) => pred(&frame),
                    _ => false,
                }
            };
            let frame: Vec<u8> = buf.drain(..len).collect();
            if drop {
                inner.n_dropped.fetch_add(1, Ordering::SeqCst);
            } else if to.write_all(&frame).await.is_err() {
                return;
            }
        }
        match from.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// One complete WebSocket frame at the start of `buf`: its length, opcode and payload range.
fn parse_frame(buf: &[u8]) -> Option<(usize, u8, std::ops::Range<usize>)> {
    if buf.len() < 2 {
        return None;
    }
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => (u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize, 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (n as usize, 2),
    };
    if masked {
        at += 4;
    }
    if buf.len() < at + len {
        return None;
    }
    Some((at + len, buf[0] & 0x0f, at..at + len))
}
