//! Hostile clients (hardening.md §2 and §3) against a private daemon, each case run while a
//! well-behaved canary (its own connection, CONNECT_GET_HOSTNAME in a loop) keeps calling:
//! the hostile client must get libvirt's error or be dropped, and the canary must never be
//! refused nor wait more than `CANARY_MAX_LATENCY` for a reply. Each case's canary figures
//! are printed and appended to `$CARGO_TARGET_TMPDIR/hostile-canary.log`.
//!
//! Cases: bad length words and stray protocols (TCP and UNIX), oversized, negative and
//! truncated counts (and a mutation sweep over real argument encodings), unknown, event and
//! out-of-range procedure numbers, wrong program/version/type/status, calls before open, a
//! second open and calls after close, read-only bypass attempts, typed-parameter abuse, XML
//! bombs and hostile names through DOMAIN_DEFINE_XML, a console stream abused on a running
//! guest (unknown serials, data after finish, disconnects mid-call and mid-stream),
//! slowloris, a client that never reads, connection floods (fd count back to its
//! baseline), connection churn with resets, and event-registration abuse.

// Calls return the wire error by value, as the daemon's handlers do.
#![allow(clippy::result_large_err)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::{
    call_header, fd_count, guest_image, guest_leaders, guest_xml, rss_kib, wait_until, Daemon, Raw,
};
use virtumld_protocol::error::{code, domain, RemoteError};
use virtumld_protocol::frame;
use virtumld_protocol::header::{
    Header, MessageType, Status, ADMIN_PROGRAM, KEEPALIVE_PROGRAM, LXC_PROGRAM, QEMU_PROGRAM,
    REMOTE_PROGRAM,
};
use virtumld_protocol::limits::{MESSAGE_MAX, STRING_MAX};
use virtumld_protocol::procedures::{proc as p, remote_procedure, Kind, REMOTE_PROCEDURES};
use virtumld_protocol::remote::{
    ConnectDomainEventCallbackRegisterAnyArgs, ConnectDomainEventCallbackRegisterAnyRet,
    ConnectGetAllDomainStatsArgs, ConnectListAllDomainsArgs, DomainBlockStatsFlagsArgs,
    DomainDefineXmlArgs, DomainDefineXmlRet, DomainGetInfoArgs, DomainGetXmlDescArgs,
    DomainLookupByNameArgs, DomainLookupByNameRet, DomainMemoryStatsArgs, DomainOpenConsoleArgs,
    NodeGetCpuStatsArgs, NodeGetMemoryStatsArgs, NodeGetMemoryStatsRet, NonnullDomain,
    NonnullStoragePool, StoragePoolCreateXmlArgs, StoragePoolCreateXmlRet, StorageVolCreateXmlArgs,
    TypedParam,
};
use virtumld_protocol::xdr::{self, Xdr};

/// The longest a canary call may take while a hostile client does its worst.
const CANARY_MAX_LATENCY: Duration = Duration::from_millis(50);
/// Pause between two canary calls.
const CANARY_PAUSE: Duration = Duration::from_millis(5);
/// A canary gives up after this long whatever happens (every loop here is bounded).
const CANARY_MAX_RUN: Duration = Duration::from_secs(240);
/// How long a hostile client waits for a reply or for the daemon to close.
const REPLY_WAIT: Duration = Duration::from_secs(10);

/// The cases measure latency: one daemon at a time in this binary, so that the tests do not
/// compete with each other for the machine's cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serialized() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------
// The canary
// ---------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct CanaryReport {
    calls: u64,
    max: Duration,
    failures: Vec<String>,
}

struct Canary {
    stop: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
    handle: JoinHandle<CanaryReport>,
}

impl Canary {
    fn start(port: u16) -> Canary {
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicU64::new(0));
        let (stop2, calls2) = (stop.clone(), calls.clone());
        let handle = std::thread::spawn(move || {
            let mut report = CanaryReport::default();
            let mut raw = Raw::connect(port);
            raw.s.set_read_timeout(Some(Duration::from_secs(5))).ok();
            raw.open();
            let begun = Instant::now();
            let mut serial = 1000u32;
            while !stop2.load(Ordering::Acquire) && begun.elapsed() < CANARY_MAX_RUN {
                serial += 1;
                let t = Instant::now();
                let msg = frame::encode(&call_header(p::CONNECT_GET_HOSTNAME, serial), &());
                if let Err(e) = raw.s.write_all(&msg) {
                    report.failures.push(format!("canary send failed: {e}"));
                    break;
                }
                match reply_for(&mut raw, serial) {
                    Some(Ok(payload)) => {
                        let name = xdr::from_bytes::<String>(&payload).unwrap_or_default();
                        if name.is_empty() {
                            report.failures.push("empty hostname".into());
                        }
                    }
                    Some(Err(e)) => report.failures.push(format!("canary refused: {e:?}")),
                    None => {
                        report
                            .failures
                            .push("canary got no reply (closed or 5 s without one)".into());
                        break;
                    }
                }
                let dt = t.elapsed();
                report.max = report.max.max(dt);
                report.calls += 1;
                calls2.fetch_add(1, Ordering::Release);
                std::thread::sleep(CANARY_PAUSE);
            }
            report
        });
        let c = Canary {
            stop,
            calls,
            handle,
        };
        // Running before the case begins.
        let started = wait_until(Duration::from_secs(10), || {
            c.calls.load(Ordering::Acquire) >= 3 || c.handle.is_finished()
        });
        assert!(started, "the canary never got going");
        c
    }

    fn finish(self) -> CanaryReport {
        self.stop.store(true, Ordering::Release);
        self.handle.join().unwrap_or_else(|_| CanaryReport {
            failures: vec!["the canary thread panicked".into()],
            ..Default::default()
        })
    }
}

/// Runs one hostile case with a canary alongside, then checks the canary's record.
fn case<R>(d: &Daemon, name: &str, f: impl FnOnce() -> R) -> R {
    let canary = Canary::start(d.port);
    let r = f();
    let report = canary.finish();
    let line = format!(
        "{name}: canary {} calls, max latency {:.1} ms, {} failures",
        report.calls,
        report.max.as_secs_f64() * 1000.0,
        report.failures.len()
    );
    eprintln!("{line}");
    let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("hostile-canary.log");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = writeln!(f, "{line}");
    }
    assert!(
        report.failures.is_empty(),
        "{name}: the canary was refused: {:?}\ndaemon log tail:\n{}",
        report.failures,
        support::tail(&d.log(), 30)
    );
    assert!(
        report.max <= CANARY_MAX_LATENCY,
        "{name}: the canary waited {:?} for a reply (more than {CANARY_MAX_LATENCY:?})",
        report.max
    );
    assert!(report.calls > 0, "{name}: the canary made no call");
    r
}

// ---------------------------------------------------------------------------------------
// Raw-protocol helpers
// ---------------------------------------------------------------------------------------

fn encode<T: Xdr>(v: &T) -> Vec<u8> {
    xdr::to_bytes(v).to_vec()
}

fn word(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}

/// A whole CALL message with a raw payload.
fn call_msg(procedure: i32, serial: u32, payload: &[u8]) -> Vec<u8> {
    frame::encode_with(&call_header(procedure, serial), |o| {
        o.extend_from_slice(payload)
    })
    .to_vec()
}

/// A whole message with any header and a raw payload.
fn any_msg(h: &Header, payload: &[u8]) -> Vec<u8> {
    frame::encode_with(h, |o| o.extend_from_slice(payload)).to_vec()
}

/// The REPLY to `serial` (other messages are skipped); `None` when the daemon closed the
/// connection or sent nothing for the read timeout.
fn reply_for(raw: &mut Raw, serial: u32) -> Option<Result<Vec<u8>, RemoteError>> {
    for _ in 0..100_000 {
        let (h, payload) = raw.reply()?;
        if h.program != REMOTE_PROGRAM || h.kind != MessageType::REPLY || h.serial != serial {
            continue;
        }
        return Some(if h.status == Status::OK {
            Ok(payload)
        } else {
            Err(xdr::from_bytes::<RemoteError>(&payload).expect("an error struct"))
        });
    }
    None
}

/// Checks that the daemon ended the connection: the next read is the end of the stream
/// (EOF or reset), neither a message nor a timeout.
fn assert_ended(raw: &mut Raw, after: &str) {
    let mut b = [0u8; 1];
    match raw.s.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("{after}: the daemon kept the connection ({other:?})"),
    }
}

/// Sends a call with a raw payload and returns its reply; panics if the daemon dropped the
/// connection instead of answering.
fn call_raw(
    raw: &mut Raw,
    procedure: i32,
    serial: u32,
    payload: &[u8],
) -> Result<Vec<u8>, RemoteError> {
    raw.send(&call_msg(procedure, serial, payload));
    reply_for(raw, serial).unwrap_or_else(|| {
        panic!(
            "no reply to {} (serial {serial}): the daemon dropped the connection",
            remote_procedure(procedure).map_or("?", |i| i.name)
        )
    })
}

fn call_ok<T: Xdr>(raw: &mut Raw, procedure: i32, serial: u32, args: &impl Xdr) -> T {
    let payload = call_raw(raw, procedure, serial, &encode(args)).unwrap_or_else(|e| {
        panic!(
            "{} failed: {e:?}",
            remote_procedure(procedure).map_or("?", |i| i.name)
        )
    });
    xdr::from_bytes::<T>(&payload).expect("a well-formed reply")
}

fn call_err(raw: &mut Raw, procedure: i32, serial: u32, payload: &[u8]) -> RemoteError {
    match call_raw(raw, procedure, serial, payload) {
        Ok(_) => panic!(
            "{} (serial {serial}) succeeded; an error was expected",
            remote_procedure(procedure).map_or("?", |i| i.name)
        ),
        Err(e) => e,
    }
}

/// Asserts a decoding failure as libvirt reports it: VIR_ERR_RPC from VIR_FROM_RPC, "Unable to
/// decode message payload", followed here by the reason.
fn assert_decode_error(e: &RemoteError, what: &str) {
    assert_eq!(
        (e.code, e.domain),
        (code::RPC, domain::RPC),
        "{what}: {e:?}"
    );
    let m = e.message.as_deref().unwrap_or("");
    assert!(
        m.starts_with("Unable to decode message payload"),
        "{what}: {m}"
    );
}

