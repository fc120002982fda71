//! The repository keeps itself honest: with `autotests = false`, a test file in
//! `integration/` that is not declared as a `[[test]]` target in Cargo.toml is silently
//! never built nor run. This test names any such file.

use std::collections::BTreeSet;
use std::path::Path;

/// The `path = "…"` of every `[[test]]` block of a Cargo.toml text (a line parser: the
/// manifest is plain TOML, one key a line, which is all Cargo.toml here uses).
fn declared_test_paths(manifest: &str) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    let mut in_test = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_test = line == "[[test]]";
        } else if in_test {
            if let Some((key, value)) = line.split_once('=') {
                if key.trim() == "path" {
                    paths.insert(value.trim().trim_matches('"').to_string());
                }
            }
        }
    }
    paths
}

/// The `.rs` files directly in `integration/` (not in `support/` or `fixtures/`), as
/// manifest-relative paths.
fn integration_test_files(root: &Path) -> BTreeSet<String> {
    std::fs::read_dir(root.join("integration"))
        .expect("integration/ is readable")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "rs"))
        .map(|p| format!("integration/{}", p.file_name().unwrap().to_string_lossy()))
        .collect()
}

#[test]
fn every_integration_test_file_is_a_declared_test_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    let declared = declared_test_paths(&manifest);
    let files = integration_test_files(root);
    assert!(
        files.contains("integration/repo_hygiene.rs"),
        "the listing found this very file: {files:?}"
    );
    let undeclared: Vec<&String> = files.difference(&declared).collect();
    assert!(
        undeclared.is_empty(),
        "not declared as a [[test]] target in Cargo.toml (so never built nor run): {}",
        undeclared
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
}

#[test]
fn the_manifest_parser_reads_only_test_blocks() {
    let manifest = "[package]\nname = \"x\"\n\n[[bin]]\nname = \"b\"\npath = \"src/main.rs\"\n\n\
                    [[test]]\nname = \"a\"\npath = \"integration/a.rs\"\n\n[[bench]]\nname = \"c\"\n\n\
                    [[test]]\nname = \"d\"\npath=\"integration/d.rs\"\n";
    let got: Vec<String> = declared_test_paths(manifest).into_iter().collect();
    assert_eq!(got, ["integration/a.rs", "integration/d.rs"]);
}
