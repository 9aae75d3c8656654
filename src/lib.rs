//! virtumld: a daemon that speaks libvirt's remote protocol and manages User Mode Linux guests.
//!
//! Layout (where to find things):
//! - `cli`, `config`, `paths`: command line, libvirtd.conf-style file, where files live.
//! - `server`: listeners, client limit, idle timeout, shutdown; `tls`: the TLS listener's
//!   credentials, client certificate and DN checks, confirmation byte.
//! - `activation`: systemd socket activation (inherited listeners) and `sd_notify`;
//!   `admin`: the admin socket, which refuses every call for now.
//! - `rpc/`: the transport: `connection` (framing, keepalive, per-call tasks, writer),
//!   `client` (per-connection state).
//! - `remote/`: dispatch. `remote/mod.rs` holds the one table from procedure number to
//!   argument type and handler; handlers live in one module per API area (`connect`, ...). A procedure
//!   `REMOTE_PROC_X_Y` is handled by the function `x_y` of its area's module.
//! - `host`: host facts (node info, capabilities).
//! - The UML backend is the `virtumld-uml` crate (`uml/`); the wire types are the
//!   `virtumld-protocol` crate (`protocol/`).

pub mod activation;
pub mod admin;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod driver;
pub mod host;
pub mod paths;
pub mod remote;
pub mod rpc;
pub mod server;
pub mod storage;
pub mod tls;

/// Escapes text for XML element content and attribute values (the domain XML's escaper).
pub use virtumld_uml::domain::xml_escape;
