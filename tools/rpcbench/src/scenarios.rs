//! The scenarios: pipelined calls (version, info, list), open/close, idle connections,
//! event fan-out, and start-up readiness.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Semaphore};
use tokio::time::timeout;
use virtumld_protocol::frame;
use virtumld_protocol::header::{MessageType, Status, KEEPALIVE_PROC_PING, KEEPALIVE_PROGRAM};
use virtumld_protocol::procedures::proc as p;
use virtumld_protocol::remote::{
    ConnectDomainEventCallbackRegisterAnyArgs, ConnectDomainEventCallbackRegisterAnyRet,
    ConnectGetVersionRet, ConnectListAllDomainsArgs, ConnectListAllDomainsRet, DomainDefineXmlArgs,
    DomainDefineXmlRet, DomainEventCallbackLifecycleMsg, DomainGetInfoArgs, DomainGetInfoRet,
    DomainLookupByNameArgs, DomainLookupByNameRet, DomainUndefineArgs,
};
use virtumld_protocol::xdr::{self, Xdr};

use crate::conn::{describe_error_payload, CallError, Conn, Target};
use crate::domains::{self, XmlMaker, XmlOpts};
use crate::report::Report;
use crate::run::{self, Progress, Run, Settings, Window, MEASURE, STOP};
use crate::stats::{self, Latencies};

/// What every scenario needs to reach the server and bound itself.
#[derive(Clone)]
pub struct Env {
    pub target: Target,
    pub uri: String,
    pub ro: bool,
    pub pid: Option<u32>,
    pub duration: Duration,
    pub warmup: Duration,
    pub count: Option<u64>,
    pub quiet: bool,
    pub tag: String,
    pub out: Option<std::path::PathBuf>,
    /// Open-loop offered load, calls per second over all connections (pipelined scenarios).
    pub rate: Option<f64>,
}

impl Env {
    fn settings(&self, unit: &'static str) -> Settings {
        Settings {
            name: self.tag.clone(),
            pid: self.pid,
            duration: self.duration,
            warmup: self.warmup,
            count: self.count,
            quiet: self.quiet,
            unit,
        }
    }

    fn say(&self, s: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("[{}] {}", self.tag, s.as_ref());
        }
    }

    async fn open(&self) -> Result<Conn, String> {
        Conn::open(&self.target, &self.uri, self.ro)
            .await
            .map_err(|e| format!("cannot open {} on {}: {e}", self.uri, self.target))
    }
}

/// Samples kept per run, across workers: exact percentiles without unbounded memory.
const SAMPLE_CAP: usize = 20_000_000;

fn add_latency(r: &mut Report, prefix: &str, lat: &mut Latencies) {
    r.int(&format!("{prefix}samples"), lat.len() as u64);
    r.opt(&format!("{prefix}p50_us"), lat.quantile_us(0.5));
    r.opt(&format!("{prefix}p99_us"), lat.quantile_us(0.99));
    r.opt(&format!("{prefix}p999_us"), lat.quantile_us(0.999));
    r.opt(&format!("{prefix}max_us"), lat.max_us());
}

fn add_window(r: &mut Report, w: &Window, unit: &str) {
    r.num("seconds", w.elapsed.as_secs_f64());
    r.int(unit, w.measured);
    r.num(&format!("{unit}_per_s"), w.rate());
    if let Some(cpu) = w.server_cpu_s() {
        r.num("server_cpu_s", cpu);
        if w.measured > 0 {
            // CPU seconds per 1000 operations = milliseconds per operation.
            r.num("server_cpu_s_per_1k", cpu * 1000.0 / w.measured as f64);
            r.num("server_cpu_us", cpu * 1e6 / w.measured as f64);
        }
        r.num("server_cores_busy", cpu / w.elapsed.as_secs_f64().max(1e-9));
    }
    if let Some(t) = w.after.threads {
        r.int("server_threads", t);
    }
    if let (Some(a), Some(b)) = (w.before.runq_wait_s, w.after.runq_wait_s) {
        // Time the server was runnable but had no CPU: the machine's other load.
        r.num("server_runq_wait_ms", (b - a).max(0.0) * 1000.0);
    }
    r.num("client_cpu_s", w.client_cpu_s);
    if let Some(q) = w.client_runq_wait_s {
        r.num("client_runq_wait_ms", q * 1000.0);
    }
    r.int("errors", w.errors);
    if w.workers_failed > 0 {
        r.int("workers_failed", w.workers_failed as u64);
    }
    if let Some(e) = &w.first_error {
        r.text("first_error", e);
    }
}

