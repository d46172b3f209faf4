//! The bus port: where the router meets the other nodes.
//!
//! The router hands what other nodes need to the [`Port`] ([`Publish`]: committed entries
//! with their members, ready frames for users); the cluster's publisher takes it from
//! there. What other nodes send arrives as [`Inbound`] in the router's inbox and is fanned
//! out like local commits. Router and cluster meet only here; neither calls the other.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use natter_cluster::Bus;
use natter_proto::{Committed, UserId};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// What the router asks the bus to send.
pub(crate) enum Publish {
    /// Committed entries (in commit order) with the members each is for.
    Entries(Vec<(Committed, Arc<Vec<UserId>>)>),
    /// A ready frame (receipt, typing) for these users' sessions on other nodes.
    ToUsers { users: Vec<UserId>, frame: Utf8Bytes },
}

/// What other nodes sent, for this node's sessions.
pub(crate) enum Inbound {
    /// Committed entries, in the order their node committed them.
    Entries(Vec<Committed>),
    /// A ready frame for these users' sessions.
    Frame { users: Vec<UserId>, frame: Utf8Bytes },
    /// Messages may have been lost: every session reads what it is missing from the store.
    CatchUp,
}

/// The router's side of the bus.
pub(crate) struct Port {
    bus: Arc<dyn Bus>,
    publish_tx: mpsc::Sender<Publish>,
    /// Something was lost since the bus last answered: the cluster's next heartbeat asks
    /// every node to catch up.
    trouble: AtomicBool,
}

impl Port {
    pub(crate) fn new(bus: Arc<dyn Bus>, publish_tx: mpsc::Sender<Publish>) -> Port {
        Port { bus, publish_tx, trouble: AtomicBool::new(false) }
    }

    /// Whether anyone else may listen; alone, nothing needs publishing.
    pub(crate) fn has_peers(&self) -> bool {
        self.bus.has_peers()
    }

    /// Queues a publish without waiting; a full queue drops it and makes every node catch
    /// up later.
    pub(crate) fn publish(&self, item: Publish) {
        if self.publish_tx.try_send(item).is_err() {
            metrics::counter!("natter_bus_dropped_total").increment(1);
            self.report_trouble();
        }
    }

    /// Sends `frame` to the sessions of `users` on other nodes.
    pub(crate) fn to_users(&self, users: Vec<UserId>, frame: Utf8Bytes) {
        if !users.is_empty() && self.has_peers() {
            self.publish(Publish::ToUsers { users, frame });
        }
    }

    /// Something this node sent or should have received may be lost.
    pub(crate) fn report_trouble(&self) {
        self.trouble.store(true, Ordering::Relaxed);
    }

    /// Takes the trouble reported so far (the heartbeat asks for a catch-up with it).
    pub(crate) fn take_trouble(&self) -> bool {
        self.trouble.swap(false, Ordering::Relaxed)
    }
}
