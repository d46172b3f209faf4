//! Traffic and checks shared by the cluster failure tests (`cluster_kill`,
//! `cluster_redis_restart`, `cluster_pg_restart`; each has `mod cluster_traffic;`), on top of
//! natter-testkit's process harness (`natter_testkit::process`).
//!
//! - [`Member`]: an SDK client that records everything it is told (entries, acks, connection
//!   changes), and [`Traffic`]: tasks that keep handing it sends, recording each one.
//! - [`Raw`]: a raw WebSocket session recording the frames a node sends it, with no SDK in
//!   between to fill gaps or drop duplicates: what it gets is what the server delivered.
//! - The final comparison: the store's log ([`store_log`]) is `1..=N`, every send handed to
//!   an outbox is in it exactly once, every ack names its entry, and every member saw exactly
//!   that log.

// Each test file uses a different part of this module.
#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use natter_client::{Api, Backoff, Client, Config, ConnectionState, Event, HistoryRange};
use natter_proto::{
    Ack, ClientFrame, ConversationId, Entry, EntryBody, ErrorBody, Presence, ServerFrame, Status,
    UserId,
};
use tokio::task::JoinHandle;

use natter_testkit::{TestUser, WsClient, poll_until, within};

/// Sends a sender may have waiting for their ack before it pauses (bounds the outbox while a
/// failure lasts).
const MAX_BACKLOG: usize = 200;

/// SDK settings for tests: quick reconnects, pings and cursor reports.
pub fn sdk_config(addr: SocketAddr, token: &str) -> Config {
    Config {
        backoff: Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
            stable_after: Duration::from_secs(2),
        },
        delivered_delay: Duration::from_millis(100),
        persist_delay: Duration::from_millis(50),
        ping_interval: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        ..Config::new(format!("http://{addr}"), token)
    }
}

/// One send handed to an SDK outbox.
#[derive(Debug, Clone)]
pub struct Sent {
    pub conversation: ConversationId,
    pub client_msg_id: String,
    pub body: String,
    /// Who queued it: the traffic task (`false`) or the test itself (`Member::queue`). Each
    /// records its own sends in outbox order; between the two the recorded order can differ
    /// from the outbox's (both await the SDK, then record), so order is checked per source.
    pub by_test: bool,
}

/// Everything one SDK client told the app, in order.
#[derive(Debug, Default)]
pub struct Log {
    pub entries: BTreeMap<ConversationId, Vec<Entry>>,
    pub acks: Vec<Ack>,
    /// When each of `acks` came.
    pub ack_times: Vec<Instant>,
    pub sent: Vec<Sent>,
    /// Sends the server refused for good (none may be).
    pub failed: Vec<(String, ErrorBody)>,
    /// When each `Connected` came.
    pub connects: Vec<Instant>,
    /// Each `Disconnected`'s reason.
    pub drops: Vec<String>,
    /// When each of `drops` came.
    pub drop_times: Vec<Instant>,
    pub closed: bool,
}

impl Log {
    /// The highest seq handed to the app in `conv`.
    pub fn upto(&self, conv: ConversationId) -> u64 {
        self.entries.get(&conv).and_then(|e| e.last()).map_or(0, |e| e.seq)
    }

    /// Sends handed to the outbox and not acked yet.
    pub fn unacked(&self) -> usize {
        self.sent.len().saturating_sub(self.acks.len())
    }
}

/// A user with an SDK client and a task recording its events.
pub struct Member {
    pub account: TestUser,
    pub client: Client,
    log: Arc<Mutex<Log>>,
    reader: JoinHandle<()>,
}

impl Member {
    /// Starts an SDK client for `account` against `addr` (a node or the balancer).
    pub async fn connect(account: &TestUser, addr: SocketAddr) -> Member {
        let (client, mut events) = Client::connect(sdk_config(addr, &account.token))
            .await
            .unwrap_or_else(|e| panic!("{}: the SDK client starts: {e}", account.handle));
        let log = Arc::new(Mutex::new(Log::default()));
        let recorder = log.clone();
        let reader = tokio::spawn(async move {
            while let Some(event) = events.next().await {
                let mut log = recorder.lock().expect("log lock");
                match event {
                    Event::Entry(entry) => {
                        log.entries.entry(entry.conversation).or_default().push(entry);
                    }
                    Event::Acked(ack) => {
                        log.acks.push(ack);
                        log.ack_times.push(Instant::now());
                    }
                    Event::SendFailed { client_msg_id, error, .. } => {
                        log.failed.push((client_msg_id, error));
                    }
                    Event::Connection(ConnectionState::Connected { .. }) => {
                        log.connects.push(Instant::now());
                    }
                    Event::Connection(ConnectionState::Disconnected { reason, .. }) => {
                        log.drops.push(reason);
                        log.drop_times.push(Instant::now());
                    }
                    Event::Connection(ConnectionState::Closed { .. }) => log.closed = true,
                    _ => {}
                }
            }
        });
        Member { account: account.clone(), client, log, reader }
    }

