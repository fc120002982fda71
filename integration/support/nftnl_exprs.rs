//! The libnftnl side of our encoder checks (shared by `integration/libnftnl_oracle.rs` and
//! the encoder benchmark): the expressions the `nftnl` crate lacks, written against libnftnl
//! directly (`docs/kernel-facts.md` §3.2), and nft's conventions for addresses and dependencies.
#![allow(dead_code)]

use mesh_redirect::config::Cidr;
use mesh_redirect::model::Proto;
use nftnl::expr::{
    Bitwise, Cmp, CmpOp, Expression, Ipv4HeaderField, Ipv6HeaderField, Meta, NetworkHeaderField,
    Payload, TcpHeaderField, TransportHeaderField, UdpHeaderField,
};
use nftnl::nftnl_sys::{self as sys, libc};
use nftnl::set::SetKey;
use nftnl::Rule;
use std::ffi::{CStr, CString};
use std::net::IpAddr;
use std::ptr::NonNull;

/// `NF_NAT_RANGE_PROTO_SPECIFIED` (`linux/netfilter/nf_nat.h`; not in the `libc` crate).
pub const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
/// `NFT_CT_ZONE` (`linux/netfilter/nf_tables.h`): the crate's `Conntrack` has no zone key.
pub const NFT_CT_ZONE: u32 = 17;
pub const NFT_REG_1: u32 = libc::NFT_REG_1 as u32;

// ---------------------------------------------------------------------------------------
// Expressions the crate lacks (`docs/kernel-facts.md` §3.2), written against libnftnl directly.
// ---------------------------------------------------------------------------------------

/// An expression just allocated by libnftnl, not yet handed to a rule.
pub struct NewExpr(pub NonNull<sys::nftnl_expr>);

impl NewExpr {
    pub fn alloc(name: &CStr) -> NewExpr {
        // SAFETY: `name` is a valid NUL-terminated string; libnftnl copies what it needs.
        let e = unsafe { sys::nftnl_expr_alloc(name.as_ptr()) };
        NewExpr(NonNull::new(e).unwrap_or_else(|| panic!("nftnl_expr_alloc({name:?}) failed")))
    }

    /// Sets a u32 attribute (`attr` is one of the `NFTNL_EXPR_*` of this expression type).
    pub fn u32(self, attr: u32, value: u32) -> NewExpr {
        // SAFETY: the expression is live and still ours (not yet owned by a rule).
        unsafe { sys::nftnl_expr_set_u32(self.0.as_ptr(), attr as u16, value) };
        self
    }

    pub fn str(self, attr: u32, value: &CStr) -> NewExpr {
        // SAFETY: as in `u32`; the string is NUL-terminated and copied by libnftnl.
        unsafe { sys::nftnl_expr_set_str(self.0.as_ptr(), attr as u16, value.as_ptr()) };
        self
    }

    /// Hands the expression over (`Expression::to_expr`: the rule takes ownership).
    pub fn into_raw(self) -> NonNull<sys::nftnl_expr> {
        let e = self.0;
        std::mem::forget(self);
        e
    }
}

impl Drop for NewExpr {
    fn drop(&mut self) {
        // SAFETY: never handed to a rule (`into_raw` forgets `self`), so still ours to free.
        unsafe { sys::nftnl_expr_free(self.0.as_ptr()) };
    }
}

/// `redirect to :port`, as nft 1.0.6 generates it for a single port: the port register as
/// `PROTO_MIN` only (the kernel then uses it as the maximum too), flags `PROTO_SPECIFIED`.
pub struct Redir;

impl Expression for Redir {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        NewExpr::alloc(c"redir")
            .u32(sys::NFTNL_EXPR_REDIR_REG_PROTO_MIN, NFT_REG_1)
            .u32(sys::NFTNL_EXPR_REDIR_FLAGS, NF_NAT_RANGE_PROTO_SPECIFIED)
            .into_raw()
    }
}

/// `tproxy ip|ip6 to :port` with the port in register 1 (`family` 0 = `tproxy to :port`).
pub struct Tproxy {
    pub family: u32,
}

impl Expression for Tproxy {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        NewExpr::alloc(c"tproxy")
            .u32(sys::NFTNL_EXPR_TPROXY_FAMILY, self.family)
            .u32(sys::NFTNL_EXPR_TPROXY_REG_PORT, NFT_REG_1)
            .into_raw()
    }
}

/// `ct <key> set` from register 1 (the crate only knows `ct mark set`).
pub struct CtSet {
    pub key: u32,
}

impl Expression for CtSet {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        NewExpr::alloc(c"ct")
            .u32(sys::NFTNL_EXPR_CT_KEY, self.key)
            .u32(sys::NFTNL_EXPR_CT_SREG, NFT_REG_1)
            .into_raw()
    }
}

/// A lookup that can be inverted (`tcp dport != { 53, 15008 }`); the crate's `Lookup` has
/// the `NFT_LOOKUP_F_INV` code commented out. Like nft, the flags are only set when inverted.
pub struct LookupEx {
    pub set_name: CString,
    pub set_id: u32,
    pub invert: bool,
}

impl Expression for LookupEx {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let e = NewExpr::alloc(c"lookup")
            .u32(sys::NFTNL_EXPR_LOOKUP_SREG, NFT_REG_1)
            .str(sys::NFTNL_EXPR_LOOKUP_SET, &self.set_name)
            .u32(sys::NFTNL_EXPR_LOOKUP_SET_ID, self.set_id);
        if self.invert {
            e.u32(sys::NFTNL_EXPR_LOOKUP_FLAGS, libc::NFT_LOOKUP_F_INV as u32)
                .into_raw()
        } else {
            e.into_raw()
        }
    }
}

