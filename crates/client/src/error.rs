//! The SDK's one error type.

use natter_proto::{ErrorBody, ErrorCode};

use crate::store::StoreError;

/// What can go wrong in an SDK call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server refused the request; switch on [`ErrorBody::code`].
    #[error("server refused the request: {code:?}: {message}", code = .0.code, message = .0.message)]
    Server(ErrorBody),
    /// The HTTP request could not be made or its answer not read.
    #[error("http request failed")]
    Http(#[source] reqwest::Error),
    /// The server answered something this SDK does not understand.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// The base URL is not `http://…` (this build has no TLS).
    #[error("base url must start with http://: {0}")]
    BadUrl(String),
    /// The client was closed (by [`crate::Client::close`], or for good after the server
    /// refused its token). Queued sends stay in the store's outbox for the next client.
    #[error("the client is closed")]
    Closed,
    /// The outbox holds [`crate::Config::max_outbox`] sends already.
    #[error("the outbox is full")]
    OutboxFull,
    /// The send's frame would exceed [`crate::Config::max_frame_bytes`]; the server would
    /// close the connection over it, so it is refused before it enters the outbox.
    #[error("the send is larger than max_frame_bytes")]
    TooLarge,
    /// The state store failed to load or save.
    #[error("state store failed")]
    Store(#[from] StoreError),
}

impl Error {
    /// The server's error code, when the server refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server(body) => Some(body.code),
            _ => None,
        }
    }
}

/// `Result` with the SDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
