//! Email over SMTP (issue 14): an address is verified by a signed link mailed to it, then
//! gets a digest of the conversations a user left unread, `digest_delay_ms` after the first
//! such message and at most one per `digest_period_ms`, in plain text and HTML (minijinja
//! templates), with a signed one-click unsubscribe link (RFC 8058).
//!
//! Links are `{public_url}/v1/email/{verify|unsubscribe}?user=&email=&exp=&sig=`: `sig` is
//! an HMAC-SHA256, under a key derived from the server secret, of the action, user,
//! address and expiry. A verification link expires (`verify_ttl_secs`); an unsubscribe
//! link only turns digests off for the address it names (`exp=0`: it does not expire, since
//! digests are read late).

use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hmac::{KeyInit, Mac};
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use natter_proto::{ConversationKind, UserId};
use natter_store::{DigestJob, DigestOutcome};
use serde::Serialize;

use crate::config::EmailSettings;
use crate::state::AppState;

const DIGEST_TXT: &str = include_str!("digest.txt");
const DIGEST_HTML: &str = include_str!("digest.html");
/// How often a node looks for due digests.
const TICK: Duration = Duration::from_millis(500);
/// How long a claim holds a digest before another node may take it.
const LEASE_MS: i64 = 5 * 60_000;
/// Digests one round claims.
const CLAIM: u32 = 50;
/// When the SMTP server fails, the next try.
const RETRY_MS: i64 = 60_000;
/// Verification emails one user may cause per hour (each goes to an address they typed).
const VERIFICATIONS_PER_HOUR: u32 = 3;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The node's mailer.
pub(crate) struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    public_url: String,
    key: Vec<u8>,
    templates: minijinja::Environment<'static>,
    settings: EmailSettings,
    verifications: DefaultKeyedRateLimiter<UserId>,
}

/// What a link does.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Verify,
    Unsubscribe,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Verify => "verify",
            Action::Unsubscribe => "unsubscribe",
        }
    }
}

/// A conversation as a digest lists it.
#[derive(Serialize)]
struct Item {
    name: String,
    unread: u64,
    /// The newest message's text, when the `push.payload` setting allows a preview.
    preview: Option<String>,
}

