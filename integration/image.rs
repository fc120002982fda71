//! The node image (`Containerfile`, `scripts/build-image.sh`): built offline from
//! `scratch` with only the two static binaries (plugin and node agent) in it, under 20 MB, and what its entrypoint does in a
//! container (`install --once` on node directories mounted where the DaemonSet mounts them)
//! is byte for byte what the same binary does when run directly. The DaemonSet's own command
//! and readiness probe (`deploy/daemonset.yaml`) work in the image, which has no shell or
//! `cat`.
//!
//! Everything podman stores lives in temporary directories (`vfs` storage, so no mount is left
//! behind; libpod's state and tmp dir too), removed at the end, also when an assertion fails;
//! the host's podman storage is never used. Containers have no network (`--network=none`).
//!
//! The image is built by `scripts/build-image.sh`, which first builds the static release
//! binary (cargo rebuilds only what changed; the first build takes minutes).
//! `MESH_REDIRECT_STATIC_BINARY=PATH` puts an already built static binary in the image
//! instead (the script's `--binary`).

mod support;
#[path = "support/watch_apiserver.rs"]
mod watch_apiserver;

use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use support::*;
use watch_apiserver::WatchApiServer;

/// The name `scripts/build-image.sh` tags and `deploy/daemonset.yaml` runs.
const IMAGE: &str = concat!("localhost/mesh-redirect:", env!("CARGO_PKG_VERSION"));
/// Where the Containerfile puts the binary.
const BINARY_IN_IMAGE: &str = "/usr/local/bin/mesh-redirect";
/// Where the Containerfile puts the node agent (what the DaemonSet runs).
const AGENT_IN_IMAGE: &str = "/usr/local/bin/mesh-redirect-agent";
/// The image (and its archive) must stay below this.
const SIZE_LIMIT: u64 = 20_000_000;
/// What the kubelet injects and the installer writes into the kubeconfig.
const API_ENV: [(&str, &str); 2] = [
    ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
    ("KUBERNETES_SERVICE_PORT", "443"),
];
const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// podman with its own storage, state and tmp dir under `dir` (configured through
/// `CONTAINERS_CONF` / `CONTAINERS_STORAGE_CONF`, so `scripts/build-image.sh` uses them too).
/// Dropping it removes every container it knows of; the directory goes with its `TempDir`.
struct Podman {
    dir: PathBuf,
}

impl Podman {
    fn new(dir: PathBuf) -> Podman {
        for d in ["root", "run", "libpod", "tmp"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                dir.join("root").display(),
                dir.join("run").display()
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                // Explicit ulimits: podman would copy its own, which the sandbox running
                // the tests may not let the container set (runc: "error setting rlimits").
                "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
                 [engine]\ntmp_dir = \"{}\"\nevents_logger = \"none\"\ncgroup_manager = \"cgroupfs\"\nruntime = \"runc\"\n",
                dir.join("libpod").display()
            ),
        )
        .unwrap();
        Podman { dir }
    }

    /// The environment that points podman (and the build script) at this storage.
    fn env(&self, cmd: &mut Command) {
        cmd.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .env("TMPDIR", self.dir.join("tmp"));
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        self.env(&mut c);
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        run_ok(self.cmd().args(args))
    }

    /// `podman run --rm` as the DaemonSet runs the container: no network, read-only root
    /// filesystem, no capabilities, no privilege escalation.
    fn run_locked_down(&self, name: &str, opts: &[String], argv: &[&str]) -> Output {
        run(self
            .cmd()
            .args([
                "run",
                "--rm",
                "--name",
                name,
                "--network=none",
                "--read-only",
            ])
            .args(["--cap-drop=ALL", "--security-opt=no-new-privileges"])
            .args(opts)
            .args(argv))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Only this private storage's containers (a test that failed half-way leaves some).
        let _ = self
            .cmd()
            .args(["rm", "--all", "--force", "-t", "0"])
            .output();
    }
}

