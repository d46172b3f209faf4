//! Push notifications (issue 14, first part): for members with no live session anywhere.
//!
//! Two tasks per node:
//! - **queueing**: the router offers each message it committed here ([`offer`]: a
//!   `try_send`, so the message path never waits); the task asks the shared directory which
//!   members have no session on any node and queues one push candidate each
//!   (`Store::queue_pushes`: a user's messages in one conversation join one pending job
//!   until it is due, `window_ms` after the first; skipped for users without a registration,
//!   in do-not-disturb, who muted the conversation or already read it).
//! - **dispatch**: claims due jobs under a lease (a dead node's jobs are claimed again when
//!   the lease lapses, by any node), checks once more that the user is still away, and sends
//!   to each of their registrations; 5xx and time-outs retry with backoff, a token the
//!   provider calls dead (404, 410) is deleted. Reading the conversation anywhere drops the
//!   pending job and, when a notification was shown, queues a silent `clear`.
//!
//! Providers: `webhook` (the app's own push gateway, `push.webhook_url`, HMAC-signed JSON),
//! `webpush` ([`webpush`]), `fcm` ([`fcm`]) and `apns` ([`apns`]), each on when configured.

mod apns;
pub(crate) mod email;
mod fcm;
mod webpush;

pub use webpush::vapid_keys;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use natter_proto::{ConversationId, EntryBody, Seq, UserId};
use natter_store::{PushCandidate, PushJob, PushKind, PushOutcome, PushRegistration};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::state::AppState;

/// Committed messages waiting for the queueing task; past it, pushes for new messages are
/// skipped (and counted) rather than slowing the router.
const OFFER_QUEUE: usize = 4096;
/// Jobs one dispatch round claims.
const CLAIM: u32 = 100;
/// How long a claim holds a job before another node may take it.
const LEASE_MS: i64 = 60_000;
/// How often the dispatcher looks for due jobs.
const TICK: Duration = Duration::from_millis(100);
/// Provider calls one dispatcher has in flight (different users' jobs).
const IN_FLIGHT: usize = 32;
/// Characters of a message a notification may show.
const PREVIEW_CHARS: usize = 120;

/// A message committed on this node, for the queueing task.
pub(crate) struct Offered {
    message: Prepared,
    members: Arc<Vec<UserId>>,
    /// More members than `push.large_group`: only those the message mentions or replies to
    /// get a push.
    large: bool,
}

/// What the router keeps of a message for [`offer`]: nothing unless a provider is on.
pub(crate) struct Prepared {
    conversation: ConversationId,
    seq: Seq,
    sender: UserId,
    preview: String,
    mentions: Vec<UserId>,
    reply_to: Option<Seq>,
}

/// The node's push side: the queue into the queueing task, the providers and their client,
/// the rate limit per user.
pub(crate) struct Push {
    offers: mpsc::Sender<Offered>,
    client: reqwest::Client,
    limiter: Option<DefaultKeyedRateLimiter<UserId>>,
    webpush: Option<webpush::WebPush>,
    fcm: Option<fcm::Fcm>,
    apns: Option<apns::Apns>,
    webhook: bool,
    email: Option<email::Email>,
}

impl Push {
    pub(crate) fn new(
        cfg: &crate::Config,
        secret: &[u8],
    ) -> anyhow::Result<(Push, mpsc::Receiver<Offered>)> {
        let settings = &cfg.push;
        let (offers, rx) = mpsc::channel(OFFER_QUEUE);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let limiter = NonZeroU32::new(settings.per_user_per_min).map(|n| {
            let quota = Quota::per_minute(n);
            RateLimiter::dashmap(quota)
        });
        let timeout = Duration::from_millis(settings.timeout_ms);
        let push = Push {
            offers,
            client,
            limiter,
            webpush: settings.webpush.as_ref().map(webpush::WebPush::new).transpose()?,
            fcm: settings.fcm.as_ref().map(fcm::Fcm::new).transpose()?,
            apns: settings.apns.as_ref().map(|a| apns::Apns::new(a, timeout)).transpose()?,
            webhook: settings.webhook_url.is_some(),
            email: cfg.email.as_ref().map(|e| email::Email::new(e, secret)).transpose()?,
        };
        Ok((push, rx))
    }

