//! nf_tables in memory. A batch is interpreted message by message on a copy of the state
//! and committed only if no message was refused, as the kernel's transaction does; dumps
//! answer with the attributes the kernel sends (`NFTA_TABLE_NAME` and `_FLAGS`,
//! `NFTA_CHAIN_HOOK`, `_TYPE`, `_POLICY` and `_FLAGS`, the rule's expression list with
//! lookups naming their set), so `crate::nft::readback` decodes them unchanged.
//!
//! To change the state as another tool would (`nft add chain … { policy drop; }`, a table
//! made dormant), use [`NftState::chain_mut`] and [`NftState::table_mut`].

use super::{Call, State};
use crate::kernel::{NfDump, NfTables};
use crate::netlink::error::{ErrorReply, ExtAck};
use crate::netlink::wire::{attrs, find_attr, messages, Attr, MessageWriter, NFGENMSG_LEN};
use crate::nft::abi::*;
use crate::nft::batch::Batch;
use crate::nft::socket::{refusal, NetlinkError};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// A base chain's hook: number, priority, type, policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// `NF_INET_*` hook number.
    pub hooknum: u32,
    /// Priority.
    pub priority: i32,
    /// `nat`, `filter`, `route`.
    pub kind: String,
    /// `NF_ACCEPT` or `NF_DROP`: the kernel's default is accept when the creating message
    /// names none (ours never does).
    pub policy: u32,
}

/// One chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeChain {
    /// Name.
    pub name: String,
    /// `Some` for a base chain.
    pub hook: Option<Hook>,
}

/// One rule: its chain and its expression list as the kernel would dump it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeRule {
    /// The chain it is in.
    pub chain: String,
    /// The body of `NFTA_RULE_EXPRESSIONS`.
    pub expressions: Vec<u8>,
}

/// One `inet` table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeTable {
    /// Name.
    pub name: String,
    /// `NFTA_TABLE_FLAGS` (`NFT_TABLE_F_DORMANT`, …).
    pub flags: u32,
    /// Chains in creation order.
    pub chains: Vec<FakeChain>,
    /// Anonymous sets by kernel-assigned name, with their keys.
    pub sets: Vec<(String, Vec<Vec<u8>>)>,
    /// Rules in order (all chains).
    pub rules: Vec<FakeRule>,
}

/// The nf_tables state of a fake namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NftState {
    /// Tables in creation order.
    pub tables: Vec<FakeTable>,
    /// Batches committed.
    pub committed: usize,
    next_set: u32,
}

impl NftState {
    /// A table by name.
    pub fn table(&self, name: &str) -> Option<&FakeTable> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// A table by name, to change it as another tool would.
    pub fn table_mut(&mut self, name: &str) -> Option<&mut FakeTable> {
        self.tables.iter_mut().find(|t| t.name == name)
    }

    /// A chain of a table by name, to change it as another tool would (its hook, priority,
    /// type or policy).
    pub fn chain_mut(&mut self, table: &str, chain: &str) -> Option<&mut FakeChain> {
        self.table_mut(table)?
            .chains
            .iter_mut()
            .find(|c| c.name == chain)
    }

    /// Names of the tables, in creation order.
    pub fn names(&self) -> Vec<String> {
        self.tables.iter().map(|t| t.name.clone()).collect()
    }
}

fn str_attr(body: &[u8], ty: u16) -> String {
    find_attr(body, ty)
        .and_then(|a| a.str())
        .unwrap_or_default()
        .to_string()
}

/// One message of a batch applied to `state`; `Err(errno)` refuses it.
fn apply_message(
    state: &mut NftState,
    msg: u16,
    flags: u16,
    body: &[u8],
    set_ids: &mut HashMap<u32, String>,
) -> Result<(), i32> {
    match msg {
        NFT_MSG_NEWTABLE => new_table(state, flags, body),
        NFT_MSG_DELTABLE => {
            let name = str_attr(body, NFTA_TABLE_NAME);
            let i = state.tables.iter().position(|t| t.name == name);
            state.tables.remove(i.ok_or(libc::ENOENT)?);
            Ok(())
        }
        NFT_MSG_NEWCHAIN => new_chain(state, body),
        NFT_MSG_NEWSET => {
            let name = format!("__set{}", state.next_set);
            state.next_set += 1;
            let table = table_of(state, body, NFTA_SET_TABLE)?;
            let id = find_attr(body, NFTA_SET_ID)
                .and_then(|a| a.u32_be())
                .unwrap_or(0);
            set_ids.insert(id, name.clone());
            table.sets.push((name, Vec::new()));
            Ok(())
        }
        NFT_MSG_NEWSETELEM => new_set_elements(state, body, set_ids),
        NFT_MSG_NEWRULE => new_rule(state, body, set_ids),
        _ => Err(libc::EOPNOTSUPP),
    }
}

