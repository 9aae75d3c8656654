//! Read-only connections, checked against the procedure table itself: every procedure a
//! read-only connection may not call is refused by name before its arguments are decoded
//! (an empty payload is sent), on the `-ro` UNIX socket and over TCP with CONNECT_OPEN
//! flags=1; read-only-ok procedures are not refused for that reason; and the flags that make
//! a read-only-ok call reveal secrets (VIR_DOMAIN_XML_SECURE, ...) are refused.
//! Stock clients refuse all of this locally without sending it, so only a raw client can
//! check what the daemon itself enforces.

// Calls return the wire error by value, as the daemon's handlers do.
#![allow(clippy::result_large_err)]

mod support;

use support::{call_header, guest_xml, Daemon, Raw};
use virtumld_protocol::error::{code, domain, RemoteError};
use virtumld_protocol::frame;
use virtumld_protocol::header::{MessageType, Status};
use virtumld_protocol::procedures::{proc as p, remote_procedure, Kind, REMOTE_PROCEDURES};
use virtumld_protocol::remote::{
    DomainDefineXmlArgs, DomainDefineXmlRet, DomainGetXmlDescArgs, DomainGetXmlDescRet,
    NonnullDomain,
};
use virtumld_protocol::xdr::{self, Xdr};

/// The reply to `serial`, skipping event messages; `Err` holds the error of an ERROR reply.
fn reply(raw: &mut Raw, serial: u32) -> Result<Vec<u8>, RemoteError> {
    loop {
        let (h, payload) = raw
            .reply()
            .expect("a reply (the daemon closed or timed out)");
        if h.kind != MessageType::REPLY {
            continue;
        }
        assert_eq!(h.serial, serial, "reply out of order");
        if h.status == Status::OK {
            return Ok(payload);
        }
        return Err(xdr::from_bytes::<RemoteError>(&payload).expect("an error struct"));
    }
}

/// Sends `procedure` with a raw payload and returns its reply.
fn call_raw(
    raw: &mut Raw,
    procedure: i32,
    serial: u32,
    payload: &[u8],
) -> Result<Vec<u8>, RemoteError> {
    let msg = frame::encode_with(&call_header(procedure, serial), |o| {
        o.extend_from_slice(payload)
    });
    raw.send(&msg);
    reply(raw, serial)
}

fn encode<T: Xdr>(v: &T) -> Vec<u8> {
    xdr::to_bytes(v).to_vec()
}

/// Walks the whole table on one read-only connection.
fn walk(raw: &mut Raw, how: &str) {
    let mut refused = 0;
    let mut serial = 100;
    for info in REMOTE_PROCEDURES.iter().filter(|i| i.kind == Kind::Call) {
        serial += 1;
        if !info.read_only_ok {
            let e = call_raw(raw, info.number, serial, &[])
                .expect_err(&format!("{how}: {} was not refused", info.name));
            assert_eq!(
                e.code,
                code::OPERATION_DENIED,
                "{how}: {}: {e:?}",
                info.name
            );
            assert_eq!(
                e.message.as_deref(),
                Some(
                    format!(
                        "operation forbidden: read only access prevents {}",
                        info.api
                    )
                    .as_str()
                ),
                "{how}: {}",
                info.name
            );
            refused += 1;
        } else if info.number != p::CONNECT_CLOSE {
            // Read-only-ok with an empty payload: a decoding error, "not supported", or a
            // result; never the read-only refusal.
            if let Err(e) = call_raw(raw, info.number, serial, &[]) {
                assert_ne!(
                    e.code,
                    code::OPERATION_DENIED,
                    "{how}: read-only-ok {} refused: {e:?}",
                    info.name
                );
            }
        }
    }
    // libvirt 9.0.0 checks read-only in 216 public entry points; the table marks the
    // procedures behind them (and the ones with no public API, such as migration steps).
    assert!(refused > 150, "{how}: only {refused} procedures refused");
    // The connection is still in good shape.
    serial += 1;
    call_raw(raw, p::CONNECT_GET_HOSTNAME, serial, &[]).expect("hostname after the walk");
}

#[test]
fn every_write_procedure_is_refused_on_read_only_connections() {
    let d = Daemon::start();
    let mut ro_sock = Raw::connect_unix(&d.ro_socket());
    ro_sock.open();
    walk(&mut ro_sock, "ro socket");
    let mut ro_flag = Raw::connect(d.port);
    ro_flag.open_flags(1);
    walk(&mut ro_flag, "tcp flags=1");
    // The same procedures on a read-write connection are not refused for being read-only.
    let mut rw = Raw::connect(d.port);
    rw.open();
    for (serial, name) in [
        (10, "DOMAIN_CREATE"),
        (11, "DOMAIN_DEFINE_XML"),
        (12, "DOMAIN_UNDEFINE"),
    ] {
        let info = virtumld_protocol::procedures::remote_procedure_by_name(name).unwrap();
        let e = call_raw(&mut rw, info.number, serial, &[]).expect_err("empty arguments");
        assert_ne!(e.code, code::OPERATION_DENIED, "{name}: {e:?}");
    }
}

/// Arguments `dom, flags` (or `NAME, dom, flags` for snapshots and checkpoints).
fn dom_flags(dom: &NonnullDomain, flags: u32) -> Vec<u8> {
    let mut v = encode(dom);
    v.extend(encode(&flags));
    v
}

