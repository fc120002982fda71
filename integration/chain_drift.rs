//! Drift of our tables and chains themselves, not of their rules, on the real kernel, with
//! `nft` as the other tool and the oracle (issue 14):
//!
//! * another tool turns our base chain's policy to drop, re-creates it at another priority
//!   or on another hook, or makes our table dormant: `verify` exits 1 naming it, CNI CHECK
//!   fails with 103, and `apply` repairs it (a no-op would keep the drift);
//! * an unchanged re-apply sends nothing, so the counters real traffic moved stay as they
//!   were (nftables and iptables-legacy); a changed configuration replaces.
//!
//! Each test has its own namespace (deleted on drop, also on failure); traffic stays inside
//! it (a veth pair with both ends in the namespace), forwarding is never touched.

mod support;
#[path = "support/traffic.rs"]
mod traffic;

use std::io::Write;
use std::net::TcpListener;
use std::process::Output;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use support::*;
use traffic::{connect_as, enter};

const NAT: &str = "istio-proxy-nat";
const APP_UID: u32 = 1000;
/// What we program for the nat table's output chain, in verify's words.
const OUR_OUTPUT: &str = "type nat hook output priority -100 policy accept";

// --- CNI CHECK in static mode, as libcni runs it ---

/// Static mode without redirect settings: Istio's defaults, the same as `apply` without flags.
fn cni_conf(backend: &str) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0", "name": "mesh-test", "type": "mesh-redirect",
        "mode": "static", "backend": backend, "redirect": {}
    })
    .to_string()
}

fn cni_check(ns: &TestNetns) -> Output {
    cni(&cni_pod_env("CHECK", &ns.path()), &cni_conf("nftables"))
}

// --- the binary's log line ---

