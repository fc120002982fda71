//! A netlink socket with the three exchanges we need: a request answered by one ACK, a dump
//! answered by many messages and `NLMSG_DONE`, and a batch whose replies are already queued
//! when `send` returns (nfnetlink handles a batch inside `sendmsg`, `docs/kernel-facts.md`
//! §2.2).

use super::consts::*;
use super::error::ErrorReply;
use super::wire::{messages, Message};
use netlink_sys::{Socket, SocketAddr};
use std::io;
use std::os::fd::AsRawFd;

/// A bound netlink socket of one protocol, in the namespace of the thread that opened it.
pub struct NetlinkSocket {
    sock: Socket,
    next_seq: u32,
    buf: Vec<u8>,
}

impl NetlinkSocket {
    /// Opens and binds a socket of `protocol` (`NETLINK_ROUTE`, `NETLINK_NETFILTER`) in the
    /// calling thread's network namespace; it stays there for its whole life.
    pub fn open(protocol: isize, buffer: usize) -> io::Result<NetlinkSocket> {
        let mut sock = Socket::new(protocol)?;
        sock.bind(&SocketAddr::new(0, 0))?;
        // Sequence numbers start somewhere unpredictable so that a stale reply queued for
        // an earlier socket of this port can never be taken for ours.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(1);
        Ok(NetlinkSocket {
            sock,
            next_seq: seed | 1,
            // Capacity only: the kernel writes the replies into it. Zeroing it first would
            // touch (and fault in) all of its pages on every open, ≈ 1.3 µs each on our VM.
            buf: Vec::with_capacity(buffer),
        })
    }

    /// Receives one datagram into the buffer (replacing what it held); returns its length.
    fn receive(&mut self, flags: libc::c_int) -> io::Result<usize> {
        self.buf.clear();
        // `Vec<u8>` as `BufMut`: recv fills the spare capacity and sets the length.
        self.sock.recv(&mut self.buf, flags)
    }

    /// Asks for extended acknowledgements (the kernel's text and the offending attribute)
    /// and for capped ones (no echo of the whole request in every error).
    pub fn extended_acks(&mut self) -> io::Result<()> {
        self.sock.set_ext_ack(true)?;
        self.sock.set_cap_ack(true)
    }

    /// Raises both kernel buffers to `size` (root may exceed the sysctl limits); best effort.
    pub fn force_buffers(&self, size: usize) {
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
            let size = size as libc::c_int;
            // SAFETY: a valid socket descriptor and a c_int option value of the stated size.
            unsafe {
                libc::setsockopt(
                    self.sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    &size as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }

    /// Reserves `count` consecutive sequence numbers and returns the first.
    pub fn reserve_seqs(&mut self, count: usize) -> u32 {
        let first = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(count as u32 + 1);
        first
    }

    /// Sends `bytes` in one `send`; a short send is an error.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let sent = self.sock.send(bytes, 0)?;
        if sent != bytes.len() {
            return Err(io::Error::other("short send of a netlink message"));
        }
        Ok(())
    }

    /// Hands every reply already queued to `each`, without blocking.
    pub fn drain(&mut self, mut each: impl FnMut(Message<'_>)) -> io::Result<()> {
        loop {
            let n = match self.receive(libc::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            };
            for msg in messages(&self.buf[..n]) {
                each(msg);
            }
        }
    }

    /// Waits for the acknowledgement of request `seq`: `Ok` or the kernel's errno.
    pub fn ack(&mut self, seq: u32) -> io::Result<()> {
        loop {
            let n = self.receive(0)?;
            for m in messages(&self.buf[..n]) {
                if m.msg_type == NLMSG_ERROR && m.seq == seq {
                    return ErrorReply::parse(&m).into_result();
                }
            }
        }
    }

    /// Reads the answer to dump request `seq` until `NLMSG_DONE`, handing each message's
    /// payload to `each`. An error reply ends the dump with that errno: a dump that fails
    /// is never taken for an empty one.
    pub fn dump(&mut self, seq: u32, mut each: impl FnMut(&[u8])) -> io::Result<()> {
        loop {
            let n = self.receive(0)?;
            // A reply cut by a too small buffer would silently lose objects: refuse it.
            let parsed: usize = messages(&self.buf[..n])
                .map(|m| super::wire::align4(super::wire::NLMSG_HDRLEN + m.payload.len()))
                .sum();
            if parsed < n {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("truncated netlink dump reply ({n} bytes, {parsed} parsed)"),
                ));
            }
            for m in messages(&self.buf[..n]) {
                if m.seq != seq {
                    continue;
                }
                match m.msg_type {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => return ErrorReply::parse(&m).into_result(),
                    _ => each(m.payload),
                }
                if m.flags & NLM_F_MULTI == 0 {
                    return Ok(());
                }
            }
        }
    }
}