// ---------------------------------------------------------------------------------------
// Pipelined calls: C connections × D calls in flight, closed loop.
// ---------------------------------------------------------------------------------------

/// Calls per second for one connection in open-loop mode (`--rate`), or closed loop.
#[derive(Clone, Copy)]
pub enum Load {
    /// Keep `depth` calls in flight: a new call as soon as a reply arrives.
    Closed,
    /// Send calls on a fixed schedule (this many per second on this connection), at most
    /// `depth` in flight; calls the schedule wants while `depth` are in flight are "late".
    /// The second number offsets this connection's schedule (seconds) so that connections
    /// do not all send in the same millisecond tick.
    Rate(f64, f64),
}

#[allow(clippy::too_many_arguments)]
async fn pipeline_worker(
    env: Arc<Env>,
    procedure: i32,
    body: Arc<[u8]>,
    depth: usize,
    load: Load,
    run: Arc<Run>,
    late: Arc<std::sync::atomic::AtomicU64>,
    cap: usize,
) -> Latencies {
    let mut lat = Latencies::with_capacity(cap.min(1 << 20));
    let mut conn = match env.open().await {
        Ok(c) => c,
        Err(e) => {
            run.fail(|| e);
            return lat;
        }
    };
    run.ready.fetch_add(1, Ordering::AcqRel);
    let mut inflight: Vec<(u32, Instant)> = Vec::with_capacity(depth);
    let t_start = Instant::now();
    let mut issued = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    if let Load::Closed = load {
        for _ in 0..depth {
            inflight.push((conn.queue_call_raw(procedure, &body), t_start));
        }
        if let Err(e) = conn.flush().await {
            run.fail(|| format!("write: {e}"));
            return lat;
        }
    }
    loop {
        let phase = run.phase();
        if phase == STOP && inflight.is_empty() {
            break;
        }
        let n = if phase == STOP {
            match timeout(Duration::from_secs(5), conn.fill()).await {
                Ok(r) => r,
                Err(_) => {
                    run.error(|| "replies still missing 5 s after the stop".to_string());
                    break;
                }
            }
        } else if let Load::Rate(per_s, offset) = load {
            tokio::select! {
                r = conn.fill() => r,
                _ = tick.tick() => {
                    // Open loop: issue what the schedule says is due by now.
                    let el = t_start.elapsed().as_secs_f64() - offset;
                    let due = if el < 0.0 { 0 } else { (el * per_s) as u64 + 1 };
                    let now = Instant::now();
                    while issued < due && inflight.len() < depth {
                        inflight.push((conn.queue_call_raw(procedure, &body), now));
                        issued += 1;
                    }
                    if issued < due {
                        // The server is behind: drop the backlog, count it.
                        if run.phase() == MEASURE {
                            late.fetch_add(due - issued, Ordering::Relaxed);
                        }
                        issued = due;
                    }
                    if let Err(e) = conn.flush().await {
                        run.fail(|| format!("write: {e}"));
                        break;
                    }
                    continue;
                }
            }
        } else {
            conn.fill().await
        };
        match n {
            Ok(0) => {
                run.fail(|| "the server closed the connection".to_string());
                break;
            }
            Err(e) => {
                run.fail(|| format!("read: {e}"));
                break;
            }
            Ok(_) => {}
        }
        let now = Instant::now();
        let phase = run.phase();
        let (mut measured, mut all, mut again) = (0u64, 0u64, 0usize);
        loop {
            let msg = match conn.take_buffered() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    run.fail(|| format!("framing: {e}"));
                    return lat;
                }
            };
            let Ok((h, payload)) = frame::split(&msg) else {
                run.fail(|| "undecodable header".to_string());
                return lat;
            };
            if h.program == KEEPALIVE_PROGRAM {
                if h.procedure == KEEPALIVE_PROC_PING {
                    conn.queue_pong();
                }
                continue;
            }
            if h.kind != MessageType::REPLY {
                continue;
            }
            let Some(i) = inflight.iter().position(|e| e.0 == h.serial) else {
                run.fail(|| format!("reply to serial {} that is not in flight", h.serial));
                return lat;
            };
            let (_, t0) = inflight.swap_remove(i);
            all += 1;
            if h.status != Status::OK {
                run.error(|| describe_error_payload(payload));
            }
            if phase == MEASURE {
                measured += 1;
                if lat.len() < cap {
                    lat.push(now - t0);
                }
            }
            if phase != STOP && matches!(load, Load::Closed) {
                again += 1;
            }
        }
        if all > 0 {
            run.total.fetch_add(all, Ordering::Relaxed);
        }
        if measured > 0 {
            run.measured.fetch_add(measured, Ordering::Relaxed);
        }
        if again > 0 {
            let t = Instant::now();
            for _ in 0..again {
                inflight.push((conn.queue_call_raw(procedure, &body), t));
            }
        }
        if conn.has_output() {
            if let Err(e) = conn.flush().await {
                run.fail(|| format!("write: {e}"));
                break;
            }
        }
    }
    lat
}

