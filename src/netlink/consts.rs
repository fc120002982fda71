//! Generic netlink numbers (`include/uapi/linux/netlink.h`): message flags, control message
//! types, extended-ack attributes and attribute flags. Family-specific numbers live with
//! their family (`crate::nft::abi`, `crate::netlink::route`).

/// `NETLINK_ROUTE`: rtnetlink (rules, routes, addresses).
pub const NETLINK_ROUTE: isize = 0;
/// `NETLINK_NETFILTER`: nfnetlink, which carries nf_tables.
pub const NETLINK_NETFILTER: i32 = 12;

/// A request (every message we send).
pub const NLM_F_REQUEST: u16 = 0x1;
/// One part of a multi-part answer (dumps).
pub const NLM_F_MULTI: u16 = 0x2;
/// Ask for an acknowledgement.
pub const NLM_F_ACK: u16 = 0x4;
/// A dump request (`NLM_F_ROOT | NLM_F_MATCH`).
pub const NLM_F_DUMP: u16 = 0x300;
/// Create the object if it does not exist.
pub const NLM_F_CREATE: u16 = 0x400;
/// Fail with `EEXIST` if the object exists.
pub const NLM_F_EXCL: u16 = 0x200;
/// Add at the end of the list (nf_tables rules).
pub const NLM_F_APPEND: u16 = 0x800;
/// In an error reply: the echoed request was cut to its header.
pub const NLM_F_CAPPED: u16 = 0x100;
/// In an error reply: extended-ack TLVs follow.
pub const NLM_F_ACK_TLVS: u16 = 0x200;

/// An error (or, with errno 0, an acknowledgement).
pub const NLMSG_ERROR: u16 = 0x2;
/// The end of a dump.
pub const NLMSG_DONE: u16 = 0x3;
/// Extended ack: the kernel's message text.
pub const NLMSGERR_ATTR_MSG: u16 = 1;
/// Extended ack: offset of the offending attribute in the request.
pub const NLMSGERR_ATTR_OFFS: u16 = 2;

/// Attribute type flag: the value is a list of attributes.
pub const NLA_F_NESTED: u16 = 1 << 15;
/// Masks the nested and byte-order flags off an attribute type.
pub const NLA_TYPE_MASK: u16 = !(1 << 15 | 1 << 14);
