//! The plan as the nft transaction Istio pipes to `nft -f -` (the format of Istio's nftables
//! goldens, `docs/istio-semantics.md` §5.3). Used by `mesh-redirect render`; the kernel never
//! sees this text, but it is the easiest way for a person to read what `apply` will program:
//!
//! ```text
//! add table inet istio-proxy-nat
//! flush table inet istio-proxy-nat
//! add chain inet istio-proxy-nat output { type nat hook output priority -100 ; }
//! add chain inet istio-proxy-nat istio-output
//! add rule inet istio-proxy-nat output counter jump istio-output
//! add rule inet istio-proxy-nat istio-output skuid 1337 counter return
//! ```

use crate::model::{Action, Chain, CtState, Family, Match, Plan, Position, Rule, Step, Table};
use std::collections::HashMap;
use std::fmt::Write;

/// The whole transaction, one command per line.
pub fn render(plan: &Plan) -> String {
    let mut out = String::new();
    for table in plan.tables() {
        let t = table.nft_name();
        let _ = writeln!(out, "add table inet {t}");
        let _ = writeln!(out, "flush table inet {t}");
        for chain in plan.chains(table) {
            match chain.base(table) {
                Some(b) => {
                    let _ = writeln!(
                        out,
                        "add chain inet {t} {} {{ type {} hook {} priority {} ; }}",
                        chain.nft_name(),
                        b.kind.name(),
                        b.hook.name(),
                        b.priority
                    );
                }
                None => {
                    let _ = writeln!(out, "add chain inet {t} {}", chain.nft_name());
                }
            }
        }
        // Istio turns an insert into an append when the chain has no rule from this
        // transaction yet or the index is past its end (`docs/istio-semantics.md` §5.3).
        let mut emitted: HashMap<Chain, usize> = HashMap::new();
        for step in plan.steps.iter().filter(|s| s.table == table) {
            let count = emitted.entry(step.chain).or_default();
            let rule = rule_text(step);
            match step.position {
                Position::Insert(i) if *count > 0 && i < *count => {
                    let _ = writeln!(
                        out,
                        "insert rule inet {t} {} index {i} {rule}",
                        step.chain.nft_name()
                    );
                }
                _ => {
                    let _ = writeln!(out, "add rule inet {t} {} {rule}", step.chain.nft_name());
                }
            }
            *count += 1;
        }
    }
    out
}

/// One rule in Istio's spelling: `oifname lo meta l4proto tcp tcp dport != 53 skuid != 1337 counter return`.
pub fn rule_text(step: &Step) -> String {
    let mut parts: Vec<String> = step
        .rule
        .matches
        .iter()
        .map(|m| match_text(m, step.table))
        .collect();
    parts.push(action_text(&step.rule));
    parts.join(" ")
}

fn match_text(m: &Match, table: Table) -> String {
    // Istio writes `meta skuid` in its raw table and plain `skuid` elsewhere; both are the
    // same expression.
    let meta = if table == Table::Raw { "meta " } else { "" };
    let neg = |n: bool| if n { "!= " } else { "" };
    let ip = |c: &crate::config::Cidr| if c.is_v4() { "ip" } else { "ip6" };
    match m {
        Match::InIface(i) => format!("iifname {i}"),
        Match::OutIface(i) => format!("oifname {i}"),
        Match::L4Proto(p) => format!("meta l4proto {}", p.name()),
        Match::DPort {
            proto,
            ports,
            negate,
        } => {
            let value = if ports.len() == 1 {
                ports[0].to_string()
            } else {
                format!(
                    "{{ {} }}",
                    ports
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            format!("{} dport {}{value}", proto.name(), neg(*negate))
        }
        Match::SPort { proto, port } => format!("{} sport {port}", proto.name()),
        Match::SAddr { cidr, negate } => format!("{} saddr {}{cidr}", ip(cidr), neg(*negate)),
        Match::DAddr { cidr, negate } => format!("{} daddr {}{cidr}", ip(cidr), neg(*negate)),
        Match::SkUid { uid, negate } => format!("{meta}skuid {}{uid}", neg(*negate)),
        Match::SkGid { group, negate } => format!("{meta}skgid {}{}", neg(*negate), group.spelling),
        Match::CtState(CtState::Invalid) => "ct state invalid".to_string(),
        Match::CtState(CtState::RelatedEstablished) => "ct state related,established".to_string(),
        Match::Mark { mark, negate } => format!("mark {}{mark}", neg(*negate)),
        Match::CtMark(mark) => format!("ct mark {mark}"),
    }
}

fn action_text(rule: &Rule) -> String {
    match &rule.action {
        Action::Return => "counter return".into(),
        Action::Accept => "counter accept".into(),
        Action::Drop => "counter drop".into(),
        Action::Jump(c) => format!("counter jump {}", c.nft_name()),
        Action::Redirect { port } => format!("counter redirect to :{port}"),
        Action::Tproxy { port, mark } => {
            let family = if rule.family == Family::V6 {
                "ip6"
            } else {
                "ip"
            };
            format!("tproxy {family} to :{port} meta mark set {mark} counter accept")
        }
        Action::SetMark(m) => format!("counter meta mark set {m}"),
        Action::SaveMarkToConntrack => "counter ct mark set mark".into(),
        Action::RestoreMarkFromConntrack => "counter meta mark set ct mark".into(),
        Action::CtZone(z) => format!("counter ct zone set {z}"),
    }
}
