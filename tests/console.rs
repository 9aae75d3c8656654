//! `virsh console` and python3-libvirt streams against real UML guests: log in to the
//! busybox shell through a pseudo-terminal, run a command, detach with Ctrl+]; `--force`
//! takeover and the second-client error; a stream reader and a client that aborts. Flow
//! control both ways, with a raw-protocol console client that can stop reading: keystrokes
//! for a paused guest, a reader that stops while the guest floods its console, and a guest
//! that floods with nobody attached.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::{call_header, guest_image, guest_xml, python_ok, rss_kib, Daemon};
use virtumld_protocol::frame;
use virtumld_protocol::header::{Header, MessageType, Status};
use virtumld_protocol::procedures::proc as p;
use virtumld_protocol::remote::{
    ConnectOpenArgs, DomainGetInfoArgs, DomainGetInfoRet, DomainLookupByNameArgs,
    DomainLookupByNameRet, DomainOpenConsoleArgs, NonnullDomain,
};
use virtumld_protocol::xdr::{self, Xdr};

fn start_guest(d: &Daemon, name: &str) {
    let img = guest_image(d.root.path(), name);
    let xml = d.root.path().join(format!("{name}.xml"));
    std::fs::write(&xml, guest_xml(name, &img)).unwrap();
    d.virsh_ok(&["define", &xml.display().to_string()]);
    d.virsh_ok(&["start", name]);
}

/// Drives `virsh console` in a pty from python (the stock client needs a terminal).
const PTY_DRIVER: &str = r#"
import os, pty, sys, time, select, json
uri, name, script = os.environ["URI"], os.environ["DOM"], json.loads(os.environ["STEPS"])
args = ["virsh", "-c", uri, "console", name] + json.loads(os.environ.get("ARGS", "[]"))
pid, fd = pty.fork()
if pid == 0:
    os.execvp("virsh", args)
buf = b""
def expect(pat, t):
    global buf
    end = time.time() + t
    while time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                d = os.read(fd, 4096)
            except OSError:
                return pat.encode() in buf
            if not d:
                break
            buf += d
            if pat.encode() in buf:
                return True
    return pat.encode() in buf
for kind, arg in script:
    if kind == "send":
        os.write(fd, arg.encode().decode("unicode_escape").encode("latin1"))
    elif kind == "expect":
        if not expect(arg, 30):
            print("MISSING", repr(arg), "IN", buf[-800:])
            sys.exit(3)
    elif kind == "sleep":
        time.sleep(float(arg))
deadline = time.time() + 15
while time.time() < deadline:
    done, st = os.waitpid(pid, os.WNOHANG)
    if done:
        print("EXIT", os.waitstatus_to_exitcode(st))
        print(buf.decode("latin1"))
        sys.exit(0)
    expect("\x00never", 0.2)
print("STILL RUNNING", buf[-800:])
os.kill(pid, 9)
sys.exit(4)
"#;

fn console_session(d: &Daemon, name: &str, args: &[&str], steps: &str) -> std::process::Output {
    let args_json = format!(
        "[{}]",
        args.iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(",")
    );
    std::process::Command::new("/usr/bin/python3")
        .args(["-c", PTY_DRIVER])
        .env("URI", d.tcp_uri())
        .env("DOM", name)
        .env("STEPS", steps)
        .env("ARGS", args_json)
        .output()
        .expect("python3")
}

#[test]
fn virsh_console_logs_in_runs_a_command_and_detaches() {
    let d = Daemon::start();
    start_guest(&d, "con");
    // Type only once the shell is up: a shell starting discards what was typed before.
    let steps = r#"[["expect", "Escape character"], ["expect", "guest# "], ["sleep", "0.3"],
        ["send", "echo answer-$((6*7))\r"], ["expect", "answer-42"], ["send", "\u001d"]]"#;
    let o = console_session(&d, "con", &[], steps);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(text.contains("EXIT 0"), "{text}");
    // Detaching leaves the guest running, and a new session works.
    assert_eq!(d.virsh_ok(&["domstate", "con"]).trim(), "running");
    let steps = r#"[["expect", "Escape character"], ["sleep", "0.5"], ["send", "echo again-$((7*7))\r"],
        ["expect", "again-49"], ["send", "\u001d"]]"#;
    let o = console_session(&d, "con", &[], steps);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}

