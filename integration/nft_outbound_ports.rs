//! Outbound port exclusions (`-o`, `--istio-local-outbound-ports-exclude`) and inclusions
//! (`-q`, `--istio-outbound-ports`) against references written independently of the code
//! under test. None of Istio's nftables goldens sets `OutboundPortsExclude`, yet the CNI
//! default has 15020, so Istio's goldens alone cannot catch a wrong exclusion.
//!
//! * `integration/fixtures/nft-outbound-ports/<case>.nft`: for each case below, the `nft -f`
//!   transaction Istio's nftables generator emits, written by hand from
//!   `istio-semantics.md` §4.3 steps 9 and 17 and §7.3 (`tcp dport p counter return`,
//!   `udp dport p counter return` per excluded port, in order, right after the `output`
//!   jump; `tcp dport p counter jump istio-redirect` per included port after the excluded
//!   CIDRs and before the include-CIDR rules); loaded with the real `nft -f` into one fresh
//!   namespace, compared by `nft list ruleset` with `mesh-redirect apply` into another;
//! * one chain as nft itself lists it, typed here by hand;
//! * real connections, both backends: an excluded port goes straight through, its
//!   neighbour lands on 15001; an included port lands on 15001 and the others go straight.

mod support;
#[path = "support/traffic.rs"]
mod traffic;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use support::*;
use traffic::*;

/// Many excluded ports: not sorted into runs, the ends of the range, no two adjacent (so a
/// port off by one is never another listed port).
const MANY_EXCLUDED: &str = "1,22,25,110,143,443,993,995,1433,1521,2049,3306,3389,5432,5672,\
                             6379,8443,9042,9092,9200,11211,27017,50000,65535";

/// Many included ports, in no order.
const MANY_INCLUDED: &str = "80,8080,3000,9090,8000,5000,4000,7000,6000,2000,1000,65535,1,443,\
                             8443,9443,10080,20080,30080,40080";

/// Case name (its reference file) and the flags on top of the defaults (Istio's CNI
/// defaults: `-b '*' -d 15020,15021,15090 -i '*' -o 15020`, uid = gid = 1337).
const CASES: &[(&str, &[&str])] = &[
    ("exclude-none", &["-o", ""]),
    ("exclude-one", &["-o", "5555"]),
    ("exclude-several", &["-o", "5555,6666,7777"]),
    ("exclude-many", &["-o", MANY_EXCLUDED]),
    // Istio splits the list and emits a rule per element, repeats included.
    ("exclude-repeated", &["-o", "5555,6666,5555"]),
    ("include-one", &["-q", "8080"]),
    ("include-several", &["-i", "", "-q", "32000,31000,8080"]),
    ("include-many", &["-i", "", "-q", MANY_INCLUDED]),
    (
        "exclude-include-ipv6",
        &[
            "--ipv6",
            "-o",
            "5555,6666",
            "-q",
            "6666,8080",
            "-x",
            "192.0.2.3/32,2001:db8::3/128",
        ],
    ),
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/fixtures/nft-outbound-ports")
}

/// `nft list ruleset` after the real `nft -f` of a hand-written reference.
fn reference_listing(file: &Path) -> String {
    let listing = nft_ruleset_of(file);
    assert!(
        listing.contains("chain istio-output"),
        "{}: the reference programmed nothing",
        file.display()
    );
    listing
}

/// `nft list ruleset` after our `apply` (nftables backend) with `flags`.
fn our_listing(flags: &[&str]) -> String {
    let ns = TestNetns::new("oo");
    let mut args = strings(&["--backend", "nftables"]);
    args.extend(strings(flags));
    ns.mesh_ok("apply", &args, &[]);
    ns.ruleset()
}

fn difference(name: &str, flags: &[&str], reference: &Path) -> Option<String> {
    let theirs = reference_listing(reference);
    let ours = our_listing(flags);
    (theirs != ours).then(|| {
        format!(
            "== {name} {flags:?} ==\n--- reference (nft -f)\n{theirs}\n--- ours (apply)\n{ours}"
        )
    })
}

#[test]
fn apply_programs_the_hand_written_references() {
    require_root();
    let mut failures = Vec::new();
    for (name, flags) in CASES {
        let reference = fixtures().join(format!("{name}.nft"));
        failures.extend(difference(name, flags, &reference));
    }
    // Without flags: the CNI default, whose single exclusion is 15020.
    let basic = cni_nft_reference("basic");
    failures.extend(difference("default", &[], &basic));
    assert_no_forwarding();
    assert_cases_agree(&failures, CASES.len() + 1);
}

#[test]
fn every_reference_is_a_case_and_every_case_has_one() {
    let mut files: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|f| f.strip_suffix(".nft").map(str::to_string))
        .collect();
    files.sort();
    let mut names: Vec<String> = CASES.iter().map(|(n, _)| n.to_string()).collect();
    names.sort();
    assert_eq!(files, names);
}

