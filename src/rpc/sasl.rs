//! Server-side SASL through Cyrus `libsasl2`, as libvirtd does it: the library is set up
//! once per process (application name `virtumld`, so it reads `virtumld.conf` from
//! `/etc/sasl2` or `DIR/etc/sasl2` under `--root DIR`), each client gets its own
//! `sasl_conn_t` for service `libvirt` (the name clients put in DIGEST-MD5's digest-uri),
//! and once a mechanism with a security layer (DIGEST-MD5 auth-conf, GSSAPI) has completed,
//! every byte of the connection goes through `sasl_encode` / `sasl_decode`.
//!
//! A thin FFI layer of our own rather than the `sasl2-sys` crate: the dozen functions used
//! here need no build script and no new entries in the shared lock file; `#[link]` finds
//! Debian's `libsasl2.so` (package `libsasl2-dev`).

use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int, c_uint, c_void};
use std::path::Path;
use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::BytesMut;

use virtumld_protocol::header::{MessageType, REMOTE_PROGRAM};

use crate::config::AuthMethod;

/// The bindings: names and types as in `<sasl/sasl.h>` of cyrus-sasl 2.1.28.
#[allow(non_camel_case_types)]
mod ffi {
    use std::os::raw::{c_char, c_int, c_uint, c_void};

    #[repr(C)]
    pub struct sasl_conn_t {
        _opaque: [u8; 0],
    }

    #[repr(C)]
    pub struct sasl_security_properties_t {
        pub min_ssf: c_uint,
        pub max_ssf: c_uint,
        pub maxbufsize: c_uint,
        pub security_flags: c_uint,
        pub property_names: *const *const c_char,
        pub property_values: *const *const c_char,
    }

    pub const SASL_OK: c_int = 0;
    pub const SASL_CONTINUE: c_int = 1;
    pub const SASL_SUCCESS_DATA: c_uint = 0x0004;
    pub const SASL_SEC_NOPLAINTEXT: c_uint = 0x0001;
    pub const SASL_SEC_NOANONYMOUS: c_uint = 0x0010;
    pub const SASL_USERNAME: c_int = 0;
    pub const SASL_SSF: c_int = 1;
    pub const SASL_MAXOUTBUF: c_int = 2;
    pub const SASL_SSF_EXTERNAL: c_int = 100;
    pub const SASL_SEC_PROPS: c_int = 101;
    pub const SASL_PATH_TYPE_CONFIG: c_int = 1;

    #[link(name = "sasl2")]
    extern "C" {
        pub fn sasl_set_path(path_type: c_int, path: *mut c_char) -> c_int;
        pub fn sasl_server_init(callbacks: *const c_void, appname: *const c_char) -> c_int;
        pub fn sasl_server_new(
            service: *const c_char,
            server_fqdn: *const c_char,
            user_realm: *const c_char,
            iplocalport: *const c_char,
            ipremoteport: *const c_char,
            callbacks: *const c_void,
            flags: c_uint,
            pconn: *mut *mut sasl_conn_t,
        ) -> c_int;
        pub fn sasl_dispose(pconn: *mut *mut sasl_conn_t);
        pub fn sasl_setprop(conn: *mut sasl_conn_t, propnum: c_int, value: *const c_void) -> c_int;
        pub fn sasl_getprop(
            conn: *mut sasl_conn_t,
            propnum: c_int,
            pvalue: *mut *const c_void,
        ) -> c_int;
        pub fn sasl_listmech(
            conn: *mut sasl_conn_t,
            user: *const c_char,
            prefix: *const c_char,
            sep: *const c_char,
            suffix: *const c_char,
            result: *mut *const c_char,
            plen: *mut c_uint,
            pcount: *mut c_int,
        ) -> c_int;
        pub fn sasl_server_start(
            conn: *mut sasl_conn_t,
            mech: *const c_char,
            clientin: *const c_char,
            clientinlen: c_uint,
            serverout: *mut *const c_char,
            serveroutlen: *mut c_uint,
        ) -> c_int;
        pub fn sasl_server_step(
            conn: *mut sasl_conn_t,
            clientin: *const c_char,
            clientinlen: c_uint,
            serverout: *mut *const c_char,
            serveroutlen: *mut c_uint,
        ) -> c_int;
        pub fn sasl_encode(
            conn: *mut sasl_conn_t,
            input: *const c_char,
            inputlen: c_uint,
            output: *mut *const c_char,
            outputlen: *mut c_uint,
        ) -> c_int;
        pub fn sasl_decode(
            conn: *mut sasl_conn_t,
            input: *const c_char,
            inputlen: c_uint,
            output: *mut *const c_char,
            outputlen: *mut c_uint,
        ) -> c_int;
        pub fn sasl_errdetail(conn: *mut sasl_conn_t) -> *const c_char;
        pub fn sasl_errstring(
            saslerr: c_int,
            langlist: *const c_char,
            outlang: *mut *const c_char,
        ) -> *const c_char;
    }
}