#[test]
fn force_takes_over_and_a_second_client_is_refused() {
    let d = Daemon::start();
    start_guest(&d, "two");
    std::thread::scope(|s| {
        // The first session stays attached until the takeover ends it.
        let first = s.spawn(|| {
            let steps = r#"[["expect", "guest# "], ["sleep", "6"]]"#;
            console_session(&d, "two", &[], steps)
        });
        std::thread::sleep(Duration::from_secs(3));
        let steps = r#"[["expect", "Active console session exists for this domain"]]"#;
        let second = console_session(&d, "two", &[], steps);
        let text = String::from_utf8_lossy(&second.stdout).to_string();
        assert!(second.status.success(), "{text}");
        assert!(text.contains("EXIT 1"), "{text}");
        let steps = r#"[["expect", "Escape character"], ["sleep", "0.5"], ["send", "echo forced-$((3*3))\r"],
            ["expect", "forced-9"], ["send", "\u001d"]]"#;
        let forced = console_session(&d, "two", &["--force"], steps);
        assert!(
            forced.status.success(),
            "{}",
            String::from_utf8_lossy(&forced.stdout)
        );
        let first = first.join().unwrap();
        let text = String::from_utf8_lossy(&first.stdout);
        // The first client saw its stream end before its own timeout.
        assert!(text.contains("EXIT"), "{text}");
    });
    let steps = r#"[["expect", "argument unsupported"]]"#;
    let o = console_session(&d, "two", &["--safe"], steps);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}

#[test]
fn python_stream_reader_and_abort() {
    let d = Daemon::start();
    start_guest(&d, "py");
    let script = r#"
import libvirt, os, time
c = libvirt.open(os.environ["URI"])
dom = c.lookupByName("py")
st = c.newStream(0)
dom.openConsole(None, st, 0)
got = read_until(st, b"guest# ")
time.sleep(0.3)
st.send(b"echo stream-$((5*5))\r")
got = read_until(st, b"stream-25", got)
print("found" if b"stream-25" in got else "missing")
st.abort()
# The line is free again after the abort.
st2 = c.newStream(0)
dom.openConsole(None, st2, 0)
st2.finish()
print("state", dom.state()[0])
"#;
    let out = python_ok(&d.tcp_uri(), script);
    assert!(out.contains("found"), "{out}");
    assert!(out.contains("state 1"), "{out}");
}

#[test]
fn console_log_file_and_a_guest_crash() {
    let d = Daemon::start();
    let img = guest_image(d.root.path(), "logged");
    let log = d.root.path().join("console.log");
    let xml = guest_xml("logged", &img).replace(
        "<console type='pty'/>",
        &format!(
            "<console type='pty'><log file='{}' append='on'/></console>",
            log.display()
        ),
    );
    let f = d.root.path().join("logged.xml");
    std::fs::write(&f, xml).unwrap();
    d.virsh_ok(&["define", &f.display().to_string()]);
    d.virsh_ok(&["start", "logged"]);
    // Nobody is attached: the daemon still copies the console into the log.
    let ready = support::wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("virtumld-guest: ready"))
    });
    assert!(ready, "console log: {:?}", std::fs::read_to_string(&log));
    // A kernel panic inside the guest is reported as a crash (on_crash = destroy).
    let script = r#"
import libvirt, os, time
c = libvirt.open(os.environ["URI"])
dom = c.lookupByName("logged")
st = c.newStream(0)
dom.openConsole(None, st, 0)
read_until(st, b"guest# ")
time.sleep(0.3)
st.send(b"echo c > /proc/sysrq-trigger\r")
deadline = time.time() + 20
while dom.isActive() and time.time() < deadline:
    time.sleep(0.1)
print("state", dom.state())
"#;
    let out = python_ok(&d.tcp_uri(), script);
    assert!(
        out.contains("state [5, 3]"),
        "shut off (crashed) expected: {out}"
    );
    // The guest's last words reach the log: the pump drains the pty before it stops.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("sysrq: Trigger a crash"), "{text}");
}

