//! Istio's rule generator, step by step (`docs/istio-semantics.md` §4.2; nftables forms
//! §5.2): one `step_…` method per step, called in that document's order by
//! [`Builder::build`]. Step numbers in the comments are its numbers. The nftables rule text
//! each step produces is shown next to it; the iptables form is in the document.

use super::*;
use crate::config::{Config, DnsCapture, Group, InboundPorts, OutboundRanges, OwnerGroups};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Envoy's DNS listener (Istio's `constants.IstioAgentDNSListenerPort`).
pub const DNS_PROXY_PORT: u16 = 15053;
/// Mark Envoy's outbound loopback traffic carries in TPROXY mode (`constants.OutboundMark`).
pub const OUTBOUND_MARK: u32 = 1338;
/// Source Envoy binds for inbound passthrough (IPv4).
pub const INBOUND_PASSTHROUGH_V4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
/// Source Envoy binds for inbound passthrough (IPv6).
pub const INBOUND_PASSTHROUGH_V6: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6);

/// The plan under construction: the configuration, the generator reproduced, the emissions.
struct Builder<'c> {
    cfg: &'c Config,
    flavor: Flavor,
    steps: Vec<Step>,
}

/// DNS resolvers to capture, each with its family (IPv4 ones first).
type Servers = Vec<(Family, Cidr)>;

/// The loopback interface.
fn loopback_if() -> IfName {
    IfName::parse("", "lo").expect("lo is a valid name")
}

/// Leaving through `lo`.
fn out_lo() -> Match {
    Match::OutIface(loopback_if())
}

/// Arriving through `lo`.
fn in_lo() -> Match {
    Match::InIface(loopback_if())
}

/// A single-host prefix.
fn host(addr: impl Into<IpAddr>) -> Cidr {
    Cidr::host(addr.into())
}

/// `::1/128`.
fn loopback_v6() -> Cidr {
    host(Ipv6Addr::LOCALHOST)
}

/// TCP destination port in `ports` (or in none of them).
fn tcp_dport(ports: Vec<u16>, negate: bool) -> Match {
    Match::DPort {
        proto: Proto::Tcp,
        ports,
        negate,
    }
}

/// Destination port `port` of `proto`.
fn dport(proto: Proto, port: u16) -> Match {
    Match::DPort {
        proto,
        ports: vec![port],
        negate: false,
    }
}

/// UDP source port `port`.
fn udp_sport(port: u16) -> Match {
    Match::SPort {
        proto: Proto::Udp,
        port,
    }
}

/// Source address within `cidr`.
fn saddr(cidr: Cidr) -> Match {
    Match::SAddr {
        cidr,
        negate: false,
    }
}

/// Destination address within `cidr`.
fn daddr(cidr: Cidr) -> Match {
    Match::DAddr {
        cidr,
        negate: false,
    }
}

/// Any destination but `cidr` (`ip daddr != 127.0.0.1/32`).
fn daddr_not(cidr: Cidr) -> Match {
    Match::DAddr { cidr, negate: true }
}

/// An explicit `meta l4proto tcp`.
fn tcp() -> Match {
    Match::L4Proto(Proto::Tcp)
}

/// Packet mark `mark` (or any other).
fn mark_is(mark: u32, negate: bool) -> Match {
    Match::Mark { mark, negate }
}

/// A gid owner match, spelled as the number.
fn skgid(gid: u32, negate: bool) -> Match {
    let group = GroupId {
        gid,
        spelling: gid.to_string(),
    };
    Match::SkGid { group, negate }
}

/// An owner group match, spelled as the user wrote it.
fn owner_group(g: &Group, negate: bool) -> Match {
    let group = GroupId {
        gid: g.gid,
        spelling: g.spelling.clone(),
    };
    Match::SkGid { group, negate }
}

/// The same owner match, negated (`skuid != 1337`).
fn negated(owner: &Match) -> Match {
    match owner.clone() {
        Match::SkUid { uid, .. } => Match::SkUid { uid, negate: true },
        Match::SkGid { group, .. } => Match::SkGid {
            group,
            negate: true,
        },
        other => unreachable!("not an owner match: {other:?}"),
    }
}

