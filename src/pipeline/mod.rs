//! From a JSON notification to an Avro record: dispatch and keys, the
//! schemas and their registry ids, the conversion, and dead letters. It
//! knows nothing of how records are stored.

pub mod avro_json;
pub mod convert;
pub mod dead_letter;
pub mod event;
pub mod recording_link;
pub mod registry;
pub mod route;
pub mod schema;
pub mod schema_patch;
