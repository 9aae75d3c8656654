//! SASL with the stock clients: DIGEST-MD5 over plain TCP with its security layer (checked
//! on the wire through a recording relay), SCRAM-SHA-256 over TLS, wrong passwords, and a
//! raw client poking at the authentication gate. Credentials come from a private sasldb
//! under the daemon's `--root` and reach virsh through `LIBVIRT_AUTH_FILE`.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{free_port, path_str, tail, Daemon, Raw};
use virtumld_protocol::error::RemoteError;
use virtumld_protocol::header::{Status, REMOTE_PROGRAM};
use virtumld_protocol::procedures::proc as p;
use virtumld_protocol::remote::{AuthListRet, AuthSaslStepArgs, AuthType, ConnectOpenArgs};
use virtumld_protocol::xdr;

const USER: &str = "alice";
const PASSWORD: &str = "s3cret-Pa55";

/// `ROOT/etc/sasl2/virtumld.conf` and a sasldb holding `USER`.
fn sasl_setup(root: &Path, mechs: &str) {
    let dir = root.join("etc/sasl2");
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("sasldb");
    let mut child = Command::new("saslpasswd2")
        .args(["-f", &path_str(&db), "-a", "virtumld", "-c", "-p", USER])
        .stdin(Stdio::piped())
        .spawn()
        .expect("run saslpasswd2 (install sasl2-bin)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(PASSWORD.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "saslpasswd2 failed");
    std::fs::write(
        dir.join("virtumld.conf"),
        format!("mech_list: {mechs}\nsasldb_path: {}\n", path_str(&db)),
    )
    .unwrap();
}

/// An auth.conf giving `password` for 127.0.0.1.
fn auth_file(dir: &Path, password: &str) -> PathBuf {
    let f = dir.join(format!("auth-{password}.conf"));
    std::fs::write(
        &f,
        format!(
            "[credentials-test]\nauthname={USER}\npassword={password}\n\n\
             [auth-libvirt-127.0.0.1]\ncredentials=test\n"
        ),
    )
    .unwrap();
    f
}

fn virsh_auth(uri: &str, auth: &Path, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("60")
        .arg("virsh")
        .arg("-q")
        .arg("-c")
        .arg(uri)
        .args(args)
        .env("LC_ALL", "C")
        .env("LIBVIRT_AUTH_FILE", auth)
        .stdin(Stdio::null())
        .output()
        .expect("run virsh")
}

fn virsh_auth_ok(d: &Daemon, uri: &str, auth: &Path, args: &[&str]) -> String {
    let out = virsh_auth(uri, auth, args);
    assert!(
        out.status.success(),
        "virsh {uri} {args:?} failed: {}\ndaemon log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        tail(&d.log(), 30)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A TCP relay to `target` that records what each side sent.
struct Relay {
    port: u16,
    to_server: Arc<Mutex<Vec<u8>>>,
    to_client: Arc<Mutex<Vec<u8>>>,
}

impl Relay {
    fn start(target: u16) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let to_server = Arc::new(Mutex::new(Vec::new()));
        let to_client = Arc::new(Mutex::new(Vec::new()));
        let (ts, tc) = (to_server.clone(), to_client.clone());
        std::thread::spawn(move || {
            // One connection: the one virsh makes.
            let Ok((c, _)) = l.accept() else { return };
            let s = TcpStream::connect(("127.0.0.1", target)).unwrap();
            let pump = |mut from: TcpStream, mut to: TcpStream, log: Arc<Mutex<Vec<u8>>>| {
                std::thread::spawn(move || {
                    let mut b = [0u8; 4096];
                    while let Ok(n) = from.read(&mut b) {
                        if n == 0 || to.write_all(&b[..n]).is_err() {
                            break;
                        }
                        log.lock().unwrap().extend_from_slice(&b[..n]);
                    }
                    let _ = to.shutdown(std::net::Shutdown::Write);
                })
            };
            let a = pump(c.try_clone().unwrap(), s.try_clone().unwrap(), ts);
            let b = pump(s, c, tc);
            let _ = a.join();
            let _ = b.join();
        });
        Relay {
            port,
            to_server,
            to_client,
        }
    }
}

/// Splits the plain XDR messages off the front of a recorded stream: their procedure
/// numbers, and what follows them.
fn plain_prefix(stream: &[u8]) -> (Vec<i32>, &[u8]) {
    let mut procs = Vec::new();
    let mut at = 0;
    while stream.len() >= at + 28 {
        let w = |o: usize| u32::from_be_bytes(stream[at + o..at + o + 4].try_into().unwrap());
        let len = w(0) as usize;
        if w(4) != REMOTE_PROGRAM || len < 28 || at + len > stream.len() {
            break;
        }
        procs.push(w(12) as i32);
        at += len;
    }
    (procs, &stream[at..])
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// virsh over plain TCP: DIGEST-MD5 (the one password mechanism a stock client accepts
/// there) authenticates, and everything after the completing reply is wrapped by the
/// SASL security layer, in both directions, including messages larger than its buffer.
#[test]
fn digest_md5_over_tcp_with_security_layer() {
    let d = Daemon::start_prepared("auth_tcp = \"sasl\"\n", |root| {
        sasl_setup(root, "digest-md5 scram-sha-256")
    });
    let auth = auth_file(d.root.path(), PASSWORD);
    let relay = Relay::start(d.port);
    let uri = format!("uml+tcp://127.0.0.1:{}/system", relay.port);
    let out = virsh_auth_ok(&d, &uri, &auth, &["list", "--all"]);
    assert!(out.trim().is_empty(), "{out}");
    assert!(
        d.log().contains("SASL authentication succeeded") && d.log().contains("SSF 128"),
        "{}",
        tail(&d.log(), 20)
    );
    std::thread::sleep(Duration::from_millis(300));
    let up = relay.to_server.lock().unwrap().clone();
    let down = relay.to_client.lock().unwrap().clone();
    // In clear: AUTH_LIST, AUTH_SASL_INIT, START, STEP and their replies. Then no REMOTE
    // program number anywhere, and not the URI CONNECT_OPEN carries.
    let (procs, rest_up) = plain_prefix(&up);
    assert_eq!(
        procs,
        [
            p::AUTH_LIST,
            p::AUTH_SASL_INIT,
            p::AUTH_SASL_START,
            p::AUTH_SASL_STEP
        ]
    );
    let (procs, rest_down) = plain_prefix(&down);
    assert_eq!(
        procs,
        [
            p::AUTH_LIST,
            p::AUTH_SASL_INIT,
            p::AUTH_SASL_START,
            p::AUTH_SASL_STEP
        ]
    );
    let magic = REMOTE_PROGRAM.to_be_bytes();
    for (what, rest) in [("client", rest_up), ("daemon", rest_down)] {
        assert!(rest.len() > 64, "{what} sent nothing after authentication");
        assert!(!contains(rest, &magic), "{what} sent plain XDR after auth");
    }
    assert!(!contains(&up, b"uml:///system"));
    assert!(
        !contains(&down, b"UML"),
        "the daemon's answers travel in clear"
    );

    // Messages larger than the layer's 64 KiB buffer, both ways.
    let img = d.root.path().join("big.img");
    std::fs::write(&img, b"").unwrap();
    let desc = "x".repeat(150_000);
    let xml = support::guest_xml("big", &img).replace(
        "<memory",
        &format!("<description>{desc}</description>\n  <memory"),
    );
    let file = d.root.path().join("big.xml");
    std::fs::write(&file, xml).unwrap();
    let direct = d.tcp_uri();
    virsh_auth_ok(&d, &direct, &auth, &["define", &path_str(&file)]);
    let back = virsh_auth_ok(&d, &direct, &auth, &["dumpxml", "big"]);
    assert!(back.contains(&desc), "description lost on the way back");
}

#[test]
fn wrong_password_and_unknown_user_fail_like_libvirtd() {
    let d = Daemon::start_prepared("auth_tcp = \"sasl\"\n", |root| {
        sasl_setup(root, "digest-md5")
    });
    let bad = auth_file(d.root.path(), "not-the-password");
    let out = virsh_auth(&d.tcp_uri(), &bad, &["list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("authentication failed"), "{err}");
    // The daemon keeps serving, and the right password still works.
    let good = auth_file(d.root.path(), PASSWORD);
    virsh_auth_ok(&d, &d.tcp_uri(), &good, &["list"]);
    // A user name outside sasl_allowed_username_list is refused after a correct password.
    let d2 = Daemon::start_prepared(
        "auth_tcp = \"sasl\"\nsasl_allowed_username_list = [ \"bob\", \"adm*\" ]\n",
        |root| sasl_setup(root, "digest-md5"),
    );
    let good = auth_file(d2.root.path(), PASSWORD);
    let out = virsh_auth(&d2.tcp_uri(), &good, &["list"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("authentication failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(d2.log().contains("not in sasl_allowed_username_list"));
}

/// A raw client: AUTH_LIST says SASL, nothing but AUTH_* is allowed before the exchange,
/// SASL calls out of order fail with VIR_ERR_AUTH_FAILED, and the third failure closes
/// the connection.
#[test]
fn raw_client_meets_the_authentication_gate() {
    let d = Daemon::start_prepared("auth_tcp = \"sasl\"\n", |root| {
        sasl_setup(root, "digest-md5")
    });
    let mut raw = Raw::connect(d.port);
    raw.call(p::AUTH_LIST, 0, &());
    let (h, body) = raw.reply().unwrap();
    assert_eq!(h.status, Status::OK);
    assert_eq!(
        xdr::from_bytes::<AuthListRet>(&body).unwrap().types,
        [AuthType::Sasl]
    );
    let open = ConnectOpenArgs {
        name: Some("uml:///system".into()),
        flags: 0,
    };
    for (serial, procedure) in [(1, p::CONNECT_OPEN), (2, p::CONNECT_SUPPORTS_FEATURE)] {
        if procedure == p::CONNECT_OPEN {
            raw.call(procedure, serial, &open);
        } else {
            raw.call(procedure, serial, &10i32);
        }
        let (h, body) = raw.reply().unwrap();
        assert_eq!(h.status, Status::ERROR);
        let e = xdr::from_bytes::<RemoteError>(&body).unwrap();
        assert_eq!(e.message.as_deref(), Some("authentication required"));
    }
    // STEP before INIT: authentication failed, three times, then the daemon hangs up.
    let step = AuthSaslStepArgs {
        nil: 1,
        data: vec![],
    };
    for serial in 3..6 {
        raw.call(p::AUTH_SASL_STEP, serial, &step);
        let (h, body) = raw.reply().expect("an error reply");
        assert_eq!(h.status, Status::ERROR);
        let e = xdr::from_bytes::<RemoteError>(&body).unwrap();
        assert_eq!((e.code, e.domain), (45, 7), "{e:?}");
        assert_eq!(
            e.message.as_deref(),
            Some("authentication failed: authentication failed")
        );
    }
    assert!(raw.closed(), "connection still open after three failures");
    // A pre-auth message larger than a SASL step can be is refused by closing.
    let mut raw = Raw::connect(d.port);
    raw.send(&(400_000u32).to_be_bytes());
    raw.send(&[0u8; 64]);
    assert!(raw.closed());
    // An AUTH_SASL_START with the largest data (65 536 bytes, 4 bytes each on the wire)
    // still fits the pre-auth cap and gets an answer.
    let mut raw = Raw::connect(d.port);
    raw.call(p::AUTH_SASL_INIT, 1, &());
    let (h, body) = raw.reply().unwrap();
    assert_eq!(h.status, Status::OK, "{body:?}");
    let start = virtumld_protocol::remote::AuthSaslStartArgs {
        mech: "DIGEST-MD5".into(),
        nil: 0,
        data: vec![b'a' as i8; 65_536],
    };
    raw.call(p::AUTH_SASL_START, 2, &start);
    let (h, _) = raw.reply().expect("a reply to a maximal START");
    assert_eq!(h.serial, 2);
}

fn certtool(dir: &Path, args: &[&str]) {
    let out = Command::new("certtool")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run certtool (install gnutls-bin)");
    assert!(out.status.success(), "certtool {args:?}");
}

/// A CA, a server certificate for 127.0.0.1, and a client pkipath directory `good/`.
fn pki(d: &Path) {
    let w = |n: &str, t: &str| std::fs::write(d.join(n), t).unwrap();
    w(
        "ca.info",
        "cn = test CA\nca\ncert_signing_key\nexpiration_days = 30\n",
    );
    w(
        "server.info",
        "organization = example\ncn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\n\
         tls_www_server\nencryption_key\nsigning_key\nexpiration_days = 30\n",
    );
    w(
        "client.info",
        "organization = example\ncn = client1\ntls_www_client\nencryption_key\nsigning_key\n\
         expiration_days = 30\n",
    );
    for k in ["ca", "server", "client"] {
        certtool(
            d,
            &[
                "--generate-privkey",
                "--bits",
                "2048",
                "--outfile",
                &format!("{k}-key.pem"),
            ],
        );
    }
    certtool(
        d,
        &[
            "--generate-self-signed",
            "--load-privkey",
            "ca-key.pem",
            "--template",
            "ca.info",
            "--outfile",
            "cacert.pem",
        ],
    );
    for k in ["server", "client"] {
        certtool(
            d,
            &[
                "--generate-certificate",
                "--load-privkey",
                &format!("{k}-key.pem"),
                "--load-ca-certificate",
                "cacert.pem",
                "--load-ca-privkey",
                "ca-key.pem",
                "--template",
                &format!("{k}.info"),
                "--outfile",
                &format!("{k}cert.pem"),
            ],
        );
    }
    let good = d.join("good");
    std::fs::create_dir(&good).unwrap();
    std::fs::copy(d.join("cacert.pem"), good.join("cacert.pem")).unwrap();
    std::fs::copy(d.join("clientcert.pem"), good.join("clientcert.pem")).unwrap();
    std::fs::copy(d.join("client-key.pem"), good.join("clientkey.pem")).unwrap();
}

/// Over TLS every mechanism qualifies; `?auth=sasl.scram-sha-256` forces SCRAM, which has
/// no security layer, so the TLS stream carries plain XDR as before.
#[test]
fn scram_sha_256_over_tls() {
    let pkid = tempfile::tempdir().unwrap();
    pki(pkid.path());
    let port = free_port();
    let pk = |n: &str| path_str(&pkid.path().join(n));
    let conf = format!(
        "listen_tls = 1\ntls_port = \"{port}\"\nkey_file = \"{}\"\ncert_file = \"{}\"\n\
         ca_file = \"{}\"\nauth_tls = \"sasl\"\n",
        pk("server-key.pem"),
        pk("servercert.pem"),
        pk("cacert.pem")
    );
    let d = Daemon::start_prepared(&conf, |root| sasl_setup(root, "digest-md5 scram-sha-256"));
    let auth = auth_file(d.root.path(), PASSWORD);
    let uri = format!(
        "uml+tls://127.0.0.1:{port}/system?pkipath={}&auth=sasl.SCRAM-SHA-256",
        pk("good")
    );
    let out = virsh_auth_ok(&d, &uri, &auth, &["version"]);
    assert!(out.contains("UML"), "{out}");
    assert!(
        d.log().contains("SASL authentication succeeded") && d.log().contains("SSF 0"),
        "{}",
        tail(&d.log(), 20)
    );
    // TCP on the same daemon still has no SASL (the harness sets auth_tcp = "none").
    virsh_auth_ok(&d, &d.tcp_uri(), &auth, &["list"]);
    let bad = auth_file(d.root.path(), "wrong");
    let out = virsh_auth(&uri, &bad, &["version"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("authentication failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
