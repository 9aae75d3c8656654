//! Per-connection state that dispatch reads: identity of the transport, authentication
//! phase, whether CONNECT_OPEN happened and how, keepalive, and the outgoing queue.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use bytes::BytesMut;
use tokio::sync::Notify;

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
    /// Wakes the connection loop: keepalive was switched on or a close was requested.
    wake: Notify,
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
            wake: Notify::new(),
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
            self.wake.notify_one();
        }
    }

    /// Asks the connection loop to close the connection.
    pub fn request_close(&self) {
        self.close.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    pub fn close_requested(&self) -> bool {
        self.close.load(Ordering::Acquire)
    }

    /// Waits for `enable_keepalive` or `request_close`.
    pub async fn woken(&self) {
        self.wake.notified().await
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
