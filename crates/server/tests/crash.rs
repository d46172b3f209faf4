//! G2 store first, against the real `natter` binary as a child process: an acked send
//! survives `kill -9` of the process in the middle of a pipelined stream of sends from
//! several connections, and a graceful stop (SIGTERM) tells connected clients to reconnect
//! (close 1012), exits 0 and keeps every acked entry.
//!
//! After each restart on the same data directory the log is checked entry by entry: every
//! ack is in it with its seq, id, timestamp and body; the log is contiguous from 1 with no
//! `(sender, client_msg_id)` twice; each sender's messages are a prefix of what it sent, in
//! the order it sent them (G1); nothing unsent is there; and resending everything with the
//! same `client_msg_id`s (G4) answers the committed ones with their original acks and adds
//! each missing one exactly once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use natter_proto::rest::{CreateConversation, Credentials, EntryPage, Session, User};
use natter_proto::{
    Ack, ClientFrame, ConversationId, ConversationSummary, Entry, EntryBody, ErrorBody,
    ServerFrame, UserId,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::{Notify, Semaphore};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single step may take before the test fails.
const WAIT: Duration = Duration::from_secs(20);
const PASSWORD: &str = "correct horse battery";
/// Sends one connection keeps in flight (written, not yet answered).
const WINDOW: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_sends_survive_kill_9_mid_stream() {
    const N_CONNS: usize = 4;
    const PER_CONN: usize = 300;
    const TOTAL: usize = N_CONNS * PER_CONN;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut node = Node::spawn(dir.path()).await;
    let api = Api::new(node.addr);
    let mut users = Vec::new();
    for k in 0..N_CONNS {
        users.push(api.user(&format!("sender{k}")).await);
    }
    let conv = api.create_group(&users[0], "crash", &users[1..]).await;

    // Four connections pipeline their sends; once half of all acks are in, every sender stops
    // writing new sends (up to WINDOW each are still in flight) and the process is killed.
    let mut conns = Vec::new();
    for u in &users {
        conns.push(ws(node.addr, &u.token).await);
    }
    let gate = Gate::new(TOTAL / 2);
    let pumps: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(k, conn)| {
            let gate = gate.clone();
            tokio::spawn(async move { pump(conn, conv, &plan(k, PER_CONN), Some(&gate)).await })
        })
        .collect();
    within("half of the acks", gate.reached.notified()).await;
    let status = node.kill9().await;
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status:?}");
    let mut runs = Vec::new();
    for p in pumps {
        runs.push(within("a pump to end", p).await.expect("pump task"));
    }
    let n_acked: usize = runs.iter().map(|r| r.n_acked()).sum();
    let n_sent: usize = runs.iter().map(|r| r.sent).sum();
    assert!(
        n_acked >= TOTAL / 2 && n_sent <= TOTAL / 2 + N_CONNS * WINDOW,
        "the kill came mid-stream: {n_acked} acked, {n_sent} sent of {TOTAL}"
    );
    for (k, r) in runs.iter().enumerate() {
        assert!(r.errors.is_empty(), "conn {k} got errors: {:?}", r.errors);
    }

    // Restart on the same data: every ack is there, and nothing else is wrong.
    let node = Node::spawn(dir.path()).await;
    let api = Api::new(node.addr);
    let log = api.all_entries(&users[0], conv).await;
    let present = check_log(&log, &users, &runs, PER_CONN);
    let n_present: usize = present.iter().map(Vec::len).sum();
    assert!(n_present >= n_acked && n_present <= n_sent);
    eprintln!("kill -9: {n_sent} sent, {n_acked} acked, {n_present} committed of {TOTAL} planned");

    // Resend everything with the same client_msg_ids: committed ones get their original ack
    // back, the rest are appended once each.
    let last_before = log.last().expect("log").seq;
    let mut retries = Vec::new();
    for (k, u) in users.iter().enumerate() {
        let conn = ws(node.addr, &u.token).await;
        retries.push(tokio::spawn(async move { pump(conn, conv, &plan(k, PER_CONN), None).await }));
    }
    let mut reruns = Vec::new();
    for r in retries {
        reruns.push(within("a resend pump", r).await.expect("pump task"));
    }
    for (k, run) in reruns.iter().enumerate() {
        assert!(run.errors.is_empty(), "conn {k} resend errors: {:?}", run.errors);
        assert_eq!(run.n_acked(), PER_CONN, "conn {k}: every resend acked");
        for (i, ack) in run.acks.iter().enumerate() {
            let ack = ack.as_ref().expect("acked");
            match present[k].get(i) {
                Some(e) => assert_eq!(
                    (ack.seq, &ack.id, ack.ts),
                    (e.seq, &e.id, e.ts),
                    "conn {k} message {i}: a resend returns the original ack"
                ),
                None => assert!(ack.seq > last_before, "conn {k} message {i}: new entry"),
            }
        }
    }
    let log = api.all_entries(&users[0], conv).await;
    assert_eq!(log.len(), 1 + TOTAL, "one entry per message, no duplicates");
    let present = check_log(&log, &users, &reruns, PER_CONN);
    assert!(present.iter().all(|p| p.len() == PER_CONN));
    node.stop_gracefully().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_sessions_with_1012_exits_0_and_keeps_acked_sends() {
    const N: usize = 200;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut node = Node::spawn(dir.path()).await;
    let api = Api::new(node.addr);
    let alice = api.user("alice").await;
    let bob = api.user("bob").await;
    let conv = api.create_direct(&alice, &bob).await;

    // Bob is live (synced) and only listens.
    let mut listener = ws(node.addr, &bob.token).await;
    let sync = ClientFrame::Sync { req_id: 1, cursors: BTreeMap::new(), limit: None };
    send_frame(&mut listener, &sync).await;
    within("bob's sync reply", async {
        loop {
            match read_frame(&mut listener).await {
                Some(Ok(ServerFrame::Synced { req_id: 1, .. })) => return,
                Some(Ok(_)) => continue,
                other => panic!("expected synced, got {other:?}"),
            }
        }
    })
    .await;
    let bob_closed = tokio::spawn(async move {
        loop {
            match read_frame(&mut listener).await {
                Some(Ok(_)) => continue,
                Some(Err(code)) => return code,
                None => panic!("bob's connection ended without a close frame"),
            }
        }
    });

    let conn = ws(node.addr, &alice.token).await;
    let gate = Gate::new(N / 2);
    let sender = {
        let gate = gate.clone();
        tokio::spawn(async move { pump(conn, conv, &plan(0, N), Some(&gate)).await })
    };
    within("half of the acks", gate.reached.notified()).await;
    node.sigterm();
    let status =
        within("the process to exit", node.child.wait()).await.expect("wait for the child");
    assert!(status.success(), "a graceful stop exits 0: {status:?}\n{}", node.logs());
    let run = within("alice's pump to end", sender).await.expect("pump task");
    assert!(run.errors.is_empty(), "errors: {:?}", run.errors);
    assert_eq!(run.close_code, Some(1012), "alice is told to reconnect");
    let bob_code = within("bob's close", bob_closed).await.expect("bob task");
    assert_eq!(bob_code, 1012, "bob is told to reconnect");
    assert!(run.n_acked() >= N / 2);

    let node = Node::spawn(dir.path()).await;
    let api = Api::new(node.addr);
    let log = api.all_entries(&bob, conv).await;
    let users = [alice.clone()];
    let present = check_log(&log, &users, std::slice::from_ref(&run), N);
    assert!(present[0].len() >= run.n_acked());
    // The rest goes through after the restart, each message once.
    let conn = ws(node.addr, &alice.token).await;
    let rerun = pump(conn, conv, &plan(0, N), None).await;
    assert!(rerun.errors.is_empty(), "errors: {:?}", rerun.errors);
    assert_eq!(rerun.n_acked(), N);
    let log = api.all_entries(&alice, conv).await;
    assert_eq!(log.len(), 1 + N);
    check_log(&log, &users, std::slice::from_ref(&rerun), N);
    node.stop_gracefully().await;
}

