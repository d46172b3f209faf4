//! Presence: who is online, away or offline, told only to sessions that asked.
//!
//! A user is online while any of their sessions is alive (liveness comes from the
//! transport: WebSocket pings and the idle timeout, long-poll requests and the stream TTL)
//! and not every session said `away`. When the last session ends the user turns offline
//! only after `presence_grace_ms`, so a reconnect does not flap. Nothing is broadcast: a
//! session subscribes to a bounded list of users it shows (who must share a conversation
//! with it), and changes to them are collected per session and sent at most once per
//! `presence_batch_ms`, leaving out users whose status is back to what the session last saw.
//!
//! In cluster mode each node knows its own sessions; what it decides for a user (online,
//! away, gone after the grace) is its local status, written to Redis and broadcast. Watchers
//! see the combination of the local status and the other nodes' (online beats away beats
//! offline), kept from the broadcasts for watched users and read from Redis when a user
//! starts being watched.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Instant;

use natter_cluster::SessionId;
use natter_cluster::SharedPresence;
use natter_proto::{Presence, ServerFrame, Status, UserId};
use tokio::sync::mpsc;

use crate::delivery::Outbound;
use crate::now_ms;
use crate::session::SessionHandle;

pub(crate) struct PresenceHub {
    // A std mutex: every operation is map work; frames are offered with `try_send`.
    inner: Mutex<Inner>,
}

/// A change of this node's status for a user, for the cluster (`None`: no session here).
pub(crate) struct LocalPresence {
    pub(crate) user: UserId,
    pub(crate) status: Option<Status>,
    pub(crate) last_seen: Option<i64>,
}

struct Inner {
    users: HashMap<UserId, UserPresence>,
    subs: HashMap<SessionId, Subscriber>,
    /// Reverse index: the sessions watching each user.
    watchers: HashMap<UserId, HashSet<SessionId>>,
    /// Where local status changes go (the cluster's publisher).
    changes: mpsc::UnboundedSender<LocalPresence>,
}

struct UserPresence {
    sessions: HashMap<SessionId, Status>,
    /// This node's status for the user.
    published: Status,
    last_seen: Option<i64>,
    /// The last session ended; offline is published at this time unless one comes back.
    offline_at: Option<Instant>,
    /// Other nodes' statuses (cluster mode; kept for watched users only).
    remote: HashMap<String, Status>,
    remote_seen: Option<i64>,
    /// What watchers were last told: the combination of `published` and `remote`.
    shown: Status,
}

impl UserPresence {
    fn new() -> UserPresence {
        UserPresence {
            sessions: HashMap::new(),
            published: Status::Offline,
            last_seen: None,
            offline_at: None,
            remote: HashMap::new(),
            remote_seen: None,
            shown: Status::Offline,
        }
    }

    fn combined(&self) -> Status {
        let all = || std::iter::once(&self.published).chain(self.remote.values());
        if all().any(|s| *s == Status::Online) {
            Status::Online
        } else if all().any(|s| *s == Status::Away) {
            Status::Away
        } else {
            Status::Offline
        }
    }

    fn seen(&self) -> Option<i64> {
        self.last_seen.max(self.remote_seen)
    }
}

struct Subscriber {
    owner: UserId,
    handle: SessionHandle,
    watching: Vec<UserId>,
    pending: BTreeMap<UserId, Presence>,
    last_sent: HashMap<UserId, Status>,
}

impl Inner {
    fn current(&self, user: UserId) -> Presence {
        match self.users.get(&user) {
            Some(p) => Presence { user, status: p.shown, last_seen: p.seen() },
            None => Presence { user, status: Status::Offline, last_seen: None },
        }
    }

    /// Updates this node's status for `user`, then tells watchers if what they see changed.
    fn recompute(&mut self, user: UserId, grace: std::time::Duration) {
        let Some(p) = self.users.get_mut(&user) else { return };
        let local = if p.sessions.is_empty() {
            if p.published == Status::Offline {
                None
            } else if !grace.is_zero() && p.offline_at.is_none() {
                p.offline_at = Some(Instant::now() + grace);
                None
            } else if p.offline_at.is_some_and(|at| at > Instant::now()) {
                None
            } else {
                p.last_seen = Some(now_ms());
                Some(Status::Offline)
            }
        } else if p.sessions.values().any(|s| *s == Status::Online) {
            Some(Status::Online)
        } else {
            Some(Status::Away)
        };
        if let Some(status) = local {
            p.offline_at = None;
            if status != p.published {
                p.published = status;
                let _ = self.changes.send(LocalPresence {
                    user,
                    status: (status != Status::Offline).then_some(status),
                    last_seen: (status == Status::Offline).then_some(p.last_seen).flatten(),
                });
            }
        }
        self.show(user);
    }

