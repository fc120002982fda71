//! The iptables-legacy backend as a user and as other tools see it:
//!
//! * the `iptables -t nat -L -n -v` listing a user checks by hand equals the one the product
//!   documentation shows (`integration/fixtures/conformance/seed/`), with only today's Istio changes;
//! * rules of other tools keep their bytes and `[packets:bytes]` counters through apply,
//!   re-apply and remove, in every table and both families;
//! * concurrent applies, and an `iptables-legacy -A` racing our writes, end consistent;
//! * `--backend auto` decides from what is already in the namespace.
//!
//! The oracles are `iptables-legacy`, `iptables-legacy-save`, `ip6tables-legacy-save` and
//! `nft`; the product itself never runs them.
//!
//! Two tests pin bugs this suite found in the product (both fixed): concurrent first
//! applies on fresh tables, and re-apply moving rules other tools appended after ours.

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use support::*;

/// Both families' save output without comment lines (as in `xt_conformance.rs`).
fn saved(ns: &TestNetns) -> String {
    ns.legacy_saved(false)
}

/// [`saved`] without any `[packets:bytes]` (policy counters of built-in chains included).
fn saved_without_counters(ns: &TestNetns) -> String {
    saved(ns)
        .lines()
        .map(|l| match l.rfind(" [") {
            Some(i) if l.starts_with(':') && l.ends_with(']') => format!("{}\n", &l[..i]),
            _ => format!("{l}\n"),
        })
        .collect()
}

/// A field of the `applied` (or `verify`) log line: `key="value"` or `key=value`.
fn log_field(stderr: &str, message: &str, key: &str) -> Option<String> {
    let line = stderr.lines().find(|l| l.contains(message))?;
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[at..];
    Some(match rest.strip_prefix('"') {
        Some(quoted) => quoted[..quoted.find('"').unwrap_or(quoted.len())].to_string(),
        None => rest.split_whitespace().next().unwrap_or("").to_string(),
    })
}

// ------------------------------------------------------------------------------------------
// 1. The listing the user checks by hand
// ------------------------------------------------------------------------------------------

/// Istio's CNI plugin (`sidecar_redirect.go`, `docs/istio-semantics.md` §8.4): the
/// `excludeInboundPorts` annotation, trimmed, `,` appended if missing, `15020,15021,15090`
/// appended, de-duplicated with the first occurrence winning.
fn cni_exclude_inbound_ports(annotation: &str) -> String {
    let mut v = annotation.trim().to_string();
    if !v.ends_with(',') {
        v.push(',');
    }
    v.push_str("15020,15021,15090");
    let mut seen: Vec<&str> = Vec::new();
    for p in v.split(',') {
        if !seen.contains(&p) {
            seen.push(p);
        }
    }
    seen.join(",")
}

/// One rule of `iptables -L -n -v --line-numbers -x`, without num/pkts/bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    target: String,
    prot: String,
    opt: String,
    input: String,
    output: String,
    source: String,
    destination: String,
    matches: String,
}

impl std::fmt::Display for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {} {} {} {} {} {}",
            self.target,
            self.prot,
            self.opt,
            self.input,
            self.output,
            self.source,
            self.destination,
            self.matches
        )
    }
}

/// A chain: `policy ACCEPT` (built-in, counters dropped) or `N references` (user chain).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listed {
    header: String,
    rows: Vec<Row>,
}

/// 127.0.0.x as the seed masks it (`127.0.X.X`), negation kept.
fn mask(addr: &str) -> String {
    let (neg, a) = match addr.strip_prefix('!') {
        Some(a) => ("!", a),
        None => ("", addr),
    };
    if a.starts_with("127.0.") {
        format!("{neg}127.0.X.X")
    } else {
        addr.to_string()
    }
}

/// iptables 1.8.9 prints the protocol column numerically under `-n` (older releases, like
/// the one the seed was taken with, print the name from /etc/protocols). This is the
/// listing tool's rendering of the same kernel value (`ipt_ip.proto`), not rule content:
/// Istio's own `basic.txt.golden` restored with `iptables-legacy-restore` lists as `0`/`6`
/// under `-n` and as `all`/`tcp` without it, on this iptables.
fn protocol_name(p: &str) -> String {
    match p {
        "0" => "all",
        "6" => "tcp",
        "17" => "udp",
        other => other,
    }
    .to_string()
}

