//! Cluster mode, PostgreSQL stopped under traffic and started again: SDK clients on all
//! three nodes keep sending in two groups. While the database is down, a REST send is
//! answered 503 `unavailable` and a WebSocket send an `unavailable` error frame (both
//! retryable: nothing was committed); the SDK clients drop and keep their sends in the
//! outbox. Once PostgreSQL is back the nodes serve again by themselves (no restart), every
//! outbox is delivered, each send is stored exactly once, nothing acked is lost, and every
//! member ends with the store's whole log, 1..=N.

mod cluster_traffic;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cluster_traffic::{
    Member, Traffic, assert_contiguous_log, assert_member_saw_log, assert_sends_committed_once,
    store_log, wait_all_acked, wait_more_acks,
};
use natter_proto::rest::PostEntry;
use natter_proto::{Ack, ClientFrame, ConversationId, ErrorBody, ErrorCode, NewEntry, ServerFrame};
use natter_testkit::process::{FAST, ProcessCluster, register};
use natter_testkit::{WAIT, WsClient, poll_until, within};

/// The binary under test, built by cargo before these tests run.
const NATTER: &str = env!("CARGO_BIN_EXE_natter");

/// Each sender queues `BURST` messages every `PACE`: several on the wire at once.
const PACE: Duration = Duration::from_millis(50);
const BURST: usize = 3;

/// `POST /v1/conversations/{conv}/entries` (a message): the status and the body.
async fn post_message(
    addr: SocketAddr,
    token: &str,
    conv: ConversationId,
    client_msg_id: &str,
) -> (u16, String) {
    let body = PostEntry {
        client_msg_id: client_msg_id.to_owned(),
        entry: NewEntry::Message {
            body: client_msg_id.to_owned(),
            reply_to: None,
            attachments: Vec::new(),
            mentions: Vec::new(),
        },
    };
    let req = reqwest::Client::new()
        .post(format!("http://{addr}/v1/conversations/{conv}/entries"))
        .bearer_auth(token)
        .json(&body)
        .send();
    let res = within("a REST send", req).await.expect("the node answers");
    let status = res.status().as_u16();
    (status, within("its body", res.text()).await.expect("a body"))
}

