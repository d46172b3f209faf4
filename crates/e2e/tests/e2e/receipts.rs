//! Cursors, receipts and unread counts: `delivered`/`read` frames and
//! `PUT /v1/conversations/{id}/cursors` move a member's cursors, which never go backwards, are
//! clamped to `last_seq`, and where `read` implies delivered. Reports are coalesced (written
//! once per `receipt_flush_ms`) and told as `receipt` frames to the other members and to the
//! reader's own other devices. Unread is the number of entries after `read_seq` written by
//! someone else; `GET /v1/conversations/{id}/receipts` shows every member's cursors. A
//! non-member's report is `not_found`.

use std::collections::BTreeMap;

use natter_proto::rest::{ConversationPage, Receipts, SetCursors};
use natter_proto::{
    ClientFrame, ConversationId, ConversationSummary, ErrorCode, Receipt, ReqId, Seq, ServerFrame,
    UserId,
};
use natter_testkit::{TestServer, TestUser, WsClient, reply_id};
use reqwest::{Method, StatusCode};

fn read(req_id: ReqId, conv: ConversationId, seq: Seq) -> ClientFrame {
    ClientFrame::Read { req_id: Some(req_id), conversation: conv, seq }
}

fn delivered(req_id: ReqId, conv: ConversationId, seq: Seq) -> ClientFrame {
    ClientFrame::Delivered { req_id: Some(req_id), conversation: conv, seq }
}

/// Sends a cursor report and expects its `ok`.
async fn report(ws: &mut WsClient, build: impl FnOnce(ReqId) -> ClientFrame) {
    match ws.request(build).await {
        ServerFrame::Ok { .. } => {}
        other => panic!("expected ok, got {other:?}"),
    }
}

/// The next receipt frame this session gets, whoever it is about.
async fn next_receipt(ws: &mut WsClient) -> Receipt {
    match ws.next_matching(|f| matches!(f, ServerFrame::Receipt { .. })).await {
        ServerFrame::Receipt { receipt } => receipt,
        _ => unreachable!("matched a receipt"),
    }
}

fn receipt(conv: ConversationId, user: &TestUser, delivered_seq: Seq, read_seq: Seq) -> Receipt {
    Receipt { conversation: conv, user: user.id, delivered_seq, read_seq }
}

/// `GET /v1/conversations`, as a map by conversation.
async fn list(
    server: &TestServer,
    user: &TestUser,
) -> BTreeMap<ConversationId, ConversationSummary> {
    let page: ConversationPage = server
        .ok::<(), _>(Method::GET, "/v1/conversations", &user.token, None, StatusCode::OK)
        .await;
    page.conversations.into_iter().map(|c| (c.id, c)).collect()
}

/// `(last_seq, delivered_seq, read_seq, unread)` of `conv` as `user`'s list shows it.
async fn counts(
    server: &TestServer,
    user: &TestUser,
    conv: ConversationId,
) -> (Seq, Seq, Seq, u64) {
    let all = list(server, user).await;
    let c = all.get(&conv).unwrap_or_else(|| panic!("{conv} not listed"));
    (c.last_seq, c.delivered_seq, c.read_seq, c.unread)
}

/// `GET /v1/conversations/{id}/receipts`, as `(delivered_seq, read_seq)` by user.
async fn receipts(
    server: &TestServer,
    user: &TestUser,
    conv: ConversationId,
) -> BTreeMap<UserId, (Seq, Seq)> {
    let path = format!("/v1/conversations/{conv}/receipts");
    let res: Receipts =
        server.ok::<(), _>(Method::GET, &path, &user.token, None, StatusCode::OK).await;
    res.receipts
        .into_iter()
        .map(|r| {
            assert_eq!(r.conversation, conv);
            (r.user, (r.delivered_seq, r.read_seq))
        })
        .collect()
}

