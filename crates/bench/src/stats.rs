//! Measurements: the process-local clock, latency histograms and their summaries.

use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the process-local epoch. Senders write it into message bodies and
/// receivers (in the same process) subtract it from their own clock.
pub(crate) fn now_ns() -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    epoch.elapsed().as_nanos() as u64
}

/// The [`Instant`] of a [`now_ns`] value.
pub(crate) fn instant_of(ns: u64) -> Instant {
    *EPOCH.get_or_init(Instant::now) + std::time::Duration::from_nanos(ns)
}

/// The [`now_ns`] value of an [`Instant`] (0 before the epoch).
pub(crate) fn ns_of(at: Instant) -> u64 {
    at.saturating_duration_since(*EPOCH.get_or_init(Instant::now)).as_nanos() as u64
}

/// Microseconds up to two minutes, three significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

/// A latency histogram that many connection tasks record into: a few shards, each behind
/// a mutex held for one `record` (no `.await` inside), so two worker threads rarely meet.
pub(crate) struct Latency {
    shards: Vec<Mutex<Histogram<u64>>>,
}

const SHARDS: usize = 8;

impl Latency {
    pub(crate) fn new() -> Latency {
        Latency { shards: (0..SHARDS).map(|_| Mutex::new(new_histogram())).collect() }
    }

    /// Records `ns` nanoseconds for connection `conn`.
    pub(crate) fn record(&self, conn: u32, ns: u64) {
        let mut h = self.shards[conn as usize % SHARDS].lock().expect("histogram lock");
        h.saturating_record((ns / 1000).max(1));
    }

    /// Merges and resets the shards.
    pub(crate) fn take(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for shard in &self.shards {
            let mut h = shard.lock().expect("histogram lock");
            all.add(&*h).expect("same bounds");
            h.reset();
        }
        all
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Summary {
    pub(crate) count: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p90_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
}

impl Summary {
    pub(crate) fn of(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Summary {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }

    /// Percentiles of plain values in milliseconds (few samples: sorted, not a histogram).
    pub(crate) fn of_values(values: &mut [f64]) -> Summary {
        if values.is_empty() {
            return Summary::default();
        }
        values.sort_by(f64::total_cmp);
        let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
        Summary {
            count: values.len() as u64,
            p50_ms: at(0.5),
            p90_ms: at(0.9),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: values[values.len() - 1],
        }
    }

    /// `p50 / p90 / p99 / p99.9 / max` for a table cell.
    pub(crate) fn cell(&self) -> String {
        if self.count == 0 {
            return "-".to_owned();
        }
        format!(
            "{} / {} / {} / {} / {} ms (n={})",
            fmt_ms(self.p50_ms),
            fmt_ms(self.p90_ms),
            fmt_ms(self.p99_ms),
            fmt_ms(self.p999_ms),
            fmt_ms(self.max_ms),
            self.count
        )
    }
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

/// Prints `rows` as an aligned two-column table under `title`: on stdout, or on stderr when
/// stdout is for the run's JSON object (`--json`).
pub(crate) fn print_table(json: bool, title: &str, rows: &[(String, String)]) {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut table = format!("{title}\n{}\n", "-".repeat(title.len().max(8)));
    for (k, v) in rows {
        table.push_str(&format!("  {k:<width$}  {v}\n"));
    }
    if json {
        eprint!("{table}");
    } else {
        print!("{table}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries() {
        let lat = Latency::new();
        for i in 1..=1000u64 {
            lat.record(i as u32, i * 1_000_000);
        }
        let s = Summary::of(&lat.take());
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 500.0).abs() < 1.0, "{s:?}");
        assert!((s.max_ms - 1000.0).abs() < 1.0, "{s:?}");
        assert_eq!(Summary::of(&lat.take()).count, 0, "take resets");
        let s = Summary::of_values(&mut [3.0, 1.0, 2.0]);
        assert_eq!((s.p50_ms, s.max_ms), (2.0, 3.0));
    }
}
