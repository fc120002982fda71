//! The closest to a kubelet this machine gets: containerd's CRI plugin (Debian's containerd
//! 1.6) runs pod sandboxes through the CNI configuration **our installer** wrote, and our
//! plugin, in Kubernetes mode, reads each pod from a local HTTPS API test server.
//!
//! Per backend (`nftables`, `iptables-legacy`), one test:
//!
//! 1. `mesh-redirect install --once` chains itself into a primary `bridge` + `host-local`
//!    conflist (private directories, a service account holding the test API server's CA and
//!    token, `KUBERNETES_SERVICE_HOST/PORT` pointing at it);
//! 2. a containerd of the test's own starts (private root, state, socket, runc root and CNI
//!    directories; config written here), a pause image built here is imported into `k8s.io`;
//! 3. over CRI (gRPC on the unix socket, `k8s-cri` + tonic): `RunPodSandbox` of Istio's CNI
//!    case `basic` programs exactly Istio's rules into the sandbox's namespace (found through
//!    `PodSandboxStatus` verbose: `info.runtimeSpec.linux.namespaces[network].path`), and an
//!    application connection there lands on the 15001 listener with its original
//!    destination while the proxy's (uid 1337) reaches the real server; a pod of an
//!    excluded namespace and a pod without a sidecar get nothing of ours;
//! 4. `StopPodSandbox` runs DEL, which removes our rules (checked through a handle on the
//!    namespace kept open by the test); `RemovePodSandbox` runs a second DEL with an empty
//!    `CNI_NETNS`, which succeeds.
//!
//! containerd 1.6 never calls CNI CHECK (kubelet's CRI has no such call), so CHECK is not
//! exercised here; `cni_kubernetes.rs`/`cni_protocol.rs` cover it.
//!
//! Network safety: the bridge has no address (`isGateway`, `isDefaultGateway`, `ipMasq` all
//! false), the subnet is TEST-NET-3 (203.0.113.0/24), the only other host on it is a
//! namespace the test made, and `net.ipv4.ip_forward` is asserted to stay 0. Everything is
//! undone by [`Containerd`]'s `Drop`, also on failure: sandboxes stopped and removed,
//! container processes and shims of this containerd killed by PID, containerd itself stopped
//! by its PID, every mount under the private directory (sandbox namespaces, rootfs, shm)
//! unmounted, the bridge deleted, the directory removed.

#[path = "support/agent_process.rs"]
mod agent_process;
#[path = "support/apiserver.rs"]
mod apiserver;
mod support;
#[path = "support/traffic.rs"]
mod traffic;
#[path = "support/watch_apiserver.rs"]
mod watch_apiserver;

use apiserver::{ApiServer, Reply};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use serde_json::{json, Value};
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;
use tonic::transport::{Channel, Endpoint, Uri};
use traffic::{connect_as, sa, Server};

const TOKEN: &str = "mesh-redirect-cri-test-token";
const PAUSE_IMAGE: &str = "localhost/mesh-redirect-pause:test";
const APP_UID: u32 = 1000;
const PROXY_UID: u32 = 1337;
/// The address of the test's "remote" namespace on the bridge (TEST-NET-3).
const REMOTE: &str = "203.0.113.200";

// ---------------------------------------------------------------------------------------
// CRI client
// ---------------------------------------------------------------------------------------