fn parse_listing(text: &str) -> BTreeMap<String, Listed> {
    let mut out: BTreeMap<String, Listed> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim_end();
        if line.is_empty() || line.trim_start().starts_with("num ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("Chain ") {
            let (name, header) = rest.split_once(' ').expect("chain header");
            let header = header.trim_start_matches('(').trim_end_matches(')');
            let header = if let Some(p) = header.strip_prefix("policy ") {
                // "policy ACCEPT 0 packets, 0 bytes" → "policy ACCEPT"
                format!("policy {}", p.split_whitespace().next().unwrap())
            } else {
                header.to_string()
            };
            assert!(
                out.insert(
                    name.to_string(),
                    Listed {
                        header,
                        rows: Vec::new()
                    }
                )
                .is_none(),
                "chain {name} listed twice"
            );
            current = Some(name.to_string());
            continue;
        }
        let t: Vec<&str> = line.split_whitespace().collect();
        assert!(t.len() >= 10, "cannot read listing line {line:?}");
        let chain = current.as_ref().expect("rule before any chain header");
        out.get_mut(chain).unwrap().rows.push(Row {
            target: t[3].to_string(),
            prot: protocol_name(t[4]),
            opt: t[5].to_string(),
            input: t[6].to_string(),
            output: t[7].to_string(),
            source: mask(t[8]),
            destination: mask(t[9]),
            matches: t[10..].join(" "),
        });
    }
    out
}

/// The seed with the changes Istio made since it was taken, each applied exactly where the
/// seed's README (or Istio's generator) says; panics if the seed does not have the shape
/// the change assumes, so that a different seed cannot be "normalised" silently.
fn seed_for_todays_istio(mut seed: BTreeMap<String, Listed>) -> BTreeMap<String, Listed> {
    let out = seed.get_mut("ISTIO_OUTPUT").expect("seed has ISTIO_OUTPUT");
    // (a) Documented (seed README): today's Istio also excludes UDP 15020 outbound; Istio's
    // generator emits it right after the TCP one (`docs/istio-semantics.md` §4.2 step 9).
    let tcp = out
        .rows
        .iter()
        .position(|r| r.target == "RETURN" && r.prot == "tcp" && r.matches == "tcp dpt:15020")
        .expect("seed: RETURN tcp dpt:15020 in ISTIO_OUTPUT");
    let mut udp = out.rows[tcp].clone();
    udp.prot = "udp".into();
    udp.matches = "udp dpt:15020".into();
    out.rows.insert(tcp + 1, udp);
    // (b) Documented (seed README): the loopback in-redirect rules (uid and gid) are
    // `-p tcp ! --dport 15008` today (HBONE over loopback is not redirected).
    let mut changed = 0;
    for r in out
        .rows
        .iter_mut()
        .filter(|r| r.target == "ISTIO_IN_REDIRECT" && r.output == "lo")
    {
        assert_eq!(r.prot, "all", "seed: loopback in-redirect rule {r}");
        r.prot = "tcp".into();
        r.matches = format!("tcp dpt:!15008 {}", r.matches);
        changed += 1;
    }
    assert_eq!(
        changed, 2,
        "seed: one loopback in-redirect rule per uid and gid"
    );
    // (c) Not in the seed README, found by this test: the seed's `OUTPUT -p tcp -j
    // ISTIO_OUTPUT` is `OUTPUT -j ISTIO_OUTPUT` (all protocols) in today's Istio
    // (`docs/istio-semantics.md` §4.2 step 8, §7.1 rule 13, CNI golden basic.txt.golden).
    // Reason: ISTIO_OUTPUT now holds UDP rules that a TCP-only jump would never reach — the UDP
    // 15020 exclusion of (a) and, with DNS capture, the UDP port 53 redirect to the agent
    // (ISTIO_OUTPUT_DNS).
    let output = seed.get_mut("OUTPUT").expect("seed has OUTPUT");
    assert_eq!(output.rows.len(), 1, "seed: one rule in OUTPUT");
    assert_eq!(
        (output.rows[0].target.as_str(), output.rows[0].prot.as_str()),
        ("ISTIO_OUTPUT", "tcp"),
        "seed: OUTPUT jumps TCP to ISTIO_OUTPUT"
    );
    output.rows[0].prot = "all".into();
    seed
}

