//! The delivery engine shared by every transport (WebSocket, SSE, long-poll).
//!
//! A session's [`Deliverer`] turns what was queued for it ([`Outbound`]) into the frames the
//! client sees. What to send, in which order, is decided by its [`Sequencer`] (which keeps
//! each conversation a contiguous run of `seq`: entries already sent are dropped, a gap is
//! filled from the store before the entry after it); the deliverer is the thin async driver
//! around it: it performs the store reads the sequencer asks for, feeds the pages back,
//! frames what it emits, and keeps the cluster-mode subscriptions. `sync` runs here so that
//! its reply and the live stream cannot interleave wrongly (subscribe first — the session is
//! registered before any sync — read the store second, merge by `seq`).

mod sync;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use natter_proto::{ConversationId, ConversationSummary, Entry, ReqId, Seq, ServerFrame, UserId};
use tokio_tungstenite::tungstenite::Utf8Bytes;

pub(crate) use self::sync::{SyncReply, json_len, sync};
use crate::cluster::Registration;
use crate::router::Routed;
use crate::sequencer::{Emit, Pages, Read, Sequencer};
use crate::state::AppState;

/// What a session is asked to send.
pub(crate) enum Outbound {
    /// A ready-made frame (a reply, an error, a receipt, typing, presence).
    Frame(Utf8Bytes),
    /// A committed entry, shared by all recipients.
    Entry(Arc<Routed>),
    /// Run a sync here, so the reply and the live stream are one ordered sequence.
    Sync { req_id: ReqId, cursors: BTreeMap<ConversationId, Seq>, limit: Option<u32> },
    /// Bus messages may have been lost (cluster mode): read what is missing from the store.
    CatchUp,
}

impl Outbound {
    /// What the item holds in its session's queue, in bytes (`outbound_queue_bytes`). An
    /// entry's frame is shared by its recipients, but a queued one keeps it alive; requests
    /// count a rough size of their own.
    pub(crate) fn size(&self) -> usize {
        match self {
            Outbound::Frame(frame) => frame.len(),
            Outbound::Entry(routed) => routed.frame.len(),
            Outbound::Sync { cursors, .. } => 64 + 24 * cursors.len(),
            Outbound::CatchUp => 16,
        }
    }
}

/// One produced frame; entries carry their conversation and seq (SSE ids, long-poll cursors).
pub(crate) struct Produced {
    pub(crate) frame: Utf8Bytes,
    pub(crate) entry: Option<(ConversationId, Seq)>,
}

pub(crate) struct Deliverer {
    state: AppState,
    user: UserId,
    sequencer: Sequencer,
    /// What the sequencer emitted and is not framed yet; kept so that a live entry, the
    /// common case, costs no allocation here.
    emitted: Vec<Emit>,
    /// When each live entry written since the last `record_latencies` was routed, and its
    /// commit time (ms since the epoch).
    routed_at: Vec<(Instant, i64)>,
    transport: &'static str,
    /// Awaited before the first store read (cluster mode: the registry knows the session).
    registered: Registration,
    /// Large conversations whose bus channel this session keeps the node subscribed to.
    watched: HashSet<ConversationId>,
}

impl Drop for Deliverer {
    fn drop(&mut self) {
        for conv in self.watched.drain() {
            self.state.cluster().unwatch_conv(conv);
        }
    }
}

impl Deliverer {
    /// `transport` (`ws`, `sse`, `poll`) labels its metrics.
    pub(crate) fn new(
        state: AppState,
        user: UserId,
        registered: Registration,
        transport: &'static str,
    ) -> Deliverer {
        let limits = &state.cfg().limits;
        let pages = Pages { latest: limits.default_page, max: limits.max_page };
        Deliverer {
            sequencer: Sequencer::new(pages),
            state,
            user,
            emitted: Vec::new(),
            routed_at: Vec::new(),
            registered,
            transport,
            watched: HashSet::new(),
        }
    }

