//! One client connection: reads whole messages, answers keepalive PINGs in the read path,
//! runs each CALL as its own task (so replies may go out of order and a slow call never
//! delays a PONG), and writes what call tasks, events and streams queue in the connection's
//! outbox. An idle connection is one small task: its state, no buffer, no timer (unless
//! keepalive is on or it has not authenticated) and no pending future.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};
use virtumld_protocol::error::{code, domain, RemoteError};
use virtumld_protocol::frame;
use virtumld_protocol::header::{
    Header, MessageType, Status, KEEPALIVE_PROC_PING, KEEPALIVE_PROC_PONG, KEEPALIVE_PROGRAM,
    KEEPALIVE_PROTOCOL_VERSION, REMOTE_PROGRAM, REMOTE_PROTOCOL_VERSION,
};
use virtumld_protocol::limits::{
    MESSAGE_HEADER_LEN, MESSAGE_INITIAL, MESSAGE_MAX, MESSAGE_PRE_AUTH_SASL_MAX,
};

use crate::config::AuthMethod;
use crate::daemon::{ClientGuard, Daemon};
use crate::remote;
use crate::rpc::client::{CallSlot, Client, Transport};
use crate::rpc::sasl::SecurityLayer;
use crate::rpc::stream;

/// Replies coalesced into one write when several are ready.
const WRITE_BATCH: usize = 64 * 1024;
/// Calls read while `max_client_requests` are in flight wait here, so the connection keeps
/// reading (and answering keepalive PINGs) at its limit; past these bounds it stops
/// reading until calls finish.
const PENDING_CALLS_MAX: usize = 64;
const PENDING_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Calls waiting for an in-flight slot, in arrival order.
#[derive(Default)]
struct Pending {
    calls: VecDeque<(Header, Bytes)>,
    bytes: usize,
}

impl Pending {
    fn full(&self) -> bool {
        self.calls.len() >= PENDING_CALLS_MAX || self.bytes >= PENDING_BYTES_MAX
    }

    fn push(&mut self, h: Header, msg: Bytes) {
        self.bytes += msg.len();
        self.calls.push_back((h, msg));
    }

    fn pop(&mut self) -> Option<(Header, Bytes)> {
        let c = self.calls.pop_front()?;
        self.bytes -= c.1.len();
        Some(c)
    }

    /// An idle connection keeps no queue storage from its last burst.
    fn shrink_when_empty(&mut self) {
        if self.calls.is_empty() && self.calls.capacity() > 0 {
            self.calls = VecDeque::new();
        }
    }
}

/// Serves one connection until the peer leaves, the daemon shuts down or the connection
/// breaks a framing rule. In-flight calls finish before the connection closes. `place`
/// (the client's place) is given back with the connection.
///
/// The returned future is the connection's whole task: kept small, because every idle
/// connection holds one. While it waits it holds no future of its own: `Conn::poll_io`
/// polls the socket, the timers and the outbox's waker slot directly.
pub fn serve<S>(
    daemon: Arc<Daemon>,
    io: S,
    transport: Transport,
    peer: String,
    place: ClientGuard,
) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let id = daemon.next_connection_id();
    let span = tracing::info_span!("conn", id, %peer);
    let cfg = &daemon.config;
    let auth = match transport {
        Transport::Unix { read_only: true } => cfg.auth_unix_ro,
        Transport::Unix { read_only: false } => cfg.auth_unix_rw,
        Transport::Tcp => cfg.auth_tcp,
        Transport::Tls { .. } => cfg.auth_tls,
    };
    let flushes = matches!(transport, Transport::Tls { .. });
    let client = Arc::new(Client::new(id, transport, auth, peer));
    daemon.register_connection(&client);
    // Given back when `Conn` drops.
    place.into_connection();
    let conn = Conn {
        daemon,
        client,
        io,
        out: Output::new(flushes),
        buf: BytesMut::new(),
        decoding: false,
        pending: Pending::default(),
        ticker: None,
        read_since_tick: false,
        pings_sent: 0,
        slot_wanted: false,
        anonymous: false,
        auth_deadline: None,
    };
    run(conn).instrument(span)
}