    pub fn name(&self) -> &str {
        &self.account.handle
    }

    pub fn id(&self) -> UserId {
        self.account.id
    }

    /// The recorded events (never hold it across an await).
    pub fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().expect("log lock")
    }

    /// A one-line summary for failure messages.
    pub fn summary(&self) -> String {
        let log = self.log();
        let upto: Vec<String> = log
            .entries
            .iter()
            .map(|(c, e)| format!("{c}:{}", e.last().map_or(0, |e| e.seq)))
            .collect();
        format!(
            "{}: sent {} acked {} failed {} connects {} drops {:?} upto [{}]",
            self.name(),
            log.sent.len(),
            log.acks.len(),
            log.failed.len(),
            log.connects.len(),
            log.drops.iter().rev().take(3).collect::<Vec<_>>(),
            upto.join(" ")
        )
    }

    /// Waits until the client has reported `n` connections in all.
    pub async fn wait_connects(&self, n: usize) {
        poll_until(
            &format!("{} to be connected ({n} times)", self.name()),
            || async { (self.log().connects.len() >= n).then_some(()) },
            || self.summary(),
        )
        .await;
    }

    /// Waits until the app has been handed `conv` up to `seq`.
    pub async fn wait_upto(&self, conv: ConversationId, seq: u64) {
        poll_until(
            &format!("{} to get {conv} up to seq {seq}", self.name()),
            || async { (self.log().upto(conv) >= seq).then_some(()) },
            || self.summary(),
        )
        .await;
    }

    /// Hands one message to the outbox, recorded like the traffic's; its `client_msg_id`.
    pub async fn queue(&self, conv: ConversationId, body: &str) -> String {
        let client_msg_id = within("a send to be queued", self.client.send_nowait(conv, body))
            .await
            .unwrap_or_else(|e| panic!("{}: a send is queued: {e}", self.name()));
        self.log().sent.push(Sent {
            conversation: conv,
            client_msg_id: client_msg_id.clone(),
            body: body.to_owned(),
            by_test: true,
        });
        client_msg_id
    }

    /// [`Member::queue`], then waits for the ack.
    pub async fn send_recorded(&self, conv: ConversationId, body: &str) -> Ack {
        let client_msg_id = self.queue(conv, body).await;
        poll_until(
            &format!("{}'s ack of {body:?}", self.name()),
            || async {
                let log = self.log();
                log.acks.iter().find(|a| a.client_msg_id.as_ref() == Some(&client_msg_id)).cloned()
            },
            || self.summary(),
        )
        .await
    }

    /// The highest acked seq in `conv`.
    pub fn max_acked(&self, conv: ConversationId) -> u64 {
        self.log().acks.iter().filter(|a| a.conversation == conv).map(|a| a.seq).max().unwrap_or(0)
    }

    /// Closes the client (its state stays in memory).
    pub async fn close(self) {
        let _ = within("an SDK close", self.client.close()).await;
        let _ = within("the event reader to end", self.reader).await;
    }
}

/// Tasks keeping SDK outboxes fed: each hands its member's client `burst` messages at a
/// time, once per `pace` (so that several are on the wire at once), recording each; it
/// pauses while `MAX_BACKLOG` wait for their ack.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Traffic {
    /// One task per `(member, conversation)`; bodies are `"{handle} {conv} {k}"`.
    pub fn start(senders: &[(&Member, ConversationId)], pace: Duration, burst: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = senders
            .iter()
            .map(|(member, conv)| {
                let (client, log, stop) = (member.client.clone(), member.log.clone(), stop.clone());
                let (name, conv) = (member.name().to_owned(), *conv);
                tokio::spawn(async move {
                    let mut k = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        if log.lock().expect("log lock").unacked() >= MAX_BACKLOG {
                            tokio::time::sleep(pace).await;
                            continue;
                        }
                        for _ in 0..burst {
                            let body = format!("{name} {conv} {k}");
                            let client_msg_id = client
                                .send_nowait(conv, body.clone())
                                .await
                                .unwrap_or_else(|e| panic!("{name}: a send is queued: {e}"));
                            log.lock().expect("log lock").sent.push(Sent {
                                conversation: conv,
                                client_msg_id,
                                body,
                                by_test: false,
                            });
                            k += 1;
                        }
                        tokio::time::sleep(pace).await;
                    }
                })
            })
            .collect();
        Traffic { stop, tasks }
    }

    /// Stops handing out sends (those queued stay in the outboxes).
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            within("a sender to stop", task).await.expect("a sender task panicked");
        }
    }
}

