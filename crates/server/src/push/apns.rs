//! Apple Push Notification service: `POST {base}/3/device/{token}` over HTTP/2 (APNs speaks
//! nothing else) with a provider token, an ES256 JWT signed with the team's `.p8` key and
//! renewed every 40 minutes (Apple refuses one older than an hour, and more than one new
//! token per 20 minutes).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use natter_store::PushRegistration;
use serde_json::json;

use super::{Payload, Sent, classify};
use crate::config::ApnsSettings;

const TOKEN_LIFE: Duration = Duration::from_secs(40 * 60);
/// Longest device token accepted (Apple's are 64 hex digits today; they may grow).
pub(super) const MAX_TOKEN_HEX: usize = 200;

pub(super) struct Apns {
    key: EncodingKey,
    key_id: String,
    team_id: String,
    topic: String,
    base_url: String,
    /// Its own client: HTTP/2 only, and the `ca_file` roots when set.
    client: reqwest::Client,
    token: Mutex<Option<(String, Instant)>>,
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: u64,
}

impl Apns {
    pub(super) fn new(s: &ApnsSettings, timeout: Duration) -> anyhow::Result<Apns> {
        let pem = std::fs::read(&s.key_file)
            .map_err(|e| anyhow::anyhow!("push.apns: reading {}: {e}", s.key_file.display()))?;
        let key = EncodingKey::from_ec_pem(&pem).map_err(|e| {
            anyhow::anyhow!("push.apns: {} is not a P-256 .p8 key: {e}", s.key_file.display())
        })?;
        let mut client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &s.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| anyhow::anyhow!("push.apns: reading {}: {e}", ca.display()))?;
            client = client.tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem)?);
        }
        Ok(Apns {
            key,
            key_id: s.key_id.clone(),
            team_id: s.team_id.clone(),
            topic: s.topic.clone(),
            base_url: s.base_url.trim_end_matches('/').to_owned(),
            client: client.build()?,
            token: Mutex::new(None),
        })
    }

    fn provider_token(&self) -> Option<String> {
        let mut kept = self.token.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((token, made)) = &*kept
            && made.elapsed() < TOKEN_LIFE
        {
            return Some(token.clone());
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let iat = u64::try_from(crate::now_ms() / 1000).unwrap_or(0);
        let token =
            jsonwebtoken::encode(&header, &Claims { iss: &self.team_id, iat }, &self.key).ok()?;
        *kept = Some((token.clone(), Instant::now()));
        Some(token)
    }

    fn forget_token(&self) {
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub(super) async fn send(&self, reg: &PushRegistration, payload: &Payload) -> Sent {
        if reg.token.is_empty()
            || reg.token.len() > MAX_TOKEN_HEX
            || !reg.token.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Sent::Dead;
        }
        let Some(jwt) = self.provider_token() else { return Sent::Retry };
        let notify = payload.kind == "notify";
        let aps = if notify {
            json!({
                "alert": {
                    "title": payload.title.as_deref().or(payload.sender.as_deref()).unwrap_or("Natter"),
                    "body": payload.body.as_deref().unwrap_or("New message"),
                },
                "thread-id": payload.collapse_id,
                "sound": "default",
            })
        } else {
            json!({ "content-available": 1 })
        };
        let body = json!({ "aps": aps, "natter": payload });
        let url = format!("{}/3/device/{}", self.base_url, reg.token);
        let expires = crate::now_ms() / 1000 + 86_400;
        let res = self
            .client
            .post(url)
            .header("authorization", format!("bearer {jwt}"))
            .header("apns-topic", &self.topic)
            .header("apns-push-type", if notify { "alert" } else { "background" })
            .header("apns-priority", if notify { "10" } else { "5" })
            .header("apns-collapse-id", &payload.collapse_id)
            .header("apns-expiration", expires.to_string())
            .json(&body)
            .send()
            .await;
        classify("apns", res, |status, reason| {
            if reason.contains("BadDeviceToken") || reason.contains("DeviceTokenNotForTopic") {
                return Some(Sent::Dead);
            }
            if status == 403 && reason.contains("ProviderToken") {
                self.forget_token();
                return Some(Sent::Retry);
            }
            None
        })
        .await
    }
}