fn named_dom_flags(name: &str, dom: &NonnullDomain, flags: u32) -> Vec<u8> {
    let mut v = encode(&name.to_string());
    v.extend(dom_flags(dom, flags));
    v
}

#[test]
fn secret_revealing_flags_are_refused_on_read_only_connections() {
    let d = Daemon::start();
    let image = d.root.path().join("ro.img");
    std::fs::write(&image, b"").unwrap();
    let mut rw = Raw::connect(d.port);
    rw.open();
    let ret = call_raw(
        &mut rw,
        p::DOMAIN_DEFINE_XML,
        2,
        &encode(&DomainDefineXmlArgs {
            xml: guest_xml("ro", &image),
        }),
    )
    .expect("define");
    let dom = xdr::from_bytes::<DomainDefineXmlRet>(&ret).unwrap().dom;
    let xml_desc = |flags| {
        encode(&DomainGetXmlDescArgs {
            dom: dom.clone(),
            flags,
        })
    };

    for (how, mut ro) in [
        ("ro socket", {
            let mut r = Raw::connect_unix(&d.ro_socket());
            r.open();
            r
        }),
        ("tcp flags=1", {
            let mut r = Raw::connect(d.port);
            r.open_flags(1);
            r
        }),
    ] {
        // Plain and INACTIVE dumps are allowed.
        for (serial, flags) in [(10, 0), (11, 2)] {
            let xml = call_raw(&mut ro, p::DOMAIN_GET_XML_DESC, serial, &xml_desc(flags))
                .unwrap_or_else(|e| panic!("{how}: dumpxml flags={flags}: {e:?}"));
            let xml = xdr::from_bytes::<DomainGetXmlDescRet>(&xml).unwrap().xml;
            assert!(xml.contains("<name>ro</name>"), "{xml}");
        }
        // SECURE (1) and MIGRATABLE (8, implies SECURE), alone or with others.
        for (serial, flags) in [(12, 1), (13, 8), (14, 1 | 2), (15, 8 | 4)] {
            let e = call_raw(&mut ro, p::DOMAIN_GET_XML_DESC, serial, &xml_desc(flags))
                .expect_err(&format!("{how}: dumpxml flags={flags} allowed"));
            assert_eq!(e.code, code::OPERATION_DENIED, "{how}: {e:?}");
            assert_eq!(e.domain, domain::DOMAIN, "{how}: {e:?}");
            assert_eq!(
                e.message.as_deref(),
                Some("operation forbidden: virDomainGetXMLDesc with secure flag"),
                "{how}"
            );
        }
        // The other rows of the table with such flags, refused before any lookup.
        let cases: [(i32, Vec<u8>, &str); 5] = [
            (
                p::DOMAIN_SNAPSHOT_GET_XML_DESC,
                named_dom_flags("s1", &dom, 1),
                "operation forbidden: virDomainSnapshotGetXMLDesc with secure flag",
            ),
            (
                p::DOMAIN_CHECKPOINT_GET_XML_DESC,
                named_dom_flags("c1", &dom, 1),
                "operation forbidden: virDomainCheckpointGetXMLDesc with secure flag",
            ),
            (
                p::DOMAIN_MANAGED_SAVE_GET_XML_DESC,
                dom_flags(&dom, 1),
                "operation forbidden: virDomainManagedSaveGetXMLDesc with secure flag",
            ),
            (
                p::DOMAIN_GET_VCPUS_FLAGS,
                dom_flags(&dom, 8), // VIR_DOMAIN_VCPU_GUEST
                "operation forbidden: read only access prevents virDomainGetVcpusFlags",
            ),
            (
                p::DOMAIN_INTERFACE_ADDRESSES,
                {
                    let mut v = dom_flags(&dom, 1); // source = SRC_AGENT
                    v.extend(encode(&0u32));
                    v
                },
                "operation forbidden: read only access prevents virDomainInterfaceAddresses",
            ),
        ];
        for (i, (number, args, message)) in cases.iter().enumerate() {
            let name = remote_procedure(*number).unwrap().name;
            let e = call_raw(&mut ro, *number, 20 + i as u32, args)
                .expect_err(&format!("{how}: {name} allowed"));
            assert_eq!(e.code, code::OPERATION_DENIED, "{how}: {name}: {e:?}");
            assert_eq!(e.message.as_deref(), Some(*message), "{how}: {name}");
        }
        // Without those flags the same calls are not refused for being read-only.
        let harmless: [(i32, Vec<u8>); 3] = [
            (p::DOMAIN_GET_VCPUS_FLAGS, dom_flags(&dom, 0)),
            (
                p::DOMAIN_SNAPSHOT_GET_XML_DESC,
                named_dom_flags("s1", &dom, 0),
            ),
            (p::DOMAIN_INTERFACE_ADDRESSES, {
                let mut v = dom_flags(&dom, 0); // source = LEASE
                v.extend(encode(&0u32));
                v
            }),
        ];
        for (i, (number, args)) in harmless.iter().enumerate() {
            if let Err(e) = call_raw(&mut ro, *number, 40 + i as u32, args) {
                assert_ne!(e.code, code::OPERATION_DENIED, "{how}: {e:?}");
            }
        }
    }
    // A read-write connection gets the secure dump.
    call_raw(&mut rw, p::DOMAIN_GET_XML_DESC, 50, &xml_desc(1)).expect("secure dump on rw");
}
