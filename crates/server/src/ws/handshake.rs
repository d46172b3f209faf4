//! The server's half of the WebSocket opening handshake (RFC 6455 §4.2): what makes a request
//! an upgrade, and the accept key that answers it.

use axum::extract::Request;
use axum::http::header::{CONNECTION, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE};
use axum::http::{HeaderMap, HeaderValue, Method};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// `Sec-WebSocket-Accept` for a valid upgrade request, or `None` for any other: a GET (axum
/// also routes HEAD here) that hyper can upgrade (HTTP/1.1) with valid headers.
pub(super) fn accept_key(req: &Request) -> Option<HeaderValue> {
    if req.method() != Method::GET || req.extensions().get::<hyper::upgrade::OnUpgrade>().is_none()
    {
        return None;
    }
    accept_key_of(req.headers())
}

/// The accept key for valid upgrade headers (`Connection: upgrade`, `Upgrade: websocket`,
/// version 13, a key of 16 bytes in base64).
fn accept_key_of(headers: &HeaderMap) -> Option<HeaderValue> {
    let has_token = |name, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token(CONNECTION, "upgrade") || !has_token(UPGRADE, "websocket") {
        return None;
    }
    if headers.get(SEC_WEBSOCKET_VERSION).is_none_or(|v| v.as_bytes() != b"13") {
        return None;
    }
    // 16 random bytes in base64 are 24 characters, the last two `==`.
    let key = headers.get(SEC_WEBSOCKET_KEY)?.as_bytes();
    let well_formed = key.len() == 24
        && key.ends_with(b"==")
        && key[..22].iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/'));
    if !well_formed {
        return None;
    }
    HeaderValue::from_str(&derive_accept_key(key)).ok()
}

/// Whether the upgrade's query asks for permessage-deflate (`compress=deflate`).
pub(super) fn asks_for_deflate(query: Option<&str>) -> bool {
    query.is_some_and(|q| q.split('&').any(|pair| pair == "compress=deflate"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    const VALID: [(&str, &str); 4] = [
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn answers_the_rfc_example_and_refuses_what_is_not_an_upgrade() {
        // RFC 6455 §1.3's example key and accept value.
        let accept = accept_key_of(&request(&VALID)).expect("an upgrade");
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        for (drop, (name, _)) in VALID.iter().enumerate() {
            let mut pairs = VALID.to_vec();
            pairs.remove(drop);
            assert!(accept_key_of(&request(&pairs)).is_none(), "without {name}");
        }
        let mut old = VALID.to_vec();
        old[2] = ("sec-websocket-version", "8");
        assert!(accept_key_of(&request(&old)).is_none());
        let mut short = VALID.to_vec();
        short[3] = ("sec-websocket-key", "c2hvcnQ=");
        assert!(accept_key_of(&request(&short)).is_none());
    }

    #[test]
    fn only_an_upgradable_get_is_an_upgrade() {
        // Valid headers, but HEAD, or a request hyper cannot upgrade (no `OnUpgrade`).
        for method in [Method::HEAD, Method::GET] {
            let mut req = Request::new(axum::body::Body::empty());
            *req.method_mut() = method;
            *req.headers_mut() = request(&VALID);
            assert!(accept_key(&req).is_none());
        }
    }

    #[test]
    fn deflate_is_asked_for_by_the_query() {
        assert!(asks_for_deflate(Some("compress=deflate")));
        assert!(asks_for_deflate(Some("a=1&compress=deflate")));
        assert!(!asks_for_deflate(Some("compress=gzip")));
        assert!(!asks_for_deflate(Some("xcompress=deflate")));
        assert!(!asks_for_deflate(None));
    }
}
