//! `uml+ssh://root@HOST/system` with the stock clients and a private sshd.
//!
//! The "remote host" is a private mount namespace (tmpfs over /run, /etc/libvirt and
//! /var/log) holding virtumld on its DEFAULT paths and two private sshd instances on free
//! loopback ports: one sees Debian's `/usr/bin/virt-ssh-helper` (which picks
//! `/var/run/libvirt/virtumld-sock`), the other runs in a nested namespace where that file
//! is covered by a non-executable one, so the client's remote command (`which
//! virt-ssh-helper || nc -U /var/run/libvirt/libvirt-sock`) takes the `nc` fallback to the
//! legacy path. The clients run outside that namespace (in one of their own, with a tmpfs
//! over /root so that ssh's known_hosts never touches the machine's) and reach it only
//! through sshd over loopback TCP. The daemon's log names the socket each connection came
//! in on, which proves the path taken.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use support::{free_port, wait_until, Daemon, Raw, RawStream};
use virtumld_protocol::error::{code, RemoteError};
use virtumld_protocol::header::Status;
use virtumld_protocol::procedures::proc as p;
use virtumld_protocol::xdr;

/// The remote host: virtumld and the two sshd instances in a private mount namespace.
struct Remote {
    dir: tempfile::TempDir,
    ns: Child,
    /// sshd whose users have virt-ssh-helper.
    port_helper: u16,
    /// sshd whose users do not: the client falls back to `nc`.
    port_nc: u16,
}