/// A blocking CRI client: tonic over containerd's unix socket on a current-thread runtime.
struct Cri {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

impl Cri {
    fn connect(socket: &Path) -> Result<Cri, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let socket = socket.to_path_buf();
        let channel = rt
            .block_on(async move {
                Endpoint::try_from("http://[::]:50051")
                    .unwrap()
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let socket = socket.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(socket).await?,
                            ))
                        }
                    }))
                    .await
            })
            .map_err(|e| format!("CRI connect: {e}"))?;
        Ok(Cri {
            rt,
            client: RuntimeServiceClient::new(channel),
        })
    }

    /// Runs one call with a deadline; the error names the call.
    fn call<T, F>(
        &mut self,
        what: &str,
        f: impl FnOnce(RuntimeServiceClient<Channel>) -> F,
    ) -> Result<T, String>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client.clone();
        self.rt
            .block_on(async move { tokio::time::timeout(Duration::from_secs(60), f(client)).await })
            .map_err(|_| format!("{what}: no answer within 60 s"))?
            .map(tonic::Response::into_inner)
            .map_err(|s| format!("{what}: {} {}", s.code(), s.message()))
    }

    fn version(&mut self) -> Result<cri::VersionResponse, String> {
        self.call("Version", |mut c| async move {
            c.version(cri::VersionRequest::default()).await
        })
    }

    fn status(&mut self) -> Result<cri::StatusResponse, String> {
        self.call("Status", |mut c| async move {
            c.status(cri::StatusRequest { verbose: false }).await
        })
    }

    /// Runs a sandbox under `cgroup_parent` (a parent of the test's own, not `/k8s.io`).
    fn run_pod_sandbox(
        &mut self,
        namespace: &str,
        name: &str,
        cgroup_parent: &str,
    ) -> Result<String, String> {
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.to_string(),
                uid: format!("uid-{namespace}-{name}"),
                namespace: namespace.to_string(),
                attempt: 0,
            }),
            hostname: name.to_string(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: cgroup_parent.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.call("RunPodSandbox", |mut c| async move {
            c.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
        })
        .map(|r| r.pod_sandbox_id)
    }

    fn pod_sandbox_status_verbose(
        &mut self,
        id: &str,
    ) -> Result<cri::PodSandboxStatusResponse, String> {
        let id = id.to_string();
        self.call("PodSandboxStatus", |mut c| async move {
            c.pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id,
                verbose: true,
            })
            .await
        })
    }

    fn stop_pod_sandbox(&mut self, id: &str) -> Result<(), String> {
        let id = id.to_string();
        self.call("StopPodSandbox", |mut c| async move {
            c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id })
                .await
        })
        .map(|_| ())
    }

    fn remove_pod_sandbox(&mut self, id: &str) -> Result<(), String> {
        let id = id.to_string();
        self.call("RemovePodSandbox", |mut c| async move {
            c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
                .await
        })
        .map(|_| ())
    }

    fn list_pod_sandbox_ids(&mut self) -> Result<Vec<String>, String> {
        self.call("ListPodSandbox", |mut c| async move {
            c.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
                .await
        })
        .map(|r| r.items.into_iter().map(|s| s.id).collect())
    }

    /// The sandbox's pod IP, as the primary plugin gave it.
    fn pod_ip(&mut self, id: &str) -> String {
        let status = self.pod_sandbox_status_verbose(id).unwrap();
        status
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .filter(|ip| !ip.is_empty())
            .unwrap_or_else(|| panic!("sandbox {id} has no IP"))
    }

    /// The sandbox's network namespace path: not a CRI status field, but containerd's
    /// verbose `info` holds the OCI spec it ran the sandbox with.
    fn netns_path(&mut self, id: &str) -> String {
        let status = self.pod_sandbox_status_verbose(id).unwrap();
        let info: Value = serde_json::from_str(
            status
                .info
                .get("info")
                .expect("PodSandboxStatus verbose has info[\"info\"]"),
        )
        .expect("info[\"info\"] is JSON");
        info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .expect("runtimeSpec.linux.namespaces")
            .iter()
            .find(|n| n["type"] == "network")
            .and_then(|n| n["path"].as_str())
            .unwrap_or_else(|| panic!("no network namespace path in {info}"))
            .to_string()
    }
}

// ---------------------------------------------------------------------------------------
// containerd of the test's own
// ---------------------------------------------------------------------------------------

/// A containerd with private directories, stopped and cleaned up when dropped.
struct Containerd {
    dir: TempDir,
    child: Option<Child>,
    cri: Option<Cri>,
    bridge: String,
    /// The network's name: libcni caches results as `/var/lib/cni/results/<network>-…`.
    network: String,
    /// The sandboxes' cgroup parent (`/<unique>`, in every hierarchy).
    cgroup_parent: String,
    /// Host directories the shims create if absent (`/run/containerd/s`), removed again
    /// when they did not exist before and are empty.
    made_run_dirs: Vec<PathBuf>,
}

