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

mod support;

use nix::sched::{setns, CloneFlags};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use support::*;

const APP_UID: u32 = 1000;
const PROXY_UID: u32 = 1337;

fn enter(ns: &str) {
    let f = File::open(format!("/var/run/netns/{ns}")).expect("namespace exists");
    setns(&f, CloneFlags::CLONE_NEWNET).expect("setns");
}

/// Original destination of a redirected connection (`SO_ORIGINAL_DST`, IPv4 and IPv6).
fn original_dst(s: &TcpStream) -> Option<SocketAddr> {
    const SO_ORIGINAL_DST: libc::c_int = 80;
    let fd = s.as_raw_fd();
    let v6 = s.local_addr().ok()?.is_ipv6();
    // SAFETY: getsockopt writes at most `len` bytes into a zeroed sockaddr_storage.
    unsafe {
        let mut ss: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let level = if v6 { libc::SOL_IPV6 } else { libc::SOL_IP };
        if libc::getsockopt(
            fd,
            level,
            SO_ORIGINAL_DST,
            &mut ss as *mut _ as *mut libc::c_void,
            &mut len,
        ) != 0
        {
            return None;
        }
        if v6 {
            let a = &*(&ss as *const _ as *const libc::sockaddr_in6);
            Some(SocketAddr::new(
                IpAddr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
            ))
        } else {
            let a = &*(&ss as *const _ as *const libc::sockaddr_in);
            Some(SocketAddr::new(
                IpAddr::from(u32::from_be(a.sin_addr.s_addr).to_be_bytes()),
                u16::from_be(a.sin_port),
            ))
        }
    }
}

/// A listener in a namespace that answers every connection with `"<name> <original dst>"`
/// and stops when dropped.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(ns: &str, addr: SocketAddr, name: &'static str, report_original: bool) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let ns = ns.to_string();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            enter(&ns);
            let listener =
                TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr} in {ns}: {e}"));
            listener.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let dst = if report_original {
                            original_dst(&s)
                        } else {
                            s.local_addr().ok()
                        };
                        let dst = dst
                            .map(|d| d.to_string())
                            .unwrap_or_else(|| "unknown".into());
                        let _ = s.write_all(format!("{name} {dst}").as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("listener ready");
        Server {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from `ns` as `uid`/`gid` and returns what the server said.
fn connect_as(ns: &str, uid: u32, gid: u32, dst: SocketAddr) -> String {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter(&ns);
        // SAFETY: raw setfsgid/setfsuid change only this thread's filesystem credentials,
        // which the kernel stamps on sockets this thread creates.
        unsafe {
            libc::syscall(libc::SYS_setfsgid, gid);
            libc::syscall(libc::SYS_setfsuid, uid);
        }
        match TcpStream::connect_timeout(&dst, Duration::from_secs(3)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                out
            }
            Err(e) => format!("error {e}"),
        }
    })
    .join()
    .unwrap()
}

struct Topology {
    pod: TestNetns,
    remote: TestNetns,
    v6_prefix: String,
}

impl Topology {
    fn new() -> Topology {
        let pod = TestNetns::new("p");
        let remote = TestNetns::new("r");
        let (vp, vr) = (unique("a"), unique("b"));
        pod.exec_ok(&[
            "ip", "link", "add", &vp, "type", "veth", "peer", "name", &vr,
        ]);
        pod.exec_ok(&["ip", "link", "set", &vr, "netns", &remote.name]);
        let v6_prefix = format!("2001:db8:{:x}", std::process::id() % 0xffff);
        for (ns, dev, addrs) in [
            (
                &pod,
                &vp,
                vec!["192.0.2.1/24".to_string(), format!("{v6_prefix}::1/64")],
            ),
            (
                &remote,
                &vr,
                vec![
                    "192.0.2.2/24".to_string(),
                    "192.0.2.3/24".to_string(),
                    format!("{v6_prefix}::2/64"),
                    format!("{v6_prefix}::3/64"),
                ],
            ),
        ] {
            for a in &addrs {
                let mut argv = vec!["ip", "addr", "add", a.as_str(), "dev", dev.as_str()];
                if a.contains(':') {
                    argv.push("nodad");
                }
                ns.exec_ok(&argv);
            }
            ns.exec_ok(&["ip", "link", "set", dev, "up"]);
        }
        Topology {
            pod,
            remote,
            v6_prefix,
        }
    }

    fn v6(&self, host: u8) -> IpAddr {
        format!("{}::{host}", self.v6_prefix).parse().unwrap()
    }
}

fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// Waits until a connection from the remote side gets an answer (links come up async).
fn wait_reachable(ns: &str, dst: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if !connect_as(ns, 0, 0, dst).starts_with("error") {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A connection from `from` as `uid` to `dst` is answered by `listener`, which sees `dst`.
fn assert_lands(from: &str, uid: u32, dst: SocketAddr, listener: &str, what: &str) {
    assert_eq!(
        connect_as(from, uid, uid, dst),
        format!("{listener} {dst}"),
        "{what}"
    );
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
