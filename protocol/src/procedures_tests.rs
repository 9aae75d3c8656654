//! Hand-written checks of the generated procedure table (`procedures.rs`).

use super::*;

#[test]
fn table_has_443_contiguous_entries() {
    assert_eq!(REMOTE_PROCEDURES.len(), 443);
    assert_eq!(PROCEDURE_COUNT, 443);
    for (i, p) in REMOTE_PROCEDURES.iter().enumerate() {
        assert_eq!(p.number, i as i32 + 1, "{}", p.name);
        assert!(std::ptr::eq(remote_procedure(p.number).unwrap(), p));
    }
}

#[test]
fn out_of_range_lookups_are_none() {
    for n in [0, -1, 444, i32::MIN, i32::MAX] {
        assert!(remote_procedure(n).is_none(), "{n}");
    }
    assert_eq!(remote_procedure(443).unwrap().name, "DOMAIN_FD_ASSOCIATE");
}

#[test]
fn names_are_unique_and_constants_match() {
    let mut names: Vec<_> = REMOTE_PROCEDURES.iter().map(|p| p.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), 443);
    assert_eq!(proc::CONNECT_OPEN, 1);
    assert_eq!(proc::CONNECT_CLOSE, 2);
    assert_eq!(proc::AUTH_LIST, 66);
    assert_eq!(proc::CONNECT_SUPPORTS_FEATURE, 60);
    assert_eq!(proc::DOMAIN_EVENT_LIFECYCLE, 107);
    assert_eq!(proc::DOMAIN_OPEN_CONSOLE, 201);
    assert_eq!(proc::CONNECT_LIST_ALL_DOMAINS, 273);
    assert_eq!(proc::CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY, 316);
    assert_eq!(proc::DOMAIN_EVENT_CALLBACK_LIFECYCLE, 318);
    assert_eq!(proc::CONNECT_GET_ALL_DOMAIN_STATS, 344);
    assert_eq!(proc::CONNECT_REGISTER_CLOSE_CALLBACK, 360);
    assert_eq!(
        remote_procedure_by_name("DOMAIN_GET_INFO").map(|p| p.number),
        Some(16)
    );
    assert!(remote_procedure_by_name("NO_SUCH_PROC").is_none());
}

#[test]
fn only_the_five_auth_procedures_skip_authentication() {
    let no_auth: Vec<i32> = REMOTE_PROCEDURES
        .iter()
        .filter(|p| !p.needs_auth)
        .map(|p| p.number)
        .collect();
    assert_eq!(no_auth, vec![66, 67, 68, 69, 70]);
    assert!(!remote_procedure(proc::AUTH_LIST).unwrap().needs_auth);
    // Feature queries come after authentication, as in libvirtd.
    assert!(
        remote_procedure(proc::CONNECT_SUPPORTS_FEATURE)
            .unwrap()
            .needs_auth
    );
    assert!(remote_procedure(proc::CONNECT_OPEN).unwrap().needs_auth);
}

#[test]
fn known_rows() {
    let open = remote_procedure(1).unwrap();
    assert_eq!(open.name, "CONNECT_OPEN");
    assert_eq!(open.api, "virConnectOpen");
    assert_eq!(open.priority, Priority::High);
    assert_eq!(open.kind, Kind::Call);
    assert!(open.read_only_ok);
    assert_eq!(open.acl, &["connect:getattr"]);

    let create = remote_procedure(9).unwrap();
    assert_eq!(create.name, "DOMAIN_CREATE");
    assert_eq!(create.api, "virDomainCreate");
    assert!(!create.read_only_ok);
    assert_eq!(create.acl, &["domain:start"]);

    let info = remote_procedure(16).unwrap();
    assert_eq!(info.name, "DOMAIN_GET_INFO");
    assert!(info.read_only_ok);

    let list_all = remote_procedure(273).unwrap();
    assert_eq!(list_all.name, "CONNECT_LIST_ALL_DOMAINS");
    assert!(list_all.read_only_ok);

    let secmodel = remote_procedure(122).unwrap();
    assert_eq!(secmodel.name, "NODE_GET_SECURITY_MODEL");
    assert_eq!(secmodel.priority, Priority::High);
    assert!(secmodel.read_only_ok);

    let state = remote_procedure(proc::DOMAIN_GET_STATE).unwrap();
    assert_eq!(state.number, 212);
    assert_eq!(state.priority, Priority::High);
    assert!(state.read_only_ok);

    let create_xml = remote_procedure(proc::DOMAIN_CREATE_XML).unwrap();
    assert_eq!(create_xml.priority, Priority::Low);

    let console = remote_procedure(201).unwrap();
    assert_eq!(console.name, "DOMAIN_OPEN_CONSOLE");
    assert_eq!(console.stream, Stream::Read);
    assert!(!console.read_only_ok);

    let xml = remote_procedure(proc::DOMAIN_GET_XML_DESC).unwrap();
    assert_eq!(xml.api, "virDomainGetXMLDesc");
    assert!(xml.read_only_ok);
    assert!(xml
        .secret_flags
        .contains(&("domain:read_secure", "VIR_DOMAIN_XML_SECURE")));

    let define = remote_procedure(proc::DOMAIN_DEFINE_XML_FLAGS).unwrap();
    assert_eq!(define.acl, &["domain:write", "domain:save"]);
    assert!(!define.read_only_ok);
}

