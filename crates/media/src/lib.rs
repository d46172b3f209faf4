//! Pure processing of uploaded bytes, between the HTTP upload handler and the blob store.
//!
//! Nothing here does I/O or awaits: bytes in, verdicts and new bytes out, so every rule is
//! unit-tested on bytes the tests make themselves.
//!
//! # Layout
//! - [`sniff`](sniff()) says what an upload is from its first bytes; [`contradicts`] says whether
//!   the declared `Content-Type` lies about it, and [`inline_safe`] whether it may be served
//!   inline rather than as an attachment.
//! - [`process`] turns an uploaded raster image into the bytes to store (privacy-sensitive
//!   metadata removed, upright without EXIF), its displayed size, a thumbnail and a blurhash
//!   placeholder, refusing decompression bombs before decoding.

mod image;
mod sniff;

pub use crate::image::{ImageError, ImageLimits, Processed, Thumbnail, process};
pub use crate::sniff::{Kind, Sniffed, contradicts, inline_safe, sniff};
