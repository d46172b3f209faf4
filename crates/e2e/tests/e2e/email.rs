//! Email over SMTP (issue 14) against a real SMTP server on loopback (aiosmtpd, in
//! `smtp_receiver.py`): an address is verified through the signed link mailed to it; a
//! member away from the app gets one digest after the delay listing the unread
//! conversations (plain text and HTML, the HTML escaped), none when they read first, none
//! again within the period; the one-click unsubscribe link works and a tampered or expired
//! link is refused.

use natter_proto::rest::Me;
use natter_testkit::{TestServer, TestUser, poll_until};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::push::read_up_to;
use super::push_providers::python_stand_in;

const PUBLIC: &str = "https://chat.natter.test";

struct Smtp {
    _child: tokio::process::Child,
    port: u16,
    http: String,
}

impl Smtp {
    async fn start() -> Smtp {
        let port = natter_testkit::process::free_port();
        let (child, http) = python_stand_in("smtp_receiver.py", &[&port.to_string()]).await;
        Smtp { _child: child, port, http: format!("http://127.0.0.1:{http}/messages") }
    }

    async fn messages(&self) -> Vec<Value> {
        reqwest::get(&self.http).await.unwrap().json().await.unwrap()
    }

    /// Waits for the messages to `to` to number `n`; returns them.
    async fn wait(&self, to: &str, n: usize) -> Vec<Value> {
        poll_until(
            &format!("{n} emails to {to}"),
            || async { Some(self.to(to).await).filter(|m| m.len() >= n) },
            || "not yet".into(),
        )
        .await
    }

    async fn to(&self, to: &str) -> Vec<Value> {
        self.messages().await.into_iter().filter(|m| m["to"][0] == to).collect()
    }
}

/// The path and query of the first link to `PUBLIC` in `text`.
fn link_in(text: &str, path: &str) -> String {
    let start =
        text.find(&format!("{PUBLIC}{path}")).unwrap_or_else(|| panic!("no {path} link in {text}"));
    let link: String =
        text[start..].chars().take_while(|c| !c.is_whitespace() && *c != '>').collect();
    link.strip_prefix(PUBLIC).unwrap().to_owned()
}

async fn me(server: &TestServer, user: &TestUser) -> Me {
    server.ok(Method::GET, "/v1/me", &user.token, None::<&()>, StatusCode::OK).await
}

