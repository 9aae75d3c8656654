//! Pool and volume XML: a small, strict reader (bounded size, depth and element count; no
//! DOCTYPE, so no entity declarations; only XML's predefined entities and character
//! references), the parsers for `<pool>` and `<volume>`, and the formatters.
//!
//! Anything the dir backend cannot honour is refused with "unsupported configuration"
//! naming the element, never silently dropped.

use std::path::{Component, Path, PathBuf};

use quick_xml::events::Event;
use quick_xml::{Reader, XmlVersion};

use super::{Error, Perms};
use crate::xml_escape;
use virtumld_protocol::error::code;

/// Largest pool or volume document accepted; real ones are a few hundred bytes.
pub const MAX_XML_BYTES: usize = 64 * 1024;
const MAX_DEPTH: usize = 16;
const MAX_ELEMENTS: usize = 512;

#[derive(Debug, Default)]
pub struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    pub text: String,
}

impl Element {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    fn only_once(&self, name: &str) -> Result<Option<&Element>, Error> {
        let mut it = self.children.iter().filter(|c| c.name == name);
        let first = it.next();
        if it.next().is_some() {
            return Err(xml_err(format!(
                "element <{name}> appears more than once in <{}>",
                self.name
            )));
        }
        Ok(first)
    }

    /// Refuses children and attributes outside the given lists.
    fn allow(&self, children: &[&str], attrs: &[&str]) -> Result<(), Error> {
        if let Some(c) = self
            .children
            .iter()
            .find(|c| !children.contains(&c.name.as_str()))
        {
            return Err(unsupported(format!(
                "element <{}> in <{}> is not supported by the dir storage backend",
                c.name, self.name
            )));
        }
        if let Some((k, _)) = self
            .attrs
            .iter()
            .find(|(k, _)| !attrs.contains(&k.as_str()))
        {
            return Err(unsupported(format!(
                "attribute '{k}' of <{}> is not supported by the dir storage backend",
                self.name
            )));
        }
        Ok(())
    }

    fn text_trim(&self) -> &str {
        self.text.trim()
    }
}

fn xml_err(detail: impl AsRef<str>) -> Error {
    Error::new(code::XML_ERROR, detail)
}

fn unsupported(detail: impl AsRef<str>) -> Error {
    Error::new(code::CONFIG_UNSUPPORTED, detail)
}

/// Parses a whole document into its root element.
pub fn parse_document(xml: &str) -> Result<Element, Error> {
    if xml.len() > MAX_XML_BYTES {
        return Err(xml_err(format!(
            "document is {} bytes, more than the {MAX_XML_BYTES} accepted",
            xml.len()
        )));
    }
    if let Some(c) = xml.chars().find(|&c| {
        let u = c as u32;
        u < 0x20 && c != '\t' && c != '\n' && c != '\r' || (0xFFFE..=0xFFFF).contains(&u)
    }) {
        return Err(xml_err(format!(
            "character U+{:04X} is not allowed in XML",
            c as u32
        )));
    }
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    loop {
        let ev = reader
            .read_event()
            .map_err(|e| xml_err(format!("malformed document: {e}")))?;
        match ev {
            Event::Start(ref s) | Event::Empty(ref s) => {
                if root.is_some() {
                    return Err(xml_err("extra content at the end of the document"));
                }
                count += 1;
                if count > MAX_ELEMENTS || stack.len() >= MAX_DEPTH {
                    return Err(xml_err("document is too large or too deeply nested"));
                }
                let mut el = Element {
                    name: s.name().as_ref().to_owned(),
                    ..Element::default()
                };
                for a in s.attributes() {
                    let a = a.map_err(|e| xml_err(format!("malformed attribute: {e}")))?;
                    let key: String = a.key.as_ref().to_owned();
                    if key == "xmlns" || key.starts_with("xmlns:") {
                        continue;
                    }
                    let value = a
                        .normalized_value(XmlVersion::Implicit1_0)
                        .map_err(|e| xml_err(format!("attribute '{key}': {e}")))?
                        .into_owned();
                    if el.attrs.iter().any(|(k, _)| *k == key) {
                        return Err(xml_err(format!("attribute '{key}' appears twice")));
                    }
                    el.attrs.push((key, value));
                }
                if matches!(ev, Event::Start(_)) {
                    stack.push(el);
                } else {
                    attach(&mut stack, &mut root, el);
                }
            }
            Event::End(_) => {
                let el = stack
                    .pop()
                    .ok_or_else(|| xml_err("end tag without start tag"))?;
                attach(&mut stack, &mut root, el);
            }
            Event::Text(t) => {
                push_text(&mut stack, &t)?;
            }
            Event::CData(c) => {
                push_text(&mut stack, &c)?;
            }
            Event::GeneralRef(r) => {
                let ch = match r.resolve_char_ref() {
                    Ok(Some(c)) => c,
                    Ok(None) => match &*r {
                        "lt" => '<',
                        "gt" => '>',
                        "amp" => '&',
                        "apos" => '\'',
                        "quot" => '"',
                        other => return Err(xml_err(format!("entity '&{other};' is not defined"))),
                    },
                    Err(e) => return Err(xml_err(e.to_string())),
                };
                if (ch as u32) < 0x20 && !matches!(ch, '\t' | '\n' | '\r') {
                    return Err(xml_err("character reference to a forbidden character"));
                }
                push_text(&mut stack, ch.encode_utf8(&mut [0u8; 4]))?;
            }
            Event::DocType(_) => return Err(xml_err("DOCTYPE declarations are not accepted")),
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(xml_err("premature end of data: an element is not closed"));
    }
    root.ok_or_else(|| xml_err("document is empty"))
}

fn attach(stack: &mut [Element], root: &mut Option<Element>, el: Element) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(el),
        None => *root = Some(el),
    }
}

