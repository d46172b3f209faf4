//! Cluster mode end to end: three `natter` nodes on one PostgreSQL and one Redis, with
//! clients spread over them. Everything a client sees on one node also works across nodes:
//! live entries (also to one user's sessions on two nodes), receipts, typing and presence;
//! concurrent senders on every node into one group, for a small group (routed to each node
//! holding members) and a large one (one channel per conversation, fan-out on read); a
//! member added or removed on one node while connected to another; a client resuming on
//! another node; SSE and long-poll streams fed by a commit on another node; and account
//! changes on one node (profile, device revoked, password changed, account deleted) reaching
//! the sessions on the others.
//!
//! Each client here is a raw WebSocket (`Peer`) that keeps every entry it was delivered, per
//! conversation, and fails at once on a gap or a duplicate.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use natter_client::HistoryRange;
use natter_proto::rest::{AddedMember, PollRequest, PollResponse};
use natter_proto::{
    Ack, ClientFrame, ConversationId, Entry, EntryBody, NewEntry, ReqId, Seq, ServerFrame, Status,
    UserId,
};
use natter_testkit::process::{FAST, ProcessCluster, login, register};
use natter_testkit::{TestUser, WAIT, WsClient, reply_id, within};

/// The binary under test, built by cargo before these tests run.
const NATTER: &str = env!("CARGO_BIN_EXE_natter");

// ---- a WebSocket client that remembers what it was delivered ----

/// A raw WebSocket session. Every frame read passes through `record`: entries (live and in
/// `synced` replies) go to `log`, acks to `acks`; frames not yet asked for wait in `stash`.
struct Peer {
    name: String,
    ws: WsClient,
    stash: VecDeque<ServerFrame>,
    /// Per conversation, every entry this session was sent, in the order it was sent (with
    /// `state` cleared: live entries carry none, store reads do).
    log: BTreeMap<ConversationId, Vec<Entry>>,
    acks: Vec<Ack>,
}

impl Peer {
    async fn connect(name: &str, addr: SocketAddr, token: &str) -> Peer {
        let ws = WsClient::open(addr, token).await;
        Peer {
            name: name.to_owned(),
            ws,
            stash: VecDeque::new(),
            log: BTreeMap::new(),
            acks: Vec::new(),
        }
    }

    fn record(&mut self, frame: &ServerFrame) {
        match frame {
            ServerFrame::Entry { entry } => self.push(entry),
            ServerFrame::Synced { conversations, .. } => {
                for conv in conversations {
                    for entry in &conv.entries {
                        self.push(entry);
                    }
                }
            }
            ServerFrame::Ack { ack, .. } => self.acks.push(ack.clone()),
            _ => {}
        }
    }

    /// The protocol's order guarantee, checked on every entry as it arrives.
    fn push(&mut self, entry: &Entry) {
        let log = self.log.entry(entry.conversation).or_default();
        if let Some(last) = log.last() {
            assert_eq!(
                entry.seq,
                last.seq + 1,
                "{}: conversation {} went from seq {} to seq {} (a gap or a duplicate)",
                self.name,
                entry.conversation,
                last.seq,
                entry.seq
            );
        }
        log.push(Entry { state: None, ..entry.clone() });
    }

    /// The next frame from the server, recorded; panics at `deadline` or if the connection
    /// ends.
    async fn read(&mut self, deadline: Instant, what: &str) -> ServerFrame {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.ws.read_within(left).await {
            Ok(Some(frame)) => {
                self.record(&frame);
                frame
            }
            Ok(None) => panic!(
                "{}: no {what} within {WAIT:?}; delivered so far {:?}; last unclaimed frames {:?}",
                self.name,
                self.summary(),
                self.stash.iter().rev().take(5).collect::<Vec<_>>()
            ),
            Err(close) => panic!("{}: connection ended ({close:?}) before {what}", self.name),
        }
    }

    /// The oldest unclaimed frame matching `pred` (frames before it stay unclaimed).
    async fn next_where(&mut self, what: &str, pred: impl Fn(&ServerFrame) -> bool) -> ServerFrame {
        if let Some(i) = self.stash.iter().position(&pred) {
            return self.stash.remove(i).expect("the index exists");
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let frame = self.read(deadline, what).await;
            if pred(&frame) {
                return frame;
            }
            self.stash.push_back(frame);
        }
    }

    /// Reads frames until `cond` holds; an `error` frame on the way fails the test.
    async fn until(&mut self, what: &str, cond: impl Fn(&Peer) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond(self) {
            let frame = self.read(deadline, what).await;
            assert!(
                !matches!(frame, ServerFrame::Error { .. }),
                "{}: error while waiting for {what}: {frame:?}",
                self.name
            );
            self.stash.push_back(frame);
        }
    }

    /// Reads until `conv`'s stream reached `seq`.
    async fn wait_seq(&mut self, conv: ConversationId, seq: Seq) {
        self.until(&format!("seq {seq} of conversation {conv}"), |p| p.upto(conv) >= seq).await;
    }

    /// Sends a request and returns its reply (matched by `req_id`).
    async fn request(&mut self, build: impl FnOnce(ReqId) -> ClientFrame) -> ServerFrame {
        let req_id = self.ws.req_id();
        self.ws.send_frame(&build(req_id)).await;
        self.next_where(&format!("the reply to request {req_id}"), |f| reply_id(f) == Some(req_id))
            .await
    }

    /// A request whose reply must be `ok`.
    async fn request_ok(&mut self, build: impl FnOnce(ReqId) -> ClientFrame) {
        let reply = self.request(build).await;
        assert!(
            matches!(reply, ServerFrame::Ok { .. }),
            "{}: expected ok, got {reply:?}",
            self.name
        );
    }

