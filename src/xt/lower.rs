//! Lowering a model rule to an xtables entry, byte for byte what `iptables-legacy-restore`
//! writes for Istio's rule text (checked against the kernel's blob after restoring Istio's
//! goldens). For example `-o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner
//! --uid-owner 1337 -j ISTIO_IN_REDIRECT` is:
//!
//! ```text
//! ipt_ip  { dst 127.0.0.1/255.255.255.255, outiface "lo" mask ff ff ff, proto 6, invflags DSTIP }
//! match   tcp     rev 0  { spts 0:65535, dpts 15008:15008, invflags DSTPT }
//! match   owner   rev 1  { uid 1337-1337, match UID }
//! target  (standard)     { verdict = offset of ISTIO_IN_REDIRECT }
//! ```
//!
//! Revisions are the ones iptables 1.8 picks on current kernels: tcp/udp 0, multiport 1,
//! owner 1, conntrack 3, mark/connmark 1, REDIRECT 0, TPROXY 1, MARK 2, CONNMARK 2, CT 2.

use super::abi::*;
use super::table::{Counters, Extension, Rule as XtRule, Target};
use crate::config::Cidr;
use crate::model::{Action, CtState, Match, Proto, Rule};

/// `ipt_ip` / `ip6t_ip6` being filled in.
struct Ip {
    bytes: Vec<u8>,
    l: Layout,
}

impl Ip {
    fn new(l: Layout) -> Ip {
        Ip {
            bytes: vec![0; l.ip_size],
            l,
        }
    }

    fn addr_len(&self) -> usize {
        if self.l.ipv6 {
            16
        } else {
            4
        }
    }

    fn flags_at(&self) -> usize {
        if self.l.ipv6 {
            131
        } else {
            82
        }
    }

    fn set_addr(&mut self, cidr: &Cidr, source: bool, negate: bool) {
        let n = self.addr_len();
        let (addr_at, mask_at) = if source { (0, 2 * n) } else { (n, 3 * n) };
        self.bytes[addr_at..addr_at + n].copy_from_slice(&cidr.network_bytes());
        self.bytes[mask_at..mask_at + n].copy_from_slice(&cidr.mask_bytes());
        if negate {
            let at = self.flags_at() + 1;
            self.bytes[at] |= if source { INV_SRCIP } else { INV_DSTIP };
        }
    }

    fn set_iface(&mut self, name: &str, out: bool) {
        let base = 4 * self.addr_len();
        let (name_at, mask_at) = if out {
            (base + 16, base + 48)
        } else {
            (base, base + 32)
        };
        self.bytes[name_at..name_at + name.len()].copy_from_slice(name.as_bytes());
        for b in &mut self.bytes[mask_at..mask_at + name.len() + 1] {
            *b = 0xff;
        }
    }

    fn set_proto(&mut self, p: Proto) {
        let at = 4 * self.addr_len() + 64;
        self.bytes[at..at + 2].copy_from_slice(&(p.number() as u16).to_ne_bytes());
        if self.l.ipv6 {
            let at = self.flags_at();
            self.bytes[at] |= IP6T_F_PROTO;
        }
    }
}

fn u16s(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_ne_bytes()).collect()
}

/// `tcp`/`udp` rev 0: `spts[2] dpts[2]` then (tcp) option, flg_mask, flg_cmp, invflags or
/// (udp) invflags. Inversion bits: source port 0x01, destination port 0x02.
fn port_match(proto: Proto, sport: Option<u16>, dport: Option<u16>, negate: bool) -> Extension {
    let spts = sport.map(|p| [p, p]).unwrap_or([0, 0xffff]);
    let dpts = dport.map(|p| [p, p]).unwrap_or([0, 0xffff]);
    let mut data = u16s(&spts);
    data.extend(u16s(&dpts));
    let inv = if negate { 0x02 } else { 0 };
    match proto {
        Proto::Tcp => data.extend([0, 0, 0, inv]),
        Proto::Udp => data.push(inv),
    }
    Extension::new(proto.name(), 0, data)
}

/// `multiport` rev 1: flags (destination), count, ports[15], pflags[15], invert.
fn multiport(ports: &[u16], negate: bool) -> Extension {
    let mut p = [0u16; 15];
    p[..ports.len()].copy_from_slice(ports);
    let mut data = vec![1u8, ports.len() as u8];
    data.extend(u16s(&p));
    data.extend([0u8; 15]);
    data.push(negate as u8);
    Extension::new("multiport", 1, data)
}

/// `owner` rev 1: uid_min, uid_max, gid_min, gid_max, match, invert (UID 1, GID 2).
fn owner(uid: Option<u32>, gid: Option<u32>, negate: bool) -> Extension {
    let mut data = Vec::new();
    for v in [uid, uid, gid, gid] {
        data.extend(v.unwrap_or(0).to_ne_bytes());
    }
    let bit = if uid.is_some() { 1u8 } else { 2 };
    data.extend([bit, if negate { bit } else { 0 }]);
    Extension::new("owner", 1, data)
}

