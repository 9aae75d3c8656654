//! Shared test infrastructure: a private daemon per test (free TCP port, private `--root`),
//! the stock clients run against it, and cleanup by pid.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use virtumld_protocol::frame;
use virtumld_protocol::header::{Header, MessageType, Status, KEEPALIVE_PROGRAM, REMOTE_PROGRAM};
use virtumld_protocol::procedures::proc as p;
use virtumld_protocol::xdr::Xdr;

pub fn call_header(procedure: i32, serial: u32) -> Header {
    Header {
        program: REMOTE_PROGRAM,
        version: 1,
        procedure,
        kind: MessageType::CALL,
        serial,
        status: Status::OK,
    }
}

pub fn ping() -> Vec<u8> {
    let h = Header {
        program: KEEPALIVE_PROGRAM,
        version: 1,
        procedure: 1,
        kind: MessageType::MESSAGE,
        serial: 0,
        status: Status::OK,
    };
    frame::encode(&h, &()).to_vec()
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Polls `f` until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

pub struct Daemon {
    pub child: Option<Child>,
    pub root: tempfile::TempDir,
    pub port: u16,
    pub extra_config: String,
}

impl Daemon {
    /// Starts `virtumld --root <tmp> --listen` with TCP on a free loopback port.
    pub fn start() -> Daemon {
        Self::start_with("")
    }

    pub fn start_with(extra_config: &str) -> Daemon {
        Self::start_prepared(extra_config, |_| {})
    }

    /// Like `start_with`, after `prepare` has filled the root (e.g. with `etc/pki/...`).
    pub fn start_prepared(extra_config: &str, prepare: impl FnOnce(&Path)) -> Daemon {
        let root = tempfile::tempdir().expect("temp dir");
        prepare(root.path());
        let mut d = Daemon {
            child: None,
            root,
            port: free_port(),
            extra_config: extra_config.to_string(),
        };
        d.spawn();
        d
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.path().join("virtumld.conf")
    }

    /// (Re)starts the daemon process on the same root and port.
    pub fn spawn(&mut self) {
        let conf = format!(
            "listen_tcp = 1\nlisten_tls = 0\nlisten_addr = \"127.0.0.1\"\ntcp_port = \"{}\"\nauth_tcp = \"none\"\n{}\n",
            self.port, self.extra_config
        );
        std::fs::write(self.config_path(), conf).expect("write config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.path().join("daemon.log"))
            .expect("daemon log");
        let child = Command::new(env!("CARGO_BIN_EXE_virtumld"))
            .arg("--system")
            .arg("--root")
            .arg(self.root.path())
            .arg("--config")
            .arg(self.config_path())
            .arg("--listen")
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn virtumld");
        self.child = Some(child);
        let port = self.port;
        let sock = self.socket();
        let up = wait_until(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok() && sock.exists()
        });
        assert!(up, "daemon did not come up; log:\n{}", self.log());
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(-1)
    }

    pub fn socket(&self) -> PathBuf {
        self.root.path().join("run/libvirt/virtumld-sock")
    }

    pub fn ro_socket(&self) -> PathBuf {
        self.root.path().join("run/libvirt/virtumld-sock-ro")
    }

    pub fn tcp_uri(&self) -> String {
        format!("uml+tcp://127.0.0.1:{}/system", self.port)
    }

    pub fn unix_uri(&self) -> String {
        format!("uml+unix:///system?socket={}", self.socket().display())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("daemon.log")).unwrap_or_default()
    }

    /// Runs the stock virsh against the TCP listener.
    pub fn virsh(&self, args: &[&str]) -> Output {
        virsh(&self.tcp_uri(), args)
    }

    /// Runs virsh and asserts success; returns stdout.
    pub fn virsh_ok(&self, args: &[&str]) -> String {
        let out = self.virsh(args);
        assert!(
            out.status.success(),
            "virsh {args:?} failed: {}\n{}\ndaemon log tail:\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            tail(&self.log(), 40)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// SIGTERM and wait; returns whether it exited 0.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return st.success();
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        kill_guests(self.root.path());
    }
}

/// Pids of the UML processes that run with their `uml_dir` under `root`.
pub fn guest_pids(root: &Path) -> Vec<i32> {
    let needle = format!("uml_dir={}", root.join("run/libvirt/uml-guest").display());
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if cmd.split(|b| *b == 0).any(|w| w == needle.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

/// The main UML process of each guest: the leader of its own process group.
pub fn guest_leaders(root: &Path) -> Vec<i32> {
    guest_pids(root)
        .into_iter()
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let after = s.rsplit_once(')')?.1.split_whitespace().nth(2)?.to_string();
                    after.parse::<i32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// Kills every guest of a test by process group (they outlive the daemon by design).
pub fn kill_guests(root: &Path) {
    for pid in guest_pids(root) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Builds a busybox guest image `<name>.img` with tools/mkguest.
pub fn guest_image(dir: &Path, name: &str) -> PathBuf {
    let img = dir.join(format!("{name}.img"));
    let st = Command::new(repo_root().join("tools/mkguest"))
        .arg(&img)
        .status()
        .expect("run tools/mkguest");
    assert!(st.success(), "tools/mkguest failed");
    img
}

/// A domain XML for the test guest.
pub fn guest_xml(name: &str, image: &Path) -> String {
    format!(
        "<domain type='uml'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <os>
    <type>uml</type>
    <kernel>/usr/bin/linux.uml</kernel>
  </os>
  <devices>
    <disk type='file' device='disk'>
      <source file='{}'/>
      <target dev='ubd0' bus='uml'/>
    </disk>
    <console type='pty'/>
  </devices>
</domain>
",
        image.display()
    )
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn virsh(uri: &str, args: &[&str]) -> Output {
    Command::new("virsh")
        .arg("-q")
        .arg("-c")
        .arg(uri)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .expect("run virsh (install libvirt-clients)")
}

/// The longest a python client may run in a test.
pub const PYTHON_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs a python3-libvirt script (Debian's python: /usr/bin/python3) with `URI` set.
/// Put before every script `python` runs: reading a stream until a token, ending the script
/// with the tail of what came if the stream ends first (a bare `recv` loop would spin on b"").
const PY_PRELUDE: &str = r#"
def read_until(st, token, got=b""):
    while token not in got:
        d = st.recv(4096)
        if not d:
            raise SystemExit("end of stream before %r: %r" % (token, got[-300:]))
        got += d
    return got
"#;

pub fn python(uri: &str, script: &str) -> Output {
    let mut child = Command::new("/usr/bin/python3")
        .arg("-u")
        .arg("-")
        .env("URI", uri)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run /usr/bin/python3 (install python3-libvirt)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{PY_PRELUDE}{script}").as_bytes())
        .expect("write script");
    // A client stuck on a missing reply must fail the test, not hang it.
    let pid = child.id() as i32;
    let watchdog = std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < PYTHON_TIMEOUT {
            std::thread::sleep(Duration::from_millis(200));
            if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
                return;
            }
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    });
    let out = child.wait_with_output().expect("python output");
    let _ = watchdog.join();
    out
}

pub fn python_ok(uri: &str, script: &str) -> String {
    let out = python(uri, script);
    assert!(
        out.status.success(),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a raw client talks over: TCP or a UNIX socket.
pub trait RawStream: Read + Write + Send {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()>;
}

impl RawStream for TcpStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }
}

impl RawStream for std::os::unix::net::UnixStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        std::os::unix::net::UnixStream::set_read_timeout(self, timeout)
    }
}

/// A raw protocol client for hostile-input tests.
pub struct Raw {
    pub s: Box<dyn RawStream>,
}

impl Raw {
    pub fn connect(port: u16) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        Raw { s: Box::new(s) }
    }

    pub fn connect_unix(path: &Path) -> Raw {
        let s = std::os::unix::net::UnixStream::connect(path).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        Raw { s: Box::new(s) }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("send");
    }

    /// Reads one whole message (length word included); None on EOF or timeout.
    pub fn recv(&mut self) -> Option<Vec<u8>> {
        let mut len = [0u8; 4];
        self.s.read_exact(&mut len).ok()?;
        let n = u32::from_be_bytes(len) as usize;
        let mut rest = vec![0u8; n.checked_sub(4)?];
        self.s.read_exact(&mut rest).ok()?;
        let mut m = len.to_vec();
        m.extend(rest);
        Some(m)
    }

    /// Sends a CALL with XDR arguments.
    pub fn call<T: Xdr>(&mut self, procedure: i32, serial: u32, args: &T) {
        let msg = frame::encode(&call_header(procedure, serial), args);
        self.send(&msg);
    }

    /// Reads one message and splits it into header and payload.
    pub fn reply(&mut self) -> Option<(Header, Vec<u8>)> {
        let m = self.recv()?;
        let (h, payload) = frame::split(&m).ok()?;
        Some((h, payload.to_vec()))
    }

    /// AUTH_LIST + CONNECT_OPEN("uml:///system").
    pub fn open(&mut self) {
        self.open_flags(0);
    }

    /// AUTH_LIST + CONNECT_OPEN("uml:///system") with `flags` (1 = read-only).
    pub fn open_flags(&mut self, flags: u32) {
        self.call(p::AUTH_LIST, 0, &());
        assert_eq!(self.reply().expect("auth list reply").0.status, Status::OK);
        self.send(&frame::encode_with(&call_header(p::CONNECT_OPEN, 1), |o| {
            Some("uml:///system".to_string()).encode(o);
            flags.encode(o);
        }));
        assert_eq!(
            self.reply().expect("open reply").0.status,
            Status::OK,
            "open failed"
        );
    }

    /// True when the server closed the connection.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }
}

/// Through python3-libvirt's console stream, the guest `name`'s shell answers a command
/// tagged `tag` (Enter first: a new daemon may have no recent output to replay). Retries
/// opening the console for up to 60 s, since right after a reboot it may not be there yet.
pub fn console_answers(uri: &str, name: &str, tag: &str) {
    let script = format!(
        r#"
import libvirt, os, time
c = libvirt.open(os.environ["URI"])
dom = c.lookupByName("{name}")
deadline = time.time() + 60
while True:
    try:
        st = c.newStream(0)
        dom.openConsole(None, st, 0)
        break
    except libvirt.libvirtError as e:
        if time.time() > deadline:
            raise
        time.sleep(0.2)
st.send(b"\r")
got = read_until(st, b"guest# ")
time.sleep(0.3)
st.send(b"echo {tag}-$((6*7))\r")
read_until(st, b"{tag}-42", got)
st.finish()
print("ok")
"#
    );
    assert!(python_ok(uri, &script).contains("ok"));
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// The resident set of a process, KiB (0 once it is gone).
pub fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Open descriptors of a process (0 once it is gone).
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}
