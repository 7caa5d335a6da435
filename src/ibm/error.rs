//! Errors of the IBM Cloud client: one type for IAM and Resource Controller failures, parsed from
//! every body shape IBM Cloud is known to return (IAM's `errorCode`/`errorMessage`, the Resource Controller's `error_code`/`message`, `errors[0]`) and from non-JSON bodies.

use std::fmt;

use reqwest::header::HeaderMap;
use serde_json::Value;

/// What went wrong, coarse enough for a caller to choose a reaction (condition reason, retry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The configured endpoint URL is unusable (not https, malformed, ...).
    InvalidEndpoint,
    /// IAM refused the API key (400/401 on the token exchange): it is invalid or unknown.
    ApiKeyRejected,
    /// The Resource Controller refused a freshly exchanged token (401 twice).
    Unauthorized,
    /// 403: valid identity, missing permission.
    Forbidden,
    /// 404.
    NotFound,
    /// 410: the resource existed and was removed.
    Gone,
    /// Any other 4xx.
    BadRequest,
    /// 429.
    RateLimited,
    /// 5xx.
    Server,
    /// The request did not complete within the configured timeout.
    Timeout,
    /// The connection could not be established or broke.
    Connect,
    /// The server answered something we cannot understand (unexpected status or body).
    InvalidResponse,
}

impl ErrorKind {
    /// Kind for an HTTP status of a Resource Controller (or generic) response.
    pub fn from_status(status: u16) -> Self {
        match status {
            401 => ErrorKind::Unauthorized,
            403 => ErrorKind::Forbidden,
            404 => ErrorKind::NotFound,
            410 => ErrorKind::Gone,
            429 => ErrorKind::RateLimited,
            400..=499 => ErrorKind::BadRequest,
            500..=599 => ErrorKind::Server,
            _ => ErrorKind::InvalidResponse,
        }
    }

    fn label(self) -> &'static str {
        match self {
            ErrorKind::InvalidEndpoint => "invalid endpoint",
            ErrorKind::ApiKeyRejected => "API key rejected",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not found",
            ErrorKind::Gone => "gone",
            ErrorKind::BadRequest => "bad request",
            ErrorKind::RateLimited => "rate limited",
            ErrorKind::Server => "server error",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connect => "connection error",
            ErrorKind::InvalidResponse => "invalid response",
        }
    }
}

/// A failed IBM Cloud operation. The message comes from the server or from the client itself and is
/// scrubbed of the API key and token used for the request; no secret is ever stored here.
#[derive(Debug, Clone)]
pub struct IbmError {
    /// What the client was doing, e.g. "exchange API key for IAM token", "create resource key".
    pub operation: &'static str,
    pub kind: ErrorKind,
    /// HTTP status, when the server answered.
    pub status: Option<u16>,
    /// IBM error code (`errorCode`, `error_code`, `errors[0].code`, `code`).
    pub code: Option<String>,
    pub message: String,
    /// `Transaction-Id` header or `transaction_id` body field: what IBM support asks for.
    pub transaction_id: Option<String>,
    /// After a 429: the time IBM Cloud asked this caller to wait until. Nothing is sent with the
    /// same API key before then.
    pub retry_at: Option<std::time::SystemTime>,
}

/// Longest server-provided message kept in an error: bodies can be whole HTML pages.
const MAX_MESSAGE_CHARS: usize = 300;

