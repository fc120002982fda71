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
//!
//! Layout: `kubeconfig` reads and checks the kubeconfig ([`KubeConfig`]); `client` makes
//! the request and retries it ([`get_pod`]). Both report [`KubeError`].

mod client;
mod kubeconfig;

pub use client::get_pod;
pub use kubeconfig::KubeConfig;

use std::time::Duration;
use thiserror::Error;

/// Why talking to the API server failed.
#[derive(Debug, Error)]
pub enum KubeError {
    /// The kubeconfig or an argument is unusable; the message names the field. Never retried.
    #[error("configuration error: {0}")]
    Config(String),
    /// The API server rejected the credentials (401) or the permission (403). Not retried.
    #[error("the API server refused the request with HTTP {status}: {body}")]
    Unauthorized {
        /// The HTTP status (401 or 403).
        status: u16,
        /// The API server's answer, shortened.
        body: String,
    },
    /// A non-retryable HTTP answer other than 401/403 (e.g. 400, or a redirect).
    #[error("the API server answered HTTP {status}: {body}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The API server's answer, shortened.
        body: String,
    },
    /// The TLS peer could not be trusted or rejected our certificate. Not retried.
    #[error("TLS with the API server failed: {0}")]
    Tls(String),
    /// A successful answer whose body is not a Pod object. Not retried.
    #[error("cannot decode the API server's answer: {0}")]
    Decode(String),
    /// Every attempt failed with a retryable error until the deadline passed.
    #[error("no usable answer from the API server before the deadline ({attempts} attempts); last error: {last_error}")]
    DeadlineExceeded {
        /// How many requests were made.
        attempts: u32,
        /// What the last attempt failed with.
        last_error: String,
    },
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

/// A [`KubeError::Config`] with `msg`.
fn config(msg: impl Into<String>) -> KubeError {
    KubeError::Config(msg.into())
}
