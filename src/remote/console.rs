//! DOMAIN_OPEN_CONSOLE: a console or serial line of a running guest as a libvirt stream.
//!
//! On attach the client first gets the line's recent output (the last 64 KiB the daemon
//! kept), so `virsh console` shows the current screen instead of a blank one; then live
//! output. Keystrokes go to the guest. The session ends when the client finishes or
//! aborts, when another client takes the line with `--force`, or when the guest's pty goes
//! away (shutdown, reboot): then the client gets end-of-stream.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use virtumld_protocol::error::code;
use virtumld_protocol::remote::DomainOpenConsoleArgs;
use virtumld_uml::console::ConsolePump;

use super::{err, wire_error, Ctx, Reply};
use crate::driver::ConsoleClaim;
use crate::rpc::stream::{self, Inbound, ServerStream};

/// `VIR_DOMAIN_CONSOLE_FORCE` and `VIR_DOMAIN_CONSOLE_SAFE`.
const FORCE: u32 = 1;
const SAFE: u32 = 2;
/// After end-of-stream, how long to wait for the client's finish before letting go.
const FINISH_WAIT: Duration = Duration::from_secs(10);

pub async fn open_console(ctx: &Ctx<'_>, serial: u32, a: DomainOpenConsoleArgs) -> Reply<()> {
    if a.flags & SAFE != 0 {
        return Err(wire_error::new(
            code::ARGUMENT_UNSUPPORTED,
            "safe console handling is not supported by UML guests",
        ));
    }
    if a.flags & !FORCE != 0 {
        return Err(err::unsupported_flags(ctx.info, u64::from(a.flags)));
    }
    let driver = &ctx.daemon.driver;
    let obj = driver.get(&a.dom.name, &a.dom.uuid.0)?;
    let (pump, claim) = driver.claim_console(&obj, a.dev_name.as_deref(), a.flags & FORCE != 0)?;
    let stream = stream::open(ctx.client, ctx.info.number, serial)
        .ok_or_else(|| err::invalid_arg("a stream is already open on this serial"))?;
    tokio::spawn(session(stream, pump, claim));
    Ok(())
}

async fn session(mut stream: ServerStream, pump: Arc<ConsolePump>, mut claim: ConsoleClaim) {
    if !stream.started().await {
        return;
    }
    let (recent, mut output) = pump.subscribe();
    if !stream.send_data(&recent).await {
        return;
    }
    loop {
        tokio::select! {
            data = output.recv() => match data {
                Ok(bytes) => {
                    if !stream.send_data(&bytes).await {
                        return; // client gone
                    }
                }
                // A client that reads slower than the guest writes loses output, rather
                // than making the daemon buffer it.
                Err(RecvError::Lagged(n)) => tracing::debug!("console reader lagged by {n} chunks"),
                Err(RecvError::Closed) => break,
            },
            packet = stream.recv() => match packet {
                Some(Inbound::Data(bytes)) => {
                    if let Err(e) = pump.write(&bytes).await {
                        tracing::debug!("console write failed: {e}");
                        break;
                    }
                }
                Some(Inbound::Eof) => {}
                Some(Inbound::Finish) | Some(Inbound::Abort) => {
                    stream.confirm().await;
                    return;
                }
                None => return,
            },
            _ = claim.revoked.changed() => break,
        }
    }
    // The guest's line closed or the session was taken over: end of stream, then wait for
    // the client to finish so it can be confirmed.
    drop(claim);
    if stream.send_eof().await {
        let finish = async {
            while let Some(p) = stream.recv().await {
                if matches!(p, Inbound::Finish | Inbound::Abort) {
                    return true;
                }
            }
            false
        };
        if let Ok(true) = tokio::time::timeout(FINISH_WAIT, finish).await {
            stream.confirm().await;
        }
    }
}
