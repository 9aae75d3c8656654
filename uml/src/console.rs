//! Console pump: one task per pty console line of a running guest.
//!
//! The pump holds one side of the line's pty (the daemon-created master, [`start_master`],
//! or a `/dev/pts/N` slave put in raw mode, [`start`]) and reads it continuously, whether or
//! not anybody is watching — an unread pty eventually blocks the guest's console output.
//! Every read is
//! - appended to an optional log file,
//! - kept in a ring: its last [`RING_SIZE`] bytes are what a newly attached session sees
//!   first, the last [`TAIL_SIZE`] the tail that [`crate::process::classify_exit`] reads;
//!   while a session is attached the ring keeps up to [`BACKLOG`] bytes, so that a session
//!   that is briefly late catches up without loss,
//! - offered to [`Output`] readers (the daemon's console sessions): a reader is only an
//!   offset into the ring, woken once per batch of reads, that takes everything it has not
//!   seen in one go (one STREAM packet per wake-up, however much arrived meanwhile), and the
//!   pump holds nothing per reader. A reader that falls more than [`BACKLOG`] behind loses
//!   the oldest bytes; the pump never waits for it,
//! - broadcast to [`ConsolePump::subscribe`]rs through a bounded channel, one chunk per read
//!   (at most [`SUBSCRIBER_BACKLOG`] chunks, after which a subscriber gets
//!   `RecvError::Lagged(n)` and loses the oldest); chunks are only copied while somebody is
//!   subscribed.
//!
//! Input never makes the daemon wait for the guest. [`ConsolePump::send_input`] writes what the
//! pty takes at once and queues the rest, at most [`INPUT_MAX`] bytes per line, which the pump
//! task writes as the pty drains; input beyond that is dropped. Why drop rather than push
//! back: a libvirt stream has no flow control of its own, so the only way to make a client
//! stop typing would be to stop reading its connection, which stalls every call and stream
//! on that connection behind one guest's keyboard buffer (and a session that waits on a
//! write stops forwarding the guest's output as well). A guest that has not read the last
//! 64 KiB typed at it (paused by `virsh suspend`, hung, or flooded with a paste) has no use
//! for more, and a paused guest gets the queued keystrokes when it resumes.
//!
//! UML writes its console without blocking and, when the pty is full (about 8 KiB
//! pending), waits for a SIGIO saying it has room. The kernel sends that signal (once per
//! failed write) when the reader empties the line discipline's small buffer, which can be
//! before the pty's own buffer has any room: UML then finds the line still full and waits
//! for a signal that never comes, and the guest's console output stops until something
//! else (a keystroke, a timer) wakes UML, often for seconds. So after every batch of reads
//! the pump sends UML's main process a SIGIO of its own (`Waker`); a spurious one costs
//! UML one poll of its descriptors. Measured with a guest printing 2 MB through a pty read
//! directly: 0.5 MB/s with stalls without it, 21 MB/s with it.
//!
//! When UML exits the pty hangs up (EIO); the pump ends, and readers and subscribers see the
//! end after the output still due to them.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use nix::sys::termios;
use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};
use tokio::io::Interest;
use tokio::sync::{broadcast, watch, Notify};
use tokio::task::JoinHandle;

