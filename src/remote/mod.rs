//! Dispatch of REMOTE program calls: the procedure table decides the auth gate, the
//! "connection open" gate and read-only access once, here; then the one `match` below sends
//! the decoded arguments to the handler of the procedure's API area.

mod connect;
pub mod wire_error;

use std::future::Future;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use virtumld_protocol::error::{code, domain, RemoteError};
use virtumld_protocol::frame;
use virtumld_protocol::header::{Header, Status};
use virtumld_protocol::procedures::{proc as p, remote_procedure, Kind, ProcInfo};
use virtumld_protocol::xdr::{self, Xdr};

use crate::daemon::Daemon;
use crate::rpc::client::Client;

pub use wire_error::{error as err, Fail};

/// What a handler sees of its caller.
pub struct Ctx<'a> {
    pub daemon: &'a Arc<Daemon>,
    pub client: &'a Arc<Client>,
    pub info: &'static ProcInfo,
}

pub type Reply<T> = Result<T, RemoteError>;

pub fn procedure_name(number: i32) -> &'static str {
    remote_procedure(number).map_or("?", |i| i.name)
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
    let result = match check(client, header.procedure) {
        Ok(info) => {
            let ctx = Ctx {
                daemon,
                client,
                info,
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
            domain::RPC,
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
            domain::RPC,
            "internal error: connection not open",
        )),
        Some(o) if o.read_only && !info.read_only_ok => Err(RemoteError::new(
            code::OPERATION_DENIED,
            domain::NONE,
            format!(
                "operation forbidden: read only access prevents {}",
                info.api
            ),
        )),
        _ => Ok(info),
    }
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
            domain::RPC,
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
    match number {
        p::AUTH_LIST => run(payload, |()| c::auth_list(ctx)).await,
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
        _ => Err(err::no_support(ctx.info)),
    }
}

/// Called once a connection is gone: drop what it registered.
pub fn disconnected(_daemon: &Arc<Daemon>, client: &Arc<Client>) {
    client.clear_opened();
}
