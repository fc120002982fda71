//! The one Kubernetes API call the CNI plugin makes: `GET` a pod, with a kubeconfig.
//!
//! istio-cni builds a full client-go client from `<cni_agent_run_dir>/istio-cni-kubeconfig`
//! (step 4 of its ADD) and then reads the pod, retrying for about 30 s because a freshly
//! created pod can lag behind in the API server's cache (step 9). We need exactly that one
//! read, so instead of `kube` + `k8s-openapi` + tokio (142 crates) this module uses the
//! blocking `ureq` client on rustls (about 45 crates, a fast start for a process that lives
//! for one ADD) and a small kubeconfig reader.
//!
//! Design:
//! * [`KubeConfig`] is parsed and checked up front. Every file it names (CA, client
//!   certificate and key) is read and validated at load time, so a broken kubeconfig fails
//!   with [`KubeError::Config`] naming the offending field instead of retrying until the
//!   deadline. The one exception is `tokenFile`, which is re-read before every attempt so a
//!   rotated token is picked up (client-go re-reads it too).
//! * Trust comes only from the kubeconfig: its CA, or `insecure-skip-tls-verify`. There are
//!   no system or webpki roots, so the binary carries no root store and a node's trust store
//!   cannot widen who may impersonate the API server.
//! * Environment proxies (`HTTPS_PROXY`, …) are ignored and redirects are not followed: the
//!   plugin runs with the container runtime's environment, and a bearer token must go to the
//!   server named in the kubeconfig and nowhere else.
//! * [`get_pod`] retries under one overall deadline ([`RetryPolicy`]). Every attempt gets the
//!   smaller of the per-attempt timeout and the time left, and ureq enforces that budget on
//!   every socket operation (resolve, connect, handshake, each read), so a server that
//!   accepts and never answers, or drips one byte at a time, cannot hold the call past the
//!   deadline. The backoff sleep is clipped to the deadline too.
//! * What is retried: anything that can fix itself while the pod is being created —
//!   connection errors, timeouts, TLS records cut short, HTTP 404 (the pod is not in the
//!   cache yet), 408, 429 and 5xx. What is not: 401/403 (credentials will not get better
//!   within seconds), a 200 that is not a Pod, other 4xx/3xx answers, certificate
//!   verification failures and configuration errors. istio-cni retries every error, but a
//!   sandbox whose ADD fails fast is retried by kubelet anyway, and failing fast gives the
//!   operator the real cause instead of a timeout.
//!
//! Not supported (rejected with [`KubeError::Config`] rather than silently ignored): exec and
//! auth-provider credential plugins, basic auth, `proxy-url`, `tls-server-name`, plain
//! `http://` servers, and clusters with neither a CA nor `insecure-skip-tls-verify`.

use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Map, Value};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use thiserror::Error;
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig, TlsProvider};

/// Largest Pod body accepted. etcd caps an object at about 1.5 MiB; the margin covers JSON
/// formatting, and the cap keeps a misbehaving server from growing the plugin without bound.
const MAX_POD_BYTES: u64 = 4 << 20;
/// Error bodies are only read for the message; a Kubernetes `Status` is well under this.
const MAX_ERROR_BYTES: u64 = 16 << 10;
/// How much of an error body is kept in an error value (it ends up in kubelet's events).
const MAX_ERROR_TEXT: usize = 1024;
const USER_AGENT: &str = concat!("mesh-redirect/", env!("CARGO_PKG_VERSION"), " (cni)");

/// Why talking to the API server failed.
#[derive(Debug, Error)]
pub enum KubeError {
    /// The kubeconfig or an argument is unusable; the message names the field. Never retried.
    #[error("configuration error: {0}")]
    Config(String),
    /// The API server rejected the credentials (401) or the permission (403). Not retried.
    #[error("the API server refused the request with HTTP {status}: {body}")]
    Unauthorized { status: u16, body: String },
    /// A non-retryable HTTP answer other than 401/403 (e.g. 400, or a redirect).
    #[error("the API server answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    /// The TLS peer could not be trusted or rejected our certificate. Not retried.
    #[error("TLS with the API server failed: {0}")]
    Tls(String),
    /// A successful answer whose body is not a Pod object. Not retried.
    #[error("cannot decode the API server's answer: {0}")]
    Decode(String),
    /// Every attempt failed with a retryable error until the deadline passed.
    #[error("no usable answer from the API server before the deadline ({attempts} attempts); last error: {last_error}")]
    DeadlineExceeded { attempts: u32, last_error: String },
}

