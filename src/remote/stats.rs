//! Statistics procedures: CONNECT_GET_ALL_DOMAIN_STATS and the per-domain calls clients
//! fall back to (DOMAIN_MEMORY_STATS, DOMAIN_BLOCK_STATS[_FLAGS], DOMAIN_INTERFACE_STATS),
//! plus DOMAIN_LIST_ALL_SNAPSHOTS (UML guests have no snapshots: always empty).
//!
//! Every figure comes from `driver::stats` (the guest's host processes and its own /proc
//! through mconsole); what is not known is left out, as libvirt does.

use std::sync::Arc;

use virtumld_protocol::error::code;
use virtumld_protocol::remote::*;

use super::domain::wire;
use super::wire_error::new as uml_error;
use super::{err, Ctx, Reply};
use crate::driver::stats::{DiskIo, DomStats, Want};
use crate::driver::{list_flags, DomainObj, Driver};

/// `virDomainStatsTypes`.
pub mod group {
    pub const STATE: u32 = 1;
    pub const CPU_TOTAL: u32 = 2;
    pub const BALLOON: u32 = 4;
    pub const VCPU: u32 = 8;
    pub const INTERFACE: u32 = 16;
    pub const BLOCK: u32 = 32;
    /// What this daemon can report; PERF, IOTHREAD, MEMORY (bandwidth), DIRTYRATE and VM
    /// have no UML counterpart.
    pub const SUPPORTED: u32 = STATE | CPU_TOTAL | BALLOON | VCPU | INTERFACE | BLOCK;
}

/// `virConnectGetAllDomainStatsFlags` beyond the list filters.
const STATS_NOWAIT: u32 = 1 << 29;
const STATS_BACKING: u32 = 1 << 30;
const STATS_ENFORCE: u32 = 1 << 31;
/// The `virConnectListAllDomains` filters this call accepts (persistence, activity, state).
const STATS_FILTERS: u32 = list_flags::ACTIVE
    | list_flags::INACTIVE
    | list_flags::PERSISTENT
    | list_flags::TRANSIENT
    | list_flags::RUNNING
    | list_flags::PAUSED
    | list_flags::SHUTOFF
    | list_flags::OTHER;

/// `VIR_TYPED_PARAM_STRING_OKAY`: the client library adds it by itself.
const TYPED_PARAM_STRING_OKAY: u32 = 4;

fn drv<'a>(ctx: &'a Ctx<'_>) -> &'a Driver {
    &ctx.daemon.driver
}

fn obj(ctx: &Ctx<'_>, dom: &NonnullDomain) -> Reply<Arc<DomainObj>> {
    Ok(drv(ctx).get(&dom.name, &dom.uuid.0)?)
}

fn not_running() -> virtumld_protocol::error::RemoteError {
    uml_error(code::OPERATION_INVALID, "domain is not running")
}

fn p(field: impl Into<String>, value: TypedParamValue) -> TypedParam {
    TypedParam {
        field: field.into(),
        value,
    }
}

