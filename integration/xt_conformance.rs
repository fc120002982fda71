//! Istio conformance for the iptables-legacy backend, by kernel state: for all 27 capture
//! cases and all 9 CNI-plugin cases, `iptables-legacy-save` and `ip6tables-legacy-save`
//! after our `apply --backend iptables-legacy` equal (comment lines dropped) the listings
//! after `iptables-legacy-restore --noflush` / `ip6tables-legacy-restore --noflush` of
//! Istio's golden payloads in another fresh namespace.

mod support;

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

fn check(case: &Case, groups: &TempFile) -> Option<String> {
    let golden = std::fs::read_to_string(case.iptables_golden.as_ref().unwrap()).unwrap();
    let (v4, v6) = payloads(&golden);
    let theirs_ns = TestNetns::new("xi");
    restore(&theirs_ns, "iptables-legacy-restore", &v4, groups);
    restore(&theirs_ns, "ip6tables-legacy-restore", &v6, groups);
    let theirs = saved(&theirs_ns);

    let ours_ns = TestNetns::new("xo");
    let mut cmd = ours_ns.mesh_command(
        "apply",
        &[legacy_args(&[]), case.args.clone()].concat(),
        &case.env,
    );
    with_group_file(&mut cmd, &groups.0);
    let out = run(&mut cmd);
    if !out.status.success() {
        return Some(format!(
            "== {} ==\napply failed: {}",
            case.name,
            stderr_of(&out)
        ));
    }
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

/// Every table `iptables-legacy-restore` wrote for Istio's goldens decodes and re-encodes to
/// the very same bytes (and hook offsets), and our own lowering of the case produces the same
/// entries as iptables did.
#[test]
fn tables_written_by_iptables_restore_reencode_byte_identically() {
    use mesh_redirect::kernel::XtTables;
    use mesh_redirect::netns::Netns;
    use mesh_redirect::xt::abi::{IPV4, IPV6};
    use mesh_redirect::xt::socket::XtSocket;
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
fn raw_entries(s: &mesh_redirect::xt::socket::XtSocket, table: &str, size: u32) -> Vec<u8> {
    mesh_redirect::kernel::XtTables::entries(s, table, size).unwrap()
}

/// Counters and `comefrom` are the kernel's bookkeeping (it resets them on replace).
fn strip_counters(blob: &[u8], l: mesh_redirect::xt::abi::Layout) -> Vec<u8> {
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
