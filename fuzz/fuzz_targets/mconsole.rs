//! mconsole datagrams from the guest: reply chunks and boot notifications.
//!
//! Invariants: neither parser panics; a reply that parses has a length field of at most 512
//! (`MAX_DATA`) that fits in the datagram, and its data is a slice of the datagram, ending
//! before the first NUL of the declared data; a notification that parses has the right magic and
//! version and at most 511 data bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtumld_uml::mconsole::{self, MAX_DATA, NOTIFY_HEADER, REPLY_HEADER};

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap())
}

fuzz_target!(|data: &[u8]| {
    if let Ok(chunk) = mconsole::parse_reply(data) {
        let len = u32_at(data, 8) as usize;
        assert!(len <= MAX_DATA, "reply length {len} accepted");
        assert!(
            REPLY_HEADER + len <= data.len(),
            "reply length {len} past the datagram"
        );
        let start = data.as_ptr() as usize;
        let at = chunk.data.as_ptr() as usize;
        assert!(at >= start && at + chunk.data.len() <= start + data.len());
        assert_eq!(
            at - start,
            REPLY_HEADER,
            "data does not start after the header"
        );
        // The data ends at the first NUL, which lies inside the declared length.
        assert!(chunk.data.len() < len);
        assert!(!chunk.data.contains(&0));
        assert_eq!(data[REPLY_HEADER + chunk.data.len()], 0);
        assert_eq!(chunk.err, u32_at(data, 0) as i32);
        assert_eq!(chunk.more, u32_at(data, 4) != 0);
    }
    if let Ok(n) = mconsole::parse_notify(data) {
        assert_eq!(u32_at(data, 0), mconsole::MAGIC);
        assert_eq!(u32_at(data, 4), mconsole::VERSION);
        let len = u32_at(data, 12) as usize;
        assert!(len <= MAX_DATA && NOTIFY_HEADER + len <= data.len());
        assert!(n.data.len() < len);
        assert!(!n.data.contains(&0));
        assert_eq!(
            &n.data[..],
            &data[NOTIFY_HEADER..NOTIFY_HEADER + n.data.len()]
        );
    }
});
