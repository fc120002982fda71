//! TPROXY policy routing and the IPv6 passthrough address, over rtnetlink
//! (`docs/istio-semantics.md` §6):
//!
//! ```text
//! ip rule add fwmark 1337 lookup 133                 (and -6 with IPv6)
//! ip route add local 0.0.0.0/0 dev lo table 133      (and ::/0 with IPv6)
//! ip addr add ::6/128 dev lo                         (IPv6 only: Envoy's inbound passthrough source)
//! ```
//!
//! Every object we add is remembered so that a failed nf_tables batch can take it back.

use crate::kernel::RouteOps;
use crate::netlink::consts::{
    NETLINK_ROUTE, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use crate::netlink::route::*;
use crate::netlink::socket::NetlinkSocket;
use crate::netlink::wire::{attrs, MessageWriter};
use std::io;
use std::net::Ipv6Addr;

const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;

/// One routing object we manage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteObject {
    /// `ip rule add fwmark MARK lookup TABLE` for a family.
    FwmarkRule {
        /// `AF_INET` or `AF_INET6`.
        family: u8,
        /// The firewall mark.
        mark: u32,
        /// The routing table.
        table: u32,
    },
    /// `ip route add local default dev lo table TABLE` for a family.
    LocalDefault {
        /// `AF_INET` or `AF_INET6`.
        family: u8,
        /// The routing table.
        table: u32,
    },
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
        // The tables first: a policy rule never points to a table without its route, so a
        // process killed between two writes leaves only what `ours_in_place` recognises.
        for &family in families {
            out.push(RouteObject::LocalDefault { family, table });
        }
        for &family in families {
            out.push(RouteObject::FwmarkRule {
                family,
                mark,
                table,
            });
        }
    }
    out
}

/// The policy routing of ours in the namespace, recognised by shape whatever its mark and
/// table: a `fwmark M lookup T` rule whose table holds only `local default dev lo`, and that
/// route. `remove` takes these away with no flags, and `apply` those it does not want (the
/// passthrough address stays: it is harmless, and other software in the pod may use it).
pub fn ours_in_place(rs: &mut impl RouteOps) -> io::Result<Vec<RouteObject>> {
    let tables = rs.local_default_tables()?;
    let mut out: Vec<RouteObject> = rs
        .fwmark_rules()?
        .into_iter()
        .filter(|r| matches!(r, RouteObject::FwmarkRule { family, table, .. } if tables.contains(&(*family, *table))))
        .collect();
    out.dedup();
    // Rules first, then their tables: removal in this order never leaves a rule pointing
    // to an empty table. A table of that shape without a rule (a kill between our two
    // writes) is ours too.
    out.extend(
        tables
            .into_iter()
            .map(|(family, table)| RouteObject::LocalDefault { family, table }),
    );
    Ok(out)
}

/// An rtnetlink socket in the namespace of the thread that opened it.
pub struct RouteSocket {
    sock: NetlinkSocket,
}

fn u32_attr(payload: &[u8], ty: u16) -> Option<u32> {
    attrs(payload)
        .find(|a| a.ty == ty)
        .and_then(|a| a.value.get(..4))
        .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
}

const PASSTHROUGH_V6: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6);

impl RouteSocket {
    /// Opens an rtnetlink socket in the calling thread's namespace.
    pub fn open() -> io::Result<RouteSocket> {
        Ok(RouteSocket {
            sock: NetlinkSocket::open(NETLINK_ROUTE, 1 << 16)?,
        })
    }

    /// A dump of `msg_type` with `header`: hands each answer's header and attributes to
    /// `each`.
    fn dump_each(
        &mut self,
        msg_type: u16,
        header: &[u8],
        mut each: impl FnMut(&[u8], &[u8]),
    ) -> io::Result<()> {
        let seq = self.sock.reserve_seqs(1);
        let mut w = MessageWriter::default();
        let start = w.begin_plain(msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, header);
        w.end_message(start);
        self.sock.send(&w.buf)?;
        let len = header.len();
        self.sock.dump(seq, |payload| {
            if payload.len() >= len {
                each(&payload[..len], &payload[len..]);
            }
        })
    }

