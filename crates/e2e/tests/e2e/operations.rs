//! Operations: `/healthz`, `/readyz` and `/metrics` answer, and the metrics show live
//! connections, committed entries, group commit (batches of more than one append under
//! concurrent load) and delivery latency.

use std::collections::BTreeMap;

use futures_util::future::join_all;
use natter_proto::ClientFrame;
use natter_testkit::TestServer;
use reqwest::{Method, StatusCode};

/// The value of an unlabelled sample (`name value`) in Prometheus text.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

async fn metrics(server: &TestServer) -> String {
    server.metrics().await
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let server = TestServer::start().await;
    let (status, body) = server.call::<()>(Method::GET, "/healthz", None, None).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, Some("ok")));
    let (status, body) = server.call::<()>(Method::GET, "/readyz", None, None).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, Some("ready")));

    let names: Vec<String> = (0..4).map(|i| format!("u{i}")).collect();
    let users = join_all(names.iter().map(|n| server.user(n))).await;
    let refs: Vec<_> = users[1..].iter().collect();
    server.contacts(&users[0], &refs).await;
    let conv = server.create_group(&users[0], "ops", &refs).await;
    let mut sessions = join_all(users.iter().map(|u| server.ws(u))).await;
    for ws in &mut sessions {
        ws.sync(BTreeMap::new()).await;
    }
    let before = metrics(&server).await;
    assert!(sample(&before, "natter_connections") >= 4.0, "{before}");
    let batches_before = sample(&before, "natter_commit_batch_size_count");
    let committed_before = sample(&before, "natter_entries_committed_total");

    // Every session pipelines 50 sends without waiting: the writer commits them in batches.
    const PER_SESSION: usize = 50;
    for (i, ws) in sessions.iter_mut().enumerate() {
        for n in 0..PER_SESSION {
            let req_id = ws.req_id();
            ws.send_frame(&ClientFrame::Send {
                req_id,
                conversation: conv,
                client_msg_id: format!("{i}-{n}"),
                body: format!("message {n} from {i}"),
                reply_to: None,
                attachments: Vec::new(),
                mentions: Vec::new(),
            })
            .await;
        }
    }
    let total = PER_SESSION * sessions.len();
    for ws in &mut sessions {
        let mut acks = 0;
        let mut entries = 0;
        while acks < PER_SESSION || entries < total {
            match ws.next().await {
                natter_proto::ServerFrame::Ack { .. } => acks += 1,
                natter_proto::ServerFrame::Entry { .. } => entries += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    let after = metrics(&server).await;
    let committed = sample(&after, "natter_entries_committed_total") - committed_before;
    let batches = sample(&after, "natter_commit_batch_size_count") - batches_before;
    // Other tests in this process may commit too, so only lower bounds are exact here.
    assert!(committed >= total as f64, "committed {committed} of {total}");
    assert!(batches < committed, "{total} pipelined appends took {batches} commits");
    assert!(sample(&after, "natter_delivery_seconds_count") >= (total * 4) as f64, "{after}");
    assert!(after.contains("natter_process_resident_memory_bytes"), "{after}");
    server.stop().await;
}
