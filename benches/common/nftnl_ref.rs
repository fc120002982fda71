//! The baseline encoder: the same plan encoded with libnftnl (through the `nftnl` crate), the
//! library `nft` itself encodes with, as one create-only batch in the order ours uses
//! (tables, chains, then per rule its anonymous sets and the rule).
//!
//! The rule lowering is copied from `integration/libnftnl_oracle.rs` (benches cannot import
//! integration tests), which checks for every rule of Istio's 28 cases that libnftnl decodes
//! our messages to exactly what this lowering builds; `encode.rs` additionally checks that
//! both batches have the same messages and that the kernel accepts this one.

use mesh_redirect::model::{Action, CtState, Family, Hook, Match, Plan};
use nftnl::expr::{
    Bitwise, Cmp, CmpOp, Conntrack, Counter, Immediate, Meta, Register, States, Verdict,
};
use nftnl::nftnl_sys::{self as sys, libc};
use nftnl::set::Set;
use nftnl::{Batch, Chain, ChainType, FinalizedBatch, MsgType, Policy, ProtoFamily, Rule, Table};
use std::ffi::CString;

#[path = "../../integration/support/nftnl_exprs.rs"]
mod nftnl_exprs;
use nftnl_exprs::*;

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
