//! The 24-byte message header that follows the length word.

use bytes::{BufMut, BytesMut};

use crate::xdr::{DecodeError, Reader, Xdr};

/// `REMOTE_PROGRAM`: the main libvirt API.
pub const REMOTE_PROGRAM: u32 = 0x2000_8086;
pub const REMOTE_PROTOCOL_VERSION: u32 = 1;
/// `KEEPALIVE_PROGRAM` ("keep").
pub const KEEPALIVE_PROGRAM: u32 = 0x6b65_6570;
pub const KEEPALIVE_PROTOCOL_VERSION: u32 = 1;
pub const KEEPALIVE_PROC_PING: i32 = 1;
pub const KEEPALIVE_PROC_PONG: i32 = 2;
pub const QEMU_PROGRAM: u32 = 0x2000_8087;
pub const LXC_PROGRAM: u32 = 0x0006_8000;
pub const ADMIN_PROGRAM: u32 = 0x0690_0690;

/// `virNetMessageType`, kept as the raw number so an unknown value can still be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MessageType(pub i32);

impl MessageType {
    pub const CALL: Self = MessageType(0);
    pub const REPLY: Self = MessageType(1);
    pub const MESSAGE: Self = MessageType(2);
    pub const STREAM: Self = MessageType(3);
    pub const CALL_WITH_FDS: Self = MessageType(4);
    pub const REPLY_WITH_FDS: Self = MessageType(5);
    pub const STREAM_HOLE: Self = MessageType(6);
}

/// `virNetMessageStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(pub i32);

impl Status {
    pub const OK: Self = Status(0);
    pub const ERROR: Self = Status(1);
    /// Only on STREAM data packets: more data follows.
    pub const CONTINUE: Self = Status(2);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub program: u32,
    pub version: u32,
    pub procedure: i32,
    pub kind: MessageType,
    pub serial: u32,
    pub status: Status,
}

impl Header {
    /// The header of a reply to `self`: program, version, procedure and serial echoed.
    pub fn reply(&self, status: Status) -> Header {
        Header {
            kind: MessageType::REPLY,
            status,
            ..*self
        }
    }
}

impl Xdr for Header {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u32(self.program);
        out.put_u32(self.version);
        out.put_i32(self.procedure);
        out.put_i32(self.kind.0);
        out.put_u32(self.serial);
        out.put_i32(self.status.0);
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Header {
            program: r.u32()?,
            version: r.u32()?,
            procedure: i32::decode(r)?,
            kind: MessageType(i32::decode(r)?),
            serial: r.u32()?,
            status: Status(i32::decode(r)?),
        })
    }
}
