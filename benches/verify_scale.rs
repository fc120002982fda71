//! `verify` against `apply` as the rule count grows: N outbound include CIDRs (half IPv4,
//! half IPv6) for N = 2,500, 5,000 and 10,000, both backends, in process.
//!
//! * `apply`: `engine::apply` into a fresh namespace (made and deleted outside the timing);
//! * `verify`: `engine::verify` of the applied namespace (read-back and comparison).
//!
//! The goal (issue 10): verify ≤ 2× apply at 10,000 CIDRs on both backends; the xtables
//! comparison used to be quadratic (0.33 s at 10,000 CIDRs).

mod common;

use common::{cidr_list, require_root, ScratchNetns, Spec};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use mesh_redirect::engine::{self, BackendChoice};
use std::time::{Duration, Instant};

fn spec(n: usize) -> Spec {
    Spec {
        name: format!("{n}cidr"),
        flags: vec![("--ipv6", "true".into()), ("-i", cidr_list(n, 0))],
    }
}

fn verify_scale(c: &mut Criterion) {
    require_root();
    let mut g = c.benchmark_group("verify_scale");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_secs(4));
    for (name, choice) in [
        ("nftables", BackendChoice::Nftables),
        ("iptables-legacy", BackendChoice::IptablesLegacy),
    ] {
        for n in [2_500, 5_000, 10_000] {
            let cfg = spec(n).config();
            g.bench_function(format!("apply {name} {n} cidr"), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let ns = ScratchNetns::new();
                        let netns = ns.netns();
                        let start = Instant::now();
                        engine::apply(&netns, &cfg, choice).expect("apply");
                        total += start.elapsed();
                    }
                    total
                })
            });
            let ns = ScratchNetns::new();
            let netns = ns.netns();
            engine::apply(&netns, &cfg, choice).expect("apply");
            g.bench_function(format!("verify {name} {n} cidr"), |b| {
                b.iter(|| {
                    let report = engine::verify(&netns, &cfg, choice).expect("verify");
                    assert!(report.differences.is_empty(), "{:?}", report.differences);
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, verify_scale);
criterion_main!(benches);
