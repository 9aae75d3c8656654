//! SASL and stream packets: what a client sends during and after a SASL exchange, and the
//! STREAM messages of libvirt streams, fed to the daemon's code for them.
//!
//! The first byte chooses what the rest is (modulo 4):
//! - 0, negotiation: AUTH_SASL_START / AUTH_SASL_STEP arguments and the INIT / START / STEP
//!   replies (byte 1 picks the type), decoded and re-encoded: decoding never panics, a value
//!   that decodes re-encodes to exactly its bytes, and its data respects AUTH_SASL_DATA_MAX.
//! - 1, security layer round trip: `[max_out u16][piece u16][n u8][n read sizes][plaintext]`.
//!   The plaintext goes out through `sasl::encode_pieces` with `max_out` (the negotiated
//!   SASL_MAXOUTBUF), in by reads of the given sizes through `sasl::decode_pieces` with
//!   pieces of `piece` bytes. Production hands each piece to cyrus; here an identity codec
//!   with the security layer's framing (RFC 4422 §3.7, as cyrus' `_plug_decode` reads it: a
//!   4-byte big-endian length, then that many bytes, at most `sasl::MAX_BUF`) stands in for
//!   it. Invariants: every piece is non-empty and within its limit, every packet holds 1 to
//!   `max_out` bytes, and the reader gets back exactly the plaintext, whatever the read and
//!   piece boundaries; a zero limit is refused, not a panic.
//! - 2, hostile security layer input: `[piece u16][n u8][n read sizes][wire bytes]` straight
//!   into the decoding side. Invariants: the result (plaintext so far, refusal of a length
//!   above MAX_BUF) does not depend on the read or piece boundaries, and what is held for an
//!   incomplete packet never exceeds 4 + MAX_BUF bytes.
//! - 3, streams: a sequence of operations on one connection's streams through the public API
//!   of `rpc::stream` (see `Op`): the daemon opening streams on a few serials, activating,
//!   reading, sending, dropping and clearing them, and the client's STREAM messages (built
//!   from fields, or raw header bytes) framed and routed as `rpc::connection` routes them.
//!   Invariants: nothing panics; each stream's consumer gets exactly the packets routed to
//!   its serial, in order, as the right `Inbound` kind (CONTINUE with data, empty CONTINUE
//!   = end of data, OK = finish, anything else = abort); packets for no open stream vanish;
//!   the connection's table of streams holds exactly the open ones; at most 64 packets wait
//!   for a consumer, and a route that waits for room is woken as soon as the consumer takes
//!   one or goes away (a lost wake-up would stall the connection for good); every outgoing
//!   packet is a well-framed STREAM message of its stream with 1 to MAX_CHUNK data bytes (an
//!   empty one would mean end of data), whose payloads add up to what was sent.
#![no_main]

use std::any::type_name;
use std::fmt::Debug;

use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use virtumld::rpc::sasl::{self, MAX_BUF};
use virtumld_protocol::limits::AUTH_SASL_DATA_MAX;
use virtumld_protocol::remote::{
    AuthSaslInitRet, AuthSaslStartArgs, AuthSaslStartRet, AuthSaslStepArgs, AuthSaslStepRet,
};
use virtumld_protocol::xdr::{from_bytes, to_bytes, Reader, Xdr};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => negotiation(rest),
        1 => layer_round_trip(rest),
        2 => layer_hostile(rest),
        _ => streams::run(rest),
    }
});

// ---------------------------------------------------------------- SASL negotiation ---------

/// Decodes `payload` as a `T`: what `remote_args` checks for the other procedures.
fn check<T: Xdr + Debug>(payload: &[u8]) -> Option<T> {
    let mut r = Reader::new(payload);
    let decoded = T::decode(&mut r);
    let whole = from_bytes::<T>(payload);
    match decoded {
        Ok(v) => {
            let used = payload.len() - r.remaining();
            assert_eq!(
                &to_bytes(&v)[..],
                &payload[..used],
                "{} re-encodes differently: {v:?}",
                type_name::<T>()
            );
            assert_eq!(whole.is_ok(), r.remaining() == 0, "{}", type_name::<T>());
            Some(v)
        }
        Err(_) => {
            assert!(whole.is_err(), "{}", type_name::<T>());
            None
        }
    }
}

