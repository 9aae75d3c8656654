//! Storage pools of type `dir` and their volumes (plain files), with libvirtd's layout:
//! definitions in `<etc>/storage/NAME.xml`, autostart links in `<etc>/storage/autostart/`,
//! and a state file per active pool in `<run>/storage/NAME.xml` so a restarted daemon
//! finds its active pools active again. No XDR here.
//!
//! A pool's volumes are the files and directories in its target directory, read when
//! asked (so a refresh is never needed to see a file, and never stale). Names starting
//! with a dot are not volumes.
//!
//! Locking: one mutex over the pool table, held for each operation (they are short file
//! system calls). Volume data is written after the lock is released.

pub mod xml;

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;
use virtumld_protocol::error::{code, format_message};

use crate::driver::persist;
use crate::paths::Paths;
use xml::{PoolDef, PoolLive, VolDef, VolInfo};

/// A storage failure: a libvirt error code (domain VIR_FROM_STORAGE) and its whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub code: i32,
    pub message: String,
}

impl Error {
    pub fn new(c: i32, detail: impl AsRef<str>) -> Error {
        let detail = detail.as_ref();
        let message = match c {
            code::NO_STORAGE_POOL => format!("Storage pool not found: {detail}"),
            code::NO_STORAGE_VOL => format!("Storage volume not found: {detail}"),
            code::STORAGE_VOL_EXIST => format!("storage volume already exists: {detail}"),
            code::OVERFLOW => format!("numerical overflow: {detail}"),
            _ => format_message(c, detail),
        };
        Error { code: c, message }
    }

    /// A failed system call, worded as libvirt's `virReportSystemError`.
    fn system(what: impl AsRef<str>, e: &io::Error) -> Error {
        Error::new(code::SYSTEM_ERROR, format!("{}: {e}", what.as_ref()))
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Permissions a pool or volume asks for (`<permissions>`); `None` leaves the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Perms {
    pub mode: Option<u32>,
    pub owner: Option<u32>,
    pub group: Option<u32>,
}

/// What identifies a pool to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRef {
    pub name: String,
    pub uuid: [u8; 16],
}

/// What identifies a volume to clients: pool name, volume name, key (its path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolRef {
    pub pool: String,
    pub name: String,
    pub key: String,
}

/// `virStoragePoolState`.
pub mod pool_state {
    pub const INACTIVE: u8 = 0;
    pub const RUNNING: u8 = 2;
}

/// `virStoragePoolEventLifecycleType`.
pub mod pool_event {
    pub const DEFINED: i32 = 0;
    pub const UNDEFINED: i32 = 1;
    pub const STARTED: i32 = 2;
    pub const STOPPED: i32 = 3;
    pub const CREATED: i32 = 4;
    pub const DELETED: i32 = 5;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolEventKind {
    Lifecycle { event: i32, detail: i32 },
    Refresh,
}

#[derive(Debug, Clone)]
pub struct PoolEvent {
    pub pool: PoolRef,
    pub kind: PoolEventKind,
}

/// `virConnectListAllStoragePoolsFlags`.
pub mod list_flags {
    pub const INACTIVE: u32 = 1;
    pub const ACTIVE: u32 = 2;
    pub const PERSISTENT: u32 = 4;
    pub const TRANSIENT: u32 = 8;
    pub const AUTOSTART: u32 = 16;
    pub const NO_AUTOSTART: u32 = 32;
    pub const DIR: u32 = 64;
    /// Every pool type bit, DIR through ISCSI_DIRECT.
    pub const TYPES: u32 = ((1 << 20) - 1) & !63;
    pub const ALL: u32 = (1 << 20) - 1;
}

/// Build and create flags (`virStoragePoolBuildFlags`, `virStoragePoolCreateFlags`).
pub mod build_flags {
    pub const OVERWRITE: u32 = 4;
    pub const NO_OVERWRITE: u32 = 8;
    pub const CREATE_WITH_BUILD: u32 = 1;
    pub const CREATE_WITH_BUILD_OVERWRITE: u32 = 2;
    pub const CREATE_WITH_BUILD_NO_OVERWRITE: u32 = 4;
}

/// Mode of a pool directory libvirt creates when none is asked for.
const DEFAULT_POOL_MODE: u32 = 0o711;
/// Mode of a new volume when none is asked for.
const DEFAULT_VOL_MODE: u32 = 0o600;

struct Pool {
    def: PoolDef,
    /// A definition given while the pool was active, used from its next start.
    pending: Option<PoolDef>,
    persistent: bool,
    active: bool,
    autostart: bool,
}

impl Pool {
    fn pool_ref(&self) -> PoolRef {
        PoolRef {
            name: self.def.name.clone(),
            uuid: self.def.uuid,
        }
    }
}

pub struct Storage {
    config_dir: PathBuf,
    autostart_dir: PathBuf,
    state_dir: PathBuf,
    pools: Mutex<BTreeMap<String, Pool>>,
    events: broadcast::Sender<PoolEvent>,
}

fn no_pool_name(name: &str) -> Error {
    Error::new(
        code::NO_STORAGE_POOL,
        format!("no storage pool with matching name '{name}'"),
    )
}

fn not_active(name: &str) -> Error {
    Error::new(
        code::OPERATION_INVALID,
        format!("storage pool '{name}' is not active"),
    )
}

impl Storage {
    /// The pools saved under `paths` (the daemon's `etc`/`run` trees): autostart pools and
    /// pools that were active when the daemon stopped are active again.
    pub fn load(paths: &Paths) -> Storage {
        let etc = paths
            .domain_config_dir
            .parent()
            .unwrap_or(&paths.domain_config_dir);
        let run = paths
            .domain_state_dir
            .parent()
            .unwrap_or(&paths.domain_state_dir);
        Self::load_from(etc.join("storage"), run.join("storage"))
    }

