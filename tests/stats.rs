//! Statistics of a real UML guest through the stock clients: `virsh domstats` /
//! `getAllDomainStats` (CONNECT_GET_ALL_DOMAIN_STATS) with figures from the guest's
//! processes and its own /proc, the per-domain calls (memory, block, interface stats),
//! the empty snapshot list, a paused guest, a stuck guest (the call stays short), and a
//! stopped one.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use support::{guest_image, guest_leaders, guest_xml, python_ok, Daemon};

/// `virsh domstats` output as key → value.
fn domstats(d: &Daemon, args: &[&str]) -> HashMap<String, String> {
    let mut a = vec!["domstats"];
    a.extend_from_slice(args);
    d.virsh_ok(&a)
        .lines()
        .filter_map(|l| l.trim().split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn num(s: &HashMap<String, String>, k: &str) -> u64 {
    s.get(k)
        .unwrap_or_else(|| panic!("no {k} in {s:?}"))
        .parse()
        .unwrap()
}

#[test]
fn stats_of_a_running_paused_stuck_and_stopped_guest() {
    let d = Daemon::start();
    let img = guest_image(d.root.path(), "st");
    let f = d.root.path().join("st.xml");
    std::fs::write(&f, guest_xml("st", &img)).unwrap();
    d.virsh_ok(&["define", &f.display().to_string()]);
    d.virsh_ok(&["start", "st"]);
    // `start` returns once mconsole answers; the guest's block layer comes a moment later.
    let booted = support::wait_until(Duration::from_secs(20), || {
        domstats(&d, &["st"])
            .get("block.0.rd.bytes")
            .is_some_and(|v| v.parse::<u64>().unwrap_or(0) > 0)
    });
    assert!(booted, "{:?}", domstats(&d, &["st"]));

    let s = domstats(&d, &["st"]);
    assert_eq!(num(&s, "state.state"), 1);
    let cpu = num(&s, "cpu.time");
    assert!(cpu > 0);
    assert_eq!(cpu, num(&s, "cpu.user") + num(&s, "cpu.system"));
    assert_eq!(num(&s, "vcpu.current"), 1);
    assert_eq!(num(&s, "vcpu.0.time"), cpu);
    assert_eq!(num(&s, "balloon.current"), 65536);
    assert_eq!(num(&s, "balloon.maximum"), 65536);
    assert!(num(&s, "balloon.rss") > 0);
    // The guest's own view: what it manages, what is free.
    let (avail, unused) = (num(&s, "balloon.available"), num(&s, "balloon.unused"));
    assert!(0 < unused && unused <= avail && avail <= 65536, "{s:?}");
    assert_eq!(num(&s, "net.count"), 0);
    assert_eq!(num(&s, "block.count"), 1);
    assert_eq!(s["block.0.name"], "ubd0");
    assert_eq!(s["block.0.path"], img.display().to_string());
    assert!(num(&s, "block.0.rd.bytes") > 0, "booting read the root fs");
    assert_eq!(
        num(&s, "block.0.capacity"),
        std::fs::metadata(&img).unwrap().len()
    );

    // The per-domain calls and the python API, as virt-manager's fallbacks use them.
    let out = python_ok(
        &d.tcp_uri(),
        &format!(
            r#"
import libvirt, os
c = libvirt.open(os.environ["URI"])
dom = c.lookupByName("st")
m = dom.memoryStats()
assert m["actual"] == 65536 and m["rss"] > 0 and 0 < m["unused"] <= m["available"], m
b = dom.blockStats("ubd0")
assert b[1] > 0 and b[4] == -1, b
assert dom.blockStats("{img}") == b or dom.blockStats("{img}")[1] >= b[1]
f = dom.blockStatsFlags("ubd0")
assert f["rd_bytes"] >= b[1] and "wr_operations" in f, f
for bad, call in (("eth0", dom.interfaceStats), ("nosuch", dom.blockStats)):
    try:
        call(bad)
        raise SystemExit("no error for " + bad)
    except libvirt.libvirtError as e:
        assert e.get_error_code() == libvirt.VIR_ERR_INVALID_ARG, e
assert dom.listAllSnapshots() == []
recs = c.getAllDomainStats(0)
assert len(recs) == 1 and recs[0][1]["state.state"] == 1
only = c.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_INACTIVE)
assert only == [], only
try:
    c.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_PERF,
                        libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ENFORCE_STATS)
    raise SystemExit("PERF was not refused")
except libvirt.libvirtError as e:
    assert e.get_error_code() == libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED, e
print("ok")
"#,
            img = img.display()
        ),
    );
    assert_eq!(out.trim(), "ok");

    // Paused: the guest still answers mconsole, and says it is paused.
    d.virsh_ok(&["suspend", "st"]);
    let s = domstats(&d, &["st"]);
    assert_eq!(num(&s, "state.state"), 3);
    assert!(s.contains_key("balloon.unused"));
    d.virsh_ok(&["resume", "st"]);

    // Stuck (every process stopped): the call waits for the guest a bounded time, leaves
    // the guest's own figures out, and does not wait again at the next poll.
    let leader = guest_leaders(d.root.path())[0];
    let pg = nix::unistd::Pid::from_raw(leader);
    nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let t = Instant::now();
    let s = domstats(&d, &["st"]);
    let first = t.elapsed();
    let t = Instant::now();
    let s2 = domstats(&d, &["st"]);
    let second = t.elapsed();
    nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert!(first < Duration::from_secs(3), "{first:?}");
    assert!(second < Duration::from_millis(700), "{second:?}");
    for s in [&s, &s2] {
        assert!(!s.contains_key("balloon.unused") && !s.contains_key("block.0.rd.bytes"));
        assert!(s.contains_key("cpu.time") && s.contains_key("balloon.rss"));
    }

    // Stopped: definition figures only; the live calls say the domain is not running.
    // (Stopping every UML process under ptrace can make the guest panic on SIGCONT, so it
    // may already be shut off as crashed: either way it ends shut off.)
    let _ = d.virsh(&["destroy", "st"]);
    assert!(support::wait_until(Duration::from_secs(10), || {
        d.virsh_ok(&["domstate", "st"]).trim() == "shut off"
    }));
    let s = domstats(&d, &["st"]);
    assert_eq!(num(&s, "state.state"), 5);
    assert_eq!(num(&s, "balloon.current"), 65536);
    assert!(!s.contains_key("cpu.time") && !s.contains_key("balloon.rss"));
    let e = d.virsh(&["dommemstat", "st"]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("domain is not running"));
    let e = d.virsh(&["domblkstat", "st", "ubd0"]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("domain is not running"));
}
