//! Reading our tables back from the kernel: tables, chains, rules and the anonymous sets
//! their lookups use, decoded into the same [`Expr`] IR the encoder writes.

use super::abi::*;
use super::expr::{data, CmpOp, Data, Expr, MetaKey, Verdict};
use super::socket::NetlinkError;
use crate::kernel::{NfDump, NfTables};
use crate::netlink::wire::{attrs, find_attr, Attr};
use std::collections::HashMap;

/// A base chain's hook as the kernel reports it: every attribute that decides which
/// packets the chain sees and what happens to those no rule decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseSpec {
    /// `NF_INET_*` hook number.
    pub hook: u32,
    /// Priority.
    pub priority: i32,
    /// Chain type (`nat`, `filter`, `route`).
    pub kind: String,
    /// `NFTA_CHAIN_POLICY`: the verdict for packets no rule decides (`NF_ACCEPT`,
    /// `NF_DROP`); `None` when the kernel did not report one.
    pub policy: Option<u32>,
    /// Devices of an `ingress` hook (`NFTA_HOOK_DEV`, `NFTA_HOOK_DEVS`); empty otherwise.
    pub devices: Vec<String>,
}

/// A chain read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelChain {
    /// Name.
    pub name: String,
    /// `Some` for a base chain.
    pub base: Option<BaseSpec>,
    /// `NFTA_CHAIN_FLAGS` (`NFT_CHAIN_BASE` for a base chain; 0 when not reported).
    pub flags: u32,
    /// Its rules' expressions, in order.
    pub rules: Vec<Vec<Expr>>,
}

/// An `inet` table read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelTable {
    /// Name.
    pub name: String,
    /// `NFTA_TABLE_FLAGS` (`NFT_TABLE_F_DORMANT`, `_OWNER`, `_PERSIST`; 0 when not reported).
    pub flags: u32,
    /// Its chains.
    pub chains: Vec<KernelChain>,
}

/// The `inet` tables that exist in the socket's namespace: name and flags.
fn table_list(sock: &mut impl NfTables) -> Result<Vec<(String, u32)>, NetlinkError> {
    let replies = sock.dump(NfDump::Tables)?;
    Ok(replies
        .iter()
        .filter_map(|r| {
            let name = find_attr(r, NFTA_TABLE_NAME).and_then(|a| a.str())?;
            let flags = find_attr(r, NFTA_TABLE_FLAGS)
                .and_then(|a| a.u32_be())
                .unwrap_or(0);
            Some((name.to_string(), flags))
        })
        .collect())
}

/// Names of the `inet` tables that exist in the socket's namespace.
pub fn inet_tables(sock: &mut impl NfTables) -> Result<Vec<String>, NetlinkError> {
    Ok(table_list(sock)?.into_iter().map(|(n, _)| n).collect())
}

/// Reads the named `inet` tables (those that exist) with all their chains and rules.
pub fn read_tables(
    sock: &mut impl NfTables,
    wanted: &[&str],
) -> Result<Vec<KernelTable>, NetlinkError> {
    let existing = table_list(sock)?;
    let names: Vec<(&str, u32)> = wanted
        .iter()
        .filter_map(|w| existing.iter().find(|e| e.0 == *w).map(|e| (*w, e.1)))
        .collect();
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let chain_replies = sock.dump(NfDump::Chains)?;
    let set_replies = sock.dump(NfDump::Sets)?;
    let mut tables = Vec::new();
    for (table, flags) in names {
        let sets = set_elements(sock, table, &set_replies)?;
        let mut chains: Vec<KernelChain> = chain_replies
            .iter()
            .filter(|c| find_attr(c, NFTA_CHAIN_TABLE).and_then(|a| a.str()) == Some(table))
            .map(|c| decode_chain(c))
            .collect();
        for r in &sock.dump(NfDump::Rules { table })? {
            if find_attr(r, NFTA_RULE_TABLE).and_then(|a| a.str()) != Some(table) {
                continue;
            }
            let chain = find_attr(r, NFTA_RULE_CHAIN)
                .and_then(|a| a.str())
                .unwrap_or_default();
            let exprs = find_attr(r, NFTA_RULE_EXPRESSIONS)
                .map(|list| list.nested().map(|e| decode_expr(e, &sets)).collect())
                .unwrap_or_default();
            if let Some(c) = chains.iter_mut().find(|c| c.name == chain) {
                c.rules.push(exprs);
            }
        }
        tables.push(KernelTable {
            name: table.to_string(),
            flags,
            chains,
        });
    }
    Ok(tables)
}

