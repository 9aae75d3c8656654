//! Domain XML: `domain::parse` on arbitrary text.
//!
//! Invariants for a document that parses: the inactive XML (`to_xml(None)`) parses back to an
//! equal `DomainDef` and formats identically (a fixed point); the live XML (`to_xml(Some(..))`,
//! with an id and a pty path for every pty line) is produced without panicking and also parses
//! back to the same definition (its additions are live-only and not stored); `argv::build` with
//! a fixed environment does not panic, and a command line it returns keeps the promises of
//! `uml/src/argv.rs` (see `check_argv`).
#![no_main]

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use virtumld_uml::argv::{self, ArgvEnv};
use virtumld_uml::domain::{self, CharKind, DomainDef, LiveXml};

fn live_for(def: &DomainDef) -> LiveXml {
    let pty_paths = def
        .console_aliases()
        .into_iter()
        .filter(|a| def.char_dev(a).map(|c| &c.kind) == Some(&CharKind::Pty))
        .enumerate()
        .map(|(i, a)| (a.alias, PathBuf::from(format!("/dev/pts/{}", 10 + i))))
        .collect();
    LiveXml { id: 7, pty_paths }
}

fuzz_target!(|data: &[u8]| {
    let Ok(xml) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(def) = domain::parse(xml) else {
        return;
    };

    let out = def.to_xml(None);
    let back = domain::parse(&out)
        .unwrap_or_else(|e| panic!("inactive XML does not parse: {e}\n--- XML:\n{out}"));
    assert_eq!(
        back, def,
        "inactive XML is not a fixed point\n--- XML:\n{out}"
    );
    assert_eq!(back.to_xml(None), out, "formatting is not stable");

    let live = def.to_xml(Some(&live_for(&def)));
    let back = domain::parse(&live)
        .unwrap_or_else(|e| panic!("live XML does not parse: {e}\n--- XML:\n{live}"));
    assert_eq!(
        back, def,
        "live XML does not parse back to the definition\n--- XML:\n{live}"
    );
    // A live XML with no pty known yet (a guest still starting) must format too.
    let _ = def.to_xml(Some(&LiveXml::default()));

    let env = ArgvEnv {
        uml_dir: Path::new("/run/libvirt/uml-guest"),
        umid: "fuzz-guest",
        notify_socket: Some(Path::new("/run/libvirt/uml/notify.sock")),
        hostfs_root: Some(Path::new("/run/libvirt/uml/hostfs")),
        line_fds: &[],
    };
    if let Ok(argv) = argv::build(&def, &env) {
        check_argv(&def, &argv);
    }
});

/// What `argv::build` promises about a command line it returns: UML joins argv[1..] with
/// spaces into the kernel command line, which must fit and must split back into the same
/// words (one argv word, one parameter: nothing from the XML can smuggle in another);
/// the daemon's own host options appear once each, and no `<cmdline>` word is one of them.
fn check_argv(def: &DomainDef, argv: &[OsString]) {
    let words: Vec<&str> = argv[1..]
        .iter()
        .map(|w| w.to_str().expect("argv words come from UTF-8 XML"))
        .collect();
    let line = words.join(" ");
    assert!(
        line.len() <= argv::MAX_COMMAND_LINE,
        "command line of {} bytes accepted",
        line.len()
    );
    assert_eq!(
        argv::split_cmdline(&line),
        words,
        "the kernel would split the command line into other words"
    );
    for prefix in [
        "mem=",
        "umid=",
        "uml_dir=",
        "mconsole=",
        "hostfs=",
        "con=",
        "ssl=",
    ] {
        let n = words.iter().filter(|w| w.starts_with(prefix)).count();
        assert_eq!(n, 1, "{n} words start with {prefix}: {words:?}");
    }
    let ubd = words.iter().filter(|w| w.starts_with("ubd")).count();
    assert_eq!(ubd, def.disks.len(), "ubd words: {words:?}");
    let user = def
        .os
        .cmdline
        .as_deref()
        .map_or(0, |c| argv::split_cmdline(c).len());
    for w in &words[words.len() - user..] {
        assert!(
            argv::reserved_cmdline_word(w).is_none(),
            "reserved word {w:?} passed through <cmdline>"
        );
    }
}
