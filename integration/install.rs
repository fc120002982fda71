//! The node installer (`install`): chaining into real primary configurations, the kubeconfig,
//! the binary copy, atomicity, the inotify repair loop and uninstalling. No root needed:
//! every test builds a fake node (bin, net.d, service account) in its own temporary directory.
//!
//! The primaries are in `fixtures/cni/` (see its README): Calico, Flannel, Cilium (list and
//! old single-plugin form), AWS VPC CNI, kindnet and a bare bridge `.conf`.

mod support;

use mesh_redirect::cni::kube::KubeConfig;
use mesh_redirect::cni::netconf::NetConf;
use mesh_redirect::install::{
    install, run, run_until, uninstall, Change, InstallError, InstallOptions, Stopper,
};
use serde_json::{json, Map, Value};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};
use support::{run_with_stdin, TempDir, TestNetns};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/integration/fixtures/cni");
/// The repair deadline the installer promises (debounce 100 ms + a pass).
const REPAIR: Duration = Duration::from_secs(2);

/// A fake node: `<root>/{bin,net.d,sa}`, a "binary" to install and a service account.
struct Node {
    root: TempDir,
    opts: InstallOptions,
}

fn fixture(name: &str) -> Vec<u8> {
    fs::read(Path::new(FIXTURES).join(name)).unwrap()
}

fn test_ca() -> String {
    rcgen::generate_simple_self_signed(vec!["kubernetes".to_string()])
        .unwrap()
        .cert
        .pem()
}

impl Node {
    fn new(test: &str) -> Node {
        let root = TempDir::new(&format!("install-{test}"), &["bin", "net.d", "sa", "src"]);
        fs::write(
            root.join("sa/token"),
            "eyJhbGciOiJSUzI1NiJ9.test-token.sig\n",
        )
        .unwrap();
        fs::write(root.join("sa/ca.crt"), test_ca()).unwrap();
        fs::write(root.join("sa/namespace"), "istio-system").unwrap();
        let binary = root.join("src/mesh-redirect");
        fs::write(&binary, b"\x7fELF pretend binary\n".repeat(5000)).unwrap();
        let opts = InstallOptions {
            cni_bin_dir: root.join("bin"),
            cni_conf_dir: root.join("net.d"),
            host_cni_conf_dir: "/etc/cni/net.d".into(),
            service_account_dir: root.join("sa"),
            kubernetes_service_host: Some("10.96.0.1".into()),
            kubernetes_service_port: Some("443".into()),
            plugin: settings(json!({
                "exclude_namespaces": ["kube-system"],
                "plugin_log_level": "info",
                "backend": "auto",
            })),
            binary,
            ready_file: Some(root.join("ready")),
            cleanup_on_exit: false,
            once: false,
        };
        Node { root, opts }
    }

    fn with_primary(test: &str, name: &str) -> Node {
        let node = Node::new(test);
        node.put(name, &fixture(name));
        node
    }

    fn conf(&self, name: &str) -> PathBuf {
        self.opts.cni_conf_dir.join(name)
    }

    fn put(&self, name: &str, bytes: &[u8]) {
        fs::write(self.conf(name), bytes).unwrap();
    }

    fn read_json(&self, name: &str) -> Map<String, Value> {
        let bytes = fs::read(self.conf(name)).unwrap();
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(m)) => m,
            other => panic!("{name}: {other:?}\n{}", String::from_utf8_lossy(&bytes)),
        }
    }

    fn names(&self, dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn ready(&self) -> bool {
        self.opts.ready_file.as_ref().unwrap().exists()
    }

    /// Starts `run_until` in a thread; returns its stopper and handle.
    fn start(&self) -> (Stopper, thread::JoinHandle<Result<(), InstallError>>) {
        let stop = Stopper::new().unwrap();
        let (opts, s) = (self.opts.clone(), stop.clone());
        let h = thread::spawn(move || run_until(&opts, &s));
        (stop, h)
    }
}

fn settings(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("settings must be an object"),
    }
}

fn compact(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap()
}

fn plugins(conf: &Map<String, Value>) -> &Vec<Value> {
    conf["plugins"].as_array().expect("plugins array")
}

fn ours_count(conf: &Map<String, Value>) -> usize {
    plugins(conf)
        .iter()
        .filter(|p| p["type"] == "mesh-redirect")
        .count()
}

fn has_our_entry_last(conf: &Map<String, Value>) -> bool {
    plugins(conf)
        .last()
        .is_some_and(|p| p["type"] == "mesh-redirect")
        && ours_count(conf) == 1
}

fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    cond()
}

