//! Istio conformance for the iptables-legacy backend, by kernel state, for all 27 capture
//! cases and all 9 CNI-plugin cases. In one fresh namespace Istio's golden payloads are
//! restored with `iptables-legacy-restore --noflush` / `ip6tables-legacy-restore --noflush`;
//! in another, ours are applied with `apply --backend iptables-legacy` and the case's flags.
//! Then:
//!
//! * `iptables-legacy-save` and `ip6tables-legacy-save` of both equal (comment lines
//!   dropped);
//! * the kernel's own copy of every table, read from both with `IPT_SO_GET_INFO` /
//!   `IPT_SO_GET_ENTRIES` (`IP6T_*`), is the same byte for byte (counters and `comefrom`
//!   zeroed), table by table and family by family, with the same hook offsets, entry count
//!   and size; and the same tables are instantiated in both.
//!
//! A third test checks the decoder/encoder against what iptables wrote.

mod support;

use mesh_redirect::kernel::XtTables;
use mesh_redirect::netns::Netns;
use mesh_redirect::xt::abi::{Layout, IPV4, IPV6};
use mesh_redirect::xt::socket::{Info, XtSocket};
use std::collections::{BTreeMap, BTreeSet};
use support::*;

/// Istio's golden → (IPv4 payload, IPv6 payload): the `*-save` lines dropped, split where
/// the table order starts over.
fn payloads(golden: &str) -> (String, String) {
    let mut v4 = String::new();
    let mut v6 = String::new();
    let mut last = String::new();
    let mut in_v6 = false;
    let mut block = String::new();
    for line in golden
        .lines()
        .filter(|l| !l.ends_with("-save") && !l.trim().is_empty())
    {
        if let Some(table) = line.strip_prefix("* ").or_else(|| line.strip_prefix('*')) {
            if table <= last.as_str() {
                in_v6 = true;
            }
            last = table.to_string();
        }
        block.push_str(line);
        block.push('\n');
        if line == "COMMIT" {
            if in_v6 {
                v6.push_str(&block)
            } else {
                v4.push_str(&block)
            }
            block.clear();
        }
    }
    (v4, v6)
}

fn restore(ns: &TestNetns, binary: &str, payload: &str, groups: &TempFile) {
    if payload.is_empty() {
        return;
    }
    let mut cmd = ns.command(&[binary, "--noflush"]);
    with_group_file(&mut cmd, &groups.0);
    run_with_stdin_ok(&mut cmd, payload);
}

/// Both families' save output without comment lines.
fn saved(ns: &TestNetns) -> String {
    ns.legacy_saved(false)
}

/// The two namespaces of one case: Istio's golden payloads restored in the first, ours
/// applied in the second; `Err` with a report when our apply failed.
fn both_namespaces(case: &Case, groups: &TempFile) -> Result<(TestNetns, TestNetns), String> {
    let golden = std::fs::read_to_string(case.iptables_golden.as_ref().unwrap()).unwrap();
    let (v4, v6) = payloads(&golden);
    let theirs_ns = TestNetns::new("xi");
    restore(&theirs_ns, "iptables-legacy-restore", &v4, groups);
    restore(&theirs_ns, "ip6tables-legacy-restore", &v6, groups);

    let ours_ns = TestNetns::new("xo");
    let mut cmd = ours_ns.mesh_command(
        "apply",
        &[legacy_args(&[]), case.args.clone()].concat(),
        &case.env,
    );
    with_group_file(&mut cmd, &groups.0);
    let out = run(&mut cmd);
    if !out.status.success() {
        return Err(format!(
            "== {} ==\napply failed: {}",
            case.name,
            stderr_of(&out)
        ));
    }
    Ok((theirs_ns, ours_ns))
}

fn check(case: &Case, groups: &TempFile) -> Option<String> {
    let (theirs_ns, ours_ns) = match both_namespaces(case, groups) {
        Ok(pair) => pair,
        Err(report) => return Some(report),
    };
    let theirs = saved(&theirs_ns);
    let ours = saved(&ours_ns);
    assert!(
        theirs.contains("-A "),
        "{}: Istio's payload produced no rule",
        case.name
    );
    (theirs != ours).then(|| {
        format!(
            "== {} ==\n--- istio (iptables-legacy-restore)\n{theirs}\n--- ours (apply)\n{ours}",
            case.name
        )
    })
}

#[test]
fn apply_produces_the_kernel_state_of_istios_iptables_goldens() {
    require_root();
    let groups = TempFile::new("grp", TEST_GROUP_FILE);
    let capture = iptables_capture_cases();
    let cni = cni_cases();
    assert_eq!((capture.len(), cni.len()), (27, 9));
    let failures: Vec<String> = capture
        .iter()
        .chain(&cni)
        .filter_map(|c| check(c, &groups))
        .collect();
    assert_no_forwarding();
    assert_cases_agree(&failures, 36);
}