impl Remote {
    fn start() -> Remote {
        assert!(
            Path::new("/usr/sbin/sshd").exists(),
            "install openssh-server"
        );
        assert!(
            Path::new("/usr/bin/virt-ssh-helper").exists(),
            "install libvirt-daemon (it ships virt-ssh-helper)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let keygen = |file: &str| {
            let st = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "virtumld-test", "-f"])
                .arg(d.join(file))
                .status()
                .expect("ssh-keygen (install openssh-client)");
            assert!(st.success(), "ssh-keygen failed");
        };
        keygen("hostkey");
        keygen("clientkey");
        std::fs::copy(d.join("clientkey.pub"), d.join("authorized_keys")).unwrap();
        // A plain file that is not executable: `which virt-ssh-helper` fails on it.
        std::fs::write(d.join("no-helper"), "").unwrap();
        let (port_helper, port_nc) = (free_port(), free_port());
        for (name, port) in [("helper", port_helper), ("nc", port_nc)] {
            let conf = format!(
                "ListenAddress 127.0.0.1\nPort {port}\nHostKey {d}/hostkey\n\
                 PidFile {d}/sshd-{name}.pidfile\nAuthorizedKeysFile {d}/authorized_keys\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
                 LogLevel VERBOSE\n",
                d = d.display()
            );
            std::fs::write(d.join(format!("sshd-{name}.conf")), conf).unwrap();
        }
        let script = format!(
            r#"set -e
mount -t tmpfs tmpfs /run
mkdir -p /etc/libvirt && mount -t tmpfs tmpfs /etc/libvirt
mount -t tmpfs tmpfs /var/log
mkdir -p /run/sshd
RUST_LOG=debug NO_COLOR=1 {bin} --system 2>{d}/daemon.log &
echo $! > {d}/daemon.pid
for i in $(seq 200); do [ -S /run/libvirt/libvirt-sock-ro ] && break; sleep 0.05; done
ls -l /run/libvirt > {d}/sockets.txt
/usr/sbin/sshd -D -f {d}/sshd-helper.conf -E {d}/sshd-helper.log &
echo $! > {d}/sshd-helper.pid
unshare --mount --propagation private sh -c \
  'mount --bind {d}/no-helper /usr/bin/virt-ssh-helper && exec /usr/sbin/sshd -D -f {d}/sshd-nc.conf -E {d}/sshd-nc.log' &
echo $! > {d}/sshd-nc.pid
wait
"#,
            bin = env!("CARGO_BIN_EXE_virtumld"),
            d = d.display()
        );
        let ns = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("ns.err")).unwrap())
            .spawn()
            .expect("unshare (util-linux)");
        let r = Remote {
            dir,
            ns,
            port_helper,
            port_nc,
        };
        let up = wait_until(Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port_helper)).is_ok()
                && TcpStream::connect(("127.0.0.1", port_nc)).is_ok()
                && r.read("sockets.txt").contains("libvirt-sock-ro")
        });
        assert!(
            up,
            "remote did not come up: {}\n{}\n{}\n{}",
            r.read("ns.err"),
            r.read("daemon.log"),
            r.read("sshd-helper.log"),
            r.read("sshd-nc.log")
        );
        r
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(file)).unwrap_or_default()
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("clientkey")
    }

    fn uri(&self, port: u16) -> String {
        format!(
            "uml+ssh://root@127.0.0.1:{port}/system?keyfile={}&no_verify=1&no_tty=1",
            self.key().display()
        )
    }

    fn pid(&self, file: &str) -> Option<i32> {
        self.read(file).trim().parse().ok()
    }

    /// The daemon's log lines for connections that came in on `socket` (a full path).
    fn connections_on(&self, socket: &str) -> usize {
        let needle = format!("peer=unix:{socket} uid=0");
        self.read("daemon.log")
            .lines()
            .filter(|l| l.contains(&needle) && l.contains("client connected"))
            .count()
    }

    /// Stops sshd and the daemon (SIGTERM) and returns the daemon log.
    fn stop(&mut self) -> String {
        let kill = |pid: Option<i32>, sig| {
            if let Some(pid) = pid {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
            }
        };
        use nix::sys::signal::Signal::{SIGKILL, SIGTERM};
        kill(self.pid("sshd-helper.pid"), SIGTERM);
        kill(self.pid("sshd-nc.pid"), SIGTERM);
        kill(self.pid("daemon.pid"), SIGTERM);
        let exited = wait_until(Duration::from_secs(20), || {
            matches!(self.ns.try_wait(), Ok(Some(_)))
        });
        if !exited {
            kill(self.pid("daemon.pid"), SIGKILL);
            let _ = self.ns.kill();
            let _ = self.ns.wait();
        }
        self.read("daemon.log")
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        use nix::sys::signal::Signal::SIGKILL;
        for f in ["sshd-helper.pid", "sshd-nc.pid", "daemon.pid"] {
            if let Some(pid) = self.pid(f) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), SIGKILL);
            }
        }
        let _ = self.ns.kill();
        let _ = self.ns.wait();
    }
}

/// Runs a client command in a mount namespace of its own with a tmpfs over /root (ssh
/// records host keys in root's ~/.ssh/known_hosts: keep the machine's untouched).
fn client(args: &[&str]) -> Output {
    Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            r#"mount -t tmpfs tmpfs /root && exec "$@""#,
            "sh",
        ])
        .args(args)
        .env("LC_ALL", "C")
        .env("HOME", "/root")
        .stdin(Stdio::null())
        .output()
        .expect("unshare")
}

