//! Figures for the statistics calls (`virConnectGetAllDomainStats`, `virDomainMemoryStats`,
//! `virDomainBlockStats`): what the host sees of a guest's processes, and what the guest
//! says about itself through mconsole (`proc meminfo`, `proc vmstat`, `proc diskstats`).
//!
//! Nothing here is invented. A figure that cannot be had (the guest does not answer in
//! time, the file is missing) is `None` and the caller leaves it out, as libvirt leaves
//! out what a hypervisor does not report.
//!
//! A guest that does not answer within [`GUEST_QUERY_TIMEOUT`] is not asked again for
//! [`STUCK_BACKOFF`], so a stuck guest costs one bounded wait per backoff period, never
//! one per poll. Different domains are queried concurrently.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use virtumld_uml::domain::DiskKind;
use virtumld_uml::mconsole::Mconsole;
use virtumld_uml::process::Guest;

use super::state::StateReason;
use super::{DomRef, DomainObj, Driver};

/// Longest a statistics call waits for one guest's mconsole.
pub const GUEST_QUERY_TIMEOUT: Duration = Duration::from_millis(800);
/// How long a guest that let a query time out is left alone.
pub const STUCK_BACKOFF: Duration = Duration::from_secs(15);
/// The guest kernel's page size (UML on x86-64), for `/proc/vmstat` page counts.
const GUEST_PAGE_KIB: u64 = 4;

/// What the guest's `/proc/meminfo` and `/proc/vmstat` say, in KiB (faults are counts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestMemory {
    /// MemTotal: the memory the guest kernel manages.
    pub total_kib: u64,
    /// MemFree.
    pub free_kib: u64,
    /// MemAvailable (kernels since 3.14).
    pub available_kib: Option<u64>,
    /// Buffers + Cached.
    pub caches_kib: u64,
    /// pswpin/pswpout in KiB, pgmajfault/pgfault counts (from vmstat, when it answered).
    pub swap_in_kib: Option<u64>,
    pub swap_out_kib: Option<u64>,
    pub major_faults: Option<u64>,
    pub minor_faults: Option<u64>,
    /// When the guest was asked (seconds since the epoch).
    pub sampled_at: u64,
}

/// One row of the guest's `/proc/diskstats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskIo {
    pub rd_reqs: u64,
    pub rd_bytes: u64,
    pub rd_time_ns: u64,
    pub wr_reqs: u64,
    pub wr_bytes: u64,
    pub wr_time_ns: u64,
    /// Flush requests and time (kernels since 5.5 print them).
    pub fl_reqs: Option<u64>,
    pub fl_time_ns: Option<u64>,
}

/// One disk of the running definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskStats {
    /// `<target dev>` as written.
    pub target: String,
    pub source: PathBuf,
    /// Logical size of the backing file or device, in bytes.
    pub capacity: Option<u64>,
    /// Bytes the host actually stores for it (a sparse file stores less).
    pub physical: Option<u64>,
    /// From the guest's block layer; None when the guest did not say.
    pub io: Option<DiskIo>,
}

/// CPU time of the whole guest process tree, reaped children included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub total_ns: u64,
    pub user_ns: u64,
    pub system_ns: u64,
}

/// Everything the statistics calls report about one domain.
#[derive(Debug, Clone)]
pub struct DomStats {
    pub dom: DomRef,
    pub state: StateReason,
    pub active: bool,
    pub max_mem_kib: u64,
    pub cur_mem_kib: u64,
    pub vcpus: u32,
    /// Running guests only.
    pub cpu: Option<CpuTimes>,
    pub rss_kib: Option<u64>,
    pub memory: Option<GuestMemory>,
    pub disks: Vec<DiskStats>,
}

/// Which guest-side figures a caller needs (each one is an mconsole round trip).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Want {
    pub memory: bool,
    pub disks: bool,
}

/// A guest process: domain uuid, main pid and its start time.
type GuestKey = ([u8; 16], i32, u64);

