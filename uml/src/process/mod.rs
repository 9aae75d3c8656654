//! Running UML guests as host processes: spawn, readiness, exit, kill, reattach.
//!
//! Independent of any protocol and of how the command line was built: [`launch`] takes a
//! ready argv.
//!
//! Process model:
//! - A guest is spawned as a direct child of the daemon, in its own session
//!   (`setsid`), so its pid is also its process group and session id, and it survives the
//!   daemon. stdin is /dev/null; stdout and stderr append to the guest's log file.
//! - UML forks helpers into the same group. Killing means signalling the whole group and
//!   waiting until no member is alive and none of them is an unreaped zombie of ours; then
//!   the helpers that left the group (UML's winch helper leads a session of its own, see
//!   `sweep.rs`) are found by their argv and killed too, so nothing of a guest outlives it.
//! - Children are reaped by one reaper thread ([`become_subreaper`], `reaper.rs`); the
//!   status of a guest we launched is handed to its [`Guest`]. Nothing else in the daemon
//!   may wait for children: use [`spawn_reaped`] for other helper programs.
//! - Exit is detected by events only: the reaper's status channel for our own children,
//!   a pidfd for anything else (e.g. guests found again after a daemon restart).

mod procfs;
mod reaper;
mod sweep;

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::UnixDatagram;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::mconsole::{self, Mconsole, MconsoleError, NotifyKind};

/// Inherited descriptors are staged at or above this number before being placed.
const INHERIT_HIGH_FD: i32 = 256;

/// UML's `UMID_LEN` is 64 including the terminating NUL.
pub const MAX_UMID_LEN: usize = 63;
/// `sizeof(sun_path)` minus the NUL: longer unix socket paths cannot be bound.
const MAX_SOCKET_PATH: usize = 107;
/// The line the kernel uses as its console (UML's default `console=tty0`): it is opened
/// during boot, so [`launch`] waits for its pty.
pub const BOOT_CONSOLE: &str = "con0";
/// How long [`launch`] keeps asking about any other line that answers plain `pts` (no
/// pty yet): a serial line gets its pty only when the guest opens it, maybe never, and
/// waiting longer would only delay every start.
pub const PTY_GRACE: Duration = Duration::from_millis(500);
const PTY_RETRY: Duration = Duration::from_millis(20);
/// After SIGKILL, how long [`Guest::kill`] waits for the group to vanish before giving up.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// SIGTERM → SIGKILL grace given to a guest that failed to start.
pub const FAILED_START_GRACE: Duration = Duration::from_secs(1);
/// How often [`finish_starting`] asks a booting guest's mconsole, and how long each try
/// may take.
const READY_POLL: Duration = Duration::from_millis(50);
const READY_POLL_TIMEOUT: Duration = Duration::from_millis(500);
/// How much of the log an error quotes.
const LOG_TAIL_LINES: usize = 25;
const LOG_TAIL_BYTES: u64 = 8 * 1024;

/// How a process ended, as far as we can know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitInfo {
    /// Exit status (0..=255).
    Exited(i32),
    /// Killed by this signal number.
    Signaled(i32),
    /// Not our child (e.g. reattached after a daemon restart): the status went to
    /// whoever its parent is.
    Unknown,
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            ExitInfo::Exited(c) => write!(f, "exit status {c}"),
            ExitInfo::Signaled(s) => match Signal::try_from(s) {
                Ok(sig) => write!(f, "killed by {sig}"),
                Err(_) => write!(f, "killed by signal {s}"),
            },
            ExitInfo::Unknown => write!(f, "exit status unknown"),
        }
    }
}

/// What a guest's exit means (see the backend doc, §4.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered itself off or halted (`reboot: System halted` / `Power down`).
    Poweroff,
    /// The guest rebooted and the kernel had `noreboot` (`reboot: Restarting system`).
    Reboot,
    /// A signal (UML panics die of SIGABRT), a `Kernel panic` line, or a non-zero exit.
    Crash,
    /// A clean exit with no tell-tale line (e.g. mconsole `halt`), or an unknown status
    /// with none: only the daemon knows what it asked for.
    Unknown,
}

/// Lines that tell how a guest ended, kernel lines first. The kernel prints its line a
/// moment before UML exits, and when UML exits the host kernel hangs up the pty and
/// discards whatever the console pump had not read yet, so that last line is sometimes
/// lost. The lines init systems print earlier in their shutdown are the fallback.
const EXIT_MARKERS: &[(&[u8], ExitReason)] = &[
    (b"Kernel panic", ExitReason::Crash),
    (b"reboot: Restarting system", ExitReason::Reboot),
    (b"reboot: System halted", ExitReason::Poweroff),
    (b"reboot: Power down", ExitReason::Poweroff),
    // busybox init
    (b"Requesting system reboot", ExitReason::Reboot),
    (b"Requesting system poweroff", ExitReason::Poweroff),
    (b"Requesting system halt", ExitReason::Poweroff),
    // sysvinit (Debian's initscripts)
    (b"Will now restart", ExitReason::Reboot),
    (b"Will now halt", ExitReason::Poweroff),
    (b"Will now power off", ExitReason::Poweroff),
    // systemd (target descriptions, old and new)
    (b"Reached target Reboot", ExitReason::Reboot),
    (b"Reached target System Reboot", ExitReason::Reboot),
    (b"Reached target Power-Off", ExitReason::Poweroff),
    (b"Reached target System Power Off", ExitReason::Poweroff),
    (b"Reached target Halt", ExitReason::Poweroff),
    (b"Reached target System Halt", ExitReason::Poweroff),
];

/// Classifies an exit from its status and the last console output (the pump's
/// [`tail`](crate::console::ConsolePump::tail), read after the pump has ended). The last
/// marker line in the tail wins, since a guest can print several.
pub fn classify_exit(info: &ExitInfo, console_tail: &[u8]) -> ExitReason {
    match *info {
        ExitInfo::Signaled(_) => return ExitReason::Crash,
        ExitInfo::Exited(c) if c != 0 => return ExitReason::Crash,
        _ => {}
    }
    EXIT_MARKERS
        .iter()
        .filter_map(|(m, r)| rfind(console_tail, m).map(|pos| (pos, *r)))
        .max_by_key(|(pos, _)| *pos)
        .map_or(ExitReason::Unknown, |(_, r)| r)
}

fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).rposition(|w| w == needle)
}

