use std::path::PathBuf;

use super::*;

const UUID: &str = "b4433fc2-a22e-ffb3-0a3d-9c173b395800";

/// A valid domain with `top` inserted after `<vcpu>` and `devices` inside `<devices>`.
fn dom(top: &str, devices: &str) -> String {
    format!(
        "<domain type='uml'><name>t</name><uuid>{UUID}</uuid><memory>65536</memory>\
         <vcpu>1</vcpu>{top}<os><type>uml</type><kernel>/usr/bin/linux.uml</kernel></os>\
         <devices>{devices}</devices></domain>"
    )
}

fn code(xml: &str) -> i32 {
    match parse(xml) {
        Ok(_) => 0,
        Err(e) => e.vir_code(),
    }
}

fn err(xml: &str) -> DefError {
    match parse(xml) {
        Ok(d) => panic!("accepted: {d:?}\n{xml}"),
        Err(e) => e,
    }
}

/// Refused with `code`, and the message mentions `needle`.
fn refused(xml: &str, code: i32, needle: &str) {
    let e = err(xml);
    assert_eq!(e.vir_code(), code, "{e}\n{xml}");
    assert!(e.to_string().contains(needle), "'{e}' lacks '{needle}'");
}

const SEED: &str = "<domain type='uml'>
  <name>demo</name>
  <uuid>b4433fc2-a22e-ffb3-0a3d-9c173b395800</uuid>
  <memory>500000</memory>
  <currentMemory>500000</currentMemory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64'>uml</type>
    <kernel>/home/berrange/linux-uml-2.6.26-x86_64</kernel>
  </os>
  <devices>
    <disk type='file' device='disk'>
      <source file='/home/berrange/FedoraCore6-AMD64-root_fs'/>
      <target dev='ubd0' bus='uml'/>
    </disk>
    <console type='pty'/>
  </devices>
</domain>
";

#[test]
#[cfg(target_arch = "x86_64")]
fn seed_example_parses_unchanged() {
    let d = parse(SEED).expect("seed");
    assert_eq!(d.name, "demo");
    assert_eq!(uuid_to_string(&d.uuid), UUID);
    assert_eq!(d.memory_kib, 500_000);
    assert_eq!(d.current_memory_kib, 500_000);
    assert_eq!(d.vcpus, 1);
    assert_eq!(d.os.arch, "x86_64");
    assert_eq!(
        d.os.kernel,
        PathBuf::from("/home/berrange/linux-uml-2.6.26-x86_64")
    );
    assert_eq!(
        d.disks,
        vec![DiskDef {
            kind: DiskKind::File,
            source: PathBuf::from("/home/berrange/FedoraCore6-AMD64-root_fs"),
            target: "ubd0".into(),
            readonly: false,
            shareable: false,
        }]
    );
    assert_eq!(
        d.consoles,
        vec![CharDev {
            kind: CharKind::Pty,
            target_port: 0,
            log: None
        }]
    );
    assert!(d.serials.is_empty());
    assert_eq!(d.on_poweroff, LifecycleAction::Destroy);
    assert_eq!(d.on_reboot, LifecycleAction::Restart);
    assert_eq!(d.on_crash, LifecycleAction::Destroy);
    assert_eq!(parse(&d.to_xml(None)), Ok(d));
}

#[test]
fn defaults() {
    let d = parse(
        "<domain type='uml'><name>x</name><memory unit='MiB'>64</memory>\
         <os><type>uml</type><kernel>/k</kernel></os></domain>",
    )
    .expect("minimal");
    assert_eq!(d.memory_kib, 65536);
    assert_eq!(d.current_memory_kib, 65536);
    assert_eq!(d.vcpus, 1);
    assert_eq!(d.os.arch, host_arch());
    assert!(d.disks.is_empty() && d.consoles.is_empty() && d.serials.is_empty());
    // A generated UUID is version 4, variant 1.
    assert_eq!(d.uuid[6] >> 4, 4);
    assert_eq!(d.uuid[8] >> 6, 2);
    let again = parse(
        "<domain type='uml'><name>x</name><memory>1</memory>\
         <os><type>uml</type><kernel>/k</kernel></os></domain>",
    )
    .expect("minimal");
    assert_ne!(d.uuid, again.uuid);
}

#[test]
fn uuid_forms() {
    let u = parse_uuid(UUID).expect("uuid");
    assert_eq!(uuid_to_string(&u), UUID);
    assert_eq!(parse_uuid("B4433FC2A22EFFB30A3D9C173B395800"), Some(u));
    assert_eq!(
        parse_uuid("  b4433fc2-a22e-ffb3-0a3d-9c173b395800\n"),
        Some(u)
    );
    for bad in [
        "",
        "b4433fc2",
        "b4433fc2-a22e-ffb3-0a3d-9c173b3958000",
        "g4433fc2-a22e-ffb3-0a3d-9c173b395800",
        "-b4433fc2a22effb30a3d9c173b395800",
        "b4433fc2-a22e-ffb3-0a3d-9c173b39580ü",
    ] {
        assert_eq!(parse_uuid(bad), None, "{bad}");
    }
    refused(
        &dom("", "").replace(UUID, "nope"),
        VIR_ERR_XML_ERROR,
        "malformed uuid",
    );
}

