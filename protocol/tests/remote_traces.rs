//! Decodes real libvirt 9.0.0 traffic (`tests/data/*.hex`, copied from the project's captured
//! traces) with the typed structs of `remote.rs` and re-encodes it: the bytes must be identical.
//!
//! File format: one message per line, hex; client lines at column 0, server lines indented with
//! a TAB (an optional `N:` line-number prefix comes first); `#` comments and `Node ...` lines
//! are skipped. The header is parsed here, inline.

use virtumld_protocol::remote::*;
use virtumld_protocol::xdr::{from_bytes, to_bytes, FixedOpaque, Xdr};

const REMOTE_PROGRAM: u32 = 0x2000_8086;
const KEEPALIVE_PROGRAM: u32 = 0x6b65_6570;

const CALL: i32 = 0;
const REPLY: i32 = 1;
const MESSAGE: i32 = 2;
const STREAM: i32 = 3;

struct Message {
    from_server: bool,
    line: usize,
    len: u32,
    prog: u32,
    vers: u32,
    proc_: i32,
    kind: i32,
    serial: u32,
    status: i32,
    payload: Vec<u8>,
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn parse_trace(text: &str) -> Vec<Message> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() || raw.starts_with('#') || raw.starts_with("Node ") {
            continue;
        }
        // Optional "76:" prefix (line numbers kept by grep).
        let line = match raw.split_once(':') {
            Some((n, rest)) if !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()) => rest,
            _ => raw,
        };
        let from_server = line.starts_with('\t');
        let hex = line.trim();
        assert!(hex.len() % 2 == 0, "line {}: odd hex length", i + 1);
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|j| u8::from_str_radix(&hex[j..j + 2], 16).expect("hex"))
            .collect();
        assert!(bytes.len() >= 28, "line {}: shorter than a header", i + 1);
        let w = |k: usize| be32(&bytes[4 * k..4 * k + 4]);
        out.push(Message {
            from_server,
            line: i + 1,
            len: w(0),
            prog: w(1),
            vers: w(2),
            proc_: w(3) as i32,
            kind: w(4) as i32,
            serial: w(5),
            status: w(6) as i32,
            payload: bytes[28..].to_vec(),
        });
    }
    out
}

/// Decodes `payload` as `T`, re-encodes it and demands the same bytes.
fn round_trip<T: Xdr + std::fmt::Debug>(payload: &[u8], what: &str) -> T {
    let value: T = match from_bytes(payload) {
        Ok(v) => v,
        Err(e) => panic!("{what}: decode failed: {e:?}"),
    };
    assert_eq!(
        &to_bytes(&value)[..],
        payload,
        "{what}: re-encoding differs"
    );
    value
}

macro_rules! procedures {
    ($( $num:literal => $args:ty, $ret:ty; )*) => {
        /// Round-trips a CALL payload; false when the procedure has no types here.
        fn call_payload(proc_: i32, payload: &[u8], what: &str) -> bool {
            match proc_ {
                $( $num => { round_trip::<$args>(payload, what); true } )*
                _ => false,
            }
        }
        /// Round-trips an OK REPLY payload; false when the procedure has no types here.
        fn reply_payload(proc_: i32, payload: &[u8], what: &str) -> bool {
            match proc_ {
                $( $num => { round_trip::<$ret>(payload, what); true } )*
                _ => false,
            }
        }
    };
}

