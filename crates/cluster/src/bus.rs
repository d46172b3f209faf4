//! The bus port: what nodes tell each other, where it goes, and the [`Bus`] trait that
//! carries it.
//!
//! A node's server code talks to other nodes only through a [`Bus`]: publish an
//! [`Envelope`] on a [`Topic`], subscribe to topics, and keep the shared directory (which
//! node holds whose sessions, each node's presence view, which nodes are alive). Two
//! implementations: [`crate::local::LocalBus`] (in process: the single-node default, and
//! in-process clusters of several nodes in tests, with injectable faults) and
//! [`crate::redis::RedisBus`] (cluster mode). A single node is a one-node cluster: the
//! server runs the same routing path on either.
//!
//! Delivery is at most once, as Redis pub/sub is: subscribers lose what is published while
//! they are disconnected or overflowing, and learn of it by [`BusEvent::Disconnected`] and
//! [`BusEvent::Overflow`]. The log and `seq` make that safe (the server fills gaps from the
//! store).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use natter_proto::{Committed, ConversationId, DeviceId, Status, UserId};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Where a bus message goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// One node: targeted delivery to the sessions it holds.
    Node(Arc<str>),
    /// One large conversation (fan-out on read): every node holding a member's session that
    /// synced it subscribes.
    Conversation(ConversationId),
    /// Every node: presence changes, nodes leaving, catch-up requests, revoked tokens.
    Broadcast,
}

impl Topic {
    /// The topic of one node.
    pub fn node(node: &str) -> Topic {
        Topic::Node(node.into())
    }

    /// Reads a topic back from its [`Display`](fmt::Display) name.
    pub fn parse(name: &str) -> Option<Topic> {
        if name == "natter:all" {
            return Some(Topic::Broadcast);
        }
        if let Some(node) = name.strip_prefix("natter:n:") {
            return Some(Topic::node(node));
        }
        let conv = name.strip_prefix("natter:c:")?.parse().ok()?;
        Some(Topic::Conversation(ConversationId(conv)))
    }
}

/// The channel name (Redis uses it as is).
impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::Node(node) => write!(f, "natter:n:{node}"),
            Topic::Conversation(conv) => write!(f, "natter:c:{}", conv.0),
            Topic::Broadcast => f.write_str("natter:all"),
        }
    }
}

/// What crosses the bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Envelope {
    /// Committed entries for the receiving node's sessions, in commit order.
    Entries { node: String, entries: Vec<Committed> },
    /// A ready frame (receipt, typing) for these users' sessions on the receiving node.
    Frame { users: Vec<UserId>, frame: String },
    /// A node's view of a user changed (`None`: no session there any more).
    Presence { node: String, user: UserId, status: Option<Status>, last_seen: Option<i64> },
    /// Something was lost: every node catches its sessions up from the store.
    CatchUp { node: String },
    /// A node left (graceful stop), was found dead, or restarted under the same id: its
    /// statuses no longer count.
    NodeGone { node: String },
    /// A device's token was revoked (logout): every node ends that device's sessions.
    Revoked { node: String, user: UserId, device: DeviceId },
    /// `blocker` blocked or unblocked `blocked`: every node forgets what it cached of both
    /// users' blocks, and stops presence between them.
    Blocked { node: String, blocker: UserId, blocked: UserId },
}

impl Envelope {
    pub(crate) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("envelopes serialize")
    }
}

/// One status of a user on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub node: String,
    pub status: Status,
}

/// A user's presence as the directory has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedPresence {
    pub nodes: Vec<NodeStatus>,
    pub last_seen: Option<i64>,
}

/// The bus or its directory did not answer.
#[derive(Debug, thiserror::Error)]
#[error("bus unavailable: {0}")]
pub struct BusError(pub String);

pub type BusResult<T> = std::result::Result<T, BusError>;

