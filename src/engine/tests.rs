//! The engine's decisions on the in-memory kernel (no root, no namespace): backend
//! selection, create → EEXIST → replace, the no-op re-apply, the xtables EAGAIN retry and
//! rollback, route undo, verify's diff on both backends, remove, and what each failure means.

use super::test_support::*;
use super::*;
use crate::error::Outcome;
use crate::kernel::fake::{Call, FakeKernel};
use crate::routes::RouteObject;
use crate::xt::abi::VERDICT_RETURN;
use crate::xt::abi::{Layout, IPV4, IPV6};
use crate::xt::table::{Counters, Rule, Target};

fn outcome(e: &EngineError) -> Outcome {
    e.outcome()
}

fn nft_rule_count(k: &FakeKernel) -> usize {
    k.state().nft.tables.iter().map(|t| t.rules.len()).sum()
}

fn has_istio_chain(k: &FakeKernel, l: Layout, table: &str) -> bool {
    k.state()
        .xt
        .table(l, table)
        .is_some_and(|t| t.chains.iter().any(|c| c.name.starts_with("ISTIO_")))
}

fn foreign_rule(l: Layout) -> Rule {
    Rule {
        ip: vec![0; l.ip_size],
        nfcache: 0,
        matches: vec![],
        target: Target::Verdict(VERDICT_RETURN),
        counters: Counters::default(),
        old_index: None,
    }
}

// --- backend selection ---

#[test]
fn auto_on_an_empty_namespace_picks_nftables_because_it_answers() {
    let k = FakeKernel::default();
    let (d, b) = select(&k, AUTO).unwrap();
    assert_eq!(
        (d.backend, d.reason),
        (Backend::Nftables, "nf_tables answers")
    );
    assert_eq!(b.kind(), Backend::Nftables);
    assert_eq!(
        k.calls(Call::XtInfo),
        0,
        "no legacy table is instantiated to find out"
    );
}

#[test]
fn auto_keeps_the_nftables_tables_in_place() {
    let k = FakeKernel::default();
    apply_in(&k, &default_cfg(), NFT).unwrap();
    let (d, _) = select(&k, AUTO).unwrap();
    assert_eq!(
        (d.backend, d.reason),
        (Backend::Nftables, "Istio nftables tables already exist")
    );
}

#[test]
fn auto_keeps_the_legacy_chains_in_place() {
    let k = FakeKernel::default();
    apply_in(&k, &default_cfg(), LEGACY).unwrap();
    let (d, b) = select(&k, AUTO).unwrap();
    assert_eq!(d.backend, Backend::IptablesLegacy);
    assert_eq!(d.reason, "Istio iptables-legacy chains already exist");
    assert_eq!(b.kind(), Backend::IptablesLegacy);
}

#[test]
fn auto_without_nf_tables_falls_back_to_legacy() {
    let k = FakeKernel::default();
    k.fail(Call::NfOpen, libc::EPROTONOSUPPORT, 1);
    let (d, _) = select(&k, AUTO).unwrap();
    assert_eq!(
        (d.backend, d.reason),
        (Backend::IptablesLegacy, "nf_tables does not answer")
    );
}

#[test]
fn auto_refuses_to_choose_when_nf_tables_cannot_be_read() {
    let k = FakeKernel::default();
    k.fail(Call::NfDump, libc::EPERM, 1);
    let e = select(&k, AUTO)
        .err()
        .expect("no backend while nf_tables is unreadable");
    assert_eq!(outcome(&e), Outcome::PermissionDenied);
}

#[test]
fn auto_refuses_to_choose_when_the_legacy_tables_cannot_be_listed() {
    let k = FakeKernel::default();
    k.fail(Call::XtLoaded, libc::EACCES, 1);
    let e = select(&k, AUTO)
        .err()
        .expect("unknown legacy state is not 'none'");
    assert_eq!(outcome(&e), Outcome::PermissionDenied);
    assert!(
        e.to_string().contains("cannot list the loaded tables"),
        "{e}"
    );
}

#[test]
fn auto_refuses_to_choose_when_a_loaded_legacy_table_cannot_be_read() {
    let k = FakeKernel::default();
    apply_in(&k, &default_cfg(), LEGACY).unwrap();
    k.fail(Call::XtInfo, libc::EPERM, 1);
    let e = select(&k, AUTO)
        .err()
        .expect("an unreadable table is not an empty one");
    assert_eq!(outcome(&e), Outcome::PermissionDenied);
}

