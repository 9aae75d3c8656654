//! SASL authentication: AUTH_SASL_INIT (67), AUTH_SASL_START (68), AUTH_SASL_STEP (69),
//! as libvirtd's `remoteDispatchAuthSasl*` answer them. Every failure is the same
//! VIR_ERR_AUTH_FAILED "authentication failed" (the reason goes to the log only), drops the
//! exchange so the client has to start over with INIT, and counts against the connection:
//! after `sasl::MAX_FAILURES` the daemon closes it.

use tracing::{info, warn};
use virtumld_protocol::error::{code, domain, format_message, RemoteError};
use virtumld_protocol::limits::AUTH_SASL_DATA_MAX;
use virtumld_protocol::remote::{
    AuthSaslInitRet, AuthSaslStartArgs, AuthSaslStartRet, AuthSaslStepArgs, AuthSaslStepRet,
};

use super::{Ctx, Reply};
use crate::config::AuthMethod;
use crate::rpc::client::Transport;
use crate::rpc::sasl::{self, Props, Session, StepOut};
use crate::tls::glob_match;

/// TLS cipher strength given to SASL as the external SSF. Every suite rustls (ring
/// provider) negotiates has a key of at least 128 bits; the exact size is not passed down
/// from the listener yet, and it only matters for mechanism selection, where secure
/// transports ask for no minimum anyway.
const TLS_EXTERNAL_SSF: u32 = 128;

fn auth_failed() -> RemoteError {
    RemoteError::new(
        code::AUTH_FAILED,
        domain::RPC,
        format_message(code::AUTH_FAILED, "authentication failed"),
    )
}

/// Logs why, counts the failure (closing the connection once it has used up its
/// attempts) and returns the wire error.
fn fail(ctx: &Ctx<'_>, why: &str) -> RemoteError {
    let auth = &ctx.client.auth;
    warn!(peer = %auth.peer, "SASL authentication failed: {why}");
    if auth.failed() {
        info!(peer = %auth.peer, "closing connection after {} failed SASL attempts", sasl::MAX_FAILURES);
        ctx.client.request_close();
    }
    auth_failed()
}

fn is_sasl(ctx: &Ctx<'_>) -> bool {
    ctx.client.auth.method == AuthMethod::Sasl && !ctx.client.is_authenticated()
}

/// The client's data: `nil` means none at all (NULL), which SASL tells from empty data.
/// rpcgen's `char` array gives each byte its own (sign-extended) word.
fn client_data(nil: i32, data: &[i8]) -> Result<Option<Vec<u8>>, &'static str> {
    match nil {
        0 => Ok(Some(data.iter().map(|&c| c as u8).collect())),
        1 if data.is_empty() => Ok(None),
        1 => Err("nil data with bytes"),
        _ => Err("invalid nil flag"),
    }
}

fn wire_data(d: &Option<Vec<u8>>) -> (i32, Vec<i8>) {
    match d {
        None => (1, Vec::new()),
        Some(v) => (0, v.iter().map(|&b| b as i8).collect()),
    }
}

pub async fn auth_sasl_init(ctx: &Ctx<'_>) -> Reply<AuthSaslInitRet> {
    if !is_sasl(ctx) {
        return Err(fail(
            ctx,
            "SASL init on a connection that does not use SASL",
        ));
    }
    let mut slot = ctx.client.auth.negotiation();
    if slot.is_some() {
        *slot = None;
        return Err(fail(ctx, "second SASL init"));
    }
    let dir = sasl::config_dir(&ctx.daemon.paths.pki_dir);
    if let Err(e) = sasl::init(&dir) {
        return Err(fail(ctx, &format!("cannot initialise SASL: {e}")));
    }
    let secure = ctx.client.transport.is_secure();
    let props = Props {
        local: None,
        remote: sasl::sasl_addr(&ctx.client.auth.peer),
        external_ssf: matches!(ctx.client.transport, Transport::Tls { .. })
            .then_some(TLS_EXTERNAL_SSF),
        min_ssf: (!secure).then_some(ctx.daemon.config.tcp_min_ssf),
    };
    let session = Session::new(&props).map_err(|e| fail(ctx, &e))?;
    let mechlist = session.mechanisms().map_err(|e| fail(ctx, &e))?;
    tracing::debug!(%mechlist, "SASL mechanisms offered");
    *slot = Some(session);
    Ok(AuthSaslInitRet { mechlist })
}

