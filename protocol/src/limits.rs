//! Size limits of the libvirt 9.0.0 protocol (`virnetprotocol.x`, `remote_protocol.x`).

/// Initial read buffer of libvirtd; also virtumld's cap on a whole message before a client
/// has authenticated, so an anonymous peer cannot make the daemon reserve 32 MiB.
pub const MESSAGE_INITIAL: usize = 65_536;
/// virtumld's cap on a whole message before authentication when the listener uses SASL:
/// room for an `AUTH_SASL_START` carrying [`AUTH_SASL_DATA_MAX`] bytes, which rpcgen's
/// `char data<>` sends as one 4-byte word each, plus the header, a mechanism name of up to
/// 256 bytes (RFC 4422 names have at most 20), `nil` and the array's length word.
pub const MESSAGE_PRE_AUTH_SASL_MAX: usize =
    MESSAGE_HEADER_LEN + (4 + 256) + 4 + 4 + 4 * AUTH_SASL_DATA_MAX;
/// Largest whole message, length word included.
pub const MESSAGE_MAX: usize = 33_554_432;
/// Length word plus header.
pub const MESSAGE_HEADER_LEN: usize = 28;
pub const MESSAGE_PAYLOAD_MAX: usize = MESSAGE_MAX - 24;
pub const MESSAGE_STRING_MAX: usize = 4_194_304;
pub const MESSAGE_NUM_FDS_MAX: usize = 32;

pub const STRING_MAX: usize = 4_194_304;
pub const DOMAIN_LIST_MAX: usize = 16_384;
pub const NETWORK_LIST_MAX: usize = 16_384;
pub const STORAGE_POOL_LIST_MAX: usize = 16_384;
pub const STORAGE_VOL_LIST_MAX: usize = 16_384;
pub const NODE_DEVICE_LIST_MAX: usize = 65_536;
pub const CPUMAP_MAX: usize = 2048;
pub const CPUMAPS_MAX: usize = 8_388_608;
pub const VCPUINFO_MAX: usize = 16_384;
pub const AUTH_SASL_DATA_MAX: usize = 65_536;
pub const AUTH_TYPE_LIST_MAX: usize = 20;
pub const CONNECT_GET_ALL_DOMAIN_STATS_MAX: usize = 262_144;
pub const DOMAIN_MESSAGES_MAX: usize = 2048;
pub const NODE_CPU_STATS_MAX: usize = 16;
pub const NODE_MEMORY_STATS_MAX: usize = 16;
pub const NODE_MAX_CELLS: usize = 1024;
pub const DOMAIN_MEMORY_STATS_MAX: usize = 1024;
pub const SECURITY_MODEL_MAX: usize = 257;
pub const SECURITY_LABEL_MAX: usize = 4097;
pub const SECURITY_DOI_MAX: usize = 257;
pub const UUID_BUFLEN: usize = 16;
pub const DOMAIN_SNAPSHOT_LIST_MAX: usize = 16_384;
pub const DOMAIN_BLOCK_STATS_PARAMETERS_MAX: usize = 16;