/// `conntrack` rev 3 with only the state set: match_flags at 146, state_mask at 150.
fn conntrack(state: CtState) -> Extension {
    let mut data = vec![0u8; 164];
    data[146..148].copy_from_slice(&1u16.to_ne_bytes()); // XT_CONNTRACK_STATE
    let mask: u16 = match state {
        CtState::Invalid => 1,
        CtState::RelatedEstablished => 2 | 4,
    };
    data[150..152].copy_from_slice(&mask.to_ne_bytes());
    Extension::new("conntrack", 3, data)
}

/// `mark` / `connmark` rev 1: mark, mask, invert.
fn mark_match(name: &str, mark: u32, negate: bool) -> Extension {
    let mut data = mark.to_ne_bytes().to_vec();
    data.extend(u32::MAX.to_ne_bytes());
    data.push(negate as u8);
    Extension::new(name, 1, data)
}

fn target(action: &Action, l: Layout) -> Target {
    match action {
        Action::Return => Target::Verdict(VERDICT_RETURN),
        Action::Accept => Target::Verdict(VERDICT_ACCEPT),
        Action::Drop => Target::Verdict(VERDICT_DROP),
        Action::Jump(c) => Target::Jump(c.iptables_name().to_string()),
        Action::Redirect { port } => {
            let p = port.to_be_bytes();
            let data = if l.ipv6 {
                // nf_nat_range: flags, min_addr, max_addr, min_proto, max_proto.
                let mut d = 2u32.to_ne_bytes().to_vec();
                d.extend([0u8; 32]);
                d.extend(p);
                d.extend(p);
                d
            } else {
                // nf_nat_ipv4_multi_range_compat: rangesize 1, then one range.
                let mut d = 1u32.to_ne_bytes().to_vec();
                d.extend(2u32.to_ne_bytes()); // NF_NAT_RANGE_PROTO_SPECIFIED
                d.extend([0u8; 8]);
                d.extend(p);
                d.extend(p);
                d
            };
            Target::Extension(Extension::new("REDIRECT", 0, data))
        }
        Action::Tproxy { port, mark } => {
            // xt_tproxy_target_info_v1: mark_mask, mark_value, laddr, lport (BE).
            let mut d = u32::MAX.to_ne_bytes().to_vec();
            d.extend(mark.to_ne_bytes());
            d.extend([0u8; 16]);
            d.extend(port.to_be_bytes());
            Target::Extension(Extension::new("TPROXY", 1, d))
        }
        Action::SetMark(m) => {
            let mut d = m.to_ne_bytes().to_vec();
            d.extend(u32::MAX.to_ne_bytes());
            Target::Extension(Extension::new("MARK", 2, d))
        }
        Action::SaveMarkToConntrack | Action::RestoreMarkFromConntrack => {
            // xt_connmark_tginfo2: ctmark, ctmask, nfmask, shift_dir, shift_bits, mode.
            let mode = if *action == Action::SaveMarkToConntrack {
                1
            } else {
                2
            };
            let mut d = 0u32.to_ne_bytes().to_vec();
            d.extend(u32::MAX.to_ne_bytes());
            d.extend(u32::MAX.to_ne_bytes());
            d.extend([0, 0, mode]);
            Target::Extension(Extension::new("CONNMARK", 2, d))
        }
        Action::CtZone(z) => {
            // xt_ct_target_info_v1: flags, zone, events…, helper, timeout, kernel pointer.
            let mut d = 0u16.to_ne_bytes().to_vec();
            d.extend(z.to_ne_bytes());
            d.resize(72, 0);
            Target::Extension(Extension::new("CT", 2, d))
        }
    }
}

/// The entry for `rule` in one family's table. Port matches come first, as `-p tcp --dport`
/// loads them before any `-m` that follows on Istio's command lines.
pub fn lower(rule: &Rule, l: Layout) -> XtRule {
    let mut ip = Ip::new(l);
    let mut ports = Vec::new();
    let mut others = Vec::new();
    for m in &rule.matches {
        match m {
            Match::InIface(i) => ip.set_iface(i.as_str(), false),
            Match::OutIface(i) => ip.set_iface(i.as_str(), true),
            Match::L4Proto(p) => ip.set_proto(*p),
            Match::DPort {
                proto,
                ports: list,
                negate,
            } => {
                ip.set_proto(*proto);
                ports.push(if list.len() == 1 {
                    port_match(*proto, None, Some(list[0]), *negate)
                } else {
                    multiport(list, *negate)
                });
            }
            Match::SPort { proto, port } => {
                ip.set_proto(*proto);
                ports.push(port_match(*proto, Some(*port), None, false));
            }
            Match::SAddr { cidr, negate } => ip.set_addr(cidr, true, *negate),
            Match::DAddr { cidr, negate } => ip.set_addr(cidr, false, *negate),
            Match::SkUid { uid, negate } => others.push(owner(Some(*uid), None, *negate)),
            Match::SkGid { group, negate } => others.push(owner(None, Some(group.gid), *negate)),
            Match::CtState(s) => others.push(conntrack(*s)),
            Match::Mark { mark, negate } => others.push(mark_match("mark", *mark, *negate)),
            Match::CtMark(mark) => others.push(mark_match("connmark", *mark, false)),
        }
    }
    ports.extend(others);
    XtRule {
        ip: ip.bytes,
        nfcache: 0,
        matches: ports,
        target: target(&rule.action, l),
        counters: Counters::default(),
        old_index: None,
    }
}
