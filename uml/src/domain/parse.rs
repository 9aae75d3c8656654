//! libvirt domain XML → `DomainDef`. Structure and values are checked here, element by
//! element; the semantic rules live in `DomainDef::validate`, which `parse` runs last.

use std::path::PathBuf;

use super::error::{unsupported_attr, unsupported_element, unsupported_value, DefError};
use super::tree::{self, Element};
use super::{
    generate_uuid, host_arch, parse_uuid, CharDev, CharKind, CharLog, DiskDef, DiskKind, DomainDef,
    LifecycleAction, OsDef, MAX_CHAR_PORTS,
};

/// Parses and validates a libvirt domain definition for the UML driver.
pub fn parse(xml: &str) -> Result<DomainDef, DefError> {
    let xml = xml.strip_prefix('\u{feff}').unwrap_or(xml);
    let root = tree::parse_document(xml)?;
    let def = domain(&root, xml)?;
    def.validate()?;
    Ok(def)
}

/// `<metadata>` content must stay a well-formed fragment without DOCTYPE or unknown entities,
/// since `to_xml` copies it verbatim.
pub(crate) fn check_metadata_fragment(inner: &str) -> Result<(), DefError> {
    let wrapped = format!("<metadata>{inner}</metadata>");
    tree::parse_document(&wrapped)
        .map(|_| ())
        .map_err(|e| DefError::Xml(format!("<metadata> is not a well-formed fragment: {e}")))
}

fn check_attrs(el: &Element, allowed: &[&str]) -> Result<(), DefError> {
    match el
        .attrs
        .iter()
        .find(|(k, _)| !allowed.contains(&k.as_str()))
    {
        Some((k, _)) => Err(unsupported_attr(&el.name, k)),
        None => Ok(()),
    }
}

/// An element with neither child elements nor text.
fn check_empty(el: &Element) -> Result<(), DefError> {
    if let Some(child) = el.elements().next() {
        return Err(unsupported_element(&el.name, &child.name));
    }
    if el.stray_text().is_some() {
        return Err(DefError::Xml(format!("<{}> must be empty", el.name)));
    }
    Ok(())
}

fn check_no_stray_text(el: &Element) -> Result<(), DefError> {
    match el.stray_text() {
        Some(t) => Err(DefError::Xml(format!(
            "unexpected text '{}' in <{}>",
            t.trim(),
            el.name
        ))),
        None => Ok(()),
    }
}

/// The text of an element that may hold nothing else; no attributes unless `allowed`.
fn text_only(el: &Element, allowed: &[&str]) -> Result<String, DefError> {
    check_attrs(el, allowed)?;
    if let Some(child) = el.elements().next() {
        return Err(unsupported_element(&el.name, &child.name));
    }
    Ok(el.text())
}

fn once<T>(slot: &mut Option<T>, el: &Element, value: T) -> Result<(), DefError> {
    if slot.is_some() {
        return Err(DefError::Xml(format!(
            "more than one <{}> element",
            el.name
        )));
    }
    *slot = Some(value);
    Ok(())
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn parse_uint(el_name: &str, s: &str) -> Result<u64, DefError> {
    let t = s.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(DefError::Xml(format!(
            "invalid value '{t}' for <{el_name}>: expected a non-negative integer"
        )));
    }
    t.parse::<u64>()
        .map_err(|_| DefError::Xml(format!("value '{t}' for <{el_name}> is too large")))
}

/// Bytes per unit, libvirt's table: case-insensitive `b`/`byte`/`bytes`, then `k m g t p e`
/// alone or with `iB` (powers of 1024) or with `B` (powers of 1000). Empty means KiB.
pub(crate) fn unit_scale(unit: &str) -> Result<u64, DefError> {
    let u = unit.to_ascii_lowercase();
    if u.is_empty() {
        return Ok(1024);
    }
    if u == "b" || u == "byte" || u == "bytes" {
        return Ok(1);
    }
    let unknown = || DefError::InvalidArg(format!("unknown suffix '{unit}'"));
    let mut chars = u.chars();
    let exp = match chars.next() {
        Some('k') => 1,
        Some('m') => 2,
        Some('g') => 3,
        Some('t') => 4,
        Some('p') => 5,
        Some('e') => 6,
        _ => return Err(unknown()),
    };
    let base: u64 = match chars.as_str() {
        "" | "ib" => 1024,
        "b" => 1000,
        _ => return Err(unknown()),
    };
    Ok(base.pow(exp))
}