/// The table a message names in attribute `ty` (`ENOENT` when it does not exist).
fn table_of<'s>(state: &'s mut NftState, body: &[u8], ty: u16) -> Result<&'s mut FakeTable, i32> {
    state.table_mut(&str_attr(body, ty)).ok_or(libc::ENOENT)
}

/// `NEWTABLE`: creates the table, or updates an existing one's flags when the message
/// names them (as the kernel does: `add table` of an existing dormant table with flags 0
/// wakes it).
fn new_table(state: &mut NftState, flags: u16, body: &[u8]) -> Result<(), i32> {
    let name = str_attr(body, NFTA_TABLE_NAME);
    let table_flags = find_attr(body, NFTA_TABLE_FLAGS).and_then(|a| a.u32_be());
    match state.table_mut(&name) {
        Some(_) if flags & NLM_F_EXCL != 0 => Err(libc::EEXIST),
        Some(t) => {
            if let Some(f) = table_flags {
                t.flags = f;
            }
            Ok(())
        }
        None => {
            state.tables.push(FakeTable {
                name,
                flags: table_flags.unwrap_or(0),
                ..FakeTable::default()
            });
            Ok(())
        }
    }
}

/// `NEWCHAIN`: creates the chain (a base chain's policy defaults to accept), or updates an
/// existing one as the kernel does: the policy may change, the hook, priority and type may
/// not (`EEXIST`).
fn new_chain(state: &mut NftState, body: &[u8]) -> Result<(), i32> {
    let table = table_of(state, body, NFTA_CHAIN_TABLE)?;
    let name = str_attr(body, NFTA_CHAIN_NAME);
    let u32_of = |h: &Attr<'_>, ty| h.find(ty).and_then(|a| a.u32_be()).unwrap_or(0);
    let policy = find_attr(body, NFTA_CHAIN_POLICY).and_then(|a| a.u32_be());
    let hook = find_attr(body, NFTA_CHAIN_HOOK).map(|h| Hook {
        hooknum: u32_of(&h, NFTA_HOOK_HOOKNUM),
        priority: u32_of(&h, NFTA_HOOK_PRIORITY) as i32,
        kind: str_attr(body, NFTA_CHAIN_TYPE),
        policy: policy.unwrap_or(NF_ACCEPT as u32),
    });
    match table.chains.iter_mut().find(|c| c.name == name) {
        None => table.chains.push(FakeChain { name, hook }),
        Some(existing) => match (&mut existing.hook, hook) {
            (Some(old), Some(new)) => {
                let same = (old.hooknum, old.priority, &old.kind)
                    == (new.hooknum, new.priority, &new.kind);
                if !same {
                    return Err(libc::EEXIST);
                }
                if let Some(p) = policy {
                    old.policy = p;
                }
            }
            (None, Some(_)) => return Err(libc::EEXIST),
            (Some(old), None) => {
                if let Some(p) = policy {
                    old.policy = p;
                }
            }
            (None, None) => {}
        },
    }
    Ok(())
}

fn new_set_elements(
    state: &mut NftState,
    body: &[u8],
    set_ids: &HashMap<u32, String>,
) -> Result<(), i32> {
    let id = find_attr(body, NFTA_SET_ELEM_LIST_SET_ID).and_then(|a| a.u32_be());
    let name = id.and_then(|id| set_ids.get(&id)).ok_or(libc::ENOENT)?;
    let table = table_of(state, body, NFTA_SET_ELEM_LIST_TABLE)?;
    let set = table
        .sets
        .iter_mut()
        .find(|s| &s.0 == name)
        .ok_or(libc::ENOENT)?;
    if let Some(list) = find_attr(body, NFTA_SET_ELEM_LIST_ELEMENTS) {
        set.1.extend(list.nested().filter_map(|e| {
            let key = e.find(NFTA_SET_ELEM_KEY)?.find(NFTA_DATA_VALUE)?;
            Some(key.value.to_vec())
        }));
    }
    Ok(())
}

