//! The agent process: the installer on the main thread (it owns SIGTERM/SIGINT through a
//! signalfd), and on a second thread a tokio runtime with the pod watch, the socket server
//! and the metrics endpoint.

use super::cache::{self, PodCache};
use super::metrics::{self, Metrics, Status};
use super::reconcile::{self, act::Actor, ProcNode};
use super::server;
use crate::install::InstallOptions;
use nix::sys::signal::{SigSet, Signal};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use thiserror::Error;

/// Why the agent stopped or could not start.
#[derive(Debug, Error)]
pub enum AgentError {
    /// A flag or variable is unusable.
    #[error("invalid {flag}: {why}")]
    Invalid {
        /// The flag.
        flag: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// The socket or the metrics port cannot be served.
    #[error("cannot listen on {what}: {source}")]
    Listen {
        /// The socket path or address.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The kubeconfig or in-cluster configuration is unusable.
    #[error("Kubernetes client configuration: {0}")]
    Kube(String),
    /// The runtime or a thread could not be started, or signals not be taken.
    #[error("cannot start: {0}")]
    Start(String),
    /// The node installer failed.
    #[error(transparent)]
    Install(#[from] crate::install::InstallError),
}

/// What the agent does.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Whose pods to cache (`spec.nodeName`).
    pub node_name: String,
    /// A kubeconfig; the in-cluster service account when `None`.
    pub kubeconfig: Option<PathBuf>,
    /// The plugin's socket.
    pub socket: PathBuf,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub metrics_addr: SocketAddr,
    /// The node installer's options; `None` with `--no-install`. Its `ready_file` tells
    /// whether the node is installed.
    pub install: Option<InstallOptions>,
    /// The reconciler's settings; `None` with `--repair-mode off`.
    pub reconcile: Option<reconcile::Settings>,
    /// Remove the node readiness taint once installed and synced.
    pub remove_taint: bool,
}

struct AgentStatus {
    cache: Arc<PodCache>,
    ready_file: Option<PathBuf>,
}

impl Status for AgentStatus {
    fn ready(&self) -> bool {
        let installed = self.ready_file.as_ref().is_none_or(|f| f.exists());
        installed && self.cache.synced()
    }

    fn pods(&self) -> usize {
        self.cache.len()
    }
}

async fn client(kubeconfig: Option<&PathBuf>) -> Result<kube::Client, AgentError> {
    let kerr = |e: &dyn std::fmt::Display| AgentError::Kube(e.to_string());
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| kerr(&e))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| kerr(&e))?
        }
        None => kube::Config::incluster().map_err(|e| kerr(&e))?,
    };
    kube::Client::try_from(config).map_err(|e| kerr(&e))
}

/// Runs the agent until SIGTERM/SIGINT (or until the installer fails).
pub fn run(opts: AgentOptions) -> Result<(), AgentError> {
    // Blocked before any thread exists, so that every thread inherits the mask and the
    // signals reach only the installer's signalfd (or the wait below).
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.thread_block()
        .map_err(|e| AgentError::Start(format!("block SIGTERM/SIGINT: {e}")))?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AgentError::Start(e.to_string()))?;
    let (socket, http) = runtime.block_on(async {
        let socket = server::bind(&opts.socket).map_err(|source| AgentError::Listen {
            what: opts.socket.display().to_string(),
            source,
        })?;
        let http = tokio::net::TcpListener::bind(opts.metrics_addr)
            .await
            .map_err(|source| AgentError::Listen {
                what: opts.metrics_addr.to_string(),
                source,
            })?;
        let client = client(opts.kubeconfig.as_ref()).await?;
        Ok::<_, AgentError>(((socket, client), http))
    })?;
    let cache = Arc::new(PodCache::default());
    let status = Arc::new(AgentStatus {
        cache: cache.clone(),
        ready_file: opts.install.as_ref().and_then(|i| i.ready_file.clone()),
    });
    tracing::info!(node = %opts.node_name, socket = %opts.socket.display(), metrics = %opts.metrics_addr, install = opts.install.is_some(),
        repair_mode = opts.reconcile.as_ref().map_or("off", |r| r.mode.as_str()), remove_taint = opts.remove_taint, "agent starting");
    let tasks = Tasks {
        node: opts.node_name.clone(),
        cache,
        status,
        reconcile: opts.reconcile.clone(),
        remove_taint: opts.remove_taint,
    };
    std::thread::Builder::new()
        .name("agent".into())
        .spawn(move || {
            runtime.block_on(serve_all(socket, http, tasks));
        })
        .map_err(|e| AgentError::Start(e.to_string()))?;
    let result = match &opts.install {
        Some(install) => crate::install::run(install).map_err(AgentError::from),
        None => mask
            .wait()
            .map(|s| tracing::info!(signal = ?s, "stopping"))
            .map_err(|e| AgentError::Start(format!("wait for signals: {e}"))),
    };
    let _ = std::fs::remove_file(&opts.socket);
    result
}

/// What the agent's runtime thread runs besides the listeners.
struct Tasks {
    node: String,
    cache: Arc<PodCache>,
    status: Arc<AgentStatus>,
    reconcile: Option<reconcile::Settings>,
    remove_taint: bool,
}

async fn serve_all(
    (socket, client): (tokio::net::UnixListener, kube::Client),
    http: tokio::net::TcpListener,
    tasks: Tasks,
) {
    let Tasks {
        node,
        cache,
        status,
        reconcile,
        remove_taint,
    } = tasks;
    let metrics = Arc::new(Metrics::default());
    let watch = cache::follow(client.clone(), &node, cache.clone(), |e| {
        tracing::warn!(error = %e, "pod watch failed; retrying with backoff");
    });
    let reconciler = async {
        let Some(settings) = reconcile else { return };
        let actor = Actor {
            client: client.clone(),
            node: node.clone(),
            mode: settings.mode,
            metrics: metrics.clone(),
        };
        let kernel = Arc::new(ProcNode::default());
        reconcile::follow(kernel, cache.clone(), Arc::new(settings), actor).await;
    };
    let taint = async {
        if remove_taint {
            let status = status.clone();
            super::taint::remove_when_ready(client.clone(), node.clone(), move || status.ready())
                .await;
        }
    };
    tokio::join!(
        watch,
        server::serve(socket, cache.clone(), metrics.clone()),
        metrics::serve(http, metrics.clone(), status.clone()),
        reconciler,
        taint,
    );
}