// ---- checks ----

/// The client_msg_id and body of connection `k`'s message `i`.
fn plan(k: usize, n: usize) -> Vec<(String, String)> {
    (0..n).map(|i| (format!("c{k}-{i}"), format!("message {i} from connection {k}"))).collect()
}

/// Checks a log read after a restart against what each connection (`users[k]`, `runs[k]`)
/// sent and was acked. Returns, per connection, its committed messages in send order.
fn check_log(
    log: &[Entry],
    users: &[Account],
    runs: &[PumpRun],
    per_conn: usize,
) -> Vec<Vec<Entry>> {
    let seqs: Vec<u64> = log.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=log.len() as u64).collect::<Vec<_>>(), "the log is contiguous from 1");
    assert!(matches!(log[0].body, EntryBody::Created { .. }));
    let mut found: Vec<BTreeMap<usize, Entry>> = vec![BTreeMap::new(); users.len()];
    for e in &log[1..] {
        let cmid = e.client_msg_id.as_deref().expect("messages carry client_msg_id");
        let (k, i) = cmid
            .strip_prefix('c')
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(k, i)| Some((k.parse::<usize>().ok()?, i.parse::<usize>().ok()?)))
            .unwrap_or_else(|| panic!("unexpected client_msg_id {cmid:?} at seq {}", e.seq));
        assert!(k < users.len() && i < per_conn, "unknown message {cmid}");
        assert_eq!(e.sender, users[k].id, "{cmid} has its sender");
        let (_, body) = &plan(k, per_conn)[i];
        assert!(
            matches!(&e.body, EntryBody::Message { body: b, .. } if b == body),
            "{cmid} has its body: {:?}",
            e.body
        );
        assert!(i < runs[k].sent, "{cmid} was never sent, yet it is in the log");
        let dup = found[k].insert(i, e.clone());
        assert!(dup.is_none(), "{cmid} is in the log twice");
    }
    let mut present = Vec::new();
    for (k, run) in runs.iter().enumerate() {
        let entries: Vec<Entry> = found[k].values().cloned().collect();
        // Appends commit in the order they were sent, so a crash leaves a prefix.
        let idx: Vec<usize> = found[k].keys().copied().collect();
        assert_eq!(
            idx,
            (0..idx.len()).collect::<Vec<_>>(),
            "connection {k}'s committed messages are a prefix of what it sent"
        );
        assert!(
            entries.windows(2).all(|w| w[0].seq < w[1].seq),
            "connection {k}'s messages are in the order it sent them"
        );
        for (i, ack) in run.acks.iter().enumerate() {
            let Some(ack) = ack else { continue };
            let e = found[k]
                .get(&i)
                .unwrap_or_else(|| panic!("acked message c{k}-{i} (seq {}) was lost", ack.seq));
            assert_eq!(
                (e.seq, &e.id, e.ts, e.conversation),
                (ack.seq, &ack.id, ack.ts, ack.conversation),
                "c{k}-{i} is where its ack said"
            );
            assert_eq!(ack.client_msg_id.as_deref(), Some(plan(k, per_conn)[i].0.as_str()));
        }
        present.push(entries);
    }
    present
}

