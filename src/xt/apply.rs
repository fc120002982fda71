//! Writing, checking and removing our rules table by table through the xtables sockets.
//!
//! The legacy interface swaps one table of one family at a time, so a multi-table apply is
//! made all-or-nothing by hand: every table written is remembered, and when a later one is
//! refused the earlier ones are written back as they were (counters included). A replace
//! names the entry count it was computed from; if another writer (another process, an
//! `iptables-legacy -A`) changed the table meanwhile the kernel answers `EAGAIN`, and we read
//! again, merge again and retry.

use super::abi::{Layout, IPV4, IPV6};
use super::merge::{has_ours, lowered_steps, merge, our_part, same_rule, strip};
use super::socket::XtSocket;
use super::table::{Counters, Extension, Rule as XtRule, Table as XtTable, Target};
use crate::model::{Family, Plan, Table};
use crate::nft::batch::FaultInjection;
use std::io;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum XtError {
    #[error("{family} table {table}: {source}")]
    Kernel {
        family: &'static str,
        table: &'static str,
        source: io::Error,
    },
    #[error("{family} table {table}: cannot encode: {reason}")]
    Encode {
        family: &'static str,
        table: &'static str,
        reason: String,
    },
}

const RETRIES: usize = 32;

/// Istio's payload lists tables lexicographically; we touch them in the same order.
const RESTORE_ORDER: [Table; 3] = [Table::Mangle, Table::Nat, Table::Raw];

fn family_name(l: Layout) -> &'static str {
    if l.ipv6 {
        "IPv6"
    } else {
        "IPv4"
    }
}

fn family_of(l: Layout) -> Family {
    if l.ipv6 {
        Family::V6
    } else {
        Family::V4
    }
}

/// Tables the kernel has instantiated in the calling thread's namespace. Reading a table
/// instantiates it, so we look here first and never create a table we do not write.
pub fn loaded_tables(l: Layout) -> Vec<String> {
    let file = if l.ipv6 {
        "/proc/thread-self/net/ip6_tables_names"
    } else {
        "/proc/thread-self/net/ip_tables_names"
    };
    std::fs::read_to_string(file)
        .map(|s| s.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Test-only: an extension the kernel does not know, to make the last table write fail.
fn poison(t: &mut XtTable, l: Layout) {
    if let Some(c) = t.chains.iter_mut().find(|c| c.hook.is_some()) {
        c.rules.push(XtRule {
            ip: vec![0; l.ip_size],
            nfcache: 0,
            matches: vec![],
            target: Target::Extension(Extension::new("MESHFAULT", 0, vec![0; 8])),
            counters: Counters::default(),
            old_index: None,
        });
    }
}

/// One table write that can be undone.
struct Written {
    layout: Layout,
    table: &'static str,
    before: XtTable,
}

fn err(l: Layout, table: &'static str, source: io::Error) -> XtError {
    XtError::Kernel {
        family: family_name(l),
        table,
        source,
    }
}

/// Test-only: what another writer does between our read and our write (one foreign rule
/// appended to the first built-in chain), so that the kernel answers `EAGAIN`.
fn race(s: &XtSocket, name: &'static str) {
    if let Ok((info, mut t)) = s.read(name) {
        let n = t.num_entries;
        if let Some(c) = t.chains.iter_mut().find(|c| c.hook.is_some()) {
            c.rules.push(XtRule {
                ip: vec![0; s.layout.ip_size],
                nfcache: 0,
                matches: vec![],
                target: Target::Verdict(super::abi::VERDICT_RETURN),
                counters: Counters::default(),
                old_index: None,
            });
        }
        if let Ok(enc) = t.encode(s.layout) {
            let _ = s.replace(name, info.valid_hooks, n, &enc);
        }
    }
}

fn same_part(a: &[(String, Vec<XtRule>)], b: &[(String, Vec<XtRule>)]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((na, ra), (nb, rb))| {
            na == nb && ra.len() == rb.len() && ra.iter().zip(rb).all(|(x, y)| same_rule(x, y))
        })
}

fn unchanged(new: &XtTable, current: &XtTable) -> bool {
    new.chains.len() == current.chains.len()
        && new.chains.iter().zip(&current.chains).all(|(a, b)| {
            a.name == b.name
                && a.rules.len() == b.rules.len()
                && a.rules.iter().zip(&b.rules).all(|(x, y)| same_rule(x, y))
        })
}

/// Replaces `name` with `make(current)`, retrying on `EAGAIN`. Returns the table as it was
/// (`None` when nothing needed writing) and how many attempts met `EAGAIN`.
fn replace_with(
    s: &XtSocket,
    name: &'static str,
    make: &dyn Fn(&XtTable) -> Option<XtTable>,
    race_once: bool,
) -> Result<(Option<XtTable>, usize), XtError> {
    let l = s.layout;
    let mut retries = 0;
    for attempt in 0..RETRIES {
        let (info, current) = s.read(name).map_err(|e| err(l, name, e))?;
        let Some(new) = make(&current) else {
            return Ok((None, retries));
        };
        if unchanged(&new, &current) {
            return Ok((None, retries));
        }
        let enc = new.encode(l).map_err(|e| XtError::Encode {
            family: family_name(l),
            table: name,
            reason: e.to_string(),
        })?;
        if race_once && attempt == 0 {
            race(s, name);
        }
        match s.replace(name, info.valid_hooks, current.num_entries, &enc) {
            Ok(old) => {
                // The kernel zeroes counters on replace; give kept entries theirs back.
                let carried: Vec<Counters> = enc
                    .old_index
                    .iter()
                    .map(|i| i.and_then(|i| old.get(i).copied()).unwrap_or_default())
                    .collect();
                if carried.iter().any(|c| c.packets != 0 || c.bytes != 0) {
                    s.add_counters(name, &carried)
                        .map_err(|e| err(l, name, e))?;
                }
                return Ok((Some(current), retries));
            }
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                retries += 1;
                tracing::debug!(
                    family = family_name(l),
                    table = name,
                    "the table changed underneath (EAGAIN); reading it again"
                );
            }
            Err(e) => return Err(err(l, name, e)),
        }
    }
    Err(err(l, name, io::Error::from_raw_os_error(libc::EAGAIN)))
}

