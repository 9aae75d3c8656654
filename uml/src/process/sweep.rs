//! The processes of a guest that its process group misses, and processes no guest claims.
//!
//! For every tty console line UML forks a "winch" helper that forwards SIGWINCH. It calls
//! `setsid`, so it leads a session and a group of its own; it blocks every signal but
//! SIGKILL; and it shares the guest's descriptor table (disk images and their flock, the
//! memory file, the ptys). UML kills it when it exits cleanly. After a crash or a SIGKILL it
//! stays, reparented to us or to PID 1, and the next boot on the same image fails. What
//! identifies it: it is a child of the main process while that lives, and it runs with the
//! kernel's argv, so with our `uml_dir=` and the guest's `umid=`.
//!
//! A guest's own processes can rewrite what their `/proc/PID/cmdline` shows (under SKAS
//! the guest's userspace runs in host processes), so a match by argv alone could make us
//! kill a process of *another* guest, never anything else. Processes tied to another
//! guest's main process (its group, session or children) are therefore always spared.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use super::procfs::{self, Stat};
use super::{reaper, same_path};

/// A live process running a UML kernel for `uml_dir`, and the umid its argv names.
struct UmlProcess {
    stat: Stat,
    umid: Vec<u8>,
}

/// Every live process whose argv names `uml_dir` and a umid.
fn uml_processes(uml_dir: &Path) -> Vec<UmlProcess> {
    procfs::all_stats()
        .into_iter()
        .filter(|s| !s.is_zombie())
        .filter_map(|stat| {
            let argv = procfs::read_cmdline(stat.pid)?;
            let dir = procfs::arg_value(&argv, b"uml_dir=")?;
            if !same_path(Path::new(OsStr::from_bytes(dir)), uml_dir) {
                return None;
            }
            let umid = procfs::arg_value(&argv, b"umid=")?.to_vec();
            Some(UmlProcess { stat, umid })
        })
        .collect()
}

/// `s` is `main` or hangs off it: its group, its session, or one of its children.
fn belongs_to(s: &Stat, main: i32) -> bool {
    s.pid == main || s.pgrp == main || s.session == main || s.ppid == main
}

/// Our own process, group or session: never a target, whatever a scan says.
fn is_us(s: &Stat) -> bool {
    let me = std::process::id() as i32;
    let mine = procfs::read_stat(me);
    s.pid == me
        || mine
            .as_ref()
            .is_some_and(|m| s.pgrp == m.pgrp || s.session == m.session)
}

/// Main processes of guests other than `guest` that must be spared: the live process
/// UML recorded for `umid` (a newer guest of the same name) and every guest this process
/// launched and has not reaped yet.
fn other_mains(guest: i32, umid: &str, uml_dir: &Path) -> Vec<i32> {
    let mut out = reaper::registered();
    let recorded = std::fs::read_to_string(uml_dir.join(umid).join("pid"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|&p| procfs::read_stat(p).is_some_and(|s| !s.is_zombie()));
    out.extend(recorded);
    out.retain(|&p| p != guest);
    out
}

/// The processes of the guest `guest` (main pid) that are outside its process group:
/// `children` (its children, taken while it lived; checked again by start time), and
/// every live process running with `uml_dir` and `umid` that belongs to no other guest.
pub(super) fn helpers(guest: i32, umid: &str, uml_dir: &Path, children: &[Stat]) -> Vec<Stat> {
    let all = uml_processes(uml_dir);
    let others = other_mains(guest, umid, uml_dir);
    // Session leaders of other guests (and other leftovers) protect what hangs off them.
    let leaders: Vec<i32> = all
        .iter()
        .filter(|p| p.stat.session == p.stat.pid && p.stat.pid != guest)
        .map(|p| p.stat.pid)
        .collect();
    let spared = |s: &Stat| {
        is_us(s)
            || others.iter().any(|&o| belongs_to(s, o))
            || leaders.iter().any(|&l| l != s.pid && belongs_to(s, l))
    };
    let mut out: Vec<Stat> = all
        .into_iter()
        .filter(|p| p.umid == umid.as_bytes())
        .map(|p| p.stat)
        .collect();
    for c in children {
        if out.iter().all(|s| s.pid != c.pid) {
            if let Some(s) = same_process(c) {
                out.push(s);
            }
        }
    }
    out.retain(|s| !s.is_zombie() && !spared(s));
    out
}

/// Every process running with `uml_dir` that belongs to none of the guests whose main
/// pids are in `keep`, with the members of their process groups.
pub(super) fn strays(uml_dir: &Path, keep: &[i32]) -> Vec<Stat> {
    // Guests this process launched are never strays either.
    let mut keep = keep.to_vec();
    keep.extend(reaper::registered());
    let kept = |s: &Stat| keep.iter().any(|&k| belongs_to(s, k));
    let mut out: Vec<Stat> = uml_processes(uml_dir)
        .into_iter()
        .map(|p| p.stat)
        .filter(|s| !kept(s) && !is_us(s))
        .collect();
    // A stray guest's group may hold processes whose argv no longer shows the kernel's.
    let leaders: Vec<i32> = out
        .iter()
        .filter(|s| s.pgrp == s.pid)
        .map(|s| s.pid)
        .collect();
    for l in leaders {
        for m in procfs::group_members(l) {
            if !m.is_zombie() && !kept(&m) && !is_us(&m) && out.iter().all(|s| s.pid != m.pid) {
                out.push(m);
            }
        }
    }
    out
}

/// The process `s` describes, if it still runs (same pid and start time).
fn same_process(s: &Stat) -> Option<Stat> {
    procfs::read_stat(s.pid).filter(|now| now.starttime == s.starttime)
}

/// SIGKILL to each process (and to the group of each that leads one), through a pidfd
/// opened and checked against the start time first, so a recycled pid is never hit.
pub(super) fn kill_verified(targets: &[&Stat]) {
    for t in targets {
        if is_us(t) {
            continue;
        }
        let Ok(fd) = reaper::pidfd_open(t.pid) else {
            continue;
        };
        if same_process(t).is_none() {
            continue;
        }
        // While the leader lives (the pidfd and start time say so), its group id cannot
        // have been reused.
        if t.pgrp == t.pid {
            let _ = signal::killpg(Pid::from_raw(t.pid), Signal::SIGKILL);
        }
        let _ = reaper::pidfd_send_signal(&fd, Signal::SIGKILL);
    }
}

/// The current state of each of `targets` that still exists (zombies included).
pub(super) fn rescan(targets: &[Stat]) -> Vec<Stat> {
    targets.iter().filter_map(same_process).collect()
}

/// Removes each `<uml_dir>/<umid>/` (a directory with UML's `pid` file) whose pid is not
/// one of `keep` nor a guest this process launched. UML removes it itself only on a clean
/// exit; a stale one whose pid gets reused would make UML refuse the umid later. Call only
/// once everything else of `uml_dir` has been killed.
pub(super) fn remove_stale_umid_dirs(uml_dir: &Path, keep: &[i32]) {
    let Ok(entries) = std::fs::read_dir(uml_dir) else {
        return;
    };
    let launched = reaper::registered();
    for e in entries.flatten() {
        let dir = e.path();
        let Ok(text) = std::fs::read_to_string(dir.join("pid")) else {
            continue;
        };
        let pid = text.trim().parse::<i32>().ok();
        if pid.is_some_and(|p| keep.contains(&p) || launched.contains(&p)) {
            continue;
        }
        if let Err(err) = std::fs::remove_dir_all(&dir) {
            tracing::warn!("cannot remove stale {}: {err}", dir.display());
        }
    }
}
