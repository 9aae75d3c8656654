//! `dir` storage pools and their volumes through the stock virsh and python3-libvirt:
//! define/build/start/autostart/info/XML, raw volumes with units, the refusals (other pool
//! types, names with `/`, duplicates), persistence across a daemon restart in libvirtd's
//! layout, a volume booted as a guest's ubd disk, and pool events.

mod support;

use std::path::Path;
use std::time::Duration;

use support::{guest_image, python_ok, wait_until, Daemon};

fn virsh_err(d: &Daemon, args: &[&str]) -> String {
    let out = d.virsh(args);
    assert!(!out.status.success(), "virsh {args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn field<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .map(|v| v.trim_start_matches(':').trim())
        })
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[test]
fn pool_and_volume_lifecycle_survives_a_restart() {
    let mut d = Daemon::start();
    let root = d.root.path().to_path_buf();
    let target = root.join("images/pool1");
    let t = target.display().to_string();
    d.virsh_ok(&["pool-define-as", "pool1", "dir", "--target", &t]);
    let conf = root.join("etc/libvirt/storage/pool1.xml");
    assert!(conf.exists(), "definition saved where libvirtd keeps it");
    // Not built yet: starting fails with libvirt's system error.
    assert!(virsh_err(&d, &["pool-start", "pool1"]).contains("cannot open directory"));
    d.virsh_ok(&["pool-build", "pool1"]);
    assert!(target.is_dir());
    d.virsh_ok(&["pool-start", "pool1"]);
    d.virsh_ok(&["pool-autostart", "pool1"]);
    assert!(root
        .join("etc/libvirt/storage/autostart/pool1.xml")
        .exists());

    let info = d.virsh_ok(&["pool-info", "pool1"]);
    assert_eq!(field(&info, "State"), "running");
    assert_eq!(field(&info, "Persistent"), "yes");
    assert_eq!(field(&info, "Autostart"), "yes");
    let xml = d.virsh_ok(&["pool-dumpxml", "pool1"]);
    assert!(xml.contains("<pool type='dir'>") && xml.contains(&format!("<path>{t}</path>")));
    assert!(xml.contains("<mode>0711</mode>"), "{xml}");

    // A sparse raw volume, sizes with units.
    d.virsh_ok(&[
        "vol-create-as",
        "pool1",
        "disk.img",
        "64M",
        "--allocation",
        "1M",
        "--format",
        "raw",
    ]);
    let vol = target.join("disk.img");
    let m = std::fs::metadata(&vol).unwrap();
    assert_eq!(m.len(), 64 << 20);
    let vinfo = d.virsh_ok(&["vol-info", "disk.img", "--pool", "pool1", "--bytes"]);
    assert_eq!(field(&vinfo, "Type"), "file");
    assert_eq!(field(&vinfo, "Capacity"), format!("{} bytes", 64 << 20));
    let vpath = vol.display().to_string();
    assert_eq!(
        d.virsh_ok(&["vol-path", "disk.img", "--pool", "pool1"])
            .trim(),
        vpath
    );
    assert_eq!(d.virsh_ok(&["vol-pool", &vpath]).trim(), "pool1");
    let vxml = d.virsh_ok(&["vol-dumpxml", &vpath]);
    assert!(vxml.contains("<format type='raw'/>") && vxml.contains("<mode>0600</mode>"));
    assert!(d.virsh_ok(&["vol-list", "pool1"]).contains("disk.img"));

    // Refusals, with libvirt's wording.
    assert!(
        virsh_err(&d, &["vol-create-as", "pool1", "../escape", "1M"])
            .contains("cannot contain '/'")
    );
    assert!(!root.join("images/escape").exists());
    assert!(virsh_err(&d, &["vol-create-as", "pool1", "disk.img", "1M"])
        .contains("storage volume already exists"));
    assert!(virsh_err(
        &d,
        &[
            "vol-create-as",
            "pool1",
            "q.qcow2",
            "1M",
            "--format",
            "qcow2"
        ]
    )
    .contains("unsupported configuration"));
    let e = virsh_err(
        &d,
        &["pool-define-as", "lvm", "logical", "--source-name", "vg"],
    );
    assert!(
        e.contains("unsupported configuration") && e.contains("'logical'"),
        "{e}"
    );
    assert!(
        virsh_err(&d, &["pool-define-as", "clash", "dir", "--target", &t])
            .contains("Storage source conflict")
    );
    assert!(virsh_err(&d, &["pool-undefine", "pool1"]).contains("still active"));
    assert!(virsh_err(&d, &["pool-info", "nosuch"]).contains("Storage pool not found"));

    // A restart finds the pool defined, running, autostarted, with its volume.
    assert!(d.stop(), "daemon stopped cleanly");
    d.spawn();
    let info = d.virsh_ok(&["pool-info", "pool1"]);
    assert_eq!(field(&info, "State"), "running");
    assert_eq!(field(&info, "Autostart"), "yes");
    assert!(d.virsh_ok(&["vol-list", "pool1"]).contains("disk.img"));

    d.virsh_ok(&["vol-delete", "disk.img", "--pool", "pool1"]);
    assert!(!vol.exists());
    d.virsh_ok(&["pool-destroy", "pool1"]);
    assert!(virsh_err(&d, &["vol-list", "pool1"]).contains("is not active"));
    d.virsh_ok(&["pool-autostart", "pool1", "--disable"]);
    d.virsh_ok(&["pool-undefine", "pool1"]);
    assert!(!conf.exists());
    assert!(target.is_dir(), "undefine leaves the files");
    d.virsh_ok(&["pool-list", "--all"]);
    assert!(!d.virsh_ok(&["pool-list", "--all"]).contains("pool1"));
}

