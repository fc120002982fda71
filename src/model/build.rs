//! Istio's rule generator, step by step (spec §4.3; nftables forms §7.3). Step numbers in
//! the comments are the spec's. The nftables rule text each step produces is shown next to
//! it; the iptables form is in the spec.

use super::*;
use crate::config::{Config, DnsCapture, InboundPorts, OutboundRanges, OwnerGroups};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Envoy's DNS listener (Istio's `constants.IstioAgentDNSListenerPort`).
pub const DNS_PROXY_PORT: u16 = 15053;
/// Mark Envoy's outbound loopback traffic carries in TPROXY mode (`constants.OutboundMark`).
pub const OUTBOUND_MARK: u32 = 1338;
/// Source Envoy binds for inbound passthrough (IPv4 / IPv6).
pub const INBOUND_PASSTHROUGH_V4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
pub const INBOUND_PASSTHROUGH_V6: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6);

struct Builder<'c> {
    cfg: &'c Config,
    flavor: Flavor,
    steps: Vec<Step>,
}

fn loopback_if() -> IfName {
    IfName::parse("", "lo").expect("lo is a valid name")
}

fn host(addr: impl Into<IpAddr>) -> Cidr {
    Cidr::host(addr.into())
}

fn loopback_v6() -> Cidr {
    host(Ipv6Addr::LOCALHOST)
}

fn tcp_dport(ports: Vec<u16>, negate: bool) -> Match {
    Match::DPort {
        proto: Proto::Tcp,
        ports,
        negate,
    }
}

impl<'c> Builder<'c> {
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

    fn lo4(&self) -> Cidr {
        self.cfg.host_ipv4_loopback.clone()
    }

