//! The IBM Cloud client: IAM token exchange + Resource Controller v2 calls, with retries, timeouts,
//! pagination and per-endpoint request counters.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, Url};
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

use super::budget::{Budget, BudgetStats};
use super::endpoints::Endpoints;
use super::error::{ErrorKind, IbmError};
use super::latency::LatencyHistogram;
use super::model::{
    CreateKeyRequest, InstanceQuery, KeyDeletion, ResourceInstance, ResourceKey, ResourceList,
    TokenResponse,
};
use super::retry;
use super::token::{CachedToken, TokenCache};
use super::{
    OP_CREATE_KEY, OP_DELETE_KEY, OP_FIND_KEYS, OP_GET_INSTANCE, OP_GET_KEY, OP_LIST_INSTANCES,
    OP_LIST_KEYS, OP_TOKEN,
};
use crate::redact::SecretString;

/// The IAM grant for API keys (`POST /identity/token`, as IBM's SDK cores send it).
const GRANT_TYPE_APIKEY: &str = "urn:ibm:params:oauth:grant-type:apikey";
/// Page size requested from the Resource Controller (the documented maximum).
const PAGE_LIMIT: &str = "100";
/// Upper bound on pages followed in one listing: protects against a server that never ends.
const MAX_PAGES: usize = 10_000;

/// Timeouts and retry policy.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Whole-request timeout (connect + send + response body).
    pub request_timeout: Duration,
    /// Retries after the first attempt for transient failures.
    pub max_retries: u32,
    /// Cap on any single wait, including a server's `Retry-After`.
    pub max_backoff: Duration,
    /// First exponential back-off step (doubled on every retry, with jitter).
    pub initial_backoff: Duration,
    /// Process-wide budget of IBM Cloud requests per second.
    pub max_rps: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            max_retries: 4,
            max_backoff: Duration::from_secs(30),
            initial_backoff: Duration::from_millis(500),
            max_rps: 10,
        }
    }
}

/// Client for IAM and the Resource Controller. Cheap to clone; all clones share the HTTP
/// connection pool, the token cache and the counters.
#[derive(Clone)]
pub struct IbmCloud {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    endpoints: Endpoints,
    config: ClientConfig,
    tokens: TokenCache,
    budget: Budget,
    counts: Mutex<BTreeMap<(String, String), u64>>,
    latencies: Mutex<BTreeMap<String, LatencyHistogram>>,
    token_exchanges: AtomicU64,
    /// Test hook: milliseconds added to the monotonic clock used by the token cache.
    clock_offset_ms: AtomicU64,
}

impl fmt::Debug for IbmCloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IbmCloud")
            .field("endpoints", &self.inner.endpoints)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Whether a failed request may be sent again.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RetryMode {
    /// Safe to repeat (GET, DELETE, token exchange): retry any transient failure.
    Idempotent,
    /// Not safe (POST creating a key): retry only when the request cannot have reached the server.
    UnsentOnly,
}

enum Body {
    Empty,
    Json(Vec<u8>),
    /// Form body of the token exchange: contains the API key.
    Form(SecretString),
}

struct Request {
    operation: &'static str,
    /// Endpoint template for counters and logs, e.g. "GET /v2/resource_keys/{id}".
    endpoint: &'static str,
    method: Method,
    url: Url,
    body: Body,
    retry: RetryMode,
    /// IAM responses are parsed as IAM errors (400/401 = API key rejected).
    iam: bool,
}

struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn transaction_id(&self) -> Option<&str> {
        self.headers
            .get("transaction-id")
            .and_then(|v| v.to_str().ok())
    }
}

