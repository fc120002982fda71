//! `mesh-redirect-agent`: the DaemonSet's long-running process. A binary of its own so that
//! the CNI plugin (`mesh-redirect`, started once per pod) links none of the agent's
//! dependencies (kube, k8s-openapi, tokio, prometheus-client).

use clap::Parser;
use mesh_redirect::agent::protocol::DEFAULT_SOCKET;
use mesh_redirect::agent::reconcile::{self, RepairMode};
use mesh_redirect::agent::run::{self, AgentError, AgentOptions};
use mesh_redirect::cli::NodeArgs;
use mesh_redirect::cni::netconf::{Mode, NetConf};
use mesh_redirect::install::InstallOptions;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// The node agent: caches the node's pods for the CNI plugin (zero API calls per pod),
/// serves metrics, and installs the plugin on the node (unless --no-install).
#[derive(Debug, Parser)]
#[command(name = "mesh-redirect-agent", version)]
struct Args {
    /// The node whose pods are cached (the DaemonSet passes spec.nodeName).
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    node_name: String,
    /// A kubeconfig; without it, the in-cluster service account.
    #[arg(long, env = "KUBECONFIG", value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// The plugin's socket.
    #[arg(long, env = "MESH_REDIRECT_AGENT_SOCKET", default_value = DEFAULT_SOCKET, value_name = "PATH")]
    socket: PathBuf,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(
        long,
        env = "METRICS_ADDR",
        default_value = "0.0.0.0:15014",
        value_name = "ADDR"
    )]
    metrics_addr: SocketAddr,
    /// Do not install the plugin on the node (another process does).
    #[arg(long)]
    no_install: bool,
    /// The plugin binary to install (default: `mesh-redirect` next to this binary).
    #[arg(long, env = "PLUGIN_BINARY", value_name = "PATH")]
    plugin_binary: Option<PathBuf>,
    /// The installer's ready file (default: `installed` next to the socket).
    #[arg(long, env = "READY_FILE", value_name = "PATH")]
    ready_file: Option<PathBuf>,
    /// On SIGTERM, remove our entry, kubeconfig and binary from the node.
    #[arg(long, env = "CLEANUP_ON_EXIT", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    cleanup_on_exit: Option<String>,
    /// What to do about a meshed pod whose redirect is missing or drifted: repair (apply it
    /// in place), label (mesh-redirect.io/uninitialized=true), delete (its controller
    /// re-creates it), off (no reconciler: the install-only profile).
    #[arg(
        long,
        env = "REPAIR_MODE",
        default_value = "repair",
        value_name = "MODE"
    )]
    repair_mode: String,
    /// Seconds between full reconcile passes (pod events trigger passes in between).
    #[arg(
        long,
        env = "RECONCILE_INTERVAL",
        default_value = "60",
        value_name = "SECONDS"
    )]
    reconcile_interval: String,
    /// Remove the taint mesh-redirect.io/not-ready:NoSchedule from this node once the plugin
    /// is installed and the pod cache synced.
    #[arg(long, env = "REMOVE_TAINT", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    remove_taint: Option<String>,
    /// The node's CNI directories and the plugin settings (as `mesh-redirect install`).
    #[command(flatten)]
    node: NodeArgs,
    /// More logging (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn invalid(flag: &'static str, why: impl Into<String>) -> AgentError {
    AgentError::Invalid {
        flag,
        why: why.into(),
    }
}

/// The installer's plugin settings, as `mesh-redirect install` builds them.
fn plugin_settings(node: &NodeArgs) -> Result<serde_json::Map<String, Value>, AgentError> {
    node.plugin_settings()
        .map_err(|why| invalid("--plugin-config", why))
}

fn boolean(flag: &'static str, value: Option<&str>) -> Result<bool, AgentError> {
    match value {
        None | Some("false" | "0") => Ok(false),
        Some("true" | "1") => Ok(true),
        Some(v) => Err(invalid(flag, format!("{v:?} is not true or false"))),
    }
}