/// The family of an address prefix.
fn family_of(c: &Cidr) -> Family {
    if c.is_v4() {
        Family::V4
    } else {
        Family::V6
    }
}

impl<'c> Builder<'c> {
    /// Emits a rule at `position`; IPv6-only rules only when IPv6 is enabled.
    fn push(
        &mut self,
        table: Table,
        chain: Chain,
        position: Position,
        family: Family,
        matches: Vec<Match>,
        action: Action,
    ) {
        if family == Family::V6 && !self.cfg.enable_ipv6 {
            return;
        }
        self.steps.push(Step {
            table,
            chain,
            position,
            rule: Rule {
                family,
                matches,
                action,
            },
        });
    }

    /// Emits a rule at the end of `chain`.
    fn append(
        &mut self,
        table: Table,
        chain: Chain,
        family: Family,
        matches: Vec<Match>,
        action: Action,
    ) {
        self.push(table, chain, Position::Append, family, matches, action);
    }

    /// Istio's `AppendVersionedRule`: the same rule for IPv4 and (when enabled) IPv6, with
    /// a family-specific address, emitted together so they stay adjacent.
    fn append_versioned(
        &mut self,
        table: Table,
        chain: Chain,
        v4: Cidr,
        v6: Cidr,
        make: impl Fn(Cidr) -> (Vec<Match>, Action),
    ) {
        let (m, a) = make(v4);
        self.append(table, chain, Family::V4, m, a);
        let (m, a) = make(v6);
        self.append(table, chain, Family::V6, m, a);
    }

    /// [`Self::append_versioned`] with the configured localhost prefix and `::1/128`.
    fn append_per_loopback(
        &mut self,
        table: Table,
        chain: Chain,
        make: impl Fn(Cidr) -> (Vec<Match>, Action),
    ) {
        let lo4 = self.cfg.host_ipv4_loopback.clone();
        self.append_versioned(table, chain, lo4, loopback_v6(), make);
    }

    /// One nat `istio-output` rule for every family.
    fn output_rule(&mut self, matches: Vec<Match>, action: Action) {
        self.append(Table::Nat, Chain::IstioOutput, Family::Any, matches, action);
    }

    /// The proxy's owner matches: each uid, then each gid.
    fn proxy_owners(&self) -> Vec<Match> {
        let uids = self.cfg.proxy_uids.iter();
        let gids = self.cfg.proxy_gids.iter();
        uids.map(|&uid| Match::SkUid { uid, negate: false })
            .chain(gids.map(|&gid| skgid(gid, false)))
            .collect()
    }

    /// Whether DNS is captured (after Istio's gate).
    fn dns_on(&self) -> bool {
        self.cfg.dns != DnsCapture::Off
    }

    /// Every step, in Istio's order (`docs/istio-semantics.md` §4.2).
    fn build(mut self) -> Plan {
        self.step_exclude_interfaces(); // 1
        self.step_virtual_interfaces(); // 2
        self.step_drop_invalid(); // 3
        self.step_redirect_chains(); // 4–6
        self.step_inbound(); // 7
        self.step_output_jump(); // 8
        self.step_outbound_ports_exclude(); // 9
        self.step_inbound_passthrough(); // 10
        self.step_proxy_owners(); // 11–12
        self.step_owner_groups(); // 13
        self.step_dns(); // 14
        self.step_localhost(); // 15
        self.step_excluded_destinations(); // 16
        self.step_outbound_ports_include(); // 17
        self.step_outbound_include(); // 18
        self.step_tproxy_extras(); // 19
        Plan {
            flavor: self.flavor,
            enable_ipv6: self.cfg.enable_ipv6,
            steps: self.steps,
        }
    }

