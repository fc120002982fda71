//! The reconciler: every meshed pod on the node is captured, whenever it started.
//!
//! A pod that started before the plugin was in the node's chain (after a reboot, on a fresh
//! node, or after the primary CNI rewrote its configuration) runs without redirection: its
//! traffic bypasses the sidecar and nothing says so. The reconciler looks at every pod of
//! the node cache that the CNI ADD would redirect — the same eligibility rules and
//! annotation mapping ([`crate::cni::expected::for_pod`]) — and that is running with a pod
//! IP; finds its network namespace ([`scan`], [`locate`]); verifies the rules in place with
//! the backend; and when they are missing or drifted acts by [`RepairMode`]:
//!
//! | mode | what it does |
//! |---|---|
//! | `repair` (default) | applies the pod's rules in place: from then on new connections are captured |
//! | `label` | labels the pod `mesh-redirect.io/uninitialized=true`, for operators who restart it themselves |
//! | `delete` | deletes the pod with UID and resourceVersion preconditions, so that its controller re-creates it through a captured path |
//! | `off` | logs and counts only |
//!
//! It never writes into the host's namespace, nor into a namespace it cannot attribute to
//! exactly one pod. A pass runs on start (once the cache is synced), after pod events (for
//! the pods that changed) and periodically.

pub mod act;
pub mod locate;
pub mod scan;
#[cfg(test)]
mod tests;

use crate::backend::BackendChoice;
use crate::cni::expected::{self, Expected};
use crate::cni::netconf::NetConf;
use crate::config::Config;
use crate::engine::{self, EngineError};
use crate::netns::Netns;
use locate::Refusal;
use scan::{ProcScanner, Scan, ScanError};
use serde_json::Value;
use std::sync::Arc;

/// The label the `label` mode sets.
pub const UNINITIALIZED_LABEL: &str = "mesh-redirect.io/uninitialized";

/// What the reconciler does about a pod whose rules are missing or drifted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RepairMode {
    /// Apply the rules in place.
    #[default]
    Repair,
    /// Label the pod.
    Label,
    /// Delete the pod (with preconditions).
    Delete,
    /// Only log and count.
    Off,
}

impl RepairMode {
    /// Its name, as the flag and the metric label spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            RepairMode::Repair => "repair",
            RepairMode::Label => "label",
            RepairMode::Delete => "delete",
            RepairMode::Off => "off",
        }
    }
}

impl std::str::FromStr for RepairMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "repair" => Ok(RepairMode::Repair),
            "label" => Ok(RepairMode::Label),
            "delete" => Ok(RepairMode::Delete),
            "off" => Ok(RepairMode::Off),
            other => Err(format!(
                "{other:?} is not one of repair, label, delete, off"
            )),
        }
    }
}

/// The node's side the reconciler reads and writes: its namespaces and the rules in them.
pub trait NodeKernel {
    /// How a namespace is entered.
    type Ns;
    /// Every namespace on the node with its addresses.
    fn scan(&self) -> Result<Scan<Self::Ns>, ScanError>;
    /// The differences between the rules in `ns` and `cfg` (empty: in place).
    fn verify(
        &self,
        ns: &Self::Ns,
        cfg: &Config,
        backend: BackendChoice,
    ) -> Result<Vec<String>, EngineError>;
    /// Programs `cfg` into `ns` (atomically, as the CNI ADD does).
    fn apply(&self, ns: &Self::Ns, cfg: &Config, backend: BackendChoice)
        -> Result<(), EngineError>;
}

/// The real node: `/proc` and the engine.
#[derive(Debug, Default)]
pub struct ProcNode {
    /// Where the namespaces are found.
    pub scanner: ProcScanner,
}

impl NodeKernel for ProcNode {
    type Ns = Netns;

    fn scan(&self) -> Result<Scan<Netns>, ScanError> {
        self.scanner.scan()
    }

    fn verify(
        &self,
        ns: &Netns,
        cfg: &Config,
        backend: BackendChoice,
    ) -> Result<Vec<String>, EngineError> {
        Ok(engine::verify(ns, cfg, backend)?.differences)
    }

    fn apply(&self, ns: &Netns, cfg: &Config, backend: BackendChoice) -> Result<(), EngineError> {
        engine::apply(ns, cfg, backend).map(|_| ())
    }
}

/// The pod a finding is about, as the pass saw it (for the API calls' preconditions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.resourceVersion`.
    pub resource_version: String,
    /// Whether it carries [`UNINITIALIZED_LABEL`]`=true` already.
    pub labeled: bool,
}

