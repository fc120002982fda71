//! The plan as one nf_tables transaction: `BATCH_BEGIN`, tables, chains, anonymous sets,
//! rules, `BATCH_END`. The kernel applies all of it or nothing.
//!
//! Two shapes (`docs/kernel-facts.md` §2.3): on a namespace without our tables a
//! **create-only** batch (`NEWTABLE` with `NLM_F_EXCL`: no delete, so no RCU wait at socket
//! close); when our tables exist, a **replace** batch that first re-declares and deletes each
//! of the three tables (`add table; delete table`, which works whether or not it exists) and
//! then builds them anew. Rules are written in their final order with `NLM_F_APPEND`
//! ([`Plan::resolve_inet`]). Only `BATCH_END` asks for an ACK (kernels ≥ 6.10 send it after the
//! commit): the kernel handles the batch inside `sendmsg` and reports every error, each tied to
//! its message by sequence number, so the absence of errors is the commit, and we spare the
//! kernel (and us) one reply per message.

use super::abi::*;
use super::expr::{lower, CmpOp, Expr, Verdict};
use super::render;
use crate::model::{Plan, Step, Table};
use crate::netlink::wire::MessageWriter;
use std::sync::Arc;

/// What a message of the batch creates, for error reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageInfo {
    /// The message's sequence number.
    pub seq: u32,
    /// Byte offset of the message in the batch (extended acks report offsets into it).
    pub offset: usize,
    /// Length of the message in bytes.
    pub len: usize,
    /// What it creates or deletes (`chain inet istio-proxy-nat output` once displayed).
    pub object: Object,
}

/// What a message creates or deletes, kept as data and put in words only when an error
/// names it: rendering every rule's nft text up front cost each batch a third of its
/// encoding time, for the rare refused one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    /// A message named by a fixed text (`batch begin`, the fault-injection rule).
    Named(&'static str),
    /// `table inet NAME`.
    Table(&'static str),
    /// `delete table inet NAME`.
    DeleteTable(&'static str),
    /// `chain inet TABLE NAME`.
    Chain(&'static str, &'static str),
    /// A rule: its 0-based index in its chain, and the rule.
    Rule(Arc<(usize, Step)>),
    /// The anonymous set made for a rule.
    AnonymousSet(Box<Object>),
    /// The elements of that set.
    SetElements(Box<Object>),
}

impl std::fmt::Display for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Object::Named(text) => f.write_str(text),
            Object::Table(name) => write!(f, "table inet {name}"),
            Object::DeleteTable(name) => write!(f, "delete table inet {name}"),
            Object::Chain(table, chain) => write!(f, "chain inet {table} {chain}"),
            Object::Rule(rule) => {
                let (index, step) = &**rule;
                write!(
                    f,
                    "rule {} of inet {} {}: {}",
                    index + 1,
                    step.table.nft_name(),
                    step.chain.nft_name(),
                    render::rule_text(step)
                )
            }
            Object::AnonymousSet(of) => write!(f, "anonymous set for {of}"),
            Object::SetElements(of) => write!(f, "set elements for {of}"),
        }
    }
}

/// One encoded nf_tables transaction.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The bytes sent in one `send`.
    pub bytes: Vec<u8>,
    /// Every message, in order.
    pub messages: Vec<MessageInfo>,
    /// Number of tables, chains, sets and rules created.
    pub objects: usize,
}

impl Batch {
    /// The message a reply's sequence number refers to.
    pub fn message(&self, seq: u32) -> Option<&MessageInfo> {
        self.messages.iter().find(|m| m.seq == seq)
    }
}

/// What a batch does with our tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// No table of ours exists: create only.
    Create,
    /// Replace our three tables atomically.
    Replace,
    /// Delete our tables (`remove`): the given ones are known to exist.
    Delete,
}

struct Builder {
    w: MessageWriter,
    seq: u32,
    messages: Vec<MessageInfo>,
    next_set_id: u32,
    objects: usize,
}

