//! The one place that says what every failure means to the caller: the command line's exit
//! code and the CNI plugin's error code. Each stage has its own typed error
//! (`ConfigError`, `NetnsError`, `EngineError`, `InstallError`, …); at the edge they become
//! an [`Error`] that carries the operation and the namespace and knows its [`Outcome`].
//!
//! | outcome | exit code | CNI code | meaning |
//! |---|---|---|---|
//! | success | 0 | — | done |
//! | [`Outcome::Drift`] | 1 | 103 | `verify`/CHECK: the kernel differs from the expected rules |
//! | [`Outcome::InvalidInput`] | 2 | 7 | a flag, variable, setting or annotation is invalid; nothing was touched |
//! | [`Outcome::Namespace`] | 3 | 3 | the network namespace cannot be opened or entered |
//! | [`Outcome::Refused`] | 4 | 100 | the kernel refused the change; nothing was changed |
//! | [`Outcome::Node`] | 5 | — | the node installer could not configure the node |
//! | [`Outcome::PermissionDenied`] | 6 | 104 | not allowed to read or change the namespace's state (a missing capability) |
//! | [`Outcome::KernelIo`] | 7 | 105 | the kernel's state could not be read (a failed socket or dump): unknown, not empty |
//! | [`Outcome::NotRedirected`] | 126 | — | `validate`: the probe connection was not redirected (Istio's code) |
//!
//! The CNI plugin's other codes come from the protocol itself (`crate::cni::protocol::Code`):
//! 1 incompatible version, 4 bad environment, 6 undecodable configuration, 11 the API did
//! not answer in time, 50 not ready, 101 API access denied, 102 the API's answer is not a
//! pod, 106 the plugin panicked (a bug; the answer still reaches the runtime).

use crate::backend::BackendError;
use crate::config::ConfigError;
use crate::engine::{EngineError, RouteOp};
use crate::install::InstallError;
use crate::netns::NetnsError;
use crate::validate::ValidateError;
use crate::xt::apply::XtOp;
use thiserror::Error;

/// What a failure means to whoever called us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The kernel differs from the expected rules.
    Drift,
    /// Bad input; nothing was touched.
    InvalidInput,
    /// The namespace cannot be opened or entered.
    Namespace,
    /// The kernel refused the change; nothing was changed.
    Refused,
    /// The node installer failed.
    Node,
    /// Not permitted (a capability is missing).
    PermissionDenied,
    /// The kernel's state could not be read or written for another reason.
    KernelIo,
    /// `validate` found the redirect not working.
    NotRedirected,
}

impl Outcome {
    /// The command line's exit code.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Drift => 1,
            Outcome::InvalidInput => 2,
            Outcome::Namespace => 3,
            Outcome::Refused => 4,
            Outcome::Node => 5,
            Outcome::PermissionDenied => 6,
            Outcome::KernelIo => 7,
            Outcome::NotRedirected => 126,
        }
    }

    /// The CNI error code (`None` where the outcome cannot happen in the plugin).
    pub fn cni_code(self) -> Option<u32> {
        match self {
            Outcome::Drift => Some(103),
            Outcome::InvalidInput => Some(7),
            Outcome::Namespace => Some(3),
            Outcome::Refused => Some(100),
            Outcome::PermissionDenied => Some(104),
            Outcome::KernelIo => Some(105),
            Outcome::Node | Outcome::NotRedirected => None,
        }
    }
}

fn denied(errno: Option<i32>) -> bool {
    matches!(errno, Some(libc::EPERM) | Some(libc::EACCES))
}

/// Whether a write failed because the kernel refused it, or reading/talking failed.
fn refused_or_io(errno: Option<i32>, is_write: bool) -> Outcome {
    if denied(errno) {
        Outcome::PermissionDenied
    } else if is_write {
        Outcome::Refused
    } else {
        Outcome::KernelIo
    }
}

/// Entering a namespace needs `CAP_SYS_ADMIN`; anything else wrong with it is the namespace.
fn netns_outcome(e: &NetnsError) -> Outcome {
    match e {
        NetnsError::Enter { source, .. } if denied(Some(*source as i32)) => {
            Outcome::PermissionDenied
        }
        NetnsError::Panicked => Outcome::KernelIo,
        _ => Outcome::Namespace,
    }
}