/// Waits until every send of every member is acked (nothing left in any outbox).
pub async fn wait_all_acked(members: &[&Member]) {
    poll_until(
        "every send to be acked",
        || async { members.iter().all(|m| m.log().unacked() == 0).then_some(()) },
        || members.iter().map(|m| m.summary()).collect::<Vec<_>>().join("\n"),
    )
    .await;
}

/// Waits until each member has `n` more acks than `before` (same order as `members`).
pub async fn wait_more_acks(what: &str, members: &[&Member], before: &[usize], n: usize) {
    poll_until(
        what,
        || async {
            members.iter().zip(before).all(|(m, b)| m.log().acks.len() >= b + n).then_some(())
        },
        || members.iter().map(|m| m.summary()).collect::<Vec<_>>().join("\n"),
    )
    .await;
}

/// Each member's ack count now.
pub fn ack_counts(members: &[&Member]) -> Vec<usize> {
    members.iter().map(|m| m.log().acks.len()).collect()
}

/// An SDK client for each of `accounts` against `addr`, once each has connected.
pub async fn connect_all(accounts: &[TestUser], addr: SocketAddr) -> Vec<Member> {
    let mut members = Vec::new();
    for account in accounts {
        members.push(Member::connect(account, addr).await);
    }
    for m in &members {
        m.wait_connects(1).await;
    }
    members
}

/// The node each user's registry entry names (one, once its session registered).
pub async fn node_of(redis: &natter_testkit::process::Redis, user: UserId) -> Option<String> {
    let nodes = redis.zset(&format!("natter:u:{}", user.0)).await;
    match nodes.as_slice() {
        [(node, _)] => Some(node.clone()),
        _ => None,
    }
}

/// The members whose sessions are on `node` (the registry says), once each one's entry is
/// there.
pub async fn members_on<'a>(
    redis: &natter_testkit::process::Redis,
    members: &'a [Member],
    node: &str,
) -> Vec<&'a Member> {
    let mut on = Vec::new();
    for m in members {
        let at = poll_until(
            &format!("{}'s registry entry", m.name()),
            || async { node_of(redis, m.id()).await },
            || m.summary(),
        )
        .await;
        if at == node {
            on.push(m);
        }
    }
    on
}

/// A conversation's whole log from the store, over REST, oldest first.
pub async fn store_log(api: &Api, conv: ConversationId) -> Vec<Entry> {
    let mut log: Vec<Entry> = Vec::new();
    loop {
        let after = log.last().map_or(0, |e| e.seq);
        let page =
            within("a history page", api.history(conv, HistoryRange::After(after), Some(500)))
                .await
                .unwrap_or_else(|e| panic!("history of {conv} after {after}: {e}"));
        let n = page.entries.len();
        log.extend(page.entries);
        if n == 0 || !page.has_more {
            return log;
        }
    }
}

/// What must match between the store's copy of an entry and a delivered one (the store's
/// copy also carries the message's current state).
fn key(e: &Entry) -> (u64, &str, UserId, Option<&str>, &EntryBody) {
    (e.seq, &e.id, e.sender, e.client_msg_id.as_deref(), &e.body)
}

/// The log is `1..=N` with no gap and no duplicate.
pub fn assert_contiguous_log(conv: ConversationId, log: &[Entry]) {
    let seqs: Vec<u64> = log.iter().map(|e| e.seq).collect();
    let want: Vec<u64> = (1..=log.len() as u64).collect();
    assert_eq!(seqs, want, "the store's log of {conv} is not 1..=N");
}

