//! The stock virsh and python3-libvirt against a private daemon: connection- and host-level
//! commands over TCP and UNIX, read-only, refused URIs, unsupported APIs, closing.

mod support;

use std::time::Duration;

use support::{fd_count, python_ok, virsh, wait_until, Daemon};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn uml_kernel_version() -> String {
    let out = std::process::Command::new("/usr/bin/linux.uml")
        .arg("--version")
        .output()
        .expect("linux.uml (install user-mode-linux)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn host_commands_over_tcp_and_unix() {
    let mut d = Daemon::start();
    let kernel = uml_kernel_version();
    for uri in [d.tcp_uri(), d.unix_uri()] {
        let v = virsh(&uri, &["version", "--daemon"]);
        assert!(v.status.success(), "{}", stderr(&v));
        let v = stdout(&v);
        assert!(v.contains("Using API: UML 9.0.0"), "{v}");
        assert!(
            v.contains(&format!("Running hypervisor: UML {kernel}")),
            "{v}"
        );
        assert!(v.contains("Running against daemon: 9.0.0"), "{v}");

        let h = stdout(&virsh(&uri, &["hostname"]));
        let expected = nix::unistd::gethostname().unwrap();
        assert_eq!(h.trim(), expected.to_string_lossy());

        let n = stdout(&virsh(&uri, &["nodeinfo"]));
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert!(n.contains(&format!("CPU(s):              {cpus}")), "{n}");
        assert!(n.contains("CPU model:           x86_64"), "{n}");
        let mem_line = n.lines().find(|l| l.starts_with("Memory size:")).unwrap();
        let kib: u64 = mem_line.split_whitespace().nth(2).unwrap().parse().unwrap();
        assert!(kib > 100_000, "{mem_line}");

        let caps = stdout(&virsh(&uri, &["capabilities"]));
        assert!(caps.contains("<os_type>uml</os_type>"), "{caps}");
        assert!(caps.contains("<domain type='uml'/>"), "{caps}");
        assert!(caps.contains("<arch>x86_64</arch>"), "{caps}");

        let dc = virsh(&uri, &["domcapabilities"]);
        assert!(dc.status.success(), "{}", stderr(&dc));
        assert!(stdout(&dc).contains("<domain>uml</domain>"));

        let l = virsh(&uri, &["list", "--all"]);
        assert!(l.status.success(), "{}", stderr(&l));
        assert_eq!(stdout(&l).trim(), "", "list --all -q must be empty");

        let u = stdout(&virsh(&uri, &["uri"]));
        assert_eq!(u.trim(), uri);
    }
    // An unqualified URI (name "" on the wire) adopts the daemon's answer to GET_URI.
    let probe = virsh(&format!("uml+tcp://127.0.0.1:{}", d.port), &["uri"]);
    assert!(probe.status.success(), "{}", stderr(&probe));
    assert!(d.stop(), "daemon must exit 0 on SIGTERM");
    assert!(!d.socket().exists(), "sockets removed on shutdown");
}

#[test]
fn read_only_connections() {
    let d = Daemon::start();
    let ro = virsh(&d.tcp_uri(), &["-r", "list", "--all"]);
    // `-r` must come before -c for virsh: use the global option form.
    let ro = if ro.status.success() {
        ro
    } else {
        std::process::Command::new("virsh")
            .args(["-q", "-r", "-c", &d.tcp_uri(), "list", "--all"])
            .output()
            .unwrap()
    };
    assert!(ro.status.success(), "{}", stderr(&ro));
    // The read-only socket works too.
    let uri = format!("uml+unix:///system?socket={}", d.ro_socket().display());
    let out = std::process::Command::new("virsh")
        .args(["-q", "-r", "-c", &uri, "hostname"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn other_drivers_are_refused_like_libvirtd() {
    let d = Daemon::start();
    let out = virsh(
        &format!("qemu+tcp://127.0.0.1:{}/system", d.port),
        &["list"],
    );
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("failed to connect to the hypervisor"), "{e}");
    assert!(
        e.contains("no connection driver available for qemu:///system"),
        "{e}"
    );
}

#[test]
fn python_client_host_calls_and_unsupported_apis() {
    let d = Daemon::start();
    let script = r#"
import libvirt, os
c = libvirt.open(os.environ["URI"])
print("type", c.getType())
print("lib", c.getLibVersion())
print("hv", c.getVersion())
print("host", c.getHostname())
info = c.getInfo()
assert info[1] > 0 and info[2] > 0, info
print("secure", c.isSecure())
assert "<os_type>uml</os_type>" in c.getCapabilities()
assert c.getMaxVcpus(None) == 1
assert c.getFreeMemory() > 0
m = c.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS)
assert m["total"] > 0, m
s = c.getCPUStats(libvirt.VIR_NODE_CPU_STATS_ALL_CPUS)
assert "user" in s, s
assert "<sysinfo" in c.getSysinfo()
try:
    c.listAllNetworks()
    raise SystemExit("networks should be unsupported")
except libvirt.libvirtError as e:
    assert e.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT, (e.get_error_code(), str(e))
    print("nosupport", e)
# The connection stays usable after an error.
print("host2", c.getHostname())
c.close()
"#;
    let out = python_ok(&d.tcp_uri(), script);
    assert!(out.contains("type UML"), "{out}");
    assert!(out.contains("lib 9000000"), "{out}");
    assert!(out.contains("secure 0"), "{out}");
    assert!(out.contains("virConnectListAllNetworks"), "{out}");
    assert!(out.contains("host2 "), "{out}");
    let out = python_ok(
        &d.unix_uri(),
        "import libvirt, os\nprint(libvirt.open(os.environ['URI']).isSecure())\n",
    );
    assert_eq!(out.trim(), "1");
}

/// Stock clients end with CONNECT_CLOSE and then close their side; the daemon serves
/// nothing after CONNECT_CLOSE but must still see every such connection to its end, with
/// nothing left open.
#[test]
fn connections_closed_by_stock_clients_leave_nothing_open() {
    let d = Daemon::start();
    // One connection first, so lazily opened descriptors count in the baseline.
    assert!(virsh(&d.tcp_uri(), &["hostname"]).status.success());
    let base = fd_count(d.pid());
    for uri in [d.tcp_uri(), d.unix_uri()] {
        for _ in 0..5 {
            let l = virsh(&uri, &["list", "--all"]);
            assert!(l.status.success(), "{}", stderr(&l));
        }
        let out = python_ok(
            &uri,
            r#"
import libvirt, os
for i in range(5):
    c = libvirt.open(os.environ["URI"])
    c.getHostname()
    assert c.close() == 0
# A connection used after close fails in the client, and a new one works.
try:
    c.getHostname()
    raise SystemExit("a closed connection answered")
except libvirt.libvirtError:
    pass
print("again", libvirt.open(os.environ["URI"]).getType())
"#,
        );
        assert!(out.contains("again UML"), "{out}");
    }
    let back = wait_until(Duration::from_secs(10), || fd_count(d.pid()) <= base);
    assert!(back, "fds: {} now, {base} before", fd_count(d.pid()));
    assert!(!d.log().contains("WARN"), "{}", d.log());
}

/// `virsh -c uml:///system` as root with the default paths, in a private mount namespace
/// (tmpfs over /run, /etc/libvirt and /var/log) so the host is untouched.
#[test]
fn default_system_paths_in_a_private_mount_namespace() {
    let script = format!(
        r#"set -e
mount -t tmpfs tmpfs /run
mkdir -p /etc/libvirt && mount -t tmpfs tmpfs /etc/libvirt
mount -t tmpfs tmpfs /var/log
{bin} --system 2>/run/virtumld.log &
pid=$!
for i in $(seq 100); do [ -S /run/libvirt/virtumld-sock ] && break; sleep 0.05; done
virsh -q -c uml:///system hostname
virsh -q -r -c uml:///system list --all
echo "ro-socket: $(stat -c %a /run/libvirt/virtumld-sock-ro)"
kill $pid; wait $pid
echo "exit: $?"
[ ! -e /run/libvirt/virtumld-sock ] && echo "socket removed"
"#,
        bin = env!("CARGO_BIN_EXE_virtumld")
    );
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare (util-linux)");
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    let host = nix::unistd::gethostname().unwrap();
    assert!(text.starts_with(&*host.to_string_lossy()), "{text}");
    assert!(text.contains("ro-socket: 777"), "{text}");
    assert!(text.contains("exit: 0"), "{text}");
    assert!(text.contains("socket removed"), "{text}");
}
