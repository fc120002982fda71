//! Lowering a model rule to nf_tables expressions, the same ones `nft` generates for Istio's
//! rule text (checked with `nft --debug=netlink`). For example
//! `oifname "lo" meta l4proto tcp ip daddr != 127.0.0.1 tcp dport != 15008 meta skuid 1337
//! counter jump istio-in-redirect` is:
//!
//! ```text
//! [ meta load oifname => reg 1 ]  [ cmp eq reg 1 "lo" (16 bytes, zero padded) ]
//! [ meta load l4proto => reg 1 ]  [ cmp eq reg 1 0x06 ]
//! [ meta load nfproto => reg 1 ]  [ cmp eq reg 1 0x02 ]          (implicit `ip` dependency)
//! [ payload load 4b @ network header + 16 => reg 1 ]  [ cmp neq reg 1 127.0.0.1 ]
//! [ payload load 2b @ transport header + 2 => reg 1 ]  [ cmp neq reg 1 15008 (BE) ]
//! [ meta load skuid => reg 1 ]  [ cmp eq reg 1 1337 (host order) ]
//! [ counter ]  [ immediate reg 0 jump -> istio-in-redirect ]
//! ```
//!
//! The same IR is what [`super::readback`] decodes from the kernel, so "is the kernel what
//! we meant" is a comparison of two `Vec<Expr>`.

use super::abi::*;
use crate::config::Cidr;
use crate::model::{Action, CtState, Match, Proto, Rule};
use smallvec::SmallVec;
use std::borrow::Cow;
use std::fmt;

/// The value of a comparison, mask, immediate or set key: a port, a uid, an address, an
/// interface name, never more than 16 bytes from us (the kernel allows up to 64, which a
/// foreign rule read back may use: then it lives on the heap). Inline, a rule lowers
/// without one allocation per value.
pub type Data = SmallVec<[u8; 16]>;

/// [`Data`] holding `bytes`.
pub fn data(bytes: &[u8]) -> Data {
    Data::from_slice(bytes)
}

/// Where a comparison, load or statement gets its value: every data expression here works on
/// register 1, verdicts on register 0, exactly like nft's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// `meta load KEY => reg 1`.
    Meta(MetaKey),
    /// `meta set KEY` from register 1.
    MetaSet(MetaKey),
    /// `cmp OP reg 1 DATA`.
    Cmp {
        /// Equal or not equal.
        op: CmpOp,
        /// The value compared with.
        data: Data,
    },
    /// `payload load LEN b @ BASE + OFFSET => reg 1`.
    Payload {
        /// The header (`NFT_PAYLOAD_*_HEADER`).
        base: u32,
        /// Byte offset in the header.
        offset: u32,
        /// Number of bytes.
        len: u32,
    },
    /// `bitwise reg 1 = (reg 1 & MASK) ^ XOR`.
    Bitwise {
        /// The AND mask.
        mask: Data,
        /// The XOR value.
        xor: Data,
    },
    /// A lookup in an anonymous constant set of `inet_service` keys.
    Lookup {
        /// The set's keys, in network byte order.
        elements: Vec<Data>,
        /// True for `!=` (not in the set).
        invert: bool,
    },
    /// `counter`.
    Counter,
    /// `immediate reg 1 DATA`.
    Immediate(Data),
    /// A verdict in register 0.
    Verdict(Verdict),
    /// `redirect to :port` with the port in register 1.
    Redirect,
    /// `tproxy ip|ip6 to :port` with the port in register 1.
    Tproxy {
        /// `NFPROTO_IPV4` or `NFPROTO_IPV6`.
        family: u8,
    },
    /// `ct load KEY => reg 1`.
    CtLoad(u32),
    /// `ct set KEY` from register 1.
    CtSet(u32),
    /// An expression we never write (found in the kernel, shown by name).
    Other(String),
}

impl Expr {
    /// The form used for comparisons: set elements have no order.
    pub fn normalized(&self) -> Expr {
        match self {
            Expr::Lookup { elements, invert } => {
                let mut elements = elements.clone();
                elements.sort();
                Expr::Lookup {
                    elements,
                    invert: *invert,
                }
            }
            other => other.clone(),
        }
    }
}

