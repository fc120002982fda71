//! Whole processes at node scale (`cargo bench --bench scale`, as root):
//!
//! 1. **110 pods at once** (Kubernetes' default `maxPods` per node): 110 fresh namespaces,
//!    one process per pod started back to back without waiting, as a runtime running CNI ADDs
//!    in parallel would. Contenders: `mesh-redirect apply --ipv6` with each backend, our CNI
//!    plugin's ADD (static mode: no Kubernetes API call), and Istio's iptables sequence (`benches/istio/iptables-sequence.sh`: 2 saves, 2 `restore
//!    --noflush`, 2 saves, legacy binaries), entered into the pod's namespace between fork
//!    and exec as Istio's CNI plugin does. Reported: total wall time (first start to last
//!    exit) and per-pod latency (its start to its exit), p50 / p99 / max over all rounds.
//! 2. **Apply time against rule count**: `mesh-redirect apply` of the default configuration
//!    and of the large one with 10, 100, 500 (and 1000) include + as many exclude CIDRs, one
//!    run at a time, fresh namespace per run: median and p95.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) it is a smoke test: 3 pods, one
//! round, 2 runs per rule count. Namespaces are anonymous (`common::ScratchNetns`): the
//! kernel deletes them when their guard drops or the process dies.

mod common;

use common::{bench_mode, require_root, ScratchNetns, Spec};
use mesh_redirect::engine::{self, Backend, BackendChoice};
use mesh_redirect::nft::batch::{encode, Shape};
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mesh-redirect");
const SEQUENCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/benches/istio/iptables-sequence.sh"
);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Contender {
    OursNftables,
    OursIptablesLegacy,
    CniAdd,
    IstioIptablesSequence,
}

/// A CNI ADD in static mode (redirect settings from the plugin configuration, no Kubernetes
/// API call), nftables backend, IPv6 from the primary plugin's dual-stack result.
pub const CNI_CONF: &str = r#"{"cniVersion":"1.0.0","name":"mesh-bench","type":"mesh-redirect","mode":"static","backend":"nftables","redirect":{"dualStack":true},"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/pod"}],"ips":[{"interface":0,"address":"10.88.50.8/24"},{"interface":0,"address":"fd00:88::8/64"}]}}"#;

impl Contender {
    fn label(self) -> &'static str {
        match self {
            Contender::OursNftables => "mesh-redirect apply --ipv6 --backend nftables",
            Contender::OursIptablesLegacy => "mesh-redirect apply --ipv6 --backend iptables-legacy",
            Contender::CniAdd => "mesh-redirect CNI ADD (static mode, nftables)",
            Contender::IstioIptablesSequence => {
                "Istio iptables sequence (6 legacy commands, one sh script)"
            }
        }
    }

    fn command(self, ns: &ScratchNetns, cni_conf: &std::path::Path) -> Command {
        let apply = |backend: &str| {
            let mut cmd = Command::new(BIN);
            cmd.arg("apply").arg("--netns").arg(ns.path());
            cmd.args(Spec::default_ipv6().args());
            cmd.args(["--backend", backend]);
            cmd.stdin(Stdio::null());
            cmd
        };
        match self {
            Contender::OursNftables => apply("nftables"),
            Contender::OursIptablesLegacy => apply("iptables-legacy"),
            Contender::CniAdd => {
                let mut cmd = Command::new(BIN);
                cmd.env("CNI_COMMAND", "ADD")
                    .env("CNI_CONTAINERID", format!("bench{}", std::process::id()))
                    .env("CNI_NETNS", ns.path())
                    .env("CNI_IFNAME", "eth0")
                    .env("CNI_PATH", "/opt/cni/bin")
                    .stdin(std::fs::File::open(cni_conf).expect("CNI configuration"));
                cmd
            }
            Contender::IstioIptablesSequence => {
                let mut cmd = Command::new("/bin/sh");
                cmd.arg(SEQUENCE).stdin(Stdio::null());
                ns.enter_in_child(&mut cmd);
                cmd
            }
        }
    }
}

fn quiet(cmd: &mut Command) -> &mut Command {
    cmd.stdout(Stdio::null()).stderr(Stdio::null())
}

/// Nearest-rank percentile of sorted durations.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Waits for `n` children of this process, whatever their order: pid → (exit time, status).
fn reaper(
    n: usize,
) -> (
    std::thread::JoinHandle<()>,
    mpsc::Receiver<(i32, Instant, i32)>,
) {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let mut reaped = 0;
        while reaped < n {
            let mut status = 0;
            // SAFETY: waitpid with a valid out-pointer; this process has no other children
            // while a round runs.
            let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
            let now = Instant::now();
            if pid < 0 {
                // ECHILD: the next child is not started yet.
                std::thread::sleep(Duration::from_micros(50));
                continue;
            }
            reaped += 1;
            let _ = tx.send((pid, now, status));
        }
    });
    (handle, rx)
}

struct Round {
    total: Duration,
    per_pod: Vec<Duration>,
}

