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
    /// The table of the chain.
    pub table: Table,
    /// The chain.
    pub chain: Chain,
    /// Its rules, first to last.
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

#[cfg(test)]
mod tests {
    use crate::config::{Cidr, GroupFile};
    use crate::model::*;

    fn plan(flavor: Flavor, flags: &[&str]) -> Plan {
        let raw = crate::cli::raw_config(flags, &|_| None).unwrap();
        build(&raw.validate(&GroupFile::default()).unwrap(), flavor)
    }

    /// The source address of each `return` rule in mangle `istio-inbound`, or the action.
    fn inbound_shape(rules: &[Rule]) -> Vec<String> {
        rules
            .iter()
            .map(|r| {
                let saddr = r.matches.iter().find_map(|m| match m {
                    Match::SAddr { cidr, .. } => Some(cidr.to_string()),
                    _ => None,
                });
                let mark = r.matches.iter().find_map(|m| match m {
                    Match::Mark { mark, negate } => {
                        Some(format!("mark{}{mark}", if *negate { "!=" } else { "=" }))
                    }
                    _ => None,
                });
                saddr.or(mark).unwrap_or_else(|| format!("{:?}", r.action))
            })
            .collect()
    }

    /// The shape of mangle `istio-inbound` among resolved chains.
    fn mangle_inbound_shape(chains: &[ResolvedChain]) -> Vec<String> {
        let inbound = chains
            .iter()
            .find(|c| c.table == Table::Mangle && c.chain == Chain::Inbound)
            .unwrap();
        inbound_shape(&inbound.rules)
    }

    /// The TPROXY inserts at the top (in the order given), then the three default inbound
    /// port exclusions and the two jumps.
    fn tproxy_inbound(inserts: &[&str]) -> Vec<String> {
        let tail = ["Return", "Return", "Return", "Jump(Divert)", "Jump(Tproxy)"];
        inserts.iter().chain(&tail).map(|s| s.to_string()).collect()
    }

    #[test]
    fn tproxy_inserts_resolve_like_nft_in_one_inet_chain() {
        let p = plan(Flavor::Nftables, &["-m", "TPROXY", "--ipv6=true"]);
        // The order `nft list ruleset` shows after Istio's own tproxy golden.
        assert_eq!(
            mangle_inbound_shape(&p.resolve_inet()),
            tproxy_inbound(&["mark=1337", "::6/128", "mark!=1338", "127.0.0.6/32"])
        );
    }

    #[test]
    fn tproxy_inserts_resolve_per_family_for_iptables() {
        let p = plan(Flavor::Iptables, &["-m", "TPROXY", "--ipv6=true"]);
        assert_eq!(
            mangle_inbound_shape(&p.resolve_family(Family::V4)),
            tproxy_inbound(&["mark=1337", "127.0.0.6/32", "mark!=1338"])
        );
        assert_eq!(
            mangle_inbound_shape(&p.resolve_family(Family::V6)),
            tproxy_inbound(&["mark=1337", "::6/128", "mark!=1338"])
        );
    }

    #[test]
    fn flavors_differ_where_istios_generators_differ() {
        let nft = plan(Flavor::Nftables, &["--drop-invalid=true"]);
        let ipt = plan(Flavor::Iptables, &["--drop-invalid=true"]);
        let drop_rule = |p: &Plan| {
            p.steps
                .iter()
                .find(|s| s.rule.action == Action::Jump(Chain::Drop))
                .unwrap()
                .rule
                .matches
                .clone()
        };
        assert_eq!(
            drop_rule(&nft),
            vec![Match::L4Proto(Proto::Tcp), Match::CtState(CtState::Invalid)]
        );
        assert_eq!(drop_rule(&ipt), vec![Match::CtState(CtState::Invalid)]);

        let dns = [
            "--ipv6=true",
            "--redirect-dns=true",
            "--dns-servers-v4=10.0.0.10",
        ];
        let jumps = |p: &Plan| {
            p.steps
                .iter()
                .filter(|s| {
                    s.table == Table::Nat && s.rule.action == Action::Jump(Chain::OutputDns)
                })
                .map(|s| s.rule.family)
                .collect::<Vec<_>>()
        };
        assert_eq!(jumps(&plan(Flavor::Nftables, &dns)), [Family::Any]);
        assert_eq!(jumps(&plan(Flavor::Iptables, &dns)), [Family::V4]);
    }

    #[test]
    fn ipv6_rules_exist_only_when_enabled() {
        let p = plan(Flavor::Nftables, &[]);
        assert!(p.steps.iter().all(|s| s.rule.family != Family::V6));
        let p = plan(Flavor::Nftables, &["--ipv6=true"]);
        let six = Cidr::host("::6".parse().unwrap());
        assert!(p
            .steps
            .iter()
            .any(|s| s.rule.matches.contains(&Match::SAddr {
                cidr: six.clone(),
                negate: false
            })));
    }
}
