//! This node's part in the cluster: registry, presence and the bus, through the
//! [`natter_cluster::Bus`] port. A single node is a cluster of one on the in-process bus;
//! cluster mode uses the Redis bus. The code path is the same.
//!
//! - **Registry.** A user's first session here adds this node to the user's registry entry
//!   before the session reads anything from the store (so no entry committed after that
//!   read can miss it); the last one ending removes it. One task applies these in order, in
//!   batches, and checks at apply time that a removal is still right.
//! - **Publishing.** The router hands each committed batch to the [`Port`] after its local
//!   fan-out; the publisher task sends entries of small conversations once to each node
//!   holding a member (looked up in the registry), entries of large ones once to the
//!   conversation's topic (but membership changes to the members' nodes, so that a node not
//!   yet watching the topic learns of them). Receipts and typing go to the nodes of their
//!   recipients; local presence changes are written to the directory and broadcast. The
//!   publisher has its own bounded queue: fan-out never waits on the bus and never holds up
//!   an ack.
//! - **Receiving.** Entries and frames from the bus go to the router's inbox ([`Inbound`])
//!   and are fanned out like local ones; each session's deliverer fills any `seq` gap from
//!   the store, so a lost or late bus message costs latency, never order or completeness.
//! - **Subscriptions.** Large conversations' topics are held while some session here wants
//!   them; one task owns the counts and the subscribe calls (no lock is held across a bus
//!   call).
//! - **Trouble.** Pub/sub is at-most-once. When this node's subscriber loses the bus, its
//!   publishes fail, or its inbound queue overflows, it asks every node (itself included)
//!   to catch up once the bus answers again: each session reads what it missed from the
//!   store, member lists are reloaded and presence is re-read.
//! - **Revocation.** A logout ends the device's sessions here and broadcasts `Revoked`;
//!   every other node ends that device's sessions it holds.
//! - **Heartbeat.** Every `heartbeat_ms` the node refreshes its entries (they lapse after
//!   `registry_ttl_ms`) and sweeps those of nodes that stopped heart-beating.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use natter_cluster::{Bus, BusEvent, BusReceiver, Envelope, Topic};
use natter_proto::{Committed, ConversationId, UserId};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use crate::port::{Inbound, Port, Publish};
use crate::presence::LocalPresence;
use crate::state::AppState;

/// Bus operations get this long before they count as failed.
const BUS_TIMEOUT: Duration = Duration::from_secs(3);
/// Queued items one publisher or registry round takes at most.
const ROUND: usize = 1024;
/// Entries in one bus message at most.
const MAX_ENTRIES_PER_MESSAGE: usize = 256;

/// Waits for a session's registration: resolves once the registry routes the user's
/// entries to this node.
#[derive(Default)]
pub(crate) struct Registration(Option<oneshot::Receiver<()>>);

impl Registration {
    pub(crate) async fn wait(&mut self) {
        if let Some(rx) = self.0.take() {
            let _ = rx.await;
        }
    }
}

enum RegistryOp {
    Add(UserId, oneshot::Sender<()>),
    Remove(UserId),
}

enum WatchOp {
    /// One more session wants a large conversation's topic; answers whether it holds.
    Add(ConversationId, oneshot::Sender<bool>),
    Remove(ConversationId),
}

pub(crate) struct Cluster {
    bus: Arc<dyn Bus>,
    // Unbounded, yet bounded by the sessions: one Add per session start, one Remove per end.
    registry_tx: mpsc::UnboundedSender<RegistryOp>,
    // Unbounded, yet bounded by the sessions' watches: each Remove follows an Add that held.
    watch_tx: mpsc::UnboundedSender<WatchOp>,
}

/// The receiving ends the cluster's tasks consume.
pub(crate) struct ClusterTasks {
    registry_rx: mpsc::UnboundedReceiver<RegistryOp>,
    watch_rx: mpsc::UnboundedReceiver<WatchOp>,
    publish_rx: mpsc::Receiver<Publish>,
    presence_rx: mpsc::UnboundedReceiver<LocalPresence>,
    bus_rx: BusReceiver,
    inbound_tx: mpsc::Sender<Inbound>,
}

