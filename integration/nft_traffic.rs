//! Real TCP connections through the rules `apply` programs.
//!
//! Topology, all made by the test and deleted by it:
//!
//! ```text
//!   pod namespace                         remote namespace
//!   vp: 192.0.2.1/24, 2001:db8:N::1/64 ── vr: 192.0.2.2, 192.0.2.3, 2001:db8:N::2, ::3
//!   listeners: 15001 (outbound proxy),     server on :80 answering "remote"
//!              15006 (inbound proxy),
//!              15021 (excluded app port)
//! ```
//!
//! Nothing routes off the machine: the namespaces have only their connected routes, and
//! forwarding in the root namespace is asserted to stay 0. Connections are opened from
//! threads that entered the pod namespace and set their own fsuid/fsgid (a per-thread
//! credential, so the socket is owned by that uid and gid as `meta skuid`/`skgid` see it).
//! The helpers are in `support/traffic.rs`.

mod support;
#[path = "support/traffic.rs"]
mod traffic;

use std::net::{IpAddr, SocketAddr};
use support::*;
use traffic::*;

const APP_UID: u32 = 1000;
const PROXY_UID: u32 = 1337;

/// A connection from `from` as `uid` (and gid = uid) to `dst` is answered by `listener`,
/// which sees `dst`.
fn assert_lands(from: &str, uid: u32, dst: SocketAddr, listener: &str, what: &str) {
    assert_lands_as(from, uid, uid, dst, listener, what);
}

fn check_family(t: &Topology, pod_ip: IpAddr, remote_ip: IpAddr, excluded_ip: IpAddr) {
    let wildcard: IpAddr = if pod_ip.is_ipv4() {
        "0.0.0.0".parse().unwrap()
    } else {
        "::".parse().unwrap()
    };
    let _remote_server = Server::start(&t.remote.name, sa(wildcard, 80), "remote", false);
    let _outbound = Server::start(&t.pod.name, sa(wildcard, 15001), "proxy-15001", true);
    let _inbound = Server::start(&t.pod.name, sa(wildcard, 15006), "proxy-15006", true);
    let _app = Server::start(&t.pod.name, sa(wildcard, 15021), "app-15021", false);
    wait_reachable(&t.remote.name, sa(pod_ip, 15021));

    // An application's outbound connection lands on the outbound listener, which still
    // knows where it was going.
    assert_lands(
        &t.pod.name,
        APP_UID,
        sa(remote_ip, 80),
        "proxy-15001",
        "app uid outbound",
    );

    // The proxy's own traffic (uid 1337) is not captured: it reaches the real server.
    assert_lands(
        &t.pod.name,
        PROXY_UID,
        sa(remote_ip, 80),
        "remote",
        "proxy uid outbound",
    );

    // An excluded destination goes straight through, whoever sends.
    assert_lands(
        &t.pod.name,
        APP_UID,
        sa(excluded_ip, 80),
        "remote",
        "excluded CIDR",
    );

    // Inbound connections land on the inbound listener with their original port...
    assert_lands(
        &t.remote.name,
        APP_UID,
        sa(pod_ip, 8080),
        "proxy-15006",
        "inbound",
    );

    // ...except on excluded inbound ports, which reach the application itself.
    assert_lands(
        &t.remote.name,
        APP_UID,
        sa(pod_ip, 15021),
        "app-15021",
        "excluded inbound port",
    );
}

fn ipv4(backend: &str) {
    require_root();
    let t = Topology::new();
    let args = strings(&["--backend", backend, "-x", "192.0.2.3/32"]);
    t.pod.mesh_ok("apply", &args, &[]);
    check_family(
        &t,
        "192.0.2.1".parse().unwrap(),
        "192.0.2.2".parse().unwrap(),
        "192.0.2.3".parse().unwrap(),
    );
    assert_no_forwarding();
}

fn ipv6(backend: &str) {
    require_root();
    let t = Topology::new();
    let args = vec![
        "--backend".to_string(),
        backend.to_string(),
        "--ipv6".to_string(),
        "-x".to_string(),
        format!("{}/128", t.v6(3)),
    ];
    t.pod.mesh_ok("apply", &args, &[]);
    check_family(&t, t.v6(1), t.v6(2), t.v6(3));
    // Istio adds ::6 on lo for Envoy's IPv6 inbound passthrough.
    assert!(t
        .pod
        .exec_ok(&["ip", "-6", "addr", "show", "dev", "lo"])
        .contains("::6/128"));
    assert_no_forwarding();
}

#[test]
fn ipv4_outbound_inbound_and_exclusions() {
    ipv4("nftables");
}

#[test]
fn ipv6_outbound_inbound_and_exclusions() {
    ipv6("nftables");
}

#[test]
fn ipv4_outbound_inbound_and_exclusions_iptables_legacy() {
    ipv4("iptables-legacy");
}

#[test]
fn ipv6_outbound_inbound_and_exclusions_iptables_legacy() {
    ipv6("iptables-legacy");
}

/// The proxy's gid differs from its uid (`-u 1337 -g 1338`): an application running with
/// the proxy's gid only (uid 1000, gid 1338) is exempt like the proxy — its connection
/// reaches the real server — while uid 1000 gid 1000 is redirected to 15001, and the
/// proxy's uid with an application's gid is exempt by the uid rule.
fn proxy_gid_differs_from_uid(backend: &str) {
    require_root();
    let t = Topology::new();
    let args = strings(&["--backend", backend, "-u", "1337", "-g", "1338"]);
    t.pod.mesh_ok("apply", &args, &[]);
    let remote = sa("192.0.2.2".parse().unwrap(), 80);
    let wildcard = wildcard_of(remote.ip());
    let _remote_server = Server::start(&t.remote.name, sa(wildcard, 80), "remote", false);
    let _outbound = Server::start(&t.pod.name, sa(wildcard, 15001), "proxy-15001", true);
    wait_answered_as(&t.pod.name, 1337, 1338, remote);
    let pod = &t.pod.name;
    assert_lands_as(
        pod,
        1000,
        1000,
        remote,
        "proxy-15001",
        "an application is redirected",
    );
    assert_lands_as(
        pod,
        1000,
        1338,
        remote,
        "remote",
        "the proxy's gid is exempt",
    );
    assert_lands_as(
        pod,
        1337,
        1000,
        remote,
        "remote",
        "the proxy's uid is exempt",
    );
    // 1337 is only the uid here: as a gid it is an application's.
    assert_lands_as(
        pod,
        1000,
        1337,
        remote,
        "proxy-15001",
        "gid 1337 is not the proxy's",
    );
    assert_no_forwarding();
}

#[test]
fn proxy_gid_differing_from_its_uid_is_exempt() {
    proxy_gid_differs_from_uid("nftables");
}

#[test]
fn proxy_gid_differing_from_its_uid_is_exempt_iptables_legacy() {
    proxy_gid_differs_from_uid("iptables-legacy");
}
