//! The plan as Istio's iptables transcript (the format of its iptables goldens,
//! `docs/istio-semantics.md` §4.3):
//!
//! ```text
//! iptables-save
//! ip6tables-save
//! * nat
//! -N ISTIO_INBOUND
//! -A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
//! -A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
//! COMMIT
//! iptables-save
//! ```
//!
//! Only text: `apply` never produces or parses it. The argument order is Istio's: in nat and
//! raw `iface, ! addr, -p/ports, addr, -m …`; in mangle `! addr, -p/ports, addr, iface, -m …`.

use crate::model::{Action, CtState, Family, Match, Plan, Position, Proto, Rule, Step, Table};

fn is_builtin_target(name: &str) -> bool {
    matches!(
        name,
        "INPUT"
            | "OUTPUT"
            | "FORWARD"
            | "PREROUTING"
            | "POSTROUTING"
            | "ACCEPT"
            | "RETURN"
            | "DROP"
    )
}

/// `"! "` for a negated match, else nothing.
fn not(negate: bool) -> &'static str {
    if negate {
        "! "
    } else {
        ""
    }
}

/// A rule's match arguments, sorted into the groups whose order differs per table.
#[derive(Default)]
struct MatchArgs {
    iface: Vec<String>,
    neg_addr: Vec<String>,
    proto: Option<Proto>,
    ports: Vec<String>,
    pos_addr: Vec<String>,
    others: Vec<String>,
}

impl MatchArgs {
    fn of(rule: &Rule) -> MatchArgs {
        let mut args = MatchArgs::default();
        for m in &rule.matches {
            args.add(m);
        }
        args
    }

    fn add(&mut self, m: &Match) {
        match m {
            Match::InIface(i) => self.iface.push(format!("-i {i}")),
            Match::OutIface(i) => self.iface.push(format!("-o {i}")),
            Match::L4Proto(p) => self.proto = Some(*p),
            Match::DPort {
                proto: p,
                ports: list,
                negate,
            } => {
                self.proto = Some(*p);
                let n = not(*negate);
                if list.len() == 1 {
                    self.ports.push(format!("{n}--dport {}", list[0]));
                } else {
                    let l: Vec<String> = list.iter().map(|p| p.to_string()).collect();
                    self.ports
                        .push(format!("-m multiport {n}--dports {}", l.join(",")));
                }
            }
            Match::SPort { proto: p, port } => {
                self.proto = Some(*p);
                self.ports.push(format!("--sport {port}"));
            }
            Match::SAddr { cidr, negate: true } => self.neg_addr.push(format!("! -s {cidr}")),
            Match::DAddr { cidr, negate: true } => self.neg_addr.push(format!("! -d {cidr}")),
            Match::SAddr {
                cidr,
                negate: false,
            } => self.pos_addr.push(format!("-s {cidr}")),
            Match::DAddr {
                cidr,
                negate: false,
            } => self.pos_addr.push(format!("-d {cidr}")),
            Match::SkUid { uid, negate } => self
                .others
                .push(format!("-m owner {}--uid-owner {uid}", not(*negate))),
            Match::SkGid { group, negate } => self.others.push(format!(
                "-m owner {}--gid-owner {}",
                not(*negate),
                group.spelling
            )),
            Match::CtState(CtState::Invalid) => {
                self.others.push("-m conntrack --ctstate INVALID".into())
            }
            Match::CtState(CtState::RelatedEstablished) => self
                .others
                .push("-m conntrack --ctstate RELATED,ESTABLISHED".into()),
            Match::Mark { mark, negate } => self
                .others
                .push(format!("-m mark {}--mark {mark}", not(*negate))),
            Match::CtMark(mark) => self.others.push(format!("-m connmark --mark {mark}")),
        }
    }