/// What [`Cluster::join`] returns: the cluster handle, the router's port, and the tasks
/// to spawn.
pub(crate) struct Joined {
    pub(crate) cluster: Cluster,
    pub(crate) port: Port,
    pub(crate) tasks: ClusterTasks,
}

impl Cluster {
    /// Joins the cluster on `bus`: removes what an earlier run under the same node id left
    /// (and tells the others), and sets up the channels of the node's tasks. `inbound_tx`
    /// is the router's inbox.
    pub(crate) async fn join(
        bus: Arc<dyn Bus>,
        bus_rx: BusReceiver,
        limits: &crate::config::Limits,
        presence_rx: mpsc::UnboundedReceiver<LocalPresence>,
        inbound_tx: mpsc::Sender<Inbound>,
    ) -> anyhow::Result<Joined> {
        // An earlier run under this id may have died with entries committed but never
        // published, and statuses others still show: sweep, tell, and have the first
        // heartbeat ask every node to catch up.
        let earlier = bus.sweep(bus.node()).await?;
        if earlier {
            let gone = Envelope::NodeGone { node: bus.node().to_owned() };
            bus.publish(vec![(Topic::Broadcast, gone)]).await?;
        }
        let (registry_tx, registry_rx) = mpsc::unbounded_channel();
        let (watch_tx, watch_rx) = mpsc::unbounded_channel();
        let (publish_tx, publish_rx) = mpsc::channel(limits.bus_queue);
        let port = Port::new(bus.clone(), publish_tx);
        if earlier {
            port.report_trouble();
        }
        let cluster = Cluster { bus, registry_tx, watch_tx };
        let tasks =
            ClusterTasks { registry_rx, watch_rx, publish_rx, presence_rx, bus_rx, inbound_tx };
        Ok(Joined { cluster, port, tasks })
    }

    /// See [`Bus::claim_once`]: `false` also when the bus cannot be reached (fail closed).
    pub(crate) async fn claim_once(&self, key: &str, ttl: std::time::Duration) -> bool {
        match self.bus.claim_once(key, ttl).await {
            Ok(first) => first,
            Err(err) => {
                tracing::warn!(error = %err, "cannot claim a single-use key");
                false
            }
        }
    }

    pub(crate) fn node(&self) -> &str {
        self.bus.node()
    }

    /// Whether this node is alone on an in-process bus (nothing is ever published to it, so
    /// large conversations' topics need no subscription).
    /// Which of `users` have a live session on some node (this one included), by the
    /// shared directory; `None` when the bus does not answer.
    pub(crate) async fn online(&self, users: &[UserId]) -> Option<Vec<bool>> {
        let nodes = with_timeout(self.bus.nodes_of(users)).await.ok()?;
        Some(nodes.iter().map(|n| !n.is_empty()).collect())
    }

    pub(crate) fn alone(&self) -> bool {
        !self.bus.has_peers()
    }

    /// Adds this node to `user`'s registry entry; the returned registration resolves once
    /// the directory has it (or failed: the heartbeat adds it again).
    pub(crate) fn register(&self, user: UserId) -> Registration {
        let (tx, rx) = oneshot::channel();
        let _ = self.registry_tx.send(RegistryOp::Add(user, tx));
        Registration(Some(rx))
    }

    /// `user`'s last session here ended (checked again when applied).
    pub(crate) fn deregister(&self, user: UserId) {
        let _ = self.registry_tx.send(RegistryOp::Remove(user));
    }

    /// Subscribes this node to a large conversation's topic for one more session; false if
    /// the bus refused (then the session does not hold it).
    pub(crate) async fn watch_conv(&self, conv: ConversationId) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.watch_tx.send(WatchOp::Add(conv, tx)).is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// One session less wants `conv`'s topic. Never waits, so a session's drop can call it.
    pub(crate) fn unwatch_conv(&self, conv: ConversationId) {
        let _ = self.watch_tx.send(WatchOp::Remove(conv));
    }

    /// Leaves the cluster on a graceful stop: this node's entries go now, not at their TTL.
    pub(crate) async fn leave(&self) {
        if let Err(err) = with_timeout(self.bus.leave()).await {
            tracing::warn!(error = %err, "cannot remove this node's directory entries");
        }
        let gone = Envelope::NodeGone { node: self.node().to_owned() };
        if let Err(err) = with_timeout(self.bus.publish(vec![(Topic::Broadcast, gone)])).await {
            tracing::warn!(error = %err, "cannot tell the other nodes that this one left");
        }
    }
}

