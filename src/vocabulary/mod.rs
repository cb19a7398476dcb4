//! The words every layer shares, and nothing else: the Kafka `Record` the
//! pipeline builds, the spool keeps and the producer sends, the name of every
//! record header, and the ten event kinds. Plain values with no behaviour of
//! their own, so any module may use them without depending on another layer.

mod event_kind;
pub mod headers;
mod record;

pub use event_kind::EventKind;
pub use record::{Record, MAX_SPOOL_FRAME_BYTES, RECORD_OVERHEAD_BYTES};
