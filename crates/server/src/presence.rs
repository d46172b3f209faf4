//! Presence: who is online, away or offline, told only to sessions that asked.
//!
//! A user is online while any of their sessions is alive (liveness comes from the
//! transport: WebSocket pings and the idle timeout, long-poll requests and the stream TTL)
//! and not every session said `away`. When the last session ends the user turns offline
//! only after `presence_grace_ms`, so a reconnect does not flap. Nothing is broadcast: a
//! session subscribes to a bounded list of users it shows (who must share a conversation
//! with it), and changes to them are collected per session and sent at most once per
//! `presence_batch_ms`, leaving out users whose status is back to what the session last saw.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use natter_cluster::SessionId;
use natter_proto::{Presence, ServerFrame, Status, UserId};

use crate::delivery::Outbound;
use crate::session::SessionHandle;

#[derive(Default)]
pub(crate) struct PresenceHub {
    // A std mutex: every operation is map work; frames are offered with `try_send`.
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    users: HashMap<UserId, UserPresence>,
    subs: HashMap<SessionId, Subscriber>,
    /// Reverse index: the sessions watching each user.
    watchers: HashMap<UserId, HashSet<SessionId>>,
}

struct UserPresence {
    sessions: HashMap<SessionId, Status>,
    published: Status,
    last_seen: Option<i64>,
    /// The last session ended; offline is published at this time unless one comes back.
    offline_at: Option<Instant>,
}

struct Subscriber {
    owner: UserId,
    handle: SessionHandle,
    watching: Vec<UserId>,
    pending: BTreeMap<UserId, Presence>,
    last_sent: HashMap<UserId, Status>,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Inner {
    fn current(&self, user: UserId) -> Presence {
        match self.users.get(&user) {
            Some(p) => Presence { user, status: p.published, last_seen: p.last_seen },
            None => Presence { user, status: Status::Offline, last_seen: None },
        }
    }

    /// Publishes `user`'s status if it changed.
    fn recompute(&mut self, user: UserId, grace: std::time::Duration) {
        let Some(p) = self.users.get_mut(&user) else { return };
        let status = if p.sessions.is_empty() {
            if p.published == Status::Offline {
                return;
            }
            if !grace.is_zero() && p.offline_at.is_none() {
                p.offline_at = Some(Instant::now() + grace);
                return;
            }
            if p.offline_at.is_some_and(|at| at > Instant::now()) {
                return;
            }
            p.last_seen = Some(now_ms());
            Status::Offline
        } else if p.sessions.values().any(|s| *s == Status::Online) {
            Status::Online
        } else {
            Status::Away
        };
        p.offline_at = None;
        if status == p.published {
            return;
        }
        p.published = status;
        let info = Presence { user, status, last_seen: p.last_seen };
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
        let p = inner.users.entry(user).or_insert(UserPresence {
            sessions: HashMap::new(),
            published: Status::Offline,
            last_seen: None,
            offline_at: None,
        });
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