fn opened(port: u16) -> Raw {
    let mut raw = Raw::connect(port);
    raw.s.set_read_timeout(Some(REPLY_WAIT)).ok();
    raw.open();
    raw
}

/// The daemon still serves this connection.
fn alive(raw: &mut Raw, serial: u32) {
    let name: String = call_ok(raw, p::CONNECT_GET_HOSTNAME, serial, &());
    assert!(!name.is_empty());
}

/// True when the daemon closes the connection within `REPLY_WAIT` (whatever it sends first).
fn dropped(s: &mut dyn Read) -> bool {
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    while start.elapsed() < REPLY_WAIT {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false, // timeout: still open
        }
    }
    false
}

fn lookup(raw: &mut Raw, serial: u32, name: &str) -> NonnullDomain {
    let r: DomainLookupByNameRet = call_ok(
        raw,
        p::DOMAIN_LOOKUP_BY_NAME,
        serial,
        &DomainLookupByNameArgs { name: name.into() },
    );
    r.dom
}

fn define(raw: &mut Raw, serial: u32, xml: &str) -> Result<NonnullDomain, RemoteError> {
    call_raw(
        raw,
        p::DOMAIN_DEFINE_XML,
        serial,
        &encode(&DomainDefineXmlArgs { xml: xml.into() }),
    )
    .map(|b| xdr::from_bytes::<DomainDefineXmlRet>(&b).unwrap().dom)
}

/// A TCP connection that is reset (RST, not FIN) when dropped.
fn resetting(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Linger, &linger)
        .expect("SO_LINGER");
    s
}

/// A domain definition with a hostile `<name>` (the rest valid).
fn named_xml(name: &str) -> String {
    format!(
        "<domain type='uml'><name>{name}</name><memory unit='MiB'>64</memory>\
         <os><type>uml</type><kernel>/usr/bin/linux.uml</kernel></os></domain>"
    )
}

/// Every file under `dir`, relative, sorted (the daemon's log excepted).
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            if rel == "daemon.log" {
                continue;
            }
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(base, &p, out);
            }
            out.push(rel);
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------
// 1. Length words and stray protocols
// ---------------------------------------------------------------------------------------

/// What a hostile peer sends first, and whether the daemon must drop it.
fn stray_openings() -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = Vec::new();
    for len in [0u32, 1, 2, 3, 4, 5, 12, 27] {
        let mut m = word(len).to_vec();
        m.extend([0u8; 28]);
        v.push((format!("length {len}"), m));
    }
    let max = MESSAGE_MAX as u32;
    for len in [max + 5, max + 0x1000, 0x8000_0000, 0xffff_ffff] {
        let mut m = word(len).to_vec();
        m.extend([0u8; 28]);
        v.push((format!("length {len}"), m));
    }
    for text in [
        "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "OPTIONS * HTTP/1.0\r\n\r\n",
        "HELP\r\n",
        "\r\n\r\n\r\n\r\n",
    ] {
        v.push((format!("text {:?}", &text[..4]), text.as_bytes().to_vec()));
    }
    // A TLS 1.2 ClientHello's first bytes sent to the plain TCP port.
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03,
    ];
    hello.extend([0x42u8; 40]);
    v.push(("TLS ClientHello".into(), hello));
    // A header without its length word: the program number (0x20008086) read as a length.
    let mut m = frame::encode(&call_header(p::CONNECT_GET_HOSTNAME, 1), &()).to_vec();
    m.drain(..4);
    v.push(("missing length word".into(), m));
    v
}

#[test]
fn bad_length_words_and_stray_protocols_drop_only_that_client() {
    let _one = serialized();
    let d = Daemon::start();
    case(&d, "length words and stray protocols (TCP)", || {
        for (what, bytes) in stray_openings() {
            let mut s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
            s.set_read_timeout(Some(REPLY_WAIT)).unwrap();
            let _ = s.write_all(&bytes);
            assert!(
                dropped(&mut s),
                "TCP, {what}: the connection must be closed"
            );
        }
    });
    case(
        &d,
        "length words and stray protocols (UNIX, rw and ro)",
        || {
            for sock in [d.socket(), d.ro_socket()] {
                for (what, bytes) in stray_openings() {
                    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
                    s.set_read_timeout(Some(REPLY_WAIT)).unwrap();
                    let _ = s.write_all(&bytes);
                    assert!(dropped(&mut s), "{}, {what}: not closed", sock.display());
                }
            }
        },
    );
    case(&d, "partial length words, then close", || {
        for n in 1..4 {
            let mut s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
            s.write_all(&[0u8; 3][..n]).unwrap();
        }
    });
    case(&d, "a whole 32 MiB message is read and answered", || {
        // The largest message both sides accept: a define whose string claims everything
        // after it, which the string bound (4 MiB) then refuses.
        let mut raw = opened(d.port);
        let body = MESSAGE_MAX - 28 - 4;
        let mut payload = word(body as u32).to_vec();
        payload.resize(4 + body, b'a');
        let msg = call_msg(p::DOMAIN_DEFINE_XML, 7, &payload);
        assert_eq!(msg.len(), MESSAGE_MAX);
        let e = call_err(&mut raw, p::DOMAIN_DEFINE_XML, 7, &payload);
        assert_decode_error(&e, "32 MiB define");
        assert!(
            e.message.unwrap().contains("exceeds the limit 4194304"),
            "the string bound refuses it"
        );
        alive(&mut raw, 8);
    });
    case(
        &d,
        "32 MiB + 4: answered or dropped, never waited on forever",
        || {
            // libvirtd accepts a length word up to 32 MiB + 4 (it bounds len - 4); this daemon
            // caps the whole message at 32 MiB. Either way the peer must not hang the daemon.
            let mut s = TcpStream::connect(("127.0.0.1", d.port)).unwrap();
            s.set_read_timeout(Some(REPLY_WAIT)).unwrap();
            let mut m = word(MESSAGE_MAX as u32 + 4).to_vec();
            m.extend(encode(&call_header(p::CONNECT_GET_HOSTNAME, 1)));
            let _ = s.write_all(&m);
            let _ = s.write_all(&vec![0u8; MESSAGE_MAX + 4 - m.len()]);
            let mut raw = Raw { s: Box::new(s) };
            let answered = reply_for(&mut raw, 1).is_some_and(|r| r.is_err());
            assert!(answered || raw.closed(), "neither answered nor dropped");
        },
    );
    // The daemon is fine: a fresh client works.
    alive(&mut opened(d.port), 99);
}

// ---------------------------------------------------------------------------------------
// 2. Counts and truncation
// ---------------------------------------------------------------------------------------

/// A minimal image-less definition: enough to be looked up, never started here.
fn victim_xml(name: &str, image: &Path) -> String {
    guest_xml(name, image)
}