#[test]
fn memory_units_follow_libvirts_table() {
    let cases: &[(&str, u64, u64)] = &[
        ("", 1, 1),
        ("b", 1024, 1),
        ("bytes", 2048, 2),
        ("byte", 1, 1), // rounded up to a whole KiB
        ("B", 1025, 2),
        ("k", 7, 7),
        ("KiB", 7, 7),
        ("KB", 1024, 1000),
        ("kb", 1000, 977),
        ("M", 64, 65536),
        ("MiB", 64, 65536),
        ("MB", 64, 62500),
        ("G", 1, 1 << 20),
        ("GiB", 2, 2 << 20),
        ("GB", 1, 976_563),
        ("T", 1, 1 << 30),
        ("TiB", 1, 1 << 30),
        ("TB", 1, 976_562_500),
        ("P", 1, 1 << 40),
        ("PiB", 1, 1 << 40),
        ("E", 1, 1 << 50),
        ("EiB", 1, 1 << 50),
        ("EB", 1, 976_562_500_000_000),
    ];
    for (unit, n, kib) in cases {
        let xml = dom("", "").replace(
            "<memory>65536</memory>",
            &format!("<memory unit='{unit}'>{n}</memory>"),
        );
        let d = parse(&xml).unwrap_or_else(|e| panic!("{unit}: {e}"));
        assert_eq!(d.memory_kib, *kib, "{n} {unit}");
    }
    for unit in ["KiBi", "x", "kk", "ib", "Mi"] {
        let xml = dom("", "").replace(
            "<memory>65536</memory>",
            &format!("<memory unit='{unit}'>1</memory>"),
        );
        refused(&xml, VIR_ERR_INVALID_ARG, "unknown suffix");
    }
    let big = dom("", "").replace(
        "<memory>65536</memory>",
        "<memory unit='EiB'>100000</memory>",
    );
    refused(&big, VIR_ERR_XML_ERROR, "too large");
    for bad in ["-1", "1.5", "", "0x10", "12abc", "+5"] {
        let xml = dom("", "").replace("65536</memory>", &format!("{bad}</memory>"));
        refused(&xml, VIR_ERR_XML_ERROR, "<memory>");
    }
    let xml = dom("", "").replace("65536</memory>", " 65536\n</memory>");
    assert_eq!(parse(&xml).map(|d| d.memory_kib), Ok(65536));
}

#[test]
fn current_memory() {
    let d = parse(&dom("<currentMemory unit='MiB'>32</currentMemory>", "")).expect("cur");
    assert_eq!((d.memory_kib, d.current_memory_kib), (65536, 32768));
    // libvirt: zero means "same as <memory>".
    let d = parse(&dom("<currentMemory>0</currentMemory>", "")).expect("cur 0");
    assert_eq!(d.current_memory_kib, 65536);
    refused(
        &dom("<currentMemory>65537</currentMemory>", ""),
        VIR_ERR_XML_ERROR,
        "must not exceed",
    );
    refused(
        &dom("", "").replace("<memory>65536</memory>", "<memory>0</memory>"),
        VIR_ERR_XML_ERROR,
        "Memory size",
    );
    refused(
        &dom("", "").replace("<memory>65536</memory>", ""),
        VIR_ERR_XML_ERROR,
        "Memory size",
    );
    refused(
        &dom("", "").replace("<memory>", "<memory dumpCore='on'>"),
        VIR_ERR_CONFIG_UNSUPPORTED,
        "'dumpCore' of <memory>",
    );
}

#[test]
fn vcpus() {
    refused(
        &dom("", "").replace("<vcpu>1</vcpu>", "<vcpu>2</vcpu>"),
        VIR_ERR_CONFIG_UNSUPPORTED,
        "uniprocessor",
    );
    refused(
        &dom("", "").replace("<vcpu>1</vcpu>", "<vcpu>0</vcpu>"),
        VIR_ERR_XML_ERROR,
        "vcpu",
    );
    refused(
        &dom("", "").replace("<vcpu>1</vcpu>", "<vcpu cpuset='0'>1</vcpu>"),
        VIR_ERR_CONFIG_UNSUPPORTED,
        "'cpuset' of <vcpu>",
    );
    refused(
        &dom("", "").replace("<vcpu>1</vcpu>", "<vcpu placement='auto'>1</vcpu>"),
        VIR_ERR_CONFIG_UNSUPPORTED,
        "placement='auto'",
    );
    let ok = dom("", "").replace(
        "<vcpu>1</vcpu>",
        "<vcpu placement='static' current='1'>1</vcpu>",
    );
    assert_eq!(parse(&ok).map(|d| d.vcpus), Ok(1));
    let no_vcpu = dom("", "").replace("<vcpu>1</vcpu>", "");
    assert_eq!(parse(&no_vcpu).map(|d| d.vcpus), Ok(1));
}

