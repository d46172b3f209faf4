//! Edits, deletions, replies and reactions are log entries of their own (each a `seq` naming
//! its `target`), so an offline member's sync carries them like any message (G3, G5), and a
//! connected one receives them live in order (G1). History pages — REST
//! `GET /v1/conversations/{id}/entries` and the WebSocket `history` frame, with
//! before/after/limit — show each message's current `state`: the last edit's text and
//! `edited_seq`, a tombstone for a deleted message, reactions aggregated per emoji. Changing
//! someone else's message is `forbidden`, changing a deleted one is `conflict`, targeting
//! anything but a message is `bad_request`, and a refused request stores nothing.

use std::collections::BTreeMap;

use natter_proto::rest::{EntryPage, SyncRequest, SyncResponse};
use natter_proto::{
    Ack, ClientFrame, ConversationId, ConversationSummary, Entry, EntryBody, ErrorCode,
    MessageState, NewEntry, ReactionSummary, Seq, ServerFrame, SyncConversation, UserId,
};
use natter_testkit::{TestServer, TestUser, WsClient};
use reqwest::{Method, StatusCode};

async fn ack(ws: &mut WsClient, build: impl FnOnce(u64) -> ClientFrame) -> Ack {
    match ws.request(build).await {
        ServerFrame::Ack { ack, .. } => ack,
        other => panic!("expected an ack, got {other:?}"),
    }
}

