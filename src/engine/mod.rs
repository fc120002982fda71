//! The operations the command line (and the CNI plugin) performs on a namespace: apply,
//! verify, remove. Each runs all of its kernel I/O on one namespace thread
//! ([`Netns::run`]) through the kernel seam ([`crate::kernel`]); the `*_in` forms take any
//! [`Kernel`], so every decision here is unit-tested on the in-memory fake.
//!
//! Backend selection (`auto`) decides from facts and writes nothing to find out: the backend
//! whose Istio rules already exist in the namespace wins (so a re-run never programs both);
//! otherwise nftables when nf_tables answers; otherwise iptables-legacy. A state that cannot
//! be read (no permission, a failed dump) is an error, never "nothing there".

use crate::backend::iptables::IptablesLegacy;
use crate::backend::nftables::Nftables;
use crate::backend::{BackendError, RedirectBackend};
use crate::config::Config;
use crate::kernel::{Kernel, RouteOps, System};
use crate::model::{self, Plan};
use crate::netns::{Netns, NetnsError};
use crate::routes::{self, RouteObject};
use std::time::{Duration, Instant};
use thiserror::Error;

pub use crate::backend::{Backend, BackendChoice};

/// The routing step that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteOp {
    /// Opening the rtnetlink socket.
    Open,
    /// Adding an object.
    Add,
    /// Deleting an object.
    Delete,
    /// Looking for an object.
    Read,
}

/// What an engine operation can fail with.
#[derive(Debug, Error)]
pub enum EngineError {
    /// The namespace could not be entered.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// A backend could not read or write its rules.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The policy routing could not be read or written.
    #[error("{object}: {source}{}", route_hint(source))]
    Route {
        /// The object (`ip rule fwmark 1337 lookup 133`) or `rtnetlink socket`.
        object: String,
        /// The step that failed.
        op: RouteOp,
        /// The kernel's answer.
        source: std::io::Error,
    },
}

/// What to do about a routing error that has a usual cause.
fn route_hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENETDOWN) => {
            " (the namespace's loopback interface is down: bring `lo` up first, as the \
             container runtime does)"
        }
        _ => "",
    }
}

/// The backend used and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The backend.
    pub backend: Backend,
    /// Why (`requested`, `Istio nftables tables already exist`, …).
    pub reason: &'static str,
}

/// What `apply` did.
#[derive(Debug, Clone)]
pub struct ApplyReport {
    /// The backend and why.
    pub decision: Decision,
    /// Tables, chains, sets and rules created (nftables) or rules written (iptables-legacy).
    pub objects: usize,
    /// Netlink messages in the batch (nftables) or tables replaced (iptables-legacy).
    pub messages: usize,
    /// Whether existing tables of ours were replaced (rather than created fresh).
    pub replaced: bool,
    /// Routing objects added (and so ours to take back).
    pub routes_added: Vec<RouteObject>,
    /// iptables-legacy: table writes retried because another writer changed the table.
    pub retries: usize,
    /// The other backend, when rules of ours were in place there and were removed after this
    /// apply succeeded (an explicit `--backend` that differs from the one in place migrates).
    pub migrated_from: Option<Backend>,
    /// Wall time on the namespace thread.
    pub elapsed: Duration,
}

/// What `verify` found.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// The backend and why.
    pub decision: Decision,
    /// One readable line per difference; empty when the kernel matches.
    pub differences: Vec<String>,
}

/// What `remove` deleted.
#[derive(Debug, Clone)]
pub struct RemoveReport {
    /// Tables deleted or cleaned, both backends.
    pub tables_removed: Vec<String>,
    /// Routing objects deleted.
    pub routes_removed: Vec<RouteObject>,
}

/// The plan for a configuration and backend.
pub fn plan(cfg: &Config, backend: Backend) -> Plan {
    model::build(cfg, backend.flavor())
}