    /// Queues the user's combined status for its watchers if it changed.
    fn show(&mut self, user: UserId) {
        let Some(p) = self.users.get_mut(&user) else { return };
        let status = p.combined();
        if status == p.shown {
            return;
        }
        p.shown = status;
        let info = Presence { user, status, last_seen: p.seen() };
        for sid in self.watchers.get(&user).into_iter().flatten() {
            if let Some(sub) = self.subs.get_mut(sid) {
                sub.pending.insert(user, info);
            }
        }
    }

    fn unwatch(&mut self, sid: SessionId) {
        let Some(sub) = self.subs.get_mut(&sid) else { return };
        for user in std::mem::take(&mut sub.watching) {
            if let Some(set) = self.watchers.get_mut(&user) {
                set.remove(&sid);
                if set.is_empty() {
                    self.watchers.remove(&user);
                }
            }
        }
    }
}

impl PresenceHub {
    /// `changes` receives this node's status changes (for the other nodes).
    pub(crate) fn new(changes: mpsc::UnboundedSender<LocalPresence>) -> PresenceHub {
        let inner = Inner {
            users: HashMap::new(),
            subs: HashMap::new(),
            watchers: HashMap::new(),
            changes,
        };
        PresenceHub { inner: Mutex::new(inner) }
    }

    pub(crate) fn session_started(&self, user: UserId, sid: SessionId, handle: SessionHandle) {
        let mut inner = self.inner.lock().expect("presence lock poisoned");
        let subscriber = Subscriber {
            owner: user,
            handle,
            watching: Vec::new(),
            pending: BTreeMap::new(),
            last_sent: HashMap::new(),
        };
        inner.subs.insert(sid, subscriber);
        let p = inner.users.entry(user).or_insert_with(UserPresence::new);
        p.sessions.insert(sid, Status::Online);
        inner.recompute(user, std::time::Duration::ZERO);
    }

    pub(crate) fn session_ended(&self, user: UserId, sid: SessionId, grace: std::time::Duration) {
        let mut inner = self.inner.lock().expect("presence lock poisoned");
        inner.unwatch(sid);
        inner.subs.remove(&sid);
        if let Some(p) = inner.users.get_mut(&user) {
            p.sessions.remove(&sid);
        }
        inner.recompute(user, grace);
    }

    /// A session says it is online or away.
    pub(crate) fn set_status(&self, user: UserId, sid: SessionId, status: Status) {
        let mut inner = self.inner.lock().expect("presence lock poisoned");
        if let Some(slot) = inner.users.get_mut(&user).and_then(|p| p.sessions.get_mut(&sid)) {
            *slot = status;
        }
        inner.recompute(user, std::time::Duration::ZERO);
    }

    /// The user owning session `sid`, if it is alive.
    pub(crate) fn owner(&self, sid: SessionId) -> Option<UserId> {
        let inner = self.inner.lock().expect("presence lock poisoned");
        inner.subs.get(&sid).map(|s| s.owner)
    }

    /// Replaces what `sid` watches with `users` (already authorized and capped); returns
    /// their presence now.
    pub(crate) fn subscribe(&self, sid: SessionId, users: &[UserId]) -> Vec<Presence> {
        let mut inner = self.inner.lock().expect("presence lock poisoned");
        if !inner.subs.contains_key(&sid) {
            return Vec::new();
        }
        inner.unwatch(sid);
        let now: Vec<Presence> = users.iter().map(|u| inner.current(*u)).collect();
        for user in users {
            inner.watchers.entry(*user).or_default().insert(sid);
        }
        let sub = inner.subs.get_mut(&sid).expect("checked above");
        sub.watching = users.to_vec();
        sub.pending.clear();
        sub.last_sent = now.iter().map(|p| (p.user, p.status)).collect();
        now
    }

    /// `watcher`'s sessions here stop watching `watched` (a block between them); each is
    /// told `watched` is offline, with no last-seen time, so nothing stale stays shown.
    pub(crate) fn forget(&self, watcher: UserId, watched: UserId) {
        let mut inner = self.inner.lock().expect("presence lock poisoned");
        let Some(sids) = inner.watchers.get(&watched).cloned() else { return };
        let mut left = sids.clone();
        for sid in sids {
            let Some(sub) = inner.subs.get_mut(&sid) else { continue };
            if sub.owner != watcher {
                continue;
            }
            sub.watching.retain(|u| *u != watched);
            let gone = Presence { user: watched, status: Status::Offline, last_seen: None };
            sub.pending.insert(watched, gone);
            left.remove(&sid);
        }
        if left.is_empty() {
            inner.watchers.remove(&watched);
        } else {
            inner.watchers.insert(watched, left);
        }
    }

