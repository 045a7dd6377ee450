//! periode_kit: the client side of periode-sse, shared by the instruments (`periode-density`,
//! `periode-soak`, `periode-floor`), the integration tests and the benches, so that each of
//! them speaks HTTP and SSE to the server through one copy of the code.
//!
//! - `http`: requests with a `Host` header, and a keep-alive response reader.
//! - `wire`: incremental decoders (chunked framing, SSE block kinds) for thousands of streams.
//! - `sse`: the whole-event SSE parser, as a browser dispatches events (the tests' oracle).
//! - `sock`: raw-socket set-up (source address, small receive buffer, `SO_LINGER` 0).
//! - `token`: HS256 tokens, well formed or as an attacker writes them; `b64`: base64url.
//! - `procfs`: what `/proc` says about a process; `setup`: starting a server, creating users.
//! - `rng`: the server library's xorshift generator, re-exported.
//!
//! Nothing here panics on what a socket, a file or the clock returns: errors are values, and
//! the tests decide what a failure means.

pub mod b64;
pub mod http;
pub mod procfs;
pub mod setup;
pub mod sock;
pub mod token;
pub mod wire;

pub use periode_sse::rng;
/// The SSE oracle lives in the server library, so that its unit tests check the encoder with
/// the same parser the integration tests and the tools use.
pub use periode_sse::sse::oracle as sse;
