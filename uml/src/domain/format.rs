//! `DomainDef` → libvirt-style XML: two-space indent, single-quoted attributes, libvirt's
//! element order, every default written out. Parsing the output gives back an equal
//! `DomainDef` (tested).

use std::fmt::Write as _;
use std::path::Path;

use super::{uuid_to_string, CharDev, CharFamily, CharKind, DiskKind, DomainDef, LiveXml};

pub(super) fn to_xml(def: &DomainDef, live: Option<&LiveXml>) -> String {
    let mut o = String::with_capacity(2048);
    o.push_str("<domain type='uml'");
    if let Some(l) = live {
        let _ = write!(o, " id='{}'", l.id);
    }
    o.push_str(">\n");
    text_el(&mut o, 1, "name", "", &def.name);
    text_el(&mut o, 1, "uuid", "", &uuid_to_string(&def.uuid));
    if let Some(t) = &def.title {
        text_el(&mut o, 1, "title", "", t);
    }
    if let Some(d) = &def.description {
        text_el(&mut o, 1, "description", "", d);
    }
    if let Some(m) = &def.metadata {
        // Verbatim: validated as a well-formed fragment on the way in.
        let _ = writeln!(o, "  <metadata>{m}</metadata>");
    }
    let _ = writeln!(o, "  <memory unit='KiB'>{}</memory>", def.memory_kib);
    let _ = writeln!(
        o,
        "  <currentMemory unit='KiB'>{}</currentMemory>",
        def.current_memory_kib
    );
    let _ = writeln!(o, "  <vcpu placement='static'>{}</vcpu>", def.vcpus);
    o.push_str("  <os>\n");
    let attrs = format!(" arch='{}'", esc_attr(&def.os.arch));
    text_el(&mut o, 2, "type", &attrs, "uml");
    text_el(&mut o, 2, "kernel", "", &path_str(&def.os.kernel));
    if let Some(p) = &def.os.initrd {
        text_el(&mut o, 2, "initrd", "", &path_str(p));
    }
    if let Some(c) = &def.os.cmdline {
        text_el(&mut o, 2, "cmdline", "", c);
    }
    if let Some(r) = &def.os.root {
        text_el(&mut o, 2, "root", "", r);
    }
    o.push_str("  </os>\n");
    text_el(&mut o, 1, "on_poweroff", "", def.on_poweroff.as_str());
    text_el(&mut o, 1, "on_reboot", "", def.on_reboot.as_str());
    text_el(&mut o, 1, "on_crash", "", def.on_crash.as_str());

    o.push_str("  <devices>\n");
    if let Some(e) = &def.emulator {
        text_el(&mut o, 2, "emulator", "", &path_str(e));
    }
    for d in &def.disks {
        let (ty, key) = match d.kind {
            DiskKind::File => ("file", "file"),
            DiskKind::Block => ("block", "dev"),
        };
        let _ = writeln!(o, "    <disk type='{ty}' device='disk'>");
        o.push_str("      <driver type='raw'/>\n");
        let _ = writeln!(
            o,
            "      <source {key}='{}'/>",
            esc_attr(&path_str(&d.source))
        );
        let _ = writeln!(o, "      <target dev='{}' bus='uml'/>", esc_attr(&d.target));
        if d.readonly {
            o.push_str("      <readonly/>\n");
        }
        if d.shareable {
            o.push_str("      <shareable/>\n");
        }
        o.push_str("    </disk>\n");
    }
    // libvirt writes serials before consoles.
    for (i, c) in def.serials.iter().enumerate() {
        chardev(&mut o, CharFamily::Serial, i, c, live);
    }
    for (i, c) in def.consoles.iter().enumerate() {
        chardev(&mut o, CharFamily::Console, i, c, live);
    }
    o.push_str("  </devices>\n");
    o.push_str("</domain>\n");
    o
}