/// Why [`launch`] could not bring a guest up.
#[derive(Debug, thiserror::Error)]
pub enum StartupFailure {
    #[error("the process ended before it was ready ({exit}){}", panic.as_ref().map(|p| format!("; kernel panic: {p}")).unwrap_or_default())]
    Died {
        exit: ExitInfo,
        /// The message of a panic UML announced on the notify socket, if it did (the
        /// console, where the panic is printed, is not read yet at this point).
        panic: Option<String>,
    },
    #[error("mconsole did not come up within {0:?}")]
    Timeout(Duration),
    #[error(
        "UML announced mconsole {got:?} instead of {expected:?} (umid taken by another guest?)"
    )]
    WrongMconsole { expected: PathBuf, got: PathBuf },
    #[error("{0}")]
    Mconsole(MconsoleError),
    #[error("notify socket: {0}")]
    Notify(io::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid launch spec: {0}")]
    InvalidSpec(String),
    #[error("umid {umid:?} is already in use by pid {pid}")]
    UmidInUse { umid: String, pid: i32 },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("guest {umid:?} failed to start: {failure}{}", fmt_log_tail(log_tail))]
    Startup {
        umid: String,
        failure: StartupFailure,
        /// The last lines the process wrote to its log during this start.
        log_tail: String,
    },
    #[error("process {pid} is not running")]
    NotRunning { pid: i32 },
    #[error("process {pid} is not the expected guest: {reason}")]
    Mismatch { pid: i32, reason: String },
    #[error(transparent)]
    Mconsole(#[from] MconsoleError),
    #[error("processes {pids:?} of guest process group {pgid} are still alive after SIGKILL")]
    Survivors { pgid: i32, pids: Vec<i32> },
}

fn fmt_log_tail(tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("\n--- last lines of the guest log ---\n{tail}")
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// Everything [`launch`] needs.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The full command line; `argv[0]` is the kernel. It must contain the words
    /// `umid=<umid>`, `uml_dir=<uml_dir>` and `mconsole=notify:<notify_socket>`.
    pub argv: Vec<OsString>,
    /// Variables set on top of the daemon's environment (`TMPDIR` decides where UML
    /// puts its memory file).
    pub env: Vec<(OsString, OsString)>,
    pub uml_dir: PathBuf,
    pub umid: String,
    /// A path for a unix datagram socket (at most 107 bytes); created and removed here.
    pub notify_socket: PathBuf,
    /// Appended to (created 0600, parent directories created).
    pub log_file: PathBuf,
    /// UML devices configured as `pts` whose host pty to learn, e.g. `con0`, `ssl0`.
    pub pty_devices: Vec<String>,
    /// From spawn to "mconsole answers and console ptys are known".
    pub ready_timeout: Duration,
    /// Descriptors the guest inherits, at the given numbers (e.g. the pty a console line
    /// uses, see [`PtyLine`]). Targets must be 3 or more and distinct.
    pub inherit_fds: Vec<(Arc<OwnedFd>, i32)>,
}

/// A running (or, once it has exited, a formerly running) guest process.
///
/// Dropping it leaves the guest running; it can be found again with [`reattach`].
#[derive(Debug, Clone)]
pub struct Guest {
    /// Main UML pid, also its process group and session id.
    pub pid: i32,
    /// `/proc/PID/stat` field 22: with `pid`, what identifies the process across a
    /// daemon restart.
    pub start_time: u64,
    pub umid: String,
    pub uml_dir: PathBuf,
    pub mconsole_path: PathBuf,
    /// `(device, host pty)` for each requested pty device; `None` while UML has not
    /// allocated one (a serial line the guest has not opened yet).
    pub ptys: Vec<(String, Option<PathBuf>)>,
    pidfd: Arc<OwnedFd>,
    /// Our child's status, from the reaper; `None` when it is not our child.
    exit: Option<watch::Receiver<Option<ExitInfo>>>,
}

/// Makes this process a child subreaper (orphaned UML helpers are reparented to it
/// instead of to PID 1) and starts the reaper thread that collects every child.
///
/// Call once at daemon start. From then on nothing else may `wait` for children.
pub fn become_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)?;
    reaper::ensure_running();
    Ok(())
}

/// A helper program started under the reaper (any program other than a guest that the
/// daemon needs to run, since `tokio::process` would race with the reaper).
#[derive(Debug)]
pub struct ReapedChild {
    pub pid: i32,
    pidfd: OwnedFd,
    exit: watch::Receiver<Option<ExitInfo>>,
}

/// Spawns `cmd` (configure stdio, env, `process_group` etc. on it first) and registers
/// it with the reaper.
pub fn spawn_reaped(cmd: &mut Command) -> io::Result<ReapedChild> {
    let s = reaper::spawn(cmd)?;
    Ok(ReapedChild {
        pid: s.pid,
        pidfd: s.pidfd,
        exit: s.exit,
    })
}

impl ReapedChild {
    /// Waits until the child has exited and has been reaped.
    pub async fn wait(&self) -> ExitInfo {
        wait_status(&self.exit).await.unwrap_or(ExitInfo::Unknown)
    }

    /// Sends a signal to exactly this child (pidfd, so never to a recycled pid).
    pub fn signal(&self, sig: Signal) -> io::Result<()> {
        reaper::pidfd_send_signal(&self.pidfd, sig)
    }
}

async fn wait_status(rx: &watch::Receiver<Option<ExitInfo>>) -> Option<ExitInfo> {
    let mut rx = rx.clone();
    let r = rx.wait_for(|s| s.is_some()).await.ok()?;
    *r
}

