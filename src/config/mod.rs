//! The validated redirect configuration: every knob of Istio's sidecar capture
//! (`docs/istio-semantics.md` §2–3), typed.
//!
//! A [`Config`] can only be built through [`RawConfig::validate`], so the rule model never
//! sees a port that is not a number, a CIDR of the wrong family or an interface name the
//! kernel would refuse. Values keep the spelling the user gave where Istio prints them back
//! verbatim (CIDRs keep their host bits, `127.0.0.1/8` stays `127.0.0.1/8`; owner groups
//! keep their names), because the rendered transaction must read like Istio's.

mod error;
mod groups;
pub mod knobs;
pub mod parse;
mod raw;

pub use error::ConfigError;
pub use groups::{GroupDatabase, GroupFile, HostGroups};
pub use parse::{Cidr, IfName};
pub use raw::{RawConfig, Setting};

/// `-m`: how inbound traffic reaches the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InterceptionMode {
    /// nat `REDIRECT`: the proxy sees the connection as addressed to itself.
    #[default]
    Redirect,
    /// mangle `TPROXY`: the original destination is preserved, with policy routing.
    Tproxy,
}

/// `-b` / `-d`: which inbound TCP ports are captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundPorts {
    /// `-b ""`: no inbound capture at all.
    None,
    /// `-b '*'`: every port except `exclude` (the only case where `-d` matters).
    All {
        /// `-d`: the ports not captured.
        exclude: Vec<u16>,
    },
    /// `-b 80,443`: only these ports.
    Only(Vec<u16>),
}

/// `-i`: which outbound destinations are captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundRanges {
    /// `-i '*'`: every destination (both families).
    All,
    /// `-i 10.0.0.0/8,fd00::/8`: only these ranges; an empty list captures nothing.
    Only {
        /// The IPv4 ranges, in the order given.
        v4: Vec<Cidr>,
        /// The IPv6 ranges, in the order given.
        v6: Vec<Cidr>,
    },
}

impl OutboundRanges {
    /// Istio drops the app→app loopback RETURN rules when an included range is loopback.
    pub fn includes_loopback(&self) -> bool {
        match self {
            OutboundRanges::All => false,
            OutboundRanges::Only { v4, v6 } => v4.iter().chain(v6).any(|c| c.addr.is_loopback()),
        }
    }
}

/// An owner group: the name as the user wrote it (printed back) and its numeric id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The name or number as written (`java`, `202`).
    pub spelling: String,
    /// The numeric group id.
    pub gid: u32,
}

/// `ISTIO_OUTBOUND_OWNER_GROUPS` / `..._EXCLUDE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerGroups {
    /// include `*`: capture every group except these.
    AllExcept(Vec<Group>),
    /// include list: capture only these groups.
    Only(Vec<Group>),
}

/// DNS capture after Istio's gate (`docs/istio-semantics.md` §3.5): `Off` when disabled or when
/// it would capture nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsCapture {
    /// No DNS capture.
    Off,
    /// `--capture-all-dns`: every destination on port 53.
    All,
    /// Only the listed resolvers, as host prefixes (`/32`, `/128`) keeping the user's spelling.
    Servers {
        /// `--dns-servers-v4`.
        v4: Vec<Cidr>,
        /// `--dns-servers-v6`.
        v6: Vec<Cidr>,
    },
}

/// The validated configuration the rule model is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `-p`: Envoy's outbound listener.
    pub proxy_port: u16,
    /// `-z`: Envoy's inbound listener.
    pub inbound_capture_port: u16,
    /// `-e`: the HBONE port, never redirected.
    pub inbound_tunnel_port: u16,
    /// `-u`: the proxy's uids (at least one).
    pub proxy_uids: Vec<u32>,
    /// `-g`: the proxy's gids (at least one; the uids by default).
    pub proxy_gids: Vec<u32>,
    /// `-m`: REDIRECT or TPROXY.
    pub interception: InterceptionMode,
    /// `-t`: the TPROXY mark (not 0).
    pub tproxy_mark: u32,
    /// `-r`: the TPROXY routing table (not reserved).
    pub tproxy_route_table: u32,
    /// `-b` with `-d`.
    pub inbound_ports: InboundPorts,
    /// `-q`: TCP ports always captured.
    pub outbound_ports_include: Vec<u16>,
    /// `-o`: TCP/UDP ports never captured.
    pub outbound_ports_exclude: Vec<u16>,
    /// `-i`.
    pub outbound_ranges_include: OutboundRanges,
    /// `-x`, its IPv4 ranges.
    pub outbound_ranges_exclude_v4: Vec<Cidr>,
    /// `-x`, its IPv6 ranges.
    pub outbound_ranges_exclude_v6: Vec<Cidr>,
    /// `-k`: inbound on these is treated as outbound.
    pub reroute_interfaces: Vec<IfName>,
    /// `-c`: never captured.
    pub exclude_interfaces: Vec<IfName>,
    /// `--redirect-dns`, `--capture-all-dns` and the resolvers, after Istio's gate.
    pub dns: DnsCapture,
    /// `--drop-invalid`.
    pub drop_invalid: bool,
    /// `--ipv6`.
    pub enable_ipv6: bool,
    /// `ISTIO_OUTBOUND_OWNER_GROUPS` / `..._EXCLUDE`.
    pub owner_groups: OwnerGroups,
    /// `ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR`: what counts as IPv4 localhost.
    pub host_ipv4_loopback: Cidr,
}

impl Config {
    /// Whether inbound interception is TPROXY.
    pub fn is_tproxy(&self) -> bool {
        self.interception == InterceptionMode::Tproxy
    }

    /// Whether TPROXY policy routing (fwmark rule + local route, `docs/istio-semantics.md` §6)
    /// is part of the apply.
    pub fn needs_tproxy_routes(&self) -> bool {
        self.is_tproxy() && self.inbound_ports != InboundPorts::None
    }
}
