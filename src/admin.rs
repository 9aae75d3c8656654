//! The admin socket (`virtumld-admin-sock`, only when systemd hands it over through
//! `virtumld-admin.socket`). virtumld has no admin interface yet: it accepts connections
//! and answers every CALL the way libvirtd answers a program it does not serve, with
//! `Cannot find program P version V` (VIR_ERR_RPC), so `virt-admin -c virtumld:///system`
//! fails at once with that message instead of hanging. Keepalive PINGs get their PONG.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tracing::{debug, info};
use virtumld_protocol::error::{code, domain, RemoteError};
use virtumld_protocol::frame;
use virtumld_protocol::header::{
    Header, MessageType, Status, KEEPALIVE_PROC_PING, KEEPALIVE_PROC_PONG, KEEPALIVE_PROGRAM,
};
use virtumld_protocol::limits::MESSAGE_INITIAL;

/// Serves one admin connection until the peer leaves, breaks framing, or the daemon stops.
pub async fn serve<S>(mut stream: S, peer: String, mut shutdown: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    info!(%peer, "admin client connected (no admin interface: every call is refused)");
    let mut buf = bytes::BytesMut::new();
    loop {
        // Whole messages already buffered first.
        loop {
            let len = match frame::message_len(&buf, MESSAGE_INITIAL) {
                Ok(Some(len)) if buf.len() >= len => len,
                Ok(_) => break,
                Err(e) => {
                    debug!(%peer, "closing admin connection: {e}");
                    return;
                }
            };
            let msg = buf.split_to(len);
            let Ok((h, _)) = frame::split(&msg) else {
                return;
            };
            if let Some(reply) = answer(&h) {
                if stream.write_all(&reply).await.is_err() {
                    return;
                }
            }
        }
        tokio::select! {
            r = stream.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
            _ = shutdown.changed() => break,
        }
    }
    debug!(%peer, "admin client disconnected");
}

/// The reply to one message, if it gets one.
fn answer(h: &Header) -> Option<bytes::BytesMut> {
    if h.program == KEEPALIVE_PROGRAM {
        if h.kind == MessageType::MESSAGE && h.procedure == KEEPALIVE_PROC_PING {
            let pong = Header {
                procedure: KEEPALIVE_PROC_PONG,
                ..*h
            };
            return Some(frame::encode(&pong, &()));
        }
        return None;
    }
    if h.kind == MessageType::CALL || h.kind == MessageType::CALL_WITH_FDS {
        let err = RemoteError::new(
            code::RPC,
            domain::RPC,
            format!("Cannot find program {} version {}", h.program, h.version),
        );
        return Some(frame::encode(&h.reply(Status::ERROR), &err));
    }
    None
}