/// Everything a connection keeps between two events. Unregisters from the daemon when
/// dropped.
struct Conn<S> {
    daemon: Arc<Daemon>,
    client: Arc<Client>,
    io: S,
    out: Output,
    /// Plaintext read and not yet handled: at most a part of one message while waiting,
    /// and no storage at all when empty (reads go through the stack until a message is
    /// under way).
    buf: BytesMut,
    /// Authentication completed with a SASL security layer: every read is decoded (with
    /// `client.auth.read_layer()`) into `buf`.
    decoding: bool,
    pending: Pending,
    /// The next keepalive tick, once the client turned keepalive on (most raw clients
    /// never do); re-armed one interval later each time it fires.
    ticker: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Something was read since the last tick (that is, within the last interval).
    read_since_tick: bool,
    pings_sent: u32,
    /// `Client::want_slot` is set: finished calls wake this task.
    slot_wanted: bool,
    /// The client holds one of the max_anonymous_clients places until it authenticates,
    /// and has a bounded time (boxed: an idle authenticated connection keeps no timer) to
    /// do so (libvirtd has no such timeout).
    anonymous: bool,
    auth_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Conn<S> {
    fn leave_anonymous(&mut self) {
        if std::mem::take(&mut self.anonymous) {
            self.daemon.anonymous_place_left();
        }
        self.auth_deadline = None;
    }
}

impl<S> Drop for Conn<S> {
    fn drop(&mut self) {
        self.leave_anonymous();
        self.client.outbox.unregister();
        self.daemon.unregister_connection(self.client.id);
        self.daemon.client_left();
    }
}

/// What the connection loop does after an event.
enum Flow {
    Continue,
    Close,
}

/// Reads are at most this large while no message is under way: they land on the stack,
/// so an idle connection keeps no read buffer.
const READ_CHUNK: usize = 16 * 1024;

/// The connection's life. Not an `async fn`: its argument would be kept twice in the
/// future (as the argument and as the body's copy), and every idle connection would pay
/// for both.
#[allow(clippy::manual_async_fn)]
fn run<S>(mut c: Conn<S>) -> impl Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async move {
        info!("client connected");
        if !c.client.is_authenticated() {
            // At the limit the connection waits unread, as if libvirtd had not accepted it.
            // Boxed: only clients of listeners that require authentication wait here.
            let client = &c.client;
            let place = Box::pin(async {
                tokio::select! {
                    _ = c.daemon.anonymous_place() => true,
                    _ = poll_fn(|cx| {
                        client.outbox.register(cx.waker());
                        if client.close_requested() { Poll::Ready(()) } else { Poll::Pending }
                    }) => false,
                }
            })
            .await;
            if place {
                // Given back by `leave_anonymous`.
                c.anonymous = true;
                let timeout = Duration::from_secs(c.daemon.config.pre_auth_timeout);
                c.auth_deadline = Some(Box::pin(tokio::time::sleep(timeout)));
            }
        }

        'conn: loop {
            if c.client.close_requested() {
                break;
            }
            if c.anonymous && c.client.is_authenticated() {
                c.leave_anonymous();
            }
            // After CONNECT_CLOSE the client is expected to close its side, as every stock
            // one does right after the reply: its end of stream closes the connection, and
            // anything else it sends closes it at once, unanswered (libvirtd closes as soon
            // as the reply is out). Closing first only for a client that sends more keeps
            // the TCP TIME_WAIT state on the client's side, which makes the daemon's
            // open+close cycle about 5 % faster.
            if c.client.said_goodbye() && !c.buf.is_empty() {
                debug!("closing connection: data after CONNECT_CLOSE");
                break;
            }
            if !c.decoding {
                if let Some(layer) = c.client.auth.read_layer() {
                    // Everything after the call that completed authentication is wrapped
                    // (the peer sends nothing before the reply, so normally nothing).
                    let layer = layer.clone();
                    let raw = c.buf.split();
                    if let Err(e) = layer.decode(&raw, &mut c.buf) {
                        warn!("closing connection: {e}");
                        break 'conn;
                    }
                    c.decoding = true;
                }
            }
            // Handle every whole message already buffered.
            // Not while the outbox is over its limit: each message read may add a reply
            // (a big one, for a call answered here) beyond it. Nothing after CONNECT_CLOSE
            // or a request to close is served.
            while !c.pending.full()
                && !c.client.outbox.is_full()
                && !c.client.close_requested()
                && !c.client.said_goodbye()
            {
                let msg = match c.next_message() {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e) => {
                        warn!("closing connection: {e}");
                        break 'conn;
                    }
                };
                let mut wait = on_message(&c.daemon, &c.client, &mut c.pending, msg);
                if let Some(w) = &mut wait {
                    w.await;
                }
            }
            // Calls that waited for a place, in arrival order.
            while !c.pending.calls.is_empty() {
                let max = c.daemon.config.max_client_requests;
                let Some(slot) = c.client.try_call_slot(max) else {
                    break;
                };
                if let Some((header, msg)) = c.pending.pop() {
                    spawn_call(&c.daemon, &c.client, slot, header, msg);
                }
            }
            if let Err(e) = c.out.refill(&c.client) {
                warn!("closing connection: {e}");
                break 'conn;
            }
            c.pending.shrink_when_empty();
            if let Flow::Close = poll_fn(|cx| c.poll_io(cx)).await {
                break;
            }
        }

        // Let in-flight calls finish and their replies go out, then close.
        c.leave_anonymous();
        c.ticker = None;
        c.buf = BytesMut::new();
        let mut open = true;
        poll_fn(|cx| c.poll_drain(cx, true, &mut open)).await;
        c.client.streams.clear();
        remote::disconnected(&c.daemon, &c.client);
        if open {
            poll_fn(|cx| c.poll_drain(cx, false, &mut open)).await;
        }
        c.client.outbox.close();
        if open {
            let _ = c.io.shutdown().await;
        }
        info!("client disconnected");
    }
}

