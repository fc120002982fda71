//! A real CNI runtime: podman (Debian's package, CNI network backend) runs a container on a
//! network whose conflist chains `bridge`, `host-local` and `mesh-redirect` (static mode).
//! Inside the container `nft list ruleset` shows our tables, an application connection to an
//! address in a second namespace made by the test lands on the container's port 15001, and
//! removing the container runs DEL cleanly.
//!
//! Network safety: the bridge has no address (`isGateway: false`), there is no masquerade,
//! the only other host on it is the test's own namespace, and forwarding in the root
//! namespace is asserted to stay 0. podman's storage and state live in a temporary
//! directory (`--root`, `--runroot`), not in the host's.

mod support;

use std::path::Path;
use std::process::Command;
use support::*;

/// Prepares `<dir>/net.d` and `<dir>/bin` for a bridge name (instead of our own conflist).
type Prepare = dyn Fn(&Path, &str);

struct Podman {
    dir: TempDir,
    bridge: String,
    network: String,
    containers: Vec<String>,
}

impl Podman {
    fn new() -> Podman {
        Podman::with_network(None)
    }

    /// `conf_dir`: a CNI configuration directory prepared by someone else (the installer);
    /// by default we write our own conflist.
    fn with_network(prepared: Option<&Prepare>) -> Podman {
        require_root();
        let dir = TempDir::new(
            "podman",
            &[
                "bin",
                "net.d",
                "rootfs/bin",
                "rootfs/etc",
                "rootfs/proc",
                "rootfs/sys",
                "rootfs/dev",
                "rootfs/tmp",
                "storage",
                "run",
                "tmp",
            ],
        );
        let bridge = unique("br");
        std::fs::copy("/bin/busybox", dir.join("rootfs/bin/busybox"))
            .expect("busybox-static is installed");
        for applet in ["sh", "nc", "sleep", "echo", "cat", "ip"] {
            std::os::unix::fs::symlink("busybox", dir.join("rootfs/bin").join(applet)).unwrap();
        }
        for p in ["bridge", "host-local", "loopback"] {
            std::os::unix::fs::symlink(Path::new("/usr/lib/cni").join(p), dir.join("bin").join(p))
                .unwrap();
        }
        if let Some(prepare) = prepared {
            prepare(dir.path(), &bridge);
            // The installer keeps the primary's network name (`bridge-net` below).
            return Podman::finish(dir, bridge, "bridge-net");
        }
        std::fs::copy(binary(), dir.join("bin/mesh-redirect")).unwrap();
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "meshtest",
            "plugins": [
                {"type": "bridge", "bridge": bridge, "isGateway": false, "ipMasq": false,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": "198.51.100.0/24", "rangeStart": "198.51.100.10", "rangeEnd": "198.51.100.50"}]]}},
                {"type": "mesh-redirect", "mode": "static", "backend": "nftables", "plugin_log_level": "debug",
                 "log_file": dir.join("mesh-redirect.log"), "redirect": {"excludeInboundPorts": "22"}}
            ]
        });
        std::fs::write(
            dir.join("net.d/10-meshtest.conflist"),
            serde_json::to_string_pretty(&conflist).unwrap(),
        )
        .unwrap();
        Podman::finish(dir, bridge, "meshtest")
    }

    fn finish(dir: TempDir, bridge: String, network: &str) -> Podman {
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\"]\nnetwork_config_dir = \"{}\"\ndefault_network = \"{network}\"\n",
                dir.join("bin").display(),
                dir.join("net.d").display()
            ),
        )
        .unwrap();
        Podman {
            dir,
            bridge,
            network: network.to_string(),
            containers: Vec::new(),
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("TMPDIR", self.dir.join("tmp"))
            .args([
                "--root",
                self.dir.join("storage").to_str().unwrap(),
                "--runroot",
                self.dir.join("run").to_str().unwrap(),
            ])
            .args([
                "--runtime",
                "runc",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "none",
            ]);
        c
    }

    fn run_detached(&mut self, name: &str) {
        let network = self.network.clone();
        let out = run(self
            .cmd()
            .args([
                "run",
                "-d",
                "--name",
                name,
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
                "--network",
                &network,
                "--rootfs",
            ])
            .arg(self.dir.join("rootfs"))
            .args(["/bin/sh", "-c", "sleep 600"]));
        assert!(
            out.status.success(),
            "podman run: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        self.containers.push(name.to_string());
    }

    fn exec(&self, name: &str, script: &str) -> String {
        let out = run(self.cmd().args(["exec", name, "/bin/sh", "-c", script]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn netns(&self, name: &str) -> String {
        run_ok(
            self.cmd()
                .args(["inspect", "-f", "{{.NetworkSettings.SandboxKey}}", name]),
        )
        .trim()
        .to_string()
    }

    /// The container has a network namespace and our tables are in it; its ruleset.
    fn assert_programmed(&self, name: &str) -> String {
        let ns = self.netns(name);
        assert!(!ns.is_empty(), "the container has a network namespace");
        let ruleset = run_ok(
            Command::new("nsenter")
                .arg(format!("--net={ns}"))
                .args(["nft", "list", "ruleset"]),
        );
        assert!(
            ruleset.contains("table inet istio-proxy-nat"),
            "{ruleset}\n{}",
            self.log()
        );
        ruleset
    }

    fn remove(&mut self, name: &str) {
        let out = run(self.cmd().args(["rm", "-f", "-t", "0", name]));
        assert!(
            out.status.success(),
            "podman rm: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.containers.retain(|c| c != name);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mesh-redirect.log")).unwrap_or_default()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for c in self.containers.clone() {
            let _ = self.cmd().args(["rm", "-f", "-t", "0", &c]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        // The directory (a `TempDir` field) is removed after this, the containers gone.
    }
}

#[test]
fn podman_runs_a_container_through_the_chained_plugin() {
    let mut podman = Podman::new();
    podman.run_detached("mesh-app");
    // Our tables are in the container's namespace.
    let ruleset = podman.assert_programmed("mesh-app");
    assert!(
        ruleset.contains("tcp dport 22"),
        "the plugin configuration's settings are used"
    );

    // A second namespace made by the test, on the same bridge (layer 2 only).
    let remote = TestNetns::new("pr");
    let (host_end, ns_end) = (unique("h"), unique("n"));
    run_ok(Command::new("ip").args([
        "link", "add", &host_end, "type", "veth", "peer", "name", &ns_end,
    ]));
    run_ok(Command::new("ip").args(["link", "set", &ns_end, "netns", &remote.name]));
    run_ok(Command::new("ip").args(["link", "set", &host_end, "master", &podman.bridge, "up"]));
    remote.exec_ok(&["ip", "addr", "add", "198.51.100.200/24", "dev", &ns_end]);
    remote.exec_ok(&["ip", "link", "set", &ns_end, "up"]);

    // The sidecar's listener, and an application connection to the remote address.
    let _ = podman
        .cmd()
        .args([
            "exec",
            "-d",
            "mesh-app",
            "/bin/sh",
            "-c",
            "nc -ll -p 15001 -e /bin/echo redirected-to-15001",
        ])
        .output();
    let mut answer = String::new();
    for _ in 0..20 {
        answer = podman.exec("mesh-app", "echo | nc -w 2 198.51.100.200 80");
        if answer.contains("redirected") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        answer.contains("redirected-to-15001"),
        "the connection landed on 15001: {answer:?}\n{}",
        podman.log()
    );

    // Removing the container runs DEL.
    podman.remove("mesh-app");
    let log = podman.log();
    assert!(log.contains("redirect applied"), "ADD ran: {log}");
    assert!(
        log.contains("redirect removed") || log.contains("already gone"),
        "DEL ran cleanly: {log}"
    );
    assert!(!log.contains("ERROR"), "{log}");
    let _ = Command::new("ip").args(["link", "del", &host_end]).output();
    assert_no_forwarding();
}

/// The conflist the node installer produces from a plain bridge `.conf` is accepted by a
/// real CNI runtime: podman runs a container through it and our plugin programs it.
#[test]
fn podman_accepts_the_conflist_the_installer_produced() {
    let prepare = |dir: &Path, bridge: &str| {
        // A primary configuration as a node would have it: a single bridge `.conf`.
        let primary = serde_json::json!({"cniVersion": "0.4.0", "name": "bridge-net", "type": "bridge", "bridge": bridge,
            "isGateway": false, "ipMasq": false,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "198.51.100.0/24", "rangeStart": "198.51.100.60", "rangeEnd": "198.51.100.90"}]]}});
        std::fs::write(
            dir.join("net.d/10-bridge.conf"),
            serde_json::to_string_pretty(&primary).unwrap(),
        )
        .unwrap();
        let sa = dir.join("sa");
        std::fs::create_dir_all(&sa).unwrap();
        std::fs::write(sa.join("token"), "test-token").unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["kubernetes.default.svc".to_string()])
            .expect("a CA certificate");
        std::fs::write(sa.join("ca.crt"), ca.cert.pem()).unwrap();
        let out = run(Command::new(binary())
            .args(["install", "--once"])
            .arg("--cni-bin-dir").arg(dir.join("bin"))
            .arg("--cni-conf-dir").arg(dir.join("net.d"))
            .arg("--host-cni-conf-dir").arg(dir.join("net.d"))
            .arg("--service-account-dir").arg(&sa)
            .arg("--plugin-config")
            .arg(serde_json::json!({"mode": "static", "log_file": dir.join("mesh-redirect.log"), "plugin_log_level": "debug"}).to_string())
            .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
            .env("KUBERNETES_SERVICE_PORT", "6443"));
        assert!(
            out.status.success(),
            "install: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            dir.join("bin/mesh-redirect").exists(),
            "the binary was installed"
        );
        assert!(
            !dir.join("net.d/10-bridge.conf").exists(),
            "the .conf became a .conflist"
        );
    };
    let mut podman = Podman::with_network(Some(&prepare));
    let conflist: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(podman.dir.join("net.d/10-bridge.conflist")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        conflist["plugins"][1]["type"], "mesh-redirect",
        "{conflist}"
    );
    podman.run_detached("mesh-inst");
    podman.assert_programmed("mesh-inst");
    podman.remove("mesh-inst");
    assert!(podman.log().contains("redirect applied"));
    assert_no_forwarding();
}
