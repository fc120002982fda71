//! The HTTP side of the pod read: [`get_pod`] with its retry loop, one bounded attempt, and
//! how answers and errors are classified (retry or give up). See the parent module's docs
//! for the policy.

use super::{config, KubeConfig, KubeError, RetryPolicy};
use serde_json::Value;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Largest Pod body accepted. etcd caps an object at about 1.5 MiB; the margin covers JSON
/// formatting, and the cap keeps a misbehaving server from growing the plugin without bound.
const MAX_POD_BYTES: u64 = 4 << 20;
/// Error bodies are only read for the message; a Kubernetes `Status` is well under this.
const MAX_ERROR_BYTES: u64 = 16 << 10;
/// How much of an error body is kept in an error value (it ends up in kubelet's events).
const MAX_ERROR_TEXT: usize = 1024;
const USER_AGENT: &str = concat!("mesh-redirect/", env!("CARGO_PKG_VERSION"), " (cni)");

/// The HTTP agent for `cfg`: its TLS settings, no proxy, no redirects, https only.
fn agent(cfg: &KubeConfig) -> ureq::Agent {
    ureq::Agent::config_builder()
        .tls_config(cfg.tls().clone())
        // See the parent module's docs: the token goes to the kubeconfig's server only.
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
    let url = format!("{}/api/v1/namespaces/{namespace}/pods/{name}", cfg.server());
    let agent = agent(cfg);

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
}