/// How long [`get_pod`] keeps trying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Overall budget for the whole call, sleeps included.
    pub deadline: Duration,
    /// Budget of one attempt; never more than what is left of `deadline`. Zero means "only
    /// the deadline".
    pub attempt_timeout: Duration,
    /// First pause after a failed attempt; it doubles after each further failure.
    pub initial_backoff: Duration,
    /// Upper bound of the pause.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            deadline: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(2),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// The default policy with another overall deadline.
    pub fn with_deadline(deadline: Duration) -> Self {
        RetryPolicy {
            deadline,
            ..RetryPolicy::default()
        }
    }
}

/// What a kubeconfig resolves to: one server, how to trust it, and how to authenticate.
#[derive(Clone)]
pub struct KubeConfig {
    context: Option<String>,
    cluster: String,
    user: Option<String>,
    /// `https://host[:port][/prefix]` without a trailing slash.
    server: String,
    insecure_skip_tls_verify: bool,
    token: Option<String>,
    token_file: Option<PathBuf>,
    /// Field path of the user, for messages about the token file.
    user_path: String,
    has_client_cert: bool,
    /// Everything TLS needs, validated at parse time: ureq would panic (and `panic = "abort"`
    /// would kill the plugin) on a client key that does not match its certificate.
    tls: TlsConfig,
}

/// Secrets stay out of logs: only the shape of the credentials is printed.
impl fmt::Debug for KubeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeConfig")
            .field("context", &self.context)
            .field("cluster", &self.cluster)
            .field("user", &self.user)
            .field("server", &self.server)
            .field("insecure_skip_tls_verify", &self.insecure_skip_tls_verify)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("client_certificate", &self.has_client_cert)
            .finish()
    }
}