/// Application name: cyrus reads `virtumld.conf` (`mech_list`, `sasldb_path`, …).
pub const APP_NAME: &str = "virtumld";
/// Service name, as libvirtd registers it; DIGEST-MD5 clients send `libvirt/HOST`.
pub const SERVICE: &str = "libvirt";
/// Largest buffer we let the peer's security layer send us (`maxbufsize`).
pub const MAX_BUF: u32 = 65_536;
/// Failed SASL attempts a connection may make before the daemon closes it.
pub const MAX_FAILURES: u32 = 3;

static INIT: OnceLock<Result<(), String>> = OnceLock::new();

/// Sets the configuration directory and initialises the library, once per process; later
/// calls return the first outcome.
pub fn init(config_dir: &Path) -> Result<(), String> {
    INIT.get_or_init(|| {
        let dir = CString::new(config_dir.as_os_str().as_encoded_bytes())
            .map_err(|_| "SASL configuration directory contains NUL".to_string())?;
        // cyrus may keep the pointer: the string lives for the whole process.
        let dir = dir.into_raw();
        // SAFETY: `dir` is a valid NUL-terminated string that is never freed; this runs
        // once, before `sasl_server_init`, as cyrus requires.
        let rc = unsafe { ffi::sasl_set_path(ffi::SASL_PATH_TYPE_CONFIG, dir) };
        if rc != ffi::SASL_OK {
            return Err(format!("sasl_set_path: {}", errstring(rc)));
        }
        let app = CString::new(APP_NAME).expect("no NUL");
        // SAFETY: no callbacks (NULL); `app` is a valid C string for the duration of the
        // call (cyrus copies the application name). Runs once per process (OnceLock).
        let rc = unsafe { ffi::sasl_server_init(ptr::null(), app.as_ptr()) };
        if rc != ffi::SASL_OK {
            return Err(format!("sasl_server_init: {}", errstring(rc)));
        }
        Ok(())
    })
    .clone()
}

/// The SASL configuration directory for a daemon whose PKI tree is `pki_dir`: `/etc/sasl2`,
/// or `DIR/etc/sasl2` under `--root DIR` (its sibling, as in the system layout).
pub fn config_dir(pki_dir: &Path) -> std::path::PathBuf {
    pki_dir.with_file_name("sasl2")
}

