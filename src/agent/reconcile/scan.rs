//! The node's network namespaces, found through `/proc/*/ns/net` (the agent runs with the
//! host's PID namespace), each with the addresses of its interfaces.
//!
//! A namespace is known by its nsfs identity (device, inode): every process of a pod shares
//! one. The host's namespaces — PID 1's and the agent's own — are marked, never entered for
//! writing, and a pod IP found there makes the pod ineligible for repair. A namespace whose
//! addresses cannot be read is reported with the reason, never taken as empty.

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
#[derive(Debug, Clone)]
pub struct ProcScanner {
    /// The procfs to read.
    pub proc_root: PathBuf,
}

impl Default for ProcScanner {
    fn default() -> Self {
        ProcScanner {
            proc_root: "/proc".into(),
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

impl ProcScanner {
    fn host_ids(&self) -> Result<HashSet<NetnsId>, ScanError> {
        let mut host = HashSet::new();
        for who in ["1", "self"] {
            let path = self.proc_root.join(who).join("ns/net");
            let id = netns_id(&path).map_err(|source| ScanError::Proc {
                path: path.display().to_string(),
                source,
            })?;
            host.insert(id);
        }
        Ok(host)
    }

    /// Every namespace with a process in it, once, with its addresses.
    pub fn scan(&self) -> Result<Vec<FoundNetns<Netns>>, ScanError> {
        let host = self.host_ids()?;
        let entries = std::fs::read_dir(&self.proc_root).map_err(|source| ScanError::Proc {
            path: self.proc_root.display().to_string(),
            source,
        })?;
        let mut seen = HashSet::new();
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let link = entry.path().join("ns/net");
            // A process that exited since the directory was listed is no namespace to see.
            let Ok(id) = netns_id(&link) else { continue };
            if !seen.insert(id) {
                continue;
            }
            // Opened, then checked: had the process exited and its PID been reused in
            // between, the handle would be another namespace than the one counted.
            let ns = match Netns::open(&link.display().to_string()) {
                Ok(ns) if ns.identity().ok() == Some((id.dev, id.ino)) => ns,
                _ => {
                    seen.remove(&id);
                    continue;
                }
            };
            let addresses = ns.addresses().map_err(|e| e.to_string());
            found.push(FoundNetns {
                id,
                pid,
                host: host.contains(&id),
                addresses,
                ns,
            });
        }
        Ok(found)
    }
}