fn route_error(object: impl ToString, op: RouteOp) -> impl FnOnce(std::io::Error) -> EngineError {
    move |source| EngineError::Route {
        object: object.to_string(),
        op,
        source,
    }
}

fn permission_denied(e: &crate::nft::socket::NetlinkError) -> bool {
    matches!(e.errno(), Some(libc::EPERM) | Some(libc::EACCES))
}

/// Resolves `auto` inside the namespace (call on the namespace thread) and opens the chosen
/// backend; the nf_tables socket `auto` probed with is reused by the operation.
pub fn select<'k, K: Kernel>(
    k: &'k K,
    choice: BackendChoice,
) -> Result<(Decision, Box<dyn RedirectBackend + 'k>), EngineError> {
    let decision = |backend, reason| Decision { backend, reason };
    let open_nft = || -> Result<Box<dyn RedirectBackend + 'k>, EngineError> {
        let sock = k
            .nftables()
            .map_err(|e| BackendError::from(crate::nft::socket::NetlinkError::Io(e)))?;
        Ok(Box::new(Nftables::new(sock)))
    };
    match choice {
        BackendChoice::Nftables => Ok((decision(Backend::Nftables, "requested"), open_nft()?)),
        BackendChoice::IptablesLegacy => Ok((
            decision(Backend::IptablesLegacy, "requested"),
            Box::new(IptablesLegacy::new(k)),
        )),
        BackendChoice::Auto => {
            let probe = k
                .nftables()
                .map_err(crate::nft::socket::NetlinkError::Io)
                .and_then(|sock| {
                    let mut nft = Nftables::new(sock);
                    let exists = nft.existing().map(|e| !e.is_empty())?;
                    Ok((nft, exists))
                });
            let probe = match probe {
                Ok(p) => Some(p),
                // Not allowed to look is not the same as nf_tables being absent.
                Err(e) if permission_denied(&e) => return Err(BackendError::from(e).into()),
                Err(_) => None,
            };
            if let Some((nft, true)) = probe {
                let d = decision(Backend::Nftables, "Istio nftables tables already exist");
                return Ok((d, Box::new(nft)));
            }
            let mut legacy = IptablesLegacy::new(k);
            if legacy.exists()? {
                let d = decision(
                    Backend::IptablesLegacy,
                    "Istio iptables-legacy chains already exist",
                );
                return Ok((d, Box::new(legacy)));
            }
            Ok(match probe {
                Some((nft, _)) => (
                    decision(Backend::Nftables, "nf_tables answers"),
                    Box::new(nft),
                ),
                None => (
                    decision(Backend::IptablesLegacy, "nf_tables does not answer"),
                    Box::new(legacy),
                ),
            })
        }
    }
}

/// The routing objects a configuration needs (TPROXY's policy routing, `::6` with IPv6).
fn wanted_routes(cfg: &Config) -> Vec<RouteObject> {
    routes::wanted(
        cfg.needs_tproxy_routes(),
        cfg.enable_ipv6,
        cfg.tproxy_mark,
        cfg.tproxy_route_table,
    )
}

/// Adds the routing objects; on failure takes back what it added and returns the error.
fn add_routes<R: RouteOps>(
    rs: &mut R,
    wanted: &[RouteObject],
) -> Result<Vec<RouteObject>, EngineError> {
    let mut added = Vec::new();
    for &obj in wanted {
        match rs.add(obj) {
            Ok(true) => added.push(obj),
            Ok(false) => {}
            Err(e) => {
                undo_routes(rs, &added);
                return Err(route_error(obj, RouteOp::Add)(e));
            }
        }
    }
    Ok(added)
}

fn undo_routes<R: RouteOps>(rs: &mut R, added: &[RouteObject]) {
    for obj in added.iter().rev() {
        if let Err(e) = rs.delete(*obj) {
            tracing::warn!(object = %obj, error = %e, "could not take back a routing object");
        }
    }
}

