//! Invitations, over real sockets against a real server: adding someone to a group who shares
//! no conversation with the adder (a stranger) invites them instead of making them a member.
//! Until they accept, a stranger gets nothing of the group (no entries live or by sync or
//! history, no presence of its members) and is told only of the invitation (the live
//! `invitation` frame, on every node, and `GET /v1/invitations`); accepting makes them a
//! member who gets the group live like any other, declining leaves nothing. A contact is still
//! added at once, and nobody can be flooded with invitations (a cap per invitee).

use std::collections::BTreeMap;

use natter_proto::rest::{
    AddMember, CreateConversation, Invitations, Member, SyncRequest, SyncResponse,
};
use natter_proto::{
    Ack, ClientFrame, ConversationId, Entry, EntryBody, Invitation, Role, ServerFrame, UserId,
};
use natter_server::Faults;
use natter_testkit::{TestCluster, TestServer, TestUser, WsClient};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// `actor` adds `user` to `conv`: the status and body.
async fn add(
    server: &TestServer,
    actor: &TestUser,
    conv: ConversationId,
    user: UserId,
) -> (StatusCode, Value) {
    let path = format!("/v1/conversations/{conv}/members");
    let body = AddMember { user_id: user, role: None };
    server.call(Method::POST, &path, Some(&actor.token), Some(&body)).await
}

/// `actor` adds a stranger: `202` with the invitation.
async fn invite(
    server: &TestServer,
    actor: &TestUser,
    conv: ConversationId,
    user: &TestUser,
) -> Invitation {
    let (status, json) = add(server, actor, conv, user.id).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
    serde_json::from_value(json).expect("an invitation")
}

async fn invitations(server: &TestServer, user: &TestUser) -> Vec<Invitation> {
    let list: Invitations =
        server.ok::<(), _>(Method::GET, "/v1/invitations", &user.token, None, StatusCode::OK).await;
    list.invitations
}

/// A GET as `user`: the status.
async fn get(server: &TestServer, user: &TestUser, path: &str) -> StatusCode {
    server.call::<()>(Method::GET, path, Some(&user.token), None).await.0
}

/// The next frame, which must be an `invitation`.
async fn next_invitation(ws: &mut WsClient) -> Invitation {
    match ws.next().await {
        ServerFrame::Invitation { invitation } => invitation,
        other => panic!("expected an invitation frame, got {other:?}"),
    }
}

/// `users` as `ws`'s session may watch them: the ids it was refused.
async fn presence_denied(ws: &mut WsClient, users: &[UserId]) -> Vec<UserId> {
    let users = users.to_vec();
    match ws.request(|req_id| ClientFrame::SubscribePresence { req_id, users }).await {
        ServerFrame::PresenceSubscribed { denied, .. } => denied,
        other => panic!("expected presence_subscribed, got {other:?}"),
    }
}

/// A barrier: `from` writes to `ws`'s user in their direct conversation `conv`; it must be
/// the very next frame that session gets, so nothing else came before it.
async fn barrier(
    server: &TestServer,
    from: &TestUser,
    ws: &mut WsClient,
    conv: ConversationId,
    client_msg_id: &str,
) {
    let ack = server.send_rest(from, conv, client_msg_id, "barrier").await;
    match ws.next().await {
        ServerFrame::Entry { entry } => {
            assert_eq!((entry.conversation, entry.seq), (conv, ack.seq), "{entry:?}")
        }
        other => panic!("expected the barrier entry, got {other:?}"),
    }
}

fn said(e: &Entry) -> (u64, UserId, EntryBody) {
    (e.seq, e.sender, e.body.clone())
}