/// Sends a message on a raw session; the server's reply to it (an ack or an error).
async fn ws_send(ws: &mut WsClient, conv: ConversationId, client_msg_id: &str) -> ServerFrame {
    ws.request(|req_id| ClientFrame::Send {
        req_id,
        conversation: conv,
        client_msg_id: client_msg_id.to_owned(),
        body: client_msg_id.to_owned(),
        reply_to: None,
        attachments: Vec::new(),
        mentions: Vec::new(),
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_under_traffic_loses_and_repeats_nothing() {
    let mut c = ProcessCluster::start(NATTER, 3, FAST).await;
    let addrs = [c.node(0).addr(), c.node(1).addr(), c.node(2).addr()];
    let mut accounts = Vec::new();
    for (i, handle) in ["ada", "ben", "cy", "dee", "eli", "flo"].into_iter().enumerate() {
        accounts.push(register(addrs[i % 3], handle).await);
    }
    let pia = register(addrs[1], "pia").await;
    // The owners' contacts, so that the creations add them.
    accounts[0].contacts(addrs[0], &[&accounts[1], &accounts[2], &pia]).await;
    accounts[3].contacts(addrs[0], &[&accounts[4], &accounts[5]]).await;
    let g1 = within(
        "create a group",
        accounts[0].api(addrs[0]).create_group("one", &[accounts[1].id, accounts[2].id, pia.id]),
    )
    .await
    .expect("group created")
    .conversation
    .id;
    let g2 = within(
        "create a group",
        accounts[3].api(addrs[0]).create_group("two", &[accounts[4].id, accounts[5].id]),
    )
    .await
    .expect("group created")
    .conversation
    .id;

    // Each group has a member on each node.
    let mut members = Vec::new();
    for (i, account) in accounts.iter().enumerate() {
        members.push(Member::connect(account, addrs[i % 3]).await);
    }
    for m in &members {
        m.wait_connects(1).await;
    }
    let all: Vec<&Member> = members.iter().collect();
    // Pia's raw session on node-2 sends by hand; it never syncs, so it gets only replies.
    let mut pia_ws = WsClient::open(addrs[1], &pia.token).await;

    let senders: Vec<_> =
        members.iter().enumerate().map(|(i, m)| (m, if i < 3 { g1 } else { g2 })).collect();
    let traffic = Traffic::start(&senders, PACE, BURST);
    wait_more_acks("traffic to flow", &all, &vec![0; all.len()], 10).await;

    let drops_before: Vec<usize> = all.iter().map(|m| m.log().drops.len()).collect();
    let sent_before: Vec<usize> = all.iter().map(|m| m.log().sent.len()).collect();
    c.pg.stop().await;

    // REST: 503, `unavailable`.
    let (status, body) = post_message(addrs[2], &accounts[1].token, g1, "rest-1").await;
    let error: ErrorBody = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("a REST error body ({e}): {status} {body}"));
    assert_eq!((status, error.code), (503, ErrorCode::Unavailable), "a REST send: {body}");
    assert!(error.code.retryable(), "unavailable is retryable");
    // WebSocket: an error frame, `unavailable`.
    match ws_send(&mut pia_ws, g1, "ws-1").await {
        ServerFrame::Error { error, .. } => {
            assert_eq!(error.code, ErrorCode::Unavailable, "a WebSocket send: {error:?}");
        }
        other => panic!("a WebSocket send was answered {other:?} with PostgreSQL down"),
    }
    // The SDK clients were refused too (they dropped to retry), and keep queueing.
    poll_until(
        "every SDK client to drop and queue sends while PostgreSQL is down",
        || async {
            all.iter()
                .enumerate()
                .all(|(i, m)| {
                    let log = m.log();
                    log.drops.len() > drops_before[i] && log.sent.len() >= sent_before[i] + 80
                })
                .then_some(())
        },
        || all.iter().map(|m| m.summary()).collect::<Vec<_>>().join("\n"),
    )
    .await;

    c.pg.start_again().await;
    let restarted_at = Instant::now();
    let sent_at_restart: Vec<usize> = all.iter().map(|m| m.log().sent.len()).collect();
    // Service resumes by itself: the same REST send is now stored...
    let last_answer = std::sync::Mutex::new(String::new());
    let rest_ack: Ack = poll_until(
        "a REST send to succeed after PostgreSQL is back",
        || async {
            let (status, body) = post_message(addrs[2], &accounts[1].token, g1, "rest-1").await;
            let ack =
                (200..300).contains(&status).then(|| serde_json::from_str(&body).expect("an ack"));
            *last_answer.lock().expect("lock") = format!("{status} {body}");
            ack
        },
        || format!("its last answer: {}", last_answer.lock().expect("lock")),
    )
    .await;
    let rest_after = restarted_at.elapsed();
    // ... and so is the WebSocket one (the same client_msg_id, as a client would retry).
    let deadline = Instant::now() + WAIT;
    let ws_ack = loop {
        match ws_send(&mut pia_ws, g1, "ws-1").await {
            ServerFrame::Ack { ack, .. } => break ack,
            ServerFrame::Error { error, .. }
                if error.code == ErrorCode::Unavailable && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("a WebSocket send was answered {other:?} after PostgreSQL is back"),
        }
    };
    // Everything the outboxes held during the outage is acked, and traffic goes on.
    poll_until(
        "the outboxes to deliver what was queued during the outage",
        || async {
            all.iter()
                .zip(&sent_at_restart)
                .all(|(m, n)| m.log().acks.len() >= *n)
                .then(|| restarted_at.elapsed())
        },
        || all.iter().map(|m| m.summary()).collect::<Vec<_>>().join("\n"),
    )
    .await;
    let drained_after = restarted_at.elapsed();
    let at_drained: Vec<usize> = all.iter().map(|m| m.log().acks.len()).collect();
    wait_more_acks("traffic to flow after the outage", &all, &at_drained, 10).await;
    traffic.stop().await;
    wait_all_acked(&all).await;

    let api = accounts[0].api(addrs[1]);
    let api2 = accounts[3].api(addrs[1]);
    let extra = [(accounts[1].id, "rest-1".to_owned()), (pia.id, "ws-1".to_owned())];
    for (conv, api, group, extra) in
        [(g1, &api, &all[..3], &extra[..]), (g2, &api2, &all[3..], &[])]
    {
        let log = store_log(api, conv).await;
        assert_contiguous_log(conv, &log);
        // Not in order: a send answered `unavailable` is retried after later ones were written.
        assert_sends_committed_once(conv, &log, group, extra, false);
        for m in group {
            assert_member_saw_log(m, conv, &log).await;
        }
        if conv == g1 {
            for (ack, id) in [(&rest_ack, "rest-1"), (&ws_ack, "ws-1")] {
                let entry = &log[ack.seq as usize - 1];
                assert_eq!(
                    (entry.id.as_str(), entry.client_msg_id.as_deref()),
                    (&*ack.id, Some(id))
                );
            }
        }
    }
    eprintln!(
        "after PostgreSQL came back: REST answered in {rest_after:?}, the outboxes drained in \
         {drained_after:?}; {} sends",
        all.iter().map(|m| m.log().sent.len()).sum::<usize>()
    );
    for m in members {
        m.close().await;
    }
}
