//! Hostile and broken input never hangs, aborts or answers nothing: a FIFO (or another file
//! that is not a network namespace) as the namespace fails within a second with exit 3 (CNI
//! code 3) saying what the path is; a timeout too large for a `Duration` is a validation
//! error, not a panic; and a panic in the CNI plugin still answers the runtime with an error
//! document on stdout.

mod support;

use serde_json::json;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// Runs `cmd` with stdin closed, killing it (and failing) if it runs past `limit`.
fn run_within(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "still running after {limit:?} (killed); stderr: {}",
                stderr_of(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A FIFO, a regular file, a directory and a mount namespace, each with what it is.
fn not_netns_paths(dir: &TempDir) -> Vec<(String, &'static str)> {
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    vec![
        (fifo.display().to_string(), "a FIFO"),
        (file.display().to_string(), "a regular file"),
        (dir.path().display().to_string(), "a directory"),
        ("/proc/self/ns/mnt".to_string(), "a mount namespace"),
    ]
}

#[test]
fn a_path_that_is_not_a_network_namespace_fails_fast_with_exit_3_naming_what_it_is() {
    require_root();
    let dir = TempDir::new("notns", &[]);
    for (path, what) in not_netns_paths(&dir) {
        for sub in ["apply", "verify", "remove"] {
            let out = run_within(
                Command::new(binary()).args([sub, "--netns", &path]),
                Duration::from_secs(2),
            );
            assert_eq!(
                out.status.code(),
                Some(3),
                "{sub} {path}: {}",
                stderr_of(&out)
            );
            let err = stderr_of(&out);
            assert!(
                err.contains(&format!("{path} is not a network namespace: it is {what}")),
                "{sub} {path}: {err}"
            );
        }
    }
}

#[test]
fn cni_add_with_a_fifo_as_netns_answers_code_3_at_once() {
    require_root();
    let dir = TempDir::new("notns-cni", &[]);
    let (fifo, _) = not_netns_paths(&dir).remove(0);
    let conf =
        json!({"cniVersion": "1.0.0", "name": "n", "type": "mesh-redirect", "mode": "static"});
    let mut cmd = Command::new(binary());
    cmd.env_clear().envs(cni_env("ADD", &fifo));
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(2) {
            let _ = child.kill();
            panic!("CNI ADD on a FIFO still running after 2 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    let answer = stdout_json(&out);
    assert_eq!(answer["code"], 3, "{answer}");
    assert!(
        answer["details"]
            .as_str()
            .unwrap_or_default()
            .contains("it is a FIFO"),
        "{answer}"
    );
}

#[test]
fn an_api_timeout_too_large_for_a_duration_is_error_7_not_a_panic() {
    let ns = TestNetns::new("bigtimeout");
    for timeout in [json!(1e20), json!("99999999999999999910s"), json!(-1)] {
        let conf = json!({"cniVersion": "1.0.0", "name": "n", "type": "mesh-redirect",
                          "api_timeout": timeout});
        let out = cni(&cni_env("ADD", &ns.path()), &conf.to_string());
        assert_eq!(out.status.code(), Some(1), "{timeout}: {}", stderr_of(&out));
        let answer = stdout_json(&out);
        assert_eq!(answer["code"], 7, "{answer}");
        assert!(
            answer["msg"].as_str().unwrap().contains("api_timeout"),
            "{answer}"
        );
    }
    assert_eq!(ns.ruleset().trim(), "", "nothing was applied");
}

#[test]
fn a_probe_timeout_too_large_for_a_duration_is_invalid_input() {
    let out = run_within(
        Command::new(binary()).args(["validate", "--probe-timeout", "99999999999999999999s"]),
        Duration::from_secs(5),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("--probe-timeout"));
}

#[test]
fn a_panic_in_the_plugin_still_answers_with_a_cni_error() {
    if !cfg!(feature = "fault-injection") {
        panic!("run the tests with --features fault-injection (see README)");
    }
    let ns = TestNetns::new("panic");
    let conf =
        json!({"cniVersion": "0.4.0", "name": "n", "type": "mesh-redirect", "mode": "static"});
    let path = ns.path();
    let mut env = cni_env("ADD", &path);
    env.push(("MESH_REDIRECT_FAULT", "panic"));
    let out = cni(&env, &conf.to_string());
    assert_eq!(
        out.status.code(),
        Some(1),
        "not a signal: {}",
        stderr_of(&out)
    );
    let answer = stdout_json(&out);
    assert_eq!(answer["code"], 106, "{answer}");
    assert_eq!(answer["cniVersion"], "0.4.0", "{answer}");
    assert!(
        answer["details"]
            .as_str()
            .unwrap()
            .contains("fault injection"),
        "{answer}"
    );
}

#[test]
fn a_huge_stdin_is_refused_with_error_6_before_parsing() {
    let ns = TestNetns::new("bigstdin");
    // 6 MiB of a syntactically valid document: the cap, not the parser, refuses it.
    let padding = "x".repeat(6 << 20);
    let conf = json!({"cniVersion": "1.0.0", "name": "n", "type": "mesh-redirect",
                      "mode": "static", "padding": padding});
    let mut child = Command::new(binary())
        .env_clear()
        .envs(cni_env("ADD", &ns.path()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        // The plugin stops reading at the cap and answers: EPIPE here is expected (Go's
        // os/exec, which libcni uses, ignores it the same way).
        let _ = stdin.write_all(conf.to_string().as_bytes());
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let answer = stdout_json(&out);
    assert_eq!(answer["code"], 6, "{answer}");
    assert!(
        answer["msg"]
            .as_str()
            .unwrap()
            .contains("larger than 4 MiB"),
        "{answer}"
    );
    assert_eq!(ns.ruleset().trim(), "", "nothing was applied");
}

/// An explicit backend that differs from the one in place migrates (both directions): the
/// other backend's rules of ours are gone afterwards, and the log says so.
#[test]
fn switching_backends_leaves_only_the_new_one() {
    for (from, to) in [
        ("iptables-legacy", "nftables"),
        ("nftables", "iptables-legacy"),
    ] {
        let ns = TestNetns::new("migrate");
        ns.mesh_ok("apply", &strings(&["--backend", from, "--ipv6=true"]), &[]);
        let out = ns.mesh_ok("apply", &strings(&["--backend", to, "--ipv6=true"]), &[]);
        assert!(
            stderr_of(&out).contains(&format!("migrated_from=\"{from}\"")),
            "{from} → {to}: {}",
            stderr_of(&out)
        );
        let legacy = ns.legacy_saved(false);
        let nft = ns.ruleset();
        if to == "nftables" {
            assert!(
                !legacy.contains("ISTIO_"),
                "legacy rules left behind:\n{legacy}"
            );
            assert!(nft.contains("table inet istio-proxy-nat"), "{nft}");
        } else {
            assert!(
                !nft.contains("istio-proxy"),
                "nftables tables left behind:\n{nft}"
            );
            assert!(legacy.contains("ISTIO_OUTPUT"), "{legacy}");
        }
        ns.mesh_ok("verify", &strings(&["--backend", to, "--ipv6=true"]), &[]);
    }
}

#[test]
fn a_detached_boolean_value_gets_a_hint() {
    let out = run(Command::new(binary()).args(["render", "--ipv6", "true"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_of(&out).contains("hint: write --ipv6=true"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn tproxy_with_ipv6_and_lo_down_says_to_bring_lo_up() {
    let ns = TestNetns::new("lodown");
    ns.exec_ok(&["ip", "link", "set", "lo", "down"]);
    let out = ns.mesh("apply", &strings(&["-m", "TPROXY", "--ipv6=true"]), &[]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("bring `lo` up"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(ns.ruleset().trim(), "", "nothing was applied");
}
