//! The one place in the process that waits for children.
//!
//! A dedicated thread blocks in `waitid(P_ALL, WEXITED | WNOWAIT)`: it learns that *some*
//! child is a zombie without reaping it, then, holding the registry lock, reaps exactly
//! that pid. If the pid belongs to a child spawned through [`spawn`], its status goes to
//! that child's watch channel; anything else (UML helpers orphaned onto this subreaper,
//! strays) is reaped and forgotten.
//!
//! [`spawn`] forks while holding the same lock and registers the pid before releasing it,
//! so the thread can never reap a registered child before its registration exists (and
//! never reaps a child whose `exec` failed, which `std` reaps itself inside `spawn`).
//!
//! Consequence for the rest of the program: once this reaper runs, nothing else may wait
//! for children (no `tokio::process`, no `std::process::Child::wait`); start helper
//! programs with [`spawn`] instead. A thread, not a task, so it works with any number of
//! runtimes (each test has its own) and keeps reaping while a runtime is busy.

use std::collections::HashMap;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::watch;

use super::ExitInfo;

struct Registry {
    /// Children spawned through [`spawn`] that have not been reaped yet.
    waiting: HashMap<i32, watch::Sender<Option<ExitInfo>>>,
    /// Bumped on every spawn, so the thread notices children born while it found none.
    epoch: u64,
}

struct Reaper {
    registry: Mutex<Registry>,
    spawned: Condvar,
    /// Count of reaped processes, for waiters that need "this zombie is gone".
    reaped: watch::Sender<u64>,
}

static REAPER: OnceLock<Reaper> = OnceLock::new();

fn lock(r: &Reaper) -> MutexGuard<'_, Registry> {
    // A panic elsewhere while holding the lock leaves consistent data: keep going.
    r.registry.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts the reaper thread once; later calls return the running one.
fn reaper() -> &'static Reaper {
    let mut fresh = false;
    let r = REAPER.get_or_init(|| {
        fresh = true;
        Reaper {
            registry: Mutex::new(Registry {
                waiting: HashMap::new(),
                epoch: 0,
            }),
            spawned: Condvar::new(),
            reaped: watch::channel(0).0,
        }
    });
    if fresh {
        // If the thread cannot be created, nothing is ever reaped: that must be loud.
        if let Err(e) = std::thread::Builder::new()
            .name("virtumld-reaper".into())
            .spawn(move || run(r))
        {
            tracing::error!("cannot start the child reaper thread: {e}");
        }
    }
    r
}

/// Makes sure the reaper thread runs.
pub fn ensure_running() {
    reaper();
}

fn exit_info(st: WaitStatus) -> ExitInfo {
    match st {
        WaitStatus::Exited(_, code) => ExitInfo::Exited(code),
        WaitStatus::Signaled(_, sig, _) => ExitInfo::Signaled(sig as i32),
        _ => ExitInfo::Unknown,
    }
}

fn run(r: &'static Reaper) {
    loop {
        let epoch = lock(r).epoch;
        // __WALL: also children whose exit signal is not SIGCHLD (UML clones helper
        // threads that way; the kernel resets it on reparenting, but be sure).
        match waitid(
            Id::All,
            WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::__WALL,
        ) {
            Ok(st) => {
                let Some(pid) = st.pid() else { continue };
                let mut reg = lock(r);
                let once = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::__WALL;
                match waitid(Id::Pid(pid), once) {
                    Ok(st) if st.pid() == Some(pid) => {
                        let info = exit_info(st);
                        if let Some(tx) = reg.waiting.remove(&pid.as_raw()) {
                            tx.send_replace(Some(info));
                        } else {
                            tracing::debug!(pid = pid.as_raw(), ?info, "reaped a stray child");
                        }
                        drop(reg);
                        r.reaped.send_modify(|n| *n = n.wrapping_add(1));
                    }
                    // Already reaped by `std`'s failed-spawn path: nothing to do.
                    Err(Errno::ECHILD) | Ok(_) => {}
                    Err(e) => {
                        drop(reg);
                        tracing::warn!(pid = pid.as_raw(), "waitid: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
            Err(Errno::EINTR) => {}
            Err(Errno::ECHILD) => {
                // No children at all. Sleep until `spawn` makes one; the timeout covers
                // children made by other code (which should not exist, see module doc).
                let reg = lock(r);
                if reg.epoch == epoch {
                    let _ = r
                        .spawned
                        .wait_timeout(reg, Duration::from_secs(2))
                        .unwrap_or_else(|p| p.into_inner());
                }
            }
            Err(e) => {
                tracing::warn!("waitid(P_ALL): {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// `pidfd_open(2)`; works for any process, child or not.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    if pid <= 0 {
        return Err(io::Error::from_raw_os_error(nix::libc::ESRCH));
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is
    // passed.
    let fd =
        unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, nix::libc::PIDFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `pidfd_send_signal(2)`: signals exactly the process the pidfd refers to, even if its
/// pid number has been reused since.
pub fn pidfd_send_signal(pidfd: &OwnedFd, sig: nix::sys::signal::Signal) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid fd, a signal number, a null siginfo (allowed: the kernel fills in
    // a default) and zero flags.
    let rc = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig as i32,
            std::ptr::null::<nix::libc::siginfo_t>(),
            0u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A child started through [`spawn`].
pub struct Spawned {
    pub pid: i32,
    /// Opened before the child could possibly be reaped, so it is the right process.
    pub pidfd: OwnedFd,
    /// Becomes `Some` once the reaper has collected the child's status.
    pub exit: watch::Receiver<Option<ExitInfo>>,
}

/// Spawns `cmd` and registers the child with the reaper (started if needed).
pub fn spawn(cmd: &mut Command) -> io::Result<Spawned> {
    let r = reaper();
    let mut reg = lock(r);
    let child = cmd.spawn()?;
    let pid = child.id() as i32;
    // Dropping a std Child neither kills nor waits for it.
    drop(child);
    // Opened while the registry is locked: the reaper reaps only under this lock, so even a
    // child that exits at once (`setsid -f`) is still there, at worst a zombie, and the
    // pid cannot have been reused.
    let pidfd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            return Err(e);
        }
    };
    let (tx, rx) = watch::channel(None);
    reg.waiting.insert(pid, tx);
    reg.epoch = reg.epoch.wrapping_add(1);
    drop(reg);
    r.spawned.notify_all();
    Ok(Spawned {
        pid,
        pidfd,
        exit: rx,
    })
}

/// The exit channel of a registered child that has not been reaped yet (e.g. after its
/// handle was dropped), if `pid` is one.
pub fn lookup(pid: i32) -> Option<watch::Receiver<Option<ExitInfo>>> {
    let r = REAPER.get()?;
    let reg = lock(r);
    reg.waiting.get(&pid).map(|tx| tx.subscribe())
}

/// A receiver that changes every time the reaper collects any process.
pub fn reaped_events() -> watch::Receiver<u64> {
    reaper().reaped.subscribe()
}

/// Pids of the children spawned through [`spawn`] that have not been reaped yet.
pub fn registered() -> Vec<i32> {
    let Some(r) = REAPER.get() else {
        return Vec::new();
    };
    let reg = lock(r);
    reg.waiting.keys().copied().collect()
}
