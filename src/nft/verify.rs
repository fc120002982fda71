//! Comparing what the kernel holds with what the plan says, as a readable diff:
//!
//! ```text
//! table inet istio-proxy-nat, chain istio-output: missing rule 4: skuid 1337 counter return
//! table inet istio-proxy-nat, chain istio-output: unexpected rule 4: [meta load skgid] [cmp eq 0x39050000] …
//! ```

use super::expr::{lower, Expr};
use super::readback::{KernelChain, KernelTable};
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
    /// A planned chain is not there.
    MissingChain { table: String, chain: String },
    /// A chain in our table that the plan does not have.
    ExtraChain { table: String, chain: String },
    /// A chain whose type, hook or priority differ.
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

/// `type nat hook output priority -100` for a base chain, as planned and as found.
fn base_texts(table: Table, chain: Chain, kc: &KernelChain) -> (Option<String>, Option<String>) {
    let expected = chain.base(table).map(|b| {
        format!(
            "type {} hook {} priority {}",
            b.kind.name(),
            b.hook.name(),
            b.priority
        )
    });
    let found = kc.base.as_ref().map(|b| {
        let hook = match b.hook {
            0 => "prerouting".to_string(),
            3 => "output".to_string(),
            n => format!("hook#{n}"),
        };
        format!("type {} hook {hook} priority {}", b.kind, b.priority)
    });
    (expected, found)
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
    let (expected_base, found_base) = base_texts(table, chain, kc);
    if expected_base != found_base {
        out.push(Difference::ChangedChain {
            table: tname.into(),
            chain: cname.into(),
            expected: expected_base.unwrap_or_else(|| "a regular chain".into()),
            found: found_base.unwrap_or_else(|| "a regular chain".into()),
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
        .map(|(e, rule)| {
            let step = Step {
                table,
                chain,
                position: Position::Append,
                rule: rule.clone(),
            };
            (render::rule_text(&step), e)
        })
        .collect();
    rule_diff(tname, cname, &expected, &actual, out);
}

/// A longest-common-subsequence diff of two rule lists, so one deleted or inserted rule
/// shows as exactly one difference.
fn rule_diff(
    table: &str,
    chain: &str,
    expected: &[(String, Vec<Expr>)],
    actual: &[Vec<Expr>],
    out: &mut Vec<Difference>,
) {
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
                table: table.into(),
                chain: chain.into(),
                index: j + 1,
                rule: describe(&actual[j]),
            });
            j += 1;
        } else {
            out.push(Difference::MissingRule {
                table: table.into(),
                chain: chain.into(),
                index: i + 1,
                rule: expected[i].0.clone(),
            });
            i += 1;
        }
    }
}