impl<S> Conn<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// The next whole message in `buf`, if there is one; an error breaks a framing rule.
    fn next_message(&mut self) -> Result<Option<Bytes>, String> {
        let cap = if self.client.is_authenticated() {
            MESSAGE_MAX
        } else if self.client.auth.method == AuthMethod::Sasl {
            MESSAGE_PRE_AUTH_SASL_MAX
        } else {
            MESSAGE_INITIAL
        };
        let Some(len) = frame::message_len(&self.buf, cap).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        if self.buf.len() < len {
            // Grow only for the message being read, never by what a peer merely claims
            // beyond the phase cap (checked above).
            self.buf.reserve(len - self.buf.len());
            return Ok(None);
        }
        let msg = self.buf.split_to(len).freeze();
        if self.buf.is_empty() {
            // Let the next read start afresh rather than keep this storage alive.
            self.buf = BytesMut::new();
        }
        Ok(Some(msg))
    }

    /// Waits for something to do: room for a waiting call, bytes to write or written, a
    /// read, a keepalive tick, the end of the pre-authentication time, a close request.
    /// Registers with the outbox first and then checks, so no wake-up is lost.
    fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<Flow> {
        let Conn {
            daemon,
            client,
            io,
            out,
            buf,
            decoding,
            pending,
            ticker,
            read_since_tick,
            pings_sent,
            slot_wanted,
            auth_deadline,
            ..
        } = self;
        let queued = client.outbox.register(cx.waker());
        if client.close_requested() {
            return Poll::Ready(Flow::Continue);
        }
        let mut progress = false;
        if pending.calls.is_empty() {
            if *slot_wanted {
                client.no_slot_wanted();
                *slot_wanted = false;
            }
        } else {
            *slot_wanted = true;
            if client.want_slot() < daemon.config.max_client_requests {
                progress = true;
            }
        }
        let ka = Keepalive::of(&daemon.config);
        if ka.enabled && ticker.is_none() && client.keepalive_enabled() {
            *ticker = Some(Box::pin(tokio::time::sleep(ka.interval)));
            *read_since_tick = false;
        }
        match out.poll_step(cx, io) {
            Poll::Ready(Ok(())) => progress = true,
            Poll::Ready(Err(e)) => {
                debug!("write error: {e}");
                client.outbox.close();
                return Poll::Ready(Flow::Close);
            }
            Poll::Pending => {}
        }
        if queued && out.idle() {
            progress = true;
        }
        // A client that does not read its replies stops being read too.
        if !pending.full() && !client.outbox.is_full() {
            let layer = if *decoding {
                client.auth.read_layer().map(|l| &**l)
            } else {
                None
            };
            match poll_read(cx, io, buf, layer) {
                Poll::Ready(Ok(true)) => {
                    *read_since_tick = true;
                    *pings_sent = 0;
                    progress = true;
                }
                Poll::Ready(Ok(false)) => {
                    if !buf.is_empty() {
                        debug!("peer closed mid-message ({} bytes pending)", buf.len());
                    }
                    return Poll::Ready(Flow::Close);
                }
                Poll::Ready(Err(())) => return Poll::Ready(Flow::Close),
                Poll::Pending => {}
            }
        }
        if let Some(t) = ticker {
            if t.as_mut().poll(cx).is_ready() {
                // Ticks come one interval apart (later under load, never sooner), so a
                // read since the last one is a read within the interval.
                t.as_mut().reset(Instant::now() + ka.interval);
                if !std::mem::take(read_since_tick) {
                    if *pings_sent >= ka.count {
                        info!("closing connection: no answer to {pings_sent} keepalive pings");
                        return Poll::Ready(Flow::Close);
                    }
                    *pings_sent += 1;
                    client.try_send(keepalive_message(KEEPALIVE_PROC_PING));
                }
                progress = true;
            }
        }
        if let Some(d) = auth_deadline {
            if d.as_mut().poll(cx).is_ready() {
                info!(
                    "closing connection: not authenticated within {} s",
                    daemon.config.pre_auth_timeout
                );
                return Poll::Ready(Flow::Close);
            }
        }
        if progress {
            Poll::Ready(Flow::Continue)
        } else {
            Poll::Pending
        }
    }

    /// Writes until the outbox is empty and, with `wait_calls`, every call in service has
    /// finished. `open` turns false when the peer is gone (then it only waits for the
    /// calls).
    fn poll_drain(&mut self, cx: &mut Context<'_>, wait_calls: bool, open: &mut bool) -> Poll<()> {
        let client = &*self.client;
        client.outbox.register(cx.waker());
        loop {
            if *open {
                if let Err(e) = self.out.refill(client) {
                    warn!("closing connection: {e}");
                    client.outbox.close();
                    *open = false;
                }
            }
            if *open {
                match self.out.poll_step(cx, &mut self.io) {
                    Poll::Ready(Ok(())) => continue,
                    Poll::Ready(Err(e)) => {
                        debug!("write error: {e}");
                        client.outbox.close();
                        *open = false;
                    }
                    Poll::Pending => {}
                }
            }
            let calls_done = !wait_calls || client.want_slot() == 0;
            if calls_done && (!*open || self.out.idle()) {
                return Poll::Ready(());
            }
            return Poll::Pending;
        }
    }
}

