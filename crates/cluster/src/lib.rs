//! The routing seam: who is connected where, and how nodes talk.
//!
//! - [`Registry`] maps each user to the live sessions this node holds for them. The router
//!   looks up a conversation's members here to fan an entry out; sessions register when
//!   they authenticate and deregister when they end.
//! - [`bus`]: the port between nodes: [`Topic`], [`Envelope`], the [`Bus`] trait (publish,
//!   subscribe, and the shared user → node directory with presence and liveness).
//! - [`local`]: the in-process bus, a single node's default and tests' faulty cluster bus.
//! - [`redis`]: the Redis bus of cluster mode.
//!
//! It knows nothing of sessions or stores: entries and frames are payloads to carry.

pub mod bus;
pub mod local;
pub mod redis;

pub use bus::{Bus, BusError, BusEvent, BusReceiver, Envelope, NodeStatus, SharedPresence, Topic};

use std::collections::HashMap;
use std::sync::Mutex;

use natter_proto::UserId;

/// A session's id, unique within this node's lifetime.
pub type SessionId = u64;

/// The sessions this node holds, by user. `H` is the handle used to reach a session (the
/// server's outbound queue sender).
pub struct Registry<H> {
    // A std mutex: every critical section is a few map operations and never awaits.
    by_user: Mutex<HashMap<UserId, Vec<(SessionId, H)>>>,
}

impl<H: Clone> Default for Registry<H> {
    fn default() -> Self {
        Registry { by_user: Mutex::new(HashMap::new()) }
    }
}

impl<H: Clone> Registry<H> {
    /// Adds a session of `user`.
    pub fn register(&self, user: UserId, session: SessionId, handle: H) {
        let mut map = self.by_user.lock().expect("registry lock poisoned");
        map.entry(user).or_default().push((session, handle));
    }

    /// Adds a session of `user` unless they already have `max` here; false if not added.
    /// The check and the insert share one lock, so concurrent sessions cannot overshoot.
    pub fn try_register(&self, user: UserId, session: SessionId, handle: H, max: usize) -> bool {
        let mut map = self.by_user.lock().expect("registry lock poisoned");
        if map.get(&user).map_or(0, Vec::len) >= max {
            return false;
        }
        map.entry(user).or_default().push((session, handle));
        true
    }

    /// Removes a session; forgets the user when it was their last.
    pub fn deregister(&self, user: UserId, session: SessionId) {
        let mut map = self.by_user.lock().expect("registry lock poisoned");
        if let Some(list) = map.get_mut(&user) {
            list.retain(|(id, _)| *id != session);
            if list.is_empty() {
                map.remove(&user);
            }
        }
    }

    /// Calls `f` with every session of each of `users`, under one short lock.
    pub fn for_each_session(&self, users: &[UserId], mut f: impl FnMut(UserId, SessionId, &H)) {
        let map = self.by_user.lock().expect("registry lock poisoned");
        for user in users {
            if let Some(list) = map.get(user) {
                for (id, handle) in list {
                    f(*user, *id, handle);
                }
            }
        }
    }

    /// Calls `f` with every session this node holds, under one short lock.
    pub fn for_each(&self, mut f: impl FnMut(UserId, SessionId, &H)) {
        let map = self.by_user.lock().expect("registry lock poisoned");
        for (user, list) in map.iter() {
            for (id, handle) in list {
                f(*user, *id, handle);
            }
        }
    }

    /// Every user with a session here.
    pub fn users(&self) -> Vec<UserId> {
        let map = self.by_user.lock().expect("registry lock poisoned");
        map.keys().copied().collect()
    }

    /// How many sessions `user` has here.
    pub fn n_sessions(&self, user: UserId) -> usize {
        let map = self.by_user.lock().expect("registry lock poisoned");
        map.get(&user).map_or(0, Vec::len)
    }

    /// How many sessions this node holds in all.
    pub fn len(&self) -> usize {
        let map = self.by_user.lock().expect("registry lock poisoned");
        map.values().map(Vec::len).sum()
    }

    /// Whether this node holds no session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_finds_and_forgets_sessions() {
        let reg = Registry::<&'static str>::default();
        reg.register(UserId(1), 10, "a");
        reg.register(UserId(1), 11, "b");
        reg.register(UserId(2), 12, "c");
        let mut seen = Vec::new();
        reg.for_each_session(&[UserId(1), UserId(3)], |u, s, h| seen.push((u, s, *h)));
        assert_eq!(seen, vec![(UserId(1), 10, "a"), (UserId(1), 11, "b")]);
        reg.deregister(UserId(1), 10);
        reg.deregister(UserId(1), 11);
        assert_eq!(reg.n_sessions(UserId(1)), 0);
        assert_eq!(reg.len(), 1);
    }

    #[test]
    fn try_register_stops_at_the_cap() {
        let reg = Registry::<&'static str>::default();
        assert!(reg.try_register(UserId(1), 10, "a", 2));
        assert!(reg.try_register(UserId(1), 11, "b", 2));
        assert!(!reg.try_register(UserId(1), 12, "c", 2));
        assert!(reg.try_register(UserId(2), 13, "d", 2));
        reg.deregister(UserId(1), 10);
        assert!(reg.try_register(UserId(1), 12, "c", 2));
        assert_eq!(reg.n_sessions(UserId(1)), 2);
    }
}
