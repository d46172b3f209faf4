//! G7 (bounded) for catch-up: a sync reply is at most `max_reply_bytes` of entries and
//! `max_sync_conversations` conversations, so a user with a large backlog syncs completely
//! over the WebSocket, page by page, each entry once, in order, equal to history; REST
//! replies stay under the budget and carry each message's text once; a conversation a reply
//! did not reach is neither sent live nor announced until a sync reaches it; and a session
//! whose unwritten frames pass `outbound_queue_bytes` is closed as a slow consumer (4008)
//! long before the frame count would. (The server's memory during several such syncs at
//! once is measured in `sync_memory.rs`, a process of its own.)
//!
//! The tests of this file run one at a time ([`SERIAL`]): the slow-consumer test reads a
//! process-wide count from `/metrics`, and each test moves megabytes.

use std::collections::BTreeMap;

use natter_proto::rest::{SyncRequest, SyncResponse};
use natter_proto::{ConversationId, Entry, EntryBody, Seq, ServerFrame, close};
use natter_testkit::{TestServer, TestUser, WAIT, WsClient, assert_contiguous};
use reqwest::StatusCode;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The default `max_reply_bytes`.
const BUDGET: usize = 256 * 1024;
/// Room for a reply's JSON around its conversations (`{"type":"synced","req_id":…,"more":…}`).
const ENVELOPE: usize = 1024;
/// The default `max_body_bytes`: every message of the large groups is this long.
const BODY: usize = 16 * 1024;

/// A message body of exactly `BODY` bytes that names its number.
fn big_body(tag: &str, i: usize) -> String {
    let mut body = format!("{tag}-{i:05} ");
    body.extend(std::iter::repeat_n('x', BODY - body.len()));
    body
}

