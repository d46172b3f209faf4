//! Login failure limits: per client address and per handle, with exponential back-off.
//!
//! Each key (an address, or a handle's key so that look-alikes share one) counts failed
//! logins. Once it has `free` of them, each failure sets a back-off of `base · 2^(n − free)`
//! (n: failures so far), at most `max`, during which every login of that key is refused
//! before any password is hashed (`too_many_requests` with `retry_after_ms`), the right
//! password included. A successful login clears its handle's count (not its address's: one
//! account of the attacker's own must not reset the address). A key with no failure for
//! `max` after its back-off ended starts afresh. Counts live in this node's memory: a
//! cluster of N nodes allows N times as many tries, and a restart forgets them.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::ClientAddr;
use crate::config::Limits;

/// Keys of each kind tracked at most; beyond it the stalest entry is forgotten, so memory
/// stays bounded (~100 bytes an entry) whatever an attacker sprays.
const MAX_TRACKED: usize = 100_000;

pub(crate) struct LoginGuard {
    // Std mutexes: each use is one or two map operations.
    by_addr: Mutex<Counts<ClientAddr>>,
    by_handle: Mutex<Counts<String>>,
}

struct Counts<K> {
    map: HashMap<K, Failures>,
    free: u32,
}

#[derive(Clone, Copy)]
struct Failures {
    n: u32,
    last: Instant,
    until: Option<Instant>,
}

#[derive(Clone, Copy)]
struct Backoff {
    base: Duration,
    max: Duration,
}

impl Failures {
    fn expired(&self, now: Instant, backoff: Backoff) -> bool {
        self.until.unwrap_or(self.last) + backoff.max <= now
    }
}

impl<K: Hash + Eq + Clone> Counts<K> {
    fn new(free: u32) -> Counts<K> {
        Counts { map: HashMap::new(), free }
    }

    fn blocked(&self, key: &K, now: Instant) -> Option<Duration> {
        let until = self.map.get(key)?.until?;
        (until > now).then(|| until - now)
    }

    fn fail(&mut self, key: &K, now: Instant, backoff: Backoff) {
        if !self.map.contains_key(key) && self.map.len() >= MAX_TRACKED {
            self.map.retain(|_, f| !f.expired(now, backoff));
            if self.map.len() >= MAX_TRACKED
                && let Some(stalest) =
                    self.map.iter().min_by_key(|(_, f)| f.last).map(|(k, _)| k.clone())
            {
                self.map.remove(&stalest);
            }
        }
        let f = self.map.entry(key.clone()).or_insert(Failures { n: 0, last: now, until: None });
        if f.expired(now, backoff) {
            *f = Failures { n: 0, last: now, until: None };
        }
        f.n = f.n.saturating_add(1);
        f.last = now;
        if f.n >= self.free {
            let doublings = (f.n - self.free).min(30);
            let wait = backoff.base.saturating_mul(1 << doublings).min(backoff.max);
            f.until = Some(now + wait);
        }
    }
}

impl LoginGuard {
    pub(crate) fn new(limits: &Limits) -> LoginGuard {
        LoginGuard {
            by_addr: Mutex::new(Counts::new(limits.login_failures_per_address)),
            by_handle: Mutex::new(Counts::new(limits.login_failures_per_handle)),
        }
    }

    /// How long logins from `addr` or for `handle_key` must still wait, if at all.
    pub(crate) fn blocked(
        &self,
        addr: ClientAddr,
        handle_key: &str,
        now: Instant,
    ) -> Option<Duration> {
        let by_addr = self.by_addr.lock().expect("login guard poisoned").blocked(&addr, now);
        let by_handle = self
            .by_handle
            .lock()
            .expect("login guard poisoned")
            .blocked(&handle_key.to_owned(), now);
        by_addr.max(by_handle)
    }

    /// Counts a failed login.
    pub(crate) fn failed(&self, limits: &Limits, addr: ClientAddr, handle_key: &str, now: Instant) {
        let backoff = Backoff { base: limits.login_backoff(), max: limits.login_backoff_max() };
        self.by_addr.lock().expect("login guard poisoned").fail(&addr, now, backoff);
        let key = handle_key.to_owned();
        self.by_handle.lock().expect("login guard poisoned").fail(&key, now, backoff);
    }

    /// A successful login clears its handle's failures.
    pub(crate) fn succeeded(&self, handle_key: &str) {
        self.by_handle.lock().expect("login guard poisoned").map.remove(handle_key);
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    fn limits() -> Limits {
        Limits {
            login_failures_per_handle: 3,
            login_failures_per_address: 5,
            login_backoff_ms: 1_000,
            login_backoff_max_ms: 8_000,
            ..Limits::default()
        }
    }

    fn addr(last: u8) -> ClientAddr {
        ClientAddr::from_ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)))
    }

    #[test]
    fn a_handle_backs_off_exponentially_then_starts_afresh() {
        let (l, g, t0) = (limits(), LoginGuard::new(&limits()), Instant::now());
        let s = Duration::from_secs;
        for i in 0..2 {
            g.failed(&l, addr(i), "alice", t0);
            assert_eq!(g.blocked(addr(9), "alice", t0), None, "the first failures are free");
        }
        g.failed(&l, addr(2), "alice", t0);
        assert_eq!(g.blocked(addr(9), "alice", t0), Some(s(1)));
        assert_eq!(g.blocked(addr(8), "alice", t0 + s(1)), None);
        g.failed(&l, addr(8), "alice", t0 + s(1));
        assert_eq!(g.blocked(addr(7), "alice", t0 + s(1)), Some(s(2)));
        let mut t = t0 + s(1);
        for _ in 0..5 {
            g.failed(&l, addr(7), "alice", t);
            t += s(1);
        }
        // Capped at the maximum.
        assert_eq!(g.blocked(addr(7), "alice", t - s(1)), Some(s(8)));
        assert_eq!(g.blocked(addr(7), "bob", t), None, "other handles are not affected");
        // Quiet for the maximum after the back-off ended: free failures again.
        let later = t - s(1) + s(8) + s(8);
        g.failed(&l, addr(7), "alice", later);
        assert_eq!(g.blocked(addr(7), "alice", later), None);
    }

    #[test]
    fn an_address_backs_off_across_handles_and_success_clears_only_the_handle() {
        let (l, g, t0) = (limits(), LoginGuard::new(&limits()), Instant::now());
        for i in 0..5 {
            g.failed(&l, addr(1), &format!("user{i}"), t0);
        }
        assert_eq!(g.blocked(addr(1), "fresh", t0), Some(Duration::from_secs(1)));
        assert_eq!(g.blocked(addr(2), "fresh", t0), None, "other addresses are not affected");
        g.failed(&l, addr(2), "carol", t0);
        g.failed(&l, addr(2), "carol", t0);
        g.succeeded("carol");
        g.failed(&l, addr(3), "carol", t0);
        g.failed(&l, addr(3), "carol", t0);
        assert_eq!(g.blocked(addr(4), "carol", t0), None, "the success reset carol's count");
        g.succeeded("user1");
        assert!(g.blocked(addr(1), "user1", t0).is_some(), "but not the address's");
    }

    #[test]
    fn tracking_is_bounded() {
        let (l, g, t0) = (limits(), LoginGuard::new(&limits()), Instant::now());
        for i in 0..MAX_TRACKED + 10 {
            g.failed(&l, addr(1), &format!("h{i}"), t0 + Duration::from_nanos(i as u64));
        }
        assert_eq!(g.by_handle.lock().unwrap().map.len(), MAX_TRACKED);
    }
}
