//! G7 (bounded) for catch-up, in memory: while 8 users sync a 6.6 MB backlog each at once
//! (half over the WebSocket, half over REST, twice each), the server's resident memory grows
//! by less than [`GROWTH_BOUND_MIB`]. A process of its own, with the `natter` binary's
//! allocator (mimalloc returns freed memory; glibc's malloc would keep every freed argon2
//! buffer of the logins and hide any growth): `natter_process_resident_memory_bytes` is then
//! this one server and its clients.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use natter_proto::rest::{SyncRequest, SyncResponse};
use natter_proto::{ConversationId, Seq};
use natter_testkit::{TestServer, TestUser, assert_contiguous};
use reqwest::StatusCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The bound on the server's growth while the syncs run. Reading the 13 MB database fills the
/// SQLite readers' page caches once (4 × 8 MiB, the store's own cap); each sync in flight
/// then costs a few times its 256 KiB budget — the store's chunk with each text twice, the
/// entries, the JSON, the write buffer, and this process's client copy — about 4 MiB, so
/// 32 MiB for 8; the rest is the allocator's slack. Measured: 44–78 MiB of growth (the
/// baseline moves by the 19 MiB of an argon2 buffer that may or may not be returned yet).
/// Before the budget, every sync built its whole 13 MB reply (each text twice) besides its
/// entries and the client read it whole: with all 8 syncing over REST the process grew by
/// 169–179 MiB, and over the WebSocket the reply could not be delivered at all.
const GROWTH_BOUND_MIB: f64 = 96.0;
const MIB: f64 = 1024.0 * 1024.0;
/// The default `max_reply_bytes` and room for a reply's JSON around its conversations.
const BUDGET: usize = 256 * 1024 + 1024;
const BODY: usize = 16 * 1024;

/// The highest resident memory the server reported.
struct Peak(Mutex<f64>);

impl Peak {
    async fn sample(&self, server: &TestServer) {
        let rss = server.metric("process_resident_memory_bytes").await;
        let mut peak = self.0.lock().expect("peak lock");
        *peak = peak.max(rss);
    }
}

/// `POST /v1/sync`: the reply; panics if it is over the budget.
async fn rest_sync(
    server: &TestServer,
    user: &TestUser,
    cursors: &BTreeMap<ConversationId, Seq>,
) -> SyncResponse {
    let body = SyncRequest { cursors: cursors.clone(), limit: None };
    let req = server.http.post(server.url("/v1/sync")).bearer_auth(&user.token).json(&body);
    let res = req.send().await.expect("sync");
    assert_eq!(res.status(), StatusCode::OK);
    let bytes = res.bytes().await.expect("sync body");
    assert!(bytes.len() <= BUDGET, "a REST reply of {} bytes", bytes.len());
    serde_json::from_slice(&bytes).expect("a sync response")
}

/// Syncs `user` from the start of `groups` until a reply has no `more`, sampling the
/// server's memory after every reply; returns the seqs each group brought.
async fn sync_all(
    server: &TestServer,
    user: &TestUser,
    groups: &[ConversationId],
    websocket: bool,
    peak: &Peak,
) -> BTreeMap<ConversationId, Vec<Seq>> {
    let mut cursors: BTreeMap<_, _> = groups.iter().map(|&g| (g, 0)).collect();
    let mut got: BTreeMap<ConversationId, Vec<Seq>> = BTreeMap::new();
    let mut ws = if websocket { Some(server.ws(user).await) } else { None };
    loop {
        let (convs, more) = match &mut ws {
            Some(ws) => {
                let (convs, more, size) = ws.sync_page(cursors.clone()).await;
                assert!(size <= BUDGET, "a reply of {size} bytes");
                (convs, more)
            }
            None => {
                let reply = rest_sync(server, user, &cursors).await;
                (reply.conversations, reply.more)
            }
        };
        peak.sample(server).await;
        for item in convs {
            let conv = item.conversation.id;
            if let Some(last) = item.entries.last() {
                cursors.insert(conv, last.seq);
            }
            got.entry(conv).or_default().extend(item.entries.iter().map(|e| e.seq));
        }
        if !more {
            break;
        }
    }
    if let Some(ws) = ws {
        ws.close().await;
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_while_several_large_syncs_run() {
    let server = Arc::new(TestServer::start().await);
    let alice = server.user("alice").await;
    let mut users = Vec::new();
    for i in 0..8 {
        users.push(server.user(&format!("reader{i}")).await);
    }
    let members: Vec<&TestUser> = users.iter().collect();
    // Contacts first, so that the readers are added, not invited.
    server.contacts(&alice, &members).await;
    // Two groups of 200 messages of 16 KiB each (seqs 2..=201), as in the report.
    let mut a = server.ws(&alice).await;
    let mut groups = Vec::new();
    for name in ["one", "two"] {
        let g = server.create_group(&alice, name, &members).await;
        let messages = (0..200).map(|i| {
            let mut body = format!("{name}-{i:05} ");
            body.extend(std::iter::repeat_n('x', BODY - body.len()));
            (format!("{name}-{i}"), body)
        });
        a.send_all(g, messages).await;
        groups.push(g);
    }
    a.close().await;
    let baseline = server.metric("process_resident_memory_bytes").await;

    let peak = Arc::new(Peak(Mutex::new(baseline)));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, user) in users.into_iter().enumerate() {
        let (server, peak, groups) = (server.clone(), peak.clone(), groups.clone());
        tasks.spawn(async move {
            for _ in 0..2 {
                let got = sync_all(&server, &user, &groups, i % 2 == 0, &peak).await;
                for g in &groups {
                    assert_contiguous(&got[g], 1, 201).expect("a complete sync");
                }
            }
        });
    }
    while let Some(res) = tasks.join_next().await {
        res.expect("a sync task");
    }
    let peak = *peak.0.lock().expect("peak lock");
    let growth = (peak - baseline) / MIB;
    println!(
        "resident memory: {:.1} MiB before the syncs, peak {:.1} MiB",
        baseline / MIB,
        peak / MIB
    );
    assert!(growth < GROWTH_BOUND_MIB, "grew by {growth:.1} MiB (bound {GROWTH_BOUND_MIB} MiB)");
    Arc::into_inner(server).expect("the tasks are done").stop().await;
}
