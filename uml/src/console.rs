//! Console pump: one task per pty console of a running guest.
//!
//! UML holds the master side of each `pts` line; the pump opens the slave
//! (`/dev/pts/N`), puts it in raw mode (no echo or line editing may mangle bytes in
//! either direction) and reads it continuously, whether or not anybody is watching —
//! an unread pty eventually blocks the guest's console output. Every chunk read is
//! - appended to an optional log file,
//! - kept in a 64 KiB ring (what a newly attached client sees first; the last 4 KiB are
//!   the tail that [`crate::process::classify_exit`] reads),
//! - broadcast to live subscribers through a bounded channel: a subscriber that falls
//!   behind gets `RecvError::Lagged(n)` and loses the oldest chunks; the pump never waits
//!   for it and never buffers more than the channel's bound.
//!
//! When UML exits the pty hangs up (EIO); the pump ends and subscribers see
//! `RecvError::Closed` after the chunks still queued for them.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use nix::sys::termios;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

/// Bytes of recent output kept for new subscribers.
pub const RING_SIZE: usize = 64 * 1024;
/// Bytes returned by [`ConsolePump::tail`].
pub const TAIL_SIZE: usize = 4 * 1024;
/// Chunks (each at most [`READ_CHUNK`] bytes) queued per subscriber before it lags.
pub const SUBSCRIBER_BACKLOG: usize = 256;
/// Largest single read.
pub const READ_CHUNK: usize = 4096;

/// Where to copy console output (libvirt's `<log file=… append=on|off>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleLog {
    pub path: PathBuf,
    /// `false` truncates the file when the pump starts.
    pub append: bool,
}

/// Why a pump stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PumpEnd {
    /// The pty hung up: the guest (UML) closed its side, normally because it exited.
    Hangup,
    /// [`ConsolePump::stop`] was called.
    Stopped,
    /// A read failed unexpectedly.
    Error(String),
}

struct State {
    ring: VecDeque<u8>,
    /// `None` once the pump has ended, so receivers see `Closed`.
    tx: Option<broadcast::Sender<Bytes>>,
    total: u64,
    end: Option<PumpEnd>,
}

struct Shared {
    state: Mutex<State>,
    done: watch::Sender<bool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn finish(&self, why: PumpEnd) {
        let mut st = self.lock();
        if st.end.is_none() {
            st.end = Some(why);
        }
        st.tx = None;
        drop(st);
        self.done.send_replace(true);
    }
}

/// A running console pump. Dropping it stops the pump.
pub struct ConsolePump {
    pty: PathBuf,
    fd: Arc<AsyncFd<File>>,
    shared: Arc<Shared>,
    /// Serialises writers so one `write` call's bytes are never interleaved with another's.
    write_lock: tokio::sync::Mutex<()>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for ConsolePump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsolePump")
            .field("pty", &self.pty)
            .field("end", &self.end())
            .finish_non_exhaustive()
    }
}

/// Only `/dev/pts/<number>`: the path comes from the guest (mconsole), and opening an
/// arbitrary device read-write can have side effects.
fn check_pty_path(p: &Path) -> io::Result<()> {
    let mut c = p.components();
    let ok = c.next() == Some(Component::RootDir)
        && c.next() == Some(Component::Normal("dev".as_ref()))
        && c.next() == Some(Component::Normal("pts".as_ref()))
        && matches!(c.next(), Some(Component::Normal(n))
            if n.to_str().is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())))
        && c.next().is_none();
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a /dev/pts/N path", p.display()),
        ))
    }
}

fn open_log(log: &ConsoleLog) -> io::Result<File> {
    if let Some(dir) = log.path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let mut o = OpenOptions::new();
    o.create(true).mode(0o600);
    if log.append {
        o.append(true);
    } else {
        o.write(true).truncate(true);
    }
    o.open(&log.path)
}

/// Opens `pty` (a `/dev/pts/N` slave), sets raw mode and starts pumping it. Must be
/// called inside a tokio runtime.
pub fn start(pty: impl Into<PathBuf>, log: Option<ConsoleLog>) -> io::Result<ConsolePump> {
    let pty = pty.into();
    check_pty_path(&pty)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NOCTTY | nix::libc::O_NONBLOCK)
        .open(&pty)?;
    if !nix::unistd::isatty(std::os::fd::AsRawFd::as_raw_fd(&file)).unwrap_or(false) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a terminal", pty.display()),
        ));
    }
    let mut tio = termios::tcgetattr(&file)?;
    termios::cfmakeraw(&mut tio);
    termios::tcsetattr(&file, termios::SetArg::TCSANOW, &tio)?;
    from_file(file, pty, log)
}

/// Pumps the master side of a pty the daemon created (see `process::PtyLine`); `pty` is
/// the slave's path, for display. Must be called inside a tokio runtime.
pub fn start_master(
    master: std::os::fd::OwnedFd,
    pty: impl Into<PathBuf>,
    log: Option<ConsoleLog>,
) -> io::Result<ConsolePump> {
    let file = File::from(master);
    let flags = nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&file),
        nix::fcntl::FcntlArg::F_GETFL,
    )?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&file),
        nix::fcntl::FcntlArg::F_SETFL(flags),
    )?;
    from_file(file, pty.into(), log)
}

