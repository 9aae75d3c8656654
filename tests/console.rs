//! `virsh console` and python3-libvirt streams against real UML guests: log in to the
//! busybox shell through a pseudo-terminal, run a command, detach with Ctrl+]; `--force`
//! takeover and the second-client error; a stream reader and a client that aborts.

mod support;

use std::time::Duration;

use support::{guest_image, guest_xml, python_ok, Daemon};

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
got = b""
while b"guest# " not in got:
    got += st.recv(4096)
time.sleep(0.3)
st.send(b"echo stream-$((5*5))\r")
while b"stream-25" not in got:
    got += st.recv(4096)
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
got = b""
while b"guest# " not in got:
    got += st.recv(4096)
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
    let echo = |tag: &str| {
        format!(
            r#"
import libvirt, os, time
c = libvirt.open(os.environ["URI"])
dom = c.lookupByName("again")
deadline = time.time() + 60
while True:
    try:
        st = c.newStream(0)
        dom.openConsole(None, st, 0)
        break
    except libvirt.libvirtError as e:
        # Right after a reboot the new console may not be there yet.
        if time.time() > deadline:
            raise
        time.sleep(0.2)
# A new daemon has no recent output to replay: Enter makes the shell show its prompt.
st.send(b"\r")
got = b""
while b"guest# " not in got:
    d = st.recv(4096)
    if not d:
        raise SystemExit("end of stream before the prompt: %r" % got[-300:])
    got += d
time.sleep(0.3)
st.send(b"echo {tag}-$((4*4))\r")
while b"{tag}-16" not in got:
    d = st.recv(4096)
    if not d:
        raise SystemExit("end of stream: %r" % got[-300:])
    got += d
st.finish()
print("ok")
"#
        )
    };
    assert!(python_ok(&d.tcp_uri(), &echo("before")).contains("ok"));
    // A crash of the daemon: the guest keeps its console, and the new daemon finds it.
    d.kill9();
    d.spawn();
    assert!(python_ok(&d.tcp_uri(), &echo("after")).contains("ok"));
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
    assert!(python_ok(&d.tcp_uri(), &echo("rebooted")).contains("ok"));
}

#[test]
fn serial_lines_open_by_devname() {
    let d = Daemon::start();
    let img = guest_image(d.root.path(), "ser");
    let xml = guest_xml("ser", &img).replace(
        "<console type='pty'/>",
        "<console type='pty'/><serial type='pty'/>",
    );
    let f = d.root.path().join("ser.xml");
    std::fs::write(&f, xml).unwrap();
    d.virsh_ok(&["define", &f.display().to_string()]);
    d.virsh_ok(&["start", "ser"]);
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
got = b""
while b"guest# " not in got:
    got += con.recv(4096)
time.sleep(0.3)
con.send(b"echo SER-$((2*3)) > /dev/ttyS0\r")
seen = b""
while b"SER-6" not in seen:
    d = ser.recv(4096)
    if not d:
        raise SystemExit("serial0 ended")
    seen += d
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
