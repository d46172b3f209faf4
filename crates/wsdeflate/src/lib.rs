//! RFC 7692 `permessage-deflate` for tungstenite, implemented *underneath* it.
//!
//! tungstenite 0.29 has no extension hook and fails any frame with RSV1 set, so compression
//! cannot be bolted onto it from above. Instead [`DeflateStream`] wraps the raw byte stream
//! (after the HTTP upgrade) and speaks RFC 6455 framing itself:
//!
//! * inbound, a compressed message (RSV1 on its first frame) is collected across its
//!   continuation frames, inflated, and handed up as one ordinary unfragmented frame;
//!   everything else passes through untouched;
//! * outbound, the frames tungstenite writes are parsed, and complete data messages of at
//!   least [`DeflateConfig::min_compress_bytes`] are deflated and re-emitted with RSV1 set.
//!
//! tungstenite therefore only ever sees uncompressed frames, and keeps doing everything else
//! (UTF-8 validation, control frames, the close handshake, size limits).
//!
//! # Memory policy
//!
//! Negotiation ([`negotiate`], [`accept_response`]) always agrees on *no context takeover* in
//! both directions, so no zlib window survives between messages. That lets each message borrow
//! a compressor or decompressor from a small per-thread pool instead of every connection owning
//! one (a miniz_oxide compressor is a few hundred KiB), and lets buffers be released once a
//! message is done. An idle connection holds only the [`DeflateStream`] struct itself.
//!
//! # Server usage
//!
//! ```no_run
//! # async fn demo(io: tokio::net::TcpStream, ext_headers: Vec<String>) {
//! use natter_wsdeflate::{DeflateConfig, DeflateStream, Role, negotiate};
//! match negotiate(ext_headers.iter().map(String::as_str)) {
//!     Some(agreement) => {
//!         // Send `Sec-WebSocket-Extensions: {agreement.response_header()}` in the 101
//!         // response, then hand tungstenite the wrapped socket:
//!         let _ws_io = DeflateStream::new(io, Role::Server, DeflateConfig::default());
//!     }
//!     None => { /* no compression: give tungstenite the plain socket */ }
//! }
//! # }
//! ```
//!
//! Read errors caused by the peer carry a [`DeflateError`] (see [`DeflateError::from_io`] and
//! [`DeflateError::close_code`]) so the server can close with 1009 / 1002 / 1007 through
//! tungstenite's normal close path; the write half stays usable after such an error.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "client")]
pub mod client;
mod codec;
mod frame;
mod maybe;
mod negotiate;
mod stream;

pub use maybe::MaybeDeflate;
pub use negotiate::{Agreement, accept_response, client_offer, negotiate};
pub use stream::DeflateStream;

use std::io;

/// Tuning for one [`DeflateStream`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateConfig {
    /// Upper bound on one inbound message's *decompressed* size, enforced while inflating so a
    /// small compressed frame cannot expand into a large allocation. The collected compressed
    /// input of a message is capped at about the same size. The server passes its tungstenite
    /// `max_frame_size` here.
    pub max_message_bytes: usize,
    /// Outbound data messages larger than this are sent uncompressed: the bound of the buffer
    /// an outbound message is collected in. A server passes the largest frame it writes (its
    /// replies may be larger than what it accepts).
    pub max_outbound_bytes: usize,
    /// flate2 compression level, 0–9. Chat frames are small and latency-sensitive, so speed
    /// matters more than the last few percent of ratio.
    pub level: u32,
    /// Outbound data messages shorter than this are sent uncompressed (RSV1 clear); RFC 7692
    /// lets the sender choose per message. Below roughly a hundred bytes deflate's block
    /// overhead eats most of the gain while the CPU cost stays.
    pub min_compress_bytes: usize,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024,
            max_outbound_bytes: 64 * 1024,
            level: 1,
            min_compress_bytes: 128,
        }
    }
}

/// Which end of the WebSocket connection a [`DeflateStream`] is.
///
/// It decides masking (RFC 6455 §5.3): clients mask what they send, servers do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The wrapped socket was accepted by a server; the peer is a client.
    Server,
    /// The wrapped socket was connected by a client; the peer is a server.
    Client,
}

/// Why a peer's traffic or a negotiation was refused.
///
/// Stream errors reach the caller wrapped in an [`io::Error`] (kind `InvalidData`), because
/// tungstenite only sees the byte stream; use [`DeflateError::from_io`] to get it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeflateError {
    /// A message's decompressed (or collected compressed) size passed
    /// [`DeflateConfig::max_message_bytes`]. Close with 1009.
    #[error("compressed WebSocket message exceeds the size limit")]
    MessageTooBig,
    /// The peer broke RFC 6455/7692 framing rules, e.g. RSV1 on a control or continuation
    /// frame, or RSV2/RSV3 set. Close with 1002.
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str),
    /// The payload of a compressed message is not valid DEFLATE data. Close with 1007.
    #[error("invalid compressed data in WebSocket message")]
    CorruptData,
    /// A `Sec-WebSocket-Extensions` response could not be accepted by the client side.
    #[error("permessage-deflate negotiation failed: {0}")]
    Negotiation(&'static str),
}

impl DeflateError {
    /// The WebSocket close code (RFC 6455 §7.4.1) a server should send for this error.
    pub fn close_code(&self) -> u16 {
        match self {
            DeflateError::MessageTooBig => 1009,
            DeflateError::Protocol(_) | DeflateError::Negotiation(_) => 1002,
            DeflateError::CorruptData => 1007,
        }
    }

    /// Finds the [`DeflateError`] inside an I/O error returned by [`DeflateStream`] (or by
    /// tungstenite, which passes such errors on as `tungstenite::Error::Io`).
    pub fn from_io(err: &io::Error) -> Option<&DeflateError> {
        err.get_ref().and_then(|e| e.downcast_ref::<DeflateError>())
    }
}

impl From<DeflateError> for io::Error {
    fn from(err: DeflateError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, err)
    }
}
