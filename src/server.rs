//! Listeners and the daemon's life: UNIX sockets (read-write and read-only; group, modes and,
//! in session mode, the peer's uid; libvirtd's legacy paths for ssh clients), TCP, TLS, the
//! admin socket, each bound here or handed over by systemd (`crate::activation`), the
//! client limit, the idle timeout, and an orderly shutdown on SIGTERM/SIGINT.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info, warn, Instrument};

use crate::activation::{self, Inherited, Role};
use crate::daemon::Daemon;
use crate::paths::Mode;
use crate::rpc::client::Transport;
use crate::rpc::connection;
use crate::tls::{self, Tls};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another daemon is already listening on {0}")]
    InUse(PathBuf),
    #[error("{0}")]
    Config(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StartError + '_ {
    move |source| StartError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `unix_sock_group`: a group name, or `+N` for a numeric gid (as libvirtd reads it).
fn lookup_group(name: &str) -> Result<nix::unistd::Gid, StartError> {
    if let Some(n) = name.strip_prefix('+') {
        if let Ok(gid) = n.parse::<u32>() {
            return Ok(nix::unistd::Gid::from_raw(gid));
        }
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid),
        Ok(None) => Err(StartError::Config(format!(
            "unix_sock_group: unknown group '{name}'"
        ))),
        Err(e) => Err(StartError::Config(format!(
            "unix_sock_group: cannot look up group '{name}': {e}"
        ))),
    }
}

/// Binds a UNIX socket, replacing a stale socket file but never a live one.
fn bind_unix(
    path: &Path,
    mode: u32,
    group: Option<nix::unistd::Gid>,
) -> Result<UnixListener, StartError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(StartError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io_err(path))?;
    }
    let l = UnixListener::bind(path).map_err(io_err(path))?;
    if let Some(gid) = group {
        nix::unistd::chown(path, None, Some(gid))
            .map_err(|e| io_err(path)(std::io::Error::from(e)))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err(path))?;
    Ok(l)
}

/// `libvirt-sock` and `libvirt-sock-ro`: bound like ours when free or stale; a live one
/// belongs to a libvirtd and is left alone, and any other failure only costs the ssh
/// clients' `nc` fallback, so neither stops the daemon.
fn bind_legacy_unix(
    path: &Path,
    mode: u32,
    group: Option<nix::unistd::Gid>,
) -> Option<UnixListener> {
    match bind_unix(path, mode, group) {
        Ok(l) => Some(l),
        Err(StartError::InUse(p)) => {
            info!(
                "{} is served by another daemon (libvirtd?): not listening there",
                p.display()
            );
            None
        }
        Err(e) => {
            warn!("not listening on {}: {e}", path.display());
            None
        }
    }
}

/// A listening socket systemd handed over, as a tokio listener.
fn inherited_unix(s: Inherited) -> Result<UnixListener, StartError> {
    let l = std::os::unix::net::UnixListener::from(s.fd);
    l.set_nonblocking(true)
        .and_then(|()| UnixListener::from_std(l))
        .map_err(|e| StartError::Config(format!("socket activation: {e}")))
}

fn inherited_tcp(s: Inherited) -> Result<TcpListener, StartError> {
    let l = std::net::TcpListener::from(s.fd);
    l.set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(l))
        .map_err(|e| StartError::Config(format!("socket activation: {e}")))
}

enum Listener {
    Unix {
        listener: UnixListener,
        path: PathBuf,
        read_only: bool,
        /// The admin socket: served by `crate::admin`, not the remote program.
        admin: bool,
    },
    Tcp(TcpListener),
    Tls(TcpListener, Arc<Tls>),
}

pub struct Server {
    daemon: Arc<Daemon>,
    listeners: Vec<Listener>,
    socket_paths: Vec<PathBuf>,
}

impl Server {
    /// Opens every listener the mode and configuration ask for.
    pub async fn bind(daemon: Arc<Daemon>, listen: bool) -> Result<Server, StartError> {
        Self::bind_with(daemon, listen, Vec::new()).await
    }

