//! The TLS listener's security: credentials from libvirtd's configuration keys and default
//! paths, a rustls server that requires a client certificate signed by the CA (and not on a
//! CRL), the `tls_allowed_dn_list` check, and the `0x01` confirmation byte libvirt clients
//! wait for before their first call.
//!
//! Two rustls settings are not negotiable (wire-protocol.md §12.2): no TLS 1.3 session
//! tickets (a ticket record before the confirmation byte makes every stock client fail with
//! "Unable to read TLS confirmation: Resource temporarily unavailable"), and the byte only
//! once the client certificate and its DN passed.
//!
//! Like libvirtd (GnuTLS `GNUTLS_CERT_REQUEST`, then a check of the finished session), the
//! handshake asks for a certificate and checks only that the client holds its key; the chain,
//! dates and CRLs are checked once the handshake is over, before anything else is read or
//! sent. A refused client thus sees libvirtd's "Unable to read TLS confirmation" instead of
//! a handshake cut halfway (which a GnuTLS client still writing its Finished may not even
//! survive: SIGPIPE).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::warn;

use crate::config::Config;
use crate::paths::Paths;

/// How long a client has to complete the handshake (and take the confirmation byte): a
/// silent peer must not hold a client slot.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The files the TLS listener uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    pub key: PathBuf,
    pub cert: PathBuf,
    pub ca: PathBuf,
    /// Loaded when set; a configured `crl_file` must exist, the default one may not.
    pub crl: Option<PathBuf>,
}

impl Files {
    /// libvirtd's rules: a configured key wins; otherwise `/etc/pki/...` (under `--root`),
    /// and in session mode `~/.pki/libvirt/<name>` first when that file exists. The default
    /// CRL `CA/cacrl.pem` is used only if it exists, as libvirtd skips a missing one.
    pub fn resolve(cfg: &Config, paths: &Paths) -> Files {
        let default = |user_name: &str, system: &str| -> PathBuf {
            if let Some(user) = &paths.user_pki_dir {
                let p = user.join(user_name);
                if p.exists() {
                    return p;
                }
            }
            paths.pki_dir.join(system)
        };
        let crl = match &cfg.crl_file {
            Some(p) => Some(p.clone()),
            None => Some(default("cacrl.pem", "CA/cacrl.pem")).filter(|p| p.exists()),
        };
        Files {
            key: cfg
                .key_file
                .clone()
                .unwrap_or_else(|| default("serverkey.pem", "libvirt/private/serverkey.pem")),
            cert: cfg
                .cert_file
                .clone()
                .unwrap_or_else(|| default("servercert.pem", "libvirt/servercert.pem")),
            ca: cfg
                .ca_file
                .clone()
                .unwrap_or_else(|| default("cacert.pem", "CA/cacert.pem")),
            crl,
        }
    }
}

/// The TLS side of the TLS listener, shared by its connections.
pub struct Tls {
    acceptor: TlsAcceptor,
    /// Chain, dates and CRLs, checked after the handshake.
    verifier: Arc<dyn ClientCertVerifier>,
    verify: bool,
    allowed_dns: Option<Vec<String>>,
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

fn certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {}: invalid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no PEM certificate in the file",
            path.display()
        ));
    }
    Ok(certs)
}