impl KubeConfig {
    /// Reads a kubeconfig file (YAML or JSON). Relative paths inside it are taken relative to
    /// the file's directory, as kubectl does.
    pub fn load(path: impl AsRef<Path>) -> Result<KubeConfig, KubeError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            KubeError::Config(format!("cannot read kubeconfig {}: {e}", path.display()))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        KubeConfig::parse(&text, base).map_err(|e| match e {
            KubeError::Config(m) => KubeError::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses kubeconfig text; `base_dir` anchors relative file paths.
    ///
    /// The context is `current-context`, else the first context; without contexts, the first
    /// cluster and the first user (if any) are used.
    pub fn parse(text: &str, base_dir: &Path) -> Result<KubeConfig, KubeError> {
        let doc = parse_document(text)?;
        let root = doc
            .as_object()
            .ok_or_else(|| config("kubeconfig: expected a mapping at the top level"))?;
        let clusters = named_list(root, "clusters")?;
        let contexts = named_list(root, "contexts")?;
        let users = named_list(root, "users")?;
        let current =
            opt_str(root, "current-context", "current-context")?.filter(|s| !s.is_empty());

        let (context, cluster_ref, user_ref) = match current {
            Some(want) => {
                let c = contexts
                    .iter()
                    .find(|c| c.name == want)
                    .ok_or_else(|| config(format!("current-context: no context named {want:?}")))?;
                context_refs(c)?
            }
            None => match contexts.first() {
                Some(c) => context_refs(c)?,
                None => (None, None, None),
            },
        };

        let cluster = match &cluster_ref {
            Some((path, name)) => clusters
                .iter()
                .find(|c| c.name == *name)
                .ok_or_else(|| config(format!("{path}: no cluster named {name:?}")))?,
            None => clusters
                .first()
                .ok_or_else(|| config("clusters: no cluster is defined"))?,
        };
        let user = match &user_ref {
            Some((path, name)) => Some(
                users
                    .iter()
                    .find(|u| u.name == *name)
                    .ok_or_else(|| config(format!("{path}: no user named {name:?}")))?,
            ),
            // A context without a user is anonymous; without any context, kubectl's
            // "first of each" fallback also takes the first user.
            None if context.is_none() => users.first(),
            None => None,
        };

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cl = ClusterSettings::parse(cluster, base_dir)?;
        let us = match user {
            Some(u) => UserSettings::parse(u, base_dir)?,
            None => UserSettings::default(),
        };

        let mut tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(provider.clone());
        tls = match &cl.ca {
            Some(certs) => tls.root_certs(RootCerts::new_with_certs(
                &certs
                    .iter()
                    .map(|c| Certificate::from_der(c).to_owned())
                    .collect::<Vec<_>>(),
            )),
            None => tls.disable_verification(true),
        };
        let has_client_cert = us.client.is_some();
        if let Some(client) = us.client {
            client.check(&provider)?;
            tls = tls.client_cert(Some(client.into_ureq()?));
        }

        Ok(KubeConfig {
            context,
            cluster: cluster.name.clone(),
            user: user.map(|u| u.name.clone()),
            server: cl.server,
            insecure_skip_tls_verify: cl.ca.is_none(),
            token: us.token,
            token_file: us.token_file,
            user_path: us.path,
            has_client_cert,
            tls: tls.build(),
        })
    }

    /// The API server URL, without a trailing slash.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The context that was used, if the kubeconfig has any.
    pub fn context(&self) -> Option<&str> {
        self.context.as_deref()
    }

    /// The name of the cluster entry that was used.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The name of the user entry that was used (`None`: anonymous).
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// True when the server certificate is not verified.
    pub fn insecure_skip_tls_verify(&self) -> bool {
        self.insecure_skip_tls_verify
    }

    /// True when a client certificate is presented.
    pub fn has_client_certificate(&self) -> bool {
        self.has_client_cert
    }

    /// The bearer token for the next request. `tokenFile` wins over `token` and is read
    /// every time, so rotation needs no restart; if it cannot be read, an inline `token` is
    /// the fallback (client-go behaves the same way).
    fn bearer_token(&self) -> Result<Option<String>, KubeError> {
        let Some(file) = &self.token_file else {
            return Ok(self.token.clone());
        };
        let field = format!("{}.tokenFile", self.user_path);
        match std::fs::read_to_string(file) {
            Ok(text) => check_token(text.trim(), &field).map(|t| Some(t.to_string())),
            Err(_) if self.token.is_some() => Ok(self.token.clone()),
            Err(e) => Err(config(format!(
                "{field}: cannot read {}: {e}",
                file.display()
            ))),
        }
    }

    fn agent(&self) -> ureq::Agent {
        ureq::Agent::config_builder()
            .tls_config(self.tls.clone())
            // See the module docs: the token goes to the kubeconfig's server only.
            .proxy(None)
            .max_redirects(0)
            .https_only(true)
            // Statuses are classified here (401 vs 404 vs 5xx), and error bodies carry
            // the API server's explanation.
            .http_status_as_error(false)
            .user_agent(USER_AGENT)
            .accept("application/json")
            .build()
            .new_agent()
    }
}

/// Reads one pod: `GET {server}/api/v1/namespaces/{namespace}/pods/{name}`.
///
/// Returns the Pod object as JSON. Retries as described in the module docs and returns
/// within `policy.deadline` (plus scheduling noise).
pub fn get_pod(
    cfg: &KubeConfig,
    namespace: &str,
    name: &str,
    policy: &RetryPolicy,
) -> Result<Value, KubeError> {
    // Kubernetes names are DNS-1123, so a valid one needs no escaping in a path, and
    // anything else (`..`, `/`, `?`) is refused rather than sent.
    if !is_dns1123_label(namespace) {
        return Err(config(format!(
            "pod namespace {namespace:?} is not a valid DNS-1123 label"
        )));
    }
    if !is_dns1123_subdomain(name) {
        return Err(config(format!(
            "pod name {name:?} is not a valid DNS-1123 subdomain"
        )));
    }
    let url = format!("{}/api/v1/namespaces/{namespace}/pods/{name}", cfg.server);
    let agent = cfg.agent();

    let start = Instant::now();
    // A deadline too large for `Instant` is as good as none.
    let deadline = start
        .checked_add(policy.deadline)
        .unwrap_or_else(|| start + Duration::from_secs(365 * 24 * 3600));
    let mut backoff = policy.initial_backoff;
    let mut attempts = 0u32;
    let mut last_error = String::from("no attempt fitted in the deadline");

    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let budget = if policy.attempt_timeout.is_zero() {
            left
        } else {
            policy.attempt_timeout.min(left)
        };
        attempts += 1;
        match attempt(cfg, &agent, &url, budget) {
            Ok(pod) => return Ok(pod),
            Err(Failure::Permanent(e)) => return Err(e),
            Err(Failure::Transient(msg)) => {
                tracing::debug!(attempt = attempts, error = %msg, url = %url, "pod GET failed, retrying");
                last_error = msg;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(backoff.min(left));
        backoff = backoff.saturating_mul(2).min(policy.max_backoff);
    }
    Err(KubeError::DeadlineExceeded {
        attempts,
        last_error,
    })
}

enum Failure {
    /// Retrying cannot help; the error goes straight back to the caller.
    Permanent(KubeError),
    /// Worth another attempt; the text becomes `last_error` if the deadline passes.
    Transient(String),
}

/// One attempt, bounded by `budget` on the wall clock.
///
/// ureq enforces the budget with socket timeouts (SO_RCVTIMEO), and the kernel fires those
/// late: its timer wheel trades precision for cheapness, by up to 1/8 of the timeout
/// (measured here: a 300 ms read timeout returns after 316–324 ms; a 5 s one may be 0.25 s
/// late at HZ=250 and 0.6 s at HZ=100). So the exchange runs on a helper thread, and this
/// thread waits on a channel, whose timeout is precise. A helper that is still blocked when
/// the budget is spent is left behind; ureq's own timeout ends it moments later.
fn attempt(
    cfg: &KubeConfig,
    agent: &ureq::Agent,
    url: &str,
    budget: Duration,
) -> Result<Value, Failure> {
    let token = cfg.bearer_token().map_err(Failure::Permanent)?;
    let (tx, rx) = mpsc::sync_channel(1);
    let helper = {
        let (agent, url, token) = (agent.clone(), url.to_string(), token.clone());
        std::thread::Builder::new()
            .name("kube-get".to_string())
            .spawn(move || {
                // The receiver may be gone (budget spent): nothing to do then.
                let _ = tx.send(exchange(&agent, &url, token.as_deref(), budget));
            })
    };
    if helper.is_err() {
        // No thread to be had (RLIMIT_NPROC, memory): ureq's own timeouts still apply.
        return exchange(agent, url, token.as_deref(), budget);
    }
    match rx.recv_timeout(budget) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => Err(Failure::Transient(format!(
            "no complete answer within the attempt timeout ({budget:?})"
        ))),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(Failure::Transient(
            "the request thread ended without a result".to_string(),
        )),
    }
}

/// The HTTP exchange itself: request, status classification, body.
fn exchange(
    agent: &ureq::Agent,
    url: &str,
    token: Option<&str>,
    budget: Duration,
) -> Result<Value, Failure> {
    let mut req = agent.get(url);
    if let Some(token) = token {
        req = req.header("Authorization", format!("Bearer {token}"));
    }
    // The global timeout covers resolve, connect, handshake, request and the whole body,
    // and ureq applies what is left of it to every single socket read (so a server that
    // drips bytes cannot stretch it), within the kernel's timer slack (see `attempt`).
    let mut resp = req
        .config()
        .timeout_global(Some(budget))
        .build()
        .call()
        .map_err(|e| classify(e, budget))?;
    let status = resp.status().as_u16();
    match status {
        200..=299 => {
            let body = resp
                .body_mut()
                .with_config()
                .limit(MAX_POD_BYTES)
                .read_to_vec()
                .map_err(|e| match e {
                    ureq::Error::BodyExceedsLimit(n) => Failure::Permanent(KubeError::Decode(
                        format!("the Pod body is larger than {n} bytes"),
                    )),
                    e => classify(e, budget),
                })?;
            decode_pod(&body).map_err(Failure::Permanent)
        }
        401 | 403 => Err(Failure::Permanent(KubeError::Unauthorized {
            status,
            body: error_body(&mut resp),
        })),
        // 404: kubelet runs the ADD as soon as the sandbox exists, and the API server that
        // answers may not have seen the pod yet.
        404 | 408 | 429 | 500..=599 => Err(Failure::Transient(format!(
            "HTTP {status}: {}",
            status_message(&error_body(&mut resp))
        ))),
        _ => Err(Failure::Permanent(KubeError::Status {
            status,
            body: error_body(&mut resp),
        })),
    }
}

fn decode_pod(body: &[u8]) -> Result<Value, KubeError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| KubeError::Decode(format!("the body is not JSON: {e}")))?;
    match v.get("kind") {
        Some(Value::String(k)) if k == "Pod" && v.is_object() => Ok(v),
        Some(kind) if v.is_object() => Err(KubeError::Decode(format!(
            "expected an object of kind \"Pod\", got kind {kind}"
        ))),
        _ => Err(KubeError::Decode(
            "expected a JSON object with kind \"Pod\"".to_string(),
        )),
    }
}

