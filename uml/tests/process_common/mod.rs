//! Helpers shared by the tests that boot real UML guests. Every test that starts a guest
//! holds a [`GuestGuard`], so a failing assertion still kills the guest's process group.
#![allow(dead_code)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::broadcast;
use virtumld_uml::process::{self, ExitInfo, LaunchSpec};

pub const KERNEL: &str = "/usr/bin/linux.uml";

/// A scratch directory removed on drop.
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new(tag: &str) -> TestDir {
        static N: AtomicU32 = AtomicU32::new(0);
        // Short: unix socket paths under it must stay below 108 bytes.
        let p = std::env::temp_dir().join(format!(
            "vu-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create test dir");
        TestDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills the guest's whole process group (synchronously) when dropped.
pub struct GuestGuard(pub i32);

impl Drop for GuestGuard {
    fn drop(&mut self) {
        if self.0 > 0 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(self.0),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crate has a parent dir")
        .to_path_buf()
}

/// The kernel must be installed: a missing kernel fails the test, it does not skip it.
pub fn kernel() -> PathBuf {
    let k = PathBuf::from(KERNEL);
    assert!(
        k.is_file(),
        "{KERNEL} is missing: install Debian's user-mode-linux package"
    );
    k
}

/// Runs a command under the crate's reaper (std's own wait would race with it).
pub async fn run(cmd: &mut Command) -> ExitInfo {
    let child = process::spawn_reaped(cmd.stdin(Stdio::null())).expect("spawn");
    child.wait().await
}

/// Builds a guest image with tools/mkguest.
pub async fn build_image(dir: &Path) -> PathBuf {
    let img = dir.join("root.img");
    let status = run(Command::new(repo_root().join("tools/mkguest")).arg(&img)).await;
    assert_eq!(status, ExitInfo::Exited(0), "tools/mkguest failed");
    img
}

pub struct GuestFiles {
    pub uml_dir: PathBuf,
    pub notify: PathBuf,
    pub log: PathBuf,
}

pub fn files(dir: &Path, umid: &str) -> GuestFiles {
    GuestFiles {
        uml_dir: dir.join("run"),
        notify: dir.join(format!("{umid}.notify")),
        log: dir.join("log").join(format!("{umid}.log")),
    }
}

/// A hand-built argv for a 64 MiB guest with con0 on a pty (plus `extra` words).
pub fn argv(image: &Path, umid: &str, f: &GuestFiles, extra: &[&str]) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec![
        kernel().into(),
        "mem=64M".into(),
        format!("ubd0={}", image.display()).into(),
        "root=/dev/ubda".into(),
        format!("umid={umid}").into(),
        format!("uml_dir={}", f.uml_dir.display()).into(),
        format!("mconsole=notify:{}", f.notify.display()).into(),
        "con=null".into(),
        "ssl=null".into(),
        "con0=pts".into(),
        "noreboot".into(),
    ];
    v.extend(extra.iter().map(OsString::from));
    v
}

pub fn spec(image: &Path, umid: &str, dir: &Path, ptys: &[&str], extra: &[&str]) -> LaunchSpec {
    let f = files(dir, umid);
    LaunchSpec {
        argv: argv(image, umid, &f, extra),
        env: vec![],
        uml_dir: f.uml_dir,
        umid: umid.into(),
        notify_socket: f.notify,
        log_file: f.log,
        pty_devices: ptys.iter().map(|s| s.to_string()).collect(),
        ready_timeout: Duration::from_secs(15),
        inherit_fds: vec![],
    }
}

/// Reads the subscription until `needle` appears in `seen` (which starts with whatever
/// the caller already has); panics with the output so far on timeout or end of stream.
pub async fn read_until(
    rx: &mut broadcast::Receiver<Bytes>,
    seen: &mut Vec<u8>,
    needle: &str,
    timeout: Duration,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    let found = |s: &[u8]| s.windows(needle.len()).any(|w| w == needle.as_bytes());
    while !found(seen) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(b)) => seen.extend_from_slice(&b),
            Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                panic!("console subscriber lagged by {n} chunks")
            }
            Ok(Err(broadcast::error::RecvError::Closed)) => panic!(
                "console closed before {needle:?}; output:\n{}",
                String::from_utf8_lossy(seen)
            ),
            Err(_) => panic!(
                "no {needle:?} within {timeout:?}; output:\n{}",
                String::from_utf8_lossy(seen)
            ),
        }
    }
}

pub fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// `(pid, ppid, pgrp, state)` for every process in /proc (best effort).
pub fn all_processes() -> Vec<(i32, i32, i32, char)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let (Some(state), Some(ppid), Some(pgrp)) = (
            f.first().and_then(|s| s.chars().next()),
            f.get(1).and_then(|s| s.parse().ok()),
            f.get(2).and_then(|s| s.parse().ok()),
        ) else {
            continue;
        };
        out.push((pid, ppid, pgrp, state));
    }
    out
}

/// Zombies whose parent is this test process.
pub fn my_zombies() -> Vec<i32> {
    let me = std::process::id() as i32;
    all_processes()
        .into_iter()
        .filter(|&(_, ppid, _, st)| ppid == me && st == 'Z')
        .map(|(pid, ..)| pid)
        .collect()
}

/// Processes (zombies included) of process group `pgid`.
pub fn group_processes(pgid: i32) -> Vec<i32> {
    all_processes()
        .into_iter()
        .filter(|&(_, _, pg, _)| pg == pgid)
        .map(|(pid, ..)| pid)
        .collect()
}

/// Waits (bounded) until the reaper has collected every zombie child of ours. Zombies
/// exist briefly between a child's exit and the reaper's waitid.
pub async fn assert_no_zombies_soon() {
    let t0 = Instant::now();
    loop {
        let z = my_zombies();
        if z.is_empty() {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "zombie children left unreaped: {z:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn elapsed_ms(t0: Instant) -> u128 {
    t0.elapsed().as_millis()
}
