//! The agent's reconciler in real namespaces (root), against a local HTTPS API server with
//! list/watch/patch/delete/events (`support/watch_apiserver.rs`):
//!
//! * a meshed pod whose namespace exists (a dummy `eth0` holding the pod IP, a process living
//!   in it) but has no rules — "started before the plugin" — is captured within one pass:
//!   the kernel state equals a CNI ADD's, and a connection from an application uid lands on
//!   15001; rules deleted by hand (drift) come back;
//! * a pod without the sidecar, an excluded namespace, a pod with `istio-init`, a
//!   host-network pod with the node's IP (and a pod object claiming the node's IP): nothing
//!   is written anywhere, and the host's namespace never gains a table or chain of ours;
//! * `label` and `delete` make exactly the API calls described (one merge patch; one delete
//!   with uid and resourceVersion preconditions), an Event each, and no rule;
//! * `--remove-taint` removes the taint only after install + sync; the conflist entry
//!   survives an agent restart.

#[path = "support/agent_process.rs"]
mod agent_process;
mod support;
#[path = "support/traffic.rs"]
mod traffic;
#[path = "support/watch_apiserver.rs"]
mod watch_apiserver;

use agent_process::{Agent, NodeDirs, NODE};
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};
use support::pod_netns::PodNetns;
use support::*;
use traffic::Server;
use watch_apiserver::WatchApiServer;

/// A running meshed pod (Istio-injected: `istio-proxy` beside `app`) on our node.
fn meshed(namespace: &str, name: &str, ip: Ipv4Addr) -> Value {
    let desc = json!({"containers": ["app", "istio-proxy"],
        "annotations": {"sidecar.istio.io/status": "{\"containers\":[\"istio-proxy\"]}"}});
    let mut pod = pod_object(&desc, namespace, name);
    pod["metadata"]["uid"] = json!(format!("uid-{name}-{}", unique("u")));
    pod["spec"]["nodeName"] = json!(NODE);
    pod["status"] =
        json!({"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]});
    pod
}

fn agent(server: &WatchApiServer, dir: &TempDir, extra: &[&str]) -> Agent {
    let mut args = vec!["--no-install", "--reconcile-interval", "1"];
    if !extra.contains(&"--backend") {
        args.extend(["--backend", "nftables"]);
    }
    args.extend_from_slice(extra);
    Agent::start_with(server, dir.path(), &args, &[])
}

fn wait(what: &str, ok: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// `nft list ruleset` in a namespace.
fn ruleset(netns: &str) -> String {
    run_ok(Command::new("ip").args(["netns", "exec", netns, "nft", "list", "ruleset"]))
}

/// Our tables and chains are nowhere in the host's namespace (nftables and legacy xtables).
fn assert_host_has_nothing_of_ours() {
    let nft = run_ok(Command::new("nft").args(["list", "ruleset"]));
    assert!(
        !nft.contains("istio-proxy"),
        "the host gained a table of ours:\n{nft}"
    );
    for save in ["iptables-legacy-save", "ip6tables-legacy-save"] {
        let text = run_ok(&mut Command::new(save));
        assert!(
            !text.contains("ISTIO_"),
            "the host gained a chain of ours ({save}):\n{text}"
        );
    }
    assert_no_forwarding();
}

/// A namespace where a CNI ADD (Kubernetes mode, the pod read from the server, `backend`)
/// programmed `pod`.
fn added(server: &WatchApiServer, pod: &Value, ip: Ipv4Addr, backend: &str) -> TestNetns {
    let ns = TestNetns::new("rcadd");
    let conf = json!({"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "mesh-redirect",
        "kubernetes": {"kubeconfig": server.kubeconfig_file()}, "backend": backend,
        "agent_socket": "/nonexistent/agent.sock",
        "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": format!("{ip}/24")}]}});
    let m = &pod["metadata"];
    let args = format!(
        "K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_UID={}",
        m["namespace"].as_str().unwrap(),
        m["name"].as_str().unwrap(),
        m["uid"].as_str().unwrap()
    );
    let path = ns.path();
    let mut env = cni_env("ADD", &path);
    env.push(("CNI_ARGS", &args));
    let out = cni(&env, &conf.to_string());
    assert!(out.status.success(), "ADD: {}", stderr_of(&out));
    ns
}