/// Programs `cfg` into the namespace: routes, then the rules; routes are taken back if the
/// rules are refused.
pub fn apply(ns: &Netns, cfg: &Config, choice: BackendChoice) -> Result<ApplyReport, EngineError> {
    ns.run(|| apply_in(&System, cfg, choice))?
}

/// [`apply`] on the calling thread, which enters the namespace for good
/// ([`Netns::enter_for_good`]): no thread is made. Only for the last namespace operation of a
/// one-shot process (the command line's `apply`, a CNI ADD).
pub fn apply_as_last(
    ns: Netns,
    cfg: &Config,
    choice: BackendChoice,
) -> Result<ApplyReport, EngineError> {
    ns.enter_for_good(|| apply_in(&System, cfg, choice))?
}

/// [`apply`] in the caller's namespace, through `k`.
pub fn apply_in<K: Kernel>(
    k: &K,
    cfg: &Config,
    choice: BackendChoice,
) -> Result<ApplyReport, EngineError> {
    let start = Instant::now();
    let (decision, mut backend) = select(k, choice)?;
    let plan = plan(cfg, decision.backend);
    // `auto` follows the backend in place; an explicit choice that differs from it migrates,
    // so the namespace never ends up with both (Istio's bug class, istio/istio#58353).
    let mut previous = match choice {
        BackendChoice::Auto => None,
        _ => other_in_place(k, decision.backend)?,
    };
    let wanted = wanted_routes(cfg);
    let mut rsock = match wanted.is_empty() {
        true => None,
        false => Some(
            k.routes()
                .map_err(route_error("rtnetlink socket", RouteOp::Open))?,
        ),
    };
    let added = match &mut rsock {
        Some(rs) => add_routes(rs, &wanted)?,
        None => Vec::new(),
    };
    let a = match backend.apply(&plan) {
        Ok(a) => a,
        Err(e) => {
            if let Some(rs) = &mut rsock {
                undo_routes(rs, &added);
            }
            return Err(e.into());
        }
    };
    // Policy routing of ours this configuration does not want (another mark or table, or
    // TPROXY no more): looked for only where rules of ours were in place before (replaced,
    // or already equal: nothing written), so a fresh pod's ADD pays no extra dump.
    if a.replaced || a.messages == 0 {
        let rs = match &mut rsock {
            Some(rs) => rs,
            None => rsock.insert(
                k.routes()
                    .map_err(route_error("rtnetlink socket", RouteOp::Open))?,
            ),
        };
        remove_stale_routes(rs, &wanted)?;
    }
    // The new rules capture first, then the old ones go: no moment without a redirect.
    let migrated_from = match &mut previous {
        Some(old) => {
            old.remove(&self::plan(cfg, old.kind()))?;
            tracing::info!(
                from = old.kind().name(),
                to = decision.backend.name(),
                "migrated: removed our rules from the backend previously in place"
            );
            Some(old.kind())
        }
        None => None,
    };
    Ok(ApplyReport {
        decision,
        objects: a.objects,
        messages: a.messages,
        replaced: a.replaced,
        routes_added: added,
        retries: a.retries,
        migrated_from,
        elapsed: start.elapsed(),
    })
}

/// Deletes the policy routing of ours that is not in `wanted`.
fn remove_stale_routes<R: RouteOps>(rs: &mut R, wanted: &[RouteObject]) -> Result<(), EngineError> {
    let read = |e| route_error("policy routing", RouteOp::Read)(e);
    // One rule dump answers the common case (no policy rule we do not want) without reading
    // the routing tables. A table of ours left without its rule by a killed apply is only
    // found by `remove`, which looks at the tables too; it routes nothing.
    let rules = rs.fwmark_rules().map_err(read)?;
    if rules.iter().all(|r| wanted.contains(r)) {
        return Ok(());
    }
    let ours = routes::ours_in_place(rs).map_err(read)?;
    for obj in ours.into_iter().filter(|o| !wanted.contains(o)) {
        rs.delete_all(obj)
            .map_err(route_error(obj, RouteOp::Delete))?;
        tracing::info!(object = %obj, "removed policy routing of ours this configuration does not want");
    }
    Ok(())
}