/// Elements of every set of `table`, by the set's (kernel-assigned) name.
fn set_elements(
    sock: &mut impl NfTables,
    table: &str,
    set_replies: &[Vec<u8>],
) -> Result<HashMap<String, Vec<Data>>, NetlinkError> {
    let mut sets = HashMap::new();
    for s in set_replies {
        if find_attr(s, NFTA_SET_TABLE).and_then(|a| a.str()) != Some(table) {
            continue;
        }
        let Some(set) = find_attr(s, NFTA_SET_NAME).and_then(|a| a.str()) else {
            continue;
        };
        let mut keys = Vec::new();
        for e in &sock.dump(NfDump::SetElements { table, set })? {
            if let Some(list) = find_attr(e, NFTA_SET_ELEM_LIST_ELEMENTS) {
                keys.extend(list.nested().filter_map(|elem| element_key(&elem)));
            }
        }
        sets.insert(set.to_string(), keys);
    }
    Ok(sets)
}

/// A `GETCHAIN` reply: name, flags, and for a base chain its hook, priority, type, policy
/// and devices.
fn decode_chain(c: &[u8]) -> KernelChain {
    KernelChain {
        name: find_attr(c, NFTA_CHAIN_NAME)
            .and_then(|a| a.str())
            .unwrap_or_default()
            .to_string(),
        base: find_attr(c, NFTA_CHAIN_HOOK).map(|h| BaseSpec {
            hook: reg_u32(&h, NFTA_HOOK_HOOKNUM).unwrap_or(u32::MAX),
            priority: reg_u32(&h, NFTA_HOOK_PRIORITY).unwrap_or(0) as i32,
            kind: find_attr(c, NFTA_CHAIN_TYPE)
                .and_then(|a| a.str())
                .unwrap_or_default()
                .to_string(),
            policy: find_attr(c, NFTA_CHAIN_POLICY).and_then(|a| a.u32_be()),
            devices: hook_devices(&h),
        }),
        flags: find_attr(c, NFTA_CHAIN_FLAGS)
            .and_then(|a| a.u32_be())
            .unwrap_or(0),
        rules: Vec::new(),
    }
}

/// The devices of a hook: one `NFTA_HOOK_DEV`, or the `NFTA_HOOK_DEVS` list.
fn hook_devices(h: &Attr<'_>) -> Vec<String> {
    let mut devices: Vec<String> = h
        .find(NFTA_HOOK_DEV)
        .and_then(|d| d.str())
        .map(|d| vec![d.to_string()])
        .unwrap_or_default();
    if let Some(list) = h.find(NFTA_HOOK_DEVS) {
        devices.extend(
            list.nested()
                .filter(|d| d.ty == NFTA_DEVICE_NAME)
                .filter_map(|d| d.str().map(str::to_string)),
        );
    }
    devices
}

fn reg_u32(a: &Attr<'_>, ty: u16) -> Option<u32> {
    a.find(ty).and_then(|x| x.u32_be())
}

/// The key of one `NFTA_LIST_ELEM` of a set's element list.
fn element_key(elem: &Attr<'_>) -> Option<Data> {
    elem.find(NFTA_SET_ELEM_KEY)
        .and_then(|k| k.find(NFTA_DATA_VALUE))
        .map(|v| data(v.value))
}

fn data_value(a: &Attr<'_>, ty: u16) -> Data {
    a.find(ty)
        .and_then(|d| d.find(NFTA_DATA_VALUE))
        .map(|v| data(v.value))
        .unwrap_or_default()
}