    fn build(mut self) -> Plan {
        let cfg = self.cfg;
        let tproxy = cfg.is_tproxy();
        let dns = cfg.dns.clone();
        let dns_on = dns != DnsCapture::Off;
        let tunnel = cfg.inbound_tunnel_port;

        // 1. Exclude interfaces: `iifname X counter return` / `oifname X counter return`.
        let mut exclude_tables = vec![Table::Nat];
        if tproxy {
            exclude_tables.push(Table::Mangle);
        }
        for table in exclude_tables {
            for i in &cfg.exclude_interfaces {
                self.append(
                    table,
                    Chain::Prerouting,
                    Family::Any,
                    vec![Match::InIface(i.clone())],
                    Action::Return,
                );
                self.append(
                    table,
                    Chain::Output,
                    Family::Any,
                    vec![Match::OutIface(i.clone())],
                    Action::Return,
                );
            }
        }

        // 2. Virtual interfaces short-circuit: `insert … index 0 iifname K counter return`.
        for k in &cfg.reroute_interfaces {
            self.push(
                Table::Nat,
                Chain::Prerouting,
                Position::Insert(0),
                Family::Any,
                vec![Match::InIface(k.clone())],
                Action::Return,
            );
        }

        // 3. Drop invalid: `meta l4proto tcp ct state invalid counter jump istio-drop` (the
        //    nftables generator matches TCP only; iptables matches every protocol).
        if cfg.drop_invalid {
            let mut m = vec![Match::CtState(CtState::Invalid)];
            if self.flavor == Flavor::Nftables {
                m.insert(0, Match::L4Proto(Proto::Tcp));
            }
            self.append(
                Table::Mangle,
                Chain::Prerouting,
                Family::Any,
                m,
                Action::Jump(Chain::Drop),
            );
            self.append(
                Table::Mangle,
                Chain::Drop,
                Family::Any,
                vec![],
                Action::Drop,
            );
        }

        // 4–6. `meta l4proto tcp tcp dport 15008 counter return`, the two redirect chains.
        self.append(
            Table::Nat,
            Chain::Inbound,
            Family::Any,
            vec![Match::L4Proto(Proto::Tcp), tcp_dport(vec![tunnel], false)],
            Action::Return,
        );
        self.append(
            Table::Nat,
            Chain::Redirect,
            Family::Any,
            vec![Match::L4Proto(Proto::Tcp)],
            Action::Redirect {
                port: cfg.proxy_port,
            },
        );
        self.append(
            Table::Nat,
            Chain::InRedirect,
            Family::Any,
            vec![Match::L4Proto(Proto::Tcp)],
            Action::Redirect {
                port: cfg.inbound_capture_port,
            },
        );

        // 7. Inbound capture.
        self.inbound();

        // 8. `output counter jump istio-output` (every protocol).
        self.append(
            Table::Nat,
            Chain::Output,
            Family::Any,
            vec![],
            Action::Jump(Chain::IstioOutput),
        );

        // 9. `tcp dport P counter return`, `udp dport P counter return`.
        for &p in &cfg.outbound_ports_exclude {
            for proto in [Proto::Tcp, Proto::Udp] {
                self.append(
                    Table::Nat,
                    Chain::IstioOutput,
                    Family::Any,
                    vec![Match::DPort {
                        proto,
                        ports: vec![p],
                        negate: false,
                    }],
                    Action::Return,
                );
            }
        }

        // 10. `oifname lo ip saddr 127.0.0.6/32 counter return`: Envoy's inbound passthrough.
        self.append_versioned(
            Table::Nat,
            Chain::IstioOutput,
            host(INBOUND_PASSTHROUGH_V4),
            host(INBOUND_PASSTHROUGH_V6),
            |six| {
                (
                    vec![
                        Match::OutIface(loopback_if()),
                        Match::SAddr {
                            cidr: six,
                            negate: false,
                        },
                    ],
                    Action::Return,
                )
            },
        );

        // 11–12. Per proxy uid, then per proxy gid.
        let loop_include = cfg.outbound_ranges_include.includes_loopback();
        let owners: Vec<(Match, Match, Match, bool)> = cfg
            .proxy_uids
            .iter()
            .map(|&uid| {
                (
                    Match::SkUid { uid, negate: false },
                    Match::SkUid { uid, negate: true },
                    Match::SkUid { uid, negate: false },
                    true,
                )
            })
            .chain(cfg.proxy_gids.iter().map(|&gid| {
                let g = GroupId {
                    gid,
                    spelling: gid.to_string(),
                };
                (
                    Match::SkGid {
                        group: g.clone(),
                        negate: false,
                    },
                    Match::SkGid {
                        group: g.clone(),
                        negate: true,
                    },
                    Match::SkGid {
                        group: g,
                        negate: false,
                    },
                    false,
                )
            }))
            .collect();
        for (is, is_not, is_again, is_uid) in owners {
            // `oifname lo meta l4proto tcp ip daddr != 127.0.0.1/32 tcp dport != 15008
            //  skuid 1337 counter jump istio-in-redirect`: Envoy calling its own pod IP goes
            // through the inbound listener. Only the uid form also spares DNS (an Istio quirk).
            let ports = if dns_on && is_uid {
                vec![53, tunnel]
            } else {
                vec![tunnel]
            };
            let lo4 = self.lo4();
            self.append_versioned(Table::Nat, Chain::IstioOutput, lo4, loopback_v6(), |lo| {
                (
                    vec![
                        Match::OutIface(loopback_if()),
                        Match::L4Proto(Proto::Tcp),
                        Match::DAddr {
                            cidr: lo,
                            negate: true,
                        },
                        tcp_dport(ports.clone(), true),
                        is.clone(),
                    ],
                    Action::Jump(Chain::InRedirect),
                )
            });
            // `oifname lo skuid != 1337 counter return`: app → app over loopback stays direct.
            if !loop_include {
                let m = if dns_on {
                    vec![
                        Match::OutIface(loopback_if()),
                        Match::L4Proto(Proto::Tcp),
                        tcp_dport(vec![53], true),
                        is_not,
                    ]
                } else {
                    vec![Match::OutIface(loopback_if()), is_not]
                };
                self.append(
                    Table::Nat,
                    Chain::IstioOutput,
                    Family::Any,
                    m,
                    Action::Return,
                );
            }
            // `skuid 1337 counter return`: the proxy's own traffic escapes.
            self.append(
                Table::Nat,
                Chain::IstioOutput,
                Family::Any,
                vec![is_again],
                Action::Return,
            );
        }

        // 13. Owner groups.
        match &cfg.owner_groups {
            OwnerGroups::AllExcept(groups) => {
                for g in groups {
                    let group = GroupId {
                        gid: g.gid,
                        spelling: g.spelling.clone(),
                    };
                    self.append(
                        Table::Nat,
                        Chain::IstioOutput,
                        Family::Any,
                        vec![Match::SkGid {
                            group,
                            negate: false,
                        }],
                        Action::Return,
                    );
                }
            }
            OwnerGroups::Only(groups) => {
                let m = groups
                    .iter()
                    .map(|g| Match::SkGid {
                        group: GroupId {
                            gid: g.gid,
                            spelling: g.spelling.clone(),
                        },
                        negate: true,
                    })
                    .collect();
                self.append(
                    Table::Nat,
                    Chain::IstioOutput,
                    Family::Any,
                    m,
                    Action::Return,
                );
            }
        }

        // 14. DNS.
        if dns_on {
            self.dns(&dns);
        }

        // 15. `ip daddr 127.0.0.1/32 counter return`: explicit localhost is never captured.
        let lo4 = self.lo4();
        self.append_versioned(Table::Nat, Chain::IstioOutput, lo4, loopback_v6(), |lo| {
            (
                vec![Match::DAddr {
                    cidr: lo,
                    negate: false,
                }],
                Action::Return,
            )
        });

        // 16. Excluded destinations.
        for c in cfg
            .outbound_ranges_exclude_v4
            .iter()
            .chain(&cfg.outbound_ranges_exclude_v6)
        {
            let family = if c.is_v4() { Family::V4 } else { Family::V6 };
            self.append(
                Table::Nat,
                Chain::IstioOutput,
                family,
                vec![Match::DAddr {
                    cidr: c.clone(),
                    negate: false,
                }],
                Action::Return,
            );
        }

        // 17. `tcp dport P counter jump istio-redirect`, whatever the destination.
        for &p in &cfg.outbound_ports_include {
            self.append(
                Table::Nat,
                Chain::IstioOutput,
                Family::Any,
                vec![tcp_dport(vec![p], false)],
                Action::Jump(Chain::Redirect),
            );
        }

        // 18. Outbound include.
        self.outbound_include();

        // 19. TPROXY extras.
        if tproxy {
            self.tproxy_extras();
        }

        Plan {
            flavor: self.flavor,
            enable_ipv6: cfg.enable_ipv6,
            steps: self.steps,
        }
    }

