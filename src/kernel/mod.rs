//! The seam between the engine's decisions and the kernel: three narrow traits for the
//! three ways mesh-redirect touches a network namespace, and a [`Kernel`] that opens them.
//!
//! | trait | real implementation | what it does |
//! |---|---|---|
//! | [`NfTables`] | [`crate::nft::socket::NfSocket`] | send an nf_tables batch, dump tables, chains, sets, set elements, rules |
//! | [`XtTables`] | [`crate::xt::socket::XtSocket`] | which legacy tables exist, read a table's info and entries, replace it, add counters |
//! | [`RouteOps`] | [`crate::routes::RouteSocket`] | add, delete and look for a policy-routing object |
//!
//! Everything above these traits (backend selection, create → `EEXIST` → replace, the no-op
//! re-apply, the xtables `EAGAIN` retry and rollback, route undo, `verify`'s diff, `remove`)
//! is plain code over them, and [`fake`] keeps the same state in memory so that those
//! decisions are unit-tested without root; the real-kernel tests in `integration/` remain
//! the proof that the real implementations behave like the fakes.

pub mod fake;

use crate::nft::batch::Batch;
use crate::nft::socket::NetlinkError;
use crate::routes::RouteObject;
use crate::xt::abi::Layout;
use crate::xt::socket::Info;
use crate::xt::table::{Counters, Encoded};
use std::io;

/// One nf_tables dump request (`NFT_MSG_GET…` with `NLM_F_DUMP`, family `inet`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NfDump<'a> {
    /// `GETTABLE`: every `inet` table.
    Tables,
    /// `GETCHAIN`: every `inet` chain.
    Chains,
    /// `GETSET`: every `inet` set.
    Sets,
    /// `GETSETELEM` of one set.
    SetElements {
        /// The set's table.
        table: &'a str,
        /// The set's (kernel-assigned) name.
        set: &'a str,
    },
    /// `GETRULE` of one table.
    Rules {
        /// The table.
        table: &'a str,
    },
}

/// The nf_tables socket: batches in, dumps out. Each dump reply is the attribute area of one
/// message (after `nlmsghdr` and `nfgenmsg`), exactly as the kernel sent it.
pub trait NfTables {
    /// Sequence numbers for the next batch; the caller encodes with the first one.
    fn reserve_seqs(&mut self, count: usize) -> u32;
    /// Sends one batch and checks every reply: `Ok` only if the kernel committed it.
    fn send_batch(&mut self, batch: &Batch) -> Result<(), NetlinkError>;
    /// One dump; an error reply is an error, never an empty answer.
    fn dump(&mut self, request: NfDump<'_>) -> Result<Vec<Vec<u8>>, NetlinkError>;
}

/// The legacy xtables interface of one family (IPv4 or IPv6).
pub trait XtTables {
    /// Which family's entries this handle reads and writes.
    fn layout(&self) -> Layout;
    /// `IPT_SO_GET_INFO`: hooks, entry count and blob size of a table.
    fn info(&self, table: &str) -> io::Result<Info>;
    /// `IPT_SO_GET_ENTRIES`: the raw entries of a table of `size` bytes (`EAGAIN` when it
    /// changed since `info`).
    fn entries(&self, table: &str, size: u32) -> io::Result<Vec<u8>>;
    /// `IPT_SO_SET_REPLACE`: swaps the table if it still has `num_counters` entries
    /// (`EAGAIN` otherwise); returns the counters the replaced entries had.
    fn replace(
        &self,
        table: &str,
        valid_hooks: u32,
        num_counters: usize,
        enc: &Encoded,
    ) -> io::Result<Vec<Counters>>;
    /// `IPT_SO_SET_ADD_COUNTERS`: adds one counter pair per entry of the current table.
    fn add_counters(&self, table: &str, counters: &[Counters]) -> io::Result<()>;
}

/// Policy routing: add, delete and look for one object.
pub trait RouteOps {
    /// Adds `obj`; `Ok(false)` when it already existed (and so is not ours to undo).
    fn add(&mut self, obj: RouteObject) -> io::Result<bool>;
    /// Deletes one copy of `obj`; `Ok(false)` when it was not there.
    fn delete(&mut self, obj: RouteObject) -> io::Result<bool>;
    /// Whether `obj` is in the namespace (for `verify` and CNI CHECK).
    fn present(&mut self, obj: RouteObject) -> io::Result<bool>;
    /// Every `fwmark M lookup T` policy rule of both families, as [`RouteObject::FwmarkRule`].
    fn fwmark_rules(&mut self) -> io::Result<Vec<RouteObject>>;
    /// The `(family, table)` of every routing table (other than `local`, `main` and
    /// `default`) whose routes are all `local default dev lo`: the shape of the table
    /// TPROXY's policy rule points to.
    fn local_default_tables(&mut self) -> io::Result<Vec<(u8, u32)>>;

    /// Deletes every copy of `obj` (earlier tools may have added a rule more than once).
    fn delete_all(&mut self, obj: RouteObject) -> io::Result<bool> {
        let mut any = false;
        for _ in 0..64 {
            if !self.delete(obj)? {
                break;
            }
            any = true;
        }
        Ok(any)
    }
}

/// Opens the kernel interfaces of the namespace the caller is in.
pub trait Kernel {
    /// The nf_tables socket.
    type Nf: NfTables;
    /// The xtables handle of one family.
    type Xt: XtTables;
    /// The routing socket.
    type Routes: RouteOps;
    /// Opens an nf_tables socket.
    fn nftables(&self) -> io::Result<Self::Nf>;
    /// Opens the xtables interface of one family.
    fn xtables(&self, layout: Layout) -> io::Result<Self::Xt>;
    /// Names of the legacy tables the kernel has instantiated for one family
    /// (`/proc/net/ip{,6}_tables_names`). Reading a table instantiates it, so callers look
    /// here before reading one they will not write.
    fn xt_loaded_tables(&self, layout: Layout) -> io::Result<Vec<String>>;
    /// Opens a routing socket.
    fn routes(&self) -> io::Result<Self::Routes>;
}

/// The real kernel: sockets in the calling thread's network namespace (the engine calls it
/// on a namespace thread, `crate::netns::Netns::run`).
#[derive(Debug, Clone, Copy, Default)]
pub struct System;

impl Kernel for System {
    type Nf = crate::nft::socket::NfSocket;
    type Xt = crate::xt::socket::XtSocket;
    type Routes = crate::routes::RouteSocket;

    fn nftables(&self) -> io::Result<Self::Nf> {
        crate::nft::socket::NfSocket::open()
    }

    fn xtables(&self, layout: Layout) -> io::Result<Self::Xt> {
        crate::xt::socket::XtSocket::open(layout)
    }

    fn xt_loaded_tables(&self, layout: Layout) -> io::Result<Vec<String>> {
        crate::xt::socket::loaded_tables(layout)
    }

    fn routes(&self) -> io::Result<Self::Routes> {
        crate::routes::RouteSocket::open()
    }
}