impl IbmError {
    /// An error not tied to an HTTP response.
    pub fn new(operation: &'static str, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            operation,
            kind,
            status: None,
            code: None,
            message: message.into(),
            transaction_id: None,
            retry_at: None,
        }
    }

    /// Whether retrying later may succeed: 429, 5xx except 501, timeouts, connection errors.
    pub fn is_transient(&self) -> bool {
        match self.kind {
            ErrorKind::RateLimited | ErrorKind::Timeout | ErrorKind::Connect => true,
            ErrorKind::Server => self.status != Some(501),
            _ => false,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Parses an error response of the Resource Controller (or any IBM API) into an error.
    ///
    /// Code lookup order: `errors[0].code`, `code`, `errorCode`, `error_code`; message lookup:
    /// `errors[0].message`, `error`, `message`, `errorMessage`, `error_description`, then the raw
    /// body when it is not JSON, then the HTTP reason phrase (the order of go-sdk-core, plus RC's
    /// `error_code`). The transaction id comes from the `Transaction-Id` header, else the body's
    /// `transaction_id`, `trace` or IAM's `context.requestId`.
    pub fn from_response_parts(
        operation: &'static str,
        status: u16,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Self {
        let json: Option<Value> = serde_json::from_slice(body).ok().filter(Value::is_object);
        let (code, message, body_txn) = match &json {
            Some(v) => (json_code(v), json_message(v), json_transaction(v)),
            None => (None, raw_message(body), None),
        };
        let header_txn = headers
            .get("transaction-id")
            .or_else(|| headers.get("x-request-id"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let message = message.unwrap_or_else(|| {
            reqwest::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("unexpected response")
                .to_owned()
        });
        Self {
            operation,
            kind: ErrorKind::from_status(status),
            status: Some(status),
            code: code.as_deref().map(truncate),
            message: truncate(&message),
            transaction_id: header_txn.or(body_txn).as_deref().map(truncate),
            retry_at: None,
        }
    }

    /// Like [`IbmError::from_response_parts`] for the IAM token endpoint: 400 and 401 there mean the
    /// API key itself is invalid or unknown ([`ErrorKind::ApiKeyRejected`]).
    pub fn from_iam_response(status: u16, headers: &HeaderMap, body: &[u8]) -> Self {
        let mut error = Self::from_response_parts(super::OP_TOKEN, status, headers, body);
        if matches!(status, 400 | 401) {
            error.kind = ErrorKind::ApiKeyRejected;
        }
        error
    }

    /// Replaces any occurrence of the given secrets in the message (defence in depth: a server
    /// could echo what it was sent).
    pub(crate) fn scrub(mut self, secrets: &[&str]) -> Self {
        let secrets: Vec<&str> = secrets.iter().copied().filter(|s| s.len() >= 4).collect();
        self.message = scrub_text(&self.message, &secrets);
        self.code = self.code.map(|code| scrub_text(&code, &secrets));
        self.transaction_id = self.transaction_id.map(|txn| scrub_text(&txn, &secrets));
        self
    }
}

impl fmt::Display for IbmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: ", self.operation)?;
        match self.status {
            Some(status) => write!(f, "HTTP {status} ({})", self.kind.label())?,
            None => f.write_str(self.kind.label())?,
        }
        if let Some(code) = &self.code {
            write!(f, " {code}")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(txn) = &self.transaction_id {
            write!(f, " (transaction id {txn})")?;
        }
        if let Some(at) = self.retry_at {
            write!(
                f,
                "; IBM Cloud asks to wait until {}",
                httpdate::fmt_http_date(at)
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for IbmError {}

fn string_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn first_error(v: &Value) -> Option<&Value> {
    v.get("errors")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
}

fn json_code(v: &Value) -> Option<String> {
    json_field(v, "code", &["code", "errorCode", "error_code"])
}

fn json_message(v: &Value) -> Option<String> {
    let top = ["error", "message", "errorMessage", "error_description"];
    json_field(v, "message", &top)
}

/// `field` of the first entry of `errors`, else the first of `top` at the top level: the shapes
/// of the Resource Controller, IAM and the platform's gateways.
fn json_field(v: &Value, field: &str, top: &[&str]) -> Option<String> {
    first_error(v)
        .and_then(|e| string_at(e, field))
        .or_else(|| top.iter().find_map(|key| string_at(v, key)))
        .map(str::to_owned)
}

fn json_transaction(v: &Value) -> Option<String> {
    string_at(v, "transaction_id")
        .or_else(|| string_at(v, "trace"))
        .or_else(|| v.get("context").and_then(|c| string_at(c, "requestId")))
        .map(str::to_owned)
}

/// A non-JSON body as a one-line message (HTML error pages, proxies, plain text).
fn raw_message(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    (!collapsed.is_empty()).then_some(collapsed)
}

/// `text` with every secret replaced, including the beginning of one that truncation cut off at
/// the end (the message was cut to [`MAX_MESSAGE_CHARS`] before it could be scrubbed).
fn scrub_text(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for secret in secrets {
        if out.contains(secret) {
            out = out.replace(secret, "<redacted>");
        }
    }
    let Some(kept) = out.strip_suffix('…') else {
        return out;
    };
    for secret in secrets {
        // The longest beginning of the secret (4 characters or more) that ends the message.
        let cut = secret
            .char_indices()
            .map(|(i, _)| i)
            .chain([secret.len()])
            .filter(|&end| end >= 4 && kept.ends_with(&secret[..end]))
            .max();
        if let Some(end) = cut {
            return format!("{}<redacted>…", &kept[..kept.len() - end]);
        }
    }
    out
}

fn truncate(message: &str) -> String {
    if message.chars().count() <= MAX_MESSAGE_CHARS {
        return message.to_owned();
    }
    let mut out: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(status: u16, body: &str) -> IbmError {
        IbmError::from_response_parts("test op", status, &HeaderMap::new(), body.as_bytes())
    }

    #[test]
    fn transient_classification() {
        assert!(parse(429, "").is_transient());
        assert!(parse(500, "").is_transient());
        assert!(parse(503, "").is_transient());
        assert!(!parse(501, "").is_transient());
        assert!(!parse(400, "").is_transient());
        assert!(!parse(403, "").is_transient());
        assert!(!parse(404, "").is_transient());
        assert!(IbmError::new("x", ErrorKind::Timeout, "t").is_transient());
        assert!(IbmError::new("x", ErrorKind::Connect, "c").is_transient());
    }

    #[test]
    fn identity_envelope_and_fallbacks() {
        let e = parse(
            401,
            r#"{"trace":"abc","errors":[{"code":"invalid_access_token","message":"bad"}],"status_code":401}"#,
        );
        assert_eq!(e.code.as_deref(), Some("invalid_access_token"));
        assert_eq!(e.message, "bad");
        assert_eq!(e.transaction_id.as_deref(), Some("abc"));
        let e = parse(502, "");
        assert_eq!(e.message, "Bad Gateway");
        assert_eq!(e.kind, ErrorKind::Server);
    }

    #[test]
    fn header_transaction_id_wins_and_display_is_complete() {
        let mut headers = HeaderMap::new();
        headers.insert("Transaction-Id", "txn-1".parse().unwrap());
        let e = IbmError::from_response_parts(
            "get resource key",
            404,
            &headers,
            br#"{"error_code":"RC-NotFound","message":"nope","transaction_id":"body"}"#,
        );
        assert_eq!(e.transaction_id.as_deref(), Some("txn-1"));
        assert_eq!(
            e.to_string(),
            "get resource key failed: HTTP 404 (not found) RC-NotFound: nope (transaction id txn-1)"
        );
    }

    #[test]
    fn long_bodies_are_truncated_and_secrets_scrubbed() {
        let e = parse(500, &"x".repeat(5000));
        assert!(e.message.chars().count() <= MAX_MESSAGE_CHARS + 1);
        let e = parse(400, "key my-secret-key is wrong").scrub(&["my-secret-key"]);
        assert_eq!(e.message, "key <redacted> is wrong");
    }

    #[test]
    fn a_secret_cut_by_truncation_is_scrubbed_too() {
        let secret = "s3cr3t-api-key-0123456789abcdefghijklmnop";
        // The secret starts 10 characters before the cut: only its beginning survives truncation.
        let body = format!("{}{secret} and more", "x".repeat(MAX_MESSAGE_CHARS - 10));
        let error = IbmError::from_response_parts("op", 500, &HeaderMap::new(), body.as_bytes())
            .scrub(&[secret]);
        assert!(!error.message.contains(&secret[..10]), "{}", error.message);
        assert!(error.message.ends_with("<redacted>…"), "{}", error.message);
        let error = IbmError::from_response_parts(
            "op",
            400,
            &HeaderMap::new(),
            format!(r#"{{"code":"{secret}","transaction_id":"{secret}","message":"m"}}"#)
                .as_bytes(),
        )
        .scrub(&[secret]);
        assert!(!error.to_string().contains(secret), "{error}");
    }
}