/// `key=value` of the `applied` log line on stderr.
fn applied_field(out: &Output, key: &str) -> String {
    let stderr = stderr_of(out);
    let line = stderr
        .lines()
        .find(|l| l.contains(" applied "))
        .unwrap_or_else(|| panic!("no `applied` line on stderr: {stderr}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
        .trim_matches('"')
        .to_string()
}

fn sent_messages(out: &Output) -> usize {
    applied_field(out, "messages").parse().expect("a number")
}

// --- another tool at work: nft ---

/// The rules of `inet istio-proxy-nat` chain `chain` as `nft` lists them.
fn chain_rules(ns: &TestNetns, chain: &str) -> Vec<String> {
    ns.exec_ok(&["nft", "list", "chain", "inet", NAT, chain])
        .lines()
        .map(str::trim)
        .skip(2) // `table … {`, `chain … {`
        .filter(|l| !l.is_empty() && *l != "}" && !l.starts_with("type "))
        .map(str::to_string)
        .collect()
}

/// Deletes our base chain `chain` and creates it again with `spec` (`{ type …; }`) and the
/// same rules: only the chain's own attributes differ afterwards. The kernel refuses to
/// change a base chain's hook, priority or type in place, so another tool does just this.
fn recreate_chain(ns: &TestNetns, chain: &str, spec: &str) {
    let rules = chain_rules(ns, chain);
    assert!(!rules.is_empty(), "our {chain} chain has rules");
    ns.exec_ok(&["nft", "flush", "chain", "inet", NAT, chain]);
    ns.exec_ok(&["nft", "delete", "chain", "inet", NAT, chain]);
    ns.exec_ok(&["nft", "add", "chain", "inet", NAT, chain, spec]);
    for r in &rules {
        ns.exec_ok(&["nft", "add", "rule", "inet", NAT, chain, r]);
    }
    assert_eq!(
        chain_rules(ns, chain),
        rules,
        "the same rules in the new chain"
    );
}

/// After `apply`, `drift` changes our nat table or its output chain without touching a rule;
/// `verify` must print exactly `expected_line`, CNI CHECK must fail with 103 and the same
/// difference, and `apply` must replace, after which everything is as a fresh apply left it.
fn drift_is_found_and_repaired(tag: &str, drift: impl Fn(&TestNetns), expected_line: &str) {
    let ns = TestNetns::new(tag);
    ns.mesh_ok("apply", &[], &[]);
    let fresh = ns.ruleset();
    assert!(cni_check(&ns).status.success(), "CHECK passes after apply");

    drift(&ns);
    assert_ne!(ns.ruleset(), fresh, "the drift is visible to nft");

    let out = ns.mesh("verify", &[], &[]);
    assert_eq!(out.status.code(), Some(1), "verify exits 1 on drift");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{expected_line}\n"),
        "verify names the difference, and only it"
    );

    let out = cni_check(&ns);
    assert!(!out.status.success(), "CHECK fails on drift");
    let err = stdout_json(&out);
    assert_eq!(err["code"], 103, "drift is CNI code 103: {err}");
    assert_eq!(err["details"], expected_line, "CHECK's details: {err}");

    let out = ns.mesh_ok("apply", &[], &[]);
    assert_eq!(applied_field(&out, "replaced"), "true", "drift is replaced");
    assert!(sent_messages(&out) > 0, "a repair sends a batch");
    assert!(
        ns.mesh("verify", &[], &[]).status.success(),
        "verify passes after the repair"
    );
    assert!(
        cni_check(&ns).status.success(),
        "CHECK passes after the repair"
    );
    assert_eq!(
        ns.ruleset(),
        fresh,
        "repaired to exactly what a fresh apply writes"
    );
    assert_no_forwarding();
}

fn changed_output(found: &str) -> String {
    format!("table inet {NAT}, chain output: expected {OUR_OUTPUT}, found {found}")
}

#[test]
fn a_base_chain_policy_turned_to_drop_is_drift_and_apply_repairs_it() {
    drift_is_found_and_repaired(
        "dp",
        |ns| {
            // The reproduction: `add chain` of an existing base chain changes its policy.
            ns.exec_ok(&[
                "nft",
                "add",
                "chain",
                "inet",
                NAT,
                "output",
                "{ type nat hook output priority -100; policy drop; }",
            ]);
        },
        &changed_output("type nat hook output priority -100 policy drop"),
    );
}

#[test]
fn a_base_chain_recreated_at_another_priority_is_drift_and_apply_repairs_it() {
    drift_is_found_and_repaired(
        "dq",
        |ns| {
            recreate_chain(
                ns,
                "output",
                "{ type nat hook output priority -50; policy accept; }",
            )
        },
        &changed_output("type nat hook output priority -50 policy accept"),
    );
}

#[test]
fn a_base_chain_recreated_on_another_hook_is_drift_and_apply_repairs_it() {
    // Prerouting's rules end in `redirect`, which the kernel allows on the output hook too
    // (not on input or postrouting), so the re-created chain can hold the same rules.
    drift_is_found_and_repaired(
        "dh",
        |ns| {
            recreate_chain(
                ns,
                "prerouting",
                "{ type nat hook output priority -100; policy accept; }",
            )
        },
        &format!(
            "table inet {NAT}, chain prerouting: expected type nat hook prerouting priority -100 \
             policy accept, found type nat hook output priority -100 policy accept"
        ),
    );
}

#[test]
fn a_dormant_table_is_drift_and_apply_repairs_it() {
    drift_is_found_and_repaired(
        "dd",
        |ns| {
            ns.exec_ok(&["nft", "add", "table", "inet", NAT, "{ flags dormant; }"]);
        },
        &format!("table inet {NAT}: expected no flags, found flags dormant"),
    );
}

// --- counters: real traffic through our rules ---

/// A namespace whose 192.0.2.0/24 is routed out of a veth (peer in the same namespace,
/// unaddressed): an application's connection to 192.0.2.2 passes the OUTPUT hook and is
/// redirected to the local proxy port before it could leave.
fn pod_namespace(tag: &str) -> TestNetns {
    let ns = TestNetns::new(tag);
    let (a, b) = (unique("a"), unique("b"));
    ns.exec_ok(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b]);
    ns.exec_ok(&["ip", "addr", "add", "192.0.2.1/24", "dev", &a]);
    ns.exec_ok(&["ip", "link", "set", &a, "up"]);
    ns.exec_ok(&["ip", "link", "set", &b, "up"]);
    ns
}