impl Email {
    pub(crate) fn new(s: &EmailSettings, secret: &[u8]) -> anyhow::Result<Email> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&s.smtp_url)
            .map_err(|e| anyhow::anyhow!("email.smtp_url: {e}"))?
            .timeout(Some(Duration::from_secs(30)))
            .build();
        let from: Mailbox =
            s.from.parse().map_err(|e| anyhow::anyhow!("email.from is not an address: {e}"))?;
        let mut templates = minijinja::Environment::new();
        let (mut txt, mut html) = (DIGEST_TXT.to_owned(), DIGEST_HTML.to_owned());
        if let Some(dir) = &s.templates_dir {
            let read = |name: &str| {
                std::fs::read_to_string(dir.join(name))
                    .map_err(|e| anyhow::anyhow!("email.templates_dir: {name}: {e}"))
            };
            txt = read("digest.txt")?;
            html = read("digest.html")?;
        }
        // `.html` templates escape what they print.
        templates.add_template_owned("digest.txt", txt)?;
        templates.add_template_owned("digest.html", html)?;
        let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| anyhow::anyhow!("a key"))?;
        mac.update(b"natter email links");
        let quota =
            Quota::per_hour(NonZeroU32::new(VERIFICATIONS_PER_HOUR).unwrap_or(NonZeroU32::MIN));
        Ok(Email {
            transport,
            from,
            public_url: s.public_url.trim_end_matches('/').to_owned(),
            key: mac.finalize().into_bytes().to_vec(),
            templates,
            settings: s.clone(),
            verifications: RateLimiter::dashmap(quota),
        })
    }

    pub(crate) fn settings(&self) -> &EmailSettings {
        &self.settings
    }

    fn signature(&self, action: Action, user: UserId, email: &str, exp: i64) -> String {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("any key length");
        mac.update(format!("{}\n{user}\n{exp}\n{email}", action.name()).as_bytes());
        mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A signed link.
    fn link(&self, action: Action, user: UserId, email: &str, exp: i64) -> String {
        let sig = self.signature(action, user, email, exp);
        let email =
            percent_encoding::utf8_percent_encode(email, percent_encoding::NON_ALPHANUMERIC);
        format!(
            "{}/v1/email/{}?user={user}&email={email}&exp={exp}&sig={sig}",
            self.public_url,
            action.name()
        )
    }

    /// Whether a link's parameters are signed by this server and unexpired.
    pub(crate) fn check(
        &self,
        action: Action,
        user: UserId,
        email: &str,
        exp: i64,
        sig: &str,
    ) -> bool {
        let want = self.signature(action, user, email, exp);
        let same = want.len() == sig.len()
            && want.bytes().zip(sig.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        same && (exp == 0 || exp > crate::now_ms() / 1000)
    }

    /// Mails the verification link for `email` (at most a few per user per hour).
    pub(crate) async fn send_verification(
        &self,
        user: UserId,
        handle: &str,
        email: &str,
    ) -> Result<(), crate::error::ApiError> {
        use crate::error::ApiError;
        if let Err(wait) = self.verifications.check_key(&user) {
            let wait = wait.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            return Err(ApiError::too_many_requests("too many verification emails", wait));
        }
        let ttl = i64::try_from(self.settings.verify_ttl_secs).unwrap_or(86_400);
        let link = self.link(Action::Verify, user, email, crate::now_ms() / 1000 + ttl);
        let text = format!(
            "Hi {handle},\n\nconfirm that {email} is yours, to get Natter's emails about unread \
             messages:\n\n{link}\n\nIf you did not ask for this, ignore this email.\n"
        );
        let bad = || ApiError::bad_request("not an email address");
        let message = Message::builder()
            .from(self.from.clone())
            .to(email.parse::<Mailbox>().map_err(|_| bad())?)
            .subject("Confirm your email address")
            .header(ContentType::TEXT_PLAIN)
            .body(text)
            .map_err(|_| bad())?;
        self.transport.send(message).await.map_err(|err| {
            tracing::warn!(error = %err, "mailing a verification link failed");
            ApiError::new(
                natter_proto::ErrorCode::Unavailable,
                "the mail server did not take the email: try again later",
            )
        })?;
        Ok(())
    }

    async fn send_digest(&self, state: &AppState, job: &DigestJob) -> DigestOutcome {
        let now = crate::now_ms();
        let online = state.sessions().n_sessions(job.user) > 0
            || state.cluster().online(&[job.user]).await.is_none_or(|o| o[0]);
        if online {
            // In the app (or the directory cannot tell): the unread stays in view there.
            let delay = i64::try_from(self.settings.digest_delay_ms).unwrap_or(i64::MAX);
            return DigestOutcome::Retry { due_at: now.saturating_add(delay) };
        }
        let preview = state.cfg().push.payload == "preview";
        let mut items = Vec::new();
        for &conv in &job.conversations {
            let Ok(summary) = state.store().conversation(job.user, conv).await else { continue };
            if summary.unread == 0 {
                continue;
            }
            let name = match (summary.kind, &summary.title, &summary.peer) {
                (ConversationKind::Group, Some(title), _) => title.clone(),
                (_, _, Some(peer)) => peer.handle.clone(),
                _ => "a conversation".to_owned(),
            };
            let text = summary.last_message.filter(|m| preview && !m.deleted).map(|m| m.text);
            items.push(Item {
                name,
                unread: summary.unread,
                preview: text.filter(|t| !t.is_empty()),
            });
        }
        if items.is_empty() {
            return DigestOutcome::Nothing;
        }
        let Ok(Some(handle)) = state.store().user_handle(job.user).await else {
            return DigestOutcome::Nothing;
        };
        let unsubscribe = self.link(Action::Unsubscribe, job.user, &job.email, 0);
        let ctx = minijinja::context! {
            handle => handle,
            email => job.email,
            conversations => items,
            app_url => format!("{}/app/", self.public_url),
            unsubscribe_url => unsubscribe,
        };
        let render = |name| self.templates.get_template(name).and_then(|t| t.render(&ctx));
        let (text, html) = match (render("digest.txt"), render("digest.html")) {
            (Ok(text), Ok(html)) => (text, html),
            (Err(err), _) | (_, Err(err)) => {
                tracing::warn!(error = %err, "rendering a digest failed");
                return DigestOutcome::Retry { due_at: now + RETRY_MS };
            }
        };
        let subject = match items.as_slice() {
            [one] => format!("Unread messages in {}", one.name),
            many => format!("Unread messages in {} conversations", many.len()),
        };
        let Ok(to) = job.email.parse::<Mailbox>() else { return DigestOutcome::Nothing };
        let list_unsubscribe = HeaderName::new_from_ascii_str("List-Unsubscribe");
        let one_click = HeaderName::new_from_ascii_str("List-Unsubscribe-Post");
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .raw_header(HeaderValue::new(list_unsubscribe, format!("<{unsubscribe}>")))
            .raw_header(HeaderValue::new(one_click, "List-Unsubscribe=One-Click".to_owned()))
            .multipart(
                MultiPart::alternative()
                    .singlepart(SinglePart::plain(text))
                    .singlepart(SinglePart::html(html)),
            );
        let Ok(message) = message else { return DigestOutcome::Nothing };
        match self.transport.send(message).await {
            Ok(_) => {
                metrics::counter!("natter_email_digests_sent_total").increment(1);
                DigestOutcome::Sent { at: now }
            }
            Err(err) => {
                tracing::warn!(error = %err, "mailing a digest failed");
                DigestOutcome::Retry { due_at: now + RETRY_MS }
            }
        }
    }
}

/// The digest task: mails due digests until shutdown.
pub(crate) async fn digests(state: AppState) {
    let Some(email) = state.push().email() else { return };
    let mut timer = tokio::time::interval(TICK);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = state.shutdown_token().cancelled() => return,
            _ = timer.tick() => {}
        }
        let jobs = match state.store().claim_digests(crate::now_ms(), LEASE_MS, CLAIM).await {
            Ok(jobs) => jobs,
            Err(err) => {
                tracing::warn!(error = %err, "claiming digests failed");
                continue;
            }
        };
        for job in jobs {
            let outcome = email.send_digest(&state, &job).await;
            if let Err(err) = state.store().finish_digest(job.user, outcome).await {
                tracing::warn!(error = %err, "recording a digest failed");
            }
        }
    }
}
