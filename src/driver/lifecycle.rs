//! Starting, stopping and watching guests; reattaching after a daemon restart; autostart.
//!
//! Every exit of a guest process is seen by its watcher task at once (the backend's exit
//! notification, never polling). The watcher decides what the exit means from what the API
//! asked for (`StopIntent`) and from the console's last lines, then applies the domain's
//! `on_poweroff` / `on_reboot` / `on_crash` action.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use virtumld_protocol::error::code;
use virtumld_uml::argv::{self, ArgvEnv};
use virtumld_uml::console::{self, ConsoleLog};
use virtumld_uml::domain::{self as domxml, CharKind, DomainDef, LifecycleAction};
use virtumld_uml::mconsole::{MconsoleError, Pending};
use virtumld_uml::process::{self, ExitReason, Guest, LaunchSpec, PtyLine};

use super::state::{domain_state as st, event, paused, running, shutoff, StateReason};
use super::status::{SavedLine, Status};
use super::{
    persist, running_state, DomRef, DomainObj, Driver, Error, EventKind, Live, LivePump, Result,
    StopIntent,
};

/// From spawn to "mconsole answers and the console ptys are known".
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// SIGTERM → SIGKILL grace for `destroy`.
const DESTROY_GRACE: Duration = Duration::from_secs(10);
/// How long the console pumps of an exited guest get to read its last output.
const PUMP_DRAIN: Duration = Duration::from_millis(500);
/// For a graceful destroy, how long SIGTERM alone may take.
const GRACEFUL_WAIT: Duration = Duration::from_secs(30);
/// How long a lifecycle call (suspend, resume, shutdown, reboot, a paused start) waits for
/// the guest to answer the mconsole command that carries it out. UML runs `stop` in a
/// kernel worker of the guest, so the answer needs the guest to be scheduled: on a
/// saturated host that took more than 5 s (the bound of queries) once in 3,770 suspends
/// of the one-hour soak. libvirt's QEMU driver waits for its monitor without any bound, so
/// a `virsh suspend` under load is slow, not failed; this keeps a bound, for a guest that
/// never answers, equal to the longest a caller waits for the domain's job (`JOB_WAIT`).
/// Other clients are never held up meanwhile: queries take no job, and a destroy makes
/// the wait give up at once (`DomainObj::destroying`).
const GUEST_ANSWER_WAIT: Duration = Duration::from_secs(30);
/// How long a command whose caller gave up on it is still listened to: a guest that was
/// slow rather than deaf carries it out late, and the domain's state must follow.
const LATE_ANSWER_WAIT: Duration = Duration::from_secs(600);

/// Console lines' slaves are inherited by the guest from this descriptor number up.
const FIRST_LINE_FD: i32 = 3;

/// The umid is the domain name when UML accepts it as one, else derived from the uuid.
fn umid_for(def: &DomainDef) -> String {
    let ok = def.name.len() <= process::MAX_UMID_LEN
        && !def.name.starts_with('.')
        && def
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        def.name.clone()
    } else {
        let hex: String = def.uuid.iter().map(|b| format!("{b:02x}")).collect();
        format!("uml-{hex}")
    }
}

fn backend_error(e: impl std::fmt::Display) -> Error {
    Error::new(code::OPERATION_FAILED, e.to_string())
}

/// Why a lifecycle command got no usable answer.
enum NoAnswer {
    /// [`GUEST_ANSWER_WAIT`] passed. The request is still in the guest's queue: the guest
    /// may carry it out later, and its answer comes to this request.
    TimedOut(Pending),
    /// A destroy of the domain is waiting for the job.
    Destroying,
    /// The guest process ended.
    Exited,
    /// The command failed: no socket, a malformed reply, or the guest's own error.
    Failed(MconsoleError),
}

impl NoAnswer {
    /// The error a lifecycle call returns for this, `what` being e.g. "suspend".
    fn error(&self, obj: &DomainObj, what: &str) -> Error {
        match self {
            NoAnswer::TimedOut(_) => Error::new(
                code::OPERATION_TIMEOUT,
                format!(
                    "cannot {what} domain '{}': the guest did not answer its management \
                     console within {} s",
                    obj.name,
                    GUEST_ANSWER_WAIT.as_secs()
                ),
            ),
            NoAnswer::Destroying => Error::new(
                code::OPERATION_ABORTED,
                format!("cannot {what} domain '{}': it is being destroyed", obj.name),
            ),
            // The words of libvirt's QEMU driver when the guest goes during a call.
            NoAnswer::Exited => Error::new(code::OPERATION_FAILED, "domain is no longer running"),
            NoAnswer::Failed(e) => backend_error(e),
        }
    }
}

/// Whether a failed command's error is UML's answer `message` (`err` 1, e.g. "Already
/// stopped" to a `stop`).
fn answered(r: &std::result::Result<String, NoAnswer>, message: &str) -> bool {
    matches!(r, Err(NoAnswer::Failed(MconsoleError::Remote { err: 1, message: m })) if m == message)
}

