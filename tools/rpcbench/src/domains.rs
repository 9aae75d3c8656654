//! Domain definitions the benchmarks create: XML per server flavour, UUIDs, and
//! pipelined DOMAIN_DEFINE_XML / DOMAIN_UNDEFINE on one connection.

use std::collections::HashMap;
use std::path::PathBuf;

use virtumld_protocol::frame;
use virtumld_protocol::header::Status;
use virtumld_protocol::procedures::proc as p;
use virtumld_protocol::remote::{
    DomainDefineXmlArgs, DomainDefineXmlRet, DomainUndefineArgs, NonnullDomain,
};
use virtumld_protocol::xdr;

use crate::conn::{describe_error_payload, CallError, Conn};

/// Which kind of `<domain>` the server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Flavor {
    /// From the URI scheme: `test…` → test, `uml…` → uml.
    Auto,
    /// libvirt's test driver: `<domain type='test'>`, hvm.
    Test,
    /// virtumld: `<domain type='uml'>` with kernel /usr/bin/linux.uml and one ubd disk.
    Uml,
}

#[derive(Debug, Clone, clap::Args)]
pub struct XmlOpts {
    /// Kind of domain XML to define.
    #[arg(long, value_enum, default_value = "auto")]
    pub xml_flavor: Flavor,
    /// A domain XML template instead, with @NAME@ and @UUID@ placeholders.
    #[arg(long)]
    pub xml_template: Option<PathBuf>,
}

pub struct XmlMaker {
    flavor: Flavor,
    template: Option<String>,
    rng: u64,
}

impl XmlMaker {
    pub fn new(opts: &XmlOpts, uri: &str) -> Result<XmlMaker, String> {
        let template = match &opts.xml_template {
            Some(p) => {
                Some(std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?)
            }
            None => None,
        };
        let flavor = match opts.xml_flavor {
            Flavor::Auto if template.is_some() => Flavor::Auto,
            Flavor::Auto if uri.starts_with("test") => Flavor::Test,
            Flavor::Auto if uri.starts_with("uml") => Flavor::Uml,
            Flavor::Auto => {
                return Err(format!(
                "cannot tell which domain XML {uri} accepts: give --xml-flavor or --xml-template"
            ))
            }
            f => f,
        };
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            ^ (u64::from(std::process::id()) << 32);
        Ok(XmlMaker {
            flavor,
            template,
            rng: seed | 1,
        })
    }

    pub fn uuid(&mut self) -> [u8; 16] {
        let mut u = [0u8; 16];
        for half in u.chunks_mut(8) {
            // xorshift64*
            self.rng ^= self.rng >> 12;
            self.rng ^= self.rng << 25;
            self.rng ^= self.rng >> 27;
            let v = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
            half.copy_from_slice(&v.to_be_bytes());
        }
        u[6] = (u[6] & 0x0f) | 0x40;
        u[8] = (u[8] & 0x3f) | 0x80;
        u
    }

    pub fn xml(&mut self, name: &str) -> String {
        let uuid = uuid_string(&self.uuid());
        if let Some(t) = &self.template {
            return t.replace("@NAME@", name).replace("@UUID@", &uuid);
        }
        match self.flavor {
            Flavor::Test => format!(
                "<domain type='test'><name>{name}</name><uuid>{uuid}</uuid>\
                 <memory unit='KiB'>65536</memory><currentMemory unit='KiB'>65536</currentMemory>\
                 <vcpu>1</vcpu><os><type arch='x86_64'>hvm</type></os></domain>"
            ),
            _ => uml_xml(name, &uuid),
        }
    }
}

/// The UML definition rpcbench and bench-vs-libvirtd use (no guest is ever started).
pub fn uml_xml(name: &str, uuid: &str) -> String {
    format!(
        "<domain type='uml'>\n  <name>{name}</name>\n  <uuid>{uuid}</uuid>\n  \
         <memory unit='KiB'>65536</memory>\n  <currentMemory unit='KiB'>65536</currentMemory>\n  \
         <vcpu>1</vcpu>\n  <os>\n    <type arch='x86_64'>uml</type>\n    \
         <kernel>/usr/bin/linux.uml</kernel>\n  </os>\n  <devices>\n    \
         <disk type='file' device='disk'>\n      <source file='/var/tmp/rpcbench-{name}.img'/>\n      \
         <target dev='ubd0' bus='uml'/>\n    </disk>\n  </devices>\n</domain>\n"
    )
}