impl IbmCloud {
    pub fn new(endpoints: Endpoints, config: ClientConfig) -> Result<Self, IbmError> {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout)
            .user_agent(concat!(
                "ingestion-key-operator/",
                env!("CARGO_PKG_VERSION")
            ))
            // Never follow redirects: a redirect could carry the bearer token to another host.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| {
                IbmError::new(
                    "build HTTP client",
                    ErrorKind::InvalidEndpoint,
                    error_chain(&e),
                )
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                endpoints,
                tokens: TokenCache::default(),
                budget: Budget::new(config.max_rps),
                config,
                counts: Mutex::new(BTreeMap::new()),
                latencies: Mutex::new(BTreeMap::new()),
                token_exchanges: AtomicU64::new(0),
                clock_offset_ms: AtomicU64::new(0),
            }),
        })
    }

    pub fn endpoints(&self) -> &Endpoints {
        &self.inner.endpoints
    }

    /// Instances named exactly `query.name`, narrowed by resource group, region and service name.
    /// Uses the server-side `name` (and `resource_group_id`) filter and follows `next_url` through
    /// every page. Returns all matches, possibly none or several: the caller decides.
    pub async fn find_instances_by_name(
        &self,
        api_key: &SecretString,
        query: &InstanceQuery,
    ) -> Result<Vec<ResourceInstance>, IbmError> {
        let mut url = self.rc_url(&["v2", "resource_instances"]);
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("name", &query.name);
            if let Some(rg) = query.resource_group_id.as_deref().filter(|s| !s.is_empty()) {
                q.append_pair("resource_group_id", rg);
            }
            q.append_pair("limit", PAGE_LIMIT);
        }
        let all: Vec<ResourceInstance> = self
            .list_all(
                api_key,
                OP_LIST_INSTANCES,
                "GET /v2/resource_instances",
                url,
            )
            .await?;
        let total = all.len();
        let matches: Vec<ResourceInstance> = all.into_iter().filter(|i| query.matches(i)).collect();
        debug!(
            operation = OP_LIST_INSTANCES,
            listed = total,
            matched = matches.len(),
            "resolved instances by name"
        );
        Ok(matches)
    }

    /// `GET /v2/resource_instances/{id}` with a GUID or CRN (encoded as one path segment).
    pub async fn get_instance(
        &self,
        api_key: &SecretString,
        guid_or_crn: &str,
    ) -> Result<ResourceInstance, IbmError> {
        let url = self.rc_url(&["v2", "resource_instances", guid_or_crn]);
        let request = Request::get(OP_GET_INSTANCE, "GET /v2/resource_instances/{id}", url);
        let reply = self.execute(&request, Some(api_key)).await?;
        parse_json(OP_GET_INSTANCE, &reply)
    }

    /// Every key of one instance, any state (callers filter on [`ResourceKey::is_active`]).
    pub async fn list_instance_keys(
        &self,
        api_key: &SecretString,
        instance_guid: &str,
    ) -> Result<Vec<ResourceKey>, IbmError> {
        let mut url = self.rc_url(&["v2", "resource_instances", instance_guid, "resource_keys"]);
        url.query_pairs_mut().append_pair("limit", PAGE_LIMIT);
        self.list_all(
            api_key,
            OP_LIST_KEYS,
            "GET /v2/resource_instances/{id}/resource_keys",
            url,
        )
        .await
    }

    /// Active and other keys named exactly `name` on one instance: `GET /v2/resource_keys?name=`
    /// (the name filter is account-wide, so keys of other instances are dropped here). One call for
    /// any number of keys on the instance, where listing the instance's keys pages through all.
    pub async fn find_keys_by_name(
        &self,
        api_key: &SecretString,
        instance_guid: &str,
        name: &str,
    ) -> Result<Vec<ResourceKey>, IbmError> {
        let mut url = self.rc_url(&["v2", "resource_keys"]);
        url.query_pairs_mut()
            .append_pair("name", name)
            .append_pair("limit", PAGE_LIMIT);
        let keys: Vec<ResourceKey> = self
            .list_all(api_key, OP_FIND_KEYS, "GET /v2/resource_keys", url)
            .await?;
        Ok(keys
            .into_iter()
            .filter(|k| k.name == name && k.instance_guid() == Some(instance_guid))
            .collect())
    }

    /// `POST /v2/resource_keys`. Not idempotent: retried only when the request cannot have reached
    /// the server (connection not established), never after a timeout or a 5xx — a blind retry
    /// could create a second key. Callers look the key up by name before creating.
    pub async fn create_key(
        &self,
        api_key: &SecretString,
        request: &CreateKeyRequest,
    ) -> Result<ResourceKey, IbmError> {
        let body = serde_json::to_vec(request)
            .map_err(|e| IbmError::new(OP_CREATE_KEY, ErrorKind::InvalidResponse, e.to_string()))?;
        let request = Request {
            operation: OP_CREATE_KEY,
            endpoint: "POST /v2/resource_keys",
            method: Method::POST,
            url: self.rc_url(&["v2", "resource_keys"]),
            body: Body::Json(body),
            retry: RetryMode::UnsentOnly,
            iam: false,
        };
        let reply = self.execute(&request, Some(api_key)).await?;
        let key: ResourceKey = parse_json(OP_CREATE_KEY, &reply)?;
        info!(operation = OP_CREATE_KEY, key_guid = %key.guid, key_name = %key.name, transaction_id = reply.transaction_id(), "created resource key");
        Ok(key)
    }

    /// `GET /v2/resource_keys/{id}`; removed keys come back with state `removed`.
    pub async fn get_key(
        &self,
        api_key: &SecretString,
        guid_or_crn: &str,
    ) -> Result<ResourceKey, IbmError> {
        let url = self.rc_url(&["v2", "resource_keys", guid_or_crn]);
        let reply = self
            .execute(
                &Request::get(OP_GET_KEY, "GET /v2/resource_keys/{id}", url),
                Some(api_key),
            )
            .await?;
        parse_json(OP_GET_KEY, &reply)
    }

    /// `DELETE /v2/resource_keys/{id}`: 204 is `Deleted`, 404 and 410 are `AlreadyGone`.
    pub async fn delete_key(
        &self,
        api_key: &SecretString,
        guid_or_crn: &str,
    ) -> Result<KeyDeletion, IbmError> {
        let request = Request {
            operation: OP_DELETE_KEY,
            endpoint: "DELETE /v2/resource_keys/{id}",
            method: Method::DELETE,
            url: self.rc_url(&["v2", "resource_keys", guid_or_crn]),
            body: Body::Empty,
            retry: RetryMode::Idempotent,
            iam: false,
        };
        match self.execute(&request, Some(api_key)).await {
            Ok(_) => {
                info!(
                    operation = OP_DELETE_KEY,
                    key = guid_or_crn,
                    "deleted resource key"
                );
                Ok(KeyDeletion::Deleted)
            }
            Err(e) if matches!(e.kind, ErrorKind::NotFound | ErrorKind::Gone) => {
                debug!(
                    operation = OP_DELETE_KEY,
                    key = guid_or_crn,
                    status = e.status,
                    "resource key already gone"
                );
                Ok(KeyDeletion::AlreadyGone)
            }
            Err(e) => Err(e),
        }
    }

    /// Requests made so far by (endpoint template, status code or "error").
    pub fn request_counts(&self) -> Vec<((String, String), u64)> {
        let counts = self.inner.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Latency of the requests made so far, by endpoint template.
    pub fn request_latencies(&self) -> Vec<(String, LatencyHistogram)> {
        let latencies = self
            .inner
            .latencies
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        latencies
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// IAM token requests sent so far (each HTTP request to `/identity/token`).
    pub fn token_exchanges(&self) -> u64 {
        self.inner.token_exchanges.load(Ordering::Relaxed)
    }

    /// Test hook: moves the token cache's clock forward, to exercise refresh and expiry without
    /// waiting for real tokens to age. Only with the `test-util` feature.
    #[cfg(feature = "test-util")]
    #[doc(hidden)]
    pub fn advance_clock(&self, by: Duration) {
        self.inner
            .clock_offset_ms
            .fetch_add(by.as_millis() as u64, Ordering::Relaxed);
    }

    fn now(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.inner.clock_offset_ms.load(Ordering::Relaxed))
    }

    fn rc_url(&self, segments: &[&str]) -> Url {
        Endpoints::join(self.inner.endpoints.resource_controller(), segments)
    }

    /// A usable bearer token for this API key: cached, refreshed after 80 % of its lifetime, and
    /// exchanged at most once at a time per key (callers queue on the key's slot).
    async fn token(&self, api_key: &SecretString) -> Result<SecretString, IbmError> {
        let key_hash = api_key.digest_hex();
        let slot = self.inner.tokens.slot(&key_hash);
        let mut cached = slot.lock().await;
        let now = self.now();
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
            url: Endpoints::join(self.inner.endpoints.iam(), &["identity", "token"]),
            body: Body::Form(SecretString::new(form.query().unwrap_or_default())),
            retry: RetryMode::Idempotent,
            iam: true,
        };
        let reply = self
            .execute(&request, None)
            .await
            .map_err(|e| e.scrub(&[api_key.expose()]))?;
        let received = self.now();
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

    /// Follows `next_url` from `first` until the last page.
    async fn list_all<T: DeserializeOwned>(
        &self,
        api_key: &SecretString,
        operation: &'static str,
        endpoint: &'static str,
        first: Url,
    ) -> Result<Vec<T>, IbmError> {
        let mut items = Vec::new();
        let mut seen = HashSet::new();
        let mut url = first.clone();
        for _ in 0..MAX_PAGES {
            let reply = self
                .execute(
                    &Request::get(operation, endpoint, url.clone()),
                    Some(api_key),
                )
                .await?;
            let page: ResourceList<T> = parse_json(operation, &reply)?;
            items.extend(page.resources);
            let Some(next) = page.next_url.filter(|n| !n.trim().is_empty()) else {
                return Ok(items);
            };
            url = next_page_url(&self.inner.endpoints, &first, &next)
                .map_err(|m| IbmError::new(operation, ErrorKind::InvalidResponse, m))?;
            if !seen.insert(url.to_string()) {
                return Err(IbmError::new(
                    operation,
                    ErrorKind::InvalidResponse,
                    "pagination returned the same next_url twice",
                ));
            }
        }
        Err(IbmError::new(
            operation,
            ErrorKind::InvalidResponse,
            format!("more than {MAX_PAGES} pages"),
        ))
    }

    /// Sends `request` with retries. With an API key, authenticates with its (cached) token; a 401
    /// drops that token and retries once with a freshly exchanged one.
    async fn execute(
        &self,
        request: &Request,
        api_key: Option<&SecretString>,
    ) -> Result<Reply, IbmError> {
        let config = &self.inner.config;
        let mut attempt = 0u32;
        let mut reauthenticated = false;
        // Whose rate limit this request counts against: the API key of the call, or the one in
        // the form of a token exchange.
        let caller = match (&request.body, api_key) {
            (Body::Form(key), _) | (_, Some(key)) => Some(key.digest_hex()),
            _ => None,
        };
        loop {
            let token = match api_key {
                // Boxed: `token` may exchange, which calls `execute` again.
                Some(key) => Some(Box::pin(self.token(key)).await?),
                None => None,
            };
            self.admit(request, caller.as_deref(), attempt).await?;
            let (mut error, hint, retryable) = match self.send_once(request, token.as_ref()).await {
                Ok(reply) if (200..300).contains(&reply.status) => return Ok(reply),
                Ok(reply) => {
                    if let (401, Some(key), Some(token), false) =
                        (reply.status, api_key, token.as_ref(), reauthenticated)
                    {
                        debug!(
                            operation = request.operation,
                            transaction_id = reply.transaction_id(),
                            "token rejected with 401; exchanging the API key again"
                        );
                        self.inner.tokens.invalidate(&key.digest_hex(), token).await;
                        reauthenticated = true;
                        continue;
                    }
                    let hint = retry::server_hint(reply.status, &reply.headers, SystemTime::now());
                    let error = if request.iam {
                        IbmError::from_iam_response(reply.status, &reply.headers, &reply.body)
                    } else {
                        IbmError::from_response_parts(
                            request.operation,
                            reply.status,
                            &reply.headers,
                            &reply.body,
                        )
                    };
                    let retryable = error.is_transient() && request.retry == RetryMode::Idempotent;
                    (error, hint, retryable)
                }
                Err((error, reached_server)) => {
                    let retryable = error.is_transient()
                        && (request.retry == RetryMode::Idempotent || !reached_server);
                    (error, None, retryable)
                }
            };
            // Every secret this request carries: its API key and token, or, for a token
            // exchange, the API key in the form body (IAM's error bodies may echo it).
            let form_key = form_api_key(&request.body);
            let mut secrets: Vec<&str> = api_key.map(SecretString::expose).into_iter().collect();
            secrets.extend(token.as_ref().map(SecretString::expose));
            secrets.extend(form_key.as_ref().map(SecretString::expose));
            if error.kind == ErrorKind::RateLimited
                && let Some(caller) = &caller
            {
                // However long IBM asks for: every call with this API key waits until then.
                let wait = hint.unwrap_or_else(|| {
                    retry::backoff(attempt, config.initial_backoff, config.max_backoff)
                });
                let until = SystemTime::now() + wait;
                self.inner.budget.pause(caller, until);
                error.retry_at = Some(until);
                if wait > config.max_backoff {
                    return Err(error.scrub(&secrets));
                }
            }
            let error = error.scrub(&secrets);
            if !retryable || attempt >= config.max_retries {
                debug!(operation = request.operation, attempt, transient = error.is_transient(), error = %error, "IBM Cloud request failed");
                return Err(error);
            }
            let delay = match (error.retry_at, hint) {
                // The pause is waited out at the top of the loop.
                (Some(_), _) => Duration::ZERO,
                (None, Some(server_delay)) => server_delay.min(config.max_backoff),
                (None, None) => retry::backoff(attempt, config.initial_backoff, config.max_backoff),
            };
            info!(
                operation = request.operation,
                attempt = attempt + 1,
                max_retries = config.max_retries,
                delay_ms = delay.as_millis() as u64,
                error = %error,
                "retrying transient IBM Cloud failure"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// Waits for the request's slot in the process-wide budget, then checks that its API key is
    /// not paused by a 429: a short pause is waited out (and a new slot taken, so that the calls
    /// held by the pause do not all go at once when it ends); a long one, or one with no retry
    /// left, fails at once with the time IBM named.
    async fn admit(
        &self,
        request: &Request,
        caller: Option<&str>,
        attempt: u32,
    ) -> Result<(), IbmError> {
        loop {
            self.inner.budget.slot().await;
            let Some(caller) = caller else {
                return Ok(());
            };
            let now = SystemTime::now();
            let Some(until) = self.inner.budget.paused_until(caller, now) else {
                return Ok(());
            };
            let left = until.duration_since(now).unwrap_or(Duration::ZERO);
            if left > self.inner.config.max_backoff || attempt > self.inner.config.max_retries {
                let mut error = IbmError::new(
                    request.operation,
                    ErrorKind::RateLimited,
                    "not sent: IBM Cloud rate-limited this API key",
                );
                error.retry_at = Some(until);
                return Err(error);
            }
            debug!(
                operation = request.operation,
                wait_ms = left.as_millis() as u64,
                "waiting out an IBM Cloud rate-limit pause"
            );
            self.inner.budget.wait_out(left).await;
        }
    }

    /// What the process-wide rate budget did so far.
    pub fn budget_stats(&self) -> BudgetStats {
        self.inner.budget.stats()
    }

    /// One HTTP exchange. On failure, also says whether the request may have reached the server.
    async fn send_once(
        &self,
        request: &Request,
        token: Option<&SecretString>,
    ) -> Result<Reply, (IbmError, bool)> {
        let mut builder = self
            .inner
            .http
            .request(request.method.clone(), request.url.clone())
            .header(ACCEPT, "application/json");
        if let Some(token) = token {
            // Sensitive: never shown by the Debug output of the request or its headers.
            let mut value =
                HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
                    let message = "the IAM token is not a valid HTTP header value";
                    let error =
                        IbmError::new(request.operation, ErrorKind::InvalidResponse, message);
                    (error, false)
                })?;
            value.set_sensitive(true);
            builder = builder.header(AUTHORIZATION, value);
        }
        builder = match &request.body {
            Body::Empty => builder,
            Body::Json(bytes) => builder
                .header(CONTENT_TYPE, "application/json")
                .body(bytes.clone()),
            Body::Form(form) => builder
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(form.expose().to_owned()),
        };
        if request.iam {
            self.inner.token_exchanges.fetch_add(1, Ordering::Relaxed);
        }
        let started = Instant::now();
        let result = async {
            let response = builder
                .send()
                .await
                .map_err(|e| (self.transport_error(request, &e), !e.is_connect()))?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response
                .bytes()
                .await
                .map_err(|e| (self.transport_error(request, &e), true))?;
            Ok(Reply {
                status,
                headers,
                body: body.to_vec(),
            })
        }
        .await;
        let outcome = match &result {
            Ok(reply) => {
                debug!(
                    operation = request.operation,
                    endpoint = request.endpoint,
                    status = reply.status,
                    transaction_id = reply.transaction_id(),
                    "IBM Cloud response"
                );
                reply.status.to_string()
            }
            Err((error, _)) => {
                debug!(operation = request.operation, endpoint = request.endpoint, error = %error, "IBM Cloud request error");
                "error".to_owned()
            }
        };
        let mut counts = self.inner.counts.lock().unwrap_or_else(|p| p.into_inner());
        *counts
            .entry((request.endpoint.to_owned(), outcome))
            .or_default() += 1;
        drop(counts);
        let mut latencies = self
            .inner
            .latencies
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        latencies
            .entry(request.endpoint.to_owned())
            .or_default()
            .observe(started.elapsed());
        drop(latencies);
        result
    }

    fn transport_error(&self, request: &Request, e: &reqwest::Error) -> IbmError {
        let (kind, message) = if e.is_connect() {
            (
                ErrorKind::Connect,
                format!(
                    "could not connect to {}: {}",
                    host_of(&request.url),
                    error_chain(e)
                ),
            )
        } else if e.is_timeout() {
            (
                ErrorKind::Timeout,
                format!(
                    "no complete response within {:?}",
                    self.inner.config.request_timeout
                ),
            )
        } else {
            (
                ErrorKind::Connect,
                format!(
                    "request to {} failed: {}",
                    host_of(&request.url),
                    error_chain(e)
                ),
            )
        };
        IbmError::new(request.operation, kind, message)
    }
}

impl Request {
    fn get(operation: &'static str, endpoint: &'static str, url: Url) -> Self {
        Self {
            operation,
            endpoint,
            method: Method::GET,
            url,
            body: Body::Empty,
            retry: RetryMode::Idempotent,
            iam: false,
        }
    }
}

fn host_of(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        _ => "?".to_owned(),
    }
}