/// Tells every other node that `principal`'s token is revoked, so that they end its
/// sessions. Waits for the publish (logout answers after it). Pub/sub is at most once: a
/// node whose subscription is down at that moment misses it (see docs/protocol.md).
pub(crate) async fn revoke(state: &AppState, principal: natter_store::Principal) {
    let c = state.cluster();
    if c.alone() {
        return;
    }
    let msg = Envelope::Revoked {
        node: c.node().to_owned(),
        user: principal.user_id,
        device: principal.device_id,
    };
    if let Err(err) = with_timeout(c.bus.publish(vec![(Topic::Broadcast, msg)])).await {
        tracing::warn!(error = %err, "cannot tell the other nodes of a revoked token");
        state.port().report_trouble();
    }
}

/// Tells every other node that `blocker` blocked or unblocked `blocked` (at most once, like
/// [`revoke`]; their cached relations lapse by themselves).
pub(crate) async fn blocked(state: &AppState, blocker: UserId, blocked: UserId) {
    let c = state.cluster();
    if c.alone() {
        return;
    }
    let msg = Envelope::Blocked { node: c.node().to_owned(), blocker, blocked };
    if let Err(err) = with_timeout(c.bus.publish(vec![(Topic::Broadcast, msg)])).await {
        tracing::warn!(error = %err, "cannot tell the other nodes of a block");
    }
}

async fn with_timeout<T, E: std::error::Error + Send + Sync + 'static>(
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, anyhow::Error> {
    match tokio::time::timeout(BUS_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(err)) => Err(err.into()),
        Err(_) => Err(anyhow::anyhow!("the bus did not answer within {BUS_TIMEOUT:?}")),
    }
}

/// Starts the cluster's tasks; they end when `stop` is cancelled, which the node does after
/// its last commit was routed (the publisher sends what is queued first).
pub(crate) fn spawn(
    state: &AppState,
    tasks: ClusterTasks,
    stop: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let ClusterTasks { registry_rx, watch_rx, publish_rx, presence_rx, bus_rx, inbound_tx } = tasks;
    vec![
        tokio::spawn(run_registry(state.clone(), registry_rx, stop.clone())),
        tokio::spawn(run_watches(state.clone(), watch_rx, stop.clone())),
        tokio::spawn(run_publisher(state.clone(), publish_rx, presence_rx, stop.clone())),
        tokio::spawn(run_bus(state.clone(), bus_rx, inbound_tx, stop.clone())),
        tokio::spawn(run_heartbeat(state.clone(), stop.clone())),
    ]
}

async fn run_registry(
    state: AppState,
    mut rx: mpsc::UnboundedReceiver<RegistryOp>,
    stop: CancellationToken,
) {
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, ROUND) => if n == 0 { return },
            () = stop.cancelled() => return,
        }
        let mut ops = Vec::with_capacity(batch.len());
        let mut waiters = Vec::new();
        for op in batch.drain(..) {
            match op {
                RegistryOp::Add(user, done) => {
                    ops.push((user, true));
                    waiters.push(done);
                }
                // A session of the user may have started since the removal was queued.
                RegistryOp::Remove(user) if state.sessions().n_sessions(user) == 0 => {
                    ops.push((user, false));
                }
                RegistryOp::Remove(_) => {}
            }
        }
        if let Err(err) = with_timeout(state.cluster().bus.update_registry(&ops)).await {
            tracing::warn!(error = %err, "registry update failed; the heartbeat repeats it");
            state.port().report_trouble();
        }
        for done in waiters {
            let _ = done.send(());
        }
    }
}