/// A rule's messages are 200 to 350 bytes (the default plan's batch: 8.8 KB for 24 rules,
/// the 1339-rule one: 450 KB); tables, chains and the batch markers fit in the overhead.
const RULE_BYTES: usize = 384;
const BATCH_OVERHEAD_BYTES: usize = 1024;

/// The kernel numbers anonymous sets itself (`__set0`, `__set1`, …).
const ANONYMOUS_SET_NAME: &str = "__set%d";

const NFT_TYPE: fn(u16) -> u16 = |m| (NFNL_SUBSYS_NFTABLES << 8) | m;

impl Builder {
    /// A builder sized for `rules` rules, so that the buffer is not copied as it grows.
    fn new(first_seq: u32, rules: usize) -> Builder {
        Builder {
            w: MessageWriter {
                buf: Vec::with_capacity(BATCH_OVERHEAD_BYTES + rules * RULE_BYTES),
            },
            seq: first_seq,
            messages: Vec::with_capacity(8 + rules),
            next_set_id: 1,
            objects: 0,
        }
    }

    fn message(
        &mut self,
        msg_type: u16,
        flags: u16,
        family: u8,
        res_id: u16,
        object: Object,
        body: impl FnOnce(&mut MessageWriter),
    ) {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        let offset = self.w.buf.len();
        let start = self.w.begin_message(msg_type, flags, seq, family, res_id);
        body(&mut self.w);
        self.w.end_message(start);
        self.messages.push(MessageInfo {
            seq,
            offset,
            len: self.w.buf.len() - offset,
            object,
        });
    }

    fn nft(&mut self, msg: u16, flags: u16, object: Object, body: impl FnOnce(&mut MessageWriter)) {
        self.message(
            NFT_TYPE(msg),
            NLM_F_REQUEST | flags,
            NFPROTO_INET,
            0,
            object,
            body,
        );
    }

    fn table(&mut self, name: &'static str, flags: u16) {
        self.nft(NFT_MSG_NEWTABLE, flags, Object::Table(name), |w| {
            w.attr_str(NFTA_TABLE_NAME, name);
            w.attr_u32(NFTA_TABLE_FLAGS, 0);
        });
    }

    fn delete_table(&mut self, name: &'static str) {
        self.nft(NFT_MSG_DELTABLE, 0, Object::DeleteTable(name), |w| {
            w.attr_str(NFTA_TABLE_NAME, name);
        });
    }
}

/// The `NF_INET_*` number of a hook.
pub(crate) fn hook_number(hook: crate::model::Hook) -> u32 {
    match hook {
        crate::model::Hook::Prerouting => NF_INET_PRE_ROUTING,
        crate::model::Hook::Output => NF_INET_LOCAL_OUT,
    }
}

/// Encodes `plan` (an nftables-flavoured plan) as one batch. `first_seq` keeps sequence
/// numbers unique on a socket that sends several batches.
pub fn encode(plan: &Plan, shape: Shape, first_seq: u32) -> Batch {
    let poisoned = crate::fault::active(crate::fault::Fault::LastMessage);
    encode_batch(plan, shape, first_seq, poisoned)
}

