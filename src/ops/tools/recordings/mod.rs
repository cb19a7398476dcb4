//! `recordings list --pending | --failed` and `recordings retry`: what
//! became of each call recording, read from the recording events and the
//! pointer records (`history.rs`: both topics read to their end, joined by
//! recording), listed (`list.rs`) or copied again while
//! its link lives (`retry.rs`).

mod history;
mod list;
mod retry;

pub use list::{list_recordings, Listed, RecordingsList};
pub use retry::{retry_recordings, Retried, RetryOptions};
