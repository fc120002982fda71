//! Shared helpers for the real-kernel tests: Istio's conformance cases, throw-away network
//! namespaces that clean up after themselves, and the oracles (`nft`, `ip`).
//!
//! Network safety: namespaces made here are connected only to each other (veth pairs made
//! by the test), never to the host; forwarding in the root namespace is never touched and is
//! asserted to stay 0.
#![allow(dead_code)]

use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

pub fn shared_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

pub fn conformance_dir() -> PathBuf {
    shared_dir().join("conformance")
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_mesh-redirect")
}

/// Tests that need root fail loudly without it.
pub fn require_root() {
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (network namespaces, nf_tables); run the test suite as root"
    );
}

/// One of Istio's capture cases, as flags and environment for our command line.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub nft_golden: Option<PathBuf>,
    pub iptables_golden: Option<PathBuf>,
    pub config: Value,
    /// CNI-plugin cases: the pod description of cases.json (`Null` for capture cases).
    pub pod: Value,
}

impl Case {
    /// The raw configuration our command line builds from the case's flags and environment.
    pub fn raw(&self) -> mesh_redirect::config::RawConfig {
        let env = env_map(&self.env);
        mesh_redirect::cli::raw_config(&self.args, &|k| env.get(k).cloned())
            .unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }
}

/// Istio's `config.Config` field names → our flags (env-only knobs → their variables).
pub fn args_for(config: &Value) -> (Vec<String>, Vec<(String, String)>) {
    let s = |k: &str| {
        config
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let b = |k: &str| config.get(k).and_then(Value::as_bool).unwrap_or(false);
    let list = |k: &str| {
        config
            .get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    let mut args = Vec::new();
    for (flag, key) in [
        ("-p", "ProxyPort"),
        ("-z", "InboundCapturePort"),
        ("-e", "InboundTunnelPort"),
        ("-u", "ProxyUID"),
        ("-g", "ProxyGID"),
        ("-m", "InboundInterceptionMode"),
        ("-t", "InboundTProxyMark"),
        ("-r", "InboundTProxyRouteTable"),
        ("-b", "InboundPortsInclude"),
        ("-d", "InboundPortsExclude"),
        ("-q", "OutboundPortsInclude"),
        ("-o", "OutboundPortsExclude"),
        ("-i", "OutboundIPRangesInclude"),
        ("-x", "OutboundIPRangesExclude"),
        ("-k", "RerouteVirtualInterfaces"),
        ("-c", "ExcludeInterfaces"),
    ] {
        args.push(flag.to_string());
        args.push(s(key));
    }
    for (flag, key) in [
        ("--redirect-dns", "RedirectDNS"),
        ("--capture-all-dns", "CaptureAllDNS"),
        ("--drop-invalid", "DropInvalid"),
        ("--ipv6", "EnableIPv6"),
    ] {
        args.push(format!("{flag}={}", b(key)));
    }
    args.push("--dns-servers-v4".into());
    args.push(list("DNSServersV4"));
    args.push("--dns-servers-v6".into());
    args.push(list("DNSServersV6"));
    let env = vec![
        (
            "ISTIO_OUTBOUND_OWNER_GROUPS".to_string(),
            s("OwnerGroupsInclude"),
        ),
        (
            "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE".to_string(),
            s("OwnerGroupsExclude"),
        ),
        (
            "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR".to_string(),
            s("HostIPv4LoopbackCidr"),
        ),
    ];
    (args, env)
}

fn cases_json() -> Value {
    let path = conformance_dir().join("cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("cases.json parses")
}

pub fn capture_cases() -> Vec<Case> {
    let json = cases_json();
    json["capture_cases"]
        .as_array()
        .expect("capture_cases")
        .iter()
        .map(|c| {
            let (args, env) = args_for(&c["config"]);
            let golden = |k: &str| {
                c.get(k)
                    .and_then(Value::as_str)
                    .map(|p| conformance_dir().join(p))
            };
            Case {
                name: c["name"].as_str().expect("name").to_string(),
                args,
                env,
                nft_golden: golden("nftables"),
                iptables_golden: golden("iptables"),
                config: c["config"].clone(),
                pod: Value::Null,
            }
        })
        .collect()
}

/// Istio's CNI-plugin cases: the pod's effective configuration and the golden payload.
pub fn cni_cases() -> Vec<Case> {
    let json = cases_json();
    json["cni_plugin_cases"]
        .as_array()
        .expect("cni_plugin_cases")
        .iter()
        .map(|c| {
            let (args, env) = args_for(&c["effective_config"]);
            Case {
                name: c["name"].as_str().expect("name").to_string(),
                args,
                env,
                nft_golden: None,
                iptables_golden: c
                    .get("iptables")
                    .and_then(Value::as_str)
                    .map(|p| conformance_dir().join(p)),
                config: c["effective_config"].clone(),
                pod: c["pod"].clone(),
            }
        })
        .collect()
}

/// A real-shaped Pod object for a CNI case's pod description (what the API server returns).
pub fn pod_object(pod: &Value, namespace: &str, name: &str) -> Value {
    let env: Vec<Value> = pod["istio_proxy_env"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| serde_json::json!({"name": k, "value": v}))
                .collect()
        })
        .unwrap_or_default();
    let containers: Vec<Value> = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let c = c.as_str().unwrap();
            if c == "istio-proxy" {
                let mut sc = serde_json::Map::new();
                if !pod["istio_proxy_run_as_user"].is_null() {
                    sc.insert("runAsUser".into(), pod["istio_proxy_run_as_user"].clone());
                }
                if !pod["istio_proxy_run_as_group"].is_null() {
                    sc.insert("runAsGroup".into(), pod["istio_proxy_run_as_group"].clone());
                }
                serde_json::json!({"name": c, "image": "docker.io/istio/proxyv2:1.28.0",
                    "args": ["proxy", "sidecar", "--domain", "$(POD_NAMESPACE).svc.cluster.local"],
                    "env": env, "securityContext": sc})
            } else {
                serde_json::json!({"name": c, "image": "docker.io/library/busybox:1.36"})
            }
        })
        .collect();
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": "7f9c1c9e-3b1a-4d0e-9a57-0c1d2e3f4a5b",
                     "labels": {"app": name, "security.istio.io/tlsMode": "istio"},
                     "annotations": pod["annotations"].clone()},
        "spec": {"initContainers": [{"name": "istio-validation", "image": "docker.io/istio/proxyv2:1.28.0"}],
                 "containers": containers, "nodeName": "node-1"},
        "status": {"phase": "Pending"}
    })
}