/// [`encode`], with the test-only failing last rule when `_poisoned` (fault injection).
fn encode_batch(plan: &Plan, shape: Shape, first_seq: u32, _poisoned: bool) -> Batch {
    let mut b = Builder::new(first_seq, plan.rule_count());
    b.batch_marker(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, "batch begin");
    // `add table x; delete table x` deletes whether or not x exists.
    if shape != Shape::Create {
        for table in Table::ALL {
            b.table(table.nft_name(), NLM_F_CREATE);
            b.delete_table(table.nft_name());
        }
    }
    if shape != Shape::Delete {
        let mut resolved = plan.resolve_inet();
        for table in plan.tables() {
            let exclusive = if shape == Shape::Create {
                NLM_F_EXCL
            } else {
                0
            };
            b.table(table.nft_name(), NLM_F_CREATE | exclusive);
            b.objects += 1;
            for chain in plan.chains(table) {
                b.chain(table, chain);
            }
            for rc in resolved.iter_mut().filter(|rc| rc.table == table) {
                for (i, rule) in std::mem::take(&mut rc.rules).into_iter().enumerate() {
                    b.rule(table, rc.chain, i, rule);
                }
            }
        }
        #[cfg(feature = "fault-injection")]
        if _poisoned {
            if let Some(table) = plan.tables().first() {
                let chain = plan.chains(*table)[0];
                rule_message(
                    &mut b,
                    table.nft_name(),
                    chain.nft_name(),
                    &crate::fault::nft_broken_rule(),
                    Object::Named("fault injection: jump to a missing chain"),
                );
            }
        }
    }
    b.batch_marker(NFNL_MSG_BATCH_END, NLM_F_REQUEST | NLM_F_ACK, "batch end");
    Batch {
        bytes: b.w.buf,
        messages: b.messages,
        objects: b.objects,
    }
}

impl Builder {
    /// `BATCH_BEGIN` / `BATCH_END`: nfnetlink's own messages, addressed to the subsystem.
    fn batch_marker(&mut self, msg_type: u16, flags: u16, what: &'static str) {
        self.message(
            msg_type,
            flags,
            0,
            NFNL_SUBSYS_NFTABLES,
            Object::Named(what),
            |_| {},
        );
    }

    /// `chain inet TABLE NAME { type … hook … priority …; }` (the hook part for base chains).
    fn chain(&mut self, table: Table, chain: crate::model::Chain) {
        let tname = table.nft_name();
        self.objects += 1;
        let object = Object::Chain(tname, chain.nft_name());
        self.nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE, object, |w| {
            w.attr_str(NFTA_CHAIN_TABLE, tname);
            w.attr_str(NFTA_CHAIN_NAME, chain.nft_name());
            if let Some(base) = chain.base(table) {
                let hook = w.nest_begin(NFTA_CHAIN_HOOK);
                w.attr_u32(NFTA_HOOK_HOOKNUM, hook_number(base.hook));
                w.attr_u32(NFTA_HOOK_PRIORITY, base.priority as u32);
                w.nest_end(hook);
                w.attr_str(NFTA_CHAIN_TYPE, base.kind.name());
            }
        });
    }

    /// Rule `index` (0-based) of a chain, appended, named in nft's text for error reports.
    fn rule(
        &mut self,
        table: Table,
        chain: crate::model::Chain,
        index: usize,
        rule: crate::model::Rule,
    ) {
        let exprs = lower(&rule);
        let step = crate::model::Step {
            table,
            chain,
            position: crate::model::Position::Append,
            rule,
        };
        let what = Object::Rule(Arc::new((index, step)));
        rule_message(self, table.nft_name(), chain.nft_name(), &exprs, what);
    }
}

/// `NFTA_DATA_VALUE` wrapped in the given attribute (cmp data, immediate data, set keys).
fn data_value(w: &mut MessageWriter, ty: u16, value: &[u8]) {
    let n = w.nest_begin(ty);
    w.attr(NFTA_DATA_VALUE, value);
    w.nest_end(n);
}