#[test]
fn an_explicit_backend_does_not_probe_the_other() {
    let k = FakeKernel::default();
    select(&k, NFT).unwrap();
    assert_eq!(k.calls(Call::XtLoaded), 0);
    select(&k, LEGACY).unwrap();
    assert_eq!(k.calls(Call::NfOpen), 1);
}

// --- nftables: create, replace, no-op ---

#[test]
fn a_fresh_apply_creates_and_verifies_clean() {
    let k = FakeKernel::default();
    let r = apply_in(&k, &default_cfg(), NFT).unwrap();
    assert!(!r.replaced);
    assert!(r.objects > 0 && r.messages > r.objects / 2);
    assert_eq!(k.state().nft.names(), ["istio-proxy-nat"]);
    assert!(verify_in(&k, &default_cfg(), NFT)
        .unwrap()
        .differences
        .is_empty());
}

#[test]
fn a_create_that_meets_eexist_replaces_instead() {
    let k = FakeKernel::default();
    // Someone created one of our tables between our look and our batch.
    k.fail(Call::NfBatch, libc::EEXIST, 1);
    let r = apply_in(&k, &default_cfg(), NFT).unwrap();
    assert!(r.replaced, "the second batch is a replace");
    assert_eq!(k.calls(Call::NfBatch), 2);
    assert!(verify_in(&k, &default_cfg(), NFT)
        .unwrap()
        .differences
        .is_empty());
}

#[test]
fn an_unchanged_re_apply_sends_nothing() {
    let k = FakeKernel::default();
    apply_in(&k, &default_cfg(), NFT).unwrap();
    let before = k.state().nft.clone();
    let r = apply_in(&k, &default_cfg(), AUTO).unwrap();
    assert_eq!((r.objects, r.messages, r.replaced), (0, 0, false));
    assert_eq!(k.calls(Call::NfBatch), 1);
    assert_eq!(k.state().nft, before);
}

#[test]
fn a_changed_configuration_replaces_the_tables() {
    let k = FakeKernel::default();
    apply_in(&k, &default_cfg(), NFT).unwrap();
    let changed = cfg(&["-b", "80,443"]);
    let r = apply_in(&k, &changed, NFT).unwrap();
    assert!(r.replaced);
    assert!(verify_in(&k, &changed, NFT).unwrap().differences.is_empty());
    assert!(!verify_in(&k, &default_cfg(), NFT)
        .unwrap()
        .differences
        .is_empty());
}

#[test]
fn a_refused_batch_changes_nothing_and_is_reported_as_refused() {
    let k = FakeKernel::default();
    apply_in(&k, &default_cfg(), NFT).unwrap();
    let before = k.state().nft.clone();
    k.fail(Call::NfBatch, libc::EINVAL, 1);
    let e = apply_in(&k, &cfg(&["-b", "80"]), NFT).unwrap_err();
    assert_eq!(outcome(&e), Outcome::Refused);
    assert_eq!(k.state().nft, before);
}

#[test]
fn a_batch_refused_for_lack_of_permission_is_not_called_refused() {
    let k = FakeKernel::default();
    k.fail(Call::NfBatch, libc::EPERM, 1);
    let e = apply_in(&k, &default_cfg(), NFT).unwrap_err();
    assert_eq!(outcome(&e), Outcome::PermissionDenied);
    assert_eq!(Outcome::PermissionDenied.exit_code(), 6);
}

#[test]
fn a_failed_dump_is_an_error_not_an_empty_namespace() {
    let k = FakeKernel::default();
    apply_in(&k, &default_cfg(), NFT).unwrap();
    k.fail(Call::NfDump, libc::EIO, 1);
    let e = verify_in(&k, &default_cfg(), NFT).unwrap_err();
    assert_eq!(outcome(&e), Outcome::KernelIo);
}

// --- verify ---

#[test]
fn nft_verify_names_a_rule_deleted_by_hand() {
    let k = FakeKernel::default();
    apply_in(&k, &default_cfg(), NFT).unwrap();
    let removed = {
        let mut s = k.state();
        let t = s.nft.table_mut("istio-proxy-nat").unwrap();
        let i = t
            .rules
            .iter()
            .position(|r| r.chain == "istio-output")
            .unwrap();
        t.rules.remove(i)
    };
    let d = verify_in(&k, &default_cfg(), NFT).unwrap().differences;
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(d[0].contains("chain istio-output: missing rule 1"), "{d:?}");
    // Re-apply repairs it.
    assert!(apply_in(&k, &default_cfg(), NFT).unwrap().replaced);
    let s = k.state();
    let t = s.nft.table("istio-proxy-nat").unwrap();
    assert!(t
        .rules
        .iter()
        .any(|r| r.chain == removed.chain && r.expressions == removed.expressions));
}

