//! Decoding `struct nlmsgerr`: the errno (0 for an acknowledgement), the echoed request
//! header (and payload unless the kernel capped it), then extended-ack attributes that name
//! the offending attribute and explain the refusal in words.

use super::consts::*;
use super::wire::{self, Message, NLMSG_HDRLEN};

/// What the kernel's extended acknowledgement adds to an error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtAck {
    /// The kernel's explanation (`NLMSGERR_ATTR_MSG`).
    pub message: Option<String>,
    /// Byte offset of the offending attribute in the request (`NLMSGERR_ATTR_OFFS`).
    pub offset: Option<u32>,
}

/// One `NLMSG_ERROR` reply, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    /// Positive errno; 0 is an acknowledgement.
    pub errno: i32,
    /// The sequence number of the request it answers.
    pub seq: u32,
    /// Extended-ack details, when the socket asked for them.
    pub ext: ExtAck,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl ErrorReply {
    /// Decodes an `NLMSG_ERROR` message; a reply too short to hold one is `EPROTO`.
    pub fn parse(msg: &Message<'_>) -> ErrorReply {
        let p = msg.payload;
        let (Some(raw), Some(echoed_len), Some(seq)) = (u32_at(p, 0), u32_at(p, 4), u32_at(p, 12))
        else {
            return ErrorReply {
                errno: libc::EPROTO,
                seq: 0,
                ext: ExtAck::default(),
            };
        };
        let mut ext = ExtAck::default();
        if msg.flags & NLM_F_ACK_TLVS != 0 {
            let skip = if msg.flags & NLM_F_CAPPED != 0 {
                NLMSG_HDRLEN
            } else {
                wire::align4(echoed_len as usize)
            };
            for a in wire::attrs(p.get(4 + skip..).unwrap_or_default()) {
                match a.ty {
                    NLMSGERR_ATTR_MSG => ext.message = a.str().map(str::to_string),
                    NLMSGERR_ATTR_OFFS => ext.offset = u32_at(a.value, 0),
                    _ => {}
                }
            }
        }
        ErrorReply {
            // The kernel sends the negative errno.
            errno: (raw as i32).wrapping_neg(),
            seq,
            ext,
        }
    }

    /// The error as an `io::Error` (`Ok` for an acknowledgement).
    pub fn into_result(self) -> std::io::Result<()> {
        if self.errno == 0 {
            Ok(())
        } else {
            Err(std::io::Error::from_raw_os_error(self.errno))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::wire::{messages, MessageWriter};

    fn error_message(errno: i32, flags: u16, ext: &[(u16, &[u8])]) -> Vec<u8> {
        let mut w = MessageWriter::default();
        let mut body = (-errno).to_ne_bytes().to_vec();
        // Echoed request header: length 16, type 0, flags 0, seq 42, pid 0.
        body.extend_from_slice(&16u32.to_ne_bytes());
        body.extend_from_slice(&[0; 4]);
        body.extend_from_slice(&42u32.to_ne_bytes());
        body.extend_from_slice(&[0; 4]);
        let start = w.begin_plain(NLMSG_ERROR, flags, 1, &body);
        for (ty, v) in ext {
            w.attr(*ty, v);
        }
        w.end_message(start);
        w.buf
    }

    #[test]
    fn decodes_errno_seq_and_extended_ack() {
        let bytes = error_message(
            libc::ENOENT,
            NLM_F_ACK_TLVS | NLM_F_CAPPED,
            &[
                (NLMSGERR_ATTR_MSG, b"no such chain\0"),
                (NLMSGERR_ATTR_OFFS, &36u32.to_ne_bytes()),
            ],
        );
        let m = messages(&bytes).next().unwrap();
        let e = ErrorReply::parse(&m);
        assert_eq!(e.errno, libc::ENOENT);
        assert_eq!(e.seq, 42);
        assert_eq!(e.ext.message.as_deref(), Some("no such chain"));
        assert_eq!(e.ext.offset, Some(36));
    }

    #[test]
    fn an_acknowledgement_is_ok_and_a_short_reply_is_a_protocol_error() {
        let bytes = error_message(0, 0, &[]);
        let m = messages(&bytes).next().unwrap();
        assert!(ErrorReply::parse(&m).into_result().is_ok());
        let short = Message {
            msg_type: NLMSG_ERROR,
            flags: 0,
            seq: 1,
            payload: &[0; 6],
        };
        assert_eq!(ErrorReply::parse(&short).errno, libc::EPROTO);
    }
}
