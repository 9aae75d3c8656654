//! Real UML guests driven by the stock virsh and python3-libvirt: define, start, list,
//! dominfo, dumpxml, suspend/resume, reboot, shutdown, destroy, autostart, memory,
//! undefine, transient guests, concurrent jobs, daemon kill -9 and restart, and events.

mod support;

use std::time::Duration;

use support::{guest_image, guest_leaders, guest_pids, guest_xml, python_ok, wait_until, Daemon};

fn out(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn state(d: &Daemon, name: &str) -> String {
    d.virsh_ok(&["domstate", name, "--reason"])
        .trim()
        .to_string()
}

fn wait_state(d: &Daemon, name: &str, want: &str, secs: u64) {
    let ok = wait_until(Duration::from_secs(secs), || state(d, name) == want);
    assert!(
        ok,
        "{name} never reached '{want}' (now '{}')\n{}",
        state(d, name),
        support::tail(&d.log(), 30)
    );
}

fn define(d: &Daemon, name: &str) {
    let img = guest_image(d.root.path(), name);
    let xml = d.root.path().join(format!("{name}.xml"));
    std::fs::write(&xml, guest_xml(name, &img)).unwrap();
    d.virsh_ok(&["define", &xml.display().to_string()]);
}

#[test]
fn walk_every_lifecycle_command() {
    let d = Daemon::start();
    define(&d, "walk");
    assert!(d.virsh_ok(&["list", "--all"]).contains("walk"));
    assert_eq!(state(&d, "walk"), "shut off (unknown)");
    let info = d.virsh_ok(&["dominfo", "walk"]);
    assert!(info.contains("OS Type:        uml"), "{info}");
    assert!(info.contains("Max memory:     65536 KiB"), "{info}");
    assert!(info.contains("Persistent:     yes"), "{info}");

    d.virsh_ok(&["start", "walk"]);
    assert_eq!(state(&d, "walk"), "running (booted)");
    let id = d.virsh_ok(&["domid", "walk"]).trim().to_string();
    assert!(id.parse::<i32>().unwrap() > 0, "{id}");
    assert!(d.virsh_ok(&["list"]).contains("walk"));
    let xml = d.virsh_ok(&["dumpxml", "walk"]);
    assert!(
        xml.contains(&format!("<domain type='uml' id='{id}'>")),
        "{xml}"
    );
    assert!(xml.contains("<source path='/dev/pts/"), "{xml}");
    assert!(xml.contains("<alias name='console0'/>"), "{xml}");
    let inactive = d.virsh_ok(&["dumpxml", "--inactive", "walk"]);
    assert!(
        !inactive.contains("id='") && !inactive.contains("/dev/pts/"),
        "{inactive}"
    );
    let leader = guest_leaders(d.root.path())[0];
    let cmdline = std::fs::read(format!("/proc/{leader}/cmdline")).unwrap();
    let hostfs = format!(
        "hostfs={}",
        d.root
            .path()
            .join("run/libvirt/uml-guest/.hostfs-empty")
            .display()
    );
    assert!(
        cmdline.split(|b| *b == 0).any(|w| w == hostfs.as_bytes()),
        "guests' hostfs is confined to an empty directory"
    );

    d.virsh_ok(&["suspend", "walk"]);
    assert_eq!(state(&d, "walk"), "paused (user)");
    d.virsh_ok(&["resume", "walk"]);
    assert_eq!(state(&d, "walk"), "running (unpaused)");

    // Reboot: the guest shuts down cleanly and comes back with the same id.
    let before = guest_leaders(d.root.path());
    d.virsh_ok(&["reboot", "walk"]);
    let rebooted = wait_until(Duration::from_secs(30), || {
        let now = guest_leaders(d.root.path());
        !now.is_empty()
            && now.iter().all(|p| !before.contains(p))
            && state(&d, "walk") == "running (booted)"
    });
    assert!(
        rebooted,
        "guest did not reboot\n{}",
        support::tail(&d.log(), 30)
    );
    assert_eq!(d.virsh_ok(&["domid", "walk"]).trim(), id);

    // Live memory changes are refused clearly; persistent ones are saved.
    let o = d.virsh(&["setmem", "walk", "48M"]);
    assert!(!o.status.success());
    assert!(out(&o).contains("cannot change its memory"), "{}", out(&o));
    d.virsh_ok(&["setmem", "walk", "48M", "--config"]);
    assert!(d
        .virsh_ok(&["dumpxml", "--inactive", "walk"])
        .contains("<currentMemory unit='KiB'>49152</currentMemory>"));

    d.virsh_ok(&["shutdown", "walk"]);
    wait_state(&d, "walk", "shut off (shutdown)", 30);
    assert!(wait_until(Duration::from_secs(5), || guest_pids(
        d.root.path()
    )
    .is_empty()));

    d.virsh_ok(&["start", "walk"]);
    let second = d.virsh_ok(&["domid", "walk"]).trim().to_string();
    assert_ne!(second, id, "a new start gets a new id");
    d.virsh_ok(&["destroy", "walk"]);
    assert_eq!(state(&d, "walk"), "shut off (destroyed)");
    assert!(
        guest_pids(d.root.path()).is_empty(),
        "destroy leaves no process behind"
    );
    // The next start on the same image works (no lingering disk lock).
    d.virsh_ok(&["start", "walk"]);
    d.virsh_ok(&["destroy", "walk"]);

    d.virsh_ok(&["autostart", "walk"]);
    assert!(d
        .virsh_ok(&["dominfo", "walk"])
        .contains("Autostart:      enable"));
    assert!(d
        .root
        .path()
        .join("etc/libvirt/uml/autostart/walk.xml")
        .exists());
    d.virsh_ok(&["autostart", "--disable", "walk"]);
    assert!(d
        .virsh_ok(&["dominfo", "walk"])
        .contains("Autostart:      disable"));

    d.virsh_ok(&["undefine", "walk"]);
    assert!(!d.virsh_ok(&["list", "--all"]).contains("walk"));
    assert!(!d.root.path().join("etc/libvirt/uml/walk.xml").exists());
    let o = d.virsh(&["dominfo", "walk"]);
    assert!(
        out(&o).contains("failed to get domain 'walk'"),
        "{}",
        out(&o)
    );
}

#[test]
fn seed_xml_defines_unchanged_and_bad_xml_is_refused() {
    let d = Daemon::start();
    let seed = "<domain type='uml'>
  <name>demo</name>
  <uuid>b4433fc2-a22e-ffb3-0a3d-9c173b395800</uuid>
  <memory>500000</memory>
  <currentMemory>500000</currentMemory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64'>uml</type>
    <kernel>/home/berrange/linux-uml-2.6.26-x86_64</kernel>
  </os>
  <devices>
    <disk type='file' device='disk'>
      <source file='/home/berrange/FedoraCore6-AMD64-root_fs'/>
      <target dev='ubd0' bus='uml'/>
    </disk>
    <console type='pty'/>
  </devices>
</domain>
";
    let f = d.root.path().join("seed.xml");
    std::fs::write(&f, seed).unwrap();
    let p = f.display().to_string();
    d.virsh_ok(&["define", &p]);
    assert!(d
        .virsh_ok(&["domuuid", "demo"])
        .contains("b4433fc2-a22e-ffb3-0a3d-9c173b395800"));
    // Its kernel does not exist here: start fails clearly and nothing is left running.
    let o = d.virsh(&["start", "demo"]);
    assert!(!o.status.success());
    assert!(out(&o).contains("linux-uml-2.6.26-x86_64"), "{}", out(&o));
    assert_eq!(state(&d, "demo"), "shut off (unknown)");

    // The same name with another uuid clashes.
    std::fs::write(&f, seed.replace("b4433fc2", "c4433fc2")).unwrap();
    let o = d.virsh(&["define", &p]);
    assert!(out(&o).contains("already exists"), "{}", out(&o));
    for (bad, expect) in [
        ("<domain type='uml'><name>x</name>", "(domain_definition):1"),
        (
            "<domain type='kvm'><name>x</name><memory>1</memory><os><type>hvm</type></os></domain>",
            "error",
        ),
        (
            &seed.replace(
                "<console type='pty'/>",
                "<interface type='network'><source network='default'/></interface>",
            ),
            "unsupported configuration",
        ),
        (
            &seed.replace("<vcpu>1</vcpu>", "<vcpu>2</vcpu>"),
            "uniprocessor",
        ),
        (
            &seed.replace("<name>demo</name>", "<name>../etc</name>"),
            "name",
        ),
    ] {
        std::fs::write(&f, bad).unwrap();
        let o = d.virsh(&["define", &p]);
        assert!(!o.status.success(), "{bad}");
        assert!(out(&o).contains(expect), "{bad}: {}", out(&o));
    }
    // None of that touched the saved definition.
    let saved = std::fs::read_to_string(d.root.path().join("etc/libvirt/uml/demo.xml")).unwrap();
    assert!(
        saved.contains("b4433fc2-a22e-ffb3-0a3d-9c173b395800"),
        "{saved}"
    );
}

#[test]
fn transient_guests_vanish_when_stopped() {
    let d = Daemon::start();
    let img = guest_image(d.root.path(), "tr");
    let xml = d.root.path().join("tr.xml");
    std::fs::write(&xml, guest_xml("tr", &img)).unwrap();
    d.virsh_ok(&["create", &xml.display().to_string()]);
    assert_eq!(state(&d, "tr"), "running (booted)");
    assert!(d
        .virsh_ok(&["dominfo", "tr"])
        .contains("Persistent:     no"));
    d.virsh_ok(&["destroy", "tr"]);
    assert!(!d.virsh_ok(&["list", "--all"]).contains("tr"));
}

#[test]
fn concurrent_jobs_on_one_guest_get_one_result_each() {
    let d = Daemon::start();
    define(&d, "race");
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| d.virsh(&["start", "race"]));
        let b = s.spawn(|| d.virsh(&["start", "race"]));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(
        a.status.success() != b.status.success(),
        "{}\n{}",
        out(&a),
        out(&b)
    );
    let failed = if a.status.success() { &b } else { &a };
    assert!(out(failed).contains("already running"), "{}", out(failed));
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| d.virsh(&["destroy", "race"]));
        let b = s.spawn(|| d.virsh(&["destroy", "race"]));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(
        a.status.success() != b.status.success(),
        "{}\n{}",
        out(&a),
        out(&b)
    );
    assert!(guest_pids(d.root.path()).is_empty());
}