    fn inbound(&mut self) {
        let cfg = self.cfg;
        if cfg.inbound_ports == InboundPorts::None {
            return;
        }
        let tproxy = cfg.is_tproxy();
        let capture = cfg.inbound_capture_port;
        let table = if tproxy {
            // `istio-divert`: `counter meta mark set 1337`, `counter accept`;
            // `istio-tproxy`: `meta l4proto tcp ip daddr != 127.0.0.1/32 tproxy ip to :15006
            //  meta mark set 1337 counter accept`.
            let mark = cfg.tproxy_mark;
            self.append(
                Table::Mangle,
                Chain::Divert,
                Family::Any,
                vec![],
                Action::SetMark(mark),
            );
            self.append(
                Table::Mangle,
                Chain::Divert,
                Family::Any,
                vec![],
                Action::Accept,
            );
            let lo4 = self.lo4();
            self.append_versioned(Table::Mangle, Chain::Tproxy, lo4, loopback_v6(), |lo| {
                (
                    vec![
                        Match::L4Proto(Proto::Tcp),
                        Match::DAddr {
                            cidr: lo,
                            negate: true,
                        },
                    ],
                    Action::Tproxy {
                        port: capture,
                        mark,
                    },
                )
            });
            Table::Mangle
        } else {
            Table::Nat
        };
        // `prerouting meta l4proto tcp counter jump istio-inbound`
        self.append(
            table,
            Chain::Prerouting,
            Family::Any,
            vec![Match::L4Proto(Proto::Tcp)],
            Action::Jump(Chain::Inbound),
        );
        let established = Match::CtState(CtState::RelatedEstablished);
        match &cfg.inbound_ports {
            InboundPorts::None => unreachable!("checked above"),
            InboundPorts::All { exclude } => {
                for &p in exclude {
                    self.append(
                        table,
                        Chain::Inbound,
                        Family::Any,
                        vec![Match::L4Proto(Proto::Tcp), tcp_dport(vec![p], false)],
                        Action::Return,
                    );
                }
                if tproxy {
                    self.append(
                        Table::Mangle,
                        Chain::Inbound,
                        Family::Any,
                        vec![Match::L4Proto(Proto::Tcp), established],
                        Action::Jump(Chain::Divert),
                    );
                    self.append(
                        Table::Mangle,
                        Chain::Inbound,
                        Family::Any,
                        vec![Match::L4Proto(Proto::Tcp)],
                        Action::Jump(Chain::Tproxy),
                    );
                } else {
                    self.append(
                        Table::Nat,
                        Chain::Inbound,
                        Family::Any,
                        vec![Match::L4Proto(Proto::Tcp)],
                        Action::Jump(Chain::InRedirect),
                    );
                }
            }
            InboundPorts::Only(ports) => {
                for &p in ports {
                    if tproxy {
                        self.append(
                            Table::Mangle,
                            Chain::Inbound,
                            Family::Any,
                            vec![
                                Match::L4Proto(Proto::Tcp),
                                established.clone(),
                                tcp_dport(vec![p], false),
                            ],
                            Action::Jump(Chain::Divert),
                        );
                        self.append(
                            Table::Mangle,
                            Chain::Inbound,
                            Family::Any,
                            vec![Match::L4Proto(Proto::Tcp), tcp_dport(vec![p], false)],
                            Action::Jump(Chain::Tproxy),
                        );
                    } else {
                        self.append(
                            Table::Nat,
                            Chain::Inbound,
                            Family::Any,
                            vec![Match::L4Proto(Proto::Tcp), tcp_dport(vec![p], false)],
                            Action::Jump(Chain::InRedirect),
                        );
                    }
                }
            }
        }
    }

