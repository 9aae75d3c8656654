//! The UML driver: libvirt's domain semantics (definitions, states, jobs, events,
//! persistence) over the `virtumld-uml` backend. No XDR and no sockets here.
//!
//! Locking: the domain index is a `std::sync::RwLock` held only to look up or insert. Each
//! domain has an async job lock, held across backend I/O by operations that change the
//! domain (start, destroy, define, …), and a `std::sync::Mutex` over its data, held only
//! for short reads and writes, never across an await. Readers (info, state, XML) never wait
//! for a job, so a stuck guest delays only calls that must change it.

mod lifecycle;
pub mod persist;
pub mod state;
pub mod stats;
mod status;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::broadcast;
use virtumld_protocol::error::{code, format_message};
use virtumld_uml::console::ConsolePump;
use virtumld_uml::domain::{self as domxml, DomainDef, LiveXml};
use virtumld_uml::process::Guest;

use crate::paths::Paths;
use state::{domain_state as st, event, paused, running, shutoff, StateReason};

/// How long a caller waits for another call's job on the same domain.
const JOB_WAIT: Duration = Duration::from_secs(30);

/// A driver failure: a libvirt error code and the complete message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub code: i32,
    pub message: String,
}

impl Error {
    pub fn new(c: i32, detail: impl AsRef<str>) -> Error {
        Error {
            code: c,
            message: format_message(c, detail.as_ref()),
        }
    }

    fn def(e: domxml::DefError) -> Error {
        Error {
            code: e.vir_code(),
            message: e.to_string(),
        }
    }

    fn not_running() -> Error {
        Error::new(code::OPERATION_INVALID, "domain is not running")
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// What identifies a domain to clients: name, uuid, and id (-1 when inactive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomRef {
    pub name: String,
    pub uuid: [u8; 16],
    pub id: i32,
}

/// What a lifecycle change tells subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    Lifecycle { event: i32, detail: i32 },
    Reboot,
}

#[derive(Debug, Clone)]
pub struct DomainEvent {
    pub dom: DomRef,
    pub kind: EventKind,
}

/// Everything `virDomainGetInfo` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomInfo {
    pub state: i32,
    pub max_mem_kib: u64,
    pub memory_kib: u64,
    pub vcpus: u32,
    pub cpu_time_ns: u64,
}

/// Why the API asked a running guest to stop, so its exit is reported as intended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopIntent {
    Shutdown,
    Reboot,
    Destroy,
}

/// A console line of a running guest and its pump.
struct LivePump {
    /// libvirt alias: `console0`, `serial0`.
    alias: String,
    /// The guest's spare copy of the pty master (see `PtyLine`), for a later reattach.
    guest_fd: i32,
    pump: Arc<ConsolePump>,
}

/// A running guest: its process, console pumps and the definition it runs with.
struct Live {
    def: Arc<DomainDef>,
    id: i32,
    guest: Guest,
    /// One pump per pty line.
    pumps: Vec<LivePump>,
    intent: Option<StopIntent>,
    /// Bumped on every (re)launch so a watcher of an earlier process does nothing.
    generation: u64,
}

struct Data {
    /// The persistent definition; None for a transient domain.
    config: Option<Arc<DomainDef>>,
    live: Option<Live>,
    autostart: bool,
    state: StateReason,
    /// Set once the domain has left the index (undefined while inactive, or transient
    /// and stopped): handles still held elsewhere must not act on it.
    removed: bool,
    /// Bumped by every pause or resume recorded, so that the late answer to a request
    /// abandoned earlier is only believed if nothing was learnt since.
    pause_changes: u64,
}

pub struct DomainObj {
    pub name: String,
    pub uuid: [u8; 16],
    /// Shared so that a job can also be held by a task that owns it (see `take_job`).
    job: Arc<tokio::sync::Mutex<()>>,
    data: Mutex<Data>,
    /// How many destroys are waiting for or holding the job. A call that waits for the
    /// guest to answer (`lifecycle::guest_command`) gives up as soon as this is non-zero,
    /// so that, as with libvirt, a destroy never queues behind a guest that does not
    /// answer.
    destroying: tokio::sync::watch::Sender<u32>,
}

