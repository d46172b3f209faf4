//! What permessage-deflate costs the server per message, measured through the real
//! [`DeflateStream`] (without tungstenite, whose own cost is the same either way).
//!
//! `cargo run --release --example cost`
//!
//! For each payload it times the server's two directions, each compressed and as plain
//! pass-through, so the price of compression is the difference:
//! * outbound: tungstenite-style unmasked frames written into a server-role stream (deflate);
//! * inbound: masked, compressed client frames read from a server-role stream (inflate and
//!   re-mask for tungstenite).
//!
//! Everything runs on one thread that never waits, so wall time is CPU time.

use std::hint::black_box;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use natter_wsdeflate::{DeflateConfig, DeflateStream, Role};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

const MESSAGE: &str = r#"{"type":"message","conversation":"0190a3b4-5c6d-7e8f-9012-3456789abcde","seq":123456,"id":"0190a3b4-5c6d-7e8f-9012-3456789abcdf","sender":"0190a3b4-5c6d-7e8f-9012-345678900001","client_msg_id":"c-000123","text":"hello there, this is a fairly ordinary chat message of a typical length","sent_at":"2026-12-04T21:30:59.123Z","attachments":[]}"#;

fn history_page() -> String {
    let items: Vec<String> = (0..12)
        .map(|i| {
            MESSAGE
                .replace("123456", &format!("{}", 123456 + i))
                .replace("abcdf", &format!("abd{i:02x}"))
                .replace("c-000123", &format!("c-{:06}", 123 + i))
        })
        .collect();
    format!("[{}]", items.join(","))
}

/// Wall time; everything runs on one thread that never blocks, so it is also CPU time.
/// (Per-thread CPU counters in /proc tick too coarsely for the pass-through loops.)
struct Clock(Instant);

impl Clock {
    fn start() -> Self {
        Clock(Instant::now())
    }

    fn ns(&self) -> f64 {
        self.0.elapsed().as_nanos() as f64
    }
}

/// A socket that swallows everything.
struct Sink(u64);

impl AsyncWrite for Sink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0 += b.len() as u64;
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A socket that delivers the same bytes `rounds` times, then EOF.
struct Replay<'a> {
    data: &'a [u8],
    at: usize,
    rounds: usize,
}

impl AsyncRead for Replay<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at == self.data.len() && self.rounds > 1 {
            self.at = 0;
            self.rounds -= 1;
        }
        let n = buf.remaining().min(self.data.len() - self.at);
        buf.put_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

/// Encodes one frame the way tungstenite would write it.
fn frame(payload: &[u8], key: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![0x81];
    let m = if key.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    match key {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

fn config(compress: bool) -> DeflateConfig {
    DeflateConfig {
        min_compress_bytes: if compress { 0 } else { usize::MAX },
        ..DeflateConfig::default()
    }
}

/// Server outbound: ns per message and wire bytes per message.
async fn outbound(payload: &[u8], n: usize, compress: bool) -> (f64, f64) {
    let frame = frame(payload, None);
    let mut s = DeflateStream::new(Sink(0), Role::Server, config(compress));
    let clock = Clock::start();
    for _ in 0..n {
        s.write_all(black_box(&frame)).await.unwrap();
        s.flush().await.unwrap();
    }
    let ns = clock.ns();
    (ns / n as f64, s.get_ref().0 as f64 / n as f64)
}

/// What a client-role stream puts on the wire for one message (masked, maybe compressed).
async fn client_wire(payload: &[u8], compress: bool) -> Vec<u8> {
    let mut s = DeflateStream::new(Vec::new(), Role::Client, config(compress));
    s.write_all(&frame(payload, Some([0x12, 0x34, 0x56, 0x78]))).await.unwrap();
    s.flush().await.unwrap();
    s.get_ref().clone()
}

/// Server inbound: ns per message.
async fn inbound(payload: &[u8], n: usize, compress: bool) -> f64 {
    let wire = client_wire(payload, compress).await;
    let expect = (frame(payload, Some([0; 4])).len() * n) as u64;
    let src = Replay { data: &wire, at: 0, rounds: n };
    let mut s = DeflateStream::new(src, Role::Server, config(compress));
    // tungstenite reads with a large buffer.
    let mut buf = vec![0u8; 128 * 1024];
    let mut got = 0u64;
    let clock = Clock::start();
    loop {
        let k = s.read(&mut buf).await.unwrap();
        if k == 0 {
            break;
        }
        got += k as u64;
        black_box(&buf[..k]);
    }
    let ns = clock.ns();
    assert_eq!(got, expect);
    ns / n as f64
}

async fn report(name: &str, payload: &[u8], n: usize) {
    // Warm up the pools, allocator and caches.
    outbound(payload, n / 10, true).await;
    inbound(payload, n / 10, true).await;

    let (out_z, wire_z) = outbound(payload, n, true).await;
    let (out_p, wire_p) = outbound(payload, n, false).await;
    let in_z = inbound(payload, n, true).await;
    let in_p = inbound(payload, n, false).await;
    println!("{name}: {} bytes, {n} messages", payload.len());
    println!(
        "  wire per message: {wire_p:.0} B plain, {wire_z:.0} B compressed (ratio {:.2})",
        wire_z / wire_p
    );
    println!(
        "  outbound (deflate): {out_z:6.0} ns/msg   pass-through {out_p:4.0} ns/msg   \
         cost +{:.0} ns",
        out_z - out_p
    );
    println!(
        "  inbound  (inflate): {in_z:6.0} ns/msg   pass-through {in_p:4.0} ns/msg   \
         cost +{:.0} ns",
        in_z - in_p
    );
    println!("  both directions: +{:.0} ns/msg", (out_z - out_p) + (in_z - in_p));
}

/// The fixed per-message price of no context takeover with flate2's miniz_oxide backend, and
/// what the crate's compressor pool avoids.
fn flate2_fixed_costs() {
    use flate2::{Compress, Compression};
    let n = 20_000;
    let mut c = Compress::new(Compression::new(1), false);
    let clock = Clock::start();
    for _ in 0..n {
        black_box(&mut c).reset();
    }
    let reset = clock.ns() / n as f64;
    let clock = Clock::start();
    for _ in 0..n / 20 {
        black_box(Compress::new(Compression::new(1), false));
    }
    let new = clock.ns() / (n / 20) as f64;
    println!(
        "flate2 fixed costs: Compress::reset {reset:.0} ns (paid per message), Compress::new {new:.0} ns (avoided by the pool)"
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    println!(
        "DeflateStream cost per message (level {}, one thread)",
        DeflateConfig::default().level
    );
    rt.block_on(async {
        report("chat message", MESSAGE.as_bytes(), 50_000).await;
        report("history page (12 messages)", history_page().as_bytes(), 10_000).await;
    });
    flate2_fixed_costs();
}
