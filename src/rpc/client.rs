//! Per-connection state that dispatch reads: identity of the transport, authentication
//! phase, whether CONNECT_OPEN happened and how, keepalive, and the outgoing queue.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;

use super::outbox::Outbox;
use super::sasl::ClientAuth;
use super::stream::Streams;
use crate::config::AuthMethod;

/// How the client reached the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    Unix {
        read_only: bool,
    },
    Tcp,
    /// A TLS connection whose handshake (and client certificate check) passed; `dn` is the
    /// client certificate's Distinguished Name when it sent one.
    Tls {
        dn: Option<String>,
    },
}

impl Transport {
    /// UNIX sockets are local and TLS is encrypted; libvirt calls both "secure".
    pub fn is_secure(&self) -> bool {
        matches!(self, Transport::Unix { .. } | Transport::Tls { .. })
    }
}

/// Set in `Client::calls` while the connection task waits for a call to finish.
const WANT_SLOT: usize = 1 << (usize::BITS - 1);

/// One of the connection's `max_client_requests` places, held while a call is in
/// service (also when its task panics); a finished call wakes a connection task that
/// waits for a place.
pub struct CallSlot(Arc<Client>);

impl Drop for CallSlot {
    fn drop(&mut self) {
        if self.0.calls.fetch_sub(1, Ordering::AcqRel) & WANT_SLOT != 0 {
            self.0.outbox.wake();
        }
    }
}

/// What CONNECT_OPEN established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub read_only: bool,
}

pub struct Client {
    pub id: u64,
    pub transport: Transport,
    /// Outgoing messages, written by the connection task.
    pub outbox: Outbox,
    authenticated: AtomicBool,
    opened: Mutex<Option<Opened>>,
    keepalive: AtomicBool,
    /// Set by `request_close`.
    close: AtomicBool,
    /// Set by `say_goodbye`.
    goodbye: AtomicBool,
    /// Calls in service (`CallSlot`s), plus `WANT_SLOT` while the connection task waits
    /// for one to finish.
    calls: AtomicUsize,
    pub streams: Streams,
    /// The listener's authentication method and the SASL exchange's state.
    pub auth: ClientAuth,
}

impl Client {
    pub fn new(id: u64, transport: Transport, auth: AuthMethod, peer: String) -> Client {
        Client {
            id,
            transport,
            outbox: Outbox::default(),
            // A listener with auth "none" lets its clients in at once.
            authenticated: AtomicBool::new(auth == AuthMethod::None),
            auth: ClientAuth::new(auth, peer),
            opened: Mutex::new(None),
            keepalive: AtomicBool::new(false),
            close: AtomicBool::new(false),
            goodbye: AtomicBool::new(false),
            calls: AtomicUsize::new(0),
            streams: Streams::default(),
        }
    }

    pub fn is_authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Acquire)
    }

    /// The SASL exchange succeeded.
    pub fn set_authenticated(&self) {
        self.authenticated.store(true, Ordering::Release);
    }

    /// True when the transport itself only allows read-only access.
    pub fn transport_read_only(&self) -> bool {
        matches!(self.transport, Transport::Unix { read_only: true })
    }

    pub fn opened(&self) -> Option<Opened> {
        *self.opened.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records CONNECT_OPEN; fails when the connection is already open.
    pub fn set_opened(&self, o: Opened) -> bool {
        let mut g = self.opened.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_some() {
            return false;
        }
        *g = Some(o);
        true
    }

    pub fn clear_opened(&self) {
        *self.opened.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn keepalive_enabled(&self) -> bool {
        self.keepalive.load(Ordering::Acquire)
    }

    /// The client asked about the keepalive feature, so it can answer PINGs.
    pub fn enable_keepalive(&self) {
        if !self.keepalive.swap(true, Ordering::AcqRel) {
            self.outbox.wake();
        }
    }

    /// Asks the connection loop to close the connection.
    pub fn request_close(&self) {
        self.close.store(true, Ordering::Release);
        self.outbox.wake();
    }

    pub fn close_requested(&self) -> bool {
        self.close.load(Ordering::Acquire)
    }

    /// CONNECT_CLOSE was answered: the connection serves nothing more (the connection task
    /// runs it, so it needs no wake-up).
    pub fn say_goodbye(&self) {
        self.goodbye.store(true, Ordering::Release);
    }

    pub fn said_goodbye(&self) -> bool {
        self.goodbye.load(Ordering::Acquire)
    }

    /// A place for one more call when fewer than `max` are in service.
    pub fn try_call_slot(self: &Arc<Self>, max: usize) -> Option<CallSlot> {
        self.calls
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n & !WANT_SLOT < max).then_some(n + 1)
            })
            .ok()?;
        Some(CallSlot(self.clone()))
    }

    /// For the connection task, after registering with the outbox: calls in service, and
    /// from now on a wake-up when one finishes (until `no_slot_wanted`).
    pub fn want_slot(&self) -> usize {
        self.calls.fetch_or(WANT_SLOT, Ordering::AcqRel) & !WANT_SLOT
    }

    pub fn no_slot_wanted(&self) {
        self.calls.fetch_and(!WANT_SLOT, Ordering::AcqRel);
    }

    /// Queues a whole encoded message; waits while the queue is full so a client that
    /// does not read holds back only its own calls.
    pub async fn send(&self, msg: BytesMut) -> bool {
        self.outbox.send(msg).await
    }

    /// Queues a message without waiting; false when the queue is full or closed.
    pub fn try_send(&self, msg: BytesMut) -> bool {
        self.outbox.try_send(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::outbox::test_waker::Flag;
    use std::task::Waker;

    #[test]
    fn call_slots_are_bounded_and_a_finished_call_wakes_a_waiting_connection() {
        let c = Arc::new(Client::new(
            1,
            Transport::Tcp,
            AuthMethod::None,
            "tcp:x".into(),
        ));
        let a = c.try_call_slot(2).expect("first");
        let b = c.try_call_slot(2).expect("second");
        assert!(c.try_call_slot(2).is_none());
        let flag = Arc::new(Flag::default());
        c.outbox.register(&Waker::from(flag.clone()));
        // Not waiting for a slot: no wake-up.
        drop(a);
        assert!(!flag.taken());
        let a = c.try_call_slot(2).expect("freed");
        assert_eq!(c.want_slot(), 2);
        drop(b);
        assert!(flag.taken());
        c.no_slot_wanted();
        assert!(c.try_call_slot(2).is_some());
        drop(a);
        assert_eq!(c.want_slot(), 0);
    }
}
