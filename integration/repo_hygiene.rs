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

/// Functions in a Rust source text longer than `limit` lines, as `(first line, name,
/// length)`, unless a comment starting with `// Long by design:` stands directly above
/// them (between their doc comment and their signature). A brace counter that skips
/// strings, characters and comments: enough for this repository's style (rustfmt).
fn long_functions(text: &str, limit: usize) -> Vec<(usize, String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let sig = t
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub ")
            .trim_start_matches("const ")
            .trim_start_matches("unsafe ");
        let Some(rest) = sig.strip_prefix("fn ") else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let excused = lines[..i]
            .iter()
            .rev()
            .take_while(|l| l.trim_start().starts_with("//") || l.trim_start().starts_with("#["))
            .any(|l| l.trim_start().starts_with("// Long by design:"));
        let (mut depth, mut started) = (0i32, false);
        for (j, l) in lines[i..].iter().enumerate() {
            for c in code_only(l).chars() {
                match c {
                    '{' => {
                        depth += 1;
                        started = true
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if !started && code_only(l).trim_end().ends_with(';') {
                break; // a declaration without a body (trait method)
            }
            if started && depth == 0 {
                if j + 1 > limit && !excused {
                    out.push((i + 1, name.clone(), j + 1));
                }
                break;
            }
        }
    }
    out
}

/// A line without its string and character literals and its `//` comment.
fn code_only(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                while let Some(d) = chars.next() {
                    match d {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            // A character literal ('{', '\'') but not a lifetime ('a).
            '\'' if matches!(chars.clone().nth(1), Some('\'')) => {
                chars.nth(1);
            }
            '\'' if chars.peek() == Some(&'\\') => {
                for d in chars.by_ref() {
                    if d == '\'' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'/') => break,
            c => out.push(c),
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("a readable directory") {
        let p = e.expect("a directory entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The architecture issue's rule: no function in `src/` over ~80 lines without a reason
/// written next to it.
#[test]
fn no_function_in_src_is_over_80_lines_without_a_reason() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    assert!(files.len() > 40, "found the sources: {}", files.len());
    let mut long = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("a readable source");
        for (line, name, len) in long_functions(&text, 80) {
            long.push(format!("{}:{line} {name} ({len} lines)", f.display()));
        }
    }
    assert!(
        long.is_empty(),
        "over 80 lines without `// Long by design:`: {long:#?}"
    );
}

#[test]
fn the_function_length_scanner_counts_bodies_and_honours_reasons() {
    let body = |n: usize| "    let x = '{';\n    // }\n    let s = \"}\";\n".repeat(n);
    let text = format!(
        "fn short() {{\n{}}}\n\n/// Doc.\n// Long by design: a table.\nfn excused() {{\n{}}}\n\nfn long<'a>(x: &'a str) {{\n{}}}\ntrait T {{\n    fn decl(&self);\n}}\n",
        body(2),
        body(40),
        body(40)
    );
    let found = long_functions(&text, 80);
    assert_eq!(found, [(135, "long".to_string(), 122)]);
}

/// Every file under `dir`, skipping build output and git's own data.
fn repository_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).expect("a readable directory") {
        let p = e.expect("a directory entry").path();
        let name = p.file_name().unwrap_or_default();
        if name == "target" || name == ".git" {
            continue;
        }
        if p.is_dir() {
            repository_files(&p, out);
        } else if p.is_file() {
            out.push(p);
        }
    }
}

/// The files under `root` whose bytes contain `needle`, as root-relative paths.
fn files_containing(root: &Path, needle: &[u8]) -> Vec<String> {
    let mut files = Vec::new();
    repository_files(root, &mut files);
    let mut found: Vec<String> = files
        .iter()
        .filter(|f| {
            let bytes = std::fs::read(f).expect("a readable file");
            bytes.windows(needle.len()).any(|w| w == needle)
        })
        .map(|f| f.strip_prefix(root).unwrap_or(f).display().to_string())
        .collect();
    found.sort();
    found
}

/// The repository stands alone: the shared build inputs beside it are an input to its
/// developers, never something a file here may point to (a clone elsewhere has no such
/// directory). What the code relies on is summarised in `docs/`.
#[test]
fn no_file_refers_to_the_shared_directory_outside_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Assembled at run time so that this file does not name it itself.
    let needle = ["..", "/shared"].concat();
    let found = files_containing(root, needle.as_bytes());
    assert!(
        found.is_empty(),
        "files referring to `{needle}` (cite docs/ instead): {found:#?}"
    );
}

#[test]
fn the_file_scanner_finds_a_needle_and_skips_build_output() {
    let dir = std::env::temp_dir().join(format!("repo-hygiene-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for sub in ["a/b", "target", ".git"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::write(dir.join("a/b/hit.md"), "see ../elsewhere/x").unwrap();
    std::fs::write(dir.join("a/miss.rs"), "// nothing here").unwrap();
    std::fs::write(dir.join("target/built"), "../elsewhere").unwrap();
    std::fs::write(dir.join(".git/config"), "../elsewhere").unwrap();
    let found = files_containing(&dir, b"../elsewhere");
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(found, ["a/b/hit.md"]);
}
