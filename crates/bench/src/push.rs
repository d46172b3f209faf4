//! The `push` scenario (issue 14's benchmark): how many pushes per second the server's
//! dispatcher sends and how long after a message's commit each one arrives, with message
//! delivery measured in the same run.
//!
//! The bench plays the app's push gateway itself (the server's `webhook` provider): an
//! HTTP/1.1 server on `--gateway-listen` that answers every POST with 200 and notes when it
//! arrived. Each group has a sender and an online reader (WebSockets, as in `group`) and
//! `--offline` members who registered a `webhook` push (`POST /v1/me/push`, a token unique
//! in the run) and never connect: every message is owed to them as a push. The senders' ack
//! times (stage one: committed) give each push's latency: arrival − ack of the message it
//! ends with (`last_seq`). At the end every offline member must have had a push covering its
//! conversation's last acked message, no push may come twice, and no message may be in two
//! pushes; misses are violations like the other scenarios' checks.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use natter_proto::{ConversationId, Seq};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::Common;
use crate::api::Api;
use crate::conn::Plan;
use crate::run::{Run, Verdict};
use crate::scenarios::{
    accounts, check_fd_limit, note, options, output, round_complete, round_rows, run_id,
    scrape_sum, wait_synced,
};
use crate::stats::{Latency, Summary, now_ns};

#[derive(Args, Debug)]
pub(crate) struct PushArgs {
    /// Groups, each of a sender, an online reader and `--offline` members.
    #[arg(long, default_value_t = 200)]
    groups: usize,
    /// Members per group who registered a `webhook` push and never connect.
    #[arg(long, default_value_t = 1)]
    offline: usize,
    /// Offered rate, messages per second over all senders (one per group).
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// Where the bench's push gateway listens. Start the server with `[push] webhook_url =
    /// "http://ADDR/push"` (any path) pointing here.
    #[arg(long, default_value = "127.0.0.1:18099")]
    gateway_listen: SocketAddr,
    /// How long the gateway waits before answering each push (a real gateway's round trip;
    /// 0: at once).
    #[arg(long, default_value_t = 0)]
    gateway_delay_ms: u64,
    /// The server's `push.window_ms`, as configured there (the bench cannot read it): it is
    /// reported, and the steady part of the run starts this long (and 1 s) after sending does.
    #[arg(long, default_value_t = 3000)]
    window_ms: u64,
    /// Longest wait, once the readers have everything, for every offline member's push
    /// covering its conversation's last message.
    #[arg(long, default_value_t = 30)]
    push_drain_secs: u64,
}

/// The server's push counters reported as differences over the run (needs
/// `NATTER_METRICS_TOKEN`).
const PUSH_METRICS: [&str; 5] = [
    "natter_pushes_sent_total",
    "natter_push_candidates_queued_total",
    "natter_push_retries_total",
    "natter_push_offers_dropped_total",
    "natter_push_tokens_dropped_total",
];