/// The error body as text, bounded. A body that cannot be read (timeout, reset) is not an
/// error of its own: the status already says what happened.
fn error_body(resp: &mut ureq::http::Response<ureq::Body>) -> String {
    let bytes = resp
        .body_mut()
        .with_config()
        .limit(MAX_ERROR_BYTES)
        .read_to_vec()
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    match text.char_indices().nth(MAX_ERROR_TEXT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// The `message` of a Kubernetes `Status` body (e.g. `pods "x" not found`), else the body.
fn status_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| body.to_string())
}

fn classify(e: ureq::Error, budget: Duration) -> Failure {
    if let Some(tls) = rustls_error(&e) {
        if tls_is_permanent(tls) {
            return Failure::Permanent(KubeError::Tls(tls.to_string()));
        }
        return Failure::Transient(format!("TLS: {tls}"));
    }
    match e {
        // The URL and headers were validated when the kubeconfig was parsed, so these mean
        // a bug or an unsupported setting; retrying would only hide it.
        ureq::Error::BadUri(_)
        | ureq::Error::Http(_)
        | ureq::Error::RequireHttpsOnly(_)
        | ureq::Error::InvalidProxyUrl => Failure::Permanent(config(format!("request: {e}"))),
        ureq::Error::Timeout(t) => Failure::Transient(format!(
            "no complete answer within the attempt timeout ({budget:?}; {t} timer)"
        )),
        // Everything else (refused, reset, EOF, resolver hiccups, HTTP framing cut short)
        // can be a server that is starting or restarting.
        e => Failure::Transient(e.to_string()),
    }
}