    /// The providers on, by name.
    pub(crate) fn providers(&self) -> Vec<&'static str> {
        let on = [
            ("webhook", self.webhook),
            ("webpush", self.webpush.is_some()),
            ("fcm", self.fcm.is_some()),
            ("apns", self.apns.is_some()),
        ];
        on.into_iter().filter(|(_, on)| *on).map(|(name, _)| name).collect()
    }

    /// Whether any provider, or email, is on (else nothing is queued at all).
    fn enabled(&self) -> bool {
        self.webhook
            || self.webpush.is_some()
            || self.fcm.is_some()
            || self.apns.is_some()
            || self.email.is_some()
    }

    /// The mailer, when email is on.
    pub(crate) fn email(&self) -> Option<&email::Email> {
        self.email.as_ref()
    }

    /// The VAPID public key browsers subscribe with, when Web Push is on.
    pub(crate) fn vapid_public_key(&self) -> Option<&str> {
        self.webpush.as_ref().map(webpush::WebPush::public_key)
    }

    /// Checks a registration before it is stored; the error says what is wrong with it.
    pub(crate) fn check(
        &self,
        provider: &str,
        token: &str,
        p256dh: Option<&str>,
        auth: Option<&str>,
    ) -> Result<(), String> {
        if !self.providers().contains(&provider) {
            let name: String = provider.chars().take(32).collect();
            return Err(format!("the push provider {name:?} is not enabled on this server"));
        }
        match (provider, &self.webpush) {
            ("webpush", Some(w)) => w.check(token, p256dh, auth),
            ("apns", _)
                if token.len() > apns::MAX_TOKEN_HEX
                    || !token.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                Err("an APNs device token is hex digits".to_owned())
            }
            _ => Ok(()),
        }
    }
}

/// Keeps what a push needs of a committed entry: messages only, and only with a provider on.
pub(crate) fn prepare(state: &AppState, entry: &natter_proto::Entry) -> Option<Prepared> {
    let EntryBody::Message { body, attachments, mentions, reply_to } = &entry.body else {
        return None;
    };
    if !state.push().enabled() {
        return None;
    }
    let mut preview: String = body.chars().take(PREVIEW_CHARS).collect();
    if preview.is_empty() && !attachments.is_empty() {
        preview = "📎".to_owned();
    }
    Some(Prepared {
        conversation: entry.conversation,
        seq: entry.seq,
        sender: entry.sender,
        preview,
        mentions: mentions.clone(),
        reply_to: *reply_to,
    })
}

/// Offers a message committed on this node to the queueing task (the router calls it after
/// its fan-out; never waits).
pub(crate) fn offer(state: &AppState, p: Prepared, members: &Arc<Vec<UserId>>) {
    let large = members.len() > state.cfg().push.large_group.max(2);
    if large && p.mentions.is_empty() && p.reply_to.is_none() {
        return;
    }
    let offered = Offered { message: p, members: members.clone(), large };
    if state.push().offers.try_send(offered).is_err() {
        metrics::counter!("natter_push_offers_dropped_total").increment(1);
    }
}