/// nft's `inet_service` set key (type 13, 2 bytes, network byte order).
pub struct Port(pub u16);

impl SetKey for Port {
    const TYPE: u32 = 13;
    const LEN: u32 = 2;

    fn data(&self) -> Box<[u8]> {
        Box::new(self.0.to_be_bytes())
    }
}

/// The interface name as nft compares it: all of IFNAMSIZ, zero padded.
pub fn ifname(name: &str) -> [u8; 16] {
    let mut b = [0u8; 16];
    assert!(name.len() < 16, "interface name too long: {name}");
    b[..name.len()].copy_from_slice(name.as_bytes());
    b
}

pub fn op(negate: bool) -> CmpOp {
    if negate {
        CmpOp::Neq
    } else {
        CmpOp::Eq
    }
}

pub fn l4_number(p: Proto) -> u8 {
    match p {
        Proto::Tcp => libc::IPPROTO_TCP as u8,
        Proto::Udp => libc::IPPROTO_UDP as u8,
    }
}

pub fn port_payload(proto: Proto, destination: bool) -> Payload {
    Payload::Transport(match (proto, destination) {
        (Proto::Tcp, true) => TransportHeaderField::Tcp(TcpHeaderField::Dport),
        (Proto::Tcp, false) => TransportHeaderField::Tcp(TcpHeaderField::Sport),
        (Proto::Udp, true) => TransportHeaderField::Udp(UdpHeaderField::Dport),
        (Proto::Udp, false) => TransportHeaderField::Udp(UdpHeaderField::Sport),
    })
}

/// The prefix mask of `len` bits over `bytes` bytes.
pub fn prefix_mask(len: u8, bytes: usize) -> Vec<u8> {
    (0..bytes)
        .map(|i| {
            let bits = (len as usize).saturating_sub(i * 8).min(8);
            (0xff00u16 >> bits) as u8
        })
        .collect()
}

/// The state the reference keeps while adding a rule's matches: the dependencies nft has
/// already emitted in this rule (it emits `meta nfproto` / `meta l4proto` once).
#[derive(Default)]
pub struct Deps {
    pub l3: Option<bool>, // Some(true): IPv4 established
    pub l4: Option<Proto>,
}

impl Deps {
    pub fn l4(&mut self, r: &mut Rule, proto: Proto) {
        if self.l4 != Some(proto) {
            r.add_expr(&Meta::L4Proto);
            r.add_expr(&Cmp::new(CmpOp::Eq, l4_number(proto)));
            self.l4 = Some(proto);
        }
    }

    pub fn l3(&mut self, r: &mut Rule, v4: bool) {
        if self.l3 != Some(v4) {
            r.add_expr(&Meta::NfProto);
            let nfproto = if v4 {
                libc::NFPROTO_IPV4
            } else {
                libc::NFPROTO_IPV6
            };
            r.add_expr(&Cmp::new(CmpOp::Eq, nfproto as u8));
            self.l3 = Some(v4);
        }
    }
}

/// `ip saddr|daddr [!=] a.b.c.d/n` and the ip6 forms. nft loads the whole address for a
/// host prefix, only the leading `n / 8` bytes for other byte-aligned prefixes, and the
/// whole address masked by a `bitwise` otherwise (including `/0`).
pub fn address(r: &mut Rule, deps: &mut Deps, cidr: &Cidr, source: bool, negate: bool) {
    let (v4, addr): (bool, Vec<u8>) = match cidr.addr {
        IpAddr::V4(a) => (true, a.octets().to_vec()),
        IpAddr::V6(a) => (false, a.octets().to_vec()),
    };
    deps.l3(r, v4);
    let full = addr.len();
    let mask = prefix_mask(cidr.len, full);
    let network: Vec<u8> = addr.iter().zip(&mask).map(|(a, m)| a & m).collect();
    let field = match (v4, source) {
        (true, true) => NetworkHeaderField::Ipv4(Ipv4HeaderField::Saddr),
        (true, false) => NetworkHeaderField::Ipv4(Ipv4HeaderField::Daddr),
        (false, true) => NetworkHeaderField::Ipv6(Ipv6HeaderField::Saddr),
        (false, false) => NetworkHeaderField::Ipv6(Ipv6HeaderField::Daddr),
    };
    let bits = cidr.len as usize;
    if bits == full * 8 {
        r.add_expr(&Payload::Network(field));
        r.add_expr(&Cmp::new(op(negate), &network[..]));
    } else if bits % 8 == 0 && bits > 0 {
        let offset = match (v4, source) {
            (true, true) => 12,
            (true, false) => 16,
            (false, true) => 8,
            (false, false) => 24,
        };
        let bytes = bits / 8;
        // The crate calls the fields of `Raw` `*_bits`, but passes them to libnftnl as the
        // payload offset and length, which are in bytes.
        r.add_expr(&Payload::Network(NetworkHeaderField::Raw {
            offset_bits: offset,
            length_bits: bytes as u32,
        }));
        r.add_expr(&Cmp::new(op(negate), &network[..bytes]));
    } else {
        let zero = vec![0u8; full];
        r.add_expr(&Payload::Network(field));
        r.add_expr(&Bitwise::new(&mask[..], &zero[..]));
        r.add_expr(&Cmp::new(op(negate), &network[..]));
    }
}