/// The `meta` keys we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
    /// `meta mark`.
    Mark,
    /// `iifname`.
    IifName,
    /// `oifname`.
    OifName,
    /// `meta skuid`.
    SkUid,
    /// `meta skgid`.
    SkGid,
    /// `meta nfproto`.
    NfProto,
    /// `meta l4proto`.
    L4Proto,
}

impl MetaKey {
    /// The kernel's `NFT_META_*` number.
    pub fn number(self) -> u32 {
        match self {
            MetaKey::Mark => NFT_META_MARK,
            MetaKey::IifName => NFT_META_IIFNAME,
            MetaKey::OifName => NFT_META_OIFNAME,
            MetaKey::SkUid => NFT_META_SKUID,
            MetaKey::SkGid => NFT_META_SKGID,
            MetaKey::NfProto => NFT_META_NFPROTO,
            MetaKey::L4Proto => NFT_META_L4PROTO,
        }
    }

    /// The key for a kernel `NFT_META_*` number, if we use it.
    pub fn from_number(n: u32) -> Option<MetaKey> {
        [
            MetaKey::Mark,
            MetaKey::IifName,
            MetaKey::OifName,
            MetaKey::SkUid,
            MetaKey::SkGid,
            MetaKey::NfProto,
            MetaKey::L4Proto,
        ]
        .into_iter()
        .find(|k| k.number() == n)
    }

    fn name(self) -> &'static str {
        match self {
            MetaKey::Mark => "mark",
            MetaKey::IifName => "iifname",
            MetaKey::OifName => "oifname",
            MetaKey::SkUid => "skuid",
            MetaKey::SkGid => "skgid",
            MetaKey::NfProto => "nfproto",
            MetaKey::L4Proto => "l4proto",
        }
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `==`.
    Eq,
    /// `!=`.
    Neq,
}

/// A verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// `accept`.
    Accept,
    /// `drop`.
    Drop,
    /// `return`.
    Return,
    /// `jump CHAIN`: one of our chains' static names when we lower, any name when read back.
    Jump(Cow<'static, str>),
}

fn cmp(negate: bool, data: Data) -> Expr {
    Expr::Cmp {
        op: if negate { CmpOp::Neq } else { CmpOp::Eq },
        data,
    }
}

/// An interface name as nft compares it: the whole IFNAMSIZ buffer, zero padded.
pub fn ifname_bytes(name: &str) -> Data {
    let mut b = data(name.as_bytes());
    b.resize(IFNAMSIZ, 0);
    b
}

/// Lowers one rule. Dependencies are added the way nft adds them: `meta nfproto` before an
/// address, `meta l4proto` before a port unless the rule already established the protocol.
pub fn lower(rule: &Rule) -> Vec<Expr> {
    // Room for the longest rules (a port match with its protocol dependency, an address
    // match, a verdict): one allocation instead of a few growing ones.
    let mut out = Vec::with_capacity(12);
    let mut l4: Option<Proto> = None;
    let mut l3: Option<bool> = None; // Some(true) = IPv4 established
    for m in &rule.matches {
        lower_match(&mut out, &mut l4, &mut l3, m);
    }
    action(&mut out, &rule.action, rule_family_is_v6(rule));
    out
}

/// `meta KEY` compared with `data`.
fn meta_cmp(key: MetaKey, negate: bool, data: Data) -> [Expr; 2] {
    [Expr::Meta(key), cmp(negate, data)]
}