#[test]
fn oversized_negative_and_truncated_counts_get_decode_errors() {
    let _one = serialized();
    let d = Daemon::start();
    let image = d.root.path().join("victim.img");
    std::fs::write(&image, b"").unwrap();
    let mut raw = opened(d.port);
    let dom = define(&mut raw, 2, &victim_xml("victim", &image)).expect("define victim");
    let base_rss = rss_kib(d.pid());

    case(
        &d,
        "string and array counts at and beyond their bounds",
        || {
            let mut serial = 10;
            let mut next = || {
                serial += 1;
                serial
            };
            // Strings: counts above REMOTE_STRING_MAX, negative as int, and truncated.
            for (what, count, extra) in [
                ("0xffffffff", 0xffff_ffffu32, 8usize),
                ("0x80000000", 0x8000_0000, 8),
                ("0x7fffffff", 0x7fff_ffff, 8),
                ("STRING_MAX + 1", STRING_MAX as u32 + 1, 8),
            ] {
                for procedure in [p::DOMAIN_LOOKUP_BY_NAME, p::DOMAIN_DEFINE_XML] {
                    let mut payload = word(count).to_vec();
                    payload.extend(vec![b'a'; extra]);
                    let e = call_err(&mut raw, procedure, next(), &payload);
                    assert_decode_error(&e, what);
                    assert!(
                        e.message
                            .as_deref()
                            .unwrap()
                            .contains(&format!("length {count} exceeds the limit {STRING_MAX}")),
                        "{what}: {e:?}"
                    );
                }
            }
            // At the bound but with the bytes missing; and the last field truncated to a
            // multiple of four (claims 8 bytes, carries 4).
            for (what, payload) in [
                ("STRING_MAX with 8 bytes", {
                    let mut v = word(STRING_MAX as u32).to_vec();
                    v.extend([b'a'; 8]);
                    v
                }),
                ("8 claimed, 4 sent", {
                    let mut v = word(8).to_vec();
                    v.extend(*b"vict");
                    v
                }),
                ("3 claimed, no padding", {
                    let mut v = word(3).to_vec();
                    v.extend(*b"vic");
                    v
                }),
                ("non-zero padding", {
                    let mut v = word(3).to_vec();
                    v.extend(*b"vic\x01");
                    v
                }),
                ("non-UTF-8", {
                    let mut v = word(4).to_vec();
                    v.extend([0xff, 0xfe, 0x80, 0x80]);
                    v
                }),
                ("trailing garbage", {
                    let mut v = encode(&"victim".to_string());
                    v.extend(word(0));
                    v
                }),
            ] {
                let e = call_err(&mut raw, p::DOMAIN_LOOKUP_BY_NAME, next(), &payload);
                assert_decode_error(&e, what);
            }
            // Arrays: the domain list of CONNECT_GET_ALL_DOMAIN_STATS (REMOTE_DOMAIN_LIST_MAX).
            for (count, bounded) in [
                (16_385u32, true),
                (0xffff_ffff, true),
                (0x8000_0000, true),
                (16_384, false),
            ] {
                let mut payload = word(count).to_vec();
                payload.extend(encode(&dom));
                payload.extend(word(0));
                payload.extend(word(0));
                let e = call_err(&mut raw, p::CONNECT_GET_ALL_DOMAIN_STATS, next(), &payload);
                assert_decode_error(&e, &format!("{count} domains"));
                if bounded {
                    assert!(
                        e.message
                            .as_deref()
                            .unwrap()
                            .contains("exceeds the limit 16384"),
                        "{e:?}"
                    );
                }
            }
            // The optional URI of CONNECT_OPEN (a second open would be refused anyway; the
            // decoding comes first).
            for count in [0xffff_ffffu32, 0x8000_0000, STRING_MAX as u32 + 1] {
                let mut payload = word(1).to_vec();
                payload.extend(word(count));
                payload.extend(word(0));
                let e = call_err(&mut raw, p::CONNECT_OPEN, next(), &payload);
                assert_decode_error(&e, "CONNECT_OPEN name");
            }
            alive(&mut raw, next());
        },
    );

    case(&d, "mutation sweep over real argument encodings", || {
        let payloads: Vec<(i32, Vec<u8>)> = vec![
            (
                p::DOMAIN_LOOKUP_BY_NAME,
                encode(&DomainLookupByNameArgs {
                    name: "victim".into(),
                }),
            ),
            (
                p::DOMAIN_GET_XML_DESC,
                encode(&DomainGetXmlDescArgs {
                    dom: dom.clone(),
                    flags: 0,
                }),
            ),
            (
                p::DOMAIN_GET_INFO,
                encode(&DomainGetInfoArgs { dom: dom.clone() }),
            ),
            (
                p::CONNECT_GET_ALL_DOMAIN_STATS,
                encode(&ConnectGetAllDomainStatsArgs {
                    doms: vec![dom.clone(), dom.clone()],
                    stats: 0,
                    flags: 0,
                }),
            ),
            (
                p::CONNECT_LIST_ALL_DOMAINS,
                encode(&ConnectListAllDomainsArgs {
                    need_results: 1,
                    flags: 0,
                }),
            ),
            (
                p::NODE_GET_MEMORY_STATS,
                encode(&NodeGetMemoryStatsArgs {
                    nparams: 4,
                    cell_num: -1,
                    flags: 0,
                }),
            ),
            (
                p::DOMAIN_OPEN_CONSOLE,
                encode(&DomainOpenConsoleArgs {
                    dom: dom.clone(),
                    dev_name: Some("console0".into()),
                    flags: 0,
                }),
            ),
            (
                p::DOMAIN_BLOCK_STATS_FLAGS,
                encode(&DomainBlockStatsFlagsArgs {
                    dom: dom.clone(),
                    path: "ubd0".into(),
                    nparams: 6,
                    flags: 0,
                }),
            ),
            (
                p::DOMAIN_MEMORY_STATS,
                encode(&DomainMemoryStatsArgs {
                    dom: dom.clone(),
                    max_stats: 10,
                    flags: 0,
                }),
            ),
            (
                p::DOMAIN_DEFINE_XML,
                encode(&DomainDefineXmlArgs {
                    xml: victim_xml("victim", &image),
                }),
            ),
        ];
        let hostile = [
            0xffff_ffffu32,
            0x8000_0000,
            0x7fff_ffff,
            STRING_MAX as u32 + 1,
            16_385,
            0,
        ];
        let mut serial = 1000u32;
        let mut answered = 0;
        for (procedure, good) in &payloads {
            let name = remote_procedure(*procedure).unwrap().name;
            // Every strict prefix is a decoding error.
            for n in 0..good.len() {
                serial += 1;
                let e = call_err(&mut raw, *procedure, serial, &good[..n]);
                assert_decode_error(&e, &format!("{name} cut to {n} bytes"));
            }
            // Every word replaced by a hostile value: some reply, never a dropped connection.
            // (The XML text is only mutated in its length word and first words, to keep the
            // sweep short.)
            let words = if *procedure == p::DOMAIN_DEFINE_XML {
                4
            } else {
                good.len() / 4
            };
            for i in 0..words {
                for v in hostile {
                    let mut m = good.clone();
                    m[4 * i..4 * i + 4].copy_from_slice(&word(v));
                    serial += 1;
                    raw.send(&call_msg(*procedure, serial, &m));
                    assert!(
                        reply_for(&mut raw, serial).is_some(),
                        "{name}: word {i} = {v:#x}: no reply"
                    );
                    answered += 1;
                }
            }
        }
        assert!(answered > 300, "{answered}");
        alive(&mut raw, serial + 1);
    });

    // Nothing the sweep claimed was allocated.
    let grown = rss_kib(d.pid()).saturating_sub(base_rss);
    eprintln!("counts: daemon RSS grew by {grown} KiB");
    assert!(grown < 32 * 1024, "the daemon grew by {grown} KiB");
    // The victim's definition is intact.
    let saved = std::fs::read_to_string(d.root.path().join("etc/libvirt/uml/victim.xml")).unwrap();
    assert!(saved.contains("<name>victim</name>"));
}

// ---------------------------------------------------------------------------------------
// 3. Procedure numbers and header abuse
// ---------------------------------------------------------------------------------------

#[test]
fn unknown_event_and_out_of_range_procedures_and_header_abuse() {
    let _one = serialized();
    let d = Daemon::start();
    let mut raw = opened(d.port);
    case(
        &d,
        "unknown, event and out-of-range procedure numbers",
        || {
            let mut numbers = vec![i32::MIN, -1000, -1, 0, 444, 445, 1000, 65_536, i32::MAX];
            numbers.extend(
                REMOTE_PROCEDURES
                    .iter()
                    .filter(|i| i.kind == Kind::Event)
                    .map(|i| i.number),
            );
            assert!(numbers.len() > 40, "the table lists the event numbers");
            for (i, n) in numbers.iter().enumerate() {
                let serial = 10 + i as u32;
                // With and without a payload.
                for payload in [&[][..], &[0u8, 0, 0, 1, 0, 0, 0, 0][..]] {
                    let e = call_err(&mut raw, *n, serial, payload);
                    assert_eq!(
                        (e.code, e.domain, e.level),
                        (code::RPC, domain::RPC, 2),
                        "{n}"
                    );
                    assert_eq!(
                        e.message.as_deref(),
                        Some(format!("unknown procedure: {n}").as_str())
                    );
                }
            }
            alive(&mut raw, 5000);
        },
    );
    case(&d, "wrong program, version and status", || {
        let mut serial = 6000;
        for (program, version) in [
            (QEMU_PROGRAM, 1),
            (LXC_PROGRAM, 1),
            (ADMIN_PROGRAM, 1),
            (0, 0),
            (0xffff_ffff, 1),
            (REMOTE_PROGRAM, 0),
            (REMOTE_PROGRAM, 2),
            (REMOTE_PROGRAM, 0xffff_ffff),
        ] {
            serial += 1;
            let mut h = call_header(p::CONNECT_GET_HOSTNAME, serial);
            h.program = program;
            h.version = version;
            raw.send(&any_msg(&h, &[]));
            let (rh, payload) = raw.reply().expect("an answer to a foreign program");
            assert_eq!((rh.serial, rh.status), (serial, Status::ERROR));
            let e = xdr::from_bytes::<RemoteError>(&payload).unwrap();
            assert_eq!((e.code, e.domain), (code::RPC, domain::RPC));
            assert_eq!(
                e.message.as_deref(),
                Some(format!("Cannot find program {program} version {version}").as_str())
            );
        }
        for status in [1, 2, 3, 99, -1] {
            serial += 1;
            let mut h = call_header(p::CONNECT_GET_HOSTNAME, serial);
            h.status = Status(status);
            raw.send(&any_msg(&h, &[]));
            let e = reply_for(&mut raw, serial).expect("an answer").unwrap_err();
            assert_eq!((e.code, e.domain), (code::RPC, domain::RPC));
            assert_eq!(
                e.message.as_deref(),
                Some(format!("Unexpected message status {status}").as_str())
            );
        }
        alive(&mut raw, 7000);
    });
    case(&d, "message types a client must not send", || {
        let mut serial = 8000;
        // REPLY, MESSAGE, REPLY_WITH_FDS, STREAM_HOLE and unknown types: no crash, no hang;
        // the connection keeps working.
        for kind in [1, 2, 5, 6, 7, 100, -1] {
            serial += 1;
            let mut h = call_header(p::CONNECT_GET_HOSTNAME, serial);
            h.kind = MessageType(kind);
            raw.send(&any_msg(&h, &[0, 0, 0, 0]));
        }
        // STREAM packets for streams that do not exist are ignored, as libvirtd does.
        for status in [0, 1, 2] {
            serial += 1;
            let mut h = call_header(p::DOMAIN_OPEN_CONSOLE, serial);
            h.kind = MessageType::STREAM;
            h.status = Status(status);
            raw.send(&any_msg(&h, b"data"));
        }
        alive(&mut raw, 8500);
        // CALL_WITH_FDS over TCP: refused with an error, the connection lives.
        let mut h = call_header(p::CONNECT_GET_HOSTNAME, 8600);
        h.kind = MessageType::CALL_WITH_FDS;
        raw.send(&any_msg(&h, &word(40)));
        assert!(reply_for(&mut raw, 8600).expect("an answer").is_err());
        alive(&mut raw, 8601);
    });
    case(&d, "keepalive program abuse", || {
        // A CALL to the keepalive program, PINGs with the wrong type or version, unknown
        // keepalive procedures: never a crash; a CALL is answered.
        for (kind, version, procedure) in [
            (MessageType::MESSAGE, 1, 3),
            (MessageType::MESSAGE, 2, 1),
            (MessageType::REPLY, 1, 1),
            (MessageType::MESSAGE, 1, 2),
        ] {
            let h = Header {
                program: KEEPALIVE_PROGRAM,
                version,
                procedure,
                kind,
                serial: 0,
                status: Status::OK,
            };
            raw.send(&any_msg(&h, &[]));
        }
        alive(&mut raw, 9000);
        let h = Header {
            program: KEEPALIVE_PROGRAM,
            version: 1,
            procedure: 1,
            kind: MessageType::CALL,
            serial: 9001,
            status: Status::OK,
        };
        raw.send(&any_msg(&h, &[]));
        raw.send(&call_msg(p::CONNECT_GET_HOSTNAME, 9002, &[]));
        // Collect answers up to the hostname's: the keepalive CALL must have had one.
        let mut keepalive_answered = false;
        for _ in 0..10 {
            let (rh, _) = raw.reply().expect("answers");
            if rh.serial == 9001 && rh.kind == MessageType::REPLY {
                keepalive_answered = true;
            }
            if rh.serial == 9002 && rh.kind == MessageType::REPLY {
                break;
            }
        }
        assert!(
            keepalive_answered,
            "a CALL to the keepalive program was left unanswered (libvirtd: \"Cannot find \
             program\")"
        );
    });
}

// ---------------------------------------------------------------------------------------
// 4. Protocol state: before open, a second open, after close
// ---------------------------------------------------------------------------------------