/// The kernel's entries after our `apply` are those after `iptables-legacy-restore` of
/// Istio's payloads, byte for byte: for each case, each family, each instantiated table,
/// `IPT_SO_GET_INFO` (valid hooks, hook entries, underflows, entry count, size) and
/// `IPT_SO_GET_ENTRIES` (counters and `comefrom` zeroed) are equal. Every case is checked
/// and every difference reported.
#[test]
fn apply_writes_the_kernel_entries_of_iptables_restore_byte_for_byte() {
    require_root();
    let groups = TempFile::new("grp", TEST_GROUP_FILE);
    let capture = iptables_capture_cases();
    let cni = cni_cases();
    assert_eq!((capture.len(), cni.len()), (27, 9));
    let mut compared = 0;
    let mut failures = Vec::new();
    let labelled = capture.iter().map(|c| ("", c));
    for (label, case) in labelled.chain(cni.iter().map(|c| ("cni ", c))) {
        let (theirs, ours) = match both_namespaces(case, &groups) {
            Ok(pair) => pair,
            Err(report) => {
                failures.push(report);
                continue;
            }
        };
        let golden = std::fs::read_to_string(case.iptables_golden.as_ref().unwrap()).unwrap();
        let (v4, v6) = payloads(&golden);
        let mut problems = Vec::new();
        for (family, layout, payload) in [("IPv4", IPV4, &v4), ("IPv6", IPV6, &v6)] {
            // Which tables exist is read before any table is (a read instantiates it).
            let names = (instantiated(&theirs, layout), instantiated(&ours, layout));
            if names.0 != names.1 {
                problems.push(format!(
                    "{family}: instantiated tables: istio {:?}, ours {:?}",
                    names.0, names.1
                ));
            }
            for table in ["mangle", "nat", "raw", "filter", "security"] {
                if payload.contains(&format!("* {table}\n")) && !names.0.contains(table) {
                    problems.push(format!(
                        "{family} {table}: Istio's payload writes it, yet it is not instantiated"
                    ));
                }
            }
            let all: BTreeSet<String> = names.0.union(&names.1).cloned().collect();
            let t = kernel_tables(&theirs, layout, &all);
            let o = kernel_tables(&ours, layout, &all);
            for table in &all {
                compared += 1;
                match (&t[table], &o[table]) {
                    (Ok(t), Ok(o)) => problems.extend(
                        table_difference(layout, t, o)
                            .into_iter()
                            .map(|d| format!("{family} {table}: {d}")),
                    ),
                    (t, o) => problems.push(format!(
                        "{family} {table}: cannot read: istio {:?}, ours {:?}",
                        t.as_ref().err(),
                        o.as_ref().err()
                    )),
                }
            }
        }
        if !problems.is_empty() {
            failures.push(format!(
                "== {label}{} ==\n{}",
                case.name,
                problems.join("\n")
            ));
        }
    }
    assert_no_forwarding();
    assert_cases_agree(&failures, 36);
    // 36 cases, IPv4 nat at least everywhere, mangle/raw and IPv6 in many.
    assert!(compared >= 60, "compared only {compared} tables");
}

/// A table as the kernel holds it: `IPT_SO_GET_INFO`, and the entries with counters zeroed.
type KernelTable = (Info, Vec<u8>);

/// The tables of `layout`'s family instantiated in `ns` (`/proc/net/ip{,6}_tables_names`,
/// read from a thread inside the namespace).
fn instantiated(ns: &TestNetns, layout: Layout) -> BTreeSet<String> {
    let file = if layout.ipv6 {
        "/proc/thread-self/net/ip6_tables_names"
    } else {
        "/proc/thread-self/net/ip_tables_names"
    };
    Netns::open(&ns.name)
        .unwrap()
        .run(|| std::fs::read_to_string(file).unwrap_or_default())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Reads `tables` of `layout`'s family from `ns` through the library's xtables socket.
fn kernel_tables(
    ns: &TestNetns,
    layout: Layout,
    tables: &BTreeSet<String>,
) -> BTreeMap<String, Result<KernelTable, String>> {
    Netns::open(&ns.name)
        .unwrap()
        .run(|| {
            let s = XtSocket::open(layout).unwrap();
            tables
                .iter()
                .map(|table| {
                    let read = s.info(table).and_then(|info| {
                        let blob = XtTables::entries(&s, table, info.size)?;
                        Ok((info, strip_counters(&blob, layout)))
                    });
                    (table.clone(), read.map_err(|e| e.to_string()))
                })
                .collect()
        })
        .unwrap()
}

/// What differs between Istio's table and ours, one line each (none when equal).
fn table_difference(l: Layout, istio: &KernelTable, ours: &KernelTable) -> Vec<String> {
    let mut d = Vec::new();
    if istio.0 != ours.0 {
        d.push(format!("info: istio {:?}, ours {:?}", istio.0, ours.0));
    }
    let (a, b) = (&istio.1, &ours.1);
    if a != b {
        let at = a
            .iter()
            .zip(b.iter())
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len()));
        let differing = a.iter().zip(b.iter()).filter(|(x, y)| x != y).count();
        let byte = |v: &[u8]| v.get(at).map_or("end".to_string(), |x| format!("{x:#04x}"));
        d.push(format!(
            "entries differ ({} and {} bytes, {differing} differing bytes); first at byte {at} \
             ({}): istio {}, ours {}",
            a.len(),
            b.len(),
            locate(a, at, l),
            byte(a),
            byte(b)
        ));
    }
    d
}