/// The queueing task: turns offered messages into push candidates for the members who are
/// away, in batches.
pub(crate) async fn queue(state: AppState, mut rx: mpsc::Receiver<Offered>) {
    let mut batch = Vec::new();
    loop {
        let n = tokio::select! {
            () = state.shutdown_token().cancelled() => return,
            n = rx.recv_many(&mut batch, 256) => n,
        };
        if n == 0 {
            return;
        }
        metrics::gauge!("natter_queue_depth", "queue" => "push").set(rx.len() as f64);
        let window = i64::try_from(state.cfg().push.window_ms).unwrap_or(i64::MAX);
        let now = crate::now_ms();
        let mut recipients = Vec::with_capacity(batch.len());
        for o in &batch {
            recipients.push(recipients_of(&state, o).await);
        }
        // One directory lookup for the whole batch: who, among every message's recipients,
        // has a session on some node.
        let mut users: Vec<UserId> = recipients.iter().flatten().copied().collect();
        users.sort_unstable();
        users.dedup();
        let Some(online) = state.cluster().online(&users).await else {
            // Without the directory nobody can be known away: no pushes, rather than pushes
            // to people reading the chat.
            metrics::counter!("natter_push_offers_dropped_total").increment(batch.len() as u64);
            batch.clear();
            continue;
        };
        let away = |user: &UserId| {
            users.binary_search(user).is_ok_and(|i| !online[i])
                && state.sessions().n_sessions(*user) == 0
        };
        let mut candidates = Vec::new();
        for (o, to) in batch.drain(..).zip(recipients) {
            let m = &o.message;
            for user in to.into_iter().filter(away) {
                candidates.push(PushCandidate {
                    user,
                    conversation: m.conversation,
                    seq: m.seq,
                    sender: m.sender,
                    preview: m.preview.clone(),
                    due_at: now.saturating_add(window),
                });
            }
        }
        if candidates.is_empty() {
            continue;
        }
        if let Some(email) = state.push().email() {
            let mut away: Vec<UserId> = candidates.iter().map(|c| c.user).collect();
            away.sort_unstable();
            away.dedup();
            let s = email.settings();
            let delay = i64::try_from(s.digest_delay_ms).unwrap_or(i64::MAX);
            let period = i64::try_from(s.digest_period_ms).unwrap_or(i64::MAX);
            if let Err(err) =
                state.store().queue_digests(away, now.saturating_add(delay), period).await
            {
                tracing::warn!(error = %err, "queueing digests failed");
            }
        }
        match state.store().queue_pushes(candidates, now).await {
            Ok(n) => metrics::counter!("natter_push_candidates_queued_total").increment(n),
            Err(err) => tracing::warn!(error = %err, "queueing pushes failed"),
        }
    }
}

/// Who may get a push for an offered message: every other member, or in a large group the
/// members it mentions and the author of the message it replies to.
async fn recipients_of(state: &AppState, o: &Offered) -> Vec<UserId> {
    let m = &o.message;
    if !o.large {
        return o.members.iter().copied().filter(|u| *u != m.sender).collect();
    }
    let mut to = m.mentions.clone();
    if let Some(target) = m.reply_to {
        let range = natter_store::Range::After(target.saturating_sub(1));
        match state.store().entries(m.conversation, range, 1).await {
            Ok(page) => {
                to.extend(page.entries.iter().filter(|e| e.seq == target).map(|e| e.sender))
            }
            Err(err) => tracing::debug!(error = %err, "looking up a replied-to message failed"),
        }
    }
    to.sort_unstable();
    to.dedup();
    to.retain(|u| *u != m.sender && o.members.contains(u));
    to
}

