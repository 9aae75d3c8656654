//! Client for UML's management console ("mconsole"), a unix datagram socket at
//! `<uml_dir>/<umid>/mconsole`, plus the parser for the boot notification UML sends to
//! `mconsole=notify:<socket>`.
//!
//! Wire format (host byte order; the guest kernel runs on this very host):
//! - request `{u32 magic=0xcafebabe, u32 version=2, u32 len, data[len]}`, len < 512;
//! - reply chunks `{i32 err, i32 more, u32 len, data[len]}`, `data` NUL-terminated and
//!   `len` counting the NUL, at most 512; `more != 0` means another chunk follows;
//! - notification `{u32 magic, u32 version, u32 type, u32 len, data[len]}`.
//!
//! Everything coming from the socket is untrusted: parsing never panics, and a reply is
//! bounded in size, chunk count and time.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
use tokio::net::UnixDatagram;

/// `MCONSOLE_MAGIC`.
pub const MAGIC: u32 = 0xcafe_babe;
/// `MCONSOLE_VERSION`.
pub const VERSION: u32 = 2;
/// `MCONSOLE_MAX_DATA`: the data area of a request, reply chunk or notification.
pub const MAX_DATA: usize = 512;
/// Size of a reply chunk header (`err`, `more`, `len`).
pub const REPLY_HEADER: usize = 12;
/// Size of a notification header (`magic`, `version`, `type`, `len`).
pub const NOTIFY_HEADER: usize = 16;
/// Default bound on the whole reply of one command.
pub const DEFAULT_MAX_REPLY: usize = 64 * 1024;
/// Default time allowed for one command, from send to the last chunk.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a datagram could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("datagram too short: {0} bytes")]
    Short(usize),
    #[error("length field {len} exceeds {max}")]
    LenTooLarge { len: u32, max: usize },
    #[error("length field {len} runs past the end of a {available}-byte payload")]
    LenPastEnd { len: u32, available: usize },
    #[error("data is not NUL-terminated")]
    MissingNul,
    #[error("bad magic {0:#x}")]
    BadMagic(u32),
    #[error("unsupported version {0}")]
    BadVersion(u32),
}

/// Errors of [`Mconsole::command`].
#[derive(Debug, thiserror::Error)]
pub enum MconsoleError {
    #[error("mconsole command is {0} bytes; it must be shorter than {MAX_DATA}")]
    CommandTooLong(usize),
    #[error("mconsole command contains a NUL byte")]
    CommandHasNul,
    /// A device, file or key argument that would change the command's meaning.
    #[error("invalid mconsole argument {0:?}")]
    BadArgument(String),
    #[error("mconsole {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("mconsole {path}: no complete reply within {timeout:?}")]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("mconsole {path}: malformed reply: {source}")]
    Malformed { path: PathBuf, source: ParseError },
    #[error("mconsole {path}: reply larger than {max} bytes")]
    ReplyTooLarge { path: PathBuf, max: usize },
    /// The guest answered with `err != 0` (negative errno, or 1 for a generic failure).
    #[error("mconsole error {err}: {message}")]
    Remote { err: i32, message: String },
}

/// One reply chunk, borrowed from the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk<'a> {
    pub err: i32,
    pub more: bool,
    /// The data without its terminating NUL (and without anything after the first NUL).
    pub data: &'a [u8],
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = buf.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_ne_bytes(b))
}

/// Data of `len` bytes starting at `start`, which must end in a NUL; returns the bytes
/// before the first NUL.
fn nul_terminated(buf: &[u8], start: usize, len: u32) -> Result<&[u8], ParseError> {
    if len as usize > MAX_DATA {
        return Err(ParseError::LenTooLarge { len, max: MAX_DATA });
    }
    let available = buf.len().saturating_sub(start);
    let data = buf
        .get(start..start + len as usize)
        .ok_or(ParseError::LenPastEnd { len, available })?;
    let nul = data
        .iter()
        .position(|&b| b == 0)
        .ok_or(ParseError::MissingNul)?;
    Ok(&data[..nul])
}

/// Parses one reply datagram. Never panics, whatever the bytes.
pub fn parse_reply(buf: &[u8]) -> Result<Chunk<'_>, ParseError> {
    let (Some(err), Some(more), Some(len)) = (u32_at(buf, 0), u32_at(buf, 4), u32_at(buf, 8))
    else {
        return Err(ParseError::Short(buf.len()));
    };
    let data = nul_terminated(buf, REPLY_HEADER, len)?;
    Ok(Chunk {
        err: err as i32,
        more: more != 0,
        data,
    })
}