fn virsh(uri: &str, read_only: bool, args: &[&str]) -> String {
    let mut argv = vec!["virsh", "-q"];
    if read_only {
        argv.push("-r");
    }
    argv.extend(["-c", uri]);
    argv.extend(args);
    let out = client(&argv);
    assert!(
        out.status.success(),
        "virsh {argv:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Runs the client calls against one sshd and returns how the daemon saw them.
fn virsh_over(remote: &Remote, port: u16) {
    let uri = remote.uri(port);
    assert_eq!(virsh(&uri, false, &["hostname"]).trim(), hostname());
    assert_eq!(virsh(&uri, false, &["list", "--all"]).trim(), "");
    assert_eq!(virsh(&uri, true, &["hostname"]).trim(), hostname());
    // Read-only means read-only: a definition is refused.
    let mut argv = vec![
        "virsh",
        "-q",
        "-r",
        "-c",
        &uri,
        "pool-define-as",
        "p",
        "dir",
    ];
    argv.extend(["--target", "/nonexistent"]);
    let out = client(&argv);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a read-only connection defined a pool"
    );
    assert!(err.contains("read only access prevents"), "{err}");
}

#[test]
fn virsh_through_virt_ssh_helper() {
    let mut remote = Remote::start();
    virsh_over(&remote, remote.port_helper);
    // virt-ssh-helper picked virtumld-sock (direct mode), and -sock-ro for `-r`.
    assert_eq!(remote.connections_on("/run/libvirt/virtumld-sock"), 2);
    assert_eq!(remote.connections_on("/run/libvirt/virtumld-sock-ro"), 2);
    assert_eq!(remote.connections_on("/run/libvirt/libvirt-sock"), 0);
    let log = remote.stop();
    assert!(log.contains("shutting down"), "{log}");
}

#[test]
fn virsh_and_python_through_the_nc_fallback() {
    let mut remote = Remote::start();
    let sockets = remote.read("sockets.txt");
    assert!(
        sockets.contains("srwx------") && sockets.contains("srwxrwxrwx"),
        "legacy sockets get the rw/ro modes: {sockets}"
    );
    virsh_over(&remote, remote.port_nc);
    // Without virt-ssh-helper the remote command ran `nc -U /var/run/libvirt/libvirt-sock`
    // (and `-sock-ro` for `-r`): the legacy paths, served by virtumld.
    assert_eq!(remote.connections_on("/run/libvirt/libvirt-sock"), 2);
    assert_eq!(remote.connections_on("/run/libvirt/libvirt-sock-ro"), 2);
    assert_eq!(remote.connections_on("/run/libvirt/virtumld-sock"), 0);
    // The stock python client over the same path.
    let script = r#"
import libvirt, os
c = libvirt.open(os.environ["URI"])
print("host", c.getHostname())
print("uri", c.getURI())
print("domains", len(c.listAllDomains()))
c.close()
r = libvirt.openReadOnly(os.environ["URI"])
print("ro-host", r.getHostname())
r.close()
"#;
    let uri = remote.uri(remote.port_nc);
    let mut child = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tmpfs tmpfs /root && exec /usr/bin/python3 -u -",
        ])
        .env("URI", &uri)
        .env("HOME", "/root")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("host {}", hostname())), "{text}");
    assert!(text.contains(&format!("ro-host {}", hostname())), "{text}");
    assert!(text.contains("domains 0"), "{text}");
    assert_eq!(remote.connections_on("/run/libvirt/libvirt-sock"), 3);
    assert_eq!(remote.connections_on("/run/libvirt/libvirt-sock-ro"), 3);
    let log = remote.stop();
    assert!(log.contains("shutting down"), "{log}");
}

/// An ssh2 (libssh2) channel running a command on the remote host, as a raw stream.
struct Channel {
    _session: ssh2::Session,
    ch: ssh2::Channel,
}

impl Channel {
    fn exec(remote: &Remote, port: u16, command: &str) -> Channel {
        let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect to sshd");
        let mut session = ssh2::Session::new().unwrap();
        session.set_tcp_stream(tcp);
        session.set_timeout(15_000);
        session.handshake().expect("ssh handshake");
        session
            .userauth_pubkey_file("root", None, &remote.key(), None)
            .expect("public key authentication");
        assert!(session.authenticated());
        let mut ch = session.channel_session().expect("channel");
        ch.exec(command).expect("exec");
        Channel {
            _session: session,
            ch,
        }
    }
}

impl Read for Channel {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.ch.read(buf)
    }
}

impl Write for Channel {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.ch.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.ch.flush()
    }
}

