//! Golden tests for the `linux.uml` command line: `data/domxml2argv/<case>.xml` →
//! `<case>.args`, one argv word per line, built with umid = the domain name,
//! uml_dir = `/run/virtumld/uml` and notify socket `/run/virtumld/notify.sock`.
//!
//! `VIRTUMLD_REGENERATE_GOLDEN=1 cargo test -p virtumld-uml --test argv_golden` rewrites the
//! expected files (review the diff).
//!
//! The data names `arch='x86_64'` in places, the only arch Debian's UML build is tested on.
#![cfg(target_arch = "x86_64")]

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use virtumld_uml::argv::{self, ArgvEnv};
use virtumld_uml::domain::{self, DefError};

fn data(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(dir)
}

fn words(argv: &[OsString]) -> String {
    let mut s = String::new();
    for w in argv {
        s.push_str(w.to_str().expect("utf-8 argv"));
        s.push('\n');
    }
    s
}

fn build_for(xml: &str, notify: bool) -> Result<Vec<OsString>, DefError> {
    let def = domain::parse(xml)?;
    let env = ArgvEnv {
        uml_dir: Path::new("/run/virtumld/uml"),
        umid: &def.name,
        notify_socket: notify.then_some(Path::new("/run/virtumld/notify.sock")),
        hostfs_root: None,
        line_fds: &[],
    };
    argv::build(&def, &env)
}

#[test]
fn domxml2argv() {
    let dir = data("domxml2argv");
    let mut all: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("data dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "xml"))
        .collect();
    all.sort();
    assert!(all.len() >= 5, "golden cases missing");
    for xml_path in all {
        let xml = fs::read_to_string(&xml_path).expect("read");
        let argv = build_for(&xml, true).unwrap_or_else(|e| panic!("{}: {e}", xml_path.display()));
        let actual = words(&argv);
        let args_path = xml_path.with_extension("args");
        if std::env::var_os("VIRTUMLD_REGENERATE_GOLDEN").is_some() {
            fs::write(&args_path, &actual).expect("write golden");
            continue;
        }
        let expected = fs::read_to_string(&args_path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (set VIRTUMLD_REGENERATE_GOLDEN=1)",
                args_path.display()
            )
        });
        assert_eq!(
            actual,
            expected,
            "argv differs from {}",
            args_path.display()
        );
    }
}

const SEED: &str = include_str!("data/domxml2argv/seed-drvuml.xml");

#[test]
fn fixed_prefix_and_line_defaults() {
    let argv = build_for(SEED, false).expect("seed");
    let w: Vec<&str> = argv.iter().map(|w| w.to_str().expect("utf-8")).collect();
    assert_eq!(
        w,
        [
            "/home/berrange/linux-uml-2.6.26-x86_64",
            "mem=500000K",
            "umid=demo",
            "uml_dir=/run/virtumld/uml",
            "noreboot",
            "ubd0=/home/berrange/FedoraCore6-AMD64-root_fs",
            "con=null",
            "ssl=null",
            "con0=pts",
        ]
    );
}

#[test]
fn environment_is_checked() {
    let def = domain::parse(SEED).expect("seed");
    let ok_dir = Path::new("/run/virtumld/uml");
    let long_dir = PathBuf::from(format!("/{}", "d".repeat(100)));
    let bad: &[(&Path, &str, Option<&Path>)] = &[
        (ok_dir, "", None),
        (ok_dir, "a/b", None),
        (ok_dir, ".x", None),
        (ok_dir, "a b", None),
        (ok_dir, &"u".repeat(64), None),
        (Path::new("relative"), "demo", None),
        (Path::new("/run/with space"), "demo", None),
        (&long_dir, "demo", None),
        (ok_dir, "demo", Some(Path::new("notify.sock"))),
    ];
    for (dir, umid, notify) in bad {
        let env = ArgvEnv {
            uml_dir: dir,
            umid,
            notify_socket: *notify,
            hostfs_root: None,
            line_fds: &[],
        };
        let e = argv::build(&def, &env).expect_err(umid);
        assert_eq!(e.vir_code(), domain::VIR_ERR_INTERNAL_ERROR, "{e}");
    }
    let env = ArgvEnv {
        uml_dir: ok_dir,
        umid: &"u".repeat(63),
        notify_socket: None,
        hostfs_root: None,
        line_fds: &[],
    };
    assert!(argv::build(&def, &env).is_ok());
}

#[test]
fn definition_is_revalidated() {
    // A definition edited in memory after parsing is checked again before it becomes argv.
    let mut def = domain::parse(SEED).expect("seed");
    def.disks[0].source = PathBuf::from("/srv/a:b");
    let env = ArgvEnv {
        uml_dir: Path::new("/run/virtumld/uml"),
        umid: "demo",
        notify_socket: None,
        hostfs_root: None,
        line_fds: &[],
    };
    let e = argv::build(&def, &env).expect_err("cow separator");
    assert_eq!(e.vir_code(), domain::VIR_ERR_CONFIG_UNSUPPORTED);
}

#[test]
fn command_line_must_fit_umls_buffer() {
    let long_path = format!("/srv/{}", "p".repeat(1000));
    let disks: String = (0..4)
        .map(|i| format!("<disk><source file='{long_path}{i}'/><target dev='ubd{i}'/></disk>"))
        .collect();
    let xml = SEED.replace(
        "<console type='pty'/>",
        &format!("<console type='pty'/>{disks}"),
    );
    let xml = xml.replace(
        "<disk type='file' device='disk'>\n      <source file='/home/berrange/FedoraCore6-AMD64-root_fs'/>\n      <target dev='ubd0' bus='uml'/>\n    </disk>\n",
        "",
    );
    let e = build_for(&xml, true).expect_err("too long");
    assert_eq!(e.vir_code(), domain::VIR_ERR_CONFIG_UNSUPPORTED);
    assert!(e.to_string().contains("at most 4095"), "{e}");
    let three = xml.replace(
        &format!("<disk><source file='{long_path}3'/><target dev='ubd3'/></disk>"),
        "",
    );
    assert!(build_for(&three, true).is_ok());
}
