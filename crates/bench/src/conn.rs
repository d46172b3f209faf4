//! One connection: a single task that owns its WebSocket, sends on its schedule, reads and
//! checks everything it receives, and follows the run's [`Phase`].
//!
//! Lean on purpose, so that the server and not the bench is measured: one task, a 4 KiB read
//! buffer, sends drained into one flush per wake-up, and hot frames (`entry`, `ack`,
//! `error`) parsed into borrowed structs; only rare frames go through `natter-proto`'s types.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use natter_proto::{ClientFrame, ConversationId, EntryBody, Seq, ServerFrame, UserId};
use natter_wsdeflate::MaybeDeflate;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::check::{self, AckSum, Track};
use crate::run::{Event, Phase, Shared, Storm};
use crate::stats::{instant_of, now_ns, ns_of};

type Ws = WebSocketStream<MaybeDeflate<TcpStream>>;

/// Request ids of syncs (sends use their message number).
const SYNC_REQ_BASE: u64 = 1 << 60;
/// Live violations kept per connection (all are counted).
const KEEP_VIOLATIONS: usize = 10;

/// What one connection does.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Unique in the run; names this connection's messages.
    pub(crate) conn: u32,
    pub(crate) user: UserId,
    pub(crate) token: Arc<str>,
    /// Index into the run's servers.
    pub(crate) server: usize,
    /// The conversations this session is in (tracked and checked).
    pub(crate) convs: Vec<ConversationId>,
    /// The conversations it sends to, round-robin (empty: not a sender).
    pub(crate) send_to: Vec<ConversationId>,
    /// Where in the send interval this sender's ticks fall, in [0, 1): spreads senders.
    pub(crate) slot: f64,
    /// Sync after connecting (live delivery); without, the connection just idles.
    pub(crate) sync: bool,
    /// Takes part in the storm's drop.
    pub(crate) drops: bool,
}

/// What a connection task hands back when it stops.
pub(crate) struct ConnReport {
    pub(crate) conn: u32,
    pub(crate) tracks: Vec<(ConversationId, Track)>,
    pub(crate) acks: Vec<(ConversationId, AckSum)>,
    /// When each ack arrived (ns since the epoch), if the run records them
    /// ([`Shared::record_acks`]: the push scenario measures from a message's commit).
    pub(crate) acked_at: Vec<(ConversationId, Seq, u64)>,
    pub(crate) violations: Vec<String>,
    pub(crate) n_violations: u64,
    pub(crate) no_reply: u64,
    /// Conversations of the sends that never got a reply (their messages may be stored).
    pub(crate) unanswered: Vec<ConversationId>,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) reconnects: u32,
    pub(crate) connect_retries: u32,
    /// `sync` requests sent (one per connect, plus one per `has_more` page).
    pub(crate) syncs: u64,
    pub(crate) close_codes: Vec<u16>,
    pub(crate) fatal: Option<String>,
}

/// A send waiting for its reply.
struct Pending {
    conv: ConversationId,
    /// Scheduled send time (ns since the epoch): latencies count from here (open loop).
    sched_ns: u64,
}

struct Sending {
    interval_ns: u64,
    next_due_ns: u64,
    window_end_ns: u64,
    rr: usize,
}

struct Conn {
    plan: Plan,
    sh: Arc<Shared>,
    tracks: Vec<(ConversationId, Track)>,
    acks: Vec<(ConversationId, AckSum)>,
    acked_at: Vec<(ConversationId, Seq, u64)>,
    /// By request id (= message number).
    pending: HashMap<u64, Pending>,
    next_n: u64,
    sending: Option<Sending>,
    round: Option<u32>,
    window_end_ns: u64,
    draining: bool,
    drained_sent: bool,
    settle: Option<Arc<HashMap<ConversationId, Seq>>>,
    settled_sent: bool,
    storm: Option<Storm>,
    caught_up_sent: bool,
    sync_req: Option<u64>,
    n_syncs: u64,
    synced_once: bool,
    violations: Vec<String>,
    n_violations: u64,
    errors: BTreeMap<String, u64>,
    reconnects: u32,
    connect_retries: u32,
    close_codes: Vec<u16>,
}