/// Decodes one `NFTA_LIST_ELEM` of a rule; anything we never write becomes `Other`.
// Long by design: one arm per expression kind, the mirror of `batch::encode_expr`; each
// kind's attribute numbers read best side by side, and splitting would only add indirection.
pub fn decode_expr(elem: Attr<'_>, sets: &HashMap<String, Vec<Data>>) -> Expr {
    let name = elem
        .find(NFTA_EXPR_NAME)
        .and_then(|a| a.str())
        .unwrap_or_default()
        .to_string();
    let Some(data) = elem.find(NFTA_EXPR_DATA) else {
        return if name == "counter" {
            Expr::Counter
        } else {
            Expr::Other(name)
        };
    };
    let other = || Expr::Other(name.clone());
    match name.as_str() {
        "meta" => {
            let Some(key) = reg_u32(&data, NFTA_META_KEY).and_then(MetaKey::from_number) else {
                return other();
            };
            if data.find(NFTA_META_SREG).is_some() {
                Expr::MetaSet(key)
            } else {
                Expr::Meta(key)
            }
        }
        "cmp" => {
            let op = match reg_u32(&data, NFTA_CMP_OP) {
                Some(NFT_CMP_EQ) => CmpOp::Eq,
                Some(NFT_CMP_NEQ) => CmpOp::Neq,
                _ => return other(),
            };
            Expr::Cmp {
                op,
                data: data_value(&data, NFTA_CMP_DATA),
            }
        }
        "payload" => Expr::Payload {
            base: reg_u32(&data, NFTA_PAYLOAD_BASE).unwrap_or(u32::MAX),
            offset: reg_u32(&data, NFTA_PAYLOAD_OFFSET).unwrap_or(u32::MAX),
            len: reg_u32(&data, NFTA_PAYLOAD_LEN).unwrap_or(u32::MAX),
        },
        "bitwise" => Expr::Bitwise {
            mask: data_value(&data, NFTA_BITWISE_MASK),
            xor: data_value(&data, NFTA_BITWISE_XOR),
        },
        "lookup" => {
            let set = data
                .find(NFTA_LOOKUP_SET)
                .and_then(|a| a.str())
                .unwrap_or_default();
            let mut elements = sets.get(set).cloned().unwrap_or_default();
            elements.sort();
            Expr::Lookup {
                elements,
                invert: reg_u32(&data, NFTA_LOOKUP_FLAGS).unwrap_or(0) & NFT_LOOKUP_F_INV != 0,
            }
        }
        "counter" => Expr::Counter,
        "immediate" => {
            if reg_u32(&data, NFTA_IMMEDIATE_DREG) == Some(NFT_REG_VERDICT) {
                let Some(v) = data
                    .find(NFTA_IMMEDIATE_DATA)
                    .and_then(|d| d.find(NFTA_DATA_VERDICT))
                else {
                    return other();
                };
                let code = reg_u32(&v, NFTA_VERDICT_CODE).map(|c| c as i32);
                let chain = v
                    .find(NFTA_VERDICT_CHAIN)
                    .and_then(|c| c.str())
                    .unwrap_or_default()
                    .to_string();
                match code {
                    Some(NF_ACCEPT) => Expr::Verdict(Verdict::Accept),
                    Some(NF_DROP) => Expr::Verdict(Verdict::Drop),
                    Some(NFT_RETURN) => Expr::Verdict(Verdict::Return),
                    Some(NFT_JUMP) => Expr::Verdict(Verdict::Jump(chain.into())),
                    _ => other(),
                }
            } else {
                Expr::Immediate(data_value(&data, NFTA_IMMEDIATE_DATA))
            }
        }
        "redir" => Expr::Redirect,
        "tproxy" => Expr::Tproxy {
            family: reg_u32(&data, NFTA_TPROXY_FAMILY).unwrap_or(0) as u8,
        },
        "ct" => {
            let Some(key) = reg_u32(&data, NFTA_CT_KEY) else {
                return other();
            };
            if data.find(NFTA_CT_SREG).is_some() {
                Expr::CtSet(key)
            } else {
                Expr::CtLoad(key)
            }
        }
        _ => other(),
    }
}

/// Decodes the expressions of NEWRULE messages in a batch we built (used by tests and
/// benchmarks to check the encoder without a kernel).
pub fn decode_batch_rules(batch: &[u8]) -> Vec<(String, Vec<Expr>)> {
    let mut sets: HashMap<u32, Vec<Data>> = HashMap::new();
    let mut out = Vec::new();
    for m in crate::netlink::wire::messages(batch) {
        let body = m
            .payload
            .get(crate::netlink::wire::NFGENMSG_LEN..)
            .unwrap_or_default();
        match m.msg_type & 0xff {
            t if t == NFT_MSG_NEWSETELEM && m.msg_type >> 8 == NFNL_SUBSYS_NFTABLES => {
                let id = find_attr(body, NFTA_SET_ELEM_LIST_SET_ID)
                    .and_then(|a| a.u32_be())
                    .unwrap_or(0);
                let mut keys: Vec<Data> = find_attr(body, NFTA_SET_ELEM_LIST_ELEMENTS)
                    .map(|l| l.nested().filter_map(|e| element_key(&e)).collect())
                    .unwrap_or_default();
                keys.sort();
                sets.insert(id, keys);
            }
            t if t == NFT_MSG_NEWRULE && m.msg_type >> 8 == NFNL_SUBSYS_NFTABLES => {
                let chain = find_attr(body, NFTA_RULE_CHAIN)
                    .and_then(|a| a.str())
                    .unwrap_or_default()
                    .to_string();
                let exprs = find_attr(body, NFTA_RULE_EXPRESSIONS)
                    .map(|list| {
                        list.nested()
                            .map(|e| {
                                // Lookups in our own batch name the set by id.
                                let id = e
                                    .find(NFTA_EXPR_DATA)
                                    .and_then(|d| d.find(NFTA_LOOKUP_SET_ID))
                                    .and_then(|a| a.u32_be());
                                let named: HashMap<String, Vec<Data>> = id
                                    .and_then(|id| sets.get(&id))
                                    .map(|k| {
                                        [("__set%d".to_string(), k.clone())].into_iter().collect()
                                    })
                                    .unwrap_or_default();
                                decode_expr(e, &named)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push((chain, exprs));
            }
            _ => {}
        }
    }
    let _ = attrs; // keep the import used in all cfgs
    out
}