/// Owns the counts of sessions wanting each large conversation's topic, and the calls that
/// (un)subscribe: applied one at a time, so a session is told its topic holds only once it
/// does.
async fn run_watches(
    state: AppState,
    mut rx: mpsc::UnboundedReceiver<WatchOp>,
    stop: CancellationToken,
) {
    let bus = state.cluster().bus.clone();
    let mut wanted: HashMap<ConversationId, usize> = HashMap::new();
    loop {
        let op = tokio::select! {
            op = rx.recv() => match op {
                Some(op) => op,
                None => return,
            },
            () = stop.cancelled() => return,
        };
        match op {
            WatchOp::Add(conv, reply) => {
                let n = wanted.entry(conv).or_insert(0);
                *n += 1;
                if *n == 1
                    && let Err(err) = with_timeout(bus.subscribe(Topic::Conversation(conv))).await
                {
                    // Not subscribed: the next session (or entry) that wants it tries again,
                    // and the catch-up after the bus answers brings what was missed meanwhile.
                    tracing::warn!(%conv, error = %err, "cannot subscribe to a conversation");
                    wanted.remove(&conv);
                    state.port().report_trouble();
                    let _ = reply.send(false);
                    continue;
                }
                let _ = reply.send(true);
            }
            WatchOp::Remove(conv) => {
                let Some(n) = wanted.get_mut(&conv) else { continue };
                *n -= 1;
                if *n == 0 {
                    wanted.remove(&conv);
                    let _ = with_timeout(bus.unsubscribe(Topic::Conversation(conv))).await;
                }
            }
        }
    }
}

async fn run_publisher(
    state: AppState,
    mut rx: mpsc::Receiver<Publish>,
    mut presence_rx: mpsc::UnboundedReceiver<LocalPresence>,
    stop: CancellationToken,
) {
    let mut batch = Vec::new();
    let mut changes = Vec::new();
    loop {
        let stopping = tokio::select! {
            biased;
            () = stop.cancelled() => {
                // The last commits were routed: send what is queued in one round, then end.
                while let Ok(item) = rx.try_recv() {
                    batch.push(item);
                }
                true
            }
            n = presence_rx.recv_many(&mut changes, ROUND) => if n == 0 { return } else { false },
            n = rx.recv_many(&mut batch, ROUND) => if n == 0 { return } else { false },
        };
        metrics::gauge!("natter_queue_depth", "queue" => "bus_publish").set(rx.len() as f64);
        // Failures report trouble; the next heartbeat reports it once this node's entries
        // are back.
        // Only each user's latest change counts; after a failure the rest of the round is
        // skipped (statuses lapse or are rewritten by the heartbeat, and the catch-up it
        // asks for makes every node re-read them).
        let mut latest: HashMap<UserId, LocalPresence> = HashMap::new();
        for change in changes.drain(..) {
            latest.insert(change.user, change);
        }
        for change in latest.into_values() {
            if !publish_presence(&state, change).await {
                break;
            }
        }
        if !batch.is_empty() {
            publish_batch(&state, std::mem::take(&mut batch)).await;
        }
        if stopping {
            return;
        }
    }
}

/// Asks every node, this one included, to catch up (after a heartbeat put this node's
/// registry and presence entries back); on failure the next heartbeat asks again.
async fn ask_catch_up(state: &AppState) {
    let c = state.cluster();
    let msg = Envelope::CatchUp { node: c.node().to_owned() };
    if with_timeout(c.bus.publish(vec![(Topic::Broadcast, msg)])).await.is_err() {
        state.port().report_trouble();
    } else {
        tracing::info!("asked every node to catch up from the store");
    }
}

async fn publish_presence(state: &AppState, change: LocalPresence) -> bool {
    let c = state.cluster();
    let LocalPresence { user, status, last_seen } = change;
    let written = with_timeout(c.bus.set_presence(user, status, last_seen)).await;
    let msg = Envelope::Presence { node: c.node().to_owned(), user, status, last_seen };
    let sent = match written {
        Ok(()) => with_timeout(c.bus.publish(vec![(Topic::Broadcast, msg)])).await,
        Err(err) => Err(err),
    };
    if let Err(err) = sent {
        tracing::warn!(error = %err, "cannot publish a presence change");
        state.port().report_trouble();
        return false;
    }
    true
}

/// Whether an entry goes out on its conversation's topic (large conversations) rather than
/// to each node holding a member. Membership changes always go to the members' nodes: a
/// node that does not watch the topic yet (the group just grew past the threshold, or a
/// member was just added) learns of them that way.
fn on_conversation_topic(c: &Committed, members: &[UserId], threshold: usize) -> bool {
    members.len() > threshold && !natter_store::changes_members(&c.entry.body)
}

