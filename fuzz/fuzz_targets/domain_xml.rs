//! Domain XML: `domain::parse` on arbitrary text.
//!
//! Invariants for a document that parses: the inactive XML (`to_xml(None)`) parses back to an
//! equal `DomainDef` and formats identically (a fixed point); the live XML (`to_xml(Some(..))`,
//! with an id and a pty path for every pty line) is produced without panicking and also parses
//! back to the same definition (its additions are live-only and not stored); `argv::build` with
//! a fixed environment does not panic.
#![no_main]

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
    let _ = argv::build(&def, &env);
});
