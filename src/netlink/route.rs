//! rtnetlink's fixed headers as types (`rtmsg`, `fib_rule_hdr`, `ifaddrmsg` from
//! `include/uapi/linux/rtnetlink.h`, `fib_rules.h`, `if_addr.h`) and the message and
//! attribute numbers the policy routing uses. Each header writes itself to, and reads
//! itself from, the bytes after `nlmsghdr`, so no caller indexes a byte array.

/// `RTM_NEWADDR`.
pub const RTM_NEWADDR: u16 = 20;
/// `RTM_DELADDR`.
pub const RTM_DELADDR: u16 = 21;
/// `RTM_GETADDR`.
pub const RTM_GETADDR: u16 = 22;
/// `RTM_NEWROUTE`.
pub const RTM_NEWROUTE: u16 = 24;
/// `RTM_DELROUTE`.
pub const RTM_DELROUTE: u16 = 25;
/// `RTM_GETROUTE`.
pub const RTM_GETROUTE: u16 = 26;
/// `RTM_NEWRULE`.
pub const RTM_NEWRULE: u16 = 32;
/// `RTM_DELRULE`.
pub const RTM_DELRULE: u16 = 33;
/// `RTM_GETRULE`.
pub const RTM_GETRULE: u16 = 34;

/// `FRA_FWMARK`: the rule's firewall mark.
pub const FRA_FWMARK: u16 = 10;
/// `FRA_TABLE`: the rule's table (32 bits).
pub const FRA_TABLE: u16 = 15;
/// `RTA_OIF`: output interface index.
pub const RTA_OIF: u16 = 4;
/// `RTA_TABLE`: the route's table (32 bits).
pub const RTA_TABLE: u16 = 15;
/// `IFA_ADDRESS`: the interface address.
pub const IFA_ADDRESS: u16 = 1;
/// `IFA_LOCAL`: the local address.
pub const IFA_LOCAL: u16 = 2;

/// `FR_ACT_TO_TBL`: a rule that looks up a table.
pub const FR_ACT_TO_TBL: u8 = 1;
/// `RTPROT_BOOT`: what `ip route add` sets.
pub const RTPROT_BOOT: u8 = 3;
/// `RT_SCOPE_HOST`.
pub const RT_SCOPE_HOST: u8 = 254;
/// `RTN_LOCAL`: a local route.
pub const RTN_LOCAL: u8 = 2;

/// `struct rtmsg`: the header of a route message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtMsg {
    /// Address family.
    pub family: u8,
    /// Destination prefix length.
    pub dst_len: u8,
    /// Source prefix length.
    pub src_len: u8,
    /// Type of service.
    pub tos: u8,
    /// Table (8 bits; `RTA_TABLE` carries larger ones).
    pub table: u8,
    /// Who installed the route.
    pub protocol: u8,
    /// Distance to the destination.
    pub scope: u8,
    /// Route type (`RTN_*`).
    pub kind: u8,
    /// `RTM_F_*` flags.
    pub flags: u32,
}

/// `struct fib_rule_hdr`: the header of a policy routing rule message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FibRuleHdr {
    /// Address family.
    pub family: u8,
    /// Destination prefix length.
    pub dst_len: u8,
    /// Source prefix length.
    pub src_len: u8,
    /// Type of service.
    pub tos: u8,
    /// Table (8 bits; `FRA_TABLE` carries larger ones).
    pub table: u8,
    /// What the rule does (`FR_ACT_*`).
    pub action: u8,
    /// `FIB_RULE_*` flags.
    pub flags: u32,
}

/// `struct ifaddrmsg`: the header of an address message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IfAddrMsg {
    /// Address family.
    pub family: u8,
    /// Prefix length.
    pub prefix_len: u8,
    /// `IFA_F_*` flags (8 bits).
    pub flags: u8,
    /// Address scope.
    pub scope: u8,
    /// Interface index.
    pub index: u32,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

impl RtMsg {
    /// Size on the wire.
    pub const LEN: usize = 12;

    /// The header's bytes.
    pub fn to_bytes(self) -> [u8; 12] {
        let f = self.flags.to_ne_bytes();
        [
            self.family,
            self.dst_len,
            self.src_len,
            self.tos,
            self.table,
            self.protocol,
            self.scope,
            self.kind,
            f[0],
            f[1],
            f[2],
            f[3],
        ]
    }

    /// Reads the header at the start of a message payload.
    pub fn parse(b: &[u8]) -> Option<RtMsg> {
        (b.len() >= Self::LEN).then(|| RtMsg {
            family: b[0],
            dst_len: b[1],
            src_len: b[2],
            tos: b[3],
            table: b[4],
            protocol: b[5],
            scope: b[6],
            kind: b[7],
            flags: u32_at(b, 8),
        })
    }
}

impl FibRuleHdr {
    /// Size on the wire.
    pub const LEN: usize = 12;

    /// The header's bytes (the two reserved bytes are zero).
    pub fn to_bytes(self) -> [u8; 12] {
        let f = self.flags.to_ne_bytes();
        [
            self.family,
            self.dst_len,
            self.src_len,
            self.tos,
            self.table,
            0,
            0,
            self.action,
            f[0],
            f[1],
            f[2],
            f[3],
        ]
    }

    /// Reads the header at the start of a message payload.
    pub fn parse(b: &[u8]) -> Option<FibRuleHdr> {
        (b.len() >= Self::LEN).then(|| FibRuleHdr {
            family: b[0],
            dst_len: b[1],
            src_len: b[2],
            tos: b[3],
            table: b[4],
            action: b[7],
            flags: u32_at(b, 8),
        })
    }
}

impl IfAddrMsg {
    /// Size on the wire.
    pub const LEN: usize = 8;

    /// The header's bytes.
    pub fn to_bytes(self) -> [u8; 8] {
        let i = self.index.to_ne_bytes();
        [
            self.family,
            self.prefix_len,
            self.flags,
            self.scope,
            i[0],
            i[1],
            i[2],
            i[3],
        ]
    }

    /// Reads the header at the start of a message payload.
    pub fn parse(b: &[u8]) -> Option<IfAddrMsg> {
        (b.len() >= Self::LEN).then(|| IfAddrMsg {
            family: b[0],
            prefix_len: b[1],
            flags: b[2],
            scope: b[3],
            index: u32_at(b, 4),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_through_their_bytes() {
        let rt = RtMsg {
            family: 10,
            table: 133,
            protocol: RTPROT_BOOT,
            scope: RT_SCOPE_HOST,
            kind: RTN_LOCAL,
            flags: 0x1234,
            ..Default::default()
        };
        assert_eq!(RtMsg::parse(&rt.to_bytes()), Some(rt));
        let rule = FibRuleHdr {
            family: 2,
            table: 133,
            action: FR_ACT_TO_TBL,
            ..Default::default()
        };
        assert_eq!(rule.to_bytes()[7], FR_ACT_TO_TBL);
        assert_eq!(FibRuleHdr::parse(&rule.to_bytes()), Some(rule));
        let addr = IfAddrMsg {
            family: 10,
            prefix_len: 128,
            index: 1,
            ..Default::default()
        };
        assert_eq!(IfAddrMsg::parse(&addr.to_bytes()), Some(addr));
        assert_eq!(IfAddrMsg::parse(&[0; 7]), None);
    }
}
