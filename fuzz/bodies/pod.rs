// Shared body of the `pod` fuzz target (fuzz/fuzz_targets/pod.rs) and its property test
// (integration/properties.rs): included as a module, not a crate of its own.
//
// What the plugin reads from the API server: the Pod object, turned into a redirect
// configuration (annotations over the plugin's defaults over Istio's), validated, and, when
// valid, taken all the way to rules, text and an nf_tables batch.

use mesh_redirect::cni::pod::{self, PodInfo};
use mesh_redirect::config::GroupFile;
use mesh_redirect::model::{build, Flavor};
use serde_json::{Map, Value};

/// Input: the Pod object (JSON) up to the first NUL byte, then the plugin's `redirect`
/// defaults (a JSON object; absent or not an object: none).
pub fn run(data: &[u8]) {
    let (pod_bytes, defaults_bytes) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let Ok(pod) = serde_json::from_slice::<Value>(pod_bytes) else {
        return;
    };
    let defaults = match serde_json::from_slice::<Value>(defaults_bytes) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    check(&pod, &defaults);
}

/// The whole path from a Pod object to rules.
pub fn check(pod: &Value, defaults: &Map<String, Value>) {
    let info = PodInfo::from_pod(pod);
    // Reading is a pure projection: the same object reads the same.
    assert_eq!(PodInfo::from_pod(pod), info);
    if let Some(p) = &info.proxy_type {
        assert!(info.containers.iter().any(|c| c == "istio-proxy"), "{p}");
    }
    let _ = pod::dual_stack(&info);
    let skip = pod::skip_reason(&info);
    if let Some(reason) = &skip {
        assert!(!reason.is_empty());
    }
    if let Ok(raw) = pod::static_settings(defaults) {
        let _ = raw.validate(&GroupFile::default());
    }
    let raw = match pod::redirect_settings(&info, defaults) {
        Ok(raw) => raw,
        Err(e) => {
            let _ = e.to_json("1.0.0").to_string();
            return;
        }
    };
    let cfg = match raw.validate(&GroupFile::default()) {
        Ok(cfg) => cfg,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let nft = build(&cfg, Flavor::Nftables);
    let _ = mesh_redirect::nft::render::render(&nft);
    let batch =
        mesh_redirect::nft::batch::encode(&nft, mesh_redirect::nft::batch::Shape::Create, 1);
    let decoded = mesh_redirect::nft::readback::decode_batch_rules(&batch.bytes);
    assert_eq!(decoded.len(), nft.rule_count(), "one NEWRULE per rule");
    let xt = build(&cfg, Flavor::Iptables);
    let _ = mesh_redirect::xt::render::render(&xt);
}