#[test]
fn nft_verify_names_a_rule_added_by_hand() {
    let k = FakeKernel::default();
    apply_in(&k, &default_cfg(), NFT).unwrap();
    {
        let mut s = k.state();
        let t = s.nft.table_mut("istio-proxy-nat").unwrap();
        let copy = t
            .rules
            .iter()
            .find(|r| r.chain == "istio-output")
            .unwrap()
            .clone();
        t.rules.push(copy);
    }
    let d = verify_in(&k, &default_cfg(), NFT).unwrap().differences;
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(d[0].contains("unexpected rule"), "{d:?}");
}

/// Changes our tables with `drift` as another tool would; `verify` must report exactly
/// `expected`, an apply must replace (a no-op would keep the drift), and afterwards the
/// tables verify clean, are as a fresh apply leaves them, and a further apply sends nothing.
fn nft_drift_is_reported_and_repaired(
    drift: impl FnOnce(&mut crate::kernel::fake::nft::NftState),
    expected: &str,
) {
    let k = FakeKernel::default();
    apply_in(&k, &default_cfg(), NFT).unwrap();
    let fresh = k.state().nft.tables.clone();
    drift(&mut k.state().nft);
    let d = verify_in(&k, &default_cfg(), NFT).unwrap().differences;
    assert_eq!(d, [expected]);
    let r = apply_in(&k, &default_cfg(), NFT).unwrap();
    assert!(
        r.replaced && r.messages > 0,
        "drift is replaced, not skipped: {r:?}"
    );
    assert!(verify_in(&k, &default_cfg(), NFT)
        .unwrap()
        .differences
        .is_empty());
    assert_eq!(k.state().nft.tables, fresh, "repaired as a fresh apply");
    let r = apply_in(&k, &default_cfg(), NFT).unwrap();
    assert_eq!((r.objects, r.messages), (0, 0), "then nothing to do");
}

fn nat_output(s: &mut crate::kernel::fake::nft::NftState) -> &mut crate::kernel::fake::nft::Hook {
    s.chain_mut("istio-proxy-nat", "output")
        .and_then(|c| c.hook.as_mut())
        .expect("our nat output base chain")
}

#[test]
fn nft_verify_names_a_base_chain_policy_changed_to_drop_and_apply_repairs_it() {
    nft_drift_is_reported_and_repaired(
        |s| nat_output(s).policy = crate::nft::abi::NF_DROP as u32,
        "table inet istio-proxy-nat, chain output: expected type nat hook output priority -100 \
         policy accept, found type nat hook output priority -100 policy drop",
    );
}

#[test]
fn nft_verify_names_a_base_chain_priority_change_and_apply_repairs_it() {
    nft_drift_is_reported_and_repaired(
        |s| nat_output(s).priority = 0,
        "table inet istio-proxy-nat, chain output: expected type nat hook output priority -100 \
         policy accept, found type nat hook output priority 0 policy accept",
    );
}

#[test]
fn nft_verify_names_a_base_chain_hook_change_and_apply_repairs_it() {
    nft_drift_is_reported_and_repaired(
        |s| nat_output(s).hooknum = crate::nft::abi::NF_INET_POST_ROUTING,
        "table inet istio-proxy-nat, chain output: expected type nat hook output priority -100 \
         policy accept, found type nat hook postrouting priority -100 policy accept",
    );
}

#[test]
fn nft_verify_names_a_base_chain_type_change_and_apply_repairs_it() {
    nft_drift_is_reported_and_repaired(
        |s| nat_output(s).kind = "filter".into(),
        "table inet istio-proxy-nat, chain output: expected type nat hook output priority -100 \
         policy accept, found type filter hook output priority -100 policy accept",
    );
}

#[test]
fn nft_verify_names_a_dormant_table_and_apply_repairs_it() {
    nft_drift_is_reported_and_repaired(
        |s| s.table_mut("istio-proxy-nat").unwrap().flags = crate::nft::abi::NFT_TABLE_F_DORMANT,
        "table inet istio-proxy-nat: expected no flags, found flags dormant",
    );
}