fn listing_differences(
    expected: &BTreeMap<String, Listed>,
    found: &BTreeMap<String, Listed>,
) -> Vec<String> {
    let mut out = Vec::new();
    let names = |m: &BTreeMap<String, Listed>| m.keys().cloned().collect::<Vec<_>>();
    if names(expected) != names(found) {
        out.push(format!(
            "chains: expected {:?}, found {:?}",
            names(expected),
            names(found)
        ));
    }
    for (name, e) in expected {
        let Some(f) = found.get(name) else { continue };
        if e.header != f.header {
            out.push(format!(
                "chain {name}: expected ({}), found ({})",
                e.header, f.header
            ));
        }
        for i in 0..e.rows.len().max(f.rows.len()) {
            let show = |r: Option<&Row>| r.map(|r| r.to_string()).unwrap_or("(none)".into());
            if e.rows.get(i) != f.rows.get(i) {
                out.push(format!(
                    "chain {name} rule {}:\n  expected {}\n  found    {}",
                    i + 1,
                    show(e.rows.get(i)),
                    show(f.rows.get(i))
                ));
            }
        }
    }
    out
}

#[test]
fn the_users_own_listing_matches_the_documented_one() {
    require_root();
    assert_eq!(cni_exclude_inbound_ports("22"), "22,15020,15021,15090");
    let seed_path = conformance_dir().join("seed/asm-productpage-nat.txt");
    let seed_text = std::fs::read_to_string(&seed_path)
        .unwrap_or_else(|e| panic!("{}: {e}", seed_path.display()));
    let expected = seed_for_todays_istio(parse_listing(&seed_text));

    let ns = TestNetns::new("ls");
    // The pod of the seed: CNI defaults plus the two annotations, as Istio's CNI plugin
    // turns them into istio-iptables flags.
    let args = legacy_args(&[
        "-d",
        &cni_exclude_inbound_ports("22"),
        "-x",
        "192.168.0.1/32",
    ]);
    ns.mesh_ok("apply", &args, &[]);
    ns.mesh_ok("verify", &args, &[]);
    let listing = ns.exec_ok(&[
        "iptables-legacy",
        "-t",
        "nat",
        "-L",
        "-n",
        "-v",
        "--line-numbers",
        "-x",
    ]);
    let found = parse_listing(&listing);
    assert_no_forwarding();
    let differences = listing_differences(&expected, &found);
    assert!(
        differences.is_empty(),
        "the nat listing differs from the documented one (seed + today's Istio):\n{}\n\n\
         --- listing\n{listing}",
        differences.join("\n")
    );
}

// ------------------------------------------------------------------------------------------
// 2. Other tools' rules
// ------------------------------------------------------------------------------------------

