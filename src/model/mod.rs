//! The backend-neutral rule model: the one place where Istio's capture semantics live.
//!
//! [`build`] turns a validated [`Config`](crate::config::Config) into a [`Plan`]: Istio's rules
//! in Istio's emission order (`docs/istio-semantics.md` §4.2 for iptables, §5.2 for nftables),
//! each with its table, chain, address family, matches, action and position (append, or insert
//! at an index). Backends never decide what a rule means; they only lower it:
//!
//! * the nftables backend lowers a rule to expressions (`oifname "lo" meta l4proto tcp
//!   ip daddr != 127.0.0.1 tcp dport != 15008 meta skuid 1337 counter jump istio-in-redirect`);
//! * the iptables-legacy backend lowers the same rule to an `ipt_entry` with `owner` match.
//!
//! Istio's two generators differ in a few places (drop-invalid is TCP-only in nftables, the
//! DNS jump is emitted once instead of per family, inserts degrade to appends); those
//! differences are a [`Flavor`] of the build, decided here and nowhere else.

mod build;
mod order;

pub use build::build;
pub use order::ResolvedChain;

use crate::config::{Cidr, IfName};

/// Which of Istio's two generators the plan reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `tools/istio-nftables`: one `inet` table per kind, both families in one chain.
    Nftables,
    /// `tools/istio-iptables`: separate IPv4 and IPv6 tables.
    Iptables,
}

/// The netfilter table a rule lives in (Istio's iptables table names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// `nat`: REDIRECT and the capture decisions.
    Nat,
    /// `mangle`: TPROXY, marks and drop-invalid.
    Mangle,
    /// `raw`: DNS conntrack zones.
    Raw,
}

impl Table {
    /// The order Istio's nftables transaction processes tables in.
    pub const ALL: [Table; 3] = [Table::Nat, Table::Mangle, Table::Raw];

    /// The iptables table name.
    pub fn iptables_name(self) -> &'static str {
        match self {
            Table::Nat => "nat",
            Table::Mangle => "mangle",
            Table::Raw => "raw",
        }
    }

    /// The `inet` table Istio's nftables backend (and ours) owns.
    pub fn nft_name(self) -> &'static str {
        match self {
            Table::Nat => "istio-proxy-nat",
            Table::Mangle => "istio-proxy-mangle",
            Table::Raw => "istio-proxy-raw",
        }
    }

    /// The chains of this table in the order Istio declares them (`docs/istio-semantics.md`
    /// §5.1); nftables lists chains in creation order, so this order is visible in `nft list
    /// ruleset`.
    #[rustfmt::skip] // one line per table reads as the spec's table
    pub fn chain_order(self) -> &'static [Chain] {
        use Chain::*;
        match self {
            Table::Nat => &[
                Prerouting, Output, Inbound, Redirect, InRedirect, IstioOutput, OutputDns,
            ],
            Table::Mangle => &[Prerouting, Output, Divert, Tproxy, Inbound, Drop],
            Table::Raw => &[Prerouting, Output, Inbound, OutputDns],
        }
    }
}

/// A chain, built-in (hooked) or Istio's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Chain {
    /// The built-in `PREROUTING` (`prerouting` base chain).
    Prerouting,
    /// The built-in `OUTPUT` (`output` base chain).
    Output,
    /// `ISTIO_INBOUND`: which inbound traffic is captured.
    Inbound,
    /// `ISTIO_REDIRECT`: to Envoy's outbound listener.
    Redirect,
    /// `ISTIO_IN_REDIRECT`: to Envoy's inbound listener.
    InRedirect,
    /// `ISTIO_OUTPUT`: which outbound traffic is captured.
    IstioOutput,
    /// `ISTIO_OUTPUT_DNS`: DNS redirection and conntrack zones.
    OutputDns,
    /// `ISTIO_DIVERT`: marks established TPROXY flows.
    Divert,
    /// `ISTIO_TPROXY`: the TPROXY rule.
    Tproxy,
    /// `ISTIO_DROP`: drops conntrack-INVALID packets.
    Drop,
}

