//! Media end to end on a real node (local blob store): upload on its own path, attach by
//! id, receive the entry live with a URL signed for the reader, download the same bytes;
//! Range; who may download (members only, per-reader signatures, expiry); active content
//! served as an attachment; images (thumbnail, placeholder, EXIF GPS stripped); hostile
//! uploads (bombs, truncated images, lying types, disallowed types) and caps (size, quota,
//! rate); dedup and collection. The resumable path across broken connections is in
//! `media_resume.rs`, S3 in `media_s3.rs`.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use base64::Engine;
use hmac::{KeyInit, Mac};
use natter_proto::rest::{SyncRequest, SyncResponse, Uploaded};
use natter_proto::{ClientFrame, ConversationId, EntryBody, ErrorCode, ServerFrame};
use natter_testkit::{TestServer, WsClient};
use reqwest::{Method, StatusCode, header};

const SECRET: &str = "media-test-secret-0123456789abcdef0123456789";

async fn server() -> TestServer {
    TestServer::start_with(|cfg| cfg.media_secret = Some(SECRET.to_owned())).await
}

/// Bytes infer calls a PDF: a header, then `n` pseudo-random bytes.
pub(crate) fn pdf(n: usize, seed: u64) -> Vec<u8> {
    let mut out = b"%PDF-1.7\n".to_vec();
    let mut x = seed | 1;
    out.extend((0..n).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    }));
    out
}

pub(crate) fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 90]));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A JPEG with an EXIF segment holding a GPS latitude.
fn jpeg_with_gps(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 40]));
    let mut jpeg = Cursor::new(Vec::new());
    img.write_to(&mut jpeg, image::ImageFormat::Jpeg).unwrap();
    let jpeg = jpeg.into_inner();
    // Little-endian TIFF: IFD0 with a GPSInfo pointer to a GPS IFD holding "N".
    let mut tiff = b"II\x2A\x00\x08\x00\x00\x00\x01\x00".to_vec();
    tiff.extend_from_slice(b"\x25\x88\x04\x00\x01\x00\x00\x00\x1A\x00\x00\x00\x00\x00\x00\x00");
    tiff.extend_from_slice(
        b"\x01\x00\x01\x00\x02\x00\x02\x00\x00\x00N\x00\x00\x00\x00\x00\x00\x00",
    );
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&u16::try_from(app1.len() + 2).unwrap().to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

pub(crate) fn uploaded(status: StatusCode, json: serde_json::Value) -> Uploaded {
    assert_eq!(status, StatusCode::CREATED, "{json}");
    serde_json::from_value(json).expect("an upload answer")
}

fn refused(status: StatusCode, json: &serde_json::Value, code: ErrorCode) -> String {
    let want = serde_json::to_value(code).unwrap();
    assert_eq!(json["code"], want, "{status}: {json}");
    assert_eq!(status.as_u16(), code.http_status(), "{json}");
    json["message"].as_str().unwrap_or_default().to_owned()
}

/// Sends a message with `attachments` on `ws`; returns its seq.
pub(crate) async fn send_with(
    ws: &mut WsClient,
    conv: ConversationId,
    cmid: &str,
    attachments: Vec<String>,
) -> Result<u64, ErrorCode> {
    let frame = ws
        .request(|req_id| ClientFrame::Send {
            req_id,
            conversation: conv,
            client_msg_id: cmid.to_owned(),
            body: "see attached".to_owned(),
            reply_to: None,
            attachments,
            mentions: Vec::new(),
        })
        .await;
    match frame {
        ServerFrame::Ack { ack, .. } => Ok(ack.seq),
        ServerFrame::Error { error, .. } => Err(error.code),
        other => panic!("expected an ack or error, got {other:?}"),
    }
}

/// The attachments of the next entry `ws` receives.
pub(crate) async fn next_attachments(ws: &mut WsClient) -> Vec<natter_proto::Attachment> {
    let entry = ws.next_entry().await;
    match entry.body {
        EntryBody::Message { attachments, .. } => attachments,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() { out.extend(files(&path)) } else { out.push(path) }
    }
    out
}

fn blob_files(server: &TestServer) -> Vec<PathBuf> {
    files(&server.data_dir().join("media").join("blobs"))
}