#[test]
fn domain_and_os_type() {
    refused(
        &dom("", "").replace("type='uml'", "type='kvm'"),
        VIR_ERR_INVALID_ARG,
        "could not find capabilities for",
    );
    refused(
        &dom("", "").replace("type='uml'", "type='kvm'"),
        VIR_ERR_INVALID_ARG,
        "domaintype=kvm",
    );
    refused(
        &dom("", "").replace(" type='uml'", ""),
        VIR_ERR_XML_ERROR,
        "missing domain type",
    );
    refused(
        &dom("", "").replace("<type>uml</type>", "<type>hvm</type>"),
        VIR_ERR_INVALID_ARG,
        "ostype=hvm",
    );
    refused(
        &dom("", "").replace("<type>uml</type>", "<type arch='s390x'>uml</type>"),
        VIR_ERR_INVALID_ARG,
        "arch=s390x",
    );
    refused(
        &dom("", "").replace("<type>uml</type>", "<type machine='pc'>uml</type>"),
        VIR_ERR_INVALID_ARG,
        "machine=pc",
    );
    let host = format!("<type arch='{}'>uml</type>", host_arch());
    assert!(parse(&dom("", "").replace("<type>uml</type>", &host)).is_ok());
    refused(
        &dom("", "").replace("<type>uml</type>", ""),
        VIR_ERR_XML_ERROR,
        "os <type>",
    );
    refused(
        "<domain type='uml'><name>t</name><memory>1</memory></domain>",
        VIR_ERR_XML_ERROR,
        "os <type>",
    );
    refused(
        &dom("", "").replace("<kernel>/usr/bin/linux.uml</kernel>", ""),
        VIR_ERR_XML_ERROR,
        "no kernel specified",
    );
    refused(
        &dom("", "").replace("<kernel>/usr/bin/linux.uml</kernel>", "<kernel/>"),
        VIR_ERR_XML_ERROR,
        "no kernel specified",
    );
    refused(
        &dom("", "").replace("/usr/bin/linux.uml", "linux.uml"),
        VIR_ERR_XML_ERROR,
        "absolute",
    );
    refused(
        "<vm type='uml'/>",
        VIR_ERR_XML_ERROR,
        "unexpected root element <vm>",
    );
}

#[test]
fn os_elements() {
    let xml = dom("", "").replace(
        "</kernel>",
        "</kernel><initrd>/boot/initrd.img</initrd><cmdline>init=/init quiet</cmdline>\
         <root>/dev/ubda</root>",
    );
    let d = parse(&xml).expect("os");
    assert_eq!(d.os.initrd, Some(PathBuf::from("/boot/initrd.img")));
    assert_eq!(d.os.cmdline.as_deref(), Some("init=/init quiet"));
    assert_eq!(d.os.root.as_deref(), Some("/dev/ubda"));
    for (inner, needle) in [
        ("<loader>/x</loader>", "<loader> in <os>"),
        ("<boot dev='hd'/>", "<boot> in <os>"),
        ("<nvram>/x</nvram>", "<nvram> in <os>"),
        ("<bootmenu enable='no'/>", "<bootmenu> in <os>"),
        ("<smbios mode='host'/>", "<smbios> in <os>"),
        ("<init>/sbin/init</init>", "<init> in <os>"),
    ] {
        let xml = dom("", "").replace("</kernel>", &format!("</kernel>{inner}"));
        refused(&xml, VIR_ERR_CONFIG_UNSUPPORTED, needle);
    }
    refused(
        &dom("", "").replace("<os>", "<os firmware='efi'>"),
        VIR_ERR_CONFIG_UNSUPPORTED,
        "'firmware' of <os>",
    );
    refused(
        &dom("", "").replace("</kernel>", "</kernel><root>/dev/ubda rw</root>"),
        VIR_ERR_CONFIG_UNSUPPORTED,
        "<root>",
    );
    refused(
        &dom("", "").replace("</kernel>", "</kernel><initrd>/boot/my initrd</initrd>"),
        VIR_ERR_CONFIG_UNSUPPORTED,
        "<initrd>",
    );
    refused(
        &dom("", "").replace("</kernel>", "</kernel><cmdline>quiet umid=evil</cmdline>"),
        VIR_ERR_CONFIG_UNSUPPORTED,
        "umid=evil",
    );
    refused(
        &dom("", "").replace("</kernel>", "</kernel><cmdline>ubd1=/etc/shadow</cmdline>"),
        VIR_ERR_CONFIG_UNSUPPORTED,
        "ubd1=",
    );
    refused(
        &dom("", "").replace("<kernel>", "<kernel><x/>"),
        VIR_ERR_CONFIG_UNSUPPORTED,
        "<x> in <kernel>",
    );
    // Empty optional elements mean "not set", as in libvirt.
    let xml = dom("", "").replace("</kernel>", "</kernel><cmdline/><initrd></initrd>");
    let d = parse(&xml).expect("empty");
    assert_eq!((d.os.cmdline, d.os.initrd), (None, None));
}

