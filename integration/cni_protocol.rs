//! The CNI protocol through the real binary, environment and stdin exactly as libcni passes
//! them: every command for every supported `cniVersion`, `prevResult` (1.1-only fields
//! included) passed through, DEL on a deleted namespace, CHECK against drift, and malformed
//! inputs each answered with the right error code and no change to the namespace.
//! Static mode (no Kubernetes API) throughout; the API path has its own test file.

mod support;

use serde_json::{json, Value};
use support::*;

const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

fn prev_result(version: &str) -> Value {
    json!({
        "cniVersion": version,
        "interfaces": [
            {"name": "cni0", "mac": "3a:45:0b:11:22:33"},
            {"name": "eth0", "mac": "26:94:0b:44:55:66", "sandbox": "/run/netns/x", "mtu": 1450, "socketPath": "/run/vhost.sock", "pciID": "0000:00:1f.6"}
        ],
        "ips": [{"interface": 1, "address": "10.88.50.8/24", "gateway": "10.88.50.1"}],
        "routes": [{"dst": "0.0.0.0/0", "mtu": 1400, "table": 100, "scope": 0, "priority": 5}],
        "dns": {"nameservers": ["10.96.0.10"]}
    })
}

fn conf(version: &str, backend: &str, prev: Option<Value>) -> String {
    let mut c = json!({
        "cniVersion": version, "name": "mesh-test", "type": "mesh-redirect", "mode": "static",
        "backend": backend, "redirect": {"excludeInboundPorts": "22"}, "someFutureKey": {"x": 1}
    });
    if let Some(p) = prev {
        c["prevResult"] = p;
    }
    c.to_string()
}

fn has_rules(ns: &TestNetns, backend: &str) -> bool {
    match backend {
        "nftables" => ns.ruleset().contains("istio-proxy-nat"),
        _ => ns
            .exec_ok(&["iptables-legacy-save"])
            .contains("ISTIO_OUTPUT"),
    }
}

#[test]
fn version_answers_what_is_implemented() {
    for v in VERSIONS {
        let out = cni(
            &[("CNI_COMMAND", "VERSION")],
            &json!({"cniVersion": v}).to_string(),
        );
        assert!(out.status.success());
        let j = stdout_json(&out);
        assert_eq!(j["cniVersion"], v);
        assert_eq!(j["supportedVersions"], json!(VERSIONS));
    }
    // Without stdin, the newest.
    let j = stdout_json(&cni(&[("CNI_COMMAND", "VERSION")], ""));
    assert_eq!(j["cniVersion"], "1.1.0");
}

