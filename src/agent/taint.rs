//! The node readiness taint (opt-in, `--remove-taint`): nodes registered with
//! `mesh-redirect.io/not-ready:NoSchedule` (kubelet `--register-with-taints`) get no pod
//! scheduled until the agent has installed the plugin and synced its cache; then the agent
//! removes the taint from its own node, once.
//!
//! The removal is a merge patch of `spec.taints` that carries the node's `resourceVersion`:
//! the API server refuses it (409) if the node changed since it was read — a taint added or
//! removed by someone else meanwhile is never overwritten — and the agent reads again.

use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use std::time::Duration;

/// The taint's key.
pub const KEY: &str = "mesh-redirect.io/not-ready";
/// The taint's effect.
pub const EFFECT: &str = "NoSchedule";

/// Removes the taint once `ready()` holds; retries with backoff until done.
pub async fn remove_when_ready(client: Client, node: String, ready: impl Fn() -> bool) {
    while !ready() {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let api: Api<Node> = Api::all(client);
    let mut backoff = Duration::from_millis(200);
    loop {
        match remove_once(&api, &node).await {
            Ok(true) => {
                tracing::info!(node = %node, "removed the taint {KEY}:{EFFECT}: the node is ready for pods");
                return;
            }
            Ok(false) => {
                tracing::info!(node = %node, "the node has no taint {KEY}:{EFFECT}");
                return;
            }
            Err(e) => {
                tracing::warn!(node = %node, "cannot remove the taint {KEY}:{EFFECT} yet: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// One read and patch; `Ok(false)` when there is nothing to remove.
async fn remove_once(api: &Api<Node>, node: &str) -> Result<bool, kube::Error> {
    let current = api.get(node).await?;
    let taints = current
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let kept: Vec<_> = taints
        .iter()
        .filter(|t| !(t.key == KEY && t.effect == EFFECT))
        .cloned()
        .collect();
    if kept.len() == taints.len() {
        return Ok(false);
    }
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": current.metadata.resource_version},
        "spec": {"taints": kept},
    });
    api.patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(true)
}