    /// A dump of `msg_type` with `header`: whether any answer's header and attributes
    /// satisfy `matches`.
    fn dump_any(
        &mut self,
        msg_type: u16,
        header: &[u8],
        matches: impl Fn(&[u8], &[u8]) -> bool,
    ) -> io::Result<bool> {
        let mut found = false;
        self.dump_each(msg_type, header, |h, a| found |= matches(h, a))?;
        Ok(found)
    }

    fn has_fwmark_rule(&mut self, family: u8, mark: u32, table: u32) -> io::Result<bool> {
        let hdr = FibRuleHdr {
            family,
            ..Default::default()
        };
        self.dump_any(RTM_GETRULE, &hdr.to_bytes(), |_, a| {
            u32_attr(a, FRA_FWMARK) == Some(mark) && u32_attr(a, FRA_TABLE) == Some(table)
        })
    }

    /// One add or delete request, answered by an ACK.
    fn request(&mut self, obj: RouteObject, add: bool) -> io::Result<()> {
        let mut w = MessageWriter::default();
        let flags = NLM_F_REQUEST | NLM_F_ACK | if add { NLM_F_CREATE | NLM_F_EXCL } else { 0 };
        let seq = self.sock.reserve_seqs(1);
        // Tables above 255 travel in the 32-bit attribute only.
        let short_table = |table: u32| if table < 256 { table as u8 } else { 0 };
        let start = match obj {
            RouteObject::FwmarkRule {
                family,
                mark,
                table,
            } => {
                let hdr = FibRuleHdr {
                    family,
                    table: short_table(table),
                    action: FR_ACT_TO_TBL,
                    ..Default::default()
                };
                let ty = if add { RTM_NEWRULE } else { RTM_DELRULE };
                let s = w.begin_plain(ty, flags, seq, &hdr.to_bytes());
                w.attr(FRA_FWMARK, &mark.to_ne_bytes());
                w.attr(FRA_TABLE, &table.to_ne_bytes());
                s
            }
            RouteObject::LocalDefault { family, table } => {
                let hdr = RtMsg {
                    family,
                    table: short_table(table),
                    protocol: RTPROT_BOOT,
                    scope: RT_SCOPE_HOST,
                    kind: RTN_LOCAL,
                    ..Default::default()
                };
                let ty = if add { RTM_NEWROUTE } else { RTM_DELROUTE };
                let s = w.begin_plain(ty, flags, seq, &hdr.to_bytes());
                w.attr(RTA_OIF, &LOOPBACK_IFINDEX.to_ne_bytes());
                w.attr(RTA_TABLE, &table.to_ne_bytes());
                s
            }
            RouteObject::PassthroughV6 => {
                let hdr = IfAddrMsg {
                    family: AF_INET6,
                    prefix_len: 128,
                    index: LOOPBACK_IFINDEX,
                    ..Default::default()
                };
                let ty = if add { RTM_NEWADDR } else { RTM_DELADDR };
                let s = w.begin_plain(ty, flags, seq, &hdr.to_bytes());
                w.attr(IFA_LOCAL, &PASSTHROUGH_V6.octets());
                w.attr(IFA_ADDRESS, &PASSTHROUGH_V6.octets());
                s
            }
        };
        w.end_message(start);
        self.sock.send(&w.buf)?;
        self.sock.ack(seq)
    }
}

