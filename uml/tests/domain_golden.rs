//! Golden tests for the domain XML parser and formatter.
//!
//! - `data/domxml2xml/<case>.in.xml` → `<case>.out.xml` (inactive XML) and `<case>.live.xml`
//!   (as a running guest: id 1, pty paths `/dev/pts/10`, `/dev/pts/11`, … by alias order);
//!   both outputs must parse back to the same definition.
//! - `data/domxml2xml-invalid/<case>.xml` must be refused; its first line is a comment
//!   `<!-- expect: <code> <text the message contains> -->`.
//!
//! `VIRTUMLD_REGENERATE_GOLDEN=1 cargo test -p virtumld-uml --test domain_golden` rewrites the
//! expected files (review the diff).
//!
//! The data names `arch='x86_64'` in places, the only arch Debian's UML build is tested on.
#![cfg(target_arch = "x86_64")]

use std::fs;
use std::path::{Path, PathBuf};

use virtumld_uml::domain::{self, CharKind, DomainDef, LiveXml};

fn data(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(dir)
}

fn cases(dir: &Path, suffix: &str) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = fs::read_dir(dir)
        .expect("data dir")
        .filter_map(|e| {
            let p = e.expect("dir entry").path();
            let name = p.file_name()?.to_str()?.strip_suffix(suffix)?.to_owned();
            Some((name, p))
        })
        .collect();
    out.sort();
    out
}

fn regenerate() -> bool {
    std::env::var_os("VIRTUMLD_REGENERATE_GOLDEN").is_some()
}

fn check_golden(path: &Path, actual: &str) {
    if regenerate() {
        fs::write(path, actual).expect("write golden");
        return;
    }
    let expected = fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e} (set VIRTUMLD_REGENERATE_GOLDEN=1)", path.display()));
    assert_eq!(actual, expected, "output differs from {}", path.display());
}

fn live_for(def: &DomainDef) -> LiveXml {
    let pty_paths = def
        .console_aliases()
        .into_iter()
        .filter(|a| def.char_dev(a).map(|c| &c.kind) == Some(&CharKind::Pty))
        .enumerate()
        .map(|(i, a)| (a.alias, PathBuf::from(format!("/dev/pts/{}", 10 + i))))
        .collect();
    LiveXml { id: 1, pty_paths }
}

#[test]
fn domxml2xml() {
    let dir = data("domxml2xml");
    let all = cases(&dir, ".in.xml");
    assert!(all.len() >= 4, "golden cases missing");
    for (name, input) in all {
        let xml = fs::read_to_string(&input).expect("read input");
        let def = domain::parse(&xml).unwrap_or_else(|e| panic!("{name}: {e}"));

        let out = def.to_xml(None);
        check_golden(&dir.join(format!("{name}.out.xml")), &out);
        let back = domain::parse(&out).unwrap_or_else(|e| panic!("{name} out: {e}"));
        assert_eq!(back, def, "{name}: inactive XML is not a fixed point");
        assert_eq!(back.to_xml(None), out, "{name}: formatting is not stable");

        let live = def.to_xml(Some(&live_for(&def)));
        check_golden(&dir.join(format!("{name}.live.xml")), &live);
        let back = domain::parse(&live).unwrap_or_else(|e| panic!("{name} live: {e}"));
        assert_eq!(
            back, def,
            "{name}: live XML does not parse back to the definition"
        );
    }
}

#[test]
fn domxml2xml_invalid() {
    let dir = data("domxml2xml-invalid");
    let all = cases(&dir, ".xml");
    assert!(all.len() >= 5, "invalid cases missing");
    for (name, path) in all {
        let xml = fs::read_to_string(&path).expect("read");
        let first = xml.lines().next().unwrap_or_default();
        let expect = first
            .strip_prefix("<!-- expect: ")
            .and_then(|r| r.strip_suffix(" -->"))
            .unwrap_or_else(|| panic!("{name}: first line must be <!-- expect: CODE TEXT -->"));
        let (code, text) = expect.split_once(' ').expect("code and text");
        let code: i32 = code.parse().expect("numeric code");
        match domain::parse(&xml) {
            Ok(d) => panic!("{name}: accepted {d:?}"),
            Err(e) => {
                assert_eq!(e.vir_code(), code, "{name}: {e}");
                assert!(e.to_string().contains(text), "{name}: '{e}' lacks '{text}'");
            }
        }
    }
}
