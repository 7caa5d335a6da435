//! HTTP glue of the simulator: routing, fault injection, call counting, common headers.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::world::{Reply, World, now_unix};
use super::{Faults, SeedInstance, lock};

/// Largest request body accepted.
const MAX_BODY: usize = 1 << 20;
/// Nominal rate limit advertised in `X-RateLimit-*` when no rate-limit fault is set.
const NOMINAL_LIMIT: u32 = 10_000;
const NOMINAL_WINDOW: u64 = 60;

pub(crate) struct Shared {
    pub world: Mutex<World>,
    pub calls: Mutex<BTreeMap<String, u64>>,
    faults: Mutex<FaultState>,
    transactions: AtomicU64,
}

#[derive(Default)]
struct FaultState {
    faults: Faults,
    remaining_failures: Option<u64>,
    nominal_window: Window,
    fault_window: Window,
    rng: u64,
}

#[derive(Default)]
struct Window {
    start: u64,
    count: u32,
}

/// What the fault layer decided for one request.
struct Verdict {
    latency: Duration,
    response_delay: Duration,
    failure: Option<Reply>,
    extra_headers: Vec<(&'static str, String)>,
    limit: u32,
    remaining: u32,
    reset: u64,
}

impl Shared {
    pub fn new(world: World) -> Self {
        Self {
            world: Mutex::new(world),
            calls: Mutex::new(BTreeMap::new()),
            faults: Mutex::new(FaultState::default()),
            transactions: AtomicU64::new(0),
        }
    }

    pub fn set_faults(&self, faults: Faults) {
        let mut state = lock(&self.faults);
        // Not the error body: tests make it echo what clients sent (API keys included).
        let logged = Faults {
            error_body: faults
                .error_body
                .as_ref()
                .map(|b| format!("<{} bytes>", b.len())),
            ..faults.clone()
        };
        tracing::info!(faults = ?logged, "simulator: faults set");
        state.remaining_failures = faults.fail_count;
        state.faults = faults;
        state.fault_window = Window::default();
    }

    fn next_transaction(&self) -> String {
        let n = self.transactions.fetch_add(1, Ordering::Relaxed);
        format!("sim-{:08x}{:08x}", now_unix() as u32, n)
    }

