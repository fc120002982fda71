//! Pod → redirect configuration, without root and without an API server: for each of
//! Istio's 9 CNI-plugin cases, the configuration the plugin derives from the pod (its
//! annotations, the istio-proxy container's env and securityContext) equals the
//! `effective_config` Istio derives (`../shared/conformance/cases.json`).

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
        use clap::Parser;
        let mut argv = vec!["mesh-redirect".to_string(), "render".to_string()];
        argv.extend(case.args.iter().cloned());
        let mesh_redirect::cli::Command::Render { redirect, .. } =
            mesh_redirect::cli::Cli::try_parse_from(argv)
                .unwrap()
                .command
        else {
            unreachable!()
        };
        let env = env_map(&case.env);
        let istio = redirect
            .to_raw(&|k| env.get(k).cloned())
            .validate(&GroupFile::default())
            .unwrap();
        assert_eq!(ours, istio, "{}", case.name);
    }
}
