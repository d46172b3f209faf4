//! The in-process bus: a [`LocalHub`] that the nodes of one process join, each getting a
//! [`LocalBus`]. A single node is a hub of one (the default); tests run clusters of several
//! nodes in one process on a hub with [`Faults`] that drop, duplicate and delay (and so
//! reorder) messages.
//!
//! It keeps Redis pub/sub's semantics, so the server cannot tell them apart: a publish
//! reaches every node subscribed to the topic (the publisher too, when it subscribed),
//! messages beyond a node's queue cap are dropped with one overflow report, and a dropped
//! message is reported to the node that lost it (as Redis reports the disconnect that
//! loses messages). The directory is plain maps; a node's entries go when it leaves or when
//! another node's heartbeat finds it [crashed](LocalHub::crash).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use natter_proto::{Status, UserId};

use crate::bus::{
    Bus, BusError, BusReceiver, BusResult, Envelope, Inbox, Incoming, NodeStatus, SharedPresence,
    Topic, inbox,
};

/// Faults a hub injects into delivery, per message and receiving node.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Probability that a message is lost (the receiving node is told, as by an overflow).
    pub drop: f64,
    /// Probability that a message arrives twice.
    pub duplicate: f64,
    /// Each message is held back for a random time up to this, so messages overtake each
    /// other.
    pub max_delay: Duration,
    /// Seeds the choices, so a failing run can be repeated.
    pub seed: u64,
}

/// The nodes of one process and their shared directory.
#[derive(Clone, Default)]
pub struct LocalHub(Arc<Mutex<Hub>>);

#[derive(Default)]
struct Hub {
    nodes: HashMap<Arc<str>, Slot>,
    registry: HashMap<UserId, BTreeSet<Arc<str>>>,
    presence: HashMap<UserId, BTreeMap<Arc<str>, Status>>,
    last_seen: HashMap<UserId, i64>,
    /// Users each node has directory entries for (what a sweep removes).
    node_users: HashMap<Arc<str>, HashSet<UserId>>,
    /// Claimed keys and when each claim lapses.
    claims: HashMap<String, std::time::Instant>,
    faults: Faults,
    rng: u64,
}

struct Slot {
    inbox: Inbox,
    topics: HashSet<Topic>,
    crashed: bool,
}

/// One node's handle on a [`LocalHub`].
pub struct LocalBus {
    node: Arc<str>,
    hub: LocalHub,
}

impl LocalHub {
    /// A hub whose deliveries suffer `faults`.
    pub fn with_faults(faults: Faults) -> LocalHub {
        let rng = faults.seed | 1;
        LocalHub(Arc::new(Mutex::new(Hub { faults, rng, ..Hub::default() })))
    }

    /// A single node: a hub of its own.
    pub fn standalone(node: &str, max_queued: usize) -> (LocalBus, BusReceiver) {
        LocalHub::default().join(node, max_queued)
    }

    /// Adds a node, subscribed to its own topic and the broadcast topic. A node joining
    /// under the id of one that is still there replaces it (as a restart would).
    pub fn join(&self, node: &str, max_queued: usize) -> (LocalBus, BusReceiver) {
        let (inbox, rx) = inbox(max_queued);
        let node: Arc<str> = node.into();
        let topics = HashSet::from([Topic::Node(node.clone()), Topic::Broadcast]);
        let mut hub = self.lock();
        hub.nodes.insert(node.clone(), Slot { inbox, topics, crashed: false });
        (LocalBus { node, hub: self.clone() }, rx)
    }

