//! One request to IBM Cloud: the single HTTP exchange, and the retry loop around it (admission to
//! the rate budget, 429 pauses, transient retries, scrubbing of every secret the request carried
//! from its error), with the counters of what was sent. Knows nothing of tokens: the caller hands
//! in the bearer token, and `token` handles a 401 by exchanging the API key again.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, Url};
use serde::de::DeserializeOwned;
use tracing::{debug, info};

use super::budget::Budget;
use super::error::{ErrorKind, IbmError};
use super::retry;
use crate::histogram::Histogram;
use crate::lock::lock;
use crate::redact::SecretString;

/// Upper bounds (seconds) of the request latency buckets: IBM Cloud answers in tens to hundreds
/// of milliseconds; the top buckets catch timeouts.
const LATENCY_BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

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

/// The largest response body read: a page of 100 resource keys is about 200 kB.
pub(super) const MAX_BODY_BYTES: usize = 8 << 20;

/// The HTTP client, the rate budget and the counters every request shares.
pub(super) struct Transport {
    http: reqwest::Client,
    pub(super) config: ClientConfig,
    budget: Budget,
    counts: Mutex<BTreeMap<(String, String), u64>>,
    latencies: Mutex<BTreeMap<String, Histogram>>,
    token_exchanges: AtomicU64,
    /// Test hook: milliseconds added to the monotonic clock used by the token cache.
    clock_offset_ms: AtomicU64,
}

/// The credentials a Resource Controller request is sent with.
#[derive(Clone, Copy)]
pub(super) struct Bearer<'a> {
    pub(super) api_key: &'a SecretString,
    pub(super) token: &'a SecretString,
}

/// Whether a failed request may be sent again.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum RetryMode {
    /// Safe to repeat (GET, DELETE, token exchange): retry any transient failure.
    Idempotent,
    /// Not safe (POST creating a key): retry only when the request cannot have reached the server.
    UnsentOnly,
}

pub(super) enum Body {
    Empty,
    Json(Vec<u8>),
    /// Form body of the token exchange: contains the API key.
    Form(SecretString),
}

pub(super) struct Request {
    pub(super) operation: &'static str,
    /// Endpoint template for counters and logs, e.g. "GET /v2/resource_keys/{id}".
    pub(super) endpoint: &'static str,
    pub(super) method: Method,
    pub(super) url: Url,
    pub(super) body: Body,
    pub(super) retry: RetryMode,
    /// IAM responses are parsed as IAM errors (400/401 = API key rejected).
    pub(super) iam: bool,
}

pub(super) struct Reply {
    pub(super) status: u16,
    pub(super) headers: HeaderMap,
    pub(super) body: Vec<u8>,
}

impl Reply {
    pub(super) fn transaction_id(&self) -> Option<&str> {
        self.headers
            .get("transaction-id")
            .and_then(|v| v.to_str().ok())
    }
}

