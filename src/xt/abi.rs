//! The legacy xtables socket ABI (`linux/netfilter_ipv4/ip_tables.h`,
//! `linux/netfilter_ipv6/ip6_tables.h`, `linux/netfilter/x_tables.h`), x86_64/aarch64 layout
//! (LP64: 8-byte alignment of `XT_ALIGN`, 8-byte pointers).

/// `setsockopt`: replace a table.
pub const IPT_SO_SET_REPLACE: i32 = 64;
/// `setsockopt`: add to the counters of a table.
pub const IPT_SO_SET_ADD_COUNTERS: i32 = 65;
/// `getsockopt`: a table's `ipt_getinfo`.
pub const IPT_SO_GET_INFO: i32 = 64;
/// `getsockopt`: a table's entries.
pub const IPT_SO_GET_ENTRIES: i32 = 65;

/// Size of a table name, NUL included.
pub const XT_TABLE_MAXNAMELEN: usize = 32;
/// Size of a match or target name, NUL included.
pub const XT_EXTENSION_MAXNAMELEN: usize = 29;
/// Size of the ERROR target's chain name.
pub const XT_FUNCTION_MAXNAMELEN: usize = 30;

/// `xt_entry_match` / `xt_entry_target` header: u16 size, name[29], u8 revision.
pub const XT_MATCH_HEADER: usize = 32;
/// Alignment of entries, matches and targets.
pub const XT_ALIGN: usize = 8;

/// `XT_ALIGN(n)`: `n` rounded up to [`XT_ALIGN`].
pub fn xt_align(n: usize) -> usize {
    (n + XT_ALIGN - 1) & !(XT_ALIGN - 1)
}

/// Number of netfilter hooks (PREROUTING … POSTROUTING).
pub const NF_INET_NUMHOOKS: usize = 5;

// Standard verdicts as stored in `xt_standard_target.verdict` (`-NF_x - 1`).
/// The DROP verdict.
pub const VERDICT_DROP: i32 = -1;
/// The ACCEPT verdict.
pub const VERDICT_ACCEPT: i32 = -2;
/// The RETURN verdict.
pub const VERDICT_RETURN: i32 = -5; // XT_RETURN = -NF_REPEAT - 1

/// Size of a standard (verdict) target.
pub const STANDARD_TARGET_SIZE: usize = XT_MATCH_HEADER + 8; // verdict + padding
/// Size of an ERROR target.
pub const ERROR_TARGET_SIZE: usize = XT_MATCH_HEADER + 32; // errorname[30] aligned

/// Per-family layout of `ipt_entry` / `ip6t_entry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// True for `ip6t_entry`.
    pub ipv6: bool,
    /// Size of `ipt_ip` / `ip6t_ip6`.
    pub ip_size: usize,
    /// Size of the whole entry header.
    pub entry_size: usize,
    /// Offset of `target_offset`.
    pub target_offset_at: usize,
    /// Offset of `next_offset`.
    pub next_offset_at: usize,
    /// Offset of `comefrom`.
    pub comefrom_at: usize,
    /// Offset of the entry's counters.
    pub counters_at: usize,
    /// The `getsockopt`/`setsockopt` level.
    pub sockopt_level: i32,
    /// The address family.
    pub family: i32,
}

/// The `ipt_entry` layout.
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

/// The `ip6t_entry` layout.
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
/// IPv4 `-g` (goto instead of jump).
pub const IPT_F_GOTO: u8 = 0x02;
/// IPv6: the rule matches a protocol.
pub const IP6T_F_PROTO: u8 = 0x01;
/// IPv6 `-g` (goto instead of jump).
pub const IP6T_F_GOTO: u8 = 0x04;
// invflags (same values for both families)
/// `! -i`.
pub const INV_VIA_IN: u8 = 0x01;
/// `! -o`.
pub const INV_VIA_OUT: u8 = 0x02;
/// `! -s`.
pub const INV_SRCIP: u8 = 0x08;
/// `! -d`.
pub const INV_DSTIP: u8 = 0x10;
/// `! -p`.
pub const INV_PROTO: u8 = 0x40;

/// `ipt_getinfo`: name[32], valid_hooks, hook_entry[5], underflow[5], num_entries, size.
pub const GETINFO_SIZE: usize = 84;
/// `ipt_get_entries` header: name[32], size, (pad) → entries at 40.
pub const GET_ENTRIES_HEADER: usize = 40;
/// `ipt_replace` header up to the entries: … num_counters, (pad), counters pointer.
pub const REPLACE_HEADER: usize = 96;
/// `xt_counters_info` header: name[32], num_counters, (pad).
pub const COUNTERS_INFO_HEADER: usize = 40;
