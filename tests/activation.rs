//! systemd socket activation with `systemd-socket-activate` (which listens, waits for the
//! first connection, then execs the daemon with LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES as
//! systemd does), the shipped unit files, and `sd_notify` readiness.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{free_port, virsh, wait_until, Raw};

fn activator() -> PathBuf {
    [
        "/usr/bin/systemd-socket-activate",
        "/lib/systemd/systemd-socket-activate",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("systemd-socket-activate (install systemd)")
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The executable a pid runs now.
fn exe(pid: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default()
}

struct Activated {
    root: tempfile::TempDir,
    child: Child,
}

impl Activated {
    /// `systemd-socket-activate -l ADDR… [--fdname=…] -- virtumld --system --root ROOT …`.
    fn start(listen: &[String], fdnames: Option<&str>, config: &str) -> Activated {
        Self::start_prepared(listen, fdnames, config, |_| {})
    }

    /// Like `start`, after `prepare` has filled the root.
    fn start_prepared(
        listen: &[String],
        fdnames: Option<&str>,
        config: &str,
        prepare: impl FnOnce(&Path),
    ) -> Activated {
        let root = tempfile::tempdir().unwrap();
        prepare(root.path());
        std::fs::create_dir_all(root.path().join("run/libvirt")).unwrap();
        let conf = root.path().join("virtumld.conf");
        // Plain TCP without SASL (libvirtd's default auth_tcp is "sasl").
        let config = format!("auth_tcp = \"none\"\n{config}");
        std::fs::write(&conf, config).unwrap();
        let mut cmd = Command::new(activator());
        for l in listen {
            cmd.arg("-l")
                .arg(l.replace("ROOT", &root.path().display().to_string()));
        }
        if let Some(n) = fdnames {
            cmd.arg(format!("--fdname={n}"));
        }
        // The activator passes on only the variables it is told to.
        cmd.args(["-E", "RUST_LOG=debug", "-E", "NO_COLOR=1", "--"])
            .arg(env!("CARGO_BIN_EXE_virtumld"))
            .args(["--system", "--timeout", "30", "--root"])
            .arg(root.path())
            .arg("--config")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(root.path().join("log")).unwrap());
        let child = cmd.spawn().expect("spawn systemd-socket-activate");
        let a = Activated { root, child };
        let listening = wait_until(Duration::from_secs(10), || {
            a.log().matches("Listening on").count() == listen.len()
        });
        assert!(listening, "activator did not listen: {}", a.log());
        a
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    fn sock(&self, name: &str) -> PathBuf {
        self.path("run/libvirt").join(name)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("log")).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn assert_not_started(&self) {
        assert_eq!(exe(self.pid()), activator(), "started before a connection");
        assert!(!self.path("run/libvirt/virtumld.pid").exists());
    }

    fn assert_started(&self) {
        let daemon = PathBuf::from(env!("CARGO_BIN_EXE_virtumld"));
        let ok = wait_until(Duration::from_secs(10), || {
            exe(self.pid()) == daemon && self.path("run/libvirt/virtumld.pid").exists()
        });
        assert!(ok, "the daemon did not start: {}", self.log());
        // The same pid: the activator exec'd the daemon, as systemd's LISTEN_PID expects.
        let pid_file = std::fs::read_to_string(self.path("run/libvirt/virtumld.pid")).unwrap();
        assert_eq!(pid_file.trim(), self.pid().to_string());
    }

    /// SIGTERM; true when it exited 0.
    fn stop(&mut self) -> bool {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let mut status = None;
        wait_until(Duration::from_secs(20), || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status.is_some_and(|s| s.success())
    }
}

impl Drop for Activated {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unix_uri(sock: &Path) -> String {
    format!("uml+unix:///system?socket={}", sock.display())
}

fn virsh_ok(uri: &str, args: &[&str]) -> String {
    let out = virsh(uri, args);
    assert!(out.status.success(), "virsh {args:?}: {}", stderr(&out));
    stdout(&out)
}

fn virsh_ro(uri: &str, args: &[&str]) -> std::process::Output {
    Command::new("virsh")
        .args(["-q", "-r", "-c", uri])
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// The brief's case: a UNIX socket and a loopback TCP port, named. The daemon starts at the
/// first connection only, serves both (TCP without `--listen` nor `listen_tcp`), binds the
/// read-only socket itself, and on exit removes only what it created.
#[test]
fn unix_and_tcp_sockets_by_name() {
    let port = free_port();
    let mut a = Activated::start(
        &[
            "ROOT/run/libvirt/virtumld-sock".into(),
            format!("127.0.0.1:{port}"),
        ],
        Some("virtumld:virtumld-tcp"),
        "",
    );
    assert!(a.sock("virtumld-sock").exists());
    a.assert_not_started();
    std::thread::sleep(Duration::from_millis(300));
    a.assert_not_started();

    let tcp = format!("uml+tcp://127.0.0.1:{port}/system");
    assert_eq!(virsh_ok(&tcp, &["hostname"]).trim(), hostname());
    a.assert_started();
    let unix = unix_uri(&a.sock("virtumld-sock"));
    assert_eq!(virsh_ok(&unix, &["list", "--all"]).trim(), "");
    assert_eq!(virsh_ok(&unix, &["uri"]).trim(), unix);
    // Not activated, so bound by the daemon: the read-only socket.
    let ro = virsh_ro(&unix_uri(&a.sock("virtumld-sock-ro")), &["hostname"]);
    assert!(ro.status.success(), "{}", stderr(&ro));
    let log = a.log();
    assert!(
        log.contains("socket activation: read-write UNIX socket"),
        "{log}"
    );
    assert!(log.contains("socket activation: TCP socket"), "{log}");
    assert!(a.stop(), "exit status on SIGTERM: {}", a.log());
    assert!(
        a.sock("virtumld-sock").exists(),
        "removed the activated socket"
    );
    assert!(!a.sock("virtumld-sock-ro").exists(), "left its own socket");
}

/// Without LISTEN_FDNAMES the sockets are told apart by address: a path ending in
/// `-sock-ro` is read-only, a port that is not `tls_port` is plain TCP.
#[test]
fn unnamed_sockets_by_address() {
    let port = free_port();
    let mut a = Activated::start(
        &[
            "ROOT/run/libvirt/virtumld-sock-ro".into(),
            format!("127.0.0.1:{port}"),
        ],
        None,
        "tls_port = \"1\"\n",
    );
    let ro_uri = unix_uri(&a.sock("virtumld-sock-ro"));
    let ro = virsh_ro(&ro_uri, &["hostname"]);
    assert!(ro.status.success(), "{}", stderr(&ro));
    a.assert_started();
    // The socket really is read-only, whatever the client asks.
    let w = virsh(
        &ro_uri,
        &["pool-define-as", "p", "dir", "--target", "/nonexistent"],
    );
    assert!(!w.status.success());
    assert!(
        stderr(&w).contains("read only access prevents"),
        "{}",
        stderr(&w)
    );
    let tcp = format!("uml+tcp://127.0.0.1:{port}/system");
    assert_eq!(virsh_ok(&tcp, &["hostname"]).trim(), hostname());
    // The read-write socket was not handed over: the daemon bound it.
    assert_eq!(
        virsh_ok(&unix_uri(&a.sock("virtumld-sock")), &["hostname"]).trim(),
        hostname()
    );
    assert!(a.stop());
    assert!(a.sock("virtumld-sock-ro").exists());
    assert!(!a.sock("virtumld-sock").exists());
}

/// `ListenStream=` and `FileDescriptorName=` of a shipped socket unit.
fn unit_socket(file: &str) -> (String, String) {
    let text = std::fs::read_to_string(support::repo_root().join("systemd").join(file)).unwrap();
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("{file}: no {key}"))
            .trim()
            .to_string()
    };
    (get("ListenStream="), get("FileDescriptorName="))
}

/// Every shipped socket unit but TLS (it needs a PKI), activated as systemd would from the
/// units' own addresses (`/run/libvirt` moved under the test's root, ports made free) and
/// names: each socket does its job, and the daemon unlinks none of them.
#[test]
fn the_shipped_socket_units() {
    let port = free_port();
    let mut listen = Vec::new();
    let mut names = Vec::new();
    for unit in [
        "virtumld.socket",
        "virtumld-ro.socket",
        "virtumld-admin.socket",
        "virtumld-tcp.socket",
        "virtumld-legacy.socket",
        "virtumld-legacy-ro.socket",
    ] {
        let (addr, name) = unit_socket(unit);
        let addr = match addr.strip_prefix("/run/libvirt/") {
            Some(file) => format!("ROOT/run/libvirt/{file}"),
            None => {
                assert_eq!(addr, "16509", "{unit}");
                format!("127.0.0.1:{port}")
            }
        };
        listen.push(addr);
        names.push(name);
    }
    let (tls_addr, tls_name) = unit_socket("virtumld-tls.socket");
    assert_eq!(
        (tls_addr.as_str(), tls_name.as_str()),
        ("16514", "virtumld-tls")
    );
    let mut a = Activated::start(&listen, Some(&names.join(":")), "");
    a.assert_not_started();

    let rw = unix_uri(&a.sock("virtumld-sock"));
    assert_eq!(virsh_ok(&rw, &["hostname"]).trim(), hostname());
    a.assert_started();
    for sock in ["virtumld-sock-ro", "libvirt-sock-ro"] {
        let uri = unix_uri(&a.sock(sock));
        let w = virsh(&uri, &["pool-define-as", "p", "dir", "--target", "/x"]);
        assert!(
            stderr(&w).contains("read only access prevents"),
            "{sock}: {}",
            stderr(&w)
        );
    }
    let legacy = unix_uri(&a.sock("libvirt-sock"));
    assert_eq!(virsh_ok(&legacy, &["hostname"]).trim(), hostname());
    let tcp = format!("uml+tcp://127.0.0.1:{port}/system");
    assert_eq!(virsh_ok(&tcp, &["list", "--all"]).trim(), "");

    // The admin socket: refused like a program libvirtd does not serve, at once.
    let admin = Command::new("virt-admin")
        .arg("-c")
        .arg(format!(
            "virtumld:///system?socket={}",
            a.sock("virtumld-admin-sock").display()
        ))
        .arg("srv-list")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .expect("virt-admin (libvirt-clients)");
    assert!(!admin.status.success());
    assert!(
        stderr(&admin).contains("Cannot find program 110102160 version 1"),
        "{}",
        stderr(&admin)
    );
    // And it still serves the raw protocol's keepalive.
    let mut raw = Raw::connect_unix(&a.sock("virtumld-admin-sock"));
    raw.send(&support::ping());
    let (h, _) = raw.reply().expect("pong");
    assert_eq!(h.procedure, 2);

    assert!(a.stop());
    for sock in [
        "virtumld-sock",
        "virtumld-sock-ro",
        "virtumld-admin-sock",
        "libvirt-sock",
        "libvirt-sock-ro",
    ] {
        assert!(a.sock(sock).exists(), "{sock} removed by the daemon");
    }
}

/// The unit files parse and name only keys systemd knows (`systemd-analyze verify`, with
/// ExecStart pointed at the built binary).
#[test]
fn unit_files_verify() {
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for e in std::fs::read_dir(support::repo_root().join("systemd")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(e.path())
            .unwrap()
            .replace("/usr/sbin/virtumld", env!("CARGO_BIN_EXE_virtumld"));
        std::fs::write(dir.path().join(&name), text).unwrap();
        units.push(dir.path().join(&name));
    }
    assert!(units.len() >= 6, "{units:?}");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&units)
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .expect("systemd-analyze (systemd)");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out).trim(), "", "warnings from systemd-analyze");
}