pub fn uuid_string(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Sends one call per body with up to `depth` in flight; the result of each, in order.
pub async fn call_many(
    conn: &mut Conn,
    procedure: i32,
    bodies: &[Vec<u8>],
    depth: usize,
    mut progress: impl FnMut(usize),
) -> Result<Vec<Result<Vec<u8>, String>>, CallError> {
    let mut results: Vec<Option<Result<Vec<u8>, String>>> = vec![None; bodies.len()];
    let mut inflight: HashMap<u32, usize> = HashMap::new();
    let mut next = 0;
    let mut done = 0;
    while done < bodies.len() {
        while next < bodies.len() && inflight.len() < depth.max(1) {
            let s = conn.queue_call_raw(procedure, &bodies[next]);
            inflight.insert(s, next);
            next += 1;
        }
        conn.flush().await?;
        let msg = conn
            .read_message()
            .await?
            .ok_or_else(|| CallError::Protocol("the server closed the connection".to_string()))?;
        let (h, payload) = frame::split(&msg)?;
        if h.program == virtumld_protocol::header::KEEPALIVE_PROGRAM {
            if h.procedure == virtumld_protocol::header::KEEPALIVE_PROC_PING {
                conn.queue_pong();
            }
            continue;
        }
        if h.kind != virtumld_protocol::header::MessageType::REPLY {
            continue;
        }
        if let Some(i) = inflight.remove(&h.serial) {
            results[i] = Some(if h.status == Status::OK {
                Ok(payload.to_vec())
            } else {
                Err(describe_error_payload(payload))
            });
            done += 1;
        }
        progress(done);
    }
    Ok(results
        .into_iter()
        .map(|r| r.expect("every call answered"))
        .collect())
}

/// Defines `names` (pipelined); returns the domains defined and the first failure, if any.
pub async fn define_many(
    conn: &mut Conn,
    xml: &mut XmlMaker,
    names: &[String],
    quiet: bool,
) -> Result<(Vec<NonnullDomain>, Option<String>), CallError> {
    let bodies: Vec<Vec<u8>> = names
        .iter()
        .map(|n| xdr::to_bytes(&DomainDefineXmlArgs { xml: xml.xml(n) }).to_vec())
        .collect();
    let total = bodies.len();
    let mut last = std::time::Instant::now();
    let res = call_many(conn, p::DOMAIN_DEFINE_XML, &bodies, 16, |d| {
        if !quiet && last.elapsed().as_millis() >= 1000 {
            last = std::time::Instant::now();
            eprintln!("  defined {d}/{total}");
        }
    })
    .await?;
    let mut doms = Vec::new();
    let mut first_err = None;
    for r in res {
        match r {
            Ok(payload) => match xdr::from_bytes::<DomainDefineXmlRet>(&payload) {
                Ok(ret) => doms.push(ret.dom),
                Err(e) => {
                    first_err.get_or_insert(format!("cannot decode DOMAIN_DEFINE_XML reply: {e}"));
                }
            },
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Ok((doms, first_err))
}

/// Undefines `doms` (pipelined); returns how many failed.
pub async fn undefine_many(conn: &mut Conn, doms: &[NonnullDomain]) -> Result<usize, CallError> {
    let bodies: Vec<Vec<u8>> = doms
        .iter()
        .map(|d| xdr::to_bytes(&DomainUndefineArgs { dom: d.clone() }).to_vec())
        .collect();
    let res = call_many(conn, p::DOMAIN_UNDEFINE, &bodies, 16, |_| {}).await?;
    Ok(res.iter().filter(|r| r.is_err()).count())
}

/// Writes `count` UML definitions named PREFIX-NNNNN straight into a definitions directory.
pub fn gen_uml_defs(dir: &std::path::Path, count: usize, prefix: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut mk = XmlMaker {
        flavor: Flavor::Uml,
        template: None,
        rng: 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()),
    };
    for i in 0..count {
        let name = format!("{prefix}-{i:05}");
        let uuid = uuid_string(&mk.uuid());
        std::fs::write(dir.join(format!("{name}.xml")), uml_xml(&name, &uuid))?;
    }
    Ok(())
}
