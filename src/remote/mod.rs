//! Dispatch of REMOTE program calls: the procedure table decides the auth gate, the
//! "connection open" gate and read-only access once, here; then the one procedure table below
//! sends the decoded arguments to the handler of the procedure's API area.

// Handlers return the 11-field wire error by value: errors are the cold path, and boxing
// them would only add an allocation to every failure.
#![allow(clippy::result_large_err)]

mod auth;
mod connect;
mod console;
mod domain;
pub mod events;
mod registry;
mod stats;
pub mod storage;
pub mod wire_error;

use std::future::Future;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use virtumld_protocol::error::{code, domain as from, RemoteError};
use virtumld_protocol::frame;
use virtumld_protocol::header::{Header, Status};
use virtumld_protocol::procedures::{proc as p, remote_procedure, Kind, ProcInfo};
use virtumld_protocol::remote::*;
use virtumld_protocol::xdr::{self, DecodeError, Xdr};

use connect as c;
use domain as d;
use events as ev;
use storage as sp;

use crate::daemon::Daemon;
use crate::rpc::client::Client;

pub use wire_error::error as err;

/// What a handler sees of its caller.
pub struct Ctx<'a> {
    pub daemon: &'a Arc<Daemon>,
    pub client: &'a Arc<Client>,
    pub info: &'static ProcInfo,
    /// The call's serial: stream procedures send their data under it.
    pub serial: u32,
}

pub type Reply<T> = Result<T, RemoteError>;

pub fn procedure_name(number: i32) -> &'static str {
    remote_procedure(number).map_or("?", |i| i.name)
}

/// Calls answered from the daemon's memory without waiting for anything (no guest, no
/// job, no disk): the connection runs them in place instead of in a task of their own.
pub fn runs_inline(number: i32) -> bool {
    matches!(
        number,
        p::AUTH_LIST
            | p::CONNECT_OPEN
            | p::CONNECT_CLOSE
            | p::CONNECT_SUPPORTS_FEATURE
            | p::CONNECT_GET_TYPE
            | p::CONNECT_GET_VERSION
            | p::CONNECT_GET_LIB_VERSION
            | p::CONNECT_GET_HOSTNAME
            | p::CONNECT_GET_URI
            | p::CONNECT_IS_SECURE
            | p::CONNECT_GET_MAX_VCPUS
            | p::CONNECT_REGISTER_CLOSE_CALLBACK
            | p::CONNECT_UNREGISTER_CLOSE_CALLBACK
            | p::CONNECT_LIST_ALL_DOMAINS
            | p::CONNECT_NUM_OF_DOMAINS
            | p::CONNECT_LIST_DOMAINS
            | p::CONNECT_NUM_OF_DEFINED_DOMAINS
            | p::CONNECT_LIST_DEFINED_DOMAINS
            | p::DOMAIN_LOOKUP_BY_NAME
            | p::DOMAIN_LOOKUP_BY_UUID
            | p::DOMAIN_LOOKUP_BY_ID
            | p::DOMAIN_GET_INFO
            | p::DOMAIN_GET_STATE
            | p::DOMAIN_GET_XML_DESC
            | p::DOMAIN_GET_OS_TYPE
            | p::DOMAIN_GET_AUTOSTART
            | p::DOMAIN_IS_ACTIVE
            | p::DOMAIN_IS_PERSISTENT
            | p::DOMAIN_IS_UPDATED
            | p::DOMAIN_HAS_MANAGED_SAVE_IMAGE
            | p::DOMAIN_SNAPSHOT_NUM
            | p::DOMAIN_GET_MESSAGES
            | p::DOMAIN_GET_MAX_MEMORY
            | p::DOMAIN_GET_MAX_VCPUS
            | p::DOMAIN_GET_VCPUS_FLAGS
    )
}

/// The whole reply message for an error.
pub fn error_reply(header: &Header, e: &RemoteError) -> BytesMut {
    frame::encode(&header.reply(Status::ERROR), e)
}

