//! Orchestration: the phases every connection task follows, the events they report, and
//! the main side that drives a run (start, rounds of sending, settling, stop, verdict).
//!
//! One [`Phase`] is broadcast on a `watch` channel; each task compares it with what it has
//! seen and acts (start sending, stop and drain, wait for targets, drop and resume, stop).
//! Tasks report [`Event`]s on one unbounded channel; [`Run`] folds them into [`Progress`]
//! and waits on conditions over it, each wait bounded.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use natter_proto::{ConversationId, Seq};
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::check::{self, AckSum};
use crate::conn::{self, ConnReport, Plan};
use crate::stats::{Latency, Summary};

/// What every connection task of a run shares (read-only but for atomics and histograms).
pub(crate) struct Shared {
    /// `(host:port, ws://host:port/v1/ws)` per server.
    pub(crate) servers: Vec<(String, String)>,
    pub(crate) ws_config: WebSocketConfig,
    /// Bounds the handshakes in progress (a listen backlog is finite).
    pub(crate) connect: Semaphore,
    pub(crate) connect_attempts: u32,
    pub(crate) events: mpsc::UnboundedSender<Event>,
    pub(crate) phase: watch::Receiver<Phase>,
    pub(crate) counters: Counters,
    pub(crate) ack_latency: Latency,
    pub(crate) deliver_latency: Latency,
    /// The highest acked `seq` per conversation (the settle and catch-up targets).
    pub(crate) acked_max: HashMap<ConversationId, AtomicU64>,
    /// Padding appended to the 20-digit send time in each body.
    pub(crate) body_pad: String,
    pub(crate) max_in_flight: usize,
    pub(crate) sync_limit: u32,
    /// Senders keep the time of every ack (for [`Verdict::acked_at`]).
    pub(crate) record_acks: bool,
    /// Connections ask for permessage-deflate.
    pub(crate) deflate: bool,
}

/// Where the run is; every task follows it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Phase {
    pub(crate) round: u32,
    /// While set, senders send (open loop) on their schedule.
    pub(crate) send: Option<SendPlan>,
    /// Once set (after a round's acks are all in): every session reports when it has
    /// received each of its conversations up to these seqs.
    pub(crate) settle: Option<Arc<HashMap<ConversationId, Seq>>>,
    /// Storm: sessions that take part abort their sockets, reconnect and resume, and report
    /// when they reach these seqs.
    pub(crate) storm: Option<Storm>,
    pub(crate) stop: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct SendPlan {
    pub(crate) start: Instant,
    /// Deliveries before this count as in the window; no send is scheduled after it.
    pub(crate) window_end: Instant,
    pub(crate) per_sender_rate: f64,
}

#[derive(Debug, Clone)]
pub(crate) struct Storm {
    /// How long dropped clients stay away before reconnecting.
    pub(crate) offline: Duration,
    pub(crate) targets: Arc<HashMap<ConversationId, Seq>>,
}

/// Run-wide counters every task adds to; a round is the difference of two snapshots.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) sent: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) unsent: AtomicU64,
    pub(crate) delivered_in_window: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) send_lag_max_us: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> RoundCounts {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RoundCounts {
            sent: get(&self.sent),
            acked: get(&self.acked),
            errors: get(&self.errors),
            unsent: get(&self.unsent),
            delivered_in_window: get(&self.delivered_in_window),
            delivered: get(&self.delivered),
            send_lag_max_us: get(&self.send_lag_max_us),
        }
    }
}

/// One round's counts.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct RoundCounts {
    pub(crate) sent: u64,
    pub(crate) acked: u64,
    pub(crate) errors: u64,
    /// Sends that were due in the window but never went out (in-flight cap reached).
    pub(crate) unsent: u64,
    /// Messages that reached a session other than their sender's, before the window ended.
    pub(crate) delivered_in_window: u64,
    /// The same, in all (until the round settled).
    pub(crate) delivered: u64,
    /// The largest delay between a send's scheduled time and its write, in microseconds.
    pub(crate) send_lag_max_us: u64,
}