/// Sends a lifecycle command to the guest's mconsole and waits for the answer, at most
/// [`GUEST_ANSWER_WAIT`], and no longer once the guest exits or a destroy of the domain
/// is waiting. The caller holds the job.
async fn guest_command(
    obj: &DomainObj,
    guest: &Guest,
    cmd: &str,
) -> std::result::Result<String, NoAnswer> {
    enum Woken {
        Answer(std::result::Result<String, MconsoleError>),
        TimedOut,
        Destroying,
        Exited,
    }
    let mut destroying = obj.destroying.subscribe();
    if *destroying.borrow_and_update() > 0 {
        return Err(NoAnswer::Destroying);
    }
    let mc = guest.mconsole();
    let mut pending = tokio::select! {
        // Only waits while the guest's request queue is full.
        sent = tokio::time::timeout(GUEST_ANSWER_WAIT, mc.send(cmd)) => match sent {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return Err(NoAnswer::Failed(e)),
            Err(_) => {
                return Err(NoAnswer::Failed(MconsoleError::Timeout {
                    path: mc.path().to_path_buf(),
                    timeout: GUEST_ANSWER_WAIT,
                }))
            }
        },
        _ = destroying.changed() => return Err(NoAnswer::Destroying),
        _ = guest.wait_exit() => return Err(NoAnswer::Exited),
    };
    let woken = tokio::select! {
        r = tokio::time::timeout(GUEST_ANSWER_WAIT, pending.reply()) => match r {
            Ok(answer) => Woken::Answer(answer),
            Err(_) => Woken::TimedOut,
        },
        _ = destroying.changed() => Woken::Destroying,
        _ = guest.wait_exit() => Woken::Exited,
    };
    match woken {
        Woken::Answer(Ok(text)) => Ok(text),
        Woken::Answer(Err(e)) => Err(NoAnswer::Failed(e)),
        Woken::TimedOut => Err(NoAnswer::TimedOut(pending)),
        Woken::Destroying => Err(NoAnswer::Destroying),
        Woken::Exited => Err(NoAnswer::Exited),
    }
}

/// What a `stop` or a `go` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PauseChange {
    Paused,
    Resumed,
}

impl Driver {
    fn status_path(&self, name: &str) -> PathBuf {
        self.0.paths.domain_state_dir.join(format!("{name}.xml"))
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.0.paths.log_dir.join(format!("{name}.log"))
    }

    fn save_status(&self, obj: &DomainObj) {
        let status = {
            let d = obj.data();
            let Some(l) = &d.live else { return };
            Status {
                state: d.state,
                id: l.id,
                pid: l.guest.pid,
                start_time: l.guest.start_time,
                umid: l.guest.umid.clone(),
                lines: l
                    .pumps
                    .iter()
                    .map(|p| SavedLine {
                        alias: p.alias.clone(),
                        guest_fd: p.guest_fd,
                        path: p.pump.pty().to_path_buf(),
                    })
                    .collect(),
                xml: l.def.to_xml(None),
                ready: true,
            }
        };
        self.write_status(&obj.name, &status);
    }

    fn write_status(&self, name: &str, status: &Status) {
        let path = self.status_path(name);
        if let Err(e) = persist::write_atomic(&path, status.to_text().as_bytes()) {
            tracing::error!(domain = %name, "cannot save live status: {e}");
        }
    }

