//! [`DeflateStream`]: the byte-stream layer that adds and removes compression between the
//! socket and tungstenite.

use std::cmp::min;
use std::io;
use std::mem::{self, MaybeUninit};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::codec::{TRAILER, deflate_into, inflate_into};
use crate::frame::{Header, HeaderBuf, MAX_HEADER, OP_CONTINUATION, apply_mask};
use crate::{DeflateConfig, DeflateError, Role};

/// Bytes read from the socket per call when not reading straight into the caller's buffer.
/// Lives on the stack, so it costs an idle connection nothing.
const READ_CHUNK: usize = 8 * 1024;

/// A buffer that is empty again keeps at most this much capacity: none, so that a quiet
/// connection holds no buffer at all (each message's few allocations cost little next to
/// its deflate or inflate).
const RETAIN_BYTES: usize = 0;

/// `poll_write` stops accepting pass-through bytes once this much is queued for the socket.
/// Besides this, at most one compressed frame (≤ `max_outbound_bytes` plus a few bytes) can be
/// queued, so outbound memory is bounded whatever the caller does.
const WRITE_QUEUE_LIMIT: usize = 16 * 1024;

/// A WebSocket byte stream with permessage-deflate (RFC 7692, no context takeover) handled
/// transparently: wrap the upgraded socket in it and give it to
/// `tokio_tungstenite::WebSocketStream::from_raw_socket`, with the same [`Role`] on both.
///
/// What tungstenite reads is the peer's traffic with every compressed message replaced by one
/// unfragmented, uncompressed frame (masked in [`Role::Server`], since tungstenite's server
/// role insists on masked client frames). What tungstenite writes is compressed message by
/// message; fragmented outbound messages (which tungstenite only produces for explicit
/// `Message::Frame` sends) and frames below [`DeflateConfig::min_compress_bytes`] or above
/// [`DeflateConfig::max_outbound_bytes`] are sent as they are.
///
/// The read half and the write half are independent: after a read error (e.g.
/// [`DeflateError::MessageTooBig`]) reads keep failing, but writes keep working so the close
/// frame can still be sent.
///
/// Memory: `size_of::<DeflateStream<tokio::net::TcpStream>>()` is 328 bytes on x86_64 Linux
/// (checked by a unit test). Between messages it keeps no buffer: `tests/memory.rs` measures
/// nothing kept after a chat message, a history page or a 60 KiB message each way, read
/// 2 KiB at a time. The flate2 objects live in per-thread pools (about 350 KiB per runtime
/// thread), not per connection.
#[derive(Debug)]
pub struct DeflateStream<S> {
    inner: S,
    role: Role,
    config: DeflateConfig,
    rx: Inbound,
    tx: Outbound,
}

impl<S> DeflateStream<S> {
    /// Wraps `inner`, the socket right after the HTTP upgrade on which permessage-deflate was
    /// agreed.
    pub fn new(inner: S, role: Role, config: DeflateConfig) -> Self {
        let config = DeflateConfig { level: config.level.min(9), ..config };
        Self { inner, role, config, rx: Inbound::default(), tx: Outbound::default() }
    }

    /// The wrapped stream, e.g. for `peer_addr`.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped stream. Reading or writing it directly corrupts the WebSocket framing.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

/// State of the inbound (peer → tungstenite) direction.
#[derive(Debug, Default)]
struct Inbound {
    header: HeaderBuf,
    frame: InFrame,
    message: InMessage,
    /// The unmasked compressed payload of the message being collected.
    compressed: Vec<u8>,
    /// Bytes ready for tungstenite ahead of anything else: a pass-through frame's header or
    /// a whole inflated frame.
    staged: Vec<u8>,
    staged_pos: usize,
    /// Socket bytes read but not yet processed because tungstenite's buffer was full.
    leftover: Vec<u8>,
    leftover_pos: usize,
    /// Set once the peer broke the rules; reads keep reporting it.
    failed: Option<DeflateError>,
}

#[derive(Debug, Default, Clone, Copy)]
enum InFrame {
    /// Collecting the next frame header.
    #[default]
    Header,
    /// Copying a frame's payload to tungstenite unchanged.
    Pass { remaining: u64 },
    /// Appending a compressed frame's payload (unmasked) to `compressed`.
    Collect { remaining: usize, key: Option<[u8; 4]>, frame_start: usize, fin: bool },
}

/// Which kind of fragmented data message continuation frames belong to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum InMessage {
    #[default]
    None,
    Plain,
    Compressed {
        opcode: u8,
        key: Option<[u8; 4]>,
    },
}