/// Groups Istio's owner-group cases name; the conformance tests provide them in a private
/// mount namespace (a bind-mounted group file), never on the host.
pub const TEST_GROUP_FILE: &str = "root:x:0:\njava:x:3000:\nftp:x:3001:\n";

pub fn uses_group_names(case: &Case) -> bool {
    case.env.iter().any(|(k, v)| {
        k.starts_with("ISTIO_OUTBOUND_OWNER_GROUPS")
            && v.split(',')
                .any(|g| !g.is_empty() && g != "*" && g.parse::<u32>().is_err())
    })
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique short name: `mr<pid><n><tag>` (interface names must stay under 16 bytes).
pub fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("mr{}{}{}", std::process::id() % 100000, n, tag)
}

/// Runs a command, returning its output; panics if it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null());
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace that is deleted (with everything in it) when dropped.
pub struct TestNetns {
    pub name: String,
}

impl TestNetns {
    pub fn new(tag: &str) -> TestNetns {
        require_root();
        let name = unique(tag);
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = TestNetns { name };
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    pub fn exec(&self, argv: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv))
    }

    pub fn exec_ok(&self, argv: &[&str]) -> String {
        run_ok(
            Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(argv),
        )
    }

    /// `nft list ruleset` (the oracle).
    pub fn ruleset(&self) -> String {
        self.exec_ok(&["nft", "list", "ruleset"])
    }

    /// Our binary with a subcommand against this namespace.
    pub fn mesh(&self, sub: &str, args: &[String], env: &[(String, String)]) -> Output {
        let mut cmd = Command::new(binary());
        cmd.arg(sub).arg("--netns").arg(&self.name).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        run(&mut cmd)
    }

    pub fn mesh_ok(&self, sub: &str, args: &[String], env: &[(String, String)]) -> Output {
        let out = self.mesh(sub, args, env);
        assert!(
            out.status.success(),
            "mesh-redirect {sub} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

impl TestNetns {
    /// `iptables-legacy-save` and `ip6tables-legacy-save` (with `-c` when `counters`), each
    /// under a `## <tool>` line, without the comment (timestamp) lines.
    pub fn legacy_saved(&self, counters: bool) -> String {
        let mut out = String::new();
        for save in ["iptables-legacy-save", "ip6tables-legacy-save"] {
            out += &format!("## {save}\n");
            let argv: &[&str] = if counters { &[save, "-c"] } else { &[save] };
            out += &self
                .exec_ok(argv)
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| format!("{l}\n"))
                .collect::<String>();
        }
        out
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .output();
    }
}

/// DEVELOPERS.md network safety: forwarding in the root namespace stays off.
pub fn assert_no_forwarding() {
    for (path, what) in [
        ("/proc/sys/net/ipv4/ip_forward", "net.ipv4.ip_forward"),
        (
            "/proc/sys/net/ipv6/conf/all/forwarding",
            "net.ipv6.conf.all.forwarding",
        ),
    ] {
        let v = std::fs::read_to_string(path).unwrap_or_default();
        assert_eq!(v.trim(), "0", "{what} must stay 0 in the root namespace");
    }
}

/// Environment as a map, for tests that want to look values up.
pub fn env_map(env: &[(String, String)]) -> HashMap<String, String> {
    env.iter().cloned().collect()
}

/// Makes `cmd` run in a private mount namespace where `/etc/group` is `group_file`, so that
/// Istio's group names (`java`, `ftp`) resolve without touching the host.
pub fn with_group_file(cmd: &mut Command, group_file: &Path) {
    use std::os::unix::process::CommandExt;
    let file = group_file.to_path_buf();
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            use nix::mount::{mount, MsFlags};
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )?;
            mount(
                Some(&file),
                "/etc/group",
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )?;
            Ok(())
        });
    }
}

/// Writes [`TEST_GROUP_FILE`] to a temporary file (removed by the caller's `TempFile`).
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(tag: &str, contents: &str) -> TempFile {
        let path = std::env::temp_dir().join(unique(tag));
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