/// The kind of a base chain, with its hook and priority (`docs/istio-semantics.md` §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseChain {
    /// The chain type.
    pub kind: ChainKind,
    /// Where it is hooked.
    pub hook: Hook,
    /// Its priority (nft's named priorities: raw −300, mangle −150, dstnat −100).
    pub priority: i32,
}

/// The nftables type of a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainKind {
    /// `type filter`.
    Filter,
    /// `type nat`.
    Nat,
    /// `type route` (re-routes when the mark changes).
    Route,
}

impl ChainKind {
    /// The nftables type name.
    pub fn name(self) -> &'static str {
        match self {
            ChainKind::Filter => "filter",
            ChainKind::Nat => "nat",
            ChainKind::Route => "route",
        }
    }
}

/// The netfilter hook of a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `hook prerouting`.
    Prerouting,
    /// `hook output`.
    Output,
}

impl Hook {
    /// The nftables hook name.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Prerouting => "prerouting",
            Hook::Output => "output",
        }
    }
}

impl Chain {
    /// Whether this is a built-in (hooked) chain.
    pub fn is_builtin(self) -> bool {
        matches!(self, Chain::Prerouting | Chain::Output)
    }

    /// The nftables chain name.
    pub fn nft_name(self) -> &'static str {
        match self {
            Chain::Prerouting => "prerouting",
            Chain::Output => "output",
            Chain::Inbound => "istio-inbound",
            Chain::Redirect => "istio-redirect",
            Chain::InRedirect => "istio-in-redirect",
            Chain::IstioOutput => "istio-output",
            Chain::OutputDns => "istio-output-dns",
            Chain::Divert => "istio-divert",
            Chain::Tproxy => "istio-tproxy",
            Chain::Drop => "istio-drop",
        }
    }

    /// The iptables chain name.
    pub fn iptables_name(self) -> &'static str {
        match self {
            Chain::Prerouting => "PREROUTING",
            Chain::Output => "OUTPUT",
            Chain::Inbound => "ISTIO_INBOUND",
            Chain::Redirect => "ISTIO_REDIRECT",
            Chain::InRedirect => "ISTIO_IN_REDIRECT",
            Chain::IstioOutput => "ISTIO_OUTPUT",
            Chain::OutputDns => "ISTIO_OUTPUT_DNS",
            Chain::Divert => "ISTIO_DIVERT",
            Chain::Tproxy => "ISTIO_TPROXY",
            Chain::Drop => "ISTIO_DROP",
        }
    }

    /// Hook, type and priority of the nftables base chain, `None` for regular chains.
    /// Priorities are nft's named ones: raw −300, mangle −150, dstnat −100.
    pub fn base(self, table: Table) -> Option<BaseChain> {
        let hook = match self {
            Chain::Prerouting => Hook::Prerouting,
            Chain::Output => Hook::Output,
            _ => return None,
        };
        let (kind, priority) = match (table, hook) {
            (Table::Nat, _) => (ChainKind::Nat, -100),
            (Table::Mangle, Hook::Prerouting) => (ChainKind::Filter, -150),
            (Table::Mangle, Hook::Output) => (ChainKind::Route, -150),
            (Table::Raw, _) => (ChainKind::Filter, -300),
        };
        Some(BaseChain {
            kind,
            hook,
            priority,
        })
    }
}

/// Which address family a rule applies to. `Any` rules carry no address match: nftables
/// emits them once in the `inet` chain, iptables into both families (IPv6 only when enabled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// Both families (no address match).
    Any,
    /// IPv4 only.
    V4,
    /// IPv6 only (dropped when IPv6 is not enabled).
    V6,
}

/// A transport protocol Istio matches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// The name nft and iptables use.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

/// Connection-tracking states Istio matches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtState {
    /// `ct state invalid`.
    Invalid,
    /// `ct state related,established`.
    RelatedEstablished,
}

/// An owner group id with the spelling Istio prints (`skgid java`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupId {
    /// The numeric id the kernel compares.
    pub gid: u32,
    /// The name or number as the user wrote it.
    pub spelling: String,
}

