//! The test support the node agent's reconciler tests stand on, checked through the calls
//! the reconciler makes (kube-rs `Api`):
//!
//! * the test API server's writes (`support/watch_apiserver/writes.rs`): a merge patch of a
//!   pod's labels (stored, `MODIFIED` watched), a pod delete with preconditions (409 on a
//!   mismatch, 404 once gone), Events created and patched (both API groups, kube's event
//!   recorder), a node patched with a stale or the current resourceVersion and by JSON patch
//!   (a failing `test` is 422 Invalid), every request logged, `fail_next`;
//! * `PodNetns` (`support/pod_netns.rs`, root): the process lives in the namespace, `eth0`
//!   holds the addresses, and everything is gone after the drop, also after a panic.

mod support;
#[path = "support/watch_apiserver.rs"]
mod watch_apiserver;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Event as CoreEvent, Node, ObjectReference, Pod};
use kube::api::{
    Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions, WatchEvent, WatchParams,
};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use serde_json::{json, Value};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;
use support::pod_netns::PodNetns;
use support::*;
use watch_apiserver::WatchApiServer;

const LABEL: &str = "mesh-redirect.io/uninitialized";

/// Runs `f` on a current-thread runtime, failing the test after 60 s.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(async { tokio::time::timeout(Duration::from_secs(60), f).await })
        .expect("the test finishes within 60 s")
}

async fn client(server: &WatchApiServer) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(server.kubeconfig_file()).expect("kubeconfig");
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .expect("config");
    kube::Client::try_from(config).expect("client")
}

fn pod(name: &str, uid: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "apps", "uid": uid, "labels": {"app": name}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "busybox"}]},
        "status": {"phase": "Running"}})
}

/// The API error of a failed call: (code, reason).
fn api_error<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> (u16, String) {
    match r {
        Err(kube::Error::Api(e)) => (e.code, e.reason),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn rv_of(v: &Value) -> String {
    v["metadata"]["resourceVersion"]
        .as_str()
        .expect("resourceVersion")
        .to_string()
}

#[test]
fn a_merge_patch_of_labels_changes_the_stored_pod_and_is_watched_as_modified() {
    let server = WatchApiServer::start();
    server.put_pod(pod("p", "uid-p"));
    let before = rv_of(&server.pod("apps", "p").unwrap());
    let label = json!({"metadata": {"labels": {LABEL: "true"}}});
    block_on(async {
        let pods: Api<Pod> = Api::namespaced(client(&server).await, "apps");
        let mut watch = pods
            .watch(&WatchParams::default().timeout(10), &before)
            .await
            .expect("watch")
            .boxed();
        let patched = pods
            .patch("p", &PatchParams::default(), &Patch::Merge(&label))
            .await
            .expect("merge patch");
        assert_eq!(patched.metadata.labels.as_ref().unwrap()[LABEL], "true");
        match watch.try_next().await.expect("watch event") {
            Some(WatchEvent::Modified(p)) => {
                assert_eq!(p.metadata.labels.unwrap()[LABEL], "true");
                assert_eq!(
                    p.metadata.resource_version,
                    patched.metadata.resource_version
                );
            }
            other => panic!("expected MODIFIED, got {other:?}"),
        }
        // The same patch again changes nothing: no new version (as in Kubernetes).
        let again = pods
            .patch("p", &PatchParams::default(), &Patch::Strategic(&label))
            .await
            .expect("strategic merge patch");
        assert_eq!(
            again.metadata.resource_version,
            patched.metadata.resource_version
        );
    });
    let stored = server.pod("apps", "p").unwrap();
    assert_eq!(
        stored["metadata"]["labels"],
        json!({"app": "p", LABEL: "true"})
    );
    assert_ne!(rv_of(&stored), before);
    let methods: Vec<String> = server.requests().into_iter().map(|r| r.method).collect();
    assert_eq!(
        methods,
        ["GET", "PATCH", "PATCH"],
        "the watch, then both patches"
    );
    let patches = server.requests_matching("patch", "/api/v1/namespaces/apps/pods/p");
    assert_eq!(
        patches[0].content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(
        patches[1].content_type.as_deref(),
        Some("application/strategic-merge-patch+json")
    );
    assert_eq!(patches[0].body.as_ref(), Some(&label));
    assert!(server.requests()[0].query.contains("watch=true"));
}

fn delete_params(uid: &str, rv: &str) -> DeleteParams {
    DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid.into()),
            resource_version: Some(rv.into()),
        }),
        ..Default::default()
    }
}