/// Runs `scripts/build-image.sh` into `podman`'s storage, writing the archive to `archive`.
fn build_image(podman: &Podman, archive: &Path) {
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("scripts/build-image.sh"))
        .arg("--archive")
        .arg(archive);
    if let Some(binary) = std::env::var_os("MESH_REDIRECT_STATIC_BINARY") {
        cmd.arg("--binary").arg(binary);
    }
    // Not the variables cargo sets for a test run: the script's cargo would see them as a
    // changed environment (ring's build script tracks CARGO_MANIFEST_DIR) and rebuild the
    // release binary, and the next build from a shell would rebuild it again.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ]
            .contains(&name.as_ref())
        {
            cmd.env_remove(name.as_ref());
        }
    }
    podman.env(&mut cmd);
    let out = run(&mut cmd);
    assert!(
        out.status.success(),
        "scripts/build-image.sh failed:\n{}",
        stderr_of(&out)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        archive.to_str().unwrap(),
        "the script prints the archive's path"
    );
}

/// The archive's index, manifest and image configuration, and its single layer's file list.
struct OciArchive {
    dir: PathBuf,
    index: Value,
    manifest: Value,
    config: Value,
}

impl OciArchive {
    fn open(archive: &Path, dir: &Path) -> OciArchive {
        std::fs::create_dir_all(dir).unwrap();
        run_ok(
            Command::new("tar")
                .arg("-xf")
                .arg(archive)
                .arg("-C")
                .arg(dir),
        );
        let json = |p: PathBuf| -> Value {
            serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{p:?}: {e}")))
                .unwrap()
        };
        let index = json(dir.join("index.json"));
        let blob = |v: &Value| {
            dir.join("blobs/sha256")
                .join(v["digest"].as_str().unwrap().trim_start_matches("sha256:"))
        };
        let manifest = json(blob(&index["manifests"][0]));
        let config = json(blob(&manifest["config"]));
        OciArchive {
            dir: dir.to_path_buf(),
            index,
            manifest,
            config,
        }
    }

    fn layer(&self, i: usize) -> PathBuf {
        let digest = self.manifest["layers"][i]["digest"].as_str().unwrap();
        self.dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// Sum of the manifest's config and layer sizes: what a runtime stores, compressed or not
    /// as the archive holds it.
    fn blob_bytes(&self) -> u64 {
        let layers: u64 = self.manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["size"].as_u64().unwrap())
            .sum();
        layers + self.manifest["config"]["size"].as_u64().unwrap()
    }
}

/// A node's CNI directories with a primary bridge `.conf`, as a fresh node has them.
fn node(dir: &Path) -> (PathBuf, PathBuf) {
    let (bin, conf) = (dir.join("bin"), dir.join("net.d"));
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::copy(
        repo().join("integration/fixtures/cni/10-bridge.conf"),
        conf.join("10-bridge.conf"),
    )
    .unwrap();
    (bin, conf)
}

/// A service account directory as the kubelet projects it: token, CA, namespace.
fn service_account(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("token"), "image-test-token").unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["kubernetes.default.svc".to_string()])
        .expect("a CA certificate");
    std::fs::write(dir.join("ca.crt"), ca.cert.pem()).unwrap();
    std::fs::write(dir.join("namespace"), "mesh-redirect").unwrap();
    dir.to_path_buf()
}

/// Every file under `dir` (relative name → bytes, mode), sorted.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>, u32)> {
    let mut out = Vec::new();
    for sub in ["bin", "net.d"] {
        let mut names: Vec<_> = std::fs::read_dir(dir.join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
            let name = format!("{sub}/{}", p.file_name().unwrap().to_string_lossy());
            out.push((name, std::fs::read(&p).unwrap(), mode));
        }
    }
    out
}

fn names(tree: &[(String, Vec<u8>, u32)]) -> Vec<(&str, u32)> {
    tree.iter().map(|(n, _, m)| (n.as_str(), *m)).collect()
}

/// `install --once` run directly by `binary` on `dir`, with the container's paths for the
/// host view (the default `--host-cni-conf-dir`) and only the API server's variables.
fn install_directly(binary: &Path, dir: &Path, sa: &Path) {
    let out = run(Command::new(binary)
        .env_clear()
        .envs(API_ENV)
        .args(["install", "--once"])
        .arg("--cni-bin-dir")
        .arg(dir.join("bin"))
        .arg("--cni-conf-dir")
        .arg(dir.join("net.d"))
        .arg("--service-account-dir")
        .arg(sa));
    assert!(
        out.status.success(),
        "{} install --once: {}",
        binary.display(),
        stderr_of(&out)
    );
}

