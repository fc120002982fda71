//! In-process apply into a network namespace, next to the kernel's own cost for the batch.
//!
//! For each configuration (default with IPv6, large; the create paths also for Istio's
//! IPv4-only default, which adds no address to `lo`) and each path:
//!
//! * `create`: `engine::apply` into a fresh namespace (no table of ours: a create-only batch).
//!   Everything the command does after parsing its flags: plan, namespace thread, sockets,
//!   the look for existing tables, `::6/128` on `lo`, encode, send, ACKs, socket close. And
//!   the same with `engine::apply_as_last` (the command line's and the CNI ADD's: on the
//!   caller's own thread).
//! * `create, kernel only`: the same batch, already encoded, sent on a socket already open
//!   in a fresh namespace: `send` plus reading every ACK. This is the floor: the kernel's
//!   own cost for the batch.
//! * `create, kernel only, every call an apply makes`: the system calls of
//!   `engine::apply_as_last` in its order (setns, sockets, the look for our tables, the
//!   legacy table lists of the migration check, `::6/128` on `lo`, the batch, the closes),
//!   the batch encoded before: the kernel's whole part of an apply, so that the difference
//!   to `apply_as_last` is our own code.
//! * `replace`: `engine::apply` over our existing tables (the replace batch), and
//!   `replace, kernel only` on a socket that stays open.
//!
//! Then the parts of the create path, to show where its time goes, and apply time against
//! rule count (10, 100, 500 include + as many exclude CIDRs with the large configuration's
//! ports and uids). The iptables-legacy backend: `engine::apply` into a fresh namespace and
//! over its own chains (no kernel-only row: its kernel calls are interleaved with merging).
//!
//! A holder namespace keeps base chains of ours registered for the whole run (a node has
//! other pods). Namespaces are anonymous and deleted when their guard drops
//! (`common::ScratchNetns`).
//! Timing excludes making and deleting them (`iter_custom`).

mod common;

use common::{kernel_criterion, require_root, specs, ScratchNetns, Spec};
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode};
use mesh_redirect::config::Config;
use mesh_redirect::engine::{self, Backend, BackendChoice};
use mesh_redirect::kernel::{NfTables, RouteOps};
use mesh_redirect::model::{build, Flavor};
use mesh_redirect::netns::Netns;
use mesh_redirect::nft::batch::{encode, Shape};
use mesh_redirect::nft::readback;
use mesh_redirect::nft::socket::NfSocket;
use mesh_redirect::routes::{self, RouteSocket};
use mesh_redirect::xt;
use std::time::{Duration, Instant};

type Group<'a> = BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// Namespaces are made in chunks before timing, and deleted after, so that neither is timed.
const CHUNK: u64 = 32;

/// Runs `timed` once per fresh namespace, `iters` times; only `timed` is measured.
fn per_fresh_namespace<S>(
    iters: u64,
    setup: impl Fn(&ScratchNetns) -> S,
    timed: impl Fn(&ScratchNetns, S),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(CHUNK);
        left -= n;
        let spaces: Vec<(ScratchNetns, Option<S>)> = (0..n)
            .map(|_| {
                let ns = ScratchNetns::new();
                let s = setup(&ns);
                (ns, Some(s))
            })
            .collect();
        let mut done = Vec::with_capacity(spaces.len());
        for (ns, s) in spaces.into_iter().map(|(ns, mut s)| (ns, s.take())) {
            let s = s.expect("setup state");
            let start = Instant::now();
            timed(&ns, s);
            total += start.elapsed();
            done.push(ns);
        }
        drop(done);
        settle();
    }
    total
}

/// Deleting namespaces is asynchronous (`cleanup_net` holds `rtnl_lock` and waits for RCU
/// grace periods): give it time to finish before the next timed applies, which also need
/// `rtnl_lock` (`::6/128` on `lo`), so that a measurement is not of someone else's cleanup.
fn settle() {
    std::thread::sleep(Duration::from_millis(if common::bench_mode() {
        60
    } else {
        0
    }));
}

