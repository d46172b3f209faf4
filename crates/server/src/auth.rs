//! Credentials: argon2id password hashes (`hashing`: fair queueing per client address),
//! login failure limits (`limits`), what handles and passwords must be (`policy`), random
//! bearer tokens stored as SHA-256, and the [`Auth`] extractor of every REST route.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine;
use natter_proto::DeviceId;
use natter_store::{Principal, TokenHash};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::AppState;

pub(crate) mod hashing;
pub(crate) mod limits;
pub(crate) mod policy;
pub(crate) mod ticket;

/// Where a request comes from, as login limits and hash queueing count it: the peer's IP
/// address (IPv6: its /64, what one host usually has), or with `trust_forwarded_for` the
/// last `X-Forwarded-For` entry (the one the proxy in front added).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ClientAddr(IpAddr);

impl ClientAddr {
    /// The address as keyed: IPv4, or the /64 of an IPv6 address.
    pub(crate) fn ip(&self) -> IpAddr {
        self.0
    }

    pub(crate) fn from_ip(ip: IpAddr) -> ClientAddr {
        match ip {
            IpAddr::V4(_) => ClientAddr(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientAddr(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    ClientAddr(IpAddr::V6(Ipv6Addr::from(prefix)))
                }
            },
        }
    }
}

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<ClientAddr, Self::Rejection> {
        if state.cfg().trust_forwarded_for
            && let Some(ip) = parts
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .next_back()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .and_then(|v| v.trim().parse::<IpAddr>().ok())
        {
            return Ok(ClientAddr::from_ip(ip));
        }
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        Ok(ClientAddr::from_ip(peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))))
    }
}

/// Runs `f` on the hashing threads, queued behind `addr`'s earlier hashes.
async fn on_hashing_thread<T: Send + 'static>(
    state: &AppState,
    addr: ClientAddr,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let per_addr = state.cfg().limits.max_hashes_per_address;
    if let Err(hashing::Busy(wait)) =
        hashing::pool().submit(addr, per_addr, move || drop(tx.send(f())))
    {
        return Err(ApiError::too_many_requests("too many logins at once; retry", wait));
    }
    rx.await.map_err(|_| ApiError::new(natter_proto::ErrorCode::Internal, "hashing failed"))
}

/// Hashes a password with argon2id (default parameters, random salt).
pub(crate) async fn hash_password(
    state: &AppState,
    addr: ClientAddr,
    password: String,
) -> Result<String, ApiError> {
    on_hashing_thread(state, addr, move || hash_now(&password))
        .await?
        .ok_or_else(|| ApiError::new(natter_proto::ErrorCode::Internal, "hashing failed"))
}

fn hash_now(password: &str) -> Option<String> {
    PasswordHasher::<PasswordHash>::hash_password(&Argon2::default(), password.as_bytes())
        .map(|h| h.to_string())
        .ok()
}

/// A hash of no one's password, with the parameters real ones have: an unknown handle's
/// login verifies against it, so it costs what a known handle's does (no enumeration by
/// timing). Made once per process, on a hashing thread.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).expect("the OS random source is available");
        hash_now(&base64::engine::general_purpose::STANDARD.encode(secret))
            .expect("hashing a random secret works")
    })
}

/// Makes the dummy hash now, so the first unknown-handle login does not pay for it.
pub(crate) fn warm_up() {
    let any = ClientAddr(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let _ = hashing::pool().submit(any, usize::MAX, || {
        dummy_hash();
    });
}

/// Checks a password against a stored PHC string, or (no account) against the dummy hash,
/// which always fails but takes as long.
pub(crate) async fn verify_password(
    state: &AppState,
    addr: ClientAddr,
    password: String,
    phc: Option<String>,
) -> Result<bool, ApiError> {
    on_hashing_thread(state, addr, move || {
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| dummy_hash().to_owned());
        let ok = PasswordHash::new(&phc)
            .map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
            .unwrap_or(false);
        known && ok
    })
    .await
}