impl Inbound {
    /// Fails the read half; but when `delivered`, the frames already handed up in this call
    /// go to tungstenite first (it drops a read's bytes that come with an error) and the
    /// error comes with the next read.
    fn fail_after(&mut self, err: DeflateError, delivered: bool) -> io::Result<()> {
        let err = self.fail(err);
        if delivered { Ok(()) } else { Err(err) }
    }

    fn fail(&mut self, err: DeflateError) -> io::Error {
        self.failed = Some(err);
        // Nothing will be read any more; don't keep a half-collected message alive.
        for buf in [&mut self.compressed, &mut self.staged, &mut self.leftover] {
            *buf = Vec::new();
        }
        (self.staged_pos, self.leftover_pos) = (0, 0);
        err.into()
    }

    /// Moves staged bytes to `out`; true once nothing is staged any more.
    fn drain_staged(&mut self, out: &mut ReadBuf<'_>) -> bool {
        let n = min(self.staged.len() - self.staged_pos, out.remaining());
        out.put_slice(&self.staged[self.staged_pos..self.staged_pos + n]);
        self.staged_pos += n;
        if self.staged_pos < self.staged.len() {
            return false;
        }
        self.staged_pos = 0;
        release(&mut self.staged);
        true
    }

    /// Consumes as much of `input` (socket bytes) as it can, putting what tungstenite should
    /// see into `out`. Stops early only when `out` is full.
    fn process(
        &mut self,
        input: &[u8],
        out: &mut ReadBuf<'_>,
        role: Role,
        config: &DeflateConfig,
    ) -> Result<usize, DeflateError> {
        let mut used = 0;
        loop {
            // Staged bytes precede everything after them in the stream.
            if !self.drain_staged(out) {
                return Ok(used);
            }
            match self.frame {
                InFrame::Header => {
                    if used == input.len() {
                        return Ok(used);
                    }
                    let (n, header) = self.header.feed(&input[used..])?;
                    used += n;
                    if let Some(header) = header {
                        self.start_frame(header, role, config)?;
                        self.header.clear();
                    }
                }
                InFrame::Pass { remaining } => {
                    let n = min(remaining, (input.len() - used).min(out.remaining()) as u64);
                    if remaining > 0 && n == 0 {
                        return Ok(used);
                    }
                    let n = n as usize;
                    out.put_slice(&input[used..used + n]);
                    used += n;
                    self.frame = match remaining - n as u64 {
                        0 => InFrame::Header,
                        remaining => InFrame::Pass { remaining },
                    };
                }
                InFrame::Collect { remaining, key, frame_start, fin } => {
                    let n = min(remaining, input.len() - used);
                    if remaining > 0 && n == 0 {
                        return Ok(used);
                    }
                    let at = self.compressed.len();
                    self.compressed.extend_from_slice(&input[used..used + n]);
                    if let Some(key) = key {
                        apply_mask(&mut self.compressed[at..], key, at - frame_start);
                    }
                    used += n;
                    if remaining > n {
                        self.frame =
                            InFrame::Collect { remaining: remaining - n, key, frame_start, fin };
                    } else {
                        self.frame = InFrame::Header;
                        if fin {
                            self.finish_message(role, config)?;
                        }
                    }
                }
            }
        }
    }

    fn start_frame(
        &mut self,
        h: Header,
        role: Role,
        config: &DeflateConfig,
    ) -> Result<(), DeflateError> {
        if h.rsv23 {
            return Err(DeflateError::Protocol("RSV2/RSV3 set, but no extension defines them"));
        }
        if h.is_control() {
            if h.rsv1 {
                return Err(DeflateError::Protocol("RSV1 set on a control frame"));
            }
            // Control frames may sit between the fragments of a compressed message; they go
            // up at once, ahead of the message they interrupt (RFC 6455 §5.4).
            self.pass(h);
            return Ok(());
        }
        match (h.opcode, self.message) {
            (OP_CONTINUATION, _) if h.rsv1 => {
                Err(DeflateError::Protocol("RSV1 set on a continuation frame"))
            }
            (OP_CONTINUATION, InMessage::None) => {
                Err(DeflateError::Protocol("continuation frame without a message to continue"))
            }
            (OP_CONTINUATION, InMessage::Plain) => {
                if h.fin {
                    self.message = InMessage::None;
                }
                self.pass(h);
                Ok(())
            }
            (OP_CONTINUATION, InMessage::Compressed { .. }) => self.collect(h, role, config),
            _ if !h.is_data_start() => {
                // Reserved opcode: tungstenite fails the connection on its own terms.
                self.pass(h);
                Ok(())
            }
            (_, InMessage::Plain | InMessage::Compressed { .. }) => {
                Err(DeflateError::Protocol("new data message inside a fragmented one"))
            }
            (_, InMessage::None) if h.rsv1 => {
                self.message = InMessage::Compressed { opcode: h.opcode, key: h.mask };
                self.compressed.clear();
                self.collect(h, role, config)
            }
            (_, InMessage::None) => {
                if !h.fin {
                    self.message = InMessage::Plain;
                }
                self.pass(h);
                Ok(())
            }
        }
    }

