//! Logs and traces: a `tracing` subscriber writing text or JSON lines to
//! stderr (formatted on the request path, written in batches by a writer
//! thread, so a delivery makes no write syscall of its own), plus an
//! OpenTelemetry layer exporting spans over OTLP (gRPC or HTTP/protobuf) with
//! a batch processor, off the request path: when the collector is down,
//! spans are dropped, deliveries are not slowed.
//!
//! The standard variables apply (`OTEL_EXPORTER_OTLP_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`,
//! `OTEL_TRACES_SAMPLER_ARG`); the `[tracing]` config keys override them.
//! Without an endpoint nothing is exported and the OpenTelemetry layer is not
//! installed (it costs CPU on every delivery even with nothing to export): trace
//! ids are still made and propagated (response body, Kafka headers), by
//! `DeliveryTrace` straight from the W3C headers.

use crate::config::{LogConfig, LogFormat, TracingConfig};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TracerProvider as _,
};
use opentelemetry::Context;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::FilterExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The span of one delivery, whose fields every log line of it carries.
pub const DELIVERY_SPAN: &str = "superfone.delivery";

/// Whether the OpenTelemetry layer is installed (an exporter is set): spans
/// then carry the trace context; otherwise `DeliveryTrace` makes it.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Export requests must not hang a shutdown for long.
const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid OTLP exporter settings: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("unknown OTLP protocol `{0}` (grpc or http/protobuf)")]
    Protocol(String),
    #[error("unknown sampler `{0}`")]
    Sampler(String),
}

/// Keeps the tracer provider and the log writer alive; `shutdown` (or
/// dropping it) flushes the last spans and log lines.
pub struct Telemetry {
    provider: SdkTracerProvider,
    pub exporting_to: Option<String>,
    _log_writer: WorkerGuard,
}

impl Telemetry {
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "tracer provider shutdown");
        }
    }
}

/// Log lines queued for the writer thread before a logging call waits (it
/// waits rather than drop a line: an ERROR about an event must not vanish).
const LOG_QUEUE_LINES: usize = 16_384;

fn setting(config: &Option<String>, variable: &str) -> Option<String> {
    config
        .clone()
        .or_else(|| std::env::var(variable).ok())
        .filter(|value| !value.trim().is_empty())
}

fn sampler(name: &str, ratio: Option<f64>) -> Result<Sampler, TelemetryError> {
    let ratio = ratio.unwrap_or(1.0);
    Ok(match name {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio),
        "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
        }
        other => return Err(TelemetryError::Sampler(other.to_owned())),
    })
}

/// Installs the global subscriber (call inside the Tokio runtime: the gRPC
/// exporter needs it). `RUST_LOG` overrides the configured log filter.
pub fn init(log: &LogConfig, config: &TracingConfig) -> Result<Telemetry, TelemetryError> {
    let endpoint = setting(&config.endpoint, "OTEL_EXPORTER_OTLP_ENDPOINT");
    let provider = tracer_provider(config, endpoint.as_deref())?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let span_layer = endpoint.is_some().then(|| span_export_layer(&provider));
    let (log_layer, log_writer) = log_layer(log);
    let result = tracing_subscriber::registry()
        .with(span_layer)
        .with(log_layer)
        .try_init();
    match result {
        Ok(()) => EXPORTING.store(endpoint.is_some(), Ordering::Relaxed),
        Err(error) => eprintln!("logging already initialised: {error}"),
    }
    Ok(Telemetry {
        provider,
        exporting_to: endpoint,
        _log_writer: log_writer,
    })
}

/// The tracer provider: service name and sampler, and a batch exporter to
/// `endpoint` if there is one.
fn tracer_provider(
    config: &TracingConfig,
    endpoint: Option<&str>,
) -> Result<SdkTracerProvider, TelemetryError> {
    let service_name = setting(&config.service_name, "OTEL_SERVICE_NAME")
        .unwrap_or_else(|| "superfone-bridge".into());
    let mut builder = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service_name).build());
    if let Some(name) = &config.sampler {
        builder = builder.with_sampler(sampler(name, config.sampler_ratio)?);
    }
    if let Some(endpoint) = endpoint {
        let protocol = setting(&config.protocol, "OTEL_EXPORTER_OTLP_PROTOCOL")
            .unwrap_or_else(|| "http/protobuf".into());
        builder = builder.with_batch_exporter(span_exporter(endpoint, &protocol)?);
    }
    Ok(builder.build())
}

fn span_exporter(
    endpoint: &str,
    protocol: &str,
) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    Ok(match protocol {
        "grpc" => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()?,
        "http/protobuf" => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            // A base URL, as OTEL_EXPORTER_OTLP_ENDPOINT is: the signal path is appended.
            .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
            .with_timeout(EXPORT_TIMEOUT)
            .build()?,
        other => return Err(TelemetryError::Protocol(other.to_owned())),
    })
}

/// The layer that turns the bridge's own spans into OpenTelemetry spans:
/// only their attributes; thread, source location and busy/idle times would
/// be built for every delivery and say nothing to an SRE.
fn span_export_layer<S>(provider: &SdkTracerProvider) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("superfone-bridge"))
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_filter(tracing_subscriber::filter::filter_fn(|metadata| {
            metadata.is_span() && metadata.name().starts_with("superfone.")
        }))
}

