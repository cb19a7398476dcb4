//! The HTTP edge: the accept loop and its deadlines, TLS, one delivery's
//! handling from auth to answer, and the response bodies.

pub mod auth;
pub mod ingest;
pub mod response;
pub mod server;
pub mod tls;