/// # `push`
pub(crate) async fn push(common: &Common, args: PushArgs) -> anyhow::Result<bool> {
    if args.groups == 0 || args.offline == 0 || args.rate <= 0.0 {
        bail!("need --groups ≥ 1, --offline ≥ 1 and --rate > 0");
    }
    let per_group = 2 + args.offline;
    let n_conns = 2 * args.groups;
    check_fd_limit(n_conns);
    let run_id = run_id(common);
    let api = Api::new(&common.servers[0])?;
    // Fail fast, before hundreds of registrations: the gateway's port must be free and the
    // server must push through `webhook`.
    let gw =
        Gateway::start(args.gateway_listen, Duration::from_millis(args.gateway_delay_ms)).await?;
    let probe = accounts(&api, common, &run_id, "pq", 1).await?;
    let providers = api.push_providers(&probe[0].token).await?;
    if !providers.iter().any(|p| p == "webhook") {
        bail!(
            "the server pushes through {providers:?}, not `webhook`: start it with a config \
             file holding `[push] webhook_url = \"http://{}/push\"`",
            args.gateway_listen
        );
    }

    let users = accounts(&api, common, &run_id, "p", args.groups * per_group).await?;
    let convs: Vec<ConversationId> = Api::each(0..args.groups, common.setup_concurrency, |g| {
        let members = &users[g * per_group..(g + 1) * per_group];
        let title = format!("{run_id} push {g}");
        let api = api.clone();
        async move { api.group(&members[0], &title, &members[1..]).await }
    })
    .await
    .context("creating groups")?;
    // A registration token unique in the run, and whose conversation it is.
    let owners: HashMap<String, ConversationId> = (0..args.groups)
        .flat_map(|g| (0..args.offline).map(move |k| (g, k)))
        .map(|(g, k)| (format!("{run_id}-{g}-{k}"), convs[g]))
        .collect();
    let t = Instant::now();
    Api::each(0..args.groups * args.offline, common.setup_concurrency * 4, |i| {
        let (g, k) = (i / args.offline, i % args.offline);
        let user = &users[g * per_group + 2 + k];
        let push_token = format!("{run_id}-{g}-{k}");
        let api = api.clone();
        async move { api.register_push(&user.token, "webhook", &push_token).await }
    })
    .await
    .context("registering pushes")?;
    note(format!("{} push registrations in {:.1} s", owners.len(), t.elapsed().as_secs_f64()));

    // Connection 2g sends to group g, 2g + 1 reads it; the offline members never connect.
    let plans = (0..n_conns)
        .map(|i| {
            let (g, sender) = (i / 2, i % 2 == 0);
            let user = &users[g * per_group + i % 2];
            Plan {
                conn: i as u32,
                user: user.user,
                token: Arc::from(user.token.as_str()),
                server: i,
                convs: vec![convs[g]],
                send_to: if sender { vec![convs[g]] } else { Vec::new() },
                slot: g as f64 / args.groups as f64,
                sync: true,
                drops: false,
            }
        })
        .collect();
    let mut opts = options(common, 100);
    opts.record_acks = true;
    let mut run = Run::start(&opts, plans, &convs);
    wait_synced(&mut run).await?;
    let metrics_on = std::env::var_os("NATTER_METRICS_TOKEN").is_some();
    let before = if metrics_on { scrape_sum(&common.servers).await } else { HashMap::new() };

    note(format!(
        "sending {:.0} msg/s for {:.1} s to {} groups ({} offline members each)",
        args.rate, args.secs, args.groups, args.offline
    ));
    // `Run::begin_round` starts the schedule 200 ms after it is called.
    let send_start_ns = now_ns() + 200_000_000;
    // Wall-clock too, for matching samples taken outside (scripts/bench-push.sh: CPU).
    let send_start_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64 + 200);
    let send_end_ns = send_start_ns + (args.secs * 1e9) as u64;
    let settle = Duration::from_secs(common.drain_secs);
    let r = run.round(1, args.rate, args.secs, args.groups, settle).await;

    // The readers have everything acked: now wait for the pushes owed.
    let targets = run.acked_targets();
    let t = Instant::now();
    let drain = Duration::from_secs(args.push_drain_secs);
    while !gw.covered(&owners, &targets) && t.elapsed() < drain {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let push_wait_secs = t.elapsed().as_secs_f64();
    // A little longer, for a late duplicate to show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = if metrics_on { scrape_sum(&common.servers).await } else { HashMap::new() };
    let mut v = run.finish().await;
    let (arrivals, unreadable) = gw.stop();

    let acked_at: HashMap<(ConversationId, Seq), u64> =
        v.acked_at.iter().map(|(c, s, at)| ((*c, *s), *at)).collect();
    let window = Window {
        send_start_ns,
        send_end_ns,
        steady_from_ns: send_start_ns + args.window_ms * 1_000_000 + 1_000_000_000,
    };
    let rep = analyse(&arrivals, &owners, &acked_at, &targets, &window);
    add_violations(&mut v, &rep, unreadable);

    let mut rows = vec![
        ("servers".into(), common.servers.join(", ")),
        (
            "groups × members".into(),
            format!(
                "{} × (sender, online reader, {} offline with a webhook push)",
                args.groups, args.offline
            ),
        ),
        (
            "push gateway".into(),
            format!(
                "http://{} (answers after {} ms); server push.window_ms {} (as told)",
                args.gateway_listen, args.gateway_delay_ms, args.window_ms
            ),
        ),
    ];
    rows.extend(round_rows(&r));
    rows.extend(push_rows(&rep, push_wait_secs, owners.len()));
    if metrics_on {
        let delta = |name: &str| counter(&after, name) - counter(&before, name);
        let cells: Vec<String> = PUSH_METRICS
            .iter()
            .map(|m| format!("{} {}", m.trim_start_matches("natter_"), delta(m)))
            .collect();
        rows.push(("server counters (during the run)".into(), cells.join(", ")));
    }
    let metrics: HashMap<&str, f64> = PUSH_METRICS
        .iter()
        .filter(|_| metrics_on)
        .map(|m| (*m, counter(&after, m) - counter(&before, m)))
        .collect();
    let obj = json!({
        "scenario": "push", "servers": common.servers, "groups": args.groups,
        "offline": args.offline, "rate": args.rate, "secs": args.secs,
        "window_ms": args.window_ms, "gateway_delay_ms": args.gateway_delay_ms,
        "connections": n_conns, "registrations": owners.len(),
        "send_start_unix_ms": send_start_unix_ms, "round": r,
        "push": rep, "push_wait_secs": push_wait_secs, "unreadable": unreadable,
        "server_metrics": metrics,
    });
    let title = format!(
        "natter-bench push: {} groups, {} offline each, {:.0} msg/s, window {} ms",
        args.groups, args.offline, args.rate, args.window_ms
    );
    Ok(output(common, &title, rows, obj, &v, round_complete(&r)))
}

