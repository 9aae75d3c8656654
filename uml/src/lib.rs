//! The User Mode Linux backend. It never sees the wire protocol.
//!
//! Layout:
//! - `domain`: the domain definition (`DomainDef`), parsed from and formatted to libvirt
//!   domain XML, with every element the daemon cannot honour refused.
//! - `argv`: `DomainDef` → the `linux.uml` command line (pure, golden-tested).
//! - `process`: spawning a guest in its own session, readiness, exit detection (pidfd),
//!   killing and reaping the whole process group, reattaching after a daemon restart.
//! - `mconsole`: the UML management console client (datagram socket).
//! - `console`: pumps each console PTY: log file, recent-output ring, live subscribers.

pub mod argv;
pub mod console;
pub mod domain;
pub mod mconsole;
pub mod process;
