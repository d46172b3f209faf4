//! Prometheus metrics, rendered by `GET /metrics`.
//!
//! Every series is in [`SERIES`], with its type and help: [`install`] describes them all
//! and registers those without labels (and the known label values of the others) at zero,
//! and [`render`] adds the `HELP` and `TYPE` lines of families that have no sample yet, so a
//! scrape right after start lists every series. `natter_build_info{version, node}` names the
//! node; join on the scrape's `instance` to slice other series by node.
//! docs/protocol.md ("Metrics") lists them; `ops/` has the dashboard and alert rules.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// What a series is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// Its name in a `# TYPE` line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One series: its name, type, help and labels.
pub struct Series {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub labels: Labels,
}

/// A series' labels, and what is registered at start.
pub enum Labels {
    /// None: the series is registered at zero.
    None,
    /// One label and every value it takes: each is registered at zero.
    Known(&'static str, &'static [&'static str]),
    /// Labels whose values appear with traffic (routes, codes): only `HELP` and `TYPE` until
    /// then.
    Dynamic(&'static [&'static str]),
}

const fn series(name: &'static str, kind: Kind, help: &'static str) -> Series {
    Series { name, kind, help, labels: Labels::None }
}

const fn labelled(
    name: &'static str,
    kind: Kind,
    help: &'static str,
    label: &'static str,
    values: &'static [&'static str],
) -> Series {
    Series { name, kind, help, labels: Labels::Known(label, values) }
}

const fn dynamic(
    name: &'static str,
    kind: Kind,
    help: &'static str,
    labels: &'static [&'static str],
) -> Series {
    Series { name, kind, help, labels: Labels::Dynamic(labels) }
}

const LIVE_TRANSPORTS: &[&str] = &["ws", "sse", "poll"];

use Kind::{Counter, Gauge, Histogram};

