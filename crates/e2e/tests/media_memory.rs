//! G7 (bounded) for uploads: while a hundred 8 MiB uploads stream at once (800 MiB in all),
//! the process's peak resident memory grows by less than [`GROWTH_BOUND_MIB`]: uploads go
//! to staging files chunk by chunk, never whole into memory. A process of its own (the
//! peak is the process's), with the `natter` binary's allocator; the clients are raw TCP
//! writers sharing one 64 KiB buffer, so the growth is the server's.

use std::sync::Arc;

use natter_testkit::memory::{peak_kib, reset_peak};
use natter_testkit::{TestServer, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const UPLOADS: usize = 100;
const UPLOAD_BYTES: usize = 8 * 1024 * 1024;
const WRITE: usize = 64 * 1024;
/// An upload in flight holds its connection's read buffer, a body chunk or two, and the
/// staging file's write buffer (tokio's `File` copies each write into a buffer of its own
/// for the blocking pool): well under 1 MiB each. Measured: 24–26 MiB of growth for the
/// hundred. Held in memory, the uploads would take 800 MiB.
const GROWTH_BOUND_MIB: u64 = 128;

/// One upload over a raw connection: headers, then the body in `WRITE`-byte writes; the
/// response's status code.
async fn upload(addr: std::net::SocketAddr, token: String, block: Arc<Vec<u8>>) -> u16 {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /v1/media HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/pdf\r\nContent-Length: {UPLOAD_BYTES}\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.expect("head");
    let mut sent = 0;
    while sent < UPLOAD_BYTES {
        let n = WRITE.min(UPLOAD_BYTES - sent);
        tcp.write_all(&block[..n]).await.expect("body");
        sent += n;
    }
    let mut answer = vec![0u8; 1024];
    let n = tcp.read(&mut answer).await.expect("answer");
    let text = String::from_utf8_lossy(&answer[..n]);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_streaming_uploads_stay_in_bounded_memory() {
    let server = TestServer::start_with(|cfg| {
        cfg.limits.media_uploads_per_min = 0;
        cfg.limits.media_ingest_bytes_per_sec = 0;
        cfg.limits.media_quota_bytes = u64::MAX / 2;
    })
    .await;
    let users: Vec<_> = {
        let mut users = Vec::new();
        for i in 0..4 {
            users.push(server.user(&format!("uploader{i}")).await);
        }
        users
    };
    let mut block = b"%PDF-1.7\n".to_vec();
    block.resize(WRITE, 0x5a);
    let block = Arc::new(block);
    // Warm up: one upload, so that lazily made buffers and threads are in the baseline.
    assert_eq!(upload(server.addr, users[0].token.clone(), block.clone()).await, 201);

    reset_peak();
    let before = peak_kib();
    let tasks: Vec<_> = (0..UPLOADS)
        .map(|i| {
            tokio::spawn(upload(server.addr, users[i % users.len()].token.clone(), block.clone()))
        })
        .collect();
    for task in tasks {
        assert_eq!(within("an upload", task).await.expect("upload task"), 201);
    }
    let growth_mib = peak_kib().saturating_sub(before) / 1024;
    println!(
        "peak growth during {UPLOADS} uploads of {} MiB: {growth_mib} MiB",
        UPLOAD_BYTES >> 20
    );
    assert!(growth_mib < GROWTH_BOUND_MIB, "grew by {growth_mib} MiB (bound {GROWTH_BOUND_MIB})");
}