/// One condition of a rule. The order of a rule's matches is the order Istio writes them
/// in its nftables rules; it is also the order of the kernel expressions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// `iifname X`: arrived through this interface.
    InIface(IfName),
    /// `oifname X`: leaves through this interface.
    OutIface(IfName),
    /// An explicit `meta l4proto tcp` (port matches carry their own implicit one).
    L4Proto(Proto),
    /// Destination port equal to one of `ports` (a set when more than one), or to none of them.
    DPort {
        /// The transport protocol.
        proto: Proto,
        /// The ports.
        ports: Vec<u16>,
        /// None of the ports.
        negate: bool,
    },
    /// Source port equal to `port`.
    SPort {
        /// The transport protocol.
        proto: Proto,
        /// The port.
        port: u16,
    },
    /// Source address within `cidr` (or not).
    SAddr {
        /// The prefix.
        cidr: Cidr,
        /// Outside the prefix.
        negate: bool,
    },
    /// Destination address within `cidr` (or not).
    DAddr {
        /// The prefix.
        cidr: Cidr,
        /// Outside the prefix.
        negate: bool,
    },
    /// The socket's owner uid (`meta skuid`).
    SkUid {
        /// The uid.
        uid: u32,
        /// Any other uid.
        negate: bool,
    },
    /// The socket's owner gid (`meta skgid`).
    SkGid {
        /// The group.
        group: GroupId,
        /// Any other group.
        negate: bool,
    },
    /// A conntrack state.
    CtState(CtState),
    /// The packet mark (`meta mark`).
    Mark {
        /// The mark.
        mark: u32,
        /// Any other mark.
        negate: bool,
    },
    /// The connection mark (`ct mark`).
    CtMark(u32),
}

/// What a rule does when every match holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Leave this chain.
    Return,
    /// Accept the packet.
    Accept,
    /// Drop the packet.
    Drop,
    /// Continue in one of Istio's chains.
    Jump(Chain),
    /// nat REDIRECT to a local port.
    Redirect {
        /// The local port.
        port: u16,
    },
    /// mangle TPROXY to `port`, marking the packet with `mark`.
    Tproxy {
        /// The local port.
        port: u16,
        /// The mark set on the packet.
        mark: u32,
    },
    /// `meta mark set N` / `MARK --set-mark N`.
    SetMark(u32),
    /// `ct mark set mark` / `CONNMARK --save-mark`.
    SaveMarkToConntrack,
    /// `meta mark set ct mark` / `CONNMARK --restore-mark`.
    RestoreMarkFromConntrack,
    /// raw `ct zone set N` / `CT --zone N`.
    CtZone(u16),
}

/// One rule: its family, its conditions in order, its action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The address family it applies to.
    pub family: Family,
    /// Conditions, in Istio's order.
    pub matches: Vec<Match>,
    /// What it does.
    pub action: Action,
}

/// Where a step puts its rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// At the end of the chain.
    Append,
    /// Insert before the rule at this 0-based index of the chain as built so far.
    Insert(usize),
}

/// One rule emission, in the generator's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The table of the chain.
    pub table: Table,
    /// The chain the rule goes into.
    pub chain: Chain,
    /// Appended or inserted.
    pub position: Position,
    /// The rule.
    pub rule: Rule,
}

/// Istio's rule set for one configuration, as the ordered list of emissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Which generator it reproduces.
    pub flavor: Flavor,
    /// Whether IPv6 rules are part of it.
    pub enable_ipv6: bool,
    /// The emissions, in Istio's order.
    pub steps: Vec<Step>,
}

impl Plan {
    /// Tables that hold at least one rule, in Istio's order (nat, mangle, raw).
    pub fn tables(&self) -> Vec<Table> {
        Table::ALL
            .into_iter()
            .filter(|t| self.steps.iter().any(|s| s.table == *t))
            .collect()
    }

    /// Chains of `table` that hold at least one rule, in declaration order.
    pub fn chains(&self, table: Table) -> Vec<Chain> {
        table
            .chain_order()
            .iter()
            .copied()
            .filter(|c| self.steps.iter().any(|s| s.table == table && s.chain == *c))
            .collect()
    }

    /// How many rules the plan emits.
    pub fn rule_count(&self) -> usize {
        self.steps.len()
    }
}
