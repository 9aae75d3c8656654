//! The transport: framing, keepalive and per-connection state. Knows no procedure.

pub mod client;
pub mod connection;
pub mod outbox;
pub mod sasl;
pub mod stream;