/// rustls errors arrive either as such or wrapped in the `io::Error` of a handshake or read.
fn rustls_error(e: &ureq::Error) -> Option<&rustls::Error> {
    match e {
        ureq::Error::Rustls(r) => Some(r),
        ureq::Error::Io(io) => io.get_ref()?.downcast_ref::<rustls::Error>(),
        _ => None,
    }
}

/// Certificate problems on either side do not heal within a deadline of seconds: a server
/// certificate the kubeconfig's CA does not vouch for, or a server that refuses ours.
fn tls_is_permanent(e: &rustls::Error) -> bool {
    use rustls::AlertDescription as A;
    match e {
        rustls::Error::InvalidCertificate(_)
        | rustls::Error::NoCertificatesPresented
        | rustls::Error::UnsupportedNameType
        | rustls::Error::InconsistentKeys(_)
        | rustls::Error::PeerIncompatible(_) => true,
        rustls::Error::AlertReceived(a) => matches!(
            a,
            A::HandshakeFailure
                | A::NoCertificate
                | A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::UnknownCA
                | A::AccessDenied
                | A::ProtocolVersion
                | A::InsufficientSecurity
                | A::CertificateRequired
        ),
        _ => false,
    }
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters (namespaces).
fn is_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && is_label_part(s)
}

/// Dot-separated labels, at most 253 characters (pod names).
fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label_part)
}

fn is_label_part(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            alnum(first) && alnum(last) && b.iter().all(|c| alnum(c) || *c == b'-')
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------
// kubeconfig reading

fn config(msg: impl Into<String>) -> KubeError {
    KubeError::Config(msg.into())
}

fn parse_document(text: &str) -> Result<Value, KubeError> {
    // JSON is (almost) YAML, but serde_json gives better messages for JSON files, and YAML
    // parsers disagree with JSON on corner cases such as tabs.
    let v: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text)
            .map_err(|e| config(format!("kubeconfig is not valid JSON: {e}")))?
    } else {
        serde_norway::from_str(text)
            .map_err(|e| config(format!("kubeconfig is not valid YAML: {e}")))?
    };
    if v.is_null() {
        return Err(config("kubeconfig is empty"));
    }
    Ok(v)
}

/// One entry of `clusters`, `contexts` or `users`, with the field path used in messages.
struct Named<'a> {
    name: String,
    /// e.g. `clusters[local]`, or `clusters[#0]` for an entry without a name.
    path: String,
    /// The inner `cluster` / `context` / `user` mapping (empty if absent or null).
    body: Option<&'a Map<String, Value>>,
    inner_key: &'static str,
}