    /// 1. Exclude interfaces: `iifname X counter return` / `oifname X counter return`, in
    ///    nat and, with TPROXY, in mangle.
    fn step_exclude_interfaces(&mut self) {
        let cfg = self.cfg;
        let tables: &[Table] = if cfg.is_tproxy() {
            &[Table::Nat, Table::Mangle]
        } else {
            &[Table::Nat]
        };
        for &table in tables {
            for i in &cfg.exclude_interfaces {
                let (inbound, outbound) = (Match::InIface(i.clone()), Match::OutIface(i.clone()));
                self.append(
                    table,
                    Chain::Prerouting,
                    Family::Any,
                    vec![inbound],
                    Action::Return,
                );
                self.append(
                    table,
                    Chain::Output,
                    Family::Any,
                    vec![outbound],
                    Action::Return,
                );
            }
        }
    }

    /// 2. Virtual interfaces short-circuit: `insert … index 0 iifname K counter return`.
    fn step_virtual_interfaces(&mut self) {
        for k in &self.cfg.reroute_interfaces {
            self.push(
                Table::Nat,
                Chain::Prerouting,
                Position::Insert(0),
                Family::Any,
                vec![Match::InIface(k.clone())],
                Action::Return,
            );
        }
    }

    /// 3. Drop invalid: `meta l4proto tcp ct state invalid counter jump istio-drop` (the
    ///    nftables generator matches TCP only; iptables matches every protocol).
    fn step_drop_invalid(&mut self) {
        if !self.cfg.drop_invalid {
            return;
        }
        let mut m = vec![Match::CtState(CtState::Invalid)];
        if self.flavor == Flavor::Nftables {
            m.insert(0, tcp());
        }
        let (mangle, any) = (Table::Mangle, Family::Any);
        self.append(mangle, Chain::Prerouting, any, m, Action::Jump(Chain::Drop));
        self.append(mangle, Chain::Drop, any, vec![], Action::Drop);
    }

    /// 4–6. `meta l4proto tcp tcp dport 15008 counter return`, the two redirect chains.
    fn step_redirect_chains(&mut self) {
        let cfg = self.cfg;
        let tunnel = vec![tcp(), tcp_dport(vec![cfg.inbound_tunnel_port], false)];
        let (nat, any) = (Table::Nat, Family::Any);
        self.append(nat, Chain::Inbound, any, tunnel, Action::Return);
        let outbound = Action::Redirect {
            port: cfg.proxy_port,
        };
        self.append(nat, Chain::Redirect, any, vec![tcp()], outbound);
        let inbound = Action::Redirect {
            port: cfg.inbound_capture_port,
        };
        self.append(nat, Chain::InRedirect, any, vec![tcp()], inbound);
    }

    /// 7. Inbound capture (unless `-b ''`): the TPROXY chains, the jump from prerouting,
    ///    then the excluded ports and the capture, or the listed ports.
    fn step_inbound(&mut self) {
        let cfg = self.cfg;
        let table = match (&cfg.inbound_ports, cfg.is_tproxy()) {
            (InboundPorts::None, _) => return,
            (_, true) => {
                self.tproxy_chains();
                Table::Mangle
            }
            (_, false) => Table::Nat,
        };
        // `prerouting meta l4proto tcp counter jump istio-inbound`
        let to_inbound = Action::Jump(Chain::Inbound);
        self.append(
            table,
            Chain::Prerouting,
            Family::Any,
            vec![tcp()],
            to_inbound,
        );
        match &cfg.inbound_ports {
            InboundPorts::None => unreachable!("checked above"),
            InboundPorts::All { exclude } => {
                for &p in exclude {
                    let m = vec![tcp(), tcp_dport(vec![p], false)];
                    self.append(table, Chain::Inbound, Family::Any, m, Action::Return);
                }
                self.inbound_capture(None);
            }
            InboundPorts::Only(ports) => {
                for &p in ports {
                    self.inbound_capture(Some(p));
                }
            }
        }
    }

    /// Step 7, TPROXY: `istio-divert`: `counter meta mark set 1337`, `counter accept`;
    /// `istio-tproxy`: `meta l4proto tcp ip daddr != 127.0.0.1/32 tproxy ip to :15006
    /// meta mark set 1337 counter accept`.
    fn tproxy_chains(&mut self) {
        let cfg = self.cfg;
        let mark = cfg.tproxy_mark;
        let (mangle, any) = (Table::Mangle, Family::Any);
        self.append(mangle, Chain::Divert, any, vec![], Action::SetMark(mark));
        self.append(mangle, Chain::Divert, any, vec![], Action::Accept);
        let port = cfg.inbound_capture_port;
        self.append_per_loopback(Table::Mangle, Chain::Tproxy, |lo| {
            let m = vec![tcp(), daddr_not(lo)];
            (m, Action::Tproxy { port, mark })
        });
    }