#[test]
fn a_delete_with_preconditions_is_a_conflict_on_a_mismatch_and_deletes_on_a_match() {
    let server = WatchApiServer::start();
    server.put_pod(pod("p", "uid-p"));
    let rv = rv_of(&server.pod("apps", "p").unwrap());
    block_on(async {
        let pods: Api<Pod> = Api::namespaced(client(&server).await, "apps");
        let wrong_uid = pods.delete("p", &delete_params("uid-other", &rv)).await;
        assert_eq!(api_error(wrong_uid), (409, "Conflict".to_string()));
        let stale_rv = pods.delete("p", &delete_params("uid-p", "1")).await;
        assert_eq!(api_error(stale_rv), (409, "Conflict".to_string()));
        assert!(
            server.pod("apps", "p").is_some(),
            "a failed precondition keeps the pod"
        );
        let mut watch = pods
            .watch(&WatchParams::default().timeout(10), &rv)
            .await
            .expect("watch")
            .boxed();
        let deleted = pods
            .delete("p", &delete_params("uid-p", &rv))
            .await
            .expect("delete");
        let deleted = deleted.left().expect("the pod object, not a Status");
        assert_eq!(deleted.metadata.uid.as_deref(), Some("uid-p"));
        match watch.try_next().await.expect("watch event") {
            Some(WatchEvent::Deleted(p)) => assert_eq!(p.metadata.name.as_deref(), Some("p")),
            other => panic!("expected DELETED, got {other:?}"),
        }
        let gone = pods.delete("p", &delete_params("uid-p", &rv)).await;
        assert_eq!(api_error(gone), (404, "NotFound".to_string()));
    });
    assert!(server.pod("apps", "p").is_none());
    let deletes = server.requests_matching("DELETE", "/api/v1/namespaces/apps/pods/p");
    assert_eq!(deletes.len(), 4);
    let body = deletes[0].body.as_ref().expect("DeleteOptions");
    assert_eq!(
        body["preconditions"],
        json!({"uid": "uid-other", "resourceVersion": rv})
    );
}

#[test]
fn events_are_created_in_both_api_groups_and_a_series_is_patched() {
    let server = WatchApiServer::start();
    server.put_pod(pod("p", "uid-p"));
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some("p".into()),
        namespace: Some("apps".into()),
        uid: Some("uid-p".into()),
        ..Default::default()
    };
    block_on(async {
        let client = client(&server).await;
        let core: Api<CoreEvent> = Api::namespaced(client.clone(), "apps");
        let mut ev = CoreEvent {
            involved_object: reference.clone(),
            reason: Some("Uninitialized".into()),
            type_: Some("Warning".into()),
            ..Default::default()
        };
        ev.metadata.generate_name = Some("p.".into());
        let created = core
            .create(&PostParams::default(), &ev)
            .await
            .expect("create");
        let name = created.metadata.name.expect("a generated name");
        assert!(
            name.starts_with("p.") && name.len() == "p.".len() + 5,
            "{name}"
        );
        assert!(created.metadata.uid.is_some() && created.metadata.resource_version.is_some());
        let recorder = Recorder::new(
            client,
            Reporter {
                controller: "mesh-redirect-agent".into(),
                instance: Some("node-1".into()),
            },
        );
        let event = Event {
            type_: EventType::Warning,
            reason: "Uninitialized".into(),
            note: Some("traffic redirection not in place".into()),
            action: "Label".into(),
            secondary: None,
        };
        recorder.publish(&event, &reference).await.expect("publish");
        recorder
            .publish(&event, &reference)
            .await
            .expect("publish a series");
    });
    let events = server.events();
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!(events[0]["reason"], "Uninitialized");
    assert_eq!(events[1]["apiVersion"], "events.k8s.io/v1");
    assert_eq!(
        events[1]["series"]["count"], 2,
        "the recorder's PATCH merged"
    );
    assert_eq!(
        server
            .requests_matching("POST", "/apis/events.k8s.io/v1/namespaces/apps/events")
            .len(),
        1
    );
    assert_eq!(
        server
            .requests_matching("PATCH", "/apis/events.k8s.io/v1/namespaces/apps/events/")
            .len(),
        1
    );
}

fn node() -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-1", "labels": {"kubernetes.io/hostname": "node-1"}},
        "spec": {"taints": [{"key": "mesh-redirect.io/not-ready", "effect": "NoSchedule"}]}})
}

/// A JSON patch of node `name` through kube's transport (its `Patch::Json` needs a kube
/// feature the product does not enable): the request kube builds for a merge patch, with
/// the JSON patch media type and body.
async fn json_patch_node(
    client: &kube::Client,
    name: &str,
    ops: Value,
) -> Result<Node, kube::Error> {
    let mut req = kube::core::Request::new("/api/v1/nodes")
        .patch(name, &PatchParams::default(), &Patch::Merge(()))
        .expect("request");
    req.headers_mut().insert(
        "content-type",
        "application/json-patch+json".parse().unwrap(),
    );
    *req.body_mut() = serde_json::to_vec(&ops).unwrap();
    client.request::<Node>(req).await
}