fn push_text(stack: &mut [Element], text: &str) -> Result<(), Error> {
    match stack.last_mut() {
        Some(p) => {
            p.text.push_str(text);
            Ok(())
        }
        None if text.trim().is_empty() => Ok(()),
        None => Err(xml_err("text outside the root element")),
    }
}

// ---- pools -------------------------------------------------------------------------

/// A dir pool's definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolDef {
    pub name: String,
    pub uuid: [u8; 16],
    pub path: PathBuf,
    pub perms: Perms,
}

/// Pool names: what libvirt allows, minus what would break the file layout.
pub fn validate_pool_name(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(xml_err("missing pool source name element"));
    }
    if name.contains('/') || name == "." || name == ".." || name.starts_with('.') {
        return Err(Error::new(
            code::XML_ERROR,
            format!("name '{name}' cannot contain '/' or start with '.'"),
        ));
    }
    if name.len() > 255 || name.chars().any(|c| c.is_control()) {
        return Err(xml_err(format!(
            "invalid pool name '{}'",
            name.escape_debug()
        )));
    }
    Ok(())
}

/// A target path: absolute, normalised (no `.`/`..` components, no doubled slashes).
fn target_path(raw: &str) -> Result<PathBuf, Error> {
    let p = Path::new(raw);
    if !p.is_absolute() {
        return Err(xml_err(format!(
            "target path '{raw}' must be an absolute path"
        )));
    }
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => {
                return Err(xml_err(format!(
                    "target path '{raw}' must not contain '.' or '..'"
                )))
            }
        }
    }
    if out == Path::new("/") {
        return Err(xml_err("the target path of a pool cannot be '/'"));
    }
    Ok(out)
}

fn parse_perms(el: Option<&Element>) -> Result<Perms, Error> {
    let Some(el) = el else {
        return Ok(Perms::default());
    };
    el.allow(&["mode", "owner", "group", "label"], &[])?;
    let num = |name: &str, radix: u32, max: u32| -> Result<Option<u32>, Error> {
        match el.only_once(name)? {
            None => Ok(None),
            Some(e) => {
                let t = e.text_trim();
                // libvirt writes -1 for "unset" owner/group.
                if t == "-1" && radix == 10 {
                    return Ok(None);
                }
                u32::from_str_radix(t, radix)
                    .ok()
                    .filter(|&v| v <= max)
                    .map(Some)
                    .ok_or_else(|| xml_err(format!("malformed <{name}> '{t}' in <permissions>")))
            }
        }
    };
    if el.child("label").is_some() {
        return Err(unsupported(
            "<label> in <permissions>: this daemon has no security driver",
        ));
    }
    Ok(Perms {
        mode: num("mode", 8, 0o7777)?,
        owner: num("owner", 10, u32::MAX - 1)?,
        group: num("group", 10, u32::MAX - 1)?,
    })
}

