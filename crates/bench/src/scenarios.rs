//! The scenarios, one function per subcommand: set up users and conversations over REST,
//! run the connections, print the table (and the JSON), and return whether every check
//! passed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use natter_proto::ConversationId;
use serde_json::{Value, json};

use crate::Common;
use crate::api::{self, Account, Api};
use crate::conn::Plan;
use crate::run::{Options, RoundResult, Run, Storm, Verdict};
use crate::stats::{Summary, now_ns, print_table};

#[derive(Args, Debug)]
pub(crate) struct ConnectionsArgs {
    /// Connections to open.
    #[arg(long)]
    n: usize,
    /// Seconds to hold them idle once all are open.
    #[arg(long, default_value_t = 10)]
    hold_secs: u64,
    /// Connections per user (one token serves them all; registration is slow on purpose).
    #[arg(long, default_value_t = 100)]
    conns_per_user: usize,
}

#[derive(Args, Debug)]
pub(crate) struct DirectArgs {
    /// Pairs of users; both members of a pair send.
    #[arg(long, default_value_t = 100)]
    pairs: usize,
    /// Offered rate, messages per second in total (the first guess with --max-rate).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// Search for the highest rate that meets --p99-ms (short runs of --step-secs).
    #[arg(long)]
    max_rate: bool,
    /// The p99 send→deliver bound of the search, in milliseconds.
    #[arg(long, default_value_t = 50.0)]
    p99_ms: f64,
    #[arg(long, default_value_t = 5.0)]
    step_secs: f64,
    #[arg(long, default_value_t = 10)]
    max_steps: u32,
    /// The share of the offered rate a step must deliver within its window to pass. Deliveries
    /// after the window do not count, so a short step needs latency well below its length.
    #[arg(long, default_value_t = 0.95)]
    min_delivered: f64,
}

#[derive(Args, Debug)]
pub(crate) struct GroupArgs {
    #[arg(long, default_value_t = 1)]
    groups: usize,
    /// Members per group, each with a live session.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Senders per group.
    #[arg(long, default_value_t = 4)]
    senders: usize,
    /// Offered rate, messages per second in total over all groups.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
}

#[derive(Args, Debug)]
pub(crate) struct StormArgs {
    /// Clients (sessions) that drop and resume.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Seconds of sending before the drop.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Sessions per user (each session keeps its own cursors).
    #[arg(long, default_value_t = 10)]
    sessions_per_user: usize,
    /// Users per group; users are also paired into direct conversations.
    #[arg(long, default_value_t = 20)]
    group_size: usize,
    /// Sending sessions, which do not drop and keep sending through the storm.
    #[arg(long, default_value_t = 10)]
    senders: usize,
    /// Offered rate of the senders, messages per second in total.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Entries per sync page when resuming (smaller: more `has_more` paging).
    #[arg(long, default_value_t = 100)]
    sync_limit: u32,
    /// How long dropped clients stay offline before reconnecting (senders keep sending, so
    /// they come back to a backlog); included in the catch-up times.
    #[arg(long, default_value_t = 0)]
    offline_ms: u64,
    /// Longest wait for every client to catch up.
    #[arg(long, default_value_t = 60)]
    catchup_timeout_secs: u64,
}

pub(crate) fn note(msg: impl std::fmt::Display) {
    eprintln!("[{:>7.1}s] {msg}", now_ns() as f64 / 1e9);
}

pub(crate) fn run_id(common: &Common) -> String {
    if let Some(id) = &common.run_id {
        return id.clone();
    }
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("b{}{}", base36(secs % 36u64.pow(6)), base36(u64::from(std::process::id())))
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii digits")
}

pub(crate) fn options(common: &Common, sync_limit: u32) -> Options {
    Options {
        servers: common.servers.clone(),
        connect_concurrency: common.connect_concurrency,
        connect_attempts: common.connect_attempts,
        body_bytes: common.body_bytes.max(20),
        max_in_flight: common.max_in_flight,
        sync_limit,
        drain: Duration::from_secs(common.drain_secs),
        record_acks: false,
        deflate: common.deflate,
    }
}

/// Warns when this process cannot hold `n` sockets.
pub(crate) fn check_fd_limit(n: usize) {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else { return };
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(soft) = soft
        && n + 64 > soft
    {
        note(format!(
            "warning: {n} connections but only {soft} open files allowed: raise `ulimit -n` \
             or split the load over several processes"
        ));
    }
}

