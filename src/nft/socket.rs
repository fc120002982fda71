//! The `NETLINK_NETFILTER` socket: sending a batch and reading every reply, and dumps.
//!
//! nfnetlink processes a batch synchronously inside `sendmsg`, so when `send` returns every
//! reply is already queued; we drain them without blocking (kernel-notes §2). A batch is
//! committed only if **no** reply carries an error (the kernel reports every error even for
//! messages that asked for no ACK, and ACKs the messages it parsed even when it then aborts
//! the transaction, so ACKs prove nothing).

use super::abi::*;
use super::batch::Batch;
use super::wire::{self, messages, NFGENMSG_LEN, NLMSG_HDRLEN};
use netlink_sys::{Socket, SocketAddr};
use std::io;
use std::os::fd::AsRawFd;
use thiserror::Error;

/// One error reply, tied to the object of the message it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelError {
    pub object: String,
    pub errno: i32,
    /// The kernel's extended-ack text, when it sent one.
    pub message: Option<String>,
}

impl std::fmt::Display for KernelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}",
            self.object,
            io::Error::from_raw_os_error(self.errno)
        )?;
        if let Some(m) = &self.message {
            write!(f, " ({m})")?;
        }
        Ok(())
    }
}

#[derive(Debug, Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    #[error("the kernel rejected the batch, nothing was changed: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Rejected(Vec<KernelError>),
    #[error("dump failed: {0}")]
    Dump(io::Error),
}

impl NetlinkError {
    pub fn errnos(&self) -> Vec<i32> {
        match self {
            NetlinkError::Rejected(e) => e.iter().map(|e| e.errno).collect(),
            _ => vec![],
        }
    }
}

/// Receive buffers large enough for one ACK per message of a big batch.
const SOCKET_BUFFER: usize = 16 << 20;

pub struct NfSocket {
    sock: Socket,
    next_seq: u32,
    buf: Vec<u8>,
}

impl NfSocket {
    /// Opens the socket in the calling thread's network namespace; it stays bound to that
    /// namespace for its whole life.
    pub fn open() -> io::Result<NfSocket> {
        let mut sock = Socket::new(NETLINK_NETFILTER as isize)?;
        sock.bind(&SocketAddr::new(0, 0))?;
        sock.set_ext_ack(true)?;
        sock.set_cap_ack(true)?;
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
            let size = SOCKET_BUFFER as libc::c_int;
            // SAFETY: a valid socket descriptor and a c_int option value of the stated size.
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    &size as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(1);
        Ok(NfSocket {
            sock,
            next_seq: seed | 1,
            buf: vec![0; 1 << 16],
        })
    }

    /// Sequence numbers for the next batch; the caller encodes with this as `first_seq`.
    pub fn reserve_seqs(&mut self, count: usize) -> u32 {
        let first = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(count as u32 + 1);
        first
    }

    /// Sends the batch in one `send` and checks every reply.
    pub fn send_batch(&mut self, batch: &Batch) -> Result<(), NetlinkError> {
        let sent = self.sock.send(&batch.bytes, 0)?;
        if sent != batch.bytes.len() {
            return Err(NetlinkError::Io(io::Error::other(
                "short send of the batch",
            )));
        }
        let mut errors = Vec::new();
        let mut acked = std::collections::HashSet::new();
        loop {
            let n = match self.sock.recv(&mut &mut self.buf[..], libc::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            };
            for msg in messages(&self.buf[..n]) {
                if msg.msg_type != NLMSG_ERROR {
                    continue;
                }
                let (errno, echoed_seq, ext) = parse_error(msg);
                if errno == 0 {
                    acked.insert(echoed_seq);
                    continue;
                }
                let object = batch
                    .message(echoed_seq)
                    .map(|m| m.object.clone())
                    .unwrap_or_else(|| "the transaction".to_string());
                // The extended ack points at the offending attribute inside the message.
                let object = match ext.offset {
                    Some(off) if off as usize >= NLMSG_HDRLEN + NFGENMSG_LEN => {
                        format!("{object} (attribute at byte {off} of the message)")
                    }
                    _ => object,
                };
                errors.push(KernelError {
                    object,
                    errno: -errno,
                    message: ext.message,
                });
            }
        }
        if !errors.is_empty() {
            return Err(NetlinkError::Rejected(errors));
        }
        // No error is the commit. Kernels ≥ 6.10 also ACK BATCH_END once committed; older
        // ones ignore the flag, so its absence proves nothing and is not waited for.
        let end = batch.messages.last().map(|m| m.seq);
        tracing::trace!(
            commit_acked = end.map(|s| acked.contains(&s)).unwrap_or(false),
            "batch committed"
        );
        Ok(())
    }

    /// A `GET…` dump: returns the attribute area of every reply message.
    pub fn dump(
        &mut self,
        msg: u16,
        family: u8,
        attrs: impl FnOnce(&mut wire::MessageWriter),
    ) -> Result<Vec<Vec<u8>>, NetlinkError> {
        let seq = self.reserve_seqs(1);
        let mut w = wire::MessageWriter::default();
        let start = w.begin_message(
            (NFNL_SUBSYS_NFTABLES << 8) | msg,
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            family,
            0,
        );
        attrs(&mut w);
        w.end_message(start);
        self.sock.send(&w.buf, 0).map_err(NetlinkError::Dump)?;
        let mut out = Vec::new();
        loop {
            let n = self
                .sock
                .recv(&mut &mut self.buf[..], 0)
                .map_err(NetlinkError::Dump)?;
            for m in messages(&self.buf[..n]) {
                if m.seq != seq {
                    continue;
                }
                match m.msg_type {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let (errno, _, _) = parse_error(m);
                        if errno == 0 {
                            return Ok(out);
                        }
                        return Err(NetlinkError::Dump(io::Error::from_raw_os_error(-errno)));
                    }
                    _ => out.push(m.payload.get(NFGENMSG_LEN..).unwrap_or_default().to_vec()),
                }
                if m.flags & NLM_F_MULTI == 0 {
                    return Ok(out);
                }
            }
        }
    }
}

#[derive(Default)]
struct ExtAck {
    message: Option<String>,
    offset: Option<u32>,
}

/// `struct nlmsgerr`: the errno, the echoed request header (and payload unless capped), then
/// extended-ack attributes.
fn parse_error(msg: wire::Message<'_>) -> (i32, u32, ExtAck) {
    let p = msg.payload;
    if p.len() < 4 + NLMSG_HDRLEN {
        return (-libc::EPROTO, 0, ExtAck::default());
    }
    let errno = i32::from_ne_bytes(p[0..4].try_into().expect("4 bytes"));
    let echoed_len = u32::from_ne_bytes(p[4..8].try_into().expect("4 bytes")) as usize;
    let echoed_seq = u32::from_ne_bytes(p[12..16].try_into().expect("4 bytes"));
    let mut ext = ExtAck::default();
    if msg.flags & NLM_F_ACK_TLVS != 0 {
        let skip = if msg.flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            wire::align4(echoed_len)
        };
        if let Some(tlvs) = p.get(4 + skip..) {
            for a in wire::attrs(tlvs) {
                match a.ty {
                    NLMSGERR_ATTR_MSG => ext.message = a.str().map(str::to_string),
                    NLMSGERR_ATTR_OFFS => {
                        ext.offset = a
                            .value
                            .get(..4)
                            .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
                    }
                    _ => {}
                }
            }
        }
    }
    (errno, echoed_seq, ext)
}
