//! Typed XDR payloads of the remote program.
//!
//! Input: a 4-byte big-endian selector, then the payload.
//! - selector = `REPLY_BIT | number`: decoded as its reply (`*Ret`) or event (`*Msg`);
//! - selector = 0: a `RemoteError` (the payload of a reply with status ERROR);
//! - selector = 0xffff_ffff: one `TypedParam`;
//! - any other selector: the payload is decoded as the call arguments of the procedure of
//!   that number through the daemon's procedure table (a number it does not implement picks
//!   one of those it does).
//!
//! Invariants: decoding never panics; a value that decodes re-encodes to exactly the bytes it
//! was decoded from (XDR is canonical: padding must be zero, booleans 0/1, strings UTF-8, enums
//! and unions in range), and `from_bytes` accepts exactly the payloads that decode with nothing
//! left over.
#![no_main]

use std::any::type_name;
use std::fmt::Debug;

use libfuzzer_sys::fuzz_target;
use virtumld::remote::{decode_args, IMPLEMENTED};
use virtumld_protocol::error::RemoteError;
use virtumld_protocol::procedures::proc;
use virtumld_protocol::remote::*;
use virtumld_protocol::xdr::{from_bytes, to_bytes, Reader, Xdr};

/// Selector bit: decode the reply or event payload of the procedure instead of its arguments.
const REPLY_BIT: u32 = 0x4000_0000;
const SEL_REMOTE_ERROR: u32 = 0;
const SEL_TYPED_PARAM: u32 = 0xffff_ffff;

fn check<T: Xdr + Debug>(payload: &[u8]) {
    let mut r = Reader::new(payload);
    let decoded = T::decode(&mut r);
    let whole = from_bytes::<T>(payload);
    match decoded {
        Ok(v) => {
            let used = payload.len() - r.remaining();
            let again = to_bytes(&v);
            assert_eq!(
                &again[..],
                &payload[..used],
                "{} re-encodes differently: {v:?}",
                type_name::<T>()
            );
            assert_eq!(
                whole.is_ok(),
                r.remaining() == 0,
                "{}: from_bytes disagrees",
                type_name::<T>()
            );
        }
        Err(_) => assert!(
            whole.is_err(),
            "{}: from_bytes accepts what decode refuses",
            type_name::<T>()
        ),
    }
}

/// Call arguments go through the daemon's own procedure table (`remote::decode_args`, the
/// decoding `remote::dispatch` runs), so every implemented procedure is covered and a new
/// row is fuzzed without touching this file. A selector that is not an implemented
/// procedure picks one by index, so no input is wasted.
fn args(selector: u32, payload: &[u8]) {
    let number = match i32::try_from(selector) {
        Ok(n) if IMPLEMENTED.contains(&n) => n,
        _ => IMPLEMENTED[selector as usize % IMPLEMENTED.len()],
    };
    let Some(decoded) = decode_args(number, payload) else {
        panic!("procedure {number} is in IMPLEMENTED but the table does not decode it");
    };
    if let Ok(again) = decoded {
        // `decode_args` accepts only payloads decoded whole, and XDR is canonical.
        assert_eq!(
            &again[..],
            payload,
            "arguments of procedure {number} re-encode differently"
        );
    }
}

