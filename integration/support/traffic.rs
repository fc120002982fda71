//! Real TCP connections between namespaces the test made (shared by the traffic tests).
//!
//! Topology, all made by the test and deleted by it:
//!
//! ```text
//!   pod namespace                         remote namespace
//!   vp: 192.0.2.1/24, 2001:db8:N::1/64 ── vr: 192.0.2.2, 192.0.2.3, 2001:db8:N::2, ::3
//! ```
//!
//! Nothing routes off the machine: the namespaces have only their connected routes, and
//! forwarding in the root namespace is never touched. Connections are opened from threads
//! that entered a namespace and set their own fsuid/fsgid (a per-thread credential, so the
//! socket is owned by that uid and gid as `meta skuid`/`skgid` and xt_owner see it).
#![allow(dead_code)]

use crate::support::{unique, TestNetns};
use nix::sched::{setns, CloneFlags};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Moves this thread into the network namespace `ns`: a name under `/var/run/netns`, or a
/// path (one that starts with `/`, e.g. a sandbox's `/proc/<pid>/ns/net`).
pub fn enter(ns: &str) {
    let path = if ns.starts_with('/') {
        ns.to_string()
    } else {
        format!("/var/run/netns/{ns}")
    };
    let f = File::open(&path).unwrap_or_else(|e| panic!("namespace {path}: {e}"));
    setns(&f, CloneFlags::CLONE_NEWNET).expect("setns");
}

/// Original destination of a redirected connection (`SO_ORIGINAL_DST`, IPv4 and IPv6).
pub fn original_dst(s: &TcpStream) -> Option<SocketAddr> {
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
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(ns: &str, addr: SocketAddr, name: &'static str, report_original: bool) -> Server {
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
pub fn connect_as(ns: &str, uid: u32, gid: u32, dst: SocketAddr) -> String {
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

pub struct Topology {
    pub pod: TestNetns,
    pub remote: TestNetns,
    pub v6_prefix: String,
}

impl Topology {
    pub fn new() -> Topology {
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

    pub fn v6(&self, host: u8) -> IpAddr {
        format!("{}::{host}", self.v6_prefix).parse().unwrap()
    }
}

pub fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// Waits until a connection from the remote side gets an answer (links come up async).
pub fn wait_reachable(ns: &str, dst: SocketAddr) {
    wait_answered_as(ns, 0, 0, dst);
}

/// A connection from `from` as `uid`/`gid` to `dst` is answered by `listener`, which sees
/// `dst` (its original destination when it is a proxy listener).
pub fn assert_lands_as(
    from: &str,
    uid: u32,
    gid: u32,
    dst: SocketAddr,
    listener: &str,
    what: &str,
) {
    assert_eq!(
        connect_as(from, uid, gid, dst),
        format!("{listener} {dst}"),
        "{what} (uid {uid}, gid {gid}, to {dst})"
    );
}

/// The wildcard address of `ip`'s family.
pub fn wildcard_of(ip: IpAddr) -> IpAddr {
    if ip.is_ipv4() {
        IpAddr::from([0u8; 4])
    } else {
        IpAddr::from([0u8; 16])
    }
}

/// Waits until a connection from `ns` as `uid`/`gid` to `dst` gets an answer (links come up
/// asynchronously); use credentials whose traffic the rules let through.
pub fn wait_answered_as(ns: &str, uid: u32, gid: u32, dst: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if !connect_as(ns, uid, gid, dst).starts_with("error") {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