/// Guests that recently let a query time out, and when to ask them again.
fn stuck() -> &'static Mutex<HashMap<GuestKey, Instant>> {
    static STUCK: OnceLock<Mutex<HashMap<GuestKey, Instant>>> = OnceLock::new();
    STUCK.get_or_init(|| Mutex::new(HashMap::new()))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Driver {
    /// The statistics of one domain. Guest-side figures are asked for only when `want`
    /// says so and the domain is running or paused (a paused UML guest still answers
    /// mconsole).
    pub async fn dom_stats(&self, obj: &DomainObj, want: Want) -> DomStats {
        self.dom_stats_with(obj, want, None).await
    }

    async fn dom_stats_with(
        &self,
        obj: &DomainObj,
        want: Want,
        cpu: Option<Arc<CpuTable>>,
    ) -> DomStats {
        let (dom, state, def, guest) = {
            let d = obj.data();
            let def = d
                .live
                .as_ref()
                .map(|l| l.def.clone())
                .or_else(|| d.config.clone());
            let guest = d.live.as_ref().map(|l| l.guest.clone());
            (
                DomRef {
                    name: obj.name.clone(),
                    uuid: obj.uuid,
                    id: d.live.as_ref().map_or(-1, |l| l.id),
                },
                d.state,
                def,
                guest,
            )
        };
        let (max_mem_kib, cur_mem_kib, vcpus) = def
            .as_ref()
            .map_or((0, 0, 1), |d| (d.memory_kib, d.current_memory_kib, d.vcpus));
        let mut out = DomStats {
            dom,
            state,
            active: guest.is_some(),
            max_mem_kib,
            cur_mem_kib,
            vcpus,
            cpu: None,
            rss_kib: None,
            memory: None,
            disks: Vec::new(),
        };
        let Some(guest) = guest else {
            return out;
        };
        let cpu = cpu.unwrap_or_else(|| Arc::new(CpuTable::read()));
        out.cpu = Some(cpu.times(guest.pid));
        out.rss_kib = Some(guest.rss_kib()).filter(|&k| k > 0);
        let disks: Vec<_> = def.map(|d| d.disks.clone()).unwrap_or_default();
        if want.disks {
            out.disks = disks
                .iter()
                .map(|d| {
                    let (capacity, physical) = host_size(&d.source, d.kind);
                    DiskStats {
                        target: d.target.clone(),
                        source: d.source.clone(),
                        capacity,
                        physical,
                        io: None,
                    }
                })
                .collect();
        }
        if !(want.memory || (want.disks && !disks.is_empty())) {
            return out;
        }
        let key = (obj.uuid, guest.pid, guest.start_time);
        {
            let mut s = stuck().lock().unwrap_or_else(|e| e.into_inner());
            s.retain(|_, until| *until > Instant::now());
            if s.contains_key(&key) {
                return out;
            }
        }
        let (memory, diskstats, timed_out) = query_guest(&guest, want).await;
        if timed_out {
            tracing::info!(domain = %obj.name, "guest did not answer a statistics query in time");
            stuck()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, Instant::now() + STUCK_BACKOFF);
        }
        out.memory = memory;
        if let Some(rows) = diskstats {
            for (d, def) in out.disks.iter_mut().zip(disks.iter()) {
                let Some(unit) = def.ubd_index() else {
                    continue;
                };
                let name = format!("ubd{}", (b'a' + unit as u8) as char);
                d.io = rows.get(&name).copied();
            }
        }
        out
    }

    /// Statistics of several domains, queried concurrently.
    pub async fn dom_stats_many(&self, objs: Vec<Arc<DomainObj>>, want: Want) -> Vec<DomStats> {
        let cpu = Arc::new(CpuTable::read());
        let mut set = tokio::task::JoinSet::new();
        for (i, o) in objs.into_iter().enumerate() {
            let drv = self.clone();
            let cpu = cpu.clone();
            set.spawn(async move { (i, drv.dom_stats_with(&o, want, Some(cpu)).await) });
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok(r) = r {
                out.push(r);
            }
        }
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, s)| s).collect()
    }

    /// Every domain, for `virConnectGetAllDomainStats` with no list of its own.
    pub fn all_domains(&self) -> Vec<Arc<DomainObj>> {
        self.all()
    }
}

/// Asks the guest for what `want` needs, all at once, within [`GUEST_QUERY_TIMEOUT`].
/// Returns the figures it gave and whether any query timed out.
async fn query_guest(
    guest: &Guest,
    want: Want,
) -> (Option<GuestMemory>, Option<HashMap<String, DiskIo>>, bool) {
    let mc = guest.mconsole().with_timeout(GUEST_QUERY_TIMEOUT);
    let ask = |file: &'static str, on: bool| {
        let mc: Mconsole = mc.clone();
        async move {
            if !on {
                return None;
            }
            Some(mc.proc_file(file).await)
        }
    };
    let (meminfo, vmstat, diskstats) = tokio::join!(
        ask("meminfo", want.memory),
        ask("vmstat", want.memory),
        ask("diskstats", want.disks),
    );
    let mut timed_out = false;
    let mut ok = |r: Option<Result<String, virtumld_uml::mconsole::MconsoleError>>| match r {
        Some(Ok(text)) => Some(text),
        Some(Err(e)) => {
            if matches!(e, virtumld_uml::mconsole::MconsoleError::Timeout { .. }) {
                timed_out = true;
            }
            tracing::debug!(error = %e, "guest statistics query failed");
            None
        }
        None => None,
    };
    let meminfo = ok(meminfo);
    let vmstat = ok(vmstat);
    let diskstats = ok(diskstats);
    let memory = meminfo.as_deref().and_then(|m| {
        let mut g = parse_meminfo(m)?;
        if let Some(v) = vmstat.as_deref() {
            apply_vmstat(&mut g, v);
        }
        g.sampled_at = now_secs();
        Some(g)
    });
    (memory, diskstats.as_deref().map(parse_diskstats), timed_out)
}

