//! The fuzz targets of `fuzz/` as property tests, on stable and in every `cargo test`: the
//! same bodies (`fuzz/bodies/*.rs`, included here and by the fuzz targets), fed with
//! arbitrary bytes, with mutations of the committed seed corpora, and with structured
//! inputs (JSON values, Pod objects, flag lists, kubeconfigs, attribute trees, table blobs),
//! for a bounded number of cases each so that the file runs in seconds.
//!
//! Every committed seed (`fuzz/corpus/<target>/seed-*`) and every reproducer of a crash the
//! fuzzer once found (`fuzz/artifacts/<target>/*`) is replayed by `seeds_and_artifacts`.
//! `write_seed_corpus` (ignored) regenerates the seeds from the conformance cases and the
//! fixtures: `cargo test --test properties -- --ignored write_seed_corpus`.

mod support;

#[allow(dead_code)]
mod cni_config {
    include!("../fuzz/bodies/cni_config.rs");
}
#[allow(dead_code)]
mod flags {
    include!("../fuzz/bodies/flags.rs");
}
#[allow(dead_code)]
mod kubeconfig {
    include!("../fuzz/bodies/kubeconfig.rs");
}
#[allow(dead_code)]
mod nft_dump {
    include!("../fuzz/bodies/nft_dump.rs");
}
#[allow(dead_code)]
mod pod {
    include!("../fuzz/bodies/pod.rs");
}
#[allow(dead_code)]
mod xt_table {
    include!("../fuzz/bodies/xt_table.rs");
}

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

/// A target's name and its body.
type Target = (&'static str, fn(&[u8]));

const TARGETS: [Target; 6] = [
    ("cni_config", cni_config::run),
    ("pod", pod::run),
    ("flags", flags::run),
    ("kubeconfig", kubeconfig::run),
    ("nft_dump", nft_dump::run),
    ("xt_table", xt_table::run),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `fuzz/<kind>/<target>/` whose names start with `prefix`.
fn files(kind: &str, target: &str, prefix: &str) -> Vec<(String, Vec<u8>)> {
    let Ok(dir) = std::fs::read_dir(fuzz_dir().join(kind).join(target)) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = dir
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).expect("readable"))
        })
        .collect();
    out.sort();
    out
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let s: Vec<Vec<u8>> = files("corpus", target, "seed-")
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    assert!(!s.is_empty(), "fuzz/corpus/{target}/ holds seeds");
    s
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// libFuzzer-like edits: overwrite, insert, delete, or splice in an interesting byte.
fn mutate(mut data: Vec<u8>, edits: &[(usize, u8, u8)]) -> Vec<u8> {
    for &(at, byte, op) in edits {
        let i = if data.is_empty() { 0 } else { at % data.len() };
        match op % 4 {
            0 if !data.is_empty() => data[i] = byte,
            1 => data.insert(i, byte),
            2 if !data.is_empty() => {
                data.remove(i);
            }
            3 if !data.is_empty() => {
                data[i] = [0, 0xff, 0x7f, 0x80, b'"', b'{', b'}', b':'][usize::from(byte) % 8]
            }
            _ => data.push(byte),
        }
    }
    data
}

fn mutated_seed(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    (
        select(seeds(target)),
        vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..12),
    )
        .prop_map(|(seed, edits)| mutate(seed, &edits))
}

