//! The iptables-legacy compatibility backend: the model lowered to xtables entries and
//! written per table through the kernel's xtables socket interface, no iptables binary and
//! no `/run/xtables.lock` involved.

pub mod abi;
pub mod apply;
pub mod lower;
pub mod merge;
pub mod render;
pub mod socket;
pub mod table;
