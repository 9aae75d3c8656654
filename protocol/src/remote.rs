//! Typed arguments, replies and event messages of the remote program (libvirt 9.0.0's
//! `remote_protocol.x`), hand-translated into [`xdr_struct!`](crate::xdr_struct) declarations.
//!
//! Naming: `remote_<proc>_args` / `_ret` / `_msg` become `<Proc>Args` / `<Proc>Ret` / `<Proc>Msg`
//! in CamelCase (`remote_domain_get_xml_desc_args` -> `DomainGetXmlDescArgs`); fields are
//! snake_case (`callbackID` -> `callback_id`, `maxMem` -> `max_mem`); a field called `type` is
//! `type_`. A procedure with no struct on one side has a void payload there (CONNECT_CLOSE,
//! CONNECT_REGISTER_CLOSE_CALLBACK, the args of CONNECT_GET_TYPE, the reply of DOMAIN_CREATE...).
//!
//! Mapping of rpcgen types:
//!
//! | `.x`                               | Rust                                          |
//! |------------------------------------|-----------------------------------------------|
//! | `remote_nonnull_string`            | `String` (decoder bound: `STRING_MAX`)         |
//! | `remote_string`                    | `Option<String>`                              |
//! | `remote_uuid`                      | `FixedOpaque<16>` ([`Uuid`])                  |
//! | `remote_nonnull_domain`            | [`NonnullDomain`]                             |
//! | `remote_domain`                    | `Option<NonnullDomain>` ([`Domain`])          |
//! | `int` / `unsigned int`             | `i32` / `u32`                                 |
//! | `hyper` / `unsigned hyper`         | `i64` / `u64`                                 |
//! | `unsigned char` / `unsigned short` | `u8` / `u16` (4 bytes on the wire)            |
//! | `char x[N]`                        | `[i8; N]` (4 bytes per char)                  |
//! | `char x<N>`                        | `Vec<i8> [max N]` (4 bytes per char)          |
//! | `opaque x<N>`                      | `Opaque [max N]`                              |
//! | `T x<N>`                           | `Vec<T> [max N]`                              |
//!
//! Every `<REMOTE_..._MAX>` bound of the `.x` is carried as `[max ...]` on the field.

use bytes::{BufMut, BytesMut};

use crate::limits::AUTH_SASL_DATA_MAX;
use crate::limits::{
    AUTH_TYPE_LIST_MAX, CONNECT_GET_ALL_DOMAIN_STATS_MAX, CPUMAPS_MAX, CPUMAP_MAX, DOMAIN_LIST_MAX,
    DOMAIN_MESSAGES_MAX, NODE_CPU_STATS_MAX, NODE_MEMORY_STATS_MAX, SECURITY_DOI_MAX,
    SECURITY_LABEL_MAX, SECURITY_MODEL_MAX, STRING_MAX, VCPUINFO_MAX,
};
use crate::limits::{
    DOMAIN_BLOCK_STATS_PARAMETERS_MAX, DOMAIN_MEMORY_STATS_MAX, DOMAIN_SNAPSHOT_LIST_MAX,
    STORAGE_POOL_LIST_MAX, STORAGE_VOL_LIST_MAX,
};
use crate::xdr::{DecodeError, FixedOpaque, Opaque, Reader, Xdr, XdrBounded};
use crate::xdr_enum;
use crate::xdr_struct;

/// The error struct of a reply with status ERROR (`remote_error`), defined in [`crate::error`].
pub use crate::error::RemoteError;

/// `remote_uuid`: `opaque[VIR_UUID_BUFLEN]`, no length word.
pub type Uuid = FixedOpaque<16>;
/// `remote_domain`: an optional [`NonnullDomain`].
pub type Domain = Option<NonnullDomain>;
/// `remote_network`.
pub type Network = Option<NonnullNetwork>;
/// `remote_network_port`.
pub type NetworkPort = Option<NonnullNetworkPort>;
/// `remote_nwfilter`.
pub type Nwfilter = Option<NonnullNwfilter>;
/// `remote_nwfilter_binding`.
pub type NwfilterBinding = Option<NonnullNwfilterBinding>;
/// `remote_storage_pool`.
pub type StoragePool = Option<NonnullStoragePool>;
/// `remote_storage_vol`.
pub type StorageVol = Option<NonnullStorageVol>;
/// `remote_node_device`.
pub type NodeDevice = Option<NonnullNodeDevice>;
/// `remote_secret`.
pub type Secret = Option<NonnullSecret>;

// ---------------------------------------------------------------------------------------------
// Object references
// ---------------------------------------------------------------------------------------------

xdr_struct! {
    /// `remote_nonnull_domain`. `id` is -1 for an inactive domain.
    pub struct NonnullDomain {
        pub name: String,
        pub uuid: FixedOpaque<16>,
        pub id: i32,
    }

    /// `remote_nonnull_network`.
    pub struct NonnullNetwork {
        pub name: String,
        pub uuid: FixedOpaque<16>,
    }

    /// `remote_nonnull_network_port`.
    pub struct NonnullNetworkPort {
        pub net: NonnullNetwork,
        pub uuid: FixedOpaque<16>,
    }

    /// `remote_nonnull_nwfilter`.
    pub struct NonnullNwfilter {
        pub name: String,
        pub uuid: FixedOpaque<16>,
    }

    /// `remote_nonnull_nwfilter_binding`.
    pub struct NonnullNwfilterBinding {
        pub portdev: String,
        pub filtername: String,
    }

    /// `remote_nonnull_interface`.
    pub struct NonnullInterface {
        pub name: String,
        pub mac: String,
    }

    /// `remote_nonnull_storage_pool`.
    pub struct NonnullStoragePool {
        pub name: String,
        pub uuid: FixedOpaque<16>,
    }

    /// `remote_nonnull_storage_vol`.
    pub struct NonnullStorageVol {
        pub pool: String,
        pub name: String,
        pub key: String,
    }

    /// `remote_nonnull_node_device`.
    pub struct NonnullNodeDevice {
        pub name: String,
    }

    /// `remote_nonnull_secret`.
    pub struct NonnullSecret {
        pub uuid: FixedOpaque<16>,
        pub usage_type: i32,
        pub usage_id: String,
    }

    /// `remote_nonnull_domain_checkpoint`.
    pub struct NonnullDomainCheckpoint {
        pub name: String,
        pub dom: NonnullDomain,
    }

    /// `remote_nonnull_domain_snapshot`.
    pub struct NonnullDomainSnapshot {
        pub name: String,
        pub dom: NonnullDomain,
    }
}

