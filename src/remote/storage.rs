//! Storage pool and volume procedures over `crate::storage` (dir pools), and storage pool
//! event registrations (368/369, events 370 LIFECYCLE and 373 REFRESH).

use bytes::BytesMut;
use virtumld_protocol::error::{domain, RemoteError};
use virtumld_protocol::frame;
use virtumld_protocol::procedures::proc as p;
use virtumld_protocol::remote::*;
use virtumld_protocol::xdr::FixedOpaque;

use super::registry::{event_header, Family};
use super::{err, Ctx, Reply};
use crate::storage::{self, PoolEvent, PoolEventKind, PoolRef, Storage, VolRef};

impl From<storage::Error> for RemoteError {
    fn from(e: storage::Error) -> RemoteError {
        RemoteError::new(e.code, domain::STORAGE, e.message)
    }
}

fn st<'a>(ctx: &'a Ctx<'_>) -> &'a Storage {
    &ctx.daemon.storage
}

fn wire_pool(r: &PoolRef) -> NonnullStoragePool {
    NonnullStoragePool {
        name: r.name.clone(),
        uuid: FixedOpaque(r.uuid),
    }
}

fn wire_vol(v: &VolRef) -> NonnullStorageVol {
    NonnullStorageVol {
        pool: v.pool.clone(),
        name: v.name.clone(),
        key: v.key.clone(),
    }
}

fn pool(ctx: &Ctx<'_>, p: &NonnullStoragePool) -> Reply<PoolRef> {
    Ok(st(ctx).get(&p.name, &p.uuid.0)?)
}

fn vol(v: &NonnullStorageVol) -> VolRef {
    VolRef {
        pool: v.pool.clone(),
        name: v.name.clone(),
        key: v.key.clone(),
    }
}

fn no_flags(ctx: &Ctx<'_>, flags: u32) -> Reply<()> {
    if flags != 0 {
        return Err(err::unsupported_flags(ctx.info, u64::from(flags)));
    }
    Ok(())
}