/// Every series this server exports, one a line.
#[rustfmt::skip]
pub const SERIES: &[Series] = &[
    dynamic("natter_build_info", Gauge, "1, labelled with the build's version and the node's id (join on instance to label other series by node).", &["version", "node"]),
    series("natter_connections", Gauge, "Live sessions on this node: WebSockets, SSE and long-poll streams."),
    labelled("natter_sessions_opened_total", Counter, "Sessions opened (connects and reconnects), by transport.", "transport", LIVE_TRANSPORTS),
    labelled("natter_resumes_total", Counter, "Sessions whose first sync carried cursors: clients coming back to resume.", "transport", LIVE_TRANSPORTS),
    series("natter_sessions_refused_total", Counter, "Sessions refused: the user had max_sessions_per_user on this node."),
    series("natter_tcp_connections", Gauge, "Open TCP connections of this node (REST, SSE, long-poll and WebSocket)."),
    labelled("natter_connections_refused_total", Counter, "TCP connections closed at accept, by the cap that refused them.", "reason", &["max_connections", "max_connections_per_ip"]),
    series("natter_slow_consumers_total", Counter, "Sessions closed because their outbound queue was full (slow consumers)."),
    series("natter_oversized_frames_total", Counter, "WebSocket frames refused for exceeding max_frame_bytes (closed with 1009)."),
    series("natter_poll_streams", Gauge, "Long-poll streams held between requests."),
    series("natter_poll_streams_evicted_total", Counter, "Idle long-poll streams ended to make room for a token's new one."),
    dynamic("natter_http_requests_total", Counter, "HTTP requests answered, by route, method and status.", &["route", "method", "status"]),
    dynamic("natter_http_request_seconds", Histogram, "Time to answer an HTTP request (to its headers), by route and method.", &["route", "method"]),
    dynamic("natter_errors_total", Counter, "Errors answered to clients, by transport and stable error code.", &["transport", "code"]),
    labelled("natter_send_ack_seconds", Histogram, "Send to ack: from a send's arrival to its ack (committed durably), by transport.", "transport", &["ws", "rest"]),
    labelled("natter_queue_depth", Gauge, "Items waiting in a queue when its consumer last took work: the store's writer, the router (commits to fan out), the bus inbound and publish queues, the push queue.", "queue", &["writer", "router", "bus_inbound", "bus_publish", "push"]),
    series("natter_entries_committed_total", Counter, "Log entries committed by this node's store."),
    series("natter_commit_batch_size", Histogram, "Appends per group commit."),
    series("natter_commit_seconds", Histogram, "Time of one group commit."),
    series("natter_commit_retries_total", Counter, "PostgreSQL commits retried after a serialization conflict."),
    series("natter_delivery_seconds", Histogram, "Router hand-off to socket flush, per delivered live entry."),
    series("natter_commit_deliver_seconds", Histogram, "Commit to delivery: from an entry's commit time to its socket flush, per delivered live entry (millisecond clock)."),
    labelled("natter_store_errors_total", Counter, "Store failures answered to clients: unavailable (retryable) or internal.", "kind", &["unavailable", "internal"]),
    series("natter_sqlite_wal_bytes", Gauge, "Size of the embedded store's WAL file."),
    labelled("natter_sqlite_wal_restarts_total", Counter, "Restarting WAL checkpoints past sqlite_wal_limit_bytes, by whether they completed.", "done", &["true", "false"]),
    series("natter_typing_forwards_total", Counter, "Typing indicators forwarded."),
    series("natter_presence_frames_total", Counter, "Presence frames sent."),
    series("natter_rate_limited_total", Counter, "Requests refused by a rate limit (too_many_requests)."),
    series("natter_searches_total", Counter, "Message searches run."),
    labelled("natter_content_rejected_total", Counter, "Messages refused by content rules, by what refused them.", "by", &["rules", "webhook"]),
    series("natter_moderation_webhook_failures_total", Counter, "Moderation webhook calls that failed (errors, time-outs, bad answers)."),
    series("natter_bus_published_total", Counter, "Messages this node published to the bus (cluster mode)."),
    series("natter_bus_dropped_total", Counter, "Publishes dropped on a full bus queue; other nodes catch up from the store."),
    series("natter_bus_overflow_total", Counter, "Bus messages dropped on arrival (a full inbox); sessions catch up from the store."),
    series("natter_bus_catch_ups_total", Counter, "Catch-ups from the store after the bus may have lost messages."),
    series("natter_redis_errors_total", Counter, "Redis commands and connections that failed (cluster mode)."),
    series("natter_push_candidates_queued_total", Counter, "Push notifications queued for members without a live session."),
    labelled("natter_pushes_sent_total", Counter, "Push notifications delivered to a provider, by provider.", "provider", &["webhook", "webpush", "fcm", "apns"]),
    series("natter_push_retries_total", Counter, "Push notifications retried after a provider failure."),
    series("natter_push_offers_dropped_total", Counter, "Push offers dropped on a full dispatcher queue."),
    series("natter_push_tokens_dropped_total", Counter, "Push registrations removed because the provider said the token is gone."),
    series("natter_email_digests_sent_total", Counter, "Email digests sent."),
    series("natter_process_resident_memory_bytes", Gauge, "Resident memory of the process."),
    series("natter_process_open_fds", Gauge, "Open file descriptors of the process."),
];

/// Describes every series and registers those it can at zero.
fn register(node: &str) {
    for s in SERIES {
        match s.kind {
            Counter => metrics::describe_counter!(s.name, s.help),
            Gauge => metrics::describe_gauge!(s.name, s.help),
            Histogram => metrics::describe_histogram!(s.name, s.help),
        }
        let values: &[&str] = match s.labels {
            Labels::None => &[""],
            Labels::Known(_, values) => values,
            Labels::Dynamic(_) => &[],
        };
        for value in values {
            let labels: Vec<metrics::Label> = match s.labels {
                Labels::Known(label, _) => vec![metrics::Label::new(label, *value)],
                _ => Vec::new(),
            };
            match s.kind {
                Counter => metrics::counter!(s.name, labels).increment(0),
                Gauge => metrics::gauge!(s.name, labels).increment(0.0),
                // Registered: the exporter lists it (empty) from now on.
                Histogram => drop(metrics::histogram!(s.name, labels)),
            }
        }
    }
    let labels = [("version", env!("CARGO_PKG_VERSION").to_owned()), ("node", node.to_owned())];
    metrics::gauge!("natter_build_info", &labels).set(1.0);
}

