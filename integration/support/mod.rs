//! Shared helpers for the real-kernel tests: Istio's conformance cases, throw-away network
//! namespaces that clean up after themselves, and the oracles (`nft`, `ip`).
//!
//! Network safety: namespaces made here are connected only to each other (veth pairs made
//! by the test), never to the host; forwarding in the root namespace is never touched and is
//! asserted to stay 0.
#![allow(dead_code)]

pub mod pod_netns;

use serde_json::Value;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Istio's golden files and the case index (`integration/fixtures/conformance/NOTICE`).
pub fn conformance_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/fixtures/conformance")
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

/// The capture cases that have an nftables golden.
pub fn nft_capture_cases() -> Vec<Case> {
    capture_cases()
        .into_iter()
        .filter(|c| c.nft_golden.is_some())
        .collect()
}

/// The capture cases that have an iptables golden.
pub fn iptables_capture_cases() -> Vec<Case> {
    capture_cases()
        .into_iter()
        .filter(|c| c.iptables_golden.is_some())
        .collect()
}

/// The conformance verdict: every one of `total` cases agreed, else the differences.
pub fn assert_cases_agree(failures: &[String], total: usize) {
    assert!(
        failures.is_empty(),
        "{} of {total} cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
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

/// Runs `cmd` with `stdin` written to its standard input, stdout and stderr captured.
pub fn run_with_stdin(cmd: &mut Command, stdin: &str) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// [`run_with_stdin`] that must succeed.
pub fn run_with_stdin_ok(cmd: &mut Command, stdin: &str) -> Output {
    let out = run_with_stdin(cmd, stdin);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{stdin}",
        stderr_of(&out)
    );
    out
}

/// One CNI plugin run as libcni does it: our binary with only `PATH` and the `CNI_*`
/// variables of `env` set, the network configuration on stdin.
pub fn cni<K: AsRef<OsStr>, V: AsRef<OsStr>>(env: &[(K, V)], stdin: &str) -> Output {
    let mut cmd = Command::new(binary());
    cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with_stdin(&mut cmd, stdin)
}

/// The container ID of the tests' CNI invocations (64 hex digits, as containerd makes them).
pub const CNI_CONTAINER_ID: &str =
    "8f2c1a7e5d4b3c2a1908f7e6d5c4b3a2918273645f6e7d8c9b0a1f2e3d4c5b6a";

/// The `CNI_*` variables a runtime sets for CNI `command` on the namespace at `netns`
/// (no `CNI_ARGS`: what a static-mode plugin needs).
pub fn cni_env<'a>(command: &'a str, netns: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", CNI_CONTAINER_ID),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
}

/// [`cni_env`] with the `CNI_ARGS` a kubelet passes for pod `default/app-0`.
pub fn cni_pod_env<'a>(command: &'a str, netns: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut env = cni_env(command, netns);
    env.push((
        "CNI_ARGS",
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=app-0",
    ));
    env
}

/// Standard error as text.
pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Standard output parsed as one JSON document (panics naming both outputs if it is not).
pub fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is one JSON document ({e}): {:?}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            stderr_of(out)
        )
    })
}

/// Flags that make `apply` write every table it can, in both families, and TPROXY's
/// policy routing: the widest batch, for tests of failure in the middle of one.
pub const EVERY_TABLE: &[&str] = &[
    "-m",
    "TPROXY",
    "--ipv6",
    "--redirect-dns",
    "--capture-all-dns",
    "--drop-invalid",
];

