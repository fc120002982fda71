//! Reading where a redirected connection was going: `SO_ORIGINAL_DST` (IPv4) and
//! `IP6T_SO_ORIGINAL_DST` (IPv6), both option 80, answered from the conntrack entry of the
//! NAT (nf_tables `redirect` or iptables `REDIRECT`). This is what Envoy does on 15001.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;

const SO_ORIGINAL_DST: libc::c_int = 80;

/// The destination the client connected to before the redirect.
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let v6 = stream.local_addr()?.is_ipv6();
    let level = if v6 { libc::SOL_IPV6 } else { libc::SOL_IP };
    // SAFETY: zeroed sockaddr_storage, getsockopt writes at most `len` bytes into it.
    let (ss, _) = unsafe {
        let mut ss: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if libc::getsockopt(
            stream.as_raw_fd(),
            level,
            SO_ORIGINAL_DST,
            &mut ss as *mut _ as *mut libc::c_void,
            &mut len,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        (ss, len)
    };
    // SAFETY: the kernel filled a sockaddr of the socket's family.
    Ok(unsafe {
        if v6 {
            let a = &*(&ss as *const _ as *const libc::sockaddr_in6);
            SocketAddr::new(IpAddr::from(a.sin6_addr.s6_addr), u16::from_be(a.sin6_port))
        } else {
            let a = &*(&ss as *const _ as *const libc::sockaddr_in);
            SocketAddr::new(
                IpAddr::from(u32::from_be(a.sin_addr.s_addr).to_be_bytes()),
                u16::from_be(a.sin_port),
            )
        }
    })
}