#[test]
fn a_pod_started_before_the_plugin_is_captured_within_one_pass_and_so_is_drift() {
    require_root();
    assert_host_has_nothing_of_ours();
    let server = WatchApiServer::start();
    let ip = Ipv4Addr::new(10, 231, 1, 5);
    let pod_ns = PodNetns::new("rcfix", ip, None);
    assert_eq!(ruleset(pod_ns.name()), "", "no rules before the agent");
    let pod = meshed("apps", "early", ip);
    server.put_pod(pod.clone());
    let dir = TempDir::new("rcfix", &[]);
    let agent = agent(&server, &dir, &[]);
    wait("the redirect in the pod's namespace", || {
        ruleset(pod_ns.name()).contains("istio-proxy-nat")
    });
    let repaired = ruleset(pod_ns.name());
    assert_eq!(
        repaired,
        added(&server, &pod, ip, "nftables").ruleset(),
        "what a CNI ADD programs"
    );
    assert_application_lands_on_15001(&pod_ns, Ipv4Addr::new(10, 231, 1, 99));
    wait("the repair metric", || {
        agent.metric("mesh_redirect_repairs_total{mode=\"repair\",result=\"success\"}") >= 1.0
    });
    // Drift: the outbound chain's rules deleted by hand come back within a pass.
    run_ok(Command::new("ip").args([
        "netns",
        "exec",
        pod_ns.name(),
        "nft",
        "flush",
        "table",
        "inet",
        "istio-proxy-nat",
    ]));
    assert_ne!(ruleset(pod_ns.name()), repaired);
    wait("the drifted rules back", || {
        ruleset(pod_ns.name()) == repaired
    });
    assert!(agent.metric("mesh_redirect_drift_detected_total") >= 2.0);
    // The Event follows the repair: the rules may be back before it is posted.
    wait("the second repair's Event", || {
        server
            .events()
            .iter()
            .filter(|e| e["reason"] == "RedirectRepaired")
            .count()
            >= 2
    });
    let events = server.events();
    assert!(
        events
            .iter()
            .filter(|e| e["reason"] == "RedirectRepaired")
            .count()
            >= 2,
        "{events:?}"
    );
    assert_eq!(events[0]["involvedObject"]["uid"], pod["metadata"]["uid"]);
    assert_host_has_nothing_of_ours();
}

#[test]
fn with_the_legacy_backend_the_repair_is_a_cni_adds_state_too() {
    require_root();
    assert_host_has_nothing_of_ours();
    let server = WatchApiServer::start();
    let ip = Ipv4Addr::new(10, 231, 5, 5);
    let pod_ns = PodNetns::new("rclegacy", ip, None);
    let pod = meshed("apps", "early-legacy", ip);
    server.put_pod(pod.clone());
    let dir = TempDir::new("rclegacy", &[]);
    let _agent = agent(&server, &dir, &["--backend", "iptables-legacy"]);
    let state = || pod_ns.netns().legacy_saved(false);
    wait("the legacy redirect in the pod's namespace", || {
        state().contains("ISTIO_OUTPUT")
    });
    let reference = added(&server, &pod, ip, "iptables-legacy");
    assert_eq!(
        state(),
        reference.legacy_saved(false),
        "what a CNI ADD programs"
    );
    assert_eq!(ruleset(pod_ns.name()), "", "no nftables table besides");
    assert_application_lands_on_15001(&pod_ns, Ipv4Addr::new(10, 231, 5, 99));
    assert_host_has_nothing_of_ours();
}

/// A connection from an application uid (1000) in the pod to `dst`:8080 lands on the
/// proxy's outbound listener (15001) with its original destination.
fn assert_application_lands_on_15001(pod_ns: &PodNetns, dst: Ipv4Addr) {
    let _proxy = Server::start(
        pod_ns.name(),
        "0.0.0.0:15001".parse().unwrap(),
        "outbound",
        true,
    );
    let dst = SocketAddr::new(IpAddr::V4(dst), 8080);
    traffic::assert_lands_as(
        pod_ns.name(),
        1000,
        1000,
        dst,
        "outbound",
        "an application's connection",
    );
}

/// One of the host's own (non-loopback) IPv4 addresses: a host-network pod's IP.
fn a_host_address() -> Ipv4Addr {
    let text = run_ok(Command::new("ip").args(["-4", "-o", "addr", "show", "scope", "global"]));
    text.lines()
        .find_map(|l| l.split_whitespace().nth(3)?.split('/').next()?.parse().ok())
        .expect("the host has a global IPv4 address")
}