impl Named<'_> {
    fn field(&self, key: &str) -> String {
        format!("{}.{}.{key}", self.path, self.inner_key)
    }
}

fn named_list<'a>(
    root: &'a Map<String, Value>,
    list: &'static str,
) -> Result<Vec<Named<'a>>, KubeError> {
    let inner_key = match list {
        "clusters" => "cluster",
        "contexts" => "context",
        _ => "user",
    };
    let items = match root.get(list) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(config(format!("{list}: expected a list"))),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let obj = item
                .as_object()
                .ok_or_else(|| config(format!("{list}[#{i}]: expected a mapping")))?;
            let name = opt_str(obj, "name", &format!("{list}[#{i}].name"))?.unwrap_or_default();
            let path = if name.is_empty() {
                format!("{list}[#{i}]")
            } else {
                format!("{list}[{name}]")
            };
            let body = match obj.get(inner_key) {
                None | Some(Value::Null) => None,
                Some(Value::Object(m)) => Some(m),
                Some(_) => {
                    return Err(config(format!("{path}.{inner_key}: expected a mapping")));
                }
            };
            Ok(Named {
                name,
                path,
                body,
                inner_key,
            })
        })
        .collect()
}

type Ref = Option<(String, String)>;

/// A context's name and its (field path, name) references to a cluster and a user.
fn context_refs(c: &Named<'_>) -> Result<(Option<String>, Ref, Ref), KubeError> {
    let get = |key: &str| -> Result<Ref, KubeError> {
        let field = c.field(key);
        Ok(c.body
            .map(|b| opt_str(b, key, &field))
            .transpose()?
            .flatten()
            .filter(|s| !s.is_empty())
            .map(|s| (field, s)))
    };
    let cluster = get("cluster")?;
    if cluster.is_none() {
        return Err(config(format!("{}: missing", c.field("cluster"))));
    }
    Ok((Some(c.name.clone()), cluster, get("user")?))
}

fn opt_str(m: &Map<String, Value>, key: &str, field: &str) -> Result<Option<String>, KubeError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(config(format!("{field}: expected a string"))),
    }
}

fn opt_bool(m: &Map<String, Value>, key: &str, field: &str) -> Result<Option<bool>, KubeError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(config(format!("{field}: expected true or false"))),
    }
}

/// Reads `<key>-data` (base64) or `<key>` (a file path); both at once is an error, as in
/// kubectl's validation. Returns the PEM bytes and the field they came from.
fn data_or_file(
    m: &Map<String, Value>,
    entry: &Named<'_>,
    key: &str,
    base_dir: &Path,
) -> Result<Option<(Vec<u8>, String)>, KubeError> {
    let data_key = format!("{key}-data");
    let data_field = entry.field(&data_key);
    let file_field = entry.field(key);
    let data = opt_str(m, &data_key, &data_field)?.filter(|s| !s.is_empty());
    let file = opt_str(m, key, &file_field)?.filter(|s| !s.is_empty());
    match (data, file) {
        (Some(_), Some(_)) => Err(config(format!(
            "{data_field}: set together with {key}; use one of them"
        ))),
        (Some(b64), None) => {
            // Go's decoder skips line breaks in base64; so do we.
            let clean: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(clean)
                .map_err(|e| config(format!("{data_field}: invalid base64: {e}")))?;
            Ok(Some((bytes, data_field)))
        }
        (None, Some(path)) => {
            let full = resolve(base_dir, &path);
            let bytes = std::fs::read(&full).map_err(|e| {
                config(format!("{file_field}: cannot read {}: {e}", full.display()))
            })?;
            Ok(Some((bytes, file_field)))
        }
        (None, None) => Ok(None),
    }
}

fn resolve(base_dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    }
}

struct ClusterSettings {
    server: String,
    /// `None`: insecure-skip-tls-verify.
    ca: Option<Vec<CertificateDer<'static>>>,
}

impl ClusterSettings {
    fn parse(c: &Named<'_>, base_dir: &Path) -> Result<ClusterSettings, KubeError> {
        let empty = Map::new();
        let m = c.body.unwrap_or(&empty);
        let server_field = c.field("server");
        let server = opt_str(m, "server", &server_field)?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| config(format!("{server_field}: missing")))?;
        let server = check_server(&server, &server_field)?;

