//! The stock virt-manager 4.1, run for real under Xvfb with a private HOME and session bus
//! (virt-manager.md §8), against a private daemon over TCP (`uml+tcp://127.0.0.1:PORT/
//! system`) with a running UML guest:
//!
//! - the connection becomes Active, the guest is listed, its text console opens by itself,
//!   a command typed into the busybox shell with xdotool runs in the guest (its output is
//!   read back from the console log the daemon writes), every call virt-manager makes is
//!   answered except the network and node-device ones this daemon does not offer, the stats
//!   tick goes through CONNECT_GET_ALL_DOMAIN_STATS, and virt-manager logs no traceback. A
//!   screenshot of the console is saved as `target/virt-manager-console.png`;
//! - a `virsh suspend` behind virt-manager's back reaches it as a lifecycle event; the
//!   details pages, the Pause/Resume button and the host details' Storage tab work
//!   without errors.
//!
//! Needs the packages `tools/install-deps` installs (virt-manager xvfb xauth dbus-x11
//! x11-utils xdotool imagemagick). virt-manager builds its default storage pool on
//! connect: for a `/system` URI that is `/var/lib/libvirt/images`, created if missing, as
//! libvirtd would.
//!
//! Everything started here (Xvfb, dbus-daemon, virt-manager) runs in its own process group
//! and is killed by that group's id when the test ends, whatever its outcome.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

use support::{guest_image, repo_root, tail, wait_until, Daemon};

/// One desktop at a time: two Xvfb sessions and two guests on a small machine make both
/// slow enough to flake.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Procedures this daemon answers with VIR_ERR_NO_SUPPORT on purpose, and virt-manager
/// probes: the old network and node-device listings and their event registrations.
const EXPECTED_UNSUPPORTED: [u32; 4] = [52, 111, 313, 374];

fn need(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is missing: run tools/install-deps (virt-manager xvfb xauth dbus-x11 \
         x11-utils xdotool imagemagick)"
    );
}

/// A child in its own process group, killed with its group on drop.
struct Group(Option<Child>);

impl Group {
    fn spawn(cmd: &mut Command) -> Group {
        let child = cmd
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Group(Some(child))
    }

    /// SIGTERM to the group, SIGKILL after `grace`, then reaps the leader.
    fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        let pg = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < grace {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Whatever of the group is left (dconf-service under dbus-daemon, …).
        let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stop(Duration::from_millis(500));
    }
}

/// Xvfb plus a session bus, with a private HOME/XDG tree so virt-manager's dconf settings
/// and its remembered URIs stay inside the test's directory.
struct Desktop {
    dir: PathBuf,
    display: String,
    bus: String,
    /// The read ends of Xvfb's and dbus-daemon's stdout, kept open so a late write never
    /// meets a closed pipe.
    _pipes: Vec<BufReader<std::process::ChildStdout>>,
    // Dropped in reverse order of start: the app first, then the bus, then X.
    app: Option<Group>,
    _dbus: Group,
    _xvfb: Group,
}