#[test]
fn daemon_kill9_and_restart_keeps_the_guest() {
    let mut d = Daemon::start();
    define(&d, "keep");
    d.virsh_ok(&["start", "keep"]);
    let id = d.virsh_ok(&["domid", "keep"]).trim().to_string();
    let pids = guest_leaders(d.root.path());
    d.kill9();
    assert_eq!(
        guest_leaders(d.root.path()),
        pids,
        "the guest outlives the daemon"
    );
    d.spawn();
    assert_eq!(state(&d, "keep"), "running (booted)");
    assert_eq!(d.virsh_ok(&["domid", "keep"]).trim(), id);
    // SIGTERM leaves it running too.
    assert!(d.stop());
    assert_eq!(guest_leaders(d.root.path()), pids);
    d.spawn();
    d.virsh_ok(&["suspend", "keep"]);
    d.virsh_ok(&["resume", "keep"]);
    // A guest that dies while the daemon is down is reported shut off.
    d.kill9();
    support::kill_guests(d.root.path());
    assert!(wait_until(Duration::from_secs(5), || guest_pids(
        d.root.path()
    )
    .is_empty()));
    d.spawn();
    assert_eq!(state(&d, "keep"), "shut off (unknown)");
    // Autostart brings it back when the daemon starts.
    d.virsh_ok(&["autostart", "keep"]);
    assert!(d.stop());
    d.spawn();
    wait_state(&d, "keep", "running (booted)", 30);
}