    fn dns(&mut self, dns: &DnsCapture) {
        let cfg = self.cfg;
        let (all, v4, v6) = match dns {
            DnsCapture::Off => return,
            DnsCapture::All => (true, vec![], vec![]),
            DnsCapture::Servers { v4, v6 } => (false, v4.clone(), v6.clone()),
        };
        let udp_dport = |p| Match::DPort {
            proto: Proto::Udp,
            ports: vec![p],
            negate: false,
        };
        let udp_sport = |port| Match::SPort {
            proto: Proto::Udp,
            port,
        };

        // raw `output counter jump istio-output-dns`
        self.append(
            Table::Raw,
            Chain::Output,
            Family::Any,
            vec![],
            Action::Jump(Chain::OutputDns),
        );
        // nat `istio-output counter jump istio-output-dns`: once in nftables, per family in iptables.
        match self.flavor {
            Flavor::Nftables => self.append(
                Table::Nat,
                Chain::IstioOutput,
                Family::Any,
                vec![],
                Action::Jump(Chain::OutputDns),
            ),
            Flavor::Iptables => {
                if all || !v4.is_empty() {
                    self.append(
                        Table::Nat,
                        Chain::IstioOutput,
                        Family::V4,
                        vec![],
                        Action::Jump(Chain::OutputDns),
                    );
                }
                if all || !v6.is_empty() {
                    self.append(
                        Table::Nat,
                        Chain::IstioOutput,
                        Family::V6,
                        vec![],
                        Action::Jump(Chain::OutputDns),
                    );
                }
            }
        }
        let servers: Vec<(Family, Cidr)> = v4
            .iter()
            .map(|a| (Family::V4, a.clone()))
            .chain(v6.iter().map(|a| (Family::V6, a.clone())))
            .collect();
        let redirect = Action::Redirect {
            port: DNS_PROXY_PORT,
        };
        // nat `istio-output-dns`: TCP then UDP, `ip daddr S/32 tcp dport 53 counter redirect to :15053`.
        for proto in [Proto::Tcp, Proto::Udp] {
            let dport = Match::DPort {
                proto,
                ports: vec![53],
                negate: false,
            };
            if all {
                let mut m = vec![dport];
                if proto == Proto::Tcp {
                    m.insert(0, Match::L4Proto(Proto::Tcp));
                }
                self.append(
                    Table::Nat,
                    Chain::OutputDns,
                    Family::Any,
                    m,
                    redirect.clone(),
                );
            } else {
                for (family, s) in &servers {
                    self.append(
                        Table::Nat,
                        Chain::OutputDns,
                        *family,
                        vec![
                            Match::DAddr {
                                cidr: s.clone(),
                                negate: false,
                            },
                            dport.clone(),
                        ],
                        redirect.clone(),
                    );
                }
            }
        }
        // raw `istio-output-dns`: conntrack zones keep the proxy's and the app's DNS flows apart.
        for &uid in &cfg.proxy_uids {
            self.append(
                Table::Raw,
                Chain::OutputDns,
                Family::Any,
                vec![udp_dport(53), Match::SkUid { uid, negate: false }],
                Action::CtZone(1),
            );
            self.append(
                Table::Raw,
                Chain::OutputDns,
                Family::Any,
                vec![
                    udp_sport(DNS_PROXY_PORT),
                    Match::SkUid { uid, negate: false },
                ],
                Action::CtZone(2),
            );
        }
        for &gid in &cfg.proxy_gids {
            let group = GroupId {
                gid,
                spelling: gid.to_string(),
            };
            self.append(
                Table::Raw,
                Chain::OutputDns,
                Family::Any,
                vec![
                    udp_dport(53),
                    Match::SkGid {
                        group: group.clone(),
                        negate: false,
                    },
                ],
                Action::CtZone(1),
            );
            self.append(
                Table::Raw,
                Chain::OutputDns,
                Family::Any,
                vec![
                    udp_sport(DNS_PROXY_PORT),
                    Match::SkGid {
                        group,
                        negate: false,
                    },
                ],
                Action::CtZone(2),
            );
        }
        if all {
            self.append(
                Table::Raw,
                Chain::Prerouting,
                Family::Any,
                vec![],
                Action::Jump(Chain::Inbound),
            );
            self.append(
                Table::Raw,
                Chain::OutputDns,
                Family::Any,
                vec![udp_dport(53)],
                Action::CtZone(2),
            );
            self.append(
                Table::Raw,
                Chain::Inbound,
                Family::Any,
                vec![udp_sport(53)],
                Action::CtZone(1),
            );
            return;
        }
        let zone_pair = |b: &mut Self, family: Family, s: Cidr| {
            b.append(
                Table::Raw,
                Chain::OutputDns,
                family,
                vec![
                    udp_dport(53),
                    Match::DAddr {
                        cidr: s.clone(),
                        negate: false,
                    },
                ],
                Action::CtZone(2),
            );
            b.append(
                Table::Raw,
                Chain::Inbound,
                family,
                vec![
                    udp_sport(53),
                    Match::SAddr {
                        cidr: s,
                        negate: false,
                    },
                ],
                Action::CtZone(1),
            );
        };
        match self.flavor {
            Flavor::Nftables => {
                self.append(
                    Table::Raw,
                    Chain::Prerouting,
                    Family::Any,
                    vec![],
                    Action::Jump(Chain::Inbound),
                );
                for (family, s) in &servers {
                    zone_pair(self, *family, s.clone());
                }
            }
            Flavor::Iptables => {
                for family in [Family::V4, Family::V6] {
                    let of_family: Vec<Cidr> = servers
                        .iter()
                        .filter(|(f, _)| *f == family)
                        .map(|(_, s)| s.clone())
                        .collect();
                    if !of_family.is_empty() {
                        self.append(
                            Table::Raw,
                            Chain::Prerouting,
                            family,
                            vec![],
                            Action::Jump(Chain::Inbound),
                        );
                    }
                    for s in of_family {
                        zone_pair(self, family, s);
                    }
                }
            }
        }
    }

