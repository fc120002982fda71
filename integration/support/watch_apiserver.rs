//! A throw-away HTTPS "Kubernetes API server" that holds pods and serves what the node
//! agent's watcher uses: `GET /api/v1/pods` as a list (with `fieldSelector=spec.nodeName=…`
//! and the list's `resourceVersion`) and as a watch (`watch=true`: a chunked stream of
//! `ADDED`/`MODIFIED`/`DELETED` events after the requested `resourceVersion`, `BOOKMARK`
//! events when `allowWatchBookmarks=true`, an `ERROR` event with a `410 Gone` Status when
//! that version has been compacted away), plus the plugin's
//! `GET /api/v1/namespaces/NS/pods/NAME` (lists and watches of `/api/v1/namespaces/NS/pods`
//! too, for one namespace). Every request is counted per kind and path.
//!
//! The writes a reconciler makes (`watch_apiserver/writes.rs`): `PATCH` and `DELETE` (with
//! `preconditions`) of a pod, `POST` of an Event (core v1 and `events.k8s.io/v1`) and `PATCH`
//! of one, `GET` and `PATCH` of a node. Patches by `Content-Type`: merge, strategic merge (as
//! a merge) and JSON patch (`watch_apiserver/patch.rs`). Every request is logged in order
//! with its body ([`WatchApiServer::requests`]).
//!
//! Test knobs: [`WatchApiServer::drop_watches`] ends every open watch stream,
//! [`WatchApiServer::expire_history`] makes resuming from any earlier version a 410,
//! [`WatchApiServer::hold_events`] stops delivering watch events (the pods still change, and
//! GETs see the change), [`WatchApiServer::hold_lists`] makes lists answer 503,
//! [`WatchApiServer::fail_next`] fails the next matching request with a given status.
//!
//! Loopback only; its own CA (rcgen); dropping it stops and joins every thread.
#![allow(dead_code)]

#[path = "watch_apiserver/http.rs"]
mod http;
#[path = "watch_apiserver/patch.rs"]
mod patch;
#[path = "watch_apiserver/writes.rs"]
mod writes;

use crate::support::TempDir;
use base64::Engine as _;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    rv: u64,
    pods: BTreeMap<(String, String), Value>,
    /// (resourceVersion, type, object), oldest first.
    events: Vec<(u64, &'static str, Value)>,
    /// Watches resuming from a version below this get 410.
    oldest: u64,
    generation: u64,
    hold_events: bool,
    hold_lists: bool,
    counts: HashMap<String, usize>,
    /// Nodes by name.
    nodes: BTreeMap<String, Value>,
    /// Events (either API group; one store, as in Kubernetes), in creation order.
    api_events: Vec<Value>,
    /// Every request, in order.
    requests: Vec<Request>,
    /// [`WatchApiServer::fail_next`] knobs: (method, path prefix, status), oldest first.
    fail: Vec<(String, String, u16)>,
}

/// One request the server received.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// `GET`, `PATCH`, …
    pub method: String,
    /// Percent-decoded, without the query.
    pub path: String,
    /// The query as sent (percent-encoded), without the `?`; empty when there is none.
    pub query: String,
    pub content_type: Option<String>,
    /// The body as JSON; `None` when empty, a JSON string holding the text when not JSON.
    pub body: Option<Value>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
    tls: Arc<ServerConfig>,
    bookmark_every: Duration,
}

/// The running server.
pub struct WatchApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
    ca_pem: String,
    dir: TempDir,
}

fn tls_config() -> (ServerConfig, String) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let crate::support::TestPki {
        ca_cert,
        server_cert: cert,
        server_key: key,
        ..
    } = crate::support::test_pki("mesh-redirect watch test CA");
    let tls = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server TLS config");
    (tls, ca_cert.pem())
}