/// Bytes of recent output a new session is shown first.
pub const RING_SIZE: usize = 64 * 1024;
/// Bytes returned by [`ConsolePump::tail`].
pub const TAIL_SIZE: usize = 4 * 1024;
/// Bytes of output kept while an [`Output`] reader is attached: how far it may fall behind
/// (a client that stalls for a moment, a session task that waits for a CPU) without loss.
/// Without readers only [`RING_SIZE`] bytes are kept.
pub const BACKLOG: usize = 1024 * 1024;
/// Chunks (each at most [`READ_CHUNK`] bytes) queued per subscriber before it lags.
pub const SUBSCRIBER_BACKLOG: usize = 256;
/// Largest single read (what the tty layer hands over at once anyway).
pub const READ_CHUNK: usize = 4096;
/// Most bytes read per wake-up before readers are told: a guest that floods its console
/// wakes its readers once per batch instead of once per read, without starving the pump's
/// other work (input, other tasks on the thread).
pub const READ_BATCH: usize = 64 * 1024;
/// Keystrokes queued per line for a guest that is not reading them; more are dropped.
pub const INPUT_MAX: usize = 64 * 1024;
/// How long to wait before looking for the guest's process again when it was not found.
const FIND_AGAIN: Duration = Duration::from_secs(1);
/// While input waits, how often to try writing it without a "writable" event. The kernel
/// wakes a pty master's writers when the guest has emptied its line discipline, which can
/// be before the pty's own buffer has room; that wake-up is then lost, and with the guest
/// waiting for more input nothing would ever write it.
const INPUT_RETRY: Duration = Duration::from_millis(20);

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
    /// The last bytes read ([`RING_SIZE`], or [`BACKLOG`] while `readers` > 0), i.e. stream
    /// offsets `total - ring.len() .. total`.
    ring: VecDeque<u8>,
    /// Live [`Output`] readers.
    readers: usize,
    /// `None` once the pump has ended, so receivers see `Closed`.
    tx: Option<broadcast::Sender<Bytes>>,
    total: u64,
    end: Option<PumpEnd>,
}

/// Keystrokes the pty has not taken yet.
#[derive(Default)]
struct Input {
    queue: VecDeque<u8>,
    /// Bytes dropped since the queue was last empty (for one log line per episode).
    dropped: u64,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped after each batch of reads and when the pump ends: what readers wait on. The
    /// value only says whether the pump has ended; offsets are read from `state`.
    progress: watch::Sender<bool>,
    input: Mutex<Input>,
    /// Tells the pump task that input is queued.
    input_queued: Notify,
    /// Tells a waiting [`ConsolePump::write`] that the queue has room, or the pump ended.
    input_room: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn input(&self) -> MutexGuard<'_, Input> {
        self.input.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn input_pending(&self) -> bool {
        !self.input().queue.is_empty()
    }

    /// Records one read: ring, offset, live subscribers.
    fn publish(&self, data: &[u8]) {
        let mut st = self.lock();
        let keep = if st.readers > 0 { BACKLOG } else { RING_SIZE };
        let excess = (st.ring.len() + data.len()).saturating_sub(keep);
        let from_ring = excess.min(st.ring.len());
        st.ring.drain(..from_ring);
        st.ring.extend(&data[excess - from_ring..]);
        st.total = st.total.saturating_add(data.len() as u64);
        if let Some(tx) = st.tx.as_ref().filter(|tx| tx.receiver_count() > 0) {
            // An error only means the last subscriber just left.
            let _ = tx.send(Bytes::copy_from_slice(data));
        }
    }

    fn finish(&self, why: PumpEnd) {
        let mut st = self.lock();
        if st.end.is_none() {
            st.end = Some(why);
        }
        st.tx = None;
        drop(st);
        // Nobody will write it any more.
        self.input().queue.clear();
        self.progress.send_replace(true);
        self.input_room.notify_one();
    }
}

/// A running console pump. Dropping it stops the pump.
pub struct ConsolePump {
    pty: PathBuf,
    fd: Arc<AsyncFd<File>>,
    shared: Arc<Shared>,
    /// Serialises [`write`](Self::write) calls so one call's bytes are never interleaved
    /// with another's.
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
    if !nix::unistd::isatty(file.as_raw_fd()).unwrap_or(false) {
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
    master: OwnedFd,
    pty: impl Into<PathBuf>,
    log: Option<ConsoleLog>,
) -> io::Result<ConsolePump> {
    let file = File::from(master);
    let flags = nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
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
            ring: VecDeque::new(),
            readers: 0,
            tx: Some(tx),
            total: 0,
            end: None,
        }),
        progress: watch::channel(false).0,
        input: Mutex::new(Input::default()),
        input_queued: Notify::new(),
        input_room: Notify::new(),
    });
    let reader = Reader {
        buf: vec![0u8; READ_BATCH],
        log_file,
        log,
        waker: Waker::new(pty.clone()),
    };
    let task = tokio::spawn(run(fd.clone(), shared.clone(), reader));
    Ok(ConsolePump {
        pty,
        fd,
        shared,
        write_lock: tokio::sync::Mutex::new(()),
        task,
    })
}