/// A proxy stand-in on :15001 in `ns` answering `proxy` to `n` connections.
fn proxy(ns: &str, n: usize) -> JoinHandle<usize> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let ns = ns.to_string();
    let handle = std::thread::spawn(move || {
        enter(&ns);
        let listener = TcpListener::bind("0.0.0.0:15001").expect("bind :15001");
        listener.set_nonblocking(true).unwrap();
        ready_tx.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut served = 0;
        while served < n && Instant::now() < deadline {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.write_all(b"proxy");
                    served += 1;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        served
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("proxy listening");
    handle
}

/// Connects from `ns` as the application's uid to 192.0.2.2:80; returns what answered.
fn app_connects(ns: &str) -> String {
    connect_as(ns, APP_UID, APP_UID, "192.0.2.2:80".parse().unwrap())
}

/// Three application connections, each landing on the proxy.
fn traffic(ns: &TestNetns) {
    let server = proxy(&ns.name, 3);
    for _ in 0..3 {
        assert_eq!(
            app_connects(&ns.name),
            "proxy",
            "the app's connection is redirected"
        );
    }
    assert_eq!(server.join().unwrap(), 3);
}

/// The packet counts `nft list ruleset` shows that are not 0.
fn nonzero_nft_counters(listing: &str) -> usize {
    listing
        .split("packets ")
        .skip(1)
        .filter(|rest| !rest.starts_with("0 "))
        .count()
}

#[test]
fn an_unchanged_re_apply_sends_nothing_and_keeps_the_nft_counters() {
    let ns = pod_namespace("cn");
    let first = ns.mesh_ok("apply", &[], &[]);
    assert!(sent_messages(&first) > 0);
    traffic(&ns);
    let counted = ns.ruleset();
    assert!(
        nonzero_nft_counters(&counted) > 0,
        "traffic moved our counters:\n{counted}"
    );
    assert!(
        ns.mesh("verify", &[], &[]).status.success(),
        "counters are not drift"
    );

    let out = ns.mesh_ok("apply", &[], &[]);
    // The counters first: what a user loses when a re-apply replaces.
    assert_eq!(
        ns.ruleset(),
        counted,
        "an unchanged re-apply keeps every counter"
    );
    assert!(
        stderr_of(&out).contains("objects=0 messages=0"),
        "an unchanged re-apply sends nothing: {}",
        stderr_of(&out)
    );

    // More traffic after the no-op still counts in the same rules.
    traffic(&ns);
    let more = ns.ruleset();
    assert_ne!(more, counted, "the kept rules go on counting");

    // A changed configuration replaces: a batch is sent and the new rules start at zero.
    let changed = strings(&["-b", "80,443"]);
    let out = ns.mesh_ok("apply", &changed, &[]);
    assert!(sent_messages(&out) > 0, "{}", stderr_of(&out));
    assert_eq!(applied_field(&out, "replaced"), "true");
    let replaced = ns.ruleset();
    assert_eq!(nonzero_nft_counters(&replaced), 0, "{replaced}");
    assert!(ns.mesh("verify", &changed, &[]).status.success());
    assert_eq!(ns.mesh("verify", &[], &[]).status.code(), Some(1));
    assert_no_forwarding();
}

/// A foreign rule with counters in the nat table we write.
const FOREIGN_NAT_RULE: &str = "-A OUTPUT -p udp -m udp --dport 9 -j RETURN";

fn nonzero_legacy_counters(saved: &str, pick: impl Fn(&str) -> bool) -> usize {
    saved
        .lines()
        .filter(|l| pick(l) && l.starts_with('[') && !l.starts_with("[0:0]"))
        .count()
}

#[test]
fn an_unchanged_re_apply_keeps_the_legacy_counters_and_a_replace_carries_the_foreign_ones() {
    let ns = pod_namespace("cl");
    ns.add_legacy_counted_rule(
        "nat",
        "OUTPUT",
        ("7", "420"),
        &["-p", "udp", "--dport", "9", "-j", "RETURN"],
    );
    let args = legacy_args(&[]);
    ns.mesh_ok("apply", &args, &[]);
    traffic(&ns);
    let counted = ns.legacy_saved(true);
    assert!(
        nonzero_legacy_counters(&counted, |l| l.contains("ISTIO_")) > 0,
        "traffic moved our counters:\n{counted}"
    );

    let out = ns.mesh_ok("apply", &args, &[]);
    assert_eq!(ns.legacy_saved(true), counted, "every counter kept");
    assert_eq!(
        sent_messages(&out),
        0,
        "no table written: {}",
        stderr_of(&out)
    );

    // A changed configuration rewrites the nat table; the foreign rule keeps its counters
    // (the kernel zeroes them on replace, we add them back), and so do the built-in chains.
    let changed = legacy_args(&["-b", "80,443"]);
    let out = ns.mesh_ok("apply", &changed, &[]);
    assert!(sent_messages(&out) > 0, "{}", stderr_of(&out));
    let after = ns.legacy_saved(true);
    assert!(
        after.contains(&format!("[7:420] {FOREIGN_NAT_RULE}")),
        "the foreign rule keeps its counters:\n{after}"
    );
    let policies = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| l.starts_with(':') && !l.contains("ISTIO_"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        policies(&after),
        policies(&counted),
        "built-in chain counters kept"
    );
    assert!(ns.mesh("verify", &changed, &[]).status.success());
    assert_no_forwarding();
}