#[tokio::test]
async fn a_stranger_added_to_a_group_is_invited_and_gets_nothing_of_it() {
    let server = TestServer::start().await;
    let [alice, bob, sam, frank] = server.users(["alice", "bob", "sam", "frank"]).await;
    server.contacts(&alice, &[&bob]).await;
    // frank writes sam the barriers; he shares nothing with alice or bob.
    let fs = server.create_direct(&frank, &sam).await;
    let mut s = server.synced_ws(&sam).await;
    let g = server.create_group(&alice, "team", &[&bob]).await;
    server.send_rest(&alice, g, "a1", "before sam was asked").await; // 2

    // The add is an invitation: 202, nothing in the log, sam told live.
    let inv = invite(&server, &alice, g, &sam).await;
    assert_eq!(
        (inv.conversation, inv.title.as_str(), inv.user, inv.inviter, inv.inviter_handle.as_str()),
        (g, "team", sam.id, alice.id, "alice")
    );
    assert_eq!(inv.role, Role::Member);
    assert_eq!(next_invitation(&mut s).await, inv);
    assert_eq!(invitations(&server, &sam).await, vec![inv.clone()]);
    let path = format!("/v1/conversations/{g}/members");
    let members: Vec<Member> =
        server.ok::<(), _>(Method::GET, &path, &bob.token, None, StatusCode::OK).await;
    let ids: Vec<UserId> = members.iter().map(|m| m.user_id).collect();
    assert_eq!(ids, vec![alice.id, bob.id], "sam is not a member");
    assert_eq!(server.all_entries(&bob, g, 10).await.len(), 2, "nothing entered the log");

    // sam gets none of the group: not live, not by sync, history or REST, and cannot write.
    server.send_rest(&alice, g, "a2", "after sam was asked").await; // 3
    barrier(&server, &frank, &mut s, fs, "f1").await;
    assert!(s.sync(BTreeMap::from([(fs, 2)])).await.is_empty(), "no sync of the group");
    let rest: SyncResponse = server
        .ok(Method::POST, "/v1/sync", &sam.token, Some(&SyncRequest::default()), StatusCode::OK)
        .await;
    assert_eq!(rest.conversations.iter().map(|c| c.conversation.id).collect::<Vec<_>>(), vec![fs]);
    for path in [
        format!("/v1/conversations/{g}"),
        format!("/v1/conversations/{g}/entries"),
        format!("/v1/conversations/{g}/members"),
    ] {
        assert_eq!(get(&server, &sam, &path).await, StatusCode::NOT_FOUND, "{path}");
    }
    let reply = s
        .request(|req_id| ClientFrame::History {
            req_id,
            conversation: g,
            before: None,
            after: None,
            limit: None,
        })
        .await;
    assert!(matches!(reply, ServerFrame::Error { .. }), "{reply:?}");
    let (status, _) = server
        .post_entry(
            &sam,
            g,
            "s1",
            natter_proto::NewEntry::Message {
                body: "hi".into(),
                reply_to: None,
                attachments: Vec::new(),
                mentions: Vec::new(),
            },
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // No presence either way: sam may not watch the members, nor they sam.
    assert_eq!(presence_denied(&mut s, &[alice.id, bob.id]).await, vec![alice.id, bob.id]);
    let mut a = server.synced_ws(&alice).await;
    assert_eq!(presence_denied(&mut a, &[sam.id]).await, vec![sam.id]);

    // The inviter learns nothing an add would not: an unknown id is not found, a second add
    // a conflict; nothing else is said about sam.
    let (status, json) = add(&server, &alice, g, UserId(9_999)).await;
    assert_eq!((status, json["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    let (status, json) = add(&server, &alice, g, sam.id).await;
    assert_eq!((status, json["code"].as_str()), (StatusCode::CONFLICT, Some("conflict")), "{json}");
    assert_eq!(invitations(&server, &sam).await.len(), 1, "one invitation per group");

    // sam hears nothing more until he answers.
    barrier(&server, &frank, &mut s, fs, "f2").await;
    server.stop().await;
}

#[tokio::test]
async fn accepting_makes_a_member_who_then_gets_live_entries() {
    let server = TestServer::start().await;
    let [alice, bob, sam] = server.users(["alice", "bob", "sam"]).await;
    server.contacts(&alice, &[&bob]).await;
    let g = server.create_group(&alice, "team", &[&bob]).await;
    server.send_rest(&alice, g, "a1", "history").await; // 2
    let mut s = server.synced_ws(&sam).await;
    let mut b = server.synced_ws(&bob).await;
    invite(&server, &alice, g, &sam).await;
    next_invitation(&mut s).await;

    let accepted: Ack = server.accept_invitation(&sam, g).await;
    assert_eq!((accepted.conversation, accepted.seq), (g, 3));
    assert!(invitations(&server, &sam).await.is_empty());
    let joined = (3, sam.id, EntryBody::MemberAdded { user: sam.id, role: Role::Member });
    // bob sees sam join (sam sends the `member_added`); sam's session hears of the group now,
    // from its start, history included.
    assert_eq!(said(&b.next_entry().await), joined);
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(said(&s.next_entry().await));
    }
    assert_eq!(got.iter().map(|e| e.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(got[2], joined);

    // A member like any other: live entries, presence, REST.
    let ack = server.send_rest(&alice, g, "a2", "welcome").await;
    let entry = s.next_entry().await;
    assert_eq!((entry.conversation, entry.seq), (g, ack.seq));
    assert_eq!(b.next_entry().await.seq, ack.seq);
    assert!(presence_denied(&mut s, &[alice.id, bob.id]).await.is_empty());
    assert_eq!(get(&server, &sam, &format!("/v1/conversations/{g}")).await, StatusCode::OK);
    assert_eq!(s.send_msg(g, "s1", "thanks").await.seq, ack.seq + 1);
    // An invitation is used once.
    let path = format!("/v1/invitations/{g}/accept");
    let (status, _) = server.call::<()>(Method::POST, &path, Some(&sam.token), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    server.stop().await;
}

#[tokio::test]
async fn declining_leaves_nothing() {
    let server = TestServer::start().await;
    let [alice, sam] = server.users(["alice", "sam"]).await;
    let g = server.create_group(&alice, "team", &[]).await;
    invite(&server, &alice, g, &sam).await;

    let path = format!("/v1/invitations/{g}");
    let (status, json) = server.call::<()>(Method::DELETE, &path, Some(&sam.token), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{json}");
    assert!(invitations(&server, &sam).await.is_empty());
    let (status, _) = server.call::<()>(Method::DELETE, &path, Some(&sam.token), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let accept = format!("/v1/invitations/{g}/accept");
    let (status, _) = server.call::<()>(Method::POST, &accept, Some(&sam.token), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(get(&server, &sam, &format!("/v1/conversations/{g}")).await, StatusCode::NOT_FOUND);
    assert_eq!(server.all_entries(&alice, g, 10).await.len(), 1, "the log is as it was");
    // The inviter is not told; a new invitation is just that.
    invite(&server, &alice, g, &sam).await;
    assert_eq!(invitations(&server, &sam).await.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_contact_is_added_directly_and_a_new_group_invites_the_others() {
    let server = TestServer::start().await;
    let [alice, bob, carol, sam] = server.users(["alice", "bob", "carol", "sam"]).await;
    server.contacts(&alice, &[&bob, &carol]).await;
    let mut s = server.synced_ws(&sam).await;
    let mut c = server.synced_ws(&carol).await;

    // Creating names bob (a contact) and sam (a stranger): bob is a member, sam invited.
    let created = server.create_group_inviting(&alice, "team", &[&bob, &sam]).await;
    let g = created.conversation.id;
    assert_eq!(created.invited, vec![sam.id]);
    let log = server.all_entries(&bob, g, 10).await;
    assert_eq!(
        log[0].body,
        EntryBody::Created {
            conversation_kind: natter_proto::ConversationKind::Group,
            title: Some("team".into()),
            members: vec![alice.id, bob.id],
        }
    );
    let inv = next_invitation(&mut s).await;
    assert_eq!((inv.conversation, inv.user, inv.inviter), (g, sam.id, alice.id));

    // Adding carol (a contact): 201, the ack of her `member_added`, and she gets the group.
    let (status, json) = add(&server, &alice, g, carol.id).await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
    let ack: Ack = serde_json::from_value(json).expect("ack");
    assert_eq!(ack.seq, 2);
    let entries = [c.next_entry().await, c.next_entry().await];
    assert_eq!(
        said(&entries[1]),
        (2, alice.id, EntryBody::MemberAdded { user: carol.id, role: Role::Member })
    );
    assert!(invitations(&server, &carol).await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn pending_invitations_are_capped_per_invitee() {
    let server = TestServer::start_with(|c| c.limits.max_pending_invitations = 3).await;
    let [sam, o1, o2, o3, o4] = server.users(["sam", "o1", "o2", "o3", "o4"]).await;
    let mut s = server.synced_ws(&sam).await;
    let mut groups = Vec::new();
    for owner in [&o1, &o2, &o3] {
        let g = server.create_group(owner, "spam", &[]).await;
        invite(&server, owner, g, &sam).await;
        assert_eq!(next_invitation(&mut s).await.conversation, g);
        groups.push(g);
    }
    // A fourth stranger is refused (409), by an add or by creating a group naming sam.
    let g4 = server.create_group(&o4, "spam", &[]).await;
    let (status, json) = add(&server, &o4, g4, sam.id).await;
    assert_eq!(status, StatusCode::CONFLICT, "{json}");
    assert_eq!(json["message"], "conflict: too many pending invitations");
    let body = CreateConversation::Group { title: "more spam".into(), members: vec![sam.id] };
    let (status, json) =
        server.call(Method::POST, "/v1/conversations", Some(&o4.token), Some(&body)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{json}");
    assert_eq!(invitations(&server, &sam).await.len(), 3);

    // Declining one makes room; the next frame sam gets is that new invitation (the refused
    // ones sent nothing).
    let path = format!("/v1/invitations/{}", groups[0]);
    let (status, _) = server.call::<()>(Method::DELETE, &path, Some(&sam.token), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let g5 = server.create_group(&o4, "later", &[]).await;
    let inv = invite(&server, &o4, g5, &sam).await;
    assert_eq!(next_invitation(&mut s).await, inv);
    assert_eq!(invitations(&server, &sam).await.len(), 3);
    server.stop().await;
}

#[tokio::test]
async fn the_invitation_frame_reaches_the_invitee_on_another_node() {
    let cluster = TestCluster::start(2, Faults::default(), |_| {}).await;
    let (n0, n1) = (cluster.node(0), cluster.node(1));
    let [alice, sam] = n0.users(["alice", "sam"]).await;
    let mut s = n1.synced_ws(&sam).await;
    let g = n0.create_group(&alice, "team", &[]).await;
    let inv = invite(n0, &alice, g, &sam).await;
    assert_eq!(next_invitation(&mut s).await, inv);
    // Accepted through the other node, the group reaches sam's session there.
    n1.accept_invitation(&sam, g).await;
    let first = s.next_entry().await;
    assert_eq!((first.conversation, first.seq), (g, 1));
    cluster.stop().await;
}