    /// Like `bind`, using first the sockets systemd handed over (`crate::activation`): a
    /// kind of listener that was handed over is not bound again, and activated TCP/TLS
    /// sockets are served without `--listen`. Only the sockets bound here are removed on
    /// exit.
    pub async fn bind_with(
        daemon: Arc<Daemon>,
        listen: bool,
        inherited: Vec<Inherited>,
    ) -> Result<Server, StartError> {
        let cfg = &daemon.config;
        let sock_dir = cfg
            .unix_sock_dir
            .clone()
            .unwrap_or_else(|| daemon.paths.socket_dir.clone());
        let mut listeners = Vec::new();
        let mut socket_paths = Vec::new();
        let mut tls_creds: Option<Arc<Tls>> = None;
        let mut load_tls = || -> Result<Arc<Tls>, StartError> {
            if let Some(t) = &tls_creds {
                return Ok(t.clone());
            }
            // Credentials first: a missing or bad file stops the daemon before it listens.
            let files = tls::Files::resolve(cfg, &daemon.paths);
            let tls = Arc::new(Tls::load(cfg, &files).map_err(StartError::Config)?);
            info!(
                "TLS certificate {}, CA {}{}",
                files.cert.display(),
                files.ca.display(),
                files
                    .crl
                    .as_ref()
                    .map(|c| format!(", CRL {}", c.display()))
                    .unwrap_or_default()
            );
            tls_creds = Some(tls.clone());
            Ok(tls)
        };
        let (mut have_rw, mut have_ro, mut have_tcp, mut have_tls) = (false, false, false, false);
        let mut activated_paths = Vec::new();
        for s in inherited {
            let role = activation::classify(&s, cfg.tls_port).map_err(StartError::Config)?;
            info!("socket activation: {role}");
            match role {
                Role::UnixRw(ref path) | Role::UnixRo(ref path) | Role::Admin(ref path) => {
                    let path = path.clone();
                    let read_only = !matches!(role, Role::UnixRw(_));
                    let admin = matches!(role, Role::Admin(_));
                    have_rw |= !read_only;
                    have_ro |= read_only && !admin;
                    activated_paths.push(path.clone());
                    listeners.push(Listener::Unix {
                        listener: inherited_unix(s)?,
                        path,
                        read_only,
                        admin,
                    });
                }
                Role::Tcp => {
                    have_tcp = true;
                    listeners.push(Listener::Tcp(inherited_tcp(s)?));
                }
                Role::Tls => {
                    have_tls = true;
                    listeners.push(Listener::Tls(inherited_tcp(s)?, load_tls()?));
                }
            }
        }
        let group = cfg
            .unix_sock_group
            .as_deref()
            .map(lookup_group)
            .transpose()?;
        if daemon.mode == Mode::Session {
            // The per-user socket directory is private (as the client makes it).
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&sock_dir)
                .map_err(io_err(&sock_dir))?;
        }
        if !have_rw {
            let rw = sock_dir.join("virtumld-sock");
            listeners.push(Listener::Unix {
                listener: bind_unix(&rw, cfg.unix_sock_rw_perms, group)?,
                path: rw.clone(),
                read_only: false,
                admin: false,
            });
            socket_paths.push(rw);
        }
        // Session daemons have no read-only socket: clients use the one socket with flags.
        if daemon.mode == Mode::System && !have_ro {
            let ro = sock_dir.join("virtumld-sock-ro");
            listeners.push(Listener::Unix {
                listener: bind_unix(&ro, cfg.unix_sock_ro_perms, group)?,
                path: ro.clone(),
                read_only: true,
                admin: false,
            });
            socket_paths.push(ro);
        }
        // The paths the ssh clients' `nc -U` fallback connects to (wire-protocol.md §13.4).
        if daemon.mode == Mode::System && cfg.listen_legacy_sockets {
            for (name, read_only, perms) in [
                ("libvirt-sock", false, cfg.unix_sock_rw_perms),
                ("libvirt-sock-ro", true, cfg.unix_sock_ro_perms),
            ] {
                let path = sock_dir.join(name);
                if activated_paths.contains(&path) {
                    continue;
                }
                if let Some(listener) = bind_legacy_unix(&path, perms, group) {
                    info!("listening on {} (legacy path)", path.display());
                    listeners.push(Listener::Unix {
                        listener,
                        path: path.clone(),
                        read_only,
                        admin: false,
                    });
                    socket_paths.push(path);
                }
            }
        }
        let addr_for = |port: u16| {
            if cfg.listen_addr.contains(':') {
                format!("[{}]:{}", cfg.listen_addr, port)
            } else {
                format!("{}:{}", cfg.listen_addr, port)
            }
        };
        if listen && cfg.listen_tls && !have_tls {
            let tls = load_tls()?;
            let addr = addr_for(cfg.tls_port);
            let l = TcpListener::bind(&addr)
                .await
                .map_err(io_err(Path::new(&addr)))?;
            info!("listening on tls {addr}");
            listeners.push(Listener::Tls(l, tls));
        }
        if listen && cfg.listen_tcp && !have_tcp {
            let addr = addr_for(cfg.tcp_port);
            let l = TcpListener::bind(&addr)
                .await
                .map_err(io_err(Path::new(&addr)))?;
            info!("listening on tcp {addr}");
            listeners.push(Listener::Tcp(l));
        }
        Ok(Server {
            daemon,
            listeners,
            socket_paths,
        })
    }

    /// Accepts clients until `shutdown` fires (or the idle timeout passes), then waits for
    /// the connections to finish their in-flight calls and removes the sockets.
    pub async fn run(self, shutdown: watch::Receiver<bool>, idle_timeout: Option<Duration>) {
        let Server {
            daemon,
            listeners,
            socket_paths,
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut accepters = JoinSet::new();
        for l in listeners {
            accepters.spawn(accept_loop(daemon.clone(), l, stop_rx.clone()));
        }
        wait_for_stop(&daemon, shutdown, idle_timeout).await;
        info!("shutting down");
        let _ = stop_tx.send(true);
        while accepters.join_next().await.is_some() {}
        daemon.close_connections();
        // Every connection task holds its client's place until it ends.
        if tokio::time::timeout(Duration::from_secs(30), daemon.clients_gone())
            .await
            .is_err()
        {
            warn!("connections did not finish within 30 s");
        }
        for p in socket_paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

async fn wait_for_stop(
    daemon: &Daemon,
    mut shutdown: watch::Receiver<bool>,
    idle_timeout: Option<Duration>,
) {
    let Some(timeout) = idle_timeout else {
        let _ = shutdown.wait_for(|s| *s).await;
        return;
    };
    let mut idle_since = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        if daemon.client_count() > 0 || daemon.has_running_guests() {
            idle_since = tokio::time::Instant::now();
        } else if idle_since.elapsed() >= timeout {
            info!("no clients for {} s: exiting", timeout.as_secs());
            return;
        }
    }
}

async fn accept_loop(daemon: Arc<Daemon>, listener: Listener, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = accept(&daemon, &listener) => a,
            _ = stop.changed() => return,
        };
        // At the client limit the accepted client waits unserved, and this listener
        // accepts nobody else, until a client leaves. (Taking the place before accept()
        // would let every idle listener hold one.)
        let place = tokio::select! {
            p = daemon.client_place() => p,
            _ = stop.changed() => return,
        };
        let (reader_writer, transport, peer) = match accepted {
            Ok(v) => v,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                error!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let d = daemon.clone();
        let mut stop = stop.clone();
        // Each connection is its own task, as small as its transport allows: the TCP and
        // UNIX ones are nothing but `connection::serve`, which idles on the stream itself
        // (no split halves, no box around it). The task holds the client's place.
        match reader_writer {
            Stream::Unix(s) => {
                tokio::spawn(connection::serve(d, s, transport, peer, place));
            }
            Stream::Tcp(s) => {
                let _ = s.set_nodelay(true);
                tokio::spawn(connection::serve(d, s, transport, peer, place));
            }
            Stream::Admin(s) => {
                tokio::spawn(async move {
                    let _place = place;
                    crate::admin::serve(s, peer, stop).await
                });
            }
            Stream::Tls(s, tls) => {
                tokio::spawn(async move {
                    let _ = s.set_nodelay(true);
                    // The handshake runs in the connection's own task, under a timeout: a
                    // slow or hostile client delays nobody else.
                    let span = tracing::info_span!("tls", %peer);
                    let handshake = tokio::select! {
                        r = tls.accept(s).instrument(span.clone()) => r,
                        _ = stop.changed() => return,
                    };
                    match handshake {
                        Ok((s, dn)) => {
                            if let Some(dn) = &dn {
                                span.in_scope(|| info!("client certificate DN '{dn}'"));
                            }
                            let transport = Transport::Tls { dn };
                            connection::serve(d, s, transport, peer, place).await
                        }
                        Err(e) => span.in_scope(|| warn!("closing TLS connection: {e}")),
                    }
                });
            }
        }
    }
}

