//! Making an accepted event durable: Kafka within the deadline, else the
//! local spool, and the ordered replay of the spool to Kafka.

pub mod delivery;
pub mod kafka;
pub mod reports;
pub mod spool;
