//! The life of a namespace's rules: atomic failure, idempotent re-apply, drift detection,
//! removal, and foreign state that must survive all of it. The oracle is `nft` (and `ip`
//! for TPROXY's policy routing).

mod support;

use support::*;

const FOREIGN_TABLE: &str = "table inet user-firewall {
	chain input {
		type filter hook input priority 0; policy accept;
		tcp dport 22 counter packets 7 bytes 420 accept
	}
}
";

fn add_foreign_table(ns: &TestNetns) {
    let file = TempFile::new("fw", FOREIGN_TABLE);
    ns.exec_ok(&["nft", "-f", file.0.to_str().unwrap()]);
}

fn foreign_table(ns: &TestNetns) -> String {
    ns.exec_ok(&["nft", "list", "table", "inet", "user-firewall"])
}

fn routing(ns: &TestNetns) -> String {
    let mut s = ns.exec_ok(&["ip", "rule", "show"]);
    s += &ns.exec_ok(&["ip", "-6", "rule", "show"]);
    s += &ns.exec_ok(&["ip", "route", "show", "table", "all"]);
    s += &ns.exec_ok(&["ip", "-6", "addr", "show", "dev", "lo"]);
    s
}

#[test]
fn a_batch_failing_at_its_last_message_leaves_an_empty_namespace_empty() {
    let ns = TestNetns::new("ae");
    let before_routes = routing(&ns);
    // TPROXY with IPv6: routes and the ::6 address are added before the batch, and must be
    // taken back when it fails.
    let args = strings(EVERY_TABLE);
    let out = ns.apply_failing_at_the_last_message(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("fault injection"),
        "the error names the failing object: {stderr}"
    );
    assert_eq!(ns.ruleset(), "", "nothing of the batch may remain");
    assert_eq!(
        routing(&ns),
        before_routes,
        "routes and addresses are taken back"
    );
    // The same apply without the fault works, and does program the routes.
    ns.mesh_ok("apply", &args, &[]);
    assert!(ns.ruleset().contains("istio-proxy-mangle"));
    assert!(ns
        .exec_ok(&["ip", "rule", "show"])
        .contains("fwmark 0x539 lookup 133"));
}

#[test]
fn a_failed_replace_leaves_the_existing_ruleset_byte_identical() {
    let ns = TestNetns::new("ar");
    add_foreign_table(&ns);
    ns.mesh_ok("apply", &strings(&["-m", "TPROXY"]), &[]);
    let before = ns.ruleset();
    let before_routes = routing(&ns);
    ns.apply_failing_at_the_last_message(&strings(&[
        "-b",
        "80,443",
        "-i",
        "10.0.0.0/8",
        "--redirect-dns",
        "--capture-all-dns",
    ]));
    assert_eq!(ns.ruleset(), before, "a rejected replace changes nothing");
    assert_eq!(routing(&ns), before_routes);
}

