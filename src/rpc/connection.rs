//! One client connection: reads whole messages, answers keepalive PINGs in the read path,
//! runs each CALL as its own task (so replies may go out of order and a slow call never
//! delays a PONG), and writes what call tasks, events and streams queue in the connection's outbox.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
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
use crate::daemon::Daemon;
use crate::remote;
use crate::rpc::client::{Client, Transport};
use crate::rpc::outbox::Outbox;
use crate::rpc::sasl::{SecurityLayer, SwitchSlot};
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
    calls: std::collections::VecDeque<(Header, Bytes)>,
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
}

/// Serves one connection until the peer leaves, the daemon shuts down or the connection
/// breaks a framing rule. In-flight calls finish before the writer closes.
pub async fn serve<R, W>(
    daemon: Arc<Daemon>,
    mut reader: R,
    mut writer: W,
    transport: Transport,
    peer: String,
    mut shutdown: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let id = daemon.next_connection_id();
    let span = tracing::info_span!("conn", id, %peer);
    async move {
        info!("client connected");
        let cfg = &daemon.config;
        let auth = match transport {
            Transport::Unix { read_only: true } => cfg.auth_unix_ro,
            Transport::Unix { read_only: false } => cfg.auth_unix_rw,
            Transport::Tcp => cfg.auth_tcp,
            Transport::Tls { .. } => cfg.auth_tls,
        };
        let flushes = matches!(transport, Transport::Tls { .. });
        let client = Arc::new(Client::new(id, transport, auth, peer.clone()));
        let mut out = Output::new(client.auth.switch_slot(), flushes);
        // SASL security layer on input, once authentication completed with one: raw bytes
        // from the peer collect there and decode into `buf`. Boxed: most connections
        // never have one.
        let mut decoding: Option<Box<(Arc<SecurityLayer>, BytesMut)>> = None;
        let max_requests = daemon.config.max_client_requests;
        let inflight = Arc::new(Semaphore::new(max_requests));

        let mut buf = BytesMut::new();
        let ka = Keepalive::new(
            daemon.config.keepalive_interval,
            daemon.config.keepalive_count,
        );
        let mut last_rx = Instant::now();
        let mut pings_sent = 0u32;
        // Created when the client turns keepalive on (most raw clients never do).
        let mut ticker: Option<tokio::time::Interval> = None;
        let mut pending = Pending::default();
        // A client that has not authenticated counts against max_anonymous_clients and
        // gets a bounded time to do so (libvirtd has no such timeout).
        // At the limit the connection waits unread, as if libvirtd had not accepted it.
        let mut anonymous = None;
        let mut stopping = false;
        if !client.is_authenticated() {
            tokio::select! {
                g = daemon.anonymous_place() => anonymous = Some(g),
                _ = shutdown.changed() => stopping = true,
            }
        }
        let pre_auth_timeout = Duration::from_secs(daemon.config.pre_auth_timeout);
        // Boxed, and only for anonymous clients: an idle authenticated connection keeps
        // no timer.
        let mut auth_deadline = anonymous
            .is_some()
            .then(|| Box::pin(tokio::time::sleep(pre_auth_timeout)));

        'conn: loop {
            if stopping {
                break;
            }
            if anonymous.is_some() && client.is_authenticated() {
                anonymous = None;
                auth_deadline = None;
            }
            if decoding.is_none() {
                if let Some(layer) = client.auth.read_layer() {
                    // Everything after the call that completed authentication is wrapped
                    // (the peer sends nothing before the reply, so normally nothing).
                    decoding = Some(Box::new((layer.clone(), buf.split())));
                }
            }
            if let Some(d) = &mut decoding {
                let (layer, raw) = &mut **d;
                if !raw.is_empty() {
                    if let Err(e) = layer.decode(raw, &mut buf) {
                        warn!("closing connection: {e}");
                        break 'conn;
                    }
                    raw.clear();
                }
            }
            // Handle every whole message already buffered.
            while !pending.full() {
                let cap = if client.is_authenticated() {
                    MESSAGE_MAX
                } else if client.auth.method == AuthMethod::Sasl {
                    MESSAGE_PRE_AUTH_SASL_MAX
                } else {
                    MESSAGE_INITIAL
                };
                let len = match frame::message_len(&buf, cap) {
                    Ok(Some(len)) => len,
                    Ok(None) => break,
                    Err(e) => {
                        warn!("closing connection: {e}");
                        break 'conn;
                    }
                };
                if buf.len() < len {
                    // Grow only for the message being read, never by what a peer merely claims
                    // beyond the phase cap (checked above).
                    buf.reserve(len - buf.len());
                    break;
                }
                let msg = buf.split_to(len).freeze();
                if !on_message(&daemon, &client, &inflight, &mut pending, msg).await {
                    break 'conn;
                }
            }
            if let Err(e) = out.refill(&client.outbox) {
                warn!("closing connection: {e}");
                break 'conn;
            }
            let target = match &mut decoding {
                Some(d) => {
                    d.1.reserve(16 * 1024);
                    &mut d.1
                }
                None => &mut buf,
            };
            tokio::select! {
                permit = inflight.clone().acquire_owned(), if !pending.calls.is_empty() => {
                    match (permit, pending.pop()) {
                        (Ok(permit), Some((header, msg))) => {
                            spawn_call(&daemon, &client, permit, header, msg)
                        }
                        _ => break,
                    }
                }
                w = out.step(&mut writer, &client.outbox) => {
                    if let Err(e) = w {
                        debug!("write error: {e}");
                        client.outbox.close();
                        break;
                    }
                }
                // A client that does not read its replies stops being read too.
                r = reader.read_buf(target), if !pending.full() && !client.outbox.is_full() => match r {
                    Ok(0) => {
                        if !buf.is_empty() {
                            debug!("peer closed mid-message ({} bytes pending)", buf.len());
                        }
                        break;
                    }
                    Ok(_) => {
                        last_rx = Instant::now();
                        pings_sent = 0;
                    }
                    Err(e) => {
                        debug!("read error: {e}");
                        break;
                    }
                },
                _ = tick(&mut ticker) => {
                    if last_rx.elapsed() >= ka.interval {
                        if pings_sent >= ka.count {
                            info!("closing connection: no answer to {pings_sent} keepalive pings");
                            break;
                        }
                        pings_sent += 1;
                        client.try_send(keepalive_message(KEEPALIVE_PROC_PING));
                    }
                }
                _ = client.woken() => {
                    if client.close_requested() {
                        break;
                    }
                    if ka.enabled && ticker.is_none() && client.keepalive_enabled() {
                        let first = Instant::now() + ka.interval;
                        let mut t = tokio::time::interval_at(first, ka.interval);
                        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        ticker = Some(t);
                    }
                }
                _ = expiry(&mut auth_deadline) => {
                    info!("closing connection: not authenticated within {} s", pre_auth_timeout.as_secs());
                    break;
                }
                _ = shutdown.changed() => break,
            }
        }

        // Let in-flight calls finish and their replies go out, then close.
        drop(anonymous);
        let calls_done = async {
            let _ = inflight.acquire_many(max_requests as u32).await;
        };
        let mut open = out.drain(&mut writer, &client.outbox, calls_done).await;
        client.streams.clear();
        remote::disconnected(&daemon, &client);
        if open {
            open = out.drain(&mut writer, &client.outbox, async {}).await;
        }
        client.outbox.close();
        if open {
            let _ = writer.shutdown().await;
        }
        info!("client disconnected");
    }
    .instrument(span)
    .await
}