fn new_rule(state: &mut NftState, body: &[u8], set_ids: &HashMap<u32, String>) -> Result<(), i32> {
    let table = table_of(state, body, NFTA_RULE_TABLE)?;
    let chain = str_attr(body, NFTA_RULE_CHAIN);
    let known = |c: &str| table.chains.iter().any(|x| x.name == c);
    if !known(&chain) {
        return Err(libc::ENOENT);
    }
    let list = find_attr(body, NFTA_RULE_EXPRESSIONS).ok_or(libc::EINVAL)?;
    // A jump to a chain that does not exist is refused (what fault injection relies on).
    if jump_targets(list).iter().any(|t| !known(t)) {
        return Err(libc::ENOENT);
    }
    let expressions = name_lookup_sets(list, set_ids);
    table.rules.push(FakeRule { chain, expressions });
    Ok(())
}

/// Chains the rule's verdicts jump to.
fn jump_targets(list: Attr<'_>) -> Vec<String> {
    list.nested()
        .filter_map(|e| {
            let v = e
                .find(NFTA_EXPR_DATA)?
                .find(NFTA_IMMEDIATE_DATA)?
                .find(NFTA_DATA_VERDICT)?;
            Some(v.find(NFTA_VERDICT_CHAIN)?.str()?.to_string())
        })
        .collect()
}

/// The expression list as the kernel dumps it: lookups name their set (`__set3`) instead
/// of the batch-local set id.
fn name_lookup_sets(list: Attr<'_>, set_ids: &HashMap<u32, String>) -> Vec<u8> {
    let mut w = MessageWriter::default();
    for elem in list.nested() {
        let is_lookup = elem.find(NFTA_EXPR_NAME).and_then(|a| a.str()) == Some("lookup");
        let e = w.nest_begin(NFTA_LIST_ELEM);
        match elem.find(NFTA_EXPR_DATA) {
            Some(data) if is_lookup => {
                w.attr_str(NFTA_EXPR_NAME, "lookup");
                let d = w.nest_begin(NFTA_EXPR_DATA);
                let id = data.find(NFTA_LOOKUP_SET_ID).and_then(|a| a.u32_be());
                let name = id
                    .and_then(|id| set_ids.get(&id))
                    .cloned()
                    .unwrap_or_default();
                w.attr_str(NFTA_LOOKUP_SET, &name);
                for a in attrs(data.value) {
                    if a.ty != NFTA_LOOKUP_SET && a.ty != NFTA_LOOKUP_SET_ID {
                        w.attr(a.ty, a.value);
                    }
                }
                w.nest_end(d);
            }
            _ => w.buf.extend_from_slice(elem.value),
        }
        w.nest_end(e);
    }
    w.buf
}

/// A fake nf_tables socket.
#[derive(Debug)]
pub struct FakeNfSocket {
    state: Rc<RefCell<State>>,
    next_seq: u32,
}

impl FakeNfSocket {
    pub(crate) fn new(state: Rc<RefCell<State>>) -> FakeNfSocket {
        FakeNfSocket { state, next_seq: 1 }
    }
}

fn reject(batch: &Batch, seq: u32, errno: i32) -> crate::nft::socket::KernelError {
    refusal(
        batch,
        ErrorReply {
            errno,
            seq,
            ext: ExtAck::default(),
        },
    )
}

impl NfTables for FakeNfSocket {
    fn reserve_seqs(&mut self, count: usize) -> u32 {
        let first = self.next_seq;
        self.next_seq += count as u32 + 1;
        first
    }

