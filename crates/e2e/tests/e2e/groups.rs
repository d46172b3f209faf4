//! Conversations and groups: one direct conversation per pair; groups with owner, admins and
//! members, where every membership change is a log entry (G1: it has a `seq`, live members
//! receive it, sync carries it) and permissions are checked; a removed member loses access at
//! once but is told; the member cap (G7); the conversation list, most recent first and paged.

use std::collections::BTreeMap;

use natter_proto::rest::{
    AddMember, ConversationPage, CreateConversation, Member, SetCursors, SyncRequest, SyncResponse,
    UpdateConversation, UpdateMember,
};
use natter_proto::{
    Ack, ClientFrame, ConversationId, ConversationKind, ConversationSummary, Entry, EntryBody,
    ErrorCode, NewEntry, Role, Seq, ServerFrame, UserId,
};
use natter_testkit::{TestServer, TestUser, WsClient, assert_contiguous};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A REST call as `user`; the status and the body.
async fn call<B: Serialize>(
    server: &TestServer,
    method: Method,
    path: &str,
    user: &TestUser,
    body: Option<&B>,
) -> (StatusCode, Value) {
    server.call(method, path, Some(&user.token), body).await
}

/// A REST call expected to answer `status` with a body of type `R`.
async fn expect<B: Serialize, R: DeserializeOwned>(
    server: &TestServer,
    method: Method,
    path: &str,
    user: &TestUser,
    body: Option<&B>,
    status: StatusCode,
) -> R {
    server.ok(method, path, &user.token, body, status).await
}

/// A REST call expected to fail with `status` and `code`.
async fn refused<B: Serialize>(
    server: &TestServer,
    method: Method,
    path: &str,
    user: &TestUser,
    body: Option<&B>,
    status: StatusCode,
    code: &str,
) {
    let (got, json) = call(server, method.clone(), path, user, body).await;
    assert_eq!(got, status, "{method} {path} as {}: {json}", user.handle);
    assert_eq!(json["code"], code, "{method} {path} as {}: {json}", user.handle);
}

async fn create(
    server: &TestServer,
    user: &TestUser,
    req: &CreateConversation,
) -> (StatusCode, Value) {
    call(server, Method::POST, "/v1/conversations", user, Some(req)).await
}

fn group(title: &str, members: &[&TestUser]) -> CreateConversation {
    CreateConversation::Group {
        title: title.to_owned(),
        members: members.iter().map(|m| m.id).collect(),
    }
}

async fn summary(
    server: &TestServer,
    user: &TestUser,
    conv: ConversationId,
) -> ConversationSummary {
    let path = format!("/v1/conversations/{conv}");
    expect::<(), _>(server, Method::GET, &path, user, None, StatusCode::OK).await
}

async fn members(
    server: &TestServer,
    user: &TestUser,
    conv: ConversationId,
) -> Vec<(UserId, Role)> {
    let path = format!("/v1/conversations/{conv}/members");
    let list: Vec<Member> =
        expect::<(), _>(server, Method::GET, &path, user, None, StatusCode::OK).await;
    list.into_iter().map(|m| (m.user_id, m.role)).collect()
}

async fn add_member(
    server: &TestServer,
    actor: &TestUser,
    conv: ConversationId,
    user: &TestUser,
    role: Option<Role>,
) -> (StatusCode, Value) {
    let body = AddMember { user_id: user.id, role };
    let path = format!("/v1/conversations/{conv}/members");
    call(server, Method::POST, &path, actor, Some(&body)).await
}

async fn set_role(
    server: &TestServer,
    actor: &TestUser,
    conv: ConversationId,
    user: &TestUser,
    role: Role,
) -> (StatusCode, Value) {
    let path = format!("/v1/conversations/{conv}/members/{}", user.id);
    call(server, Method::PATCH, &path, actor, Some(&UpdateMember { role })).await
}

async fn remove_member(
    server: &TestServer,
    actor: &TestUser,
    conv: ConversationId,
    user: &TestUser,
) -> (StatusCode, Value) {
    let path = format!("/v1/conversations/{conv}/members/{}", user.id);
    call::<()>(server, Method::DELETE, &path, actor, None).await
}