fn table_name(t: Table) -> &'static str {
    t.iptables_name()
}

/// Families a plan is written to: IPv4 always, IPv6 when enabled.
pub fn layouts(plan: &Plan) -> Vec<Layout> {
    if plan.enable_ipv6 {
        vec![IPV4, IPV6]
    } else {
        vec![IPV4]
    }
}

#[derive(Debug, Clone, Default)]
pub struct XtReport {
    pub tables_written: usize,
    pub rules: usize,
    /// Whether any table held rules of ours before.
    pub replaced: bool,
    pub retries: usize,
}

/// Writes the plan (an iptables-flavoured plan) into every table it needs, both families;
/// everything written is undone if any write fails.
pub fn apply(plan: &Plan, fault: FaultInjection) -> Result<XtReport, XtError> {
    let mut written: Vec<Written> = Vec::new();
    let mut report = XtReport::default();
    let mut work: Vec<(Layout, Table)> = Vec::new();
    for l in layouts(plan) {
        let loaded = loaded_tables(l);
        // iptables-restore's order: tables are instantiated in this order, and the kernel
        // lists them (iptables-save's order) newest first.
        for t in RESTORE_ORDER {
            let needed = plan.steps.iter().any(|s| {
                s.table == t && (s.rule.family == Family::Any || s.rule.family == family_of(l))
            });
            if needed || loaded.iter().any(|n| n == table_name(t)) {
                work.push((l, t));
            }
        }
    }
    let last = work.len().saturating_sub(1);
    for (i, (l, t)) in work.iter().copied().enumerate() {
        let s = XtSocket::open(l).map_err(|e| err(l, table_name(t), e))?;
        let poisoned = fault.fail_last_message && i == last;
        let result = replace_with(
            &s,
            table_name(t),
            &|current| {
                let needed = plan.steps.iter().any(|st| {
                    st.table == t
                        && (st.rule.family == Family::Any || st.rule.family == family_of(l))
                });
                if !needed && !has_ours(current) {
                    return None;
                }
                let mut new = merge(current, plan, t, family_of(l), l);
                // Ours already intact and in order: leave the table alone, so rules other
                // tools appended after ours stay after them (Istio writes nothing then).
                let planned = lowered_steps(plan, t, family_of(l), l);
                if !poisoned && same_part(&our_part(&new, &planned), &our_part(current, &planned)) {
                    return None;
                }
                if poisoned {
                    poison(&mut new, l);
                }
                Some(new)
            },
            fault.race_first_write,
        );
        match result {
            Ok((Some(before), retries)) => {
                report.retries += retries;
                report.replaced |= has_ours(&before);
                report.tables_written += 1;
                written.push(Written {
                    layout: l,
                    table: table_name(t),
                    before,
                });
            }
            Ok((None, retries)) => report.retries += retries,
            Err(e) => {
                undo(&written);
                return Err(e);
            }
        }
    }
    report.rules = plan
        .steps
        .iter()
        .filter(|s| s.rule.family == Family::Any)
        .count()
        * layouts(plan).len()
        + plan
            .steps
            .iter()
            .filter(|s| s.rule.family != Family::Any)
            .count();
    Ok(report)
}

