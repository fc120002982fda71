//! Reduced privileges: when state cannot be read, the operation fails, naming what could
//! not be read and the capability it needs; it never takes "could not read" for "empty".
//! The binary runs under `setpriv` with exactly the capability sets of the field reports:
//! * `CAP_NET_ADMIN` + `CAP_SYS_ADMIN`, no `CAP_NET_RAW` (the legacy sockets need it);
//! * uid 65534 with `CAP_NET_ADMIN` + `CAP_SYS_ADMIN` + `CAP_NET_RAW` (then the list of
//!   loaded legacy tables in `/proc` is readable by root only).

mod support;

use std::process::{Command, Output};
use support::*;

/// `mesh-redirect ARGS` under `setpriv` with `caps` (e.g. `net_admin,sys_admin`), as root or
/// as uid 65534.
fn reduced(caps: &str, nobody: bool, args: &[&str]) -> Output {
    let set = format!("-all,+{}", caps.replace(',', ",+"));
    let mut cmd = Command::new("setpriv");
    if nobody {
        cmd.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"]);
        cmd.args(["--inh-caps", &set, "--ambient-caps", &set]);
    } else {
        cmd.args(["--inh-caps", &set]);
    }
    cmd.args(["--bounding-set", &set, "--", binary()]);
    cmd.args(args);
    run(&mut cmd)
}

/// Exit 6 (a missing privilege), with standard error naming `what`.
fn assert_refused_naming(out: &Output, what: &str) {
    assert_eq!(out.status.code(), Some(6), "{}", stderr_of(out));
    assert!(stderr_of(out).contains(what), "{}", stderr_of(out));
}

fn has_legacy_rules(ns: &TestNetns) -> bool {
    ns.legacy_saved(false).contains("ISTIO_")
}

#[test]
fn auto_without_cap_net_raw_refuses_to_choose_while_legacy_rules_may_exist() {
    require_root();
    let ns = TestNetns::new("nonetraw");
    ns.mesh_ok("apply", &legacy_args(&[]), &[]);
    let path = ns.path();
    let out = reduced("net_admin,sys_admin", false, &["apply", "--netns", &path]);
    assert_refused_naming(&out, "CAP_NET_RAW");
    assert!(
        !ns.ruleset().contains("istio-proxy"),
        "both backends active:\n{}",
        ns.ruleset()
    );
    assert!(has_legacy_rules(&ns));
    // An explicit nftables choice cannot migrate either: it cannot see the legacy rules.
    let out = reduced(
        "net_admin,sys_admin",
        false,
        &["apply", "--netns", &path, "--backend", "nftables"],
    );
    assert_eq!(out.status.code(), Some(6), "{}", stderr_of(&out));
    assert!(!ns.ruleset().contains("istio-proxy"));
}

#[test]
fn without_cap_net_raw_nftables_alone_still_works_on_a_namespace_without_legacy_tables() {
    require_root();
    let ns = TestNetns::new("nftonly");
    let path = ns.path();
    let out = reduced("net_admin,sys_admin", false, &["apply", "--netns", &path]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(ns.ruleset().contains("istio-proxy-nat"));
}

#[test]
fn as_nobody_the_unreadable_legacy_table_list_fails_remove_and_verify() {
    require_root();
    let ns = TestNetns::new("nobody");
    ns.mesh_ok("apply", &legacy_args(&["-m", "TPROXY", "--ipv6=true"]), &[]);
    let path = ns.path();
    let caps = "net_admin,sys_admin,net_raw";
    let out = reduced(
        caps,
        true,
        &["remove", "--netns", &path, "-m", "TPROXY", "--ipv6=true"],
    );
    assert_refused_naming(&out, "ip_tables_names");
    assert!(has_legacy_rules(&ns), "nothing may be taken for removed");
    let out = reduced(
        caps,
        true,
        &["verify", "--netns", &path, "--backend", "iptables-legacy"],
    );
    assert_eq!(out.status.code(), Some(6), "{}", stderr_of(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "no drift report"
    );
}

#[test]
fn without_cap_sys_admin_entering_the_namespace_says_so() {
    require_root();
    let ns = TestNetns::new("nosysadmin");
    let path = ns.path();
    let out = reduced("net_admin,net_raw", false, &["apply", "--netns", &path]);
    assert_refused_naming(&out, "CAP_SYS_ADMIN");
    assert_eq!(ns.ruleset().trim(), "");
}
