//! The iptables-legacy backend through the life of a namespace: a failing last table write
//! rolls every earlier table back, re-apply is idempotent, `verify` tracks drift, `remove`
//! takes only ours, and a writer racing us between read and write (the `EAGAIN` path) ends
//! in a consistent table. The oracle is `iptables-legacy-save`.

mod support;

use support::*;

/// Rules and chains of both families, counters included, comment lines dropped.
fn saved(ns: &TestNetns) -> String {
    ns.legacy_saved(true)
}

/// The rules (with counters) and user chains of `saved` output: what a failed apply must
/// leave exactly as it was. Table and policy lines are left out because reading a table
/// makes the kernel instantiate it (empty, default ACCEPT policies), which cannot be undone.
fn rules_of(save: &str) -> Vec<String> {
    let mut table = "";
    let mut out = Vec::new();
    for l in save.lines() {
        if let Some(t) = l.strip_prefix('*') {
            table = t;
        } else if l.starts_with('[')
            || l.starts_with("-A")
            || (l.starts_with(':') && l.contains(" - ["))
        {
            out.push(format!("{table}: {l}"));
        }
    }
    out
}

#[test]
fn a_failing_last_table_write_rolls_back_every_table() {
    let ns = TestNetns::new("xa");
    // Foreign rules with counters in two tables we also write.
    ns.exec_ok(&[
        "iptables-legacy",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-c",
        "5",
        "300",
        "-s",
        "10.9.9.9/32",
        "-j",
        "RETURN",
    ]);
    ns.exec_ok(&[
        "iptables-legacy",
        "-t",
        "mangle",
        "-I",
        "PREROUTING",
        "-c",
        "3",
        "180",
        "-p",
        "udp",
        "-j",
        "RETURN",
    ]);
    let before = saved(&ns);
    let routes_before = ns.exec_ok(&["ip", "rule", "show"]);
    // TPROXY + DNS + IPv6: mangle, nat and raw in both families, routes too.
    let args = legacy_args(EVERY_TABLE);
    ns.apply_failing_at_the_last_message(&args);
    assert_eq!(
        rules_of(&saved(&ns)),
        rules_of(&before),
        "every table is as it was, counters included"
    );
    assert_eq!(ns.exec_ok(&["ip", "rule", "show"]), routes_before);
    ns.mesh_ok("apply", &args, &[]);
    assert!(ns.mesh("verify", &args, &[]).status.success());
}

#[test]
fn an_empty_namespace_stays_without_rules_when_the_apply_fails() {
    let ns = TestNetns::new("xe");
    ns.apply_failing_at_the_last_message(&legacy_args(&["--ipv6", "-m", "TPROXY"]));
    let after = saved(&ns);
    assert!(
        rules_of(&after).is_empty(),
        "no rule or chain remains:\n{after}"
    );
}

#[test]
fn re_apply_is_idempotent_and_verify_tracks_drift() {
    let ns = TestNetns::new("xi");
    let args = legacy_args(&[
        "--ipv6",
        "-x",
        "10.1.0.0/16,fd00::/8",
        "--redirect-dns",
        "--capture-all-dns",
    ]);
    let first = ns.assert_reapply_is_idempotent(&args, saved);

    ns.delete_legacy_proxy_uid_return();
    let out = ns.mesh("verify", &args, &[]);
    assert_eq!(out.status.code(), Some(1), "verify reports drift");
    let diff = String::from_utf8_lossy(&out.stdout);
    assert!(
        diff.contains("IPv4 table nat")
            && diff.contains("ISTIO_OUTPUT")
            && diff.contains("missing"),
        "{diff}"
    );

    ns.exec_ok(&[
        "ip6tables-legacy",
        "-t",
        "nat",
        "-A",
        "ISTIO_REDIRECT",
        "-p",
        "tcp",
        "--dport",
        "9999",
        "-j",
        "RETURN",
    ]);
    let diff = String::from_utf8_lossy(&ns.mesh("verify", &args, &[]).stdout).into_owned();
    assert!(
        diff.contains("IPv6 table nat") && diff.contains("unexpected"),
        "{diff}"
    );

    ns.mesh_ok("apply", &args, &[]);
    assert!(
        ns.mesh("verify", &args, &[]).status.success(),
        "re-apply repairs"
    );
    assert_eq!(saved(&ns), first);
}

#[test]
fn remove_takes_only_ours_and_succeeds_twice() {
    let ns = TestNetns::new("xr");
    ns.add_legacy_counted_rule(
        "nat",
        "OUTPUT",
        ("2", "120"),
        &["-d", "10.8.8.8/32", "-j", "RETURN"],
    );
    ns.add_legacy_ssh_accept("9", "540");
    let before = saved(&ns);
    let args = legacy_args(&["-m", "TPROXY"]);
    ns.mesh_ok("apply", &args, &[]);
    ns.mesh_ok("remove", &args, &[]);
    let after = saved(&ns);
    for line in before
        .lines()
        .filter(|l| l.starts_with('[') || l.starts_with("-A"))
    {
        assert!(
            after.contains(line),
            "foreign rule {line} survives remove:\n{after}"
        );
    }
    assert!(
        !after.contains("ISTIO"),
        "nothing of ours remains:\n{after}"
    );
    ns.mesh_ok("remove", &args, &[]);
    assert_eq!(saved(&ns), after, "a second remove changes nothing");
    assert!(!ns.exec_ok(&["ip", "rule", "show"]).contains("lookup 133"));
}

#[test]
fn a_writer_racing_between_read_and_write_makes_us_retry_and_both_survive() {
    let ns = TestNetns::new("xc");
    let args = legacy_args(&["--ipv6"]);
    let out = ns.apply_with_fault(&args, "race");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = String::from_utf8_lossy(&out.stderr);
    let retries: usize = log
        .split("retries=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the applied line reports retries");
    assert!(retries > 0, "the EAGAIN path ran: {log}");
    assert!(
        ns.mesh("verify", &args, &[]).status.success(),
        "ours are complete"
    );
    // The racing writer's rule (an unconditional RETURN appended to a built-in chain) is kept.
    let save = ns.exec_ok(&["iptables-legacy-save", "-t", "nat"]);
    assert!(
        save.lines().any(|l| l == "-A PREROUTING -j RETURN"),
        "theirs is present:\n{save}"
    );
}