async fn pipelined(
    env: &Env,
    report: &mut Report,
    procedure: i32,
    body: Vec<u8>,
    conns: usize,
    depth: usize,
) -> Result<(), String> {
    report.int("conns", conns as u64);
    report.int("depth", depth as u64);
    let load = match env.rate {
        Some(r) if r > 0.0 => {
            report.num("offered_per_s", r);
            Load::Rate(r / conns.max(1) as f64, 0.0)
        }
        _ => Load::Closed,
    };
    let late = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let env = Arc::new(env.clone());
    let run = Run::new();
    let body: Arc<[u8]> = body.into();
    let cap = SAMPLE_CAP / conns.max(1);
    let tasks: Vec<_> = (0..conns)
        .map(|i| {
            let load = match load {
                // Spread the connections' schedules over one period of the whole rate.
                Load::Rate(per_s, _) => Load::Rate(per_s, i as f64 / (per_s * conns as f64)),
                l => l,
            };
            tokio::spawn(pipeline_worker(
                env.clone(),
                procedure,
                body.clone(),
                depth,
                load,
                run.clone(),
                late.clone(),
                cap,
            ))
        })
        .collect();
    let (w, lats) = run::drive(&env.settings("replies"), &run, conns, tasks).await;
    let mut lat = Latencies::default();
    for l in lats {
        lat.extend(l);
    }
    add_window(report, &w, "replies");
    add_latency(report, "", &mut lat);
    if let Load::Rate(..) = load {
        report.int("late_calls", late.load(Ordering::Relaxed));
    }
    if w.workers_failed >= conns {
        return Err(w
            .first_error
            .unwrap_or_else(|| "every connection failed".into()));
    }
    Ok(())
}

/// Sends one call on a fresh connection and decodes its reply, to fail early and loudly.
async fn probe<A: Xdr, R: Xdr>(conn: &mut Conn, procedure: i32, args: &A) -> Result<R, String> {
    conn.call::<A, R>(procedure, args)
        .await
        .map_err(|e| format!("probe call {procedure} failed: {e}"))
}

pub async fn version(env: &Env, conns: usize, depth: usize) -> Result<Report, String> {
    let mut r = Report::new(&env.tag);
    let mut c = env.open().await?;
    let v: ConnectGetVersionRet = probe(&mut c, p::CONNECT_GET_VERSION, &()).await?;
    r.int("hv_version", v.hv_ver);
    drop(c);
    pipelined(
        env,
        &mut r,
        p::CONNECT_GET_VERSION,
        Vec::new(),
        conns,
        depth,
    )
    .await?;
    Ok(r)
}

