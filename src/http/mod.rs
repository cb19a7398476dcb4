//! The HTTP edge: the accepting thread, the accept loop, connection deadlines
//! and shedding,
//! TLS, reading a body within the memory budget, one delivery's handling
//! from auth to answer, which notification sent it, and the response bodies.

pub mod acceptor;
pub mod auth;
pub mod body;
mod connections;
pub mod ingest;
pub mod notification;
pub mod response;
pub mod server;
pub mod tls;
