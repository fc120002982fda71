//! CNI ADD in Kubernetes mode with the node agent, whole processes (`cargo bench --bench
//! agent_add`, as root), against a local HTTPS API server that serves list + watch and pod
//! GETs and counts every request (`integration/support/watch_apiserver.rs`):
//!
//! 1. **One ADD at a time, interleaved run by run** (round 1: A, B, C; round 2: B, C, A; …;
//!    a fresh namespace per run): a static-mode ADD (settings from the plugin configuration,
//!    no API call), a Kubernetes-mode ADD whose pod the agent has cached (cache hit), and a
//!    Kubernetes-mode ADD without an agent (the plugin GETs the pod). Median and p95 per row,
//!    the median of the per-round ratio to the static ADD, and the API server's requests
//!    during each row's runs (the cache row must make none).
//! 2. **110 concurrent ADDs** (Kubernetes' default `maxPods`): 110 pods, all started back to
//!    back without waiting, through the agent against direct GETs, alternating, 5 rounds
//!    each: total wall time and per-pod latency, and the API server's requests.
//!
//! The plugin and the agent are this build's (`CARGO_BIN_EXE_*`) unless
//! `MESH_REDIRECT_PLUGIN` / `MESH_REDIRECT_AGENT_BINARY` name others (the static release
//! binaries of `scripts/build-release.sh`). Under `cargo test --all-targets` (no `--bench`
//! argument) it is a smoke test: 3 rounds, 3 concurrent pods, 1 round.
//!
//! Network safety: the API server and the agent's metrics listen on 127.0.0.1 of the host;
//! pods' namespaces are anonymous, get no interface but `lo`, and are deleted with their guard.

#[path = "../integration/support/agent_process.rs"]
mod agent_process;
mod common;
#[path = "../integration/support/mod.rs"]
mod support;
#[path = "../integration/support/watch_apiserver.rs"]
mod watch_apiserver;

use common::{bench_mode, require_root, ScratchNetns};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use watch_apiserver::WatchApiServer;

use agent_process::{Agent, NODE};

fn plugin() -> String {
    std::env::var("MESH_REDIRECT_PLUGIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_mesh-redirect").to_string())
}

/// The same primary-plugin result for every mode: IPv4 only.
fn prev_result() -> Value {
    json!({"cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}],
        "ips": [{"interface": 0, "address": "10.244.1.7/24"}]})
}

fn static_conf() -> String {
    json!({"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "mesh-redirect",
        "mode": "static", "backend": "nftables", "redirect": {},
        "prevResult": prev_result()})
    .to_string()
}

/// Kubernetes mode; `socket` is the agent's (a path where nothing listens: direct GETs).
fn kube_conf(kubeconfig: &Path, socket: &Path) -> String {
    json!({"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "mesh-redirect",
        "kubernetes": {"kubeconfig": kubeconfig}, "backend": "nftables",
        "api_timeout": "5s", "agent_socket": socket, "prevResult": prev_result()})
    .to_string()
}

/// A sidecar pod of Istio's default configuration on this node.
fn pod(name: &str) -> Value {
    let cases = support::cni_cases();
    let basic = cases
        .iter()
        .find(|c| c.name == "basic")
        .expect("basic case");
    let mut p = support::pod_object(&basic.pod, "apps", name);
    p["metadata"]["uid"] = json!(format!("uid-{name}"));
    p["spec"]["nodeName"] = json!(NODE);
    p
}