impl Desktop {
    fn start(dir: &Path) -> Desktop {
        for t in [
            "Xvfb",
            "dbus-daemon",
            "xdotool",
            "import",
            "gsettings",
            "virt-manager",
        ] {
            need(t);
        }
        let home = dir.join("home");
        std::fs::create_dir_all(home.join("run")).unwrap();
        std::fs::set_permissions(
            home.join("run"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        // Xvfb picks a free display itself and writes its number to stdout.
        let mut xvfb = Group::spawn(
            Command::new("Xvfb")
                .args([
                    "-displayfd",
                    "1",
                    "-screen",
                    "0",
                    "1280x800x24",
                    "-nolisten",
                    "tcp",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        );
        let mut xout = BufReader::new(xvfb.0.as_mut().unwrap().stdout.take().unwrap());
        let mut line = String::new();
        xout.read_line(&mut line).unwrap();
        let display = format!(":{}", line.trim());
        assert!(display.len() > 1, "Xvfb did not report its display");
        let mut d = Desktop {
            dir: dir.to_path_buf(),
            display,
            bus: String::new(),
            _pipes: vec![xout],
            app: None,
            _dbus: Group(None),
            _xvfb: xvfb,
        };
        // The bus must see the private HOME: dconf-service, which it starts, writes there.
        let mut dbus = Group::spawn(
            d.env(&mut Command::new("dbus-daemon"))
                .args(["--session", "--nofork", "--print-address=1"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        );
        let mut bout = BufReader::new(dbus.0.as_mut().unwrap().stdout.take().unwrap());
        let mut addr = String::new();
        bout.read_line(&mut addr).unwrap();
        d._pipes.push(bout);
        d.bus = addr.trim().to_string();
        assert!(!d.bus.is_empty(), "dbus-daemon did not report its address");
        d._dbus = dbus;
        let up = wait_until(Duration::from_secs(10), || {
            d.run("xdpyinfo", &[]).status.success()
        });
        assert!(up, "Xvfb {} did not come up", d.display);
        // Memory, disk and network polling are off by default; on, the stats tick asks
        // for every group virt-manager can show.
        for k in ["enable-memory-poll", "enable-disk-poll", "enable-net-poll"] {
            let o = d.run(
                "gsettings",
                &["set", "org.virt-manager.virt-manager.stats", k, "true"],
            );
            assert!(o.status.success(), "gsettings {k}: {o:?}");
        }
        d
    }

    fn env<'a>(&self, c: &'a mut Command) -> &'a mut Command {
        let home = self.dir.join("home");
        c.env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .env("XDG_RUNTIME_DIR", home.join("run"))
            .env("DISPLAY", &self.display)
            .env("NO_AT_BRIDGE", "1")
            .env("LC_ALL", "C.UTF-8")
            .env_remove("XAUTHORITY");
        if !self.bus.is_empty() {
            c.env("DBUS_SESSION_BUS_ADDRESS", &self.bus);
        }
        c
    }

    fn run(&self, prog: &str, args: &[&str]) -> std::process::Output {
        self.env(&mut Command::new(prog))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {prog}: {e}"))
    }

    /// Starts `virt-manager --no-fork --debug -c URI EXTRA…`, its debug log in
    /// `virt-manager.out` and the client library's RPC trace in `client.log`.
    fn virt_manager(&mut self, uri: &str, extra: &[&str]) {
        let log = std::fs::File::create(self.log_path()).unwrap();
        let app = Group::spawn(
            self.env(&mut Command::new("/usr/bin/python3"))
                .args(["/usr/bin/virt-manager", "--no-fork", "--debug", "-c", uri])
                .args(extra)
                .env("LIBVIRT_LOG_FILTERS", "1:rpc")
                .env(
                    "LIBVIRT_LOG_OUTPUTS",
                    format!("1:file:{}", self.rpc_log_path().display()),
                )
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        );
        self.app = Some(app);
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("virt-manager.out")
    }

    fn rpc_log_path(&self) -> PathBuf {
        self.dir.join("client.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn rpc_log(&self) -> String {
        std::fs::read_to_string(self.rpc_log_path()).unwrap_or_default()
    }

    fn wait_log(&self, what: &str, timeout: Duration) {
        let ok = wait_until(timeout, || self.log().contains(what));
        assert!(
            ok,
            "virt-manager never logged {what:?}; log tail:\n{}",
            tail(&self.log(), 40)
        );
    }

    fn xdotool(&self, args: &[&str]) {
        let o = self.run("xdotool", args);
        assert!(o.status.success(), "xdotool {args:?}: {o:?}");
    }

    fn screenshot(&self, to: &Path) {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        let o = self.run(
            "import",
            &["-window", "root", "-depth", "8", &to.display().to_string()],
        );
        assert!(o.status.success(), "import: {o:?}");
    }

    /// Quits virt-manager (SIGTERM: it finishes its console stream and deregisters).
    fn stop_app(&mut self) {
        if let Some(mut a) = self.app.take() {
            a.stop(Duration::from_secs(3));
        }
    }
}

/// RPC replies (type 1) with an error status, by procedure number.
fn error_replies(rpc_log: &str) -> Vec<u32> {
    rpc_log
        .lines()
        .filter(|l| l.contains("RPC_CLIENT_MSG_RX:") && l.contains(" type=1 status=1"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("proc="))
                .and_then(|n| n.parse().ok())
        })
        .collect()
}

fn count(rpc_log: &str, needle: &str) -> usize {
    rpc_log.lines().filter(|l| l.contains(needle)).count()
}

/// The log lines that mean something went wrong inside virt-manager.
fn trouble(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            l.contains("Traceback")
                || l.contains("Uncaught exception")
                || l.contains("ERROR (")
                || l.contains("Error polling connection")
                || l.contains("Error opening serial console")
        })
        .collect()
}

/// Defines and starts a guest whose console is also logged to `<root>/NAME-console.log`,
/// and waits for its shell.
fn start_guest(d: &Daemon, name: &str) -> PathBuf {
    let img = guest_image(d.root.path(), name);
    let console_log = d.root.path().join(format!("{name}-console.log"));
    let xml = format!(
        "<domain type='uml'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <os><type>uml</type><kernel>/usr/bin/linux.uml</kernel></os>
  <devices>
    <disk type='file' device='disk'>
      <source file='{}'/>
      <target dev='ubd0' bus='uml'/>
    </disk>
    <console type='pty'>
      <log file='{}' append='on'/>
    </console>
  </devices>
</domain>
",
        img.display(),
        console_log.display()
    );
    let f = d.root.path().join(format!("{name}.xml"));
    std::fs::write(&f, xml).unwrap();
    d.virsh_ok(&["define", &f.display().to_string()]);
    d.virsh_ok(&["start", name]);
    // Generous: a loaded two-core machine boots UML slowly.
    let shell = wait_until(Duration::from_secs(45), || {
        std::fs::read_to_string(&console_log).is_ok_and(|s| s.contains("Enter 'help'"))
    });
    assert!(
        shell,
        "the guest's shell did not come up; console log:\n{}\ndaemon log:\n{}",
        tail(
            &std::fs::read_to_string(&console_log).unwrap_or_default(),
            20
        ),
        tail(&d.log(), 20)
    );
    console_log
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

#[test]
fn console_typing_reaches_the_guest_and_virt_manager_stays_clean() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start();
    let console_log = start_guest(&d, "vmgr");
    let mut desk = Desktop::start(&d.root.path().join("desktop"));
    desk.virt_manager(&d.tcp_uri(), &["--show-domain-console", "vmgr"]);

    desk.wait_log("changed to state=Active", Duration::from_secs(30));
    desk.wait_log("domain=vmgr status=Running added", Duration::from_secs(5));
    // The VM window ("<name> on <connection label>") opens on its text console by itself.
    let o = desk.run(
        "timeout",
        &["30", "xdotool", "search", "--sync", "--name", "^vmgr on "],
    );
    assert!(o.status.success(), "no 'vmgr on …' window: {o:?}");
    desk.wait_log("Opening console stream", Duration::from_secs(10));
    let got_output = wait_until(Duration::from_secs(10), || {
        desk.rpc_log().contains("proc=201 type=3 status=2")
    });
    assert!(got_output, "no console data reached virt-manager");
    std::thread::sleep(Duration::from_secs(1));

    // Click into the terminal and type; the guest's shell computes the marker, so
    // finding "VMGR-42" proves the keystrokes went through and the guest ran them.
    desk.xdotool(&["mousemove", "500", "400", "click", "1"]);
    std::thread::sleep(Duration::from_millis(300));
    desk.xdotool(&["type", "--delay", "40", "echo VMGR-$((6*7))"]);
    desk.xdotool(&["key", "Return"]);
    let ran = wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&console_log).is_ok_and(|s| s.contains("VMGR-42"))
    });
    assert!(
        ran,
        "the typed command did not run in the guest; console log tail:\n{}\nvirt-manager:\n{}",
        tail(
            &std::fs::read_to_string(&console_log).unwrap_or_default(),
            10
        ),
        tail(&desk.log(), 20)
    );
    std::thread::sleep(Duration::from_millis(500));
    let shot = target_dir().join("virt-manager-console.png");
    desk.screenshot(&shot);
    assert!(std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000));

    // Two stats ticks (3 s apart) through CONNECT_GET_ALL_DOMAIN_STATS, answered.
    let ticks = wait_until(Duration::from_secs(10), || {
        count(&desk.rpc_log(), "proc=344 type=1 status=0") >= 2
    });
    assert!(
        ticks,
        "the stats tick did not use CONNECT_GET_ALL_DOMAIN_STATS"
    );
    desk.stop_app();

    let rpc = desk.rpc_log();
    let unexpected: Vec<u32> = error_replies(&rpc)
        .into_iter()
        .filter(|p| !EXPECTED_UNSUPPORTED.contains(p))
        .collect();
    assert!(
        unexpected.is_empty(),
        "calls virt-manager made that failed: {unexpected:?}\n{}",
        tail(&d.log(), 30)
    );
    // The fallbacks of a failed 344 never happened.
    for p in [159, 64, 65] {
        assert_eq!(count(&rpc, &format!("proc={p} type=0")), 0, "proc {p} sent");
    }
    let log = desk.log();
    assert!(
        trouble(&log).is_empty(),
        "virt-manager logged:\n{}",
        trouble(&log).join("\n")
    );
    // virt-manager built its default pool through the storage calls.
    let pools = d.virsh_ok(&["pool-list", "--all", "--autostart"]);
    assert!(
        pools.contains("default") && pools.contains("active"),
        "default pool: {pools}"
    );
}