#[test]
fn console_works_after_a_daemon_restart_and_ends_cleanly_on_reboot() {
    let mut d = Daemon::start();
    start_guest(&d, "again");
    support::console_answers(&d.tcp_uri(), "again", "before");
    // A crash of the daemon: the guest keeps its console, and the new daemon finds it.
    d.kill9();
    d.spawn();
    support::console_answers(&d.tcp_uri(), "again", "after");
    // A reboot ends an attached session with end-of-stream.
    let script = r#"
import libvirt, os, time
c = libvirt.open(os.environ["URI"])
dom = c.lookupByName("again")
st = c.newStream(0)
dom.openConsole(None, st, 0)
dom.reboot()
deadline = time.time() + 30
while time.time() < deadline:
    if st.recv(4096) == b"":
        print("eof")
        break
st.finish()
"#;
    assert!(python_ok(&d.tcp_uri(), script).contains("eof"));
    // And the rebooted guest has a working console again.
    support::console_answers(&d.tcp_uri(), "again", "rebooted");
}

/// Defines and starts `name` with a pty console and a pty serial line.
fn start_with_serial(d: &Daemon, name: &str) {
    let img = guest_image(d.root.path(), name);
    let xml = guest_xml(name, &img).replace(
        "<console type='pty'/>",
        "<console type='pty'/><serial type='pty'/>",
    );
    let f = d.root.path().join(format!("{name}.xml"));
    std::fs::write(&f, xml).unwrap();
    d.virsh_ok(&["define", &f.display().to_string()]);
    d.virsh_ok(&["start", name]);
}

#[test]
fn serial_lines_open_by_devname() {
    let d = Daemon::start();
    start_with_serial(&d, "ser");
    assert!(d
        .virsh_ok(&["dumpxml", "ser"])
        .contains("<alias name='serial0'/>"));
    // The shell on console0 writes to the guest's first serial port; serial0's stream reads it.
    let script = r#"
import libvirt, os, time
c = libvirt.open(os.environ["URI"])
dom = c.lookupByName("ser")
ser = c.newStream(0)
dom.openConsole("serial0", ser, 0)
con = c.newStream(0)
dom.openConsole("console0", con, 0)
read_until(con, b"guest# ")
time.sleep(0.3)
con.send(b"echo SER-$((2*3)) > /dev/ttyS0\r")
read_until(ser, b"SER-6")
print("serial ok")
try:
    dom.openConsole("serial7", c.newStream(0), 0)
except libvirt.libvirtError as e:
    print("missing:", e)
"#;
    let out = python_ok(&d.tcp_uri(), script);
    assert!(out.contains("serial ok"), "{out}");
    assert!(
        out.contains("cannot find character device serial7"),
        "{out}"
    );
}