    fn outbound_include(&mut self) {
        let cfg = self.cfg;
        let redirect = Action::Jump(Chain::Redirect);
        match &cfg.outbound_ranges_include {
            OutboundRanges::All => {
                // `istio-output counter jump istio-redirect`; per K `insert … index 0 iifname K
                // counter jump istio-redirect`. iptables does this once per family.
                let families: &[Family] = match self.flavor {
                    Flavor::Nftables => &[Family::Any],
                    Flavor::Iptables => &[Family::V4, Family::V6],
                };
                for &family in families {
                    self.append(
                        Table::Nat,
                        Chain::IstioOutput,
                        family,
                        vec![],
                        redirect.clone(),
                    );
                    for k in &cfg.reroute_interfaces {
                        self.push(
                            Table::Nat,
                            Chain::Prerouting,
                            Position::Insert(0),
                            family,
                            vec![Match::InIface(k.clone())],
                            redirect.clone(),
                        );
                    }
                }
            }
            OutboundRanges::Only { v4, v6 } => {
                for c in v4.iter().chain(v6) {
                    let family = if c.is_v4() { Family::V4 } else { Family::V6 };
                    for k in &cfg.reroute_interfaces {
                        self.push(
                            Table::Nat,
                            Chain::Prerouting,
                            Position::Insert(0),
                            family,
                            vec![
                                Match::InIface(k.clone()),
                                Match::DAddr {
                                    cidr: c.clone(),
                                    negate: false,
                                },
                            ],
                            redirect.clone(),
                        );
                    }
                    self.append(
                        Table::Nat,
                        Chain::IstioOutput,
                        family,
                        vec![Match::DAddr {
                            cidr: c.clone(),
                            negate: false,
                        }],
                        redirect.clone(),
                    );
                }
            }
        }
    }