async fn set_title(
    server: &TestServer,
    actor: &TestUser,
    conv: ConversationId,
    title: &str,
) -> (StatusCode, Value) {
    let body = UpdateConversation { title: title.to_owned() };
    let path = format!("/v1/conversations/{conv}");
    call(server, Method::PATCH, &path, actor, Some(&body)).await
}

/// Checks an error answer's status and code.
fn assert_error(status: StatusCode, json: &Value, want_status: StatusCode, want_code: &str) {
    assert_eq!(status, want_status, "{json}");
    assert_eq!(json["code"], want_code, "{json}");
}

/// The ack in a successful answer, checked against the expected status and seq.
fn ack(res: (StatusCode, Value), status: StatusCode, seq: Seq) -> Ack {
    assert_eq!(res.0, status, "{}", res.1);
    let ack: Ack = serde_json::from_value(res.1).expect("ack");
    assert_eq!(ack.seq, seq, "{ack:?}");
    ack
}

/// What an entry says and who caused it: what live delivery, sync and history must agree on.
type Said = (Seq, UserId, EntryBody);

fn said(e: &Entry) -> Said {
    (e.seq, e.sender, e.body.clone())
}

/// The next `n` frames, which must all be entries of `conv`.
async fn take(ws: &mut WsClient, conv: ConversationId, n: usize) -> Vec<Said> {
    let mut out = Vec::new();
    for _ in 0..n {
        match ws.next().await {
            ServerFrame::Entry { entry } => {
                assert_eq!(entry.conversation, conv, "{entry:?}");
                out.push(said(&entry));
            }
            other => panic!("expected an entry of {conv}, got {other:?}"),
        }
    }
    out
}

/// A barrier: `frank` writes in his direct conversation with the owner of `ws`, after
/// everything before; it must be the very next frame that session gets, so nothing else
/// (no entry of a conversation it has left) came before it.
async fn barrier(server: &TestServer, frank: &TestUser, ws: &mut WsClient, conv: ConversationId) {
    let ack = server.send_rest(frank, conv, "barrier", "barrier").await;
    match ws.next().await {
        ServerFrame::Entry { entry } => {
            assert_eq!((entry.conversation, entry.seq), (conv, ack.seq), "{entry:?}");
        }
        other => panic!("expected the barrier entry, got {other:?}"),
    }
}

