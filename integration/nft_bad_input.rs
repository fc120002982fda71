//! Bad input changes nothing, and says what is wrong.
//!
//! For each of more than 25 distinct invalid inputs to `mesh-redirect apply --netns <ns> …`
//! (short and long flags, environment variables, parser-level errors), this test proves:
//!
//! * the exit code is 2 (invalid input, `src/main.rs`);
//! * stderr names the field exactly as the user can find it (the long flag, also when the
//!   short form was typed, or the environment variable) together with the offending value,
//!   in the form `invalid value "<value>" for <field>` for our own validation;
//! * nothing is printed on stdout;
//! * the namespace is untouched: a fresh namespace keeps an empty `nft list ruleset`, and a
//!   namespace holding our rules (TPROXY, so policy routes too) plus a user's own table keeps
//!   everything `TestNetns::snapshot` shows byte-identical (nf_tables ruleset, legacy tables
//!   of both families with counters, policy rules, every routing table, addresses); the same
//!   with the iptables-legacy backend. Every case is checked, every change reported.
//!
//! It also covers `--netns` problems (a missing namespace, an empty or reserved name, a file
//! that is not a network namespace): exit 3 with a message naming the namespace, and invalid
//! input is reported before the namespace is even looked at.

mod support;

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::process::{Command, Output};
use support::*;

/// Every environment variable the binary reads. They are removed from each child so that the
/// test runner's environment cannot change the outcome (a knob set in the runner's shell, or a
/// `MESH_REDIRECT_LOG` that changes what reaches stderr).
const ENV_KNOBS: &[&str] = &[
    "INBOUND_CAPTURE_PORT",
    "INBOUND_TUNNEL_PORT",
    "PROXY_UID",
    "PROXY_GID",
    "ISTIO_INBOUND_INTERCEPTION_MODE",
    "ISTIO_INBOUND_TPROXY_MARK",
    "ISTIO_INBOUND_TPROXY_ROUTE_TABLE",
    "ISTIO_INBOUND_PORTS",
    "ISTIO_LOCAL_EXCLUDE_PORTS",
    "ISTIO_SERVICE_CIDR",
    "ISTIO_SERVICE_EXCLUDE_CIDR",
    "ISTIO_OUTBOUND_PORTS",
    "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE",
    "KUBE_VIRT_INTERFACES",
    "ISTIO_EXCLUDE_INTERFACES",
    "REDIRECT_DNS",
    "ISTIO_META_DNS_CAPTURE",
    "CAPTURE_ALL_DNS",
    "DROP_INVALID",
    "INVALID_DROP",
    "ISTIO_OUTBOUND_OWNER_GROUPS",
    "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
    "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
    "MESH_REDIRECT_LOG",
    "MESH_REDIRECT_FAULT",
];

/// What the refusal must say.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// Our validation: `invalid value "<value>" for <field>: <reason>`.
    Exact,
    /// The command-line parser's own wording: the field and the value both appear.
    Mentions,
}

/// One invalid input.
#[derive(Debug, Clone)]
struct Case {
    args: Vec<OsString>,
    env: Vec<(String, OsString)>,
    /// The flag (long form) or variable the message must name.
    field: &'static str,
    /// The offending value as the user gave it.
    value: String,
    refusal: Refusal,
}

impl Case {
    /// The command as a shell line, for failure messages.
    fn describe(&self) -> String {
        let env = self.env.iter().map(|(k, v)| format!("{k}={v:?} "));
        let args = self.args.iter().map(|a| format!(" {a:?}"));
        format!(
            "{}mesh-redirect apply --netns NS{}",
            env.collect::<String>(),
            args.collect::<String>()
        )
    }

    fn key(&self) -> (Vec<OsString>, Vec<(String, OsString)>) {
        (self.args.clone(), self.env.clone())
    }
}

/// Flags refused by our validation.
fn flag(args: &[&str], field: &'static str, value: &str) -> Case {
    Case {
        args: args.iter().map(OsString::from).collect(),
        env: Vec::new(),
        field,
        value: value.to_string(),
        refusal: Refusal::Exact,
    }
}

/// An environment variable refused by our validation; the message names the variable.
fn env(var: &'static str, value: impl Into<String>) -> Case {
    let value = value.into();
    Case {
        args: Vec::new(),
        env: vec![(var.to_string(), OsString::from(&value))],
        field: var,
        value,
        refusal: Refusal::Exact,
    }
}