fn errstring(rc: c_int) -> String {
    // SAFETY: sasl_errstring returns a pointer to a static string (never NULL in 2.1.28,
    // checked anyway); the language arguments may be NULL.
    let p = unsafe { ffi::sasl_errstring(rc, ptr::null(), ptr::null_mut()) };
    if p.is_null() {
        return format!("SASL error {rc}");
    }
    // SAFETY: non-NULL, NUL-terminated, static.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// One `sasl_conn_t`, disposed of on drop.
struct Conn(*mut ffi::sasl_conn_t);

// SAFETY: a sasl_conn_t is not tied to the thread that made it; every use goes through the
// `Mutex` in `Session`, so it is never used from two threads at once.
unsafe impl Send for Conn {}

impl Drop for Conn {
    fn drop(&mut self) {
        // SAFETY: the pointer came from sasl_server_new and is disposed of only here.
        unsafe { ffi::sasl_dispose(&mut self.0) };
    }
}

impl Conn {
    fn detail(&self, rc: c_int) -> String {
        // SAFETY: self.0 is a live connection; sasl_errdetail returns a string owned by it
        // (valid until the next call on it, and we copy it at once).
        let p = unsafe { ffi::sasl_errdetail(self.0) };
        if p.is_null() {
            return errstring(rc);
        }
        // SAFETY: non-NULL and NUL-terminated, see above.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    fn getprop_uint(&self, prop: c_int) -> Result<u32, String> {
        let mut v: *const c_void = ptr::null();
        // SAFETY: live connection; for SASL_SSF and SASL_MAXOUTBUF cyrus stores a pointer
        // to an `unsigned` it owns.
        let rc = unsafe { ffi::sasl_getprop(self.0, prop, &mut v) };
        if rc != ffi::SASL_OK || v.is_null() {
            return Err(self.detail(rc));
        }
        // SAFETY: non-NULL pointer to an `unsigned` inside the live connection.
        Ok(unsafe { *(v as *const c_uint) })
    }
}

/// How a transport constrains the negotiation.
pub struct Props {
    /// `iplocalport` / `ipremoteport` in cyrus' `a.b.c.d;port` form.
    pub local: Option<String>,
    pub remote: Option<String>,
    /// TLS: the cipher's key size in bits, given to SASL as the external SSF.
    pub external_ssf: Option<u32>,
    /// Insecure transports (plain TCP): the minimum SSF and no plaintext/anonymous mechs.
    pub min_ssf: Option<u32>,
}

/// A server-side SASL session: the negotiation, then (when it yields an SSF > 0) the
/// security layer.
pub struct Session {
    conn: Mutex<Conn>,
}

/// What one START or STEP produced. `data` is `None` when cyrus returned no output at all
/// (sent as `nil`), `Some(empty)` for empty output.
pub struct StepOut {
    pub complete: bool,
    pub data: Option<Vec<u8>>,
}

impl Session {
    pub fn new(p: &Props) -> Result<Session, String> {
        let c = |s: &str| CString::new(s).map_err(|_| "address contains NUL".to_string());
        let service = c(SERVICE)?;
        let local = p.local.as_deref().map(c).transpose()?;
        let remote = p.remote.as_deref().map(c).transpose()?;
        let mut raw: *mut ffi::sasl_conn_t = ptr::null_mut();
        // SAFETY: every string is a valid C string (or NULL) outliving the call, which
        // copies them; no callbacks; `raw` receives the new connection.
        let rc = unsafe {
            ffi::sasl_server_new(
                service.as_ptr(),
                ptr::null(),
                ptr::null(),
                local.as_ref().map_or(ptr::null(), |s| s.as_ptr()),
                remote.as_ref().map_or(ptr::null(), |s| s.as_ptr()),
                ptr::null(),
                ffi::SASL_SUCCESS_DATA,
                &mut raw,
            )
        };
        if rc != ffi::SASL_OK || raw.is_null() {
            if !raw.is_null() {
                drop(Conn(raw));
            }
            return Err(format!("sasl_server_new: {}", errstring(rc)));
        }
        let conn = Conn(raw);
        if let Some(ssf) = p.external_ssf {
            let v: c_uint = ssf;
            // SAFETY: live connection; SASL_SSF_EXTERNAL takes a pointer to a sasl_ssf_t
            // (unsigned), which cyrus copies.
            let rc = unsafe {
                ffi::sasl_setprop(
                    conn.0,
                    ffi::SASL_SSF_EXTERNAL,
                    &v as *const c_uint as *const c_void,
                )
            };
            if rc != ffi::SASL_OK {
                return Err(format!("cannot set the external SSF: {}", conn.detail(rc)));
            }
        }
        let (min_ssf, max_ssf, flags) = match p.min_ssf {
            Some(min) => (
                min,
                100_000,
                ffi::SASL_SEC_NOPLAINTEXT | ffi::SASL_SEC_NOANONYMOUS,
            ),
            None => (0, 0, 0),
        };
        let props = ffi::sasl_security_properties_t {
            min_ssf,
            max_ssf,
            maxbufsize: MAX_BUF,
            security_flags: flags,
            property_names: ptr::null(),
            property_values: ptr::null(),
        };
        // SAFETY: live connection; SASL_SEC_PROPS takes a pointer to the struct above,
        // laid out as in sasl.h, which cyrus copies.
        let rc = unsafe {
            ffi::sasl_setprop(
                conn.0,
                ffi::SASL_SEC_PROPS,
                &props as *const ffi::sasl_security_properties_t as *const c_void,
            )
        };
        if rc != ffi::SASL_OK {
            return Err(format!(
                "cannot set the security properties: {}",
                conn.detail(rc)
            ));
        }
        Ok(Session {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Conn> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The mechanisms this session offers, comma-separated (as libvirtd sends them).
    pub fn mechanisms(&self) -> Result<String, String> {
        let conn = self.lock();
        let (empty, sep) = (c"", c",");
        let mut out: *const c_char = ptr::null();
        let mut len: c_uint = 0;
        let mut count: c_int = 0;
        // SAFETY: live connection; prefix/sep/suffix are static C strings; `out` receives
        // a string owned by the connection, copied below while the lock is held.
        let rc = unsafe {
            ffi::sasl_listmech(
                conn.0,
                ptr::null(),
                empty.as_ptr(),
                sep.as_ptr(),
                empty.as_ptr(),
                &mut out,
                &mut len,
                &mut count,
            )
        };
        if rc != ffi::SASL_OK || out.is_null() {
            return Err(format!("sasl_listmech: {}", conn.detail(rc)));
        }
        // SAFETY: cyrus returned a NUL-terminated string owned by the live connection.
        Ok(unsafe { CStr::from_ptr(out) }
            .to_string_lossy()
            .into_owned())
    }

    /// `sasl_server_start` (with `mech`) or `sasl_server_step` (without); `input` `None` is
    /// the client's `nil`, which SASL tells apart from empty data.
    pub fn step(&self, mech: Option<&str>, input: Option<&[u8]>) -> Result<StepOut, String> {
        let conn = self.lock();
        let (inp, inlen) = match input {
            None => (ptr::null(), 0),
            // A non-NULL pointer even for empty data: "" is not NULL to SASL.
            Some(d) => (
                if d.is_empty() {
                    c"".as_ptr()
                } else {
                    d.as_ptr() as *const c_char
                },
                c_uint::try_from(d.len()).map_err(|_| "client data too long")?,
            ),
        };
        let mut out: *const c_char = ptr::null();
        let mut outlen: c_uint = 0;
        let rc = match mech {
            Some(m) => {
                let m = CString::new(m).map_err(|_| "mechanism name contains NUL")?;
                // SAFETY: live connection; `m` and `inp` (inlen bytes, or NULL) are valid
                // for the call; `out` receives a buffer owned by the connection, copied
                // below while the lock is held.
                unsafe {
                    ffi::sasl_server_start(conn.0, m.as_ptr(), inp, inlen, &mut out, &mut outlen)
                }
            }
            // SAFETY: as above, without the mechanism.
            None => unsafe { ffi::sasl_server_step(conn.0, inp, inlen, &mut out, &mut outlen) },
        };
        if rc != ffi::SASL_OK && rc != ffi::SASL_CONTINUE {
            return Err(conn.detail(rc));
        }
        let data = if out.is_null() {
            None
        } else {
            // SAFETY: cyrus returned `outlen` readable bytes at `out`, owned by the live
            // connection and unchanged until the next call on it (we hold the lock).
            Some(unsafe { std::slice::from_raw_parts(out as *const u8, outlen as usize) }.to_vec())
        };
        Ok(StepOut {
            complete: rc == ffi::SASL_OK,
            data,
        })
    }

    /// The negotiated security layer's strength (0: none).
    pub fn ssf(&self) -> Result<u32, String> {
        self.lock().getprop_uint(ffi::SASL_SSF)
    }

    /// The authenticated user name.
    pub fn username(&self) -> Result<String, String> {
        let conn = self.lock();
        let mut v: *const c_void = ptr::null();
        // SAFETY: live connection; for SASL_USERNAME cyrus stores a pointer to a
        // NUL-terminated string it owns.
        let rc = unsafe { ffi::sasl_getprop(conn.0, ffi::SASL_USERNAME, &mut v) };
        if rc != ffi::SASL_OK || v.is_null() {
            return Err(format!("no SASL user name: {}", conn.detail(rc)));
        }
        // SAFETY: non-NULL, NUL-terminated, owned by the live connection; copied at once.
        Ok(unsafe { CStr::from_ptr(v as *const c_char) }
            .to_string_lossy()
            .into_owned())
    }

    /// Turns the completed session into its security layer.
    pub fn into_layer(self) -> Result<SecurityLayer, String> {
        let max_out = self.lock().getprop_uint(ffi::SASL_MAXOUTBUF)?;
        if max_out == 0 {
            return Err("SASL security layer has a zero output buffer".into());
        }
        Ok(SecurityLayer {
            session: self,
            max_out: max_out as usize,
        })
    }
}

/// The SASL security layer of an authenticated connection: `encode` wraps outgoing bytes
/// in chunks no larger than the negotiated `SASL_MAXOUTBUF`; `decode` takes incoming bytes
/// with any chunk boundaries (cyrus buffers an incomplete 4-byte-length-prefixed packet
/// until the rest arrives) and yields whatever plaintext is complete.
pub struct SecurityLayer {
    session: Session,
    max_out: usize,
}

impl SecurityLayer {
    pub fn encode(&self, input: &[u8], out: &mut BytesMut) -> Result<(), String> {
        let conn = self.session.lock();
        encode_pieces(input, self.max_out, out, |chunk, out| {
            let mut p: *const c_char = ptr::null();
            let mut n: c_uint = 0;
            // SAFETY: live connection (lock held); `chunk` is valid for its length, which
            // is at most SASL_MAXOUTBUF (< 4 GiB); the output buffer is owned by the
            // connection and copied before the next call.
            let rc = unsafe {
                ffi::sasl_encode(
                    conn.0,
                    chunk.as_ptr() as *const c_char,
                    chunk.len() as c_uint,
                    &mut p,
                    &mut n,
                )
            };
            if rc != ffi::SASL_OK {
                return Err(format!("sasl_encode: {}", conn.detail(rc)));
            }
            if !p.is_null() && n > 0 {
                // SAFETY: cyrus returned `n` readable bytes at `p`.
                out.extend_from_slice(unsafe {
                    std::slice::from_raw_parts(p as *const u8, n as usize)
                });
            }
            Ok(())
        })
    }

    pub fn decode(&self, input: &[u8], out: &mut BytesMut) -> Result<(), String> {
        if input.is_empty() {
            return Ok(());
        }
        let conn = self.session.lock();
        decode_pieces(input, DECODE_PIECE, out, |chunk, out| {
            let mut p: *const c_char = ptr::null();
            let mut n: c_uint = 0;
            // SAFETY: live connection (lock held); `chunk` is valid for its length; the
            // output is owned by the connection and copied before the next call.
            let rc = unsafe {
                ffi::sasl_decode(
                    conn.0,
                    chunk.as_ptr() as *const c_char,
                    chunk.len() as c_uint,
                    &mut p,
                    &mut n,
                )
            };
            if rc != ffi::SASL_OK {
                return Err(format!("sasl_decode: {}", conn.detail(rc)));
            }
            if !p.is_null() && n > 0 {
                // SAFETY: cyrus returned `n` readable bytes at `p`.
                out.extend_from_slice(unsafe {
                    std::slice::from_raw_parts(p as *const u8, n as usize)
                });
            }
            Ok(())
        })
    }
}

/// Largest piece of incoming bytes given to one `sasl_decode` (cyrus takes an unsigned
/// length): huge reads go in pieces.
pub const DECODE_PIECE: usize = 1 << 20;

/// The security layer's handling of outgoing bytes, apart from cyrus: `codec` (`sasl_encode`)
/// gets them in pieces of at most `max_out` bytes, the negotiated `SASL_MAXOUTBUF`, and
/// appends what it makes of each to `out`. A zero `max_out` is refused (nothing could be
/// sent). Pure, so `fuzz/fuzz_targets/sasl_stream.rs` drives it with an identity codec.
pub fn encode_pieces(
    input: &[u8],
    max_out: usize,
    out: &mut BytesMut,
    mut codec: impl FnMut(&[u8], &mut BytesMut) -> Result<(), String>,
) -> Result<(), String> {
    if max_out == 0 {
        return Err("SASL security layer has a zero output buffer".into());
    }
    input
        .chunks(max_out)
        .try_for_each(|piece| codec(piece, out))
}

/// The security layer's handling of incoming bytes, apart from cyrus: whatever was read, with
/// any packet boundaries, goes to `codec` (`sasl_decode`, which keeps an incomplete
/// length-prefixed packet until the rest arrives) in pieces of at most `piece` bytes; the
/// plaintext it completes is appended to `out`. Pure, for the same fuzz target.
pub fn decode_pieces(
    input: &[u8],
    piece: usize,
    out: &mut BytesMut,
    mut codec: impl FnMut(&[u8], &mut BytesMut) -> Result<(), String>,
) -> Result<(), String> {
    if piece == 0 {
        return Err("SASL decode piece of zero bytes".into());
    }
    input.chunks(piece).try_for_each(|p| codec(p, out))
}

/// A connection's authentication state for SASL listeners.
pub struct ClientAuth {
    pub method: AuthMethod,
    /// `tcp:IP:PORT` / `tls:IP:PORT` / `unix:…`, as the connection logs it.
    pub peer: String,
    /// Made by the first SASL call: a connection that never uses SASL (every connection
    /// of a listener with another method) pays one pointer for it.
    sasl: OnceLock<Box<SaslState>>,
}

#[derive(Default)]
struct SaslState {
    /// Between AUTH_SASL_INIT and the end of the exchange (libvirtd's `priv->sasl`).
    negotiation: Mutex<Option<Session>>,
    /// Set when authentication completed with a security layer: the read path decodes
    /// with it from then on.
    layer: OnceLock<Arc<SecurityLayer>>,
    /// The serial of the reply that completed authentication: the writer switches to
    /// `layer` right after writing that reply. Armed by the AUTH_SASL_START/STEP handler
    /// before its reply is queued, so the writer always finds it when that reply comes by.
    switch_after: Mutex<Option<u32>>,
    failures: AtomicU32,
    username: OnceLock<String>,
}

impl ClientAuth {
    pub fn new(method: AuthMethod, peer: String) -> ClientAuth {
        ClientAuth {
            method,
            peer,
            sasl: OnceLock::new(),
        }
    }

    fn sasl(&self) -> &SaslState {
        self.sasl.get_or_init(Default::default)
    }

    /// The negotiation slot (AUTH_SASL_* handlers only).
    pub fn negotiation(&self) -> std::sync::MutexGuard<'_, Option<Session>> {
        self.sasl()
            .negotiation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a failed attempt; true when the connection has used up its attempts.
    pub fn failed(&self) -> bool {
        self.sasl().failures.fetch_add(1, Ordering::AcqRel) + 1 >= MAX_FAILURES
    }

    /// Authentication completed with a security layer: decode from now on, and encode
    /// everything written after the reply with `serial`.
    pub fn activate(&self, serial: u32, layer: SecurityLayer) {
        let sasl = self.sasl();
        let _ = sasl.layer.set(Arc::new(layer));
        *sasl.switch_after.lock().unwrap_or_else(|e| e.into_inner()) = Some(serial);
    }

    /// The user name SASL authenticated.
    pub fn set_username(&self, user: String) {
        let _ = self.sasl().username.set(user);
    }

    pub fn username(&self) -> Option<&str> {
        self.sasl.get()?.username.get().map(String::as_str)
    }

    /// The layer incoming bytes go through, once active.
    pub fn read_layer(&self) -> Option<&Arc<SecurityLayer>> {
        self.sasl.get()?.layer.get()
    }

    /// For the connection's writer, after each whole outgoing message: true when it is
    /// the reply that completed authentication with a security layer, after which
    /// everything is wrapped (with `read_layer`).
    pub fn switch_after(&self, msg: &[u8]) -> bool {
        let Some(sasl) = self.sasl.get() else {
            return false;
        };
        let mut g = sasl.switch_after.lock().unwrap_or_else(|e| e.into_inner());
        let Some(serial) = *g else {
            return false;
        };
        let word = |at: usize| {
            msg.get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        // Length word, then program, version, procedure, type, serial, status.
        let is_it = word(4) == Some(REMOTE_PROGRAM)
            && word(16) == Some(MessageType::REPLY.0 as u32)
            && word(20) == Some(serial);
        if is_it {
            *g = None;
        }
        is_it
    }
}

/// `ip;port` for cyrus from `tcp:1.2.3.4:5` or `tls:[::1]:5`.
pub fn sasl_addr(peer: &str) -> Option<String> {
    let addr = peer
        .strip_prefix("tcp:")
        .or_else(|| peer.strip_prefix("tls:"))?;
    let sa: std::net::SocketAddr = addr.parse().ok()?;
    Some(format!("{};{}", sa.ip(), sa.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_in_cyrus_form() {
        assert_eq!(
            sasl_addr("tcp:127.0.0.1:4242").as_deref(),
            Some("127.0.0.1;4242")
        );
        assert_eq!(sasl_addr("tls:[::1]:16514").as_deref(), Some("::1;16514"));
        assert_eq!(sasl_addr("unix:/run/x uid=0"), None);
    }

    #[test]
    fn layer_pieces() {
        let mut sizes = Vec::new();
        let mut out = BytesMut::new();
        let mut codec = |p: &[u8], o: &mut BytesMut| {
            sizes.push(p.len());
            o.extend_from_slice(p);
            Ok(())
        };
        encode_pieces(&[7; 10], 4, &mut out, &mut codec).unwrap();
        decode_pieces(&[8; 5], 5, &mut out, &mut codec).unwrap();
        decode_pieces(&[], 5, &mut out, &mut codec).unwrap();
        // `chunks(0)` would panic: a zero limit is refused before the codec is called.
        assert!(encode_pieces(b"x", 0, &mut out, &mut codec).is_err());
        assert!(decode_pieces(b"x", 0, &mut out, &mut codec).is_err());
        assert_eq!(sizes, [4, 4, 2, 5]);
        assert_eq!(out.len(), 15);
        let failing = |_: &[u8], _: &mut BytesMut| Err("no".to_string());
        assert_eq!(encode_pieces(b"xy", 1, &mut out, failing), Err("no".into()));
    }
}