/// `<memory>`/`<currentMemory>` in KiB, rounded up as libvirt does.
fn memory_kib(el: &Element) -> Result<u64, DefError> {
    let text = text_only(el, &["unit"])?;
    let n = parse_uint(&el.name, &text)?;
    let scale = unit_scale(el.attr("unit").unwrap_or(""))?;
    let bytes = n
        .checked_mul(scale)
        .ok_or_else(|| DefError::Xml(format!("value of <{}> is too large", el.name)))?;
    Ok(bytes.div_ceil(1024))
}

fn path_of(s: String) -> PathBuf {
    PathBuf::from(s)
}

fn domain(root: &Element, xml: &str) -> Result<DomainDef, DefError> {
    if root.name != "domain" {
        return Err(DefError::Xml(format!(
            "unexpected root element <{}>, expecting <domain>",
            root.name
        )));
    }
    // `id` only appears in live XML fed back to us (`virsh dumpxml` then `define`); a new
    // domain gets its id when it starts.
    check_attrs(root, &["type", "id"])?;
    let Some(virt_type) = root.attr("type") else {
        return Err(DefError::Xml("missing domain type attribute".into()));
    };
    check_no_stray_text(root)?;
    check_capabilities(root, virt_type)?;

    let mut name = None;
    let mut uuid = None;
    let mut title = None;
    let mut description = None;
    let mut metadata = None;
    let mut memory = None;
    let mut current = None;
    let mut vcpus = None;
    let mut os = None;
    let mut on_poweroff = None;
    let mut on_reboot = None;
    let mut on_crash = None;
    let mut devices = None;
    let mut seen_clock = None;
    let mut seen_pm = None;
    let mut seen_features = None;
    let mut seen_seclabel = None;

    for el in root.elements() {
        match el.name.as_str() {
            "name" => once(&mut name, el, text_only(el, &[])?)?,
            "uuid" => {
                let t = text_only(el, &[])?;
                let u = parse_uuid(&t)
                    .ok_or_else(|| DefError::Xml(format!("malformed uuid element '{t}'")))?;
                once(&mut uuid, el, u)?;
            }
            "title" => once(&mut title, el, text_only(el, &[])?)?,
            "description" => once(&mut description, el, text_only(el, &[])?)?,
            "metadata" => {
                check_attrs(el, &[])?;
                let raw = xml.get(el.inner.clone()).unwrap_or("");
                once(&mut metadata, el, raw.to_owned())?;
            }
            "memory" => once(&mut memory, el, memory_kib(el)?)?,
            "currentMemory" => once(&mut current, el, memory_kib(el)?)?,
            "vcpu" => once(&mut vcpus, el, vcpu(el)?)?,
            "os" => once(&mut os, el, os_def(el)?)?,
            "on_poweroff" => once(&mut on_poweroff, el, lifecycle(el)?)?,
            "on_reboot" => once(&mut on_reboot, el, lifecycle(el)?)?,
            "on_crash" => once(&mut on_crash, el, lifecycle(el)?)?,
            "devices" => once(&mut devices, el, devices_def(el)?)?,
            "clock" => once(&mut seen_clock, el, clock(el)?)?,
            "pm" => once(&mut seen_pm, el, pm(el)?)?,
            "features" => {
                check_attrs(el, &[])?;
                once(&mut seen_features, el, check_empty(el)?)?;
            }
            "seclabel" => once(&mut seen_seclabel, el, seclabel(el)?)?,
            other => return Err(unsupported_element("domain", other)),
        }
    }

    let name = name.and_then(non_empty).ok_or(DefError::NoName)?;
    let uuid = match uuid {
        Some(u) => u,
        None => generate_uuid()?,
    };
    let os = os.ok_or_else(|| DefError::Xml("an os <type> must be specified".into()))?;
    let memory_kib =
        memory.ok_or_else(|| DefError::Xml("Memory size must be specified via <memory>".into()))?;
    // libvirt treats a zero or absent currentMemory as "same as memory".
    let current_memory_kib = match current {
        Some(0) | None => memory_kib,
        Some(c) => c,
    };
    let (disks, consoles, serials, emulator) = devices.unwrap_or_default();
    let metadata = metadata.filter(|m: &String| !m.trim().is_empty());
    Ok(DomainDef {
        name,
        uuid,
        title: title.and_then(non_empty),
        description: description.and_then(non_empty),
        metadata,
        memory_kib,
        current_memory_kib,
        vcpus: vcpus.unwrap_or(1),
        os,
        on_poweroff: on_poweroff.unwrap_or(LifecycleAction::Destroy),
        on_reboot: on_reboot.unwrap_or(LifecycleAction::Restart),
        on_crash: on_crash.unwrap_or(LifecycleAction::Destroy),
        emulator,
        disks,
        consoles,
        serials,
    })
}