/// A counter's value; one never incremented is not exported yet, so 0.
fn counter(m: &HashMap<String, f64>, name: &str) -> f64 {
    m.get(name).copied().unwrap_or(0.0)
}

fn push_rows(rep: &PushReport, wait_secs: f64, n_regs: usize) -> Vec<(String, String)> {
    let per_push = rep.messages_covered as f64 / rep.notify.max(1) as f64;
    let shown: Vec<String> = rep.per_second.iter().take(40).map(u64::to_string).collect();
    let more = if rep.per_second.len() > 40 { " …" } else { "" };
    vec![
        (
            "pushes received (notify / clear)".into(),
            format!(
                "{} / {}; {} messages covered, {per_push:.1} per push",
                rep.notify, rep.clears, rep.messages_covered
            ),
        ),
        (
            "pushes/s (steady part of the sending)".into(),
            format!("{:.0} (over {:.1} s)", rep.steady_rate, rep.steady_secs),
        ),
        ("pushes/s (first to last push)".into(), format!("{:.0}", rep.overall_rate)),
        ("pushes per second of the run".into(), format!("{}{more}", shown.join(" "))),
        ("gap between pushes p50/p90/p99/p99.9/max".into(), rep.gaps.cell()),
        ("commit→push p50/p90/p99/p99.9/max".into(), rep.commit_to_push.cell()),
        ("oldest message's commit→push".into(), rep.oldest_to_push.cell()),
        (
            "duplicates / messages in two pushes".into(),
            format!("{} / {}", rep.duplicates, rep.overlaps),
        ),
        (
            "pushes of no acked message / of other runs".into(),
            format!("{} / {}", rep.unmatched, rep.foreign),
        ),
        (
            "offline members owed a push: covered".into(),
            format!(
                "{} of {n_regs} (waited {wait_secs:.2} s after the readers settled)",
                n_regs as u64 - rep.n_missed
            ),
        ),
    ]
}

/// The push checks become violations of the run.
fn add_violations(v: &mut Verdict, rep: &PushReport, unreadable: u64) {
    let mut lines = rep.missed.clone();
    if rep.duplicates > 0 {
        lines
            .push(format!("{} pushes came again (same registration and last_seq)", rep.duplicates));
    }
    if rep.overlaps > 0 {
        lines.push(format!("{} pushes covered messages an earlier push had covered", rep.overlaps));
    }
    if unreadable > 0 {
        lines.push(format!("{unreadable} gateway calls had a body that is not a push"));
    }
    let extra = rep.n_missed.saturating_sub(rep.missed.len() as u64);
    v.n_violations += lines.len() as u64 + extra;
    v.violations.extend(lines);
}

/// One call the gateway received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Arrival {
    /// When its body was read, ns since the process-local epoch.
    at_ns: u64,
    registration: String,
    clear: bool,
    conversation: ConversationId,
    first_seq: Seq,
    last_seq: Seq,
    count: u64,
}

/// The gateway request's fields the bench reads (docs/protocol.md, "Push notifications").
#[derive(Deserialize)]
struct Call<'a> {
    #[serde(borrow)]
    registration: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    conversation: ConversationId,
    first_seq: Seq,
    last_seq: Seq,
    count: u64,
}

/// What the gateway received. Behind a `std` mutex: each call holds it to push one record,
/// the main task to read the highest seq per registration; never across an `.await`.
#[derive(Default)]
struct Log {
    arrivals: Vec<Arrival>,
    /// The highest `last_seq` notified per registration.
    covered: HashMap<String, Seq>,
    /// Calls whose body was not a push.
    unreadable: u64,
}