/// A new bearer token: 32 random bytes, URL-safe base64, with a recognizable prefix.
pub(crate) fn new_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    format!("nt_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// What the store keeps of a token. Tokens carry 256 random bits, so a fast hash suffices
/// (a slow one guards low-entropy secrets like passwords).
pub(crate) fn token_hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// The token of an `Authorization: Bearer …` header value.
pub(crate) fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// Looks a token up; `None` when unknown or revoked.
pub(crate) async fn authenticate(
    state: &AppState,
    token: &str,
) -> Result<Option<Principal>, ApiError> {
    let principal = state.store().authenticate(token_hash(token)).await?;
    if let Some(p) = principal {
        touch(state, p);
    }
    Ok(principal)
}

/// How often a device's last use is written.
const TOUCH_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// Devices remembered between writes; past it the memory starts afresh (a few extra writes).
const MAX_TOUCHES: usize = 100_000;

/// When this node last wrote each device's last use.
#[derive(Default)]
pub(crate) struct Touches(
    std::sync::Mutex<std::collections::HashMap<DeviceId, std::time::Instant>>,
);

impl Touches {
    /// Whether `device`'s last use is due to be written now (and notes it as written).
    fn due(&self, device: DeviceId, now: std::time::Instant) -> bool {
        let mut seen = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.len() >= MAX_TOUCHES {
            seen.clear();
        }
        match seen.get(&device) {
            Some(at) if now.duration_since(*at) < TOUCH_EVERY => false,
            _ => {
                seen.insert(device, now);
                true
            }
        }
    }
}

/// Records that `principal`'s device was used, at most once a minute per device and node,
/// off the request's path.
fn touch(state: &AppState, principal: Principal) {
    if state.touches().due(principal.device_id, std::time::Instant::now()) {
        let store = state.store().clone();
        tokio::spawn(async move {
            if let Err(err) = store.touch_device(principal.device_id, crate::now_ms()).await {
                tracing::debug!(error = %err, "recording a device's last use failed");
            }
        });
    }
}

/// An authenticated REST caller. Rejects with 401 `unauthenticated`.
pub(crate) struct Auth {
    pub(crate) principal: Principal,
    /// The SHA-256 of the caller's token (what the store knows it by).
    pub(crate) token_hash: TokenHash,
}

/// The one route that takes a ticket instead of a bearer token: `EventSource` cannot send
/// headers.
const TICKET_ROUTE: &str = "/v1/events";

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Auth, ApiError> {
        let bearer_token =
            parts.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer);
        let token_hash = match bearer_token {
            Some(token) => token_hash(token),
            None if parts.uri.path() == TICKET_ROUTE => redeem(state, ticket_of(parts)).await?,
            None => return Err(ApiError::unauthenticated()),
        };
        match state.store().authenticate(token_hash).await? {
            Some(principal) => {
                touch(state, principal);
                Ok(Auth { principal, token_hash })
            }
            None => Err(ApiError::unauthenticated()),
        }
    }
}

/// The `ticket` query parameter.
fn ticket_of(parts: &Parts) -> Option<&str> {
    parts.uri.query()?.split('&').find_map(|kv| kv.strip_prefix("ticket="))
}

/// A ticket's token hash, once its MAC, expiry and single use checked out.
async fn redeem(state: &AppState, ticket: Option<&str>) -> Result<TokenHash, ApiError> {
    let refused = || {
        ApiError::new(natter_proto::ErrorCode::Unauthenticated, "invalid, expired or used ticket")
    };
    let valid =
        ticket.and_then(|t| state.tickets().check(t, crate::now_ms())).ok_or_else(refused)?;
    let key = format!("ticket:{}", valid.nonce);
    if !state.cluster().claim_once(&key, ticket::TICKET_TTL).await {
        return Err(refused());
    }
    Ok(valid.token_hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }

    #[test]
    fn client_addresses_group_ipv6_by_64() {
        let a = |s: &str| ClientAddr::from_ip(s.parse().unwrap());
        assert_eq!(a("2001:db8:1:2::1"), a("2001:db8:1:2:ffff::9"));
        assert_ne!(a("2001:db8:1:2::1"), a("2001:db8:1:3::1"));
        assert_eq!(a("::ffff:10.0.0.1"), a("10.0.0.1"));
        assert_ne!(a("10.0.0.1"), a("10.0.0.2"));
    }

    #[test]
    fn tokens_are_random_and_hash_stably() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with("nt_") && a.len() > 40);
        assert_eq!(token_hash(&a), token_hash(&a));
        assert_ne!(token_hash(&a), token_hash(&b));
    }
}
