//! Per-API-key IAM token cache with single-flight exchange: refreshed past 80% of the token's lifetime, as IBM's SDK cores do.
//!
//! Entries are keyed by the SHA-256 of the API key, never the key. Each entry has its own async
//! mutex: the first caller that finds no usable token performs the exchange while holding it, and
//! every concurrent caller with the same key waits and then reuses the result.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::{Method, Url};
use tracing::{debug, warn};

use super::{
    OP_TOKEN,
    endpoints::Endpoints,
    error::{ErrorKind, IbmError},
    model::TokenResponse,
    transport::{Bearer, Body, Reply, Request, RetryMode, Transport, parse_json},
};
use crate::lock::lock;
use crate::redact::SecretString;

/// Tokens are treated as expired this long before their expiration (as all IBM SDKs do: some
/// services reject tokens with only a few seconds left).
pub const EXPIRY_WINDOW: Duration = Duration::from_secs(10);
/// The longest lifetime a token is believed to have, whatever IAM says.
const MAX_LIFETIME: Duration = Duration::from_secs(86_400);
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
        let lifetime_secs = response.expires_in.filter(|s| *s > 0).or_else(|| {
            response
                .expiration
                .and_then(|e| e.checked_sub(now_unix))
                .filter(|s| *s > 0)
        })?;
        // IAM tokens live an hour; a longer claim is capped so that no time computed from it
        // overflows (and a token is never trusted for longer than a day).
        let lifetime = Duration::from_secs(u64::try_from(lifetime_secs).ok()?).min(MAX_LIFETIME);
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
        lock(&self.slots)
            .entry(key_hash.to_owned())
            .or_default()
            .clone()
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

/// The IAM grant for API keys (`POST /identity/token`, as IBM's SDK cores send it).
const GRANT_TYPE_APIKEY: &str = "urn:ibm:params:oauth:grant-type:apikey";
/// Sends Resource Controller requests with the IAM token of their API key: the transport below,
/// the token cache, and where IAM is.
pub(super) struct Authenticator {
    pub(super) transport: Transport,
    tokens: TokenCache,
    /// `POST {iam}/identity/token`.
    token_url: Url,
}

impl Authenticator {
    pub(super) fn new(transport: Transport, endpoints: &Endpoints) -> Self {
        Self {
            transport,
            tokens: TokenCache::default(),
            token_url: Endpoints::join(endpoints.iam(), &["identity", "token"]),
        }
    }

    /// Sends `request` with the (cached) token of `api_key`. A 401 drops that token and sends
    /// once more with a freshly exchanged one.
    pub(super) async fn send(
        &self,
        request: &Request,
        api_key: &SecretString,
    ) -> Result<Reply, IbmError> {
        let mut reauthenticated = false;
        loop {
            let token = self.token(api_key).await?;
            let bearer = Bearer {
                api_key,
                token: &token,
            };
            match self.transport.execute(request, Some(bearer)).await {
                Err(error) if error.kind == ErrorKind::Unauthorized && !reauthenticated => {
                    debug!(
                        operation = request.operation,
                        transaction_id = error.transaction_id.as_deref(),
                        "token rejected with 401; exchanging the API key again"
                    );
                    self.tokens.invalidate(&api_key.digest_hex(), &token).await;
                    reauthenticated = true;
                }
                result => return result,
            }
        }
    }

    /// A usable bearer token for this API key: cached, refreshed after 80 % of its lifetime, and
    /// exchanged at most once at a time per key (callers queue on the key's slot).
    async fn token(&self, api_key: &SecretString) -> Result<SecretString, IbmError> {
        let key_hash = api_key.digest_hex();
        let slot = self.tokens.slot(&key_hash);
        let mut cached = slot.lock().await;
        let now = self.transport.now();
        if let Some(token) = cached
            .as_ref()
            .filter(|c| !c.needs_refresh(now) && !c.is_expired(now))
        {
            return Ok(token.token.clone());
        }
        match self.exchange(api_key).await {
            Ok(fresh) => {
                let token = fresh.token.clone();
                *cached = Some(fresh);
                Ok(token)
            }
            Err(error) => match cached.as_mut().filter(|c| !c.is_expired(now)) {
                // Refresh failed but the old token is still valid: keep using it for a while.
                Some(still_valid) => {
                    warn!(operation = OP_TOKEN, error = %error, "IAM token refresh failed; using the still-valid cached token");
                    still_valid.postpone_refresh(now);
                    Ok(still_valid.token.clone())
                }
                None => Err(error),
            },
        }
    }

    async fn exchange(&self, api_key: &SecretString) -> Result<CachedToken, IbmError> {
        let form = Url::parse_with_params(
            "http://form.invalid/",
            [
                ("grant_type", GRANT_TYPE_APIKEY),
                ("apikey", api_key.expose()),
                ("response_type", "cloud_iam"),
            ],
        )
        .map_err(|e| IbmError::new(OP_TOKEN, ErrorKind::InvalidEndpoint, e.to_string()))?;
        let request = Request {
            operation: OP_TOKEN,
            endpoint: "POST /identity/token",
            method: Method::POST,
            url: self.token_url.clone(),
            body: Body::Form(SecretString::new(form.query().unwrap_or_default())),
            retry: RetryMode::Idempotent,
            iam: true,
        };
        let reply = self
            .transport
            .execute(&request, None)
            .await
            .map_err(|e| e.scrub(&[api_key.expose()]))?;
        let received = self.transport.now();
        let response: TokenResponse = parse_json(OP_TOKEN, &reply)?;
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let token = CachedToken::from_response(&response, received, now_unix).ok_or_else(|| {
            IbmError::new(
                OP_TOKEN,
                ErrorKind::InvalidResponse,
                "IAM token response has neither a positive expires_in nor a future expiration",
            )
        })?;
        debug!(
            operation = OP_TOKEN,
            expires_in = response.expires_in,
            transaction_id = reply.transaction_id(),
            "exchanged API key for IAM token"
        );
        Ok(token)
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

    #[test]
    fn lifetimes_that_would_overflow_time_are_capped() {
        let t0 = Instant::now();
        let c = CachedToken::from_response(&response(Some(i64::MAX), None), t0, 0).unwrap();
        assert!(c.is_expired(t0 + MAX_LIFETIME));
        let c = CachedToken::from_response(&response(None, Some(i64::MAX)), t0, 0).unwrap();
        assert!(!c.is_expired(t0));
        assert!(
            CachedToken::from_response(&response(None, Some(i64::MIN)), t0, i64::MAX).is_none()
        );
    }
}
