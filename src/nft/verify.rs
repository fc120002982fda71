//! Comparing what the kernel holds with what the plan says, as a readable diff:
//!
//! ```text
//! table inet istio-proxy-nat, chain istio-output: missing rule 4: skuid 1337 counter return
//! table inet istio-proxy-nat, chain istio-output: unexpected rule 4: skgid 1337 counter return
//! table inet istio-proxy-nat, chain istio-output: unexpected rule 5: [meta load skuid] [cmp eq 0x39050000] [limit …] [counter] [return]
//! table inet istio-proxy-nat, chain output: expected type nat hook output priority -100 policy accept, found type nat hook output priority -100 policy drop
//! table inet istio-proxy-nat: expected no flags, found flags dormant
//! ```
//!
//! Everything the kernel reports about our tables and chains that changes what they do is
//! compared: table flags (a dormant table sees no packet), each base chain's type, hook,
//! priority, policy and devices, chain flags, and every rule. Handles, use counts and
//! comments (`NFTA_*_USERDATA`) are not: they change no packet's fate.
//!
//! Missing and unexpected rules are both shown in nft syntax ([`render::rule_text`]): an
//! unexpected rule is lifted back to the model ([`super::lift`]); one the model cannot
//! express (the second line above) is shown as its raw expressions.

use super::abi::{
    NFT_CHAIN_BASE, NFT_CHAIN_BINDING, NFT_CHAIN_HW_OFFLOAD, NFT_TABLE_F_DORMANT,
    NFT_TABLE_F_OWNER, NFT_TABLE_F_PERSIST, NF_ACCEPT, NF_DROP, NF_INET_FORWARD, NF_INET_INGRESS,
    NF_INET_LOCAL_IN, NF_INET_LOCAL_OUT, NF_INET_POST_ROUTING, NF_INET_PRE_ROUTING,
};
use super::batch::hook_number;
use super::expr::{lower, Expr};
use super::lift::lift;
use super::readback::{BaseSpec, KernelChain, KernelTable};
use super::render;
use crate::model::{Chain, Plan, Position, Rule, Step, Table};
use std::fmt;

/// One difference between our tables in the kernel and the plan. Fields: the table and
/// chain it is in, the rule's 1-based position, and the rule or chain in nft's words.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // the fields are the same few everywhere; the type's doc says them
pub enum Difference {
    /// A planned table is not there.
    MissingTable(String),
    /// A table of ours is there but not planned.
    ExtraTable(String),
    /// A table whose flags differ from ours (we program none).
    ChangedTable {
        table: String,
        expected: String,
        found: String,
    },
    /// A planned chain is not there.
    MissingChain { table: String, chain: String },
    /// A chain in our table that the plan does not have.
    ExtraChain { table: String, chain: String },
    /// A chain whose type, hook, priority, policy, devices or flags differ (or a regular
    /// chain where a base chain is planned, and the reverse).
    ChangedChain {
        table: String,
        chain: String,
        expected: String,
        found: String,
    },
    /// A planned rule is not there.
    MissingRule {
        table: String,
        chain: String,
        index: usize,
        rule: String,
    },
    /// A rule that the plan does not have.
    ExtraRule {
        table: String,
        chain: String,
        index: usize,
        rule: String,
    },
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::MissingTable(t) => write!(f, "table inet {t}: missing"),
            Difference::ExtraTable(t) => write!(f, "table inet {t}: present but not expected"),
            Difference::ChangedTable {
                table,
                expected,
                found,
            } => write!(f, "table inet {table}: expected {expected}, found {found}"),
            Difference::MissingChain { table, chain } => {
                write!(f, "table inet {table}: missing chain {chain}")
            }
            Difference::ExtraChain { table, chain } => {
                write!(f, "table inet {table}: unexpected chain {chain}")
            }
            Difference::ChangedChain {
                table,
                chain,
                expected,
                found,
            } => {
                write!(
                    f,
                    "table inet {table}, chain {chain}: expected {expected}, found {found}"
                )
            }
            Difference::MissingRule {
                table,
                chain,
                index,
                rule,
            }
            | Difference::ExtraRule {
                table,
                chain,
                index,
                rule,
            } => {
                let what = match self {
                    Difference::MissingRule { .. } => "missing",
                    _ => "unexpected",
                };
                write!(
                    f,
                    "table inet {table}, chain {chain}: {what} rule {index}: {rule}"
                )
            }
        }
    }
}

