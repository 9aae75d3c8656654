//! Facts about the host, read from /proc and /sys: node info, memory and CPU statistics,
//! hostname, and the capabilities XML. Nothing here is cached that can change.

use std::path::Path;

/// What NODE_GET_INFO reports.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInfo {
    pub model: String,
    pub memory_kib: u64,
    pub cpus: u32,
    pub mhz: u32,
    pub nodes: u32,
    pub sockets: u32,
    pub cores: u32,
    pub threads: u32,
}

pub fn machine_arch() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.machine().to_string_lossy().into_owned())
        .unwrap_or_else(|_| std::env::consts::ARCH.to_string())
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// Reads a `Key:   123 kB` field of /proc/meminfo, in KiB.
pub fn meminfo_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn online_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

fn cpu_mhz(cpuinfo: &str) -> u32 {
    cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "cpu MHz").then(|| v.trim().parse::<f64>().ok())?
        })
        .map(|m| m as u32)
        .filter(|m| *m > 0)
        .unwrap_or(1000)
}

pub fn node_info() -> NodeInfo {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpus = online_cpus();
    NodeInfo {
        model: machine_arch(),
        // virt-manager drops a connection that reports zero memory or CPUs.
        memory_kib: meminfo_kib(&meminfo, "MemTotal").unwrap_or(1).max(1),
        cpus,
        mhz: cpu_mhz(&cpuinfo),
        nodes: 1,
        sockets: 1,
        cores: cpus,
        threads: 1,
    }
}

/// NODE_GET_MEMORY_STATS fields, in KiB, named as libvirt names them.
pub fn memory_stats() -> Vec<(&'static str, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    [
        ("total", "MemTotal"),
        ("free", "MemFree"),
        ("buffers", "Buffers"),
        ("cached", "Cached"),
    ]
    .into_iter()
    .map(|(name, key)| (name, meminfo_kib(&text, key).unwrap_or(0)))
    .collect()
}

/// NODE_GET_CPU_STATS fields in nanoseconds, for one CPU or (`cpu` < 0) all of them.
pub fn cpu_stats(cpu: i32) -> Option<Vec<(&'static str, u64)>> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let label = if cpu < 0 {
        "cpu".to_string()
    } else {
        format!("cpu{cpu}")
    };
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(label.as_str()))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // /proc/stat counts USER_HZ ticks (100 per second on Linux).
    let ns = |i: usize| v.get(i).copied().unwrap_or(0) * 10_000_000;
    Some(vec![
        ("kernel", ns(2)),
        ("user", ns(0) + ns(1)),
        ("idle", ns(3)),
        ("iowait", ns(4)),
    ])
}

/// The host's UUID for the capabilities: the machine id, formatted as a UUID.
pub fn host_uuid() -> String {
    let id = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    let id = id.trim();
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        format!(
            "{}-{}-{}-{}-{}",
            &id[..8],
            &id[8..12],
            &id[12..16],
            &id[16..20],
            &id[20..]
        )
    } else {
        "00000000-0000-0000-0000-000000000000".into()
    }
}

/// `linux.uml --version` prints e.g. `6.1.176`; libvirt encodes it as major·10⁶+minor·10³+micro.
pub fn uml_version(kernel: &Path) -> Option<u64> {
    let out = std::process::Command::new(kernel)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    parse_version(String::from_utf8_lossy(&out.stdout).trim())
}

pub fn parse_version(text: &str) -> Option<u64> {
    let word = text.split_whitespace().find(|w| w.contains('.'))?;
    let mut parts = word
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u64>().ok());
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    let micro = parts.next().flatten().unwrap_or(0);
    Some(major * 1_000_000 + minor.min(999) * 1000 + micro.min(999))
}

