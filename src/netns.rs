//! Running kernel I/O inside a target network namespace.
//!
//! `setns` changes only the calling thread, and a netlink socket stays in the namespace it
//! was created in. So every namespace switch happens on a dedicated thread that is created
//! for it and ends with it: no thread of the process is ever left in another namespace.

use nix::sched::{setns, CloneFlags};
use std::fs::File;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a namespace could not be used.
#[derive(Debug, Error)]
pub enum NetnsError {
    /// `--netns` is neither a path nor a valid name.
    #[error("invalid value {0:?} for --netns: a name must not contain '/', or give a path")]
    InvalidName(String),
    #[error("network namespace {arg:?} not found ({path}): {source}")]
    /// The namespace file could not be opened.
    NotFound {
        /// What the user gave.
        arg: String,
        /// The path it resolved to.
        path: String,
        /// Why it could not be opened.
        source: std::io::Error,
    },
    #[error("{path} is not a network namespace: {source}")]
    /// `setns` refused it.
    Enter {
        /// The namespace path.
        path: String,
        /// `setns`' errno.
        source: nix::Error,
    },
    /// The thread running inside the namespace panicked.
    #[error("the namespace worker thread panicked")]
    Panicked,
}

/// Where `ip netns` keeps named namespaces.
pub const NAMED_NETNS_DIR: &str = "/var/run/netns";

/// `--netns` takes a path (`/var/run/netns/x`, `/proc/PID/ns/net`) or a name as `ip netns`
/// shows it.
pub fn resolve(arg: &str) -> Result<PathBuf, NetnsError> {
    if arg.contains('/') {
        return Ok(PathBuf::from(arg));
    }
    if arg.is_empty() || arg == "." || arg == ".." {
        return Err(NetnsError::InvalidName(arg.to_string()));
    }
    Ok(Path::new(NAMED_NETNS_DIR).join(arg))
}

/// An opened namespace handle: opening early means a missing namespace is reported before
/// anything else happens.
pub struct Netns {
    file: File,
    path: String,
}

impl Netns {
    /// Opens a namespace given as a path or a name.
    pub fn open(arg: &str) -> Result<Netns, NetnsError> {
        let path = resolve(arg)?;
        let file = File::open(&path).map_err(|source| NetnsError::NotFound {
            arg: arg.to_string(),
            path: path.display().to_string(),
            source,
        })?;
        Ok(Netns {
            file,
            path: path.display().to_string(),
        })
    }

    /// The namespace's path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Runs `f` on a fresh thread that has entered this namespace; the thread ends with `f`.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(|source| {
                        NetnsError::Enter {
                            path: self.path.clone(),
                            source,
                        }
                    })?;
                    Ok(f())
                })
                .join()
                .map_err(|_| NetnsError::Panicked)?
        })
    }
}