#[test]
fn names() {
    let with = |n: &str| dom("", "").replace("<name>t</name>", &format!("<name>{n}</name>"));
    refused(&with(""), VIR_ERR_NO_NAME, "missing name information");
    refused(
        &dom("", "").replace("<name>t</name>", ""),
        VIR_ERR_NO_NAME,
        "missing name",
    );
    refused(&with("a/b"), VIR_ERR_XML_ERROR, "cannot contain '/'");
    refused(&with(".hidden"), VIR_ERR_XML_ERROR, "cannot start with '.'");
    refused(&with(".."), VIR_ERR_XML_ERROR, "cannot start with '.'");
    refused(
        &with("a&#10;b"),
        VIR_ERR_XML_ERROR,
        "invalid char in name: 0x0a",
    );
    refused(
        &with("a&#127;b"),
        VIR_ERR_XML_ERROR,
        "invalid char in name: 0x7f",
    );
    refused(&with("a\u{85}b"), VIR_ERR_XML_ERROR, "invalid char in name");
    refused(&with(&"n".repeat(101)), VIR_ERR_XML_ERROR, "at most 100");
    assert!(parse(&with(&"n".repeat(100))).is_ok());
    refused(
        &dom("", "").replace("<name>t</name>", "<name>a</name><name>b</name>"),
        VIR_ERR_XML_ERROR,
        "more than one <name>",
    );
    // Anything else is a fine name; it is escaped on output.
    let d = parse(&with("web 1 &amp; &lt;x&gt; 'q' \"d\" ü")).expect("odd name");
    assert_eq!(d.name, "web 1 & <x> 'q' \"d\" ü");
    assert_eq!(parse(&d.to_xml(None)), Ok(d.clone()));
    assert_eq!(validate_name("ok-name_1.2"), Ok(()));
}

#[test]
fn title_description_metadata() {
    let top = "<title>Web &amp; mail</title><description>line1\nline2 &lt;b&gt;</description>\
               <metadata>\n  <app:info xmlns:app='http://example.org/app'>a &amp; b<x y='1'/>\
               </app:info>\n</metadata>";
    let d = parse(&dom(top, "")).expect("meta");
    assert_eq!(d.title.as_deref(), Some("Web & mail"));
    assert_eq!(d.description.as_deref(), Some("line1\nline2 <b>"));
    assert_eq!(
        d.metadata.as_deref(),
        Some("\n  <app:info xmlns:app='http://example.org/app'>a &amp; b<x y='1'/></app:info>\n")
    );
    let out = d.to_xml(None);
    assert!(out.contains(
        "<metadata>\n  <app:info xmlns:app='http://example.org/app'>a &amp; b<x y='1'/>\
         </app:info>\n</metadata>"
    ));
    assert!(out.contains("<description>line1\nline2 &lt;b&gt;</description>"));
    assert_eq!(parse(&out), Ok(d));
    refused(
        &dom("<title>a\nb</title>", ""),
        VIR_ERR_XML_ERROR,
        "title can't contain newlines",
    );
    let d = parse(&dom("<metadata>  </metadata><title/>", "")).expect("empty meta");
    assert_eq!((d.metadata, d.title), (None, None));
    refused(
        &dom("<metadata a='1'/>", ""),
        VIR_ERR_CONFIG_UNSUPPORTED,
        "'a' of <metadata>",
    );
    // Edited in memory to something that is not a fragment: caught before it is written.
    let mut d = parse(&dom("", "")).expect("plain");
    d.metadata = Some("<a>".into());
    assert_eq!(
        d.validate().map_err(|e| e.vir_code()),
        Err(VIR_ERR_XML_ERROR)
    );
}

#[test]
fn lifecycle_actions() {
    let top = "<on_poweroff>restart</on_poweroff><on_reboot>destroy</on_reboot>\
               <on_crash>restart</on_crash>";
    let d = parse(&dom(top, "")).expect("actions");
    assert_eq!(
        (d.on_poweroff, d.on_reboot, d.on_crash),
        (
            LifecycleAction::Restart,
            LifecycleAction::Destroy,
            LifecycleAction::Restart
        )
    );
    for (el, v) in [
        ("on_poweroff", "preserve"),
        ("on_reboot", "rename-restart"),
        ("on_crash", "coredump-destroy"),
        ("on_crash", "coredump-restart"),
        ("on_crash", "preserve"),
    ] {
        refused(
            &dom(&format!("<{el}>{v}</{el}>"), ""),
            VIR_ERR_CONFIG_UNSUPPORTED,
            &format!("<{el}> action '{v}'"),
        );
    }
    refused(
        &dom("<on_reboot>explode</on_reboot>", ""),
        VIR_ERR_XML_ERROR,
        "invalid value 'explode' for <on_reboot>",
    );
}

#[test]
fn unsupported_top_level_elements_are_named() {
    for (top, needle) in [
        ("<cpu mode='host-passthrough'/>", "<cpu> is not supported"),
        ("<features><acpi/></features>", "<acpi> in <features>"),
        ("<features foo='1'/>", "'foo' of <features>"),
        (
            "<clock offset='localtime'/>",
            "offset='localtime' on <clock>",
        ),
        (
            "<clock offset='utc'><timer name='rtc'/></clock>",
            "<timer> in <clock>",
        ),
        (
            "<memoryBacking><hugepages/></memoryBacking>",
            "<memoryBacking>",
        ),
        ("<iothreads>2</iothreads>", "<iothreads>"),
        ("<numatune><memory mode='strict'/></numatune>", "<numatune>"),
        ("<maxMemory slots='4'>1</maxMemory>", "<maxMemory>"),
        ("<cputune/>", "<cputune>"),
        (
            "<resource><partition>/m</partition></resource>",
            "<resource>",
        ),
        ("<bootloader>/usr/bin/pygrub</bootloader>", "<bootloader>"),
        ("<genid/>", "<genid>"),
        ("<qemu:commandline/>", "<qemu:commandline>"),
        ("<pm><suspend-to-mem enabled='yes'/></pm>", "enabled='yes'"),
        ("<pm><hibernate/></pm>", "<hibernate> in <pm>"),
        ("<seclabel type='dynamic' model='selinux'/>", "<seclabel>"),
        ("<sysinfo type='smbios'/>", "<sysinfo>"),
    ] {
        refused(&dom(top, ""), VIR_ERR_CONFIG_UNSUPPORTED, needle);
    }
    refused(
        &dom("", "").replace("<domain type='uml'>", "<domain type='uml' foo='bar'>"),
        VIR_ERR_CONFIG_UNSUPPORTED,
        "'foo' of <domain>",
    );
}

