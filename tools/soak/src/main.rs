//! soak: a bounded soak test of virtumld with real UML guests.
//!
//! N client threads share M guests for a fixed time, each mixing lifecycle work (start,
//! destroy, suspend, resume), console sessions (DOMAIN_OPEN_CONSOLE, read, type, finish)
//! and queries (list, info, state, XML), over the raw protocol; a few python3-libvirt
//! processes read consoles through the stock client library alongside. At the end every
//! guest is put back in its initial state and the report gives: operations and errors
//! (expected refusals such as "already running" apart from real failures), the daemon's
//! RSS, fds and threads at start and end, zombie children, stray guest processes, and the
//! p50/p99 latency of the query calls minute by minute (drift).

mod conn;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use virtumld_protocol::error::code;
use virtumld_protocol::header::{MessageType, Status};
use virtumld_protocol::procedures::proc as p;
use virtumld_protocol::remote::{
    ConnectListAllDomainsArgs, ConnectListAllDomainsRet, DomainDefineXmlArgs, DomainDefineXmlRet,
    DomainGetInfoArgs, DomainGetInfoRet, DomainGetStateArgs, DomainGetStateRet,
    DomainGetXmlDescArgs, DomainGetXmlDescRet, NonnullDomain,
};
use virtumld_protocol::xdr;

use conn::{Conn, Outcome};

#[derive(Parser)]
#[command(
    name = "soak",
    about = "Soak virtumld: N clients doing lifecycle, console and query work on M real UML guests",
    after_help = "Without --spawn, soak talks to a daemon already listening on 127.0.0.1:PORT \
                  (TCP, auth none) and reports its resources only when --pid is given; the \
                  guest images go to --workdir, which that daemon must be able to read. \
                  With --spawn PATH it starts PATH --system --root WORKDIR/root --listen on \
                  PORT and stops it at the end."
)]
struct Cli {
    /// TCP port of the daemon (127.0.0.1).
    #[arg(long)]
    uri_port: u16,
    /// Number of guests (soak-0 … soak-M-1), defined and booted at the start.
    #[arg(long, default_value_t = 3)]
    guests: usize,
    /// Number of raw-protocol client threads.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Length of the soak, seconds.
    #[arg(long, default_value_t = 120)]
    duration: u64,
    /// Start a private daemon from this virtumld binary.
    #[arg(long)]
    spawn: Option<PathBuf>,
    /// The daemon's pid (for RSS, fds and zombies) when it was not spawned here.
    #[arg(long)]
    pid: Option<i32>,
    /// Where images, the private root and logs go (default: a new directory under /tmp).
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Keep the work directory.
    #[arg(long)]
    keep: bool,
    /// tools/mkguest, which builds the busybox guest images.
    #[arg(long)]
    mkguest: Option<PathBuf>,
    /// python3-libvirt console readers running alongside (0 for none).
    #[arg(long, default_value_t = 2)]
    py_readers: usize,
    /// The python with the libvirt module.
    #[arg(long, default_value = "/usr/bin/python3")]
    python: PathBuf,
    /// Share of operations (percent) that are queries; the rest is split between lifecycle
    /// and console work.
    #[arg(long, default_value_t = 60)]
    query_percent: u64,
}

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

// ---------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Results {
    /// Per operation: (ok, refused as expected, timed out, failed).
    ops: BTreeMap<&'static str, [u64; 4]>,
    /// Unexpected errors by message.
    errors: BTreeMap<String, u64>,
    /// libvirt's "Timed out during operation" errors by message.
    timeouts: BTreeMap<String, u64>,
    /// Query latencies in microseconds, by minute since the start.
    latency: BTreeMap<u64, Vec<u64>>,
    console_bytes: u64,
    reconnects: u64,
}

impl Results {
    fn count(&mut self, op: &'static str, slot: usize) {
        self.ops.entry(op).or_default()[slot] += 1;
    }

    fn fail(&mut self, op: &'static str, what: String) {
        self.count(op, 3);
        *self.errors.entry(format!("{op}: {what}")).or_default() += 1;
    }

    fn timed_out(&mut self, op: &'static str, what: String) {
        self.count(op, 2);
        *self.timeouts.entry(format!("{op}: {what}")).or_default() += 1;
    }
}