/// A plugin process for one ADD, its configuration written to `conf_file` (its stdin).
fn add_command(ns: &ScratchNetns, pod: &str, conf_file: &Path) -> Command {
    let mut cmd = Command::new(plugin());
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", format!("c0ffee{pod}"))
        .env("CNI_NETNS", ns.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .env(
            "CNI_ARGS",
            format!("K8S_POD_NAMESPACE=apps;K8S_POD_NAME={pod};K8S_POD_UID=uid-{pod}"),
        )
        .stdin(std::fs::File::open(conf_file).expect("configuration file"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// Every request the API server has counted.
fn requests(server: &WatchApiServer) -> usize {
    server.all_pod_gets() + server.count("list") + server.count("watch")
}

/// Nearest-rank percentile of sorted durations.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

struct Row {
    name: &'static str,
    conf: PathBuf,
    times: Vec<Duration>,
    /// Pod GETs, and all requests, the API server counted during this row's timed runs.
    pod_gets: usize,
    requests: usize,
}

/// One ADD of `row` into a fresh namespace: its time, and the API server's (pod GETs, all
/// requests) meanwhile.
fn one_add(row: &Row, server: &WatchApiServer, pod: &str) -> (Duration, usize, usize) {
    let ns = ScratchNetns::new();
    let mut cmd = add_command(&ns, pod, &row.conf);
    let (gets, all) = (server.all_pod_gets(), requests(server));
    let start = Instant::now();
    let status = cmd.status().expect("run the plugin");
    let took = start.elapsed();
    assert!(status.success(), "{}: the ADD failed ({status})", row.name);
    (took, server.all_pod_gets() - gets, requests(server) - all)
}

/// Part 1: the rows interleaved run by run, the first row of each round rotating.
fn interleaved(rows: &mut [Row], server: &WatchApiServer, rounds: usize, warmup: usize) {
    let n = rows.len();
    for round in 0..warmup + rounds {
        for k in 0..n {
            let row = &mut rows[(round + k) % n];
            let (took, gets, all) = one_add(row, server, "p0");
            if round >= warmup {
                row.times.push(took);
                row.pod_gets += gets;
                row.requests += all;
            }
            // Deleting a namespace is asynchronous: let its cleanup pass before the next.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    println!(
        "\n| CNI ADD, one at a time ({rounds} interleaved rounds) | median | p95 | per-round ratio to static (median) | pod GETs / all API requests in its {rounds} runs |"
    );
    println!("|---|---|---|---|---|");
    for row in rows.iter() {
        let mut ratios: Vec<f64> = row
            .times
            .iter()
            .zip(&rows[0].times)
            .map(|(t, r)| t.as_secs_f64() / r.as_secs_f64())
            .collect();
        ratios.sort_by(f64::total_cmp);
        let mut sorted = row.times.clone();
        sorted.sort();
        println!(
            "| {} | {} | {} | {:.2}× | {} / {} |",
            row.name,
            ms(pct(&sorted, 0.5)),
            ms(pct(&sorted, 0.95)),
            ratios[ratios.len() / 2],
            row.pod_gets,
            row.requests
        );
    }
}

/// Part 2, one round: `pods` ADDs started back to back; (total wall, per-pod latencies).
fn concurrent_round(pods: usize, conf: &Path) -> (Duration, Vec<Duration>) {
    let spaces: Vec<ScratchNetns> = (0..pods).map(|_| ScratchNetns::new()).collect();
    let mut commands: Vec<Command> = spaces
        .iter()
        .enumerate()
        .map(|(i, ns)| add_command(ns, &format!("p{i}"), conf))
        .collect();
    let first = Instant::now();
    let mut started = HashMap::new();
    for cmd in &mut commands {
        let t = Instant::now();
        let child = cmd.spawn().expect("spawn the plugin");
        started.insert(child.id() as i32, t);
        // Reaped below by waitpid (std's `Child` does not reap on drop).
        drop(child);
    }
    let mut per_pod = Vec::new();
    let mut last = first;
    while per_pod.len() < pods {
        let mut status = 0;
        // SAFETY: waitpid with a valid out-pointer. The agent is a child too: it does not
        // exit while a round runs, and a pid not started here is not counted.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        let end = Instant::now();
        let Some(t) = started.remove(&pid) else {
            assert!(pid > 0, "waitpid failed");
            continue;
        };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "a concurrent ADD failed (wait status {status:#x})"
        );
        per_pod.push(end - t);
        last = last.max(end);
    }
    (last - first, per_pod)
}

/// Part 2: the agent's rounds and the direct GETs' rounds, alternating.
fn concurrent(
    rows: &[(&'static str, PathBuf)],
    server: &WatchApiServer,
    pods: usize,
    rounds: usize,
) {
    println!(
        "\n| {pods} concurrent CNI ADDs ({rounds} rounds each, alternating) | total wall (median of rounds) | per pod p50 | per pod p99 | pod GETs per round |"
    );
    println!("|---|---|---|---|---|");
    let mut results: Vec<(Vec<Duration>, Vec<Duration>, usize)> =
        vec![Default::default(); rows.len()];
    for _ in 0..rounds {
        for (i, (_, conf)) in rows.iter().enumerate() {
            let before = server.all_pod_gets();
            let (total, per_pod) = concurrent_round(pods, conf);
            results[i].0.push(total);
            results[i].1.extend(per_pod);
            results[i].2 = results[i].2.max(server.all_pod_gets() - before);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    for ((name, _), (mut totals, mut per_pod, reqs)) in rows.iter().zip(results) {
        totals.sort();
        per_pod.sort();
        println!(
            "| {name} | {} | {} | {} | {reqs} (max) |",
            ms(pct(&totals, 0.5)),
            ms(pct(&per_pod, 0.5)),
            ms(pct(&per_pod, 0.99))
        );
    }
}

fn main() {
    require_root();
    let (rounds, warmup, pods, concurrent_rounds) = match bench_mode() {
        true => (100, 5, 110, 5),
        false => (3, 1, 3, 1),
    };
    let server = WatchApiServer::start();
    for i in 0..pods.max(1) {
        server.put_pod(pod(&format!("p{i}")));
    }
    let dir = support::TempDir::new("agent-bench", &[]);
    // At the agent's default log level (the test harness logs at debug).
    let agent = Agent::start_with(
        &server,
        &dir,
        &["--no-install"],
        &[("MESH_REDIRECT_LOG", "info")],
    );
    agent.ready();
    let kubeconfig = server.kubeconfig_file();
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write a configuration");
        p
    };
    let static_file = write("static.json", static_conf());
    let cache_file = write("cache.json", kube_conf(&kubeconfig, &agent.socket));
    let get_file = write(
        "get.json",
        kube_conf(&kubeconfig, &dir.join("no-agent.sock")),
    );
    let row = |name, conf: &PathBuf| Row {
        name,
        conf: conf.clone(),
        times: Vec::new(),
        pod_gets: 0,
        requests: 0,
    };
    let mut rows = [
        row("static mode (no API call)", &static_file),
        row("Kubernetes mode, agent cache hit", &cache_file),
        row("Kubernetes mode, direct GET (no agent)", &get_file),
    ];
    interleaved(&mut rows, &server, rounds, warmup);
    assert_eq!(
        rows[1].pod_gets, 0,
        "an ADD answered from the cache asked the API server"
    );
    concurrent(
        &[
            ("with the agent (cache hits)", cache_file),
            ("direct GETs (no agent)", get_file),
        ],
        &server,
        pods,
        concurrent_rounds,
    );
    println!(
        "\n{} cores, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}