fn vcpu(el: &Element) -> Result<u32, DefError> {
    let text = text_only(el, &["placement", "current"])?;
    if let Some(p) = el.attr("placement") {
        if p != "static" {
            return Err(unsupported_value(
                "vcpu",
                "placement",
                p,
                ": UML has one vCPU and no placement",
            ));
        }
    }
    let n = parse_uint("vcpu", &text)?;
    let n =
        u32::try_from(n).map_err(|_| DefError::Xml(format!("<vcpu> value {n} is too large")))?;
    if let Some(c) = el.attr("current") {
        let c = parse_uint("vcpu current", c)?;
        if c == 0 || c > u64::from(n) {
            return Err(DefError::Xml(format!(
                "<vcpu current='{c}'> must be between 1 and the vcpu count {n}"
            )));
        }
    }
    Ok(n)
}

fn lifecycle(el: &Element) -> Result<LifecycleAction, DefError> {
    let text = text_only(el, &[])?;
    let t = text.trim();
    if let Some(a) = LifecycleAction::from_libvirt(t) {
        return Ok(a);
    }
    if t == "coredump-destroy" || t == "coredump-restart" {
        return Err(DefError::Unsupported(format!(
            "<{}> action '{t}' is not supported by the UML driver (only destroy and restart)",
            el.name
        )));
    }
    Err(DefError::Xml(format!(
        "invalid value '{t}' for <{}>: expected destroy, restart, preserve or rename-restart",
        el.name
    )))
}

/// The domain type, OS type, arch and machine must name the one guest the capabilities offer
/// (`uml`/`uml`/host arch/no machine). Checked before anything else, with libvirt's wording
/// for a failed capabilities lookup, so a guest for another hypervisor gets that answer rather
/// than a complaint about one of its devices.
fn check_capabilities(root: &Element, virt_type: &str) -> Result<(), DefError> {
    let ty = root
        .elements()
        .find(|e| e.name == "os")
        .and_then(|os| os.elements().find(|e| e.name == "type"));
    let ostype = ty.map(|t| t.text().trim().to_owned());
    let arch = ty.and_then(|t| t.attr("arch"));
    let machine = ty.and_then(|t| t.attr("machine"));
    let ok = virt_type == "uml"
        && ostype.as_deref().is_none_or(|o| o == "uml")
        && arch.is_none_or(|a| a == host_arch())
        && machine.is_none();
    if ok {
        return Ok(());
    }
    let mut what = Vec::new();
    if let Some(o) = &ostype {
        what.push(format!("ostype={o}"));
    }
    if let Some(a) = arch {
        what.push(format!("arch={a}"));
    }
    what.push(format!("domaintype={virt_type}"));
    if let Some(m) = machine {
        what.push(format!("machine={m}"));
    }
    Err(DefError::InvalidArg(format!(
        "could not find capabilities for {}",
        what.join(" ")
    )))
}