#[test]
fn pods_the_add_would_not_redirect_and_the_host_get_nothing() {
    require_root();
    assert_host_has_nothing_of_ours();
    let server = WatchApiServer::start();
    let ip = |n| Ipv4Addr::new(10, 231, 2, n);
    let namespaces: Vec<PodNetns> = (10..15)
        .map(|n| PodNetns::new("rcskip", ip(n), None))
        .collect();
    let mut no_sidecar = meshed("apps", "plain", ip(10));
    no_sidecar["spec"]["containers"] = json!([{"name": "app"}]);
    let excluded = meshed("skipme", "excluded", ip(11));
    let mut with_init = meshed("apps", "init", ip(12));
    with_init["spec"]["initContainers"] = json!([{"name": "istio-init"}]);
    let host = a_host_address();
    let mut host_network = meshed("apps", "hostnet", host);
    host_network["spec"]["hostNetwork"] = json!(true);
    // A pod object claiming the node's IP without hostNetwork: refused, never entered.
    let claims_host = meshed("apps", "claims-host", host);
    // The control: a meshed pod that does get captured, in the same passes.
    let control = meshed("apps", "control", ip(14));
    for p in [
        no_sidecar,
        excluded,
        with_init,
        host_network,
        claims_host,
        control,
    ] {
        server.put_pod(p);
    }
    let dir = TempDir::new("rcskip", &[]);
    let agent = agent(&server, &dir, &["--exclude-namespaces", "skipme"]);
    wait("the control pod captured", || {
        ruleset(namespaces[4].name()).contains("istio-proxy-nat")
    });
    wait("two more passes", || {
        agent.metric("mesh_redirect_reconcile_passes_total{result=\"ok\"}") >= 3.0
    });
    for ns in &namespaces[..4] {
        let state = ruleset(ns.name());
        assert_eq!(state, "", "{} gained rules", ns.name());
    }
    assert!(agent.metric("mesh_redirect_reconcile_refused_total{reason=\"host_netns\"}") >= 1.0);
    assert_eq!(
        agent.metric("mesh_redirect_repairs_total{mode=\"repair\",result=\"failure\"}"),
        0.0
    );
    assert_host_has_nothing_of_ours();
}

#[test]
fn label_mode_labels_the_pod_with_one_merge_patch_and_writes_no_rule() {
    require_root();
    let server = WatchApiServer::start();
    let ip = Ipv4Addr::new(10, 231, 3, 5);
    let pod_ns = PodNetns::new("rclabel", ip, None);
    let pod = meshed("apps", "tolabel", ip);
    server.put_pod(pod.clone());
    let dir = TempDir::new("rclabel", &[]);
    let agent = agent(&server, &dir, &["--repair-mode", "label"]);
    let path = "/api/v1/namespaces/apps/pods/tolabel";
    wait("the label patch", || {
        !server.requests_matching("PATCH", path).is_empty()
    });
    wait("two more passes", || {
        agent.metric("mesh_redirect_reconcile_passes_total{result=\"ok\"}") >= 3.0
    });
    let patches = server.requests_matching("PATCH", path);
    assert_eq!(patches.len(), 1, "labeled once, not every pass");
    assert_eq!(
        patches[0].content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(
        patches[0].body,
        Some(json!({"metadata": {"labels": {"mesh-redirect.io/uninitialized": "true"}}}))
    );
    let stored = server.pod("apps", "tolabel").unwrap();
    assert_eq!(
        stored["metadata"]["labels"]["mesh-redirect.io/uninitialized"],
        "true"
    );
    assert!(server.requests_matching("DELETE", "/api/v1/").is_empty());
    let events = server.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["reason"], "RedirectMissing");
    assert_eq!(events[0]["involvedObject"]["uid"], pod["metadata"]["uid"]);
    assert_eq!(ruleset(pod_ns.name()), "", "label mode writes no rule");
    assert_eq!(
        agent.metric("mesh_redirect_repairs_total{mode=\"label\",result=\"success\"}"),
        1.0
    );
}