impl RouteOps for RouteSocket {
    fn add(&mut self, obj: RouteObject) -> io::Result<bool> {
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

    fn delete(&mut self, obj: RouteObject) -> io::Result<bool> {
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

    fn fwmark_rules(&mut self) -> io::Result<Vec<RouteObject>> {
        let mut out = Vec::new();
        // One dump for both families: AF_UNSPEC asks the kernel for every family's rules.
        let hdr = FibRuleHdr::default();
        self.dump_each(RTM_GETRULE, &hdr.to_bytes(), |h, a| {
            let Some(h) = FibRuleHdr::parse(h) else {
                return;
            };
            let ours_family = h.family == AF_INET || h.family == AF_INET6;
            if let (true, true, Some(mark), Some(table)) = (
                ours_family,
                h.action == FR_ACT_TO_TBL,
                u32_attr(a, FRA_FWMARK),
                u32_attr(a, FRA_TABLE),
            ) {
                out.push(RouteObject::FwmarkRule {
                    family: h.family,
                    mark,
                    table,
                });
            }
        })?;
        Ok(out)
    }

    fn local_default_tables(&mut self) -> io::Result<Vec<(u8, u32)>> {
        /// `RT_TABLE_DEFAULT`, `RT_TABLE_MAIN`, `RT_TABLE_LOCAL`: never ours.
        const RESERVED: [u32; 4] = [0, 253, 254, 255];
        let mut out = Vec::new();
        for family in [AF_INET, AF_INET6] {
            let hdr = RtMsg {
                family,
                ..Default::default()
            };
            // Per table: (routes of our shape, other routes).
            let mut tables: Vec<(u32, usize, usize)> = Vec::new();
            self.dump_each(RTM_GETROUTE, &hdr.to_bytes(), |h, a| {
                let Some(h) = RtMsg::parse(h) else { return };
                let table = u32_attr(a, RTA_TABLE).unwrap_or(h.table as u32);
                let local_default = h.dst_len == 0 && h.kind == RTN_LOCAL;
                let ours = local_default && u32_attr(a, RTA_OIF) == Some(LOOPBACK_IFINDEX);
                let i = match tables.iter().position(|t| t.0 == table) {
                    Some(i) => i,
                    None => {
                        tables.push((table, 0, 0));
                        tables.len() - 1
                    }
                };
                if ours {
                    tables[i].1 += 1;
                } else {
                    tables[i].2 += 1;
                }
            })?;
            out.extend(
                tables
                    .into_iter()
                    .filter(|(t, ours, other)| !RESERVED.contains(t) && *ours > 0 && *other == 0)
                    .map(|(t, _, _)| (family, t)),
            );
        }
        Ok(out)
    }

    fn present(&mut self, obj: RouteObject) -> io::Result<bool> {
        match obj {
            RouteObject::FwmarkRule {
                family,
                mark,
                table,
            } => self.has_fwmark_rule(family, mark, table),
            RouteObject::LocalDefault { family, table } => {
                let hdr = RtMsg {
                    family,
                    ..Default::default()
                };
                self.dump_any(RTM_GETROUTE, &hdr.to_bytes(), |h, a| {
                    let Some(h) = RtMsg::parse(h) else {
                        return false;
                    };
                    let in_table = u32_attr(a, RTA_TABLE).unwrap_or(h.table as u32) == table;
                    h.dst_len == 0 && h.kind == RTN_LOCAL && in_table
                })
            }
            RouteObject::PassthroughV6 => {
                let hdr = IfAddrMsg {
                    family: AF_INET6,
                    ..Default::default()
                };
                self.dump_any(RTM_GETADDR, &hdr.to_bytes(), |_, a| {
                    attrs(a).any(|x| x.ty == IFA_ADDRESS && x.value == PASSTHROUGH_V6.octets())
                })
            }
        }
    }
}

/// `lo`'s interface index, the same in every network namespace: the kernel registers the
/// loopback device first in each one and refuses to go on otherwise (`LOOPBACK_IFINDEX` in
/// `include/net/net_namespace.h`, the `BUG_ON` in `loopback_net_init`). Asking for it by name
/// (`if_nametoindex`) costs a socket and an ioctl, ≈ 5 µs of an apply.
const LOOPBACK_IFINDEX: u32 = 1;
