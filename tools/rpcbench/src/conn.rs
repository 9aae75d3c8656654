//! One client connection speaking the raw libvirt remote protocol over TCP or a UNIX socket:
//! framing, sequential calls, pipelined calls, and the AUTH_LIST + CONNECT_OPEN handshake.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use virtumld_protocol::error::RemoteError;
use virtumld_protocol::frame;
use virtumld_protocol::header::{
    Header, MessageType, Status, KEEPALIVE_PROC_PING, KEEPALIVE_PROC_PONG, KEEPALIVE_PROGRAM,
    KEEPALIVE_PROTOCOL_VERSION, REMOTE_PROGRAM, REMOTE_PROTOCOL_VERSION,
};
use virtumld_protocol::limits::MESSAGE_MAX;
use virtumld_protocol::procedures::proc as p;
use virtumld_protocol::remote::{AuthListRet, AuthType, ConnectOpenArgs};
use virtumld_protocol::xdr::{self, Xdr};

/// Where the server listens.
#[derive(Debug, Clone)]
pub enum Target {
    Tcp(String),
    Unix(PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(a) => write!(f, "tcp:{a}"),
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Why a call failed.
#[derive(Debug)]
pub enum CallError {
    Io(io::Error),
    /// The server answered with status ERROR.
    Remote(Box<RemoteError>),
    Decode(xdr::DecodeError),
    Protocol(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Io(e) => write!(f, "i/o: {e}"),
            CallError::Remote(e) => write!(
                f,
                "server error code {} domain {}: {}",
                e.code,
                e.domain,
                e.message.as_deref().unwrap_or("(no message)")
            ),
            CallError::Decode(e) => write!(f, "cannot decode reply: {e}"),
            CallError::Protocol(s) => write!(f, "protocol: {s}"),
        }
    }
}

impl From<io::Error> for CallError {
    fn from(e: io::Error) -> Self {
        CallError::Io(e)
    }
}

impl From<xdr::DecodeError> for CallError {
    fn from(e: xdr::DecodeError) -> Self {
        CallError::Decode(e)
    }
}

/// The text of an error reply's payload, for reports.
pub fn describe_error_payload(payload: &[u8]) -> String {
    match xdr::from_bytes::<RemoteError>(payload) {
        Ok(e) => CallError::Remote(Box::new(e)).to_string(),
        Err(e) => format!("undecodable error reply: {e}"),
    }
}

pub struct Conn {
    stream: Stream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    next_serial: u32,
}

const READ_CHUNK: usize = 64 * 1024;

impl Conn {
    pub async fn connect(target: &Target) -> io::Result<Conn> {
        let stream = match target {
            Target::Tcp(addr) => {
                let s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                Stream::Tcp(s)
            }
            Target::Unix(path) => Stream::Unix(UnixStream::connect(path).await?),
        };
        Ok(Conn {
            stream,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            next_serial: 0,
        })
    }

    /// Connects, then AUTH_LIST and CONNECT_OPEN(uri) (read-only when `ro`).
    pub async fn open(target: &Target, uri: &str, ro: bool) -> Result<Conn, CallError> {
        let mut c = Conn::connect(target).await?;
        c.handshake(uri, ro).await?;
        Ok(c)
    }

    pub async fn handshake(&mut self, uri: &str, ro: bool) -> Result<(), CallError> {
        let auth: AuthListRet = self.call(p::AUTH_LIST, &()).await?;
        if auth.types.first().is_some_and(|t| *t != AuthType::None) {
            return Err(CallError::Protocol(format!(
                "the server asks for authentication {:?}; rpcbench only does auth none",
                auth.types
            )));
        }
        let args = ConnectOpenArgs {
            name: Some(uri.to_string()),
            flags: u32::from(ro),
        };
        self.call::<_, ()>(p::CONNECT_OPEN, &args).await
    }

