//! Shared test plumbing: a minimal HTTP upgrade (what the Natter server does itself),
//! hand-made frames, and an independent flate2 peer.

// Each test binary uses a different subset.
#![allow(dead_code)]

use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use natter_wsdeflate::{Agreement, DeflateConfig, DeflateStream, Role, negotiate};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role as WsRole, WebSocketConfig};

pub(crate) const MAX: usize = 64 * 1024;

pub(crate) fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default().max_frame_size(Some(MAX)).max_message_size(Some(MAX))
}

pub(crate) fn deflate_config() -> DeflateConfig {
    DeflateConfig { max_message_bytes: MAX, ..DeflateConfig::default() }
}

/// Reads an HTTP head one byte at a time, so no WebSocket byte after it is consumed.
async fn read_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.expect("HTTP head"));
    }
    String::from_utf8(head).unwrap()
}

fn header_values<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

/// Server half of the upgrade, negotiating with the crate's helper.
pub(crate) async fn server_upgrade(tcp: &mut TcpStream) -> Option<Agreement> {
    let head = read_head(tcp).await;
    let key = header_values(&head, "Sec-WebSocket-Key")[0];
    let agreement = negotiate(header_values(&head, "Sec-WebSocket-Extensions"));
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n",
        derive_accept_key(key.as_bytes())
    );
    if let Some(a) = &agreement {
        response.push_str(&format!("Sec-WebSocket-Extensions: {}\r\n", a.response_header()));
    }
    response.push_str("\r\n");
    tcp.write_all(response.as_bytes()).await.unwrap();
    agreement
}

/// Client half of the upgrade; returns the server's extension header, if any.
pub(crate) async fn client_upgrade(tcp: &mut TcpStream, offer: &str) -> Option<String> {
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Extensions: {offer}\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(tcp).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    header_values(&head, "Sec-WebSocket-Extensions").first().map(|s| s.to_string())
}

pub(crate) async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (client, server)
}

pub(crate) type ServerWs = WebSocketStream<DeflateStream<TcpStream>>;

/// A raw client socket already upgraded (with deflate agreed) against a server-side
/// tungstenite stream over [`DeflateStream`].
pub(crate) async fn raw_client_session(config: DeflateConfig) -> (TcpStream, ServerWs) {
    let (mut client, mut server) = tcp_pair().await;
    // The request fits in the socket buffer, so both halves can run in this one task.
    let request = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                   Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";
    client.write_all(request.as_bytes()).await.unwrap();
    server_upgrade(&mut server).await.expect("deflate agreed");
    let head = read_head(&mut client).await;
    assert!(head.contains("permessage-deflate"), "{head}");
    let io = DeflateStream::new(server, Role::Server, config);
    let ws = WebSocketStream::from_raw_socket(io, WsRole::Server, Some(ws_config())).await;
    (client, ws)
}

pub(crate) const TEXT: u8 = 0x1;
pub(crate) const BINARY: u8 = 0x2;
pub(crate) const CONTINUATION: u8 = 0x0;
pub(crate) const CLOSE: u8 = 0x8;
pub(crate) const PING: u8 = 0x9;
pub(crate) const PONG: u8 = 0xa;

/// One hand-made frame; masked when `key` is given, as a client must.
pub(crate) fn frame(
    fin: bool,
    rsv1: bool,
    opcode: u8,
    key: Option<[u8; 4]>,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = vec![opcode | if fin { 0x80 } else { 0 } | if rsv1 { 0x40 } else { 0 }];
    let mask_bit = if key.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match key {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawFrame {
    pub fin: bool,
    pub rsv1: bool,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

pub(crate) async fn read_frame(tcp: &mut TcpStream) -> RawFrame {
    let b0 = tcp.read_u8().await.unwrap();
    let b1 = tcp.read_u8().await.unwrap();
    let len = match b1 & 0x7f {
        126 => u64::from(tcp.read_u16().await.unwrap()),
        127 => tcp.read_u64().await.unwrap(),
        n => u64::from(n),
    };
    let mut key = [0u8; 4];
    if b1 & 0x80 != 0 {
        tcp.read_exact(&mut key).await.unwrap();
    }
    let mut payload = vec![0u8; len as usize];
    tcp.read_exact(&mut payload).await.unwrap();
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
    RawFrame {
        fin: b0 & 0x80 != 0,
        rsv1: b0 & 0x40 != 0,
        opcode: b0 & 0x0f,
        masked: b1 & 0x80 != 0,
        payload,
    }
}

/// Splits a captured byte stream into frames (header fields and payload length only).
pub(crate) fn parse_frames(mut bytes: &[u8]) -> Vec<(u8, bool, usize)> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let (b0, b1) = (bytes[0], bytes[1]);
        let (len, mut at) = match b1 & 0x7f {
            126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => (u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize, 10),
            n => (n as usize, 2),
        };
        if b1 & 0x80 != 0 {
            at += 4;
        }
        frames.push((b0 & 0x0f, b0 & 0x40 != 0, len));
        bytes = &bytes[at + len..];
    }
    frames
}

/// A peer's compressor, independent of the crate: flate2 with a sync flush, trailer removed
/// (RFC 7692 §7.2.1).
pub(crate) fn peer_deflate(data: &[u8], level: u32) -> Vec<u8> {
    let mut c = Compress::new(Compression::new(level), false);
    let mut out = Vec::with_capacity(data.len() + 1024);
    loop {
        c.compress_vec(&data[c.total_in() as usize..], &mut out, FlushCompress::Sync).unwrap();
        if c.total_in() as usize == data.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity());
    }
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// A complete DEFLATE stream ending in a BFINAL block, via a different flate2 API.
pub(crate) fn peer_deflate_final(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub(crate) fn peer_inflate(data: &[u8]) -> Vec<u8> {
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut d = Decompress::new(false);
    let mut out = Vec::with_capacity(4 << 20);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync).unwrap();
    assert_eq!(d.total_in() as usize, input.len());
    out
}

/// A typical Natter server frame.
pub(crate) fn chat_json(seq: u64) -> String {
    format!(
        r#"{{"type":"message","conversation":"0190a3b4-5c6d-7e8f-9012-3456789abcde","seq":{seq},"id":"0190a3b4-5c6d-7e8f-9012-3456789abcdf","sender":"0190a3b4-5c6d-7e8f-9012-345678900001","client_msg_id":"c-{seq:06}","text":"hello there, this is a fairly ordinary chat message of a typical length","sent_at":"2026-12-04T21:30:59.123Z","attachments":[]}}"#
    )
}

/// Records every byte that crosses it, to inspect what was really on the wire.
pub(crate) struct Tap<S> {
    inner: S,
    pub read: Arc<Mutex<Vec<u8>>>,
    pub written: Arc<Mutex<Vec<u8>>>,
}

impl<S> Tap<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self { inner, read: Default::default(), written: Default::default() }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tap<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read.lock().unwrap().extend_from_slice(&buf.filled()[before..]);
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            self.written.lock().unwrap().extend_from_slice(&buf[..n]);
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
