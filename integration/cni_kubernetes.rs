//! The CNI plugin in Kubernetes mode through the real binary, against a local HTTPS API
//! server with its own CA (127.0.0.1 only) that serves real-shaped Pod objects:
//!
//! * Istio's 9 CNI-plugin cases, both backends: the kernel state equals an independent
//!   reference (iptables-legacy: `iptables-legacy-restore` of Istio's golden; nftables: `nft -f`
//!   of `integration/fixtures/cni-nftables/<case>.nft`, the transaction Istio's nftables
//!   generator emits for the case's effective configuration, written by hand from the spec —
//!   Istio has no nftables golden for CNI cases — never produced by our `render`), and
//!   `prevResult` comes back;
//! * the API down, slower than the deadline, 404, 500, garbage, a wrong token: the right CNI
//!   error within the deadline and an untouched namespace;
//! * each eligibility rule: `prevResult` back unchanged and nothing programmed;
//! * an invalid annotation: error 7 naming it, nothing programmed.

#[path = "support/apiserver.rs"]
mod apiserver;
mod support;

use apiserver::{dead_port, pod_path, ApiServer, Reply};
use serde_json::{json, Value};
use std::process::Output;
use std::time::{Duration, Instant};
use support::*;

const TOKEN: &str = "mesh-redirect-test-token";

/// One plugin run and the time it took.
fn timed_cni(env: &[(String, String)], stdin: &str) -> (Output, Duration) {
    let start = Instant::now();
    let out = cni(env, stdin);
    (out, start.elapsed())
}

fn add_env(netns: &str, namespace: &str, pod: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = cni_env("ADD", netns)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.push(("CNI_ARGS".to_string(), format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID=c0ffee;K8S_POD_UID=7f9c1c9e")));
    env
}

fn prev_result() -> Value {
    json!({"cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x", "mac": "0a:58:0a:f4:01:07"}],
        "ips": [{"interface": 0, "address": "10.244.1.7/24", "gateway": "10.244.1.1"}],
        "routes": [{"dst": "0.0.0.0/0"}], "dns": {}})
}

fn conf(kubeconfig: &std::path::Path, backend: &str, timeout: &str) -> String {
    json!({"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "mesh-redirect",
        "kubernetes": {"kubeconfig": kubeconfig}, "exclude_namespaces": ["kube-system"],
        "plugin_log_level": "debug", "backend": backend, "api_timeout": timeout,
        "prevResult": prev_result()})
    .to_string()
}

/// Everything either backend could have written.
fn kernel(ns: &TestNetns) -> String {
    let mut s = ns.ruleset();
    s += &ns.legacy_saved(false);
    s += &ns.exec_ok(&["ip", "rule", "show"]);
    s
}

fn legacy_saved(ns: &TestNetns) -> String {
    ns.legacy_saved(false)
}

/// The case's hand-written reference transaction loaded with the real `nft -f` into a
/// fresh namespace: the kernel state Istio's nftables generator would leave.
fn istio_nft_state(case: &Case) -> String {
    let reference = cni_nft_reference(&case.name);
    assert!(
        reference.is_file(),
        "{}: no nftables reference {}",
        case.name,
        reference.display()
    );
    let listing = nft_ruleset_of(&reference);
    assert!(
        listing.contains("table inet istio-proxy-nat"),
        "{}: the reference programmed nothing",
        case.name
    );
    listing
}

/// One reference per CNI case, and no reference for a case that does not exist.
#[test]
fn every_cni_case_has_exactly_one_nftables_reference() {
    let names: std::collections::BTreeSet<String> =
        cni_cases().into_iter().map(|c| c.name).collect();
    assert_eq!(names.len(), 9, "Istio has 9 CNI-plugin cases");
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/fixtures/cni-nftables");
    let files: std::collections::BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|f| f.strip_suffix(".nft").map(str::to_string))
        .collect();
    assert_eq!(files, names, "integration/fixtures/cni-nftables/<case>.nft");
}

