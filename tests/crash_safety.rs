//! Crash safety: the daemon is killed with SIGKILL at random moments while client threads
//! define, undefine, start, destroy and toggle autostart on three real guests. After every
//! restart:
//!
//! - every `<root>/etc/libvirt/uml/*.xml` parses (with the daemon's own parser) and names
//!   the domain its file is named after: nothing half-written;
//! - no `.tmp-` temporary survives the start, in the definitions or the live status;
//! - no guest is lost or duplicated: every running guest process of the root belongs to
//!   exactly one domain the daemon lists as running (and `virsh list` agrees), and every
//!   domain listed as running has exactly one process;
//! - no stray process: every process running with the root's `uml_dir` belongs to one of
//!   those guests (its group, its session, or a child of its main process);
//! - every guest that was alive when the daemon died is reattached: the same pid, recorded
//!   in its domain's live status. When the clients also start and destroy guests, a guest
//!   whose start or destroy the kill cut short may instead be gone entirely;
//! - the new daemon leaves no zombie `linux.uml` child behind.
//!
//! Finally everything is destroyed and no process of the root's guests may remain. The
//! run is bounded (`ITERATIONS` kills, about two minutes); the random seed is printed.

// Calls return the wire error by value, as the daemon's handlers do.
#![allow(clippy::result_large_err)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{
    call_header, guest_image, guest_leaders, guest_pids, guest_xml, python_ok, wait_until, Daemon,
};
use virtumld_protocol::error::RemoteError;
use virtumld_protocol::frame;
use virtumld_protocol::header::{MessageType, Status};
use virtumld_protocol::procedures::proc as p;
use virtumld_protocol::remote::{
    ConnectListAllDomainsArgs, ConnectListAllDomainsRet, DomainDefineXmlArgs,
    DomainLookupByNameArgs, DomainLookupByNameRet, NonnullDomain,
};
use virtumld_protocol::xdr::{self, Xdr};

const ITERATIONS: usize = 15;
const CLIENTS: usize = 3;
const DOMAINS: [&str; 3] = ["cs-a", "cs-b", "cs-c"];
/// The whole test gives up (and fails) after this long.
const DEADLINE: Duration = Duration::from_secs(170);
/// How long a restarted daemon gets to settle (reattach, autostart) before the checks.
const SETTLE: Duration = Duration::from_secs(30);

/// xorshift64*: enough randomness for kill moments and operation choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ---------------------------------------------------------------------------------------
// A raw client that never panics: any I/O failure is an `Err`, so the threads survive the
// daemon's death and reconnect.
// ---------------------------------------------------------------------------------------

struct Conn {
    s: TcpStream,
    serial: u32,
}

type CallResult = std::io::Result<Result<Vec<u8>, RemoteError>>;

impl Conn {
    fn open(port: u16) -> std::io::Result<Conn> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut c = Conn { s, serial: 0 };
        c.call(p::AUTH_LIST, &[])?.map_err(other)?;
        let mut args = xdr::to_bytes(&Some("uml:///system".to_string())).to_vec();
        args.extend(0u32.to_be_bytes());
        c.call(p::CONNECT_OPEN, &args)?.map_err(other)?;
        Ok(c)
    }

    fn call(&mut self, procedure: i32, args: &[u8]) -> CallResult {
        self.serial += 1;
        let serial = self.serial;
        let msg = frame::encode_with(&call_header(procedure, serial), |o| {
            o.extend_from_slice(args)
        });
        self.s.write_all(&msg)?;
        loop {
            let mut len = [0u8; 4];
            self.s.read_exact(&mut len)?;
            let n = u32::from_be_bytes(len) as usize;
            if !(28..=(1 << 25)).contains(&n) {
                return Err(std::io::Error::other(format!("bad length {n}")));
            }
            let mut m = len.to_vec();
            m.resize(n, 0);
            self.s.read_exact(&mut m[4..])?;
            let (h, payload) = frame::split(&m).map_err(std::io::Error::other)?;
            if h.kind != MessageType::REPLY || h.serial != serial {
                continue; // events
            }
            return Ok(if h.status == Status::OK {
                Ok(payload.to_vec())
            } else {
                Err(xdr::from_bytes::<RemoteError>(payload).map_err(std::io::Error::other)?)
            });
        }
    }

    fn lookup(&mut self, name: &str) -> std::io::Result<Result<NonnullDomain, RemoteError>> {
        let args = xdr::to_bytes(&DomainLookupByNameArgs { name: name.into() });
        Ok(self.call(p::DOMAIN_LOOKUP_BY_NAME, &args)?.map(|b| {
            xdr::from_bytes::<DomainLookupByNameRet>(&b)
                .expect("lookup reply")
                .dom
        }))
    }

    /// Names of the domains the daemon lists as running.
    fn running(&mut self) -> std::io::Result<BTreeSet<String>> {
        let args = xdr::to_bytes(&ConnectListAllDomainsArgs {
            need_results: 1,
            flags: 1, // VIR_CONNECT_LIST_DOMAINS_ACTIVE
        });
        let r = self
            .call(p::CONNECT_LIST_ALL_DOMAINS, &args)?
            .map_err(other)?;
        let r = xdr::from_bytes::<ConnectListAllDomainsRet>(&r).map_err(std::io::Error::other)?;
        Ok(r.domains.into_iter().map(|d| d.name).collect())
    }
}

