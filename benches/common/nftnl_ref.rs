//! The baseline encoder: the same plan encoded with libnftnl (through the `nftnl` crate), the
//! library `nft` itself encodes with, as one create-only batch in the order ours uses
//! (tables, chains, then per rule its anonymous sets and the rule).
//!
//! The rule lowering is copied from `integration/libnftnl_oracle.rs` (benches cannot import
//! integration tests), which checks for every rule of Istio's 28 cases that libnftnl decodes
//! our messages to exactly what this lowering builds; `encode.rs` additionally checks that
//! both batches have the same messages and that the kernel accepts this one.

use mesh_redirect::config::Cidr;
use mesh_redirect::model::{Action, CtState, Family, Hook, Match, Plan, Proto};
use nftnl::expr::{
    Bitwise, Cmp, CmpOp, Conntrack, Counter, Expression, Immediate, Ipv4HeaderField,
    Ipv6HeaderField, Meta, NetworkHeaderField, Payload, Register, States, TcpHeaderField,
    TransportHeaderField, UdpHeaderField, Verdict,
};
use nftnl::nftnl_sys::{self as sys, libc};
use nftnl::set::{Set, SetKey};
use nftnl::{Batch, Chain, ChainType, FinalizedBatch, MsgType, Policy, ProtoFamily, Rule, Table};
use std::ffi::{CStr, CString};
use std::net::IpAddr;
use std::ptr::NonNull;

const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
const NFT_CT_ZONE: u32 = 17;
const NFT_REG_1: u32 = libc::NFT_REG_1 as u32;

struct NewExpr(NonNull<sys::nftnl_expr>);

impl NewExpr {
    fn alloc(name: &CStr) -> NewExpr {
        // SAFETY: `name` is a valid NUL-terminated string; libnftnl copies what it needs.
        let e = unsafe { sys::nftnl_expr_alloc(name.as_ptr()) };
        NewExpr(NonNull::new(e).unwrap_or_else(|| panic!("nftnl_expr_alloc({name:?}) failed")))
    }

    fn u32(self, attr: u32, value: u32) -> NewExpr {
        // SAFETY: the expression is live and still ours (not yet owned by a rule).
        unsafe { sys::nftnl_expr_set_u32(self.0.as_ptr(), attr as u16, value) };
        self
    }

    fn str(self, attr: u32, value: &CStr) -> NewExpr {
        // SAFETY: as in `u32`; the string is NUL-terminated and copied by libnftnl.
        unsafe { sys::nftnl_expr_set_str(self.0.as_ptr(), attr as u16, value.as_ptr()) };
        self
    }

    fn into_raw(self) -> NonNull<sys::nftnl_expr> {
        let e = self.0;
        std::mem::forget(self);
        e
    }
}

impl Drop for NewExpr {
    fn drop(&mut self) {
        // SAFETY: never handed to a rule (`into_raw` forgets `self`), so still ours to free.
        unsafe { sys::nftnl_expr_free(self.0.as_ptr()) };
    }
}

struct Redir;

impl Expression for Redir {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        NewExpr::alloc(c"redir")
            .u32(sys::NFTNL_EXPR_REDIR_REG_PROTO_MIN, NFT_REG_1)
            .u32(sys::NFTNL_EXPR_REDIR_FLAGS, NF_NAT_RANGE_PROTO_SPECIFIED)
            .into_raw()
    }
}

struct Tproxy {
    family: u32,
}

impl Expression for Tproxy {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        NewExpr::alloc(c"tproxy")
            .u32(sys::NFTNL_EXPR_TPROXY_FAMILY, self.family)
            .u32(sys::NFTNL_EXPR_TPROXY_REG_PORT, NFT_REG_1)
            .into_raw()
    }
}

struct CtSet {
    key: u32,
}

impl Expression for CtSet {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        NewExpr::alloc(c"ct")
            .u32(sys::NFTNL_EXPR_CT_KEY, self.key)
            .u32(sys::NFTNL_EXPR_CT_SREG, NFT_REG_1)
            .into_raw()
    }
}

struct LookupEx {
    set_name: CString,
    set_id: u32,
    invert: bool,
}

