//! `mesh-redirect validate` passes inside a namespace with our rules (both backends, both
//! families) and fails with exit 126 and a clear message in one without — and with rules
//! that do not redirect the proxy's loopback traffic.

mod support;

use std::process::Command;
use support::*;

fn validate(ns: &TestNetns, extra: &[&str]) -> std::process::Output {
    run(Command::new(binary())
        .args(["validate", "--netns", &ns.name, "--probe-timeout", "1s"])
        .args(extra))
}

#[test]
fn validate_passes_with_our_rules() {
    for backend in ["nftables", "iptables-legacy"] {
        for family in [&[][..], &["--ipv6"][..]] {
            let ns = TestNetns::new("va");
            let mut args: Vec<String> = vec!["--backend".into(), backend.into()];
            args.extend(family.iter().map(|s| s.to_string()));
            ns.mesh_ok("apply", &args, &[]);
            let out = validate(&ns, family);
            assert!(
                out.status.success(),
                "{backend} {family:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(
                said.contains("redirect validated") && said.contains(":15002"),
                "{said}"
            );
        }
    }
    assert_no_forwarding();
}

#[test]
fn validate_fails_clearly_without_a_working_redirect() {
    // No rules at all.
    let ns = TestNetns::new("vb");
    let out = validate(&ns, &[]);
    assert_eq!(out.status.code(), Some(126), "Istio's validation exit code");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the redirect does not work") && err.contains("127.0.0.6:15002"),
        "{err}"
    );
    // Rules whose uid exemption is for another uid: the probe (uid 1337) is not redirected.
    let ns = TestNetns::new("vc");
    ns.mesh_ok("apply", &["-u".to_string(), "2000".to_string()], &[]);
    assert_eq!(validate(&ns, &[]).status.code(), Some(126));
    // A namespace that does not exist: exit 3.
    let out = run(Command::new(binary()).args(["validate", "--netns", &unique("none")]));
    assert_eq!(out.status.code(), Some(3));
}
