//! The HTTP fallback transports keep G1, G3 and G5: long-poll (`POST /v1/poll`) and
//! Server-Sent Events (`GET /v1/events`) deliver the same frames as the WebSocket, each
//! conversation in `seq` order with no gap and no duplicate.
//!
//! - Long-poll: a waiting request returns as soon as something is committed, an idle one
//!   returns empty at its timeout; receipts and typing that arrive between polls are kept in
//!   the poll stream; the response's cursors continue exactly, and older cursors (a lost
//!   response) get the same entries again.
//! - SSE: `ready` first, catch-up from `?cursors=` (paging a backlog larger than the limit),
//!   then live; every entry event's id is the cursor map; a reconnect with `Last-Event-ID`
//!   resumes exactly while another client keeps sending; receipts, typing and keep-alives.
//!   A client that disconnects while its catch-up is being read costs the server nothing
//!   (G7: bad or vanishing clients never hurt others).
//! - A client switches WebSocket → SSE → long-poll → … mid-traffic, carrying its cursors,
//!   and sees every entry exactly once (the "switch transports" promise of the design).
//! - Both need a token (401), and a poll stream id of another user is never reused.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use natter_proto::rest::{PollResponse, SetCursors, Typing};
use natter_proto::{Ack, ClientFrame, ConversationId, Entry, EntryBody, Receipt, Seq, ServerFrame};
use natter_testkit::{SseClient, TestServer, TestUser, WsClient, encode_cursors, reply_id, within};
use reqwest::{Method, StatusCode};
use tokio::sync::{Semaphore, watch};

type Cursors = BTreeMap<ConversationId, Seq>;

/// Shrunk timers: SSE keep-alives every 100 ms, receipts flushed every 50 ms.
async fn start() -> TestServer {
    TestServer::start_with(|c| {
        c.limits.ping_interval_ms = 100;
        c.limits.receipt_flush_ms = 50;
    })
    .await
}

/// An entry without its `state` (live entries carry none, store reads do).
fn strip(mut e: Entry) -> Entry {
    e.state = None;
    e
}

fn body_of(e: &Entry) -> &str {
    match &e.body {
        EntryBody::Message { body, .. } => body,
        other => panic!("not a message: {other:?}"),
    }
}

fn entries_of(res: &PollResponse) -> Vec<Entry> {
    res.events
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Entry { entry } => Some(entry.clone()),
            _ => None,
        })
        .collect()
}

fn seqs(entries: &[Entry]) -> Vec<Seq> {
    entries.iter().map(|e| e.seq).collect()
}

async fn typing(server: &TestServer, user: &TestUser, conv: ConversationId, on: bool) {
    let path = format!("/v1/conversations/{conv}/typing");
    let (status, json) =
        server.call(Method::POST, &path, Some(&user.token), Some(&Typing { typing: on })).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "typing: {json}");
}

async fn read_up_to(server: &TestServer, user: &TestUser, conv: ConversationId, seq: Seq) {
    let path = format!("/v1/conversations/{conv}/cursors");
    let body = SetCursors { delivered_seq: None, read_seq: Some(seq) };
    let (status, json) = server.call(Method::PUT, &path, Some(&user.token), Some(&body)).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "cursors: {json}");
}

/// How far the sender task got.
struct Progress {
    /// Messages acked so far.
    acked: watch::Sender<usize>,
    total: usize,
}

impl Progress {
    fn new(total: usize) -> Arc<Progress> {
        Arc::new(Progress { acked: watch::Sender::new(0), total })
    }

    fn done(&self) -> bool {
        *self.acked.borrow() == self.total
    }

    /// Waits until the sender has `lead` more messages acked than the receiver took
    /// (`taken`), or is done: called while the receiver is disconnected, so that the next
    /// transport starts with a backlog committed in its absence.
    async fn away(&self, taken: usize, lead: usize) {
        let want = (taken + lead).min(self.total);
        let mut rx = self.acked.subscribe();
        within(&format!("the sender to reach {want} acks"), rx.wait_for(|n| *n >= want))
            .await
            .expect("progress kept");
    }
}