/// With NOTIFY_SOCKET set (a `Type=notify` unit), the daemon sends READY=1 once it listens.
#[test]
fn notifies_readiness() {
    let root = tempfile::tempdir().unwrap();
    let notify = root.path().join("notify");
    let rx = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_virtumld"))
        .args(["--system", "--root"])
        .arg(root.path())
        .env("NOTIFY_SOCKET", &notify)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = rx.recv(&mut buf);
    let sock = root.path().join("run/libvirt/virtumld-sock");
    let listening = std::os::unix::net::UnixStream::connect(&sock).is_ok();
    let _ = child.kill();
    let _ = child.wait();
    let n = n.expect("READY=1 within 15 s");
    assert_eq!(&buf[..n], b"READY=1");
    assert!(listening, "READY=1 before the socket listened");
}

fn certtool(dir: &Path, args: &[&str]) {
    let out = Command::new("certtool")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("certtool (install gnutls-bin)");
    assert!(out.status.success(), "certtool {args:?}: {}", stderr(&out));
}

/// A CA, a server certificate for 127.0.0.1 in the daemon's default places under `root`
/// (`etc/pki/...`), and a client pkipath directory `root/client`.
fn make_pki(root: &Path) -> PathBuf {
    let d = root.join("pki-work");
    std::fs::create_dir_all(&d).unwrap();
    let write = |name: &str, text: &str| std::fs::write(d.join(name), text).unwrap();
    write(
        "ca.info",
        "cn = test CA\nca\ncert_signing_key\nexpiration_days = 30\n",
    );
    write(
        "server.info",
        "organization = example\ncn = localhost\nip_address = 127.0.0.1\n\
         tls_www_server\nencryption_key\nsigning_key\nexpiration_days = 30\n",
    );
    write(
        "client.info",
        "organization = example\ncn = client1\ntls_www_client\nencryption_key\n\
         signing_key\nexpiration_days = 30\n",
    );
    for key in ["ca", "server", "client"] {
        certtool(
            &d,
            &[
                "--generate-privkey",
                "--bits",
                "2048",
                "--outfile",
                &format!("{key}-key.pem"),
            ],
        );
    }
    certtool(
        &d,
        &[
            "--generate-self-signed",
            "--load-privkey",
            "ca-key.pem",
            "--template",
            "ca.info",
            "--outfile",
            "cacert.pem",
        ],
    );
    for who in ["server", "client"] {
        certtool(
            &d,
            &[
                "--generate-certificate",
                "--load-privkey",
                &format!("{who}-key.pem"),
                "--load-ca-certificate",
                "cacert.pem",
                "--load-ca-privkey",
                "ca-key.pem",
                "--template",
                &format!("{who}.info"),
                "--outfile",
                &format!("{who}cert.pem"),
            ],
        );
    }
    let copy = |from: &str, to: &str| {
        let to = root.join(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(d.join(from), to).unwrap();
    };
    copy("cacert.pem", "etc/pki/CA/cacert.pem");
    copy("servercert.pem", "etc/pki/libvirt/servercert.pem");
    copy("server-key.pem", "etc/pki/libvirt/private/serverkey.pem");
    copy("cacert.pem", "client/cacert.pem");
    copy("clientcert.pem", "client/clientcert.pem");
    copy("client-key.pem", "client/clientkey.pem");
    root.join("client")
}

/// TLS sockets: one named `virtumld-tls`, one unnamed on `tls_port`; the daemon loads its
/// credentials for them without `--listen` and the stock client gets through both.
#[test]
fn tls_sockets() {
    let (named, unnamed) = (free_port(), free_port());
    let pki = tempfile::tempdir().unwrap();
    let mut a = Activated::start_prepared(
        &[format!("127.0.0.1:{named}"), format!("127.0.0.1:{unnamed}")],
        Some("virtumld-tls:unknown"),
        &format!("tls_port = \"{unnamed}\"\n"),
        |root| {
            let client = make_pki(root);
            std::fs::rename(client, pki.path().join("client")).unwrap();
        },
    );
    for port in [named, unnamed] {
        let uri = format!(
            "uml+tls://127.0.0.1:{port}/system?pkipath={}",
            pki.path().join("client").display()
        );
        assert_eq!(virsh_ok(&uri, &["hostname"]).trim(), hostname(), "{uri}");
    }
    a.assert_started();
    assert_eq!(
        a.log().matches("socket activation: TLS socket").count(),
        2,
        "{}",
        a.log()
    );
    assert!(a.stop());
}