/// One match, with the protocol dependencies `l4` / `l3` the rule has established so far.
fn lower_match(out: &mut Vec<Expr>, l4: &mut Option<Proto>, l3: &mut Option<bool>, m: &Match) {
    match m {
        Match::InIface(i) => {
            out.extend(meta_cmp(MetaKey::IifName, false, ifname_bytes(i.as_str())))
        }
        Match::OutIface(i) => {
            out.extend(meta_cmp(MetaKey::OifName, false, ifname_bytes(i.as_str())))
        }
        Match::L4Proto(p) => {
            out.extend(meta_cmp(MetaKey::L4Proto, false, data(&[p.number()])));
            *l4 = Some(*p);
        }
        Match::DPort {
            proto,
            ports,
            negate,
        } => {
            port_dependency(out, l4, *proto);
            out.push(Expr::Payload {
                base: NFT_PAYLOAD_TRANSPORT_HEADER,
                offset: 2,
                len: 2,
            });
            if ports.len() == 1 {
                out.push(cmp(*negate, data(&ports[0].to_be_bytes())));
            } else {
                out.push(Expr::Lookup {
                    elements: ports.iter().map(|p| data(&p.to_be_bytes())).collect(),
                    invert: *negate,
                });
            }
        }
        Match::SPort { proto, port } => {
            port_dependency(out, l4, *proto);
            out.push(Expr::Payload {
                base: NFT_PAYLOAD_TRANSPORT_HEADER,
                offset: 0,
                len: 2,
            });
            out.push(cmp(false, data(&port.to_be_bytes())));
        }
        Match::SAddr { cidr, negate } => address(out, l3, cidr, true, *negate),
        Match::DAddr { cidr, negate } => address(out, l3, cidr, false, *negate),
        Match::SkUid { uid, negate } => {
            out.extend(meta_cmp(MetaKey::SkUid, *negate, data(&uid.to_ne_bytes())))
        }
        Match::SkGid { group, negate } => out.extend(meta_cmp(
            MetaKey::SkGid,
            *negate,
            data(&group.gid.to_ne_bytes()),
        )),
        Match::CtState(state) => out.extend(ct_state(*state)),
        Match::Mark { mark, negate } => {
            out.extend(meta_cmp(MetaKey::Mark, *negate, data(&mark.to_ne_bytes())))
        }
        Match::CtMark(mark) => out.extend([
            Expr::CtLoad(NFT_CT_MARK),
            cmp(false, data(&mark.to_ne_bytes())),
        ]),
    }
}

/// `ct state …`: the state bits masked out and compared with zero.
fn ct_state(state: CtState) -> [Expr; 3] {
    let bits = match state {
        CtState::Invalid => NF_CT_STATE_INVALID_BIT,
        CtState::RelatedEstablished => NF_CT_STATE_ESTABLISHED_BIT | NF_CT_STATE_RELATED_BIT,
    };
    [
        Expr::CtLoad(NFT_CT_STATE),
        Expr::Bitwise {
            mask: data(&bits.to_ne_bytes()),
            xor: Data::from_elem(0, 4),
        },
        cmp(true, Data::from_elem(0, 4)),
    ]
}

fn rule_family_is_v6(rule: &Rule) -> bool {
    rule.family == crate::model::Family::V6
}

fn port_dependency(out: &mut Vec<Expr>, l4: &mut Option<Proto>, proto: Proto) {
    if *l4 != Some(proto) {
        out.extend(meta_cmp(MetaKey::L4Proto, false, data(&[proto.number()])));
        *l4 = Some(proto);
    }
}

/// `ip daddr 10.0.0.0/8`: nft loads only the whole bytes of a byte-aligned prefix, and masks
/// with a bitwise expression otherwise (including `/0`).
fn address(out: &mut Vec<Expr>, l3: &mut Option<bool>, cidr: &Cidr, source: bool, negate: bool) {
    let v4 = cidr.is_v4();
    if *l3 != Some(v4) {
        let nfproto = if v4 { NFPROTO_IPV4 } else { NFPROTO_IPV6 };
        out.extend(meta_cmp(MetaKey::NfProto, false, data(&[nfproto])));
        *l3 = Some(v4);
    }
    let (offset, full) = match (v4, source) {
        (true, true) => (12, 4),
        (true, false) => (16, 4),
        (false, true) => (8, 16),
        (false, false) => (24, 16),
    };
    let network = cidr.network_bytes();
    if cidr.len == cidr.max_len() {
        out.push(Expr::Payload {
            base: NFT_PAYLOAD_NETWORK_HEADER,
            offset,
            len: full,
        });
        out.push(cmp(negate, data(&network)));
    } else if cidr.len % 8 == 0 && cidr.len > 0 {
        let bytes = (cidr.len / 8) as usize;
        out.push(Expr::Payload {
            base: NFT_PAYLOAD_NETWORK_HEADER,
            offset,
            len: bytes as u32,
        });
        out.push(cmp(negate, data(&network[..bytes])));
    } else {
        out.push(Expr::Payload {
            base: NFT_PAYLOAD_NETWORK_HEADER,
            offset,
            len: full,
        });
        out.push(Expr::Bitwise {
            mask: data(&cidr.mask_bytes()),
            xor: Data::from_elem(0, full as usize),
        });
        out.push(cmp(negate, data(&network)));
    }
}