/// Every send the members handed their outboxes for `conv` is in the log exactly once, with
/// its body; every ack names the entry with its `client_msg_id`; each send got one ack; no
/// send was refused. `extra`: other `(sender, client_msg_id)` the test appended itself (REST,
/// raw WebSocket), each of which must be in the log exactly once too. With `in_order`, each
/// member's sends are in the log in the order it wrote them.
pub fn assert_sends_committed_once(
    conv: ConversationId,
    log: &[Entry],
    members: &[&Member],
    extra: &[(UserId, String)],
    in_order: bool,
) {
    let mut by_id: HashMap<(UserId, &str), Vec<&Entry>> = HashMap::new();
    for e in log {
        if let Some(id) = &e.client_msg_id {
            by_id.entry((e.sender, id.as_str())).or_default().push(e);
        }
    }
    let mut expected = 0;
    for m in members {
        let log_of = m.log();
        assert!(log_of.failed.is_empty(), "{}: sends were refused: {:?}", m.name(), log_of.failed);
        // Per source: [traffic, test].
        let mut last_seq = [0, 0];
        for sent in log_of.sent.iter().filter(|s| s.conversation == conv) {
            expected += 1;
            let found = by_id.get(&(m.id(), sent.client_msg_id.as_str())).map_or(&[][..], |v| v);
            assert_eq!(
                found.len(),
                1,
                "{}: send {:?} ({}) is in the log of {conv} {} times",
                m.name(),
                sent.body,
                sent.client_msg_id,
                found.len()
            );
            let entry = found[0];
            assert!(
                matches!(&entry.body, EntryBody::Message { body, .. } if *body == sent.body),
                "{}: {} stored as {:?}, sent {:?}",
                m.name(),
                sent.client_msg_id,
                entry.body,
                sent.body
            );
            if in_order {
                let last = &mut last_seq[usize::from(sent.by_test)];
                assert!(
                    entry.seq > *last,
                    "{}: {:?} stored at seq {} after an earlier send at seq {last}",
                    m.name(),
                    sent.body,
                    entry.seq
                );
                *last = entry.seq;
            }
        }
        // Each send is acked exactly once (acks of every conversation: sent ones are known).
        let mut acked: HashMap<&str, usize> = HashMap::new();
        for ack in log_of.acks.iter().filter(|a| a.conversation == conv) {
            let id = ack.client_msg_id.as_deref().expect("an SDK ack names its send");
            *acked.entry(id).or_default() += 1;
            let entry = log.get((ack.seq as usize).wrapping_sub(1));
            assert!(
                entry.is_some_and(|e| e.client_msg_id.as_deref() == Some(id)
                    && e.sender == m.id()
                    && e.id == ack.id),
                "{}: acked {id} as seq {} ({}), the log has {:?} there",
                m.name(),
                ack.seq,
                ack.id,
                entry
            );
        }
        for sent in log_of.sent.iter().filter(|s| s.conversation == conv) {
            assert_eq!(
                acked.get(sent.client_msg_id.as_str()).copied().unwrap_or(0),
                1,
                "{}: {:?} ({}) was not acked exactly once",
                m.name(),
                sent.body,
                sent.client_msg_id
            );
        }
    }
    for (sender, id) in extra {
        expected += 1;
        let n = by_id.get(&(*sender, id.as_str())).map_or(0, Vec::len);
        assert_eq!(n, 1, "{id} by {sender} is in the log of {conv} {n} times");
    }
    let messages = log.iter().filter(|e| matches!(e.body, EntryBody::Message { .. })).count();
    assert_eq!(messages, expected, "the log of {conv} holds messages nobody sent");
}

/// `got` (what one member was handed, in order) is exactly the store's log.
pub fn assert_same_log(who: &str, conv: ConversationId, got: &[Entry], log: &[Entry]) {
    let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
    let want: Vec<u64> = log.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, want, "{who}: the seqs of {conv} it got are not the store's log");
    for (g, w) in got.iter().zip(log) {
        assert_eq!(key(g), key(w), "{who}: entry {} of {conv} differs from the store's", g.seq);
    }
}

/// A member's whole timeline of `conv`, once it reaches the end of `log`, is `log`.
pub async fn assert_member_saw_log(m: &Member, conv: ConversationId, log: &[Entry]) {
    let last = log.last().map_or(0, |e| e.seq);
    m.wait_upto(conv, last).await;
    let got = m.log().entries.get(&conv).cloned().unwrap_or_default();
    assert_same_log(m.name(), conv, &got, log);
}

// ---- raw sessions ----

/// What a raw session was sent.
#[derive(Debug, Default)]
pub struct RawLog {
    pub entries: BTreeMap<ConversationId, Vec<(Instant, Entry)>>,
    pub synced: bool,
    /// Presence as it came (subscription answers and changes), with arrival times.
    pub presence: Vec<(Instant, Presence)>,
    pub acks: Vec<Ack>,
    pub errors: Vec<(Option<u64>, ErrorBody)>,
    /// Set when the connection ended (the close code, if any).
    pub ended: Option<Option<u16>>,
}

impl RawLog {
    pub fn upto(&self, conv: ConversationId) -> u64 {
        self.entries.get(&conv).and_then(|e| e.last()).map_or(0, |(_, e)| e.seq)
    }