    /// Makes `node` vanish as if killed: it receives nothing more, and the next heartbeat of
    /// another node finds it dead and sweeps its entries.
    pub fn crash(&self, node: &str) {
        if let Some(slot) = self.lock().nodes.get_mut(node) {
            slot.crashed = true;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Hub> {
        self.0.lock().expect("hub lock poisoned")
    }
}

impl Hub {
    fn live(&self, node: &str) -> bool {
        self.nodes.get(node).is_some_and(|slot| !slot.crashed)
    }

    /// xorshift64*: enough to pick faults reproducibly.
    fn next(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    fn sweep(&mut self, node: &str) -> bool {
        let users = self.node_users.remove(node).unwrap_or_default();
        for user in &users {
            if let Some(nodes) = self.registry.get_mut(user) {
                nodes.remove(node);
            }
            if let Some(statuses) = self.presence.get_mut(user) {
                statuses.remove(node);
            }
        }
        let known = self.nodes.remove(node).is_some();
        known || !users.is_empty()
    }
}

#[async_trait]
impl Bus for LocalBus {
    fn node(&self) -> &str {
        &self.node
    }

    fn has_peers(&self) -> bool {
        self.hub.lock().nodes.len() > 1
    }

    async fn update_registry(&self, ops: &[(UserId, bool)]) -> BusResult<()> {
        let mut hub = self.hub.lock();
        for (user, add) in ops {
            if *add {
                hub.registry.entry(*user).or_default().insert(self.node.clone());
                hub.node_users.entry(self.node.clone()).or_default().insert(*user);
            } else if let Some(nodes) = hub.registry.get_mut(user) {
                nodes.remove(&self.node);
            }
        }
        Ok(())
    }

    async fn nodes_of(&self, users: &[UserId]) -> BusResult<Vec<Vec<String>>> {
        let hub = self.hub.lock();
        let nodes_of = |user: &UserId| {
            let nodes = hub.registry.get(user).into_iter().flatten();
            nodes.filter(|n| hub.live(n)).map(|n| n.to_string()).collect()
        };
        Ok(users.iter().map(nodes_of).collect())
    }

    async fn set_presence(
        &self,
        user: UserId,
        status: Option<Status>,
        last_seen: Option<i64>,
    ) -> BusResult<()> {
        let mut hub = self.hub.lock();
        let statuses = hub.presence.entry(user).or_default();
        match status {
            Some(status) => {
                statuses.insert(self.node.clone(), status);
                hub.node_users.entry(self.node.clone()).or_default().insert(user);
            }
            None => {
                statuses.remove(&self.node);
            }
        }
        if let Some(at) = last_seen {
            hub.last_seen.insert(user, at);
        }
        Ok(())
    }

    async fn presence_of(&self, users: &[UserId]) -> BusResult<Vec<SharedPresence>> {
        let hub = self.hub.lock();
        let presence_of = |user: &UserId| SharedPresence {
            nodes: (hub.presence.get(user).into_iter().flatten())
                .filter(|(node, _)| hub.live(node))
                .map(|(node, status)| NodeStatus { node: node.to_string(), status: *status })
                .collect(),
            last_seen: hub.last_seen.get(user).copied(),
        };
        Ok(users.iter().map(presence_of).collect())
    }

    async fn heartbeat(
        &self,
        users: &[UserId],
        statuses: &[(UserId, Status)],
    ) -> BusResult<Vec<String>> {
        let mut hub = self.hub.lock();
        for user in users {
            hub.registry.entry(*user).or_default().insert(self.node.clone());
        }
        for (user, status) in statuses {
            hub.presence.entry(*user).or_default().insert(self.node.clone(), *status);
        }
        let own = hub.node_users.entry(self.node.clone()).or_default();
        own.extend(users.iter().copied());
        own.extend(statuses.iter().map(|(user, _)| *user));
        let dead: Vec<Arc<str>> = (hub.nodes.iter())
            .filter(|(node, slot)| slot.crashed && **node != self.node)
            .map(|(node, _)| node.clone())
            .collect();
        for node in &dead {
            hub.sweep(node);
        }
        Ok(dead.iter().map(|n| n.to_string()).collect())
    }

    async fn claim_once(&self, key: &str, ttl: std::time::Duration) -> BusResult<bool> {
        let now = std::time::Instant::now();
        let mut hub = self.hub.lock();
        // Lapsed claims go as new ones come: the map holds at most one ttl's worth.
        hub.claims.retain(|_, until| *until > now);
        if hub.claims.contains_key(key) {
            return Ok(false);
        }
        hub.claims.insert(key.to_owned(), now + ttl);
        Ok(true)
    }

    async fn sweep(&self, node: &str) -> BusResult<bool> {
        let mut hub = self.hub.lock();
        if node == &*self.node {
            // This node's previous run, or this node leaving: keep its slot while it runs.
            let slot = hub.nodes.remove(node);
            let had = hub.sweep(node);
            if let Some(slot) = slot {
                hub.nodes.insert(self.node.clone(), slot);
            }
            return Ok(had);
        }
        Ok(hub.sweep(node))
    }

    async fn publish(&self, messages: Vec<(Topic, Envelope)>) -> BusResult<()> {
        let mut delayed = Vec::new();
        {
            let mut hub = self.hub.lock();
            if !hub.live(&self.node) {
                return Err(BusError("this node crashed".into()));
            }
            let max_delay = hub.faults.max_delay;
            for (topic, envelope) in messages {
                let inboxes: Vec<(Arc<str>, Inbox)> = (hub.nodes.iter())
                    .filter(|(_, slot)| !slot.crashed && slot.topics.contains(&topic))
                    .map(|(node, slot)| (node.clone(), slot.inbox.clone()))
                    .collect();
                for (node, inbox) in inboxes {
                    let (drop, duplicate) = (hub.faults.drop, hub.faults.duplicate);
                    if hub.chance(drop) {
                        // Lost, and the node is told, as Redis tells of a disconnect.
                        inbox.push(Incoming::Disconnected);
                        inbox.push(Incoming::Subscribed(Topic::Node(node)));
                        continue;
                    }
                    let copies = if hub.chance(duplicate) { 2 } else { 1 };
                    for _ in 0..copies {
                        let item = Incoming::Decoded(envelope.clone());
                        if max_delay.is_zero() {
                            inbox.push(item);
                        } else {
                            let nanos = hub.next() % (max_delay.as_nanos() as u64 + 1);
                            delayed.push((Duration::from_nanos(nanos), inbox.clone(), item));
                        }
                    }
                }
            }
        }
        for (delay, inbox, item) in delayed {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                inbox.push(item);
            });
        }
        Ok(())
    }

    async fn subscribe(&self, topic: Topic) -> BusResult<()> {
        let mut hub = self.hub.lock();
        if let Some(slot) = hub.nodes.get_mut(&self.node) {
            slot.topics.insert(topic.clone());
            slot.inbox.push(Incoming::Subscribed(topic));
        }
        Ok(())
    }

    async fn unsubscribe(&self, topic: Topic) -> BusResult<()> {
        if let Some(slot) = self.hub.lock().nodes.get_mut(&self.node) {
            slot.topics.remove(&topic);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use natter_proto::ConversationId;

    use super::*;
    use crate::bus::BusEvent;

    fn catch_up(node: &str) -> Envelope {
        Envelope::CatchUp { node: node.into() }
    }

    async fn next_message(rx: &mut BusReceiver) -> Envelope {
        loop {
            match rx.recv().await.expect("bus open") {
                BusEvent::Message(envelope) => return envelope,
                _ => continue,
            }
        }
    }

    #[tokio::test]
    async fn publishes_reach_the_subscribers_of_a_topic() {
        let hub = LocalHub::default();
        let (a, mut a_rx) = hub.join("a", 16);
        let (b, mut b_rx) = hub.join("b", 16);
        assert!(a.has_peers());
        b.subscribe(Topic::Conversation(ConversationId(7))).await.expect("subscribes");
        let to_conv = (Topic::Conversation(ConversationId(7)), catch_up("a"));
        let to_b = (Topic::node("b"), catch_up("a"));
        let to_all = (Topic::Broadcast, catch_up("a"));
        a.publish(vec![to_conv, to_b, to_all]).await.expect("publishes");
        for _ in 0..3 {
            assert_eq!(next_message(&mut b_rx).await, catch_up("a"));
        }
        // The publisher hears only the broadcast.
        assert_eq!(next_message(&mut a_rx).await, catch_up("a"));
        assert!(a_rx.rx.is_empty());
    }

    #[tokio::test]
    async fn the_directory_forgets_a_crashed_node_at_the_next_heartbeat() {
        let hub = LocalHub::default();
        let (a, _a_rx) = hub.join("a", 16);
        let (b, _b_rx) = hub.join("b", 16);
        a.update_registry(&[(UserId(1), true)]).await.expect("registers");
        b.update_registry(&[(UserId(1), true)]).await.expect("registers");
        b.set_presence(UserId(1), Some(Status::Online), None).await.expect("sets");
        assert_eq!(a.nodes_of(&[UserId(1)]).await.expect("reads"), vec![vec!["a", "b"]]);
        hub.crash("b");
        assert_eq!(a.nodes_of(&[UserId(1)]).await.expect("reads"), vec![vec!["a"]]);
        assert_eq!(a.heartbeat(&[UserId(1)], &[]).await.expect("beats"), vec!["b"]);
        assert!(a.presence_of(&[UserId(1)]).await.expect("reads")[0].nodes.is_empty());
        assert!(!a.has_peers());
    }

    #[tokio::test]
    async fn faults_drop_with_notice_and_duplicate_reproducibly() {
        let faults = Faults { drop: 0.3, duplicate: 0.3, seed: 7, ..Faults::default() };
        let mut seen = Vec::new();
        for _ in 0..2 {
            let hub = LocalHub::with_faults(faults.clone());
            let (a, _a_rx) = hub.join("a", 1024);
            let (_b, mut b_rx) = hub.join("b", 1024);
            for _ in 0..100 {
                a.publish(vec![(Topic::node("b"), catch_up("a"))]).await.expect("publishes");
            }
            drop(hub);
            let (mut messages, mut notices) = (0, 0);
            while let Ok(item) = b_rx.rx.try_recv() {
                match item {
                    Some(Incoming::Decoded(_)) => messages += 1,
                    Some(Incoming::Disconnected) => notices += 1,
                    _ => {}
                }
            }
            assert!(notices > 10 && notices < 50, "{notices} drops of 100");
            assert!(messages > 100 - notices, "duplicates: {messages} delivered");
            seen.push((messages, notices));
        }
        assert_eq!(seen[0], seen[1], "the same seed gives the same faults");
    }
}
