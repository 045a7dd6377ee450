//! Cluster mode's PostgreSQL backend (feature `postgres`): several nodes on one database.
//!
//! Everything here blocks and must stay off the loop thread: the store (`store.rs`) is owned
//! by the store thread, the listener (`listen.rs`) runs its own thread and wakes the loop.
//! The design — schema, id assignment, NOTIFY payloads, gap detection, catch-up, reconnect,
//! and what the loop must do — is `docs/cluster.md`.
//!
//! - `uri`: `postgres://` URIs and their masked display (pure)
//! - `error`: the one error type, always masked
//! - `tls`: rustls for each `sslmode`
//! - `connect`: a URI and the timeouts become a connection
//! - `schema`: tables created on first start, race-free, versioned
//! - `store`: reads and the per-write calls, with the same names as `store::Store`
//! - `batch`: a whole batch of writes in two pipelined round trips
//! - `payload`: NOTIFY payloads (pure)
//! - `listen`: the listener thread
//! - `gaps`: which ids to push and when to catch up (pure)
//! - `tickets`: stream tickets in a table every node shares

pub mod batch;
pub mod connect;
pub mod error;
pub mod gaps;
pub mod listen;
pub mod payload;
pub mod schema;
pub mod store;
pub mod tickets;
pub mod tls;
pub mod uri;

pub use error::PgError;
pub use gaps::{Tracker, Verdict};
pub use listen::{Heard, Listener};
pub use payload::Event;
pub use store::PgStore;
pub use uri::{is_postgres_uri, PgUri, SslMode};