fn stop_and_join(stop: &Stopper, h: thread::JoinHandle<Result<(), InstallError>>) {
    stop.stop();
    h.join()
        .expect("run_until panicked")
        .expect("run_until failed");
}

/// What libcni demands of a plugin list before the runtime uses it
/// (`ConfListFromBytes` + skel): a valid name, a version, a non-empty list of plugins with a
/// `type` each; and our entry must pass the plugin's own parser as libcni hands it over.
fn assert_libcni_accepts(conf: &Map<String, Value>) {
    let name = conf["name"].as_str().expect("name");
    assert!(
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    );
    let version = conf["cniVersion"].as_str().expect("cniVersion");
    assert!(
        ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"].contains(&version),
        "{version}"
    );
    let list = plugins(conf);
    assert!(!list.is_empty());
    for p in list {
        assert!(p["type"].as_str().is_some_and(|t| !t.is_empty()), "{p}");
    }
    let mut ours = list.last().unwrap().as_object().unwrap().clone();
    ours.insert("cniVersion".into(), version.into());
    ours.insert("name".into(), name.into());
    NetConf::parse(&serde_json::to_vec(&ours).unwrap()).expect("the plugin accepts its entry");
}

/// Every plugin of `original` is in `now`, in order and equal down to key order, followed by
/// our entry; every top-level field of `original` is unchanged too.
fn assert_chained_onto(original: &Map<String, Value>, now: &Map<String, Value>) {
    let (a, b) = (plugins(original), plugins(now));
    assert_eq!(b.len(), a.len() + 1, "{}", compact(now));
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x, y);
        assert_eq!(compact(x), compact(y), "key order changed");
    }
    assert!(has_our_entry_last(now));
    let keys = |m: &Map<String, Value>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(original), keys(now), "top-level key order changed");
    for (k, v) in original {
        if k != "plugins" {
            assert_eq!(compact(v), compact(&now[k]), "{k} changed");
        }
    }
}

fn parse(bytes: &[u8]) -> Map<String, Value> {
    serde_json::from_slice(bytes).unwrap()
}