impl EngineError {
    /// What this failure means to the caller.
    pub fn outcome(&self) -> Outcome {
        use crate::nft::socket::NetlinkError as N;
        match self {
            EngineError::Netns(e) => netns_outcome(e),
            EngineError::Backend(BackendError::Nftables(e)) => {
                refused_or_io(e.errno(), matches!(e, N::Rejected(_)))
            }
            EngineError::Backend(BackendError::Xtables(e)) => match e.op_errno() {
                Some((op, errno)) => refused_or_io(errno, op == XtOp::Replace),
                None => Outcome::Refused,
            },
            EngineError::Route { op, source, .. } => refused_or_io(
                source.raw_os_error(),
                matches!(op, RouteOp::Add | RouteOp::Delete),
            ),
        }
    }
}

/// The operation a top-level error happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `apply` / CNI ADD.
    Apply,
    /// `verify` / CNI CHECK.
    Verify,
    /// `remove` / CNI DEL.
    Remove,
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Operation::Apply => "apply",
            Operation::Verify => "verify",
            Operation::Remove => "remove",
        })
    }
}

/// A failure at the edge: what it means, and what the user is told.
#[derive(Debug, Error)]
pub enum Error {
    /// An engine operation on a namespace failed.
    #[error("{operation} in {netns}: {source}")]
    Engine {
        /// apply, verify or remove.
        operation: Operation,
        /// The namespace path.
        netns: String,
        /// What failed.
        source: EngineError,
    },
    /// The namespace could not be opened.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// A redirect flag, variable or setting is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Another flag's value is invalid.
    #[error("invalid value {value:?} for {flag}: {expected}")]
    InvalidFlag {
        /// The flag.
        flag: &'static str,
        /// What was given.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// `verify` found differences (already printed).
    #[error("{0} difference(s)")]
    Drift(usize),
    /// The node installer failed.
    #[error(transparent)]
    Install(#[from] InstallError),
    /// `validate` could not listen, or the redirect does not work.
    #[error(transparent)]
    Validate(#[from] ValidateError),
}

impl Error {
    /// What this failure means to the caller.
    pub fn outcome(&self) -> Outcome {
        match self {
            Error::Engine { source, .. } => source.outcome(),
            Error::Netns(e) => netns_outcome(e),
            Error::Config(_) | Error::InvalidFlag { .. } => Outcome::InvalidInput,
            Error::Drift(_) => Outcome::Drift,
            Error::Install(_) => Outcome::Node,
            // A port already taken is the caller's problem, not a missing redirect.
            Error::Validate(ValidateError::Listen { .. }) => Outcome::InvalidInput,
            Error::Validate(_) => Outcome::NotRedirected,
        }
    }

    /// The command line's exit code.
    pub fn exit_code(&self) -> u8 {
        self.outcome().exit_code()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Outcome; 8] = [
        Outcome::Drift,
        Outcome::InvalidInput,
        Outcome::Namespace,
        Outcome::Refused,
        Outcome::Node,
        Outcome::PermissionDenied,
        Outcome::KernelIo,
        Outcome::NotRedirected,
    ];

    /// `| exit | CNI |` rows of the README's exit-code table.
    fn readme_rows() -> Vec<(u8, Option<u32>)> {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
            .expect("README.md");
        let start = readme
            .find("| exit | CNI | meaning |")
            .expect("the exit-code table");
        readme[start..]
            .lines()
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                (
                    cells[1].parse().expect("an exit code"),
                    cells[2].parse().ok(),
                )
            })
            .filter(|(exit, _)| *exit != 0)
            .collect()
    }

    #[test]
    fn the_readme_lists_exactly_these_exit_and_cni_codes() {
        let mut ours: Vec<(u8, Option<u32>)> =
            ALL.iter().map(|o| (o.exit_code(), o.cni_code())).collect();
        ours.sort();
        assert_eq!(readme_rows(), ours);
    }

    #[test]
    fn exit_codes_are_distinct_and_permission_is_not_refusal() {
        let mut codes: Vec<u8> = ALL.iter().map(|o| o.exit_code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), ALL.len());
        let denied = std::io::Error::from_raw_os_error(libc::EPERM);
        let e = EngineError::Route {
            object: "ip rule fwmark 1337 lookup 133".into(),
            op: RouteOp::Add,
            source: denied,
        };
        assert_eq!(e.outcome(), Outcome::PermissionDenied);
        let refused = EngineError::Route {
            object: "x".into(),
            op: RouteOp::Add,
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        };
        assert_eq!(refused.outcome(), Outcome::Refused);
        let unread = EngineError::Route {
            object: "x".into(),
            op: RouteOp::Read,
            source: std::io::Error::from_raw_os_error(libc::EIO),
        };
        assert_eq!(unread.outcome(), Outcome::KernelIo);
    }
}