#[test]
fn nft_verify_names_a_base_chain_turned_regular() {
    nft_drift_is_reported_and_repaired(
        |s| s.chain_mut("istio-proxy-nat", "output").unwrap().hook = None,
        "table inet istio-proxy-nat, chain output: expected type nat hook output priority -100 \
         policy accept, found a regular chain",
    );
}

#[test]
fn verify_reports_missing_policy_routing() {
    let k = FakeKernel::default();
    apply_in(&k, &tproxy_v6(), NFT).unwrap();
    k.state().routes.objects.retain(
        |o| !matches!(o, RouteObject::FwmarkRule { family, .. } if *family == libc::AF_INET as u8),
    );
    let d = verify_in(&k, &tproxy_v6(), NFT).unwrap().differences;
    assert_eq!(d, ["missing ip rule fwmark 1337 lookup 133"]);
}

#[test]
fn legacy_verify_names_the_chain_that_lost_a_rule() {
    let k = FakeKernel::default();
    apply_in(&k, &default_cfg(), LEGACY).unwrap();
    {
        let mut s = k.state();
        let t = s.xt.table_mut(IPV4, "nat").unwrap();
        t.chain_mut("ISTIO_OUTPUT").unwrap().rules.pop();
        t.num_entries -= 1;
    }
    let d = verify_in(&k, &default_cfg(), LEGACY).unwrap().differences;
    assert_eq!(d, ["IPv4 table nat: chain ISTIO_OUTPUT: 1 rule(s) missing"]);
}

// --- iptables-legacy: retry, rollback, no-op ---

#[test]
fn legacy_apply_writes_both_families_and_verifies_clean() {
    let k = FakeKernel::default();
    let r = apply_in(&k, &cfg(&["--ipv6=true"]), LEGACY).unwrap();
    assert_eq!(r.messages, 2, "nat of each family");
    assert!(has_istio_chain(&k, IPV4, "nat") && has_istio_chain(&k, IPV6, "nat"));
    assert!(verify_in(&k, &cfg(&["--ipv6=true"]), LEGACY)
        .unwrap()
        .differences
        .is_empty());
}

#[test]
fn legacy_retries_a_replace_that_met_eagain() {
    let k = FakeKernel::default();
    k.fail(Call::XtReplace, libc::EAGAIN, 1);
    let r = apply_in(&k, &default_cfg(), LEGACY).unwrap();
    assert_eq!(r.retries, 1);
    assert!(verify_in(&k, &default_cfg(), LEGACY)
        .unwrap()
        .differences
        .is_empty());
}

#[test]
fn legacy_merges_again_when_another_writer_changed_the_table() {
    let k = FakeKernel::default();
    apply_in(&k, &default_cfg(), LEGACY).unwrap();
    // A foreign rule after ours, then a configuration change.
    k.state()
        .xt
        .append(IPV4, "nat", "OUTPUT", foreign_rule(IPV4));
    apply_in(&k, &cfg(&["-b", "80"]), LEGACY).unwrap();
    let s = k.state();
    let out = s.xt.table(IPV4, "nat").unwrap().chain("OUTPUT").unwrap();
    assert_eq!(
        out.rules
            .iter()
            .filter(|r| r.target == Target::Verdict(VERDICT_RETURN) && r.matches.is_empty())
            .count(),
        1,
        "the foreign rule survives exactly once"
    );
}

#[test]
fn legacy_gives_up_after_endless_eagain_and_writes_nothing() {
    let k = FakeKernel::default();
    k.fail(Call::XtReplace, libc::EAGAIN, usize::MAX);
    let e = apply_in(&k, &default_cfg(), LEGACY).unwrap_err();
    assert_eq!(outcome(&e), Outcome::Refused);
    assert!(!has_istio_chain(&k, IPV4, "nat"));
}

#[test]
fn legacy_rolls_back_earlier_tables_when_a_later_one_is_refused() {
    let k = FakeKernel::default();
    apply_in(&k, &cfg(&["--ipv6=true"]), LEGACY).unwrap();
    let before = k.state().xt.clone();
    let replaces = k.calls(Call::XtReplace);
    // IPv4 nat is written, IPv6 nat is refused.
    k.fail_after(Call::XtReplace, 1, libc::EINVAL);
    let e = apply_in(&k, &cfg(&["--ipv6=true", "-b", "80"]), LEGACY).unwrap_err();
    assert_eq!(outcome(&e), Outcome::Refused);
    assert!(e.to_string().contains("IPv6 table nat"), "{e}");
    assert_eq!(
        k.calls(Call::XtReplace),
        replaces + 3,
        "write, refused write, restore"
    );
    assert_eq!(k.state().xt, before, "the IPv4 table is back as it was");
}