/// One read: true when bytes arrived (decoded into `buf` with a security layer), false at
/// the end of the stream; an error is logged.
fn poll_read<S: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    io: &mut S,
    buf: &mut BytesMut,
    decoding: Option<&SecurityLayer>,
) -> Poll<Result<bool, ()>> {
    if decoding.is_none() && !buf.is_empty() {
        // A message under way: read straight into the room reserved for it.
        let read = std::pin::pin!(io.read_buf(buf));
        return match ready!(read.poll(cx)) {
            Ok(n) => Poll::Ready(Ok(n > 0)),
            Err(e) => {
                debug!("read error: {e}");
                Poll::Ready(Err(()))
            }
        };
    }
    let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
    let mut rb = ReadBuf::uninit(&mut chunk);
    if let Err(e) = ready!(Pin::new(io).poll_read(cx, &mut rb)) {
        debug!("read error: {e}");
        return Poll::Ready(Err(()));
    }
    let got = rb.filled();
    if got.is_empty() {
        return Poll::Ready(Ok(false));
    }
    match decoding {
        None => buf.extend_from_slice(got),
        Some(layer) => {
            if let Err(e) = layer.decode(got, buf) {
                warn!("closing connection: {e}");
                return Poll::Ready(Err(()));
            }
        }
    }
    Poll::Ready(Ok(true))
}

