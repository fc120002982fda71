//! The netlink read-back and verify: dumping our tables (tables, chains, sets, rules) and
//! decoding them into the expression IR (`nft::readback::read_tables`), comparing them with
//! the plan (`nft::verify::diff`), and the whole `engine::verify` (namespace thread, socket,
//! read-back, diff) — for the default and the large configuration, in a namespace where they
//! were applied; and `engine::verify` of the iptables-legacy backend (xtables read-back).

mod common;

use common::{kernel_criterion, require_root, specs, ScratchNetns};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mesh_redirect::engine::{self, Backend, BackendChoice};
use mesh_redirect::model::Table;
use mesh_redirect::nft::readback::read_tables;
use mesh_redirect::nft::socket::NfSocket;
use mesh_redirect::nft::verify::diff;

fn readback(c: &mut Criterion) {
    require_root();
    let names: Vec<&str> = Table::ALL.iter().map(|t| t.nft_name()).collect();
    for spec in specs() {
        let cfg = spec.config();
        let plan = engine::plan(&cfg, Backend::Nftables);
        let ns = ScratchNetns::new();
        let netns = ns.netns();
        engine::apply(&netns, &cfg, BackendChoice::Nftables).expect("apply");
        let mut sock = netns
            .run(NfSocket::open)
            .expect("namespace thread")
            .expect("socket");
        let kernel = read_tables(&mut sock, &names).expect("read-back");
        assert!(diff(&plan, &kernel).is_empty(), "{}: drift", spec.name);

        let mut g = c.benchmark_group(format!("readback/{}", spec.name));
        g.throughput(Throughput::Elements(plan.rule_count() as u64));
        g.bench_function("read_tables (dumps + decode), socket open", |b| {
            b.iter(|| read_tables(&mut sock, &names).expect("read-back"))
        });
        g.bench_function("verify::diff against the plan", |b| {
            b.iter(|| diff(&plan, &kernel))
        });
        g.bench_function("engine::verify (thread, socket, read-back, diff)", |b| {
            b.iter(|| {
                let d = engine::verify(&netns, &cfg, BackendChoice::Nftables)
                    .expect("verify")
                    .differences;
                assert!(d.is_empty());
            })
        });
        let legacy = ScratchNetns::new();
        let legacy_netns = legacy.netns();
        engine::apply(&legacy_netns, &cfg, BackendChoice::IptablesLegacy)
            .expect("apply iptables-legacy");
        g.bench_function(
            "engine::verify iptables-legacy (thread, read-back, diff)",
            |b| {
                b.iter(|| {
                    let d = engine::verify(&legacy_netns, &cfg, BackendChoice::IptablesLegacy)
                        .expect("verify")
                        .differences;
                    assert!(d.is_empty());
                })
            },
        );
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = kernel_criterion();
    targets = readback
}
criterion_main!(benches);