fn create_paths(g: &mut Group, cfg: &Config) {
    g.bench_function("create: engine::apply, fresh namespace", |b| {
        b.iter_custom(|iters| {
            per_fresh_namespace(
                iters,
                |ns| ns.netns(),
                |_, netns| {
                    engine::apply(&netns, cfg, BackendChoice::Nftables).expect("apply");
                },
            )
        })
    });
    g.bench_function(
        "create: engine::apply_as_last (the command's own thread), fresh namespace",
        |b| b.iter_custom(|iters| as_last(iters, cfg)),
    );
    let plan = build(cfg, Flavor::Nftables);
    g.bench_function("create: kernel only (send + ACKs), fresh namespace", |b| {
        b.iter_custom(|iters| {
            per_fresh_namespace(
                iters,
                |ns| {
                    let mut sock = ns
                        .netns()
                        .run(NfSocket::open)
                        .expect("namespace thread")
                        .expect("socket");
                    let batch = encode(&plan, Shape::Create, sock.reserve_seqs(1 << 20));
                    (sock, batch)
                },
                |_, (mut sock, batch)| {
                    sock.send_batch(&batch).expect("create batch");
                },
            )
        })
    });
    g.bench_function(
        "create: kernel only, every call an apply makes (batch encoded before), fresh namespace",
        |b| b.iter_custom(|iters| kernel_calls(iters, cfg)),
    );
    g.bench_function(
        "create: engine::apply iptables-legacy, fresh namespace",
        |b| {
            b.iter_custom(|iters| {
                per_fresh_namespace(
                    iters,
                    |ns| ns.netns(),
                    |_, netns| {
                        engine::apply(&netns, cfg, BackendChoice::IptablesLegacy).expect("apply");
                    },
                )
            })
        },
    );
}

/// Runs `timed` once per fresh namespace, `iters` times, each on a thread made for it
/// outside the timing: `timed` enters the namespace for good, as the command line and the
/// CNI plugin do on their own thread, and the bench's threads must not stay in a pod's
/// namespace.
fn per_fresh_namespace_own_thread(iters: u64, timed: impl Fn(Netns) + Sync) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(CHUNK);
        left -= n;
        let spaces: Vec<ScratchNetns> = (0..n).map(|_| ScratchNetns::new()).collect();
        for ns in &spaces {
            let netns = ns.netns();
            total += std::thread::scope(|s| {
                s.spawn(|| {
                    let start = Instant::now();
                    timed(netns);
                    start.elapsed()
                })
                .join()
                .expect("timed thread")
            });
        }
        drop(spaces);
        settle();
    }
    total
}

/// What the command line and the CNI plugin pay: `engine::apply_as_last`.
fn as_last(iters: u64, cfg: &Config) -> Duration {
    per_fresh_namespace_own_thread(iters, |netns| {
        engine::apply_as_last(netns, cfg, BackendChoice::Nftables).expect("apply");
    })
}

/// The kernel's part of [`as_last`]: the same system calls in the same order (enter the
/// namespace, open the nf_tables socket, look for our tables, list the legacy tables of both
/// families, open the routing socket and add `::6/128` on `lo` when the configuration has
/// IPv6, send the batch and read its replies, close both sockets), with the batch encoded
/// before the timing. What `as_last` takes beyond this is our own code: the plan, encoding,
/// decisions.
fn kernel_calls(iters: u64, cfg: &Config) -> Duration {
    let plan = build(cfg, Flavor::Nftables);
    // Replies are matched by the sequence numbers the batch carries, not the socket's own.
    let batch = encode(&plan, Shape::Create, 1);
    let routes = routes::wanted(
        cfg.needs_tproxy_routes(),
        cfg.enable_ipv6,
        cfg.tproxy_mark,
        cfg.tproxy_route_table,
    );
    per_fresh_namespace_own_thread(iters, |netns| {
        netns
            .enter_for_good(|| {
                let mut sock = NfSocket::open().expect("socket");
                let tables = readback::inet_tables(&mut sock).expect("dump");
                assert!(tables.is_empty(), "a fresh namespace");
                for layout in [xt::abi::IPV4, xt::abi::IPV6] {
                    xt::socket::loaded_tables(layout).expect("legacy tables");
                }
                let rs = (!routes.is_empty()).then(|| {
                    let mut rs = RouteSocket::open().expect("rtnetlink socket");
                    for obj in &routes {
                        rs.add(*obj).expect("route");
                    }
                    rs
                });
                sock.send_batch(&batch).expect("create batch");
                drop(rs);
            })
            .expect("enter");
    })
}

