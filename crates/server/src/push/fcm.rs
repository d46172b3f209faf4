//! Firebase Cloud Messaging, HTTP v1: `POST {base}/v1/projects/{project}/messages:send` with
//! an OAuth2 access token the service account gets by the JWT bearer grant (RFC 7523) from
//! its `token_uri`, kept until shortly before it expires.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use natter_store::PushRegistration;
use serde_json::json;

use super::{Payload, Sent, classify};
use crate::config::FcmSettings;

const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// An access token is renewed this long before it expires.
const EARLY: Duration = Duration::from_secs(300);

/// The fields of the service account's key file we use.
#[derive(serde::Deserialize)]
struct ServiceAccount {
    project_id: String,
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    token_uri: String,
}

pub(super) struct Fcm {
    key: EncodingKey,
    key_id: Option<String>,
    client_email: String,
    token_uri: String,
    send_url: String,
    token: Mutex<Option<(String, Instant)>>,
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(serde::Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default = "TokenAnswer::default_expiry")]
    expires_in: u64,
}

impl TokenAnswer {
    fn default_expiry() -> u64 {
        3600
    }
}

impl Fcm {
    pub(super) fn new(s: &FcmSettings) -> anyhow::Result<Fcm> {
        let path = &s.service_account_file;
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("push.fcm: reading {}: {e}", path.display()))?;
        let account: ServiceAccount = serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!("push.fcm: {} is not a service account key: {e}", path.display())
        })?;
        let key = EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .map_err(|e| anyhow::anyhow!("push.fcm: the service account's private_key: {e}"))?;
        let base = s.base_url.trim_end_matches('/');
        Ok(Fcm {
            key,
            key_id: account.private_key_id,
            client_email: account.client_email,
            token_uri: account.token_uri,
            send_url: format!("{base}/v1/projects/{}/messages:send", account.project_id),
            token: Mutex::new(None),
        })
    }

    /// A valid access token: the kept one, or a new one from the token endpoint.
    async fn access_token(&self, client: &reqwest::Client) -> Option<String> {
        if let Some((token, until)) = &*self.token.lock().unwrap_or_else(|p| p.into_inner())
            && Instant::now() < *until
        {
            return Some(token.clone());
        }
        let iat = u64::try_from(crate::now_ms() / 1000).unwrap_or(0);
        let claims = Claims {
            iss: &self.client_email,
            scope: SCOPE,
            aud: &self.token_uri,
            iat,
            exp: iat + 3600,
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid.clone_from(&self.key_id);
        let assertion = jsonwebtoken::encode(&header, &claims, &self.key).ok()?;
        let form = [
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", &assertion),
        ];
        let res = client.post(&self.token_uri).form(&form).send().await;
        let answer: TokenAnswer = match res {
            Ok(res) if res.status().is_success() => res.json().await.ok()?,
            Ok(res) => {
                tracing::warn!(status = %res.status(), "FCM's token endpoint refused the service account");
                return None;
            }
            Err(err) => {
                tracing::debug!(error = %err, "FCM's token endpoint did not answer");
                return None;
            }
        };
        let life = Duration::from_secs(answer.expires_in).saturating_sub(EARLY);
        let until = Instant::now() + life.max(Duration::from_secs(1));
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((answer.access_token.clone(), until));
        Some(answer.access_token)
    }

    fn forget_token(&self) {
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub(super) async fn send(
        &self,
        client: &reqwest::Client,
        reg: &PushRegistration,
        payload: &Payload,
    ) -> Sent {
        let Some(token) = self.access_token(client).await else { return Sent::Retry };
        // FCM's data values are strings.
        let data: serde_json::Map<String, serde_json::Value> = match serde_json::to_value(payload) {
            Ok(serde_json::Value::Object(fields)) => fields
                .into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (k, serde_json::Value::String(v))
                })
                .collect(),
            _ => return Sent::Retry,
        };
        let notify = payload.kind == "notify";
        let mut message = json!({
            "token": reg.token,
            "data": data,
            "android": {
                "collapse_key": payload.collapse_id,
                "priority": if notify { "HIGH" } else { "NORMAL" },
            },
        });
        if notify {
            message["notification"] = json!({
                "title": payload.title.as_deref().or(payload.sender.as_deref()).unwrap_or("Natter"),
                "body": payload.body.as_deref().unwrap_or("New message"),
            });
            message["android"]["notification"] = json!({ "tag": payload.collapse_id });
        }
        let res = client
            .post(&self.send_url)
            .bearer_auth(token)
            .json(&json!({ "message": message }))
            .send()
            .await;
        classify("fcm", res, |status, body| {
            if body.contains("UNREGISTERED") {
                return Some(Sent::Dead);
            }
            if status == 401 {
                // The access token lapsed early (revoked, clock skew): a new one next time.
                self.forget_token();
                return Some(Sent::Retry);
            }
            None
        })
        .await
    }
}