fn message_body(entry: &Entry) -> &str {
    match &entry.body {
        EntryBody::Message { body, .. } => body,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Sends `n` large messages to `conv` over `ws` (a session that never synced), pipelined.
async fn fill(ws: &mut WsClient, conv: ConversationId, tag: &str, n: usize) {
    ws.send_all(conv, (0..n).map(|i| (format!("{tag}-{i}"), big_body(tag, i)))).await;
}

/// Two groups of alice's with `members`, each with 100 messages of 16 KiB (seqs 2..=101).
async fn large_groups(
    server: &TestServer,
    members: &[&TestUser],
) -> (TestUser, [ConversationId; 2]) {
    let alice = server.user("alice").await;
    // Contacts first, so that the members are added, not invited.
    server.contacts(&alice, members).await;
    let g1 = server.create_group(&alice, "big one", members).await;
    let g2 = server.create_group(&alice, "big two", members).await;
    let mut a = server.ws(&alice).await;
    fill(&mut a, g1, "g1", 100).await;
    fill(&mut a, g2, "g2", 100).await;
    a.close().await;
    (alice, [g1, g2])
}

/// Everything a client gets when it syncs from `cursors` until a reply has no `more`:
/// per conversation, its entries in the order they came (sync replies and any live entry
/// in between), and the size of each reply. Checks that every reply is within the budget and
/// that each page continues where the client's cursor stood.
async fn ws_sync_all(
    ws: &mut WsClient,
    mut cursors: BTreeMap<ConversationId, Seq>,
) -> (BTreeMap<ConversationId, Vec<Entry>>, Vec<usize>) {
    let mut got: BTreeMap<ConversationId, Vec<Entry>> = BTreeMap::new();
    let mut sizes = Vec::new();
    loop {
        let (convs, more, size) = ws.sync_page(cursors.clone()).await;
        // Live entries that came before the reply (none are expected while paging).
        for frame in ws.take_stashed() {
            if let ServerFrame::Entry { entry } = frame {
                panic!("a live entry while paging: {}:{}", entry.conversation, entry.seq);
            }
        }
        assert!(size <= BUDGET + ENVELOPE, "a reply of {size} bytes");
        assert!(!convs.is_empty(), "a reply with nothing");
        let n_more = convs.iter().filter(|c| c.has_more).count();
        assert!(more || n_more == 0, "an item has more but the reply does not say so");
        sizes.push(size);
        for item in convs {
            let conv = item.conversation.id;
            let first = item.entries.first().map(|e| e.seq);
            if let (Some(&cursor), Some(first)) = (cursors.get(&conv), first) {
                assert_eq!(first, cursor + 1, "{conv}: a page after {cursor} starts at {first}");
            }
            if let Some(last) = item.entries.last() {
                cursors.insert(conv, last.seq);
            }
            got.entry(conv).or_default().extend(item.entries);
        }
        if !more {
            return (got, sizes);
        }
    }
}

fn seqs(entries: &[Entry]) -> Vec<Seq> {
    entries.iter().map(|e| e.seq).collect()
}

/// `POST /v1/sync`: the reply and the size of its body.
async fn rest_sync(
    server: &TestServer,
    user: &TestUser,
    cursors: &BTreeMap<ConversationId, Seq>,
) -> (SyncResponse, usize) {
    let body = SyncRequest { cursors: cursors.clone(), limit: None };
    let req = server.http.post(server.url("/v1/sync")).bearer_auth(&user.token).json(&body);
    let res = tokio::time::timeout(WAIT, req.send()).await.expect("sync in time").expect("sync");
    assert_eq!(res.status(), StatusCode::OK);
    let bytes = res.bytes().await.expect("sync body");
    (serde_json::from_slice(&bytes).expect("a sync response"), bytes.len())
}

/// REST syncs from `cursors` until a reply has no `more`; checks each reply's size and
/// returns the seqs of each conversation that came, and the bytes of all replies.
async fn rest_sync_all(
    server: &TestServer,
    user: &TestUser,
    mut cursors: BTreeMap<ConversationId, Seq>,
) -> (BTreeMap<ConversationId, Vec<Seq>>, usize) {
    let mut got: BTreeMap<ConversationId, Vec<Seq>> = BTreeMap::new();
    let mut total = 0;
    loop {
        let (reply, size) = rest_sync(server, user, &cursors).await;
        assert!(size <= BUDGET + ENVELOPE, "a REST reply of {size} bytes");
        total += size;
        for item in reply.conversations {
            let conv = item.conversation.id;
            if let Some(last) = item.entries.last() {
                cursors.insert(conv, last.seq);
            }
            got.entry(conv).or_default().extend(item.entries.iter().map(|e| e.seq));
        }
        if !reply.more {
            return (got, total);
        }
    }
}

#[tokio::test]
async fn a_large_backlog_syncs_completely_over_the_websocket_in_pages() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start().await;
    let bob = server.user("bob").await;
    let (alice, groups) = large_groups(&server, &[&bob]).await;

    // From the start of both logs (3.3 MB of entries, 6.6 MB when each text went twice: no
    // single frame could carry that through the 4 MiB write buffer): pages of at most
    // 256 KiB, each entry once, in order, exactly what history shows.
    let mut b = server.ws(&bob).await;
    let cursors = groups.iter().map(|&g| (g, 0)).collect();
    let (got, sizes) = ws_sync_all(&mut b, cursors).await;
    assert!(sizes.len() >= 13, "paged: {sizes:?}");
    for g in groups {
        assert_contiguous(&seqs(&got[&g]), 1, 101).expect("every entry once, in order");
        let history = server.all_entries(&bob, g, 100).await;
        assert_eq!(got[&g], history, "{g}: sync equals history");
    }
    // Then the live stream goes on from there.
    let ack = server.send_rest(&alice, groups[0], "after", "after the sync").await;
    assert_eq!(ack.seq, 102);
    assert_eq!(b.next_entry().await.seq, 102);

    // A device that lists nothing gets each group's latest page (seqs 3..=102 and 2..=101),
    // cut into budget-sized parts with `has_more`, and continued from its cursors.
    let mut other = server.ws_token(&server.login("bob").await).await;
    let (got, sizes) = ws_sync_all(&mut other, BTreeMap::new()).await;
    assert!(sizes.len() >= 13, "paged: {sizes:?}");
    assert_contiguous(&seqs(&got[&groups[0]]), 3, 102).expect("the latest page of one");
    assert_contiguous(&seqs(&got[&groups[1]]), 2, 101).expect("the latest page of two");
    let ack = server.send_rest(&alice, groups[1], "after2", "after the latest").await;
    assert_eq!(other.next_entry().await.seq, ack.seq);
    server.stop().await;
}

#[tokio::test]
async fn rest_sync_replies_stay_under_the_budget_and_carry_each_text_once() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start().await;
    let bob = server.user("bob").await;
    let (_, groups) = large_groups(&server, &[&bob]).await;
    let cursors = groups.iter().map(|&g| (g, 0)).collect();
    let (got, total) = rest_sync_all(&server, &bob, cursors).await;
    for g in groups {
        assert_contiguous(&got[&g], 1, 101).expect("every entry once, in order");
    }
    // 200 texts of 16 KiB, each sent once (not as `body` and again as `state.body`), plus a
    // few hundred bytes of fields per entry and a summary per page.
    let texts = 200 * BODY;
    assert!(total < texts + texts / 10, "{total} bytes for {texts} bytes of text");
    server.stop().await;
}