    pub fn load_from(config_dir: PathBuf, state_dir: PathBuf) -> Storage {
        let (events, _) = broadcast::channel(256);
        let s = Storage {
            autostart_dir: config_dir.join("autostart"),
            config_dir,
            state_dir,
            pools: Mutex::new(BTreeMap::new()),
            events,
        };
        s.load_saved();
        s
    }

    fn load_saved(&self) {
        persist::clean_temporaries(&self.config_dir);
        let Ok(entries) = fs::read_dir(&self.config_dir) else {
            return;
        };
        let mut pools = self.lock();
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".xml").filter(|s| !s.starts_with('.')) else {
                continue;
            };
            let def = match fs::read_to_string(&path)
                .map_err(|e| Error::system(path.display().to_string(), &e))
                .and_then(|x| xml::parse_pool(&x))
            {
                Ok(d) if d.name == stem => d,
                Ok(d) => {
                    tracing::warn!(file = %path.display(), name = %d.name,
                        "pool definition's name does not match its file name: skipped");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e.message,
                        "unreadable pool definition: skipped");
                    continue;
                }
            };
            let autostart = self.autostart_link(stem).exists();
            let was_active = self.state_path(stem).exists();
            let mut pool = Pool {
                def,
                pending: None,
                persistent: true,
                active: false,
                autostart,
            };
            if autostart || was_active {
                if pool.def.path.is_dir() {
                    pool.active = true;
                    let _ = self.write_state(&pool.def);
                } else {
                    tracing::warn!(pool = stem, path = %pool.def.path.display(),
                        "pool directory is missing: pool left inactive");
                    let _ = persist::remove(&self.state_path(stem));
                }
            }
            pools.insert(stem.to_string(), pool);
        }
        tracing::info!(pools = pools.len(), "storage pools loaded");
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Pool>> {
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<PoolEvent> {
        self.events.subscribe()
    }

    fn emit(&self, pool: PoolRef, kind: PoolEventKind) {
        let _ = self.events.send(PoolEvent { pool, kind });
    }

    fn lifecycle(&self, pool: PoolRef, event: i32) {
        self.emit(pool, PoolEventKind::Lifecycle { event, detail: 0 });
    }

    fn config_path(&self, name: &str) -> PathBuf {
        self.config_dir.join(format!("{name}.xml"))
    }

    fn autostart_link(&self, name: &str) -> PathBuf {
        self.autostart_dir.join(format!("{name}.xml"))
    }

    fn state_path(&self, name: &str) -> PathBuf {
        self.state_dir.join(format!("{name}.xml"))
    }

    fn save_config(&self, def: &PoolDef) -> Result<()> {
        persist::write_atomic(
            &self.config_path(&def.name),
            xml::format_pool(def, PoolLive::default(), &def.perms).as_bytes(),
        )
        .map_err(|e| {
            Error::new(
                code::OPERATION_FAILED,
                format!("cannot save the definition of pool '{}': {e}", def.name),
            )
        })
    }

    fn write_state(&self, def: &PoolDef) -> Result<()> {
        persist::write_atomic(
            &self.state_path(&def.name),
            xml::format_pool(def, PoolLive::default(), &def.perms).as_bytes(),
        )
        .map_err(|e| {
            Error::new(
                code::OPERATION_FAILED,
                format!("cannot save the state of pool '{}': {e}", def.name),
            )
        })
    }

    // ---- lookups and lists ---------------------------------------------------------

    /// The pool a client names by (name, uuid): the uuid decides, as in libvirt.
    pub fn get(&self, name: &str, uuid: &[u8; 16]) -> Result<PoolRef> {
        self.by_uuid(uuid).map_err(|_| {
            Error::new(
                code::NO_STORAGE_POOL,
                format!(
                    "no storage pool with matching uuid '{}' ({name})",
                    virtumld_uml::domain::uuid_to_string(uuid)
                ),
            )
        })
    }

    pub fn by_name(&self, name: &str) -> Result<PoolRef> {
        self.lock()
            .get(name)
            .map(Pool::pool_ref)
            .ok_or_else(|| no_pool_name(name))
    }

    pub fn by_uuid(&self, uuid: &[u8; 16]) -> Result<PoolRef> {
        self.lock()
            .values()
            .find(|p| p.def.uuid == *uuid)
            .map(Pool::pool_ref)
            .ok_or_else(|| {
                Error::new(
                    code::NO_STORAGE_POOL,
                    format!(
                        "no storage pool with matching uuid '{}'",
                        virtumld_uml::domain::uuid_to_string(uuid)
                    ),
                )
            })
    }

    pub fn by_target_path(&self, path: &str) -> Result<PoolRef> {
        let want = Path::new(path);
        self.lock()
            .values()
            .find(|p| p.active && p.def.path == want)
            .map(Pool::pool_ref)
            .ok_or_else(|| {
                Error::new(
                    code::NO_STORAGE_POOL,
                    format!("no storage pool with matching target path '{path}'"),
                )
            })
    }

    pub fn list(&self, flags: u32) -> Result<Vec<PoolRef>> {
        use list_flags as f;
        if flags & !f::ALL != 0 {
            return Err(Error::new(
                code::INVALID_ARG,
                format!("virConnectListAllStoragePools: unsupported flags (0x{flags:x})"),
            ));
        }
        let pass = |yes: u32, no: u32, is: bool| {
            let (y, n) = (flags & yes != 0, flags & no != 0);
            y == n || (y && is) || (n && !is)
        };
        let type_ok = flags & f::TYPES == 0 || flags & f::DIR != 0;
        Ok(self
            .lock()
            .values()
            .filter(|p| {
                type_ok
                    && pass(f::ACTIVE, f::INACTIVE, p.active)
                    && pass(f::PERSISTENT, f::TRANSIENT, p.persistent)
                    && pass(f::AUTOSTART, f::NO_AUTOSTART, p.autostart)
            })
            .map(Pool::pool_ref)
            .collect())
    }

    /// Names of active (`true`) or inactive pools, for the old list calls.
    pub fn names(&self, active: bool) -> Vec<String> {
        self.lock()
            .values()
            .filter(|p| p.active == active)
            .map(|p| p.def.name.clone())
            .collect()
    }

    fn with_pool<T>(&self, r: &PoolRef, f: impl FnOnce(&mut Pool) -> Result<T>) -> Result<T> {
        let mut pools = self.lock();
        match pools.get_mut(&r.name).filter(|p| p.def.uuid == r.uuid) {
            Some(p) => f(p),
            None => Err(Error::new(
                code::NO_STORAGE_POOL,
                format!(
                    "no storage pool with matching uuid '{}' ({})",
                    virtumld_uml::domain::uuid_to_string(&r.uuid),
                    r.name
                ),
            )),
        }
    }

    pub fn is_active(&self, r: &PoolRef) -> Result<bool> {
        self.with_pool(r, |p| Ok(p.active))
    }

    pub fn is_persistent(&self, r: &PoolRef) -> Result<bool> {
        self.with_pool(r, |p| Ok(p.persistent))
    }

    pub fn autostart(&self, r: &PoolRef) -> Result<bool> {
        self.with_pool(r, |p| Ok(p.autostart))
    }

    // ---- definitions ---------------------------------------------------------------

    /// Refuses a definition whose name, uuid or target directory belongs to another pool.
    fn check_clash(pools: &BTreeMap<String, Pool>, def: &PoolDef) -> Result<()> {
        for p in pools.values() {
            if p.def.uuid == def.uuid && p.def.name != def.name {
                return Err(Error::new(
                    code::OPERATION_FAILED,
                    format!(
                        "pool '{}' is already defined with uuid {}",
                        p.def.name,
                        virtumld_uml::domain::uuid_to_string(&p.def.uuid)
                    ),
                ));
            }
            if p.def.name == def.name && p.def.uuid != def.uuid {
                return Err(Error::new(
                    code::OPERATION_FAILED,
                    format!(
                        "pool '{}' is already defined with uuid {}",
                        p.def.name,
                        virtumld_uml::domain::uuid_to_string(&p.def.uuid)
                    ),
                ));
            }
            if p.def.name != def.name && p.def.path == def.path {
                return Err(Error::new(
                    code::OPERATION_FAILED,
                    format!("Storage source conflict with pool: '{}'", p.def.name),
                ));
            }
        }
        Ok(())
    }

    /// `virStoragePoolDefineXML`: adds or replaces a persistent definition.
    pub fn define(&self, xml_text: &str) -> Result<PoolRef> {
        let mut def = xml::parse_pool(xml_text)?;
        let mut pools = self.lock();
        // Redefining without a uuid keeps the pool's uuid, as libvirt does.
        if let Some(p) = pools.get(&def.name) {
            if xml::parse_document(xml_text)?.child("uuid").is_none() {
                def.uuid = p.def.uuid;
            }
        }
        Self::check_clash(&pools, &def)?;
        self.save_config(&def)?;
        let r = PoolRef {
            name: def.name.clone(),
            uuid: def.uuid,
        };
        match pools.get_mut(&def.name) {
            Some(p) if p.active => {
                p.persistent = true;
                p.pending = Some(def);
            }
            Some(p) => {
                p.persistent = true;
                p.def = def;
            }
            None => {
                pools.insert(
                    def.name.clone(),
                    Pool {
                        def,
                        pending: None,
                        persistent: true,
                        active: false,
                        autostart: false,
                    },
                );
            }
        }
        drop(pools);
        self.lifecycle(r.clone(), pool_event::DEFINED);
        Ok(r)
    }

    /// `virStoragePoolCreateXML`: a transient pool, started at once.
    pub fn create_xml(&self, xml_text: &str, flags: u32) -> Result<PoolRef> {
        let def = xml::parse_pool(xml_text)?;
        let build = check_create_flags(flags)?;
        let mut pools = self.lock();
        if pools.contains_key(&def.name) {
            return Err(Error::new(
                code::OPERATION_INVALID,
                format!("storage pool '{}' already exists", def.name),
            ));
        }
        Self::check_clash(&pools, &def)?;
        if let Some(overwrite) = build {
            build_dir(&def, overwrite)?;
        }
        check_dir(&def.path)?;
        self.write_state(&def)?;
        let r = PoolRef {
            name: def.name.clone(),
            uuid: def.uuid,
        };
        pools.insert(
            def.name.clone(),
            Pool {
                def,
                pending: None,
                persistent: false,
                active: true,
                autostart: false,
            },
        );
        drop(pools);
        self.lifecycle(r.clone(), pool_event::STARTED);
        Ok(r)
    }

    /// `virStoragePoolUndefine`: only an inactive pool loses its definition.
    pub fn undefine(&self, r: &PoolRef) -> Result<()> {
        let mut pools = self.lock();
        let p = pools
            .get(&r.name)
            .filter(|p| p.def.uuid == r.uuid)
            .ok_or_else(|| no_pool_name(&r.name))?;
        if p.active {
            return Err(Error::new(
                code::OPERATION_INVALID,
                format!("storage pool '{}' is still active", r.name),
            ));
        }
        if !p.persistent {
            return Err(Error::new(
                code::OPERATION_INVALID,
                format!("storage pool '{}' is not persistent", r.name),
            ));
        }
        persist::remove(&self.autostart_link(&r.name)).ok();
        persist::remove(&self.config_path(&r.name)).map_err(|e| {
            Error::system(
                format!("Failed to delete config file for pool '{}'", r.name),
                &e,
            )
        })?;
        pools.remove(&r.name);
        drop(pools);
        self.lifecycle(r.clone(), pool_event::UNDEFINED);
        Ok(())
    }

    /// `virStoragePoolBuild`: makes the target directory (and its parents).
    pub fn build(&self, r: &PoolRef, flags: u32) -> Result<()> {
        use build_flags as b;
        if flags & !(b::OVERWRITE | b::NO_OVERWRITE) != 0 {
            return Err(Error::new(
                code::INVALID_ARG,
                format!("virStoragePoolBuild: unsupported flags (0x{flags:x})"),
            ));
        }
        if flags & b::OVERWRITE != 0 && flags & b::NO_OVERWRITE != 0 {
            return Err(Error::new(
                code::OPERATION_INVALID,
                "Overwrite and no overwrite flags are mutually exclusive",
            ));
        }
        let def = self.with_pool(r, |p| {
            if p.active {
                return Err(Error::new(
                    code::OPERATION_INVALID,
                    format!("storage pool '{}' is already active", r.name),
                ));
            }
            Ok(p.pending.clone().unwrap_or_else(|| p.def.clone()))
        })?;
        build_dir(&def, flags & b::OVERWRITE != 0)?;
        self.lifecycle(r.clone(), pool_event::CREATED);
        Ok(())
    }

    /// `virStoragePoolCreate`: starts a defined pool (optionally building it first).
    pub fn start(&self, r: &PoolRef, flags: u32) -> Result<()> {
        let build = check_create_flags(flags)?;
        let mut pools = self.lock();
        let p = pools
            .get_mut(&r.name)
            .filter(|p| p.def.uuid == r.uuid)
            .ok_or_else(|| no_pool_name(&r.name))?;
        if p.active {
            return Err(Error::new(
                code::OPERATION_INVALID,
                format!("storage pool '{}' is already active", r.name),
            ));
        }
        if let Some(next) = p.pending.take() {
            p.def = next;
        }
        if let Some(overwrite) = build {
            build_dir(&p.def, overwrite)?;
        }
        check_dir(&p.def.path)?;
        self.write_state(&p.def)?;
        p.active = true;
        drop(pools);
        self.lifecycle(r.clone(), pool_event::STARTED);
        Ok(())
    }

    /// `virStoragePoolDestroy`: stops a pool (its files stay); a transient one goes away.
    pub fn destroy(&self, r: &PoolRef) -> Result<()> {
        let mut pools = self.lock();
        let p = pools
            .get_mut(&r.name)
            .filter(|p| p.def.uuid == r.uuid)
            .ok_or_else(|| no_pool_name(&r.name))?;
        if !p.active {
            return Err(not_active(&r.name));
        }
        p.active = false;
        if let Some(next) = p.pending.take() {
            p.def = next;
        }
        let transient = !p.persistent;
        persist::remove(&self.state_path(&r.name)).ok();
        if transient {
            pools.remove(&r.name);
        }
        drop(pools);
        self.lifecycle(r.clone(), pool_event::STOPPED);
        Ok(())
    }

    /// `virStoragePoolDelete`: removes the (empty) target directory of an inactive pool.
    pub fn delete(&self, r: &PoolRef, flags: u32) -> Result<()> {
        if flags != 0 {
            return Err(Error::new(
                code::INVALID_ARG,
                format!("virStoragePoolDelete: unsupported flags (0x{flags:x})"),
            ));
        }
        let path = self.with_pool(r, |p| {
            if p.active {
                return Err(Error::new(
                    code::OPERATION_INVALID,
                    format!("storage pool '{}' is still active", r.name),
                ));
            }
            Ok(p.def.path.clone())
        })?;
        fs::remove_dir(&path).map_err(|e| {
            Error::system(format!("failed to remove pool '{}'", path.display()), &e)
        })?;
        self.lifecycle(r.clone(), pool_event::DELETED);
        Ok(())
    }

    /// `virStoragePoolRefresh`: volumes are always read afresh, so this only checks the
    /// directory is still there and tells event listeners.
    pub fn refresh(&self, r: &PoolRef) -> Result<()> {
        let path = self.with_pool(r, |p| {
            if !p.active {
                return Err(not_active(&r.name));
            }
            Ok(p.def.path.clone())
        })?;
        check_dir(&path)?;
        self.emit(r.clone(), PoolEventKind::Refresh);
        Ok(())
    }

    pub fn set_autostart(&self, r: &PoolRef, on: bool) -> Result<()> {
        self.with_pool(r, |p| {
            if !p.persistent {
                return Err(Error::new(code::INVALID_ARG, "pool has no config file"));
            }
            let link = self.autostart_link(&r.name);
            let result = if on {
                fs::create_dir_all(&self.autostart_dir).and_then(|_| {
                    let _ = fs::remove_file(&link);
                    std::os::unix::fs::symlink(self.config_path(&r.name), &link)
                })
            } else {
                persist::remove(&link)
            };
            result.map_err(|e| {
                Error::system(
                    format!("Failed to change autostart link '{}'", link.display()),
                    &e,
                )
            })?;
            p.autostart = on;
            Ok(())
        })
    }

    /// `virStoragePoolGetInfo`: state and the file system's figures (statvfs).
    pub fn info(&self, r: &PoolRef) -> Result<(u8, PoolLive)> {
        let (active, path) = self.with_pool(r, |p| Ok((p.active, p.def.path.clone())))?;
        if !active {
            return Ok((pool_state::INACTIVE, PoolLive::default()));
        }
        Ok((pool_state::RUNNING, fs_figures(&path)?))
    }

    /// The pool's XML; `inactive` asks for the definition the next start will use.
    pub fn xml(&self, r: &PoolRef, inactive: bool) -> Result<String> {
        let (def, active) = self.with_pool(r, |p| {
            let def = match (&p.pending, inactive) {
                (Some(next), true) => next.clone(),
                _ => p.def.clone(),
            };
            Ok((def, p.active && !inactive))
        })?;
        if !active {
            return Ok(xml::format_pool(&def, PoolLive::default(), &def.perms));
        }
        let live = fs_figures(&def.path).unwrap_or_default();
        let perms = fs::metadata(&def.path)
            .map(|m| Perms {
                mode: Some(m.mode() & 0o7777),
                owner: Some(m.uid()),
                group: Some(m.gid()),
            })
            .unwrap_or(def.perms);
        Ok(xml::format_pool(&def, live, &perms))
    }

    // ---- volumes -------------------------------------------------------------------

    /// The target directory of an active pool.
    fn active_dir(&self, r: &PoolRef) -> Result<PathBuf> {
        self.with_pool(r, |p| {
            if !p.active {
                return Err(not_active(&r.name));
            }
            Ok(p.def.path.clone())
        })
    }

    /// Every volume of an active pool, sorted by name.
    pub fn volumes(&self, r: &PoolRef) -> Result<Vec<VolRef>> {
        let dir = self.active_dir(r)?;
        let entries = fs::read_dir(&dir)
            .map_err(|e| Error::system(format!("cannot open directory '{}'", dir.display()), &e))?;
        let mut out: Vec<VolRef> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                if name.starts_with('.') {
                    return None;
                }
                // Follows a symlink; a dangling one, or anything but a file or a
                // directory, is not a volume.
                let m = fs::metadata(e.path()).ok()?;
                (m.is_file() || m.is_dir()).then(|| VolRef {
                    pool: r.name.clone(),
                    key: e.path().to_string_lossy().into_owned(),
                    name,
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn vol_by_name(&self, r: &PoolRef, name: &str) -> Result<VolRef> {
        let not_found = || {
            Error::new(
                code::NO_STORAGE_VOL,
                format!("no storage vol with matching name '{name}'"),
            )
        };
        if xml::validate_vol_name(name).is_err() {
            return Err(not_found());
        }
        self.volumes(r)?
            .into_iter()
            .find(|v| v.name == name)
            .ok_or_else(not_found)
    }

    /// The volume whose path (its key) is `path`, in any active pool.
    pub fn vol_by_path(&self, path: &str) -> Result<VolRef> {
        let p = Path::new(path);
        let found = (|| {
            let (dir, name) = (p.parent()?, p.file_name()?.to_str()?);
            let pools: Vec<PoolRef> = self
                .lock()
                .values()
                .filter(|pool| pool.active && pool.def.path == dir)
                .map(Pool::pool_ref)
                .collect();
            pools.iter().find_map(|r| self.vol_by_name(r, name).ok())
        })();
        found.ok_or_else(|| {
            Error::new(
                code::NO_STORAGE_VOL,
                format!("no storage vol with matching path '{path}'"),
            )
        })
    }

    pub fn vol_by_key(&self, key: &str) -> Result<VolRef> {
        self.vol_by_path(key).map_err(|_| {
            Error::new(
                code::NO_STORAGE_VOL,
                format!("no storage vol with matching key {key}"),
            )
        })
    }

    /// Checks a volume a client names still exists and returns its path.
    pub fn vol_path(&self, v: &VolRef) -> Result<PathBuf> {
        let pool = self.by_name(&v.pool)?;
        let found = self.vol_by_name(&pool, &v.name)?;
        Ok(PathBuf::from(found.key))
    }

    /// `virStorageVolCreateXML`: a raw file, sparse up to `allocation`.
    pub fn vol_create(&self, r: &PoolRef, xml_text: &str, flags: u32) -> Result<VolRef> {
        // VALIDATE (4) changes nothing: the parser always validates. PREALLOC_METADATA
        // and REFLINK concern formats and copies this backend does not make.
        if flags & !4 != 0 {
            return Err(Error::new(
                code::INVALID_ARG,
                format!("virStorageVolCreateXML: unsupported flags (0x{flags:x})"),
            ));
        }
        let def: VolDef = xml::parse_volume(xml_text)?;
        let dir = self.active_dir(r)?;
        let path = dir.join(&def.name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(def.perms.mode.unwrap_or(DEFAULT_VOL_MODE))
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    Error::new(code::STORAGE_VOL_EXIST, format!("'{}'", def.name))
                } else {
                    Error::system(format!("cannot create volume '{}'", path.display()), &e)
                }
            })?;
        // Allocating and syncing may take long: off the runtime worker.
        let result = persist::on_disk(|| {
            // The mode given at open is filtered by the umask; set it as asked.
            if let Some(m) = def.perms.mode {
                file.set_permissions(fs::Permissions::from_mode(m))?;
            }
            file.set_len(def.capacity)?;
            if def.allocation > 0 {
                nix::fcntl::posix_fallocate(
                    std::os::fd::AsRawFd::as_raw_fd(&file),
                    0,
                    def.allocation as i64,
                )
                .map_err(io::Error::from)?;
            }
            if def.perms.owner.is_some() || def.perms.group.is_some() {
                std::os::unix::fs::fchown(&file, def.perms.owner, def.perms.group)?;
            }
            file.sync_all()
        });
        if let Err(e) = result {
            let _ = fs::remove_file(&path);
            return Err(Error::system(
                format!("cannot allocate volume '{}'", path.display()),
                &e,
            ));
        }
        Ok(VolRef {
            pool: r.name.clone(),
            name: def.name,
            key: path.to_string_lossy().into_owned(),
        })
    }

    /// `virStorageVolDelete`: removes the file (or empty directory).
    pub fn vol_delete(&self, v: &VolRef, flags: u32) -> Result<()> {
        if flags != 0 {
            return Err(Error::new(
                code::INVALID_ARG,
                format!("virStorageVolDelete: unsupported flags (0x{flags:x})"),
            ));
        }
        let path = self.vol_path(v)?;
        let m = fs::symlink_metadata(&path)
            .map_err(|e| Error::system(format!("cannot stat '{}'", path.display()), &e))?;
        let r = if m.is_dir() {
            fs::remove_dir(&path)
        } else {
            fs::remove_file(&path)
        };
        r.map_err(|e| Error::system(format!("cannot unlink file '{}'", path.display()), &e))
    }

    /// `virStorageVolResize`: ALLOCATE (1), DELTA (2), SHRINK (4).
    pub fn vol_resize(&self, v: &VolRef, capacity: u64, flags: u32) -> Result<()> {
        if flags & !7 != 0 {
            return Err(Error::new(
                code::INVALID_ARG,
                format!("virStorageVolResize: unsupported flags (0x{flags:x})"),
            ));
        }
        let path = self.vol_path(v)?;
        let m = fs::metadata(&path)
            .map_err(|e| Error::system(format!("cannot stat '{}'", path.display()), &e))?;
        if !m.is_file() {
            return Err(Error::new(
                code::OPERATION_UNSUPPORTED,
                "only file volumes can be resized",
            ));
        }
        let target = if flags & 2 != 0 {
            if flags & 4 != 0 {
                m.len().checked_sub(capacity)
            } else {
                m.len().checked_add(capacity)
            }
            .ok_or_else(|| Error::new(code::INVALID_ARG, "resize would overflow"))?
        } else {
            capacity
        };
        if target < m.len() && flags & 4 == 0 {
            return Err(Error::new(
                code::INVALID_ARG,
                "Can't shrink capacity below current capacity unless shrink flag explicitly specified",
            ));
        }
        if target > i64::MAX as u64 {
            return Err(Error::new(code::OVERFLOW, "resize would overflow"));
        }
        let f = OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| Error::system(format!("cannot open '{}'", path.display()), &e))?;
        let r = persist::on_disk(|| {
            f.set_len(target)?;
            if flags & 1 != 0 && target > m.len() {
                nix::fcntl::posix_fallocate(
                    std::os::fd::AsRawFd::as_raw_fd(&f),
                    m.len() as i64,
                    (target - m.len()) as i64,
                )
                .map_err(io::Error::from)?;
            }
            f.sync_all()
        });
        r.map_err(|e| Error::system(format!("cannot resize '{}'", path.display()), &e))
    }

    pub fn vol_info(&self, v: &VolRef) -> Result<(PathBuf, VolInfo)> {
        let path = self.vol_path(v)?;
        let info = vol_info(&path)?;
        Ok((path, info))
    }

    pub fn vol_xml(&self, v: &VolRef) -> Result<String> {
        let (path, info) = self.vol_info(v)?;
        Ok(xml::format_volume(&v.name, &path, &info))
    }

    /// The pool a volume belongs to.
    pub fn pool_of(&self, v: &VolRef) -> Result<PoolRef> {
        self.vol_path(v)?;
        self.by_name(&v.pool)
    }
}

