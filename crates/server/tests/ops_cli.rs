//! The operator's commands against the real `natter` binary: `config check` names every
//! bad key of a file at once and `config default` reads back as a clean file; `backup`
//! copies a node that is being written to, and the copy `restore` checks and restores holds
//! every message acked before the backup began, in logs contiguous from 1, with the media
//! they carry; a damaged copy is refused.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use natter_proto::{Ack, ConversationId, Entry, EntryBody, NewEntry};
use natter_testkit::{TestServer, TestUser, WsClient, assert_contiguous, poll_until, within};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use reqwest::StatusCode;

const NATTER: &str = env!("CARGO_BIN_EXE_natter");

/// `natter args…`: its exit status's success, stdout and stderr.
async fn natter<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (bool, String, String) {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(AsRef::as_ref).collect();
    let out = within("a natter command", tokio::process::Command::new(NATTER).args(args).output())
        .await
        .expect("running natter");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[tokio::test]
async fn config_check_names_every_bad_key_and_the_default_file_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        "lissten = \"127.0.0.1:1\"\n\
         log_format = \"xml\"\n\
         redis_url = \"redis://127.0.0.1:6379\"\n\
         [limits]\n\
         max_page = \"many\"\n\
         max_frame_bytes = 100\n\
         [push]\n\
         payload = 3\n",
    )
    .unwrap();
    let (ok, stdout, stderr) =
        natter(&["config", "check", "--config", broken.to_str().unwrap()]).await;
    assert!(!ok, "a broken file fails the check: {stdout}");
    for key in [
        "lissten: unknown key (did you mean listen?)",
        "limits.max_page: invalid type",
        "push.payload: invalid type",
        "log_format: must be text or json",
        "limits.max_frame_bytes: must be at least 1024",
        "limits.max_body_bytes: must leave 1 KiB of max_frame_bytes",
        "media_secret: cluster mode",
        "database_url: cluster mode",
    ] {
        assert!(stdout.lines().any(|l| l.starts_with(key)), "{key:?} in:\n{stdout}");
    }
    assert!(stderr.contains(&format!("{} problem(s)", stdout.lines().count())), "{stderr}");

    let (ok, text, stderr) = natter(&["config", "default"]).await;
    assert!(ok, "{stderr}");
    let file = dir.path().join("default.toml");
    std::fs::write(&file, &text).unwrap();
    let (ok, stdout, stderr) =
        natter(&["config", "check", "--config", file.to_str().unwrap()]).await;
    assert!(ok && stdout.contains(": ok (listen 127.0.0.1:8080"), "{stdout}{stderr}");
}

/// A path as an argument.
fn arg(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// The text of a message entry.
fn text(e: &Entry) -> Option<&str> {
    match &e.body {
        EntryBody::Message { body, .. } => Some(body),
        _ => None,
    }
}

/// A message a writer had acked, and when its batch's acks were all in.
struct Sent {
    conv: ConversationId,
    ack: Ack,
    body: String,
    at: Instant,
}

/// Sends batches of 10 messages to `conv` over one WebSocket, one batch every 40 ms (250
/// messages a second), recording each ack, until `stop`.
async fn write(
    node: &TestServer,
    user: &TestUser,
    conv: ConversationId,
    log: Arc<Mutex<Vec<Sent>>>,
    stop: Arc<AtomicBool>,
) {
    let mut ws = node.ws(user).await;
    let mut tick = tokio::time::interval(Duration::from_millis(40));
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let batch: Vec<(String, String)> = (n..n + 10)
            .map(|i| (format!("{}-{i}", user.handle), format!("{} says {i}", user.handle)))
            .collect();
        n += 10;
        send_batch(&mut ws, conv, batch, &log).await;
    }
}