    /// Appends one CALL to the write buffer and returns its serial.
    pub fn queue_call_raw(&mut self, procedure: i32, body: &[u8]) -> u32 {
        let serial = self.next_serial;
        self.next_serial = self.next_serial.wrapping_add(1);
        let h = Header {
            program: REMOTE_PROGRAM,
            version: REMOTE_PROTOCOL_VERSION,
            procedure,
            kind: MessageType::CALL,
            serial,
            status: Status::OK,
        };
        let len = 28 + body.len();
        self.wbuf.reserve(len);
        self.wbuf.put_u32(len as u32);
        h.encode(&mut self.wbuf);
        self.wbuf.extend_from_slice(body);
        serial
    }

    pub fn queue_call<A: Xdr>(&mut self, procedure: i32, args: &A) -> u32 {
        let body = xdr::to_bytes(args);
        self.queue_call_raw(procedure, &body)
    }

    /// Answers a keepalive PING.
    pub fn queue_pong(&mut self) {
        let h = Header {
            program: KEEPALIVE_PROGRAM,
            version: KEEPALIVE_PROTOCOL_VERSION,
            procedure: KEEPALIVE_PROC_PONG,
            kind: MessageType::MESSAGE,
            serial: 0,
            status: Status::OK,
        };
        self.wbuf.extend_from_slice(&frame::encode(&h, &()));
    }

    pub fn has_output(&self) -> bool {
        !self.wbuf.is_empty()
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// One whole message from what is already buffered, if there is one.
    pub fn take_buffered(&mut self) -> io::Result<Option<BytesMut>> {
        match frame::message_len(&self.rbuf, MESSAGE_MAX) {
            Ok(Some(len)) if self.rbuf.len() >= len => Ok(Some(self.rbuf.split_to(len))),
            Ok(Some(len)) => {
                self.rbuf.reserve(len - self.rbuf.len());
                Ok(None)
            }
            Ok(None) => Ok(None),
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        }
    }

    /// Reads once from the socket into the buffer; 0 means the peer closed.
    pub async fn fill(&mut self) -> io::Result<usize> {
        if self.rbuf.capacity() - self.rbuf.len() < 4096 {
            self.rbuf.reserve(READ_CHUNK);
        }
        self.stream.read_buf(&mut self.rbuf).await
    }

    /// The next whole message; `None` at EOF.
    pub async fn read_message(&mut self) -> io::Result<Option<BytesMut>> {
        loop {
            if let Some(m) = self.take_buffered()? {
                return Ok(Some(m));
            }
            if self.fill().await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Waits for the reply with `serial`, answering PINGs and skipping other messages
    /// (events, replies to other serials).
    pub async fn wait_reply(&mut self, serial: u32) -> Result<(Header, BytesMut), CallError> {
        loop {
            let msg = match self.read_message().await? {
                Some(m) => m,
                None => {
                    return Err(CallError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection",
                    )))
                }
            };
            let (h, _) = frame::split(&msg)?;
            if h.program == KEEPALIVE_PROGRAM {
                if h.procedure == KEEPALIVE_PROC_PING {
                    self.queue_pong();
                    self.flush().await?;
                }
                continue;
            }
            if h.kind == MessageType::REPLY && h.serial == serial {
                return Ok((h, msg));
            }
        }
    }

    /// A sequential call: send, wait for its reply, decode.
    pub async fn call<A: Xdr, R: Xdr>(&mut self, procedure: i32, args: &A) -> Result<R, CallError> {
        let serial = self.queue_call(procedure, args);
        self.flush().await?;
        let (h, msg) = self.wait_reply(serial).await?;
        let (_, payload) = frame::split(&msg)?;
        if h.status != Status::OK {
            return Err(match xdr::from_bytes::<RemoteError>(payload) {
                Ok(e) => CallError::Remote(Box::new(e)),
                Err(e) => CallError::Decode(e),
            });
        }
        Ok(xdr::from_bytes::<R>(payload)?)
    }
}