pub async fn info(
    env: &Env,
    conns: usize,
    depth: usize,
    domain: &str,
    define: bool,
    xml: &XmlOpts,
) -> Result<Report, String> {
    let mut r = Report::new(&env.tag);
    let mut c = env.open().await?;
    let lookup = DomainLookupByNameArgs {
        name: domain.to_string(),
    };
    let dom = match c
        .call::<_, DomainLookupByNameRet>(p::DOMAIN_LOOKUP_BY_NAME, &lookup)
        .await
    {
        Ok(ret) => ret.dom,
        Err(CallError::Remote(e)) if define => {
            env.say(format!(
                "domain {domain} not found ({}); defining it",
                e.message.as_deref().unwrap_or("")
            ));
            let mut mk = XmlMaker::new(xml, &env.uri)?;
            let ret: DomainDefineXmlRet = probe(
                &mut c,
                p::DOMAIN_DEFINE_XML,
                &DomainDefineXmlArgs {
                    xml: mk.xml(domain),
                },
            )
            .await?;
            ret.dom
        }
        Err(e) => return Err(format!("cannot look up domain {domain}: {e}")),
    };
    let args = DomainGetInfoArgs { dom };
    let i: DomainGetInfoRet = probe(&mut c, p::DOMAIN_GET_INFO, &args).await?;
    r.text("domain", domain);
    r.int("domain_state", u64::from(i.state));
    drop(c);
    let body = xdr::to_bytes(&args).to_vec();
    pipelined(env, &mut r, p::DOMAIN_GET_INFO, body, conns, depth).await?;
    Ok(r)
}

#[allow(clippy::too_many_arguments)]
pub async fn list(
    env: &Env,
    conns: usize,
    depth: usize,
    define: usize,
    keep: bool,
    flags: u32,
    xml: &XmlOpts,
) -> Result<Report, String> {
    let mut r = Report::new(&env.tag);
    // The setup connection stays open for the whole run: the state of libvirt's
    // test:///default lives only while some connection holds it.
    let mut setup = env.open().await?;
    let mut defined = Vec::new();
    if define > 0 {
        let mut mk = XmlMaker::new(xml, &env.uri)?;
        let tag = format!("{:x}", std::process::id());
        let names: Vec<String> = (0..define)
            .map(|i| format!("rpcbench-{tag}-{i:05}"))
            .collect();
        env.say(format!("defining {define} domains"));
        let t = Instant::now();
        let (doms, err) = domains::define_many(&mut setup, &mut mk, &names, env.quiet)
            .await
            .map_err(|e| format!("defining domains: {e}"))?;
        let secs = t.elapsed().as_secs_f64();
        r.int("defined", doms.len() as u64);
        r.num("define_per_s", doms.len() as f64 / secs.max(1e-9));
        defined = doms;
        if let Some(e) = err {
            r.text("define_error", &e);
            env.say(format!("some definitions failed: {e}"));
        }
    }
    let args = ConnectListAllDomainsArgs {
        need_results: 1,
        flags,
    };
    let t = Instant::now();
    let ret: ConnectListAllDomainsRet =
        probe(&mut setup, p::CONNECT_LIST_ALL_DOMAINS, &args).await?;
    r.num("first_list_us", t.elapsed().as_secs_f64() * 1e6);
    r.int("domains_listed", ret.domains.len() as u64);
    let body = xdr::to_bytes(&args).to_vec();
    let res = pipelined(env, &mut r, p::CONNECT_LIST_ALL_DOMAINS, body, conns, depth).await;
    if !defined.is_empty() && !keep {
        env.say(format!("undefining {} domains", defined.len()));
        match domains::undefine_many(&mut setup, &defined).await {
            Ok(0) => {}
            Ok(n) => env.say(format!("{n} undefines failed")),
            Err(e) => env.say(format!("undefine: {e}")),
        }
    }
    res?;
    Ok(r)
}

// ---------------------------------------------------------------------------------------
// open: connect + AUTH_LIST + CONNECT_OPEN + CONNECT_CLOSE, as fast as possible.
// ---------------------------------------------------------------------------------------

