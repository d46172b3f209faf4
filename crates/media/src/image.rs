//! Uploaded raster images: refuse bombs from the header, strip privacy-sensitive metadata,
//! keep the picture upright, and derive a thumbnail and a blurhash placeholder.

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageEncoder, ImageFormat, ImageReader};
use img_parts::{Bytes, ImageEXIF};

/// Caps checked against the header before any pixel is decoded.
#[derive(Debug, Clone)]
pub struct ImageLimits {
    pub max_width: u32,
    pub max_height: u32,
    pub max_pixels: u64,
    /// Bytes the decoder may allocate.
    pub max_alloc: u64,
    /// Longest side of the thumbnail.
    pub thumb_max: u32,
}

impl Default for ImageLimits {
    fn default() -> Self {
        Self {
            max_width: 12_000,
            max_height: 12_000,
            max_pixels: 50_000_000,
            max_alloc: 512 * 1024 * 1024,
            thumb_max: 320,
        }
    }
}

/// What to store for an uploaded image.
#[derive(Debug, Clone)]
pub struct Processed {
    /// The original with EXIF (which holds GPS), XMP, IPTC, comments and PNG text chunks
    /// removed, losslessly; re-encoded in the same format (JPEG at quality 90) only when the
    /// EXIF orientation had to be applied to the pixels.
    pub bytes: Vec<u8>,
    /// As displayed, after orientation.
    pub width: u32,
    pub height: u32,
    /// Only for images larger than `thumb_max`.
    pub thumbnail: Option<Thumbnail>,
    /// Blurhash, 4x3 components, of a 32-pixel downscale.
    pub placeholder: String,
}

/// A JPEG, or a PNG when the image has alpha.
#[derive(Debug, Clone)]
pub struct Thumbnail {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{}", too_many_pixels(*.width, *.height, *.max_pixels))]
    TooManyPixels { width: u32, height: u32, max_pixels: u64 },
    #[error("image data is truncated or corrupt: {0}")]
    Undecodable(String),
    #[error("unsupported image type")]
    Unsupported,
}

fn too_many_pixels(width: u32, height: u32, max_pixels: u64) -> String {
    if u64::from(width) * u64::from(height) > max_pixels {
        format!("image is {width}x{height}, over the {max_pixels}-pixel cap")
    } else {
        format!("image is {width}x{height}, wider or taller than allowed")
    }
}

const THUMB_JPEG_QUALITY: u8 = 80;
const REENCODE_JPEG_QUALITY: u8 = 90;
const PLACEHOLDER_SIDE: u32 = 32;

/// Processes an uploaded image whose sniffed type is `content_type` (jpeg, png, gif or webp).
pub fn process(
    bytes: &[u8],
    content_type: &str,
    limits: &ImageLimits,
) -> Result<Processed, ImageError> {
    let format = match content_type {
        "image/jpeg" => ImageFormat::Jpeg,
        "image/png" => ImageFormat::Png,
        "image/gif" => ImageFormat::Gif,
        "image/webp" => ImageFormat::WebP,
        _ => return Err(ImageError::Unsupported),
    };
    // The decoders are meant not to panic on hostile input; an upload must not take the
    // handler down if one does anyway.
    match catch_unwind(AssertUnwindSafe(|| process_format(bytes, format, limits))) {
        Ok(res) => res,
        Err(_) => Err(ImageError::Undecodable("the decoder gave up".to_owned())),
    }
}

fn process_format(
    bytes: &[u8],
    format: ImageFormat,
    limits: &ImageLimits,
) -> Result<Processed, ImageError> {
    // Header only: the size is checked before a pixel buffer exists (decompression bombs).
    let mut decoder =
        ImageReader::with_format(Cursor::new(bytes), format).into_decoder().map_err(undecodable)?;
    let (width, height) = decoder.dimensions();
    let too_large = || ImageError::TooManyPixels { width, height, max_pixels: limits.max_pixels };
    if width > limits.max_width
        || height > limits.max_height
        || u64::from(width) * u64::from(height) > limits.max_pixels
    {
        return Err(too_large());
    }
    let mut decode_limits = image::Limits::default();
    decode_limits.max_image_width = Some(limits.max_width);
    decode_limits.max_image_height = Some(limits.max_height);
    decode_limits.max_alloc = Some(limits.max_alloc);
    decoder.set_limits(decode_limits).map_err(|e| match e {
        image::ImageError::Limits(_) => too_large(),
        e => undecodable(e),
    })?;
    // A corrupt EXIF block only loses its rotation; the block itself is stripped below.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let icc = decoder.icc_profile().ok().flatten();
    // GIF: the first frame.
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| match e {
        image::ImageError::Limits(_) => too_large(),
        e => undecodable(e),
    })?;

    let stored = if orientation == Orientation::NoTransforms || format == ImageFormat::Gif {
        let stripped = strip_metadata(bytes, format)?;
        // The surgery must leave an image of the same size behind.
        let check = ImageReader::with_format(Cursor::new(&stripped), format).into_dimensions();
        if check.ok() != Some((width, height)) {
            return Err(ImageError::Undecodable(
                "metadata could not be removed cleanly".to_owned(),
            ));
        }
        stripped
    } else {
        img.apply_orientation(orientation);
        encode_same_format(&img, format, icc)?
    };

    let (width, height) = (img.width(), img.height());
    let thumbnail = if width.max(height) > limits.thumb_max {
        Some(thumbnail(&img, limits.thumb_max)?)
    } else {
        None
    };
    let small = img.thumbnail(PLACEHOLDER_SIDE, PLACEHOLDER_SIDE).to_rgba8();
    // 4x3 components are within blurhash's 1..=9 range, so this cannot fail; an empty
    // placeholder only means clients show a blank box.
    let placeholder =
        blurhash::encode(4, 3, small.width(), small.height(), small.as_raw()).unwrap_or_default();
    Ok(Processed { bytes: stored, width, height, thumbnail, placeholder })
}

