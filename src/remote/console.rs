//! DOMAIN_OPEN_CONSOLE: a console or serial line of a running guest as a libvirt stream.
//!
//! On attach the client first gets the line's recent output (the last 64 KiB the daemon
//! kept), so `virsh console` shows the current screen instead of a blank one; then live
//! output. Keystrokes go to the guest. The session ends when the client finishes or
//! aborts, when another client takes the line with `--force`, or when the guest's pty goes
//! away (destroy, shutdown, reboot, crash): then the client gets end-of-stream, and the
//! stream stays until the client finishes it.
//!
//! A session is one task that never waits on the guest, and waits on the client only for
//! room in the connection's queue, with one packet at a time, while it goes on taking the
//! client's packets:
//! - output: whenever the guest wrote something the client has not been sent, all of it (up
//!   to [`PACKET_MAX`]) leaves as one STREAM packet. While that packet waits for room the
//!   guest's output collects in the pump's backlog; a client slower than the guest loses the
//!   oldest output rather than making the daemon buffer it, and the guest never waits.
//! - input: keystrokes go to `ConsolePump::send_input`, which never waits (a guest that does
//!   not read, e.g. a paused one, gets a bounded queue and the excess is dropped), so the
//!   client's packets are always taken at once and its connection (other calls, keepalive)
//!   is never held back by a guest that does not read.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::BytesMut;
use virtumld_protocol::error::code;
use virtumld_protocol::header::Status;
use virtumld_protocol::remote::DomainOpenConsoleArgs;
use virtumld_uml::console::{ConsolePump, Output};

use super::{err, wire_error, Ctx, Reply};
use crate::driver::ConsoleClaim;
use crate::rpc::stream::{self, Inbound, ServerStream, StreamSender};

/// `VIR_DOMAIN_CONSOLE_FORCE` and `VIR_DOMAIN_CONSOLE_SAFE`.
const FORCE: u32 = 1;
const SAFE: u32 = 2;
/// Largest STREAM packet of console output.
const PACKET_MAX: usize = stream::MAX_CHUNK;

pub async fn open_console(ctx: &Ctx<'_>, a: DomainOpenConsoleArgs) -> Reply<()> {
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
    let stream = stream::open(ctx.client, ctx.info.number, ctx.serial)
        .ok_or_else(|| err::invalid_arg("a stream is already open on this serial"))?;
    tokio::spawn(session(stream, pump, claim));
    Ok(())
}

/// An output packet waiting for room in the connection's queue.
type InFlight = Pin<Box<dyn Future<Output = bool> + Send>>;

/// Why the attached phase of a session ended.
enum Ending {
    /// The client finished or aborted: confirm.
    ClientDone,
    /// The client is gone.
    Gone,
    /// The line closed (everything it wrote was sent) or another client took it over.
    LineDone,
}

async fn session(mut stream: ServerStream, pump: Arc<ConsolePump>, mut claim: ConsoleClaim) {
    if !stream.started().await {
        return;
    }
    let mut output = pump.output();
    let sender = stream.sender();
    let mut in_flight: Option<InFlight> = None;
    let ending = loop {
        tokio::select! {
            more = output.ready(), if in_flight.is_none() => {
                if !more {
                    break Ending::LineDone;
                }
                in_flight = output_packet(&sender, &mut output);
            }
            sent = sent(&mut in_flight) => {
                in_flight = None;
                if !sent {
                    break Ending::Gone;
                }
            }
            packet = stream.recv() => match packet {
                Some(Inbound::Data(bytes)) => {
                    // Dropped input is logged by the pump; a closed line ends the session
                    // through `output` once its last output is sent.
                    if let Err(e) = pump.send_input(&bytes) {
                        tracing::debug!("console input not delivered: {e}");
                    }
                }
                Some(Inbound::Eof) => {}
                Some(Inbound::Finish) | Some(Inbound::Abort) => break Ending::ClientDone,
                None => break Ending::Gone,
            },
            _ = claim.revoked.changed() => break Ending::LineDone,
        }
    };
    drop(claim);
    // Nothing more is read from the line: let the pump's backlog go while the session
    // waits for the client below.
    drop(output);
    drop(pump);
    match ending {
        Ending::Gone => {}
        // Output still in flight is of no interest to a client that finished.
        Ending::ClientDone => {
            stream.confirm().await;
        }
        Ending::LineDone => end_of_stream(&mut stream, in_flight).await,
    }
}

/// Everything `output` has that the client was not sent yet, up to [`PACKET_MAX`] bytes, as
/// one STREAM packet on its way.
fn output_packet(sender: &StreamSender, output: &mut Output) -> Option<InFlight> {
    let mut taken = None;
    let packet: BytesMut = sender.packet(Status::CONTINUE, |o| {
        taken = Some(output.take(PACKET_MAX, o));
    });
    let taken = taken?;
    if taken.lost > 0 {
        tracing::debug!(
            "console client slower than the guest: {} bytes of output skipped",
            taken.lost
        );
    }
    if taken.bytes == 0 {
        // An empty CONTINUE would tell the client the stream ended.
        return None;
    }
    let sender = sender.clone();
    Some(Box::pin(async move { sender.send(packet).await }))
}

/// Completes when the packet in flight is queued (true) or the client is gone (false);
/// never without one.
async fn sent(in_flight: &mut Option<InFlight>) -> bool {
    match in_flight {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// The line closed or was taken over: the last output, end of stream, then wait for the
/// client's finish (or abort) so it can be confirmed. As libvirtd does, the stream stays
/// until then, however late that is, or until the connection goes: a client that finishes
/// a stream the server forgot would wait for the confirmation forever (python3-libvirt's
/// `virStream.finish()` did, when called more than 10 s after end-of-stream).
async fn end_of_stream(stream: &mut ServerStream, in_flight: Option<InFlight>) {
    if let Some(f) = in_flight {
        if !f.await {
            return;
        }
    }
    if stream.send_eof().await {
        while let Some(p) = stream.recv().await {
            if matches!(p, Inbound::Finish | Inbound::Abort) {
                stream.confirm().await;
                return;
            }
        }
    }
}
