//! Every Kafka record header the bridge writes or reads, in one place: the
//! ingest path sets them, the spool and the replay keep them, the tools and
//! consumers read them (docs/kafka-contract.md lists them for consumers).

/// The Superfone event name (`ALL_CALLS`, ...).
pub const EVENT_HEADER: &str = "superfone-event";
/// The delivery's correlation id (`group_id_ref`), as Superfone's log shows it.
pub const GROUP_ID_HEADER: &str = "superfone-group-id";
/// When the bridge received the delivery, RFC 3339 UTC.
pub const RECEIVED_AT_HEADER: &str = "superfone-received-at";
/// The notification that sent the delivery: the name in its path,
/// `/superfone/events/<name>`; absent when it was posted to the bare path.
pub const NOTIFICATION_HEADER: &str = "superfone-notification";
/// Prefix of a request header copied onto the record
/// (`ingest.forward_headers`): `superfone-h-<name in lower case>`.
pub const FORWARDED_HEADER_PREFIX: &str = "superfone-h-";
/// Identifies the event for duplicate suppression, here and downstream.
pub const DEDUP_KEY_HEADER: &str = "superfone-dedup-key";
/// The registry id the value was framed with.
pub const SCHEMA_ID_HEADER: &str = "superfone-schema-id";
/// Carried instead of `superfone-schema-id` while the record's schema has no
/// registry id yet: the schema's fingerprint. Removed when the id is stamped.
pub const SCHEMA_PENDING_HEADER: &str = "superfone-schema-pending";
/// On a CDR_RECORDING_AVAILABLE record: when its `cdr_recording_url` stops
/// working, RFC 3339 UTC (the recording must be copied before).
pub const RECORDING_URL_EXPIRES_AT_HEADER: &str = "superfone-recording-url-expires-at";
/// Content type of the event records: Confluent-framed Avro binary.
pub const CONTENT_TYPE_HEADER: &str = "content-type";
pub const AVRO_CONTENT_TYPE: &str = "application/vnd.confluent.avro";

/// Why a body went to the dead-letter topic (`DeadLetterReason`).
pub const DEAD_LETTER_REASON_HEADER: &str = "superfone-dead-letter-reason";
/// The JSON field at fault, when one is.
pub const DEAD_LETTER_FIELD_HEADER: &str = "superfone-dead-letter-field";
/// The conversion or parse error, as text.
pub const DEAD_LETTER_ERROR_HEADER: &str = "superfone-dead-letter-error";
/// On a record `dead-letter replay` re-submitted: `topic/partition/offset`
/// of the dead letter it came from.
pub const REPLAYED_FROM_HEADER: &str = "superfone-replayed-from";

/// Why Kafka refused a parked record for good (the Kafka error).
pub const PARKED_REASON_HEADER: &str = "superfone-parked-reason";
/// When it was parked, RFC 3339 UTC.
pub const PARKED_AT_HEADER: &str = "superfone-parked-at";
