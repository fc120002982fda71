//! A throw-away HTTPS "Kubernetes API server" for tests: just enough HTTP/1.1 to answer
//! `GET` requests with scripted replies.
//!
//! It makes its own CA and a server certificate for `127.0.0.1` (rcgen), listens on
//! `127.0.0.1:0` (never any other address: tests must not be reachable from the network),
//! and answers each connection in its own thread with rustls. Replies are scripted per
//! request path ([`Reply`]): a Pod, 404, any status, garbage, a delay, a slow drip, or no
//! answer at all; a whole server can also accept TCP connections and never speak
//! ([`ApiServerBuilder::silent`]). Requests are counted per path. Dropping the server stops
//! and joins every thread and removes its temporary directory.
//!
//! Use it from a test crate with `mod support;` and
//! `#[path = "support/apiserver.rs"] mod apiserver;` (it keeps its files in a
//! [`TempDir`](crate::support::TempDir)).
#![allow(dead_code)]

use crate::support::TempDir;
use base64::Engine as _;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the server does with a request to one path.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with this JSON body.
    Pod(Value),
    /// 404 with a Kubernetes `Status` body, as the API server sends for a missing pod.
    NotFound,
    /// Any status with this body.
    Status(u16, String),
    /// 200 with this body, whatever it is.
    Garbage(String),
    /// Wait, then reply.
    Delay(Duration, Box<Reply>),
    /// Send the reply one byte per interval (headers included).
    Drip(Duration, Box<Reply>),
    /// Read the request and never answer (until the server is dropped).
    Hang,
    /// The n-th request to the path gets the n-th reply; the last one repeats.
    Sequence(Vec<Reply>),
}

/// How to start an [`ApiServer`].
#[derive(Debug, Default)]
pub struct ApiServerBuilder {
    token: Option<String>,
    require_client_cert: bool,
    silent: bool,
}

impl ApiServerBuilder {
    /// Answer 401 unless `Authorization: Bearer <token>` is presented.
    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_string());
        self
    }

    /// Refuse TLS clients without a certificate signed by the server's CA.
    pub fn require_client_cert(mut self) -> Self {
        self.require_client_cert = true;
        self
    }

    /// Accept TCP connections and never read or write a byte (not even TLS).
    pub fn silent(mut self) -> Self {
        self.silent = true;
        self
    }

    pub fn start(self) -> ApiServer {
        ApiServer::start_with(self)
    }
}

struct Route {
    reply: Reply,
    count: usize,
}

#[derive(Default)]
struct State {
    routes: HashMap<String, Route>,
    /// Requests to paths without a route (they get 404).
    unrouted: HashMap<String, usize>,
    token: Option<String>,
    total: usize,
}

struct Shared {
    state: Mutex<State>,
    stop: AtomicBool,
    connections: AtomicUsize,
    silent: bool,
    tls: Arc<ServerConfig>,
}

/// The running server; see the module docs.
pub struct ApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    dir: TempDir,
}

static SERVERS: AtomicUsize = AtomicUsize::new(0);

impl ApiServer {
    /// A server with default settings: no token required, client certificates optional.
    pub fn start() -> ApiServer {
        ApiServerBuilder::default().start()
    }

    pub fn builder() -> ApiServerBuilder {
        ApiServerBuilder::default()
    }