/// Keepalive settings, from the configuration.
struct Keepalive {
    enabled: bool,
    interval: Duration,
    count: u32,
}

impl Keepalive {
    fn of(cfg: &crate::config::Config) -> Keepalive {
        Keepalive {
            enabled: cfg.keepalive_interval > 0,
            interval: Duration::from_secs(cfg.keepalive_interval.max(1) as u64),
            count: cfg.keepalive_count,
        }
    }
}

/// What the connection task still has to wait for after `on_message`: an inline call's
/// reply, or room in a stream's queue. Boxed: held inline, the dispatch future (as large as
/// the largest handler's) would make every idle connection that much bigger.
type Wait<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Handles one whole message, or says what is left to wait for.
fn on_message<'a>(
    daemon: &'a Arc<Daemon>,
    client: &'a Arc<Client>,
    pending: &mut Pending,
    msg: Bytes,
) -> Option<Wait<'a>> {
    let header = match frame::split(&msg) {
        Ok((h, _)) => h,
        Err(_) => return None, // cannot happen: the length is at least a header
    };
    if header.program == KEEPALIVE_PROGRAM
        && header.version == KEEPALIVE_PROTOCOL_VERSION
        && header.kind != MessageType::CALL
    {
        if header.kind == MessageType::MESSAGE && header.procedure == KEEPALIVE_PROC_PING {
            // Answered here, never behind calls.
            client.outbox.force(keepalive_message(KEEPALIVE_PROC_PONG));
            return None;
        }
        return None; // PONGs only prove liveness, which the read already recorded.
    }
    let known_program =
        header.program == REMOTE_PROGRAM && header.version == REMOTE_PROTOCOL_VERSION;
    let is_call = header.kind == MessageType::CALL || header.kind == MessageType::CALL_WITH_FDS;
    if !known_program {
        if is_call {
            let err = RemoteError::new(
                code::RPC,
                domain::RPC,
                format!(
                    "Cannot find program {} version {}",
                    header.program, header.version
                ),
            );
            client.outbox.force(remote::error_reply(&header, &err));
            return None;
        }
        debug!(?header, "dropping message for an unknown program");
        return None;
    }
    match header.kind {
        MessageType::CALL => {
            if header.status != Status::OK {
                let err = RemoteError::new(
                    code::RPC,
                    domain::RPC,
                    format!("Unexpected message status {}", header.status.0),
                );
                client.outbox.force(remote::error_reply(&header, &err));
                return None;
            }
            // In order: behind calls already waiting, or at once when a slot is free.
            let slot = if pending.calls.is_empty() {
                client.try_call_slot(daemon.config.max_client_requests)
            } else {
                None
            };
            match slot {
                Some(slot) => {
                    if remote::runs_inline(header.procedure) {
                        // Answered from memory: no task, no hand-off, no wake-up.
                        let payload = msg.slice(MESSAGE_HEADER_LEN..);
                        return Some(Box::pin(async move {
                            let reply = remote::dispatch(daemon, client, &header, payload).await;
                            drop(slot);
                            client.outbox.force(reply);
                        }));
                    }
                    spawn_call(daemon, client, slot, header, msg)
                }
                None => pending.push(header, msg),
            }
            None
        }
        MessageType::STREAM => stream::try_route(client, &header, msg.slice(MESSAGE_HEADER_LEN..))
            .map(|w| w as Wait<'a>),
        MessageType::CALL_WITH_FDS => {
            let err = RemoteError::new(
                code::RPC,
                domain::RPC,
                "file descriptor passing is not supported",
            );
            client.outbox.force(remote::error_reply(&header, &err));
            None
        }
        _ => {
            // A client must not send replies or events; answer with an empty reply so a
            // confused peer is not left waiting, as libvirtd does.
            debug!(kind = header.kind.0, "unexpected message type from client");
            client
                .outbox
                .force(frame::encode(&header.reply(Status::OK), &()));
            None
        }
    }
}