async fn put_cursors(
    server: &TestServer,
    user: &TestUser,
    conv: ConversationId,
    delivered_seq: Option<Seq>,
    read_seq: Option<Seq>,
) -> (StatusCode, serde_json::Value) {
    let path = format!("/v1/conversations/{conv}/cursors");
    let body = SetCursors { delivered_seq, read_seq };
    server.call(Method::PUT, &path, Some(&user.token), Some(&body)).await
}

#[tokio::test]
async fn unread_counts_and_coalesced_receipts() {
    // A long flush window, so that a burst of reports lands in at most two windows.
    let server = TestServer::start_with(|c| c.limits.receipt_flush_ms = 1000).await;
    let [alice, bob, carol] = server.users(["alice", "bob", "carol"]).await;
    let direct = server.create_direct(&alice, &bob).await;
    server.contacts(&alice, &[&carol]).await;
    let group = server.create_group(&alice, "trio", &[&bob, &carol]).await;
    let mut a = server.ws(&alice).await;
    let mut b = server.ws(&bob).await;
    let mut b2 = server.ws_token(&server.login("bob").await).await;
    let mut c = server.ws(&carol).await;
    for ws in [&mut a, &mut b, &mut b2, &mut c] {
        ws.sync(BTreeMap::new()).await;
    }
    for i in 0..5 {
        let ack = a.send_msg(direct, &format!("m{i}"), "hi bob").await;
        assert_eq!(ack.seq, 2 + i);
    }

    // Unread counts messages after read_seq written by someone else: for bob, alice's 5
    // messages (not the `created` entry); for alice, nothing of her own.
    assert_eq!(counts(&server, &bob, direct).await, (6, 0, 0, 5));
    assert_eq!(counts(&server, &alice, direct).await, (6, 0, 0, 0));
    assert_eq!(counts(&server, &bob, group).await, (1, 0, 0, 0));
    assert_eq!(counts(&server, &carol, group).await, (1, 0, 0, 0));
    assert_eq!(counts(&server, &alice, group).await, (1, 0, 0, 0));

    // A burst of six reports, each with its own `ok`.
    let mut req_ids = Vec::new();
    let first = b.req_id();
    b.send_frame(&delivered(first, direct, 4)).await;
    req_ids.push(first);
    for seq in 2..=6 {
        let req_id = b.req_id();
        b.send_frame(&read(req_id, direct, seq)).await;
        req_ids.push(req_id);
    }
    for req_id in req_ids {
        let reply = b.next_matching(|f| reply_id(f) == Some(req_id)).await;
        assert_eq!(reply, ServerFrame::Ok { req_id });
    }

    // Alice hears of it in at most two receipts (the burst may straddle one flush), each
    // moving forwards, the last one saying delivered = read = 6.
    let mut seen: Vec<Receipt> = Vec::new();
    loop {
        let r = next_receipt(&mut a).await;
        assert_eq!((r.conversation, r.user), (direct, bob.id), "{r:?}");
        assert!(r.delivered_seq >= r.read_seq, "{r:?}");
        if let Some(prev) = seen.last() {
            assert!(
                r.delivered_seq >= prev.delivered_seq && r.read_seq > prev.read_seq,
                "receipts went backwards: {seen:?} then {r:?}"
            );
        }
        seen.push(r);
        if r.read_seq == 6 {
            break;
        }
    }
    assert!(seen.len() <= 2, "6 reports were not coalesced: {seen:?}");
    assert_eq!(seen.last(), Some(&receipt(direct, &bob, 6, 6)));
    // Bob's other device learns it too (read sync across devices).
    loop {
        let r = next_receipt(&mut b2).await;
        assert_eq!((r.conversation, r.user), (direct, bob.id), "{r:?}");
        if r.read_seq == 6 {
            assert_eq!(r, receipt(direct, &bob, 6, 6));
            break;
        }
    }
    assert_eq!(counts(&server, &bob, direct).await, (6, 6, 6, 0));
    let cursors = receipts(&server, &alice, direct).await;
    assert_eq!(cursors, BTreeMap::from([(alice.id, (0, 0)), (bob.id, (6, 6))]));
    assert_eq!(receipts(&server, &bob, direct).await, cursors);

    // A lower `read` changes nothing and sends no receipt: the next receipt alice gets is
    // the one for bob's read in the group, reported after it.
    report(&mut b, |id| read(id, direct, 3)).await;
    report(&mut b, |id| delivered(id, direct, 2)).await;
    report(&mut b, |id| read(id, group, 1)).await;
    assert_eq!(next_receipt(&mut a).await, receipt(group, &bob, 1, 1));
    assert_eq!(counts(&server, &bob, direct).await, (6, 6, 6, 0));
    assert_eq!(counts(&server, &bob, group).await, (1, 1, 1, 0));
    // Carol, a member of the group only, got that receipt and none about the direct
    // conversation.
    assert_eq!(next_receipt(&mut c).await, receipt(group, &bob, 1, 1));
    server.stop().await;
}