impl RoundCounts {
    /// What happened since `before` (the lag is a maximum: reset at each round's start).
    fn since(&self, before: &RoundCounts) -> RoundCounts {
        RoundCounts {
            sent: self.sent - before.sent,
            acked: self.acked - before.acked,
            errors: self.errors - before.errors,
            unsent: self.unsent - before.unsent,
            delivered_in_window: self.delivered_in_window - before.delivered_in_window,
            delivered: self.delivered - before.delivered,
            send_lag_max_us: self.send_lag_max_us,
        }
    }
}

pub(crate) enum Event {
    /// The first connection is authenticated (`ready` received).
    Ready { at: Instant },
    /// The first sync reached the end of every conversation: live delivery is on.
    Synced,
    /// The round's sending stopped and every send of this task has its reply.
    Drained { round: u32 },
    /// Every conversation reached its settle target.
    Settled { round: u32 },
    /// A resumed connection is authenticated again.
    Reconnected { at: Instant },
    /// After the storm's drop, every conversation reached its storm target.
    CaughtUp { at: Instant },
    /// The task gave up (it cannot connect); its report says why.
    Failed { conn: u32, error: String },
}

/// What the events said so far.
#[derive(Default)]
pub(crate) struct Progress {
    pub(crate) ready: Vec<Instant>,
    pub(crate) synced: usize,
    pub(crate) drained: HashMap<u32, usize>,
    pub(crate) settled: HashMap<u32, usize>,
    pub(crate) reconnected: Vec<Instant>,
    pub(crate) caught_up: Vec<Instant>,
    pub(crate) failed: Vec<(u32, String)>,
}

/// The result of one round of sending.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RoundResult {
    pub(crate) offered_rate: f64,
    pub(crate) secs: f64,
    pub(crate) sent_rate: f64,
    /// Deliveries (to sessions other than the sender's) in the window, per second.
    pub(crate) delivered_rate: f64,
    pub(crate) counts: RoundCounts,
    pub(crate) ack_latency: Summary,
    pub(crate) deliver_latency: Summary,
    /// Tasks whose sends were not all answered within the drain time.
    pub(crate) not_drained: usize,
    /// Sessions that did not receive everything acked within the settle time.
    pub(crate) not_settled: usize,
    pub(crate) settle_secs: f64,
}

/// The verdict of a run.
pub(crate) struct Verdict {
    pub(crate) violations: Vec<String>,
    pub(crate) n_violations: u64,
    /// Sends that never got a reply within the drain time: not a broken guarantee that the
    /// bench can prove, but the run could not be fully checked.
    pub(crate) incomplete: Vec<String>,
    pub(crate) reconnects: u64,
    pub(crate) connect_retries: u64,
    pub(crate) syncs: u64,
    pub(crate) close_codes: HashMap<u16, u64>,
    pub(crate) errors: HashMap<String, u64>,
    /// `(conversation, seq, ack time in ns since the epoch)` of every ack, with
    /// [`Options::record_acks`]; else empty.
    pub(crate) acked_at: Vec<(ConversationId, Seq, u64)>,
}

impl Verdict {
    pub(crate) fn ok(&self) -> bool {
        self.n_violations == 0 && self.incomplete.is_empty()
    }
}

/// Run-wide knobs.
pub(crate) struct Options {
    pub(crate) servers: Vec<String>,
    pub(crate) connect_concurrency: usize,
    pub(crate) connect_attempts: u32,
    pub(crate) body_bytes: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) sync_limit: u32,
    pub(crate) drain: Duration,
    pub(crate) record_acks: bool,
    pub(crate) deflate: bool,
}

pub(crate) struct Run {
    sh: Arc<Shared>,
    phase_tx: watch::Sender<Phase>,
    rx: mpsc::UnboundedReceiver<Event>,
    tasks: Vec<JoinHandle<ConnReport>>,
    pub(crate) progress: Progress,
    pub(crate) n: usize,
    drain: Duration,
    /// The counters when the current round began.
    round_start: RoundCounts,
}

