//! Cluster mode: this node's part in the shared registry, presence and bus on Redis.
//!
//! - **Registry.** A user's first session here adds this node to the user's registry entry
//!   before the session reads anything from the store (so no entry committed after that
//!   read can miss it); the last one ending removes it. One task applies these in order, in
//!   batches, and checks at apply time that a removal is still right.
//! - **Publishing.** After the local fan-out, the router hands each committed batch to the
//!   publisher: entries of small conversations go once to each node holding a member
//!   (looked up in the registry), entries of large ones once to the conversation's channel
//!   (but membership changes to the members' nodes, so that a node not yet watching the
//!   channel learns of them). Receipts and typing go to the nodes of their
//!   recipients; local presence changes are written to Redis and broadcast. The publisher
//!   has its own bounded queue: fan-out never waits on Redis and never holds up an ack.
//! - **Receiving.** Entries from the bus are fanned out to local sessions like local ones;
//!   each session's deliverer fills any `seq` gap from the store, so a lost or late bus
//!   message costs latency, never order or completeness.
//! - **Trouble.** Pub/sub is at-most-once. When this node's subscriber loses Redis, its
//!   publishes fail, or its inbound queue overflows, it asks every node (itself included)
//!   to catch up once Redis answers again: each session reads what it missed from the
//!   store, member lists are reloaded and presence is re-read.
//! - **Heartbeat.** Every `heartbeat_ms` the node refreshes its entries (they lapse after
//!   `registry_ttl_ms`) and sweeps those of nodes that stopped heart-beating.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use natter_cluster::shared::{
    ALL_CHANNEL, BusEvent, BusReceiver, RedisCluster, conv_channel, node_channel,
};
use natter_proto::{ConversationId, Entry, Status, UserId};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::delivery::Outbound;
use crate::presence::LocalPresence;
use crate::state::AppState;

/// Redis operations get this long before they count as failed.
const REDIS_TIMEOUT: Duration = Duration::from_secs(3);
/// Queued items one publisher or registry round takes at most.
const ROUND: usize = 1024;
/// Entries in one bus message at most.
const MAX_ENTRIES_PER_MESSAGE: usize = 256;

/// What crosses the bus.
#[derive(Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Envelope {
    /// Committed entries for this node's sessions.
    Entries { node: String, entries: Vec<Entry> },
    /// A ready frame (receipt, typing) for these users' sessions on this node.
    Frame { users: Vec<UserId>, frame: String },
    /// A node's view of a user changed.
    Presence { node: String, user: UserId, status: Option<Status>, last_seen: Option<i64> },
    /// Something was lost: every node catches its sessions up from the store.
    CatchUp { node: String },
    /// A node left (graceful stop) or was found dead, or restarted under the same id: its
    /// statuses no longer count.
    NodeGone { node: String },
}

/// Waits for a session's registration (cluster mode); resolves at once on a single node.
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

/// What the publisher is asked to send.
pub(crate) enum Publish {
    Entries(Vec<(Entry, Arc<Vec<UserId>>)>),
    ToUsers { users: Vec<UserId>, frame: Utf8Bytes },
}

pub(crate) struct Cluster {
    shared: RedisCluster,
    registry_tx: mpsc::UnboundedSender<RegistryOp>,
    publish_tx: mpsc::Sender<Publish>,
    /// Large conversations this node is subscribed to, with how many sessions want each.
    conv_subs: tokio::sync::Mutex<HashMap<ConversationId, usize>>,
    /// Something was lost since Redis last answered: ask everyone to catch up.
    trouble: AtomicBool,
}

/// The receiving ends the cluster's tasks consume.
pub(crate) struct ClusterTasks {
    registry_rx: mpsc::UnboundedReceiver<RegistryOp>,
    publish_rx: mpsc::Receiver<Publish>,
    presence_rx: mpsc::UnboundedReceiver<LocalPresence>,
    bus: BusReceiver,
}

