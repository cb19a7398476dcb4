//! superfone-bridge: Superfone event notifications (JSON webhooks) -> Avro ->
//! Kafka, one topic per event, keyed by lead.
//!
//! The modules are layers, each importing only from those below it
//! (ARCHITECTURE.md draws them; `tests/layering.rs` keeps it so), bottom up:
//! `vocabulary`, `config`, `observe`, `pipeline`, `durability`, `http` and
//! `recordings` (side by side), `ops`, and `app`, which wires them into the
//! running bridge.

pub mod app;
pub mod config;
pub mod durability;
pub mod http;
pub mod observe;
pub mod ops;
pub mod pipeline;
pub mod recordings;
pub mod vocabulary;

pub use app::{drain_spool, run_recordings, App, DrainReport, StartupError};
