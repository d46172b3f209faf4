//! Web Push: a browser's push service, reached at the subscription's endpoint URL, with a
//! VAPID JWT (RFC 8292) and the payload encrypted to the subscription (RFC 8291, content
//! coding `aes128gcm` of RFC 8188). The primitives are aws-lc-rs's (rustls's provider): P-256
//! ECDH, HKDF-SHA-256, AES-128-GCM; the JWT is jsonwebtoken's.

use aws_lc_rs::encoding::AsBigEndian;
use aws_lc_rs::{aead, agreement, hkdf, rand, signature};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use natter_store::PushRegistration;

use super::{Payload, Sent, classify};
use crate::config::WebPushSettings;

/// The record size field of the `aes128gcm` header: one record holds any payload we send.
const RECORD_SIZE: u32 = 4096;
/// How long a VAPID JWT is valid (the push services accept up to 24 hours).
const JWT_SECS: u64 = 12 * 3600;

/// The provider, with its key ready.
pub(super) struct WebPush {
    key: EncodingKey,
    /// The VAPID public key, base64url: the `k` of the `Authorization` header.
    public: String,
    subject: String,
    allowed_hosts: Vec<String>,
    ttl_secs: u32,
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    aud: &'a str,
    exp: u64,
    sub: &'a str,
}

impl WebPush {
    pub(super) fn new(s: &WebPushSettings) -> anyhow::Result<WebPush> {
        let public = B64.decode(s.vapid_public_key.trim())?;
        let private = B64.decode(s.vapid_private_key.trim())?;
        let pair = signature::EcdsaKeyPair::from_private_key_and_public_key(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &private,
            &public,
        )
        .map_err(|e| anyhow::anyhow!("push.webpush: the VAPID keys are not a P-256 pair: {e}"))?;
        let pkcs8 = pair.to_pkcs8v1().map_err(|_| anyhow::anyhow!("encoding the VAPID key"))?;
        if !(s.subject.starts_with("mailto:") || s.subject.starts_with("https:")) {
            anyhow::bail!("push.webpush.subject must be a mailto: or https: URL");
        }
        Ok(WebPush {
            key: EncodingKey::from_ec_der(pkcs8.as_ref()),
            public: B64.encode(&public),
            subject: s.subject.clone(),
            allowed_hosts: s.allowed_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            ttl_secs: s.ttl_secs,
        })
    }

    /// The public key browsers subscribe with (`applicationServerKey`).
    pub(super) fn public_key(&self) -> &str {
        &self.public
    }

    /// Checks a subscription before it is stored: an endpoint on an allowed host, and keys
    /// of the right shape. The error says what is wrong.
    pub(super) fn check(
        &self,
        endpoint: &str,
        p256dh: Option<&str>,
        auth: Option<&str>,
    ) -> Result<(), String> {
        self.origin(endpoint)?;
        let p256dh = p256dh.map(|k| B64.decode(k.trim_end_matches('=')));
        if !matches!(&p256dh, Some(Ok(k)) if k.len() == 65 && k[0] == 4) {
            return Err("p256dh must be the subscription's P-256 key (65 bytes, base64url)".into());
        }
        let auth = auth.map(|k| B64.decode(k.trim_end_matches('=')));
        if !matches!(&auth, Some(Ok(a)) if a.len() == 16) {
            return Err("auth must be the subscription's 16-byte secret, base64url".into());
        }
        Ok(())
    }