/// Resolves once the process behind `pidfd` has terminated (zombie or reaped).
async fn wait_pidfd(pidfd: &OwnedFd) {
    match pidfd.try_clone().and_then(register_readable) {
        Ok(afd) => {
            // Readable means exited; an error means the runtime is shutting down.
            let _ = afd.readable().await;
        }
        Err(e) => {
            // Only if epoll refuses a pidfd, which it does not on supported kernels.
            tracing::error!("cannot watch a pidfd ({e}); falling back to polling");
            while !pidfd_exited(pidfd) {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Registers a pidfd with the runtime for readability (= the process has exited).
fn register_readable(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the OwnedFd is open, is moved into the AsyncFd and is closed only when the
    // AsyncFd drops it, so the raw fd stays valid and the same for the AsyncFd's lifetime.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(io::Error::from)
}

fn pidfd_exited(pidfd: &OwnedFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(n) if n > 0 => fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP)),
        _ => false,
    }
}

/// The pid of a live process holding `<uml_dir>/<umid>/pid`, if any. UML itself refuses
/// such a umid and silently carries on under a random one, so a start must not be tried.
/// Mirrors UML's test: the pid answers `kill(pid, 0)` (a zombie counts as alive).
pub fn umid_in_use(uml_dir: &Path, umid: &str) -> Option<i32> {
    let s = fs::read_to_string(uml_dir.join(umid).join("pid")).ok()?;
    let pid: i32 = s.trim().parse().ok().filter(|&p| p > 0)?;
    match signal::kill(Pid::from_raw(pid), None) {
        Err(nix::errno::Errno::ESRCH) => None,
        _ => Some(pid),
    }
}

/// `/proc/PID/stat` field 22 of a live process.
pub fn start_time_of(pid: i32) -> Option<u64> {
    procfs::read_stat(pid).map(|s| s.starttime)
}

fn validate_umid(umid: &str) -> Result<(), Error> {
    let bad = |why: &str| Err(Error::InvalidSpec(format!("umid {umid:?}: {why}")));
    if umid.is_empty() || umid == "." || umid == ".." {
        return bad("not a usable name");
    }
    if umid.len() > MAX_UMID_LEN {
        return bad("longer than 63 bytes");
    }
    if umid.contains(['/', '\0']) {
        return bad("contains '/' or NUL");
    }
    Ok(())
}

fn same_path(a: &Path, b: &Path) -> bool {
    // Component-wise, so "/a//b/" equals "/a/b" (UML appends a '/' to uml_dir).
    a.components().eq(b.components())
}

impl LaunchSpec {
    fn mconsole_path(&self) -> PathBuf {
        self.uml_dir.join(&self.umid).join("mconsole")
    }

    fn validate(&self) -> Result<(), Error> {
        let bad = |s: String| Err(Error::InvalidSpec(s));
        validate_umid(&self.umid)?;
        if self.argv.first().is_none_or(|a| a.is_empty()) {
            return bad("argv[0] (the kernel) is missing".into());
        }
        let words = &self.argv[1..];
        let value = |key: &str| -> Option<&OsStr> {
            words
                .iter()
                .rev()
                .find_map(|w| w.as_bytes().strip_prefix(key.as_bytes()))
                .map(OsStr::from_bytes)
        };
        if value("umid=") != Some(OsStr::new(&self.umid)) {
            return bad(format!("argv lacks umid={}", self.umid));
        }
        if !value("uml_dir=").is_some_and(|d| same_path(Path::new(d), &self.uml_dir)) {
            return bad(format!("argv lacks uml_dir={}", self.uml_dir.display()));
        }
        if !value("mconsole=notify:").is_some_and(|p| same_path(Path::new(p), &self.notify_socket))
        {
            return bad(format!(
                "argv lacks mconsole=notify:{}",
                self.notify_socket.display()
            ));
        }
        for p in [&self.mconsole_path(), &self.notify_socket] {
            if p.as_os_str().len() > MAX_SOCKET_PATH {
                return bad(format!(
                    "socket path {} is longer than {MAX_SOCKET_PATH} bytes",
                    p.display()
                ));
            }
        }
        if self.ready_timeout.is_zero() {
            return bad("ready_timeout is zero".into());
        }
        Ok(())
    }
}

/// Starts a guest and returns once its mconsole answers and its console ptys are known.
/// On any failure the guest's whole process group is killed and reaped, and the error
/// quotes the end of the log.
pub async fn launch(spec: &LaunchSpec) -> Result<Guest, Error> {
    launch_with(spec, |_| {}).await
}

/// [`launch`], calling `on_spawn` with the guest as soon as its process exists (before it
/// is ready), so the caller can record it: a daemon that dies while the guest boots must
/// leave enough behind for the next one to find it.
pub async fn launch_with(spec: &LaunchSpec, on_spawn: impl FnOnce(&Guest)) -> Result<Guest, Error> {
    spec.validate()?;
    if let Some(pid) = umid_in_use(&spec.uml_dir, &spec.umid) {
        return Err(Error::UmidInUse {
            umid: spec.umid.clone(),
            pid,
        });
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&spec.uml_dir)
        .map_err(io_err(format!("cannot create {}", spec.uml_dir.display())))?;

    let (log, log_start) = open_log(&spec.log_file, &spec.argv)?;
    let notify = NotifySocket::bind(&spec.notify_socket)?;

    let mut cmd = Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..])
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(
            log.try_clone()
                .map_err(io_err("cannot duplicate the log fd"))?,
        )
        .stderr(log);
    // Sources first go above every target, so placing one never overwrites another.
    let mut moves = Vec::with_capacity(spec.inherit_fds.len());
    for (fd, target) in &spec.inherit_fds {
        let high = nix::fcntl::fcntl(
            fd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(INHERIT_HIGH_FD),
        )
        .map_err(|e| io_err("cannot duplicate an inherited fd")(io::Error::from(e)))?;
        // SAFETY: F_DUPFD_CLOEXEC just returned this new descriptor, owned by nobody else.
        moves.push((unsafe { OwnedFd::from_raw_fd(high) }, *target));
    }
    let raw_moves: Vec<(i32, i32)> = moves.iter().map(|(f, t)| (f.as_raw_fd(), *t)).collect();
    // SAFETY: runs in the forked child before exec; setsid and dup2 are async-signal-safe
    // and the closure only reads `raw_moves`, which the parent does not change meanwhile.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setsid().map_err(io::Error::from)?;
            for &(from, to) in &raw_moves {
                // dup2 clears close-on-exec on the target: the guest keeps it.
                if nix::libc::dup2(from, to) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = reaper::spawn(&mut cmd).map_err(io_err(format!(
        "cannot start {}",
        Path::new(&spec.argv[0]).display()
    )))?;
    drop(moves);
    // Read at once: the child cannot have been reaped yet unless it already died, and
    // then start_time does not matter.
    let start_time = start_time_of(child.pid).unwrap_or(0);
    let mut guest = Guest {
        pid: child.pid,
        start_time,
        umid: spec.umid.clone(),
        uml_dir: spec.uml_dir.clone(),
        mconsole_path: spec.mconsole_path(),
        ptys: Vec::new(),
        pidfd: Arc::new(child.pidfd),
        exit: Some(child.exit),
    };
    tracing::debug!(pid = guest.pid, umid = %guest.umid, "guest spawned");
    // If this future is dropped half-way, nobody would know the guest: kill it.
    let mut cancel_guard = KillOnDrop(Some(guest.clone()));
    on_spawn(&guest);

    let deadline = Instant::now() + spec.ready_timeout;
    match wait_ready(&guest, &notify, spec, deadline).await {
        Ok(ptys) => {
            cancel_guard.0 = None;
            guest.ptys = ptys;
            Ok(guest)
        }
        Err(failure) => {
            if let Err(e) = guest.kill(FAILED_START_GRACE).await {
                tracing::error!(umid = %guest.umid, "cleaning up a failed start: {e}");
            }
            cancel_guard.0 = None;
            Err(Error::Startup {
                umid: spec.umid.clone(),
                failure,
                log_tail: read_log_tail(&spec.log_file, log_start),
            })
        }
    }
}