/// Foreign IPv4 rules in all four tables: policy counters, inserts at the top, appends, a
/// foreign user chain with a jump to it, matches we do not model, all with counters. (The
/// mangle insert is `-i eth9 -j ACCEPT`: a bare `-i IFACE -j RETURN` in a built-in chain of a
/// table holding our chains has the shape of Istio's exclude-interface rule, which counts as
/// ours — README, "What counts as ours".)
const FOREIGN_V4: &str = "\
*nat
:PREROUTING ACCEPT [11:660]
:OUTPUT ACCEPT [12:720]
:POSTROUTING ACCEPT [13:780]
:FOREIGN_NAT - [0:0]
[7:420] -A PREROUTING -s 198.51.100.0/24 -m comment --comment keep-me -j RETURN
[3:180] -A PREROUTING -p udp -m addrtype --dst-type LOCAL -j FOREIGN_NAT
[2:120] -A OUTPUT -m limit --limit 5/sec -m comment --comment \"keep me too\" -j RETURN
[4:240] -A OUTPUT -p tcp --dport 8080 -m comment --comment keep-me -j RETURN
[1:60] -A POSTROUTING -d 203.0.113.0/24 -j ACCEPT
[5:300] -A FOREIGN_NAT -m comment --comment keep-me -j RETURN
[7:420] -I PREROUTING 1 -s 192.0.2.7/32 -m comment --comment inserted -j RETURN
[17:1020] -I OUTPUT 1 -o lo -m addrtype --dst-type LOCAL -j RETURN
COMMIT
*mangle
:PREROUTING ACCEPT [21:1260]
:OUTPUT ACCEPT [22:1320]
:FOREIGN_MANGLE - [3:3]
[8:480] -A PREROUTING -m addrtype --src-type LOCAL -m comment --comment keep-me -j RETURN
[9:540] -A OUTPUT -p udp --dport 9999 -j MARK --set-mark 0x7
[2:2] -A OUTPUT -m limit --limit 3/min -j FOREIGN_MANGLE
[1:1] -A FOREIGN_MANGLE -j RETURN
[6:6] -I PREROUTING 1 -i eth9 -j ACCEPT
COMMIT
*raw
:OUTPUT ACCEPT [31:1860]
[4:240] -A PREROUTING -p udp --dport 5353 -m limit --limit 10/min -j NOTRACK
[6:360] -A OUTPUT -m comment --comment keep-me -j ACCEPT
[5:5] -I OUTPUT 1 -p udp --dport 53 -m comment --comment before-ours -j ACCEPT
COMMIT
*filter
:INPUT ACCEPT [41:2460]
:FOREIGN_F - [0:0]
[10:600] -A INPUT -m comment --comment keep-me -j FOREIGN_F
[11:660] -A FOREIGN_F -p tcp --dport 22 -m limit --limit 1/sec -j ACCEPT
[12:720] -A OUTPUT -m addrtype --dst-type MULTICAST -j DROP
COMMIT
";

const FOREIGN_V6: &str = "\
*nat
:PREROUTING ACCEPT [51:4080]
:OUTPUT ACCEPT [52:4160]
:FOREIGN6_NAT - [0:0]
[7:560] -A PREROUTING -s 2001:db8:100::/48 -m comment --comment keep-me -j RETURN
[3:240] -A PREROUTING -p udp -m addrtype --dst-type LOCAL -j FOREIGN6_NAT
[2:160] -A OUTPUT -m limit --limit 5/sec -j RETURN
[1:80] -A POSTROUTING -d 2001:db8:200::/48 -j ACCEPT
[5:400] -A FOREIGN6_NAT -m comment --comment keep-me -j RETURN
[7:420] -I PREROUTING 1 -s 2001:db8::7/128 -m comment --comment inserted -j RETURN
COMMIT
*mangle
:OUTPUT ACCEPT [61:4880]
[8:640] -A PREROUTING -m addrtype --src-type LOCAL -j RETURN
[9:720] -A OUTPUT -p udp --dport 9999 -j MARK --set-mark 0x7
[4:4] -I PREROUTING 1 -i eth9 -m comment --comment keep-me -j RETURN
COMMIT
*raw
[4:320] -A PREROUTING -p udp --dport 5353 -j NOTRACK
[6:480] -A OUTPUT -m comment --comment keep-me -j ACCEPT
COMMIT
*filter
:FOREIGN6_F - [0:0]
[10:800] -A INPUT -m comment --comment keep-me -j FOREIGN6_F
[11:880] -A FOREIGN6_F -p tcp --dport 22 -m limit --limit 1/sec -j ACCEPT
COMMIT
";

fn restore_with_counters(ns: &TestNetns, binary: &str, payload: &str) {
    run_with_stdin_ok(&mut ns.command(&[binary, "-w", "-c", "--noflush"]), payload);
}

const SAVES: [&str; 2] = ["iptables-legacy-save", "ip6tables-legacy-save"];

/// Each family's `-save -c` output (in [`SAVES`] order).
fn saves_with_counters(ns: &TestNetns) -> Vec<String> {
    SAVES.iter().map(|s| ns.saved_by(&[s, "-c"])).collect()
}

/// Each family's `-save -c` output still equals `before` (from [`saves_with_counters`]).
fn assert_saves_unchanged(ns: &TestNetns, before: &[String], what: &str) {
    for (save, before) in SAVES.iter().zip(before) {
        let now = ns.saved_by(&[save, "-c"]);
        assert!(
            now == *before,
            "{save}: {what}\n--- before\n{before}\n--- after\n{now}"
        );
    }
}