/// The dispatcher: sends due jobs until shutdown.
pub(crate) async fn dispatch(state: AppState) {
    if !state.push().enabled() {
        return;
    }
    let mut timer = tokio::time::interval(TICK);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut full = false;
    loop {
        // A full claim means more are due: claim again at once rather than at the next tick.
        if !full {
            tokio::select! {
                () = state.shutdown_token().cancelled() => return,
                _ = timer.tick() => {}
            }
        } else if state.shutdown_token().is_cancelled() {
            return;
        }
        let jobs = match state.store().claim_pushes(crate::now_ms(), LEASE_MS, CLAIM).await {
            Ok(jobs) => jobs,
            Err(err) => {
                tracing::warn!(error = %err, "claiming pushes failed");
                full = false;
                continue;
            }
        };
        full = jobs.len() == CLAIM as usize;
        // One user's jobs go one after another, in the order claimed (a clear never
        // overtakes the notification it clears); different users' go side by side.
        let mut by_user: Vec<Vec<PushJob>> = Vec::new();
        let mut slot: std::collections::HashMap<UserId, usize> = std::collections::HashMap::new();
        for job in jobs {
            let i = *slot.entry(job.user).or_insert_with(|| {
                by_user.push(Vec::new());
                by_user.len() - 1
            });
            by_user[i].push(job);
        }
        futures_util::stream::iter(by_user)
            .for_each_concurrent(IN_FLIGHT, |jobs| {
                let state = &state;
                async move {
                    for job in jobs {
                        let outcome = send(state, &job).await;
                        if let Err(err) = state.store().finish_push(job.id, outcome).await {
                            tracing::warn!(error = %err, job = job.id, "recording a push failed");
                        }
                    }
                }
            })
            .await;
    }
}

/// What one provider call came to.
pub(super) enum Sent {
    Ok,
    /// Refused for good (a 4xx other than 404, 410 and 429): not shown, not retried.
    Refused,
    /// The provider says the token is dead: the registration goes.
    Dead,
    /// Worth another try later.
    Retry,
}

async fn send(state: &AppState, job: &PushJob) -> PushOutcome {
    let settings = &state.cfg().push;
    let now = crate::now_ms();
    let window = i64::try_from(settings.window_ms).unwrap_or(i64::MAX);
    // A notification shown (not a clear) makes a later read send a clear.
    let done = |pushed: bool| PushOutcome::Done {
        last_seq: job.last_seq,
        count: job.count,
        shown: (pushed && job.kind == PushKind::Notify).then_some((job.user, job.conversation)),
        next_due: now.saturating_add(window),
    };
    if job.kind == PushKind::Notify {
        // Back while the job waited: the user sees the messages live.
        let back = state.sessions().n_sessions(job.user) > 0
            || state.cluster().online(&[job.user]).await.is_some_and(|o| o[0]);
        if back {
            return done(false);
        }
        if let Some(limiter) = &state.push().limiter
            && let Err(wait) = limiter.check_key(&job.user)
        {
            let wait = wait.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            return PushOutcome::Retry {
                due_at: now + i64::try_from(wait.as_millis()).unwrap_or(60_000).max(1),
            };
        }
    }
    if job.registrations.is_empty() {
        return done(false);
    }
    let payload = Payload::of(job, &settings.payload);
    let mut retry = false;
    let mut pushed = false;
    for reg in &job.registrations {
        match deliver(state, reg, &payload).await {
            Sent::Ok => {
                pushed = true;
                metrics::counter!("natter_pushes_sent_total", "provider" => reg.provider.clone())
                    .increment(1);
            }
            Sent::Dead => {
                metrics::counter!("natter_push_tokens_dropped_total").increment(1);
                if let Err(err) = state.store().drop_push_token(&reg.provider, &reg.token).await {
                    tracing::warn!(error = %err, "dropping a dead push token failed");
                }
            }
            Sent::Retry => retry = true,
            Sent::Refused => {}
        }
    }
    if retry && job.attempts + 1 < settings.max_attempts {
        metrics::counter!("natter_push_retries_total").increment(1);
        // 1 s, 2 s, 4 s, … capped at 5 minutes.
        let backoff = 1_000i64.saturating_mul(1 << job.attempts.min(8)).min(300_000);
        return PushOutcome::Retry { due_at: now + backoff };
    }
    done(pushed)
}

/// What a notification carries, by the `push.payload` setting.
#[derive(Serialize)]
pub(super) struct Payload {
    kind: &'static str,
    conversation: ConversationId,
    /// Notifications of one conversation replace each other (the provider's collapse key).
    collapse_id: String,
    first_seq: Seq,
    last_seq: Seq,
    count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sender: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<String>,
}

