//! Credentials: argon2id password hashes, random bearer tokens stored as SHA-256, and the
//! [`Auth`] extractor that authenticates every REST route.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine;
use natter_store::{Principal, TokenHash};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::AppState;

/// Argon2 runs on two long-lived threads of its own. Each hash takes 19 MiB and a core for
/// tens of milliseconds; on tokio's blocking pool every new thread kept its freed 19 MiB in
/// its own malloc arena (a fresh server grew to 1.5 GB after 40 logins). Two threads — the
/// cores this server is sized for — bound that to two buffers; callers queue.
fn hashing_pool() -> &'static std::sync::mpsc::SyncSender<HashJob> {
    static POOL: std::sync::OnceLock<std::sync::mpsc::SyncSender<HashJob>> =
        std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<HashJob>(HASH_QUEUE);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for i in 0..2 {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("natter-argon2-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only to take the next job, never while hashing.
                        let job = rx.lock().expect("hashing queue poisoned").recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })
                .expect("spawning a hashing thread");
        }
        tx
    })
}

type HashJob = Box<dyn FnOnce() + Send>;

/// Hashes waiting for a thread; beyond this, logins and registrations are refused
/// (`too_many_requests`) rather than queued without bound.
const HASH_QUEUE: usize = 256;

/// Runs `f` on the hashing threads.
async fn on_hashing_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: HashJob = Box::new(move || drop(tx.send(f())));
    if hashing_pool().try_send(job).is_err() {
        return Err(ApiError::new(
            natter_proto::ErrorCode::TooManyRequests,
            "too many logins at once; retry",
        ));
    }
    rx.await.map_err(|_| ApiError::new(natter_proto::ErrorCode::Internal, "hashing failed"))
}

/// Hashes a password with argon2id (default parameters, random salt).
pub(crate) async fn hash_password(password: String) -> Result<String, ApiError> {
    on_hashing_thread(move || {
        PasswordHasher::<PasswordHash>::hash_password(&Argon2::default(), password.as_bytes())
            .map(|h| h.to_string())
    })
    .await?
    .map_err(|_| ApiError::new(natter_proto::ErrorCode::Internal, "hashing failed"))
}

/// Checks a password against a stored PHC string.
pub(crate) async fn verify_password(password: String, phc: String) -> Result<bool, ApiError> {
    on_hashing_thread(move || {
        PasswordHash::new(&phc)
            .map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
            .unwrap_or(false)
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
    Ok(state.store().authenticate(token_hash(token)).await?)
}

/// An authenticated REST caller. Rejects with 401 `unauthenticated`.
pub(crate) struct Auth {
    pub(crate) principal: Principal,
    pub(crate) token: String,
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Auth, ApiError> {
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            .ok_or_else(ApiError::unauthenticated)?;
        match authenticate(state, token).await? {
            Some(principal) => Ok(Auth { principal, token: token.to_owned() }),
            None => Err(ApiError::unauthenticated()),
        }
    }
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
    fn tokens_are_random_and_hash_stably() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with("nt_") && a.len() > 40);
        assert_eq!(token_hash(&a), token_hash(&a));
        assert_ne!(token_hash(&a), token_hash(&b));
    }
}