/// Arguments as owned strings.
pub fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// `--backend iptables-legacy` followed by `extra`.
pub fn legacy_args(extra: &[&str]) -> Vec<String> {
    let mut v = strings(&["--backend", "iptables-legacy"]);
    v.extend(strings(extra));
    v
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

    /// `ip netns exec <name> <argv…>`, not started yet.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(argv);
        cmd
    }

    pub fn exec(&self, argv: &[&str]) -> Output {
        run(&mut self.command(argv))
    }

    pub fn exec_ok(&self, argv: &[&str]) -> String {
        run_ok(&mut self.command(argv))
    }

    /// The output of a `*-save` tool without its comment (timestamp) lines.
    pub fn saved_by(&self, argv: &[&str]) -> String {
        self.exec_ok(argv)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// `nft list ruleset` (the oracle).
    pub fn ruleset(&self) -> String {
        self.exec_ok(&["nft", "list", "ruleset"])
    }

    /// Our binary with a subcommand against this namespace, not started yet.
    pub fn mesh_command(&self, sub: &str, args: &[String], env: &[(String, String)]) -> Command {
        let mut cmd = Command::new(binary());
        cmd.arg(sub).arg("--netns").arg(&self.name).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Our binary with a subcommand against this namespace.
    pub fn mesh(&self, sub: &str, args: &[String], env: &[(String, String)]) -> Output {
        run(&mut self.mesh_command(sub, args, env))
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
            let saved = self.saved_by(argv);
            out += &if counters {
                saved
            } else {
                without_policy_counters(&saved)
            };
        }
        out
    }

    /// `apply` with the test-only fault `which` injected (`last-message`, `race`).
    pub fn apply_with_fault(&self, args: &[String], which: &str) -> Output {
        if !cfg!(feature = "fault-injection") {
            panic!("run the tests with --features fault-injection (see README)");
        }
        self.mesh(
            "apply",
            args,
            &[("MESH_REDIRECT_FAULT".into(), which.into())],
        )
    }

    /// `apply` of `args` with a fault injected into the last message of the batch: it fails.
    pub fn apply_failing_at_the_last_message(&self, args: &[String]) -> Output {
        let out = self.apply_with_fault(args, "last-message");
        assert!(
            !out.status.success(),
            "the injected fault must fail the apply"
        );
        out
    }

    /// Deletes by hand (by its handle) the first rule of `inet <table>` chain `chain` whose
    /// `nft -a` listing line `pick` accepts: drift for `verify` and CNI CHECK to find.
    pub fn delete_nft_rule(&self, table: &str, chain: &str, pick: impl Fn(&str) -> bool) {
        let listing = self.exec_ok(&["nft", "-a", "list", "chain", "inet", table, chain]);
        let line = listing
            .lines()
            .find(|l| pick(l))
            .unwrap_or_else(|| panic!("no such rule in {table} {chain}:\n{listing}"));
        let handle = line.rsplit("# handle ").next().unwrap().trim();
        self.exec_ok(&[
            "nft", "delete", "rule", "inet", table, chain, "handle", handle,
        ]);
    }

    /// Deletes by hand the IPv4 rule that lets the proxy's own traffic (uid 1337) out of
    /// `ISTIO_OUTPUT`: drift for the iptables-legacy backend.
    pub fn delete_legacy_proxy_uid_return(&self) {
        self.exec_ok(&[
            "iptables-legacy",
            "-t",
            "nat",
            "-D",
            "ISTIO_OUTPUT",
            "-m",
            "owner",
            "--uid-owner",
            "1337",
            "-j",
            "RETURN",
        ]);
    }

    /// A foreign IPv4 `filter INPUT` rule (accept ssh) with `[packets:bytes]` counters.
    pub fn add_legacy_ssh_accept(&self, packets: &str, bytes: &str) {
        self.add_legacy_counted_rule(
            "filter",
            "INPUT",
            (packets, bytes),
            &["-p", "tcp", "--dport", "22", "-j", "ACCEPT"],
        );
    }

    /// A foreign IPv4 rule `rule` appended to `table` `chain` with `[packets:bytes]` counters
    /// (`iptables-legacy -t <table> -A <chain> -c <packets> <bytes> <rule…>`).
    pub fn add_legacy_counted_rule(
        &self,
        table: &str,
        chain: &str,
        (packets, bytes): (&str, &str),
        rule: &[&str],
    ) {
        let mut argv = vec![
            "iptables-legacy",
            "-t",
            table,
            "-A",
            chain,
            "-c",
            packets,
            bytes,
        ];
        argv.extend_from_slice(rule);
        self.exec_ok(&argv);
    }

    /// Applies `args` twice; the second apply changes nothing `state` shows and `verify`
    /// passes. Returns the state after the first apply.
    pub fn assert_reapply_is_idempotent(
        &self,
        args: &[String],
        state: impl Fn(&TestNetns) -> String,
    ) -> String {
        self.mesh_ok("apply", args, &[]);
        let first = state(self);
        self.mesh_ok("apply", args, &[]);
        assert_eq!(state(self), first, "re-apply is idempotent");
        assert!(
            self.mesh("verify", args, &[]).status.success(),
            "verify passes right after apply"
        );
        first
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

/// Istio's legacy state for a golden file: its payload (the `*-save` lines left out)
/// restored by `iptables-legacy-restore --noflush` into a fresh namespace, then saved
/// ([`TestNetns::legacy_saved`] without counters).
pub fn istio_legacy_state(golden: &Path) -> String {
    let ns = TestNetns::new("il");
    let payload: String = std::fs::read_to_string(golden)
        .unwrap_or_else(|e| panic!("{}: {e}", golden.display()))
        .lines()
        .filter(|l| !l.ends_with("-save"))
        .map(|l| format!("{l}\n"))
        .collect();
    run_with_stdin_ok(
        &mut ns.command(&["iptables-legacy-restore", "--noflush"]),
        &payload,
    );
    ns.legacy_saved(false)
}

/// The hand-written nftables reference of Istio's CNI case `name`
/// (`integration/fixtures/cni-nftables/`, written from Istio's semantics, not by our code;
/// see that directory's README).
pub fn cni_nft_reference(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("integration/fixtures/cni-nftables")
        .join(format!("{name}.nft"))
}

/// `nft list ruleset` of a fresh namespace after the real `nft -f file`: the kernel state a
/// hand-written reference transaction leaves.
pub fn nft_ruleset_of(file: &Path) -> String {
    let ns = TestNetns::new("nf");
    ns.exec_ok(&["nft", "-f", file.to_str().unwrap()]);
    ns.ruleset()
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
    let file = group_file.to_path_buf();
    with_private_mounts(cmd, move || {
        nix::mount::mount(
            Some(&file),
            "/etc/group",
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
    });
}

/// Makes `cmd` run in a private mount namespace (nothing propagates to the host) in which
/// `mounts` runs between fork and exec; it must use only async-signal-safe calls.
pub fn with_private_mounts(
    cmd: &mut Command,
    mounts: impl Fn() -> nix::Result<()> + Send + Sync + 'static,
) {
    use std::os::unix::process::CommandExt;
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
            mounts()?;
            Ok(())
        });
    }
}

