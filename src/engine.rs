//! The operations the command line (and the CNI plugin) performs on a namespace: apply,
//! verify, remove, with either backend. Each runs all of its kernel I/O on one namespace
//! thread ([`Netns::run`]).
//!
//! Backend selection (`auto`) decides from facts and writes nothing to find out: the backend
//! whose Istio rules already exist in the namespace wins (so a re-run never programs both);
//! otherwise nftables when nf_tables answers; otherwise iptables-legacy.

use crate::config::Config;
use crate::model::{self, Flavor, Plan, Table};
use crate::netns::{Netns, NetnsError};
use crate::nft::batch::{encode, FaultInjection, Shape};
use crate::nft::readback;
use crate::nft::socket::{NetlinkError, NfSocket};
use crate::nft::verify::diff;
use crate::routes::{self, RouteObject, RouteSocket};
use crate::xt;
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Xtables(#[from] xt::apply::XtError),
    #[error("{object}: {source}")]
    Route {
        object: String,
        source: std::io::Error,
    },
}

/// A concrete backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nftables,
    IptablesLegacy,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nftables => "nftables",
            Backend::IptablesLegacy => "iptables-legacy",
        }
    }

    pub fn flavor(self) -> Flavor {
        match self {
            Backend::Nftables => Flavor::Nftables,
            Backend::IptablesLegacy => Flavor::Iptables,
        }
    }
}

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    Nftables,
    IptablesLegacy,
    #[default]
    Auto,
}

/// The backend used and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub backend: Backend,
    pub reason: &'static str,
}

#[derive(Debug, Clone)]
pub struct ApplyReport {
    pub decision: Decision,
    /// Tables, chains, sets and rules created (nftables) or rules written (iptables-legacy).
    pub objects: usize,
    /// Netlink messages in the batch (nftables) or tables replaced (iptables-legacy).
    pub messages: usize,
    /// Whether existing tables of ours were replaced (rather than created fresh).
    pub replaced: bool,
    pub routes_added: Vec<RouteObject>,
    /// iptables-legacy: table writes retried because another writer changed the table.
    pub retries: usize,
    pub elapsed: Duration,
}

fn our_table_names() -> Vec<&'static str> {
    Table::ALL.iter().map(|t| t.nft_name()).collect()
}

fn existing_ours(sock: &mut NfSocket) -> Result<Vec<String>, NetlinkError> {
    let names = our_table_names();
    Ok(readback::inet_tables(sock)?
        .into_iter()
        .filter(|t| names.contains(&t.as_str()))
        .collect())
}

/// The plan for a configuration and backend.
pub fn plan(cfg: &Config, backend: Backend) -> Plan {
    model::build(cfg, backend.flavor())
}

/// Whether any loaded legacy table of either family holds Istio chains (reads only tables
/// the kernel already has, so nothing is instantiated).
fn legacy_has_ours() -> bool {
    use xt::abi::{IPV4, IPV6};
    [IPV4, IPV6].into_iter().any(|l| {
        let loaded = xt::apply::loaded_tables(l);
        let Ok(s) = xt::socket::XtSocket::open(l) else {
            return false;
        };
        Table::ALL
            .iter()
            .filter(|t| loaded.iter().any(|n| n == t.iptables_name()))
            .any(|t| {
                s.read(t.iptables_name())
                    .map(|(_, table)| xt::merge::has_ours(&table))
                    .unwrap_or(false)
            })
    })
}

/// Resolves `auto` inside the namespace (call on the namespace thread).
/// What `auto` learnt of nf_tables: the socket it opened and our tables it found, reused by
/// the apply (one socket, one dump).
struct NftProbe {
    sock: NfSocket,
    existing: Vec<String>,
}