/// `[p:b] -A ...` → `-A ...`
fn without_counter(line: &str) -> &str {
    match line.strip_prefix('[') {
        Some(rest) => rest.split_once("] ").map(|(_, r)| r).unwrap_or(line),
        None => line,
    }
}

/// Our rules in built-in chains that do not name an `ISTIO_` chain (the TPROXY mark and
/// connmark rules), per table, from `-save -c` output of a namespace holding only ours.
fn our_builtin_rules(save: &str) -> Vec<(String, String)> {
    let mut table = String::new();
    let mut out = Vec::new();
    for l in save.lines() {
        if let Some(t) = l.strip_prefix('*') {
            table = t.to_string();
        } else if !l.contains("ISTIO_") && without_counter(l).starts_with("-A ") {
            out.push((table.clone(), without_counter(l).to_string()));
        }
    }
    out
}

/// The lines of a `-save -c` output that are not ours, in order, counters kept.
fn foreign_lines(save: &str, ours: &[(String, String)]) -> String {
    let mut table = String::new();
    let mut out = String::new();
    for l in save.lines() {
        if let Some(t) = l.strip_prefix('*') {
            table = t.to_string();
        }
        let rule = without_counter(l);
        if l.contains("ISTIO_") || ours.iter().any(|(t, r)| *t == table && r == rule) {
            continue;
        }
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// Which tables of a `-save` output hold something of ours.
fn tables_with_ours(save: &str) -> Vec<String> {
    let mut table = String::new();
    let mut out: Vec<String> = Vec::new();
    for l in save.lines() {
        if let Some(t) = l.strip_prefix('*') {
            table = t.to_string();
        } else if l.contains("ISTIO_") && !out.contains(&table) {
            out.push(table.clone());
        }
    }
    out.sort();
    out
}

#[test]
fn foreign_rules_keep_their_bytes_and_counters() {
    require_root();
    // TPROXY (mangle), DNS capture (raw), IPv6: every table but filter holds ours too.
    let args = legacy_args(&[
        "-m",
        "TPROXY",
        "--redirect-dns",
        "--capture-all-dns",
        "--ipv6",
    ]);

    // Our built-in rules that do not mention ISTIO_, read from a namespace with only ours.
    let reference = TestNetns::new("fr");
    reference.mesh_ok("apply", &args, &[]);
    let ours: Vec<Vec<(String, String)>> = saves_with_counters(&reference)
        .iter()
        .map(|s| our_builtin_rules(s))
        .collect();
    assert!(
        ours[0]
            .iter()
            .any(|(t, r)| t == "mangle" && r.contains("CONNMARK")),
        "the TPROXY config writes mark rules into mangle built-in chains: {ours:?}"
    );

    let ns = TestNetns::new("ff");
    restore_with_counters(&ns, "iptables-legacy-restore", FOREIGN_V4);
    restore_with_counters(&ns, "ip6tables-legacy-restore", FOREIGN_V6);
    let original = saves_with_counters(&ns);
    for (o, save) in original.iter().zip(SAVES) {
        for t in ["*nat", "*mangle", "*raw", "*filter"] {
            assert!(o.contains(t), "{save}: foreign setup lacks {t}:\n{o}");
        }
        assert!(
            o.contains("[7:420] -A PREROUTING") && o.contains("keep-me"),
            "{save}: counters were not restored:\n{o}"
        );
    }

    let check = |step: &str| {
        for (i, save) in SAVES.iter().enumerate() {
            let now = ns.saved_by(&[save, "-c"]);
            assert_eq!(
                tables_with_ours(&now),
                strings(&["mangle", "nat", "raw"]),
                "{save} after {step}: ours should be in mangle, nat and raw:\n{now}"
            );
            let foreign = foreign_lines(&now, &ours[i]);
            assert!(
                foreign == original[i],
                "{save} after {step}: the foreign lines changed\n--- before\n{}\n--- after \
                 (foreign lines)\n{foreign}\n--- after (all)\n{now}",
                original[i]
            );
        }
    };

    ns.mesh_ok("apply", &args, &[]);
    check("apply");
    ns.mesh_ok("verify", &args, &[]);
    ns.mesh_ok("apply", &args, &[]);
    check("re-apply");
    ns.mesh_ok("verify", &args, &[]);
    ns.mesh_ok("remove", &args, &[]);
    // Every table we wrote already existed (the foreign setup loaded all four, both
    // families), so after remove the saves must be exactly the original ones.
    assert_saves_unchanged(&ns, &original, "after remove differs from the original");
    assert_no_forwarding();
}

// ------------------------------------------------------------------------------------------
// 3. Concurrency
// ------------------------------------------------------------------------------------------

/// Table writes the product retried: the `retries=` field of the `applied` line, plus any
/// other log line about EAGAIN or a retry.
fn retries_logged(stderr: &str) -> usize {
    let field = log_field(stderr, " applied ", "retries")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let lines = stderr
        .lines()
        .filter(|l| !l.contains(" applied "))
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("eagain") || l.contains("retry") || l.contains("retrie")
        })
        .count();
    field + lines
}

