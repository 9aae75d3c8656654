//! systemd socket activation and readiness notification.
//!
//! When `LISTEN_PID` is our pid and `LISTEN_FDS` is N > 0, the listening sockets are the file
//! descriptors 3 … 3+N-1 (`sd_listen_fds(3)`). Each is identified by its name in
//! `LISTEN_FDNAMES` (the socket unit's `FileDescriptorName=`: `virtumld`, `virtumld-ro`,
//! `virtumld-admin`, `virtumld-tcp`, `virtumld-tls`, and the optional `virtumld-legacy`,
//! `virtumld-legacy-ro`), or, for a name we do not know, by its address: a UNIX path ending
//! in `-sock-ro` is read-only, one ending in `-admin-sock` is the admin socket, any other
//! UNIX path is read-write; an IP socket on `tls_port` is TLS, any other is TCP.
//!
//! [`take`] runs first thing in `main`, while the process has one thread: it claims the
//! descriptors (marking them close-on-exec, so guests never inherit a listening socket) and
//! unsets the three variables, as `sd_listen_fds(1)` does.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::sys::socket::{self, sockopt, AddressFamily, SockType, SockaddrLike, SockaddrStorage};

/// The first inherited descriptor (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// A listening socket handed over by the service manager, not yet classified.
#[derive(Debug)]
pub struct Inherited {
    pub fd: OwnedFd,
    /// Its `LISTEN_FDNAMES` entry, when there was one.
    pub name: Option<String>,
}

/// What an inherited socket is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A UNIX socket giving read-write connections (`virtumld-sock`, or `libvirt-sock`).
    UnixRw(PathBuf),
    /// A UNIX socket giving read-only connections (`virtumld-sock-ro`, `libvirt-sock-ro`).
    UnixRo(PathBuf),
    /// The admin socket (`virtumld-admin-sock`).
    Admin(PathBuf),
    Tcp,
    Tls,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::UnixRw(p) => write!(f, "read-write UNIX socket {}", p.display()),
            Role::UnixRo(p) => write!(f, "read-only UNIX socket {}", p.display()),
            Role::Admin(p) => write!(f, "admin socket {}", p.display()),
            Role::Tcp => f.write_str("TCP socket"),
            Role::Tls => f.write_str("TLS socket"),
        }
    }
}

/// Reads `LISTEN_PID`/`LISTEN_FDS`/`LISTEN_FDNAMES`, claims the descriptors and unsets the
/// variables. An empty list when the process was not socket-activated (or the variables
/// were meant for another process).
///
/// Must be called before any other thread exists and before anything opens a file
/// descriptor of its own (first thing in `main`).
pub fn take() -> Result<Vec<Inherited>, String> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    // Unset them whatever they say, so that nothing we spawn (guests, helpers) sees them.
    // The process has a single thread at this point (see above).
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(Vec::new());
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(Vec::new());
    }
    let n: RawFd = fds
        .trim()
        .parse()
        .map_err(|_| format!("socket activation: invalid LISTEN_FDS '{fds}'"))?;
    if !(0..=1024).contains(&n) {
        return Err(format!("socket activation: invalid LISTEN_FDS '{fds}'"));
    }
    let names: Vec<String> = names
        .map(|s| s.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    let mut out = Vec::new();
    for i in 0..n {
        let raw = LISTEN_FDS_START + i;
        // The descriptor must be open: a dangling number would make `from_raw_fd` unsound.
        nix::fcntl::fcntl(raw, nix::fcntl::FcntlArg::F_GETFD)
            .map_err(|e| format!("socket activation: descriptor {raw} is not open: {e}"))?;
        // SAFETY: `raw` is open (checked just above) and was handed to this process by the
        // service manager for its exclusive use (LISTEN_PID is our pid). This runs once, first
        // thing in `main`, before anything else could have opened or claimed it, so this
        // `OwnedFd` is its only owner.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        nix::fcntl::fcntl(
            fd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map_err(|e| format!("socket activation: descriptor {raw}: {e}"))?;
        let name = names
            .get(i as usize)
            .filter(|s| !s.is_empty() && s.as_str() != "unknown")
            .cloned();
        out.push(Inherited { fd, name });
    }
    Ok(out)
}

