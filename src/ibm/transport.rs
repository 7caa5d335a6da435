//! One request to IBM Cloud: the single HTTP exchange, and the retry loop around it (token,
//! admission to the rate budget, 401 re-authentication, 429 pauses, transient retries, scrubbing
//! of every secret the request carried from its error).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, Url};
use serde::de::DeserializeOwned;
use tracing::{debug, info};

use super::client::{IbmCloud, LATENCY_BUCKETS};
use super::error::{ErrorKind, IbmError};
use super::retry;
use crate::histogram::Histogram;
use crate::redact::SecretString;

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

impl IbmCloud {
    /// Sends `request` with retries. With an API key, authenticates with its (cached) token; a 401
    /// drops that token and retries once with a freshly exchanged one.
    pub(super) async fn execute(
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
            .or_insert_with(|| Histogram::new(&LATENCY_BUCKETS))
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