/// Runs one connection until the phase says stop.
pub(crate) async fn run(plan: Plan, sh: Arc<Shared>) -> ConnReport {
    let mut c = Conn::new(plan, sh);
    let fatal = match c.main().await {
        Ok(()) => None,
        Err(err) => {
            let error = format!("{err:#}");
            let _ = c.sh.events.send(Event::Failed { conn: c.plan.conn, error: error.clone() });
            Some(error)
        }
    };
    c.report(fatal)
}

impl Conn {
    fn new(plan: Plan, sh: Arc<Shared>) -> Conn {
        let tracks = plan.convs.iter().map(|c| (*c, Track::default())).collect();
        let acks = plan.send_to.iter().map(|c| (*c, AckSum::default())).collect();
        Conn {
            plan,
            sh,
            tracks,
            acks,
            acked_at: Vec::new(),
            pending: HashMap::new(),
            next_n: 1,
            sending: None,
            round: None,
            window_end_ns: 0,
            draining: false,
            drained_sent: false,
            settle: None,
            settled_sent: false,
            storm: None,
            caught_up_sent: false,
            sync_req: None,
            n_syncs: 0,
            synced_once: false,
            violations: Vec::new(),
            n_violations: 0,
            errors: BTreeMap::new(),
            reconnects: 0,
            connect_retries: 0,
            close_codes: Vec::new(),
        }
    }

    fn report(self, fatal: Option<String>) -> ConnReport {
        ConnReport {
            conn: self.plan.conn,
            tracks: self.tracks,
            acks: self.acks,
            acked_at: self.acked_at,
            violations: self.violations,
            n_violations: self.n_violations,
            no_reply: self.pending.len() as u64,
            unanswered: self.pending.values().map(|p| p.conv).collect(),
            errors: self.errors,
            reconnects: self.reconnects,
            connect_retries: self.connect_retries,
            syncs: self.n_syncs,
            close_codes: self.close_codes,
            fatal,
        }
    }

    fn violate(&mut self, what: impl std::fmt::Display) {
        self.n_violations += 1;
        if self.violations.len() < KEEP_VIOLATIONS {
            self.violations
                .push(format!("connection {} (user {}): {what}", self.plan.conn, self.plan.user));
        }
    }