/// The next tick of the keepalive timer; never, while there is none.
async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The end of the pre-authentication time; never, for a client that has no deadline.
async fn expiry(deadline: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match deadline {
        Some(d) => d.as_mut().await,
        None => std::future::pending().await,
    }
}

struct Keepalive {
    enabled: bool,
    interval: Duration,
    count: u32,
}

impl Keepalive {
    fn new(interval: i64, count: u32) -> Keepalive {
        Keepalive {
            enabled: interval > 0,
            interval: Duration::from_secs(interval.max(1) as u64),
            count,
        }
    }
}

/// Handles one whole message; false closes the connection.
async fn on_message(
    daemon: &Arc<Daemon>,
    client: &Arc<Client>,
    inflight: &Arc<Semaphore>,
    pending: &mut Pending,
    msg: Bytes,
) -> bool {
    let header = match frame::split(&msg) {
        Ok((h, _)) => h,
        Err(_) => return false, // cannot happen: the length is at least a header
    };
    if header.program == KEEPALIVE_PROGRAM
        && header.version == KEEPALIVE_PROTOCOL_VERSION
        && header.kind != MessageType::CALL
    {
        if header.kind == MessageType::MESSAGE && header.procedure == KEEPALIVE_PROC_PING {
            // Answered here, never behind calls.
            client.outbox.force(keepalive_message(KEEPALIVE_PROC_PONG));
            return true;
        }
        return true; // PONGs only prove liveness, which the read already recorded.
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
            return true;
        }
        debug!(?header, "dropping message for an unknown program");
        return true;
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
                return true;
            }
            // In order: behind calls already waiting, or at once when a slot is free.
            match inflight.clone().try_acquire_owned() {
                Ok(permit) if pending.calls.is_empty() => {
                    if remote::runs_inline(header.procedure) {
                        // Answered from memory: no task, no hand-off, no wake-up.
                        let payload = msg.slice(MESSAGE_HEADER_LEN..);
                        // Boxed: held inline, the dispatch future (as large as the largest
                        // handler's) would make every idle connection that much bigger.
                        let reply =
                            Box::pin(remote::dispatch(daemon, client, &header, payload)).await;
                        drop(permit);
                        client.outbox.force(reply);
                        return true;
                    }
                    spawn_call(daemon, client, permit, header, msg)
                }
                _ => pending.push(header, msg),
            }
            true
        }
        MessageType::STREAM => {
            stream::route(client, &header, msg.slice(MESSAGE_HEADER_LEN..)).await;
            true
        }
        MessageType::CALL_WITH_FDS => {
            let err = RemoteError::new(
                code::RPC,
                domain::RPC,
                "file descriptor passing is not supported",
            );
            client.outbox.force(remote::error_reply(&header, &err));
            true
        }
        _ => {
            // A client must not send replies or events; answer with an empty reply so a
            // confused peer is not left waiting, as libvirtd does.
            debug!(kind = header.kind.0, "unexpected message type from client");
            client
                .outbox
                .force(frame::encode(&header.reply(Status::OK), &()));
            true
        }
    }
}

