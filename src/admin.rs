//! The admin server: `/healthz` (the process serves), `/readyz` (the caches have synced) and
//! `/metrics` (Prometheus text).

use std::{
    convert::Infallible,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Renders the metrics page on demand.
pub type MetricsRenderer = Arc<dyn Fn() -> String + Send + Sync>;

/// What the admin endpoints report.
#[derive(Clone)]
pub struct AdminState {
    /// Set once the controller's caches have synced.
    pub ready: Arc<AtomicBool>,
    /// Whether the API server answered the last probe: an outage makes the replica not ready
    /// while it lasts.
    pub api_server_answers: Arc<AtomicBool>,
    pub metrics: MetricsRenderer,
}

/// Serves the admin endpoints on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(&state, &request)) }
            });
            // A client that hangs up early is not worth a log line.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
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
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, state, async {
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
}
