//! The iptables-legacy backend: Istio's `ISTIO_*` chains written table by table through
//! the xtables socket options of each family ([`crate::xt::apply`] holds the logic: merge
//! with foreign rules, optimistic replace with `EAGAIN` retry, rollback of earlier tables).
//!
//! ```text
//! *nat
//! -N ISTIO_OUTPUT
//! -A OUTPUT -p tcp -j ISTIO_OUTPUT
//! -A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
//! …
//! ```

use super::{Applied, Backend, BackendError, RedirectBackend, Removed};
use crate::kernel::Kernel;
use crate::model::{Plan, Table};
use crate::xt;
use crate::xt::abi::{IPV4, IPV6};
use crate::xt::apply::{err as failed, XtOp};
use crate::xt::merge::has_ours;
use crate::xt::socket::read_table;

/// The iptables-legacy backend in the namespace `kernel` opens its sockets in.
pub struct IptablesLegacy<'k, K: Kernel> {
    kernel: &'k K,
}

impl<'k, K: Kernel> IptablesLegacy<'k, K> {
    /// The backend over a kernel.
    pub fn new(kernel: &'k K) -> IptablesLegacy<'k, K> {
        IptablesLegacy { kernel }
    }
}

impl<K: Kernel> RedirectBackend for IptablesLegacy<'_, K> {
    fn kind(&self) -> Backend {
        Backend::IptablesLegacy
    }

    /// Whether any loaded table of either family holds Istio chains. Only tables the kernel
    /// already has are read, so nothing is instantiated; a table that cannot be read is an
    /// error, never "nothing there".
    fn exists(&mut self) -> Result<bool, BackendError> {
        for l in [IPV4, IPV6] {
            let loaded =
                self.kernel
                    .xt_loaded_tables(l)
                    .map_err(failed(l, "*", XtOp::ListTables))?;
            let ours: Vec<&'static str> = Table::ALL
                .iter()
                .map(|t| t.iptables_name())
                .filter(|n| loaded.iter().any(|x| x == n))
                .collect();
            if ours.is_empty() {
                continue;
            }
            let s = self
                .kernel
                .xtables(l)
                .map_err(failed(l, ours[0], XtOp::Open))?;
            for name in ours {
                let (_, table) = read_table(&s, name).map_err(failed(l, name, XtOp::Read))?;
                if has_ours(&table) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    fn apply(&mut self, plan: &Plan) -> Result<Applied, BackendError> {
        let r = xt::apply::apply(self.kernel, plan)?;
        Ok(Applied {
            objects: r.rules,
            messages: r.tables_written,
            replaced: r.replaced,
            retries: r.retries,
        })
    }

    fn verify(&mut self, plan: &Plan) -> Result<Vec<String>, BackendError> {
        Ok(xt::apply::verify(self.kernel, plan)?
            .iter()
            .map(|d| d.to_string())
            .collect())
    }

    fn remove(&mut self, plan: &Plan) -> Result<Removed, BackendError> {
        let n = xt::apply::remove(self.kernel, plan)?;
        Ok(Removed {
            tables: (0..n).map(|_| "legacy table".to_string()).collect(),
        })
    }
}