#[test]
fn pause_reaches_virt_manager_as_an_event_and_its_pages_and_buttons_work() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start();
    start_guest(&d, "evt");
    let mut desk = Desktop::start(&d.root.path().join("desktop"));
    // The VM window on its details pages.
    desk.virt_manager(&d.tcp_uri(), &["--show-domain-editor", "evt"]);
    desk.wait_log("domain=evt status=Running added", Duration::from_secs(30));
    let o = desk.run(
        "timeout",
        &["30", "xdotool", "search", "--sync", "--name", "^evt on "],
    );
    assert!(o.status.success(), "no 'evt on …' window: {o:?}");
    assert!(
        !desk.log().contains("Error registering domain events"),
        "virt-manager fell back to polling"
    );

    // Behind virt-manager's back: it polls nothing once lifecycle events are registered,
    // so only the event can tell it.
    d.virsh_ok(&["suspend", "evt"]);
    desk.wait_log(
        "domain lifecycle event: domain=evt state=VIR_DOMAIN_EVENT_SUSPENDED \
         reason=VIR_DOMAIN_EVENT_SUSPENDED_PAUSED",
        Duration::from_secs(10),
    );
    d.virsh_ok(&["resume", "evt"]);
    desk.wait_log(
        "domain lifecycle event: domain=evt state=VIR_DOMAIN_EVENT_RESUMED",
        Duration::from_secs(10),
    );
    assert!(count(&desk.rpc_log(), "proc=318 type=2") >= 2);

    // Every details page (list rows 26 px apart from y=92 in the default theme; the
    // UML guest has Overview, OS, Performance, CPUs, Memory, Boot, Disk, Console).
    for k in 0..8 {
        let y = (92 + 26 * k).to_string();
        desk.xdotool(&["mousemove", "80", &y, "click", "1"]);
        std::thread::sleep(Duration::from_millis(400));
    }
    // The toolbar's Pause/Resume toggle (at (167,45) in the VM window) does the same.
    let state = |want: &str| {
        wait_until(Duration::from_secs(10), || {
            d.virsh_ok(&["domstate", "evt"]).trim() == want
        })
    };
    desk.xdotool(&["mousemove", "167", "45", "click", "1"]);
    assert!(state("paused"), "the Pause button did not pause the guest");
    desk.xdotool(&["mousemove", "167", "45", "click", "1"]);
    assert!(
        state("running"),
        "the Resume button did not resume the guest"
    );

    // Host details (sent to the running instance over the session bus), Storage tab:
    // the default pool virt-manager built on connect.
    let o = desk.run(
        "/usr/bin/python3",
        &[
            "/usr/bin/virt-manager",
            "-c",
            &d.tcp_uri(),
            "--show-host-summary",
        ],
    );
    assert!(o.status.success(), "{o:?}");
    let o = desk.run(
        "timeout",
        &[
            "20",
            "xdotool",
            "search",
            "--sync",
            "--name",
            "Connection Details$",
        ],
    );
    assert!(o.status.success(), "no host details window: {o:?}");
    std::thread::sleep(Duration::from_secs(1));
    desk.xdotool(&["mousemove", "287", "49", "click", "1"]);
    std::thread::sleep(Duration::from_secs(2));
    desk.stop_app();
    let log = desk.log();
    assert!(
        trouble(&log).is_empty(),
        "virt-manager logged:\n{}",
        trouble(&log).join("\n")
    );
    let unexpected: Vec<u32> = error_replies(&desk.rpc_log())
        .into_iter()
        .filter(|p| !EXPECTED_UNSUPPORTED.contains(p))
        .collect();
    assert!(unexpected.is_empty(), "failed calls: {unexpected:?}");
}