/// The typed parameters of one domain for the groups in `stats`, named and typed as
/// libvirt's `virConnectGetAllDomainStats` documents them.
pub fn record_params(s: &DomStats, stats: u32) -> Vec<TypedParam> {
    use TypedParamValue::{Int, String as Str, UInt, ULLong};
    let mut out = Vec::new();
    if stats & group::STATE != 0 {
        out.push(p("state.state", Int(s.state.state)));
        out.push(p("state.reason", Int(s.state.reason)));
    }
    if stats & group::CPU_TOTAL != 0 {
        if let Some(c) = s.cpu {
            out.push(p("cpu.time", ULLong(c.total_ns)));
            out.push(p("cpu.user", ULLong(c.user_ns)));
            out.push(p("cpu.system", ULLong(c.system_ns)));
        }
    }
    if stats & group::BALLOON != 0 {
        // UML has no balloon: the current size is the one the guest was started with.
        out.push(p("balloon.current", ULLong(s.cur_mem_kib)));
        out.push(p("balloon.maximum", ULLong(s.max_mem_kib)));
        if let Some(m) = s.memory {
            let opt = |out: &mut Vec<TypedParam>, k: &str, v: Option<u64>| {
                if let Some(v) = v {
                    out.push(p(k, ULLong(v)));
                }
            };
            opt(&mut out, "balloon.swap_in", m.swap_in_kib);
            opt(&mut out, "balloon.swap_out", m.swap_out_kib);
            opt(&mut out, "balloon.major_fault", m.major_faults);
            opt(&mut out, "balloon.minor_fault", m.minor_faults);
            out.push(p("balloon.unused", ULLong(m.free_kib)));
            out.push(p("balloon.available", ULLong(m.total_kib)));
            opt(&mut out, "balloon.usable", m.available_kib);
            out.push(p("balloon.last-update", ULLong(m.sampled_at)));
            out.push(p("balloon.disk_caches", ULLong(m.caches_kib)));
        }
        if let Some(rss) = s.rss_kib {
            out.push(p("balloon.rss", ULLong(rss)));
        }
    }
    if stats & group::VCPU != 0 {
        out.push(p("vcpu.current", UInt(s.vcpus)));
        out.push(p("vcpu.maximum", UInt(s.vcpus)));
        if let Some(c) = s.cpu {
            // One virtual CPU, run by the guest's process tree: its time is the tree's.
            out.push(p("vcpu.0.state", Int(1)));
            out.push(p("vcpu.0.time", ULLong(c.total_ns)));
        }
    }
    if stats & group::INTERFACE != 0 && s.active {
        // UML guests defined here have no network interfaces.
        out.push(p("net.count", UInt(0)));
    }
    if stats & group::BLOCK != 0 {
        out.push(p("block.count", UInt(s.disks.len() as u32)));
        for (i, d) in s.disks.iter().enumerate() {
            let k = |f: &str| format!("block.{i}.{f}");
            out.push(p(k("name"), Str(d.target.clone())));
            out.push(p(k("path"), Str(d.source.display().to_string())));
            if let Some(io) = d.io {
                out.push(p(k("rd.reqs"), ULLong(io.rd_reqs)));
                out.push(p(k("rd.bytes"), ULLong(io.rd_bytes)));
                out.push(p(k("rd.times"), ULLong(io.rd_time_ns)));
                out.push(p(k("wr.reqs"), ULLong(io.wr_reqs)));
                out.push(p(k("wr.bytes"), ULLong(io.wr_bytes)));
                out.push(p(k("wr.times"), ULLong(io.wr_time_ns)));
                if let (Some(n), Some(t)) = (io.fl_reqs, io.fl_time_ns) {
                    out.push(p(k("fl.reqs"), ULLong(n)));
                    out.push(p(k("fl.times"), ULLong(t)));
                }
            }
            if let Some(c) = d.capacity {
                out.push(p(k("capacity"), ULLong(c)));
            }
            if let Some(ph) = d.physical {
                out.push(p(k("physical"), ULLong(ph)));
            }
        }
    }
    out
}

/// Whether a domain passes `virConnectListAllDomains`-style filters.
fn passes(s: &DomStats, persistent: bool, flags: u32) -> bool {
    use list_flags as f;
    let pass = |yes: u32, no: u32, is: bool| {
        let (y, n) = (flags & yes != 0, flags & no != 0);
        y == n || (y && is) || (n && !is)
    };
    let states = flags & (f::RUNNING | f::PAUSED | f::SHUTOFF | f::OTHER);
    let state_ok = states == 0
        || match s.state.state {
            1 => flags & f::RUNNING != 0,
            3 => flags & f::PAUSED != 0,
            5 => flags & f::SHUTOFF != 0,
            _ => flags & f::OTHER != 0,
        };
    pass(f::ACTIVE, f::INACTIVE, s.active)
        && pass(f::PERSISTENT, f::TRANSIENT, persistent)
        && state_ok
}