#[test]
fn chains_into_every_list_primary_and_keeps_it_intact() {
    for name in [
        "10-calico.conflist",
        "10-flannel.conflist",
        "05-cilium.conflist",
        "10-aws.conflist",
        "10-kindnet.conflist",
    ] {
        let node = Node::with_primary("lists", name);
        let report = install(&node.opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(report.conflist, node.conf(name));
        assert_eq!(report.conflist_change, Change::Written);
        assert_eq!(report.converted_from, None);
        let now = node.read_json(name);
        assert_chained_onto(&parse(&fixture(name)), &now);
        assert_libcni_accepts(&now);
        let ours = plugins(&now).last().unwrap();
        assert_eq!(
            compact(ours),
            compact(&json!({
                "type": "mesh-redirect",
                "exclude_namespaces": ["kube-system"],
                "plugin_log_level": "info",
                "backend": "auto",
                "kubernetes": {"kubeconfig": "/etc/cni/net.d/mesh-redirect-kubeconfig"},
            })),
            "{name}"
        );
        assert_eq!(
            node.names(&node.opts.cni_conf_dir),
            [name.to_string(), "mesh-redirect-kubeconfig".into()],
            "{name}: stray files"
        );
    }
}

#[test]
fn a_second_pass_changes_nothing() {
    let node = Node::with_primary("idem", "10-calico.conflist");
    install(&node.opts).unwrap();
    let paths = [
        node.conf("10-calico.conflist"),
        node.opts.kubeconfig_path(),
        node.opts.installed_binary(),
    ];
    let before: Vec<_> = paths
        .iter()
        .map(|p| {
            let m = fs::metadata(p).unwrap();
            (
                fs::read(p).unwrap(),
                m.ino(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime_nsec(),
            )
        })
        .collect();
    thread::sleep(Duration::from_millis(20));
    let report = install(&node.opts).unwrap();
    assert_eq!(report.binary_change, Change::Unchanged);
    assert_eq!(report.kubeconfig_change, Change::Unchanged);
    assert_eq!(report.conflist_change, Change::Unchanged);
    for (p, b) in paths.iter().zip(&before) {
        let m = fs::metadata(p).unwrap();
        let after = (
            fs::read(p).unwrap(),
            m.ino(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime_nsec(),
        );
        assert!(after == *b, "{} was rewritten", p.display());
    }
}

#[test]
fn changed_settings_update_our_entry_in_place_at_the_end() {
    let node = Node::with_primary("update", "10-aws.conflist");
    install(&node.opts).unwrap();
    let mut opts = node.opts.clone();
    opts.plugin = settings(json!({"backend": "nftables", "api_timeout": "5s",
                                 "kubernetes": {"exclude_namespaces": ["x"]}}));
    let report = install(&opts).unwrap();
    assert_eq!(report.conflist_change, Change::Written);
    let now = node.read_json("10-aws.conflist");
    assert_chained_onto(&parse(&fixture("10-aws.conflist")), &now);
    assert_eq!(
        compact(plugins(&now).last().unwrap()),
        compact(
            &json!({"type": "mesh-redirect", "backend": "nftables", "api_timeout": "5s",
            "kubernetes": {"exclude_namespaces": ["x"],
                           "kubeconfig": "/etc/cni/net.d/mesh-redirect-kubeconfig"}})
        )
    );

    // Our entry not last (the primary appended a plugin after it): moved back to the end.
    let mut moved = now.clone();
    let list = moved["plugins"].as_array_mut().unwrap();
    list.push(json!({"type": "tuning", "sysctl": {"net.core.somaxconn": "512"}}));
    fs::write(
        node.conf("10-aws.conflist"),
        serde_json::to_vec(&moved).unwrap(),
    )
    .unwrap();
    install(&opts).unwrap();
    let again = node.read_json("10-aws.conflist");
    assert!(has_our_entry_last(&again));
    assert_eq!(plugins(&again)[plugins(&again).len() - 2]["type"], "tuning");
}

#[test]
fn single_plugin_conf_becomes_a_conflist() {
    for (name, list_name, version, network) in [
        ("10-bridge.conf", "10-bridge.conflist", "1.0.0", "mynet"),
        ("05-cilium.conf", "05-cilium.conflist", "0.3.1", "cilium"),
    ] {
        let node = Node::with_primary("conf", name);
        let report = install(&node.opts).unwrap();
        assert_eq!(report.conflist, node.conf(list_name));
        assert_eq!(report.converted_from, Some(node.conf(name)));
        assert!(!node.conf(name).exists(), "the old {name} is removed");
        let now = node.read_json(list_name);
        assert_libcni_accepts(&now);
        assert_eq!(
            now.keys().collect::<Vec<_>>(),
            ["cniVersion", "name", "plugins"]
        );
        assert_eq!(now["cniVersion"], version, "the primary's version moved up");
        // The network keeps its name: host-local's allocations are kept under it.
        assert_eq!(now["name"], network, "the network is not renamed");
        // The primary, minus its cniVersion, every other key in place.
        let mut primary = parse(&fixture(name));
        primary.shift_remove("cniVersion");
        assert_eq!(compact(&plugins(&now)[0]), compact(&primary));
        assert!(has_our_entry_last(&now));
        assert_eq!(plugins(&now).len(), 2);

        // Idempotent, and the list is what is found next time.
        let ino = fs::metadata(node.conf(list_name)).unwrap().ino();
        let again = install(&node.opts).unwrap();
        assert_eq!(again.conflist_change, Change::Unchanged);
        assert_eq!(again.converted_from, None);
        assert_eq!(fs::metadata(node.conf(list_name)).unwrap().ino(), ino);

        // The primary writes its .conf again (it sorts before the .conflist): wrapped again.
        node.put(name, &fixture(name));
        let report = install(&node.opts).unwrap();
        assert_eq!(report.converted_from, Some(node.conf(name)));
        assert!(!node.conf(name).exists());
        assert_eq!(compact(&node.read_json(list_name)), compact(&now));
    }
}

#[test]
fn picks_the_lexically_first_primary_like_libcni() {
    let node = Node::with_primary("lexical", "10-calico.conflist");
    node.put("05-cilium.conflist", &fixture("05-cilium.conflist"));
    // Not configurations: ignored whatever their name sorts like.
    node.put("00-notes.txt", b"not a config");
    node.put(".00-a.conflist.mesh-redirect-tmp-1-0", b"{\"half");
    fs::create_dir(node.conf("01-dir.conflist")).unwrap();
    let report = install(&node.opts).unwrap();
    assert_eq!(report.conflist, node.conf("05-cilium.conflist"));
    assert!(has_our_entry_last(&node.read_json("05-cilium.conflist")));
    assert_eq!(
        fs::read(node.conf("10-calico.conflist")).unwrap(),
        fixture("10-calico.conflist"),
        "the other configuration is not touched"
    );

    // `.conf` and `.json` count too, and byte order decides ("10-b.conf" < "10-b.conflist").
    let node = Node::new("lexical2");
    node.put(
        "20-x.json",
        br#"{"cniVersion":"0.4.0","name":"x","type":"bridge"}"#,
    );
    node.put("20-w.conflist", &fixture("10-flannel.conflist"));
    assert_eq!(
        install(&node.opts).unwrap().conflist,
        node.conf("20-w.conflist")
    );
    let node = Node::new("lexical3");
    node.put(
        "20-x.json",
        br#"{"cniVersion":"0.4.0","name":"x","type":"bridge"}"#,
    );
    node.put("30-w.conflist", &fixture("10-flannel.conflist"));
    let report = install(&node.opts).unwrap();
    assert_eq!(report.conflist, node.conf("20-x.conflist"));
    assert_eq!(report.converted_from, Some(node.conf("20-x.json")));
}

#[test]
fn istio_cni_entry_is_left_alone() {
    let node = Node::new("istio");
    let original = json!({"cniVersion": "0.3.1", "name": "k8s-pod-network", "plugins": [
        {"type": "calico", "ipam": {"type": "calico-ipam"}},
        {"type": "istio-cni", "plugin_log_level": "info", "cni_agent_run_dir": "/var/run/istio-cni"}]});
    node.put(
        "10-calico.conflist",
        &serde_json::to_vec_pretty(&original).unwrap(),
    );
    install(&node.opts).unwrap();
    assert_chained_onto(&settings(original), &node.read_json("10-calico.conflist"));
}

#[test]
fn no_primary_is_an_error_in_once_mode() {
    let node = Node::new("noprimary");
    let err = install(&node.opts).unwrap_err();
    assert!(matches!(err, InstallError::NoPrimary { .. }), "{err}");
    assert!(err.is_transient());
    let mut opts = node.opts.clone();
    opts.once = true;
    assert!(matches!(run(&opts), Err(InstallError::NoPrimary { .. })));
    assert!(!node.ready(), "once mode writes no ready file");
    assert_eq!(
        node.names(&node.opts.cni_conf_dir),
        ["mesh-redirect-kubeconfig"],
        "no network invented"
    );

    node.put(
        "10-bad.conflist",
        b"{\"cniVersion\": \"0.3.1\", \"plugins\": [",
    );
    let err = install(&node.opts).unwrap_err();
    assert!(matches!(err, InstallError::InvalidPrimary { .. }), "{err}");
    node.put("10-bad.conflist", br#"{"name": "x"}"#);
    assert!(matches!(
        install(&node.opts),
        Err(InstallError::InvalidPrimary { .. })
    ));
}

#[test]
fn bad_plugin_settings_are_refused_before_anything_is_written() {
    let mut node = Node::with_primary("badsettings", "10-flannel.conflist");
    node.opts.plugin = settings(json!({"backend": "bogus"}));
    let err = install(&node.opts).unwrap_err();
    assert!(matches!(err, InstallError::InvalidSettings(_)), "{err}");
    assert!(err.to_string().contains("backend"), "{err}");
    assert_eq!(
        fs::read(node.conf("10-flannel.conflist")).unwrap(),
        fixture("10-flannel.conflist")
    );
    assert!(!node.opts.installed_binary().exists());
    assert!(!node.opts.kubeconfig_path().exists());
}

#[test]
fn kubeconfig_is_private_and_readable_by_the_plugin() {
    let mut node = Node::with_primary("kubeconfig", "10-calico.conflist");
    install(&node.opts).unwrap();
    let path = node.opts.kubeconfig_path();
    assert_eq!(path, node.conf("mesh-redirect-kubeconfig"));
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    let kc = KubeConfig::load(&path).unwrap();
    assert_eq!(kc.server(), "https://10.96.0.1:443");
    let doc: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        doc["users"][0]["user"]["token"],
        "eyJhbGciOiJSUzI1NiJ9.test-token.sig"
    );
    assert_eq!(doc["contexts"][0]["context"]["namespace"], "istio-system");
    assert!(doc["clusters"][0]["cluster"]["certificate-authority-data"].is_string());

    // IPv6 service address, bracketed.
    node.opts.kubernetes_service_host = Some("fd00:10:96::1".into());
    node.opts.kubernetes_service_port = Some("6443".into());
    assert_eq!(
        install(&node.opts).unwrap().kubeconfig_change,
        Change::Written
    );
    assert_eq!(
        KubeConfig::load(&path).unwrap().server(),
        "https://[fd00:10:96::1]:6443"
    );

    // Missing pieces are named.
    let mut opts = node.opts.clone();
    opts.kubernetes_service_host = None;
    let err = install(&opts).unwrap_err().to_string();
    assert!(err.contains("KUBERNETES_SERVICE_HOST"), "{err}");
    for (file, word) in [("token", "token"), ("ca.crt", "CA")] {
        let saved = fs::read(node.root.join("sa").join(file)).unwrap();
        fs::remove_file(node.root.join("sa").join(file)).unwrap();
        let err = install(&node.opts).unwrap_err();
        assert!(
            matches!(err, InstallError::MissingServiceAccount { .. }),
            "{err}"
        );
        assert!(err.to_string().contains(word), "{err}");
        fs::write(node.root.join("sa").join(file), "\n").unwrap();
        assert!(install(&node.opts).is_err(), "an empty {file} is refused");
        fs::write(node.root.join("sa").join(file), saved).unwrap();
    }
    fs::write(node.root.join("sa/ca.crt"), "garbage").unwrap();
    assert!(matches!(
        install(&node.opts),
        Err(InstallError::InvalidServiceAccount { .. })
    ));
}

#[test]
fn binary_is_copied_atomically_and_kept_identical() {
    let node = Node::with_primary("binary", "10-kindnet.conflist");
    let report = install(&node.opts).unwrap();
    assert_eq!(report.binary_change, Change::Written);
    let installed = node.opts.installed_binary();
    assert_eq!(installed, node.root.join("bin/mesh-redirect"));
    assert_eq!(
        fs::read(&installed).unwrap(),
        fs::read(&node.opts.binary).unwrap()
    );
    assert_eq!(
        fs::metadata(&installed).unwrap().permissions().mode() & 0o7777,
        0o755
    );
    assert_eq!(
        node.names(&node.opts.cni_bin_dir),
        ["mesh-redirect"],
        "no temp file left"
    );

    // A different binary (an upgrade) replaces it through a rename: a new inode, so a
    // runtime exec'ing the old one never sees a mix.
    let ino = fs::metadata(&installed).unwrap().ino();
    fs::write(&node.opts.binary, b"new version").unwrap();
    assert_eq!(install(&node.opts).unwrap().binary_change, Change::Written);
    assert_eq!(fs::read(&installed).unwrap(), b"new version");
    assert_ne!(fs::metadata(&installed).unwrap().ino(), ino);

    // Right bytes, wrong mode: fixed.
    fs::set_permissions(&installed, fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(install(&node.opts).unwrap().binary_change, Change::Written);
    assert_eq!(
        fs::metadata(&installed).unwrap().permissions().mode() & 0o7777,
        0o755
    );
}

#[test]
fn crash_leftovers_are_ignored_and_cleaned() {
    let node = Node::with_primary("crash", "10-calico.conflist");
    // What a crash between write and rename leaves: a half-written temporary file. One is old
    // (a real leftover), one is fresh (could be another installer's write in flight).
    let old = node.conf(".10-calico.conflist.mesh-redirect-tmp-4242-0");
    let fresh = node.conf(".10-calico.conflist.mesh-redirect-tmp-4243-0");
    let old_bin = node
        .root
        .join("bin/.mesh-redirect.mesh-redirect-tmp-4242-1");
    for p in [&old, &fresh, &old_bin] {
        fs::write(p, b"{\n  \"name\": \"k8s-pod-net").unwrap();
    }
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    for p in [&old, &old_bin] {
        fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
    }
    let report = install(&node.opts).unwrap();
    assert_eq!(report.conflist, node.conf("10-calico.conflist"));
    assert_chained_onto(
        &parse(&fixture("10-calico.conflist")),
        &node.read_json("10-calico.conflist"),
    );
    assert!(
        !old.exists() && !old_bin.exists(),
        "stale temporary files are removed"
    );
    assert!(fresh.exists(), "a fresh one may be in flight: left alone");
}

#[test]
fn readers_never_see_a_partial_configuration() {
    let node = Node::with_primary("readers", "10-aws.conflist");
    install(&node.opts).unwrap();
    let path = node.conf("10-aws.conflist");
    let done = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (path, done, reads) = (path.clone(), done.clone(), reads.clone());
        thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let bytes = fs::read(&path).unwrap();
                let v: Map<String, Value> =
                    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("partial read: {e}"));
                assert!(has_our_entry_last(&v));
                reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Alternate settings so that every pass rewrites the file; each rewrite is a new inode,
    // i.e. the file was replaced by rename, never written in place.
    let mut opts = node.opts.clone();
    let mut inodes = std::collections::HashSet::new();
    for i in 0..100 {
        opts.plugin = settings(json!({"api_timeout": format!("{}s", 1 + i % 2),
                                      "padding": "x".repeat(20_000)}));
        assert_eq!(install(&opts).unwrap().conflist_change, Change::Written);
        inodes.insert(fs::metadata(&path).unwrap().ino());
    }
    done.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    assert!(reads.load(Ordering::Relaxed) > 0);
    assert!(inodes.len() > 1, "rewrites go through rename");
    assert_eq!(
        node.names(&node.opts.cni_conf_dir),
        ["10-aws.conflist", "mesh-redirect-kubeconfig"]
    );
}

#[test]
fn uninstall_restores_the_primary_and_is_idempotent() {
    let node = Node::with_primary("uninstall", "10-calico.conflist");
    install(&node.opts).unwrap();
    let report = uninstall(&node.opts).unwrap();
    assert_eq!(report.conflists_updated, [node.conf("10-calico.conflist")]);
    assert!(report.kubeconfig_removed && report.binary_removed);
    let now = node.read_json("10-calico.conflist");
    assert_eq!(
        compact(&now),
        compact(&parse(&fixture("10-calico.conflist")))
    );
    assert_eq!(node.names(&node.opts.cni_conf_dir), ["10-calico.conflist"]);
    assert!(node.names(&node.opts.cni_bin_dir).is_empty());

    let ino = fs::metadata(node.conf("10-calico.conflist")).unwrap().ino();
    let again = uninstall(&node.opts).unwrap();
    assert_eq!(again, Default::default());
    assert_eq!(
        fs::metadata(node.conf("10-calico.conflist")).unwrap().ino(),
        ino
    );

    // A converted .conf stays a valid one-plugin .conflist.
    let node = Node::with_primary("uninstall-conf", "10-bridge.conf");
    install(&node.opts).unwrap();
    uninstall(&node.opts).unwrap();
    let now = node.read_json("10-bridge.conflist");
    assert_eq!(plugins(&now).len(), 1);
    assert_eq!(plugins(&now)[0]["type"], "bridge");
    assert_eq!(now["cniVersion"], "1.0.0");
    assert_eq!(node.names(&node.opts.cni_conf_dir), ["10-bridge.conflist"]);

    // Entries in files that are no longer the primary are found too.
    let node = Node::with_primary("uninstall-two", "10-flannel.conflist");
    install(&node.opts).unwrap();
    node.put("05-cilium.conflist", &fixture("05-cilium.conflist"));
    install(&node.opts).unwrap();
    let report = uninstall(&node.opts).unwrap();
    assert_eq!(report.conflists_updated.len(), 2);
    for name in ["05-cilium.conflist", "10-flannel.conflist"] {
        assert_eq!(
            compact(&node.read_json(name)),
            compact(&parse(&fixture(name)))
        );
    }
}

#[test]
fn run_repairs_a_primary_that_drops_our_entry() {
    let node = Node::with_primary("repair", "10-calico.conflist");
    let (stop, h) = node.start();
    assert!(
        wait_until(Duration::from_secs(5), || node.ready()),
        "never ready"
    );
    let path = node.conf("10-calico.conflist");
    assert!(has_our_entry_last(&node.read_json("10-calico.conflist")));

    // The primary rewrites its configuration in place, without us (Calico's install on restart).
    fs::write(&path, fixture("10-calico.conflist")).unwrap();
    let t = Instant::now();
    assert!(
        wait_until(REPAIR, || fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Map<String, Value>>(&b).ok())
            .is_some_and(|m| has_our_entry_last(&m))),
        "not repaired within {REPAIR:?}"
    );
    eprintln!("repaired in {:?}", t.elapsed());
    assert_chained_onto(
        &parse(&fixture("10-calico.conflist")),
        &node.read_json("10-calico.conflist"),
    );

    // The same by rename (write-to-temp-then-rename primaries).
    let tmp = node.root.join("calico.tmp");
    fs::write(&tmp, fixture("10-calico.conflist")).unwrap();
    fs::rename(&tmp, &path).unwrap();
    assert!(wait_until(REPAIR, || has_our_entry_last(
        &node.read_json("10-calico.conflist")
    )));

    // Repairs cause no further rewrites (no event storm from our own writes).
    thread::sleep(Duration::from_millis(300));
    let m = fs::metadata(&path).unwrap();
    thread::sleep(Duration::from_millis(700));
    let m2 = fs::metadata(&path).unwrap();
    assert_eq!(
        (m.ino(), m.mtime_nsec()),
        (m2.ino(), m2.mtime_nsec()),
        "rewritten again"
    );
    assert!(node.ready());

    stop_and_join(&stop, h);
    assert!(!node.ready(), "ready file removed on exit");
    assert!(
        has_our_entry_last(&node.read_json("10-calico.conflist")),
        "no cleanup asked"
    );
}

#[test]
fn run_waits_for_the_primary_and_survives_half_written_files() {
    let node = Node::new("wait");
    let (stop, h) = node.start();
    thread::sleep(Duration::from_millis(400));
    assert!(!node.ready(), "ready without a primary");
    assert!(!h.is_finished(), "gave up instead of waiting");
    assert!(
        node.opts.installed_binary().exists(),
        "the binary does not wait"
    );

    // The primary writes its file in two steps; the half is no reason to give up.
    let full = fixture("10-flannel.conflist");
    node.put("10-flannel.conflist", &full[..full.len() / 2]);
    thread::sleep(Duration::from_millis(300));
    assert!(!node.ready());
    assert!(!h.is_finished());
    node.put("10-flannel.conflist", &full);
    assert!(
        wait_until(REPAIR, || node.ready()),
        "not ready after the primary appeared"
    );
    assert_chained_onto(&parse(&full), &node.read_json("10-flannel.conflist"));
    stop_and_join(&stop, h);
}

#[test]
fn run_follows_token_rotation_and_restores_the_binary() {
    let node = Node::with_primary("rotate", "10-flannel.conflist");
    // A projected service account volume: files are links through `..data`, swapped by rename.
    let sa = node.root.join("sa");
    for f in ["token", "ca.crt", "namespace"] {
        let content = fs::read(sa.join(f)).unwrap();
        fs::remove_file(sa.join(f)).unwrap();
        fs::create_dir_all(sa.join("..2024_01_01")).unwrap();
        fs::write(sa.join("..2024_01_01").join(f), content).unwrap();
        std::os::unix::fs::symlink(Path::new("..data").join(f), sa.join(f)).unwrap();
    }
    std::os::unix::fs::symlink("..2024_01_01", sa.join("..data")).unwrap();

    let (stop, h) = node.start();
    assert!(wait_until(Duration::from_secs(5), || node.ready()));
    let token = |node: &Node| {
        let doc: Value =
            serde_json::from_slice(&fs::read(node.opts.kubeconfig_path()).unwrap()).unwrap();
        doc["users"][0]["user"]["token"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(token(&node), "eyJhbGciOiJSUzI1NiJ9.test-token.sig");

    // kubelet's atomic writer: new timestamped dir, `..data_tmp` link, renamed over `..data`.
    let new = sa.join("..2024_01_02");
    fs::create_dir(&new).unwrap();
    for f in ["ca.crt", "namespace"] {
        fs::copy(sa.join("..2024_01_01").join(f), new.join(f)).unwrap();
    }
    fs::write(new.join("token"), "rotated.token.value").unwrap();
    std::os::unix::fs::symlink("..2024_01_02", sa.join("..data_tmp")).unwrap();
    fs::rename(sa.join("..data_tmp"), sa.join("..data")).unwrap();
    assert!(
        wait_until(REPAIR, || token(&node) == "rotated.token.value"),
        "token not followed"
    );
    assert_eq!(
        fs::metadata(node.opts.kubeconfig_path())
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o600
    );

    // The binary vanishes (a careless upgrade of another CNI wiping the directory).
    fs::remove_file(node.opts.installed_binary()).unwrap();
    assert!(
        wait_until(REPAIR, || node.opts.installed_binary().exists()),
        "binary not restored"
    );
    assert_eq!(
        fs::read(node.opts.installed_binary()).unwrap(),
        fs::read(&node.opts.binary).unwrap()
    );
    // And our kubeconfig deleted by someone: rewritten.
    fs::remove_file(node.opts.kubeconfig_path()).unwrap();
    assert!(
        wait_until(REPAIR, || node.opts.kubeconfig_path().exists()),
        "kubeconfig not restored"
    );
    stop_and_join(&stop, h);
}

#[test]
fn run_cleans_up_on_stop_when_asked() {
    let mut node = Node::with_primary("cleanup", "10-bridge.conf");
    node.opts.cleanup_on_exit = true;
    let (stop, h) = node.start();
    assert!(wait_until(Duration::from_secs(5), || node.ready()));
    assert!(has_our_entry_last(&node.read_json("10-bridge.conflist")));
    stop_and_join(&stop, h);
    assert!(!node.ready());
    let now = node.read_json("10-bridge.conflist");
    assert_eq!(ours_count(&now), 0);
    assert_eq!(plugins(&now).len(), 1);
    assert!(!node.opts.installed_binary().exists());
    assert!(!node.opts.kubeconfig_path().exists());
}

#[test]
fn run_stops_on_sigterm_to_its_thread() {
    use std::os::unix::thread::JoinHandleExt;
    let mut node = Node::with_primary("sigterm", "10-kindnet.conflist");
    node.opts.cleanup_on_exit = true;
    let opts = node.opts.clone();
    let h = thread::spawn(move || run(&opts));
    assert!(wait_until(Duration::from_secs(5), || node.ready()));
    // Ready means the thread has SIGTERM blocked and a signalfd for it, so the signal (aimed
    // at that thread only) is read, not delivered: the test process survives.
    // SAFETY: the thread is alive (it has not returned: it only does after a signal or stop).
    let rc = unsafe { libc::pthread_kill(h.as_pthread_t(), libc::SIGTERM) };
    assert_eq!(rc, 0);
    let t = Instant::now();
    while !h.is_finished() {
        assert!(t.elapsed() < Duration::from_secs(5), "SIGTERM ignored");
        thread::sleep(Duration::from_millis(10));
    }
    h.join().unwrap().unwrap();
    assert!(!node.ready());
    assert_eq!(
        compact(&node.read_json("10-kindnet.conflist")),
        compact(&parse(&fixture("10-kindnet.conflist")))
    );
}

#[test]
fn run_fails_fast_on_a_misconfigured_node() {
    let node = Node::with_primary("fatal", "10-calico.conflist");
    fs::remove_file(node.root.join("sa/token")).unwrap();
    let (_stop, h) = node.start();
    let t = Instant::now();
    while !h.is_finished() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "kept waiting on a missing token"
        );
        thread::sleep(Duration::from_millis(10));
    }
    let err = h.join().unwrap().unwrap_err();
    assert!(
        matches!(err, InstallError::MissingServiceAccount { .. }),
        "{err}"
    );
    assert!(!node.ready());
    assert_eq!(
        fs::read(node.conf("10-calico.conflist")).unwrap(),
        fixture("10-calico.conflist"),
        "the configuration is not written ahead of its kubeconfig"
    );
}

/// host-local (the real plugin, IPAM only: it writes files, no interface) asked for an
/// address for `container` with the ipam section of the primary plugin as `conflist` chains
/// it; returns the address it gave.
fn host_local_add(conflist: &Map<String, Value>, container: &str, netns: &str) -> String {
    let primary = &conflist["plugins"][0];
    let conf = json!({"cniVersion": conflist["cniVersion"], "name": conflist["name"],
                      "type": primary["type"], "ipam": primary["ipam"]});
    let out = run_with_stdin(
        Command::new("/usr/lib/cni/host-local")
            .env_clear()
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", container)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni"),
        &conf.to_string(),
    );
    assert!(
        out.status.success(),
        "host-local: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    result["ips"][0]["address"].as_str().unwrap().to_string()
}

/// An install turns a single-plugin `.conf` into a `.conflist` under the same network name,
/// and `host-local` keeps its allocations under that name: an address given to a pod before
/// the install is still taken afterwards (a renamed network would hand it out again).
#[test]
fn an_install_keeps_the_address_host_local_gave_a_running_pod() {
    let netns = TestNetns::new("hostlocal");
    let node = Node::new("hostlocal");
    let data = node.root.join("ipam");
    let primary = json!({"cniVersion": "1.0.0", "name": "pods", "type": "bridge",
        "bridge": "unused", "isGateway": false, "ipMasq": false,
        "ipam": {"type": "host-local", "dataDir": data,
                 "ranges": [[{"subnet": "198.51.100.0/24", "rangeStart": "198.51.100.60",
                              "rangeEnd": "198.51.100.90"}]]}});
    node.put("10-pods.conf", primary.to_string().as_bytes());
    // A pod started before the install, through the primary alone.
    let as_list = parse(
        json!({"cniVersion": "1.0.0", "name": "pods", "plugins": [primary]})
            .to_string()
            .as_bytes(),
    );
    let first = host_local_add(&as_list, "pod-before", &netns.path());
    let allocated = |ip: &str| {
        data.join("pods")
            .join(ip.split('/').next().unwrap())
            .exists()
    };
    assert!(
        allocated(&first),
        "host-local keeps {first} under the network's name"
    );

    install(&node.opts).unwrap();
    let now = node.read_json("10-pods.conflist");
    assert_eq!(now["name"], "pods", "the network keeps its name");
    assert!(allocated(&first), "the install touched no allocation");
    let second = host_local_add(&now, "pod-after", &netns.path());
    assert_ne!(second, first, "the first pod's address is still taken");
    assert!(allocated(&first) && allocated(&second));
}
