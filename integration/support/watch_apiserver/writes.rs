//! The test API server's writes, answered as the API server answers them:
//!
//! * `PATCH /api/v1/namespaces/NS/pods/NAME`: the pod patched, a new resourceVersion and a
//!   `MODIFIED` watch event; a patch that changes nothing is a no-op (no new version, no
//!   event), as in Kubernetes;
//! * `DELETE /api/v1/namespaces/NS/pods/NAME` with DeleteOptions `preconditions.uid` and
//!   `preconditions.resourceVersion`: a mismatch is `409 Conflict` and the pod stays; else
//!   the pod is gone at once (no graceful phase), `200` with it and a `DELETED` event;
//! * `POST /api/v1/namespaces/NS/events` and `POST /apis/events.k8s.io/v1/namespaces/NS/events`:
//!   `201` with the Event given its name (from `generateName`), resourceVersion and uid;
//!   `GET` and `PATCH` of `…/events/NAME`;
//! * `GET` and `PATCH /api/v1/nodes/NAME`.
//!
//! Every PATCH: a patched `metadata.resourceVersion` different from the stored one (a merge
//! patch carrying a stale version) is `409 Conflict`; a failed JSON patch operation (`test`)
//! is `422 Invalid`; an undecodable body `400 BadRequest`; another media type `415`.

use super::http::{self, HttpRequest, Reply};
use super::patch::{self, PatchError};
use super::{bump, record, Shared, State};
use serde_json::{json, Value};
use std::sync::MutexGuard;

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    shared.state.lock().unwrap_or_else(|e| e.into_inner())
}

/// `current` with the request's patch applied, or the failure to answer: the API server's
/// answers for an undecodable or failing patch, a changed name, a stale resourceVersion.
fn patched(current: &Value, req: &HttpRequest, resource: &str, name: &str) -> Result<Value, Reply> {
    let new =
        patch::apply(req.content_type.as_deref(), current, &req.body).map_err(|e| match e {
            PatchError::Bad(m) => http::status(400, "BadRequest", &m, Value::Null),
            PatchError::Failed(_) => http::generic_status(422, "PATCH"),
            PatchError::Unsupported(m) => {
                http::status(415, "UnsupportedMediaType", &m, Value::Null)
            }
        })?;
    let meta = |v: &Value, field: &str| v["metadata"][field].as_str().map(str::to_string);
    if meta(&new, "name").as_deref() != Some(name) {
        let m = format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            meta(&new, "name").unwrap_or_default()
        );
        return Err(http::status(400, "BadRequest", &m, Value::Null));
    }
    match meta(&new, "resourceVersion") {
        Some(rv) if Some(&rv) != meta(current, "resourceVersion").as_ref() => Err(http::conflict(
            resource,
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        )),
        // No version in the patched object: an unconditional update, at the stored version.
        None => {
            let mut new = new;
            new["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
            Ok(new)
        }
        Some(_) => Ok(new),
    }
}

/// `PATCH` of a pod.
pub(super) fn patch_pod(shared: &Shared, ns: &str, name: &str, req: &HttpRequest) -> Reply {
    let mut st = lock(shared);
    let Some(current) = st.pods.get(&(ns.to_string(), name.to_string())).cloned() else {
        return http::not_found("pods", name);
    };
    let new = match patched(&current, req, "pods", name) {
        Ok(new) => new,
        Err(reply) => return reply,
    };
    if new == current {
        return (200, current.to_string());
    }
    let stored = record(&mut st, "MODIFIED", new);
    drop(st);
    shared.changed.notify_all();
    (200, stored.to_string())
}

/// `DELETE` of a pod, honouring the DeleteOptions' preconditions.
pub(super) fn delete_pod(shared: &Shared, ns: &str, name: &str, req: &HttpRequest) -> Reply {
    let options = match req.json() {
        Ok(v) => v.unwrap_or(Value::Null),
        Err(m) => return http::status(400, "BadRequest", &m, Value::Null),
    };
    let mut st = lock(shared);
    let Some(current) = st.pods.get(&(ns.to_string(), name.to_string())).cloned() else {
        return http::not_found("pods", name);
    };
    let pre = &options["preconditions"];
    for (field, what) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
        let (want, have) = (&pre[field], &current["metadata"][field]);
        if let Some(want) = want.as_str() {
            if Some(want) != have.as_str() {
                let why = format!(
                    "Precondition failed: {what} in precondition: {want}, {what} in object meta: {}",
                    have.as_str().unwrap_or_default()
                );
                return http::conflict("pods", name, &why);
            }
        }
    }
    let stored = record(&mut st, "DELETED", current);
    drop(st);
    shared.changed.notify_all();
    (200, stored.to_string())
}

