//! Message search over REST (issue 15): `GET /v1/search` finds what the caller may read and
//! nothing else — a non-member, a member who joined after a message and one who left before
//! it never see it, and no query or filter (a guessed conversation id included) shows
//! another conversation's text, snippets or counts; hits carry marked snippets and page
//! with a cursor; bad input is a clear `bad_request`.

use natter_proto::rest::{AddMember, SearchResults};
use natter_testkit::{TestServer, TestUser};
use reqwest::{Method, StatusCode};
use serde_json::Value;

async fn search(server: &TestServer, user: &TestUser, query: &str) -> SearchResults {
    let path = format!("/v1/search?{query}");
    let (status, json) = server.call::<()>(Method::GET, &path, Some(&user.token), None).await;
    assert_eq!(status, StatusCode::OK, "{path}: {json}");
    serde_json::from_value(json).expect("results")
}

fn q(text: &str) -> String {
    format!("q={}", percent(text))
}

fn percent(text: &str) -> String {
    text.bytes()
        .map(
            |b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            },
        )
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_only_what_the_caller_may_read() {
    let server = TestServer::start().await;
    let [ann, bob, cy, dee] = server.users(["ann", "bob", "cy", "dee"]).await;
    server.contacts(&ann, &[&bob, &cy, &dee]).await;
    let group = server.create_group(&ann, "launch", &[&bob]).await;
    let early = server.send_rest(&ann, group, "s1", "the secret rocket plan").await.seq;
    // Cy joins after the first message; bob leaves before the third.
    let path = format!("/v1/conversations/{group}/members");
    let add = AddMember { user_id: cy.id, role: None };
    let (status, json) = server.call(Method::POST, &path, Some(&ann.token), Some(&add)).await;
    assert!(status.is_success(), "{json}");
    let middle = server.send_rest(&ann, group, "s2", "rocket launch on Friday").await.seq;
    let leave = format!("/v1/conversations/{group}/members/{}", bob.id);
    let (status, _) = server.call::<()>(Method::DELETE, &leave, Some(&bob.token), None).await;
    assert!(status.is_success());
    let late = server.send_rest(&ann, group, "s3", "rocket fuel arrived").await.seq;

    // Ann sees all three, newest first, with the hit marked in each snippet.
    let all = search(&server, &ann, &q("rocket")).await;
    assert_eq!(all.hits.iter().map(|h| h.seq).collect::<Vec<_>>(), vec![late, middle, early]);
    let first = &all.hits[2];
    assert_eq!(first.conversation, group);
    assert_eq!(first.sender, ann.id);
    let marked: Vec<&str> =
        first.snippet.iter().filter(|p| p.hit).map(|p| p.text.as_str()).collect();
    assert_eq!(marked, ["rocket"]);
    let text: String = first.snippet.iter().map(|p| p.text.as_str()).collect();
    assert_eq!(text, "the secret rocket plan");

    // Cy: from the seq they joined at. Bob: nothing since he left. Dee: never a member.
    let seqs = |r: SearchResults| r.hits.iter().map(|h| h.seq).collect::<Vec<_>>();
    assert_eq!(seqs(search(&server, &cy, &q("rocket")).await), vec![late, middle]);
    assert!(search(&server, &bob, &q("rocket")).await.hits.is_empty());
    for query in [
        q("rocket"),
        q("secret"),
        q("rock*"),
        q("\"rocket plan\""),
        format!("{}&conversation={group}", q("rocket")),
        format!("{}&conversation={group}&order=relevance", q("secret")),
    ] {
        let found = search(&server, &dee, &query).await;
        assert!(found.hits.is_empty() && found.next.is_none(), "{query}: {found:?}");
    }

    // Pages: one hit each, every hit once.
    let mut cursor: Option<String> = None;
    let mut paged = Vec::new();
    loop {
        let mut query = format!("{}&limit=1", q("rocket"));
        if let Some(c) = &cursor {
            query.push_str(&format!("&cursor={}", percent(c)));
        }
        let page = search(&server, &ann, &query).await;
        paged.extend(page.hits.iter().map(|h| h.seq));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(paged, vec![late, middle, early]);

    // Bad input: a clear bad_request each.
    for bad in [
        "q=".to_owned(),
        q(&"x".repeat(300)),
        format!("{}&limit=51", q("rocket")),
        format!("{}&order=sideways", q("rocket")),
        format!("{}&has=cats", q("rocket")),
        format!("{}&cursor=zzz", q("rocket")),
        "nothing=1".to_owned(),
    ] {
        let (status, json) = server
            .call::<()>(Method::GET, &format!("/v1/search?{bad}"), Some(&ann.token), None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {json}");
        assert_eq!(json["code"], Value::from("bad_request"));
    }
    let (status, _) = server.call::<()>(Method::GET, "/v1/search?q=rocket", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
