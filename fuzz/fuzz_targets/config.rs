//! The libvirtd.conf-style configuration file: `Config::parse` never panics, whatever the text,
//! and an error names the file and a line that exists.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtumld::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Config::parse("f", text) {
        let lines = text.bytes().filter(|&b| b == b'\n').count() + 1;
        assert_eq!(e.file, "f");
        assert!(
            (1..=lines).contains(&e.line),
            "error on line {} of {lines}",
            e.line
        );
        let _ = e.to_string();
    }
});
