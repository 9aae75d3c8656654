//! Domain event registrations and their delivery as MESSAGE packets: the callback API
//! (316/317, events 318/319) and the legacy one (105/106, 167/168, events 107/169).
//! Registrations belong to a connection and die with it.

use bytes::BytesMut;
use virtumld_protocol::frame;
use virtumld_protocol::procedures::proc as p;
use virtumld_protocol::remote::*;

use super::domain::wire;
use super::registry::{event_header, Family};
use super::{err, Ctx, Reply};
use crate::driver::state::event_id;
use crate::driver::{DomainEvent, EventKind};

#[derive(Debug, Clone, PartialEq)]
enum Style {
    /// Server-assigned callback id (316).
    Callback(i32),
    /// One registration per event id, no callback id (105/167).
    Legacy,
}

#[derive(Debug, Clone)]
pub struct Registration {
    event_id: i32,
    style: Style,
    dom: Option<[u8; 16]>,
}

/// Domain events: lifecycle and reboot, for every domain or one.
pub struct DomainEvents;

impl Family for DomainEvents {
    type Event = DomainEvent;
    type Reg = Registration;

    fn message(r: &Registration, ev: &DomainEvent) -> Option<BytesMut> {
        let wanted = match ev.kind {
            EventKind::Lifecycle { .. } => event_id::LIFECYCLE,
            EventKind::Reboot => event_id::REBOOT,
        };
        (r.event_id == wanted && r.dom.is_none_or(|u| u == ev.dom.uuid))
            .then(|| encode(&r.style, ev))
    }
}

pub type Registry = super::registry::Registry<DomainEvents>;

fn encode(style: &Style, ev: &DomainEvent) -> BytesMut {
    let dom = wire(&ev.dom);
    match (style, &ev.kind) {
        (Style::Callback(id), EventKind::Lifecycle { event, detail }) => frame::encode(
            &event_header(p::DOMAIN_EVENT_CALLBACK_LIFECYCLE),
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
            &event_header(p::DOMAIN_EVENT_CALLBACK_REBOOT),
            &DomainEventCallbackRebootMsg {
                callback_id: *id,
                msg: DomainEventRebootMsg { dom },
            },
        ),
        (Style::Legacy, EventKind::Lifecycle { event, detail }) => frame::encode(
            &event_header(p::DOMAIN_EVENT_LIFECYCLE),
            &DomainEventLifecycleMsg {
                dom,
                event: *event,
                detail: *detail,
            },
        ),
        (Style::Legacy, EventKind::Reboot) => frame::encode(
            &event_header(p::DOMAIN_EVENT_REBOOT),
            &DomainEventRebootMsg { dom },
        ),
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
    let id = reg.next_callback_id();
    reg.add(
        ctx.client,
        || ctx.daemon.driver.subscribe(),
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
    let added = ctx.daemon.events.add_unique(
        ctx.client,
        || ctx.daemon.driver.subscribe(),
        Registration {
            event_id,
            style: Style::Legacy,
            dom: None,
        },
        |r| r.style == Style::Legacy && r.event_id == event_id,
    );
    if added {
        Ok(())
    } else {
        Err(err::internal(format!(
            "domain event {event_id} already registered"
        )))
    }
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
