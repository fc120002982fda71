//! The product never forks and needs no netfilter userspace: it links no libnftnl/libmnl,
//! `apply` starts no other program (strace sees one `execve`, and every `clone` is a thread),
//! and it works in a mount namespace where `nft`, `iptables*` and `ip` do not exist.

mod support;

use std::process::Command;
use support::*;

#[test]
fn the_binary_links_no_netfilter_library() {
    let out = run_ok(Command::new("ldd").arg(binary()));
    for lib in [
        "libnftnl",
        "libmnl",
        "libnetfilter",
        "libxtables",
        "libip4tc",
        "libip6tc",
    ] {
        assert!(!out.contains(lib), "{lib} must not be linked:\n{out}");
    }
    // Only the C runtime and the loader.
    for line in out.lines().filter(|l| l.contains("=>")) {
        let name = line.split_whitespace().next().unwrap_or_default();
        assert!(
            [
                "libc.so",
                "libgcc_s.so",
                "libm.so",
                "libpthread.so",
                "libdl.so",
                "librt.so"
            ]
            .iter()
            .any(|ok| name.starts_with(ok)),
            "unexpected shared library {name}:\n{out}"
        );
    }
}

#[test]
fn apply_starts_no_other_program() {
    starts_no_other_program("nftables");
}

#[test]
fn apply_starts_no_other_program_iptables_legacy() {
    starts_no_other_program("iptables-legacy");
}

#[test]
fn apply_works_without_any_netfilter_or_iproute_binary() {
    works_without_binaries("nftables");
}

#[test]
fn apply_works_without_any_netfilter_or_iproute_binary_iptables_legacy() {
    works_without_binaries("iptables-legacy");
}

fn starts_no_other_program(backend: &str) {
    let ns = TestNetns::new("sc");
    let trace = TempFile::new("strace", "");
    let out = run(Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-e",
            "trace=execve,execveat,clone,clone3,fork,vfork",
            "-o",
        ])
        .arg(&trace.0)
        .arg(binary())
        .args([
            "apply",
            "--backend",
            backend,
            "--netns",
            &ns.name,
            "-m",
            "TPROXY",
            "--ipv6",
        ]));
    assert!(
        out.status.success(),
        "apply under strace: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = std::fs::read_to_string(&trace.0).unwrap();
    let execs: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("execve(") || l.contains("execveat("))
        .collect();
    assert_eq!(execs.len(), 1, "only the binary itself is executed:\n{log}");
    assert!(execs[0].contains(binary()));
    // The syscall's name follows the pid (a path may contain "clone": a checkout in
    // /tmp/ci-clone made this test fail on the execve line).
    let syscall = |l: &str| {
        let mut words = l.split_whitespace().peekable();
        if words
            .peek()
            .is_some_and(|w| w.bytes().all(|b| b.is_ascii_digit()))
        {
            words.next();
        }
        words
            .next()
            .and_then(|s| s.split('(').next())
            .unwrap_or_default()
            .to_string()
    };
    for l in log
        .lines()
        .filter(|l| matches!(syscall(l).as_str(), "clone" | "clone3"))
    {
        assert!(
            l.contains("CLONE_THREAD"),
            "every clone is a thread, not a process: {l}"
        );
    }
    assert!(!log.contains("fork("), "no fork: {log}");
    assert!(has_rules(&ns, backend), "and the rules are there");
}

fn has_rules(ns: &TestNetns, backend: &str) -> bool {
    if backend == "nftables" {
        ns.ruleset().contains("istio-proxy-mangle")
    } else {
        ns.exec_ok(&["iptables-legacy-save"])
            .contains("ISTIO_TPROXY")
            && ns
                .exec_ok(&["ip6tables-legacy-save"])
                .contains("ISTIO_TPROXY")
    }
}

fn works_without_binaries(backend: &str) {
    let ns = TestNetns::new("nb");
    let mut cmd = Command::new(binary());
    cmd.args([
        "apply",
        "--backend",
        backend,
        "--netns",
        &ns.name,
        "--ipv6",
        "-m",
        "TPROXY",
    ])
    .env_clear()
    .env("PATH", "/nonexistent");
    with_private_mounts(&mut cmd, || {
        // An empty tmpfs over every directory that holds nft, iptables* or ip.
        for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
            nix::mount::mount(
                Some("none"),
                dir,
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )?;
        }
        Ok(())
    });
    let out = run(&mut cmd);
    assert!(
        out.status.success(),
        "apply without binaries: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(has_rules(&ns, backend));
    assert!(ns
        .exec_ok(&["ip", "rule", "show"])
        .contains("fwmark 0x539 lookup 133"));
}
