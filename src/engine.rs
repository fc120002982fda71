//! The operations the command line (and later the CNI plugin) performs on a namespace with
//! the nftables backend: apply, verify, remove. Each runs all of its kernel I/O on one
//! namespace thread ([`Netns::run`]).

use crate::config::Config;
use crate::model::{self, Flavor, Plan, Table};
use crate::netns::{Netns, NetnsError};
use crate::nft::batch::{encode, FaultInjection, Shape};
use crate::nft::readback;
use crate::nft::socket::{NetlinkError, NfSocket};
use crate::nft::verify::{diff, Difference};
use crate::routes::{self, RouteObject, RouteSocket};
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("{object}: {source}")]
    Route {
        object: String,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct ApplyReport {
    /// Tables, chains, sets and rules created.
    pub objects: usize,
    /// Netlink messages in the batch.
    pub messages: usize,
    /// Whether existing tables of ours were replaced (rather than created fresh).
    pub replaced: bool,
    pub routes_added: Vec<RouteObject>,
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

/// The nftables plan for a configuration.
pub fn plan(cfg: &Config) -> Plan {
    model::build(cfg, Flavor::Nftables)
}

/// Programs `cfg` into the namespace: routes, then one batch; routes are taken back if the
/// batch is rejected.
pub fn apply(ns: &Netns, cfg: &Config, fault: FaultInjection) -> Result<ApplyReport, EngineError> {
    let plan = plan(cfg);
    ns.run(|| {
        let start = Instant::now();
        let mut sock = NfSocket::open().map_err(NetlinkError::Io)?;
        let mut shape = if existing_ours(&mut sock)?.is_empty() {
            Shape::Create
        } else {
            Shape::Replace
        };

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

        loop {
            let batch = encode(&plan, shape, sock.reserve_seqs(1 << 20), fault);
            match sock.send_batch(&batch) {
                Ok(()) => {
                    return Ok(ApplyReport {
                        objects: batch.objects,
                        messages: batch.messages.len(),
                        replaced: shape == Shape::Replace,
                        routes_added: added,
                        elapsed: start.elapsed(),
                    })
                }
                // Someone created one of our tables between our look and our batch.
                Err(e) if shape == Shape::Create && e.errnos().contains(&libc::EEXIST) => {
                    shape = Shape::Replace
                }
                Err(e) => {
                    if let Some(rs) = &mut rsock {
                        undo(rs, &added);
                    }
                    return Err(e.into());
                }
            }
        }
    })?
}

fn undo(rs: &mut RouteSocket, added: &[RouteObject]) {
    for obj in added.iter().rev() {
        if let Err(e) = rs.delete(*obj) {
            tracing::warn!(object = %obj, error = %e, "could not take back a routing object");
        }
    }
}

/// Differences between the kernel and the plan; empty when they match.
pub fn verify(ns: &Netns, cfg: &Config) -> Result<Vec<Difference>, EngineError> {
    let plan = plan(cfg);
    ns.run(|| {
        let mut sock = NfSocket::open().map_err(NetlinkError::Io)?;
        let kernel = readback::read_tables(&mut sock, &our_table_names())?;
        Ok(diff(&plan, &kernel))
    })?
}

#[derive(Debug, Clone)]
pub struct RemoveReport {
    pub tables_removed: Vec<String>,
    pub routes_removed: Vec<RouteObject>,
}

/// Deletes our tables and policy routing; nothing else. Succeeds when there is nothing to do.
pub fn remove(ns: &Netns, cfg: &Config) -> Result<RemoveReport, EngineError> {
    let plan = plan(cfg);
    ns.run(|| {
        let mut sock = NfSocket::open().map_err(NetlinkError::Io)?;
        let existing = existing_ours(&mut sock)?;
        if !existing.is_empty() {
            let batch = encode(
                &plan,
                Shape::Delete,
                sock.reserve_seqs(1 << 20),
                FaultInjection::default(),
            );
            sock.send_batch(&batch)?;
        }
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
            tables_removed: existing,
            routes_removed,
        })
    })?
}