fn other(e: RemoteError) -> std::io::Error {
    std::io::Error::other(format!("{:?}", e.message))
}

/// The test guest's definition, with a fixed uuid per name: a redefinition updates the
/// domain (persistent again after an undefine) instead of clashing with it.
fn domain_xml(name: &str, image: &Path) -> String {
    let n = DOMAINS.iter().position(|d| *d == name).unwrap_or(9);
    guest_xml(name, image).replace(
        "<memory",
        &format!("<uuid>c0ffee00-0000-4000-8000-00000000000{n}</uuid>\n  <memory"),
    )
}

fn encode<T: Xdr>(v: &T) -> Vec<u8> {
    xdr::to_bytes(v).to_vec()
}

// ---------------------------------------------------------------------------------------
// The client threads
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Tally {
    ops: BTreeMap<&'static str, (u64, u64)>, // (ok, refused)
    broken: u64,                             // calls cut by the daemon's death
}

struct Shared {
    port: u16,
    stop: AtomicBool,
    paused: AtomicBool,
    parked: AtomicUsize,
    images: Vec<PathBuf>,
    /// Whether the clients start guests too (then a kill can land in the middle of a start).
    starts: bool,
    tally: Mutex<Tally>,
}

fn client(shared: Arc<Shared>, seed: u64) {
    let mut rng = Rng(seed | 1);
    let mut conn: Option<Conn> = None;
    let mut parked = false;
    while !shared.stop.load(Ordering::Acquire) {
        if shared.paused.load(Ordering::Acquire) {
            conn = None;
            if !parked {
                parked = true;
                shared.parked.fetch_add(1, Ordering::AcqRel);
            }
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        if parked {
            parked = false;
            shared.parked.fetch_sub(1, Ordering::AcqRel);
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::open(shared.port) {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            },
        };
        let i = rng.below(DOMAINS.len() as u64) as usize;
        let name = DOMAINS[i];
        let define = |c: &mut Conn| {
            c.call(
                p::DOMAIN_DEFINE_XML,
                &encode(&DomainDefineXmlArgs {
                    xml: domain_xml(name, &shared.images[i]),
                }),
            )
        };
        let autostart = |c: &mut Conn, on: u32| {
            with_dom(c, name, p::DOMAIN_SET_AUTOSTART, |d| {
                let mut v = encode(&d);
                v.extend(on.to_be_bytes());
                v
            })
        };
        let (op, result): (&'static str, CallResult) = if shared.starts {
            match rng.below(100) {
                0..=29 => ("start", with_dom(c, name, p::DOMAIN_CREATE, |d| encode(&d))),
                30..=54 => (
                    "destroy",
                    with_dom(c, name, p::DOMAIN_DESTROY, |d| encode(&d)),
                ),
                55..=69 => ("define", define(c)),
                70..=79 => (
                    "undefine",
                    with_dom(c, name, p::DOMAIN_UNDEFINE, |d| encode(&d)),
                ),
                80..=89 => ("autostart on", autostart(c, 1)),
                _ => ("autostart off", autostart(c, 0)),
            }
        } else {
            match rng.below(100) {
                0..=24 => ("define", define(c)),
                25..=39 => (
                    "undefine",
                    with_dom(c, name, p::DOMAIN_UNDEFINE, |d| encode(&d)),
                ),
                40..=54 => ("autostart on", autostart(c, 1)),
                55..=69 => ("autostart off", autostart(c, 0)),
                70..=84 => (
                    "suspend",
                    with_dom(c, name, p::DOMAIN_SUSPEND, |d| encode(&d)),
                ),
                _ => (
                    "resume",
                    with_dom(c, name, p::DOMAIN_RESUME, |d| encode(&d)),
                ),
            }
        };
        let mut t = shared.tally.lock().unwrap();
        match result {
            Ok(r) => {
                let e = t.ops.entry(op).or_default();
                if r.is_ok() {
                    e.0 += 1;
                } else {
                    e.1 += 1;
                }
            }
            Err(_) => {
                t.broken += 1;
                conn = None;
            }
        }
    }
    if parked {
        shared.parked.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Looks the domain up, then calls `procedure` on it; a failed lookup is the result.
fn with_dom(
    c: &mut Conn,
    name: &str,
    procedure: i32,
    args: impl FnOnce(NonnullDomain) -> Vec<u8>,
) -> CallResult {
    match c.lookup(name)? {
        Ok(d) => c.call(procedure, &args(d)),
        Err(e) => Ok(Err(e)),
    }
}

// ---------------------------------------------------------------------------------------
// What is on disk and in /proc
// ---------------------------------------------------------------------------------------

fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = s.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let mut v = vec![comm];
    v.extend(rest.split_whitespace().map(str::to_string));
    Some(v) // [comm, state, ppid, pgrp, session, ...]
}

/// The main process of each running guest, with its umid: a session leader whose parent is
/// not itself a guest process (UML's winch helper leads a session too, under the main one).
fn guest_mains(root: &Path) -> BTreeMap<i32, String> {
    let all = guest_pids(root);
    let mut out = BTreeMap::new();
    for pid in guest_leaders(root) {
        let ppid = stat_fields(pid).and_then(|f| f.get(2)?.parse::<i32>().ok());
        if ppid.is_some_and(|pp| all.contains(&pp)) {
            continue;
        }
        let umid = std::fs::read(format!("/proc/{pid}/cmdline"))
            .ok()
            .and_then(|c| {
                c.split(|b| *b == 0)
                    .find_map(|w| w.strip_prefix(b"umid="))
                    .map(|u| String::from_utf8_lossy(u).into_owned())
            })
            .unwrap_or_default();
        out.insert(pid, umid);
    }
    out
}

/// Zombie `linux.uml` processes whose parent is `parent`.
fn zombie_guests_of(parent: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Some(f) = stat_fields(pid) {
            if f[0].starts_with("linux") && f[1] == "Z" && f[2] == parent.to_string() {
                out.push(pid);
            }
        }
    }
    out
}

/// Processes running with the root's `uml_dir` that belong to none of `mains`: not one of
/// them, not in their group or session, not their child (UML's winch helper leads a
/// session of its own under the main process).
fn unclaimed(root: &Path, mains: &BTreeMap<i32, String>) -> Vec<i32> {
    guest_pids(root)
        .into_iter()
        .filter(|&pid| {
            let ids = stat_fields(pid).and_then(|f| {
                let n = |i: usize| f.get(i)?.parse::<i32>().ok();
                Some([n(2)?, n(3)?, n(4)?]) // ppid, pgrp, session
            });
            let claimed = mains.contains_key(&pid)
                || ids.is_some_and(|ids| ids.iter().any(|i| mains.contains_key(i)));
            !claimed && ids.is_some() // gone meanwhile: not a stray
        })
        .collect()
}

/// Whether the domain's live status says its start had not completed (`ready='0'`).
fn status_starting(root: &Path, name: &str) -> bool {
    std::fs::read_to_string(root.join(format!("run/libvirt/uml/{name}.xml")))
        .is_ok_and(|t| t.lines().next().is_some_and(|l| l.contains("ready='0'")))
}

/// The pid a domain's live status file records (`<pid>N</pid>` or `pid='N'`).
fn status_pid(root: &Path, name: &str) -> Option<i32> {
    let text = std::fs::read_to_string(root.join(format!("run/libvirt/uml/{name}.xml"))).ok()?;
    for (open, close) in [("<pid>", "</pid>"), ("pid='", "'"), ("pid=\"", "\"")] {
        if let Some(at) = text.find(open) {
            let rest = &text[at + open.len()..];
            if let Some(end) = rest.find(close) {
                if let Ok(pid) = rest[..end].trim().parse() {
                    return Some(pid);
                }
            }
        }
    }
    None
}

fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect()
}