/// Parses `/proc/meminfo`; None unless it has MemTotal and MemFree.
pub fn parse_meminfo(text: &str) -> Option<GuestMemory> {
    let mut fields: HashMap<&str, u64> = HashMap::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let Some(n) = v.split_whitespace().next().and_then(|n| n.parse().ok()) else {
            continue;
        };
        fields.insert(k.trim(), n);
    }
    Some(GuestMemory {
        total_kib: *fields.get("MemTotal")?,
        free_kib: *fields.get("MemFree")?,
        available_kib: fields.get("MemAvailable").copied(),
        caches_kib: fields.get("Buffers").copied().unwrap_or(0)
            + fields.get("Cached").copied().unwrap_or(0),
        ..GuestMemory::default()
    })
}

/// Adds the swap and fault counters of `/proc/vmstat`.
pub fn apply_vmstat(g: &mut GuestMemory, text: &str) {
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(k), Some(Ok(v))) = (it.next(), it.next().map(str::parse::<u64>)) else {
            continue;
        };
        match k {
            "pswpin" => g.swap_in_kib = Some(v.saturating_mul(GUEST_PAGE_KIB)),
            "pswpout" => g.swap_out_kib = Some(v.saturating_mul(GUEST_PAGE_KIB)),
            "pgmajfault" => g.major_faults = Some(v),
            // As the virtio balloon reports it: every fault counts as "minor".
            "pgfault" => g.minor_faults = Some(v),
            _ => {}
        }
    }
}

/// Parses `/proc/diskstats` into rows by device name. Sectors are 512 bytes whatever the
/// device's block size; times are milliseconds.
pub fn parse_diskstats(text: &str) -> HashMap<String, DiskIo> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 14 {
            continue;
        }
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
        let (Some(rd), Some(rd_sec), Some(rd_ms), Some(wr), Some(wr_sec), Some(wr_ms)) =
            (n(3), n(5), n(6), n(7), n(9), n(10))
        else {
            continue;
        };
        out.insert(
            f[2].to_string(),
            DiskIo {
                rd_reqs: rd,
                rd_bytes: rd_sec.saturating_mul(512),
                rd_time_ns: rd_ms.saturating_mul(1_000_000),
                wr_reqs: wr,
                wr_bytes: wr_sec.saturating_mul(512),
                wr_time_ns: wr_ms.saturating_mul(1_000_000),
                fl_reqs: n(18),
                fl_time_ns: n(19).map(|ms| ms.saturating_mul(1_000_000)),
            },
        );
    }
    out
}

/// Logical and physical size of a disk's backing file or block device.
fn host_size(path: &Path, kind: DiskKind) -> (Option<u64>, Option<u64>) {
    let Ok(m) = std::fs::metadata(path) else {
        return (None, None);
    };
    if m.file_type().is_block_device() || kind == DiskKind::Block {
        // A block device's size is where a seek to its end lands.
        use std::io::{Seek, SeekFrom};
        let size = std::fs::File::open(path)
            .and_then(|mut f| f.seek(SeekFrom::End(0)))
            .ok();
        return (size, size);
    }
    (Some(m.len()), Some(m.blocks().saturating_mul(512)))
}

/// CPU ticks (user, system) of every process, summed by process group and by session:
/// `table[k]` covers the processes whose group or session is `k` (each counted once).
/// One pass over /proc serves every domain of a statistics call.
pub struct CpuTable {
    by_id: HashMap<i32, (u128, u128)>,
    ticks_per_sec: u128,
}

