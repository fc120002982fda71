//! Putting our rules into a table that may hold other tools' rules, and taking them out.
//!
//! What is ours: the `ISTIO_*` chains of the model, every rule in a built-in chain that jumps
//! into one of them, and every rule in a built-in chain that has the **shape** of a rule
//! Istio's generator writes there, whatever its parameters ([`shapes`]): so `remove` needs
//! no flags, and a re-apply with another mark or interface takes the old rules away.
//!
//! ```text
//! -A PREROUTING -i <iface> -j RETURN                                  (nat, mangle: -c)
//! -A OUTPUT -o <iface> -j RETURN                                      (nat, mangle: -c)
//! -I PREROUTING 1 -i <iface> -j RETURN                                (nat: -k)
//! -A PREROUTING -p tcp -m mark --mark <m> -j CONNMARK --save-mark     (mangle: TPROXY)
//! -A OUTPUT -p tcp -o lo -m mark --mark <m> -j RETURN                 (mangle: TPROXY)
//! -A OUTPUT ! -d <lo> -p tcp -o lo -m owner --uid-owner <u> -j MARK --set-mark <m>
//! -A OUTPUT ! -d <lo> -p tcp -o lo -m owner --gid-owner <g> -j MARK --set-mark <m>
//! -A OUTPUT -p tcp -m connmark --mark <m> -j CONNMARK --restore-mark  (mangle: TPROXY)
//! ```
//!
//! Everything else — other chains, other rules (a `-j ACCEPT` after `-i eth0`, another
//! match), their matches, targets and counters — is kept as read.
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

/// A rule with its parameters replaced by placeholders (interface names, addresses, marks,
/// owner ids), so that two rules of the same form compare equal whatever their values. An
/// interface or address that is set stays set (as a placeholder): `-j RETURN` alone is not
/// the shape of `-o eth0 -j RETURN`.
fn shape_of(r: &XtRule, l: Layout) -> XtRule {
    let mut s = r.clone();
    s.counters = Default::default();
    s.old_index = None;
    let n = if l.ipv6 { 16 } else { 4 };
    // src, dst, smsk, dmsk: a set address becomes 1.1.1.1/32 (or its IPv6 form).
    for (addr, mask) in [(0, 2 * n), (n, 3 * n)] {
        if s.ip[mask..mask + n].iter().any(|b| *b != 0) {
            s.ip[addr..addr + n].fill(1);
            s.ip[mask..mask + n].fill(0xff);
        }
    }
    // iniface, outiface, iniface_mask, outiface_mask: a set interface becomes "x".
    let ifaces = 4 * n;
    for (name, mask) in [(ifaces, ifaces + 32), (ifaces + 16, ifaces + 48)] {
        if s.ip[name] != 0 {
            s.ip[name..name + 16].fill(0);
            s.ip[name] = b'x';
            s.ip[mask..mask + 16].fill(0);
            s.ip[mask..mask + 2].fill(0xff);
        }
    }
    for m in &mut s.matches {
        let blank = match m.name.as_str() {
            "mark" | "connmark" => 4,
            "owner" => 16,
            _ => 0,
        };
        let end = blank.min(m.data.len());
        m.data[..end].fill(0);
    }
    if let Target::Extension(t) = &mut s.target {
        if t.name == "MARK" {
            let end = 4.min(t.data.len());
            t.data[..end].fill(0);
        }
    }
    s
}

/// The shapes of every rule Istio's generator writes into a built-in chain without jumping
/// into one of its chains, per (table, chain): lowered from the model for a configuration
/// that turns every such rule on, then blanked ([`shape_of`]).
fn shapes(l: Layout) -> &'static [(&'static str, &'static str, XtRule)] {
    use std::sync::OnceLock;
    static V4: OnceLock<Vec<(&'static str, &'static str, XtRule)>> = OnceLock::new();
    static V6: OnceLock<Vec<(&'static str, &'static str, XtRule)>> = OnceLock::new();
    let cell = if l.ipv6 { &V6 } else { &V4 };
    cell.get_or_init(|| {
        let family = if l.ipv6 { Family::V6 } else { Family::V4 };
        let plan =
            crate::model::build(&every_builtin_rule_config(), crate::model::Flavor::Iptables);
        let mut out: Vec<(&'static str, &'static str, XtRule)> = Vec::new();
        for table in Table::ALL {
            for (chain, _, rule) in lowered_steps(&plan, table, family, l) {
                if chain.is_builtin() && !jumps_to_ours(&rule) {
                    let shape = (
                        table.iptables_name(),
                        builtin_name(chain),
                        shape_of(&rule, l),
                    );
                    if !out.contains(&shape) {
                        out.push(shape);
                    }
                }
            }
        }
        out
    })
}

/// TPROXY, excluded and virtual interfaces, distinct uid and gid, IPv6: every knob that puts
/// a non-jump rule into a built-in chain.
fn every_builtin_rule_config() -> crate::config::Config {
    use crate::config::{GroupFile, RawConfig, Setting};
    let set = |v: &str| Some(Setting::new("shape", v));
    RawConfig {
        inbound_interception_mode: set("TPROXY"),
        exclude_interfaces: set("x0"),
        reroute_virtual_interfaces: set("x1"),
        proxy_uid: set("1"),
        proxy_gid: set("2"),
        enable_ipv6: set("true"),
        ..Default::default()
    }
    .validate(&GroupFile::default())
    .expect("a valid configuration")
}