    fn pass(&mut self, h: Header) {
        self.staged.extend_from_slice(self.header.raw());
        self.frame = if h.len == 0 { InFrame::Header } else { InFrame::Pass { remaining: h.len } };
    }

    fn collect(
        &mut self,
        h: Header,
        role: Role,
        config: &DeflateConfig,
    ) -> Result<(), DeflateError> {
        // Masking is checked here rather than left to tungstenite because the frame is
        // re-encoded: it is no longer visible what the peer actually sent.
        match (role, h.mask) {
            (Role::Server, None) => return Err(DeflateError::Protocol("unmasked client frame")),
            (Role::Client, Some(_)) => return Err(DeflateError::Protocol("masked server frame")),
            _ => {}
        }
        // Refuse by declared length, before reading (or allocating for) the payload.
        let total = (self.compressed.len() as u64).saturating_add(h.len);
        if total > compressed_limit(config) as u64 {
            return Err(DeflateError::MessageTooBig);
        }
        let len = h.len as usize;
        if self.compressed.is_empty() {
            self.compressed.reserve_exact(len + TRAILER.len());
        } else {
            self.compressed.reserve(len + TRAILER.len());
        }
        let frame_start = self.compressed.len();
        self.frame = InFrame::Collect { remaining: len, key: h.mask, frame_start, fin: h.fin };
        if len == 0 && h.fin {
            self.frame = InFrame::Header;
            return self.finish_message(role, config);
        }
        Ok(())
    }

    /// Inflates the collected message into `staged` as one unfragmented frame.
    fn finish_message(&mut self, role: Role, config: &DeflateConfig) -> Result<(), DeflateError> {
        let InMessage::Compressed { opcode, key } = mem::take(&mut self.message) else {
            unreachable!("finish_message outside a compressed message");
        };
        debug_assert!(self.staged.is_empty());
        // Room for the header in front, filled in once the payload length is known.
        self.staged.resize(MAX_HEADER, 0);
        // An empty payload is what RFC 7692 §7.2.3.6 calls an empty message sent compressed
        // without any DEFLATE block; the trailer alone would not inflate.
        if !self.compressed.is_empty() {
            self.compressed.extend_from_slice(&TRAILER);
            inflate_into(&self.compressed, &mut self.staged, config.max_message_bytes)?;
        }
        release(&mut self.compressed);

        // tungstenite's server role requires masked frames; any key will do, so reuse the
        // peer's. Its client role requires unmasked ones.
        let mask = match role {
            Role::Server => key,
            Role::Client => None,
        };
        if let Some(key) = mask {
            apply_mask(&mut self.staged[MAX_HEADER..], key, 0);
        }
        let len = (self.staged.len() - MAX_HEADER) as u64;
        let header = Header { fin: true, rsv1: false, rsv23: false, opcode, mask, len };
        let mut bytes = [0u8; MAX_HEADER];
        let n = header.encode_right_aligned(&mut bytes);
        self.staged[..MAX_HEADER].copy_from_slice(&bytes);
        self.staged_pos = MAX_HEADER - n;
        Ok(())
    }
}

/// A DEFLATE stream can be a little larger than its input (stored blocks, or Huffman coding of
/// random bytes), so the compressed cap allows that much over the decompressed one.
fn compressed_limit(config: &DeflateConfig) -> usize {
    config.max_message_bytes.saturating_add(config.max_message_bytes / 8).saturating_add(64)
}

/// State of the outbound (tungstenite → peer) direction.
#[derive(Debug, Default)]
struct Outbound {
    header: HeaderBuf,
    frame: OutFrame,
    /// The unmasked payload of the data frame being collected for compression.
    message: Vec<u8>,
    /// Bytes accepted from tungstenite and not yet written to the socket.
    queue: Vec<u8>,
    queue_pos: usize,
}

#[derive(Debug, Default, Clone, Copy)]
enum OutFrame {
    #[default]
    Header,
    Pass {
        remaining: u64,
    },
    Collect {
        remaining: usize,
        opcode: u8,
        key: Option<[u8; 4]>,
    },
}

impl Outbound {
    fn queued(&self) -> usize {
        self.queue.len() - self.queue_pos
    }