fn undecodable(e: image::ImageError) -> ImageError {
    match e {
        image::ImageError::Unsupported(_) => ImageError::Unsupported,
        e => ImageError::Undecodable(e.to_string()),
    }
}

/// Container surgery: drops the metadata segments and chunks, keeps the coded image bytes.
fn strip_metadata(bytes: &[u8], format: ImageFormat) -> Result<Vec<u8>, ImageError> {
    use img_parts::jpeg::{Jpeg, markers};
    use img_parts::png::Png;
    use img_parts::webp::{CHUNK_XMP, WebP};

    let parse_err = |e: img_parts::Error| ImageError::Undecodable(e.to_string());
    let input = Bytes::copy_from_slice(bytes);
    let out = match format {
        ImageFormat::Jpeg => {
            let mut jpeg = Jpeg::from_bytes(input).map_err(parse_err)?;
            // APP1 is EXIF and XMP, APP13 IPTC; APP0 (JFIF), APP2 (ICC) and APP14 (Adobe
            // colour transform) are needed to show the colours right.
            jpeg.segments_mut()
                .retain(|s| !matches!(s.marker(), markers::APP1 | markers::APP13 | markers::COM));
            jpeg.encoder().bytes()
        }
        ImageFormat::Png => {
            let mut png = Png::from_bytes(input).map_err(parse_err)?;
            png.chunks_mut()
                .retain(|c| !matches!(&c.kind(), b"eXIf" | b"tEXt" | b"zTXt" | b"iTXt"));
            png.encoder().bytes()
        }
        ImageFormat::WebP => {
            let mut webp = WebP::from_bytes(input).map_err(parse_err)?;
            webp.chunks_mut().retain(|c| c.id() != CHUNK_XMP);
            // Also rewrites the VP8X flags so they no longer announce EXIF or XMP.
            webp.set_exif(None);
            webp.encoder().bytes()
        }
        // GIF carries no EXIF or GPS; its comment extensions stay.
        _ => input,
    };
    Ok(out.to_vec())
}

fn encode_same_format(
    img: &DynamicImage,
    format: ImageFormat,
    icc: Option<Vec<u8>>,
) -> Result<Vec<u8>, ImageError> {
    let mut out = Vec::new();
    let res = match format {
        ImageFormat::Jpeg => {
            let mut encoder = JpegEncoder::new_with_quality(&mut out, REENCODE_JPEG_QUALITY);
            if let Some(icc) = icc {
                // A profile the encoder refuses only costs colour accuracy.
                let _ = encoder.set_icc_profile(icc);
            }
            let rgb = img.to_rgb8();
            encoder.write_image(
                rgb.as_raw(),
                rgb.width(),
                rgb.height(),
                image::ExtendedColorType::Rgb8,
            )
        }
        ImageFormat::Png => {
            let mut encoder = PngEncoder::new(&mut out);
            if let Some(icc) = icc {
                let _ = encoder.set_icc_profile(icc);
            }
            img.write_with_encoder(encoder)
        }
        ImageFormat::WebP => {
            // image's WebP encoder is lossless only; the only encoder to hand.
            let rgba = img.to_rgba8();
            WebPEncoder::new_lossless(&mut out).write_image(
                rgba.as_raw(),
                rgba.width(),
                rgba.height(),
                image::ExtendedColorType::Rgba8,
            )
        }
        _ => return Err(ImageError::Unsupported),
    };
    res.map_err(|e| ImageError::Undecodable(format!("re-encoding failed: {e}")))?;
    Ok(out)
}

