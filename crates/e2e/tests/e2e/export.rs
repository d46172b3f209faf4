//! The data export (issue 13, part 2): `GET /v1/me/export` streams one JSON archive of the
//! caller's profile, devices, memberships, own messages (current text, deleted ones left out)
//! and uploads, across more than one store page; nobody else's messages are in it; exports
//! are rate-limited.

use natter_proto::{Entry, EntryBody, NewEntry};
use natter_testkit::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::media::png;

/// Messages per store page of the export (`http/export.rs`): the test sends more.
const PAGE: usize = 500;

async fn export(server: &TestServer, token: &str) -> (StatusCode, Option<String>, String) {
    let res = reqwest::Client::new()
        .get(server.url("/v1/me/export"))
        .bearer_auth(token)
        .send()
        .await
        .expect("export request");
    let status = res.status();
    let disposition = res
        .headers()
        .get(reqwest::header::CONTENT_DISPOSITION)
        .map(|v| v.to_str().unwrap().to_owned());
    (status, disposition, res.text().await.expect("export body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_holds_ones_own_data_and_nobody_elses() {
    let server = TestServer::start_with(|c| c.limits.exports_burst = 2).await;
    let [alice, bob] = server.users(["alice", "bob"]).await;
    let ab = server.create_direct(&alice, &bob).await;
    let group = server.create_group(&alice, "book club", &[&bob]).await;
    let patch = serde_json::json!({"display_name": "Alice A."});
    let (status, _) =
        server.call(Method::PATCH, "/v1/me/profile", Some(&alice.token), Some(&patch)).await;
    assert_eq!(status, StatusCode::OK);

    // An upload attached to a message, and one never attached.
    let (status, attached) = server.upload(&alice.token, png(8, 8), None, Some("a.png")).await;
    assert_eq!(status, StatusCode::CREATED, "{attached}");
    let (status, loose) = server.upload(&alice.token, png(9, 9), None, Some("b.png")).await;
    assert_eq!(status, StatusCode::CREATED, "{loose}");
    let with_photo = NewEntry::Message {
        body: "look".to_owned(),
        reply_to: None,
        attachments: vec![attached["id"].as_str().unwrap().to_owned()],
        mentions: Vec::new(),
    };
    let (status, _) = server.post_entry(&alice, group, "photo", with_photo).await;
    assert_eq!(status, StatusCode::CREATED);

    // More messages than one page, one edited and one deleted; bob writes too.
    for i in 0..PAGE + 5 {
        server.send_rest(&alice, ab, &format!("m{i}"), &format!("message {i}")).await;
    }
    let edited = server.send_rest(&alice, group, "edited", "first draft").await;
    let edit = NewEntry::Edit { target: edited.seq, body: "final text".to_owned() };
    assert_eq!(server.post_entry(&alice, group, "e", edit).await.0, StatusCode::CREATED);
    let gone = server.send_rest(&alice, group, "gone", "regrettable").await;
    let delete = NewEntry::Delete { target: gone.seq };
    assert_eq!(server.post_entry(&alice, group, "d", delete).await.0, StatusCode::CREATED);
    server.send_rest(&bob, ab, "b1", "bob's own words").await;

    let (status, disposition, body) = export(&server, &alice.token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(disposition.unwrap().starts_with("attachment"), "downloaded as a file");
    let archive: Value = serde_json::from_str(&body).expect("the archive is one JSON value");
    assert_eq!(archive["format"], "natter-export/1");
    assert_eq!(archive["user"]["handle"], "alice");
    assert_eq!(archive["user"]["display_name"], "Alice A.");
    assert_eq!(archive["devices"].as_array().unwrap().len(), 1);
    let mut convs: Vec<i64> = archive["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_i64().unwrap())
        .collect();
    convs.sort();
    let mut want = vec![ab.0, group.0];
    want.sort();
    assert_eq!(convs, want);

    let messages = archive["messages"].as_array().unwrap();
    let entries: Vec<Entry> = serde_json::from_value(archive["messages"].clone()).unwrap();
    let texts: Vec<&str> =
        entries.iter().map(|e| e.state.as_ref().expect("current state").body.as_str()).collect();
    assert_eq!(messages.len(), PAGE + 5 + 2, "every message alice sent and did not delete");
    assert!(messages.iter().all(|m| m["sender"] == alice.id.0), "only alice's messages");
    assert!(texts.contains(&"final text") && !texts.contains(&"first draft"));
    assert!(!texts.contains(&"regrettable"), "deleted messages are not exported");
    assert!(!texts.contains(&"bob's own words"));
    for i in 0..PAGE + 5 {
        assert!(texts.contains(&format!("message {i}").as_str()), "message {i} across pages");
    }
    let photo = messages.iter().find(|m| m["body"] == "look").unwrap();
    let photo_url = photo["attachments"][0]["url"].as_str().expect("signed for alice");
    assert_eq!(server.fetch(photo_url, None).await.status(), StatusCode::OK);

    let media = archive["media"].as_array().unwrap();
    let mut ids: Vec<&str> = media.iter().map(|m| m["id"].as_str().unwrap()).collect();
    ids.sort();
    let mut want = vec![attached["id"].as_str().unwrap(), loose["id"].as_str().unwrap()];
    want.sort();
    assert_eq!(ids, want, "every upload, attached or not");
    for m in media {
        assert!(m["created_at"].as_i64().unwrap() > 0);
        let url = m["url"].as_str().unwrap();
        assert_eq!(server.fetch(url, None).await.status(), StatusCode::OK, "{url}");
    }

    // Bob's archive has bob's message and nothing of alice's.
    let (_, _, body) = export(&server, &bob.token).await;
    let bobs: Value = serde_json::from_str(&body).unwrap();
    let bob_msgs: Vec<Entry> = serde_json::from_value(bobs["messages"].clone()).unwrap();
    assert_eq!(bob_msgs.len(), 1);
    assert!(
        matches!(&bob_msgs[0].body, EntryBody::Message { body, .. } if body == "bob's own words")
    );
    assert_eq!(bobs["media"].as_array().unwrap().len(), 0);

    // Two at once, then the hourly rate: the third is refused.
    let (status, _, _) = export(&server, &alice.token).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = export(&server, &alice.token).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let refusal: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(refusal["code"], "too_many_requests");
    assert!(refusal["retry_after_ms"].as_u64().unwrap() > 0);

    // Without a token there is nothing.
    let res = reqwest::get(server.url("/v1/me/export")).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}