// Every procedure that has typed args/ret in remote.rs; `()` = void.
procedures! {
    1 => ConnectOpenArgs, ();
    2 => (), ();
    3 => (), ConnectGetTypeRet;
    4 => (), ConnectGetVersionRet;
    5 => ConnectGetMaxVcpusArgs, ConnectGetMaxVcpusRet;
    6 => (), NodeGetInfoRet;
    7 => (), ConnectGetCapabilitiesRet;
    9 => DomainCreateArgs, ();
    10 => DomainCreateXmlArgs, DomainCreateXmlRet;
    11 => DomainDefineXmlArgs, DomainDefineXmlRet;
    12 => DomainDestroyArgs, ();
    14 => DomainGetXmlDescArgs, DomainGetXmlDescRet;
    15 => DomainGetAutostartArgs, DomainGetAutostartRet;
    16 => DomainGetInfoArgs, DomainGetInfoRet;
    17 => DomainGetMaxMemoryArgs, DomainGetMaxMemoryRet;
    18 => DomainGetMaxVcpusArgs, DomainGetMaxVcpusRet;
    19 => DomainGetOsTypeArgs, DomainGetOsTypeRet;
    20 => DomainGetVcpusArgs, DomainGetVcpusRet;
    21 => ConnectListDefinedDomainsArgs, ConnectListDefinedDomainsRet;
    22 => DomainLookupByIdArgs, DomainLookupByIdRet;
    23 => DomainLookupByNameArgs, DomainLookupByNameRet;
    24 => DomainLookupByUuidArgs, DomainLookupByUuidRet;
    25 => (), ConnectNumOfDefinedDomainsRet;
    26 => DomainPinVcpuArgs, ();
    27 => DomainRebootArgs, ();
    28 => DomainResumeArgs, ();
    29 => DomainSetAutostartArgs, ();
    30 => DomainSetMaxMemoryArgs, ();
    31 => DomainSetMemoryArgs, ();
    32 => DomainSetVcpusArgs, ();
    33 => DomainShutdownArgs, ();
    34 => DomainSuspendArgs, ();
    35 => DomainUndefineArgs, ();
    37 => ConnectListDomainsArgs, ConnectListDomainsRet;
    51 => (), ConnectNumOfDomainsRet;
    59 => (), ConnectGetHostnameRet;
    60 => ConnectSupportsFeatureArgs, ConnectSupportsFeatureRet;
    66 => (), AuthListRet;
    102 => (), NodeGetFreeMemoryRet;
    105 => (), ConnectDomainEventRegisterRet;
    106 => (), ConnectDomainEventDeregisterRet;
    110 => (), ConnectGetUriRet;
    121 => DomainGetSecurityLabelArgs, DomainGetSecurityLabelRet;
    122 => (), NodeGetSecurityModelRet;
    149 => (), ConnectIsSecureRet;
    150 => DomainIsActiveArgs, DomainIsActiveRet;
    151 => DomainIsPersistentArgs, DomainIsPersistentRet;
    152 => NetworkIsActiveArgs, NetworkIsActiveRet;
    157 => (), ConnectGetLibVersionRet;
    163 => DomainGetJobInfoArgs, DomainGetJobInfoRet;
    167 => ConnectDomainEventRegisterAnyArgs, ();
    168 => ConnectDomainEventDeregisterAnyArgs, ();
    183 => DomainHasManagedSaveImageArgs, DomainHasManagedSaveImageRet;
    187 => DomainSnapshotNumArgs, DomainSnapshotNumRet;
    196 => DomainCreateWithFlagsArgs, DomainCreateWithFlagsRet;
    199 => DomainSetVcpusFlagsArgs, ();
    200 => DomainGetVcpusFlagsArgs, DomainGetVcpusFlagsRet;
    201 => DomainOpenConsoleArgs, ();
    202 => DomainIsUpdatedArgs, DomainIsUpdatedRet;
    203 => ConnectGetSysinfoArgs, ConnectGetSysinfoRet;
    204 => DomainSetMemoryFlagsArgs, ();
    212 => DomainGetStateArgs, DomainGetStateRet;
    227 => NodeGetCpuStatsArgs, NodeGetCpuStatsRet;
    228 => NodeGetMemoryStatsArgs, NodeGetMemoryStatsRet;
    231 => DomainUndefineFlagsArgs, ();
    234 => DomainDestroyFlagsArgs, ();
    258 => DomainShutdownFlagsArgs, ();
    273 => ConnectListAllDomainsArgs, ConnectListAllDomainsRet;
    316 => ConnectDomainEventCallbackRegisterAnyArgs, ConnectDomainEventCallbackRegisterAnyRet;
    317 => ConnectDomainEventCallbackDeregisterAnyArgs, ();
    342 => ConnectGetDomainCapabilitiesArgs, ConnectGetDomainCapabilitiesRet;
    344 => ConnectGetAllDomainStatsArgs, ConnectGetAllDomainStatsRet;
    350 => DomainDefineXmlFlagsArgs, DomainDefineXmlFlagsRet;
    360 => (), ();
    361 => (), ();
    426 => DomainGetMessagesArgs, DomainGetMessagesRet;
}

