//! The TLS listener against the stock clients: a PKI made with certtool from the templates
//! of docs/traces/tls, `virsh -c 'uml+tls://127.0.0.1:PORT/system?pkipath=DIR'`,
//! python3-libvirt and gnutls-cli. Every refused client must see the error libvirtd gives
//! (the daemon closes without sending the confirmation byte) and leave the daemon serving.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{free_port, path_str, python_ok, tail, virsh, wait_until, Daemon};

fn template(name: &str) -> String {
    // The certtool templates of docs/traces/tls (ca.info, server.info, client.info), inlined.
    match name {
        "ca" => "cn = example test CA\nca\ncert_signing_key\nexpiration_days = 3650\n".into(),
        "server" => "organization = example\ncn = localhost\ndns_name = localhost\n\
                     ip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\n\
                     expiration_days = 3650\n"
            .into(),
        "client" => "country = GB\nstate = London\nlocality = London\norganization = example\n\
                     cn = client1\ntls_www_client\nencryption_key\nsigning_key\n\
                     expiration_days = 3650\n"
            .into(),
        other => panic!("no template {other}"),
    }
}

fn certtool(dir: &Path, args: &[&str]) {
    let out = Command::new("certtool")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run certtool (install gnutls-bin)");
    assert!(
        out.status.success(),
        "certtool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1/localhost, and client pkipath directories.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
        };
        let d = pki.dir.path();
        let write = |name: &str, text: &str| std::fs::write(d.join(name), text).unwrap();
        write("ca.info", &template("ca"));
        write("server.info", &template("server"));
        write("client.info", &template("client"));
        write("other-ca.info", "cn = other CA\nca\ncert_signing_key\n");
        write(
            "expired.info",
            &template("client").replace(
                "expiration_days = 3650\n",
                "activation_date = \"2020-01-01 00:00:00 UTC\"\n\
                 expiration_date = \"2021-01-01 00:00:00 UTC\"\n",
            ),
        );
        write(
            "revoked.info",
            &template("client").replace("cn = client1", "cn = revoked1"),
        );
        write("crl.info", "crl_next_update = 30\ncrl_number = 1\n");
        // A DN with the characters RFC 4514 escapes, UTF-8, and repeated attributes.
        write(
            "tricky.info",
            "country = GB\norganization = \"Ex, ample+Co\"\nunit = \"Dept; \\\"Q\\\" <x>\"\n\
             cn = \" spaced #1 é \"\ndc = \"example\"\ndc = \"org\"\nuid = \"user1\"\n\
             tls_www_client\nencryption_key\nsigning_key\nexpiration_days = 30\n",
        );
        for key in ["ca", "server", "client", "other-ca", "impostor-ca"] {
            certtool(
                d,
                &[
                    "--generate-privkey",
                    "--bits",
                    "2048",
                    "--outfile",
                    &format!("{key}-key.pem"),
                ],
            );
        }
        let self_signed = |key: &str, info: &str| {
            certtool(
                d,
                &[
                    "--generate-self-signed",
                    "--load-privkey",
                    &format!("{key}-key.pem"),
                    "--template",
                    info,
                    "--outfile",
                    &format!("{key}cert.pem"),
                ],
            )
        };
        self_signed("ca", "ca.info");
        self_signed("other-ca", "other-ca.info");
        // Same name as the real CA, another key: its certificates reach the server.
        self_signed("impostor-ca", "ca.info");
        let issue = |ca: &str, key: &str, info: &str, out: &str| {
            certtool(
                d,
                &[
                    "--generate-certificate",
                    "--load-privkey",
                    &format!("{key}-key.pem"),
                    "--load-ca-certificate",
                    &format!("{ca}cert.pem"),
                    "--load-ca-privkey",
                    &format!("{ca}-key.pem"),
                    "--template",
                    info,
                    "--outfile",
                    out,
                ],
            )
        };
        issue("ca", "server", "server.info", "servercert.pem");
        issue("ca", "client", "client.info", "clientcert.pem");
        issue("ca", "client", "expired.info", "expiredcert.pem");
        issue("ca", "client", "revoked.info", "revokedcert.pem");
        issue("ca", "client", "tricky.info", "trickycert.pem");
        issue("other-ca", "client", "client.info", "othercert.pem");
        issue("impostor-ca", "client", "client.info", "impostorcert.pem");
        certtool(
            d,
            &[
                "--generate-crl",
                "--load-ca-privkey",
                "ca-key.pem",
                "--load-ca-certificate",
                "cacert.pem",
                "--load-certificate",
                "revokedcert.pem",
                "--template",
                "crl.info",
                "--outfile",
                "cacrl.pem",
            ],
        );
        let ca = std::fs::read(d.join("cacert.pem")).unwrap();
        let mut both = ca.clone();
        both.extend(std::fs::read(d.join("other-cacert.pem")).unwrap());
        // pkipath directories: cacert.pem, clientcert.pem, clientkey.pem.
        for (name, cacert, cert) in [
            ("good", &ca, Some("clientcert.pem")),
            ("expired", &ca, Some("expiredcert.pem")),
            ("revoked", &ca, Some("revokedcert.pem")),
            // The client trusts both CAs, so its own certificate passes its checks.
            ("other-ca", &both, Some("othercert.pem")),
            ("impostor", &ca, Some("impostorcert.pem")),
            ("nocert", &ca, None),
            ("tricky", &ca, Some("trickycert.pem")),
        ] {
            let p = d.join(name);
            std::fs::create_dir(&p).unwrap();
            std::fs::write(p.join("cacert.pem"), cacert).unwrap();
            if let Some(cert) = cert {
                std::fs::copy(d.join(cert), p.join("clientcert.pem")).unwrap();
                std::fs::copy(d.join("client-key.pem"), p.join("clientkey.pem")).unwrap();
            }
        }
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Configuration lines for a TLS listener on `port` with this PKI (and its CRL).
    fn config(&self, port: u16) -> String {
        format!(
            "listen_tls = 1\ntls_port = \"{port}\"\nkey_file = \"{}\"\ncert_file = \"{}\"\n\
             ca_file = \"{}\"\ncrl_file = \"{}\"\n",
            path_str(&self.path("server-key.pem")),
            path_str(&self.path("servercert.pem")),
            path_str(&self.path("cacert.pem")),
            path_str(&self.path("cacrl.pem")),
        )
    }

    /// `uml+tls://` URI for a pkipath directory, with extra parameters (`&no_sanity=1`).
    fn uri(&self, port: u16, pkipath: &str, extra: &str) -> String {
        format!(
            "uml+tls://127.0.0.1:{port}/system?pkipath={}{extra}",
            path_str(&self.path(pkipath))
        )
    }
}