/// The pump task: reads whenever the pty has output, writes queued input whenever the pty
/// has room, until the pty hangs up.
async fn run(fd: Arc<AsyncFd<File>>, shared: Arc<Shared>, mut reader: Reader) {
    let end = loop {
        let writing = shared.input_pending();
        tokio::select! {
            r = fd.readable() => match r {
                Ok(mut guard) => {
                    if let Some(end) = reader.read_ready(&mut guard, &shared) {
                        break end;
                    }
                }
                Err(e) => break PumpEnd::Error(e.to_string()),
            },
            r = fd.writable(), if writing => match r {
                Ok(mut guard) => flush_input(&mut guard, &shared),
                Err(e) => break PumpEnd::Error(e.to_string()),
            },
            // The pty's "writable" can come too early and be lost (see INPUT_RETRY).
            _ = tokio::time::sleep(INPUT_RETRY), if writing => {
                flush_queued(fd.get_ref(), &shared, write_queued);
            }
            // Input was queued while the queue was empty: wait for room to write it.
            _ = shared.input_queued.notified(), if !writing => {}
        }
    };
    shared.finish(end);
}

/// Why a batch of reads stopped.
enum Stop {
    /// Nothing more to read now.
    Empty,
    /// The buffer is full; the pty may have more.
    Full,
    End(PumpEnd),
}

/// The read side of the pump task.
struct Reader {
    buf: Vec<u8>,
    log_file: Option<File>,
    log: Option<ConsoleLog>,
    waker: Waker,
}

impl Reader {
    /// Reads what the line discipline holds, up to [`READ_BATCH`] bytes.
    ///
    /// Only what FIONREAD reports is read here, on a runtime thread. A read of a pty whose
    /// line discipline is empty does not simply fail with EAGAIN: it first waits for a
    /// kernel worker to flush the pty's buffer into the line discipline (`n_tty_read` →
    /// `flush_work`), which on a busy machine takes milliseconds, holding the runtime thread
    /// and every task queued behind it (measured: a canary client waiting 90 ms under a
    /// console flood). The worker wakes the pump itself once it has moved data. After a
    /// hangup, plain reads collect the last output until EIO.
    fn read_ready(
        &mut self,
        guard: &mut AsyncFdReadyGuard<'_, File>,
        shared: &Shared,
    ) -> Option<PumpEnd> {
        let line: &File = guard.get_ref().get_ref();
        let gated = !guard.ready().is_read_closed();
        let (got, stop) = self.read_batch(line, shared, gated);
        if matches!(stop, Stop::Empty) {
            guard.clear_ready();
        }
        self.batch_done(got, line, shared);
        match stop {
            Stop::End(end) => Some(end),
            _ => None,
        }
    }