    /// Sends a message without waiting for its ack (it lands in `acks`); its body is
    /// `body_of(client_msg_id)`.
    async fn send(&mut self, conversation: ConversationId, client_msg_id: &str) {
        let req_id = self.ws.req_id();
        let frame = ClientFrame::Send {
            req_id,
            conversation,
            client_msg_id: client_msg_id.to_owned(),
            body: body_of(client_msg_id),
            reply_to: None,
            attachments: Vec::new(),
            mentions: Vec::new(),
        };
        self.ws.send_frame(&frame).await;
    }

    /// Sends a message and waits for its ack.
    async fn send_acked(&mut self, conversation: ConversationId, client_msg_id: &str) -> Ack {
        self.send(conversation, client_msg_id).await;
        let acked =
            |p: &Peer| p.acks.iter().any(|a| a.client_msg_id.as_deref() == Some(client_msg_id));
        self.until(&format!("the ack of {client_msg_id}"), acked).await;
        self.acks
            .iter()
            .find(|a| a.client_msg_id.as_deref() == Some(client_msg_id))
            .expect("just seen")
            .clone()
    }

    /// Syncs from `cursors`, and again while a conversation has more (each time from where
    /// the session's stream stands), so that every conversation ends live.
    async fn sync(&mut self, cursors: &BTreeMap<ConversationId, Seq>) {
        let mut cursors = cursors.clone();
        loop {
            let sent = cursors.clone();
            let reply = self
                .request(|req_id| ClientFrame::Sync { req_id, cursors: sent, limit: None })
                .await;
            let ServerFrame::Synced { conversations, .. } = reply else {
                panic!("{}: expected synced, got {reply:?}", self.name)
            };
            if conversations.iter().all(|c| !c.has_more) {
                return;
            }
            for (conv, log) in &self.log {
                cursors.insert(*conv, log.last().expect("logs are never empty").seq);
            }
        }
    }

    /// Ping, then pong: every frame queued for this session before the ping was read (the
    /// pong leaves through the same queue).
    async fn drain(&mut self) {
        let reply = self.request(|req_id| ClientFrame::Ping { req_id: Some(req_id) }).await;
        assert!(matches!(reply, ServerFrame::Pong { .. }), "{}: got {reply:?}", self.name);
    }

    /// The last `seq` delivered in `conv` (0: none).
    fn upto(&self, conv: ConversationId) -> Seq {
        self.log.get(&conv).and_then(|l| l.last()).map_or(0, |e| e.seq)
    }

    fn entries(&self, conv: ConversationId) -> &[Entry] {
        self.log.get(&conv).map_or(&[], Vec::as_slice)
    }

    fn seqs(&self, conv: ConversationId) -> Vec<Seq> {
        self.entries(conv).iter().map(|e| e.seq).collect()
    }

    /// `conv: first..=last` per conversation, for failure messages.
    fn summary(&self) -> Vec<String> {
        self.log
            .iter()
            .map(|(c, l)| format!("{c}: {}..={}", l[0].seq, l[l.len() - 1].seq))
            .collect()
    }

    /// Unclaimed frames matching `pred`.
    fn stashed(&self, pred: impl Fn(&ServerFrame) -> bool) -> Vec<&ServerFrame> {
        self.stash.iter().filter(|f| pred(f)).collect()
    }

    async fn close(self) {
        self.ws.close().await;
    }
}

fn body_of(client_msg_id: &str) -> String {
    format!("body of {client_msg_id}")
}

/// A message entry's text.
fn text(entry: &Entry) -> &str {
    match &entry.body {
        EntryBody::Message { body, .. } => body,
        other => panic!("seq {} is not a message: {other:?}", entry.seq),
    }
}

fn typing_of(user: UserId, typing: bool) -> impl Fn(&ServerFrame) -> bool {
    move |f| matches!(f, ServerFrame::Typing { user: u, typing: t, .. } if *u == user && *t == typing)
}

fn presence_of(user: UserId, status: Status) -> impl Fn(&ServerFrame) -> bool {
    move |f| match f {
        ServerFrame::Presence { users } => {
            users.iter().any(|p| p.user == user && p.status == status)
        }
        _ => false,
    }
}

/// The whole log of `conv` from the store (through `account` on `addr`), `state` cleared.
async fn store_log(addr: SocketAddr, account: &TestUser, conv: ConversationId) -> Vec<Entry> {
    let page =
        within("history", account.api(addr).history(conv, HistoryRange::After(0), Some(500)))
            .await
            .expect("history");
    assert!(!page.has_more, "the tests keep logs under one page");
    page.entries.into_iter().map(|e| Entry { state: None, ..e }).collect()
}

fn no_cursors() -> BTreeMap<ConversationId, Seq> {
    BTreeMap::new()
}

// ---- 1. entries, receipts, typing, presence across nodes ----

