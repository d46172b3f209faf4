//! What a handle and a password must be at registration.
//!
//! Handles are taken in NFKC (fullwidth `ａｌｉｃｅ` is `alice`), everywhere a handle comes
//! in; uniqueness by confusable skeleton is the store's (`natter_store::handle_key`).
//! Passwords: at least `min_password_chars` characters not counting spaces at either end,
//! not one of the most common passwords (the list beside this file), and not the handle with
//! a few characters around it: what is left after taking the handle out must still be
//! `min_password_chars` long.

use std::collections::HashSet;
use std::sync::OnceLock;

use unicode_normalization::UnicodeNormalization;

use crate::config::Limits;
use crate::error::{ApiError, ApiResult};

/// A handle as stored and looked up: NFKC.
pub(crate) fn normalize_handle(handle: &str) -> String {
    handle.nfkc().collect()
}

/// Checks a (normalized) handle's length and characters.
pub(crate) fn check_handle(limits: &Limits, handle: &str) -> ApiResult<()> {
    let n = handle.chars().count();
    let ok_chars = handle.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if n == 0 || n > limits.max_handle_chars || !ok_chars {
        return Err(ApiError::bad_request(
            "handle must be 1 to max_handle_chars letters, digits, '_', '-' or '.'",
        ));
    }
    Ok(())
}

/// Checks a new password for `handle` (normalized).
pub(crate) fn check_password(limits: &Limits, handle: &str, password: &str) -> ApiResult<()> {
    if password.len() > limits.max_password_bytes {
        return Err(ApiError::too_large("password too long"));
    }
    let min = limits.min_password_chars;
    let trimmed = password.trim();
    if trimmed.chars().count() < min {
        return Err(ApiError::bad_request(format!(
            "password too short: at least {min} characters, not counting spaces at either end"
        )));
    }
    let lower = trimmed.to_lowercase();
    if common_passwords().contains(lower.as_str()) {
        return Err(ApiError::bad_request("password is too common: choose another"));
    }
    let handle = handle.to_lowercase();
    if !handle.is_empty() && lower.replace(&handle, "").trim().chars().count() < min {
        return Err(ApiError::bad_request("password is too close to the handle"));
    }
    Ok(())
}

/// The embedded list, read once.
fn common_passwords() -> &'static HashSet<&'static str> {
    static LIST: OnceLock<HashSet<&'static str>> = OnceLock::new();
    LIST.get_or_init(|| {
        include_str!("common-passwords.txt")
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(handle: &str, password: &str) -> Result<(), String> {
        check_password(&Limits::default(), handle, password).map_err(|e| e.message)
    }

    #[test]
    fn weak_passwords_are_refused_with_a_reason() {
        assert!(check("carol", "password").unwrap_err().contains("too common"));
        assert!(check("carol", "PassWord").unwrap_err().contains("too common"));
        assert!(check("carol", "iloveyou").unwrap_err().contains("too common"));
        assert!(check("carol", "        ").unwrap_err().contains("too short"));
        assert!(check("carol", "  abc   ").unwrap_err().contains("too short"));
        assert!(check("longhandle", "longhandle").unwrap_err().contains("handle"));
        assert!(check("longhandle", "LongHandle12").unwrap_err().contains("handle"));
        assert!(common_passwords().len() > 8_000);
    }

    #[test]
    fn reasonable_passwords_pass() {
        assert_eq!(check("carol", "correct horse battery"), Ok(()));
        assert_eq!(check("carol", "carol's long passphrase"), Ok(()));
        // A one-letter handle inside a password is no weakness.
        assert_eq!(check("a", "correct horse battery"), Ok(()));
    }

    #[test]
    fn handles_are_nfkc() {
        assert_eq!(normalize_handle("\u{ff41}\u{ff4c}\u{ff49}\u{ff43}\u{ff45}"), "alice");
        assert_eq!(normalize_handle("caf\u{65}\u{301}"), "caf\u{e9}");
    }
}