#[test]
fn harmless_elements_are_accepted() {
    let top = "<clock offset='utc'/><pm><suspend-to-mem enabled='no'/>\
               <suspend-to-disk enabled='no'/></pm><features/>\
               <seclabel type='none' model='none'/>";
    let devices = "<emulator>/usr/bin/linux.uml</emulator><memballoon model='none'/>\
                   <console type='pty' tty='/dev/pts/9'><source path='/dev/pts/9'/>\
                   <target type='uml' port='0'/><alias name='console0'/></console>\
                   <disk type='file'><source file='/i'/><target dev='ubd0'/>\
                   <backingStore/><alias name='ubd0'/></disk>";
    let xml = dom(top, devices).replace("<domain type='uml'>", "<domain type='uml' id='4'>");
    let d = parse(&xml).expect("harmless");
    assert_eq!(d.emulator, Some(PathBuf::from("/usr/bin/linux.uml")));
    assert_eq!(d.consoles[0].kind, CharKind::Pty);
    let plain = parse(&dom("", devices)).expect("plain");
    assert_eq!(d, plain);
}

#[test]
fn unsupported_devices_are_named() {
    for (dev, needle) in [
        (
            "<interface type='user'><mac address='52:54:00:11:22:33'/></interface>",
            "unsupported configuration: <interface> devices are not supported by the UML driver",
        ),
        ("<graphics type='vnc'/>", "<graphics> devices"),
        ("<video><model type='vga'/></video>", "<video> devices"),
        (
            "<hostdev mode='subsystem' type='pci'/>",
            "<hostdev> devices",
        ),
        ("<input type='mouse' bus='ps2'/>", "<input> devices"),
        ("<controller type='usb'/>", "<controller> devices"),
        ("<channel type='unix'/>", "<channel> devices"),
        ("<filesystem type='mount'/>", "<filesystem> devices"),
        ("<watchdog model='i6300esb'/>", "<watchdog> devices"),
        ("<rng model='virtio'/>", "<rng> devices"),
        ("<memballoon model='virtio'/>", "<memballoon> devices"),
        ("<parallel type='pty'/>", "<parallel> devices"),
        (
            "<disk type='file' device='cdrom'><source file='/i.iso'/><target dev='ubd0'/></disk>",
            "device='cdrom' on <disk>",
        ),
        (
            "<disk type='network'><source protocol='nbd'/><target dev='ubd0'/></disk>",
            "type='network' on <disk>",
        ),
        (
            "<disk><driver name='qemu' type='raw'/><source file='/i'/><target dev='ubd0'/></disk>",
            "name='qemu' on <driver>",
        ),
        (
            "<disk><driver type='qcow2'/><source file='/i'/><target dev='ubd0'/></disk>",
            "disk format 'qcow2'",
        ),
        (
            "<disk><driver type='raw' cache='none'/><source file='/i'/><target dev='ubd0'/></disk>",
            "'cache' of <driver>",
        ),
        (
            "<disk><source file='/i'/><target dev='vda' bus='virtio'/></disk>",
            "bus='virtio' on <target>",
        ),
        (
            "<disk><source file='/i'/><target dev='vda'/></disk>",
            "disk target 'vda'",
        ),
        (
            "<disk><source file='/i'/><target dev='ubd8'/></disk>",
            "disk target 'ubd8'",
        ),
        (
            "<disk><source file='/i'/><target dev='ubd0'/><boot order='1'/></disk>",
            "<boot> in <disk>",
        ),
        (
            "<disk><source file='/i'/><target dev='ubd0'/><serial>x</serial></disk>",
            "<serial> in <disk>",
        ),
        (
            "<disk><source file='/i'/><target dev='ubd0'/><address type='drive'/></disk>",
            "<address> in <disk>",
        ),
        (
            "<disk><source file='/i' startupPolicy='optional'/><target dev='ubd0'/></disk>",
            "'startupPolicy' of <source>",
        ),
        (
            "<disk><source file='/i'/><target dev='ubd0'/>\
             <backingStore type='file'><source file='/b'/></backingStore></disk>",
            "backing chains",
        ),
        (
            "<disk type='block'><source file='/dev/sdb'/><target dev='ubd0'/></disk>",
            "'file' of <source>",
        ),
        (
            "<disk><source file='/srv/a:b'/><target dev='ubd0'/></disk>",
            "COW",
        ),
        (
            "<disk><source file='/srv/a,b'/><target dev='ubd0'/></disk>",
            "COW",
        ),
        (
            "<disk><source file='/srv/my disk.img'/><target dev='ubd0'/></disk>",
            "no spaces",
        ),
        ("<console type='tcp'/>", "<console> type 'tcp'"),
        ("<serial type='unix'/>", "<serial> type 'unix'"),
        ("<console type='stdio'/>", "<console> type 'stdio'"),
        (
            "<console type='pty'><target type='serial' port='0'/></console>",
            "console target type 'serial'",
        ),
        (
            "<console type='pty'><target type='virtio'/></console>",
            "type='virtio' on <target>",
        ),
        (
            "<serial type='pty'><target type='isa-serial' port='0'/></serial>",
            "'type' of <target>",
        ),
        (
            "<serial type='pty'><target port='0'><model name='isa-serial'/></target></serial>",
            "<model> in <target>",
        ),
        (
            "<console type='pty'><protocol type='raw'/></console>",
            "<protocol> in <console>",
        ),
        (
            "<console type='pty'><target port='16'/></console>",
            "port 16",
        ),
        (
            "<console type='null'><source path='/x'/></console>",
            "'path' of <source>",
        ),
    ] {
        refused(&dom("", dev), VIR_ERR_CONFIG_UNSUPPORTED, needle);
    }
}

