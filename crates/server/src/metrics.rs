//! Prometheus metrics, rendered by `GET /metrics`.
//!
//! Names: `natter_connections` (gauge), `natter_entries_committed_total`,
//! `natter_commit_batch_size` and `natter_commit_seconds` (per group commit),
//! `natter_delivery_seconds` (router hand-off to socket flush, per delivered entry),
//! `natter_slow_consumers_total`, `natter_oversized_frames_total`,
//! `natter_typing_forwards_total`, `natter_presence_frames_total`,
//! `natter_process_resident_memory_bytes`, `natter_process_open_fds`,
//! `natter_tcp_connections` (gauge), `natter_connections_refused_total{reason}`,
//! `natter_sessions_refused_total`, `natter_poll_streams` (gauge),
//! `natter_poll_streams_evicted_total`; on SQLite `natter_sqlite_wal_bytes` (gauge) and
//! `natter_sqlite_wal_restarts_total{done}`; in cluster mode
//! `natter_bus_published_total` (messages sent to Redis), `natter_bus_dropped_total`
//! (publishes dropped on a full queue), `natter_bus_overflow_total` (received messages
//! dropped), `natter_bus_catch_ups_total`, `natter_commit_retries_total` (PostgreSQL).

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once (several servers in one test process share it).
pub(crate) fn install() -> PrometheusHandle {
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
pub(crate) fn refresh_process_gauges() {
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