/// Registers `n` users named `{run}_{prefix}{i}`.
pub(crate) async fn accounts(
    api: &Api,
    common: &Common,
    run: &str,
    prefix: &str,
    n: usize,
) -> anyhow::Result<Vec<Account>> {
    let t = Instant::now();
    note(format!("registering {n} users ({run}_{prefix}*)"));
    let handles: Vec<String> = (0..n).map(|i| format!("{run}_{prefix}{i}")).collect();
    let accounts = api.accounts(&handles, common.setup_concurrency).await?;
    note(format!("registered {n} users in {:.1} s", t.elapsed().as_secs_f64()));
    Ok(accounts)
}

/// Waits until every connection is synced (live delivery on), or fails the run.
pub(crate) async fn wait_synced(run: &mut Run) -> anyhow::Result<()> {
    let t = Instant::now();
    let timeout = Duration::from_secs(60 + run.n as u64 / 100);
    let all = run.until(timeout, |r| r.progress.synced + r.progress.failed.len() >= r.n).await;
    let p = &run.progress;
    if !all || !p.failed.is_empty() {
        bail!(
            "only {} of {} connections synced ({} failed) within {} s",
            p.synced,
            run.n,
            p.failed.len(),
            timeout.as_secs()
        );
    }
    note(format!("{} connections open and synced in {:.1} s", run.n, t.elapsed().as_secs_f64()));
    Ok(())
}

/// Prints the table (stdout, or stderr with `--json`) and the JSON object, and the
/// violations; returns whether the run passed.
pub(crate) fn output(
    common: &Common,
    title: &str,
    mut rows: Vec<(String, String)>,
    mut obj: Value,
    v: &Verdict,
    extra_ok: bool,
) -> bool {
    let ok = v.ok() && extra_ok;
    rows.push((
        "reconnects / sync requests".into(),
        format!("{} / {} (connect retries {})", v.reconnects, v.syncs, v.connect_retries),
    ));
    if !v.close_codes.is_empty() {
        rows.push(("server close codes".into(), format!("{:?}", v.close_codes)));
    }
    if !v.errors.is_empty() {
        rows.push(("error replies".into(), format!("{:?}", v.errors)));
    }
    let checks = match (v.n_violations, v.incomplete.len()) {
        (0, 0) => "passed".to_owned(),
        (0, n) => format!("passed, but INCOMPLETE: {n} connections have sends with no reply"),
        (k, _) => format!("FAILED: {k} violations"),
    };
    rows.push(("checks (loss, duplicates, order)".into(), checks));
    rows.push(("verdict".into(), if ok { "ok".into() } else { "FAILED".into() }));
    print_table(common.json, title, &rows);
    for line in &v.violations {
        eprintln!("VIOLATION: {line}");
    }
    if v.n_violations > v.violations.len() as u64 {
        eprintln!("VIOLATION: … and {} more", v.n_violations - v.violations.len() as u64);
    }
    for line in v.incomplete.iter().take(10) {
        eprintln!("INCOMPLETE: {line}");
    }
    if v.incomplete.len() > 10 {
        eprintln!("INCOMPLETE: … and {} more (raise --drain-secs?)", v.incomplete.len() - 10);
    }
    if let Value::Object(map) = &mut obj {
        map.insert("ok".into(), json!(ok));
        map.insert("n_violations".into(), json!(v.n_violations));
        map.insert("violations".into(), json!(v.violations));
        map.insert("incomplete".into(), json!(v.incomplete.len()));
        map.insert("reconnects".into(), json!(v.reconnects));
        map.insert("connect_retries".into(), json!(v.connect_retries));
        map.insert("syncs".into(), json!(v.syncs));
        let codes: HashMap<String, u64> =
            v.close_codes.iter().map(|(k, n)| (k.to_string(), *n)).collect();
        map.insert("close_codes".into(), json!(codes));
        map.insert("errors".into(), json!(v.errors));
    }
    if common.json {
        println!("{obj}");
    }
    ok
}