async fn refused(ws: &mut WsClient, build: impl FnOnce(u64) -> ClientFrame) -> ErrorCode {
    match ws.request(build).await {
        ServerFrame::Error { error, .. } => error.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn reply(
    conv: ConversationId,
    cmid: &str,
    body: &str,
    reply_to: Seq,
) -> impl FnOnce(u64) -> ClientFrame {
    let (cmid, body) = (cmid.to_owned(), body.to_owned());
    move |req_id| ClientFrame::Send {
        req_id,
        conversation: conv,
        client_msg_id: cmid,
        body,
        reply_to: Some(reply_to),
        attachments: Vec::new(),
        mentions: Vec::new(),
    }
}

fn edit(
    conv: ConversationId,
    cmid: &str,
    target: Seq,
    body: &str,
) -> impl FnOnce(u64) -> ClientFrame {
    let (cmid, body) = (cmid.to_owned(), body.to_owned());
    move |req_id| ClientFrame::Edit {
        req_id,
        conversation: conv,
        client_msg_id: cmid,
        target,
        body,
    }
}

fn delete(conv: ConversationId, cmid: &str, target: Seq) -> impl FnOnce(u64) -> ClientFrame {
    let cmid = cmid.to_owned();
    move |req_id| ClientFrame::Delete { req_id, conversation: conv, client_msg_id: cmid, target }
}

fn react(
    conv: ConversationId,
    cmid: &str,
    target: Seq,
    emoji: &str,
    remove: bool,
) -> impl FnOnce(u64) -> ClientFrame {
    let (cmid, emoji) = (cmid.to_owned(), emoji.to_owned());
    move |req_id| ClientFrame::React {
        req_id,
        conversation: conv,
        client_msg_id: cmid,
        target,
        emoji,
        remove,
    }
}

fn state(body: &str, edited_seq: Option<Seq>, reactions: &[(&str, &[UserId])]) -> MessageState {
    MessageState {
        body: body.to_owned(),
        edited_seq,
        deleted: false,
        reactions: reactions
            .iter()
            .map(|(emoji, users)| ReactionSummary {
                emoji: (*emoji).to_owned(),
                users: users.to_vec(),
            })
            .collect(),
    }
}

/// A deleted message: no text, no reactions; `edited_seq` still names its last edit.
fn tombstone(edited_seq: Option<Seq>) -> MessageState {
    MessageState { body: String::new(), edited_seq, deleted: true, reactions: Vec::new() }
}

fn message(body: &str, reply_to: Option<Seq>) -> EntryBody {
    EntryBody::Message {
        body: body.to_owned(),
        reply_to,
        attachments: Vec::new(),
        mentions: Vec::new(),
    }
}

async fn summary(
    server: &TestServer,
    user: &TestUser,
    conv: ConversationId,
) -> ConversationSummary {
    let path = format!("/v1/conversations/{conv}");
    server.ok::<(), _>(Method::GET, &path, &user.token, None, StatusCode::OK).await
}

async fn rest_page(
    server: &TestServer,
    user: &TestUser,
    conv: ConversationId,
    query: &str,
) -> EntryPage {
    let path = format!("/v1/conversations/{conv}/entries?{query}");
    server.ok::<(), _>(Method::GET, &path, &user.token, None, StatusCode::OK).await
}

async fn ws_page(
    ws: &mut WsClient,
    conv: ConversationId,
    before: Option<Seq>,
    after: Option<Seq>,
    limit: Option<u32>,
) -> EntryPage {
    let reply = ws
        .request(|req_id| ClientFrame::History { req_id, conversation: conv, before, after, limit })
        .await;
    match reply {
        ServerFrame::History { conversation, entries, has_more, .. } => {
            EntryPage { conversation, entries, has_more }
        }
        other => panic!("expected history, got {other:?}"),
    }
}

/// `POST /v1/sync`.
async fn rest_sync(
    server: &TestServer,
    user: &TestUser,
    cursors: BTreeMap<ConversationId, Seq>,
) -> Vec<SyncConversation> {
    let req = SyncRequest { cursors, limit: None };
    let res: SyncResponse =
        server.ok(Method::POST, "/v1/sync", &user.token, Some(&req), StatusCode::OK).await;
    res.conversations
}

fn seqs(entries: &[Entry]) -> Vec<Seq> {
    entries.iter().map(|e| e.seq).collect()
}

fn by_seq(entries: &[Entry], seq: Seq) -> &Entry {
    entries.iter().find(|e| e.seq == seq).unwrap_or_else(|| panic!("no seq {seq} in {entries:?}"))
}

#[tokio::test]
async fn offline_member_syncs_edits_deletions_reactions_and_replies() {
    let server = TestServer::start().await;
    let (alice, bob, conv) = server.direct_pair().await;
    let mut a = server.synced_ws(&alice).await;

    // Bob sees seq 1 and 2, then goes offline with cursor 2.
    let mut b = server.synced_ws(&bob).await;
    assert_eq!(a.send_msg(conv, "m2", "first").await.seq, 2);
    assert_eq!(b.next_entry().await.seq, 2);
    b.close().await;

    assert_eq!(a.send_msg(conv, "m3", "second").await.seq, 3);
    assert_eq!(a.send_msg(conv, "m4", "third").await.seq, 4);
    assert_eq!(ack(&mut a, edit(conv, "e5", 2, "first, edited")).await.seq, 5);
    assert_eq!(ack(&mut a, delete(conv, "d6", 3)).await.seq, 6);
    assert_eq!(ack(&mut a, react(conv, "r7", 4, "👍", false)).await.seq, 7);
    assert_eq!(ack(&mut a, reply(conv, "m8", "re: first", 2)).await.seq, 8);
    assert_eq!(ack(&mut a, edit(conv, "e9", 2, "first, edited twice")).await.seq, 9);

    // Bob resumes from his old cursor (over HTTP; the WebSocket `sync` is checked at the end):
    // every change is its own entry naming its target, and each message shows its current
    // state.
    let synced = rest_sync(&server, &bob, BTreeMap::from([(conv, 2)])).await;
    assert_eq!(synced.len(), 1);
    assert_eq!(synced[0].conversation.last_seq, 9);
    assert!(!synced[0].has_more);
    let got = &synced[0].entries;
    assert_eq!(seqs(got), (3..=9).collect::<Vec<_>>());
    let cmids: Vec<(Seq, UserId, &str)> =
        got.iter().map(|e| (e.seq, e.sender, e.client_msg_id.as_deref().unwrap_or(""))).collect();
    let a_id = alice.id;
    assert_eq!(
        cmids,
        vec![
            (3, a_id, "m3"),
            (4, a_id, "m4"),
            (5, a_id, "e5"),
            (6, a_id, "d6"),
            (7, a_id, "r7"),
            (8, a_id, "m8"),
            (9, a_id, "e9"),
        ]
    );
    let e3 = by_seq(got, 3);
    assert_eq!(e3.state, Some(tombstone(None)), "a deleted message is a tombstone");
    assert_eq!(e3.body, message("", None), "a deleted message's text is redacted");
    let e4 = by_seq(got, 4);
    assert_eq!(e4.body, message("third", None));
    assert_eq!(e4.state, Some(state("third", None, &[("👍", &[alice.id])])));
    assert_eq!(
        by_seq(got, 5).body,
        EntryBody::Edit { target: 2, body: "first, edited".to_owned() }
    );
    assert_eq!(by_seq(got, 5).state, None);
    assert_eq!(by_seq(got, 6).body, EntryBody::Delete { target: 3 });
    assert_eq!(
        by_seq(got, 7).body,
        EntryBody::Reaction { target: 4, emoji: "👍".to_owned(), remove: false }
    );
    let e8 = by_seq(got, 8);
    assert_eq!(e8.body, message("re: first", Some(2)));
    assert_eq!(e8.state, Some(state("re: first", None, &[])));
    assert_eq!(
        by_seq(got, 9).body,
        EntryBody::Edit { target: 2, body: "first, edited twice".to_owned() }
    );

    // Bob reacts twice, alice takes her reaction back: reactions are aggregated per emoji.
    let mut b = server.ws(&bob).await;
    assert_eq!(ack(&mut b, react(conv, "r10", 4, "👍", false)).await.seq, 10);
    assert_eq!(ack(&mut b, react(conv, "r11", 4, "❤️", false)).await.seq, 11);
    assert_eq!(ack(&mut a, react(conv, "r12", 4, "👍", true)).await.seq, 12);

    // The whole history, in REST pages of 3.
    let all = server.all_entries(&bob, conv, 3).await;
    assert_eq!(seqs(&all), (1..=12).collect::<Vec<_>>());
    let e2 = by_seq(&all, 2);
    assert_eq!(e2.body, message("first", None), "the log keeps what was sent");
    assert_eq!(e2.state, Some(state("first, edited twice", Some(9), &[])));
    assert_eq!(by_seq(&all, 3).state, Some(tombstone(None)));
    assert_eq!(
        by_seq(&all, 4).state,
        Some(state("third", None, &[("👍", &[bob.id]), ("❤️", &[bob.id])]))
    );
    assert_eq!(
        by_seq(&all, 12).body,
        EntryBody::Reaction { target: 4, emoji: "👍".to_owned(), remove: true }
    );
    for e in &all {
        let is_message = matches!(e.body, EntryBody::Message { .. });
        assert_eq!(e.state.is_some(), is_message, "state only on messages: {e:?}");
    }

    // Pages by before/after/limit: the WebSocket and REST agree, and match the whole history.
    // (before, after, limit) and the page it gives.
    let cases = [
        (Some(5), None, 2, vec![3, 4], true),
        (Some(3), None, 5, vec![1, 2], false),
        (None, Some(10), 5, vec![11, 12], false),
        (None, Some(2), 3, vec![3, 4, 5], true),
        (None, None, 3, vec![10, 11, 12], true),
    ];
    for (before, after, limit, want, more) in cases {
        let mut query = format!("limit={limit}");
        if let Some(b) = before {
            query.push_str(&format!("&before={b}"));
        }
        if let Some(a) = after {
            query.push_str(&format!("&after={a}"));
        }
        let rest = rest_page(&server, &bob, conv, &query).await;
        assert_eq!(seqs(&rest.entries), want, "{query}");
        assert_eq!(rest.has_more, more, "{query}");
        assert_eq!(rest.conversation, conv);
        let ws = ws_page(&mut b, conv, before, after, Some(limit)).await;
        assert_eq!(ws, rest, "{query}: the history frame and REST differ");
        for e in &rest.entries {
            assert_eq!(e, by_seq(&all, e.seq), "{query}: a page shows the same entry");
        }
    }

    // Before and after together is a bad request on both transports.
    let path = format!("/v1/conversations/{conv}/entries?before=5&after=2");
    let (status, json) = server.call::<()>(Method::GET, &path, Some(&bob.token), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
    assert_eq!(json["code"], "bad_request");
    let reply = b
        .request(|req_id| ClientFrame::History {
            req_id,
            conversation: conv,
            before: Some(5),
            after: Some(2),
            limit: None,
        })
        .await;
    assert!(
        matches!(&reply, ServerFrame::Error { error, .. } if error.code == ErrorCode::BadRequest),
        "{reply:?}"
    );

    // Resuming from the old cursor over the WebSocket shows the same as over HTTP.
    let old_cursor = BTreeMap::from([(conv, 2)]);
    let over_http = rest_sync(&server, &bob, old_cursor.clone()).await;
    assert_eq!(seqs(&over_http[0].entries), (3..=12).collect::<Vec<_>>());
    let mut b2 = server.ws(&bob).await;
    let over_ws = b2.sync(old_cursor).await;
    assert_eq!(over_ws, over_http);
    server.stop().await;
}

#[tokio::test]
async fn refused_changes_store_nothing() {
    let server = TestServer::start().await;
    let [alice, bob, carol] = server.users(["alice", "bob", "carol"]).await;
    let conv = server.create_direct(&alice, &bob).await;
    let mut a = server.ws(&alice).await;
    let mut b = server.ws(&bob).await;
    let mut c = server.ws(&carol).await;
    assert_eq!(a.send_msg(conv, "m2", "keep").await.seq, 2);
    assert_eq!(a.send_msg(conv, "m3", "to delete").await.seq, 3);
    assert_eq!(ack(&mut a, delete(conv, "d4", 3)).await.seq, 4);
    let before = summary(&server, &alice, conv).await;
    assert_eq!(before.last_seq, 4);

    // Someone else's message.
    assert_eq!(refused(&mut b, edit(conv, "x1", 2, "mine now")).await, ErrorCode::Forbidden);
    assert_eq!(refused(&mut b, delete(conv, "x2", 2)).await, ErrorCode::Forbidden);
    // A deleted message.
    assert_eq!(refused(&mut a, edit(conv, "x3", 3, "undelete")).await, ErrorCode::Conflict);
    assert_eq!(refused(&mut a, delete(conv, "x4", 3)).await, ErrorCode::Conflict);
    assert_eq!(refused(&mut b, react(conv, "x5", 3, "👍", false)).await, ErrorCode::Conflict);
    // Not a message (seq 1 is `created`, seq 4 a deletion), or no such seq.
    for (i, target) in [1, 4, 5, 99].into_iter().enumerate() {
        let code = refused(&mut b, react(conv, &format!("r{i}"), target, "👍", false)).await;
        assert_eq!(code, ErrorCode::BadRequest, "react to seq {target}");
        let code = refused(&mut b, reply(conv, &format!("p{i}"), "re", target)).await;
        assert_eq!(code, ErrorCode::BadRequest, "reply to seq {target}");
        let code = refused(&mut a, edit(conv, &format!("e{i}"), target, "x")).await;
        assert_eq!(code, ErrorCode::BadRequest, "edit seq {target}");
        let code = refused(&mut a, delete(conv, &format!("d{i}"), target)).await;
        assert_eq!(code, ErrorCode::BadRequest, "delete seq {target}");
    }
    // A non-member cannot tell the conversation exists.
    assert_eq!(refused(&mut c, react(conv, "c1", 2, "👍", false)).await, ErrorCode::NotFound);
    assert_eq!(refused(&mut c, edit(conv, "c2", 2, "x")).await, ErrorCode::NotFound);

    // The same refusals over REST, with their HTTP statuses.
    let rest_cases = [
        (&bob, NewEntry::Edit { target: 2, body: "x".into() }, StatusCode::FORBIDDEN, "forbidden"),
        (&bob, NewEntry::Delete { target: 2 }, StatusCode::FORBIDDEN, "forbidden"),
        (&alice, NewEntry::Edit { target: 3, body: "x".into() }, StatusCode::CONFLICT, "conflict"),
        (
            &bob,
            NewEntry::Reaction { target: 1, emoji: "👍".into(), remove: false },
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            &bob,
            NewEntry::Message {
                body: "re".into(),
                reply_to: Some(99),
                attachments: Vec::new(),
                mentions: Vec::new(),
            },
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ];
    for (i, (user, entry, status, code)) in rest_cases.into_iter().enumerate() {
        let (got, json) = server.post_entry(user, conv, &format!("rest{i}"), entry).await;
        assert_eq!(got, status, "{json}");
        assert_eq!(json["code"], code, "{json}");
    }

    // Nothing was stored: last_seq, history and what a live member receives are unchanged.
    for user in [&alice, &bob] {
        let after = summary(&server, user, conv).await;
        assert_eq!(after.last_seq, 4);
        assert_eq!(after.last_activity, before.last_activity);
    }
    assert_eq!(seqs(&server.all_entries(&alice, conv, 10).await), vec![1, 2, 3, 4]);
    b.sync(BTreeMap::new()).await;
    assert_eq!(a.send_msg(conv, "m5", "marker").await.seq, 5);
    assert_eq!(b.next_entry().await.seq, 5);
    // Reacting to a message of someone else, or replying to it, is fine.
    assert_eq!(ack(&mut b, react(conv, "ok1", 2, "👍", false)).await.seq, 6);
    assert_eq!(ack(&mut b, reply(conv, "ok2", "re: keep", 2)).await.seq, 7);
    server.stop().await;
}

#[tokio::test]
async fn connected_member_receives_changes_live_in_order() {
    let server = TestServer::start().await;
    let (alice, bob, conv) = server.direct_pair().await;
    let mut a = server.ws(&alice).await;
    let mut b = server.ws(&bob).await;
    a.sync(BTreeMap::new()).await;
    b.sync(BTreeMap::new()).await;

    assert_eq!(a.send_msg(conv, "m", "hello").await.seq, 2);
    assert_eq!(ack(&mut a, edit(conv, "e", 2, "hello!")).await.seq, 3);
    assert_eq!(ack(&mut b, react(conv, "r", 2, "🎉", false)).await.seq, 4);
    assert_eq!(ack(&mut b, reply(conv, "p", "hi", 2)).await.seq, 5);
    assert_eq!(ack(&mut b, react(conv, "r2", 2, "🎉", true)).await.seq, 6);
    assert_eq!(ack(&mut a, delete(conv, "d", 2)).await.seq, 7);

    let want = vec![
        (2, alice.id, message("hello", None)),
        (3, alice.id, EntryBody::Edit { target: 2, body: "hello!".to_owned() }),
        (4, bob.id, EntryBody::Reaction { target: 2, emoji: "🎉".to_owned(), remove: false }),
        (5, bob.id, message("hi", Some(2))),
        (6, bob.id, EntryBody::Reaction { target: 2, emoji: "🎉".to_owned(), remove: true }),
        (7, alice.id, EntryBody::Delete { target: 2 }),
    ];
    for ws in [&mut b, &mut a] {
        let mut got = Vec::new();
        for _ in 0..want.len() {
            let e = ws.next_entry().await;
            assert_eq!(e.state, None, "live entries carry no state: {e:?}");
            got.push((e.seq, e.sender, e.body));
        }
        assert_eq!(got, want);
    }
    // The message is now a tombstone whose reply still points at it.
    let all = server.all_entries(&bob, conv, 10).await;
    assert_eq!(by_seq(&all, 2).state, Some(tombstone(Some(3))));
    assert_eq!(by_seq(&all, 5).body, message("hi", Some(2)));
    // Deletion redacts: the message entry and its edit keep their seq but lose their text.
    assert_eq!(by_seq(&all, 2).body, message("", None));
    assert_eq!(by_seq(&all, 3).body, EntryBody::Edit { target: 2, body: String::new() });
    server.stop().await;
}