impl Expression for LookupEx {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let e = NewExpr::alloc(c"lookup")
            .u32(sys::NFTNL_EXPR_LOOKUP_SREG, NFT_REG_1)
            .str(sys::NFTNL_EXPR_LOOKUP_SET, &self.set_name)
            .u32(sys::NFTNL_EXPR_LOOKUP_SET_ID, self.set_id);
        if self.invert {
            e.u32(sys::NFTNL_EXPR_LOOKUP_FLAGS, libc::NFT_LOOKUP_F_INV as u32)
                .into_raw()
        } else {
            e.into_raw()
        }
    }
}

struct Port(u16);

impl SetKey for Port {
    const TYPE: u32 = 13;
    const LEN: u32 = 2;

    fn data(&self) -> Box<[u8]> {
        Box::new(self.0.to_be_bytes())
    }
}

fn ifname(name: &str) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..name.len()].copy_from_slice(name.as_bytes());
    b
}

fn op(negate: bool) -> CmpOp {
    if negate {
        CmpOp::Neq
    } else {
        CmpOp::Eq
    }
}

fn l4_number(p: Proto) -> u8 {
    match p {
        Proto::Tcp => libc::IPPROTO_TCP as u8,
        Proto::Udp => libc::IPPROTO_UDP as u8,
    }
}

fn port_payload(proto: Proto, destination: bool) -> Payload {
    Payload::Transport(match (proto, destination) {
        (Proto::Tcp, true) => TransportHeaderField::Tcp(TcpHeaderField::Dport),
        (Proto::Tcp, false) => TransportHeaderField::Tcp(TcpHeaderField::Sport),
        (Proto::Udp, true) => TransportHeaderField::Udp(UdpHeaderField::Dport),
        (Proto::Udp, false) => TransportHeaderField::Udp(UdpHeaderField::Sport),
    })
}

fn prefix_mask(len: u8, bytes: usize) -> Vec<u8> {
    (0..bytes)
        .map(|i| {
            let bits = (len as usize).saturating_sub(i * 8).min(8);
            (0xff00u16 >> bits) as u8
        })
        .collect()
}

#[derive(Default)]
struct Deps {
    l3: Option<bool>,
    l4: Option<Proto>,
}

impl Deps {
    fn l4(&mut self, r: &mut Rule, proto: Proto) {
        if self.l4 != Some(proto) {
            r.add_expr(&Meta::L4Proto);
            r.add_expr(&Cmp::new(CmpOp::Eq, l4_number(proto)));
            self.l4 = Some(proto);
        }
    }

    fn l3(&mut self, r: &mut Rule, v4: bool) {
        if self.l3 != Some(v4) {
            r.add_expr(&Meta::NfProto);
            let nfproto = if v4 {
                libc::NFPROTO_IPV4
            } else {
                libc::NFPROTO_IPV6
            };
            r.add_expr(&Cmp::new(CmpOp::Eq, nfproto as u8));
            self.l3 = Some(v4);
        }
    }
}

fn address(r: &mut Rule, deps: &mut Deps, cidr: &Cidr, source: bool, negate: bool) {
    let (v4, addr): (bool, Vec<u8>) = match cidr.addr {
        IpAddr::V4(a) => (true, a.octets().to_vec()),
        IpAddr::V6(a) => (false, a.octets().to_vec()),
    };
    deps.l3(r, v4);
    let full = addr.len();
    let mask = prefix_mask(cidr.len, full);
    let network: Vec<u8> = addr.iter().zip(&mask).map(|(a, m)| a & m).collect();
    let field = match (v4, source) {
        (true, true) => NetworkHeaderField::Ipv4(Ipv4HeaderField::Saddr),
        (true, false) => NetworkHeaderField::Ipv4(Ipv4HeaderField::Daddr),
        (false, true) => NetworkHeaderField::Ipv6(Ipv6HeaderField::Saddr),
        (false, false) => NetworkHeaderField::Ipv6(Ipv6HeaderField::Daddr),
    };
    let bits = cidr.len as usize;
    if bits == full * 8 {
        r.add_expr(&Payload::Network(field));
        r.add_expr(&Cmp::new(op(negate), &network[..]));
    } else if bits % 8 == 0 && bits > 0 {
        let offset = match (v4, source) {
            (true, true) => 12,
            (true, false) => 16,
            (false, true) => 8,
            (false, false) => 24,
        };
        let bytes = bits / 8;
        r.add_expr(&Payload::Network(NetworkHeaderField::Raw {
            offset_bits: offset,
            length_bits: bytes as u32,
        }));
        r.add_expr(&Cmp::new(op(negate), &network[..bytes]));
    } else {
        let zero = vec![0u8; full];
        r.add_expr(&Payload::Network(field));
        r.add_expr(&Bitwise::new(&mask[..], &zero[..]));
        r.add_expr(&Cmp::new(op(negate), &network[..]));
    }
}

