// Shared body of the `flags` fuzz target (fuzz/fuzz_targets/flags.rs) and its property test
// (integration/properties.rs): included as a module, not a crate of its own.
//
// What the command line reads: Istio's `istio-iptables` flags and environment variables,
// mapped to a raw configuration, validated (against a group file from the input too), and,
// when valid, taken all the way to rules, text and an nf_tables batch.

use mesh_redirect::config::{GroupFile, RawConfig};
use mesh_redirect::model::{build, Flavor};

/// Input, in NUL-separated sections: the flags (one a line), the environment (`NAME=VALUE`
/// lines), the group file (`/etc/group` lines).
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut sections = text.split('\0');
    let flags: Vec<String> = sections
        .next()
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    let env: Vec<(String, String)> = sections
        .next()
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let groups = sections.next().unwrap_or_default();
    check(&flags, &env, groups);
}

/// Flags and environment → raw configuration → validated configuration → rules.
pub fn check(flags: &[String], env: &[(String, String)], groups: &str) {
    let lookup = |k: &str| {
        env.iter()
            .rev()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.clone())
    };
    let raw = match mesh_redirect::cli::raw_config(flags, &lookup) {
        Ok(raw) => raw,
        Err(e) => {
            // Every refusal renders (clap's message, or the help text for `--help`).
            let _ = e.to_string();
            return;
        }
    };
    // Mapping is deterministic.
    assert_eq!(
        mesh_redirect::cli::raw_config(flags, &lookup).ok(),
        Some(raw.clone())
    );
    let with_groups = GroupFile::parse(groups);
    check_raw(&raw, &with_groups);
    check_raw(&raw, &GroupFile::default());
}

fn check_raw(raw: &RawConfig, groups: &GroupFile) {
    let cfg = match raw.validate(groups) {
        Ok(cfg) => cfg,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let _ = (cfg.is_tproxy(), cfg.needs_tproxy_routes());
    let nft = build(&cfg, Flavor::Nftables);
    let _ = mesh_redirect::nft::render::render(&nft);
    let batch =
        mesh_redirect::nft::batch::encode(&nft, mesh_redirect::nft::batch::Shape::Replace, 1);
    assert!(!batch.bytes.is_empty());
    let xt = build(&cfg, Flavor::Iptables);
    let _ = mesh_redirect::xt::render::render(&xt);
}
