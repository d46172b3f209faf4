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
    /// An upload started (`POST /v1/media`, `POST /v1/media/uploads`).
    Upload,
    /// A user search (`GET /v1/users?q=`).
    Search,
    /// A data export (`GET /v1/me/export`).
    Export,
    /// A report filed (`POST /v1/reports`).
    Report,
}

/// The node's per-user buckets.
pub(crate) struct RateLimits {
    append: Option<DefaultKeyedRateLimiter<UserId>>,
    typing: Option<DefaultKeyedRateLimiter<UserId>>,
    cursor: Option<DefaultKeyedRateLimiter<UserId>>,
    create: Option<DefaultKeyedRateLimiter<UserId>>,
    add_member: Option<DefaultKeyedRateLimiter<UserId>>,
    upload: Option<DefaultKeyedRateLimiter<UserId>>,
    search: Option<DefaultKeyedRateLimiter<UserId>>,
    export: Option<DefaultKeyedRateLimiter<UserId>>,
    report: Option<DefaultKeyedRateLimiter<UserId>>,
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
            upload: keyed(quota(l.media_uploads_per_min, minute, l.media_uploads_burst)),
            search: keyed(quota(l.search_per_min, minute, l.search_burst)),
            export: keyed(quota(l.exports_per_hour, Duration::from_secs(3600), l.exports_burst)),
            report: keyed(quota(l.reports_per_hour, Duration::from_secs(3600), l.reports_burst)),
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
            Action::Upload => &self.upload,
            Action::Search => &self.search,
            Action::Export => &self.export,
            Action::Report => &self.report,
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
        for bucket in [
            &self.append,
            &self.typing,
            &self.cursor,
            &self.create,
            &self.add_member,
            &self.upload,
            &self.search,
            &self.export,
            &self.report,
        ]
        .into_iter()
        .flatten()
        {
            bucket.retain_recent();
            bucket.shrink_to_fit();
        }
    }
}

/// One WebSocket connection's limits: its bucket for request frames, and the append it was
/// last refused, which holds back the appends after it.
pub(crate) struct ConnLimits {
    bucket: Option<DefaultDirectRateLimiter>,
    // A std mutex: one short section per append, never across an await.
    held: std::sync::Mutex<Option<Held>>,
}

/// A rate-limited append and until when the ones after it wait for its retry: a connection's
/// appends commit in the order they were sent (the SDK resends the refused one first), even
/// when a token comes back between a refusal and the next send.
struct Held {
    client_msg_id: String,
    /// When the bucket has a token for it again.
    token_at: std::time::Instant,
    /// When the hold lapses if the client never retries it ([`HOLD_GRACE`] after `token_at`).
    until: std::time::Instant,
}

/// How long after its token is back a refused append holds the later ones of its connection
/// for its retry: a client following `retry_after_ms` retries well within it; one that gives
/// up on the refused send is not blocked for longer.
const HOLD_GRACE: Duration = Duration::from_secs(2);

impl ConnLimits {
    pub(crate) fn new(l: &Limits) -> ConnLimits {
        let second = Duration::from_secs(1);
        ConnLimits {
            bucket: quota(l.frames_per_sec, second, l.frames_burst).map(RateLimiter::direct),
            held: std::sync::Mutex::new(None),
        }
    }

    /// Whether an append may go on: refused while an earlier refused append of this
    /// connection waits for its retry (until the wait it was given ends); its retry lifts
    /// the hold.
    pub(crate) fn admit_append(&self, client_msg_id: &str) -> ApiResult<()> {
        let mut held = self.held.lock().expect("held lock poisoned");
        match held.as_ref() {
            Some(h) if h.client_msg_id == client_msg_id => *held = None,
            Some(h) => {
                let now = std::time::Instant::now();
                if h.until > now {
                    return Err(ApiError::too_many_requests(
                        "an earlier rate-limited send of this connection goes first",
                        h.token_at.saturating_duration_since(now),
                    ));
                }
                *held = None;
            }
            None => {}
        }
        Ok(())
    }

    /// An append was refused with `err`: if for its rate, the appends after it wait.
    pub(crate) fn append_refused(&self, client_msg_id: &str, err: &ApiError) {
        let Some(ms) =
            err.retry_after_ms.filter(|_| err.code == natter_proto::ErrorCode::TooManyRequests)
        else {
            return;
        };
        let token_at = std::time::Instant::now() + Duration::from_millis(ms);
        let until = token_at + HOLD_GRACE;
        let mut held = self.held.lock().expect("held lock poisoned");
        if held.is_none() {
            *held = Some(Held { client_msg_id: client_msg_id.to_owned(), token_at, until });
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
        let frames = ConnLimits::new(&limits);
        for _ in 0..10_000 {
            rate.check(Action::Typing, UserId(1)).expect("unlimited");
            frames.check().expect("unlimited");
        }
    }
}