/// The bench's push gateway: accepts connections until stopped, one task each (the
/// dispatcher sends one push at a time over a kept-alive connection).
struct Gateway {
    log: Arc<Mutex<Log>>,
    task: JoinHandle<()>,
}

impl Gateway {
    async fn start(listen: SocketAddr, delay: Duration) -> anyhow::Result<Gateway> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding the push gateway on {listen}"))?;
        note(format!("push gateway listening on http://{listen}"));
        let log = Arc::new(Mutex::new(Log::default()));
        let task = tokio::spawn(accept(listener, log.clone(), delay));
        Ok(Gateway { log, task })
    }

    /// Whether every registration had a push up to its conversation's target seq.
    fn covered(
        &self,
        owners: &HashMap<String, ConversationId>,
        targets: &HashMap<ConversationId, Seq>,
    ) -> bool {
        let log = self.log.lock().expect("gateway log lock");
        owners.iter().all(|(reg, conv)| {
            log.covered.get(reg).copied().unwrap_or(0) >= targets.get(conv).copied().unwrap_or(0)
        })
    }

    /// Stops accepting; every arrival and the count of unreadable calls.
    fn stop(self) -> (Vec<Arrival>, u64) {
        self.task.abort();
        let mut log = self.log.lock().expect("gateway log lock");
        (std::mem::take(&mut log.arrivals), log.unreadable)
    }
}

async fn accept(listener: TcpListener, log: Arc<Mutex<Log>>, delay: Duration) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(err) => {
                // Out of file descriptors, most likely: try again shortly.
                note(format!("push gateway: accept failed: {err}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let log = log.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let log = log.clone();
            async move { Ok::<_, Infallible>(on_call(req, &log, delay).await) }
        });
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service);
            let _ = conn.await;
        });
    }
}