impl Containerd {
    fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// Writes the config and starts containerd; waits until CRI reports the runtime and the
    /// network (our conflist loaded) ready.
    fn start(dir: TempDir, bridge: String, network: String) -> Containerd {
        let d = dir.path().display().to_string();
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
# Nothing outside the private directory: no /opt plugin, no tracing exporters.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # Root here lacks CAP_SYS_RESOURCE: without this runc fails
  # ("can't get final child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  # Sandbox namespaces under the private state directory, not /var/run/netns.
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # runc's state, private too (the default is /run/containerd/runc).
        Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    # A single directory in 1.6: symlinks to the reference plugins, and our binary.
    bin_dir = "{d}/bin"
    conf_dir = "{d}/net.d"
    max_conf_num = 1
"#
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let made_run_dirs = ["/run/containerd/s", "/run/containerd"]
            .iter()
            .map(PathBuf::from)
            .filter(|p| !p.exists())
            .collect();
        // The shims daemonize; as a child subreaper the test inherits them (and orphaned
        // sandbox processes) instead of PID 1, and reaps them in `Drop`.
        // SAFETY: prctl with integer arguments only.
        unsafe {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        }
        let log = File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .env("TMPDIR", dir.join("tmp"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd is installed (scripts/setup.sh)");
        let mut c = Containerd {
            dir,
            child: Some(child),
            cri: None,
            bridge,
            network,
            cgroup_parent: format!("/{}", unique("cg")),
            made_run_dirs,
        };
        c.wait_ready();
        c
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("containerd exited ({status}):\n{}", self.log());
            }
            if self.cri.is_none() && self.socket().exists() {
                match Cri::connect(&self.socket()) {
                    Ok(c) => self.cri = Some(c),
                    Err(e) => last = e,
                }
            }
            if let Some(cri) = self.cri.as_mut() {
                match cri.status() {
                    Ok(s) => {
                        let conditions = s.status.map(|s| s.conditions).unwrap_or_default();
                        if conditions.len() >= 2 && conditions.iter().all(|c| c.status) {
                            return;
                        }
                        last = format!("{conditions:?}");
                    }
                    Err(e) => last = e,
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "containerd's CRI not ready within 60 s: {last}\n{}",
            self.log()
        );
    }

    fn cri(&mut self) -> &mut Cri {
        self.cri.as_mut().expect("connected")
    }

    fn run_pod_sandbox(&mut self, namespace: &str, name: &str) -> String {
        let parent = self.cgroup_parent.clone();
        match self.cri().run_pod_sandbox(namespace, name, &parent) {
            Ok(id) => id,
            Err(e) => panic!("{e}\n{}\n{}", self.plugin_log(), self.log()),
        }
    }

    /// The cgroup directories of the sandboxes' parent, one per hierarchy.
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let rel = self.cgroup_parent.trim_start_matches('/');
        let mut dirs = Vec::new();
        for h in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let d = h.path().join(rel);
            if d.is_dir() {
                dirs.push(d);
            }
        }
        dirs
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    fn plugin_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mesh-redirect.log")).unwrap_or_default()
    }

    /// Builds a pause image (busybox-static's `sleep` as the only file) as a docker archive
    /// by hand and imports it into the `k8s.io` namespace, so containerd never pulls.
    fn import_pause_image(&self) {
        let img = self.dir.join("img");
        std::fs::create_dir_all(img.join("rootfs/bin")).unwrap();
        std::fs::copy("/bin/busybox", img.join("rootfs/bin/busybox"))
            .expect("busybox-static is installed");
        run_ok(
            Command::new("tar")
                .arg("-C")
                .arg(img.join("rootfs"))
                .args(["--owner=0", "--group=0", "--numeric-owner", "-cf"])
                .arg(img.join("layer.tar"))
                .arg("bin"),
        );
        let diff_id = sha256(&img.join("layer.tar"));
        let config = json!({"architecture": "amd64", "os": "linux",
            "config": {"Entrypoint": ["/bin/busybox", "sleep", "2147483647"]},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
            "history": [{"created_by": "mesh-redirect integration/cri_containerd.rs"}]});
        std::fs::write(img.join("config.json"), config.to_string()).unwrap();
        let config_name = format!("{}.json", sha256(&img.join("config.json")));
        std::fs::rename(img.join("config.json"), img.join(&config_name)).unwrap();
        let manifest =
            json!([{"Config": config_name, "RepoTags": [PAUSE_IMAGE], "Layers": ["layer.tar"]}]);
        std::fs::write(img.join("manifest.json"), manifest.to_string()).unwrap();
        run_ok(
            Command::new("tar")
                .arg("-C")
                .arg(&img)
                .arg("-cf")
                .arg(img.join("pause.tar"))
                .args(["manifest.json", &config_name, "layer.tar"]),
        );
        run_ok(
            Command::new("ctr")
                .arg("-a")
                .arg(self.socket())
                .args(["-n", "k8s.io", "images", "import"])
                .arg(img.join("pause.tar")),
        );
    }