impl Payload {
    fn of(job: &PushJob, what: &str) -> Payload {
        let notify = job.kind == PushKind::Notify;
        let show_sender = notify && what != "none";
        let body = notify.then(|| match (what, job.count) {
            ("preview", 1) => job.preview.clone(),
            (_, 1) => "New message".to_owned(),
            (_, n) => format!("{n} new messages"),
        });
        Payload {
            kind: if notify { "notify" } else { "clear" },
            conversation: job.conversation,
            collapse_id: format!("c{}", job.conversation),
            first_seq: job.first_seq,
            last_seq: job.last_seq,
            count: job.count,
            title: job.title.clone().filter(|_| show_sender),
            sender: show_sender.then(|| job.sender_handle.clone()),
            body,
        }
    }
}

/// The webhook gateway's request.
#[derive(Serialize)]
struct GatewayCall<'a> {
    registration: &'a str,
    user: UserId,
    #[serde(flatten)]
    notification: &'a Payload,
}

async fn deliver(state: &AppState, reg: &PushRegistration, payload: &Payload) -> Sent {
    let push = state.push();
    let client = &push.client;
    match (reg.provider.as_str(), &push.webpush, &push.fcm, &push.apns) {
        ("webhook", ..) if push.webhook => webhook(state, reg, payload).await,
        ("webpush", Some(w), ..) => w.send(client, reg, payload).await,
        ("fcm", _, Some(f), _) => f.send(client, reg, payload).await,
        ("apns", .., Some(a)) => a.send(reg, payload).await,
        (other, ..) => {
            tracing::warn!(provider = other, "no such push provider on this node");
            Sent::Retry
        }
    }
}

async fn webhook(state: &AppState, reg: &PushRegistration, payload: &Payload) -> Sent {
    let settings = &state.cfg().push;
    let Some(url) = &settings.webhook_url else { return Sent::Retry };
    let call = GatewayCall { registration: &reg.token, user: reg.user, notification: payload };
    let Ok(body) = serde_json::to_vec(&call) else { return Sent::Retry };
    let mut req =
        state.push().client.post(url).header(reqwest::header::CONTENT_TYPE, "application/json");
    if let Some(secret) = &settings.webhook_secret {
        let sig = crate::moderation::signature(secret.as_bytes(), &body);
        req = req.header(crate::moderation::SIGNATURE_HEADER, sig);
    }
    classify("webhook", req.body(body).send().await, |_, _| None).await
}

/// Most of a refusal's body read for its reason.
const MAX_REASON_BYTES: usize = 8 * 1024;

/// What a provider's answer means: 2xx sent; 404 and 410 a dead token; 429, 5xx and no
/// answer worth another try; other refusals are what `reason` makes of the status and the
/// start of the body (a provider's own codes: `Unregistered`, `BadDeviceToken`, …), else
/// refused for good.
pub(super) async fn classify(
    provider: &'static str,
    res: reqwest::Result<reqwest::Response>,
    reason: impl FnOnce(u16, &str) -> Option<Sent>,
) -> Sent {
    let mut res = match res {
        Ok(res) => res,
        Err(err) => {
            tracing::debug!(provider, error = %err, "the push provider did not answer");
            return Sent::Retry;
        }
    };
    let status = res.status();
    if status.is_success() {
        return Sent::Ok;
    }
    if matches!(status.as_u16(), 404 | 410) {
        return Sent::Dead;
    }
    if status.is_server_error() || status.as_u16() == 429 {
        return Sent::Retry;
    }
    let mut body = Vec::new();
    while body.len() < MAX_REASON_BYTES {
        match res.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    body.truncate(MAX_REASON_BYTES);
    let text = String::from_utf8_lossy(&body);
    if let Some(sent) = reason(status.as_u16(), &text) {
        return sent;
    }
    tracing::warn!(provider, %status, "the push provider refused a notification");
    Sent::Refused
}
