//! A pod's network namespace with a process living in it, as a container runtime leaves
//! it for the CNI plugin and the node agent: a uniquely named namespace
//! ([`TestNetns`]: `lo` up), an `eth0` up holding the pod's IPv4 address (`/24`) and
//! optionally its IPv6 address (`/64`, `nodad`), and a long-lived `sleep` that joined the
//! namespace by `setns(2)` between fork and exec (no `ip netns exec`, no other namespace
//! changed).
//!
//! `eth0` is one end of a veth pair whose other end, [`PEER`] (up, no address), stays in
//! the same namespace: as in a pod, `eth0` is a veth with carrier, and the test kernels have
//! no `dummy` driver (`CONFIG_DUMMY` is off), so a dummy interface is not an option.
//!
//! Dropping it (also while a test panics) kills that process by its PID, reaps it, then
//! deletes the namespace. Network safety: nothing outside the namespace is touched; no
//! routes are added (the kernel's own prefix routes of the addresses stay inside it).

use super::{run_ok, TestNetns};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The other end of `eth0`'s veth pair, in the same namespace.
pub const PEER: &str = "eth0peer";

/// The namespace and its process (see the module documentation).
pub struct PodNetns {
    /// Killed and reaped in `Drop`, before `ns` is deleted (fields drop after `drop`).
    child: Child,
    ns: TestNetns,
    ipv4: Ipv4Addr,
    ipv6: Option<Ipv6Addr>,
}

impl PodNetns {
    /// A namespace named `mr<pid><n><prefix>` set up as the module documentation says;
    /// needs root (panics naming it otherwise).
    pub fn new(prefix: &str, ipv4: Ipv4Addr, ipv6: Option<Ipv6Addr>) -> PodNetns {
        // Deleted again if anything below panics.
        let ns = TestNetns::new(prefix);
        let ip = |args: &[&str]| run_ok(Command::new("ip").args(["-n", &ns.name]).args(args));
        ip(&["link", "add", "eth0", "type", "veth", "peer", "name", PEER]);
        ip(&["-4", "address", "add", &format!("{ipv4}/24"), "dev", "eth0"]);
        if let Some(v6) = ipv6 {
            ip(&[
                "-6",
                "address",
                "add",
                &format!("{v6}/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
        }
        ip(&["link", "set", PEER, "up"]);
        ip(&["link", "set", "eth0", "up"]);
        let child = spawn_in(&ns);
        PodNetns {
            child,
            ns,
            ipv4,
            ipv6,
        }
    }

    /// The PID of the process living in the namespace.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The namespace's name (`ip netns` name).
    pub fn name(&self) -> &str {
        &self.ns.name
    }

    /// `/var/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(self.ns.path())
    }

    pub fn ipv4(&self) -> Ipv4Addr {
        self.ipv4
    }

    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.ipv6
    }

    /// The namespace, for [`TestNetns`]'s helpers (`exec_ok`, `ruleset`, `mesh`, …).
    pub fn netns(&self) -> &TestNetns {
        &self.ns
    }
}

/// `sleep 3600` in `ns`'s network namespace (and only that namespace changed).
fn spawn_in(ns: &TestNetns) -> Child {
    let file = std::fs::File::open(ns.path()).unwrap_or_else(|e| panic!("{}: {e}", ns.path()));
    let fd = file.as_raw_fd();
    let mut cmd = Command::new("sleep");
    cmd.arg("3600")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only setns(2), async-signal-safe, between fork and exec; `file` (the fd)
    // stays open until `spawn` has returned, and is close-on-exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("sleep in netns {}: {e}", ns.name));
    drop(file);
    child
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