/// The other backend, opened, when it holds rules of ours.
fn other_in_place<'k, K: Kernel>(
    k: &'k K,
    chosen: Backend,
) -> Result<Option<Box<dyn RedirectBackend + 'k>>, EngineError> {
    let mut other: Box<dyn RedirectBackend + 'k> = match chosen {
        Backend::IptablesLegacy => match k.nftables() {
            Ok(sock) => Box::new(Nftables::new(sock)),
            // No nf_tables in this kernel: nothing of ours can be there.
            Err(_) => return Ok(None),
        },
        Backend::Nftables => Box::new(IptablesLegacy::new(k)),
    };
    Ok(other.exists()?.then_some(other))
}

/// Differences between the kernel and the plan, one readable line each; empty when they match.
pub fn verify(
    ns: &Netns,
    cfg: &Config,
    choice: BackendChoice,
) -> Result<VerifyReport, EngineError> {
    ns.run(|| verify_in(&System, cfg, choice))?
}

/// [`verify`] in the caller's namespace, through `k`.
pub fn verify_in<K: Kernel>(
    k: &K,
    cfg: &Config,
    choice: BackendChoice,
) -> Result<VerifyReport, EngineError> {
    let (decision, mut backend) = select(k, choice)?;
    let plan = plan(cfg, decision.backend);
    let mut differences = backend.verify(&plan)?;
    // The policy routing and the passthrough address belong to the redirect too: missing
    // ones, and ours that this configuration does not want (another mark or table).
    let wanted = wanted_routes(cfg);
    let mut rs = k
        .routes()
        .map_err(route_error("rtnetlink socket", RouteOp::Open))?;
    for &obj in &wanted {
        if !rs.present(obj).map_err(route_error(obj, RouteOp::Read))? {
            differences.push(format!("missing {obj}"));
        }
    }
    let ours =
        routes::ours_in_place(&mut rs).map_err(route_error("policy routing", RouteOp::Read))?;
    for obj in ours.into_iter().filter(|o| !wanted.contains(o)) {
        differences.push(format!("unexpected {obj}"));
    }
    Ok(VerifyReport {
        decision,
        differences,
    })
}

/// Deletes our tables, chains and policy routing, from both backends; nothing else.
/// Succeeds when there is nothing to do.
pub fn remove(ns: &Netns, cfg: &Config) -> Result<RemoveReport, EngineError> {
    ns.run(|| remove_in(&System, cfg))?
}

/// [`remove`] in the caller's namespace, through `k`.
pub fn remove_in<K: Kernel>(k: &K, cfg: &Config) -> Result<RemoveReport, EngineError> {
    let mut tables_removed = Vec::new();
    // A namespace without nf_tables holds no nf_tables rules of ours.
    if let Ok(sock) = k.nftables() {
        let removed = Nftables::new(sock).remove(&plan(cfg, Backend::Nftables))?;
        tables_removed.extend(removed.tables);
    }
    let legacy = IptablesLegacy::new(k).remove(&plan(cfg, Backend::IptablesLegacy))?;
    tables_removed.extend(legacy.tables);
    let mut rs = k
        .routes()
        .map_err(route_error("rtnetlink socket", RouteOp::Open))?;
    let mut routes_removed = Vec::new();
    let ours =
        routes::ours_in_place(&mut rs).map_err(route_error("policy routing", RouteOp::Read))?;
    for obj in ours {
        if rs
            .delete_all(obj)
            .map_err(route_error(obj, RouteOp::Delete))?
        {
            routes_removed.push(obj);
        }
    }
    Ok(RemoveReport {
        tables_removed,
        routes_removed,
    })
}

#[cfg(test)]
mod migration_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
