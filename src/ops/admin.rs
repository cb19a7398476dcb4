//! The admin listener, separate from the public ingest port: `/metrics`
//! (Prometheus), `/healthz` (the process is alive), `/readyz` and `/status`
//! (what the process's `Probe` reports: for `serve`, whether this pod can
//! make an event durable now and the state of Kafka, the registry and the
//! spool; for `recordings run`, the copier's; see `health`).

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What a process reports on `/readyz` and `/status`.
pub trait Probe: Send + Sync + 'static {
    /// `Ok` when ready, else the reasons.
    fn readiness(&self) -> Result<(), Vec<String>>;
    /// The `/status` report.
    fn status(&self) -> serde_json::Value;
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn answer(
    request: &Request<Incoming>,
    probe: &dyn Probe,
    metrics: &PrometheusHandle,
) -> Response<Full<Bytes>> {
    match request.uri().path() {
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(metrics.render())));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        "/healthz" => json_response(StatusCode::OK, json!({"status": "alive"})),
        "/status" => json_response(StatusCode::OK, probe.status()),
        "/readyz" => match probe.readiness() {
            Ok(()) => json_response(StatusCode::OK, json!({"status": "ready"})),
            Err(reasons) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "not_ready", "reasons": reasons}),
            ),
        },
        _ => json_response(
            StatusCode::NOT_FOUND,
            json!({"error": "admin endpoints: /metrics, /healthz, /readyz, /status"}),
        ),
    }
}

/// Serves the admin endpoints until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    probe: Arc<dyn Probe>,
    metrics: PrometheusHandle,
    stop: CancellationToken,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let (probe, metrics) = (Arc::clone(&probe), metrics.clone());
        let service = service_fn(move |request| {
            let response = answer(&request, probe.as_ref(), &metrics);
            async move { Ok::<_, Infallible>(response) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}
