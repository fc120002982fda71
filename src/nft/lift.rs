//! Lifting kernel expressions back to a model rule: the inverse of [`super::expr::lower`], so
//! `verify` can print a rule it did not expect in the same nft words as one it misses:
//!
//! ```text
//! [meta load skgid] [cmp eq 0x39050000] [counter] [return]
//!   → skgid 1337 counter return
//! [meta load l4proto] [cmp eq 0x06] [payload 2b @ transport + 2] [lookup {0x0035,0x3a98}]
//!   [counter] [jump istio-redirect]
//!   → tcp dport { 53, 15000 } counter jump istio-redirect
//! ```
//!
//! Lifting is exact or nothing: a rule is returned only when lowering it gives back exactly
//! the expressions read, so the text shown is always the rule the kernel holds. Anything the
//! model cannot say (no counter, a foreign chain or expression, a wildcard interface) gives
//! `None`, and `verify` prints the raw expressions instead.
//!
//! Where two model rules lower to the same expressions, one is chosen: an explicit `meta
//! l4proto tcp` right before `tcp dport` is taken as the port's own dependency (`tcp dport
//! 15008`, as `nft list ruleset` shows it, where Istio's text says `meta l4proto tcp tcp
//! dport 15008`), addresses are their network (`10.0.0.0/8`), owner groups are numbers.

use super::abi::*;
use super::expr::{lower, CmpOp, Expr, MetaKey, Verdict};
use crate::config::{Cidr, IfName};
use crate::model::{Action, Chain, CtState, Family, GroupId, Match, Proto, Rule, Table};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The model rule that lowers to exactly `exprs`, or `None` when there is none.
pub fn lift(exprs: &[Expr]) -> Option<Rule> {
    let (body, action, tproxy) = split_action(exprs)?;
    let mut l = Lifter::default();
    let mut rest = body;
    while !rest.is_empty() {
        rest = l.next_match(rest)?;
    }
    let family = match tproxy {
        Some(NFPROTO_IPV4) => Family::V4,
        Some(NFPROTO_IPV6) => Family::V6,
        Some(_) => return None,
        None => l.family.unwrap_or(Family::Any),
    };
    let rule = Rule {
        family,
        matches: l.matches,
        action,
    };
    let normal = |e: &[Expr]| e.iter().map(Expr::normalized).collect::<Vec<_>>();
    (normal(&lower(&rule)) == normal(exprs)).then_some(rule)
}

/// The action at the end of `exprs`: the expressions before it, the action, and the family
/// of a `tproxy` statement.
fn split_action(exprs: &[Expr]) -> Option<(&[Expr], Action, Option<u8>)> {
    use Expr::{Counter, CtLoad, CtSet, Immediate, Meta, MetaSet, Redirect, Tproxy};
    if let [rest @ .., Immediate(port), Tproxy { family }, Immediate(mark), MetaSet(MetaKey::Mark), Counter, Expr::Verdict(Verdict::Accept)] =
        exprs
    {
        let action = Action::Tproxy {
            port: be16(port)?,
            mark: ne32(mark)?,
        };
        return Some((rest, action, Some(*family)));
    }
    let (rest, action) = match exprs {
        [rest @ .., Counter, Expr::Verdict(v)] => (rest, verdict(v)?),
        [rest @ .., Counter, Immediate(port), Redirect] => {
            (rest, Action::Redirect { port: be16(port)? })
        }
        [rest @ .., Counter, Immediate(mark), MetaSet(MetaKey::Mark)] => {
            (rest, Action::SetMark(ne32(mark)?))
        }
        [rest @ .., Counter, Meta(MetaKey::Mark), CtSet(NFT_CT_MARK)] => {
            (rest, Action::SaveMarkToConntrack)
        }
        [rest @ .., Counter, CtLoad(NFT_CT_MARK), MetaSet(MetaKey::Mark)] => {
            (rest, Action::RestoreMarkFromConntrack)
        }
        [rest @ .., Counter, Immediate(zone), CtSet(NFT_CT_ZONE)] => (
            rest,
            Action::CtZone(u16::from_ne_bytes(zone.as_slice().try_into().ok()?)),
        ),
        _ => return None,
    };
    Some((rest, action, None))
}