fn describe(exprs: &[Expr]) -> String {
    exprs
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A rule of `chain` as nft words, as a missing rule is shown.
fn step_text(table: Table, chain: Chain, rule: &Rule) -> String {
    render::rule_text(&Step {
        table,
        chain,
        position: Position::Append,
        rule: rule.clone(),
    })
}

/// A rule read from the kernel in nft words when it lifts to a model rule, else raw.
fn found_text(table: Table, chain: Chain, exprs: &[Expr]) -> String {
    match lift(exprs) {
        Some(rule) => step_text(table, chain, &rule),
        None => describe(exprs),
    }
}

/// Every difference between the kernel's tables (ours only) and the plan.
pub fn diff(plan: &Plan, kernel: &[KernelTable]) -> Vec<Difference> {
    let mut out = Vec::new();
    let resolved = plan.resolve_inet();
    let planned = plan.tables();
    for table in Table::ALL {
        let tname = table.nft_name().to_string();
        let found = kernel.iter().find(|k| k.name == tname);
        let Some(found) = found else {
            if planned.contains(&table) {
                out.push(Difference::MissingTable(tname));
            }
            continue;
        };
        if !planned.contains(&table) {
            out.push(Difference::ExtraTable(tname));
            continue;
        }
        if found.flags != 0 {
            out.push(Difference::ChangedTable {
                table: tname.clone(),
                expected: table_flags_text(0),
                found: table_flags_text(found.flags),
            });
        }
        let chains = plan.chains(table);
        for kc in &found.chains {
            if !chains.iter().any(|c| c.nft_name() == kc.name) {
                out.push(Difference::ExtraChain {
                    table: tname.clone(),
                    chain: kc.name.clone(),
                });
            }
        }
        for chain in chains {
            let Some(kc) = found.chains.iter().find(|k| k.name == chain.nft_name()) else {
                out.push(Difference::MissingChain {
                    table: tname.clone(),
                    chain: chain.nft_name().to_string(),
                });
                continue;
            };
            let rules = resolved
                .iter()
                .find(|r| r.table == table && r.chain == chain)
                .map(|r| r.rules.as_slice())
                .unwrap_or_default();
            chain_diff(table, chain, rules, kc, &mut out);
        }
    }
    out
}

/// `no flags`, `flags dormant`, `flags owner,0x10`: table flags in nft's words.
fn table_flags_text(flags: u32) -> String {
    flags_text(
        flags,
        &[
            (NFT_TABLE_F_DORMANT, "dormant"),
            (NFT_TABLE_F_OWNER, "owner"),
            (NFT_TABLE_F_PERSIST, "persist"),
        ],
    )
}

/// Named bits of `flags`, then any unnamed rest in hex.
fn flags_text(flags: u32, names: &[(u32, &str)]) -> String {
    if flags == 0 {
        return "no flags".into();
    }
    let mut words: Vec<String> = names
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| n.to_string())
        .collect();
    let rest = names.iter().fold(flags, |f, (bit, _)| f & !bit);
    if rest != 0 {
        words.push(format!("{rest:#x}"));
    }
    format!("flags {}", words.join(","))
}

fn hook_name(hook: u32) -> String {
    match hook {
        NF_INET_PRE_ROUTING => "prerouting".into(),
        NF_INET_LOCAL_IN => "input".into(),
        NF_INET_FORWARD => "forward".into(),
        NF_INET_LOCAL_OUT => "output".into(),
        NF_INET_POST_ROUTING => "postrouting".into(),
        NF_INET_INGRESS => "ingress".into(),
        n => format!("hook#{n}"),
    }
}

