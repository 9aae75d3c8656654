//! `DomainDef` → the `linux.uml` command line. Pure: no files are opened, nothing is run.
//!
//! Order (uml-backend.md §3.1, with the fixes §7–§9 call for), one argv word each:
//! 1. argv[0]: `<os><kernel>`
//! 2. `mem=<currentMemory>K`
//! 3. `umid=<umid>`, `uml_dir=<dir>`: chosen by the daemon, never taken from the XML
//! 4. `mconsole=notify:<socket>` when the daemon wants the readiness datagram
//! 5. `noreboot`, always: a guest reboot then ends the process and the daemon applies
//!    `on_reboot` itself, instead of UML silently rebooting in place (§4.10)
//! 6. `root=<os/root>` when set; without it UML mounts `98:0`, i.e. ubd0 (`/dev/ubda`)
//! 7. `ubd<N>[r][c]=<source>` per disk in XML order: `r` read-only, `c` shared (no locking)
//! 8. `con=null ssl=null`: every line defaults to null (UML's own default would be stdio or
//!    an xterm), then `con<port>=…` for each console and `ssl<port>=…` for each serial, by
//!    port; the channel is `pts` or `null` (`CharDev::uml_channel`)
//! 9. `initrd=<path>` when set (the old driver parsed it and dropped it)
//! 10. the `<cmdline>` words, last, split as the kernel splits (`split_cmdline`)
//!
//! UML joins argv[1..] into the kernel command line with spaces and gives up past 4095 bytes;
//! `build` refuses what would not fit.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::domain::{argv_safe, CharDev, CharFamily, DefError, DomainDef};

/// UML's `COMMAND_LINE_SIZE` is 4096 bytes, NUL included.
pub const MAX_COMMAND_LINE: usize = 4095;
/// UML's umid buffer is 64 bytes, NUL included.
pub const MAX_UMID_BYTES: usize = 63;
/// `sun_path` holds 108 bytes, NUL included; UML binds `<uml_dir>/<umid>/mconsole`.
const MAX_SOCKET_PATH: usize = 107;

/// What the daemon decides about a run, as opposed to what the XML says.
#[derive(Debug, Clone, Copy)]
pub struct ArgvEnv<'a> {
    /// UML's `uml_dir`: the per-guest `<umid>/` directory (pid file, mconsole socket) goes here.
    pub uml_dir: &'a Path,
    /// UML's `umid`: at most 63 bytes, no `/`, not starting with `.`.
    pub umid: &'a str,
    /// Datagram socket for `mconsole=notify:`.
    pub notify_socket: Option<&'a Path>,
    /// `hostfs=`: the only host directory the guest's hostfs may mount from. Without it a
    /// guest's root can `mount -t hostfs` the whole host filesystem as the UML process's
    /// user (root, in system mode); an empty directory shuts that door.
    pub hostfs_root: Option<&'a Path>,
    /// Lines the daemon connects to a pty it created: UML device (`con0`, `ssl1`) → the
    /// file descriptor the guest process inherits for it (`con0=fd:3`). Other pts lines
    /// get a pty UML creates itself.
    pub line_fds: &'a [(String, i32)],
}

/// The full argv; argv[0] is the kernel path, to be executed as the program.
pub fn build(def: &DomainDef, env: &ArgvEnv) -> Result<Vec<OsString>, DefError> {
    def.validate()?;
    check_env(env)?;

    let mut argv: Vec<OsString> = vec![def.os.kernel.clone().into_os_string()];
    argv.push(format!("mem={}K", def.current_memory_kib).into());
    argv.push(format!("umid={}", env.umid).into());
    argv.push(joined("uml_dir=", env.uml_dir));
    if let Some(sock) = env.notify_socket {
        argv.push(joined("mconsole=notify:", sock));
    }
    argv.push("noreboot".into());
    if let Some(dir) = env.hostfs_root {
        argv.push(joined("hostfs=", dir));
    }
    if let Some(root) = &def.os.root {
        argv.push(format!("root={root}").into());
    }
    for d in &def.disks {
        let idx = d.ubd_index().ok_or_else(|| {
            DefError::Unsupported(format!("disk target '{}' is not a ubd device", d.target))
        })?;
        let mut key = format!("ubd{idx}");
        if d.readonly {
            key.push('r');
        }
        if d.shareable {
            key.push('c');
        }
        key.push('=');
        argv.push(joined(&key, &d.source));
    }
    argv.push("con=null".into());
    argv.push("ssl=null".into());
    push_lines(&mut argv, CharFamily::Console, &def.consoles, env.line_fds);
    push_lines(&mut argv, CharFamily::Serial, &def.serials, env.line_fds);
    if let Some(initrd) = &def.os.initrd {
        argv.push(joined("initrd=", initrd));
    }
    if let Some(cmdline) = &def.os.cmdline {
        argv.extend(split_cmdline(cmdline).into_iter().map(OsString::from));
    }

    let len: usize = argv.iter().skip(1).map(|w| w.len() + 1).sum::<usize>();
    let len = len.saturating_sub(1);
    if len > MAX_COMMAND_LINE {
        return Err(DefError::Unsupported(format!(
            "the UML kernel command line would be {len} bytes, UML accepts at most \
             {MAX_COMMAND_LINE}: shorten paths or <cmdline>"
        )));
    }
    Ok(argv)
}

