//! The shared clock of a run: setup → warm-up → measurement → drain, with a progress line,
//! the server's CPU sampled at the edges of the measurement window, and hard bounds.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::stats::{self, ServerSample};

/// Phases: 0 = warm-up (the default), then these.
pub const MEASURE: u8 = 1;
pub const STOP: u8 = 2;

/// Counters every worker of a run updates.
#[derive(Default)]
pub struct Run {
    phase: AtomicU8,
    pub ready: AtomicUsize,
    pub failed: AtomicUsize,
    /// Operations completed inside the measurement window.
    pub measured: AtomicU64,
    /// Operations completed in any phase (progress only).
    pub total: AtomicU64,
    pub errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Run {
    pub fn new() -> Arc<Run> {
        Arc::new(Run::default())
    }

    pub fn phase(&self) -> u8 {
        self.phase.load(Ordering::Acquire)
    }

    pub fn set_phase(&self, p: u8) {
        self.phase.store(p, Ordering::Release);
    }

    /// Records an error; the text is built only for the first one.
    pub fn error(&self, what: impl FnOnce() -> String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut g = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            *g = Some(what());
        }
    }

    /// A worker could not start or broke down.
    pub fn fail(&self, what: impl FnOnce() -> String) {
        self.failed.fetch_add(1, Ordering::AcqRel);
        self.error(what);
    }

    pub fn first_error(&self) -> Option<String> {
        self.first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

pub struct Settings {
    pub name: String,
    pub pid: Option<u32>,
    pub duration: Duration,
    pub warmup: Duration,
    pub count: Option<u64>,
    pub quiet: bool,
    /// Word for one operation in the progress line.
    pub unit: &'static str,
}

/// What happened inside the measurement window.
pub struct Window {
    pub elapsed: Duration,
    pub before: ServerSample,
    pub after: ServerSample,
    pub client_cpu_s: f64,
    /// Time our own threads waited for a CPU during the window.
    pub client_runq_wait_s: Option<f64>,
    pub measured: u64,
    pub errors: u64,
    pub workers_failed: usize,
    pub first_error: Option<String>,
}

impl Window {
    pub fn server_cpu_s(&self) -> Option<f64> {
        Some(self.after.cpu_s? - self.before.cpu_s?)
    }

    pub fn rate(&self) -> f64 {
        self.measured as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

pub fn stderr_is_tty() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(2) == 1 }
}

pub struct Progress {
    tty: bool,
    last: Instant,
    every: Duration,
    printed: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        let tty = stderr_is_tty();
        Progress {
            tty,
            last: Instant::now(),
            every: if quiet {
                Duration::MAX
            } else if tty {
                Duration::from_millis(500)
            } else {
                Duration::from_secs(2)
            },
            printed: false,
        }
    }

    pub fn tick(&mut self, line: impl FnOnce() -> String) {
        if self.last.elapsed() < self.every {
            return;
        }
        self.last = Instant::now();
        let l = line();
        if self.tty {
            eprint!("\r\x1b[K{l}");
        } else {
            eprintln!("{l}");
        }
        self.printed = true;
    }

    pub fn done(&mut self) {
        if self.tty && self.printed {
            eprint!("\r\x1b[K");
        }
        self.printed = false;
    }
}

/// Waits for `workers` to connect, warms up, measures, stops and joins the tasks.
pub async fn drive<T: Send + 'static>(
    s: &Settings,
    run: &Arc<Run>,
    workers: usize,
    tasks: Vec<JoinHandle<T>>,
) -> (Window, Vec<T>) {
    let mut prog = Progress::new(s.quiet);
    let setup_deadline = Instant::now() + Duration::from_secs(60);
    while run.ready.load(Ordering::Acquire) + run.failed.load(Ordering::Acquire) < workers
        && Instant::now() < setup_deadline
    {
        prog.tick(|| {
            format!(
                "[{}] connecting {}/{}",
                s.name,
                run.ready.load(Ordering::Relaxed),
                workers
            )
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let warm_end = Instant::now() + s.warmup;
    while Instant::now() < warm_end {
        prog.tick(|| {
            format!(
                "[{}] warming up  {} {}",
                s.name,
                run.total.load(Ordering::Relaxed),
                s.unit
            )
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = stats::sample(s.pid);
    let c0 = stats::self_cpu_seconds();
    let q0 = stats::proc_runq_wait_seconds(std::process::id());
    let t0 = Instant::now();
    run.set_phase(MEASURE);
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let el = t0.elapsed();
        let m = run.measured.load(Ordering::Relaxed);
        if el >= s.duration || s.count.is_some_and(|c| m >= c) {
            break;
        }
        if run.failed.load(Ordering::Relaxed) >= workers {
            break;
        }
        prog.tick(|| {
            format!(
                "[{}] {:.1}/{:.0}s  {} {}  {:.0}/s  errors {}",
                s.name,
                el.as_secs_f64(),
                s.duration.as_secs_f64(),
                m,
                s.unit,
                m as f64 / el.as_secs_f64(),
                run.errors.load(Ordering::Relaxed)
            )
        });
    }
    let measured = run.measured.load(Ordering::Acquire);
    let elapsed = t0.elapsed();
    let after = stats::sample(s.pid);
    let client_cpu_s = stats::self_cpu_seconds() - c0;
    let client_runq_wait_s = match (q0, stats::proc_runq_wait_seconds(std::process::id())) {
        (Some(a), Some(b)) => Some((b - a).max(0.0)),
        _ => None,
    };
    run.set_phase(STOP);
    prog.done();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    for t in tasks {
        let left = deadline.saturating_duration_since(Instant::now());
        let abort = t.abort_handle();
        match tokio::time::timeout(left, t).await {
            Ok(Ok(v)) => out.push(v),
            Ok(Err(_)) => {}
            Err(_) => {
                abort.abort();
                run.error(|| "a worker did not finish within 15 s of the stop".to_string());
            }
        }
    }
    (
        Window {
            elapsed,
            before,
            after,
            client_cpu_s,
            client_runq_wait_s,
            measured,
            errors: run.errors.load(Ordering::Acquire),
            workers_failed: run.failed.load(Ordering::Acquire),
            first_error: run.first_error(),
        },
        out,
    )
}