    fn start_with(b: ApiServerBuilder) -> ApiServer {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // Unique per server, so that a certificate from another test server's CA is an
        // unknown issuer, not a bad signature from a same-named one.
        let n = SERVERS.fetch_add(1, Ordering::Relaxed);

        let crate::support::TestPki {
            ca_cert,
            issuer,
            server_cert,
            server_key,
        } = crate::support::test_pki(&format!("mesh-redirect test CA {n}"));

        let mut roots = RootCertStore::empty();
        roots.add(ca_cert.der().clone()).expect("CA into store");
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        let verifier = if b.require_client_cert {
            verifier.build()
        } else {
            verifier.allow_unauthenticated().build()
        }
        .expect("client verifier");
        let tls = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![server_cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
            )
            .expect("server TLS config");

        // Loopback only, by construction.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("local addr");
        assert!(addr.ip().is_loopback());

        let dir = TempDir::new(&format!("apiserver{n}"), &[]);

        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                token: b.token,
                ..State::default()
            }),
            stop: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            silent: b.silent,
            tls: Arc::new(tls),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::spawn(move || accept_loop(listener, shared))
        };
        ApiServer {
            addr,
            shared,
            acceptor: Some(acceptor),
            ca_pem: ca_cert.pem(),
            issuer,
            dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The CA that signed the server certificate (and signs [`client_identity`]).
    ///
    /// [`client_identity`]: ApiServer::client_identity
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A private directory for kubeconfigs, token files and the like; removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A client certificate and PKCS#8 key (both PEM) signed by this server's CA.
    pub fn client_identity(&self, common_name: &str) -> (String, String) {
        let key = KeyPair::generate().expect("client key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).expect("client cert");
        (cert.pem(), key.serialize_pem())
    }

    /// Requires `Authorization: Bearer <token>` from now on (`None`: no check).
    pub fn set_token(&self, token: Option<&str>) {
        self.state().token = token.map(str::to_string);
    }

    /// Scripts the reply for one path and resets its request count.
    pub fn route(&self, path: &str, reply: Reply) {
        self.state()
            .routes
            .insert(path.to_string(), Route { reply, count: 0 });
    }

    /// Scripts the reply for `GET /api/v1/namespaces/<ns>/pods/<name>`.
    pub fn pod(&self, namespace: &str, name: &str, reply: Reply) {
        self.route(&pod_path(namespace, name), reply);
    }

    /// Requests seen for a path (routed or not).
    pub fn requests(&self, path: &str) -> usize {
        let st = self.state();
        st.routes
            .get(path)
            .map(|r| r.count)
            .or_else(|| st.unrouted.get(path).copied())
            .unwrap_or(0)
    }

    /// Requests seen for one pod.
    pub fn pod_requests(&self, namespace: &str, name: &str) -> usize {
        self.requests(&pod_path(namespace, name))
    }

    /// Requests seen in total (every path).
    pub fn total_requests(&self) -> usize {
        self.state().total
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// A kubeconfig (YAML) for this server: CA embedded, bearer `token`.
    pub fn kubeconfig(&self, token: &str) -> String {
        self.kubeconfig_with(&self.cluster_fields(), &[("token", token.to_string())])
    }

    /// Writes [`kubeconfig`](ApiServer::kubeconfig) to `<dir>/kubeconfig` and returns the path.
    pub fn kubeconfig_file(&self, token: &str) -> PathBuf {
        self.write_file("kubeconfig", &self.kubeconfig(token))
    }

    /// `server` and `certificate-authority-data` for this server.
    pub fn cluster_fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("server", self.url()),
            (
                "certificate-authority-data",
                base64::engine::general_purpose::STANDARD.encode(&self.ca_pem),
            ),
        ]
    }

    /// A kubeconfig with one cluster, one user and a current context, from field lists.
    /// Values are written as JSON strings (valid YAML), except `true`/`false`.
    pub fn kubeconfig_with(&self, cluster: &[(&str, String)], user: &[(&str, String)]) -> String {
        let fields = |f: &[(&str, String)]| {
            f.iter()
                .map(|(k, v)| match v.as_str() {
                    "true" | "false" => format!("    {k}: {v}\n"),
                    _ => format!("    {k}: {}\n", Value::String(v.clone())),
                })
                .collect::<String>()
        };
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n{}\
             contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n\
             current-context: test\nusers:\n- name: test\n  user:\n{}",
            fields(cluster),
            fields(user)
        )
    }

    /// Writes a file into [`dir`](ApiServer::dir) and returns its path.
    pub fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, contents).expect("write test file");
        p
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        // The directory (a `TempDir` field) goes after this, the threads being joined.
    }
}

pub fn pod_path(namespace: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/pods/{name}")
}

/// A minimal Pod object.
pub fn pod_json(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": "00000000-0000-0000-0000-000000000001"},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    })
}

/// A Kubernetes `Status` body.
pub fn status_json(code: u16, reason: &str, message: &str) -> String {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
    .to_string()
}

/// A port on 127.0.0.1 that nothing listens on (it was free a moment ago).
pub fn dead_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut handlers = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let shared = shared.clone();
                handlers.push(std::thread::spawn(move || {
                    let _ = serve(stream, &shared);
                }));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
        handlers.retain(|h: &JoinHandle<()>| !h.is_finished());
    }
    for h in handlers {
        let _ = h.join();
    }
}

