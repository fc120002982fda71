//! Putting our rules into a table that may hold other tools' rules, and taking them out.
//!
//! What is ours: the `ISTIO_*` chains of the model, every rule in a built-in chain that jumps
//! into one of them, and every rule in a built-in chain that is identical to one the plan
//! puts there (`-A PREROUTING -i eth1 -j RETURN`, the TPROXY mark rules). Everything else
//! — other chains, other rules, their matches, targets and counters — is kept as read.
//!
//! Our rules are placed exactly as Istio's `iptables-restore --noflush` would place them on
//! top of the foreign rules: appends at the end of a built-in chain, `-I CHAIN 1` inserts at
//! the top, each executed in Istio's order.

use super::abi::Layout;
use super::lower::lower;
use super::table::{Chain as XtChain, Rule as XtRule, Table as XtTable, Target};
use crate::model::{Chain, Family, Plan, Position, Step, Table};

/// Istio's chain names in `table` (all tables use the same set of names).
pub fn is_our_chain(name: &str) -> bool {
    ALL_CHAINS
        .iter()
        .any(|c| !c.is_builtin() && c.iptables_name() == name)
}

const ALL_CHAINS: [Chain; 10] = [
    Chain::Prerouting,
    Chain::Output,
    Chain::Inbound,
    Chain::Redirect,
    Chain::InRedirect,
    Chain::IstioOutput,
    Chain::OutputDns,
    Chain::Divert,
    Chain::Tproxy,
    Chain::Drop,
];

fn builtin_name(c: Chain) -> &'static str {
    c.iptables_name()
}

/// The same rule, ignoring counters and where it was read from.
pub fn same_rule(a: &XtRule, b: &XtRule) -> bool {
    a.ip == b.ip && a.nfcache == b.nfcache && a.matches == b.matches && a.target == b.target
}

fn jumps_to_ours(r: &XtRule) -> bool {
    matches!(&r.target, Target::Jump(c) if is_our_chain(c))
}

/// The plan's steps for one table of one family, lowered.
pub fn lowered_steps(
    plan: &Plan,
    table: Table,
    family: Family,
    l: Layout,
) -> Vec<(Chain, Position, XtRule)> {
    plan.steps
        .iter()
        .filter(|s: &&Step| {
            s.table == table && (s.rule.family == Family::Any || s.rule.family == family)
        })
        .map(|s| (s.chain, s.position, lower(&s.rule, l)))
        .collect()
}

/// Whether a table holds anything of ours.
pub fn has_ours(t: &XtTable) -> bool {
    t.chains
        .iter()
        .any(|c| is_our_chain(&c.name) || c.rules.iter().any(jumps_to_ours))
}

/// `t` without anything of ours (`planned` adds the built-in rules the plan would write).
pub fn strip(t: &XtTable, planned: &[(Chain, Position, XtRule)]) -> XtTable {
    let mut out = t.clone();
    out.chains
        .retain(|c| c.hook.is_some() || !is_our_chain(&c.name));
    for c in out.chains.iter_mut().filter(|c| c.hook.is_some()) {
        let name = c.name.clone();
        c.rules.retain(|r| {
            !jumps_to_ours(r)
                && !planned.iter().any(|(ch, _, p)| {
                    ch.is_builtin() && builtin_name(*ch) == name && same_rule(p, r)
                })
        });
    }
    out
}

fn apply_step(rules: &mut Vec<XtRule>, position: Position, rule: XtRule) {
    match position {
        Position::Insert(i) if i <= rules.len() => rules.insert(i, rule),
        _ => rules.push(rule),
    }
}

/// The table with our rules for this plan, on top of whatever else it holds.
pub fn merge(t: &XtTable, plan: &Plan, table: Table, family: Family, l: Layout) -> XtTable {
    let planned = lowered_steps(plan, table, family, l);
    let mut out = strip(t, &planned);
    // Our chains: those with rules, and jump targets (Istio declares both with `-N`).
    let mut ours: Vec<XtChain> = Vec::new();
    let declare = |name: &str, ours: &mut Vec<XtChain>| {
        if !ours.iter().any(|c| c.name == name) {
            ours.push(XtChain {
                name: name.to_string(),
                hook: None,
                policy: None,
                rules: Vec::new(),
            });
        }
    };
    for (chain, position, rule) in &planned {
        if let Target::Jump(target) = &rule.target {
            declare(target, &mut ours);
        }
        if chain.is_builtin() {
            let c = out
                .chains
                .iter_mut()
                .find(|c| c.name == builtin_name(*chain))
                .expect("built-in chains exist in every table we write");
            apply_step(&mut c.rules, *position, rule.clone());
        } else {
            declare(chain.iptables_name(), &mut ours);
            let c = ours
                .iter_mut()
                .find(|c| c.name == chain.iptables_name())
                .expect("declared");
            apply_step(&mut c.rules, *position, rule.clone());
        }
    }
    out.chains.extend(ours);
    out
}

/// Our part of a table: our chains (sorted) and, per built-in chain, our rules in order.
pub fn our_part(t: &XtTable, planned: &[(Chain, Position, XtRule)]) -> Vec<(String, Vec<XtRule>)> {
    let mut out: Vec<(String, Vec<XtRule>)> = Vec::new();
    for c in &t.chains {
        if c.hook.is_some() {
            let rules: Vec<XtRule> = c
                .rules
                .iter()
                .filter(|r| {
                    jumps_to_ours(r)
                        || planned.iter().any(|(ch, _, p)| {
                            ch.is_builtin() && builtin_name(*ch) == c.name && same_rule(p, r)
                        })
                })
                .cloned()
                .collect();
            if !rules.is_empty() {
                out.push((c.name.clone(), rules));
            }
        } else if is_our_chain(&c.name) {
            out.push((c.name.clone(), c.rules.clone()));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}