    /// The groups in Istio's order for `table`.
    fn ordered(self, table: Table) -> Vec<String> {
        let mut proto_ports = Vec::new();
        if let Some(p) = self.proto {
            proto_ports.push(format!("-p {}", p.name()));
        }
        proto_ports.extend(self.ports);
        if table == Table::Mangle {
            [
                self.neg_addr,
                proto_ports,
                self.pos_addr,
                self.iface,
                self.others,
            ]
            .concat()
        } else {
            [
                self.iface,
                self.neg_addr,
                proto_ports,
                self.pos_addr,
                self.others,
            ]
            .concat()
        }
    }
}

/// The `-j …` argument; `proto` is the rule's protocol (it picks Istio's REDIRECT spelling).
fn target_arg(action: &Action, proto: Option<Proto>) -> String {
    match action {
        Action::Return => "-j RETURN".into(),
        Action::Accept => "-j ACCEPT".into(),
        Action::Drop => "-j DROP".into(),
        Action::Jump(c) => format!("-j {}", c.iptables_name()),
        // Istio spells the UDP DNS redirect with the singular option.
        Action::Redirect { port } if proto == Some(Proto::Udp) => {
            format!("-j REDIRECT --to-port {port}")
        }
        Action::Redirect { port } => format!("-j REDIRECT --to-ports {port}"),
        Action::Tproxy { port, mark } => {
            format!("-j TPROXY --tproxy-mark {mark}/0xffffffff --on-port {port}")
        }
        Action::SetMark(m) => format!("-j MARK --set-mark {m}"),
        Action::SaveMarkToConntrack => "-j CONNMARK --save-mark".into(),
        Action::RestoreMarkFromConntrack => "-j CONNMARK --restore-mark".into(),
        Action::CtZone(z) => format!("-j CT --zone {z}"),
    }
}

/// One rule's arguments after `-A CHAIN` / `-I CHAIN POS`.
pub fn rule_args(step: &Step) -> String {
    let rule: &Rule = &step.rule;
    let args = MatchArgs::of(rule);
    let proto = args.proto;
    let mut parts = args.ordered(step.table);
    parts.push(target_arg(&rule.action, proto));
    parts.join(" ")
}

fn line(step: &Step) -> String {
    let chain = step.chain.iptables_name();
    match step.position {
        Position::Append => format!("-A {chain} {}", rule_args(step)),
        Position::Insert(i) => format!("-I {chain} {} {}", i + 1, rule_args(step)),
    }
}

/// One family's `iptables-restore --noflush` payload.
pub fn payload(plan: &Plan, family: Family) -> String {
    let steps: Vec<&Step> = plan
        .steps
        .iter()
        .filter(|s| s.rule.family == Family::Any || s.rule.family == family)
        .collect();
    let tables = [Table::Mangle, Table::Nat, Table::Raw]; // lexicographic: filter (never used), mangle, nat, raw
    let mut out = String::new();
    for table in tables {
        let of_table: Vec<&&Step> = steps.iter().filter(|s| s.table == table).collect();
        if of_table.is_empty() {
            continue;
        }
        let mut declared: Vec<&str> = Vec::new();
        for s in &of_table {
            if !s.chain.is_builtin() && !declared.contains(&s.chain.iptables_name()) {
                declared.push(s.chain.iptables_name());
            }
        }
        for s in &of_table {
            if let Action::Jump(c) = s.rule.action {
                let name = c.iptables_name();
                if !is_builtin_target(name) && !declared.contains(&name) {
                    declared.push(name);
                }
            }
        }
        out += &format!("* {}\n", table.iptables_name());
        for c in declared {
            out += &format!("-N {c}\n");
        }
        for s in &of_table {
            out += &line(s);
            out.push('\n');
        }
        out += "COMMIT\n";
    }
    out
}

/// The whole transcript Istio's golden files record.
pub fn render(plan: &Plan) -> String {
    let mut out = String::from("iptables-save\nip6tables-save\n");
    out += &payload(plan, Family::V4);
    if plan.enable_ipv6 {
        out += &payload(plan, Family::V6);
    }
    out += "iptables-save\n";
    if plan.enable_ipv6 {
        out += "ip6tables-save\n";
    }
    out
}