/// Kind of a notification sent to `mconsole=notify:<socket>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyKind {
    /// The mconsole socket is up; the data is its path.
    Socket,
    Panic,
    Hang,
    User,
    Other(u32),
}

/// A parsed notification datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub kind: NotifyKind,
    pub data: Vec<u8>,
}

/// Parses one notification datagram. Never panics, whatever the bytes.
pub fn parse_notify(buf: &[u8]) -> Result<Notification, ParseError> {
    let (Some(magic), Some(version), Some(kind), Some(len)) = (
        u32_at(buf, 0),
        u32_at(buf, 4),
        u32_at(buf, 8),
        u32_at(buf, 12),
    ) else {
        return Err(ParseError::Short(buf.len()));
    };
    if magic != MAGIC {
        return Err(ParseError::BadMagic(magic));
    }
    if version != VERSION {
        return Err(ParseError::BadVersion(version));
    }
    let data = nul_terminated(buf, NOTIFY_HEADER, len)?;
    let kind = match kind {
        0 => NotifyKind::Socket,
        1 => NotifyKind::Panic,
        2 => NotifyKind::Hang,
        3 => NotifyKind::User,
        n => NotifyKind::Other(n),
    };
    Ok(Notification {
        kind,
        data: data.to_vec(),
    })
}

/// Encodes a request datagram (header plus exactly `cmd.len()` bytes; UML accepts the
/// short form).
pub fn encode_request(cmd: &str) -> Result<Vec<u8>, MconsoleError> {
    if cmd.len() >= MAX_DATA {
        return Err(MconsoleError::CommandTooLong(cmd.len()));
    }
    if cmd.as_bytes().contains(&0) {
        return Err(MconsoleError::CommandHasNul);
    }
    let mut req = Vec::with_capacity(12 + cmd.len());
    req.extend_from_slice(&MAGIC.to_ne_bytes());
    req.extend_from_slice(&VERSION.to_ne_bytes());
    req.extend_from_slice(&(cmd.len() as u32).to_ne_bytes());
    req.extend_from_slice(cmd.as_bytes());
    Ok(req)
}

/// A handle on one guest's mconsole socket. Cheap to clone; every command uses its own
/// client socket, so commands may run concurrently.
#[derive(Debug, Clone)]
pub struct Mconsole {
    path: PathBuf,
    timeout: Duration,
    max_reply: usize,
}

