//! Domain procedures: lookups, lists, definitions, lifecycle, information. Each handler
//! checks flags, finds the domain by the uuid the client sent, and calls the driver.

use std::sync::Arc;

use virtumld_protocol::error::RemoteError;
use virtumld_protocol::remote::*;
use virtumld_protocol::xdr::{FixedOpaque, Opaque};

use super::{err, Ctx, Reply};
use crate::driver::{self, DomRef, DomainObj, Driver};

impl From<driver::Error> for RemoteError {
    fn from(e: driver::Error) -> RemoteError {
        RemoteError::new(e.code, virtumld_protocol::error::domain::UML, e.message)
    }
}

pub fn wire(d: &DomRef) -> NonnullDomain {
    NonnullDomain {
        name: d.name.clone(),
        uuid: FixedOpaque(d.uuid),
        id: d.id,
    }
}

fn drv<'a>(ctx: &'a Ctx<'_>) -> &'a Driver {
    &ctx.daemon.driver
}

fn obj(ctx: &Ctx<'_>, dom: &NonnullDomain) -> Reply<Arc<DomainObj>> {
    Ok(drv(ctx).get(&dom.name, &dom.uuid.0)?)
}

/// Refuses flag bits outside `allowed`.
fn flags(ctx: &Ctx<'_>, flags: u32, allowed: u32) -> Reply<()> {
    if flags & !allowed != 0 {
        return Err(err::unsupported_flags(ctx.info, u64::from(flags)));
    }
    Ok(())
}

// ---- lookups and lists ------------------------------------------------------------

pub async fn lookup_by_name(
    ctx: &Ctx<'_>,
    a: DomainLookupByNameArgs,
) -> Reply<DomainLookupByNameRet> {
    let o = drv(ctx).by_name(&a.name)?;
    Ok(DomainLookupByNameRet {
        dom: wire(&o.dom_ref()),
    })
}

pub async fn lookup_by_uuid(
    ctx: &Ctx<'_>,
    a: DomainLookupByUuidArgs,
) -> Reply<DomainLookupByUuidRet> {
    let o = drv(ctx).by_uuid(&a.uuid.0)?;
    Ok(DomainLookupByUuidRet {
        dom: wire(&o.dom_ref()),
    })
}

pub async fn lookup_by_id(ctx: &Ctx<'_>, a: DomainLookupByIdArgs) -> Reply<DomainLookupByIdRet> {
    let o = drv(ctx).by_id(a.id)?;
    Ok(DomainLookupByIdRet {
        dom: wire(&o.dom_ref()),
    })
}

pub async fn list_all(
    ctx: &Ctx<'_>,
    a: ConnectListAllDomainsArgs,
) -> Reply<ConnectListAllDomainsRet> {
    let doms = drv(ctx).list(a.flags)?;
    let count = doms.len() as u32;
    // need_results 0 asks only for the count.
    let domains = if a.need_results != 0 {
        doms.iter().map(wire).collect()
    } else {
        Vec::new()
    };
    Ok(ConnectListAllDomainsRet {
        domains,
        ret: count,
    })
}

fn limit(n: i32) -> Reply<usize> {
    usize::try_from(n).map_err(|_| err::invalid_arg("negative count"))
}

pub async fn num_of_domains(ctx: &Ctx<'_>) -> Reply<ConnectNumOfDomainsRet> {
    Ok(ConnectNumOfDomainsRet {
        num: drv(ctx).active_ids().len() as i32,
    })
}

pub async fn list_domains(
    ctx: &Ctx<'_>,
    a: ConnectListDomainsArgs,
) -> Reply<ConnectListDomainsRet> {
    let max = limit(a.maxids)?;
    let mut ids = drv(ctx).active_ids();
    ids.truncate(max);
    Ok(ConnectListDomainsRet { ids })
}

pub async fn num_of_defined_domains(ctx: &Ctx<'_>) -> Reply<ConnectNumOfDefinedDomainsRet> {
    Ok(ConnectNumOfDefinedDomainsRet {
        num: drv(ctx).inactive_names().len() as i32,
    })
}

pub async fn list_defined_domains(
    ctx: &Ctx<'_>,
    a: ConnectListDefinedDomainsArgs,
) -> Reply<ConnectListDefinedDomainsRet> {
    let max = limit(a.maxnames)?;
    let mut names = drv(ctx).inactive_names();
    names.truncate(max);
    Ok(ConnectListDefinedDomainsRet { names })
}

// ---- definitions ------------------------------------------------------------------

/// `VIR_DOMAIN_DEFINE_VALIDATE`: the parser always validates.
const DEFINE_VALIDATE: u32 = 1;