/// Records one gateway call and answers it: 200 for a push, 400 for anything else.
async fn on_call(
    req: Request<Incoming>,
    log: &Mutex<Log>,
    delay: Duration,
) -> Response<Empty<Bytes>> {
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let at_ns = now_ns();
    let call = body.as_ref().ok().and_then(|b| serde_json::from_slice::<Call<'_>>(b).ok());
    let status = {
        let mut log = log.lock().expect("gateway log lock");
        match call {
            Some(c) => {
                let clear = c.kind == "clear";
                if !clear {
                    let top = log.covered.entry(c.registration.to_string()).or_default();
                    *top = (*top).max(c.last_seq);
                }
                log.arrivals.push(Arrival {
                    at_ns,
                    registration: c.registration.into_owned(),
                    clear,
                    conversation: c.conversation,
                    first_seq: c.first_seq,
                    last_seq: c.last_seq,
                    count: c.count,
                });
                StatusCode::OK
            }
            None => {
                log.unreadable += 1;
                StatusCode::BAD_REQUEST
            }
        }
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut res = Response::new(Empty::new());
    *res.status_mut() = status;
    res
}

/// The run's clock marks the rates are computed over (ns since the epoch).
struct Window {
    send_start_ns: u64,
    send_end_ns: u64,
    /// The steady part starts here: pushes begin a window after the first messages.
    steady_from_ns: u64,
}

/// What the pushes of a run came to.
#[derive(Debug, Default, Serialize)]
pub(crate) struct PushReport {
    /// `notify` pushes to this run's registrations.
    notify: u64,
    clears: u64,
    /// Calls for registrations of other runs (a shared data directory): ignored.
    foreign: u64,
    /// Sum of the `count` of the notify pushes.
    messages_covered: u64,
    /// A push whose (registration, kind, last_seq) came before.
    duplicates: u64,
    /// A push starting at or before a seq an earlier push to that registration covered.
    overlaps: u64,
    /// A push whose `last_seq` no sender was acked (not a message of this run).
    unmatched: u64,
    /// Arrival − ack of the push's `last_seq`.
    commit_to_push: Summary,
    /// Arrival − ack of the push's `first_seq`: how long its oldest message waited.
    oldest_to_push: Summary,
    /// Pushes per second of the run, from the start of sending.
    per_second: Vec<u64>,
    steady_rate: f64,
    steady_secs: f64,
    /// Pushes / (last arrival − first arrival).
    overall_rate: f64,
    /// Time between consecutive arrivals (ms): the long gaps are the dispatcher's waits for
    /// its next round of claims; a dispatcher that sent one push at a time would show its
    /// cost per push as the median while it had a backlog.
    gaps: Summary,
    /// Registrations whose pushes never reached their conversation's last acked seq.
    n_missed: u64,
    missed: Vec<String>,
}

/// Missed registrations named in the report (all are counted).
const KEEP_MISSED: usize = 20;

/// Folds the gateway's arrivals into the report: rates, latencies from the acks, and the
/// checks (every registration covered up to `targets`, nothing twice).
fn analyse(
    arrivals: &[Arrival],
    owners: &HashMap<String, ConversationId>,
    acked_at: &HashMap<(ConversationId, Seq), u64>,
    targets: &HashMap<ConversationId, Seq>,
    w: &Window,
) -> PushReport {
    let mut rep = PushReport::default();
    let (last_lat, first_lat) = (Latency::new(), Latency::new());
    let mut seen: HashSet<(&str, bool, Seq)> = HashSet::new();
    let mut top: HashMap<&str, Seq> = HashMap::new();
    let mut ours: Vec<&Arrival> = Vec::new();
    let mut by_arrival: Vec<&Arrival> = arrivals.iter().collect();
    by_arrival.sort_by_key(|a| a.at_ns);
    for a in by_arrival {
        if !owners.contains_key(&a.registration) {
            rep.foreign += 1;
            continue;
        }
        ours.push(a);
        if !seen.insert((a.registration.as_str(), a.clear, a.last_seq)) {
            rep.duplicates += 1;
            continue;
        }
        if a.clear {
            rep.clears += 1;
            continue;
        }
        rep.notify += 1;
        rep.messages_covered += a.count;
        let prev = top.entry(a.registration.as_str()).or_default();
        if a.first_seq <= *prev {
            rep.overlaps += 1;
        }
        *prev = (*prev).max(a.last_seq);
        match acked_at.get(&(a.conversation, a.last_seq)) {
            Some(&acked) => last_lat.record(0, a.at_ns.saturating_sub(acked)),
            None => rep.unmatched += 1,
        }
        if let Some(&acked) = acked_at.get(&(a.conversation, a.first_seq)) {
            first_lat.record(0, a.at_ns.saturating_sub(acked));
        }
    }
    rep.commit_to_push = Summary::of(&last_lat.take());
    rep.oldest_to_push = Summary::of(&first_lat.take());

    let times: Vec<u64> = ours.iter().map(|a| a.at_ns).collect();
    if let Some(&last) = times.last() {
        let n_secs = (last.saturating_sub(w.send_start_ns) / 1_000_000_000) as usize + 1;
        rep.per_second = vec![0; n_secs];
        for &t in &times {
            rep.per_second[(t.saturating_sub(w.send_start_ns) / 1_000_000_000) as usize] += 1;
        }
    }
    let span = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1e9;
    if span(w.steady_from_ns, w.send_end_ns) >= 1.0 {
        let n = times.iter().filter(|&&t| t >= w.steady_from_ns && t < w.send_end_ns).count();
        rep.steady_secs = span(w.steady_from_ns, w.send_end_ns);
        rep.steady_rate = n as f64 / rep.steady_secs;
    } else if times.len() >= 2 {
        // Too short a run for a steady part past the window: first to last push instead.
        rep.steady_secs = span(times[0], times[times.len() - 1]);
        rep.steady_rate = times.len() as f64 / rep.steady_secs.max(1e-9);
    }
    let mut gaps: Vec<f64> = times.windows(2).map(|p| (p[1] - p[0]) as f64 / 1e6).collect();
    rep.gaps = Summary::of_values(&mut gaps);
    if times.len() >= 2 {
        rep.overall_rate = times.len() as f64 / span(times[0], times[times.len() - 1]).max(1e-9);
    }

    let mut regs: Vec<(&String, &ConversationId)> = owners.iter().collect();
    regs.sort();
    for (reg, conv) in regs {
        let want = targets.get(conv).copied().unwrap_or(0);
        let got = top.get(reg.as_str()).copied().unwrap_or(0);
        if got < want {
            rep.n_missed += 1;
            if rep.missed.len() < KEEP_MISSED {
                rep.missed.push(format!(
                    "registration {reg} (conversation {conv}): pushes covered up to seq {got}, \
                     the last acked message is seq {want}: a push is owed"
                ));
            }
        }
    }
    rep
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: ConversationId = ConversationId(7);
    const SEC: u64 = 1_000_000_000;

    fn push(at_s: f64, reg: &str, first: Seq, last: Seq) -> Arrival {
        Arrival {
            at_ns: (at_s * 1e9) as u64,
            registration: reg.to_owned(),
            clear: false,
            conversation: C,
            first_seq: first,
            last_seq: last,
            count: last - first + 1,
        }
    }

    /// Messages at seqs 2..=11 of conversation 7, acked at 1.0 s, 1.1 s, …
    fn acks() -> HashMap<(ConversationId, Seq), u64> {
        (2..=11).map(|s| ((C, s), SEC + (s - 2) * SEC / 10)).collect()
    }

    fn run(arrivals: &[Arrival]) -> PushReport {
        let owners = HashMap::from([("r-0".to_owned(), C), ("r-1".to_owned(), C)]);
        let targets = HashMap::from([(C, 11)]);
        let w = Window { send_start_ns: SEC, send_end_ns: 4 * SEC, steady_from_ns: 2 * SEC };
        analyse(arrivals, &owners, &acks(), &targets, &w)
    }

    #[test]
    fn covered_once_passes_with_latencies() {
        let rep = run(&[
            push(1.5, "r-0", 2, 6),
            push(1.5, "r-1", 2, 6),
            push(2.5, "r-0", 7, 11),
            push(2.5, "r-1", 7, 11),
        ]);
        assert_eq!((rep.notify, rep.duplicates, rep.overlaps, rep.n_missed), (4, 0, 0, 0));
        assert_eq!(rep.messages_covered, 20);
        // seq 6 acked at 1.4 s, pushed at 1.5 s; seq 11 acked at 1.9 s, pushed at 2.5 s.
        assert!((rep.commit_to_push.p50_ms - 100.0).abs() < 1.0, "{:?}", rep.commit_to_push);
        assert!((rep.commit_to_push.max_ms - 600.0).abs() < 1.0, "{:?}", rep.commit_to_push);
        // Oldest: seq 2 (1.0 s) at 1.5 s, seq 7 (1.5 s) at 2.5 s.
        assert!((rep.oldest_to_push.max_ms - 1000.0).abs() < 1.0, "{:?}", rep.oldest_to_push);
        assert_eq!(rep.per_second, vec![2, 2]);
        // Two arrivals in the steady part (2 s to 4 s).
        assert!((rep.steady_rate - 1.0).abs() < 1e-9, "{}", rep.steady_rate);
        assert_eq!((rep.gaps.count, rep.gaps.max_ms), (3, 1000.0), "{:?}", rep.gaps);
    }

    #[test]
    fn a_missing_push_is_a_miss() {
        let rep = run(&[push(1.5, "r-0", 2, 11), push(1.5, "r-1", 2, 6)]);
        assert_eq!(rep.n_missed, 1);
        assert!(rep.missed[0].contains("r-1") && rep.missed[0].contains("up to seq 6"), "{rep:?}");
        let rep = run(&[push(1.5, "r-0", 2, 11)]);
        assert_eq!(rep.n_missed, 1, "no push at all");
    }

    #[test]
    fn duplicates_and_overlaps_are_caught() {
        let rep = run(&[
            push(1.5, "r-0", 2, 6),
            push(1.6, "r-0", 2, 6),
            push(2.0, "r-0", 5, 11),
            push(2.0, "r-1", 2, 11),
        ]);
        assert_eq!((rep.duplicates, rep.overlaps, rep.n_missed), (1, 1, 0), "{rep:?}");
    }

    #[test]
    fn other_runs_and_unacked_seqs_are_kept_apart() {
        let mut other = push(1.5, "someone-else", 2, 11);
        other.conversation = ConversationId(8);
        let rep = run(&[other, push(1.5, "r-0", 2, 11), push(1.5, "r-1", 2, 12)]);
        assert_eq!((rep.foreign, rep.notify, rep.unmatched), (1, 2, 1), "{rep:?}");
    }

    #[test]
    fn gateway_calls_parse() {
        let body = br#"{"registration":"r-0","user":3,"kind":"notify","conversation":7,
            "collapse_id":"c7","first_seq":2,"last_seq":6,"count":5,"body":"5 new messages"}"#;
        let c: Call<'_> = serde_json::from_slice(body).unwrap();
        assert_eq!((c.registration.as_ref(), c.kind.as_ref()), ("r-0", "notify"));
        assert_eq!((c.conversation, c.first_seq, c.last_seq, c.count), (C, 2, 6, 5));
    }
}