/// A fresh directory under the system temporary directory, with `subdirs` made in it;
/// removed with everything in it when dropped. Derefs to its path.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str, subdirs: &[&str]) -> TempDir {
        let dir = TempDir(std::env::temp_dir().join(unique(tag)));
        std::fs::create_dir_all(&dir.0).unwrap_or_else(|e| panic!("{}: {e}", dir.0.display()));
        for d in subdirs {
            std::fs::create_dir_all(dir.0.join(d)).unwrap();
        }
        dir
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
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

impl TestNetns {
    /// Everything `apply`, `remove` or a CNI command can change in the namespace, as text to
    /// compare before and after ("changes nothing" means this is byte-identical):
    /// `nft list ruleset`; both families' legacy xtables with counters
    /// (`iptables-legacy-save -c`, `ip6tables-legacy-save -c`: every instantiated table,
    /// foreign ones included); policy rules and every routing table of both families; and the
    /// links with their addresses (TPROXY's `::6` on `lo`). Each part under a `## <command>`
    /// line.
    pub fn snapshot(&self) -> String {
        let mut state = String::new();
        for argv in [
            &["nft", "list", "ruleset"][..],
            &["ip", "-4", "rule", "show"],
            &["ip", "-6", "rule", "show"],
            &["ip", "-4", "route", "show", "table", "all"],
            &["ip", "-6", "route", "show", "table", "all"],
            &["ip", "address", "show"],
        ] {
            state.push_str(&format!("## {}\n", argv.join(" ")));
            state.push_str(&self.exec_ok(argv));
        }
        state + &self.legacy_saved(true)
    }
}

