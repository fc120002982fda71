//! The node's network namespaces, found through `/proc/*/ns/net` (the agent runs with the
//! host's PID namespace), each with the addresses of its interfaces.
//!
//! A namespace is known by its nsfs identity (device, inode): every process of a pod shares
//! one. The host's namespaces — PID 1's and the agent's own — are marked, never entered for
//! writing, and a pod IP found there makes the pod ineligible for repair. A process whose
//! namespace cannot be read, and a namespace whose addresses cannot be read, are reported
//! with the reason, never taken as empty.

use crate::netns::Netns;
use std::collections::HashSet;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A network namespace's nsfs identity: (device, inode) of `/proc/PID/ns/net`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetnsId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

impl std::fmt::Display for NetnsId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "net:[{}]", self.ino)
    }
}

/// One namespace found on the node; `N` is how it is entered (an opened [`Netns`] for real).
#[derive(Debug)]
pub struct FoundNetns<N> {
    /// Its identity.
    pub id: NetnsId,
    /// The first process seen in it.
    pub pid: u32,
    /// PID 1's or the agent's own namespace.
    pub host: bool,
    /// Its interfaces' addresses; `Err` with the reason when they could not be read.
    pub addresses: Result<Vec<IpAddr>, String>,
    /// The handle to enter it.
    pub ns: N,
}

/// The scan itself failed: nothing can be said about any pod.
#[derive(Debug, Error)]
pub enum ScanError {
    /// `/proc` or a host namespace link could not be read.
    #[error("cannot read {path}: {source} (the agent needs the host's PID namespace, hostPID: true, and root)")]
    Proc {
        /// What could not be read.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The namespaces under a `/proc` (normally `/proc`).
#[derive(Debug)]
pub struct ProcScanner {
    /// The procfs to read.
    pub proc_root: PathBuf,
    /// PID 1's namespace could not be read, and that was said.
    warned: std::sync::atomic::AtomicBool,
}

impl Default for ProcScanner {
    fn default() -> Self {
        ProcScanner {
            proc_root: "/proc".into(),
            warned: Default::default(),
        }
    }
}

fn netns_id(path: &Path) -> std::io::Result<NetnsId> {
    let m = std::fs::metadata(path)?;
    Ok(NetnsId {
        dev: m.dev(),
        ino: m.ino(),
    })
}

/// What a scan found: the namespaces, and the processes whose namespace could not be read
/// (one of them might hold a pod).
#[derive(Debug)]
pub struct Scan<N> {
    /// Every namespace seen, once.
    pub namespaces: Vec<FoundNetns<N>>,
    /// `pid N: error` for each process whose `ns/net` could not be read.
    pub unreadable: Vec<String>,
}

impl ProcScanner {
    /// The host's namespaces: the agent's own (it runs with the host's network), and PID 1's
    /// when the kernel lets us see it (an init that is protected from ptrace-mode access, as
    /// some sandboxes' are, refuses it even to root: then the agent's own alone, said once).
    fn host_ids(&self) -> Result<HashSet<NetnsId>, ScanError> {
        let own = self.proc_root.join("self/ns/net");
        let mut host = HashSet::from([netns_id(&own).map_err(|source| ScanError::Proc {
            path: own.display().to_string(),
            source,
        })?]);
        let init = self.proc_root.join("1/ns/net");
        match netns_id(&init) {
            Ok(id) => {
                host.insert(id);
            }
            Err(e) => {
                if !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!("cannot read {}: {e}; the host's network namespace is taken to be the agent's own (run the agent with hostNetwork)", init.display());
                }
            }
        }
        Ok(host)
    }

    /// Every namespace with a process in it, once, with its addresses.
    pub fn scan(&self) -> Result<Scan<Netns>, ScanError> {
        let host = self.host_ids()?;
        let entries = std::fs::read_dir(&self.proc_root).map_err(|source| ScanError::Proc {
            path: self.proc_root.display().to_string(),
            source,
        })?;
        let mut seen = HashSet::new();
        let mut scan = Scan {
            namespaces: Vec::new(),
            unreadable: Vec::new(),
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let id = match netns_id(&entry.path().join("ns/net")) {
                Ok(id) => id,
                // Exited since the directory was listed: no namespace to see.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    scan.unreadable.push(format!("pid {pid}: {e}"));
                    continue;
                }
            };
            if seen.insert(id) {
                if let Some(found) = self.open(pid, id, host.contains(&id)) {
                    scan.namespaces.push(found);
                } else {
                    seen.remove(&id);
                }
            }
        }
        Ok(scan)
    }

    /// Opens the namespace of `pid` and reads its addresses; `None` when the process is gone.
    fn open(&self, pid: u32, id: NetnsId, host: bool) -> Option<FoundNetns<Netns>> {
        let link = self.proc_root.join(pid.to_string()).join("ns/net");
        // Opened, then checked: had the process exited and its PID been reused in between,
        // the handle would be another namespace than the one counted.
        let ns = Netns::open(&link.display().to_string()).ok()?;
        if ns.identity().ok()? != (id.dev, id.ino) {
            return None;
        }
        let addresses = ns.addresses().map_err(|e| e.to_string());
        Some(FoundNetns {
            id,
            pid,
            host,
            addresses,
            ns,
        })
    }
}
