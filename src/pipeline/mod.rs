//! From a JSON notification to an Avro record: the events, their schemas
//! and registry ids, the conversion, duplicate suppression and dead letters.

pub mod avro_json;
pub mod convert;
pub mod dead_letter;
pub mod dedup;
pub mod event;
pub mod registry;
pub mod schema;