#[test]
fn apply_twice_gives_the_same_ruleset_and_verify_tracks_drift() {
    let ns = TestNetns::new("id");
    let args = strings(&[
        "--ipv6",
        "-x",
        "10.1.0.0/16,fd00::/8",
        "--redirect-dns",
        "--capture-all-dns",
    ]);
    let first = ns.assert_reapply_is_idempotent(&args, TestNetns::ruleset);

    // Delete one of our rules by hand: verify exits 1 and says which.
    ns.delete_nft_rule("istio-proxy-nat", "istio-output", |l| {
        l.contains("meta skuid 1337") && l.contains("return") && !l.contains("oifname")
    });
    let out = ns.mesh("verify", &args, &[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "verify reports drift with exit 1"
    );
    let diff = String::from_utf8_lossy(&out.stdout);
    assert!(
        diff.contains("missing rule") && diff.contains("skuid 1337 counter return"),
        "diff names the rule: {diff}"
    );
    assert_eq!(diff.lines().count(), 1, "exactly one difference: {diff}");

    // A rule added by hand to our chain is reported too.
    ns.exec_ok(&[
        "nft",
        "add",
        "rule",
        "inet",
        "istio-proxy-nat",
        "istio-redirect",
        "tcp",
        "dport",
        "9999",
        "accept",
    ]);
    let out = ns.mesh("verify", &args, &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("unexpected rule"));

    // Re-apply repairs it.
    ns.mesh_ok("apply", &args, &[]);
    assert!(
        ns.mesh("verify", &args, &[]).status.success(),
        "verify passes after re-apply"
    );
    assert_eq!(ns.ruleset(), first);

    // Verifying a different configuration than the one applied fails.
    assert_eq!(
        ns.mesh("verify", &strings(&["-b", "80"]), &[])
            .status
            .code(),
        Some(1)
    );
}

#[test]
fn remove_deletes_only_ours_and_succeeds_twice() {
    let ns = TestNetns::new("rm");
    add_foreign_table(&ns);
    let foreign = foreign_table(&ns);
    let routes_before = routing(&ns);
    let args = strings(&["-m", "TPROXY"]);
    ns.mesh_ok("apply", &args, &[]);
    assert_eq!(
        foreign_table(&ns),
        foreign,
        "apply keeps the user's table and its counters"
    );
    ns.mesh_ok("apply", &args, &[]);
    assert_eq!(
        foreign_table(&ns),
        foreign,
        "re-apply keeps the user's table and its counters"
    );
    let rules = ns.exec_ok(&["ip", "rule", "show"]);
    assert_eq!(
        rules.matches("fwmark 0x539 lookup 133").count(),
        1,
        "re-apply adds no second policy rule: {rules}"
    );
    ns.mesh_ok("remove", &args, &[]);
    assert_eq!(
        ns.ruleset(),
        foreign,
        "remove leaves exactly the user's table"
    );
    assert_eq!(
        routing(&ns),
        routes_before,
        "remove takes back the TPROXY routes"
    );
    ns.mesh_ok("remove", &args, &[]);
    assert_eq!(ns.ruleset(), foreign, "a second remove is a no-op");
    assert_eq!(
        ns.mesh("verify", &args, &[]).status.code(),
        Some(1),
        "verify fails once removed"
    );
}

#[test]
fn remove_on_a_namespace_without_our_tables_succeeds() {
    let ns = TestNetns::new("rn");
    ns.mesh_ok("remove", &[], &[]);
    assert_eq!(ns.ruleset(), "");
    assert_no_forwarding();
}

#[test]
fn verify_checks_the_tproxy_policy_routing_too() {
    for backend in ["nftables", "iptables-legacy"] {
        let ns = TestNetns::new("vr");
        let args = strings(&["--backend", backend, "-m", "TPROXY", "--ipv6"]);
        ns.mesh_ok("apply", &args, &[]);
        assert!(
            ns.mesh("verify", &args, &[]).status.success(),
            "{backend}: verify passes after apply"
        );
        ns.exec_ok(&["ip", "-6", "rule", "del", "fwmark", "1337", "lookup", "133"]);
        ns.exec_ok(&[
            "ip",
            "route",
            "del",
            "local",
            "0.0.0.0/0",
            "dev",
            "lo",
            "table",
            "133",
        ]);
        let out = ns.mesh("verify", &args, &[]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{backend}: routing drift is drift"
        );
        let diff = String::from_utf8_lossy(&out.stdout);
        assert!(
            diff.contains("missing ip -6 rule fwmark 1337 lookup 133"),
            "{backend}: {diff}"
        );
        assert!(
            diff.contains("missing ip route local 0.0.0.0/0 dev lo table 133"),
            "{backend}: {diff}"
        );
        ns.mesh_ok("apply", &args, &[]);
        assert!(
            ns.mesh("verify", &args, &[]).status.success(),
            "{backend}: re-apply repairs the routing"
        );
    }
}