fn apply_cmd(ns: &TestNetns, args: &[String]) -> Command {
    let mut cmd = ns.mesh_command(
        "apply",
        args,
        &[("MESH_REDIRECT_LOG".into(), "debug".into())],
    );
    cmd.stdin(Stdio::null());
    cmd
}

/// Instantiates the (empty) nat table of both families, as any earlier reader would.
fn load_nat_tables(ns: &TestNetns) {
    ns.exec_ok(&["iptables-legacy", "-w", "-t", "nat", "-S"]);
    ns.exec_ok(&["ip6tables-legacy", "-w", "-t", "nat", "-S"]);
}

/// `verify` of `args` passes (else `what`, with its output); its output.
fn assert_verifies(ns: &TestNetns, args: &[String], what: &str) -> Output {
    let v = ns.mesh("verify", args, &[]);
    assert!(
        v.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&v.stdout),
        stderr_of(&v)
    );
    v
}

/// The tables (without counters) one `apply` of `args` writes in a fresh namespace.
fn applied_once(args: &[String]) -> String {
    let ns = TestNetns::new("c1");
    ns.mesh_ok("apply", args, &[]);
    saved_without_counters(&ns)
}

/// Starts two `apply`s at the same moment; both must succeed, `verify` must agree and the
/// result must equal `single` (one apply in a fresh namespace). Returns the retries logged.
fn two_applies_at_once(ns: &TestNetns, args: &[String], single: &str, round: usize) -> usize {
    let barrier = Barrier::new(2);
    let outs: Vec<Output> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let mut cmd = apply_cmd(ns, args);
                    barrier.wait();
                    cmd.output().expect("apply starts")
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut retries = 0;
    for out in &outs {
        assert!(
            out.status.success(),
            "round {round}: a concurrent apply failed ({}): {}",
            out.status,
            stderr_of(out)
        );
        retries += retries_logged(&stderr_of(out));
    }
    assert_verifies(
        ns,
        args,
        &format!("round {round}: verify after two concurrent applies"),
    );
    let now = saved_without_counters(ns);
    assert!(
        now == single,
        "round {round}: two concurrent applies differ from one\n--- one\n{single}\n--- two\n{now}"
    );
    retries
}