/// Kills a half-started guest's group when [`launch`] is cancelled.
struct KillOnDrop(Option<Guest>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(g) = self.0.take() {
            tracing::warn!(umid = %g.umid, pid = g.pid, "start cancelled, killing the guest");
            let children = g.children();
            g.signal_group(Signal::SIGKILL);
            let helpers = g.helpers(&children);
            sweep::kill_verified(&helpers.iter().collect::<Vec<_>>());
        }
    }
}

async fn wait_ready(
    guest: &Guest,
    notify: &NotifySocket,
    spec: &LaunchSpec,
    deadline: Instant,
) -> Result<Vec<(String, Option<PathBuf>)>, StartupFailure> {
    let announced = tokio::select! {
        r = notify.recv_mconsole_path() => r.map_err(StartupFailure::Notify)?,
        exit = guest.wait_exit() => return Err(notify.died(exit)),
        _ = tokio::time::sleep_until(deadline) => {
            return Err(StartupFailure::Timeout(spec.ready_timeout))
        }
    };
    if !same_path(&announced, &guest.mconsole_path) {
        return Err(StartupFailure::WrongMconsole {
            expected: guest.mconsole_path.clone(),
            got: announced,
        });
    }
    tokio::select! {
        r = discover_ptys(guest, &spec.pty_devices, deadline) => r.map_err(StartupFailure::Mconsole),
        exit = guest.wait_exit() => Err(notify.died(exit)),
        _ = tokio::time::sleep_until(deadline) => Err(StartupFailure::Timeout(spec.ready_timeout)),
    }
}

/// Asks `config <dev>` for every device, in rounds, until each names a pty or is given
/// up on. Right after the notification UML has not registered its lines yet and answers
/// "Bad configuration option": retried until `deadline`. A line that answers plain `pts`
/// has no pty yet: [`BOOT_CONSOLE`] (the kernel console, opened during boot) is waited
/// for until `deadline`, any other line for [`PTY_GRACE`] (a serial line only gets its
/// pty when the guest opens it, which may be never).
async fn discover_ptys(
    guest: &Guest,
    devs: &[String],
    deadline: Instant,
) -> Result<Vec<(String, Option<PathBuf>)>, MconsoleError> {
    struct Probe<'a> {
        dev: &'a str,
        /// Decided: the pty, or none.
        result: Option<Option<PathBuf>>,
        /// When the line first answered plain `pts`.
        pts_since: Option<Instant>,
    }
    let mc = guest.mconsole();
    let mut probes: Vec<Probe<'_>> = devs
        .iter()
        .map(|d| Probe {
            dev: d,
            result: None,
            pts_since: None,
        })
        .collect();
    loop {
        for p in probes.iter_mut().filter(|p| p.result.is_none()) {
            let now = Instant::now();
            let last_try = now + PTY_RETRY >= deadline;
            match mc.config_get(p.dev).await {
                Ok(reply) => {
                    if let Some(path) = parse_pty_reply(&reply) {
                        p.result = Some(Some(path));
                    } else if reply.trim() != "pts" {
                        tracing::warn!(umid = %guest.umid, dev = p.dev, reply, "not a pts line");
                        p.result = Some(None);
                    } else {
                        let since = *p.pts_since.get_or_insert(now);
                        let limit = if p.dev == BOOT_CONSOLE {
                            deadline
                        } else {
                            since + PTY_GRACE
                        };
                        if now + PTY_RETRY >= limit {
                            p.result = Some(None);
                        }
                    }
                }
                Err(MconsoleError::Remote { .. }) if !last_try => {}
                Err(e) => return Err(e),
            }
        }
        if probes.iter().all(|p| p.result.is_some()) {
            return Ok(probes
                .into_iter()
                .map(|p| (p.dev.to_owned(), p.result.flatten()))
                .collect());
        }
        tokio::time::sleep(PTY_RETRY).await;
    }
}

/// `pts:/dev/pts/N` → the path. Only absolute paths under /dev are believed.
fn parse_pty_reply(reply: &str) -> Option<PathBuf> {
    let p = Path::new(reply.trim().strip_prefix("pts:")?);
    (p.is_absolute() && p.starts_with("/dev/")).then(|| p.to_path_buf())
}

/// Finds a guest again (typically after a daemon restart) from what the daemon saved.
/// Checks that `pid` is alive, started at `start_time`, leads its own session (so its
/// group can be killed), is the pid UML recorded for `umid`, and that its mconsole
/// answers `version`. Pty paths are asked once each.
pub async fn reattach(
    pid: i32,
    start_time: u64,
    umid: &str,
    uml_dir: &Path,
    pty_devices: &[String],
) -> Result<Guest, Error> {
    validate_umid(umid)?;
    let pidfd = reaper::pidfd_open(pid).map_err(|_| Error::NotRunning { pid })?;
    // Read after opening the pidfd: if the start time matches now, the pidfd is that
    // process and not a later one with a recycled pid.
    let st = procfs::read_stat(pid).ok_or(Error::NotRunning { pid })?;
    if st.is_zombie() {
        return Err(Error::NotRunning { pid });
    }
    let mismatch = |reason: String| Err(Error::Mismatch { pid, reason });
    if st.starttime != start_time {
        return mismatch(format!(
            "start time {} instead of {start_time} (pid reused)",
            st.starttime
        ));
    }
    if st.pgrp != pid || st.session != pid {
        return mismatch("not the leader of its own session and process group".into());
    }
    let pidfile = uml_dir.join(umid).join("pid");
    let recorded = fs::read_to_string(&pidfile)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    if recorded != Some(pid) {
        return mismatch(format!("{} holds {recorded:?}", pidfile.display()));
    }
    let mut guest = Guest::found(pid, start_time, umid, uml_dir, pidfd);
    guest.mconsole().version().await?;
    for dev in pty_devices {
        let path = guest.query_pty(dev).await?;
        guest.ptys.push((dev.clone(), path));
    }
    Ok(guest)
}