    /// Processes whose root directory lies in our private directory: the sandboxes' pause
    /// processes.
    fn container_pids(&self) -> Vec<i32> {
        pids_where(|pid| {
            std::fs::read_link(format!("/proc/{pid}/root"))
                .is_ok_and(|r| r.starts_with(self.dir.path()))
        })
    }

    /// containerd-shim processes started by this containerd (their `-address` is our socket).
    fn shim_pids(&self) -> Vec<i32> {
        let sock = self.socket().display().to_string();
        pids_where(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                args.first()
                    .is_some_and(|a| a.ends_with(b"containerd-shim-runc-v2"))
                    && args
                        .windows(2)
                        .any(|w| w[0] == b"-address" && w[1] == sock.as_bytes())
            })
        })
    }

    /// Sandbox ids containerd has bundles for (running or not).
    fn bundle_ids(&self) -> Vec<String> {
        let tasks = self.dir.join("state/io.containerd.runtime.v2.task/k8s.io");
        std::fs::read_dir(tasks)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// The shims' sockets (under /run/containerd/s/, whatever the config), from the bundles.
    fn shim_sockets(&self) -> Vec<PathBuf> {
        let tasks = self.dir.join("state/io.containerd.runtime.v2.task/k8s.io");
        let Ok(entries) = std::fs::read_dir(tasks) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("address")).ok())
            .filter_map(|a| a.trim().strip_prefix("unix://").map(PathBuf::from))
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // 1. Sandboxes left by a failed test: stopped and removed the CRI way (runs DEL).
        let mut ids = self.bundle_ids();
        if let Some(cri) = self.cri.as_mut() {
            let listed = cri.list_pod_sandbox_ids().unwrap_or_default();
            ids.extend(listed.iter().cloned());
            for id in listed {
                let _ = cri.stop_pod_sandbox(&id);
                let _ = cri.remove_pod_sandbox(&id);
            }
        }
        self.cri = None;
        let sockets = self.shim_sockets();
        // 2. Whatever still runs of ours, by PID: containers, containerd, its shims.
        for pid in self.container_pids() {
            kill(pid, libc::SIGKILL);
        }
        if let Some(mut child) = self.child.take() {
            kill(child.id() as i32, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for pid in self.shim_pids() {
            kill(pid, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
        for s in sockets {
            let _ = std::fs::remove_file(s);
        }
        // 3. Mounts under the private directory (sandbox namespaces, rootfs, shm), deepest
        //    first; then the bridge. The directory itself goes with the `TempDir` field.
        unmount_under(self.dir.path());
        // 4. Host leftovers: cgroups (children first), libcni's result cache of our network,
        //    the shims' socket directory if we made it.
        for d in self.cgroup_dirs() {
            for child in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if child.path().is_dir() {
                    let _ = std::fs::remove_dir(child.path());
                }
            }
            let _ = std::fs::remove_dir(&d);
        }
        let prefix = format!("{}-", self.network);
        for e in std::fs::read_dir("/var/lib/cni/results")
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let loopback = ids.iter().any(|id| name == format!("cni-loopback-{id}-lo"));
            if name.starts_with(&prefix) || loopback {
                let _ = std::fs::remove_file(e.path());
            }
        }
        for d in &self.made_run_dirs {
            let _ = std::fs::remove_dir(d);
        }
        reap_children();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stdin(Stdio::null())
            .output();
    }
}

fn sha256(path: &Path) -> String {
    run_ok(Command::new("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn pids_where(pick: impl Fn(i32) -> bool) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| *pid != std::process::id() as i32 && pick(*pid))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits for our exited children that nobody waits for: shims and sandbox processes that
/// were reparented to the test (a child subreaper).
fn reap_children() {
    let me = std::process::id().to_string();
    for pid in pids_where(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
            s.lines()
                .any(|l| l.split_whitespace().eq(["PPid:", me.as_str()]))
                && s.lines().any(|l| l.starts_with("State:\tZ"))
        })
    }) {
        // SAFETY: waitpid on an exited child of ours, without blocking.
        unsafe {
            libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG);
        }
    }
}

fn kill(pid: i32, signal: libc::c_int) {
    // SAFETY: kill(2) on a PID we identified as ours.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Unmounts (lazily) every mount point under `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
}

// ---------------------------------------------------------------------------------------
// Namespaces by path: state and traffic
// ---------------------------------------------------------------------------------------

/// `nsenter --net=<path> <argv…>`, which must succeed.
fn in_ns(path: &str, argv: &[&str]) -> String {
    run_ok(
        Command::new("nsenter")
            .arg(format!("--net={path}"))
            .args(argv),
    )
}

