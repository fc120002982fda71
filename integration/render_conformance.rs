//! `render` against Istio's own goldens, without root: the rule model and its text form
//! reproduce Istio's nftables transaction for all 28 capture cases, byte for byte (trimmed),
//! and its iptables payloads for the 27 capture and 9 CNI-plugin cases.
//!
//! The rendered text of each case is also kept in `ruleset/nftables/<case>.nft` and
//! `ruleset/iptables/<case>.rules`; set `MESH_REDIRECT_REGENERATE=1` to rewrite those files
//! after an intended change. Those snapshots are written by the code under test, so a
//! regenerated snapshot agrees with it by definition: they are a readable record of what we
//! program (and make a change show up in review), not evidence that it is right. The checks
//! that count are the independent ones: the `*_equals_istio_*_goldens` tests here (Istio's
//! own files), and by kernel state `nft_conformance`, `xt_conformance` and `libnftnl_oracle`.
//! Regenerating is refused when `CI` is set (`.ci/run` exports `CI=true`), so that a CI
//! run can never rewrite the record it is checking.

mod support;

use mesh_redirect::config::GroupFile;
use mesh_redirect::model::{build, Flavor};
use mesh_redirect::nft::render::render;
use std::path::Path;
use support::*;

fn config_of(case: &Case) -> mesh_redirect::config::Config {
    case.raw()
        .validate(&GroupFile::parse(TEST_GROUP_FILE))
        .unwrap_or_else(|e| panic!("{}: {e}", case.name))
}

fn render_iptables_case(case: &Case) -> String {
    mesh_redirect::xt::render::render(&build(&config_of(case), Flavor::Iptables))
}