/// A verdict as an action; a jump only to one of Istio's chains.
fn verdict(v: &Verdict) -> Option<Action> {
    Some(match v {
        Verdict::Accept => Action::Accept,
        Verdict::Drop => Action::Drop,
        Verdict::Return => Action::Return,
        Verdict::Jump(name) => Action::Jump(chain_named(name)?),
    })
}

/// The model chain called `name` in nft.
fn chain_named(name: &str) -> Option<Chain> {
    Table::ALL
        .iter()
        .flat_map(|t| t.chain_order())
        .copied()
        .find(|c| c.nft_name() == name)
}

/// A port (network byte order).
fn be16(data: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(data.try_into().ok()?))
}

/// A uid, gid or mark (host byte order).
fn ne32(data: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(data.try_into().ok()?))
}

/// The matches lifted so far, and the protocols established for the ones to come (the
/// same state `lower` keeps to decide which dependencies to add).
#[derive(Default)]
struct Lifter {
    matches: Vec<Match>,
    /// The transport protocol established.
    l4: Option<Proto>,
    /// The network protocol established: `Some(true)` for IPv4.
    l3: Option<bool>,
    /// The family of the first address.
    family: Option<Family>,
}

impl Lifter {
    /// Lifts the match at the start of `exprs`; returns the expressions after it.
    fn next_match<'e>(&mut self, exprs: &'e [Expr]) -> Option<&'e [Expr]> {
        use Expr::{Cmp, CtLoad, Meta, Payload};
        let eq = |op: &CmpOp| *op == CmpOp::Eq;
        let (m, used) = match exprs {
            [Meta(k @ (MetaKey::IifName | MetaKey::OifName)), Cmp { op, data }, ..] if eq(op) => {
                let name = ifname(data)?;
                let m = if *k == MetaKey::IifName {
                    Match::InIface(name)
                } else {
                    Match::OutIface(name)
                };
                (Some(m), 2)
            }
            [Meta(MetaKey::L4Proto), Cmp { op, data }, rest @ ..] if eq(op) => {
                (self.l4proto(data, rest)?, 2)
            }
            [Meta(MetaKey::NfProto), Cmp { op, data }, ..] if eq(op) => {
                self.l3 = match data.as_slice() {
                    [NFPROTO_IPV4] => Some(true),
                    [NFPROTO_IPV6] => Some(false),
                    _ => return None,
                };
                (None, 2)
            }
            [Payload {
                base: NFT_PAYLOAD_TRANSPORT_HEADER,
                ..
            }, rest @ ..] => self.port(&exprs[0], rest)?,
            [Payload {
                base: NFT_PAYLOAD_NETWORK_HEADER,
                ..
            }, rest @ ..] => self.address(&exprs[0], rest)?,
            [Meta(key), Cmp { op, data }, ..] => (Some(meta_match(*key, op, data)?), 2),
            [CtLoad(NFT_CT_STATE), Expr::Bitwise { mask, xor }, Cmp { op, data }, ..]
                if !eq(op) && xor.iter().chain(data).all(|b| *b == 0) =>
            {
                (Some(Match::CtState(ct_state(ne32(mask)?)?)), 3)
            }
            [CtLoad(NFT_CT_MARK), Cmp { op, data }, ..] if eq(op) => {
                (Some(Match::CtMark(ne32(data)?)), 2)
            }
            _ => return None,
        };
        self.matches.extend(m);
        Some(&exprs[used..])
    }

    /// `meta l4proto P`: the dependency `lower` adds before a port of P when no earlier
    /// match established P, otherwise an explicit match.
    fn l4proto(&mut self, data: &[u8], rest: &[Expr]) -> Option<Option<Match>> {
        let proto = match data {
            [6] => Proto::Tcp,
            [17] => Proto::Udp,
            _ => return None,
        };
        let before_port = matches!(
            rest.first(),
            Some(Expr::Payload {
                base: NFT_PAYLOAD_TRANSPORT_HEADER,
                ..
            })
        );
        let dependency = before_port && self.l4 != Some(proto);
        self.l4 = Some(proto);
        Some((!dependency).then_some(Match::L4Proto(proto)))
    }

    /// A destination port (one, or a set) or a source port of the established protocol.
    fn port(&mut self, load: &Expr, rest: &[Expr]) -> Option<(Option<Match>, usize)> {
        let proto = self.l4?;
        let Expr::Payload { offset, len: 2, .. } = load else {
            return None;
        };
        let m = match (offset, rest.first()?) {
            (2, Expr::Cmp { op, data }) => Match::DPort {
                proto,
                ports: vec![be16(data)?],
                negate: *op == CmpOp::Neq,
            },
            (2, Expr::Lookup { elements, invert }) => Match::DPort {
                proto,
                ports: elements.iter().map(|e| be16(e)).collect::<Option<_>>()?,
                negate: *invert,
            },
            (0, Expr::Cmp { op, data }) if *op == CmpOp::Eq => Match::SPort {
                proto,
                port: be16(data)?,
            },
            _ => return None,
        };
        Some((Some(m), 2))
    }

    /// An address prefix of the established family: the whole address, its leading whole
    /// bytes, or the whole address masked.
    fn address(&mut self, load: &Expr, rest: &[Expr]) -> Option<(Option<Match>, usize)> {
        let v4 = self.l3?;
        let Expr::Payload { offset, len, .. } = load else {
            return None;
        };
        let (full, source) = match (v4, offset) {
            (true, 12) => (4, true),
            (true, 16) => (4, false),
            (false, 8) => (16, true),
            (false, 24) => (16, false),
            _ => return None,
        };
        let (prefix, op, data, used) = match rest {
            [Expr::Bitwise { mask, xor }, Expr::Cmp { op, data }, ..]
                if *len == full && data.len() == full as usize && xor.iter().all(|b| *b == 0) =>
            {
                (mask_len(mask)?, op, data, 3)
            }
            [Expr::Cmp { op, data }, ..] if *len <= full && data.len() == *len as usize => {
                (*len * 8, op, data, 2)
            }
            _ => return None,
        };
        let mut bytes = data.clone();
        bytes.resize(full as usize, 0);
        let cidr = Cidr {
            addr: ip_addr(&bytes)?,
            len: u8::try_from(prefix).ok()?,
            spelling: None,
        };
        let family = if v4 { Family::V4 } else { Family::V6 };
        self.family.get_or_insert(family);
        let negate = *op == CmpOp::Neq;
        let m = if source {
            Match::SAddr { cidr, negate }
        } else {
            Match::DAddr { cidr, negate }
        };
        Some((Some(m), used))
    }
}

