//! The state every connection shares: configuration, paths, mode, host facts.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use std::sync::Arc;

use crate::config::Config;
use crate::driver::Driver;
use crate::paths::{Mode, Paths};
use crate::remote::events::Registry;

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
    clients: AtomicUsize,
    /// Connected clients that have not authenticated yet (`max_anonymous_clients`).
    anonymous: AtomicUsize,
    /// Signalled when an anonymous client authenticates or leaves.
    pub anonymous_left: tokio::sync::Notify,
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
            clients: AtomicUsize::new(0),
            anonymous: AtomicUsize::new(0),
            anonymous_left: tokio::sync::Notify::new(),
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
    /// authenticated yet; the place is held until the guard drops.
    pub async fn anonymous_place(self: &Arc<Self>) -> AnonymousGuard {
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
                return AnonymousGuard(self.clone());
            }
            left.await;
        }
    }

    /// Counts a connected client for as long as the guard lives.
    pub fn client_guard(self: &Arc<Self>) -> ClientGuard {
        self.clients.fetch_add(1, Ordering::AcqRel);
        ClientGuard(self.clone())
    }
}

pub struct ClientGuard(Arc<Daemon>);

/// Counts a client as anonymous until it authenticates (drop the guard) or leaves.
pub struct AnonymousGuard(Arc<Daemon>);

impl Drop for AnonymousGuard {
    fn drop(&mut self) {
        self.0.anonymous.fetch_sub(1, Ordering::AcqRel);
        self.0.anonymous_left.notify_waiters();
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::AcqRel);
    }
}
