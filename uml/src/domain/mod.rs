//! The domain definition (`DomainDef`), parsed from and formatted to libvirt domain XML.
//!
//! Only what a UML guest can honour is accepted; everything else is refused with
//! `VIR_ERR_CONFIG_UNSUPPORTED` naming the element, never silently dropped (the old driver
//! ignored whatever its command-line builder did not look at, uml-backend.md §2, §7).
//!
//! Layout: `tree` reads XML under hard limits, `parse` maps the tree to a `DomainDef`,
//! `DomainDef::validate` checks the semantic rules (also for definitions the daemon edits in
//! memory), `format` writes the normalised libvirt-style XML back.
//!
//! Decisions the daemon relies on:
//! - consoles (`<console>`, UML `conN`) and serial lines (`<serial>`, UML `sslN`) are
//!   independent families, each with ports 0–15; libvirt's "the first console duplicates
//!   serial0" convention is not implemented, and a console with `<target type='serial'>` is
//!   refused (it could only mean that convention);
//! - aliases follow libvirt: `console<i>` and `serial<i>` by position in their list
//!   (`DomainDef::console_aliases`);
//! - a `file` console/serial, or one with `<log>`, is backed by a UML `pts` line that the daemon
//!   pumps (UML has no file output channel): see `CharDev::uml_channel`; a `file` source is
//!   truncated at start (libvirt's default without `append`), a `<log>` is appended to only
//!   with `append='on'`;
//! - accepted and not stored, because they state what UML does anyway: `<clock offset='utc'/>`,
//!   `<pm>` with suspend disabled, an empty `<features/>`, `<seclabel type='none'/>`,
//!   `<memballoon model='none'/>`, `<alias>` elements, an empty `<backingStore/>`, the live-only
//!   `id`, `tty` and pty `<source path>`; `xmlns` declarations are ignored.

mod error;
mod format;
mod parse;
mod tree;

#[cfg(test)]
mod tests;

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub use error::{
    DefError, VIR_ERR_CONFIG_UNSUPPORTED, VIR_ERR_INTERNAL_ERROR, VIR_ERR_INVALID_ARG,
    VIR_ERR_NO_NAME, VIR_ERR_XML_DETAIL, VIR_ERR_XML_ERROR,
};
pub use format::esc_attr as xml_escape;
pub use parse::parse;
pub use tree::{MAX_XML_BYTES, MAX_XML_DEPTH, MAX_XML_ELEMENTS};

/// Longest domain name, in bytes. The name becomes file names (`<name>.xml`, `<name>.log`,
/// well under the 255-byte component limit) and appears in paths and log lines; 100 leaves room
/// for suffixes and keeps those paths short. (It is not the UML umid: that one is at most 63
/// bytes and is chosen by the daemon, see `crate::argv::ArgvEnv`.)
pub const MAX_NAME_BYTES: usize = 100;
/// UML's ubd driver has devices 0–7 (`linux.uml --help`).
pub const MAX_DISKS: u32 = 8;
/// Console and serial ports per family: the range the old driver used for `conN`/`sslN`.
pub const MAX_CHAR_PORTS: u32 = 16;

/// A domain definition the UML driver can run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainDef {
    pub name: String,
    pub uuid: [u8; 16],
    pub title: Option<String>,
    pub description: Option<String>,
    /// Inner XML of `<metadata>`, kept verbatim; must stay a well-formed XML fragment.
    pub metadata: Option<String>,
    /// `<memory>`, KiB.
    pub memory_kib: u64,
    /// `<currentMemory>`, KiB; at most `memory_kib`. This is what the guest gets (`mem=`).
    pub current_memory_kib: u64,
    /// Always 1: the UML kernel is uniprocessor (`NR_CPUS=1`).
    pub vcpus: u32,
    pub os: OsDef,
    pub on_poweroff: LifecycleAction,
    pub on_reboot: LifecycleAction,
    pub on_crash: LifecycleAction,
    /// `<emulator>`: kept and shown, not used (the program run is `<os><kernel>`).
    pub emulator: Option<PathBuf>,
    pub disks: Vec<DiskDef>,
    pub consoles: Vec<CharDev>,
    pub serials: Vec<CharDev>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsDef {
    /// libvirt arch name; always the host's (`host_arch`).
    pub arch: String,
    /// The UML kernel binary: argv[0].
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    /// `root=` for the guest kernel. Without it UML mounts `98:0`, i.e. ubd0.
    pub root: Option<String>,
}

/// `on_poweroff`, `on_reboot`, `on_crash`. Only `Destroy` and `Restart` pass validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleAction {
    Destroy,
    Restart,
    Preserve,
    RenameRestart,
}