#[test]
fn python_receives_lifecycle_events_in_order() {
    let d = Daemon::start();
    let img = guest_image(d.root.path(), "ev");
    let script = format!(
        r#"
import libvirt, os, threading, time
libvirt.virEventRegisterDefaultImpl()
seen = []
def loop():
    while True:
        libvirt.virEventRunDefaultImpl()
threading.Thread(target=loop, daemon=True).start()
c = libvirt.open(os.environ["URI"])
def cb(conn, dom, event, detail, opaque):
    seen.append((dom.name(), event, detail))
def rb(conn, dom, opaque):
    seen.append((dom.name(), "reboot"))
c.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, cb, None)
c.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, rb, None)
other = libvirt.open(os.environ["URI"])
dom = other.defineXML(open("{xml}").read())
dom.create()
dom.suspend()
dom.resume()
dom.reboot()
deadline = time.time() + 30
while ("ev", "reboot") not in seen and time.time() < deadline:
    time.sleep(0.1)
dom.destroy()
dom.undefine()
deadline = time.time() + 10
while len(seen) < 7 and time.time() < deadline:
    time.sleep(0.1)
print(seen)
"#,
        xml = {
            let p = d.root.path().join("ev.xml");
            std::fs::write(&p, guest_xml("ev", &img)).unwrap();
            p.display().to_string()
        }
    );
    let printed = python_ok(&d.tcp_uri(), &script);
    let expected = "[('ev', 0, 0), ('ev', 2, 0), ('ev', 3, 0), ('ev', 4, 0), ('ev', 'reboot'), ('ev', 5, 1), ('ev', 1, 0)]";
    assert_eq!(printed.trim(), expected);
}

