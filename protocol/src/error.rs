//! libvirt's error numbers and the wire error struct (`remote_error`).

use crate::remote::{NonnullDomain, NonnullNetwork};

/// libvirt's `virErrorNumber` values (the `code` of an error), as in libvirt 9.0.0's `virterror.h`.
pub mod code {
    pub const OK: i32 = 0;
    pub const INTERNAL_ERROR: i32 = 1;
    pub const NO_MEMORY: i32 = 2;
    pub const NO_SUPPORT: i32 = 3;
    pub const UNKNOWN_HOST: i32 = 4;
    pub const NO_CONNECT: i32 = 5;
    pub const INVALID_CONN: i32 = 6;
    pub const INVALID_DOMAIN: i32 = 7;
    pub const INVALID_ARG: i32 = 8;
    pub const OPERATION_FAILED: i32 = 9;
    pub const GET_FAILED: i32 = 10;
    pub const POST_FAILED: i32 = 11;
    pub const HTTP_ERROR: i32 = 12;
    pub const SEXPR_SERIAL: i32 = 13;
    pub const NO_XEN: i32 = 14;
    pub const XEN_CALL: i32 = 15;
    pub const OS_TYPE: i32 = 16;
    pub const NO_KERNEL: i32 = 17;
    pub const NO_ROOT: i32 = 18;
    pub const NO_SOURCE: i32 = 19;
    pub const NO_TARGET: i32 = 20;
    pub const NO_NAME: i32 = 21;
    pub const NO_OS: i32 = 22;
    pub const NO_DEVICE: i32 = 23;
    pub const NO_XENSTORE: i32 = 24;
    pub const DRIVER_FULL: i32 = 25;
    pub const CALL_FAILED: i32 = 26;
    pub const XML_ERROR: i32 = 27;
    pub const DOM_EXIST: i32 = 28;
    pub const OPERATION_DENIED: i32 = 29;
    pub const OPEN_FAILED: i32 = 30;
    pub const READ_FAILED: i32 = 31;
    pub const PARSE_FAILED: i32 = 32;
    pub const CONF_SYNTAX: i32 = 33;
    pub const WRITE_FAILED: i32 = 34;
    pub const XML_DETAIL: i32 = 35;
    pub const INVALID_NETWORK: i32 = 36;
    pub const NETWORK_EXIST: i32 = 37;
    pub const SYSTEM_ERROR: i32 = 38;
    pub const RPC: i32 = 39;
    pub const GNUTLS_ERROR: i32 = 40;
    pub const WAR_NO_NETWORK: i32 = 41;
    pub const NO_DOMAIN: i32 = 42;
    pub const NO_NETWORK: i32 = 43;
    pub const INVALID_MAC: i32 = 44;
    pub const AUTH_FAILED: i32 = 45;
    pub const INVALID_STORAGE_POOL: i32 = 46;
    pub const INVALID_STORAGE_VOL: i32 = 47;
    pub const WAR_NO_STORAGE: i32 = 48;
    pub const NO_STORAGE_POOL: i32 = 49;
    pub const NO_STORAGE_VOL: i32 = 50;
    pub const WAR_NO_NODE: i32 = 51;
    pub const INVALID_NODE_DEVICE: i32 = 52;
    pub const NO_NODE_DEVICE: i32 = 53;
    pub const NO_SECURITY_MODEL: i32 = 54;
    pub const OPERATION_INVALID: i32 = 55;
    pub const WAR_NO_INTERFACE: i32 = 56;
    pub const NO_INTERFACE: i32 = 57;
    pub const INVALID_INTERFACE: i32 = 58;
    pub const MULTIPLE_INTERFACES: i32 = 59;
    pub const WAR_NO_NWFILTER: i32 = 60;
    pub const INVALID_NWFILTER: i32 = 61;
    pub const NO_NWFILTER: i32 = 62;
    pub const BUILD_FIREWALL: i32 = 63;
    pub const WAR_NO_SECRET: i32 = 64;
    pub const INVALID_SECRET: i32 = 65;
    pub const NO_SECRET: i32 = 66;
    pub const CONFIG_UNSUPPORTED: i32 = 67;
    pub const OPERATION_TIMEOUT: i32 = 68;
    pub const MIGRATE_PERSIST_FAILED: i32 = 69;
    pub const HOOK_SCRIPT_FAILED: i32 = 70;
    pub const INVALID_DOMAIN_SNAPSHOT: i32 = 71;
    pub const NO_DOMAIN_SNAPSHOT: i32 = 72;
    pub const INVALID_STREAM: i32 = 73;
    pub const ARGUMENT_UNSUPPORTED: i32 = 74;
    pub const STORAGE_PROBE_FAILED: i32 = 75;
    pub const STORAGE_POOL_BUILT: i32 = 76;
    pub const SNAPSHOT_REVERT_RISKY: i32 = 77;
    pub const OPERATION_ABORTED: i32 = 78;
    pub const AUTH_CANCELLED: i32 = 79;
    pub const NO_DOMAIN_METADATA: i32 = 80;
    pub const MIGRATE_UNSAFE: i32 = 81;
    pub const OVERFLOW: i32 = 82;
    pub const BLOCK_COPY_ACTIVE: i32 = 83;
    pub const OPERATION_UNSUPPORTED: i32 = 84;
    pub const SSH: i32 = 85;
    pub const AGENT_UNRESPONSIVE: i32 = 86;
    pub const RESOURCE_BUSY: i32 = 87;
    pub const ACCESS_DENIED: i32 = 88;
    pub const DBUS_SERVICE: i32 = 89;
    pub const STORAGE_VOL_EXIST: i32 = 90;
    pub const CPU_INCOMPATIBLE: i32 = 91;
    pub const XML_INVALID_SCHEMA: i32 = 92;
    pub const MIGRATE_FINISH_OK: i32 = 93;
    pub const AUTH_UNAVAILABLE: i32 = 94;
    pub const NO_SERVER: i32 = 95;
    pub const NO_CLIENT: i32 = 96;
    pub const AGENT_UNSYNCED: i32 = 97;
    pub const LIBSSH: i32 = 98;
    pub const DEVICE_MISSING: i32 = 99;
    pub const INVALID_NWFILTER_BINDING: i32 = 100;
    pub const NO_NWFILTER_BINDING: i32 = 101;
    pub const INVALID_DOMAIN_CHECKPOINT: i32 = 102;
    pub const NO_DOMAIN_CHECKPOINT: i32 = 103;
    pub const NO_DOMAIN_BACKUP: i32 = 104;
    pub const INVALID_NETWORK_PORT: i32 = 105;
    pub const NETWORK_PORT_EXIST: i32 = 106;
    pub const NO_NETWORK_PORT: i32 = 107;
    pub const NO_HOSTNAME: i32 = 108;
    pub const CHECKPOINT_INCONSISTENT: i32 = 109;
    pub const MULTIPLE_DOMAINS: i32 = 110;
}