    /// Step 7: capture inbound TCP (to `port`, or to any port): established flows to
    /// `istio-divert` and the rest to `istio-tproxy` with TPROXY, else `istio-in-redirect`.
    fn inbound_capture(&mut self, port: Option<u16>) {
        let dport = port.map(|p| tcp_dport(vec![p], false));
        let with_port = |mut m: Vec<Match>| {
            m.extend(dport.clone());
            m
        };
        let any = Family::Any;
        if self.cfg.is_tproxy() {
            let established = Match::CtState(CtState::RelatedEstablished);
            let m = with_port(vec![tcp(), established]);
            self.append(
                Table::Mangle,
                Chain::Inbound,
                any,
                m,
                Action::Jump(Chain::Divert),
            );
            let m = with_port(vec![tcp()]);
            self.append(
                Table::Mangle,
                Chain::Inbound,
                any,
                m,
                Action::Jump(Chain::Tproxy),
            );
        } else {
            let m = with_port(vec![tcp()]);
            let action = Action::Jump(Chain::InRedirect);
            self.append(Table::Nat, Chain::Inbound, any, m, action);
        }
    }

    /// 8. `output counter jump istio-output` (every protocol).
    fn step_output_jump(&mut self) {
        let to_output = Action::Jump(Chain::IstioOutput);
        self.append(Table::Nat, Chain::Output, Family::Any, vec![], to_output);
    }

    /// 9. `tcp dport P counter return`, `udp dport P counter return`.
    fn step_outbound_ports_exclude(&mut self) {
        for &p in &self.cfg.outbound_ports_exclude {
            for proto in [Proto::Tcp, Proto::Udp] {
                self.output_rule(vec![dport(proto, p)], Action::Return);
            }
        }
    }

    /// 10. `oifname lo ip saddr 127.0.0.6/32 counter return`: Envoy's inbound passthrough.
    fn step_inbound_passthrough(&mut self) {
        self.append_versioned(
            Table::Nat,
            Chain::IstioOutput,
            host(INBOUND_PASSTHROUGH_V4),
            host(INBOUND_PASSTHROUGH_V6),
            |six| {
                let m = vec![out_lo(), saddr(six)];
                (m, Action::Return)
            },
        );
    }

    /// 11–12. Per proxy uid, then per proxy gid: three rules each.
    fn step_proxy_owners(&mut self) {
        for owner in self.proxy_owners() {
            self.proxy_owner_rules(owner);
        }
    }

    /// Steps 11–12 for one owner (`skuid 1337` or `skgid 1337`).
    fn proxy_owner_rules(&mut self, is: Match) {
        let cfg = self.cfg;
        let dns_on = self.dns_on();
        let tunnel = cfg.inbound_tunnel_port;
        // `oifname lo meta l4proto tcp ip daddr != 127.0.0.1/32 tcp dport != 15008
        //  skuid 1337 counter jump istio-in-redirect`: Envoy calling its own pod IP goes
        // through the inbound listener. Only the uid form also spares DNS (an Istio quirk).
        let ports = if dns_on && matches!(is, Match::SkUid { .. }) {
            vec![53, tunnel]
        } else {
            vec![tunnel]
        };
        self.append_per_loopback(Table::Nat, Chain::IstioOutput, |lo| {
            let m = vec![
                out_lo(),
                tcp(),
                daddr_not(lo),
                tcp_dport(ports.clone(), true),
                is.clone(),
            ];
            (m, Action::Jump(Chain::InRedirect))
        });
        // `oifname lo skuid != 1337 counter return`: app → app over loopback stays direct.
        if !cfg.outbound_ranges_include.includes_loopback() {
            let is_not = negated(&is);
            let m = if dns_on {
                vec![out_lo(), tcp(), tcp_dport(vec![53], true), is_not]
            } else {
                vec![out_lo(), is_not]
            };
            self.output_rule(m, Action::Return);
        }
        // `skuid 1337 counter return`: the proxy's own traffic escapes.
        self.output_rule(vec![is], Action::Return);
    }