/// Where byte `at` of an entries blob lies: which entry, and which field of it.
fn locate(blob: &[u8], at: usize, l: Layout) -> String {
    let mut start = 0;
    let mut index = 0;
    while start + l.entry_size <= blob.len() {
        let next = u16::from_ne_bytes([
            blob[start + l.next_offset_at],
            blob[start + l.next_offset_at + 1],
        ]) as usize;
        if next == 0 || at < start + next {
            break;
        }
        start += next;
        index += 1;
    }
    let off = at - start.min(at);
    let target_offset = blob
        .get(start + l.target_offset_at..start + l.target_offset_at + 2)
        .map_or(0, |b| u16::from_ne_bytes([b[0], b[1]]) as usize);
    let field = match off {
        o if o < l.ip_size => "the ip header (addresses, masks, interfaces, protocol, flags)",
        o if o < l.target_offset_at => "nfcache",
        o if o < l.next_offset_at => "target_offset",
        o if o < l.comefrom_at => "next_offset",
        o if o < l.counters_at => "comefrom",
        o if o < l.entry_size => "counters",
        o if o < target_offset => "a match",
        _ => "the target",
    };
    format!("entry {index} at offset {start}, +{off}: {field}")
}

/// Every table `iptables-legacy-restore` wrote for Istio's goldens decodes and re-encodes to
/// the very same bytes (and hook offsets). This checks the codec against iptables' encoder;
/// that `apply` writes those same bytes is
/// `apply_writes_the_kernel_entries_of_iptables_restore_byte_for_byte`.
#[test]
fn tables_written_by_iptables_restore_reencode_byte_identically() {
    require_root();
    let groups = TempFile::new("grp", TEST_GROUP_FILE);
    let mut checked = 0;
    for case in iptables_capture_cases().iter().chain(&cni_cases()) {
        let golden = std::fs::read_to_string(case.iptables_golden.as_ref().unwrap()).unwrap();
        let (v4, v6) = payloads(&golden);
        let ns = TestNetns::new("xb");
        restore(&ns, "iptables-legacy-restore", &v4, &groups);
        restore(&ns, "ip6tables-legacy-restore", &v6, &groups);
        let handle = Netns::open(&ns.name).unwrap();
        checked += handle
            .run(|| {
                let mut n = 0;
                for (layout, payload) in [(IPV4, &v4), (IPV6, &v6)] {
                    for table in ["mangle", "nat", "raw"] {
                        if !payload.contains(&format!("* {table}\n")) {
                            continue;
                        }
                        let s = XtSocket::open(layout).unwrap();
                        let info = s.info(table).unwrap();
                        let (_, decoded) = s.read(table).unwrap();
                        let enc = decoded.encode(layout).unwrap();
                        let blob = raw_entries(&s, table, info.size);
                        assert_eq!(enc.blob.len(), blob.len(), "{} {table}: size", case.name);
                        for h in 0..5 {
                            if info.valid_hooks & (1 << h) != 0 {
                                assert_eq!(
                                    (enc.hook_entry[h], enc.underflow[h]),
                                    (info.hook_entry[h], info.underflow[h]),
                                    "{} {table}: hook {h}",
                                    case.name
                                );
                            }
                        }
                        assert_eq!(
                            strip_counters(&enc.blob, layout),
                            strip_counters(&blob, layout),
                            "{} {table}: bytes",
                            case.name
                        );
                        n += 1;
                    }
                }
                n
            })
            .unwrap();
    }
    assert!(checked >= 40, "checked {checked} tables");
}

/// `IPT_SO_GET_ENTRIES` straight from the socket.
fn raw_entries(s: &XtSocket, table: &str, size: u32) -> Vec<u8> {
    XtTables::entries(s, table, size).unwrap()
}

/// Counters and `comefrom` are the kernel's bookkeeping (it resets them on replace).
fn strip_counters(blob: &[u8], l: Layout) -> Vec<u8> {
    let mut b = blob.to_vec();
    let mut at = 0;
    while at + l.entry_size <= b.len() {
        let next =
            u16::from_ne_bytes([b[at + l.next_offset_at], b[at + l.next_offset_at + 1]]) as usize;
        for x in &mut b[at + l.comefrom_at..at + l.comefrom_at + 4] {
            *x = 0;
        }
        for x in &mut b[at + l.counters_at..at + l.counters_at + 16] {
            *x = 0;
        }
        if next == 0 {
            break;
        }
        at += next;
    }
    b
}
