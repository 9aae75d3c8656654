//! Event registrations of one family (domain events, storage pool events): which
//! connection asked for which events, one forwarder task per registered connection that
//! relays the family's broadcast to it as MESSAGE packets, and the family's callback id
//! counter (one per daemon, as libvirtd). Registrations belong to a connection and die
//! with it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::task::JoinHandle;
use virtumld_protocol::header::{
    Header, MessageType, Status, REMOTE_PROGRAM, REMOTE_PROTOCOL_VERSION,
};

use crate::rpc::client::Client;

/// How long an event waits for room in a client's outbox before the client is dropped: a
/// full outbox is normal for a client that reads at its own pace (calls in flight, a busy
/// console), one that stays full is not.
const EVENT_QUEUE_WAIT: Duration = Duration::from_secs(30);

/// One kind of event and what a registration for it is.
pub trait Family: 'static {
    type Event: Clone + Send + 'static;
    type Reg: Send + 'static;

    /// The message `ev` produces for one registration, if that registration wants it.
    fn message(reg: &Self::Reg, ev: &Self::Event) -> Option<BytesMut>;
}

/// The header of every event message. libvirtd sends them all with serial 1; clients
/// ignore it.
pub fn event_header(procedure: i32) -> Header {
    Header {
        program: REMOTE_PROGRAM,
        version: REMOTE_PROTOCOL_VERSION,
        procedure,
        kind: MessageType::MESSAGE,
        serial: 1,
        status: Status::OK,
    }
}

struct ClientRegs<R> {
    regs: Vec<R>,
    forwarder: JoinHandle<()>,
}

pub struct Registry<F: Family> {
    clients: Mutex<HashMap<u64, ClientRegs<F::Reg>>>,
    next_callback: AtomicI32,
}

impl<F: Family> Default for Registry<F> {
    fn default() -> Self {
        Registry {
            clients: Mutex::new(HashMap::new()),
            next_callback: AtomicI32::new(0),
        }
    }
}

impl<F: Family> Registry<F> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, ClientRegs<F::Reg>>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh callback id.
    pub fn next_callback_id(&self) -> i32 {
        self.next_callback.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds `reg` for `client` unless the client already has a registration `same` as it
    /// (false then). A connection's first registration starts its forwarder on the
    /// broadcast `subscribe` returns, subscribed before the reply so no event is missed.
    pub fn add_unique(
        self: &Arc<Self>,
        client: &Arc<Client>,
        subscribe: impl FnOnce() -> broadcast::Receiver<F::Event>,
        reg: F::Reg,
        same: impl Fn(&F::Reg) -> bool,
    ) -> bool {
        let mut map = self.lock();
        if let Some(c) = map.get(&client.id) {
            if c.regs.iter().any(same) {
                return false;
            }
        }
        let entry = map.entry(client.id).or_insert_with(|| ClientRegs {
            regs: Vec::new(),
            forwarder: tokio::spawn(forward(
                subscribe(),
                Arc::downgrade(self),
                Arc::downgrade(client),
            )),
        });
        entry.regs.push(reg);
        true
    }

    pub fn add(
        self: &Arc<Self>,
        client: &Arc<Client>,
        subscribe: impl FnOnce() -> broadcast::Receiver<F::Event>,
        reg: F::Reg,
    ) {
        self.add_unique(client, subscribe, reg, |_| false);
    }

    /// Removes the client's registrations matching `pred`; false when there was none.
    pub fn remove(&self, client_id: u64, pred: impl Fn(&F::Reg) -> bool) -> bool {
        let mut map = self.lock();
        let Some(entry) = map.get_mut(&client_id) else {
            return false;
        };
        let before = entry.regs.len();
        entry.regs.retain(|r| !pred(r));
        before != entry.regs.len()
    }

    /// Drops everything a connection registered.
    pub fn client_gone(&self, client_id: u64) {
        if let Some(c) = self.lock().remove(&client_id) {
            c.forwarder.abort();
        }
    }

    fn messages_for(&self, client_id: u64, ev: &F::Event) -> Vec<BytesMut> {
        self.lock().get(&client_id).map_or_else(Vec::new, |c| {
            c.regs.iter().filter_map(|r| F::message(r, ev)).collect()
        })
    }
}

/// Relays events to one connection until it or the registry goes away. A client that
/// falls behind the broadcast, or whose outbox stays full, is disconnected rather than
/// buffered for without bound.
async fn forward<F: Family>(
    mut rx: broadcast::Receiver<F::Event>,
    registry: Weak<Registry<F>>,
    client: Weak<Client>,
) {
    loop {
        let ev = match rx.recv().await {
            Ok(ev) => ev,
            Err(RecvError::Lagged(n)) => {
                tracing::warn!("client fell {n} events behind: disconnecting it");
                if let Some(c) = client.upgrade() {
                    c.request_close();
                }
                return;
            }
            Err(RecvError::Closed) => return,
        };
        let (Some(c), Some(registry)) = (client.upgrade(), registry.upgrade()) else {
            return;
        };
        for m in registry.messages_for(c.id, &ev) {
            match tokio::time::timeout(EVENT_QUEUE_WAIT, c.send(m)).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(_) => {
                    tracing::warn!(
                        "client's outbox stayed full for {EVENT_QUEUE_WAIT:?}: disconnecting it"
                    );
                    c.request_close();
                    return;
                }
            }
        }
    }
}