/// Alice on node-1 (and a second session on node-3), Bob on node-2, Carol on node-3, in one
/// group: entries, receipts and typing cross nodes both ways, Alice's two sessions on two
/// nodes each get every entry, and Bob sees Alice's presence (online, away, offline) decided
/// on other nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_receipts_typing_and_presence_cross_nodes() {
    let started = Instant::now();
    let c = ProcessCluster::start(NATTER, 3, FAST).await;
    let (n1, n2, n3) = (c.node(0).addr(), c.node(1).addr(), c.node(2).addr());
    let alice = register(n1, "alice").await;
    let bob = register(n2, "bob").await;
    let carol = register(n3, "carol").await;
    alice.contacts(n1, &[&bob, &carol]).await;
    let group = within("create", alice.api(n1).create_group("trio", &[bob.id, carol.id]))
        .await
        .expect("create group")
        .conversation
        .id;

    let connected_ms = now_ms();
    let mut a1 = Peer::connect("alice@node-1", n1, &alice.token).await;
    let mut a3 = Peer::connect("alice@node-3", n3, &alice.token).await;
    let mut b = Peer::connect("bob@node-2", n2, &bob.token).await;
    let mut cc = Peer::connect("carol@node-3", n3, &carol.token).await;
    for p in [&mut a1, &mut a3, &mut b, &mut cc] {
        p.sync(&no_cursors()).await;
        assert_eq!(p.seqs(group), [1], "{}: the sync brings the created entry", p.name);
    }

    // Entries: node-1 → nodes 2 and 3, and node-2 → nodes 1 and 3; Alice's sessions on
    // node-1 and node-3 both get each one, her own included.
    let ack = a1.send_acked(group, "a-1").await;
    assert_eq!(ack.seq, 2);
    for p in [&mut a1, &mut a3, &mut b, &mut cc] {
        p.wait_seq(group, 2).await;
        let e = &p.entries(group)[1];
        assert_eq!((e.sender, text(e), e.id.as_str()), (alice.id, "body of a-1", ack.id.as_str()));
    }
    let ack = b.send_acked(group, "b-1").await;
    assert_eq!(ack.seq, 3);
    for p in [&mut a1, &mut a3, &mut b, &mut cc] {
        p.wait_seq(group, 3).await;
        let e = &p.entries(group)[2];
        assert_eq!((e.sender, text(e)), (bob.id, "body of b-1"), "{}", p.name);
    }

    // Receipts: Bob's read cursor on node-2 reaches Alice (both nodes) and Carol.
    b.request_ok(|req_id| ClientFrame::Read { req_id: Some(req_id), conversation: group, seq: 3 })
        .await;
    for p in [&mut a1, &mut a3, &mut cc] {
        let frame = p
            .next_where(
                "Bob's read receipt",
                |f| matches!(f, ServerFrame::Receipt { receipt } if receipt.user == bob.id),
            )
            .await;
        let ServerFrame::Receipt { receipt } = frame else { unreachable!() };
        assert_eq!(
            (receipt.conversation, receipt.delivered_seq, receipt.read_seq),
            (group, 3, 3),
            "{}",
            p.name
        );
    }

    // Typing: Alice types on node-1; Bob (node-2) and Carol (node-3) see it, none of
    // Alice's own sessions does.
    a1.request_ok(|req_id| ClientFrame::Typing {
        req_id: Some(req_id),
        conversation: group,
        typing: true,
    })
    .await;
    for p in [&mut b, &mut cc] {
        let frame = p.next_where("Alice typing", typing_of(alice.id, true)).await;
        let ServerFrame::Typing { conversation, ttl_ms, .. } = frame else { unreachable!() };
        assert_eq!(conversation, group);
        assert!(ttl_ms.is_some(), "a typing: true carries its ttl");
    }
    // Carol's node got the indicator, so one for Alice's session there would be queued
    // before this pong; Alice's node-1 session would have had it before the `ok`.
    a3.drain().await;
    for p in [&a1, &a3] {
        let own = p.stashed(|f| matches!(f, ServerFrame::Typing { .. }));
        assert!(own.is_empty(), "{} was told about its own typing: {own:?}", p.name);
    }
    a1.request_ok(|req_id| ClientFrame::Typing {
        req_id: Some(req_id),
        conversation: group,
        typing: false,
    })
    .await;
    b.next_where("Alice stopped typing", typing_of(alice.id, false)).await;

    // Presence: Bob (node-2) watches Alice, who has sessions on nodes 1 and 3 only.
    a3.close().await;
    let reply =
        b.request(|req_id| ClientFrame::SubscribePresence { req_id, users: vec![alice.id] }).await;
    let ServerFrame::PresenceSubscribed { users, denied, .. } = reply else {
        panic!("expected presence_subscribed, got {reply:?}")
    };
    assert!(denied.is_empty(), "Bob shares a group with Alice: {denied:?}");
    assert_eq!(users.len(), 1);
    assert_eq!((users[0].user, users[0].status), (alice.id, Status::Online));
    // Away on node-1, and node-3's session is gone: away, not online, on node-2.
    a1.request_ok(|req_id| ClientFrame::SetStatus { req_id: Some(req_id), status: Status::Away })
        .await;
    b.next_where("Alice away", presence_of(alice.id, Status::Away)).await;
    // Her last session ends: offline, not before the grace (300 ms), with when she was
    // last seen.
    let closing = Instant::now();
    a1.close().await;
    let frame = b.next_where("Alice offline", presence_of(alice.id, Status::Offline)).await;
    assert!(closing.elapsed() >= Duration::from_millis(300), "offline before the grace");
    let ServerFrame::Presence { users } = frame else { unreachable!() };
    let alice_now = users.iter().find(|p| p.user == alice.id).expect("Alice in the frame");
    let last_seen = alice_now.last_seen.expect("offline comes with last_seen");
    assert!((connected_ms..=now_ms()).contains(&last_seen), "last_seen {last_seen} is recent");

    // Nothing else was delivered to anyone: every log is still 1..=3.
    for p in [&mut b, &mut cc] {
        p.drain().await;
        assert_eq!(p.seqs(group), [1, 2, 3], "{}", p.name);
    }

    // A browser's event-stream ticket, issued by node-1, works once in the cluster: on
    // node-2, then not on node-3 (its nonce is claimed in Redis).
    let http = reqwest::Client::new();
    let issued = http
        .post(format!("http://{n1}/v1/tickets"))
        .bearer_auth(&alice.token)
        .send()
        .await
        .expect("ticket request");
    assert_eq!(issued.status(), reqwest::StatusCode::CREATED);
    let ticket: natter_proto::rest::Ticket = issued.json().await.expect("a ticket");
    let events = |addr: SocketAddr| {
        http.get(format!("http://{addr}/v1/events?ticket={}", ticket.ticket)).send()
    };
    let first = within("events on node-2", events(n2)).await.expect("events");
    assert_eq!(first.status(), reqwest::StatusCode::OK);
    drop(first);
    let again = within("events on node-3", events(n3)).await.expect("events");
    assert_eq!(again.status(), reqwest::StatusCode::UNAUTHORIZED, "a ticket is single-use");
    // While a fresh one from node-1 works on node-3: the refusal was the use alone.
    let issued = http.post(format!("http://{n1}/v1/tickets")).bearer_auth(&alice.token).send();
    let fresh: natter_proto::rest::Ticket =
        within("a ticket", issued).await.expect("ticket").json().await.expect("a ticket");
    let url = format!("http://{n3}/v1/events?ticket={}", fresh.ticket);
    let res = within("events on node-3", http.get(url).send()).await.expect("events");
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    drop(res);

    // Account changes made on node-1 reach the other nodes: a profile frame to bob on
    // node-2; a revoked device's session on node-3 and, after a password change, another
    // device's session on node-2 end at once (close 4001), and their tokens die everywhere.
    let update = natter_proto::rest::ProfileUpdate {
        display_name: Some("Alice of node-1".to_owned()),
        ..Default::default()
    };
    let res =
        http.patch(format!("http://{n1}/v1/me/profile")).bearer_auth(&alice.token).json(&update);
    assert_eq!(within("profile", res.send()).await.expect("profile").status(), 200);
    let frame = b.next_where("alice's profile", |f| matches!(f, ServerFrame::Profile { .. })).await;
    let ServerFrame::Profile { user } = frame else { unreachable!() };
    assert_eq!((user.user_id, user.display_name.as_deref()), (alice.id, Some("Alice of node-1")));

    let laptop = login(n3, "alice").await;
    let phone = login(n2, "alice").await;
    let mut laptop_ws = WsClient::open(n3, &laptop.token).await;
    let mut phone_ws = WsClient::open(n2, &phone.token).await;
    let me: natter_proto::rest::Me = within(
        "the laptop's device",
        http.get(format!("http://{n3}/v1/me")).bearer_auth(&laptop.token).send(),
    )
    .await
    .expect("me")
    .json()
    .await
    .expect("me");
    let laptop_id = me.device_id;
    let res =
        http.delete(format!("http://{n1}/v1/me/devices/{}", laptop_id.0)).bearer_auth(&alice.token);
    assert_eq!(within("revoke", res.send()).await.expect("revoke").status(), 204);
    let closed = laptop_ws.closed().await.expect("the laptop's session closed");
    assert_eq!(u16::from(closed.code), natter_proto::close::UNAUTHENTICATED);
    let change = natter_proto::rest::ChangePassword {
        current_password: natter_testkit::PASSWORD.to_owned(),
        new_password: "a brand new passphrase".to_owned(),
    };
    let res =
        http.put(format!("http://{n1}/v1/me/password")).bearer_auth(&alice.token).json(&change);
    assert_eq!(within("password", res.send()).await.expect("password").status(), 204);
    let closed = phone_ws.closed().await.expect("the phone's session closed");
    assert_eq!(u16::from(closed.code), natter_proto::close::UNAUTHENTICATED);
    for (addr, token) in [(n2, &phone.token), (n3, &laptop.token), (n1, &phone.token)] {
        let res = http.get(format!("http://{addr}/v1/me")).bearer_auth(token).send();
        assert_eq!(within("me", res).await.expect("me").status(), 401);
    }
    // Deleting the account on node-1 ends its session on node-3 too.
    let mut still = WsClient::open(n3, &alice.token).await;
    let body = natter_proto::rest::DeleteAccount { password: "a brand new passphrase".to_owned() };
    let res = http.delete(format!("http://{n1}/v1/me")).bearer_auth(&alice.token).json(&body);
    assert_eq!(within("delete", res.send()).await.expect("delete").status(), 204);
    let closed = still.closed().await.expect("the session on node-3 closed");
    assert_eq!(u16::from(closed.code), natter_proto::close::UNAUTHENTICATED);

    // A server administrator, granted by `natter admin grant` on the shared database, bans
    // bob through node-1: his sessions on all three nodes end, and no node logs him in.
    let root = register(n1, "root").await;
    let scratch = tempfile::tempdir().expect("a data dir for the command");
    let granted = tokio::process::Command::new(NATTER)
        .args(["admin", "grant", "root", "--database-url", &c.pg.url()])
        .arg("--data-dir")
        .arg(scratch.path())
        .output();
    let granted = within("natter admin grant", granted).await.expect("the command ran");
    assert!(granted.status.success(), "{}", String::from_utf8_lossy(&granted.stderr));
    let mut bobs = Vec::new();
    for addr in [n1, n2, n3] {
        let session = login(addr, "bob").await;
        bobs.push(WsClient::open(addr, &session.token).await);
    }
    let body = serde_json::json!({"reason": "spam"});
    let res = http
        .post(format!("http://{n1}/v1/admin/users/{}/suspend", bob.id.0))
        .bearer_auth(&root.token)
        .json(&body);
    assert_eq!(within("ban", res.send()).await.expect("ban").status(), 200);
    for (i, ws) in bobs.iter_mut().enumerate() {
        let closed = ws.closed().await.unwrap_or_else(|| panic!("bob's session on node-{}", i + 1));
        assert_eq!(u16::from(closed.code), natter_proto::close::UNAUTHENTICATED);
    }
    for addr in [n1, n2, n3] {
        let creds = natter_proto::rest::Credentials {
            handle: "bob".into(),
            password: natter_testkit::PASSWORD.into(),
            device: None,
        };
        let res = http.post(format!("http://{addr}/v1/sessions")).json(&creds).send();
        assert_eq!(within("login", res).await.expect("login").status(), 403, "banned on {addr}");
    }
    eprintln!("cross-node features: {:?}", started.elapsed());
}