fn negotiation(data: &[u8]) {
    let Some((&which, payload)) = data.split_first() else {
        return;
    };
    let len = match which % 5 {
        0 => check::<AuthSaslStartArgs>(payload).map(|a| a.data.len()),
        1 => check::<AuthSaslStepArgs>(payload).map(|a| a.data.len()),
        2 => check::<AuthSaslStartRet>(payload).map(|a| a.data.len()),
        3 => check::<AuthSaslStepRet>(payload).map(|a| a.data.len()),
        _ => check::<AuthSaslInitRet>(payload).map(|_| 0),
    };
    if let Some(len) = len {
        assert!(
            len <= AUTH_SASL_DATA_MAX,
            "{len} bytes of SASL data accepted"
        );
    }
}

// ---------------------------------------------------------------- SASL security layer ------

/// Stands in for cyrus' `sasl_encode` / `sasl_decode` with no protection: the security
/// layer's framing alone. Decoding keeps an incomplete packet (length word included) until
/// the rest arrives, as cyrus does, and refuses a length above `maxbuf`.
struct IdentityLayer {
    maxbuf: usize,
    held: Vec<u8>,
    failed: bool,
}

impl IdentityLayer {
    fn new(maxbuf: usize) -> IdentityLayer {
        IdentityLayer {
            maxbuf,
            held: Vec::new(),
            failed: false,
        }
    }

    fn encode(piece: &[u8], out: &mut BytesMut) {
        out.put_u32(piece.len() as u32);
        out.put_slice(piece);
    }

    fn decode(&mut self, mut input: &[u8], out: &mut BytesMut) -> Result<(), String> {
        assert!(!self.failed, "the layer was used after it failed");
        while !input.is_empty() {
            if self.held.len() < 4 {
                let take = (4 - self.held.len()).min(input.len());
                self.held.extend_from_slice(&input[..take]);
                input = &input[take..];
                if self.held.len() < 4 {
                    break;
                }
            }
            let len = u32::from_be_bytes(self.held[..4].try_into().unwrap()) as usize;
            if len > self.maxbuf {
                self.failed = true;
                return Err(format!("packet of {len} bytes > {}", self.maxbuf));
            }
            let take = (4 + len - self.held.len()).min(input.len());
            self.held.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.held.len() == 4 + len {
                out.put_slice(&self.held[4..]);
                self.held.clear();
            }
            assert!(self.held.len() <= 4 + self.maxbuf);
        }
        Ok(())
    }
}

/// `[n u8][n sizes]`: the sizes of successive reads (1 to 256 bytes, cycled), and the rest.
fn read_sizes(data: &[u8]) -> Option<(Vec<usize>, &[u8])> {
    let (&n, rest) = data.split_first()?;
    let sizes = rest.get(..n as usize)?;
    Some((
        sizes.iter().map(|&s| s as usize + 1).collect(),
        &rest[n as usize..],
    ))
}

/// Cuts `wire` into reads of `sizes` (cycled; all of it at once when there are none).
fn reads<'a>(wire: &'a [u8], sizes: &'a [usize]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut at = 0;
    let mut i = 0;
    std::iter::from_fn(move || {
        if at >= wire.len() {
            return None;
        }
        let n = if sizes.is_empty() {
            wire.len()
        } else {
            sizes[i % sizes.len()]
        };
        i += 1;
        let r = &wire[at..(at + n).min(wire.len())];
        at += r.len();
        Some(r)
    })
}

/// What a connection's read side does with the layer: every read through `decode_pieces`,
/// stopping at the first error. Checks every piece the codec is given.
fn decode_reads(
    layer: &mut IdentityLayer,
    wire: &[u8],
    sizes: &[usize],
    piece: usize,
) -> (BytesMut, Result<(), String>) {
    let mut plain = BytesMut::new();
    for read in reads(wire, sizes) {
        let r = sasl::decode_pieces(read, piece, &mut plain, |p, out| {
            assert!(
                !p.is_empty() && p.len() <= piece,
                "piece of {} bytes",
                p.len()
            );
            layer.decode(p, out)
        });
        if r.is_err() {
            return (plain, r);
        }
    }
    (plain, Ok(()))
}

