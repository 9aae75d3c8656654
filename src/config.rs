//! The daemon's configuration file, in libvirtd.conf syntax: `key = value` lines, quoted
//! strings, integers, `[ "a", "b" ]` lists (which may span lines) and `#` comments. Keys are
//! named and defaulted as libvirtd's. A malformed file or a bad value is an error naming the
//! file, line and reason; an unknown key is a warning.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    Str(String),
    List(Vec<String>),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(_) => f.write_str("an integer"),
            Value::Str(_) => f.write_str("a string"),
            Value::List(_) => f.write_str("a list"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {reason}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub reason: String,
}

/// How clients on a listener authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    None,
    /// Cyrus SASL (`crate::rpc::sasl`); mechanisms come from `etc/sasl2/virtumld.conf`.
    Sasl,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen_tcp: bool,
    pub listen_tls: bool,
    pub tcp_port: u16,
    pub tls_port: u16,
    pub listen_addr: String,
    pub unix_sock_dir: Option<PathBuf>,
    pub unix_sock_group: Option<String>,
    pub unix_sock_ro_perms: u32,
    pub unix_sock_rw_perms: u32,
    pub auth_unix_ro: AuthMethod,
    pub auth_unix_rw: AuthMethod,
    pub auth_tcp: AuthMethod,
    pub auth_tls: AuthMethod,
    /// Minimum SASL SSF on plain TCP (libvirtd's key and default, 56).
    pub tcp_min_ssf: u32,
    /// Globs on the SASL user name; `None` allows every authenticated user.
    pub sasl_allowed_username_list: Option<Vec<String>>,
    /// TLS: server key, certificate, CA and CRL files; `None` means libvirtd's default
    /// location under the daemon's root (see `crate::tls`).
    pub key_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub crl_file: Option<PathBuf>,
    /// Accept clients without a (valid) certificate.
    pub tls_no_verify_certificate: bool,
    /// Globs on the client certificate's Distinguished Name; `None` allows every DN.
    pub tls_allowed_dn_list: Option<Vec<String>>,
    /// GnuTLS priority string: accepted for compatibility, not used (rustls has none).
    pub tls_priority: Option<String>,
    pub max_clients: usize,
    pub max_anonymous_clients: usize,
    pub max_client_requests: usize,
    /// Seconds a client may stay connected without authenticating (not a libvirtd key:
    /// libvirtd has no such limit).
    pub pre_auth_timeout: u64,
    pub keepalive_interval: i64,
    pub keepalive_count: u32,
    pub log_level: Option<i64>,
    pub log_filters: Option<String>,
    pub log_outputs: Option<String>,
    /// Path of the `linux.uml` kernel whose version the daemon reports (not a libvirtd key).
    pub uml_kernel: PathBuf,
    /// System mode: also listen on `libvirt-sock`/`libvirt-sock-ro` in the socket directory
    /// (the paths ssh clients' `nc -U` fallback uses) unless a live daemon holds them (not a
    /// libvirtd key).
    pub listen_legacy_sockets: bool,
    /// Threads of the runtime that serves every connection (not a libvirtd key; libvirtd's
    /// `max_workers` sizes a different, per-call thread pool). `None`: see `workers()`.
    pub worker_threads: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen_tcp: false,
            listen_tls: true,
            tcp_port: 16509,
            tls_port: 16514,
            listen_addr: "0.0.0.0".into(),
            unix_sock_dir: None,
            unix_sock_group: None,
            unix_sock_ro_perms: 0o777,
            unix_sock_rw_perms: 0o700,
            auth_unix_ro: AuthMethod::None,
            auth_unix_rw: AuthMethod::None,
            // libvirtd's defaults: SASL on plain TCP, none on TLS.
            auth_tcp: AuthMethod::Sasl,
            auth_tls: AuthMethod::None,
            tcp_min_ssf: 56,
            sasl_allowed_username_list: None,
            key_file: None,
            cert_file: None,
            ca_file: None,
            crl_file: None,
            tls_no_verify_certificate: false,
            tls_allowed_dn_list: None,
            tls_priority: None,
            max_clients: 5000,
            max_anonymous_clients: 20,
            max_client_requests: 5,
            pre_auth_timeout: 30,
            keepalive_interval: 5,
            keepalive_count: 5,
            log_level: None,
            log_filters: None,
            log_outputs: None,
            uml_kernel: PathBuf::from("/usr/bin/linux.uml"),
            listen_legacy_sockets: true,
            worker_threads: None,
        }
    }
}

