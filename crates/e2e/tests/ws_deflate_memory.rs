//! G7 (bounded) for permessage-deflate: a hundred sessions each send a compression bomb —
//! 16 MiB of zeros deflated to ~16 KiB, one frame — and each is closed with 1009 while the
//! process's peak resident memory grows by less than [`GROWTH_BOUND_MIB`]: a message is
//! inflated only up to `max_frame_bytes` (64 KiB), never whole. Inflated, the bombs would
//! take 1.6 GiB. Meanwhile a compressed session that behaves keeps working. A process of its
//! own (the peak is the process's), with the `natter` binary's allocator.

use std::io::Write;
use std::sync::Arc;

use futures_util::future::join_all;
use natter_testkit::memory::{peak_kib, reset_peak};
use natter_testkit::{TestServer, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BOMBS: usize = 100;
const BOMB_BYTES: usize = 16 * 1024 * 1024;
/// Each bomb's session holds its socket buffers, the compressed frame (≤ the cap and an
/// eighth) and a 64 KiB inflate buffer while it is refused; the decompressors come from a
/// pool per thread. Measured: see the assertion's message.
const GROWTH_BOUND_MIB: u64 = 64;

/// 16 MiB of zeros as one permessage-deflate payload: raw deflate, sync-flushed, without the
/// trailing `00 00 ff ff` (RFC 7692 §7.2.1).
fn bomb() -> Vec<u8> {
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1024 * 1024];
    for _ in 0..BOMB_BYTES / zeros.len() {
        enc.write_all(&zeros).expect("deflate");
    }
    enc.flush().expect("sync flush");
    let mut out = enc.finish().expect("deflate");
    // `finish` added a final empty block after the sync flush's marker; cut back to it.
    let marker = out.windows(4).rposition(|w| w == [0, 0, 0xff, 0xff]).expect("marker");
    out.truncate(marker);
    out
}

/// One masked client frame: FIN, RSV1 (compressed), text.
fn compressed_text_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0xC1, 0x80 | 127];
    frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    let key = [0x12, 0x34, 0x56, 0x78];
    frame.extend_from_slice(&key);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    frame
}

/// Upgrades with permessage-deflate and the token, sends `frame`, and returns the code of the
/// close frame the server answers with (0: the connection ended without one).
async fn send_bomb(addr: std::net::SocketAddr, token: String, frame: Arc<Vec<u8>>) -> u16 {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET /v1/ws?compress=deflate HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Extensions: permessage-deflate\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.expect("request");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.expect("the answer"));
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_ascii_lowercase().contains("sec-websocket-extensions: permessage-deflate"));
    tcp.write_all(&frame).await.expect("the bomb");
    // Frames until the close: `ready` first (perhaps compressed), then the close.
    loop {
        let mut header = [0u8; 2];
        if tcp.read_exact(&mut header).await.is_err() {
            return 0;
        }
        let len = match header[1] & 0x7f {
            126 => u64::from(tcp.read_u16().await.expect("length")),
            127 => tcp.read_u64().await.expect("length"),
            n => u64::from(n),
        };
        let mut payload = vec![0u8; usize::try_from(len).expect("a length")];
        tcp.read_exact(&mut payload).await.expect("payload");
        if header[0] & 0x0f == 0x8 {
            return payload.get(..2).map_or(0, |c| u16::from_be_bytes([c[0], c[1]]));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_bombs_are_refused_with_1009_in_bounded_memory() {
    let server = TestServer::start().await;
    let names: Vec<String> = (0..4).map(|i| format!("bomber{i}")).collect();
    let users = join_all(names.iter().map(|n| server.user(n))).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let conv = server.contacts(&alice, &[&bob]).await[0];
    let frame = Arc::new(compressed_text_frame(&bomb()));
    assert!(frame.len() < 64 * 1024, "the bomb is small on the wire: {}", frame.len());

    reset_peak();
    let before = peak_kib();
    let codes = within(
        "the bombs' closes",
        join_all((0..BOMBS).map(|i| {
            let token = users[i % users.len()].token.clone();
            send_bomb(server.addr, token, frame.clone())
        })),
    )
    .await;
    let growth_mib = (peak_kib() - before) / 1024;
    assert!(codes.iter().all(|&c| c == 1009), "every bomb is refused with 1009: {codes:?}");
    assert!(
        growth_mib < GROWTH_BOUND_MIB,
        "{BOMBS} bombs of {} MiB grew the peak by {growth_mib} MiB",
        BOMB_BYTES >> 20
    );
    eprintln!("{BOMBS} compression bombs: peak resident memory grew by {growth_mib} MiB");

    // The server is fine: a message still goes through.
    let mut ws = server.ws(&bob).await;
    let ack = ws.send_msg(conv, "after", "still here").await;
    assert_eq!(ack.seq, 2);
}
