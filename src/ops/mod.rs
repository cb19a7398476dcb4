//! What operators use: the admin listener, health and readiness,
//! `check-config --online` and the command-line tools. The top layer below
//! the app: it may use every other.

pub mod admin;
pub mod health;
pub mod preflight;
pub mod tools;
