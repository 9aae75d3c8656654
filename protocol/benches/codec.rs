//! Encode/decode cost of the messages on the daemon's hot paths.
//!
//! `cargo bench -p virtumld-protocol --bench codec` (add `-- --quick` for a short run, or a
//! filter such as `-- list_all`). Each "encode" builds the whole framed message (length word,
//! header, payload) the way the daemon does; each "decode" goes from the framed bytes to the
//! typed value (`frame::message_len` + `frame::split` + `xdr::from_bytes`).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use virtumld_protocol::error::{code, domain, RemoteError};
use virtumld_protocol::frame;
use virtumld_protocol::header::{Header, MessageType, Status, REMOTE_PROGRAM};
use virtumld_protocol::limits::MESSAGE_MAX;
use virtumld_protocol::procedures::proc as p;
use virtumld_protocol::remote::{
    ConnectGetVersionRet, ConnectListAllDomainsRet, DomainGetInfoArgs, DomainGetInfoRet,
    NonnullDomain,
};
use virtumld_protocol::xdr::{self, FixedOpaque, Reader, Xdr};

fn call_header(procedure: i32, serial: u32) -> Header {
    Header {
        program: REMOTE_PROGRAM,
        version: 1,
        procedure,
        kind: MessageType::CALL,
        serial,
        status: Status::OK,
    }
}

fn domain_ref(i: usize) -> NonnullDomain {
    let mut uuid = [0u8; 16];
    uuid[..8].copy_from_slice(&(i as u64).to_be_bytes());
    uuid[8..].copy_from_slice(&0x1234_5678_9abc_def0u64.to_be_bytes());
    NonnullDomain {
        name: format!("guest-{i:05}"),
        uuid: FixedOpaque(uuid),
        id: if i.is_multiple_of(3) {
            i as i32 + 1
        } else {
            -1
        },
    }
}

/// Framed message → (header, typed payload), as a receiver does it.
fn decode_message<T: Xdr>(msg: &[u8]) -> (Header, T) {
    let len = frame::message_len(msg, MESSAGE_MAX).unwrap().unwrap();
    let (h, payload) = frame::split(&msg[..len]).unwrap();
    (h, xdr::from_bytes::<T>(payload).unwrap())
}

fn header(c: &mut Criterion) {
    let h = call_header(p::DOMAIN_GET_INFO, 42);
    let mut g = c.benchmark_group("header");
    g.throughput(Throughput::Bytes(24));
    g.bench_function("encode", |b| {
        let mut out = bytes::BytesMut::with_capacity(64);
        b.iter(|| {
            out.clear();
            black_box(&h).encode(&mut out);
            black_box(out.len())
        })
    });
    let bytes = xdr::to_bytes(&h);
    g.bench_function("decode", |b| {
        b.iter(|| Header::decode(&mut Reader::new(black_box(&bytes))).unwrap())
    });
    g.finish();
}

fn get_version(c: &mut Criterion) {
    let call = call_header(p::CONNECT_GET_VERSION, 7);
    let ret = ConnectGetVersionRet { hv_ver: 6_001_176 };
    let mut g = c.benchmark_group("connect_get_version");
    let msg = frame::encode(&call.reply(Status::OK), &ret);
    g.throughput(Throughput::Bytes(msg.len() as u64));
    g.bench_function("call_decode", |b| {
        let m = frame::encode(&call, &());
        b.iter(|| decode_message::<()>(black_box(&m)))
    });
    g.bench_function("reply_encode", |b| {
        b.iter(|| frame::encode(&black_box(&call).reply(Status::OK), black_box(&ret)))
    });
    g.bench_function("reply_decode", |b| {
        b.iter(|| decode_message::<ConnectGetVersionRet>(black_box(&msg)))
    });
    g.finish();
}

fn get_info(c: &mut Criterion) {
    let call = call_header(p::DOMAIN_GET_INFO, 9);
    let args = DomainGetInfoArgs { dom: domain_ref(1) };
    let ret = DomainGetInfoRet {
        state: 1,
        max_mem: 524_288,
        memory: 524_288,
        nr_virt_cpu: 1,
        cpu_time: 12_345_678_901,
    };
    let call_msg = frame::encode(&call, &args);
    let reply_msg = frame::encode(&call.reply(Status::OK), &ret);
    let mut g = c.benchmark_group("domain_get_info");
    g.bench_function("args_encode", |b| {
        b.iter(|| frame::encode(black_box(&call), black_box(&args)))
    });
    g.bench_function("args_decode", |b| {
        b.iter(|| decode_message::<DomainGetInfoArgs>(black_box(&call_msg)))
    });
    g.bench_function("ret_encode", |b| {
        b.iter(|| frame::encode(&black_box(&call).reply(Status::OK), black_box(&ret)))
    });
    g.bench_function("ret_decode", |b| {
        b.iter(|| decode_message::<DomainGetInfoRet>(black_box(&reply_msg)))
    });
    g.finish();
}

fn list_all(c: &mut Criterion) {
    let call = call_header(p::CONNECT_LIST_ALL_DOMAINS, 11);
    let ret = ConnectListAllDomainsRet {
        domains: (0..100).map(domain_ref).collect(),
        ret: 100,
    };
    let msg = frame::encode(&call.reply(Status::OK), &ret);
    let mut g = c.benchmark_group("list_all_domains_100");
    g.throughput(Throughput::Elements(100));
    g.bench_function("ret_encode", |b| {
        b.iter(|| frame::encode(&black_box(&call).reply(Status::OK), black_box(&ret)))
    });
    g.bench_function("ret_decode", |b| {
        b.iter(|| decode_message::<ConnectListAllDomainsRet>(black_box(&msg)))
    });
    g.finish();
}

fn remote_error(c: &mut Criterion) {
    let call = call_header(p::DOMAIN_LOOKUP_BY_NAME, 13);
    let err = RemoteError::new(
        code::NO_DOMAIN,
        domain::DOMAIN,
        "Domain not found: no domain with matching name 'guest-00042'",
    );
    let msg = frame::encode(&call.reply(Status::ERROR), &err);
    let mut g = c.benchmark_group("remote_error");
    g.bench_function("build_and_encode", |b| {
        b.iter(|| {
            let e = RemoteError::new(
                code::NO_DOMAIN,
                domain::DOMAIN,
                black_box("Domain not found: no domain with matching name 'guest-00042'"),
            );
            frame::encode(&black_box(&call).reply(Status::ERROR), &e)
        })
    });
    g.bench_function("encode", |b| {
        b.iter(|| frame::encode(&black_box(&call).reply(Status::ERROR), black_box(&err)))
    });
    g.bench_function("decode", |b| {
        b.iter(|| decode_message::<RemoteError>(black_box(&msg)))
    });
    g.bench_function("unknown_procedure", |b| {
        b.iter(|| {
            let e = RemoteError::unknown_procedure(black_box(999));
            frame::encode(&black_box(&call).reply(Status::ERROR), &e)
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    header,
    get_version,
    get_info,
    list_all,
    remote_error
);
criterion_main!(benches);