/// Parses `<pool type='dir'>`; other pool types are refused.
pub fn parse_pool(xml: &str) -> Result<PoolDef, Error> {
    let root = parse_document(xml)?;
    if root.name != "pool" {
        return Err(xml_err(format!(
            "unexpected root element <{}>, expecting <pool>",
            root.name
        )));
    }
    match root.attr("type") {
        Some("dir") => {}
        Some(t) => {
            return Err(unsupported(format!(
                "storage pool type '{t}' is not supported: this daemon has only 'dir' pools"
            )))
        }
        None => return Err(xml_err("storage pool missing type attribute")),
    }
    root.allow(
        &[
            "name",
            "uuid",
            "capacity",
            "allocation",
            "available",
            "source",
            "target",
        ],
        &["type"],
    )?;
    let name = root
        .only_once("name")?
        .map(|e| e.text_trim().to_string())
        .unwrap_or_default();
    if name.is_empty() {
        return Err(xml_err("missing pool source name element"));
    }
    validate_pool_name(&name)?;
    let uuid = match root.only_once("uuid")? {
        Some(u) => virtumld_uml::domain::parse_uuid(u.text_trim())
            .ok_or_else(|| xml_err(format!("malformed uuid element '{}'", u.text_trim())))?,
        None => virtumld_uml::domain::generate_uuid()
            .map_err(|e| Error::new(code::INTERNAL_ERROR, e.to_string()))?,
    };
    if let Some(src) = root.only_once("source")? {
        // A dir pool has no source; an empty <source/> is what libvirt itself writes.
        src.allow(&[], &[])?;
    }
    let target = root
        .only_once("target")?
        .ok_or_else(|| xml_err("missing storage pool target path"))?;
    target.allow(&["path", "permissions"], &[])?;
    let path = target
        .only_once("path")?
        .map(|p| p.text_trim())
        .filter(|p| !p.is_empty())
        .ok_or_else(|| xml_err("missing storage pool target path"))?;
    Ok(PoolDef {
        name,
        uuid,
        path: target_path(path)?,
        perms: parse_perms(target.only_once("permissions")?)?,
    })
}

/// What a live pool adds to its XML.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolLive {
    pub capacity: u64,
    pub allocation: u64,
    pub available: u64,
}

fn perms_xml(out: &mut String, indent: &str, p: &Perms) {
    if p.mode.is_none() && p.owner.is_none() && p.group.is_none() {
        return;
    }
    out.push_str(&format!("{indent}<permissions>\n"));
    if let Some(m) = p.mode {
        out.push_str(&format!("{indent}  <mode>{m:04o}</mode>\n"));
    }
    if let Some(o) = p.owner {
        out.push_str(&format!("{indent}  <owner>{o}</owner>\n"));
    }
    if let Some(g) = p.group {
        out.push_str(&format!("{indent}  <group>{g}</group>\n"));
    }
    out.push_str(&format!("{indent}</permissions>\n"));
}

/// libvirt's pool XML. `perms` is what to show (the directory's actual ones for an active
/// pool, the configured ones otherwise).
pub fn format_pool(def: &PoolDef, live: PoolLive, perms: &Perms) -> String {
    let mut s = String::from("<pool type='dir'>\n");
    s.push_str(&format!("  <name>{}</name>\n", xml_escape(&def.name)));
    s.push_str(&format!(
        "  <uuid>{}</uuid>\n",
        virtumld_uml::domain::uuid_to_string(&def.uuid)
    ));
    s.push_str(&format!(
        "  <capacity unit='bytes'>{}</capacity>\n",
        live.capacity
    ));
    s.push_str(&format!(
        "  <allocation unit='bytes'>{}</allocation>\n",
        live.allocation
    ));
    s.push_str(&format!(
        "  <available unit='bytes'>{}</available>\n",
        live.available
    ));
    s.push_str("  <source>\n  </source>\n");
    s.push_str("  <target>\n");
    s.push_str(&format!(
        "    <path>{}</path>\n",
        xml_escape(&def.path.to_string_lossy())
    ));
    perms_xml(&mut s, "    ", perms);
    s.push_str("  </target>\n</pool>\n");
    s
}

// ---- volumes -----------------------------------------------------------------------

/// What a client asks for when creating a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolDef {
    pub name: String,
    pub capacity: u64,
    pub allocation: u64,
    pub perms: Perms,
}

/// Volume names become file names in the pool directory: no `/`, not `.`/`..`, and no
/// leading dot (those files are never listed).
pub fn validate_vol_name(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(xml_err("missing volume name element"));
    }
    if name.contains('/') {
        return Err(Error::new(
            code::INVALID_ARG,
            format!("volume name '{name}' cannot contain '/'"),
        ));
    }
    if name.starts_with('.') {
        return Err(Error::new(
            code::INVALID_ARG,
            format!("volume name '{name}' cannot start with '.'"),
        ));
    }
    if name.len() > 255 || name.chars().any(|c| c.is_control()) {
        return Err(Error::new(
            code::INVALID_ARG,
            format!("invalid volume name '{}'", name.escape_debug()),
        ));
    }
    Ok(())
}

