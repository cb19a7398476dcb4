//! Making an accepted event durable: Kafka within the deadline, else the
//! local spool, and the ordered replay of the spool to Kafka; and the memory
//! of where each recent event went (duplicate suppression); and what a
//! delivery waits for while the bridge starts.

pub mod dedup;
pub mod delivery;
pub mod flights;
pub mod kafka;
pub mod reports;
pub mod spool;
pub mod startup;