/// Runs one CALL and returns the whole encoded reply message.
pub async fn dispatch(
    daemon: &Arc<Daemon>,
    client: &Arc<Client>,
    header: &Header,
    payload: Bytes,
) -> BytesMut {
    let checked = check(client, header.procedure)
        .and_then(|info| check_secret_flags(client, info, &payload).map(|()| info));
    let result = match checked {
        Ok(info) => {
            let ctx = Ctx {
                daemon,
                client,
                info,
                serial: header.serial,
            };
            call(&ctx, header.procedure, &payload).await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(body) => {
            let mut out = frame::encode_with(&header.reply(Status::OK), |_| {});
            out.extend_from_slice(&body);
            let len = out.len() as u32;
            out[..4].copy_from_slice(&len.to_be_bytes());
            out
        }
        Err(e) => {
            tracing::debug!(code = e.code, message = ?e.message, "call failed");
            error_reply(header, &e)
        }
    }
}

/// The checks every call passes before its arguments are even decoded.
fn check(client: &Client, number: i32) -> Reply<&'static ProcInfo> {
    let info = match remote_procedure(number) {
        Some(i) if i.kind == Kind::Call => i,
        _ => return Err(RemoteError::unknown_procedure(number)),
    };
    if info.needs_auth && !client.is_authenticated() {
        return Err(RemoteError::new(
            code::RPC,
            from::RPC,
            "authentication required",
        ));
    }
    // Before CONNECT_OPEN only authentication, the open itself and the keepalive feature
    // query make sense; libvirtd answers the rest with "connection not open".
    let pre_open = matches!(
        number,
        p::AUTH_LIST
            | p::AUTH_SASL_INIT
            | p::AUTH_SASL_START
            | p::AUTH_SASL_STEP
            | p::AUTH_POLKIT
            | p::CONNECT_OPEN
            | p::CONNECT_SUPPORTS_FEATURE
    );
    match client.opened() {
        None if !pre_open => Err(RemoteError::new(
            code::INTERNAL_ERROR,
            from::RPC,
            "internal error: connection not open",
        )),
        Some(o) if o.read_only && !info.read_only_ok => Err(RemoteError::new(
            code::OPERATION_DENIED,
            from::NONE,
            format!(
                "operation forbidden: read only access prevents {}",
                info.api
            ),
        )),
        _ => Ok(info),
    }
}

/// Read-only-ok procedures whose flags (or an argument) make them reveal secrets or act on
/// the guest: the table's `secret_flags` rows a read-only connection may otherwise call.
/// Each is refused on a read-only connection as libvirt's public API refuses it. (Rows with
/// `secret_flags` that are not read-only-ok are refused by `check` already.)
const SECRET_FLAG_PROCS: [i32; 6] = [
    p::DOMAIN_GET_XML_DESC,
    p::DOMAIN_SNAPSHOT_GET_XML_DESC,
    p::DOMAIN_MANAGED_SAVE_GET_XML_DESC,
    p::DOMAIN_CHECKPOINT_GET_XML_DESC,
    p::DOMAIN_GET_VCPUS_FLAGS,
    p::DOMAIN_INTERFACE_ADDRESSES,
];

