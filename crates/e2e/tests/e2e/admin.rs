//! Reports and server administration (issue 13, parts 4 and 5). Members report messages and
//! users; the queue keeps what was reported as it was (an edit or deletion afterwards hides
//! nothing). Server administrators list users, suspend and ban (sessions end, logins are
//! refused, messages optionally removed), remove any message (every member's client sees
//! the tombstone), resolve reports, and read the audit log. Everyone else — a member, a
//! group's owner, a suspended user — gets nothing: the admin routes answer them exactly as
//! a route that does not exist.

use natter_proto::close;
use natter_proto::rest::{AdminUsers, AuditLog, Credentials, ReportId, Reports, Suspended};
use natter_proto::{EntryBody, NewEntry};
use natter_testkit::{PASSWORD, TestServer, TestUser};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn call(
    server: &TestServer,
    method: Method,
    path: &str,
    who: &TestUser,
    body: Option<Value>,
) -> (StatusCode, Value) {
    server.call(method, path, Some(&who.token), body.as_ref()).await
}

async fn login(server: &TestServer, handle: &str) -> (StatusCode, Value) {
    let creds = Credentials { handle: handle.into(), password: PASSWORD.into(), device: None };
    server.call(Method::POST, "/v1/sessions", None, Some(&creds)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_reach_the_queue_and_administrators_act_on_them() {
    let server = TestServer::start().await;
    let [root, alice, bob, carol] = server.users(["root", "alice", "bob", "carol"]).await;
    server.grant_admin("root").await;
    let ab = server.create_direct(&alice, &bob).await;
    let group = server.create_group(&alice, "club", &[&bob]).await;
    let nasty = server.send_rest(&bob, ab, "b1", "something nasty").await;
    let in_group = server.send_rest(&bob, group, "b2", "more of it").await;
    server.send_rest(&alice, group, "a1", "alice's own").await;

    // Reports: a message of one's conversation, or a user one shares a conversation with.
    let report = |body: Value| async {
        call(&server, Method::POST, "/v1/reports", &alice, Some(body)).await
    };
    let (status, json) =
        report(json!({"conversation": ab.0, "seq": nasty.seq, "reason": "harassment"})).await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
    let by_message: ReportId = serde_json::from_value(json).unwrap();
    let (status, _) = report(json!({"user": bob.id.0, "reason": "spam account"})).await;
    assert_eq!(status, StatusCode::CREATED);
    // Carol is in neither: the same not_found as for things that do not exist.
    let carol_reports = |body: Value| async {
        call(&server, Method::POST, "/v1/reports", &carol, Some(body)).await
    };
    let theirs =
        carol_reports(json!({"conversation": ab.0, "seq": nasty.seq, "reason": "x"})).await;
    let nowhere = carol_reports(json!({"conversation": 999_999, "seq": 1, "reason": "x"})).await;
    assert_eq!(theirs.0, StatusCode::NOT_FOUND);
    assert_eq!(theirs, nowhere);
    let stranger = carol_reports(json!({"user": bob.id.0, "reason": "x"})).await;
    let nobody = carol_reports(json!({"user": 999_999, "reason": "x"})).await;
    assert_eq!(stranger.0, StatusCode::NOT_FOUND);
    assert_eq!(stranger, nobody);
    assert_eq!(report(json!({"user": bob.id.0, "reason": "  "})).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(report(json!({"reason": "which?"})).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(
        report(json!({"user": bob.id.0, "reason": "x".repeat(1001)})).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );

    // Bob edits, then deletes, the reported message: the queue still shows what was said.
    let edit = NewEntry::Edit { target: nasty.seq, body: "nothing to see".into() };
    assert_eq!(server.post_entry(&bob, ab, "e1", edit).await.0, StatusCode::CREATED);
    assert_eq!(
        server.post_entry(&bob, ab, "d1", NewEntry::Delete { target: nasty.seq }).await.0,
        StatusCode::CREATED
    );
    let queue: Reports = server
        .ok(Method::GET, "/v1/admin/reports?status=open", &root.token, None::<&()>, StatusCode::OK)
        .await;
    assert_eq!(queue.reports.len(), 2);
    let filed = queue.reports.iter().find(|r| r.id == by_message.id).unwrap();
    assert_eq!(filed.snapshot["body"], "something nasty");
    assert_eq!(
        (filed.reporter_handle.as_deref(), filed.subject_handle.as_str()),
        (Some("alice"), "bob")
    );
    assert_eq!(filed.reason, "harassment");

    // Nobody but an administrator sees the admin API: the answer is that of a route that
    // does not exist, for a member and for a group's owner alike.
    let missing = call(&server, Method::GET, "/v1/admin/no-such-thing", &alice, None).await;
    assert_eq!(missing.0, StatusCode::NOT_FOUND);
    let admin_routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/v1/admin/users".into(), None),
        (Method::GET, "/v1/admin/reports".into(), None),
        (Method::GET, "/v1/admin/audit".into(), None),
        (
            Method::POST,
            format!("/v1/admin/users/{}/suspend", bob.id.0),
            Some(json!({"reason": "x"})),
        ),
        (Method::POST, format!("/v1/admin/users/{}/restore", bob.id.0), None),
        (Method::DELETE, format!("/v1/admin/conversations/{group}/entries/{}", in_group.seq), None),
        (
            Method::POST,
            format!("/v1/admin/reports/{}/resolve", by_message.id),
            Some(json!({"status": "dismissed"})),
        ),
    ];
    for (method, path, body) in &admin_routes {
        for who in [&alice, &bob] {
            let res = call(&server, method.clone(), path, who, body.clone()).await;
            assert_eq!(res, missing, "{method} {path} as {}", who.handle);
        }
    }

    // Users, by id, searchable.
    let all: AdminUsers =
        server.ok(Method::GET, "/v1/admin/users", &root.token, None::<&()>, StatusCode::OK).await;
    assert_eq!(all.users.len(), 4);
    assert!(all.users.iter().find(|u| u.user.handle == "root").unwrap().admin);
    let found: AdminUsers = server
        .ok(Method::GET, "/v1/admin/users?q=bo", &root.token, None::<&()>, StatusCode::OK)
        .await;
    assert_eq!(found.users.iter().map(|u| u.user.user_id).collect::<Vec<_>>(), vec![bob.id]);

    // Removing any message: alice's live session sees the tombstone, sent by root.
    let mut alice_ws = server.synced_ws(&alice).await;
    let path = format!("/v1/admin/conversations/{group}/entries/{}", in_group.seq);
    let res = call(&server, Method::DELETE, &path, &root, None).await;
    assert_eq!(res.0, StatusCode::OK, "{}", res.1);
    let tomb = alice_ws.next_entry().await;
    assert_eq!((tomb.sender, tomb.body), (root.id, EntryBody::Delete { target: in_group.seq }));
    assert_eq!(call(&server, Method::DELETE, &path, &root, None).await.0, StatusCode::CONFLICT);

    // A ban: bob's live session ends, his token dies, his login is refused, his messages
    // are removed from every conversation.
    let more = server.send_rest(&bob, group, "b3", "and again").await;
    let mut bob_ws = server.synced_ws(&bob).await;
    let body = json!({"reason": "spam", "remove_messages": true});
    let res = call(
        &server,
        Method::POST,
        &format!("/v1/admin/users/{}/suspend", bob.id.0),
        &root,
        Some(body),
    )
    .await;
    assert_eq!(res.0, StatusCode::OK, "{}", res.1);
    let done: Suspended = serde_json::from_value(res.1).unwrap();
    assert_eq!(done, Suspended { devices: 1, messages_removed: 1 });
    let closed = bob_ws.closed().await.expect("a close frame");
    assert_eq!(u16::from(closed.code), close::UNAUTHENTICATED);
    assert_eq!(
        server.call(Method::GET, "/v1/me", Some(&bob.token), None::<&()>).await.0,
        StatusCode::UNAUTHORIZED
    );
    let refused = login(&server, "bob").await;
    assert_eq!((refused.0, refused.1["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")));
    let log = server.all_entries(&alice, group, 100).await;
    assert!(log.iter().find(|e| e.seq == more.seq).unwrap().state.as_ref().unwrap().deleted);
    // A suspended user's old token reaches nothing, the admin API included.
    for (method, path, body) in &admin_routes[..3] {
        let res = call(&server, method.clone(), path, &bob, body.clone()).await;
        assert_eq!(res.0, StatusCode::UNAUTHORIZED, "{method} {path}");
    }
    let listed: AdminUsers = server
        .ok(Method::GET, "/v1/admin/users?q=bob", &root.token, None::<&()>, StatusCode::OK)
        .await;
    assert!(listed.users[0].banned);
    // Administrators cannot suspend each other or themselves.
    let res = call(
        &server,
        Method::POST,
        &format!("/v1/admin/users/{}/suspend", root.id.0),
        &root,
        Some(json!({"reason": "x"})),
    )
    .await;
    assert_eq!(res.0, StatusCode::BAD_REQUEST);

    // Restored: bob logs in again. A temporary suspension then ends by itself.
    let path = format!("/v1/admin/users/{}/restore", bob.id.0);
    assert_eq!(call(&server, Method::POST, &path, &root, None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(login(&server, "bob").await.0, StatusCode::CREATED);
    let body = json!({"reason": "cool off", "for_secs": 3600});
    let res = call(
        &server,
        Method::POST,
        &format!("/v1/admin/users/{}/suspend", carol.id.0),
        &root,
        Some(body),
    )
    .await;
    assert_eq!(res.0, StatusCode::OK);
    assert_eq!(login(&server, "carol").await.0, StatusCode::FORBIDDEN);
    let listed: AdminUsers = server
        .ok(Method::GET, "/v1/admin/users?q=carol", &root.token, None::<&()>, StatusCode::OK)
        .await;
    assert!(listed.users[0].suspended_until.is_some() && !listed.users[0].banned);

    // Resolving: out of the open queue; the audit log has every action, newest first.
    let path = format!("/v1/admin/reports/{}/resolve", by_message.id);
    let res = call(
        &server,
        Method::POST,
        &path,
        &root,
        Some(json!({"status": "resolved", "note": "banned"})),
    )
    .await;
    assert_eq!(res.0, StatusCode::NO_CONTENT, "{}", res.1);
    assert_eq!(
        call(
            &server,
            Method::POST,
            "/v1/admin/reports/99999/resolve",
            &root,
            Some(json!({"status": "dismissed"}))
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    let queue: Reports = server
        .ok(Method::GET, "/v1/admin/reports?status=open", &root.token, None::<&()>, StatusCode::OK)
        .await;
    assert_eq!(queue.reports.len(), 1);
    let all: Reports = server
        .ok(Method::GET, "/v1/admin/reports?status=all", &root.token, None::<&()>, StatusCode::OK)
        .await;
    assert_eq!(all.reports.len(), 2);
    let audit: AuditLog =
        server.ok(Method::GET, "/v1/admin/audit", &root.token, None::<&()>, StatusCode::OK).await;
    let actions: Vec<&str> = audit.entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "resolve_report",
            "suspend",
            "restore",
            "remove_messages",
            "ban",
            "remove_message",
            "grant_admin"
        ]
    );
    assert!(audit.entries[..6].iter().all(|e| e.actor == Some(root.id)));
    assert_eq!(audit.entries[6].actor, None, "granted from the command line");
}

#[tokio::test]
async fn the_admins_setting_grants_at_start() {
    let mut server =
        TestServer::start_with(|c| c.admins = vec!["Boss".into(), "ghost".into()]).await;
    let [boss] = server.users(["boss"]).await;
    let path = "/v1/admin/users";
    assert_eq!(call(&server, Method::GET, path, &boss, None).await.0, StatusCode::NOT_FOUND);
    server.terminate().await;
    server.restart().await;
    assert_eq!(call(&server, Method::GET, path, &boss, None).await.0, StatusCode::OK);
}