/// Every definition on disk parses and is named after its file.
fn check_definitions(root: &Path, iteration: usize) -> usize {
    let dir = root.join("etc/libvirt/uml");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".xml") else {
            continue;
        };
        if stem.starts_with('.') {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap();
        let def = virtumld_uml::domain::parse(&text).unwrap_or_else(|err| {
            panic!("iteration {iteration}: {name} does not parse ({err}):\n{text}")
        });
        assert_eq!(
            def.name, stem,
            "iteration {iteration}: {name} defines another name"
        );
        n += 1;
    }
    // Autostart links point at definitions (undefine removes the link first).
    for e in std::fs::read_dir(dir.join("autostart"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let target = std::fs::read_link(e.path()).unwrap();
        assert!(
            target.exists(),
            "iteration {iteration}: autostart link {} points at nothing",
            e.path().display()
        );
    }
    n
}

// ---------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------

/// Kills while the clients redefine, undefine, suspend, resume and toggle autostart on three
/// running guests; between kills (clients paused) whatever is missing is defined and booted
/// again, so every kill finds guests to reattach.
///
#[test]
fn sigkill_at_random_moments_keeps_definitions_and_running_guests() {
    crash_loop(false);
}

/// The clients also start and destroy guests, so kills land in the middle of starts (a
/// guest spawned but not booted yet, its status only provisional) and of destroys. A guest
/// spawned just before the kill must be reattached once it is up, or killed; never left
/// running unknown to the daemon, and never leaving a helper behind.
#[test]
fn sigkill_during_starts_and_destroys_loses_no_guest() {
    crash_loop(true);
}