fn now_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
    i64::try_from(now.as_millis()).expect("ms fit")
}

// ---- 2. concurrent senders on three nodes into one group ----

const MEMBERS: usize = 6;
const SENDERS: usize = 3;
const SENDS: usize = 100;
/// Sends one sender keeps in flight.
const WINDOW: usize = 8;

/// Six members, two per node, all connected and synced; one per node pipelines `SENDS`
/// messages (`WINDOW` in flight), all at once, while a seventh user (never connected) is added through node-2.
/// Every session sees the same contiguous log as the store, every send is acked once, and
/// one sender's messages keep its order.
async fn concurrent_senders(extra_args: &[&str], large: bool) {
    let started = Instant::now();
    let c = ProcessCluster::start(NATTER, 3, extra_args).await;
    let addrs: Vec<SocketAddr> = c.nodes.iter().map(|n| n.addr()).collect();
    let mut accounts = Vec::new();
    for i in 0..MEMBERS {
        accounts.push(register(addrs[i % 3], &format!("member{i}")).await);
    }
    let late = register(addrs[1], "late").await;
    let owner = accounts[0].clone();
    let others: Vec<UserId> = accounts[1..].iter().map(|a| a.id).collect();
    let contacts: Vec<&TestUser> = accounts[1..].iter().chain([&late]).collect();
    owner.contacts(addrs[0], &contacts).await;
    let group = within("create", owner.api(addrs[0]).create_group("busy", &others))
        .await
        .expect("create group")
        .conversation
        .id;
    // created, the messages, and `late` joining.
    let last = (1 + SENDERS * SENDS + 1) as Seq;

    let go = Arc::new(tokio::sync::Barrier::new(MEMBERS + 1));
    let mut tasks = Vec::new();
    for (i, account) in accounts.iter().enumerate() {
        let (addr, token, go) = (addrs[i % 3], account.token.clone(), go.clone());
        let name = format!("member{i}@node-{}", i % 3 + 1);
        tasks.push(tokio::spawn(async move {
            let mut p = Peer::connect(&name, addr, &token).await;
            p.sync(&no_cursors()).await;
            assert_eq!(p.seqs(group), [1], "{name}: synced before anyone sends");
            go.wait().await;
            if i < SENDERS {
                for k in 0..SENDS {
                    // A bounded window in flight: a whole burst would commit as one batch
                    // holding the group's counter, and the three nodes would take turns
                    // in three blocks instead of interleaving.
                    if k >= WINDOW {
                        p.until("a free slot", |p| p.acks.len() > k - WINDOW).await;
                    }
                    p.send(group, &format!("s{i}-{k}")).await;
                }
            }
            let want_acks = if i < SENDERS { SENDS } else { 0 };
            p.until("every entry and ack", |p| p.upto(group) >= last && p.acks.len() >= want_acks)
                .await;
            p
        }));
    }
    go.wait().await;
    let AddedMember::Member(added) =
        within("add", owner.api(addrs[1]).add_member(group, late.id, None))
            .await
            .expect("add a member mid-stream")
    else {
        panic!("late is the owner's contact: added, not invited");
    };
    let mut peers = Vec::new();
    for task in tasks {
        peers.push(task.await.expect("a member's task"));
    }

    let log = store_log(addrs[2], &owner, group).await;
    let seqs: Vec<Seq> = log.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "the store holds exactly what was sent");
    assert!(matches!(log[0].body, EntryBody::Created { .. }));
    let joined = &log[added.seq as usize - 1];
    assert!(
        matches!(joined.body, EntryBody::MemberAdded { user, .. } if user == late.id),
        "seq {} is the join: {joined:?}",
        added.seq
    );
    // Each client_msg_id once in the log, and each sender's in the order it sent them.
    let by_id: BTreeMap<&str, &Entry> =
        log.iter().filter_map(|e| Some((e.client_msg_id.as_deref()?, e))).collect();
    assert_eq!(by_id.len(), SENDERS * SENDS, "every send is in the log once");
    for i in 0..SENDERS {
        let mine: Vec<Seq> = (0..SENDS).map(|k| by_id[format!("s{i}-{k}").as_str()].seq).collect();
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "sender {i}'s order: {mine:?}");
    }

    // How often consecutive messages come from different senders (for the log: the
    // senders did run concurrently).
    let senders: Vec<&str> =
        log.iter().filter_map(|e| e.client_msg_id.as_deref()?.get(..2)).collect();
    let switches = senders.windows(2).filter(|w| w[0] != w[1]).count();
    eprintln!("concurrent senders (large: {large}): {switches} sender switches in the log");
    for p in &mut peers {
        // Every frame queued so far is read: nothing beyond `last` came.
        p.drain().await;
        assert_eq!(p.entries(group), log.as_slice(), "{} saw the store's log", p.name);
    }
    for (i, p) in peers.iter().enumerate().take(SENDERS) {
        let acked: BTreeSet<&str> =
            p.acks.iter().map(|a| a.client_msg_id.as_deref().expect("echoed")).collect();
        assert_eq!(p.acks.len(), SENDS, "{}: one ack per send", p.name);
        assert_eq!(acked.len(), SENDS, "{}: each send acked once", p.name);
        for a in &p.acks {
            let id = a.client_msg_id.as_deref().expect("echoed");
            assert!(id.starts_with(&format!("s{i}-")), "{}: ack for {id}", p.name);
            let e = by_id[id];
            assert_eq!((a.conversation, a.seq, &a.id, a.ts), (group, e.seq, &e.id, e.ts));
        }
    }

    // The large group went through its own channel, which every node subscribed to while
    // it held a member's session; the small one never used one.
    let channel = format!("natter:c:{group}");
    let (_, subscribers): (String, i64) = c.redis.cmd(&["PUBSUB", "NUMSUB", &channel]).await;
    if large {
        assert_eq!(subscribers, 3, "every node subscribes to the large group's channel");
    } else {
        assert_eq!(subscribers, 0, "a small group has no channel");
    }
    for p in peers {
        p.close().await;
    }
    eprintln!("concurrent senders (large: {large}): {:?}", started.elapsed());
}

