//! Connection- and host-level procedures: authentication list, features, open/close,
//! versions, hostname, URI, node info and statistics, capabilities.

use virtumld_protocol::error::{code, domain, RemoteError};
use virtumld_protocol::remote::*;

use super::{err, Ctx, Reply};
use crate::host;
use crate::paths::Mode;
use crate::rpc::client::Opened;

/// `VIR_CONNECT_RO`.
const CONNECT_RO: u32 = 1;
/// The libvirt release whose protocol this daemon implements; clients enable features by it.
const LIB_VERSION: u64 = 9_000_000;

/// `virDrvFeature` numbers clients ask about.
mod feature {
    pub const MIGRATION_V1: i32 = 1;
    pub const MIGRATION_V2: i32 = 3;
    pub const MIGRATION_P2P: i32 = 4;
    pub const MIGRATION_DIRECT: i32 = 5;
    pub const MIGRATION_V3: i32 = 6;
    pub const MIGRATE_CHANGE_PROTECTION: i32 = 7;
    pub const FD_PASSING: i32 = 8;
    pub const TYPED_PARAM_STRING: i32 = 9;
    pub const PROGRAM_KEEPALIVE: i32 = 10;
    pub const XML_MIGRATABLE: i32 = 11;
    pub const MIGRATION_OFFLINE: i32 = 12;
    pub const MIGRATION_PARAMS: i32 = 13;
    pub const REMOTE_EVENT_CALLBACK: i32 = 14;
    pub const REMOTE_CLOSE_CALLBACK: i32 = 15;
    pub const NETWORK_UPDATE_HAS_CORRECT_ORDER: i32 = 16;
}

/// Whether this daemon supports a `virDrvFeature`, answered honestly.
fn supports(f: i32) -> bool {
    use feature::*;
    match f {
        PROGRAM_KEEPALIVE | TYPED_PARAM_STRING | REMOTE_CLOSE_CALLBACK => true,
        REMOTE_EVENT_CALLBACK => true,
        // No fd passing, and no migration of any kind.
        FD_PASSING => false,
        MIGRATION_V1
        | MIGRATION_V2
        | MIGRATION_P2P
        | MIGRATION_DIRECT
        | MIGRATION_V3
        | MIGRATE_CHANGE_PROTECTION
        | XML_MIGRATABLE
        | MIGRATION_OFFLINE
        | MIGRATION_PARAMS
        | NETWORK_UPDATE_HAS_CORRECT_ORDER => false,
        _ => false,
    }
}

pub async fn auth_list(ctx: &Ctx<'_>) -> Reply<AuthListRet> {
    // As libvirtd: the listener's method until the client has authenticated, then none.
    let sasl =
        ctx.client.auth.method == crate::config::AuthMethod::Sasl && !ctx.client.is_authenticated();
    Ok(AuthListRet {
        types: vec![if sasl { AuthType::Sasl } else { AuthType::None }],
    })
}

pub async fn connect_supports_feature(
    ctx: &Ctx<'_>,
    a: ConnectSupportsFeatureArgs,
) -> Reply<ConnectSupportsFeatureRet> {
    if a.feature == feature::PROGRAM_KEEPALIVE {
        // Asking means the client has an event loop and answers PINGs: start pinging it.
        ctx.client.enable_keepalive();
        return Ok(ConnectSupportsFeatureRet { supported: 1 });
    }
    require_open(ctx)?;
    Ok(ConnectSupportsFeatureRet {
        supported: i32::from(supports(a.feature)),
    })
}

fn require_open(ctx: &Ctx<'_>) -> Reply<()> {
    match ctx.client.opened() {
        Some(_) => Ok(()),
        None => Err(RemoteError::new(
            code::INTERNAL_ERROR,
            domain::RPC,
            "internal error: connection not open",
        )),
    }
}

/// Checks the name a client opens: `uml:///system` (system mode also takes `/session`, as
/// the old UML driver did for root), `uml:///session` in session mode, or `""` and `uml://`
/// (what `uml+tcp://host` with no path sends) for "this daemon's default". Query
/// parameters and fragments are allowed; a host part is not.
pub fn uri_acceptable(name: &str, mode: Mode) -> bool {
    if name.is_empty() || name == "uml://" {
        return true;
    }
    let Some(rest) = name.strip_prefix("uml://") else {
        return false;
    };
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    let (authority_path, _) = rest.split_at(end);
    let Some(path) = authority_path.strip_prefix('/') else {
        return false; // "uml://" or "uml://host/…": not ours to serve
    };
    let path = path.trim_end_matches('/');
    match mode {
        Mode::System => path == "system" || path == "session",
        Mode::Session => path == "session",
    }
}

