//! Rule model → nf_tables messages: our encoder (`nft::batch::encode`) against the same
//! rules encoded with libnftnl (`common/nftnl_ref.rs`, the library `nft` uses), each
//! producing one complete create-only batch. And model → xtables blobs (iptables-legacy
//! backend): merging the iptables-flavoured plan into the tables as the kernel hands them to
//! a fresh namespace (read once from a scratch namespace), and encoding the `ipt_replace` /
//! `ip6t_replace` blobs, for every table and family the plan writes.
//!
//! Before measuring, both batches are checked to be the same messages (types, in order) and,
//! as root, the libnftnl one is sent into a scratch namespace, which must accept it.

mod common;
#[path = "common/nftnl_ref.rs"]
mod nftnl_ref;

use common::specs;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mesh_redirect::model::{build, Family, Flavor, Table};
use mesh_redirect::netlink::wire::messages;
use mesh_redirect::nft::batch::{encode, Shape};
use mesh_redirect::xt::abi::Layout;
use mesh_redirect::xt::apply::layouts;
use mesh_redirect::xt::merge::merge;
use mesh_redirect::xt::socket::XtSocket;
use mesh_redirect::xt::table::Table as XtTable;
use std::hint::black_box;

fn message_types(bytes: &[u8]) -> Vec<u16> {
    messages(bytes).map(|m| m.msg_type).collect()
}

/// The kernel accepts the libnftnl batch (so the baseline encodes real, complete rules).
fn kernel_accepts(bytes: &[u8]) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("encode: not root, the libnftnl batch is not sent to a kernel");
        return;
    }
    let ns = common::ScratchNetns::new();
    let bytes = bytes.to_vec();
    let errors = ns
        .netns()
        .run(move || {
            let sock = netlink_sys::Socket::new(libc::NETLINK_NETFILTER as isize).expect("socket");
            let size: libc::c_int = 16 << 20;
            for opt in [libc::SO_SNDBUFFORCE, libc::SO_RCVBUFFORCE] {
                // SAFETY: a valid socket and a c_int option of the stated size.
                unsafe {
                    libc::setsockopt(
                        std::os::fd::AsRawFd::as_raw_fd(&sock),
                        libc::SOL_SOCKET,
                        opt,
                        &size as *const libc::c_int as *const libc::c_void,
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    );
                }
            }
            sock.send(&bytes, 0).expect("send");
            let mut errors = Vec::new();
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n) = sock.recv(&mut &mut buf[..], libc::MSG_DONTWAIT) {
                for m in messages(&buf[..n]) {
                    let errno = i32::from_ne_bytes(m.payload[..4].try_into().expect("4 bytes"));
                    if m.msg_type == 2 && errno != 0 {
                        errors.push(errno);
                    }
                }
            }
            errors
        })
        .expect("namespace thread");
    assert!(
        errors.is_empty(),
        "the kernel rejected the libnftnl batch: {errors:?}"
    );
}

/// The tables the iptables-legacy backend writes for `spec`, as a fresh namespace's kernel
/// returns them (empty built-in chains); `None` without root.
fn fresh_xt_tables(spec: &common::Spec) -> Option<Vec<(Layout, Table, XtTable)>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("encode: not root, no xtables tables to merge into");
        return None;
    }
    let plan = build(&spec.config(), Flavor::Iptables);
    let ns = common::ScratchNetns::new();
    let tables = ns
        .netns()
        .run(|| {
            let mut out = Vec::new();
            for l in layouts(&plan) {
                let sock = XtSocket::open(l).expect("xtables socket");
                for t in plan.tables() {
                    let (_, table) = sock.read(t.iptables_name()).expect("read table");
                    out.push((l, t, table));
                }
            }
            out
        })
        .expect("namespace thread");
    Some(tables)
}

fn encoders(c: &mut Criterion) {
    for spec in specs() {
        let plan = build(&spec.config(), Flavor::Nftables);
        let ours = encode(&plan, Shape::Create, 1);
        let reference = nftnl_ref::bytes(&nftnl_ref::encode(&plan));
        // libnftnl also asks for ACKs on batch begin/end on kernels >= 6.10; compare the rest.
        assert_eq!(
            message_types(&ours.bytes),
            message_types(&reference),
            "{}: our batch and libnftnl's differ in their messages",
            spec.name
        );
        kernel_accepts(&reference);
        println!(
            "encode/{}: {} rules, {} messages; ours {} bytes, libnftnl {} bytes",
            spec.name,
            plan.rule_count(),
            ours.messages.len(),
            ours.bytes.len(),
            reference.len()
        );

        let mut g = c.benchmark_group(format!("encode/{}", spec.name));
        g.throughput(Throughput::Elements(plan.rule_count() as u64));
        g.bench_function("ours (nft::batch::encode)", |b| {
            b.iter(|| encode(black_box(&plan), Shape::Create, 1))
        });
        g.bench_function("libnftnl (nftnl crate)", |b| {
            b.iter(|| nftnl_ref::encode(black_box(&plan)))
        });
        g.bench_function("ours, replace shape", |b| {
            b.iter(|| encode(black_box(&plan), Shape::Replace, 1))
        });
        if let Some(fresh) = fresh_xt_tables(&spec) {
            let plan = build(&spec.config(), Flavor::Iptables);
            g.bench_function("xtables blobs (merge + encode, all tables, v4 + v6)", |b| {
                b.iter(|| {
                    fresh
                        .iter()
                        .map(|(l, t, current)| {
                            let family = if l.ipv6 { Family::V6 } else { Family::V4 };
                            merge(current, black_box(&plan), *t, family, *l)
                                .encode(*l)
                                .expect("encode")
                                .blob
                                .len()
                        })
                        .sum::<usize>()
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, encoders);
criterion_main!(benches);