impl Tls {
    /// Loads the credentials and builds the rustls server; every error names its file.
    pub fn load(cfg: &Config, files: &Files) -> Result<Tls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = certs("TLS server certificate", &files.cert)?;
        let key_pem = read("TLS server key", &files.key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            format!(
                "TLS server key {}: no usable private key: {e}",
                files.key.display()
            )
        })?;
        let mut roots = RootCertStore::empty();
        for ca in certs("TLS CA certificate", &files.ca)? {
            roots
                .add(ca)
                .map_err(|e| format!("TLS CA certificate {}: {e}", files.ca.display()))?;
        }
        let mut crls = Vec::new();
        if let Some(path) = &files.crl {
            let pem = read("TLS CRL", path)?;
            crls = CertificateRevocationListDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("TLS CRL {}: invalid PEM: {e}", path.display()))?;
            if crls.is_empty() {
                return Err(format!(
                    "TLS CRL {}: no PEM CRL in the file",
                    path.display()
                ));
            }
        }
        let builder =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .with_crls(crls)
                // A CRL lists what its issuer revoked; a certificate whose issuer published none
                // is not revoked (GnuTLS, hence libvirtd, reads CRLs the same way).
                .allow_unknown_revocation_status();
        let verify = !cfg.tls_no_verify_certificate;
        let verifier = builder.build().map_err(|e| match &files.crl {
            Some(crl) => format!("TLS CA {} / CRL {}: {e}", files.ca.display(), crl.display()),
            None => format!("TLS CA certificate {}: {e}", files.ca.display()),
        })?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS: {e}"))?
            .with_client_cert_verifier(Arc::new(Deferred(verifier.clone())))
            .with_single_cert(chain, key)
            .map_err(|e| {
                format!(
                    "TLS server certificate {} / key {}: {e}",
                    files.cert.display(),
                    files.key.display()
                )
            })?;
        // No tickets, no resumption: stock clients fail on a ticket before the confirmation
        // byte, and every connection is to prove its certificate afresh (CRLs included).
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(NoServerSessionStorage {});
        if !verify && cfg.tls_allowed_dn_list.is_some() {
            warn!("tls_allowed_dn_list has no effect with tls_no_verify_certificate = 1");
        }
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            verifier,
            verify,
            allowed_dns: cfg.tls_allowed_dn_list.clone(),
        })
    }

    /// Runs the handshake, checks the client's DN and sends the confirmation byte, all
    /// within [`HANDSHAKE_TIMEOUT`]. Returns the stream and the client's DN (when it sent a
    /// certificate); on any failure the connection is to be closed, the byte unsent.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> Result<(TlsStream<TcpStream>, Option<String>), String> {
        let run = async {
            let mut s = self
                .acceptor
                .accept(tcp)
                .await
                .map_err(|e| format!("TLS handshake failed: {e}"))?;
            let chain = s.get_ref().1.peer_certificates().unwrap_or(&[]);
            let verdict = match chain.split_first() {
                None => Err("no client certificate".to_string()),
                Some((leaf, intermediates)) => self
                    .verifier
                    .verify_client_cert(leaf, intermediates, UnixTime::now())
                    .map(|_| ())
                    .map_err(|e| format!("client certificate refused: {e}")),
            };
            let dn = chain.first().map(|c| subject_dn(c));
            if !self.verify {
                if let Err(e) = verdict {
                    warn!("accepted with tls_no_verify_certificate = 1: {e}");
                }
            } else {
                verdict?;
                if let Some(globs) = &self.allowed_dns {
                    match &dn {
                        Some(Ok(dn)) if globs.iter().any(|g| glob_match(g, dn)) => {}
                        Some(Ok(dn)) => {
                            return Err(format!(
                                "client DN '{dn}' is not on the list of allowed clients \
                                 (tls_allowed_dn_list)"
                            ))
                        }
                        Some(Err(e)) => return Err(format!("cannot read the client DN: {e}")),
                        None => return Err("no client certificate".into()),
                    }
                }
            }
            s.write_all(&[1]).await.map_err(|e| e.to_string())?;
            s.flush().await.map_err(|e| e.to_string())?;
            Ok((s, dn.and_then(Result::ok)))
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, run)
            .await
            .map_err(|_| {
                format!(
                    "TLS handshake not completed within {} s",
                    HANDSHAKE_TIMEOUT.as_secs()
                )
            })?
    }
}

/// The handshake's view of the client certificate: asked for, optional, its possession
/// proved by the handshake signature; everything else is [`Tls::accept`]'s to check.
#[derive(Debug)]
struct Deferred(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for Deferred {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

// ---- Distinguished Names ------------------------------------------------------------

/// libvirt's glob (GLib's `g_pattern_match_simple`): `*` matches any run of characters,
/// `?` one character, everything else itself; the whole DN must match.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matching with backtracking to the last `*`: linear memory, no recursion.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// A minimal DER reader: enough to walk to a certificate's subject.
struct Der<'a> {
    s: &'a [u8],
}

impl<'a> Der<'a> {
    /// Reads one TLV; returns (tag, contents, whole encoding).
    fn next(&mut self) -> Result<(u8, &'a [u8]), String> {
        let s = self.s;
        let tag = *s.first().ok_or("truncated DER")?;
        let first = *s.get(1).ok_or("truncated DER")?;
        let (len, hdr) = if first < 0x80 {
            (usize::from(first), 2)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return Err("unsupported DER length".into());
            }
            let bytes = s.get(2..2 + n).ok_or("truncated DER")?;
            (
                bytes.iter().fold(0usize, |a, b| (a << 8) | usize::from(*b)),
                2 + n,
            )
        };
        let end = hdr.checked_add(len).ok_or("bad DER length")?;
        let body = s.get(hdr..end).ok_or("truncated DER")?;
        self.s = &s[end..];
        Ok((tag, body))
    }

    fn expect(&mut self, tag: u8) -> Result<&'a [u8], String> {
        match self.next()? {
            (t, body) if t == tag => Ok(body),
            (t, _) => Err(format!("unexpected DER tag {t:#04x}, expected {tag:#04x}")),
        }
    }
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;

