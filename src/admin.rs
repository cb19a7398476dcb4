//! The admin listener, separate from the public ingest port: `/metrics`
//! (Prometheus), `/healthz` (the process is alive) and `/readyz` (broker
//! metadata reachable and schemas registered, with the reason when not).

use crate::kafka::Publisher;
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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How often, and how patiently, readiness asks the brokers for metadata.
const BROKER_CHECK_INTERVAL: Duration = Duration::from_secs(2);
const BROKER_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/readyz` reports.
#[derive(Default)]
pub struct Readiness {
    schemas_registered: AtomicBool,
    broker_reachable: AtomicBool,
    broker_error: Mutex<Option<String>>,
}

impl Readiness {
    pub fn set_schemas_registered(&self) {
        self.schemas_registered.store(true, Ordering::Relaxed);
    }

    fn set_broker(&self, result: Result<(), String>) {
        self.broker_reachable
            .store(result.is_ok(), Ordering::Relaxed);
        *self.broker_error.lock().expect("readiness lock") = result.err();
    }

    /// `Ok` when ready, else the reasons.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let mut reasons = Vec::new();
        if !self.schemas_registered.load(Ordering::Relaxed) {
            reasons.push("schemas are not registered".to_owned());
        }
        if !self.broker_reachable.load(Ordering::Relaxed) {
            let error = self.broker_error.lock().expect("readiness lock").clone();
            reasons.push(format!(
                "Kafka broker metadata unreachable: {}",
                error.unwrap_or_else(|| "not checked yet".into())
            ));
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    /// Re-checks broker metadata every couple of seconds until `stop`.
    pub async fn watch_broker(self: Arc<Self>, publisher: Arc<Publisher>, stop: CancellationToken) {
        loop {
            let result = publisher
                .check_broker(BROKER_CHECK_TIMEOUT)
                .await
                .map_err(|e| e.to_string());
            let was_reachable = self.broker_reachable.load(Ordering::Relaxed);
            if result.is_ok() != was_reachable {
                match &result {
                    Ok(()) => tracing::info!("Kafka reachable again: ready"),
                    Err(error) => tracing::warn!(%error, "Kafka unreachable: not ready"),
                }
            }
            self.set_broker(result);
            metrics::gauge!(crate::metrics::READY).set(if self.check().is_ok() {
                1.0
            } else {
                0.0
            });
            tokio::select! {
                () = tokio::time::sleep(BROKER_CHECK_INTERVAL) => {},
                () = stop.cancelled() => return,
            }
        }
    }
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
    readiness: &Readiness,
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
        "/readyz" => match readiness.check() {
            Ok(()) => json_response(StatusCode::OK, json!({"status": "ready"})),
            Err(reasons) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "not_ready", "reasons": reasons}),
            ),
        },
        _ => json_response(
            StatusCode::NOT_FOUND,
            json!({"error": "admin endpoints: /metrics, /healthz, /readyz"}),
        ),
    }
}

/// Serves the admin endpoints until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    readiness: Arc<Readiness>,
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
        let (readiness, metrics) = (Arc::clone(&readiness), metrics.clone());
        let service = service_fn(move |request| {
            let response = answer(&request, &readiness, &metrics);
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