/// libvirt's `virErrorDomain` values (which subsystem raised an error).
pub mod domain {
    pub const NONE: i32 = 0;
    pub const XEN: i32 = 1;
    pub const XEND: i32 = 2;
    pub const XENSTORE: i32 = 3;
    pub const SEXPR: i32 = 4;
    pub const XML: i32 = 5;
    pub const DOM: i32 = 6;
    pub const RPC: i32 = 7;
    pub const PROXY: i32 = 8;
    pub const CONF: i32 = 9;
    pub const QEMU: i32 = 10;
    pub const NET: i32 = 11;
    pub const TEST: i32 = 12;
    pub const REMOTE: i32 = 13;
    pub const OPENVZ: i32 = 14;
    pub const XENXM: i32 = 15;
    pub const STATS_LINUX: i32 = 16;
    pub const LXC: i32 = 17;
    pub const STORAGE: i32 = 18;
    pub const NETWORK: i32 = 19;
    pub const DOMAIN: i32 = 20;
    pub const UML: i32 = 21;
    pub const NODEDEV: i32 = 22;
    pub const XEN_INOTIFY: i32 = 23;
    pub const SECURITY: i32 = 24;
    pub const VBOX: i32 = 25;
    pub const INTERFACE: i32 = 26;
    pub const ONE: i32 = 27;
    pub const ESX: i32 = 28;
    pub const PHYP: i32 = 29;
    pub const SECRET: i32 = 30;
    pub const CPU: i32 = 31;
    pub const XENAPI: i32 = 32;
    pub const NWFILTER: i32 = 33;
    pub const HOOK: i32 = 34;
    pub const DOMAIN_SNAPSHOT: i32 = 35;
    pub const AUDIT: i32 = 36;
    pub const SYSINFO: i32 = 37;
    pub const STREAMS: i32 = 38;
    pub const VMWARE: i32 = 39;
    pub const EVENT: i32 = 40;
    pub const LIBXL: i32 = 41;
    pub const LOCKING: i32 = 42;
    pub const HYPERV: i32 = 43;
    pub const CAPABILITIES: i32 = 44;
    pub const URI: i32 = 45;
    pub const AUTH: i32 = 46;
    pub const DBUS: i32 = 47;
    pub const PARALLELS: i32 = 48;
    pub const DEVICE: i32 = 49;
    pub const SSH: i32 = 50;
    pub const LOCKSPACE: i32 = 51;
    pub const INITCTL: i32 = 52;
    pub const IDENTITY: i32 = 53;
    pub const CGROUP: i32 = 54;
    pub const ACCESS: i32 = 55;
    pub const SYSTEMD: i32 = 56;
    pub const BHYVE: i32 = 57;
    pub const CRYPTO: i32 = 58;
    pub const FIREWALL: i32 = 59;
    pub const POLKIT: i32 = 60;
    pub const THREAD: i32 = 61;
    pub const ADMIN: i32 = 62;
    pub const LOGGING: i32 = 63;
    pub const XENXL: i32 = 64;
    pub const PERF: i32 = 65;
    pub const LIBSSH: i32 = 66;
    pub const RESCTRL: i32 = 67;
    pub const FIREWALLD: i32 = 68;
    pub const DOMAIN_CHECKPOINT: i32 = 69;
    pub const TPM: i32 = 70;
    pub const BPF: i32 = 71;
    pub const CH: i32 = 72;
}