pub async fn define_xml(ctx: &Ctx<'_>, a: DomainDefineXmlArgs) -> Reply<DomainDefineXmlRet> {
    let d = drv(ctx).define(&a.xml).await?;
    Ok(DomainDefineXmlRet { dom: wire(&d) })
}

pub async fn define_xml_flags(
    ctx: &Ctx<'_>,
    a: DomainDefineXmlFlagsArgs,
) -> Reply<DomainDefineXmlFlagsRet> {
    flags(ctx, a.flags, DEFINE_VALIDATE)?;
    let d = drv(ctx).define(&a.xml).await?;
    Ok(DomainDefineXmlFlagsRet { dom: wire(&d) })
}

/// Undefine flags that ask to drop state UML guests never have (managed save, snapshot
/// and checkpoint metadata, NVRAM, TPM): accepted, nothing to do.
const UNDEFINE_NOOP_FLAGS: u32 = 1 | 2 | 4 | 8 | 16 | 32 | 64;

pub async fn undefine(ctx: &Ctx<'_>, a: DomainUndefineArgs) -> Reply<()> {
    Ok(drv(ctx).undefine(&obj(ctx, &a.dom)?).await?)
}

pub async fn undefine_flags(ctx: &Ctx<'_>, a: DomainUndefineFlagsArgs) -> Reply<()> {
    flags(ctx, a.flags, UNDEFINE_NOOP_FLAGS)?;
    Ok(drv(ctx).undefine(&obj(ctx, &a.dom)?).await?)
}

pub async fn get_xml_desc(ctx: &Ctx<'_>, a: DomainGetXmlDescArgs) -> Reply<DomainGetXmlDescRet> {
    // SECURE (1) reveals nothing more here; INACTIVE (2); UPDATE_CPU (4) and MIGRATABLE (8)
    // change nothing for a UML guest.
    flags(ctx, a.flags, 1 | 2 | 4 | 8)?;
    let o = obj(ctx, &a.dom)?;
    Ok(DomainGetXmlDescRet {
        xml: drv(ctx).xml(&o, a.flags & 2 != 0).await,
    })
}

// ---- lifecycle --------------------------------------------------------------------

/// `VIR_DOMAIN_START_PAUSED`; AUTODESTROY (2) is not offered.
const START_PAUSED: u32 = 1;
/// BYPASS_CACHE, FORCE_BOOT, VALIDATE: nothing to do for UML.
const START_NOOP_FLAGS: u32 = 4 | 8 | 16;

pub async fn create(ctx: &Ctx<'_>, a: DomainCreateArgs) -> Reply<()> {
    Ok(drv(ctx).create(&obj(ctx, &a.dom)?, false).await?)
}

pub async fn create_with_flags(
    ctx: &Ctx<'_>,
    a: DomainCreateWithFlagsArgs,
) -> Reply<DomainCreateWithFlagsRet> {
    flags(ctx, a.flags, START_PAUSED | START_NOOP_FLAGS)?;
    let o = obj(ctx, &a.dom)?;
    drv(ctx).create(&o, a.flags & START_PAUSED != 0).await?;
    Ok(DomainCreateWithFlagsRet {
        dom: wire(&o.dom_ref()),
    })
}

pub async fn create_xml(ctx: &Ctx<'_>, a: DomainCreateXmlArgs) -> Reply<DomainCreateXmlRet> {
    flags(ctx, a.flags, START_PAUSED | START_NOOP_FLAGS)?;
    let d = drv(ctx)
        .create_xml(&a.xml_desc, a.flags & START_PAUSED != 0)
        .await?;
    Ok(DomainCreateXmlRet { dom: wire(&d) })
}

/// Shutdown/reboot modes: DEFAULT (0) and ACPI_POWER_BTN (1) map to Ctrl-Alt-Del through
/// mconsole; the others need facilities UML guests do not have.
const SHUTDOWN_MODES: u32 = 1;

pub async fn shutdown(ctx: &Ctx<'_>, a: DomainShutdownArgs) -> Reply<()> {
    Ok(drv(ctx).shutdown(&obj(ctx, &a.dom)?).await?)
}

pub async fn shutdown_flags(ctx: &Ctx<'_>, a: DomainShutdownFlagsArgs) -> Reply<()> {
    flags(ctx, a.flags, SHUTDOWN_MODES)?;
    Ok(drv(ctx).shutdown(&obj(ctx, &a.dom)?).await?)
}

pub async fn reboot(ctx: &Ctx<'_>, a: DomainRebootArgs) -> Reply<()> {
    flags(ctx, a.flags, SHUTDOWN_MODES)?;
    Ok(drv(ctx).reboot(&obj(ctx, &a.dom)?).await?)
}