/// `iptables-legacy-save` and `ip6tables-legacy-save` of a namespace, without comments, in
/// the shape of [`TestNetns::legacy_saved`].
fn legacy_saved_at(path: &str) -> String {
    let mut out = String::new();
    for save in ["iptables-legacy-save", "ip6tables-legacy-save"] {
        out += &format!("## {save}\n");
        let saved: String = in_ns(path, &[save])
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        out += &without_policy_counters(&saved);
    }
    out
}

/// Everything either backend could have written: nftables, legacy tables, policy routing.
fn kernel_at(path: &str) -> String {
    format!(
        "{}{}{}",
        in_ns(path, &["nft", "list", "ruleset"]),
        legacy_saved_at(path),
        in_ns(path, &["ip", "rule", "show"])
    )
}

/// Every IPv4 address of the namespace, at `port` (where the test's listeners bind).
fn any_v4(port: u16) -> SocketAddr {
    sa(IpAddr::from([0u8; 4]), port)
}

/// Retries while the answer is an error (the bridge port and ARP come up asynchronously).
fn connect_as_retrying(ns: &str, uid: u32, dst: SocketAddr) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = connect_as(ns, uid, uid, dst);
        if !answer.starts_with("error") || Instant::now() > deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------
// The scenario
// ---------------------------------------------------------------------------------------

/// The primary network as a node would have it (the reference plugins linked into the bin
/// directory, a `bridge` + `host-local` conflist), before anything of ours.
fn primary_network(dir: &Path, bridge: &str, network: &str) -> Value {
    for p in ["bridge", "host-local", "loopback"] {
        std::os::unix::fs::symlink(Path::new("/usr/lib/cni").join(p), dir.join("bin").join(p))
            .unwrap();
    }
    let primary = json!({"cniVersion": "1.0.0", "name": network, "plugins": [
        {"type": "bridge", "bridge": bridge,
         "isGateway": false, "isDefaultGateway": false, "ipMasq": false,
         "ipam": {"type": "host-local", "dataDir": dir.join("ipam"),
                  "ranges": [[{"subnet": "203.0.113.0/24", "rangeStart": "203.0.113.10",
                               "rangeEnd": "203.0.113.99"}]]}}]});
    std::fs::write(
        dir.join("net.d/10-cri-bridge.conflist"),
        serde_json::to_string_pretty(&primary).unwrap(),
    )
    .unwrap();
    primary
}

/// The primary network, then our installer chained into it.
fn install(dir: &Path, bridge: &str, network: &str, backend: &str, server: &ApiServer) -> Value {
    let primary = primary_network(dir, bridge, network);
    // The installer's service account: the test API server's CA and token.
    std::fs::write(dir.join("sa/token"), TOKEN).unwrap();
    std::fs::write(dir.join("sa/ca.crt"), server.ca_pem()).unwrap();
    let out = run(Command::new(binary())
        .args(["install", "--once", "--backend", backend])
        .args([
            "--exclude-namespaces",
            "kube-system",
            "--log-level",
            "debug",
        ])
        .args(["--api-timeout", "5s"])
        .arg("--cni-bin-dir")
        .arg(dir.join("bin"))
        .arg("--cni-conf-dir")
        .arg(dir.join("net.d"))
        .arg("--host-cni-conf-dir")
        .arg(dir.join("net.d"))
        .arg("--service-account-dir")
        .arg(dir.join("sa"))
        .arg("--plugin-config")
        .arg(json!({"log_file": dir.join("mesh-redirect.log")}).to_string())
        .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        .env("KUBERNETES_SERVICE_PORT", server.addr().port().to_string()));
    assert!(out.status.success(), "install: {}", stderr_of(&out));
    let conflist: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("net.d/10-cri-bridge.conflist")).unwrap(),
    )
    .unwrap();
    let plugins = conflist["plugins"].as_array().unwrap();
    assert_eq!(plugins.len(), 2, "{conflist}");
    assert_eq!(
        plugins[0], primary["plugins"][0],
        "the primary plugin is kept"
    );
    assert_eq!(plugins[1]["type"], "mesh-redirect", "{conflist}");
    assert_eq!(plugins[1]["backend"], backend, "{conflist}");
    assert_eq!(conflist["name"], network, "the network keeps its name");
    assert_eq!(
        plugins[1]["kubernetes"]["kubeconfig"],
        json!(dir.join("net.d/mesh-redirect-kubeconfig")),
        "the plugin uses the kubeconfig the installer wrote: {conflist}"
    );
    conflist
}

