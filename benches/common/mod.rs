//! Shared by the benches: the configurations they measure and throw-away network namespaces.
//!
//! Network safety (README): a namespace made here is anonymous, held only by a file
//! descriptor that [`ScratchNetns`] owns, and has nothing in it but `lo`. The kernel deletes
//! it when the guard is dropped, and also when the bench process dies in any way, so nothing
//! can be left behind; nothing is connected to the host and forwarding is never touched.
#![allow(dead_code)]

use mesh_redirect::config::{Config, GroupFile, RawConfig};
use mesh_redirect::netns::Netns;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Flags of a benchmarked configuration, as `(flag, value)`: the same pairs feed the library
/// ([`Spec::config`]) and the command line ([`Spec::args`]).
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub flags: Vec<(&'static str, String)>,
}

impl Spec {
    /// Istio's CNI sidecar defaults with IPv6: `mesh-redirect apply --ipv6`.
    pub fn default_ipv6() -> Spec {
        Spec {
            name: "default".into(),
            flags: vec![("--ipv6", "true".into())],
        }
    }

    /// Istio's CNI sidecar defaults as they are (IPv4 only): `mesh-redirect apply`.
    pub fn default_ipv4() -> Spec {
        Spec {
            name: "default-ipv4-only".into(),
            flags: vec![],
        }
    }

    /// The large configuration: `cidrs` outbound include CIDRs and as many exclude CIDRs
    /// (alternately IPv4 /24 and IPv6 /48), 200 inbound ports, 16 proxy uids (the gids
    /// follow the uids), IPv6 on. `cidrs = 500` is "the large configuration".
    pub fn large(cidrs: usize) -> Spec {
        Spec {
            name: format!("large-{cidrs}cidr"),
            flags: vec![
                ("--ipv6", "true".into()),
                ("-i", cidr_list(cidrs, 0)),
                ("-x", cidr_list(cidrs, 100)),
                (
                    "-b",
                    (1001..=1200)
                        .map(|p: u16| p.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                (
                    "-u",
                    (2001..=2016)
                        .map(|u: u32| u.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                ),
            ],
        }
    }

    /// The validated configuration (no group names are used, so no group file is read).
    pub fn config(&self) -> Config {
        self.raw()
            .validate(&GroupFile::default())
            .unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }

    /// The raw configuration the command line builds from these flags.
    pub fn raw(&self) -> RawConfig {
        mesh_redirect::cli::raw_config(&self.args(), &|_| None).expect("the bench flags parse")
    }

    /// The same configuration as command-line arguments of `mesh-redirect apply`.
    pub fn args(&self) -> Vec<String> {
        self.flags
            .iter()
            .flat_map(|(f, v)| {
                if *f == "--ipv6" {
                    vec![format!("--ipv6={v}")]
                } else {
                    vec![f.to_string(), v.clone()]
                }
            })
            .collect()
    }
}

/// `n` distinct CIDRs, alternately IPv4 (`10.B.x.0/24`) and IPv6 (`fd00:B:x::/48`).
pub fn cidr_list(n: usize, base: usize) -> String {
    (0..n)
        .map(|i| {
            let k = i / 2;
            if i % 2 == 0 {
                format!("10.{}.{}.0/24", base + k / 256, k % 256)
            } else {
                format!("fd00:{base:x}:{k:x}::/48")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The two configurations every stage is measured with.
pub fn specs() -> Vec<Spec> {
    vec![Spec::default_ipv6(), Spec::large(500)]
}

/// Benches that touch the kernel need root, like the tests: fail loudly without it.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this bench needs root (network namespaces, nf_tables); run it as root"
    );
}

/// An anonymous network namespace with `lo` up, deleted by the kernel when dropped.
pub struct ScratchNetns {
    file: File,
}

impl ScratchNetns {
    pub fn new() -> ScratchNetns {
        require_root();
        // `unshare` moves only the calling thread, so do it on a thread that ends here.
        let file = std::thread::spawn(|| -> std::io::Result<File> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
            set_lo_up()?;
            File::open("/proc/thread-self/ns/net")
        })
        .join()
        .expect("namespace thread")
        .expect("creating a network namespace");
        ScratchNetns { file }
    }

    /// A path to it that any process of this machine can open while the guard lives (as a
    /// CNI runtime passes `/var/run/netns/…` or `/proc/PID/ns/net`).
    pub fn path(&self) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), self.file.as_raw_fd())
    }

    /// The library's handle on it.
    pub fn netns(&self) -> Netns {
        Netns::open(&self.path()).expect("opening the scratch namespace")
    }

    /// Enters it in a child between `fork` and `exec` (as Istio's CNI plugin runs
    /// `iptables-restore` from a thread that has entered the pod's namespace).
    pub fn enter_in_child(&self, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        let fd = self.file.as_raw_fd();
        // SAFETY: only the async-signal-safe setns(2) runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// `ip link set lo up` in the calling thread's namespace (a pod's `lo` is up when the
/// sidecar rules are programmed: the loopback CNI plugin runs first).
fn set_lo_up() -> std::io::Result<()> {
    // SAFETY: a plain datagram socket and the SIOC[GS]IFFLAGS ioctls on a zeroed `ifreq`
    // whose name is NUL-terminated; the descriptor is closed before returning.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        let mut rc = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr);
        if rc == 0 {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            rc = libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr);
        }
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(err);
        }
    }
    Ok(())
}

/// Whether criterion runs for real (`cargo bench` passes `--bench`) rather than once per
/// bench as a smoke test (`cargo test --all-targets`).
pub fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// A criterion configuration for benches whose iterations need a namespace each, or take
/// milliseconds: fewer samples, flat sampling, so that a run takes seconds, not minutes.
pub fn kernel_criterion() -> criterion::Criterion {
    criterion::Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
}