fn os_def(el: &Element) -> Result<OsDef, DefError> {
    check_attrs(el, &[])?;
    check_no_stray_text(el)?;
    let mut os_type = None;
    let mut kernel = None;
    let mut initrd = None;
    let mut cmdline = None;
    let mut root = None;
    for c in el.elements() {
        match c.name.as_str() {
            "type" => {
                text_only(c, &["arch", "machine"])?;
                once(&mut os_type, c, c.attr("arch").map(str::to_owned))?;
            }
            "kernel" => once(&mut kernel, c, text_only(c, &[])?)?,
            "initrd" => once(&mut initrd, c, text_only(c, &[])?)?,
            "cmdline" => once(&mut cmdline, c, text_only(c, &[])?)?,
            "root" => once(&mut root, c, text_only(c, &[])?)?,
            other => return Err(unsupported_element("os", other)),
        }
    }
    // Values were checked by `check_capabilities`.
    let Some(arch) = os_type else {
        return Err(DefError::Xml("an os <type> must be specified".into()));
    };
    let kernel = kernel.and_then(non_empty).ok_or_else(|| {
        DefError::Xml("no kernel specified: the UML driver needs <os><kernel>".into())
    })?;
    Ok(OsDef {
        arch: arch.unwrap_or_else(|| host_arch().to_owned()),
        kernel: path_of(kernel),
        initrd: initrd.and_then(non_empty).map(path_of),
        cmdline: cmdline.and_then(non_empty),
        root: root.and_then(non_empty),
    })
}

/// `<clock>`: UML's clock is the host's, which is what `offset='utc'` (the default) asks for.
fn clock(el: &Element) -> Result<(), DefError> {
    check_attrs(el, &["offset"])?;
    if let Some(o) = el.attr("offset") {
        if o != "utc" {
            return Err(unsupported_value(
                "clock",
                "offset",
                o,
                ": a UML guest runs on the host's UTC clock",
            ));
        }
    }
    check_empty(el)
}

/// `<pm>`: accepted only when it says suspend is off, which is all UML can do.
fn pm(el: &Element) -> Result<(), DefError> {
    check_attrs(el, &[])?;
    check_no_stray_text(el)?;
    for c in el.elements() {
        match c.name.as_str() {
            "suspend-to-mem" | "suspend-to-disk" => {
                check_attrs(c, &["enabled"])?;
                check_empty(c)?;
                match c.attr("enabled") {
                    Some("no") => {}
                    Some(v) => {
                        return Err(unsupported_value(
                            &c.name,
                            "enabled",
                            v,
                            ": UML guests cannot be suspended by power management",
                        ))
                    }
                    None => return Err(DefError::Xml(format!("<{}> needs enabled=", c.name))),
                }
            }
            other => return Err(unsupported_element("pm", other)),
        }
    }
    Ok(())
}

/// `<seclabel type='none'/>` states the truth (no labelling); anything else asks for it.
fn seclabel(el: &Element) -> Result<(), DefError> {
    check_attrs(el, &["type", "model"])?;
    match el.attr("type") {
        Some("none") => check_empty(el),
        _ => Err(DefError::Unsupported(
            "security labels (<seclabel>) are not supported by the UML driver".into(),
        )),
    }
}

type Devices = (Vec<DiskDef>, Vec<CharDev>, Vec<CharDev>, Option<PathBuf>);

fn devices_def(el: &Element) -> Result<Devices, DefError> {
    check_attrs(el, &[])?;
    check_no_stray_text(el)?;
    let mut disks = Vec::new();
    let mut consoles = Vec::new();
    let mut serials = Vec::new();
    let mut emulator = None;
    let mut seen_balloon = None;
    for c in el.elements() {
        match c.name.as_str() {
            "emulator" => once(&mut emulator, c, text_only(c, &[])?)?,
            "disk" => disks.push(disk(c)?),
            "console" => consoles.push(chardev(c, true)?),
            "serial" => serials.push(chardev(c, false)?),
            "memballoon" => {
                check_attrs(c, &["model"])?;
                if c.attr("model") != Some("none") {
                    return Err(DefError::Unsupported(
                        "<memballoon> devices are not supported by the UML driver (only \
                         model='none')"
                            .into(),
                    ));
                }
                if let Some(a) = c.elements().find(|a| a.name != "alias") {
                    return Err(unsupported_element("memballoon", &a.name));
                }
                once(&mut seen_balloon, c, ())?;
            }
            other => return Err(unsupported_element("devices", other)),
        }
    }
    let consoles = assign_ports(consoles);
    let serials = assign_ports(serials);
    Ok((
        disks,
        consoles,
        serials,
        emulator.and_then(non_empty).map(path_of),
    ))
}