/// Six members ≤ the default threshold (64): entries go to each node holding members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_small_group_per_node_routing() {
    concurrent_senders(FAST, false).await;
}

/// Six members > a threshold of 3: entries go once to the conversation's channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_large_group_fan_out_on_read() {
    let args = [FAST, &["--large-group-threshold", "3"]].concat();
    concurrent_senders(&args, true).await;
}

// ---- 3. membership across nodes ----

/// Carol is connected to node-3; Alice on node-1 adds her to a group she was not in: the
/// group is announced to Carol's session with its history, and new entries from node-1
/// and node-2 follow live. Removed, she gets the removal and nothing after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_across_nodes() {
    let started = Instant::now();
    let c = ProcessCluster::start(NATTER, 3, FAST).await;
    let (n1, n2, n3) = (c.node(0).addr(), c.node(1).addr(), c.node(2).addr());
    let alice = register(n1, "alice").await;
    let bob = register(n2, "bob").await;
    let carol = register(n3, "carol").await;
    alice.contacts(n1, &[&bob]).await;
    let group = within("create", alice.api(n1).create_group("pair", &[bob.id]))
        .await
        .expect("create group")
        .conversation
        .id;
    // Direct conversations with Carol, to know when everything sent before reached her (and
    // Alice's makes Carol her contact, whom she adds rather than invites).
    let ac = within("direct", alice.api(n1).create_direct(carol.id)).await.expect("direct").id;
    let bc = within("direct", bob.api(n2).create_direct(carol.id)).await.expect("direct").id;

    let mut a = Peer::connect("alice@node-1", n1, &alice.token).await;
    let mut b = Peer::connect("bob@node-2", n2, &bob.token).await;
    let mut cc = Peer::connect("carol@node-3", n3, &carol.token).await;
    for p in [&mut a, &mut b, &mut cc] {
        p.sync(&no_cursors()).await;
    }
    assert!(cc.entries(group).is_empty(), "Carol is not in the group yet");
    for k in 0..3 {
        a.send(group, &format!("before-{k}")).await;
    }
    b.wait_seq(group, 4).await;

    // Added through node-1's REST API: the group is announced to Carol on node-3.
    let AddedMember::Member(added) =
        within("add", alice.api(n1).add_member(group, carol.id, None)).await.expect("add Carol")
    else {
        panic!("Carol is Alice's contact: added, not invited");
    };
    assert_eq!(added.seq, 5);
    cc.wait_seq(group, 5).await;
    assert_eq!(cc.seqs(group), [1, 2, 3, 4, 5], "the announcement starts at the beginning");
    assert!(matches!(cc.entries(group)[0].body, EntryBody::Created { .. }));
    assert_eq!(text(&cc.entries(group)[3]), "body of before-2");
    assert!(
        matches!(cc.entries(group)[4].body, EntryBody::MemberAdded { user, .. } if user == carol.id)
    );
    // Then live, from node-1, and from node-2 at once: node-2 may not have had the join's
    // bus message yet, but the entry it commits names the join as its membership version,
    // so node-2 reloads the member list before routing it.
    a.send(group, "after-a").await;
    cc.wait_seq(group, 6).await;
    assert_eq!(text(&cc.entries(group)[5]), "body of after-a");
    b.send(group, "after-b").await;
    cc.wait_seq(group, 7).await;
    assert_eq!(text(&cc.entries(group)[6]), "body of after-b");
    assert_eq!(cc.entries(group), &store_log(n3, &carol, group).await[..]);

    // Removed through node-1: Carol gets the removal, then nothing of the group.
    let removed =
        within("remove", alice.api(n1).remove_member(group, carol.id)).await.expect("remove Carol");
    assert_eq!(removed.seq, 8);
    cc.wait_seq(group, 8).await;
    assert!(
        matches!(cc.entries(group)[7].body, EntryBody::MemberRemoved { user, .. } if user == carol.id)
    );
    // The same the other way: node-2 routes with the removal applied, bus message or not.
    a.send(group, "gone-a").await;
    b.send(group, "gone-b").await;
    // Sent after those, from the same nodes: once Carol has these, she would have had the
    // group's entries too.
    a.wait_seq(group, 10).await;
    b.wait_seq(group, 10).await;
    a.send(ac, "barrier-a").await;
    b.send(bc, "barrier-b").await;
    cc.wait_seq(ac, 2).await;
    cc.wait_seq(bc, 2).await;
    assert_eq!(cc.seqs(group), (1..=8).collect::<Vec<_>>(), "nothing after the removal");
    let reply = cc
        .request(|req_id| ClientFrame::History {
            req_id,
            conversation: group,
            before: None,
            after: None,
            limit: None,
        })
        .await;
    assert!(
        matches!(&reply, ServerFrame::Error { error, .. } if error.code == natter_proto::ErrorCode::NotFound),
        "a removed member cannot read the group: {reply:?}"
    );
    eprintln!("membership across nodes: {:?}", started.elapsed());
}

