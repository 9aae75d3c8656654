//! The state every connection shares: configuration, paths, mode, host facts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::config::Config;
use crate::driver::Driver;
use crate::paths::{Mode, Paths};
use crate::remote::events::Registry;
use crate::rpc::client::Client;

pub struct Daemon {
    pub mode: Mode,
    pub config: Config,
    pub paths: Paths,
    pub driver: Driver,
    pub events: Arc<Registry>,
    /// Storage pools (`dir`) and their volumes.
    pub storage: crate::storage::Storage,
    /// Storage pool event registrations of every connection.
    pub pool_events: Arc<crate::remote::storage::PoolEventRegistry>,
    /// `linux.uml --version`, encoded as libvirt encodes versions (0 when unknown).
    pub uml_version: u64,
    next_conn: AtomicU64,
    /// `max_clients`: a place per connected client.
    client_places: tokio::sync::Semaphore,
    clients: AtomicUsize,
    /// Signalled when the last client leaves.
    clients_gone: tokio::sync::Notify,
    /// Connected clients that have not authenticated yet (`max_anonymous_clients`).
    anonymous: AtomicUsize,
    /// Signalled when an anonymous client authenticates or leaves.
    pub anonymous_left: tokio::sync::Notify,
    /// The connections to close on shutdown. A connection is told through its client
    /// (`request_close`), so it needs no shutdown future of its own while it waits.
    connections: Mutex<Connections>,
}

#[derive(Default)]
struct Connections {
    by_id: HashMap<u64, Weak<Client>>,
    closing: bool,
}

impl Daemon {
    pub fn new(
        mode: Mode,
        config: Config,
        paths: Paths,
        uml_version: u64,
        driver: Driver,
    ) -> Daemon {
        let storage = crate::storage::Storage::load(&paths);
        let max_clients = config.max_clients;
        Daemon {
            mode,
            config,
            paths,
            driver,
            events: Arc::new(Registry::default()),
            storage,
            pool_events: Default::default(),
            uml_version,
            next_conn: AtomicU64::new(1),
            client_places: tokio::sync::Semaphore::new(max_clients),
            clients: AtomicUsize::new(0),
            clients_gone: tokio::sync::Notify::new(),
            anonymous: AtomicUsize::new(0),
            anonymous_left: tokio::sync::Notify::new(),
            connections: Mutex::default(),
        }
    }

    fn connections(&self) -> std::sync::MutexGuard<'_, Connections> {
        self.connections.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a connection for `close_connections`; one that comes after it is closed
    /// at once.
    pub fn register_connection(&self, client: &Arc<Client>) {
        let mut c = self.connections();
        if c.closing {
            drop(c);
            client.request_close();
            return;
        }
        c.by_id.insert(client.id, Arc::downgrade(client));
    }

    pub fn unregister_connection(&self, id: u64) {
        let mut c = self.connections();
        c.by_id.remove(&id);
        if c.by_id.is_empty() && c.by_id.capacity() > 64 {
            c.by_id = HashMap::new();
        }
    }

    /// Shutdown: every connection finishes its calls and closes.
    pub fn close_connections(&self) {
        let clients: Vec<Arc<Client>> = {
            let mut c = self.connections();
            c.closing = true;
            c.by_id.values().filter_map(Weak::upgrade).collect()
        };
        for client in clients {
            client.request_close();
        }
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Running guests keep an idle daemon alive (`--timeout`).
    pub fn has_running_guests(&self) -> bool {
        self.driver.has_running_guests()
    }

    pub fn client_count(&self) -> usize {
        self.clients.load(Ordering::Acquire)
    }

    /// Waits for one of the `max_anonymous_clients` places for a client that has not
    /// authenticated yet, and takes it: the caller gives it back with
    /// `anonymous_place_left`. Cancel-safe: the place is taken only by the poll that
    /// returns.
    pub async fn anonymous_place(&self) {
        let max = self.config.max_anonymous_clients;
        loop {
            let left = self.anonymous_left.notified();
            let took = self
                .anonymous
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                })
                .is_ok();
            if took {
                return;
            }
            left.await;
        }
    }

    /// Gives back a place `anonymous_place` took.
    pub fn anonymous_place_left(&self) {
        self.anonymous.fetch_sub(1, Ordering::AcqRel);
        self.anonymous_left.notify_waiters();
    }

    /// Waits for one of the `max_clients` places; the client counts (and holds the place)
    /// for as long as the guard lives, or until the connection it is handed to ends.
    pub async fn client_place(self: &Arc<Self>) -> ClientGuard {
        if let Ok(p) = self.client_places.acquire().await {
            // Given back by `client_left`: the guard needs no permit of its own.
            p.forget();
        }
        self.clients.fetch_add(1, Ordering::AcqRel);
        ClientGuard(Some(self.clone()))
    }

    /// Gives back a client place (`ClientGuard`).
    pub fn client_left(&self) {
        self.client_places.add_permits(1);
        if self.clients.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.clients_gone.notify_waiters();
        }
    }

    /// Waits until no client is connected.
    pub async fn clients_gone(&self) {
        loop {
            let gone = self.clients_gone.notified();
            tokio::pin!(gone);
            gone.as_mut().enable();
            if self.client_count() == 0 {
                return;
            }
            gone.await;
        }
    }
}

/// A connected client's place (`Daemon::client_place`).
pub struct ClientGuard(Option<Arc<Daemon>>);

impl ClientGuard {
    /// For a connection that gives the place back itself, with `Daemon::client_left`:
    /// it then needs no guard of its own.
    pub fn into_connection(mut self) {
        self.0 = None;
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            d.client_left();
        }
    }
}