pub(crate) fn round_rows(r: &RoundResult) -> Vec<(String, String)> {
    let c = &r.counts;
    vec![
        ("offered rate".into(), format!("{:.0} msg/s for {:.1} s", r.offered_rate, r.secs)),
        (
            "sent rate".into(),
            format!("{:.0} msg/s ({} sent, {} due but not sent)", r.sent_rate, c.sent, c.unsent),
        ),
        ("acked / error replies".into(), format!("{} / {}", c.acked, c.errors)),
        ("delivered (in window)".into(), format!("{:.0} msg/s", r.delivered_rate)),
        ("delivered (all, after settle)".into(), c.delivered.to_string()),
        ("send→ack p50/p90/p99/p99.9/max".into(), r.ack_latency.cell()),
        ("send→deliver p50/p90/p99/p99.9/max".into(), r.deliver_latency.cell()),
        ("max send lag (generator)".into(), format!("{:.1} ms", c.send_lag_max_us as f64 / 1000.0)),
        ("settle time".into(), format!("{:.2} s", r.settle_secs)),
        ("not drained / not settled".into(), format!("{} / {}", r.not_drained, r.not_settled)),
    ]
}

/// Whether a round kept its promises (the server answered and delivered everything).
pub(crate) fn round_complete(r: &RoundResult) -> bool {
    r.not_drained == 0 && r.not_settled == 0
}

pub(crate) async fn scrape_sum(servers: &[String]) -> HashMap<String, f64> {
    let mut sum: HashMap<String, f64> = HashMap::new();
    for s in servers {
        match api::scrape(s).await {
            Ok(m) => {
                for (k, v) in m {
                    *sum.entry(k).or_default() += v;
                }
            }
            Err(err) => note(format!("cannot read {s}/metrics: {err:#}")),
        }
    }
    sum
}