fn replies(procedure: i32, payload: &[u8]) {
    match procedure {
        proc::CONNECT_GET_TYPE => check::<ConnectGetTypeRet>(payload),
        proc::CONNECT_GET_VERSION => check::<ConnectGetVersionRet>(payload),
        proc::CONNECT_GET_MAX_VCPUS => check::<ConnectGetMaxVcpusRet>(payload),
        proc::NODE_GET_INFO => check::<NodeGetInfoRet>(payload),
        proc::CONNECT_GET_CAPABILITIES => check::<ConnectGetCapabilitiesRet>(payload),
        proc::DOMAIN_CREATE_XML => check::<DomainCreateXmlRet>(payload),
        proc::DOMAIN_DEFINE_XML => check::<DomainDefineXmlRet>(payload),
        proc::DOMAIN_GET_XML_DESC => check::<DomainGetXmlDescRet>(payload),
        proc::DOMAIN_GET_AUTOSTART => check::<DomainGetAutostartRet>(payload),
        proc::DOMAIN_GET_INFO => check::<DomainGetInfoRet>(payload),
        proc::DOMAIN_GET_MAX_MEMORY => check::<DomainGetMaxMemoryRet>(payload),
        proc::DOMAIN_GET_MAX_VCPUS => check::<DomainGetMaxVcpusRet>(payload),
        proc::DOMAIN_GET_OS_TYPE => check::<DomainGetOsTypeRet>(payload),
        proc::DOMAIN_GET_VCPUS => check::<DomainGetVcpusRet>(payload),
        proc::CONNECT_LIST_DEFINED_DOMAINS => check::<ConnectListDefinedDomainsRet>(payload),
        proc::DOMAIN_LOOKUP_BY_ID => check::<DomainLookupByIdRet>(payload),
        proc::DOMAIN_LOOKUP_BY_NAME => check::<DomainLookupByNameRet>(payload),
        proc::DOMAIN_LOOKUP_BY_UUID => check::<DomainLookupByUuidRet>(payload),
        proc::CONNECT_NUM_OF_DEFINED_DOMAINS => check::<ConnectNumOfDefinedDomainsRet>(payload),
        proc::CONNECT_LIST_DOMAINS => check::<ConnectListDomainsRet>(payload),
        proc::CONNECT_NUM_OF_DOMAINS => check::<ConnectNumOfDomainsRet>(payload),
        proc::CONNECT_GET_HOSTNAME => check::<ConnectGetHostnameRet>(payload),
        proc::CONNECT_SUPPORTS_FEATURE => check::<ConnectSupportsFeatureRet>(payload),
        proc::AUTH_LIST => check::<AuthListRet>(payload),
        proc::NODE_GET_FREE_MEMORY => check::<NodeGetFreeMemoryRet>(payload),
        proc::CONNECT_DOMAIN_EVENT_REGISTER => check::<ConnectDomainEventRegisterRet>(payload),
        proc::CONNECT_DOMAIN_EVENT_DEREGISTER => check::<ConnectDomainEventDeregisterRet>(payload),
        proc::DOMAIN_EVENT_LIFECYCLE => check::<DomainEventLifecycleMsg>(payload),
        proc::CONNECT_GET_URI => check::<ConnectGetUriRet>(payload),
        proc::DOMAIN_GET_SECURITY_LABEL => check::<DomainGetSecurityLabelRet>(payload),
        proc::NODE_GET_SECURITY_MODEL => check::<NodeGetSecurityModelRet>(payload),
        proc::CONNECT_IS_SECURE => check::<ConnectIsSecureRet>(payload),
        proc::DOMAIN_IS_ACTIVE => check::<DomainIsActiveRet>(payload),
        proc::DOMAIN_IS_PERSISTENT => check::<DomainIsPersistentRet>(payload),
        proc::NETWORK_IS_ACTIVE => check::<NetworkIsActiveRet>(payload),
        proc::CONNECT_GET_LIB_VERSION => check::<ConnectGetLibVersionRet>(payload),
        proc::DOMAIN_GET_JOB_INFO => check::<DomainGetJobInfoRet>(payload),
        proc::DOMAIN_EVENT_REBOOT => check::<DomainEventRebootMsg>(payload),
        proc::DOMAIN_HAS_MANAGED_SAVE_IMAGE => check::<DomainHasManagedSaveImageRet>(payload),
        proc::DOMAIN_SNAPSHOT_NUM => check::<DomainSnapshotNumRet>(payload),
        proc::DOMAIN_CREATE_WITH_FLAGS => check::<DomainCreateWithFlagsRet>(payload),
        proc::DOMAIN_GET_VCPUS_FLAGS => check::<DomainGetVcpusFlagsRet>(payload),
        proc::DOMAIN_IS_UPDATED => check::<DomainIsUpdatedRet>(payload),
        proc::CONNECT_GET_SYSINFO => check::<ConnectGetSysinfoRet>(payload),
        proc::DOMAIN_GET_STATE => check::<DomainGetStateRet>(payload),
        proc::NODE_GET_CPU_STATS => check::<NodeGetCpuStatsRet>(payload),
        proc::NODE_GET_MEMORY_STATS => check::<NodeGetMemoryStatsRet>(payload),
        proc::CONNECT_LIST_ALL_DOMAINS => check::<ConnectListAllDomainsRet>(payload),
        proc::CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY => {
            check::<ConnectDomainEventCallbackRegisterAnyRet>(payload)
        }
        proc::DOMAIN_EVENT_CALLBACK_LIFECYCLE => check::<DomainEventCallbackLifecycleMsg>(payload),
        proc::DOMAIN_EVENT_CALLBACK_REBOOT => check::<DomainEventCallbackRebootMsg>(payload),
        proc::CONNECT_GET_DOMAIN_CAPABILITIES => check::<ConnectGetDomainCapabilitiesRet>(payload),
        proc::CONNECT_GET_ALL_DOMAIN_STATS => check::<ConnectGetAllDomainStatsRet>(payload),
        proc::DOMAIN_DEFINE_XML_FLAGS => check::<DomainDefineXmlFlagsRet>(payload),
        proc::DOMAIN_GET_MESSAGES => check::<DomainGetMessagesRet>(payload),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((sel, payload)) = data.split_first_chunk::<4>() else {
        return;
    };
    match u32::from_be_bytes(*sel) {
        SEL_REMOTE_ERROR => check::<RemoteError>(payload),
        SEL_TYPED_PARAM => check::<TypedParam>(payload),
        s if s & REPLY_BIT != 0 => replies((s & !REPLY_BIT) as i32, payload),
        s => args(s, payload),
    }
});