    /// Another node's status for `user` changed (cluster mode). Kept only while someone
    /// here watches the user; otherwise forgotten, and read again when watching starts.
    pub(crate) fn apply_remote(
        &self,
        user: UserId,
        node: &str,
        status: Option<Status>,
        last_seen: Option<i64>,
    ) {
        let mut inner = self.inner.lock().expect("presence lock poisoned");
        let watched = inner.watchers.contains_key(&user);
        if !watched {
            if let Some(p) = inner.users.get_mut(&user) {
                p.remote.clear();
                p.remote_seen = None;
            }
            return;
        }
        let p = inner.users.entry(user).or_insert_with(UserPresence::new);
        match status {
            Some(status) => p.remote.insert(node.to_owned(), status),
            None => p.remote.remove(node),
        };
        p.remote_seen = p.remote_seen.max(last_seen);
        inner.show(user);
    }

    /// Replaces what this node knows of other nodes' statuses for `user` with what Redis
    /// holds (`own`: this node's id, whose entry is known better here).
    pub(crate) fn seed(&self, user: UserId, own: &str, shared: SharedPresence) {
        let mut inner = self.inner.lock().expect("presence lock poisoned");
        let p = inner.users.entry(user).or_insert_with(UserPresence::new);
        p.remote = shared
            .nodes
            .into_iter()
            .filter(|n| n.node != own)
            .map(|n| (n.node, n.status))
            .collect();
        p.remote_seen = p.remote_seen.max(shared.last_seen);
        inner.show(user);
    }

    /// Users this node has no remote view of yet: those nobody here watches.
    pub(crate) fn unwatched(&self, users: &[UserId]) -> Vec<UserId> {
        let inner = self.inner.lock().expect("presence lock poisoned");
        users.iter().copied().filter(|u| !inner.watchers.contains_key(u)).collect()
    }

    /// Every user someone here watches.
    pub(crate) fn watched(&self) -> Vec<UserId> {
        let inner = self.inner.lock().expect("presence lock poisoned");
        inner.watchers.keys().copied().collect()
    }

    /// A node died: its statuses no longer count.
    pub(crate) fn node_gone(&self, node: &str) {
        let mut inner = self.inner.lock().expect("presence lock poisoned");
        let now = now_ms();
        let affected: Vec<UserId> = inner
            .users
            .iter_mut()
            .filter_map(|(u, p)| {
                p.remote.remove(node)?;
                // Seen there until now, as far as anyone here knows.
                p.remote_seen = p.remote_seen.max(Some(now));
                Some(*u)
            })
            .collect();
        for user in affected {
            inner.show(user);
        }
    }

    /// This node's status for every user it reports on (for the heartbeat).
    pub(crate) fn local_statuses(&self) -> Vec<(UserId, Status)> {
        let inner = self.inner.lock().expect("presence lock poisoned");
        inner
            .users
            .iter()
            .filter(|(_, p)| p.published != Status::Offline)
            .map(|(u, p)| (*u, p.published))
            .collect()
    }

    /// Publishes offlines whose grace ran out, then sends each subscriber one frame with
    /// what changed for it since the last tick.
    pub(crate) fn tick(&self) {
        let mut inner = self.inner.lock().expect("presence lock poisoned");
        let now = Instant::now();
        let due: Vec<UserId> = inner
            .users
            .iter()
            .filter(|(_, p)| p.offline_at.is_some_and(|at| at <= now))
            .map(|(u, _)| *u)
            .collect();
        for user in due {
            inner.recompute(user, std::time::Duration::ZERO);
        }
        for sub in inner.subs.values_mut() {
            if sub.pending.is_empty() {
                continue;
            }
            let changed: Vec<Presence> = std::mem::take(&mut sub.pending)
                .into_values()
                .filter(|p| sub.last_sent.get(&p.user) != Some(&p.status))
                .collect();
            if changed.is_empty() {
                continue;
            }
            for p in &changed {
                sub.last_sent.insert(p.user, p.status);
            }
            metrics::counter!("natter_presence_frames_total").increment(1);
            let frame = ServerFrame::Presence { users: changed }.to_json();
            sub.handle.offer(Outbound::Frame(frame.into()));
        }
    }
}
