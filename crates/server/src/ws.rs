//! The WebSocket gateway at `/v1/ws`: the upgrade (Origin check, header auth, buffer sizes),
//! then one [`connection`] task per socket, whose reader hands frames to [`dispatch`].

pub(crate) mod connection;
pub(crate) mod dispatch;
mod handshake;

use axum::extract::{Request, State};
use axum::http::header::{
    AUTHORIZATION, CONNECTION, HOST, ORIGIN, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS,
    UPGRADE,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use natter_proto::ErrorCode;
use natter_wsdeflate::MaybeDeflate;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::auth;
use crate::error::ApiError;
use crate::state::AppState;

/// `GET /v1/ws`: the WebSocket (docs/protocol.md). A token in `Authorization` authenticates
/// the upgrade; without one, the first frame must be an `auth` frame. The handshake is done
/// here rather than by axum's extractor so that permessage-deflate can sit underneath
/// tungstenite (`natter_wsdeflate::MaybeDeflate`).
#[utoipa::path(
    get, path = "/v1/ws", tag = "live",
    security(("bearer" = []), ()),
    params(("compress" = Option<String>, Query, description = "`deflate`: ask for permessage-deflate (see `ws_compression`)")),
    responses((status = 101, description = "switched to the WebSocket protocol"))
)]
pub(crate) async fn upgrade(State(state): State<AppState>, mut req: Request) -> Response {
    let headers = req.headers();
    if !origin_allowed(&state, headers) {
        return ApiError::new(ErrorCode::Forbidden, "origin not allowed").into_response();
    }
    let Some(accept) = handshake::accept_key(&req) else {
        return ApiError::bad_request("not a WebSocket upgrade").into_response();
    };
    let wants_deflate = match state.cfg().ws_compression.as_str() {
        "offered" => true,
        "requested" => handshake::asks_for_deflate(req.uri().query()),
        _ => false,
    };
    let agreement = wants_deflate
        .then(|| {
            let offers = headers.get_all(SEC_WEBSOCKET_EXTENSIONS).iter();
            natter_wsdeflate::negotiate(offers.filter_map(|v| v.to_str().ok()))
        })
        .flatten();
    // A header, when present, must be valid: no silent fallback to frame auth.
    let principal = match headers.get(AUTHORIZATION) {
        None => None,
        Some(value) => {
            let Some(token) = value.to_str().ok().and_then(auth::bearer) else {
                return ApiError::unauthenticated().into_response();
            };
            match auth::authenticate(&state, token).await {
                Ok(Some(p)) => Some((p, auth::token_hash(token))),
                Ok(None) => return ApiError::unauthenticated().into_response(),
                Err(err) => return err.into_response(),
            }
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let limits = &state.cfg().limits;
    // A 2 KiB read buffer instead of tungstenite's zero-filled 128 KiB: idle sessions cost
    // kilobytes, not a hundred (measured at 15,000 idle connections: 12.2 KiB each with 4 KiB,
    // 10.5 KiB with 2 KiB; client frames are small, larger ones just take more reads).
    // Writes are batched by the writer and flushed at 16 KiB.
    let config = WebSocketConfig::default()
        .read_buffer_size(2 * 1024)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(limits.max_frame_bytes.max(1 << 20) * 4)
        .max_message_size(Some(limits.max_frame_bytes))
        .max_frame_size(Some(limits.max_frame_bytes));
    // The cap on a compressed message's size once inflated is the frame cap: a compression
    // bomb is refused (1009) before it takes more memory than an uncompressed frame may.
    // Replies (sync and history pages) may be larger than the frames accepted: up to
    // `max_reply_bytes`, and those gain the most.
    let deflate = agreement.is_some().then(|| natter_wsdeflate::DeflateConfig {
        max_message_bytes: limits.max_frame_bytes,
        max_outbound_bytes: limits.max_frame_bytes.max(limits.max_reply_bytes),
        ..natter_wsdeflate::DeflateConfig::default()
    });
    let tasks = state.tasks().clone();
    tokio::spawn(tasks.track_future(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => hyper_util::rt::TokioIo::new(upgraded),
            Err(err) => return tracing::debug!(error = %err, "upgrade failed"),
        };
        let io = match deflate {
            Some(cfg) => MaybeDeflate::Deflate(Box::new(natter_wsdeflate::DeflateStream::new(
                upgraded,
                natter_wsdeflate::Role::Server,
                cfg,
            ))),
            None => MaybeDeflate::Plain(upgraded),
        };
        let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
        connection::run(state, socket, principal).await;
    }));
    let mut res = Response::new(axum::body::Body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(agreement) = agreement
        && let Ok(value) = HeaderValue::from_str(&agreement.response_header())
    {
        h.insert(SEC_WEBSOCKET_EXTENSIONS, value);
    }
    res
}

/// Browsers always send `Origin`; other clients usually do not. A present `Origin` must be
/// the server's own (the same scheme — `public_scheme` —, host and port as the request's
/// `Host`) or one of `allowed_origins` (`*` allows any).
fn origin_allowed(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let cfg = state.cfg();
    if cfg.allowed_origins.iter().any(|a| a == "*") {
        return true;
    }
    let Some(origin) = Origin::parse(origin) else {
        return false;
    };
    let own = headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .and_then(|host| Origin::parse(&format!("{}://{host}", cfg.public_scheme)));
    own.as_ref() == Some(&origin)
        || cfg.allowed_origins.iter().filter_map(|a| Origin::parse(a)).any(|a| a == origin)
}

/// A web origin (RFC 6454): scheme, host and port, compared exactly (host ignoring case; the
/// scheme's default port when none is written).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Origin {
    /// Parses `scheme://host[:port]` (a trailing `/` is allowed; no path, user or query).
    pub(crate) fn parse(text: &str) -> Option<Origin> {
        let (scheme, rest) = text.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let valid_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if !valid_scheme || rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
            return None;
        }
        // `[v6]:port`, or `host:port`, or a bare host.
        let (host, port) = match rest.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6.split_once(']')?;
                (format!("[{host}]"), after.strip_prefix(':'))
            }
            None => match rest.rsplit_once(':') {
                Some((host, port)) => (host.to_owned(), Some(port)),
                None => (rest.to_owned(), None),
            },
        };
        let port = match port {
            Some(p) => Some(p.parse::<u16>().ok()?),
            None => match scheme.as_str() {
                "http" | "ws" => Some(80),
                "https" | "wss" => Some(443),
                _ => None,
            },
        };
        if host.is_empty() {
            return None;
        }
        Some(Origin { scheme, host: host.to_ascii_lowercase(), port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let o = |s: &str| Origin::parse(s);
        assert_eq!(o("http://Example.com"), o("http://example.com:80"));
        assert_eq!(o("https://example.com/"), o("https://example.com:443"));
        assert_ne!(o("http://example.com"), o("https://example.com"));
        assert_ne!(o("chrome-extension://127.0.0.1:8080"), o("http://127.0.0.1:8080"));
        assert_ne!(o("http://127.0.0.1:8080"), o("http://127.0.0.1:8081"));
        assert_eq!(o("http://[::1]:8080").map(|o| o.port), Some(Some(8080)));
        for bad in ["null", "example.com", "http://", "http://a/b", "http://a:x", "1http://a"] {
            assert_eq!(o(bad), None, "{bad}");
        }
    }
}