/// The guest's end reaches every session attached to it: destroyed, or shut down with
/// `virsh shutdown`, the guest ends both its console and its idle serial line (nothing to
/// replay, nothing written) with end-of-stream, so a python3-libvirt `recv` returns b""
/// promptly, as libvirtd's empty STREAM CONTINUE makes it do; `finish` is then confirmed,
/// even long after, and the connection goes on working. An idle line of a running guest sends nothing,
/// as with libvirtd: a reader with a time budget uses a non-blocking stream and libvirt's
/// event loop (what virsh console does), which the last part checks.
#[test]
fn a_destroyed_or_shut_down_guest_ends_every_attached_stream() {
    let d = Daemon::start();
    start_with_serial(&d, "eof");
    let script = r#"
import faulthandler, libvirt, os, subprocess, threading, time
faulthandler.dump_traceback_later(100, exit=True)
uri = os.environ["URI"]
c = libvirt.open(uri)
dom = c.lookupByName("eof")

def attach():
    con, ser = c.newStream(0), c.newStream(0)
    dom.openConsole("console0", con, 0)
    dom.openConsole("serial0", ser, 0)
    read_until(con, b"guest# ")
    return con, ser

def until_eof(st):
    while True:
        d = st.recv(65536)
        if d == b"":
            return time.time()

def stop_and_wait(what, stop, con, ser, want, finish_late=False):
    done = {}
    def run():
        stop()
        done["t"] = time.time()
    t = threading.Thread(target=run)
    t.start()
    t_con = until_eof(con)
    t_ser = until_eof(ser)
    t.join()
    con.finish()
    if finish_late:
        # libvirtd keeps an ended stream until the client finishes it, however late.
        time.sleep(11)
        f = threading.Thread(target=ser.finish, daemon=True)
        f.start()
        f.join(10)
        if f.is_alive():
            print("a finish 11 s after end-of-stream was not confirmed", flush=True)
            os._exit(3)
        print("late finish confirmed")
    else:
        ser.finish()
    deadline = time.time() + 20
    while dom.state() != want and time.time() < deadline:
        time.sleep(0.1)
    print(what, "eof after %.2f %.2f state %s" % (t_con - done["t"], t_ser - done["t"], dom.state()))

con, ser = attach()
time.sleep(0.3)
def destroy():
    libvirt.open(uri).lookupByName("eof").destroy()
stop_and_wait("destroy", destroy, con, ser, [5, 2], finish_late=True)

dom.create()
con, ser = attach()
time.sleep(0.3)
def shutdown():
    subprocess.run(["virsh", "-q", "-c", uri, "shutdown", "eof"], check=True,
                   stdout=subprocess.DEVNULL)
stop_and_wait("shutdown", shutdown, con, ser, [5, 1])

# An idle line of a running guest: nothing comes, by design. A non-blocking stream on
# libvirt's event loop reads it within a budget and finishes on its own.
libvirt.virEventRegisterDefaultImpl()
def loop():
    while True:
        libvirt.virEventRunDefaultImpl()
threading.Thread(target=loop, daemon=True).start()
ec = libvirt.open(uri)
edom = ec.lookupByName("eof")
edom.create()
st = ec.newStream(libvirt.VIR_STREAM_NONBLOCK)
edom.openConsole("serial0", st, 0)
t0 = time.time()
got, eof = 0, False
while time.time() < t0 + 1:
    r = st.recv(65536)
    if r == -2:
        time.sleep(0.02)
    elif r == b"":
        eof = True
        break
    else:
        got += len(r)
st.finish()
print("idle serial: %d bytes, eof %s, ended by the budget after %.2f s" % (got, eof, time.time() - t0))
"#;
    let out = python_ok(&d.tcp_uri(), script);
    eprintln!("{out}");
    let delays = |what: &str| -> (f64, f64, String) {
        let line = out
            .lines()
            .find(|l| l.starts_with(what))
            .unwrap_or_else(|| panic!("no {what} line: {out}"));
        let w: Vec<&str> = line.split_whitespace().collect();
        (
            w[3].parse().unwrap(),
            w[4].parse().unwrap(),
            w[6..].join(" "),
        )
    };
    // Destroyed: at once (the pump ends when the pty hangs up or is stopped).
    let (con, ser, state) = delays("destroy");
    assert!(con < 5.0 && ser < 5.0, "{out}");
    assert_eq!(state, "[5, 2]", "shut off (destroyed): {out}");
    // Shut down: once the guest's init has run its shutdown and the process is gone.
    let (con, ser, state) = delays("shutdown");
    assert!(con < 60.0 && ser < 60.0, "{out}");
    assert_eq!(state, "[5, 1]", "shut off (shutdown): {out}");
    assert!(out.contains("late finish confirmed"), "{out}");
    assert!(out.contains("idle serial: 0 bytes, eof False"), "{out}");
}

// ---------------------------------------------------------------------------------------
// Flow control, with a raw-protocol console client
// ---------------------------------------------------------------------------------------

/// A console stream over the raw protocol: the test decides when (and whether) to read,
/// sees every byte, and can make other calls on the same connection.
struct RawConsole {
    s: TcpStream,
    /// Received bytes not yet parsed into messages.
    inbuf: Vec<u8>,
    dom: NonnullDomain,
    /// The stream's serial (that of its DOMAIN_OPEN_CONSOLE call).
    serial: u32,
    next_serial: u32,
    /// Console output received so far.
    out: Vec<u8>,
    /// Replies not yet claimed, by serial.
    replies: Vec<(u32, Status, Vec<u8>)>,
    eof: bool,
    confirmed: bool,
}

