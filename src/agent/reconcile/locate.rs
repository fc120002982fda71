//! Which cached pods the reconciler looks at, and which namespace is a pod's: pure functions
//! over the pod objects and a scan.
//!
//! A pod's namespace is the one namespace whose interfaces hold the pod's IPs. The reconciler
//! refuses — and says why — when that is not exactly one namespace of exactly one pod: the
//! IPs are on the host (a host-network pod, or a pod object lying about its IP), on several
//! namespaces, on none, or the namespace also holds another pod's IPs.

use super::scan::{FoundNetns, Scan};
use serde_json::Value;
use std::collections::HashMap;
use std::net::IpAddr;

/// Why a pod is not looked at (it is not running in a namespace of its own yet or anymore).
pub fn not_reconcilable(pod: &Value) -> Option<&'static str> {
    if pod["spec"]["hostNetwork"].as_bool() == Some(true) {
        return Some("host network");
    }
    if !pod["metadata"]["deletionTimestamp"].is_null() {
        return Some("being deleted");
    }
    if pod["status"]["phase"].as_str() != Some("Running") {
        return Some("not running");
    }
    if pod_ips(pod).is_empty() {
        return Some("no pod IP");
    }
    None
}

/// `status.podIPs[].ip`, else `status.podIP`; loopback and unspecified addresses never
/// identify a pod.
pub fn pod_ips(pod: &Value) -> Vec<IpAddr> {
    let status = &pod["status"];
    let mut ips: Vec<IpAddr> = status["podIPs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["ip"].as_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    if ips.is_empty() {
        ips.extend(
            status["podIP"]
                .as_str()
                .and_then(|s| s.parse::<IpAddr>().ok()),
        );
    }
    ips.retain(|ip: &IpAddr| !ip.is_loopback() && !ip.is_unspecified());
    ips
}

/// Why a pod's namespace cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// An IP of the pod is on the host's namespace.
    HostNetns,
    /// No namespace holds the pod's IPs (`unreadable` namespaces might).
    NotFound {
        /// Namespaces whose addresses could not be read, with the reason.
        unreadable: Vec<String>,
    },
    /// Several namespaces hold the pod's IPs.
    SeveralNamespaces(usize),
    /// The namespace also holds the IPs of other pods.
    SharedWith(Vec<String>),
}

impl Refusal {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::HostNetns => "host_netns",
            Refusal::NotFound { unreadable } if !unreadable.is_empty() => "netns_unreadable",
            Refusal::NotFound { .. } => "netns_not_found",
            Refusal::SeveralNamespaces(_) | Refusal::SharedWith(_) => "ambiguous",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::HostNetns => write!(f, "its IP is on the host's network namespace"),
            Refusal::NotFound { unreadable } if unreadable.is_empty() => write!(
                f,
                "no network namespace on the node holds its IP (does the agent run with hostPID?)"
            ),
            Refusal::NotFound { unreadable } => write!(
                f,
                "no readable network namespace holds its IP; {} could not be read: {}",
                unreadable.len(),
                unreadable.join("; ")
            ),
            Refusal::SeveralNamespaces(n) => write!(f, "{n} network namespaces hold its IP"),
            Refusal::SharedWith(others) => write!(
                f,
                "its network namespace also holds the IPs of {}",
                others.join(", ")
            ),
        }
    }
}

/// Every running pod's IPs, to tell whether a namespace holds more than one pod.
pub fn owners(pods: &[std::sync::Arc<Value>]) -> HashMap<IpAddr, String> {
    let mut by_ip = HashMap::new();
    for pod in pods.iter().filter(|p| not_reconcilable(p).is_none()) {
        let m = &pod["metadata"];
        let name = format!(
            "{}/{}",
            m["namespace"].as_str().unwrap_or_default(),
            m["name"].as_str().unwrap_or_default()
        );
        for ip in pod_ips(pod) {
            by_ip.insert(ip, name.clone());
        }
    }
    by_ip
}

/// The namespace of the pod `name` with `ips`, or why there is none to use.
pub fn locate<'a, N>(
    name: &str,
    ips: &[IpAddr],
    scan: &'a Scan<N>,
    owners: &HashMap<IpAddr, String>,
) -> Result<&'a FoundNetns<N>, Refusal> {
    let holds = |f: &FoundNetns<N>| {
        f.addresses
            .as_ref()
            .is_ok_and(|a| a.iter().any(|ip| ips.contains(ip)))
    };
    let candidates: Vec<&FoundNetns<N>> = scan.namespaces.iter().filter(|f| holds(f)).collect();
    if candidates.iter().any(|f| f.host) {
        return Err(Refusal::HostNetns);
    }
    let found = match candidates.as_slice() {
        [] => {
            let unreadable = scan
                .namespaces
                .iter()
                .filter_map(|f| {
                    Some(format!(
                        "{} (pid {}): {}",
                        f.id,
                        f.pid,
                        f.addresses.as_ref().err()?
                    ))
                })
                .chain(scan.unreadable.iter().cloned())
                .collect();
            return Err(Refusal::NotFound { unreadable });
        }
        [one] => *one,
        many => return Err(Refusal::SeveralNamespaces(many.len())),
    };
    let mut others: Vec<String> = found
        .addresses
        .iter()
        .flatten()
        .filter_map(|ip| owners.get(ip))
        .filter(|owner| *owner != name)
        .cloned()
        .collect();
    others.sort();
    others.dedup();
    if others.is_empty() {
        Ok(found)
    } else {
        Err(Refusal::SharedWith(others))
    }
}
