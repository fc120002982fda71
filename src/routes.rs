//! TPROXY policy routing and the IPv6 passthrough address, over rtnetlink (spec §6):
//!
//! ```text
//! ip rule add fwmark 1337 lookup 133                 (and -6 with IPv6)
//! ip route add local 0.0.0.0/0 dev lo table 133      (and ::/0 with IPv6)
//! ip addr add ::6/128 dev lo                         (IPv6 only: Envoy's inbound passthrough source)
//! ```
//!
//! Every object we add is remembered so that a failed nf_tables batch can take it back.

use crate::nft::abi::{NLMSG_ERROR, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};
use crate::nft::wire::{messages, MessageWriter};
use netlink_sys::{Socket, SocketAddr};
use std::io;
use std::net::Ipv6Addr;

const NETLINK_ROUTE: isize = 0;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWRULE: u16 = 32;
const RTM_DELRULE: u16 = 33;
const FRA_FWMARK: u16 = 10;
const FRA_TABLE: u16 = 15;
const RTA_OIF: u16 = 4;
const RTA_TABLE: u16 = 15;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const FR_ACT_TO_TBL: u8 = 1;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_HOST: u8 = 254;
const RTN_LOCAL: u8 = 2;
const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;

/// One routing object we manage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteObject {
    /// `ip rule add fwmark MARK lookup TABLE` for a family.
    FwmarkRule { family: u8, mark: u32, table: u32 },
    /// `ip route add local default dev lo table TABLE` for a family.
    LocalDefault { family: u8, table: u32 },
    /// `::6/128` on `lo`.
    PassthroughV6,
}

impl std::fmt::Display for RouteObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fam = |fa: u8| if fa == AF_INET6 { "-6 " } else { "" };
        match self {
            RouteObject::FwmarkRule {
                family,
                mark,
                table,
            } => write!(f, "ip {}rule fwmark {mark} lookup {table}", fam(*family)),
            RouteObject::LocalDefault { family, table } => {
                let dst = if *family == AF_INET6 {
                    "::/0"
                } else {
                    "0.0.0.0/0"
                };
                write!(f, "ip route local {dst} dev lo table {table}")
            }
            RouteObject::PassthroughV6 => write!(f, "ip addr ::6/128 dev lo"),
        }
    }
}

/// The objects Istio adds for a configuration, in order.
pub fn wanted(tproxy_routes: bool, ipv6: bool, mark: u32, table: u32) -> Vec<RouteObject> {
    let mut out = Vec::new();
    if ipv6 {
        out.push(RouteObject::PassthroughV6);
    }
    if tproxy_routes {
        let families: &[u8] = if ipv6 {
            &[AF_INET, AF_INET6]
        } else {
            &[AF_INET]
        };
        for &family in families {
            out.push(RouteObject::FwmarkRule {
                family,
                mark,
                table,
            });
        }
        for &family in families {
            out.push(RouteObject::LocalDefault { family, table });
        }
    }
    out
}

/// Policy routing objects `remove` takes away (the passthrough address stays: it is
/// harmless, and other software in the pod may use it).
pub fn removable(mark: u32, table: u32) -> Vec<RouteObject> {
    let mut out = Vec::new();
    for family in [AF_INET, AF_INET6] {
        out.push(RouteObject::FwmarkRule {
            family,
            mark,
            table,
        });
        out.push(RouteObject::LocalDefault { family, table });
    }
    out
}

pub struct RouteSocket {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl RouteSocket {
    /// Opens an rtnetlink socket in the calling thread's namespace.
    pub fn open() -> io::Result<RouteSocket> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind(&SocketAddr::new(0, 0))?;
        Ok(RouteSocket {
            sock,
            seq: 1,
            buf: vec![0; 8192],
        })
    }