/// For a guest that may still be booting (its daemon died while starting it), the quick
/// first step of reattaching: checks, without asking the guest anything,
/// that `pid` is alive, started at `start_time` and leads its own session and process
/// group (a guest is spawned that way, and its daemon records it only once spawned), and
/// returns a handle on it. The handle is enough to wait for the process's exit or to
/// [`Guest::kill`] it with its helpers, but not to drive it: its mconsole may not answer
/// yet, and nothing confirms yet that UML runs under `umid` (see [`finish_starting`]).
pub fn find_starting(
    pid: i32,
    start_time: u64,
    umid: &str,
    uml_dir: &Path,
) -> Result<Guest, Error> {
    validate_umid(umid)?;
    let pidfd = reaper::pidfd_open(pid).map_err(|_| Error::NotRunning { pid })?;
    // Read after opening the pidfd: if the start time matches now, the pidfd is that
    // process and not a later one with a recycled pid.
    let st = match procfs::read_stat(pid) {
        Some(st) if st.starttime == start_time && !st.is_zombie() => st,
        Some(st) if st.starttime != start_time => {
            return Err(Error::Mismatch {
                pid,
                reason: format!(
                    "start time {} instead of {start_time} (pid reused)",
                    st.starttime
                ),
            })
        }
        _ => return Err(Error::NotRunning { pid }),
    };
    if st.pgrp != pid || st.session != pid {
        return Err(Error::Mismatch {
            pid,
            reason: "not the leader of its own session and process group".into(),
        });
    }
    Ok(Guest::found(pid, start_time, umid, uml_dir, pidfd))
}

/// The slow second step after [`find_starting`]: waits until the mconsole of the guest
/// [`find_starting`] found answers, at most until `ready_timeout` after the process
/// started, then [`reattach`]es to it. Fails as soon as the process ends. On failure the
/// guest is left as it is: killing it is the caller's decision.
pub async fn finish_starting(
    starting: &Guest,
    pty_devices: &[String],
    ready_timeout: Duration,
) -> Result<Guest, Error> {
    let pid = starting.pid;
    let age = procfs::age(starting.start_time).unwrap_or_default();
    let deadline = Instant::now() + ready_timeout.saturating_sub(age);
    let mc = Mconsole::new(&starting.mconsole_path).with_timeout(READY_POLL_TIMEOUT);
    let answered = async {
        while mc.version().await.is_err() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(READY_POLL).await;
        }
        true
    };
    tokio::select! {
        answered = answered => if !answered {
            return Err(Error::Startup {
                umid: starting.umid.clone(),
                failure: StartupFailure::Timeout(ready_timeout),
                log_tail: String::new(),
            });
        },
        _ = starting.wait_exit() => return Err(Error::NotRunning { pid }),
    }
    reattach(
        pid,
        starting.start_time,
        &starting.umid,
        &starting.uml_dir,
        pty_devices,
    )
    .await
}

/// Kills every process running with `uml_dir` in its argv that belongs to none of the
/// guests whose main pids are in `keep` (nor to a guest this process launched): guests
/// and helpers a previous daemon left behind that no status file claims. Then removes the
/// umid directories UML left for guests that are gone. Returns the pids killed.
pub async fn kill_strays(uml_dir: &Path, keep: &[i32]) -> Result<Vec<i32>, Error> {
    reaper::ensure_running();
    let found = sweep::strays(uml_dir, keep);
    if found.is_empty() {
        sweep::remove_stale_umid_dirs(uml_dir, keep);
        return Ok(Vec::new());
    }
    let pids: Vec<i32> = found.iter().map(|s| s.pid).collect();
    let scan = || {
        let mut now = sweep::rescan(&found);
        for s in sweep::strays(uml_dir, keep) {
            if now.iter().all(|n| n.pid != s.pid) {
                now.push(s);
            }
        }
        now
    };
    wait_gone(scan, sweep::kill_verified, Instant::now() + KILL_WAIT)
        .await
        .map_err(|left| Error::Survivors {
            pgid: left.first().copied().unwrap_or(0),
            pids: left,
        })?;
    sweep::remove_stale_umid_dirs(uml_dir, keep);
    Ok(pids)
}

/// A pty the daemon creates for a console line, so the line outlives the daemon: the guest
/// gets the slave as the line (`conN=fd:K`) and inherits a copy of the master that it never
/// uses, which keeps the pty from hanging up while no daemon holds the master. A restarted
/// daemon takes the master back with [`Guest::take_fd`].
#[derive(Debug)]
pub struct PtyLine {
    pub master: OwnedFd,
    pub slave: OwnedFd,
    /// `/dev/pts/N`, as shown to clients.
    pub path: PathBuf,
}

impl PtyLine {
    pub fn open() -> io::Result<PtyLine> {
        let pty = nix::pty::openpty(None, None).map_err(io::Error::from)?;
        for fd in [&pty.master, &pty.slave] {
            nix::fcntl::fcntl(
                fd.as_raw_fd(),
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .map_err(io::Error::from)?;
        }
        // The guest drives the line: no echo or line editing on the host side.
        let mut tio = nix::sys::termios::tcgetattr(&pty.slave).map_err(io::Error::from)?;
        nix::sys::termios::cfmakeraw(&mut tio);
        nix::sys::termios::tcsetattr(&pty.slave, nix::sys::termios::SetArg::TCSANOW, &tio)
            .map_err(io::Error::from)?;
        let path = fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd()))?;
        Ok(PtyLine {
            master: pty.master,
            slave: pty.slave,
            path,
        })
    }
}