#[test]
fn pings_are_answered_while_a_start_runs_at_the_request_limit() {
    use virtumld_protocol::header::{Status, KEEPALIVE_PROGRAM};
    use virtumld_protocol::procedures::proc as p;
    use virtumld_protocol::remote::{DomainCreateArgs, NonnullDomain};
    use virtumld_protocol::xdr::FixedOpaque;

    let d = Daemon::start_with("max_client_requests = 1\n");
    define(&d, "slow");
    let text = d.virsh_ok(&["domuuid", "slow"]);
    let hex: String = text.trim().chars().filter(|c| *c != '-').collect();
    let mut uuid = [0u8; 16];
    for (i, b) in uuid.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    let mut raw = support::Raw::connect(d.port);
    raw.open();
    let dom = NonnullDomain {
        name: "slow".into(),
        uuid: FixedOpaque(uuid),
        id: -1,
    };
    // The start occupies the only slot; a queued call and a PING follow it.
    raw.call(p::DOMAIN_CREATE, 5, &DomainCreateArgs { dom });
    raw.call(p::CONNECT_GET_HOSTNAME, 6, &());
    raw.send(&support::ping());
    let (first, _) = raw.reply().unwrap();
    assert_eq!(
        first.program, KEEPALIVE_PROGRAM,
        "the PONG comes before the start's reply"
    );
    let (h, _) = raw.reply().unwrap();
    assert_eq!((h.serial, h.status), (5, Status::OK));
    let (h, _) = raw.reply().unwrap();
    assert_eq!((h.serial, h.status), (6, Status::OK));
    d.virsh_ok(&["destroy", "slow"]);
}