    /// Where each conversation's stream stands (what the client has been sent).
    pub(crate) fn cursors(&self) -> BTreeMap<ConversationId, Seq> {
        self.sequencer.cursors()
    }

    /// The client's `cursors` for what a sync did not reach (its budget ran out first),
    /// overlaid with where the session's streams stand: what the next catch-up sync starts
    /// from (a conversation the client listed must not turn into a new one).
    pub(crate) fn next_cursors(
        &self,
        cursors: &BTreeMap<ConversationId, Seq>,
    ) -> BTreeMap<ConversationId, Seq> {
        let mut next = self.sequencer.cursors();
        for conv in self.sequencer.unreached() {
            if let Some(&seq) = cursors.get(&conv) {
                next.insert(conv, seq);
            }
        }
        next
    }

    /// Turns one queued item into frames.
    pub(crate) async fn process(&mut self, item: Outbound, out: &mut Vec<Produced>) {
        match item {
            Outbound::Frame(frame) => out.push(Produced { frame, entry: None }),
            Outbound::Entry(routed) => {
                let Routed { conversation, seq, ref frame, routed_at, committed_ms, membership } =
                    *routed;
                let next = self.sequencer.live(conversation, seq, &mut self.emitted);
                if self.drive(next, out, Some(frame)).await {
                    self.routed_at.push((routed_at, committed_ms));
                }
                if membership && !self.watched.contains(&conversation) {
                    self.rewatch(out, conversation).await;
                }
            }
            Outbound::Sync { req_id, cursors, limit } => {
                let frame = match self.sync(&cursors, limit).await {
                    Ok(SyncReply { conversations, more }) => {
                        ServerFrame::Synced { req_id, conversations, more }
                    }
                    Err(err) => ServerFrame::Error { req_id: Some(req_id), error: err.body() },
                };
                out.push(Produced { frame: frame.to_json().into(), entry: None });
            }
            Outbound::CatchUp => self.catch_up(out).await,
        }
    }

    /// A sync against this session's state (see [`sync`]).
    pub(crate) async fn sync(
        &mut self,
        cursors: &BTreeMap<ConversationId, Seq>,
        limit: Option<u32>,
    ) -> crate::error::ApiResult<SyncReply> {
        self.registered.wait().await;
        if !self.sequencer.has_synced() && cursors.values().any(|&seq| seq > 0) {
            metrics::counter!("natter_resumes_total", "transport" => self.transport).increment(1);
        }
        let listed = self.watch_all_large().await?;
        let sequencer = Some(&mut self.sequencer);
        sync(&self.state, self.user, cursors, limit, sequencer, listed).await
    }

    /// Cluster mode, before a sync: subscribes the node to the channels of the user's large
    /// conversations, so that no entry committed after the sync's reads can miss this
    /// session. Returns the memberships it read when the sync may use them (nothing new was
    /// subscribed: what was committed after this read reaches the session anyway); after a
    /// new subscription the sync reads them again.
    async fn watch_all_large(
        &mut self,
    ) -> crate::error::ApiResult<Option<Vec<ConversationSummary>>> {
        if self.state.cluster().alone() {
            return Ok(None);
        }
        let listed = self.state.store().memberships(self.user).await?;
        let mut subscribed = false;
        for summary in &listed {
            subscribed |= self.watch_large(summary.id).await?;
        }
        Ok((!subscribed).then_some(listed))
    }

    /// Cluster mode: subscribes the node to `conv`'s channel if it is large and this session
    /// does not hold it yet. Returns whether it subscribed now.
    async fn watch_large(&mut self, conv: ConversationId) -> crate::error::ApiResult<bool> {
        let cluster = self.state.cluster();
        if cluster.alone() || self.watched.contains(&conv) {
            return Ok(false);
        }
        // A refused subscription is tried again by the next sync or membership change; the
        // catch-up asked for meanwhile brings what it missed.
        let threshold = self.state.cfg().limits.large_group_threshold;
        let large = self.state.members().get(conv).await?.len() > threshold;
        let subscribed = large && cluster.watch_conv(conv).await;
        if subscribed {
            self.watched.insert(conv);
        }
        Ok(subscribed)
    }