/// An anonymous constant set per lookup (a set can be bound to one rule only,
/// `docs/kernel-facts.md` §2.4), then the rule.
fn rule_message(b: &mut Builder, table: &str, chain: &str, exprs: &[Expr], what: Object) {
    let mut set_ids = Vec::new();
    for e in exprs {
        if let Expr::Lookup { elements, .. } = e {
            let id = b.next_set_id;
            b.next_set_id += 1;
            set_ids.push(id);
            let name = ANONYMOUS_SET_NAME;
            b.objects += 1;
            b.nft(
                NFT_MSG_NEWSET,
                NLM_F_CREATE,
                Object::AnonymousSet(Box::new(what.clone())),
                |w| {
                    w.attr_str(NFTA_SET_TABLE, table);
                    w.attr_str(NFTA_SET_NAME, name);
                    w.attr_u32(NFTA_SET_FLAGS, NFT_SET_ANONYMOUS | NFT_SET_CONSTANT);
                    w.attr_u32(NFTA_SET_KEY_TYPE, NFT_DATATYPE_INET_SERVICE);
                    w.attr_u32(NFTA_SET_KEY_LEN, elements[0].len() as u32);
                    w.attr_u32(NFTA_SET_ID, id);
                    let desc = w.nest_begin(NFTA_SET_DESC);
                    w.attr_u32(NFTA_SET_DESC_SIZE, elements.len() as u32);
                    w.nest_end(desc);
                },
            );
            b.nft(
                NFT_MSG_NEWSETELEM,
                NLM_F_CREATE,
                Object::SetElements(Box::new(what.clone())),
                |w| {
                    w.attr_str(NFTA_SET_ELEM_LIST_TABLE, table);
                    w.attr_str(NFTA_SET_ELEM_LIST_SET, name);
                    w.attr_u32(NFTA_SET_ELEM_LIST_SET_ID, id);
                    let list = w.nest_begin(NFTA_SET_ELEM_LIST_ELEMENTS);
                    for e in elements {
                        let elem = w.nest_begin(NFTA_LIST_ELEM);
                        data_value(w, NFTA_SET_ELEM_KEY, e);
                        w.nest_end(elem);
                    }
                    w.nest_end(list);
                },
            );
        }
    }
    b.objects += 1;
    b.nft(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, what, |w| {
        w.attr_str(NFTA_RULE_TABLE, table);
        w.attr_str(NFTA_RULE_CHAIN, chain);
        let list = w.nest_begin(NFTA_RULE_EXPRESSIONS);
        let mut sets = set_ids.into_iter();
        for e in exprs {
            let elem = w.nest_begin(NFTA_LIST_ELEM);
            encode_expr(w, e, &mut sets);
            w.nest_end(elem);
        }
        w.nest_end(list);
    });
}

fn expr_name(e: &Expr) -> &str {
    match e {
        Expr::Meta(_) | Expr::MetaSet(_) => "meta",
        Expr::Cmp { .. } => "cmp",
        Expr::Payload { .. } => "payload",
        Expr::Bitwise { .. } => "bitwise",
        Expr::Lookup { .. } => "lookup",
        Expr::Counter => "counter",
        Expr::Immediate(_) | Expr::Verdict(_) => "immediate",
        Expr::Redirect => "redir",
        Expr::Tproxy { .. } => "tproxy",
        Expr::CtLoad(_) | Expr::CtSet(_) => "ct",
        Expr::Other(name) => name,
    }
}