#[test]
fn calls_before_open_a_second_open_and_calls_after_close() {
    let _one = serialized();
    let d = Daemon::start();
    case(&d, "every procedure before CONNECT_OPEN", || {
        let mut raw = Raw::connect(d.port);
        raw.s.set_read_timeout(Some(REPLY_WAIT)).ok();
        let pre_open = [
            p::AUTH_LIST,
            p::AUTH_SASL_INIT,
            p::AUTH_SASL_START,
            p::AUTH_SASL_STEP,
            p::AUTH_POLKIT,
            p::CONNECT_OPEN,
            p::CONNECT_SUPPORTS_FEATURE,
        ];
        let mut n = 0;
        for info in REMOTE_PROCEDURES
            .iter()
            .filter(|i| i.kind == Kind::Call && !pre_open.contains(&i.number))
        {
            let e = call_err(&mut raw, info.number, 100 + info.number as u32, &[]);
            assert_eq!(
                (e.code, e.domain),
                (code::INTERNAL_ERROR, domain::RPC),
                "{}",
                info.name
            );
            assert_eq!(
                e.message.as_deref(),
                Some("internal error: connection not open"),
                "{}",
                info.name
            );
            n += 1;
        }
        assert!(n > 350, "{n}");
        // Opening with URIs nobody serves: refused, and the connection can still open.
        for (serial, uri) in [
            (1001u32, Some("xen:///system".to_string())),
            (1002, Some("uml:///system\0evil".to_string())),
            (1003, Some(format!("uml:///{}", "a".repeat(5000)))),
            (1005, Some("test:///default".into())),
        ] {
            let mut payload = encode(&uri);
            payload.extend(word(0));
            let e = call_err(&mut raw, p::CONNECT_OPEN, serial, &payload);
            assert_eq!(e.code, code::NO_CONNECT, "{uri:?}: {e:?}");
        }
        let mut payload = encode(&Some("uml:///system".to_string()));
        payload.extend(word(0xffff_fff0));
        let e = call_err(&mut raw, p::CONNECT_OPEN, 1006, &payload);
        assert_eq!(e.code, code::INVALID_ARG, "{e:?}");
        raw.open();
        alive(&mut raw, 1007);
    });
    case(
        &d,
        "a second CONNECT_OPEN, and calls after CONNECT_CLOSE",
        || {
            let mut raw = opened(d.port);
            let mut payload = encode(&Some("uml:///system".to_string()));
            payload.extend(word(0));
            let e = call_err(&mut raw, p::CONNECT_OPEN, 10, &payload);
            assert!(
                e.message.as_deref().unwrap_or("").contains("already open"),
                "{e:?}"
            );
            alive(&mut raw, 11);
            call_raw(&mut raw, p::CONNECT_CLOSE, 12, &[]).expect("close");
            // A call after CONNECT_CLOSE is not served: the connection ends, as with
            // libvirtd.
            raw.send(&call_msg(p::CONNECT_GET_HOSTNAME, 13, &[]));
            assert_ended(&mut raw, "a call after CONNECT_CLOSE");
        },
    );
}

// ---------------------------------------------------------------------------------------
// 5. Read-only bypass attempts
// ---------------------------------------------------------------------------------------

/// A read-only connection: the `-ro` socket, or TCP with CONNECT_OPEN flags = 1.
fn read_only(d: &Daemon, via_socket: bool) -> Raw {
    let mut raw = if via_socket {
        Raw::connect_unix(&d.ro_socket())
    } else {
        Raw::connect(d.port)
    };
    raw.s.set_read_timeout(Some(REPLY_WAIT)).ok();
    raw.open_flags(u32::from(!via_socket));
    raw
}

fn assert_denied(e: &RemoteError, api: &str) {
    assert_eq!(e.code, code::OPERATION_DENIED, "{api}: {e:?}");
    assert_eq!(
        e.message.as_deref(),
        Some(format!("operation forbidden: read only access prevents {api}").as_str())
    );
}

#[test]
fn read_only_connections_cannot_mutate_or_upgrade() {
    let _one = serialized();
    let d = Daemon::start();
    let image = guest_image(d.root.path(), "ro-victim");
    let mut rw = opened(d.port);
    let dom = define(&mut rw, 2, &guest_xml("ro-victim", &image)).expect("define");
    let config = d.root.path().join("etc/libvirt/uml/ro-victim.xml");
    let saved = std::fs::read_to_string(&config).unwrap();

    case(
        &d,
        "read-only: mutating procedures with crafted, valid arguments",
        || {
            for via_socket in [true, false] {
                let mut ro = read_only(&d, via_socket);
                let dom_args = encode(&dom);
                let with_flags = |flags: u32| {
                    let mut v = encode(&dom);
                    v.extend(word(flags));
                    v
                };
                let replaced = guest_xml("ro-victim", &image).replace("64", "48");
                let cases: Vec<(i32, Vec<u8>, &str)> = vec![
                (p::DOMAIN_CREATE, dom_args.clone(), "virDomainCreate"),
                (p::DOMAIN_CREATE_WITH_FLAGS, with_flags(0), "virDomainCreateWithFlags"),
                (p::DOMAIN_UNDEFINE, dom_args.clone(), "virDomainUndefine"),
                (p::DOMAIN_UNDEFINE_FLAGS, with_flags(0), "virDomainUndefineFlags"),
                (p::DOMAIN_DESTROY, dom_args.clone(), "virDomainDestroy"),
                (p::DOMAIN_SUSPEND, dom_args.clone(), "virDomainSuspend"),
                (p::DOMAIN_SET_AUTOSTART, with_flags(1), "virDomainSetAutostart"),
                (
                    p::DOMAIN_DEFINE_XML,
                    encode(&DomainDefineXmlArgs { xml: replaced.clone() }),
                    "virDomainDefineXML",
                ),
                (
                    p::DOMAIN_CREATE_XML,
                    {
                        let mut v = encode(&replaced.replace("ro-victim", "ro-new"));
                        v.extend(word(0));
                        v
                    },
                    "virDomainCreateXML",
                ),
                (
                    p::DOMAIN_OPEN_CONSOLE,
                    encode(&DomainOpenConsoleArgs {
                        dom: dom.clone(),
                        dev_name: None,
                        flags: 1,
                    }),
                    "virDomainOpenConsole",
                ),
                (
                    p::STORAGE_POOL_CREATE_XML,
                    encode(&StoragePoolCreateXmlArgs {
                        xml: "<pool type='dir'><name>ro</name><target><path>/tmp/ro-pool</path></target></pool>".into(),
                        flags: 1,
                    }),
                    "virStoragePoolCreateXML",
                ),
            ];
                for (i, (procedure, args, api)) in cases.iter().enumerate() {
                    let e = call_err(&mut ro, *procedure, 20 + i as u32, args);
                    assert_denied(&e, api);
                }
                // A 4 MiB definition is refused for being read-only, before it is decoded or
                // parsed (CVE-2025-12748); so is one the string bound would refuse.
                for size in [STRING_MAX - 64, STRING_MAX + 1024] {
                    let mut payload = word(size as u32).to_vec();
                    payload.resize(4 + size.div_ceil(4) * 4, b'<');
                    let e = call_err(&mut ro, p::DOMAIN_DEFINE_XML, 60, &payload);
                    assert_denied(&e, "virDomainDefineXML");
                }
                // Reopening read-write on the same connection is refused, and it stays read-only.
                let mut payload = encode(&Some("uml:///system".to_string()));
                payload.extend(word(0));
                assert!(call_raw(&mut ro, p::CONNECT_OPEN, 70, &payload).is_err());
                let e = call_err(&mut ro, p::DOMAIN_CREATE, 71, &dom_args);
                assert_denied(&e, "virDomainCreate");
                // No reopening after CONNECT_CLOSE either, even sent in the same write.
                let mut both = call_msg(p::CONNECT_CLOSE, 72, &[]);
                both.extend(call_msg(p::CONNECT_OPEN, 73, &payload));
                ro.send(&both);
                let closed = reply_for(&mut ro, 72).expect("a reply to CONNECT_CLOSE");
                assert!(closed.is_ok(), "{closed:?}");
                assert_ended(&mut ro, "a CONNECT_OPEN pipelined behind CONNECT_CLOSE");
            }
        },
    );
    // Nothing changed: same definition, no autostart link, no guest, no pool.
    assert_eq!(std::fs::read_to_string(&config).unwrap(), saved);
    assert!(!d
        .root
        .path()
        .join("etc/libvirt/uml/autostart/ro-victim.xml")
        .exists());
    assert!(
        guest_leaders(d.root.path()).is_empty(),
        "a guest was started"
    );
    assert!(!Path::new("/tmp/ro-pool").exists());
    alive(&mut rw, 100);
}

// ---------------------------------------------------------------------------------------
// 6. Typed parameters
// ---------------------------------------------------------------------------------------

/// A typed parameter with an arbitrary discriminant and an 8-byte value.
fn raw_param(field: &str, discriminant: u32) -> Vec<u8> {
    let mut v = encode(&field.to_string());
    v.extend(word(discriminant));
    v.extend([0u8; 8]);
    v
}

#[test]
fn typed_parameter_union_decoder_rejects_bad_discriminants_and_counts() {
    for bad in [0u32, 8, 99, 0xffff_ffff, 0x8000_0000] {
        let mut v = word(1).to_vec();
        v.extend(raw_param("cpu_shares", bad));
        assert!(
            xdr::from_bytes::<Vec<TypedParam>>(&v).is_err(),
            "discriminant {bad} accepted"
        );
    }
    // STRING with a hostile length, and a count with nothing behind it.
    let mut v = word(1).to_vec();
    v.extend(encode(&"f".to_string()));
    v.extend(word(7));
    v.extend(word(0xffff_ffff));
    assert!(xdr::from_bytes::<Vec<TypedParam>>(&v).is_err());
    assert!(xdr::from_bytes::<Vec<TypedParam>>(&word(0xffff_ffff)).is_err());
    // Every valid discriminant round-trips.
    for good in 1..=6u32 {
        let mut v = word(1).to_vec();
        v.extend(encode(&"f".to_string()));
        v.extend(word(good));
        v.extend([0u8; 8][..if matches!(good, 1 | 2 | 6) { 4 } else { 8 }].iter());
        assert!(xdr::from_bytes::<Vec<TypedParam>>(&v).is_ok(), "{good}");
    }
}