impl Cluster {
    /// Joins the cluster: connects to Redis, removes what an earlier run under the same
    /// node id left, and subscribes to this node's channels.
    pub(crate) async fn connect(
        url: &str,
        node: &str,
        limits: &crate::config::Limits,
        presence_rx: mpsc::UnboundedReceiver<LocalPresence>,
    ) -> anyhow::Result<(Cluster, ClusterTasks)> {
        let (shared, bus) =
            RedisCluster::connect(url, node, limits.registry_ttl(), limits.bus_queue).await?;
        // An earlier run under this id may have died with entries committed but never
        // published, and statuses others still show: sweep, tell, and have the first
        // heartbeat ask every node to catch up.
        let earlier = shared.sweep(node).await?;
        if earlier {
            let gone = Envelope::NodeGone { node: node.to_owned() };
            shared.publish(&[(ALL_CHANNEL.to_owned(), encode(&gone))]).await?;
        }
        let (registry_tx, registry_rx) = mpsc::unbounded_channel();
        let (publish_tx, publish_rx) = mpsc::channel(limits.bus_queue);
        let cluster = Cluster {
            shared,
            registry_tx,
            publish_tx,
            conv_subs: tokio::sync::Mutex::new(HashMap::new()),
            trouble: AtomicBool::new(earlier),
        };
        Ok((cluster, ClusterTasks { registry_rx, publish_rx, presence_rx, bus }))
    }

    pub(crate) fn node(&self) -> &str {
        self.shared.node()
    }

    /// Adds this node to `user`'s registry entry; the returned registration resolves once
    /// Redis has it (or failed: the heartbeat adds it again).
    pub(crate) fn register(&self, user: UserId) -> Registration {
        let (tx, rx) = oneshot::channel();
        let _ = self.registry_tx.send(RegistryOp::Add(user, tx));
        Registration(Some(rx))
    }

    /// `user`'s last session here ended (checked again when applied).
    pub(crate) fn deregister(&self, user: UserId) {
        let _ = self.registry_tx.send(RegistryOp::Remove(user));
    }

    /// Queues a publish; a full queue drops it and makes every node catch up later.
    pub(crate) fn publish(&self, item: Publish) {
        if self.publish_tx.try_send(item).is_err() {
            metrics::counter!("natter_bus_dropped_total").increment(1);
            self.trouble.store(true, Ordering::Relaxed);
        }
    }

    /// Sends `frame` to the sessions of `users` on other nodes.
    pub(crate) fn to_users(&self, users: Vec<UserId>, frame: Utf8Bytes) {
        if !users.is_empty() {
            self.publish(Publish::ToUsers { users, frame });
        }
    }

    /// Subscribes this node to a large conversation's channel for one more session; false if
    /// Redis refused (then the session does not hold it).
    pub(crate) async fn watch_conv(&self, conv: ConversationId) -> bool {
        let mut subs = self.conv_subs.lock().await;
        let n = subs.entry(conv).or_insert(0);
        *n += 1;
        if *n == 1 {
            let subscribed = self.shared.subscribe(conv_channel(conv));
            if let Err(err) = with_timeout(subscribed).await {
                // Not subscribed: the next session (or entry) that wants it tries again, and
                // the catch-up after Redis answers brings what was missed meanwhile.
                tracing::warn!(%conv, error = %err, "cannot subscribe to a conversation");
                subs.remove(&conv);
                self.trouble.store(true, Ordering::Relaxed);
                return false;
            }
        }
        true
    }

    /// One session less wants `conv`'s channel.
    pub(crate) async fn unwatch_conv(&self, conv: ConversationId) {
        let mut subs = self.conv_subs.lock().await;
        let Some(n) = subs.get_mut(&conv) else { return };
        *n -= 1;
        if *n == 0 {
            subs.remove(&conv);
            let _ = with_timeout(self.shared.unsubscribe(conv_channel(conv))).await;
        }
    }