/// A size with libvirt's units (`virScaleInteger`): bytes by default; `KB`, `MB`, … are
/// powers of 1000, `k`/`KiB`, `M`/`MiB`, … powers of 1024.
pub fn scaled(el: &Element) -> Result<u64, Error> {
    let t = el.text_trim();
    let n: u64 = t
        .parse()
        .map_err(|_| xml_err(format!("malformed <{}> value '{t}'", el.name)))?;
    let unit = el.attr("unit").unwrap_or("bytes").to_ascii_lowercase();
    let scale: u64 = match unit.as_str() {
        "" | "b" | "byte" | "bytes" => 1,
        u => {
            let mut cs = u.chars();
            let power = match cs.next() {
                Some('k') => 1,
                Some('m') => 2,
                Some('g') => 3,
                Some('t') => 4,
                Some('p') => 5,
                Some('e') => 6,
                _ => return Err(xml_err(format!("unknown suffix '{u}'"))),
            };
            let base: u64 = match cs.as_str() {
                "" | "ib" => 1024,
                "b" => 1000,
                _ => return Err(xml_err(format!("unknown suffix '{u}'"))),
            };
            base.pow(power)
        }
    };
    n.checked_mul(scale)
        .filter(|&v| v <= i64::MAX as u64)
        .ok_or_else(|| {
            Error::new(
                code::OVERFLOW,
                format!("value too large: {t}{}", el.attr("unit").unwrap_or("")),
            )
        })
}

/// Parses a `<volume>` to create in a dir pool: raw files only.
pub fn parse_volume(xml: &str) -> Result<VolDef, Error> {
    let root = parse_document(xml)?;
    if root.name != "volume" {
        return Err(xml_err(format!(
            "unexpected root element <{}>, expecting <volume>",
            root.name
        )));
    }
    if let Some(t) = root.attr("type").filter(|t| *t != "file") {
        return Err(unsupported(format!(
            "volume type '{t}' is not supported: dir pools hold plain files"
        )));
    }
    root.allow(
        &[
            "name",
            "key",
            "source",
            "capacity",
            "allocation",
            "physical",
            "target",
        ],
        &["type"],
    )?;
    let name = root
        .only_once("name")?
        .map(|e| e.text_trim().to_string())
        .unwrap_or_default();
    validate_vol_name(&name)?;
    if let Some(src) = root.only_once("source")? {
        src.allow(&[], &[])?;
    }
    let capacity = scaled(
        root.only_once("capacity")?
            .ok_or_else(|| xml_err("missing capacity element"))?,
    )?;
    // As libvirt: no <allocation> means fully allocated.
    let allocation = match root.only_once("allocation")? {
        Some(a) => scaled(a)?.min(capacity),
        None => capacity,
    };
    let mut perms = Perms::default();
    if let Some(t) = root.only_once("target")? {
        t.allow(&["path", "format", "permissions"], &[])?;
        if let Some(f) = t.only_once("format")? {
            f.allow(&[], &["type"])?;
            match f.attr("type") {
                None | Some("raw") => {}
                Some(other) => {
                    return Err(unsupported(format!(
                        "volume format '{other}' is not supported: UML's ubd driver reads raw \
                         images, create a 'raw' volume"
                    )))
                }
            }
        }
        perms = parse_perms(t.only_once("permissions")?)?;
    }
    Ok(VolDef {
        name,
        capacity,
        allocation,
        perms,
    })
}

/// What a volume's XML and info show, read from the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolInfo {
    /// `virStorageVolType`: 0 file, 2 dir.
    pub kind: i8,
    pub capacity: u64,
    pub allocation: u64,
    pub format: &'static str,
    pub perms: Perms,
    pub times: [(i64, i64); 3],
}

