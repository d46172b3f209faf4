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
//!
//! Pushes queued when the process is killed are sent after the restart, each once.
//!
//! Last, the test kit's stop on drop for a binary: dropping its `TestServer` kills it.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use futures_util::{SinkExt, StreamExt};
use natter_proto::{Ack, ClientFrame, ConversationId, Entry, EntryBody, ErrorBody, ServerFrame};
use natter_testkit::{TestServer, TestUser, WAIT, WsClient, poll_until, within};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The binary under test, built by cargo before these tests run.
const NATTER: &str = env!("CARGO_BIN_EXE_natter");
/// Sends one connection keeps in flight (written, not yet answered).
const WINDOW: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_sends_survive_kill_9_mid_stream() {
    const N_CONNS: usize = 4;
    const PER_CONN: usize = 300;
    const TOTAL: usize = N_CONNS * PER_CONN;
    let mut node = TestServer::binary(NATTER, &[]).await;
    let mut users = Vec::new();
    for k in 0..N_CONNS {
        users.push(node.user(&format!("sender{k}")).await);
    }
    let others: Vec<&TestUser> = users[1..].iter().collect();
    node.contacts(&users[0], &others).await;
    let conv = node.create_group(&users[0], "crash", &others).await;

    // Four connections pipeline their sends; once half of all acks are in, every sender stops
    // writing new sends (up to WINDOW each are still in flight) and the process is killed.
    let mut conns = Vec::new();
    for u in &users {
        conns.push(ws(&node, u).await);
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
    let status = node.kill().await;
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
    node.restart().await;
    let log = node.all_entries(&users[0], conv, 500).await;
    let present = check_log(&log, &users, &runs, PER_CONN);
    let n_present: usize = present.iter().map(Vec::len).sum();
    assert!(n_present >= n_acked && n_present <= n_sent);
    eprintln!("kill -9: {n_sent} sent, {n_acked} acked, {n_present} committed of {TOTAL} planned");

    // Resend everything with the same client_msg_ids: committed ones get their original ack
    // back, the rest are appended once each.
    let last_before = log.last().expect("log").seq;
    let mut retries = Vec::new();
    for (k, u) in users.iter().enumerate() {
        let conn = ws(&node, u).await;
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
    let log = node.all_entries(&users[0], conv, 500).await;
    assert_eq!(log.len(), 1 + TOTAL, "one entry per message, no duplicates");
    let present = check_log(&log, &users, &reruns, PER_CONN);
    assert!(present.iter().all(|p| p.len() == PER_CONN));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_sessions_with_1012_exits_0_and_keeps_acked_sends() {
    const N: usize = 200;
    let mut node = TestServer::binary(NATTER, &[]).await;
    let (alice, bob, conv) = node.direct_pair().await;

    // Bob is live (synced) and only listens.
    let mut listener = node.synced_ws(&bob).await;
    let bob_closed = tokio::spawn(async move {
        loop {
            match listener.read_within(WAIT).await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("timed out waiting for a frame"),
                Err(Some(code)) => return code,
                Err(None) => panic!("bob's connection ended without a close frame"),
            }
        }
    });

    let conn = ws(&node, &alice).await;
    let gate = Gate::new(N / 2);
    let sender = {
        let gate = gate.clone();
        tokio::spawn(async move { pump(conn, conv, &plan(0, N), Some(&gate)).await })
    };
    within("half of the acks", gate.reached.notified()).await;
    // A graceful stop exits 0 (`terminate` checks it).
    node.terminate().await;
    let run = within("alice's pump to end", sender).await.expect("pump task");
    assert!(run.errors.is_empty(), "errors: {:?}", run.errors);
    assert_eq!(run.close_code, Some(1012), "alice is told to reconnect");
    let bob_code = within("bob's close", bob_closed).await.expect("bob task");
    assert_eq!(bob_code, 1012, "bob is told to reconnect");
    assert!(run.n_acked() >= N / 2);

    node.restart().await;
    let log = node.all_entries(&bob, conv, 500).await;
    let users = [alice.clone()];
    let present = check_log(&log, &users, std::slice::from_ref(&run), N);
    assert!(present[0].len() >= run.n_acked());
    // The rest goes through after the restart, each message once.
    let conn = ws(&node, &alice).await;
    let rerun = pump(conn, conv, &plan(0, N), None).await;
    assert!(rerun.errors.is_empty(), "errors: {:?}", rerun.errors);
    assert_eq!(rerun.n_acked(), N);
    let log = node.all_entries(&alice, conv, 500).await;
    assert_eq!(log.len(), 1 + N);
    check_log(&log, &users, std::slice::from_ref(&rerun), N);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_binary_server_is_killed() {
    let node = TestServer::binary(NATTER, &[]).await;
    let alice = node.user("alice").await;
    let mut ws = node.ws(&alice).await;
    let addr = node.addr;
    drop(node);
    // Killed, not stopped: the connection ends with no close frame (a stop sends 1012).
    assert_eq!(ws.read_within(WAIT).await, Err(None), "the connection just ends");
    poll_until(
        "the listener to close",
        || async { TcpStream::connect(addr).await.is_err().then_some(()) },
        String::new,
    )
    .await;
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
    users: &[TestUser],
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
                attachments: Vec::new(),
                mentions: Vec::new(),
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

/// A WebSocket of `user`, after its `ready` frame, as a bare stream to split.
async fn ws(node: &TestServer, user: &TestUser) -> Ws {
    WsClient::open(node.addr, &user.token).await.into_inner()
}

/// A push gateway on loopback: every call's `registration` and body, in arrival order.
async fn push_gateway() -> (String, Arc<std::sync::Mutex<Vec<serde_json::Value>>>) {
    let calls: Arc<std::sync::Mutex<Vec<serde_json::Value>>> = Arc::default();
    let log = calls.clone();
    let app = axum::Router::new().route(
        "/push",
        axum::routing::post(move |axum::Json(call): axum::Json<serde_json::Value>| {
            let log = log.clone();
            async move { log.lock().unwrap().push(call) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/push", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_queued_at_kill_9_are_sent_after_the_restart_once() {
    let (url, calls) = push_gateway().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("natter.toml");
    // Long enough a window that the jobs are still waiting when the process dies.
    let toml = format!(
        "metrics_token = \"{}\"\n[push]\nwebhook_url = \"{url}\"\nwindow_ms = 3000\n",
        natter_testkit::METRICS_TOKEN
    );
    std::fs::write(&config, toml).unwrap();
    let mut node = TestServer::binary(NATTER, &["--config", config.to_str().unwrap()]).await;
    let [alice, bob, carol, dora] = node.users(["alice", "bob", "carol", "dora"]).await;
    let ab = node.create_direct(&alice, &bob).await;
    let ac = node.create_direct(&alice, &carol).await;
    for user in [&bob, &carol, &dora] {
        let body =
            serde_json::json!({"provider": "webhook", "token": format!("{}-phone", user.handle)});
        let (status, json) =
            node.call(reqwest::Method::POST, "/v1/me/push", Some(&user.token), Some(&body)).await;
        assert_eq!(status, reqwest::StatusCode::CREATED, "{json}");
    }
    let mut last = 0;
    for i in 0..10 {
        last = node.send_rest(&alice, ab, &format!("b{i}"), &format!("to bob {i}")).await.seq;
    }
    let to_carol = node.send_rest(&alice, ac, "c0", "to carol").await.seq;
    // Both jobs are in the store (13 candidates), none is due yet: kill.
    poll_until(
        "the pushes queued",
        || async { (node.metric("push_candidates_queued_total").await >= 11.0).then_some(()) },
        || "not yet".into(),
    )
    .await;
    assert!(calls.lock().unwrap().is_empty(), "nothing was due yet");
    let status = node.kill().await;
    assert_eq!(status.signal(), Some(9));
    node.restart().await;

    // After the restart: one notification each, with everything it covers; a barrier
    // (dora's, queued after the restart and due after both) shows none came twice.
    let ad = node.create_direct(&alice, &dora).await;
    node.send_rest(&alice, ad, "d0", "to dora").await;
    let of = |token: &str| -> Vec<serde_json::Value> {
        calls.lock().unwrap().iter().filter(|c| c["registration"] == token).cloned().collect()
    };
    poll_until(
        "dora's push",
        || async { (!of("dora-phone").is_empty()).then_some(()) },
        || format!("{:?}", calls.lock().unwrap()),
    )
    .await;
    let bob_got = of("bob-phone");
    assert_eq!(bob_got.len(), 1, "{bob_got:?}");
    assert_eq!(
        (bob_got[0]["count"].as_u64(), bob_got[0]["last_seq"].as_u64()),
        (Some(10), Some(last))
    );
    let carol_got = of("carol-phone");
    assert_eq!(carol_got.len(), 1, "{carol_got:?}");
    assert_eq!(carol_got[0]["last_seq"], to_carol);
}
