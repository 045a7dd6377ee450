//! periode-sse as a library: the modules behind the binary, public so that benches, fuzz
//! targets and tools can drive the pure layers directly. The binary (`main.rs`) is the only
//! supported entry point for running a server.
//!
//! Layers, from the socket inwards: `server` (the loop) → `conn` (one socket's state and
//! pumps) → `http` (bytes to requests) → `api` (what a request means) → `writes` (applied in
//! the group commit) → `store` (SQLite). Beside them, pure and socket-free: `jwt`, `tickets`,
//! `sse`, `spending`, `timer`, `registry`, `time`, `config`, `metrics`.

pub mod api;
pub mod backend;
pub mod config;
pub mod conn;
pub mod domain;
pub mod http;
pub mod json;
pub mod jwt;
pub mod key;
pub mod logging;
pub mod metrics;
pub mod notify;
#[cfg(feature = "postgres")]
pub mod pg;
pub mod registry;
pub mod rng;
pub mod secret;
pub mod server;
pub mod spending;
pub mod sse;
pub mod store;
pub mod throttle;
pub mod tickets;
pub mod time;
pub mod timer;
pub mod writes;