#[tokio::test]
async fn conversations_a_reply_did_not_reach_wait_for_the_next_sync() {
    let _serial = SERIAL.lock().await;
    // Two conversations per reply, and small latest pages (3), so that announcing a
    // conversation the reply left out would show as a jump.
    let server = TestServer::start_with(|c| {
        c.limits.max_sync_conversations = 2;
        c.limits.default_page = 3;
    })
    .await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let contact = server.create_direct(&alice, &bob).await;
    let mut groups = Vec::new();
    for i in 0..4 {
        let g = server.create_group(&alice, &format!("g{i}"), &[&bob]).await;
        for j in 0..5 {
            server.send_rest(&alice, g, &format!("{i}-{j}"), &format!("m{j}")).await;
        }
        groups.push(g);
    }
    let mut b = server.ws(&bob).await;
    let mut cursors: BTreeMap<_, _> = groups.iter().map(|&g| (g, 0)).collect();
    // The contacts' direct conversation is up to date: only the groups have something new.
    cursors.insert(contact, 1);
    let (first, more, _) = b.sync_page(cursors.clone()).await;
    assert!(more, "four conversations do not fit a reply of two");
    let reached: Vec<ConversationId> = first.iter().map(|c| c.conversation.id).collect();
    assert_eq!(reached.len(), 2, "a reply carries two conversations");
    assert!(first.iter().all(|c| c.has_more && c.entries.len() == 3), "pages of 3: {first:?}");
    // A new entry in a conversation the reply did not reach is not sent live (nor does it
    // announce the conversation as new, with a latest page that would skip seqs 1..=4): the
    // next sync brings it after what came before.
    let unreached = *groups.iter().find(|g| !reached.contains(g)).expect("one left out");
    let late = server.send_rest(&alice, unreached, "late", "late").await;
    assert_eq!(late.seq, 7);
    let mut got: BTreeMap<ConversationId, Vec<Seq>> = BTreeMap::new();
    for item in first {
        let conv = item.conversation.id;
        cursors.insert(conv, item.entries.last().expect("entries").seq);
        got.entry(conv).or_default().extend(seqs(&item.entries));
    }
    let (rest, _) = ws_sync_all(&mut b, cursors).await;
    for (conv, entries) in rest {
        got.entry(conv).or_default().extend(seqs(&entries));
    }
    for g in &groups {
        let last = if *g == unreached { 7 } else { 6 };
        assert_contiguous(&got[g], 1, last).expect("each conversation from its cursor");
    }
    let ack = server.send_rest(&alice, unreached, "live", "live").await;
    assert_eq!(b.next_entry().await.seq, ack.seq);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_is_closed_once_its_unwritten_bytes_pass_the_cap() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    server.create_direct(&alice, &bob).await;
    let conv = server.create_group(&alice, "flood", &[&bob]).await;
    let mut slow = server.ws(&bob).await;
    slow.sync(BTreeMap::new()).await;

    // alice floods with 16 KiB messages while bob reads nothing. The frame count
    // (`outbound_queue`, 4096 frames: 64 MiB of these) would let bob's queue grow past
    // 60 MiB; the byte cap (8 MiB) closes him once the kernel's socket buffers, the write
    // buffer and 8 MiB of queue are full: well before 3000 messages (47 MiB).
    let mut a = server.ws(&alice).await;
    let dropped_before = server.metric("slow_consumers_total").await;
    let mut n_sent = 0;
    while server.metric("slow_consumers_total").await == dropped_before {
        assert!(n_sent < 3000, "the slow reader was never closed ({n_sent} messages sent)");
        fill(&mut a, conv, &format!("f{n_sent}"), 50).await;
        n_sent += 50;
    }
    println!("closed after {n_sent} messages of 16 KiB");

    // bob reads at last: entries in order, then the close as a slow consumer.
    let mut seen: Seq = 1;
    let frame = loop {
        match slow.next_or_close().await {
            Ok(ServerFrame::Entry { entry }) => {
                assert_eq!(entry.seq, seen + 1);
                assert!(message_body(&entry).ends_with('x'));
                seen = entry.seq;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(close) => break close,
        }
    };
    assert_eq!(frame, Some(close::SLOW_CONSUMER), "closed as a slow consumer");
    assert!(seen < 1 + n_sent as Seq, "bob got only part of the flood");

    // He resumes from what he saw: exactly the rest.
    let mut b = server.ws(&bob).await;
    let (got, _) = ws_sync_all(&mut b, BTreeMap::from([(conv, seen)])).await;
    assert_contiguous(&seqs(&got[&conv]), seen + 1, 1 + n_sent as Seq).expect("resume is exact");
    server.stop().await;
}