async fn open_worker(env: Arc<Env>, run: Arc<Run>, cap: usize) -> Latencies {
    let mut lat = Latencies::with_capacity(cap.min(1 << 18));
    run.ready.fetch_add(1, Ordering::AcqRel);
    loop {
        let phase = run.phase();
        if phase == STOP {
            break;
        }
        let t0 = Instant::now();
        let cycle = async {
            let mut c = Conn::open(&env.target, &env.uri, env.ro).await?;
            c.call::<_, ()>(p::CONNECT_CLOSE, &()).await?;
            Ok::<_, CallError>(())
        };
        match timeout(Duration::from_secs(10), cycle).await {
            Ok(Ok(())) => {
                run.total.fetch_add(1, Ordering::Relaxed);
                if phase == MEASURE && run.phase() == MEASURE {
                    run.measured.fetch_add(1, Ordering::Relaxed);
                    if lat.len() < cap {
                        lat.push(t0.elapsed());
                    }
                }
            }
            Ok(Err(e)) => {
                run.error(|| format!("open cycle: {e}"));
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(_) => run.error(|| "open cycle took over 10 s".to_string()),
        }
    }
    lat
}

pub async fn open(env: &Env, conns: usize) -> Result<Report, String> {
    let mut r = Report::new(&env.tag);
    r.int("conns", conns as u64);
    let env = Arc::new(env.clone());
    let run = Run::new();
    let cap = SAMPLE_CAP / conns.max(1);
    let tasks: Vec<_> = (0..conns)
        .map(|_| tokio::spawn(open_worker(env.clone(), run.clone(), cap)))
        .collect();
    let (w, lats) = run::drive(&env.settings("opens"), &run, conns, tasks).await;
    let mut lat = Latencies::default();
    for l in lats {
        lat.extend(l);
    }
    add_window(&mut r, &w, "opens");
    add_latency(&mut r, "", &mut lat);
    Ok(r)
}

// ---------------------------------------------------------------------------------------
// idle: hold N authenticated connections; the server's memory and fds; a canary's latency.
// ---------------------------------------------------------------------------------------

pub async fn idle(
    env: &Env,
    conns: usize,
    concurrency: usize,
    canary_interval: Duration,
    settle: Duration,
) -> Result<Report, String> {
    let mut r = Report::new(&env.tag);
    let limit = stats::raise_nofile(conns as u64 + 1024);
    if limit < conns as u64 + 64 {
        env.say(format!(
            "warning: RLIMIT_NOFILE is {limit}, too low for {conns} connections; \
             raise the hard limit (ulimit -Hn) first"
        ));
    }
    r.int("conns_requested", conns as u64);
    let s0 = stats::sample(env.pid);
    // Idle RSS/fds before anything connects.
    r.opt("rss_before_kib", s0.rss_kib.map(|v| v as f64));
    r.opt("fds_before", s0.fds.map(|v| v as f64));

    let env = Arc::new(env.clone());
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let t = Instant::now();
    let mut handles = Vec::with_capacity(conns);
    for _ in 0..conns {
        let env = env.clone();
        let sem = sem.clone();
        handles.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.map_err(|e| e.to_string())?;
            match timeout(Duration::from_secs(30), env.open()).await {
                Ok(r) => r,
                Err(_) => Err("handshake took over 30 s".to_string()),
            }
        }));
    }
    let mut held = Vec::with_capacity(conns);
    let mut failed = 0usize;
    let mut first_err = None;
    let mut prog = Progress::new(env.quiet);
    for h in handles {
        match h.await {
            Ok(Ok(c)) => held.push(c),
            Ok(Err(e)) => {
                failed += 1;
                first_err.get_or_insert(e);
            }
            Err(e) => {
                failed += 1;
                first_err.get_or_insert(e.to_string());
            }
        }
        prog.tick(|| format!("[{}] opened {}/{conns}", env.tag, held.len()));
    }
    prog.done();
    let open_secs = t.elapsed().as_secs_f64();
    r.int("conns_opened", held.len() as u64);
    r.int("conns_failed", failed as u64);
    if let Some(e) = &first_err {
        r.text("first_error", e);
    }
    r.num("open_seconds", open_secs);
    r.num("handshakes_per_s", held.len() as f64 / open_secs.max(1e-9));
    tokio::time::sleep(settle).await;
    let s1 = stats::sample(env.pid);
    r.opt("rss_held_kib", s1.rss_kib.map(|v| v as f64));
    r.opt("fds_held", s1.fds.map(|v| v as f64));
    if let (Some(a), Some(b)) = (s0.rss_kib, s1.rss_kib) {
        if !held.is_empty() {
            r.num(
                "per_conn_bytes",
                (b as f64 - a as f64) * 1024.0 / held.len() as f64,
            );
        }
    }
    if let Some(t) = s1.threads {
        r.int("server_threads", t);
    }

    // A canary: one more connection, one call every `canary_interval`, while N are held.
    let mut lat = Latencies::default();
    let mut canary_errors = 0u64;
    match env.open().await {
        Ok(mut c) => {
            let end = Instant::now() + env.duration;
            let mut tick = tokio::time::interval(canary_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0u64;
            while Instant::now() < end && env.count.is_none_or(|c| n < c) {
                tick.tick().await;
                let t0 = Instant::now();
                match timeout(
                    Duration::from_secs(10),
                    c.call::<_, ConnectGetVersionRet>(p::CONNECT_GET_VERSION, &()),
                )
                .await
                {
                    Ok(Ok(_)) => lat.push(t0.elapsed()),
                    _ => canary_errors += 1,
                }
                n += 1;
                prog.tick(|| format!("[{}] canary {n} calls", env.tag));
            }
            prog.done();
        }
        Err(e) => {
            canary_errors += 1;
            r.text("canary_error", &e);
        }
    }
    add_latency(&mut r, "canary_", &mut lat);
    r.int("canary_errors", canary_errors);

    // Prove the held connections are alive: one call on each, all sent, then all read.
    let t = Instant::now();
    let mut serials = Vec::with_capacity(held.len());
    for c in held.iter_mut() {
        serials.push(c.queue_call_raw(p::CONNECT_GET_VERSION, &[]));
        let _ = c.flush().await;
    }
    let mut alive = 0u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    for (c, &serial) in held.iter_mut().zip(&serials) {
        let left = deadline.saturating_duration_since(Instant::now());
        let ok = matches!(
            timeout(left, c.wait_reply(serial)).await,
            Ok(Ok((h, _))) if h.status == Status::OK
        );
        if ok {
            alive += 1;
        }
    }
    r.int("conns_held", alive);
    r.num("verify_seconds", t.elapsed().as_secs_f64());
    let s2 = stats::sample(env.pid);
    r.opt("rss_after_calls_kib", s2.rss_kib.map(|v| v as f64));
    drop(held);
    tokio::time::sleep(settle).await;
    let s3 = stats::sample(env.pid);
    r.opt("rss_after_close_kib", s3.rss_kib.map(|v| v as f64));
    r.opt("fds_after_close", s3.fds.map(|v| v as f64));
    Ok(r)
}