#[test]
fn disks() {
    let devs = "<disk type='file' device='disk'><driver name='uml' type='raw'/>\
                <source file='/srv/root.img'/><target dev='ubd0' bus='uml'/></disk>\
                <disk type='block'><source dev='/dev/vg/data'/><target dev='ubdb'/>\
                <readonly/><shareable/></disk>";
    let d = parse(&dom("", devs)).expect("disks");
    assert_eq!(d.disks.len(), 2);
    assert_eq!(d.disks[1].kind, DiskKind::Block);
    assert_eq!(d.disks[1].ubd_index(), Some(1));
    assert!(d.disks[1].readonly && d.disks[1].shareable);
    assert!(!d.disks[0].readonly && !d.disks[0].shareable);

    refused(
        &dom(
            "",
            "<disk><source file='/a'/><target dev='ubd1'/></disk>\
                  <disk><source file='/b'/><target dev='ubdb'/></disk>",
        ),
        VIR_ERR_XML_ERROR,
        "duplicates",
    );
    refused(
        &dom("", "<disk><target dev='ubd0'/></disk>"),
        VIR_ERR_XML_ERROR,
        "missing source",
    );
    refused(
        &dom("", "<disk><source file='/a'/></disk>"),
        VIR_ERR_XML_ERROR,
        "missing target",
    );
    refused(
        &dom(
            "",
            "<disk><source file='a.img'/><target dev='ubd0'/></disk>",
        ),
        VIR_ERR_XML_ERROR,
        "absolute",
    );
    let nine: String = (0..9)
        .map(|i| format!("<disk><source file='/d{i}'/><target dev='ubd{i}'/></disk>"))
        .collect();
    refused(&dom("", &nine), VIR_ERR_CONFIG_UNSUPPORTED, "ubd");
    let eight: String = (0..8)
        .map(|i| format!("<disk><source file='/d{i}'/><target dev='ubd{i}'/></disk>"))
        .collect();
    assert_eq!(parse(&dom("", &eight)).map(|d| d.disks.len()), Ok(8));
    for (t, n) in [("ubd0", Some(0)), ("ubd7", Some(7)), ("ubdh", Some(7))] {
        assert_eq!(ubd_index(t), n);
    }
    for t in ["ubd", "ubd8", "ubdi", "ubd00", "ubd10", "hda", "UBD0"] {
        assert_eq!(ubd_index(t), None, "{t}");
    }
}

#[test]
fn consoles_and_serials() {
    let devs = "<serial type='pty'/><serial type='file'><source path='/var/log/g.ttyS1'/>\
                <target port='1'/></serial>\
                <console type='pty'><target port='2'/></console><console type='null'/>\
                <console type='pty'><log file='/var/log/g.con' append='on'/></console>";
    let d = parse(&dom("", devs)).expect("chars");
    let ports: Vec<u32> = d.consoles.iter().map(|c| c.target_port).collect();
    assert_eq!(ports, vec![2, 0, 1]);
    assert_eq!(d.serials[0].target_port, 0);
    assert_eq!(
        d.serials[1].kind,
        CharKind::File(PathBuf::from("/var/log/g.ttyS1"))
    );
    assert_eq!(
        d.consoles[2].log,
        Some(CharLog {
            file: PathBuf::from("/var/log/g.con"),
            append: true
        })
    );
    assert_eq!(d.consoles[1].uml_channel(), "null");
    assert_eq!(d.consoles[0].uml_channel(), "pts");
    assert_eq!(d.serials[1].uml_channel(), "pts");
    let logged_null = CharDev {
        kind: CharKind::Null,
        target_port: 0,
        log: Some(CharLog {
            file: "/l".into(),
            append: false,
        }),
    };
    assert_eq!(logged_null.uml_channel(), "pts");

    let aliases = d.console_aliases();
    let names: Vec<(&str, &str)> = aliases
        .iter()
        .map(|a| (a.alias.as_str(), a.uml_device.as_str()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("console0", "con2"),
            ("console1", "con0"),
            ("console2", "con1"),
            ("serial0", "ssl0"),
            ("serial1", "ssl1"),
        ]
    );
    assert_eq!(
        d.find_console(None).map(|a| a.alias),
        Some("console0".into())
    );
    let s1 = d.find_console(Some("serial1")).expect("serial1");
    assert_eq!(s1.family, CharFamily::Serial);
    assert_eq!(d.char_dev(&s1), Some(&d.serials[1]));
    assert_eq!(d.find_console(Some("console9")), None);
    let only_serial = parse(&dom("", "<serial type='pty'/>")).expect("serial");
    assert_eq!(
        only_serial.find_console(None).map(|a| a.uml_device),
        Some("ssl0".into())
    );

    refused(
        &dom(
            "",
            "<console type='pty'><target port='0'/></console>\
             <console type='pty'><target port='0'/></console>",
        ),
        VIR_ERR_XML_ERROR,
        "port 0",
    );
    refused(
        &dom("", "<serial type='file'/>"),
        VIR_ERR_XML_ERROR,
        "missing <source path",
    );
    refused(
        &dom("", "<serial type='file'><source path='rel'/></serial>"),
        VIR_ERR_XML_ERROR,
        "absolute",
    );
    refused(
        &dom("", "<console><log file='/l' append='maybe'/></console>"),
        VIR_ERR_XML_ERROR,
        "append",
    );
    refused(
        &dom("", "<console><log/></console>"),
        VIR_ERR_XML_ERROR,
        "<log> needs a file",
    );
    refused(
        &dom("", "<console><target port='x'/></console>"),
        VIR_ERR_XML_ERROR,
        "target port",
    );
    let sixteen: String = (0..16).map(|_| "<serial type='null'/>").collect();
    assert_eq!(parse(&dom("", &sixteen)).map(|d| d.serials.len()), Ok(16));
    refused(
        &dom("", &format!("{sixteen}<serial type='null'/>")),
        VIR_ERR_CONFIG_UNSUPPORTED,
        "port 16",
    );
    // No type means pty, as in libvirt.
    let d = parse(&dom("", "<console/>")).expect("console");
    assert_eq!(d.consoles[0].kind, CharKind::Pty);
}