pub fn format_volume(name: &str, path: &Path, v: &VolInfo) -> String {
    let ty = if v.kind == 2 { "dir" } else { "file" };
    let p = xml_escape(&path.to_string_lossy());
    let mut s = format!("<volume type='{ty}'>\n");
    s.push_str(&format!("  <name>{}</name>\n", xml_escape(name)));
    s.push_str(&format!("  <key>{p}</key>\n"));
    s.push_str("  <source>\n  </source>\n");
    s.push_str(&format!(
        "  <capacity unit='bytes'>{}</capacity>\n",
        v.capacity
    ));
    s.push_str(&format!(
        "  <allocation unit='bytes'>{}</allocation>\n",
        v.allocation
    ));
    s.push_str(&format!(
        "  <physical unit='bytes'>{}</physical>\n",
        if v.kind == 2 {
            v.allocation
        } else {
            v.capacity
        }
    ));
    s.push_str("  <target>\n");
    s.push_str(&format!("    <path>{p}</path>\n"));
    s.push_str(&format!("    <format type='{}'/>\n", v.format));
    perms_xml(&mut s, "    ", &v.perms);
    s.push_str("    <timestamps>\n");
    for (tag, (sec, nsec)) in ["atime", "mtime", "ctime"].iter().zip(v.times) {
        s.push_str(&format!("      <{tag}>{sec}.{nsec:09}</{tag}>\n"));
    }
    s.push_str("    </timestamps>\n  </target>\n</volume>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virt_managers_default_pool() {
        let d = parse_pool(
            "<pool type=\"dir\">\n  <name>default</name>\n  <target>\n    \
             <path>/var/lib/libvirt/images</path>\n  </target>\n</pool>\n",
        )
        .unwrap();
        assert_eq!(d.name, "default");
        assert_eq!(d.path, Path::new("/var/lib/libvirt/images"));
        assert_eq!(d.perms, Perms::default());
        // What we write parses back to the same definition.
        let again = parse_pool(&format_pool(&d, PoolLive::default(), &d.perms)).unwrap();
        assert_eq!(again, d);
    }

    #[test]
    fn pool_refusals() {
        let bad = |x: &str| parse_pool(x).unwrap_err();
        assert_eq!(
            bad("<pool type='logical'><name>a</name></pool>").code,
            code::CONFIG_UNSUPPORTED
        );
        assert_eq!(
            bad("<pool type='dir'><name>a</name><target><path>rel</path></target></pool>").code,
            code::XML_ERROR
        );
        assert_eq!(
            bad("<pool type='dir'><name>a</name><target><path>/a/../b</path></target></pool>").code,
            code::XML_ERROR
        );
        assert_eq!(
            bad("<pool type='dir'><name>../x</name><target><path>/a</path></target></pool>").code,
            code::XML_ERROR
        );
        assert_eq!(
            bad(
                "<pool type='dir'><name>a</name><source><dir path='/x'/></source>\
                 <target><path>/a</path></target></pool>"
            )
            .code,
            code::CONFIG_UNSUPPORTED
        );
        assert!(bad("<!DOCTYPE p [<!ENTITY x 'y'>]><pool type='dir'/>")
            .message
            .contains("DOCTYPE"));
        assert_eq!(
            bad("<pool type='dir'><name>&x;</name></pool>").code,
            code::XML_ERROR
        );
    }

    #[test]
    fn pool_permissions() {
        let d = parse_pool(
            "<pool type='dir'><name>p</name><uuid>b4433fc2-a22e-ffb3-0a3d-9c173b395800</uuid>\
             <target><path>/srv//p/</path><permissions><mode>0755</mode><owner>0</owner>\
             <group>-1</group></permissions></target></pool>",
        )
        .unwrap();
        assert_eq!(d.path, Path::new("/srv/p"));
        assert_eq!(
            d.perms,
            Perms {
                mode: Some(0o755),
                owner: Some(0),
                group: None
            }
        );
        assert!(format_pool(&d, PoolLive::default(), &d.perms).contains("<mode>0755</mode>"));
    }

    #[test]
    fn volumes_and_units() {
        let v = parse_volume(
            "<volume><name>a.img</name><capacity unit='M'>64</capacity>\
             <allocation unit='KB'>2</allocation><target><format type='raw'/></target></volume>",
        )
        .unwrap();
        assert_eq!((v.capacity, v.allocation), (64 << 20, 2000));
        let full =
            parse_volume("<volume><name>b</name><capacity>4096</capacity></volume>").unwrap();
        assert_eq!(full.allocation, 4096);
        let bad = |x: &str| parse_volume(x).unwrap_err().code;
        assert_eq!(
            bad("<volume><name>../x</name><capacity>1</capacity></volume>"),
            code::INVALID_ARG
        );
        assert_eq!(
            bad("<volume><name>.x</name><capacity>1</capacity></volume>"),
            code::INVALID_ARG
        );
        assert_eq!(
            bad("<volume><name>x</name><capacity unit='E'>9</capacity></volume>"),
            code::OVERFLOW
        );
        assert_eq!(
            bad("<volume><name>x</name><capacity unit='zz'>9</capacity></volume>"),
            code::XML_ERROR
        );
        assert_eq!(
            bad(
                "<volume><name>x</name><capacity>1</capacity><target><format type='qcow2'/>\
                 </target></volume>"
            ),
            code::CONFIG_UNSUPPORTED
        );
        assert_eq!(bad("<volume><name>x</name></volume>"), code::XML_ERROR);
    }
}