        for unsupported in ["proxy-url", "tls-server-name"] {
            if opt_str(m, unsupported, &c.field(unsupported))?.is_some_and(|s| !s.is_empty()) {
                return Err(config(format!("{}: not supported", c.field(unsupported))));
            }
        }

        let insecure_field = c.field("insecure-skip-tls-verify");
        let insecure = opt_bool(m, "insecure-skip-tls-verify", &insecure_field)?.unwrap_or(false);
        let ca = data_or_file(m, c, "certificate-authority", base_dir)?;
        let ca = match (ca, insecure) {
            (Some((_, field)), true) => {
                // client-go refuses this combination too.
                return Err(config(format!(
                    "{insecure_field}: cannot be combined with {field}"
                )));
            }
            (Some((pem, field)), false) => Some(parse_ca(&pem, &field)?),
            (None, true) => None,
            (None, false) => {
                return Err(config(format!(
                    "{}: missing (no system roots are used: set certificate-authority-data, \
                     certificate-authority or insecure-skip-tls-verify)",
                    c.field("certificate-authority-data")
                )));
            }
        };
        Ok(ClusterSettings { server, ca })
    }
}

fn check_server(server: &str, field: &str) -> Result<String, KubeError> {
    let uri: ureq::http::Uri = server
        .parse()
        .map_err(|e| config(format!("{field}: {server:?} is not a URL: {e}")))?;
    if !uri
        .scheme_str()
        .is_some_and(|s| s.eq_ignore_ascii_case("https"))
    {
        return Err(config(format!(
            "{field}: {server:?} must be an https:// URL (the token must not travel in clear)"
        )));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(config(format!("{field}: {server:?} has no host")));
    }
    if uri.query().is_some() || server.contains('#') {
        return Err(config(format!(
            "{field}: {server:?} must not have a query or fragment"
        )));
    }
    // A path prefix (as behind Rancher's proxy) is kept; API paths are appended to it.
    Ok(server.trim_end_matches('/').to_string())
}

fn parse_ca(pem: &[u8], field: &str) -> Result<Vec<CertificateDer<'static>>, KubeError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config(format!("{field}: invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(config(format!("{field}: no CERTIFICATE block found")));
    }
    // Check each one now: rustls would otherwise skip unparsable roots silently, and the
    // failure would show up later as an unknown-issuer error.
    let mut store = rustls::RootCertStore::empty();
    for c in &certs {
        store
            .add(c.clone())
            .map_err(|e| config(format!("{field}: unusable CA certificate: {e}")))?;
    }
    Ok(certs)
}

#[derive(Default)]
struct UserSettings {
    path: String,
    token: Option<String>,
    token_file: Option<PathBuf>,
    client: Option<ClientIdentity>,
}

impl UserSettings {
    fn parse(u: &Named<'_>, base_dir: &Path) -> Result<UserSettings, KubeError> {
        let empty = Map::new();
        let m = u.body.unwrap_or(&empty);
        let token_field = u.field("token");
        let token = opt_str(m, "token", &token_field)?
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .map(|t| check_token(&t, &token_field).map(str::to_string))
            .transpose()?;
        let token_file = opt_str(m, "tokenFile", &u.field("tokenFile"))?
            .filter(|s| !s.is_empty())
            .map(|p| resolve(base_dir, &p));

        let cert = data_or_file(m, u, "client-certificate", base_dir)?;
        let key = data_or_file(m, u, "client-key", base_dir)?;
        let client = match (cert, key) {
            (Some((cert, cert_field)), Some((key, key_field))) => {
                Some(ClientIdentity::parse(&cert, &cert_field, &key, &key_field)?)
            }
            (Some(_), None) => {
                return Err(config(format!(
                    "{}: missing (client-certificate needs a key)",
                    u.field("client-key-data")
                )));
            }
            (None, Some(_)) => {
                return Err(config(format!(
                    "{}: missing (client-key needs a certificate)",
                    u.field("client-certificate-data")
                )));
            }
            (None, None) => None,
        };

        let has_credential = token.is_some() || token_file.is_some() || client.is_some();
        for unsupported in ["exec", "auth-provider", "username", "password"] {
            let present = !matches!(m.get(unsupported), None | Some(Value::Null));
            if present && !has_credential {
                return Err(config(format!(
                    "{}: not supported (use token, tokenFile or client-certificate-data)",
                    u.field(unsupported)
                )));
            }
        }
        Ok(UserSettings {
            path: format!("{}.{}", u.path, u.inner_key),
            token,
            token_file,
            client,
        })
    }
}

