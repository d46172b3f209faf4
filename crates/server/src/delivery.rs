//! The delivery engine shared by every transport (WebSocket, SSE, long-poll).
//!
//! A session's [`Deliverer`] turns what was queued for it ([`Outbound`]) into the frames the
//! client sees, and owns the per-conversation [`Delivery`] state that makes each conversation
//! a contiguous run of `seq`: entries already sent are dropped, a gap is filled from the
//! store before the entry after it, and `sync` runs here so that its reply and the live
//! stream cannot interleave wrongly (subscribe first — the session is registered before any
//! sync — read the store second, merge by `seq`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use natter_proto::{ConversationId, ConversationSummary, ReqId, Seq, ServerFrame, UserId};
use natter_store::Range;

use crate::cluster::Registration;
use crate::handlers::sync::{Delivery, sync};
use crate::router::Routed;
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

/// One produced frame; entries carry their conversation and seq (SSE ids, long-poll cursors).
pub(crate) struct Produced {
    pub(crate) frame: Utf8Bytes,
    pub(crate) entry: Option<(ConversationId, Seq)>,
}

pub(crate) struct Deliverer {
    state: AppState,
    user: UserId,
    convs: HashMap<ConversationId, Delivery>,
    /// Whether a sync ran: only then are conversations new to the session announced.
    synced: bool,
    /// When the routed entries delivered since the last `take_latencies` were routed.
    routed_at: Vec<Instant>,
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
    pub(crate) fn new(state: AppState, user: UserId, registered: Registration) -> Deliverer {
        Deliverer {
            state,
            user,
            convs: HashMap::new(),
            synced: false,
            routed_at: Vec::new(),
            registered,
            watched: HashSet::new(),
        }
    }

    /// Where each conversation's stream stands (what the client has been sent).
    pub(crate) fn cursors(&self) -> BTreeMap<ConversationId, Seq> {
        self.convs.iter().map(|(c, d)| (*c, d.upto())).collect()
    }

    /// Turns one queued item into frames.
    pub(crate) async fn process(&mut self, item: Outbound, out: &mut Vec<Produced>) {
        match item {
            Outbound::Frame(frame) => out.push(Produced { frame, entry: None }),
            Outbound::Entry(routed) => {
                let Routed { conversation, seq, ref frame, routed_at, membership } = *routed;
                if self.entry(out, frame, conversation, seq).await {
                    self.routed_at.push(routed_at);
                }
                if membership && !self.watched.contains(&conversation) {
                    self.rewatch(out, conversation).await;
                }
            }
            Outbound::Sync { req_id, cursors, limit } => {
                let frame = match self.sync(&cursors, limit).await {
                    Ok(conversations) => ServerFrame::Synced { req_id, conversations },
                    Err(err) => ServerFrame::Error { req_id: Some(req_id), error: err.body() },
                };
                out.push(Produced { frame: frame.to_json().into(), entry: None });
            }
            Outbound::CatchUp => self.catch_up(out).await,
        }
    }

    /// A sync against this session's state (see `handlers::sync`).
    pub(crate) async fn sync(
        &mut self,
        cursors: &BTreeMap<ConversationId, Seq>,
        limit: Option<u32>,
    ) -> crate::error::ApiResult<Vec<natter_proto::SyncConversation>> {
        self.registered.wait().await;
        let listed = self.watch_all_large().await?;
        let convs = Some(&mut self.convs);
        let res = sync(&self.state, self.user, cursors, limit, convs, listed).await;
        if res.is_ok() {
            self.synced = true;
        }
        res
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
        if let Some(Delivery::Live(upto)) = self.convs.get(&conv) {
            let upto = *upto;
            self.fill_gap(out, conv, upto, Seq::MAX).await;
        }
    }

    /// Sends whatever the store has beyond what this session sent, and announces
    /// conversations it does not know yet (the bus may have lost their entries).
    async fn catch_up(&mut self, out: &mut Vec<Produced>) {
        if !self.synced {
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
            let conv = summary.id;
            match self.convs.get(&conv) {
                Some(Delivery::Live(upto)) if summary.last_seq > *upto => {
                    let upto = *upto;
                    self.fill_gap(out, conv, upto, summary.last_seq + 1).await;
                }
                Some(_) => {}
                None => {
                    let _ = self.announce(out, conv, summary.last_seq + 1).await;
                }
            }
        }
    }