/// Adds one rule, preceded by the `NEWSET` + `NEWSETELEM` of each of its anonymous sets.
fn add_rule(
    batch: &mut Batch,
    table: &Table,
    chain: &Chain,
    rule: &mesh_redirect::model::Rule,
    next_set_id: &mut u32,
) {
    let mut r = Rule::new(chain);
    let mut deps = Deps::default();
    for m in &rule.matches {
        match m {
            Match::InIface(i) => {
                r.add_expr(&Meta::IifName);
                r.add_expr(&Cmp::new(CmpOp::Eq, &ifname(i.as_str())[..]));
            }
            Match::OutIface(i) => {
                r.add_expr(&Meta::OifName);
                r.add_expr(&Cmp::new(CmpOp::Eq, &ifname(i.as_str())[..]));
            }
            Match::L4Proto(p) => {
                r.add_expr(&Meta::L4Proto);
                r.add_expr(&Cmp::new(CmpOp::Eq, l4_number(*p)));
                deps.l4 = Some(*p);
            }
            Match::DPort {
                proto,
                ports,
                negate,
            } => {
                deps.l4(&mut r, *proto);
                r.add_expr(&port_payload(*proto, true));
                match ports.as_slice() {
                    [] => panic!("a port match without ports"),
                    [port] => r.add_expr(&Cmp::new(op(*negate), port.to_be())),
                    many => {
                        let id = *next_set_id;
                        *next_set_id += 1;
                        let mut set: Set<Port> = Set::new(c"__set%d", id, table, ProtoFamily::Inet);
                        for p in many {
                            set.add(&Port(*p));
                        }
                        // SAFETY: the set is live; NFTNL_SET_DESC_SIZE is a u32 attribute.
                        unsafe {
                            sys::nftnl_set_set_u32(
                                set.as_ptr().as_ptr(),
                                sys::NFTNL_SET_DESC_SIZE as u16,
                                many.len() as u32,
                            )
                        };
                        batch.add(&set, MsgType::Add);
                        batch.add_iter(set.elems_iter(), MsgType::Add);
                        r.add_expr(&LookupEx {
                            set_name: set.get_name().to_owned(),
                            set_id: id,
                            invert: *negate,
                        });
                    }
                }
            }
            Match::SPort { proto, port } => {
                deps.l4(&mut r, *proto);
                r.add_expr(&port_payload(*proto, false));
                r.add_expr(&Cmp::new(CmpOp::Eq, port.to_be()));
            }
            Match::SAddr { cidr, negate } => address(&mut r, &mut deps, cidr, true, *negate),
            Match::DAddr { cidr, negate } => address(&mut r, &mut deps, cidr, false, *negate),
            Match::SkUid { uid, negate } => {
                r.add_expr(&Meta::SkUid);
                r.add_expr(&Cmp::new(op(*negate), *uid));
            }
            Match::SkGid { group, negate } => {
                r.add_expr(&Meta::SkGid);
                r.add_expr(&Cmp::new(op(*negate), group.gid));
            }
            Match::CtState(state) => {
                let bits = match state {
                    CtState::Invalid => States::INVALID,
                    CtState::RelatedEstablished => States::ESTABLISHED | States::RELATED,
                };
                r.add_expr(&Conntrack::State);
                r.add_expr(&Bitwise::new(bits.bits(), 0u32));
                r.add_expr(&Cmp::new(CmpOp::Neq, 0u32));
            }
            Match::Mark { mark, negate } => {
                r.add_expr(&Meta::Mark { set: false });
                r.add_expr(&Cmp::new(op(*negate), *mark));
            }
            Match::CtMark(mark) => {
                r.add_expr(&Conntrack::Mark { set: false });
                r.add_expr(&Cmp::new(CmpOp::Eq, *mark));
            }
        }
    }
    let verdict = |r: &mut Rule, v: Verdict| {
        r.add_expr(&Counter);
        r.add_expr(&v);
    };
    match &rule.action {
        Action::Return => verdict(&mut r, Verdict::Return),
        Action::Accept => verdict(&mut r, Verdict::Accept),
        Action::Drop => verdict(&mut r, Verdict::Drop),
        Action::Jump(c) => verdict(
            &mut r,
            Verdict::Jump {
                chain: CString::new(c.nft_name()).expect("chain name"),
            },
        ),
        Action::Redirect { port } => {
            r.add_expr(&Counter);
            r.add_expr(&Immediate::new(port.to_be(), Register::Reg1));
            r.add_expr(&Redir);
        }
        Action::Tproxy { port, mark } => {
            let family = match rule.family {
                Family::V4 => libc::NFPROTO_IPV4,
                Family::V6 => libc::NFPROTO_IPV6,
                Family::Any => libc::NFPROTO_UNSPEC,
            };
            r.add_expr(&Immediate::new(port.to_be(), Register::Reg1));
            r.add_expr(&Tproxy {
                family: family as u32,
            });
            r.add_expr(&Immediate::new(*mark, Register::Reg1));
            r.add_expr(&Meta::Mark { set: true });
            verdict(&mut r, Verdict::Accept);
        }
        Action::SetMark(mark) => {
            r.add_expr(&Counter);
            r.add_expr(&Immediate::new(*mark, Register::Reg1));
            r.add_expr(&Meta::Mark { set: true });
        }
        Action::SaveMarkToConntrack => {
            r.add_expr(&Counter);
            r.add_expr(&Meta::Mark { set: false });
            r.add_expr(&Conntrack::Mark { set: true });
        }
        Action::RestoreMarkFromConntrack => {
            r.add_expr(&Counter);
            r.add_expr(&Conntrack::Mark { set: false });
            r.add_expr(&Meta::Mark { set: true });
        }
        Action::CtZone(zone) => {
            r.add_expr(&Counter);
            r.add_expr(&Immediate::new(*zone, Register::Reg1));
            r.add_expr(&CtSet { key: NFT_CT_ZONE });
        }
    }
    batch.add(&r, MsgType::Add);
}