// ---------------------------------------------------------------------------------------
// events: N listeners registered with 316; one more client defines/undefines a domain.
// ---------------------------------------------------------------------------------------

struct Receipt {
    listener: usize,
    event: i32,
    at: Instant,
}

async fn listener(env: Arc<Env>, idx: usize, run: Arc<Run>, tx: mpsc::UnboundedSender<Receipt>) {
    let mut c = match env.open().await {
        Ok(c) => c,
        Err(e) => {
            run.fail(|| e);
            return;
        }
    };
    let args = ConnectDomainEventCallbackRegisterAnyArgs {
        event_id: 0, // VIR_DOMAIN_EVENT_ID_LIFECYCLE
        dom: None,
    };
    if let Err(e) = c
        .call::<_, ConnectDomainEventCallbackRegisterAnyRet>(
            p::CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY,
            &args,
        )
        .await
    {
        run.fail(|| format!("event registration: {e}"));
        return;
    }
    run.ready.fetch_add(1, Ordering::AcqRel);
    loop {
        let msg = match c.read_message().await {
            Ok(Some(m)) => m,
            _ => return,
        };
        let at = Instant::now();
        let Ok((h, payload)) = frame::split(&msg) else {
            return;
        };
        if h.program == KEEPALIVE_PROGRAM {
            if h.procedure == KEEPALIVE_PROC_PING {
                c.queue_pong();
                let _ = c.flush().await;
            }
            continue;
        }
        if h.kind == MessageType::MESSAGE && h.procedure == p::DOMAIN_EVENT_CALLBACK_LIFECYCLE {
            if let Ok(m) = xdr::from_bytes::<DomainEventCallbackLifecycleMsg>(payload) {
                let _ = tx.send(Receipt {
                    listener: idx,
                    event: m.msg.event,
                    at,
                });
            }
        }
    }
}