pub async fn connect_get_all_domain_stats(
    ctx: &Ctx<'_>,
    a: ConnectGetAllDomainStatsArgs,
) -> Reply<ConnectGetAllDomainStatsRet> {
    let allowed = STATS_FILTERS | STATS_NOWAIT | STATS_BACKING | STATS_ENFORCE;
    if a.flags & !allowed != 0 {
        return Err(err::unsupported_flags(ctx.info, u64::from(a.flags)));
    }
    let mut stats = a.stats;
    if stats == 0 {
        stats = group::SUPPORTED;
    } else if a.flags & STATS_ENFORCE != 0 && stats & !group::SUPPORTED != 0 {
        return Err(uml_error(
            code::ARGUMENT_UNSUPPORTED,
            format!(
                "Stats types bits 0x{:x} are not supported by this daemon",
                stats & !group::SUPPORTED
            ),
        ));
    }
    stats &= group::SUPPORTED;
    let driver = drv(ctx);
    let objs: Vec<Arc<DomainObj>> = if a.doms.is_empty() {
        driver.all_domains()
    } else {
        // Domains that went away since the client listed them are skipped, as libvirt
        // skips them.
        a.doms
            .iter()
            .filter_map(|d| driver.get(&d.name, &d.uuid.0).ok())
            .collect()
    };
    let persistent: Vec<bool> = objs.iter().map(|o| driver.is_persistent(o)).collect();
    let want = Want {
        memory: stats & group::BALLOON != 0,
        disks: stats & group::BLOCK != 0,
    };
    let all = driver.dom_stats_many(objs, want).await;
    let ret_stats = all
        .iter()
        .zip(persistent)
        .filter(|(s, pers)| passes(s, *pers, a.flags & STATS_FILTERS))
        .map(|(s, _)| DomainStatsRecord {
            dom: wire(&s.dom),
            params: record_params(s, stats),
        })
        .collect();
    Ok(ConnectGetAllDomainStatsRet { ret_stats })
}

/// `virDomainMemoryStatTags`.
mod tag {
    pub const SWAP_IN: i32 = 0;
    pub const SWAP_OUT: i32 = 1;
    pub const MAJOR_FAULT: i32 = 2;
    pub const MINOR_FAULT: i32 = 3;
    pub const UNUSED: i32 = 4;
    pub const AVAILABLE: i32 = 5;
    pub const ACTUAL_BALLOON: i32 = 6;
    pub const RSS: i32 = 7;
    pub const USABLE: i32 = 8;
    pub const LAST_UPDATE: i32 = 9;
    pub const DISK_CACHES: i32 = 10;
}

pub async fn domain_memory_stats(
    ctx: &Ctx<'_>,
    a: DomainMemoryStatsArgs,
) -> Reply<DomainMemoryStatsRet> {
    if a.flags != 0 {
        return Err(err::unsupported_flags(ctx.info, u64::from(a.flags)));
    }
    if a.max_stats as usize > virtumld_protocol::limits::DOMAIN_MEMORY_STATS_MAX {
        return Err(uml_error(
            code::RPC,
            "maxStats > REMOTE_DOMAIN_MEMORY_STATS_MAX",
        ));
    }
    let o = obj(ctx, &a.dom)?;
    let s = drv(ctx)
        .dom_stats(
            &o,
            Want {
                memory: true,
                disks: false,
            },
        )
        .await;
    if !s.active {
        return Err(not_running());
    }
    let mut stats = vec![DomainMemoryStat {
        tag: tag::ACTUAL_BALLOON,
        val: s.cur_mem_kib,
    }];
    if let Some(rss) = s.rss_kib {
        stats.push(DomainMemoryStat {
            tag: tag::RSS,
            val: rss,
        });
    }
    if let Some(m) = s.memory {
        let mut push = |tag: i32, v: Option<u64>| {
            if let Some(val) = v {
                stats.push(DomainMemoryStat { tag, val });
            }
        };
        push(tag::SWAP_IN, m.swap_in_kib);
        push(tag::SWAP_OUT, m.swap_out_kib);
        push(tag::MAJOR_FAULT, m.major_faults);
        push(tag::MINOR_FAULT, m.minor_faults);
        push(tag::UNUSED, Some(m.free_kib));
        push(tag::AVAILABLE, Some(m.total_kib));
        push(tag::USABLE, m.available_kib);
        push(tag::LAST_UPDATE, Some(m.sampled_at));
        push(tag::DISK_CACHES, Some(m.caches_kib));
    }
    stats.truncate(a.max_stats as usize);
    Ok(DomainMemoryStatsRet { stats })
}