fn pod_without_sidecar(namespace: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": "0b7c9a52-1c55-4d0e-8e5c-5a0d4c1e2f30"},
        "spec": {"containers": [{"name": "app", "image": "docker.io/library/busybox:1.36"}]},
        "status": {"phase": "Pending"}})
}

/// One containerd at a time: the two tests share host paths (`/run/containerd/s`) whose
/// cleanup must not race, and two cores are better spent on one.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn through_containerd(backend: &str) {
    require_root();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    assert_no_forwarding();
    let started = Instant::now();
    let case = cni_cases()
        .into_iter()
        .find(|c| c.name == "basic")
        .expect("Istio's CNI case basic");
    let server = ApiServer::builder().token(TOKEN).start();
    let meshed = format!("{}-{}", case.name, backend.replace('-', ""));
    server.pod(
        "default",
        &meshed,
        Reply::Pod(pod_object(&case.pod, "default", &meshed)),
    );
    server.pod(
        "default",
        "plain",
        Reply::Pod(pod_without_sidecar("default", "plain")),
    );
    // Meshed in every respect, but its namespace is excluded.
    server.pod(
        "kube-system",
        "coredns",
        Reply::Pod(pod_object(&case.pod, "kube-system", "coredns")),
    );

    let dir = TempDir::new(
        "cri",
        &["bin", "net.d", "sa", "ipam", "root", "state", "runc", "tmp"],
    );
    let bridge = unique("cb");
    let network = format!("{bridge}-net");
    install(dir.path(), &bridge, &network, backend, &server);
    let mut ctrd = Containerd::start(dir, bridge.clone(), network);
    let version = ctrd.cri().version().unwrap();
    assert_eq!(version.runtime_name, "containerd");
    eprintln!(
        "runtime: {} {} (CRI {})",
        version.runtime_name, version.runtime_version, version.runtime_api_version
    );
    ctrd.import_pause_image();

    // --- A meshed pod: Istio's rules, and traffic lands on 15001.
    let id = ctrd.run_pod_sandbox("default", &meshed);
    let netns = ctrd.cri().netns_path(&id);
    assert!(
        netns.starts_with(ctrd.dir.path().to_str().unwrap()),
        "the sandbox namespace is under the private state dir: {netns}"
    );
    // A handle that keeps the namespace alive after containerd unmounts it (StopPodSandbox).
    let held = File::open(&netns).unwrap();
    let held_path = format!("/proc/{}/fd/{}", std::process::id(), held.as_raw_fd());
    let (ours, istio) = match backend {
        "iptables-legacy" => (
            legacy_saved_at(&netns),
            istio_legacy_state(
                case.iptables_golden
                    .as_ref()
                    .expect("the case has a golden"),
            ),
        ),
        _ => (
            in_ns(&netns, &["nft", "list", "ruleset"]),
            // The hand-written reference, not our renderer: an independent oracle.
            nft_ruleset_of(&cni_nft_reference(&case.name)),
        ),
    };
    assert!(
        istio.contains("istio-proxy-nat") || istio.contains(":ISTIO_OUTPUT"),
        "the reference holds Istio's rules:\n{istio}"
    );
    assert_eq!(
        ours,
        istio,
        "{backend}: the sandbox's kernel state equals Istio's for case {}\n{}",
        case.name,
        ctrd.plugin_log()
    );
    // Nothing of the other backend.
    let fresh = TestNetns::new("cf");
    match backend {
        "iptables-legacy" => assert_eq!(in_ns(&netns, &["nft", "list", "ruleset"]), ""),
        _ => assert_eq!(legacy_saved_at(&netns), fresh.legacy_saved(false)),
    }

    // The bridge carries no address: the host is not a gateway of this network.
    assert_eq!(
        run_ok(Command::new("ip").args(["-o", "addr", "show", "dev", &bridge, "scope", "global"])),
        "",
        "the bridge {bridge} has no address"
    );

    // The test's "remote" host on the bridge, layer 2 only.
    let remote = TestNetns::new("cr");
    let (host_end, ns_end) = (unique("h"), unique("n"));
    run_ok(Command::new("ip").args([
        "link", "add", &host_end, "type", "veth", "peer", "name", &ns_end,
    ]));
    let _veth = VethGuard(host_end.clone());
    run_ok(Command::new("ip").args(["link", "set", &ns_end, "netns", &remote.name]));
    run_ok(Command::new("ip").args(["link", "set", &host_end, "master", &bridge, "up"]));
    remote.exec_ok(&["ip", "addr", "add", &format!("{REMOTE}/24"), "dev", &ns_end]);
    remote.exec_ok(&["ip", "link", "set", &ns_end, "up"]);
    let dst: SocketAddr = format!("{REMOTE}:80").parse().unwrap();
    let _remote_server = Server::start(&remote.path(), any_v4(80), "remote", false);
    {
        let _proxy = Server::start(&netns, any_v4(15001), "proxy-15001", true);
        // The proxy's own traffic is not captured: it reaches the remote server (and proves
        // the network works at all).
        assert_eq!(
            connect_as_retrying(&netns, PROXY_UID, dst),
            format!("remote {dst}"),
            "proxy uid 1337 goes out"
        );
        assert_eq!(
            connect_as(&netns, APP_UID, APP_UID, dst),
            format!("proxy-15001 {dst}"),
            "an application's connection lands on 15001 with its original destination\n{}",
            ctrd.plugin_log()
        );
    }

    // --- Not ours to redirect: an excluded namespace and a pod without a sidecar.
    let mut others = Vec::new();
    for (namespace, name) in [("kube-system", "coredns"), ("default", "plain")] {
        let other = ctrd.run_pod_sandbox(namespace, name);
        let path = ctrd.cri().netns_path(&other);
        assert_eq!(
            kernel_at(&path),
            kernel_at(&fresh.path()),
            "{namespace}/{name}: nothing of ours"
        );
        others.push((other, path));
    }
    assert_eq!(
        server.pod_requests("kube-system", "coredns"),
        0,
        "an excluded namespace is decided without the API"
    );
    assert!(server.pod_requests("default", "plain") >= 1);
    // The pod without a sidecar is not redirected: its application reaches the server.
    let _plain_listener = Server::start(&others[1].1, any_v4(15001), "proxy-15001", true);
    assert_eq!(
        connect_as_retrying(&others[1].1, APP_UID, dst),
        format!("remote {dst}"),
        "no redirect without a sidecar"
    );

    // --- StopPodSandbox: DEL removes our rules.
    ctrd.cri().stop_pod_sandbox(&id).unwrap();
    assert!(
        !Path::new(&netns).exists(),
        "containerd removed the sandbox's namespace mount"
    );
    let after = kernel_at(&held_path);
    assert!(
        !after.contains("istio") && !after.contains("ISTIO"),
        "DEL removed our rules:\n{after}\n{}",
        ctrd.plugin_log()
    );
    drop(held);
    // --- RemovePodSandbox: a second DEL, with an empty CNI_NETNS, succeeds.
    ctrd.cri().remove_pod_sandbox(&id).unwrap();
    for (other, _) in &others {
        ctrd.cri().stop_pod_sandbox(other).unwrap();
        ctrd.cri().remove_pod_sandbox(other).unwrap();
    }
    assert!(ctrd.cri().list_pod_sandbox_ids().unwrap().is_empty());

    let log = ctrd.plugin_log();
    assert!(
        log.lines()
            .any(|l| l.contains("redirect applied") && l.contains(&netns)),
        "ADD ran for the meshed sandbox: {log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("redirect removed") && l.contains(&netns)),
        "StopPodSandbox's DEL removed it: {log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("DEL without a namespace") && l.contains(&id)),
        "RemovePodSandbox's second DEL came with an empty CNI_NETNS: {log}"
    );
    assert!(
        log.contains("namespace kube-system is excluded"),
        "the excluded pod is logged: {log}"
    );
    assert!(!log.contains("ERROR"), "{log}");
    assert!(
        !log.contains("CHECK"),
        "containerd 1.6 never calls CHECK: {log}"
    );
    assert_no_forwarding();
    eprintln!(
        "{backend}: containerd {} CRI end to end in {:.1} s",
        version.runtime_version,
        started.elapsed().as_secs_f64()
    );
}