#[test]
fn legacy_unchanged_re_apply_replaces_nothing() {
    let k = FakeKernel::default();
    apply_in(&k, &default_cfg(), LEGACY).unwrap();
    let n = k.calls(Call::XtReplace);
    let r = apply_in(&k, &default_cfg(), LEGACY).unwrap();
    assert_eq!((r.messages, k.calls(Call::XtReplace)), (0, n));
}

// --- routes ---

#[test]
fn tproxy_with_ipv6_adds_the_policy_routing_and_the_passthrough_address() {
    let k = FakeKernel::default();
    let r = apply_in(&k, &tproxy_v6(), NFT).unwrap();
    assert_eq!(r.routes_added.len(), 5);
    assert_eq!(k.state().routes.objects.len(), 5);
    assert!(k
        .state()
        .nft
        .names()
        .contains(&"istio-proxy-mangle".to_string()));
}

#[test]
fn routes_are_taken_back_when_the_batch_is_refused() {
    let k = FakeKernel::default();
    k.fail(Call::NfBatch, libc::EINVAL, 1);
    apply_in(&k, &tproxy_v6(), NFT).unwrap_err();
    assert!(k.state().routes.objects.is_empty());
    assert!(k.state().nft.tables.is_empty());
}

#[test]
fn routes_that_were_there_before_stay_when_the_batch_is_refused() {
    let k = FakeKernel::default();
    k.state().routes.objects.push(RouteObject::PassthroughV6);
    k.fail(Call::NfBatch, libc::EINVAL, 1);
    apply_in(&k, &tproxy_v6(), NFT).unwrap_err();
    assert_eq!(k.state().routes.objects, [RouteObject::PassthroughV6]);
}

#[test]
fn a_refused_route_undoes_the_earlier_ones_and_sends_no_batch() {
    let k = FakeKernel::default();
    k.fail_after(Call::RouteAdd, 2, libc::EINVAL);
    let e = apply_in(&k, &tproxy_v6(), NFT).unwrap_err();
    assert_eq!(outcome(&e), Outcome::Refused);
    assert!(k.state().routes.objects.is_empty());
    assert_eq!(k.calls(Call::NfBatch), 0);
}

// --- remove ---

#[test]
fn remove_deletes_tables_and_routing_and_succeeds_twice() {
    let k = FakeKernel::default();
    apply_in(&k, &tproxy_v6(), NFT).unwrap();
    let r = remove_in(&k, &tproxy_v6()).unwrap();
    assert_eq!(r.tables_removed.len(), 2);
    assert_eq!(r.routes_removed.len(), 4, "the ::6 address stays");
    assert!(k.state().nft.tables.is_empty());
    let again = remove_in(&k, &tproxy_v6()).unwrap();
    assert!(again.tables_removed.is_empty() && again.routes_removed.is_empty());
}

#[test]
fn remove_keeps_a_foreign_table_and_foreign_legacy_rules() {
    let k = FakeKernel::default();
    apply_in(&k, &default_cfg(), NFT).unwrap();
    apply_in(&k, &default_cfg(), LEGACY).unwrap();
    k.state()
        .nft
        .tables
        .push(crate::kernel::fake::nft::FakeTable {
            name: "foreign".into(),
            ..Default::default()
        });
    k.state()
        .xt
        .append(IPV4, "nat", "OUTPUT", foreign_rule(IPV4));
    remove_in(&k, &default_cfg()).unwrap();
    assert_eq!(k.state().nft.names(), ["foreign"]);
    assert!(!has_istio_chain(&k, IPV4, "nat"));
    let s = k.state();
    assert_eq!(
        s.xt.table(IPV4, "nat")
            .unwrap()
            .chain("OUTPUT")
            .unwrap()
            .rules,
        [foreign_rule(IPV4)]
    );
}

#[test]
fn remove_without_nf_tables_still_cleans_legacy() {
    let k = FakeKernel::default();
    apply_in(&k, &default_cfg(), LEGACY).unwrap();
    k.fail(Call::NfOpen, libc::EPROTONOSUPPORT, 1);
    let r = remove_in(&k, &default_cfg()).unwrap();
    assert_eq!(r.tables_removed.len(), 1);
    assert!(!has_istio_chain(&k, IPV4, "nat"));
}