    async fn main(&mut self) -> anyhow::Result<()> {
        let mut ws = self.connect().await?;
        let _ = self.sh.events.send(Event::Ready { at: Instant::now() });
        if self.plan.sync {
            self.send_sync(&mut ws).await?;
        }
        let mut phase_rx = self.sh.phase.clone();
        let sleep = tokio::time::sleep(Duration::from_secs(86_400));
        tokio::pin!(sleep);
        let mut armed_for = u64::MAX;
        loop {
            tokio::select! {
                biased;
                changed = phase_rx.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let phase = phase_rx.borrow_and_update().clone();
                    if phase.stop {
                        break;
                    }
                    if let Some(offline) = self.apply(phase) {
                        // Abort: an RST, as a lost network or a killed app leaves it.
                        let _ = ws.get_ref().get_ref().set_zero_linger();
                        drop(ws);
                        tokio::time::sleep(offline).await;
                        ws = self.resume().await?;
                    }
                }
                // Only while a send may go out: at the in-flight cap the next reply wakes
                // the task instead (a due timer would fire again at once: a busy loop).
                () = &mut sleep, if self.sending.is_some() && self.pending.len() < self.sh.max_in_flight => {}
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(text))) => self.on_text(&text, &mut ws).await?,
                    Some(Ok(Message::Close(frame))) => {
                        self.close_codes.push(frame.map_or(1005, |f| u16::from(f.code)));
                        drop(ws);
                        ws = self.resume().await?;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => {
                        drop(ws);
                        ws = self.resume().await?;
                    }
                },
            }
            self.pump(&mut ws).await?;
            if let Some(s) = &self.sending
                && s.next_due_ns != armed_for
            {
                armed_for = s.next_due_ns;
                sleep.as_mut().reset(tokio::time::Instant::from_std(instant_of(armed_for)));
            }
            self.progress();
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
        Ok(())
    }

    /// Connects (retrying with backoff) and waits for `ready`.
    async fn connect(&mut self) -> anyhow::Result<Ws> {
        let _permit = self.sh.connect.acquire().await.context("connect semaphore closed")?;
        let (addr, url) = &self.sh.servers[self.plan.server % self.sh.servers.len()];
        let mut backoff = Duration::from_millis(50);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.connect_once(addr, url).await {
                Ok(ws) => return Ok(ws),
                Err(err) if attempt >= self.sh.connect_attempts => {
                    return Err(err.context(format!("connecting to {url} ({attempt} attempts)")));
                }
                Err(_) => {
                    self.connect_retries += 1;
                    // Jitter from the connection index: reconnecting clients spread out.
                    let jitter = (u64::from(self.plan.conn) * 7919 + u64::from(attempt)) % 50;
                    tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    async fn connect_once(&self, addr: &str, url: &str) -> anyhow::Result<Ws> {
        let handshake = async {
            let tcp = TcpStream::connect(addr).await.context("tcp connect")?;
            tcp.set_nodelay(true)?;
            let bearer = format!("Bearer {}", self.plan.token);
            let mut ws = if self.sh.deflate {
                let (ws, _) = natter_wsdeflate::client::connect(
                    tcp,
                    addr,
                    "/v1/ws?compress=deflate",
                    &[("Authorization", &bearer)],
                    // Inflate up to what tungstenite accepts: the server's replies (sync
                    // pages) may be far larger than the frames it accepts.
                    natter_wsdeflate::DeflateConfig {
                        max_message_bytes: self.sh.ws_config.max_message_size.unwrap_or(64 << 20),
                        ..natter_wsdeflate::DeflateConfig::default()
                    },
                    Some(self.sh.ws_config),
                )
                .await
                .context("websocket handshake with permessage-deflate")?;
                ws
            } else {
                let mut req = url.into_client_request()?;
                req.headers_mut().insert("authorization", bearer.parse()?);
                let (ws, _) = tokio_tungstenite::client_async_with_config(
                    req,
                    MaybeDeflate::Plain(tcp),
                    Some(self.sh.ws_config),
                )
                .await
                .context("websocket handshake")?;
                ws
            };
            match ws.next().await {
                Some(Ok(Message::Text(text))) => match serde_json::from_str(&text)? {
                    ServerFrame::Ready { .. } => Ok(ws),
                    other => bail!("expected ready, got {other:?}"),
                },
                other => bail!("expected ready, got {other:?}"),
            }
        };
        tokio::time::timeout(Duration::from_secs(30), handshake)
            .await
            .map_err(|_| anyhow!("no ready within 30 s"))?
    }

    /// Reconnects after the connection ended, re-sends unanswered sends with their original
    /// `client_msg_id` (the server answers a retry with the original ack) and resumes with
    /// `sync` from the session's cursors.
    async fn resume(&mut self) -> anyhow::Result<Ws> {
        let mut ws = self.connect().await?;
        self.reconnects += 1;
        let _ = self.sh.events.send(Event::Reconnected { at: Instant::now() });
        let mut retry: Vec<(u64, ConversationId, u64)> =
            self.pending.iter().map(|(n, p)| (*n, p.conv, p.sched_ns)).collect();
        retry.sort_unstable();
        for (n, conv, sched_ns) in retry {
            ws.feed(send_frame(&self.plan, &self.sh, n, conv, sched_ns)).await?;
        }
        if self.plan.sync {
            self.sync_req = None;
            self.send_sync(&mut ws).await?;
        } else {
            ws.flush().await?;
        }
        Ok(ws)
    }

    /// Asks for everything after the session's cursors (0 for conversations not seen yet:
    /// the whole log, paged).
    async fn send_sync(&mut self, ws: &mut Ws) -> anyhow::Result<()> {
        self.n_syncs += 1;
        let req_id = SYNC_REQ_BASE + self.n_syncs;
        let cursors = self.tracks.iter().map(|(c, t)| (*c, t.last)).collect();
        let frame = ClientFrame::Sync { req_id, cursors, limit: Some(self.sh.sync_limit) };
        ws.send(Message::Text(serde_json::to_string(&frame)?.into())).await?;
        self.sync_req = Some(req_id);
        Ok(())
    }

    /// Follows a new phase. Returns `Some(offline time)` when this session must drop its
    /// socket and resume after that long (the storm).
    fn apply(&mut self, phase: Phase) -> Option<Duration> {
        match (&phase.send, self.round) {
            (Some(plan), r) if r != Some(phase.round) => {
                self.round = Some(phase.round);
                self.draining = false;
                self.drained_sent = false;
                self.settled_sent = false;
                self.settle = None;
                self.window_end_ns = ns_of(plan.window_end);
                if !self.plan.send_to.is_empty() && plan.per_sender_rate > 0.0 {
                    let interval_ns = (1e9 / plan.per_sender_rate).max(1.0) as u64;
                    let offset = (interval_ns as f64 * self.plan.slot) as u64;
                    self.sending = Some(Sending {
                        interval_ns,
                        next_due_ns: ns_of(plan.start) + offset,
                        window_end_ns: self.window_end_ns,
                        rr: self.plan.conn as usize,
                    });
                }
            }
            (None, Some(_)) if !self.draining => {
                self.draining = true;
                if let Some(s) = self.sending.take()
                    && s.next_due_ns < s.window_end_ns
                {
                    let unsent = (s.window_end_ns - s.next_due_ns).div_ceil(s.interval_ns);
                    self.sh.counters.unsent.fetch_add(unsent, Ordering::Relaxed);
                }
            }
            _ => {}
        }
        if let Some(targets) = phase.settle
            && self.settle.is_none()
        {
            self.settle = Some(targets);
        }
        if let Some(storm) = phase.storm
            && self.storm.is_none()
        {
            let offline = storm.offline;
            self.storm = Some(storm);
            return self.plan.drops.then_some(offline);
        }
        None
    }

    /// Sends whatever is due (and allowed by the in-flight cap), then flushes once.
    async fn pump(&mut self, ws: &mut Ws) -> anyhow::Result<()> {
        let Some(s) = &mut self.sending else { return Ok(()) };
        let now = now_ns();
        if s.next_due_ns > now {
            return Ok(());
        }
        let mut fed = false;
        while s.next_due_ns <= now
            && s.next_due_ns < s.window_end_ns
            && self.pending.len() < self.sh.max_in_flight
        {
            let sched_ns = s.next_due_ns;
            s.next_due_ns += s.interval_ns;
            let conv = self.plan.send_to[s.rr % self.plan.send_to.len()];
            s.rr += 1;
            let n = self.next_n;
            self.next_n += 1;
            self.pending.insert(n, Pending { conv, sched_ns });
            let c = &self.sh.counters;
            c.sent.fetch_add(1, Ordering::Relaxed);
            c.send_lag_max_us.fetch_max((now - sched_ns) / 1000, Ordering::Relaxed);
            ws.feed(send_frame(&self.plan, &self.sh, n, conv, sched_ns)).await?;
            fed = true;
        }
        if s.next_due_ns >= s.window_end_ns {
            // The window's schedule is done; the phase will end the round.
            s.next_due_ns = u64::MAX - 1;
        }
        if fed {
            ws.flush().await?;
        }
        Ok(())
    }

    /// Reports round ends, settling and catching up once their conditions hold.
    fn progress(&mut self) {
        if self.draining && !self.drained_sent && self.pending.is_empty() {
            self.drained_sent = true;
            let _ = self.sh.events.send(Event::Drained { round: self.round.unwrap_or(0) });
        }
        if !self.settled_sent
            && let Some(targets) = &self.settle
            && self.reached(targets)
        {
            self.settled_sent = true;
            let _ = self.sh.events.send(Event::Settled { round: self.round.unwrap_or(0) });
        }
        if self.plan.drops
            && !self.caught_up_sent
            && let Some(storm) = &self.storm
            && self.reached(&storm.targets)
        {
            self.caught_up_sent = true;
            let _ = self.sh.events.send(Event::CaughtUp { at: Instant::now() });
        }
    }

    fn reached(&self, targets: &HashMap<ConversationId, Seq>) -> bool {
        self.tracks.iter().all(|(c, t)| t.last >= targets.get(c).copied().unwrap_or(0))
    }

    async fn on_text(&mut self, text: &str, ws: &mut Ws) -> anyhow::Result<()> {
        let lean: Lean<'_> = match serde_json::from_str(text) {
            Ok(lean) => lean,
            // Escaped strings cannot be borrowed: fall back to the full types.
            Err(_) => return self.on_full(text, ws).await,
        };
        match lean.ty.as_ref() {
            "entry" => {
                let Some(e) = lean.entry else { bail!("entry frame without entry: {text}") };
                let msg = e.client_msg_id.as_deref().and_then(check::parse_msg_id);
                let sent_ns = e.body.as_deref().and_then(body_ns);
                self.on_entry(ConversationId(e.conversation), e.seq, msg, sent_ns);
            }
            "ack" => {
                let (Some(req_id), Some(conv), Some(seq)) =
                    (lean.req_id, lean.conversation, lean.seq)
                else {
                    bail!("malformed ack: {text}");
                };
                self.on_ack(req_id, ConversationId(conv), seq);
            }
            "error" => {
                let code = lean.code.as_deref().unwrap_or("?").to_owned();
                self.on_error(lean.req_id, code, text, ws).await?;
            }
            "receipt" | "typing" | "presence" | "pong" | "ok" => {}
            _ => return self.on_full(text, ws).await,
        }
        Ok(())
    }

    async fn on_full(&mut self, text: &str, ws: &mut Ws) -> anyhow::Result<()> {
        let frame: ServerFrame =
            serde_json::from_str(text).with_context(|| format!("unreadable frame: {text}"))?;
        match frame {
            ServerFrame::Synced { req_id, conversations, mut more } => {
                if self.sync_req != Some(req_id) {
                    self.violate(format!("unexpected synced reply {req_id}"));
                    return Ok(());
                }
                self.sync_req = None;
                for item in conversations {
                    let conv = item.conversation.id;
                    more |= item.has_more;
                    for entry in item.entries {
                        let msg = entry.client_msg_id.as_deref().and_then(check::parse_msg_id);
                        let sent_ns = match &entry.body {
                            EntryBody::Message { body, .. } => body_ns(body),
                            _ => None,
                        };
                        self.on_entry(conv, entry.seq, msg, sent_ns);
                    }
                }
                if more {
                    self.send_sync(ws).await?;
                } else if !self.synced_once {
                    self.synced_once = true;
                    let _ = self.sh.events.send(Event::Synced);
                }
            }
            ServerFrame::Entry { entry } => {
                let msg = entry.client_msg_id.as_deref().and_then(check::parse_msg_id);
                let sent_ns = match &entry.body {
                    EntryBody::Message { body, .. } => body_ns(body),
                    _ => None,
                };
                self.on_entry(entry.conversation, entry.seq, msg, sent_ns);
            }
            ServerFrame::Ack { req_id, ack } => self.on_ack(req_id, ack.conversation, ack.seq),
            ServerFrame::Error { req_id, error } => {
                let code = serde_json::to_value(error.code)?.as_str().unwrap_or("?").to_owned();
                self.on_error(req_id, code, text, ws).await?;
            }
            _ => {}
        }
        Ok(())
    }

    fn on_entry(
        &mut self,
        conv: ConversationId,
        seq: Seq,
        msg: Option<(u32, u64)>,
        sent_ns: Option<u64>,
    ) {
        let Some(slot) = self.tracks.iter().position(|(c, _)| *c == conv) else {
            self.violate(format!("received seq {seq} of conversation {conv}, which it is not in"));
            return;
        };
        if let Err(v) = self.tracks[slot].1.on_entry(seq, msg) {
            self.violate(format!("conversation {conv}: {v}"));
        }
        if let Some((sender, _)) = msg
            && sender != self.plan.conn
        {
            let now = now_ns();
            let c = &self.sh.counters;
            c.delivered.fetch_add(1, Ordering::Relaxed);
            if now < self.window_end_ns {
                c.delivered_in_window.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(sent) = sent_ns {
                self.sh.deliver_latency.record(self.plan.conn, now.saturating_sub(sent));
            }
        }
    }

    fn on_ack(&mut self, req_id: u64, conv: ConversationId, seq: Seq) {
        let Some(p) = self.pending.remove(&req_id) else {
            self.violate(format!("ack for request {req_id}, which is not pending (a duplicate?)"));
            return;
        };
        if p.conv != conv {
            self.violate(format!(
                "ack for request {req_id} names conversation {conv}, not {}",
                p.conv
            ));
        }
        let now = now_ns();
        self.sh.ack_latency.record(self.plan.conn, now.saturating_sub(p.sched_ns));
        self.sh.counters.acked.fetch_add(1, Ordering::Relaxed);
        if let Some((_, sum)) = self.acks.iter_mut().find(|(c, _)| *c == p.conv) {
            sum.on_ack(seq, self.plan.conn, req_id);
        }
        if let Some(max) = self.sh.acked_max.get(&p.conv) {
            max.fetch_max(seq, Ordering::Relaxed);
        }
        if self.sh.record_acks {
            self.acked_at.push((p.conv, seq, now));
        }
    }

    async fn on_error(
        &mut self,
        req_id: Option<u64>,
        code: String,
        text: &str,
        ws: &mut Ws,
    ) -> anyhow::Result<()> {
        match req_id {
            Some(id) if self.pending.remove(&id).is_some() => {
                // Not stored; the server may refuse under load (`unavailable`).
                self.sh.counters.errors.fetch_add(1, Ordering::Relaxed);
                *self.errors.entry(code).or_default() += 1;
            }
            Some(id) if self.sync_req == Some(id) => {
                self.violate(format!("sync failed: {text}"));
                self.send_sync(ws).await?;
            }
            _ => {
                *self.errors.entry(code).or_default() += 1;
                self.violate(format!("unexpected error frame: {text}"));
            }
        }
        Ok(())
    }
}

/// Message `n` of this connection: its number is its request id, its scheduled send time
/// (20 digits) starts its body.
fn send_frame(plan: &Plan, sh: &Shared, n: u64, conv: ConversationId, sched_ns: u64) -> Message {
    let frame = ClientFrame::Send {
        req_id: n,
        conversation: conv,
        client_msg_id: check::msg_id(plan.conn, n),
        body: format!("{sched_ns:020}{}", sh.body_pad),
        reply_to: None,
        attachments: Vec::new(),
        mentions: Vec::new(),
    };
    Message::Text(serde_json::to_string(&frame).expect("frames serialize").into())
}

/// The send time a bench body starts with.
fn body_ns(body: &str) -> Option<u64> {
    body.get(..20)?.parse().ok()
}

/// The hot frames, borrowed: `entry`, `ack` and `error`. Other fields are skipped.
#[derive(Deserialize)]
struct Lean<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(default)]
    req_id: Option<u64>,
    #[serde(default)]
    conversation: Option<i64>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default, borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    entry: Option<LeanEntry<'a>>,
}

#[derive(Deserialize)]
struct LeanEntry<'a> {
    conversation: i64,
    seq: u64,
    #[serde(default, borrow)]
    client_msg_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    body: Option<Cow<'a, str>>,
}