// ---------------------------------------------------------------------------------------
// Nothing of a guest outlives it. UML forks a "winch" helper for its tty console: it calls
// setsid (its own session and group, outside the guest's), blocks every signal but SIGKILL
// and shares the guest's descriptors, disk image included. It used to survive a destroy
// that escalated to SIGKILL, a guest crash, and a crash while no daemon ran; the next start
// on the same image then failed to lock it and the guest crashed.
// ---------------------------------------------------------------------------------------

/// `/proc/PID/stat` fields 4-6: (ppid, pgrp, session).
fn ids(pid: i32) -> Option<(i32, i32, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<i32> = s
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .skip(1)
        .take(3)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    Some((f[0], f[1], f[2]))
}

/// The live processes of the root whose argv carries `umid=<umid>`.
fn umid_pids(root: &std::path::Path, umid: &str) -> Vec<i32> {
    let word = format!("umid={umid}");
    guest_pids(root)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|w| w == word.as_bytes()))
        })
        .collect()
}

fn ps(pids: &[i32]) -> String {
    if pids.is_empty() {
        return "(none)".into();
    }
    let list: Vec<String> = pids.iter().map(i32::to_string).collect();
    let o = std::process::Command::new("ps")
        .args(["-o", "pid,pgid,sid,ppid,stat,args", "-p", &list.join(",")])
        .output()
        .expect("ps");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.chars().take(110).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Starts `name` and waits until its console log shows the `n`th boot and its winch
/// helper exists; returns (main pid, winch helper pid).
fn boot_with_helper(d: &Daemon, name: &str, log: &std::path::Path, n: usize) -> (i32, i32) {
    d.virsh_ok(&["start", name]);
    let root = d.root.path();
    let booted = wait_until(Duration::from_secs(30), || {
        std::fs::read_to_string(log).is_ok_and(|t| t.matches("virtumld-guest: ready").count() >= n)
    });
    assert!(
        booted,
        "boot {n} of {name} did not complete (a lock on the image still held?)\n{}\n{}",
        support::tail(&std::fs::read_to_string(log).unwrap_or_default(), 15),
        ps(&guest_pids(root))
    );
    // The winch helper leads a session too, but its parent is the main process.
    let pids = umid_pids(root, name);
    let main = guest_leaders(root)
        .into_iter()
        .find(|&p| {
            pids.contains(&p)
                && ids(p).is_some_and(|(ppid, _, sid)| sid == p && !pids.contains(&ppid))
        })
        .expect("the guest's main process");
    let mut winch = None;
    let found = wait_until(Duration::from_secs(10), || {
        winch = umid_pids(root, name)
            .into_iter()
            .find(|&p| ids(p).is_some_and(|(ppid, _, sid)| ppid == main && sid == p));
        winch.is_some()
    });
    let all = umid_pids(root, name);
    assert!(
        found,
        "no winch helper (own session, child of {main}):\n{}",
        ps(&all)
    );
    let winch = winch.unwrap_or_default();
    eprintln!("boot {n}: main {main}, winch helper {winch}\n{}", ps(&all));
    (main, winch)
}

fn assert_nothing_left(d: &Daemon, name: &str, what: &str) {
    let left = umid_pids(d.root.path(), name);
    assert!(
        left.is_empty(),
        "{what}: processes of {name} left behind:\n{}\ndaemon log:\n{}",
        ps(&left),
        support::tail(&d.log(), 20)
    );
    let dir = d.root.path().join("run/libvirt/uml-guest").join(name);
    assert!(!dir.exists(), "{what}: {} is left", dir.display());
}

/// Sends one mconsole command to the guest (no reply needed).
fn mconsole_send(d: &Daemon, name: &str, cmd: &str) {
    let me = d.root.path().join(format!("mc-{name}.sock"));
    let _ = std::fs::remove_file(&me);
    let sock = std::os::unix::net::UnixDatagram::bind(&me).expect("bind");
    let target = d
        .root
        .path()
        .join("run/libvirt/uml-guest")
        .join(name)
        .join("mconsole");
    let req = virtumld_uml::mconsole::encode_request(cmd).expect("request");
    sock.send_to(&req, &target).expect("send to mconsole");
}

fn signal_group(pid: i32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), sig).expect("killpg");
}

