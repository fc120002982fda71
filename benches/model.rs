//! Configuration → rule model: validating the raw flags, and building Istio's rule plan.
//!
//! `cargo bench --bench model`; both configurations of `common::specs()` (the default with
//! IPv6, and the large one).

mod common;

use common::specs;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mesh_redirect::config::GroupFile;
use mesh_redirect::model::{build, Family, Flavor};
use std::hint::black_box;

fn model(c: &mut Criterion) {
    for spec in specs() {
        let raw = spec.raw();
        let cfg = spec.config();
        let rules = build(&cfg, Flavor::Nftables).rule_count();
        let mut g = c.benchmark_group(format!("model/{}", spec.name));
        g.throughput(Throughput::Elements(rules as u64));
        let groups = GroupFile::default();
        g.bench_function("validate", |b| {
            b.iter(|| black_box(&raw).validate(&groups).expect("valid"))
        });
        g.bench_function("build (nftables)", |b| {
            b.iter(|| build(black_box(&cfg), Flavor::Nftables))
        });
        g.bench_function("validate + build + resolve", |b| {
            b.iter(|| {
                let cfg = black_box(&raw).validate(&groups).expect("valid");
                build(&cfg, Flavor::Nftables).resolve_inet()
            })
        });
        // The iptables-flavoured plan, resolved per family, is what the iptables-legacy
        // backend will lower (model → xtables blobs: TODO in benches/encode.rs).
        g.bench_function("build (iptables flavour) + resolve v4, v6", |b| {
            b.iter(|| {
                let plan = build(black_box(&cfg), Flavor::Iptables);
                (
                    plan.resolve_family(Family::V4),
                    plan.resolve_family(Family::V6),
                )
            })
        });
        g.finish();
    }
}

criterion_group!(benches, model);
criterion_main!(benches);