    fn start_frame(&mut self, h: Header, config: &DeflateConfig) -> io::Result<()> {
        let compress = h.is_data_start()
            && h.fin
            && !h.rsv1
            && !h.rsv23
            && h.len >= config.min_compress_bytes as u64
            && h.len <= config.max_outbound_bytes as u64;
        if compress {
            let len = h.len as usize;
            debug_assert!(self.message.is_empty());
            self.message.reserve_exact(len);
            // Keep tungstenite's masking key (client role) to re-mask the compressed payload:
            // it is as unpredictable as a fresh one.
            self.frame = OutFrame::Collect { remaining: len, opcode: h.opcode, key: h.mask };
            if len == 0 {
                self.finish_message(config)?;
            }
        } else {
            self.queue.extend_from_slice(self.header.raw());
            self.frame =
                if h.len == 0 { OutFrame::Header } else { OutFrame::Pass { remaining: h.len } };
        }
        Ok(())
    }

    /// Queues the collected message as one compressed frame.
    fn finish_message(&mut self, config: &DeflateConfig) -> io::Result<()> {
        let OutFrame::Collect { opcode, key, .. } = self.frame else {
            unreachable!("finish_message outside a collected frame");
        };
        self.frame = OutFrame::Header;
        let start = self.queue.len();
        self.queue.resize(start + MAX_HEADER, 0);
        deflate_into(config.level, &self.message, &mut self.queue)?;
        release(&mut self.message);

        let payload = start + MAX_HEADER;
        if let Some(key) = key {
            apply_mask(&mut self.queue[payload..], key, 0);
        }
        let len = (self.queue.len() - payload) as u64;
        let header = Header { fin: true, rsv1: true, rsv23: false, opcode, mask: key, len };
        let mut bytes = [0u8; MAX_HEADER];
        let n = header.encode_right_aligned(&mut bytes);
        self.queue[start..payload].copy_from_slice(&bytes);
        let gap = MAX_HEADER - n;
        if self.queue_pos == start {
            // Nothing queued ahead: skip the unused header room instead of moving the payload.
            self.queue_pos += gap;
        } else {
            self.queue.copy_within(start + gap.., start);
            self.queue.truncate(self.queue.len() - gap);
        }
        Ok(())
    }
}

