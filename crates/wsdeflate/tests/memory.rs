//! Heap use, measured with a counting global allocator (hence a test binary of its own):
//! a decompression bomb is refused without allocating more than about the cap, and a
//! connection keeps next to nothing between messages.
//!
//! Counts are kept per thread and each test runs on a single-threaded runtime, so other tests
//! (or threads exiting and freeing their pools) cannot disturb a measurement.

// The counting allocator: a `GlobalAlloc` cannot be written without `unsafe`.
#![allow(unsafe_code)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::*;
use futures_util::StreamExt;
use natter_wsdeflate::{DeflateConfig, DeflateError, DeflateStream, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

thread_local! {
    // Signed: a thread may free what another allocated. `const` and Drop-free, so touching
    // them from the allocator never allocates and works during thread teardown.
    static CURRENT: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn current() -> isize {
    CURRENT.with(Cell::get)
}

/// Starts a peak measurement; returns the baseline.
fn reset_peak() -> isize {
    let now = current();
    PEAK.with(|p| p.set(now));
    now
}

fn peak() -> isize {
    PEAK.with(Cell::get)
}

fn count(delta: isize) {
    let _ = CURRENT.try_with(|c| {
        let now = c.get() + delta;
        c.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

struct Counting;

impl Counting {
    fn grew(by: usize) {
        count(by as isize);
    }

    fn shrank(by: usize) {
        count(-(by as isize));
    }
}

// SAFETY: every call is forwarded unchanged to `System`; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        Self::shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                Self::grew(new_size - layout.size());
            } else {
                Self::shrank(layout.size() - new_size);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[tokio::test]
async fn decompression_bomb_is_refused_within_bounded_memory() {
    let cap = 64 * 1024;
    let bomb = {
        let zeros = vec![0u8; 16 << 20];
        peer_deflate(&zeros, 9)
    };
    println!("16 MiB of zeros deflates to {} bytes", bomb.len());
    assert!(bomb.len() < 32 * 1024);

    let config = DeflateConfig { max_message_bytes: cap, ..DeflateConfig::default() };
    let (mut client, mut ws) = raw_client_session(config).await;
    client.write_all(&frame(true, true, TEXT, Some([1, 2, 3, 4]), &bomb)).await.unwrap();
    drop(bomb);

    let baseline = reset_peak();
    let result = ws.next().await;
    let growth = peak() - baseline;
    println!("peak heap growth while reading the bomb: {growth} bytes");

    let err = match result {
        Some(Err(WsError::Io(e))) => e,
        other => panic!("expected an I/O error, got {other:?}"),
    };
    assert_eq!(DeflateError::from_io(&err), Some(&DeflateError::MessageTooBig));
    assert!(growth < 1 << 20, "peak growth {growth} bytes");

    // The write half still works: close with 1009 through tungstenite's normal path.
    let close = CloseFrame { code: CloseCode::Size, reason: "message too big".into() };
    ws.close(Some(close)).await.unwrap();
    let f = read_frame(&mut client).await;
    assert_eq!(f.opcode, CLOSE);
    assert!(!f.masked && !f.rsv1);
    assert_eq!(u16::from_be_bytes([f.payload[0], f.payload[1]]), 1009);
    assert_eq!(&f.payload[2..], b"message too big");
}

/// Sends one message each way through a server-role stream over in-memory I/O that does not
/// allocate, and returns the heap the stream still holds afterwards.
async fn retained_after(payload: &[u8]) -> isize {
    let inbound = frame(true, true, TEXT, Some([9, 8, 7, 6]), &peer_deflate(payload, 6));
    let outbound = frame(true, false, TEXT, None, payload);
    // Read 2 KiB at a time, as the server's tungstenite does: what does not fit goes to the
    // stream's own buffers.
    let mut buf = vec![0u8; 128 * 1024];
    const READ: usize = 2 * 1024;

    let before = current();
    let mut rx = DeflateStream::new(&inbound[..], Role::Server, DeflateConfig::default());
    let mut tx = DeflateStream::new(tokio::io::sink(), Role::Server, DeflateConfig::default());
    let mut got = 0;
    loop {
        let end = (got + READ).min(buf.len());
        match rx.read(&mut buf[got..end]).await.unwrap() {
            0 => break,
            n => got += n,
        }
    }
    // Inflated, re-masked with the client's key: the frame an uncompressed client would send.
    assert_eq!(&buf[..got], &frame(true, false, TEXT, Some([9, 8, 7, 6]), payload)[..]);
    tx.write_all(&outbound).await.unwrap();
    tx.flush().await.unwrap();
    let retained = current() - before;
    drop((rx, tx));
    retained
}

#[tokio::test]
async fn little_memory_is_kept_between_messages() {
    let chat = chat_json(1);
    let page = format!("[{}]", (0..12).map(chat_json).collect::<Vec<_>>().join(","));
    let big = page.repeat(15);

    // The first use on a thread fills that thread's (de)compressor pool.
    let before = current();
    retained_after(chat.as_bytes()).await;
    println!("per-thread pool after first use: {} KiB", (current() - before) / 1024);

    // Nothing: a quiet connection holds no buffer.
    for (name, payload) in
        [("chat", chat.as_bytes()), ("page", page.as_bytes()), ("60K", big.as_bytes())]
    {
        let retained = retained_after(payload).await;
        println!("{name} message ({} B) each way: {retained} B retained", payload.len());
        assert!(retained <= 0, "{name}: {retained} bytes kept");
    }
}