/// The certificate's subject in libvirt's DN format (GnuTLS `gnutls_x509_crt_get_dn`): the
/// RDNs in certificate order, `,`-separated, e.g. `C=GB,ST=London,O=example,CN=client1`.
pub fn subject_dn(cert: &[u8]) -> Result<String, String> {
    let certificate = Der { s: cert }.expect(SEQUENCE)?;
    let mut tbs = Der {
        s: Der { s: certificate }.expect(SEQUENCE)?,
    };
    let (mut tag, _) = tbs.next()?;
    if tag == 0xa0 {
        tag = tbs.next()?.0; // [0] version, then the serial number
    }
    if tag != 0x02 {
        return Err("certificate without a serial number".into());
    }
    tbs.expect(SEQUENCE)?; // signature algorithm
    tbs.expect(SEQUENCE)?; // issuer
    tbs.expect(SEQUENCE)?; // validity
    let subject = tbs.expect(SEQUENCE)?;
    name_to_string(subject)
}

fn name_to_string(name: &[u8]) -> Result<String, String> {
    let mut rdns = Der { s: name };
    let mut out = String::new();
    while !rdns.s.is_empty() {
        let mut atvs = Der {
            s: rdns.expect(SET)?,
        };
        if !out.is_empty() {
            out.push(',');
        }
        let mut first = true;
        while !atvs.s.is_empty() {
            let mut atv = Der {
                s: atvs.expect(SEQUENCE)?,
            };
            let oid = atv.expect(OID)?;
            let value_start = atv.s;
            let (vtag, value) = atv.next()?;
            if !first {
                out.push('+');
            }
            first = false;
            match oid_name(oid) {
                Some(n) => out.push_str(n),
                None => out.push_str(&oid_dotted(oid)?),
            }
            out.push('=');
            match string_value(vtag, value) {
                Some(s) if oid_name(oid).is_some() => escape_value(&s, &mut out),
                _ => {
                    // Unknown attribute or type: `#` and the hex of the whole DER value.
                    let der = &value_start[..value_start.len() - atv.s.len()];
                    out.push('#');
                    for b in der {
                        out.push_str(&format!("{b:02x}"));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Short names GnuTLS prints for the usual DN attributes.
fn oid_name(oid: &[u8]) -> Option<&'static str> {
    Some(match oid {
        [0x55, 0x04, 0x03] => "CN",
        [0x55, 0x04, 0x04] => "SN",
        [0x55, 0x04, 0x05] => "serialNumber",
        [0x55, 0x04, 0x06] => "C",
        [0x55, 0x04, 0x07] => "L",
        [0x55, 0x04, 0x08] => "ST",
        [0x55, 0x04, 0x09] => "street",
        [0x55, 0x04, 0x0a] => "O",
        [0x55, 0x04, 0x0b] => "OU",
        [0x55, 0x04, 0x0c] => "title",
        [0x55, 0x04, 0x11] => "postalCode",
        [0x55, 0x04, 0x29] => "name",
        [0x55, 0x04, 0x2a] => "GN",
        [0x55, 0x04, 0x2b] => "initials",
        [0x55, 0x04, 0x2c] => "generationQualifier",
        [0x55, 0x04, 0x2e] => "dnQualifier",
        [0x55, 0x04, 0x41] => "pseudonym",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID",
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => "EMAIL",
        _ => return None,
    })
}

fn oid_dotted(oid: &[u8]) -> Result<String, String> {
    let mut arcs = Vec::new();
    let mut v: u64 = 0;
    for (i, b) in oid.iter().enumerate() {
        if v > u64::MAX >> 7 {
            return Err("OID arc too large".into());
        }
        v = (v << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (v / 40).min(2);
                arcs.push(first);
                arcs.push(v - first * 40);
            } else {
                arcs.push(v);
            }
            v = 0;
        } else if i + 1 == oid.len() {
            return Err("truncated OID".into());
        }
    }
    Ok(arcs
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join("."))
}

/// The text of a DirectoryString-like value, if it is one.
fn string_value(tag: u8, v: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, TeletexString (treated as Latin-1 if not UTF-8),
        // IA5String
        0x0c | 0x13 | 0x16 => String::from_utf8(v.to_vec()).ok(),
        0x14 => Some(
            String::from_utf8(v.to_vec())
                .unwrap_or_else(|_| v.iter().map(|b| char::from(*b)).collect()),
        ),
        // BMPString (UCS-2)
        0x1e if v.len().is_multiple_of(2) => {
            char::decode_utf16(v.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])))
                .collect::<Result<String, _>>()
                .ok()
        }
        // UniversalString (UCS-4)
        0x1c if v.len().is_multiple_of(4) => v
            .chunks(4)
            .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        _ => None,
    }
}