    /// 13. Owner groups: `skgid G counter return` per excluded group, or one rule
    ///     `skgid != G … counter return` for an include list.
    fn step_owner_groups(&mut self) {
        match &self.cfg.owner_groups {
            OwnerGroups::AllExcept(groups) => {
                for g in groups {
                    self.output_rule(vec![owner_group(g, false)], Action::Return);
                }
            }
            OwnerGroups::Only(groups) => {
                let m = groups.iter().map(|g| owner_group(g, true)).collect();
                self.output_rule(m, Action::Return);
            }
        }
    }

    /// 14. DNS (`SetupDNSRedir`): the jumps, the redirects to 15053, the conntrack zones.
    fn step_dns(&mut self) {
        let (all, servers): (bool, Servers) = match &self.cfg.dns {
            DnsCapture::Off => return,
            DnsCapture::All => (true, vec![]),
            DnsCapture::Servers { v4, v6 } => {
                let v4 = v4.iter().map(|a| (Family::V4, a.clone()));
                let v6 = v6.iter().map(|a| (Family::V6, a.clone()));
                (false, v4.chain(v6).collect())
            }
        };
        self.dns_jumps(all, &servers);
        self.dns_redirects(all, &servers);
        self.dns_owner_zones();
        if all {
            self.dns_all_zones();
        } else {
            self.dns_server_zones(&servers);
        }
    }

    /// Step 14: raw `output counter jump istio-output-dns`; nat `istio-output counter jump
    /// istio-output-dns`: once in nftables, per family (with something to capture) in iptables.
    fn dns_jumps(&mut self, all: bool, servers: &Servers) {
        let to_dns = Action::Jump(Chain::OutputDns);
        self.append(
            Table::Raw,
            Chain::Output,
            Family::Any,
            vec![],
            to_dns.clone(),
        );
        let families: Vec<Family> = match self.flavor {
            Flavor::Nftables => vec![Family::Any],
            Flavor::Iptables => [Family::V4, Family::V6]
                .into_iter()
                .filter(|&f| all || servers.iter().any(|(sf, _)| *sf == f))
                .collect(),
        };
        for family in families {
            let chain = Chain::IstioOutput;
            self.append(Table::Nat, chain, family, vec![], to_dns.clone());
        }
    }

    /// Step 14: nat `istio-output-dns`, TCP then UDP:
    /// `ip daddr S/32 tcp dport 53 counter redirect to :15053` (or every destination).
    fn dns_redirects(&mut self, all: bool, servers: &Servers) {
        let redirect = Action::Redirect {
            port: DNS_PROXY_PORT,
        };
        for proto in [Proto::Tcp, Proto::Udp] {
            let port_53 = dport(proto, 53);
            if all {
                let mut m = vec![port_53];
                if proto == Proto::Tcp {
                    m.insert(0, tcp());
                }
                self.append(
                    Table::Nat,
                    Chain::OutputDns,
                    Family::Any,
                    m,
                    redirect.clone(),
                );
                continue;
            }
            for (family, s) in servers {
                let m = vec![daddr(s.clone()), port_53.clone()];
                self.append(Table::Nat, Chain::OutputDns, *family, m, redirect.clone());
            }
        }
    }

    /// Step 14: raw `istio-output-dns`: conntrack zones keep the proxy's and the app's DNS
    /// flows apart (per uid, then per gid).
    fn dns_owner_zones(&mut self) {
        for owner in self.proxy_owners() {
            let (raw, dns, any) = (Table::Raw, Chain::OutputDns, Family::Any);
            let m = vec![dport(Proto::Udp, 53), owner.clone()];
            self.append(raw, dns, any, m, Action::CtZone(1));
            let m = vec![udp_sport(DNS_PROXY_PORT), owner];
            self.append(raw, dns, any, m, Action::CtZone(2));
        }
    }

