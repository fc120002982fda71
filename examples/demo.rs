//! The main job, end to end on this machine: applies the default sidecar rules to a
//! throw-away "pod" namespace, prints `nft list ruleset`, and shows an application's
//! connection to a "remote" namespace landing on the proxy's port 15001 with its original
//! destination intact. Everything it creates is deleted at the end.
//!
//! Run as root: `cargo run --release --example demo`.
//!
//! The demo uses `ip` and `nft` to build and show the namespaces (it is a demo); the rules
//! themselves are programmed by mesh-redirect's engine, exactly as `mesh-redirect apply`
//! does, without any of those binaries.

use mesh_redirect::config::{GroupFile, RawConfig};
use mesh_redirect::engine::{self, BackendChoice};
use mesh_redirect::netns::Netns;
use mesh_redirect::probe::original_dst;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run");
    if !out.status.success() {
        panic!("{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(path).expect("namespace");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

struct Cleanup(Vec<String>);
impl Drop for Cleanup {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn main() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the demo needs root (network namespaces)"
    );
    let id = std::process::id();
    let (pod, remote) = (format!("demo-pod-{id}"), format!("demo-remote-{id}"));
    let _cleanup = Cleanup(vec![pod.clone(), remote.clone()]);
    for ns in [&pod, &remote] {
        sh(&["ip", "netns", "add", ns]);
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    let (vp, vr) = (format!("dp{}", id % 100000), format!("dr{}", id % 100000));
    sh(&[
        "ip", "-n", &pod, "link", "add", &vp, "type", "veth", "peer", "name", &vr, "netns", &remote,
    ]);
    sh(&["ip", "-n", &pod, "addr", "add", "192.0.2.1/24", "dev", &vp]);
    sh(&[
        "ip",
        "-n",
        &remote,
        "addr",
        "add",
        "192.0.2.2/24",
        "dev",
        &vr,
    ]);
    sh(&["ip", "-n", &pod, "link", "set", &vp, "up"]);
    sh(&["ip", "-n", &remote, "link", "set", &vr, "up"]);

    println!("$ mesh-redirect apply --netns {pod}        # Istio's CNI sidecar defaults");
    let cfg = RawConfig::default()
        .validate(&GroupFile::default())
        .expect("defaults are valid");
    let ns = Netns::open(&pod).expect("pod namespace");
    let report = engine::apply(&ns, &cfg, BackendChoice::Nftables).expect("apply");
    println!(
        "applied {} objects in one batch of {} netlink messages, {} µs\n",
        report.objects,
        report.messages,
        report.elapsed.as_micros()
    );
    println!("$ ip netns exec {pod} nft list ruleset");
    print!(
        "{}",
        sh(&["ip", "netns", "exec", &pod, "nft", "list", "ruleset"])
    );

    // The "proxy": a listener on 15001 in the pod that reports the original destination.
    let (tx, rx) = std::sync::mpsc::channel();
    let proxy = in_ns(&pod, move || {
        let l = TcpListener::bind("0.0.0.0:15001").expect("bind 15001");
        tx.send(()).unwrap();
        let (mut s, peer) = l.accept().expect("accept");
        let dst = original_dst(&s).expect("SO_ORIGINAL_DST");
        let _ = s.write_all(
            format!(
                "proxy on {} got {peer}'s connection to {dst}",
                s.local_addr().unwrap()
            )
            .as_bytes(),
        );
    });
    rx.recv().unwrap();
    // An application (uid 1000) in the pod connects to the remote address.
    let dst: SocketAddr = "192.0.2.2:80".parse().unwrap();
    let answer = in_ns(&pod, move || {
        // SAFETY: per-thread filesystem credentials: the socket is owned by uid/gid 1000.
        unsafe {
            libc::syscall(libc::SYS_setfsgid, 1000);
            libc::syscall(libc::SYS_setfsuid, 1000);
        }
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(3)).expect("connect");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    })
    .join()
    .unwrap();
    proxy.join().unwrap();
    println!("\n$ (in {pod}, as uid 1000) connect {dst}");
    println!("{answer}");
    println!("\nthe connection was redirected to the sidecar port; namespaces removed.");
}