#[test]
fn no_guest_process_outlives_destroy_crash_or_restart() {
    use nix::sys::signal::Signal;
    let t0 = std::time::Instant::now();
    let mut d = Daemon::start();
    let name = "wh";
    let img = guest_image(d.root.path(), name);
    let log = d.root.path().join("wh-console.log");
    let xml = guest_xml(name, &img).replace(
        "<console type='pty'/>",
        &format!(
            "<console type='pty'><log file='{}' append='on'/></console>",
            log.display()
        ),
    );
    let f = d.root.path().join("wh.xml");
    std::fs::write(&f, xml).unwrap();
    d.virsh_ok(&["define", &f.display().to_string()]);

    // 1. A plain destroy: UML ends on SIGTERM and takes its helper along.
    boot_with_helper(&d, name, &log, 1);
    d.virsh_ok(&["destroy", name]);
    assert_nothing_left(&d, name, "destroy");

    // 2. A destroy that must escalate: the group is stopped, SIGTERM cannot act, SIGKILL
    //    after the grace period; the helper, outside the group, was not even stopped.
    let (main, winch) = boot_with_helper(&d, name, &log, 2);
    signal_group(main, Signal::SIGSTOP);
    let t = std::time::Instant::now();
    d.virsh_ok(&["destroy", name]);
    eprintln!(
        "destroy of a stopped guest (SIGKILL after the grace): {:?}",
        t.elapsed()
    );
    assert_nothing_left(&d, name, "destroy escalated to SIGKILL");
    assert!(ids(winch).is_none(), "winch helper {winch} survived");

    // 3. The guest crashes (kernel panic: UML dies of SIGABRT, skipping its clean-up).
    boot_with_helper(&d, name, &log, 3);
    mconsole_send(&d, name, "sysrq c");
    wait_state(&d, name, "shut off (crashed)", 20);
    assert_nothing_left(&d, name, "kernel panic");

    // 4. The main process is killed alone, on the daemon's watch.
    let (main, _) = boot_with_helper(&d, name, &log, 4);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(main), Signal::SIGKILL).unwrap();
    wait_state(&d, name, "shut off (crashed)", 20);
    assert_nothing_left(&d, name, "main process killed");

    // 5. ... and while no daemon runs: the next daemon finds the leftovers and kills them.
    let (main, winch) = boot_with_helper(&d, name, &log, 5);
    d.kill9();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(main), Signal::SIGKILL).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || {
            ids(main).is_none_or(|_| !umid_pids(d.root.path(), name).contains(&main))
        }),
        "the main process did not die"
    );
    assert!(
        umid_pids(d.root.path(), name).contains(&winch),
        "the winch helper outlives its guest's SIGKILL (the case to handle)"
    );
    d.spawn();
    assert_eq!(state(&d, name), "shut off (unknown)");
    assert_nothing_left(&d, name, "daemon restart");

    // The same image boots again, fully, and a last destroy leaves nothing.
    boot_with_helper(&d, name, &log, 6);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains("Failed to lock"), "{text}");
    d.virsh_ok(&["destroy", name]);
    assert_nothing_left(&d, name, "final destroy");
    eprintln!("winch helper test: {:?}", t0.elapsed());
}