#[test]
fn api_names_follow_libvirt_casing() {
    let api = |n: i32| remote_procedure(n).unwrap().api;
    assert_eq!(api(proc::DOMAIN_CREATE_XML), "virDomainCreateXML");
    assert_eq!(api(proc::CONNECT_GET_URI), "virConnectGetURI");
    assert_eq!(api(proc::DOMAIN_LOOKUP_BY_UUID), "virDomainLookupByUUID");
    assert_eq!(api(proc::DOMAIN_LOOKUP_BY_ID), "virDomainLookupByID");
    assert_eq!(api(proc::DOMAIN_GET_VCPUS), "virDomainGetVcpus");
    assert_eq!(api(proc::NODE_GET_INFO), "virNodeGetInfo");
    assert_eq!(api(proc::NODE_GET_CPU_STATS), "virNodeGetCPUStats");
    assert_eq!(api(proc::DOMAIN_GET_OS_TYPE), "virDomainGetOSType");
    assert_eq!(
        api(proc::STORAGE_VOL_CREATE_XML_FROM),
        "virStorageVolCreateXMLFrom"
    );
    assert_eq!(
        api(proc::NWFILTER_LOOKUP_BY_NAME),
        "virNWFilterLookupByName"
    );
    assert_eq!(
        api(proc::INTERFACE_LOOKUP_BY_MAC_STRING),
        "virInterfaceLookupByMACString"
    );
    assert_eq!(
        api(proc::DOMAIN_OPEN_GRAPHICS_FD),
        "virDomainOpenGraphicsFD"
    );
    assert_eq!(
        api(proc::CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY),
        "virConnectDomainEventRegisterAny"
    );
}

#[test]
fn events_are_the_51_server_messages() {
    let events: Vec<&ProcInfo> = REMOTE_PROCEDURES
        .iter()
        .filter(|p| p.kind == Kind::Event)
        .collect();
    assert_eq!(events.len(), 51);
    for e in &events {
        assert!(e.name.contains("_EVENT_"), "{}", e.name);
        assert!(e.acl.is_empty() && e.secret_flags.is_empty(), "{}", e.name);
        assert_eq!(e.stream, Stream::None);
    }
    for n in [107, 318, 319, 315, 362, 370, 373, 376, 382, 438] {
        assert_eq!(remote_procedure(n).unwrap().kind, Kind::Event, "{n}");
    }
    // The register/deregister calls are calls.
    for n in [105, 106, 236, 237, 316, 317, 360, 361] {
        assert_eq!(remote_procedure(n).unwrap().kind, Kind::Call, "{n}");
    }
}

#[test]
fn annotation_counts_match_libvirt_9_0_0() {
    let high = REMOTE_PROCEDURES
        .iter()
        .filter(|p| p.priority == Priority::High)
        .count();
    assert_eq!(high, 184);
    let streams: Vec<(i32, Stream)> = REMOTE_PROCEDURES
        .iter()
        .filter(|p| p.stream != Stream::None)
        .map(|p| (p.number, p.stream))
        .collect();
    assert_eq!(
        streams,
        vec![
            (148, Stream::Write), // DOMAIN_MIGRATE_PREPARE_TUNNEL
            (201, Stream::Read),  // DOMAIN_OPEN_CONSOLE
            (208, Stream::Write), // STORAGE_VOL_UPLOAD
            (209, Stream::Read),  // STORAGE_VOL_DOWNLOAD
            (211, Stream::Read),  // DOMAIN_SCREENSHOT
            (215, Stream::Write), // DOMAIN_MIGRATE_PREPARE_TUNNEL3
            (296, Stream::Read),  // DOMAIN_OPEN_CHANNEL
        ]
    );
}