impl Guest {
    /// A handle on a guest this process did not launch (or launched and let go), found by
    /// its pid, start time and umid.
    fn found(pid: i32, start_time: u64, umid: &str, uml_dir: &Path, pidfd: OwnedFd) -> Guest {
        Guest {
            pid,
            start_time,
            umid: umid.to_owned(),
            uml_dir: uml_dir.to_owned(),
            mconsole_path: uml_dir.join(umid).join("mconsole"),
            ptys: Vec::new(),
            pidfd: Arc::new(pidfd),
            // Still registered if this very process launched it and dropped the handle.
            exit: reaper::lookup(pid),
        }
    }

    /// A duplicate of the guest's descriptor `fd` (pidfd_getfd; Linux 5.6+, needs the
    /// right to ptrace the guest, which its owner and root have).
    pub fn take_fd(&self, fd: i32) -> io::Result<OwnedFd> {
        // SAFETY: pidfd_getfd takes a pidfd we own, a plain integer and flags 0; it returns
        // a new descriptor that nothing else owns, or -1.
        let r = unsafe {
            nix::libc::syscall(nix::libc::SYS_pidfd_getfd, self.pidfd.as_raw_fd(), fd, 0)
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor returned by the kernel just above.
        Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
    }

    pub fn mconsole(&self) -> Mconsole {
        Mconsole::new(&self.mconsole_path)
    }

    /// True when this process launched the guest, so its exit status will be known.
    pub fn is_child(&self) -> bool {
        self.exit.is_some()
    }

    /// The pty learnt for `dev` at start or reattach.
    pub fn pty(&self, dev: &str) -> Option<&Path> {
        self.ptys
            .iter()
            .find(|(d, _)| d == dev)
            .and_then(|(_, p)| p.as_deref())
    }

    /// Asks mconsole for `dev`'s pty now (a serial line gets one once the guest opens it).
    pub async fn query_pty(&self, dev: &str) -> Result<Option<PathBuf>, MconsoleError> {
        Ok(parse_pty_reply(&self.mconsole().config_get(dev).await?))
    }

    /// False once the main process has terminated (even if not yet reaped).
    pub fn is_alive(&self) -> bool {
        !pidfd_exited(&self.pidfd)
    }

    /// Resolves when the main process has exited; at once if it already has. For our
    /// own child this also means it has been reaped and the status is known.
    pub async fn wait_exit(&self) -> ExitInfo {
        if let Some(rx) = &self.exit {
            if let Some(info) = wait_status(rx).await {
                return info;
            }
        }
        wait_pidfd(&self.pidfd).await;
        ExitInfo::Unknown
    }

    /// SIGTERM to the whole process group, SIGKILL after `grace` (at once for a zero
    /// grace, without SIGTERM), and returns once no
    /// process of the group is alive and none is a zombie waiting for us. (A zombie whose
    /// parent is another process, e.g. a PID 1 that does not reap, is beyond our reach and
    /// only logged.)
    ///
    /// Then the guest's helpers outside the group (UML's winch helper, see `sweep.rs`) get
    /// SIGKILL and are waited for in the same way, and a umid directory UML left behind is
    /// removed: nothing of the guest outlives this call.
    pub async fn kill(&self, grace: Duration) -> Result<(), Error> {
        reaper::ensure_running();
        // Taken first: once the main process is gone its children are reparented, and
        // their parent no longer says whose they were.
        let children = self.children();
        let group = self.kill_group(grace).await;
        let helpers = self.kill_helpers(&children).await;
        group.and(helpers)
    }

    async fn kill_group(&self, grace: Duration) -> Result<(), Error> {
        if !grace.is_zero() {
            self.signal_group(Signal::SIGTERM);
            if wait_group_gone(self.pid, Instant::now() + grace)
                .await
                .is_ok()
            {
                return Ok(());
            }
            tracing::info!(umid = %self.umid, pid = self.pid, "guest ignored SIGTERM, killing");
        }
        self.signal_group(Signal::SIGKILL);
        wait_group_gone(self.pid, Instant::now() + KILL_WAIT)
            .await
            .map_err(|pids| Error::Survivors {
                pgid: self.pid,
                pids,
            })
    }

    /// SIGKILL to the helpers outside the group until none is left.
    async fn kill_helpers(&self, children: &[procfs::Stat]) -> Result<(), Error> {
        // Every helper seen so far: once dead its argv is gone, but a zombie of ours must
        // still be waited for until the reaper has collected it.
        let seen = std::sync::Mutex::new(Vec::<procfs::Stat>::new());
        let scan = || {
            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            for s in self.helpers(children) {
                if seen.iter().all(|k| k.pid != s.pid) {
                    tracing::info!(umid = %self.umid, pid = s.pid, "killing a helper the guest left behind");
                    seen.push(s);
                }
            }
            sweep::rescan(&seen)
        };
        let result = wait_gone(scan, sweep::kill_verified, Instant::now() + KILL_WAIT)
            .await
            .map_err(|pids| Error::Survivors {
                pgid: self.pid,
                pids,
            });
        if result.is_ok() {
            self.remove_umid_dir();
        }
        result
    }

    /// The main process's children outside its group, while it lives.
    fn children(&self) -> Vec<procfs::Stat> {
        if !self.is_alive() {
            return Vec::new();
        }
        let found: Vec<procfs::Stat> = procfs::all_stats()
            .into_iter()
            .filter(|s| s.ppid == self.pid && s.pgrp != self.pid)
            .collect();
        // Still alive after the scan, so `pid` was not reused meanwhile.
        if self.is_alive() {
            found
        } else {
            Vec::new()
        }
    }

    /// The guest's live processes outside its group: `children` (see [`Self::children`])
    /// and whatever runs with its `uml_dir` and `umid` and belongs to no other guest.
    fn helpers(&self, children: &[procfs::Stat]) -> Vec<procfs::Stat> {
        sweep::helpers(self.pid, &self.umid, &self.uml_dir, children)
    }

    /// UML removes `<uml_dir>/<umid>` when it exits cleanly, not when killed; a stale one
    /// whose pid is later reused by another process would make UML refuse the umid.
    fn remove_umid_dir(&self) {
        let dir = self.uml_dir.join(&self.umid);
        let recorded = fs::read_to_string(dir.join("pid"))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        if recorded == Some(self.pid) {
            let _ = fs::remove_dir_all(&dir);
        }
    }

    /// Signals the main process (through its pidfd) and every live member of its group
    /// and session.
    pub fn signal_group(&self, sig: Signal) {
        let _ = reaper::pidfd_send_signal(&self.pidfd, sig);
        let pgid = self.pid;
        // Never our own group, whatever the caller passed (reattach checks leadership,
        // this is the last line of defence).
        let me = procfs::read_stat(std::process::id() as i32);
        if me
            .as_ref()
            .is_some_and(|m| m.pgrp == pgid || m.session == pgid)
        {
            tracing::error!(pgid, "refusing to signal our own process group");
            return;
        }
        let live: Vec<procfs::Stat> = procfs::group_members(pgid)
            .into_iter()
            .filter(|s| !s.is_zombie())
            .collect();
        // Only while a member lives, so a recycled group id is never hit.
        if !live.is_empty() {
            let _ = signal::killpg(Pid::from_raw(pgid), sig);
        }
        for s in live.iter().filter(|s| s.pgrp != pgid) {
            let _ = signal::kill(Pid::from_raw(s.pid), sig);
        }
    }

    /// Pids of the guest's processes still present: its group and session (zombies
    /// included) and its live helpers outside them.
    pub fn processes(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = procfs::group_members(self.pid)
            .into_iter()
            .map(|s| s.pid)
            .collect();
        for h in self.helpers(&self.children()) {
            if !pids.contains(&h.pid) {
                pids.push(h.pid);
            }
        }
        pids
    }

    /// CPU time (user + system, including reaped children) of every process of the
    /// guest, in nanoseconds. Under SKAS the guest's userspace runs in helper processes,
    /// so counting the main pid alone would under-report.
    pub fn cpu_time_ns(&self) -> u64 {
        let ticks: u128 = procfs::group_members(self.pid)
            .iter()
            .map(|s| u128::from(s.cpu_ticks()))
            .sum();
        let ns = ticks * 1_000_000_000 / u128::from(procfs::clock_ticks_per_sec());
        u64::try_from(ns).unwrap_or(u64::MAX)
    }

    /// Resident memory of the main process in KiB (the guest's RAM is a shared mapping
    /// that every helper also maps, so adding them up would over-count).
    pub fn rss_kib(&self) -> u64 {
        procfs::read_stat(self.pid)
            .filter(|s| s.starttime == self.start_time)
            .map_or(0, |s| s.rss.saturating_mul(procfs::page_size()) / 1024)
    }
}

/// Waits until no process of the group is alive and none is our unreaped zombie.
/// Returns the remaining pids on timeout.
async fn wait_group_gone(pgid: i32, deadline: Instant) -> Result<(), Vec<i32>> {
    wait_gone(|| procfs::group_members(pgid), |_| {}, deadline).await
}

/// Waits until `scan` finds no live process and none that is our unreaped zombie, calling
/// `each_round` with the live ones at every scan (to signal newcomers too). Returns the
/// remaining pids on timeout.
async fn wait_gone(
    scan: impl Fn() -> Vec<procfs::Stat>,
    each_round: impl Fn(&[&procfs::Stat]),
    deadline: Instant,
) -> Result<(), Vec<i32>> {
    let me = std::process::id() as i32;
    let mut reaped = reaper::reaped_events();
    loop {
        reaped.borrow_and_update();
        let members = scan();
        let (zombies, alive): (Vec<_>, Vec<_>) = members.iter().partition(|s| s.is_zombie());
        if !alive.is_empty() {
            each_round(&alive);
        }
        let our_zombies = zombies.iter().filter(|s| s.ppid == me).count();
        for z in zombies.iter().filter(|s| s.ppid != me) {
            tracing::warn!(
                pid = z.pid,
                ppid = z.ppid,
                "zombie of a guest left to its parent"
            );
        }
        if alive.is_empty() && our_zombies == 0 {
            return Ok(());
        }
        let fds: Vec<AsyncFd<OwnedFd>> = alive
            .iter()
            .filter_map(|s| {
                let fd = reaper::pidfd_open(s.pid).ok()?;
                // Same process as in the scan, not a recycled pid?
                if start_time_of(s.pid) != Some(s.starttime) {
                    return None;
                }
                register_readable(fd).ok()
            })
            .collect();
        let all_exited = async {
            for fd in &fds {
                let _ = fd.readable().await;
            }
        };
        let lost = alive.len() - fds.len();
        tokio::select! {
            _ = all_exited, if !fds.is_empty() => {}
            _ = reaped.changed(), if our_zombies > 0 => {}
            // A process vanished between scan and pidfd_open: rescan soon.
            _ = tokio::time::sleep(Duration::from_millis(10)), if lost > 0 => {}
            _ = tokio::time::sleep_until(deadline) => {
                return Err(members.iter().map(|s| s.pid).collect());
            }
        }
    }
}

/// The notify socket: bound before spawn, unlinked when dropped.
struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn bind(path: &Path) -> Result<Self, Error> {
        if let Some(dir) = path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err(format!("cannot create {}", dir.display())))?;
        }
        match fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                // Stale, from a previous start.
                fs::remove_file(path).map_err(io_err(format!(
                    "cannot remove stale socket {}",
                    path.display()
                )))?;
            }
            Ok(_) => {
                return Err(Error::InvalidSpec(format!(
                    "notify socket {} exists and is not a socket",
                    path.display()
                )))
            }
            Err(_) => {}
        }
        let sock =
            UnixDatagram::bind(path).map_err(io_err(format!("cannot bind {}", path.display())))?;
        Ok(NotifySocket {
            sock,
            path: path.to_owned(),
        })
    }

    /// Waits for the "mconsole socket is up" notification and returns its path.
    /// Anything else arriving on the socket is ignored.
    async fn recv_mconsole_path(&self) -> io::Result<PathBuf> {
        let mut buf = vec![0u8; mconsole::NOTIFY_HEADER + mconsole::MAX_DATA + 1];
        loop {
            let n = self.sock.recv(&mut buf).await?;
            match mconsole::parse_notify(&buf[..n.min(buf.len())]) {
                Ok(note) if note.kind == NotifyKind::Socket => {
                    return Ok(PathBuf::from(OsString::from_vec(note.data)));
                }
                Ok(note) => tracing::debug!(kind = ?note.kind, "ignoring UML notification"),
                Err(e) => tracing::warn!("ignoring a bad datagram on the notify socket: {e}"),
            }
        }
    }
}

