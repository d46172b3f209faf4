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

/// Argon2 hashes running at once. Each uses 19 MiB and a core for tens of milliseconds, and
/// the allocator keeps what a blocking thread used: unbounded, a burst of logins would hold
/// gigabytes. Two (the cores this server is sized for) keep memory flat; callers queue.
static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Hashes a password with argon2id (default parameters, random salt) off the async runtime.
pub(crate) async fn hash_password(password: String) -> Result<String, ApiError> {
    let permit = HASHING.acquire().await.expect("the hashing semaphore is never closed");
    tokio::task::spawn_blocking(move || {
        // Held by the blocking work itself, so a caller that goes away frees no slot early.
        let _permit = permit;
        PasswordHasher::<PasswordHash>::hash_password(&Argon2::default(), password.as_bytes())
            .map(|h| h.to_string())
    })
    .await
    .map_err(|_| ApiError::new(natter_proto::ErrorCode::Internal, "hashing failed"))?
    .map_err(|_| ApiError::new(natter_proto::ErrorCode::Internal, "hashing failed"))
}

/// Checks a password against a stored PHC string, off the async runtime.
pub(crate) async fn verify_password(password: String, phc: String) -> bool {
    let permit = HASHING.acquire().await.expect("the hashing semaphore is never closed");
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        PasswordHash::new(&phc)
            .map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
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