/// Sends `plan.len()` messages over `ws`, in pipelined bursts of `burst` (one conversation
/// per burst, `plan[i]` naming the conversation of message `i`). Before each burst it takes
/// `burst` permits from `window`, which the receiver refills as it consumes entries: the
/// sender stays at most a window ahead, so the receiver's transport switches happen while
/// traffic is still flowing.
fn spawn_sender(
    mut ws: WsClient,
    plan: Vec<ConversationId>,
    burst: usize,
    window: Arc<Semaphore>,
    progress: Arc<Progress>,
) -> tokio::task::JoinHandle<Vec<Ack>> {
    tokio::spawn(async move {
        let mut acks = Vec::new();
        for (n, chunk) in plan.chunks(burst).enumerate() {
            window.acquire_many(chunk.len() as u32).await.expect("window open").forget();
            let mut req_ids = Vec::new();
            for (i, conv) in chunk.iter().enumerate() {
                let req_id = ws.req_id();
                let text = format!("m{}", n * burst + i);
                ws.send_frame(&ClientFrame::Send {
                    req_id,
                    conversation: *conv,
                    client_msg_id: text.clone(),
                    body: text,
                    reply_to: None,
                    attachments: Vec::new(),
                    mentions: Vec::new(),
                })
                .await;
                req_ids.push(req_id);
            }
            for req_id in req_ids {
                match ws.next_matching(|f| reply_id(f) == Some(req_id)).await {
                    ServerFrame::Ack { ack, .. } => {
                        progress.acked.send_modify(|n| *n += 1);
                        acks.push(ack);
                    }
                    other => panic!("expected ack, got {other:?}"),
                }
            }
        }
        ws.close().await;
        acks
    })
}

/// The receiver's view: cursors and every entry seen, checked as they come.
struct Seen {
    cursors: Cursors,
    entries: BTreeMap<ConversationId, Vec<Entry>>,
    /// Where each conversation ends once the sender is done.
    target: Cursors,
    window: Arc<Semaphore>,
    /// Entries taken by each transport (and way).
    via: BTreeMap<&'static str, usize>,
}

impl Seen {
    /// Starting at seq 0 of each conversation of `target`.
    fn new(target: Cursors, window: Arc<Semaphore>) -> Seen {
        Seen {
            cursors: target.keys().map(|c| (*c, 0)).collect(),
            entries: target.keys().map(|c| (*c, Vec::new())).collect(),
            target,
            window,
            via: BTreeMap::new(),
        }
    }

    /// Takes one entry: it must be the next `seq` of its conversation (no gap, no
    /// duplicate, in order).
    fn take(&mut self, entry: Entry, via: &'static str) {
        let conv = entry.conversation;
        let have = *self.cursors.get(&conv).unwrap_or_else(|| panic!("{via}: unexpected {conv}"));
        assert_eq!(entry.seq, have + 1, "{via}: {conv} after seq {have} got seq {}", entry.seq);
        assert!(entry.seq <= self.target[&conv], "{via}: {conv} beyond the end: {entry:?}");
        self.cursors.insert(conv, entry.seq);
        self.entries.get_mut(&conv).expect("known conversation").push(strip(entry));
        self.window.add_permits(1);
        *self.via.entry(via).or_default() += 1;
    }

    /// Whether every entry up to the end was seen (while not, more are certain to come).
    fn caught_up(&self) -> bool {
        self.cursors == self.target
    }

    fn total(&self) -> usize {
        self.entries.values().map(Vec::len).sum()
    }
}