fn crash_loop(clients_start: bool) {
    let begun = Instant::now();
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash safety: seed {seed} (rerun with CRASH_SEED={seed})");
    let mut rng = Rng(seed | 1);

    let mut d = Daemon::start();
    let root = d.root.path().to_path_buf();
    let images: Vec<PathBuf> = DOMAINS.iter().map(|n| guest_image(&root, n)).collect();
    for (n, img) in DOMAINS.iter().zip(&images) {
        let f = root.join(format!("{n}.xml"));
        std::fs::write(&f, domain_xml(n, img)).unwrap();
        d.virsh_ok(&["define", &f.display().to_string()]);
    }
    for n in DOMAINS {
        d.virsh_ok(&["start", n]);
    }

    let shared = Arc::new(Shared {
        port: d.port,
        stop: AtomicBool::new(false),
        paused: AtomicBool::new(false),
        parked: AtomicUsize::new(0),
        images: images.clone(),
        starts: clients_start,
        tally: Mutex::new(Tally::default()),
    });
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let s = shared.clone();
            let seed = rng.next() ^ i as u64;
            std::thread::spawn(move || client(s, seed))
        })
        .collect();

    let mut reattached = 0;
    let mut reattached_starting = 0;
    let mut gone = 0;
    let mut max_running = 0;
    for iteration in 0..ITERATIONS {
        assert!(
            begun.elapsed() < DEADLINE,
            "out of time at iteration {iteration}"
        );
        // Let the clients work, then kill at a random moment; with clients that start guests
        // every third round runs longer, so that guests finish booting.
        let extra = if clients_start && iteration % 3 == 2 {
            1500
        } else {
            0
        };
        std::thread::sleep(Duration::from_millis(rng.below(300) + extra));
        d.kill9();
        shared.paused.store(true, Ordering::Release);
        let all_parked = wait_until(Duration::from_secs(30), || {
            shared.parked.load(Ordering::Acquire) == CLIENTS
        });
        assert!(
            all_parked,
            "iteration {iteration}: a client did not notice the kill"
        );
        // Guests a destroy had already signalled may take a moment to go.
        std::thread::sleep(Duration::from_millis(300));
        let alive_at_kill = guest_mains(&root);
        let starting_at_kill: BTreeSet<String> = DOMAINS
            .iter()
            .filter(|n| status_starting(&root, n))
            .map(|n| n.to_string())
            .collect();

        d.spawn();
        let daemon_pid = d.pid();
        // The killed daemon's temporaries are cleaned at start-up, before the new one
        // listens. The new one may already be writing its own (a start it completes in
        // the background saves the guest's status): those carry its pid and are not
        // leftovers.
        let own = format!(".tmp-{daemon_pid}");
        for dir in ["etc/libvirt/uml", "run/libvirt/uml"] {
            let mut t = temporaries(&root.join(dir));
            t.retain(|n| !n.ends_with(&own));
            assert!(
                t.is_empty(),
                "iteration {iteration}: {dir} still holds {t:?}"
            );
        }
        let defined = check_definitions(&root, iteration);

        // Settle: the daemon's running domains and the guest processes agree.
        let mut conn = Conn::open(d.port).expect("connect after restart");
        let mut last = (BTreeSet::new(), BTreeMap::new());
        let agreed = wait_until(SETTLE, || {
            std::thread::sleep(Duration::from_millis(150));
            let Ok(running) = conn.running() else {
                return false;
            };
            let mains = guest_mains(&root);
            let umids: Vec<&String> = mains.values().collect();
            let unique: BTreeSet<&String> = umids.iter().copied().collect();
            let ok = unique.len() == umids.len()
                && unique
                    .iter()
                    .map(|s| s.as_str())
                    .eq(running.iter().map(|s| s.as_str()))
                && unclaimed(&root, &mains).is_empty();
            last = (running, mains);
            ok
        });
        let (running, mains) = last;
        assert!(
            agreed,
            "iteration {iteration}: running domains {running:?} but guest processes \
             {mains:?}, strays {:?} (alive at the kill: {alive_at_kill:?})\ndaemon log:\n{}",
            unclaimed(&root, &mains),
            support::tail(&d.log(), 40)
        );
        // virsh sees the same.
        let listed = listed_running(&d);
        assert_eq!(
            listed, running,
            "iteration {iteration}: virsh list disagrees"
        );
        // Every guest alive at the kill is back, same pid, recorded in its live status (or,
        // with starts and destroys cut short, gone entirely).
        for (pid, umid) in &alive_at_kill {
            if clients_start && !mains.contains_key(pid) {
                assert!(
                    !guest_pids(&root).contains(pid),
                    "iteration {iteration}: guest {umid} (pid {pid}) neither reattached nor gone"
                );
                gone += 1;
                continue;
            }
            assert_eq!(
                mains.get(pid),
                Some(umid),
                "iteration {iteration}: guest {umid} (pid {pid}) was not reattached; now {mains:?}"
            );
            if starting_at_kill.contains(umid) {
                reattached_starting += 1;
            }
            assert_eq!(
                status_pid(&root, umid),
                Some(*pid),
                "iteration {iteration}: the live status of {umid} does not record pid {pid}"
            );
            reattached += 1;
        }
        let z = zombie_guests_of(daemon_pid);
        assert!(
            z.is_empty(),
            "iteration {iteration}: zombie guests of the daemon: {z:?}"
        );
        max_running = max_running.max(running.len());
        eprintln!(
            "iteration {iteration}: {defined} defined, running {running:?}, {} alive at the \
             kill (starting: {starting_at_kill:?})",
            alive_at_kill.len()
        );
        if !clients_start {
            // Define and boot what is missing (the clients neither start nor destroy), so
            // that the next kill finds every guest running, to be reattached.
            for (n, img) in DOMAINS.iter().zip(&images) {
                if !running.contains(*n) {
                    let xml = encode(&DomainDefineXmlArgs {
                        xml: domain_xml(n, img),
                    });
                    let _ = conn.call(p::DOMAIN_DEFINE_XML, &xml);
                    let started = with_dom(&mut conn, n, p::DOMAIN_CREATE, |d| encode(&d));
                    assert!(
                        matches!(started, Ok(Ok(_))),
                        "iteration {iteration}: {n} does not start again: {started:?}\n{}",
                        support::tail(&d.log(), 20)
                    );
                }
            }
        }
        drop(conn);
        shared.paused.store(false, Ordering::Release);
    }

    shared.stop.store(true, Ordering::Release);
    shared.paused.store(false, Ordering::Release);
    for t in threads {
        t.join().expect("client thread");
    }
    {
        let t = shared.tally.lock().unwrap();
        eprintln!(
            "operations (ok, refused): {:?}; cut by a kill: {}",
            t.ops, t.broken
        );
        assert!(
            t.ops.values().map(|v| v.0).sum::<u64>() > 20,
            "the clients did little"
        );
    }
    eprintln!(
        "reattached {reattached} guests ({reattached_starting} still starting at the kill), \
         {gone} gone, over {ITERATIONS} kills; at most {max_running} running"
    );
    assert!(reattached > 0, "no kill found a running guest to reattach");

    // Destroy everything: every process of the root's guests goes (helpers included), and
    // nothing is listed running.
    for n in DOMAINS {
        let _ = d.virsh(&["destroy", n]);
    }
    let all_gone = wait_until(Duration::from_secs(15), || guest_pids(&root).is_empty());
    assert!(
        all_gone,
        "guest processes left after destroy: {:?}",
        guest_pids(&root)
    );
    assert!(d.virsh_ok(&["list", "--name"]).trim().is_empty());
    assert!(d.stop(), "the daemon did not stop cleanly");
    eprintln!("crash safety: {:?}", begun.elapsed());
}