    /// Adds `obj`; `Ok(false)` when it already existed (and so is not ours to undo).
    pub fn add(&mut self, obj: RouteObject) -> io::Result<bool> {
        // A rule without an explicit priority gets a fresh one each time, so the kernel's
        // NLM_F_EXCL check never fires for it: look for an equal rule first.
        if let RouteObject::FwmarkRule {
            family,
            mark,
            table,
        } = obj
        {
            if self.has_fwmark_rule(family, mark, table)? {
                return Ok(false);
            }
        }
        match self.request(obj, true) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes `obj`; `Ok(false)` when it was not there.
    pub fn delete(&mut self, obj: RouteObject) -> io::Result<bool> {
        match self.request(obj, false) {
            Ok(()) => Ok(true),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT) | Some(libc::ESRCH) | Some(libc::EADDRNOTAVAIL)
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes every copy of `obj` (earlier tools may have added a rule more than once).
    pub fn delete_all(&mut self, obj: RouteObject) -> io::Result<bool> {
        let mut any = false;
        for _ in 0..64 {
            if !self.delete(obj)? {
                break;
            }
            any = true;
        }
        Ok(any)
    }

    fn has_fwmark_rule(&mut self, family: u8, mark: u32, table: u32) -> io::Result<bool> {
        const RTM_GETRULE: u16 = 34;
        self.dump_any(
            RTM_GETRULE,
            &[family, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            12,
            |_, attrs| {
                u32_attr(attrs, FRA_FWMARK) == Some(mark)
                    && u32_attr(attrs, FRA_TABLE) == Some(table)
            },
        )
    }

    /// Whether `obj` is in the namespace (for `verify` and CNI CHECK).
    pub fn present(&mut self, obj: RouteObject) -> io::Result<bool> {
        const RTM_GETROUTE: u16 = 26;
        const RTM_GETADDR: u16 = 22;
        match obj {
            RouteObject::FwmarkRule {
                family,
                mark,
                table,
            } => self.has_fwmark_rule(family, mark, table),
            RouteObject::LocalDefault { family, table } => self.dump_any(
                RTM_GETROUTE,
                &[family, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                12,
                |hdr, attrs| {
                    let in_table = u32_attr(attrs, RTA_TABLE).unwrap_or(hdr[4] as u32) == table;
                    hdr[1] == 0 && hdr[7] == RTN_LOCAL && in_table
                },
            ),
            RouteObject::PassthroughV6 => {
                let six = Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6).octets();
                self.dump_any(
                    RTM_GETADDR,
                    &[AF_INET6, 0, 0, 0, 0, 0, 0, 0],
                    8,
                    |_, attrs| {
                        crate::nft::wire::attrs(attrs)
                            .any(|a| a.ty == IFA_ADDRESS && a.value == six)
                    },
                )
            }
        }
    }

    /// A dump of `msg_type`: whether any answer (family header of `header_len` bytes, then
    /// attributes) satisfies `matches`.
    fn dump_any(
        &mut self,
        msg_type: u16,
        header: &[u8],
        header_len: usize,
        matches: impl Fn(&[u8], &[u8]) -> bool,
    ) -> io::Result<bool> {
        const NLM_F_DUMP: u16 = 0x300;
        const NLMSG_DONE: u16 = 3;
        self.seq += 1;
        let seq = self.seq;
        let mut w = MessageWriter::default();
        let start = w.begin_plain(msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, header);
        w.end_message(start);
        self.sock.send(&w.buf, 0)?;
        let mut found = false;
        loop {
            let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
            for m in messages(&self.buf[..n]) {
                if m.seq != seq {
                    continue;
                }
                match m.msg_type {
                    NLMSG_DONE => return Ok(found),
                    NLMSG_ERROR => {
                        let errno =
                            i32::from_ne_bytes(m.payload[0..4].try_into().expect("4 bytes"));
                        return if errno == 0 {
                            Ok(found)
                        } else {
                            Err(io::Error::from_raw_os_error(-errno))
                        };
                    }
                    _ if m.payload.len() >= header_len => {
                        found |= matches(&m.payload[..header_len], &m.payload[header_len..])
                    }
                    _ => {}
                }
            }
        }
    }

    fn request(&mut self, obj: RouteObject, add: bool) -> io::Result<()> {
        let lo = loopback_index()?;
        let mut w = MessageWriter::default();
        let flags = NLM_F_REQUEST | NLM_F_ACK | if add { NLM_F_CREATE | NLM_F_EXCL } else { 0 };
        self.seq += 1;
        let seq = self.seq;
        let start = match obj {
            RouteObject::FwmarkRule {
                family,
                mark,
                table,
            } => {
                let t = if table < 256 { table as u8 } else { 0 };
                let hdr = [family, 0, 0, 0, t, 0, 0, FR_ACT_TO_TBL, 0, 0, 0, 0];
                let s = w.begin_plain(
                    if add { RTM_NEWRULE } else { RTM_DELRULE },
                    flags,
                    seq,
                    &hdr,
                );
                w.attr(FRA_FWMARK, &mark.to_ne_bytes());
                w.attr(FRA_TABLE, &table.to_ne_bytes());
                s
            }
            RouteObject::LocalDefault { family, table } => {
                let t = if table < 256 { table as u8 } else { 0 };
                let hdr = [
                    family,
                    0,
                    0,
                    0,
                    t,
                    RTPROT_BOOT,
                    RT_SCOPE_HOST,
                    RTN_LOCAL,
                    0,
                    0,
                    0,
                    0,
                ];
                let s = w.begin_plain(
                    if add { RTM_NEWROUTE } else { RTM_DELROUTE },
                    flags,
                    seq,
                    &hdr,
                );
                w.attr(RTA_OIF, &lo.to_ne_bytes());
                w.attr(RTA_TABLE, &table.to_ne_bytes());
                s
            }
            RouteObject::PassthroughV6 => {
                let mut hdr = vec![AF_INET6, 128, 0, 0];
                hdr.extend_from_slice(&lo.to_ne_bytes());
                let s = w.begin_plain(
                    if add { RTM_NEWADDR } else { RTM_DELADDR },
                    flags,
                    seq,
                    &hdr,
                );
                let six = Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6).octets();
                w.attr(IFA_LOCAL, &six);
                w.attr(IFA_ADDRESS, &six);
                s
            }
        };
        w.end_message(start);
        self.sock.send(&w.buf, 0)?;
        loop {
            let n = self.sock.recv(&mut &mut self.buf[..], 0)?;
            for m in messages(&self.buf[..n]) {
                if m.msg_type == NLMSG_ERROR && m.seq == seq {
                    let errno = i32::from_ne_bytes(m.payload[0..4].try_into().expect("4 bytes"));
                    return if errno == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::from_raw_os_error(-errno))
                    };
                }
            }
        }
    }
}

fn u32_attr(attrs: &[u8], ty: u16) -> Option<u32> {
    crate::nft::wire::attrs(attrs)
        .find(|a| a.ty == ty)
        .and_then(|a| a.value.get(..4))
        .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
}

/// `lo`'s index in the calling thread's namespace.
fn loopback_index() -> io::Result<u32> {
    // SAFETY: a NUL-terminated constant string.
    let idx = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    if idx == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(idx)
    }
}