    /// Leaves the cluster on a graceful stop: this node's entries go now, not at their TTL.
    pub(crate) async fn leave(&self) {
        if let Err(err) = with_timeout(self.shared.leave()).await {
            tracing::warn!(error = %err, "cannot remove this node's entries from Redis");
        }
        let gone = Envelope::NodeGone { node: self.node().to_owned() };
        let messages = [(ALL_CHANNEL.to_owned(), encode(&gone))];
        if let Err(err) = with_timeout(self.shared.publish(&messages)).await {
            tracing::warn!(error = %err, "cannot tell the other nodes that this one left");
        }
    }
}

async fn with_timeout<T, E: std::error::Error + Send + Sync + 'static>(
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, anyhow::Error> {
    match tokio::time::timeout(REDIS_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(err)) => Err(err.into()),
        Err(_) => Err(anyhow::anyhow!("Redis did not answer within {REDIS_TIMEOUT:?}")),
    }
}

/// Starts the cluster's tasks; they end when `stop` is cancelled, which the node does after
/// its last commit was routed (the publisher sends what is queued first).
pub(crate) fn spawn(
    state: &AppState,
    tasks: ClusterTasks,
    stop: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let ClusterTasks { registry_rx, publish_rx, presence_rx, bus } = tasks;
    vec![
        tokio::spawn(run_registry(state.clone(), registry_rx, stop.clone())),
        tokio::spawn(run_publisher(state.clone(), publish_rx, presence_rx, stop.clone())),
        tokio::spawn(run_bus(state.clone(), bus, stop.clone())),
        tokio::spawn(run_heartbeat(state.clone(), stop.clone())),
    ]
}

fn cluster(state: &AppState) -> &Cluster {
    state.cluster().expect("cluster tasks run only in cluster mode")
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
        let c = cluster(&state);
        if let Err(err) = with_timeout(c.shared.update_registry(&ops)).await {
            tracing::warn!(error = %err, "registry update failed; the heartbeat repeats it");
            c.trouble.store(true, Ordering::Relaxed);
        }
        for done in waiters {
            let _ = done.send(());
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
        // Failures set `trouble`; the next heartbeat reports it once this node's entries
        // are back.
        let c = cluster(&state);
        // Only each user's latest change counts; after a failure the rest of the round is
        // skipped (statuses lapse or are rewritten by the heartbeat, and the catch-up it
        // asks for makes every node re-read them).
        let mut latest: HashMap<UserId, LocalPresence> = HashMap::new();
        for change in changes.drain(..) {
            latest.insert(change.user, change);
        }
        for change in latest.into_values() {
            if !publish_presence(c, change).await {
                break;
            }
        }
        if !batch.is_empty() {
            publish_batch(&state, c, std::mem::take(&mut batch)).await;
        }
        if stopping {
            return;
        }
    }
}

/// Asks every node, this one included, to catch up (after a heartbeat put this node's
/// registry and presence entries back); on failure the next heartbeat asks again.
async fn ask_catch_up(c: &Cluster) {
    let msg = Envelope::CatchUp { node: c.node().to_owned() };
    let messages = [(ALL_CHANNEL.to_owned(), encode(&msg))];
    if with_timeout(c.shared.publish(&messages)).await.is_err() {
        c.trouble.store(true, Ordering::Relaxed);
    } else {
        tracing::info!("asked every node to catch up from the store");
    }
}

fn encode(msg: &Envelope) -> Vec<u8> {
    serde_json::to_vec(msg).expect("envelopes serialize")
}

async fn publish_presence(c: &Cluster, change: LocalPresence) -> bool {
    let LocalPresence { user, status, last_seen } = change;
    let written = with_timeout(c.shared.set_presence(user, status, last_seen)).await;
    let msg = Envelope::Presence { node: c.node().to_owned(), user, status, last_seen };
    let messages = [(ALL_CHANNEL.to_owned(), encode(&msg))];
    let sent = match written {
        Ok(()) => with_timeout(c.shared.publish(&messages)).await,
        Err(err) => Err(err),
    };
    if let Err(err) = sent {
        tracing::warn!(error = %err, "cannot publish a presence change");
        c.trouble.store(true, Ordering::Relaxed);
        return false;
    }
    true
}

