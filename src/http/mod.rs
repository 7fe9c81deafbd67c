//! HTTP/1.1 wire format: request heads, request bodies, response framing.
//!
//! Everything here is pure byte-shuffling with no I/O and no Python, so it
//! can be tested exhaustively against RFC 9112 with plain unit tests. The
//! worker's connection loop feeds bytes in and gets typed results out.

pub mod chunked;
pub mod proxy;
pub mod request;
pub mod response;

#[cfg(test)]
pub use request::parse_head;
pub use request::{BodyKind, Headers, Limits, RequestHead, parse_head_into};
