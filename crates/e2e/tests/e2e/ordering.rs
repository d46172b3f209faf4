//! G1 (order), G3 (no loss, offline delivery) and G5 (resume) under concurrency:
//!
//! - concurrent senders over WebSockets and REST to one group: every member session, on every
//!   device, sees the same contiguous log as the store, and every ack's seq is its entry's;
//! - a client whose socket dies resumes from its last seen seq while new entries are being
//!   committed, with one sync page or many (`has_more`), and ends with exactly what it missed,
//!   then the live stream, with no gap and no duplicate;
//! - a user who never connected gets her conversations announced on the first sync and can
//!   page the whole log from seq 0; `POST /v1/sync` answers exactly as the WebSocket `sync`;
//! - a session that already synced has new conversations (created, or joined with history)
//!   announced live, contiguously.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::future::join_all;
use natter_proto::rest::{AddMember, SyncRequest, SyncResponse};
use natter_proto::{
    Ack, ClientFrame, ConversationId, ConversationKind, Entry, EntryBody, ReqId, Seq, ServerFrame,
    SyncConversation, UserId,
};
use natter_server::Limits;
use natter_testkit::{TestServer, TestUser, WAIT, WsClient, assert_contiguous};
use reqwest::{Method, StatusCode};
use tokio::sync::{Semaphore, oneshot};

/// What every client must agree on for one entry (live entries carry no `state`, store
/// reads do, so `state` is left out).
type Key = (Seq, String, UserId, i64, Option<String>, EntryBody);

fn key(e: &Entry) -> Key {
    (e.seq, e.id.clone(), e.sender, e.ts, e.client_msg_id.clone(), e.body.clone())
}

fn keys(entries: &[Entry]) -> Vec<Key> {
    entries.iter().map(key).collect()
}

fn seqs(entries: &[Entry]) -> Vec<Seq> {
    entries.iter().map(|e| e.seq).collect()
}

fn message(body: &str) -> EntryBody {
    EntryBody::Message {
        body: body.to_owned(),
        reply_to: None,
        attachments: Vec::new(),
        mentions: Vec::new(),
    }
}

/// The next frame, failing the test with `what` on timeout or close.
async fn next_frame(ws: &mut WsClient, what: &str) -> ServerFrame {
    match ws.next_within(WAIT).await {
        Some(frame) => frame,
        None => panic!("timed out or closed while waiting for {what}"),
    }
}

/// Reads live frames until an entry of `conv` with seq `last` (or later) arrives; returns
/// that conversation's entries in arrival order. Receipts and other conversations' entries
/// are skipped; anything else fails the test.
async fn entries_until(ws: &mut WsClient, conv: ConversationId, last: Seq) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    while out.last().is_none_or(|e| e.seq < last) {
        let what = format!("seq {last} of {conv} (have {:?})", seqs(&out));
        match next_frame(ws, &what).await {
            ServerFrame::Entry { entry } if entry.conversation == conv => out.push(entry),
            ServerFrame::Entry { .. } | ServerFrame::Receipt { .. } => {}
            other => panic!("unexpected frame while waiting for {what}: {other:?}"),
        }
    }
    out
}

/// Pipelines `n` sends on an unsynced socket and waits for every ack; returns them in send
/// order with their bodies.
async fn send_many(
    ws: &mut WsClient,
    conv: ConversationId,
    tag: &str,
    n: usize,
) -> Vec<(Ack, String)> {
    let mut pending: HashMap<ReqId, usize> = HashMap::new();
    let bodies: Vec<String> = (0..n).map(|i| format!("{tag} #{i}")).collect();
    for (i, body) in bodies.iter().enumerate() {
        let req_id = ws.req_id();
        pending.insert(req_id, i);
        ws.send_frame(&ClientFrame::Send {
            req_id,
            conversation: conv,
            client_msg_id: format!("{tag}-{i}"),
            body: body.clone(),
            reply_to: None,
            attachments: Vec::new(),
            mentions: Vec::new(),
        })
        .await;
    }
    let mut acks: Vec<Option<Ack>> = vec![None; n];
    while !pending.is_empty() {
        match next_frame(ws, &format!("{} acks of {tag}", pending.len())).await {
            ServerFrame::Ack { req_id, ack } => {
                let i = pending.remove(&req_id).expect("an ack for a pending send");
                acks[i] = Some(ack);
            }
            ServerFrame::Receipt { .. } => {}
            other => panic!("unexpected frame while sending {tag}: {other:?}"),
        }
    }
    acks.into_iter().map(|a| a.expect("every send acked")).zip(bodies).collect()
}

