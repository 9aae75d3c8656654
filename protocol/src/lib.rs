//! The libvirt remote protocol (libvirt 9.0.0) as data: no I/O, no async runtime.
//!
//! Layout:
//! - `xdr`: the XDR runtime; every length is checked before anything is allocated.
//! - `limits`: the protocol's size limits.
//! - `header`, `frame`: the 24-byte header and the length-prefixed framing.
//! - `error`: libvirt's error codes and domains, and the wire error struct.
//! - `procedures`: the procedure table (number, name, API, priority, auth, read-only, streams),
//!   generated from libvirt's `remote_protocol.x` by `tools/gen-procedures`.
//! - `remote`: typed arguments and replies of the procedures the daemon implements.

pub mod error;
pub mod frame;
pub mod header;
pub mod limits;
pub mod procedures;
pub mod remote;
pub mod xdr;
