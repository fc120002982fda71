//! What the engine's unit tests share: backend choices, configurations from flags, and a
//! look at the fake kernel's legacy tables.

use super::*;
use crate::cli::raw_config;
use crate::config::GroupFile;
use crate::kernel::fake::FakeKernel;
use crate::xt::abi::IPV4;

pub const NFT: BackendChoice = BackendChoice::Nftables;
pub const LEGACY: BackendChoice = BackendChoice::IptablesLegacy;
pub const AUTO: BackendChoice = BackendChoice::Auto;

/// A validated configuration from command-line flags.
pub fn cfg(flags: &[&str]) -> Config {
    raw_config(flags, &|_| None)
        .expect("flags parse")
        .validate(&GroupFile::default())
        .expect("flags are valid")
}

/// Istio's defaults.
pub fn default_cfg() -> Config {
    cfg(&[])
}

/// TPROXY with IPv6: policy routing and `::6` besides the rules.
pub fn tproxy_v6() -> Config {
    cfg(&["-m", "TPROXY", "--ipv6=true"])
}

/// Whether the fake kernel's IPv4 legacy nat table holds chains of ours.
pub fn legacy_has_ours(k: &FakeKernel) -> bool {
    k.state()
        .xt
        .table(IPV4, "nat")
        .is_some_and(|t| t.chains.iter().any(|c| c.name.starts_with("ISTIO_")))
}