async fn verified(server: &TestServer, smtp: &Smtp, user: &TestUser, address: &str) {
    let body = json!({"email": address});
    let (status, json) =
        server.call(Method::PUT, "/v1/me/email", Some(&user.token), Some(&body)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
    let mail = smtp.wait(address, 1).await;
    assert_eq!(mail[0]["subject"], "Confirm your email address");
    let link = link_in(mail[0]["text"].as_str().unwrap(), "/v1/email/verify");
    let res = reqwest::get(format!("http://{}{link}", server.addr)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digests_come_once_after_the_delay_unless_read_and_unsubscribe_by_signed_link() {
    let smtp = Smtp::start().await;
    let smtp_url = format!("smtp://127.0.0.1:{}", smtp.port);
    let server = TestServer::start_with(move |c| {
        c.limits.receipt_flush_ms = 20;
        c.push.window_ms = 100;
        c.email = Some(natter_server::config::EmailSettings {
            smtp_url,
            from: "Natter <noreply@natter.test>".into(),
            public_url: PUBLIC.into(),
            digest_delay_ms: 1_000,
            digest_period_ms: 3_600_000,
            verify_ttl_secs: 600,
            templates_dir: None,
        });
    })
    .await;
    let [alice, bob, carol, dan] = server.users(["alice", "bob", "carol", "dan"]).await;
    server.contacts(&alice, &[&bob, &carol, &dan]).await;

    // Verification: unverified first, then verified by the mailed link; a tampered or
    // expired link is refused and changes nothing.
    let (status, _) = server
        .call(
            Method::PUT,
            "/v1/me/email",
            Some(&bob.token),
            Some(&json!({"email": "not an address"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = server
        .call(
            Method::PUT,
            "/v1/me/email",
            Some(&dan.token),
            Some(&json!({"email": "dan@natter.test"})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let mail = smtp.wait("dan@natter.test", 1).await;
    let link = link_in(mail[0]["text"].as_str().unwrap(), "/v1/email/verify");
    let forged = link.replace(&format!("user={}", dan.id), &format!("user={}", bob.id));
    let stale = link.replace("exp=", "exp=1");
    for bad in [forged, stale] {
        let res = reqwest::get(format!("http://{}{bad}", server.addr)).await.unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{bad}");
    }
    let on_file = me(&server, &dan).await.email.expect("an address on file");
    assert!(!on_file.verified, "tampered links verify nothing");
    let res = reqwest::get(format!("http://{}{link}", server.addr)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(me(&server, &dan).await.email.unwrap().verified);
    verified(&server, &smtp, &bob, "bob@natter.test").await;
    verified(&server, &smtp, &carol, "carol@natter.test").await;

    // Bob, away, gets one digest a second after the first message, listing both chats; the
    // group's title is escaped in the HTML part.
    let ab = server.create_direct(&alice, &bob).await;
    let group = server.create_group(&alice, "<b>launch</b>", &[&bob, &carol]).await;
    server.send_rest(&alice, ab, "a1", "lunch at noon?").await;
    server.send_rest(&alice, ab, "a2", "or one").await;
    let g1 = server.send_rest(&alice, group, "g1", "ship it").await.seq;
    // Carol reads the group before the delay: nothing for her.
    read_up_to(&server, &carol, group, g1).await;
    let digest = smtp.wait("bob@natter.test", 2).await.pop().unwrap();
    assert_eq!(digest["subject"], "Unread messages in 2 conversations");
    let text = digest["text"].as_str().unwrap();
    assert!(text.contains("- alice: 2 unread"), "{text}");
    assert!(text.contains("- <b>launch</b>: 1 unread, the latest: \"ship it\""), "{text}");
    let html = digest["html"].as_str().unwrap();
    assert!(
        html.contains("&lt;b&gt;launch&lt;&#x2f;b&gt;")
            || html.contains("&lt;b&gt;launch&lt;/b&gt;"),
        "{html}"
    );
    assert!(!html.contains("<b>launch"), "escaped: {html}");
    let headers = &digest["headers"];
    assert_eq!(headers["List-Unsubscribe-Post"], "List-Unsubscribe=One-Click");
    let unsubscribe =
        link_in(headers["List-Unsubscribe"].as_str().unwrap(), "/v1/email/unsubscribe");

    // Within the period, more unread mails nothing more; dan's digest (queued after) is the
    // barrier that shows carol's and bob's second came to nothing.
    server.send_rest(&alice, ab, "a3", "hello?").await;
    let ad = server.create_direct(&alice, &dan).await;
    server.send_rest(&alice, ad, "d1", "dan?").await;
    let dans = smtp.wait("dan@natter.test", 2).await;
    assert_eq!(dans[1]["subject"], "Unread messages in alice");
    assert_eq!(smtp.to("bob@natter.test").await.len(), 2, "one digest per period");
    assert_eq!(smtp.to("carol@natter.test").await.len(), 1, "carol read first: no digest");

    // Unsubscribe: the page only shows a button; a tampered link is refused; the one-click
    // POST turns digests off.
    let url = |path: &str| format!("http://{}{path}", server.addr);
    let client = reqwest::Client::new();
    let page = client.get(url(&unsubscribe)).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(me(&server, &bob).await.email.unwrap().digests, "a GET changes nothing");
    let tampered = unsubscribe.replace("email=bob", "email=rob");
    let res = client.post(url(&tampered)).body("List-Unsubscribe=One-Click").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res =
        client.post(url(&unsubscribe)).body("List-Unsubscribe=One-Click").send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(!me(&server, &bob).await.email.unwrap().digests);
}
