//! The `virtumld` binary: command line, logging, runtime; the daemon itself is the library.

use std::process::ExitCode;
use std::sync::Arc;

use tracing::{error, info, warn};

use virtumld::cli::{self, Parsed};
use virtumld::config::Config;
use virtumld::daemon::Daemon;
use virtumld::paths::{Mode, Paths};
use virtumld::{driver, host, server};

fn main() -> ExitCode {
    // Before anything else: the process has one thread and no descriptor of its own yet.
    let inherited = match virtumld::activation::take() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("virtumld: {e}");
            return ExitCode::from(1);
        }
    };
    let opts = match cli::parse(std::env::args().skip(1)) {
        Ok(Parsed::Run(o)) => o,
        Ok(Parsed::Help) => {
            print!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Version) => {
            println!("virtumld {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("virtumld: {e}");
            return ExitCode::from(2);
        }
    };
    let mode = opts.mode.unwrap_or(if nix::unistd::geteuid().is_root() {
        Mode::System
    } else {
        Mode::Session
    });
    let paths = match (&opts.root, mode) {
        (Some(root), _) => Paths::system(root),
        (None, Mode::System) => Paths::system(std::path::Path::new("/")),
        (None, Mode::Session) => Paths::session(&|k| std::env::var(k).ok()),
    };
    let config_path = opts
        .config
        .clone()
        .unwrap_or_else(|| paths.config_file.clone());
    let (config, warnings) = match Config::load(&config_path, opts.config.is_some()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("virtumld: configuration error: {e}");
            return ExitCode::from(1);
        }
    };
    init_tracing(opts.verbose, &config);
    for w in warnings {
        warn!("{}: {w}", config_path.display());
    }
    // Multi-thread even with one worker: `persist::on_disk` needs it to move the other
    // connections to a fresh thread while a call waits on the disk.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers())
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let pid_file = opts
        .pid_file
        .clone()
        .unwrap_or_else(|| paths.pid_file.clone());
    let code = runtime.block_on(run(mode, config, paths, opts, &pid_file, inherited));
    let _ = std::fs::remove_file(pid_file);
    code
}

fn init_tracing(verbose: bool, config: &Config) {
    use tracing_subscriber::EnvFilter;
    let default = if verbose {
        "debug"
    } else {
        match config.log_level {
            Some(1) => "debug",
            Some(2) => "info",
            Some(4) => "error",
            _ => "warn",
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn run(
    mode: Mode,
    config: Config,
    paths: Paths,
    opts: cli::Options,
    pid_file: &std::path::Path,
    inherited: Vec<virtumld::activation::Inherited>,
) -> ExitCode {
    let uml_version = host::uml_version(&config.uml_kernel).unwrap_or_else(|| {
        warn!(
            "cannot read the version of {}: reporting 0",
            config.uml_kernel.display()
        );
        0
    });
    if let Err(e) = virtumld_uml::process::become_subreaper() {
        error!("cannot become the reaper of guest processes: {e}");
        return ExitCode::from(1);
    }
    let driver = driver::Driver::start(paths.clone()).await;
    let daemon = Arc::new(Daemon::new(mode, config, paths, uml_version, driver));
    let server = match server::Server::bind_with(daemon.clone(), opts.listen, inherited).await {
        Ok(s) => s,
        Err(e) => {
            error!("{e}");
            eprintln!("virtumld: {e}");
            return ExitCode::from(1);
        }
    };
    if let Err(e) = write_pid_file(pid_file) {
        error!("cannot write pid file {}: {e}", pid_file.display());
        return ExitCode::from(1);
    }
    virtumld::activation::notify_ready();
    info!(
        "virtumld {} serving uml://{} (sockets in {})",
        env!("CARGO_PKG_VERSION"),
        mode.uri_path(),
        daemon.paths.socket_dir.display()
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        let _ = stop_tx.send(true);
    });
    server
        .run(stop_rx, opts.timeout.map(std::time::Duration::from_secs))
        .await;
    ExitCode::SUCCESS
}

fn write_pid_file(path: &std::path::Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, format!("{}\n", std::process::id()))
}