#[test]
fn istios_cni_cases_through_the_api_with_both_backends() {
    let server = ApiServer::builder().token(TOKEN).start();
    let kubeconfig = server.kubeconfig_file(TOKEN);
    let mut failures = Vec::new();
    for case in cni_cases() {
        server.pod(
            "default",
            &case.name,
            Reply::Pod(pod_object(&case.pod, "default", &case.name)),
        );
        for backend in ["iptables-legacy", "nftables"] {
            let ns = TestNetns::new("kc");
            let out = cni(
                &add_env(&ns.path(), "default", &case.name),
                &conf(&kubeconfig, backend, "5s"),
            );
            if !out.status.success() {
                failures.push(format!(
                    "{} {backend}: ADD failed: {}",
                    case.name,
                    String::from_utf8_lossy(&out.stdout)
                ));
                continue;
            }
            let mut expected_prev = prev_result();
            expected_prev["cniVersion"] = json!("1.0.0");
            if stdout_json(&out) != expected_prev {
                failures.push(format!(
                    "{} {backend}: prevResult not passed through",
                    case.name
                ));
            }
            let (ours, theirs) = match backend {
                "iptables-legacy" => (
                    legacy_saved(&ns),
                    istio_legacy_state(case.iptables_golden.as_ref().unwrap()),
                ),
                _ => (ns.ruleset(), istio_nft_state(&case)),
            };
            if ours != theirs {
                failures.push(format!(
                    "== {} {backend} ==\n--- istio\n{theirs}\n--- ours\n{ours}",
                    case.name
                ));
            }
        }
    }
    assert_no_forwarding();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn api_failures_give_the_right_error_within_the_deadline_and_change_nothing() {
    let deadline = Duration::from_millis(1500);
    let server = ApiServer::builder().token(TOKEN).start();
    let pod = |reply: Reply, name: &str| server.pod("default", name, reply);
    let good = pod_object(&cni_cases()[0].pod, "default", "x");
    pod(Reply::NotFound, "missing");
    pod(
        Reply::Status(
            500,
            r#"{"kind":"Status","code":500,"message":"etcdserver: request timed out"}"#.into(),
        ),
        "broken",
    );
    pod(Reply::Garbage("<html>proxy error</html>".into()), "garbage");
    pod(
        Reply::Delay(Duration::from_secs(5), Box::new(Reply::Pod(good.clone()))),
        "slow",
    );
    pod(Reply::Hang, "hang");
    pod(Reply::Pod(good), "ok");
    let good_kc = server.write_file("kc-good", &server.kubeconfig(TOKEN));
    let wrong_token = server.write_file("kc-wrong-token", &server.kubeconfig("not-the-token"));
    // The same cluster on a port nobody listens on: the API is down.
    let mut cluster = server.cluster_fields();
    cluster.retain(|(k, _)| *k != "server");
    cluster.push(("server", format!("https://127.0.0.1:{}", dead_port())));
    let down = server.write_file(
        "kc-down",
        &server.kubeconfig_with(&cluster, &[("token", TOKEN.to_string())]),
    );
    let cases: Vec<(&str, std::path::PathBuf, u64)> = vec![
        ("missing", good_kc.clone(), 11),
        ("broken", good_kc.clone(), 11),
        ("slow", good_kc.clone(), 11),
        ("hang", good_kc.clone(), 11),
        ("ok", down, 11),
        ("garbage", good_kc.clone(), 102),
        ("ok", wrong_token, 101),
    ];
    for (name, kubeconfig, code) in cases {
        let ns = TestNetns::new("kf");
        let before = kernel(&ns);
        let (out, took) = timed_cni(
            &add_env(&ns.path(), "default", name),
            &conf(&kubeconfig, "auto", "1500ms"),
        );
        assert!(!out.status.success(), "{name}: must fail");
        let err = stdout_json(&out);
        assert_eq!(
            err["code"],
            code,
            "{name} ({}): {err}",
            kubeconfig.display()
        );
        assert!(
            took < deadline + Duration::from_millis(1500),
            "{name}: answered after {took:?} (deadline {deadline:?})"
        );
        assert_eq!(kernel(&ns), before, "{name}: nothing applied");
    }
    assert_no_forwarding();
}

fn pod_with(annotations: Value, containers: Value, init: Value, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "default", "annotations": annotations, "labels": labels},
        "spec": {"containers": containers, "initContainers": init}})
}