impl WatchApiServer {
    /// Starts a server with no pods; bookmarks every 200 ms.
    pub fn start() -> WatchApiServer {
        let (tls, ca_pem) = tls_config();
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rv: 100,
                ..State::default()
            }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            tls: Arc::new(tls),
            bookmark_every: Duration::from_millis(200),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::spawn(move || accept_loop(listener, shared))
        };
        WatchApiServer {
            addr,
            shared,
            acceptor: Some(acceptor),
            ca_pem,
            dir: TempDir::new("watchapi", &[]),
        }
    }

    /// A kubeconfig file for this server (CA embedded, a bearer token nobody checks).
    pub fn kubeconfig_file(&self) -> PathBuf {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: \"https://{}\"\n    certificate-authority-data: \"{ca}\"\n\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\ncurrent-context: test\n\
             users:\n- name: test\n  user:\n    token: \"watch-test-token\"\n",
            self.addr
        );
        let p = self.dir.join("kubeconfig");
        std::fs::write(&p, text).expect("write kubeconfig");
        p
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn event(&self, kind: &'static str, pod: Value) {
        record(&mut self.state(), kind, pod);
        self.shared.changed.notify_all();
    }

    /// Creates or replaces a pod (ADDED, or MODIFIED when one of that name exists).
    pub fn put_pod(&self, pod: Value) {
        let exists = self.state().pods.contains_key(&key(&pod));
        self.event(if exists { "MODIFIED" } else { "ADDED" }, pod);
    }

    /// Deletes a pod (DELETED with its last state).
    pub fn delete_pod(&self, namespace: &str, name: &str) {
        let pod = self
            .state()
            .pods
            .get(&(namespace.to_string(), name.to_string()))
            .cloned();
        if let Some(pod) = pod {
            self.event("DELETED", pod);
        }
    }

    /// Ends every open watch stream (clients resume from their last version).
    pub fn drop_watches(&self) {
        self.state().generation += 1;
        self.shared.changed.notify_all();
    }

    /// Forgets the event history: a watch resuming from any version so far gets 410 Gone.
    pub fn expire_history(&self) {
        let mut st = self.state();
        st.rv += 1;
        st.oldest = st.rv;
        st.events.clear();
    }

    /// Stops (true) or resumes (false) delivering watch events.
    pub fn hold_events(&self, hold: bool) {
        self.state().hold_events = hold;
        self.shared.changed.notify_all();
    }

    /// Lists answer 503 while held.
    pub fn hold_lists(&self, hold: bool) {
        self.state().hold_lists = hold;
    }

    /// Requests counted under `what`: `list`, `watch`, `watch-410`, or a pod GET's path.
    pub fn count(&self, what: &str) -> usize {
        self.state().counts.get(what).copied().unwrap_or(0)
    }

    /// GETs of one pod.
    pub fn pod_gets(&self, namespace: &str, name: &str) -> usize {
        self.count(&format!("/api/v1/namespaces/{namespace}/pods/{name}"))
    }

    /// GETs of any single pod.
    pub fn all_pod_gets(&self) -> usize {
        self.state()
            .counts
            .iter()
            .filter(|(k, _)| k.starts_with("/api/v1/namespaces/") && k.contains("/pods/"))
            .map(|(_, v)| v)
            .sum()
    }

    /// Every request so far, in the order they arrived (GETs, lists and watches too; a
    /// request failed by [`WatchApiServer::fail_next`] as well).
    pub fn requests(&self) -> Vec<Request> {
        self.state().requests.clone()
    }

    /// The requests with method `method` (any case) whose path starts with `path_prefix`.
    pub fn requests_matching(&self, method: &str, path_prefix: &str) -> Vec<Request> {
        self.state()
            .requests
            .iter()
            .filter(|r| r.method.eq_ignore_ascii_case(method) && r.path.starts_with(path_prefix))
            .cloned()
            .collect()
    }

    /// The Events created (core v1 and `events.k8s.io/v1` alike), in creation order, as
    /// stored now (a later PATCH merged in).
    pub fn events(&self) -> Vec<Value> {
        self.state().api_events.clone()
    }

    /// Creates or replaces a node, with a new `metadata.resourceVersion`.
    pub fn put_node(&self, mut node: Value) {
        let mut st = self.state();
        st.rv += 1;
        node["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        let name = node["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        st.nodes.insert(name, node);
    }

    /// A node as stored now.
    pub fn node(&self, name: &str) -> Option<Value> {
        self.state().nodes.get(name).cloned()
    }

    /// A pod as stored now.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Value> {
        self.state()
            .pods
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// The next request with method `method` (any case) whose path starts with
    /// `path_prefix` is answered `status` with a Kubernetes `Status` body (the reason and
    /// message the API server gives that code) and changes nothing. One-shot; several knobs
    /// queue, each taken by the first request it matches.
    pub fn fail_next(&self, method: &str, path_prefix: &str, status: u16) {
        self.state()
            .fail
            .push((method.to_string(), path_prefix.to_string(), status));
    }
}

/// Stores `pod` under a new resourceVersion (removes it for `DELETED`) and appends the watch
/// event; the caller notifies `Shared::changed` once the lock is released. Returns the pod
/// as stored.
fn record(st: &mut State, kind: &'static str, mut pod: Value) -> Value {
    st.rv += 1;
    let rv = st.rv;
    pod["metadata"]["resourceVersion"] = json!(rv.to_string());
    let key = key(&pod);
    if kind == "DELETED" {
        st.pods.remove(&key);
    } else {
        st.pods.insert(key, pod.clone());
    }
    st.events.push((rv, kind, pod.clone()));
    pod
}

