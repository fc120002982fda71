// Shared body of the `cni_config` fuzz target (fuzz/fuzz_targets/cni_config.rs) and its
// property test (integration/properties.rs): included as a module, not a crate of its own.
//
// What a CNI plugin reads from outside: the network configuration on stdin (with the
// previous plugin's `prevResult`), `CNI_ARGS`, and, for the installer, the primary CNI's
// configuration file it chains itself into. Nothing here touches the kernel: `invoke` only
// ever sees VERSION or an unknown command.

#[allow(unused_imports)]
use mesh_redirect::cni::netconf::{Mode, NetConf};
use mesh_redirect::cni::protocol::{self, Environment, SUPPORTED_VERSIONS};
use mesh_redirect::config::GroupFile;
use mesh_redirect::install::conflist;
use serde_json::{Map, Value};

/// Input: `CNI_ARGS` up to the first NUL byte, the configuration after it (no NUL: all of
/// it is the configuration).
pub fn run(data: &[u8]) {
    let (args, stdin) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b""[..], data),
    };
    check_args(&String::from_utf8_lossy(args));
    check_stdin(stdin);
}

/// `CNI_ARGS`, parsed alone and through the checked environment.
pub fn check_args(args: &str) {
    if let Ok(k) = protocol::parse_args(args) {
        // Values are taken verbatim from `K=V` pairs.
        assert!(args.contains(&k.pod_name) && args.contains(&k.pod_namespace));
        assert!(!k.pod_name.contains(';') && !k.pod_namespace.contains(';'));
    }
    let env = |k: &str| match k {
        "CNI_COMMAND" => Some("VERSION".to_string()),
        "CNI_ARGS" => Some(args.to_string()),
        "CNI_CONTAINERID" | "CNI_IFNAME" => Some(args.to_string()),
        _ => None,
    };
    let e = Environment::from(&env).expect("VERSION needs no other variable");
    assert_eq!(e.args, args);
}

/// The stdin configuration: as our plugin's configuration, as the VERSION request, and as
/// a primary CNI configuration file the installer chains into.
pub fn check_stdin(stdin: &[u8]) {
    check_netconf(stdin);
    check_invoke(stdin);
    check_conflist(stdin);
}

fn check_netconf(stdin: &[u8]) {
    let conf = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => {
            // Every refusal renders as a CNI error object.
            let _ = e.to_json("1.0.0").to_string();
            return;
        }
    };
    assert!(SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()));
    assert!(protocol::valid_id(&conf.name) || conf.name.is_empty());
    let out = protocol::pass_through(conf.prev_result.as_ref(), &conf.cni_version);
    assert_eq!(out["cniVersion"], Value::String(conf.cni_version.clone()));
    if conf.mode == Mode::Static {
        if let Ok(raw) = mesh_redirect::cni::pod::static_settings(&conf.redirect) {
            let _ = raw.validate(&GroupFile::default());
        }
    }
}

fn check_invoke(stdin: &[u8]) {
    let version = |k: &str| (k == "CNI_COMMAND").then(|| "VERSION".to_string());
    let answer = mesh_redirect::cni::invoke(&version, stdin)
        .expect("VERSION always answers")
        .expect("VERSION has a result");
    let v = answer["cniVersion"].as_str().expect("a cniVersion");
    assert!(SUPPORTED_VERSIONS.contains(&v));
    let bogus = |k: &str| (k == "CNI_COMMAND").then(|| "FUZZ".to_string());
    assert!(mesh_redirect::cni::invoke(&bogus, stdin).is_err());
}

fn check_conflist(bytes: &[u8]) {
    let Ok(primary) = conflist::parse(bytes) else {
        return;
    };
    // Rendering is a fixpoint after one round (the installer rewrites a file only once).
    // Not for fractional numbers: serde_json without its `float_roundtrip` feature may read
    // back a float one ULP off (e.g. 1.9285665300646325e-234), a known limit of its fast
    // parser, not of the installer.
    let once = conflist::render(&primary);
    let again = conflist::parse(&once).expect("our own rendering parses");
    if !has_float(&Value::Object(primary.clone())) {
        assert!(
            conflist::render(&again) == once,
            "rendering is not a fixpoint: {}",
            String::from_utf8_lossy(&once)
        );
    }

    // Each plugin of a list, as libcni hands it to the plugin.
    if let Some(Value::Array(plugins)) = primary.get("plugins") {
        for p in plugins.iter().take(8) {
            if let Value::Object(p) = p {
                let mut one = p.clone();
                for k in ["cniVersion", "name"] {
                    if let Some(v) = primary.get(k) {
                        one.insert(k.to_string(), v.clone());
                    }
                }
                if let Some(prev) = primary.get("prevResult") {
                    one.insert("prevResult".into(), prev.clone());
                }
                check_netconf(&serde_json::to_vec(&one).unwrap());
            }
        }
    }

    let settings: Map<String, Value> = match primary.get("redirect") {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    let Ok(entry) = conflist::plugin_entry(&settings, "/etc/cni/net.d/mesh-kubeconfig") else {
        return;
    };
    let shape = conflist::shape(&primary);
    match conflist::chain(primary.clone(), entry.clone()) {
        Ok(chained) => {
            assert!(shape.is_ok());
            assert!(conflist::has_entry(&chained.config));
            assert!(conflist::plugin_count(&chained.config) >= 1);
            // Chaining again changes nothing: our entry is replaced, not added twice.
            let twice = conflist::chain(chained.config.clone(), entry).expect("a list chains");
            assert!(conflist::same(&twice.config, &chained.config));
            let unchained = conflist::unchain(chained.config).expect("our entry was there");
            assert!(!conflist::has_entry(&unchained));
        }
        Err(_) => assert!(shape.is_err()),
    }
}

fn has_float(v: &Value) -> bool {
    match v {
        Value::Number(n) => n.is_f64(),
        Value::Array(a) => a.iter().any(has_float),
        Value::Object(m) => m.values().any(has_float),
        _ => false,
    }
}