impl Config {
    /// The runtime's worker threads: `worker_threads`, or one fewer than the CPUs (at least
    /// one). Serving calls takes microseconds; the cores belong to the guests and to local
    /// clients, and a worker per core makes the daemon compete with them. On the 2-core
    /// benchmark machine one worker used half the CPU per call of two at 2000 calls/s and
    /// served open+close cycles as fast or faster (BENCHMARKS.md, "Runtime workers").
    pub fn workers(&self) -> usize {
        self.worker_threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
        })
    }

    /// Reads `path`; a missing file means the defaults when `must_exist` is false.
    pub fn load(path: &Path, must_exist: bool) -> Result<(Config, Vec<String>), ConfigError> {
        let file = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&file, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
                Ok((Config::default(), Vec::new()))
            }
            Err(e) => Err(ConfigError {
                file,
                line: 0,
                reason: format!("cannot read: {e}"),
            }),
        }
    }

    /// Parses the text of a config file; returns the config and the warnings.
    pub fn parse(file: &str, text: &str) -> Result<(Config, Vec<String>), ConfigError> {
        let mut cfg = Config::default();
        let mut warnings = Vec::new();
        for (line, key, value) in parse_entries(file, text)? {
            let err = |reason: String| ConfigError {
                file: file.to_string(),
                line,
                reason,
            };
            cfg.apply(&key, value, &mut warnings)
                .map_err(|reason| err(format!("{key}: {reason}")))?;
        }
        Ok((cfg, warnings))
    }

    fn apply(&mut self, key: &str, v: Value, warnings: &mut Vec<String>) -> Result<(), String> {
        match key {
            "listen_tcp" => self.listen_tcp = flag(&v)?,
            "listen_tls" => self.listen_tls = flag(&v)?,
            "tcp_port" => self.tcp_port = port(&v)?,
            "tls_port" => self.tls_port = port(&v)?,
            "listen_addr" => self.listen_addr = string(&v)?,
            "unix_sock_dir" => self.unix_sock_dir = Some(PathBuf::from(string(&v)?)),
            "unix_sock_group" => self.unix_sock_group = Some(string(&v)?),
            "unix_sock_ro_perms" => self.unix_sock_ro_perms = perms(&v)?,
            "unix_sock_rw_perms" => self.unix_sock_rw_perms = perms(&v)?,
            "auth_unix_ro" => self.auth_unix_ro = auth(&v)?,
            "auth_unix_rw" => self.auth_unix_rw = auth(&v)?,
            "auth_tcp" => self.auth_tcp = auth(&v)?,
            "auth_tls" => self.auth_tls = auth(&v)?,
            "tcp_min_ssf" => {
                let i = int(&v)?;
                // libvirtd refuses values below 56 (what Kerberos gives, and its own
                // hard-coded floor on plain TCP).
                if !(56..=100_000).contains(&i) {
                    return Err("must be between 56 and 100000".into());
                }
                self.tcp_min_ssf = i as u32;
            }
            "sasl_allowed_username_list" => self.sasl_allowed_username_list = Some(list(&v)?),
            "key_file" => self.key_file = Some(path(&v)?),
            "cert_file" => self.cert_file = Some(path(&v)?),
            "ca_file" => self.ca_file = Some(path(&v)?),
            "crl_file" => self.crl_file = Some(path(&v)?),
            "tls_no_verify_certificate" => self.tls_no_verify_certificate = flag(&v)?,
            "tls_allowed_dn_list" => self.tls_allowed_dn_list = Some(list(&v)?),
            "tls_priority" => {
                self.tls_priority = Some(string(&v)?);
                warnings.push(
                    "tls_priority is ignored: rustls has no GnuTLS priority strings \
                     (TLS 1.2 and 1.3 with rustls' default cipher suites are offered)"
                        .into(),
                );
            }
            "max_clients" => self.max_clients = count(&v, 1)?,
            "max_anonymous_clients" => self.max_anonymous_clients = count(&v, 0)?,
            "max_client_requests" => self.max_client_requests = count(&v, 1)?,
            "pre_auth_timeout" => self.pre_auth_timeout = count(&v, 1)? as u64,
            "keepalive_interval" => {
                let i = int(&v)?;
                if i == 0 || i < -1 {
                    return Err("must be -1 (disabled) or a positive number of seconds".into());
                }
                self.keepalive_interval = i;
            }
            "keepalive_count" => {
                self.keepalive_count = u32::try_from(int(&v)?).map_err(|_| "out of range")?
            }
            "log_level" => {
                let l = int(&v)?;
                if !(1..=4).contains(&l) {
                    return Err("must be 1 (debug) to 4 (error)".into());
                }
                self.log_level = Some(l);
            }
            "log_filters" => self.log_filters = Some(string(&v)?),
            "log_outputs" => self.log_outputs = Some(string(&v)?),
            "uml_kernel" => self.uml_kernel = PathBuf::from(string(&v)?),
            "listen_legacy_sockets" => self.listen_legacy_sockets = flag(&v)?,
            "worker_threads" => {
                let n = count(&v, 1)?;
                if n > 1024 {
                    return Err("must be at most 1024".into());
                }
                self.worker_threads = Some(n);
            }
            // libvirtd keys this daemon accepts but has no use for yet.
            "max_workers"
            | "min_workers"
            | "prio_workers"
            | "max_queued_clients"
            | "admin_max_workers"
            | "admin_min_workers"
            | "admin_max_clients"
            | "admin_max_queued_clients"
            | "admin_max_client_requests"
            | "audit_level"
            | "audit_logging"
            | "host_uuid"
            | "host_uuid_source"
            | "ovs_timeout"
            | "tls_no_sanity_certificate" => {}
            _ => warnings.push(format!("unknown configuration key '{key}' ignored")),
        }
        Ok(())
    }
}