/// Whether an entry goes out on its conversation's channel (large conversations) rather than
/// to each node holding a member. Membership changes always go to the members' nodes: a
/// node that does not watch the channel yet (the group just grew past the threshold, or a
/// member was just added) learns of them that way.
fn on_conversation_channel(entry: &Entry, members: &[UserId], threshold: usize) -> bool {
    members.len() > threshold && !natter_store::changes_members(&entry.body)
}

/// Routes one round of publishes: one registry lookup for every recipient in it, then one
/// message per target channel.
async fn publish_batch(state: &AppState, c: &Cluster, batch: Vec<Publish>) {
    let threshold = state.cfg().limits.large_group_threshold;
    let mut lookup: HashSet<UserId> = HashSet::new();
    for item in &batch {
        match item {
            Publish::Entries(entries) => {
                for (entry, members) in entries {
                    if !on_conversation_channel(entry, members, threshold) {
                        lookup.extend(members.iter().copied());
                    }
                }
            }
            Publish::ToUsers { users, .. } => lookup.extend(users.iter().copied()),
        }
    }
    let users: Vec<UserId> = lookup.into_iter().collect();
    let nodes = match with_timeout(c.shared.nodes_of(&users)).await {
        Ok(nodes) => nodes,
        Err(err) => {
            tracing::warn!(error = %err, "registry lookup failed; other nodes catch up later");
            c.trouble.store(true, Ordering::Relaxed);
            return;
        }
    };
    let own = c.node();
    let node_of: HashMap<UserId, Vec<String>> = users
        .into_iter()
        .zip(nodes)
        .map(|(u, ns)| (u, ns.into_iter().filter(|n| n != own).collect()))
        .collect();

    // Per target channel, the entries in commit order.
    let mut entries_to: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    let mut messages = Vec::new();
    for item in batch {
        match item {
            Publish::Entries(entries) => {
                for (entry, members) in entries {
                    if on_conversation_channel(&entry, &members, threshold) {
                        let channel = conv_channel(entry.conversation);
                        entries_to.entry(channel).or_default().push(entry);
                    } else {
                        let targets: HashSet<&String> =
                            members.iter().filter_map(|m| node_of.get(m)).flatten().collect();
                        for node in targets {
                            entries_to.entry(node_channel(node)).or_default().push(entry.clone());
                        }
                    }
                }
            }
            Publish::ToUsers { users, frame } => {
                let mut per_node: BTreeMap<&String, Vec<UserId>> = BTreeMap::new();
                for user in users {
                    for node in node_of.get(&user).into_iter().flatten() {
                        per_node.entry(node).or_default().push(user);
                    }
                }
                for (node, users) in per_node {
                    let msg = Envelope::Frame { users, frame: frame.as_str().to_owned() };
                    messages.push((node_channel(node), encode(&msg)));
                }
            }
        }
    }
    for (channel, entries) in entries_to {
        // Bounded messages: Redis drops subscribers whose output buffer grows too large.
        for chunk in entries.chunks(MAX_ENTRIES_PER_MESSAGE) {
            let msg = Envelope::Entries { node: own.to_owned(), entries: chunk.to_vec() };
            messages.push((channel.clone(), encode(&msg)));
        }
    }
    metrics::counter!("natter_bus_published_total").increment(messages.len() as u64);
    if let Err(err) = with_timeout(c.shared.publish(&messages)).await {
        tracing::warn!(error = %err, "publish failed; other nodes catch up later");
        c.trouble.store(true, Ordering::Relaxed);
    }
}