impl Transport {
    pub(super) fn new(config: ClientConfig) -> Result<Self, IbmError> {
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
            http,
            budget: Budget::new(config.max_rps),
            config,
            counts: Mutex::new(BTreeMap::new()),
            latencies: Mutex::new(BTreeMap::new()),
            token_exchanges: AtomicU64::new(0),
            clock_offset_ms: AtomicU64::new(0),
        })
    }

    /// Sends `request` with retries, authenticated with `bearer` when given. A 401 is returned
    /// as it is: the caller decides whether a fresh token is worth one more try.
    pub(super) async fn execute(
        &self,
        request: &Request,
        bearer: Option<Bearer<'_>>,
    ) -> Result<Reply, IbmError> {
        let config = &self.config;
        let mut attempt = 0u32;
        let api_key = bearer.map(|b| b.api_key);
        let token = bearer.map(|b| b.token);
        // Whose rate limit this request counts against: the API key of the call, or the one in
        // the form of a token exchange.
        let caller = match (&request.body, api_key) {
            (Body::Form(key), _) | (_, Some(key)) => Some(key.digest_hex()),
            _ => None,
        };
        loop {
            self.admit(request, caller.as_deref(), attempt).await?;
            let (mut error, hint, retryable) = match self.send_once(request, token).await {
                Ok(reply) if (200..300).contains(&reply.status) => return Ok(reply),
                Ok(reply) => {
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
            secrets.extend(token.map(SecretString::expose));
            secrets.extend(form_key.as_ref().map(SecretString::expose));
            if error.kind == ErrorKind::RateLimited
                && let Some(caller) = &caller
            {
                // However long IBM asks for: every call with this API key waits until then.
                let wait = hint.unwrap_or_else(|| {
                    retry::backoff(attempt, config.initial_backoff, config.max_backoff)
                });
                let until = SystemTime::now()
                    .checked_add(wait.min(retry::MAX_SERVER_WAIT))
                    .unwrap_or_else(SystemTime::now);
                self.budget.pause(caller, until);
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

    /// One HTTP exchange. On failure, also says whether the request may have reached the server.
    async fn send_once(
        &self,
        request: &Request,
        token: Option<&SecretString>,
    ) -> Result<Reply, (IbmError, bool)> {
        let mut builder = self
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
            self.token_exchanges.fetch_add(1, Ordering::Relaxed);
        }
        let started = Instant::now();
        let result = async {
            let response = builder
                .send()
                .await
                .map_err(|e| (self.transport_error(request, &e), !e.is_connect()))?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = self.read_body(request, response).await?;
            Ok(Reply {
                status,
                headers,
                body,
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
        *lock(&self.counts)
            .entry((request.endpoint.to_owned(), outcome))
            .or_default() += 1;
        lock(&self.latencies)
            .entry(request.endpoint.to_owned())
            .or_insert_with(|| Histogram::new(&LATENCY_BUCKETS))
            .observe(started.elapsed());
        result
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
            self.budget.slot().await;
            let Some(caller) = caller else {
                return Ok(());
            };
            let now = SystemTime::now();
            let Some(until) = self.budget.paused_until(caller, now) else {
                return Ok(());
            };
            let left = until.duration_since(now).unwrap_or(Duration::ZERO);
            if left > self.config.max_backoff || attempt > self.config.max_retries {
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
            self.budget.wait_out(left).await;
        }
    }

    /// Requests made so far by (endpoint template, status code or "error").
    pub(super) fn request_counts(&self) -> Vec<((String, String), u64)> {
        lock(&self.counts)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// Latency of the requests made so far, by endpoint template.
    pub(super) fn request_latencies(&self) -> Vec<(String, Histogram)> {
        lock(&self.latencies)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// IAM token requests sent so far.
    pub(super) fn token_exchanges(&self) -> u64 {
        self.token_exchanges.load(Ordering::Relaxed)
    }

    pub(super) fn budget_stats(&self) -> super::BudgetStats {
        self.budget.stats()
    }

    /// The monotonic clock of the token cache (moved forward by the test hook).
    pub(super) fn now(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.clock_offset_ms.load(Ordering::Relaxed))
    }

    #[cfg(feature = "test-util")]
    pub(super) fn advance_clock(&self, by: Duration) {
        let millis = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.clock_offset_ms.fetch_add(millis, Ordering::Relaxed);
    }

    /// The response body, refused past [`MAX_BODY_BYTES`] (a broken proxy must not exhaust the
    /// pod's memory).
    async fn read_body(
        &self,
        request: &Request,
        mut response: reqwest::Response,
    ) -> Result<Vec<u8>, (IbmError, bool)> {
        let too_large = || {
            let message = format!("response body larger than {MAX_BODY_BYTES} bytes");
            let error = IbmError::new(request.operation, ErrorKind::InvalidResponse, message);
            (error, true)
        };
        if response
            .content_length()
            .is_some_and(|n| n > MAX_BODY_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| (self.transport_error(request, &e), true))?
        {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
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
                    self.config.request_timeout
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
    pub(super) fn get(operation: &'static str, endpoint: &'static str, url: Url) -> Self {
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
pub(super) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
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
pub(super) fn parse_json<T: DeserializeOwned>(
    operation: &'static str,
    reply: &Reply,
) -> Result<T, IbmError> {
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

/// The API key in the form body of a token exchange (decoded), to scrub from errors.
fn form_api_key(body: &Body) -> Option<SecretString> {
    let Body::Form(form) = body else { return None };
    let url = Url::parse(&format!("http://form.invalid/?{}", form.expose())).ok()?;
    url.query_pairs()
        .find(|(name, _)| name == "apikey")
        .map(|(_, value)| SecretString::new(value.into_owned()))
}
