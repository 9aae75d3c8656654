//! Framing: arbitrary bytes as a connection's receive buffer, cut into messages the way the
//! connection loop does, under the pre-authentication cap (64 KiB) and the 32 MiB cap.
//!
//! Invariants: `message_len` never answers a length outside `[28, min(cap, 32 MiB)]`; a length
//! accepted under the small cap is accepted (identically) under the large one; every whole
//! message splits into a header and payload, and re-encoding that header and payload gives back
//! exactly the message's bytes.
#![no_main]

use bytes::BufMut;
use libfuzzer_sys::fuzz_target;
use virtumld_protocol::frame::{self, FrameError};
use virtumld_protocol::limits::{MESSAGE_HEADER_LEN, MESSAGE_INITIAL, MESSAGE_MAX};
use virtumld_protocol::xdr;

fn walk(mut buf: &[u8], cap: usize) {
    let max = cap.min(MESSAGE_MAX);
    loop {
        let len = match frame::message_len(buf, cap) {
            Ok(None) => {
                assert!(buf.len() < 4, "Ok(None) with {} bytes buffered", buf.len());
                return;
            }
            Ok(Some(len)) => len,
            Err(FrameError::TooShort(len)) => {
                assert!((len as usize) < MESSAGE_HEADER_LEN);
                assert_eq!(len.to_be_bytes(), buf[..4]);
                return;
            }
            Err(FrameError::TooLong { len, max: m }) => {
                assert_eq!(m, max);
                assert!(len as usize > max);
                assert_eq!(len.to_be_bytes(), buf[..4]);
                return;
            }
        };
        assert!(
            (MESSAGE_HEADER_LEN..=max).contains(&len),
            "len {len} cap {cap}"
        );
        assert_eq!(len as u32, u32::from_be_bytes(buf[..4].try_into().unwrap()));
        if cap < MESSAGE_MAX {
            assert_eq!(frame::message_len(buf, MESSAGE_MAX), Ok(Some(len)));
        }
        let Some(message) = buf.get(..len) else {
            // Not fully buffered yet: the connection would wait for more.
            return;
        };
        let (header, payload) =
            frame::split(message).expect("a whole message of at least 28 bytes must split");
        assert_eq!(payload.len(), len - MESSAGE_HEADER_LEN);
        assert_eq!(&xdr::to_bytes(&header)[..], &message[4..MESSAGE_HEADER_LEN]);
        let again = frame::encode_with(&header, |out| out.put_slice(payload));
        assert_eq!(&again[..], message, "re-encoded message differs");
        buf = &buf[len..];
    }
}

fuzz_target!(|data: &[u8]| {
    walk(data, MESSAGE_INITIAL);
    walk(data, MESSAGE_MAX);
    // `split` on its own must never panic, whatever it is given.
    let _ = frame::split(data);
});