/// Whether `r`, in built-in chain `chain` of table `table`, has the shape of a rule of ours.
pub fn ours_by_shape(table: &str, chain: &str, r: &XtRule, l: Layout) -> bool {
    let shape = shape_of(r, l);
    shapes(l)
        .iter()
        .any(|(t, c, s)| *t == table && *c == chain && *s == shape)
}

/// Whether a rule in built-in chain `chain` of `t` is ours: it jumps into our chains, or
/// equals one the plan writes there, or — in a table that holds chains of ours, as every
/// table we write does — has the shape of one Istio writes there. A table without anything
/// of ours keeps even rules of our shapes: they cannot be left over from us.
fn ours_in_builtin(
    t: &XtTable,
    table_is_ours: bool,
    chain: &str,
    r: &XtRule,
    planned: &[(Chain, Position, XtRule)],
    l: Layout,
) -> bool {
    jumps_to_ours(r)
        || (table_is_ours && ours_by_shape(&t.name, chain, r, l))
        || planned
            .iter()
            .any(|(ch, _, p)| ch.is_builtin() && builtin_name(*ch) == chain && same_rule(p, r))
}

/// Whether a table holds anything of ours.
pub fn has_ours(t: &XtTable) -> bool {
    t.chains
        .iter()
        .any(|c| is_our_chain(&c.name) || c.rules.iter().any(jumps_to_ours))
}

/// `t` without anything of ours (`planned` adds the built-in rules the plan would write).
pub fn strip(t: &XtTable, planned: &[(Chain, Position, XtRule)], l: Layout) -> XtTable {
    let ours = has_ours(t);
    // Built field by field: our chains (thousands of rules with many CIDRs) are never copied.
    let chains = t
        .chains
        .iter()
        .filter(|c| c.hook.is_some() || !is_our_chain(&c.name))
        .map(|c| XtChain {
            name: c.name.clone(),
            hook: c.hook,
            policy: c.policy,
            rules: c
                .rules
                .iter()
                .filter(|r| c.hook.is_none() || !ours_in_builtin(t, ours, &c.name, r, planned, l))
                .cloned()
                .collect(),
        })
        .collect();
    XtTable {
        name: t.name.clone(),
        valid_hooks: t.valid_hooks,
        chains,
        num_entries: t.num_entries,
    }
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
    let builtin = builtin_steps(&planned);
    place(strip(t, &builtin, l), planned)
}

/// The steps that go into built-in chains (a handful): all that [`strip`] and [`our_part`]
/// look at, so they need not scan the thousands of steps of our own chains.
pub fn builtin_steps(planned: &[(Chain, Position, XtRule)]) -> Vec<(Chain, Position, XtRule)> {
    planned
        .iter()
        .filter(|(c, _, _)| c.is_builtin())
        .cloned()
        .collect()
}

/// `stripped` (a table without anything of ours) with the `planned` steps placed as Istio's
/// `iptables-restore --noflush` would place them.
pub fn place(stripped: XtTable, planned: Vec<(Chain, Position, XtRule)>) -> XtTable {
    let mut out = stripped;
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
    for (chain, position, rule) in planned {
        if let Target::Jump(target) = &rule.target {
            declare(target, &mut ours);
        }
        if chain.is_builtin() {
            let c = out
                .chains
                .iter_mut()
                .find(|c| c.name == builtin_name(chain))
                .expect("built-in chains exist in every table we write");
            apply_step(&mut c.rules, position, rule);
        } else {
            declare(chain.iptables_name(), &mut ours);
            let c = ours
                .iter_mut()
                .find(|c| c.name == chain.iptables_name())
                .expect("declared");
            apply_step(&mut c.rules, position, rule);
        }
    }
    out.chains.extend(ours);
    out
}

/// Our part of a table, borrowed: our chains (sorted) and, per built-in chain, our rules in
/// order.
pub fn our_part<'t>(
    t: &'t XtTable,
    planned: &[(Chain, Position, XtRule)],
    l: Layout,
) -> OurPart<'t> {
    let mut out: OurPart<'t> = Vec::new();
    let ours = has_ours(t);
    for c in &t.chains {
        if c.hook.is_some() {
            let rules: Vec<&XtRule> = c
                .rules
                .iter()
                .filter(|r| ours_in_builtin(t, ours, &c.name, r, planned, l))
                .collect();
            if !rules.is_empty() {
                out.push((&c.name, rules));
            }
        } else if is_our_chain(&c.name) {
            out.push((&c.name, c.rules.iter().collect()));
        }
    }
    out.sort_by(|a, b| a.0.cmp(b.0));
    out
}

/// What [`our_part`] returns: chain name and our rules in it, borrowed from the table.
pub type OurPart<'t> = Vec<(&'t str, Vec<&'t XtRule>)>;