// ---------------------------------------------------------------------------------------------
// Shared types
// ---------------------------------------------------------------------------------------------

xdr_enum! {
    /// `remote_auth_type`.
    pub enum AuthType {
        None = 0,
        Sasl = 1,
        Polkit = 2,
    }
}

/// `VIR_TYPED_PARAM_*`: the discriminant of [`TypedParamValue`].
pub mod typed_param_type {
    pub const INT: i32 = 1;
    pub const UINT: i32 = 2;
    pub const LLONG: i32 = 3;
    pub const ULLONG: i32 = 4;
    pub const DOUBLE: i32 = 5;
    pub const BOOLEAN: i32 = 6;
    pub const STRING: i32 = 7;
}

/// `remote_typed_param_value`: a union switched on an `int` type word (1..=7). Any other
/// discriminant is a decode error.
#[derive(Debug, Clone, PartialEq)]
pub enum TypedParamValue {
    Int(i32),
    UInt(u32),
    LLong(i64),
    ULLong(u64),
    /// XDR `double`: 8-byte IEEE 754, big-endian.
    Double(f64),
    /// XDR `int b`: libvirt sends 0 or 1 but does not check, so any value round-trips.
    Boolean(i32),
    String(String),
}

impl Default for TypedParamValue {
    fn default() -> Self {
        TypedParamValue::Int(0)
    }
}

impl TypedParamValue {
    /// The `VIR_TYPED_PARAM_*` discriminant.
    pub fn type_code(&self) -> i32 {
        use typed_param_type as t;
        match self {
            TypedParamValue::Int(_) => t::INT,
            TypedParamValue::UInt(_) => t::UINT,
            TypedParamValue::LLong(_) => t::LLONG,
            TypedParamValue::ULLong(_) => t::ULLONG,
            TypedParamValue::Double(_) => t::DOUBLE,
            TypedParamValue::Boolean(_) => t::BOOLEAN,
            TypedParamValue::String(_) => t::STRING,
        }
    }
}