#[test]
fn typed_parameter_abuse() {
    let _one = serialized();
    let d = Daemon::start();
    let image = d.root.path().join("tp.img");
    std::fs::write(&image, b"").unwrap();
    let mut raw = opened(d.port);
    let dom = define(&mut raw, 2, &guest_xml("tp", &image)).expect("define");
    let base_rss = rss_kib(d.pid());

    case(
        &d,
        "typed parameters: huge, negative and just-too-big nparams",
        || {
            // NODE_GET_MEMORY_STATS / NODE_GET_CPU_STATS: at most 16 (REMOTE_NODE_*_STATS_MAX).
            for (i, nparams) in [i32::MAX, 17, 100_000].into_iter().enumerate() {
                let e = call_err(
                    &mut raw,
                    p::NODE_GET_MEMORY_STATS,
                    10 + i as u32,
                    &encode(&NodeGetMemoryStatsArgs {
                        nparams,
                        cell_num: -1,
                        flags: 0,
                    }),
                );
                assert!(
                    e.message
                        .as_deref()
                        .unwrap_or("")
                        .contains("nparams too large"),
                    "memory stats nparams {nparams}: {e:?}"
                );
                let e = call_err(
                    &mut raw,
                    p::NODE_GET_CPU_STATS,
                    20 + i as u32,
                    &encode(&NodeGetCpuStatsArgs {
                        cpu_num: -1,
                        nparams,
                        flags: 0,
                    }),
                );
                assert!(
                    e.message
                        .as_deref()
                        .unwrap_or("")
                        .contains("nparams too large"),
                    "cpu stats nparams {nparams}: {e:?}"
                );
            }
            for (i, nparams) in [-1, i32::MIN].into_iter().enumerate() {
                let e = call_err(
                    &mut raw,
                    p::NODE_GET_MEMORY_STATS,
                    30 + i as u32,
                    &encode(&NodeGetMemoryStatsArgs {
                        nparams,
                        cell_num: -1,
                        flags: 0,
                    }),
                );
                assert_eq!(
                    e.code,
                    code::INVALID_ARG,
                    "memory stats nparams {nparams}: {e:?}"
                );
                let e = call_err(
                    &mut raw,
                    p::NODE_GET_CPU_STATS,
                    40 + i as u32,
                    &encode(&NodeGetCpuStatsArgs {
                        cpu_num: -1,
                        nparams,
                        flags: 0,
                    }),
                );
                assert_eq!(
                    e.code,
                    code::INVALID_ARG,
                    "cpu stats nparams {nparams}: {e:?}"
                );
            }
            // The counting call (nparams 0) still works.
            let r: NodeGetMemoryStatsRet = call_ok(
                &mut raw,
                p::NODE_GET_MEMORY_STATS,
                50,
                &NodeGetMemoryStatsArgs {
                    nparams: 0,
                    cell_num: -1,
                    flags: 0,
                },
            );
            assert!(r.params.is_empty() && r.nparams > 0);
            // DOMAIN_BLOCK_STATS_FLAGS (at most 16) and DOMAIN_MEMORY_STATS (at most 1024).
            for (i, nparams) in [i32::MAX, 17, -1, i32::MIN].into_iter().enumerate() {
                let e = call_err(
                    &mut raw,
                    p::DOMAIN_BLOCK_STATS_FLAGS,
                    60 + i as u32,
                    &encode(&DomainBlockStatsFlagsArgs {
                        dom: dom.clone(),
                        path: "ubd0".into(),
                        nparams,
                        flags: 0,
                    }),
                );
                assert_eq!(e.code, code::RPC, "{e:?}");
                assert!(e.message.as_deref().unwrap().contains("nparams too large"));
            }
            for (i, max_stats) in [u32::MAX, 1025, 0x8000_0000].into_iter().enumerate() {
                let e = call_err(
                    &mut raw,
                    p::DOMAIN_MEMORY_STATS,
                    70 + i as u32,
                    &encode(&DomainMemoryStatsArgs {
                        dom: dom.clone(),
                        max_stats,
                        flags: 0,
                    }),
                );
                assert!(
                    e.message
                        .as_deref()
                        .unwrap()
                        .contains("REMOTE_DOMAIN_MEMORY_STATS_MAX"),
                    "{e:?}"
                );
            }
            // CONNECT_GET_ALL_DOMAIN_STATS: a huge domain count (see also the counts test).
            let mut payload = word(0xffff_fff0).to_vec();
            payload.extend(word(0));
            payload.extend(word(0));
            assert_decode_error(
                &call_err(&mut raw, p::CONNECT_GET_ALL_DOMAIN_STATS, 80, &payload),
                "all-domain stats",
            );
            alive(&mut raw, 81);
        },
    );

    case(
        &d,
        "typed parameters: bad union discriminants in every params-taking call",
        || {
            let takers = [
                (p::DOMAIN_SET_SCHEDULER_PARAMETERS, true, false),
                (p::DOMAIN_SET_SCHEDULER_PARAMETERS_FLAGS, true, true),
                (p::DOMAIN_SET_MEMORY_PARAMETERS, true, true),
                (p::DOMAIN_SET_BLKIO_PARAMETERS, true, true),
                (p::DOMAIN_SET_NUMA_PARAMETERS, true, true),
                (p::DOMAIN_SET_PERF_EVENTS, true, true),
                (p::NODE_SET_MEMORY_PARAMETERS, false, true),
                (p::DOMAIN_MIGRATE_BEGIN3_PARAMS, true, true),
                (p::DOMAIN_SAVE_PARAMS, true, true),
                (p::DOMAIN_SET_LAUNCH_SECURITY_STATE, true, true),
            ];
            let mut serial = 100;
            for (procedure, with_dom, with_flags) in takers {
                for (count, disc) in [
                    (1u32, 99u32),
                    (1, 0),
                    (2, 0xffff_ffff),
                    (0xffff_ffff, 1),
                    (0x8000_0000, 7),
                ] {
                    let mut payload = if with_dom { encode(&dom) } else { Vec::new() };
                    payload.extend(word(count));
                    payload.extend(raw_param("cpu_shares", disc));
                    if with_flags {
                        payload.extend(word(0));
                    }
                    serial += 1;
                    let e = call_err(&mut raw, procedure, serial, &payload);
                    // Unimplemented here (NO_SUPPORT) or a decoding error; never a crash.
                    assert!(
                        e.code == code::NO_SUPPORT || e.code == code::RPC,
                        "{}: {e:?}",
                        remote_procedure(procedure).unwrap().name
                    );
                }
            }
            alive(&mut raw, serial + 1);
        },
    );
    let grown = rss_kib(d.pid()).saturating_sub(base_rss);
    assert!(grown < 32 * 1024, "the daemon grew by {grown} KiB");
}

// ---------------------------------------------------------------------------------------
// 7. XML bombs and hostile names
// ---------------------------------------------------------------------------------------

fn billion_laughs() -> String {
    let mut s = String::from("<?xml version='1.0'?>\n<!DOCTYPE domain [\n <!ENTITY lol \"lol\">\n");
    for i in 1..10 {
        let prev = if i == 1 {
            "lol".to_string()
        } else {
            format!("lol{}", i - 1)
        };
        s.push_str(&format!(
            " <!ENTITY lol{i} \"{}\">\n",
            format!("&{prev};").repeat(10)
        ));
    }
    s.push_str("]>\n");
    s.push_str(&named_xml("&lol9;"));
    s
}

#[test]
fn xml_bombs_are_refused_before_they_cost_anything() {
    let _one = serialized();
    let d = Daemon::start();
    let mut raw = opened(d.port);
    let base_rss = rss_kib(d.pid());
    let deep = {
        let n = 100_000;
        format!(
            "<domain type='uml'><name>deep</name><metadata>{}{}</metadata></domain>",
            "<a>".repeat(n),
            "</a>".repeat(n)
        )
    };
    let xxe = format!(
        "<?xml version='1.0'?><!DOCTYPE d [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>{}",
        named_xml("&x;")
    );
    let undeclared = named_xml("&x;");
    let big_attr = format!(
        "<domain type='uml' x='{}'><name>a</name></domain>",
        "A".repeat(4 * 1024 * 1024 - 200)
    );
    let elements = format!(
        "<domain type='uml'><name>e</name><metadata>{}</metadata></domain>",
        "<a/>".repeat(20_000)
    );
    let attributes = {
        let mut s = String::from("<domain type='uml'");
        let mut i = 0;
        while s.len() < 1_000_000 {
            s.push_str(&format!(" a{i}=''"));
            i += 1;
        }
        s.push_str("><name>x</name></domain>");
        s
    };
    let just_over = format!(
        "<domain type='uml'><name>big</name><description>{}</description></domain>",
        "d".repeat(1 << 20)
    );
    let cases: Vec<(&str, String, i32, &str)> = vec![
        (
            "billion laughs",
            billion_laughs(),
            code::XML_ERROR,
            "DOCTYPE",
        ),
        ("external entity", xxe, code::XML_ERROR, "DOCTYPE"),
        (
            "undeclared entity",
            undeclared,
            code::XML_ERROR,
            "is not defined",
        ),
        (
            "100 000 levels deep",
            deep,
            code::XML_ERROR,
            "nested more than",
        ),
        ("20 000 elements", elements, code::XML_ERROR, "elements"),
        ("1 MiB of attributes", attributes, code::XML_ERROR, ""),
        (
            "4 MiB attribute",
            big_attr,
            code::XML_ERROR,
            "bytes, more than",
        ),
        (
            "just over 1 MiB",
            just_over,
            code::XML_ERROR,
            "bytes, more than",
        ),
    ];
    for (i, (what, xml, want, fragment)) in cases.into_iter().enumerate() {
        case(&d, &format!("XML bomb: {what}"), || {
            let t = Instant::now();
            let e = define(&mut raw, 10 + i as u32, &xml).expect_err(what);
            eprintln!("  {what}: refused in {:?}", t.elapsed());
            if want == code::XML_ERROR {
                assert!(
                    e.code == code::XML_ERROR
                        || e.code == code::XML_DETAIL
                        || e.code == code::CONFIG_UNSUPPORTED,
                    "{what}: {e:?}"
                );
            }
            assert_eq!(e.domain, domain::UML, "{what}: {e:?}");
            assert!(
                e.message.as_deref().unwrap_or("").contains(fragment),
                "{what}: {e:?}"
            );
        });
    }
    case(&d, "XML bomb: 10 MB of XML", || {
        let xml = format!(
            "<domain type='uml'><name>x</name><description>{}</description></domain>",
            "x".repeat(10 << 20)
        );
        let e = define(&mut raw, 50, &xml).expect_err("10 MB");
        assert_decode_error(&e, "10 MB XML");
        assert!(e.message.unwrap().contains("exceeds the limit 4194304"));
    });
    case(&d, "XML: NUL, control characters and invalid UTF-8", || {
        for (i, xml) in [
            named_xml("a\0b"),
            named_xml("a&#0;b"),
            named_xml("a&#x1;b"),
            "<domain type='uml'>\u{1}</domain>".to_string(),
        ]
        .iter()
        .enumerate()
        {
            let e = define(&mut raw, 60 + i as u32, xml).expect_err("refused");
            assert!(
                e.code == code::XML_DETAIL || e.code == code::XML_ERROR,
                "{xml:?}: {e:?}"
            );
        }
    });
    case(
        &d,
        "XML: a definition of almost 1 MiB, fetched by 3 clients at once",
        || {
            let image = d.root.path().join("huge.img");
            std::fs::write(&image, b"").unwrap();
            let huge = guest_xml("huge", &image).replace(
                "<memory",
                &format!(
                    "<description>{}</description>
  <memory",
                    "h".repeat((1 << 20) - 4096)
                ),
            );
            let dom = define(&mut raw, 70, &huge).expect("define huge");
            let args = encode(&DomainGetXmlDescArgs { dom, flags: 0 });
            // More fetching connections than the daemon has workers: formatting must not
            // occupy them all.
            let mut fetchers: Vec<Raw> = (0..3).map(|_| opened(d.port)).collect();
            for f in &mut fetchers {
                for serial in 100..110 {
                    f.send(&call_msg(p::DOMAIN_GET_XML_DESC, serial, &args));
                }
            }
            for f in &mut fetchers {
                for serial in 100..110 {
                    let reply = reply_for(f, serial).expect("answered").expect("the XML");
                    let xml =
                        xdr::from_bytes::<virtumld_protocol::remote::DomainGetXmlDescRet>(&reply)
                            .expect("a well-formed reply")
                            .xml;
                    assert!(xml.len() > (1 << 20) - 4096, "{}", xml.len());
                }
            }
        },
    );
    let grown = rss_kib(d.pid()).saturating_sub(base_rss);
    eprintln!("XML bombs: daemon RSS grew by {grown} KiB");
    assert!(grown < 64 * 1024, "the daemon grew by {grown} KiB");
    // None of the bombs was defined.
    let defs: Vec<_> = std::fs::read_dir(d.root.path().join("etc/libvirt/uml"))
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        defs.iter().all(|n| n == "autostart" || n == "huge.xml"),
        "{defs:?}"
    );
    alive(&mut raw, 99);
}