// ---- 4. resume on another node ----

/// Bob reads up to seq k on node-2 and disconnects; Alice keeps sending on node-1 (while he
/// is away, while he reconnects to node-3 and syncs, and after). His new session gets
/// exactly k+1..=N, in order, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_another_node() {
    let started = Instant::now();
    let c = ProcessCluster::start(NATTER, 3, FAST).await;
    let (n1, n2, n3) = (c.node(0).addr(), c.node(1).addr(), c.node(2).addr());
    let alice = register(n1, "alice").await;
    let bob = register(n2, "bob").await;
    let conv = within("direct", alice.api(n1).create_direct(bob.id)).await.expect("direct").id;

    let mut a = Peer::connect("alice@node-1", n1, &alice.token).await;
    let mut b = Peer::connect("bob@node-2", n2, &bob.token).await;
    a.sync(&no_cursors()).await;
    b.sync(&no_cursors()).await;
    for i in 0..10 {
        a.send(conv, &format!("live-{i}")).await;
    }
    let k: Seq = 11;
    b.wait_seq(conv, k).await;
    assert_eq!(b.seqs(conv), (1..=k).collect::<Vec<_>>());
    b.close().await;

    // While Bob is away: more than one sync page (100).
    for i in 0..150 {
        a.send(conv, &format!("away-{i}")).await;
    }
    a.until("the acks while Bob is away", |p| p.acks.len() == 160).await;

    // While he reconnects and syncs: one at a time, each after the previous ack, so the
    // sends spread over his reconnection.
    let sender = tokio::spawn(async move {
        for i in 0..100 {
            a.send_acked(conv, &format!("during-{i}")).await;
        }
        a
    });
    let mut b = Peer::connect("bob@node-3", n3, &bob.token).await;
    b.sync(&BTreeMap::from([(conv, k)])).await;
    let mut a = sender.await.expect("sender task");
    // And after.
    for i in 0..10 {
        a.send(conv, &format!("after-{i}")).await;
    }
    let last = k + 150 + 100 + 10;
    a.until("every ack", |p| p.acks.len() == 270).await;
    b.wait_seq(conv, last).await;
    b.drain().await;
    assert_eq!(b.seqs(conv), (k + 1..=last).collect::<Vec<_>>(), "exactly what Bob missed");
    let log = store_log(n2, &bob, conv).await;
    assert_eq!(b.entries(conv), &log[k as usize..], "the store's entries");
    eprintln!("resume on another node: {:?}", started.elapsed());
}