pub async fn connect_open(ctx: &Ctx<'_>, a: ConnectOpenArgs) -> Reply<()> {
    let name = a.name.unwrap_or_default();
    if !uri_acceptable(&name, ctx.daemon.mode) {
        let shown = if name.is_empty() { "<null>" } else { &name };
        let mut e = RemoteError::new(
            code::NO_CONNECT,
            domain::NONE,
            format!("no connection driver available for {shown}"),
        );
        e.str1 = Some("no connection driver available for %s".into());
        e.str2 = Some(shown.to_string());
        return Err(e);
    }
    if a.flags & !(CONNECT_RO | 0x6) != 0 {
        return Err(err::unsupported_flags(ctx.info, u64::from(a.flags)));
    }
    let read_only = a.flags & CONNECT_RO != 0 || ctx.client.transport_read_only();
    if !ctx.client.set_opened(Opened { read_only }) {
        return Err(err::internal("connection already open"));
    }
    tracing::info!(uri = %name, read_only, "connection opened");
    Ok(())
}

pub async fn connect_close(ctx: &Ctx<'_>) -> Reply<()> {
    super::disconnected(ctx.daemon, ctx.client);
    ctx.client.say_goodbye();
    Ok(())
}

/// Calls that need nothing beyond an open connection and succeed with no data.
pub async fn void_ok(_ctx: &Ctx<'_>) -> Reply<()> {
    Ok(())
}

pub async fn connect_get_type(_ctx: &Ctx<'_>) -> Reply<ConnectGetTypeRet> {
    Ok(ConnectGetTypeRet {
        type_: "UML".into(),
    })
}

pub async fn connect_get_version(ctx: &Ctx<'_>) -> Reply<ConnectGetVersionRet> {
    Ok(ConnectGetVersionRet {
        hv_ver: ctx.daemon.uml_version,
    })
}

pub async fn connect_get_lib_version(_ctx: &Ctx<'_>) -> Reply<ConnectGetLibVersionRet> {
    Ok(ConnectGetLibVersionRet {
        lib_ver: LIB_VERSION,
    })
}

pub async fn connect_get_hostname(_ctx: &Ctx<'_>) -> Reply<ConnectGetHostnameRet> {
    Ok(ConnectGetHostnameRet {
        hostname: host::hostname(),
    })
}

pub async fn connect_get_uri(ctx: &Ctx<'_>) -> Reply<ConnectGetUriRet> {
    Ok(ConnectGetUriRet {
        uri: format!("uml://{}", ctx.daemon.mode.uri_path()),
    })
}

pub async fn connect_get_sysinfo(
    ctx: &Ctx<'_>,
    a: ConnectGetSysinfoArgs,
) -> Reply<ConnectGetSysinfoRet> {
    if a.flags != 0 {
        return Err(err::unsupported_flags(ctx.info, u64::from(a.flags)));
    }
    Ok(ConnectGetSysinfoRet {
        sysinfo: host::sysinfo_xml(),
    })
}

pub async fn connect_get_capabilities(_ctx: &Ctx<'_>) -> Reply<ConnectGetCapabilitiesRet> {
    Ok(ConnectGetCapabilitiesRet {
        capabilities: host::capabilities_xml(),
    })
}

pub async fn connect_get_domain_capabilities(
    ctx: &Ctx<'_>,
    a: ConnectGetDomainCapabilitiesArgs,
) -> Reply<ConnectGetDomainCapabilitiesRet> {
    if a.flags != 0 {
        return Err(err::unsupported_flags(ctx.info, u64::from(a.flags)));
    }
    let host_arch = host::machine_arch();
    if let Some(v) = a.virttype.as_deref().filter(|v| *v != "uml") {
        return Err(err::invalid_arg(format!(
            "virttype '{v}' is not supported: this daemon runs 'uml' guests"
        )));
    }
    if let Some(arch) = a.arch.as_deref().filter(|a| *a != host_arch) {
        return Err(err::invalid_arg(format!(
            "architecture '{arch}' is not supported: UML guests run on the host's {host_arch}"
        )));
    }
    let kernel = &ctx.daemon.config.uml_kernel;
    if let Some(e) = a.emulatorbin.as_deref() {
        if std::path::Path::new(e) != kernel.as_path() {
            return Err(err::invalid_arg(format!(
                "emulator '{e}' is not supported: the UML kernel is {}",
                kernel.display()
            )));
        }
    }
    if let Some(m) = a.machine.as_deref() {
        return Err(err::invalid_arg(format!(
            "machine type '{m}' is not supported by UML guests"
        )));
    }
    Ok(ConnectGetDomainCapabilitiesRet {
        capabilities: host::domain_capabilities_xml(kernel, &host_arch),
    })
}

pub async fn connect_get_max_vcpus(
    _ctx: &Ctx<'_>,
    a: ConnectGetMaxVcpusArgs,
) -> Reply<ConnectGetMaxVcpusRet> {
    match a.type_.as_deref() {
        None | Some("uml") | Some("UML") => Ok(ConnectGetMaxVcpusRet { max_vcpus: 1 }),
        Some(t) => Err(err::invalid_arg(format!("unknown type '{t}'"))),
    }
}

pub async fn connect_is_secure(ctx: &Ctx<'_>) -> Reply<ConnectIsSecureRet> {
    Ok(ConnectIsSecureRet {
        // A SASL security layer (DIGEST-MD5, GSSAPI) encrypts plain TCP too.
        secure: i32::from(
            ctx.client.transport.is_secure() || ctx.client.auth.read_layer().is_some(),
        ),
    })
}

