//! Natter's test kit: what the end-to-end, SDK, cluster, crash and bench tests start from.
//!
//! - `server.rs`: [`TestServer`], one node in process or as the real binary, and
//!   [`TestCluster`], in-process nodes sharing one store on a bus with injected faults
//!   (`natter_server::Faults`: drops, duplicates, delays and so reordering). Stop on drop.
//! - `http.rs`: [`Endpoint`], a node as a client reaches it (a `TestServer` derefs to
//!   one), with REST helpers and long polling; `ws.rs`: [`WsClient`], a raw WebSocket
//!   client; `sse.rs`: [`SseClient`], a Server-Sent Events client.
//! - `media.rs`: uploads and signed downloads on an [`Endpoint`], and [`CuttingProxy`],
//!   which breaks connections part-way (resumable uploads).
//! - `fixtures.rs`: [`TestUser`], `users`, `direct_pair`, `group`, `synced_ws`, and
//!   [`assert_contiguous`].
//! - [`memory`]: the process's peak resident memory (`peak_kib`, `reset_peak`).
//! - `wait.rs`: the one [`WAIT`], [`within`] and [`poll_until`]. Every wait in the kit is
//!   bounded and panics naming what it waited for; nothing sleeps to let time pass.
//! - [`process`]: the real-binary and external-service harness (`natter` processes,
//!   PostgreSQL, Redis, HAProxy, free ports, log capture), for the tests that only real
//!   processes can do.
//!
//! It is only ever a dev-dependency (crates/e2e/tests/e2e/crate_graph.rs checks that no other
//! crate depends on it).

mod fixtures;
mod http;
mod media;
pub mod memory;
pub mod process;
mod server;
mod sse;
mod wait;
mod ws;

pub use fixtures::{PASSWORD, TestUser, assert_contiguous};
pub use http::Endpoint;
pub use media::CuttingProxy;
pub use natter_proto::encode_cursors;
pub use server::{METRICS_TOKEN, TestCluster, TestServer};
pub use sse::{SseClient, parse_cursors};
pub use wait::{POLL, WAIT, poll_until, within};
pub use ws::{WsClient, reply_id};