/// One node's handle on the bus and the shared directory.
///
/// Directory entries of a node lapse unless its heartbeat refreshes them; whoever finds a
/// node dead sweeps its entries.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// This node's id.
    fn node(&self) -> &str;

    /// Whether other nodes may be listening. A node alone on an in-process bus has nobody
    /// to publish entries to, and skips building what it would send.
    fn has_peers(&self) -> bool;

    /// Adds (`true`) or removes (`false`) this node from users' registry entries, in order.
    async fn update_registry(&self, ops: &[(UserId, bool)]) -> BusResult<()>;

    /// The live nodes holding each user's sessions, in the order of `users`.
    async fn nodes_of(&self, users: &[UserId]) -> BusResult<Vec<Vec<String>>>;

    /// Records this node's view of `user`: `Some` status while it holds sessions (or is in
    /// the grace period), `None` when not; `last_seen` when the user went offline here.
    async fn set_presence(
        &self,
        user: UserId,
        status: Option<Status>,
        last_seen: Option<i64>,
    ) -> BusResult<()>;

    /// Every live node's status of each user, and when they were last seen, in the order of
    /// `users`.
    async fn presence_of(&self, users: &[UserId]) -> BusResult<Vec<SharedPresence>>;

    /// Refreshes this node's liveness, registry entries (`users`: every user with sessions
    /// here) and presence (`statuses`), and sweeps nodes that stopped heart-beating.
    /// Returns the nodes it found dead.
    async fn heartbeat(
        &self,
        users: &[UserId],
        statuses: &[(UserId, Status)],
    ) -> BusResult<Vec<String>>;

    /// Removes every directory entry of `node` (dead, or this node's previous run under the
    /// same id). Returns whether it left anything.
    async fn sweep(&self, node: &str) -> BusResult<bool>;

    /// Leaves cleanly: this node's directory entries go at once, not at their TTL.
    async fn leave(&self) -> BusResult<()> {
        let node = self.node().to_owned();
        self.sweep(&node).await.map(|_| ())
    }

    /// Publishes each message on its topic, in order.
    async fn publish(&self, messages: Vec<(Topic, Envelope)>) -> BusResult<()>;

    /// Subscribes this node to a topic; returns once the subscription holds.
    async fn subscribe(&self, topic: Topic) -> BusResult<()>;

    /// Ends a subscription.
    async fn unsubscribe(&self, topic: Topic) -> BusResult<()>;

    /// Claims `key` for `ttl`: `true` for the first claim on any node, `false` for every
    /// later one until the claim lapses (single-use tickets).
    async fn claim_once(&self, key: &str, ttl: std::time::Duration) -> BusResult<bool>;
}

/// What a node's subscriptions report.
#[derive(Debug)]
pub enum BusEvent {
    /// A message on one of the node's topics.
    Message(Envelope),
    /// The subscriber lost the bus (messages published meanwhile are lost to this node).
    Disconnected,
    /// A subscription was confirmed (also after a reconnect).
    Subscribed(Topic),
    /// Messages were dropped because the node did not keep up.
    Overflow,
}

/// What an [`Inbox`] holds: envelopes, still encoded when they came over a wire.
#[derive(Debug)]
pub(crate) enum Incoming {
    Encoded(Vec<u8>),
    Decoded(Envelope),
    Disconnected,
    Subscribed(Topic),
}

/// The sending side of a node's subscriptions, with the cap on messages waiting: beyond
/// it they are dropped and one [`BusEvent::Overflow`] is reported until the queue drains
/// below the cap again.
#[derive(Clone)]
pub(crate) struct Inbox {
    tx: mpsc::UnboundedSender<Option<Incoming>>,
    queued: Arc<AtomicUsize>,
    overflowing: Arc<AtomicBool>,
    max_queued: usize,
}

/// The receiving end of a node's subscriptions.
pub struct BusReceiver {
    // `None` is an overflow report.
    pub(crate) rx: mpsc::UnboundedReceiver<Option<Incoming>>,
    queued: Arc<AtomicUsize>,
}

