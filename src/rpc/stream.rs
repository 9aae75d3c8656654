//! libvirt streams over one connection: STREAM packets that reuse the serial of the call
//! that opened them. Data is raw bytes with status CONTINUE (empty = end of data); the
//! client finishes with an empty OK or aborts with ERROR, and the server confirms with an
//! empty OK. One generic implementation for every stream procedure.
//!
//! Flow control: outgoing data waits for room in the connection's bounded queue, so a
//! client that stops reading slows its own stream only. Incoming data waits for the
//! stream's consumer, which holds back reading this whole connection: the protocol has no
//! per-stream window. A consumer must therefore keep taking packets while its own output
//! waits (a [`StreamSender`] send in flight alongside [`ServerStream::recv`]) and must not
//! wait on anything slower than the daemon itself to dispose of them (the console queues
//! or drops keystrokes for a guest that does not read them).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};
use virtumld_protocol::frame;
use virtumld_protocol::header::{
    Header, MessageType, Status, REMOTE_PROGRAM, REMOTE_PROTOCOL_VERSION,
};

use super::client::Client;

/// Packets from the client waiting for the stream's consumer.
const INBOUND_QUEUE: usize = 64;
/// Largest data payload per packet (libvirt's legacy payload limit).
pub const MAX_CHUNK: usize = 262_120;

/// A packet the client sent on a stream.
#[derive(Debug)]
pub enum Inbound {
    Data(Bytes),
    /// Empty CONTINUE: the client has no more data.
    Eof,
    /// Empty OK: the client finished the stream.
    Finish,
    /// ERROR: the client aborted the stream.
    Abort,
}

struct Slot {
    tx: mpsc::Sender<Inbound>,
    start: Option<oneshot::Sender<()>>,
}

/// The open streams of one connection, by serial. A connection has few (most have none):
/// a vector, which costs nothing until a stream opens, rather than a map.
#[derive(Default)]
pub struct Streams {
    slots: Mutex<Vec<(u32, Slot)>>,
}

impl Streams {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u32, Slot)>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn find(slots: &mut [(u32, Slot)], serial: u32) -> Option<&mut Slot> {
        slots
            .iter_mut()
            .find(|(s, _)| *s == serial)
            .map(|(_, slot)| slot)
    }

    /// The sender for packets of stream `serial`, if it is open.
    pub fn sender(&self, serial: u32) -> Option<mpsc::Sender<Inbound>> {
        Self::find(&mut self.lock(), serial).map(|s| s.tx.clone())
    }

    /// Lets the stream send data: its call's reply has been queued.
    pub fn activate(&self, serial: u32) {
        let start = Self::find(&mut self.lock(), serial).and_then(|s| s.start.take());
        if let Some(start) = start {
            let _ = start.send(());
        }
    }

    fn remove(&self, serial: u32) {
        let mut slots = self.lock();
        slots.retain(|(s, _)| *s != serial);
        if slots.is_empty() {
            *slots = Vec::new();
        }
    }

    /// Drops every stream (the connection is gone): consumers see their inbound end.
    pub fn clear(&self) {
        let slots = std::mem::take(&mut *self.lock());
        drop(slots);
    }
}

/// The server's end of one stream.
pub struct ServerStream {
    sender: StreamSender,
    inbound: mpsc::Receiver<Inbound>,
    started: Option<oneshot::Receiver<()>>,
}

/// The sending half of a stream. Cheap to clone and independent of the inbound half, so a
/// consumer can have a send waiting for room in the connection's queue while it goes on
/// reading the client's packets.
#[derive(Clone)]
pub struct StreamSender {
    client: Weak<Client>,
    header: Header,
}

impl StreamSender {
    /// Encodes one packet of this stream with the given status; `body` writes the payload.
    pub fn packet(&self, status: Status, body: impl FnOnce(&mut BytesMut)) -> BytesMut {
        let h = Header {
            status,
            ..self.header
        };
        frame::encode_with(&h, body)
    }