fn joined(prefix: &str, p: &Path) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(p.as_os_str());
    s
}

fn push_lines(
    argv: &mut Vec<OsString>,
    fam: CharFamily,
    list: &[CharDev],
    line_fds: &[(String, i32)],
) {
    let mut sorted: Vec<&CharDev> = list.iter().collect();
    sorted.sort_by_key(|c| c.target_port);
    for c in sorted {
        let dev = format!("{}{}", fam.uml_prefix(), c.target_port);
        let channel = match line_fds.iter().find(|(d, _)| *d == dev) {
            Some((_, fd)) if c.uml_channel() == "pts" => format!("fd:{fd}"),
            _ => c.uml_channel().to_string(),
        };
        argv.push(format!("{dev}={channel}").into());
    }
}

fn check_env(env: &ArgvEnv) -> Result<(), DefError> {
    let u = env.umid;
    if u.is_empty()
        || u.len() > MAX_UMID_BYTES
        || u.contains('/')
        || u.starts_with('.')
        || !argv_safe(u.as_bytes())
        || u.contains(',')
    {
        return Err(DefError::Internal(format!("unusable UML umid '{u}'")));
    }
    let dir = env.uml_dir.as_os_str().as_bytes();
    if !dir.starts_with(b"/") || !argv_safe(dir) {
        return Err(DefError::Internal(format!(
            "unusable uml_dir '{}'",
            env.uml_dir.display()
        )));
    }
    let mconsole_len = dir.len() + 1 + u.len() + "/mconsole".len();
    if mconsole_len > MAX_SOCKET_PATH {
        return Err(DefError::Internal(format!(
            "the mconsole socket path under '{}' would be {mconsole_len} bytes, more than a \
             unix socket address holds ({MAX_SOCKET_PATH})",
            env.uml_dir.display()
        )));
    }
    if let Some(sock) = env.notify_socket {
        let b = sock.as_os_str().as_bytes();
        if !b.starts_with(b"/") || !argv_safe(b) || b.len() > MAX_SOCKET_PATH {
            return Err(DefError::Internal(format!(
                "unusable mconsole notify socket '{}'",
                sock.display()
            )));
        }
    }
    Ok(())
}

