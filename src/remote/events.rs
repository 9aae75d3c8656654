//! Domain event registrations and their delivery as MESSAGE packets: the callback API
//! (316/317, events 318/319) and the legacy one (105/106, 167/168, events 107/169).
//! Registrations belong to a connection and die with it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::BytesMut;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use virtumld_protocol::frame;
use virtumld_protocol::header::{
    Header, MessageType, Status, REMOTE_PROGRAM, REMOTE_PROTOCOL_VERSION,
};
use virtumld_protocol::procedures::proc as p;
use virtumld_protocol::remote::*;

use super::domain::wire;
use super::{err, Ctx, Reply};
use crate::driver::state::event_id;
use crate::driver::{DomainEvent, Driver, EventKind};
use crate::rpc::client::Client;

#[derive(Debug, Clone, PartialEq)]
enum Style {
    /// Server-assigned callback id (316).
    Callback(i32),
    /// One registration per event id, no callback id (105/167).
    Legacy,
}

#[derive(Debug, Clone)]
struct Registration {
    event_id: i32,
    style: Style,
    dom: Option<[u8; 16]>,
}

struct ClientRegs {
    regs: Vec<Registration>,
    forwarder: JoinHandle<()>,
}

/// Every connection's registrations, and the daemon-wide callback id counter (one counter
/// for the whole daemon, as libvirtd).
#[derive(Default)]
pub struct Registry {
    clients: Mutex<HashMap<u64, ClientRegs>>,
    next_callback: AtomicI32,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, ClientRegs>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(self: &Arc<Self>, driver: &Driver, client: &Arc<Client>, reg: Registration) {
        let mut map = self.lock();
        let entry = map.entry(client.id).or_insert_with(|| ClientRegs {
            regs: Vec::new(),
            forwarder: tokio::spawn(forward(
                driver.clone(),
                Arc::downgrade(self),
                Arc::downgrade(client),
            )),
        });
        entry.regs.push(reg);
    }

    fn remove(&self, client_id: u64, pred: impl Fn(&Registration) -> bool) -> bool {
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

    /// The messages `ev` produces for one client.
    fn messages_for(&self, client_id: u64, ev: &DomainEvent) -> Vec<BytesMut> {
        let map = self.lock();
        let Some(c) = map.get(&client_id) else {
            return Vec::new();
        };
        let wanted = match ev.kind {
            EventKind::Lifecycle { .. } => event_id::LIFECYCLE,
            EventKind::Reboot => event_id::REBOOT,
        };
        c.regs
            .iter()
            .filter(|r| r.event_id == wanted && r.dom.is_none_or(|u| u == ev.dom.uuid))
            .map(|r| encode(&r.style, ev))
            .collect()
    }
}

fn message_header(procedure: i32) -> Header {
    Header {
        program: REMOTE_PROGRAM,
        version: REMOTE_PROTOCOL_VERSION,
        procedure,
        kind: MessageType::MESSAGE,
        // libvirtd sends every event with serial 1; clients ignore it.
        serial: 1,
        status: Status::OK,
    }
}

fn encode(style: &Style, ev: &DomainEvent) -> BytesMut {
    let dom = wire(&ev.dom);
    match (style, &ev.kind) {
        (Style::Callback(id), EventKind::Lifecycle { event, detail }) => frame::encode(
            &message_header(p::DOMAIN_EVENT_CALLBACK_LIFECYCLE),
            &DomainEventCallbackLifecycleMsg {
                callback_id: *id,
                msg: DomainEventLifecycleMsg {
                    dom,
                    event: *event,
                    detail: *detail,
                },
            },
        ),
        (Style::Callback(id), EventKind::Reboot) => frame::encode(
            &message_header(p::DOMAIN_EVENT_CALLBACK_REBOOT),
            &DomainEventCallbackRebootMsg {
                callback_id: *id,
                msg: DomainEventRebootMsg { dom },
            },
        ),
        (Style::Legacy, EventKind::Lifecycle { event, detail }) => frame::encode(
            &message_header(p::DOMAIN_EVENT_LIFECYCLE),
            &DomainEventLifecycleMsg {
                dom,
                event: *event,
                detail: *detail,
            },
        ),
        (Style::Legacy, EventKind::Reboot) => frame::encode(
            &message_header(p::DOMAIN_EVENT_REBOOT),
            &DomainEventRebootMsg { dom },
        ),
    }
}

/// How long an event waits for room in a client's queue before the client is dropped.
const EVENT_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Relays driver events to one connection until it goes away. A client that stops
/// reading until its queue is full is disconnected rather than buffered without bound.
async fn forward(driver: Driver, registry: Weak<Registry>, client: Weak<Client>) {
    let mut rx = driver.subscribe();
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
            // A full queue is normal for a client that reads at its own pace (calls in
            // flight, a busy console): wait for room, but not for ever.
            match tokio::time::timeout(EVENT_QUEUE_WAIT, c.send(m)).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(_) => {
                    tracing::warn!(
                        "client's queue stayed full for {EVENT_QUEUE_WAIT:?}: disconnecting it"
                    );
                    c.request_close();
                    return;
                }
            }
        }
    }
}