/// The exposition: every sample, then the `HELP` and `TYPE` of the families without one.
pub(crate) fn render(handle: &PrometheusHandle) -> String {
    refresh_process_gauges();
    let mut text = handle.render();
    for s in SERIES {
        if !text.contains(&format!("# TYPE {} ", s.name)) {
            text.push_str(&format!(
                "# HELP {} {}\n# TYPE {} {}\n",
                s.name,
                s.help,
                s.name,
                s.kind.name()
            ));
        }
    }
    text
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once (several servers in one test process share it,
/// and its `node` label: the first one's).
pub(crate) fn install(node: &str) -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let seconds = [
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5,
            ];
            let sizes = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &seconds)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("natter_commit_batch_size".into()),
                        &sizes,
                    )
                })
                .expect("bucket lists are non-empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            register(node);
            // Histogram samples are buffered until drained; drain them even if nobody scrapes.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("natter-metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .expect("spawning the metrics upkeep thread");
            handle
        })
        .clone()
}

/// Samples the process's resident memory and open files (Linux `/proc`), for `/metrics`.
fn refresh_process_gauges() {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
        if let Some(kib) = rss_kib {
            metrics::gauge!("natter_process_resident_memory_bytes").set(kib * 1024.0);
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!("natter_process_open_fds").set(dir.count() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALERTS: &str = include_str!("../../../ops/prometheus/alerts.yml");
    const DASHBOARD: &str = include_str!("../../../ops/grafana/natter.json");
    const PROTOCOL: &str = include_str!("../../../docs/protocol.md");

    /// The `natter_*` series `text` names (a histogram's `_bucket`, `_sum` and `_count` as
    /// the histogram).
    fn named(text: &str) -> Vec<String> {
        let re = regex::Regex::new(r"natter_[a-z0-9_]+").unwrap();
        re.find_iter(text)
            .map(|m| {
                let name = m.as_str();
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .filter(|base| SERIES.iter().any(|s| s.name == *base && s.kind == Histogram));
                base.unwrap_or(name).to_owned()
            })
            .collect()
    }

    #[test]
    fn the_alerts_and_the_dashboard_name_only_exported_series() {
        for (file, text) in [("alerts.yml", ALERTS), ("natter.json", DASHBOARD)] {
            for name in named(text) {
                assert!(SERIES.iter().any(|s| s.name == name), "{file} names {name}");
            }
        }
    }

    #[test]
    fn the_dashboard_is_well_formed() {
        let d: serde_json::Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
        assert_eq!(d["__inputs"][0]["name"], "DS_PROMETHEUS", "imported with a datasource input");
        let panels = d["panels"].as_array().expect("panels");
        let mut ids = std::collections::HashSet::new();
        for p in panels {
            let title = p["title"].as_str().filter(|t| !t.is_empty()).expect("a title");
            assert!(ids.insert(p["id"].as_u64().expect("an id")), "{title}: a unique id");
            let grid = &p["gridPos"];
            let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
            assert!(x + w <= 24 && grid["h"].as_u64().unwrap() > 0, "{title}: within the grid");
            assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
            let targets = p["targets"].as_array().filter(|t| !t.is_empty()).expect("targets");
            for t in targets {
                let expr = t["expr"].as_str().expect("an expression");
                assert!(!named(expr).is_empty(), "{title}: {expr} reads a natter series");
                assert!(t["refId"].is_string(), "{title}: a refId");
            }
        }
    }

    #[test]
    fn the_protocol_lists_every_series_with_its_labels() {
        for s in SERIES {
            let labels = match s.labels {
                Labels::None => String::new(),
                Labels::Known(label, _) => format!("{{{label}}}"),
                Labels::Dynamic(labels) => format!("{{{}}}", labels.join(", ")),
            };
            let want = format!("`{}{labels}`", s.name);
            assert!(PROTOCOL.contains(&want), "docs/protocol.md lists {want}");
        }
    }
}