#[test]
fn hostile_names_never_escape_their_directories() {
    let _one = serialized();
    let d = Daemon::start();
    let mut raw = opened(d.port);
    let before = tree(d.root.path());
    case(&d, "hostile domain names", || {
        let long = "n".repeat(5000);
        let cases: [(&str, &str); 10] = [
            ("../../etc/x", "cannot contain '/'"),
            ("a/b", "cannot contain '/'"),
            ("/abs", "cannot contain '/'"),
            ("..", "cannot start with '.'"),
            (".hidden", "cannot start with '.'"),
            ("a\nb", "0x0a"),
            ("a\tb", "0x09"),
            ("a\u{7f}b", "0x7f"),
            ("a&#10;b", "0x0a"),
            (&long, "5000 bytes"),
        ];
        for (i, (name, fragment)) in cases.iter().enumerate() {
            let e = define(&mut raw, 10 + i as u32, &named_xml(name)).expect_err(name);
            assert_eq!(
                (e.code, e.domain),
                (code::XML_ERROR, domain::UML),
                "{name:?}: {e:?}"
            );
            assert!(
                e.message.as_deref().unwrap_or("").contains(fragment),
                "{name:?}: {e:?}"
            );
            // Lookups with the same names: "not found", never a path.
            let e = call_err(
                &mut raw,
                p::DOMAIN_LOOKUP_BY_NAME,
                100 + i as u32,
                &encode(&DomainLookupByNameArgs {
                    name: (*name).to_string(),
                }),
            );
            assert_eq!(e.code, code::NO_DOMAIN, "{name:?}: {e:?}");
        }
        // NUL inside the XDR string itself.
        let e = call_err(
            &mut raw,
            p::DOMAIN_LOOKUP_BY_NAME,
            200,
            &encode(&DomainLookupByNameArgs {
                name: "../x\0y".into(),
            }),
        );
        assert_eq!(e.code, code::NO_DOMAIN, "{e:?}");
    });
    case(&d, "hostile storage pool and volume names", || {
        let pool_dir = d.root.path().join("pools/p1");
        let xml = format!(
            "<pool type='dir'><name>p1</name><target><path>{}</path></target></pool>",
            pool_dir.display()
        );
        let pool: NonnullStoragePool = {
            let r: StoragePoolCreateXmlRet = call_ok(
                &mut raw,
                p::STORAGE_POOL_CREATE_XML,
                300,
                &StoragePoolCreateXmlArgs { xml, flags: 1 },
            );
            r.pool
        };
        for (i, name) in [
            "../escape.img",
            "../../etc/evil",
            "a/b",
            "/tmp/abs.img",
            ".hidden",
        ]
        .iter()
        .enumerate()
        {
            let vol =
                format!("<volume><name>{name}</name><capacity unit='KiB'>4</capacity></volume>");
            let e = call_raw(
                &mut raw,
                p::STORAGE_VOL_CREATE_XML,
                310 + i as u32,
                &encode(&StorageVolCreateXmlArgs {
                    pool: pool.clone(),
                    xml: vol,
                    flags: 0,
                }),
            )
            .expect_err(name);
            assert!(e.code != code::OK, "{name}: {e:?}");
        }
        for (i, name) in ["../../evil-pool", "a/b", ".."].iter().enumerate() {
            let xml = format!(
                "<pool type='dir'><name>{name}</name><target><path>{}</path></target></pool>",
                d.root.path().join("pools/other").display()
            );
            let mut payload = encode(&xml);
            payload.extend(word(0));
            let e = call_err(
                &mut raw,
                p::STORAGE_POOL_DEFINE_XML,
                330 + i as u32,
                &payload,
            );
            assert!(e.code != code::OK, "{name}: {e:?}");
        }
    });
    // Nothing appeared outside the daemon's own directories, and nothing named after the
    // hostile input appeared anywhere.
    let after = tree(d.root.path());
    let new: Vec<_> = after.iter().filter(|p| !before.contains(p)).collect();
    for p in &new {
        assert!(
            p.starts_with("etc/libvirt/storage")
                || p.starts_with("run/libvirt/storage")
                || p.starts_with("pools")
                || p.starts_with("etc/libvirt")
                || p.starts_with("run/libvirt"),
            "unexpected file {p}"
        );
        assert!(
            !p.contains("escape")
                && !p.contains("evil")
                && !p.contains("hidden")
                && !p.contains("abs"),
            "unexpected file {p}"
        );
    }
    assert!(!d.root.path().join("etc/x.xml").exists());
    assert!(!Path::new("/tmp/abs.img").exists());
    alive(&mut raw, 999);
}

// ---------------------------------------------------------------------------------------
// 8. A running guest: streams abused, disconnects mid-call and mid-stream
// ---------------------------------------------------------------------------------------

/// A STREAM packet of the console stream opened with `serial`.
fn stream_msg(serial: u32, status: Status, payload: &[u8]) -> Vec<u8> {
    let h = Header {
        kind: MessageType::STREAM,
        status,
        ..call_header(p::DOMAIN_OPEN_CONSOLE, serial)
    };
    any_msg(&h, payload)
}

fn console_args(dom: &NonnullDomain) -> Vec<u8> {
    encode(&DomainOpenConsoleArgs {
        dom: dom.clone(),
        dev_name: None,
        flags: 0,
    })
}

