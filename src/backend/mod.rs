//! The two ways of programming the rule model into a namespace, behind one trait: the
//! engine chooses a [`RedirectBackend`] and calls it, and each backend only lowers the
//! model ([`crate::model::Plan`]) and reads it back.
//!
//! | backend | writes | reads back |
//! |---|---|---|
//! | [`nftables::Nftables`] | one nf_tables batch: `table inet istio-proxy-nat { … }` & co | dumps, decoded to the same expressions, diffed |
//! | [`iptables::IptablesLegacy`] | one `IPT_SO_SET_REPLACE` per table and family, Istio's `ISTIO_*` chains | the tables, our part compared rule by rule |

pub mod iptables;
pub mod nftables;

use crate::model::{Flavor, Plan};
use crate::nft::socket::NetlinkError;
use crate::xt::apply::XtError;
use thiserror::Error;

/// A concrete backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Native nf_tables over netlink.
    Nftables,
    /// Legacy xtables over its socket options.
    IptablesLegacy,
}

impl Backend {
    /// The name users give and logs show (`nftables`, `iptables-legacy`).
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nftables => "nftables",
            Backend::IptablesLegacy => "iptables-legacy",
        }
    }

    /// Which of Istio's two generators the model follows for this backend.
    pub fn flavor(self) -> Flavor {
        match self {
            Backend::Nftables => Flavor::Nftables,
            Backend::IptablesLegacy => Flavor::Iptables,
        }
    }
}

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// Always nf_tables.
    Nftables,
    /// Always legacy xtables.
    IptablesLegacy,
    /// Decide from what the namespace already holds (`crate::engine`).
    #[default]
    Auto,
}

/// A backend's failure.
#[derive(Debug, Error)]
pub enum BackendError {
    /// nf_tables refused the batch or could not be read.
    #[error(transparent)]
    Nftables(#[from] NetlinkError),
    /// A legacy table could not be read or written.
    #[error(transparent)]
    Xtables(#[from] XtError),
}

/// What an apply did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Tables, chains, sets and rules created (nftables) or rules written (iptables-legacy).
    pub objects: usize,
    /// Netlink messages in the batch (nftables) or tables replaced (iptables-legacy).
    pub messages: usize,
    /// Whether rules of ours were replaced (rather than created fresh).
    pub replaced: bool,
    /// iptables-legacy: table writes retried because another writer changed the table.
    pub retries: usize,
}

/// What a remove deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    /// The tables deleted (nftables: `inet istio-proxy-nat`) or cleaned (iptables-legacy).
    pub tables: Vec<String>,
}

/// One way of programming the model into the namespace the backend was opened in.
pub trait RedirectBackend {
    /// Which backend this is.
    fn kind(&self) -> Backend;
    /// Whether rules of ours are in place (anything that `remove` would delete).
    fn exists(&mut self) -> Result<bool, BackendError>;
    /// Programs the plan, all or nothing; leaves the kernel alone when it already matches.
    fn apply(&mut self, plan: &Plan) -> Result<Applied, BackendError>;
    /// Every difference between the kernel and the plan, one readable line each.
    fn verify(&mut self, plan: &Plan) -> Result<Vec<String>, BackendError>;
    /// Deletes what is ours, nothing else; nothing to delete is success.
    fn remove(&mut self, plan: &Plan) -> Result<Removed, BackendError>;
}