/// `before` and `after` namespace snapshots ([`TestNetns::snapshot`]) as a line diff
/// (`-` only before, `+` only after, each under the `## <command>` line of its part), or
/// `None` when they are equal.
pub fn snapshot_difference(before: &str, after: &str) -> Option<String> {
    if before == after {
        return None;
    }
    let (b, a): (Vec<&str>, Vec<&str>) = (before.lines().collect(), after.lines().collect());
    // Longest common subsequence, table from the ends.
    let mut lcs = vec![vec![0u32; a.len() + 1]; b.len() + 1];
    for i in (0..b.len()).rev() {
        for j in (0..a.len()).rev() {
            lcs[i][j] = if b[i] == a[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    // The `## <command>` heading of the part being walked, and the last one reported.
    let (mut part, mut shown) = ("", "");
    let mut report = Vec::new();
    while i < b.len() || j < a.len() {
        let (sign, line) = if i < b.len() && j < a.len() && b[i] == a[j] {
            if b[i].starts_with("## ") {
                part = b[i];
            }
            i += 1;
            j += 1;
            continue;
        } else if j < a.len() && (i == b.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            j += 1;
            ('+', a[j - 1])
        } else {
            i += 1;
            ('-', b[i - 1])
        };
        if shown != part {
            report.push(part.to_string());
            shown = part;
        }
        report.push(format!("{sign} {line}"));
    }
    if report.is_empty() {
        report.push("(the same lines; the texts differ in line endings)".to_string());
    }
    Some(report.join("\n"))
}

/// A `*-save` listing with the built-in chains' policy counters (`:OUTPUT ACCEPT [3:180]`,
/// printed even without `-c`) zeroed: a stray packet (an IPv6 router solicitation on a
/// veth) must not make two listings of the same rules differ.
pub fn without_policy_counters(saved: &str) -> String {
    saved
        .lines()
        .map(|l| match (l.starts_with(':'), l.rfind(" [")) {
            (true, Some(at)) if l.ends_with(']') => format!("{} [0:0]\n", &l[..at]),
            _ => format!("{l}\n"),
        })
        .collect()
}

/// One read of a stream with a read timeout into `buf`: `Ok(false)` at its end; a read that
/// timed out (or would block) is `Ok(true)` with nothing added.
pub fn read_into<R: std::io::Read>(r: &mut R, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut chunk = [0u8; 4096];
    match r.read(&mut chunk) {
        Ok(0) => Ok(false),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(true)
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// A test PKI for the local API servers: a CA named `ca_name` (its certificate, and the
/// issuer that signs with its key) and a server certificate for `127.0.0.1` with its key.
pub struct TestPki {
    /// The CA's certificate (PEM for kubeconfigs, DER for root stores).
    pub ca_cert: rcgen::Certificate,
    /// Signs further certificates (client certificates) with the CA's key.
    pub issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The server's certificate, `CN=kube-apiserver`, for 127.0.0.1.
    pub server_cert: rcgen::Certificate,
    /// The server certificate's key.
    pub server_key: rcgen::KeyPair,
}

/// A fresh [`TestPki`].
pub fn test_pki(ca_name: &str) -> TestPki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, ca_name);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("server params");
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = params
        .signed_by(&server_key, &issuer)
        .expect("server certificate");
    TestPki {
        ca_cert,
        issuer,
        server_cert,
        server_key,
    }
}