pub async fn suspend(ctx: &Ctx<'_>, a: DomainSuspendArgs) -> Reply<()> {
    Ok(drv(ctx).suspend(&obj(ctx, &a.dom)?).await?)
}

pub async fn resume(ctx: &Ctx<'_>, a: DomainResumeArgs) -> Reply<()> {
    Ok(drv(ctx).resume(&obj(ctx, &a.dom)?).await?)
}

/// `VIR_DOMAIN_DESTROY_GRACEFUL`.
const DESTROY_GRACEFUL: u32 = 1;

pub async fn destroy(ctx: &Ctx<'_>, a: DomainDestroyArgs) -> Reply<()> {
    Ok(drv(ctx).destroy(&obj(ctx, &a.dom)?, false).await?)
}

pub async fn destroy_flags(ctx: &Ctx<'_>, a: DomainDestroyFlagsArgs) -> Reply<()> {
    flags(ctx, a.flags, DESTROY_GRACEFUL)?;
    Ok(drv(ctx)
        .destroy(&obj(ctx, &a.dom)?, a.flags & DESTROY_GRACEFUL != 0)
        .await?)
}

pub async fn get_autostart(
    ctx: &Ctx<'_>,
    a: DomainGetAutostartArgs,
) -> Reply<DomainGetAutostartRet> {
    let o = obj(ctx, &a.dom)?;
    Ok(DomainGetAutostartRet {
        autostart: i32::from(drv(ctx).autostart(&o)),
    })
}

pub async fn set_autostart(ctx: &Ctx<'_>, a: DomainSetAutostartArgs) -> Reply<()> {
    Ok(drv(ctx)
        .set_autostart(&obj(ctx, &a.dom)?, a.autostart != 0)
        .await?)
}

// ---- information ------------------------------------------------------------------

pub async fn get_info(ctx: &Ctx<'_>, a: DomainGetInfoArgs) -> Reply<DomainGetInfoRet> {
    let o = obj(ctx, &a.dom)?;
    let i = drv(ctx).info(&o);
    Ok(DomainGetInfoRet {
        state: u8::try_from(i.state).unwrap_or(0),
        max_mem: i.max_mem_kib,
        memory: i.memory_kib,
        nr_virt_cpu: u16::try_from(i.vcpus).unwrap_or(1),
        cpu_time: i.cpu_time_ns,
    })
}

pub async fn get_state(ctx: &Ctx<'_>, a: DomainGetStateArgs) -> Reply<DomainGetStateRet> {
    flags(ctx, a.flags, 0)?;
    let s = drv(ctx).state(&*obj(ctx, &a.dom)?);
    Ok(DomainGetStateRet {
        state: s.state,
        reason: s.reason,
    })
}

pub async fn get_os_type(ctx: &Ctx<'_>, a: DomainGetOsTypeArgs) -> Reply<DomainGetOsTypeRet> {
    obj(ctx, &a.dom)?;
    Ok(DomainGetOsTypeRet {
        type_: "uml".into(),
    })
}

pub async fn is_active(ctx: &Ctx<'_>, a: DomainIsActiveArgs) -> Reply<DomainIsActiveRet> {
    let o = obj(ctx, &a.dom)?;
    Ok(DomainIsActiveRet {
        active: i32::from(drv(ctx).is_active(&o)),
    })
}

pub async fn is_persistent(
    ctx: &Ctx<'_>,
    a: DomainIsPersistentArgs,
) -> Reply<DomainIsPersistentRet> {
    let o = obj(ctx, &a.dom)?;
    Ok(DomainIsPersistentRet {
        persistent: i32::from(drv(ctx).is_persistent(&o)),
    })
}

/// UML guests have no hotplug yet, so the live definition never drifts from the one
/// they were started with.
pub async fn is_updated(ctx: &Ctx<'_>, a: DomainIsUpdatedArgs) -> Reply<DomainIsUpdatedRet> {
    obj(ctx, &a.dom)?;
    Ok(DomainIsUpdatedRet { updated: 0 })
}

pub async fn has_managed_save_image(
    ctx: &Ctx<'_>,
    a: DomainHasManagedSaveImageArgs,
) -> Reply<DomainHasManagedSaveImageRet> {
    flags(ctx, a.flags, 0)?;
    obj(ctx, &a.dom)?;
    Ok(DomainHasManagedSaveImageRet { result: 0 })
}

pub async fn snapshot_num(ctx: &Ctx<'_>, a: DomainSnapshotNumArgs) -> Reply<DomainSnapshotNumRet> {
    obj(ctx, &a.dom)?;
    Ok(DomainSnapshotNumRet { num: 0 })
}