#[test]
fn concurrent_applies_and_a_racing_iptables_append_end_consistent() {
    require_root();
    let args = legacy_args(&["--ipv6"]);
    let single = applied_once(&args);
    assert!(single.contains("ISTIO_OUTPUT"));

    // (a) Two of our processes at once on one namespace, 20 times (each round a new
    // namespace, its nat tables loaded beforehand: the first-read race on a namespace where
    // they are not loaded yet is the BUG test below).
    let mut retries = 0;
    for round in 0..20 {
        let ns = TestNetns::new("cc");
        load_nat_tables(&ns);
        retries += two_applies_at_once(&ns, &args, &single, round);
    }
    println!("(a) table writes retried by our concurrent applies: {retries}");

    // (b) Our apply in a loop (alternating two configurations, so that every apply really
    // rewrites nat) while `iptables-legacy -A` appends foreign rules to the same table.
    let configs = [
        legacy_args(&["--ipv6"]),
        legacy_args(&["--ipv6", "-x", "192.0.2.99/32"]),
    ];
    let ns = TestNetns::new("cr");
    load_nat_tables(&ns);
    let done = AtomicBool::new(false);
    let mut our_retries = 0;
    let (appended, their_eagain) = std::thread::scope(|s| {
        let appender = s.spawn(|| {
            let mut appended: Vec<u32> = Vec::new();
            let mut eagain = 0;
            // At least a few before and after; then as long as our loop runs (N ≤ 250).
            let mut n = 1;
            while n <= 250 && (n <= 10 || !done.load(Ordering::SeqCst)) {
                let src = format!("10.250.{n}.1/32");
                let mut attempts = 0;
                loop {
                    attempts += 1;
                    let out = ns.exec(&[
                        "iptables-legacy",
                        "-w",
                        "-t",
                        "nat",
                        "-A",
                        "POSTROUTING",
                        "-s",
                        &src,
                        "-j",
                        "RETURN",
                    ]);
                    // iptables-legacy does not retry a replace the kernel refused with
                    // EAGAIN (it relies on /run/xtables.lock, which we do not take): it
                    // exits 4 ("Resource temporarily unavailable") without having written.
                    // Retrying is the remedy for its caller.
                    if out.status.code() == Some(4) && attempts < 100 {
                        eagain += 1;
                        continue;
                    }
                    // The kernel checks a replace only by entry count: when ours swapped the
                    // table between its read and its write with the same count, its replace
                    // lands and its counter update then fails (EINVAL, exit 1). Whether the
                    // rule is there decides: present → done; absent → retry.
                    if !out.status.success() && attempts < 100 {
                        let present = ns.exec(&[
                            "iptables-legacy",
                            "-w",
                            "-t",
                            "nat",
                            "-C",
                            "POSTROUTING",
                            "-s",
                            &src,
                            "-j",
                            "RETURN",
                        ]);
                        if present.status.success() {
                            break;
                        }
                        eagain += 1;
                        continue;
                    }
                    assert!(
                        out.status.success(),
                        "iptables-legacy -A {src}: {}",
                        stderr_of(&out)
                    );
                    break;
                }
                appended.push(n);
                n += 1;
            }
            (appended, eagain)
        });
        for i in 0..30 {
            let out = apply_cmd(&ns, &configs[i % 2]).output().unwrap();
            if !out.status.success() {
                done.store(true, Ordering::SeqCst);
                panic!(
                    "apply {i} racing iptables-legacy -A failed ({}): {}",
                    out.status,
                    stderr_of(&out)
                );
            }
            our_retries += retries_logged(&stderr_of(&out));
        }
        done.store(true, Ordering::SeqCst);
        appender.join().unwrap()
    });
    println!(
        "(b) {} foreign appends; table writes retried by our applies: {our_retries}; \
         iptables-legacy -A refused with EAGAIN and retried: {their_eagain}",
        appended.len()
    );
    let nat = ns.exec_ok(&["iptables-legacy-save", "-t", "nat"]);
    let postrouting: Vec<&str> = nat
        .lines()
        .filter(|l| l.starts_with("-A POSTROUTING"))
        .collect();
    for n in &appended {
        let rule = format!("-A POSTROUTING -s 10.250.{n}.1/32 -j RETURN");
        let count = postrouting.iter().filter(|l| **l == rule).count();
        assert_eq!(count, 1, "{rule} present {count} times:\n{nat}");
    }
    assert_eq!(
        postrouting.len(),
        appended.len(),
        "unexpected POSTROUTING rules:\n{nat}"
    );
    let last = &configs[29 % 2];
    assert_verifies(&ns, last, "verify after the race");
    assert_no_forwarding();
}

/// Regression test for a bug this suite found (fixed).
#[test]
fn concurrent_first_applies_on_a_fresh_namespace_both_succeed() {
    require_root();
    let args = legacy_args(&["--ipv6"]);
    let single = applied_once(&args);
    let mut retries = 0;
    for round in 0..50 {
        let ns = TestNetns::new("cf");
        retries += two_applies_at_once(&ns, &args, &single, round);
    }
    println!("table writes retried by our concurrent applies: {retries}");
    assert_no_forwarding();
}

