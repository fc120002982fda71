//! What can go wrong while installing, repairing or removing the plugin on a node.

use std::io;
use std::path::PathBuf;
use thiserror::Error;

/// Why a pass of the installer failed. Every variant names the file or setting at fault, so
/// the DaemonSet's log says what to fix.
#[derive(Debug, Error)]
pub enum InstallError {
    /// A file operation failed (`what` is the operation, e.g. "cannot write").
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// The operation, e.g. "cannot write".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The system error.
        #[source]
        source: io::Error,
    },

    /// The configuration directory holds no `*.conflist`, `*.conf` or `*.json` yet: the primary
    /// CNI has not written its configuration. We never invent a network, so this is waited
    /// out in `run` mode and an error in `once` mode.
    #[error("no primary CNI configuration (*.conflist, *.conf, *.json) in {}", dir.display())]
    NoPrimary {
        /// The CNI configuration directory.
        dir: PathBuf,
    },

    /// The primary configuration cannot be read as a CNI configuration. In `run` mode this is
    /// retried: a primary that writes its file in place may simply be half-way through.
    #[error("primary CNI configuration {}: {reason}", path.display())]
    InvalidPrimary {
        /// The primary configuration file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },

    /// A service account file the kubeconfig needs is absent or empty.
    #[error("service account {what} is missing: {}{}", path.display(), detail(.source))]
    MissingServiceAccount {
        /// Which file: "token" or "CA certificate".
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// Why it could not be read, if it exists.
        #[source]
        source: Option<io::Error>,
    },

    /// A service account file exists but cannot be used (e.g. a CA file without a certificate).
    #[error("service account {what} {} is not usable: {reason}", path.display())]
    InvalidServiceAccount {
        /// Which file: "token" or "CA certificate".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The API server's address is unknown (the variable is normally set by the kubelet).
    #[error("{0} is not set: the plugin's kubeconfig needs the API server's address")]
    MissingApiServer(&'static str),

    /// `KUBERNETES_SERVICE_HOST` / `KUBERNETES_SERVICE_PORT` hold something unusable.
    #[error("invalid {name} {value:?}: {reason}")]
    InvalidApiServer {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The plugin settings would make every ADD fail, or cannot be written.
    #[error("invalid plugin settings: {0}")]
    InvalidSettings(String),

    /// Setting up inotify, the signalfd or poll failed.
    #[error("cannot {what}: {source}")]
    Watch {
        /// What was being set up.
        what: String,
        /// The system error.
        #[source]
        source: io::Error,
    },
}

fn detail(source: &Option<io::Error>) -> String {
    match source {
        Some(e) => format!(" ({e})"),
        None => " (empty)".to_string(),
    }
}

impl InstallError {
    /// An [`InstallError::Io`].
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        InstallError::Io {
            what,
            path: path.into(),
            source,
        }
    }

    /// An [`InstallError::Watch`].
    pub(crate) fn watch(what: impl Into<String>, source: impl Into<io::Error>) -> Self {
        InstallError::Watch {
            what: what.into(),
            source: source.into(),
        }
    }

    /// True for states the node can leave on its own: the primary CNI has not written its
    /// configuration yet, or is in the middle of rewriting it. `run` waits for these instead
    /// of exiting; everything else is a misconfiguration that a restart will not fix.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            InstallError::NoPrimary { .. } | InstallError::InvalidPrimary { .. }
        )
    }
}