    /// Step 14, `--capture-all-dns`: the zones for every port-53 flow.
    fn dns_all_zones(&mut self) {
        let (raw, any) = (Table::Raw, Family::Any);
        self.append(
            raw,
            Chain::Prerouting,
            any,
            vec![],
            Action::Jump(Chain::Inbound),
        );
        let m = vec![dport(Proto::Udp, 53)];
        self.append(raw, Chain::OutputDns, any, m, Action::CtZone(2));
        self.append(
            raw,
            Chain::Inbound,
            any,
            vec![udp_sport(53)],
            Action::CtZone(1),
        );
    }

    /// Step 14, resolvers only: the raw prerouting jump (once in nftables, per family with
    /// resolvers in iptables), then each resolver's pair of zones.
    fn dns_server_zones(&mut self, servers: &Servers) {
        let to_inbound = Action::Jump(Chain::Inbound);
        match self.flavor {
            Flavor::Nftables => {
                self.append(
                    Table::Raw,
                    Chain::Prerouting,
                    Family::Any,
                    vec![],
                    to_inbound,
                );
                for (family, s) in servers {
                    self.dns_zone_pair(*family, s);
                }
            }
            Flavor::Iptables => {
                for family in [Family::V4, Family::V6] {
                    let of_family: Vec<&Cidr> = servers
                        .iter()
                        .filter(|(f, _)| *f == family)
                        .map(|(_, s)| s)
                        .collect();
                    if !of_family.is_empty() {
                        let jump = to_inbound.clone();
                        self.append(Table::Raw, Chain::Prerouting, family, vec![], jump);
                    }
                    for s in of_family {
                        self.dns_zone_pair(family, s);
                    }
                }
            }
        }
    }

    /// Step 14: one resolver's zones, queries to it in zone 2 and its answers in zone 1.
    fn dns_zone_pair(&mut self, family: Family, s: &Cidr) {
        let m = vec![dport(Proto::Udp, 53), daddr(s.clone())];
        self.append(Table::Raw, Chain::OutputDns, family, m, Action::CtZone(2));
        let m = vec![udp_sport(53), saddr(s.clone())];
        self.append(Table::Raw, Chain::Inbound, family, m, Action::CtZone(1));
    }

    /// 15. `ip daddr 127.0.0.1/32 counter return`: explicit localhost is never captured.
    fn step_localhost(&mut self) {
        self.append_per_loopback(Table::Nat, Chain::IstioOutput, |lo| {
            (vec![daddr(lo)], Action::Return)
        });
    }

    /// 16. Excluded destinations: `ip daddr C counter return`, IPv4 ones first.
    fn step_excluded_destinations(&mut self) {
        let cfg = self.cfg;
        let excluded = cfg.outbound_ranges_exclude_v4.iter();
        for c in excluded.chain(&cfg.outbound_ranges_exclude_v6) {
            let m = vec![daddr(c.clone())];
            self.append(
                Table::Nat,
                Chain::IstioOutput,
                family_of(c),
                m,
                Action::Return,
            );
        }
    }

    /// 17. `tcp dport P counter jump istio-redirect`, whatever the destination.
    fn step_outbound_ports_include(&mut self) {
        for &p in &self.cfg.outbound_ports_include {
            let m = vec![tcp_dport(vec![p], false)];
            self.output_rule(m, Action::Jump(Chain::Redirect));
        }
    }

    /// 18. Outbound include: `istio-output counter jump istio-redirect` (all, or per
    ///     destination), each preceded by `insert … index 0 iifname K … jump istio-redirect`
    ///     per virtual interface K.
    fn step_outbound_include(&mut self) {
        let cfg = self.cfg;
        match &cfg.outbound_ranges_include {
            OutboundRanges::All => {
                // iptables does this once per family.
                let families: &[Family] = match self.flavor {
                    Flavor::Nftables => &[Family::Any],
                    Flavor::Iptables => &[Family::V4, Family::V6],
                };
                for &family in families {
                    self.redirect_outbound(family, None);
                }
            }
            OutboundRanges::Only { v4, v6 } => {
                for c in v4.iter().chain(v6) {
                    self.redirect_outbound(family_of(c), Some(c));
                }
            }
        }
    }