impl<S: AsyncWrite + Unpin> DeflateStream<S> {
    /// Writes the whole queue to the socket (or returns Pending/an error trying).
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let tx = &mut self.tx;
        while tx.queue_pos < tx.queue.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &tx.queue[tx.queue_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            tx.queue_pos += n;
        }
        tx.queue_pos = 0;
        release(&mut tx.queue);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for DeflateStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let (rx, role, config) = (&mut this.rx, this.role, &this.config);
        if let Some(err) = rx.failed {
            return Poll::Ready(Err(err.into()));
        }
        let filled_before = out.filled().len();
        loop {
            // Earlier leftovers come first (and staged bytes, which `process` drains first).
            let leftover = mem::take(&mut rx.leftover);
            match rx.process(&leftover[rx.leftover_pos..], out, role, config) {
                Ok(n) => rx.leftover_pos += n,
                Err(e) => return Poll::Ready(rx.fail_after(e, out.filled().len() > filled_before)),
            }
            rx.leftover = leftover;
            if rx.leftover_pos == rx.leftover.len() {
                rx.leftover_pos = 0;
                release(&mut rx.leftover);
            }
            if out.filled().len() > filled_before || out.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            // Everything buffered is consumed: `process` only stops early when `out` is full.

            if let InFrame::Pass { remaining } = rx.frame {
                // Pass-through payload: read it straight into tungstenite's buffer.
                let want = min(remaining, out.remaining() as u64) as usize;
                let mut direct = ReadBuf::new(out.initialize_unfilled_to(want));
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut direct))?;
                let got = direct.filled().len();
                out.advance(got);
                if got > 0 {
                    rx.frame = match remaining - got as u64 {
                        0 => InFrame::Header,
                        remaining => InFrame::Pass { remaining },
                    };
                }
                // got == 0 is EOF; tungstenite sees it mid-frame and reports it.
                return Poll::Ready(Ok(()));
            }

            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut chunk = ReadBuf::uninit(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))?;
            let data = chunk.filled();
            if data.is_empty() {
                // EOF. Mid-message or not, tungstenite reports a connection closed without a
                // close handshake.
                return Poll::Ready(Ok(()));
            }
            let n = match rx.process(data, out, role, config) {
                Ok(n) => n,
                Err(e) => return Poll::Ready(rx.fail_after(e, out.filled().len() > filled_before)),
            };
            debug_assert!(rx.leftover.is_empty());
            rx.leftover.extend_from_slice(&data[n..]);
            if out.filled().len() > filled_before {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for DeflateStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Backpressure: accept nothing new while earlier output is still stuck.
        ready!(this.poll_drain(cx))?;
        let mut used = 0;
        while used < buf.len() && this.tx.queued() < WRITE_QUEUE_LIMIT {
            let tx = &mut this.tx;
            match tx.frame {
                OutFrame::Header => {
                    let (n, header) = tx
                        .header
                        .feed(&buf[used..])
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                    used += n;
                    if let Some(header) = header {
                        tx.start_frame(header, &this.config)?;
                        tx.header.clear();
                    }
                }
                OutFrame::Pass { remaining } => {
                    let n = min(remaining, (buf.len() - used) as u64) as usize;
                    let n = if tx.queued() == 0 {
                        // Nothing queued ahead of it: hand the payload straight to the socket.
                        match Pin::new(&mut this.inner).poll_write(cx, &buf[used..used + n]) {
                            Poll::Ready(Ok(0)) => {
                                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                            }
                            Poll::Ready(Ok(n)) => n,
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                            Poll::Pending if used == 0 => return Poll::Pending,
                            Poll::Pending => return Poll::Ready(Ok(used)),
                        }
                    } else {
                        let n = n.min(WRITE_QUEUE_LIMIT - tx.queued());
                        tx.queue.extend_from_slice(&buf[used..used + n]);
                        n
                    };
                    used += n;
                    tx.frame = match remaining - n as u64 {
                        0 => OutFrame::Header,
                        remaining => OutFrame::Pass { remaining },
                    };
                }
                OutFrame::Collect { remaining, opcode, key } => {
                    let n = min(remaining, buf.len() - used);
                    let at = tx.message.len();
                    tx.message.extend_from_slice(&buf[used..used + n]);
                    if let Some(key) = key {
                        apply_mask(&mut tx.message[at..], key, at);
                    }
                    used += n;
                    tx.frame = OutFrame::Collect { remaining: remaining - n, opcode, key };
                    if remaining == n {
                        tx.finish_message(&this.config)?;
                    }
                }
            }
        }
        // Push out what was just queued; the bytes count as accepted whether or not the socket
        // takes them now, and the next write or flush retries.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(used))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Empties `buf`, freeing it if it grew past [`RETAIN_BYTES`].
fn release(buf: &mut Vec<u8>) {
    if buf.capacity() > RETAIN_BYTES {
        *buf = Vec::new();
    } else {
        buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{OP_BINARY, OP_TEXT};
    use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    fn frame(fin: bool, rsv1: bool, opcode: u8, key: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
        let h = Header { fin, rsv1, rsv23: false, opcode, mask: key, len: payload.len() as u64 };
        let mut bytes = [0u8; MAX_HEADER];
        let n = h.encode_right_aligned(&mut bytes);
        let mut out = bytes[MAX_HEADER - n..].to_vec();
        let at = out.len();
        out.extend_from_slice(payload);
        if let Some(key) = key {
            apply_mask(&mut out[at..], key, 0);
        }
        out
    }

    /// Independent of the crate's codec: flate2 directly, as a peer would.
    fn peer_deflate(data: &[u8]) -> Vec<u8> {
        let mut c = Compress::new(Compression::new(6), false);
        let mut out = Vec::with_capacity(data.len() + 64);
        c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
        assert!(out.ends_with(&TRAILER));
        out.truncate(out.len() - 4);
        out
    }

    fn peer_inflate(data: &[u8]) -> Vec<u8> {
        let mut input = data.to_vec();
        input.extend_from_slice(&TRAILER);
        let mut d = Decompress::new(false);
        let mut out = Vec::with_capacity(1 << 20);
        d.decompress_vec(&input, &mut out, FlushDecompress::Sync).unwrap();
        out
    }

    /// Reads one frame from `peer`; returns (first byte, mask, unmasked payload).
    async fn read_frame(peer: &mut DuplexStream) -> (u8, Option<[u8; 4]>, Vec<u8>) {
        let mut hb = HeaderBuf::default();
        let header = loop {
            let b = peer.read_u8().await.unwrap();
            if let (_, Some(h)) = hb.feed(&[b]).unwrap() {
                break h;
            }
        };
        let first = hb.raw()[0];
        let mut payload = vec![0u8; header.len as usize];
        peer.read_exact(&mut payload).await.unwrap();
        if let Some(key) = header.mask {
            apply_mask(&mut payload, key, 0);
        }
        (first, header.mask, payload)
    }

    fn text(len: usize) -> Vec<u8> {
        let pattern = br#"{"type":"message","text":"hi"}"#;
        (0..len).map(|i| pattern[i % pattern.len()]).collect()
    }

    #[test]
    fn stream_struct_is_small() {
        // What an idle connection costs on top of the socket (no heap held when idle).
        let size = size_of::<DeflateStream<tokio::net::TcpStream>>();
        println!("size_of::<DeflateStream<TcpStream>>() = {size}");
        assert!(size <= 328, "{size}");
    }

    #[tokio::test]
    async fn outbound_frame_written_byte_by_byte_is_compressed() {
        let (io, mut peer) = duplex(1 << 20);
        let mut s = DeflateStream::new(io, Role::Server, DeflateConfig::default());
        let data = text(1000);
        for b in frame(true, false, OP_TEXT, None, &data) {
            s.write_all(&[b]).await.unwrap();
        }
        s.flush().await.unwrap();
        let (first, mask, payload) = read_frame(&mut peer).await;
        assert_eq!(first, 0x80 | 0x40 | OP_TEXT, "FIN + RSV1 + text");
        assert_eq!(mask, None, "server frames are unmasked");
        assert!(payload.len() < data.len() / 4);
        assert_eq!(peer_inflate(&payload), data);
    }

    #[tokio::test]
    async fn client_role_remasks_compressed_frames() {
        let (io, mut peer) = duplex(1 << 20);
        let mut s = DeflateStream::new(io, Role::Client, DeflateConfig::default());
        let data = text(5000);
        let key = [9, 8, 7, 6];
        s.write_all(&frame(true, false, OP_BINARY, Some(key), &data)).await.unwrap();
        s.flush().await.unwrap();
        let (first, mask, payload) = read_frame(&mut peer).await;
        assert_eq!(first, 0x80 | 0x40 | OP_BINARY);
        assert_eq!(mask, Some(key));
        assert_eq!(peer_inflate(&payload), data);
    }

    #[tokio::test]
    async fn outbound_order_and_pass_through() {
        let (io, mut peer) = duplex(1 << 20);
        let mut s = DeflateStream::new(io, Role::Server, DeflateConfig::default());
        let ping = frame(true, false, 0x9, None, b"p");
        let small = frame(true, false, OP_TEXT, None, b"short");
        let big = text(3000);
        let fragment = frame(false, false, OP_TEXT, None, &big);
        let last = frame(true, false, OP_CONTINUATION, None, &big);
        let mut all = ping.clone();
        all.extend(frame(true, false, OP_TEXT, None, &big));
        all.extend(&small);
        all.extend(&fragment);
        all.extend(&ping);
        all.extend(&last);
        s.write_all(&all).await.unwrap();
        s.flush().await.unwrap();
        assert_eq!(read_frame(&mut peer).await, (0x89, None, b"p".to_vec()));
        let (first, _, z) = read_frame(&mut peer).await;
        assert_eq!((first, peer_inflate(&z)), (0xc1, big.clone()));
        assert_eq!(read_frame(&mut peer).await, (0x81, None, b"short".to_vec()));
        // Fragmented outbound messages go out as they are.
        assert_eq!(read_frame(&mut peer).await, (0x01, None, big.clone()));
        assert_eq!(read_frame(&mut peer).await, (0x89, None, b"p".to_vec()));
        assert_eq!(read_frame(&mut peer).await, (0x80, None, big));
    }

    #[tokio::test]
    async fn outbound_messages_up_to_their_own_cap_are_compressed() {
        // A server's replies may be larger than what it accepts: 100 KiB goes out compressed
        // under a 256 KiB outbound cap with a 64 KiB inbound one, and as it is over 64 KiB.
        let big = text(100 * 1024);
        for (max_outbound_bytes, compressed) in [(256 * 1024, true), (64 * 1024, false)] {
            let (io, mut peer) = duplex(1 << 20);
            let cfg = DeflateConfig { max_outbound_bytes, ..DeflateConfig::default() };
            let mut s = DeflateStream::new(io, Role::Server, cfg);
            s.write_all(&frame(true, false, OP_TEXT, None, &big)).await.unwrap();
            s.flush().await.unwrap();
            let (first, _, payload) = read_frame(&mut peer).await;
            if compressed {
                assert_eq!((first, peer_inflate(&payload)), (0xc1, big.clone()));
            } else {
                assert_eq!((first, payload), (0x81, big.clone()));
            }
        }
    }

    #[tokio::test]
    async fn inbound_survives_one_byte_reads() {
        let (io, mut peer) = duplex(1 << 20);
        let mut s = DeflateStream::new(io, Role::Server, DeflateConfig::default());
        let data = text(2000);
        let z = peer_deflate(&data);
        let key = [1, 2, 3, 4];
        let mut wire = frame(false, true, OP_TEXT, Some(key), &z[..10]);
        wire.extend(frame(true, false, 0x9, Some([5, 5, 5, 5]), b"ping"));
        wire.extend(frame(true, false, OP_CONTINUATION, Some([7, 7, 7, 7]), &z[10..]));
        wire.extend(frame(true, false, OP_BINARY, Some(key), b"plain"));
        peer.write_all(&wire).await.unwrap();
        drop(peer);

        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while s.read(&mut byte).await.unwrap() == 1 {
            seen.push(byte[0]);
        }
        let mut expected = frame(true, false, 0x9, Some([5, 5, 5, 5]), b"ping");
        expected.extend(frame(true, false, OP_TEXT, Some(key), &data));
        expected.extend(frame(true, false, OP_BINARY, Some(key), b"plain"));
        assert_eq!(seen, expected);
    }

    #[tokio::test]
    async fn client_role_hands_up_unmasked_frames() {
        let (io, mut peer) = duplex(1 << 20);
        let mut s = DeflateStream::new(io, Role::Client, DeflateConfig::default());
        let data = text(700);
        peer.write_all(&frame(true, true, OP_TEXT, None, &peer_deflate(&data))).await.unwrap();
        drop(peer);
        let mut seen = Vec::new();
        s.read_to_end(&mut seen).await.unwrap();
        assert_eq!(seen, frame(true, false, OP_TEXT, None, &data));
    }

    #[tokio::test]
    async fn masking_rules_are_enforced_for_compressed_frames() {
        for (role, key) in [(Role::Server, None), (Role::Client, Some([1, 1, 1, 1]))] {
            let (io, mut peer) = duplex(1 << 20);
            let mut s = DeflateStream::new(io, role, DeflateConfig::default());
            peer.write_all(&frame(true, true, OP_TEXT, key, &peer_deflate(b"x"))).await.unwrap();
            let err = s.read(&mut [0u8; 64]).await.unwrap_err();
            assert!(matches!(DeflateError::from_io(&err), Some(DeflateError::Protocol(_))));
        }
    }

    #[tokio::test]
    async fn frames_before_a_refused_one_are_still_handed_up() {
        // A plain frame and an oversized compressed one arrive together: tungstenite drops the
        // bytes of a read that fails, so the plain frame comes first and the error next.
        let (io, mut peer) = duplex(1 << 20);
        let cfg = DeflateConfig { max_message_bytes: 1000, ..DeflateConfig::default() };
        let mut s = DeflateStream::new(io, Role::Server, cfg);
        let plain = frame(true, false, OP_TEXT, Some([1, 2, 3, 4]), b"a send");
        let mut wire = plain.clone();
        let mut header = frame(true, true, OP_TEXT, Some([0; 4]), &[]);
        header[1] = 0x80 | 127;
        header.splice(2..2, (1u64 << 20).to_be_bytes());
        wire.extend(header);
        peer.write_all(&wire).await.unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], &plain[..]);
        let err = s.read(&mut buf).await.unwrap_err();
        assert_eq!(DeflateError::from_io(&err), Some(&DeflateError::MessageTooBig));
    }

    #[tokio::test]
    async fn declared_length_over_the_limit_is_refused_before_reading_it() {
        let (io, mut peer) = duplex(1 << 20);
        let cfg = DeflateConfig { max_message_bytes: 1000, ..DeflateConfig::default() };
        let mut s = DeflateStream::new(io, Role::Server, cfg);
        // Only the header is sent; the 1 MiB payload never arrives.
        let mut header = frame(true, true, OP_BINARY, Some([0; 4]), &[]);
        header[1] = 0x80 | 127;
        header.splice(2..2, (1u64 << 20).to_be_bytes());
        peer.write_all(&header).await.unwrap();
        let err = s.read(&mut [0u8; 64]).await.unwrap_err();
        assert_eq!(DeflateError::from_io(&err), Some(&DeflateError::MessageTooBig));
        // Reads keep failing; writes still work.
        assert!(s.read(&mut [0u8; 64]).await.is_err());
        s.write_all(&frame(true, false, 0x8, None, &1009u16.to_be_bytes())).await.unwrap();
        s.flush().await.unwrap();
        assert_eq!(read_frame(&mut peer).await, (0x88, None, vec![0x03, 0xf1]));
    }

    #[test]
    fn poll_write_applies_backpressure() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        for min_compress_bytes in [usize::MAX, 0] {
            // The peer never reads, so the pipe fills after 64 bytes.
            let (io, _peer) = duplex(64);
            let cfg = DeflateConfig { min_compress_bytes, ..DeflateConfig::default() };
            let mut s = DeflateStream::new(io, Role::Server, cfg);
            let one = frame(true, false, OP_BINARY, None, &vec![0xab; 1000]);
            let mut accepted = 0;
            let mut at = 0;
            loop {
                match Pin::new(&mut s).poll_write(&mut cx, &one[at..]) {
                    Poll::Ready(Ok(n)) => {
                        accepted += n;
                        at = (at + n) % one.len();
                    }
                    Poll::Ready(Err(e)) => panic!("{e}"),
                    Poll::Pending => break,
                }
                assert!(accepted < 1 << 20, "poll_write never pushed back");
            }
            let bound = 64 + WRITE_QUEUE_LIMIT + one.len();
            assert!(accepted <= bound, "accepted {accepted} > {bound}");
            assert!(s.tx.queued() <= WRITE_QUEUE_LIMIT + one.len());
        }
    }

    /// An in-memory socket that moves bytes in random small pieces and randomly returns
    /// Pending (waking itself at once), to shake out state-machine bugs at every boundary.
    struct Choppy {
        input: Vec<u8>,
        at: usize,
        written: Vec<u8>,
        seed: u64,
    }

    impl Choppy {
        fn new(input: Vec<u8>, seed: u64) -> Self {
            Self { input, at: 0, written: Vec::new(), seed }
        }

        fn next(&mut self) -> usize {
            self.seed ^= self.seed << 13;
            self.seed ^= self.seed >> 7;
            self.seed ^= self.seed << 17;
            self.seed as usize
        }
    }

    impl AsyncRead for Choppy {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if self.next().is_multiple_of(4) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = (1 + self.next() % 40).min(buf.remaining()).min(self.input.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.input[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Choppy {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.next().is_multiple_of(4) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = (1 + self.next() % 40).min(buf.len());
            self.written.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn mixed_client_traffic() -> Vec<u8> {
        let big = text(5000);
        let z = peer_deflate(&big);
        let mut wire = Vec::new();
        for i in 0..20u8 {
            let key = Some([i, 1, 2, 3]);
            wire.extend(frame(true, true, OP_TEXT, key, &peer_deflate(&text(100 + i as usize))));
            wire.extend(frame(true, false, OP_BINARY, key, &text(i as usize * 10)));
            wire.extend(frame(false, true, OP_BINARY, key, &z[..z.len() / 2]));
            wire.extend(frame(true, false, 0x9, key, &[i; 3]));
            wire.extend(frame(false, false, OP_CONTINUATION, key, &[]));
            wire.extend(frame(true, false, OP_CONTINUATION, key, &z[z.len() / 2..]));
            wire.extend(frame(false, false, OP_TEXT, key, b"plain "));
            wire.extend(frame(true, false, 0xa, key, &[]));
            wire.extend(frame(true, false, OP_CONTINUATION, key, b"fragments"));
        }
        wire
    }

    #[tokio::test]
    async fn inbound_is_independent_of_chunking() {
        let wire = mixed_client_traffic();
        let mut expected = Vec::new();
        DeflateStream::new(&wire[..], Role::Server, DeflateConfig::default())
            .read_to_end(&mut expected)
            .await
            .unwrap();
        assert!(expected.len() > wire.len(), "messages were inflated");
        for seed in 1..30u64 {
            let mut s = DeflateStream::new(
                Choppy::new(wire.clone(), seed),
                Role::Server,
                DeflateConfig::default(),
            );
            let mut seen = Vec::new();
            let mut sizes = Choppy::new(Vec::new(), seed * 7919);
            loop {
                let mut buf = vec![0u8; 1 + sizes.next() % 100];
                match s.read(&mut buf).await.unwrap() {
                    0 => break,
                    n => seen.extend_from_slice(&buf[..n]),
                }
            }
            assert!(seen == expected, "seed {seed}");
        }
    }

    #[tokio::test]
    async fn outbound_is_independent_of_chunking() {
        let mut frames = Vec::new();
        for i in 0..20u8 {
            frames.extend(frame(true, false, OP_TEXT, None, &text(100 + i as usize * 300)));
            frames.extend(frame(true, false, 0x9, None, &[i; 5]));
            frames.extend(frame(true, false, OP_BINARY, None, &text(i as usize)));
            frames.extend(frame(false, false, OP_TEXT, None, &text(3000)));
            frames.extend(frame(true, false, OP_CONTINUATION, None, &text(200)));
            frames.extend(frame(true, false, OP_BINARY, None, &text(20_000)));
        }
        let mut expected = DeflateStream::new(Vec::new(), Role::Server, DeflateConfig::default());
        expected.write_all(&frames).await.unwrap();
        expected.flush().await.unwrap();
        let expected = expected.get_ref().clone();
        assert!(expected.len() < frames.len() / 4, "messages were compressed");
        for seed in 1..30u64 {
            let io = Choppy::new(Vec::new(), seed);
            let mut s = DeflateStream::new(io, Role::Server, DeflateConfig::default());
            let mut sizes = Choppy::new(Vec::new(), seed * 104729);
            let mut at = 0;
            while at < frames.len() {
                let n = (1 + sizes.next() % 3000).min(frames.len() - at);
                s.write_all(&frames[at..at + n]).await.unwrap();
                at += n;
                if sizes.next().is_multiple_of(3) {
                    s.flush().await.unwrap();
                }
            }
            s.shutdown().await.unwrap();
            assert!(s.get_ref().written == expected, "seed {seed}");
        }
    }
}
