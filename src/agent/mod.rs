//! The node agent: the DaemonSet's long-running process (binary `mesh-redirect-agent`,
//! feature `agent`), and the plugin's side of its socket.
//!
//! The agent keeps a cache of the pods on its node (list + watch with
//! `fieldSelector=spec.nodeName=<node>`, `kube::runtime::watcher`), answers the plugin's pod
//! lookups on a Unix socket so that an ADD makes no API call, collects the plugin's reports
//! and log lines, serves `/metrics`, `/healthz` and `/readyz`, and runs the node installer.
//!
//! | module | what it is | built |
//! |---|---|---|
//! | [`protocol`] | the socket's line-delimited JSON messages | always |
//! | [`client`] | the plugin's side: lookup with a short budget, fire-and-forget reports | always (std only) |
//! | `cache` | the pod cache fed by the watcher, with a bounded wait for a pod | feature `agent` |
//! | `server` | the socket server | feature `agent` |
//! | `metrics` | the Prometheus registry and the HTTP endpoint | feature `agent` |
//! | `reconcile` | every meshed pod on the node captured, whenever it started: find, verify, repair | feature `agent` |
//! | `run` | the agent's options and main loop | feature `agent` |
//! | `taint` | the opt-in node readiness taint's removal | feature `agent` |

pub mod client;
pub mod protocol;

#[cfg(feature = "agent")]
pub mod cache;
#[cfg(feature = "agent")]
pub mod metrics;
#[cfg(feature = "agent")]
pub mod reconcile;
#[cfg(feature = "agent")]
pub mod run;
#[cfg(feature = "agent")]
pub mod server;
#[cfg(feature = "agent")]
pub mod taint;