#[tokio::test]
async fn cursors_move_forwards_only_clamped_and_read_implies_delivered() {
    let server = TestServer::start_with(|c| c.limits.receipt_flush_ms = 20).await;
    let (alice, bob, conv) = server.direct_pair().await;
    let mut a = server.ws(&alice).await;
    let mut b = server.ws(&bob).await;
    for i in 0..4 {
        a.send_msg(conv, &format!("m{i}"), "hi").await;
    }
    assert_eq!(counts(&server, &bob, conv).await, (5, 0, 0, 4));

    // `read` alone moves delivered too.
    report(&mut b, |id| read(id, conv, 2)).await;
    assert_eq!(next_receipt(&mut a).await, receipt(conv, &bob, 2, 2));
    assert_eq!(counts(&server, &bob, conv).await, (5, 2, 2, 3));
    // `delivered` alone leaves read (and unread) where they were.
    report(&mut b, |id| delivered(id, conv, 4)).await;
    assert_eq!(next_receipt(&mut a).await, receipt(conv, &bob, 4, 2));
    assert_eq!(counts(&server, &bob, conv).await, (5, 4, 2, 3));
    // Lower reports change nothing; the next receipt is the next real change.
    report(&mut b, |id| delivered(id, conv, 3)).await;
    report(&mut b, |id| read(id, conv, 1)).await;
    report(&mut b, |id| read(id, conv, 3)).await;
    assert_eq!(next_receipt(&mut a).await, receipt(conv, &bob, 4, 3));
    // Beyond last_seq is clamped to it.
    report(&mut b, |id| read(id, conv, 1000)).await;
    assert_eq!(next_receipt(&mut a).await, receipt(conv, &bob, 5, 5));
    assert_eq!(counts(&server, &bob, conv).await, (5, 5, 5, 0));
    assert_eq!(receipts(&server, &alice, conv).await[&bob.id], (5, 5));

    // New entries: only others' count as unread, and a clamped cursor does not run ahead of
    // them (seq 6 and 7 are unread, not covered by the earlier `read 1000`).
    a.send_msg(conv, "m6", "more").await;
    b.send_msg(conv, "m7", "mine").await;
    a.send_msg(conv, "m8", "more").await;
    assert_eq!(counts(&server, &bob, conv).await, (8, 5, 5, 2));
    assert_eq!(counts(&server, &alice, conv).await, (8, 0, 0, 1));
    report(&mut b, |id| read(id, conv, 7)).await;
    assert_eq!(next_receipt(&mut a).await, receipt(conv, &bob, 7, 7));
    assert_eq!(counts(&server, &bob, conv).await, (8, 7, 7, 1));
    server.stop().await;
}

