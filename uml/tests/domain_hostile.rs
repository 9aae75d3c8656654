//! Damaged input never panics the parser or the command-line builder: every prefix of the
//! sample documents, single-byte substitutions with XML-significant bytes at every position,
//! and deleted or duplicated spans. Whatever still parses must also format to a fixed point.

use std::path::Path;

use virtumld_uml::argv::{self, ArgvEnv};
use virtumld_uml::domain;

const SAMPLES: &[&str] = &[
    include_str!("data/domxml2xml/seed-drvuml.in.xml"),
    include_str!("data/domxml2xml/full.in.xml"),
    include_str!("data/domxml2xml/harmless.in.xml"),
];

const SUBSTITUTES: &[u8] = b"\0<>&;'\"/\xff";

fn exercise(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    if let Ok(def) = domain::parse(&text) {
        let xml = def.to_xml(None);
        assert_eq!(
            domain::parse(&xml).as_ref(),
            Ok(&def),
            "fixed point on:\n{text}"
        );
        let env = ArgvEnv {
            uml_dir: Path::new("/run/virtumld/uml"),
            umid: "guest",
            notify_socket: None,
            hostfs_root: None,
            line_fds: &[],
        };
        let _ = argv::build(&def, &env);
    }
}

#[test]
fn truncated_prefixes() {
    for s in SAMPLES {
        let b = s.as_bytes();
        for end in 0..=b.len() {
            exercise(&b[..end]);
        }
    }
}

/// Every position gets two substitutes, rotating through the set so that each byte value
/// lands everywhere in the document across positions (all of them × all positions would take
/// too long in a debug build).
#[test]
fn byte_substitutions() {
    for s in SAMPLES {
        let mut b = s.as_bytes().to_vec();
        for i in 0..b.len() {
            let orig = b[i];
            for k in [i, i + SUBSTITUTES.len() / 2] {
                let sub = SUBSTITUTES[k % SUBSTITUTES.len()];
                if sub != orig {
                    b[i] = sub;
                    exercise(&b);
                }
            }
            b[i] = orig;
        }
    }
}

#[test]
fn deleted_and_duplicated_spans() {
    for s in SAMPLES {
        let b = s.as_bytes();
        for start in (0..b.len()).step_by(7) {
            for len in [1usize, 5, 23] {
                let end = (start + len).min(b.len());
                let mut del = b[..start].to_vec();
                del.extend_from_slice(&b[end..]);
                exercise(&del);
                let mut dup = b[..end].to_vec();
                dup.extend_from_slice(&b[start..]);
                exercise(&dup);
            }
        }
    }
}