/// Resolves `auto` inside the namespace (call on the namespace thread).
fn decide(choice: BackendChoice) -> (Decision, Option<NftProbe>) {
    let requested = |backend| {
        (
            Decision {
                backend,
                reason: "requested",
            },
            None,
        )
    };
    match choice {
        BackendChoice::Nftables => requested(Backend::Nftables),
        BackendChoice::IptablesLegacy => requested(Backend::IptablesLegacy),
        BackendChoice::Auto => {
            let probe = NfSocket::open().ok().and_then(|mut sock| {
                existing_ours(&mut sock)
                    .ok()
                    .map(|existing| NftProbe { sock, existing })
            });
            let decision = |backend, reason| Decision { backend, reason };
            match probe {
                Some(p) if !p.existing.is_empty() => (
                    decision(Backend::Nftables, "Istio nftables tables already exist"),
                    Some(p),
                ),
                _ if legacy_has_ours() => (
                    decision(
                        Backend::IptablesLegacy,
                        "Istio iptables-legacy chains already exist",
                    ),
                    None,
                ),
                Some(p) => (decision(Backend::Nftables, "nf_tables answers"), Some(p)),
                None => (
                    decision(Backend::IptablesLegacy, "nf_tables does not answer"),
                    None,
                ),
            }
        }
    }
}

/// Programs `cfg` into the namespace: routes, then the rules; routes are taken back if the
/// rules are refused.
pub fn apply(
    ns: &Netns,
    cfg: &Config,
    choice: BackendChoice,
    fault: FaultInjection,
) -> Result<ApplyReport, EngineError> {
    ns.run(|| {
        let start = Instant::now();
        let (decision, probe) = decide(choice);
        let plan = plan(cfg, decision.backend);
        let wanted = routes::wanted(
            cfg.needs_tproxy_routes(),
            cfg.enable_ipv6,
            cfg.tproxy_mark,
            cfg.tproxy_route_table,
        );
        let mut added = Vec::new();
        let mut rsock = None;
        for obj in wanted {
            let rs = match &mut rsock {
                Some(rs) => rs,
                None => rsock.insert(RouteSocket::open().map_err(|source| EngineError::Route {
                    object: "rtnetlink socket".into(),
                    source,
                })?),
            };
            match rs.add(obj) {
                Ok(true) => added.push(obj),
                Ok(false) => {}
                Err(source) => {
                    undo(rs, &added);
                    return Err(EngineError::Route {
                        object: obj.to_string(),
                        source,
                    });
                }
            }
        }
        let result = match decision.backend {
            Backend::Nftables => apply_nft(&plan, fault, probe).map(|(o, m, r)| (o, m, r, 0)),
            Backend::IptablesLegacy => xt::apply::apply(&plan, fault)
                .map(|r| (r.rules, r.tables_written, r.replaced, r.retries))
                .map_err(EngineError::from),
        };
        match result {
            Ok((objects, messages, replaced, retries)) => Ok(ApplyReport {
                decision,
                objects,
                messages,
                replaced,
                routes_added: added,
                retries,
                elapsed: start.elapsed(),
            }),
            Err(e) => {
                if let Some(rs) = &mut rsock {
                    undo(rs, &added);
                }
                Err(e)
            }
        }
    })?
}

