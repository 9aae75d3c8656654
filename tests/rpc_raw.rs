//! Raw protocol against a running daemon: framing limits, unknown procedures, the open and
//! auth gates, keepalive, concurrency. Each hostile case is followed by a check that the
//! daemon still serves a well-behaved client.

mod support;

use std::time::{Duration, Instant};

use support::{call_header, ping, Daemon, Raw};
use virtumld_protocol::error::{code, RemoteError};
use virtumld_protocol::frame;
use virtumld_protocol::header::{Header, MessageType, Status, KEEPALIVE_PROGRAM};
use virtumld_protocol::procedures::proc as p;
use virtumld_protocol::xdr::{self, Xdr};

fn call<T: Xdr>(procedure: i32, serial: u32, args: &T) -> Vec<u8> {
    frame::encode(&call_header(procedure, serial), args).to_vec()
}

/// Splits a reply into header and payload.
fn parse(msg: &[u8]) -> (Header, Vec<u8>) {
    let (h, payload) = frame::split(msg).expect("a well-formed reply");
    (h, payload.to_vec())
}

fn expect_error(raw: &mut Raw, serial: u32) -> RemoteError {
    let m = raw.recv().expect("a reply");
    let (h, payload) = parse(&m);
    assert_eq!(h.serial, serial);
    assert_eq!(h.kind, MessageType::REPLY);
    assert_eq!(h.status, Status::ERROR, "expected an error reply");
    xdr::from_bytes::<RemoteError>(&payload).expect("an error struct")
}

fn open(raw: &mut Raw) {
    raw.open();
}

/// A canary: a fresh connection that gets the hostname.
fn canary(port: u16) {
    let mut raw = Raw::connect(port);
    open(&mut raw);
    raw.send(&call(p::CONNECT_GET_HOSTNAME, 9, &()));
    let (h, _) = parse(&raw.recv().expect("canary reply"));
    assert_eq!((h.serial, h.status), (9, Status::OK));
}

#[test]
fn unknown_and_event_procedures_get_libvirtds_error_and_the_connection_lives() {
    let d = Daemon::start();
    let mut raw = Raw::connect(d.port);
    open(&mut raw);
    for (serial, number) in [
        (2, 0),
        (3, -1),
        (4, 444),
        (5, 9999),
        (6, p::DOMAIN_EVENT_LIFECYCLE),
    ] {
        raw.send(&call(number, serial, &()));
        let e = expect_error(&mut raw, serial);
        assert_eq!(e.code, code::RPC);
        assert_eq!(e.domain, 7);
        assert_eq!(e.level, 2);
        assert_eq!(e.message.unwrap(), format!("unknown procedure: {number}"));
    }
    // A known procedure the daemon does not implement: NO_SUPPORT naming the API.
    raw.send(&call(p::DOMAIN_SCREENSHOT, 7, &()));
    let e = expect_error(&mut raw, 7);
    assert!(e.code == code::NO_SUPPORT || e.code == code::RPC, "{e:?}");
    raw.send(&call(p::CONNECT_GET_HOSTNAME, 8, &()));
    let (h, _) = parse(&raw.recv().unwrap());
    assert_eq!(h.status, Status::OK);
}

#[test]
fn calls_before_open_and_bad_arguments() {
    let d = Daemon::start();
    let mut raw = Raw::connect(d.port);
    raw.send(&call(p::CONNECT_GET_HOSTNAME, 1, &()));
    let e = expect_error(&mut raw, 1);
    assert!(e.message.unwrap().contains("connection not open"));
    // Truncated arguments: an error reply, and the connection stays usable.
    raw.send(&call(p::CONNECT_SUPPORTS_FEATURE, 2, &()));
    let e = expect_error(&mut raw, 2);
    assert_eq!(e.code, code::RPC);
    // Trailing garbage after valid arguments.
    raw.send(&frame::encode_with(
        &call_header(p::CONNECT_SUPPORTS_FEATURE, 3),
        |o| {
            10i32.encode(o);
            5u32.encode(o);
        },
    ));
    expect_error(&mut raw, 3);
    // CALL with a non-OK status.
    let mut h = call_header(p::AUTH_LIST, 4);
    h.status = Status::ERROR;
    raw.send(&frame::encode(&h, &()));
    let e = expect_error(&mut raw, 4);
    assert!(e.message.unwrap().contains("Unexpected message status"));
    // Wrong program: "Cannot find program".
    let mut h = call_header(1, 5);
    h.program = 0x1234_5678;
    raw.send(&frame::encode(&h, &()));
    let e = expect_error(&mut raw, 5);
    assert!(e.message.unwrap().contains("Cannot find program"));
    // Wrong version likewise.
    let mut h = call_header(1, 6);
    h.version = 2;
    raw.send(&frame::encode(&h, &()));
    expect_error(&mut raw, 6);
    open(&mut raw);
    canary(d.port);
}