/// The affected chain exactly as `nft list chain` prints it (nft 1.0: addresses without a
/// full-length prefix, interface names quoted, `skuid` as `meta skuid`, zero counters).
#[test]
fn several_exclusions_as_nft_lists_the_chain() {
    require_root();
    let ns = TestNetns::new("ol");
    ns.mesh_ok("apply", &strings(&["-o", "5555,6666,7777"]), &[]);
    let listing = ns.exec_ok(&[
        "nft",
        "list",
        "chain",
        "inet",
        "istio-proxy-nat",
        "istio-output",
    ]);
    let expected = "\
table inet istio-proxy-nat {
\tchain istio-output {
\t\ttcp dport 5555 counter packets 0 bytes 0 return
\t\tudp dport 5555 counter packets 0 bytes 0 return
\t\ttcp dport 6666 counter packets 0 bytes 0 return
\t\tudp dport 6666 counter packets 0 bytes 0 return
\t\ttcp dport 7777 counter packets 0 bytes 0 return
\t\tudp dport 7777 counter packets 0 bytes 0 return
\t\toifname \"lo\" ip saddr 127.0.0.6 counter packets 0 bytes 0 return
\t\toifname \"lo\" ip daddr != 127.0.0.1 tcp dport != 15008 meta skuid 1337 counter packets 0 bytes 0 jump istio-in-redirect
\t\toifname \"lo\" meta skuid != 1337 counter packets 0 bytes 0 return
\t\tmeta skuid 1337 counter packets 0 bytes 0 return
\t\toifname \"lo\" ip daddr != 127.0.0.1 tcp dport != 15008 meta skgid 1337 counter packets 0 bytes 0 jump istio-in-redirect
\t\toifname \"lo\" meta skgid != 1337 counter packets 0 bytes 0 return
\t\tmeta skgid 1337 counter packets 0 bytes 0 return
\t\tip daddr 127.0.0.1 counter packets 0 bytes 0 return
\t\tcounter packets 0 bytes 0 jump istio-redirect
\t}
}
";
    assert_eq!(listing, expected);
}

const APP: u32 = 1000;
const PROXY: u32 = 1337;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Listeners: the outbound proxy in the pod namespace, `ports` on the remote side.
fn listeners(t: &Topology, ports: &[u16]) -> Vec<Server> {
    let any = wildcard_of(ip("192.0.2.1"));
    let mut servers = vec![Server::start(
        &t.pod.name,
        sa(any, 15001),
        "proxy-15001",
        true,
    )];
    for &p in ports {
        servers.push(Server::start(&t.remote.name, sa(any, p), "remote", false));
    }
    servers
}

/// Many exclusions: the first, second, a middle and the last excluded port go straight to
/// the remote server; the ports next to them, and port 80, land on 15001.
fn exclusions_with_traffic(backend: &str) {
    require_root();
    let t = Topology::new();
    let args = strings(&["--backend", backend, "-o", MANY_EXCLUDED]);
    t.pod.mesh_ok("apply", &args, &[]);
    let excluded = [1, 22, 5432, 65535];
    let captured = [2, 23, 5433, 65534, 80];
    let _servers = listeners(&t, &[&excluded[..], &captured[..]].concat());
    let remote = |p: u16| sa(ip("192.0.2.2"), p);
    let pod = &t.pod.name;
    wait_answered_as(pod, PROXY, PROXY, remote(80));
    for p in excluded {
        assert_lands_as(pod, APP, APP, remote(p), "remote", "excluded port");
    }
    for p in captured {
        assert_lands_as(pod, APP, APP, remote(p), "proxy-15001", "port not excluded");
    }
    assert_no_forwarding();
}

/// Inclusions without any captured CIDR (`-i ''`): an included port lands on 15001, any
/// other port goes straight; an excluded port beats an included one (step 9 before 17), so
/// does an excluded CIDR (step 16 before 17), and the proxy's own traffic is never captured.
fn inclusions_with_traffic(backend: &str) {
    require_root();
    let t = Topology::new();
    let args = strings(&[
        "--backend",
        backend,
        "-i",
        "",
        "-q",
        "32000,31000,8080,9090",
        "-o",
        "9090",
        "-x",
        "192.0.2.3/32",
    ]);
    t.pod.mesh_ok("apply", &args, &[]);
    let _servers = listeners(&t, &[80, 8080, 9090, 31000, 31001, 32000]);
    let to = |host: &str, p: u16| sa(ip(host), p);
    let pod = &t.pod.name;
    wait_answered_as(pod, PROXY, PROXY, to("192.0.2.2", 80));
    let cases: &[(u32, SocketAddr, &str, &str)] = &[
        (
            APP,
            to("192.0.2.2", 32000),
            "proxy-15001",
            "first included port",
        ),
        (
            APP,
            to("192.0.2.2", 31000),
            "proxy-15001",
            "second included port",
        ),
        (
            APP,
            to("192.0.2.2", 8080),
            "proxy-15001",
            "third included port",
        ),
        (APP, to("192.0.2.2", 80), "remote", "a port not included"),
        (
            APP,
            to("192.0.2.2", 31001),
            "remote",
            "next to an included port",
        ),
        (
            APP,
            to("192.0.2.2", 9090),
            "remote",
            "excluded beats included",
        ),
        (
            APP,
            to("192.0.2.3", 8080),
            "remote",
            "excluded CIDR beats included port",
        ),
        (
            PROXY,
            to("192.0.2.2", 8080),
            "remote",
            "the proxy's own traffic",
        ),
    ];
    for (uid, dst, listener, what) in cases {
        assert_lands_as(pod, *uid, *uid, *dst, listener, what);
    }
    assert_no_forwarding();
}

#[test]
fn excluded_ports_go_straight_through() {
    exclusions_with_traffic("nftables");
}

#[test]
fn excluded_ports_go_straight_through_iptables_legacy() {
    exclusions_with_traffic("iptables-legacy");
}

#[test]
fn included_ports_land_on_the_proxy() {
    inclusions_with_traffic("nftables");
}

#[test]
fn included_ports_land_on_the_proxy_iptables_legacy() {
    inclusions_with_traffic("iptables-legacy");
}
