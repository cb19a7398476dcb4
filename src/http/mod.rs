//! The HTTP edge: the accepting thread, the accept loop and its deadlines, TLS, one delivery's
//! handling from auth to answer, and the response bodies.

pub mod acceptor;
pub mod auth;
pub mod ingest;
pub mod response;
pub mod server;
pub mod tls;