async fn run_bus(state: AppState, mut bus: BusReceiver, stop: CancellationToken) {
    let own_channel = node_channel(cluster(&state).node());
    let mut lost = false;
    loop {
        let event = tokio::select! {
            event = bus.recv() => match event {
                Some(event) => event,
                None => return,
            },
            () = stop.cancelled() => return,
        };
        match event {
            BusEvent::Message(bytes) => match serde_json::from_slice::<Envelope>(&bytes) {
                Ok(msg) => receive(&state, msg).await,
                Err(err) => tracing::warn!(error = %err, "undecodable bus message"),
            },
            BusEvent::Disconnected => {
                tracing::warn!("lost the Redis subscription; reconnecting");
                lost = true;
            }
            BusEvent::Subscribed(channel) if lost && channel == own_channel => {
                lost = false;
                tracing::info!("resubscribed to Redis");
                // What was published meanwhile is gone, and a restarted Redis has lost the
                // registry: put this node's entries back first (so new entries find its
                // sessions), then have every node, this one included, catch up from the store.
                cluster(&state).trouble.store(true, Ordering::Relaxed);
                heartbeat(&state).await;
            }
            BusEvent::Subscribed(_) => {}
            BusEvent::Overflow => {
                metrics::counter!("natter_bus_overflow_total").increment(1);
                cluster(&state).trouble.store(true, Ordering::Relaxed);
            }
        }
    }
}

async fn receive(state: &AppState, msg: Envelope) {
    match msg {
        Envelope::Entries { node, entries } => {
            // A large conversation's channel echoes this node's own publishes back to it
            // (it subscribes while it holds a member's session): already fanned out here.
            if node == cluster(state).node() {
                return;
            }
            let routed_at = std::time::Instant::now();
            for entry in entries {
                crate::router::fan_out_local(state, entry, routed_at).await;
            }
        }
        Envelope::Frame { users, frame } => {
            let frame = Utf8Bytes::from(frame);
            state.sessions().for_each_session(&users, |_, _, session| {
                session.offer(Outbound::Frame(frame.clone()));
            });
        }
        Envelope::Presence { node, user, status, last_seen } => {
            if node != cluster(state).node() {
                state.presence().apply_remote(user, &node, status, last_seen);
            }
        }
        Envelope::NodeGone { node } => {
            if node != cluster(state).node() {
                state.presence().node_gone(&node);
            }
        }
        Envelope::CatchUp { node } => {
            tracing::info!(from = %node, "catching up from the store");
            catch_up(state).await;
        }
    }
}

/// Brings every local session up to date from the store and re-reads the presence of
/// watched users.
async fn catch_up(state: &AppState) {
    metrics::counter!("natter_bus_catch_ups_total").increment(1);
    // Member lists need no reset: an entry newer than a list's membership version reloads it.
    state.sessions().for_each(|_, _, session| session.offer(Outbound::CatchUp));
    reseed_presence(state, state.presence().watched()).await;
}

/// Reads `users`' presence from Redis into the hub.
pub(crate) async fn reseed_presence(state: &AppState, users: Vec<UserId>) {
    let Some(c) = state.cluster() else { return };
    if users.is_empty() {
        return;
    }
    match with_timeout(c.shared.presence_of(&users)).await {
        Ok(found) => {
            for (user, shared) in users.into_iter().zip(found) {
                state.presence().seed(user, c.node(), shared);
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot read presence from Redis");
            c.trouble.store(true, Ordering::Relaxed);
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
    let c = cluster(state);
    // Trouble reported from here on is for the next heartbeat: its sessions may not be in
    // the snapshot below.
    let had_trouble = c.trouble.swap(false, Ordering::Relaxed);
    let users = state.sessions().users();
    let statuses = state.presence().local_statuses();
    match with_timeout(c.shared.heartbeat(&users, &statuses)).await {
        Ok(dead) => {
            for node in &dead {
                tracing::warn!(%node, "node stopped heart-beating; its entries are removed");
                state.presence().node_gone(node);
            }
            // Only this node learns of a death (the sweep removes it from the live set), and
            // the dead node may have committed entries it never published: every node
            // re-reads presence and catches its sessions up.
            if had_trouble || !dead.is_empty() {
                ask_catch_up(c).await;
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, "heartbeat failed");
            c.trouble.store(true, Ordering::Relaxed);
        }
    }
}
