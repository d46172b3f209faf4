//! Per-message deflate/inflate (RFC 7692 §7.2) on pooled flate2 objects.
//!
//! With no context takeover negotiated in both directions, a compressor or decompressor holds
//! no state worth keeping between messages. Owning one per connection would pin a few hundred
//! KiB (compressor) or ~40 KiB (decompressor) on every idle connection, so instead each message
//! borrows one from a small thread-local pool and returns it reset. Objects are never held
//! across an `.await`, so a task migrating between runtime threads is harmless.

use std::cell::RefCell;
use std::io;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::DeflateError;

/// Each thread keeps at most this many idle objects of each kind; more than the number of
/// messages one thread can be (de)compressing at once would only hold memory.
const POOL_MAX: usize = 4;

/// The empty stored block a sync flush ends with (§7.2.1 removes it, §7.2.2 re-appends it).
pub(crate) const TRAILER: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

thread_local! {
    static COMPRESSORS: RefCell<Vec<(u32, Compress)>> = const { RefCell::new(Vec::new()) };
    static DECOMPRESSORS: RefCell<Vec<Decompress>> = const { RefCell::new(Vec::new()) };
}

fn with_compressor<R>(level: u32, f: impl FnOnce(&mut Compress) -> R) -> R {
    let pooled = COMPRESSORS
        .try_with(|pool| {
            let mut pool = pool.borrow_mut();
            let at = pool.iter().position(|(l, _)| *l == level)?;
            Some(pool.swap_remove(at).1)
        })
        .ok()
        .flatten();
    // `false`: raw DEFLATE, no zlib header (§7.2.1).
    let mut c = pooled.unwrap_or_else(|| Compress::new(Compression::new(level), false));
    let out = f(&mut c);
    c.reset();
    // try_with: during thread teardown the pool may already be gone; then just drop.
    let _ = COMPRESSORS.try_with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < POOL_MAX {
            pool.push((level, c));
        }
    });
    out
}

fn with_decompressor<R>(f: impl FnOnce(&mut Decompress) -> R) -> R {
    let pooled = DECOMPRESSORS.try_with(|pool| pool.borrow_mut().pop()).ok().flatten();
    let mut d = pooled.unwrap_or_else(|| Decompress::new(false));
    let out = f(&mut d);
    d.reset(false);
    let _ = DECOMPRESSORS.try_with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < POOL_MAX {
            pool.push(d);
        }
    });
    out
}

/// Appends the §7.2.1 compressed form of `input` to `out`: raw DEFLATE, sync-flushed, with the
/// trailing `00 00 ff ff` removed.
pub(crate) fn deflate_into(level: u32, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    let start = out.len();
    with_compressor(level, |c| -> io::Result<()> {
        // Incompressible input grows by a few bytes per stored block; this usually suffices
        // for one pass, and the loop below covers the rest.
        out.reserve(input.len() + input.len() / 64 + 16);
        let mut consumed = 0;
        loop {
            let before = c.total_in();
            c.compress_vec(&input[consumed..], out, FlushCompress::Sync)
                .map_err(|e| io::Error::other(format!("deflate failed: {e}")))?;
            consumed += (c.total_in() - before) as usize;
            // Spare room left after a sync flush means the compressor had nothing more to
            // emit; calling again would append a second (harmless, but wasted) empty block.
            if consumed == input.len() && out.len() < out.capacity() {
                return Ok(());
            }
            out.reserve(out.capacity() - start + 64);
        }
    })?;
    if !out[start..].ends_with(&TRAILER) {
        return Err(io::Error::other("deflate sync flush did not end with 00 00 ff ff"));
    }
    out.truncate(out.len() - TRAILER.len());
    if out.len() == start {
        // Unreachable with miniz_oxide (an empty input flushes to `00 00 00 ff ff`), but an
        // empty payload with RSV1 is not valid DEFLATE; §7.2.3.6 uses a single 0x00.
        out.push(0x00);
    }
    Ok(())
}