impl DomainObj {
    /// A domain that is not running, as freshly defined or loaded.
    fn new(
        name: String,
        uuid: [u8; 16],
        config: Option<Arc<DomainDef>>,
        autostart: bool,
    ) -> Arc<DomainObj> {
        Arc::new(DomainObj {
            name,
            uuid,
            job: Arc::new(tokio::sync::Mutex::new(())),
            destroying: tokio::sync::watch::Sender::new(0),
            data: Mutex::new(Data {
                config,
                live: None,
                autostart,
                state: StateReason::new(st::SHUTOFF, shutoff::UNKNOWN),
                removed: false,
                pause_changes: 0,
            }),
        })
    }

    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn dom_ref(&self) -> DomRef {
        DomRef {
            name: self.name.clone(),
            uuid: self.uuid,
            id: self.data().live.as_ref().map_or(-1, |l| l.id),
        }
    }

    async fn begin_job(&self) -> Result<tokio::sync::MutexGuard<'_, ()>> {
        let guard = tokio::time::timeout(JOB_WAIT, self.job.lock())
            .await
            .map_err(|_| {
                Error::new(
                    code::OPERATION_TIMEOUT,
                    format!(
                        "cannot acquire state change lock for domain '{}'",
                        self.name
                    ),
                )
            })?;
        if self.data().removed {
            return Err(no_domain_uuid(&self.uuid, &self.name));
        }
        Ok(guard)
    }

    /// The job at once, as a guard a spawned task can own; None while another job runs.
    fn take_job(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        self.job.clone().try_lock_owned().ok()
    }

    /// Whether a job (a start in progress, a stop, …) holds the domain now.
    fn busy(&self) -> bool {
        self.job.try_lock().is_err()
    }
}

/// Who holds each console line: `(domain uuid, alias)` → (session token, revoke signal).
type ConsoleHolders = HashMap<([u8; 16], String), (u64, tokio::sync::watch::Sender<bool>)>;

/// The domains, by uuid (what clients name) and by name (lookups, listings in order).
#[derive(Default)]
struct Index {
    by_uuid: HashMap<[u8; 16], Arc<DomainObj>>,
    by_name: std::collections::BTreeMap<String, Arc<DomainObj>>,
}

struct Shared {
    paths: Paths,
    consoles: Mutex<ConsoleHolders>,
    domains: RwLock<Index>,
    next_id: AtomicI32,
    events: broadcast::Sender<DomainEvent>,
    next_generation: std::sync::atomic::AtomicU64,
}

/// A cheap handle to the driver.
#[derive(Clone)]
pub struct Driver(Arc<Shared>);