    /// Queues an encoded packet, waiting for room; false once the client is gone.
    pub async fn send(&self, packet: BytesMut) -> bool {
        let Some(c) = self.client.upgrade() else {
            return false;
        };
        c.send(packet).await
    }
}

/// Opens a stream on `serial` for the call being handled. Fails if one is already open.
pub fn open(client: &Arc<Client>, procedure: i32, serial: u32) -> Option<ServerStream> {
    let (tx, inbound) = mpsc::channel(INBOUND_QUEUE);
    let (start, started) = oneshot::channel();
    {
        let mut slots = client.streams.lock();
        if slots.iter().any(|(s, _)| *s == serial) {
            return None;
        }
        slots.push((
            serial,
            Slot {
                tx,
                start: Some(start),
            },
        ));
    }
    Some(ServerStream {
        sender: StreamSender {
            client: Arc::downgrade(client),
            header: Header {
                program: REMOTE_PROGRAM,
                version: REMOTE_PROTOCOL_VERSION,
                procedure,
                kind: MessageType::STREAM,
                serial,
                status: Status::CONTINUE,
            },
        },
        inbound,
        started: Some(started),
    })
}

impl ServerStream {
    /// Waits until the reply of the opening call is queued; false if that never happens.
    pub async fn started(&mut self) -> bool {
        match self.started.take() {
            Some(rx) => rx.await.is_ok(),
            None => true,
        }
    }

    /// A handle that sends on this stream.
    pub fn sender(&self) -> StreamSender {
        self.sender.clone()
    }

    async fn send(&self, status: Status, body: impl FnOnce(&mut BytesMut)) -> bool {
        self.sender.send(self.sender.packet(status, body)).await
    }

    /// Sends data (raw bytes, split into packets); false once the client is gone.
    pub async fn send_data(&self, data: &[u8]) -> bool {
        for chunk in data.chunks(MAX_CHUNK) {
            if !self
                .send(Status::CONTINUE, |o| o.extend_from_slice(chunk))
                .await
            {
                return false;
            }
        }
        true
    }

    /// End of data: an empty CONTINUE.
    pub async fn send_eof(&self) -> bool {
        self.send(Status::CONTINUE, |_| {}).await
    }

    /// Confirms the client's finish or abort: an empty OK.
    pub async fn confirm(&self) -> bool {
        self.send(Status::OK, |_| {}).await
    }

    /// The next packet from the client; None when the connection is gone.
    pub async fn recv(&mut self) -> Option<Inbound> {
        self.inbound.recv().await
    }
}

impl Drop for ServerStream {
    fn drop(&mut self) {
        if let Some(c) = self.sender.client.upgrade() {
            c.streams.remove(self.sender.header.serial);
        }
    }
}

/// Routes a STREAM packet from the client to its stream; packets for streams that are
/// gone are dropped (data is not acknowledged, so late packets are normal).
pub async fn route(client: &Client, header: &Header, payload: Bytes) {
    if let Some(wait) = try_route(client, header, payload) {
        wait.await;
    }
}

/// [`route`] without waiting: when the stream's queue is full, returns the wait for room
/// (boxed: the connection task awaits it, and held inline it would make every idle
/// connection that much bigger).
pub fn try_route(
    client: &Client,
    header: &Header,
    payload: Bytes,
) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
    let Some(tx) = client.streams.sender(header.serial) else {
        tracing::debug!(serial = header.serial, "stream packet for no stream");
        return None;
    };
    let packet = match header.status {
        Status::CONTINUE if payload.is_empty() => Inbound::Eof,
        Status::CONTINUE => Inbound::Data(payload),
        Status::OK => Inbound::Finish,
        _ => Inbound::Abort,
    };
    match tx.try_send(packet) {
        Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => None,
        Err(mpsc::error::TrySendError::Full(packet)) => Some(Box::pin(async move {
            let _ = tx.send(packet).await;
        })),
    }
}
