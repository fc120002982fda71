//! What is ours is recognised by shape, so removal and re-configuration converge without
//! the user repeating the flags of the apply that wrote the rules:
//! * a bare `remove` takes away every rule of ours in built-in chains (exclude-interface
//!   RETURNs, TPROXY's mark rules) and the policy routing, whatever their parameters, and
//!   leaves a foreign rule of another shape alone;
//! * a re-apply with another TPROXY mark leaves nothing of the old mark behind (both
//!   backends), and `verify` of one configuration reports the other's leftovers.

mod support;

use support::*;

fn ip_rules(ns: &TestNetns) -> String {
    ns.exec_ok(&["ip", "rule"]) + &ns.exec_ok(&["ip", "-6", "rule"])
}

fn table_routes(ns: &TestNetns, table: &str) -> String {
    ns.exec_ok(&["ip", "route", "show", "table", table])
        + &ns.exec_ok(&["ip", "-6", "route", "show", "table", table])
}

#[test]
fn a_bare_remove_takes_every_legacy_rule_and_route_of_ours_and_nothing_else() {
    let ns = TestNetns::new("bareremove");
    ns.exec_ok(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ]);
    ns.mesh_ok(
        "apply",
        &legacy_args(&["-c", "eth0", "-m", "TPROXY", "--ipv6=true"]),
        &[],
    );
    // Foreign rules of other shapes in the same chains, both families.
    for ipt in ["iptables-legacy", "ip6tables-legacy"] {
        ns.exec_ok(&[
            ipt,
            "-t",
            "mangle",
            "-A",
            "PREROUTING",
            "-i",
            "eth0",
            "-j",
            "ACCEPT",
        ]);
        ns.exec_ok(&[
            ipt,
            "-t",
            "mangle",
            "-A",
            "OUTPUT",
            "-p",
            "udp",
            "-j",
            "MARK",
            "--set-mark",
            "7",
        ]);
        ns.exec_ok(&[
            ipt,
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "-i",
            "eth0",
            "-j",
            "RETURN",
        ]);
    }
    let before = ns.legacy_saved(false);
    assert!(
        before.contains("-i eth0 -j RETURN") && before.contains("CONNMARK"),
        "{before}"
    );
    assert!(ip_rules(&ns).contains("lookup 133"));

    ns.mesh_ok("remove", &[], &[]);

    let after = ns.legacy_saved(false);
    for ours in [
        "ISTIO_",
        "-i eth0 -j RETURN",
        "-o eth0 -j RETURN",
        "CONNMARK",
        "0x539",
        "0x53a",
    ] {
        assert!(!after.contains(ours), "{ours:?} left behind:\n{after}");
    }
    for foreign in [
        "-A PREROUTING -i eth0 -j ACCEPT",
        "-A OUTPUT -p udp -j MARK --set-xmark 0x7/0xffffffff",
        "-A PREROUTING -i eth0 -p tcp -j RETURN",
    ] {
        assert_eq!(
            after.matches(foreign).count(),
            2,
            "{foreign:?} (both families) must survive:\n{after}"
        );
    }
    assert!(!ip_rules(&ns).contains("lookup 133"), "{}", ip_rules(&ns));
    assert_eq!(table_routes(&ns, "133").trim(), "");
}

#[test]
fn a_policy_rule_pointing_to_a_table_with_other_routes_is_not_ours() {
    let ns = TestNetns::new("foreignrule");
    ns.exec_ok(&[
        "ip", "link", "add", "d0", "type", "veth", "peer", "name", "d0p",
    ]);
    ns.exec_ok(&["ip", "link", "set", "d0", "up"]);
    ns.exec_ok(&["ip", "rule", "add", "fwmark", "7", "lookup", "77"]);
    ns.exec_ok(&[
        "ip", "route", "add", "local", "default", "dev", "lo", "table", "77",
    ]);
    ns.exec_ok(&[
        "ip",
        "route",
        "add",
        "192.0.2.0/24",
        "dev",
        "d0",
        "table",
        "77",
    ]);
    ns.mesh_ok("remove", &[], &[]);
    assert!(ip_rules(&ns).contains("lookup 77"), "{}", ip_rules(&ns));
    let routes = ns.exec_ok(&["ip", "route", "show", "table", "77"]);
    assert!(
        routes.contains("192.0.2.0/24") && routes.contains("local default"),
        "{routes}"
    );
}

#[test]
fn a_changed_tproxy_mark_converges_on_both_backends() {
    for backend in ["nftables", "iptables-legacy"] {
        let ns = TestNetns::new("newmark");
        let args = |mark: &str| {
            strings(&[
                "--backend",
                backend,
                "-m",
                "TPROXY",
                "-t",
                mark,
                "--ipv6=true",
            ])
        };
        ns.mesh_ok("apply", &args("1337"), &[]);
        // verify of the other mark sees both the missing and the leftover policy rule.
        let out = ns.mesh("verify", &args("1338"), &[]);
        assert_eq!(out.status.code(), Some(1), "{backend}");
        let lines = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            lines.contains("missing ip rule fwmark 1338 lookup 133"),
            "{backend}: {lines}"
        );
        assert!(
            lines.contains("unexpected ip rule fwmark 1337 lookup 133"),
            "{backend}: {lines}"
        );

        ns.mesh_ok("apply", &args("1338"), &[]);
        let rules = ip_rules(&ns);
        assert!(
            !rules.contains("0x539"),
            "{backend}: the old mark's rule stays:\n{rules}"
        );
        assert_eq!(
            rules.matches("fwmark 0x53a lookup 133").count(),
            2,
            "{backend}:\n{rules}"
        );
        if backend == "iptables-legacy" {
            let saved = ns.legacy_saved(false);
            assert!(!saved.contains("0x539/"), "{saved}");
            assert!(!saved.contains("--mark 0x539"), "{saved}");
        }
        ns.mesh_ok("verify", &args("1338"), &[]);
        // Back to REDIRECT: no TPROXY routing of ours is left.
        ns.mesh_ok(
            "apply",
            &strings(&["--backend", backend, "--ipv6=true"]),
            &[],
        );
        assert!(
            !ip_rules(&ns).contains("lookup 133"),
            "{backend}: {}",
            ip_rules(&ns)
        );
        ns.mesh_ok(
            "verify",
            &strings(&["--backend", backend, "--ipv6=true"]),
            &[],
        );
    }
}
