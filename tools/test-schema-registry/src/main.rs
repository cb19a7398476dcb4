//! TEST TOOLING ONLY — not superfone-bridge's product registry.
//!
//! An in-memory schema registry implementing the subset of Confluent Schema
//! Registry's REST API that the bridge and Confluent's own clients use, because
//! no Confluent-compatible server is installable on the machines the tests run
//! on. Its faithfulness is checked by Confluent's Python `SchemaRegistryClient`
//! in the bridge's tests. Production uses a real registry (see docker-compose.yml).
//!
//! Usage: `superfone-test-schema-registry [--listen 127.0.0.1:8081]`

mod store;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use store::{Compatibility, Store, StoreError};
use tokio::net::TcpListener;

type Reply = (StatusCode, Value);

fn error_reply(error: StoreError) -> Reply {
    let status =
        StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        json!({ "error_code": error.error_code(), "message": error.to_string() }),
    )
}

fn ok(value: Value) -> Result<Reply, StoreError> {
    Ok((StatusCode::OK, value))
}

/// Subjects arrive percent-encoded (`a%2Fb`).
fn decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

fn schema_field(body: &Value) -> Result<&str, StoreError> {
    body.get("schema")
        .and_then(Value::as_str)
        .ok_or_else(|| StoreError::InvalidSchema("request has no `schema` string".into()))
}

fn compatibility_field(body: &Value) -> Result<Compatibility, StoreError> {
    serde_json::from_value(body.get("compatibility").cloned().unwrap_or(Value::Null))
        .map_err(|error| StoreError::InvalidSchema(format!("invalid compatibility level: {error}")))
}

fn route(
    store: &Mutex<Store>,
    method: &Method,
    path: &str,
    query: &str,
    body: &Value,
) -> Result<Reply, StoreError> {
    let segments: Vec<String> = path.trim_matches('/').split('/').map(decode).collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let mut store = store.lock().expect("store lock");
    match (method, segments.as_slice()) {
        (&Method::GET, ["subjects"]) => ok(json!(store.subjects())),
        (&Method::GET, ["subjects", subject, "versions"]) => ok(json!(store.versions(subject)?)),
        (&Method::GET, ["subjects", subject, "versions", version]) => {
            let found = store.version(subject, version)?;
            ok(
                json!({"subject": found.subject, "version": found.version, "id": found.id, "schema": found.schema}),
            )
        }
        (&Method::POST, ["subjects", subject, "versions"]) => {
            ok(json!({ "id": store.register(subject, schema_field(body)?)? }))
        }
        (&Method::POST, ["subjects", subject]) => {
            let found = store.lookup(subject, schema_field(body)?)?;
            ok(
                json!({"subject": found.subject, "version": found.version, "id": found.id, "schema": found.schema}),
            )
        }
        (&Method::DELETE, ["subjects", subject]) => ok(json!(store.delete_subject(subject)?)),
        (&Method::GET, ["schemas", "ids", id]) => {
            let id = id.parse().map_err(|_| StoreError::SchemaNotFound)?;
            ok(json!({ "schema": store.schema_by_id(id)? }))
        }
        (&Method::POST, ["compatibility", "subjects", subject, "versions", version]) => {
            let verdict = store.is_compatible(subject, version, schema_field(body)?)?;
            let mut reply = json!({ "is_compatible": verdict.is_ok() });
            if let (Err(message), true) = (verdict, query.contains("verbose=true")) {
                reply["messages"] = json!([message]);
            }
            ok(reply)
        }
        (&Method::GET, ["config"]) => {
            ok(json!({ "compatibilityLevel": store.compatibility(None) }))
        }
        (&Method::GET, ["config", subject]) => {
            let level = if query.contains("defaultToGlobal=true") {
                store.compatibility(Some(subject))
            } else {
                store.subject_compatibility(subject)?
            };
            ok(json!({ "compatibilityLevel": level }))
        }
        (&Method::PUT, ["config"]) => {
            let level = compatibility_field(body)?;
            store.set_compatibility(None, level);
            ok(json!({ "compatibility": level }))
        }
        (&Method::PUT, ["config", subject]) => {
            let level = compatibility_field(body)?;
            store.set_compatibility(Some(subject), level);
            ok(json!({ "compatibility": level }))
        }
        _ => Ok((
            StatusCode::NOT_FOUND,
            json!({"error_code": 404, "message": format!("HTTP 404 Not Found: {method} /{}", segments.join("/"))}),
        )),
    }
}

async fn handle(store: Arc<Mutex<Store>>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let (status, value) = match request.into_body().collect().await {
        Err(error) => (
            StatusCode::BAD_REQUEST,
            json!({"error_code": 400, "message": error.to_string()}),
        ),
        Ok(collected) => {
            let bytes = collected.to_bytes();
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap_or(Value::Null)
            };
            route(&store, &method, &path, &query, &body).unwrap_or_else(error_reply)
        }
    };
    tracing::debug!(%method, %path, status = status.as_u16(), "request");
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/vnd.schemaregistry.v1+json"),
    );
    response
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let mut listen: SocketAddr = ([127, 0, 0, 1], 8081).into();
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--listen", Some(addr)) => listen = addr.parse().expect("--listen takes HOST:PORT"),
            _ => {
                eprintln!("usage: superfone-test-schema-registry [--listen HOST:PORT]");
                std::process::exit(2);
            }
        }
    }
    let listener = TcpListener::bind(listen).await?;
    println!(
        "test schema registry listening on http://{}",
        listener.local_addr()?
    );
    let store = Arc::new(Mutex::new(Store::default()));
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = listener.accept().await?;
        let store = Arc::clone(&store);
        let service = service_fn(move |request| {
            let store = Arc::clone(&store);
            async move { Ok::<_, Infallible>(handle(store, request).await) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}