/// One expression's `NFTA_EXPR_NAME` and `NFTA_EXPR_DATA`.
// Long by design: one arm per expression kind, the mirror of `readback::decode_expr`; each
// kind's attribute numbers read best side by side, and splitting would only add indirection.
fn encode_expr(w: &mut MessageWriter, e: &Expr, sets: &mut impl Iterator<Item = u32>) {
    w.attr_str(NFTA_EXPR_NAME, expr_name(e));
    let data = w.nest_begin(NFTA_EXPR_DATA);
    match e {
        Expr::Meta(k) => {
            w.attr_u32(NFTA_META_KEY, k.number());
            w.attr_u32(NFTA_META_DREG, NFT_REG_1);
        }
        Expr::MetaSet(k) => {
            w.attr_u32(NFTA_META_KEY, k.number());
            w.attr_u32(NFTA_META_SREG, NFT_REG_1);
        }
        Expr::Cmp { op, data } => {
            w.attr_u32(NFTA_CMP_SREG, NFT_REG_1);
            w.attr_u32(
                NFTA_CMP_OP,
                if *op == CmpOp::Eq {
                    NFT_CMP_EQ
                } else {
                    NFT_CMP_NEQ
                },
            );
            data_value(w, NFTA_CMP_DATA, data);
        }
        Expr::Payload { base, offset, len } => {
            w.attr_u32(NFTA_PAYLOAD_DREG, NFT_REG_1);
            w.attr_u32(NFTA_PAYLOAD_BASE, *base);
            w.attr_u32(NFTA_PAYLOAD_OFFSET, *offset);
            w.attr_u32(NFTA_PAYLOAD_LEN, *len);
        }
        Expr::Bitwise { mask, xor } => {
            w.attr_u32(NFTA_BITWISE_SREG, NFT_REG_1);
            w.attr_u32(NFTA_BITWISE_DREG, NFT_REG_1);
            w.attr_u32(NFTA_BITWISE_LEN, mask.len() as u32);
            data_value(w, NFTA_BITWISE_MASK, mask);
            data_value(w, NFTA_BITWISE_XOR, xor);
        }
        Expr::Lookup { invert, .. } => {
            let id = sets.next().expect("a set was created for every lookup");
            w.attr_str(NFTA_LOOKUP_SET, ANONYMOUS_SET_NAME);
            w.attr_u32(NFTA_LOOKUP_SET_ID, id);
            w.attr_u32(NFTA_LOOKUP_SREG, NFT_REG_1);
            if *invert {
                w.attr_u32(NFTA_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
            }
        }
        // Like nft: no initial values, the kernel starts at zero.
        Expr::Counter => {}
        Expr::Immediate(value) => {
            w.attr_u32(NFTA_IMMEDIATE_DREG, NFT_REG_1);
            data_value(w, NFTA_IMMEDIATE_DATA, value);
        }
        Expr::Verdict(v) => {
            w.attr_u32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
            let data = w.nest_begin(NFTA_IMMEDIATE_DATA);
            let verdict = w.nest_begin(NFTA_DATA_VERDICT);
            let (code, chain) = match v {
                Verdict::Accept => (NF_ACCEPT, None),
                Verdict::Drop => (NF_DROP, None),
                Verdict::Return => (NFT_RETURN, None),
                Verdict::Jump(c) => (NFT_JUMP, Some(c.as_ref())),
            };
            w.attr_u32(NFTA_VERDICT_CODE, code as u32);
            if let Some(c) = chain {
                w.attr_str(NFTA_VERDICT_CHAIN, c);
            }
            w.nest_end(verdict);
            w.nest_end(data);
        }
        Expr::Redirect => {
            // nft sends only the minimum; the kernel uses it as the maximum too.
            w.attr_u32(NFTA_REDIR_REG_PROTO_MIN, NFT_REG_1);
            w.attr_u32(NFTA_REDIR_FLAGS, NF_NAT_RANGE_PROTO_SPECIFIED);
        }
        Expr::Tproxy { family } => {
            w.attr_u32(NFTA_TPROXY_FAMILY, *family as u32);
            w.attr_u32(NFTA_TPROXY_REG_PORT, NFT_REG_1);
        }
        Expr::CtLoad(key) => {
            w.attr_u32(NFTA_CT_KEY, *key);
            w.attr_u32(NFTA_CT_DREG, NFT_REG_1);
        }
        Expr::CtSet(key) => {
            w.attr_u32(NFTA_CT_KEY, *key);
            w.attr_u32(NFTA_CT_SREG, NFT_REG_1);
        }
        // Only ever decoded from the kernel, never produced by `lower`.
        Expr::Other(_) => {}
    }
    w.nest_end(data);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GroupFile;
    use crate::model::{build, Flavor};
    use crate::netlink::wire::messages;
    use crate::nft::readback::decode_batch_rules;

    fn plan(flags: &[&str]) -> Plan {
        let raw = crate::cli::raw_config(flags, &|_| None).unwrap();
        build(
            &raw.validate(&GroupFile::default()).unwrap(),
            Flavor::Nftables,
        )
    }

    fn types(batch: &Batch) -> Vec<(u16, u16)> {
        messages(&batch.bytes)
            .map(|m| (m.msg_type, m.flags))
            .collect()
    }

    #[test]
    fn a_create_batch_only_creates_and_asks_only_for_the_commit_ack() {
        let b = encode(&plan(&[]), Shape::Create, 100);
        let t = types(&b);
        assert_eq!(t.first().unwrap().0, NFNL_MSG_BATCH_BEGIN);
        assert_eq!(t.last().unwrap().0, NFNL_MSG_BATCH_END);
        let body = &t[1..t.len() - 1];
        assert!(body
            .iter()
            .all(|(ty, flags)| ty & 0xff != NFT_MSG_DELTABLE && flags & NLM_F_ACK == 0));
        assert_ne!(
            t.last().unwrap().1 & NLM_F_ACK,
            0,
            "BATCH_END asks for the commit's ACK"
        );
        let table = body
            .iter()
            .find(|(ty, _)| ty & 0xff == NFT_MSG_NEWTABLE)
            .unwrap();
        assert_ne!(
            table.1 & NLM_F_EXCL,
            0,
            "a fresh create refuses to reuse a table"
        );
        assert!(body
            .iter()
            .filter(|(ty, _)| ty & 0xff == NFT_MSG_NEWRULE)
            .all(|(_, f)| f & NLM_F_APPEND != 0));
        let seqs: std::collections::HashSet<u32> = b.messages.iter().map(|m| m.seq).collect();
        assert_eq!(seqs.len(), b.messages.len(), "sequence numbers are unique");
        assert_eq!(b.messages[0].seq, 100);
    }

    #[test]
    fn a_replace_batch_drops_all_three_tables_first() {
        let b = encode(&plan(&[]), Shape::Replace, 1);
        let t = types(&b);
        let deletes = t
            .iter()
            .filter(|(ty, _)| ty & 0xff == NFT_MSG_DELTABLE)
            .count();
        assert_eq!(deletes, 3);
        let first_rule = t
            .iter()
            .position(|(ty, _)| ty & 0xff == NFT_MSG_NEWRULE)
            .unwrap();
        let last_delete = t
            .iter()
            .rposition(|(ty, _)| ty & 0xff == NFT_MSG_DELTABLE)
            .unwrap();
        assert!(last_delete < first_rule);
    }

    #[test]
    fn decoding_the_batch_gives_back_every_lowered_rule_in_order() {
        for settings in [
            vec![],
            vec![
                "-m",
                "TPROXY",
                "--ipv6=true",
                "--redirect-dns=true",
                "--capture-all-dns=true",
            ],
            vec![
                "-i",
                "10.0.0.0/8,10.128.0.0/9,fd00::/7,0.0.0.0/0",
                "--ipv6=true",
            ],
        ] {
            let p = plan(&settings);
            let b = encode(&p, Shape::Create, 1);
            let decoded = decode_batch_rules(&b.bytes);
            let expected: Vec<(String, Vec<Expr>)> = p
                .resolve_inet()
                .iter()
                .flat_map(|rc| {
                    rc.rules.iter().map(move |r| {
                        (
                            rc.chain.nft_name().to_string(),
                            lower(r).iter().map(Expr::normalized).collect(),
                        )
                    })
                })
                .collect();
            let decoded: Vec<(String, Vec<Expr>)> = decoded
                .into_iter()
                .map(|(c, e)| (c, e.iter().map(Expr::normalized).collect()))
                .collect();
            assert_eq!(decoded, expected, "{settings:?}");
        }
    }

    #[cfg(feature = "fault-injection")]
    #[test]
    fn fault_injection_adds_one_failing_rule_at_the_end() {
        let b = encode_batch(&plan(&[]), Shape::Create, 1, true);
        let last = &b.messages[b.messages.len() - 2];
        assert!(last.object.to_string().contains("fault injection"));
    }
}
