//! A blocking client connection speaking the raw remote protocol: calls, and the stream
//! packets of a console. Incoming bytes are buffered, so a read that times out never loses
//! part of a message.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use virtumld_protocol::error::RemoteError;
use virtumld_protocol::frame;
use virtumld_protocol::header::{Header, MessageType, Status, REMOTE_PROGRAM};
use virtumld_protocol::limits::MESSAGE_MAX;
use virtumld_protocol::procedures::proc as p;
use virtumld_protocol::remote::{DomainOpenConsoleArgs, NonnullDomain};
use virtumld_protocol::xdr::{self, Xdr};

/// A call's outcome: the reply payload, or the daemon's error.
pub type Outcome = Result<Vec<u8>, RemoteError>;

pub struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
    serial: u32,
}

fn header(procedure: i32, serial: u32, kind: MessageType, status: Status) -> Header {
    Header {
        program: REMOTE_PROGRAM,
        version: 1,
        procedure,
        kind,
        serial,
        status,
    }
}

impl Conn {
    /// Connects and opens `uml:///system` (AUTH_LIST, CONNECT_OPEN).
    pub fn open(addr: &str) -> io::Result<Conn> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        let mut c = Conn {
            s,
            buf: Vec::new(),
            serial: 0,
        };
        c.call(p::AUTH_LIST, &[])?.map_err(remote_io)?;
        let mut args = xdr::to_bytes(&Some("uml:///system".to_string())).to_vec();
        args.extend(0u32.to_be_bytes());
        c.call(p::CONNECT_OPEN, &args)?.map_err(remote_io)?;
        Ok(c)
    }

    fn send(&mut self, h: &Header, payload: &[u8]) -> io::Result<()> {
        let msg = frame::encode_with(h, |o| o.extend_from_slice(payload));
        self.s.write_all(&msg)
    }

    /// The next whole message, or `None` when `deadline` passes first.
    pub fn next_message(&mut self, deadline: Instant) -> io::Result<Option<(Header, Vec<u8>)>> {
        loop {
            if let Ok(Some(len)) = frame::message_len(&self.buf, MESSAGE_MAX) {
                if self.buf.len() >= len {
                    let m: Vec<u8> = self.buf.drain(..len).collect();
                    let (h, payload) = frame::split(&m).map_err(io::Error::other)?;
                    return Ok(Some((h, payload.to_vec())));
                }
            } else if self.buf.len() >= 4 {
                return Err(io::Error::other("bad length word from the daemon"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.s
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
            let mut chunk = [0u8; 64 * 1024];
            match self.s.read(&mut chunk) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// One call and its reply (other messages in between are skipped).
    pub fn call(&mut self, procedure: i32, args: &[u8]) -> io::Result<Outcome> {
        self.serial += 1;
        let serial = self.serial;
        self.send(
            &header(procedure, serial, MessageType::CALL, Status::OK),
            args,
        )?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let Some((h, payload)) = self.next_message(deadline)? else {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no reply in 120 s"));
            };
            if h.kind != MessageType::REPLY || h.serial != serial {
                continue;
            }
            return Ok(if h.status == Status::OK {
                Ok(payload)
            } else {
                Err(xdr::from_bytes::<RemoteError>(&payload).map_err(io::Error::other)?)
            });
        }
    }

    pub fn call_xdr<T: Xdr>(
        &mut self,
        procedure: i32,
        args: &impl Xdr,
    ) -> io::Result<Result<T, RemoteError>> {
        Ok(self
            .call(procedure, &xdr::to_bytes(args))?
            .map(|b| xdr::from_bytes::<T>(&b).expect("a well-formed reply")))
    }

    /// DOMAIN_OPEN_CONSOLE on `dom`'s first console: the stream's serial and the reply.
    pub fn open_console(&mut self, dom: &NonnullDomain) -> io::Result<(u32, Outcome)> {
        let serial = self.next_serial();
        let args = DomainOpenConsoleArgs {
            dom: dom.clone(),
            dev_name: None,
            flags: 0,
        };
        Ok((
            serial,
            self.call(p::DOMAIN_OPEN_CONSOLE, &xdr::to_bytes(&args))?,
        ))
    }

    /// The serial the next call will use (a stream opened by it reuses it).
    pub fn next_serial(&self) -> u32 {
        self.serial + 1
    }

    /// Sends stream data (CONTINUE) or the finish (empty OK) on the stream of `serial`.
    pub fn stream_send(
        &mut self,
        procedure: i32,
        serial: u32,
        status: Status,
        data: &[u8],
    ) -> io::Result<()> {
        self.send(
            &header(procedure, serial, MessageType::STREAM, status),
            data,
        )
    }
}

pub fn remote_io(e: RemoteError) -> io::Error {
    io::Error::other(e.message.unwrap_or_default())
}
