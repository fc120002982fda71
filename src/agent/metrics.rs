//! The agent's metrics (Prometheus text via `prometheus-client`) and its small HTTP endpoint:
//! `/metrics`, `/healthz` (the process serves), `/readyz` (installed and cache synced, 503
//! before).
//!
//! | metric | type | what |
//! |---|---|---|
//! | `mesh_redirect_cni_requests_total{command,result}` | counter | finished ADD/DEL/CHECK, as the plugin reported them |
//! | `mesh_redirect_cni_add_duration_seconds` | histogram | each reported ADD's wall time |
//! | `mesh_redirect_pod_lookups_total{source}` | counter | where the plugin found the pod: `cache` or `api` |
//! | `mesh_redirect_agent_pods_cached` | gauge | pods in the cache |
//! | `mesh_redirect_agent_ready` | gauge | 1 when installed and synced |
//! | `mesh_redirect_drift_detected_total` | counter | meshed pods found without their rules, or with drifted ones, per pass |
//! | `mesh_redirect_repairs_total{mode,result}` | counter | what the reconciler did about them: `repair`/`label`/`delete`, `success`/`failure` |
//! | `mesh_redirect_reconcile_refused_total{reason}` | counter | meshed pods it could not check: `host_netns`, `ambiguous`, `netns_not_found`, `netns_unreadable`, `check_failed` |
//! | `mesh_redirect_reconcile_passes_total{result}` | counter | passes: `ok`, or `error` when the node's namespaces could not be listed |

use super::protocol::Report;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    command: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RepairLabels {
    mode: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

/// The reconciler's counters.
#[derive(Debug, Default)]
struct ReconcileMetrics {
    drift: Counter,
    repairs: Family<RepairLabels, Counter>,
    refused: Family<ReasonLabels, Counter>,
    passes: Family<ResultLabels, Counter>,
}

impl ReconcileMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "mesh_redirect_drift_detected",
            "Meshed pods found with missing or drifted rules (each pass counts each pod)",
            self.drift.clone(),
        );
        registry.register(
            "mesh_redirect_repairs",
            "What the reconciler did about a missing or drifted redirect, by mode and result",
            self.repairs.clone(),
        );
        registry.register(
            "mesh_redirect_reconcile_refused",
            "Meshed pods the reconciler could not check, by reason",
            self.refused.clone(),
        );
        registry.register(
            "mesh_redirect_reconcile_passes",
            "Reconciler passes, by result",
            self.passes.clone(),
        );
        for mode in ["repair", "label", "delete"] {
            for result in ["success", "failure"] {
                let _ = self.repairs.get_or_create(&RepairLabels {
                    mode: mode.into(),
                    result: result.into(),
                });
            }
        }
        for reason in [
            "host_netns",
            "ambiguous",
            "netns_not_found",
            "netns_unreadable",
            "check_failed",
        ] {
            let _ = self.refused.get_or_create(&ReasonLabels {
                reason: reason.into(),
            });
        }
        for result in ["ok", "error"] {
            let _ = self.passes.get_or_create(&ResultLabels {
                result: result.into(),
            });
        }
    }
}

/// Every metric the agent exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    add_duration: Histogram,
    lookups: Family<SourceLabels, Counter>,
    pods_cached: Gauge,
    ready: Gauge,
    reconcile: ReconcileMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let add_duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let lookups = Family::<SourceLabels, Counter>::default();
        let pods_cached = Gauge::default();
        let ready = Gauge::default();
        registry.register(
            "mesh_redirect_cni_requests",
            "Finished CNI invocations (ADD, DEL, CHECK) reported by the plugin",
            requests.clone(),
        );
        registry.register(
            "mesh_redirect_cni_add_duration_seconds",
            "Wall time of each CNI ADD, from start to the flushed answer",
            add_duration.clone(),
        );
        registry.register(
            "mesh_redirect_pod_lookups",
            "Where the plugin found the pod: the agent's cache or the API server",
            lookups.clone(),
        );
        registry.register(
            "mesh_redirect_agent_pods_cached",
            "Pods in the agent's cache",
            pods_cached.clone(),
        );
        registry.register(
            "mesh_redirect_agent_ready",
            "1 when the node is installed and the pod cache synced",
            ready.clone(),
        );
        // Every series exists from the start (at 0), so rates and alerts need no absent().
        for command in ["ADD", "DEL", "CHECK"] {
            for result in ["ok", "error"] {
                let _ = requests.get_or_create(&RequestLabels {
                    command: command.into(),
                    result: result.into(),
                });
            }
        }
        for source in ["cache", "api"] {
            let _ = lookups.get_or_create(&SourceLabels {
                source: source.into(),
            });
        }
        let reconcile = ReconcileMetrics::default();
        reconcile.register(&mut registry);
        Metrics {
            registry,
            requests,
            add_duration,
            lookups,
            pods_cached,
            ready,
            reconcile,
        }
    }
}

