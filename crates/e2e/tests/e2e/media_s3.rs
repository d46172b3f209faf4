//! Media on an S3-compatible store (moto's server on loopback, started by the test): upload
//! whole and resumably through broken connections, attach, receive, download the same
//! bytes and ranges, thumbnails, dedup and collection, all with blobs in the bucket.

use natter_proto::NewEntry;
use natter_testkit::process::S3Server;
use natter_testkit::{CuttingProxy, TestServer, within};
use reqwest::StatusCode;

use crate::media::{next_attachments, pdf, send_with, sha256_hex, uploaded};

const BUCKET: &str = "natter-media";

async fn on_s3(s3: &S3Server) -> TestServer {
    let endpoint = s3.endpoint();
    TestServer::start_with(move |cfg| {
        cfg.media_secret = Some("s3-test-secret-0123456789abcdef0123456789".to_owned());
        cfg.media_url = Some(format!("s3://{BUCKET}/chat"));
        cfg.media_s3.endpoint = Some(endpoint);
        cfg.media_s3.region = Some("us-east-1".to_owned());
        cfg.media_s3.access_key_id = Some("test".to_owned());
        cfg.media_s3.secret_access_key = Some("test".to_owned());
        cfg.limits.media_unattached_ttl_secs = 0;
    })
    .await
}

#[tokio::test]
async fn media_on_s3_round_trip_dedup_and_collection() {
    let s3 = S3Server::start(BUCKET).await;
    let server = on_s3(&s3).await;
    let (alice, bob, conv) = server.direct_pair().await;
    let mut alice_ws = server.synced_ws(&alice).await;
    let mut bob_ws = server.synced_ws(&bob).await;

    // Whole: 20 MiB, so the copy into the bucket takes several multipart parts.
    let big = pdf(20 * 1024 * 1024, 11);
    let (status, json) = server.upload(&alice.token, big.clone(), None, Some("big.pdf")).await;
    let up = uploaded(status, json);
    assert_eq!(up.sha256, sha256_hex(&big));
    let key = format!("chat/{}/{}", &up.sha256[..2], up.sha256);
    assert_eq!(s3.keys("chat/").await, vec![key.clone()], "the blob is in the bucket");
    // Nothing of it stays on local disk but the (empty) staging directory.
    let local = server.data_dir().join("media").join("blobs");
    assert!(std::fs::read_dir(&local).map(|d| d.count()).unwrap_or(0) == 0);

    send_with(&mut alice_ws, conv, "m1", vec![up.attachment.id.clone()]).await.unwrap();
    let url = next_attachments(&mut bob_ws).await[0].url.clone().unwrap();
    // Alice's own session gets the entry too, with her URL.
    let own = next_attachments(&mut alice_ws).await[0].url.clone().unwrap();
    assert!(own.contains(&format!("u={}", alice.id.0)));
    let res = server.fetch(&url, None).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.bytes().await.unwrap().as_ref() == big.as_slice(), "bytes equal");
    let res = server.fetch(&url, Some("bytes=10485700-10485799")).await;
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert!(res.bytes().await.unwrap().as_ref() == &big[10_485_700..10_485_800]);

    // Resumable through a connection broken mid-PATCH.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.pdf");
    let resumed = pdf(9 * 1024 * 1024, 12);
    std::fs::write(&path, &resumed).unwrap();
    let proxy = CuttingProxy::start(server.addr, vec![5 * 1024 * 1024]).await;
    let api =
        natter_client::Api::new(format!("http://{}", proxy.addr)).unwrap().with_token(&bob.token);
    let r = within("a resumable upload", api.upload_file(&path, Some("application/pdf"), None))
        .await
        .unwrap();
    assert_eq!(proxy.cuts(), 1);
    assert_eq!(r.sha256, sha256_hex(&resumed));
    let entry = NewEntry::Message {
        body: "r".into(),
        reply_to: None,
        attachments: vec![r.attachment.id.clone()],
        mentions: Vec::new(),
    };
    bob.api(server.addr).post_entry(conv, "r1", entry).await.unwrap();
    let url = next_attachments(&mut alice_ws).await[0].url.clone().unwrap();
    assert!(server.fetch(&url, None).await.bytes().await.unwrap().as_ref() == resumed.as_slice());

    // An image: its thumbnail is a blob too.
    let img = image::RgbImage::from_fn(800, 400, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png).unwrap();
    let (status, json) = server.upload(&alice.token, png.into_inner(), None, None).await;
    let pic = uploaded(status, json);
    let thumb = server.fetch(pic.attachment.thumbnail_url.as_ref().unwrap(), None).await;
    assert_eq!(thumb.status(), StatusCode::OK);
    let small = image::load_from_memory(&thumb.bytes().await.unwrap()).unwrap();
    assert_eq!((small.width(), small.height()), (320, 160));

    // Dedup: the same bytes again are the same object.
    let (status, json) = server.upload(&bob.token, big.clone(), None, None).await;
    assert_eq!(uploaded(status, json).sha256, up.sha256);
    assert_eq!(s3.keys("chat/").await.len(), 4, "big, resumed, picture, thumbnail");

    // Collection: the never-attached picture (and its thumbnail) and Bob's copy go; the
    // attached blobs stay, the one Bob's copy shared included.
    let collected = server.collect_media().await;
    assert_eq!((collected.media, collected.blobs.len()), (2, 2));
    let keys = s3.keys("chat/").await;
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.contains(&key));
    let url =
        alice.api(server.addr).media(&up.attachment.id).await.unwrap().attachment.url.unwrap();
    assert_eq!(server.fetch(&url, None).await.bytes().await.unwrap().len(), big.len());
}