/// Opens the guest's console as stream `serial`, retrying while an earlier session (one
/// whose client just left) still holds the line.
fn open_console(raw: &mut Raw, serial: u32, dom: &NonnullDomain) {
    let deadline = Instant::now() + REPLY_WAIT;
    loop {
        match call_raw(raw, p::DOMAIN_OPEN_CONSOLE, serial, &console_args(dom)) {
            Ok(_) => return,
            Err(e) if Instant::now() < deadline => {
                assert!(
                    e.message
                        .as_deref()
                        .unwrap_or("")
                        .contains("Active console session"),
                    "{e:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("cannot open the console: {e:?}"),
        }
    }
}

/// Reads stream `serial` until its output contains `pat` (true), or until it ends, the
/// connection closes or nothing comes for `REPLY_WAIT`.
fn stream_until(raw: &mut Raw, serial: u32, pat: &[u8]) -> bool {
    let mut seen = Vec::new();
    while let Some((h, payload)) = raw.reply() {
        if h.kind != MessageType::STREAM || h.serial != serial {
            continue;
        }
        if h.status != Status::CONTINUE || payload.is_empty() {
            return false;
        }
        seen.extend_from_slice(&payload);
        if seen.windows(pat.len()).any(|w| w == pat) {
            return true;
        }
    }
    false
}

/// Waits for the daemon's confirmation of a finish or abort: an empty STREAM OK.
fn confirmed(raw: &mut Raw, serial: u32) -> bool {
    while let Some((h, payload)) = raw.reply() {
        if h.kind == MessageType::STREAM && h.serial == serial && h.status == Status::OK {
            return payload.is_empty();
        }
    }
    false
}

/// An opened client whose socket is reset (RST, not FIN) when dropped.
fn opened_resetting(port: u16) -> Raw {
    let s = resetting(port);
    s.set_read_timeout(Some(REPLY_WAIT)).ok();
    let mut raw = Raw { s: Box::new(s) };
    raw.open();
    raw
}

/// A fresh client opens the console, gets a prompt, runs a command and finishes.
fn console_works(port: u16, dom: &NonnullDomain, tag: u32) {
    let mut c = opened(port);
    open_console(&mut c, 7, dom);
    c.send(&stream_msg(7, Status::CONTINUE, b"\r"));
    assert!(stream_until(&mut c, 7, b"guest# "), "no prompt");
    std::thread::sleep(Duration::from_millis(300));
    let cmd = format!("echo works-$(({tag}+1))\r");
    c.send(&stream_msg(7, Status::CONTINUE, cmd.as_bytes()));
    let want = format!("works-{}", tag + 1);
    assert!(stream_until(&mut c, 7, want.as_bytes()), "{want} missing");
    c.send(&stream_msg(7, Status::OK, &[]));
    assert!(confirmed(&mut c, 7), "finish not confirmed");
}

#[test]
fn console_streams_abused_and_dropped_on_a_running_guest() {
    let _one = serialized();
    let d = Daemon::start();
    let image = guest_image(d.root.path(), "streamed");
    let mut raw = opened(d.port);
    let dom = define(&mut raw, 2, &guest_xml("streamed", &image)).expect("define");
    d.virsh_ok(&["start", "streamed"]);
    {
        // Booted: a shell answers on the console. Nothing is attached afterwards.
        let mut c = opened(d.port);
        c.s.set_read_timeout(Some(Duration::from_secs(60))).ok();
        open_console(&mut c, 3, &dom);
        assert!(
            stream_until(&mut c, 3, b"guest# "),
            "the guest never got a shell"
        );
        // Some output once the pump has had time to find the guest's process (it keeps a
        // pidfd for it), so that the descriptor is in the baseline.
        std::thread::sleep(Duration::from_millis(1500));
        c.send(&stream_msg(3, Status::CONTINUE, b"echo baseline\r"));
        assert!(stream_until(&mut c, 3, b"guest# "));
        c.send(&stream_msg(3, Status::OK, &[]));
        assert!(confirmed(&mut c, 3));
    }
    let pid = d.pid();
    std::thread::sleep(Duration::from_millis(300));
    let base_fds = fd_count(pid);
    eprintln!("fds before: {:?}", fd_targets(pid));

    case(
        &d,
        "streams: packets for serials that have no stream",
        || {
            let mut c = opened(d.port);
            for serial in [0, 1, 3, 77, 0x7fff_ffff, 0xffff_ffff] {
                for (status, payload) in [
                    (Status::CONTINUE, &b"keys"[..]),
                    (Status::CONTINUE, &[][..]),
                    (Status::OK, &[][..]),
                    (Status::ERROR, &b"\x00\x00\x00\x01garbage"[..]),
                    (Status(9), &[][..]),
                ] {
                    c.send(&stream_msg(serial, status, payload));
                }
            }
            alive(&mut c, 900);
        },
    );

    case(
        &d,
        "streams: data, a second finish and an abort after the finish",
        || {
            let mut c = opened(d.port);
            open_console(&mut c, 10, &dom);
            c.send(&stream_msg(10, Status::OK, &[]));
            assert!(confirmed(&mut c, 10), "finish not confirmed");
            c.send(&stream_msg(10, Status::CONTINUE, b"echo late\r"));
            c.send(&stream_msg(10, Status::OK, &[]));
            c.send(&stream_msg(10, Status::ERROR, &[]));
            alive(&mut c, 11);
            // The line was let go: the same connection opens it again.
            open_console(&mut c, 12, &dom);
            c.send(&stream_msg(12, Status::CONTINUE, b"\r"));
            assert!(stream_until(&mut c, 12, b"guest# "));
            // Finish and abort sent together: one confirmation, the abort is dropped.
            c.send(&stream_msg(12, Status::OK, &[]));
            c.send(&stream_msg(12, Status::ERROR, &[]));
            assert!(confirmed(&mut c, 12));
            alive(&mut c, 13);
        },
    );

    case(&d, "streams: ERROR packets with garbage payloads", || {
        let mut c = opened(d.port);
        let garbage: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7919 % 251) as u8).collect();
        for (serial, status, payload) in [
            (20, Status::ERROR, &garbage[..]),
            (21, Status::ERROR, &b"\xff\xff\xff\xff"[..]),
            (22, Status(-1), &b"junk"[..]),
        ] {
            open_console(&mut c, serial, &dom);
            c.send(&stream_msg(serial, status, payload));
            assert!(confirmed(&mut c, serial), "abort {serial} not confirmed");
            alive(&mut c, serial + 100);
        }
    });

    case(
        &d,
        "streams: clients that leave with DOMAIN_OPEN_CONSOLE unanswered",
        || {
            for _ in 0..20 {
                let mut c = opened(d.port);
                c.send(&call_msg(p::DOMAIN_OPEN_CONSOLE, 30, &console_args(&dom)));
                drop(c);
            }
            for _ in 0..20 {
                // Reset instead of closed, the call and a keystroke in flight.
                let mut s = resetting(d.port);
                let mut m = frame::encode(&call_header(p::AUTH_LIST, 0), &()).to_vec();
                m.extend(call_msg(p::CONNECT_OPEN, 1, &{
                    let mut v = encode(&Some("uml:///system".to_string()));
                    v.extend(word(0));
                    v
                }));
                m.extend(call_msg(p::DOMAIN_OPEN_CONSOLE, 2, &console_args(&dom)));
                m.extend(stream_msg(2, Status::CONTINUE, b"x"));
                let _ = s.write_all(&m);
                drop(s);
            }
            // Every session was let go: a fresh client gets the line.
            console_works(d.port, &dom, 30);
        },
    );

    case(
        &d,
        "streams: clients that leave while console output flows",
        || {
            let mut c = opened(d.port);
            open_console(&mut c, 40, &dom);
            // Several seconds of a console at full speed, whoever reads it.
            c.send(&stream_msg(
                40,
                Status::CONTINUE,
                b"timeout 5 tr '\\0' F < /dev/zero\r",
            ));
            assert!(stream_until(&mut c, 40, b"FFFFFFFF"));
            drop(c);
            for i in 0..10u32 {
                // Closed, or reset without a word.
                let mut c = if i % 2 == 0 {
                    opened(d.port)
                } else {
                    opened_resetting(d.port)
                };
                open_console(&mut c, 41 + i, &dom);
                assert!(stream_until(&mut c, 41 + i, b"FFFFFFFF"));
                let until = Instant::now() + Duration::from_millis(250);
                while Instant::now() < until && c.reply().is_some() {}
                drop(c);
            }
        },
    );

    // The flood is over: a fresh client has a working console, and every descriptor the
    // abused sessions used is closed.
    std::thread::sleep(Duration::from_secs(3));
    console_works(d.port, &dom, 50);
    let back = wait_until(Duration::from_secs(10), || fd_count(pid) <= base_fds);
    assert!(
        back,
        "fds: {} now, {base_fds} before: {:?}",
        fd_count(pid),
        fd_targets(pid)
    );
    alive(&mut raw, 99);
}

/// What each of a process's descriptors refers to.
fn fd_targets(pid: i32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            format!(
                "{} -> {}",
                e.file_name().to_string_lossy(),
                target.display()
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn slowloris_clients_delay_nobody_else() {
    let _one = serialized();
    let d = Daemon::start();
    case(
        &d,
        "slowloris: 20 clients sending a header a byte every 100 ms",
        || {
            let mut conns: Vec<Raw> = (0..20).map(|_| opened(d.port)).collect();
            let msgs: Vec<Vec<u8>> = (0..20)
                .map(|i| call_msg(p::CONNECT_GET_HOSTNAME, 100 + i, &[]))
                .collect();
            let len = msgs[0].len();
            for at in 0..len {
                for (c, m) in conns.iter_mut().zip(&msgs) {
                    c.send(&m[at..at + 1]);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            for (i, c) in conns.iter_mut().enumerate() {
                assert!(reply_for(c, 100 + i as u32).expect("answered").is_ok());
            }
        },
    );
    case(&d, "slowloris: a big message trickled in", || {
        let mut raw = opened(d.port);
        let payload = encode(&DomainLookupByNameArgs {
            name: "x".repeat(60_000),
        });
        let msg = call_msg(p::DOMAIN_LOOKUP_BY_NAME, 5, &payload);
        for chunk in msg.chunks(msg.len() / 25 + 1) {
            raw.send(chunk);
            std::thread::sleep(Duration::from_millis(100));
        }
        let e = reply_for(&mut raw, 5).expect("answered").unwrap_err();
        assert_eq!(e.code, code::NO_DOMAIN);
    });
}

/// A client that opens, then pipelines `calls` without ever reading a reply. The writes
/// happen on a thread (they block once the daemon stops reading); `stop` ends them.
struct NonReader {
    control: TcpStream,
    writer: JoinHandle<usize>,
}

impl NonReader {
    fn start(port: u16, mut call: impl FnMut(u32) -> Vec<u8>, calls: u32) -> NonReader {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut all = frame::encode(&call_header(p::AUTH_LIST, 0), &()).to_vec();
        all.extend(call_msg(p::CONNECT_OPEN, 1, &{
            let mut v = encode(&Some("uml:///system".to_string()));
            v.extend(word(0));
            v
        }));
        for i in 0..calls {
            all.extend(call(10 + i));
        }
        let control = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let mut written = 0;
            while written < all.len() {
                match s.write(&all[written..]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => written += n,
                }
            }
            written
        });
        NonReader { control, writer }
    }

    /// Closes the connection; returns how many bytes the daemon (and the kernel) took.
    fn stop(self) -> usize {
        let _ = self.control.shutdown(std::net::Shutdown::Both);
        self.writer.join().unwrap_or(0)
    }
}

/// RSS samples every 500 ms for `secs` seconds.
fn rss_samples(pid: i32, secs: u64) -> Vec<u64> {
    (0..secs * 2)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(500));
            rss_kib(pid)
        })
        .collect()
}