/// Runs one call as its own task; its reply is queued when it is done.
fn spawn_call(
    daemon: &Arc<Daemon>,
    client: &Arc<Client>,
    permit: OwnedSemaphorePermit,
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
            drop(permit);
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
/// SASL security layer is active) and the switch to that layer, which the reply completing
/// authentication arms: that reply ends its batch and goes out plain, everything after it
/// is wrapped.
struct Output {
    pending: BytesMut,
    layer: Option<Arc<SecurityLayer>>,
    next_layer: Option<Arc<SecurityLayer>>,
    switch: SwitchSlot,
    /// The transport may hold written bytes back until flushed (TLS).
    flushes: bool,
    unflushed: bool,
}

impl Output {
    fn new(switch: SwitchSlot, flushes: bool) -> Output {
        Output {
            pending: BytesMut::new(),
            layer: None,
            next_layer: None,
            switch,
            flushes,
            unflushed: false,
        }
    }

    /// Nothing written is waiting to go out.
    fn idle(&self) -> bool {
        self.pending.is_empty() && !self.unflushed
    }

    /// Takes the next batch from the outbox once the previous one is out.
    fn refill(&mut self, outbox: &Outbox) -> Result<(), String> {
        if !self.idle() {
            return Ok(());
        }
        if let Some(l) = self.next_layer.take() {
            self.layer = Some(l);
        }
        let watch = self.layer.is_none();
        let switch = &self.switch;
        let mut armed = None;
        let stop_after = |m: &BytesMut| {
            if watch {
                armed = switch.after(m);
            }
            armed.is_some()
        };
        match &self.layer {
            None => {
                outbox.take(&mut self.pending, WRITE_BATCH, stop_after);
            }
            Some(layer) => {
                let mut plain = BytesMut::new();
                outbox.take(&mut plain, WRITE_BATCH, stop_after);
                if !plain.is_empty() {
                    layer.encode(&plain, &mut self.pending)?;
                }
            }
        }
        self.next_layer = armed;
        Ok(())
    }

    /// One step of writing: part of the batch, a flush, or waiting for something to write.
    /// Cancel-safe: the state changes only once a write or flush has completed.
    async fn step<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        outbox: &Outbox,
    ) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            let n = w.write(&self.pending).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.pending.advance(n);
            if self.pending.is_empty() {
                // Free the written batch now rather than when the next one comes: an idle
                // connection holds no buffer.
                self.pending = BytesMut::new();
            }
            self.unflushed = self.flushes;
        } else if self.unflushed {
            w.flush().await?;
            self.unflushed = false;
        } else {
            outbox.ready().await;
        }
        Ok(())
    }

    /// Writes until `until` has completed and the outbox is empty; false when the peer is
    /// gone (then it only waits for `until`).
    async fn drain<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        outbox: &Outbox,
        until: impl std::future::Future<Output = ()>,
    ) -> bool {
        tokio::pin!(until);
        let mut done = false;
        loop {
            if let Err(e) = self.refill(outbox) {
                warn!("closing connection: {e}");
                outbox.close();
                until.await;
                return false;
            }
            if done && self.idle() {
                return true;
            }
            tokio::select! {
                _ = &mut until, if !done => done = true,
                r = self.step(w, outbox) => if let Err(e) = r {
                    debug!("write error: {e}");
                    outbox.close();
                    if !done {
                        until.await;
                    }
                    return false;
                }
            }
        }
    }
}