/// One acknowledged send, as the sender saw it.
#[derive(Debug, Clone)]
struct Sent {
    sender: UserId,
    client_msg_id: String,
    body: String,
    ack: Ack,
}

/// Checks that each ack names its own entry of `log` (seq, id, ts, sender, key, body).
fn assert_acks_match_log(sent: &[Sent], log: &[Entry]) {
    for s in sent {
        let e = &log[(s.ack.seq - 1) as usize];
        assert_eq!(e.seq, s.ack.seq);
        assert_eq!(
            (&e.id, e.ts, e.sender, e.client_msg_id.as_deref(), &e.body),
            (&s.ack.id, s.ack.ts, s.sender, Some(s.client_msg_id.as_str()), &message(&s.body)),
            "entry at the acked seq {} is not the acked message",
            s.ack.seq
        );
    }
}

const GROUP_USERS: usize = 6;
const WS_SENDERS: usize = 8;
const REST_SENDERS: usize = 2;
const PER_SENDER: usize = 40;
/// Sends a WebSocket sender pipelines before it waits for their acks.
const BURST: usize = 8;
/// Concurrent requests of one REST sender.
const REST_CONCURRENCY: usize = 4;

/// A WebSocket sender that is also a synced member session: sends in pipelined bursts while
/// receiving, then reads until the final seq. Returns its sends (in send order) and every
/// entry of `conv` it received live.
async fn ws_sender(
    mut ws: WsClient,
    sender: UserId,
    conv: ConversationId,
    tag: String,
    last: Seq,
) -> (Vec<Sent>, Vec<Entry>) {
    let mut sent: Vec<Option<Sent>> = vec![None; PER_SENDER];
    let mut live: Vec<Entry> = Vec::new();
    for burst in (0..PER_SENDER).collect::<Vec<_>>().chunks(BURST) {
        let mut pending: HashMap<ReqId, usize> = HashMap::new();
        for &i in burst {
            let req_id = ws.req_id();
            pending.insert(req_id, i);
            ws.send_frame(&ClientFrame::Send {
                req_id,
                conversation: conv,
                client_msg_id: format!("{tag}-{i}"),
                body: format!("{tag} #{i}"),
                reply_to: None,
                attachments: Vec::new(),
                mentions: Vec::new(),
            })
            .await;
        }
        while !pending.is_empty() {
            match next_frame(&mut ws, &format!("acks of {tag}")).await {
                ServerFrame::Ack { req_id, ack } => {
                    let i = pending.remove(&req_id).expect("an ack for a pending send");
                    sent[i] = Some(Sent {
                        sender,
                        client_msg_id: format!("{tag}-{i}"),
                        body: format!("{tag} #{i}"),
                        ack,
                    });
                }
                ServerFrame::Entry { entry } if entry.conversation == conv => live.push(entry),
                ServerFrame::Receipt { .. } => {}
                other => panic!("{tag}: unexpected frame {other:?}"),
            }
        }
    }
    if live.last().is_none_or(|e| e.seq < last) {
        live.extend(entries_until(&mut ws, conv, last).await);
    }
    let sent = sent.into_iter().map(|s| s.expect("acked")).collect();
    (sent, live)
}