    /// Applies the configured faults to a request of `endpoint`.
    fn judge(&self, endpoint: &str, txn: &str) -> Verdict {
        let mut state = lock(&self.faults);
        let now = now_unix();
        let matches = state
            .faults
            .matching
            .as_deref()
            .is_none_or(|m| endpoint.starts_with(m));
        // Requests under a rate-limit fault count in their own window; all others in the nominal one.
        let limited = matches && state.faults.rate_limit.is_some();
        let (limit, window_len) = match &state.faults.rate_limit {
            Some(r) if limited => (r.limit, r.window_seconds.max(1)),
            _ => (NOMINAL_LIMIT, NOMINAL_WINDOW),
        };
        let window = if limited {
            &mut state.fault_window
        } else {
            &mut state.nominal_window
        };
        if now >= window.start + window_len {
            window.start = now;
            window.count = 0;
        }
        window.count = window.count.saturating_add(1);
        let (count, reset) = (window.count, window.start + window_len);
        let mut verdict = Verdict {
            latency: Duration::ZERO,
            response_delay: Duration::ZERO,
            failure: None,
            extra_headers: Vec::new(),
            limit,
            remaining: limit.saturating_sub(count),
            reset,
        };
        if !matches {
            return verdict;
        }
        verdict.latency = Duration::from_millis(state.faults.latency_ms);
        verdict.response_delay = Duration::from_millis(state.faults.response_delay_ms);
        if let Some(rate) = state.faults.rate_limit.clone()
            && count > rate.limit
        {
            verdict
                .extra_headers
                .push(("retry-after", rate.retry_after_seconds.to_string()));
            verdict.failure = Some(error_reply(endpoint, 429, None, txn));
            return verdict;
        }
        let fail = match state.remaining_failures {
            Some(n) if n > 0 => {
                state.remaining_failures = Some(n - 1);
                true
            }
            Some(_) => false,
            None if state.faults.error_rate > 0.0 => {
                state.rng = xorshift(state.rng ^ now_nanos());
                (state.rng % 1_000_000) as f64 / 1_000_000.0 < state.faults.error_rate
            }
            None => false,
        };
        if fail {
            let status = match state.faults.error_status {
                0 => 503,
                s => s,
            };
            if let Some(after) = state.faults.retry_after_seconds {
                verdict
                    .extra_headers
                    .push(("retry-after", after.to_string()));
            }
            verdict.failure = Some(error_reply(
                endpoint,
                status,
                state.faults.error_body.clone(),
                txn,
            ));
        }
        verdict
    }
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

fn xorshift(mut x: u64) -> u64 {
    if x == 0 {
        x = 0x2545_F491_4F6C_DD1D;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// Body of an injected failure: raw text if configured, else the IAM or RC error shape.
fn error_reply(endpoint: &str, status: u16, raw: Option<String>, txn: &str) -> Reply {
    if let Some(raw) = raw {
        return Reply::json(status, Value::String(raw));
    }
    let reason = hyper::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let message = if status == 429 {
        "Too many requests. Please wait a few minutes and try again."
    } else {
        reason
    };
    if endpoint.starts_with("POST /identity/token") {
        return Reply::iam_error(status, "BXNIM0001E", message, txn, now_unix());
    }
    let code = match status {
        429 => "RC-TooManyRequests".to_owned(),
        _ => format!("RC-{}", reason.replace(' ', "")),
    };
    Reply::rc_error(status, &code, message, txn)
}

/// Accepts connections until `stop` fires or its sender is dropped.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: std::sync::Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, _) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(%error, "simulator: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "simulator: connection ended with an error");
                    }
                }
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    tracing::info!("simulator: stopped accepting connections");
}

enum Route {
    Token,
    ListInstances,
    GetInstance(String),
    ListInstanceKeys(String),
    ListKeys,
    CreateKey,
    GetKey(String),
    DeleteKey(String),
    RenameKey(String),
    NotFound,
    MethodNotAllowed,
}

/// Maps a request to (endpoint template, route).
fn route(method: &Method, segments: &[String]) -> (String, Route) {
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    let (template, get, post, delete) = match s.as_slice() {
        ["identity", "token"] => ("/identity/token", None, Some(Route::Token), None),
        ["v2", "resource_instances"] => (
            "/v2/resource_instances",
            Some(Route::ListInstances),
            None,
            None,
        ),
        ["v2", "resource_instances", id] => (
            "/v2/resource_instances/{id}",
            Some(Route::GetInstance((*id).to_owned())),
            None,
            None,
        ),
        ["v2", "resource_instances", id, "resource_keys"] => (
            "/v2/resource_instances/{id}/resource_keys",
            Some(Route::ListInstanceKeys((*id).to_owned())),
            None,
            None,
        ),
        ["v2", "resource_keys"] => (
            "/v2/resource_keys",
            Some(Route::ListKeys),
            Some(Route::CreateKey),
            None,
        ),
        ["v2", "resource_keys", id] => (
            "/v2/resource_keys/{id}",
            Some(Route::GetKey((*id).to_owned())),
            None,
            Some(Route::DeleteKey((*id).to_owned())),
        ),
        _ => return (format!("{method} <unknown>"), Route::NotFound),
    };
    let chosen = match (method, s.as_slice()) {
        (&Method::GET, _) => get,
        (&Method::POST, _) => post,
        (&Method::DELETE, _) => delete,
        (&Method::PATCH, ["v2", "resource_keys", id]) => Some(Route::RenameKey((*id).to_owned())),
        _ => None,
    };
    (
        format!("{method} {template}"),
        chosen.unwrap_or(Route::MethodNotAllowed),
    )
}

/// Percent-decodes one path segment (`%2F` in a URL-encoded CRN).
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = segment
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decodes `a=b&c=d` (form or query string).
fn parse_pairs(text: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(text.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = parse_pairs(req.uri().query().unwrap_or(""));
    let auth = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let txn = shared.next_transaction();

    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return respond(
                Reply::rc_error(
                    413,
                    "RC-BadRequest",
                    "Request body too large or unreadable",
                    &txn,
                ),
                &txn,
                None,
                &[],
            );
        }
    };

