//! The Natter client SDK: everything an app needs to chat over a Natter server without
//! reading the server's code.
//!
//! ```no_run
//! use natter_client::{Api, Client, Config, Event, FileStore};
//! use natter_client::proto::UserId;
//! use std::sync::Arc;
//!
//! # async fn run() -> Result<(), natter_client::Error> {
//! // Accounts and conversations are REST calls.
//! let api = Api::new("http://127.0.0.1:8080")?;
//! let session = api.login("alice", "correct horse battery", Some("laptop")).await?;
//! let api = api.with_token(&session.token);
//! let conv = api.create_direct(UserId(2)).await?.id;
//!
//! // The live side: one background connection, reconnecting and resuming by itself.
//! let config = Config {
//!     store: Arc::new(FileStore::new("alice.state.json")),
//!     ..Config::new("http://127.0.0.1:8080", session.token)
//! };
//! let (client, mut events) = Client::connect(config).await?;
//! // Saved in the outbox first: survives drops and restarts; the ack comes as an event.
//! let id = client.send_nowait(conv, "hello").await?;
//! while let Some(event) = events.next().await {
//!     match event {
//!         Event::Entry(entry) => println!("{}: {:?}", entry.seq, entry.body),
//!         Event::Acked(ack) if ack.client_msg_id.as_ref() == Some(&id) => {
//!             println!("stored as seq {}", ack.seq);
//!         }
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # What the SDK guarantees the app
//! - **Order, no gap, no duplicate** per conversation: [`Event::Entry`] seqs are strictly
//!   increasing and contiguous, across reconnects and restarts. If the server or the network
//!   ever skips a `seq`, the SDK holds what follows and fills the gap from history first.
//!   The first entry of a conversation the SDK has never seen is wherever the server starts
//!   it (its latest page); older entries are a [`Client::history`] call away.
//! - **Resume**: the last `seq` handed to the app per conversation (its cursor) is kept in a
//!   [`StateStore`]; every (re)connect syncs from those cursors. With a [`FileStore`] an app
//!   restart resumes too. (Cursor moves and acks are saved within
//!   [`Config::persist_delay`]: after a crash, the last entries before it may come again —
//!   same `seq`, easy to drop — and a send acked just before it is reported again.)
//! - **Outbox**: a send is stored in the outbox (and saved, before it goes on the wire) and
//!   retried over every reconnect until the server acks or refuses it. Its `client_msg_id`
//!   makes retries idempotent, so each is stored exactly once, in the order the app wrote
//!   them; each ack is reported, in that order, as [`Event::Acked`] (and returned by
//!   [`Client::send`]).
//! - **Receipts**: `delivered` cursors are reported automatically (coalesced), `read` ones
//!   with [`Client::read`].
//!
//! # Layout
//! - [`client`]: [`Client`], the cheap-clone handle the app calls; [`Config`] here.
//! - `driver`: the background task that owns the WebSocket, the state and the reconnect loop;
//!   `driver/conn.rs` one WebSocket, `driver/events.rs` the events on their way to the app.
//! - `timeline`: gap detection per conversation; `outbox`: queued sends and their window.
//! - [`store`]: [`StateStore`], [`MemoryStore`], [`FileStore`].
//! - [`api`]: [`Api`], the REST calls (accounts, conversations, history pages).
//! - [`event`]: [`Event`], [`Events`], [`ConnectionState`].

#![warn(missing_docs)]

pub mod api;
pub mod client;
pub mod event;
pub mod media;
pub mod moderation;
pub mod search;
pub mod store;

mod backoff;
mod driver;
mod error;
mod outbox;
mod timeline;

use std::sync::Arc;
use std::time::Duration;

pub use natter_proto as proto;

pub use api::{Api, HistoryRange};
pub use backoff::Backoff;
pub use client::{Client, Pending};
pub use error::{Error, Result};
pub use event::{CloseReason, ConnectionState, Event, Events};
pub use search::SearchOptions;
pub use store::{FileStore, MemoryStore, OutboxItem, Snapshot, StateStore, StoreError};

/// How to reach the server and how the SDK behaves. Start from [`Config::new`] and change
/// what you need: `Config { store, ..Config::new(url, token) }`.
#[derive(Clone)]
pub struct Config {
    /// The server's base URL, `http://host:port` (the WebSocket is `ws://host:port/v1/ws`).
    pub base_url: String,
    /// A bearer token from [`Api::login`].
    pub token: String,
    /// Where cursors and the outbox are kept between runs (default: in memory).
    pub store: Arc<dyn StateStore>,
    /// Delays between reconnect attempts.
    pub backoff: Backoff,
    /// Events buffered for the app: its channel holds this many, and the SDK queues as many
    /// more before it stops reading from the server (which may then drop the connection as
    /// a slow consumer; the SDK reconnects and resumes once the app reads on).
    pub event_buffer: usize,
    /// Most sends waiting in the outbox; beyond it [`Client::send`] fails with
    /// [`Error::OutboxFull`].
    pub max_outbox: usize,
    /// The server's WebSocket frame cap (its `max_frame_bytes`, 64 KiB by default). A send
    /// whose frame would exceed it fails with [`Error::TooLarge`] instead of entering the
    /// outbox, where it would make the server drop every connection that carries it.
    pub max_frame_bytes: usize,
    /// Most sends written to the server and not yet acked. `1` keeps the written order even
    /// across a transient server error (see [`Client::append`]), at the cost of throughput.
    pub max_in_flight: usize,
    /// `delivered` cursors are reported at most once per this window per conversation.
    pub delivered_delay: Duration,
    /// Cursor changes are saved to the store at most once per this window (outbox additions
    /// are saved at once, before they are sent).
    pub persist_delay: Duration,
    /// How often the SDK pings the server (keeps the session alive and proves the link).
    pub ping_interval: Duration,
    /// A connection on which nothing arrives for this long is dropped and reconnected.
    pub idle_timeout: Duration,
    /// Time for the WebSocket handshake and the server's `ready` frame.
    pub connect_timeout: Duration,
    /// Entries per conversation per `sync` page (`None`: the server's default).
    pub sync_limit: Option<u32>,
}

impl Config {
    /// Defaults for `base_url` and `token`: an in-memory store, reconnects from 100 ms
    /// doubling to 10 s with full jitter.
    pub fn new(base_url: impl Into<String>, token: impl Into<String>) -> Config {
        Config {
            base_url: base_url.into(),
            token: token.into(),
            store: Arc::new(MemoryStore::new()),
            backoff: Backoff::default(),
            event_buffer: 1024,
            max_outbox: 10_000,
            max_frame_bytes: 64 * 1024,
            max_in_flight: 64,
            delivered_delay: Duration::from_millis(250),
            persist_delay: Duration::from_millis(200),
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(50),
            connect_timeout: Duration::from_secs(10),
            sync_limit: None,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a credential: never in logs.
        f.debug_struct("Config")
            .field("base_url", &self.base_url)
            .field("backoff", &self.backoff)
            .field("event_buffer", &self.event_buffer)
            .field("max_outbox", &self.max_outbox)
            .field("max_in_flight", &self.max_in_flight)
            .finish_non_exhaustive()
    }
}
