//! Account management (issue 13, part 2): the caller's devices with their last use, revoking
//! one (its token dies and its sessions end at once), and changing the password (every other
//! device is logged out; wrong current passwords back off like failed logins).

use natter_proto::close;
use natter_proto::rest::{ChangePassword, Credentials, Devices};
use natter_testkit::{PASSWORD, TestServer, WsClient, poll_until};
use reqwest::{Method, StatusCode};

async fn close_code(ws: &mut WsClient) -> u16 {
    let frame = ws.closed().await.expect("the server sent a close frame with a code");
    u16::from(frame.code)
}

async fn devices(server: &TestServer, token: &str) -> Devices {
    server.ok(Method::GET, "/v1/me/devices", token, None::<&()>, StatusCode::OK).await
}

async fn me_status(server: &TestServer, token: &str) -> StatusCode {
    server.call(Method::GET, "/v1/me", Some(token), None::<&()>).await.0
}

#[tokio::test]
async fn devices_are_listed_revoked_and_logged_out_by_a_password_change() {
    let server = TestServer::start().await;
    let [alice, bob] = server.users(["alice", "bob"]).await;
    let (phone, laptop) = (server.session("alice").await, server.session("alice").await);
    let mut phone_ws = server.ws_token(&phone.token).await;
    let mut laptop_ws = server.ws_token(&laptop.token).await;

    // Three logins, oldest first; the one asking is `current`, and its use is recorded.
    let list = devices(&server, &alice.token).await;
    let ids: Vec<_> = list.devices.iter().map(|d| d.device_id).collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(&ids[1..], [phone.device_id, laptop.device_id]);
    assert_eq!(list.current, ids[0]);
    let used = poll_until(
        "the current device's last use",
        || async {
            let list = devices(&server, &alice.token).await;
            list.devices.iter().find(|d| d.device_id == list.current)?.last_used_at
        },
        || "never recorded".to_owned(),
    )
    .await;
    assert!(used > 0);

    // Revoking the laptop ends its session and kills its token; another's device is not ours.
    let path = format!("/v1/me/devices/{}", laptop.device_id.0);
    let (status, _) = server.call(Method::DELETE, &path, Some(&alice.token), None::<&()>).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(close_code(&mut laptop_ws).await, close::UNAUTHENTICATED);
    assert_eq!(me_status(&server, &laptop.token).await, StatusCode::UNAUTHORIZED);
    let bobs = devices(&server, &bob.token).await.current;
    let path = format!("/v1/me/devices/{}", bobs.0);
    let (status, json) = server.call(Method::DELETE, &path, Some(&alice.token), None::<&()>).await;
    assert_eq!((status, json["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    assert_eq!(me_status(&server, &bob.token).await, StatusCode::OK);

    // A password change: the current one is checked, the new one follows the rules, and every
    // other device of the account is logged out.
    let change = |current: &str, new: &str| ChangePassword {
        current_password: current.to_owned(),
        new_password: new.to_owned(),
    };
    let put = |body: ChangePassword| {
        let server = &server;
        let token = alice.token.clone();
        async move { server.call(Method::PUT, "/v1/me/password", Some(&token), Some(&body)).await }
    };
    let (status, json) = put(change("not the password", "a brand new passphrase")).await;
    assert_eq!((status, json["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")));
    let (status, json) = put(change(PASSWORD, "short")).await;
    assert_eq!((status, json["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")));
    assert_eq!(me_status(&server, &phone.token).await, StatusCode::OK, "refusals change nothing");
    let (status, json) = put(change(PASSWORD, "a brand new passphrase")).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{json}");
    assert_eq!(close_code(&mut phone_ws).await, close::UNAUTHENTICATED);
    assert_eq!(me_status(&server, &phone.token).await, StatusCode::UNAUTHORIZED);
    assert_eq!(me_status(&server, &alice.token).await, StatusCode::OK, "the asking device stays");
    assert_eq!(devices(&server, &alice.token).await.devices.len(), 1);

    let login = |password: &str| Credentials {
        handle: "alice".to_owned(),
        password: password.to_owned(),
        device: None,
    };
    let (status, _) = server.call(Method::POST, "/v1/sessions", None, Some(&login(PASSWORD))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the old password is gone");
    let (status, _) = server
        .call(Method::POST, "/v1/sessions", None, Some(&login("a brand new passphrase")))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    server.stop().await;
}

#[tokio::test]
async fn wrong_current_passwords_back_off_like_failed_logins() {
    let server = TestServer::start_with(|c| c.limits.login_failures_per_handle = 2).await;
    let [alice] = server.users(["alice"]).await;
    let wrong = ChangePassword {
        current_password: "guess guess guess".to_owned(),
        new_password: "another passphrase".to_owned(),
    };
    let mut codes = Vec::new();
    for _ in 0..4 {
        let (status, _) =
            server.call(Method::PUT, "/v1/me/password", Some(&alice.token), Some(&wrong)).await;
        codes.push(status);
    }
    assert_eq!(&codes[..2], [StatusCode::FORBIDDEN, StatusCode::FORBIDDEN]);
    assert!(codes[2..].contains(&StatusCode::TOO_MANY_REQUESTS), "then it backs off: {codes:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_deleted_account_ends_everywhere_keeps_its_messages_and_frees_its_handle() {
    // Housekeeping every second with no grace: the handle comes free at the next run.
    let server = TestServer::start_with(|c| {
        c.limits.media_gc_interval_secs = 1;
        c.limits.deleted_handle_grace_secs = 0;
    })
    .await;
    let [alice, bob] = server.users(["alice", "bob"]).await;
    let conv = server.create_direct(&alice, &bob).await;
    let ack = server.send_rest(&alice, conv, "c1", "goodbye").await;
    let phone = server.session("alice").await;
    let mut phone_ws = server.ws_token(&phone.token).await;

    let delete =
        |password: &str| natter_proto::rest::DeleteAccount { password: password.to_owned() };
    let (status, json) =
        server.call(Method::DELETE, "/v1/me", Some(&alice.token), Some(&delete("wrong one"))).await;
    assert_eq!((status, json["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")));
    let (status, _) =
        server.call(Method::DELETE, "/v1/me", Some(&alice.token), Some(&delete(PASSWORD))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // Every session and token is gone; the handle no longer finds anyone.
    assert_eq!(close_code(&mut phone_ws).await, close::UNAUTHENTICATED);
    for token in [&alice.token, &phone.token] {
        assert_eq!(me_status(&server, token).await, StatusCode::UNAUTHORIZED);
    }
    let login =
        Credentials { handle: "alice".to_owned(), password: PASSWORD.to_owned(), device: None };
    let (status, _) = server.call(Method::POST, "/v1/sessions", None, Some(&login)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) =
        server.call(Method::GET, "/v1/users/alice", Some(&bob.token), None::<&()>).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Bob still reads her message, from a user shown as deleted, and cannot start anew.
    let log = server.all_entries(&bob, conv, 50).await;
    assert!(log.iter().any(|e| e.seq == ack.seq && e.sender == alice.id));
    let path = format!("/v1/users?ids={}", alice.id.0);
    let users: natter_proto::rest::Users =
        server.ok(Method::GET, &path, &bob.token, None::<&()>, StatusCode::OK).await;
    assert!(users.users[0].deleted, "{users:?}");
    let body = natter_proto::rest::CreateConversation::Direct { peer: alice.id };
    let (status, _) =
        server.call(Method::POST, "/v1/conversations", Some(&bob.token), Some(&body)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // After the grace period the handle can be registered again (by someone new).
    let again = Credentials {
        handle: "alice".to_owned(),
        password: "a new alice entirely".to_owned(),
        device: None,
    };
    let user: natter_proto::rest::User = poll_until(
        "the handle freed",
        || async {
            let (status, json) =
                server.call(Method::POST, "/v1/accounts", None, Some(&again)).await;
            (status == StatusCode::CREATED).then(|| serde_json::from_value(json).expect("a user"))
        },
        || "still taken".to_owned(),
    )
    .await;
    assert_ne!(user.user_id, alice.id);
    server.stop().await;
}