fn int(v: &Value) -> Result<i64, String> {
    match v {
        Value::Int(i) => Ok(*i),
        other => Err(format!("expected an integer, got {other}")),
    }
}

fn string(v: &Value) -> Result<String, String> {
    match v {
        Value::Str(s) => Ok(s.clone()),
        other => Err(format!("expected a string, got {other}")),
    }
}

fn path(v: &Value) -> Result<PathBuf, String> {
    let s = string(v)?;
    if s.is_empty() {
        return Err("expected a file name, got an empty string".into());
    }
    Ok(PathBuf::from(s))
}

fn list(v: &Value) -> Result<Vec<String>, String> {
    match v {
        Value::List(items) => Ok(items.clone()),
        other => Err(format!("expected a list, got {other}")),
    }
}

fn flag(v: &Value) -> Result<bool, String> {
    match int(v)? {
        0 => Ok(false),
        1 => Ok(true),
        i => Err(format!("expected 0 or 1, got {i}")),
    }
}

fn port(v: &Value) -> Result<u16, String> {
    // libvirtd takes ports as strings; accept integers too.
    let text = match v {
        Value::Int(i) => i.to_string(),
        Value::Str(s) => s.clone(),
        other => return Err(format!("expected a port, got {other}")),
    };
    match text.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("invalid port '{text}'")),
    }
}

fn perms(v: &Value) -> Result<u32, String> {
    let s = string(v)?;
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|p| *p <= 0o7777)
        .ok_or_else(|| format!("invalid octal permissions '{s}'"))
}

fn count(v: &Value, min: i64) -> Result<usize, String> {
    let i = int(v)?;
    if i < min {
        return Err(format!("must be at least {min}"));
    }
    usize::try_from(i).map_err(|_| "out of range".to_string())
}

fn auth(v: &Value) -> Result<AuthMethod, String> {
    match string(v)?.as_str() {
        "none" => Ok(AuthMethod::None),
        "sasl" => Ok(AuthMethod::Sasl),
        m @ "polkit" => Err(format!(
            "authentication method '{m}' is not supported yet by virtumld; use \"none\" or \"sasl\""
        )),
        m => Err(format!("unknown authentication method '{m}'")),
    }
}