#[test]
fn a_client_that_never_reads_cannot_grow_the_daemon() {
    let _one = serialized();
    let d = Daemon::start();
    let image = d.root.path().join("big.img");
    std::fs::write(&image, b"").unwrap();
    let mut raw = opened(d.port);
    // A definition whose XML is 256 KiB: every reply to GET_XML_DESC is that big, too big
    // for the kernel's socket buffers to hide the daemon's own queues.
    let big = guest_xml("big", &image).replace(
        "<memory",
        &format!(
            "<description>{}</description>\n  <memory",
            "d".repeat(256 * 1024)
        ),
    );
    let dom = define(&mut raw, 2, &big).expect("define big");
    let pid = d.pid();
    let base_rss = rss_kib(pid);
    let base_fds = fd_count(pid);

    case(&d, "never reads: 20 000 small pipelined calls", || {
        let c = NonReader::start(
            d.port,
            |i| call_msg(p::CONNECT_GET_LIB_VERSION, i, &[]),
            20_000,
        );
        let samples = rss_samples(pid, 3);
        let taken = c.stop();
        eprintln!("  small calls: {taken} bytes taken; RSS {base_rss} KiB -> {samples:?}");
        let peak = samples.iter().max().copied().unwrap_or(0);
        assert!(
            peak.saturating_sub(base_rss) < 64 * 1024,
            "grew by {} KiB",
            peak - base_rss
        );
    });

    case(&d, "never reads: 3000 calls with 256 KiB replies", || {
        let args = encode(&DomainGetXmlDescArgs {
            dom: dom.clone(),
            flags: 0,
        });
        let c = NonReader::start(d.port, |i| call_msg(p::DOMAIN_GET_XML_DESC, i, &args), 3000);
        let samples = rss_samples(pid, 8);
        let taken = c.stop();
        eprintln!("  256 KiB replies: {taken} bytes taken; RSS {base_rss} KiB -> {samples:?}");
        // Bounded by the connection's outbox (1 MiB plus one message) and the replies of
        // the calls in flight, not by the number of calls: the RSS levels off.
        let last = &samples[samples.len() - 4..];
        let (lo, hi) = (
            last.iter().min().copied().unwrap_or(0),
            last.iter().max().copied().unwrap_or(0),
        );
        assert!(hi - lo < 8 * 1024, "RSS kept growing: {samples:?}");
        assert!(
            hi.saturating_sub(base_rss) < 16 * 1024,
            "one client that never reads holds {} KiB",
            hi.saturating_sub(base_rss)
        );
    });
    // Both connections are gone: descriptors back to the baseline.
    let back = wait_until(Duration::from_secs(10), || fd_count(pid) <= base_fds);
    assert!(back, "fds: {} now, {base_fds} before", fd_count(pid));
    alive(&mut raw, 99);
}

#[test]
fn connection_floods_and_churn_leave_no_descriptor_behind() {
    let _one = serialized();
    let d = Daemon::start();
    // The canary's own connection is part of the baseline.
    let canary = Canary::start(d.port);
    std::thread::sleep(Duration::from_millis(200));
    let base_fds = fd_count(d.pid());
    drop(canary.finish());
    let base_fds = base_fds - 1;

    case(
        &d,
        "flood: 400 connections at once, then all closed",
        || {
            let mut tcp = Vec::new();
            let mut unix = Vec::new();
            for i in 0..300 {
                let mut s =
                    TcpStream::connect(("127.0.0.1", d.port)).expect("connect during flood");
                if i % 2 == 0 {
                    let _ = s.write_all(&frame::encode(&call_header(p::AUTH_LIST, 0), &()));
                }
                tcp.push(s);
            }
            for _ in 0..100 {
                unix.push(
                    std::os::unix::net::UnixStream::connect(d.socket()).expect("connect unix"),
                );
            }
            let all_in = wait_until(Duration::from_secs(10), || {
                fd_count(d.pid()) >= base_fds + 400
            });
            let during = fd_count(d.pid());
            eprintln!("  fds: {base_fds} before, {during} during");
            assert!(all_in, "the daemon did not accept them all: {during}");
            drop(tcp);
            drop(unix);
        },
    );
    assert!(
        wait_until(Duration::from_secs(10), || fd_count(d.pid()) <= base_fds),
        "fds after the flood: {} (baseline {base_fds})",
        fd_count(d.pid())
    );

    case(
        &d,
        "churn: SUPPORTS_FEATURE(keepalive) then RST, malformed then close",
        || {
            for i in 0..300u32 {
                let mut s = resetting(d.port);
                let mut m = frame::encode(&call_header(p::AUTH_LIST, 0), &()).to_vec();
                m.extend(call_msg(p::CONNECT_SUPPORTS_FEATURE, 1, &word(10)));
                if i % 3 == 1 {
                    m.extend(call_msg(p::CONNECT_GET_HOSTNAME, 2, &word(0xffff_ffff)));
                }
                if i % 3 == 2 {
                    m.extend(word(0xffff_ffff));
                }
                let _ = s.write_all(&m);
                drop(s);
            }
        },
    );
    assert!(
        wait_until(Duration::from_secs(10), || fd_count(d.pid()) <= base_fds),
        "fds after the churn: {} (baseline {base_fds})",
        fd_count(d.pid())
    );
    alive(&mut opened(d.port), 5);
}

#[test]
fn at_max_clients_new_clients_wait_and_old_ones_are_served() {
    let _one = serialized();
    let d = Daemon::start_with("max_clients = 20\n");
    case(&d, "flood beyond max_clients (20)", || {
        let held: Vec<TcpStream> = (0..60)
            .map(|_| TcpStream::connect(("127.0.0.1", d.port)).expect("connect"))
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        drop(held);
    });
    // Once they are gone, new clients are served again.
    let ok = wait_until(Duration::from_secs(10), || {
        let mut r = Raw::connect(d.port);
        r.s.set_read_timeout(Some(Duration::from_secs(2))).ok();
        r.call(p::AUTH_LIST, 0, &());
        r.reply().is_some()
    });
    assert!(ok, "the daemon stopped accepting after the flood");
}

// ---------------------------------------------------------------------------------------
// 10. Event registrations
// ---------------------------------------------------------------------------------------

#[test]
fn event_registration_abuse() {
    let _one = serialized();
    let d = Daemon::start();
    let image = d.root.path().join("ev.img");
    std::fs::write(&image, b"").unwrap();
    let mut other = opened(d.port);

    case(
        &d,
        "10 000 event registrations, unknown ids, close with callbacks live",
        || {
            let mut raw = opened(d.port);
            let args = encode(&ConnectDomainEventCallbackRegisterAnyArgs {
                event_id: 0,
                dom: None,
            });
            let mut ids = Vec::new();
            for batch in 0..100u32 {
                let mut m = Vec::new();
                for i in 0..100 {
                    m.extend(call_msg(
                        p::CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY,
                        10 + batch * 100 + i,
                        &args,
                    ));
                }
                raw.send(&m);
                // Calls run concurrently: their replies come in any order.
                let mut got = 0;
                while got < 100 {
                    let (h, payload) = raw.reply().expect("registered");
                    if h.kind != MessageType::REPLY {
                        continue;
                    }
                    assert_eq!(h.status, Status::OK, "registration {}", h.serial);
                    let r = xdr::from_bytes::<ConnectDomainEventCallbackRegisterAnyRet>(&payload)
                        .unwrap();
                    ids.push(r.callback_id);
                    got += 1;
                }
            }
            assert_eq!(ids.len(), 10_000);
            // Deregistering ids that are not this client's: refused, nothing removed.
            for (i, id) in [-1, i32::MAX, ids[0] + 1_000_000].into_iter().enumerate() {
                let e = call_err(
                    &mut raw,
                    p::CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY,
                    20_000 + i as u32,
                    &word(id as u32),
                );
                assert_eq!(e.code, code::INVALID_ARG, "{e:?}");
            }
            // Event ids out of range.
            for (i, ev) in [-1, 1000, i32::MIN].into_iter().enumerate() {
                let mut a = word(ev as u32).to_vec();
                a.extend(word(0));
                let e = call_err(
                    &mut raw,
                    p::CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY,
                    20_100 + i as u32,
                    &a,
                );
                assert_eq!(e.code, code::INVALID_ARG, "{e:?}");
            }
            // An event now means 10 000 messages for this client: it gets them or is dropped,
            // and nobody else notices.
            define(&mut other, 3, &guest_xml("ev", &image)).expect("define");
            let start = Instant::now();
            let mut events = 0;
            while events < 10_000 && start.elapsed() < Duration::from_secs(30) {
                match raw.reply() {
                    Some((h, _)) if h.kind == MessageType::MESSAGE => events += 1,
                    Some(_) => {}
                    None => break,
                }
            }
            eprintln!("  10 000 registrations: {events} event messages before the end");
            // Close with everything still registered, then more events.
            drop(raw);
            let ev = lookup(&mut other, 5, "ev");
            call_raw(&mut other, p::DOMAIN_UNDEFINE, 4, &encode(&ev)).expect("undefine");
            alive(&mut other, 6);
        },
    );
}

/// A client with an event registration whose transmit queue is momentarily full (it has
/// many calls in flight with big replies and reads them at its own pace, as a client with a
/// thread pool over a slow link does) must get its events and its replies, not be
/// disconnected.
#[test]
fn events_reach_a_client_whose_queue_is_momentarily_full() {
    let _one = serialized();
    let d = Daemon::start();
    let image = d.root.path().join("q.img");
    std::fs::write(&image, b"").unwrap();
    let mut ctl = opened(d.port);
    let big = guest_xml("q", &image).replace(
        "<memory",
        &format!(
            "<description>{}</description>\n  <memory",
            "d".repeat(1_000_000)
        ),
    );
    let dom = define(&mut ctl, 2, &big).expect("define");

    let mut busy = opened(d.port);
    busy.s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let _: ConnectDomainEventCallbackRegisterAnyRet = call_ok(
        &mut busy,
        p::CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY,
        2,
        &ConnectDomainEventCallbackRegisterAnyArgs {
            event_id: 0,
            dom: None,
        },
    );
    let calls = 80u32;
    let args = encode(&DomainGetXmlDescArgs {
        dom: dom.clone(),
        flags: 0,
    });
    let mut m = Vec::new();
    for i in 0..calls {
        m.extend(call_msg(p::DOMAIN_GET_XML_DESC, 100 + i, &args));
    }
    busy.send(&m);
    // Not reading yet; meanwhile an event happens.
    std::thread::sleep(Duration::from_secs(3));
    define(&mut ctl, 3, &guest_xml("other", &image)).expect("define other");
    std::thread::sleep(Duration::from_millis(500));
    let (mut replies, mut events) = (0, 0);
    while replies < calls || events < 1 {
        let Some((h, _)) = busy.reply() else {
            panic!(
                "the daemon dropped a client that reads: {replies} of {calls} replies and \
                 {events} event delivered\n{}",
                support::tail(&d.log(), 10)
            );
        };
        match h.kind {
            MessageType::REPLY => replies += 1,
            MessageType::MESSAGE => events += 1,
            _ => {}
        }
    }
}