fn chardev(o: &mut String, fam: CharFamily, index: usize, c: &CharDev, live: Option<&LiveXml>) {
    let el = fam.libvirt_name();
    let alias = format!("{el}{index}");
    let pty_path = match (&c.kind, live) {
        (CharKind::Pty, Some(l)) => l
            .pty_paths
            .iter()
            .find(|(a, _)| *a == alias)
            .map(|(_, p)| path_str(p)),
        _ => None,
    };
    let _ = write!(o, "    <{el} type='{}'", c.kind.as_str());
    // libvirt repeats the first console's live pty path as `tty`, for old clients.
    if fam == CharFamily::Console && c.target_port == 0 {
        if let Some(p) = &pty_path {
            let _ = write!(o, " tty='{}'", esc_attr(p));
        }
    }
    o.push_str(">\n");
    let source = match &c.kind {
        CharKind::File(p) => Some(path_str(p)),
        CharKind::Pty => pty_path,
        CharKind::Null => None,
    };
    if let Some(p) = source {
        let _ = writeln!(o, "      <source path='{}'/>", esc_attr(&p));
    }
    if let Some(log) = &c.log {
        let _ = write!(o, "      <log file='{}'", esc_attr(&path_str(&log.file)));
        if log.append {
            o.push_str(" append='on'");
        }
        o.push_str("/>\n");
    }
    match fam {
        CharFamily::Console => {
            let _ = writeln!(o, "      <target type='uml' port='{}'/>", c.target_port);
        }
        CharFamily::Serial => {
            let _ = writeln!(o, "      <target port='{}'/>", c.target_port);
        }
    }
    if live.is_some() {
        let _ = writeln!(o, "      <alias name='{alias}'/>");
    }
    let _ = writeln!(o, "    </{el}>");
}

fn text_el(o: &mut String, depth: usize, name: &str, attrs: &str, text: &str) {
    for _ in 0..depth {
        o.push_str("  ");
    }
    let _ = writeln!(o, "<{name}{attrs}>{}</{name}>", esc_text(text));
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Character data: markup characters, plus `\r` (a parser would fold it into `\n`) and any
/// other control character as a reference.
pub(crate) fn esc_text(s: &str) -> String {
    escape(s, false)
}

/// Attribute values (single-quoted): also quotes, and whitespace controls as references so that
/// attribute normalisation on the way back in does not turn them into spaces.
pub fn esc_attr(s: &str) -> String {
    escape(s, true)
}

/// Copies `s` in runs between the characters that need a reference: descriptions and
/// metadata can be a megabyte, and a push per character made formatting one take tens of
/// milliseconds.
fn escape(s: &str, attr: bool) -> String {
    let mut out = String::with_capacity(s.len());
    let mut run = 0;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        // Every character that may need a reference starts with one of these bytes: ASCII
        // markup and controls, or 0xC2 (U+0080..U+00BF, which holds the C1 controls).
        let candidate = matches!(
            b,
            b'&' | b'<' | b'>' | b'\'' | b'"' | 0..=0x1f | 0x7f | 0xc2
        );
        if !candidate {
            i += 1;
            continue;
        }
        let c = s[i..].chars().next().unwrap_or('\0');
        let len = c.len_utf8();
        let reference: Option<std::borrow::Cow<'static, str>> = match c {
            '&' => Some("&amp;".into()),
            '<' => Some("&lt;".into()),
            '>' => Some("&gt;".into()),
            '\'' if attr => Some("&apos;".into()),
            '"' if attr => Some("&quot;".into()),
            '\n' | '\t' if !attr => None,
            c if c.is_control() => Some(format!("&#{};", c as u32).into()),
            _ => None,
        };
        if let Some(r) = reference {
            out.push_str(&s[run..i]);
            out.push_str(&r);
            run = i + len;
        }
        i += len;
    }
    out.push_str(&s[run..]);
    out
}

#[cfg(test)]
mod escape_tests {
    use super::{esc_attr, esc_text};

    #[test]
    fn references_only_what_needs_one() {
        let s = "a&b<c>d'e\"f\ng\th\ri\u{1}j\u{7f}k\u{85}l\u{a0}mé€😀";
        assert_eq!(
            esc_text(s),
            "a&amp;b&lt;c&gt;d'e\"f\ng\th&#13;i&#1;j&#127;k&#133;l\u{a0}mé€😀"
        );
        assert_eq!(
            esc_attr(s),
            "a&amp;b&lt;c&gt;d&apos;e&quot;f&#10;g&#9;h&#13;i&#1;j&#127;k&#133;l\u{a0}mé€😀"
        );
        assert_eq!(esc_text(""), "");
        assert_eq!(esc_text("&"), "&amp;");
        assert_eq!(esc_text("plain"), "plain");
    }
}