// ---- 5. HTTP streams on other nodes ----

/// A Server-Sent Events stream (`GET /v1/events`) read incrementally.
struct Sse {
    res: reqwest::Response,
    buf: Vec<u8>,
    data: Vec<String>,
    id: Option<String>,
    events: VecDeque<(Option<String>, ServerFrame)>,
}

impl Sse {
    async fn open(addr: SocketAddr, token: &str) -> Sse {
        let req = reqwest::Client::new().get(format!("http://{addr}/v1/events")).bearer_auth(token);
        let res = within("the SSE response", req.send()).await.expect("GET /v1/events");
        assert_eq!(res.status().as_u16(), 200, "GET /v1/events");
        Sse { res, buf: Vec::new(), data: Vec::new(), id: None, events: VecDeque::new() }
    }

    /// The next event: its `id:` (if any) and its frame.
    async fn next(&mut self) -> (Option<String>, ServerFrame) {
        within("an SSE event", async {
            loop {
                if let Some(event) = self.events.pop_front() {
                    return event;
                }
                let chunk = self.res.chunk().await.expect("SSE body").expect("the stream ended");
                self.buf.extend_from_slice(&chunk);
                while let Some(at) = self.buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = self.buf.drain(..=at).collect();
                    let line = String::from_utf8(line).expect("UTF-8");
                    self.line(line.trim_end_matches(['\n', '\r']));
                }
            }
        })
        .await
    }

    /// Waits for the server to end the stream (events before the end are skipped).
    async fn ended(&mut self) {
        within("the end of the SSE stream", async {
            while let Some(_chunk) = self.res.chunk().await.expect("SSE body") {}
        })
        .await
    }

    fn line(&mut self, line: &str) {
        if line.is_empty() {
            let id = self.id.take();
            if !self.data.is_empty() {
                let data = std::mem::take(&mut self.data).join("\n");
                let frame = serde_json::from_str(&data).expect("an SSE event is a frame");
                self.events.push_back((id, frame));
            }
        } else if let Some(data) = line.strip_prefix("data:") {
            self.data.push(data.trim_start().to_owned());
        } else if let Some(id) = line.strip_prefix("id:") {
            self.id = Some(id.trim_start().to_owned());
        }
        // ":" comments are keep-alives.
    }
}

async fn poll(addr: SocketAddr, token: &str, req: &PollRequest) -> PollResponse {
    let http = reqwest::Client::new().post(format!("http://{addr}/v1/poll")).bearer_auth(token);
    let res = within("a poll", http.json(req).send()).await.expect("POST /v1/poll");
    assert_eq!(res.status().as_u16(), 200, "POST /v1/poll");
    within("the poll body", res.json()).await.expect("a poll response")
}

/// An entry committed on node-1 (over REST) reaches Bob's SSE stream on node-2 and his
/// long-poll waiting on node-3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_and_long_poll_on_other_nodes() {
    let started = Instant::now();
    let c = ProcessCluster::start(NATTER, 3, FAST).await;
    let (n1, n2, n3) = (c.node(0).addr(), c.node(1).addr(), c.node(2).addr());
    let alice = register(n1, "alice").await;
    let bob = register(n2, "bob").await;
    let conv = within("direct", alice.api(n1).create_direct(bob.id)).await.expect("direct").id;

    let mut sse = Sse::open(n2, &bob.token).await;
    let (_, ready) = sse.next().await;
    assert!(matches!(ready, ServerFrame::Ready { user_id, .. } if user_id == bob.id), "{ready:?}");
    let (id, first) = sse.next().await;
    assert!(matches!(first, ServerFrame::Entry { ref entry } if entry.seq == 1), "{first:?}");
    assert_eq!(id.as_deref(), Some(format!("{conv}:1").as_str()));

    // A new poll stream answers at once with its ready; the next poll waits on node-3.
    let cursors = BTreeMap::from([(conv, 1)]);
    let opened =
        poll(n3, &bob.token, &PollRequest { cursors: cursors.clone(), ..Default::default() }).await;
    assert!(matches!(opened.events.first(), Some(ServerFrame::Ready { .. })), "{opened:?}");
    let waiting = {
        let req = PollRequest {
            stream: Some(opened.stream),
            cursors,
            timeout_ms: Some(WAIT.as_millis() as u64),
            limit: None,
        };
        let token = bob.token.clone();
        tokio::spawn(async move { poll(n3, &token, &req).await })
    };

    let entry = NewEntry::Message {
        body: "over REST on node-1".to_owned(),
        reply_to: None,
        attachments: Vec::new(),
        mentions: Vec::new(),
    };
    let ack = within("post", alice.api(n1).post_entry(conv, "rest-1", entry))
        .await
        .expect("post an entry");
    assert_eq!(ack.seq, 2);

    let (id, frame) = sse.next().await;
    let ServerFrame::Entry { entry } = frame else { panic!("expected the entry, got {frame:?}") };
    assert_eq!(
        (entry.seq, entry.id.as_str(), text(&entry)),
        (2, ack.id.as_str(), "over REST on node-1")
    );
    assert_eq!(id.as_deref(), Some(format!("{conv}:2").as_str()), "the event id is the cursors");

    let answer = waiting.await.expect("poll task");
    let entries: Vec<&Entry> = answer
        .events
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Entry { entry } => Some(entry),
            _ => None,
        })
        .collect();
    assert_eq!(entries.len(), 1, "{answer:?}");
    assert_eq!((entries[0].seq, entries[0].id.as_str()), (2, ack.id.as_str()));
    assert_eq!(answer.cursors, BTreeMap::from([(conv, 2)]));
    eprintln!("SSE and long-poll: {:?}", started.elapsed());
}