/// Collects one receipt per listener of `event`; returns (listener receipt instants, missing).
async fn collect(
    rx: &mut mpsc::UnboundedReceiver<Receipt>,
    listeners: usize,
    event: i32,
    wait: Duration,
) -> (Vec<Instant>, usize) {
    let mut seen = vec![false; listeners];
    let mut got = Vec::with_capacity(listeners);
    let deadline = tokio::time::Instant::now() + wait;
    while got.len() < listeners {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(rc)) => {
                if rc.event == event && !seen[rc.listener] {
                    seen[rc.listener] = true;
                    got.push(rc.at);
                }
            }
            _ => break,
        }
    }
    let missing = listeners - got.len();
    (got, missing)
}

pub async fn events(env: &Env, listeners: usize, xml: &XmlOpts) -> Result<Report, String> {
    let mut r = Report::new(&env.tag);
    r.int("listeners", listeners as u64);
    stats::raise_nofile(listeners as u64 + 1024);
    let mut mk = XmlMaker::new(xml, &env.uri)?;
    let envs = Arc::new(env.clone());
    let run = Run::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let tasks: Vec<_> = (0..listeners)
        .map(|i| tokio::spawn(listener(envs.clone(), i, run.clone(), tx.clone())))
        .collect();
    drop(tx);
    let setup_deadline = Instant::now() + Duration::from_secs(60);
    while run.ready.load(Ordering::Acquire) + run.failed.load(Ordering::Acquire) < listeners
        && Instant::now() < setup_deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if run.ready.load(Ordering::Acquire) < listeners {
        for t in &tasks {
            t.abort();
        }
        return Err(run
            .first_error()
            .unwrap_or_else(|| "listeners did not register within 60 s".into()));
    }
    let mut trigger = env.open().await?;
    let name = format!("rpcbench-ev-{:x}", std::process::id());
    let define = DomainDefineXmlArgs { xml: mk.xml(&name) };
    let mut from_reply = Latencies::default();
    let mut from_call = Latencies::default();
    let mut last_from_reply = Latencies::default();
    let mut trigger_lat = Latencies::default();
    let (mut early, mut missing, mut rounds) = (0u64, 0u64, 0u64);
    let mut prog = Progress::new(env.quiet);
    let before = stats::sample(env.pid);
    let c0 = stats::self_cpu_seconds();
    let t_start = Instant::now();
    let mut err: Option<String> = None;
    while t_start.elapsed() < env.duration && env.count.is_none_or(|c| rounds < c) {
        // define → DEFINED(0), undefine → UNDEFINED(1)
        let t_call = Instant::now();
        let dom = match trigger
            .call::<_, DomainDefineXmlRet>(p::DOMAIN_DEFINE_XML, &define)
            .await
        {
            Ok(ret) => ret.dom,
            Err(e) => {
                err = Some(format!("define: {e}"));
                break;
            }
        };
        let t_reply = Instant::now();
        trigger_lat.push(t_reply - t_call);
        let (got, miss) = collect(&mut rx, listeners, 0, Duration::from_secs(5)).await;
        account(
            &got,
            t_call,
            t_reply,
            &mut from_reply,
            &mut from_call,
            &mut last_from_reply,
            &mut early,
        );
        missing += miss as u64;
        let t_call = Instant::now();
        if let Err(e) = trigger
            .call::<_, ()>(p::DOMAIN_UNDEFINE, &DomainUndefineArgs { dom })
            .await
        {
            err = Some(format!("undefine: {e}"));
            break;
        }
        let t_reply = Instant::now();
        trigger_lat.push(t_reply - t_call);
        let (got, miss) = collect(&mut rx, listeners, 1, Duration::from_secs(5)).await;
        account(
            &got,
            t_call,
            t_reply,
            &mut from_reply,
            &mut from_call,
            &mut last_from_reply,
            &mut early,
        );
        missing += miss as u64;
        rounds += 1;
        prog.tick(|| {
            format!(
                "[{}] {rounds} rounds, {} events received, {missing} missing",
                env.tag,
                from_reply.len()
            )
        });
    }
    prog.done();
    let elapsed = t_start.elapsed();
    let after = stats::sample(env.pid);
    let client_cpu = stats::self_cpu_seconds() - c0;
    for t in &tasks {
        t.abort();
    }
    let delivered = from_reply.len() as u64;
    r.int("rounds", rounds);
    r.int("triggers", rounds * 2);
    r.int("events_delivered", delivered);
    r.int("events_missing", missing);
    r.int("events_before_reply", early);
    r.num("seconds", elapsed.as_secs_f64());
    r.num(
        "events_per_s",
        delivered as f64 / elapsed.as_secs_f64().max(1e-9),
    );
    if let (Some(a), Some(b)) = (before.cpu_s, after.cpu_s) {
        r.num("server_cpu_s", b - a);
        if delivered > 0 {
            r.num("server_cpu_s_per_1k", (b - a) * 1000.0 / delivered as f64);
        }
    }
    r.num("client_cpu_s", client_cpu);
    add_latency(&mut r, "trigger_", &mut trigger_lat);
    add_latency(&mut r, "fanout_", &mut from_reply);
    add_latency(&mut r, "fanout_last_", &mut last_from_reply);
    add_latency(&mut r, "from_call_", &mut from_call);
    if let Some(e) = &err {
        r.text("first_error", e);
    }
    if rounds == 0 {
        return Err(err.unwrap_or_else(|| "no round completed".into()));
    }
    Ok(r)
}

