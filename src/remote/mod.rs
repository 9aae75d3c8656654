//! Dispatch of REMOTE program calls: the procedure table decides the auth gate, the
//! "connection open" gate and read-only access once, here; then the one `match` below sends
//! the decoded arguments to the handler of the procedure's API area.

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
use virtumld_protocol::xdr::{self, Xdr};

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

/// The procedure table: number → handler. Everything not listed answers as libvirtd does
/// for a procedure it lacks, so clients take their fallbacks.
async fn call(ctx: &Ctx<'_>, number: i32, payload: &[u8]) -> Reply<BytesMut> {
    use connect as c;
    use domain as d;
    use events as ev;
    use storage as sp;
    match number {
        p::AUTH_LIST => run(payload, |()| c::auth_list(ctx)).await,
        p::AUTH_SASL_INIT => run(payload, |()| auth::auth_sasl_init(ctx)).await,
        p::AUTH_SASL_START => run(payload, |a| auth::auth_sasl_start(ctx, a)).await,
        p::AUTH_SASL_STEP => run(payload, |a| auth::auth_sasl_step(ctx, a)).await,
        p::CONNECT_SUPPORTS_FEATURE => run(payload, |a| c::connect_supports_feature(ctx, a)).await,
        p::CONNECT_OPEN => run(payload, |a| c::connect_open(ctx, a)).await,
        p::CONNECT_CLOSE => run(payload, |()| c::connect_close(ctx)).await,
        p::CONNECT_REGISTER_CLOSE_CALLBACK => run(payload, |()| c::void_ok(ctx)).await,
        p::CONNECT_UNREGISTER_CLOSE_CALLBACK => run(payload, |()| c::void_ok(ctx)).await,
        p::CONNECT_GET_TYPE => run(payload, |()| c::connect_get_type(ctx)).await,
        p::CONNECT_GET_VERSION => run(payload, |()| c::connect_get_version(ctx)).await,
        p::CONNECT_GET_LIB_VERSION => run(payload, |()| c::connect_get_lib_version(ctx)).await,
        p::CONNECT_GET_HOSTNAME => run(payload, |()| c::connect_get_hostname(ctx)).await,
        p::CONNECT_GET_URI => run(payload, |()| c::connect_get_uri(ctx)).await,
        p::CONNECT_GET_SYSINFO => run(payload, |a| c::connect_get_sysinfo(ctx, a)).await,
        p::CONNECT_GET_CAPABILITIES => run(payload, |()| c::connect_get_capabilities(ctx)).await,
        p::CONNECT_GET_DOMAIN_CAPABILITIES => {
            run(payload, |a| c::connect_get_domain_capabilities(ctx, a)).await
        }
        p::CONNECT_GET_MAX_VCPUS => run(payload, |a| c::connect_get_max_vcpus(ctx, a)).await,
        p::CONNECT_IS_SECURE => run(payload, |()| c::connect_is_secure(ctx)).await,
        p::NODE_GET_INFO => run(payload, |()| c::node_get_info(ctx)).await,
        p::NODE_GET_FREE_MEMORY => run(payload, |()| c::node_get_free_memory(ctx)).await,
        p::NODE_GET_MEMORY_STATS => run(payload, |a| c::node_get_memory_stats(ctx, a)).await,
        p::NODE_GET_CPU_STATS => run(payload, |a| c::node_get_cpu_stats(ctx, a)).await,
        p::NODE_GET_SECURITY_MODEL => run(payload, |()| c::node_get_security_model(ctx)).await,
        p::CONNECT_LIST_ALL_DOMAINS => run(payload, |a| d::list_all(ctx, a)).await,
        p::CONNECT_NUM_OF_DOMAINS => run(payload, |()| d::num_of_domains(ctx)).await,
        p::CONNECT_LIST_DOMAINS => run(payload, |a| d::list_domains(ctx, a)).await,
        p::CONNECT_NUM_OF_DEFINED_DOMAINS => {
            run(payload, |()| d::num_of_defined_domains(ctx)).await
        }
        p::CONNECT_LIST_DEFINED_DOMAINS => run(payload, |a| d::list_defined_domains(ctx, a)).await,
        p::DOMAIN_LOOKUP_BY_NAME => run(payload, |a| d::lookup_by_name(ctx, a)).await,
        p::DOMAIN_LOOKUP_BY_UUID => run(payload, |a| d::lookup_by_uuid(ctx, a)).await,
        p::DOMAIN_LOOKUP_BY_ID => run(payload, |a| d::lookup_by_id(ctx, a)).await,
        p::DOMAIN_DEFINE_XML => run(payload, |a| d::define_xml(ctx, a)).await,
        p::DOMAIN_DEFINE_XML_FLAGS => run(payload, |a| d::define_xml_flags(ctx, a)).await,
        p::DOMAIN_UNDEFINE => run(payload, |a| d::undefine(ctx, a)).await,
        p::DOMAIN_UNDEFINE_FLAGS => run(payload, |a| d::undefine_flags(ctx, a)).await,
        p::DOMAIN_GET_XML_DESC => run(payload, |a| d::get_xml_desc(ctx, a)).await,
        p::DOMAIN_CREATE => run(payload, |a| d::create(ctx, a)).await,
        p::DOMAIN_CREATE_WITH_FLAGS => run(payload, |a| d::create_with_flags(ctx, a)).await,
        p::DOMAIN_CREATE_XML => run(payload, |a| d::create_xml(ctx, a)).await,
        p::DOMAIN_SHUTDOWN => run(payload, |a| d::shutdown(ctx, a)).await,
        p::DOMAIN_SHUTDOWN_FLAGS => run(payload, |a| d::shutdown_flags(ctx, a)).await,
        p::DOMAIN_REBOOT => run(payload, |a| d::reboot(ctx, a)).await,
        p::DOMAIN_SUSPEND => run(payload, |a| d::suspend(ctx, a)).await,
        p::DOMAIN_RESUME => run(payload, |a| d::resume(ctx, a)).await,
        p::DOMAIN_DESTROY => run(payload, |a| d::destroy(ctx, a)).await,
        p::DOMAIN_DESTROY_FLAGS => run(payload, |a| d::destroy_flags(ctx, a)).await,
        p::DOMAIN_GET_AUTOSTART => run(payload, |a| d::get_autostart(ctx, a)).await,
        p::DOMAIN_SET_AUTOSTART => run(payload, |a| d::set_autostart(ctx, a)).await,
        p::DOMAIN_GET_INFO => run(payload, |a| d::get_info(ctx, a)).await,
        p::DOMAIN_GET_STATE => run(payload, |a| d::get_state(ctx, a)).await,
        p::DOMAIN_GET_OS_TYPE => run(payload, |a| d::get_os_type(ctx, a)).await,
        p::DOMAIN_IS_ACTIVE => run(payload, |a| d::is_active(ctx, a)).await,
        p::DOMAIN_IS_PERSISTENT => run(payload, |a| d::is_persistent(ctx, a)).await,
        p::DOMAIN_IS_UPDATED => run(payload, |a| d::is_updated(ctx, a)).await,
        p::DOMAIN_HAS_MANAGED_SAVE_IMAGE => {
            run(payload, |a| d::has_managed_save_image(ctx, a)).await
        }
        p::DOMAIN_SNAPSHOT_NUM => run(payload, |a| d::snapshot_num(ctx, a)).await,
        p::DOMAIN_GET_MESSAGES => run(payload, |a| d::get_messages(ctx, a)).await,
        p::DOMAIN_GET_MAX_MEMORY => run(payload, |a| d::get_max_memory(ctx, a)).await,
        p::DOMAIN_SET_MAX_MEMORY => run(payload, |a| d::set_max_memory(ctx, a)).await,
        p::DOMAIN_SET_MEMORY => run(payload, |a| d::set_memory(ctx, a)).await,
        p::DOMAIN_SET_MEMORY_FLAGS => run(payload, |a| d::set_memory_flags(ctx, a)).await,
        p::DOMAIN_GET_MAX_VCPUS => run(payload, |a| d::get_max_vcpus(ctx, a)).await,
        p::DOMAIN_GET_VCPUS_FLAGS => run(payload, |a| d::get_vcpus_flags(ctx, a)).await,
        p::DOMAIN_GET_VCPUS => run(payload, |a| d::get_vcpus(ctx, a)).await,
        p::CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY => {
            run(payload, |a| ev::callback_register_any(ctx, a)).await
        }
        p::CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY => {
            run(payload, |a| ev::callback_deregister_any(ctx, a)).await
        }
        p::CONNECT_DOMAIN_EVENT_REGISTER => run(payload, |()| ev::register(ctx)).await,
        p::CONNECT_DOMAIN_EVENT_DEREGISTER => run(payload, |()| ev::deregister(ctx)).await,
        p::CONNECT_DOMAIN_EVENT_REGISTER_ANY => run(payload, |a| ev::register_any(ctx, a)).await,
        p::CONNECT_DOMAIN_EVENT_DEREGISTER_ANY => {
            run(payload, |a| ev::deregister_any(ctx, a)).await
        }
        p::DOMAIN_OPEN_CONSOLE => run(payload, |a| console::open_console(ctx, ctx.serial, a)).await,
        p::CONNECT_GET_ALL_DOMAIN_STATS => {
            run(payload, |a| stats::connect_get_all_domain_stats(ctx, a)).await
        }
        p::DOMAIN_MEMORY_STATS => run(payload, |a| stats::domain_memory_stats(ctx, a)).await,
        p::DOMAIN_BLOCK_STATS => run(payload, |a| stats::domain_block_stats(ctx, a)).await,
        p::DOMAIN_BLOCK_STATS_FLAGS => {
            run(payload, |a| stats::domain_block_stats_flags(ctx, a)).await
        }
        p::DOMAIN_INTERFACE_STATS => run(payload, |a| stats::domain_interface_stats(ctx, a)).await,
        p::DOMAIN_LIST_ALL_SNAPSHOTS => {
            run(payload, |a| stats::domain_list_all_snapshots(ctx, a)).await
        }
        p::CONNECT_LIST_ALL_STORAGE_POOLS => {
            run(payload, |a| sp::connect_list_all_storage_pools(ctx, a)).await
        }
        p::CONNECT_NUM_OF_STORAGE_POOLS => {
            run(payload, |()| sp::connect_num_of_storage_pools(ctx)).await
        }
        p::CONNECT_LIST_STORAGE_POOLS => {
            run(payload, |a| sp::connect_list_storage_pools(ctx, a)).await
        }
        p::CONNECT_NUM_OF_DEFINED_STORAGE_POOLS => {
            run(payload, |()| sp::connect_num_of_defined_storage_pools(ctx)).await
        }
        p::CONNECT_LIST_DEFINED_STORAGE_POOLS => {
            run(payload, |a| sp::connect_list_defined_storage_pools(ctx, a)).await
        }
        p::STORAGE_POOL_LOOKUP_BY_NAME => {
            run(payload, |a| sp::storage_pool_lookup_by_name(ctx, a)).await
        }
        p::STORAGE_POOL_LOOKUP_BY_UUID => {
            run(payload, |a| sp::storage_pool_lookup_by_uuid(ctx, a)).await
        }
        p::STORAGE_POOL_LOOKUP_BY_VOLUME => {
            run(payload, |a| sp::storage_pool_lookup_by_volume(ctx, a)).await
        }
        p::STORAGE_POOL_LOOKUP_BY_TARGET_PATH => {
            run(payload, |a| sp::storage_pool_lookup_by_target_path(ctx, a)).await
        }
        p::STORAGE_POOL_DEFINE_XML => run(payload, |a| sp::storage_pool_define_xml(ctx, a)).await,
        p::STORAGE_POOL_CREATE_XML => run(payload, |a| sp::storage_pool_create_xml(ctx, a)).await,
        p::STORAGE_POOL_BUILD => run(payload, |a| sp::storage_pool_build(ctx, a)).await,
        p::STORAGE_POOL_CREATE => run(payload, |a| sp::storage_pool_create(ctx, a)).await,
        p::STORAGE_POOL_DESTROY => run(payload, |a| sp::storage_pool_destroy(ctx, a)).await,
        p::STORAGE_POOL_DELETE => run(payload, |a| sp::storage_pool_delete(ctx, a)).await,
        p::STORAGE_POOL_UNDEFINE => run(payload, |a| sp::storage_pool_undefine(ctx, a)).await,
        p::STORAGE_POOL_REFRESH => run(payload, |a| sp::storage_pool_refresh(ctx, a)).await,
        p::STORAGE_POOL_GET_INFO => run(payload, |a| sp::storage_pool_get_info(ctx, a)).await,
        p::STORAGE_POOL_GET_XML_DESC => {
            run(payload, |a| sp::storage_pool_get_xml_desc(ctx, a)).await
        }
        p::STORAGE_POOL_GET_AUTOSTART => {
            run(payload, |a| sp::storage_pool_get_autostart(ctx, a)).await
        }
        p::STORAGE_POOL_SET_AUTOSTART => {
            run(payload, |a| sp::storage_pool_set_autostart(ctx, a)).await
        }
        p::STORAGE_POOL_IS_ACTIVE => run(payload, |a| sp::storage_pool_is_active(ctx, a)).await,
        p::STORAGE_POOL_IS_PERSISTENT => {
            run(payload, |a| sp::storage_pool_is_persistent(ctx, a)).await
        }
        p::STORAGE_POOL_LIST_ALL_VOLUMES => {
            run(payload, |a| sp::storage_pool_list_all_volumes(ctx, a)).await
        }
        p::STORAGE_POOL_NUM_OF_VOLUMES => {
            run(payload, |a| sp::storage_pool_num_of_volumes(ctx, a)).await
        }
        p::STORAGE_POOL_LIST_VOLUMES => {
            run(payload, |a| sp::storage_pool_list_volumes(ctx, a)).await
        }
        p::STORAGE_VOL_LOOKUP_BY_NAME => {
            run(payload, |a| sp::storage_vol_lookup_by_name(ctx, a)).await
        }
        p::STORAGE_VOL_LOOKUP_BY_KEY => {
            run(payload, |a| sp::storage_vol_lookup_by_key(ctx, a)).await
        }
        p::STORAGE_VOL_LOOKUP_BY_PATH => {
            run(payload, |a| sp::storage_vol_lookup_by_path(ctx, a)).await
        }
        p::STORAGE_VOL_CREATE_XML => run(payload, |a| sp::storage_vol_create_xml(ctx, a)).await,
        p::STORAGE_VOL_DELETE => run(payload, |a| sp::storage_vol_delete(ctx, a)).await,
        p::STORAGE_VOL_RESIZE => run(payload, |a| sp::storage_vol_resize(ctx, a)).await,
        p::STORAGE_VOL_GET_INFO => run(payload, |a| sp::storage_vol_get_info(ctx, a)).await,
        p::STORAGE_VOL_GET_XML_DESC => run(payload, |a| sp::storage_vol_get_xml_desc(ctx, a)).await,
        p::STORAGE_VOL_GET_PATH => run(payload, |a| sp::storage_vol_get_path(ctx, a)).await,
        p::CONNECT_STORAGE_POOL_EVENT_REGISTER_ANY => {
            run(payload, |a| {
                sp::connect_storage_pool_event_register_any(ctx, a)
            })
            .await
        }
        p::CONNECT_STORAGE_POOL_EVENT_DEREGISTER_ANY => {
            run(payload, |a| {
                sp::connect_storage_pool_event_deregister_any(ctx, a)
            })
            .await
        }
        _ => Err(err::no_support(ctx.info)),
    }
}

/// Called once a connection is gone or closed (CONNECT_CLOSE): drop what it registered.
pub fn disconnected(daemon: &Arc<Daemon>, client: &Arc<Client>) {
    daemon.events.client_gone(client.id);
    daemon.pool_events.client_gone(client.id);
    client.clear_opened();
}

#[cfg(test)]
mod tests {
    use virtumld_protocol::procedures::REMOTE_PROCEDURES;

    use super::SECRET_FLAG_PROCS;

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
