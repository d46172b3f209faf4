//! Password hashing off the async runtime, queued fairly across client addresses.
//!
//! Argon2 runs on two long-lived threads of its own. Each hash takes 19 MiB and a core for
//! tens of milliseconds; on tokio's blocking pool every new thread kept its freed 19 MiB in
//! its own malloc arena (a fresh server grew to 1.5 GB after 40 logins). Two threads — the
//! cores this server is sized for — bound that to two buffers; callers queue.
//!
//! The queue is one FIFO per client address, served round robin: a thread takes the next
//! job of the next address in turn. One address flooding logins fills only its own queue
//! (capped by `max_hashes_per_address`); another address's login waits for at most one job
//! of each address ahead of it in the turn, not for the whole flood (with one shared FIFO,
//! 400 flooding workers delayed every real login by seconds).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::ClientAddr;

type HashJob = Box<dyn FnOnce() + Send>;

/// Hashes waiting for a thread, all addresses together; beyond this, logins and
/// registrations are refused (`too_many_requests`) rather than queued without bound.
const HASH_QUEUE: usize = 256;
const N_THREADS: usize = 2;

/// The queue is full (for everyone, or for this address); try again after this.
pub(crate) struct Busy(pub(crate) Duration);

pub(crate) struct Pool {
    // A std mutex: held for a few queue operations, never while hashing.
    queue: Mutex<FairQueue>,
    ready: Condvar,
    /// How long the latest hash took, in microseconds (for `retry_after_ms`).
    last_hash_us: AtomicU64,
}

#[derive(Default)]
struct FairQueue {
    by_addr: HashMap<ClientAddr, VecDeque<HashJob>>,
    /// Addresses with queued jobs, in the order they are served.
    turn: VecDeque<ClientAddr>,
    len: usize,
}

impl FairQueue {
    fn push(&mut self, addr: ClientAddr, per_addr: usize, job: HashJob) -> Result<(), usize> {
        let queued = self.by_addr.get(&addr).map_or(0, VecDeque::len);
        if self.len >= HASH_QUEUE {
            return Err(self.len);
        }
        if queued >= per_addr {
            // Everyone else may get a turn before each of this address's jobs.
            return Err(queued * self.turn.len().max(1));
        }
        if queued == 0 {
            self.turn.push_back(addr);
        }
        self.by_addr.entry(addr).or_default().push_back(job);
        self.len += 1;
        Ok(())
    }

    fn pop(&mut self) -> Option<HashJob> {
        let addr = self.turn.pop_front()?;
        let jobs = self.by_addr.get_mut(&addr).expect("an address in turn has jobs");
        let job = jobs.pop_front().expect("an address in turn has jobs");
        if jobs.is_empty() {
            self.by_addr.remove(&addr);
        } else {
            self.turn.push_back(addr);
        }
        self.len -= 1;
        Some(job)
    }
}

/// The process's hashing threads (several nodes in one test process share them).
pub(crate) fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            queue: Mutex::new(FairQueue::default()),
            ready: Condvar::new(),
            last_hash_us: AtomicU64::new(50_000),
        }));
        for i in 0..N_THREADS {
            std::thread::Builder::new()
                .name(format!("natter-argon2-{i}"))
                .spawn(move || pool.work())
                .expect("spawning a hashing thread");
        }
        pool
    })
}

impl Pool {
    /// Queues `job` behind `addr`'s earlier ones.
    pub(crate) fn submit(
        &self,
        addr: ClientAddr,
        per_addr: usize,
        job: impl FnOnce() + Send + 'static,
    ) -> Result<(), Busy> {
        let pushed =
            self.queue.lock().expect("hash queue poisoned").push(addr, per_addr, Box::new(job));
        match pushed {
            Ok(()) => {
                self.ready.notify_one();
                Ok(())
            }
            Err(ahead) => {
                let each = Duration::from_micros(self.last_hash_us.load(Ordering::Relaxed));
                let wait = each * u32::try_from(ahead / N_THREADS + 1).unwrap_or(u32::MAX);
                Err(Busy(wait.max(Duration::from_millis(100))))
            }
        }
    }

    fn work(&self) {
        loop {
            let job = {
                let mut queue = self.queue.lock().expect("hash queue poisoned");
                loop {
                    if let Some(job) = queue.pop() {
                        break job;
                    }
                    queue = self.ready.wait(queue).expect("hash queue poisoned");
                }
            };
            let started = Instant::now();
            job();
            let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.last_hash_us.store(us, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;

    use super::*;

    fn addr(last: u8) -> ClientAddr {
        ClientAddr::from_ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)))
    }

    #[test]
    fn addresses_take_turns_and_each_is_capped() {
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut q = FairQueue::default();
        let job = |tag: &'static str| -> HashJob {
            let order = order.clone();
            Box::new(move || order.lock().unwrap().push(tag))
        };
        for _ in 0..4 {
            assert!(q.push(addr(1), 4, job("flood")).is_ok());
        }
        assert!(q.push(addr(1), 4, job("flood")).is_err(), "the flooder's own cap");
        assert!(q.push(addr(2), 4, job("real")).is_ok());
        while let Some(job) = q.pop() {
            job();
        }
        // The real login is served second, not fifth.
        assert_eq!(*order.lock().unwrap(), ["flood", "real", "flood", "flood", "flood"]);
        assert!(q.by_addr.is_empty() && q.turn.is_empty() && q.len == 0);
    }
}
