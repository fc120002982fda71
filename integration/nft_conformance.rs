//! Istio conformance by kernel state (`integration/fixtures/conformance/README.md`): for each of the 28
//! capture cases with an nftables golden, `nft list ruleset` after our `apply` in a fresh
//! namespace equals `nft list ruleset` after `nft -f` of Istio's golden in another one.

mod support;

use support::*;

fn istio_listing(case: &Case, groups: &TempFile) -> String {
    let ns = TestNetns::new("i");
    let mut cmd = ns.command(&["nft", "-f"]);
    cmd.arg(case.nft_golden.as_ref().unwrap());
    with_group_file(&mut cmd, &groups.0);
    run_ok(&mut cmd);
    ns.ruleset()
}

fn our_listing(case: &Case, groups: &TempFile) -> String {
    let ns = TestNetns::new("o");
    let mut cmd = ns.mesh_command("apply", &case.args, &case.env);
    with_group_file(&mut cmd, &groups.0);
    run_ok(&mut cmd);
    ns.ruleset()
}

#[test]
fn apply_produces_the_kernel_state_of_istios_nftables_goldens() {
    require_root();
    let groups = TempFile::new("grp", TEST_GROUP_FILE);
    let cases = nft_capture_cases();
    assert_eq!(cases.len(), 28);
    let mut failures = Vec::new();
    for case in &cases {
        let theirs = istio_listing(case, &groups);
        let ours = our_listing(case, &groups);
        assert!(
            !theirs.trim().is_empty(),
            "{}: Istio's golden produced an empty ruleset",
            case.name
        );
        if theirs != ours {
            failures.push(format!(
                "== {} ==\n--- istio (nft -f)\n{theirs}\n--- ours (apply)\n{ours}",
                case.name
            ));
        }
    }
    assert_no_forwarding();
    assert_cases_agree(&failures, cases.len());
}
