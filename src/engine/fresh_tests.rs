//! The optimistic create ([`Expect::Fresh`]): the create batch without a look first, and the
//! fall-back to the full path whenever it does not apply, leaving nothing behind.

use super::test_support::*;
use super::*;
use crate::error::Outcome;
use crate::kernel::fake::{Call, FakeKernel};

fn fresh<K: Kernel>(k: &K, c: &Config, choice: BackendChoice) -> Result<ApplyReport, EngineError> {
    apply_in_expecting(k, c, choice, Expect::Fresh)
}

fn clean(k: &FakeKernel, c: &Config) -> bool {
    verify_in(k, c, NFT).unwrap().differences.is_empty()
}

#[test]
fn a_fresh_namespace_gets_one_batch_and_no_dump() {
    for (choice, reason) in [(NFT, "requested"), (AUTO, "nf_tables answers")] {
        let k = FakeKernel::default();
        let r = fresh(&k, &cfg(&[]), choice).unwrap();
        assert_eq!(
            (r.decision.backend, r.decision.reason),
            (Backend::Nftables, reason)
        );
        assert!(!r.replaced && r.objects > 0 && r.messages > 0);
        assert_eq!((k.calls(Call::NfDump), k.calls(Call::NfBatch)), (0, 1));
        assert_eq!(k.calls(Call::XtInfo), 0, "no legacy table instantiated");
        assert!(clean(&k, &cfg(&[])));
    }
}

#[test]
fn the_same_as_the_full_path_on_a_fresh_namespace() {
    let (a, b) = (FakeKernel::default(), FakeKernel::default());
    let ra = apply_in(&a, &tproxy_v6(), NFT).unwrap();
    let rb = fresh(&b, &tproxy_v6(), NFT).unwrap();
    assert_eq!(a.state().nft, b.state().nft);
    assert_eq!(a.state().routes.objects, b.state().routes.objects);
    assert_eq!(
        (ra.objects, ra.messages, ra.routes_added),
        (rb.objects, rb.messages, rb.routes_added)
    );
}

#[test]
fn our_equal_tables_fall_back_on_eexist_and_are_left_alone() {
    let k = FakeKernel::default();
    apply_in(&k, &cfg(&[]), NFT).unwrap();
    let before = k.state().nft.clone();
    for choice in [NFT, AUTO] {
        let batches = k.calls(Call::NfBatch);
        let r = fresh(&k, &cfg(&[]), choice).unwrap();
        assert_eq!((r.objects, r.messages, r.replaced), (0, 0, false));
        assert_eq!(
            k.calls(Call::NfBatch),
            batches + 1,
            "the refused create only"
        );
        assert_eq!(k.state().nft, before, "counters and handles kept");
    }
    let r = fresh(&k, &cfg(&[]), AUTO).unwrap();
    assert_eq!(r.decision.reason, "Istio nftables tables already exist");
}

#[test]
fn our_changed_tables_fall_back_on_eexist_and_are_replaced() {
    let k = FakeKernel::default();
    apply_in(&k, &cfg(&[]), NFT).unwrap();
    let changed = cfg(&["-b", "80,443"]);
    let r = fresh(&k, &changed, NFT).unwrap();
    assert!(r.replaced);
    assert_eq!(k.calls(Call::NfBatch), 3, "create, refused create, replace");
    assert!(clean(&k, &changed));
}

#[test]
fn routes_added_before_a_refused_create_are_taken_back_before_the_fall_back() {
    let k = FakeKernel::default();
    apply_in(&k, &tproxy_v6(), NFT).unwrap();
    // Ours, in place: the fall-back finds them and adds nothing; the report says so.
    let r = fresh(&k, &tproxy_v6(), NFT).unwrap();
    assert!(r.routes_added.is_empty());
    assert_eq!(k.state().routes.objects.len(), 5);
    assert!(clean(&k, &tproxy_v6()));
}

#[test]
fn a_refused_batch_changes_nothing_and_is_reported_as_refused() {
    let k = FakeKernel::default();
    // Refused twice: the optimistic create and the full path's create.
    k.fail(Call::NfBatch, libc::EINVAL, 2);
    let e = fresh(&k, &tproxy_v6(), NFT).unwrap_err();
    assert_eq!(e.outcome(), Outcome::Refused);
    assert!(k.state().routes.objects.is_empty());
    assert!(k.state().nft.tables.is_empty());
}

#[test]
fn a_refusal_that_goes_away_is_applied_by_the_full_path() {
    let k = FakeKernel::default();
    k.fail(Call::NfBatch, libc::EINVAL, 1);
    let r = fresh(&k, &tproxy_v6(), NFT).unwrap();
    assert_eq!(r.routes_added.len(), 5, "taken back, then added again");
    assert_eq!(k.calls(Call::NfDump), 1, "the full path looked");
    assert!(clean(&k, &tproxy_v6()));
}

#[test]
fn legacy_rules_of_ours_take_the_full_path() {
    // auto keeps the legacy backend in place.
    let k = FakeKernel::default();
    apply_in(&k, &cfg(&[]), LEGACY).unwrap();
    let r = fresh(&k, &cfg(&[]), AUTO).unwrap();
    assert_eq!(r.decision.backend, Backend::IptablesLegacy);
    assert!(k.state().nft.tables.is_empty());
    // An explicit nftables migrates.
    let r = fresh(&k, &cfg(&[]), NFT).unwrap();
    assert_eq!(r.migrated_from, Some(Backend::IptablesLegacy));
    assert!(!legacy_has_ours(&k));
    assert!(clean(&k, &cfg(&[])));
}

#[test]
fn without_nf_tables_auto_still_falls_back_to_legacy() {
    let k = FakeKernel::default();
    k.fail(Call::NfOpen, libc::EPROTONOSUPPORT, 2);
    let r = fresh(&k, &cfg(&[]), AUTO).unwrap();
    assert_eq!(
        (r.decision.backend, r.decision.reason),
        (Backend::IptablesLegacy, "nf_tables does not answer")
    );
    assert!(legacy_has_ours(&k));
}

#[test]
fn an_unreadable_legacy_state_is_left_to_the_full_path_to_report() {
    let k = FakeKernel::default();
    k.fail(Call::XtLoaded, libc::EACCES, 2);
    let e = fresh(&k, &cfg(&[]), NFT).unwrap_err();
    assert_eq!(e.outcome(), Outcome::PermissionDenied);
    assert!(k.state().nft.tables.is_empty());
    assert_eq!(k.calls(Call::NfBatch), 0);
}

#[test]
fn an_explicit_legacy_choice_is_never_optimistic() {
    let k = FakeKernel::default();
    let r = fresh(&k, &cfg(&[]), LEGACY).unwrap();
    assert_eq!(r.decision.backend, Backend::IptablesLegacy);
    assert_eq!(k.calls(Call::NfBatch), 0);
}