/// A token goes into a header; a stray newline or control character would break the
/// request, so it is refused here with the field name.
fn check_token<'a>(token: &'a str, field: &str) -> Result<&'a str, KubeError> {
    if token.is_empty() {
        return Err(config(format!("{field}: the token is empty")));
    }
    if !token.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(config(format!(
            "{field}: the token contains characters not allowed in an HTTP header"
        )));
    }
    Ok(token)
}

struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// The PEM again, for ureq (its key-kind type is not public, so it parses the PEM itself).
    key_pem: Vec<u8>,
    key_field: String,
}

impl ClientIdentity {
    fn parse(
        cert: &[u8],
        cert_field: &str,
        key_pem: &[u8],
        key_field: &str,
    ) -> Result<Self, KubeError> {
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| config(format!("{cert_field}: invalid PEM: {e}")))?;
        if chain.is_empty() {
            return Err(config(format!("{cert_field}: no CERTIFICATE block found")));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| config(format!("{key_field}: no usable private key: {e}")))?;
        Ok(ClientIdentity {
            chain,
            key,
            key_pem: key_pem.to_vec(),
            key_field: key_field.to_string(),
        })
    }

    /// Builds a throw-away rustls client config with this identity: it fails (instead of
    /// ureq panicking later) when the key is of an unsupported type or does not belong to
    /// the certificate.
    fn check(&self, provider: &Arc<rustls::crypto::CryptoProvider>) -> Result<(), KubeError> {
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| config(format!("TLS setup: {e}")))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| {
                config(format!(
                    "{}: does not fit the client certificate: {e}",
                    self.key_field
                ))
            })?;
        Ok(())
    }

    fn into_ureq(self) -> Result<ClientCert, KubeError> {
        let chain: Vec<Certificate<'static>> = self
            .chain
            .iter()
            .map(|c| Certificate::from_der(c).to_owned())
            .collect();
        let key = PrivateKey::from_pem(&self.key_pem)
            .map_err(|e| config(format!("{}: {e}", self.key_field)))?;
        Ok(ClientCert::new_with_certs(&chain, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns1123() {
        assert!(is_dns1123_label("kube-system"));
        assert!(is_dns1123_label("a"));
        assert!(!is_dns1123_label("Kube"));
        assert!(!is_dns1123_label("-a"));
        assert!(!is_dns1123_label("a-"));
        assert!(!is_dns1123_label(""));
        assert!(!is_dns1123_label("a.b"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(is_dns1123_subdomain("web-0.x"));
        assert!(!is_dns1123_subdomain("a..b"));
        assert!(!is_dns1123_subdomain("../etc"));
        assert!(!is_dns1123_subdomain("a/b"));
        assert!(!is_dns1123_subdomain("a%2f"));
        assert!(!is_dns1123_subdomain(&"a".repeat(254)));
    }

    #[test]
    fn decode_checks_kind() {
        assert!(decode_pod(br#"{"kind":"Pod","metadata":{}}"#).is_ok());
        for bad in [
            &br#"{"kind":"Status"}"#[..],
            b"[1]",
            b"not json",
            br#""Pod""#,
        ] {
            assert!(
                matches!(decode_pod(bad), Err(KubeError::Decode(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn status_message_prefers_the_kubernetes_message() {
        assert_eq!(
            status_message(r#"{"kind":"Status","message":"pods \"x\" not found"}"#),
            "pods \"x\" not found"
        );
        assert_eq!(status_message("plain"), "plain");
    }

    #[test]
    fn token_must_fit_a_header() {
        assert!(check_token("abc.def-_", "t").is_ok());
        assert!(check_token("a b", "t").is_err());
        assert!(check_token("a\nb", "t").is_err());
    }

    #[test]
    fn debug_redacts_the_token() {
        let cfg = KubeConfig::parse(
            "clusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\n    insecure-skip-tls-verify: true\n\
             users:\n- name: u\n  user:\n    token: s3cr3t\n",
            Path::new("/"),
        )
        .unwrap();
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("s3cr3t"), "{dbg}");
        assert!(dbg.contains("redacted"), "{dbg}");
    }
}