/// Runs one call as its own task; its reply is queued when it is done.
fn spawn_call(
    daemon: &Arc<Daemon>,
    client: &Arc<Client>,
    slot: CallSlot,
    header: Header,
    msg: Bytes,
) {
    let daemon = daemon.clone();
    let client = client.clone();
    let span = tracing::debug_span!(
        "call",
        serial = header.serial,
        proc = remote::procedure_name(header.procedure)
    );
    tokio::spawn(
        async move {
            let payload = msg.slice(MESSAGE_HEADER_LEN..);
            let reply = remote::dispatch(&daemon, &client, &header, payload).await;
            if !client.send(reply).await {
                // The writer is gone (the peer left): run nothing more for this connection.
                client.request_close();
            }
            // A stream the call opened may send once its reply is on its way.
            client.streams.activate(header.serial);
            drop(slot);
        }
        .instrument(span),
    );
}

fn keepalive_message(procedure: i32) -> BytesMut {
    let h = Header {
        program: KEEPALIVE_PROGRAM,
        version: KEEPALIVE_PROTOCOL_VERSION,
        procedure,
        kind: MessageType::MESSAGE,
        serial: 0,
        status: Status::OK,
    };
    frame::encode(&h, &())
}

/// The connection task's writing side: the batch being written (already wrapped once a
/// SASL security layer is active) and the switch to that layer (`client.auth.read_layer()`),
/// which the reply completing authentication arms: that reply ends its batch and goes out
/// plain, everything after it is wrapped.
struct Output {
    pending: BytesMut,
    wrapped: bool,
    /// Wrap from the next batch on.
    wrap_next: bool,
    /// The transport may hold written bytes back until flushed (TLS).
    flushes: bool,
    unflushed: bool,
}

impl Output {
    fn new(flushes: bool) -> Output {
        Output {
            pending: BytesMut::new(),
            wrapped: false,
            wrap_next: false,
            flushes,
            unflushed: false,
        }
    }

    /// Nothing written is waiting to go out.
    fn idle(&self) -> bool {
        self.pending.is_empty() && !self.unflushed
    }

    /// Takes the next batch from the outbox once the previous one is out.
    fn refill(&mut self, client: &Client) -> Result<(), String> {
        if !self.idle() {
            return Ok(());
        }
        self.wrapped |= std::mem::take(&mut self.wrap_next);
        let auth = &client.auth;
        let watch = !self.wrapped;
        let mut armed = false;
        let stop_after = |m: &BytesMut| {
            if watch {
                armed = auth.switch_after(m);
            }
            armed
        };
        match auth.read_layer().filter(|_| self.wrapped) {
            None => {
                client
                    .outbox
                    .take(&mut self.pending, WRITE_BATCH, stop_after);
            }
            Some(layer) => {
                let mut plain = BytesMut::new();
                client.outbox.take(&mut plain, WRITE_BATCH, stop_after);
                if !plain.is_empty() {
                    layer.encode(&plain, &mut self.pending)?;
                }
            }
        }
        self.wrap_next = armed;
        Ok(())
    }

    /// One step of writing: part of the batch, or a flush. Pending, without registering
    /// anything, when there is nothing to write.
    fn poll_step<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        w: &mut W,
    ) -> Poll<std::io::Result<()>> {
        if !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut *w).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.pending.advance(n);
            if self.pending.is_empty() {
                // Free the written batch now rather than when the next one comes: an idle
                // connection holds no buffer.
                self.pending = BytesMut::new();
            }
            self.unflushed = self.flushes;
            Poll::Ready(Ok(()))
        } else if self.unflushed {
            ready!(Pin::new(w).poll_flush(cx))?;
            self.unflushed = false;
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}