/// The log layer, text or JSON, and the guard of its writer thread. Lines
/// are written by a thread of their own, through a buffer flushed whenever
/// its queue runs empty: one write for a burst of lines.
fn log_layer<S>(log: &LogConfig) -> (impl Layer<S>, WorkerGuard)
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .lossy(false)
        .thread_name("log-writer")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.filter));
    let format = match log.format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            // Colour codes only for a person at a terminal, not in log files.
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(writer)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(writer)
            .boxed(),
    };
    // Log lines carry the delivery span's fields (group id, trace id, event);
    // the spans inside it are for traces only, so the log layer never
    // formats their fields.
    let log_spans = tracing_subscriber::filter::filter_fn(|metadata| {
        !metadata.is_span()
            || metadata.name() == DELIVERY_SPAN
            || !metadata.name().starts_with("superfone.")
    });
    (format.with_filter(filter.and(log_spans)), guard)
}

/// The W3C trace context for a record that follows on from `headers` (an
/// earlier record's): a new span id in the same trace, or nothing when
/// `headers` carry no valid `traceparent`.
pub fn continue_trace(headers: &[(String, String)]) -> Vec<(String, String)> {
    let incoming = TraceContextPropagator::new().extract(&PairExtractor(headers));
    let parent = incoming.span().span_context().clone();
    if !parent.is_valid() {
        return Vec::new();
    }
    let context = Context::new().with_remote_span_context(SpanContext::new(
        parent.trace_id(),
        RandomIdGenerator::default().new_span_id(),
        parent.trace_flags(),
        false,
        parent.trace_state().clone(),
    ));
    let mut continued = Vec::new();
    TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(&mut continued));
    continued
}

/// Makes `span` the continuation of a consumed record's trace (`headers`)
/// and returns the W3C headers of a record sent inside it: that span's
/// context when spans are exported, else what [`continue_trace`] gives.
pub fn continue_trace_in(
    span: &tracing::Span,
    headers: &[(String, String)],
) -> Vec<(String, String)> {
    if !EXPORTING.load(Ordering::Relaxed) {
        return continue_trace(headers);
    }
    let incoming = TraceContextPropagator::new().extract(&PairExtractor(headers));
    let _ = span.set_parent(incoming);
    let mut continued = Vec::new();
    TraceContextPropagator::new()
        .inject_context(&span.context(), &mut HeaderInjector(&mut continued));
    continued
}

struct PairExtractor<'a>(&'a [(String, String)]);

impl Extractor for PairExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(key))
            .map(|(_, value)| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_str()).collect()
    }
}

struct HeaderExtractor<'a>(&'a hyper::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut Vec<(String, String)>);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}

/// A delivery's place in a trace: the incoming W3C `traceparent`'s trace,
/// or a new one.
#[derive(Debug, Clone)]
pub struct DeliveryTrace {
    /// The context records continue: the delivery span's when spans are
    /// exported; otherwise the incoming one (`tracestate` included), or a
    /// new trace.
    parent: SpanContext,
}

impl DeliveryTrace {
    /// Starts the delivery's trace under `span`: an incoming `traceparent`
    /// becomes its parent.
    pub fn start(span: &tracing::Span, headers: &hyper::HeaderMap) -> DeliveryTrace {
        let incoming = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        if EXPORTING.load(Ordering::Relaxed) {
            let _ = span.set_parent(incoming);
            let context = span.context();
            return DeliveryTrace {
                parent: context.span().span_context().clone(),
            };
        }
        let incoming = incoming.span().span_context().clone();
        let parent = if incoming.is_valid() {
            incoming
        } else {
            // As the SDK's default sampler (parent-based, always on) would.
            SpanContext::new(
                RandomIdGenerator::default().new_trace_id(),
                SpanId::INVALID,
                TraceFlags::SAMPLED,
                false,
                Default::default(),
            )
        };
        DeliveryTrace { parent }
    }

    fn has_trace(&self) -> bool {
        self.parent.trace_id() != TraceId::INVALID
    }

    /// The trace id as 32 hex digits, if it is a valid one.
    pub fn trace_id(&self) -> Option<String> {
        self.has_trace().then(|| self.parent.trace_id().to_string())
    }

    /// The W3C trace context of a record sent inside `span`, as Kafka record
    /// headers: that span's context when spans are exported, else a new span
    /// id in this trace.
    pub fn record_headers(&self, span: &tracing::Span) -> Vec<(String, String)> {
        let context = if EXPORTING.load(Ordering::Relaxed) {
            span.context()
        } else if !self.has_trace() {
            return Vec::new();
        } else {
            Context::new().with_remote_span_context(SpanContext::new(
                self.parent.trace_id(),
                RandomIdGenerator::default().new_span_id(),
                self.parent.trace_flags(),
                false,
                self.parent.trace_state().clone(),
            ))
        };
        let mut headers = Vec::new();
        TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(&mut headers));
        headers
    }
}