/// A guest that gets no CPU for a while answers its mconsole late: SIGSTOP on its main
/// process stands in for a saturated host (UML's `stop` runs in a kernel worker of the
/// guest, which must be scheduled to answer). `virsh suspend` waits for it, as libvirt
/// waits for QEMU's monitor, rather than failing after 5 s. A guest that does not answer
/// within 30 s gets libvirt's "Timed out during operation", while other clients, and
/// queries of the same domain, are served meanwhile; when it carries the pause out later,
/// the domain is reported paused. A destroy never waits behind such a call.
#[test]
fn suspend_waits_for_a_slow_guest_and_times_out_cleanly_on_a_silent_one() {
    use nix::sys::signal::{kill, Signal};
    use std::time::Instant;
    let d = Daemon::start();
    define(&d, "slow");
    d.virsh_ok(&["start", "slow"]);
    // The mconsole answers (start waits for it); one round trip more to be sure.
    d.virsh_ok(&["suspend", "slow"]);
    d.virsh_ok(&["resume", "slow"]);
    let pid = nix::unistd::Pid::from_raw(guest_leaders(d.root.path())[0]);
    let uri = d.tcp_uri();
    let timed = |args: &'static [&'static str]| {
        let uri = uri.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            let o = support::virsh(&uri, args);
            (o.status.success(), out(&o), t.elapsed())
        })
    };
    // A query while a suspend waits: answered at once, from the daemon's own state.
    let prompt_query = || {
        let t = Instant::now();
        let s = state(&d, "slow");
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "domstate took {:?}",
            t.elapsed()
        );
        assert!(d.virsh_ok(&["list", "--all"]).contains("slow"));
        s
    };

    // Slow: the answer comes after 8 s, and the suspend succeeds.
    kill(pid, Signal::SIGSTOP).unwrap();
    let suspend = timed(&["suspend", "slow"]);
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(prompt_query(), "running (unpaused)");
    kill(pid, Signal::SIGCONT).unwrap();
    let (ok, text, took) = suspend.join().unwrap();
    assert!(ok, "a slow guest's suspend failed after {took:?}: {text}");
    assert!(took >= Duration::from_secs(8), "{took:?}");
    assert_eq!(state(&d, "slow"), "paused (user)");
    d.virsh_ok(&["resume", "slow"]);
    assert_eq!(state(&d, "slow"), "running (unpaused)");

    // Silent for longer than the daemon waits: a clean libvirt-style timeout. The request
    // stays with the guest, which carries it out once it runs again.
    kill(pid, Signal::SIGSTOP).unwrap();
    let suspend = timed(&["suspend", "slow"]);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(prompt_query(), "running (unpaused)");
    let (ok, text, took) = suspend.join().unwrap();
    assert!(!ok, "{text}");
    assert!(
        text.contains("Timed out during operation: cannot suspend domain 'slow': the guest did not answer its management console within 30 s"),
        "{text}"
    );
    assert!(
        took >= Duration::from_secs(29) && took < Duration::from_secs(45),
        "{took:?}"
    );
    assert_eq!(state(&d, "slow"), "running (unpaused)");
    kill(pid, Signal::SIGCONT).unwrap();
    wait_state(&d, "slow", "paused (user)", 20);
    // And the daemon's state is the guest's: resuming works.
    d.virsh_ok(&["resume", "slow"]);
    assert_eq!(state(&d, "slow"), "running (unpaused)");

    // A destroy does not queue behind a suspend waiting for a silent guest: the suspend
    // gives up at once, and the destroy takes its usual course (SIGTERM, which a stopped
    // process does not act on, then SIGKILL after 10 s).
    kill(pid, Signal::SIGSTOP).unwrap();
    let suspend = timed(&["suspend", "slow"]);
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    let destroyed = d.virsh(&["destroy", "slow"]);
    let destroy_took = t.elapsed();
    assert!(destroyed.status.success(), "{}", out(&destroyed));
    let (ok, text, took) = suspend.join().unwrap();
    assert!(!ok, "{text}");
    assert!(
        text.contains("operation aborted: cannot suspend domain 'slow': it is being destroyed"),
        "{text}"
    );
    assert!(took < Duration::from_secs(5), "the suspend waited {took:?}");
    assert!(
        destroy_took < Duration::from_secs(20),
        "the destroy took {destroy_took:?}"
    );
    assert_eq!(state(&d, "slow"), "shut off (destroyed)");
    assert!(guest_pids(d.root.path()).is_empty());
}
