//! Session mode as the stock client uses it: an unprivileged user (`nobody`, through
//! `setpriv`) with `uml:///session`, whose virsh autospawns `$VIRTD_PATH/virtumld
//! --timeout=120` (wire-protocol.md §11.3), and the idle `--timeout`.
//!
//! The client daemonizes what it spawns (double fork): this test process makes itself a
//! child subreaper so that the daemon is reparented here and can be reaped after the kill.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::wait_until;

const NOBODY: u32 = 65534;

/// An unprivileged user's environment: HOME, XDG_RUNTIME_DIR and a VIRTD_PATH directory
/// holding a `virtumld` symlink to the built binary, all in a temp dir.
struct User {
    dir: tempfile::TempDir,
}

impl User {
    fn new() -> User {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for d in ["home", "run"] {
            let p = dir.path().join(d);
            std::fs::create_dir(&p).unwrap();
            nix::unistd::chown(
                &p,
                Some(nix::unistd::Uid::from_raw(NOBODY)),
                Some(nix::unistd::Gid::from_raw(NOBODY)),
            )
            .unwrap();
        }
        std::fs::set_permissions(
            dir.path().join("run"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        let bin = Path::new(env!("CARGO_BIN_EXE_virtumld"));
        let link = dir.path().join("bin/virtumld");
        // A symlink to the built binary when other users can reach it, else a copy (a
        // checkout under a private directory).
        let reachable = bin
            .ancestors()
            .skip(1)
            .all(|d| std::fs::metadata(d).is_ok_and(|m| m.mode() & 0o001 != 0));
        if reachable {
            std::os::unix::fs::symlink(bin, &link).unwrap();
        } else {
            std::fs::copy(bin, &link).unwrap();
        }
        User { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn sock_dir(&self) -> PathBuf {
        self.path("run/libvirt")
    }

    /// Runs a command as nobody with only the user's environment.
    fn run(&self, args: &[&str]) -> Output {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", self.path("home"))
            .env("USER", "nobody")
            .env("LOGNAME", "nobody")
            .env("LC_ALL", "C")
            .env("XDG_RUNTIME_DIR", self.path("run"))
            .env("VIRTD_PATH", self.path("bin"))
            .current_dir("/")
            .stdin(Stdio::null())
            .output()
            .expect("setpriv (util-linux)")
    }

    fn virsh_ok(&self, uri: &str, args: &[&str]) -> String {
        let mut argv = vec!["virsh", "-q", "-c", uri];
        argv.extend(args);
        let out = self.run(&argv);
        assert!(
            out.status.success(),
            "virsh {args:?} as nobody: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The pid the session daemon wrote.
    fn daemon_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.sock_dir().join("virtumld.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

/// A process's real uid and argv.
fn owner_and_args(pid: i32) -> (u32, Vec<String>) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    (uid, args)
}

/// Kills a daemon by pid and reaps it (it is our child: we are its subreaper).
fn kill_and_reap(pid: i32) {
    let pid = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let start = Instant::now();
    loop {
        match nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(nix::sys::wait::WaitStatus::StillAlive) => {}
            _ => return,
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Checks the daemon the client spawned, then kills it.
fn check_spawned(user: &User) {
    let pid = user.daemon_pid().expect("the spawned daemon's pid file");
    let (uid, args) = owner_and_args(pid);
    assert_eq!(uid, NOBODY, "the daemon runs as the user");
    assert_eq!(
        args,
        [
            user.path("bin/virtumld").display().to_string(),
            "--timeout=120".to_string()
        ],
        "spawned as libvirt's client spawns a session daemon"
    );
    // Daemonized by the client: its parent is not a virsh (that one is gone) but the
    // subreaper, i.e. this test process.
    let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap()
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    assert_eq!(ppid, std::process::id().to_string());
    let dir = std::fs::metadata(user.sock_dir()).unwrap();
    assert_eq!(dir.mode() & 0o777, 0o700);
    assert_eq!(dir.uid(), NOBODY);
    let sock = std::fs::metadata(user.sock_dir().join("virtumld-sock")).unwrap();
    assert_eq!(sock.uid(), NOBODY);
    // Another client of the same user reuses it.
    assert_eq!(
        user.virsh_ok("uml:///session", &["uri"]).trim(),
        "uml:///session"
    );
    assert_eq!(user.daemon_pid(), Some(pid));
    // Another uid (root here) is turned away by the daemon itself (SO_PEERCRED).
    let mut raw = std::os::unix::net::UnixStream::connect(user.sock_dir().join("virtumld-sock"))
        .expect("root may connect to the socket file");
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut b = [0u8; 1];
    assert!(
        matches!(std::io::Read::read(&mut raw, &mut b), Ok(0) | Err(_)),
        "a session daemon served another uid"
    );
    kill_and_reap(pid);
    assert!(!user.sock_dir().join("virtumld-sock").exists());
}

#[test]
fn autospawn_with_mode_direct() {
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let user = User::new();
    // Nothing exists yet: with ?mode=direct the client spawns $VIRTD_PATH/virtumld.
    assert!(!user.sock_dir().exists());
    let h = user.virsh_ok("uml:///session?mode=direct", &["hostname"]);
    assert_eq!(h.trim(), hostname());
    check_spawned(&user);
}

/// `remote_mode = "direct"` in the user's libvirt.conf: plain `uml:///session` with no
/// socket at all spawns virtumld (Debian's build default would spawn libvirtd).
#[test]
fn autospawn_with_remote_mode_in_libvirt_conf() {
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let user = User::new();
    let conf = user.path("home/.config/libvirt");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(conf.join("libvirt.conf"), "remote_mode = \"direct\"\n").unwrap();
    let h = user.virsh_ok("uml:///session", &["hostname"]);
    assert_eq!(h.trim(), hostname());
    check_spawned(&user);
}

#[test]
fn autospawn_on_a_stale_socket() {
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let user = User::new();
    // A stale virtumld-sock (ECONNREFUSED): a Debian client in its default mode spawns
    // virtumld, and the new daemon replaces the stale file.
    let made = user.run(&[
        "python3",
        "-c",
        "import os, socket\n\
         d = os.environ['XDG_RUNTIME_DIR'] + '/libvirt'\n\
         os.makedirs(d, 0o700, exist_ok=True)\n\
         s = socket.socket(socket.AF_UNIX)\n\
         s.bind(d + '/virtumld-sock')\n\
         s.close()\n",
    ]);
    assert!(made.status.success(), "{made:?}");
    assert!(user.sock_dir().join("virtumld-sock").exists());
    let l = user.virsh_ok("uml:///session", &["list", "--all"]);
    assert_eq!(l.trim(), "");
    check_spawned(&user);
}

/// `--timeout 2` with no client and no guest: the daemon exits 0 by itself and removes its
/// socket; the session socket directory it created is private.
#[test]
fn idle_timeout_exits() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_virtumld"))
        .args(["--session", "--timeout", "2"])
        .env("HOME", dir.path().join("home"))
        .env("XDG_RUNTIME_DIR", &run)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_CACHE_HOME")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sock = run.join("libvirt/virtumld-sock");
    assert!(wait_until(Duration::from_secs(10), || sock.exists()));
    let mode = std::fs::metadata(run.join("libvirt")).unwrap().mode();
    assert_eq!(mode & 0o777, 0o700);
    let mut status = None;
    wait_until(Duration::from_secs(15), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("still running 15 s after a 2 s idle timeout");
    };
    assert!(status.success(), "{status:?}");
    assert!(start.elapsed() >= Duration::from_secs(2));
    assert!(!sock.exists(), "socket left behind");
    assert!(!Path::new(&run.join("libvirt/virtumld.pid")).exists());
}

/// A client keeps the daemon alive past the timeout; it exits once the client is gone.
#[test]
fn idle_timeout_waits_for_clients() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_virtumld"))
        .args(["--session", "--timeout=1"])
        .env("HOME", dir.path().join("home"))
        .env("XDG_RUNTIME_DIR", &run)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sock = run.join("libvirt/virtumld-sock");
    assert!(wait_until(Duration::from_secs(10), || sock.exists()));
    let client = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited with a client connected"
    );
    drop(client);
    let gone = wait_until(Duration::from_secs(10), || {
        child.try_wait().unwrap().is_some()
    });
    if !gone {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(gone, "did not exit after its client left");
}
