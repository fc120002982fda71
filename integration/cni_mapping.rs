//! Pod → redirect configuration, without root and without an API server: for each of
//! Istio's 9 CNI-plugin cases, the configuration the plugin derives from the pod (its
//! annotations, the istio-proxy container's env and securityContext) equals the
//! `effective_config` Istio derives (`integration/fixtures/conformance/cases.json`).

mod support;

use mesh_redirect::cni::pod::{redirect_settings, skip_reason, PodInfo};
use mesh_redirect::config::{GroupFile, Setting};
use support::*;

#[test]
fn every_cni_case_maps_to_istios_effective_config() {
    let cases = cni_cases();
    assert_eq!(cases.len(), 9);
    for case in &cases {
        let object = pod_object(&case.pod, "default", &case.name);
        let info = PodInfo::from_pod(&object);
        assert_eq!(
            skip_reason(&info),
            None,
            "{}: the pod is eligible",
            case.name
        );
        let mut raw = redirect_settings(&info, &serde_json::Map::new())
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        raw.enable_ipv6 = Some(Setting::new(
            "test",
            case.pod["ipv6"].as_bool().unwrap().to_string(),
        ));
        let ours = raw.validate(&GroupFile::default()).unwrap();

        // Istio's effective config, through our command-line flags.
        let istio = case.raw().validate(&GroupFile::default()).unwrap();
        assert_eq!(ours, istio, "{}", case.name);
    }
}