fn thumbnail(img: &DynamicImage, side: u32) -> Result<Thumbnail, ImageError> {
    let small = img.thumbnail(side, side);
    let mut out = Vec::new();
    let (res, content_type) = if small.color().has_alpha() {
        (small.to_rgba8().write_with_encoder(PngEncoder::new(&mut out)), "image/png")
    } else {
        let encoder = JpegEncoder::new_with_quality(&mut out, THUMB_JPEG_QUALITY);
        (small.to_rgb8().write_with_encoder(encoder), "image/jpeg")
    };
    res.map_err(|e| ImageError::Undecodable(format!("thumbnail encoding failed: {e}")))?;
    Ok(Thumbnail { bytes: out, content_type, width: small.width(), height: small.height() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(width: u32, height: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 255 / width) as u8, (y * 255 / height) as u8, ((x ^ y) & 0xff) as u8])
        }))
    }

    fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    /// Puts an APP1 segment holding `tiff` right after SOI.
    fn with_exif(jpeg: &[u8], tiff: &[u8]) -> Vec<u8> {
        let mut payload = b"Exif\0\0".to_vec();
        payload.extend_from_slice(tiff);
        let len = u16::try_from(payload.len() + 2).unwrap();
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&payload);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    /// The GPS IFD's one entry: GPSLatitudeRef (1), ASCII (2), count 2, "N".
    const GPS_ENTRY: &[u8] = b"\x01\x00\x02\x00\x02\x00\x00\x00N\x00\x00\x00";

    /// Little-endian TIFF: IFD0 with a GPSInfo pointer (0x8825) to a GPS IFD at offset 26.
    fn gps_tiff() -> Vec<u8> {
        let mut t = b"II\x2A\x00\x08\x00\x00\x00".to_vec();
        t.extend_from_slice(b"\x01\x00"); // one entry
        t.extend_from_slice(b"\x25\x88\x04\x00\x01\x00\x00\x00\x1A\x00\x00\x00");
        t.extend_from_slice(b"\x00\x00\x00\x00"); // no next IFD
        assert_eq!(t.len(), 26);
        t.extend_from_slice(b"\x01\x00");
        t.extend_from_slice(GPS_ENTRY);
        t.extend_from_slice(b"\x00\x00\x00\x00");
        t
    }

    /// Little-endian TIFF: IFD0 with Orientation (0x0112), SHORT, = `orientation`.
    fn orientation_tiff(orientation: u8) -> Vec<u8> {
        let mut t = b"II\x2A\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x01\x00\x00\x00".to_vec();
        t.extend_from_slice(&[orientation, 0, 0, 0]);
        t.extend_from_slice(b"\x00\x00\x00\x00");
        t
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn jpeg_gps_exif_is_stripped_losslessly() {
        let jpeg = with_exif(&encode(&gradient(64, 48), ImageFormat::Jpeg), &gps_tiff());
        assert!(contains(&jpeg, b"Exif\0\0") && contains(&jpeg, GPS_ENTRY));
        let out = process(&jpeg, "image/jpeg", &ImageLimits::default()).unwrap();
        assert!(!contains(&out.bytes, b"Exif"));
        assert!(!contains(&out.bytes, GPS_ENTRY));
        let segments = img_parts::jpeg::Jpeg::from_bytes(Bytes::from(out.bytes.clone())).unwrap();
        assert!(segments.segment_by_marker(img_parts::jpeg::markers::APP1).is_none());
        assert_eq!((out.width, out.height), (64, 48));
        let back = image::load_from_memory_with_format(&out.bytes, ImageFormat::Jpeg).unwrap();
        assert_eq!((back.width(), back.height()), (64, 48));
        // Lossless: only the APP1 segment went away.
        assert_eq!(out.bytes.len(), jpeg.len() - (gps_tiff().len() + 6 + 4));
        assert!(out.thumbnail.is_none());
    }

    #[test]
    fn jpeg_orientation_is_applied_and_exif_dropped() {
        let jpeg = with_exif(&encode(&gradient(40, 20), ImageFormat::Jpeg), &orientation_tiff(6));
        let out = process(&jpeg, "image/jpeg", &ImageLimits::default()).unwrap();
        assert_eq!((out.width, out.height), (20, 40));
        assert!(!contains(&out.bytes, b"Exif"));
        let back = image::load_from_memory_with_format(&out.bytes, ImageFormat::Jpeg).unwrap();
        assert_eq!((back.width(), back.height()), (20, 40));
    }

    #[test]
    fn png_text_chunks_are_stripped() {
        let png = encode(&gradient(8, 8), ImageFormat::Png);
        // A tEXt chunk right after IHDR (8-byte signature + 25-byte IHDR chunk).
        let data = b"Comment\0taken at 51.5N";
        let mut chunk = u32::try_from(data.len()).unwrap().to_be_bytes().to_vec();
        chunk.extend_from_slice(b"tEXt");
        chunk.extend_from_slice(data);
        chunk.extend_from_slice(&crc32fast::hash(&chunk[4..]).to_be_bytes());
        let with_text = [&png[..33], &chunk, &png[33..]].concat();
        let out = process(&with_text, "image/png", &ImageLimits::default()).unwrap();
        assert!(!contains(&out.bytes, b"tEXt") && !contains(&out.bytes, b"51.5N"));
        assert_eq!(out.bytes, png);
    }

    #[test]
    fn webp_and_gif_process() {
        for (format, ct) in [(ImageFormat::WebP, "image/webp"), (ImageFormat::Gif, "image/gif")] {
            let bytes = encode(&DynamicImage::ImageRgba8(gradient(400, 100).to_rgba8()), format);
            let out = process(&bytes, ct, &ImageLimits::default()).unwrap();
            assert_eq!((out.width, out.height), (400, 100), "{ct}");
            let thumb = out.thumbnail.unwrap();
            assert_eq!((thumb.width, thumb.height), (320, 80), "{ct}");
            image::load_from_memory(&out.bytes).unwrap();
        }
    }

    #[test]
    fn bomb_is_refused_from_the_header() {
        let mut png = encode(&gradient(1, 1), ImageFormat::Png);
        png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32fast::hash(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        let limits =
            ImageLimits { max_width: 200_000, max_height: 200_000, ..ImageLimits::default() };
        let err = process(&png, "image/png", &limits).unwrap_err();
        assert!(
            matches!(err, ImageError::TooManyPixels { width: 100_000, height: 100_000, .. }),
            "{err}"
        );
        assert_eq!(err.to_string(), "image is 100000x100000, over the 50000000-pixel cap");
        let err = process(&png, "image/png", &ImageLimits::default()).unwrap_err();
        assert!(matches!(err, ImageError::TooManyPixels { .. }), "{err}");
    }

    #[test]
    fn truncated_jpeg_is_undecodable() {
        let jpeg = encode(&gradient(64, 64), ImageFormat::Jpeg);
        let err =
            process(&jpeg[..jpeg.len() / 2], "image/jpeg", &ImageLimits::default()).unwrap_err();
        assert!(matches!(err, ImageError::Undecodable(_)), "{err}");
        assert!(err.to_string().starts_with("image data is truncated or corrupt: "), "{err}");
    }

    #[test]
    fn unsupported_types() {
        let err = process(b"<svg/>", "image/svg+xml", &ImageLimits::default()).unwrap_err();
        assert!(matches!(err, ImageError::Unsupported));
    }

    #[test]
    fn thumbnail_and_placeholder() {
        let jpeg = encode(&gradient(1000, 500), ImageFormat::Jpeg);
        let out = process(&jpeg, "image/jpeg", &ImageLimits::default()).unwrap();
        let thumb = out.thumbnail.unwrap();
        assert_eq!((thumb.width, thumb.height, thumb.content_type), (320, 160, "image/jpeg"));
        let back = image::load_from_memory_with_format(&thumb.bytes, ImageFormat::Jpeg).unwrap();
        assert_eq!((back.width(), back.height()), (320, 160));
        // 4x3 components: 1 size + 1 max + 4 DC + 2 * 11 AC characters.
        assert_eq!(out.placeholder.len(), 28, "{}", out.placeholder);

        let rgba = DynamicImage::ImageRgba8(gradient(500, 1000).to_rgba8());
        let out = process(&encode(&rgba, ImageFormat::Png), "image/png", &ImageLimits::default())
            .unwrap();
        let thumb = out.thumbnail.unwrap();
        assert_eq!((thumb.width, thumb.height, thumb.content_type), (160, 320, "image/png"));
    }

    /// Truncations and bit flips of valid images give Ok or Err, never a panic: calls the
    /// inner function, below `process`'s catch_unwind.
    #[test]
    fn mangled_input_never_panics() {
        let limits = ImageLimits::default();
        let jpeg = with_exif(&encode(&gradient(24, 16), ImageFormat::Jpeg), &orientation_tiff(6));
        let png = encode(&gradient(24, 16), ImageFormat::Png);
        let gif = encode(&gradient(24, 16), ImageFormat::Gif);
        let webp = encode(&gradient(24, 16), ImageFormat::WebP);
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for (bytes, format) in [
            (jpeg, ImageFormat::Jpeg),
            (png, ImageFormat::Png),
            (gif, ImageFormat::Gif),
            (webp, ImageFormat::WebP),
        ] {
            for len in 0..bytes.len() {
                let _ = process_format(&bytes[..len], format, &limits);
            }
            for _ in 0..300 {
                let mut mangled = bytes.clone();
                for _ in 0..4 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let at = (seed % mangled.len() as u64) as usize;
                    mangled[at] ^= (seed >> 32) as u8 | 1;
                }
                let _ = process_format(&mangled, format, &limits);
            }
        }
    }
}
