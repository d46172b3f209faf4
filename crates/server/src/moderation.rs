//! Content rules and the moderation webhook (issue 13, part 7): every message and edit is
//! judged before it is committed. The configured lists first (reject, then flag), then the
//! webhook, which has `webhook_timeout_ms` to answer and, when it fails, lets the message
//! through (the default) or refuses it (`webhook_fail_closed`). A rejected message gets
//! `content_rejected` and nothing is stored; a flagged one is committed and then filed in
//! the moderation queue as a report without a reporter.
//!
//! Judging runs in the sending session's request path, so a session's sends still commit
//! in the order they were sent; with a webhook, each waits for its answer.

use std::time::Duration;

use hmac::{KeyInit, Mac};
use natter_proto::{ConversationId, ErrorCode, NewEntry, UserId};
use regex::RegexSet;
use serde::{Deserialize, Serialize};

use crate::config::ContentRules;
use crate::error::{ApiError, ApiResult};

/// The header that carries a signed outgoing request's [`signature`].
pub(crate) const SIGNATURE_HEADER: &str = "x-natter-signature";

/// `sha256=<hex HMAC-SHA256 of body under secret>`: what the server's outgoing webhooks (the
/// moderation webhook, the push gateway) carry so that their receivers can check them.
pub(crate) fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", crate::media::hex(&mac.finalize().into_bytes()))
}

/// Most bytes of a webhook's answer the server reads.
const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// What the rules say of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allow,
    /// Commit it, then file it for review with this reason.
    Flag(String),
}

/// The node's compiled rules and its webhook client.
pub(crate) struct ContentFilter {
    reject: Option<RegexSet>,
    flag: Option<(RegexSet, Vec<String>)>,
    webhook: Option<Webhook>,
}

struct Webhook {
    client: reqwest::Client,
    url: String,
    fail_closed: bool,
    secret: Option<Vec<u8>>,
}

/// One list as a set of regexes: words matched whole, ignoring case, then patterns.
fn set(words: &[String], patterns: &[String]) -> anyhow::Result<Option<(RegexSet, Vec<String>)>> {
    let mut all: Vec<String> =
        words.iter().map(|w| format!(r"(?i)\b{}\b", regex::escape(w.trim()))).collect();
    all.extend(patterns.iter().cloned());
    if all.is_empty() {
        return Ok(None);
    }
    let names = words
        .iter()
        .map(|w| format!("word {w:?}"))
        .chain(patterns.iter().map(|p| format!("pattern {p:?}")));
    let set = regex::RegexSetBuilder::new(&all)
        .size_limit(10 * 1024 * 1024)
        .build()
        .map_err(|err| anyhow::anyhow!("content_rules: {err}"))?;
    Ok(Some((set, names.collect())))
}

impl ContentFilter {
    /// Compiles the lists (a bad pattern fails the start) and builds the webhook client.
    pub(crate) fn new(rules: &ContentRules) -> anyhow::Result<ContentFilter> {
        let reject = set(&rules.reject_words, &rules.reject_patterns)?.map(|(s, _)| s);
        let flag = set(&rules.flag_words, &rules.flag_patterns)?;
        let webhook = match &rules.webhook_url {
            None => None,
            Some(url) => {
                if !(1..=10_000).contains(&rules.webhook_timeout_ms) {
                    anyhow::bail!("content_rules.webhook_timeout_ms is 1 to 10000");
                }
                reqwest::Url::parse(url)
                    .map_err(|err| anyhow::anyhow!("content_rules.webhook_url: {err}"))?;
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_millis(rules.webhook_timeout_ms))
                    .redirect(reqwest::redirect::Policy::none())
                    .build()?;
                Some(Webhook {
                    client,
                    url: url.clone(),
                    fail_closed: rules.webhook_fail_closed,
                    secret: rules.webhook_secret.as_ref().map(|s| s.as_bytes().to_vec()),
                })
            }
        };
        Ok(ContentFilter { reject, flag, webhook })
    }

    /// Judges `entry` (messages and edits; anything else is allowed): `content_rejected`
    /// if a rule or the webhook refuses it.
    pub(crate) async fn judge(
        &self,
        sender: UserId,
        conversation: ConversationId,
        client_msg_id: &str,
        entry: &NewEntry,
    ) -> ApiResult<Verdict> {
        let (kind, body, attachments) = match entry {
            NewEntry::Message { body, attachments, .. } => {
                ("message", body, attachments.as_slice())
            }
            NewEntry::Edit { body, .. } => ("edit", body, &[][..]),
            _ => return Ok(Verdict::Allow),
        };
        if self.reject.as_ref().is_some_and(|set| set.is_match(body)) {
            metrics::counter!("natter_content_rejected_total", "by" => "rules").increment(1);
            return Err(rejected());
        }
        let mut verdict = match &self.flag {
            Some((set, names)) => match set.matches(body).iter().next() {
                Some(i) => Verdict::Flag(format!("content rule: {}", names[i])),
                None => Verdict::Allow,
            },
            None => Verdict::Allow,
        };
        if let Some(hook) = &self.webhook {
            let call = Call { conversation, sender, kind, client_msg_id, body, attachments };
            match hook.ask(&call).await {
                Ok(Answer { action: Action::Allow, .. }) => {}
                Ok(Answer { action: Action::Flag, reason }) => {
                    let reason = reason.unwrap_or_else(|| "no reason given".to_owned());
                    verdict = Verdict::Flag(format!("moderation webhook: {reason}"));
                }
                Ok(Answer { action: Action::Reject, .. }) => {
                    metrics::counter!("natter_content_rejected_total", "by" => "webhook")
                        .increment(1);
                    return Err(rejected());
                }
                Err(err) => {
                    metrics::counter!("natter_moderation_webhook_failures_total").increment(1);
                    tracing::warn!(error = %err, "the moderation webhook failed");
                    if hook.fail_closed {
                        return Err(ApiError::new(
                            ErrorCode::Unavailable,
                            "moderation is unavailable; retry",
                        ));
                    }
                }
            }
        }
        Ok(verdict)
    }
}

fn rejected() -> ApiError {
    ApiError::new(ErrorCode::ContentRejected, "the message breaks this server's content rules")
}

/// The webhook's request body.
#[derive(Serialize)]
struct Call<'a> {
    conversation: ConversationId,
    sender: UserId,
    /// `message` or `edit`.
    kind: &'a str,
    client_msg_id: &'a str,
    body: &'a str,
    attachments: &'a [String],
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Action {
    Allow,
    Flag,
    Reject,
}

#[derive(Deserialize)]
struct Answer {
    action: Action,
    #[serde(default)]
    reason: Option<String>,
}

impl Webhook {
    async fn ask(&self, call: &Call<'_>) -> anyhow::Result<Answer> {
        let body = serde_json::to_vec(call)?;
        let mut req =
            self.client.post(&self.url).header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(secret) = &self.secret {
            req = req.header(SIGNATURE_HEADER, signature(secret, &body));
        }
        let mut res = req.body(body).send().await?;
        anyhow::ensure!(res.status().is_success(), "the webhook answered {}", res.status());
        let mut answer = Vec::new();
        while let Some(chunk) = res.chunk().await? {
            anyhow::ensure!(
                answer.len() + chunk.len() <= MAX_ANSWER_BYTES,
                "the webhook's answer is over {MAX_ANSWER_BYTES} bytes"
            );
            answer.extend_from_slice(&chunk);
        }
        Ok(serde_json::from_slice(&answer)?)
    }
}