impl Metrics {
    /// Counts one reported CNI invocation.
    pub fn report(&self, r: &Report) {
        let command = match r.command.as_str() {
            c @ ("ADD" | "DEL" | "CHECK") => c,
            _ => "other",
        };
        let result = if r.result == "ok" { "ok" } else { "error" };
        self.requests
            .get_or_create(&RequestLabels {
                command: command.into(),
                result: result.into(),
            })
            .inc();
        if command == "ADD" && r.duration_seconds.is_finite() && r.duration_seconds >= 0.0 {
            self.add_duration.observe(r.duration_seconds);
        }
        if let Some(source @ ("cache" | "api")) = r.lookup.as_deref() {
            self.lookups
                .get_or_create(&SourceLabels {
                    source: source.into(),
                })
                .inc();
        }
    }

    /// Counts a meshed pod found with missing or drifted rules.
    pub fn drift_detected(&self) {
        self.reconcile.drift.inc();
    }

    /// Counts what the reconciler did in `mode`: `success` or `failure`.
    pub fn repair(&self, mode: &str, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reconcile
            .repairs
            .get_or_create(&RepairLabels {
                mode: mode.into(),
                result: result.into(),
            })
            .inc();
    }

    /// Counts a meshed pod the reconciler could not check.
    pub fn refused(&self, reason: &str) {
        self.reconcile
            .refused
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    /// Counts a pass.
    pub fn pass(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reconcile
            .passes
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }

    /// The text exposition, with the gauges set to `pods` and `ready` first.
    pub fn render(&self, pods: usize, ready: bool) -> String {
        self.pods_cached.set(pods as i64);
        self.ready.set(i64::from(ready));
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// What the endpoint needs to know about the agent.
pub trait Status: Send + Sync {
    /// Installed (or installing not asked for) and the cache synced.
    fn ready(&self) -> bool;
    /// Pods in the cache.
    fn pods(&self) -> usize;
}

/// Serves `/metrics`, `/healthz`, `/readyz` on `listener` forever.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, status: Arc<dyn Status>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let (metrics, status) = (metrics.clone(), status.clone());
        tokio::spawn(async move {
            let work = answer(stream, &metrics, &*status);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), work).await;
        });
    }
}

/// One request, one answer, then the connection is closed.
async fn answer(
    mut stream: TcpStream,
    metrics: &Metrics,
    status: &dyn Status,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 16 << 10 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let mut first = head.split_whitespace();
    let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (code, ctype, body) = match (method, path) {
        ("GET", "/metrics") => (
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(status.pods(), status.ready()),
        ),
        ("GET", "/healthz") => (200, "text/plain", "ok\n".to_string()),
        ("GET", "/readyz") if status.ready() => (200, "text/plain", "ready\n".to_string()),
        ("GET", "/readyz") => (
            503,
            "text/plain",
            "not ready: not installed or cache not synced\n".to_string(),
        ),
        ("GET", _) => (404, "text/plain", "not found\n".to_string()),
        _ => (405, "text/plain", "method not allowed\n".to_string()),
    };
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(out.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_become_the_fixed_metric_names() {
        let m = Metrics::default();
        for (command, result, lookup) in [
            ("ADD", "ok", Some("cache")),
            ("ADD", "ok", Some("api")),
            ("DEL", "error", None),
        ] {
            m.report(&Report {
                command: command.into(),
                result: result.into(),
                duration_seconds: 0.004,
                lookup: lookup.map(str::to_string),
            });
        }
        let text = m.render(3, true);
        for want in [
            "mesh_redirect_cni_requests_total{command=\"ADD\",result=\"ok\"} 2",
            "mesh_redirect_cni_requests_total{command=\"DEL\",result=\"error\"} 1",
            "mesh_redirect_cni_add_duration_seconds_count 2",
            "mesh_redirect_pod_lookups_total{source=\"cache\"} 1",
            "mesh_redirect_pod_lookups_total{source=\"api\"} 1",
            "mesh_redirect_agent_pods_cached 3",
            "mesh_redirect_agent_ready 1",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
    }
}