    fn tproxy_extras(&mut self) {
        let cfg = self.cfg;
        let mark = cfg.tproxy_mark;
        let tcp = || Match::L4Proto(Proto::Tcp);
        // mangle `prerouting meta l4proto tcp mark 1337 counter ct mark set mark`
        self.append(
            Table::Mangle,
            Chain::Prerouting,
            Family::Any,
            vec![
                tcp(),
                Match::Mark {
                    mark,
                    negate: false,
                },
            ],
            Action::SaveMarkToConntrack,
        );
        // mangle `output oifname lo meta l4proto tcp mark 1337 counter return`
        self.append(
            Table::Mangle,
            Chain::Output,
            Family::Any,
            vec![
                Match::OutIface(loopback_if()),
                tcp(),
                Match::Mark {
                    mark,
                    negate: false,
                },
            ],
            Action::Return,
        );
        // `oifname lo meta l4proto tcp ip daddr != 127.0.0.1/32 skuid 1337 counter meta mark set 1338`
        let owners: Vec<Match> = cfg
            .proxy_uids
            .iter()
            .map(|&uid| Match::SkUid { uid, negate: false })
            .chain(cfg.proxy_gids.iter().map(|&gid| Match::SkGid {
                group: GroupId {
                    gid,
                    spelling: gid.to_string(),
                },
                negate: false,
            }))
            .collect();
        let lo4 = self.lo4();
        for owner in owners {
            self.append_versioned(
                Table::Mangle,
                Chain::Output,
                lo4.clone(),
                loopback_v6(),
                |lo| {
                    (
                        vec![
                            Match::OutIface(loopback_if()),
                            tcp(),
                            Match::DAddr {
                                cidr: lo,
                                negate: true,
                            },
                            owner.clone(),
                        ],
                        Action::SetMark(OUTBOUND_MARK),
                    )
                },
            );
        }
        // `output meta l4proto tcp ct mark 1337 counter meta mark set ct mark`
        self.append(
            Table::Mangle,
            Chain::Output,
            Family::Any,
            vec![tcp(), Match::CtMark(mark)],
            Action::RestoreMarkFromConntrack,
        );
        // mangle `istio-inbound` inserts at 0, 1 (per family) and 2.
        self.push(
            Table::Mangle,
            Chain::Inbound,
            Position::Insert(0),
            Family::Any,
            vec![
                tcp(),
                Match::Mark {
                    mark,
                    negate: false,
                },
            ],
            Action::Return,
        );
        for (family, six) in [
            (Family::V4, host(INBOUND_PASSTHROUGH_V4)),
            (Family::V6, host(INBOUND_PASSTHROUGH_V6)),
        ] {
            self.push(
                Table::Mangle,
                Chain::Inbound,
                Position::Insert(1),
                family,
                vec![
                    Match::InIface(loopback_if()),
                    tcp(),
                    Match::SAddr {
                        cidr: six,
                        negate: false,
                    },
                ],
                Action::Return,
            );
        }
        self.push(
            Table::Mangle,
            Chain::Inbound,
            Position::Insert(2),
            Family::Any,
            vec![
                Match::InIface(loopback_if()),
                tcp(),
                Match::Mark {
                    mark: OUTBOUND_MARK,
                    negate: true,
                },
            ],
            Action::Return,
        );
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