#[tokio::test]
async fn rest_cursors_work_like_frames() {
    let server = TestServer::start_with(|c| c.limits.receipt_flush_ms = 20).await;
    let (alice, bob, conv) = server.direct_pair().await;
    let mut a = server.ws(&alice).await;
    let mut b = server.synced_ws(&bob).await;
    for i in 0..5 {
        a.send_msg(conv, &format!("m{i}"), "hi").await;
    }

    let (status, json) = put_cursors(&server, &bob, conv, Some(3), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{json}");
    assert_eq!(next_receipt(&mut a).await, receipt(conv, &bob, 3, 0));
    // Bob's own live session hears of his REST report as well.
    assert_eq!(next_receipt(&mut b).await, receipt(conv, &bob, 3, 0));

    let (status, _) = put_cursors(&server, &bob, conv, None, Some(5)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(next_receipt(&mut a).await, receipt(conv, &bob, 5, 5));
    assert_eq!(counts(&server, &bob, conv).await, (6, 5, 5, 1));

    // Lower values change nothing; higher ones are clamped; both at once are one receipt.
    let (status, _) = put_cursors(&server, &bob, conv, Some(1), Some(2)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = put_cursors(&server, &bob, conv, Some(100), Some(6)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(next_receipt(&mut a).await, receipt(conv, &bob, 6, 6));
    assert_eq!(counts(&server, &bob, conv).await, (6, 6, 6, 0));
    assert_eq!(
        receipts(&server, &bob, conv).await,
        BTreeMap::from([(alice.id, (0, 0)), (bob.id, (6, 6))])
    );

    // An empty report is accepted and changes nothing.
    let (status, _) = put_cursors(&server, &bob, conv, None, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = put_cursors(&server, &alice, conv, Some(2), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(next_receipt(&mut a).await, receipt(conv, &alice, 2, 0));
    server.stop().await;
}

#[tokio::test]
async fn non_members_cannot_report_or_read_cursors() {
    let server = TestServer::start_with(|c| c.limits.receipt_flush_ms = 20).await;
    let [alice, bob, carol] = server.users(["alice", "bob", "carol"]).await;
    let conv = server.create_direct(&alice, &bob).await;
    let mut a = server.ws(&alice).await;
    let mut c = server.ws(&carol).await;
    a.send_msg(conv, "m", "hi").await;
    let missing = ConversationId(9999);

    for target in [conv, missing] {
        for build in [read, delivered] {
            let reply = c.request(|id| build(id, target, 1)).await;
            match reply {
                ServerFrame::Error { error, .. } => {
                    assert_eq!(error.code, ErrorCode::NotFound, "{target}")
                }
                other => panic!("expected not_found, got {other:?}"),
            }
        }
        let (status, json) = put_cursors(&server, &carol, target, Some(1), Some(1)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{json}");
        assert_eq!(json["code"], "not_found");
        let path = format!("/v1/conversations/{target}/receipts");
        let (status, json) = server.call::<()>(Method::GET, &path, Some(&carol.token), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{json}");
        assert_eq!(json["code"], "not_found");
    }
    // Without a req_id the error still comes, unmatched.
    c.send_frame(&ClientFrame::Read { req_id: None, conversation: conv, seq: 1 }).await;
    let reply = c.next_matching(|f| matches!(f, ServerFrame::Error { .. })).await;
    assert!(
        matches!(&reply, ServerFrame::Error { req_id: None, error } if error.code == ErrorCode::NotFound),
        "{reply:?}"
    );

    // Nothing moved: the members' cursors are untouched, and the next receipt alice gets is
    // for a real report.
    assert_eq!(
        receipts(&server, &alice, conv).await,
        BTreeMap::from([(alice.id, (0, 0)), (bob.id, (0, 0))])
    );
    let mut b = server.ws(&bob).await;
    report(&mut b, |id| read(id, conv, 2)).await;
    assert_eq!(next_receipt(&mut a).await, receipt(conv, &bob, 2, 2));
    server.stop().await;
}