#[test]
fn seeds_and_artifacts() {
    for (target, run) in TARGETS {
        for (name, data) in
            files("corpus", target, "seed-")
                .into_iter()
                .chain(files("artifacts", target, ""))
        {
            eprintln!("{target}/{name}");
            run(&data);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Structured strategies.

/// A JSON value of bounded depth and size, with keys drawn mostly from `keys`.
fn json_value(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        interesting_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            vec((key(keys), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

fn key(keys: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(keys).prop_map(str::to_string),
        1 => "[a-zA-Z_.-]{0,12}",
    ]
}

/// Values that sit on parsing edges: ports, CIDRs, booleans, numbers out of range, lists.
fn interesting_string() -> impl Strategy<Value = String> {
    prop_oneof![
        select(
            &[
                "",
                "*",
                " ",
                ",",
                "0",
                "1",
                "22",
                "15001",
                "65535",
                "65536",
                "-1",
                "true",
                "false",
                "TRUE",
                "t",
                "F",
                "REDIRECT",
                "TPROXY",
                "NONE",
                "10.0.0.0/8",
                "0.0.0.0/0",
                "::/0",
                "fd00::/8",
                "10.0.0.1",
                "10.0.0.0/33",
                "::1/129",
                "eth0",
                "lo",
                "a b",
                "1-2",
                "22,80,443",
                "10.0.0.0/8,fd00::/8",
                "1.0.0",
                "0.3.1",
                "1.1.0",
                "0.1.0",
                "static",
                "kubernetes",
                "nftables",
                "iptables",
                "auto",
                "10s",
                "1500ms",
                "2m",
                "1337",
                "istio-proxy",
                "istio-init",
                "proxy",
                "sidecar",
                "router",
                "x\u{0}y",
                "é",
                "4294967296",
                "18446744073709551616",
                "1e3",
                "0x10",
            ][..]
        )
        .prop_map(str::to_string),
        "[ -~]{0,16}",
        any::<String>().prop_map(|s| s.chars().take(16).collect()),
    ]
}

// ---------------------------------------------------------------------------------------
// cni_config

const NETCONF_KEYS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "prevResult",
    "plugins",
    "kubernetes",
    "kubeconfig",
    "exclude_namespaces",
    "backend",
    "mode",
    "redirect",
    "api_timeout",
    "plugin_log_level",
    "log_level",
    "log_file",
    "interfaces",
    "ips",
    "routes",
    "dns",
    "excludeInboundPorts",
    "interceptionMode",
    "capabilities",
    "runtimeConfig",
];

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn cni_config_bytes(data in vec(any::<u8>(), 0..1024)) {
        cni_config::run(&data);
    }

    #[test]
    fn cni_config_mutated_seeds(data in mutated_seed("cni_config")) {
        cni_config::run(&data);
    }

    #[test]
    fn cni_config_json(v in json_value(NETCONF_KEYS), version in select(&["0.3.1", "0.4.0", "1.0.0", "1.1.0", "2.0.0"][..])) {
        let mut v = v;
        if let Value::Object(m) = &mut v {
            m.insert("cniVersion".into(), json!(version));
            m.entry("name").or_insert(json!("k8s-pod-network"));
        }
        cni_config::check_stdin(v.to_string().as_bytes());
    }

    #[test]
    fn cni_args(pairs in vec((select(&["K8S_POD_NAME", "K8S_POD_NAMESPACE", "K8S_POD_UID",
            "K8S_POD_INFRA_CONTAINER_ID", "IgnoreUnknown", "Other", ""][..]),
            interesting_string()), 0..6)) {
        let args: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        cni_config::check_args(&args.join(";"));
    }
}

// ---------------------------------------------------------------------------------------
// pod

const ANNOTATIONS: &[&str] = &[
    "sidecar.istio.io/inject",
    "sidecar.istio.io/status",
    "sidecar.istio.io/interceptionMode",
    "traffic.sidecar.istio.io/includeOutboundIPRanges",
    "traffic.sidecar.istio.io/excludeOutboundIPRanges",
    "traffic.sidecar.istio.io/includeInboundPorts",
    "traffic.sidecar.istio.io/excludeInboundPorts",
    "traffic.sidecar.istio.io/includeOutboundPorts",
    "traffic.sidecar.istio.io/excludeOutboundPorts",
    "traffic.sidecar.istio.io/excludeInterfaces",
    "traffic.sidecar.istio.io/kubevirtInterfaces",
    "istio.io/reroute-virtual-interfaces",
];

const DEFAULT_KEYS: &[&str] = &[
    "excludeInboundPorts",
    "excludeInterfaces",
    "excludeOutboundIPRanges",
    "excludeOutboundPorts",
    "includeInboundPorts",
    "includeOutboundIPRanges",
    "includeOutboundPorts",
    "interceptionMode",
    "rerouteVirtualInterfaces",
    "proxyUID",
    "proxyGID",
    "dnsCapture",
    "invalidDrop",
];

fn pod_description() -> impl Strategy<Value = Value> {
    let containers = vec(
        select(&["istio-proxy", "istio-init", "app", "istio-validation"][..]),
        0..3,
    );
    let env = btree_map(
        select(
            &[
                "ISTIO_META_DNS_CAPTURE",
                "INVALID_DROP",
                "ISTIO_DUAL_STACK",
                "OTHER",
            ][..],
        ),
        interesting_string(),
        0..4,
    );
    let id = prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(|n| json!(n)),
        (0i64..70000).prop_map(|n| json!(n))
    ];
    (
        btree_map(select(ANNOTATIONS), interesting_string(), 0..6),
        containers,
        env,
        id.clone(),
        id,
    )
        .prop_map(|(annotations, containers, env, uid, gid)| {
            json!({
                "annotations": annotations,
                "containers": containers,
                "istio_proxy_env": env,
                "istio_proxy_run_as_user": uid,
                "istio_proxy_run_as_group": gid,
            })
        })
}

fn redirect_defaults() -> impl Strategy<Value = Map<String, Value>> {
    let value = prop_oneof![
        4 => interesting_string().prop_map(Value::String),
        1 => json_value(DEFAULT_KEYS),
    ];
    vec((select(DEFAULT_KEYS).prop_map(str::to_string), value), 0..5)
        .prop_map(|kv| kv.into_iter().collect())
}

proptest! {
    #![proptest_config(config(384))]

    #[test]
    fn pod_bytes(data in vec(any::<u8>(), 0..1024)) {
        pod::run(&data);
    }

    #[test]
    fn pod_mutated_seeds(data in mutated_seed("pod")) {
        pod::run(&data);
    }

    #[test]
    fn pod_objects(desc in pod_description(), defaults in redirect_defaults()) {
        pod::check(&support::pod_object(&desc, "default", "fuzz"), &defaults);
    }

    #[test]
    fn pod_json(v in json_value(&["metadata", "spec", "annotations", "labels", "containers",
            "initContainers", "name", "namespace", "env", "value", "args", "securityContext",
            "runAsUser", "runAsGroup"])) {
        pod::check(&v, &Map::new());
    }
}

// ---------------------------------------------------------------------------------------
// flags

fn flag_list() -> impl Strategy<Value = (Vec<String>, Vec<(String, String)>)> {
    let flags: Vec<String> = mesh_redirect::config::knobs::ALL
        .iter()
        .flat_map(|k| {
            k.flag
                .map(str::to_string)
                .into_iter()
                .chain(k.short.map(|c| format!("-{c}")))
        })
        .chain(["--help", "--", "-", "--nonexistent"].map(str::to_string))
        .collect();
    let envs: Vec<String> = mesh_redirect::config::knobs::ALL
        .iter()
        .flat_map(|k| k.env.iter().map(|e| e.to_string()))
        .collect();
    let arg = (select(flags), interesting_string(), 0u8..4).prop_map(|(f, v, how)| match how {
        0 => vec![f],
        1 => vec![format!("{f}={v}")],
        _ => vec![f, v],
    });
    (
        vec(arg, 0..8).prop_map(|a| a.concat()),
        vec((select(envs), interesting_string()), 0..6),
    )
}

proptest! {
    #![proptest_config(config(384))]

    #[test]
    fn flags_bytes(data in vec(any::<u8>(), 0..512)) {
        flags::run(&data);
    }

    #[test]
    fn flags_mutated_seeds(data in mutated_seed("flags")) {
        flags::run(&data);
    }

    #[test]
    fn flag_lists((args, env) in flag_list(), groups in select(&["", "java:x:3000:\nftp:x:3001:\n", "x:y:notanumber:\n:::\n"][..])) {
        flags::check(&args, &env, groups);
    }
}

// ---------------------------------------------------------------------------------------
// kubeconfig

fn kubeconfig_text() -> impl Strategy<Value = String> {
    let b64 = |n| {
        vec(any::<u8>(), 0..n).prop_map(|b| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(b)
        })
    };
    let field = prop_oneof![
        (
            "server",
            prop_oneof![
                Just("https://10.96.0.1:443".to_string()),
                interesting_string()
            ]
        ),
        (
            "insecure-skip-tls-verify",
            select(&["true", "false", "1", "yes"][..]).prop_map(str::to_string)
        ),
        ("certificate-authority-data", b64(64)),
        (
            "certificate-authority",
            select(&["ca.crt", "/nonexistent/ca.crt", ""][..]).prop_map(str::to_string)
        ),
        ("client-certificate-data", b64(64)),
        ("client-key-data", b64(64)),
        ("token", interesting_string()),
        (
            "tokenFile",
            select(&["token", "/nonexistent/token"][..]).prop_map(str::to_string)
        ),
        (
            "cluster",
            select(&["c", "d", ""][..]).prop_map(str::to_string)
        ),
        ("user", select(&["u", "v", ""][..]).prop_map(str::to_string)),
    ];
    let entry = (select(&["c", "d", "u", "v", "x", ""][..]), vec(field, 0..5));
    let list = vec(entry, 0..3);
    (
        list.clone(),
        list.clone(),
        list,
        select(&["", "c", "x", "d"][..]),
        any::<bool>(),
    )
        .prop_map(|(clusters, contexts, users, current, as_json)| {
            let section = |items: &[(&str, Vec<(String, String)>)], inner: &str| -> Value {
                Value::Array(
                    items
                        .iter()
                        .map(|(name, fields)| {
                            let body: Map<String, Value> = fields
                                .iter()
                                .map(|(k, v)| {
                                    let v = match v.as_str() {
                                        "true" => json!(true),
                                        "false" => json!(false),
                                        _ => json!(v),
                                    };
                                    (k.clone(), v)
                                })
                                .collect();
                            json!({"name": name, inner: body})
                        })
                        .collect(),
                )
            };
            let doc = json!({
                "apiVersion": "v1", "kind": "Config",
                "clusters": section(&clusters, "cluster"),
                "contexts": section(&contexts, "context"),
                "users": section(&users, "user"),
                "current-context": current,
            });
            if as_json {
                doc.to_string()
            } else {
                serde_norway::to_string(&doc).expect("YAML")
            }
        })
}

proptest! {
    #![proptest_config(config(384))]

    #[test]
    fn kubeconfig_bytes(data in vec(any::<u8>(), 0..1024)) {
        kubeconfig::run(&data);
    }

    #[test]
    fn kubeconfig_mutated_seeds(data in mutated_seed("kubeconfig")) {
        kubeconfig::run(&data);
    }

    #[test]
    fn kubeconfig_documents(text in kubeconfig_text()) {
        kubeconfig::check(&text);
    }
}

// ---------------------------------------------------------------------------------------
// nft_dump

/// A netlink attribute tree.
#[derive(Debug, Clone)]
enum Attr {
    Leaf(u16, Vec<u8>),
    Nest(u16, Vec<Attr>),
}

fn attr_tree() -> impl Strategy<Value = Attr> {
    let value = prop_oneof![
        vec(any::<u8>(), 0..12),
        select(
            &[
                "istio-proxy-nat",
                "istio-proxy-mangle",
                "istio-proxy-raw",
                "PREROUTING",
                "OUTPUT",
                "meta",
                "cmp",
                "payload",
                "bitwise",
                "lookup",
                "counter",
                "immediate",
                "redir",
                "tproxy",
                "ct",
                "__set0",
                "nat",
                "filter"
            ][..]
        )
        .prop_map(|s| {
            let mut b = s.as_bytes().to_vec();
            b.push(0);
            b
        }),
        any::<u32>().prop_map(|n| n.to_be_bytes().to_vec()),
    ];
    let leaf = (1u16..12, value).prop_map(|(t, v)| Attr::Leaf(t, v));
    leaf.prop_recursive(4, 40, 6, |inner| {
        (1u16..12, vec(inner, 0..6)).prop_map(|(t, kids)| Attr::Nest(t, kids))
    })
}

fn encode_attr(a: &Attr, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let ty = match a {
        Attr::Leaf(t, v) => {
            out.extend_from_slice(v);
            *t
        }
        Attr::Nest(t, kids) => {
            for k in kids {
                encode_attr(k, out);
            }
            *t | 0x8000
        }
    };
    let len = (out.len() - start) as u16;
    out[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    out[start + 2..start + 4].copy_from_slice(&ty.to_ne_bytes());
    out.resize(out.len().next_multiple_of(4), 0);
}

fn dump_messages() -> impl Strategy<Value = Vec<u8>> {
    let msg = (select(&[0u16, 3, 6, 9, 12][..]), vec(attr_tree(), 0..6));
    vec(msg, 0..8).prop_map(|msgs| {
        let mut out = Vec::new();
        for (ty, attrs) in msgs {
            let start = out.len();
            out.extend_from_slice(&[0; 16]);
            out.extend_from_slice(&[1, 0, 0, 0]); // nfgenmsg: inet
            for a in &attrs {
                encode_attr(a, &mut out);
            }
            let len = (out.len() - start) as u32;
            out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
            out[start + 4..start + 6].copy_from_slice(&((10u16 << 8) | ty).to_ne_bytes());
        }
        out
    })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn nft_dump_bytes(data in vec(any::<u8>(), 0..1024)) {
        nft_dump::run(&data);
    }

    #[test]
    fn nft_dump_mutated_seeds(data in mutated_seed("nft_dump")) {
        nft_dump::run(&data);
    }

    #[test]
    fn nft_dump_attribute_trees(data in dump_messages()) {
        nft_dump::run(&data);
    }
}

// ---------------------------------------------------------------------------------------
// xt_table

proptest! {
    #![proptest_config(config(384))]

    #[test]
    fn xt_table_bytes(data in vec(any::<u8>(), 0..1024)) {
        xt_table::run(&data);
    }

    #[test]
    fn xt_table_mutated_seeds(data in mutated_seed("xt_table")) {
        xt_table::run(&data);
    }

    /// A real blob under hook offsets that may not fit it.
    #[test]
    fn xt_table_offsets(seed in select(seeds("xt_table")), hooks in vec(0u32..2048, 11), which in any::<u16>()) {
        let mut data = seed;
        let at = 1 + 4 * (usize::from(which) % 11);
        data[at..at + 4].copy_from_slice(&hooks[usize::from(which) % 11].to_ne_bytes());
        xt_table::run(&data);
    }

    /// Tables we write ourselves, for configurations from flags.
    #[test]
    fn xt_table_of_our_plans((args, env) in flag_list()) {
        let lookup = |k: &str| env.iter().rev().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let Ok(raw) = mesh_redirect::cli::raw_config(&args, &lookup) else { return Ok(()) };
        let Ok(cfg) = raw.validate(&mesh_redirect::config::GroupFile::default()) else { return Ok(()) };
        let plan = mesh_redirect::model::build(&cfg, mesh_redirect::model::Flavor::Iptables);
        for (l, family) in [(mesh_redirect::xt::abi::IPV4, mesh_redirect::model::Family::V4),
                            (mesh_redirect::xt::abi::IPV6, mesh_redirect::model::Family::V6)] {
            for (table, name, hooks) in OUR_TABLES {
                let t = mesh_redirect::xt::merge::merge(
                    &mesh_redirect::xt::table::Table::instantiated(name, hooks), &plan, table, family, l);
                let enc = t.encode(l).expect("our tables encode");
                xt_table::check(name, t.valid_hooks, enc.hook_entry, enc.underflow, &enc.blob, l);
            }
        }
    }
}

const OUR_TABLES: [(mesh_redirect::model::Table, &str, &[usize]); 3] = [
    (mesh_redirect::model::Table::Nat, "nat", &[0, 1, 3, 4]),
    (
        mesh_redirect::model::Table::Mangle,
        "mangle",
        &[0, 1, 2, 3, 4],
    ),
    (mesh_redirect::model::Table::Raw, "raw", &[0, 3]),
];

// ---------------------------------------------------------------------------------------
// The seed corpora.

/// Writes `fuzz/corpus/<target>/seed-*` from the fixtures and the conformance cases.
#[test]
#[ignore = "regenerates the committed seed corpora"]
fn write_seed_corpus() {
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
    };
    let with_nul = |a: &[u8], b: &[u8]| [a, b"\0", b].concat();

    // cni_config: the primaries' files, and configurations of ours.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/fixtures/cni");
    let args = b"K8S_POD_NAME=productpage-v1;K8S_POD_NAMESPACE=default;K8S_POD_INFRA_CONTAINER_ID=0123abcd;K8S_POD_UID=7f9c1c9e;IgnoreUnknown=1";
    for e in std::fs::read_dir(&fixtures).unwrap().map(Result::unwrap) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".conf") || name.ends_with(".conflist") {
            write(
                "cni_config",
                &name,
                &with_nul(args, &std::fs::read(e.path()).unwrap()),
            );
        }
    }
    let prev = json!({"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}],
        "ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 0}],
        "routes": [{"dst": "0.0.0.0/0"}], "dns": {"nameservers": ["10.96.0.10"]}});
    let ours = [
        (
            "static",
            json!({"cniVersion": "1.0.0", "name": "mesh-test", "type": "mesh-redirect",
            "mode": "static", "backend": "nftables", "redirect": {"excludeInboundPorts": "22",
            "interceptionMode": "TPROXY", "includeOutboundIPRanges": "10.0.0.0/8"},
            "someFutureKey": {"x": 1}, "prevResult": prev}),
        ),
        (
            "kubernetes",
            json!({"cniVersion": "1.1.0", "name": "k8s-pod-network", "type": "mesh-redirect",
            "kubernetes": {"kubeconfig": "/etc/cni/net.d/istio-cni-kubeconfig",
                "exclude_namespaces": ["kube-system", "istio-system"]},
            "exclude_namespaces": ["other"], "backend": "auto", "api_timeout": "1500ms",
            "plugin_log_level": "debug", "prevResult": prev}),
        ),
        (
            "old-version",
            json!({"cniVersion": "0.3.1", "name": "n", "type": "mesh-redirect", "mode": "static"}),
        ),
    ];
    for (name, conf) in ours {
        write(
            "cni_config",
            name,
            &with_nul(args, conf.to_string().as_bytes()),
        );
    }

    // pod: Istio's CNI-plugin cases as the API server returns them.
    for case in support::cni_cases() {
        let pod = support::pod_object(&case.pod, "default", &case.name).to_string();
        write("pod", &case.name, pod.as_bytes());
    }
    let pod = support::pod_object(&support::cni_cases()[0].pod, "default", "with-defaults");
    let defaults =
        json!({"excludeInboundPorts": "15020", "interceptionMode": "TPROXY", "dnsCapture": "true"});
    write(
        "pod",
        "with-defaults",
        &with_nul(pod.to_string().as_bytes(), defaults.to_string().as_bytes()),
    );

    // flags: Istio's capture cases.
    for case in support::capture_cases() {
        let env: Vec<String> = case.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let data = [
            case.args.join("\n"),
            env.join("\n"),
            support::TEST_GROUP_FILE.to_string(),
        ]
        .join("\0");
        write("flags", &case.name, data.as_bytes());
    }

    // kubeconfig: as the installer and the tests write them.
    let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let b64 = |b: &[u8]| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(b)
    };
    let ca_data = b64(ca.cert.pem().as_bytes());
    let key_data = b64(ca.signing_key.serialize_pem().as_bytes());
    let yaml = |cluster: &str, user: &str| {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n{cluster}\
         contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n\
         current-context: test\nusers:\n- name: test\n  user:\n{user}"
        )
    };
    let server = "    server: \"https://127.0.0.1:6443\"\n";
    write(
        "kubeconfig",
        "token",
        yaml(
            &format!("{server}    certificate-authority-data: \"{ca_data}\"\n"),
            "    token: \"t0ken\"\n",
        )
        .as_bytes(),
    );
    write(
        "kubeconfig",
        "insecure",
        yaml(
            &format!("{server}    insecure-skip-tls-verify: true\n"),
            "    tokenFile: \"token\"\n",
        )
        .as_bytes(),
    );
    write(
        "kubeconfig",
        "client-cert",
        yaml(
            &format!("{server}    certificate-authority-data: \"{ca_data}\"\n"),
            &format!(
                "    client-certificate-data: \"{ca_data}\"\n    client-key-data: \"{key_data}\"\n"
            ),
        )
        .as_bytes(),
    );
    write(
        "kubeconfig",
        "ca-file",
        yaml(
            &format!("{server}    certificate-authority: ca.crt\n"),
            "    token: \"x\"\n",
        )
        .as_bytes(),
    );
    let as_json = json!({"apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "a", "cluster": {"server": "https://10.96.0.1:443", "certificate-authority-data": ca_data}},
                     {"name": "b", "cluster": {"server": "https://b:443", "insecure-skip-tls-verify": true}}],
        "contexts": [{"name": "ca", "context": {"cluster": "a", "user": "u"}}, {"name": "cb", "context": {"cluster": "b"}}],
        "users": [{"name": "u", "user": {"token": "abc"}}], "current-context": "cb"});
    write(
        "kubeconfig",
        "json-two-clusters",
        serde_json::to_string_pretty(&as_json).unwrap().as_bytes(),
    );

    // nft_dump: what a kernel holding our tables dumps (the in-memory fake's replies), and
    // one batch as we send it.
    use mesh_redirect::kernel::{fake::FakeKernel, Kernel, NfDump, NfTables};
    use mesh_redirect::nft::abi::*;
    let message = |out: &mut Vec<u8>, ty: u16, body: &[u8]| {
        let len = (16 + 4 + body.len()) as u32;
        out.extend_from_slice(&len.to_ne_bytes());
        out.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | ty).to_ne_bytes());
        out.extend_from_slice(&[0x02, 0x00]); // NLM_F_MULTI
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&[NFPROTO_INET, 0, 0, 0]);
        out.extend_from_slice(body);
        out.resize(out.len().next_multiple_of(4), 0);
    };
    for case in support::capture_cases().iter().step_by(4) {
        let cfg = case
            .raw()
            .validate(&mesh_redirect::config::GroupFile::parse(
                support::TEST_GROUP_FILE,
            ))
            .unwrap();
        let plan = mesh_redirect::model::build(&cfg, mesh_redirect::model::Flavor::Nftables);
        let k = FakeKernel::default();
        let mut sock = k.nftables().unwrap();
        let batch = mesh_redirect::nft::batch::encode(
            &plan,
            mesh_redirect::nft::batch::Shape::Create,
            sock.reserve_seqs(0),
        );
        sock.send_batch(&batch).unwrap();
        let mut out = Vec::new();
        let tables = sock.dump(NfDump::Tables).unwrap();
        for t in &tables {
            message(&mut out, NFT_MSG_NEWTABLE, t);
        }
        for c in sock.dump(NfDump::Chains).unwrap() {
            message(&mut out, NFT_MSG_NEWCHAIN, &c);
        }
        let sets = sock.dump(NfDump::Sets).unwrap();
        for s in &sets {
            message(&mut out, NFT_MSG_NEWSET, s);
        }
        for s in &sets {
            let attr = |ty| {
                mesh_redirect::netlink::wire::find_attr(s, ty)
                    .and_then(|a| a.str())
                    .unwrap()
                    .to_string()
            };
            let (table, set) = (attr(NFTA_SET_TABLE), attr(NFTA_SET_NAME));
            for e in sock
                .dump(NfDump::SetElements {
                    table: &table,
                    set: &set,
                })
                .unwrap()
            {
                message(&mut out, NFT_MSG_NEWSETELEM, &e);
            }
        }
        for t in &tables {
            let name = mesh_redirect::netlink::wire::find_attr(t, NFTA_TABLE_NAME)
                .and_then(|a| a.str())
                .unwrap()
                .to_string();
            for r in sock.dump(NfDump::Rules { table: &name }).unwrap() {
                message(&mut out, NFT_MSG_NEWRULE, &r);
            }
        }
        write("nft_dump", &format!("dump-{}", case.name), &out);
        if case.name.contains("tproxy") {
            write("nft_dump", &format!("batch-{}", case.name), &batch.bytes);
        }
    }
    let plan = mesh_redirect::model::build(
        &support::capture_cases()[0]
            .raw()
            .validate(&mesh_redirect::config::GroupFile::default())
            .unwrap(),
        mesh_redirect::model::Flavor::Nftables,
    );
    write(
        "nft_dump",
        "batch-replace",
        &mesh_redirect::nft::batch::encode(&plan, mesh_redirect::nft::batch::Shape::Replace, 1)
            .bytes,
    );

    // xt_table: tables iptables-legacy-restore wrote (ruleset/xtables), and ours.
    for (i, name) in ["nat", "mangle", "raw"].iter().enumerate() {
        for (bit, fam) in [(0u8, "ipv4"), (1, "ipv6")] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(format!("ruleset/xtables/tproxy-{name}-{fam}.bin"));
            let sel = bit | ((i as u8) << 1);
            write(
                "xt_table",
                &format!("iptables-restore-{name}-{fam}"),
                &[&[sel][..], &std::fs::read(path).unwrap()].concat(),
            );
        }
    }
    let case = support::capture_cases()
        .into_iter()
        .find(|c| c.name.contains("ipv6"))
        .unwrap();
    let cfg = case
        .raw()
        .validate(&mesh_redirect::config::GroupFile::parse(
            support::TEST_GROUP_FILE,
        ))
        .unwrap();
    let plan = mesh_redirect::model::build(&cfg, mesh_redirect::model::Flavor::Iptables);
    for (l, family, bit, fam) in [
        (
            mesh_redirect::xt::abi::IPV4,
            mesh_redirect::model::Family::V4,
            0u8,
            "ipv4",
        ),
        (
            mesh_redirect::xt::abi::IPV6,
            mesh_redirect::model::Family::V6,
            1,
            "ipv6",
        ),
    ] {
        for (i, (table, name, hooks)) in OUR_TABLES.into_iter().enumerate() {
            let t = mesh_redirect::xt::merge::merge(
                &mesh_redirect::xt::table::Table::instantiated(name, hooks),
                &plan,
                table,
                family,
                l,
            );
            let enc = t.encode(l).unwrap();
            let mut data = vec![bit | ((i as u8) << 1)];
            data.extend_from_slice(&t.valid_hooks.to_ne_bytes());
            for h in enc.hook_entry.iter().chain(&enc.underflow) {
                data.extend_from_slice(&h.to_ne_bytes());
            }
            data.extend_from_slice(&enc.blob);
            write(
                "xt_table",
                &format!("ours-{}-{name}-{fam}", case.name),
                &data,
            );
        }
    }
}