impl RawConsole {
    /// Opens `name`'s console, retrying while an earlier session still holds the line.
    fn open(port: u16, name: &str) -> RawConsole {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        // A daemon that stops reading this connection fails the test instead of hanging it.
        s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut con = RawConsole {
            s,
            inbuf: Vec::new(),
            dom: NonnullDomain::default(),
            serial: 0,
            next_serial: 0,
            out: Vec::new(),
            replies: Vec::new(),
            eof: false,
            confirmed: false,
        };
        assert_eq!(con.call(p::AUTH_LIST, &()).1, Status::OK);
        let open = ConnectOpenArgs {
            name: Some("uml:///system".into()),
            flags: 0,
        };
        con.call_ok::<()>(p::CONNECT_OPEN, &open);
        let r: DomainLookupByNameRet = con.call_ok(
            p::DOMAIN_LOOKUP_BY_NAME,
            &DomainLookupByNameArgs { name: name.into() },
        );
        con.dom = r.dom;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let args = DomainOpenConsoleArgs {
                dom: con.dom.clone(),
                dev_name: None,
                flags: 0,
            };
            let (serial, status, payload) = con.call(p::DOMAIN_OPEN_CONSOLE, &args);
            if status == Status::OK {
                con.serial = serial;
                return con;
            }
            assert!(
                Instant::now() < deadline,
                "cannot open the console: {}",
                String::from_utf8_lossy(&payload)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn write(&mut self, msg: &[u8]) {
        self.s
            .write_all(msg)
            .expect("the daemon stopped reading this connection");
    }

    /// Sends a call and waits for its reply (console output that arrives meanwhile is
    /// kept): (serial, status, payload).
    fn call(&mut self, procedure: i32, args: &impl Xdr) -> (u32, Status, Vec<u8>) {
        let serial = self.next_serial;
        self.next_serial += 1;
        self.write(&frame::encode(&call_header(procedure, serial), args));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(i) = self.replies.iter().position(|r| r.0 == serial) {
                return self.replies.remove(i);
            }
            assert!(Instant::now() < deadline, "no reply to call {procedure}");
            assert!(self.read_some(), "connection closed waiting for a reply");
        }
    }

    fn call_ok<T: Xdr>(&mut self, procedure: i32, args: &impl Xdr) -> T {
        let (_, status, payload) = self.call(procedure, args);
        assert_eq!(status, Status::OK, "call {procedure} failed");
        xdr::from_bytes::<T>(&payload).expect("a well-formed reply")
    }

    fn stream_packet(&self, status: Status, data: &[u8]) -> Vec<u8> {
        let h = Header {
            kind: MessageType::STREAM,
            status,
            ..call_header(p::DOMAIN_OPEN_CONSOLE, self.serial)
        };
        frame::encode_with(&h, |o| o.extend_from_slice(data)).to_vec()
    }

    /// Keystrokes: one STREAM data packet.
    fn type_in(&mut self, data: &[u8]) {
        let m = self.stream_packet(Status::CONTINUE, data);
        self.write(&m);
    }

    /// Reads what arrives within one read timeout and handles every whole message; false
    /// once the daemon closed the connection.
    fn read_some(&mut self) -> bool {
        let mut tmp = [0u8; 65536];
        match self.s.read(&mut tmp) {
            Ok(0) => return false,
            Ok(n) => self.inbuf.extend_from_slice(&tmp[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return false,
        }
        while let Ok(Some(len)) = frame::message_len(&self.inbuf, 64 << 20) {
            if self.inbuf.len() < len {
                break;
            }
            let msg: Vec<u8> = self.inbuf.drain(..len).collect();
            let (h, payload) = frame::split(&msg).expect("a well-formed header");
            self.handle(&h, payload);
        }
        true
    }

    fn handle(&mut self, h: &Header, payload: &[u8]) {
        if h.kind == MessageType::REPLY {
            self.replies.push((h.serial, h.status, payload.to_vec()));
        } else if h.kind == MessageType::STREAM && h.serial == self.serial {
            match h.status {
                Status::CONTINUE if payload.is_empty() => self.eof = true,
                Status::CONTINUE => self.out.extend_from_slice(payload),
                Status::OK => self.confirmed = true,
                _ => panic!("stream error from the daemon"),
            }
        }
    }

    /// Reads for `time`.
    fn read_for(&mut self, time: Duration) {
        let end = Instant::now() + time;
        while Instant::now() < end && self.read_some() {}
    }

    /// Reads until the output after byte `from` contains `pat`, or `timeout` passes.
    fn wait_for(&mut self, from: usize, pat: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            let seen = self.out.get(from..).unwrap_or_default();
            if seen.windows(pat.len()).any(|w| w == pat.as_bytes()) {
                return true;
            }
            if Instant::now() >= end || !self.read_some() {
                return false;
            }
        }
    }

    /// Types a command once the shell is ready and waits for `expect` in its output.
    fn run(&mut self, command: &str, expect: &str) {
        let from = self.out.len();
        self.type_in(format!("{command}\r").as_bytes());
        let ok = self.wait_for(from, expect, Duration::from_secs(60));
        assert!(
            ok,
            "{expect:?} missing after {command:?}; last output: {:?}",
            String::from_utf8_lossy(&self.out[self.out.len().saturating_sub(600)..])
        );
    }

    /// Finishes the stream and waits for the daemon's confirmation.
    fn finish(mut self) {
        let m = self.stream_packet(Status::OK, &[]);
        self.write(&m);
        let end = Instant::now() + Duration::from_secs(30);
        while !self.confirmed && Instant::now() < end {
            assert!(
                self.read_some(),
                "connection closed before the confirmation"
            );
        }
        assert!(self.confirmed, "the daemon never confirmed the finish");
    }

    /// The guest's CPU time so far, asked on this connection.
    fn cpu_time(&mut self) -> Duration {
        let args = DomainGetInfoArgs {
            dom: self.dom.clone(),
        };
        let info: DomainGetInfoRet = self.call_ok(p::DOMAIN_GET_INFO, &args);
        Duration::from_nanos(info.cpu_time)
    }
}

/// Opens the console of a booted guest and waits for its shell.
fn attached(d: &Daemon, name: &str) -> RawConsole {
    let mut con = RawConsole::open(d.port, name);
    assert!(
        con.wait_for(0, "guest# ", Duration::from_secs(90)),
        "no shell prompt: {:?}",
        String::from_utf8_lossy(&con.out[con.out.len().saturating_sub(600)..])
    );
    // A shell that is starting discards what was typed before it was ready.
    std::thread::sleep(Duration::from_millis(300));
    con
}

/// Another client calling CONNECT_GET_HOSTNAME in a loop on its own connection: how long
/// each call waited, and any call that failed.
struct Canary {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<(Vec<Duration>, Vec<String>)>,
}

impl Canary {
    fn start(port: u16) -> Canary {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut raw = support::Raw::connect(port);
            raw.s.set_read_timeout(Some(Duration::from_secs(5))).ok();
            raw.open();
            let (mut waits, mut failures) = (Vec::new(), Vec::new());
            let mut serial = 100u32;
            while !stop2.load(Ordering::Acquire) {
                serial += 1;
                let t = Instant::now();
                raw.call(p::CONNECT_GET_HOSTNAME, serial, &());
                match raw.reply() {
                    Some((h, _)) if h.serial == serial && h.status == Status::OK => {}
                    other => {
                        failures.push(format!("{:?}", other.map(|(h, _)| h)));
                        break;
                    }
                }
                waits.push(t.elapsed());
                std::thread::sleep(Duration::from_millis(5));
            }
            (waits, failures)
        });
        Canary { stop, handle }
    }