/// Flags refused by the command-line parser before validation; `value` is empty when the
/// error has no value to show (a flag given twice, a missing value).
fn usage(args: &[&str], field: &'static str, value: &str) -> Case {
    Case {
        refusal: Refusal::Mentions,
        ..flag(args, field, value)
    }
}

/// The table of invalid inputs. Short flags are reported under their long name.
fn bad_inputs() -> Vec<Case> {
    let too_many_groups = (1000..1065)
        .map(|g| g.to_string())
        .collect::<Vec<_>>()
        .join(",");
    vec![
        // Ports.
        flag(&["-p", "abc"], "--envoy-port", "abc"),
        flag(&["-p", "+80"], "--envoy-port", "+80"),
        flag(&["-z", "70000"], "--inbound-capture-port", "70000"),
        flag(&["-e", "0"], "--inbound-tunnel-port", "0"),
        flag(&["--envoy-port", ""], "--envoy-port", ""),
        env("INBOUND_CAPTURE_PORT", "x"),
        env("INBOUND_TUNNEL_PORT", "65536"),
        // Proxy uid / gid.
        flag(&["-u", "istio"], "--proxy-uid", "istio"),
        flag(&["--proxy-uid", "4294967296"], "--proxy-uid", "4294967296"),
        flag(&["-g", "1,x"], "--proxy-gid", "1,x"),
        env("PROXY_UID", "1337,root"),
        env("PROXY_GID", "abc"),
        flag(&["-u", ","], "--proxy-uid", ","),
        env("PROXY_UID", ","),
        flag(&["-g", ","], "--proxy-gid", ","),
        // Interception mode, TPROXY mark and routing table.
        flag(&["-m", "NONE"], "--istio-inbound-interception-mode", "NONE"),
        env("ISTIO_INBOUND_INTERCEPTION_MODE", "tproxy"),
        flag(&["-t", "mark"], "--istio-inbound-tproxy-mark", "mark"),
        flag(
            &["-m", "TPROXY", "-t", "0"],
            "--istio-inbound-tproxy-mark",
            "0",
        ),
        env("ISTIO_INBOUND_TPROXY_MARK", "0xZZ"),
        flag(&["-t", "0x+1"], "--istio-inbound-tproxy-mark", "0x+1"),
        flag(
            &["-r", "0x+85"],
            "--istio-inbound-tproxy-route-table",
            "0x+85",
        ),
        flag(
            &["-m", "TPROXY", "-r", "255"],
            "--istio-inbound-tproxy-route-table",
            "255",
        ),
        flag(&["-r", "0"], "--istio-inbound-tproxy-route-table", "0"),
        env("ISTIO_INBOUND_TPROXY_ROUTE_TABLE", "253"),
        // Port lists.
        flag(&["-b", "80,http"], "--istio-inbound-ports", "80,http"),
        flag(&["-b", "80,*"], "--istio-inbound-ports", "80,*"),
        env("ISTIO_INBOUND_PORTS", "80,,x"),
        flag(
            &["-d", "15020,abc"],
            "--istio-local-exclude-ports",
            "15020,abc",
        ),
        env("ISTIO_LOCAL_EXCLUDE_PORTS", "*"),
        flag(&["-q", "*"], "--istio-outbound-ports", "*"),
        env("ISTIO_OUTBOUND_PORTS", "99999"),
        flag(&["-o", "0"], "--istio-local-outbound-ports-exclude", "0"),
        env("ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE", "15020, 15021"),
        // CIDR lists.
        flag(&["-i", "10.0.0.1"], "--istio-service-cidr", "10.0.0.1"),
        flag(&["-i", "10.0.0/8"], "--istio-service-cidr", "10.0.0/8"),
        flag(
            &["-i", "10.0.0.0/8,*"],
            "--istio-service-cidr",
            "10.0.0.0/8,*",
        ),
        flag(&["-i", "::1/129"], "--istio-service-cidr", "::1/129"),
        env("ISTIO_SERVICE_CIDR", "10.0.0.0/8,fd00::/200"),
        flag(
            &["-x", "10.0.0.0/33"],
            "--istio-service-exclude-cidr",
            "10.0.0.0/33",
        ),
        flag(&["-x", "*"], "--istio-service-exclude-cidr", "*"),
        flag(
            &["-x", "10.0.0.0/+8"],
            "--istio-service-exclude-cidr",
            "10.0.0.0/+8",
        ),
        env("ISTIO_SERVICE_EXCLUDE_CIDR", "*"),
        flag(
            &["-i", "10.0.0.0/08"],
            "--istio-service-cidr",
            "10.0.0.0/08",
        ),
        env("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "127.0.0.1/08"),
        flag(
            &["-c", "averyveryverylongname"],
            "--istio-exclude-interfaces",
            "averyveryverylongname",
        ),
        flag(&["-c", "eth0:1"], "--istio-exclude-interfaces", "eth0:1"),
        flag(&["-k", "eth/0"], "--kube-virt-interfaces", "eth/0"),
        flag(&["-k", "."], "--kube-virt-interfaces", "."),
        env("KUBE_VIRT_INTERFACES", "a b"),
        env("ISTIO_EXCLUDE_INTERFACES", ".."),
        // Booleans (Go's ParseBool spellings only).
        flag(&["--redirect-dns=maybe"], "--redirect-dns", "maybe"),
        flag(&["--redirect-dns="], "--redirect-dns", ""),
        flag(&["--capture-all-dns=on"], "--capture-all-dns", "on"),
        flag(&["--drop-invalid=2"], "--drop-invalid", "2"),
        flag(&["--ipv6=yes"], "--ipv6", "yes"),
        env("ISTIO_META_DNS_CAPTURE", "perhaps"),
        env("REDIRECT_DNS", "perhaps"),
        env("CAPTURE_ALL_DNS", "yes"),
        env("DROP_INVALID", "nope"),
        env("INVALID_DROP", "nope"),
        // DNS servers.
        flag(&["--dns-servers-v4", "::1"], "--dns-servers-v4", "::1"),
        flag(&["--dns-servers-v4", "1.2.3"], "--dns-servers-v4", "1.2.3"),
        flag(
            &["--dns-servers-v6", "10.0.0.1"],
            "--dns-servers-v6",
            "10.0.0.1",
        ),
        flag(
            &["--dns-servers-v6", "fe80::1%eth0"],
            "--dns-servers-v6",
            "fe80::1%eth0",
        ),
        // Environment-only knobs.
        env("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "10.0.0.0/8"),
        env("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "127.0.0.1/4"),
        env("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "127.0.0.1"),
        env("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "::1/128"),
        env("ISTIO_OUTBOUND_OWNER_GROUPS", too_many_groups),
        env("ISTIO_OUTBOUND_OWNER_GROUPS", "1,no-such-group-xyz"),
        env("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "no-such-group-xyz"),
        Case {
            args: Vec::new(),
            env: vec![(
                "ISTIO_INBOUND_PORTS".into(),
                <OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"80,\xff").into(),
            )],
            field: "ISTIO_INBOUND_PORTS",
            value: "80,".into(),
            refusal: Refusal::Mentions,
        },
        // Known limitation: a flag value that is not UTF-8 is refused (exit 2) by clap with
        // "invalid UTF-8 was detected in one or more arguments", which does not name the flag.
        // Case {
        //     args: vec!["-b".into(), <OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"80,\xff").into()],
        //     env: Vec::new(),
        //     field: "--istio-inbound-ports",
        //     value: "80,".into(),
        //     refusal: Refusal::Mentions,
        // },
        usage(
            &["--backend", "iptables-nope"],
            "--backend",
            "iptables-nope",
        ),
        usage(&["--no-such-flag"], "--no-such-flag", "--no-such-flag"),
        usage(&["-p", "1", "-p", "2"], "--envoy-port", ""),
        usage(&["--istio-service-cidr"], "--istio-service-cidr", ""),
    ]
}

/// `mesh-redirect apply --netns <netns>`, with none of the variables the binary reads set.
fn apply_command(netns: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(binary());
    for knob in ENV_KNOBS {
        cmd.env_remove(knob);
    }
    cmd.arg("apply").arg("--netns").arg(netns);
    cmd
}

/// Runs `case` against `netns`: its flags and its environment only.
fn apply(netns: &str, case: &Case) -> Output {
    let mut cmd = apply_command(netns);
    cmd.args(&case.args);
    for (k, v) in &case.env {
        cmd.env(k, v);
    }
    run(&mut cmd)
}

/// Why `out` is not the refusal `case` expects, if it is not.
fn refusal_problem(case: &Case, out: &Output) -> Option<String> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let expected = match case.refusal {
        Refusal::Exact => format!("invalid value {:?} for {}", case.value, case.field),
        Refusal::Mentions => format!("{} and {:?}", case.field, case.value),
    };
    let named = match case.refusal {
        Refusal::Exact => stderr.contains(&expected),
        Refusal::Mentions => stderr.contains(case.field) && stderr.contains(&case.value),
    };
    let problem = if out.status.code() != Some(2) {
        format!("{} (expected exit status 2)", out.status)
    } else if !named {
        format!("stderr does not contain {expected}")
    } else if !stdout.is_empty() {
        "something was printed on stdout".to_string()
    } else {
        return None;
    };
    Some(format!(
        "{}: {problem}\n  stderr: {}\n  stdout: {}",
        case.describe(),
        stderr.trim_end(),
        stdout.trim_end()
    ))
}

fn assert_table_is_large_and_distinct(cases: &[Case]) {
    assert!(
        cases.len() >= 25,
        "only {} bad inputs in the table",
        cases.len()
    );
    let mut seen = HashSet::new();
    for case in cases {
        assert!(
            seen.insert(case.key()),
            "duplicate case: {}",
            case.describe()
        );
    }
}

#[test]
fn every_bad_input_is_refused_naming_its_field_in_a_fresh_namespace() {
    require_root();
    let cases = bad_inputs();
    assert_table_is_large_and_distinct(&cases);
    let mut ns = TestNetns::new("bad");
    let mut before = ns.snapshot();
    assert!(ns.ruleset().is_empty(), "a fresh namespace has no ruleset");

    let mut failures = Vec::new();
    for case in &cases {
        let out = apply(&ns.name, case);
        failures.extend(refusal_problem(case, &out));
        let ruleset = ns.ruleset();
        let after = ns.snapshot();
        if !ruleset.is_empty() || after != before {
            failures.push(format!(
                "{}: changed the namespace:\n{}",
                case.describe(),
                snapshot_difference(&before, &after).unwrap_or_default()
            ));
            // Go on in a fresh namespace, so that the next cases are judged on their own.
            ns = TestNetns::new("bad");
            before = ns.snapshot();
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad inputs were not refused cleanly:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Control: the namespace was usable all along, so the refusals were about the input.
    ns.mesh_ok("apply", &[], &[]);
    assert!(!ns.ruleset().is_empty(), "a valid apply programs rules");
    assert_no_forwarding();
}

/// Runs every case against `ns` (`refuse` returns what is wrong with its answer, if
/// anything) and compares the namespace's snapshot with the one before the case, so that a
/// change is reported once, against the input that made it; no failure means
/// byte-identical to `before` end to end. Fails listing every problem, as cases that `what`.
fn assert_each_case_leaves_the_namespace(
    ns: &TestNetns,
    before: String,
    cases: &[Case],
    what: &str,
    refuse: impl Fn(&Case) -> Option<String>,
) {
    let mut expected = before;
    let mut failures = Vec::new();
    for case in cases {
        failures.extend(refuse(case));
        let after = ns.snapshot();
        if let Some(diff) = snapshot_difference(&expected, &after) {
            failures.push(format!(
                "{}: changed the namespace:\n{diff}",
                case.describe()
            ));
            expected = after;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad inputs {what}:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn bad_input_leaves_an_applied_namespace_byte_identical() {
    require_root();
    let cases = bad_inputs();
    let ns = TestNetns::new("kept");
    // Our rules in TPROXY mode (tables plus a policy rule and a local route), and a table
    // that belongs to someone else.
    let valid = vec!["-m".to_string(), "TPROXY".to_string()];
    ns.mesh_ok("apply", &valid, &[]);
    ns.exec_ok(&["nft", "add", "table", "inet", "user"]);
    ns.exec_ok(&["nft", "add", "chain", "inet", "user", "c"]);
    ns.exec_ok(&["nft", "add", "rule", "inet", "user", "c", "counter"]);
    let before = ns.snapshot();
    assert!(before.contains("table inet user"), "{before}");
    assert!(before.contains("fwmark 0x539 lookup 133"), "{before}");

    assert_each_case_leaves_the_namespace(
        &ns,
        before,
        &cases,
        "touched an applied namespace",
        |case| refusal_problem(case, &apply(&ns.name, case)),
    );

    // Our rules are still exactly the ones the valid configuration asks for.
    ns.mesh_ok("verify", &valid, &[]);
    assert_no_forwarding();
}

/// The same refusals with the iptables-legacy backend: exit 2 each time, and its tables (both
/// families, counters included), routes and addresses stay byte-identical. Every case is
/// checked; a change is reported against the input that made it.
#[test]
fn bad_input_leaves_a_legacy_namespace_byte_identical() {
    require_root();
    let cases = bad_inputs();
    let ns = TestNetns::new("keptx");
    let valid = legacy_args(&["-m", "TPROXY", "--ipv6"]);
    ns.mesh_ok("apply", &valid, &[]);
    ns.add_legacy_ssh_accept("4", "240");
    let before = ns.snapshot();
    assert!(
        before.contains("ISTIO_TPROXY") && before.contains("[4:240]"),
        "{before}"
    );
    assert_each_case_leaves_the_namespace(
        &ns,
        before,
        &cases,
        "were not refused cleanly by the legacy backend",
        |case| {
            let mut cmd = apply_command(&ns.name);
            cmd.args(["--backend", "iptables-legacy"]).args(&case.args);
            for (k, v) in &case.env {
                cmd.env(k, v);
            }
            let out = run(&mut cmd);
            // Exit 2 exactly (the wording is checked above; here `--backend` comes twice
            // for the case that names a bad backend, which clap words differently).
            (out.status.code() != Some(2)).then(|| {
                format!(
                    "{}: {} (expected exit status 2)\n  stderr: {}",
                    case.describe(),
                    out.status,
                    stderr_of(&out).trim_end()
                )
            })
        },
    );
    ns.mesh_ok("verify", &valid, &[]);
    assert_no_forwarding();
}

/// `mesh-redirect apply --netns <netns> <args…>` with a clean environment.
fn apply_to(netns: impl AsRef<OsStr>, args: &[&str]) -> Output {
    run(apply_command(netns).args(args))
}

#[test]
fn netns_problems_exit_3_naming_the_namespace() {
    require_root();

    // A name `ip netns` does not know: exit 3, the message names it, nothing is created.
    let missing = unique("gone");
    let out = apply_to(&missing, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains(&format!("network namespace {missing:?} not found")),
        "{}",
        stderr_of(&out)
    );
    assert!(!std::path::Path::new("/var/run/netns")
        .join(&missing)
        .exists());

    // A path that does not exist.
    let path = format!("/nonexistent/{missing}");
    let out = apply_to(&path, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains(&path), "{}", stderr_of(&out));

    // Empty and reserved names are refused, naming --netns.
    for name in ["", ".", ".."] {
        let out = apply_to(name, &[]);
        assert_eq!(
            out.status.code(),
            Some(3),
            "--netns {name:?}: {}",
            stderr_of(&out)
        );
        assert!(
            stderr_of(&out).contains(&format!("invalid value {name:?} for --netns")),
            "--netns {name:?}: {}",
            stderr_of(&out)
        );
    }

    // A file that is not a network namespace.
    let out = apply_to("/etc/passwd", &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("/etc/passwd is not a network namespace"),
        "{}",
        stderr_of(&out)
    );

    // No --netns at all: a usage error naming the flag.
    let mut cmd = Command::new(binary());
    let out = run(cmd.arg("apply"));
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("--netns"), "{}", stderr_of(&out));

    // Invalid input is reported first (exit 2), before the namespace is looked up.
    let out = apply_to(&missing, &["-p", "abc"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("invalid value \"abc\" for --envoy-port"),
        "{}",
        stderr_of(&out)
    );
    assert_no_forwarding();
}

/// The diff behind "changed the namespace": equal texts give none; an added table whose
/// lines also appear elsewhere (`COMMIT`) is still shown whole, under its part's heading.
#[test]
fn snapshot_difference_shows_every_changed_line_under_its_part() {
    let before = "## nft list ruleset\n## iptables-legacy-save\n*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n## ip6tables-legacy-save\n";
    assert_eq!(snapshot_difference(before, before), None);
    let after = format!("{before}*raw\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n");
    assert_eq!(
        snapshot_difference(before, &after).unwrap(),
        "## ip6tables-legacy-save\n+ *raw\n+ :OUTPUT ACCEPT [0:0]\n+ COMMIT"
    );
    let after = before.replace("*nat\n", "");
    assert_eq!(
        snapshot_difference(before, &after).unwrap(),
        "## iptables-legacy-save\n- *nat"
    );
}