impl LifecycleAction {
    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleAction::Destroy => "destroy",
            LifecycleAction::Restart => "restart",
            LifecycleAction::Preserve => "preserve",
            LifecycleAction::RenameRestart => "rename-restart",
        }
    }

    pub fn from_libvirt(s: &str) -> Option<Self> {
        match s {
            "destroy" => Some(LifecycleAction::Destroy),
            "restart" => Some(LifecycleAction::Restart),
            "preserve" => Some(LifecycleAction::Preserve),
            "rename-restart" => Some(LifecycleAction::RenameRestart),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskKind {
    /// `<disk type='file'>`, `<source file=…>`
    File,
    /// `<disk type='block'>`, `<source dev=…>`
    Block,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskDef {
    pub kind: DiskKind,
    pub source: PathBuf,
    /// As written: `ubd0`–`ubd7` or `ubda`–`ubdh` (UML accepts both); see `ubd_index`.
    pub target: String,
    /// UML flag `r`.
    pub readonly: bool,
    /// UML flag `c`: no host file locking, for images shared between guests.
    pub shareable: bool,
}

impl DiskDef {
    /// The ubd unit (0–7) of the target, if it names one.
    pub fn ubd_index(&self) -> Option<u32> {
        ubd_index(&self.target)
    }
}

/// Unit number of a ubd target name: `ubd0`–`ubd7` or `ubda`–`ubdh`.
pub fn ubd_index(target: &str) -> Option<u32> {
    let rest = target.strip_prefix("ubd")?;
    let mut chars = rest.chars();
    let c = chars.next()?;
    if chars.next().is_some() {
        return None;
    }
    let n = match c {
        '0'..='7' => c as u32 - '0' as u32,
        'a'..='h' => c as u32 - 'a' as u32,
        _ => return None,
    };
    Some(n)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CharKind {
    Pty,
    Null,
    /// Output written to this host file (by the daemon's console pump), input none.
    File(PathBuf),
}

impl CharKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            CharKind::Pty => "pty",
            CharKind::Null => "null",
            CharKind::File(_) => "file",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CharLog {
    pub file: PathBuf,
    pub append: bool,
}

/// A `<console>` (UML `con<port>`) or `<serial>` (UML `ssl<port>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CharDev {
    pub kind: CharKind,
    pub target_port: u32,
    pub log: Option<CharLog>,
}

impl CharDev {
    /// The UML channel for this line. UML cannot write to a file itself, so whenever the daemon
    /// has to see the output (a pty to hand out, a `file` target, a `<log>`), the line is a host
    /// pts that the daemon's console pump reads; only a plain null line is `null`.
    pub fn uml_channel(&self) -> &'static str {
        match (&self.kind, &self.log) {
            (CharKind::Null, None) => "null",
            _ => "pts",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CharFamily {
    Console,
    Serial,
}

impl CharFamily {
    /// UML's device name prefix: `con` or `ssl`.
    pub fn uml_prefix(self) -> &'static str {
        match self {
            CharFamily::Console => "con",
            CharFamily::Serial => "ssl",
        }
    }

    /// libvirt's alias prefix and element name: `console` or `serial`.
    pub fn libvirt_name(self) -> &'static str {
        match self {
            CharFamily::Console => "console",
            CharFamily::Serial => "serial",
        }
    }
}

/// One console or serial line as clients and UML name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleAlias {
    /// libvirt alias, what `virDomainOpenConsole` receives as `dev_name`: `console0`, `serial0`.
    pub alias: String,
    /// UML device, what mconsole `config` takes: `con0`, `ssl0`.
    pub uml_device: String,
    pub family: CharFamily,
    /// Position in `DomainDef::consoles` or `DomainDef::serials`.
    pub index: usize,
}

/// What only a running guest adds to its XML.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LiveXml {
    pub id: i32,
    /// PTY path of each line whose pts is known, by alias (`console0` → `/dev/pts/3`).
    pub pty_paths: Vec<(String, PathBuf)>,
}

impl DomainDef {
    /// libvirt-style XML; `live` adds the domain id, pty paths and device aliases.
    pub fn to_xml(&self, live: Option<&LiveXml>) -> String {
        format::to_xml(self, live)
    }

    /// Every console then every serial, with libvirt's alias and UML's device name.
    pub fn console_aliases(&self) -> Vec<ConsoleAlias> {
        let fam = |family: CharFamily, list: &[CharDev]| -> Vec<ConsoleAlias> {
            list.iter()
                .enumerate()
                .map(|(index, c)| ConsoleAlias {
                    alias: format!("{}{index}", family.libvirt_name()),
                    uml_device: format!("{}{}", family.uml_prefix(), c.target_port),
                    family,
                    index,
                })
                .collect()
        };
        let mut all = fam(CharFamily::Console, &self.consoles);
        all.extend(fam(CharFamily::Serial, &self.serials));
        all
    }

    /// The line `virDomainOpenConsole` means: the alias given, or without one the first console,
    /// else the first serial (libvirt's rule).
    pub fn find_console(&self, dev_name: Option<&str>) -> Option<ConsoleAlias> {
        let all = self.console_aliases();
        match dev_name {
            Some(name) => all.into_iter().find(|a| a.alias == name),
            None => all.into_iter().next(),
        }
    }

    /// The device behind an alias from `console_aliases`.
    pub fn char_dev(&self, alias: &ConsoleAlias) -> Option<&CharDev> {
        match alias.family {
            CharFamily::Console => self.consoles.get(alias.index),
            CharFamily::Serial => self.serials.get(alias.index),
        }
    }

    /// Checks every rule a definition must satisfy. `parse` runs it; run it again after
    /// editing a definition in memory (e.g. memory changes) before saving or starting it.
    pub fn validate(&self) -> Result<(), DefError> {
        validate_name(&self.name)?;
        if let Some(t) = &self.title {
            if t.contains('\n') {
                return Err(DefError::Xml("Domain title can't contain newlines".into()));
            }
        }
        if let Some(m) = &self.metadata {
            parse::check_metadata_fragment(m)?;
        }
        if self.memory_kib == 0 {
            return Err(DefError::Xml(
                "Memory size must be specified via <memory>".into(),
            ));
        }
        if self.current_memory_kib == 0 {
            return Err(DefError::Xml("<currentMemory> must not be 0".into()));
        }
        if self.current_memory_kib > self.memory_kib {
            return Err(DefError::Xml(format!(
                "<currentMemory> ({} KiB) must not exceed <memory> ({} KiB)",
                self.current_memory_kib, self.memory_kib
            )));
        }
        if self.vcpus == 0 {
            return Err(DefError::Xml("<vcpu> must be at least 1".into()));
        }
        if self.vcpus > 1 {
            return Err(DefError::Unsupported(format!(
                "{} vCPUs requested, but the UML kernel is uniprocessor (NR_CPUS=1): <vcpu> \
                 must be 1",
                self.vcpus
            )));
        }
        self.validate_os()?;
        for (what, action) in [
            ("on_poweroff", self.on_poweroff),
            ("on_reboot", self.on_reboot),
            ("on_crash", self.on_crash),
        ] {
            if !matches!(action, LifecycleAction::Destroy | LifecycleAction::Restart) {
                return Err(DefError::Unsupported(format!(
                    "<{what}> action '{}' is not supported by the UML driver (only destroy \
                     and restart)",
                    action.as_str()
                )));
            }
        }
        if let Some(e) = &self.emulator {
            check_abs_path("<emulator>", e)?;
        }
        self.validate_disks()?;
        validate_chars(CharFamily::Console, &self.consoles)?;
        validate_chars(CharFamily::Serial, &self.serials)?;
        Ok(())
    }

    fn validate_os(&self) -> Result<(), DefError> {
        if self.os.arch != host_arch() {
            return Err(DefError::InvalidArg(format!(
                "could not find capabilities for ostype=uml arch={}",
                self.os.arch
            )));
        }
        if self.os.kernel.as_os_str().is_empty() {
            return Err(DefError::Xml(
                "no kernel specified: the UML driver needs <os><kernel>".into(),
            ));
        }
        check_abs_path("<kernel>", &self.os.kernel)?;
        if let Some(p) = &self.os.initrd {
            check_argv_path("<initrd>", p)?;
        }
        if let Some(r) = &self.os.root {
            if r.is_empty() || !argv_safe(r.as_bytes()) {
                return Err(DefError::Unsupported(format!(
                    "<root> '{r}' cannot be passed to UML: no spaces, quotes or control \
                     characters"
                )));
            }
        }
        if let Some(c) = &self.os.cmdline {
            crate::argv::check_cmdline(c)?;
        }
        Ok(())
    }

    fn validate_disks(&self) -> Result<(), DefError> {
        if self.disks.len() > MAX_DISKS as usize {
            return Err(DefError::Unsupported(format!(
                "{} disks defined, but UML has only {MAX_DISKS} ubd devices",
                self.disks.len()
            )));
        }
        let mut seen = [false; MAX_DISKS as usize];
        for d in &self.disks {
            let Some(idx) = d.ubd_index() else {
                return Err(DefError::Unsupported(format!(
                    "disk target '{}' is not supported by the UML driver: use ubd0..ubd7",
                    d.target
                )));
            };
            let Some(slot) = seen.get_mut(idx as usize) else {
                return Err(DefError::Unsupported(format!(
                    "disk target '{}' is out of range",
                    d.target
                )));
            };
            if *slot {
                return Err(DefError::Xml(format!(
                    "target '{}' duplicates another disk's target (ubd{idx})",
                    d.target
                )));
            }
            *slot = true;
            check_argv_path("disk <source>", &d.source)?;
            let bytes = d.source.as_os_str().as_bytes();
            if bytes.contains(&b',') || bytes.contains(&b':') {
                return Err(DefError::Unsupported(format!(
                    "disk source '{}' cannot be passed to UML: ',' and ':' separate COW files \
                     in ubd arguments",
                    d.source.display()
                )));
            }
        }
        Ok(())
    }
}

fn validate_chars(family: CharFamily, list: &[CharDev]) -> Result<(), DefError> {
    let el = family.libvirt_name();
    let mut seen = [false; MAX_CHAR_PORTS as usize];
    for c in list {
        let Some(slot) = seen.get_mut(c.target_port as usize) else {
            return Err(DefError::Unsupported(format!(
                "<{el}> target port {} is not supported by the UML driver (ports 0..{})",
                c.target_port,
                MAX_CHAR_PORTS - 1
            )));
        };
        if *slot {
            return Err(DefError::Xml(format!(
                "two <{el}> devices use target port {}",
                c.target_port
            )));
        }
        *slot = true;
        if let CharKind::File(p) = &c.kind {
            check_abs_path(&format!("<{el}> source path"), p)?;
        }
        if let Some(log) = &c.log {
            check_abs_path(&format!("<{el}> log file"), &log.file)?;
        }
    }
    Ok(())
}

/// Checks a domain name: it names files and directories, so no `/`, no leading `.`, no
/// control characters, and at most `MAX_NAME_BYTES` bytes.
pub fn validate_name(name: &str) -> Result<(), DefError> {
    if name.is_empty() {
        return Err(DefError::NoName);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(DefError::Xml(format!(
            "name is {} bytes long, at most {MAX_NAME_BYTES} are accepted",
            name.len()
        )));
    }
    if name.contains('/') {
        return Err(DefError::Xml(format!("name {name} cannot contain '/'")));
    }
    if name.starts_with('.') {
        return Err(DefError::Xml(format!("name {name} cannot start with '.'")));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(DefError::Xml(format!(
            "invalid char in name: 0x{:02x}",
            c as u32
        )));
    }
    Ok(())
}

/// libvirt's arch name for the host, the only arch a UML guest can have.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86" => "i686",
        other => other,
    }
}