    /// Reads into the buffer until it is full or the pty has nothing more (`gated`: as
    /// FIONREAD says; otherwise until EAGAIN), publishing each read at once.
    fn read_batch(&mut self, line: &File, shared: &Shared, gated: bool) -> (usize, Stop) {
        let mut got = 0;
        let stop = loop {
            if got == self.buf.len() {
                break Stop::Full;
            }
            let want = if gated {
                match waiting(line) {
                    Ok(0) => break Stop::Empty,
                    Ok(n) => n.min(READ_CHUNK),
                    Err(e) => break Stop::End(PumpEnd::Error(e.to_string())),
                }
            } else {
                READ_CHUNK
            };
            let upto = (got + want).min(self.buf.len());
            match (&*line).read(&mut self.buf[got..upto]) {
                Ok(0) => break Stop::End(PumpEnd::Hangup),
                Ok(n) => {
                    shared.publish(&self.buf[got..got + n]);
                    got += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Stop::Empty,
                // What a pty returns once its other side is closed.
                Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => {
                    break Stop::End(PumpEnd::Hangup)
                }
                Err(e) => break Stop::End(PumpEnd::Error(e.to_string())),
            }
        };
        (got, stop)
    }

    /// After a batch: the log, the readers, the guest.
    fn batch_done(&mut self, got: usize, line: &File, shared: &Shared) {
        if got > 0 {
            self.write_log(got);
            shared.progress.send_modify(|_| {});
            self.waker.wake(line);
        }
    }

    fn write_log(&mut self, len: usize) {
        let Some(f) = self.log_file.as_mut() else {
            return;
        };
        if let Err(e) = f.write_all(&self.buf[..len]) {
            // Losing the log must not stop the console itself.
            let path = self.log.as_ref().map(|l| l.path.display().to_string());
            tracing::warn!(?path, "console log write failed, logging stopped: {e}");
            self.log_file = None;
        }
    }
}

/// Sends the guest's UML process a SIGIO (see the module documentation). The process is
/// found through the line itself: for a console on a host terminal UML starts a helper that
/// makes the line its controlling terminal (to hear of window size changes), so the line's
/// foreground process group is that helper, and its parent is UML's main process. A pidfd
/// keeps the signal from ever reaching another process that reuses the pid. Without the
/// helper (a pump on the slave side, another UML) nothing is found and nothing is sent.
struct Waker {
    pty: PathBuf,
    guest: Option<OwnedFd>,
    /// When to look for the guest again after not finding it.
    next_look: Option<Instant>,
}

impl Waker {
    fn new(pty: PathBuf) -> Waker {
        Waker {
            pty,
            guest: None,
            next_look: None,
        }
    }

    fn wake(&mut self, line: &File) {
        if self.guest.is_none() && self.next_look.is_none_or(|t| Instant::now() >= t) {
            self.guest = find_guest(line, &self.pty);
            if self.guest.is_none() {
                self.next_look = Some(Instant::now() + FIND_AGAIN);
            }
        }
        let Some(pidfd) = &self.guest else {
            return;
        };
        if let Err(e) = pidfd_send_signal(pidfd, nix::libc::SIGIO) {
            // Gone (the pty hangs up soon) or no longer ours to signal: look again later.
            tracing::debug!(pty = %self.pty.display(), "console waker: {e}");
            self.guest = None;
            self.next_look = Some(Instant::now() + FIND_AGAIN);
        }
    }
}

/// A pidfd for the UML main process writing to `line` (a pty master), if it can be found.
fn find_guest(line: &File, pty: &Path) -> Option<OwnedFd> {
    let helper = nix::unistd::tcgetpgrp(line.as_fd()).ok()?.as_raw();
    let guest = proc_stat(helper)?.0;
    let pidfd = pidfd_open(guest).ok()?;
    // Checked with the pidfd held, so the process checked is the one it refers to.
    let (_, session) = proc_stat(guest)?;
    (session == guest && holds(guest, pty)).then_some(pidfd)
}

/// `(parent, session)` of a process, from `/proc/PID/stat`.
fn proc_stat(pid: i32) -> Option<(i32, i32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold anything, ')' included: fields follow the last ')'.
    let mut f = stat.rsplit_once(')')?.1.split_whitespace();
    let parent = f.nth(1)?.parse().ok()?;
    let session = f.nth(1)?.parse().ok()?;
    Some((parent, session))
}

/// Whether process `pid` has `path` open.
fn holds(pid: i32, path: &Path) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten()
        .any(|e| fs::read_link(e.path()).is_ok_and(|l| l == path))
}

fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    if pid <= 0 {
        return Err(io::Error::from_raw_os_error(nix::libc::ESRCH));
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is
    // passed.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn pidfd_send_signal(pidfd: &OwnedFd, sig: i32) -> io::Result<()> {
    // SAFETY: a valid fd, a signal number, a null siginfo (the kernel fills in a default)
    // and zero flags.
    let rc = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<nix::libc::siginfo_t>(),
            0u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes queued input while the pty takes it (the pty reported room).
fn flush_input(guard: &mut AsyncFdReadyGuard<'_, File>, shared: &Shared) {
    flush_queued(guard.get_ref().get_ref(), shared, |f, q| {
        // Through try_io, so that a full pty clears the readiness it reported.
        match guard.try_io(|_| write_queued(f, q)) {
            Ok(r) => r,
            Err(_would_block) => Ok(()),
        }
    });
}

/// Runs `write` on the input queue; wakes a waiting [`ConsolePump::write`] if it made room.
fn flush_queued(
    line: &File,
    shared: &Shared,
    write: impl FnOnce(&File, &mut VecDeque<u8>) -> io::Result<()>,
) {
    let mut input = shared.input();
    let before = input.queue.len();
    match write(line, &mut input.queue) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => {
            // Not the guest being slow (that is WouldBlock): the line is going away.
            tracing::debug!("console input dropped: {e}");
            input.queue.clear();
        }
    }
    let drained = input.queue.len() < before;
    drop(input);
    if drained {
        shared.input_room.notify_one();
    }
}