fn replace_paths(g: &mut Group, cfg: &Config) {
    let ns = ScratchNetns::new();
    let netns = ns.netns();
    engine::apply(&netns, cfg, BackendChoice::Nftables).expect("first apply");
    // Alternating between two configurations, every apply really replaces our tables.
    let mut other = cfg.clone();
    other.outbound_ports_exclude.push(15999);
    let flip = std::cell::Cell::new(false);
    g.bench_function("replace: engine::apply over our tables", |b| {
        b.iter(|| {
            flip.set(!flip.get());
            let c = if flip.get() { &other } else { cfg };
            let report = engine::apply(&netns, c, BackendChoice::Nftables).expect("apply");
            assert!(report.replaced);
        })
    });
    // The same configuration again: the tables already match, nothing is sent.
    engine::apply(&netns, cfg, BackendChoice::Nftables).expect("apply");
    g.bench_function(
        "re-apply unchanged: engine::apply, tables already match",
        |b| {
            b.iter(|| {
                let report = engine::apply(&netns, cfg, BackendChoice::Nftables).expect("apply");
                assert!(!report.replaced && report.messages == 0);
            })
        },
    );
    let plan = build(cfg, Flavor::Nftables);
    let mut sock = netns
        .run(NfSocket::open)
        .expect("namespace thread")
        .expect("socket");
    g.bench_function(
        "replace: kernel only (send + ACKs), socket kept open",
        |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let batch = encode(&plan, Shape::Replace, sock.reserve_seqs(1 << 20));
                    let start = Instant::now();
                    sock.send_batch(&batch).expect("replace batch");
                    total += start.elapsed();
                }
                total
            })
        },
    );
    let legacy = ScratchNetns::new();
    let legacy_netns = legacy.netns();
    let apply_legacy =
        || engine::apply(&legacy_netns, cfg, BackendChoice::IptablesLegacy).expect("apply");
    apply_legacy();
    g.bench_function(
        "re-apply: engine::apply iptables-legacy over our chains",
        |b| b.iter(apply_legacy),
    );
}

/// Where the create path's time goes, piece by piece (default configuration).
fn parts(c: &mut Criterion) {
    let cfg = Spec::default_ipv6().config();
    let mut g = c.benchmark_group("apply-parts/default");
    g.sampling_mode(SamplingMode::Flat);
    g.bench_function("plan (model::build)", |b| {
        b.iter(|| engine::plan(&cfg, Backend::Nftables))
    });
    let plan = engine::plan(&cfg, Backend::Nftables);
    g.bench_function("encode (create batch)", |b| {
        b.iter(|| encode(&plan, Shape::Create, 1))
    });
    let ns = ScratchNetns::new();
    let netns = ns.netns();
    g.bench_function("Netns::run of nothing (thread + setns)", |b| {
        b.iter(|| netns.run(|| ()).expect("namespace thread"))
    });
    g.bench_function("NfSocket::open + close (in the namespace thread)", |b| {
        b.iter(|| {
            netns
                .run(|| drop(NfSocket::open().expect("socket")))
                .expect("namespace thread")
        })
    });
    let mut sock = netns
        .run(NfSocket::open)
        .expect("namespace thread")
        .expect("socket");
    g.bench_function("look for our tables (GETTABLE dump)", |b| {
        b.iter(|| readback::inet_tables(&mut sock).expect("dump"))
    });
    g.bench_function("RouteSocket::open + ::6/128 on lo, fresh namespace", |b| {
        b.iter_custom(|iters| {
            per_fresh_namespace(
                iters,
                |ns| ns.netns(),
                |_, netns| {
                    netns
                        .run(|| {
                            let mut rs = RouteSocket::open().expect("rtnetlink socket");
                            for obj in routes::wanted(false, true, 1337, 133) {
                                rs.add(obj).expect("add");
                            }
                        })
                        .expect("namespace thread")
                },
            )
        })
    });
    g.finish();
}

fn apply(c: &mut Criterion) {
    require_root();
    // A namespace with base chains of ours for the whole run, as other pods on a node: else
    // each fresh namespace's first base chain would flip the kernel's global static keys
    // (code patching across CPUs), which a real node with pods does not pay.
    let holder = ScratchNetns::new();
    engine::apply(
        &holder.netns(),
        &Spec::default_ipv6().config(),
        BackendChoice::Nftables,
    )
    .expect("holder apply");
    for spec in specs() {
        let cfg = spec.config();
        let mut g = c.benchmark_group(format!("apply/{}", spec.name));
        g.sampling_mode(SamplingMode::Flat);
        create_paths(&mut g, &cfg);
        replace_paths(&mut g, &cfg);
        g.finish();
    }
    let ipv4 = Spec::default_ipv4().config();
    let mut g = c.benchmark_group("apply/default-ipv4-only");
    g.sampling_mode(SamplingMode::Flat);
    create_paths(&mut g, &ipv4);
    g.finish();
    parts(c);
    // Apply time against rule count: the large configuration with 10, 100, 500 CIDRs.
    for cidrs in [10, 100, 500] {
        let spec = Spec::large(cidrs);
        let cfg = spec.config();
        let rules = build(&cfg, Flavor::Nftables).rule_count();
        let mut g = c.benchmark_group(format!("apply-vs-rules/{cidrs}cidr-{rules}rules"));
        g.sampling_mode(SamplingMode::Flat);
        g.throughput(criterion::Throughput::Elements(rules as u64));
        create_paths(&mut g, &cfg);
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = kernel_criterion();
    targets = apply
}
criterion_main!(benches);
