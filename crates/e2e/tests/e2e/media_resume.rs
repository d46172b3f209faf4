//! Resumable uploads: the protocol's answers (offsets, conflicts, owners, lengths), and the
//! SDK's `upload_file` carrying a 200 MiB file through connections that break part-way, to
//! the same SHA-256 and the same bytes on download.

use std::io::Write;

use natter_proto::NewEntry;
use natter_proto::rest::{NewUpload, UploadCreated};
use natter_testkit::{CuttingProxy, TestServer, within};
use reqwest::{Method, StatusCode};
use sha2::Digest;

use crate::media::{next_attachments, pdf, sha256_hex};

fn offset(res: &reqwest::Response) -> u64 {
    res.headers()["upload-offset"].to_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn resumable_uploads_follow_their_offsets() {
    let server = TestServer::start().await;
    let [alice, bob] = server.users(["alice", "bob"]).await;
    let bytes = pdf(100_000, 3);
    let new =
        NewUpload { length: bytes.len() as u64, content_type: None, name: Some("a.pdf".into()) };
    let created: UploadCreated = server
        .ok(Method::POST, "/v1/media/uploads", &alice.token, Some(&new), StatusCode::CREATED)
        .await;
    assert_eq!((created.offset, created.length), (0, bytes.len() as u64));
    let path = format!("/v1/media/uploads/{}", created.id);
    let patch = |token: &str, at: u64, body: Vec<u8>| {
        server
            .http
            .patch(server.url(&path))
            .bearer_auth(token)
            .header("Upload-Offset", at)
            .header("Content-Type", "application/offset+octet-stream")
            .body(body)
            .send()
    };
    let head = |token: &str| server.http.head(server.url(&path)).bearer_auth(token).send();

    let res = within("a PATCH", patch(&alice.token, 0, bytes[..30_000].to_vec())).await.unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(offset(&res), 30_000);
    // Another user's upload is not theirs to see or write.
    assert_eq!(within("a HEAD", head(&bob.token)).await.unwrap().status(), StatusCode::NOT_FOUND);
    let res = within("a PATCH", patch(&bob.token, 30_000, vec![0; 10])).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    // The wrong offset is a conflict, and changes nothing.
    let res = within("a PATCH", patch(&alice.token, 10_000, bytes[10_000..20_000].to_vec()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let res = within("a HEAD", head(&alice.token)).await.unwrap();
    assert_eq!((res.status(), offset(&res)), (StatusCode::OK, 30_000));
    // Past the declared length: refused, and what fit is kept.
    let mut long = bytes[30_000..].to_vec();
    long.extend_from_slice(b"extra");
    let res = within("a PATCH", patch(&alice.token, 30_000, long)).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let at = offset(&within("a HEAD", head(&alice.token)).await.unwrap());
    assert!(at >= 30_000 && at <= bytes.len() as u64, "{at}");
    // The rest completes it: 201 and the stored media, whose hash is the whole file's.
    let res =
        within("a PATCH", patch(&alice.token, at, bytes[at as usize..].to_vec())).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let up: natter_proto::rest::Uploaded = res.json().await.unwrap();
    assert_eq!(up.sha256, sha256_hex(&bytes));
    assert_eq!(up.attachment.name.as_deref(), Some("a.pdf"));
    // Finished uploads are gone from the resumable path.
    assert_eq!(within("a HEAD", head(&alice.token)).await.unwrap().status(), StatusCode::NOT_FOUND);

    // The type is checked as soon as the first bytes are in: an executable stops there.
    let new = NewUpload { length: 1_000_000, content_type: None, name: None };
    let created: UploadCreated = server
        .ok(Method::POST, "/v1/media/uploads", &alice.token, Some(&new), StatusCode::CREATED)
        .await;
    let mut exe = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff".to_vec();
    exe.resize(16 * 1024, 0);
    let res = server
        .http
        .patch(server.url(&format!("/v1/media/uploads/{}", created.id)))
        .bearer_auth(&alice.token)
        .header("Upload-Offset", 0)
        .body(exe)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Too long a declaration is refused up front.
    let new = NewUpload { length: 1 << 40, content_type: None, name: None };
    let (status, json) =
        server.call(Method::POST, "/v1/media/uploads", Some(&alice.token), Some(&new)).await;
    assert_eq!(
        (status, &json["code"]),
        (StatusCode::PAYLOAD_TOO_LARGE, &serde_json::json!("too_large"))
    );
}

#[tokio::test]
async fn a_200_mib_upload_broken_three_times_resumes_to_the_same_hash() {
    const MIB: u64 = 1024 * 1024;
    let server = TestServer::start_with(|cfg| cfg.limits.media_ingest_bytes_per_sec = 0).await;
    let (alice, bob, conv) = server.direct_pair().await;
    let mut bob_ws = server.synced_ws(&bob).await;

    // 200 MiB: a PDF header and pseudo-random bytes, written once to a temp file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.pdf");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut hasher = sha2::Sha256::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; MIB as usize];
    for i in 0..200 {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        if i == 0 {
            block[..9].copy_from_slice(b"%PDF-1.7\n");
        }
        hasher.update(&block);
        file.write_all(&block).unwrap();
    }
    drop(file);
    let want: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();

    // The first three connections break after 3, 37 and 61 MiB of what the client sent
    // (mid-PATCH each time); the fourth goes through.
    let proxy = CuttingProxy::start(server.addr, vec![3 * MIB, 37 * MIB + 123, 61 * MIB + 7]).await;
    let api =
        natter_client::Api::new(format!("http://{}", proxy.addr)).unwrap().with_token(&alice.token);
    let up =
        within("a 200 MiB upload", api.upload_file(&path, None, Some("big.pdf"))).await.unwrap();
    assert_eq!(proxy.cuts(), 3, "the connection broke three times");
    assert_eq!(up.sha256, want, "resumed to the same hash");
    assert_eq!(up.attachment.size, 200 * MIB);

    // Attached, received, downloaded whole: the same bytes.
    let entry = NewEntry::Message {
        body: "big".into(),
        reply_to: None,
        attachments: vec![up.attachment.id.clone()],
        mentions: Vec::new(),
    };
    alice.api(server.addr).post_entry(conv, "big-1", entry).await.unwrap();
    let url = next_attachments(&mut bob_ws).await[0].url.clone().unwrap();
    let mut res = server.fetch(&url, None).await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut got = sha2::Sha256::new();
    let mut n = 0u64;
    while let Some(chunk) = within("a download chunk", res.chunk()).await.unwrap() {
        n += chunk.len() as u64;
        got.update(&chunk);
    }
    assert_eq!(n, 200 * MIB);
    let got: String = got.finalize().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(got, want, "downloaded bytes equal");
    // A range deep in the file.
    let res = server.fetch(&url, Some("bytes=150000000-150000009")).await;
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    let bytes = std::fs::read(&path).unwrap();
    assert!(res.bytes().await.unwrap().as_ref() == &bytes[150_000_000..150_000_010]);
}