#[test]
fn delete_mode_deletes_the_pod_with_uid_and_resource_version_preconditions() {
    require_root();
    let server = WatchApiServer::start();
    let ip = Ipv4Addr::new(10, 231, 4, 5);
    let pod_ns = PodNetns::new("rcdel", ip, None);
    server.put_pod(meshed("apps", "todelete", ip));
    let pod = server.pod("apps", "todelete").unwrap();
    let dir = TempDir::new("rcdel", &[]);
    let agent = agent(&server, &dir, &["--repair-mode", "delete"]);
    let path = "/api/v1/namespaces/apps/pods/todelete";
    wait("the delete", || server.pod("apps", "todelete").is_none());
    let deletes = server.requests_matching("DELETE", path);
    assert_eq!(deletes.len(), 1);
    let pre = &deletes[0].body.as_ref().expect("DeleteOptions")["preconditions"];
    assert_eq!(pre["uid"], pod["metadata"]["uid"]);
    assert_eq!(pre["resourceVersion"], pod["metadata"]["resourceVersion"]);
    assert!(server
        .requests_matching("PATCH", "/api/v1/namespaces/")
        .is_empty());
    wait("the Event", || !server.events().is_empty());
    let events = server.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["reason"], "RedirectMissing");
    assert_eq!(ruleset(pod_ns.name()), "", "delete mode writes no rule");
    assert_eq!(
        agent.metric("mesh_redirect_repairs_total{mode=\"delete\",result=\"success\"}"),
        1.0
    );
}

fn tainted_node() -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE},
        "spec": {"taints": [
            {"key": "mesh-redirect.io/not-ready", "effect": "NoSchedule"},
            {"key": "example.com/maintenance", "value": "yes", "effect": "NoExecute"}]}})
}

#[test]
fn the_taint_goes_only_after_install_and_sync_and_the_conflist_entry_survives_a_restart() {
    require_root();
    let server = WatchApiServer::start();
    server.put_node(tainted_node());
    server.hold_lists(true);
    let node = NodeDirs::new();
    let dir = TempDir::new("rctaint", &[]);
    let mut args: Vec<&str> = node.args.iter().map(String::as_str).collect();
    args.extend(["--remove-taint", "--repair-mode", "off"]);
    let mut agent = Agent::start_with(&server, dir.path(), &args, &NodeDirs::ENV);
    wait("the install", || node.dir.join("ready").exists());
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        server
            .requests_matching("PATCH", "/api/v1/nodes/")
            .is_empty(),
        "installed but not synced: the taint stays"
    );
    server.hold_lists(false);
    wait("the taint removed", || {
        let taints = server.node(NODE).unwrap()["spec"]["taints"].clone();
        taints.as_array().is_some_and(|t| t.len() == 1)
    });
    let taints = &server.node(NODE).unwrap()["spec"]["taints"];
    assert_eq!(
        taints[0]["key"], "example.com/maintenance",
        "others' taints are kept"
    );
    // An agent restart (SIGTERM, the default CLEANUP_ON_EXIT=false) keeps the entry.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGTERM) };
    assert!(agent.child.wait().unwrap().success());
    let ours = |c: &Value| {
        c["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["type"] == "mesh-redirect")
            .count()
    };
    assert_eq!(
        ours(&node.conflist()),
        1,
        "the entry stays while the agent is down"
    );
    let again = Agent::start_with(&server, dir.path(), &args, &NodeDirs::ENV);
    again.ready();
    assert_eq!(
        ours(&node.conflist()),
        1,
        "and is not doubled by the restart"
    );
    assert_eq!(
        server.requests_matching("PATCH", "/api/v1/nodes/").len(),
        1,
        "nothing left to remove"
    );
}

#[test]
fn bad_reconciler_flags_are_refused_naming_the_flag_and_value_before_anything_starts() {
    let dir = TempDir::new("rcflags", &[]);
    let socket = dir.join("agent.sock");
    for (args, flag, value) in [
        (
            &["--repair-mode", "restart"][..],
            "--repair-mode",
            "\"restart\"",
        ),
        (
            &["--reconcile-interval", "0"],
            "--reconcile-interval",
            "\"0\"",
        ),
        (
            &["--reconcile-interval", "1m"],
            "--reconcile-interval",
            "\"1m\"",
        ),
        (&["--remove-taint=maybe"], "--remove-taint", "\"maybe\""),
        (
            &["--plugin-config", r#"{"mode":"static"}"#],
            "--repair-mode",
            "static",
        ),
    ] {
        let out = run(Command::new(env!("CARGO_BIN_EXE_mesh-redirect-agent"))
            .args([
                "--node-name",
                NODE,
                "--no-install",
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .arg("--socket")
            .arg(&socket)
            .args(args));
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(5), "{args:?}: {err}");
        assert!(err.contains(flag) && err.contains(value), "{args:?}: {err}");
        assert!(!socket.exists(), "{args:?}: nothing was started");
    }
}