impl PodRef {
    fn of(pod: &Value) -> PodRef {
        let m = &pod["metadata"];
        let s = |k: &str| m[k].as_str().unwrap_or_default().to_string();
        PodRef {
            namespace: s("namespace"),
            name: s("name"),
            uid: s("uid"),
            resource_version: s("resourceVersion"),
            labeled: m["labels"][UNINITIALIZED_LABEL].as_str() == Some("true"),
        }
    }
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What the pass found for one pod.
#[derive(Debug)]
pub enum Verdict {
    /// Not looked at: not running in a namespace of its own, or the ADD would not redirect it.
    Skipped(String),
    /// Its rules are in place.
    InPlace,
    /// Its namespace cannot be used.
    Refused(Refusal),
    /// Its rules could not be checked (the configuration or the read-back failed).
    Failed(String),
    /// Its rules are missing or drifted; with `repair`, what applying them gave.
    Drifted {
        /// The differences, one line each.
        differences: Vec<String>,
        /// `Some` in `repair` mode: the apply's result.
        repaired: Option<Result<(), String>>,
    },
}

/// One pod's result.
#[derive(Debug)]
pub struct Finding {
    /// The pod.
    pub pod: PodRef,
    /// What was found (and done, in `repair` mode).
    pub verdict: Verdict,
}

/// Checks `pods` (and repairs them in `repair` mode): the kernel half of a pass, blocking.
/// Fails only when the node's namespaces cannot be listed at all.
pub fn check_pods<K: NodeKernel>(
    k: &K,
    conf: &NetConf,
    mode: RepairMode,
    pods: &[Arc<Value>],
    all_pods: &[Arc<Value>],
) -> Result<Vec<Finding>, ScanError> {
    let mut wanted = Vec::new();
    let mut findings = Vec::new();
    for pod in pods {
        let pod_ref = PodRef::of(pod);
        let ips = locate::pod_ips(pod);
        let verdict = match locate::not_reconcilable(pod) {
            Some(why) => Verdict::Skipped(why.into()),
            None => {
                match expected::for_pod(conf, pod, |dual| expected::ipv6_from_addresses(&ips, dual))
                {
                    Ok(Expected::Skip(why)) => Verdict::Skipped(why),
                    Err(e) => Verdict::Failed(format!("{}: {}", e.msg, e.details)),
                    Ok(Expected::Redirect { cfg, .. }) => {
                        wanted.push((pod_ref, ips, cfg));
                        continue;
                    }
                }
            }
        };
        findings.push(Finding {
            pod: pod_ref,
            verdict,
        });
    }
    if wanted.is_empty() {
        return Ok(findings);
    }
    let scan = k.scan()?;
    let owners = locate::owners(all_pods);
    for (pod, ips, cfg) in wanted {
        let verdict = match locate::locate(&pod.to_string(), &ips, &scan, &owners) {
            Err(refusal) => Verdict::Refused(refusal),
            Ok(found) => check_one(k, &found.ns, &cfg, conf.backend, mode),
        };
        findings.push(Finding { pod, verdict });
    }
    Ok(findings)
}

fn check_one<K: NodeKernel>(
    k: &K,
    ns: &K::Ns,
    cfg: &Config,
    backend: BackendChoice,
    mode: RepairMode,
) -> Verdict {
    let differences = match k.verify(ns, cfg, backend) {
        Ok(d) if d.is_empty() => return Verdict::InPlace,
        Ok(d) => d,
        Err(e) => return Verdict::Failed(format!("cannot read the rules back: {e}")),
    };
    let repaired =
        (mode == RepairMode::Repair).then(|| k.apply(ns, cfg, backend).map_err(|e| e.to_string()));
    Verdict::Drifted {
        differences,
        repaired,
    }
}

/// How the reconciler runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The plugin's configuration, as the CNI ADD reads it.
    pub conf: NetConf,
    /// What to do about a drifted pod (not `off`: then no reconciler runs).
    pub mode: RepairMode,
    /// Between full passes.
    pub interval: std::time::Duration,
}

/// After a pod event, this long for more before a pass (a pod's start is several events).
const DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(200);

/// Reconciles forever: a full pass once the cache is synced and every `interval`, a pass over
/// the changed pods after pod events.
pub async fn follow<K>(
    kernel: Arc<K>,
    cache: Arc<crate::agent::cache::PodCache>,
    settings: Arc<Settings>,
    actor: act::Actor,
) where
    K: NodeKernel + Send + Sync + 'static,
{
    cache.wait_synced().await;
    tracing::info!(
        mode = settings.mode.as_str(),
        interval_s = settings.interval.as_secs(),
        "reconciler started"
    );
    let mut next_full = tokio::time::Instant::now();
    loop {
        let all = cache.snapshot();
        let changed = cache.take_changed();
        let pods = if tokio::time::Instant::now() >= next_full {
            next_full = tokio::time::Instant::now() + settings.interval;
            all.clone()
        } else {
            changed
        };
        if !pods.is_empty() {
            pass(&kernel, &settings, &actor, pods, all).await;
        }
        tokio::select! {
            _ = cache.changed() => tokio::time::sleep(DEBOUNCE).await,
            _ = tokio::time::sleep_until(next_full) => {}
        }
    }
}

async fn pass<K>(
    kernel: &Arc<K>,
    settings: &Arc<Settings>,
    actor: &act::Actor,
    pods: Vec<Arc<Value>>,
    all: Vec<Arc<Value>>,
) where
    K: NodeKernel + Send + Sync + 'static,
{
    let (k, s) = (kernel.clone(), settings.clone());
    let checked =
        tokio::task::spawn_blocking(move || check_pods(&*k, &s.conf, s.mode, &pods, &all)).await;
    match checked {
        Ok(Ok(findings)) => {
            actor.metrics.pass(true);
            actor.act(findings).await;
        }
        Ok(Err(e)) => {
            actor.metrics.pass(false);
            tracing::error!("reconcile: cannot list the node's network namespaces: {e}");
        }
        Err(e) => {
            actor.metrics.pass(false);
            tracing::error!("reconcile: the pass failed: {e}");
        }
    }
}
