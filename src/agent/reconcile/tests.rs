//! The kernel half of a pass against a fake node: which pods are looked at, which namespace
//! is used, and what is refused.

use super::scan::{FoundNetns, NetnsId};
use super::*;
use serde_json::json;
use std::net::IpAddr;
use std::sync::Mutex;

/// A fake namespace: its name, whether it is the host's, its addresses (or why unreadable).
type FakeNs<'a> = (&'a str, bool, Result<Vec<&'static str>, String>);

/// Namespaces named by strings; `verify` answers from `differences`, `apply` clears them.
#[derive(Default)]
struct FakeNode {
    namespaces: Vec<FakeNs<'static>>,
    differences: Mutex<HashMap<String, Vec<String>>>,
    calls: Mutex<Vec<String>>,
    unreadable_processes: Vec<String>,
}

use std::collections::HashMap;

impl FakeNode {
    fn with(namespaces: Vec<FakeNs<'static>>) -> FakeNode {
        FakeNode {
            namespaces,
            ..FakeNode::default()
        }
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl NodeKernel for FakeNode {
    type Ns = String;

    fn scan(&self) -> Result<Scan<String>, ScanError> {
        self.calls.lock().unwrap().push("scan".into());
        let namespaces = self
            .namespaces
            .iter()
            .enumerate()
            .map(|(i, (name, host, addrs))| FoundNetns {
                id: NetnsId {
                    dev: 4,
                    ino: 4_026_531_000 + i as u64,
                },
                pid: 100 + i as u32,
                host: *host,
                addresses: addrs
                    .clone()
                    .map(|a| a.iter().map(|s| s.parse::<IpAddr>().unwrap()).collect()),
                ns: name.to_string(),
            })
            .collect();
        Ok(Scan {
            namespaces,
            unreadable: self.unreadable_processes.clone(),
        })
    }

    fn verify(
        &self,
        ns: &String,
        _: &Config,
        _: BackendChoice,
    ) -> Result<Vec<String>, EngineError> {
        self.calls.lock().unwrap().push(format!("verify {ns}"));
        let d = self.differences.lock().unwrap();
        Ok(d.get(ns)
            .cloned()
            .unwrap_or_else(|| vec!["missing table inet istio".into()]))
    }

    fn apply(&self, ns: &String, _: &Config, _: BackendChoice) -> Result<(), EngineError> {
        self.calls.lock().unwrap().push(format!("apply {ns}"));
        self.differences.lock().unwrap().insert(ns.clone(), vec![]);
        Ok(())
    }
}

fn conf() -> NetConf {
    NetConf::parse(
        br#"{"cniVersion":"1.0.0","name":"n","type":"mesh-redirect","exclude_namespaces":["kube-system"]}"#,
    )
    .unwrap()
}

/// An injected, running sidecar pod with `ip`.
fn meshed(ns: &str, name: &str, ip: &str) -> Arc<Value> {
    Arc::new(json!({
        "metadata": {"namespace": ns, "name": name, "uid": format!("uid-{name}"), "resourceVersion": "7",
            "annotations": {"sidecar.istio.io/status": "{}"}},
        "spec": {"containers": [{"name": "app"}, {"name": "istio-proxy"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    }))
}

fn with(pod: &Arc<Value>, f: impl FnOnce(&mut Value)) -> Arc<Value> {
    let mut v = (**pod).clone();
    f(&mut v);
    Arc::new(v)
}

fn check(node: &FakeNode, mode: RepairMode, pods: &[Arc<Value>]) -> Vec<Finding> {
    check_pods(node, &conf(), mode, pods, pods).unwrap()
}

#[test]
fn a_pod_without_rules_is_repaired_in_its_own_namespace_and_then_found_in_place() {
    let node = FakeNode::with(vec![
        ("host", true, Ok(vec!["192.168.0.10"])),
        ("pod-a", false, Ok(vec!["127.0.0.1", "10.1.0.5"])),
        ("pod-b", false, Ok(vec!["10.1.0.6"])),
    ]);
    let pods = [meshed("apps", "a", "10.1.0.5")];
    let f = check(&node, RepairMode::Repair, &pods);
    assert!(
        matches!(&f[0].verdict, Verdict::Drifted { differences, repaired: Some(Ok(())) } if differences.len() == 1),
        "{f:?}"
    );
    assert_eq!(node.calls(), ["scan", "verify pod-a", "apply pod-a"]);
    let f = check(&node, RepairMode::Repair, &pods);
    assert!(matches!(f[0].verdict, Verdict::InPlace), "{f:?}");
}

#[test]
fn label_and_delete_modes_check_but_never_write_the_kernel() {
    for mode in [RepairMode::Label, RepairMode::Delete] {
        let node = FakeNode::with(vec![("pod-a", false, Ok(vec!["10.1.0.5"]))]);
        let f = check(&node, mode, &[meshed("apps", "a", "10.1.0.5")]);
        assert!(
            matches!(&f[0].verdict, Verdict::Drifted { repaired: None, .. }),
            "{f:?}"
        );
        assert_eq!(node.calls(), ["scan", "verify pod-a"]);
        assert_eq!(f[0].pod.uid, "uid-a");
        assert_eq!(f[0].pod.resource_version, "7");
    }
}

#[test]
fn pods_the_add_would_not_redirect_are_not_looked_at() {
    let node = FakeNode::with(vec![("pod-a", false, Ok(vec!["10.1.0.5"]))]);
    let base = meshed("apps", "a", "10.1.0.5");
    let pods = [
        with(&base, |p| {
            p["spec"]["containers"] = json!([{"name": "app"}])
        }),
        with(&base, |p| p["metadata"]["namespace"] = json!("kube-system")),
        with(&base, |p| {
            p["spec"]["initContainers"] = json!([{"name": "istio-init"}])
        }),
        with(&base, |p| p["spec"]["hostNetwork"] = json!(true)),
        with(&base, |p| p["status"]["phase"] = json!("Pending")),
        with(&base, |p| {
            p["metadata"]["deletionTimestamp"] = json!("2026-12-01T00:00:00Z")
        }),
        with(&base, |p| p["status"] = json!({"phase": "Running"})),
    ];
    let f = check(&node, RepairMode::Repair, &pods);
    assert_eq!(f.len(), pods.len());
    for finding in &f {
        assert!(
            matches!(finding.verdict, Verdict::Skipped(_)),
            "{finding:?}"
        );
    }
    assert!(node.calls().is_empty(), "{:?}", node.calls());
}

#[test]
fn a_namespace_not_attributable_to_exactly_one_pod_is_refused_and_never_entered() {
    let node = FakeNode::with(vec![
        ("host", true, Ok(vec!["192.168.0.10"])),
        ("two-pods", false, Ok(vec!["10.1.0.7", "10.1.0.8"])),
        ("dup-1", false, Ok(vec!["10.1.0.9"])),
        ("dup-2", false, Ok(vec!["10.1.0.9"])),
    ]);
    let pods = [
        meshed("apps", "on-host", "192.168.0.10"),
        meshed("apps", "c", "10.1.0.7"),
        meshed("apps", "d", "10.1.0.8"),
        meshed("apps", "e", "10.1.0.9"),
        meshed("apps", "gone", "10.1.0.99"),
    ];
    let f = check(&node, RepairMode::Repair, &pods);
    let reasons: Vec<&str> = f
        .iter()
        .map(|f| match &f.verdict {
            Verdict::Refused(r) => r.reason(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        reasons,
        [
            "host_netns",
            "ambiguous",
            "ambiguous",
            "ambiguous",
            "netns_not_found"
        ]
    );
    assert!(matches!(&f[1].verdict, Verdict::Refused(Refusal::SharedWith(o)) if o == &["apps/d"]));
    assert_eq!(node.calls(), ["scan"]);
}

/// The refusal of pod `apps/a` at 10.1.0.5 on `node`, as a reason and a message.
fn refusal_of_a(node: &FakeNode) -> (&'static str, String) {
    let f = check(node, RepairMode::Repair, &[meshed("apps", "a", "10.1.0.5")]);
    match &f[0].verdict {
        Verdict::Refused(r) => (r.reason(), r.to_string()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_unreadable_namespace_is_said_so_not_taken_as_empty() {
    let node = FakeNode::with(vec![(
        "pod-a",
        false,
        Err("cannot enter: not permitted".into()),
    )]);
    let (reason, message) = refusal_of_a(&node);
    assert_eq!(reason, "netns_unreadable");
    assert!(message.contains("not permitted"), "{message}");
}

#[test]
fn a_process_whose_namespace_cannot_be_read_is_named_when_a_pod_is_not_found() {
    let mut node = FakeNode::with(vec![("other", false, Ok(vec!["10.1.0.9"]))]);
    node.unreadable_processes = vec!["pid 4242: Permission denied (os error 13)".into()];
    let (reason, message) = refusal_of_a(&node);
    assert_eq!(reason, "netns_unreadable");
    assert!(message.contains("pid 4242"), "{message}");
}

#[test]
fn an_invalid_annotation_is_a_failed_check_naming_it() {
    let node = FakeNode::with(vec![("pod-a", false, Ok(vec!["10.1.0.5"]))]);
    let pod = with(&meshed("apps", "a", "10.1.0.5"), |p| {
        p["metadata"]["annotations"]["traffic.sidecar.istio.io/includeInboundPorts"] = json!("http")
    });
    let f = check(&node, RepairMode::Repair, &[pod]);
    let Verdict::Failed(why) = &f[0].verdict else {
        panic!("{f:?}")
    };
    assert!(why.contains("includeInboundPorts"), "{why}");
    assert!(node.calls().is_empty());
}

#[test]
fn repair_modes_parse_and_name_themselves() {
    for m in ["repair", "label", "delete", "off"] {
        assert_eq!(m.parse::<RepairMode>().unwrap().as_str(), m);
    }
    let e = "restart".parse::<RepairMode>().unwrap_err();
    assert!(e.contains("\"restart\""), "{e}");
}