    /// After a membership change (cluster mode): a conversation that grew past the large-group
    /// threshold is published on its own channel from now on. Subscribe, then read from the
    /// store whatever was published there before the subscription.
    async fn rewatch(&mut self, out: &mut Vec<Produced>, conv: ConversationId) {
        if !matches!(self.watch_large(conv).await, Ok(true)) {
            return;
        }
        let next = self.sequencer.resubscribed(conv);
        self.drive(next, out, None).await;
    }

    /// Sends whatever the store has beyond what this session sent, and announces
    /// conversations it does not know yet (the bus may have lost their entries).
    async fn catch_up(&mut self, out: &mut Vec<Produced>) {
        if !self.sequencer.has_synced() {
            return;
        }
        let memberships = match self.state.store().memberships(self.user).await {
            Ok(list) => list,
            Err(err) => {
                tracing::warn!(error = %err, "catch-up failed; the next entry fills the gap");
                return;
            }
        };
        for summary in memberships {
            let next = self.sequencer.catch_up(summary.id, summary.last_seq);
            self.drive(next, out, None).await;
        }
    }

    /// Forgets what was sent and starts from the client's own cursors (long-poll: a
    /// response may have been lost, so the request's cursors are the truth).
    pub(crate) fn reset(&mut self) {
        self.sequencer.reset();
    }

    /// Records the delivery latency of the entries written since the last call.
    pub(crate) fn record_latencies(&mut self) {
        let now_ms = crate::now_ms();
        for (at, committed_ms) in self.routed_at.drain(..) {
            metrics::histogram!("natter_delivery_seconds").record(at.elapsed().as_secs_f64());
            let since_commit = now_ms.saturating_sub(committed_ms).max(0) as f64 / 1000.0;
            metrics::histogram!("natter_commit_deliver_seconds").record(since_commit);
        }
    }

    /// Frames what the sequencer emits and performs the reads it asks for, feeding each page
    /// back, until it asks for nothing more. `live`: the frame of the live entry just given
    /// to it. Returns whether that frame was sent.
    async fn drive(
        &mut self,
        mut next: Option<Read>,
        out: &mut Vec<Produced>,
        live: Option<&Utf8Bytes>,
    ) -> bool {
        let mut sent_live = false;
        loop {
            for emit in self.emitted.drain(..) {
                let produced = match emit {
                    Emit::Stored(entry) => {
                        let key = (entry.conversation, entry.seq);
                        Produced {
                            frame: ServerFrame::Entry { entry: *entry }.to_json().into(),
                            entry: Some(key),
                        }
                    }
                    Emit::Live { conv, seq } => {
                        sent_live = true;
                        let frame = live.expect("only a live entry's input emits it").clone();
                        Produced { frame, entry: Some((conv, seq)) }
                    }
                };
                out.push(produced);
            }
            let Some(read) = next else { break };
            let entries = self.read(read).await;
            next = self.sequencer.page(read, entries, &mut self.emitted);
        }
        // Back to small after a long gap fill: an idle session should not keep a page's room.
        if self.emitted.capacity() > 64 {
            self.emitted.shrink_to(16);
        }
        sent_live
    }

    /// One store read the sequencer asked for; `None` if the store failed.
    async fn read(&mut self, read: Read) -> Option<Vec<Entry>> {
        let conv = read.conv;
        if read.announces() {
            self.registered.wait().await;
            if self.watch_large(conv).await.is_err() {
                tracing::warn!(%conv, "cannot check the conversation's size");
            }
        }
        match self.state.store().entries(conv, read.range, read.limit).await {
            Ok(mut page) => {
                self.state.media().sign_entries(&mut page.entries, self.user);
                Some(page.entries)
            }
            Err(err) => {
                tracing::warn!(%conv, error = %err, "store read for delivery failed");
                None
            }
        }
    }
}
