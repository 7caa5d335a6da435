//! The admin server: `/healthz` (the process serves), `/readyz` (the caches have synced) and
//! `/metrics` (Prometheus text).

use std::{
    convert::Infallible,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

/// What one client may hold of the admin server: scrapes and probes are small and quick, so a
/// client that sends its request slowly, or many clients at once, are cut off instead of holding
/// the process's memory and file descriptors.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// How long a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// How long one connection may stay open (keep-alive included).
    pub connection_lifetime: Duration,
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(5),
            connection_lifetime: Duration::from_secs(120),
            max_connections: 64,
        }
    }
}

/// Renders the metrics page on demand.
pub type MetricsRenderer = Arc<dyn Fn() -> String + Send + Sync>;

/// Whether a scrape of `/metrics` may read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Allowed,
    /// No bearer token, or one the API server does not know: 401.
    Unauthenticated,
    /// A known identity without the right to `get` `/metrics`: 403.
    Forbidden,
    /// The API server could not be asked: 503 (the scrape is retried).
    Unknown,
}

/// Decides who may read `/metrics` from the bearer token of the scrape (`None`: no token).
pub trait MetricsAuthorizer: Send + Sync {
    fn access<'a>(&'a self, token: Option<&'a str>) -> futures::future::BoxFuture<'a, Access>;
}

/// What the admin endpoints report.
#[derive(Clone)]
pub struct AdminState {
    /// Set once the controller's caches have synced.
    pub ready: Arc<AtomicBool>,
    /// Whether the API server answered the last probe: an outage makes the replica not ready
    /// while it lasts.
    pub api_server_answers: Arc<AtomicBool>,
    pub metrics: MetricsRenderer,
    /// When set, `/metrics` answers only scrapes it allows (`--metrics-auth`); the probes stay open.
    pub metrics_authorizer: Option<Arc<dyn MetricsAuthorizer>>,
}

/// Serves the admin endpoints on `listener` until `shutdown` resolves, within `limits`.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        // Over the cap: the connection is closed at once (dropped).
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(answer(&state, &request).await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(TokioIo::new(stream), service);
            // A client that hangs up early, or outstays its time, is not worth a log line.
            let _ = tokio::time::timeout(limits.connection_lifetime, connection).await;
            drop(slot);
        });
    }
}

/// Answers a request, first asking the authorizer (if any) about a scrape of `/metrics`.
async fn answer<B>(state: &AdminState, request: &Request<B>) -> Response<Full<Bytes>> {
    if let Some(authorizer) = &state.metrics_authorizer
        && request.method() == Method::GET
        && request.uri().path() == "/metrics"
    {
        let token = request
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match authorizer.access(token).await {
            Access::Allowed => {}
            Access::Unauthenticated => {
                return text(StatusCode::UNAUTHORIZED, "unauthorized\n".into());
            }
            Access::Forbidden => return text(StatusCode::FORBIDDEN, "forbidden\n".into()),
            Access::Unknown => {
                let why = "could not check the token with the API server\n";
                return text(StatusCode::SERVICE_UNAVAILABLE, why.into());
            }
        }
    }
    respond(state, request)
}

fn respond<B>(state: &AdminState, request: &Request<B>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        );
    }
    match request.uri().path() {
        "/healthz" | "/livez" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" if !state.api_server_answers.load(Ordering::Acquire) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the API server does not answer\n".into(),
        ),
        "/readyz" if state.ready.load(Ordering::Acquire) => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "caches not synced yet\n".into(),
        ),
        "/metrics" => {
            let mut response = text(StatusCode::OK, (state.metrics)());
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readiness_follows_the_flag_and_metrics_render() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ready = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(AtomicBool::new(true));
        let state = AdminState {
            ready: ready.clone(),
            api_server_answers: answers.clone(),
            metrics: Arc::new(|| "some_metric 1\n".to_string()),
            metrics_authorizer: None,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, state, Limits::default(), async {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::new();
        let get = |path: &str| client.get(format!("http://{addr}{path}")).send();
        assert_eq!(get("/healthz").await.unwrap().status(), 200);
        assert_eq!(get("/readyz").await.unwrap().status(), 503);
        ready.store(true, Ordering::Release);
        assert_eq!(get("/readyz").await.unwrap().status(), 200);
        answers.store(false, Ordering::Release);
        assert_eq!(
            get("/readyz").await.unwrap().status(),
            503,
            "API server outage"
        );
        assert_eq!(get("/healthz").await.unwrap().status(), 200, "still alive");
        answers.store(true, Ordering::Release);
        assert_eq!(get("/readyz").await.unwrap().status(), 200);
        assert_eq!(
            get("/metrics").await.unwrap().text().await.unwrap(),
            "some_metric 1\n"
        );
        assert_eq!(get("/nope").await.unwrap().status(), 404);
        stop.send(()).unwrap();
        server.await.unwrap();
    }

    /// A client that opens a connection and sends nothing is cut off after the header timeout,
    /// and connections beyond the cap are closed on accept while the others are served.
    #[tokio::test]
    async fn slow_and_surplus_clients_are_cut_off() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = AdminState {
            ready: Arc::new(AtomicBool::new(true)),
            api_server_answers: Arc::new(AtomicBool::new(true)),
            metrics: Arc::new(String::new),
            metrics_authorizer: None,
        };
        let limits = Limits {
            header_read_timeout: Duration::from_millis(200),
            connection_lifetime: Duration::from_secs(60),
            max_connections: 2,
        };
        tokio::spawn(serve(listener, state, limits, std::future::pending()));
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut also_silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut surplus = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut byte = [0_u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), surplus.read(&mut byte)).await;
        assert!(
            matches!(closed, Ok(Ok(0) | Err(_))),
            "over the cap: closed at once"
        );
        let closed = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut byte)).await;
        assert!(
            closed.is_ok(),
            "a silent client is cut off after the header timeout"
        );
        let _ = also_silent.read(&mut byte).await;
        // Both slots are free again: a real request is served.
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}