/// The I/O counters of the disk `path` names (its `<target dev>` or its source path; an
/// empty path sums every disk, as libvirt does).
async fn block_io(ctx: &Ctx<'_>, dom: &NonnullDomain, path: &str) -> Reply<DiskIo> {
    let o = obj(ctx, dom)?;
    let s = drv(ctx)
        .dom_stats(
            &o,
            Want {
                memory: false,
                disks: true,
            },
        )
        .await;
    if !s.active {
        return Err(not_running());
    }
    let chosen: Vec<_> = s
        .disks
        .iter()
        .filter(|d| path.is_empty() || d.target == path || d.source.as_os_str() == path)
        .collect();
    if chosen.is_empty() {
        return Err(uml_error(
            code::INVALID_ARG,
            format!("invalid path: {path}"),
        ));
    }
    let mut total = DiskIo {
        fl_reqs: Some(0),
        fl_time_ns: Some(0),
        ..DiskIo::default()
    };
    for d in chosen {
        let io = d.io.ok_or_else(|| {
            uml_error(
                code::OPERATION_FAILED,
                format!(
                    "the guest did not report I/O statistics for disk '{}' (no mconsole answer)",
                    d.target
                ),
            )
        })?;
        total.rd_reqs += io.rd_reqs;
        total.rd_bytes += io.rd_bytes;
        total.rd_time_ns += io.rd_time_ns;
        total.wr_reqs += io.wr_reqs;
        total.wr_bytes += io.wr_bytes;
        total.wr_time_ns += io.wr_time_ns;
        total.fl_reqs = total.fl_reqs.zip(io.fl_reqs).map(|(a, b)| a + b);
        total.fl_time_ns = total.fl_time_ns.zip(io.fl_time_ns).map(|(a, b)| a + b);
    }
    Ok(total)
}

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub async fn domain_block_stats(
    ctx: &Ctx<'_>,
    a: DomainBlockStatsArgs,
) -> Reply<DomainBlockStatsRet> {
    let io = block_io(ctx, &a.dom, &a.path).await?;
    Ok(DomainBlockStatsRet {
        rd_req: signed(io.rd_reqs),
        rd_bytes: signed(io.rd_bytes),
        wr_req: signed(io.wr_reqs),
        wr_bytes: signed(io.wr_bytes),
        // Unknown: UML's ubd driver counts no errors.
        errs: -1,
    })
}

pub async fn domain_block_stats_flags(
    ctx: &Ctx<'_>,
    a: DomainBlockStatsFlagsArgs,
) -> Reply<DomainBlockStatsFlagsRet> {
    if a.flags & !TYPED_PARAM_STRING_OKAY != 0 {
        return Err(err::unsupported_flags(ctx.info, u64::from(a.flags)));
    }
    if a.nparams < 0
        || a.nparams as usize > virtumld_protocol::limits::DOMAIN_BLOCK_STATS_PARAMETERS_MAX
    {
        return Err(uml_error(code::RPC, "nparams too large"));
    }
    let io = block_io(ctx, &a.dom, &a.path).await?;
    use TypedParamValue::LLong;
    let mut params = vec![
        p("rd_operations", LLong(signed(io.rd_reqs))),
        p("rd_bytes", LLong(signed(io.rd_bytes))),
        p("rd_total_times", LLong(signed(io.rd_time_ns))),
        p("wr_operations", LLong(signed(io.wr_reqs))),
        p("wr_bytes", LLong(signed(io.wr_bytes))),
        p("wr_total_times", LLong(signed(io.wr_time_ns))),
    ];
    if let (Some(n), Some(t)) = (io.fl_reqs, io.fl_time_ns) {
        params.push(p("flush_operations", LLong(signed(n))));
        params.push(p("flush_total_times", LLong(signed(t))));
    }
    // nparams 0 asks how many there are.
    if a.nparams == 0 {
        return Ok(DomainBlockStatsFlagsRet {
            nparams: params.len() as i32,
            params: Vec::new(),
        });
    }
    params.truncate(a.nparams as usize);
    Ok(DomainBlockStatsFlagsRet {
        nparams: params.len() as i32,
        params,
    })
}

pub async fn domain_interface_stats(
    ctx: &Ctx<'_>,
    a: DomainInterfaceStatsArgs,
) -> Reply<DomainInterfaceStatsRet> {
    let o = obj(ctx, &a.dom)?;
    if !drv(ctx).is_active(&o) {
        return Err(not_running());
    }
    // UML guests defined here have no network interfaces, so no name is known.
    Err(uml_error(
        code::INVALID_ARG,
        format!("invalid path, '{}' is not a known interface", a.device),
    ))
}

/// `virDomainSnapshotListFlags`: every bit up to TOPOLOGICAL (1024).
const SNAPSHOT_LIST_FLAGS: u32 = (1 << 11) - 1;