// ---------------------------------------------------------------------------------------
// A start cut short by a kill, one at a time: the kill lands between the guest's spawn and
// its readiness, so the next daemon finds a provisional status (`ready='0'`). It listens at
// once and completes the start in the background, the domain meanwhile as during any start.
// ---------------------------------------------------------------------------------------

/// How long a restarted daemon may take to answer a client when it has no reason to wait.
const ANSWER_AT_ONCE: Duration = Duration::from_secs(3);

fn define_guest(d: &Daemon, name: &str) {
    let root = d.root.path();
    let img = guest_image(root, name);
    let f = root.join(format!("{name}.xml"));
    std::fs::write(&f, guest_xml(name, &img)).unwrap();
    d.virsh_ok(&["define", &f.display().to_string()]);
}

fn domstate(d: &Daemon, name: &str) -> String {
    d.virsh_ok(&["domstate", name, "--reason"])
        .trim()
        .to_string()
}

fn wait_domstate(d: &Daemon, name: &str, want: &str, within: Duration) {
    let ok = wait_until(within, || domstate(d, name) == want);
    assert!(
        ok,
        "{name} never reached '{want}' (now '{}')\n{}",
        domstate(d, name),
        support::tail(&d.log(), 30)
    );
}

/// Runs `virsh start NAME EXTRA` and SIGKILLs the daemon as soon as the guest's provisional
/// status is written: spawned, not ready. Returns the guest's main pid.
fn kill_during_start(d: &mut Daemon, name: &str, extra: &[&str]) -> i32 {
    let root = d.root.path().to_path_buf();
    let uri = d.tcp_uri();
    let mut args = vec!["start".to_string(), name.to_string()];
    args.extend(extra.iter().map(|a| a.to_string()));
    let client = std::thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        support::virsh(&uri, &args)
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !status_starting(&root, name) {
        assert!(
            Instant::now() < deadline,
            "no provisional status for {name}\n{}",
            support::tail(&d.log(), 20)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    d.kill9();
    let out = client.join().expect("virsh thread");
    assert!(
        !out.status.success(),
        "the start of {name} completed before the kill"
    );
    assert!(
        status_starting(&root, name),
        "{name}: provisional status gone"
    );
    let pid = status_pid(&root, name).expect("the provisional status names a pid");
    assert_eq!(
        guest_mains(&root).get(&pid).map(String::as_str),
        Some(name),
        "{name} (pid {pid}) is not running after the kill"
    );
    pid
}

/// The end of the guest's log (its kernel's output while it boots).
fn guest_log(d: &Daemon, name: &str) -> String {
    let log = d
        .root
        .path()
        .join(format!("var/log/libvirt/uml/{name}.log"));
    support::tail(&std::fs::read_to_string(log).unwrap_or_default(), 40)
}

/// Restarts the daemon and returns how long it took to answer `virsh version`.
fn restart_and_ask(d: &mut Daemon) -> Duration {
    let t = Instant::now();
    d.spawn();
    d.virsh_ok(&["version"]);
    t.elapsed()
}

/// Starts a daemon, defines `name`, kills the daemon during `virsh start NAME EXTRA`,
/// holds the guest in its boot (SIGSTOP on its main process) and restarts the daemon, which
/// must answer at once. Returns the daemon and the guest's main pid.
fn restarted_during_a_start(name: &str, extra: &[&str]) -> (Daemon, i32) {
    use nix::sys::signal::Signal;
    let mut d = Daemon::start();
    define_guest(&d, name);
    let pid = kill_during_start(&mut d, name, extra);
    signal_main(pid, Signal::SIGSTOP);
    let answered = restart_and_ask(&mut d);
    eprintln!("the restarted daemon answered after {answered:?}");
    assert!(
        answered < ANSWER_AT_ONCE,
        "the daemon answered after {answered:?}"
    );
    (d, pid)
}

/// Signals the guest's main process alone. (Not its group: early in its boot UML checks
/// ptrace on children of its own, which a SIGSTOP to the whole group makes fail.)
fn signal_main(pid: i32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).expect("kill");
}

/// The running domains `virsh list --name` shows.
fn listed_running(d: &Daemon) -> BTreeSet<String> {
    d.virsh_ok(&["list", "--name"])
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Every process of the root's guests belongs to one of the guests the daemon lists as
/// running, which are exactly `want` (main pid → name).
fn assert_only_guests(d: &Daemon, want: &BTreeMap<i32, String>) {
    let root = d.root.path();
    let mains = guest_mains(root);
    assert_eq!(&mains, want, "guest processes");
    assert_eq!(
        unclaimed(root, &mains),
        Vec::<i32>::new(),
        "stray processes"
    );
    assert_eq!(
        listed_running(d),
        want.values().cloned().collect(),
        "virsh list"
    );
}

/// `virsh start --paused` cut short: the new daemon completes the start, so the guest ends
/// paused (same process), sends the start's events, resumes and has a working console.
#[test]
fn sigkill_during_a_paused_start_leaves_the_guest_paused() {
    let begun = Instant::now();
    let name = "cs-paused";
    // Held in its boot, so that a client can watch the start complete.
    let (mut d, pid) = restarted_during_a_start(name, &["--paused"]);
    // Meanwhile the domain is as during any start: not active yet.
    assert_eq!(domstate(&d, name), "shut off (unknown)");
    assert!(d.virsh_ok(&["list", "--name"]).trim().is_empty());
    // A client sees the start's events; it lets the guest go on booting once registered.
    let script = format!(
        r#"
import libvirt, os, signal, threading, time
libvirt.virEventRegisterDefaultImpl()
seen = []
def loop():
    while True:
        libvirt.virEventRunDefaultImpl()
threading.Thread(target=loop, daemon=True).start()
c = libvirt.open(os.environ["URI"])
def cb(conn, dom, event, detail, opaque):
    seen.append((dom.name(), event, detail))
c.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, cb, None)
os.kill({pid}, signal.SIGCONT)
deadline = time.time() + 30
while len(seen) < 2 and time.time() < deadline:
    time.sleep(0.1)
time.sleep(0.5)
print(seen)
print("state", c.lookupByName("{name}").state())
"#
    );
    let printed = python_ok(&d.tcp_uri(), &script);
    assert!(
        printed.contains(&format!("[('{name}', 2, 0), ('{name}', 3, 0)]")),
        "started and suspended events expected: {printed}\n{}",
        support::tail(&d.log(), 30)
    );
    assert!(printed.contains("state [3, 1]"), "{printed}");
    assert_eq!(domstate(&d, name), "paused (user)");
    assert_eq!(status_pid(d.root.path(), name), Some(pid));
    assert!(
        !status_starting(d.root.path(), name),
        "status still provisional"
    );
    assert_only_guests(&d, &BTreeMap::from([(pid, name.to_string())]));
    d.virsh_ok(&["resume", name]);
    assert_eq!(domstate(&d, name), "running (unpaused)");
    support::console_answers(&d.tcp_uri(), name, "paused");
    assert_only_guests(&d, &BTreeMap::from([(pid, name.to_string())]));
    d.virsh_ok(&["destroy", name]);
    assert!(wait_until(Duration::from_secs(10), || guest_pids(
        d.root.path()
    )
    .is_empty()));
    assert!(d.stop(), "the daemon did not stop cleanly");
    eprintln!(
        "paused start completed by the next daemon: {:?}",
        begun.elapsed()
    );
}

/// A plain start cut short: the next daemon answers at once, while the guest is still
/// booting (held stopped here, so that the order is certain), and the guest then ends
/// running, same process.
#[test]
fn sigkill_during_a_start_does_not_delay_the_next_daemon() {
    use nix::sys::signal::Signal;
    let begun = Instant::now();
    let name = "cs-boot";
    let (mut d, pid) = restarted_during_a_start(name, &[]);
    assert!(
        status_starting(d.root.path(), name),
        "the start completed already"
    );
    assert_eq!(domstate(&d, name), "shut off (unknown)");
    // Calls on the domain wait for the start, as during any start: here a second start,
    // issued while the guest is still held, and refused by the daemon once it is up.
    let uri = d.tcp_uri();
    let second = std::thread::spawn(move || support::virsh(&uri, &["start", name]));
    std::thread::sleep(Duration::from_secs(1));
    signal_main(pid, Signal::SIGCONT);
    let second = second.join().expect("virsh thread");
    assert!(
        !second.status.success(),
        "a second start succeeded\n{}\nguest log:\n{}",
        support::tail(&d.log(), 40),
        guest_log(&d, name)
    );
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("already running"), "{err}");
    assert_eq!(domstate(&d, name), "running (booted)");
    assert_eq!(status_pid(d.root.path(), name), Some(pid));
    assert!(!status_starting(d.root.path(), name));
    assert_only_guests(&d, &BTreeMap::from([(pid, name.to_string())]));
    support::console_answers(&d.tcp_uri(), name, "booted");
    d.virsh_ok(&["destroy", name]);
    assert!(wait_until(Duration::from_secs(10), || guest_pids(
        d.root.path()
    )
    .is_empty()));
    assert!(d.stop(), "the daemon did not stop cleanly");
    eprintln!("start completed by the next daemon: {:?}", begun.elapsed());
}