fn event_payload(proc_: i32, payload: &[u8], what: &str) -> bool {
    match proc_ {
        107 => drop(round_trip::<DomainEventLifecycleMsg>(payload, what)),
        169 => drop(round_trip::<DomainEventRebootMsg>(payload, what)),
        318 => drop(round_trip::<DomainEventCallbackLifecycleMsg>(payload, what)),
        319 => drop(round_trip::<DomainEventCallbackRebootMsg>(payload, what)),
        _ => return false,
    }
    true
}

/// Checks every message of one trace; returns how many payloads were typed and round-tripped.
fn check_trace(name: &str, text: &str) -> usize {
    let mut typed = 0;
    for m in parse_trace(text) {
        let what = format!(
            "{name}:{} {} proc {} type {} serial {} status {}",
            m.line,
            if m.from_server { "S->C" } else { "C->S" },
            m.proc_,
            m.kind,
            m.serial,
            m.status
        );
        assert_eq!(m.len as usize, m.payload.len() + 28, "{what}: length word");
        assert_eq!(m.vers, 1, "{what}");
        match m.prog {
            KEEPALIVE_PROGRAM => {
                // PING = 1, PONG = 2, both MESSAGEs with an empty payload.
                assert!(matches!(m.proc_, 1 | 2), "{what}");
                assert_eq!((m.kind, m.serial, m.status), (MESSAGE, 0, 0), "{what}");
                round_trip::<()>(&m.payload, &what);
                typed += 1;
            }
            REMOTE_PROGRAM => {
                let known = match (m.kind, m.status) {
                    (CALL, 0) => {
                        assert!(!m.from_server, "{what}");
                        call_payload(m.proc_, &m.payload, &what)
                    }
                    (REPLY, 0) => {
                        assert!(m.from_server, "{what}");
                        reply_payload(m.proc_, &m.payload, &what)
                    }
                    (REPLY, 1) => {
                        assert!(m.from_server, "{what}");
                        let e: RemoteError = round_trip(&m.payload, &what);
                        assert_eq!(e.level, 2, "{what}");
                        true
                    }
                    (MESSAGE, 0) => event_payload(m.proc_, &m.payload, &what),
                    // Stream data is raw bytes, not XDR; status 0 with no data ends it.
                    (STREAM, 0 | 2) => {
                        assert_eq!(m.proc_, 201, "{what}");
                        continue;
                    }
                    _ => panic!("{what}: unexpected type/status"),
                };
                assert!(known, "{what}: no types for this procedure");
                typed += 1;
            }
            other => panic!("{what}: unexpected program {other:#x}"),
        }
    }
    typed
}

#[test]
fn virsh_list_test_tcp() {
    let n = check_trace(
        "virsh_list_test_tcp",
        include_str!("data/virsh_list_test_tcp.hex"),
    );
    assert_eq!(n, 20);
}

#[test]
fn virsh_list_uml_tcp_system_error_reply() {
    let text = include_str!("data/virsh_list_uml_tcp_system.hex");
    assert_eq!(check_trace("virsh_list_uml_tcp_system", text), 6);
    // The rejected CONNECT_OPEN: VIR_ERR_NO_CONNECT, format in str1, URI in str2.
    let last = parse_trace(text).pop().unwrap();
    let e: RemoteError = from_bytes(&last.payload).unwrap();
    assert_eq!((e.code, e.domain, e.level), (5, 0, 2));
    assert_eq!(
        e.message.as_deref(),
        Some("no connection driver available for uml:///system")
    );
    assert_eq!(
        e.str1.as_deref(),
        Some("no connection driver available for %s")
    );
    assert_eq!(e.str2.as_deref(), Some("uml:///system"));
    let open = parse_trace(text).remove(4);
    let args: ConnectOpenArgs = from_bytes(&open.payload).unwrap();
    assert_eq!(args.name.as_deref(), Some("uml:///system"));
    assert_eq!(args.flags, 0);
}