/// The reconciler's settings: the plugin configuration as the CNI ADD parses it.
fn reconcile_settings(args: &Args) -> Result<Option<reconcile::Settings>, AgentError> {
    let mode: RepairMode = args
        .repair_mode
        .parse()
        .map_err(|why| invalid("--repair-mode", why))?;
    let interval = match args.reconcile_interval.trim().parse::<u64>() {
        Ok(s) if (1..=86_400).contains(&s) => std::time::Duration::from_secs(s),
        _ => {
            return Err(invalid(
                "--reconcile-interval",
                format!(
                    "{:?} is not a number of seconds from 1 to 86400",
                    args.reconcile_interval
                ),
            ))
        }
    };
    if mode == RepairMode::Off {
        return Ok(None);
    }
    let mut conf = plugin_settings(&args.node)?;
    conf.insert("cniVersion".into(), "1.0.0".into());
    conf.insert("name".into(), "mesh-redirect".into());
    conf.insert("type".into(), "mesh-redirect".into());
    let conf = NetConf::parse(Value::Object(conf).to_string().as_bytes())
        .map_err(|e| invalid("--plugin-config", format!("{}: {}", e.msg, e.details)))?;
    if conf.mode != Mode::Kubernetes {
        return Err(invalid(
            "--repair-mode",
            format!("{} needs the plugin in Kubernetes mode (the configuration sets mode static); use --repair-mode off", mode.as_str()),
        ));
    }
    Ok(Some(reconcile::Settings {
        conf,
        mode,
        interval,
    }))
}

fn options(args: Args) -> Result<AgentOptions, AgentError> {
    if args.node_name.trim().is_empty() {
        return Err(invalid(
            "--node-name",
            "empty (set NODE_NAME from spec.nodeName)",
        ));
    }
    let reconcile = reconcile_settings(&args)?;
    let remove_taint = boolean("--remove-taint", args.remove_taint.as_deref())?;
    let install = if args.no_install {
        None
    } else {
        let mut plugin = plugin_settings(&args.node)?;
        if args.socket != std::path::Path::new(DEFAULT_SOCKET) {
            let s = args.socket.display().to_string();
            plugin.insert("agent_socket".into(), Value::String(s));
        }
        let here =
            std::env::current_exe().map_err(|e| invalid("--plugin-binary", e.to_string()))?;
        let binary = args
            .plugin_binary
            .unwrap_or_else(|| here.with_file_name("mesh-redirect"));
        let dir = args.socket.parent().map(PathBuf::from).unwrap_or_default();
        let cleanup_on_exit = boolean("--cleanup-on-exit", args.cleanup_on_exit.as_deref())?;
        Some(InstallOptions {
            cni_bin_dir: args.node.cni_bin_dir.clone(),
            cni_conf_dir: args.node.cni_conf_dir.clone(),
            host_cni_conf_dir: args.node.host_cni_conf_dir.clone(),
            service_account_dir: args.node.service_account_dir.clone(),
            plugin,
            binary,
            ready_file: Some(args.ready_file.unwrap_or_else(|| dir.join("installed"))),
            cleanup_on_exit,
            once: false,
            ..InstallOptions::default().with_env()
        })
    };
    Ok(AgentOptions {
        node_name: args.node_name,
        kubeconfig: args.kubeconfig.filter(|p| !p.as_os_str().is_empty()),
        socket: args.socket,
        metrics_addr: args.metrics_addr,
        install,
        reconcile,
        remove_taint,
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let level = match (
        args.verbose,
        std::env::var("MESH_REDIRECT_LOG").ok().as_deref(),
    ) {
        (0, Some("error")) => tracing::Level::ERROR,
        (0, Some("warn")) => tracing::Level::WARN,
        (0, Some("debug")) | (1, _) => tracing::Level::DEBUG,
        (0, Some("trace")) | (2.., _) => tracing::Level::TRACE,
        _ => tracing::Level::INFO,
    };
    mesh_redirect::cli::init_stderr_logging(level);
    match options(args).and_then(run::run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(5)
        }
    }
}