/// Latency of each receipt from the trigger's reply (clamped at 0, counting those that
/// came first) and from the call, plus the last receipt of the round.
fn account(
    got: &[Instant],
    t_call: Instant,
    t_reply: Instant,
    from_reply: &mut Latencies,
    from_call: &mut Latencies,
    last: &mut Latencies,
    early: &mut u64,
) {
    let mut worst = Duration::ZERO;
    for &at in got {
        if at < t_reply {
            *early += 1;
        }
        let d = at.saturating_duration_since(t_reply);
        worst = worst.max(d);
        from_reply.push(d);
        from_call.push(at.saturating_duration_since(t_call));
    }
    if !got.is_empty() {
        last.push(worst);
    }
}

// ---------------------------------------------------------------------------------------
// ready: how long a freshly started server takes to answer (and to list N domains).
// ---------------------------------------------------------------------------------------

fn realtime_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

pub async fn ready(
    env: &Env,
    t0_ns: Option<u128>,
    expect_domains: Option<usize>,
    wait: Duration,
) -> Result<Report, String> {
    let mut r = Report::new(&env.tag);
    let start_ns = t0_ns.unwrap_or_else(realtime_ns);
    let deadline = Instant::now() + wait;
    let ms_since = |ns: u128| (ns.saturating_sub(start_ns)) as f64 / 1e6;
    let mut attempts = 0u64;
    let mut last_err = String::new();
    loop {
        if Instant::now() >= deadline {
            return Err(format!(
                "not ready within {:.0} s after {attempts} attempts: {last_err}",
                wait.as_secs_f64()
            ));
        }
        attempts += 1;
        match Conn::open(&env.target, &env.uri, env.ro).await {
            Ok(mut c) => {
                r.num("handshake_ready_ms", ms_since(realtime_ns()));
                if let Some(n) = expect_domains {
                    let args = ConnectListAllDomainsArgs {
                        need_results: 1,
                        flags: 0,
                    };
                    let t = Instant::now();
                    match c
                        .call::<_, ConnectListAllDomainsRet>(p::CONNECT_LIST_ALL_DOMAINS, &args)
                        .await
                    {
                        Ok(ret) => {
                            r.num("first_list_us", t.elapsed().as_secs_f64() * 1e6);
                            r.num("list_ready_ms", ms_since(realtime_ns()));
                            r.int("domains_listed", ret.domains.len() as u64);
                            if ret.domains.len() < n {
                                r.text(
                                    "warning",
                                    &format!("expected {n} domains, got {}", ret.domains.len()),
                                );
                            }
                        }
                        Err(e) => return Err(format!("CONNECT_LIST_ALL_DOMAINS: {e}")),
                    }
                }
                r.int("attempts", attempts);
                return Ok(r);
            }
            Err(e) => last_err = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
