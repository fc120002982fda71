//! The `NETLINK_NETFILTER` socket: sending a batch and reading every reply, and dumps.
//!
//! nfnetlink processes a batch synchronously inside `sendmsg`, so when `send` returns every
//! reply is already queued; we drain them without blocking (`docs/kernel-facts.md` §2.2). A
//! batch is committed only if **no** reply carries an error (the kernel reports every error
//! even for messages that asked for no ACK, and ACKs the messages it parsed even when it then
//! aborts the transaction, so ACKs prove nothing).

use super::abi::*;
use super::batch::Batch;
use crate::kernel::{NfDump, NfTables};
use crate::netlink::error::ErrorReply;
use crate::netlink::socket::NetlinkSocket;
use crate::netlink::wire::{MessageWriter, NFGENMSG_LEN, NLMSG_HDRLEN};
use std::io;
use thiserror::Error;

/// One error reply, tied to the object of the message it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelError {
    /// What the refused message creates or deletes (`rule 3 of inet istio-proxy-nat …`).
    pub object: String,
    /// The errno the kernel answered.
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

/// What can go wrong talking nf_tables.
#[derive(Debug, Error)]
pub enum NetlinkError {
    /// The socket could not be opened, or a send or receive failed.
    #[error("netlink socket: {0}{hint}", hint = capability_hint(.0.raw_os_error()))]
    Io(#[from] io::Error),
    /// The kernel refused the batch (and so committed none of it).
    #[error("the kernel rejected the batch, nothing was changed: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Rejected(Vec<KernelError>),
    /// A dump could not be read: the state is unknown, not empty.
    #[error("could not read the nf_tables state (dump failed): {0}{hint}", hint = capability_hint(.0.raw_os_error()))]
    Dump(io::Error),
}

/// What a refused nf_tables call needs.
fn capability_hint(errno: Option<i32>) -> &'static str {
    match errno {
        Some(libc::EPERM | libc::EACCES) => " (nf_tables needs CAP_NET_ADMIN)",
        _ => "",
    }
}

impl NetlinkError {
    /// The errnos of a refused batch (empty for other errors).
    pub fn errnos(&self) -> Vec<i32> {
        match self {
            NetlinkError::Rejected(e) => e.iter().map(|e| e.errno).collect(),
            _ => vec![],
        }
    }

    /// The errno behind the error, when there is one (the first, for a refused batch).
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Io(e) | NetlinkError::Dump(e) => e.raw_os_error(),
            NetlinkError::Rejected(e) => e.first().map(|e| e.errno),
        }
    }
}

/// Receive buffers large enough for one ACK per message of a big batch.
const SOCKET_BUFFER: usize = 16 << 20;

/// An nf_tables socket in the namespace of the thread that opened it.
pub struct NfSocket {
    sock: NetlinkSocket,
}

impl NfSocket {
    /// Opens the socket in the calling thread's network namespace; it stays bound to that
    /// namespace for its whole life.
    pub fn open() -> io::Result<NfSocket> {
        let mut sock = NetlinkSocket::open(NETLINK_NETFILTER as isize, 1 << 16)?;
        sock.extended_acks()?;
        sock.force_buffers(SOCKET_BUFFER);
        Ok(NfSocket { sock })
    }
}

impl NfTables for NfSocket {
    fn reserve_seqs(&mut self, count: usize) -> u32 {
        self.sock.reserve_seqs(count)
    }

    /// Sends the batch in one `send` and checks every reply.
    fn send_batch(&mut self, batch: &Batch) -> Result<(), NetlinkError> {
        self.sock.send(&batch.bytes)?;
        let mut errors = Vec::new();
        let mut committed_ack = false;
        let end = batch.messages.last().map(|m| m.seq);
        self.sock.drain(|msg| {
            if msg.msg_type != NLMSG_ERROR {
                return;
            }
            let reply = ErrorReply::parse(&msg);
            if reply.errno == 0 {
                committed_ack |= Some(reply.seq) == end;
                return;
            }
            errors.push(refusal(batch, reply));
        })?;
        if !errors.is_empty() {
            return Err(NetlinkError::Rejected(errors));
        }
        // No error is the commit. Kernels ≥ 6.10 also ACK BATCH_END once committed; older
        // ones ignore the flag, so its absence proves nothing and is not waited for.
        tracing::trace!(commit_acked = committed_ack, "batch committed");
        Ok(())
    }

    fn dump(&mut self, request: NfDump<'_>) -> Result<Vec<Vec<u8>>, NetlinkError> {
        let seq = self.sock.reserve_seqs(1);
        let mut w = MessageWriter::default();
        let msg = match request {
            NfDump::Tables => NFT_MSG_GETTABLE,
            NfDump::Chains => NFT_MSG_GETCHAIN,
            NfDump::Sets => NFT_MSG_GETSET,
            NfDump::SetElements { .. } => NFT_MSG_GETSETELEM,
            NfDump::Rules { .. } => NFT_MSG_GETRULE,
        };
        let start = w.begin_message(
            (NFNL_SUBSYS_NFTABLES << 8) | msg,
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
            NFPROTO_INET,
            0,
        );
        match request {
            NfDump::SetElements { table, set } => {
                w.attr_str(NFTA_SET_ELEM_LIST_TABLE, table);
                w.attr_str(NFTA_SET_ELEM_LIST_SET, set);
            }
            NfDump::Rules { table } => w.attr_str(NFTA_RULE_TABLE, table),
            _ => {}
        }
        w.end_message(start);
        self.sock.send(&w.buf).map_err(NetlinkError::Dump)?;
        let mut out = Vec::new();
        self.sock
            .dump(seq, |payload| {
                out.push(payload.get(NFGENMSG_LEN..).unwrap_or_default().to_vec())
            })
            .map_err(NetlinkError::Dump)?;
        Ok(out)
    }
}

/// An error reply as a refusal of the object its message stands for.
pub(crate) fn refusal(batch: &Batch, reply: ErrorReply) -> KernelError {
    let object = batch
        .message(reply.seq)
        .map(|m| m.object.to_string())
        .unwrap_or_else(|| "the transaction".to_string());
    // The extended ack points at the offending attribute inside the message.
    let object = match reply.ext.offset {
        Some(off) if off as usize >= NLMSG_HDRLEN + NFGENMSG_LEN => {
            format!("{object} (attribute at byte {off} of the message)")
        }
        _ => object,
    };
    KernelError {
        object,
        errno: reply.errno,
        message: reply.ext.message,
    }
}