    /// Step 18 for one family (and destination, when listed). With every destination the
    /// `istio-output` rule comes first, with a listed one the prerouting inserts do.
    fn redirect_outbound(&mut self, family: Family, dest: Option<&Cidr>) {
        let redirect = Action::Jump(Chain::Redirect);
        let dest: Vec<Match> = dest.map(|c| daddr(c.clone())).into_iter().collect();
        if dest.is_empty() {
            self.append(
                Table::Nat,
                Chain::IstioOutput,
                family,
                vec![],
                redirect.clone(),
            );
        }
        for k in &self.cfg.reroute_interfaces {
            let mut m = vec![Match::InIface(k.clone())];
            m.extend(dest.iter().cloned());
            let (nat, at_top) = (Table::Nat, Position::Insert(0));
            self.push(nat, Chain::Prerouting, at_top, family, m, redirect.clone());
        }
        if !dest.is_empty() {
            self.append(Table::Nat, Chain::IstioOutput, family, dest, redirect);
        }
    }

    /// 19. TPROXY extras: the mark bookkeeping in mangle prerouting/output, then the
    ///     inserts at the top of mangle `istio-inbound`.
    fn step_tproxy_extras(&mut self) {
        if self.cfg.is_tproxy() {
            self.tproxy_marks();
            self.tproxy_inbound_returns();
        }
    }

    /// Step 19: `prerouting meta l4proto tcp mark 1337 counter ct mark set mark`, the loopback
    /// return, the 1338 marks of the proxy's loopback traffic, `ct mark` restore.
    fn tproxy_marks(&mut self) {
        let mark = self.cfg.tproxy_mark;
        let (mangle, any) = (Table::Mangle, Family::Any);
        let save = Action::SaveMarkToConntrack;
        let m = vec![tcp(), mark_is(mark, false)];
        self.append(mangle, Chain::Prerouting, any, m, save);
        // mangle `output oifname lo meta l4proto tcp mark 1337 counter return`
        let m = vec![out_lo(), tcp(), mark_is(mark, false)];
        self.append(mangle, Chain::Output, any, m, Action::Return);
        // `oifname lo meta l4proto tcp ip daddr != 127.0.0.1/32 skuid 1337 counter meta mark set 1338`
        for owner in self.proxy_owners() {
            self.append_per_loopback(mangle, Chain::Output, |lo| {
                let m = vec![out_lo(), tcp(), daddr_not(lo), owner.clone()];
                (m, Action::SetMark(OUTBOUND_MARK))
            });
        }
        // `output meta l4proto tcp ct mark 1337 counter meta mark set ct mark`
        let restore = Action::RestoreMarkFromConntrack;
        let m = vec![tcp(), Match::CtMark(mark)];
        self.append(mangle, Chain::Output, any, m, restore);
    }

    /// Step 19: mangle `istio-inbound` inserts at 0, 1 (per family) and 2.
    fn tproxy_inbound_returns(&mut self) {
        let mark = self.cfg.tproxy_mark;
        let (mangle, inbound, ret) = (Table::Mangle, Chain::Inbound, Action::Return);
        let at = Position::Insert;
        let m = vec![tcp(), mark_is(mark, false)];
        self.push(mangle, inbound, at(0), Family::Any, m, ret.clone());
        for (family, six) in [
            (Family::V4, host(INBOUND_PASSTHROUGH_V4)),
            (Family::V6, host(INBOUND_PASSTHROUGH_V6)),
        ] {
            let m = vec![in_lo(), tcp(), saddr(six)];
            self.push(mangle, inbound, at(1), family, m, ret.clone());
        }
        let m = vec![in_lo(), tcp(), mark_is(OUTBOUND_MARK, true)];
        self.push(mangle, inbound, at(2), Family::Any, m, ret);
    }
}

/// Builds Istio's rule set for `cfg` as the chosen generator emits it.
pub fn build(cfg: &Config, flavor: Flavor) -> Plan {
    Builder {
        cfg,
        flavor,
        steps: Vec::new(),
    }
    .build()
}
