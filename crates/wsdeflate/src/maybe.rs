//! [`MaybeDeflate`]: a connection with or without the extension, as one type, for code that
//! serves both (the server's sessions, the load generator's connections).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::DeflateStream;

/// The byte stream under a WebSocket: the connection itself, or with permessage-deflate
/// agreed, a [`DeflateStream`] over it (boxed, so that connections without it do not carry
/// its size).
pub enum MaybeDeflate<S> {
    /// No extension: bytes pass straight through.
    Plain(S),
    /// permessage-deflate agreed.
    Deflate(Box<DeflateStream<S>>),
}

impl<S> MaybeDeflate<S> {
    /// The connection underneath.
    pub fn get_ref(&self) -> &S {
        match self {
            MaybeDeflate::Plain(io) => io,
            MaybeDeflate::Deflate(io) => io.get_ref(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeDeflate<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeDeflate::Plain(io) => Pin::new(io).poll_read(cx, buf),
            MaybeDeflate::Deflate(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeDeflate<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeDeflate::Plain(io) => Pin::new(io).poll_write(cx, buf),
            MaybeDeflate::Deflate(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeDeflate::Plain(io) => Pin::new(io).poll_flush(cx),
            MaybeDeflate::Deflate(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeDeflate::Plain(io) => Pin::new(io).poll_shutdown(cx),
            MaybeDeflate::Deflate(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeDeflate::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            MaybeDeflate::Deflate(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeDeflate::Plain(io) => io.is_write_vectored(),
            MaybeDeflate::Deflate(io) => io.is_write_vectored(),
        }
    }
}
