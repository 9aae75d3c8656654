//! Who may use the UNIX sockets: `unix_sock_group`, `unix_sock_ro_perms` and
//! `unix_sock_rw_perms` on the socket files (checked with stat and with clients running as
//! other users), and a session daemon that serves only its own uid (SO_PEERCRED).

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use support::{path_str, tail, wait_until, Daemon};

/// Runs virsh as `user:group` with no supplementary groups.
fn virsh_as(user: &str, group: &str, args: &[&str]) -> Output {
    Command::new("setpriv")
        .arg(format!("--reuid={user}"))
        .arg(format!("--regid={group}"))
        .arg("--clear-groups")
        .arg("virsh")
        .arg("-q")
        .args(args)
        .env("LC_ALL", "C")
        .env("HOME", "/nonexistent")
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv virsh")
}

fn mode_gid(p: &Path) -> (u32, u32) {
    let m = std::fs::metadata(p).unwrap();
    (m.mode() & 0o7777, m.gid())
}

fn open_up(root: &Path) {
    // tempdir() makes 0700 directories: let other users reach the sockets below.
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn ok(out: &Output) -> bool {
    out.status.success()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn default_socket_modes() {
    let d = Daemon::start();
    assert_eq!(mode_gid(&d.socket()), (0o700, 0));
    assert_eq!(mode_gid(&d.ro_socket()), (0o777, 0));
}

#[test]
fn group_and_modes_are_applied_and_enforced() {
    let d = Daemon::start_prepared(
        "unix_sock_group = \"daemon\"\nunix_sock_rw_perms = \"0770\"\nunix_sock_ro_perms = \"0777\"\n",
        open_up,
    );
    let daemon_gid = nix::unistd::Group::from_name("daemon")
        .unwrap()
        .expect("group daemon")
        .gid
        .as_raw();
    assert_eq!(mode_gid(&d.socket()), (0o770, daemon_gid));
    assert_eq!(mode_gid(&d.ro_socket()), (0o777, daemon_gid));
    let rw = format!("uml+unix:///system?socket={}", path_str(&d.socket()));
    let ro = format!("uml+unix:///system?socket={}", path_str(&d.ro_socket()));
    // nobody/nogroup: the read-only socket (0777) only.
    let out = virsh_as("nobody", "nogroup", &["-r", "-c", &ro, "list", "--all"]);
    assert!(ok(&out), "nobody on the ro socket: {}", stderr(&out));
    let out = virsh_as("nobody", "nogroup", &["-c", &rw, "list", "--all"]);
    assert!(!ok(&out), "nobody reached the 0770 rw socket");
    assert!(
        stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
    // The same user in the socket group gets the read-write socket.
    let out = virsh_as("nobody", "daemon", &["-c", &rw, "list", "--all"]);
    assert!(ok(&out), "group daemon on the rw socket: {}", stderr(&out));
}

#[test]
fn unknown_group_stops_the_daemon() {
    let root = tempfile::tempdir().unwrap();
    let conf = root.path().join("virtumld.conf");
    std::fs::write(&conf, "unix_sock_group = \"no-such-group-virtumld\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_virtumld"))
        .args(["--system", "--timeout", "5", "--root"])
        .arg(root.path())
        .arg("--config")
        .arg(&conf)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("unix_sock_group: unknown group 'no-such-group-virtumld'"),
        "{err}"
    );
}

/// A session-mode daemon started by root with `--session --root DIR`.
struct Session {
    child: Child,
    root: tempfile::TempDir,
}

impl Session {
    fn start() -> Session {
        let root = tempfile::tempdir().unwrap();
        open_up(root.path());
        // A session daemon creates its socket directory 0700 (as libvirtd) but leaves an
        // existing one alone: make it reachable, and the socket mode 0777, so only the uid
        // check stands between another user and the daemon.
        let run = root.path().join("run/libvirt");
        std::fs::create_dir_all(&run).unwrap();
        open_up(&run);
        let conf = root.path().join("virtumld.conf");
        std::fs::write(&conf, "unix_sock_rw_perms = \"0777\"\n").unwrap();
        let log = std::fs::File::create(root.path().join("daemon.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_virtumld"))
            .arg("--session")
            .arg("--root")
            .arg(root.path())
            .arg("--config")
            .arg(&conf)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let s = Session { child, root };
        assert!(
            wait_until(Duration::from_secs(10), || s.socket().exists()),
            "session daemon did not come up:\n{}",
            s.log()
        );
        s
    }

    fn socket(&self) -> std::path::PathBuf {
        self.root.path().join("run/libvirt/virtumld-sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("daemon.log")).unwrap_or_default()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn session_daemon_serves_its_own_uid_only() {
    let s = Session::start();
    assert_eq!(mode_gid(&s.socket()).0, 0o777);
    let uri = format!("uml+unix:///session?socket={}", path_str(&s.socket()));
    let root_ok = || {
        let out = support::virsh(&uri, &["version"]);
        assert!(ok(&out), "root: {}\n{}", stderr(&out), tail(&s.log(), 20));
    };
    root_ok();
    let out = virsh_as("nobody", "nogroup", &["-c", &uri, "version"]);
    assert!(!ok(&out), "nobody was served by root's session daemon");
    assert!(
        wait_until(Duration::from_secs(5), || s
            .log()
            .contains("with uid 65534: this session daemon serves uid 0 only")),
        "no log line for the refused peer:\n{}",
        tail(&s.log(), 20)
    );
    // Refusing one peer does not stop the daemon serving its owner.
    root_ok();
}