/// Writes from the front of `queue` until it is empty; WouldBlock when the pty is full.
fn write_queued(mut f: &File, queue: &mut VecDeque<u8>) -> io::Result<()> {
    while !queue.is_empty() {
        let (front, _) = queue.as_slices();
        match f.write(front) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                queue.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes as much of `data` as the pty takes right now; never waits.
fn write_now(mut f: &File, data: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < data.len() {
        match f.write(&data[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Bytes the line discipline holds for reading (FIONREAD).
fn waiting(line: &File) -> io::Result<usize> {
    let mut n: nix::libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which points at `n`.
    let rc = unsafe { nix::libc::ioctl(line.as_raw_fd(), nix::libc::FIONREAD, &mut n) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

fn ended() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "console pump has ended")
}

/// The last `n` bytes of the ring.
fn last_bytes(ring: &VecDeque<u8>, n: usize) -> Vec<u8> {
    let skip = ring.len().saturating_sub(n);
    ring.range(skip..).copied().collect()
}

impl ConsolePump {
    pub fn pty(&self) -> &Path {
        &self.pty
    }

    /// The recent output (up to [`RING_SIZE`] bytes) and a receiver of everything read
    /// after it, with no gap and no overlap between the two.
    pub fn subscribe(&self) -> (Vec<u8>, broadcast::Receiver<Bytes>) {
        let st = self.shared.lock();
        let recent = last_bytes(&st.ring, RING_SIZE);
        let rx = match &st.tx {
            Some(tx) => tx.subscribe(),
            // Already ended: a receiver that reports Closed at once.
            None => broadcast::channel(1).1,
        };
        (recent, rx)
    }

    /// A reader of the output that starts with the recent output (up to [`RING_SIZE`]
    /// bytes), what a newly attached console session shows first.
    pub fn output(&self) -> Output {
        let mut st = self.shared.lock();
        st.readers += 1;
        let replay = st.ring.len().min(RING_SIZE) as u64;
        Output {
            shared: self.shared.clone(),
            next: st.total - replay,
            progress: self.shared.progress.subscribe(),
        }
    }

    /// The last [`TAIL_SIZE`] bytes of output.
    pub fn tail(&self) -> Vec<u8> {
        last_bytes(&self.shared.lock().ring, TAIL_SIZE)
    }

    /// The recent output, up to [`RING_SIZE`] bytes.
    pub fn recent(&self) -> Vec<u8> {
        last_bytes(&self.shared.lock().ring, RING_SIZE)
    }

    /// Bytes read since start.
    pub fn total_bytes(&self) -> u64 {
        self.shared.lock().total
    }

    /// Sends keystrokes to the guest without ever waiting: what the pty does not take at
    /// once is queued for the pump task, up to [`INPUT_MAX`] bytes; the rest is dropped
    /// (see the module documentation for why). Returns how many bytes were accepted; an
    /// error once the pump has ended.
    pub fn send_input(&self, data: &[u8]) -> io::Result<usize> {
        let accepted = self.push_input(data)?;
        let dropped = data.len() - accepted;
        let mut input = self.shared.input();
        if dropped > 0 {
            if input.dropped == 0 {
                tracing::warn!(
                    pty = %self.pty.display(),
                    "console input dropped: the guest has not read the last {INPUT_MAX} bytes \
                     typed (paused or not reading its console)"
                );
            }
            input.dropped += dropped as u64;
        } else if input.queue.is_empty() && input.dropped > 0 {
            tracing::info!(
                pty = %self.pty.display(),
                "the guest reads its console again; {} bytes of input were dropped",
                input.dropped
            );
            input.dropped = 0;
        }
        Ok(accepted)
    }

    /// Writes or queues as much of `data` as fits; how much that was.
    fn push_input(&self, data: &[u8]) -> io::Result<usize> {
        if self.is_closed() {
            return Err(ended());
        }
        let mut input = self.shared.input();
        let mut written = 0;
        if input.queue.is_empty() {
            // Nothing waits ahead of it: straight to the pty, no hop through the pump task.
            written = write_now(self.fd.get_ref(), data)?;
        }
        let rest = &data[written..];
        let queued = rest.len().min(INPUT_MAX.saturating_sub(input.queue.len()));
        if queued > 0 {
            input.queue.extend(&rest[..queued]);
            self.shared.input_queued.notify_one();
        }
        Ok(written + queued)
    }

    /// Bytes of input queued for the guest (not yet taken by the pty).
    pub fn pending_input(&self) -> usize {
        self.shared.input().queue.len()
    }

    /// Sends keystrokes to the guest, all of them: waits while [`INPUT_MAX`] bytes are
    /// already queued for a guest that does not read (callers should bound this with a
    /// timeout). Console sessions use [`send_input`](Self::send_input), which never waits.
    pub async fn write(&self, mut data: &[u8]) -> io::Result<()> {
        let _one_writer = self.write_lock.lock().await;
        loop {
            let room = self.shared.input_room.notified();
            tokio::pin!(room);
            // Registered before trying, so room made in between is not missed.
            room.as_mut().enable();
            let n = self.push_input(data)?;
            data = &data[n..];
            if data.is_empty() {
                return Ok(());
            }
            room.await;
        }
    }

    pub fn is_closed(&self) -> bool {
        *self.shared.progress.borrow()
    }

    /// Why the pump ended, once it has.
    pub fn end(&self) -> Option<PumpEnd> {
        self.shared.lock().end.clone()
    }

    /// Resolves once the pump has ended (hangup, error or [`stop`](Self::stop)), i.e.
    /// all output the guest wrote is in the ring and the log.
    pub async fn closed(&self) {
        let mut rx = self.shared.progress.subscribe();
        let _ = rx.wait_for(|ended| *ended).await;
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

/// One reader's position in a pump's output (see [`ConsolePump::output`]). It holds no data
/// of its own and never slows the pump down.
pub struct Output {
    shared: Arc<Shared>,
    /// Stream offset of the next byte to take.
    next: u64,
    progress: watch::Receiver<bool>,
}

/// What one [`Output::take`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// Bytes appended.
    pub bytes: usize,
    /// Bytes skipped first because the reader fell more than [`BACKLOG`] behind.
    pub lost: u64,
}

impl Output {
    /// Waits until there is output this reader has not taken (true), or the pump has ended
    /// and everything still in the ring was taken (false). Cancel-safe.
    pub async fn ready(&mut self) -> bool {
        loop {
            // Marked seen before looking, so a batch published after the look wakes us.
            self.progress.borrow_and_update();
            let (total, ended) = {
                let st = self.shared.lock();
                (st.total, st.end.is_some())
            };
            if total > self.next {
                return true;
            }
            if ended || self.progress.changed().await.is_err() {
                return false;
            }
        }
    }

    /// Appends to `out` up to `max` bytes of output this reader has not taken yet.
    pub fn take(&mut self, max: usize, out: &mut BytesMut) -> Taken {
        let st = self.shared.lock();
        let start = st.total - st.ring.len() as u64;
        let lost = start.saturating_sub(self.next);
        let from = self.next.max(start);
        let n = usize::try_from(st.total - from).map_or(max, |a| a.min(max));
        let at = (from - start) as usize;
        out.reserve(n);
        let (a, b) = st.ring.as_slices();
        if at < a.len() {
            let k = n.min(a.len() - at);
            out.extend_from_slice(&a[at..at + k]);
            out.extend_from_slice(&b[..n - k]);
        } else {
            let at = at - a.len();
            out.extend_from_slice(&b[at..at + n]);
        }
        self.next = from + n as u64;
        Taken { bytes: n, lost }
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.readers -= 1;
        if st.readers == 0 && st.ring.len() > RING_SIZE {
            // Nobody to catch up any more: back to what a new session is shown.
            let excess = st.ring.len() - RING_SIZE;
            st.ring.drain(..excess);
            st.ring.shrink_to(RING_SIZE);
        }
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

    /// A pty pair: the master plays UML, the pump takes the slave.
    fn pty_pair() -> (File, PathBuf) {
        let p = nix::pty::openpty(None, None).expect("openpty");
        let path = nix::unistd::ttyname(std::os::fd::AsFd::as_fd(&p.slave)).expect("ttyname");
        drop(p.slave);
        (File::from(p.master), path)
    }

    async fn taken_until(out: &mut Output, n: usize) -> (BytesMut, u64) {
        let mut got = BytesMut::new();
        let mut lost = 0;
        while got.len() < n {
            let more = tokio::time::timeout(std::time::Duration::from_secs(10), out.ready())
                .await
                .expect("output in time");
            assert!(more, "pump ended early");
            lost += out.take(usize::MAX, &mut got).lost;
        }
        (got, lost)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn output_readers_take_batches_and_lose_only_when_far_behind() {
        let (mut master, path) = pty_pair();
        master.write_all(b"before").unwrap();
        let pump = start(&path, None).unwrap();
        let mut early = pump.output();
        assert_eq!(taken_until(&mut early, 6).await.0, &b"before"[..]);
        // A reader that attaches later starts with the recent output.
        let mut replay = pump.output();
        assert_eq!(
            taken_until(&mut replay, 6).await,
            (BytesMut::from(&b"before"[..]), 0)
        );

        // The guest writes far more than the backlog while `replay` takes nothing. It never
        // gets more than half the backlog ahead of `early`, however slow the machine.
        let total = 4 * BACKLOG;
        let data: Vec<u8> = (0..total).map(|i| (i % 253) as u8).collect();
        let expect = data.clone();
        let (progress, taken) = std::sync::mpsc::channel::<usize>();
        let writer = std::thread::spawn(move || -> io::Result<File> {
            let mut seen = 0;
            for (i, piece) in data.chunks(64 * 1024).enumerate() {
                while i * 64 * 1024 > seen + BACKLOG / 2 {
                    seen = taken.recv().map_err(|_| io::ErrorKind::BrokenPipe)?;
                }
                master.write_all(piece)?;
            }
            Ok(master)
        });
        let mut got = BytesMut::new();
        let mut lost = 0;
        while got.len() + (lost as usize) < total {
            let more = tokio::time::timeout(std::time::Duration::from_secs(10), early.ready())
                .await
                .expect("output in time");
            assert!(more, "pump ended early");
            lost += early.take(usize::MAX, &mut got).lost;
            let _ = progress.send(got.len());
        }
        assert_eq!(
            (&got[..], lost),
            (&expect[..], 0),
            "a reader that keeps up loses nothing"
        );
        let _master = writer.join().unwrap().unwrap();

        let mut rest = BytesMut::new();
        let t = replay.take(usize::MAX, &mut rest);
        assert_eq!(t.lost, (total - BACKLOG) as u64);
        assert_eq!(&rest[..], &expect[total - BACKLOG..]);
        // Nothing new: the next `take` is empty and `ready` waits.
        assert_eq!(replay.take(usize::MAX, &mut rest).bytes, 0);
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(100), replay.ready()).await;
        assert!(waited.is_err());

        // `max` bounds one take; the remainder comes with the next.
        let mut small = pump.output();
        let mut one = BytesMut::new();
        assert_eq!(small.take(1000, &mut one).bytes, 1000);
        assert_eq!(
            &one[..],
            &expect[total - RING_SIZE..total - RING_SIZE + 1000]
        );

        pump.stop();
        assert!(
            !replay.ready().await,
            "the end is reported once everything was taken"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn input_for_a_guest_that_does_not_read_is_bounded_and_never_waits() {
        let (mut master, path) = pty_pair();
        let pump = start(&path, None).unwrap();
        // Nobody reads the master: the kernel's buffer fills, then the pump's queue.
        let chunk: Vec<u8> = (0..4096).map(|i| b'a' + (i % 26) as u8).collect();
        let began = std::time::Instant::now();
        // What each call accepted is the start of what it was given.
        let mut expect = Vec::new();
        for _ in 0..256 {
            let n = pump.send_input(&chunk).unwrap();
            expect.extend_from_slice(&chunk[..n]);
        }
        let accepted = expect.len();
        assert!(began.elapsed() < std::time::Duration::from_secs(1));
        assert!(accepted < 256 * chunk.len(), "excess input was dropped");
        let pending = pump.pending_input();
        assert!(pending > INPUT_MAX / 2 && pending <= INPUT_MAX, "{pending}");

        // The guest reads again: everything accepted arrives, in order, and the queue drains.
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        set_nonblocking(&master);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while got.len() < accepted && std::time::Instant::now() < deadline {
            match master.read(&mut buf) {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
            }
        }
        assert_eq!(got.len(), accepted);
        assert!(got == expect, "input arrived in order");
        // The pump trims its queue just after the write the master has already seen.
        let drained = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while pump.pending_input() > 0 && std::time::Instant::now() < drained {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(pump.pending_input(), 0);
        // And a blocking `write` of more than the queue holds completes once it drains.
        let big = vec![b'z'; 3 * INPUT_MAX];
        let reader = std::thread::spawn(move || {
            let mut n = 0;
            while n < 3 * INPUT_MAX {
                match master.read(&mut buf) {
                    Ok(k) if k > 0 => n += k,
                    _ => std::thread::sleep(std::time::Duration::from_millis(1)),
                }
            }
            n
        });
        tokio::time::timeout(std::time::Duration::from_secs(10), pump.write(&big))
            .await
            .expect("write completes as the guest reads")
            .unwrap();
        assert_eq!(reader.join().unwrap(), big.len());
    }

    fn set_nonblocking(f: &File) {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let fd = std::os::fd::AsRawFd::as_raw_fd(f);
        let fl = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).unwrap());
        fcntl(fd, FcntlArg::F_SETFL(fl | OFlag::O_NONBLOCK)).unwrap();
    }
}