/// Sends `batch` (`(client_msg_id, body)`s) pipelined and logs every ack.
async fn send_batch(
    ws: &mut WsClient,
    conv: ConversationId,
    batch: Vec<(String, String)>,
    log: &Mutex<Vec<Sent>>,
) {
    let bodies: std::collections::HashMap<String, String> = batch.iter().cloned().collect();
    let acks = ws.send_all(conv, batch).await;
    let at = Instant::now();
    let mut log = log.lock().unwrap();
    for ack in acks {
        let body = bodies[ack.client_msg_id.as_deref().expect("an ack names its key")].clone();
        log.push(Sent { conv, ack, body, at });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_writes_restores_every_message_acked_before_it() {
    let node = TestServer::binary(NATTER, &["--send-per-sec", "0", "--frames-per-sec", "0"]).await;
    let mut users = Vec::new();
    for h in ["ann", "bob", "cy", "dee"] {
        users.push(node.user(h).await);
    }
    let others: Vec<&TestUser> = users[1..].iter().collect();
    node.contacts(&users[0], &others).await;
    let team = node.create_group(&users[0], "team", &others).await;
    let pair = node.create_group(&users[0], "pair", &others[..1]).await;

    // A file carried by a message, so that the backup holds media.
    let file: Vec<u8> = (0..200_000u32).flat_map(|i| format!("line {i}\n").into_bytes()).collect();
    let (status, up) =
        node.upload(&users[0].token, file.clone(), Some("text/plain"), Some("notes.txt")).await;
    assert_eq!(status, StatusCode::CREATED, "{up}");
    let media = up["id"].as_str().expect("an upload id").to_owned();
    let entry = NewEntry::Message {
        body: "the notes".to_owned(),
        reply_to: None,
        attachments: vec![media],
        mentions: Vec::new(),
    };
    let (status, json) = node.post_entry(&users[0], team, "notes", entry).await;
    assert_eq!(status, StatusCode::CREATED, "{json}");

    // A history of 36 MB first, so that the copy takes a while.
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut filler = node.ws(&users[1]).await;
    for b in 0..30 {
        let batch: Vec<(String, String)> = (0..100)
            .map(|i| (format!("fill-{b}-{i}"), format!("{b} {i} says {}", "x".repeat(12_000))))
            .collect();
        send_batch(&mut filler, team, batch, &log).await;
    }
    filler.close().await;

    // Four writers, 1,000 messages a second together, before, during and after the backup.
    let stop = Arc::new(AtomicBool::new(false));
    let node = Arc::new(node);
    let users = Arc::new(users);
    let writers: Vec<_> = [(0, team), (2, team), (0, pair), (1, pair)]
        .into_iter()
        .map(|(user, conv)| {
            let (node, users, log, stop) = (node.clone(), users.clone(), log.clone(), stop.clone());
            tokio::spawn(async move { write(&node, &users[user], conv, log, stop).await })
        })
        .collect();
    poll_until(
        "1,000 writers' acks before the backup",
        || async { (log.lock().unwrap().len() >= 4000).then_some(()) },
        String::new,
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("backup");
    let began = Instant::now();
    let acked_before = log.lock().unwrap().len();
    let (ok, stdout, stderr) =
        natter(&["backup", arg(&dest), "--data-dir", arg(node.data_dir())]).await;
    let took = began.elapsed();
    assert!(ok, "backup: {stdout}{stderr}");
    let acked_during = log.lock().unwrap().len() - acked_before;
    // The node kept committing while it was copied (WAL: the copy's read does not block it).
    assert!(acked_during > 0, "no write was acked during the {took:?} of the backup");
    // The writers go on for a while after it.
    poll_until(
        "writes after the backup",
        || async { (log.lock().unwrap().len() >= acked_before + acked_during + 200).then_some(()) },
        String::new,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        within("a writer to stop", w).await.unwrap();
    }
    eprintln!(
        "backup took {took:?} while {acked_during} messages were acked ({:.0}/s): {stdout}",
        acked_during as f64 / took.as_secs_f64()
    );

    let (ok, stdout, stderr) = natter(&["restore", arg(&dest), "--check"]).await;
    assert!(ok && stdout.contains("is whole"), "restore --check: {stdout}{stderr}");
    // One file: no WAL beside it, before or after the check (read-only media work).
    for leftover in ["natter.db-wal", "natter.db-shm"] {
        assert!(!dest.join(leftover).exists(), "{leftover} beside the copy");
    }
    // Media kept on local disk do not restore into a node that keeps them in a bucket.
    let elsewhere = dir.path().join("elsewhere");
    let (ok, _, stderr) = natter(&[
        "restore",
        arg(&dest),
        "--data-dir",
        arg(&elsewhere),
        "--media-url",
        "s3://bucket/prefix",
    ])
    .await;
    assert!(!ok && stderr.contains("media are local"), "{stderr}");
    assert!(!elsewhere.join("natter.db").exists(), "nothing restored");
    let restored = dir.path().join("restored");
    let (ok, stdout, stderr) = natter(&["restore", arg(&dest), "--data-dir", arg(&restored)]).await;
    assert!(ok, "restore: {stdout}{stderr}");
    let (ok, _, stderr) = natter(&["restore", arg(&dest), "--data-dir", arg(&restored)]).await;
    assert!(!ok && stderr.contains("already holds a store"), "restoring over a store: {stderr}");

    // A node on the restored directory: logs contiguous from 1, holding every message acked
    // before the backup began, as it was acked.
    let copy = TestServer::start_with(|cfg| cfg.data_dir = restored.clone()).await;
    // Every writer has stopped: the log is whole.
    let sent = std::mem::take(&mut *log.lock().unwrap());
    let owed: Vec<&Sent> = sent.iter().filter(|s| s.at < began).collect();
    assert!(
        owed.len() >= 4000,
        "{} owed of {} (acked before: {acked_before})",
        owed.len(),
        sent.len()
    );
    for conv in [team, pair] {
        let entries = copy.all_entries(&users[0], conv, 500).await;
        let seqs: Vec<_> = entries.iter().map(|e| e.seq).collect();
        assert_contiguous(&seqs, 1, seqs.len() as u64).unwrap();
        for s in owed.iter().filter(|s| s.conv == conv) {
            let e = entries.get(s.ack.seq as usize - 1).unwrap_or_else(|| {
                panic!("{conv:?} seq {} acked before the backup is missing", s.ack.seq)
            });
            assert_eq!((&e.id, text(e)), (&s.ack.id, Some(s.body.as_str())), "seq {}", s.ack.seq);
        }
        // Nothing that was not acked: every message in the copy is one a writer sent.
        let acked: std::collections::HashSet<_> =
            sent.iter().map(|s| (s.conv, s.ack.seq)).collect();
        let last_owed = owed.iter().filter(|s| s.conv == conv).map(|s| s.ack.seq).max().unwrap();
        assert!(seqs.len() as u64 >= last_owed);
        for e in entries.iter().filter(|e| text(e).is_some_and(|t| t.contains(" says "))) {
            assert!(acked.contains(&(conv, e.seq)), "{conv:?} seq {} was never acked", e.seq);
        }
    }
    // The media, with the node's own signing key: a URL the restored node signs fetches it.
    let history = copy.all_entries(&users[1], team, 500).await;
    let with_file =
        history.iter().find(|e| text(e) == Some("the notes")).expect("the message with the file");
    let url = with_file.body.attachments()[0].url.clone().expect("a signed URL");
    let res = copy.fetch(&url, None).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.bytes().await.unwrap().as_ref() == file.as_slice(), "the file as uploaded");
    copy.stop().await;

    // A damaged copy is refused, naming what is damaged; so is a backup into a used place.
    let blobs = dest.join("media").join("blobs");
    let shard = std::fs::read_dir(&blobs).unwrap().next().unwrap().unwrap().path();
    let blob = std::fs::read_dir(&shard).unwrap().next().unwrap().unwrap().path();
    std::fs::write(&blob, b"not the file").unwrap();
    let (ok, _, stderr) = natter(&["restore", arg(&dest), "--check"]).await;
    assert!(!ok && stderr.contains("is damaged"), "{stderr}");
    let (ok, _, stderr) = natter(&["backup", arg(&dest), "--data-dir", arg(node.data_dir())]).await;
    assert!(!ok && stderr.contains("is not empty"), "{stderr}");
}

/// The value of the sample `series` (`name` or `name{labels}`, labels as the exporter writes
/// them) in Prometheus text; 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_list_every_series_at_start_and_count_what_happened() {
    use natter_server::metrics::{Kind, Labels, SERIES};
    let token = natter_testkit::METRICS_TOKEN;
    let node = TestServer::binary(NATTER, &["--metrics-token", token]).await;

    // At start: every series with HELP and TYPE; those without labels, or with known
    // values, at zero (gauges of the process aside).
    let text = node.metrics().await;
    for s in SERIES {
        assert!(text.contains(&format!("# HELP {} ", s.name)), "HELP of {}:\n{text}", s.name);
        let ty = format!("# TYPE {} {}\n", s.name, s.kind.name());
        assert!(text.contains(&ty), "TYPE of {}:\n{text}", s.name);
        let counted = match (s.kind, &s.labels) {
            (Kind::Counter, Labels::None) => vec![s.name.to_owned()],
            (Kind::Counter, Labels::Known(label, values)) => {
                values.iter().map(|v| format!("{}{{{label}=\"{v}\"}}", s.name)).collect()
            }
            (Kind::Histogram, Labels::None) => vec![format!("{}_count", s.name)],
            _ => Vec::new(),
        };
        for series in counted {
            assert!(text.lines().any(|l| l == format!("{series} 0")), "{series} 0 at start");
        }
    }
    assert!(text.contains("natter_build_info{version=\""), "{text}");

    // Traffic: two sessions, 5 sends over the WebSocket and 3 over REST, one refused send,
    // one resuming session.
    let ann = node.user("ann").await;
    let bob = node.user("bob").await;
    let conv = node.create_direct(&ann, &bob).await;
    let mut ann_ws = node.ws(&ann).await;
    let mut bob_ws = node.synced_ws(&bob).await;
    for i in 0..5 {
        ann_ws.send_msg(conv, &format!("w{i}"), "hello").await;
    }
    for i in 0..3 {
        node.send_rest(&ann, conv, &format!("r{i}"), "hi").await;
    }
    for _ in 0..8 {
        bob_ws.next_entry().await;
    }
    let (status, _) =
        node.post_entry(&ann, ConversationId(999_999), "x", NewEntry::text("who is there")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let mut again = node.ws(&bob).await;
    again.sync([(conv, 3)].into_iter().collect()).await;

    let entries = "/v1/conversations/{id}/entries";
    let want = [
        ("natter_sessions_opened_total{transport=\"ws\"}", 3.0),
        ("natter_resumes_total{transport=\"ws\"}", 1.0),
        ("natter_connections", 3.0),
        ("natter_send_ack_seconds_count{transport=\"ws\"}", 5.0),
        ("natter_send_ack_seconds_count{transport=\"rest\"}", 3.0),
        // The direct conversation's `created` entry and the 8 messages.
        ("natter_entries_committed_total", 9.0),
        // Bob's live session got the 8 messages.
        ("natter_commit_deliver_seconds_count", 8.0),
        ("natter_delivery_seconds_count", 8.0),
        ("natter_errors_total{transport=\"rest\",code=\"not_found\"}", 1.0),
        (
            &format!(
                "natter_http_requests_total{{route=\"{entries}\",method=\"POST\",status=\"201\"}}"
            ),
            3.0,
        ),
        (
            &format!(
                "natter_http_requests_total{{route=\"{entries}\",method=\"POST\",status=\"404\"}}"
            ),
            1.0,
        ),
        (&format!("natter_http_request_seconds_count{{route=\"{entries}\",method=\"POST\"}}"), 4.0),
        ("natter_http_requests_total{route=\"/v1/accounts\",method=\"POST\",status=\"201\"}", 2.0),
    ];
    // Deliveries are counted once flushed, which may be a moment after bob reads them.
    let text = poll_until(
        "the counts of what happened",
        || async {
            let text = node.metrics().await;
            want.iter().all(|(series, v)| sample(&text, series) == *v).then_some(text)
        },
        String::new,
    )
    .await;
    for (series, v) in want {
        assert_eq!(sample(&text, series), v, "{series}");
    }
    again.close().await;
}

/// A collector on loopback: the OTLP export requests (`POST /v1/traces`) it got, decoded.
async fn collector() -> (String, Arc<Mutex<Vec<ExportTraceServiceRequest>>>) {
    use prost::Message as _;
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf body");
                sink.lock().unwrap().push(req);
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_exported_spans_carry_the_request_and_trace_ids() {
    let (url, exported) = collector().await;
    let node = TestServer::binary(NATTER, &["--log-format", "json", "--otlp-endpoint", &url]).await;
    let ann = node.user("ann").await;
    // A live session, which the logout ends (logged, inside the logout's request).
    let _ws = node.ws(&ann).await;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let res = node
        .http
        .delete(node.url("/v1/sessions/current"))
        .bearer_auth(&ann.token)
        .header("x-request-id", "logout-4242")
        .header("traceparent", format!("00-{trace}-b7ad6b7169203331-01"))
        .send()
        .await
        .expect("logout");
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(res.headers()["x-request-id"], "logout-4242", "the caller's id is echoed");
    let logs = node.process().logs();
    let line = poll_until(
        "the logout's log line",
        || async {
            let all = logs.all();
            all.lines()
                .find(|l| l.contains("ended the sessions of a revoked token"))
                .map(str::to_owned)
        },
        || logs.tail(20),
    )
    .await;
    let json: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(json["span"]["id"], "logout-4242", "{line}");
    assert_eq!(json["span"]["route"], "/v1/sessions/current", "{line}");
    assert_eq!(json["span"]["trace_id"], trace, "the caller's trace goes on: {line}");

    // The collector gets the request's span, in the caller's trace, with its fields.
    let span = poll_until(
        "the logout's span at the collector",
        || async {
            let got = exported.lock().unwrap();
            let spans = got
                .iter()
                .flat_map(|r| &r.resource_spans)
                .flat_map(|r| &r.scope_spans)
                .flat_map(|s| &s.spans);
            spans
                .filter(|s| s.name == "request" && hex(&s.trace_id) == trace)
                .find(|s| attribute(s, "id").as_deref() == Some("logout-4242"))
                .cloned()
        },
        String::new,
    )
    .await;
    assert_eq!(attribute(&span, "route").as_deref(), Some("/v1/sessions/current"));
    assert_eq!(hex(&span.parent_span_id), "b7ad6b7169203331", "a child of the caller's span");
    let services: Vec<String> = exported
        .lock()
        .unwrap()
        .iter()
        .flat_map(|r| &r.resource_spans)
        .filter_map(|r| r.resource.as_ref())
        .flat_map(|r| &r.attributes)
        .filter(|a| a.key == "service.name")
        .filter_map(|a| any_string(a.value.as_ref()))
        .collect();
    assert!(services.iter().all(|s| s == "natter") && !services.is_empty(), "{services:?}");

    // Without an id, the node makes one up.
    let res = node.http.get(node.url("/healthz")).send().await.expect("healthz");
    let made = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(uuid_like(&made), "{made}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn any_string(value: Option<&AnyValue>) -> Option<String> {
    match value?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

/// A span attribute's string value.
fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| any_string(a.value.as_ref()))
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.bytes().filter(|b| *b == b'-').count() == 4
}