/// The DN libvirt computes for a certificate (`virt-pki-query-dn`, GnuTLS's format).
fn libvirt_dn(cert: &Path) -> String {
    let out = Command::new("virt-pki-query-dn")
        .arg(cert)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn virsh_ok(uri: &str, args: &[&str], d: &Daemon) -> String {
    let out = virsh(uri, args);
    assert!(
        out.status.success(),
        "virsh {uri} {args:?} failed: {}\ndaemon log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        tail(&d.log(), 30)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// virsh must fail the way a libvirtd refusal looks, and the daemon must say why.
fn refused(d: &Daemon, uri: &str, daemon_says: &str) {
    let before = d.log().matches(daemon_says).count();
    let out = virsh(uri, &["version"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{uri} was accepted");
    assert!(
        stderr.contains("Unable to read TLS confirmation"),
        "{uri}: unexpected client error: {stderr}"
    );
    let said = wait_until(Duration::from_secs(5), || {
        d.log().matches(daemon_says).count() > before
    });
    assert!(
        said,
        "{uri}: the daemon did not log '{daemon_says}':\n{}",
        tail(&d.log(), 20)
    );
}

#[test]
fn stock_clients_over_tls() {
    let pki = Pki::new();
    let port = free_port();
    let d = Daemon::start_with(&pki.config(port));
    let uri = pki.uri(port, "good", "");
    let out = virsh_ok(&uri, &["version"], &d);
    assert!(out.contains("Running hypervisor: UML"), "{out}");
    virsh_ok(&uri, &["list", "--all"], &d);
    let out = python_ok(
        &uri,
        "import libvirt, os\n\
         c = libvirt.open(os.environ['URI'])\n\
         print('secure', c.isSecure(), 'encrypted', c.isEncrypted())\n\
         print('host', c.getHostname())\n",
    );
    assert!(out.contains("secure 1 encrypted 1"), "{out}");
    // The daemon saw the client's DN exactly as libvirt writes it.
    let dn = libvirt_dn(&pki.path("clientcert.pem"));
    assert_eq!(dn, "C=GB,ST=London,L=London,O=example,CN=client1");
    assert!(
        d.log().contains(&format!("client certificate DN '{dn}'")),
        "{}",
        tail(&d.log(), 20)
    );
    let tricky = libvirt_dn(&pki.path("trickycert.pem"));
    assert!(tricky.contains("O=Ex\\, ample\\+Co"), "{tricky}");
    virsh_ok(&pki.uri(port, "tricky", ""), &["version"], &d);
    assert!(
        d.log()
            .contains(&format!("client certificate DN '{tricky}'")),
        "{tricky}\n{}",
        tail(&d.log(), 20)
    );
    // Plain TCP on the same daemon is not secure.
    let out = python_ok(
        &d.tcp_uri(),
        "import libvirt, os\nprint('secure', libvirt.open(os.environ['URI']).isSecure())\n",
    );
    assert!(out.contains("secure 0"), "{out}");
}

/// gnutls-cli: TLS 1.2 and 1.3 both work, and the first application byte is 0x01.
#[test]
fn tls12_and_tls13_get_the_confirmation_byte() {
    let pki = Pki::new();
    let port = free_port();
    let d = Daemon::start_with(&pki.config(port));
    for (priority, version) in [("NORMAL:-VERS-TLS1.3", "(TLS1.2-"), ("NORMAL", "(TLS1.3-")] {
        let mut child = Command::new("gnutls-cli")
            .arg(format!("--priority={priority}"))
            .arg(format!(
                "--x509cafile={}",
                path_str(&pki.path("cacert.pem"))
            ))
            .arg(format!(
                "--x509certfile={}",
                path_str(&pki.path("clientcert.pem"))
            ))
            .arg(format!(
                "--x509keyfile={}",
                path_str(&pki.path("client-key.pem"))
            ))
            .arg(format!("--port={port}"))
            .arg("127.0.0.1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run gnutls-cli (install gnutls-bin)");
        std::thread::sleep(Duration::from_millis(1500));
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(version),
            "{priority}: {stdout}\n{}",
            tail(&d.log(), 10)
        );
        let data = stdout
            .split_once("Simple Client Mode:")
            .map(|(_, after)| after.trim_start_matches('\n'))
            .unwrap_or("");
        assert!(
            data.starts_with('\u{1}'),
            "{priority}: no confirmation byte: {data:?}"
        );
    }
}

#[test]
fn refused_clients_and_hostile_peers_leave_the_daemon_serving() {
    let pki = Pki::new();
    let port = free_port();
    let d = Daemon::start_with(&pki.config(port));
    let good = pki.uri(port, "good", "");
    let canary = || {
        virsh_ok(&good, &["version"], &d);
    };
    // A silent peer: it holds no one up, and is dropped after the handshake timeout.
    let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let silent_since = Instant::now();
    canary();
    // Signed by another CA: the client (whose cacert.pem trusts both) withholds the
    // certificate the server's CA list does not name, so the server sees none.
    refused(&d, &pki.uri(port, "other-ca", ""), "no client certificate");
    // Signed by a CA with the real CA's name but another key: the certificate is sent
    // (no_sanity: the client does not check its own certificate) and refused.
    refused(
        &d,
        &pki.uri(port, "impostor", "&no_sanity=1"),
        "client certificate refused",
    );
    canary();
    // Expired (virsh refuses its own expired certificate unless no_sanity=1).
    refused(
        &d,
        &pki.uri(port, "expired", "&no_sanity=1"),
        "certificate expired",
    );
    // Revoked by the CRL.
    refused(&d, &pki.uri(port, "revoked", ""), "Revoked");
    // No certificate at all.
    refused(&d, &pki.uri(port, "nocert", ""), "no client certificate");
    canary();
    // Plain text and a truncated ClientHello on the TLS port.
    for junk in [
        &b"GET / HTTP/1.0\r\n\r\n"[..],
        &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01],
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(junk).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut buf = Vec::new();
        match s.read_to_end(&mut buf) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("the daemon did not close a junk connection: {e}"),
        }
    }
    canary();
    // The silent peer is closed without a byte once the timeout passes.
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 1];
    let n = silent.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the silent peer got data");
    let waited = silent_since.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(20),
        "silent peer closed after {waited:?}"
    );
    // (The socket closes as the handshake future is dropped, just before the log line.)
    assert!(wait_until(Duration::from_secs(5), || d
        .log()
        .contains("TLS handshake not completed within 10 s")));
    canary();
}