fn layer_round_trip(data: &[u8]) {
    let Some((head, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let max_out = u16::from_be_bytes([head[0], head[1]]) as usize;
    let piece = u16::from_be_bytes([head[2], head[3]]) as usize;
    let Some((sizes, plain)) = read_sizes(rest) else {
        return;
    };

    let mut wire = BytesMut::new();
    let mut packets = 0;
    let r = sasl::encode_pieces(plain, max_out, &mut wire, |p, out| {
        assert!(
            !p.is_empty() && p.len() <= max_out,
            "piece of {} bytes",
            p.len()
        );
        packets += 1;
        IdentityLayer::encode(p, out);
        Ok(())
    });
    if max_out == 0 {
        assert!(r.is_err() && packets == 0 && wire.is_empty());
        return;
    }
    r.expect("the identity codec never fails");
    assert_eq!(packets, plain.len().div_ceil(max_out));
    assert_eq!(wire.len(), plain.len() + 4 * packets);

    // The peer's layer takes packets of up to MAX_BUF (what the daemon negotiates).
    let mut layer = IdentityLayer::new(MAX_BUF as usize);
    let (back, r) = decode_reads(&mut layer, &wire, &sizes, piece);
    if piece == 0 {
        assert!((r.is_err() || wire.is_empty()) && back.is_empty());
        return;
    }
    r.expect("packets of at most MAX_BUF bytes are accepted");
    assert_eq!(&back[..], plain, "plaintext differs after the round trip");
    assert!(layer.held.is_empty(), "{} bytes held", layer.held.len());
}

fn layer_hostile(data: &[u8]) {
    let Some((head, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let piece = u16::from_be_bytes(*head) as usize;
    let Some((sizes, wire)) = read_sizes(rest) else {
        return;
    };
    let mut layer = IdentityLayer::new(MAX_BUF as usize);
    let (plain, r) = decode_reads(&mut layer, wire, &sizes, piece);
    if piece == 0 {
        assert!((r.is_err() || wire.is_empty()) && plain.is_empty());
        return;
    }
    assert!(layer.held.len() <= 4 + MAX_BUF as usize);
    assert!(plain.len() <= wire.len());
    // The same bytes in one read and one piece.
    let mut whole = IdentityLayer::new(MAX_BUF as usize);
    let (plain1, r1) = decode_reads(&mut whole, wire, &[], usize::MAX);
    assert_eq!(plain, plain1, "plaintext depends on read boundaries");
    assert_eq!(r.is_ok(), r1.is_ok(), "refusal depends on read boundaries");
    if r.is_ok() {
        assert_eq!(layer.held, whole.held);
    }
}

// ---------------------------------------------------------------- streams -------------------

mod streams {
    use std::collections::VecDeque;
    use std::future::Future;
    use std::pin::{pin, Pin};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, OnceLock};
    use std::task::{Context, Poll, Wake, Waker};

    use bytes::{Bytes, BytesMut};
    use virtumld::config::AuthMethod;
    use virtumld::rpc::client::{Client, Transport};
    use virtumld::rpc::stream::{self, Inbound, ServerStream, MAX_CHUNK};
    use virtumld_protocol::frame;
    use virtumld_protocol::header::{
        Header, MessageType, Status, REMOTE_PROGRAM, REMOTE_PROTOCOL_VERSION,
    };
    use virtumld_protocol::limits::{MESSAGE_HEADER_LEN, MESSAGE_MAX};

    /// Serials the operations choose from: few, so that opens, packets and drops meet.
    const SERIALS: [u32; 4] = [1, 2, 0, u32::MAX];
    /// Packets that may wait for one stream's consumer (`INBOUND_QUEUE` in rpc/stream.rs).
    const QUEUE_BOUND: usize = 64;
    /// Operations per input, so that one input cannot run for long.
    const MAX_OPS: usize = 512;
    /// Sends of a packet's worth of data or more per input.
    const BIG_SENDS: usize = 2;

    /// The connection the streams belong to: a client on a UNIX socket with no
    /// authentication.
    fn connection() -> Arc<Client> {
        Arc::new(Client::new(
            1,
            Transport::Unix { read_only: false },
            AuthMethod::None,
            "unix:fuzz".into(),
        ))
    }

    /// Everything queued for the peer so far, as the connection task takes it out of the
    /// outbox (in one piece), cut back into whole messages.
    fn take_outgoing(client: &Client) -> Vec<BytesMut> {
        let mut all = BytesMut::new();
        client.outbox.take(&mut all, usize::MAX, |_| false);
        let mut msgs = Vec::new();
        while !all.is_empty() {
            let len = frame::message_len(&all, MESSAGE_MAX)
                .ok()
                .flatten()
                .filter(|&len| len <= all.len())
                .expect("the outbox holds whole messages");
            msgs.push(all.split_to(len));
        }
        msgs
    }

    /// What sends send: more than two packets' worth of bytes that differ from one packet to
    /// the next (251 does not divide MAX_CHUNK).
    fn pattern() -> &'static [u8] {
        static P: OnceLock<Vec<u8>> = OnceLock::new();
        P.get_or_init(|| {
            (0..2 * MAX_CHUNK + 0x8000)
                .map(|k| (k % 251) as u8)
                .collect()
        })
    }

    /// Records whether it was woken.
    #[derive(Default)]
    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn poll<F: Future + ?Sized>(f: Pin<&mut F>, waker: &Waker) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(waker))
    }

    #[derive(Debug, PartialEq)]
    enum Expect {
        Data(Vec<u8>),
        Eof,
        Finish,
        Abort,
    }

    impl Expect {
        /// What `route` must make of a packet (as rpc/stream.rs documents it).
        fn of(status: Status, payload: &[u8]) -> Expect {
            match status {
                Status::CONTINUE if payload.is_empty() => Expect::Eof,
                Status::CONTINUE => Expect::Data(payload.to_vec()),
                Status::OK => Expect::Finish,
                _ => Expect::Abort,
            }
        }

        fn matches(&self, got: &Inbound) -> bool {
            match (self, got) {
                (Expect::Data(d), Inbound::Data(b)) => d[..] == b[..],
                (Expect::Eof, Inbound::Eof)
                | (Expect::Finish, Inbound::Finish)
                | (Expect::Abort, Inbound::Abort) => true,
                _ => false,
            }
        }
    }

    /// One stream the daemon opened, with what the harness knows of it.
    struct Open {
        id: u64,
        stream: ServerStream,
        serial: u32,
        procedure: i32,
        /// Routed, not yet received, in order.
        queued: VecDeque<Expect>,
        /// Still in the connection's table (not removed by `clear`).
        listed: bool,
        activated: bool,
        /// `started()` has returned (it answers only once).
        started_taken: bool,
    }

    /// A `route` waiting for room in a stream's queue: the connection reads nothing more
    /// until it completes.
    struct Blocked {
        fut: Pin<Box<dyn Future<Output = ()>>>,
        flag: Arc<Flag>,
        waker: Waker,
        stream_id: u64,
        packet: Expect,
        /// The consumer took a packet or went away since: the route must have been woken.
        room: bool,
    }

    struct State {
        client: Arc<Client>,
        opens: Vec<Open>,
        next_id: u64,
        blocked: Option<Blocked>,
        /// `clear` ran: the connection is ending, no call opens a stream any more.
        cleared: bool,
        big_sends: usize,
    }

    /// The operations, one byte each (modulo 10) and then their arguments.
    enum Op {
        /// `[serial][procedure]`: a stream call opens a stream.
        Open,
        /// `[serial]`: the call's reply was queued.
        Activate,
        /// `[serial][status][procedure][len][len bytes]`: a STREAM message built from fields.
        Packet,
        /// `[len][len bytes]`: a message with whatever header those bytes make.
        Raw,
        /// `[stream]`: the consumer takes one packet, if there is one.
        Recv,
        /// `[stream]`: the consumer takes every waiting packet.
        RecvAll,
        /// `[stream]`: the consumer asks whether its stream may send.
        Started,
        /// `[stream][kind][len u16]`: data (`len` bytes; with a kind of 0xf0 or more, about
        /// one or two packets' worth more, twice per input at most), end of data or
        /// confirmation.
        Send,
        /// `[stream]`: the consumer goes away.
        Drop,
        /// The connection ends: `Streams::clear`.
        Clear,
    }

    const OPS: [Op; 10] = [
        Op::Open,
        Op::Activate,
        Op::Packet,
        Op::Raw,
        Op::Recv,
        Op::RecvAll,
        Op::Started,
        Op::Send,
        Op::Drop,
        Op::Clear,
    ];

    struct Input<'a>(&'a [u8]);

    impl Input<'_> {
        fn byte(&mut self) -> Option<u8> {
            let (&b, rest) = self.0.split_first()?;
            self.0 = rest;
            Some(b)
        }

        fn bytes(&mut self, n: usize) -> &[u8] {
            let (a, b) = self.0.split_at(n.min(self.0.len()));
            self.0 = b;
            a
        }
    }

    pub fn run(data: &[u8]) {
        let mut s = State {
            client: connection(),
            opens: Vec::new(),
            next_id: 0,
            blocked: None,
            cleared: false,
            big_sends: 0,
        };
        let mut input = Input(data);
        for _ in 0..MAX_OPS {
            let Some(op) = input.byte() else { break };
            let op = &OPS[op as usize % OPS.len()];
            s.step(op, &mut input);
            s.unblock();
            // Only these change the table (a route must not: checked for its serial).
            if matches!(op, Op::Open | Op::Drop | Op::Clear) {
                s.check_table();
            }
        }
        s.check_table();
        s.finish();
    }

    impl State {
        fn step(&mut self, op: &Op, input: &mut Input) {
            let serial = |b: Option<u8>| SERIALS[b.unwrap_or(0) as usize % SERIALS.len()];
            match op {
                Op::Open => {
                    let serial = serial(input.byte());
                    let procedure = input.byte().unwrap_or(0) as i32;
                    if self.cleared {
                        return;
                    }
                    let taken = self.opens.iter().any(|o| o.listed && o.serial == serial);
                    match stream::open(&self.client, procedure, serial) {
                        Some(stream) => {
                            assert!(!taken, "a second stream opened on serial {serial}");
                            self.next_id += 1;
                            self.opens.push(Open {
                                id: self.next_id,
                                stream,
                                serial,
                                procedure,
                                queued: VecDeque::new(),
                                listed: true,
                                activated: false,
                                started_taken: false,
                            });
                        }
                        None => assert!(taken, "no stream opened on free serial {serial}"),
                    }
                }
                Op::Activate => {
                    let serial = serial(input.byte());
                    self.client.streams.activate(serial);
                    for o in &mut self.opens {
                        if o.listed && o.serial == serial {
                            o.activated = true;
                        }
                    }
                }
                Op::Packet => {
                    let serial = serial(input.byte());
                    let status = match input.byte().unwrap_or(0) {
                        b @ 0..=2 => b as i32,
                        b => b as i8 as i32,
                    };
                    let procedure = input.byte().unwrap_or(0) as i32;
                    let len = input.byte().unwrap_or(0) as usize;
                    let payload = input.bytes(len);
                    let h = Header {
                        program: REMOTE_PROGRAM,
                        version: REMOTE_PROTOCOL_VERSION,
                        procedure,
                        kind: MessageType::STREAM,
                        serial,
                        status: Status(status),
                    };
                    let msg = frame::encode_with(&h, |o| o.extend_from_slice(payload));
                    self.receive(msg.freeze());
                }
                Op::Raw => {
                    let len = input.byte().unwrap_or(0) as usize;
                    let body = input.bytes(len);
                    let mut msg = BytesMut::with_capacity(4 + body.len());
                    msg.extend_from_slice(&(4 + body.len() as u32).to_be_bytes());
                    msg.extend_from_slice(body);
                    self.receive(msg.freeze());
                }
                Op::Recv | Op::RecvAll => {
                    let Some(i) = self.pick(input) else { return };
                    loop {
                        let got = {
                            let o = &mut self.opens[i];
                            poll(pin!(o.stream.recv()), Waker::noop())
                        };
                        if !self.received(i, got) || matches!(op, Op::Recv) {
                            break;
                        }
                    }
                }
                Op::Started => {
                    let Some(i) = self.pick(input) else { return };
                    let o = &mut self.opens[i];
                    // Callers ask once and wait for the answer: never ask again, nor while
                    // it would wait (the future would be dropped unanswered).
                    let expect = if o.started_taken {
                        return;
                    } else if o.activated {
                        true
                    } else if !o.listed {
                        false
                    } else {
                        return;
                    };
                    match poll(pin!(o.stream.started()), Waker::noop()) {
                        Poll::Ready(r) => assert_eq!(r, expect, "started()"),
                        Poll::Pending => panic!("started() waits after activation or clear"),
                    }
                    o.started_taken = true;
                }
                Op::Send => {
                    let Some(i) = self.pick(input) else { return };
                    let kind = input.byte().unwrap_or(0);
                    let n = match input.bytes(2) {
                        &[a, b] => u16::from_be_bytes([a, b]) as usize,
                        _ => 0,
                    };
                    // Around one or two whole packets: rarely, as copying them costs.
                    let n = match kind {
                        0xf0.. if self.big_sends < BIG_SENDS => {
                            self.big_sends += 1;
                            n + MAX_CHUNK * (1 + (kind as usize >> 2 & 1)) - 0x8000
                        }
                        _ => n,
                    };
                    self.send(i, kind % 3, n);
                }
                Op::Drop => {
                    let Some(i) = self.pick(input) else { return };
                    let o = self.opens.swap_remove(i);
                    if let Some(b) = &mut self.blocked {
                        if b.stream_id == o.id {
                            b.room = true;
                        }
                    }
                }
                Op::Clear => {
                    self.client.streams.clear();
                    self.cleared = true;
                    for o in &mut self.opens {
                        o.listed = false;
                    }
                }
            }
        }

        fn pick(&self, input: &mut Input) -> Option<usize> {
            let b = input.byte()? as usize;
            (!self.opens.is_empty()).then(|| b % self.opens.len())
        }

        /// A whole message from the client, as `rpc::connection` reads and routes it.
        fn receive(&mut self, msg: Bytes) {
            if self.blocked.is_some() {
                return; // The connection is not reading.
            }
            let len = match frame::message_len(&msg, MESSAGE_MAX) {
                Ok(Some(len)) => len,
                _ => return, // Too short: the connection closes.
            };
            assert_eq!(len, msg.len());
            let (header, _) = frame::split(&msg).expect("whole message splits");
            if header.program != REMOTE_PROGRAM
                || header.version != REMOTE_PROTOCOL_VERSION
                || header.kind != MessageType::STREAM
            {
                return; // Not a stream packet.
            }
            let payload = msg.slice(MESSAGE_HEADER_LEN..);
            let packet = Expect::of(header.status, &payload);
            let target = self
                .opens
                .iter()
                .position(|o| o.listed && o.serial == header.serial);
            let serial = header.serial;
            let client = self.client.clone();
            let mut fut: Pin<Box<dyn Future<Output = ()>>> =
                Box::pin(async move { stream::route(&client, &header, payload).await });
            let flag = Arc::new(Flag::default());
            let waker = Waker::from(flag.clone());
            match (poll(fut.as_mut(), &waker), target) {
                (Poll::Ready(()), Some(i)) => {
                    let o = &mut self.opens[i];
                    o.queued.push_back(packet);
                    assert!(
                        o.queued.len() <= QUEUE_BOUND,
                        "{} packets queued",
                        o.queued.len()
                    );
                }
                (Poll::Ready(()), None) => {}
                (Poll::Pending, Some(i)) => {
                    let o = &self.opens[i];
                    assert!(
                        o.queued.len() == QUEUE_BOUND,
                        "route waits with {} packets queued",
                        o.queued.len()
                    );
                    self.blocked = Some(Blocked {
                        fut,
                        flag,
                        waker,
                        stream_id: o.id,
                        packet,
                        room: false,
                    });
                }
                (Poll::Pending, None) => panic!("route waits for a serial with no stream"),
            }
            self.check_serial(serial);
        }

        /// A packet the consumer of `opens[i]` polled for; true when it got one.
        fn received(&mut self, i: usize, got: Poll<Option<Inbound>>) -> bool {
            let o = &mut self.opens[i];
            let blocked_here = self.blocked.as_ref().is_some_and(|b| b.stream_id == o.id);
            match got {
                Poll::Ready(Some(p)) => {
                    let want = o.queued.pop_front();
                    assert!(
                        want.as_ref().is_some_and(|w| w.matches(&p)),
                        "consumer got {p:?}, expected {want:?}"
                    );
                    if blocked_here {
                        self.blocked.as_mut().unwrap().room = true;
                    }
                    true
                }
                Poll::Ready(None) => {
                    assert!(
                        !o.listed && o.queued.is_empty() && !blocked_here,
                        "stream ended early: listed {}, {} queued",
                        o.listed,
                        o.queued.len()
                    );
                    false
                }
                Poll::Pending => {
                    assert!(
                        o.queued.is_empty(),
                        "{} packets not delivered",
                        o.queued.len()
                    );
                    false
                }
            }
        }

        /// Re-polls a waiting route: it must complete once the consumer made room (and must
        /// have been woken for it), and must go on waiting otherwise.
        fn unblock(&mut self) {
            let Some(b) = &mut self.blocked else { return };
            let woken = b.flag.0.swap(false, Ordering::SeqCst);
            let ready = poll(b.fut.as_mut(), &b.waker).is_ready();
            if b.room {
                assert!(woken, "route not woken although the consumer made room");
                assert!(ready, "route still waits although the consumer made room");
            } else {
                assert!(!ready, "route completed with its stream's queue full");
            }
            if ready {
                let b = self.blocked.take().unwrap();
                if let Some(o) = self.opens.iter_mut().find(|o| o.id == b.stream_id) {
                    o.queued.push_back(b.packet);
                    assert!(o.queued.len() <= QUEUE_BOUND);
                }
            }
        }

        /// The connection's table holds exactly the listed streams.
        fn check_table(&self) {
            for serial in SERIALS {
                self.check_serial(serial);
            }
        }

        fn check_serial(&self, serial: u32) {
            let listed = self.opens.iter().any(|o| o.listed && o.serial == serial);
            assert_eq!(
                self.client.streams.sender(serial).is_some(),
                listed,
                "table entry for serial {serial}"
            );
        }

        /// Sends on `opens[i]` while the peer reads everything; checks what went out. (A send
        /// waits only with a full outbox, which these sends alone never fill.)
        fn send(&mut self, i: usize, kind: u8, n: usize) {
            let data = &pattern()[..n];
            let o = &self.opens[i];
            let (ok, out) = {
                let mut out = Vec::new();
                let mut fut: Pin<Box<dyn Future<Output = bool> + '_>> = match kind {
                    0 => Box::pin(o.stream.send_data(data)),
                    1 => Box::pin(o.stream.send_eof()),
                    _ => Box::pin(o.stream.confirm()),
                };
                let ok = loop {
                    match poll(fut.as_mut(), Waker::noop()) {
                        Poll::Ready(ok) => break ok,
                        Poll::Pending => {
                            let more = take_outgoing(&self.client);
                            assert!(!more.is_empty(), "send waits on an empty queue");
                            out.extend(more);
                        }
                    }
                };
                drop(fut);
                out.extend(take_outgoing(&self.client));
                (ok, out)
            };
            assert!(ok, "send failed with the client connected");
            let mut sent = 0;
            for msg in &out {
                assert_eq!(frame::message_len(msg, MESSAGE_MAX), Ok(Some(msg.len())));
                let (h, payload) = frame::split(msg).expect("outgoing message splits");
                assert_eq!(h.program, REMOTE_PROGRAM);
                assert_eq!(h.version, REMOTE_PROTOCOL_VERSION);
                assert_eq!(h.kind, MessageType::STREAM);
                assert_eq!(h.serial, o.serial);
                assert_eq!(h.procedure, o.procedure);
                match kind {
                    0 => {
                        assert_eq!(h.status, Status::CONTINUE);
                        assert!(
                            (1..=MAX_CHUNK).contains(&payload.len()),
                            "data packet of {} bytes",
                            payload.len()
                        );
                        assert!(data[sent..].starts_with(payload), "data out of order");
                        sent += payload.len();
                    }
                    1 => assert!(h.status == Status::CONTINUE && payload.is_empty()),
                    _ => assert!(h.status == Status::OK && payload.is_empty()),
                }
            }
            match kind {
                0 => assert_eq!(sent, data.len(), "data sent"),
                _ => assert_eq!(out.len(), 1),
            }
        }

        /// The connection is gone: sends fail, consumers get what was queued, then the end.
        fn finish(mut self) {
            // In the daemon the connection cannot end with a route waiting; drop it.
            self.blocked = None;
            let State {
                client, mut opens, ..
            } = self;
            drop(client);
            for o in &mut opens {
                let sent = poll(pin!(o.stream.send_eof()), Waker::noop());
                assert_eq!(sent, Poll::Ready(false), "send to a closed connection");
                for want in o.queued.drain(..) {
                    match poll(pin!(o.stream.recv()), Waker::noop()) {
                        Poll::Ready(Some(p)) => assert!(want.matches(&p), "{p:?} != {want:?}"),
                        other => panic!("expected {want:?}, got {other:?}"),
                    }
                }
                let end = poll(pin!(o.stream.recv()), Waker::noop());
                assert!(matches!(end, Poll::Ready(None)), "no end: {end:?}");
            }
        }
    }
}