impl NotifySocket {
    /// The failure for a guest that died during start, with the panic message UML may
    /// have sent (it is still queued on the socket).
    fn died(&self, exit: ExitInfo) -> StartupFailure {
        let mut panic = None;
        let mut buf = vec![0u8; mconsole::NOTIFY_HEADER + mconsole::MAX_DATA + 1];
        while let Ok(n) = self.sock.try_recv(&mut buf) {
            if let Ok(note) = mconsole::parse_notify(&buf[..n.min(buf.len())]) {
                if note.kind == NotifyKind::Panic {
                    let msg = String::from_utf8_lossy(&note.data).trim().to_owned();
                    panic = Some(msg);
                }
            }
        }
        StartupFailure::Died { exit, panic }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Opens the log for appending (0600, parents created) and writes the header line.
/// Returns the file and the offset where this start's output begins.
fn open_log(path: &Path, argv: &[OsString]) -> Result<(File, u64), Error> {
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(format!("cannot create {}", dir.display())))?;
    }
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(format!("cannot open log {}", path.display())))?;
    let cmdline: Vec<String> = argv.iter().map(|a| shell_quote(a)).collect();
    let header = format!(
        "{} virtumld: starting {}\n",
        utc_timestamp(SystemTime::now()),
        cmdline.join(" ")
    );
    f.write_all(header.as_bytes())
        .map_err(io_err(format!("cannot write log {}", path.display())))?;
    let start = f
        .metadata()
        .map(|m| m.len())
        .map_err(io_err(format!("cannot stat log {}", path.display())))?;
    Ok((f, start))
}