fn from_file(file: File, pty: PathBuf, log: Option<ConsoleLog>) -> io::Result<ConsolePump> {
    let log_file = log.as_ref().map(open_log).transpose()?;

    // SAFETY: the File owns an open fd and is moved into the AsyncFd, which closes it
    // only when dropped; `as_raw_fd` always returns that same fd.
    let fd =
        unsafe { AsyncFd::register_with_interest(file, Interest::READABLE | Interest::WRITABLE) }
            .map_err(io::Error::from)?;
    let fd = Arc::new(fd);
    let (tx, _) = broadcast::channel(SUBSCRIBER_BACKLOG);
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            ring: VecDeque::with_capacity(RING_SIZE),
            tx: Some(tx),
            total: 0,
            end: None,
        }),
        done: watch::channel(false).0,
    });
    let task = tokio::spawn(run(fd.clone(), shared.clone(), log_file, log));
    Ok(ConsolePump {
        pty,
        fd,
        shared,
        write_lock: tokio::sync::Mutex::new(()),
        task,
    })
}

async fn run(
    fd: Arc<AsyncFd<File>>,
    shared: Arc<Shared>,
    mut log_file: Option<File>,
    log: Option<ConsoleLog>,
) {
    let mut buf = vec![0u8; READ_CHUNK];
    let end = loop {
        let mut guard = match fd.readable().await {
            Ok(g) => g,
            Err(e) => break PumpEnd::Error(e.to_string()),
        };
        let n = match guard.try_io(|f| f.get_ref().read(&mut buf)) {
            Err(_would_block) => continue,
            Ok(Ok(0)) => break PumpEnd::Hangup,
            Ok(Ok(n)) => n,
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            // What a pty slave returns once the master side is closed.
            Ok(Err(e)) if e.raw_os_error() == Some(nix::libc::EIO) => break PumpEnd::Hangup,
            Ok(Err(e)) => break PumpEnd::Error(e.to_string()),
        };
        let data = &buf[..n];
        if let Some(f) = log_file.as_mut() {
            if let Err(e) = f.write_all(data) {
                // Losing the log must not stop the console itself.
                let path = log.as_ref().map(|l| l.path.display().to_string());
                tracing::warn!(?path, "console log write failed, logging stopped: {e}");
                log_file = None;
            }
        }
        let mut st = shared.lock();
        st.ring.extend(data);
        let excess = st.ring.len().saturating_sub(RING_SIZE);
        st.ring.drain(..excess);
        st.total = st.total.saturating_add(n as u64);
        if let Some(tx) = &st.tx {
            // An error only means nobody is subscribed right now.
            let _ = tx.send(Bytes::copy_from_slice(data));
        }
    };
    shared.finish(end);
}

impl ConsolePump {
    pub fn pty(&self) -> &Path {
        &self.pty
    }

    /// The recent output (up to [`RING_SIZE`] bytes) and a receiver of everything read
    /// after it, with no gap and no overlap between the two.
    pub fn subscribe(&self) -> (Vec<u8>, broadcast::Receiver<Bytes>) {
        let st = self.shared.lock();
        let recent = st.ring.iter().copied().collect();
        let rx = match &st.tx {
            Some(tx) => tx.subscribe(),
            // Already ended: a receiver that reports Closed at once.
            None => broadcast::channel(1).1,
        };
        (recent, rx)
    }

    /// The last [`TAIL_SIZE`] bytes of output.
    pub fn tail(&self) -> Vec<u8> {
        let st = self.shared.lock();
        let skip = st.ring.len().saturating_sub(TAIL_SIZE);
        st.ring.iter().skip(skip).copied().collect()
    }

    /// Everything still in the ring.
    pub fn recent(&self) -> Vec<u8> {
        self.shared.lock().ring.iter().copied().collect()
    }

    /// Bytes read since start.
    pub fn total_bytes(&self) -> u64 {
        self.shared.lock().total
    }

    /// Sends keystrokes to the guest. Waits while the pty's input queue is full (a
    /// paused guest reads nothing: callers should bound this with a timeout).
    pub async fn write(&self, mut data: &[u8]) -> io::Result<()> {
        let _one_writer = self.write_lock.lock().await;
        while !data.is_empty() {
            if self.is_closed() {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "console pump has ended",
                ));
            }
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|f| f.get_ref().write(data)) {
                Err(_would_block) => continue,
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(e),
            }
        }
        Ok(())
    }

    pub fn is_closed(&self) -> bool {
        *self.shared.done.borrow()
    }

    /// Why the pump ended, once it has.
    pub fn end(&self) -> Option<PumpEnd> {
        self.shared.lock().end.clone()
    }

    /// Resolves once the pump has ended (hangup, error or [`stop`](Self::stop)), i.e.
    /// all output the guest wrote is in the ring and the log.
    pub async fn closed(&self) {
        let mut rx = self.shared.done.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Stops reading; subscribers see the end of the stream. The pty is closed when the
    /// pump is dropped.
    pub fn stop(&self) {
        self.task.abort();
        self.shared.finish(PumpEnd::Stopped);
    }
}

impl Drop for ConsolePump {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dev_pts_paths() {
        assert!(check_pty_path(Path::new("/dev/pts/0")).is_ok());
        assert!(check_pty_path(Path::new("/dev/pts/123")).is_ok());
        for bad in [
            "/dev/sda",
            "/dev/pts/ptmx",
            "/dev/pts/../sda",
            "dev/pts/1",
            "/dev/pts/1/x",
            "/dev/pts/",
            "/etc/passwd",
        ] {
            assert!(check_pty_path(Path::new(bad)).is_err(), "{bad}");
        }
    }
}