pub async fn node_get_info(_ctx: &Ctx<'_>) -> Reply<NodeGetInfoRet> {
    let n = host::node_info();
    let mut model = [0i8; 32];
    for (slot, b) in model.iter_mut().zip(n.model.bytes().take(31)) {
        *slot = b as i8;
    }
    let int = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
    Ok(NodeGetInfoRet {
        model,
        memory: n.memory_kib,
        cpus: int(n.cpus),
        mhz: int(n.mhz),
        nodes: int(n.nodes),
        sockets: int(n.sockets),
        cores: int(n.cores),
        threads: int(n.threads),
    })
}

pub async fn node_get_free_memory(_ctx: &Ctx<'_>) -> Reply<NodeGetFreeMemoryRet> {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = host::meminfo_kib(&text, "MemFree").unwrap_or(0);
    Ok(NodeGetFreeMemoryRet {
        free_mem: kib * 1024,
    })
}

/// `VIR_NODE_CPU_STATS_ALL_CPUS` / `VIR_NODE_MEMORY_STATS_ALL_CELLS`.
const ALL: i32 = -1;

pub async fn node_get_memory_stats(
    ctx: &Ctx<'_>,
    a: NodeGetMemoryStatsArgs,
) -> Reply<NodeGetMemoryStatsRet> {
    if a.flags != 0 {
        return Err(err::unsupported_flags(ctx.info, u64::from(a.flags)));
    }
    if a.cell_num != ALL && a.cell_num != 0 {
        return Err(err::invalid_arg(format!(
            "NUMA cell {} does not exist: the host has one cell",
            a.cell_num
        )));
    }
    check_nparams(
        ctx,
        a.nparams,
        virtumld_protocol::limits::NODE_MEMORY_STATS_MAX,
    )?;
    let stats = host::memory_stats();
    // A first call with nparams 0 asks how many there are.
    if a.nparams == 0 {
        return Ok(NodeGetMemoryStatsRet {
            params: vec![],
            nparams: stats.len() as i32,
        });
    }
    let params: Vec<_> = stats
        .into_iter()
        .take(a.nparams.max(0) as usize)
        .map(|(field, value)| NodeGetMemoryStats {
            field: field.into(),
            value,
        })
        .collect();
    Ok(NodeGetMemoryStatsRet {
        nparams: params.len() as i32,
        params,
    })
}

/// libvirtd refuses more than the wire bound ("nparams too large"), its public API a
/// negative count.
fn check_nparams(ctx: &Ctx<'_>, nparams: i32, max: usize) -> Reply<()> {
    if nparams < 0 {
        return Err(err::invalid_arg(format!(
            "nparams in {} must not be negative",
            ctx.info.api
        )));
    }
    if nparams as usize > max {
        return Err(RemoteError::new(
            code::INTERNAL_ERROR,
            domain::RPC,
            "internal error: nparams too large",
        ));
    }
    Ok(())
}

pub async fn node_get_cpu_stats(
    ctx: &Ctx<'_>,
    a: NodeGetCpuStatsArgs,
) -> Reply<NodeGetCpuStatsRet> {
    if a.flags != 0 {
        return Err(err::unsupported_flags(ctx.info, u64::from(a.flags)));
    }
    check_nparams(
        ctx,
        a.nparams,
        virtumld_protocol::limits::NODE_CPU_STATS_MAX,
    )?;
    let stats = host::cpu_stats(a.cpu_num)
        .ok_or_else(|| err::invalid_arg(format!("Invalid cpuNum {}", a.cpu_num)))?;
    if a.nparams == 0 {
        return Ok(NodeGetCpuStatsRet {
            params: vec![],
            nparams: stats.len() as i32,
        });
    }
    let params: Vec<_> = stats
        .into_iter()
        .take(a.nparams.max(0) as usize)
        .map(|(field, value)| NodeGetCpuStats {
            field: field.into(),
            value,
        })
        .collect();
    Ok(NodeGetCpuStatsRet {
        nparams: params.len() as i32,
        params,
    })
}

/// No security driver: an empty model, which makes `virsh dominfo` skip the label call.
pub async fn node_get_security_model(_ctx: &Ctx<'_>) -> Reply<NodeGetSecurityModelRet> {
    Ok(NodeGetSecurityModelRet {
        model: vec![0],
        doi: vec![0],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        for ok in [
            "",
            "uml://",
            "uml:///system",
            "uml:///system?foo=bar#frag",
            "uml:///session",
        ] {
            assert!(uri_acceptable(ok, Mode::System), "{ok}");
        }
        for bad in [
            "qemu:///system",
            "uml://host/system",
            "uml:///other",
            "test:///default",
            "umlx:///system",
        ] {
            assert!(!uri_acceptable(bad, Mode::System), "{bad}");
        }
        assert!(uri_acceptable("uml:///session", Mode::Session));
        assert!(!uri_acceptable("uml:///system", Mode::Session));
    }
}