/// `check`'s second half, for [`SECRET_FLAG_PROCS`]: still before the arguments are
/// decoded. In each of these calls the flags are the last 32-bit word of the arguments
/// (`DOMAIN_INTERFACE_ADDRESSES`: `source` is the word before them); a payload too short to
/// hold them is left to fail its decoding.
fn check_secret_flags(client: &Client, info: &ProcInfo, payload: &[u8]) -> Reply<()> {
    if !SECRET_FLAG_PROCS.contains(&info.number) || !client.opened().is_some_and(|o| o.read_only) {
        return Ok(());
    }
    let word = |from_end: usize| -> u32 {
        payload
            .len()
            .checked_sub(4 * from_end)
            .and_then(|at| payload.get(at..at + 4))
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    const XML_SECURE: u32 = 1; // VIR_DOMAIN_XML_SECURE, and the SNAPSHOT/SAVE_IMAGE/CHECKPOINT
    const XML_MIGRATABLE: u32 = 8; // implies SECURE
    const VCPU_GUEST: u32 = 8;
    const SRC_AGENT: u32 = 1; // VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT
    let (refused, secure_flag, err_domain) = match info.number {
        p::DOMAIN_GET_XML_DESC => (
            word(1) & (XML_SECURE | XML_MIGRATABLE) != 0,
            true,
            from::DOMAIN,
        ),
        p::DOMAIN_MANAGED_SAVE_GET_XML_DESC => (word(1) & XML_SECURE != 0, true, from::DOMAIN),
        p::DOMAIN_SNAPSHOT_GET_XML_DESC => (word(1) & XML_SECURE != 0, true, from::DOMAIN_SNAPSHOT),
        p::DOMAIN_CHECKPOINT_GET_XML_DESC => {
            (word(1) & XML_SECURE != 0, true, from::DOMAIN_CHECKPOINT)
        }
        p::DOMAIN_GET_VCPUS_FLAGS => (word(1) & VCPU_GUEST != 0, false, from::DOMAIN),
        p::DOMAIN_INTERFACE_ADDRESSES => (word(2) == SRC_AGENT, false, from::DOMAIN),
        _ => (false, false, from::NONE),
    };
    if !refused {
        return Ok(());
    }
    let message = if secure_flag {
        format!("operation forbidden: {} with secure flag", info.api)
    } else {
        format!(
            "operation forbidden: read only access prevents {}",
            info.api
        )
    };
    Err(RemoteError::new(
        code::OPERATION_DENIED,
        err_domain,
        message,
    ))
}

/// Decodes the arguments, runs the handler, encodes its result.
async fn run<A, R, F, Fut>(payload: &[u8], handler: F) -> Reply<BytesMut>
where
    A: Xdr,
    R: Xdr,
    F: FnOnce(A) -> Fut,
    Fut: Future<Output = Reply<R>>,
{
    let args = xdr::from_bytes::<A>(payload).map_err(|e| {
        RemoteError::new(
            code::RPC,
            from::RPC,
            format!("Unable to decode message payload: {e}"),
        )
    })?;
    let ret = handler(args).await?;
    Ok(xdr::to_bytes(&ret))
}

/// Expands the procedure table below into the dispatcher `call`, the list of implemented
/// procedures and a decode-only entry point, so the fuzzer decodes exactly what `call`
/// decodes. A row is `NUMBER(ArgsType) => handler` (handler called as `handler(ctx, args)`)
/// or `NUMBER => handler` for a procedure without arguments (`handler(ctx)`). The argument
/// type is written out so `decode_args` can name it; the compiler checks it against the
/// handler's parameter.
macro_rules! procedure_table {
    ($( $num:ident $(($args:ty))? => $handler:path, )*) => {
        /// Runs one call through the table. Everything not in it answers as libvirtd does
        /// for a procedure it lacks, so clients take their fallbacks.
        async fn call(ctx: &Ctx<'_>, number: i32, payload: &[u8]) -> Reply<BytesMut> {
            match number {
                $( p::$num => procedure_table!(@run ctx, payload, $handler $(, $args)?), )*
                _ => Err(err::no_support(ctx.info)),
            }
        }

        /// Every procedure `call` handles, in table order.
        pub const IMPLEMENTED: &[i32] = &[$( p::$num, )*];

        /// Decodes a call's arguments exactly as `call` does, without running anything, and
        /// returns them re-encoded; `None` for a procedure the table lacks. For the fuzzer.
        pub fn decode_args(number: i32, payload: &[u8]) -> Option<Result<BytesMut, DecodeError>> {
            match number {
                $( p::$num => Some(procedure_table!(@decode payload $(, $args)?)), )*
                _ => None,
            }
        }
    };
    (@run $ctx:ident, $payload:ident, $handler:path) => {
        run($payload, |()| $handler($ctx)).await
    };
    (@run $ctx:ident, $payload:ident, $handler:path, $args:ty) => {
        run($payload, |a: $args| $handler($ctx, a)).await
    };
    (@decode $payload:ident) => {
        xdr::from_bytes::<()>($payload).map(|a| xdr::to_bytes(&a))
    };
    (@decode $payload:ident, $args:ty) => {
        xdr::from_bytes::<$args>($payload).map(|a| xdr::to_bytes(&a))
    };
}

// The procedure table: number → handler of its API area.
procedure_table! {
    AUTH_LIST => c::auth_list,
    AUTH_SASL_INIT => auth::auth_sasl_init,
    AUTH_SASL_START(AuthSaslStartArgs) => auth::auth_sasl_start,
    AUTH_SASL_STEP(AuthSaslStepArgs) => auth::auth_sasl_step,
    CONNECT_SUPPORTS_FEATURE(ConnectSupportsFeatureArgs) => c::connect_supports_feature,
    CONNECT_OPEN(ConnectOpenArgs) => c::connect_open,
    CONNECT_CLOSE => c::connect_close,
    CONNECT_REGISTER_CLOSE_CALLBACK => c::void_ok,
    CONNECT_UNREGISTER_CLOSE_CALLBACK => c::void_ok,
    CONNECT_GET_TYPE => c::connect_get_type,
    CONNECT_GET_VERSION => c::connect_get_version,
    CONNECT_GET_LIB_VERSION => c::connect_get_lib_version,
    CONNECT_GET_HOSTNAME => c::connect_get_hostname,
    CONNECT_GET_URI => c::connect_get_uri,
    CONNECT_GET_SYSINFO(ConnectGetSysinfoArgs) => c::connect_get_sysinfo,
    CONNECT_GET_CAPABILITIES => c::connect_get_capabilities,
    CONNECT_GET_DOMAIN_CAPABILITIES(ConnectGetDomainCapabilitiesArgs)
        => c::connect_get_domain_capabilities,
    CONNECT_GET_MAX_VCPUS(ConnectGetMaxVcpusArgs) => c::connect_get_max_vcpus,
    CONNECT_IS_SECURE => c::connect_is_secure,
    NODE_GET_INFO => c::node_get_info,
    NODE_GET_FREE_MEMORY => c::node_get_free_memory,
    NODE_GET_MEMORY_STATS(NodeGetMemoryStatsArgs) => c::node_get_memory_stats,
    NODE_GET_CPU_STATS(NodeGetCpuStatsArgs) => c::node_get_cpu_stats,
    NODE_GET_SECURITY_MODEL => c::node_get_security_model,
    CONNECT_LIST_ALL_DOMAINS(ConnectListAllDomainsArgs) => d::list_all,
    CONNECT_NUM_OF_DOMAINS => d::num_of_domains,
    CONNECT_LIST_DOMAINS(ConnectListDomainsArgs) => d::list_domains,
    CONNECT_NUM_OF_DEFINED_DOMAINS => d::num_of_defined_domains,
    CONNECT_LIST_DEFINED_DOMAINS(ConnectListDefinedDomainsArgs) => d::list_defined_domains,
    DOMAIN_LOOKUP_BY_NAME(DomainLookupByNameArgs) => d::lookup_by_name,
    DOMAIN_LOOKUP_BY_UUID(DomainLookupByUuidArgs) => d::lookup_by_uuid,
    DOMAIN_LOOKUP_BY_ID(DomainLookupByIdArgs) => d::lookup_by_id,
    DOMAIN_DEFINE_XML(DomainDefineXmlArgs) => d::define_xml,
    DOMAIN_DEFINE_XML_FLAGS(DomainDefineXmlFlagsArgs) => d::define_xml_flags,
    DOMAIN_UNDEFINE(DomainUndefineArgs) => d::undefine,
    DOMAIN_UNDEFINE_FLAGS(DomainUndefineFlagsArgs) => d::undefine_flags,
    DOMAIN_GET_XML_DESC(DomainGetXmlDescArgs) => d::get_xml_desc,
    DOMAIN_CREATE(DomainCreateArgs) => d::create,
    DOMAIN_CREATE_WITH_FLAGS(DomainCreateWithFlagsArgs) => d::create_with_flags,
    DOMAIN_CREATE_XML(DomainCreateXmlArgs) => d::create_xml,
    DOMAIN_SHUTDOWN(DomainShutdownArgs) => d::shutdown,
    DOMAIN_SHUTDOWN_FLAGS(DomainShutdownFlagsArgs) => d::shutdown_flags,
    DOMAIN_REBOOT(DomainRebootArgs) => d::reboot,
    DOMAIN_SUSPEND(DomainSuspendArgs) => d::suspend,
    DOMAIN_RESUME(DomainResumeArgs) => d::resume,
    DOMAIN_DESTROY(DomainDestroyArgs) => d::destroy,
    DOMAIN_DESTROY_FLAGS(DomainDestroyFlagsArgs) => d::destroy_flags,
    DOMAIN_GET_AUTOSTART(DomainGetAutostartArgs) => d::get_autostart,
    DOMAIN_SET_AUTOSTART(DomainSetAutostartArgs) => d::set_autostart,
    DOMAIN_GET_INFO(DomainGetInfoArgs) => d::get_info,
    DOMAIN_GET_STATE(DomainGetStateArgs) => d::get_state,
    DOMAIN_GET_OS_TYPE(DomainGetOsTypeArgs) => d::get_os_type,
    DOMAIN_IS_ACTIVE(DomainIsActiveArgs) => d::is_active,
    DOMAIN_IS_PERSISTENT(DomainIsPersistentArgs) => d::is_persistent,
    DOMAIN_IS_UPDATED(DomainIsUpdatedArgs) => d::is_updated,
    DOMAIN_HAS_MANAGED_SAVE_IMAGE(DomainHasManagedSaveImageArgs) => d::has_managed_save_image,
    DOMAIN_SNAPSHOT_NUM(DomainSnapshotNumArgs) => d::snapshot_num,
    DOMAIN_GET_MESSAGES(DomainGetMessagesArgs) => d::get_messages,
    DOMAIN_GET_MAX_MEMORY(DomainGetMaxMemoryArgs) => d::get_max_memory,
    DOMAIN_SET_MAX_MEMORY(DomainSetMaxMemoryArgs) => d::set_max_memory,
    DOMAIN_SET_MEMORY(DomainSetMemoryArgs) => d::set_memory,
    DOMAIN_SET_MEMORY_FLAGS(DomainSetMemoryFlagsArgs) => d::set_memory_flags,
    DOMAIN_GET_MAX_VCPUS(DomainGetMaxVcpusArgs) => d::get_max_vcpus,
    DOMAIN_GET_VCPUS_FLAGS(DomainGetVcpusFlagsArgs) => d::get_vcpus_flags,
    DOMAIN_GET_VCPUS(DomainGetVcpusArgs) => d::get_vcpus,
    CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY(ConnectDomainEventCallbackRegisterAnyArgs)
        => ev::callback_register_any,
    CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY(ConnectDomainEventCallbackDeregisterAnyArgs)
        => ev::callback_deregister_any,
    CONNECT_DOMAIN_EVENT_REGISTER => ev::register,
    CONNECT_DOMAIN_EVENT_DEREGISTER => ev::deregister,
    CONNECT_DOMAIN_EVENT_REGISTER_ANY(ConnectDomainEventRegisterAnyArgs) => ev::register_any,
    CONNECT_DOMAIN_EVENT_DEREGISTER_ANY(ConnectDomainEventDeregisterAnyArgs) => ev::deregister_any,
    DOMAIN_OPEN_CONSOLE(DomainOpenConsoleArgs) => console::open_console,
    CONNECT_GET_ALL_DOMAIN_STATS(ConnectGetAllDomainStatsArgs)
        => stats::connect_get_all_domain_stats,
    DOMAIN_MEMORY_STATS(DomainMemoryStatsArgs) => stats::domain_memory_stats,
    DOMAIN_BLOCK_STATS(DomainBlockStatsArgs) => stats::domain_block_stats,
    DOMAIN_BLOCK_STATS_FLAGS(DomainBlockStatsFlagsArgs) => stats::domain_block_stats_flags,
    DOMAIN_INTERFACE_STATS(DomainInterfaceStatsArgs) => stats::domain_interface_stats,
    DOMAIN_LIST_ALL_SNAPSHOTS(DomainListAllSnapshotsArgs) => stats::domain_list_all_snapshots,
    CONNECT_LIST_ALL_STORAGE_POOLS(ConnectListAllStoragePoolsArgs)
        => sp::connect_list_all_storage_pools,
    CONNECT_NUM_OF_STORAGE_POOLS => sp::connect_num_of_storage_pools,
    CONNECT_LIST_STORAGE_POOLS(ConnectListStoragePoolsArgs) => sp::connect_list_storage_pools,
    CONNECT_NUM_OF_DEFINED_STORAGE_POOLS => sp::connect_num_of_defined_storage_pools,
    CONNECT_LIST_DEFINED_STORAGE_POOLS(ConnectListDefinedStoragePoolsArgs)
        => sp::connect_list_defined_storage_pools,
    STORAGE_POOL_LOOKUP_BY_NAME(StoragePoolLookupByNameArgs) => sp::storage_pool_lookup_by_name,
    STORAGE_POOL_LOOKUP_BY_UUID(StoragePoolLookupByUuidArgs) => sp::storage_pool_lookup_by_uuid,
    STORAGE_POOL_LOOKUP_BY_VOLUME(StoragePoolLookupByVolumeArgs)
        => sp::storage_pool_lookup_by_volume,
    STORAGE_POOL_LOOKUP_BY_TARGET_PATH(StoragePoolLookupByTargetPathArgs)
        => sp::storage_pool_lookup_by_target_path,
    STORAGE_POOL_DEFINE_XML(StoragePoolDefineXmlArgs) => sp::storage_pool_define_xml,
    STORAGE_POOL_CREATE_XML(StoragePoolCreateXmlArgs) => sp::storage_pool_create_xml,
    STORAGE_POOL_BUILD(StoragePoolBuildArgs) => sp::storage_pool_build,
    STORAGE_POOL_CREATE(StoragePoolCreateArgs) => sp::storage_pool_create,
    STORAGE_POOL_DESTROY(StoragePoolDestroyArgs) => sp::storage_pool_destroy,
    STORAGE_POOL_DELETE(StoragePoolDeleteArgs) => sp::storage_pool_delete,
    STORAGE_POOL_UNDEFINE(StoragePoolUndefineArgs) => sp::storage_pool_undefine,
    STORAGE_POOL_REFRESH(StoragePoolRefreshArgs) => sp::storage_pool_refresh,
    STORAGE_POOL_GET_INFO(StoragePoolGetInfoArgs) => sp::storage_pool_get_info,
    STORAGE_POOL_GET_XML_DESC(StoragePoolGetXmlDescArgs) => sp::storage_pool_get_xml_desc,
    STORAGE_POOL_GET_AUTOSTART(StoragePoolGetAutostartArgs) => sp::storage_pool_get_autostart,
    STORAGE_POOL_SET_AUTOSTART(StoragePoolSetAutostartArgs) => sp::storage_pool_set_autostart,
    STORAGE_POOL_IS_ACTIVE(StoragePoolIsActiveArgs) => sp::storage_pool_is_active,
    STORAGE_POOL_IS_PERSISTENT(StoragePoolIsPersistentArgs) => sp::storage_pool_is_persistent,
    STORAGE_POOL_LIST_ALL_VOLUMES(StoragePoolListAllVolumesArgs)
        => sp::storage_pool_list_all_volumes,
    STORAGE_POOL_NUM_OF_VOLUMES(StoragePoolNumOfVolumesArgs) => sp::storage_pool_num_of_volumes,
    STORAGE_POOL_LIST_VOLUMES(StoragePoolListVolumesArgs) => sp::storage_pool_list_volumes,
    STORAGE_VOL_LOOKUP_BY_NAME(StorageVolLookupByNameArgs) => sp::storage_vol_lookup_by_name,
    STORAGE_VOL_LOOKUP_BY_KEY(StorageVolLookupByKeyArgs) => sp::storage_vol_lookup_by_key,
    STORAGE_VOL_LOOKUP_BY_PATH(StorageVolLookupByPathArgs) => sp::storage_vol_lookup_by_path,
    STORAGE_VOL_CREATE_XML(StorageVolCreateXmlArgs) => sp::storage_vol_create_xml,
    STORAGE_VOL_DELETE(StorageVolDeleteArgs) => sp::storage_vol_delete,
    STORAGE_VOL_RESIZE(StorageVolResizeArgs) => sp::storage_vol_resize,
    STORAGE_VOL_GET_INFO(StorageVolGetInfoArgs) => sp::storage_vol_get_info,
    STORAGE_VOL_GET_XML_DESC(StorageVolGetXmlDescArgs) => sp::storage_vol_get_xml_desc,
    STORAGE_VOL_GET_PATH(StorageVolGetPathArgs) => sp::storage_vol_get_path,
    CONNECT_STORAGE_POOL_EVENT_REGISTER_ANY(ConnectStoragePoolEventRegisterAnyArgs)
        => sp::connect_storage_pool_event_register_any,
    CONNECT_STORAGE_POOL_EVENT_DEREGISTER_ANY(ConnectStoragePoolEventDeregisterAnyArgs)
        => sp::connect_storage_pool_event_deregister_any,
}

/// Called once a connection is gone or closed (CONNECT_CLOSE): drop what it registered.
pub fn disconnected(daemon: &Arc<Daemon>, client: &Arc<Client>) {
    daemon.events.client_gone(client.id);
    daemon.pool_events.client_gone(client.id);
    client.clear_opened();
}

#[cfg(test)]
mod tests {
    use virtumld_protocol::procedures::{proc as p, remote_procedure, Kind, REMOTE_PROCEDURES};

    use super::{decode_args, IMPLEMENTED, SECRET_FLAG_PROCS};

    /// The table lists each procedure once, only calls, and `decode_args` covers exactly it.
    #[test]
    fn table_rows_are_unique_calls_and_decode_args_covers_them() {
        let mut seen = std::collections::HashSet::new();
        for &n in IMPLEMENTED {
            assert!(seen.insert(n), "procedure {n} is in the table twice");
            let info = remote_procedure(n).expect("a table row names a known procedure");
            assert_eq!(info.kind, Kind::Call, "{} is not a call", info.name);
        }
        for info in REMOTE_PROCEDURES {
            assert_eq!(
                decode_args(info.number, &[]).is_some(),
                seen.contains(&info.number),
                "{}",
                info.name
            );
        }
    }

    /// `decode_args` decodes with the handler's own argument type: a call without arguments
    /// takes only an empty payload, one with arguments round-trips what a client sends, and
    /// nothing accepts a payload that is not whole XDR words.
    #[test]
    fn decode_args_uses_each_procedures_argument_type() {
        assert!(decode_args(p::CONNECT_GET_VERSION, &[]).is_some_and(|r| r.is_ok()));
        assert!(decode_args(p::CONNECT_GET_VERSION, &[0; 4]).is_some_and(|r| r.is_err()));
        // DOMAIN_LOOKUP_BY_ID: one int.
        let id = 7i32.to_be_bytes();
        let again = decode_args(p::DOMAIN_LOOKUP_BY_ID, &id).and_then(Result::ok);
        assert_eq!(again.as_deref(), Some(&id[..]));
        // CONNECT_OPEN: an optional string, then flags.
        let open = [0, 0, 0, 1, 0, 0, 0, 1, b'x', 0, 0, 0, 0, 0, 0, 2];
        let again = decode_args(p::CONNECT_OPEN, &open).and_then(Result::ok);
        assert_eq!(again.as_deref(), Some(&open[..]));
        for &n in IMPLEMENTED {
            assert!(decode_args(n, &[0; 3]).is_some_and(|r| r.is_err()), "{n}");
        }
    }

    /// Every read-only-ok row of the table with `secret_flags` has its refusal; a table
    /// regenerated with a new such row fails here until `check_secret_flags` handles it.
    #[test]
    fn every_read_only_secret_flag_row_is_handled() {
        let rows: Vec<i32> = REMOTE_PROCEDURES
            .iter()
            .filter(|i| i.read_only_ok && !i.secret_flags.is_empty())
            .map(|i| i.number)
            .collect();
        let mut handled = SECRET_FLAG_PROCS.to_vec();
        handled.sort();
        assert_eq!(rows, handled);
    }
}