#[test]
fn a_volume_boots_as_a_ubd_disk() {
    let d = Daemon::start();
    let root = d.root.path().to_path_buf();
    let img = guest_image(&root, "seed");
    let size = std::fs::metadata(&img).unwrap().len();
    let target = root.join("vols");
    d.virsh_ok(&[
        "pool-create-as",
        "vols",
        "dir",
        "--target",
        &target.display().to_string(),
        "--build",
    ]);
    let persistent = d.virsh_ok(&["pool-info", "vols"]);
    assert_eq!(field(&persistent, "Persistent"), "no");
    d.virsh_ok(&[
        "vol-create-as",
        "vols",
        "root.img",
        &format!("{size}b"),
        "--allocation",
        "0",
    ]);
    let vpath = d
        .virsh_ok(&["vol-path", "root.img", "--pool", "vols"])
        .trim()
        .to_string();
    // Fill the volume with the guest's root file system, in place.
    let st = std::process::Command::new("dd")
        .args([
            &format!("if={}", img.display()),
            &format!("of={vpath}"),
            "conv=notrunc,sparse",
            "bs=1M",
            "status=none",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let xml = support::guest_xml("onvol", Path::new(&vpath));
    let f = root.join("onvol.xml");
    std::fs::write(&f, xml).unwrap();
    d.virsh_ok(&["define", &f.display().to_string()]);
    d.virsh_ok(&["start", "onvol"]);
    // The guest's own block layer read its root file system from the volume.
    let read = wait_until(Duration::from_secs(20), || {
        let s = d.virsh_ok(&["domstats", "onvol", "--block"]);
        s.contains(&format!("block.0.path={vpath}"))
            && s.lines()
                .find_map(|l| l.trim().strip_prefix("block.0.rd.bytes="))
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|v| v > 0)
    });
    assert!(read, "{}", d.virsh_ok(&["domstats", "onvol"]));
    d.virsh_ok(&["destroy", "onvol"]);
    // A transient pool goes away when stopped; its files stay.
    d.virsh_ok(&["pool-destroy", "vols"]);
    assert!(Path::new(&vpath).exists());
    assert!(!d.virsh_ok(&["pool-list", "--all"]).contains("vols"));
}

/// Pool lifecycle and refresh events reach a python3-libvirt client (368/370/373).
#[test]
fn pool_events_reach_python() {
    let d = Daemon::start();
    let target = d.root.path().join("evpool");
    let script = format!(
        r#"
import libvirt, os, threading, time
libvirt.virEventRegisterDefaultImpl()
c = libvirt.open(os.environ["URI"])
seen = []
def lc(conn, pool, event, detail, opaque):
    seen.append(("lifecycle", pool.name(), event))
def rf(conn, pool, opaque):
    seen.append(("refresh", pool.name()))
c.storagePoolEventRegisterAny(None, libvirt.VIR_STORAGE_POOL_EVENT_ID_LIFECYCLE, lc, None)
c.storagePoolEventRegisterAny(None, libvirt.VIR_STORAGE_POOL_EVENT_ID_REFRESH, rf, None)
def loop():
    while True:
        libvirt.virEventRunDefaultImpl()
threading.Thread(target=loop, daemon=True).start()
p = c.storagePoolDefineXML("<pool type='dir'><name>ev</name><target><path>{}</path></target></pool>")
p.build(0)
p.create(0)
p.refresh(0)
p.destroy()
p.undefine()
end = time.time() + 10
while time.time() < end and len(seen) < 6:
    time.sleep(0.05)
for s in seen:
    print(*s)
"#,
        target.display()
    );
    let out = python_ok(&d.tcp_uri(), &script);
    let want = [
        "lifecycle ev 0", // DEFINED
        "lifecycle ev 4", // CREATED (built)
        "lifecycle ev 2", // STARTED
        "refresh ev",
        "lifecycle ev 3", // STOPPED
        "lifecycle ev 1", // UNDEFINED
    ];
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got, want, "{out}");
}