pub fn uuid_string(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn no_domain_uuid(uuid: &[u8; 16], name: &str) -> Error {
    Error::new(
        code::NO_DOMAIN,
        format!(
            "no domain with matching uuid '{}' ({name})",
            uuid_string(uuid)
        ),
    )
}

/// `virConnectListAllDomains` filter flags.
pub mod list_flags {
    pub const ACTIVE: u32 = 1;
    pub const INACTIVE: u32 = 2;
    pub const PERSISTENT: u32 = 4;
    pub const TRANSIENT: u32 = 8;
    pub const RUNNING: u32 = 16;
    pub const PAUSED: u32 = 32;
    pub const SHUTOFF: u32 = 64;
    pub const OTHER: u32 = 128;
    pub const MANAGEDSAVE: u32 = 256;
    pub const NO_MANAGEDSAVE: u32 = 512;
    pub const AUTOSTART: u32 = 1024;
    pub const NO_AUTOSTART: u32 = 2048;
    pub const HAS_SNAPSHOT: u32 = 4096;
    pub const NO_SNAPSHOT: u32 = 8192;
    pub const HAS_CHECKPOINT: u32 = 16384;
    pub const NO_CHECKPOINT: u32 = 32768;
    pub const ALL: u32 = 65535;
}

impl Driver {
    /// Loads every saved definition, reattaches to guests that survived a daemon restart,
    /// and starts the autostart ones.
    pub async fn start(paths: Paths) -> Driver {
        let (events, _) = broadcast::channel(1024);
        let d = Driver(Arc::new(Shared {
            paths,
            domains: RwLock::new(Index::default()),
            next_id: AtomicI32::new(1),
            events,
            next_generation: std::sync::atomic::AtomicU64::new(1),
            consoles: Mutex::new(HashMap::new()),
        }));
        d.load().await;
        d
    }

    pub fn subscribe(&self) -> broadcast::Receiver<DomainEvent> {
        self.0.events.subscribe()
    }

    fn emit(&self, dom: DomRef, kind: EventKind) {
        tracing::info!(domain = %dom.name, ?kind, "event");
        let _ = self.0.events.send(DomainEvent { dom, kind });
    }

    fn emit_lifecycle(&self, obj: &DomainObj, ev: i32, detail: i32) {
        self.emit(obj.dom_ref(), EventKind::Lifecycle { event: ev, detail });
    }

    fn index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.0.domains.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Every domain, by name.
    fn all(&self) -> Vec<Arc<DomainObj>> {
        self.index().by_name.values().cloned().collect()
    }

    /// Whether a guest runs, or a job may be about to start one (a start in progress, or
    /// one a previous daemon began and this one is completing).
    pub fn has_running_guests(&self) -> bool {
        self.all()
            .iter()
            .any(|o| o.data().live.is_some() || o.busy())
    }

    // ---- lookups -------------------------------------------------------------------

    pub fn by_uuid(&self, uuid: &[u8; 16]) -> Result<Arc<DomainObj>> {
        self.index().by_uuid.get(uuid).cloned().ok_or_else(|| {
            Error::new(
                code::NO_DOMAIN,
                format!("no domain with matching uuid '{}'", uuid_string(uuid)),
            )
        })
    }

    /// The domain a client names by (name, uuid): the uuid decides, as in libvirt.
    pub fn get(&self, name: &str, uuid: &[u8; 16]) -> Result<Arc<DomainObj>> {
        self.by_uuid(uuid).map_err(|_| no_domain_uuid(uuid, name))
    }

    pub fn by_name(&self, name: &str) -> Result<Arc<DomainObj>> {
        self.index().by_name.get(name).cloned().ok_or_else(|| {
            Error::new(
                code::NO_DOMAIN,
                format!("no domain with matching name '{name}'"),
            )
        })
    }

    pub fn by_id(&self, id: i32) -> Result<Arc<DomainObj>> {
        self.all()
            .into_iter()
            .find(|o| o.data().live.as_ref().is_some_and(|l| l.id == id))
            .ok_or_else(|| Error::new(code::NO_DOMAIN, format!("no domain with matching id {id}")))
    }

    pub fn list(&self, flags: u32) -> Result<Vec<DomRef>> {
        use list_flags as f;
        if flags & !f::ALL != 0 {
            return Err(Error::new(
                code::INVALID_ARG,
                format!("virConnectListAllDomains: unsupported flags (0x{flags:x})"),
            ));
        }
        // Each pair of opposite filters: neither or both set means "either".
        let pass = |yes: u32, no: u32, is: bool| {
            let (y, n) = (flags & yes != 0, flags & no != 0);
            y == n || (y && is) || (n && !is)
        };
        let state_filter = flags & (f::RUNNING | f::PAUSED | f::SHUTOFF | f::OTHER);
        Ok(self
            .all()
            .into_iter()
            .filter(|o| {
                let d = o.data();
                let active = d.live.is_some();
                let state_ok = state_filter == 0
                    || match d.state.state {
                        st::RUNNING => flags & f::RUNNING != 0,
                        st::PAUSED => flags & f::PAUSED != 0,
                        st::SHUTOFF => flags & f::SHUTOFF != 0,
                        _ => flags & f::OTHER != 0,
                    };
                pass(f::ACTIVE, f::INACTIVE, active)
                    && pass(f::PERSISTENT, f::TRANSIENT, d.config.is_some())
                    && pass(f::MANAGEDSAVE, f::NO_MANAGEDSAVE, false)
                    && pass(f::AUTOSTART, f::NO_AUTOSTART, d.autostart)
                    && pass(f::HAS_SNAPSHOT, f::NO_SNAPSHOT, false)
                    && pass(f::HAS_CHECKPOINT, f::NO_CHECKPOINT, false)
                    && state_ok
            })
            .map(|o| o.dom_ref())
            .collect())
    }

    pub fn active_ids(&self) -> Vec<i32> {
        let mut ids: Vec<i32> = self
            .all()
            .iter()
            .filter_map(|o| o.data().live.as_ref().map(|l| l.id))
            .collect();
        ids.sort_unstable();
        ids
    }

    pub fn inactive_names(&self) -> Vec<String> {
        self.all()
            .iter()
            .filter(|o| o.data().live.is_none())
            .map(|o| o.name.clone())
            .collect()
    }

    // ---- queries -------------------------------------------------------------------

    pub fn state(&self, obj: &DomainObj) -> StateReason {
        obj.data().state
    }

    pub fn info(&self, obj: &DomainObj) -> DomInfo {
        let d = obj.data();
        let def = d
            .live
            .as_ref()
            .map(|l| l.def.clone())
            .or_else(|| d.config.clone());
        let (max, cur, vcpus) = def.map_or((0, 0, 1), |def| {
            (def.memory_kib, def.current_memory_kib, def.vcpus)
        });
        DomInfo {
            state: d.state.state,
            max_mem_kib: max,
            memory_kib: cur,
            vcpus,
            cpu_time_ns: d.live.as_ref().map_or(0, |l| l.guest.cpu_time_ns()),
        }
    }

    /// The domain XML: the live form (id, ptys, aliases) unless `inactive` is asked.
    /// Formatted outside the domain's lock, and on the blocking pool when the definition
    /// is large (a description or metadata can make it megabytes), so that formatting it
    /// delays no other client served by the same worker.
    pub async fn xml(&self, obj: &DomainObj, inactive: bool) -> String {
        let (def, live) = {
            let d = obj.data();
            match (&d.live, inactive, &d.config) {
                (Some(l), false, _) | (Some(l), true, None) => {
                    let live = (!inactive).then(|| LiveXml {
                        id: l.id,
                        pty_paths: pty_paths(l),
                    });
                    (l.def.clone(), live)
                }
                (_, _, Some(c)) => (c.clone(), None),
                (None, _, None) => return String::new(),
            }
        };
        if approx_xml_len(&def) < INLINE_XML_MAX {
            return def.to_xml(live.as_ref());
        }
        // One at a time: clients fetching large definitions then share one core, never
        // take all of them from everyone else.
        let _turn = LARGE_XML_FORMATS.acquire().await;
        tokio::task::spawn_blocking(move || def.to_xml(live.as_ref()))
            .await
            .unwrap_or_default()
    }

    pub fn is_active(&self, obj: &DomainObj) -> bool {
        obj.data().live.is_some()
    }

    pub fn is_persistent(&self, obj: &DomainObj) -> bool {
        obj.data().config.is_some()
    }

    pub fn autostart(&self, obj: &DomainObj) -> bool {
        obj.data().autostart
    }

    /// Takes a console line of a running guest for one client session: the line named by
    /// `dev_name` (an alias such as `console0` or `serial1`), else the first console. With
    /// `force` an existing session is revoked; without it, it is an error.
    pub fn claim_console(
        &self,
        obj: &DomainObj,
        dev_name: Option<&str>,
        force: bool,
    ) -> Result<(Arc<ConsolePump>, ConsoleClaim)> {
        let pump = {
            let d = obj.data();
            let live = d.live.as_ref().ok_or_else(Error::not_running)?;
            let alias = live.def.find_console(dev_name).ok_or_else(|| {
                Error::new(
                    code::INTERNAL_ERROR,
                    format!(
                        "cannot find character device {}",
                        dev_name.unwrap_or("<null>")
                    ),
                )
            })?;
            let dev = live.def.char_dev(&alias);
            if !matches!(dev.map(|c| &c.kind), Some(domxml::CharKind::Pty)) {
                return Err(Error::new(
                    code::OPERATION_UNSUPPORTED,
                    format!("character device {} is not using a PTY", alias.alias),
                ));
            }
            live.pumps
                .iter()
                .find(|p| p.alias == alias.alias)
                .map(|p| (p.alias.clone(), p.pump.clone()))
                .ok_or_else(|| {
                    Error::new(
                        code::OPERATION_FAILED,
                        format!(
                            "character device {} has no pty yet (the guest has not opened it)",
                            alias.alias
                        ),
                    )
                })?
        };
        let (alias, pump) = pump;
        if pump.is_closed() {
            // The guest process is gone and its restart (reboot) or stop is under way.
            return Err(Error::new(
                code::OPERATION_INVALID,
                format!("character device {alias} is not available: the guest is restarting or stopping"),
            ));
        }
        let key = (obj.uuid, alias);
        let mut holders = self.0.consoles.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, revoke)) = holders.get(&key) {
            if !force {
                return Err(Error::new(
                    code::OPERATION_FAILED,
                    "Active console session exists for this domain",
                ));
            }
            let _ = revoke.send(true);
        }
        let token = self.0.next_generation.fetch_add(1, Ordering::Relaxed);
        let (tx, revoked) = tokio::sync::watch::channel(false);
        holders.insert(key.clone(), (token, tx));
        Ok((
            pump,
            ConsoleClaim {
                driver: self.clone(),
                key,
                token,
                revoked,
            },
        ))
    }

    // ---- definitions ---------------------------------------------------------------

    fn config_path(&self, name: &str) -> PathBuf {
        self.0.paths.domain_config_dir.join(format!("{name}.xml"))
    }

    fn autostart_path(&self, name: &str) -> PathBuf {
        self.0.paths.autostart_dir.join(format!("{name}.xml"))
    }

    fn save_config(&self, def: &DomainDef) -> Result<()> {
        persist::write_atomic(&self.config_path(&def.name), def.to_xml(None).as_bytes()).map_err(
            |e| {
                Error::new(
                    code::OPERATION_FAILED,
                    format!("cannot save the definition of '{}': {e}", def.name),
                )
            },
        )
    }

    /// The domain a new definition belongs to, refusing name/uuid clashes as libvirt;
    /// a new (inactive, transient until saved) object when there is none. Checked and
    /// inserted under one lock, so two concurrent defines of one name cannot both win.
    /// The flag says whether the object is new.
    fn find_or_insert(&self, def: &DomainDef) -> Result<(Arc<DomainObj>, bool)> {
        let mut index = self.0.domains.write().unwrap_or_else(|e| e.into_inner());
        let clash = |o: &DomainObj| {
            Error::new(
                code::OPERATION_FAILED,
                format!(
                    "domain '{}' already exists with uuid {}",
                    o.name,
                    uuid_string(&o.uuid)
                ),
            )
        };
        if let Some(o) = index.by_uuid.get(&def.uuid) {
            if o.name != def.name {
                return Err(clash(o));
            }
            return Ok((o.clone(), false));
        }
        if let Some(o) = index.by_name.get(&def.name) {
            return Err(clash(o));
        }
        let obj = DomainObj::new(def.name.clone(), def.uuid, None, false);
        index.by_name.insert(obj.name.clone(), obj.clone());
        index.by_uuid.insert(obj.uuid, obj.clone());
        Ok((obj, true))
    }

    fn insert(&self, obj: Arc<DomainObj>) {
        let mut index = self.0.domains.write().unwrap_or_else(|e| e.into_inner());
        index.by_name.insert(obj.name.clone(), obj.clone());
        index.by_uuid.insert(obj.uuid, obj);
    }

    fn remove(&self, obj: &DomainObj) {
        obj.data().removed = true;
        let mut index = self.0.domains.write().unwrap_or_else(|e| e.into_inner());
        index.by_uuid.remove(&obj.uuid);
        index.by_name.remove(&obj.name);
    }

    fn check_kernel(def: &DomainDef) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(&def.os.kernel) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
            _ => Err(Error::new(
                code::CONFIG_UNSUPPORTED,
                format!(
                    "the UML kernel '{}' is not an executable file",
                    def.os.kernel.display()
                ),
            )),
        }
    }

    /// Parses a definition on a blocking thread: a hostile document can cost hundreds of
    /// milliseconds of CPU, which on a runtime worker would stall every connection's I/O.
    pub(super) async fn parse_def(xml: &str) -> Result<DomainDef> {
        let xml = xml.to_owned();
        tokio::task::spawn_blocking(move || domxml::parse(&xml))
            .await
            .map_err(|e| Error::new(code::INTERNAL_ERROR, format!("XML parser failed: {e}")))?
            .map_err(Error::def)
    }

    /// `virDomainDefineXML`: adds or replaces a persistent definition.
    pub async fn define(&self, xml: &str) -> Result<DomRef> {
        let def = Self::parse_def(xml).await?;
        let (obj, _) = self.find_or_insert(&def)?;
        let _job = match obj.begin_job().await {
            Ok(j) => j,
            Err(e) => return Err(e),
        };
        let had_config = obj.data().config.is_some();
        if let Err(e) = self.save_config(&def) {
            if !had_config && obj.data().live.is_none() {
                self.remove(&obj);
            }
            return Err(e);
        }
        obj.data().config = Some(Arc::new(def));
        let detail = if had_config {
            event::DEFINED_UPDATED
        } else {
            event::DEFINED_ADDED
        };
        self.emit_lifecycle(&obj, event::DEFINED, detail);
        Ok(obj.dom_ref())
    }

    /// `virDomainUndefine`: a running domain becomes transient and goes when it stops.
    pub async fn undefine(&self, obj: &Arc<DomainObj>) -> Result<()> {
        let _job = obj.begin_job().await?;
        if obj.data().config.is_none() {
            return Err(Error::new(
                code::OPERATION_INVALID,
                "cannot undefine transient domain",
            ));
        }
        persist::remove(&self.autostart_path(&obj.name)).ok();
        persist::remove(&self.config_path(&obj.name)).map_err(|e| {
            Error::new(
                code::OPERATION_FAILED,
                format!("cannot remove the definition of '{}': {e}", obj.name),
            )
        })?;
        let active = {
            let mut d = obj.data();
            d.config = None;
            d.autostart = false;
            d.live.is_some()
        };
        self.emit_lifecycle(obj, event::UNDEFINED, event::UNDEFINED_REMOVED);
        if !active {
            self.remove(obj);
        }
        Ok(())
    }

    pub async fn set_autostart(&self, obj: &Arc<DomainObj>, on: bool) -> Result<()> {
        let _job = obj.begin_job().await?;
        if obj.data().config.is_none() {
            return Err(Error::new(
                code::OPERATION_INVALID,
                "cannot set autostart for transient domain",
            ));
        }
        let link = self.autostart_path(&obj.name);
        let result = if on {
            std::fs::create_dir_all(&self.0.paths.autostart_dir).and_then(|_| {
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(self.config_path(&obj.name), &link)
            })
        } else {
            persist::remove(&link)
        };
        result.map_err(|e| {
            Error::new(
                code::OPERATION_FAILED,
                format!("cannot change autostart of '{}': {e}", obj.name),
            )
        })?;
        obj.data().autostart = on;
        Ok(())
    }

    /// `virDomainSetMaxMemory` / `virDomainSetMemoryFlags`: UML cannot resize a running
    /// guest (no balloon), so only the persistent definition changes, and it is saved.
    pub async fn set_memory(
        &self,
        obj: &Arc<DomainObj>,
        kib: u64,
        maximum: bool,
        live: bool,
        config: bool,
    ) -> Result<()> {
        let _job = obj.begin_job().await?;
        let (active, cfg) = {
            let d = obj.data();
            (d.live.is_some(), d.config.clone())
        };
        // "Current" means live for a running guest, config otherwise.
        let (live, config) = if !live && !config {
            (active, !active)
        } else {
            (live, config)
        };
        if live {
            if !active {
                return Err(Error::not_running());
            }
            return Err(Error::new(
                code::OPERATION_INVALID,
                if maximum {
                    "cannot resize the maximum memory on an active domain"
                } else {
                    "a running UML guest cannot change its memory size (UML has no balloon); \
                     change the persistent configuration with --config and restart it"
                },
            ));
        }
        let Some(cfg) = cfg.filter(|_| config) else {
            return Err(Error::new(
                code::OPERATION_INVALID,
                "cannot change the persistent configuration of a transient domain",
            ));
        };
        let mut def = (*cfg).clone();
        if maximum {
            def.memory_kib = kib;
            def.current_memory_kib = def.current_memory_kib.min(kib);
        } else {
            if kib > def.memory_kib {
                return Err(Error::new(
                    code::INVALID_ARG,
                    "cannot set memory higher than max memory",
                ));
            }
            def.current_memory_kib = kib;
        }
        def.validate().map_err(Error::def)?;
        self.save_config(&def)?;
        obj.data().config = Some(Arc::new(def));
        Ok(())
    }
}