fn action(out: &mut Vec<Expr>, action: &Action, v6: bool) {
    let verdict = |v| Expr::Verdict(v);
    match action {
        Action::Return => out.extend([Expr::Counter, verdict(Verdict::Return)]),
        Action::Accept => out.extend([Expr::Counter, verdict(Verdict::Accept)]),
        Action::Drop => out.extend([Expr::Counter, verdict(Verdict::Drop)]),
        Action::Jump(c) => out.extend([
            Expr::Counter,
            verdict(Verdict::Jump(Cow::Borrowed(c.nft_name()))),
        ]),
        Action::Redirect { port } => out.extend([
            Expr::Counter,
            Expr::Immediate(data(&port.to_be_bytes())),
            Expr::Redirect,
        ]),
        // `tproxy ip to :15006 meta mark set 1337 counter accept`: the counter comes after
        // the mark here, as in Istio's text.
        Action::Tproxy { port, mark } => out.extend([
            Expr::Immediate(data(&port.to_be_bytes())),
            Expr::Tproxy {
                family: if v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 },
            },
            Expr::Immediate(data(&mark.to_ne_bytes())),
            Expr::MetaSet(MetaKey::Mark),
            Expr::Counter,
            verdict(Verdict::Accept),
        ]),
        Action::SetMark(m) => out.extend([
            Expr::Counter,
            Expr::Immediate(data(&m.to_ne_bytes())),
            Expr::MetaSet(MetaKey::Mark),
        ]),
        Action::SaveMarkToConntrack => out.extend([
            Expr::Counter,
            Expr::Meta(MetaKey::Mark),
            Expr::CtSet(NFT_CT_MARK),
        ]),
        Action::RestoreMarkFromConntrack => out.extend([
            Expr::Counter,
            Expr::CtLoad(NFT_CT_MARK),
            Expr::MetaSet(MetaKey::Mark),
        ]),
        Action::CtZone(z) => out.extend([
            Expr::Counter,
            Expr::Immediate(data(&z.to_ne_bytes())),
            Expr::CtSet(NFT_CT_ZONE),
        ]),
    }
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

/// A compact, nft-debug-like spelling used in verify diffs.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Meta(k) => write!(f, "[meta load {}]", k.name()),
            Expr::MetaSet(k) => write!(f, "[meta set {}]", k.name()),
            Expr::Cmp { op, data } => {
                let text =
                    String::from_utf8(data.iter().copied().take_while(|b| *b != 0).collect()).ok();
                let shown = match text {
                    Some(t) if data.len() == IFNAMSIZ && !t.is_empty() => format!("\"{t}\""),
                    _ => format!("0x{}", hex(data)),
                };
                write!(
                    f,
                    "[cmp {} {shown}]",
                    if *op == CmpOp::Eq { "eq" } else { "neq" }
                )
            }
            Expr::Payload { base, offset, len } => {
                let b = if *base == NFT_PAYLOAD_NETWORK_HEADER {
                    "network"
                } else {
                    "transport"
                };
                write!(f, "[payload {len}b @ {b} + {offset}]")
            }
            Expr::Bitwise { mask, xor } => {
                write!(f, "[bitwise & 0x{} ^ 0x{}]", hex(mask), hex(xor))
            }
            Expr::Lookup { elements, invert } => {
                let e: Vec<String> = elements.iter().map(|e| format!("0x{}", hex(e))).collect();
                write!(
                    f,
                    "[lookup {}{{{}}}]",
                    if *invert { "!= " } else { "" },
                    e.join(",")
                )
            }
            Expr::Counter => write!(f, "[counter]"),
            Expr::Immediate(d) => write!(f, "[immediate 0x{}]", hex(d)),
            Expr::Verdict(v) => match v {
                Verdict::Accept => write!(f, "[accept]"),
                Verdict::Drop => write!(f, "[drop]"),
                Verdict::Return => write!(f, "[return]"),
                Verdict::Jump(c) => write!(f, "[jump {c}]"),
            },
            Expr::Redirect => write!(f, "[redir]"),
            Expr::Tproxy { family } => write!(
                f,
                "[tproxy {}]",
                if *family == NFPROTO_IPV6 { "ip6" } else { "ip" }
            ),
            Expr::CtLoad(k) => write!(f, "[ct load {k}]"),
            Expr::CtSet(k) => write!(f, "[ct set {k}]"),
            Expr::Other(name) => write!(f, "[{name} …]"),
        }
    }
}
