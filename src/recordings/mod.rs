//! Copying call recordings into the user's own storage before their links
//! expire (the claim check: the bytes go to object storage, Kafka carries a
//! pointer). A consumer of the recording events, beside the request path,
//! never inside it: the webhook answer never waits for a recording.
//!
//! `source` downloads a recording from its pre-signed URL, which comes from
//! a request body and is therefore untrusted (an SSRF surface): https only,
//! allowed hosts only, public addresses only, redirects checked the same
//! way, a size cap and timeouts. `store` writes the copy (streamed, hashed,
//! named by call date and id); `pipeline::recording_link` says when the
//! link dies.

pub mod copier;
pub mod copy;
pub mod finish;
pub mod job;
pub mod pointer;
pub mod source;
pub mod store;
pub mod tracker;