#[test]
fn live_xml() {
    let devs = "<disk><source file='/i'/><target dev='ubd0'/></disk>\
                <serial type='pty'/><console type='pty'/><console type='file'>\
                <source path='/var/log/c1'/></console>";
    let d = parse(&dom("", devs)).expect("live");
    let live = LiveXml {
        id: 7,
        pty_paths: vec![
            ("console0".into(), PathBuf::from("/dev/pts/3")),
            ("serial0".into(), PathBuf::from("/dev/pts/4")),
        ],
    };
    let x = d.to_xml(Some(&live));
    assert!(x.starts_with("<domain type='uml' id='7'>\n"), "{x}");
    assert!(x.contains(
        "    <console type='pty' tty='/dev/pts/3'>\n      <source path='/dev/pts/3'/>\n      \
         <target type='uml' port='0'/>\n      <alias name='console0'/>\n    </console>\n"
    ));
    assert!(x.contains(
        "    <serial type='pty'>\n      <source path='/dev/pts/4'/>\n      \
         <target port='0'/>\n      <alias name='serial0'/>\n    </serial>\n"
    ));
    assert!(x.contains(
        "    <console type='file'>\n      <source path='/var/log/c1'/>\n      \
         <target type='uml' port='1'/>\n      <alias name='console1'/>\n    </console>\n"
    ));
    // Live XML fed back (`virsh dumpxml` then `define`) gives the same definition.
    assert_eq!(parse(&x), Ok(d.clone()));
    let inactive = d.to_xml(None);
    assert!(
        !inactive.contains("alias") && !inactive.contains("/dev/pts") && !inactive.contains(" id=")
    );
}

#[test]
fn fixed_point_with_awkward_text() {
    let top = "<title>t &apos;&quot;</title><description>a\r\nb\tc &amp;&#13;</description>";
    let devs = "<disk><source file='/srv/&amp;&lt;&apos;&gt;.img'/><target dev='ubd0'/>\
                </disk><serial type='file'><source path='/log/ü&amp;y'/>\
                <log file='/l/&quot;q&quot;'/></serial>";
    let xml = dom(top, devs).replace(
        "</kernel>",
        "</kernel><cmdline>init=/init \"x=a b\" &lt;&gt;</cmdline>",
    );
    let d = parse(&xml).expect("awkward");
    assert_eq!(d.description.as_deref(), Some("a\r\nb\tc &\r"));
    assert_eq!(d.serials[0].kind, CharKind::File(PathBuf::from("/log/ü&y")));
    let out = d.to_xml(None);
    assert_eq!(parse(&out), Ok(d.clone()));
    assert_eq!(d.to_xml(None), parse(&out).expect("again").to_xml(None));
}