/// Routes one round of publishes: one registry lookup for every recipient in it, then one
/// message per target topic.
async fn publish_batch(state: &AppState, batch: Vec<Publish>) {
    let c = state.cluster();
    let threshold = state.cfg().limits.large_group_threshold;
    let mut lookup: HashSet<UserId> = HashSet::new();
    for item in &batch {
        match item {
            Publish::Entries(entries) => {
                for (entry, members) in entries {
                    if !on_conversation_topic(entry, members, threshold) {
                        lookup.extend(members.iter().copied());
                    }
                }
            }
            Publish::ToUsers { users, .. } => lookup.extend(users.iter().copied()),
        }
    }
    let users: Vec<UserId> = lookup.into_iter().collect();
    let nodes = match with_timeout(c.bus.nodes_of(&users)).await {
        Ok(nodes) => nodes,
        Err(err) => {
            tracing::warn!(error = %err, "registry lookup failed; other nodes catch up later");
            state.port().report_trouble();
            return;
        }
    };
    let own = c.node();
    let node_of: HashMap<UserId, Vec<Topic>> = users
        .into_iter()
        .zip(nodes)
        .map(|(u, ns)| (u, ns.iter().filter(|n| *n != own).map(|n| Topic::node(n)).collect()))
        .collect();

    // Per target topic, the entries in commit order.
    let mut entries_to: BTreeMap<Topic, Vec<Committed>> = BTreeMap::new();
    let mut messages = Vec::new();
    for item in batch {
        match item {
            Publish::Entries(entries) => {
                for (entry, members) in entries {
                    if on_conversation_topic(&entry, &members, threshold) {
                        let topic = Topic::Conversation(entry.entry.conversation);
                        entries_to.entry(topic).or_default().push(entry);
                    } else {
                        let targets: HashSet<&Topic> =
                            members.iter().filter_map(|m| node_of.get(m)).flatten().collect();
                        for topic in targets {
                            entries_to.entry(topic.clone()).or_default().push(entry.clone());
                        }
                    }
                }
            }
            Publish::ToUsers { users, frame } => {
                let mut per_node: BTreeMap<&Topic, Vec<UserId>> = BTreeMap::new();
                for user in users {
                    for topic in node_of.get(&user).into_iter().flatten() {
                        per_node.entry(topic).or_default().push(user);
                    }
                }
                for (topic, users) in per_node {
                    let msg = Envelope::Frame { users, frame: frame.as_str().to_owned() };
                    messages.push((topic.clone(), msg));
                }
            }
        }
    }
    for (topic, entries) in entries_to {
        // Bounded messages: Redis drops subscribers whose output buffer grows too large.
        for chunk in entries.chunks(MAX_ENTRIES_PER_MESSAGE) {
            let msg = Envelope::Entries { node: own.to_owned(), entries: chunk.to_vec() };
            messages.push((topic.clone(), msg));
        }
    }
    metrics::counter!("natter_bus_published_total").increment(messages.len() as u64);
    if let Err(err) = with_timeout(c.bus.publish(messages)).await {
        tracing::warn!(error = %err, "publish failed; other nodes catch up later");
        state.port().report_trouble();
    }
}

async fn run_bus(
    state: AppState,
    mut bus_rx: BusReceiver,
    inbound_tx: mpsc::Sender<Inbound>,
    stop: CancellationToken,
) {
    let own_topic = Topic::node(state.cluster().node());
    let mut lost = false;
    loop {
        let event = tokio::select! {
            event = bus_rx.recv() => match event {
                Some(event) => event,
                None => return,
            },
            () = stop.cancelled() => return,
        };
        let inbound = match event {
            BusEvent::Message(msg) => match receive(&state, msg).await {
                Some(inbound) => inbound,
                None => continue,
            },
            BusEvent::Disconnected => {
                tracing::warn!("lost the bus subscription; reconnecting");
                lost = true;
                continue;
            }
            BusEvent::Subscribed(topic) if lost && topic == own_topic => {
                lost = false;
                tracing::info!("resubscribed to the bus");
                // What was published meanwhile is gone, and a restarted Redis has lost the
                // registry: put this node's entries back first (so new entries find its
                // sessions), then have every node, this one included, catch up from the store.
                state.port().report_trouble();
                heartbeat(&state).await;
                continue;
            }
            BusEvent::Subscribed(_) => continue,
            BusEvent::Overflow => {
                metrics::counter!("natter_bus_overflow_total").increment(1);
                state.port().report_trouble();
                continue;
            }
        };
        // The router's inbox is bounded: waiting here lets the bus's own capped queue fill,
        // which reports an overflow (and so a catch-up) rather than growing memory.
        if inbound_tx.send(inbound).await.is_err() {
            return;
        }
    }
}