/// A provisional status whose guest never becomes ready (stopped for good) delays nothing:
/// the daemon answers at once, and once the start's time is up the guest is killed, helpers
/// included, and the domain is shut off (failed); it starts again normally.
#[test]
fn a_start_that_never_completes_ends_shut_off_failed() {
    let begun = Instant::now();
    let name = "cs-stuck";
    let (mut d, _) = restarted_during_a_start(name, &[]);
    assert_eq!(domstate(&d, name), "shut off (unknown)");
    // The start's 30 s run from the guest's spawn.
    wait_domstate(&d, name, "shut off (failed)", Duration::from_secs(40));
    let root = d.root.path();
    assert!(
        wait_until(Duration::from_secs(5), || guest_pids(root).is_empty()),
        "processes left: {:?}",
        guest_pids(root)
    );
    assert!(!root.join(format!("run/libvirt/uml/{name}.xml")).exists());
    assert!(!root.join("run/libvirt/uml-guest").join(name).exists());
    eprintln!("failed after {:?}", begun.elapsed());
    d.virsh_ok(&["start", name]);
    assert_eq!(domstate(&d, name), "running (booted)");
    support::console_answers(&d.tcp_uri(), name, "again");
    d.virsh_ok(&["destroy", name]);
    assert!(d.stop(), "the daemon did not stop cleanly");
    eprintln!("a start that never completes: {:?}", begun.elapsed());
}