fn undo(written: &[Written]) {
    for w in written.iter().rev() {
        let Ok(s) = XtSocket::open(w.layout) else {
            continue;
        };
        let before = w.before.clone();
        let restore = |current: &XtTable| {
            // Entries that still exist keep their counters: map them by content.
            let mut t = before.clone();
            for c in &mut t.chains {
                for r in &mut c.rules {
                    r.old_index =
                        current
                            .chains
                            .iter()
                            .find(|cc| cc.name == c.name)
                            .and_then(|cc| {
                                cc.rules
                                    .iter()
                                    .find(|x| same_rule(x, r))
                                    .and_then(|x| x.old_index)
                            });
                }
            }
            Some(t)
        };
        if let Err(e) = replace_with(&s, w.table, &restore, false) {
            tracing::error!(table = w.table, error = %e, "could not restore a table after a failed apply");
        }
    }
}

/// Removes our chains and rules from every loaded table of both families.
pub fn remove(plan: &Plan) -> Result<usize, XtError> {
    let mut removed = 0;
    for l in [IPV4, IPV6] {
        let loaded = loaded_tables(l);
        for t in Table::ALL {
            if !loaded.iter().any(|n| n == table_name(t)) {
                continue;
            }
            let s = XtSocket::open(l).map_err(|e| err(l, table_name(t), e))?;
            let planned = lowered_steps(plan, t, family_of(l), l);
            let (changed, _) = replace_with(
                &s,
                table_name(t),
                &|current| has_ours(current).then(|| strip(current, &planned)),
                false,
            )?;
            removed += changed.is_some() as usize;
        }
    }
    Ok(removed)
}

/// One difference between the kernel and the plan, per table and chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XtDifference {
    pub family: &'static str,
    pub table: &'static str,
    pub what: String,
}

impl std::fmt::Display for XtDifference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} table {}: {}", self.family, self.table, self.what)
    }
}

/// Compares our part of every table with what the plan produces.
pub fn verify(plan: &Plan) -> Result<Vec<XtDifference>, XtError> {
    let mut out = Vec::new();
    for l in [IPV4, IPV6] {
        let loaded = loaded_tables(l);
        let enabled = layouts(plan).contains(&l);
        for t in Table::ALL {
            let planned = if enabled {
                lowered_steps(plan, t, family_of(l), l)
            } else {
                Vec::new()
            };
            let is_loaded = loaded.iter().any(|n| n == table_name(t));
            if !is_loaded {
                if !planned.is_empty() {
                    out.push(XtDifference {
                        family: family_name(l),
                        table: table_name(t),
                        what: "missing".into(),
                    });
                }
                continue;
            }
            let s = XtSocket::open(l).map_err(|e| err(l, table_name(t), e))?;
            let (_, current) = s
                .read(table_name(t))
                .map_err(|e| err(l, table_name(t), e))?;
            let expected_table = if planned.is_empty() {
                strip(&current, &planned)
            } else {
                merge(&strip(&current, &planned), plan, t, family_of(l), l)
            };
            let expected = our_part(&expected_table, &planned);
            let found = our_part(&current, &planned);
            for (name, rules) in &expected {
                match found.iter().find(|(n, _)| n == name) {
                    None => out.push(XtDifference {
                        family: family_name(l),
                        table: table_name(t),
                        what: format!("missing chain or rules in {name}"),
                    }),
                    Some((_, f)) => {
                        let missing = rules
                            .iter()
                            .filter(|r| !f.iter().any(|x| same_rule(x, r)))
                            .count();
                        let extra = f
                            .iter()
                            .filter(|x| !rules.iter().any(|r| same_rule(x, r)))
                            .count();
                        if missing > 0 {
                            out.push(XtDifference {
                                family: family_name(l),
                                table: table_name(t),
                                what: format!("chain {name}: {missing} rule(s) missing"),
                            });
                        }
                        if extra > 0 {
                            out.push(XtDifference {
                                family: family_name(l),
                                table: table_name(t),
                                what: format!("chain {name}: {extra} unexpected rule(s)"),
                            });
                        }
                        if missing == 0
                            && extra == 0
                            && !(f.len() == rules.len()
                                && f.iter().zip(rules).all(|(a, b)| same_rule(a, b)))
                        {
                            out.push(XtDifference {
                                family: family_name(l),
                                table: table_name(t),
                                what: format!("chain {name}: rules out of order"),
                            });
                        }
                    }
                }
            }
            for (name, _) in &found {
                if !expected.iter().any(|(n, _)| n == name) {
                    out.push(XtDifference {
                        family: family_name(l),
                        table: table_name(t),
                        what: format!("unexpected chain or rules in {name}"),
                    });
                }
            }
        }
    }
    Ok(out)
}