    /// Stops it and checks that it was never refused, that 99 % of its calls were
    /// answered within `CANARY_P99` and none took longer than `CANARY_MAX`.
    fn finish(self, what: &str) {
        self.stop.store(true, Ordering::Release);
        let (mut waits, failures) = self.handle.join().expect("canary thread");
        waits.sort();
        let p99 = waits
            .get(waits.len() * 99 / 100)
            .copied()
            .unwrap_or_default();
        let worst = waits.last().copied().unwrap_or_default();
        eprintln!(
            "{what}: canary {} calls, p99 {p99:?}, worst {worst:?}",
            waits.len()
        );
        assert!(failures.is_empty(), "{what}: canary failed: {failures:?}");
        assert!(!waits.is_empty(), "{what}: the canary made no call");
        assert!(p99 <= CANARY_P99, "{what}: canary p99 {p99:?}");
        assert!(worst <= CANARY_MAX, "{what}: the canary waited {worst:?}");
    }
}

/// How long another client's calls may wait while a console is abused: nearly all within
/// 50 ms, and none for long. The worst case alone is not the bound here, as it is in
/// tests/hostile.rs: on a 2-core machine shared with other work, a flooding guest and a
/// busy neighbour can leave a runnable daemon thread waiting for a CPU for tens of
/// milliseconds (perf sched showed 65 ms behind a niced fuzzer), daemon or no daemon. A
/// daemon that stalls (a runtime thread blocked on the pty, a connection waiting on a
/// guest) shows in the 99th percentile or as a wait of seconds.
const CANARY_P99: Duration = Duration::from_millis(50);
const CANARY_MAX: Duration = Duration::from_millis(250);