pub async fn get_messages(ctx: &Ctx<'_>, a: DomainGetMessagesArgs) -> Reply<DomainGetMessagesRet> {
    // DEPRECATION (1) and TAINTING (2): UML guests have neither.
    flags(ctx, a.flags, 1 | 2)?;
    obj(ctx, &a.dom)?;
    Ok(DomainGetMessagesRet { msgs: Vec::new() })
}

pub async fn get_max_memory(
    ctx: &Ctx<'_>,
    a: DomainGetMaxMemoryArgs,
) -> Reply<DomainGetMaxMemoryRet> {
    let o = obj(ctx, &a.dom)?;
    Ok(DomainGetMaxMemoryRet {
        memory: drv(ctx).info(&o).max_mem_kib,
    })
}

/// `virDomainModificationImpact` and `VIR_DOMAIN_MEM_MAXIMUM`.
const AFFECT_LIVE: u32 = 1;
const AFFECT_CONFIG: u32 = 2;
const MEM_MAXIMUM: u32 = 4;

pub async fn set_max_memory(ctx: &Ctx<'_>, a: DomainSetMaxMemoryArgs) -> Reply<()> {
    let o = obj(ctx, &a.dom)?;
    Ok(drv(ctx)
        .set_memory(&o, a.memory, true, false, false)
        .await?)
}

pub async fn set_memory(ctx: &Ctx<'_>, a: DomainSetMemoryArgs) -> Reply<()> {
    let o = obj(ctx, &a.dom)?;
    Ok(drv(ctx)
        .set_memory(&o, a.memory, false, false, false)
        .await?)
}

pub async fn set_memory_flags(ctx: &Ctx<'_>, a: DomainSetMemoryFlagsArgs) -> Reply<()> {
    flags(ctx, a.flags, AFFECT_LIVE | AFFECT_CONFIG | MEM_MAXIMUM)?;
    let o = obj(ctx, &a.dom)?;
    Ok(drv(ctx)
        .set_memory(
            &o,
            a.memory,
            a.flags & MEM_MAXIMUM != 0,
            a.flags & AFFECT_LIVE != 0,
            a.flags & AFFECT_CONFIG != 0,
        )
        .await?)
}

pub async fn get_max_vcpus(ctx: &Ctx<'_>, a: DomainGetMaxVcpusArgs) -> Reply<DomainGetMaxVcpusRet> {
    obj(ctx, &a.dom)?;
    Ok(DomainGetMaxVcpusRet { num: 1 })
}

/// `VIR_DOMAIN_VCPU_MAXIMUM` and `VIR_DOMAIN_VCPU_GUEST` join the impact flags here.
const VCPU_MAXIMUM: u32 = 4;
const VCPU_GUEST: u32 = 8;

pub async fn get_vcpus_flags(
    ctx: &Ctx<'_>,
    a: DomainGetVcpusFlagsArgs,
) -> Reply<DomainGetVcpusFlagsRet> {
    flags(
        ctx,
        a.flags,
        AFFECT_LIVE | AFFECT_CONFIG | VCPU_MAXIMUM | VCPU_GUEST,
    )?;
    let o = obj(ctx, &a.dom)?;
    if a.flags & AFFECT_LIVE != 0 && !drv(ctx).is_active(&o) {
        return Err(driver::Error::new(
            virtumld_protocol::error::code::OPERATION_INVALID,
            "domain is not running",
        )
        .into());
    }
    Ok(DomainGetVcpusFlagsRet { num: 1 })
}

pub async fn get_vcpus(ctx: &Ctx<'_>, a: DomainGetVcpusArgs) -> Reply<DomainGetVcpusRet> {
    let o = obj(ctx, &a.dom)?;
    if !drv(ctx).is_active(&o) {
        return Err(driver::Error::new(
            virtumld_protocol::error::code::OPERATION_INVALID,
            "cannot list vcpus for an inactive domain",
        )
        .into());
    }
    if a.maxinfo < 1 || a.maplen < 0 || a.maplen > 256 {
        return Err(err::invalid_arg(
            "maxinfo must be at least 1 and maplen at most 256",
        ));
    }
    let info = drv(ctx).info(&o);
    let host_cpus = crate::host::node_info().cpus as usize;
    // The single vcpu may run on any host CPU.
    let mut map = vec![0u8; a.maplen as usize];
    for cpu in 0..host_cpus.min(map.len() * 8) {
        map[cpu / 8] |= 1 << (cpu % 8);
    }
    Ok(DomainGetVcpusRet {
        info: vec![VcpuInfo {
            number: 0,
            state: 1,
            cpu_time: info.cpu_time_ns,
            cpu: -1,
        }],
        cpumaps: Opaque(map),
    })
}
