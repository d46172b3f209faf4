//! Setup over REST: accounts, logins, conversations, and the server's `/metrics`.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use natter_proto::rest::{CreateConversation, CreatedConversation, Credentials, Session};
use natter_proto::{Ack, ConversationId, ConversationSummary, UserId};
use serde::Serialize;
use serde::de::DeserializeOwned;

const PASSWORD: &str = "natter-bench-password";

/// A registered, logged-in user.
#[derive(Debug, Clone)]
pub(crate) struct Account {
    pub(crate) user: UserId,
    pub(crate) token: String,
}

#[derive(Clone)]
pub(crate) struct Api {
    http: reqwest::Client,
    /// Base URL of the server that setup talks to (the first `--server`).
    base: String,
}

impl Api {
    pub(crate) fn new(base: &str) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build()
            .context("building the HTTP client")?;
        Ok(Api { http, base: base.trim_end_matches('/').to_owned() })
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        token: Option<&str>,
        body: &B,
    ) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        // Retries only what the server says is retryable (the store was busy; or the
        // password-hashing queue holds this address's share: wait as long as it says).
        let (mut attempt, mut busy) = (0, 0);
        loop {
            let mut req = self.http.post(&url).json(body);
            if let Some(token) = token {
                req = req.bearer_auth(token);
            }
            let res = req.send().await.with_context(|| format!("POST {url}"))?;
            let status = res.status();
            if status.is_success() {
                return res.json().await.with_context(|| format!("reading POST {path}"));
            }
            let text = res.text().await.unwrap_or_default();
            if status.as_u16() == 429 && busy < 100 {
                let wait = serde_json::from_str::<natter_proto::ErrorBody>(&text)
                    .ok()
                    .and_then(|e| e.retry_after_ms);
                if let Some(ms) = wait {
                    busy += 1;
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    continue;
                }
            }
            if status.as_u16() == 503 && attempt < 5 {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                continue;
            }
            bail!("POST {path}: {status}: {text}");
        }
    }

    /// Registers `handle` and logs it in once.
    pub(crate) async fn account(&self, handle: &str) -> anyhow::Result<Account> {
        let creds =
            Credentials { handle: handle.to_owned(), password: PASSWORD.to_owned(), device: None };
        let _: serde_json::Value = self.post("/v1/accounts", None, &creds).await?;
        let creds = Credentials { device: Some("natter-bench".to_owned()), ..creds };
        let session: Session = self.post("/v1/sessions", None, &creds).await?;
        Ok(Account { user: session.user_id, token: session.token })
    }

    /// Registers and logs in every handle, `concurrency` at a time (argon2 makes each one
    /// cost the server tens of milliseconds of CPU). Results are in the order of `handles`.
    pub(crate) async fn accounts(
        &self,
        handles: &[String],
        concurrency: usize,
    ) -> anyhow::Result<Vec<Account>> {
        let results: Vec<anyhow::Result<Account>> =
            futures_util::stream::iter(handles.iter().map(|h| self.account(h)))
                .buffered(concurrency.max(1))
                .collect()
                .await;
        results.into_iter().collect()
    }

    /// `POST /v1/media` with `body`; the signed URL of the stored file.
    pub(crate) async fn upload(&self, token: &str, body: bytes::Bytes) -> anyhow::Result<String> {
        let url = format!("{}/v1/media", self.base);
        let res = self
            .http
            .post(&url)
            .bearer_auth(token)
            .body(body)
            .send()
            .await
            .context("POST /v1/media")?;
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("POST /v1/media: {status}: {text}");
        }
        let up: natter_proto::rest::Uploaded =
            serde_json::from_str(&text).context("reading the upload")?;
        up.attachment.url.context("no url in the upload's answer")
    }

    /// `GET` of a signed media URL, reading the body as it comes; the bytes received.
    pub(crate) async fn download(&self, url: &str) -> anyhow::Result<u64> {
        let mut res =
            self.http.get(format!("{}{url}", self.base)).send().await.context("GET media")?;
        if !res.status().is_success() {
            bail!("GET {url}: {}", res.status());
        }
        let mut n = 0u64;
        while let Some(chunk) = res.chunk().await.context("reading media")? {
            n += chunk.len() as u64;
        }
        Ok(n)
    }

    /// The direct conversation of `me` (by token) with `peer`.
    pub(crate) async fn direct(&self, token: &str, peer: UserId) -> anyhow::Result<ConversationId> {
        let body = CreateConversation::Direct { peer };
        let summary: ConversationSummary =
            self.post("/v1/conversations", Some(token), &body).await?;
        Ok(summary.id)
    }

    /// A new group owned by `owner`, with `members`: the fresh accounts share no conversation
    /// with the owner, so they are invited, and each accepts at once.
    pub(crate) async fn group(
        &self,
        owner: &Account,
        title: &str,
        members: &[Account],
    ) -> anyhow::Result<ConversationId> {
        let ids = members.iter().map(|m| m.user).collect();
        let body = CreateConversation::Group { title: title.to_owned(), members: ids };
        let created: CreatedConversation =
            self.post("/v1/conversations", Some(&owner.token), &body).await?;
        let conv = created.conversation.id;
        for member in members.iter().filter(|m| created.invited.contains(&m.user)) {
            let path = format!("/v1/invitations/{conv}/accept");
            let _: Ack = self.post(&path, Some(&member.token), &()).await?;
        }
        Ok(conv)
    }

    /// `POST /v1/conversations/{conv}/entries`: appends `entry` and waits for its commit.
    pub(crate) async fn post_entry(
        &self,
        token: &str,
        conv: ConversationId,
        entry: &natter_proto::rest::PostEntry,
    ) -> anyhow::Result<Ack> {
        self.post(&format!("/v1/conversations/{conv}/entries"), Some(token), entry).await
    }

    /// `GET /v1/search` with `params` (`q`, filters, `limit`...): one page of hits.
    pub(crate) async fn search(
        &self,
        token: &str,
        params: &[(&str, String)],
    ) -> anyhow::Result<natter_proto::rest::SearchResults> {
        let url = format!("{}/v1/search", self.base);
        let res = self
            .http
            .get(&url)
            .query(params)
            .bearer_auth(token)
            .send()
            .await
            .context("GET /v1/search")?;
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("GET /v1/search: {status}: {text}");
        }
        serde_json::from_str(&text).context("reading the search results")
    }

    /// `GET /v1/push/config`: the push providers the server has on.
    pub(crate) async fn push_providers(&self, token: &str) -> anyhow::Result<Vec<String>> {
        let url = format!("{}/v1/push/config", self.base);
        let res =
            self.http.get(&url).bearer_auth(token).send().await.context("GET /v1/push/config")?;
        let status = res.status();
        let text = res.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("GET /v1/push/config: {status}: {text}");
        }
        let config: natter_proto::rest::PushConfig =
            serde_json::from_str(&text).context("reading the push config")?;
        Ok(config.providers)
    }

    /// `POST /v1/me/push`: registers the device of `token` with `provider` and `push_token`.
    pub(crate) async fn register_push(
        &self,
        token: &str,
        provider: &str,
        push_token: &str,
    ) -> anyhow::Result<()> {
        let body = natter_proto::rest::NewPushRegistration {
            provider: provider.to_owned(),
            token: push_token.to_owned(),
            p256dh: None,
            auth: None,
        };
        let _: serde_json::Value = self.post("/v1/me/push", Some(token), &body).await?;
        Ok(())
    }

    /// Runs `f` over `items`, `concurrency` at a time, keeping their order.
    pub(crate) async fn each<I, F, Fut, T>(
        items: I,
        concurrency: usize,
        f: F,
    ) -> anyhow::Result<Vec<T>>
    where
        I: IntoIterator,
        F: FnMut(I::Item) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<T>>,
    {
        let results: Vec<anyhow::Result<T>> = futures_util::stream::iter(items.into_iter().map(f))
            .buffered(concurrency.max(1))
            .collect()
            .await;
        results.into_iter().collect()
    }
}

