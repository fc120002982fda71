//! An explicit backend that differs from the one in place migrates: the new rules are
//! applied, then the other backend's rules of ours are removed, in one operation.

use super::test_support::*;
use super::*;
use crate::kernel::fake::{Call, FakeKernel};

#[test]
fn switching_from_legacy_to_nftables_removes_the_legacy_rules() {
    let k = FakeKernel::default();
    apply_in(&k, &default_cfg(), BackendChoice::IptablesLegacy).unwrap();
    let r = apply_in(&k, &default_cfg(), BackendChoice::Nftables).unwrap();
    assert_eq!(r.migrated_from, Some(Backend::IptablesLegacy));
    assert!(!legacy_has_ours(&k));
    assert_eq!(k.state().nft.names(), ["istio-proxy-nat"]);
}

#[test]
fn switching_from_nftables_to_legacy_removes_the_nftables_tables() {
    let k = FakeKernel::default();
    apply_in(&k, &default_cfg(), BackendChoice::Nftables).unwrap();
    let r = apply_in(&k, &default_cfg(), BackendChoice::IptablesLegacy).unwrap();
    assert_eq!(r.migrated_from, Some(Backend::Nftables));
    assert!(k.state().nft.tables.is_empty());
    assert!(legacy_has_ours(&k));
}

#[test]
fn a_failed_switch_leaves_the_old_backend_in_place() {
    let k = FakeKernel::default();
    apply_in(&k, &default_cfg(), BackendChoice::IptablesLegacy).unwrap();
    k.fail(Call::NfBatch, libc::EINVAL, 1);
    apply_in(&k, &default_cfg(), BackendChoice::Nftables).unwrap_err();
    assert!(
        legacy_has_ours(&k),
        "the pod stays captured by the old rules"
    );
    assert!(k.state().nft.tables.is_empty());
}

#[test]
fn auto_and_the_same_backend_do_not_migrate() {
    let k = FakeKernel::default();
    apply_in(&k, &default_cfg(), BackendChoice::IptablesLegacy).unwrap();
    let r = apply_in(&k, &default_cfg(), BackendChoice::Auto).unwrap();
    assert_eq!(
        (r.decision.backend, r.migrated_from),
        (Backend::IptablesLegacy, None)
    );
    let r = apply_in(&k, &default_cfg(), BackendChoice::IptablesLegacy).unwrap();
    assert_eq!(r.migrated_from, None);
    assert!(legacy_has_ours(&k));
}
