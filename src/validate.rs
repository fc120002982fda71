//! `mesh-redirect validate`: proves, from inside a pod's network namespace, that the redirect
//! works — what Istio's `istio-validation` init container does.
//!
//! The proxy's own connection to a non-localhost loopback address (`127.0.0.6:15002`) must be
//! sent to the inbound listener by the rule
//! `oifname "lo" ip daddr != 127.0.0.1 tcp dport != 15008 meta skuid 1337 jump istio-in-redirect`
//! (`-o lo ! -d 127.0.0.1/32 … --uid-owner 1337 -j ISTIO_IN_REDIRECT`). We listen on the
//! inbound (15006) and outbound (15001) capture ports, connect as the proxy's uid, and accept
//! only a connection whose original destination (`SO_ORIGINAL_DST`) is the probe port.
//! Nothing here changes the namespace.

use crate::probe::original_dst;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// What `validate` probes and how long it waits.
#[derive(Debug, Clone)]
pub struct ValidateOptions {
    /// The port the probe connects to (on 127.0.0.6 or ::6).
    pub probe_port: u16,
    /// The inbound capture port, where a redirected probe must land.
    pub inbound_capture_port: u16,
    /// The outbound capture port, also listened on.
    pub proxy_port: u16,
    /// The proxy's uid: the probe connection is made as this uid (a per-thread credential
    /// when we run as root; in an init container running as 1337 it is simply ours).
    pub uid: u32,
    /// The proxy's gid, for the probe connection.
    pub gid: u32,
    /// Probe over IPv6 instead of IPv4.
    pub ipv6: bool,
    /// How long to wait for the redirected connection.
    pub timeout: Duration,
}

impl Default for ValidateOptions {
    fn default() -> Self {
        ValidateOptions {
            probe_port: 15002,
            inbound_capture_port: 15006,
            proxy_port: 15001,
            uid: 1337,
            gid: 1337,
            ipv6: false,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Why validation failed.
#[derive(Debug, Error)]
pub enum ValidateError {
    /// A capture port could not be listened on.
    #[error("cannot listen on {addr}: {source} (is the proxy already running in this namespace?)")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The system error.
        source: std::io::Error,
    },
    /// The probe did not arrive at the capture port in time.
    #[error(
        "the redirect does not work: a connection to {probe} as uid {uid} did not reach the inbound listener {listener} within {timeout:?} \
         (last attempt: {last}). The redirect rules are missing or wrong in this namespace: check `nft list ruleset` or \
         `iptables-legacy-save`, and the CNI plugin's log for this pod"
    )]
    NotRedirected {
        /// Where the probe connected.
        probe: SocketAddr,
        /// The uid it connected as.
        uid: u32,
        /// The listener it should have reached.
        listener: SocketAddr,
        /// How long we waited.
        timeout: Duration,
        /// The last attempt's error.
        last: String,
    },
}

/// What a successful validation saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    /// The address the probe connected to.
    pub probe: SocketAddr,
    /// The listener that accepted it.
    pub landed_on: SocketAddr,
    /// The original destination the redirect recorded (`SO_ORIGINAL_DST`).
    pub original_destination: SocketAddr,
}

fn listen(addr: SocketAddr) -> Result<TcpListener, ValidateError> {
    let l = TcpListener::bind(addr).map_err(|source| ValidateError::Listen { addr, source })?;
    l.set_nonblocking(true)
        .map_err(|source| ValidateError::Listen { addr, source })?;
    Ok(l)
}

fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: a zeroed sockaddr_storage is a valid value; we fill the variant for the family.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// Connects from an explicit local address. The probe must come from 127.0.0.1 / ::1 as
/// Istio's does: left to itself the kernel would pick ::6 as the source of a connection to
/// ::6, and the passthrough rule (`ip6 saddr ::6 return`) would rightly let it through.
fn connect_from(
    local: SocketAddr,
    dst: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let family = if dst.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: socket/setsockopt/bind/connect on a descriptor we own; on success it is handed
    // to TcpStream, on failure closed.
    unsafe {
        let fd = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fail = |fd| {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            Err(e)
        };
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        let (l, llen) = sockaddr(local);
        if libc::bind(fd, &l as *const _ as *const libc::sockaddr, llen) != 0 {
            return fail(fd);
        }
        let (d, dlen) = sockaddr(dst);
        if libc::connect(fd, &d as *const _ as *const libc::sockaddr, dlen) != 0 {
            return fail(fd);
        }
        Ok(TcpStream::from_raw_fd(fd))
    }
}

/// Runs the probe in the calling thread's network namespace.
pub fn validate(opts: &ValidateOptions) -> Result<Validated, ValidateError> {
    let (local, six): (IpAddr, IpAddr) = if opts.ipv6 {
        (
            Ipv6Addr::LOCALHOST.into(),
            Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6).into(),
        )
    } else {
        (
            Ipv4Addr::LOCALHOST.into(),
            Ipv4Addr::new(127, 0, 0, 6).into(),
        )
    };
    let inbound = SocketAddr::new(local, opts.inbound_capture_port);
    let listeners = [
        listen(inbound)?,
        listen(SocketAddr::new(local, opts.proxy_port))?,
    ];
    let probe = SocketAddr::new(six, opts.probe_port);
    let deadline = Instant::now() + opts.timeout;
    let done = Arc::new(AtomicBool::new(false));

    // The client: a thread of its own, so its credentials can be the proxy's.
    let client = {
        let (done, uid, gid) = (done.clone(), opts.uid, opts.gid);
        std::thread::spawn(move || {
            // SAFETY: raw setfsgid/setfsuid change only this thread's filesystem credentials,
            // which the kernel stamps on the sockets this thread creates (`meta skuid`).
            unsafe {
                libc::syscall(libc::SYS_setfsgid, gid);
                libc::syscall(libc::SYS_setfsuid, uid);
            }
            let mut last = String::from("no attempt");
            while !done.load(Ordering::SeqCst) && Instant::now() < deadline {
                match connect_from(SocketAddr::new(local, 0), probe, Duration::from_millis(500)) {
                    Ok(mut s) => {
                        let _ = s.write_all(b"mesh-redirect validation\n");
                        last = "connected, but not to the inbound listener".into();
                    }
                    Err(e) => last = e.to_string(),
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            last
        })
    };

    let mut result = None;
    while Instant::now() < deadline && result.is_none() {
        for l in &listeners {
            if let Ok((s, _)) = l.accept() {
                if let Ok(dst) = original_dst(&s) {
                    if dst == probe || dst.port() == opts.probe_port {
                        result = Some(Validated {
                            probe,
                            landed_on: s.local_addr().unwrap_or(inbound),
                            original_destination: dst,
                        });
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    done.store(true, Ordering::SeqCst);
    let last = client
        .join()
        .unwrap_or_else(|_| "the probe thread panicked".into());
    result.ok_or(ValidateError::NotRedirected {
        probe,
        uid: opts.uid,
        listener: inbound,
        timeout: opts.timeout,
        last,
    })
}