#[test]
fn each_eligibility_rule_passes_the_pod_through_untouched() {
    let server = ApiServer::builder().token(TOKEN).start();
    let kubeconfig = server.kubeconfig_file(TOKEN);
    let status = json!({"sidecar.istio.io/status": "{\"containers\":[\"istio-proxy\"]}"});
    let two = json!([{"name": "app"}, {"name": "istio-proxy", "args": ["proxy", "sidecar"]}]);
    let rules: Vec<(&str, Value)> = vec![
        (
            "no-status",
            pod_with(json!({}), two.clone(), json!([]), json!({})),
        ),
        (
            "inject-annotation-false",
            pod_with(
                json!({"sidecar.istio.io/status": "{}", "sidecar.istio.io/inject": "false"}),
                two.clone(),
                json!([]),
                json!({}),
            ),
        ),
        (
            "inject-label-false",
            pod_with(
                status.clone(),
                two.clone(),
                json!([]),
                json!({"sidecar.istio.io/inject": "false"}),
            ),
        ),
        (
            "istio-init",
            pod_with(
                status.clone(),
                two.clone(),
                json!([{"name": "istio-init"}]),
                json!({}),
            ),
        ),
        (
            "no-proxy",
            pod_with(
                status.clone(),
                json!([{"name": "app"}, {"name": "other"}]),
                json!([]),
                json!({}),
            ),
        ),
        (
            "only-proxy",
            pod_with(
                status.clone(),
                json!([{"name": "istio-proxy", "args": ["proxy", "sidecar"]}]),
                json!([]),
                json!({}),
            ),
        ),
        (
            "gateway",
            pod_with(
                status.clone(),
                json!([{"name": "app"}, {"name": "istio-proxy", "args": ["proxy", "router"]}]),
                json!([]),
                json!({}),
            ),
        ),
        (
            "envoy-disabled",
            pod_with(
                status.clone(),
                json!([{"name": "app"}, {"name": "istio-proxy", "env": [{"name": "DISABLE_ENVOY", "value": "true"}]}]),
                json!([]),
                json!({}),
            ),
        ),
    ];
    for (name, object) in &rules {
        server.pod("default", name, Reply::Pod(object.clone()));
        let ns = TestNetns::new("ke");
        let out = cni(
            &add_env(&ns.path(), "default", name),
            &conf(&kubeconfig, "auto", "3s"),
        );
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let mut prev = prev_result();
        prev["cniVersion"] = json!("1.0.0");
        assert_eq!(stdout_json(&out), prev, "{name}: prevResult unchanged");
        assert_eq!(
            kernel(&ns),
            kernel(&TestNetns::new("kz")),
            "{name}: nothing programmed"
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("no redirect"),
            "{name}: the reason is logged"
        );
    }
    // The excluded namespace is decided before any API call; so is "not a Kubernetes pod".
    let before = server.total_requests();
    let ns = TestNetns::new("kx");
    let out = cni(
        &add_env(&ns.path(), "kube-system", "coredns-1"),
        &conf(&kubeconfig, "auto", "3s"),
    );
    assert!(out.status.success());
    let mut env = add_env(&ns.path(), "", "");
    env.retain(|(k, _)| k != "CNI_ARGS");
    assert!(cni(&env, &conf(&kubeconfig, "auto", "3s")).status.success());
    assert_eq!(
        server.total_requests(),
        before,
        "no API call for an excluded namespace or a non-Kubernetes sandbox"
    );
    assert_eq!(ns.ruleset(), "");
}

#[test]
fn an_invalid_annotation_is_error_7_naming_it() {
    let server = ApiServer::builder().token(TOKEN).start();
    let kubeconfig = server.kubeconfig_file(TOKEN);
    for (key, value) in [
        ("traffic.sidecar.istio.io/includeInboundPorts", "80,http"),
        ("sidecar.istio.io/interceptionMode", "NONE"),
        (
            "traffic.sidecar.istio.io/excludeOutboundIPRanges",
            "10.0.0.1",
        ),
        ("traffic.sidecar.istio.io/excludeInterfaces", "eth/0"),
    ] {
        let name = format!(
            "bad-{}",
            key.rsplit('/').next().unwrap().to_ascii_lowercase()
        );
        let object = pod_with(
            json!({"sidecar.istio.io/status": "{}", key: value}),
            json!([{"name": "app"}, {"name": "istio-proxy", "args": ["proxy", "sidecar"]}]),
            json!([]),
            json!({}),
        );
        server.pod("default", &name, Reply::Pod(object));
        let ns = TestNetns::new("ka");
        let out = cni(
            &add_env(&ns.path(), "default", &name),
            &conf(&kubeconfig, "auto", "3s"),
        );
        let err = stdout_json(&out);
        assert_eq!(err["code"], 7, "{key}: {err}");
        assert!(
            err["msg"].as_str().unwrap().contains(key),
            "{key}: the message names it: {err}"
        );
        assert_eq!(ns.ruleset(), "", "{key}: nothing programmed");
    }
    let _ = pod_path("default", "x");
}