    /// Launches the kernel for `def` and starts the console pumps. The caller holds the job.
    /// `state` is what the domain will be in once started: it goes into the provisional
    /// status written as soon as the process exists (see `status.rs`), which is removed
    /// again if the start fails.
    async fn launch(&self, def: Arc<DomainDef>, id: i32, state: StateReason) -> Result<Live> {
        Driver::check_kernel(&def)?;
        let paths = &self.0.paths;
        let umid = umid_for(&def);
        if let Some(pid) = process::umid_in_use(&paths.uml_dir, &umid) {
            // A dead guest whose exit nobody reaped (its parent daemon was killed) still
            // answers kill(pid, 0), and UML would then run under a random umid: the umid
            // directory is ours, so clear it.
            if is_zombie(pid) {
                let _ = std::fs::remove_dir_all(paths.uml_dir.join(&umid));
            }
        }
        if let Some(pid) = process::umid_in_use(&paths.uml_dir, &umid) {
            return Err(Error::new(
                code::OPERATION_INVALID,
                format!("UML umid '{umid}' is already in use by process {pid}"),
            ));
        }
        let notify = paths.domain_state_dir.join(format!("{}.notify", umid));
        let hostfs = paths.uml_dir.join(".hostfs-empty");
        std::fs::create_dir_all(&hostfs).map_err(|e| {
            Error::new(
                code::OPERATION_FAILED,
                format!("cannot create {}: {e}", hostfs.display()),
            )
        })?;
        // Every pts line gets a pty the daemon creates: the guest inherits the slave as the
        // line and a spare copy of the master, so the line survives a daemon restart.
        let lines: Vec<_> = def
            .console_aliases()
            .into_iter()
            .filter(|a| def.char_dev(a).is_some_and(|c| c.uml_channel() == "pts"))
            .collect();
        let mut ptys = Vec::with_capacity(lines.len());
        let mut line_fds = Vec::with_capacity(lines.len());
        let mut inherit_fds = Vec::with_capacity(2 * lines.len());
        for (i, alias) in lines.iter().enumerate() {
            let pty = PtyLine::open().map_err(|e| {
                Error::new(code::OPERATION_FAILED, format!("cannot create a pty: {e}"))
            })?;
            let slave_fd = FIRST_LINE_FD + 2 * i as i32;
            let spare_master_fd = slave_fd + 1;
            let spare = pty.master.try_clone().map_err(backend_error)?;
            line_fds.push((alias.uml_device.clone(), slave_fd));
            inherit_fds.push((Arc::new(pty.slave), slave_fd));
            inherit_fds.push((Arc::new(spare), spare_master_fd));
            ptys.push(Line {
                alias: alias.alias.clone(),
                guest_fd: spare_master_fd,
                path: pty.path,
                master: pty.master,
            });
        }
        let argv: Vec<OsString> = argv::build(
            &def,
            &ArgvEnv {
                uml_dir: &paths.uml_dir,
                umid: &umid,
                notify_socket: Some(&notify),
                hostfs_root: Some(&hostfs),
                line_fds: &line_fds,
            },
        )
        .map_err(Error::def)?;
        let spec = LaunchSpec {
            argv,
            env: vec![("TMPDIR".into(), paths.uml_dir.clone().into_os_string())],
            uml_dir: paths.uml_dir.clone(),
            umid: umid.clone(),
            notify_socket: notify,
            log_file: self.log_path(&def.name),
            pty_devices: Vec::new(),
            ready_timeout: READY_TIMEOUT,
            inherit_fds,
        };
        let provisional = |g: &process::Guest| {
            let status = Status {
                state,
                id,
                pid: g.pid,
                start_time: g.start_time,
                umid: g.umid.clone(),
                lines: ptys
                    .iter()
                    .map(|l| SavedLine {
                        alias: l.alias.clone(),
                        guest_fd: l.guest_fd,
                        path: l.path.clone(),
                    })
                    .collect(),
                xml: def.to_xml(None),
                ready: false,
            };
            self.write_status(&def.name, &status);
        };
        let guest = match process::launch_with(&spec, provisional).await {
            Ok(g) => g,
            Err(e) => {
                // The guest is gone (launch killed it): nothing for a restart to find.
                let _ = persist::remove(&self.status_path(&def.name));
                return Err(backend_error(e));
            }
        };
        let pumps = start_pumps(&def, ptys, false);
        Ok(self.new_live(def, id, guest, pumps))
    }