impl Drop for WatchApiServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

fn key(pod: &Value) -> (String, String) {
    let m = &pod["metadata"];
    (
        m["namespace"].as_str().unwrap_or("").into(),
        m["name"].as_str().unwrap_or("").into(),
    )
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut handlers: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let shared = shared.clone();
                handlers.push(std::thread::spawn(move || {
                    let _ = serve(stream, &shared);
                }));
            }
            Err(_) => wait_readable(&listener),
        }
        handlers.retain(|h| !h.is_finished());
    }
    for h in handlers {
        let _ = h.join();
    }
}

/// Until a connection is pending or 50 ms passed (then the stop flag is looked at again):
/// a connection is accepted at once, as by a real server, not after a polling sleep.
fn wait_readable(listener: &TcpListener) {
    use std::os::fd::AsRawFd;
    let mut fds = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut fds, 1, 50) };
}

type Tls = StreamOwned<ServerConnection, TcpStream>;

fn serve(stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    // As a real API server (Go's net/http sets TCP_NODELAY): without it the body's record
    // waits for the ACK of the head's, which the client delays by 40 ms.
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_millis(20)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let conn = ServerConnection::new(shared.tls.clone()).map_err(io::Error::other)?;
    let mut tls = StreamOwned::new(conn, stream);
    let mut buf = Vec::new();
    loop {
        let Some(req) = http::read_request(&mut tls, &mut buf, &shared.stop)? else {
            return Ok(());
        };
        let q: HashMap<&str, String> = req
            .query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k, http::percent_decode(v, true)))
            .collect();
        let scope = pods_scope(&req.path);
        let is_watch = req.method == "GET"
            && scope.is_some()
            && matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
        let (code, body) = match log_request(shared, &req, is_watch) {
            Some(failure) => failure,
            None if is_watch => return watch(&mut tls, shared, scope.flatten(), &q),
            None => route(shared, &req, &q),
        };
        http::respond(&mut tls, code, &body)?;
        if req.close {
            tls.conn.send_close_notify();
            return tls.flush();
        }
    }
}

/// Logs `req`; when a [`WatchApiServer::fail_next`] knob matches it, takes the knob, counts
/// the request as its handler would, and returns the failure to answer instead.
fn log_request(shared: &Shared, req: &http::HttpRequest, is_watch: bool) -> Option<http::Reply> {
    let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    let body = match req.json() {
        Ok(v) => v,
        Err(_) => Some(json!(String::from_utf8_lossy(&req.body))),
    };
    st.requests.push(Request {
        method: req.method.clone(),
        path: req.path.clone(),
        query: req.query.clone(),
        content_type: req.content_type.clone(),
        body,
    });
    let at = st.fail.iter().position(|(m, prefix, _)| {
        m.eq_ignore_ascii_case(&req.method) && req.path.starts_with(prefix.as_str())
    })?;
    let (_, _, code) = st.fail.remove(at);
    match (req.method.as_str(), pods_scope(&req.path)) {
        _ if is_watch => bump(&mut st, "watch"),
        ("GET", Some(_)) => bump(&mut st, "list"),
        ("GET", None) => bump(&mut st, &req.path),
        _ => {}
    }
    Some(http::generic_status(code, &req.method))
}

/// The handler of a request that is not a watch.
fn route(shared: &Shared, req: &http::HttpRequest, q: &HashMap<&str, String>) -> http::Reply {
    let parts: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    let method = req.method.as_str();
    match (method, parts.as_slice()) {
        ("GET", ["api", "v1", "pods"]) => list(shared, None, q),
        ("GET", ["api", "v1", "namespaces", ns, "pods"]) => list(shared, Some(ns), q),
        ("GET", ["api", "v1", "nodes", name]) => writes::get_node(shared, name),
        ("PATCH", ["api", "v1", "nodes", name]) => writes::patch_node(shared, name, req),
        ("PATCH", ["api", "v1", "namespaces", ns, "pods", name]) => {
            writes::patch_pod(shared, ns, name, req)
        }
        ("DELETE", ["api", "v1", "namespaces", ns, "pods", name]) => {
            writes::delete_pod(shared, ns, name, req)
        }
        (_, ["api", "v1", "namespaces", ns, "events", rest @ ..]) => {
            writes::events(shared, "events", ns, rest, req)
        }
        (_, ["apis", "events.k8s.io", "v1", "namespaces", ns, "events", rest @ ..]) => {
            writes::events(shared, "events.events.k8s.io", ns, rest, req)
        }
        ("GET", _) => get(shared, &req.path),
        (_, ["api", "v1", "namespaces", _, "pods", _] | ["api", "v1", "nodes", _]) => {
            http::generic_status(405, method)
        }
        _ => http::generic_status(404, method),
    }
}

