//! Content rules and the moderation webhook (issue 13, part 7). The configured words (whole,
//! ignoring case) and patterns refuse a message or edit with `content_rejected` (nothing is
//! stored) or let it through and file it in the moderation queue, with a snapshot, as a
//! report without a reporter. The webhook, a real HTTP server on loopback here, is called
//! before commit with a signed body; it allows, flags or rejects; when it fails (an error,
//! no answer within its time budget) the message goes through (fail-open) or is refused as
//! `unavailable` (fail-closed).

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use hmac::{KeyInit, Mac};
use natter_proto::rest::Reports;
use natter_proto::{ClientFrame, ErrorCode, NewEntry, ServerFrame};
use natter_testkit::{TestServer, poll_until};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const SECRET: &str = "a webhook secret of some length";

fn text(body: &str) -> NewEntry {
    NewEntry::Message {
        body: body.to_owned(),
        reply_to: None,
        attachments: vec![],
        mentions: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn word_and_pattern_lists_reject_or_flag() {
    let server = TestServer::start_with(|c| {
        c.content_rules.reject_words = vec!["spamword".into()];
        c.content_rules.reject_patterns = vec![r"(?i)buy\s+now".into()];
        c.content_rules.flag_words = vec!["heck".into()];
    })
    .await;
    let [root, alice, bob] = server.users(["root", "alice", "bob"]).await;
    server.grant_admin("root").await;
    let ab = server.create_direct(&alice, &bob).await;

    for refused in ["this is SPAMWORD!", "Buy   NOW, friends"] {
        let (status, json) = server.post_entry(&alice, ab, refused, text(refused)).await;
        assert_eq!(
            (status, json["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("content_rejected"))
        );
    }
    // Whole words only: a longer word that contains one is fine.
    let ok = server.send_rest(&alice, ab, "ok", "spamwordy is not a word on the list").await;
    let edit = NewEntry::Edit { target: ok.seq, body: "now it is spamword".into() };
    assert_eq!(
        server.post_entry(&alice, ab, "edit", edit).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    // Over the WebSocket, the same refusal as an error frame.
    let mut ws = server.synced_ws(&alice).await;
    let reply = ws
        .request(|req_id| ClientFrame::Send {
            req_id,
            conversation: ab,
            client_msg_id: "ws".into(),
            body: "spamword".into(),
            reply_to: None,
            attachments: vec![],
            mentions: Vec::new(),
        })
        .await;
    assert!(
        matches!(&reply, ServerFrame::Error { error, .. } if error.code == ErrorCode::ContentRejected),
        "{reply:?}"
    );
    let log = server.all_entries(&bob, ab, 100).await;
    assert_eq!(log.len(), 2, "only `created` and the allowed message were stored");

    // A flagged message is delivered and filed for review, without a reporter.
    let flagged = server.send_rest(&alice, ab, "f", "oh heck").await;
    let report = poll_until(
        "the flagged message in the queue",
        || async {
            let q: Reports = server
                .ok(Method::GET, "/v1/admin/reports", &root.token, None::<&()>, StatusCode::OK)
                .await;
            q.reports.into_iter().next()
        },
        || "nothing filed".to_owned(),
    )
    .await;
    assert_eq!((report.reporter, report.subject, report.seq), (None, alice.id, Some(flagged.seq)));
    assert_eq!(report.reason, "content rule: word \"heck\"");
    assert_eq!(report.snapshot["body"], "oh heck");
}

/// What the test's webhook saw: each body, and whether its signature checked out.
type Seen = Arc<Mutex<Vec<(Value, bool)>>>;

/// A moderation webhook on loopback: `reject…` is rejected, `flag…` flagged, `boom…`
/// answered 500, `hang…` never answered; anything else allowed.
async fn webhook() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let app = axum::Router::new().route(
        "/moderate",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let log = log.clone();
            async move {
                let mut mac =
                    hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
                mac.update(&body);
                let want: String =
                    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
                let signed = headers.get("x-natter-signature").and_then(|v| v.to_str().ok())
                    == Some(format!("sha256={want}").as_str());
                let call: Value = serde_json::from_slice(&body).unwrap();
                log.lock().unwrap().push((call.clone(), signed));
                let text = call["body"].as_str().unwrap_or_default().to_owned();
                if text.starts_with("hang") {
                    std::future::pending::<()>().await;
                }
                if text.starts_with("boom") {
                    return (AxumStatus::INTERNAL_SERVER_ERROR, "{}".to_owned());
                }
                let answer = if text.starts_with("reject") {
                    json!({"action": "reject"})
                } else if text.starts_with("flag") {
                    json!({"action": "flag", "reason": "looks like a scam"})
                } else {
                    json!({"action": "allow"})
                };
                (AxumStatus::OK, answer.to_string())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/moderate", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_allows_flags_rejects_and_fails_open_or_closed() {
    let (url, seen) = webhook().await;
    let start = |fail_closed: bool| {
        let url = url.clone();
        TestServer::start_with(move |c| {
            c.content_rules.webhook_url = Some(url);
            c.content_rules.webhook_secret = Some(SECRET.into());
            c.content_rules.webhook_timeout_ms = 300;
            c.content_rules.webhook_fail_closed = fail_closed;
        })
    };
    let open = start(false).await;
    let [root, alice, bob] = open.users(["root", "alice", "bob"]).await;
    open.grant_admin("root").await;
    let ab = open.create_direct(&alice, &bob).await;

    let allowed = open.send_rest(&alice, ab, "a", "hello there").await;
    let (status, json) = open.post_entry(&alice, ab, "r", text("reject me")).await;
    assert_eq!(
        (status, json["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("content_rejected"))
    );
    let flagged = open.send_rest(&alice, ab, "f", "flag me").await;
    // Fail-open: an error and a timeout both let the message through.
    open.send_rest(&alice, ab, "b", "boom goes the webhook").await;
    open.send_rest(&alice, ab, "h", "hang, webhook").await;
    let edit = NewEntry::Edit { target: allowed.seq, body: "reject this edit".into() };
    assert_eq!(open.post_entry(&alice, ab, "e", edit).await.0, StatusCode::UNPROCESSABLE_ENTITY);

    {
        let calls = seen.lock().unwrap();
        assert_eq!(calls.len(), 6);
        assert!(calls.iter().all(|(_, signed)| *signed), "every call is signed");
        let (first, _) = &calls[0];
        assert_eq!(first["kind"], "message");
        assert_eq!(first["sender"], alice.id.0);
        assert_eq!(first["conversation"], ab.0);
        assert_eq!(first["body"], "hello there");
        assert_eq!(calls[5].0["kind"], "edit");
    }
    let report = poll_until(
        "the webhook's flag in the queue",
        || async {
            let q: Reports = open
                .ok(Method::GET, "/v1/admin/reports", &root.token, None::<&()>, StatusCode::OK)
                .await;
            q.reports.into_iter().next()
        },
        || "nothing filed".to_owned(),
    )
    .await;
    assert_eq!(
        (report.seq, report.reason.as_str()),
        (Some(flagged.seq), "moderation webhook: looks like a scam")
    );
    let texts: Vec<String> = open
        .all_entries(&bob, ab, 100)
        .await
        .iter()
        .filter_map(|e| match &e.body {
            natter_proto::EntryBody::Message { body, .. } => Some(body.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["hello there", "flag me", "boom goes the webhook", "hang, webhook"]);

    // Fail-closed: the same failures refuse the message, retryably, and store nothing.
    let closed = start(true).await;
    let [carol, dave] = closed.users(["carol", "dave"]).await;
    let cd = closed.create_direct(&carol, &dave).await;
    for body in ["boom", "hang on"] {
        let (status, json) = closed.post_entry(&carol, cd, body, text(body)).await;
        assert_eq!(
            (status, json["code"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")),
            "{body}"
        );
    }
    closed.send_rest(&carol, cd, "ok", "fine").await;
    assert_eq!(closed.all_entries(&dave, cd, 100).await.len(), 2);
}