/// `skuid`, `skgid` and `mark`, equal or not.
fn meta_match(key: MetaKey, op: &CmpOp, data: &[u8]) -> Option<Match> {
    let (value, negate) = (ne32(data)?, *op == CmpOp::Neq);
    Some(match key {
        MetaKey::SkUid => Match::SkUid { uid: value, negate },
        MetaKey::SkGid => Match::SkGid {
            group: GroupId {
                gid: value,
                spelling: value.to_string(),
            },
            negate,
        },
        MetaKey::Mark => Match::Mark {
            mark: value,
            negate,
        },
        _ => return None,
    })
}

/// The conntrack states `lower` tests for.
fn ct_state(bits: u32) -> Option<CtState> {
    match bits {
        NF_CT_STATE_INVALID_BIT => Some(CtState::Invalid),
        b if b == NF_CT_STATE_ESTABLISHED_BIT | NF_CT_STATE_RELATED_BIT => {
            Some(CtState::RelatedEstablished)
        }
        _ => None,
    }
}

/// An interface name compared as nft does: the whole zero-padded `IFNAMSIZ` buffer.
fn ifname(data: &[u8]) -> Option<IfName> {
    if data.len() != IFNAMSIZ {
        return None;
    }
    let end = data.iter().position(|b| *b == 0)?;
    if data[end..].iter().any(|b| *b != 0) {
        return None;
    }
    IfName::parse("", std::str::from_utf8(&data[..end]).ok()?).ok()
}