/// Deletes a host-side veth end when dropped (its peer goes with it).
struct VethGuard(String);

impl Drop for VethGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.0])
            .stdin(Stdio::null())
            .output();
    }
}

/// Issue 13's case as the field meets it: a meshed pod's sandbox started while the node's
/// chain held only the primary plugin (a node rebooted, a primary CNI that rewrote its
/// conflist); then the agent starts: it chains the plugin in and captures the running pod in
/// place, with exactly Istio's rules, found through the sandbox's pause process.
fn started_before_the_plugin(backend: &str) {
    require_root();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    assert_no_forwarding();
    let case = cni_cases()
        .into_iter()
        .find(|c| c.name == "basic")
        .expect("Istio's CNI case basic");
    let dir = TempDir::new(
        "crie",
        &["bin", "net.d", "sa", "ipam", "root", "state", "runc", "tmp"],
    );
    let bridge = unique("cb");
    let network = format!("{bridge}-net");
    primary_network(dir.path(), &bridge, &network);
    let mut ctrd = Containerd::start(dir, bridge, network);
    ctrd.import_pause_image();
    let name = format!("early-{}", backend.replace('-', ""));
    let id = ctrd.run_pod_sandbox("default", &name);
    let netns = ctrd.cri().netns_path(&id);
    let fresh = TestNetns::new("cef");
    assert_eq!(
        kernel_at(&netns),
        kernel_at(&fresh.path()),
        "started uncaptured"
    );

    let server = watch_apiserver::WatchApiServer::start();
    let mut pod = pod_object(&case.pod, "default", &name);
    let ip = ctrd.cri().pod_ip(&id);
    pod["metadata"]["uid"] = json!(format!("uid-default-{name}"));
    pod["status"] = json!({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]});
    server.put_pod(pod);
    let d = |sub: &str| ctrd.dir.join(sub).display().to_string();
    let args = [
        "--cni-bin-dir",
        &d("bin"),
        "--cni-conf-dir",
        &d("net.d"),
        "--host-cni-conf-dir",
        &d("net.d"),
        "--service-account-dir",
        &d("sa"),
        "--ready-file",
        &d("ready"),
        "--plugin-binary",
        binary(),
        "--backend",
        backend,
        "--reconcile-interval",
        "1",
    ];
    std::fs::write(ctrd.dir.join("sa/token"), TOKEN).unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["kubernetes.default.svc".to_string()])
        .unwrap()
        .cert
        .pem();
    std::fs::write(ctrd.dir.join("sa/ca.crt"), ca).unwrap();
    let agent = agent_process::Agent::start_with(
        &server,
        ctrd.dir.path(),
        &args,
        &[
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", "6443"),
        ],
    );
    let reference = match backend {
        "iptables-legacy" => istio_legacy_state(case.iptables_golden.as_ref().unwrap()),
        _ => nft_ruleset_of(&cni_nft_reference(&case.name)),
    };
    let state = || match backend {
        "iptables-legacy" => legacy_saved_at(&netns),
        _ => in_ns(&netns, &["nft", "list", "ruleset"]),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while state() != reference {
        assert!(
            Instant::now() < deadline,
            "{backend}: not captured:\n{}\n{}",
            state(),
            std::fs::read_to_string(&agent.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.wait_for(|_| ctrd.dir.join("ready").exists(), "the agent's install");
    let conflist = std::fs::read_to_string(ctrd.dir.join("net.d/10-cri-bridge.conflist")).unwrap();
    assert!(
        conflist.contains("\"mesh-redirect\""),
        "the agent chained the plugin in: {conflist}"
    );
    {
        let _proxy = Server::start(&netns, any_v4(15001), "proxy-15001", true);
        let dst: SocketAddr = format!("{REMOTE}:80").parse().unwrap();
        assert_eq!(
            connect_as(&netns, APP_UID, APP_UID, dst),
            format!("proxy-15001 {dst}"),
            "the running pod's new connections land on 15001"
        );
    }
    let log = std::fs::read_to_string(&agent.log).unwrap_or_default();
    assert!(
        log.contains("RedirectRepaired") || log.contains("applied it in place"),
        "{log}"
    );
    drop(agent);
    ctrd.cri().stop_pod_sandbox(&id).unwrap();
    ctrd.cri().remove_pod_sandbox(&id).unwrap();
    assert_no_forwarding();
}

#[test]
fn containerd_a_pod_started_before_the_plugin_is_captured_by_the_agent_nftables() {
    started_before_the_plugin("nftables");
}

#[test]
fn containerd_a_pod_started_before_the_plugin_is_captured_by_the_agent_iptables_legacy() {
    started_before_the_plugin("iptables-legacy");
}

#[test]
fn containerd_cri_runs_meshed_and_plain_pods_through_the_installed_chain_nftables() {
    through_containerd("nftables");
}

#[test]
fn containerd_cri_runs_meshed_and_plain_pods_through_the_installed_chain_iptables_legacy() {
    through_containerd("iptables-legacy");
}