// ---------------------------------------------------------------------------------------
// Long-poll
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn long_poll_waits_wakes_times_out_and_resumes_from_given_cursors() {
    let server = start().await;
    let (alice, bob, conv) = server.direct_pair().await;

    // A new stream: `ready` (naming the stream) first, then the catch-up.
    let first = server.poll(&bob, None, &[(conv, 0)].into(), Some(10_000), None).await;
    let stream = first.stream;
    assert!(
        matches!(first.events[0], ServerFrame::Ready { user_id, session_id: Some(s), .. }
            if user_id == bob.id && s == stream),
        "{:?}",
        first.events
    );
    assert_eq!(first.events.len(), 2, "{:?}", first.events);
    assert_eq!(seqs(&entries_of(&first)), vec![1]);
    assert_eq!(first.cursors, Cursors::from([(conv, 1)]));

    // A waiting poll returns as soon as a message is committed, long before its timeout.
    let started = Instant::now();
    let (woken, ack) = tokio::join!(
        server.poll(&bob, Some(stream), &first.cursors, Some(10_000), None),
        server.send_rest(&alice, conv, "m2", "wake up"),
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "the waiting poll took {took:?}");
    assert_eq!(woken.stream, stream);
    let got = entries_of(&woken);
    assert_eq!(woken.events.len(), 1, "{:?}", woken.events);
    assert_eq!((got[0].seq, got[0].id.as_str(), body_of(&got[0])), (2, ack.id.as_str(), "wake up"));
    assert_eq!(woken.cursors, Cursors::from([(conv, 2)]));

    // Nothing to deliver: empty at the timeout, cursors unchanged.
    let started = Instant::now();
    let idle = server.poll(&bob, Some(stream), &woken.cursors, Some(300), None).await;
    let took = started.elapsed();
    assert!(idle.events.is_empty(), "{:?}", idle.events);
    assert!(took >= Duration::from_millis(300), "returned after {took:?}, before its timeout");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!((idle.stream, idle.cursors.clone()), (stream, woken.cursors.clone()));

    // Typing and a receipt that arrive between polls are kept by the stream. Typing is
    // forwarded before the REST call returns, so it is queued before the next poll; the
    // receipt follows its flush window.
    typing(&server, &alice, conv, true).await;
    read_up_to(&server, &alice, conv, 2).await;
    let mut ephemeral = Vec::new();
    while !ephemeral.iter().any(|f| matches!(f, ServerFrame::Receipt { .. })) {
        let res = server.poll(&bob, Some(stream), &idle.cursors, Some(5_000), None).await;
        assert!(!res.events.is_empty(), "a poll with a receipt pending returned empty");
        assert_eq!((res.stream, res.cursors.clone()), (stream, idle.cursors.clone()));
        ephemeral.extend(res.events);
    }
    assert_eq!(
        ephemeral,
        vec![
            ServerFrame::Typing {
                conversation: conv,
                user: alice.id,
                typing: true,
                ttl_ms: Some(6_000)
            },
            ServerFrame::Receipt {
                receipt: Receipt {
                    conversation: conv,
                    user: alice.id,
                    delivered_seq: 2,
                    read_seq: 2
                }
            },
        ]
    );

    // Seven more (seq 3..=9), paged three at a time: each response's cursors continue exactly.
    for i in 3..=9 {
        server.send_rest(&alice, conv, &format!("m{i}"), &format!("text {i}")).await;
    }
    let page1 = server.poll(&bob, Some(stream), &[(conv, 2)].into(), Some(5_000), Some(3)).await;
    assert_eq!(seqs(&entries_of(&page1)), vec![3, 4, 5], "{:?}", page1.events);
    assert_eq!(page1.events.len(), 3, "{:?}", page1.events);
    assert_eq!(page1.cursors, Cursors::from([(conv, 5)]));
    let page2 = server.poll(&bob, Some(stream), &page1.cursors, Some(5_000), Some(3)).await;
    assert_eq!(seqs(&entries_of(&page2)), vec![6, 7, 8]);
    assert_eq!(page2.cursors, Cursors::from([(conv, 8)]));

    // page2 "was lost": polling with page1's cursors again gets exactly the same entries.
    let again = server.poll(&bob, Some(stream), &page1.cursors, Some(5_000), Some(3)).await;
    assert_eq!(again.stream, stream);
    assert_eq!(entries_of(&again), entries_of(&page2));
    assert_eq!(again.cursors, page2.cursors);
    // An older cursor still: exactly from there, and up to the end without a limit.
    let older = server.poll(&bob, Some(stream), &[(conv, 4)].into(), Some(5_000), None).await;
    assert_eq!(seqs(&entries_of(&older)), vec![5, 6, 7, 8, 9]);
    assert_eq!(older.cursors, Cursors::from([(conv, 9)]));

    // Everything the polls delivered is the log itself.
    let log: Vec<Entry> =
        server.all_entries(&bob, conv, 100).await.into_iter().map(strip).collect();
    let mut polled = entries_of(&first);
    polled.extend(entries_of(&woken));
    polled.extend(entries_of(&page1));
    polled.extend(entries_of(&again));
    polled.push(entries_of(&older).pop().expect("seq 9"));
    assert_eq!(polled.into_iter().map(strip).collect::<Vec<_>>(), log);

    // Caught up: the next poll waits and returns empty.
    let idle = server.poll(&bob, Some(stream), &older.cursors, Some(200), None).await;
    assert!(idle.events.is_empty(), "{:?}", idle.events);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Server-Sent Events
// ---------------------------------------------------------------------------------------

/// Reads the stream's first event, which must be `ready` for `user`, with no id.
async fn expect_ready(sse: &mut SseClient, user: &TestUser) {
    match sse.next_event().await {
        (None, ServerFrame::Ready { user_id, session_id: Some(_), .. }) if user_id == user.id => {}
        other => panic!("expected ready first, got {other:?}"),
    }
}

/// Reads one entry event into `seen`, checking that its id is exactly the cursor map.
async fn sse_take(sse: &mut SseClient, seen: &mut Seen, via: &'static str) {
    let (id, entry) = sse.next_entry().await;
    seen.take(entry, via);
    assert_eq!(id, encode_cursors(&seen.cursors), "{via}: event id");
    assert_eq!(sse.last_id(), Some(id.as_str()));
}

#[tokio::test]
async fn sse_catches_up_pages_goes_live_and_resumes_from_last_event_id() {
    let server = start().await;
    let [alice, bob, carol] = server.users(["alice", "bob", "carol"]).await;
    let direct = server.create_direct(&alice, &bob).await;
    server.contacts(&alice, &[&carol]).await;
    let group = server.create_group(&alice, "g", &[&bob, &carol]).await;

    // A backlog larger than the page limit (7): 25 in the direct, 5 in the group.
    for i in 0..25 {
        server.send_rest(&alice, direct, &format!("d{i}"), &format!("d{i}")).await;
    }
    for i in 0..5 {
        server.send_rest(&alice, group, &format!("g{i}"), &format!("g{i}")).await;
    }
    let backlog: Cursors = [(direct, 26), (group, 6)].into();

    let mut seen = Seen::new(backlog.clone(), Arc::new(Semaphore::new(0)));
    let query = [("cursors", encode_cursors(&seen.cursors)), ("limit", "7".to_owned())];
    let mut sse = server.sse_query(&bob.token, &query, None).await;
    expect_ready(&mut sse, &bob).await;
    while !seen.caught_up() {
        sse_take(&mut sse, &mut seen, "catch-up").await;
    }
    for conv in [direct, group] {
        let log: Vec<Entry> =
            server.all_entries(&bob, conv, 100).await.into_iter().map(strip).collect();
        assert_eq!(seen.entries[&conv], log, "{conv} caught up over SSE");
    }

    // An idle stream carries keep-alive comments, and no events.
    sse.next_keep_alive().await;
    sse.next_keep_alive().await;

    // Live entries, typing and receipts.
    seen.target.insert(direct, 27);
    let ack = server.send_rest(&alice, direct, "live", "live one").await;
    sse_take(&mut sse, &mut seen, "live").await;
    assert_eq!(seen.entries[&direct].last().expect("live").id, ack.id);
    typing(&server, &alice, group, true).await;
    match sse.next_event().await {
        (None, ServerFrame::Typing { conversation, user, typing: true, ttl_ms: Some(_) })
            if conversation == group && user == alice.id => {}
        other => panic!("expected alice typing in the group, got {other:?}"),
    }
    read_up_to(&server, &alice, direct, ack.seq).await;
    match sse.next_event().await {
        (None, ServerFrame::Receipt { receipt }) => assert_eq!(
            receipt,
            Receipt { conversation: direct, user: alice.id, delivered_seq: 27, read_seq: 27 }
        ),
        other => panic!("expected alice's receipt, got {other:?}"),
    }

    // Another client sends 60 messages while bob's stream is dropped and resumed.
    let total = 60;
    let plan: Vec<ConversationId> =
        (0..total).map(|i| if (i / 3) % 2 == 0 { direct } else { group }).collect();
    let progress = Progress::new(total);
    // A fresh window: the sender stays at most 15 ahead of bob.
    let window = Arc::new(Semaphore::new(15));
    seen.window = window.clone();
    seen.target = [(direct, 27 + 30), (group, 6 + 30)].into();
    let sender = spawn_sender(server.ws(&alice).await, plan, 3, window, progress.clone());
    let base = seen.total();
    while seen.total() < base + 20 {
        sse_take(&mut sse, &mut seen, "before the drop").await;
    }
    let last_id = sse.last_id().expect("entries had ids").to_owned();
    drop(sse);
    assert!(!progress.done(), "the sender finished before the drop: not mid-traffic");
    // Ten more are committed while bob is away.
    progress.away(seen.total() - base, 10).await;
    assert!(!progress.done(), "the sender finished while bob was away: not mid-traffic");

    // An EventSource reconnects to the same URL (the stale `?cursors=`) with Last-Event-ID:
    // the id wins, and the stream resumes exactly after it.
    let stale = [("cursors", encode_cursors(&[(direct, 0), (group, 0)].into()))];
    let mut sse = server.sse_query(&bob.token, &stale, Some(&last_id)).await;
    expect_ready(&mut sse, &bob).await;
    while !seen.caught_up() {
        sse_take(&mut sse, &mut seen, "after the reconnect").await;
    }
    let acks = sender.await.expect("sender task");
    assert_eq!(acks.len(), total);
    for conv in [direct, group] {
        let log: Vec<Entry> =
            server.all_entries(&bob, conv, 100).await.into_iter().map(strip).collect();
        assert_eq!(seen.entries[&conv], log, "{conv}: every entry exactly once, in order");
    }
    for ack in &acks {
        let e = &seen.entries[&ack.conversation][(ack.seq - 1) as usize];
        assert_eq!((&e.id, &e.client_msg_id), (&ack.id, &ack.client_msg_id));
    }
    server.stop().await;
}

/// Clients disconnect whenever they like, also while the server is reading their catch-up
/// from the store: that must cost the server nothing (no pooled store connection lost,
/// every later request still served).
#[tokio::test]
async fn sse_dropped_mid_catch_up_leaves_the_store_healthy() {
    let server = start().await;
    let (alice, bob, conv) = server.direct_pair().await;
    let plan = vec![conv; 200];
    let window = Arc::new(Semaphore::new(plan.len()));
    let progress = Progress::new(plan.len());
    let sender = spawn_sender(server.ws(&alice).await, plan, 50, window, progress);
    let acks = sender.await.expect("sender task");
    assert_eq!(acks.last().map(|a| a.seq), Some(201));

    // One-entry pages: the stream is busy reading the store when each client goes away.
    let query = [("cursors", format!("{conv}:0")), ("limit", "1".to_owned())];
    for _ in 0..12 {
        let mut sse = server.sse_query(&bob.token, &query, None).await;
        expect_ready(&mut sse, &bob).await;
        let (_, entry) = sse.next_entry().await;
        assert_eq!(entry.seq, 1);
        drop(sse);
    }

    // Every later read is served, eight at a time too.
    let reads = (0..8).map(|_| server.all_entries(&bob, conv, 50));
    for log in futures_util::future::join_all(reads).await {
        assert_eq!(log.len(), 201);
    }
    let mut sse = server.sse_query(&bob.token, &query, None).await;
    expect_ready(&mut sse, &bob).await;
    for seq in 1..=201 {
        assert_eq!(sse.next_entry().await.1.seq, seq);
    }
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Switching transports mid-traffic
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Ws,
    Sse,
    LongPoll,
}

/// Takes entries over a WebSocket: `sync` from the cursors (paging while `has_more`), then
/// live, until `quota` entries or the sender is done and caught up.
async fn ws_phase(server: &TestServer, bob: &TestUser, seen: &mut Seen, quota: usize, abort: bool) {
    let mut ws = server.ws(bob).await;
    let start = seen.total();
    // Small pages, and no more of them once the quota is met: each phase takes a few.
    loop {
        let convs = ws.sync_limit(seen.cursors.clone(), Some(5)).await;
        let more = convs.iter().any(|c| c.has_more);
        // Live entries of conversations an earlier page completed arrived before this reply
        // (which continues after them): they come first.
        for frame in ws.take_stashed() {
            if let ServerFrame::Entry { entry } = frame {
                seen.take(entry, "ws live");
            }
        }
        for conv in convs {
            for entry in conv.entries {
                seen.take(entry, "ws sync");
            }
        }
        if !more || seen.total() >= start + quota {
            break;
        }
    }
    while seen.total() < start + quota && !seen.caught_up() {
        let entry = ws.next_entry().await;
        seen.take(entry, "ws live");
    }
    if abort {
        ws.abort();
    } else {
        ws.close().await;
    }
}

/// Takes entries over SSE from `?cursors=`; halfway it drops the stream, lets the sender
/// get ahead, and reconnects with `Last-Event-ID` (and the now stale query, as an
/// EventSource would).
async fn sse_phase(
    server: &TestServer,
    bob: &TestUser,
    seen: &mut Seen,
    quota: usize,
    progress: &Progress,
) {
    let query = [("cursors", encode_cursors(&seen.cursors)), ("limit", "5".to_owned())];
    let start = seen.total();
    let mut sse = server.sse_query(&bob.token, &query, None).await;
    expect_ready(&mut sse, bob).await;
    while seen.total() < start + quota / 2 && !seen.caught_up() {
        sse_take(&mut sse, seen, "sse").await;
    }
    let Some(last_id) = sse.last_id().map(str::to_owned) else { return };
    drop(sse);
    progress.away(seen.total() - 2, 10).await;
    let mut sse = server.sse_query(&bob.token, &query, Some(&last_id)).await;
    expect_ready(&mut sse, bob).await;
    while seen.total() < start + quota && !seen.caught_up() {
        sse_take(&mut sse, seen, "sse after Last-Event-ID").await;
    }
}

/// Takes entries by long-polling from the cursors, reusing the poll stream across phases
/// (it kept receiving live entries while other transports were in use).
async fn poll_phase(
    server: &TestServer,
    bob: &TestUser,
    seen: &mut Seen,
    quota: usize,
    stream: &mut Option<u64>,
) {
    let start = seen.total();
    while seen.total() < start + quota && !seen.caught_up() {
        let res = server.poll(bob, *stream, &seen.cursors, Some(5_000), Some(5)).await;
        if let Some(old) = *stream {
            assert_eq!(res.stream, old, "the poll stream expired between phases");
        }
        *stream = Some(res.stream);
        assert!(!res.events.is_empty(), "a poll returned empty while entries were due");
        for frame in res.events {
            match frame {
                ServerFrame::Entry { entry } => seen.take(entry, "long-poll"),
                ServerFrame::Ready { user_id, .. } => assert_eq!(user_id, bob.id),
                other => panic!("unexpected long-poll event {other:?}"),
            }
        }
        assert_eq!(res.cursors, seen.cursors, "long-poll response cursors");
    }
}

#[tokio::test]
async fn switching_transports_mid_traffic_loses_and_repeats_nothing() {
    let server = start().await;
    let [alice, bob, carol] = server.users(["alice", "bob", "carol"]).await;
    let direct = server.create_direct(&alice, &bob).await;
    server.contacts(&alice, &[&carol]).await;
    let group = server.create_group(&alice, "g", &[&bob, &carol]).await;

    // 300 messages in bursts of 5, alternating conversations, at most 30 ahead of bob.
    let total = 300;
    let plan: Vec<ConversationId> =
        (0..total).map(|i| if (i / 5) % 2 == 0 { direct } else { group }).collect();
    let window = Arc::new(Semaphore::new(30));
    let progress = Progress::new(total);
    let sender = spawn_sender(server.ws(&alice).await, plan, 5, window.clone(), progress.clone());

    let end = (total / 2 + 1) as Seq;
    let mut seen = Seen::new([(direct, end), (group, end)].into(), window);
    let cycle = [Transport::Ws, Transport::Sse, Transport::LongPoll];
    let quota = 20;
    let mut stream = None;
    let mut phases = Vec::new();
    let mut switches_mid_traffic = 0;
    while !seen.caught_up() {
        let transport = cycle[phases.len() % cycle.len()];
        let before = seen.total();
        match transport {
            Transport::Ws => {
                let abort = phases.len() % 2 == 0;
                ws_phase(&server, &bob, &mut seen, quota, abort).await;
            }
            Transport::Sse => sse_phase(&server, &bob, &mut seen, quota, &progress).await,
            Transport::LongPoll => {
                poll_phase(&server, &bob, &mut seen, quota, &mut stream).await;
            }
        }
        phases.push((transport, seen.total() - before));
        // Away between transports (entries of the created conversations are not the
        // sender's: 2): the next one starts with a backlog.
        progress.away(seen.total() - 2, 10).await;
        if !progress.done() {
            switches_mid_traffic += 1;
        }
    }
    // WS → SSE → long-poll → WS → SSE → long-poll → WS at least, all while the sender sent;
    // each transport took entries, the WebSocket also by catching up with `sync`.
    assert!(phases.len() >= 7, "{phases:?}");
    for via in ["ws sync", "ws live", "sse", "sse after Last-Event-ID", "long-poll"] {
        assert!(seen.via.get(via).is_some_and(|n| *n > 0), "none via {via}: {:?}", seen.via);
    }
    assert!(
        switches_mid_traffic >= 7,
        "only {switches_mid_traffic} switches mid-traffic: {phases:?}"
    );

    let acks = sender.await.expect("sender task");
    assert_eq!(acks.len(), total);
    for conv in [direct, group] {
        let log: Vec<Entry> =
            server.all_entries(&bob, conv, 100).await.into_iter().map(strip).collect();
        assert_eq!(log.len(), total / 2 + 1);
        assert_eq!(seen.entries[&conv], log, "{conv}: every entry exactly once, in order");
    }
    for ack in &acks {
        let e = &seen.entries[&ack.conversation][(ack.seq - 1) as usize];
        assert_eq!((&e.id, &e.client_msg_id), (&ack.id, &ack.client_msg_id));
    }
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Credentials and other users' streams
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn fallbacks_need_a_token_and_never_share_another_users_stream() {
    let server = start().await;
    let [alice, bob, carol] = server.users(["alice", "bob", "carol"]).await;
    let ac = server.create_direct(&alice, &carol).await;
    let bc = server.create_direct(&bob, &carol).await;

    for token in [None, Some("nt_not-a-token")] {
        let (status, json) = server.call::<()>(Method::GET, "/v1/events", token, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "events: {json}");
        assert_eq!(json["code"], "unauthenticated", "{json}");
        let body = natter_proto::rest::PollRequest::default();
        let (status, json) = server.call(Method::POST, "/v1/poll", token, Some(&body)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "poll: {json}");
        assert_eq!(json["code"], "unauthenticated", "{json}");
    }

    // Alice's poll stream collects carol's typing and message between alice's polls.
    let a1 = server.poll(&alice, None, &Cursors::new(), Some(5_000), None).await;
    assert_eq!(seqs(&entries_of(&a1)), vec![1]);
    typing(&server, &carol, ac, true).await;
    let ack = server.send_rest(&carol, ac, "secret", "for alice only").await;

    // Bob names alice's stream (and alice's conversation in his cursors): he gets a stream
    // of his own, and nothing of alice's.
    let b1 =
        server.poll(&bob, Some(a1.stream), &[(ac, 0), (bc, 0)].into(), Some(5_000), None).await;
    assert_ne!(b1.stream, a1.stream);
    assert!(
        matches!(b1.events[0], ServerFrame::Ready { user_id, session_id: Some(s), .. }
            if user_id == bob.id && s == b1.stream),
        "{:?}",
        b1.events
    );
    let leaked: Vec<&ServerFrame> = b1
        .events
        .iter()
        .filter(|f| match f {
            ServerFrame::Entry { entry } => entry.conversation == ac,
            ServerFrame::Typing { conversation, .. } => *conversation == ac,
            _ => false,
        })
        .collect();
    assert!(leaked.is_empty(), "bob got alice's events: {leaked:?}");
    assert_eq!(seqs(&entries_of(&b1)), vec![1]);
    assert_eq!(b1.cursors, Cursors::from([(bc, 1)]));

    // Alice's stream is untouched: her typing frame and the message are still there.
    let a2 = server.poll(&alice, Some(a1.stream), &a1.cursors, Some(5_000), None).await;
    assert_eq!(a2.stream, a1.stream);
    let got = entries_of(&a2);
    assert_eq!((seqs(&got), got[0].id.as_str()), (vec![2], ack.id.as_str()));
    assert!(
        a2.events
            .iter()
            .any(|f| matches!(f, ServerFrame::Typing { conversation, user, typing: true, .. }
            if *conversation == ac && *user == carol.id)),
        "{:?}",
        a2.events
    );

    // SSE with a foreign conversation in `?cursors=`: bob's own entries only.
    let mut sse = server.sse(&bob, Some(&[(ac, 0)].into()), None).await;
    expect_ready(&mut sse, &bob).await;
    let (_, first) = sse.next_entry().await;
    assert_eq!((first.conversation, first.seq), (bc, 1));
    server.send_rest(&carol, ac, "secret2", "for alice only").await;
    let marker = server.send_rest(&carol, bc, "marker", "for bob").await;
    let (_, next) = sse.next_entry().await;
    assert_eq!((next.conversation, next.seq, next.id), (bc, 2, marker.id));
    let seen_convs: HashSet<ConversationId> = [first.conversation, next.conversation].into();
    assert!(!seen_convs.contains(&ac));
    server.stop().await;
}