fn is_static(binary: &Path) -> bool {
    let out = run(Command::new("ldd").arg(binary).env("LC_ALL", "C"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr_of(&out)
    );
    text.contains("not a dynamic executable") || text.contains("statically linked")
}

fn require_podman() {
    require_root();
    assert!(
        Command::new("podman").arg("--version").output().is_ok(),
        "podman is needed (scripts/setup.sh installs it)"
    );
}

#[test]
fn the_image_holds_only_the_static_binary_and_installs_what_the_binary_installs() {
    require_podman();
    let work = TempDir::new("img", &[]);
    let archive = work.join("mesh-redirect.oci.tar");
    {
        let build = Podman::new(work.join("build"));
        build_image(&build, &archive);
        let listed = build.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
        assert_eq!(
            listed.trim(),
            IMAGE,
            "the image is tagged with the DaemonSet's name"
        );
    }

    // The archive: under 20 MB, named, one layer holding exactly the binary.
    let archive_bytes = std::fs::metadata(&archive).unwrap().len();
    assert!(
        archive_bytes < SIZE_LIMIT,
        "archive is {archive_bytes} bytes"
    );
    let oci = OciArchive::open(&archive, &work.join("oci"));
    assert_eq!(
        oci.index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"], IMAGE,
        "the archive carries the full name, so `ctr images import` keeps it"
    );
    assert!(
        oci.blob_bytes() < SIZE_LIMIT,
        "image is {} bytes",
        oci.blob_bytes()
    );
    let config = &oci.config["config"];
    assert_eq!(config["Entrypoint"], serde_json::json!([BINARY_IN_IMAGE]));
    assert_eq!(config["Cmd"], serde_json::json!(["install"]));
    assert_eq!(
        oci.manifest["layers"].as_array().unwrap().len(),
        1,
        "{}",
        oci.manifest
    );
    let listing = run_ok(Command::new("tar").arg("-tf").arg(oci.layer(0)));
    let files: Vec<&str> = listing
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/'))
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(
        files,
        [
            "usr",
            "usr/local",
            "usr/local/bin",
            "usr/local/bin/mesh-redirect",
            "usr/local/bin/mesh-redirect-agent"
        ],
        "nothing but the two binaries"
    );
    run_ok(
        Command::new("tar")
            .arg("-xf")
            .arg(oci.layer(0))
            .arg("-C")
            .arg(&oci.dir)
            .arg("usr/local/bin/mesh-redirect")
            .arg("usr/local/bin/mesh-redirect-agent"),
    );
    let image_binary = oci.dir.join("usr/local/bin/mesh-redirect");
    assert!(
        is_static(&image_binary) && is_static(&oci.dir.join("usr/local/bin/mesh-redirect-agent")),
        "the binaries in the image need no loader"
    );

    // A second, empty storage that only sees the archive: what a node's runtime gets.
    let runtime = Podman::new(work.join("runtime"));
    let loaded = runtime.ok(&["load", "--quiet", "-i", archive.to_str().unwrap()]);
    assert!(loaded.contains(IMAGE), "podman load: {loaded}");
    let size: u64 = runtime
        .ok(&["image", "inspect", "--format", "{{.Size}}", IMAGE])
        .trim()
        .parse()
        .unwrap();
    assert!(size < SIZE_LIMIT, "image is {size} bytes");

    // The entrypoint's `install --once` on a node's directories, mounted as the DaemonSet
    // mounts them, with the service account where the kubelet projects it.
    let sa = service_account(&work.join("sa"));
    let (bin, conf) = node(&work.join("node-image"));
    let mut opts = vec![
        "-v".to_string(),
        format!("{}:/host/opt/cni/bin", bin.display()),
        "-v".to_string(),
        format!("{}:/host/etc/cni/net.d", conf.display()),
        "-v".to_string(),
        format!("{}:{SERVICE_ACCOUNT_MOUNT}:ro", sa.display()),
    ];
    for (k, v) in API_ENV {
        opts.extend(["-e".to_string(), format!("{k}={v}")]);
    }
    let out = runtime.run_locked_down(&unique("inst"), &opts, &[IMAGE, "install", "--once"]);
    assert!(
        out.status.success(),
        "install in the image: {}",
        stderr_of(&out)
    );

    // The same binary run directly on a second copy of the directories.
    node(&work.join("node-direct"));
    install_directly(&image_binary, &work.join("node-direct"), &sa);
    let (in_image, direct) = (
        tree(&work.join("node-image")),
        tree(&work.join("node-direct")),
    );
    assert_eq!(
        names(&in_image),
        [
            ("bin/mesh-redirect", 0o755),
            ("net.d/10-bridge.conflist", 0o644),
            ("net.d/mesh-redirect-kubeconfig", 0o600)
        ],
        "binary, conflist (the .conf converted) and kubeconfig"
    );
    assert_eq!(names(&in_image), names(&direct), "same files, same modes");
    for ((name, a, _), (_, b, _)) in in_image.iter().zip(&direct) {
        assert!(
            a == b,
            "{name} differs:\nimage:  {}\ndirect: {}",
            String::from_utf8_lossy(a),
            String::from_utf8_lossy(b)
        );
    }
    let image_bytes = std::fs::read(&image_binary).unwrap();
    assert!(
        in_image[0].1 == image_bytes,
        "the installed binary is the image's"
    );
    let conflist: Value = serde_json::from_slice(&in_image[1].1).unwrap();
    let entry = conflist["plugins"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(entry["type"], "mesh-redirect", "{conflist}");
    assert_eq!(
        entry["kubernetes"]["kubeconfig"],
        "/etc/cni/net.d/mesh-redirect-kubeconfig"
    );
    let kubeconfig = String::from_utf8_lossy(&in_image[2].1);
    assert!(kubeconfig.contains("https://10.96.0.1:443"), "{kubeconfig}");

    // And the tree's current sources (the test build) write the same configuration: the
    // image's binary is not stale.
    node(&work.join("node-source"));
    install_directly(Path::new(binary()), &work.join("node-source"), &sa);
    let source = tree(&work.join("node-source"));
    assert_eq!(names(&source), names(&direct));
    assert!(
        source[1..] == direct[1..],
        "conflist and kubeconfig as the sources write them"
    );
}

/// The DaemonSet's container (image, command, env, mounts, read-only root, no capabilities)
/// run in podman: the node agent installs the plugin, caches the node's pods from a local
/// API server (list + watch), answers a lookup on its socket, and its HTTP readiness probe
/// passes once the node is configured and the cache synced; SIGTERM ends it cleanly.
#[test]
fn the_daemonsets_agent_and_probes_work_in_the_image() {
    require_podman();
    let yaml = |f: &str| -> Value {
        serde_norway::from_str(&std::fs::read_to_string(repo().join("deploy").join(f)).unwrap())
            .unwrap()
    };
    let (ds, cm) = (yaml("daemonset.yaml"), yaml("configmap.yaml"));
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["image"], IMAGE,
        "the DaemonSet runs the image the script builds"
    );
    let command: Vec<String> = c["command"]
        .as_array()
        .unwrap_or_else(|| panic!("no command: {c}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    assert_eq!(command[0], AGENT_IN_IMAGE, "the DaemonSet runs the agent");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], 15014);
    assert_eq!(c["ports"][0]["containerPort"], 15014);

    let work = TempDir::new("imgds", &[]);
    let podman = Podman::new(work.join("storage"));
    build_image(&podman, &work.join("mesh-redirect.oci.tar"));
    let sa = service_account(&work.join("sa"));
    let (bin, conf) = node(&work.join("node"));
    let run_dir = work.join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    let api = WatchApiServer::start();
    api.put_pod(serde_json::json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": "apps", "name": "p", "uid": "uid-p"},
        "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "app"}]}}));
    let kubeconfig = api.kubeconfig_file();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();

    // The pod's environment: the ConfigMap, the literal env, the kubelet's API variables;
    // the downward API's node name, a kubeconfig for the local API server, and a loopback
    // metrics address (the container shares the test host's network to reach the server).
    let mut opts = Vec::new();
    let mut env = |k: &str, v: &str| opts.extend(["-e".to_string(), format!("{k}={v}")]);
    for (k, v) in cm["data"].as_object().unwrap() {
        env(k, v.as_str().unwrap());
    }
    for e in c["env"].as_array().unwrap() {
        match (e["name"].as_str().unwrap(), e["value"].as_str()) {
            ("METRICS_ADDR", _) | (_, None) => {}
            (k, Some(v)) => env(k, v),
        }
    }
    for (k, v) in API_ENV {
        env(k, v);
    }
    env("NODE_NAME", "node-1");
    env("KUBECONFIG", "/kube/config");
    env("METRICS_ADDR", &format!("127.0.0.1:{port}"));
    for m in c["volumeMounts"].as_array().unwrap() {
        let path = m["mountPath"].as_str().unwrap();
        let spec = match m["name"].as_str().unwrap() {
            "cni-bin-dir" => format!("-v={}:{path}", bin.display()),
            "cni-net-dir" => format!("-v={}:{path}", conf.display()),
            "agent-run-dir" => format!("-v={}:{path}", run_dir.display()),
            "tmp" => format!("--tmpfs={path}"),
            other => panic!("a volume this test does not know: {other}"),
        };
        opts.push(spec);
    }
    opts.push(format!("-v={}:{SERVICE_ACCOUNT_MOUNT}:ro", sa.display()));
    opts.push(format!("-v={}:/kube/config:ro", kubeconfig.display()));

    let name = unique("ds");
    let entry = format!("--entrypoint={}", command[0]);
    let out = run(podman
        .cmd()
        .args([
            "run",
            "-d",
            "--name",
            &name,
            "--network=host",
            "--read-only",
        ])
        .args(["--cap-drop=ALL", "--security-opt=no-new-privileges"])
        .args(&opts)
        .args([entry.as_str(), IMAGE])
        .args(&command[1..]));
    assert!(out.status.success(), "podman run: {}", stderr_of(&out));
    let logs =
        || String::from_utf8_lossy(&run(podman.cmd().args(["logs", &name])).stderr).into_owned();

    // The readiness probe, as the kubelet runs it (HTTP GET), until it passes.
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_status(port, "/readyz") != 200 {
        assert!(Instant::now() < deadline, "never ready\n{}", logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(http_status(port, "/healthz"), 200);
    let conflist: Value =
        serde_json::from_slice(&std::fs::read(conf.join("10-bridge.conflist")).unwrap()).unwrap();
    let plugin = conflist["plugins"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(plugin["type"], "mesh-redirect", "{conflist}");
    assert_eq!(
        plugin["backend"], cm["data"]["BACKEND"],
        "the ConfigMap's settings"
    );
    assert!(bin.join("mesh-redirect").exists());
    // The plugin's socket, on the hostPath, answers from the cache.
    let socket = run_dir.join("agent.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let pod = mesh_redirect::agent::client::lookup(&socket, "apps", "p", "uid-p");
    assert!(pod.is_ok(), "{pod:?}\n{}", logs());
    assert_eq!(api.all_pod_gets(), 0);

    // SIGTERM (the kubelet's stop): it exits cleanly, and with CLEANUP_ON_EXIT=false the node
    // stays configured.
    podman.ok(&["stop", "-t", "10", &name]);
    let code = podman.ok(&["inspect", "--format", "{{.State.ExitCode}}", &name]);
    assert_eq!(code.trim(), "0", "exit after SIGTERM\n{}", logs());
    podman.ok(&["rm", &name]);
    assert_eq!(cm["data"]["CLEANUP_ON_EXIT"], "false");
    assert!(conf.join("10-bridge.conflist").exists() && bin.join("mesh-redirect").exists());
}

/// The status of `GET path` on 127.0.0.1:`port`; 0 when nothing answers.
fn http_status(port: u16, path: &str) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}