fn metric(m: &HashMap<String, f64>, name: &str) -> f64 {
    m.get(name).copied().unwrap_or(f64::NAN)
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

/// # `connections`
pub(crate) async fn connections(common: &Common, args: ConnectionsArgs) -> anyhow::Result<bool> {
    check_fd_limit(args.n);
    let run_id = run_id(common);
    let api = Api::new(&common.servers[0])?;
    let per_user = args.conns_per_user.max(1);
    let users = accounts(&api, common, &run_id, "c", args.n.div_ceil(per_user)).await?;
    let before = scrape_sum(&common.servers).await;
    let plans = (0..args.n)
        .map(|i| {
            let a = &users[i / per_user];
            Plan {
                conn: i as u32,
                user: a.user,
                token: Arc::from(a.token.as_str()),
                server: i,
                convs: Vec::new(),
                send_to: Vec::new(),
                slot: 0.0,
                sync: false,
                drops: false,
            }
        })
        .collect();
    note(format!("opening {} connections", args.n));
    let t0 = Instant::now();
    let mut run = Run::start(&options(common, 100), plans, &[]);
    let timeout = Duration::from_secs(60 + args.n as u64 / 50);
    run.until(timeout, |r| r.progress.ready.len() + r.progress.failed.len() >= r.n).await;
    let opened = run.progress.ready.len();
    let failed = run.progress.failed.len();
    let last_ready = run.progress.ready.iter().max().copied().unwrap_or(t0);
    let connect_secs = last_ready.duration_since(t0).as_secs_f64();
    let rate = opened as f64 / connect_secs.max(1e-9);
    note(format!(
        "{opened} open ({failed} failed) in {connect_secs:.1} s; holding {} s",
        args.hold_secs
    ));
    let after_connect = scrape_sum(&common.servers).await;
    run.until(Duration::from_secs(args.hold_secs), |_| false).await;
    let end = scrape_sum(&common.servers).await;
    let still_failed = run.progress.failed.len();
    let v = run.finish().await;

    let rss = "natter_process_resident_memory_bytes";
    let fds = "natter_process_open_fds";
    let per_conn =
        |m: &HashMap<String, f64>| (metric(m, rss) - metric(&before, rss)) / opened.max(1) as f64;
    let rows = vec![
        ("servers".into(), common.servers.join(", ")),
        (
            "connections requested / opened / failed".into(),
            format!("{} / {opened} / {still_failed}", args.n),
        ),
        ("users (tokens)".into(), users.len().to_string()),
        ("connect time".into(), format!("{connect_secs:.2} s")),
        ("connect rate".into(), format!("{rate:.0} conn/s")),
        ("server RSS before".into(), mib(metric(&before, rss))),
        (
            "server RSS all open / end of hold".into(),
            format!("{} / {}", mib(metric(&after_connect, rss)), mib(metric(&end, rss))),
        ),
        (
            "server RSS per connection (end of hold)".into(),
            format!("{:.1} KiB", per_conn(&end) / 1024.0),
        ),
        (
            "server open fds before / end".into(),
            format!("{} / {}", metric(&before, fds), metric(&end, fds)),
        ),
        ("server natter_connections (end)".into(), metric(&end, "natter_connections").to_string()),
    ];
    let obj = json!({
        "scenario": "connections",
        "servers": common.servers,
        "requested": args.n,
        "opened": opened,
        "failed": still_failed,
        "users": users.len(),
        "hold_secs": args.hold_secs,
        "connect_secs": connect_secs,
        "connect_rate": rate,
        "rss_before_bytes": metric(&before, rss),
        "rss_connected_bytes": metric(&after_connect, rss),
        "rss_end_bytes": metric(&end, rss),
        "rss_per_connection_bytes": per_conn(&end),
        "rss_per_connection_connected_bytes": per_conn(&after_connect),
        "open_fds_before": metric(&before, fds),
        "open_fds_end": metric(&end, fds),
        "server_connections_end": metric(&end, "natter_connections"),
    });
    let title =
        format!("natter-bench connections: {} connections held {} s", args.n, args.hold_secs);
    Ok(output(common, &title, rows, obj, &v, still_failed == 0 && opened == args.n))
}

/// # `direct` (and `direct --max-rate`)
pub(crate) async fn direct(common: &Common, args: DirectArgs) -> anyhow::Result<bool> {
    let n = args.pairs * 2;
    if n == 0 {
        bail!("--pairs must be at least 1");
    }
    check_fd_limit(n);
    let run_id = run_id(common);
    let api = Api::new(&common.servers[0])?;
    let users = accounts(&api, common, &run_id, "d", n).await?;
    let convs: Vec<ConversationId> = Api::each(0..args.pairs, common.setup_concurrency * 4, |i| {
        let (a, b) = (&users[2 * i], &users[2 * i + 1]);
        api.direct(&a.token, b.user)
    })
    .await
    .context("creating direct conversations")?;
    let plans = (0..n)
        .map(|i| Plan {
            conn: i as u32,
            user: users[i].user,
            token: Arc::from(users[i].token.as_str()),
            server: i,
            convs: vec![convs[i / 2]],
            send_to: vec![convs[i / 2]],
            slot: i as f64 / n as f64,
            sync: true,
            drops: false,
        })
        .collect();
    let mut run = Run::start(&options(common, 100), plans, &convs);
    wait_synced(&mut run).await?;
    let settle = Duration::from_secs(common.drain_secs);
    if !args.max_rate {
        note(format!("sending {:.0} msg/s for {:.1} s", args.rate, args.secs));
        let r = run.round(1, args.rate, args.secs, n, settle).await;
        let v = run.finish().await;
        let mut rows = vec![
            ("servers".into(), common.servers.join(", ")),
            ("pairs (connections)".into(), format!("{} ({n})", args.pairs)),
        ];
        rows.extend(round_rows(&r));
        let obj = json!({
            "scenario": "direct", "servers": common.servers, "pairs": args.pairs,
            "connections": n, "round": r,
        });
        let title = format!("natter-bench direct: {} pairs at {:.0} msg/s", args.pairs, args.rate);
        return Ok(output(common, &title, rows, obj, &v, round_complete(&r)));
    }

    // The search: double until a step fails, then bisect (geometrically) between the
    // highest pass and the lowest failure.
    let settle = settle.max(Duration::from_secs(30));
    let (mut lo, mut hi): (Option<f64>, Option<f64>) = (None, None);
    let mut rate = args.rate;
    let mut steps = Vec::new();
    for step in 1..=args.max_steps {
        note(format!("step {step}: {rate:.0} msg/s for {:.1} s", args.step_secs));
        let r = run.round(step, rate, args.step_secs, n, settle).await;
        let pass = r.deliver_latency.p99_ms <= args.p99_ms
            && r.delivered_rate >= args.min_delivered * rate
            && r.counts.errors == 0
            && round_complete(&r);
        note(format!(
            "step {step}: offered {rate:.0}, delivered {:.0} msg/s, p99 {:.1} ms: {}",
            r.delivered_rate,
            r.deliver_latency.p99_ms,
            if pass { "pass" } else { "fail" }
        ));
        let settled = r.not_settled == 0;
        steps.push((pass, r));
        if pass {
            lo = Some(lo.map_or(rate, |l: f64| l.max(rate)));
        } else {
            hi = Some(hi.map_or(rate, |h: f64| h.min(rate)));
        }
        if !settled {
            note("the server did not catch up within the settle time: stopping the search");
            break;
        }
        rate = match (lo, hi) {
            (Some(l), None) => l * 2.0,
            (None, Some(h)) => h / 2.0,
            (Some(l), Some(h)) if h / l > 1.1 => (l * h).sqrt(),
            _ => break,
        };
        if rate < 1.0 {
            break;
        }
    }
    let v = run.finish().await;
    let mut rows = vec![
        ("servers".into(), common.servers.join(", ")),
        ("pairs (connections)".into(), format!("{} ({n})", args.pairs)),
        (
            "bound".into(),
            format!("p99 send→deliver ≤ {} ms, delivered ≥ 95% of offered", args.p99_ms),
        ),
    ];
    for (i, (pass, r)) in steps.iter().enumerate() {
        rows.push((
            format!("step {}", i + 1),
            format!(
                "offered {:.0}, delivered {:.0} msg/s, p99 {:.1} ms, ack p99 {:.1} ms: {}",
                r.offered_rate,
                r.delivered_rate,
                r.deliver_latency.p99_ms,
                r.ack_latency.p99_ms,
                if *pass { "pass" } else { "fail" }
            ),
        ));
    }
    rows.push((
        "highest passing rate".into(),
        lo.map_or("none".into(), |l| format!("{l:.0} msg/s")),
    ));
    let obj = json!({
        "scenario": "direct-max-rate", "servers": common.servers, "pairs": args.pairs,
        "connections": n, "p99_ms_bound": args.p99_ms, "max_rate": lo,
        "steps": steps.iter().map(|(pass, r)| json!({"pass": pass, "round": r})).collect::<Vec<_>>(),
    });
    let title =
        format!("natter-bench direct --max-rate: {} pairs, p99 ≤ {} ms", args.pairs, args.p99_ms);
    Ok(output(common, &title, rows, obj, &v, true))
}

/// # `group`
pub(crate) async fn group(common: &Common, args: GroupArgs) -> anyhow::Result<bool> {
    if args.groups == 0 || args.size < 2 || args.senders == 0 || args.senders > args.size {
        bail!("need --groups ≥ 1, --size ≥ 2 and 1 ≤ --senders ≤ --size");
    }
    let n = args.groups * args.size;
    check_fd_limit(n);
    let run_id = run_id(common);
    let api = Api::new(&common.servers[0])?;
    let users = accounts(&api, common, &run_id, "g", n).await?;
    let convs: Vec<ConversationId> = Api::each(0..args.groups, common.setup_concurrency, |g| {
        let members = &users[g * args.size..(g + 1) * args.size];
        let title = format!("{run_id} group {g}");
        let api = api.clone();
        async move { api.group(&members[0], &title, &members[1..]).await }
    })
    .await
    .context("creating groups")?;
    let n_senders = args.groups * args.senders;
    let plans = (0..n)
        .map(|i| {
            let (g, member) = (i / args.size, i % args.size);
            let sender = member < args.senders;
            Plan {
                conn: i as u32,
                user: users[i].user,
                token: Arc::from(users[i].token.as_str()),
                server: i,
                convs: vec![convs[g]],
                send_to: if sender { vec![convs[g]] } else { Vec::new() },
                slot: (g * args.senders + member) as f64 / n_senders as f64,
                sync: true,
                drops: false,
            }
        })
        .collect();
    let mut run = Run::start(&options(common, 100), plans, &convs);
    wait_synced(&mut run).await?;
    note(format!("sending {:.0} msg/s for {:.1} s", args.rate, args.secs));
    let settle = Duration::from_secs(common.drain_secs);
    let r = run.round(1, args.rate, args.secs, n_senders, settle).await;
    let v = run.finish().await;
    let mut rows = vec![
        ("servers".into(), common.servers.join(", ")),
        (
            "groups × members (senders each)".into(),
            format!("{} × {} ({})", args.groups, args.size, args.senders),
        ),
    ];
    rows.extend(round_rows(&r));
    rows.insert(
        2,
        (
            "deliveries/s (to members other than the sender)".into(),
            format!("{:.0}", r.delivered_rate),
        ),
    );
    let obj = json!({
        "scenario": "group", "servers": common.servers, "groups": args.groups,
        "size": args.size, "senders_per_group": args.senders, "connections": n,
        "deliveries_per_sec": r.delivered_rate, "round": r,
    });
    let title = format!(
        "natter-bench group: {} × {} members, {} senders each, {:.0} msg/s",
        args.groups, args.size, args.senders, args.rate
    );
    Ok(output(common, &title, rows, obj, &v, round_complete(&r)))
}

/// # `storm`
pub(crate) async fn storm(common: &Common, args: StormArgs) -> anyhow::Result<bool> {
    if args.clients == 0 || args.senders == 0 || args.group_size < 2 {
        bail!("need --clients ≥ 1, --senders ≥ 1 and --group-size ≥ 2");
    }
    check_fd_limit(args.clients + args.senders);
    let run_id = run_id(common);
    let api = Api::new(&common.servers[0])?;
    let n_users = args.clients.div_ceil(args.sessions_per_user.max(1)).max(2);
    let users = accounts(&api, common, &run_id, "s", n_users).await?;
    // Every user is in one group (consecutive users) and one direct conversation (pairs).
    let n_groups = n_users.div_ceil(args.group_size);
    let groups: Vec<ConversationId> = Api::each(0..n_groups, common.setup_concurrency, |g| {
        let members = &users[g * args.group_size..((g + 1) * args.group_size).min(n_users)];
        let title = format!("{run_id} storm {g}");
        let api = api.clone();
        async move { api.group(&members[0], &title, &members[1..]).await }
    })
    .await
    .context("creating groups")?;
    let directs: Vec<ConversationId> =
        Api::each(0..n_users / 2, common.setup_concurrency * 4, |i| {
            let (a, b) = (&users[2 * i], &users[2 * i + 1]);
            api.direct(&a.token, b.user)
        })
        .await
        .context("creating direct conversations")?;
    let convs_of = |u: usize| {
        let mut c = vec![groups[u / args.group_size]];
        if let Some(d) = directs.get(u / 2) {
            c.push(*d);
        }
        c
    };
    let mut plans: Vec<Plan> = (0..args.clients)
        .map(|i| {
            let u = i % n_users;
            Plan {
                conn: i as u32,
                user: users[u].user,
                token: Arc::from(users[u].token.as_str()),
                server: i,
                convs: convs_of(u),
                send_to: Vec::new(),
                slot: 0.0,
                sync: true,
                drops: true,
            }
        })
        .collect();
    for j in 0..args.senders {
        let u = j * n_users / args.senders;
        let i = args.clients + j;
        plans.push(Plan {
            conn: i as u32,
            user: users[u].user,
            token: Arc::from(users[u].token.as_str()),
            server: i,
            convs: convs_of(u),
            send_to: convs_of(u),
            slot: j as f64 / args.senders as f64,
            sync: true,
            drops: false,
        });
    }
    let all_convs: Vec<ConversationId> = groups.iter().chain(directs.iter()).copied().collect();
    let mut run = Run::start(&options(common, args.sync_limit), plans, &all_convs);
    wait_synced(&mut run).await?;

    // Sending goes on through the storm; the window only bounds how long it may.
    let catchup = Duration::from_secs(args.catchup_timeout_secs);
    let window = args.secs + (catchup + Duration::from_millis(args.offline_ms)).as_secs_f64() + 5.0;
    note(format!("sending {:.0} msg/s; dropping every client in {:.1} s", args.rate, args.secs));
    run.begin_round(1, args.rate, window, args.senders);
    run.until(Duration::from_secs_f64(args.secs + 0.2), |_| false).await;
    let targets = run.acked_targets();
    let acked_before: u64 = targets.values().sum();
    let t0 = Instant::now();
    let offline = Duration::from_millis(args.offline_ms);
    run.set(|p| p.storm = Some(Storm { offline, targets: targets.clone() }));
    note(format!("dropped {} clients; waiting for them to catch up", args.clients));
    let clients = args.clients;
    let all = run
        .until(catchup + offline, |r| {
            r.progress.caught_up.len() + r.progress.failed.len() >= clients
        })
        .await;
    let caught = run.progress.caught_up.len();
    let mut catchup_ms: Vec<f64> = run
        .progress
        .caught_up
        .iter()
        .map(|t| t.duration_since(t0).as_secs_f64() * 1000.0)
        .collect();
    let mut reconnect_ms: Vec<f64> = run
        .progress
        .reconnected
        .iter()
        .map(|t| t.duration_since(t0).as_secs_f64() * 1000.0)
        .collect();
    let catch = Summary::of_values(&mut catchup_ms);
    let reconn = Summary::of_values(&mut reconnect_ms);
    note(format!("{caught} of {clients} caught up; all within {:.2} s", catch.max_ms / 1000.0));
    // A little more sending after the storm, then drain, settle and check everything.
    run.until(Duration::from_secs(1), |_| false).await;
    let secs = t0.elapsed().as_secs_f64() + args.secs;
    let r = run.end_round(1, args.rate, secs, Duration::from_secs(common.drain_secs)).await;
    let failed = run.progress.failed.len();
    let v = run.finish().await;

    // Reconnecting starts after the offline time.
    let reconnect_secs = (reconn.max_ms - args.offline_ms as f64).max(0.0) / 1000.0;
    let reconnect_rate = reconn.count as f64 / reconnect_secs.max(1e-9);
    let rows = vec![
        ("servers".into(), common.servers.join(", ")),
        (
            "clients (users, sessions each)".into(),
            format!("{clients} ({n_users}, ~{})", args.sessions_per_user),
        ),
        (
            "conversations".into(),
            format!("{n_groups} groups of ≤ {}, {} directs", args.group_size, directs.len()),
        ),
        (
            "senders (not dropped)".into(),
            format!("{} at {:.0} msg/s in total", args.senders, args.rate),
        ),
        ("offline before reconnecting".into(), format!("{} ms", args.offline_ms)),
        ("highest acked seqs at the drop (sum)".into(), acked_before.to_string()),
        (
            "reconnected".into(),
            format!(
                "{} of {clients}; last {:.2} s after the drop",
                reconn.count,
                reconn.max_ms / 1000.0
            ),
        ),
        (
            "reconnect rate".into(),
            format!(
                "{reconnect_rate:.0} conn/s (over {reconnect_secs:.2} s after the offline time)"
            ),
        ),
        ("drop → caught up p50/p90/p99/p99.9/max".into(), catch.cell()),
        (
            "all caught up".into(),
            if all && caught == clients {
                format!("yes, in {:.2} s", catch.max_ms / 1000.0)
            } else {
                format!("NO: {caught} of {clients} within {} s", catchup.as_secs())
            },
        ),
        (
            "sent / acked / error replies".into(),
            format!("{} / {} / {}", r.counts.sent, r.counts.acked, r.counts.errors),
        ),
        ("send→ack (senders) p50/p90/p99/p99.9/max".into(), r.ack_latency.cell()),
        ("send→deliver (incl. resumed) p50/…/max".into(), r.deliver_latency.cell()),
        ("not drained / not settled".into(), format!("{} / {}", r.not_drained, r.not_settled)),
    ];
    let obj = json!({
        "scenario": "storm", "servers": common.servers, "clients": clients, "users": n_users,
        "groups": n_groups, "directs": directs.len(), "senders": args.senders, "rate": args.rate,
        "acked_before_drop": acked_before, "offline_ms": args.offline_ms,
        "reconnected": reconn.count, "reconnect_secs": reconn.max_ms / 1000.0,
        "reconnect_rate": reconnect_rate, "reconnect_window_secs": reconnect_secs, "reconnect_ms": reconn,
        "caught_up": caught, "catchup_ms": catch, "catchup_secs": catch.max_ms / 1000.0,
        "all_caught_up": all && caught == clients, "failed": failed, "round": r,
    });
    let title = format!("natter-bench storm: {clients} clients drop and resume");
    let complete = all && caught == clients && failed == 0 && round_complete(&r);
    Ok(output(common, &title, rows, obj, &v, complete))
}