#[test]
fn dominfo_missing_error_replies() {
    let text = include_str!("data/dominfo_missing_error_replies.hex");
    assert_eq!(check_trace("dominfo_missing_error_replies", text), 20);
    let msgs = parse_trace(text);
    let by_id = msgs
        .iter()
        .find(|m| m.proc_ == 22 && m.kind == CALL)
        .unwrap();
    let args: DomainLookupByIdArgs = from_bytes(&by_id.payload).unwrap();
    assert_eq!(args.id, 99);
    let err = msgs
        .iter()
        .find(|m| m.proc_ == 22 && m.kind == REPLY)
        .unwrap();
    assert_eq!(err.status, 1);
    let e: RemoteError = from_bytes(&err.payload).unwrap();
    assert_eq!((e.code, e.domain), (42, 12));
    assert_eq!(e.message.as_deref(), Some("Domain not found"));
    assert_eq!(e.str1.as_deref(), Some("Domain not found"));
    assert_eq!((e.str2.as_deref(), e.str3.as_deref()), (None, None));
    assert_eq!((e.int1, e.int2), (-1, -1));
    assert!(e.dom.is_none() && e.net.is_none());
}

#[test]
fn keepalive_frames() {
    assert_eq!(
        check_trace(
            "keepalive_frames",
            include_str!("data/keepalive_frames.hex")
        ),
        6
    );
}

#[test]
fn console_qemu() {
    let text = include_str!("data/console_qemu.hex");
    assert_eq!(check_trace("console_qemu", text), 22);
    let open = parse_trace(text)
        .into_iter()
        .find(|m| m.proc_ == 201 && m.kind == CALL)
        .unwrap();
    let args: DomainOpenConsoleArgs = from_bytes(&open.payload).unwrap();
    assert_eq!(args.dev_name, None);
    // STREAM data is raw: the 30-byte message carries "ab".
    let data = parse_trace(text)
        .into_iter()
        .find(|m| m.kind == STREAM && m.len == 30)
        .unwrap();
    assert_eq!(&data.payload, b"ab");
}

#[test]
fn list_all_domains_reply_fields() {
    let msgs = parse_trace(include_str!("data/virsh_list_test_tcp.hex"));
    let call = msgs
        .iter()
        .find(|m| m.proc_ == 273 && m.kind == CALL)
        .unwrap();
    let args: ConnectListAllDomainsArgs = from_bytes(&call.payload).unwrap();
    assert_eq!((args.need_results, args.flags), (1, 1));
    let reply = msgs
        .iter()
        .find(|m| m.proc_ == 273 && m.kind == REPLY)
        .unwrap();
    let ret: ConnectListAllDomainsRet = from_bytes(&reply.payload).unwrap();
    assert_eq!(ret.ret, 1);
    assert_eq!(
        ret.domains,
        vec![NonnullDomain {
            name: "test".into(),
            uuid: FixedOpaque([
                0x66, 0x95, 0xeb, 0x01, 0xf6, 0xa4, 0x83, 0x04, 0x79, 0xaa, 0x97, 0xf2, 0x50, 0x2e,
                0x19, 0x3f
            ]),
            id: 1,
        }]
    );
    let auth = msgs
        .iter()
        .find(|m| m.proc_ == 66 && m.from_server)
        .unwrap();
    let ret: AuthListRet = from_bytes(&auth.payload).unwrap();
    assert_eq!(ret.types, vec![AuthType::None]);
}

fn uuid(hex: &str) -> FixedOpaque<16> {
    let mut u = [0u8; 16];
    for (i, b) in u.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    FixedOpaque(u)
}

fn chars(s: &str) -> Vec<i8> {
    s.bytes().map(|b| b as i8).chain([0]).collect()
}