/// The last lines written to the log since `from`, for error messages. Best effort.
pub fn read_log_tail(path: &Path, from: u64) -> String {
    let tail = || -> io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        let start = from.max(len.saturating_sub(LOG_TAIL_BYTES));
        f.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        f.take(LOG_TAIL_BYTES).read_to_end(&mut buf)?;
        let text = String::from_utf8_lossy(&buf);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        Ok(lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n"))
    };
    tail().unwrap_or_default()
}

fn shell_quote(a: &OsStr) -> String {
    let s = a.to_string_lossy();
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_=+/.,:@%".contains(&b));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// `YYYY-MM-DD HH:MM:SS.mmmZ`, without pulling in a date crate.
fn utc_timestamp(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days-to-civil.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_exits() {
        use ExitReason::*;
        let ok = ExitInfo::Exited(0);
        assert_eq!(
            classify_exit(&ok, b"...\nreboot: System halted\n"),
            Poweroff
        );
        assert_eq!(classify_exit(&ok, b"reboot: Power down\r\n"), Poweroff);
        assert_eq!(
            classify_exit(&ok, b"x\r\nreboot: Restarting system\r\n"),
            Reboot
        );
        assert_eq!(classify_exit(&ok, b""), Unknown);
        assert_eq!(
            classify_exit(&ExitInfo::Unknown, b"reboot: System halted"),
            Poweroff
        );
        assert_eq!(
            classify_exit(&ExitInfo::Unknown, b"garbage \xff\x00"),
            Unknown
        );
        assert_eq!(
            classify_exit(&ExitInfo::Signaled(6), b"reboot: System halted"),
            Crash
        );
        assert_eq!(
            classify_exit(&ExitInfo::Exited(1), b"reboot: System halted"),
            Crash
        );
        assert_eq!(
            classify_exit(&ExitInfo::Unknown, b"Kernel panic - not syncing: sysrq\n"),
            Crash
        );
        // When the kernel's own line was lost, init's announcement decides.
        assert_eq!(
            classify_exit(
                &ok,
                b"The system is going down NOW!\r\nRequesting system reboot\r\n"
            ),
            Reboot
        );
        assert_eq!(
            classify_exit(&ok, b"\rRequesting system poweroff\r\n"),
            Poweroff
        );
        assert_eq!(
            classify_exit(&ok, b"[  OK  ] Reached target System Reboot.\r\n"),
            Reboot
        );
        assert_eq!(
            classify_exit(
                &ok,
                b"Requesting system poweroff\r\nreboot: System halted\r\n"
            ),
            Poweroff
        );
        // The last marker wins.
        assert_eq!(
            classify_exit(
                &ok,
                b"reboot: Restarting system\n...\nreboot: System halted\n"
            ),
            Poweroff
        );
    }

    #[test]
    fn parses_pty_replies() {
        assert_eq!(
            parse_pty_reply("pts:/dev/pts/3"),
            Some(PathBuf::from("/dev/pts/3"))
        );
        assert_eq!(parse_pty_reply("pts"), None);
        assert_eq!(parse_pty_reply("none"), None);
        assert_eq!(parse_pty_reply("pts:relative"), None);
        assert_eq!(parse_pty_reply("pts:/etc/passwd"), None);
    }

    #[test]
    fn validates_specs() {
        let spec = |argv: &[&str], umid: &str| LaunchSpec {
            argv: argv.iter().map(OsString::from).collect(),
            env: vec![],
            uml_dir: "/run/u".into(),
            umid: umid.into(),
            notify_socket: "/run/n.sock".into(),
            log_file: "/log/x.log".into(),
            pty_devices: vec![],
            ready_timeout: Duration::from_secs(1),
            inherit_fds: vec![],
        };
        let good = [
            "/k",
            "umid=a",
            "uml_dir=/run/u/",
            "mconsole=notify:/run/n.sock",
        ];
        assert!(spec(&good, "a").validate().is_ok());
        assert!(spec(&good, "b").validate().is_err());
        assert!(spec(&good[..3], "a").validate().is_err());
        assert!(spec(&["/k", "umid=a/b", "uml_dir=/run/u"], "a/b")
            .validate()
            .is_err());
        assert!(spec(&["/k"], "").validate().is_err());
        assert!(spec(&[], "a").validate().is_err());
        let long = "x".repeat(64);
        assert!(spec(&["/k", &format!("umid={long}")], &long)
            .validate()
            .is_err());
    }

    #[test]
    fn formats_timestamps_and_quotes() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(951_782_400_123);
        assert_eq!(utc_timestamp(t), "2000-02-29 00:00:00.123Z");
        assert_eq!(shell_quote(OsStr::new("ubd0=/a/b.img")), "ubd0=/a/b.img");
        assert_eq!(shell_quote(OsStr::new("x=a b")), "'x=a b'");
        assert_eq!(shell_quote(OsStr::new("it's")), r"'it'\''s'");
    }
}
