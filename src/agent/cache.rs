//! The cache of the node's pods, fed by `kube::runtime::watcher` (list, then watch from the
//! list's resourceVersion with bookmarks; a re-list on `410 Gone`; backoff on errors).
//!
//! During a (re-)list the previous contents keep answering; the new list replaces them
//! whole when it is complete (`InitDone`), so a pod deleted while the watch was down
//! disappears. Every change wakes the lookups waiting for a pod ([`PodCache::get_wait`]).

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

type Key = (String, String);

/// The cached pods, by namespace and name, as the API server's JSON objects.
#[derive(Debug, Default)]
pub struct PodCache {
    pods: Mutex<HashMap<Key, Arc<Value>>>,
    changed: Notify,
    synced: AtomicBool,
    /// Pods changed since the reconciler last took them.
    dirty: Mutex<HashSet<Key>>,
}

fn key_of(pod: &Value) -> Option<Key> {
    let m = &pod["metadata"];
    Some((m["namespace"].as_str()?.into(), m["name"].as_str()?.into()))
}

fn uid_of(pod: &Value) -> Option<&str> {
    pod["metadata"]["uid"].as_str()
}

impl PodCache {
    /// True once the first list is complete.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }

    /// How many pods are cached.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no pod is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<Value>>> {
        self.pods.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pod `namespace/name` if it is cached with `uid`.
    pub fn get(&self, namespace: &str, name: &str, uid: &str) -> Option<Arc<Value>> {
        let pods = self.lock();
        let pod = pods.get(&(namespace.to_string(), name.to_string()))?;
        (uid_of(pod) == Some(uid)).then(|| pod.clone())
    }

    /// [`get`](PodCache::get), waiting up to `wait` for the watch to bring the pod.
    pub async fn get_wait(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        wait: Duration,
    ) -> Option<Arc<Value>> {
        tokio::time::timeout(wait, self.until(|| self.get(namespace, name, uid)))
            .await
            .ok()
    }

    /// Waits until `check` gives a value; it is asked now and after every change.
    async fn until<T>(&self, check: impl Fn() -> Option<T>) -> T {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a change between the check and the wait wakes us.
            changed.as_mut().enable();
            if let Some(v) = check() {
                return v;
            }
            changed.await;
        }
    }

    /// Adds or replaces a pod.
    pub fn apply(&self, pod: Value) {
        if let Some(k) = key_of(&pod) {
            self.lock().insert(k.clone(), Arc::new(pod));
            self.dirty().insert(k);
            self.changed.notify_waiters();
        }
    }

    fn dirty(&self) -> std::sync::MutexGuard<'_, HashSet<Key>> {
        self.dirty.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every cached pod.
    pub fn snapshot(&self) -> Vec<Arc<Value>> {
        self.lock().values().cloned().collect()
    }

    /// The pods added or changed since the last call (deleted ones are gone).
    pub fn take_changed(&self) -> Vec<Arc<Value>> {
        let keys = std::mem::take(&mut *self.dirty());
        let pods = self.lock();
        keys.iter().filter_map(|k| pods.get(k).cloned()).collect()
    }

    /// Returns once a pod was added or changed since the last [`take_changed`](Self::take_changed).
    pub async fn changed(&self) {
        self.until(|| (!self.dirty().is_empty()).then_some(()))
            .await
    }

    /// Returns once the first list is complete.
    pub async fn wait_synced(&self) {
        self.until(|| self.synced().then_some(())).await
    }

    /// Removes a pod (only the entry with the deleted pod's UID).
    pub fn delete(&self, pod: &Value) {
        if let Some(k) = key_of(pod) {
            let mut pods = self.lock();
            if pods.get(&k).map(|p| uid_of(p)) == Some(uid_of(pod)) {
                pods.remove(&k);
            }
        }
        self.changed.notify_waiters();
    }

    /// Replaces every pod with a complete list; marks the cache synced.
    pub fn replace(&self, list: HashMap<Key, Arc<Value>>) {
        self.dirty().extend(list.keys().cloned());
        *self.lock() = list;
        self.synced.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

/// Keeps `cache` in step with the API server's pods on `node` until the stream ends (never,
/// in practice: the watcher retries with backoff). `on_error` sees every watch error.
pub async fn follow(client: Client, node: &str, cache: Arc<PodCache>, on_error: impl Fn(&str)) {
    let ar = ApiResource::erase::<Pod>(&());
    let api: Api<DynamicObject> = Api::all_with(client, &ar);
    let config = watcher::Config::default()
        .fields(&format!("spec.nodeName={node}"))
        .any_semantic();
    let stream = watcher::watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    let mut relist: Option<HashMap<Key, Arc<Value>>> = None;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                on_error(&e.to_string());
                continue;
            }
        };
        let json = |o: &DynamicObject| serde_json::to_value(o).unwrap_or(Value::Null);
        match event {
            Event::Init => relist = Some(HashMap::new()),
            Event::InitApply(o) => {
                let v = json(&o);
                if let (Some(list), Some(k)) = (relist.as_mut(), key_of(&v)) {
                    list.insert(k, Arc::new(v));
                }
            }
            Event::InitDone => {
                let list = relist.take().unwrap_or_default();
                tracing::info!(pods = list.len(), "pod cache synced");
                cache.replace(list);
            }
            Event::Apply(o) => cache.apply(json(&o)),
            Event::Delete(o) => cache.delete(&json(&o)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, uid: &str) -> Value {
        json!({"metadata": {"namespace": "ns", "name": name, "uid": uid}})
    }

    #[tokio::test(flavor = "current_thread")]
    async fn only_the_requested_uid_is_answered_and_a_late_pod_is_waited_for() {
        let cache = Arc::new(PodCache::default());
        cache.apply(pod("a", "old"));
        assert!(cache.get("ns", "a", "new").is_none());
        let c = cache.clone();
        let later = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            c.apply(pod("a", "new"));
        });
        let got = cache
            .get_wait("ns", "a", "new", Duration::from_secs(2))
            .await;
        assert_eq!(uid_of(&got.unwrap()), Some("new"));
        later.await.unwrap();
        let t = std::time::Instant::now();
        assert!(cache
            .get_wait("ns", "b", "x", Duration::from_millis(100))
            .await
            .is_none());
        assert!(t.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn a_delete_of_an_older_uid_keeps_the_new_pod() {
        let cache = PodCache::default();
        cache.apply(pod("a", "new"));
        cache.delete(&pod("a", "old"));
        assert!(cache.get("ns", "a", "new").is_some());
        cache.delete(&pod("a", "new"));
        assert!(cache.is_empty());
    }
}