impl RawStream for Channel {
    fn set_read_timeout(&self, _timeout: Option<Duration>) -> std::io::Result<()> {
        Ok(()) // the session's own timeout (15 s) bounds every blocking read
    }
}

fn get_hostname(raw: &mut Raw, serial: u32) -> String {
    raw.call(p::CONNECT_GET_HOSTNAME, serial, &());
    let (h, payload) = raw.reply().expect("hostname reply");
    assert_eq!((h.serial, h.status), (serial, Status::OK));
    xdr::from_bytes::<String>(&payload).expect("a string")
}

/// The raw protocol through `nc -U /var/run/libvirt/libvirt-sock` on an ssh2 channel:
/// AUTH_LIST, CONNECT_OPEN, CONNECT_GET_HOSTNAME; and the read-only legacy socket refuses a
/// write call.
#[test]
fn raw_protocol_over_an_ssh2_channel() {
    let remote = Remote::start();
    let mut raw = Raw {
        s: Box::new(Channel::exec(
            &remote,
            remote.port_nc,
            "nc -U /var/run/libvirt/libvirt-sock",
        )),
    };
    raw.open();
    assert_eq!(get_hostname(&mut raw, 2), hostname());
    assert_eq!(get_hostname(&mut raw, 3), hostname());

    let mut ro = Raw {
        s: Box::new(Channel::exec(
            &remote,
            remote.port_nc,
            "nc -U /var/run/libvirt/libvirt-sock-ro",
        )),
    };
    ro.open();
    assert_eq!(get_hostname(&mut ro, 2), hostname());
    ro.call(p::DOMAIN_DEFINE_XML, 3, &());
    let (h, payload) = ro.reply().expect("define reply");
    assert_eq!((h.serial, h.status), (3, Status::ERROR));
    let e: RemoteError = xdr::from_bytes(&payload).unwrap();
    assert_eq!(e.code, code::OPERATION_DENIED, "{e:?}");
    assert!(remote.connections_on("/run/libvirt/libvirt-sock") >= 1);
    assert!(remote.connections_on("/run/libvirt/libvirt-sock-ro") >= 1);
}

/// `libvirt-sock`/`-ro` are taken only when free or stale: a live one (a libvirtd) is left
/// alone with a log line, and the daemon starts; only what it bound is removed on exit.
/// `listen_legacy_sockets = 0` turns them off.
#[test]
fn legacy_sockets_yield_to_a_live_daemon() {
    let mut held = None;
    let mut d = Daemon::start_prepared("", |root| {
        let dir = root.join("run/libvirt");
        std::fs::create_dir_all(&dir).unwrap();
        held = Some(std::os::unix::net::UnixListener::bind(dir.join("libvirt-sock")).unwrap());
    });
    let held = held.unwrap();
    let run = d.root.path().join("run/libvirt");
    assert!(
        d.log().contains("is served by another daemon"),
        "{}",
        d.log()
    );
    // libvirt-sock still reaches the other listener; -ro is ours.
    held.set_nonblocking(true).unwrap();
    let _c = std::os::unix::net::UnixStream::connect(run.join("libvirt-sock")).unwrap();
    assert!(held.accept().is_ok(), "libvirt-sock was taken over");
    let mut raw = Raw::connect_unix(&run.join("libvirt-sock-ro"));
    raw.open();
    assert_eq!(get_hostname(&mut raw, 2), hostname());
    drop(raw);
    assert!(d.stop());
    assert!(
        run.join("libvirt-sock").exists(),
        "removed a socket it did not create"
    );
    assert!(!run.join("libvirt-sock-ro").exists());

    let off = Daemon::start_with("listen_legacy_sockets = 0");
    let run = off.root.path().join("run/libvirt");
    assert!(run.join("virtumld-sock").exists());
    assert!(!run.join("libvirt-sock").exists());
    assert!(!run.join("libvirt-sock-ro").exists());
}