/// Lowercase `8-4-4-4-12` form.
pub fn uuid_to_string(u: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Parses a UUID as libvirt does: 32 hex digits, dashes allowed between them, surrounding
/// whitespace ignored.
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    let mut n = 0usize;
    let s = s.trim();
    if s.starts_with('-') || s.ends_with('-') {
        return None;
    }
    for c in s.chars() {
        if c == '-' {
            continue;
        }
        let v = c.to_digit(16)? as u8;
        let byte = out.get_mut(n / 2)?;
        *byte = if n.is_multiple_of(2) {
            v << 4
        } else {
            *byte | v
        };
        n += 1;
    }
    (n == 32).then_some(out)
}

/// A random (version 4) UUID from the kernel's generator.
pub fn generate_uuid() -> Result<[u8; 16], DefError> {
    use std::io::Read;
    let mut u = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut u))
        .map_err(|e| DefError::Internal(format!("unable to generate uuid: {e}")))?;
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    Ok(u)
}

/// Bytes that can sit in one UML argv word: UML joins its argv into the kernel command line
/// with spaces, so whitespace or a quote would split or re-quote the word there.
pub(crate) fn argv_safe(bytes: &[u8]) -> bool {
    !bytes
        .iter()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || *b == b'"' || *b == 0x0b)
}

fn check_abs_path(what: &str, p: &Path) -> Result<(), DefError> {
    let b = p.as_os_str().as_bytes();
    if !b.starts_with(b"/") {
        return Err(DefError::Xml(format!(
            "{what} '{}' must be an absolute path",
            p.display()
        )));
    }
    if b.iter().any(|c| c.is_ascii_control()) {
        return Err(DefError::Xml(format!(
            "{what} '{}' contains control characters",
            p.display()
        )));
    }
    Ok(())
}

fn check_argv_path(what: &str, p: &Path) -> Result<(), DefError> {
    check_abs_path(what, p)?;
    if !argv_safe(p.as_os_str().as_bytes()) {
        return Err(DefError::Unsupported(format!(
            "{what} '{}' cannot be passed to UML: no spaces or quotes in paths",
            p.display()
        )));
    }
    Ok(())
}