fn limit(n: i32) -> Reply<usize> {
    usize::try_from(n).map_err(|_| err::invalid_arg("negative count"))
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

// ---- pools: lists and lookups -----------------------------------------------------

pub async fn connect_list_all_storage_pools(
    ctx: &Ctx<'_>,
    a: ConnectListAllStoragePoolsArgs,
) -> Reply<ConnectListAllStoragePoolsRet> {
    let pools = st(ctx).list(a.flags)?;
    Ok(ConnectListAllStoragePoolsRet {
        ret: pools.len() as u32,
        pools: if a.need_results != 0 {
            pools.iter().map(wire_pool).collect()
        } else {
            Vec::new()
        },
    })
}

pub async fn connect_num_of_storage_pools(ctx: &Ctx<'_>) -> Reply<ConnectNumOfStoragePoolsRet> {
    Ok(ConnectNumOfStoragePoolsRet {
        num: count(st(ctx).names(true).len()),
    })
}

pub async fn connect_list_storage_pools(
    ctx: &Ctx<'_>,
    a: ConnectListStoragePoolsArgs,
) -> Reply<ConnectListStoragePoolsRet> {
    let mut names = st(ctx).names(true);
    names.truncate(limit(a.maxnames)?);
    Ok(ConnectListStoragePoolsRet { names })
}

pub async fn connect_num_of_defined_storage_pools(
    ctx: &Ctx<'_>,
) -> Reply<ConnectNumOfDefinedStoragePoolsRet> {
    Ok(ConnectNumOfDefinedStoragePoolsRet {
        num: count(st(ctx).names(false).len()),
    })
}

pub async fn connect_list_defined_storage_pools(
    ctx: &Ctx<'_>,
    a: ConnectListDefinedStoragePoolsArgs,
) -> Reply<ConnectListDefinedStoragePoolsRet> {
    let mut names = st(ctx).names(false);
    names.truncate(limit(a.maxnames)?);
    Ok(ConnectListDefinedStoragePoolsRet { names })
}

pub async fn storage_pool_lookup_by_name(
    ctx: &Ctx<'_>,
    a: StoragePoolLookupByNameArgs,
) -> Reply<StoragePoolLookupByNameRet> {
    Ok(StoragePoolLookupByNameRet {
        pool: wire_pool(&st(ctx).by_name(&a.name)?),
    })
}

pub async fn storage_pool_lookup_by_uuid(
    ctx: &Ctx<'_>,
    a: StoragePoolLookupByUuidArgs,
) -> Reply<StoragePoolLookupByUuidRet> {
    Ok(StoragePoolLookupByUuidRet {
        pool: wire_pool(&st(ctx).by_uuid(&a.uuid.0)?),
    })
}

pub async fn storage_pool_lookup_by_volume(
    ctx: &Ctx<'_>,
    a: StoragePoolLookupByVolumeArgs,
) -> Reply<StoragePoolLookupByVolumeRet> {
    Ok(StoragePoolLookupByVolumeRet {
        pool: wire_pool(&st(ctx).pool_of(&vol(&a.vol))?),
    })
}

pub async fn storage_pool_lookup_by_target_path(
    ctx: &Ctx<'_>,
    a: StoragePoolLookupByTargetPathArgs,
) -> Reply<StoragePoolLookupByTargetPathRet> {
    Ok(StoragePoolLookupByTargetPathRet {
        pool: wire_pool(&st(ctx).by_target_path(&a.path)?),
    })
}

// ---- pools: definitions and lifecycle ----------------------------------------------

/// `VIR_STORAGE_POOL_DEFINE_VALIDATE`: the parser always validates.
const DEFINE_VALIDATE: u32 = 1;

pub async fn storage_pool_define_xml(
    ctx: &Ctx<'_>,
    a: StoragePoolDefineXmlArgs,
) -> Reply<StoragePoolDefineXmlRet> {
    if a.flags & !DEFINE_VALIDATE != 0 {
        return Err(err::unsupported_flags(ctx.info, u64::from(a.flags)));
    }
    Ok(StoragePoolDefineXmlRet {
        pool: wire_pool(&st(ctx).define(&a.xml)?),
    })
}

pub async fn storage_pool_create_xml(
    ctx: &Ctx<'_>,
    a: StoragePoolCreateXmlArgs,
) -> Reply<StoragePoolCreateXmlRet> {
    Ok(StoragePoolCreateXmlRet {
        pool: wire_pool(&st(ctx).create_xml(&a.xml, a.flags)?),
    })
}

pub async fn storage_pool_build(ctx: &Ctx<'_>, a: StoragePoolBuildArgs) -> Reply<()> {
    let r = pool(ctx, &a.pool)?;
    Ok(st(ctx).build(&r, a.flags)?)
}

pub async fn storage_pool_create(ctx: &Ctx<'_>, a: StoragePoolCreateArgs) -> Reply<()> {
    let r = pool(ctx, &a.pool)?;
    Ok(st(ctx).start(&r, a.flags)?)
}

pub async fn storage_pool_destroy(ctx: &Ctx<'_>, a: StoragePoolDestroyArgs) -> Reply<()> {
    let r = pool(ctx, &a.pool)?;
    Ok(st(ctx).destroy(&r)?)
}

pub async fn storage_pool_delete(ctx: &Ctx<'_>, a: StoragePoolDeleteArgs) -> Reply<()> {
    let r = pool(ctx, &a.pool)?;
    Ok(st(ctx).delete(&r, a.flags)?)
}

pub async fn storage_pool_undefine(ctx: &Ctx<'_>, a: StoragePoolUndefineArgs) -> Reply<()> {
    let r = pool(ctx, &a.pool)?;
    Ok(st(ctx).undefine(&r)?)
}

pub async fn storage_pool_refresh(ctx: &Ctx<'_>, a: StoragePoolRefreshArgs) -> Reply<()> {
    no_flags(ctx, a.flags)?;
    let r = pool(ctx, &a.pool)?;
    Ok(st(ctx).refresh(&r)?)
}

// ---- pools: information --------------------------------------------------------------

pub async fn storage_pool_get_info(
    ctx: &Ctx<'_>,
    a: StoragePoolGetInfoArgs,
) -> Reply<StoragePoolGetInfoRet> {
    let r = pool(ctx, &a.pool)?;
    let (state, live) = st(ctx).info(&r)?;
    Ok(StoragePoolGetInfoRet {
        state,
        capacity: live.capacity,
        allocation: live.allocation,
        available: live.available,
    })
}

/// `VIR_STORAGE_XML_INACTIVE`.
const XML_INACTIVE: u32 = 1;

pub async fn storage_pool_get_xml_desc(
    ctx: &Ctx<'_>,
    a: StoragePoolGetXmlDescArgs,
) -> Reply<StoragePoolGetXmlDescRet> {
    if a.flags & !XML_INACTIVE != 0 {
        return Err(err::unsupported_flags(ctx.info, u64::from(a.flags)));
    }
    let r = pool(ctx, &a.pool)?;
    Ok(StoragePoolGetXmlDescRet {
        xml: st(ctx).xml(&r, a.flags & XML_INACTIVE != 0)?,
    })
}

pub async fn storage_pool_get_autostart(
    ctx: &Ctx<'_>,
    a: StoragePoolGetAutostartArgs,
) -> Reply<StoragePoolGetAutostartRet> {
    let r = pool(ctx, &a.pool)?;
    Ok(StoragePoolGetAutostartRet {
        autostart: i32::from(st(ctx).autostart(&r)?),
    })
}

pub async fn storage_pool_set_autostart(
    ctx: &Ctx<'_>,
    a: StoragePoolSetAutostartArgs,
) -> Reply<()> {
    let r = pool(ctx, &a.pool)?;
    Ok(st(ctx).set_autostart(&r, a.autostart != 0)?)
}

pub async fn storage_pool_is_active(
    ctx: &Ctx<'_>,
    a: StoragePoolIsActiveArgs,
) -> Reply<StoragePoolIsActiveRet> {
    let r = pool(ctx, &a.pool)?;
    Ok(StoragePoolIsActiveRet {
        active: i32::from(st(ctx).is_active(&r)?),
    })
}

pub async fn storage_pool_is_persistent(
    ctx: &Ctx<'_>,
    a: StoragePoolIsPersistentArgs,
) -> Reply<StoragePoolIsPersistentRet> {
    let r = pool(ctx, &a.pool)?;
    Ok(StoragePoolIsPersistentRet {
        persistent: i32::from(st(ctx).is_persistent(&r)?),
    })
}

// ---- volumes ----------------------------------------------------------------------

pub async fn storage_pool_list_all_volumes(
    ctx: &Ctx<'_>,
    a: StoragePoolListAllVolumesArgs,
) -> Reply<StoragePoolListAllVolumesRet> {
    no_flags(ctx, a.flags)?;
    let r = pool(ctx, &a.pool)?;
    let vols = st(ctx).volumes(&r)?;
    Ok(StoragePoolListAllVolumesRet {
        ret: vols.len() as u32,
        vols: if a.need_results != 0 {
            vols.iter().map(wire_vol).collect()
        } else {
            Vec::new()
        },
    })
}

pub async fn storage_pool_num_of_volumes(
    ctx: &Ctx<'_>,
    a: StoragePoolNumOfVolumesArgs,
) -> Reply<StoragePoolNumOfVolumesRet> {
    let r = pool(ctx, &a.pool)?;
    Ok(StoragePoolNumOfVolumesRet {
        num: count(st(ctx).volumes(&r)?.len()),
    })
}

pub async fn storage_pool_list_volumes(
    ctx: &Ctx<'_>,
    a: StoragePoolListVolumesArgs,
) -> Reply<StoragePoolListVolumesRet> {
    let max = limit(a.maxnames)?;
    let r = pool(ctx, &a.pool)?;
    let mut names: Vec<String> = st(ctx).volumes(&r)?.into_iter().map(|v| v.name).collect();
    names.truncate(max);
    Ok(StoragePoolListVolumesRet { names })
}

pub async fn storage_vol_lookup_by_name(
    ctx: &Ctx<'_>,
    a: StorageVolLookupByNameArgs,
) -> Reply<StorageVolLookupByNameRet> {
    let r = pool(ctx, &a.pool)?;
    Ok(StorageVolLookupByNameRet {
        vol: wire_vol(&st(ctx).vol_by_name(&r, &a.name)?),
    })
}

pub async fn storage_vol_lookup_by_key(
    ctx: &Ctx<'_>,
    a: StorageVolLookupByKeyArgs,
) -> Reply<StorageVolLookupByKeyRet> {
    Ok(StorageVolLookupByKeyRet {
        vol: wire_vol(&st(ctx).vol_by_key(&a.key)?),
    })
}

pub async fn storage_vol_lookup_by_path(
    ctx: &Ctx<'_>,
    a: StorageVolLookupByPathArgs,
) -> Reply<StorageVolLookupByPathRet> {
    Ok(StorageVolLookupByPathRet {
        vol: wire_vol(&st(ctx).vol_by_path(&a.path)?),
    })
}

pub async fn storage_vol_create_xml(
    ctx: &Ctx<'_>,
    a: StorageVolCreateXmlArgs,
) -> Reply<StorageVolCreateXmlRet> {
    let r = pool(ctx, &a.pool)?;
    Ok(StorageVolCreateXmlRet {
        vol: wire_vol(&st(ctx).vol_create(&r, &a.xml, a.flags)?),
    })
}

pub async fn storage_vol_delete(ctx: &Ctx<'_>, a: StorageVolDeleteArgs) -> Reply<()> {
    Ok(st(ctx).vol_delete(&vol(&a.vol), a.flags)?)
}

pub async fn storage_vol_resize(ctx: &Ctx<'_>, a: StorageVolResizeArgs) -> Reply<()> {
    Ok(st(ctx).vol_resize(&vol(&a.vol), a.capacity, a.flags)?)
}

pub async fn storage_vol_get_info(
    ctx: &Ctx<'_>,
    a: StorageVolGetInfoArgs,
) -> Reply<StorageVolGetInfoRet> {
    let (_, i) = st(ctx).vol_info(&vol(&a.vol))?;
    Ok(StorageVolGetInfoRet {
        type_: i.kind,
        capacity: i.capacity,
        allocation: i.allocation,
    })
}

pub async fn storage_vol_get_xml_desc(
    ctx: &Ctx<'_>,
    a: StorageVolGetXmlDescArgs,
) -> Reply<StorageVolGetXmlDescRet> {
    no_flags(ctx, a.flags)?;
    Ok(StorageVolGetXmlDescRet {
        xml: st(ctx).vol_xml(&vol(&a.vol))?,
    })
}

pub async fn storage_vol_get_path(
    ctx: &Ctx<'_>,
    a: StorageVolGetPathArgs,
) -> Reply<StorageVolGetPathRet> {
    Ok(StorageVolGetPathRet {
        name: st(ctx)
            .vol_path(&vol(&a.vol))?
            .to_string_lossy()
            .into_owned(),
    })
}

// ---- events -----------------------------------------------------------------------

/// `virStoragePoolEventID`.
mod pool_event_id {
    pub const LIFECYCLE: i32 = 0;
    pub const REFRESH: i32 = 1;
    pub const LAST: i32 = 2;
}

#[derive(Debug, Clone)]
pub struct Registration {
    callback_id: i32,
    event_id: i32,
    pool: Option<[u8; 16]>,
}

/// Storage pool events: lifecycle and refresh, for every pool or one.
pub struct PoolEvents;

impl Family for PoolEvents {
    type Event = PoolEvent;
    type Reg = Registration;

    fn message(r: &Registration, ev: &PoolEvent) -> Option<BytesMut> {
        let wanted = match ev.kind {
            PoolEventKind::Lifecycle { .. } => pool_event_id::LIFECYCLE,
            PoolEventKind::Refresh => pool_event_id::REFRESH,
        };
        (r.event_id == wanted && r.pool.is_none_or(|u| u == ev.pool.uuid))
            .then(|| encode(r.callback_id, ev))
    }
}

pub type PoolEventRegistry = super::registry::Registry<PoolEvents>;

fn encode(callback_id: i32, ev: &PoolEvent) -> BytesMut {
    let pool = wire_pool(&ev.pool);
    match ev.kind {
        PoolEventKind::Lifecycle { event, detail } => frame::encode(
            &event_header(p::STORAGE_POOL_EVENT_LIFECYCLE),
            &StoragePoolEventLifecycleMsg {
                callback_id,
                pool,
                event,
                detail,
            },
        ),
        PoolEventKind::Refresh => frame::encode(
            &event_header(p::STORAGE_POOL_EVENT_REFRESH),
            &StoragePoolEventRefreshMsg { callback_id, pool },
        ),
    }
}

pub async fn connect_storage_pool_event_register_any(
    ctx: &Ctx<'_>,
    a: ConnectStoragePoolEventRegisterAnyArgs,
) -> Reply<ConnectStoragePoolEventRegisterAnyRet> {
    if !(0..pool_event_id::LAST).contains(&a.event_id) {
        return Err(err::invalid_arg(format!(
            "unsupported storage pool event ID {}",
            a.event_id
        )));
    }
    let only = match &a.pool {
        Some(p) => Some(pool(ctx, p)?.uuid),
        None => None,
    };
    let reg = &ctx.daemon.pool_events;
    let id = reg.next_callback_id();
    reg.add(
        ctx.client,
        || ctx.daemon.storage.subscribe(),
        Registration {
            callback_id: id,
            event_id: a.event_id,
            pool: only,
        },
    );
    Ok(ConnectStoragePoolEventRegisterAnyRet { callback_id: id })
}

pub async fn connect_storage_pool_event_deregister_any(
    ctx: &Ctx<'_>,
    a: ConnectStoragePoolEventDeregisterAnyArgs,
) -> Reply<()> {
    let removed = ctx
        .daemon
        .pool_events
        .remove(ctx.client.id, |r| r.callback_id == a.callback_id);
    if removed {
        Ok(())
    } else {
        Err(err::invalid_arg(format!(
            "storage pool event callback {} not registered",
            a.callback_id
        )))
    }
}
