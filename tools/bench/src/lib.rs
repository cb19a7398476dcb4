//! The benchmark's parts: payload templates, the load generator, the HTTP
//! ceiling's server, the processes it starts, process statistics, read-back
//! on the broker, the report; the recordings benchmark (`recordings`); and
//! the spool's memory through a long Kafka outage (`spool_memory`), and
//! the soak with the broker flapping and the bridge killed (`soak`).

pub mod load;
pub mod payloads;
pub mod processes;
pub mod procstat;
pub mod recordings;
pub mod report;
pub mod run;
pub mod sink;
pub mod soak;
pub mod spool_memory;
pub mod verify;