/// The error and its sources on one line, without the URL (reqwest includes it in `Display`).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = e.source();
    while let Some(source) = current {
        parts.push(source.to_string());
        current = source.source();
    }
    if parts.is_empty() {
        return "request failed".to_owned();
    }
    parts.join(": ")
}

/// Decodes a JSON success body. Serde's messages can quote values (which may be credentials), so
/// only the error category and position are reported.
fn parse_json<T: DeserializeOwned>(operation: &'static str, reply: &Reply) -> Result<T, IbmError> {
    serde_json::from_slice(&reply.body).map_err(|e| IbmError {
        operation,
        kind: ErrorKind::InvalidResponse,
        status: Some(reply.status),
        code: None,
        message: format!(
            "could not decode the response body ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ),
        transaction_id: reply.transaction_id().map(str::to_owned),
        retry_at: None,
    })
}

/// Where to get the next page. A relative `next_url` (what the Resource Controller sends) is
/// resolved against the Resource Controller base URL; an absolute one is followed only when it
/// points at the same origin. Otherwise only its `start` token is used, with the first page's URL,
/// as the IBM Go SDK does: the bearer token is never sent to another host.
pub fn next_page_url(endpoints: &Endpoints, first: &Url, next: &str) -> Result<Url, String> {
    let base = endpoints.resource_controller();
    let next = next.trim();
    if next.starts_with('/') {
        let joined = format!("{}{}", base.as_str().trim_end_matches('/'), next);
        return Url::parse(&joined).map_err(|e| format!("invalid next_url: {e}"));
    }
    let absolute = match Url::parse(next) {
        Ok(url) => url,
        Err(_) => {
            return base
                .join(next)
                .map_err(|e| format!("invalid next_url: {e}"));
        }
    };
    if absolute.origin() == base.origin() {
        return Ok(absolute);
    }
    let start = absolute
        .query_pairs()
        .find(|(k, _)| k == "start")
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| "next_url points to another host and has no start token".to_owned())?;
    let mut url = first.clone();
    let kept: Vec<(String, String)> = first
        .query_pairs()
        .filter(|(k, _)| k != "start")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    url.query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair("start", &start);
    Ok(url)
}