/// The numeric samples of a server's `/metrics` (name → value; labelled series are summed
/// under their bare name), with the bearer token in `NATTER_METRICS_TOKEN`, if set.
pub(crate) async fn scrape(base: &str) -> anyhow::Result<HashMap<String, f64>> {
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build()?;
    let url = format!("{}/metrics", base.trim_end_matches('/'));
    let mut req = http.get(&url);
    if let Ok(token) = std::env::var("NATTER_METRICS_TOKEN") {
        req = req.bearer_auth(token);
    }
    let text = req.send().await?.error_for_status()?.text().await?;
    Ok(parse_metrics(&text))
}

fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let name = series.split('{').next().unwrap_or(series);
        if let Ok(v) = value.parse::<f64>() {
            *out.entry(name.to_owned()).or_insert(0.0) += v;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_text() {
        let m = parse_metrics(
            "# TYPE natter_connections gauge\nnatter_connections 12\n\
             natter_process_resident_memory_bytes 1048576\n\
             natter_commit_seconds_bucket{le=\"0.1\"} 3\nnatter_commit_seconds_bucket{le=\"1\"} 4\n",
        );
        assert_eq!(m["natter_connections"], 12.0);
        assert_eq!(m["natter_process_resident_memory_bytes"], 1_048_576.0);
        assert_eq!(m["natter_commit_seconds_bucket"], 7.0);
    }
}
