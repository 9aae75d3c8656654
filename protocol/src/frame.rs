//! Message framing: a big-endian u32 total length that counts its own four bytes, then the
//! header and payload. Lengths are checked against the caller's cap before any buffering.

use bytes::{BufMut, BytesMut};

use crate::header::Header;
use crate::limits::{MESSAGE_HEADER_LEN, MESSAGE_MAX};
use crate::xdr::{DecodeError, Reader, Xdr};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("message length {0} is shorter than a header")]
    TooShort(u32),
    #[error("message length {len} exceeds the limit {max}")]
    TooLong { len: u32, max: usize },
}

/// Looks at the start of `buf`: `Ok(None)` when more bytes are needed to know, otherwise the
/// total length of the first message (which may not be fully buffered yet). `cap` is the
/// largest total length accepted in the connection's current phase.
pub fn message_len(buf: &[u8], cap: usize) -> Result<Option<usize>, FrameError> {
    let Some(word) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
    if (len as usize) < MESSAGE_HEADER_LEN {
        return Err(FrameError::TooShort(len));
    }
    let max = cap.min(MESSAGE_MAX);
    if len as usize > max {
        return Err(FrameError::TooLong { len, max });
    }
    Ok(Some(len as usize))
}

/// Splits one whole message (length word included) into its header and payload.
pub fn split(message: &[u8]) -> Result<(Header, &[u8]), DecodeError> {
    let mut r = Reader::new(message.get(4..).ok_or(DecodeError::Truncated)?);
    let header = Header::decode(&mut r)?;
    Ok((header, r.rest()))
}

/// Encodes a whole message: length word, header, then whatever `body` writes.
pub fn encode_with(header: &Header, body: impl FnOnce(&mut BytesMut)) -> BytesMut {
    let mut out = BytesMut::with_capacity(64);
    out.put_u32(0);
    header.encode(&mut out);
    body(&mut out);
    let len = out.len() as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

/// Encodes a message whose payload is one XDR value.
pub fn encode<T: Xdr>(header: &Header, payload: &T) -> BytesMut {
    encode_with(header, |out| payload.encode(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::{MessageType, Status, REMOTE_PROGRAM};

    #[test]
    fn length_word_rules() {
        assert_eq!(message_len(&[0, 0, 0], 1 << 20), Ok(None));
        assert_eq!(
            message_len(&[0, 0, 0, 4], 1 << 20),
            Err(FrameError::TooShort(4))
        );
        assert_eq!(
            message_len(&[0, 0, 0, 27], 1 << 20),
            Err(FrameError::TooShort(27))
        );
        assert_eq!(message_len(&[0, 0, 0, 28], 1 << 20), Ok(Some(28)));
        // The cap of the phase applies, and never more than 32 MiB.
        assert!(message_len(&65_537u32.to_be_bytes(), 65_536).is_err());
        assert!(message_len(&(MESSAGE_MAX as u32 + 1).to_be_bytes(), usize::MAX).is_err());
        assert_eq!(
            message_len(&(MESSAGE_MAX as u32).to_be_bytes(), usize::MAX),
            Ok(Some(MESSAGE_MAX))
        );
        assert!(message_len(&u32::MAX.to_be_bytes(), usize::MAX).is_err());
    }

    #[test]
    fn auth_list_call_from_the_wire() {
        let raw = [
            0, 0, 0, 0x1c, 0x20, 0, 0x80, 0x86, 0, 0, 0, 1, 0, 0, 0, 0x42, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0,
        ];
        let (h, payload) = split(&raw).unwrap();
        assert_eq!(h.program, REMOTE_PROGRAM);
        assert_eq!(h.procedure, 66);
        assert_eq!(h.kind, MessageType::CALL);
        assert!(payload.is_empty());
        assert_eq!(&encode(&h, &())[..], &raw[..]);
        let reply = encode(&h.reply(Status::OK), &vec![0i32]);
        assert_eq!(reply.len(), 36);
    }
}