    if segments.first().map(String::as_str) == Some("_sim") {
        return respond(
            control(shared, &method, &segments[1..], &body),
            &txn,
            None,
            &[],
        );
    }

    let (endpoint, route) = route(&method, &segments);
    *lock(&shared.calls).entry(endpoint.clone()).or_default() += 1;
    let verdict = shared.judge(&endpoint, &txn);
    if !verdict.latency.is_zero() {
        tokio::time::sleep(verdict.latency).await;
    }
    let rate = Some((verdict.limit, verdict.remaining, verdict.reset));
    if let Some(failure) = verdict.failure {
        tracing::debug!(%endpoint, status = failure.status, "simulator: injected failure");
        return respond(failure, &txn, rate, &verdict.extra_headers);
    }

    let auth = auth.as_deref();
    let reply = {
        let mut world = lock(&shared.world);
        match route {
            Route::Token => Ok(world.token(&parse_pairs(&String::from_utf8_lossy(&body)), &txn)),
            Route::ListInstances => world.list_instances(auth, &query, &txn),
            Route::GetInstance(id) => world.get_instance(auth, &id, &txn),
            Route::ListInstanceKeys(id) => world.list_instance_keys(auth, &id, &query, &txn),
            Route::ListKeys => world.list_keys(auth, &query, &txn),
            Route::CreateKey => world.create_key(auth, &body, &txn),
            Route::GetKey(id) => world.get_key(auth, &id, &txn),
            Route::DeleteKey(id) => world.delete_key(auth, &id, &txn),
            Route::RenameKey(id) => world.rename_key(auth, &id, &body, &txn),
            Route::NotFound => Err(Reply::rc_error(
                404,
                "RC-NotFound",
                format!("No route for {method} {path}"),
                &txn,
            )),
            Route::MethodNotAllowed => Err(Reply::rc_error(
                405,
                "RC-MethodNotAllowed",
                format!("Method {method} not allowed"),
                &txn,
            )),
        }
        // Handlers answer failures as `Err(reply)` so they can use `?`; both go out the same way.
        .unwrap_or_else(|failure| failure)
    };
    tracing::debug!(%endpoint, status = reply.status, transaction_id = %txn, "simulator: handled request");
    if !verdict.response_delay.is_zero() {
        tokio::time::sleep(verdict.response_delay).await;
    }
    respond(reply, &txn, rate, &verdict.extra_headers)
}