/// Appends the decompressed form of `input` (a §7.2.2 payload with the trailer already
/// appended) to `out`, failing with [`DeflateError::MessageTooBig`] as soon as more than `max`
/// bytes come out. `out` never grows by more than `max + 1` bytes, whatever the input.
pub(crate) fn inflate_into(
    input: &[u8],
    out: &mut Vec<u8>,
    max: usize,
) -> Result<(), DeflateError> {
    let start = out.len();
    // One byte beyond the limit is enough to tell "exactly max" from "too big".
    let limit = max.saturating_add(1);
    // Chat text inflates to 2–4x; start there and double, so small messages never touch a
    // limit-sized allocation.
    let first = input.len().saturating_mul(4).max(256).min(limit);
    out.reserve_exact(first);
    with_decompressor(|d| {
        let mut consumed = 0;
        loop {
            let (in0, out0) = (d.total_in(), d.total_out());
            let status = d
                .decompress_vec(&input[consumed..], out, FlushDecompress::Sync)
                .map_err(|_| DeflateError::CorruptData)?;
            consumed += (d.total_in() - in0) as usize;
            let produced = out.len() - start;
            if produced > max {
                return Err(DeflateError::MessageTooBig);
            }
            if status == Status::StreamEnd {
                // The peer ended with a BFINAL block; the re-appended trailer is surplus.
                return Ok(());
            }
            let full = out.len() == out.capacity();
            if !full {
                if consumed == input.len() {
                    return Ok(());
                }
                if d.total_in() == in0 && d.total_out() == out0 {
                    return Err(DeflateError::CorruptData);
                }
                continue;
            }
            // Output full: more may be pending. Grow, but never past the limit; `produced`
            // reaching `limit` was already reported above.
            let grow = produced.max(256).min(limit - produced);
            out.reserve_exact(grow);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        deflate_into(1, data, &mut out).unwrap();
        out
    }

    fn inflate(data: &[u8], max: usize) -> Result<Vec<u8>, DeflateError> {
        let mut input = data.to_vec();
        input.extend_from_slice(&TRAILER);
        let mut out = Vec::new();
        inflate_into(&input, &mut out, max).map(|()| out)
    }

    #[test]
    fn round_trip_various_sizes() {
        for len in [0usize, 1, 100, 1000, 64 * 1024] {
            let data: Vec<u8> = (0..len).map(|i| b"natter chat text "[i % 17]).collect();
            let z = deflate(&data);
            assert!(!z.ends_with(&TRAILER));
            assert_eq!(inflate(&z, 64 * 1024).unwrap(), data, "len {len}");
        }
    }

    #[test]
    fn empty_message_compresses_to_single_zero_byte() {
        // RFC 7692 §7.2.3.6.
        assert_eq!(deflate(b""), vec![0x00]);
        assert_eq!(inflate(&[0x00], 10).unwrap(), b"");
    }

    #[test]
    fn rfc_7692_example_hello() {
        // §7.2.3.1: "Hello" compressed with one fixed-Huffman block.
        let z = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inflate(&z, 100).unwrap(), b"Hello");
        // §7.2.3.3: uncompressed (stored) block.
        let stored = [0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00];
        assert_eq!(inflate(&stored, 100).unwrap(), b"Hello");
        // §7.2.3.5: flushed with a BFINAL block instead; the trailing bytes are ignored.
        let fin = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
        assert_eq!(inflate(&fin, 100).unwrap(), b"Hello");
    }

    #[test]
    fn exactly_max_is_allowed_and_one_more_is_not() {
        let data = vec![7u8; 5000];
        let z = deflate(&data);
        assert_eq!(inflate(&z, 5000).unwrap().len(), 5000);
        assert_eq!(inflate(&z, 4999), Err(DeflateError::MessageTooBig));
    }

    #[test]
    fn output_growth_is_bounded_by_the_limit() {
        let z = deflate(&vec![0u8; 4 << 20]);
        let mut input = z.clone();
        input.extend_from_slice(&TRAILER);
        let mut out = Vec::new();
        assert_eq!(inflate_into(&input, &mut out, 10_000), Err(DeflateError::MessageTooBig));
        assert!(out.capacity() <= 10_001, "capacity {}", out.capacity());
    }

    #[test]
    fn garbage_is_corrupt() {
        assert_eq!(inflate(&[0xff, 0xff, 0xff, 0xff], 100), Err(DeflateError::CorruptData));
    }
}