    /// The endpoint's origin (the JWT's audience), if the endpoint may be called at all.
    fn origin(&self, endpoint: &str) -> Result<String, String> {
        let url = reqwest::Url::parse(endpoint).map_err(|_| "the endpoint is not a URL")?;
        let host = url.host_str().ok_or("the endpoint has no host")?.to_ascii_lowercase();
        let allowed = self
            .allowed_hosts
            .iter()
            .any(|h| host == *h || host.strip_suffix(h.as_str()).is_some_and(|p| p.ends_with('.')));
        if !allowed {
            return Err(format!("push endpoints on {host} are not allowed on this server"));
        }
        let loopback = host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            _ => return Err("the endpoint must be an https URL".into()),
        }
        Ok(url.origin().ascii_serialization())
    }

    pub(super) async fn send(
        &self,
        client: &reqwest::Client,
        reg: &PushRegistration,
        payload: &Payload,
    ) -> Sent {
        let Ok(aud) = self.origin(&reg.token) else {
            // Allowed when registered, not any more (the setting changed): gone for good.
            return Sent::Dead;
        };
        let keys = (reg.p256dh.as_deref(), reg.auth.as_deref());
        let (Some(p256dh), Some(auth)) = keys else { return Sent::Dead };
        let (Ok(p256dh), Ok(auth)) =
            (B64.decode(p256dh.trim_end_matches('=')), B64.decode(auth.trim_end_matches('=')))
        else {
            return Sent::Dead;
        };
        let Ok(plain) = serde_json::to_vec(payload) else { return Sent::Retry };
        let Ok(body) = encrypt(&p256dh, &auth, &plain) else {
            tracing::warn!("encrypting a Web Push payload failed (a bad subscription key)");
            return Sent::Dead;
        };
        let exp = now_secs() + JWT_SECS;
        let claims = Claims { aud: &aud, exp, sub: &self.subject };
        let Ok(jwt) = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.key)
        else {
            return Sent::Retry;
        };
        let notify = payload.kind == "notify";
        let ttl = if notify { self.ttl_secs } else { self.ttl_secs.min(3600) };
        let res = client
            .post(&reg.token)
            .header("authorization", format!("vapid t={jwt}, k={}", self.public))
            .header("content-encoding", "aes128gcm")
            .header("content-type", "application/octet-stream")
            .header("ttl", ttl.to_string())
            // A newer notification of the conversation replaces one the service still holds.
            .header("topic", &payload.collapse_id)
            .header("urgency", if notify { "high" } else { "normal" })
            .body(body)
            .send()
            .await;
        classify("webpush", res, |_, _| None).await
    }
}

/// A fresh VAPID key pair, base64url: (public, private).
pub fn vapid_keys() -> anyhow::Result<(String, String)> {
    let pair = signature::EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
        .map_err(|_| anyhow::anyhow!("generating a key"))?;
    let private: aws_lc_rs::encoding::EcPrivateKeyBin<'_> =
        pair.private_key().as_be_bytes().map_err(|_| anyhow::anyhow!("encoding a key"))?;
    use aws_lc_rs::signature::KeyPair;
    Ok((B64.encode(pair.public_key().as_ref()), B64.encode(private.as_ref())))
}

fn now_secs() -> u64 {
    u64::try_from(crate::now_ms() / 1000).unwrap_or(0)
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn expand(
    prk: &hkdf::Prk,
    info: &[u8],
    out: &mut [u8],
) -> Result<(), aws_lc_rs::error::Unspecified> {
    prk.expand(&[info], Len(out.len()))?.fill(out)
}

/// RFC 8291: the message for a subscription whose public key is `ua_public` and secret
/// `auth`, as one `aes128gcm` record behind its header (salt, record size, our key).
fn encrypt(
    ua_public: &[u8],
    auth: &[u8],
    plain: &[u8],
) -> Result<Vec<u8>, aws_lc_rs::error::Unspecified> {
    use aws_lc_rs::rand::SecureRandom;
    let rng = rand::SystemRandom::new();
    let ours = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng)?;
    let as_public = ours.compute_public_key()?;
    let as_public = as_public.as_ref().to_vec();
    let peer = agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, ua_public);
    let shared =
        agreement::agree_ephemeral(ours, peer, aws_lc_rs::error::Unspecified, |s| Ok(s.to_vec()))?;
    // IKM = HKDF(auth, ECDH secret, "WebPush: info" || 0 || ua_public || as_public)
    let mut info = b"WebPush: info\0".to_vec();
    info.extend_from_slice(ua_public);
    info.extend_from_slice(&as_public);
    let mut ikm = [0u8; 32];
    expand(&hkdf::Salt::new(hkdf::HKDF_SHA256, auth).extract(&shared), &info, &mut ikm)?;
    let mut salt = [0u8; 16];
    rng.fill(&mut salt)?;
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &salt).extract(&ikm);
    let mut cek = [0u8; 16];
    expand(&prk, b"Content-Encoding: aes128gcm\0", &mut cek)?;
    let mut nonce = [0u8; 12];
    expand(&prk, b"Content-Encoding: nonce\0", &mut nonce)?;
    let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_128_GCM, &cek)?);
    // One record, the last: the payload and its delimiter 0x02.
    let mut record = Vec::with_capacity(plain.len() + 1 + aead::AES_128_GCM.tag_len());
    record.extend_from_slice(plain);
    record.push(2);
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key(nonce),
        aead::Aad::empty(),
        &mut record,
    )?;
    let mut out = Vec::with_capacity(16 + 4 + 1 + as_public.len() + record.len());
    out.extend_from_slice(&salt);
    out.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    out.push(u8::try_from(as_public.len()).map_err(|_| aws_lc_rs::error::Unspecified)?);
    out.extend_from_slice(&as_public);
    out.extend_from_slice(&record);
    Ok(out)
}