/// The capabilities document: host CPU arch and topology, and one `uml` guest type.
pub fn capabilities_xml() -> String {
    let arch = machine_arch();
    let info = node_info();
    let wordsize = if arch.ends_with("64") { 64 } else { 32 };
    let mut cpus = String::new();
    for id in 0..info.cpus {
        cpus.push_str(&format!(
            "            <cpu id='{id}' socket_id='0' die_id='0' core_id='{id}' siblings='{id}'/>\n"
        ));
    }
    format!(
        "<capabilities>

  <host>
    <uuid>{uuid}</uuid>
    <cpu>
      <arch>{arch}</arch>
      <topology sockets='1' dies='1' cores='{ncpu}' threads='1'/>
      <pages unit='KiB' size='4'/>
    </cpu>
    <power_management/>
    <iommu support='no'/>
    <migration_features/>
    <topology>
      <cells num='1'>
        <cell id='0'>
          <memory unit='KiB'>{mem}</memory>
          <cpus num='{ncpu}'>
{cpus}          </cpus>
        </cell>
      </cells>
    </topology>
    <secmodel>
      <model>none</model>
      <doi>0</doi>
    </secmodel>
  </host>

  <guest>
    <os_type>uml</os_type>
    <arch name='{arch}'>
      <wordsize>{wordsize}</wordsize>
      <domain type='uml'/>
    </arch>
  </guest>

</capabilities>
",
        uuid = host_uuid(),
        ncpu = info.cpus,
        mem = info.memory_kib,
    )
}

/// The domain capabilities for `uml` guests: what the domain XML parser accepts.
pub fn domain_capabilities_xml(kernel: &Path, arch: &str) -> String {
    format!(
        "<domainCapabilities>
  <path>{kernel}</path>
  <domain>uml</domain>
  <arch>{arch}</arch>
  <vcpu max='1'/>
  <os supported='yes'>
    <enum name='firmware'/>
    <loader supported='no'/>
  </os>
  <cpu>
    <mode name='host-passthrough' supported='no'/>
    <mode name='maximum' supported='no'/>
    <mode name='host-model' supported='no'/>
    <mode name='custom' supported='no'/>
  </cpu>
  <devices>
    <disk supported='yes'>
      <enum name='diskDevice'>
        <value>disk</value>
      </enum>
      <enum name='bus'>
        <value>uml</value>
      </enum>
      <enum name='model'/>
    </disk>
    <graphics supported='no'/>
    <video supported='no'/>
    <hostdev supported='no'/>
    <rng supported='no'/>
    <filesystem supported='no'/>
    <tpm supported='no'/>
    <redirdev supported='no'/>
    <channel supported='no'/>
    <crypto supported='no'/>
  </devices>
  <features>
    <gic supported='no'/>
    <vmcoreinfo supported='no'/>
    <genid supported='no'/>
    <backingStoreInput supported='no'/>
    <backup supported='no'/>
    <sev supported='no'/>
    <sgx supported='no'/>
  </features>
</domainCapabilities>
",
        kernel = crate::xml_escape(&kernel.display().to_string()),
        arch = crate::xml_escape(arch),
    )
}

/// GET_SYSINFO: an SMBIOS-style summary from what the host exposes.
pub fn sysinfo_xml() -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    let entry = |name: &str, value: &str| {
        format!(
            "    <entry name='{}'>{}</entry>\n",
            name,
            crate::xml_escape(value)
        )
    };
    let mut s = String::from("<sysinfo type='smbios'>\n  <system>\n");
    s.push_str(&entry(
        "manufacturer",
        &read("/sys/class/dmi/id/sys_vendor"),
    ));
    s.push_str(&entry("product", &read("/sys/class/dmi/id/product_name")));
    s.push_str(&entry("uuid", &host_uuid()));
    s.push_str("  </system>\n  <processor>\n");
    s.push_str(&entry("version", &model));
    s.push_str("  </processor>\n</sysinfo>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("6.1.176"), Some(6_001_176));
        assert_eq!(parse_version("5.10"), Some(5_010_000));
        assert_eq!(parse_version("Linux 6.1.0-rc1"), Some(6_001_000));
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn meminfo_fields() {
        let t = "MemTotal:       24000000 kB\nMemFree:  100 kB\n";
        assert_eq!(meminfo_kib(t, "MemTotal"), Some(24_000_000));
        assert_eq!(meminfo_kib(t, "MemFree"), Some(100));
        assert_eq!(meminfo_kib(t, "Mem"), None);
    }

    #[test]
    fn node_info_is_never_zero() {
        let n = node_info();
        assert!(n.memory_kib > 0 && n.cpus > 0 && n.mhz > 0);
        assert_eq!(n.nodes * n.sockets * n.cores * n.threads, n.cpus);
    }
}