/// Applies node-level messages here; returns what the router delivers to sessions.
async fn receive(state: &AppState, msg: Envelope) -> Option<Inbound> {
    let own = state.cluster().node();
    match msg {
        // A large conversation's topic echoes this node's own publishes back to it (it
        // subscribes while it holds a member's session): already fanned out here.
        Envelope::Entries { node, .. } if node == own => None,
        Envelope::Entries { entries, .. } => Some(Inbound::Entries(entries)),
        Envelope::Frame { users, frame } => {
            Some(Inbound::Frame { users, frame: Utf8Bytes::from(frame) })
        }
        Envelope::Presence { node, user, status, last_seen } => {
            if node != own {
                state.presence().apply_remote(user, &node, status, last_seen);
            }
            None
        }
        Envelope::NodeGone { node } => {
            if node != own {
                state.presence().node_gone(&node);
            }
            None
        }
        Envelope::Revoked { node, user, device } => {
            // The revoking node ended its own sessions already.
            if node != own {
                let principal = natter_store::Principal { user_id: user, device_id: device };
                crate::session::end_device(state, principal, natter_proto::close::UNAUTHENTICATED);
            }
            None
        }
        Envelope::Blocked { node, blocker, blocked } => {
            if node != own {
                crate::blocks::changed(state, blocker, blocked);
            }
            None
        }
        Envelope::CatchUp { node } => {
            tracing::info!(from = %node, "catching up from the store");
            metrics::counter!("natter_bus_catch_ups_total").increment(1);
            // Presence is re-read here, before later bus messages apply; sessions catch up
            // through the router. Member lists need no reset: an entry newer than a list's
            // membership version reloads it.
            reseed_presence(state, state.presence().watched()).await;
            Some(Inbound::CatchUp)
        }
    }
}

/// Reads `users`' presence from the directory into the hub.
pub(crate) async fn reseed_presence(state: &AppState, users: Vec<UserId>) {
    if users.is_empty() {
        return;
    }
    let c = state.cluster();
    match with_timeout(c.bus.presence_of(&users)).await {
        Ok(found) => {
            for (user, shared) in users.into_iter().zip(found) {
                state.presence().seed(user, c.node(), shared);
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot read presence from the directory");
            state.port().report_trouble();
        }
    }
}

async fn run_heartbeat(state: AppState, stop: CancellationToken) {
    let mut tick = tokio::time::interval(state.cfg().limits.heartbeat());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        heartbeat(&state).await;
    }
}

/// Refreshes this node's entries and sweeps dead nodes'; after a success, asks for a
/// catch-up if anything was lost before.
async fn heartbeat(state: &AppState) {
    let c = state.cluster();
    // Trouble reported from here on is for the next heartbeat: its sessions may not be in
    // the snapshot below.
    let had_trouble = state.port().take_trouble();
    let users = state.sessions().users();
    let statuses = state.presence().local_statuses();
    match with_timeout(c.bus.heartbeat(&users, &statuses)).await {
        Ok(dead) => {
            for node in &dead {
                tracing::warn!(%node, "node stopped heart-beating; its entries are removed");
                state.presence().node_gone(node);
            }
            // Only this node learns of a death (the sweep removes it from the live set), and
            // the dead node may have committed entries it never published: every node
            // re-reads presence and catches its sessions up.
            if had_trouble || !dead.is_empty() {
                ask_catch_up(state).await;
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, "heartbeat failed");
            state.port().report_trouble();
        }
    }
}