fn policy_name(policy: Option<u32>) -> String {
    match policy.map(|p| p as i32) {
        Some(NF_ACCEPT) => "accept".into(),
        Some(NF_DROP) => "drop".into(),
        Some(n) => format!("verdict#{n}"),
        None => "(none reported)".into(),
    }
}

/// `type nat hook output priority -100 policy accept` (plus ` devices …` and ` flags …`
/// when there are any), or `a regular chain`.
fn chain_text(base: Option<&BaseSpec>, flags: u32) -> String {
    let mut text = match base {
        Some(b) => {
            let mut t = format!(
                "type {} hook {} priority {} policy {}",
                b.kind,
                hook_name(b.hook),
                b.priority,
                policy_name(b.policy)
            );
            if !b.devices.is_empty() {
                t += &format!(" devices {}", b.devices.join(","));
            }
            t
        }
        None => "a regular chain".into(),
    };
    // The kernel marks base chains with NFT_CHAIN_BASE; that says nothing `base` does not.
    let extra = flags & !NFT_CHAIN_BASE;
    if extra != 0 {
        text += &format!(
            " {}",
            flags_text(
                extra,
                &[
                    (NFT_CHAIN_HW_OFFLOAD, "offload"),
                    (NFT_CHAIN_BINDING, "binding")
                ]
            )
        );
    }
    text
}

/// The chain as we program it: for a base chain its type, hook and priority, and the policy
/// accept (we send none, and accept is the kernel's default); no devices, no flags.
fn planned_base(table: Table, chain: Chain) -> Option<BaseSpec> {
    chain.base(table).map(|b| BaseSpec {
        hook: hook_number(b.hook),
        priority: b.priority,
        kind: b.kind.name().to_string(),
        policy: Some(NF_ACCEPT as u32),
        devices: Vec::new(),
    })
}

/// One chain's differences: its base-chain attributes, then its rules.
fn chain_diff(
    table: Table,
    chain: Chain,
    rules: &[Rule],
    kc: &KernelChain,
    out: &mut Vec<Difference>,
) {
    let (tname, cname) = (table.nft_name(), chain.nft_name());
    let expected_base = planned_base(table, chain);
    if kc.base != expected_base || kc.flags & !NFT_CHAIN_BASE != 0 {
        out.push(Difference::ChangedChain {
            table: tname.into(),
            chain: cname.into(),
            expected: chain_text(expected_base.as_ref(), 0),
            found: chain_text(kc.base.as_ref(), kc.flags),
        });
    }
    let expected: Vec<Vec<Expr>> = rules
        .iter()
        .map(|r| lower(r).iter().map(Expr::normalized).collect())
        .collect();
    let actual: Vec<Vec<Expr>> = kc
        .rules
        .iter()
        .map(|r| r.iter().map(Expr::normalized).collect())
        .collect();
    // The common case (no drift) needs no alignment, and no rule text at all.
    if expected == actual {
        return;
    }
    let expected: Vec<(String, Vec<Expr>)> = expected
        .into_iter()
        .zip(rules)
        .map(|(e, rule)| (step_text(table, chain, rule), e))
        .collect();
    rule_diff((table, chain), &expected, &actual, out);
}

/// A longest-common-subsequence diff of two rule lists, so one deleted or inserted rule
/// shows as exactly one difference.
fn rule_diff(
    (table, chain): (Table, Chain),
    expected: &[(String, Vec<Expr>)],
    actual: &[Vec<Expr>],
    out: &mut Vec<Difference>,
) {
    let (tname, cname) = (table.nft_name(), chain.nft_name());
    let (n, m) = (expected.len(), actual.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if expected[i].1 == actual[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && expected[i].1 == actual[j] {
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(Difference::ExtraRule {
                table: tname.into(),
                chain: cname.into(),
                index: j + 1,
                rule: found_text(table, chain, &actual[j]),
            });
            j += 1;
        } else {
            out.push(Difference::MissingRule {
                table: tname.into(),
                chain: cname.into(),
                index: i + 1,
                rule: expected[i].0.clone(),
            });
            i += 1;
        }
    }
}
