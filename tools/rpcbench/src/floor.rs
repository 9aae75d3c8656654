//! `rpcbench floor`: the cheapest server that still speaks the protocol, as a reference for
//! what any server on this machine can reach. Each connection is one tokio task that reads
//! whole messages and answers every CALL at once with a canned OK reply (an auth list of
//! "none" for AUTH_LIST, a version for CONNECT_GET_VERSION, an empty body otherwise): no
//! dispatch, no state, no checks. Run the client scenarios against it like any server.

use std::io;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use virtumld_protocol::frame;
use virtumld_protocol::header::{MessageType, Status};
use virtumld_protocol::limits::MESSAGE_MAX;
use virtumld_protocol::procedures::proc as p;
use virtumld_protocol::remote::{AuthListRet, AuthType, ConnectGetVersionRet};

pub async fn serve(listen: &str) -> io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    eprintln!("rpcbench floor: listening on {}", listener.local_addr()?);
    loop {
        let (sock, _) = listener.accept().await?;
        sock.set_nodelay(true)?;
        tokio::spawn(async move {
            // A client that breaks the framing just loses its connection.
            let _ = connection(sock).await;
        });
    }
}

async fn connection(mut sock: TcpStream) -> io::Result<()> {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut out = BytesMut::new();
    loop {
        if sock.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        while let Some(len) = frame::message_len(&buf, MESSAGE_MAX)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e:?}")))?
        {
            if buf.len() < len {
                break;
            }
            let (header, _) = frame::split(&buf[..len])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            if header.kind == MessageType::CALL {
                let reply = header.reply(Status::OK);
                out.extend_from_slice(&match header.procedure {
                    p::AUTH_LIST => frame::encode(
                        &reply,
                        &AuthListRet {
                            types: vec![AuthType::None],
                        },
                    ),
                    p::CONNECT_GET_VERSION => {
                        frame::encode(&reply, &ConnectGetVersionRet { hv_ver: 6_001_000 })
                    }
                    _ => frame::encode(&reply, &()),
                });
            }
            buf.advance(len);
        }
        if !out.is_empty() {
            sock.write_all(&out).await?;
            out.clear();
        }
    }
}