/// The text libvirt puts in front of an error's detail, by code (`virErrorMsg`), so that
/// clients print what a libvirt user is used to reading.
pub fn message_prefix(c: i32) -> Option<&'static str> {
    Some(match c {
        code::INTERNAL_ERROR => "internal error",
        code::NO_SUPPORT => "this function is not supported by the connection driver",
        code::INVALID_ARG => "invalid argument",
        code::OPERATION_FAILED => "operation failed",
        code::XML_ERROR | code::XML_DETAIL => "XML error",
        code::OPERATION_DENIED => "operation forbidden",
        code::NO_DOMAIN => "Domain not found",
        code::AUTH_FAILED => "authentication failed",
        code::OPERATION_INVALID => "Requested operation is not valid",
        code::CONFIG_UNSUPPORTED => "unsupported configuration",
        code::OPERATION_TIMEOUT => "Timed out during operation",
        code::OPERATION_ABORTED => "operation aborted",
        code::ARGUMENT_UNSUPPORTED => "argument unsupported",
        code::OPERATION_UNSUPPORTED => "Operation not supported",
        code::NO_DOMAIN_METADATA => "metadata not found",
        _ => return None,
    })
}

/// `prefix: detail`, or the detail alone for codes libvirt adds no prefix to.
pub fn format_message(c: i32, detail: &str) -> String {
    match message_prefix(c) {
        Some(p) => format!("{p}: {detail}"),
        None => detail.to_string(),
    }
}

/// `virErrorLevel::VIR_ERR_ERROR`.
pub const LEVEL_ERROR: i32 = 2;

crate::xdr_struct! {
    /// The payload of a reply with status ERROR: eleven fields, in this order.
    pub struct RemoteError {
        pub code: i32,
        pub domain: i32,
        pub message: Option<String>,
        pub level: i32,
        pub dom: Option<NonnullDomain>,
        pub str1: Option<String>,
        pub str2: Option<String>,
        pub str3: Option<String>,
        pub int1: i32,
        pub int2: i32,
        pub net: Option<NonnullNetwork>,
    }
}

impl RemoteError {
    /// An error as libvirt raises it: `str1` carries the message too, ints are -1.
    pub fn new(code: i32, domain: i32, message: impl Into<String>) -> Self {
        let message = message.into();
        RemoteError {
            code,
            domain,
            str1: Some(message.clone()),
            message: Some(message),
            level: LEVEL_ERROR,
            int1: -1,
            int2: -1,
            ..Default::default()
        }
    }

    /// libvirtd's answer to a procedure it does not know; the client turns it into
    /// VIR_ERR_NO_SUPPORT, which is what every fallback in virsh and virt-manager keys on.
    pub fn unknown_procedure(number: i32) -> Self {
        Self::new(
            code::RPC,
            domain::RPC,
            format!("unknown procedure: {number}"),
        )
    }
}