impl Mconsole {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Mconsole {
            path: path.into(),
            timeout: DEFAULT_TIMEOUT,
            max_reply: DEFAULT_MAX_REPLY,
        }
    }

    /// The mconsole of `<uml_dir>/<umid>/mconsole`.
    pub fn for_umid(uml_dir: &Path, umid: &str) -> Self {
        Self::new(uml_dir.join(umid).join("mconsole"))
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn with_max_reply(mut self, max: usize) -> Self {
        self.max_reply = max;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io_err(&self, source: io::Error) -> MconsoleError {
        MconsoleError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// A socket bound to a kernel-chosen abstract address (autobind), so the reply has
    /// somewhere to go and no file is left behind; connected to the mconsole so only its
    /// datagrams are received.
    fn client_socket(&self) -> Result<UnixDatagram, MconsoleError> {
        let fd: OwnedFd = socket::socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(|e| self.io_err(e.into()))?;
        socket::bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &UnixAddr::new_unnamed(),
        )
        .map_err(|e| self.io_err(e.into()))?;
        let sock = UnixDatagram::from_std(std::os::unix::net::UnixDatagram::from(fd))
            .map_err(|e| self.io_err(e))?;
        sock.connect(&self.path).map_err(|e| self.io_err(e))?;
        Ok(sock)
    }

    /// Sends `cmd` and returns the concatenated reply text (NULs stripped, invalid UTF-8
    /// replaced). A reply with `err != 0` becomes [`MconsoleError::Remote`]. Bounded by
    /// the handle's timeout, from send to the last chunk.
    pub async fn command(&self, cmd: &str) -> Result<String, MconsoleError> {
        let timeout = self.timeout;
        let exchange = async {
            let mut pending = self.send(cmd).await?;
            pending.reply().await
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(MconsoleError::Timeout {
                path: self.path.clone(),
                timeout,
            }),
        }
    }

    /// Sends `cmd` and returns the request in flight, whose reply [`Pending::reply`]
    /// waits for. Unlike [`command`](Self::command) nothing here is bounded in time: the
    /// caller bounds the wait and may keep the request after giving up on it, so that a
    /// late answer (a guest that was slow, not deaf) is still heard. Only the send waits,
    /// and only while the guest's request queue is full.
    pub async fn send(&self, cmd: &str) -> Result<Pending, MconsoleError> {
        let req = encode_request(cmd)?;
        let sock = self.client_socket()?;
        sock.send(&req).await.map_err(|e| self.io_err(e))?;
        Ok(Pending {
            mc: self.clone(),
            sock,
            out: Vec::new(),
            first_err: 0,
        })
    }
}

/// A request sent to a guest's mconsole whose reply has not (completely) arrived: it
/// owns the client socket the reply comes to. Dropping it abandons the reply.
#[derive(Debug)]
pub struct Pending {
    mc: Mconsole,
    sock: UnixDatagram,
    /// Data of the chunks received so far.
    out: Vec<u8>,
    /// The first non-zero `err` among them.
    first_err: i32,
}

impl Pending {
    /// Waits for the rest of the reply; returns it as [`Mconsole::command`] does. Not
    /// bounded in time. Cancel-safe: a wait cut short (a timeout around it) keeps the
    /// chunks already received, and a later call goes on from there.
    pub async fn reply(&mut self) -> Result<String, MconsoleError> {
        let path = &self.mc.path;
        // Room for a maximal chunk plus one byte, so an oversized datagram is detected
        // rather than silently truncated.
        let mut buf = [0u8; REPLY_HEADER + MAX_DATA + 1];
        loop {
            // The only await: a reply is taken whole or not at all.
            let n = self
                .sock
                .recv(&mut buf)
                .await
                .map_err(|e| self.mc.io_err(e))?;
            if n > REPLY_HEADER + MAX_DATA {
                return Err(MconsoleError::Malformed {
                    path: path.clone(),
                    source: ParseError::LenTooLarge {
                        len: n as u32,
                        max: REPLY_HEADER + MAX_DATA,
                    },
                });
            }
            let chunk = parse_reply(&buf[..n]).map_err(|source| MconsoleError::Malformed {
                path: path.clone(),
                source,
            })?;
            // UML only sets err on the first chunk; keep the first non-zero one.
            if self.first_err == 0 {
                self.first_err = chunk.err;
            }
            if self.out.len() + chunk.data.len() > self.mc.max_reply {
                return Err(MconsoleError::ReplyTooLarge {
                    path: path.clone(),
                    max: self.mc.max_reply,
                });
            }
            self.out.extend_from_slice(chunk.data);
            if !chunk.more {
                break;
            }
        }
        let text = String::from_utf8_lossy(&std::mem::take(&mut self.out)).into_owned();
        let err = std::mem::take(&mut self.first_err);
        if err != 0 {
            return Err(MconsoleError::Remote { err, message: text });
        }
        Ok(text)
    }

    /// The mconsole the request went to.
    pub fn path(&self) -> &Path {
        &self.mc.path
    }
}

impl Mconsole {
    /// `version`: the guest kernel's version string; also a liveness probe.
    pub async fn version(&self) -> Result<String, MconsoleError> {
        self.command("version").await
    }

    /// `config <dev>` (query form), e.g. `con0` → `pts:/dev/pts/3`.
    pub async fn config_get(&self, dev: &str) -> Result<String, MconsoleError> {
        // Letters and digits only: "con0=null" would *set* the line.
        if dev.is_empty() || !dev.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(MconsoleError::BadArgument(dev.to_owned()));
        }
        self.command(&format!("config {dev}")).await
    }

    /// `cad`: ctrl-alt-del; what happens depends on the guest's init.
    pub async fn cad(&self) -> Result<(), MconsoleError> {
        self.command("cad").await.map(drop)
    }

    /// `halt`: immediate halt, the guest's init does not run its shutdown.
    pub async fn halt(&self) -> Result<(), MconsoleError> {
        self.command("halt").await.map(drop)
    }

    /// `reboot`: immediate reboot (the process exits if the kernel has `noreboot`).
    pub async fn reboot(&self) -> Result<(), MconsoleError> {
        self.command("reboot").await.map(drop)
    }

    /// `stop`: pause the guest. While stopped it answers mconsole only.
    pub async fn stop(&self) -> Result<(), MconsoleError> {
        self.command("stop").await.map(drop)
    }

    /// `go`: resume after `stop`.
    pub async fn go(&self) -> Result<(), MconsoleError> {
        self.command("go").await.map(drop)
    }

    /// `sysrq <key>`.
    pub async fn sysrq(&self, key: char) -> Result<String, MconsoleError> {
        if !key.is_ascii_graphic() {
            return Err(MconsoleError::BadArgument(key.to_string()));
        }
        self.command(&format!("sysrq {key}")).await
    }

    /// `proc <file>`: a file of the guest's /proc, e.g. `meminfo`.
    pub async fn proc_file(&self, file: &str) -> Result<String, MconsoleError> {
        if file.is_empty()
            || file
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(MconsoleError::BadArgument(file.to_owned()));
        }
        self.command(&format!("proc {file}")).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(err: i32, more: i32, len: u32, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&err.to_ne_bytes());
        v.extend_from_slice(&more.to_ne_bytes());
        v.extend_from_slice(&len.to_ne_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn parses_well_formed_chunks() {
        let b = reply(0, 0, 4, b"abc\0");
        assert_eq!(
            parse_reply(&b),
            Ok(Chunk {
                err: 0,
                more: false,
                data: b"abc"
            })
        );
        let b = reply(-2, 1, 1, b"\0");
        let c = parse_reply(&b).unwrap();
        assert_eq!((c.err, c.more, c.data), (-2, true, &b""[..]));
        // Trailing bytes beyond len (the full 524-byte struct) are ignored.
        let mut b = reply(0, 0, 3, b"hi\0");
        b.resize(REPLY_HEADER + MAX_DATA, 0xff);
        assert_eq!(parse_reply(&b).unwrap().data, b"hi");
        // Maximal chunk.
        let mut data = vec![b'x'; 511];
        data.push(0);
        assert_eq!(
            parse_reply(&reply(0, 0, 512, &data)).unwrap().data.len(),
            511
        );
    }

    #[test]
    fn hostile_replies_are_errors_not_panics() {
        for n in 0..REPLY_HEADER {
            assert_eq!(parse_reply(&vec![0u8; n]), Err(ParseError::Short(n)));
        }
        assert!(matches!(
            parse_reply(&reply(0, 0, 10, b"abc\0")),
            Err(ParseError::LenPastEnd { len: 10, .. })
        ));
        assert!(matches!(
            parse_reply(&reply(0, 0, u32::MAX, b"abc\0")),
            Err(ParseError::LenTooLarge { .. })
        ));
        assert!(matches!(
            parse_reply(&reply(0, 0, 513, &[0u8; 600])),
            Err(ParseError::LenTooLarge { .. })
        ));
        assert_eq!(
            parse_reply(&reply(0, 0, 3, b"abc")),
            Err(ParseError::MissingNul)
        );
        assert_eq!(
            parse_reply(&reply(0, 0, 0, b"")),
            Err(ParseError::MissingNul)
        );
        // Embedded NUL: the C string ends there.
        assert_eq!(parse_reply(&reply(0, 0, 5, b"a\0bc\0")).unwrap().data, b"a");
        // Pseudo-random garbage of every length never panics.
        let mut x: u32 = 0x1234_5678;
        for len in 0..700 {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = parse_reply(&buf);
            let _ = parse_notify(&buf);
        }
    }

    fn notify(magic: u32, version: u32, kind: u32, len: u32, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for x in [magic, version, kind, len] {
            v.extend_from_slice(&x.to_ne_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn parses_notifications() {
        let n = parse_notify(&notify(MAGIC, 2, 0, 6, b"/a/mc\0")).unwrap();
        assert_eq!(n.kind, NotifyKind::Socket);
        assert_eq!(n.data, b"/a/mc");
        assert_eq!(
            parse_notify(&notify(1, 2, 0, 1, b"\0")),
            Err(ParseError::BadMagic(1))
        );
        assert_eq!(
            parse_notify(&notify(MAGIC, 3, 0, 1, b"\0")),
            Err(ParseError::BadVersion(3))
        );
        assert_eq!(parse_notify(&[0; 15]), Err(ParseError::Short(15)));
        assert!(parse_notify(&notify(MAGIC, 2, 0, 7, b"/a/mc\0")).is_err());
        assert_eq!(
            parse_notify(&notify(MAGIC, 2, 9, 1, b"\0")).unwrap().kind,
            NotifyKind::Other(9)
        );
    }

    #[test]
    fn encodes_requests() {
        let r = encode_request("version").unwrap();
        assert_eq!(&r[0..4], &MAGIC.to_ne_bytes());
        assert_eq!(&r[4..8], &2u32.to_ne_bytes());
        assert_eq!(&r[8..12], &7u32.to_ne_bytes());
        assert_eq!(&r[12..], b"version");
        assert!(encode_request(&"x".repeat(511)).is_ok());
        assert!(matches!(
            encode_request(&"x".repeat(512)),
            Err(MconsoleError::CommandTooLong(512))
        ));
        assert!(matches!(
            encode_request("a\0b"),
            Err(MconsoleError::CommandHasNul)
        ));
    }
}
