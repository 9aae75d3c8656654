//! One client connection: reads whole messages, answers keepalive PINGs in the read path,
//! runs each CALL as its own task (so replies may go out of order and a slow call never
//! delays a PONG), and feeds one writer task through a bounded queue.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
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
use crate::rpc::sasl::{SecurityLayer, SwitchSlot};
use crate::rpc::stream;

/// Outgoing messages queued per connection before callers wait: bounds what a client that
/// does not read can make the daemon hold.
const TX_QUEUE: usize = 64;
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
    writer: W,
    transport: Transport,
    peer: String,
    mut shutdown: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let id = daemon.next_connection_id();
    let span = tracing::info_span!("conn", id, %peer);
    async move {
        info!("client connected");
        let (tx, rx) = mpsc::channel(TX_QUEUE);
        let cfg = &daemon.config;
        let auth = match transport {
            Transport::Unix { read_only: true } => cfg.auth_unix_ro,
            Transport::Unix { read_only: false } => cfg.auth_unix_rw,
            Transport::Tcp => cfg.auth_tcp,
            Transport::Tls { .. } => cfg.auth_tls,
        };
        let client = Arc::new(Client::new(id, transport, tx, auth, peer.clone()));
        let switch = client.auth.switch_slot();
        let writer_task = tokio::spawn(write_loop(writer, rx, switch).in_current_span());
        // SASL security layer on input, once authentication completed with one: raw bytes
        // from the peer collect in `raw` and decode into `buf`.
        let mut decoding: Option<Arc<SecurityLayer>> = None;
        let mut raw = BytesMut::new();
        let max_requests = daemon.config.max_client_requests;
        let inflight = Arc::new(Semaphore::new(max_requests));

        let mut buf = BytesMut::new();
        let ka = Keepalive::new(
            daemon.config.keepalive_interval,
            daemon.config.keepalive_count,
        );
        let mut last_rx = Instant::now();
        let mut pings_sent = 0u32;
        let mut ticker = tokio::time::interval(ka.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
        let auth_deadline = tokio::time::sleep(pre_auth_timeout);
        tokio::pin!(auth_deadline);

        'conn: loop {
            if stopping {
                break;
            }
            if anonymous.is_some() && client.is_authenticated() {
                anonymous = None;
            }
            if decoding.is_none() {
                if let Some(layer) = client.auth.read_layer() {
                    // Everything after the call that completed authentication is wrapped
                    // (the peer sends nothing before the reply, so normally nothing).
                    decoding = Some(layer.clone());
                    raw = buf.split();
                }
            }
            if let Some(layer) = &decoding {
                if !raw.is_empty() {
                    if let Err(e) = layer.decode(&raw, &mut buf) {
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
            let target = if decoding.is_some() {
                raw.reserve(16 * 1024);
                &mut raw
            } else {
                &mut buf
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
                r = reader.read_buf(target), if !pending.full() => match r {
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
                _ = ticker.tick(), if ka.enabled && client.keepalive_enabled() => {
                    if last_rx.elapsed() >= ka.interval {
                        if pings_sent >= ka.count {
                            info!("closing connection: no answer to {pings_sent} keepalive pings");
                            break;
                        }
                        pings_sent += 1;
                        client.try_send(keepalive_message(KEEPALIVE_PROC_PING));
                    }
                }
                _ = client.keepalive_changed.notified() => {
                    ticker.reset();
                }
                _ = &mut auth_deadline, if anonymous.is_some() => {
                    info!("closing connection: not authenticated within {} s", pre_auth_timeout.as_secs());
                    break;
                }
                _ = client.close_requested.notified() => break,
                _ = shutdown.changed() => break,
            }
        }

        // Let in-flight calls finish and queue their replies, then close the writer.
        drop(anonymous);
        let _ = inflight.acquire_many(max_requests as u32).await;
        client.streams.clear();
        remote::disconnected(&daemon, &client);
        drop(client);
        let _ = writer_task.await;
        info!("client disconnected");
    }
    .instrument(span)
    .await
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
            return client.send(keepalive_message(KEEPALIVE_PROC_PONG)).await;
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
            return client.send(remote::error_reply(&header, &err)).await;
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
                return client.send(remote::error_reply(&header, &err)).await;
            }
            // In order: behind calls already waiting, or at once when a slot is free.
            match inflight.clone().try_acquire_owned() {
                Ok(permit) if pending.calls.is_empty() => {
                    if remote::runs_inline(header.procedure) {
                        // Answered from memory: no task, no hand-off, no wake-up.
                        let payload = msg.slice(MESSAGE_HEADER_LEN..);
                        let reply = remote::dispatch(daemon, client, &header, payload).await;
                        drop(permit);
                        return client.send(reply).await;
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
            client.send(remote::error_reply(&header, &err)).await
        }
        _ => {
            // A client must not send replies or events; answer with an empty reply so a
            // confused peer is not left waiting, as libvirtd does.
            debug!(kind = header.kind.0, "unexpected message type from client");
            client
                .send(frame::encode(&header.reply(Status::OK), &()))
                .await
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
                client.close_requested.notify_one();
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

/// Writes queued messages, coalescing those that are ready into one write. The reply that
/// completes a SASL exchange with a security layer ends its batch and goes out plain;
/// everything after it is `sasl_encode`d.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<BytesMut>,
    switch: SwitchSlot,
) {
    let mut layer: Option<Arc<SecurityLayer>> = None;
    let mut wrapped = BytesMut::new();
    while let Some(mut first) = rx.recv().await {
        let mut next_layer = if layer.is_none() {
            switch.after(&first)
        } else {
            None
        };
        while next_layer.is_none() && first.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(more) => {
                    if layer.is_none() {
                        next_layer = switch.after(&more);
                    }
                    first.extend_from_slice(&more)
                }
                Err(_) => break,
            }
        }
        let out = match &layer {
            Some(l) => {
                wrapped.clear();
                if let Err(e) = l.encode(&first, &mut wrapped) {
                    warn!("closing connection: {e}");
                    return;
                }
                &wrapped
            }
            None => &first,
        };
        if let Err(e) = w.write_all(out).await {
            debug!("write error: {e}");
            return;
        }
        if next_layer.is_some() {
            // The completing reply must reach the peer before anything wrapped.
            if let Err(e) = w.flush().await {
                debug!("write error: {e}");
                return;
            }
            layer = next_layer;
        }
    }
    let _ = w.shutdown().await;
}
