//! The node agent as a process for the integration tests: started against a
//! [`WatchApiServer`], its metrics endpoint and socket asked, killed (by its own PID) when
//! dropped.
#![allow(dead_code)]

use crate::support::unique;
use crate::watch_apiserver::WatchApiServer;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The node the test agents run for.
pub const NODE: &str = "node-1";

/// A running agent; killed (by its own pid) when dropped.
pub struct Agent {
    pub child: Child,
    pub socket: PathBuf,
    pub metrics: String,
    pub log: PathBuf,
}

pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Agent {
    pub fn start(server: &WatchApiServer, dir: &Path) -> Agent {
        Agent::start_with(server, dir, &["--no-install"], &[])
    }

    pub fn start_with(
        server: &WatchApiServer,
        dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Agent {
        let socket = dir.join("agent.sock");
        let metrics = format!("127.0.0.1:{}", free_port());
        let log_path = dir.join(format!("agent-{}.log", unique("l")));
        let log = std::fs::File::create(&log_path).unwrap();
        let exe = std::env::var("MESH_REDIRECT_AGENT_BINARY")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_mesh-redirect-agent").to_string());
        let child = Command::new(exe)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("MESH_REDIRECT_LOG", "debug")
            .envs(env.iter().copied())
            .args(["--node-name", NODE, "--metrics-addr", &metrics])
            .args(args)
            .arg("--kubeconfig")
            .arg(server.kubeconfig_file())
            .arg("--socket")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mesh-redirect-agent");
        let agent = Agent {
            child,
            socket,
            metrics,
            log: log_path,
        };
        agent.wait_for(
            |a| a.http("/healthz").0 == 200,
            "the agent to serve /healthz",
        );
        agent
    }

    pub fn wait_for(&self, ok: impl Fn(&Agent) -> bool, what: &str) {
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if ok(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("timed out waiting for {what}");
    }

    pub fn ready(&self) {
        self.wait_for(|a| a.http("/readyz").0 == 200, "/readyz 200");
    }

    /// The agent's raw answer to a pod request on its socket.
    pub fn ask(&self, name: &str, uid: &str) -> String {
        let Ok(mut s) = std::os::unix::net::UnixStream::connect(&self.socket) else {
            return String::new();
        };
        let _ = writeln!(
            s,
            r#"{{"v":1,"op":"pod","namespace":"apps","name":"{name}","uid":"{uid}"}}"#
        );
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(s), &mut line);
        line
    }

    /// `GET path` on the metrics address: (status, body); (0, "") when nothing answers.
    pub fn http(&self, path: &str) -> (u16, String) {
        let Ok(mut s) = TcpStream::connect(&self.metrics) else {
            return (0, String::new());
        };
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        let code = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (code, body)
    }

    /// The value of one metric line (`name{labels}`), 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        let (_, body) = self.http("/metrics");
        body.lines()
            .find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0)
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node's CNI directories for the agent's installer (a bridge configuration to chain
/// after, a service account), and the flags that point the agent at them.
pub struct NodeDirs {
    /// The root of the directories.
    pub dir: crate::support::TempDir,
    /// `--cni-bin-dir`, `--cni-conf-dir`, …, `--ready-file`, `--plugin-binary`.
    pub args: Vec<String>,
}

impl NodeDirs {
    pub fn new() -> NodeDirs {
        let node = crate::support::TempDir::new("agentnode", &["bin", "net.d", "sa"]);
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/fixtures/cni/10-bridge.conf"),
            node.join("net.d/10-bridge.conf"),
        )
        .unwrap();
        std::fs::write(node.join("sa/token"), "agent-test-token").unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["kubernetes.default.svc".to_string()])
            .unwrap()
            .cert
            .pem();
        std::fs::write(node.join("sa/ca.crt"), ca).unwrap();
        std::fs::write(node.join("sa/namespace"), "mesh-redirect").unwrap();
        let dir = |d: &str| node.join(d).display().to_string();
        let args = [
            "--cni-bin-dir",
            &dir("bin"),
            "--cni-conf-dir",
            &dir("net.d"),
            "--host-cni-conf-dir",
            &dir("net.d"),
            "--service-account-dir",
            &dir("sa"),
            "--ready-file",
            &dir("ready"),
            "--plugin-binary",
            crate::support::binary(),
        ]
        .map(String::from)
        .to_vec();
        NodeDirs { dir: node, args }
    }

    /// The installer's API server environment.
    pub const ENV: [(&'static str, &'static str); 2] = [
        ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
        ("KUBERNETES_SERVICE_PORT", "443"),
    ];

    /// The chained configuration list the installer wrote.
    pub fn conflist(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.dir.join("net.d/10-bridge.conflist")).unwrap())
            .unwrap()
    }
}