// ---- the pipelining client ----

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Stops every pump once `target` acks have arrived in total, and tells the test.
#[derive(Clone)]
struct Gate {
    target: usize,
    acked: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    reached: Arc<Notify>,
}

impl Gate {
    fn new(target: usize) -> Gate {
        Gate {
            target,
            acked: Arc::new(AtomicUsize::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            reached: Arc::new(Notify::new()),
        }
    }

    fn on_ack(&self) {
        if self.acked.fetch_add(1, Ordering::SeqCst) + 1 == self.target {
            self.stop.store(true, Ordering::SeqCst);
            // `notify_one` keeps a permit if the test is not waiting yet.
            self.reached.notify_one();
        }
    }
}

/// What one connection sent and heard.
#[derive(Debug)]
struct PumpRun {
    /// Sends written to the socket (message `i` has `req_id` `i + 1`).
    sent: usize,
    acks: Vec<Option<Ack>>,
    errors: Vec<(usize, ErrorBody)>,
    /// The server's close code, if it closed with one.
    close_code: Option<u16>,
}

impl PumpRun {
    fn n_acked(&self) -> usize {
        self.acks.iter().filter(|a| a.is_some()).count()
    }
}

/// Sends `msgs` in order with up to WINDOW unanswered, recording every ack, until all are
/// answered or the connection ends. With a gate, stops writing once the gate is reached.
async fn pump(
    ws: Ws,
    conv: ConversationId,
    msgs: &[(String, String)],
    gate: Option<&Gate>,
) -> PumpRun {
    let (mut sink, mut stream) = ws.split();
    let window = Semaphore::new(WINDOW);
    let n = msgs.len();
    let sender = async {
        let mut sent = 0;
        for (i, (cmid, body)) in msgs.iter().enumerate() {
            let Ok(permit) = window.acquire().await else {
                break;
            };
            permit.forget();
            if gate.is_some_and(|g| g.stop.load(Ordering::SeqCst)) {
                break;
            }
            let frame = ClientFrame::Send {
                req_id: i as u64 + 1,
                conversation: conv,
                client_msg_id: cmid.clone(),
                body: body.clone(),
                reply_to: None,
            };
            let text = serde_json::to_string(&frame).expect("frame serializes");
            if sink.send(Message::Text(text.into())).await.is_err() {
                break;
            }
            sent += 1;
        }
        sent
    };
    let reader = async {
        let mut acks: Vec<Option<Ack>> = vec![None; n];
        let mut errors = Vec::new();
        let mut answered = 0;
        let mut close_code = None;
        while answered < n {
            let (req_id, ack) = match read_frame(&mut stream).await {
                Some(Ok(ServerFrame::Ack { req_id, ack })) => (req_id, Some(ack)),
                Some(Ok(ServerFrame::Error { req_id: Some(req_id), error })) => {
                    errors.push((req_id as usize - 1, error));
                    (req_id, None)
                }
                Some(Ok(ServerFrame::Error { req_id: None, error })) => {
                    panic!("error without req_id: {error:?}")
                }
                Some(Ok(_)) => continue,
                Some(Err(code)) => {
                    close_code = Some(code);
                    break;
                }
                None => break,
            };
            let i = req_id as usize - 1;
            assert!(i < n, "reply to an unknown req_id {req_id}");
            if let Some(ack) = ack {
                assert!(acks[i].is_none(), "two replies to req_id {req_id}");
                assert_eq!(ack.client_msg_id.as_deref(), Some(msgs[i].0.as_str()));
                acks[i] = Some(ack);
                if let Some(g) = gate {
                    g.on_ack();
                }
            }
            answered += 1;
            window.add_permits(1);
        }
        // Wake a sender waiting for room: nothing more will be answered.
        window.close();
        (acks, errors, close_code)
    };
    let (sent, (acks, errors, close_code)) = tokio::join!(sender, reader);
    PumpRun { sent, acks, errors, close_code }
}

/// The next Natter frame: `Some(Ok)`, `Some(Err(close code))` on a close frame with a code,
/// `None` when the connection ends otherwise.
async fn read_frame<S>(stream: &mut S) -> Option<Result<ServerFrame, u16>>
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match within("a frame", stream.next()).await {
            Some(Ok(Message::Text(text))) => {
                let frame = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("unparsable frame ({e}): {text}"));
                return Some(Ok(frame));
            }
            Some(Ok(Message::Close(Some(frame)))) => return Some(Err(u16::from(frame.code))),
            Some(Ok(Message::Close(None))) | Some(Err(_)) | None => return None,
            Some(Ok(_)) => continue,
        }
    }
}

