//! From emission order to the order the kernel ends up with.
//!
//! Istio emits some rules as inserts (`insert rule … index 0`, `-I PREROUTING 1`). Their
//! final position is whatever executing the emissions top to bottom produces. nftables
//! (Istio's `executeCommands`) turns an insert into an append when nothing was emitted into
//! the chain yet or the index is at or past the end; iptables inserts into each family's
//! chain separately. Backends write the resolved order with appends only, so the kernel
//! state is the same as Istio's while the batch stays simple.

use super::{Chain, Family, Flavor, Plan, Position, Rule, Table};

/// The rules of one chain in final kernel order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedChain {
    pub table: Table,
    pub chain: Chain,
    pub rules: Vec<Rule>,
}

impl Plan {
    /// Final rule order per chain for the nftables `inet` tables (both families together).
    pub fn resolve_inet(&self) -> Vec<ResolvedChain> {
        self.resolve(|_| true)
    }

    /// Final rule order per chain for one iptables family (`V4` or `V6`).
    pub fn resolve_family(&self, family: Family) -> Vec<ResolvedChain> {
        debug_assert_eq!(self.flavor, Flavor::Iptables);
        self.resolve(|f| f == Family::Any || f == family)
    }

    fn resolve(&self, keep: impl Fn(Family) -> bool) -> Vec<ResolvedChain> {
        let mut chains: Vec<ResolvedChain> = Vec::new();
        for table in self.tables() {
            for chain in self.chains(table) {
                let mut rules: Vec<Rule> = Vec::new();
                for step in self
                    .steps
                    .iter()
                    .filter(|s| s.table == table && s.chain == chain)
                {
                    if !keep(step.rule.family) {
                        continue;
                    }
                    match step.position {
                        Position::Insert(i) if i < rules.len() => {
                            rules.insert(i, step.rule.clone())
                        }
                        _ => rules.push(step.rule.clone()),
                    }
                }
                if !rules.is_empty() {
                    chains.push(ResolvedChain {
                        table,
                        chain,
                        rules,
                    });
                }
            }
        }
        chains
    }
}