enum Stream {
    Unix(tokio::net::UnixStream),
    Admin(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
    Tls(tokio::net::TcpStream, Arc<Tls>),
}

async fn accept(daemon: &Daemon, l: &Listener) -> std::io::Result<(Stream, Transport, String)> {
    match l {
        Listener::Unix {
            listener,
            path,
            read_only,
            admin,
        } => {
            let (s, _) = loop {
                let (s, addr) = listener.accept().await?;
                // A session daemon serves its own user only (SO_PEERCRED, not the pid).
                let uid = s.peer_cred().map(|c| c.uid());
                if daemon.mode == Mode::Session {
                    let me = nix::unistd::geteuid().as_raw();
                    if uid.as_ref().ok() != Some(&me) {
                        warn!(
                            "refusing a client of {} with uid {}: this session daemon serves \
                             uid {me} only",
                            path.display(),
                            uid.map_or_else(|e| format!("unknown ({e})"), |u| u.to_string())
                        );
                        continue;
                    }
                }
                break (s, addr);
            };
            let peer = match s.peer_cred() {
                Ok(c) => format!("unix:{} uid={}", path.display(), c.uid()),
                Err(_) => format!("unix:{}", path.display()),
            };
            let stream = if *admin {
                Stream::Admin(s)
            } else {
                Stream::Unix(s)
            };
            Ok((
                stream,
                Transport::Unix {
                    read_only: *read_only,
                },
                peer,
            ))
        }
        Listener::Tcp(listener) => {
            let (s, addr) = listener.accept().await?;
            Ok((Stream::Tcp(s), Transport::Tcp, format!("tcp:{addr}")))
        }
        Listener::Tls(listener, tls) => {
            let (s, addr) = listener.accept().await?;
            // The transport is settled once the handshake has passed.
            let transport = Transport::Tls { dn: None };
            Ok((
                Stream::Tls(s, tls.clone()),
                transport,
                format!("tls:{addr}"),
            ))
        }
    }
}