async fn send_frame(ws: &mut Ws, frame: &ClientFrame) {
    let text = serde_json::to_string(frame).expect("frame serializes");
    ws.send(Message::Text(text.into())).await.expect("ws send");
}

/// A WebSocket authenticated by header, after its `ready` frame.
async fn ws(addr: SocketAddr, token: &str) -> Ws {
    let mut req = format!("ws://{addr}/v1/ws").into_client_request().expect("ws request");
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
    let (mut ws, _) =
        within("ws connect", tokio_tungstenite::connect_async(req)).await.expect("ws connects");
    match read_frame(&mut ws).await {
        Some(Ok(ServerFrame::Ready { .. })) => ws,
        other => panic!("expected ready, got {other:?}"),
    }
}

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

// ---- the child process ----

/// A `natter serve` child process on `127.0.0.1:0`.
struct Node {
    child: Child,
    addr: SocketAddr,
    /// Everything it printed after the listening line (shown when something goes wrong).
    logs: Arc<Mutex<Vec<String>>>,
}

impl Node {
    async fn spawn(data_dir: &Path) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_natter"))
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("NATTER_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn natter");
        let logs = Arc::new(Mutex::new(Vec::new()));
        // Both pipes are drained for the child's whole life, so that it never blocks on a
        // full pipe while logging.
        drain(child.stderr.take().expect("stderr"), logs.clone());
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let addr = within("the listening line", async {
            loop {
                let line = stdout.next_line().await.expect("read stdout");
                let Some(line) = line else {
                    panic!(
                        "natter exited before listening:\n{}",
                        logs.lock().expect("logs").join("\n")
                    );
                };
                if let Some(rest) = line.strip_prefix("natter listening on http://") {
                    let addr = rest.split_whitespace().next().expect("an address");
                    return addr.parse::<SocketAddr>().expect("a socket address");
                }
                logs.lock().expect("logs").push(line);
            }
        })
        .await;
        drain(stdout.into_inner(), logs.clone());
        Node { child, addr, logs }
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("the child is running")
    }

    /// SIGKILL, then reap.
    async fn kill9(&mut self) -> ExitStatus {
        self.child.start_kill().expect("SIGKILL");
        within("the killed process to exit", self.child.wait()).await.expect("wait for the child")
    }

    fn sigterm(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    async fn stop_gracefully(mut self) {
        self.sigterm();
        let status =
            within("the process to exit", self.child.wait()).await.expect("wait for the child");
        assert!(status.success(), "{status:?}\n{}", self.logs());
    }

    fn logs(&self) -> String {
        self.logs.lock().expect("logs").join("\n")
    }
}

