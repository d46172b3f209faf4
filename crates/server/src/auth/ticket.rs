//! Tickets: what a browser presents where it cannot send an `Authorization` header
//! (`EventSource` for `GET /v1/events`). `POST /v1/tickets` (with a bearer token) returns
//! one; it is good for [`TICKET_TTL`] and for one use, on any node.
//!
//! A ticket is `base64url(token_hash ‖ expires_ms ‖ nonce) "." base64url(mac)`, the MAC an
//! HMAC-SHA256 keyed with the server secret (`media_secret`, which every node of a cluster
//! shares) over `"ticket\n"` and the payload. It names the token's SHA-256, not the token: a
//! ticket that leaks into a log is worthless after its one use or its 30 seconds, and never
//! yields a bearer token. Using one checks the token again (a revoked token's tickets fail)
//! and claims the nonce on the bus (`Bus::claim_once`: Redis `SET NX` in a cluster), so it
//! works once in the whole cluster.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use natter_store::TokenHash;
use sha2::Sha256;

/// How long a ticket is good for.
pub(crate) const TICKET_TTL: Duration = Duration::from_secs(30);

const PAYLOAD: usize = 32 + 8 + 16;

/// Issues and checks tickets.
#[derive(Clone)]
pub(crate) struct Tickets {
    key: Hmac<Sha256>,
}

/// A ticket whose MAC and time checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Valid {
    pub(crate) token_hash: TokenHash,
    /// The claim key that makes it single-use.
    pub(crate) nonce: String,
}

impl Tickets {
    pub(crate) fn new(secret: &[u8]) -> Tickets {
        Tickets { key: Hmac::new_from_slice(secret).expect("HMAC takes keys of any length") }
    }

    fn mac(&self, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.key.clone();
        mac.update(b"ticket\n");
        mac.update(payload);
        mac
    }

    /// A ticket for the token whose hash is `token_hash`, issued at `now_ms`.
    pub(crate) fn issue(&self, token_hash: &TokenHash, now_ms: i64) -> String {
        let mut payload = Vec::with_capacity(PAYLOAD);
        payload.extend_from_slice(token_hash);
        let expires = now_ms + i64::try_from(TICKET_TTL.as_millis()).expect("30 s");
        payload.extend_from_slice(&expires.to_be_bytes());
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).expect("the OS random source is available");
        payload.extend_from_slice(&nonce);
        let sig = self.mac(&payload).finalize().into_bytes();
        format!("{}.{}", URL_SAFE_NO_PAD.encode(&payload), URL_SAFE_NO_PAD.encode(sig))
    }

    /// The ticket's token hash and nonce, if its MAC checks and it has not expired.
    pub(crate) fn check(&self, ticket: &str, now_ms: i64) -> Option<Valid> {
        let (payload, sig) = ticket.split_once('.')?;
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        if payload.len() != PAYLOAD {
            return None;
        }
        self.mac(&payload).verify_slice(&sig).ok()?;
        let expires = i64::from_be_bytes(payload[32..40].try_into().expect("8 bytes"));
        if expires <= now_ms {
            return None;
        }
        let token_hash: TokenHash = payload[..32].try_into().expect("32 bytes");
        let nonce = payload[40..].iter().map(|b| format!("{b:02x}")).collect();
        Some(Valid { token_hash, nonce })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_checks_until_it_expires_and_not_once_altered() {
        let tickets = Tickets::new(b"0123456789abcdef0123456789abcdef");
        let hash = [7u8; 32];
        let t = tickets.issue(&hash, 1_000);
        let valid = tickets.check(&t, 1_001).expect("valid");
        assert_eq!(valid.token_hash, hash);
        assert_eq!(valid.nonce.len(), 32);
        assert_ne!(tickets.check(&tickets.issue(&hash, 1_000), 1_001).unwrap().nonce, valid.nonce);
        assert_eq!(tickets.check(&t, 1_000 + 30_000), None, "expired");
        let other = Tickets::new(b"another secret, also 32 bytes...");
        assert_eq!(other.check(&t, 1_001), None, "another key");
        let (payload, sig) = t.split_once('.').unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(payload).unwrap();
        bytes[0] ^= 1;
        let forged = format!("{}.{sig}", URL_SAFE_NO_PAD.encode(&bytes));
        assert_eq!(tickets.check(&forged, 1_001), None, "altered");
        for junk in ["", ".", "abc", "a.b", &format!("{payload}.")] {
            assert_eq!(tickets.check(junk, 1_001), None, "{junk:?}");
        }
    }
}