#[test]
fn dn_allowlist() {
    let pki = Pki::new();
    let dn = libvirt_dn(&pki.path("clientcert.pem"));
    // Not on the list: refused after the handshake.
    let port = free_port();
    let d = Daemon::start_with(&format!(
        "{}tls_allowed_dn_list = [ \"C=GB,*,CN=admin\", \"{dn}x\" ]\n",
        pki.config(port)
    ));
    refused(
        &d,
        &pki.uri(port, "good", ""),
        "not on the list of allowed clients",
    );
    drop(d);
    // The exact DN libvirt's tool prints, and a glob, are both accepted.
    for allowed in [dn.clone(), "C=GB,*,O=exa?ple,CN=client*".to_string()] {
        let port = free_port();
        let d = Daemon::start_with(&format!(
            "{}tls_allowed_dn_list = [ \"C=FR,*\", \"{allowed}\" ]\n",
            pki.config(port)
        ));
        virsh_ok(&pki.uri(port, "good", ""), &["version"], &d);
    }
}

#[test]
fn no_verify_accepts_clients_without_a_valid_certificate() {
    let pki = Pki::new();
    let port = free_port();
    let d = Daemon::start_with(&format!(
        "{}tls_no_verify_certificate = 1\n",
        pki.config(port)
    ));
    for (pkipath, extra) in [
        ("nocert", ""),
        ("expired", "&no_sanity=1"),
        ("revoked", ""),
        ("good", ""),
    ] {
        let uri = pki.uri(port, pkipath, extra);
        let out = virsh_ok(&uri, &["version"], &d);
        assert!(out.contains("Running hypervisor: UML"), "{pkipath}: {out}");
    }
    assert!(d
        .log()
        .contains("accepted with tls_no_verify_certificate = 1"));
    let out = python_ok(
        &pki.uri(port, "nocert", ""),
        "import libvirt, os\nprint('secure', libvirt.open(os.environ['URI']).isSecure())\n",
    );
    assert!(out.contains("secure 1"), "{out}");
}