#[test]
fn a_node_patch_is_a_conflict_with_a_stale_version_and_updates_taints_with_the_current_one() {
    let server = WatchApiServer::start();
    server.put_node(node());
    block_on(async {
        let client = client(&server).await;
        let nodes: Api<Node> = Api::all(client.clone());
        let rv = nodes
            .get("node-1")
            .await
            .expect("get")
            .metadata
            .resource_version
            .unwrap();
        let taints =
            |rv: &str| json!({"metadata": {"resourceVersion": rv}, "spec": {"taints": []}});
        let stale = nodes
            .patch(
                "node-1",
                &PatchParams::default(),
                &Patch::Merge(taints("1")),
            )
            .await;
        assert_eq!(api_error(stale), (409, "Conflict".to_string()));
        assert_eq!(server.node("node-1").unwrap(), {
            let mut n = node();
            n["metadata"]["resourceVersion"] = json!(rv);
            n
        });
        let patched = nodes
            .patch(
                "node-1",
                &PatchParams::default(),
                &Patch::Merge(taints(&rv)),
            )
            .await
            .expect("patch at the current version");
        assert_eq!(patched.spec.unwrap().taints, Some(vec![]));
        assert_ne!(
            patched.metadata.resource_version.as_deref(),
            Some(rv.as_str())
        );
        // JSON patch: a failing `test` is 422 Invalid and changes nothing.
        let before = server.node("node-1").unwrap();
        let failing = json!([{"op": "test", "path": "/metadata/resourceVersion", "value": rv},
                             {"op": "add", "path": "/spec/taints/-", "value": {"key": "x", "effect": "NoSchedule"}}]);
        let failed = json_patch_node(&client, "node-1", failing).await;
        assert_eq!(api_error(failed), (422, "Invalid".to_string()));
        assert_eq!(server.node("node-1").unwrap(), before);
        let now = rv_of(&before);
        let ops = json!([{"op": "test", "path": "/metadata/resourceVersion", "value": now},
                         {"op": "add", "path": "/metadata/labels/mesh-redirect.io~1ready", "value": "true"},
                         {"op": "add", "path": "/spec/taints/0", "value": {"key": "a", "effect": "NoExecute"}},
                         {"op": "add", "path": "/spec/taints/-", "value": {"key": "b", "effect": "NoSchedule"}},
                         {"op": "replace", "path": "/spec/taints/1/effect", "value": "PreferNoSchedule"},
                         {"op": "remove", "path": "/spec/taints/0"}]);
        json_patch_node(&client, "node-1", ops)
            .await
            .expect("json patch");
    });
    let stored = server.node("node-1").unwrap();
    assert_eq!(
        stored["metadata"]["labels"]["mesh-redirect.io/ready"],
        "true"
    );
    assert_eq!(
        stored["spec"]["taints"],
        json!([{"key": "b", "effect": "PreferNoSchedule"}])
    );
    let patches = server.requests_matching("PATCH", "/api/v1/nodes/node-1");
    assert_eq!(patches.len(), 4);
    assert_eq!(
        patches[3].content_type.as_deref(),
        Some("application/json-patch+json")
    );
}

#[test]
fn fail_next_fails_the_next_matching_request_once_and_changes_nothing() {
    let server = WatchApiServer::start();
    server.put_pod(pod("p", "uid-p"));
    server.put_node(node());
    let rv = rv_of(&server.pod("apps", "p").unwrap());
    server.fail_next("GET", "/api/v1/nodes/", 503);
    server.fail_next("patch", "/api/v1/namespaces/apps/pods/", 500);
    block_on(async {
        let client = client(&server).await;
        let nodes: Api<Node> = Api::all(client.clone());
        let pods: Api<Pod> = Api::namespaced(client, "apps");
        // Not matched by the PATCH knob: a GET of the pod.
        pods.get("p").await.expect("an unmatched request is served");
        assert_eq!(
            api_error(nodes.get("node-1").await),
            (503, "ServiceUnavailable".to_string())
        );
        nodes.get("node-1").await.expect("the knob is one-shot");
        let label = Patch::Merge(json!({"metadata": {"labels": {LABEL: "true"}}}));
        let failed = pods.patch("p", &PatchParams::default(), &label).await;
        assert_eq!(api_error(failed), (500, "InternalError".to_string()));
        assert_eq!(
            rv_of(&server.pod("apps", "p").unwrap()),
            rv,
            "the failed patch changed nothing"
        );
        pods.patch("p", &PatchParams::default(), &label)
            .await
            .expect("the next patch");
    });
    assert_eq!(
        server
            .requests_matching("PATCH", "/api/v1/namespaces/apps/pods/p")
            .len(),
        2
    );
    assert_eq!(
        server.count("/api/v1/nodes/node-1"),
        2,
        "the failed GET counted too"
    );
}