/// Sleeps up to `d`, waking early when the server stops. Returns false if it stopped.
fn pause(shared: &Shared, d: Duration) -> bool {
    let end = Instant::now() + d;
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return false;
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(10)));
    }
}

fn serve(stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    if shared.silent {
        // Hold the connection open without a word until the server stops.
        while pause(shared, Duration::from_millis(50)) {}
        return Ok(());
    }
    // Short read timeouts so the loops below notice `stop`.
    stream.set_read_timeout(Some(Duration::from_millis(20)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let conn = ServerConnection::new(shared.tls.clone()).map_err(io::Error::other)?;
    let mut tls = StreamOwned::new(conn, stream);
    let mut buf = Vec::new();
    // Keep-alive: one request after another on the same connection.
    loop {
        let Some(head) = read_head(&mut tls, &mut buf, shared)? else {
            return Ok(());
        };
        let (path, auth) = parse_head(&head);
        let reply = pick_reply(shared, &path, auth.as_deref());
        if !send(&mut tls, shared, &reply)? {
            return Ok(());
        }
    }
}

/// Reads one request head (up to the blank line). `None`: the client left or we stop.
fn read_head(
    tls: &mut StreamOwned<ServerConnection, TcpStream>,
    buf: &mut Vec<u8>,
    shared: &Shared,
) -> io::Result<Option<String>> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            // GET requests carry no body; whatever follows is the next request.
            buf.drain(..end + 4);
            return Ok(Some(head));
        }
        if shared.stop.load(Ordering::SeqCst) || buf.len() > 64 << 10 {
            return Ok(None);
        }
        if !crate::support::read_into(tls, buf)? {
            return Ok(None);
        }
    }
}

/// The request path and the `Authorization` header, if any.
fn parse_head(head: &str) -> (String, Option<String>) {
    let mut lines = head.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("")
        .to_string();
    let auth = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("authorization")
            .then(|| v.trim().to_string())
    });
    (path, auth)
}

fn pick_reply(shared: &Shared, path: &str, auth: Option<&str>) -> Reply {
    let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    st.total += 1;
    let reply = match st.routes.get_mut(path) {
        Some(route) => {
            let n = route.count;
            route.count += 1;
            match &route.reply {
                Reply::Sequence(replies) if !replies.is_empty() => {
                    replies[n.min(replies.len() - 1)].clone()
                }
                r => r.clone(),
            }
        }
        None => {
            *st.unrouted.entry(path.to_string()).or_default() += 1;
            Reply::NotFound
        }
    };
    match &st.token {
        Some(want) if auth != Some(format!("Bearer {want}").as_str()) => {
            Reply::Status(401, status_json(401, "Unauthorized", "Unauthorized"))
        }
        _ => reply,
    }
}

fn response(status: u16, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Carries out a reply. Returns false when the connection should end.
fn send(
    tls: &mut StreamOwned<ServerConnection, TcpStream>,
    shared: &Shared,
    reply: &Reply,
) -> io::Result<bool> {
    match reply {
        Reply::Delay(d, inner) => {
            if pause(shared, *d) {
                send(tls, shared, inner)
            } else {
                Ok(false)
            }
        }
        Reply::Drip(interval, inner) => {
            let Some(bytes) = render(inner) else {
                return send(tls, shared, inner);
            };
            for b in bytes {
                tls.write_all(&[b])?;
                tls.flush()?;
                if !pause(shared, *interval) {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Reply::Hang => {
            while pause(shared, Duration::from_millis(50)) {}
            Ok(false)
        }
        plain => {
            let bytes = render(plain).unwrap_or_else(|| response(500, "empty sequence"));
            tls.write_all(&bytes)?;
            tls.flush()?;
            Ok(true)
        }
    }
}

/// The bytes of a plain reply (for dripping); `None` for replies that are behaviours.
fn render(reply: &Reply) -> Option<Vec<u8>> {
    Some(match reply {
        Reply::Pod(v) => response(200, &v.to_string()),
        Reply::NotFound => response(
            404,
            &status_json(404, "NotFound", "pods \"unknown\" not found"),
        ),
        Reply::Status(code, body) => response(*code, body),
        Reply::Garbage(body) => response(200, body),
        _ => return None,
    })
}