fn disk(el: &Element) -> Result<DiskDef, DefError> {
    check_attrs(el, &["type", "device"])?;
    check_no_stray_text(el)?;
    let kind = match el.attr("type") {
        None | Some("file") => DiskKind::File,
        Some("block") => DiskKind::Block,
        Some(t) => {
            return Err(unsupported_value(
                "disk",
                "type",
                t,
                ": ubd devices take a host file or block device",
            ))
        }
    };
    if let Some(d) = el.attr("device") {
        if d != "disk" {
            return Err(unsupported_value(
                "disk",
                "device",
                d,
                ": ubd devices are plain disks",
            ));
        }
    }
    let mut source = None;
    let mut target = None;
    let mut readonly = None;
    let mut shareable = None;
    let mut driver = None;
    let mut backing = None;
    for c in el.elements() {
        match c.name.as_str() {
            "source" => {
                let key = match kind {
                    DiskKind::File => "file",
                    DiskKind::Block => "dev",
                };
                check_attrs(c, &[key])?;
                check_empty(c)?;
                let p = c.attr(key).map(str::to_owned).unwrap_or_default();
                once(&mut source, c, p)?;
            }
            "target" => {
                check_attrs(c, &["dev", "bus"])?;
                check_empty(c)?;
                if let Some(bus) = c.attr("bus") {
                    if bus != "uml" {
                        return Err(unsupported_value(
                            "target",
                            "bus",
                            bus,
                            ": disks are UML ubd devices (bus='uml')",
                        ));
                    }
                }
                let dev = c.attr("dev").map(str::to_owned).unwrap_or_default();
                once(&mut target, c, dev)?;
            }
            "readonly" => {
                check_attrs(c, &[])?;
                check_empty(c)?;
                once(&mut readonly, c, ())?;
            }
            "shareable" => {
                check_attrs(c, &[])?;
                check_empty(c)?;
                once(&mut shareable, c, ())?;
            }
            "driver" => {
                check_attrs(c, &["name", "type"])?;
                check_empty(c)?;
                if let Some(n) = c.attr("name") {
                    if n != "uml" {
                        return Err(unsupported_value(
                            "driver",
                            "name",
                            n,
                            ": disks are served by UML's own ubd driver",
                        ));
                    }
                }
                if let Some(t) = c.attr("type") {
                    if t != "raw" {
                        return Err(DefError::Unsupported(format!(
                            "disk format '{t}' is not supported by the UML driver: ubd devices \
                             are raw"
                        )));
                    }
                }
                once(&mut driver, c, ())?;
            }
            "alias" => check_attrs(c, &["name"]).and_then(|_| check_empty(c))?,
            "backingStore" => {
                if !c.attrs.is_empty() || c.elements().next().is_some() {
                    return Err(DefError::Unsupported(
                        "disk backing chains (<backingStore>) are not supported by the UML \
                         driver"
                            .into(),
                    ));
                }
                check_empty(c)?;
                once(&mut backing, c, ())?;
            }
            other => return Err(unsupported_element("disk", other)),
        }
    }
    let target = target
        .filter(|t| !t.is_empty())
        .ok_or_else(|| DefError::Xml("missing target information for disk".into()))?;
    let source = source.filter(|s| !s.is_empty()).ok_or_else(|| {
        DefError::Xml(format!(
            "missing source information for disk {target}: <source {}=…/>",
            match kind {
                DiskKind::File => "file",
                DiskKind::Block => "dev",
            }
        ))
    })?;
    Ok(DiskDef {
        kind,
        source: path_of(source),
        target,
        readonly: readonly.is_some(),
        shareable: shareable.is_some(),
    })
}

/// A console or serial with its port if one was given.
struct RawChar {
    kind: CharKind,
    port: Option<u32>,
    log: Option<CharLog>,
}