/// A console session's hold on its line; dropping it frees the line.
pub struct ConsoleClaim {
    driver: Driver,
    key: ([u8; 16], String),
    token: u64,
    /// Becomes true when another client takes the line over with `--force`.
    pub revoked: tokio::sync::watch::Receiver<bool>,
}

impl Drop for ConsoleClaim {
    fn drop(&mut self) {
        let mut holders = self
            .driver
            .0
            .consoles
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if holders
            .get(&self.key)
            .is_some_and(|(t, _)| *t == self.token)
        {
            holders.remove(&self.key);
        }
    }
}

/// Definitions whose XML is estimated below this are formatted in place.
const INLINE_XML_MAX: usize = 64 * 1024;

/// Formatting of larger definitions, on the blocking pool, one at a time.
static LARGE_XML_FORMATS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// A cheap over-estimate of a definition's XML size: its free-text parts plus a generous
/// allowance per device.
fn approx_xml_len(def: &DomainDef) -> usize {
    let text = [&def.title, &def.description, &def.metadata, &def.os.cmdline]
        .iter()
        .map(|s| s.as_ref().map_or(0, |s| s.len()))
        .sum::<usize>();
    text + 1024 + 512 * (def.disks.len() + def.consoles.len() + def.serials.len())
}

fn pty_paths(l: &Live) -> Vec<(String, PathBuf)> {
    l.pumps
        .iter()
        .map(|p| (p.alias.clone(), p.pump.pty().to_path_buf()))
        .collect()
}

/// Initial state for a freshly started guest.
fn running_state(paused_start: bool) -> StateReason {
    if paused_start {
        StateReason::new(st::PAUSED, paused::USER)
    } else {
        StateReason::new(st::RUNNING, running::BOOTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_format() {
        let u = [
            0xb4, 0x43, 0x3f, 0xc2, 0xa2, 0x2e, 0xff, 0xb3, 0x0a, 0x3d, 0x9c, 0x17, 0x3b, 0x39,
            0x58, 0x00,
        ];
        assert_eq!(uuid_string(&u), "b4433fc2-a22e-ffb3-0a3d-9c173b395800");
    }
}
