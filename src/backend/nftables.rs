//! The nftables backend: the plan as one batch over an [`NfTables`] socket.
//!
//! ```text
//! fresh namespace     → create-only batch (NEWTABLE with NLM_F_EXCL; EEXIST → replace)
//! our tables, equal   → nothing sent (counters kept, no RCU wait at close)
//! our tables, drifted → replace batch: add table x; delete table x; …; the tables anew
//! remove              → delete batch of the tables that exist
//! ```

use super::{Applied, Backend, BackendError, RedirectBackend, Removed};
use crate::kernel::NfTables;
use crate::model::{Plan, Table};
use crate::nft::batch::{encode, Shape};
use crate::nft::readback;
use crate::nft::socket::NetlinkError;
use crate::nft::verify::diff;

/// Our table names (`istio-proxy-nat`, `istio-proxy-mangle`, `istio-proxy-raw`).
pub fn our_table_names() -> Vec<&'static str> {
    Table::ALL.iter().map(|t| t.nft_name()).collect()
}

/// The nftables backend on one socket; remembers which of our tables exist once looked up.
pub struct Nftables<S: NfTables> {
    sock: S,
    existing: Option<Vec<String>>,
}

impl<S: NfTables> Nftables<S> {
    /// The backend on an open socket.
    pub fn new(sock: S) -> Nftables<S> {
        Nftables {
            sock,
            existing: None,
        }
    }

    /// Our tables that exist in the namespace (one dump, then remembered).
    pub fn existing(&mut self) -> Result<&[String], NetlinkError> {
        if self.existing.is_none() {
            let names = our_table_names();
            let found = readback::inet_tables(&mut self.sock)?
                .into_iter()
                .filter(|t| names.contains(&t.as_str()))
                .collect();
            self.existing = Some(found);
        }
        Ok(self.existing.as_deref().unwrap_or_default())
    }

    fn send(&mut self, plan: &Plan, shape: Shape) -> Result<Applied, NetlinkError> {
        let batch = encode(plan, shape, self.sock.reserve_seqs(1 << 20));
        self.sock.send_batch(&batch)?;
        Ok(Applied {
            objects: batch.objects,
            messages: batch.messages.len(),
            replaced: shape == Shape::Replace,
            retries: 0,
        })
    }

    fn apply_nft(&mut self, plan: &Plan) -> Result<Applied, NetlinkError> {
        let mut shape = if self.existing()?.is_empty() {
            Shape::Create
        } else {
            Shape::Replace
        };
        // Our tables are there already: when they hold exactly the plan, leave them (and their
        // counters) alone. A replace deletes, and a deleting batch makes the socket's close
        // wait for an RCU grace period (≈ 15 ms, `docs/kernel-facts.md` §2.3); a no-op costs
        // one read-back.
        let forced = crate::fault::active(crate::fault::Fault::LastMessage);
        if shape == Shape::Replace && !forced {
            let kernel = readback::read_tables(&mut self.sock, &our_table_names())?;
            if diff(plan, &kernel).is_empty() {
                return Ok(Applied::default());
            }
        }
        loop {
            match self.send(plan, shape) {
                // Someone created one of our tables between our look and our batch.
                Err(e) if shape == Shape::Create && e.errnos().contains(&libc::EEXIST) => {
                    shape = Shape::Replace
                }
                other => return other,
            }
        }
    }
}

impl<S: NfTables> RedirectBackend for Nftables<S> {
    fn kind(&self) -> Backend {
        Backend::Nftables
    }

    fn exists(&mut self) -> Result<bool, BackendError> {
        Ok(!self.existing()?.is_empty())
    }

    fn apply(&mut self, plan: &Plan) -> Result<Applied, BackendError> {
        let applied = self.apply_nft(plan);
        // Whatever happened, the next look must ask the kernel again.
        self.existing = None;
        Ok(applied?)
    }

    fn verify(&mut self, plan: &Plan) -> Result<Vec<String>, BackendError> {
        let kernel = readback::read_tables(&mut self.sock, &our_table_names())?;
        Ok(diff(plan, &kernel).iter().map(|d| d.to_string()).collect())
    }

    fn remove(&mut self, plan: &Plan) -> Result<Removed, BackendError> {
        let existing = self.existing()?.to_vec();
        if existing.is_empty() {
            return Ok(Removed::default());
        }
        let sent = self.send(plan, Shape::Delete);
        self.existing = None;
        sent?;
        Ok(Removed {
            tables: existing.into_iter().map(|t| format!("inet {t}")).collect(),
        })
    }
}
