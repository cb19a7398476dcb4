//! One Kafka record, owned: what the pipeline builds, the spool stores and
//! the producer sends.

/// Room for what a record adds to its body: headers (trace context, a
/// group id of up to 256 bytes, the dedup key), the key, the Confluent
/// framing and Kafka's batch framing. The Avro value of a JSON body is never
/// larger than the body itself: field names are dropped, and text fields
/// (JSON kept as text, unmapped members) hold at most what the body held.
pub const RECORD_OVERHEAD_BYTES: usize = 64 * 1024;

/// The largest body of a spool frame (the entry id and the record): the
/// spool's readers take a longer length for a damaged frame and cut it off
/// as a torn tail. So the body limit keeps every record an accepted body can
/// become within it (`Config::validate`), and the spool refuses to write
/// past it.
pub const MAX_SPOOL_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// One Kafka record, owned, as the spool also stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub key: Option<String>,
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl Record {
    /// The value of the header `name`, if the record has it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}