/// Reads a volume's sizes, format and permissions from its file.
fn vol_info(path: &Path) -> Result<VolInfo> {
    let m = fs::metadata(path)
        .map_err(|e| Error::system(format!("cannot stat file '{}'", path.display()), &e))?;
    let is_dir = m.is_dir();
    let format = if is_dir { "dir" } else { probe_format(path) };
    Ok(VolInfo {
        kind: if is_dir { 2 } else { 0 },
        capacity: m.len(),
        allocation: m.blocks().saturating_mul(512),
        format,
        perms: Perms {
            mode: Some(m.mode() & 0o7777),
            owner: Some(m.uid()),
            group: Some(m.gid()),
        },
        times: [
            (m.atime(), m.atime_nsec()),
            (m.mtime(), m.mtime_nsec()),
            (m.ctime(), m.ctime_nsec()),
        ],
    })
}

/// The image format by its magic: qcow/qcow2 and UML's own COW header are told apart
/// from raw data, so a client is not misled into attaching them as raw disks.
fn probe_format(path: &Path) -> &'static str {
    use std::io::Read;
    let mut head = [0u8; 8];
    let n = fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .unwrap_or(0);
    if n >= 4 && head[..4] == *b"QFI\xfb" {
        let version = if n >= 8 {
            u32::from_be_bytes([head[4], head[5], head[6], head[7]])
        } else {
            0
        };
        return if version == 1 { "qcow" } else { "qcow2" };
    }
    // UML COW files start with the magic 0x4f4f4f4d ("OOOM") in host byte order.
    if n >= 4 && (head[..4] == *b"OOOM" || head[..4] == *b"MOOO") {
        return "cow";
    }
    "raw"
}

