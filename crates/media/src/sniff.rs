//! Content sniffing: what an upload is, judged from its bytes and never from its name or
//! declared type, and how the server may serve it.

/// What an upload is, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sniffed {
    pub content_type: &'static str,
    pub kind: Kind,
}

/// The broad family of a sniffed type. HTML and SVG are [`Kind::Document`]: they are active
/// content, never shown as images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Image,
    Video,
    Audio,
    Document,
    Archive,
    Other,
}

const OCTET_STREAM: &str = "application/octet-stream";

/// What an upload is, from its first bytes (give at least 8 KiB when available).
pub fn sniff(head: &[u8]) -> Sniffed {
    // Markup first: infer would call an SVG `text/xml` and miss HTML that starts with a comment.
    if let Some(markup) = sniff_markup(head) {
        return markup;
    }
    if let Some(found) = infer::get(head) {
        let content_type = found.mime_type();
        let kind = match found.matcher_type() {
            _ if content_type == "application/pdf" => Kind::Document,
            infer::MatcherType::Image => Kind::Image,
            infer::MatcherType::Video => Kind::Video,
            infer::MatcherType::Audio => Kind::Audio,
            infer::MatcherType::Archive => Kind::Archive,
            infer::MatcherType::Doc | infer::MatcherType::Book | infer::MatcherType::Text => {
                Kind::Document
            }
            _ => Kind::Other,
        };
        return Sniffed { content_type, kind };
    }
    if is_text(head) {
        return Sniffed { content_type: "text/plain", kind: Kind::Document };
    }
    Sniffed { content_type: OCTET_STREAM, kind: Kind::Other }
}

/// Whether a declared `Content-Type` contradicts the sniffed type.
///
/// Declaring a media family (`image/*`, `video/*`, `audio/*`) for bytes of another family is a
/// lie, and so is declaring `image/png` for an SVG. Within a family the sniffed subtype simply
/// wins (`image/png` for JPEG bytes is a mislabel, not an attack), and audio and video count as
/// one family because mp4, webm and ogg containers carry either. An empty or
/// `application/octet-stream` declaration claims nothing and never lies.
pub fn contradicts(declared: &str, sniffed: &Sniffed) -> bool {
    let declared = essence(declared);
    if declared.is_empty() || declared == OCTET_STREAM || declared == sniffed.content_type {
        return false;
    }
    let Some((top, _)) = declared.split_once('/') else {
        return false;
    };
    match top {
        "image" => sniffed.kind != Kind::Image,
        "video" | "audio" => !matches!(sniffed.kind, Kind::Video | Kind::Audio),
        _ => false,
    }
}

/// Whether the server may serve this type inline: raster images, and the audio and video types
/// browsers play. Everything else — HTML, SVG, text, PDF, archives, octet-stream — is served as
/// an attachment, since a browser would run or render it in the server's origin.
pub fn inline_safe(content_type: &str) -> bool {
    matches!(
        essence(content_type).as_str(),
        "image/jpeg"
            | "image/png"
            | "image/gif"
            | "image/webp"
            | "video/mp4"
            | "video/webm"
            | "video/quicktime"
            | "audio/mpeg"
            | "audio/ogg"
            | "audio/mp4"
            | "audio/m4a"
            | "audio/wav"
            | "audio/x-wav"
            | "audio/webm"
    )
}

/// `Image/PNG; charset=x` → `image/png`.
fn essence(content_type: &str) -> String {
    let essence = content_type.split(';').next().unwrap_or_default();
    essence.trim().to_ascii_lowercase()
}

/// HTML or SVG after a BOM, whitespace, an XML declaration, comments and non-HTML doctypes.
fn sniff_markup(head: &[u8]) -> Option<Sniffed> {
    const HTML: Sniffed = Sniffed { content_type: "text/html", kind: Kind::Document };
    const SVG: Sniffed = Sniffed { content_type: "image/svg+xml", kind: Kind::Document };
    // Tags that make browsers sniff HTML (the WHATWG sniffing list, in part).
    const HTML_TAGS: [&[u8]; 8] = [
        b"<!doctype html",
        b"<html",
        b"<head",
        b"<body",
        b"<script",
        b"<iframe",
        b"<style",
        b"<title",
    ];

    let mut rest = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    loop {
        rest = trim_start(rest);
        if starts_with_ignore_case(rest, b"<?xml") {
            rest = skip_past(rest, b"?>")?;
        } else if rest.starts_with(b"<!--") {
            rest = skip_past(rest, b"-->")?;
        } else if starts_with_ignore_case(rest, b"<!doctype svg") {
            return Some(SVG);
        } else if starts_with_ignore_case(rest, b"<!doctype")
            && !starts_with_ignore_case(rest, b"<!doctype html")
        {
            rest = skip_past(rest, b">")?;
        } else {
            break;
        }
    }
    if starts_with_ignore_case(rest, b"<svg") {
        return Some(SVG);
    }
    if HTML_TAGS.iter().any(|tag| starts_with_ignore_case(rest, tag)) {
        return Some(HTML);
    }
    None
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let n = bytes.iter().take_while(|b| b.is_ascii_whitespace()).count();
    &bytes[n..]
}