    /// The running state of a guest just launched or found again, with a generation of its
    /// own so that watchers of an earlier process of the domain do nothing.
    fn new_live(&self, def: Arc<DomainDef>, id: i32, guest: Guest, pumps: Vec<LivePump>) -> Live {
        Live {
            def,
            id,
            guest,
            pumps,
            intent: None,
            generation: self.0.next_generation.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Installs a launched guest and starts its watcher.
    fn install(&self, obj: &Arc<DomainObj>, live: Live, state: StateReason) {
        let generation = live.generation;
        let guest = live.guest.clone();
        {
            let mut d = obj.data();
            d.live = Some(live);
            d.state = state;
        }
        self.save_status(obj);
        let driver = self.clone();
        let obj = obj.clone();
        tokio::spawn(async move {
            let info = guest.wait_exit().await;
            driver.on_exit(&obj, generation, info).await;
        });
    }

    fn next_id(&self) -> i32 {
        self.0.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// `virDomainCreateWithFlags`: boots a defined, inactive domain.
    pub async fn create(&self, obj: &Arc<DomainObj>, start_paused: bool) -> Result<()> {
        let _job = obj.begin_job().await?;
        let def = {
            let d = obj.data();
            if d.live.is_some() {
                return Err(Error::new(
                    code::OPERATION_INVALID,
                    "domain is already running",
                ));
            }
            d.config.clone()
        };
        let def =
            def.ok_or_else(|| Error::new(code::INTERNAL_ERROR, "domain has no definition"))?;
        self.boot(obj, def, start_paused).await
    }

    async fn boot(
        &self,
        obj: &Arc<DomainObj>,
        def: Arc<DomainDef>,
        start_paused: bool,
    ) -> Result<()> {
        let live = self
            .launch(def, self.next_id(), running_state(start_paused))
            .await?;
        if start_paused {
            if let Err(e) = guest_command(obj, &live.guest, "stop").await {
                let _ = live.guest.kill(DESTROY_GRACE).await;
                let _ = persist::remove(&self.status_path(&obj.name));
                return Err(e.error(obj, "start paused"));
            }
        }
        self.install(obj, live, running_state(start_paused));
        self.emit_lifecycle(obj, event::STARTED, event::STARTED_BOOTED);
        if start_paused {
            self.emit_lifecycle(obj, event::SUSPENDED, event::SUSPENDED_PAUSED);
        }
        Ok(())
    }

    /// `virDomainCreateXML`: a transient domain, started at once (or a live definition
    /// over an inactive persistent domain of the same name and uuid).
    pub async fn create_xml(&self, xml: &str, start_paused: bool) -> Result<DomRef> {
        let def = Arc::new(Driver::parse_def(xml).await?);
        let (obj, fresh) = self.find_or_insert(&def)?;
        let _job = obj.begin_job().await?;
        if obj.data().live.is_some() {
            return Err(Error::new(
                code::OPERATION_INVALID,
                format!("domain '{}' is already active", obj.name),
            ));
        }
        match self.boot(&obj, def, start_paused).await {
            Ok(()) => Ok(obj.dom_ref()),
            Err(e) => {
                if fresh {
                    self.remove(&obj);
                }
                Err(e)
            }
        }
    }

    fn require_live<T>(&self, obj: &DomainObj, f: impl FnOnce(&mut Live) -> T) -> Result<T> {
        let mut d = obj.data();
        match d.live.as_mut() {
            Some(l) => Ok(f(l)),
            None => Err(Error::not_running()),
        }
    }

    /// `virDomainShutdown`: asks the guest (Ctrl-Alt-Del through mconsole, so its init
    /// runs its shutdown) and returns; the stop is reported when the process exits.
    pub async fn shutdown(&self, obj: &Arc<DomainObj>) -> Result<()> {
        let _job = obj.begin_job().await?;
        let guest = self.require_live(obj, |l| {
            l.intent = Some(StopIntent::Shutdown);
            l.guest.clone()
        })?;
        guest_command(obj, &guest, "cad")
            .await
            .map(drop)
            .map_err(|e| e.error(obj, "shut down"))
    }

    /// `virDomainReboot`: the guest shuts down cleanly and the daemon boots it again,
    /// keeping its id.
    pub async fn reboot(&self, obj: &Arc<DomainObj>) -> Result<()> {
        let _job = obj.begin_job().await?;
        let guest = self.require_live(obj, |l| {
            l.intent = Some(StopIntent::Reboot);
            l.guest.clone()
        })?;
        guest_command(obj, &guest, "cad")
            .await
            .map(drop)
            .map_err(|e| e.error(obj, "reboot"))
    }

    /// `virDomainSuspend`: UML's `stop`. Pausing a paused guest succeeds, as in libvirt.
    pub async fn suspend(&self, obj: &Arc<DomainObj>) -> Result<()> {
        let _job = obj.begin_job().await?;
        let (guest, generation) = self.require_live(obj, |l| (l.guest.clone(), l.generation))?;
        if obj.data().state.state == st::PAUSED {
            return Ok(());
        }
        self.pause_change(obj, guest, generation, PauseChange::Paused)
            .await
    }

    /// `virDomainResume`: UML's `go`.
    pub async fn resume(&self, obj: &Arc<DomainObj>) -> Result<()> {
        let _job = obj.begin_job().await?;
        let (guest, generation) = self.require_live(obj, |l| (l.guest.clone(), l.generation))?;
        if obj.data().state.state != st::PAUSED {
            return Err(Error::new(code::OPERATION_INVALID, "domain is not paused"));
        }
        self.pause_change(obj, guest, generation, PauseChange::Resumed)
            .await
    }

    /// Sends `stop` or `go` and records what the guest did. The caller holds the job. The
    /// guest's "Already stopped" / "Not stopped" means an earlier request whose caller gave
    /// up was carried out late: the guest is in the wanted state.
    async fn pause_change(
        &self,
        obj: &Arc<DomainObj>,
        guest: Guest,
        generation: u64,
        change: PauseChange,
    ) -> Result<()> {
        let (cmd, already, what) = match change {
            PauseChange::Paused => ("stop", "Already stopped", "suspend"),
            PauseChange::Resumed => ("go", "Not stopped", "resume"),
        };
        let r = guest_command(obj, &guest, cmd).await;
        if !answered(&r, already) {
            if let Err(e) = r {
                return Err(self.gave_up(obj, generation, guest, e, change, what));
            }
        }
        self.record_pause_change(obj, change);
        Ok(())
    }

    /// Records a pause or a resume the guest carried out: state, status file, event. The
    /// caller holds the job. Nothing but the count of changes moves if the domain is in
    /// that state already.
    fn record_pause_change(&self, obj: &Arc<DomainObj>, change: PauseChange) {
        let (state, event, detail) = match change {
            PauseChange::Paused => (
                StateReason::new(st::PAUSED, paused::USER),
                event::SUSPENDED,
                event::SUSPENDED_PAUSED,
            ),
            PauseChange::Resumed => (
                StateReason::new(st::RUNNING, running::UNPAUSED),
                event::RESUMED,
                event::RESUMED_UNPAUSED,
            ),
        };
        {
            let mut d = obj.data();
            d.pause_changes += 1;
            if d.live.is_none() || d.state.state == state.state {
                return;
            }
            d.state = state;
        }
        self.save_status(obj);
        self.emit_lifecycle(obj, event, detail);
    }

    /// The error of a suspend or resume that got no answer. One that timed out leaves its
    /// request with the guest, which may still carry it out: its answer is listened for
    /// (`LATE_ANSWER_WAIT`) and then recorded with its event, the way libvirt reports a
    /// pause or resume that QEMU announces on its own. Unless a pause or resume was
    /// recorded in between: the guest answers in order, so that later answer already
    /// tells the state after this one.
    fn gave_up(
        &self,
        obj: &Arc<DomainObj>,
        generation: u64,
        guest: Guest,
        why: NoAnswer,
        change: PauseChange,
        what: &str,
    ) -> Error {
        let err = why.error(obj, what);
        let NoAnswer::TimedOut(mut pending) = why else {
            return err;
        };
        tracing::warn!(domain = %obj.name, "no answer to {what} within {GUEST_ANSWER_WAIT:?}; still listening");
        let changes = obj.data().pause_changes;
        let driver = self.clone();
        let obj = obj.clone();
        tokio::spawn(async move {
            let answer = tokio::select! {
                r = tokio::time::timeout(LATE_ANSWER_WAIT, pending.reply()) => r,
                _ = guest.wait_exit() => return,
            };
            match answer {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::info!(domain = %obj.name, "late answer to an abandoned {change:?} request: {e}");
                    return;
                }
                Err(_) => {
                    tracing::warn!(domain = %obj.name, "the guest never answered an abandoned {change:?} request");
                    return;
                }
            }
            let Ok(_job) = obj.begin_job().await else {
                tracing::error!(domain = %obj.name, "the guest carried out a {change:?} request late, but its state could not be updated");
                return;
            };
            let current = {
                let d = obj.data();
                d.pause_changes == changes
                    && d.live.as_ref().is_some_and(|l| l.generation == generation)
            };
            if current {
                tracing::info!(domain = %obj.name, "the guest carried out an abandoned request late: {change:?}");
                driver.record_pause_change(&obj, change);
            }
        });
        err
    }

    /// `virDomainDestroyFlags`: SIGTERM to the whole process tree, SIGKILL after a grace
    /// period (never with `graceful`), everything reaped before returning.
    pub async fn destroy(&self, obj: &Arc<DomainObj>, graceful: bool) -> Result<()> {
        // Like libvirt's, a destroy does not queue behind a call waiting for the guest to
        // answer (which a hung guest never does): such a call gives up at once.
        let _destroying = DestroyPending::new(obj);
        let _job = obj.begin_job().await?;
        let guest = self.require_live(obj, |l| {
            l.intent = Some(StopIntent::Destroy);
            l.guest.clone()
        })?;
        if graceful {
            guest.signal_group(nix::sys::signal::Signal::SIGTERM);
            if tokio::time::timeout(GRACEFUL_WAIT, guest.wait_exit())
                .await
                .is_err()
            {
                return Err(Error::new(
                    code::OPERATION_FAILED,
                    "the guest did not stop on SIGTERM",
                ));
            }
        }
        guest.kill(DESTROY_GRACE).await.map_err(backend_error)?;
        self.finish_stop(obj, shutoff::DESTROYED, event::STOPPED_DESTROYED);
        Ok(())
    }

    /// Marks a domain shut off after its process is gone: pumps stopped, status removed,
    /// a transient domain dropped, the STOPPED event sent.
    fn finish_stop(&self, obj: &Arc<DomainObj>, reason: i32, detail: i32) {
        let transient = {
            let mut d = obj.data();
            if let Some(l) = d.live.take() {
                for p in &l.pumps {
                    p.pump.stop();
                }
            }
            d.state = StateReason::new(st::SHUTOFF, reason);
            d.config.is_none()
        };
        let _ = persist::remove(&self.status_path(&obj.name));
        self.emit_lifecycle(obj, event::STOPPED, detail);
        if transient {
            self.remove(obj);
        }
    }

    /// The watcher's verdict on a guest process that ended.
    async fn on_exit(&self, obj: &Arc<DomainObj>, generation: u64, info: process::ExitInfo) {
        let Ok(_job) = obj.begin_job().await else {
            return;
        };
        let (guest, intent, pumps, def) = {
            let d = obj.data();
            let Some(l) = d.live.as_ref().filter(|l| l.generation == generation) else {
                return; // destroy (or a restart) already handled this process
            };
            let pumps: Vec<_> = l.pumps.iter().map(|p| p.pump.clone()).collect();
            (l.guest.clone(), l.intent, pumps, l.def.clone())
        };
        // The main process is gone; its helpers may not be.
        if let Err(e) = guest.kill(Duration::from_secs(2)).await {
            tracing::error!(domain = %obj.name, "cleaning up the guest's processes: {e}");
        }
        // Let the pumps drain what the guest wrote last (its panic or halt message) into
        // their logs and tails; they end by themselves when the pty hangs up.
        for p in &pumps {
            let _ = tokio::time::timeout(PUMP_DRAIN, p.closed()).await;
        }
        let tail = pumps.first().map(|p| p.tail()).unwrap_or_default();
        let reason = process::classify_exit(&info, &tail);
        tracing::info!(domain = %obj.name, %info, ?reason, ?intent, "guest process ended");
        let (action, stop_reason, detail) = match (intent, reason) {
            (Some(StopIntent::Destroy), _) => (
                LifecycleAction::Destroy,
                shutoff::DESTROYED,
                event::STOPPED_DESTROYED,
            ),
            (Some(StopIntent::Reboot), _) => (
                LifecycleAction::Restart,
                shutoff::SHUTDOWN,
                event::STOPPED_SHUTDOWN,
            ),
            (Some(StopIntent::Shutdown), _) => {
                (def.on_poweroff, shutoff::SHUTDOWN, event::STOPPED_SHUTDOWN)
            }
            (None, ExitReason::Reboot) => {
                (def.on_reboot, shutoff::SHUTDOWN, event::STOPPED_SHUTDOWN)
            }
            (None, ExitReason::Crash) => (def.on_crash, shutoff::CRASHED, event::STOPPED_CRASHED),
            (None, ExitReason::Poweroff | ExitReason::Unknown) => {
                (def.on_poweroff, shutoff::SHUTDOWN, event::STOPPED_SHUTDOWN)
            }
        };
        if action == LifecycleAction::Restart && !obj.data().removed {
            let id = obj.data().live.as_ref().map_or(-1, |l| l.id);
            for p in &pumps {
                p.stop();
            }
            let booted = StateReason::new(st::RUNNING, running::BOOTED);
            match self.launch(def, id, booted).await {
                Ok(live) => {
                    self.install(obj, live, booted);
                    self.emit(obj.dom_ref(), EventKind::Reboot);
                    return;
                }
                Err(e) => {
                    tracing::error!(domain = %obj.name, "restarting the guest failed: {}", e.message);
                    self.finish_stop(obj, shutoff::FAILED, event::STOPPED_FAILED);
                    return;
                }
            }
        }
        self.finish_stop(obj, stop_reason, detail);
    }

    /// Start-up: load definitions, reattach to surviving guests, kill what no status file
    /// claims, start autostart ones.
    pub(super) async fn load(&self) {
        let paths = self.0.paths.clone();
        for dir in [&paths.domain_config_dir, &paths.domain_state_dir] {
            persist::clean_temporaries(dir);
        }
        for (name, text) in xml_files(&paths.domain_config_dir) {
            match domxml::parse(&text) {
                Ok(def) if def.name == name => {
                    let autostart = paths.autostart_dir.join(format!("{name}.xml")).exists();
                    self.insert(DomainObj::new(
                        def.name.clone(),
                        def.uuid,
                        Some(Arc::new(def)),
                        autostart,
                    ));
                }
                Ok(def) => tracing::error!(
                    "ignoring {name}.xml: it defines a domain named '{}'",
                    def.name
                ),
                Err(e) => tracing::error!("ignoring unreadable definition {name}.xml: {e}"),
            }
        }
        let (max_id, keep, starting) = self.reattach_all().await;
        self.0.next_id.store(max_id + 1, Ordering::Relaxed);
        // Whatever runs with our uml_dir and is not a guest just reattached was left by a
        // previous daemon (a start it did not record, a guest it did not finish killing, a
        // helper that outlived its guest): the domains say shut off, so it must not run,
        // and it may hold a disk image the next start needs.
        match process::kill_strays(&paths.uml_dir, &keep).await {
            Ok(pids) if !pids.is_empty() => {
                tracing::warn!(?pids, "killed guest processes no live status claims")
            }
            Ok(_) => {}
            Err(e) => tracing::error!("cannot kill stray guest processes: {e}"),
        }
        // Autostart comes after every reattach, as it always did: a guest whose interrupted
        // start cannot be completed is shut off by then, and autostart boots it afresh.
        let driver = self.clone();
        tokio::spawn(async move {
            for task in starting {
                if let Err(e) = task.await {
                    tracing::error!("completing an interrupted start failed: {e}");
                }
            }
            driver.autostart_all().await
        });
    }

    /// Reattaches every guest a status file names, all at once. A guest whose start had not
    /// completed (`ready='0'`) may still be booting: it is only checked here, and its
    /// start is completed by a task of its own (`adopt_start`), which this returns, so
    /// that the daemon does not wait for it to listen. Returns the highest id, the main
    /// pids of the guests reattached or being so, and those tasks; a status whose guest is
    /// gone is removed.
    async fn reattach_all(&self) -> (i32, Vec<i32>, Vec<tokio::task::JoinHandle<()>>) {
        let mut tasks = tokio::task::JoinSet::new();
        let (mut max_id, mut keep, mut starting) = (0, Vec::new(), Vec::new());
        for (name, text) in xml_files(&self.0.paths.domain_state_dir) {
            let path = self.status_path(&name);
            let status = match Status::parse(&text) {
                Some(s) if !s.ready => {
                    match self.adopt_start(s) {
                        Ok((id, pid, task)) => {
                            max_id = max_id.max(id);
                            keep.push(pid);
                            starting.push(task);
                        }
                        // The start cannot be completed: it failed.
                        Err(why) => self.lost_at_restart(&name, &path, &why, shutoff::FAILED),
                    }
                    continue;
                }
                s => s,
            };
            let driver = self.clone();
            tasks.spawn(async move {
                let result = driver.reattach(&name, status).await;
                (name, path, result)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((_, _, Ok((id, pid)))) => {
                    max_id = max_id.max(id);
                    keep.push(pid);
                }
                Ok((name, path, Err(why))) => {
                    self.lost_at_restart(&name, &path, &why, shutoff::UNKNOWN)
                }
                Err(e) => tracing::error!("reattaching a guest failed: {e}"),
            }
        }
        (max_id, keep, starting)
    }

    /// A status whose guest cannot be found again: removed, the domain shut off for
    /// `reason`. What is left of the guest is killed as a stray.
    fn lost_at_restart(&self, name: &str, path: &std::path::Path, why: &str, reason: i32) {
        tracing::warn!(domain = %name, "guest did not survive the restart: {why}");
        let _ = persist::remove(path);
        if let Ok(obj) = self.by_name(name) {
            obj.data().state = StateReason::new(st::SHUTOFF, reason);
        }
    }

    /// Finds the guest of one ready status file again; returns its id and main pid.
    async fn reattach(
        &self,
        name: &str,
        status: Option<Status>,
    ) -> std::result::Result<(i32, i32), String> {
        let status = status.ok_or("unreadable status file")?;
        let def = Arc::new(domxml::parse(&status.xml).map_err(|e| e.to_string())?);
        let uml_dir = &self.0.paths.uml_dir;
        let (pid, start_time, umid) = (status.pid, status.start_time, &status.umid);
        let guest = process::reattach(pid, start_time, umid, uml_dir, &[])
            .await
            .map_err(|e| e.to_string())?;
        let ptys = take_lines(name, &guest, &status.lines);
        let obj = match self.by_name(name) {
            Ok(o) => o,
            Err(_) => {
                let o = DomainObj::new(def.name.clone(), def.uuid, None, false);
                self.insert(o.clone());
                o
            }
        };
        let pumps = start_pumps(&def, ptys, true);
        let live = self.new_live(def, status.id, guest, pumps);
        tracing::info!(domain = %name, id = status.id, "reattached to running guest");
        self.install(&obj, live, status.state);
        Ok((status.id, pid))
    }

    /// Takes over a start a previous daemon began and did not complete (its status says
    /// `ready='0'`): checks at once that the process it names is still that guest, then
    /// puts the domain where a start in progress has it (inactive, its job held, the
    /// transient object a `create_xml` inserts) and leaves the rest of the start to a task:
    /// wait until the guest is ready, pause it if it was started paused, install it, send
    /// the start's events. Returns the guest's id and main pid, and the task.
    fn adopt_start(
        &self,
        status: Status,
    ) -> std::result::Result<(i32, i32, tokio::task::JoinHandle<()>), String> {
        let def = Arc::new(domxml::parse(&status.xml).map_err(|e| e.to_string())?);
        let uml_dir = &self.0.paths.uml_dir;
        let starting = process::find_starting(status.pid, status.start_time, &status.umid, uml_dir)
            .map_err(|e| e.to_string())?;
        let (obj, _) = self.find_or_insert(&def).map_err(|e| e.message)?;
        // Nobody else can hold it yet: no client is connected, and autostart waits for us.
        let job = obj.take_job().ok_or("the domain is busy")?;
        let (id, pid) = (status.id, status.pid);
        tracing::info!(domain = %obj.name, id, pid, "completing a start the previous daemon began");
        let driver = self.clone();
        let task = tokio::spawn(async move {
            let _job = job;
            if let Err(why) = driver.complete_start(&obj, &status, def, &starting).await {
                tracing::warn!(domain = %obj.name, "the interrupted start failed: {why}");
                driver.fail_start(&obj, &starting).await;
            }
        });
        Ok((id, pid, task))
    }

    /// The rest of an adopted start (see `adopt_start`); the caller holds the job.
    async fn complete_start(
        &self,
        obj: &Arc<DomainObj>,
        status: &Status,
        def: Arc<DomainDef>,
        starting: &process::Guest,
    ) -> std::result::Result<(), String> {
        let guest = process::finish_starting(starting, &[], READY_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let start_paused = status.state.state == st::PAUSED;
        if start_paused {
            guest
                .mconsole()
                .with_timeout(GUEST_ANSWER_WAIT)
                .stop()
                .await
                .map_err(|e| format!("cannot pause the guest: {e}"))?;
        }
        let ptys = take_lines(&obj.name, &guest, &status.lines);
        // Nobody pumped these lines yet (a start does once the guest is ready): their logs
        // start here, as on any start.
        let pumps = start_pumps(&def, ptys, false);
        let live = self.new_live(def, status.id, guest, pumps);
        tracing::info!(domain = %obj.name, id = status.id, "reattached to a guest that completed its start");
        self.install(obj, live, status.state);
        self.emit_lifecycle(obj, event::STARTED, event::STARTED_BOOTED);
        if start_paused {
            self.emit_lifecycle(obj, event::SUSPENDED, event::SUSPENDED_PAUSED);
        }
        Ok(())
    }

    /// An adopted start that cannot be completed ends as a failed start does: the guest
    /// and its helpers killed, the status removed, the domain shut off (failed), a
    /// transient one dropped. The caller holds the job.
    async fn fail_start(&self, obj: &Arc<DomainObj>, starting: &process::Guest) {
        if let Err(e) = starting.kill(process::FAILED_START_GRACE).await {
            tracing::error!(domain = %obj.name, "cleaning up a failed start: {e}");
        }
        let _ = persist::remove(&self.status_path(&obj.name));
        let transient = {
            let mut d = obj.data();
            d.state = StateReason::new(st::SHUTOFF, shutoff::FAILED);
            d.config.is_none()
        };
        if transient {
            self.remove(obj);
        }
    }

    async fn autostart_all(&self) {
        for obj in self.all() {
            let want = {
                let d = obj.data();
                d.autostart && d.live.is_none()
            };
            if want {
                match self.create(&obj, false).await {
                    Ok(()) => tracing::info!(domain = %obj.name, "autostarted"),
                    Err(e) => {
                        tracing::error!(domain = %obj.name, "autostart failed: {}", e.message)
                    }
                }
            }
        }
    }
}

/// Marks a destroy as pending on a domain while it lives (see `DomainObj::destroying`).
struct DestroyPending<'a>(&'a DomainObj);

impl<'a> DestroyPending<'a> {
    fn new(obj: &'a DomainObj) -> Self {
        obj.destroying.send_modify(|n| *n += 1);
        DestroyPending(obj)
    }
}

impl Drop for DestroyPending<'_> {
    fn drop(&mut self) {
        self.0.destroying.send_modify(|n| *n = n.saturating_sub(1));
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| Some(s.rsplit_once(')')?.1.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// Takes each line's master back from the guest, which kept a copy for us.
fn take_lines(name: &str, guest: &process::Guest, lines: &[SavedLine]) -> Vec<Line> {
    let mut ptys = Vec::new();
    for l in lines {
        match guest.take_fd(l.guest_fd) {
            Ok(master) => ptys.push(Line {
                alias: l.alias.clone(),
                guest_fd: l.guest_fd,
                path: l.path.clone(),
                master,
            }),
            Err(e) => {
                tracing::error!(domain = %name, line = %l.alias, "cannot recover the console: {e}")
            }
        }
    }
    ptys
}

/// A console line's pty: the daemon's master, the guest's spare copy of it, the path.
pub(super) struct Line {
    alias: String,
    guest_fd: i32,
    path: std::path::PathBuf,
    master: std::os::fd::OwnedFd,
}

/// Starts a pump on every line. `reattached`: never truncate logs.
fn start_pumps(def: &DomainDef, lines: Vec<Line>, reattached: bool) -> Vec<LivePump> {
    let mut pumps = Vec::new();
    for line in lines {
        let dev = def
            .console_aliases()
            .into_iter()
            .find(|a| a.alias == line.alias)
            .and_then(|a| def.char_dev(&a).cloned());
        let log = match dev.as_ref().map(|d| (&d.kind, &d.log)) {
            Some((_, Some(l))) => Some(ConsoleLog {
                path: l.file.clone(),
                append: l.append || reattached,
            }),
            Some((CharKind::File(p), None)) => Some(ConsoleLog {
                path: p.clone(),
                append: reattached,
            }),
            _ => None,
        };
        match console::start_master(line.master, &line.path, log) {
            Ok(p) => pumps.push(LivePump {
                alias: line.alias,
                guest_fd: line.guest_fd,
                pump: Arc::new(p),
            }),
            Err(e) => {
                tracing::error!(line = %line.alias, "cannot pump console {}: {e}", line.path.display())
            }
        }
    }
    pumps
}

/// `(stem, content)` of every `*.xml` file in `dir`.
fn xml_files(dir: &std::path::Path) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".xml") else {
            continue;
        };
        if stem.starts_with('.') || !e.path().is_file() {
            continue;
        }
        match std::fs::read_to_string(e.path()) {
            Ok(text) => out.push((stem.to_string(), text)),
            Err(err) => tracing::error!("cannot read {}: {err}", e.path().display()),
        }
    }
    out.sort();
    out
}