#[test]
fn keystrokes_for_a_paused_guest_never_hold_back_the_connection() {
    let d = Daemon::start();
    start_guest(&d, "paused");
    let mut con = attached(&d, "paused");
    d.virsh_ok(&["suspend", "paused"]);

    // 2 MiB of keystrokes the paused guest cannot take, with a call on the same
    // connection after every 64 KiB: each is answered at once, and so is another client.
    // Empty commands (":"), which the shell gets through quickly once resumed: a few KiB of
    // one overlong line wedge busybox's line editor, daemon or not.
    let canary = Canary::start(d.port);
    let keys: Vec<u8> = b":\r".iter().copied().cycle().take(4096).collect();
    let mut worst = Duration::ZERO;
    for i in 0..512 {
        con.type_in(&keys);
        if i % 16 == 15 {
            let t = Instant::now();
            let _: String = con.call_ok(p::CONNECT_GET_HOSTNAME, &());
            worst = worst.max(t.elapsed());
        }
    }
    canary.finish("keystrokes for a paused guest");
    eprintln!("calls on the typing connection: worst {worst:?}");
    assert!(
        worst < Duration::from_millis(500),
        "a call behind the keystrokes waited {worst:?}"
    );
    // What the guest could not take was dropped, and the daemon said so.
    assert!(d.log().contains("console input dropped"), "{}", d.log());

    // Resumed, the guest runs the empty commands that were kept for it: the queued
    // keystrokes reach it and its output flows back through the same session.
    let from = con.out.len();
    d.virsh_ok(&["resume", "paused"]);
    assert!(
        con.wait_for(from, "guest# :\r\nguest# :", Duration::from_secs(60)),
        "no queued keystroke ran after the resume: {:?}",
        String::from_utf8_lossy(&con.out[from..])
    );
    con.finish();
    // And the line serves a new session, which starts with that output.
    let mut again = RawConsole::open(d.port, "paused");
    assert!(again.wait_for(0, "guest# :", Duration::from_secs(10)));
    again.finish();
    // Not checked: a command typed after the backlog. UML's console input can stop for
    // good after a burst of input that piled up while the guest was paused (the guest's
    // line stays throttled while its shell waits on an empty buffer); that happens with
    // linux.uml on a bare pty too, no daemon involved.
}