/// Splits the text into `(line, key, value)` entries.
fn parse_entries(file: &str, text: &str) -> Result<Vec<(usize, String, Value)>, ConfigError> {
    let mut p = Parser {
        s: text.as_bytes(),
        pos: 0,
        line: 1,
        file,
    };
    let mut out = Vec::new();
    loop {
        p.skip_blank_and_comments();
        if p.pos >= p.s.len() {
            return Ok(out);
        }
        let line = p.line;
        let key = p.ident()?;
        p.skip_spaces();
        p.expect(b'=')?;
        p.skip_spaces();
        let value = p.value()?;
        p.skip_spaces();
        p.end_of_entry()?;
        out.push((line, key, value));
    }
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    line: usize,
    file: &'a str,
}

impl Parser<'_> {
    fn err(&self, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            line: self.line,
            reason: reason.into(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.pos += 1;
        if c == b'\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn skip_spaces(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r')) {
            self.bump();
        }
    }

    fn skip_comment(&mut self) {
        if self.peek() == Some(b'#') {
            while !matches!(self.peek(), None | Some(b'\n')) {
                self.bump();
            }
        }
    }

    fn skip_blank_and_comments(&mut self) {
        loop {
            self.skip_spaces();
            self.skip_comment();
            if self.peek() == Some(b'\n') {
                self.bump();
            } else {
                return;
            }
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), ConfigError> {
        if self.peek() == Some(c) {
            self.bump();
            Ok(())
        } else {
            Err(self.err(format!("expected '{}'", c as char)))
        }
    }

    fn ident(&mut self) -> Result<String, ConfigError> {
        let start = self.pos;
        while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == b'_' || c == b'.')
        {
            self.bump();
        }
        if start == self.pos {
            return Err(self.err("expected a setting name"));
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.pos]).into_owned())
    }

    fn value(&mut self) -> Result<Value, ConfigError> {
        match self.peek() {
            Some(b'"') => Ok(Value::Str(self.string()?)),
            Some(b'[') => {
                self.bump();
                let mut items = Vec::new();
                loop {
                    self.skip_blank_and_comments();
                    match self.peek() {
                        Some(b']') => {
                            self.bump();
                            return Ok(Value::List(items));
                        }
                        Some(b'"') => items.push(self.string()?),
                        _ => return Err(self.err("expected a quoted string or ']' in list")),
                    }
                    self.skip_blank_and_comments();
                    match self.peek() {
                        Some(b',') => {
                            self.bump();
                        }
                        Some(b']') => {}
                        _ => return Err(self.err("expected ',' or ']' in list")),
                    }
                }
            }
            Some(c) if c == b'-' || c.is_ascii_digit() => {
                let start = self.pos;
                self.bump();
                while matches!(self.peek(), Some(c) if c.is_ascii_digit()) {
                    self.bump();
                }
                let text = String::from_utf8_lossy(&self.s[start..self.pos]).into_owned();
                text.parse()
                    .map(Value::Int)
                    .map_err(|_| self.err(format!("invalid number '{text}'")))
            }
            _ => Err(self.err("expected a value (number, \"string\" or [ list ])")),
        }
    }

    fn string(&mut self) -> Result<String, ConfigError> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            match self.bump() {
                None | Some(b'\n') => return Err(self.err("unterminated string")),
                Some(b'"') => break,
                Some(b'\\') => match self.bump() {
                    Some(c @ (b'"' | b'\\')) => out.push(c),
                    _ => return Err(self.err("invalid escape in string")),
                },
                Some(c) => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|_| self.err("string is not valid UTF-8"))
    }

    fn end_of_entry(&mut self) -> Result<(), ConfigError> {
        self.skip_comment();
        match self.peek() {
            None => Ok(()),
            Some(b'\n') => {
                self.bump();
                Ok(())
            }
            Some(_) => Err(self.err("unexpected text after the value")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libvirtd_syntax() {
        let text = r#"
# a comment
listen_tcp = 1
tcp_port = "16600"   # trailing comment
listen_addr = "127.0.0.1"
auth_tcp = "none"
max_clients = 10
keepalive_interval = -1
log_filters = "1:rpc"
tls_allowed_dn_list = [ "C=GB,*",
   "O=example" ]
"#;
        let (cfg, warnings) = Config::parse("t.conf", text).unwrap();
        assert!(cfg.listen_tcp);
        assert_eq!(cfg.tcp_port, 16600);
        assert_eq!(cfg.listen_addr, "127.0.0.1");
        assert_eq!(cfg.max_clients, 10);
        assert_eq!(cfg.keepalive_interval, -1);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            cfg.tls_allowed_dn_list,
            Some(vec!["C=GB,*".to_string(), "O=example".to_string()])
        );
    }

    #[test]
    fn tls_keys() {
        let d = Config::default();
        assert!(d.listen_tls && !d.tls_no_verify_certificate);
        assert_eq!(d.tls_port, 16514);
        assert_eq!(
            (d.ca_file, d.crl_file, d.tls_allowed_dn_list),
            (None, None, None)
        );
        let text = r#"
key_file = "/k.pem"
cert_file = "/c.pem"
ca_file = "/ca.pem"
crl_file = "/crl.pem"
tls_no_verify_certificate = 1
tls_priority = "NORMAL"
tls_no_sanity_certificate = 1
"#;
        let (cfg, warnings) = Config::parse("t.conf", text).unwrap();
        assert_eq!(cfg.key_file, Some(PathBuf::from("/k.pem")));
        assert_eq!(cfg.cert_file, Some(PathBuf::from("/c.pem")));
        assert_eq!(cfg.ca_file, Some(PathBuf::from("/ca.pem")));
        assert_eq!(cfg.crl_file, Some(PathBuf::from("/crl.pem")));
        assert!(cfg.tls_no_verify_certificate);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("tls_priority"));
        for bad in [
            "ca_file = \"\"",
            "ca_file = 1",
            "tls_allowed_dn_list = \"CN=x\"",
            "tls_no_verify_certificate = 2",
        ] {
            assert!(Config::parse("b", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sasl_keys() {
        let d = Config::default();
        assert_eq!(
            (d.auth_tcp, d.auth_tls),
            (AuthMethod::Sasl, AuthMethod::None)
        );
        assert_eq!((d.tcp_min_ssf, d.sasl_allowed_username_list), (56, None));
        let text = "auth_tls = \"sasl\"\nauth_unix_rw = \"sasl\"\ntcp_min_ssf = 112\n\
                    sasl_allowed_username_list = [ \"alice\", \"*@EXAMPLE.COM\" ]\n";
        let (cfg, warnings) = Config::parse("t.conf", text).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            (cfg.auth_tls, cfg.auth_unix_rw),
            (AuthMethod::Sasl, AuthMethod::Sasl)
        );
        assert_eq!(cfg.tcp_min_ssf, 112);
        assert_eq!(cfg.sasl_allowed_username_list.unwrap().len(), 2);
        for bad in [
            "tcp_min_ssf = 40",
            "auth_tcp = \"kerberos\"",
            "sasl_allowed_username_list = \"x\"",
        ] {
            assert!(Config::parse("b", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_name_file_line_and_reason() {
        let e = Config::parse("x.conf", "listen_tcp = 1\nlisten_tcp = 2\n").unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("x.conf", 2));
        assert!(e.to_string().contains("expected 0 or 1"), "{e}");
        let e = Config::parse("x.conf", "\n\nauth_tcp = \"polkit\"\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.reason.contains("not supported yet"));
        for bad in [
            "tcp_port = \"0\"",
            "listen_tcp = \"yes\"",
            "x = \"unterminated",
            "= 1",
            "a = 1 2",
            "l = [ \"a\" \"b\" ]",
            "unix_sock_rw_perms = \"999\"",
            "keepalive_interval = 0",
            "worker_threads = 0",
            "worker_threads = 5000",
            "worker_threads = \"2\"",
        ] {
            assert!(Config::parse("b", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn worker_threads() {
        let (cfg, _) = Config::parse("w", "worker_threads = 3").unwrap();
        assert_eq!(cfg.workers(), 3);
        let d = Config::default();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(d.workers(), cpus.saturating_sub(1).max(1));
    }
}