#[test]
fn bad_length_words_close_only_that_connection() {
    let d = Daemon::start();
    for bad in [0u32, 4, 27, 0xffff_ffff, 33_554_433] {
        let mut raw = Raw::connect(d.port);
        raw.send(&bad.to_be_bytes());
        raw.send(&[0u8; 24]);
        assert!(raw.closed(), "length {bad} must close the connection");
        canary(d.port);
    }
    // A client that claims a big message and sends a little stalls nobody else.
    let mut slow = Raw::connect(d.port);
    slow.send(&1_000_000u32.to_be_bytes());
    slow.send(&[0u8; 100]);
    canary(d.port);
}

#[test]
fn keepalive_ping_is_answered_even_with_calls_in_flight() {
    let d = Daemon::start();
    let mut raw = Raw::connect(d.port);
    open(&mut raw);
    raw.send(&ping());
    let (h, payload) = parse(&raw.recv().unwrap());
    assert_eq!(
        (h.program, h.procedure, h.kind),
        (KEEPALIVE_PROGRAM, 2, MessageType::MESSAGE)
    );
    assert!(payload.is_empty());
}

#[test]
fn server_pings_a_client_that_asked_and_drops_it_when_silent() {
    let d = Daemon::start_with("keepalive_interval = 1\nkeepalive_count = 2\n");
    let mut raw = Raw::connect(d.port);
    raw.send(&call(p::AUTH_LIST, 0, &()));
    raw.recv().unwrap();
    raw.send(&call(p::CONNECT_SUPPORTS_FEATURE, 1, &10i32));
    let (_, payload) = parse(&raw.recv().unwrap());
    assert_eq!(payload, vec![0, 0, 0, 1]);
    let start = Instant::now();
    let mut pings = 0;
    while let Some(m) = raw.recv() {
        let (h, _) = parse(&m);
        assert_eq!((h.program, h.procedure), (KEEPALIVE_PROGRAM, 1));
        pings += 1;
    }
    assert_eq!(pings, 2);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(8),
        "{waited:?}"
    );

    // A client that never asked is never pinged.
    let mut quiet = Raw::connect(d.port);
    open(&mut quiet);
    quiet
        .s
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    assert!(quiet.recv().is_none());
    canary(d.port);
}

#[test]
fn pipelined_calls_all_get_answers() {
    let d = Daemon::start();
    let mut raw = Raw::connect(d.port);
    open(&mut raw);
    let mut batch = Vec::new();
    for serial in 10..60u32 {
        batch.extend(call(p::CONNECT_GET_VERSION, serial, &()));
    }
    raw.send(&batch);
    let mut seen: Vec<u32> = (10..60)
        .map(|_| parse(&raw.recv().unwrap()).0.serial)
        .collect();
    seen.sort();
    assert_eq!(seen, (10..60).collect::<Vec<_>>());
}

#[test]
fn anonymous_clients_are_limited_and_must_authenticate_in_time() {
    // SASL listeners start clients unauthenticated; none of these ever authenticates.
    let d = Daemon::start_with(
        "auth_tcp = \"sasl\"\nmax_anonymous_clients = 2\npre_auth_timeout = 3\n",
    );
    let mut a = Raw::connect(d.port);
    let mut b = Raw::connect(d.port);
    for r in [&mut a, &mut b] {
        r.call(p::AUTH_LIST, 0, &());
        assert_eq!(r.reply().expect("served").0.status, Status::OK);
    }
    // A third anonymous client waits in the listen queue: no answer while two are there.
    let mut c = Raw::connect(d.port);
    c.s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    c.call(p::AUTH_LIST, 0, &());
    assert!(c.reply().is_none(), "accepted beyond max_anonymous_clients");
    // The first two are dropped at the pre-authentication timeout, then the third is served.
    let start = Instant::now();
    assert!(a.closed() && b.closed());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    c.s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(
        c.reply().expect("served after the others left").0.status,
        Status::OK
    );
}

#[test]
fn max_clients_suspends_accepting_until_a_client_leaves() {
    let d = Daemon::start_with("max_clients = 2\n");
    let mut a = Raw::connect(d.port);
    let mut b = Raw::connect(d.port);
    for r in [&mut a, &mut b] {
        r.call(p::AUTH_LIST, 0, &());
        assert_eq!(r.reply().expect("served").0.status, Status::OK);
    }
    // The third connection waits in the listen queue, unanswered.
    let mut c = Raw::connect(d.port);
    c.s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    c.call(p::AUTH_LIST, 0, &());
    assert!(c.reply().is_none(), "accepted beyond max_clients");
    // One leaves: the waiting client is accepted and answered.
    drop(a);
    c.s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(
        c.reply().expect("served once a place freed").0.status,
        Status::OK
    );
}