/// `GET` of a node (counted under its path, as pod GETs are).
pub(super) fn get_node(shared: &Shared, name: &str) -> Reply {
    let mut st = lock(shared);
    bump(&mut st, &format!("/api/v1/nodes/{name}"));
    match st.nodes.get(name) {
        Some(node) => (200, node.to_string()),
        None => http::not_found("nodes", name),
    }
}

/// `PATCH` of a node: a new resourceVersion when it changed.
pub(super) fn patch_node(shared: &Shared, name: &str, req: &HttpRequest) -> Reply {
    let mut st = lock(shared);
    let Some(current) = st.nodes.get(name).cloned() else {
        return http::not_found("nodes", name);
    };
    let mut new = match patched(&current, req, "nodes", name) {
        Ok(new) => new,
        Err(reply) => return reply,
    };
    if new != current {
        st.rv += 1;
        new["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        st.nodes.insert(name.to_string(), new.clone());
    }
    (200, new.to_string())
}

/// Requests under `…/namespaces/NS/events` (`rest`: what follows `events`) of either API
/// group (`resource`: `events` or `events.events.k8s.io`, for messages).
pub(super) fn events(
    shared: &Shared,
    resource: &str,
    ns: &str,
    rest: &[&str],
    req: &HttpRequest,
) -> Reply {
    let mut st = lock(shared);
    let at = |st: &State, name: &str| {
        st.api_events.iter().position(|e| {
            e["metadata"]["namespace"].as_str() == Some(ns)
                && e["metadata"]["name"].as_str() == Some(name)
        })
    };
    match (req.method.as_str(), rest) {
        ("POST", []) => create_event(&mut st, resource, ns, req),
        ("GET" | "PATCH", [name]) => {
            let Some(i) = at(&st, name) else {
                return http::not_found(resource, name);
            };
            if req.method == "GET" {
                return (200, st.api_events[i].to_string());
            }
            let current = st.api_events[i].clone();
            let mut new = match patched(&current, req, resource, name) {
                Ok(new) => new,
                Err(reply) => return reply,
            };
            if new != current {
                st.rv += 1;
                new["metadata"]["resourceVersion"] = json!(st.rv.to_string());
                st.api_events[i] = new.clone();
            }
            (200, new.to_string())
        }
        _ => http::generic_status(405, &req.method),
    }
}

/// `POST` of an Event: named (`generateName` + 5 characters when it has no name), in the
/// request's namespace, with a resourceVersion and a uid; `201` with it.
fn create_event(st: &mut State, resource: &str, ns: &str, req: &HttpRequest) -> Reply {
    let mut event = match req.json() {
        Ok(Some(v)) if v.is_object() => v,
        Ok(_) => {
            return http::status(
                400,
                "BadRequest",
                "the body is not a JSON object",
                Value::Null,
            )
        }
        Err(m) => return http::status(400, "BadRequest", &m, Value::Null),
    };
    match event["metadata"]["namespace"].as_str() {
        Some(n) if !n.is_empty() && n != ns => {
            let m = "the namespace of the provided object does not match the namespace sent on the request";
            return http::status(400, "BadRequest", m, Value::Null);
        }
        _ => event["metadata"]["namespace"] = json!(ns),
    }
    st.rv += 1;
    let rv = st.rv;
    let name = match (
        event["metadata"]["name"].as_str(),
        event["metadata"]["generateName"].as_str(),
    ) {
        (Some(n), _) if !n.is_empty() => n.to_string(),
        (_, Some(g)) if !g.is_empty() => format!("{g}{}", suffix(rv)),
        _ => {
            let m = "name or generateName is required";
            return http::status(422, "Invalid", m, Value::Null);
        }
    };
    let exists = st.api_events.iter().any(|e| {
        e["metadata"]["namespace"].as_str() == Some(ns)
            && e["metadata"]["name"].as_str() == Some(&name)
    });
    if exists {
        let m = format!("{resource} \"{name}\" already exists");
        return http::status(409, "AlreadyExists", &m, http::details(resource, &name));
    }
    let meta = &mut event["metadata"];
    meta["name"] = json!(name);
    meta["resourceVersion"] = json!(rv.to_string());
    meta["uid"] = json!(format!("00000000-0000-4000-8000-{rv:012x}"));
    st.api_events.push(event.clone());
    (201, event.to_string())
}

/// Five characters of the alphabet the API server's name generator uses, from `n`.
fn suffix(n: u64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..5)
        .map(|_| {
            let c = ALPHABET[(x % ALPHABET.len() as u64) as usize] as char;
            x /= ALPHABET.len() as u64;
            c
        })
        .collect()
}