/// Refusals a mixed workload is bound to meet: starting a running guest, pausing a paused
/// one, a console already in use, a guest that stopped meanwhile, a suspend that gave way
/// to another client's destroy.
fn expected_refusal(e: &virtumld_protocol::error::RemoteError) -> bool {
    let m = e.message.as_deref().unwrap_or("");
    e.code == code::OPERATION_INVALID
        || m.contains("Active console session")
        || m.contains("not running")
        || m.contains("no longer running")
        || m.contains("already running")
        || (e.code == code::OPERATION_ABORTED && m.contains("is being destroyed"))
}

/// libvirt's own word for a call that could not complete in time: a guest that did not
/// answer within the daemon's bound, or a domain whose job another call held that long.
/// Counted apart from failures: it is the documented answer of an overloaded host, not a
/// wrong one. The guest's state stays consistent (checked when every guest is brought
/// back at the end).
fn timed_out(e: &virtumld_protocol::error::RemoteError) -> bool {
    e.code == code::OPERATION_TIMEOUT
}

// ---------------------------------------------------------------------------------------
// The daemon and the host
// ---------------------------------------------------------------------------------------

fn status_kib(pid: i32, key: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn fd_count(pid: i32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Socket inode → what it is ("tcp 127.0.0.1:PORT", "unix PATH", "unix dgram"), from the
/// daemon's view of /proc/net.
fn socket_kinds(pid: i32) -> BTreeMap<String, String> {
    let mut kinds = BTreeMap::new();
    for (file, inode_col) in [("tcp", 9), ("tcp6", 9), ("udp", 9), ("unix", 6)] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let w: Vec<&str> = line.split_whitespace().collect();
            let Some(inode) = w.get(inode_col) else {
                continue;
            };
            let what = match file {
                "unix" => match (w.get(4), w.get(7)) {
                    (_, Some(path)) => format!("unix {path}"),
                    (Some(&"0002"), None) => "unix dgram (unnamed)".to_string(),
                    _ => "unix stream (unnamed)".to_string(),
                },
                // Local address: the listener or an accepted connection.
                _ => format!(
                    "{file} {}",
                    w.get(3)
                        .map_or("", |st| if *st == "0A" { "listen" } else { "conn" })
                ),
            };
            kinds.insert(inode.to_string(), what);
        }
    }
    kinds
}

/// The daemon's descriptors by kind (sockets resolved through /proc/net, ptys and pipes
/// without their numbers), to say what a growth in their count is.
fn fd_kinds(pid: Option<i32>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let Some(pid) = pid else { return out };
    let sockets = socket_kinds(pid);
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(t) = std::fs::read_link(e.path()) else {
            continue;
        };
        let t = t.display().to_string();
        let kind = if let Some(inode) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']'))
        {
            sockets
                .get(inode)
                .cloned()
                .unwrap_or_else(|| "socket (unknown)".to_string())
        } else if t.starts_with("pipe:") {
            "pipe".to_string()
        } else if t.starts_with("/dev/pts/") {
            "/dev/pts/N".to_string()
        } else {
            t
        };
        *out.entry(kind).or_default() += 1;
    }
    out
}

fn stat_fields(pid: i32) -> Option<(String, String, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = s.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let mut f = rest.split_whitespace();
    let state = f.next()?.to_string();
    let ppid = f.next()?.parse().ok()?;
    Some((comm, state, ppid))
}

fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect()
}

/// Zombie children of `parent`.
fn zombies_of(parent: i32) -> usize {
    pids()
        .into_iter()
        .filter(|&p| stat_fields(p).is_some_and(|(_, st, pp)| st == "Z" && pp == parent))
        .count()
}

/// Processes whose command line carries `uml_dir=<dir>`: every process of every guest.
fn guest_processes(uml_dir: &Path) -> Vec<i32> {
    let needle = format!("uml_dir={}", uml_dir.display());
    pids()
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|w| w == needle.as_bytes()))
        })
        .collect()
}

#[derive(Debug, Clone, Copy, Default)]
struct Snapshot {
    rss_kib: u64,
    fds: usize,
    threads: u64,
    zombies: usize,
}

fn snapshot(pid: Option<i32>) -> Option<Snapshot> {
    let pid = pid?;
    Some(Snapshot {
        rss_kib: status_kib(pid, "VmRSS:")?,
        fds: fd_count(pid)?,
        threads: status_kib(pid, "Threads:")?,
        zombies: zombies_of(pid),
    })
}

