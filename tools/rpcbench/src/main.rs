//! rpcbench: a load generator for libvirt-protocol servers. It speaks the raw remote
//! protocol (virtumld-protocol, no libvirt C library) over TCP or a UNIX socket, so the same
//! scenario runs against libvirtd (`test:///default`) and virtumld (`uml:///system`).

mod conn;
mod domains;
mod floor;
mod report;
mod run;
mod scenarios;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use conn::Target;
use domains::XmlOpts;
use scenarios::Env;

#[derive(Parser)]
#[command(
    name = "rpcbench",
    about = "Benchmark a libvirt remote-protocol server over TCP or a UNIX socket",
    after_help = "Every run is bounded by --duration (seconds) and optionally --count. \
                  With --pid the server's CPU (utime+stime from /proc/PID/stat), RSS and \
                  fds are reported. Results go to stdout; --out FILE appends `tag.key value` \
                  lines that `rpcbench compare` tabulates."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Common {
    /// Server TCP address, HOST:PORT.
    #[arg(long, conflicts_with = "unix", required_unless_present = "unix")]
    tcp: Option<String>,
    /// Server UNIX socket path.
    #[arg(long)]
    unix: Option<PathBuf>,
    /// Name sent in CONNECT_OPEN: test:///default (libvirtd's test driver), uml:///system, …
    #[arg(long)]
    uri: String,
    /// Open read-only (CONNECT_OPEN flags = 1).
    #[arg(long)]
    readonly: bool,
    /// Server pid: report its CPU per call, RSS, fds and threads.
    #[arg(long)]
    pid: Option<u32>,
    /// Length of the measurement window, seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop the measurement after this many operations (also bounded by --duration).
    #[arg(long)]
    count: Option<u64>,
    /// Warm-up before the measurement window, seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Open loop: offer this many calls per second in all (version, info, list), with at
    /// most --depth in flight per connection; default is closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Client runtime threads (1 = tokio current-thread runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Append `TAG.key value` result lines to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Name of this run in reports (default: the scenario name).
    #[arg(long)]
    tag: Option<String>,
    /// No progress line.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Pipelined CONNECT_GET_VERSION: C connections × D calls in flight.
    Version {
        #[command(flatten)]
        c: Common,
        #[arg(long, short = 'C', default_value_t = 16)]
        conns: usize,
        #[arg(long, short = 'D', default_value_t = 16)]
        depth: usize,
    },
    /// Pipelined DOMAIN_GET_INFO on an existing domain.
    Info {
        #[command(flatten)]
        c: Common,
        #[arg(long, short = 'C', default_value_t = 16)]
        conns: usize,
        #[arg(long, short = 'D', default_value_t = 16)]
        depth: usize,
        /// Domain to query (libvirtd's test driver has "test").
        #[arg(long, default_value = "test")]
        domain: String,
        /// Define the domain first when it does not exist.
        #[arg(long)]
        define: bool,
        #[command(flatten)]
        xml: XmlOpts,
    },
    /// Pipelined CONNECT_LIST_ALL_DOMAINS, optionally after defining N domains.
    List {
        #[command(flatten)]
        c: Common,
        #[arg(long, short = 'C', default_value_t = 1)]
        conns: usize,
        #[arg(long, short = 'D', default_value_t = 1)]
        depth: usize,
        /// Define this many domains first (DOMAIN_DEFINE_XML), undefine them after.
        #[arg(long, default_value_t = 0)]
        define: usize,
        /// Leave the defined domains in place.
        #[arg(long)]
        keep: bool,
        /// CONNECT_LIST_ALL_DOMAINS flags (3 = active|inactive, as `virsh list --all`).
        #[arg(long, default_value_t = 3)]
        flags: u32,
        #[command(flatten)]
        xml: XmlOpts,
    },
    /// connect + AUTH_LIST + CONNECT_OPEN + CONNECT_CLOSE + close, in a loop per worker.
    Open {
        #[command(flatten)]
        c: Common,
        #[arg(long, short = 'C', default_value_t = 4)]
        conns: usize,
    },
    /// Hold N authenticated connections; the server's RSS and fds, and a canary's latency.
    Idle {
        #[command(flatten)]
        c: Common,
        #[arg(long, short = 'C', default_value_t = 1000)]
        conns: usize,
        /// Handshakes in progress at once while opening.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// One canary CONNECT_GET_VERSION every this many microseconds (for --duration).
        #[arg(long, default_value_t = 1000)]
        canary_interval_us: u64,
        /// Pause before sampling the server, seconds.
        #[arg(long, default_value_t = 1.0)]
        settle: f64,
    },
    /// N clients register for lifecycle events (316); one more defines/undefines a domain.
    Events {
        #[command(flatten)]
        c: Common,
        #[arg(long, short = 'N', default_value_t = 50)]
        listeners: usize,
        #[command(flatten)]
        xml: XmlOpts,
    },
    /// Wait until a just-started server completes a handshake (and lists N domains).
    Ready {
        #[command(flatten)]
        c: Common,
        /// Start time of the server, ns since the epoch (`date +%s%N` before starting it).
        #[arg(long)]
        t0_ns: Option<u128>,
        /// Also list the domains and check there are at least this many.
        #[arg(long)]
        expect_domains: Option<usize>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
    /// Serve canned replies on 127.0.0.1:PORT (no dispatch, no state): the floor any
    /// server on this machine can reach, to run the other scenarios against.
    Floor {
        /// Address to listen on, HOST:PORT (keep it on loopback).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// Runtime worker threads: 0 = tokio's default (one per CPU), 1 = current-thread
        /// runtime (the cheapest; what tools/bench-vs-libvirtd uses).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Side-by-side table of two --out files, with how many times better B is.
    Compare {
        a: PathBuf,
        b: PathBuf,
        #[arg(long, default_value = "A")]
        label_a: String,
        #[arg(long, default_value = "B")]
        label_b: String,
    },
    /// Check the targets against libvirtd (A) and virtumld (B) result files.
    Targets {
        a: PathBuf,
        b: PathBuf,
        /// Results of `rpcbench floor` in the same rounds: each target it has a figure for
        /// also says whether the floor itself meets it.
        #[arg(long)]
        floor: Option<PathBuf>,
    },
    /// Print the UML domain XML rpcbench defines (for `virsh define`).
    UmlXml { name: String, uuid: Option<String> },
    /// Write N UML definition files DIR/PREFIX-NNNNN.xml (virtumld's `ROOT/etc/libvirt/uml`).
    GenUmlDefs {
        dir: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        #[arg(long, default_value = "bulk")]
        prefix: String,
    },
}

fn env_of(c: &Common, scenario: &str) -> Env {
    let target = match (&c.tcp, &c.unix) {
        (Some(a), _) => Target::Tcp(a.clone()),
        (None, Some(p)) => Target::Unix(p.clone()),
        (None, None) => unreachable!("clap requires one"),
    };
    Env {
        target,
        uri: c.uri.clone(),
        ro: c.readonly,
        pid: c.pid,
        duration: Duration::from_secs_f64(c.duration.max(0.0)),
        warmup: Duration::from_secs_f64(c.warmup.max(0.0)),
        count: c.count,
        quiet: c.quiet,
        tag: c.tag.clone().unwrap_or_else(|| scenario.to_string()),
        out: c.out.clone(),
        rate: c.rate,
    }
}

fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (c, name) = match &cli.cmd {
        Cmd::Compare {
            a,
            b,
            label_a,
            label_b,
        } => {
            return match report::compare(a, b, label_a, label_b) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("rpcbench: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Cmd::Targets { a, b, floor } => {
            return match report::targets(a, b, floor.as_deref()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("rpcbench: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Cmd::UmlXml { name, uuid } => {
            let u = uuid.clone().unwrap_or_else(|| {
                let mut mk = domains::XmlMaker::new(
                    &XmlOpts {
                        xml_flavor: domains::Flavor::Uml,
                        xml_template: None,
                    },
                    "uml:///system",
                )
                .expect("uml flavor");
                domains::uuid_string(&mk.uuid())
            });
            print!("{}", domains::uml_xml(name, &u));
            return ExitCode::SUCCESS;
        }
        Cmd::GenUmlDefs { dir, count, prefix } => {
            return match domains::gen_uml_defs(dir, *count, prefix) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("rpcbench: {}: {e}", dir.display());
                    ExitCode::FAILURE
                }
            };
        }
        Cmd::Floor { listen, threads } => {
            let rt = if *threads == 0 {
                tokio::runtime::Runtime::new()
            } else {
                runtime(*threads)
            };
            let result = rt.and_then(|rt| rt.block_on(floor::serve(listen)));
            if let Err(e) = result {
                eprintln!("rpcbench floor: {e}");
            }
            return ExitCode::FAILURE;
        }
        Cmd::Version { c, .. } => (c, "version"),
        Cmd::Info { c, .. } => (c, "info"),
        Cmd::List { c, .. } => (c, "list"),
        Cmd::Open { c, .. } => (c, "open"),
        Cmd::Idle { c, .. } => (c, "idle"),
        Cmd::Events { c, .. } => (c, "events"),
        Cmd::Ready { c, .. } => (c, "ready"),
    };
    let env = env_of(c, name);
    let rt = match runtime(c.threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rpcbench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match &cli.cmd {
            Cmd::Version { conns, depth, .. } => scenarios::version(&env, *conns, *depth).await,
            Cmd::Info {
                conns,
                depth,
                domain,
                define,
                xml,
                ..
            } => scenarios::info(&env, *conns, *depth, domain, *define, xml).await,
            Cmd::List {
                conns,
                depth,
                define,
                keep,
                flags,
                xml,
                ..
            } => scenarios::list(&env, *conns, *depth, *define, *keep, *flags, xml).await,
            Cmd::Open { conns, .. } => scenarios::open(&env, *conns).await,
            Cmd::Idle {
                conns,
                concurrency,
                canary_interval_us,
                settle,
                ..
            } => {
                scenarios::idle(
                    &env,
                    *conns,
                    *concurrency,
                    Duration::from_micros((*canary_interval_us).max(1)),
                    Duration::from_secs_f64(settle.max(0.0)),
                )
                .await
            }
            Cmd::Events { listeners, xml, .. } => scenarios::events(&env, *listeners, xml).await,
            Cmd::Ready {
                t0_ns,
                expect_domains,
                timeout,
                ..
            } => {
                scenarios::ready(
                    &env,
                    *t0_ns,
                    *expect_domains,
                    Duration::from_secs_f64(timeout.max(0.0)),
                )
                .await
            }
            Cmd::Compare { .. }
            | Cmd::Floor { .. }
            | Cmd::Targets { .. }
            | Cmd::UmlXml { .. }
            | Cmd::GenUmlDefs { .. } => unreachable!(),
        }
    });
    // Idle connections and listener tasks may still be parked: do not wait for them.
    rt.shutdown_background();
    match result {
        Ok(r) => match r.emit(env.out.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rpcbench: cannot write results: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("rpcbench [{}]: {e}", env.tag);
            ExitCode::FAILURE
        }
    }
}
