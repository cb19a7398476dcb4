//! What every layer reports through: metric names and the Prometheus
//! recorder, the tracing subscriber and OTLP export, W3C trace propagation.
//! Leaves: they know nothing of the request path or storage.

pub mod metrics;
pub mod telemetry;
