//! Rate limits: token buckets (GCRA, the `governor` crate) per user for what costs the node
//! — appends, typing reports, cursor reports, conversation creation, member adds — and per
//! WebSocket connection for request frames of any kind. A refused request gets
//! `too_many_requests` with `retry_after_ms`, the time until its bucket holds a token again;
//! nothing is queued on the server's side.
//!
//! The per-user buckets live in one map per action on this node (in cluster mode a user
//! spread over N nodes may reach N times the rate; sessions of one device are on one node).
//! Buckets of users who have not been seen for a while are dropped by the sweep.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use natter_proto::UserId;

use crate::config::Limits;
use crate::error::{ApiError, ApiResult};

/// What a per-user bucket limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// A message, edit, deletion or reaction.
    Append,
    Typing,
    Cursor,
    CreateConversation,
    AddMember,
}

/// The node's per-user buckets.
pub(crate) struct RateLimits {
    append: Option<DefaultKeyedRateLimiter<UserId>>,
    typing: Option<DefaultKeyedRateLimiter<UserId>>,
    cursor: Option<DefaultKeyedRateLimiter<UserId>>,
    create: Option<DefaultKeyedRateLimiter<UserId>>,
    add_member: Option<DefaultKeyedRateLimiter<UserId>>,
    clock: DefaultClock,
}

/// `n` per `period`, `burst` at once; `None` when `n` is 0 (unlimited).
fn quota(n: u32, period: Duration, burst: u32) -> Option<Quota> {
    let n = NonZeroU32::new(n)?;
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(period / n.get()).expect("a positive period");
    Some(quota.allow_burst(burst))
}

fn keyed(quota: Option<Quota>) -> Option<DefaultKeyedRateLimiter<UserId>> {
    quota.map(RateLimiter::dashmap)
}

impl RateLimits {
    pub(crate) fn new(l: &Limits) -> RateLimits {
        let second = Duration::from_secs(1);
        let minute = Duration::from_secs(60);
        RateLimits {
            append: keyed(quota(l.send_per_sec, second, l.send_burst)),
            typing: keyed(quota(l.typing_per_sec, second, l.typing_burst)),
            cursor: keyed(quota(l.cursor_per_sec, second, l.cursor_burst)),
            create: keyed(quota(l.create_per_min, minute, l.create_burst)),
            add_member: keyed(quota(l.member_adds_per_min, minute, l.member_adds_burst)),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one token of `user`'s `action` bucket, or refuses with the time to wait.
    pub(crate) fn check(&self, action: Action, user: UserId) -> ApiResult<()> {
        let bucket = match action {
            Action::Append => &self.append,
            Action::Typing => &self.typing,
            Action::Cursor => &self.cursor,
            Action::CreateConversation => &self.create,
            Action::AddMember => &self.add_member,
        };
        let Some(bucket) = bucket else { return Ok(()) };
        match bucket.check_key(&user) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                metrics::counter!("natter_rate_limited_total").increment(1);
                Err(too_many(not_until.wait_time_from(self.clock.now())))
            }
        }
    }

    /// Forgets buckets that are full again (their users have been quiet long enough).
    pub(crate) fn sweep(&self) {
        for bucket in [&self.append, &self.typing, &self.cursor, &self.create, &self.add_member]
            .into_iter()
            .flatten()
        {
            bucket.retain_recent();
            bucket.shrink_to_fit();
        }
    }
}

/// One connection's bucket for request frames.
pub(crate) struct FrameLimit {
    bucket: Option<DefaultDirectRateLimiter>,
}

impl FrameLimit {
    pub(crate) fn new(l: &Limits) -> FrameLimit {
        let second = Duration::from_secs(1);
        FrameLimit {
            bucket: quota(l.frames_per_sec, second, l.frames_burst).map(RateLimiter::direct),
        }
    }

    /// Takes one token, or refuses with the time to wait.
    pub(crate) fn check(&self) -> ApiResult<()> {
        let Some(bucket) = &self.bucket else { return Ok(()) };
        bucket.check().map_err(|not_until| {
            metrics::counter!("natter_rate_limited_total").increment(1);
            too_many(not_until.wait_time_from(DefaultClock::default().now()))
        })
    }
}

fn too_many(wait: Duration) -> ApiError {
    ApiError::too_many_requests("rate limited; retry later", wait)
}

#[cfg(test)]
mod tests {
    use natter_proto::ErrorCode;

    use super::*;

    #[test]
    fn a_burst_passes_then_the_next_waits_about_one_period() {
        let limits = Limits { send_per_sec: 10, send_burst: 3, ..Limits::default() };
        let rate = RateLimits::new(&limits);
        for _ in 0..3 {
            rate.check(Action::Append, UserId(1)).expect("within the burst");
        }
        let err = rate.check(Action::Append, UserId(1)).expect_err("over the burst");
        assert_eq!(err.code, ErrorCode::TooManyRequests);
        let wait = err.retry_after_ms.expect("says when");
        assert!((1..=100).contains(&wait), "one token per 100 ms: {wait} ms");
        // Another user has a bucket of their own.
        rate.check(Action::Append, UserId(2)).expect("another user");
    }

    #[test]
    fn zero_means_unlimited() {
        let limits = Limits { typing_per_sec: 0, frames_per_sec: 0, ..Limits::default() };
        let rate = RateLimits::new(&limits);
        let frames = FrameLimit::new(&limits);
        for _ in 0..10_000 {
            rate.check(Action::Typing, UserId(1)).expect("unlimited");
            frames.check().expect("unlimited");
        }
    }
}