/// One round: `pods` fresh namespaces, all processes started without waiting.
fn round(contender: Contender, pods: usize, cni_conf: &std::path::Path) -> Round {
    let spaces: Vec<ScratchNetns> = (0..pods).map(|_| ScratchNetns::new()).collect();
    let mut commands: Vec<Command> = spaces
        .iter()
        .map(|ns| contender.command(ns, cni_conf))
        .collect();
    let (reaper, rx) = reaper(pods);
    let mut started = HashMap::new();
    let first = Instant::now();
    for cmd in &mut commands {
        let t = Instant::now();
        let child = quiet(cmd).spawn().expect("spawn");
        started.insert(child.id() as i32, t);
        // The reaper thread waits for it (std's `Child` does not reap on drop).
        drop(child);
    }
    reaper.join().expect("reaper");
    let mut per_pod = Vec::new();
    let mut last = first;
    for (pid, end, status) in rx.try_iter() {
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{}: a pod's process failed (wait status {status:#x})",
            contender.label()
        );
        per_pod.push(end - started[&pid]);
        last = last.max(end);
    }
    assert_eq!(per_pod.len(), pods);
    if contender == Contender::OursNftables {
        let cfg = Spec::default_ipv6().config();
        for ns in &spaces {
            let drift = engine::verify(&ns.netns(), &cfg, BackendChoice::Nftables)
                .expect("verify")
                .differences;
            assert!(
                drift.is_empty(),
                "drift after a concurrent apply: {drift:?}"
            );
        }
    }
    drop(spaces);
    // Let the kernel finish deleting the namespaces before the next round is timed.
    std::thread::sleep(Duration::from_millis(300));
    Round {
        total: last - first,
        per_pod,
    }
}

fn concurrent_pods(pods: usize, rounds: usize) {
    let contenders = [
        Contender::OursNftables,
        Contender::OursIptablesLegacy,
        Contender::CniAdd,
        Contender::IstioIptablesSequence,
    ];
    let cni_conf =
        std::env::temp_dir().join(format!("mesh-redirect-bench-{}.json", std::process::id()));
    std::fs::write(&cni_conf, CNI_CONF).expect("writing the CNI configuration");
    let mut results: HashMap<&str, Vec<Round>> = HashMap::new();
    // Warm-up round each (modules, page cache), not counted.
    for c in contenders {
        round(c, pods.min(10), &cni_conf);
    }
    for r in 0..rounds {
        // Rotate the order so that none always runs right after the same other one.
        let mut order = contenders.to_vec();
        order.rotate_left(r % contenders.len());
        for c in order {
            results
                .entry(c.label())
                .or_default()
                .push(round(c, pods, &cni_conf));
        }
    }
    let _ = std::fs::remove_file(&cni_conf);
    println!(
        "\n{pods} pods set up concurrently, each in its own fresh namespace ({rounds} rounds)\n"
    );
    println!("| contender | total wall (median of rounds) | per pod p50 | per pod p99 | per pod max | total vs ours |");
    println!("|---|---|---|---|---|---|");
    let summary = |rs: &[Round]| {
        let mut totals: Vec<Duration> = rs.iter().map(|r| r.total).collect();
        totals.sort();
        let mut all: Vec<Duration> = rs.iter().flat_map(|r| r.per_pod.clone()).collect();
        all.sort();
        (pct(&totals, 0.5), all)
    };
    let (ours_total, _) = summary(&results[Contender::OursNftables.label()]);
    for c in contenders {
        let (total, all) = summary(&results[c.label()]);
        println!(
            "| {} | {} | {} | {} | {} | {:.1}× |",
            c.label(),
            ms(total),
            ms(pct(&all, 0.5)),
            ms(pct(&all, 0.99)),
            ms(*all.last().expect("runs")),
            total.as_secs_f64() / ours_total.as_secs_f64()
        );
    }
}

fn rule_count_sweep(runs: usize) {
    let mut specs = vec![Spec::default_ipv6()];
    specs.extend([10, 100, 500, 1000].map(Spec::large));
    println!("\nmesh-redirect apply against rule count, both backends: whole process, fresh namespace per run, {runs} runs each\n");
    println!("| backend | configuration | rules | netlink messages | batch bytes | median | p95 |");
    println!("|---|---|---|---|---|---|---|");
    for backend in ["nftables", "iptables-legacy"] {
        for spec in &specs {
            let cfg = spec.config();
            let plan = engine::plan(&cfg, Backend::Nftables);
            let batch = encode(&plan, Shape::Create, 1);
            let args = spec.args();
            let mut times = Vec::new();
            for _ in 0..runs + 3 {
                let ns = ScratchNetns::new();
                let mut cmd = Command::new(BIN);
                cmd.arg("apply")
                    .arg("--netns")
                    .arg(ns.path())
                    .args(["--backend", backend])
                    .args(&args);
                let start = Instant::now();
                let status = quiet(&mut cmd).status().expect("run");
                times.push(start.elapsed());
                assert!(status.success(), "{} {backend}: apply failed", spec.name);
                drop(ns);
            }
            // The first three are warm-up.
            let mut times = times.split_off(3);
            times.sort();
            let (messages, bytes) = if backend == "nftables" {
                (
                    batch.messages.len().to_string(),
                    batch.bytes.len().to_string(),
                )
            } else {
                ("—".to_string(), "—".to_string())
            };
            println!(
                "| {backend} | {} | {} | {messages} | {bytes} | {} | {} |",
                spec.name,
                plan.rule_count(),
                ms(pct(&times, 0.5)),
                ms(pct(&times, 0.95))
            );
        }
    }
}

fn main() {
    require_root();
    if bench_mode() {
        concurrent_pods(110, 5);
        rule_count_sweep(60);
    } else {
        concurrent_pods(3, 1);
        rule_count_sweep(2);
    }
}