impl CpuTable {
    pub fn read() -> CpuTable {
        let ticks_per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|&t| t > 0)
            .unwrap_or(100) as u128;
        let mut by_id: HashMap<i32, (u128, u128)> = HashMap::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let name = e.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some(f) = stat_fields(&stat) else {
                continue;
            };
            let user = u128::from(f.utime) + u128::from(f.cutime);
            let system = u128::from(f.stime) + u128::from(f.cstime);
            let mut add = |k: i32| {
                let slot = by_id.entry(k).or_default();
                slot.0 += user;
                slot.1 += system;
            };
            add(f.pgrp);
            if f.session != f.pgrp {
                add(f.session);
            }
        }
        CpuTable {
            by_id,
            ticks_per_sec,
        }
    }

    /// CPU time of every process in the guest's process group or session (UML's helpers
    /// included), as `Guest::cpu_time_ns` counts it, split into user and system time.
    pub fn times(&self, pgid: i32) -> CpuTimes {
        let (user, system) = self.by_id.get(&pgid).copied().unwrap_or((0, 0));
        let ns =
            |t: u128| u64::try_from(t * 1_000_000_000 / self.ticks_per_sec).unwrap_or(u64::MAX);
        CpuTimes {
            total_ns: ns(user + system),
            user_ns: ns(user),
            system_ns: ns(system),
        }
    }
}

struct StatFields {
    pgrp: i32,
    session: i32,
    utime: u64,
    stime: u64,
    cutime: u64,
    cstime: u64,
}

/// Fields 5, 6 and 14–17 of `/proc/PID/stat` (the command name may hold anything, so the
/// line is split after its last `)`).
fn stat_fields(s: &str) -> Option<StatFields> {
    let rest: Vec<&str> = s.get(s.rfind(')')? + 1..)?.split_whitespace().collect();
    // rest[0] is field 3.
    let field = |n: usize| rest.get(n - 3).copied();
    let signed = |n: usize| field(n)?.parse::<i64>().ok().map(|v| v.max(0) as u64);
    Some(StatFields {
        pgrp: field(5)?.parse().ok()?,
        session: field(6)?.parse().ok()?,
        utime: field(14)?.parse().ok()?,
        stime: field(15)?.parse().ok()?,
        cutime: signed(16)?,
        cstime: signed(17)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_and_vmstat() {
        let m = "MemTotal:          50676 kB\nMemFree:           36148 kB\n\
                 MemAvailable:      36020 kB\nBuffers:             168 kB\nCached:  1820 kB\n";
        let mut g = parse_meminfo(m).unwrap();
        assert_eq!(
            (g.total_kib, g.free_kib, g.available_kib, g.caches_kib),
            (50676, 36148, Some(36020), 1988)
        );
        apply_vmstat(&mut g, "pswpin 2\npswpout 3\npgfault 1905\npgmajfault 17\n");
        assert_eq!(g.swap_in_kib, Some(8));
        assert_eq!(g.swap_out_kib, Some(12));
        assert_eq!(g.major_faults, Some(17));
        assert_eq!(g.minor_faults, Some(1905));
        assert!(parse_meminfo("MemTotal: 1 kB\n").is_none());
        assert!(parse_meminfo("garbage").is_none());
    }

    #[test]
    fn diskstats_rows() {
        let t = "\n  98       0 ubda 71 95 3878 36 5 0 10 0 0 30 37 0 0 0 0 1 4\nshort 1 2\n";
        let rows = parse_diskstats(t);
        let a = rows["ubda"];
        assert_eq!(
            (a.rd_reqs, a.rd_bytes, a.rd_time_ns),
            (71, 3878 * 512, 36_000_000)
        );
        assert_eq!((a.wr_reqs, a.wr_bytes, a.wr_time_ns), (5, 5120, 0));
        assert_eq!((a.fl_reqs, a.fl_time_ns), (Some(1), Some(4_000_000)));
        assert_eq!(rows.len(), 1);
        // A kernel older than 5.5 prints no flush columns.
        let old = parse_diskstats("98 0 ubdb 1 0 8 0 0 0 0 0 0 0 0");
        assert_eq!(old["ubdb"].fl_reqs, None);
    }

    #[test]
    fn stat_line_with_odd_command_name() {
        let s = "42 (a) b) S 1 42 42 0 -1 0 0 0 0 0 7 3 2 1 20 0 1 0 100 0 0";
        let f = stat_fields(s).unwrap();
        assert_eq!((f.pgrp, f.session), (42, 42));
        assert_eq!((f.utime, f.stime, f.cutime, f.cstime), (7, 3, 2, 1));
        assert!(stat_fields("garbage").is_none());
    }

    #[test]
    fn own_process_group_has_cpu_time() {
        let me = nix::unistd::getpgrp().as_raw();
        // Burn a little CPU so the figure cannot be zero on a fast machine.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        let t = CpuTable::read().times(me);
        assert!(t.total_ns > 0);
        assert_eq!(t.total_ns, t.user_ns + t.system_ns);
    }
}