pub(crate) fn inbox(max_queued: usize) -> (Inbox, BusReceiver) {
    // Unbounded channel, bounded by `queued`: the pushing side (Redis's push callback) must
    // never wait.
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let inbox = Inbox {
        tx,
        queued: queued.clone(),
        overflowing: Arc::new(AtomicBool::new(false)),
        max_queued,
    };
    (inbox, BusReceiver { rx, queued })
}

impl Inbox {
    /// Queues one item; false once the receiver is gone.
    pub(crate) fn push(&self, item: Incoming) -> bool {
        let is_message = matches!(item, Incoming::Encoded(_) | Incoming::Decoded(_));
        if !is_message {
            return self.tx.send(Some(item)).is_ok();
        }
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.max_queued {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            if self.overflowing.swap(true, Ordering::Relaxed) {
                return !self.tx.is_closed();
            }
            return self.tx.send(None).is_ok();
        }
        self.overflowing.store(false, Ordering::Relaxed);
        self.tx.send(Some(item)).is_ok()
    }
}

impl BusReceiver {
    /// The next event; `None` once the bus is gone for good. Undecodable messages are
    /// logged and skipped.
    pub async fn recv(&mut self) -> Option<BusEvent> {
        loop {
            let item = match self.rx.recv().await? {
                Some(item) => item,
                None => return Some(BusEvent::Overflow),
            };
            let envelope = match item {
                Incoming::Encoded(bytes) => {
                    self.queued.fetch_sub(1, Ordering::Relaxed);
                    match serde_json::from_slice(&bytes) {
                        Ok(envelope) => envelope,
                        Err(err) => {
                            tracing::warn!(error = %err, "undecodable bus message");
                            continue;
                        }
                    }
                }
                Incoming::Decoded(envelope) => {
                    self.queued.fetch_sub(1, Ordering::Relaxed);
                    envelope
                }
                Incoming::Disconnected => return Some(BusEvent::Disconnected),
                Incoming::Subscribed(topic) => return Some(BusEvent::Subscribed(topic)),
            };
            return Some(BusEvent::Message(envelope));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_name_their_channels_and_parse_back() {
        let topics =
            [Topic::node("node-1"), Topic::Conversation(ConversationId(42)), Topic::Broadcast];
        let names: Vec<String> = topics.iter().map(Topic::to_string).collect();
        assert_eq!(names, ["natter:n:node-1", "natter:c:42", "natter:all"]);
        for (topic, name) in topics.iter().zip(&names) {
            assert_eq!(Topic::parse(name).as_ref(), Some(topic));
        }
        assert_eq!(Topic::parse("natter:c:x"), None);
        assert_eq!(Topic::parse("other"), None);
    }

    #[test]
    fn envelopes_round_trip() {
        let msg = Envelope::Presence {
            node: "n".into(),
            user: UserId(3),
            status: Some(Status::Away),
            last_seen: None,
        };
        let back: Envelope = serde_json::from_slice(&msg.encode()).expect("decodes");
        assert_eq!(back, msg);
        let msg = Envelope::Revoked { node: "n".into(), user: UserId(3), device: DeviceId(9) };
        let back: Envelope = serde_json::from_slice(&msg.encode()).expect("decodes");
        assert_eq!(back, msg);
    }

    #[tokio::test]
    async fn an_inbox_over_its_cap_reports_one_overflow_until_it_drains() {
        let (inbox, mut rx) = inbox(2);
        let msg = || Incoming::Decoded(Envelope::CatchUp { node: "n".into() });
        for _ in 0..5 {
            assert!(inbox.push(msg()));
        }
        let mut events = Vec::new();
        for _ in 0..3 {
            events.push(rx.recv().await.expect("queued"));
        }
        assert!(matches!(events[0], BusEvent::Message(_)));
        assert!(matches!(events[1], BusEvent::Message(_)));
        assert!(matches!(events[2], BusEvent::Overflow));
        assert!(inbox.push(msg()));
        assert!(matches!(rx.recv().await, Some(BusEvent::Message(_))));
    }
}