/// RFC 4514 escaping, as GnuTLS does it.
fn escape_value(s: &str, out: &mut String) {
    let n = s.chars().count();
    for (i, c) in s.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i + 1 == n && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_files() {
        let root = tempfile::tempdir().unwrap();
        let mut paths = Paths::system(root.path());
        let cfg = Config::default();
        let f = Files::resolve(&cfg, &paths);
        let pki = root.path().join("etc/pki");
        assert_eq!(f.key, pki.join("libvirt/private/serverkey.pem"));
        assert_eq!(f.cert, pki.join("libvirt/servercert.pem"));
        assert_eq!(f.ca, pki.join("CA/cacert.pem"));
        assert_eq!(f.crl, None, "a missing default CRL is skipped");
        std::fs::create_dir_all(pki.join("CA")).unwrap();
        std::fs::write(pki.join("CA/cacrl.pem"), "").unwrap();
        assert_eq!(
            Files::resolve(&cfg, &paths).crl,
            Some(pki.join("CA/cacrl.pem"))
        );
        // Configured files win; a configured CRL is kept even if missing (load fails then).
        let mut set = cfg.clone();
        set.ca_file = Some("/x/ca.pem".into());
        set.crl_file = Some("/x/missing.pem".into());
        let f = Files::resolve(&set, &paths);
        assert_eq!(f.ca, Path::new("/x/ca.pem"));
        assert_eq!(f.crl.as_deref(), Some(Path::new("/x/missing.pem")));
        let e = Tls::load(&set, &f).err().unwrap();
        assert!(
            e.contains("serverkey.pem") || e.contains("servercert.pem"),
            "{e}"
        );
        // Session: ~/.pki/libvirt/<name> first, when it exists.
        let user = root.path().join("home/.pki/libvirt");
        std::fs::create_dir_all(&user).unwrap();
        std::fs::write(user.join("cacert.pem"), "").unwrap();
        paths.user_pki_dir = Some(user.clone());
        let f = Files::resolve(&cfg, &paths);
        assert_eq!(f.ca, user.join("cacert.pem"));
        assert_eq!(f.cert, pki.join("libvirt/servercert.pem"));
    }

    #[test]
    fn globs_as_glib() {
        assert!(glob_match("C=GB,*", "C=GB,O=x,CN=y"));
        assert!(glob_match("*CN=client1", "C=GB,CN=client1"));
        assert!(glob_match("*", ""));
        assert!(glob_match("C=G?,*CN=*", "C=GB,O=a,CN=b"));
        assert!(!glob_match("C=GB", "C=GB,CN=x"));
        assert!(!glob_match("*CN=client1", "C=GB,CN=client12"));
        assert!(!glob_match("", "x"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("a*b*c", "aXbYbZ"));
    }

    #[test]
    fn escaping_and_oids() {
        let mut s = String::new();
        escape_value(" a,b+c\\ ", &mut s);
        assert_eq!(s, "\\ a\\,b\\+c\\\\\\ ");
        assert_eq!(oid_dotted(&[0x55, 0x04, 0x03]).unwrap(), "2.5.4.3");
        assert_eq!(
            oid_dotted(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d]).unwrap(),
            "1.2.840.113549"
        );
        assert!(oid_dotted(&[0x2a, 0x86]).is_err());
    }

    #[test]
    fn hostile_der_is_an_error_not_a_panic() {
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x85, 1, 1, 1, 1, 1],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x30, 0x02, 0x30, 0x00],
            &[0x30, 0x04, 0x30, 0x02, 0x02, 0x00],
        ] {
            assert!(subject_dn(bad).is_err(), "{bad:?}");
        }
    }
}
