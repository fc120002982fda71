//! The API half of a pass: what is logged, counted, written to the pod and emitted as an
//! Event for each [`Finding`].
//!
//! | finding | log | metric | API |
//! |---|---|---|---|
//! | in place, skipped | debug | — | — |
//! | refused, check failed | warn | `mesh_redirect_reconcile_refused_total{reason}` | — |
//! | drifted, `repair` | warn + info/error | drift, `repairs_total{mode="repair"}` | Event `RedirectRepaired` / `RedirectRepairFailed` |
//! | drifted, `label` | warn | drift, `repairs_total{mode="label"}` | merge patch of the label, Event `RedirectMissing` |
//! | drifted, `delete` | warn | drift, `repairs_total{mode="delete"}` | delete with `preconditions` {uid, resourceVersion}, Event `RedirectMissing` |
//! | drifted, `off` | warn | drift | — |

use super::{Finding, PodRef, RepairMode, Verdict, UNINITIALIZED_LABEL};
use crate::agent::metrics::Metrics;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, Client};
use std::sync::Arc;

/// The component name on Events.
pub const COMPONENT: &str = "mesh-redirect-agent";

/// Acts on findings: one per pass, shared by the passes.
pub struct Actor {
    /// The API client.
    pub client: Client,
    /// This node (on Events).
    pub node: String,
    /// What to do about a drifted pod.
    pub mode: RepairMode,
    /// Where it is counted.
    pub metrics: Arc<Metrics>,
}

/// At most this many differences are named in a log line or an Event.
const SHOWN: usize = 5;

fn summary(differences: &[String]) -> String {
    let mut s = differences
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if differences.len() > SHOWN {
        s.push_str(&format!("; and {} more", differences.len() - SHOWN));
    }
    s
}

impl Actor {
    /// Handles every finding of a pass, in order.
    pub async fn act(&self, findings: Vec<Finding>) {
        for f in findings {
            self.one(f).await;
        }
    }

    async fn one(&self, Finding { pod, verdict }: Finding) {
        match verdict {
            Verdict::Skipped(why) => {
                tracing::debug!(pod = %pod, "reconcile: not meshed here: {why}")
            }
            Verdict::InPlace => tracing::debug!(pod = %pod, "reconcile: the redirect is in place"),
            Verdict::Refused(r) => {
                tracing::warn!(pod = %pod, reason = r.reason(), "reconcile: cannot check the pod's redirect: {r}");
                self.metrics.refused(r.reason());
            }
            Verdict::Failed(why) => {
                tracing::warn!(pod = %pod, "reconcile: cannot check the pod's redirect: {why}");
                self.metrics.refused("check_failed");
            }
            Verdict::Drifted {
                differences,
                repaired,
            } => self.drifted(&pod, &differences, repaired).await,
        }
    }

    async fn drifted(
        &self,
        pod: &PodRef,
        differences: &[String],
        repaired: Option<Result<(), String>>,
    ) {
        self.metrics.drift_detected();
        let missing = summary(differences);
        let mode = self.mode.as_str();
        tracing::warn!(pod = %pod, mode, differences = differences.len(), "reconcile: the pod's redirect is missing or drifted: {missing}");
        let (ok, warning, reason, message) = match (self.mode, repaired) {
            (RepairMode::Off, _) => return,
            (RepairMode::Repair, Some(Ok(()))) => (true, false, "RedirectRepaired", format!(
                "mesh-redirect found the traffic redirect missing or drifted ({missing}) and applied it in place: new connections are captured by the sidecar")),
            (RepairMode::Repair, result) => {
                let why = result.and_then(Result::err).unwrap_or_else(|| "not attempted".into());
                (false, true, "RedirectRepairFailed", format!(
                    "mesh-redirect found the traffic redirect missing or drifted ({missing}) and could not apply it: {why}"))
            }
            (RepairMode::Label, _) if pod.labeled => {
                tracing::info!(pod = %pod, "reconcile: already labeled {UNINITIALIZED_LABEL}=true");
                return;
            }
            (RepairMode::Label, _) => match self.label(pod).await {
                Ok(()) => (true, true, "RedirectMissing", format!(
                    "the traffic redirect is missing or drifted ({missing}): labeled {UNINITIALIZED_LABEL}=true; restart the pod to capture its traffic")),
                Err(e) => (false, true, "RedirectMissing", format!(
                    "the traffic redirect is missing or drifted ({missing}); labeling the pod failed: {e}")),
            },
            (RepairMode::Delete, _) => match self.delete(pod).await {
                Ok(()) => (true, true, "RedirectMissing", format!(
                    "the traffic redirect is missing or drifted ({missing}): the pod was deleted so that its controller re-creates it with the redirect")),
                Err(e) => (false, true, "RedirectMissing", format!(
                    "the traffic redirect is missing or drifted ({missing}); deleting the pod failed: {e}")),
            },
        };
        self.metrics.repair(mode, ok);
        if ok {
            tracing::info!(pod = %pod, mode, "reconcile: {message}");
        } else {
            tracing::error!(pod = %pod, mode, "reconcile: {message}");
        }
        self.event(pod, warning, reason, message).await;
    }

    async fn label(&self, pod: &PodRef) -> Result<(), kube::Error> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let patch = serde_json::json!({"metadata": {"labels": {UNINITIALIZED_LABEL: "true"}}});
        api.patch(&pod.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
    }

    /// Deletes the pod the pass saw, not a pod re-created under its name since, nor one that
    /// changed since (its controller or a user may have acted already).
    async fn delete(&self, pod: &PodRef) -> Result<(), kube::Error> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(pod.uid.clone()),
                resource_version: Some(pod.resource_version.clone()),
            }),
            ..DeleteParams::default()
        };
        api.delete(&pod.name, &params).await.map(|_| ())
    }

    /// A core/v1 Event on the pod; a failure is logged, never fatal.
    async fn event(&self, pod: &PodRef, warning: bool, reason: &str, mut message: String) {
        if message.len() > 1000 {
            let mut cut = 1000;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let now = k8s_openapi::chrono::Utc::now();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!(
                    "{}.{:x}",
                    pod.name,
                    now.timestamp_nanos_opt().unwrap_or(0)
                )),
                namespace: Some(pod.namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name.clone()),
                namespace: Some(pod.namespace.clone()),
                uid: Some(pod.uid.clone()),
                resource_version: Some(pod.resource_version.clone()),
                ..ObjectReference::default()
            },
            reason: Some(reason.into()),
            message: Some(message),
            type_: Some(if warning { "Warning" } else { "Normal" }.into()),
            source: Some(EventSource {
                component: Some(COMPONENT.into()),
                host: Some(self.node.clone()),
            }),
            reporting_component: Some(COMPONENT.into()),
            reporting_instance: Some(self.node.clone()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &pod.namespace);
        if let Err(e) = api.create(&PostParams::default(), &event).await {
            tracing::warn!(pod = %pod, reason, "cannot emit the Event: {e}");
        }
    }
}