/// The seeds are worth their name: they get past the parsers into what follows.
#[test]
fn seeds_reach_past_the_parsers() {
    for (name, data) in files("corpus", "kubeconfig", "seed-") {
        if name != "seed-ca-file" {
            let text = String::from_utf8(data).unwrap();
            mesh_redirect::cni::kube::KubeConfig::parse(&text, Path::new("/nonexistent"))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
    for (name, data) in files("corpus", "nft_dump", "seed-dump-") {
        let mut replies = nft_dump::Replies::from_messages(&data);
        let tables = mesh_redirect::nft::readback::read_tables(
            &mut replies,
            &mesh_redirect::backend::nftables::our_table_names(),
        )
        .unwrap();
        assert!(
            tables
                .iter()
                .any(|t| t.chains.iter().any(|c| !c.rules.is_empty())),
            "{name}: rules read back"
        );
    }
    for (name, data) in files("corpus", "xt_table", "seed-") {
        let l = if data[0] & 1 == 0 {
            mesh_redirect::xt::abi::IPV4
        } else {
            mesh_redirect::xt::abi::IPV6
        };
        let u = |i: usize| u32::from_ne_bytes(data[1 + 4 * i..5 + 4 * i].try_into().unwrap());
        let hooks = |o: usize| [u(o), u(o + 1), u(o + 2), u(o + 3), u(o + 4)];
        mesh_redirect::xt::table::Table::decode("t", u(0), hooks(1), hooks(6), &data[45..], l)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
    }
    for (name, data) in files("corpus", "pod", "seed-") {
        let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
        let pod: Value = serde_json::from_slice(&data[..end]).unwrap();
        let info = mesh_redirect::cni::pod::PodInfo::from_pod(&pod);
        let raw = mesh_redirect::cni::pod::redirect_settings(&info, &Map::new()).unwrap();
        raw.validate(&mesh_redirect::config::GroupFile::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// Found by the `xt_table` fuzz target (`fuzz/artifacts/xt_table/crash-4d7212d7…`, panic at
/// `src/xt/table.rs` `Extension::write`: "range end index 48 out of range for slice of length
/// 29"). Names are decoded with `from_utf8_lossy`, so a name whose bytes are not UTF-8 grows
/// (each byte becomes U+FFFD, 3 bytes) past its field, and `Table::encode` panics copying it
/// back: a match or target name (29-byte field, `Extension::write`) or a user chain name
/// (30-byte field, `error_target`). A table holding such a name decodes fine, so any tool
/// that writes one made our apply panic. Fixed: names are decoded one char per byte and
/// written back byte for byte, so such a table round-trips.
#[test]
fn xt_table_names_that_are_not_utf8() {
    let seed = std::fs::read(fuzz_dir().join("corpus/xt_table/seed-iptables-restore-mangle-ipv4"))
        .unwrap();
    let at = |needle: &[u8]| {
        seed.windows(needle.len())
            .position(|w| w == needle)
            .unwrap_or_else(|| panic!("{needle:?} in the seed"))
    };
    // A match name (`mark`, after its 16-bit size 48), then a user chain name
    // (`ISTIO_DIVERT`), overwritten with 0xff bytes (the field's final NUL kept).
    let mut panics = Vec::new();
    for (what, needle, skip, field) in [
        ("match name", &b"0\0mark"[..], 2, 29),
        ("chain name", &b"ISTIO_DIVERT"[..], 0, 30),
    ] {
        let mut data = seed.clone();
        let i = at(needle) + skip;
        data[i..i + field - 1].fill(0xff);
        let l = mesh_redirect::xt::abi::IPV4;
        let u = |i: usize| u32::from_ne_bytes(data[1 + 4 * i..5 + 4 * i].try_into().unwrap());
        let hooks = |o: usize| [u(o), u(o + 1), u(o + 2), u(o + 3), u(o + 4)];
        let t = mesh_redirect::xt::table::Table::decode(
            "mangle",
            u(0),
            hooks(1),
            hooks(6),
            &data[45..],
            l,
        )
        .expect("decodes");
        match std::panic::catch_unwind(|| t.encode(l)) {
            Err(_) => panics.push(what),
            // The name is written back byte for byte.
            Ok(enc) => assert!(
                enc.expect("encodes")
                    .blob
                    .windows(field - 1)
                    .any(|w| w.iter().all(|b| *b == 0xff)),
                "{what}: the bytes were not kept"
            ),
        }
    }
    assert!(
        panics.is_empty(),
        "encode panics on a {panics:?} that is not UTF-8"
    );
}
