//! Crash consistency: a SIGKILL (the OOM killer, a runtime's timeout) can land between any
//! two writes. The test kills `apply` at every write syscall in turn (`strace -e inject=…:
//! signal=SIGKILL:when=N` on `sendto`, which carries every netlink request and batch, and
//! `setsockopt`, which carries every xtables table swap), for both backends, TPROXY with
//! IPv6, from a fresh namespace and from one holding an older configuration, and asserts that
//! from every state it leaves:
//! * (a) `apply` then `verify` succeeds;
//! * (b) `remove` (no flags) leaves nothing of ours;
//! * (c) CNI DEL then ADD converges (then `verify` succeeds).
//!
//! nftables also never leaves half a rule set: the batch is atomic, so the tables are either
//! absent or complete. What iptables-legacy can leave is documented in README ("Crash
//! consistency").

mod support;

use serde_json::json;
use std::process::Command;
use support::*;

const SYSCALLS: [&str; 2] = ["sendto", "setsockopt"];

fn flags(backend: &str) -> Vec<String> {
    strings(&["--backend", backend, "-m", "TPROXY", "--ipv6=true"])
}

/// `apply` killed at the `n`-th `syscall`; `false` when it ran to the end instead.
fn killed_apply(ns: &TestNetns, backend: &str, syscall: &str, n: usize) -> bool {
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "-o", "/dev/null", "-e"])
        .arg(format!("trace={syscall}"))
        .arg("-e")
        .arg(format!("inject={syscall}:signal=SIGKILL:when={n}"))
        .arg(binary())
        .args(["apply", "--netns", &ns.path()])
        .args(flags(backend));
    let out = run(&mut cmd);
    match out.status.code() {
        Some(0) => false,
        Some(137) | None => true,
        other => panic!(
            "{backend} {syscall}#{n}: exit {other:?}: {}",
            stderr_of(&out)
        ),
    }
}

/// Everything of ours a namespace could hold, as text (empty when nothing).
fn ours(ns: &TestNetns) -> String {
    let mut found = String::new();
    let nft = ns.ruleset();
    if nft.contains("istio-proxy") {
        found += &nft;
    }
    let legacy = ns.legacy_saved(false);
    for line in legacy.lines() {
        let shaped = ["ISTIO_", "CONNMARK", "0x539", "0x53a"];
        if shaped.iter().any(|s| line.contains(s)) {
            found += line;
            found += "\n";
        }
    }
    for family in ["-4", "-6"] {
        for line in ns.exec_ok(&["ip", family, "rule"]).lines() {
            if line.contains("lookup 133") {
                found += line;
                found += "\n";
            }
        }
        for line in ns
            .exec_ok(&["ip", family, "route", "show", "table", "all"])
            .lines()
        {
            if line.contains("table 133") {
                found += line;
                found += "\n";
            }
        }
    }
    found
}

/// CNI DEL then ADD in static mode with the same settings.
fn cni_del_add(ns: &TestNetns, backend: &str) {
    let conf = json!({"cniVersion": "1.0.0", "name": "crash", "type": "mesh-redirect",
        "mode": "static", "backend": backend,
        "redirect": {"interceptionMode": "TPROXY", "ipv6": true}})
    .to_string();
    let path = ns.path();
    for command in ["DEL", "ADD"] {
        let out = cni(&cni_env(command, &path), &conf);
        assert!(
            out.status.success(),
            "CNI {command}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// A namespace in the start state: fresh, or holding the default (REDIRECT) configuration.
fn start(backend: &str, older: bool) -> TestNetns {
    let ns = TestNetns::new("crash");
    if older {
        ns.mesh_ok(
            "apply",
            &strings(&["--backend", backend, "--ipv6=true"]),
            &[],
        );
    }
    ns
}

fn kill_everywhere(backend: &str, older: bool) -> usize {
    let complete = {
        let ns = start(backend, false);
        ns.mesh_ok("apply", &flags(backend), &[]);
        ns.ruleset()
    };
    let mut points = 0;
    for syscall in SYSCALLS {
        for n in 1.. {
            assert!(n < 64, "{backend} {syscall}: the apply never completed");
            let what = format!("{backend}, older={older}, killed at {syscall}#{n}");
            // (a) apply then verify.
            let ns = start(backend, older);
            if !killed_apply(&ns, backend, syscall, n) {
                break;
            }
            points += 1;
            if backend == "nftables" {
                let left = ns.ruleset();
                let fresh = !older && !left.contains("istio-proxy");
                assert!(
                    fresh || older || left == complete,
                    "{what}: half a rule set:\n{left}"
                );
            }
            ns.mesh_ok("apply", &flags(backend), &[]);
            ns.mesh_ok("verify", &flags(backend), &[]);
            // (b) remove leaves nothing of ours.
            let ns = start(backend, older);
            assert!(
                killed_apply(&ns, backend, syscall, n),
                "{what}: the same run again"
            );
            ns.mesh_ok("remove", &[], &[]);
            assert_eq!(ours(&ns), "", "{what}: left after remove");
            // (c) CNI DEL then ADD converges.
            let ns = start(backend, older);
            assert!(
                killed_apply(&ns, backend, syscall, n),
                "{what}: the same run again"
            );
            cni_del_add(&ns, backend);
            ns.mesh_ok("verify", &flags(backend), &[]);
        }
    }
    points
}

#[test]
fn apply_killed_at_every_write_converges_nftables() {
    require_root();
    let points = kill_everywhere("nftables", false) + kill_everywhere("nftables", true);
    eprintln!("killed at {points} points");
    assert!(points >= 20, "killed at {points} points");
}

#[test]
fn apply_killed_at_every_write_converges_iptables_legacy() {
    require_root();
    let points =
        kill_everywhere("iptables-legacy", false) + kill_everywhere("iptables-legacy", true);
    eprintln!("killed at {points} points");
    assert!(points >= 20, "killed at {points} points");
}