impl Xdr for TypedParamValue {
    fn encode(&self, out: &mut BytesMut) {
        out.put_i32(self.type_code());
        match self {
            TypedParamValue::Int(v) | TypedParamValue::Boolean(v) => v.encode(out),
            TypedParamValue::UInt(v) => v.encode(out),
            TypedParamValue::LLong(v) => v.encode(out),
            TypedParamValue::ULLong(v) => v.encode(out),
            TypedParamValue::Double(v) => out.put_u64(v.to_bits()),
            TypedParamValue::String(v) => v.encode(out),
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        use typed_param_type as t;
        let kind = i32::decode(r)?;
        Ok(match kind {
            t::INT => TypedParamValue::Int(i32::decode(r)?),
            t::UINT => TypedParamValue::UInt(u32::decode(r)?),
            t::LLONG => TypedParamValue::LLong(i64::decode(r)?),
            t::ULLONG => TypedParamValue::ULLong(u64::decode(r)?),
            t::DOUBLE => TypedParamValue::Double(f64::from_bits(r.u64()?)),
            t::BOOLEAN => TypedParamValue::Boolean(i32::decode(r)?),
            t::STRING => TypedParamValue::String(String::decode_max(r, STRING_MAX)?),
            other => {
                return Err(DecodeError::OutOfRange {
                    what: "remote_typed_param_value",
                    value: i64::from(other),
                })
            }
        })
    }
}

xdr_struct! {
    /// `remote_typed_param`.
    pub struct TypedParam {
        pub field: String,
        pub value: TypedParamValue,
    }

    /// `remote_vcpu_info`: wire form of `virVcpuInfo`.
    pub struct VcpuInfo {
        pub number: u32,
        pub state: i32,
        pub cpu_time: u64,
        pub cpu: i32,
    }

    /// `remote_node_get_cpu_stats`: one entry of NODE_GET_CPU_STATS.
    pub struct NodeGetCpuStats {
        pub field: String,
        pub value: u64,
    }

    /// `remote_node_get_memory_stats`: one entry of NODE_GET_MEMORY_STATS.
    pub struct NodeGetMemoryStats {
        pub field: String,
        pub value: u64,
    }

    /// `remote_domain_stats_record`: one domain of CONNECT_GET_ALL_DOMAIN_STATS.
    pub struct DomainStatsRecord {
        pub dom: NonnullDomain,
        pub params: Vec<TypedParam> [max CONNECT_GET_ALL_DOMAIN_STATS_MAX],
    }
}

// ---------------------------------------------------------------------------------------------
// Connection and host
// ---------------------------------------------------------------------------------------------

xdr_struct! {
    /// CONNECT_OPEN (1).
    pub struct ConnectOpenArgs {
        pub name: Option<String>,
        pub flags: u32,
    }

    /// CONNECT_GET_TYPE (3).
    pub struct ConnectGetTypeRet {
        pub type_: String,
    }

    /// CONNECT_GET_VERSION (4).
    pub struct ConnectGetVersionRet {
        pub hv_ver: u64,
    }

    /// CONNECT_GET_MAX_VCPUS (5).
    pub struct ConnectGetMaxVcpusArgs {
        pub type_: Option<String>,
    }

    /// CONNECT_GET_MAX_VCPUS (5).
    pub struct ConnectGetMaxVcpusRet {
        pub max_vcpus: i32,
    }

    /// NODE_GET_INFO (6): 160 bytes; `model` is `char[32]`, four bytes per character.
    pub struct NodeGetInfoRet {
        pub model: [i8; 32],
        pub memory: u64,
        pub cpus: i32,
        pub mhz: i32,
        pub nodes: i32,
        pub sockets: i32,
        pub cores: i32,
        pub threads: i32,
    }

    /// CONNECT_GET_CAPABILITIES (7).
    pub struct ConnectGetCapabilitiesRet {
        pub capabilities: String,
    }

    /// CONNECT_LIST_DEFINED_DOMAINS (21).
    pub struct ConnectListDefinedDomainsArgs {
        pub maxnames: i32,
    }

    /// CONNECT_LIST_DEFINED_DOMAINS (21).
    pub struct ConnectListDefinedDomainsRet {
        pub names: Vec<String> [max DOMAIN_LIST_MAX],
    }

    /// CONNECT_NUM_OF_DEFINED_DOMAINS (25).
    pub struct ConnectNumOfDefinedDomainsRet {
        pub num: i32,
    }

    /// CONNECT_LIST_DOMAINS (37).
    pub struct ConnectListDomainsArgs {
        pub maxids: i32,
    }

    /// CONNECT_LIST_DOMAINS (37).
    pub struct ConnectListDomainsRet {
        pub ids: Vec<i32> [max DOMAIN_LIST_MAX],
    }

    /// CONNECT_NUM_OF_DOMAINS (51).
    pub struct ConnectNumOfDomainsRet {
        pub num: i32,
    }

    /// CONNECT_GET_HOSTNAME (59).
    pub struct ConnectGetHostnameRet {
        pub hostname: String,
    }

    /// CONNECT_SUPPORTS_FEATURE (60).
    pub struct ConnectSupportsFeatureArgs {
        pub feature: i32,
    }

    /// CONNECT_SUPPORTS_FEATURE (60).
    pub struct ConnectSupportsFeatureRet {
        pub supported: i32,
    }

    /// AUTH_LIST (66).
    pub struct AuthListRet {
        pub types: Vec<AuthType> [max AUTH_TYPE_LIST_MAX],
    }

    /// NODE_GET_FREE_MEMORY (102).
    pub struct NodeGetFreeMemoryRet {
        pub free_mem: u64,
    }

    /// CONNECT_DOMAIN_EVENT_REGISTER (105).
    pub struct ConnectDomainEventRegisterRet {
        pub cb_registered: i32,
    }

    /// CONNECT_DOMAIN_EVENT_DEREGISTER (106).
    pub struct ConnectDomainEventDeregisterRet {
        pub cb_registered: i32,
    }

    /// CONNECT_GET_URI (110).
    pub struct ConnectGetUriRet {
        pub uri: String,
    }

    /// NODE_GET_SECURITY_MODEL (122): `char<>` arrays, four bytes per character; libvirtd
    /// sends strlen+1 elements (NUL included), or zero elements when there is no model.
    pub struct NodeGetSecurityModelRet {
        pub model: Vec<i8> [max SECURITY_MODEL_MAX],
        pub doi: Vec<i8> [max SECURITY_DOI_MAX],
    }

    /// CONNECT_IS_SECURE (149).
    pub struct ConnectIsSecureRet {
        pub secure: i32,
    }

    /// CONNECT_GET_LIB_VERSION (157).
    pub struct ConnectGetLibVersionRet {
        pub lib_ver: u64,
    }

    /// CONNECT_DOMAIN_EVENT_REGISTER_ANY (167).
    pub struct ConnectDomainEventRegisterAnyArgs {
        pub event_id: i32,
    }

    /// CONNECT_DOMAIN_EVENT_DEREGISTER_ANY (168).
    pub struct ConnectDomainEventDeregisterAnyArgs {
        pub event_id: i32,
    }

    /// CONNECT_GET_SYSINFO (203).
    pub struct ConnectGetSysinfoArgs {
        pub flags: u32,
    }

    /// CONNECT_GET_SYSINFO (203).
    pub struct ConnectGetSysinfoRet {
        pub sysinfo: String,
    }

    /// NODE_GET_CPU_STATS (227).
    pub struct NodeGetCpuStatsArgs {
        pub cpu_num: i32,
        pub nparams: i32,
        pub flags: u32,
    }

    /// NODE_GET_CPU_STATS (227).
    pub struct NodeGetCpuStatsRet {
        pub params: Vec<NodeGetCpuStats> [max NODE_CPU_STATS_MAX],
        pub nparams: i32,
    }

    /// NODE_GET_MEMORY_STATS (228).
    pub struct NodeGetMemoryStatsArgs {
        pub nparams: i32,
        pub cell_num: i32,
        pub flags: u32,
    }

    /// NODE_GET_MEMORY_STATS (228).
    pub struct NodeGetMemoryStatsRet {
        pub params: Vec<NodeGetMemoryStats> [max NODE_MEMORY_STATS_MAX],
        pub nparams: i32,
    }

    /// CONNECT_LIST_ALL_DOMAINS (273).
    pub struct ConnectListAllDomainsArgs {
        pub need_results: i32,
        pub flags: u32,
    }

    /// CONNECT_LIST_ALL_DOMAINS (273).
    pub struct ConnectListAllDomainsRet {
        pub domains: Vec<NonnullDomain> [max DOMAIN_LIST_MAX],
        pub ret: u32,
    }

    /// CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY (316). `dom` = None: all domains.
    pub struct ConnectDomainEventCallbackRegisterAnyArgs {
        pub event_id: i32,
        pub dom: Option<NonnullDomain>,
    }

    /// CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY (316).
    pub struct ConnectDomainEventCallbackRegisterAnyRet {
        pub callback_id: i32,
    }

    /// CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY (317).
    pub struct ConnectDomainEventCallbackDeregisterAnyArgs {
        pub callback_id: i32,
    }

    /// CONNECT_GET_DOMAIN_CAPABILITIES (342).
    pub struct ConnectGetDomainCapabilitiesArgs {
        pub emulatorbin: Option<String>,
        pub arch: Option<String>,
        pub machine: Option<String>,
        pub virttype: Option<String>,
        pub flags: u32,
    }

    /// CONNECT_GET_DOMAIN_CAPABILITIES (342).
    pub struct ConnectGetDomainCapabilitiesRet {
        pub capabilities: String,
    }

    /// CONNECT_GET_ALL_DOMAIN_STATS (344).
    pub struct ConnectGetAllDomainStatsArgs {
        pub doms: Vec<NonnullDomain> [max DOMAIN_LIST_MAX],
        pub stats: u32,
        pub flags: u32,
    }

    /// CONNECT_GET_ALL_DOMAIN_STATS (344).
    pub struct ConnectGetAllDomainStatsRet {
        pub ret_stats: Vec<DomainStatsRecord> [max DOMAIN_LIST_MAX],
    }
}

// ---------------------------------------------------------------------------------------------
// Domains
// ---------------------------------------------------------------------------------------------

xdr_struct! {
    /// DOMAIN_CREATE (9).
    pub struct DomainCreateArgs {
        pub dom: NonnullDomain,
    }

    /// DOMAIN_CREATE_XML (10).
    pub struct DomainCreateXmlArgs {
        pub xml_desc: String,
        pub flags: u32,
    }

    /// DOMAIN_CREATE_XML (10).
    pub struct DomainCreateXmlRet {
        pub dom: NonnullDomain,
    }

    /// DOMAIN_DEFINE_XML (11).
    pub struct DomainDefineXmlArgs {
        pub xml: String,
    }

    /// DOMAIN_DEFINE_XML (11).
    pub struct DomainDefineXmlRet {
        pub dom: NonnullDomain,
    }

    /// DOMAIN_DESTROY (12).
    pub struct DomainDestroyArgs {
        pub dom: NonnullDomain,
    }

    /// DOMAIN_GET_XML_DESC (14).
    pub struct DomainGetXmlDescArgs {
        pub dom: NonnullDomain,
        pub flags: u32,
    }

    /// DOMAIN_GET_XML_DESC (14).
    pub struct DomainGetXmlDescRet {
        pub xml: String,
    }

    /// DOMAIN_GET_AUTOSTART (15).
    pub struct DomainGetAutostartArgs {
        pub dom: NonnullDomain,
    }

    /// DOMAIN_GET_AUTOSTART (15).
    pub struct DomainGetAutostartRet {
        pub autostart: i32,
    }

    /// DOMAIN_GET_INFO (16).
    pub struct DomainGetInfoArgs {
        pub dom: NonnullDomain,
    }

    /// DOMAIN_GET_INFO (16): `state` is an `unsigned char` and `nr_virt_cpu` an
    /// `unsigned short`, each sent as a 4-byte word (32 bytes in all).
    pub struct DomainGetInfoRet {
        pub state: u8,
        pub max_mem: u64,
        pub memory: u64,
        pub nr_virt_cpu: u16,
        pub cpu_time: u64,
    }

    /// DOMAIN_GET_MAX_MEMORY (17).
    pub struct DomainGetMaxMemoryArgs {
        pub dom: NonnullDomain,
    }

    /// DOMAIN_GET_MAX_MEMORY (17).
    pub struct DomainGetMaxMemoryRet {
        pub memory: u64,
    }

    /// DOMAIN_GET_MAX_VCPUS (18).
    pub struct DomainGetMaxVcpusArgs {
        pub dom: NonnullDomain,
    }

    /// DOMAIN_GET_MAX_VCPUS (18).
    pub struct DomainGetMaxVcpusRet {
        pub num: i32,
    }

    /// DOMAIN_GET_OS_TYPE (19).
    pub struct DomainGetOsTypeArgs {
        pub dom: NonnullDomain,
    }

    /// DOMAIN_GET_OS_TYPE (19).
    pub struct DomainGetOsTypeRet {
        pub type_: String,
    }

    /// DOMAIN_GET_VCPUS (20).
    pub struct DomainGetVcpusArgs {
        pub dom: NonnullDomain,
        pub maxinfo: i32,
        pub maplen: i32,
    }

    /// DOMAIN_GET_VCPUS (20).
    pub struct DomainGetVcpusRet {
        pub info: Vec<VcpuInfo> [max VCPUINFO_MAX],
        pub cpumaps: Opaque [max CPUMAPS_MAX],
    }

    /// DOMAIN_LOOKUP_BY_ID (22).
    pub struct DomainLookupByIdArgs {
        pub id: i32,
    }

    /// DOMAIN_LOOKUP_BY_ID (22).
    pub struct DomainLookupByIdRet {
        pub dom: NonnullDomain,
    }

    /// DOMAIN_LOOKUP_BY_NAME (23).
    pub struct DomainLookupByNameArgs {
        pub name: String,
    }

    /// DOMAIN_LOOKUP_BY_NAME (23).
    pub struct DomainLookupByNameRet {
        pub dom: NonnullDomain,
    }

    /// DOMAIN_LOOKUP_BY_UUID (24).
    pub struct DomainLookupByUuidArgs {
        pub uuid: FixedOpaque<16>,
    }

    /// DOMAIN_LOOKUP_BY_UUID (24).
    pub struct DomainLookupByUuidRet {
        pub dom: NonnullDomain,
    }

    /// DOMAIN_PIN_VCPU (26).
    pub struct DomainPinVcpuArgs {
        pub dom: NonnullDomain,
        pub vcpu: u32,
        pub cpumap: Opaque [max CPUMAP_MAX],
    }

    /// DOMAIN_REBOOT (27).
    pub struct DomainRebootArgs {
        pub dom: NonnullDomain,
        pub flags: u32,
    }

    /// DOMAIN_RESUME (28).
    pub struct DomainResumeArgs {
        pub dom: NonnullDomain,
    }

    /// DOMAIN_SET_AUTOSTART (29).
    pub struct DomainSetAutostartArgs {
        pub dom: NonnullDomain,
        pub autostart: i32,
    }

    /// DOMAIN_SET_MAX_MEMORY (30).
    pub struct DomainSetMaxMemoryArgs {
        pub dom: NonnullDomain,
        pub memory: u64,
    }

    /// DOMAIN_SET_MEMORY (31).
    pub struct DomainSetMemoryArgs {
        pub dom: NonnullDomain,
        pub memory: u64,
    }

    /// DOMAIN_SET_VCPUS (32).
    pub struct DomainSetVcpusArgs {
        pub dom: NonnullDomain,
        pub nvcpus: u32,
    }

    /// DOMAIN_SHUTDOWN (33).
    pub struct DomainShutdownArgs {
        pub dom: NonnullDomain,
    }

    /// DOMAIN_SUSPEND (34).
    pub struct DomainSuspendArgs {
        pub dom: NonnullDomain,
    }

    /// DOMAIN_UNDEFINE (35).
    pub struct DomainUndefineArgs {
        pub dom: NonnullDomain,
    }

    /// DOMAIN_GET_SECURITY_LABEL (121): `label` is a `char<>` array, four bytes per character.
    pub struct DomainGetSecurityLabelArgs {
        pub dom: NonnullDomain,
    }

    /// DOMAIN_GET_SECURITY_LABEL (121).
    pub struct DomainGetSecurityLabelRet {
        pub label: Vec<i8> [max SECURITY_LABEL_MAX],
        pub enforcing: i32,
    }

    /// DOMAIN_IS_ACTIVE (150).
    pub struct DomainIsActiveArgs {
        pub dom: NonnullDomain,
    }

    /// DOMAIN_IS_ACTIVE (150).
    pub struct DomainIsActiveRet {
        pub active: i32,
    }

    /// DOMAIN_IS_PERSISTENT (151).
    pub struct DomainIsPersistentArgs {
        pub dom: NonnullDomain,
    }

    /// DOMAIN_IS_PERSISTENT (151).
    pub struct DomainIsPersistentRet {
        pub persistent: i32,
    }

    /// NETWORK_IS_ACTIVE (152).
    pub struct NetworkIsActiveArgs {
        pub net: NonnullNetwork,
    }

    /// NETWORK_IS_ACTIVE (152).
    pub struct NetworkIsActiveRet {
        pub active: i32,
    }

    /// DOMAIN_GET_JOB_INFO (163).
    pub struct DomainGetJobInfoArgs {
        pub dom: NonnullDomain,
    }

    /// DOMAIN_GET_JOB_INFO (163).
    pub struct DomainGetJobInfoRet {
        pub type_: i32,
        pub time_elapsed: u64,
        pub time_remaining: u64,
        pub data_total: u64,
        pub data_processed: u64,
        pub data_remaining: u64,
        pub mem_total: u64,
        pub mem_processed: u64,
        pub mem_remaining: u64,
        pub file_total: u64,
        pub file_processed: u64,
        pub file_remaining: u64,
    }

    /// DOMAIN_HAS_MANAGED_SAVE_IMAGE (183).
    pub struct DomainHasManagedSaveImageArgs {
        pub dom: NonnullDomain,
        pub flags: u32,
    }

    /// DOMAIN_HAS_MANAGED_SAVE_IMAGE (183).
    pub struct DomainHasManagedSaveImageRet {
        pub result: i32,
    }

    /// DOMAIN_SNAPSHOT_NUM (187).
    pub struct DomainSnapshotNumArgs {
        pub dom: NonnullDomain,
        pub flags: u32,
    }

    /// DOMAIN_SNAPSHOT_NUM (187).
    pub struct DomainSnapshotNumRet {
        pub num: i32,
    }

    /// DOMAIN_CREATE_WITH_FLAGS (196).
    pub struct DomainCreateWithFlagsArgs {
        pub dom: NonnullDomain,
        pub flags: u32,
    }

    /// DOMAIN_CREATE_WITH_FLAGS (196): the domain again, now with its id.
    pub struct DomainCreateWithFlagsRet {
        pub dom: NonnullDomain,
    }

    /// DOMAIN_SET_VCPUS_FLAGS (199).
    pub struct DomainSetVcpusFlagsArgs {
        pub dom: NonnullDomain,
        pub nvcpus: u32,
        pub flags: u32,
    }

    /// DOMAIN_GET_VCPUS_FLAGS (200).
    pub struct DomainGetVcpusFlagsArgs {
        pub dom: NonnullDomain,
        pub flags: u32,
    }

    /// DOMAIN_GET_VCPUS_FLAGS (200).
    pub struct DomainGetVcpusFlagsRet {
        pub num: i32,
    }

    /// DOMAIN_OPEN_CONSOLE (201): opens a stream; the reply is void.
    pub struct DomainOpenConsoleArgs {
        pub dom: NonnullDomain,
        pub dev_name: Option<String>,
        pub flags: u32,
    }

    /// DOMAIN_IS_UPDATED (202).
    pub struct DomainIsUpdatedArgs {
        pub dom: NonnullDomain,
    }

    /// DOMAIN_IS_UPDATED (202).
    pub struct DomainIsUpdatedRet {
        pub updated: i32,
    }

    /// DOMAIN_SET_MEMORY_FLAGS (204).
    pub struct DomainSetMemoryFlagsArgs {
        pub dom: NonnullDomain,
        pub memory: u64,
        pub flags: u32,
    }

    /// DOMAIN_GET_STATE (212).
    pub struct DomainGetStateArgs {
        pub dom: NonnullDomain,
        pub flags: u32,
    }

    /// DOMAIN_GET_STATE (212).
    pub struct DomainGetStateRet {
        pub state: i32,
        pub reason: i32,
    }

    /// DOMAIN_UNDEFINE_FLAGS (231).
    pub struct DomainUndefineFlagsArgs {
        pub dom: NonnullDomain,
        pub flags: u32,
    }

    /// DOMAIN_DESTROY_FLAGS (234).
    pub struct DomainDestroyFlagsArgs {
        pub dom: NonnullDomain,
        pub flags: u32,
    }

    /// DOMAIN_SHUTDOWN_FLAGS (258).
    pub struct DomainShutdownFlagsArgs {
        pub dom: NonnullDomain,
        pub flags: u32,
    }

    /// DOMAIN_DEFINE_XML_FLAGS (350).
    pub struct DomainDefineXmlFlagsArgs {
        pub xml: String,
        pub flags: u32,
    }

    /// DOMAIN_DEFINE_XML_FLAGS (350).
    pub struct DomainDefineXmlFlagsRet {
        pub dom: NonnullDomain,
    }

    /// DOMAIN_GET_MESSAGES (426).
    pub struct DomainGetMessagesArgs {
        pub dom: NonnullDomain,
        pub flags: u32,
    }

    /// DOMAIN_GET_MESSAGES (426).
    pub struct DomainGetMessagesRet {
        pub msgs: Vec<String> [max DOMAIN_MESSAGES_MAX],
    }
}

// ---------------------------------------------------------------------------------------------
// Events (server -> client MESSAGEs)
// ---------------------------------------------------------------------------------------------

xdr_struct! {
    /// DOMAIN_EVENT_LIFECYCLE (107): legacy event, sent to clients registered with 105/167.
    pub struct DomainEventLifecycleMsg {
        pub dom: NonnullDomain,
        pub event: i32,
        pub detail: i32,
    }

    /// DOMAIN_EVENT_REBOOT (169).
    pub struct DomainEventRebootMsg {
        pub dom: NonnullDomain,
    }

    /// DOMAIN_EVENT_CALLBACK_LIFECYCLE (318): sent to clients registered with 316.
    pub struct DomainEventCallbackLifecycleMsg {
        pub callback_id: i32,
        pub msg: DomainEventLifecycleMsg,
    }

    /// DOMAIN_EVENT_CALLBACK_REBOOT (319).
    pub struct DomainEventCallbackRebootMsg {
        pub callback_id: i32,
        pub msg: DomainEventRebootMsg,
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics, snapshots list, storage pools and volumes
// ---------------------------------------------------------------------------------------------

xdr_struct! {
    /// DOMAIN_BLOCK_STATS (64).
    pub struct DomainBlockStatsArgs {
        pub dom: NonnullDomain,
        pub path: String,
    }

    /// DOMAIN_BLOCK_STATS (64): -1 for a figure the hypervisor does not know.
    pub struct DomainBlockStatsRet {
        pub rd_req: i64,
        pub rd_bytes: i64,
        pub wr_req: i64,
        pub wr_bytes: i64,
        pub errs: i64,
    }

    /// DOMAIN_INTERFACE_STATS (65).
    pub struct DomainInterfaceStatsArgs {
        pub dom: NonnullDomain,
        pub device: String,
    }

    /// DOMAIN_INTERFACE_STATS (65).
    pub struct DomainInterfaceStatsRet {
        pub rx_bytes: i64,
        pub rx_packets: i64,
        pub rx_errs: i64,
        pub rx_drop: i64,
        pub tx_bytes: i64,
        pub tx_packets: i64,
        pub tx_errs: i64,
        pub tx_drop: i64,
    }

    /// DOMAIN_MEMORY_STATS (159).
    pub struct DomainMemoryStatsArgs {
        pub dom: NonnullDomain,
        pub max_stats: u32,
        pub flags: u32,
    }

    /// `remote_domain_memory_stat`: one `VIR_DOMAIN_MEMORY_STAT_*` tag and its value.
    pub struct DomainMemoryStat {
        pub tag: i32,
        pub val: u64,
    }

    /// DOMAIN_MEMORY_STATS (159).
    pub struct DomainMemoryStatsRet {
        pub stats: Vec<DomainMemoryStat> [max DOMAIN_MEMORY_STATS_MAX],
    }

    /// DOMAIN_BLOCK_STATS_FLAGS (243).
    pub struct DomainBlockStatsFlagsArgs {
        pub dom: NonnullDomain,
        pub path: String,
        pub nparams: i32,
        pub flags: u32,
    }

    /// DOMAIN_BLOCK_STATS_FLAGS (243).
    pub struct DomainBlockStatsFlagsRet {
        pub params: Vec<TypedParam> [max DOMAIN_BLOCK_STATS_PARAMETERS_MAX],
        pub nparams: i32,
    }

    /// DOMAIN_LIST_ALL_SNAPSHOTS (274).
    pub struct DomainListAllSnapshotsArgs {
        pub dom: NonnullDomain,
        pub need_results: i32,
        pub flags: u32,
    }

    /// DOMAIN_LIST_ALL_SNAPSHOTS (274).
    pub struct DomainListAllSnapshotsRet {
        pub snapshots: Vec<NonnullDomainSnapshot> [max DOMAIN_SNAPSHOT_LIST_MAX],
        pub ret: i32,
    }

    /// CONNECT_NUM_OF_STORAGE_POOLS (71).
    pub struct ConnectNumOfStoragePoolsRet {
        pub num: i32,
    }

    /// CONNECT_LIST_STORAGE_POOLS (72).
    pub struct ConnectListStoragePoolsArgs {
        pub maxnames: i32,
    }

    /// CONNECT_LIST_STORAGE_POOLS (72).
    pub struct ConnectListStoragePoolsRet {
        pub names: Vec<String> [max STORAGE_POOL_LIST_MAX],
    }

    /// CONNECT_NUM_OF_DEFINED_STORAGE_POOLS (73).
    pub struct ConnectNumOfDefinedStoragePoolsRet {
        pub num: i32,
    }

    /// CONNECT_LIST_DEFINED_STORAGE_POOLS (74).
    pub struct ConnectListDefinedStoragePoolsArgs {
        pub maxnames: i32,
    }

    /// CONNECT_LIST_DEFINED_STORAGE_POOLS (74).
    pub struct ConnectListDefinedStoragePoolsRet {
        pub names: Vec<String> [max STORAGE_POOL_LIST_MAX],
    }

    /// STORAGE_POOL_CREATE_XML (76).
    pub struct StoragePoolCreateXmlArgs {
        pub xml: String,
        pub flags: u32,
    }

    /// STORAGE_POOL_CREATE_XML (76).
    pub struct StoragePoolCreateXmlRet {
        pub pool: NonnullStoragePool,
    }

    /// STORAGE_POOL_DEFINE_XML (77).
    pub struct StoragePoolDefineXmlArgs {
        pub xml: String,
        pub flags: u32,
    }

    /// STORAGE_POOL_DEFINE_XML (77).
    pub struct StoragePoolDefineXmlRet {
        pub pool: NonnullStoragePool,
    }

    /// STORAGE_POOL_CREATE (78).
    pub struct StoragePoolCreateArgs {
        pub pool: NonnullStoragePool,
        pub flags: u32,
    }

    /// STORAGE_POOL_BUILD (79).
    pub struct StoragePoolBuildArgs {
        pub pool: NonnullStoragePool,
        pub flags: u32,
    }

    /// STORAGE_POOL_DESTROY (80).
    pub struct StoragePoolDestroyArgs {
        pub pool: NonnullStoragePool,
    }

    /// STORAGE_POOL_DELETE (81).
    pub struct StoragePoolDeleteArgs {
        pub pool: NonnullStoragePool,
        pub flags: u32,
    }

    /// STORAGE_POOL_UNDEFINE (82).
    pub struct StoragePoolUndefineArgs {
        pub pool: NonnullStoragePool,
    }

    /// STORAGE_POOL_REFRESH (83).
    pub struct StoragePoolRefreshArgs {
        pub pool: NonnullStoragePool,
        pub flags: u32,
    }

    /// STORAGE_POOL_LOOKUP_BY_NAME (84).
    pub struct StoragePoolLookupByNameArgs {
        pub name: String,
    }

    /// STORAGE_POOL_LOOKUP_BY_NAME (84).
    pub struct StoragePoolLookupByNameRet {
        pub pool: NonnullStoragePool,
    }

    /// STORAGE_POOL_LOOKUP_BY_UUID (85).
    pub struct StoragePoolLookupByUuidArgs {
        pub uuid: FixedOpaque<16>,
    }

    /// STORAGE_POOL_LOOKUP_BY_UUID (85).
    pub struct StoragePoolLookupByUuidRet {
        pub pool: NonnullStoragePool,
    }

    /// STORAGE_POOL_LOOKUP_BY_VOLUME (86).
    pub struct StoragePoolLookupByVolumeArgs {
        pub vol: NonnullStorageVol,
    }

    /// STORAGE_POOL_LOOKUP_BY_VOLUME (86).
    pub struct StoragePoolLookupByVolumeRet {
        pub pool: NonnullStoragePool,
    }

    /// STORAGE_POOL_GET_INFO (87).
    pub struct StoragePoolGetInfoArgs {
        pub pool: NonnullStoragePool,
    }

    /// STORAGE_POOL_GET_INFO (87): `state` is an `unsigned char` (one 4-byte word).
    pub struct StoragePoolGetInfoRet {
        pub state: u8,
        pub capacity: u64,
        pub allocation: u64,
        pub available: u64,
    }

    /// STORAGE_POOL_GET_XML_DESC (88).
    pub struct StoragePoolGetXmlDescArgs {
        pub pool: NonnullStoragePool,
        pub flags: u32,
    }

    /// STORAGE_POOL_GET_XML_DESC (88).
    pub struct StoragePoolGetXmlDescRet {
        pub xml: String,
    }

    /// STORAGE_POOL_GET_AUTOSTART (89).
    pub struct StoragePoolGetAutostartArgs {
        pub pool: NonnullStoragePool,
    }

    /// STORAGE_POOL_GET_AUTOSTART (89).
    pub struct StoragePoolGetAutostartRet {
        pub autostart: i32,
    }

    /// STORAGE_POOL_SET_AUTOSTART (90).
    pub struct StoragePoolSetAutostartArgs {
        pub pool: NonnullStoragePool,
        pub autostart: i32,
    }

    /// STORAGE_POOL_NUM_OF_VOLUMES (91).
    pub struct StoragePoolNumOfVolumesArgs {
        pub pool: NonnullStoragePool,
    }

    /// STORAGE_POOL_NUM_OF_VOLUMES (91).
    pub struct StoragePoolNumOfVolumesRet {
        pub num: i32,
    }

    /// STORAGE_POOL_LIST_VOLUMES (92).
    pub struct StoragePoolListVolumesArgs {
        pub pool: NonnullStoragePool,
        pub maxnames: i32,
    }

    /// STORAGE_POOL_LIST_VOLUMES (92).
    pub struct StoragePoolListVolumesRet {
        pub names: Vec<String> [max STORAGE_VOL_LIST_MAX],
    }

    /// STORAGE_VOL_CREATE_XML (93).
    pub struct StorageVolCreateXmlArgs {
        pub pool: NonnullStoragePool,
        pub xml: String,
        pub flags: u32,
    }

    /// STORAGE_VOL_CREATE_XML (93).
    pub struct StorageVolCreateXmlRet {
        pub vol: NonnullStorageVol,
    }

    /// STORAGE_VOL_DELETE (94).
    pub struct StorageVolDeleteArgs {
        pub vol: NonnullStorageVol,
        pub flags: u32,
    }

    /// STORAGE_VOL_LOOKUP_BY_NAME (95).
    pub struct StorageVolLookupByNameArgs {
        pub pool: NonnullStoragePool,
        pub name: String,
    }

    /// STORAGE_VOL_LOOKUP_BY_NAME (95).
    pub struct StorageVolLookupByNameRet {
        pub vol: NonnullStorageVol,
    }

    /// STORAGE_VOL_LOOKUP_BY_KEY (96).
    pub struct StorageVolLookupByKeyArgs {
        pub key: String,
    }

    /// STORAGE_VOL_LOOKUP_BY_KEY (96).
    pub struct StorageVolLookupByKeyRet {
        pub vol: NonnullStorageVol,
    }

    /// STORAGE_VOL_LOOKUP_BY_PATH (97).
    pub struct StorageVolLookupByPathArgs {
        pub path: String,
    }

    /// STORAGE_VOL_LOOKUP_BY_PATH (97).
    pub struct StorageVolLookupByPathRet {
        pub vol: NonnullStorageVol,
    }

    /// STORAGE_VOL_GET_INFO (98).
    pub struct StorageVolGetInfoArgs {
        pub vol: NonnullStorageVol,
    }

    /// STORAGE_VOL_GET_INFO (98): `type` is a `char` (one 4-byte word).
    pub struct StorageVolGetInfoRet {
        pub type_: i8,
        pub capacity: u64,
        pub allocation: u64,
    }

    /// STORAGE_VOL_GET_XML_DESC (99).
    pub struct StorageVolGetXmlDescArgs {
        pub vol: NonnullStorageVol,
        pub flags: u32,
    }

    /// STORAGE_VOL_GET_XML_DESC (99).
    pub struct StorageVolGetXmlDescRet {
        pub xml: String,
    }

    /// STORAGE_VOL_GET_PATH (100).
    pub struct StorageVolGetPathArgs {
        pub vol: NonnullStorageVol,
    }

    /// STORAGE_VOL_GET_PATH (100).
    pub struct StorageVolGetPathRet {
        pub name: String,
    }

    /// STORAGE_POOL_IS_ACTIVE (154).
    pub struct StoragePoolIsActiveArgs {
        pub pool: NonnullStoragePool,
    }

    /// STORAGE_POOL_IS_ACTIVE (154).
    pub struct StoragePoolIsActiveRet {
        pub active: i32,
    }

    /// STORAGE_POOL_IS_PERSISTENT (155).
    pub struct StoragePoolIsPersistentArgs {
        pub pool: NonnullStoragePool,
    }

    /// STORAGE_POOL_IS_PERSISTENT (155).
    pub struct StoragePoolIsPersistentRet {
        pub persistent: i32,
    }

    /// STORAGE_VOL_RESIZE (260).
    pub struct StorageVolResizeArgs {
        pub vol: NonnullStorageVol,
        pub capacity: u64,
        pub flags: u32,
    }

    /// CONNECT_LIST_ALL_STORAGE_POOLS (281).
    pub struct ConnectListAllStoragePoolsArgs {
        pub need_results: i32,
        pub flags: u32,
    }

    /// CONNECT_LIST_ALL_STORAGE_POOLS (281).
    pub struct ConnectListAllStoragePoolsRet {
        pub pools: Vec<NonnullStoragePool> [max STORAGE_POOL_LIST_MAX],
        pub ret: u32,
    }

    /// STORAGE_POOL_LIST_ALL_VOLUMES (282).
    pub struct StoragePoolListAllVolumesArgs {
        pub pool: NonnullStoragePool,
        pub need_results: i32,
        pub flags: u32,
    }

    /// STORAGE_POOL_LIST_ALL_VOLUMES (282).
    pub struct StoragePoolListAllVolumesRet {
        pub vols: Vec<NonnullStorageVol> [max STORAGE_VOL_LIST_MAX],
        pub ret: u32,
    }

    /// CONNECT_STORAGE_POOL_EVENT_REGISTER_ANY (368). `pool` = None: all pools.
    pub struct ConnectStoragePoolEventRegisterAnyArgs {
        pub event_id: i32,
        pub pool: Option<NonnullStoragePool>,
    }

    /// CONNECT_STORAGE_POOL_EVENT_REGISTER_ANY (368).
    pub struct ConnectStoragePoolEventRegisterAnyRet {
        pub callback_id: i32,
    }

    /// CONNECT_STORAGE_POOL_EVENT_DEREGISTER_ANY (369).
    pub struct ConnectStoragePoolEventDeregisterAnyArgs {
        pub callback_id: i32,
    }

    /// STORAGE_POOL_EVENT_LIFECYCLE (370): a MESSAGE to clients registered with 368.
    pub struct StoragePoolEventLifecycleMsg {
        pub callback_id: i32,
        pub pool: NonnullStoragePool,
        pub event: i32,
        pub detail: i32,
    }

    /// STORAGE_POOL_EVENT_REFRESH (373).
    pub struct StoragePoolEventRefreshMsg {
        pub callback_id: i32,
        pub pool: NonnullStoragePool,
    }

    /// STORAGE_POOL_LOOKUP_BY_TARGET_PATH (391).
    pub struct StoragePoolLookupByTargetPathArgs {
        pub path: String,
    }

    /// STORAGE_POOL_LOOKUP_BY_TARGET_PATH (391).
    pub struct StoragePoolLookupByTargetPathRet {
        pub pool: NonnullStoragePool,
    }
}

// SASL authentication (`remote_protocol.x`, libvirt 9.0.0). `char data<>` travels as rpcgen's
// `xdr_char` array: one 4-byte word per byte (observed in virsh's AUTH_SASL_START), bytes
// above 0x7f sign-extended. `nil` tells NULL data (no data at all) from empty data, which
// SASL treats differently.
xdr_struct! {
    /// AUTH_SASL_INIT (67).
    pub struct AuthSaslInitRet {
        pub mechlist: String,
    }

    /// AUTH_SASL_START (68).
    pub struct AuthSaslStartArgs {
        pub mech: String,
        pub nil: i32,
        pub data: Vec<i8> [max AUTH_SASL_DATA_MAX],
    }

    /// AUTH_SASL_START (68).
    pub struct AuthSaslStartRet {
        pub complete: i32,
        pub nil: i32,
        pub data: Vec<i8> [max AUTH_SASL_DATA_MAX],
    }

    /// AUTH_SASL_STEP (69).
    pub struct AuthSaslStepArgs {
        pub nil: i32,
        pub data: Vec<i8> [max AUTH_SASL_DATA_MAX],
    }

    /// AUTH_SASL_STEP (69).
    pub struct AuthSaslStepRet {
        pub complete: i32,
        pub nil: i32,
        pub data: Vec<i8> [max AUTH_SASL_DATA_MAX],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xdr::{from_bytes, to_bytes};

    #[test]
    fn typed_param_union_round_trips_every_arm() {
        let values = [
            TypedParamValue::Int(-5),
            TypedParamValue::UInt(7),
            TypedParamValue::LLong(-1 << 40),
            TypedParamValue::ULLong(u64::MAX),
            TypedParamValue::Double(1.5),
            TypedParamValue::Boolean(1),
            TypedParamValue::String("vcpu.current".into()),
        ];
        for (i, v) in values.into_iter().enumerate() {
            let p = TypedParam {
                field: "f".into(),
                value: v,
            };
            let b = to_bytes(&p);
            assert_eq!(&b[8..12], &(i as i32 + 1).to_be_bytes());
            assert_eq!(from_bytes::<TypedParam>(&b), Ok(p));
        }
    }

    #[test]
    fn typed_param_double_is_big_endian_ieee() {
        let b = to_bytes(&TypedParamValue::Double(1.0));
        assert_eq!(&b[..], &[0, 0, 0, 5, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn typed_param_unknown_discriminant_rejected() {
        for bad in [0i32, 8, -1] {
            let mut b = bad.to_be_bytes().to_vec();
            b.extend_from_slice(&[0, 0, 0, 0]);
            assert!(from_bytes::<TypedParamValue>(&b).is_err(), "{bad}");
        }
    }

    #[test]
    fn node_get_info_is_160_bytes() {
        assert_eq!(to_bytes(&NodeGetInfoRet::default()).len(), 160);
        assert_eq!(to_bytes(&DomainGetInfoRet::default()).len(), 32);
    }

    #[test]
    fn list_bounds_enforced() {
        // AUTH_LIST with 21 entries exceeds REMOTE_AUTH_TYPE_LIST_MAX.
        let mut b = 21u32.to_be_bytes().to_vec();
        b.extend(std::iter::repeat_n([0u8; 4], 21).flatten());
        assert!(matches!(
            from_bytes::<AuthListRet>(&b),
            Err(DecodeError::TooLong { len: 21, max: 20 })
        ));
        // A security model longer than 257 chars.
        let mut b = 258u32.to_be_bytes().to_vec();
        b.extend(std::iter::repeat_n([0u8, 0, 0, 0x41], 258).flatten());
        b.extend_from_slice(&[0, 0, 0, 0]);
        assert!(from_bytes::<NodeGetSecurityModelRet>(&b).is_err());
    }

    #[test]
    fn unknown_auth_type_rejected() {
        assert!(from_bytes::<AuthListRet>(&[0, 0, 0, 1, 0, 0, 0, 3]).is_err());
        assert_eq!(
            from_bytes::<AuthListRet>(&[0, 0, 0, 1, 0, 0, 0, 1]),
            Ok(AuthListRet {
                types: vec![AuthType::Sasl]
            })
        );
    }
}
