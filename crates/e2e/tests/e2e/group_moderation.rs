//! Group moderation (issue 13, part 6): a group's owner and admins delete others' messages,
//! mute a member for a time (their writes refused with `muted`), ban them (removed, and not
//! added again until unbanned), put the group in slow mode (a member's next message waits,
//! `too_many_requests` with the time left) and lock it (only admins post). A member, an
//! admin of another group and a stranger get nothing: outside the group every refusal is
//! the `not_found` of a conversation that does not exist.

use natter_proto::rest::{Ban, Member};
use natter_proto::{ConversationId, ConversationSummary, EntryBody, NewEntry};
use natter_testkit::{TestServer, TestUser};
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

fn text(body: &str) -> NewEntry {
    NewEntry::Message {
        body: body.to_owned(),
        reply_to: None,
        attachments: vec![],
        mentions: Vec::new(),
    }
}

async fn send(
    server: &TestServer,
    who: &TestUser,
    conv: ConversationId,
    id: &str,
) -> (StatusCode, Value) {
    server.post_entry(who, conv, id, text(id)).await
}

fn code(res: &(StatusCode, Value)) -> (StatusCode, &str) {
    (res.0, res.1["code"].as_str().unwrap_or(""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_and_admins_moderate_and_nobody_else_can() {
    let server = TestServer::start().await;
    let [alice, bob, carol, dave, erin] =
        server.users(["alice", "bob", "carol", "dave", "erin"]).await;
    server.contacts(&alice, &[&bob, &carol, &dave, &erin]).await;
    let g = server.create_group(&alice, "club", &[&bob, &carol, &dave]).await;
    let other = server.create_group(&erin, "erin's", &[&alice]).await;
    let path = |rest: &str| format!("/v1/conversations/{g}{rest}");
    let set_role = json!({"role": "admin"});
    assert_eq!(
        call(
            &server,
            Method::PATCH,
            &path(&format!("/members/{}", bob.id.0)),
            &alice,
            Some(set_role)
        )
        .await
        .0,
        StatusCode::OK
    );

    // Deleting others' messages: admins and the owner may, members may not.
    let carols = server.send_rest(&carol, g, "c1", "spam").await;
    let daves = server.send_rest(&dave, g, "d1", "hello").await;
    let by_member =
        server.post_entry(&carol, g, "x1", NewEntry::Delete { target: daves.seq }).await;
    assert_eq!(code(&by_member), (StatusCode::FORBIDDEN, "forbidden"));
    let by_admin = server.post_entry(&bob, g, "x2", NewEntry::Delete { target: carols.seq }).await;
    assert_eq!(by_admin.0, StatusCode::CREATED, "{}", by_admin.1);
    let log = server.all_entries(&dave, g, 100).await;
    let removed = log.iter().find(|e| e.seq == carols.seq).unwrap();
    assert!(removed.state.as_ref().unwrap().deleted, "a tombstone for everyone");
    let tomb = log
        .iter()
        .find(|e| matches!(e.body, EntryBody::Delete { target } if target == carols.seq))
        .unwrap();
    assert_eq!(tomb.sender, bob.id, "the deletion names the moderator, not the author");

    // Muting: carol's writes are refused with `muted` and the time left; deleting her own
    // still works; the member list and her summary show it; unmuting lifts it.
    let before_mute = server.send_rest(&carol, g, "c0", "before").await;
    let mute = |user: &TestUser| path(&format!("/members/{}/mute", user.id.0));
    let res = call(&server, Method::PUT, &mute(&carol), &bob, Some(json!({"for_secs": 600}))).await;
    assert_eq!(res.0, StatusCode::OK, "{}", res.1);
    let refused = send(&server, &carol, g, "c2").await;
    assert_eq!(code(&refused), (StatusCode::FORBIDDEN, "muted"));
    let left = refused.1["retry_after_ms"].as_u64().unwrap();
    assert!(left > 590_000 && left <= 600_000, "{left}");
    let react = NewEntry::Reaction { target: daves.seq, emoji: "👍".into(), remove: false };
    assert_eq!(code(&server.post_entry(&carol, g, "c3", react).await).1, "muted");
    let delete_own = NewEntry::Delete { target: before_mute.seq };
    assert_eq!(server.post_entry(&carol, g, "c0d", delete_own).await.0, StatusCode::CREATED);
    let members: Vec<Member> =
        server.ok(Method::GET, &path("/members"), &alice.token, None::<&()>, StatusCode::OK).await;
    let carol_row = members.iter().find(|m| m.user_id == carol.id).unwrap();
    assert!(carol_row.muted_until.unwrap() > natter_server_now() + 590_000);
    let summary: ConversationSummary =
        server.ok(Method::GET, &path(""), &carol.token, None::<&()>, StatusCode::OK).await;
    assert_eq!(summary.muted_until, carol_row.muted_until);
    // Who may mute whom: not a member, not the owner by an admin, not oneself, not too long.
    assert_eq!(
        call(&server, Method::PUT, &mute(&dave), &carol, Some(json!({"for_secs": 60}))).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&server, Method::PUT, &mute(&alice), &bob, Some(json!({"for_secs": 60}))).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&server, Method::PUT, &mute(&bob), &bob, Some(json!({"for_secs": 60}))).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        call(&server, Method::PUT, &mute(&dave), &bob, Some(json!({"for_secs": 0}))).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        call(&server, Method::PUT, &mute(&dave), &bob, Some(json!({"for_secs": 40_000_000})))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(call(&server, Method::DELETE, &mute(&carol), &bob, None).await.0, StatusCode::OK);
    assert_eq!(send(&server, &carol, g, "c4").await.0, StatusCode::CREATED);

    // Slow mode: a member's second message waits; admins are not slowed; bounds.
    let settings = path("/settings");
    let slow = json!({"slow_mode_secs": 3600});
    assert_eq!(
        call(&server, Method::PUT, &settings, &carol, Some(slow.clone())).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(call(&server, Method::PUT, &settings, &bob, Some(slow)).await.0, StatusCode::OK);
    assert_eq!(send(&server, &dave, g, "d3").await.0, StatusCode::CREATED);
    let slowed = send(&server, &dave, g, "d4").await;
    assert_eq!(code(&slowed), (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"));
    let wait = slowed.1["retry_after_ms"].as_u64().unwrap();
    assert!(wait > 3_500_000 && wait <= 3_600_000, "{wait}");
    assert_eq!(send(&server, &bob, g, "b1").await.0, StatusCode::CREATED);
    assert_eq!(send(&server, &bob, g, "b2").await.0, StatusCode::CREATED);
    let too_slow = json!({"slow_mode_secs": 86_401});
    assert_eq!(
        call(&server, Method::PUT, &settings, &alice, Some(too_slow)).await.0,
        StatusCode::BAD_REQUEST
    );
    let summary: ConversationSummary =
        server.ok(Method::GET, &path(""), &dave.token, None::<&()>, StatusCode::OK).await;
    assert_eq!(summary.slow_mode_secs, 3600);

    // Locked: only admins post; members still react.
    assert_eq!(
        call(&server, Method::PUT, &settings, &alice, Some(json!({"locked": true}))).await.0,
        StatusCode::OK
    );
    assert_eq!(code(&send(&server, &carol, g, "c5").await), (StatusCode::FORBIDDEN, "forbidden"));
    let news = server.send_rest(&bob, g, "b3", "announcement").await;
    let react = NewEntry::Reaction { target: news.seq, emoji: "🎉".into(), remove: false };
    assert_eq!(server.post_entry(&carol, g, "c6", react).await.0, StatusCode::CREATED);
    let log = server.all_entries(&carol, g, 100).await;
    assert!(
        log.iter().any(|e| matches!(
            e.body,
            EntryBody::GroupSettings { slow_mode_secs: 0, locked: true }
        ))
    );
    assert!(log.iter().any(
        |e| matches!(e.body, EntryBody::MemberMuted { user, until: Some(_) } if user == carol.id)
    ));
    assert!(log.iter().any(
        |e| matches!(e.body, EntryBody::MemberMuted { user, until: None } if user == carol.id)
    ));
    assert_eq!(
        call(&server, Method::PUT, &settings, &alice, Some(json!({}))).await.0,
        StatusCode::OK
    );

    // Banning: dave is removed (his sends are `not_found` now) and cannot be added again,
    // by the admin or the owner, until the ban is lifted.
    let ban = |user: &TestUser| path(&format!("/bans/{}", user.id.0));
    assert_eq!(call(&server, Method::PUT, &ban(&alice), &bob, None).await.0, StatusCode::FORBIDDEN);
    assert_eq!(
        call(&server, Method::PUT, &ban(&dave), &carol, None).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(call(&server, Method::PUT, &ban(&dave), &bob, None).await.0, StatusCode::OK);
    assert_eq!(code(&send(&server, &dave, g, "d5").await), (StatusCode::NOT_FOUND, "not_found"));
    let log = server.all_entries(&alice, g, 100).await;
    assert!(log.iter().any(
        |e| matches!(e.body, EntryBody::MemberRemoved { user, banned: true } if user == dave.id)
    ));
    let add = json!({"user_id": dave.id.0});
    for adder in [&bob, &alice] {
        let res = call(&server, Method::POST, &path("/members"), adder, Some(add.clone())).await;
        assert_eq!(code(&res), (StatusCode::FORBIDDEN, "forbidden"), "{}", res.1);
    }
    let bans: Vec<Ban> =
        server.ok(Method::GET, &path("/bans"), &bob.token, None::<&()>, StatusCode::OK).await;
    assert_eq!(
        bans.iter().map(|b| (b.user_id, b.banned_by)).collect::<Vec<_>>(),
        vec![(dave.id, bob.id)]
    );
    assert_eq!(
        call(&server, Method::GET, &path("/bans"), &carol, None).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&server, Method::DELETE, &ban(&dave), &carol, None).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&server, Method::DELETE, &ban(&dave), &alice, None).await.0,
        StatusCode::NO_CONTENT
    );
    let res = call(&server, Method::POST, &path("/members"), &alice, Some(add.clone())).await;
    assert_eq!(res.0, StatusCode::CREATED, "{}", res.1);
    assert_eq!(send(&server, &dave, g, "d6").await.0, StatusCode::CREATED);

    // Outside the group, everything is the conversation that does not exist: erin is an
    // admin of her own group, which changes nothing here; dave is banned again to check
    // that the ban list is private too.
    let nowhere = ConversationId(999_999);
    let cases: Vec<(Method, String, Option<Value>)> = vec![
        (Method::PUT, "/settings".into(), Some(json!({"locked": true}))),
        (Method::PUT, format!("/members/{}/mute", carol.id.0), Some(json!({"for_secs": 60}))),
        (Method::DELETE, format!("/members/{}/mute", carol.id.0), None),
        (Method::PUT, format!("/bans/{}", carol.id.0), None),
        (Method::DELETE, format!("/bans/{}", carol.id.0), None),
        (Method::GET, "/bans".into(), None),
    ];
    for (method, rest, body) in cases {
        let here = call(
            &server,
            method.clone(),
            &format!("/v1/conversations/{g}{rest}"),
            &erin,
            body.clone(),
        )
        .await;
        let absent = call(
            &server,
            method.clone(),
            &format!("/v1/conversations/{nowhere}{rest}"),
            &erin,
            body,
        )
        .await;
        assert_eq!(here.0, StatusCode::NOT_FOUND, "{method} {rest}: {}", here.1);
        assert_eq!(here, absent, "{method} {rest}");
    }
    // And erin moderates her own group only.
    let res = call(
        &server,
        Method::PUT,
        &format!("/v1/conversations/{other}/members/{}/mute", alice.id.0),
        &erin,
        Some(json!({"for_secs": 60})),
    )
    .await;
    assert_eq!(res.0, StatusCode::OK, "{}", res.1);
    assert_eq!(code(&send(&server, &alice, other, "a1").await).1, "muted");
    assert_eq!(send(&server, &alice, g, "a2").await.0, StatusCode::CREATED, "a mute is per group");
}

fn natter_server_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}
