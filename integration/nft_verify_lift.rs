//! `verify` on the real kernel shows rules another tool added to our chains in nft syntax,
//! the way it shows the rules it misses (issue 10): `nft add rule … meta skgid 4242 counter
//! return` reads back as `unexpected rule N: skgid 4242 counter return`. A rule the model
//! cannot express (no counter, a statement we never write) is shown as raw expressions.

mod support;

use support::*;

const NAT: &str = "istio-proxy-nat";

/// How many rules the plan for `args` puts in nat `istio-output`.
fn planned_output_rules(args: &[String]) -> usize {
    let raw = mesh_redirect::cli::raw_config(args, &|_| None).unwrap();
    let cfg = raw
        .validate(&mesh_redirect::config::GroupFile::default())
        .unwrap();
    let plan = mesh_redirect::model::build(&cfg, mesh_redirect::model::Flavor::Nftables);
    plan.resolve_inet()
        .iter()
        .find(|c| {
            c.table == mesh_redirect::model::Table::Nat
                && c.chain == mesh_redirect::model::Chain::IstioOutput
        })
        .map_or(0, |c| c.rules.len())
}

/// `nft add rule inet istio-proxy-nat istio-output <rule>`, the rule as nft words.
fn add_output_rule(ns: &TestNetns, rule: &str) {
    let mut argv = vec!["nft", "add", "rule", "inet", NAT, "istio-output"];
    argv.extend(rule.split(' '));
    ns.exec_ok(&argv);
}

#[test]
fn rules_added_by_hand_are_shown_in_nft_syntax() {
    let ns = TestNetns::new("lift");
    let args = strings(&["--ipv6"]);
    ns.mesh_ok("apply", &args, &[]);
    // Rules another tool adds, and how verify shows them: in nft words when the model can
    // say them, raw when it cannot.
    let lifted = [
        (
            "meta skgid 4242 counter return",
            "skgid 4242 counter return",
        ),
        (
            "ip daddr 10.2.0.0/16 tcp dport { 80, 443 } counter jump istio-redirect",
            "ip daddr 10.2.0.0/16 tcp dport { 80, 443 } counter jump istio-redirect",
        ),
        (
            "oifname eth7 ip6 saddr != fd00::/8 udp dport 5353 counter accept",
            "oifname eth7 ip6 saddr != fd00::/8 udp dport 5353 counter accept",
        ),
        (
            "ct state invalid meta mark 7 counter drop",
            "ct state invalid mark 7 counter drop",
        ),
        (
            "ip saddr 10.16.0.0/12 udp sport 53 counter ct zone set 3",
            "ip saddr 10.16.0.0/12 udp sport 53 counter ct zone set 3",
        ),
    ];
    let raw = [
        // No counter.
        (
            "tcp dport 9999 accept",
            "[meta load l4proto] [cmp eq 0x06] [payload 2b @ transport + 2] [cmp eq 0x270f] [accept]",
        ),
        // `limit` is a statement we never write.
        (
            "meta skuid 1000 limit rate 10/second counter return",
            "[meta load skuid] [cmp eq 0xe8030000] [limit …] [counter] [return]",
        ),
        // A wildcard interface compares a prefix of the name.
        (
            "iifname \"eth*\" counter return",
            "[meta load iifname] [cmp eq 0x657468] [counter] [return]",
        ),
    ];
    for (rule, _) in lifted.iter().chain(&raw) {
        add_output_rule(&ns, rule);
    }
    let out = ns.mesh("verify", &args, &[]);
    assert_eq!(out.status.code(), Some(1), "drift: {}", stderr_of(&out));
    let n = planned_output_rules(&args);
    let shown: Vec<&str> = lifted.iter().chain(&raw).map(|(_, text)| *text).collect();
    let expected: String = shown
        .iter()
        .enumerate()
        .map(|(i, text)| {
            format!(
                "table inet {NAT}, chain istio-output: unexpected rule {}: {text}\n",
                n + 1 + i
            )
        })
        .collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);

    // The text shown is nft syntax for the same rule: apply repairs, adding the shown texts
    // (and the two raw ones as first written) gives the same report.
    ns.mesh_ok("apply", &args, &[]);
    for rule in lifted
        .iter()
        .map(|(_, text)| text)
        .chain(raw.iter().map(|(r, _)| r))
    {
        add_output_rule(&ns, rule);
    }
    let again = ns.mesh("verify", &args, &[]);
    assert_eq!(String::from_utf8_lossy(&again.stdout), expected);
}