/// The prefix length of a contiguous mask.
fn mask_len(mask: &[u8]) -> Option<u32> {
    let ones: u32 = mask.iter().map(|b| b.count_ones()).sum();
    let bits = mask
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| b >> i & 1 == 1));
    bits.enumerate()
        .all(|(i, set)| set == (i < ones as usize))
        .then_some(ones)
}

/// An IPv4 or IPv6 address from its 4 or 16 bytes.
fn ip_addr(bytes: &[u8]) -> Option<IpAddr> {
    Some(match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GroupFile;
    use crate::model::{build, Flavor, Plan, Position, Step};
    use crate::nft::expr::{data, Data};
    use crate::nft::render::rule_text;
    use std::mem::discriminant;

    /// Environment variables of a case: name and value.
    type Env = &'static [(&'static str, &'static str)];

    /// Flag sets (and owner-group variables) that between them use every match and action.
    const CASES: &[(&[&str], Env)] = &[
        (&[], &[]),
        (&["--ipv6"], &[]),
        (&["-m", "TPROXY"], &[]),
        (
            &[
                "-m",
                "TPROXY",
                "--ipv6",
                "-u",
                "1337,1400",
                "-g",
                "1337,1500",
            ],
            &[],
        ),
        (
            &[
                "--ipv6",
                "--redirect-dns",
                "--dns-servers-v4",
                "10.0.0.10,8.8.8.8",
                "--dns-servers-v6",
                "fd00::53,::127.0.0.53",
            ],
            &[],
        ),
        (
            &[
                "--ipv6",
                "--redirect-dns",
                "--capture-all-dns",
                "-u",
                "1337,1400",
            ],
            &[],
        ),
        (&["--drop-invalid", "-m", "TPROXY", "-b", "80,443"], &[]),
        (
            &[
                "--ipv6",
                "-i",
                "10.0.0.0/8,10.1.2.3/12,172.16.0.0/12,fd00::/8,2001:db8::/33",
                "-x",
                "10.96.0.0/16,192.168.1.1/32,fd01::/64,::/0",
            ],
            &[],
        ),
        (
            &[
                "-x",
                "0.0.0.0/0,10.1.2.3/8",
                "-q",
                "80,8080",
                "-o",
                "15020,9090",
                "-d",
                "15020,15021,15090,22",
            ],
            &[],
        ),
        (
            &[
                "-b",
                "80,443,8080",
                "-c",
                "eth1,veth-x.9",
                "-k",
                "cni0,kube-virt1",
            ],
            &[],
        ),
        (
            &[
                "--ipv6",
                "-k",
                "virt0",
                "-i",
                "10.0.0.0/8,fd00::/16",
                "-m",
                "TPROXY",
                "-c",
                "eth2",
            ],
            &[],
        ),
        (
            &["--ipv6"],
            &[("ISTIO_OUTBOUND_OWNER_GROUPS", "1001,1002,65534")],
        ),
        (
            &["--redirect-dns"],
            &[("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "2001,2002")],
        ),
        (
            &[
                "-b", "", "-e", "15009", "-p", "15101", "-z", "15106", "--ipv6", "-m", "TPROXY",
                "-t", "4242",
            ],
            &[],
        ),
    ];

    fn plan(flags: &[&str], env: &[(&str, &str)]) -> Plan {
        let lookup = |name: &str| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        };
        let raw = crate::cli::raw_config(flags, &lookup).unwrap();
        let cfg = raw.validate(&GroupFile::default()).unwrap();
        build(&cfg, Flavor::Nftables)
    }

    /// The rule as `lift` spells it: an explicit `meta l4proto P` right before a port match
    /// of P is that port's dependency, addresses are their network, groups are numbers.
    fn canonical(rule: &Rule) -> Rule {
        let mut matches: Vec<Match> = Vec::new();
        let mut l4 = None;
        for (i, m) in rule.matches.iter().enumerate() {
            let next_port = match rule.matches.get(i + 1) {
                Some(Match::DPort { proto, .. } | Match::SPort { proto, .. }) => Some(*proto),
                _ => None,
            };
            let m = match m.clone() {
                Match::L4Proto(p) if next_port == Some(p) && l4 != Some(p) => None,
                Match::SAddr { cidr, negate } => Some(Match::SAddr {
                    cidr: network(&cidr),
                    negate,
                }),
                Match::DAddr { cidr, negate } => Some(Match::DAddr {
                    cidr: network(&cidr),
                    negate,
                }),
                Match::SkGid { group, negate } => Some(Match::SkGid {
                    group: GroupId {
                        gid: group.gid,
                        spelling: group.gid.to_string(),
                    },
                    negate,
                }),
                other => Some(other),
            };
            if let Some(
                Match::L4Proto(p) | Match::DPort { proto: p, .. } | Match::SPort { proto: p, .. },
            ) = m
            {
                l4 = Some(p);
            }
            matches.extend(m);
        }
        Rule {
            matches,
            ..rule.clone()
        }
    }

    fn network(c: &Cidr) -> Cidr {
        let mut bytes = c.network_bytes();
        bytes.resize(c.addr_bytes().len(), 0);
        Cidr {
            addr: ip_addr(&bytes).unwrap(),
            len: c.len,
            spelling: None,
        }
    }

    #[test]
    fn every_planned_rule_lifts_back_from_its_expressions() {
        let (mut matches, mut actions) = (Vec::new(), Vec::new());
        let (mut rules, mut same_text) = (0, 0);
        for (flags, env) in CASES {
            for step in plan(flags, env).steps {
                let exprs = lower(&step.rule);
                let lifted = lift(&exprs);
                assert_eq!(lifted, Some(canonical(&step.rule)), "{flags:?}: {exprs:?}");
                let lifted = Step {
                    rule: lifted.unwrap(),
                    ..step.clone()
                };
                assert_eq!(lower(&lifted.rule), exprs, "exact: the same expressions");
                if canonical(&step.rule) == step.rule {
                    assert_eq!(rule_text(&lifted), rule_text(&step));
                    same_text += 1;
                }
                rules += 1;
                matches.extend(step.rule.matches.iter().map(discriminant));
                actions.push(discriminant(&step.rule.action));
            }
        }
        // Every match and action the model has was exercised (12 and 10 kinds).
        matches.sort_by_key(|d| format!("{d:?}"));
        matches.dedup();
        actions.sort_by_key(|d| format!("{d:?}"));
        actions.dedup();
        assert_eq!((matches.len(), actions.len()), (12, 10));
        assert!(
            rules > 400 && same_text > rules / 2,
            "{rules} rules, {same_text} same text"
        );
    }

    fn step(table: Table, chain: Chain, rule: Rule) -> String {
        rule_text(&Step {
            table,
            chain,
            position: Position::Append,
            rule,
        })
    }

    #[test]
    fn a_dependency_before_a_port_is_spelled_as_nft_lists_it() {
        let tunnel = Rule {
            family: Family::Any,
            matches: vec![
                Match::L4Proto(Proto::Tcp),
                Match::DPort {
                    proto: Proto::Tcp,
                    ports: vec![15008],
                    negate: false,
                },
            ],
            action: Action::Return,
        };
        let lifted = lift(&lower(&tunnel)).unwrap();
        assert_eq!(
            step(Table::Nat, Chain::Inbound, lifted),
            "tcp dport 15008 counter return"
        );
        // Not right before the port, it stays an explicit match.
        let divert = Rule {
            matches: vec![
                Match::L4Proto(Proto::Tcp),
                Match::CtState(CtState::RelatedEstablished),
                Match::DPort {
                    proto: Proto::Tcp,
                    ports: vec![80, 443],
                    negate: false,
                },
            ],
            action: Action::Jump(Chain::Divert),
            ..tunnel
        };
        let lifted = lift(&lower(&divert)).unwrap();
        assert_eq!(
            step(Table::Mangle, Chain::Inbound, lifted),
            "meta l4proto tcp ct state related,established tcp dport { 80, 443 } counter jump istio-divert"
        );
    }

    fn skuid_return() -> Vec<Expr> {
        let rule = Rule {
            family: Family::Any,
            matches: vec![Match::SkUid {
                uid: 1337,
                negate: false,
            }],
            action: Action::Return,
        };
        lower(&rule)
    }

    #[test]
    fn what_the_model_cannot_say_does_not_lift() {
        let ok = skuid_return();
        assert!(lift(&ok).is_some());
        let mut foreign = ok.clone();
        foreign.insert(2, Expr::Other("limit".into()));
        let no_counter: Vec<Expr> = ok
            .iter()
            .filter(|e| **e != Expr::Counter)
            .cloned()
            .collect();
        let mut foreign_chain = ok.clone();
        *foreign_chain.last_mut().unwrap() = Expr::Verdict(Verdict::Jump("user-chain".into()));
        let mut wildcard = lower(&Rule {
            matches: vec![Match::InIface(IfName::parse("", "eth0").unwrap())],
            ..lift(&ok).unwrap()
        });
        wildcard[1] = Expr::Cmp {
            op: CmpOp::Eq,
            data: data(b"eth"),
        };
        // `meta l4proto tcp` lowered before a port, then a port without it: not what lower makes.
        let port = lower(&Rule {
            matches: vec![Match::DPort {
                proto: Proto::Udp,
                ports: vec![53],
                negate: false,
            }],
            ..lift(&ok).unwrap()
        });
        let bare_port = port[2..].to_vec();
        let unknown_state = vec![
            Expr::CtLoad(NFT_CT_STATE),
            Expr::Bitwise {
                mask: data(&8u32.to_ne_bytes()),
                xor: Data::from_elem(0, 4),
            },
            Expr::Cmp {
                op: CmpOp::Neq,
                data: Data::from_elem(0, 4),
            },
            Expr::Counter,
            Expr::Verdict(Verdict::Accept),
        ];
        for exprs in [
            foreign,
            no_counter,
            foreign_chain,
            wildcard,
            bare_port,
            unknown_state,
            vec![],
        ] {
            assert_eq!(lift(&exprs), None, "{exprs:?}");
        }
    }

    #[test]
    fn the_module_doc_example_is_what_lift_does() {
        let rule = Rule {
            family: Family::Any,
            matches: vec![Match::DPort {
                proto: Proto::Tcp,
                ports: vec![53, 15000],
                negate: false,
            }],
            action: Action::Jump(Chain::Redirect),
        };
        let exprs = lower(&rule);
        let raw: Vec<String> = exprs.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            raw.join(" "),
            "[meta load l4proto] [cmp eq 0x06] [payload 2b @ transport + 2] \
             [lookup {0x0035,0x3a98}] [counter] [jump istio-redirect]"
        );
        let text = step(Table::Nat, Chain::IstioOutput, lift(&exprs).unwrap());
        assert_eq!(text, "tcp dport { 53, 15000 } counter jump istio-redirect");
    }

    #[test]
    fn addresses_lift_at_every_prefix_length_both_families() {
        for text in [
            "10.1.2.3/32",
            "10.0.0.0/8",
            "10.16.0.0/12",
            "0.0.0.0/0",
            "fd00::/8",
            "2001:db8::/33",
            "::/0",
            "::1/128",
        ] {
            let cidr = Cidr::parse("", text).unwrap();
            for negate in [false, true] {
                let rule = Rule {
                    family: if cidr.is_v4() { Family::V4 } else { Family::V6 },
                    matches: vec![
                        Match::SAddr {
                            cidr: cidr.clone(),
                            negate,
                        },
                        Match::DAddr {
                            cidr: cidr.clone(),
                            negate: !negate,
                        },
                    ],
                    action: Action::Accept,
                };
                assert_eq!(lift(&lower(&rule)), Some(rule));
            }
        }
    }
}