/// Decides what an inherited socket is for: by its name when we know it, else by address.
/// Refuses anything but a listening stream socket.
pub fn classify(s: &Inherited, tls_port: u16) -> Result<Role, String> {
    let fd = &s.fd;
    let what = || match &s.name {
        Some(n) => format!("socket activation: descriptor {} ('{n}')", fd.as_raw_fd()),
        None => format!("socket activation: descriptor {}", fd.as_raw_fd()),
    };
    let ty = socket::getsockopt(fd, sockopt::SockType).map_err(|e| format!("{}: {e}", what()))?;
    if ty != SockType::Stream {
        return Err(format!("{}: not a stream socket", what()));
    }
    if !socket::getsockopt(fd, sockopt::AcceptConn).map_err(|e| format!("{}: {e}", what()))? {
        return Err(format!("{}: not a listening socket", what()));
    }
    let addr: SockaddrStorage =
        socket::getsockname(fd.as_raw_fd()).map_err(|e| format!("{}: {e}", what()))?;
    let family = addr.family();
    let unix_path = addr
        .as_unix_addr()
        .and_then(|u| u.path())
        .map(PathBuf::from);
    let is_ip = matches!(family, Some(AddressFamily::Inet | AddressFamily::Inet6));
    // The port, read through a duplicate of the descriptor (std knows both IP families).
    let port = if is_ip {
        fd.try_clone()
            .map(std::net::TcpListener::from)
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .ok()
    } else {
        None
    };
    // systemd's default name is the unit's name: `virtumld-ro.socket` means `virtumld-ro`.
    let name = s
        .name
        .as_deref()
        .map(|n| n.strip_suffix(".socket").unwrap_or(n));
    let need_unix = |role: fn(PathBuf) -> Role| match &unix_path {
        Some(p) => Ok(role(p.clone())),
        None => Err(format!("{}: expected a UNIX socket with a path", what())),
    };
    match name {
        Some("virtumld" | "virtumld-legacy") => return need_unix(Role::UnixRw),
        Some("virtumld-ro" | "virtumld-legacy-ro") => return need_unix(Role::UnixRo),
        Some("virtumld-admin") => return need_unix(Role::Admin),
        Some("virtumld-tcp" | "virtumld-tls") if !is_ip => {
            return Err(format!("{}: expected a TCP socket", what()))
        }
        Some("virtumld-tcp") => return Ok(Role::Tcp),
        Some("virtumld-tls") => return Ok(Role::Tls),
        _ => {}
    }
    if let Some(p) = unix_path {
        let file = p.to_string_lossy();
        return Ok(if file.ends_with("-sock-ro") {
            Role::UnixRo(p)
        } else if file.ends_with("-admin-sock") {
            Role::Admin(p)
        } else {
            Role::UnixRw(p)
        });
    }
    if is_ip {
        return Ok(if port == Some(tls_port) {
            Role::Tls
        } else {
            Role::Tcp
        });
    }
    Err(format!("{}: unsupported address family", what()))
}

/// Tells the service manager that the daemon is ready (`sd_notify("READY=1")`), when it
/// asked (`NOTIFY_SOCKET`, for `Type=notify` units). Errors are only logged.
pub fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = notify(&path, "READY=1") {
        tracing::warn!("cannot notify the service manager: {e}");
    }
}

fn notify(path: &std::ffi::OsStr, message: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let bytes = path.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name)?,
        None => SocketAddr::from_pathname(std::path::Path::new(path))?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(message.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inherited_unix(dir: &std::path::Path, file: &str, name: Option<&str>) -> Inherited {
        let l = std::os::unix::net::UnixListener::bind(dir.join(file)).unwrap();
        Inherited {
            fd: OwnedFd::from(l),
            name: name.map(str::to_string),
        }
    }

    fn inherited_tcp(name: Option<&str>) -> (Inherited, u16) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        (
            Inherited {
                fd: OwnedFd::from(l),
                name: name.map(str::to_string),
            },
            port,
        )
    }

    #[test]
    fn by_name_then_by_address() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let s = inherited_unix(d, "a", Some("virtumld-ro"));
        assert_eq!(classify(&s, 16514), Ok(Role::UnixRo(d.join("a"))));
        let s = inherited_unix(d, "b", Some("virtumld-admin.socket"));
        assert_eq!(classify(&s, 16514), Ok(Role::Admin(d.join("b"))));
        let s = inherited_unix(d, "virtumld-sock-ro", None);
        assert_eq!(
            classify(&s, 16514),
            Ok(Role::UnixRo(d.join("virtumld-sock-ro")))
        );
        let s = inherited_unix(d, "libvirt-sock", None);
        assert_eq!(
            classify(&s, 16514),
            Ok(Role::UnixRw(d.join("libvirt-sock")))
        );
        let s = inherited_unix(d, "virtumld-admin-sock", Some("unknownname"));
        assert_eq!(
            classify(&s, 16514),
            Ok(Role::Admin(d.join("virtumld-admin-sock")))
        );
        let (s, _) = inherited_tcp(Some("virtumld-tls"));
        assert_eq!(classify(&s, 16514), Ok(Role::Tls));
        let (s, port) = inherited_tcp(None);
        assert_eq!(classify(&s, port), Ok(Role::Tls));
        assert_eq!(classify(&s, port.wrapping_add(1)), Ok(Role::Tcp));
        // A name that contradicts the socket is an error, not a guess.
        let (s, _) = inherited_tcp(Some("virtumld-ro"));
        assert!(classify(&s, 16514).is_err());
        let s = inherited_unix(d, "c", Some("virtumld-tcp"));
        assert!(classify(&s, 16514).is_err());
    }

    #[test]
    fn refuses_non_listening_sockets() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let s = Inherited {
            fd: OwnedFd::from(a),
            name: Some("virtumld".into()),
        };
        assert!(classify(&s, 16514).unwrap_err().contains("not a listening"));
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let s = Inherited {
            fd: OwnedFd::from(u),
            name: None,
        };
        assert!(classify(&s, 16514).unwrap_err().contains("not a stream"));
    }

    #[test]
    fn notify_sends_ready() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        notify(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