fn chardev(el: &Element, console: bool) -> Result<RawChar, DefError> {
    // `tty` is the live pty path libvirt repeats on the first console; it is the daemon's to
    // fill in, so an incoming one is ignored like the pty `<source path>`.
    check_attrs(el, &["type", "tty"])?;
    check_no_stray_text(el)?;
    let ty = el.attr("type").unwrap_or("pty");
    if !matches!(ty, "pty" | "null" | "file") {
        return Err(DefError::Unsupported(format!(
            "<{}> type '{ty}' is not supported by the UML driver (pty, null and file are)",
            el.name
        )));
    }
    let mut source: Option<Option<String>> = None;
    let mut log = None;
    let mut port: Option<Option<u32>> = None;
    for c in el.elements() {
        match c.name.as_str() {
            "source" => {
                check_attrs(c, if ty == "null" { &[] } else { &["path"] })?;
                check_empty(c)?;
                once(&mut source, c, c.attr("path").map(str::to_owned))?;
            }
            "log" => {
                check_attrs(c, &["file", "append"])?;
                check_empty(c)?;
                let file = c
                    .attr("file")
                    .filter(|f| !f.is_empty())
                    .ok_or_else(|| DefError::Xml("<log> needs a file attribute".into()))?;
                let append = match c.attr("append") {
                    None | Some("off") => false,
                    Some("on") => true,
                    Some(v) => {
                        return Err(DefError::Xml(format!(
                            "invalid value '{v}' for <log append=…>: expected on or off"
                        )))
                    }
                };
                once(
                    &mut log,
                    c,
                    CharLog {
                        file: PathBuf::from(file),
                        append,
                    },
                )?;
            }
            "target" => {
                check_attrs(
                    c,
                    if console {
                        &["type", "port"]
                    } else {
                        &["port"]
                    },
                )?;
                check_empty(c)?;
                if let Some(t) = c.attr("type") {
                    if t == "serial" {
                        return Err(DefError::Unsupported(
                            "console target type 'serial' is not supported by the UML driver: \
                             UML consoles (conN) and serial lines (sslN) are separate; define \
                             a <serial> for a serial line"
                                .into(),
                        ));
                    }
                    if t != "uml" {
                        return Err(unsupported_value(
                            "target",
                            "type",
                            t,
                            ": console targets are UML consoles (type='uml')",
                        ));
                    }
                }
                let p = match c.attr("port") {
                    Some(p) => Some(
                        u32::try_from(parse_uint("target port", p)?)
                            .map_err(|_| DefError::Xml(format!("target port {p} is too large")))?,
                    ),
                    None => None,
                };
                once(&mut port, c, p)?;
            }
            "alias" => check_attrs(c, &["name"]).and_then(|_| check_empty(c))?,
            other => return Err(unsupported_element(&el.name, other)),
        }
    }
    let kind = match ty {
        "null" => CharKind::Null,
        // A pty's path is only known once the guest runs; an incoming one is stale.
        "pty" => CharKind::Pty,
        _ => {
            let path = source.flatten().filter(|p| !p.is_empty()).ok_or_else(|| {
                DefError::Xml(format!("missing <source path=…> for file <{}>", el.name))
            })?;
            CharKind::File(PathBuf::from(path))
        }
    };
    Ok(RawChar {
        kind,
        port: port.flatten(),
        log,
    })
}

/// Devices without a port get the lowest port no other device of the family uses. Explicit
/// duplicates are left for `validate` to report.
fn assign_ports(raw: Vec<RawChar>) -> Vec<CharDev> {
    let mut used: Vec<u32> = raw.iter().filter_map(|r| r.port).collect();
    raw.into_iter()
        .map(|r| {
            let port = r.port.unwrap_or_else(|| {
                let free = (0..=MAX_CHAR_PORTS)
                    .find(|p| !used.contains(p))
                    .unwrap_or(MAX_CHAR_PORTS);
                used.push(free);
                free
            });
            CharDev {
                kind: r.kind,
                target_port: port,
                log: r.log,
            }
        })
        .collect()
}