/// Without key_file & co the files are libvirtd's default paths under `--root`, and
/// `CA/cacrl.pem` is used when it is there.
#[test]
fn default_pki_paths_under_root() {
    let pki = Pki::new();
    let port = free_port();
    let d = Daemon::start_prepared(
        &format!("listen_tls = 1\ntls_port = \"{port}\"\n"),
        |root| {
            let etc = root.join("etc/pki");
            std::fs::create_dir_all(etc.join("CA")).unwrap();
            std::fs::create_dir_all(etc.join("libvirt/private")).unwrap();
            for (from, to) in [
                ("cacert.pem", "CA/cacert.pem"),
                ("cacrl.pem", "CA/cacrl.pem"),
                ("servercert.pem", "libvirt/servercert.pem"),
                ("server-key.pem", "libvirt/private/serverkey.pem"),
            ] {
                std::fs::copy(pki.path(from), etc.join(to)).unwrap();
            }
        },
    );
    virsh_ok(&pki.uri(port, "good", ""), &["version"], &d);
    refused(&d, &pki.uri(port, "revoked", ""), "Revoked");
}

/// Missing or bad credentials stop the daemon at startup with a message naming the file.
#[test]
fn startup_errors_name_the_file() {
    let pki = Pki::new();
    let junk = pki.path("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let good = pki.config(free_port());
    let set = |key: &str, value: &Path| {
        let mut lines: Vec<String> = good
            .lines()
            .filter(|l| !l.starts_with(key))
            .map(String::from)
            .collect();
        lines.push(format!("{key} = \"{}\"", path_str(value)));
        lines.join("\n")
    };
    let missing = pki.path("missing.pem");
    for (conf, file) in [
        (set("key_file", &missing), &missing),
        (set("cert_file", &missing), &missing),
        (set("ca_file", &missing), &missing),
        (set("crl_file", &missing), &missing),
        (set("cert_file", &junk), &junk),
        (set("key_file", &junk), &junk),
        (set("ca_file", &junk), &junk),
        (set("crl_file", &junk), &junk),
        // The key of another certificate.
        (
            set("key_file", &pki.path("client-key.pem")),
            &pki.path("client-key.pem"),
        ),
    ] {
        let root = tempfile::tempdir().unwrap();
        let conf_path = root.path().join("virtumld.conf");
        std::fs::write(&conf_path, format!("listen_addr = \"127.0.0.1\"\n{conf}\n")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_virtumld"))
            .args(["--system", "--listen", "--timeout", "5", "--root"])
            .arg(root.path())
            .arg("--config")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{conf}\n{stderr}");
        assert!(
            stderr.contains(&path_str(file)),
            "the error does not name {}: {stderr}",
            file.display()
        );
    }
}