/// For a pod collection's path, its namespace: `Some(None)` for `/api/v1/pods`,
/// `Some(Some(ns))` for `/api/v1/namespaces/NS/pods`.
fn pods_scope(path: &str) -> Option<Option<&str>> {
    if path == "/api/v1/pods" {
        return Some(None);
    }
    let ns = path
        .strip_prefix("/api/v1/namespaces/")?
        .strip_suffix("/pods")?;
    (!ns.contains('/')).then_some(Some(ns))
}

/// In the namespace `ns` (any when `None`) and on the node of the `fieldSelector`.
fn on_node(pod: &Value, ns: Option<&str>, q: &HashMap<&str, String>) -> bool {
    if ns.is_some_and(|ns| pod["metadata"]["namespace"].as_str() != Some(ns)) {
        return false;
    }
    match q
        .get("fieldSelector")
        .and_then(|s| s.strip_prefix("spec.nodeName="))
    {
        Some(node) => pod["spec"]["nodeName"].as_str() == Some(node),
        None => true,
    }
}

fn bump(st: &mut State, what: &str) {
    *st.counts.entry(what.to_string()).or_default() += 1;
}

fn list(shared: &Shared, ns: Option<&str>, q: &HashMap<&str, String>) -> (u16, String) {
    let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    bump(&mut st, "list");
    if st.hold_lists {
        return (503, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 503, "reason": "ServiceUnavailable", "message": "held"}).to_string());
    }
    let items: Vec<Value> = st
        .pods
        .values()
        .filter(|p| on_node(p, ns, q))
        .cloned()
        .collect();
    (200, json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}).to_string())
}

fn get(shared: &Shared, path: &str) -> (u16, String) {
    let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    bump(&mut st, path);
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let pod = match parts.as_slice() {
        ["api", "v1", "namespaces", ns, "pods", name] => {
            st.pods.get(&(ns.to_string(), name.to_string()))
        }
        _ => None,
    };
    match (pod, parts.as_slice()) {
        (Some(p), _) => (200, p.to_string()),
        (None, ["api", "v1", "namespaces", _, "pods", name]) => http::not_found("pods", name),
        (None, _) => http::generic_status(404, "GET"),
    }
}

fn chunk(tls: &mut Tls, event: &Value) -> io::Result<()> {
    let data = format!("{event}\n");
    tls.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())?;
    tls.flush()
}

/// A watch stream: events after `resourceVersion`, bookmarks, until dropped or stopped.
fn watch(
    tls: &mut Tls,
    shared: &Shared,
    ns: Option<&str>,
    q: &HashMap<&str, String>,
) -> io::Result<()> {
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let (generation, gone) = {
        let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        bump(&mut st, "watch");
        let gone = from < st.oldest;
        if gone {
            bump(&mut st, "watch-410");
        }
        (st.generation, gone)
    };
    tls.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    )?;
    if gone {
        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": format!("too old resource version: {from}"), "reason": "Expired", "code": 410});
        chunk(tls, &json!({"type": "ERROR", "object": status}))?;
        return tls.write_all(b"0\r\n\r\n");
    }
    let mut last = from;
    let mut bookmark_due = Instant::now() + shared.bookmark_every;
    loop {
        let (out, rv, end) = {
            let st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            let (st, _) = shared
                .changed
                .wait_timeout(st, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner());
            let end = shared.stop.load(Ordering::SeqCst) || st.generation != generation;
            let out: Vec<(u64, &'static str, Value)> = if st.hold_events {
                vec![]
            } else {
                st.events
                    .iter()
                    .filter(|(rv, _, p)| *rv > last && on_node(p, ns, q))
                    .cloned()
                    .collect()
            };
            (out, if st.hold_events { last } else { st.rv }, end)
        };
        if end {
            return tls.write_all(b"0\r\n\r\n");
        }
        for (rv, kind, pod) in out {
            chunk(tls, &json!({"type": kind, "object": pod}))?;
            last = rv;
        }
        if bookmarks && Instant::now() >= bookmark_due {
            last = last.max(rv);
            chunk(
                tls,
                &json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": last.to_string()}}}),
            )?;
            bookmark_due = Instant::now() + shared.bookmark_every;
        }
    }
}