impl Run {
    /// Spawns one task per plan; `convs` are every conversation senders may send to.
    pub(crate) fn start(opts: &Options, plans: Vec<Plan>, convs: &[ConversationId]) -> Run {
        let (phase_tx, phase_rx) = watch::channel(Phase::default());
        let (events, rx) = mpsc::unbounded_channel();
        let servers = opts
            .servers
            .iter()
            .map(|s| {
                let host = s.trim_end_matches('/').split_once("://").map_or(s.as_str(), |x| x.1);
                let host = host.split('/').next().unwrap_or(host).to_owned();
                let ws = format!("ws://{host}/v1/ws");
                (host, ws)
            })
            .collect();
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(4 * 1024)
            .write_buffer_size(16 * 1024)
            .max_message_size(Some(64 << 20));
        let sh = Arc::new(Shared {
            servers,
            ws_config,
            connect: Semaphore::new(opts.connect_concurrency.max(1)),
            connect_attempts: opts.connect_attempts.max(1),
            events,
            phase: phase_rx,
            ack_latency: Latency::new(),
            deliver_latency: Latency::new(),
            acked_max: convs.iter().map(|c| (*c, AtomicU64::new(0))).collect(),
            counters: Counters::default(),
            body_pad: "x".repeat(opts.body_bytes.saturating_sub(20)),
            max_in_flight: opts.max_in_flight.max(1),
            sync_limit: opts.sync_limit,
            record_acks: opts.record_acks,
            deflate: opts.deflate,
        });
        let n = plans.len();
        let tasks =
            plans.into_iter().map(|plan| tokio::spawn(conn::run(plan, sh.clone()))).collect();
        let round_start = RoundCounts::default();
        Run {
            sh,
            phase_tx,
            rx,
            tasks,
            progress: Progress::default(),
            n,
            drain: opts.drain,
            round_start,
        }
    }

    /// Tasks still alive.
    pub(crate) fn alive(&self) -> usize {
        self.n - self.progress.failed.len()
    }

    /// Waits until `cond` holds over the progress, or `timeout`. Returns whether it held.
    pub(crate) async fn until(&mut self, timeout: Duration, cond: impl Fn(&Run) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if cond(self) {
                return true;
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(ev)) => self.fold(ev),
                Ok(None) | Err(_) => return cond(self),
            }
        }
    }

    fn fold(&mut self, ev: Event) {
        let p = &mut self.progress;
        match ev {
            Event::Ready { at } => p.ready.push(at),
            Event::Synced => p.synced += 1,
            Event::Drained { round } => *p.drained.entry(round).or_default() += 1,
            Event::Settled { round } => *p.settled.entry(round).or_default() += 1,
            Event::Reconnected { at } => p.reconnected.push(at),
            Event::CaughtUp { at } => p.caught_up.push(at),
            Event::Failed { conn, error } => {
                if p.failed.len() < 5 {
                    eprintln!("connection {conn} failed: {error}");
                }
                p.failed.push((conn, error));
            }
        }
    }

    /// Changes the phase every task follows.
    pub(crate) fn set(&self, f: impl FnOnce(&mut Phase)) {
        self.phase_tx.send_modify(f);
    }

    /// The highest acked seq of every conversation, now.
    pub(crate) fn acked_targets(&self) -> Arc<HashMap<ConversationId, Seq>> {
        Arc::new(self.sh.acked_max.iter().map(|(c, s)| (*c, s.load(Ordering::Relaxed))).collect())
    }

    /// One round: `secs` of open-loop sending at `rate` msg/s in total over `n_senders`,
    /// then drain (every send answered) and settle (everything acked received everywhere).
    pub(crate) async fn round(
        &mut self,
        round: u32,
        rate: f64,
        secs: f64,
        n_senders: usize,
        settle: Duration,
    ) -> RoundResult {
        let window_end = self.begin_round(round, rate, secs, n_senders);
        self.until(window_end.saturating_duration_since(Instant::now()), |_| false).await;
        self.end_round(round, rate, secs, settle).await
    }

    /// Starts sending (200 ms from now, so that every task sees the phase before its first
    /// send is due); returns when the window ends.
    pub(crate) fn begin_round(
        &mut self,
        round: u32,
        rate: f64,
        secs: f64,
        n_senders: usize,
    ) -> Instant {
        let _ = (self.sh.ack_latency.take(), self.sh.deliver_latency.take());
        self.sh.counters.send_lag_max_us.store(0, Ordering::Relaxed);
        self.round_start = self.sh.counters.snapshot();
        let start = Instant::now() + Duration::from_millis(200);
        let window_end = start + Duration::from_secs_f64(secs);
        let per_sender_rate = rate / n_senders.max(1) as f64;
        self.set(|p| {
            p.round = round;
            p.send = Some(SendPlan { start, window_end, per_sender_rate });
            p.settle = None;
        });
        window_end
    }

    /// Stops sending, waits for every reply (drain), then for every session to receive
    /// everything acked (settle). `secs` is the window the rates are computed over.
    pub(crate) async fn end_round(
        &mut self,
        round: u32,
        rate: f64,
        secs: f64,
        settle: Duration,
    ) -> RoundResult {
        self.set(|p| p.send = None);
        let drain = self.drain;
        let drained = |r: &Run| r.progress.drained.get(&round).copied().unwrap_or(0) >= r.alive();
        self.until(drain, drained).await;
        let n_drained = self.progress.drained.get(&round).copied().unwrap_or(0);
        let targets = self.acked_targets();
        let settle_start = Instant::now();
        self.set(|p| p.settle = Some(targets));
        let settled = |r: &Run| r.progress.settled.get(&round).copied().unwrap_or(0) >= r.alive();
        self.until(settle, settled).await;
        let settle_secs = settle_start.elapsed().as_secs_f64();
        let n_settled = self.progress.settled.get(&round).copied().unwrap_or(0);
        let counts = self.sh.counters.snapshot().since(&self.round_start);
        let ack_latency = Summary::of(&self.sh.ack_latency.take());
        let deliver_latency = Summary::of(&self.sh.deliver_latency.take());
        RoundResult {
            offered_rate: rate,
            secs,
            sent_rate: counts.sent as f64 / secs,
            delivered_rate: counts.delivered_in_window as f64 / secs,
            counts,
            ack_latency,
            deliver_latency,
            not_drained: self.alive().saturating_sub(n_drained),
            not_settled: self.alive().saturating_sub(n_settled),
            settle_secs,
        }
    }

    /// Stops every task and checks what they received against what was acked.
    pub(crate) async fn finish(self) -> Verdict {
        self.set(|p| p.stop = true);
        let mut reports = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            match task.await {
                Ok(r) => reports.push(r),
                Err(err) => eprintln!("a connection task panicked: {err}"),
            }
        }
        verdict(&reports)
    }
}