/// Messages seen only decoded (`*.rpc`, wireshark's dissector): rebuilt from the decoded
/// fields, they must have the traced total length and survive a round trip.
#[test]
fn decoded_traces_have_the_traced_lengths() {
    fn check<T: Xdr + std::fmt::Debug + PartialEq>(v: T, traced_len: usize, what: &str) {
        let b = to_bytes(&v);
        assert_eq!(b.len() + 28, traced_len, "{what}");
        assert_eq!(from_bytes::<T>(&b).as_ref(), Ok(&v), "{what}");
    }
    let test_dom = NonnullDomain {
        name: "test".into(),
        uuid: uuid("6695eb01f6a4830479aa97f2502e193f"),
        id: 1,
    };
    // virsh/nodeinfo.rpc: NODE_GET_INFO reply, len=188, model "i686".
    let mut model = [0i8; 32];
    for (d, s) in model.iter_mut().zip(b"i686") {
        *d = *s as i8;
    }
    check(
        NodeGetInfoRet {
            model,
            memory: 3_145_728,
            cpus: 16,
            mhz: 1400,
            nodes: 2,
            sockets: 2,
            cores: 2,
            threads: 2,
        },
        188,
        "NODE_GET_INFO",
    );
    // virsh/dominfo.rpc: DOMAIN_GET_INFO call len=56, reply len=60.
    check(
        DomainGetInfoArgs {
            dom: test_dom.clone(),
        },
        56,
        "DOMAIN_GET_INFO args",
    );
    check(
        DomainGetInfoRet {
            state: 1,
            max_mem: 8_388_608,
            memory: 2_097_152,
            nr_virt_cpu: 2,
            cpu_time: 1_795_626_808_710_612_000,
        },
        60,
        "DOMAIN_GET_INFO ret",
    );
    // virsh/dominfo.rpc: NODE_GET_SECURITY_MODEL reply, model "testSecurity" + NUL, len=92.
    check(
        NodeGetSecurityModelRet {
            model: chars("testSecurity"),
            doi: chars(""),
        },
        92,
        "NODE_GET_SECURITY_MODEL",
    );
    // events/event_lifecycle.rpc: 316 call len=36 (all domains), reply len=32.
    check(
        ConnectDomainEventCallbackRegisterAnyArgs {
            event_id: 0,
            dom: None,
        },
        36,
        "316 args",
    );
    check(
        ConnectDomainEventCallbackRegisterAnyRet { callback_id: 27 },
        32,
        "316 ret",
    );
    // events/event_loop.rpc: DOMAIN_EVENT_CALLBACK_LIFECYCLE message, len=72.
    check(
        DomainEventCallbackLifecycleMsg {
            callback_id: 27,
            msg: DomainEventLifecycleMsg {
                dom: NonnullDomain {
                    name: "umltest".into(),
                    uuid: uuid("955bd5577c894a1c839b6f683d5dede5"),
                    id: -1,
                },
                event: 0,
                detail: 0,
            },
        },
        72,
        "318 msg",
    );
    // handshake: DOMAIN_GET_STATE call len=60 for "test".
    check(
        DomainGetStateArgs {
            dom: test_dom,
            flags: 0,
        },
        60,
        "212 args",
    );
}

#[test]
fn typed_params_round_trip_in_domain_stats() {
    let ret = ConnectGetAllDomainStatsRet {
        ret_stats: vec![DomainStatsRecord {
            dom: NonnullDomain {
                name: "d".into(),
                uuid: FixedOpaque([7; 16]),
                id: 3,
            },
            params: vec![
                TypedParam {
                    field: "state.state".into(),
                    value: TypedParamValue::Int(1),
                },
                TypedParam {
                    field: "balloon.current".into(),
                    value: TypedParamValue::ULLong(1 << 20),
                },
                TypedParam {
                    field: "cpu.ratio".into(),
                    value: TypedParamValue::Double(0.25),
                },
                TypedParam {
                    field: "vcpu.0.state".into(),
                    value: TypedParamValue::String("running".into()),
                },
            ],
        }],
    };
    let b = to_bytes(&ret);
    assert_eq!(from_bytes::<ConnectGetAllDomainStatsRet>(&b), Ok(ret));
    for n in 0..b.len() {
        assert!(from_bytes::<ConnectGetAllDomainStatsRet>(&b[..n]).is_err());
    }
}
