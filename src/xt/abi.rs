//! The legacy xtables socket ABI (`linux/netfilter_ipv4/ip_tables.h`,
//! `linux/netfilter_ipv6/ip6_tables.h`, `linux/netfilter/x_tables.h`), x86_64/aarch64 layout
//! (LP64: 8-byte alignment of `XT_ALIGN`, 8-byte pointers).

pub const IPT_SO_SET_REPLACE: i32 = 64;
pub const IPT_SO_SET_ADD_COUNTERS: i32 = 65;
pub const IPT_SO_GET_INFO: i32 = 64;
pub const IPT_SO_GET_ENTRIES: i32 = 65;

pub const XT_TABLE_MAXNAMELEN: usize = 32;
pub const XT_EXTENSION_MAXNAMELEN: usize = 29;
pub const XT_FUNCTION_MAXNAMELEN: usize = 30;

/// `xt_entry_match` / `xt_entry_target` header: u16 size, name[29], u8 revision.
pub const XT_MATCH_HEADER: usize = 32;
pub const XT_ALIGN: usize = 8;

pub fn xt_align(n: usize) -> usize {
    (n + XT_ALIGN - 1) & !(XT_ALIGN - 1)
}

pub const NF_INET_NUMHOOKS: usize = 5;

// Standard verdicts as stored in `xt_standard_target.verdict` (`-NF_x - 1`).
pub const VERDICT_DROP: i32 = -1;
pub const VERDICT_ACCEPT: i32 = -2;
pub const VERDICT_RETURN: i32 = -5; // XT_RETURN = -NF_REPEAT - 1

pub const STANDARD_TARGET_SIZE: usize = XT_MATCH_HEADER + 8; // verdict + padding
pub const ERROR_TARGET_SIZE: usize = XT_MATCH_HEADER + 32; // errorname[30] aligned

/// Per-family layout of `ipt_entry` / `ip6t_entry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub ipv6: bool,
    /// Size of `ipt_ip` / `ip6t_ip6`.
    pub ip_size: usize,
    /// Size of the whole entry header.
    pub entry_size: usize,
    pub target_offset_at: usize,
    pub next_offset_at: usize,
    pub comefrom_at: usize,
    pub counters_at: usize,
    pub sockopt_level: i32,
    pub family: i32,
}

pub const IPV4: Layout = Layout {
    ipv6: false,
    ip_size: 84,
    entry_size: 112,
    target_offset_at: 88,
    next_offset_at: 90,
    comefrom_at: 92,
    counters_at: 96,
    sockopt_level: libc::IPPROTO_IP,
    family: libc::AF_INET,
};

pub const IPV6: Layout = Layout {
    ipv6: true,
    ip_size: 136,
    entry_size: 168,
    target_offset_at: 140,
    next_offset_at: 142,
    comefrom_at: 144,
    counters_at: 152,
    sockopt_level: libc::IPPROTO_IPV6,
    family: libc::AF_INET6,
};

// `ipt_ip.flags` / `ip6t_ip6.flags`
pub const IPT_F_GOTO: u8 = 0x02;
pub const IP6T_F_PROTO: u8 = 0x01;
pub const IP6T_F_GOTO: u8 = 0x04;
// invflags (same values for both families)
pub const INV_VIA_IN: u8 = 0x01;
pub const INV_VIA_OUT: u8 = 0x02;
pub const INV_SRCIP: u8 = 0x08;
pub const INV_DSTIP: u8 = 0x10;
pub const INV_PROTO: u8 = 0x40;

/// `ipt_getinfo`: name[32], valid_hooks, hook_entry[5], underflow[5], num_entries, size.
pub const GETINFO_SIZE: usize = 84;
/// `ipt_get_entries` header: name[32], size, (pad) → entries at 40.
pub const GET_ENTRIES_HEADER: usize = 40;
/// `ipt_replace` header up to the entries: … num_counters, (pad), counters pointer.
pub const REPLACE_HEADER: usize = 96;
/// `xt_counters_info` header: name[32], num_counters, (pad).
pub const COUNTERS_INFO_HEADER: usize = 40;
