//! Profiles (issue 13, part 1): a display name and a status text set with
//! `PATCH /v1/me/profile`, read back by id, by handle and in conversation summaries, found by
//! prefix among one's contacts (`GET /v1/users?q=`), and pushed live as a `profile` frame to
//! the sessions of those who share a conversation with the user, and to nobody else.

use natter_proto::rest::{ProfileUpdate, User, Users};
use natter_proto::{ClientFrame, ConversationSummary, ServerFrame};
use natter_testkit::{TestServer, TestUser};
use reqwest::{Method, StatusCode};

async fn set(
    server: &TestServer,
    user: &TestUser,
    name: Option<&str>,
    status: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let update = ProfileUpdate {
        display_name: name.map(str::to_owned),
        status_text: status.map(str::to_owned),
        avatar: None,
    };
    server.call(Method::PATCH, "/v1/me/profile", Some(&user.token), Some(&update)).await
}

async fn search(server: &TestServer, user: &TestUser, q: &str) -> Vec<String> {
    let path = format!("/v1/users?q={q}");
    let found: Users =
        server.ok(Method::GET, &path, &user.token, None::<&()>, StatusCode::OK).await;
    found.users.into_iter().map(|u| u.handle).collect()
}

#[tokio::test]
async fn profiles_are_set_read_searched_and_pushed_to_contacts_only() {
    let server = TestServer::start_with(|c| {
        c.limits.search_per_min = 1;
        c.limits.search_burst = 4;
    })
    .await;
    let [alice, bob, carol] = server.users(["alice", "bob", "carol"]).await;
    let conv = server.create_direct(&alice, &bob).await;
    let mut bob_ws = server.synced_ws(&bob).await;
    let mut carol_ws = server.synced_ws(&carol).await;
    let mut alice_ws = server.synced_ws(&alice).await;

    let (status, json) =
        set(&server, &alice, Some("  Alice Liddell "), Some("down the rabbit hole")).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let want = User {
        user_id: alice.id,
        handle: "alice".to_owned(),
        display_name: Some("Alice Liddell".to_owned()),
        status_text: Some("down the rabbit hole".to_owned()),
        avatar: None,
        deleted: false,
    };
    assert_eq!(serde_json::from_value::<User>(json).unwrap(), want, "trimmed");

    // Live: to the contact and to alice's own sessions; carol shares nothing with her.
    for ws in [&mut bob_ws, &mut alice_ws] {
        let frame = ws.next_matching(|f| matches!(f, ServerFrame::Profile { .. })).await;
        assert_eq!(frame, ServerFrame::Profile { user: want.clone() });
    }
    let pong = carol_ws.request(|req_id| ClientFrame::Ping { req_id: Some(req_id) }).await;
    assert!(matches!(pong, ServerFrame::Pong { .. }), "{pong:?}");
    let before = carol_ws.take_stashed();
    assert!(
        !before.iter().any(|f| matches!(f, ServerFrame::Profile { .. })),
        "no profile frame for a stranger: {before:?}"
    );

    // Read back by id, by handle, and as the peer of bob's conversation.
    let path = format!("/v1/users?ids={}", alice.id.0);
    let by_id: Users = server.ok(Method::GET, &path, &bob.token, None::<&()>, StatusCode::OK).await;
    assert_eq!(by_id.users, vec![want.clone()]);
    let by_handle: User =
        server.ok(Method::GET, "/v1/users/alice", &bob.token, None::<&()>, StatusCode::OK).await;
    assert_eq!(by_handle, want);
    let path = format!("/v1/conversations/{conv}");
    let summary: ConversationSummary =
        server.ok(Method::GET, &path, &bob.token, None::<&()>, StatusCode::OK).await;
    assert_eq!(summary.peer, Some(want.clone()));

    // Search: by handle or display name prefix, among contacts only.
    assert_eq!(search(&server, &bob, "ALI").await, ["alice"]);
    assert_eq!(
        search(&server, &bob, "liddell").await,
        Vec::<String>::new(),
        "a prefix, not a substring"
    );
    assert_eq!(search(&server, &bob, "alice%20l").await, ["alice"], "the display name");
    assert_eq!(search(&server, &carol, "ali").await, Vec::<String>::new(), "not a contact");
    // A burst of 4 per user (bob used 3), then the rate limit.
    assert_eq!(search(&server, &bob, "b").await, Vec::<String>::new());
    let (status, json) =
        server.call(Method::GET, "/v1/users?q=a", Some(&bob.token), None::<&()>).await;
    assert_eq!(
        (status, json["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("too_many_requests"))
    );

    // Bad values: too long, control characters, an empty query, both ids and q.
    let long = "x".repeat(65);
    let (status, json) = set(&server, &alice, Some(&long), None).await;
    assert_eq!((status, json["code"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large")));
    let (status, json) = set(&server, &alice, None, Some("tab\there")).await;
    assert_eq!((status, json["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")));
    for path in ["/v1/users?q=%20", "/v1/users?ids=1&q=a", "/v1/users"] {
        let (status, _) = server.call(Method::GET, path, Some(&carol.token), None::<&()>).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
    }
    // Nothing changed by the refusals; an empty field clears it.
    let (status, json) = set(&server, &alice, None, Some("")).await;
    assert_eq!(status, StatusCode::OK);
    let now: User = serde_json::from_value(json).unwrap();
    assert_eq!((now.display_name.as_deref(), now.status_text), (Some("Alice Liddell"), None));
    let (status, _) =
        server.call(Method::PATCH, "/v1/me/profile", None, Some(&ProfileUpdate::default())).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    server.stop().await;
}

#[tokio::test]
async fn an_avatar_is_an_own_image_shown_by_signed_urls() {
    let server = TestServer::start_with(|c| {
        c.media_secret = Some("profile-test-secret-0123456789abcdef0123".to_owned());
    })
    .await;
    let [alice, bob] = server.users(["alice", "bob"]).await;
    server.create_direct(&alice, &bob).await;
    let mut bob_ws = server.synced_ws(&bob).await;
    let upload = |user: &TestUser, bytes: Vec<u8>| {
        let server = &server;
        let token = user.token.clone();
        async move {
            let (status, json) = server.upload(&token, bytes, None, None).await;
            assert_eq!(status, StatusCode::CREATED, "{json}");
            json["id"].as_str().expect("an id").to_owned()
        }
    };
    let pic = upload(&alice, crate::media::png(600, 400)).await;
    let doc = upload(&alice, crate::media::pdf(2_000, 1)).await;
    let bobs = upload(&bob, crate::media::png(64, 64)).await;
    let avatar = |id: &str| ProfileUpdate { avatar: Some(id.to_owned()), ..Default::default() };
    let patch = |update: ProfileUpdate| {
        let server = &server;
        let token = alice.token.clone();
        async move { server.call(Method::PATCH, "/v1/me/profile", Some(&token), Some(&update)).await }
    };

    let (status, json) = patch(avatar(&doc)).await;
    assert_eq!(
        (status, json["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request")),
        "not an image"
    );
    let (status, json) = patch(avatar(&bobs)).await;
    assert_eq!(
        (status, json["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found")),
        "bob's image"
    );
    let (status, json) = patch(avatar(&pic)).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let me: User = serde_json::from_value(json).unwrap();
    let got = me.avatar.expect("an avatar");
    assert_eq!(got.id, pic);

    // Bob learns it live, and loads both sizes by their signed URLs.
    let ServerFrame::Profile { user } =
        bob_ws.next_matching(|f| matches!(f, ServerFrame::Profile { .. })).await
    else {
        unreachable!()
    };
    let live = user.avatar.expect("the avatar in the frame");
    for (url, max) in [(live.url.expect("url"), 600), (live.thumbnail_url.expect("thumbnail"), 320)]
    {
        let res = server.fetch(&url, None).await;
        assert_eq!(res.status(), StatusCode::OK, "{url}");
        let bytes = res.bytes().await.unwrap();
        let img = image::load_from_memory(&bytes).expect("an image");
        assert!(img.width() <= max && img.width() > 0, "{url}: {}", img.width());
        // A tampered signature is refused.
        let res = server.fetch(&url.replace("s=", "s=0"), None).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{url}");
    }
    // The summary's peer carries it too; clearing it removes it.
    let page: serde_json::Value =
        server.ok(Method::GET, "/v1/conversations", &bob.token, None::<&()>, StatusCode::OK).await;
    assert_eq!(page["conversations"][0]["peer"]["avatar"]["id"], serde_json::json!(pic));
    assert!(page["conversations"][0]["peer"]["avatar"]["url"].as_str().is_some());
    let (status, json) = patch(avatar("")).await;
    assert_eq!((status, json.get("avatar")), (StatusCode::OK, None));
    server.stop().await;
}