pub async fn domain_list_all_snapshots(
    ctx: &Ctx<'_>,
    a: DomainListAllSnapshotsArgs,
) -> Reply<DomainListAllSnapshotsRet> {
    if a.flags & !SNAPSHOT_LIST_FLAGS != 0 {
        return Err(err::unsupported_flags(ctx.info, u64::from(a.flags)));
    }
    obj(ctx, &a.dom)?;
    Ok(DomainListAllSnapshotsRet {
        snapshots: Vec::new(),
        ret: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::state::StateReason;
    use crate::driver::stats::{CpuTimes, DiskStats, GuestMemory};
    use crate::driver::DomRef;

    fn sample(active: bool) -> DomStats {
        DomStats {
            dom: DomRef {
                name: "g".into(),
                uuid: [0; 16],
                id: if active { 1 } else { -1 },
            },
            state: StateReason::new(if active { 1 } else { 5 }, 1),
            active,
            max_mem_kib: 65536,
            cur_mem_kib: 65536,
            vcpus: 1,
            cpu: active.then_some(CpuTimes {
                total_ns: 30,
                user_ns: 20,
                system_ns: 10,
            }),
            rss_kib: active.then_some(4000),
            memory: active.then_some(GuestMemory {
                total_kib: 50000,
                free_kib: 30000,
                available_kib: Some(31000),
                caches_kib: 100,
                sampled_at: 7,
                ..GuestMemory::default()
            }),
            disks: vec![DiskStats {
                target: "ubd0".into(),
                source: "/x.img".into(),
                capacity: Some(1 << 20),
                physical: Some(4096),
                io: active.then_some(DiskIo {
                    rd_bytes: 512,
                    ..DiskIo::default()
                }),
            }],
        }
    }

    fn keys(v: &[TypedParam]) -> Vec<&str> {
        v.iter().map(|p| p.field.as_str()).collect()
    }

    #[test]
    fn virt_manager_default_groups() {
        let v = record_params(&sample(true), 11);
        assert_eq!(
            keys(&v),
            [
                "state.state",
                "state.reason",
                "cpu.time",
                "cpu.user",
                "cpu.system",
                "vcpu.current",
                "vcpu.maximum",
                "vcpu.0.state",
                "vcpu.0.time"
            ]
        );
        assert_eq!(v[2].value, TypedParamValue::ULLong(30));
        assert_eq!(v[5].value, TypedParamValue::UInt(1));
    }

    #[test]
    fn inactive_domain_has_no_live_figures() {
        let v = record_params(&sample(false), group::SUPPORTED);
        let k = keys(&v);
        assert!(k.contains(&"balloon.current") && k.contains(&"block.0.capacity"));
        assert!(!k.iter().any(|k| k.starts_with("cpu.")
            || *k == "balloon.unused"
            || *k == "balloon.rss"
            || k.contains(".rd.")
            || k.starts_with("net.")));
    }

    #[test]
    fn balloon_and_block_of_a_running_guest() {
        let v = record_params(&sample(true), group::BALLOON | group::BLOCK);
        let get = |k: &str| v.iter().find(|p| p.field == k).map(|p| p.value.clone());
        assert_eq!(get("balloon.unused"), Some(TypedParamValue::ULLong(30000)));
        assert_eq!(get("balloon.usable"), Some(TypedParamValue::ULLong(31000)));
        assert_eq!(get("balloon.rss"), Some(TypedParamValue::ULLong(4000)));
        assert_eq!(get("balloon.swap_in"), None);
        assert_eq!(
            get("block.0.name"),
            Some(TypedParamValue::String("ubd0".into()))
        );
        assert_eq!(get("block.0.rd.bytes"), Some(TypedParamValue::ULLong(512)));
        assert_eq!(get("block.0.fl.reqs"), None);
    }

    #[test]
    fn filters() {
        use list_flags as f;
        let on = sample(true);
        let off = sample(false);
        assert!(passes(&on, true, 0));
        assert!(passes(&on, true, f::ACTIVE));
        assert!(!passes(&off, true, f::ACTIVE));
        assert!(passes(&off, true, f::SHUTOFF));
        assert!(!passes(&on, true, f::TRANSIENT));
        assert!(passes(&on, false, f::TRANSIENT | f::RUNNING));
    }
}