/// A CNI golden holds only payloads: the table blocks, compared as a set of blocks
/// (Istio's own test splits on COMMIT and compares per table).
fn blocks(text: &str) -> Vec<String> {
    let mut b: Vec<String> = text
        .split("COMMIT")
        .map(|s| {
            s.lines()
                .filter(|l| !l.trim().is_empty() && !l.ends_with("-save"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|s| !s.is_empty())
        .collect();
    b.sort();
    b
}

/// Each case's rendering against its Istio golden (`same` decides what equal means), as
/// one difference report per case that differs.
fn differences(
    cases: &[Case],
    label: &str,
    golden: impl Fn(&Case) -> std::path::PathBuf,
    ours: impl Fn(&Case) -> String,
    same: impl Fn(&str, &str) -> bool,
) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases {
        let golden = std::fs::read_to_string(golden(case)).unwrap();
        let ours = ours(case);
        if !same(&ours, &golden) {
            failures.push(format!(
                "== {label}{} ==\n--- istio\n{}\n--- ours\n{}",
                case.name,
                golden.trim(),
                ours.trim()
            ));
        }
    }
    failures
}

fn same_trimmed(ours: &str, golden: &str) -> bool {
    ours.trim() == golden.trim()
}

#[test]
fn iptables_render_equals_istio_iptables_goldens() {
    let cases = iptables_capture_cases();
    assert_eq!(cases.len(), 27, "Istio has 27 iptables capture cases");
    let golden = |c: &Case| c.iptables_golden.clone().unwrap();
    let mut failures = differences(&cases, "", golden, render_iptables_case, same_trimmed);
    let cni = cni_cases();
    assert_eq!(cni.len(), 9, "Istio has 9 CNI-plugin cases");
    failures.extend(differences(
        &cni,
        "cni ",
        golden,
        render_iptables_case,
        |ours, golden| blocks(ours) == blocks(golden),
    ));
    assert_cases_agree(&failures, cases.len() + cni.len());
}

#[test]
fn iptables_render_snapshots_are_current() {
    let cases = iptables_capture_cases()
        .into_iter()
        .chain(cni_cases().into_iter().map(|mut c| {
            c.name = format!("cni-{}", c.name);
            c
        }));
    assert_eq!(
        check_snapshots("iptables", "rules", cases, render_iptables_case),
        36
    );
}

/// The kept rendering of each case, `ruleset/<dir>/<case>.<ext>`, equals ours (or is
/// rewritten when `MESH_REDIRECT_REGENERATE=1`). Returns how many were checked.
fn check_snapshots(
    dir: &str,
    ext: &str,
    cases: impl Iterator<Item = Case>,
    render: impl Fn(&Case) -> String,
) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("ruleset")
        .join(dir);
    let regenerate = regenerate_requested(
        std::env::var_os("MESH_REDIRECT_REGENERATE").is_some(),
        std::env::var("MESH_REDIRECT_REGENERATE").as_deref() == Ok("1"),
        std::env::var("CI").ok().as_deref(),
    );
    let mut checked = 0;
    for case in cases {
        let path = dir.join(format!("{}.{ext}", case.name));
        check_snapshot(&path, &render(&case), regenerate);
        checked += 1;
    }
    checked
}

/// Whether to rewrite the snapshots: only when `MESH_REDIRECT_REGENERATE=1`, and never in
/// CI — a set `MESH_REDIRECT_REGENERATE` (any value) while `CI` is set (any value other than
/// empty, `false` or `0`) fails the test instead of passing it by definition.
fn regenerate_requested(set: bool, one: bool, ci: Option<&str>) -> bool {
    let in_ci = ci.is_some_and(|v| !matches!(v, "" | "false" | "0"));
    assert!(
        !(set && in_ci),
        "MESH_REDIRECT_REGENERATE is set while CI={:?}: a CI run must check the snapshots, \
         not rewrite them (they would then agree with the code under test by definition)",
        ci.unwrap_or_default()
    );
    one
}

#[test]
fn regenerating_is_refused_in_ci() {
    // Outside CI, only `1` regenerates.
    assert!(regenerate_requested(true, true, None));
    assert!(regenerate_requested(true, true, Some("false")));
    assert!(!regenerate_requested(true, false, None));
    assert!(!regenerate_requested(false, false, Some("true")));
    // In CI, any value of the variable fails.
    for (one, ci) in [(true, "true"), (false, "true"), (true, "1"), (true, "yes")] {
        let refused = std::panic::catch_unwind(|| regenerate_requested(true, one, Some(ci)));
        assert!(refused.is_err(), "CI={ci}, regenerate={one}: must fail");
    }
}

/// The kept rendering at `path` equals `ours` (or is rewritten when regenerating).
fn check_snapshot(path: &Path, ours: &str, regenerate: bool) {
    if regenerate {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, ours).unwrap();
    }
    let kept = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (regenerate with MESH_REDIRECT_REGENERATE=1)",
            path.display()
        )
    });
    assert_eq!(
        kept,
        ours,
        "{} is stale (regenerate with MESH_REDIRECT_REGENERATE=1)",
        path.display()
    );
}

fn render_case(case: &Case) -> String {
    render(&build(&config_of(case), Flavor::Nftables))
}

#[test]
fn render_equals_istio_nftables_goldens() {
    let cases = nft_capture_cases();
    assert_eq!(cases.len(), 28, "Istio has 28 nftables capture cases");
    let golden = |c: &Case| c.nft_golden.clone().unwrap();
    let failures = differences(&cases, "", golden, render_case, same_trimmed);
    assert_cases_agree(&failures, cases.len());
}

#[test]
fn render_snapshots_are_current() {
    let cases = nft_capture_cases().into_iter();
    assert_eq!(check_snapshots("nftables", "nft", cases, render_case), 28);
}

#[test]
fn the_binary_renders_the_default_sidecar_rules() {
    let out = run_ok(std::process::Command::new(binary()).arg("render"));
    assert!(out.starts_with("add table inet istio-proxy-nat\n"));
    assert!(out.contains("add rule inet istio-proxy-nat istio-inbound meta l4proto tcp tcp dport 15020 counter return"));
    assert!(
        out.contains("add rule inet istio-proxy-nat istio-output udp dport 15020 counter return")
    );
    assert!(out.contains("add rule inet istio-proxy-nat istio-output counter jump istio-redirect"));
}