fn check_event_id(id: i32) -> Reply<()> {
    if (0..event_id::LAST).contains(&id) {
        Ok(())
    } else {
        Err(err::invalid_arg(format!("unsupported event ID {id}")))
    }
}

pub async fn callback_register_any(
    ctx: &Ctx<'_>,
    a: ConnectDomainEventCallbackRegisterAnyArgs,
) -> Reply<ConnectDomainEventCallbackRegisterAnyRet> {
    check_event_id(a.event_id)?;
    let dom = match &a.dom {
        Some(d) => Some(ctx.daemon.driver.get(&d.name, &d.uuid.0)?.uuid),
        None => None,
    };
    let reg = &ctx.daemon.events;
    let id = reg.next_callback.fetch_add(1, Ordering::Relaxed);
    reg.add(
        &ctx.daemon.driver,
        ctx.client,
        Registration {
            event_id: a.event_id,
            style: Style::Callback(id),
            dom,
        },
    );
    Ok(ConnectDomainEventCallbackRegisterAnyRet { callback_id: id })
}

pub async fn callback_deregister_any(
    ctx: &Ctx<'_>,
    a: ConnectDomainEventCallbackDeregisterAnyArgs,
) -> Reply<()> {
    if ctx
        .daemon
        .events
        .remove(ctx.client.id, |r| r.style == Style::Callback(a.callback_id))
    {
        Ok(())
    } else {
        Err(err::invalid_arg(format!(
            "callback {} not registered",
            a.callback_id
        )))
    }
}

fn legacy_register(ctx: &Ctx<'_>, event_id: i32) -> Reply<()> {
    check_event_id(event_id)?;
    let reg = &ctx.daemon.events;
    let exists = reg.lock().get(&ctx.client.id).is_some_and(|c| {
        c.regs
            .iter()
            .any(|r| r.style == Style::Legacy && r.event_id == event_id)
    });
    if exists {
        return Err(err::internal(format!(
            "domain event {event_id} already registered"
        )));
    }
    reg.add(
        &ctx.daemon.driver,
        ctx.client,
        Registration {
            event_id,
            style: Style::Legacy,
            dom: None,
        },
    );
    Ok(())
}

fn legacy_deregister(ctx: &Ctx<'_>, event_id: i32) -> Reply<()> {
    if ctx.daemon.events.remove(ctx.client.id, |r| {
        r.style == Style::Legacy && r.event_id == event_id
    }) {
        Ok(())
    } else {
        Err(err::internal(format!(
            "domain event {event_id} not registered"
        )))
    }
}

pub async fn register(ctx: &Ctx<'_>) -> Reply<ConnectDomainEventRegisterRet> {
    legacy_register(ctx, event_id::LIFECYCLE)?;
    Ok(ConnectDomainEventRegisterRet { cb_registered: 1 })
}

pub async fn deregister(ctx: &Ctx<'_>) -> Reply<ConnectDomainEventDeregisterRet> {
    legacy_deregister(ctx, event_id::LIFECYCLE)?;
    Ok(ConnectDomainEventDeregisterRet { cb_registered: 0 })
}

pub async fn register_any(ctx: &Ctx<'_>, a: ConnectDomainEventRegisterAnyArgs) -> Reply<()> {
    legacy_register(ctx, a.event_id)
}

pub async fn deregister_any(ctx: &Ctx<'_>, a: ConnectDomainEventDeregisterAnyArgs) -> Reply<()> {
    legacy_deregister(ctx, a.event_id)
}