#[test]
fn every_command_for_every_version_with_both_backends() {
    for backend in ["nftables", "iptables-legacy"] {
        for v in VERSIONS {
            let ns = TestNetns::new("cv");
            let prev = prev_result(v);
            // ADD: rules programmed, prevResult back unchanged (1.1 fields included).
            let out = cni(
                &cni_pod_env("ADD", &ns.path()),
                &conf(v, backend, Some(prev.clone())),
            );
            assert!(
                out.status.success(),
                "{backend} {v} ADD: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            assert_eq!(
                stdout_json(&out),
                prev,
                "{backend} {v}: prevResult passes through"
            );
            assert!(has_rules(&ns, backend), "{backend} {v}: rules programmed");
            // CHECK (0.4.0+): passes; before 0.4.0 it is refused as the spec says.
            let out = cni(
                &cni_pod_env("CHECK", &ns.path()),
                &conf(v, backend, Some(prev.clone())),
            );
            if v == "0.3.0" || v == "0.3.1" {
                assert!(!out.status.success(), "{v}: CHECK needs 0.4.0");
                assert_eq!(stdout_json(&out)["code"], 1, "{v}: CHECK needs 0.4.0");
            } else {
                assert!(
                    out.status.success(),
                    "{backend} {v} CHECK: {}",
                    String::from_utf8_lossy(&out.stdout)
                );
                assert!(out.stdout.is_empty());
            }
            // STATUS and GC (1.1.0): succeed silently; older configs are refused.
            for cmd in ["STATUS", "GC"] {
                let out = cni(
                    &[("CNI_COMMAND", cmd), ("CNI_PATH", "/opt/cni/bin")],
                    &conf(v, backend, None),
                );
                if v == "1.1.0" {
                    assert!(
                        out.status.success() && out.stdout.is_empty(),
                        "{cmd}: {}",
                        String::from_utf8_lossy(&out.stdout)
                    );
                } else {
                    assert!(!out.status.success(), "{cmd} needs 1.1.0");
                    assert_eq!(stdout_json(&out)["code"], 1, "{cmd} needs 1.1.0");
                }
            }
            // DEL: our rules gone, twice.
            for _ in 0..2 {
                let out = cni(
                    &cni_pod_env("DEL", &ns.path()),
                    &conf(v, backend, Some(prev.clone())),
                );
                assert!(
                    out.status.success(),
                    "{backend} {v} DEL: {}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
            assert!(
                !has_rules(&ns, backend),
                "{backend} {v}: DEL removed the rules"
            );
        }
    }
    assert_no_forwarding();
}

#[test]
fn add_without_prev_result_answers_an_empty_result() {
    let ns = TestNetns::new("cn");
    let out = cni(
        &cni_pod_env("ADD", &ns.path()),
        &conf("1.0.0", "nftables", None),
    );
    assert!(out.status.success());
    assert_eq!(stdout_json(&out)["cniVersion"], "1.0.0");
}

#[test]
fn del_on_a_deleted_namespace_succeeds() {
    let ns = TestNetns::new("cd");
    let path = ns.path();
    assert!(
        cni(&cni_pod_env("ADD", &path), &conf("1.0.0", "nftables", None))
            .status
            .success()
    );
    drop(ns);
    let out = cni(&cni_pod_env("DEL", &path), &conf("1.0.0", "nftables", None));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let mut env = cni_pod_env("DEL", "");
    env.retain(|(k, _)| *k != "CNI_NETNS");
    assert!(
        cni(&env, &conf("1.0.0", "nftables", None)).status.success(),
        "DEL without CNI_NETNS"
    );
}

#[test]
fn check_fails_on_drift_and_passes_after_add() {
    for backend in ["nftables", "iptables-legacy"] {
        let ns = TestNetns::new("ck");
        let c = conf("1.0.0", backend, Some(prev_result("1.0.0")));
        assert!(cni(&cni_pod_env("ADD", &ns.path()), &c).status.success());
        assert!(cni(&cni_pod_env("CHECK", &ns.path()), &c).status.success());
        if backend == "nftables" {
            ns.delete_nft_rule("istio-proxy-nat", "istio-output", |l| {
                l.contains("meta skuid 1337") && !l.contains("oifname")
            });
        } else {
            ns.delete_legacy_proxy_uid_return();
        }
        let out = cni(&cni_pod_env("CHECK", &ns.path()), &c);
        assert!(!out.status.success());
        let err = stdout_json(&out);
        assert_eq!(err["code"], 103, "{backend}: drift is our code 103");
        assert!(
            err["details"].as_str().unwrap().contains("missing"),
            "{backend}: the diff is in details: {err}"
        );
        assert!(cni(&cni_pod_env("ADD", &ns.path()), &c).status.success());
        assert!(
            cni(&cni_pod_env("CHECK", &ns.path()), &c).status.success(),
            "{backend}: CHECK passes after ADD"
        );
    }
}

/// (environment, stdin, expected code, what)
type Malformed = (Vec<(&'static str, &'static str)>, String, u64, &'static str);

fn malformed() -> Vec<Malformed> {
    let good = conf("1.0.0", "nftables", None);
    let ok_env = |cmd: &'static str| cni_pod_env(cmd, "NETNS");
    let without = |k: &'static str| {
        let mut e = ok_env("ADD");
        e.retain(|(x, _)| *x != k);
        e
    };
    let with = |k: &'static str, v: &'static str| {
        let mut e = ok_env("ADD");
        e.retain(|(x, _)| *x != k);
        e.push((k, v));
        e
    };
    let c = |s: &str| s.to_string();
    vec![
        (
            with("CNI_COMMAND", "UP"),
            good.clone(),
            4,
            "unknown command",
        ),
        (
            with("CNI_COMMAND", "add"),
            good.clone(),
            4,
            "lower-case command",
        ),
        (
            without("CNI_CONTAINERID"),
            good.clone(),
            4,
            "no container id",
        ),
        (
            with("CNI_CONTAINERID", "-bad"),
            good.clone(),
            4,
            "bad container id",
        ),
        (without("CNI_NETNS"), good.clone(), 4, "ADD without netns"),
        (
            with("CNI_NETNS", "/nonexistent/netns"),
            good.clone(),
            3,
            "a namespace that does not exist",
        ),
        (
            with("CNI_NETNS", "/etc/passwd"),
            good.clone(),
            3,
            "a file that is not a namespace",
        ),
        (without("CNI_IFNAME"), good.clone(), 4, "no ifname"),
        (with("CNI_IFNAME", "eth0:1"), good.clone(), 4, "bad ifname"),
        (
            with("CNI_IFNAME", "averyveryverylongname"),
            good.clone(),
            4,
            "long ifname",
        ),
        (without("CNI_PATH"), good.clone(), 4, "no CNI_PATH"),
        (
            with("CNI_ARGS", "K8S_POD_NAME"),
            good.clone(),
            4,
            "CNI_ARGS pair without =",
        ),
        (
            with("CNI_ARGS", "K8S_POD_NAME=a;UNKNOWN=b"),
            good.clone(),
            4,
            "unknown CNI_ARGS key",
        ),
        (
            with("CNI_ARGS", "IgnoreUnknown=perhaps"),
            good.clone(),
            4,
            "bad IgnoreUnknown",
        ),
        (ok_env("ADD"), c("{"), 6, "truncated JSON"),
        (ok_env("ADD"), c("[]"), 6, "not an object"),
        (ok_env("ADD"), c(""), 6, "empty stdin"),
        (
            ok_env("ADD"),
            c(r#"{"cniVersion":"0.2.0","name":"n"}"#),
            1,
            "old version",
        ),
        (
            ok_env("ADD"),
            c(r#"{"cniVersion":"2.0.0","name":"n"}"#),
            1,
            "future version",
        ),
        (ok_env("ADD"), c(r#"{"name":"n"}"#), 1, "no version"),
        (ok_env("ADD"), c(r#"{"cniVersion":"1.0.0"}"#), 7, "no name"),
        (
            ok_env("ADD"),
            c(r#"{"cniVersion":"1.0.0","name":"bad name"}"#),
            7,
            "bad name",
        ),
        (
            ok_env("ADD"),
            c(r#"{"cniVersion":"1.0.0","name":"n","backend":"ipvs"}"#),
            7,
            "bad backend",
        ),
        (
            ok_env("ADD"),
            c(
                r#"{"cniVersion":"1.0.0","name":"n","backend":"iptables-legacy","native_nftables":true}"#,
            ),
            7,
            "contradicting backends",
        ),
        (
            ok_env("ADD"),
            c(r#"{"cniVersion":"1.0.0","name":"n","api_timeout":"forever"}"#),
            7,
            "bad api_timeout",
        ),
        (
            ok_env("ADD"),
            c(r#"{"cniVersion":"1.0.0","name":"n","exclude_namespaces":"kube-system"}"#),
            7,
            "exclude_namespaces not a list",
        ),
        (
            ok_env("ADD"),
            c(
                r#"{"cniVersion":"1.0.0","name":"n","mode":"static","redirect":{"includeInboundPorts":"80,http"}}"#,
            ),
            7,
            "bad port setting",
        ),
        (
            ok_env("ADD"),
            c(
                r#"{"cniVersion":"1.0.0","name":"n","mode":"static","redirect":{"interceptionMode":"NONE"}}"#,
            ),
            7,
            "bad interception mode",
        ),
        (
            ok_env("ADD"),
            c(
                r#"{"cniVersion":"1.0.0","name":"n","mode":"static","redirect":{"excludeOutboundIPRanges":"*"}}"#,
            ),
            7,
            "excluded *",
        ),
        (
            ok_env("ADD"),
            c(
                r#"{"cniVersion":"1.0.0","name":"n","mode":"static","redirect":{"excludeInterfaces":"0eth"}}"#,
            ),
            7,
            "bad interface",
        ),
        (
            ok_env("ADD"),
            c(
                r#"{"cniVersion":"1.0.0","name":"n","mode":"static","redirect":{"proxyUID":"istio"}}"#,
            ),
            7,
            "bad uid",
        ),
        (
            ok_env("ADD"),
            c(r#"{"cniVersion":"1.0.0","name":"n","prevResult":"x"}"#),
            7,
            "prevResult not an object",
        ),
        (
            ok_env("ADD"),
            c(
                r#"{"cniVersion":"1.0.0","name":"n","mode":"kubernetes","kubernetes":{"kubeconfig":"/nonexistent/kubeconfig"}}"#,
            ),
            7,
            "missing kubeconfig",
        ),
    ]
}

/// Each malformed input: a non-zero exit (the CNI spec's failure) and an error document
/// with exactly the expected code and a message; and the namespace unchanged in everything
/// `TestNetns::snapshot` shows (nf_tables, legacy tables of both families, policy rules,
/// routes, addresses), compared with its state before that input. Every input is checked
/// and every problem reported.
#[test]
fn malformed_inputs_get_the_right_code_and_change_nothing() {
    let ns = TestNetns::new("cm");
    let path = ns.path();
    let cases = malformed();
    assert!(cases.len() >= 25);
    let mut before = ns.snapshot();
    let mut failures = Vec::new();
    for (env, stdin, code, what) in &cases {
        let env: Vec<(&str, &str)> = env
            .iter()
            .map(|(k, v)| (*k, if *v == "NETNS" { path.as_str() } else { *v }))
            .collect();
        let out = cni(&env, stdin);
        let got = serde_json::from_slice::<Value>(&out.stdout).ok();
        let got_code = got.as_ref().and_then(|j| j["code"].as_u64());
        let has_msg = got
            .as_ref()
            .is_some_and(|j| !j["msg"].as_str().unwrap_or("").is_empty());
        if out.status.success() || got_code != Some(*code) || !has_msg {
            failures.push(format!(
                "{what}: exit {:?}, code {got_code:?} (expected a failure with code {code} \
                 and a msg), stdout {:?}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        let after = ns.snapshot();
        if let Some(diff) = snapshot_difference(&before, &after) {
            failures.push(format!("{what}: changed the namespace:\n{diff}"));
            before = after;
        }
    }
    assert!(
        failures.is_empty(),
        "{} problems over {} malformed inputs:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