/// The whole create-only batch for `plan`, encoded by libnftnl.
pub fn encode(plan: &Plan) -> FinalizedBatch {
    let mut batch = Batch::new();
    let resolved = plan.resolve_inet();
    let mut next_set_id = 1;
    for t in plan.tables() {
        let tname = CString::new(t.nft_name()).expect("table name");
        let table = Table::new(&tname, ProtoFamily::Inet);
        batch.add(&table, MsgType::Add);
        let mut chains = Vec::new();
        for c in plan.chains(t) {
            let mut chain = Chain::new(CString::new(c.nft_name()).expect("chain name"), &table);
            if let Some(base) = c.base(t) {
                let hook = match base.hook {
                    Hook::Prerouting => nftnl::Hook::PreRouting,
                    Hook::Output => nftnl::Hook::Out,
                };
                chain.set_hook(hook, base.priority);
                chain.set_type(match base.kind.name() {
                    "nat" => ChainType::Nat,
                    "route" => ChainType::Route,
                    _ => ChainType::Filter,
                });
                chain.set_policy(Policy::Accept);
            }
            batch.add(&chain, MsgType::Add);
            chains.push((c, chain));
        }
        for rc in resolved.iter().filter(|rc| rc.table == t) {
            let chain = &chains
                .iter()
                .find(|(c, _)| *c == rc.chain)
                .expect("chain declared")
                .1;
            for rule in &rc.rules {
                add_rule(&mut batch, &table, chain, rule, &mut next_set_id);
            }
        }
    }
    batch.finalize()
}

/// The batch as one contiguous buffer (what is handed to `send`).
pub fn bytes(batch: &FinalizedBatch) -> Vec<u8> {
    batch.iter().flatten().copied().collect()
}