/// Splits `<cmdline>` as the kernel does: on runs of ASCII whitespace, except inside double
/// quotes, which stay in the word. Each word becomes one argv word; UML rejoins them with single
/// spaces, so the guest kernel sees the same parameters.
pub fn split_cmdline(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        if c == '"' {
            quoted = !quoted;
            cur.push(c);
        } else if c.is_ascii_whitespace() && !quoted {
            if !cur.is_empty() {
                words.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

/// Why a `<cmdline>` word may not be passed, if it is one UML itself consumes on the host:
/// those would override what the daemon set (umid, uml_dir, memory, devices) or reach host
/// resources the XML does not describe (files, sockets, programs, network transports).
pub fn reserved_cmdline_word(word: &str) -> Option<&'static str> {
    const EXACT_PREFIXES: &[(&str, &str)] = &[
        ("mem=", "set <currentMemory> instead"),
        ("umid=", "the daemon chooses the umid"),
        ("uml_dir=", "the daemon chooses uml_dir"),
        ("mconsole=", "the daemon owns the management console"),
        ("initrd=", "set <os><initrd> instead"),
        ("iomem=", "it maps a host file into the guest"),
        ("xterm=", "it runs a host program"),
        (
            "hostfs=",
            "host filesystem access is the daemon's to configure",
        ),
        ("virtio_uml.", "it connects host vhost-user sockets"),
        ("con=", "define <console> devices instead"),
        ("ssl=", "define <serial> devices instead"),
        ("ubd", "define <disk> devices instead"),
        ("--", "it is a UML host switch"),
    ];
    for (prefix, why) in EXACT_PREFIXES {
        if word.starts_with(prefix) {
            return Some(why);
        }
    }
    // UML matches these as a prefix followed by a line or interface number.
    const NUMBERED: &[(&str, &str)] = &[
        ("con", "define <console> devices instead"),
        ("ssl", "define <serial> devices instead"),
        (
            "eth",
            "network interfaces are not supported by the UML driver",
        ),
        (
            "vec",
            "network interfaces are not supported by the UML driver",
        ),
    ];
    for (prefix, why) in NUMBERED {
        if let Some(rest) = word.strip_prefix(prefix) {
            if rest.starts_with(|c: char| c.is_ascii_digit()) {
                return Some(why);
            }
        }
    }
    None
}

/// Checks a `<cmdline>` value: no control characters other than whitespace, no word UML would
/// take as a host option (`reserved_cmdline_word`), and short enough to fit the kernel's buffer.
pub fn check_cmdline(cmdline: &str) -> Result<(), DefError> {
    if cmdline
        .chars()
        .any(|c| c.is_control() && !c.is_ascii_whitespace())
    {
        return Err(DefError::Xml(
            "<cmdline> contains control characters".into(),
        ));
    }
    if cmdline.len() > MAX_COMMAND_LINE {
        return Err(DefError::Unsupported(format!(
            "<cmdline> is {} bytes, UML accepts at most {MAX_COMMAND_LINE}",
            cmdline.len()
        )));
    }
    for w in split_cmdline(cmdline) {
        if let Some(why) = reserved_cmdline_word(&w) {
            return Err(DefError::Unsupported(format!(
                "<cmdline> word '{w}' is a UML host option the UML driver does not pass \
                 through: {why}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_like_the_kernel() {
        assert_eq!(
            split_cmdline("  init=/init  quiet \"x=a b\"\tro\n"),
            vec!["init=/init", "quiet", "\"x=a b\"", "ro"]
        );
        assert_eq!(split_cmdline(""), Vec::<String>::new());
        assert_eq!(split_cmdline("a=\"1 2\"x y"), vec!["a=\"1 2\"x", "y"]);
        // An unterminated quote runs to the end, as in the kernel.
        assert_eq!(split_cmdline("a \"b c"), vec!["a", "\"b c"]);
    }

    #[test]
    fn reserved_words() {
        for w in [
            "mem=64M",
            "umid=x",
            "uml_dir=/tmp",
            "mconsole=notify:/x",
            "initrd=/x",
            "iomem=a,/f",
            "xterm=xterm,-T,-e",
            "hostfs=/",
            "virtio_uml.device=/s:1",
            "con=pts",
            "con0=fd:0,fd:1",
            "ssl=pts",
            "ssl3=port:23",
            "eth0=slirp",
            "vec0:transport=tap",
            "ubd0=/etc/shadow",
            "ubda=/x",
            "--help",
            "--showconfig",
        ] {
            assert!(reserved_cmdline_word(w).is_some(), "{w}");
            assert_eq!(
                check_cmdline(&format!("quiet {w}")).map_err(|e| e.vir_code()),
                Err(crate::domain::VIR_ERR_CONFIG_UNSUPPORTED),
                "{w}"
            );
        }
        for w in [
            "console=ttyS0",
            "ssl-non-raw",
            "init=/init",
            "root=/dev/ubdb",
            "quiet",
            "ro",
            "ethtool",
            "memmap",
            "\"umid=x\"",
            "noreboot",
        ] {
            assert_eq!(reserved_cmdline_word(w), None, "{w}");
        }
        assert!(check_cmdline("init=/bin/sh\x07").is_err());
        assert!(check_cmdline(&"a ".repeat(3000)).is_err());
    }
}