// ------------------------------------------------------------------------------------------
// 4. --backend auto
// ------------------------------------------------------------------------------------------

fn decision(out: &Output, message: &str) -> (String, String) {
    let err = stderr_of(out);
    (
        log_field(&err, message, "backend")
            .unwrap_or_else(|| panic!("no backend= on the {message:?} line:\n{err}")),
        log_field(&err, message, "because")
            .unwrap_or_else(|| panic!("no because= on the {message:?} line:\n{err}")),
    )
}

fn no_nft_tables_of_ours(ns: &TestNetns) {
    let ruleset = ns.ruleset();
    assert!(
        !ruleset.contains("istio-proxy-"),
        "an nftables table of ours exists:\n{ruleset}"
    );
}

fn no_legacy_chains_of_ours(ns: &TestNetns) {
    let s = saved(ns);
    assert!(
        !s.contains("ISTIO_"),
        "an iptables-legacy chain of ours exists:\n{s}"
    );
}

/// `apply` (`--backend auto`) succeeds, choosing `backend` `because`.
fn assert_auto_chooses(ns: &TestNetns, backend: &str, because: &str) {
    let out = ns.mesh_ok("apply", &[], &[]);
    assert_eq!(
        decision(&out, " applied "),
        (backend.to_string(), because.to_string())
    );
}

/// `verify --backend auto` passes after `what`; the backend it chose.
fn verified_backend(ns: &TestNetns, what: &str) -> String {
    let v = assert_verifies(ns, &[], &format!("verify (auto) after {what}"));
    decision(&v, "the kernel matches the expected rules").0
}

#[test]
fn auto_chooses_by_facts() {
    require_root();
    // (i) Nothing there: nf_tables answers.
    {
        let ns = TestNetns::new("a1");
        assert_auto_chooses(&ns, "nftables", "nf_tables answers");
        assert!(ns.ruleset().contains("table inet istio-proxy-nat"));
        no_legacy_chains_of_ours(&ns);
    }

    // (ii) Istio's legacy chains exist: stay on iptables-legacy, never program both.
    {
        let ns = TestNetns::new("a2");
        ns.mesh_ok("apply", &legacy_args(&[]), &[]);
        assert_auto_chooses(
            &ns,
            "iptables-legacy",
            "Istio iptables-legacy chains already exist",
        );
        no_nft_tables_of_ours(&ns);
        assert!(saved(&ns).contains(":ISTIO_OUTPUT"));
        assert_eq!(verified_backend(&ns, "a legacy apply"), "iptables-legacy");
    }

    // (iii) Our nftables tables exist: stay on nftables.
    {
        let ns = TestNetns::new("a3");
        ns.mesh_ok("apply", &strings(&["--backend", "nftables"]), &[]);
        assert_auto_chooses(&ns, "nftables", "Istio nftables tables already exist");
        no_legacy_chains_of_ours(&ns);
        assert_eq!(verified_backend(&ns, "an nftables apply"), "nftables");
    }
    assert_no_forwarding();
}

/// Regression test for a bug this suite found (fixed).
#[test]
fn reapplying_an_unchanged_config_leaves_rules_appended_after_ours_in_place() {
    require_root();
    let args = legacy_args(&["--ipv6"]);
    let ns = TestNetns::new("fa");
    ns.mesh_ok("apply", &args, &[]);
    for (bin, src) in [
        ("iptables-legacy", "192.0.2.9/32"),
        ("ip6tables-legacy", "2001:db8::9/128"),
    ] {
        for chain in ["PREROUTING", "OUTPUT"] {
            ns.exec_ok(&[
                bin,
                "-w",
                "-t",
                "nat",
                "-A",
                chain,
                "-c",
                "3",
                "180",
                "-s",
                src,
                "-m",
                "comment",
                "--comment",
                "after-ours",
                "-j",
                "RETURN",
            ]);
        }
    }
    let before = saves_with_counters(&ns);
    ns.mesh_ok("apply", &args, &[]);
    ns.mesh_ok("verify", &args, &[]);
    assert_saves_unchanged(
        &ns,
        &before,
        "re-applying the same configuration changed the table",
    );
    assert_no_forwarding();
}