struct Spawned {
    child: Child,
}

impl Spawned {
    fn start(bin: &Path, root: &Path, port: u16, log: &Path) -> std::io::Result<Spawned> {
        std::fs::create_dir_all(root)?;
        let conf = root.join("virtumld.conf");
        std::fs::write(
            &conf,
            format!(
                "listen_tcp = 1\nlisten_tls = 0\nlisten_addr = \"127.0.0.1\"\ntcp_port = \"{port}\"\nauth_tcp = \"none\"\nmax_clients = 200\n"
            ),
        )?;
        let child = Command::new(bin)
            .arg("--system")
            .arg("--root")
            .arg(root)
            .arg("--config")
            .arg(&conf)
            .arg("--listen")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()?;
        let s = Spawned { child };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(std::io::Error::other("the daemon did not come up in 15 s"))
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// SIGTERM, then SIGKILL after 20 s.
    fn stop(mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Guests
// ---------------------------------------------------------------------------------------

fn guest_name(i: usize) -> String {
    format!("soak-{i}")
}

fn guest_xml(i: usize, image: &Path) -> String {
    format!(
        "<domain type='uml'>
  <name>{}</name>
  <uuid>50a50a00-0000-4000-8000-{i:012x}</uuid>
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
        guest_name(i),
        image.display()
    )
}

fn state_of(c: &mut Conn, dom: &NonnullDomain) -> std::io::Result<i32> {
    Ok(c.call_xdr::<DomainGetStateRet>(
        p::DOMAIN_GET_STATE,
        &DomainGetStateArgs {
            dom: dom.clone(),
            flags: 0,
        },
    )?
    .map(|r| r.state)
    .unwrap_or(-1))
}

/// How long the guests are left to reach their shell after booting, before the daemon's
/// resources are sampled at either end (see [`settle`]).
const SETTLE: Duration = Duration::from_secs(10);

/// Brings the guests to the same state at both ends of the soak before the daemon's
/// resources are sampled. A console pump holds a pidfd for its guest's UML process once it
/// has found it: through the helper UML starts when the guest's shell opens the console,
/// looked for when the guest next writes to the line. A guest that boots and then writes
/// nothing more is sampled with that descriptor or without it depending on timing (one run:
/// 4 pidfds at the start, 6 at the end, 3 guests, reported as a leak). So: leave the shells
/// SETTLE to start, then type Enter on each guest's console and read its prompt.
fn settle(addr: &str, doms: &[NonnullDomain]) -> std::io::Result<()> {
    std::thread::sleep(SETTLE);
    let mut c = Conn::open(addr)?;
    for dom in doms {
        let (serial, r) = c.open_console(dom)?;
        r.map_err(conn::remote_io)?;
        c.stream_send(p::DOMAIN_OPEN_CONSOLE, serial, Status::CONTINUE, b"\r")?;
        let read_until = Instant::now() + Duration::from_secs(2);
        while let Some((h, payload)) = c.next_message(read_until)? {
            if h.kind == MessageType::STREAM && h.serial == serial && payload.is_empty() {
                break;
            }
        }
        c.stream_send(p::DOMAIN_OPEN_CONSOLE, serial, Status::OK, &[])?;
        let confirm_by = Instant::now() + Duration::from_secs(15);
        while let Some((h, _)) = c.next_message(confirm_by)? {
            if h.kind == MessageType::STREAM && h.serial == serial && h.status != Status::CONTINUE {
                break;
            }
        }
    }
    // Sampled once the daemon has seen this connection go.
    drop(c);
    std::thread::sleep(Duration::from_secs(1));
    Ok(())
}

/// Defines (again) and boots every guest, resuming paused ones: the state both ends of the
/// soak are measured in.
fn all_running(addr: &str, doms: &[NonnullDomain]) -> std::io::Result<()> {
    let mut c = Conn::open(addr)?;
    for d in doms {
        match state_of(&mut c, d)? {
            1 => {}
            3 => {
                let _ = c.call(p::DOMAIN_RESUME, &xdr::to_bytes(d))?;
            }
            _ => {
                let r = c.call(p::DOMAIN_CREATE, &xdr::to_bytes(d))?;
                if let Err(e) = r {
                    if !expected_refusal(&e) {
                        return Err(conn::remote_io(e));
                    }
                }
            }
        }
    }
    // Starts run in the daemon even when the caller raced another client: wait for all.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        let mut up = 0;
        for d in doms {
            if state_of(&mut c, d)? == 1 {
                up += 1;
            }
        }
        if up == doms.len() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(std::io::Error::other("the guests did not all come up"))
}

// ---------------------------------------------------------------------------------------
// Workers
// ---------------------------------------------------------------------------------------

struct Ctx {
    addr: String,
    doms: Vec<NonnullDomain>,
    begun: Instant,
    deadline: Instant,
    query_percent: u64,
    results: Mutex<Results>,
    stop: AtomicBool,
}

fn worker(ctx: Arc<Ctx>, seed: u64) {
    let mut rng = Rng(seed | 1);
    let mut conn: Option<Conn> = None;
    while Instant::now() < ctx.deadline && !ctx.stop.load(Ordering::Acquire) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::open(&ctx.addr) {
                Ok(c) => {
                    ctx.results.lock().unwrap().reconnects += 1;
                    conn.insert(c)
                }
                Err(e) => {
                    ctx.results.lock().unwrap().fail("connect", e.to_string());
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            },
        };
        let dom = ctx.doms[rng.below(ctx.doms.len() as u64) as usize].clone();
        let roll = rng.below(100);
        let rest = 100 - ctx.query_percent;
        let ok = if roll < ctx.query_percent {
            query(c, &ctx, &dom, &mut rng)
        } else if roll < ctx.query_percent + rest / 2 {
            lifecycle(c, &ctx, &dom, &mut rng)
        } else {
            console(c, &ctx, &dom, &mut rng)
        };
        if let Err(e) = ok {
            ctx.results.lock().unwrap().fail("io", e.to_string());
            conn = None;
        }
        // Lifecycle work is slow; keep the mix from being all queries in wall time.
        std::thread::sleep(Duration::from_millis(rng.below(20)));
    }
}

fn record(ctx: &Ctx, op: &'static str, r: Outcome) {
    let mut res = ctx.results.lock().unwrap();
    match r {
        Ok(_) => res.count(op, 0),
        Err(e) if expected_refusal(&e) => res.count(op, 1),
        Err(e) if timed_out(&e) => res.timed_out(op, e.message.unwrap_or_default()),
        Err(e) => res.fail(op, e.message.unwrap_or_default()),
    }
}

fn query(c: &mut Conn, ctx: &Ctx, dom: &NonnullDomain, rng: &mut Rng) -> std::io::Result<()> {
    let t = Instant::now();
    let (op, r): (&'static str, Outcome) = match rng.below(4) {
        0 => (
            "list",
            c.call(
                p::CONNECT_LIST_ALL_DOMAINS,
                &xdr::to_bytes(&ConnectListAllDomainsArgs {
                    need_results: 1,
                    flags: 0,
                }),
            )?
            .inspect(|b| {
                xdr::from_bytes::<ConnectListAllDomainsRet>(b).expect("list reply");
            }),
        ),
        1 => (
            "info",
            c.call(
                p::DOMAIN_GET_INFO,
                &xdr::to_bytes(&DomainGetInfoArgs { dom: dom.clone() }),
            )?
            .inspect(|b| {
                xdr::from_bytes::<DomainGetInfoRet>(b).expect("info reply");
            }),
        ),
        2 => (
            "state",
            c.call(
                p::DOMAIN_GET_STATE,
                &xdr::to_bytes(&DomainGetStateArgs {
                    dom: dom.clone(),
                    flags: 0,
                }),
            )?,
        ),
        _ => (
            "xml",
            c.call(
                p::DOMAIN_GET_XML_DESC,
                &xdr::to_bytes(&DomainGetXmlDescArgs {
                    dom: dom.clone(),
                    flags: 0,
                }),
            )?
            .inspect(|b| {
                let x = xdr::from_bytes::<DomainGetXmlDescRet>(b).expect("xml reply");
                assert!(x.xml.contains(&dom.name));
            }),
        ),
    };
    let us = t.elapsed().as_micros() as u64;
    let minute = ctx.begun.elapsed().as_secs() / 60;
    ctx.results
        .lock()
        .unwrap()
        .latency
        .entry(minute)
        .or_default()
        .push(us);
    record(ctx, op, r);
    Ok(())
}

fn lifecycle(c: &mut Conn, ctx: &Ctx, dom: &NonnullDomain, rng: &mut Rng) -> std::io::Result<()> {
    let (op, procedure) = match rng.below(10) {
        0..=3 => ("start", p::DOMAIN_CREATE),
        4..=5 => ("destroy", p::DOMAIN_DESTROY),
        6..=7 => ("suspend", p::DOMAIN_SUSPEND),
        _ => ("resume", p::DOMAIN_RESUME),
    };
    let r = c.call(procedure, &xdr::to_bytes(dom))?;
    record(ctx, op, r);
    Ok(())
}

/// A console session: open, read about 300 ms (typing a line), finish, wait for the
/// confirmation.
fn console(c: &mut Conn, ctx: &Ctx, dom: &NonnullDomain, rng: &mut Rng) -> std::io::Result<()> {
    let (serial, r) = c.open_console(dom)?;
    if r.is_err() {
        record(ctx, "console", r);
        return Ok(());
    }
    let mut bytes = 0u64;
    let mut ended = false;
    let read_until = Instant::now() + Duration::from_millis(200 + rng.below(200));
    let mut typed = false;
    while let Some((h, payload)) = c.next_message(read_until)? {
        if h.kind == MessageType::STREAM && h.serial == serial {
            if payload.is_empty() {
                ended = true; // the guest went away: end of stream
                break;
            }
            bytes += payload.len() as u64;
            if !typed {
                typed = true;
                c.stream_send(p::DOMAIN_OPEN_CONSOLE, serial, Status::CONTINUE, b"\r")?;
            }
        }
    }
    // Finish, and wait for the daemon's empty OK.
    c.stream_send(p::DOMAIN_OPEN_CONSOLE, serial, Status::OK, &[])?;
    let confirm_by = Instant::now() + Duration::from_secs(15);
    let mut confirmed = false;
    while let Some((h, _)) = c.next_message(confirm_by)? {
        if h.kind == MessageType::STREAM && h.serial == serial && h.status != Status::CONTINUE {
            confirmed = true;
            break;
        }
    }
    let mut res = ctx.results.lock().unwrap();
    res.console_bytes += bytes;
    if confirmed {
        res.count("console", 0);
    } else {
        res.fail(
            "console",
            format!("finish not confirmed within 15 s (stream ended first: {ended})"),
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// python3-libvirt console readers
// ---------------------------------------------------------------------------------------

/// Longest a python reader stays on one console session.
const PY_SESSION_SECS: f64 = 0.5;

/// A python3-libvirt console reader: sessions of at most [`PY_SESSION_SECS`] each on the
/// guests in turn, until SECS have passed, then a JSON summary on stdout ("over": how
/// long after its SECS it got there).
///
/// A console stream only carries what the guest writes: on attach the recent output the
/// daemon kept, then live output, and end-of-stream (an empty STREAM CONTINUE, on which
/// `recv` returns b"") when the guest stops. A guest with nothing to replay that writes
/// nothing (paused right after its start, before its first console line) sends nothing
/// at all, as with libvirtd, and a blocking `recv` would wait for it forever: that is how
/// the readers of the first one-hour run had to be killed. So the reader does what `virsh
/// console` does: a non-blocking stream, libvirt's event loop on a thread, and its own
/// time budget per session. If it still does not end by itself (a call that never
/// returns), it dumps where it is stuck and exits non-zero, which fails the soak with
/// that evidence instead of a silent SIGKILL.
const PY_READER: &str = r#"
import faulthandler, json, libvirt, os, threading, time
uri, names = os.environ["URI"], os.environ["DOMS"].split(",")
secs, session = float(os.environ["SECS"]), float(os.environ["SESSION"])
end = time.time() + secs
faulthandler.dump_traceback_later(secs + 20, exit=True)
libvirt.registerErrorHandler(lambda ctx, err: None, None)
libvirt.virEventRegisterDefaultImpl()
def loop():
    while True:
        libvirt.virEventRunDefaultImpl()
threading.Thread(target=loop, daemon=True).start()
out = {"sessions": 0, "eof": 0, "busy": 0, "bytes": 0, "errors": []}
busy = ("Active console session", "not running", "not available")
c = libvirt.open(uri)
i = 0
while time.time() < end:
    name = names[i % len(names)]
    i += 1
    try:
        d = c.lookupByName(name)
        if d.state()[0] != libvirt.VIR_DOMAIN_RUNNING:
            time.sleep(0.2)
            continue
        st = c.newStream(libvirt.VIR_STREAM_NONBLOCK)
        try:
            d.openConsole(None, st, 0)
        except libvirt.libvirtError as e:
            if any(b in str(e) for b in busy):
                out["busy"] += 1
                time.sleep(0.1)
                continue
            raise
        # The recent output comes at once, then live output, until the budget is spent or
        # the stream ends (the guest went away).
        budget = min(end, time.time() + session)
        while time.time() < budget:
            r = st.recv(65536)
            if r == -2:
                time.sleep(0.02)
            elif len(r) == 0:
                out["eof"] += 1
                break
            else:
                out["bytes"] += len(r)
        try:
            st.finish()
        except libvirt.libvirtError:
            st.abort()
        out["sessions"] += 1
    except libvirt.libvirtError as e:
        msg = str(e)
        if any(b in msg for b in busy):
            out["busy"] += 1
        else:
            out["errors"].append(msg)
out["over"] = round(time.time() - end, 2)
print(json.dumps(out))
"#;

fn start_py_readers(cli: &Cli, names: &str) -> Vec<Child> {
    (0..cli.py_readers)
        .filter_map(|_| {
            Command::new(&cli.python)
                .arg("-c")
                .arg(PY_READER)
                .env(
                    "URI",
                    format!("uml+tcp://127.0.0.1:{}/system", cli.uri_port),
                )
                .env("DOMS", names)
                .env("SECS", cli.duration.to_string())
                .env("SESSION", PY_SESSION_SECS.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| eprintln!("soak: cannot start {}: {e}", cli.python.display()))
                .ok()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------------

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: &Cli) -> Result<bool, String> {
    let workdir = cli
        .workdir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/soak-{}", std::process::id())));
    std::fs::create_dir_all(&workdir).map_err(|e| format!("{}: {e}", workdir.display()))?;
    let addr = format!("127.0.0.1:{}", cli.uri_port);
    let root = workdir.join("root");
    let daemon = match &cli.spawn {
        Some(bin) => Some(
            Spawned::start(bin, &root, cli.uri_port, &workdir.join("daemon.log"))
                .map_err(|e| format!("starting {}: {e}", bin.display()))?,
        ),
        None => None,
    };
    let pid = daemon.as_ref().map(Spawned::pid).or(cli.pid);

    // Guests: images, definitions, all booted.
    let mkguest = cli
        .mkguest
        .clone()
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../mkguest")));
    let mut doms = Vec::new();
    let mut setup = Conn::open(&addr).map_err(|e| format!("connecting to {addr}: {e}"))?;
    for i in 0..cli.guests {
        let img = workdir.join(format!("{}.img", guest_name(i)));
        if !img.exists() {
            let st = Command::new(&mkguest)
                .arg(&img)
                .status()
                .map_err(|e| format!("{}: {e}", mkguest.display()))?;
            if !st.success() {
                return Err(format!(
                    "{} failed for {}",
                    mkguest.display(),
                    img.display()
                ));
            }
        }
        let r = setup
            .call_xdr::<DomainDefineXmlRet>(
                p::DOMAIN_DEFINE_XML,
                &DomainDefineXmlArgs {
                    xml: guest_xml(i, &img),
                },
            )
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("define {}: {:?}", guest_name(i), e.message))?;
        doms.push(r.dom);
    }
    drop(setup);
    all_running(&addr, &doms).map_err(|e| format!("booting the guests: {e}"))?;
    settle(&addr, &doms).map_err(|e| format!("settling the guests: {e}"))?;
    let before = snapshot(pid);
    let before_kinds = fd_kinds(pid);

    println!(
        "soak: {} clients, {} guests, {} s, daemon {} ({})",
        cli.clients,
        cli.guests,
        cli.duration,
        pid.map_or("pid unknown".into(), |p| format!("pid {p}")),
        if daemon.is_some() {
            "spawned"
        } else {
            "external"
        }
    );
    let begun = Instant::now();
    let ctx = Arc::new(Ctx {
        addr: addr.clone(),
        doms: doms.clone(),
        begun,
        deadline: begun + Duration::from_secs(cli.duration),
        query_percent: cli.query_percent.min(100),
        results: Mutex::new(Results::default()),
        stop: AtomicBool::new(false),
    });
    let names: Vec<String> = doms.iter().map(|d| d.name.clone()).collect();
    let mut readers = start_py_readers(cli, &names.join(","));
    let threads: Vec<_> = (0..cli.clients)
        .map(|i| {
            let c = ctx.clone();
            let seed = begun.elapsed().as_nanos() as u64 ^ ((i as u64 + 1) * 0x9e37_79b9);
            std::thread::spawn(move || worker(c, seed))
        })
        .collect();
    // Resource samples every 10 s, printed as we go.
    let mut samples = Vec::new();
    while Instant::now() < ctx.deadline {
        std::thread::sleep(
            Duration::from_secs(10).min(ctx.deadline - Instant::now().min(ctx.deadline)),
        );
        if let Some(s) = snapshot(pid) {
            println!(
                "  t={:>4}s  rss {:>7} KiB  fds {:>4}  threads {:>3}  zombies {}",
                begun.elapsed().as_secs(),
                s.rss_kib,
                s.fds,
                s.threads,
                s.zombies
            );
            samples.push(s);
        }
        let _ = std::io::stdout().flush();
    }
    ctx.stop.store(true, Ordering::Release);
    for t in threads {
        let _ = t.join();
    }
    let mut py = Vec::new();
    for r in readers.drain(..) {
        // They end by themselves at the deadline (a stuck one exits 20 s after it, with a
        // traceback); give them 30 s more, then kill and say so.
        let mut r = r;
        let mut killed = false;
        loop {
            match r.try_wait() {
                Ok(Some(_)) => break,
                _ if Instant::now() > ctx.deadline + Duration::from_secs(30) => {
                    let _ = r.kill();
                    killed = true;
                    break;
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        // When the soak saw it gone: an upper bound, 0 if before the deadline.
        let ended = Instant::now()
            .checked_duration_since(ctx.deadline)
            .map_or(0.0, |d| d.as_secs_f64());
        if let Ok(o) = r.wait_with_output() {
            py.push((
                o.status,
                killed,
                ended,
                String::from_utf8_lossy(&o.stdout).trim().to_string(),
                String::from_utf8_lossy(&o.stderr).trim().to_string(),
            ));
        }
    }

    // Back to the initial state, then measure again.
    let restored = all_running(&addr, &doms).and_then(|()| settle(&addr, &doms));
    let after = snapshot(pid);
    let after_kinds = fd_kinds(pid);
    let stray = {
        let uml_dir = root.join("run/libvirt/uml-guest");
        if daemon.is_some() {
            Some(guest_processes(&uml_dir))
        } else {
            None
        }
    };

    // Report.
    let res = ctx.results.lock().unwrap();
    let mut healthy = restored.is_ok();
    println!("\noperations (ok / refused as expected / timed out / failed):");
    for (op, [ok, refused, timed, failed]) in &res.ops {
        println!("  {op:<10} {ok:>7} {refused:>7} {timed:>5} {failed:>5}");
    }
    println!(
        "  console bytes read {}; reconnects {}",
        res.console_bytes, res.reconnects
    );
    let failed: u64 = res.ops.values().map(|v| v[3]).sum();
    let timeouts: u64 = res.ops.values().map(|v| v[2]).sum();
    if timeouts > 0 {
        println!("timed out (libvirt's OPERATION_TIMEOUT; not counted as failures):");
        for (m, n) in &res.timeouts {
            println!("  {n:>5} × {m}");
        }
    }
    if failed > 0 {
        healthy = false;
        println!("unexpected errors:");
        let mut errs: Vec<_> = res.errors.iter().collect();
        errs.sort_by(|a, b| b.1.cmp(a.1));
        for (m, n) in errs.iter().take(15) {
            println!("  {n:>5} × {m}");
        }
    }
    if let Err(e) = &restored {
        println!("restoring the guests failed: {e}");
    }
    println!("\nquery latency by minute (µs):");
    println!("  minute   calls     p50     p99     max");
    for (m, v) in &res.latency {
        let mut v = v.clone();
        v.sort_unstable();
        println!(
            "  {m:>6} {:>7} {:>7} {:>7} {:>7}",
            v.len(),
            percentile(&v, 0.5),
            percentile(&v, 0.99),
            v.last().copied().unwrap_or(0)
        );
    }
    println!("\npython3-libvirt console readers:");
    for (st, killed, ended, out, err) in &py {
        println!("  {st}, {ended:.1} s after the deadline: {out}");
        if *killed {
            healthy = false;
            println!("  killed: it did not end by itself within 30 s of the deadline");
        }
        if !st.success() {
            healthy = false;
            let lines: Vec<&str> = err.lines().collect();
            for l in &lines[lines.len().saturating_sub(12)..] {
                println!("  stderr: {l}");
            }
        } else if out.contains("\"errors\": [\"") {
            healthy = false;
        }
    }
    match (before, after) {
        (Some(b), Some(a)) => {
            println!("\ndaemon resources (guests all running at both ends):");
            println!(
                "  rss     {:>7} KiB -> {:>7} KiB ({:+} KiB)",
                b.rss_kib,
                a.rss_kib,
                a.rss_kib as i64 - b.rss_kib as i64
            );
            println!(
                "  fds     {:>7}     -> {:>7}     ({:+})",
                b.fds,
                a.fds,
                a.fds as i64 - b.fds as i64
            );
            println!("  threads {:>7}     -> {:>7}", b.threads, a.threads);
            println!(
                "  zombie children {} -> {} (max seen {})",
                b.zombies,
                a.zombies,
                samples.iter().map(|s| s.zombies).max().unwrap_or(0)
            );
            if a.fds > b.fds || a.zombies > 0 {
                healthy = false;
            }
            if a.fds != b.fds {
                for (kind, n) in &after_kinds {
                    let was = before_kinds.get(kind).copied().unwrap_or(0);
                    if *n != was {
                        println!("    {kind}: {was} -> {n}");
                    }
                }
                for (kind, was) in &before_kinds {
                    if !after_kinds.contains_key(kind) {
                        println!("    {kind}: {was} -> 0");
                    }
                }
            }
        }
        _ => println!("\ndaemon resources: unknown (no --pid)"),
    }
    if let Some(stray) = &stray {
        // Each running guest is a handful of processes; what matters is the main ones.
        println!(
            "  guest processes under the root at the end: {}",
            stray.len()
        );
    }
    drop(res);

    // Clean up: destroy and undefine the guests; stop a spawned daemon and anything left.
    if let Ok(mut c) = Conn::open(&addr) {
        for d in &doms {
            let _ = c.call(p::DOMAIN_DESTROY, &xdr::to_bytes(d));
            let _ = c.call(p::DOMAIN_UNDEFINE, &xdr::to_bytes(d));
        }
    }
    if let Some(d) = daemon {
        let uml_dir = root.join("run/libvirt/uml-guest");
        // Give the destroyed guests' processes a moment to go.
        let start = Instant::now();
        let mut left = guest_processes(&uml_dir);
        while !left.is_empty() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(200));
            left = guest_processes(&uml_dir);
        }
        if !left.is_empty() {
            healthy = false;
            println!("  guest processes left 10 s after destroying every guest:");
            for p in &left {
                let (comm, state, ppid) = stat_fields(*p).unwrap_or_default();
                let session = std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .ok()
                    .and_then(|s| {
                        s.rsplit_once(')')?
                            .1
                            .split_whitespace()
                            .nth(3)?
                            .parse::<i32>()
                            .ok()
                    });
                let holds: Vec<String> = std::fs::read_dir(format!("/proc/{p}/fd"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|e| std::fs::read_link(e.path()).ok())
                    .map(|t| t.display().to_string())
                    .filter(|t| t.ends_with(".img") || t.contains("ptmx"))
                    .collect();
                println!(
                    "    pid {p} ({comm}, state {state}, ppid {ppid}, session leader: {}) holds {holds:?}",
                    session == Some(*p)
                );
            }
        }
        let st = d.stop();
        for p in guest_processes(&uml_dir) {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(p.to_string())
                .status();
        }
        println!("  daemon stopped: {st:?}");
    }
    if !cli.keep && cli.workdir.is_none() {
        let _ = std::fs::remove_dir_all(&workdir);
    }
    let timeouts = if timeouts > 0 {
        format!(" ({timeouts} calls timed out, listed above)")
    } else {
        String::new()
    };
    println!(
        "\nsoak: {}{timeouts}",
        if healthy { "PASS" } else { "FAIL" }
    );
    Ok(healthy)
}