#[test]
fn a_reader_that_stops_while_the_guest_floods_costs_bounded_memory() {
    let d = Daemon::start();
    start_guest(&d, "flood");
    let mut con = attached(&d, "flood");
    let pid = d.pid();
    let base = rss_kib(pid);
    let cpu_before = con.cpu_time();
    // About 20 MB/s of console output for up to a minute, then the shell is back.
    con.run("timeout 60 tr '\\0' F < /dev/zero", "FFFFFFFF");

    // The reader stops for 10 s: memory stays bounded, another client is served at once,
    // and the guest keeps running (a guest blocked on its console would burn no CPU).
    let canary = Canary::start(d.port);
    let samples: Vec<u64> = (0..20)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(500));
            rss_kib(pid)
        })
        .collect();
    canary.finish("a stalled console reader");
    eprintln!("daemon RSS {base} KiB, then {samples:?}");
    let peak = samples.iter().max().copied().unwrap_or(0);
    assert!(
        peak.saturating_sub(base) < 24 * 1024,
        "the daemon grew by {} KiB",
        peak.saturating_sub(base)
    );
    let last = &samples[samples.len() - 6..];
    let spread = last.iter().max().unwrap_or(&0) - last.iter().min().unwrap_or(&0);
    assert!(spread < 4 * 1024, "RSS still growing: {samples:?}");

    // Reading again: output flows, and the console still answers.
    let cpu_after = con.cpu_time();
    eprintln!("guest CPU time while stalled: {:?}", cpu_after - cpu_before);
    assert!(
        cpu_after - cpu_before >= Duration::from_secs(1),
        "the guest hardly ran: {:?}",
        cpu_after - cpu_before
    );
    let from = con.out.len();
    con.read_for(Duration::from_millis(500));
    assert!(con.out.len() > from, "no output after the reader came back");
    con.type_in(b"\x03");
    let from = con.out.len();
    assert!(con.wait_for(from, "guest# ", Duration::from_secs(60)));
    std::thread::sleep(Duration::from_millis(300));
    con.run("echo after-$((8*8))", "after-64");
    con.finish();

    // And a new session works.
    let mut again = RawConsole::open(d.port, "flood");
    again.run("echo again-$((9*9))", "again-81");
    again.finish();
}

#[test]
fn a_guest_flooding_with_nobody_attached_never_blocks_the_daemon() {
    let d = Daemon::start();
    let img = guest_image(d.root.path(), "alone");
    let log = d.root.path().join("alone-console.log");
    let xml = guest_xml("alone", &img).replace(
        "<console type='pty'/>",
        &format!(
            "<console type='pty'><log file='{}' append='off'/></console>",
            log.display()
        ),
    );
    let f = d.root.path().join("alone.xml");
    std::fs::write(&f, xml).unwrap();
    d.virsh_ok(&["define", &f.display().to_string()]);
    d.virsh_ok(&["start", "alone"]);

    // Start a flood of numbered lines (about 1.3 MB, 20 rings' worth) and detach at once.
    let mut con = attached(&d, "alone");
    let lines = 200_000;
    con.type_in(format!("seq 1 {lines} | cat; echo flood-$((40+2))-done\r").as_bytes());
    con.finish();

    let pid = d.pid();
    let base = rss_kib(pid);
    let canary = Canary::start(d.port);
    let done = support::wait_until(Duration::from_secs(120), || {
        std::fs::read(&log).is_ok_and(|t| t.windows(13).any(|w| w == b"flood-42-done"))
    });
    canary.finish("a flood with nobody attached");
    assert!(done, "the flood never finished");
    let grown = rss_kib(pid).saturating_sub(base);
    assert!(grown < 8 * 1024, "the daemon grew by {grown} KiB");

    // The log has every line, once and in order: the daemon read it all as it came.
    let text = std::fs::read(&log).unwrap();
    let numbers: Vec<u64> = String::from_utf8_lossy(&text)
        .split("\r\n")
        .filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|l| l.parse().ok())
        .collect();
    assert_eq!(numbers.len(), lines as usize, "lines in the log");
    assert!(
        numbers.iter().zip(1..).all(|(n, i)| *n == i),
        "log lines out of order"
    );

    // A new session replays the last 64 KiB only: the end of the log.
    let mut late = RawConsole::open(d.port, "alone");
    late.read_for(Duration::from_secs(2));
    let text = std::fs::read(&log).unwrap();
    assert!(
        !late.out.is_empty() && late.out.len() <= 64 * 1024,
        "replayed {} bytes",
        late.out.len()
    );
    assert!(
        text.ends_with(&late.out),
        "the replay is not the log's tail"
    );
    late.run("echo still-$((5*5))", "still-25");
    late.finish();
}