// ---- logout across nodes ----

/// Alice logs out on node-1: her WebSocket with that token on node-2 closes with 4001 and her
/// SSE stream on node-3 ends, within a second, on the real bus (Redis); her other device's
/// session on node-2 goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_ends_the_token_s_sessions_on_every_node() {
    let c = ProcessCluster::start(NATTER, 3, FAST).await;
    let (n1, n2, n3) = (c.node(0).addr(), c.node(1).addr(), c.node(2).addr());
    let alice = register(n1, "alice").await;
    let phone = login(n2, "alice").await;
    let mut ws = WsClient::open(n2, &alice.token).await;
    let mut sse = Sse::open(n3, &alice.token).await;
    assert!(matches!(sse.next().await.1, ServerFrame::Ready { .. }));
    let mut other = WsClient::open(n2, &phone.token).await;

    let started = Instant::now();
    within("logout", alice.api(n1).logout()).await.expect("logout");
    let close = ws.closed().await.map(|f| u16::from(f.code));
    assert_eq!(close, Some(natter_proto::close::UNAUTHENTICATED));
    sse.ended().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "sessions on other nodes ended after {took:?}");

    // The token is dead everywhere; the other device's session is untouched.
    assert!(within("me", alice.api(n3).me()).await.is_err(), "the revoked token still works");
    let pong = other.request(|req_id| ClientFrame::Ping { req_id: Some(req_id) }).await;
    assert!(matches!(pong, ServerFrame::Pong { .. }), "{pong:?}");
    eprintln!("logout across nodes: sessions ended after {took:?}");
}

// ---- 6. a group crossing the large-group threshold; a node leaving ----

/// A group of 2 (threshold 2) grows to 3 while Bob's session on node-2 is synced: from then
/// on its entries go to the conversation's channel, which node-2 had no reason to watch
/// before. Bob still gets the next message live (nothing after it would fill the gap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_growing_past_the_threshold_keeps_reaching_other_nodes() {
    let args = [FAST, &["--large-group-threshold", "2"]].concat();
    let c = ProcessCluster::start(NATTER, 2, &args).await;
    let (n1, n2) = (c.node(0).addr(), c.node(1).addr());
    let alice = register(n1, "alice").await;
    let bob = register(n2, "bob").await;
    let carol = register(n1, "carol").await;
    alice.contacts(n1, &[&bob, &carol]).await;
    let group = within("create", alice.api(n1).create_group("g", &[bob.id]))
        .await
        .expect("create group")
        .conversation
        .id;
    let mut a = Peer::connect("alice@node-1", n1, &alice.token).await;
    let mut b = Peer::connect("bob@node-2", n2, &bob.token).await;
    a.sync(&no_cursors()).await;
    b.sync(&no_cursors()).await;
    a.send(group, "m1").await;
    b.wait_seq(group, 2).await;
    within("add", alice.api(n1).add_member(group, carol.id, None)).await.expect("add");
    b.wait_seq(group, 3).await;
    a.send(group, "m2").await;
    a.wait_seq(group, 4).await;
    let got = tokio::time::timeout(Duration::from_secs(8), b.wait_seq(group, 4)).await;
    assert!(got.is_ok(), "bob missed seq 4 after the group crossed the threshold");
}

/// Node-1 stops gracefully while Alice's only session is there; Bob on node-2, who watches
/// her, sees her offline (the node tells the others it left).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gracefully_stopped_node_s_users_go_offline_elsewhere() {
    let mut c = ProcessCluster::start(NATTER, 2, FAST).await;
    let (n1, n2) = (c.node(0).addr(), c.node(1).addr());
    let alice = register(n1, "alice").await;
    let bob = register(n2, "bob").await;
    within("direct", alice.api(n1).create_direct(bob.id)).await.expect("direct");
    let mut a = Peer::connect("alice@node-1", n1, &alice.token).await;
    a.sync(&no_cursors()).await;
    let mut b = Peer::connect("bob@node-2", n2, &bob.token).await;
    b.sync(&no_cursors()).await;
    let reply =
        b.request(|req_id| ClientFrame::SubscribePresence { req_id, users: vec![alice.id] }).await;
    let ServerFrame::PresenceSubscribed { users, .. } = reply else { panic!("{reply:?}") };
    assert_eq!(users[0].status, Status::Online);
    c.node_mut(0).stop_gracefully().await;
    drop(a);
    let got = tokio::time::timeout(
        Duration::from_secs(8),
        b.next_where("Alice offline", presence_of(alice.id, Status::Offline)),
    )
    .await;
    assert!(got.is_ok(), "bob still sees alice online after node-1 stopped");
}