/// The API key in the form body of a token exchange (decoded), to scrub from errors.
fn form_api_key(body: &Body) -> Option<SecretString> {
    let Body::Form(form) = body else { return None };
    let url = Url::parse(&format!("http://form.invalid/?{}", form.expose())).ok()?;
    url.query_pairs()
        .find(|(name, _)| name == "apikey")
        .map(|(_, value)| SecretString::new(value.into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_url_resolution() {
        let endpoints = Endpoints::new("http://127.0.0.1:1", "http://127.0.0.1:2/rc").unwrap();
        let first =
            Url::parse("http://127.0.0.1:2/rc/v2/resource_instances?name=a&limit=100").unwrap();
        let rel = next_page_url(
            &endpoints,
            &first,
            "/v2/resource_instances?start=abc&limit=100",
        )
        .unwrap();
        assert_eq!(
            rel.as_str(),
            "http://127.0.0.1:2/rc/v2/resource_instances?start=abc&limit=100"
        );
        let same = next_page_url(
            &endpoints,
            &first,
            "http://127.0.0.1:2/rc/v2/resource_instances?start=x",
        )
        .unwrap();
        assert_eq!(
            same.as_str(),
            "http://127.0.0.1:2/rc/v2/resource_instances?start=x"
        );
        let other =
            next_page_url(&endpoints, &first, "https://myhost.com/somePath?start=1").unwrap();
        assert_eq!(
            other.as_str(),
            "http://127.0.0.1:2/rc/v2/resource_instances?name=a&limit=100&start=1"
        );
        assert!(next_page_url(&endpoints, &first, "https://myhost.com/somePath").is_err());
    }
}