/// `/_sim/...` control endpoints.
fn control(shared: &Shared, method: &Method, segments: &[String], body: &[u8]) -> Reply {
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    let bad = |message: String| Reply::json(400, json!({"error": message}));
    match (method, s.as_slice()) {
        (&Method::GET, ["calls"]) => Reply::json(200, json!(*lock(&shared.calls))),
        (&Method::POST, ["calls", "reset"]) => {
            lock(&shared.calls).clear();
            Reply::empty(204)
        }
        (&Method::GET, ["faults"]) => Reply::json(200, json!(lock(&shared.faults).faults)),
        (&Method::PUT, ["faults"]) => match serde_json::from_slice::<Faults>(body) {
            Ok(faults) => {
                shared.set_faults(faults);
                Reply::empty(204)
            }
            Err(e) => bad(format!("invalid faults: {e}")),
        },
        (&Method::DELETE, ["faults"]) => {
            shared.set_faults(Faults::default());
            Reply::empty(204)
        }
        (&Method::GET, ["keys"]) => Reply::json(200, json!(lock(&shared.world).sim_keys())),
        (&Method::GET, ["instances"]) => Reply::json(200, lock(&shared.world).instances_summary()),
        (&Method::POST, ["instances"]) => {
            #[derive(serde::Deserialize)]
            struct AddInstance {
                account_id: String,
                instance: SeedInstance,
            }
            match serde_json::from_slice::<AddInstance>(body) {
                Ok(add) => match lock(&shared.world).add_instance(&add.account_id, &add.instance) {
                    Ok(guid) => Reply::json(201, json!({"guid": guid})),
                    Err(e) => bad(e.to_string()),
                },
                Err(e) => bad(format!("invalid instance: {e}")),
            }
        }
        (&Method::POST, ["instances", guid, "reset_ingestion_key"]) => {
            match lock(&shared.world).reset_ingestion_key(guid) {
                Some(key) => Reply::json(
                    200,
                    json!({"instance_guid": guid, "ingestion_key_fingerprint": key.fingerprint()}),
                ),
                None => Reply::json(
                    404,
                    json!({"error": format!("no instance {guid} with an ingestion key")}),
                ),
            }
        }
        (&Method::POST, ["tokens", "expire"]) => {
            lock(&shared.world).expire_tokens();
            Reply::empty(204)
        }
        _ => Reply::json(404, json!({"error": "unknown simulator control endpoint"})),
    }
}

fn respond(
    reply: Reply,
    txn: &str,
    rate: Option<(u32, u32, u64)>,
    extra: &[(&'static str, String)],
) -> Response<Full<Bytes>> {
    let (content_type, body) = match reply.body {
        Some(Value::String(raw)) => ("text/plain; charset=utf-8", Bytes::from(raw)),
        Some(value) => ("application/json", Bytes::from(value.to_string())),
        None => ("application/json", Bytes::new()),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = hyper::StatusCode::from_u16(reply.status)
        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    if reply.status != 204 {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    let mut put = |name: &'static str, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    put("transaction-id", txn.to_owned());
    if let Some((limit, remaining, reset)) = rate {
        put("x-ratelimit-limit", limit.to_string());
        put("x-ratelimit-remaining", remaining.to_string());
        put("x-ratelimit-reset", reset.to_string());
    }
    for (name, value) in extra {
        put(name, value.clone());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_templates() {
        let seg = |p: &str| {
            p.trim_start_matches('/')
                .split('/')
                .map(percent_decode)
                .collect::<Vec<_>>()
        };
        let (t, r) = route(
            &Method::GET,
            &seg("/v2/resource_instances/crn:v1:bluemix:public:logdna:us-south:a%2Facc:g::"),
        );
        assert_eq!(t, "GET /v2/resource_instances/{id}");
        assert!(
            matches!(r, Route::GetInstance(id) if id == "crn:v1:bluemix:public:logdna:us-south:a/acc:g::")
        );
        assert_eq!(
            route(&Method::DELETE, &seg("/v2/resource_keys/k")).0,
            "DELETE /v2/resource_keys/{id}"
        );
        assert!(matches!(
            route(&Method::PUT, &seg("/v2/resource_keys/k")).1,
            Route::MethodNotAllowed
        ));
        assert!(matches!(
            route(&Method::GET, &seg("/nope")).1,
            Route::NotFound
        ));
    }

    #[test]
    fn form_decoding() {
        let form = parse_pairs(
            "grant_type=urn%3Aibm%3Aparams%3Aoauth%3Agrant-type%3Aapikey&apikey=a+b%2Bc",
        );
        assert_eq!(form["grant_type"], "urn:ibm:params:oauth:grant-type:apikey");
        assert_eq!(form["apikey"], "a b+c");
    }
}