/// A REST sender: `PER_SENDER` messages, `REST_CONCURRENCY` at a time.
async fn rest_sender(
    server: Arc<TestServer>,
    user: TestUser,
    conv: ConversationId,
    tag: String,
) -> Vec<Sent> {
    let mut out = Vec::new();
    for chunk in (0..PER_SENDER).collect::<Vec<_>>().chunks(REST_CONCURRENCY) {
        let sends = chunk.iter().map(|&i| {
            let (server, user, tag) = (&server, &user, &tag);
            async move {
                let client_msg_id = format!("{tag}-{i}");
                let body = format!("{tag} #{i}");
                let ack = server.send_rest(user, conv, &client_msg_id, &body).await;
                Sent { sender: user.id, client_msg_id, body, ack }
            }
        });
        out.extend(join_all(sends).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_yield_one_order_for_every_session() {
    let server = Arc::new(TestServer::start().await);
    let mut users = Vec::new();
    for i in 0..GROUP_USERS {
        users.push(server.user(&format!("member{i}")).await);
    }
    let others: Vec<&TestUser> = users[1..].iter().collect();
    // The owner's contacts (a direct conversation each), so that the group's creation adds
    // them; every session knows its direct conversations already (`known`).
    let directs = server.contacts(&users[0], &others).await;
    let known = |u: &TestUser| -> BTreeMap<ConversationId, Seq> {
        match users.iter().position(|v| v.id == u.id) {
            Some(0) => directs.iter().map(|&d| (d, 1)).collect(),
            Some(i) => BTreeMap::from([(directs[i - 1], 1)]),
            None => unreachable!("a member"),
        }
    };
    let conv = server.create_group(&users[0], "busy", &others).await;
    let n_total = (WS_SENDERS + REST_SENDERS) * PER_SENDER;
    let last = n_total as Seq + 1;

    // Receivers: one session per member, a second device for half of them.
    let mut cursors: HashMap<String, BTreeMap<ConversationId, Seq>> = HashMap::new();
    let mut receivers: Vec<(String, WsClient)> = Vec::new();
    for u in &users {
        cursors.insert(format!("{}/1", u.handle), known(u));
        receivers.push((format!("{}/1", u.handle), server.ws(u).await));
    }
    for u in &users[..GROUP_USERS / 2] {
        let token = server.login(&u.handle).await;
        cursors.insert(format!("{}/2", u.handle), known(u));
        receivers.push((format!("{}/2", u.handle), server.ws_token(&token).await));
    }
    // Senders: each its own device and socket, members too.
    let mut senders: Vec<(String, UserId, WsClient)> = Vec::new();
    for i in 0..WS_SENDERS {
        let u = &users[i % GROUP_USERS];
        let token = server.login(&u.handle).await;
        let tag = format!("ws{i}-{}", u.handle);
        cursors.insert(tag.clone(), known(u));
        senders.push((tag, u.id, server.ws_token(&token).await));
    }

    // Every session syncs before anyone sends: each is told of the group with its `created`.
    let mut seen: HashMap<String, Vec<Entry>> = HashMap::new();
    let sessions = receivers
        .iter_mut()
        .map(|(name, ws)| (name.clone(), ws))
        .chain(senders.iter_mut().map(|(tag, _, ws)| (tag.clone(), ws)));
    for (name, ws) in sessions {
        let synced = ws.sync(cursors[&name].clone()).await;
        assert_eq!(synced.len(), 1, "{name}: {synced:?}");
        assert_eq!(synced[0].conversation.id, conv);
        assert_eq!(seqs(&synced[0].entries), vec![1], "{name}");
        assert!(!synced[0].has_more);
        seen.insert(name, synced[0].entries.clone());
    }

    let mut ws_tasks = Vec::new();
    for (tag, uid, ws) in senders {
        ws_tasks.push((tag.clone(), tokio::spawn(ws_sender(ws, uid, conv, tag, last))));
    }
    let mut rest_tasks = Vec::new();
    for i in 0..REST_SENDERS {
        let user = users[GROUP_USERS - 1 - i].clone();
        let tag = format!("rest{i}-{}", user.handle);
        rest_tasks.push(tokio::spawn(rest_sender(server.clone(), user, conv, tag)));
    }
    let mut recv_tasks = Vec::new();
    for (name, mut ws) in receivers {
        recv_tasks
            .push((name, tokio::spawn(async move { entries_until(&mut ws, conv, last).await })));
    }

    let mut all_sent: Vec<Sent> = Vec::new();
    for (tag, task) in ws_tasks {
        let (sent, live) = task.await.expect("ws sender");
        // One session's sends commit in the order it sent them.
        let acked: Vec<Seq> = sent.iter().map(|s| s.ack.seq).collect();
        assert!(acked.windows(2).all(|w| w[0] < w[1]), "{tag}: acks out of send order: {acked:?}");
        all_sent.extend(sent);
        seen.get_mut(&tag).expect("synced").extend(live);
    }
    for task in rest_tasks {
        all_sent.extend(task.await.expect("rest sender"));
    }
    for (name, task) in recv_tasks {
        let live = task.await.expect("receiver");
        seen.get_mut(&name).expect("synced").extend(live);
    }

    // The log itself: 1..=last, read through small pages.
    let log = server.all_entries(&users[0], conv, 7).await;
    assert_contiguous(&seqs(&log), 1, last).unwrap();

    // Every ack names exactly one entry, and it is the acked message.
    let mut acked: Vec<Seq> = all_sent.iter().map(|s| s.ack.seq).collect();
    acked.sort_unstable();
    assert_contiguous(&acked, 2, last).unwrap();
    assert_acks_match_log(&all_sent, &log);

    // Every session, on every device, saw exactly the log: same entries, same order.
    let want = keys(&log);
    assert_eq!(seen.len(), GROUP_USERS + GROUP_USERS / 2 + WS_SENDERS);
    for (name, got) in &seen {
        assert_contiguous(&seqs(got), 1, last)
            .unwrap_or_else(|e| panic!("{name} saw a broken sequence: {e}"));
        assert!(keys(got) == want, "{name} disagrees with the log");
    }

    let server = Arc::try_unwrap(server).unwrap_or_else(|_| panic!("tasks still hold the server"));
    server.stop().await;
}

/// Bursts sent after the sender is told to stop, so some land after the resume finished.
const TAIL: usize = 2;
/// Messages the resume sender pipelines per burst.
const RESUME_BURST: usize = 4;

/// Keeps sending pipelined bursts of messages until `stop`, then `TAIL` more bursts. With
/// `pace`, each burst first takes a permit. Signals `started` after the first burst's acks.
async fn keep_sending(
    mut ws: WsClient,
    conv: ConversationId,
    round: usize,
    stop: Arc<AtomicBool>,
    pace: Option<Arc<Semaphore>>,
    started: oneshot::Sender<()>,
) -> (WsClient, Vec<(Ack, String)>) {
    let mut started = Some(started);
    let mut sent = Vec::new();
    let mut tail = 0;
    for burst in 0.. {
        if let Some(pace) = &pace {
            pace.acquire().await.expect("pace semaphore open").forget();
        }
        if stop.load(Ordering::SeqCst) {
            if tail == TAIL {
                break;
            }
            tail += 1;
        }
        let tag = format!("during{round}.{burst}");
        sent.extend(send_many(&mut ws, conv, &tag, RESUME_BURST).await);
        if let Some(tx) = started.take() {
            let _ = tx.send(());
        }
        assert!(burst < 5_000, "the sender was never stopped");
    }
    (ws, sent)
}

/// Syncs `conv` from `cursor` on a fresh session, paging with the last seq of each page
/// while `has_more`. After each page, adds one permit to `pace` (if any). Returns the
/// entries of all pages and each page's `has_more`.
async fn resume(
    ws: &mut WsClient,
    conv: ConversationId,
    mut cursor: Seq,
    limit: Option<u32>,
    pace: Option<&Semaphore>,
) -> (Vec<Entry>, Vec<bool>) {
    let mut entries = Vec::new();
    let mut pages = Vec::new();
    loop {
        assert!(pages.len() < 1000, "paging never caught up");
        let reply = ws.sync_limit(BTreeMap::from([(conv, cursor)]), limit).await;
        assert!(reply.iter().all(|c| c.conversation.id == conv), "{reply:?}");
        let part = reply
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("sync from {cursor} omitted {conv}, which has more"));
        assert!(!part.entries.is_empty(), "a page with no entries");
        if let Some(limit) = limit {
            assert!(part.entries.len() <= limit as usize);
            if part.has_more {
                assert_eq!(part.entries.len(), limit as usize, "a short page with more");
            }
        }
        cursor = part.entries.last().expect("non-empty").seq;
        entries.extend(part.entries);
        pages.push(part.has_more);
        if let Some(pace) = pace {
            pace.add_permits(1);
        }
        if !part.has_more {
            return (entries, pages);
        }
    }
}

/// Rounds of: Bob is live, his socket dies, Alice writes `offline` messages, then Bob
/// reconnects and resumes from his last seen seq while another of Alice's sockets keeps
/// sending. Each round Bob must end with every entry after his cursor exactly once, in
/// order. Returns each round's pages (their `has_more`).
async fn resume_scenario(offline: usize, limit: Option<u32>, paced: bool) -> Vec<Vec<bool>> {
    const ROUNDS: usize = 4;
    let server = TestServer::start().await;
    let (alice, bob, conv) = server.direct_pair().await;

    let mut b = server.ws(&bob).await;
    let synced = b.sync(BTreeMap::new()).await;
    assert_eq!(synced.len(), 1);
    assert_eq!(seqs(&synced[0].entries), vec![1]);
    let mut a = server.ws(&alice).await;
    let mut a2 = server.ws_token(&server.login("alice").await).await;
    let mut sent = send_many(&mut a, conv, "before", 5).await;
    let mut last_seen = sent.last().expect("sent").0.seq;
    assert_eq!(last_seen, 6);
    let live = entries_until(&mut b, conv, last_seen).await;
    assert_contiguous(&seqs(&live), 2, last_seen).unwrap();

    let mut all_pages = Vec::new();
    for round in 0..ROUNDS {
        // Bob's socket dies without a close; he has seen everything up to `last_seen`.
        b.abort();
        let missed = send_many(&mut a, conv, &format!("offline{round}"), offline).await;
        assert_eq!(missed.last().expect("sent").0.seq, last_seen + offline as Seq);
        sent.extend(missed);

        // The sender runs before, during and after Bob's resume.
        let stop = Arc::new(AtomicBool::new(false));
        let pace = paced.then(|| Arc::new(Semaphore::new(2)));
        let (started_tx, started_rx) = oneshot::channel();
        let sender =
            tokio::spawn(keep_sending(a2, conv, round, stop.clone(), pace.clone(), started_tx));
        started_rx.await.expect("the sender acked its first burst");

        b = server.ws(&bob).await;
        let (mut got, pages) = resume(&mut b, conv, last_seen, limit, pace.as_deref()).await;
        assert!(got.len() > offline, "the sync missed what Bob missed");
        stop.store(true, Ordering::SeqCst);
        if let Some(pace) = &pace {
            pace.add_permits(TAIL + 1);
        }
        let during;
        (a2, during) = sender.await.expect("sender");
        assert!(during.len() > TAIL * RESUME_BURST);
        let last = during.last().expect("sent").0.seq;
        sent.extend(during);
        if got.last().expect("entries").seq < last {
            got.extend(entries_until(&mut b, conv, last).await);
        }

        assert_contiguous(&seqs(&got), last_seen + 1, last)
            .unwrap_or_else(|e| panic!("round {round}: resume was not exact: {e}"));
        let log = server.all_entries(&bob, conv, 50).await;
        assert_contiguous(&seqs(&log), 1, last).unwrap();
        assert!(
            keys(&got) == keys(&log[last_seen as usize..]),
            "round {round}: Bob's entries differ from the log"
        );
        last_seen = last;
        all_pages.push(pages);
    }

    let log = server.all_entries(&bob, conv, 50).await;
    let sent: Vec<Sent> = sent
        .into_iter()
        .map(|(ack, body)| Sent {
            sender: alice.id,
            client_msg_id: ack.client_msg_id.clone().expect("echoed"),
            body,
            ack,
        })
        .collect();
    let mut acked: Vec<Seq> = sent.iter().map(|s| s.ack.seq).collect();
    acked.sort_unstable();
    assert_contiguous(&acked, 2, last_seen).unwrap();
    assert_acks_match_log(&sent, &log);
    server.stop().await;
    all_pages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_during_concurrent_sends_is_exact() {
    resume_scenario(30, None, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_in_pages_during_concurrent_sends_is_exact() {
    for pages in resume_scenario(40, Some(7), true).await {
        // More than 40 entries to catch up on (40 missed, a burst before the reconnect):
        // five full pages of 7, then at least one more, the last without `has_more`.
        assert!(pages.len() >= 6, "{pages:?}");
        assert!(pages[..pages.len() - 1].iter().all(|&more| more));
        assert_eq!(pages.last(), Some(&false));
    }
}

/// `POST /v1/sync` with these cursors.
async fn rest_sync(
    server: &TestServer,
    user: &TestUser,
    cursors: &BTreeMap<ConversationId, Seq>,
    limit: Option<u32>,
) -> Vec<SyncConversation> {
    let body = SyncRequest { cursors: cursors.clone(), limit };
    let res: SyncResponse =
        server.ok(Method::POST, "/v1/sync", &user.token, Some(&body), StatusCode::OK).await;
    res.conversations
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_member_gets_everything_on_first_sync() {
    let server = TestServer::start().await;
    let [alice, bob, carol] = server.users(["alice", "bob", "carol"]).await;
    // (The direct first, and one with bob, so that both are alice's contacts and members.)
    let direct = server.create_direct(&alice, &carol).await;
    server.contacts(&alice, &[&bob]).await;
    let group = server.create_group(&alice, "while away", &[&bob, &carol]).await;

    // Carol has never connected while the group grows to 250 entries and the direct to 120.
    let mut a = server.ws(&alice).await;
    let mut b = server.ws(&bob).await;
    let mut a2 = server.ws(&alice).await;
    let (ga, gb, d) = tokio::join!(
        send_many(&mut a, group, "alice", 125),
        send_many(&mut b, group, "bob", 124),
        send_many(&mut a2, direct, "direct", 119),
    );
    assert_eq!(ga.len() + gb.len(), 249);
    assert_eq!(d.last().expect("sent").0.seq, 120);
    let last: HashMap<ConversationId, Seq> = HashMap::from([(group, 250), (direct, 120)]);
    let logs: HashMap<ConversationId, Vec<Entry>> = HashMap::from([
        (group, server.all_entries(&carol, group, 50).await),
        (direct, server.all_entries(&carol, direct, 50).await),
    ]);
    assert_contiguous(&seqs(&logs[&group]), 1, 250).unwrap();
    assert_contiguous(&seqs(&logs[&direct]), 1, 120).unwrap();

    // First sync, no cursors: both conversations, each with its latest page.
    let page = Limits::default().default_page as Seq;
    let mut c = server.ws(&carol).await;
    let first = c.sync(BTreeMap::new()).await;
    assert_eq!(first, rest_sync(&server, &carol, &BTreeMap::new(), None).await);
    assert_eq!(first.len(), 2, "{first:?}");
    for part in &first {
        let conv = part.conversation.id;
        let want_kind =
            if conv == group { ConversationKind::Group } else { ConversationKind::Direct };
        assert_eq!(part.conversation.kind, want_kind);
        assert_eq!(part.conversation.last_seq, last[&conv]);
        // Every message is unread (only `created` is not a message).
        assert_eq!(part.conversation.unread, last[&conv] - 1);
        assert!(!part.has_more);
        assert_contiguous(&seqs(&part.entries), last[&conv] - page + 1, last[&conv]).unwrap();
        let log = &logs[&conv];
        assert_eq!(part.entries, log[(last[&conv] - page) as usize..]);
    }

    // The rest of the log on that session is a history call away, walking backwards.
    for part in &first {
        let conv = part.conversation.id;
        let mut older: Vec<Entry> = Vec::new();
        let mut before = part.entries[0].seq;
        loop {
            let reply = c
                .request(|req_id| ClientFrame::History {
                    req_id,
                    conversation: conv,
                    before: Some(before),
                    after: None,
                    limit: Some(50),
                })
                .await;
            let ServerFrame::History { entries, has_more, .. } = reply else {
                panic!("expected history, got {reply:?}");
            };
            before = entries.first().map_or(before, |e| e.seq);
            older.splice(0..0, entries);
            if !has_more {
                break;
            }
        }
        older.extend(part.entries.iter().cloned());
        assert_eq!(older, logs[&conv], "history + sync page of {conv}");
    }

    // A new device pages the whole log from seq 0 with small pages: 1..=last exactly once.
    let token = server.login("carol").await;
    let mut c2 = server.ws_token(&token).await;
    let mut cursors = BTreeMap::from([(group, 0), (direct, 0)]);
    let mut got: HashMap<ConversationId, Vec<Entry>> = HashMap::new();
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds <= 10, "paging did not end");
        let reply = c2.sync_limit(cursors.clone(), Some(50)).await;
        assert_eq!(
            reply,
            rest_sync(&server, &carol, &cursors, Some(50)).await,
            "REST and WebSocket sync disagree for {cursors:?}"
        );
        if reply.is_empty() {
            break;
        }
        for part in reply {
            let conv = part.conversation.id;
            assert!(part.entries.len() <= 50);
            let cursor = cursors.get_mut(&conv).expect("a conversation asked for");
            assert_eq!(part.entries.first().map(|e| e.seq), Some(*cursor + 1));
            *cursor = part.entries.last().expect("non-empty").seq;
            assert_eq!(part.has_more, *cursor < last[&conv], "has_more of {conv}");
            got.entry(conv).or_default().extend(part.entries);
        }
    }
    // Group: five pages; direct: three; then one empty reply.
    assert_eq!(rounds, 6);
    assert_eq!(got[&group], logs[&group]);
    assert_eq!(got[&direct], logs[&direct]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_after_sync_are_announced_live() {
    let server = TestServer::start().await;
    let [alice, bob, dave] = server.users(["alice", "bob", "dave"]).await;
    // alice's contacts, so that she adds them to groups; bob's sessions know that direct
    // conversation already (its cursor), it is not one of the new ones.
    let ab = server.contacts(&alice, &[&bob, &dave]).await[0];
    let known = BTreeMap::from([(ab, 1)]);
    let mut b = server.ws(&bob).await;
    assert_eq!(b.sync(known.clone()).await, vec![]);
    // A second device of Bob that has not synced yet.
    let token = server.login("bob").await;
    let mut b2 = server.ws_token(&token).await;

    // Created after the sync: `created` (seq 1) arrives as a live entry.
    let group = server.create_group(&alice, "fresh", &[&bob]).await;
    let created = entries_until(&mut b, group, 1).await;
    assert_eq!(seqs(&created), vec![1]);
    match &created[0].body {
        EntryBody::Created { conversation_kind: ConversationKind::Group, title, members } => {
            assert_eq!(title.as_deref(), Some("fresh"));
            let mut members = members.clone();
            members.sort();
            assert_eq!(members, vec![alice.id, bob.id]);
        }
        other => panic!("expected created, got {other:?}"),
    }
    let direct = server.create_direct(&dave, &bob).await;
    let created = entries_until(&mut b, direct, 1).await;
    assert_eq!(seqs(&created), vec![1]);
    assert!(matches!(
        created[0].body,
        EntryBody::Created { conversation_kind: ConversationKind::Direct, .. }
    ));

    // The unsynced device got nothing live: its first frame is the sync reply, which holds
    // both new conversations.
    let req_id = b2.req_id();
    b2.send_frame(&ClientFrame::Sync { req_id, cursors: known, limit: None }).await;
    match next_frame(&mut b2, "the sync reply").await {
        ServerFrame::Synced { req_id: got, conversations, .. } => {
            assert_eq!(got, req_id);
            let mut ids: Vec<ConversationId> =
                conversations.iter().map(|c| c.conversation.id).collect();
            ids.sort();
            assert_eq!(ids, vec![group, direct]);
            assert!(conversations.iter().all(|c| seqs(&c.entries) == vec![1]));
        }
        other => panic!("expected the sync reply first, got {other:?}"),
    }

    // Later entries of the new conversation follow once, in order, on both devices.
    let mut a = server.ws(&alice).await;
    let acks = send_many(&mut a, group, "hello", 3).await;
    assert_eq!(acks.last().expect("sent").0.seq, 4);
    assert_eq!(seqs(&entries_until(&mut b, group, 4).await), vec![2, 3, 4]);
    assert_eq!(seqs(&entries_until(&mut b2, group, 4).await), vec![2, 3, 4]);

    // Joining a group with history: its latest page arrives contiguously, ending with the
    // entry that added Bob, and live entries continue from there.
    let old = server.create_group(&alice, "old", &[&dave]).await;
    send_many(&mut a, old, "history", 150).await;
    let path = format!("/v1/conversations/{old}/members");
    let add = AddMember { user_id: bob.id, role: None };
    let added: Ack =
        server.ok(Method::POST, &path, &alice.token, Some(&add), StatusCode::CREATED).await;
    assert_eq!(added.seq, 152);
    let page = Limits::default().default_page as Seq;
    let log = server.all_entries(&alice, old, 50).await;
    for ws in [&mut b, &mut b2] {
        let joined = entries_until(ws, old, added.seq).await;
        assert_contiguous(&seqs(&joined), added.seq - page + 1, added.seq)
            .unwrap_or_else(|e| panic!("join announcement: {e}"));
        assert!(keys(&joined) == keys(&log[(added.seq - page) as usize..]));
        assert_eq!(
            joined.last().expect("entries").body,
            EntryBody::MemberAdded { user: bob.id, role: natter_proto::Role::Member }
        );
    }
    let next = a.send_msg(old, "after-join", "welcome bob").await;
    assert_eq!(next.seq, added.seq + 1);
    for ws in [&mut b, &mut b2] {
        let live = entries_until(ws, old, next.seq).await;
        assert_eq!(seqs(&live), vec![next.seq]);
        assert_eq!(live[0].body, message("welcome bob"));
    }
    server.stop().await;
}