fn drain(pipe: impl AsyncRead + Unpin + Send + 'static, logs: Arc<Mutex<Vec<String>>>) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            logs.lock().expect("logs").push(line);
        }
    });
}

// ---- REST ----

#[derive(Debug, Clone)]
struct Account {
    id: UserId,
    token: String,
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(addr: SocketAddr) -> Api {
        Api { base: format!("http://{addr}"), http: reqwest::Client::new() }
    }

    async fn post<B: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        token: Option<&str>,
        body: &B,
    ) -> R {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let res = within(path, req.send()).await.expect("HTTP request");
        let status = res.status();
        let text = res.text().await.expect("HTTP body");
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
    }

    async fn user(&self, handle: &str) -> Account {
        let creds =
            Credentials { handle: handle.to_owned(), password: PASSWORD.to_owned(), device: None };
        let user: User = self.post("/v1/accounts", None, &creds).await;
        let session: Session = self.post("/v1/sessions", None, &creds).await;
        assert_eq!(session.user_id, user.user_id);
        Account { id: user.user_id, token: session.token }
    }

    async fn create_group(
        &self,
        owner: &Account,
        title: &str,
        members: &[Account],
    ) -> ConversationId {
        let body = CreateConversation::Group {
            title: title.to_owned(),
            members: members.iter().map(|m| m.id).collect(),
        };
        let sum: ConversationSummary =
            self.post("/v1/conversations", Some(&owner.token), &body).await;
        sum.id
    }

    async fn create_direct(&self, a: &Account, b: &Account) -> ConversationId {
        let body = CreateConversation::Direct { peer: b.id };
        let sum: ConversationSummary = self.post("/v1/conversations", Some(&a.token), &body).await;
        sum.id
    }

    /// The whole log, oldest first, through history pages.
    async fn all_entries(&self, user: &Account, conv: ConversationId) -> Vec<Entry> {
        let mut out: Vec<Entry> = Vec::new();
        loop {
            let after = out.last().map_or(0, |e| e.seq);
            let url =
                format!("{}/v1/conversations/{conv}/entries?after={after}&limit=500", self.base);
            let req = self.http.get(url).bearer_auth(&user.token);
            let res = within("history", req.send()).await.expect("HTTP request");
            assert!(res.status().is_success(), "history: {}", res.status());
            let page: EntryPage = res.json().await.expect("entry page");
            assert_eq!(page.conversation, conv);
            out.extend(page.entries);
            if !page.has_more {
                return out;
            }
        }
    }
}