/// The build/create flags: `Some(overwrite)` when a build is asked for.
fn check_create_flags(flags: u32) -> Result<Option<bool>> {
    use build_flags as b;
    let all =
        b::CREATE_WITH_BUILD | b::CREATE_WITH_BUILD_OVERWRITE | b::CREATE_WITH_BUILD_NO_OVERWRITE;
    if flags & !all != 0 {
        return Err(Error::new(
            code::INVALID_ARG,
            format!("unsupported flags (0x{flags:x})"),
        ));
    }
    if flags & b::CREATE_WITH_BUILD_OVERWRITE != 0 && flags & b::CREATE_WITH_BUILD_NO_OVERWRITE != 0
    {
        return Err(Error::new(
            code::INVALID_ARG,
            "Overwrite and no overwrite flags are mutually exclusive",
        ));
    }
    Ok((flags != 0).then_some(flags & b::CREATE_WITH_BUILD_OVERWRITE != 0))
}

/// Makes a pool's directory as libvirt's dir backend does: parents as needed, the
/// directory itself with the asked mode (0711 if new and none asked), then ownership.
/// An existing directory is kept (OVERWRITE changes nothing for a dir pool either).
fn build_dir(def: &PoolDef, _overwrite: bool) -> Result<()> {
    let path = &def.path;
    let existed = path.is_dir();
    if !existed {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| {
                Error::system(format!("cannot create path '{}'", parent.display()), &e)
            })?;
        }
        std::os::unix::fs::DirBuilderExt::mode(&mut fs::DirBuilder::new(), 0o700)
            .create(path)
            .or_else(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(|e| Error::system(format!("cannot create path '{}'", path.display()), &e))?;
    }
    let mode = def.perms.mode.or((!existed).then_some(DEFAULT_POOL_MODE));
    if let Some(m) = mode {
        fs::set_permissions(path, fs::Permissions::from_mode(m))
            .map_err(|e| Error::system(format!("cannot set mode of '{}'", path.display()), &e))?;
    }
    if def.perms.owner.is_some() || def.perms.group.is_some() {
        std::os::unix::fs::chown(path, def.perms.owner, def.perms.group).map_err(|e| {
            Error::system(format!("cannot set ownership of '{}'", path.display()), &e)
        })?;
    }
    Ok(())
}