#[tokio::test]
async fn direct_is_one_per_pair_and_cannot_change_members() {
    let server = TestServer::start().await;
    let [alice, bob, carol] = server.users(["alice", "bob", "carol"]).await;

    let (status, json) =
        create(&server, &alice, &CreateConversation::Direct { peer: bob.id }).await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
    let first: ConversationSummary = serde_json::from_value(json).expect("summary");
    assert_eq!(first.kind, ConversationKind::Direct);
    assert_eq!((first.title.as_deref(), first.role, first.last_seq), (None, Role::Member, 1));
    // Again, from either side: the same conversation, 200 instead of 201.
    for (who, peer) in [(&bob, &alice), (&alice, &bob), (&bob, &alice)] {
        let (status, json) =
            create(&server, who, &CreateConversation::Direct { peer: peer.id }).await;
        assert_eq!(status, StatusCode::OK, "{json}");
        let again: ConversationSummary = serde_json::from_value(json).expect("summary");
        assert_eq!((again.id, again.last_seq), (first.id, 1));
    }
    let conv = first.id;
    let entries = server.all_entries(&bob, conv, 10).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(
        entries[0].body,
        EntryBody::Created {
            conversation_kind: ConversationKind::Direct,
            title: None,
            members: vec![alice.id, bob.id],
        }
    );

    // With oneself: 400; with nobody: 404.
    let (status, json) =
        create(&server, &alice, &CreateConversation::Direct { peer: alice.id }).await;
    assert_error(status, &json, StatusCode::BAD_REQUEST, "bad_request");
    let (status, json) =
        create(&server, &alice, &CreateConversation::Direct { peer: UserId(9999) }).await;
    assert_error(status, &json, StatusCode::NOT_FOUND, "not_found");

    // No member changes on a direct conversation: 403 for its members.
    for res in [
        add_member(&server, &alice, conv, &carol, None).await,
        set_role(&server, &alice, conv, &bob, Role::Admin).await,
        remove_member(&server, &alice, conv, &bob).await,
        remove_member(&server, &alice, conv, &alice).await,
        set_title(&server, &alice, conv, "ours").await,
    ] {
        assert_error(res.0, &res.1, StatusCode::FORBIDDEN, "forbidden");
    }
    // A non-member does not learn the conversation exists.
    let (status, _) = add_member(&server, &carol, conv, &carol, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(summary(&server, &alice, conv).await.last_seq, 1);
    assert_eq!(
        members(&server, &bob, conv).await,
        vec![(alice.id, Role::Member), (bob.id, Role::Member)]
    );
    server.stop().await;
}

#[tokio::test]
async fn membership_changes_are_log_entries_with_permissions() {
    let server = TestServer::start().await;
    let [alice, bob, carol, dave, erin, frank] =
        server.users(["alice", "bob", "carol", "dave", "erin", "frank"]).await;
    // Barriers for the members who will leave or be removed.
    let fa = server.create_direct(&frank, &alice).await;
    let fc = server.create_direct(&frank, &carol).await;
    let fd = server.create_direct(&frank, &dave).await;
    // Whoever adds someone shares a conversation with them (else it would be an invitation).
    let ab = server.contacts(&alice, &[&bob, &carol, &dave]).await[0];
    let bob_with = server.contacts(&bob, &[&erin, &dave]).await;
    let (be, bd) = (bob_with[0], bob_with[1]);

    let mut live = Vec::new();
    for user in [&alice, &bob, &carol, &dave, &erin] {
        let mut ws = server.ws(user).await;
        ws.sync(BTreeMap::new()).await;
        live.push(ws);
    }
    let [a, b, c, d, e] = &mut live[..] else { unreachable!("five sessions") };

    // Create: the caller owns it; `created` (seq 1) lists the members.
    let (status, json) = create(&server, &alice, &group("Team", &[&bob, &carol])).await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
    let created: ConversationSummary = serde_json::from_value(json).expect("summary");
    let g = created.id;
    assert_eq!(created.kind, ConversationKind::Group);
    assert_eq!(
        (created.title.as_deref(), created.role, created.last_seq),
        (Some("Team"), Role::Owner, 1)
    );
    assert_eq!(summary(&server, &bob, g).await.role, Role::Member);
    assert_eq!(
        members(&server, &carol, g).await,
        vec![(alice.id, Role::Owner), (bob.id, Role::Member), (carol.id, Role::Member)]
    );
    let e1 = (
        1,
        alice.id,
        EntryBody::Created {
            conversation_kind: ConversationKind::Group,
            title: Some("Team".into()),
            members: vec![alice.id, bob.id, carol.id],
        },
    );
    for ws in [&mut *a, &mut *b, &mut *c] {
        assert_eq!(take(ws, g, 1).await, vec![e1.clone()]);
    }

    // Adding members: owner and admins only.
    let forbidden = |res: (StatusCode, Value)| {
        assert_error(res.0, &res.1, StatusCode::FORBIDDEN, "forbidden");
    };
    forbidden(add_member(&server, &bob, g, &dave, None).await);
    forbidden(set_title(&server, &carol, g, "Mine").await);
    forbidden(set_role(&server, &bob, g, &carol, Role::Admin).await);
    ack(add_member(&server, &alice, g, &dave, None).await, StatusCode::CREATED, 2);
    let e2 = (2, alice.id, EntryBody::MemberAdded { user: dave.id, role: Role::Member });
    for ws in [&mut *a, &mut *b, &mut *c] {
        assert_eq!(take(ws, g, 1).await, vec![e2.clone()]);
    }
    // dave's session hears of the group now, from its start.
    assert_eq!(take(d, g, 2).await, vec![e1.clone(), e2.clone()]);

    // Role changes: owner only, to member or admin.
    ack(set_role(&server, &alice, g, &bob, Role::Admin).await, StatusCode::OK, 3);
    let e3 = (3, alice.id, EntryBody::RoleChanged { user: bob.id, role: Role::Admin });
    let (status, json) = set_role(&server, &alice, g, &carol, Role::Owner).await;
    assert_error(status, &json, StatusCode::BAD_REQUEST, "bad_request");
    let (status, json) = set_role(&server, &alice, g, &alice, Role::Member).await;
    assert_error(status, &json, StatusCode::BAD_REQUEST, "bad_request");

    // An admin adds members, but not admins, and does not change roles.
    forbidden(add_member(&server, &bob, g, &erin, Some(Role::Admin)).await);
    ack(add_member(&server, &bob, g, &erin, None).await, StatusCode::CREATED, 4);
    let e4 = (4, bob.id, EntryBody::MemberAdded { user: erin.id, role: Role::Member });
    forbidden(set_role(&server, &bob, g, &erin, Role::Admin).await);
    let (status, json) = add_member(&server, &bob, g, &erin, None).await;
    assert_error(status, &json, StatusCode::CONFLICT, "conflict");
    for ws in [&mut *a, &mut *b, &mut *c, &mut *d] {
        assert_eq!(take(ws, g, 2).await, vec![e3.clone(), e4.clone()]);
    }
    assert_eq!(take(e, g, 4).await, vec![e1.clone(), e2.clone(), e3.clone(), e4.clone()]);

    // Title: owner and admins; bad titles are refused.
    let ack5 = ack(set_title(&server, &bob, g, "Team 2").await, StatusCode::OK, 5);
    let e5 = (5, bob.id, EntryBody::TitleChanged { title: "Team 2".into() });
    let (status, json) = set_title(&server, &bob, g, "   ").await;
    assert_error(status, &json, StatusCode::BAD_REQUEST, "bad_request");
    let (status, json) = set_title(&server, &bob, g, &"t".repeat(257)).await;
    assert_error(status, &json, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    let now = summary(&server, &erin, g).await;
    assert_eq!(
        (now.title.as_deref(), now.last_seq, now.last_activity),
        (Some("Team 2"), 5, ack5.ts)
    );

    // Removing: the owner removes dave, who is told, then loses access at once.
    forbidden(remove_member(&server, &bob, g, &alice).await);
    forbidden(remove_member(&server, &carol, g, &erin).await);
    ack(remove_member(&server, &alice, g, &dave).await, StatusCode::OK, 6);
    let e6 = (6, alice.id, EntryBody::MemberRemoved { user: dave.id, banned: false });
    for ws in [&mut *a, &mut *b, &mut *c, &mut *d, &mut *e] {
        assert_eq!(take(ws, g, 2).await, vec![e5.clone(), e6.clone()]);
    }
    for path in [
        format!("/v1/conversations/{g}"),
        format!("/v1/conversations/{g}/entries"),
        format!("/v1/conversations/{g}/members"),
        format!("/v1/conversations/{g}/receipts"),
    ] {
        refused::<()>(&server, Method::GET, &path, &dave, None, StatusCode::NOT_FOUND, "not_found")
            .await;
    }
    let still_here = NewEntry::Message {
        body: "still here?".into(),
        reply_to: None,
        attachments: Vec::new(),
        mentions: Vec::new(),
    };
    let (status, _) = server.post_entry(&dave, g, "d1", still_here).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let reply = d
        .request(|req_id| ClientFrame::History {
            req_id,
            conversation: g,
            before: None,
            after: None,
            limit: None,
        })
        .await;
    assert!(
        matches!(&reply, ServerFrame::Error { error, .. } if error.code == ErrorCode::NotFound),
        "{reply:?}"
    );

    // Leaving is removing oneself.
    ack(remove_member(&server, &carol, g, &carol).await, StatusCode::OK, 7);
    let e7 = (7, carol.id, EntryBody::MemberRemoved { user: carol.id, banned: false });
    // The owner leaves: ownership passes to the admin (bob), as an entry of its own.
    ack(remove_member(&server, &alice, g, &alice).await, StatusCode::OK, 8);
    let e8 = (8, alice.id, EntryBody::MemberRemoved { user: alice.id, banned: false });
    let e9 = (9, alice.id, EntryBody::RoleChanged { user: bob.id, role: Role::Owner });
    let ack10 = server.send_rest(&erin, g, "e1", "just us").await;
    assert_eq!(ack10.seq, 10);
    let e10 = (
        10,
        erin.id,
        EntryBody::Message {
            body: "just us".into(),
            reply_to: None,
            attachments: Vec::new(),
            mentions: Vec::new(),
        },
    );

    // Each got exactly what was written while a member, and the entry of its own leaving;
    // after that, nothing (the barrier is the next frame).
    assert_eq!(take(c, g, 1).await, vec![e7.clone()]);
    assert_eq!(take(a, g, 2).await, vec![e7.clone(), e8.clone()]);
    for ws in [&mut *b, &mut *e] {
        assert_eq!(take(ws, g, 4).await, vec![e7.clone(), e8.clone(), e9.clone(), e10.clone()]);
    }
    barrier(&server, &frank, a, fa).await;
    barrier(&server, &frank, c, fc).await;
    barrier(&server, &frank, d, fd).await;
    let now = summary(&server, &bob, g).await;
    assert_eq!((now.role, now.last_seq), (Role::Owner, 10));
    assert_eq!(
        members(&server, &erin, g).await,
        vec![(bob.id, Role::Owner), (erin.id, Role::Member)]
    );
    for user in [&alice, &carol, &dave] {
        let path = format!("/v1/conversations/{g}");
        refused::<()>(&server, Method::GET, &path, user, None, StatusCode::NOT_FOUND, "not_found")
            .await;
        let page: ConversationPage =
            expect::<(), _>(&server, Method::GET, "/v1/conversations", user, None, StatusCode::OK)
                .await;
        assert!(
            page.conversations.iter().all(|s| s.id != g),
            "{} still lists the group",
            user.handle
        );
    }

    // Sync carries every membership entry: a new device from scratch, and one with a cursor,
    // over WebSocket and REST; history tells the same story. (The devices know the direct
    // conversations already: the syncs are about the group.)
    let all = vec![e1, e2, e3, e4, e5, e6, e7, e8, e9, e10];
    let mut fresh = server.ws_token(&server.login("erin").await).await;
    let synced = fresh.sync(BTreeMap::from([(be, 1)])).await;
    assert_eq!(synced.len(), 1);
    assert_eq!(synced[0].conversation.id, g);
    assert_eq!(synced[0].entries.iter().map(said).collect::<Vec<_>>(), all);
    let rest: SyncResponse = expect(
        &server,
        Method::POST,
        "/v1/sync",
        &bob,
        Some(&SyncRequest {
            cursors: BTreeMap::from([(g, 5), (ab, 1), (be, 1), (bd, 1)]),
            limit: None,
        }),
        StatusCode::OK,
    )
    .await;
    assert_eq!(rest.conversations.len(), 1);
    let got: Vec<Said> = rest.conversations[0].entries.iter().map(said).collect();
    assert_eq!(got, all[5..].to_vec());
    let mut resumed = server.ws_token(&server.login("bob").await).await;
    let synced = resumed.sync(BTreeMap::from([(g, 5), (ab, 1), (be, 1), (bd, 1)])).await;
    assert_eq!(synced.len(), 1);
    assert_eq!(synced[0].entries.iter().map(said).collect::<Vec<_>>(), all[5..].to_vec());
    let history: Vec<Said> = server.all_entries(&erin, g, 3).await.iter().map(said).collect();
    assert_eq!(history, all);

    // dave, added back, can read again; his session continues the group without a gap
    // (members see the whole history; G1).
    ack(add_member(&server, &bob, g, &dave, None).await, StatusCode::CREATED, 11);
    let e11 = (11, bob.id, EntryBody::MemberAdded { user: dave.id, role: Role::Member });
    let got = take(d, g, 5).await;
    let seqs: Vec<Seq> = got.iter().map(|s| s.0).collect();
    assert_contiguous(&seqs, 7, 11).expect("dave's stream continues at 7");
    assert_eq!(got[4], e11);
    assert_eq!(summary(&server, &dave, g).await.last_seq, 11);
    server.stop().await;
}

#[tokio::test]
async fn owner_leaving_hands_ownership_to_an_admin_else_the_oldest_member() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    // carol registers first, so her user id is lower than bob's: the heir is chosen by
    // seniority in the group, not by id.
    let [carol, bob] = server.users(["carol", "bob"]).await;
    assert!(carol.id < bob.id);
    server.contacts(&alice, &[&bob, &carol]).await;

    // No admin: the member who joined first inherits.
    let g1 = server.create_group(&alice, "one", &[&bob]).await;
    ack(add_member(&server, &alice, g1, &carol, None).await, StatusCode::CREATED, 2);
    ack(remove_member(&server, &alice, g1, &alice).await, StatusCode::OK, 3);
    let log: Vec<Said> = server.all_entries(&bob, g1, 10).await.iter().map(said).collect();
    assert_eq!(
        log[2..],
        [
            (3, alice.id, EntryBody::MemberRemoved { user: alice.id, banned: false }),
            (4, alice.id, EntryBody::RoleChanged { user: bob.id, role: Role::Owner }),
        ]
    );
    assert_eq!(
        members(&server, &carol, g1).await,
        vec![(bob.id, Role::Owner), (carol.id, Role::Member)]
    );
    // The new owner has the owner's powers.
    ack(set_role(&server, &bob, g1, &carol, Role::Admin).await, StatusCode::OK, 5);

    // An admin, though newer than a member, inherits before them.
    let g2 = server.create_group(&alice, "two", &[&bob]).await;
    ack(add_member(&server, &alice, g2, &carol, Some(Role::Admin)).await, StatusCode::CREATED, 2);
    ack(remove_member(&server, &alice, g2, &alice).await, StatusCode::OK, 3);
    let log: Vec<Said> = server.all_entries(&bob, g2, 10).await.iter().map(said).collect();
    assert_eq!(
        log[1..],
        [
            (2, alice.id, EntryBody::MemberAdded { user: carol.id, role: Role::Admin }),
            (3, alice.id, EntryBody::MemberRemoved { user: alice.id, banned: false }),
            (4, alice.id, EntryBody::RoleChanged { user: carol.id, role: Role::Owner }),
        ]
    );
    assert_eq!(
        members(&server, &bob, g2).await,
        vec![(bob.id, Role::Member), (carol.id, Role::Owner)]
    );
    assert_eq!(summary(&server, &carol, g2).await.role, Role::Owner);

    // The last member leaving: nobody inherits, and the group is gone for them.
    let g3 = server.create_group(&alice, "three", &[]).await;
    ack(remove_member(&server, &alice, g3, &alice).await, StatusCode::OK, 2);
    let path = format!("/v1/conversations/{g3}");
    refused::<()>(&server, Method::GET, &path, &alice, None, StatusCode::NOT_FOUND, "not_found")
        .await;
    server.stop().await;
}

#[tokio::test]
async fn member_cap_is_enforced_on_create_and_add() {
    let server = TestServer::start_with(|c| c.limits.max_group_members = 3).await;
    let [alice, bob, carol, dave] = server.users(["alice", "bob", "carol", "dave"]).await;

    // The owner counts: alice and three others is four.
    let (status, json) = create(&server, &alice, &group("big", &[&bob, &carol, &dave])).await;
    assert_error(status, &json, StatusCode::CONFLICT, "conflict");
    let page: ConversationPage =
        expect::<(), _>(&server, Method::GET, "/v1/conversations", &alice, None, StatusCode::OK)
            .await;
    assert!(page.conversations.is_empty(), "nothing was created: {page:?}");
    server.contacts(&alice, &[&bob, &carol, &dave]).await;

    // Repeated ids and the owner herself are one member each: three in all.
    let (status, json) =
        create(&server, &alice, &group("dupes", &[&bob, &carol, &bob, &alice])).await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
    let dupes: natter_proto::ConversationSummary = serde_json::from_value(json).unwrap();
    assert_eq!(members(&server, &alice, dupes.id).await.len(), 3);

    let g = server.create_group(&alice, "full", &[&bob, &carol]).await;
    let (status, json) = add_member(&server, &alice, g, &dave, None).await;
    assert_error(status, &json, StatusCode::CONFLICT, "conflict");
    assert_eq!(summary(&server, &alice, g).await.last_seq, 1);
    assert_eq!(members(&server, &alice, g).await.len(), 3);

    // A place freed is a place taken.
    ack(remove_member(&server, &carol, g, &carol).await, StatusCode::OK, 2);
    ack(add_member(&server, &alice, g, &dave, None).await, StatusCode::CREATED, 3);
    let (status, _) = add_member(&server, &alice, g, &carol, None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    server.stop().await;
}

/// Every conversation of `user` through pages of `limit`, following `next`.
async fn walk(server: &TestServer, user: &TestUser, limit: u32) -> Vec<ConversationId> {
    let mut out = Vec::new();
    let mut before: Option<String> = None;
    for _ in 0..100 {
        let path = match &before {
            None => format!("/v1/conversations?limit={limit}"),
            Some(cursor) => format!("/v1/conversations?limit={limit}&before={cursor}"),
        };
        let page: ConversationPage =
            expect::<(), _>(server, Method::GET, &path, user, None, StatusCode::OK).await;
        assert!(page.conversations.len() <= limit as usize);
        out.extend(page.conversations.iter().map(|c| c.id));
        match page.next {
            Some(next) => before = Some(next),
            None => return out,
        }
    }
    panic!("paging did not end: {out:?}");
}

#[tokio::test]
async fn conversation_list_is_most_recent_first_paged_with_cursors_and_unread() {
    let server = TestServer::start().await;
    let [alice, bob, carol, dave] = server.users(["alice", "bob", "carol", "dave"]).await;

    // When each conversation last changed, from the answers that changed it.
    let mut last: BTreeMap<ConversationId, i64> = BTreeMap::new();
    let mut made = |res: (StatusCode, Value)| {
        assert_eq!(res.0, StatusCode::CREATED, "{}", res.1);
        let s: ConversationSummary = serde_json::from_value(res.1).expect("summary");
        last.insert(s.id, s.last_activity);
        s.id
    };
    let d_bob = made(create(&server, &alice, &CreateConversation::Direct { peer: bob.id }).await);
    let d_carol =
        made(create(&server, &carol, &CreateConversation::Direct { peer: alice.id }).await);
    let g1 = made(create(&server, &alice, &group("g1", &[&bob])).await);
    let g2 = made(create(&server, &bob, &group("g2", &[&alice])).await);
    let d_dave = made(create(&server, &alice, &CreateConversation::Direct { peer: dave.id }).await);
    // Activity in an order unlike creation: d_carol, g2, then d_bob last.
    let ack = server.send_rest(&alice, d_carol, "a1", "hi carol").await;
    last.insert(d_carol, ack.ts);
    let ack = server.send_rest(&bob, g2, "b1", "hi g2").await;
    last.insert(g2, ack.ts);
    for i in 0..3 {
        let ack = server.send_rest(&bob, d_bob, &format!("b{i}"), "hi alice").await;
        last.insert(d_bob, ack.ts);
    }
    let expected_order = |last: &BTreeMap<ConversationId, i64>| {
        let mut order: Vec<(i64, ConversationId)> = last.iter().map(|(c, t)| (*t, *c)).collect();
        order.sort_by(|x, y| y.cmp(x));
        order.into_iter().map(|(_, c)| c).collect::<Vec<_>>()
    };

    let page: ConversationPage =
        expect::<(), _>(&server, Method::GET, "/v1/conversations", &alice, None, StatusCode::OK)
            .await;
    assert_eq!(page.next, None);
    let ids: Vec<ConversationId> = page.conversations.iter().map(|c| c.id).collect();
    assert_eq!(ids, expected_order(&last));
    let by_id: BTreeMap<ConversationId, &ConversationSummary> =
        page.conversations.iter().map(|c| (c.id, c)).collect();
    // (kind, title, role, last_seq, unread): unread counts others' messages after read_seq
    // 0, not system entries (carol's and bob's `created`) nor one's own messages.
    let want = [
        (d_bob, ConversationKind::Direct, None, Role::Member, 4, 3),
        (d_carol, ConversationKind::Direct, None, Role::Member, 2, 0),
        (g1, ConversationKind::Group, Some("g1"), Role::Owner, 1, 0),
        (g2, ConversationKind::Group, Some("g2"), Role::Member, 2, 1),
        (d_dave, ConversationKind::Direct, None, Role::Member, 1, 0),
    ];
    for (id, kind, title, role, last_seq, unread) in want {
        let s = by_id[&id];
        assert_eq!(
            (s.kind, s.title.as_deref(), s.role, s.last_seq, s.unread),
            (kind, title, role, last_seq, unread),
            "{s:?}"
        );
        assert_eq!((s.delivered_seq, s.read_seq), (0, 0), "{s:?}");
        assert_eq!(s.last_activity, last[&id], "{s:?}");
    }

    // Paging walks every conversation exactly once, in the same order.
    for limit in [1, 2, 3, 5, 10] {
        assert_eq!(walk(&server, &alice, limit).await, ids, "limit {limit}");
    }
    let first: ConversationPage = expect::<(), _>(
        &server,
        Method::GET,
        "/v1/conversations?limit=2",
        &alice,
        None,
        StatusCode::OK,
    )
    .await;
    assert_eq!(first.conversations.len(), 2);
    assert!(first.next.is_some());
    refused::<()>(
        &server,
        Method::GET,
        "/v1/conversations?before=garbage",
        &alice,
        None,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;

    // Cursors: alice reads d_bob up to 3, then reports delivery of 4.
    let mut b = server.synced_ws(&bob).await;
    let cursors = format!("/v1/conversations/{d_bob}/cursors");
    for (body, want) in [
        (SetCursors { delivered_seq: None, read_seq: Some(3) }, (3, 3, 1)),
        (SetCursors { delivered_seq: Some(4), read_seq: None }, (4, 3, 1)),
    ] {
        let (status, json) = call(&server, Method::PUT, &cursors, &alice, Some(&body)).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{json}");
        // The receipt to bob says the cursors are written.
        let receipt = b
            .next_matching(
                |f| matches!(f, ServerFrame::Receipt { receipt } if receipt.user == alice.id),
            )
            .await;
        let ServerFrame::Receipt { receipt } = receipt else { unreachable!("matched a receipt") };
        assert_eq!(
            (receipt.conversation, receipt.delivered_seq, receipt.read_seq),
            (d_bob, want.0, want.1)
        );
        let s = summary(&server, &alice, d_bob).await;
        assert_eq!((s.delivered_seq, s.read_seq, s.unread), want, "{s:?}");
        let page: ConversationPage = expect::<(), _>(
            &server,
            Method::GET,
            "/v1/conversations",
            &alice,
            None,
            StatusCode::OK,
        )
        .await;
        assert_eq!(page.conversations.iter().find(|c| c.id == d_bob), Some(&s));
    }
    // Cursors are not activity: the order is unchanged. New activity moves a conversation first.
    assert_eq!(walk(&server, &alice, 2).await, ids);
    let ack = server.send_rest(&dave, d_dave, "d1", "hello").await;
    last.insert(d_dave, ack.ts);
    let order = expected_order(&last);
    assert_eq!(order[0], d_dave);
    assert_eq!(walk(&server, &alice, 2).await, order);
    let s = summary(&server, &alice, d_dave).await;
    assert_eq!((s.last_seq, s.unread, s.last_activity), (2, 1, ack.ts));
    server.stop().await;
}
