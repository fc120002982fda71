//! Netlink framing: `nlmsghdr` + `nfgenmsg` + attributes (TLVs, 4-byte aligned, nested
//! attributes flagged `NLA_F_NESTED`). Writing and reading, nothing nf_tables-specific.

use super::consts::*;

/// Size of `struct nlmsghdr`.
pub const NLMSG_HDRLEN: usize = 16;
/// Size of `struct nfgenmsg` (nfnetlink's family header).
pub const NFGENMSG_LEN: usize = 4;

/// Rounds up to netlink's 4-byte alignment.
pub fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A growing buffer of netlink messages.
#[derive(Debug, Default, Clone)]
pub struct MessageWriter {
    /// The messages written so far.
    pub buf: Vec<u8>,
}

impl MessageWriter {
    /// Starts a message; returns its offset for [`MessageWriter::end_message`].
    pub fn begin_message(
        &mut self,
        msg_type: u16,
        flags: u16,
        seq: u32,
        family: u8,
        res_id: u16,
    ) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched at the end
        self.buf.extend_from_slice(&msg_type.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        start
    }

    /// Starts a message whose family header the caller writes (rtnetlink's `rtmsg` & co).
    pub fn begin_plain(&mut self, msg_type: u16, flags: u16, seq: u32, header: &[u8]) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&msg_type.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(header);
        self.buf
            .resize(start + NLMSG_HDRLEN + align4(header.len()), 0);
        start
    }

    /// Patches the length of the message started at `start`.
    pub fn end_message(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    /// One attribute with a raw value (padded to 4 bytes).
    pub fn attr(&mut self, ty: u16, data: &[u8]) {
        self.attr_zero_extended(ty, data, 0);
    }

    /// A 32-bit attribute in network byte order (nf_tables' convention).
    pub fn attr_u32(&mut self, ty: u16, value: u32) {
        self.attr(ty, &value.to_be_bytes());
    }

    /// A NUL-terminated string attribute.
    pub fn attr_str(&mut self, ty: u16, s: &str) {
        self.attr_zero_extended(ty, s.as_bytes(), 1);
    }

    /// `data` followed by `nuls` zero bytes (a string's NUL) as one attribute, padded to 4
    /// bytes; written in place (a batch has a few hundred strings: every expression's name).
    fn attr_zero_extended(&mut self, ty: u16, data: &[u8], nuls: usize) {
        let len = 4 + data.len() + nuls;
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf
            .resize(self.buf.len() + nuls + align4(len) - len, 0);
    }

    /// Starts a nested attribute; returns its offset for [`MessageWriter::nest_end`].
    pub fn nest_begin(&mut self, ty: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        start
    }

    /// Patches the length of the nested attribute started at `start`.
    pub fn nest_end(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }
}

/// One netlink message read from a buffer.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// `nlmsg_type`.
    pub msg_type: u16,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// `nlmsg_seq`.
    pub seq: u32,
    /// Everything after the 16-byte header.
    pub payload: &'a [u8],
}

/// Splits a receive buffer into messages; stops at a truncated tail.
pub fn messages(mut buf: &[u8]) -> impl Iterator<Item = Message<'_>> {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes(buf[0..4].try_into().ok()?) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return None;
        }
        let msg = Message {
            msg_type: u16::from_ne_bytes([buf[4], buf[5]]),
            flags: u16::from_ne_bytes([buf[6], buf[7]]),
            seq: u32::from_ne_bytes(buf[8..12].try_into().ok()?),
            payload: &buf[NLMSG_HDRLEN..len],
        };
        buf = &buf[align4(len).min(buf.len())..];
        Some(msg)
    })
}

/// One attribute: its type (flags masked off) and value.
#[derive(Debug, Clone, Copy)]
pub struct Attr<'a> {
    /// The type, without the nested and byte-order flags.
    pub ty: u16,
    /// The value, without padding.
    pub value: &'a [u8],
}

impl<'a> Attr<'a> {
    /// The value as a big-endian `u32` (nf_tables' numbers).
    pub fn u32_be(&self) -> Option<u32> {
        Some(u32::from_be_bytes(self.value.get(..4)?.try_into().ok()?))
    }

    /// The value as a NUL-terminated string.
    pub fn str(&self) -> Option<&'a str> {
        let end = self
            .value
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(self.value.len());
        std::str::from_utf8(&self.value[..end]).ok()
    }

    /// The attributes nested in this one.
    pub fn nested(&self) -> impl Iterator<Item = Attr<'a>> {
        attrs(self.value)
    }

    /// The first nested attribute of type `ty`.
    pub fn find(&self, ty: u16) -> Option<Attr<'a>> {
        self.nested().find(|a| a.ty == ty)
    }
}

/// Splits an attribute area into attributes; stops at a truncated tail.
pub fn attrs(mut buf: &[u8]) -> impl Iterator<Item = Attr<'_>> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let attr = Attr {
            ty,
            value: &buf[4..len],
        };
        buf = &buf[align4(len).min(buf.len())..];
        Some(attr)
    })
}

/// The first attribute of type `ty` in an attribute area.
pub fn find_attr(buf: &[u8], ty: u16) -> Option<Attr<'_>> {
    attrs(buf).find(|a| a.ty == ty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_reads_back_nested_attributes() {
        let mut w = MessageWriter::default();
        let m = w.begin_message(0x0a06, NLM_F_REQUEST, 7, 1, 0);
        w.attr_str(1, "istio-proxy-nat");
        let n = w.nest_begin(4);
        w.attr_u32(2, 0xdeadbeef);
        w.nest_end(n);
        w.end_message(m);
        let msgs: Vec<_> = messages(&w.buf).collect();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].seq, 7);
        assert_eq!(msgs[0].msg_type, 0x0a06);
        let body = &msgs[0].payload[NFGENMSG_LEN..];
        assert_eq!(find_attr(body, 1).unwrap().str(), Some("istio-proxy-nat"));
        let nest = find_attr(body, 4).unwrap();
        assert_eq!(nest.find(2).unwrap().u32_be(), Some(0xdeadbeef));
        assert_eq!(w.buf.len() % 4, 0);
    }
}