pub async fn auth_sasl_start(ctx: &Ctx<'_>, a: AuthSaslStartArgs) -> Reply<AuthSaslStartRet> {
    let (complete, out) = exchange(ctx, Some(&a.mech), a.nil, &a.data)?;
    let (nil, data) = wire_data(&out);
    Ok(AuthSaslStartRet {
        complete: complete as i32,
        nil,
        data,
    })
}

pub async fn auth_sasl_step(ctx: &Ctx<'_>, a: AuthSaslStepArgs) -> Reply<AuthSaslStepRet> {
    let (complete, out) = exchange(ctx, None, a.nil, &a.data)?;
    let (nil, data) = wire_data(&out);
    Ok(AuthSaslStepRet {
        complete: complete as i32,
        nil,
        data,
    })
}

/// One START (with `mech`) or STEP; on completion, the checks and the switch to the
/// security layer.
fn exchange(
    ctx: &Ctx<'_>,
    mech: Option<&str>,
    nil: i32,
    data: &[i8],
) -> Reply<(bool, Option<Vec<u8>>)> {
    if !is_sasl(ctx) {
        return Err(fail(
            ctx,
            "SASL start/step on a connection that does not use SASL",
        ));
    }
    let mut slot = ctx.client.auth.negotiation();
    let Some(session) = slot.as_ref() else {
        return Err(fail(ctx, "SASL start/step without init"));
    };
    // The exchange ends here on any failure, as libvirtd drops its session.
    let result = (|| -> Result<StepOut, String> {
        let input = client_data(nil, data)?;
        let out = session.step(mech, input.as_deref())?;
        if out
            .data
            .as_ref()
            .is_some_and(|d| d.len() > AUTH_SASL_DATA_MAX)
        {
            return Err("SASL reply data too long".into());
        }
        Ok(out)
    })();
    let out = match result {
        Ok(o) => o,
        Err(e) => {
            *slot = None;
            return Err(fail(ctx, &e));
        }
    };
    if !out.complete {
        return Ok((false, out.data));
    }
    let session = slot.take().expect("checked above");
    drop(slot);
    finish(ctx, session)?;
    Ok((true, out.data))
}

/// libvirtd's `remoteSASLFinish`: the SSF on insecure transports, the user name allowlist;
/// then the client is authenticated and, with a security layer, every byte after this
/// reply is wrapped.
fn finish(ctx: &Ctx<'_>, session: Session) -> Reply<()> {
    let ssf = session.ssf().map_err(|e| fail(ctx, &e))?;
    if !ctx.client.transport.is_secure() && ssf < ctx.daemon.config.tcp_min_ssf {
        return Err(fail(
            ctx,
            &format!(
                "negotiated SSF {ssf} was not strong enough (tcp_min_ssf {})",
                ctx.daemon.config.tcp_min_ssf
            ),
        ));
    }
    let user = session.username().map_err(|e| fail(ctx, &e))?;
    if let Some(allowed) = &ctx.daemon.config.sasl_allowed_username_list {
        if !allowed.iter().any(|p| glob_match(p, &user)) {
            return Err(fail(
                ctx,
                &format!("SASL user '{user}' is not in sasl_allowed_username_list"),
            ));
        }
    }
    if ssf > 0 {
        let layer = session.into_layer().map_err(|e| fail(ctx, &e))?;
        ctx.client.auth.activate(ctx.serial, layer);
    }
    ctx.client.auth.set_username(user.clone());
    ctx.client.set_authenticated();
    info!(peer = %ctx.client.auth.peer, "SASL authentication succeeded: user '{user}', SSF {ssf}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nil_and_empty_data_differ() {
        assert_eq!(client_data(1, &[]), Ok(None));
        assert_eq!(client_data(0, &[]), Ok(Some(vec![])));
        assert_eq!(client_data(0, &[-1, 65]), Ok(Some(vec![0xff, b'A'])));
        assert!(client_data(1, &[65]).is_err());
        assert!(client_data(2, &[]).is_err());
        assert_eq!(wire_data(&None), (1, vec![]));
        assert_eq!(wire_data(&Some(vec![0x80])), (0, vec![-128]));
    }
}