    /// The latest status of `user` this session was told.
    pub fn status_of(&self, user: UserId) -> Option<(Instant, Status)> {
        self.presence.iter().rev().find(|(_, p)| p.user == user).map(|(at, p)| (*at, p.status))
    }
}

/// A raw WebSocket session whose frames a task records.
pub struct Raw {
    pub name: String,
    log: Arc<Mutex<RawLog>>,
    task: JoinHandle<()>,
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Raw {
    /// Sends `first` on `ws`, then records everything that comes.
    pub async fn start(name: &str, mut ws: WsClient, first: &[ClientFrame]) -> Raw {
        for frame in first {
            ws.send_frame(frame).await;
        }
        let log = Arc::new(Mutex::new(RawLog::default()));
        let recorder = log.clone();
        let task = tokio::spawn(async move {
            loop {
                // Long waits are fine: the task ends with the connection or is aborted.
                let frame = match ws.read_within(Duration::from_secs(3600)).await {
                    Ok(Some(frame)) => frame,
                    Ok(None) => continue,
                    Err(code) => {
                        recorder.lock().expect("raw log").ended = Some(code);
                        return;
                    }
                };
                let now = Instant::now();
                let mut log = recorder.lock().expect("raw log");
                match frame {
                    ServerFrame::Synced { conversations, .. } => {
                        for sc in conversations {
                            let conv = sc.conversation.id;
                            let list = log.entries.entry(conv).or_default();
                            list.extend(sc.entries.into_iter().map(|e| (now, e)));
                        }
                        log.synced = true;
                    }
                    ServerFrame::Entry { entry } => {
                        log.entries.entry(entry.conversation).or_default().push((now, entry));
                    }
                    ServerFrame::PresenceSubscribed { users, .. } => {
                        log.presence.extend(users.into_iter().map(|p| (now, p)));
                    }
                    ServerFrame::Presence { users } => {
                        log.presence.extend(users.into_iter().map(|p| (now, p)));
                    }
                    ServerFrame::Ack { ack, .. } => log.acks.push(ack),
                    ServerFrame::Error { req_id, error } => log.errors.push((req_id, error)),
                    _ => {}
                }
            }
        });
        Raw { name: name.to_owned(), log, task }
    }

    /// Connects `account` to `addr` and syncs from nothing: every entry of its
    /// conversations, then the live stream.
    pub async fn receiver(account: &TestUser, addr: SocketAddr) -> Raw {
        let ws = WsClient::open(addr, &account.token).await;
        let sync = ClientFrame::Sync { req_id: 1, cursors: BTreeMap::new(), limit: Some(500) };
        let raw = Raw::start(&account.handle, ws, &[sync]).await;
        poll_until(
            &format!("{}'s sync", raw.name),
            || async { raw.log().synced.then_some(()) },
            || format!("{:?}", raw.log()),
        )
        .await;
        raw
    }

    pub fn log(&self) -> MutexGuard<'_, RawLog> {
        self.log.lock().expect("raw log")
    }

    /// Entries of `conv` as they came, without arrival times.
    pub fn entries(&self, conv: ConversationId) -> Vec<Entry> {
        self.log()
            .entries
            .get(&conv)
            .map_or(Vec::new(), |l| l.iter().map(|(_, e)| e.clone()).collect())
    }

    pub fn summary(&self) -> String {
        let log = self.log();
        let upto: Vec<String> = log
            .entries
            .iter()
            .map(|(c, e)| format!("{c}:{}", e.last().map_or(0, |(_, e)| e.seq)))
            .collect();
        format!(
            "{}: upto [{}] errors {:?} ended {:?}",
            self.name,
            upto.join(" "),
            log.errors,
            log.ended
        )
    }

    /// Waits until it was sent `conv` up to `seq`; when the last of them came.
    pub async fn wait_upto(&self, conv: ConversationId, seq: u64) -> Instant {
        poll_until(
            &format!("{} to be sent {conv} up to seq {seq}", self.name),
            || async {
                let log = self.log();
                let last = log.entries.get(&conv)?.last()?;
                (last.1.seq >= seq).then_some(last.0)
            },
            || self.summary(),
        )
        .await
    }

    /// Waits until it was told `user` is `status`; when.
    pub async fn wait_status(&self, user: UserId, status: Status) -> Instant {
        poll_until(
            &format!("{} to see {user} {status:?}", self.name),
            || async {
                let (at, now) = self.log().status_of(user)?;
                (now == status).then_some(at)
            },
            || format!("{}: presence {:?}", self.name, self.log().presence),
        )
        .await
    }
}