    fn send_batch(&mut self, batch: &Batch) -> Result<(), NetlinkError> {
        let mut s = self.state.borrow_mut();
        if let Err(e) = s.enter(Call::NfBatch) {
            let seq = batch.messages.get(1).map(|m| m.seq).unwrap_or(0);
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            return Err(NetlinkError::Rejected(vec![reject(batch, seq, errno)]));
        }
        let mut next = s.nft.clone();
        let mut set_ids = HashMap::new();
        let mut errors = Vec::new();
        for m in messages(&batch.bytes) {
            if m.msg_type >> 8 != NFNL_SUBSYS_NFTABLES {
                continue; // BATCH_BEGIN / BATCH_END
            }
            let body = m.payload.get(NFGENMSG_LEN..).unwrap_or_default();
            if let Err(errno) =
                apply_message(&mut next, m.msg_type & 0xff, m.flags, body, &mut set_ids)
            {
                errors.push(reject(batch, m.seq, errno));
            }
        }
        if !errors.is_empty() {
            return Err(NetlinkError::Rejected(errors));
        }
        next.committed += 1;
        s.nft = next;
        Ok(())
    }

    fn dump(&mut self, request: NfDump<'_>) -> Result<Vec<Vec<u8>>, NetlinkError> {
        let mut s = self.state.borrow_mut();
        s.enter(Call::NfDump).map_err(NetlinkError::Dump)?;
        let one = |f: &dyn Fn(&mut MessageWriter)| {
            let mut w = MessageWriter::default();
            f(&mut w);
            w.buf
        };
        let tables = &s.nft.tables;
        Ok(match request {
            NfDump::Tables => tables
                .iter()
                .map(|t| {
                    one(&|w| {
                        w.attr_str(NFTA_TABLE_NAME, &t.name);
                        w.attr_u32(NFTA_TABLE_FLAGS, t.flags);
                    })
                })
                .collect(),
            NfDump::Chains => tables
                .iter()
                .flat_map(|t| t.chains.iter().map(move |c| (t, c)))
                .map(|(t, c)| one(&|w| chain_reply(w, &t.name, c)))
                .collect(),
            NfDump::Sets => tables
                .iter()
                .flat_map(|t| t.sets.iter().map(move |s| (t, s)))
                .map(|(t, (name, _))| {
                    one(&|w| {
                        w.attr_str(NFTA_SET_TABLE, &t.name);
                        w.attr_str(NFTA_SET_NAME, name);
                    })
                })
                .collect(),
            NfDump::SetElements { table, set } => {
                let keys = tables
                    .iter()
                    .find(|t| t.name == table)
                    .and_then(|t| t.sets.iter().find(|s| s.0 == set))
                    .ok_or_else(|| {
                        NetlinkError::Dump(std::io::Error::from_raw_os_error(libc::ENOENT))
                    })?;
                vec![one(&|w| {
                    w.attr_str(NFTA_SET_ELEM_LIST_TABLE, table);
                    w.attr_str(NFTA_SET_ELEM_LIST_SET, set);
                    let list = w.nest_begin(NFTA_SET_ELEM_LIST_ELEMENTS);
                    for k in &keys.1 {
                        let e = w.nest_begin(NFTA_LIST_ELEM);
                        let key = w.nest_begin(NFTA_SET_ELEM_KEY);
                        w.attr(NFTA_DATA_VALUE, k);
                        w.nest_end(key);
                        w.nest_end(e);
                    }
                    w.nest_end(list);
                })]
            }
            NfDump::Rules { table } => tables
                .iter()
                .filter(|t| t.name == table)
                .flat_map(|t| t.rules.iter())
                .map(|r| {
                    one(&|w| {
                        w.attr_str(NFTA_RULE_TABLE, table);
                        w.attr_str(NFTA_RULE_CHAIN, &r.chain);
                        let list = w.nest_begin(NFTA_RULE_EXPRESSIONS);
                        w.buf.extend_from_slice(&r.expressions);
                        w.nest_end(list);
                    })
                })
                .collect(),
        })
    }
}

fn chain_reply(w: &mut MessageWriter, table: &str, c: &FakeChain) {
    w.attr_str(NFTA_CHAIN_TABLE, table);
    w.attr_str(NFTA_CHAIN_NAME, &c.name);
    if let Some(h) = &c.hook {
        let n = w.nest_begin(NFTA_CHAIN_HOOK);
        w.attr_u32(NFTA_HOOK_HOOKNUM, h.hooknum);
        w.attr_u32(NFTA_HOOK_PRIORITY, h.priority as u32);
        w.nest_end(n);
        w.attr_u32(NFTA_CHAIN_POLICY, h.policy);
        w.attr_str(NFTA_CHAIN_TYPE, &h.kind);
        w.attr_u32(NFTA_CHAIN_FLAGS, NFT_CHAIN_BASE);
    }
}