#[test]
fn hostile_documents() {
    // Malformed: libvirt's XML_DETAIL, with a line number.
    let e = err("<domain type='uml'>\n<name>x</nam>\n</domain>");
    assert_eq!(e.vir_code(), VIR_ERR_XML_DETAIL);
    assert!(e.to_string().starts_with("(domain_definition):2: "), "{e}");
    for bad in [
        "",
        "   ",
        "<domain type='uml'>",
        "<domain type='uml'><name>x</name>",
        "</domain>",
        "<domain type='uml'/><domain type='uml'/>",
        "<domain type='uml'/>trailing",
        "text<domain type='uml'/>",
        "<domain type='uml' type='uml'/>",
        "<domain type='uml'>&</domain>",
        "<domain type='uml'><name>a&#0;</name></domain>",
        "<domain type='uml'><name>a&#1;</name></domain>",
        "<domain type='uml'><name>a\u{1}</name></domain>",
        "<domain type='uml'><!-- \u{8} --></domain>",
        "<domain type='uml'><name a='&#2;'/></domain>",
    ] {
        assert_eq!(code(bad), VIR_ERR_XML_DETAIL, "{bad:?}: {:?}", parse(bad));
    }
    refused(
        "<!DOCTYPE domain [<!ENTITY x 'y'>]><domain type='uml'><name>&x;</name></domain>",
        VIR_ERR_XML_ERROR,
        "DOCTYPE",
    );
    refused(
        "<!DOCTYPE domain SYSTEM 'file:///etc/passwd'><domain type='uml'/>",
        VIR_ERR_XML_ERROR,
        "DOCTYPE",
    );
    refused(
        &dom("", "").replace("<name>t</name>", "<name>&lol;</name>"),
        VIR_ERR_XML_ERROR,
        "'&lol;' is not defined",
    );
    refused(
        &dom(
            "",
            "<disk><source file='&xxe;'/><target dev='ubd0'/></disk>",
        ),
        VIR_ERR_XML_ERROR,
        "'&xxe;' is not defined",
    );
    refused(
        "<?xml version='1.0' encoding='ISO-8859-1'?><domain type='uml'/>",
        VIR_ERR_XML_ERROR,
        "encoding",
    );
    let ok_decl = format!("<?xml version='1.0' encoding='UTF-8'?>\n{}", dom("", ""));
    assert!(parse(&ok_decl).is_ok());
    let bom = format!("\u{feff}{}", dom("", ""));
    assert!(parse(&bom).is_ok());

    // Size cap, before any parsing.
    let mut huge = dom("<description>", "");
    huge = huge.replace(
        "<description>",
        &format!("<description>{}</description>", "a".repeat(MAX_XML_BYTES)),
    );
    refused(&huge, VIR_ERR_XML_ERROR, "bytes");

    // Depth cap: 64 levels are read (and metadata keeps them), 65 are not.
    let nest = |n: usize| format!("{}{}", "<m>".repeat(n), "</m>".repeat(n));
    let deep_ok = dom(&format!("<metadata>{}</metadata>", nest(62)), "");
    assert!(parse(&deep_ok).is_ok(), "{:?}", parse(&deep_ok));
    let too_deep = dom(&format!("<metadata>{}</metadata>", nest(63)), "");
    refused(&too_deep, VIR_ERR_XML_ERROR, "nested more than 64");
    refused(&nest(100_000), VIR_ERR_XML_ERROR, "nested");

    // Element count cap.
    let many = dom(
        &format!("<metadata>{}</metadata>", "<a/>".repeat(MAX_XML_ELEMENTS)),
        "",
    );
    refused(&many, VIR_ERR_XML_ERROR, "elements");

    // Stray text in element-only places.
    refused(
        &dom("", "").replace("<os>", "<os>boot"),
        VIR_ERR_XML_ERROR,
        "unexpected text 'boot' in <os>",
    );
}

#[test]
fn error_display_is_libvirt_style() {
    assert_eq!(
        DefError::Unsupported("<interface> devices are not supported by the UML driver".into())
            .to_string(),
        "unsupported configuration: <interface> devices are not supported by the UML driver"
    );
    assert_eq!(DefError::Xml("x".into()).to_string(), "XML error: x");
    assert_eq!(
        DefError::InvalidArg("x".into()).to_string(),
        "invalid argument: x"
    );
    assert_eq!(DefError::NoName.to_string(), "missing name information");
    assert_eq!(DefError::Internal("x".into()).vir_code(), 1);
    assert_eq!(DefError::NoName.vir_code(), 21);
    assert_eq!(DefError::Xml(String::new()).vir_code(), 27);
    assert_eq!(DefError::Unsupported(String::new()).vir_code(), 67);
    assert_eq!(DefError::InvalidArg(String::new()).vir_code(), 8);
    assert_eq!(
        DefError::Syntax {
            line: 3,
            message: "m".into()
        }
        .vir_code(),
        35
    );
}

#[test]
fn validate_catches_in_memory_edits() {
    let mut d = parse(&dom("", "<console/>")).expect("base");
    d.current_memory_kib = d.memory_kib + 1;
    assert_eq!(
        d.validate().map_err(|e| e.vir_code()),
        Err(VIR_ERR_XML_ERROR)
    );
    let mut d = parse(&dom("", "<console/>")).expect("base");
    d.vcpus = 2;
    assert_eq!(
        d.validate().map_err(|e| e.vir_code()),
        Err(VIR_ERR_CONFIG_UNSUPPORTED)
    );
    let mut d = parse(&dom("", "<console/>")).expect("base");
    d.on_reboot = LifecycleAction::Preserve;
    assert_eq!(
        d.validate().map_err(|e| e.vir_code()),
        Err(VIR_ERR_CONFIG_UNSUPPORTED)
    );
    let mut d = parse(&dom("", "<console/>")).expect("base");
    d.name = "a/b".into();
    assert_eq!(
        d.validate().map_err(|e| e.vir_code()),
        Err(VIR_ERR_XML_ERROR)
    );
}