/// `(device, inode)` of what `path` leads to.
fn ns_id(path: &Path) -> (u64, u64) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.dev(), m.ino())
}

#[test]
fn a_pod_netns_holds_its_process_and_addresses_and_is_gone_after_the_drop() {
    require_root();
    let v6: Ipv6Addr = "fd00:44::7".parse().unwrap();
    let pod = PodNetns::new("pn", Ipv4Addr::new(10, 44, 0, 7), Some(v6));
    let (pid, name, path) = (pod.pid(), pod.name().to_string(), pod.path());
    let proc_ns = Path::new("/proc").join(pid.to_string()).join("ns/net");
    assert_eq!(
        ns_id(&proc_ns),
        ns_id(&path),
        "the process lives in the namespace"
    );
    assert_ne!(
        ns_id(Path::new("/proc/self/ns/net")),
        ns_id(&path),
        "not the root namespace"
    );
    let addrs = pod
        .netns()
        .exec_ok(&["ip", "-o", "address", "show", "dev", "eth0"]);
    assert!(addrs.contains("inet 10.44.0.7/24"), "{addrs}");
    assert!(addrs.contains("inet6 fd00:44::7/64"), "{addrs}");
    let link = pod.netns().exec_ok(&["ip", "-o", "link", "show", "eth0"]);
    assert!(link.contains(",UP"), "eth0 is up: {link}");
    drop(pod);
    assert!(!path.exists(), "{} is deleted", path.display());
    assert!(
        !Path::new("/proc").join(pid.to_string()).exists(),
        "process {pid} is reaped"
    );
    let list = run_ok(std::process::Command::new("ip").args(["netns", "list"]));
    assert!(
        !list
            .lines()
            .any(|l| l.split_whitespace().next() == Some(name.as_str())),
        "{list}"
    );
    assert_no_forwarding();
}

#[test]
fn a_pod_netns_is_cleaned_up_when_the_test_panics() {
    require_root();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let inner = seen.clone();
    let panicked = std::thread::spawn(move || {
        let pod = PodNetns::new("pp", Ipv4Addr::new(10, 44, 1, 7), None);
        *inner.lock().unwrap() = Some((pod.pid(), pod.path()));
        panic!("a test failing with the namespace alive");
    })
    .join();
    assert!(panicked.is_err());
    let (pid, path) = seen.lock().unwrap().clone().expect("the fixture was made");
    assert!(!path.exists(), "{} is deleted", path.display());
    assert!(
        !Path::new("/proc").join(pid.to_string()).exists(),
        "process {pid} is reaped"
    );
}

/// The server's address and CA certificate (DER), read back from its kubeconfig.
fn endpoint(server: &WatchApiServer) -> (String, Vec<u8>) {
    use base64::Engine as _;
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let text = std::fs::read_to_string(server.kubeconfig_file()).unwrap();
    let field = |key: &str| {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(key))
            .unwrap();
        line.split_once(": ")
            .unwrap()
            .1
            .trim_matches('"')
            .to_string()
    };
    let addr = field("server:").trim_start_matches("https://").to_string();
    let pem = base64::engine::general_purpose::STANDARD
        .decode(field("certificate-authority-data:"))
        .unwrap();
    let der = CertificateDer::from_pem_slice(&pem).expect("the CA's PEM");
    (addr, der.to_vec())
}

#[test]
fn a_chunked_request_body_is_read_and_logged() {
    use std::io::{Read, Write};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = WatchApiServer::start();
    server.put_node(node());
    let (addr, ca) = endpoint(&server);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.into()).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, std::net::TcpStream::connect(&addr).unwrap());
    let patch = r#"{"metadata":{"labels":{"chunked":"yes"}}}"#;
    let (a, b) = patch.split_at(10);
    let request = format!(
        "PATCH /api/v1/nodes/node-1 HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/merge-patch+json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x};ext=1\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\nX-Trailer: t\r\n\r\n",
        a.len(),
        b.len()
    );
    tls.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    assert_eq!(
        server.node("node-1").unwrap()["metadata"]["labels"]["chunked"],
        "yes"
    );
    let logged = server.requests_matching("PATCH", "/api/v1/nodes/node-1");
    assert_eq!(
        logged[0].body,
        Some(serde_json::from_str::<Value>(patch).unwrap())
    );
}