#[test]
fn read_only_follows_libvirt_public_api() {
    let ro = |n: i32| remote_procedure(n).unwrap().read_only_ok;
    // Mutating calls are refused.
    for n in [
        proc::DOMAIN_CREATE,
        proc::DOMAIN_DESTROY,
        proc::DOMAIN_SHUTDOWN,
        proc::DOMAIN_REBOOT,
        proc::DOMAIN_SUSPEND,
        proc::DOMAIN_RESUME,
        proc::DOMAIN_UNDEFINE,
        proc::DOMAIN_DEFINE_XML,
        proc::DOMAIN_SET_AUTOSTART,
        proc::DOMAIN_SET_MEMORY,
        proc::DOMAIN_SET_MAX_MEMORY,
        proc::DOMAIN_SET_VCPUS_FLAGS,
        proc::DOMAIN_SCREENSHOT,
        proc::CONNECT_SET_IDENTITY,
        // Annotated domain:read, but libvirt's public API refuses read-only connections.
        proc::DOMAIN_SET_SCHEDULER_PARAMETERS,
        proc::NODE_GET_SEV_INFO,
        proc::DOMAIN_GET_LAUNCH_SECURITY_INFO,
    ] {
        assert!(!ro(n), "{}", remote_procedure(n).unwrap().name);
    }
    // What virsh -r / virt-manager read-only do is allowed.
    for n in [
        proc::CONNECT_OPEN,
        proc::CONNECT_CLOSE,
        proc::AUTH_LIST,
        proc::CONNECT_SUPPORTS_FEATURE,
        proc::CONNECT_GET_URI,
        proc::CONNECT_GET_HOSTNAME,
        proc::CONNECT_GET_CAPABILITIES,
        proc::CONNECT_LIST_ALL_DOMAINS,
        proc::DOMAIN_LOOKUP_BY_NAME,
        proc::DOMAIN_GET_INFO,
        proc::DOMAIN_GET_STATE,
        proc::DOMAIN_GET_XML_DESC,
        proc::DOMAIN_GET_VCPUS_FLAGS,
        proc::NODE_GET_INFO,
        proc::NODE_GET_SECURITY_MODEL,
        proc::CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY,
        proc::CONNECT_REGISTER_CLOSE_CALLBACK,
        proc::CONNECT_GET_ALL_DOMAIN_STATS,
        // Not anonymous ACL perms, but libvirt lets read-only connections do these.
        proc::STORAGE_POOL_LIST_ALL_VOLUMES,
        proc::NODE_DEVICE_GET_XML_DESC,
        proc::NETWORK_LIST_ALL_PORTS,
    ] {
        assert!(ro(n), "{}", remote_procedure(n).unwrap().name);
    }
    // A conditional permission never decides read_only_ok on its own.
    let vcpus = remote_procedure(proc::DOMAIN_GET_VCPUS_FLAGS).unwrap();
    assert_eq!(
        vcpus.secret_flags,
        &[("domain:write", "VIR_DOMAIN_VCPU_GUEST")]
    );
}

/// Every public function name in libvirt's headers that a call's `api` matches ignoring case
/// must match exactly. Runs only where libvirt-dev's headers are installed.
#[test]
fn api_names_match_installed_headers() {
    let dir = std::path::Path::new("/usr/include/libvirt");
    let Ok(entries) = std::fs::read_dir(dir) else {
        eprintln!("skipped: no {}", dir.display());
        return;
    };
    let mut functions = std::collections::HashSet::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "h") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for (i, _) in text.match_indices("vir") {
                let rest = &text[i..];
                let end = rest
                    .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                    .unwrap_or(rest.len());
                if rest[end..].trim_start().starts_with('(') {
                    functions.insert(rest[..end].to_string());
                }
            }
        }
    }
    let by_lower: std::collections::HashMap<String, &String> =
        functions.iter().map(|f| (f.to_lowercase(), f)).collect();
    let mut matched = 0;
    for p in REMOTE_PROCEDURES.iter().filter(|p| p.kind == Kind::Call) {
        if let Some(real) = by_lower.get(&p.api.to_lowercase()) {
            assert_eq!(p.api, real.as_str(), "procedure {} ({})", p.number, p.name);
            matched += 1;
        }
    }
    // 392 calls; all but migration steps, SASL/polkit and the feature query are public.
    assert!(
        matched >= 360,
        "only {matched} calls matched a header function"
    );
}