/// The verdict over every task's report: live violations, missing replies, failures, and
/// the final comparison of what was received with what was acked.
pub(crate) fn verdict(reports: &[ConnReport]) -> Verdict {
    let mut v = Verdict {
        violations: Vec::new(),
        n_violations: 0,
        incomplete: Vec::new(),
        reconnects: 0,
        connect_retries: 0,
        syncs: 0,
        close_codes: HashMap::new(),
        errors: HashMap::new(),
        acked_at: Vec::new(),
    };
    let push = |v: &mut Verdict, line: String| {
        v.n_violations += 1;
        if v.violations.len() < 50 {
            v.violations.push(line);
        }
    };
    let mut acks: HashMap<i64, AckSum> = HashMap::new();
    let mut uncertain = std::collections::HashSet::new();
    for r in reports {
        for (conv, sum) in &r.acks {
            acks.entry(conv.0).or_default().merge(sum);
        }
        v.acked_at.extend_from_slice(&r.acked_at);
        v.reconnects += u64::from(r.reconnects);
        v.connect_retries += u64::from(r.connect_retries);
        v.syncs += r.syncs;
        for code in &r.close_codes {
            *v.close_codes.entry(*code).or_default() += 1;
        }
        for (code, n) in &r.errors {
            *v.errors.entry(code.clone()).or_default() += n;
        }
        for line in &r.violations {
            push(&mut v, line.clone());
        }
        v.n_violations += r.n_violations.saturating_sub(r.violations.len() as u64);
        if let Some(err) = &r.fatal {
            push(&mut v, format!("connection {}: failed: {err}", r.conn));
        }
        if r.no_reply > 0 {
            v.incomplete.push(format!(
                "connection {}: {} sends got no reply within the drain time",
                r.conn, r.no_reply
            ));
            uncertain.extend(r.unanswered.iter().map(|c| c.0));
        }
    }
    let received: Vec<check::Received<'_>> = reports
        .iter()
        .filter(|r| r.fatal.is_none())
        .flat_map(|r| {
            r.tracks.iter().map(move |(conv, track)| check::Received {
                conn: r.conn,
                conversation: conv.0,
                track,
            })
        })
        .collect();
    for line in check::verify(&acks, &uncertain, &received) {
        push(&mut v, line);
    }
    v
}