#[test]
fn remove_fails_loudly_when_the_legacy_tables_cannot_be_listed() {
    let k = FakeKernel::default();
    apply_in(&k, &default_cfg(), LEGACY).unwrap();
    k.fail(Call::XtLoaded, libc::EACCES, 1);
    let e = remove_in(&k, &default_cfg()).unwrap_err();
    assert_eq!(outcome(&e), Outcome::PermissionDenied);
    assert!(has_istio_chain(&k, IPV4, "nat"));
}

#[test]
fn the_nftables_read_back_of_the_fake_equals_the_plan_for_every_shape() {
    // Sets (lookups), TPROXY, DNS, drop-invalid: every expression kind round-trips through
    // the fake's dumps and the real decoder.
    let k = FakeKernel::default();
    let c = cfg(&[
        "-m",
        "TPROXY",
        "--ipv6=true",
        "--redirect-dns=true",
        "--drop-invalid=true",
        "-b",
        "80,443,8080",
        "-i",
        "10.0.0.0/8,fd00::/8",
        "-x",
        "10.1.0.0/16",
        "-q",
        "3306,5432",
        "-o",
        "15020,15021",
    ]);
    apply_in(&k, &c, NFT).unwrap();
    assert!(nft_rule_count(&k) > 30);
    assert!(verify_in(&k, &c, NFT).unwrap().differences.is_empty());
}

/// The fake's nat `istio-output` rule whose planned text is `text` (the fake keeps our
/// rules in plan order).
fn nft_output_rule(k: &FakeKernel, c: &Config, text: &str) -> crate::kernel::fake::nft::FakeRule {
    let plan = crate::model::build(c, crate::model::Flavor::Nftables);
    let rules = plan.resolve_inet();
    let output = rules
        .iter()
        .find(|r| {
            r.table == crate::model::Table::Nat && r.chain == crate::model::Chain::IstioOutput
        })
        .unwrap();
    let at = output
        .rules
        .iter()
        .position(|r| {
            crate::nft::render::rule_text(&crate::model::Step {
                table: output.table,
                chain: output.chain,
                position: crate::model::Position::Append,
                rule: r.clone(),
            }) == text
        })
        .unwrap_or_else(|| panic!("no planned rule {text}"));
    let s = k.state();
    let t = s
        .nft
        .tables
        .iter()
        .find(|t| t.name == "istio-proxy-nat")
        .unwrap();
    t.rules
        .iter()
        .filter(|r| r.chain == "istio-output")
        .nth(at)
        .unwrap()
        .clone()
}

/// Inserts `rule` into nat `istio-output` after its first rule.
fn nft_insert_second_in_output(k: &FakeKernel, rule: crate::kernel::fake::nft::FakeRule) {
    let mut s = k.state();
    let t = s.nft.table_mut("istio-proxy-nat").unwrap();
    let first = t
        .rules
        .iter()
        .position(|r| r.chain == "istio-output")
        .unwrap();
    t.rules.insert(first + 1, rule);
}

#[test]
fn nft_verify_shows_a_rule_added_by_hand_in_nft_syntax() {
    let k = FakeKernel::default();
    let c = default_cfg();
    apply_in(&k, &c, NFT).unwrap();
    let copy = nft_output_rule(&k, &c, "skuid 1337 counter return");
    nft_insert_second_in_output(&k, copy);
    let d = verify_in(&k, &c, NFT).unwrap().differences;
    assert_eq!(
        d,
        ["table inet istio-proxy-nat, chain istio-output: unexpected rule 2: skuid 1337 counter return"]
    );
}

#[test]
fn nft_verify_shows_a_rule_it_cannot_lift_raw() {
    let k = FakeKernel::default();
    let c = default_cfg();
    apply_in(&k, &c, NFT).unwrap();
    let mut rule = nft_output_rule(&k, &c, "skuid 1337 counter return");
    // A `limit` expression (we never write one) in front of the rule's own.
    let mut w = crate::netlink::wire::MessageWriter::default();
    let elem = w.nest_begin(crate::nft::abi::NFTA_LIST_ELEM);
    w.attr_str(crate::nft::abi::NFTA_EXPR_NAME, "limit");
    w.nest_end(elem);
    rule.expressions.splice(0..0, w.buf);
    nft_insert_second_in_output(&k, rule);
    let d = verify_in(&k, &c, NFT).unwrap().differences;
    assert_eq!(
        d,
        [
            "table inet istio-proxy-nat, chain istio-output: unexpected rule 2: [limit …] \
          [meta load skuid] [cmp eq 0x39050000] [counter] [return]"
        ]
    );
}
