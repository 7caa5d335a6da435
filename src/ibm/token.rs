//! Per-API-key IAM token cache with single-flight exchange: refreshed past 80% of the token's lifetime, as IBM's SDK cores do.
//!
//! Entries are keyed by the SHA-256 of the API key, never the key. Each entry has its own async
//! mutex: the first caller that finds no usable token performs the exchange while holding it, and
//! every concurrent caller with the same key waits and then reuses the result.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::model::TokenResponse;
use crate::redact::SecretString;

/// Tokens are treated as expired this long before their expiration (as all IBM SDKs do: some
/// services reject tokens with only a few seconds left).
pub const EXPIRY_WINDOW: Duration = Duration::from_secs(10);
/// Refresh after this fraction of the lifetime has passed.
pub const REFRESH_FRACTION: f64 = 0.8;
/// After a failed refresh of a still-valid token, wait this long before trying again.
pub const REFRESH_RETRY_PAUSE: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub(crate) struct CachedToken {
    pub token: SecretString,
    refresh_at: Instant,
    expires_at: Instant,
}

impl CachedToken {
    /// Computes refresh and expiry points from the response. The lifetime is `expires_in` (falling
    /// back to `expiration - now`) measured from when the response was received on *our* clock, so
    /// a skewed local clock does not make every token look expired.
    pub fn from_response(
        response: &TokenResponse,
        received: Instant,
        now_unix: i64,
    ) -> Option<Self> {
        let lifetime_secs = response
            .expires_in
            .filter(|s| *s > 0)
            .or_else(|| response.expiration.map(|e| e - now_unix).filter(|s| *s > 0))?;
        let lifetime = Duration::from_secs(lifetime_secs as u64);
        Some(Self {
            token: response.access_token.clone(),
            refresh_at: received + lifetime.mul_f64(REFRESH_FRACTION),
            expires_at: received + lifetime.saturating_sub(EXPIRY_WINDOW),
        })
    }

    /// Unusable: within [`EXPIRY_WINDOW`] of expiration, or past it.
    pub fn is_expired(&self, now: Instant) -> bool {
        now >= self.expires_at
    }

    pub fn needs_refresh(&self, now: Instant) -> bool {
        now >= self.refresh_at
    }

    /// Postpones the next refresh attempt (after a failed refresh of a still-valid token).
    pub fn postpone_refresh(&mut self, now: Instant) {
        self.refresh_at = (now + REFRESH_RETRY_PAUSE).min(self.expires_at);
    }
}

pub(crate) type Slot = Arc<tokio::sync::Mutex<Option<CachedToken>>>;

#[derive(Default)]
pub(crate) struct TokenCache {
    slots: Mutex<HashMap<String, Slot>>,
}

impl TokenCache {
    /// The slot for one API key hash, created on first use.
    pub fn slot(&self, key_hash: &str) -> Slot {
        // A poisoned map only means another thread panicked while inserting; the map is still valid.
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(key_hash.to_owned()).or_default().clone()
    }

    /// Drops the cached token for this key if it is still `rejected` (a concurrent caller may
    /// already have replaced it with a fresh one, which must survive).
    pub async fn invalidate(&self, key_hash: &str, rejected: &SecretString) {
        let slot = self.slot(key_hash);
        let mut cached = slot.lock().await;
        if cached.as_ref().is_some_and(|c| &c.token == rejected) {
            *cached = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(expires_in: Option<i64>, expiration: Option<i64>) -> TokenResponse {
        TokenResponse {
            access_token: SecretString::new("t"),
            refresh_token: None,
            token_type: Some("Bearer".into()),
            expires_in,
            expiration,
            scope: None,
        }
    }

    #[test]
    fn refresh_at_80_percent_and_expiry_10s_early() {
        let t0 = Instant::now();
        let c = CachedToken::from_response(&response(Some(3600), Some(10_003_600)), t0, 10_000_000)
            .unwrap();
        assert!(!c.needs_refresh(t0 + Duration::from_secs(2879)));
        assert!(c.needs_refresh(t0 + Duration::from_secs(2880)));
        assert!(!c.is_expired(t0 + Duration::from_secs(3589)));
        assert!(c.is_expired(t0 + Duration::from_secs(3590)));
    }

    #[test]
    fn lifetime_from_expiration_when_expires_in_missing() {
        let t0 = Instant::now();
        let c = CachedToken::from_response(&response(None, Some(1100)), t0, 1000).unwrap();
        assert!(c.needs_refresh(t0 + Duration::from_secs(80)));
        assert!(c.is_expired(t0 + Duration::from_secs(90)));
        assert!(CachedToken::from_response(&response(None, None), t0, 1000).is_none());
        assert!(CachedToken::from_response(&response(Some(0), Some(900)), t0, 1000).is_none());
    }

    #[test]
    fn short_lived_tokens_are_expired_on_arrival() {
        let t0 = Instant::now();
        let c = CachedToken::from_response(&response(Some(5), None), t0, 0).unwrap();
        assert!(c.is_expired(t0));
    }

    #[test]
    fn postponed_refresh_never_passes_expiry() {
        let t0 = Instant::now();
        let mut c = CachedToken::from_response(&response(Some(100), None), t0, 0).unwrap();
        let now = t0 + Duration::from_secs(85);
        c.postpone_refresh(now);
        assert!(!c.needs_refresh(now));
        assert!(c.needs_refresh(t0 + Duration::from_secs(90)));
    }
}