fn starts_with_ignore_case(bytes: &[u8], prefix: &[u8]) -> bool {
    bytes.len() >= prefix.len() && bytes[..prefix.len()].eq_ignore_ascii_case(prefix)
}

fn skip_past<'a>(bytes: &'a [u8], end: &[u8]) -> Option<&'a [u8]> {
    let at = bytes.windows(end.len()).position(|w| w == end)?;
    Some(&bytes[at + end.len()..])
}

/// UTF-8 without NUL. A head cut inside a multi-byte character still counts as text.
fn is_text(head: &[u8]) -> bool {
    if head.is_empty() || head.contains(&0) {
        return false;
    }
    match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none() && head.len() - e.valid_up_to() < 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png() -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image::RgbImage::new(2, 2).write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn encoded(format: image::ImageFormat) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image::RgbaImage::new(4, 4).write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn sniffs_images() {
        assert_eq!(sniff(&png()), Sniffed { content_type: "image/png", kind: Kind::Image });
        let mut out = std::io::Cursor::new(Vec::new());
        image::RgbImage::new(4, 4).write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
        assert_eq!(sniff(out.get_ref()).content_type, "image/jpeg");
        assert_eq!(sniff(&encoded(image::ImageFormat::Gif)).content_type, "image/gif");
        assert_eq!(sniff(&encoded(image::ImageFormat::WebP)).content_type, "image/webp");
    }

    #[test]
    fn sniffs_mp4_pdf_zip() {
        let mp4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2mp41";
        assert_eq!(sniff(mp4), Sniffed { content_type: "video/mp4", kind: Kind::Video });
        let pdf = b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n1 0 obj";
        assert_eq!(sniff(pdf), Sniffed { content_type: "application/pdf", kind: Kind::Document });
        let zip = b"PK\x03\x04\x14\x00\x00\x00\x08\x00";
        assert_eq!(sniff(zip), Sniffed { content_type: "application/zip", kind: Kind::Archive });
    }

    #[test]
    fn sniffs_markup_as_documents() {
        let html = Sniffed { content_type: "text/html", kind: Kind::Document };
        let svg = Sniffed { content_type: "image/svg+xml", kind: Kind::Document };
        assert_eq!(sniff(b"  \n<!DOCTYPE html><html><body>hi"), html);
        assert_eq!(sniff(b"\xEF\xBB\xBF<HTML>"), html);
        assert_eq!(sniff(b"<!-- x --><script>alert(1)</script>"), html);
        assert_eq!(sniff(b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>"), svg);
        assert_eq!(sniff(b"<?xml version=\"1.0\"?>\n<!-- c -->\n<SVG onload=x>"), svg);
        assert_eq!(
            sniff(b"<?xml version=\"1.0\"?><!DOCTYPE svg PUBLIC \"-//W3C//DTD SVG 1.1//EN\"><svg>"),
            svg
        );
    }

    #[test]
    fn sniffs_text_and_random() {
        let text = Sniffed { content_type: "text/plain", kind: Kind::Document };
        assert_eq!(sniff("hello, wörld\n".as_bytes()), text);
        // Cut in the middle of "ö".
        assert_eq!(sniff(&"wö".as_bytes()[..2]), text);
        assert_eq!(sniff(b"text\0with nul").content_type, OCTET_STREAM);
        let random: Vec<u8> =
            (0u32..4096).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        assert_eq!(sniff(&random), Sniffed { content_type: OCTET_STREAM, kind: Kind::Other });
        assert_eq!(sniff(b"").content_type, OCTET_STREAM);
    }

    #[test]
    fn contradictions() {
        let zip = sniff(b"PK\x03\x04\x14\x00\x00\x00\x08\x00");
        assert!(contradicts("image/png", &zip));
        assert!(contradicts("video/mp4", &zip));
        assert!(!contradicts("application/octet-stream", &zip));
        assert!(!contradicts("", &zip));
        assert!(!contradicts("application/zip", &zip));
        let png = sniff(&png());
        assert!(!contradicts("image/jpeg", &png), "the sniffed subtype wins");
        assert!(!contradicts("Image/PNG; foo=bar", &png));
        let svg = sniff(b"<svg/>");
        assert!(!contradicts("image/svg+xml", &svg));
        assert!(contradicts("image/png", &svg));
        let mp4 = sniff(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2mp41");
        assert!(!contradicts("audio/mp4", &mp4));
    }

    #[test]
    fn inline_only_for_passive_media() {
        for ct in ["image/png", "image/JPEG", "video/mp4", "audio/ogg", "image/webp; q=1"] {
            assert!(inline_safe(ct), "{ct}");
        }
        for ct in [
            "text/html",
            "image/svg+xml",
            "text/plain",
            "application/pdf",
            "application/zip",
            OCTET_STREAM,
            "",
        ] {
            assert!(!inline_safe(ct), "{ct}");
        }
    }
}
