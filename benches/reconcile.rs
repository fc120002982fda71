//! What a reconcile pass costs when there is nothing to do: 110 meshed pods (Kubernetes'
//! default maximum per node), each in a namespace of its own with an `eth0` (veth) holding its
//! IP and a process living in it, every one with its rules in place. One pass scans
//! `/proc`, reads every namespace's addresses, locates each pod and verifies its rules.
//!
//! The measurement is the process's **CPU time** (user + system of all its threads,
//! `getrusage(RUSAGE_SELF)`) per pass, through criterion's `iter_custom`; the wall time per
//! pass is printed beside it. Root; the namespaces (`mrrcb-<pid>-<i>`) and their processes
//! are removed at the end, also on a panic.
//!
//! `cargo bench --bench reconcile` (110 pods); under `cargo test --all-targets` it runs once
//! with 4 pods as a smoke test.

use mesh_redirect::agent::reconcile::{check_pods, ProcNode, RepairMode, Verdict};
use mesh_redirect::backend::BackendChoice;
use mesh_redirect::cni::expected::{self, Expected};
use mesh_redirect::cni::netconf::NetConf;
use mesh_redirect::netns::Netns;
use serde_json::{json, Value};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

/// The pods' namespaces and their processes; removed when dropped.
struct Pods {
    names: Vec<String>,
    sleepers: Vec<Child>,
}

impl Drop for Pods {
    fn drop(&mut self) {
        for c in &mut self.sleepers {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {}", args.join(" "));
}

fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 233, (i / 200) as u8, (i % 200 + 2) as u8)
}

fn pod(i: usize) -> Arc<Value> {
    let ip = pod_ip(i).to_string();
    Arc::new(json!({
        "metadata": {"namespace": "apps", "name": format!("p{i}"), "uid": format!("u{i}"), "resourceVersion": "1",
            "annotations": {"sidecar.istio.io/status": "{}"}},
        "spec": {"containers": [{"name": "app"}, {"name": "istio-proxy"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    }))
}

fn conf() -> NetConf {
    NetConf::parse(
        br#"{"cniVersion":"1.0.0","name":"n","type":"mesh-redirect","backend":"nftables"}"#,
    )
    .expect("plugin configuration")
}

/// `n` pods with namespaces, processes and their rules in place.
fn make_pods(n: usize, conf: &NetConf) -> (Pods, Vec<Arc<Value>>) {
    let mut pods = Pods {
        names: Vec::new(),
        sleepers: Vec::new(),
    };
    let mut objects = Vec::new();
    for i in 0..n {
        let name = format!("mrrcb-{}-{i}", std::process::id());
        ip(&["netns", "add", &name]);
        pods.names.push(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        // A veth pair inside the namespace (this kernel has no dummy driver): `eth0` holds
        // the pod IP, as the primary plugin's interface does.
        ip(&[
            "-n", &name, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
        ]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{}/24", pod_ip(i)),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &name, "link", "set", "eth0", "up"]);
        ip(&["-n", &name, "link", "set", "peer0", "up"]);
        let sleeper = Command::new("ip")
            .args(["netns", "exec", &name, "sleep", "3600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("a process in the namespace");
        pods.sleepers.push(sleeper);
        let object = pod(i);
        let Ok(Expected::Redirect { cfg, .. }) = expected::for_pod(conf, &object, |_| Some(false))
        else {
            panic!("the bench pod is meshed")
        };
        let ns = Netns::open(&name).expect("open");
        mesh_redirect::engine::apply(&ns, &cfg, BackendChoice::Nftables).expect("apply");
        objects.push(object);
    }
    // `ip netns exec` execs sleep in the namespace: wait until every process is there.
    std::thread::sleep(Duration::from_millis(200));
    (pods, objects)
}

fn cpu_time() -> Duration {
    // SAFETY: getrusage fills a zeroed struct.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn one_pass(node: &ProcNode, conf: &NetConf, pods: &[Arc<Value>]) {
    let findings = check_pods(node, conf, RepairMode::Repair, pods, pods).expect("scan");
    for f in &findings {
        assert!(
            matches!(f.verdict, Verdict::InPlace),
            "{}: {:?}",
            f.pod,
            f.verdict
        );
    }
}

fn main() {
    common::require_root();
    let n = if common::bench_mode() { 110 } else { 4 };
    let conf = conf();
    let (_guard, pods) = make_pods(n, &conf);
    let node = ProcNode::default();
    one_pass(&node, &conf, &pods);
    let mut c = common::kernel_criterion().configure_from_args();
    let mut wall = Vec::new();
    c.bench_function(
        &format!("reconcile/{n} pods, nothing to do (CPU time per pass)"),
        |b| {
            b.iter_custom(|iters| {
                let (cpu0, t0) = (cpu_time(), Instant::now());
                for _ in 0..iters {
                    one_pass(&node, &conf, &pods);
                }
                wall.push(t0.elapsed() / iters as u32);
                cpu_time() - cpu0
            })
        },
    );
    c.final_summary();
    wall.sort();
    if let Some(median) = wall.get(wall.len() / 2) {
        println!("reconcile/{n} pods: wall time per pass, median of samples: {median:?}");
    }
}