fn check_dir(path: &Path) -> Result<()> {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::new(
            code::OPERATION_INVALID,
            format!("target path '{}' is not a directory", path.display()),
        )),
        Err(e) => Err(Error::system(
            format!("cannot open directory '{}'", path.display()),
            &e,
        )),
    }
}

/// Capacity, allocation and available bytes of the file system holding `path`.
fn fs_figures(path: &Path) -> Result<PoolLive> {
    let s = nix::sys::statvfs::statvfs(path).map_err(|e| {
        Error::system(
            format!("cannot statvfs path '{}'", path.display()),
            &io::Error::from(e),
        )
    })?;
    let frsize = s.fragment_size() as u64;
    let blocks = s.blocks() as u64;
    Ok(PoolLive {
        capacity: blocks.saturating_mul(frsize),
        allocation: blocks
            .saturating_sub(s.blocks_free() as u64)
            .saturating_mul(frsize),
        available: (s.blocks_available() as u64).saturating_mul(frsize),
    })
}

/// A shared handle, as the daemon holds it.
pub type SharedStorage = Arc<Storage>;

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(dir: &Path) -> Storage {
        Storage::load_from(dir.join("etc/storage"), dir.join("run/storage"))
    }

    fn pool_xml(name: &str, path: &Path) -> String {
        format!(
            "<pool type='dir'><name>{name}</name><target><path>{}</path></target></pool>",
            path.display()
        )
    }

    #[test]
    fn define_build_start_and_survive_a_restart() {
        let t = tempfile::tempdir().unwrap();
        let s = storage(t.path());
        let target = t.path().join("images/p");
        let r = s.define(&pool_xml("p", &target)).unwrap();
        assert!(t.path().join("etc/storage/p.xml").exists());
        assert_eq!(s.start(&r, 0).unwrap_err().code, code::SYSTEM_ERROR);
        s.build(&r, 0).unwrap();
        assert_eq!(
            fs::metadata(&target).unwrap().mode() & 0o7777,
            DEFAULT_POOL_MODE
        );
        s.start(&r, 0).unwrap();
        assert_eq!(s.start(&r, 0).unwrap_err().code, code::OPERATION_INVALID);
        let (state, live) = s.info(&r).unwrap();
        assert_eq!(state, pool_state::RUNNING);
        assert!(live.capacity > 0 && live.available <= live.capacity);
        s.set_autostart(&r, true).unwrap();
        assert_eq!(
            s.undefine(&r).unwrap_err().code,
            code::OPERATION_INVALID,
            "an active pool keeps its definition"
        );
        // A daemon restart finds it defined, active and autostarted.
        let s2 = storage(t.path());
        let r2 = s2.by_name("p").unwrap();
        assert_eq!(r2.uuid, r.uuid);
        assert!(s2.is_active(&r2).unwrap() && s2.autostart(&r2).unwrap());
        s2.destroy(&r2).unwrap();
        s2.set_autostart(&r2, false).unwrap();
        let s3 = storage(t.path());
        assert!(!s3.is_active(&s3.by_name("p").unwrap()).unwrap());
        s3.undefine(&r2).unwrap();
        assert!(!t.path().join("etc/storage/p.xml").exists());
        assert_eq!(s3.by_name("p").unwrap_err().code, code::NO_STORAGE_POOL);
    }

    #[test]
    fn clashes_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let s = storage(t.path());
        s.define(&pool_xml("a", &t.path().join("x"))).unwrap();
        let e = s.define(&pool_xml("b", &t.path().join("x"))).unwrap_err();
        assert_eq!(e.code, code::OPERATION_FAILED);
        assert!(e.message.contains("Storage source conflict"));
        // Redefining the same name keeps its uuid.
        let before = s.by_name("a").unwrap();
        s.define(&pool_xml("a", &t.path().join("y"))).unwrap();
        assert_eq!(s.by_name("a").unwrap(), before);
    }

    #[test]
    fn volumes() {
        let t = tempfile::tempdir().unwrap();
        let s = storage(t.path());
        let dir = t.path().join("vols");
        let r = s.create_xml(&pool_xml("v", &dir), 1).unwrap();
        assert!(!s.is_persistent(&r).unwrap());
        let v = s
            .vol_create(
                &r,
                "<volume><name>a.img</name><capacity unit='MiB'>8</capacity>\
                 <allocation>0</allocation></volume>",
                0,
            )
            .unwrap();
        assert_eq!(v.key, dir.join("a.img").to_string_lossy());
        let (_, info) = s.vol_info(&v).unwrap();
        assert_eq!((info.kind, info.capacity, info.format), (0, 8 << 20, "raw"));
        assert!(info.allocation < 8 << 20, "sparse");
        assert_eq!(info.perms.mode, Some(0o600));
        let e = s
            .vol_create(
                &r,
                "<volume><name>a.img</name><capacity>1</capacity></volume>",
                0,
            )
            .unwrap_err();
        assert_eq!(e.code, code::STORAGE_VOL_EXIST);
        // Fully allocated when no <allocation> is given.
        let full = s
            .vol_create(
                &r,
                "<volume><name>b</name><capacity>65536</capacity></volume>",
                0,
            )
            .unwrap();
        assert!(s.vol_info(&full).unwrap().1.allocation >= 65536);
        fs::write(dir.join(".hidden"), b"x").unwrap();
        let names: Vec<_> = s.volumes(&r).unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["a.img", "b"]);
        assert_eq!(s.vol_by_path(&v.key).unwrap(), v);
        assert_eq!(
            s.vol_by_name(&r, "../etc").unwrap_err().code,
            code::NO_STORAGE_VOL
        );
        s.vol_resize(&v, 16 << 20, 0).unwrap();
        assert_eq!(s.vol_info(&v).unwrap().1.capacity, 16 << 20);
        assert_eq!(s.vol_resize(&v, 1, 0).unwrap_err().code, code::INVALID_ARG);
        s.vol_delete(&v, 0).unwrap();
        assert!(!dir.join("a.img").exists());
        assert_eq!(s.vol_delete(&v, 0).unwrap_err().code, code::NO_STORAGE_VOL);
        // A transient pool disappears when stopped.
        s.destroy(&r).unwrap();
        assert!(s.by_name("v").is_err());
    }
}