/// One batch: create-only on a fresh namespace, replace when our tables exist.
fn apply_nft(
    plan: &Plan,
    fault: FaultInjection,
    probe: Option<NftProbe>,
) -> Result<(usize, usize, bool), EngineError> {
    let (mut sock, existing) = match probe {
        Some(p) => (p.sock, p.existing),
        None => {
            let mut sock = NfSocket::open().map_err(NetlinkError::Io)?;
            let existing = existing_ours(&mut sock)?;
            (sock, existing)
        }
    };
    let mut shape = if existing.is_empty() {
        Shape::Create
    } else {
        Shape::Replace
    };
    // Our tables are there already: when they hold exactly the plan, leave them (and their
    // counters) alone. A replace deletes, and a deleting batch makes the socket's close wait
    // for an RCU grace period (≈ 15 ms, kernel-notes §1.5); a no-op costs one read-back.
    if shape == Shape::Replace && !fault.fail_last_message {
        let kernel = readback::read_tables(&mut sock, &our_table_names())?;
        if diff(plan, &kernel).is_empty() {
            return Ok((0, 0, false));
        }
    }
    loop {
        let batch = encode(plan, shape, sock.reserve_seqs(1 << 20), fault);
        match sock.send_batch(&batch) {
            Ok(()) => return Ok((batch.objects, batch.messages.len(), shape == Shape::Replace)),
            // Someone created one of our tables between our look and our batch.
            Err(e) if shape == Shape::Create && e.errnos().contains(&libc::EEXIST) => {
                shape = Shape::Replace
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn undo(rs: &mut RouteSocket, added: &[RouteObject]) {
    for obj in added.iter().rev() {
        if let Err(e) = rs.delete(*obj) {
            tracing::warn!(object = %obj, error = %e, "could not take back a routing object");
        }
    }
}

/// Differences between the kernel and the plan, one readable line each; empty when they match.
pub fn verify(
    ns: &Netns,
    cfg: &Config,
    choice: BackendChoice,
) -> Result<(Decision, Vec<String>), EngineError> {
    ns.run(|| {
        let (decision, _) = decide(choice);
        let plan = plan(cfg, decision.backend);
        let mut differences: Vec<String> = match decision.backend {
            Backend::Nftables => {
                let mut sock = NfSocket::open().map_err(NetlinkError::Io)?;
                let kernel = readback::read_tables(&mut sock, &our_table_names())?;
                diff(&plan, &kernel).iter().map(|d| d.to_string()).collect()
            }
            Backend::IptablesLegacy => xt::apply::verify(&plan)?
                .iter()
                .map(|d| d.to_string())
                .collect(),
        };
        // The policy routing and the passthrough address belong to the redirect too.
        let wanted = routes::wanted(
            cfg.needs_tproxy_routes(),
            cfg.enable_ipv6,
            cfg.tproxy_mark,
            cfg.tproxy_route_table,
        );
        if !wanted.is_empty() {
            let mut rs = RouteSocket::open().map_err(|source| EngineError::Route {
                object: "rtnetlink socket".into(),
                source,
            })?;
            for obj in wanted {
                if !rs.present(obj).map_err(|source| EngineError::Route {
                    object: obj.to_string(),
                    source,
                })? {
                    differences.push(format!("missing {obj}"));
                }
            }
        }
        Ok((decision, differences))
    })?
}

#[derive(Debug, Clone)]
pub struct RemoveReport {
    pub tables_removed: Vec<String>,
    pub routes_removed: Vec<RouteObject>,
}

/// Deletes our tables, chains and policy routing, from both backends; nothing else.
/// Succeeds when there is nothing to do.
pub fn remove(ns: &Netns, cfg: &Config) -> Result<RemoveReport, EngineError> {
    ns.run(|| {
        let mut tables_removed = Vec::new();
        if let Ok(mut sock) = NfSocket::open() {
            let existing = existing_ours(&mut sock)?;
            if !existing.is_empty() {
                let batch = encode(
                    &plan(cfg, Backend::Nftables),
                    Shape::Delete,
                    sock.reserve_seqs(1 << 20),
                    FaultInjection::default(),
                );
                sock.send_batch(&batch)?;
                tables_removed.extend(existing.into_iter().map(|t| format!("inet {t}")));
            }
        }
        let legacy = xt::apply::remove(&plan(cfg, Backend::IptablesLegacy))?;
        tables_removed.extend((0..legacy).map(|_| "legacy table".to_string()));
        let mut rs = RouteSocket::open().map_err(|source| EngineError::Route {
            object: "rtnetlink socket".into(),
            source,
        })?;
        let mut routes_removed = Vec::new();
        for obj in routes::removable(cfg.tproxy_mark, cfg.tproxy_route_table) {
            match rs.delete_all(obj) {
                Ok(true) => routes_removed.push(obj),
                Ok(false) => {}
                Err(source) => {
                    return Err(EngineError::Route {
                        object: obj.to_string(),
                        source,
                    })
                }
            }
        }
        Ok(RemoveReport {
            tables_removed,
            routes_removed,
        })
    })?
}