    /// Forgets what was sent and starts from the client's own cursors (long-poll: a
    /// response may have been lost, so the request's cursors are the truth).
    pub(crate) fn reset(&mut self) {
        self.convs.clear();
    }

    /// Records the delivery latency of the entries written since the last call.
    pub(crate) fn record_latencies(&mut self) {
        for at in self.routed_at.drain(..) {
            metrics::histogram!("natter_delivery_seconds").record(at.elapsed().as_secs_f64());
        }
    }

    /// Sends one live entry if it is next for its conversation, after filling any gap from
    /// the store. Returns whether the routed frame itself was sent.
    async fn entry(
        &mut self,
        out: &mut Vec<Produced>,
        frame: &Utf8Bytes,
        conv: ConversationId,
        seq: Seq,
    ) -> bool {
        let upto = match self.convs.get(&conv) {
            Some(Delivery::Live(upto)) => *upto,
            // Paging through a backlog: the next sync brings this entry.
            Some(Delivery::Behind(_)) => return false,
            // Before the first sync the client has not asked for anything yet.
            None if !self.synced => return false,
            // A conversation new to this session (created, or the user was added): announce
            // it with its latest page, as sync does.
            None => match self.announce(out, conv, seq).await {
                Some(upto) => upto,
                None => return false,
            },
        };
        if seq <= upto {
            return false;
        }
        if seq > upto + 1 && !self.fill_gap(out, conv, upto, seq).await {
            return false;
        }
        out.push(Produced { frame: frame.clone(), entry: Some((conv, seq)) });
        self.convs.insert(conv, Delivery::Live(seq));
        true
    }

    /// Starts a conversation new to the session with its latest page (which holds `seq`).
    /// Returns where its stream stands.
    async fn announce(
        &mut self,
        out: &mut Vec<Produced>,
        conv: ConversationId,
        seq: Seq,
    ) -> Option<Seq> {
        self.registered.wait().await;
        if self.watch_large(conv).await.is_err() {
            tracing::warn!(%conv, "cannot check the conversation's size");
        }
        let limit = self.state.cfg().limits.default_page;
        let page = self.state.store().entries(conv, Range::Latest, limit).await.ok()?;
        let mut upto = page.entries.first().map_or(seq, |e| e.seq).saturating_sub(1);
        // The whole page, `seq` and later ones included: a large conversation's entries
        // published before the subscription above would not arrive live.
        for entry in page.entries {
            upto = entry.seq;
            let frame = ServerFrame::Entry { entry }.to_json().into();
            out.push(Produced { frame, entry: Some((conv, upto)) });
        }
        self.convs.insert(conv, Delivery::Live(upto));
        Some(upto)
    }

    /// Sends entries `upto+1 .. seq-1` from the store. Returns false (and leaves the state
    /// where the store left it) if the store could not supply them.
    async fn fill_gap(
        &mut self,
        out: &mut Vec<Produced>,
        conv: ConversationId,
        mut upto: Seq,
        seq: Seq,
    ) -> bool {
        let max_page = self.state.cfg().limits.max_page;
        while upto + 1 < seq {
            let want = u32::try_from(seq - 1 - upto).unwrap_or(u32::MAX).min(max_page);
            let page = match self.state.store().entries(conv, Range::After(upto), want).await {
                Ok(page) if !page.entries.is_empty() => page,
                Ok(_) => return false,
                Err(err) => {
                    tracing::warn!(%conv, error = %err, "gap fill failed");
                    return false;
                }
            };
            for entry in page.entries {
                if entry.seq >= seq {
                    break;
                }
                upto = entry.seq;
                let frame = ServerFrame::Entry { entry }.to_json().into();
                out.push(Produced { frame, entry: Some((conv, upto)) });
            }
            self.convs.insert(conv, Delivery::Live(upto));
        }
        true
    }
}
