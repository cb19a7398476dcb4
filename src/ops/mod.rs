//! What operators use: the admin listener, health and readiness, metrics,
//! telemetry, `check-config --online` and the command-line tools.

pub mod admin;
pub mod health;
pub mod metrics;
pub mod preflight;
pub mod telemetry;
pub mod tools;