/// Replaces query field `k` of `url`.
fn with_query(url: &str, k: &str, v: &str) -> String {
    let (path, q) = url.split_once('?').unwrap();
    let q: Vec<String> = q
        .split('&')
        .map(|kv| if kv.starts_with(&format!("{k}=")) { format!("{k}={v}") } else { kv.to_owned() })
        .collect();
    format!("{path}?{}", q.join("&"))
}

/// A URL signed with the node's secret, as the node signs them (docs/protocol.md, "Media").
fn sign(id: &str, tag: &str, user: i64, expires: i64) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    for part in [id, tag, &user.to_string(), &expires.to_string()] {
        mac.update(part.as_bytes());
        mac.update(b"\n");
    }
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("/v1/media/{id}/content?u={user}&e={expires}&s={sig}")
}

#[tokio::test]
async fn upload_attach_receive_download_and_ranges() {
    let server = server().await;
    let (alice, bob, conv) = server.direct_pair().await;
    let mut bob_ws = server.synced_ws(&bob).await;
    let mut alice_ws = server.synced_ws(&alice).await;

    let bytes = pdf(300_000, 7);
    let (status, json) = server
        .upload(&alice.token, bytes.clone(), Some("application/pdf"), Some("report.pdf"))
        .await;
    let up = uploaded(status, json);
    assert_eq!(up.attachment.content_type, "application/pdf");
    assert_eq!(up.attachment.size, bytes.len() as u64);
    assert_eq!(up.attachment.name.as_deref(), Some("report.pdf"));
    assert_eq!(up.sha256, sha256_hex(&bytes));

    let seq = send_with(&mut alice_ws, conv, "m1", vec![up.attachment.id.clone()]).await.unwrap();
    let got = next_attachments(&mut bob_ws).await;
    assert_eq!(got.len(), 1);
    let att = &got[0];
    assert_eq!(
        (att.id.as_str(), att.size, att.name.as_deref()),
        (up.attachment.id.as_str(), up.attachment.size, Some("report.pdf"))
    );
    let url = att.url.clone().expect("a signed URL");
    assert!(url.contains(&format!("u={}", bob.id.0)), "signed for bob: {url}");

    let res = server.fetch(&url, None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let h = res.headers().clone();
    assert_eq!(h[header::CONTENT_TYPE], "application/pdf");
    assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert!(
        h[header::CONTENT_DISPOSITION]
            .to_str()
            .unwrap()
            .starts_with("attachment; filename=\"report.pdf\"")
    );
    assert_eq!(h[header::ACCEPT_RANGES], "bytes");
    assert!(res.bytes().await.unwrap().as_ref() == bytes.as_slice(), "bytes equal");

    for (range, want) in [
        ("bytes=1000-1999", 1000..2000),
        ("bytes=299000-", 299_000..bytes.len()),
        ("bytes=-500", bytes.len() - 500..bytes.len()),
    ] {
        let res = server.fetch(&url, Some(range)).await;
        assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        let cr = res.headers()[header::CONTENT_RANGE].to_str().unwrap().to_owned();
        assert_eq!(cr, format!("bytes {}-{}/{}", want.start, want.end - 1, bytes.len()));
        assert!(res.bytes().await.unwrap().as_ref() == &bytes[want], "{range}");
    }
    let res = server.fetch(&url, Some("bytes=400000-")).await;
    assert_eq!(res.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(res.headers()[header::CONTENT_RANGE], format!("bytes */{}", bytes.len()));

    // History and sync carry URLs signed for whoever reads them.
    let page = bob
        .api(server.addr)
        .history(conv, natter_client::HistoryRange::Latest, None)
        .await
        .unwrap();
    let entry = page.entries.iter().find(|e| e.seq == seq).unwrap();
    let url = entry.body.attachments()[0].url.clone().unwrap();
    assert!(url.contains(&format!("u={}", bob.id.0)));
    assert!(server.fetch(&url, None).await.bytes().await.unwrap().as_ref() == bytes.as_slice());
    let req = SyncRequest { cursors: [(conv, seq - 1)].into_iter().collect(), limit: None };
    let synced: SyncResponse =
        server.ok(Method::POST, "/v1/sync", &alice.token, Some(&req), StatusCode::OK).await;
    let entry = &synced.conversations[0].entries[0];
    assert!(
        entry.body.attachments()[0].url.as_ref().unwrap().contains(&format!("u={}", alice.id.0))
    );

    // A fresh URL for a member, and the uploader's own.
    let fresh = bob.api(server.addr).media(&up.attachment.id).await.unwrap();
    assert_eq!(fresh.sha256, up.sha256);
    assert_eq!(
        server.fetch(fresh.attachment.url.as_ref().unwrap(), None).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn only_readers_with_a_valid_url_download() {
    let server = server().await;
    let [alice, bob, carol, dave] = server.users(["alice", "bob", "carol", "dave"]).await;
    alice.contacts(server.addr, &[&bob, &carol, &dave]).await;
    let group = server.create_group(&alice, "g", &[&bob, &dave]).await;
    let mut alice_ws = server.synced_ws(&alice).await;
    let mut dave_ws = server.synced_ws(&dave).await;

    let (status, json) = server.upload(&alice.token, pdf(10_000, 1), None, None).await;
    let up = uploaded(status, json);
    let id = up.attachment.id.clone();
    // Not yet posted: only its uploader may see it.
    let (status, _) =
        server.call(Method::GET, &format!("/v1/media/{id}"), Some(&bob.token), None::<&()>).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // And only the uploader may attach it.
    let mut bob_ws = server.synced_ws(&bob).await;
    assert_eq!(
        send_with(&mut bob_ws, group, "b1", vec![id.clone()]).await,
        Err(ErrorCode::NotFound)
    );

    send_with(&mut alice_ws, group, "a1", vec![id.clone()]).await.unwrap();
    let dave_url = next_attachments(&mut dave_ws).await[0].url.clone().unwrap();
    assert_eq!(server.fetch(&dave_url, None).await.status(), StatusCode::OK);

    // A non-member: no URL of their own, and another's URL with their id is not signed.
    let (status, _) =
        server.call(Method::GET, &format!("/v1/media/{id}"), Some(&carol.token), None::<&()>).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let as_carol = with_query(&dave_url, "u", &carol.id.0.to_string());
    let res = server.fetch(&as_carol, None).await;
    let (status, json) = (res.status(), res.json::<serde_json::Value>().await.unwrap());
    assert!(refused(status, &json, ErrorCode::Forbidden).contains("signature"));

    // A tampered signature, a tampered expiry, a URL for the thumbnail this has not.
    let sig = dave_url.split("s=").nth(1).unwrap();
    let mut tampered = sig.as_bytes().to_vec();
    tampered[3] = if tampered[3] == b'A' { b'B' } else { b'A' };
    let bad = with_query(&dave_url, "s", std::str::from_utf8(&tampered).unwrap());
    assert_eq!(server.fetch(&bad, None).await.status(), StatusCode::FORBIDDEN);
    let later = with_query(&dave_url, "e", "99999999999");
    assert_eq!(server.fetch(&later, None).await.status(), StatusCode::FORBIDDEN);

    // Expired: well signed, but its time is past.
    let expired = sign(&id, "o", dave.id.0, 1_000_000);
    let res = server.fetch(&expired, None).await;
    let (status, json) = (res.status(), res.json::<serde_json::Value>().await.unwrap());
    assert!(refused(status, &json, ErrorCode::Forbidden).contains("expired"));
    // The same signing, for a time ahead, is good: the refusal was the expiry alone.
    let ahead = sign(&id, "o", dave.id.0, 4_000_000_000);
    assert_eq!(server.fetch(&ahead, None).await.status(), StatusCode::OK);

    // A former member: the URL signed while a member no longer works.
    alice.api(server.addr).remove_member(group, dave.id).await.unwrap();
    assert_eq!(server.fetch(&dave_url, None).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(server.fetch(&ahead, None).await.status(), StatusCode::NOT_FOUND);
    let (status, _) =
        server.call(Method::GET, &format!("/v1/media/{id}"), Some(&dave.token), None::<&()>).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // No URL at all.
    let (status, _) = server.get(&format!("/v1/media/{id}/content")).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn html_and_svg_are_served_as_attachments() {
    let server = server().await;
    let (alice, bob, conv) = server.direct_pair().await;
    let mut alice_ws = server.synced_ws(&alice).await;
    let mut bob_ws = server.synced_ws(&bob).await;
    let html = b"<!DOCTYPE html><html><script>alert(document.cookie)</script></html>".to_vec();
    let svg = b"<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(1)</script></svg>".to_vec();
    for (i, (bytes, want)) in [(html, "text/html"), (svg, "image/svg+xml")].into_iter().enumerate()
    {
        // Declared as what it is, or as nothing, it is accepted — and never served inline.
        let (status, json) = server.upload(&alice.token, bytes.clone(), None, Some("x.html")).await;
        let up = uploaded(status, json);
        assert_eq!(up.attachment.content_type, want);
        assert!(up.attachment.thumbnail.is_none(), "active content is not decoded as an image");
        send_with(&mut alice_ws, conv, &format!("m{i}"), vec![up.attachment.id]).await.unwrap();
        let url = next_attachments(&mut bob_ws).await[0].url.clone().unwrap();
        let res = server.fetch(&url, None).await;
        assert_eq!(res.status(), StatusCode::OK);
        let h = res.headers();
        assert!(
            h[header::CONTENT_DISPOSITION].to_str().unwrap().starts_with("attachment"),
            "{want}"
        );
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(h[header::CONTENT_SECURITY_POLICY].to_str().unwrap().contains("sandbox"));
        assert!(res.bytes().await.unwrap().as_ref() == bytes.as_slice());
    }
    // An image is inline.
    let (status, json) = server.upload(&alice.token, png(10, 10), None, None).await;
    let up = uploaded(status, json);
    let res = server.fetch(up.attachment.url.as_ref().unwrap(), None).await;
    assert_eq!(res.headers()[header::CONTENT_DISPOSITION], "inline");
    assert_eq!(res.headers()[header::CONTENT_TYPE], "image/png");
}

#[tokio::test]
async fn images_get_thumbnails_placeholders_and_lose_their_gps() {
    let server = server().await;
    let (alice, bob, conv) = server.direct_pair().await;
    let mut alice_ws = server.synced_ws(&alice).await;
    let mut bob_ws = server.synced_ws(&bob).await;
    let jpeg = jpeg_with_gps(1200, 800);
    assert!(contains(&jpeg, b"Exif\0\0"));
    let (status, json) =
        server.upload(&alice.token, jpeg.clone(), Some("image/jpeg"), Some("beach.jpg")).await;
    let up = uploaded(status, json);
    assert_eq!((up.attachment.width, up.attachment.height), (Some(1200), Some(800)));
    let thumb = up.attachment.thumbnail.expect("a thumbnail");
    assert_eq!((thumb.width, thumb.height), (320, 213));
    assert!(up.attachment.placeholder.as_ref().is_some_and(|p| p.len() >= 6));

    send_with(&mut alice_ws, conv, "m1", vec![up.attachment.id.clone()]).await.unwrap();
    let att = next_attachments(&mut bob_ws).await.remove(0);
    let stored = server.fetch(att.url.as_ref().unwrap(), None).await.bytes().await.unwrap();
    assert!(!contains(&stored, b"Exif"), "EXIF (and its GPS) is stripped");
    assert_eq!(stored.len() as u64, up.attachment.size);
    let decoded = image::load_from_memory(&stored).expect("still a picture");
    assert_eq!((decoded.width(), decoded.height()), (1200, 800));
    let res = server.fetch(att.thumbnail_url.as_ref().unwrap(), None).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "image/jpeg");
    let small = image::load_from_memory(&res.bytes().await.unwrap()).unwrap();
    assert_eq!((small.width(), small.height()), (320, 213));
}

#[tokio::test]
async fn hostile_uploads_get_clear_errors() {
    let server = server().await;
    let alice = server.user("alice").await;
    // A PNG whose header claims 100000 x 100000 pixels: refused before decoding.
    let mut bomb = png(8, 8);
    bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32fast::hash(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    let (status, json) = server.upload(&alice.token, bomb, None, None).await;
    assert!(refused(status, &json, ErrorCode::TooLarge).contains("100000x100000"));
    // A truncated image.
    let whole = png(300, 300);
    let (status, json) =
        server.upload(&alice.token, whole[..whole.len() / 2].to_vec(), None, None).await;
    assert!(
        refused(status, &json, ErrorCode::UnsupportedMediaType).contains("truncated or corrupt")
    );
    // Bytes that lie: HTML declared as a PNG.
    let html = b"<html><body>hi</body></html>".to_vec();
    let (status, json) = server.upload(&alice.token, html, Some("image/png"), None).await;
    assert!(refused(status, &json, ErrorCode::UnsupportedMediaType).contains("not the image/png"));
    // A type the allow-list does not hold (a Windows executable).
    let mut exe = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff".to_vec();
    exe.resize(4096, 0);
    let (status, json) =
        server.upload(&alice.token, exe, Some("application/octet-stream"), None).await;
    assert!(refused(status, &json, ErrorCode::UnsupportedMediaType).contains("not allowed"));
    // Nothing of them was kept.
    assert!(blob_files(&server).is_empty(), "{:?}", blob_files(&server));
    assert_eq!(server.collect_media().await.media, 0);
    // A name with control characters, and no credentials.
    let (status, json) = server.upload(&alice.token, pdf(10, 1), None, Some("a\nb")).await;
    refused(status, &json, ErrorCode::BadRequest);
    let res = server.http.post(server.url("/v1/media")).body(pdf(10, 1)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

/// `POST /v1/media` with `Transfer-Encoding: chunked` over a raw connection, sending chunks
/// of `bytes` until more than `cap` went out and then waiting for the answer (nothing left
/// unsent to be read, so the server's close is clean); the answer as text.
async fn chunked_upload(
    addr: std::net::SocketAddr,
    token: &str,
    bytes: &[u8],
    cap: usize,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "POST /v1/media HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    let mut sent = 0;
    for chunk in bytes.chunks(4096) {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(chunk);
        req.extend_from_slice(b"\r\n");
        sent += chunk.len();
        if sent > cap {
            break;
        }
    }
    tcp.write_all(&req).await.unwrap();
    let mut answer = Vec::new();
    let _ = natter_testkit::within("an answer", tcp.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn caps_per_type_quota_and_rate() {
    let server = TestServer::start_with(|cfg| {
        cfg.media_secret = Some(SECRET.to_owned());
        cfg.media_types = vec!["application/pdf=50000".into(), "image/*".into()];
        cfg.limits.max_upload_bytes = 200_000;
        cfg.limits.media_quota_bytes = 120_000;
        cfg.limits.media_uploads_per_min = 1;
        cfg.limits.media_uploads_burst = 6;
    })
    .await;
    let alice = server.user("alice").await;
    let (status, json) = server.upload(&alice.token, pdf(60_000, 1), None, None).await;
    assert!(refused(status, &json, ErrorCode::TooLarge).contains("application/pdf"));
    let (status, json) = server.upload(&alice.token, vec![b'a'; 300_000], None, None).await;
    refused(status, &json, ErrorCode::TooLarge);
    // Chunked, with no length to refuse up front: stopped at the cap as it streams.
    let answer = chunked_upload(server.addr, &alice.token, &pdf(60_000, 2), 50_000).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("at most 50000 bytes"), "{answer}");
    let (status, json) = server.upload(&alice.token, b"plain words".to_vec(), None, None).await;
    assert!(refused(status, &json, ErrorCode::UnsupportedMediaType).contains("text/plain"));
    // 3 x 45 kB fit 120 kB twice, not three times.
    for seed in 0..2 {
        let (status, json) = server.upload(&alice.token, pdf(45_000, seed), None, None).await;
        uploaded(status, json);
    }
    let (status, json) = server.upload(&alice.token, pdf(45_000, 9), None, None).await;
    refused(status, &json, ErrorCode::QuotaExceeded);
    // Six uploads were started (one refused for its Content-Length alone was not): the
    // burst is spent, the next waits.
    let (status, json) = server.upload(&alice.token, pdf(10, 3), None, None).await;
    refused(status, &json, ErrorCode::TooManyRequests);
    assert!(json["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0));
}

#[tokio::test]
async fn equal_bytes_are_one_blob_and_collection_keeps_what_is_referenced() {
    let server = TestServer::start_with(|cfg| {
        cfg.media_secret = Some(SECRET.to_owned());
        cfg.limits.media_unattached_ttl_secs = 0;
    })
    .await;
    let (alice, bob, conv) = server.direct_pair().await;
    let mut alice_ws = server.synced_ws(&alice).await;
    let bytes = pdf(50_000, 5);
    let first = {
        let (status, json) = server.upload(&alice.token, bytes.clone(), None, None).await;
        uploaded(status, json)
    };
    let second = {
        let (status, json) = server.upload(&bob.token, bytes.clone(), None, None).await;
        uploaded(status, json)
    };
    let _lonely = {
        let (status, json) = server.upload(&alice.token, pdf(20_000, 6), None, None).await;
        uploaded(status, json)
    };
    assert_ne!(first.attachment.id, second.attachment.id);
    assert_eq!(first.sha256, second.sha256);
    assert_eq!(blob_files(&server).len(), 2, "equal bytes stored once");

    let seq =
        send_with(&mut alice_ws, conv, "m1", vec![first.attachment.id.clone()]).await.unwrap();
    // Bob's and the lonely upload were never attached: collected; the blob Bob shared with
    // the attached one stays.
    let collected = server.collect_media().await;
    assert_eq!((collected.media, collected.blobs.len()), (2, 1));
    let left = blob_files(&server);
    assert_eq!(left.len(), 1);
    assert!(left[0].ends_with(&first.sha256));
    let url =
        alice.api(server.addr).media(&first.attachment.id).await.unwrap().attachment.url.unwrap();
    assert!(server.fetch(&url, None).await.bytes().await.unwrap().as_ref() == bytes.as_slice());
    let (status, _) = server
        .call(
            Method::GET,
            &format!("/v1/media/{}", second.attachment.id),
            Some(&bob.token),
            None::<&()>,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // An edit keeps the attachment; deleting the message frees it.
    let edit = alice_ws
        .request(|req_id| ClientFrame::Edit {
            req_id,
            conversation: conv,
            client_msg_id: "e1".into(),
            target: seq,
            body: "edited".into(),
        })
        .await;
    assert!(matches!(edit, ServerFrame::Ack { .. }), "{edit:?}");
    assert_eq!(server.collect_media().await.media, 0);
    assert_eq!(blob_files(&server).len(), 1);
    let del = alice_ws
        .request(|req_id| ClientFrame::Delete {
            req_id,
            conversation: conv,
            client_msg_id: "d1".into(),
            target: seq,
        })
        .await;
    assert!(matches!(del, ServerFrame::Ack { .. }), "{del:?}");
    let collected = server.collect_media().await;
    assert_eq!((collected.media, collected.blobs.len()), (1, 1));
    assert!(blob_files(&server).is_empty());
    assert_eq!(server.fetch(&url, None).await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_sdk_uploads_and_attaches() {
    let server = server().await;
    let (alice, bob, conv) = server.direct_pair().await;
    let mut bob_ws = server.synced_ws(&bob).await;
    let api = alice.api(server.addr);
    let up = api.upload(png(64, 64), Some("image/png"), Some("dot.png")).await.unwrap();
    assert_eq!(up.attachment.width, Some(64));
    let entry = natter_proto::NewEntry::Message {
        body: "pic".into(),
        reply_to: None,
        attachments: vec![up.attachment.id.clone()],
        mentions: Vec::new(),
    };
    api.post_entry(conv, "sdk-1", entry).await.unwrap();
    let att = next_attachments(&mut bob_ws).await.remove(0);
    let bob_api = bob.api(server.addr);
    let got = bob_api.download(att.url.as_ref().unwrap()).await.unwrap();
    assert_eq!(got.len() as u64, up.attachment.size);
    let err = bob_api.download(&with_query(att.url.as_ref().unwrap(), "e", "1")).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
}

#[tokio::test]
async fn media_dir_keeps_staging_and_blobs_on_a_disk_of_their_own() {
    let elsewhere = tempfile::tempdir().expect("a media dir");
    let dir = elsewhere.path().to_owned();
    let server = TestServer::start_with(|cfg| {
        cfg.media_secret = Some(SECRET.to_owned());
        cfg.media_dir = Some(dir);
    })
    .await;
    let (alice, _bob, _conv) = server.direct_pair().await;
    let bytes = pdf(30_000, 9);
    let (status, json) = server.upload(&alice.token, bytes.clone(), None, None).await;
    let media = uploaded(status, json);
    let stored = files(&elsewhere.path().join("blobs"));
    assert_eq!(stored.len(), 1, "the blob is in media_dir: {stored:?}");
    assert!(std::fs::read(&stored[0]).expect("blob") == bytes);
    assert!(elsewhere.path().join("staging").is_dir());
    assert!(files(&server.data_dir().join("media")).is_empty(), "nothing in the data dir");
    let res = server.fetch(&media.attachment.url.clone().expect("url"), None).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.bytes().await.expect("body") == bytes);
    server.stop().await;
}
