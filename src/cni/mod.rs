//! mesh-redirect as a chained CNI plugin: when `CNI_COMMAND` is set, the binary speaks the CNI
//! protocol instead of its command line. kubelet asks the container runtime (containerd,
//! CRI-O) to set up the pod network; libcni runs the primary plugin, then us with its result
//! as `prevResult`:
//!
//! * `ADD`: find the pod (Kubernetes API, or the plugin configuration alone in static mode),
//!   decide whether it gets a redirect (Istio's rules), turn its annotations into the redirect
//!   configuration, program it into `CNI_NETNS`, and pass `prevResult` through unchanged;
//! * `DEL`: remove our rules; succeeds when the namespace is gone or holds nothing of ours;
//! * `CHECK`: compare the kernel with the expected rules, fail with the diff on drift;
//! * `VERSION`, `STATUS`, `GC` as the spec says.
//!
//! stdout carries only the result or the error document; logs go to stderr and, when
//! configured, a log file.

pub mod expected;
pub mod kube;
pub mod netconf;
pub mod pod;
pub mod protocol;

use crate::config::HostGroups;
use crate::engine::{self, EngineError};
use crate::error::Outcome;
use crate::netns::Netns;
pub use expected::{ipv6_from_addresses, Expected};
use netconf::{LogLevel, Mode, NetConf};
use protocol::{CniError, Code, Command, Environment, K8sArgs, LATEST};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Instant;

/// The `cniVersion` of the request being answered, for the panic hook's error document.
static REQUEST_VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The node agent's socket, once the configuration is read (the report goes there).
static AGENT_SOCKET: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Where the pod came from: `cache` or `api` (for the report).
static LOOKUP_SOURCE: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// This invocation's log lines, sent to the agent after the answer (bounded).
static LOG_LINES: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

/// At most this much of the log is forwarded to the agent.
const MAX_FORWARDED_LOG: usize = 64 << 10;

/// After the runtime has its answer: the invocation's report and log lines to the agent,
/// fire-and-forget (ADD, DEL and CHECK only; nothing for VERSION, STATUS, GC).
fn report_to_agent(started: Instant, ok: bool) {
    use crate::agent::protocol::{Report, Request};
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    if !matches!(command.as_str(), "ADD" | "DEL" | "CHECK") {
        return;
    }
    let socket = AGENT_SOCKET
        .get()
        .cloned()
        .unwrap_or_else(|| std::path::PathBuf::from(crate::agent::protocol::DEFAULT_SOCKET));
    let logs = std::mem::take(&mut *LOG_LINES.lock().unwrap_or_else(|e| e.into_inner()));
    let mut requests: Vec<Request> = logs
        .lines()
        .map(|l| Request::Log {
            line: l.to_string(),
        })
        .collect();
    requests.push(Request::Report(Report {
        command,
        result: if ok { "ok" } else { "error" }.to_string(),
        duration_seconds: started.elapsed().as_secs_f64(),
        lookup: LOOKUP_SOURCE.get().map(|s| s.to_string()),
    }));
    crate::agent::client::send_after(&socket, &requests);
}

/// A panic must still answer the runtime: an error document on stdout (code 106) and exit
/// status 1, never an empty answer (and, with `panic = "abort"`, a signal).
fn answer_panics() {
    std::panic::set_hook(Box::new(|info| {
        let version = REQUEST_VERSION.get().map(String::as_str).unwrap_or(LATEST);
        let e = CniError::new(
            Code::Internal,
            "mesh-redirect failed unexpectedly (a bug); the pod's redirect state is unknown",
            info.to_string(),
        );
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{}", e.to_json(version));
        let _ = stdout.flush();
        let _ = writeln!(std::io::stderr(), "{e}: {info}");
        std::process::exit(1);
    }));
}

/// Runs one CNI invocation: environment, stdin, stdout, exit code.
pub fn main() -> ExitCode {
    let started = Instant::now();
    answer_panics();
    let env = |k: &str| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned());
    let answer = match read_stdin(std::io::stdin().lock()) {
        Ok(stdin) => invoke(&env, &stdin),
        Err(e) => Err((e, LATEST.to_string())),
    };
    let (out, ok) = match answer {
        Ok(out) => (out, true),
        Err((e, version)) => {
            tracing::error!("{e}");
            (Some(e.to_json(&version)), false)
        }
    };
    if let Some(out) = out {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{out}");
        let _ = stdout.flush();
    }
    report_to_agent(started, ok);
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The largest configuration accepted on stdin. A conflist entry with a `prevResult` is a
/// few KiB; 4 MiB is far above any real one and keeps the plugin's memory bounded.
pub const MAX_STDIN: u64 = 4 << 20;

/// Reads the network configuration from stdin, refusing more than [`MAX_STDIN`] bytes (error
/// 6) instead of buffering whatever a caller sends.
pub fn read_stdin(input: impl Read) -> Result<Vec<u8>, CniError> {
    let mut stdin = Vec::new();
    input
        .take(MAX_STDIN + 1)
        .read_to_end(&mut stdin)
        .map_err(|e| {
            CniError::new(
                Code::Io,
                "cannot read the configuration on stdin",
                e.to_string(),
            )
        })?;
    if stdin.len() as u64 > MAX_STDIN {
        return Err(CniError::new(
            Code::Decode,
            format!(
                "the configuration on stdin is larger than {} MiB",
                MAX_STDIN >> 20
            ),
            "refused before parsing; a CNI configuration with prevResult is a few KiB",
        ));
    }
    Ok(stdin)
}

type Failure = (CniError, String);

/// The whole protocol, without process I/O (tests drive it directly).
pub fn invoke(
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> Result<Option<Value>, Failure> {
    let cni_env = Environment::from(env).map_err(|e| (e, LATEST.to_string()))?;
    if cni_env.command == Command::Version {
        let requested: Option<String> = serde_json::from_slice::<Value>(stdin)
            .ok()
            .and_then(|v| v["cniVersion"].as_str().map(str::to_string));
        return Ok(Some(protocol::version_result(requested.as_deref())));
    }
    let conf = NetConf::parse(stdin).map_err(|e| (e, LATEST.to_string()))?;
    let _ = REQUEST_VERSION.set(conf.cni_version.clone());
    let _ = AGENT_SOCKET.set(conf.agent_socket.clone());
    if crate::fault::active(crate::fault::Fault::Panic) {
        panic!("fault injection: a panic in the plugin");
    }
    init_logging(&conf);
    if !conf.unknown_keys.is_empty() {
        tracing::warn!(keys = ?conf.unknown_keys, "ignoring unknown configuration keys");
    }
    let version = conf.cni_version.clone();
    let fail = |e: CniError| (e, version.clone());
    let needs = |min: &str, what: &str| -> Result<(), Failure> {
        if protocol::at_least(&conf.cni_version, min) {
            Ok(())
        } else {
            Err(fail(CniError::new(
                Code::IncompatibleVersion,
                format!("config version does not allow {what}"),
                format!("cniVersion {} < {min}", conf.cni_version),
            )))
        }
    };
    match cni_env.command {
        Command::Version => unreachable!("answered above"),
        Command::Add => add(&cni_env, &conf).map_err(fail),
        Command::Del => del(&cni_env, &conf).map(|()| None).map_err(fail),
        Command::Check => {
            needs("0.4.0", "CHECK")?;
            check(&cni_env, &conf).map(|()| None).map_err(fail)
        }
        Command::Status => {
            needs("1.1.0", "STATUS")?;
            status(&conf).map(|()| None).map_err(fail)
        }
        // We keep no state per attachment: there is nothing to collect.
        Command::Gc => {
            needs("1.1.0", "GC")?;
            Ok(None)
        }
    }
}

fn init_logging(conf: &NetConf) {
    use tracing::Level;
    let level = match conf.log_level {
        LogLevel::Off => return,
        LogLevel::Error => Level::ERROR,
        LogLevel::Warn => Level::WARN,
        LogLevel::Info => Level::INFO,
        LogLevel::Debug => Level::DEBUG,
        LogLevel::Trace => Level::TRACE,
    };
    let file = conf.log_file.as_ref().and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    let file = std::sync::Arc::new(std::sync::Mutex::new(file));
    let writer = move || Tee(file.clone());
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(writer)
        .with_ansi(false)
        .with_target(false)
        .try_init();
}

/// stderr, and the log file when there is one.
struct Tee(std::sync::Arc<std::sync::Mutex<Option<std::fs::File>>>);

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        if let Ok(mut lines) = LOG_LINES.lock() {
            if lines.len() + buf.len() <= MAX_FORWARDED_LOG {
                lines.push_str(&String::from_utf8_lossy(buf));
            }
        }
        if let Ok(mut f) = self.0.lock() {
            if let Some(f) = f.as_mut() {
                let _ = f.write_all(buf);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn kube_error(e: kube::KubeError, conf: &NetConf, args: &K8sArgs) -> CniError {
    use kube::KubeError as K;
    let pod = format!("{}/{}", args.pod_namespace, args.pod_name);
    match e {
        K::DeadlineExceeded { .. } => CniError::new(
            Code::TryAgainLater,
            format!(
                "the Kubernetes API did not give pod {pod} within {:?}; nothing was applied",
                conf.api_timeout
            ),
            e.to_string(),
        ),
        K::Unauthorized { .. } => CniError::new(
            Code::ApiUnauthorized,
            format!("the Kubernetes API refused access to pod {pod}"),
            e.to_string(),
        ),
        K::Decode(_) => CniError::new(
            Code::ApiInvalidResponse,
            format!("the Kubernetes API answered something that is not pod {pod}"),
            e.to_string(),
        ),
        K::Config(_) => CniError::new(
            Code::InvalidConfig,
            format!("invalid kubeconfig {}", conf.kubeconfig.display()),
            e.to_string(),
        ),
        // A certificate the kubeconfig's CA does not vouch for will not fix itself.
        K::Tls(_) => CniError::new(
            Code::InvalidConfig,
            format!(
                "TLS with the Kubernetes API failed (kubeconfig {})",
                conf.kubeconfig.display()
            ),
            e.to_string(),
        ),
        K::Status { .. } => CniError::new(
            Code::ApiInvalidResponse,
            format!("the Kubernetes API answered pod {pod} unexpectedly"),
            e.to_string(),
        ),
    }
}

fn prev_result_addresses(prev: Option<&Value>) -> Vec<IpAddr> {
    prev.and_then(|p| p["ips"].as_array())
        .map(|ips| {
            ips.iter()
                .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn open_netns(path: &str) -> Result<Netns, CniError> {
    Netns::open(path).map_err(|e| {
        CniError::new(
            Code::UnknownContainer,
            format!("cannot open the network namespace {path}"),
            e.to_string(),
        )
    })
}

/// The pod object: from the node agent's cache when it has the pod with the runtime's UID,
/// else from the API server with today's deadline and error codes. Logs which (`source`).
fn fetch_pod(conf: &NetConf, args: &K8sArgs) -> Result<Value, CniError> {
    let started = Instant::now();
    let (ns, name) = (&args.pod_namespace, &args.pod_name);
    let miss = if args.pod_uid.is_empty() {
        "no K8S_POD_UID in CNI_ARGS".to_string()
    } else {
        match crate::agent::client::lookup(&conf.agent_socket, ns, name, &args.pod_uid) {
            Ok(pod) => {
                let _ = LOOKUP_SOURCE.set("cache");
                tracing::info!(pod = %name, namespace = %ns, source = "cache", lookup_us = started.elapsed().as_micros() as u64, "pod read");
                return Ok(pod);
            }
            Err(e) => e.to_string(),
        }
    };
    let kc = kube::KubeConfig::load(&conf.kubeconfig).map_err(|e| kube_error(e, conf, args))?;
    let policy = kube::RetryPolicy {
        deadline: conf.api_timeout,
        ..Default::default()
    };
    let object = kube::get_pod(&kc, ns, name, &policy).map_err(|e| kube_error(e, conf, args))?;
    let _ = LOOKUP_SOURCE.set("api");
    tracing::info!(pod = %name, namespace = %ns, source = "api", agent = %miss, lookup_us = started.elapsed().as_micros() as u64, "pod read");
    Ok(object)
}

fn expected(env: &Environment, conf: &NetConf) -> Result<Expected, CniError> {
    let args = protocol::parse_args(&env.args)?;
    let netns = env.netns.clone().unwrap_or_default();
    // IPv6 as Istio decides it: from the primary plugin's result, else from the namespace's
    // interfaces (read only when the result decides nothing).
    let ipv6 = |dual_stack: bool| {
        let from_prev = prev_result_addresses(conf.prev_result.as_ref());
        ipv6_from_addresses(&from_prev, dual_stack).or_else(|| {
            let ns = Netns::open(&netns).ok()?;
            ipv6_from_addresses(&ns.addresses().ok()?, dual_stack)
        })
    };
    match conf.mode {
        Mode::Static => {
            let dual = conf
                .redirect
                .get("dualStack")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let raw = pod::static_settings(&conf.redirect)?;
            expected::finish(
                conf,
                raw,
                dual,
                format!("container {}", env.container_id),
                ipv6,
            )
        }
        Mode::Kubernetes => {
            if args.pod_name.is_empty() || args.pod_namespace.is_empty() {
                return Ok(Expected::Skip(
                    "not a Kubernetes pod (no K8S_POD_NAME/K8S_POD_NAMESPACE in CNI_ARGS)".into(),
                ));
            }
            // Checked before the pod is read, so that an excluded pod costs no API call.
            if let Some(why) = expected::excluded(conf, &args.pod_namespace) {
                return Ok(Expected::Skip(why));
            }
            let object = fetch_pod(conf, &args)?;
            expected::for_pod(conf, &object, ipv6)
        }
    }
}

fn engine_error(e: EngineError, what: &str) -> CniError {
    let (code, msg) = match e.outcome() {
        Outcome::Namespace => (
            Code::UnknownContainer,
            format!("cannot enter the network namespace to {what}"),
        ),
        Outcome::PermissionDenied => (
            Code::PermissionDenied,
            format!("not permitted to {what} (a capability is missing)"),
        ),
        Outcome::KernelIo => (
            Code::KernelIo,
            format!("cannot read the namespace's state to {what}"),
        ),
        _ => (
            Code::RulesRefused,
            format!("the kernel refused to {what}; nothing was changed"),
        ),
    };
    CniError::new(code, msg, e.to_string())
}

fn add(env: &Environment, conf: &NetConf) -> Result<Option<Value>, CniError> {
    match expected(env, conf)? {
        Expected::Skip(why) => tracing::info!(container = %env.container_id, "no redirect: {why}"),
        Expected::Redirect { cfg, pod } => {
            // The last thing this process does in a namespace: on its own thread, no other
            // made (`engine::apply_as_last`); afterwards it only answers on stdout and reports
            // to the agent's socket by path.
            let ns = open_netns(env.netns.as_deref().unwrap_or_default())?;
            let path = ns.path().to_string();
            let report = engine::apply_as_last(ns, &cfg, conf.backend)
                .map_err(|e| engine_error(e, "program the redirect"))?;
            tracing::info!(
                pod = %pod,
                netns = path,
                backend = report.decision.backend.name(),
                because = report.decision.reason,
                objects = report.objects,
                migrated_from = report.migrated_from.map(|b| b.name()).unwrap_or("-"),
                apply_us = report.elapsed.as_micros() as u64,
                "redirect applied"
            );
        }
    }
    Ok(Some(protocol::pass_through(
        conf.prev_result.as_ref(),
        &conf.cni_version,
    )))
}

fn del(env: &Environment, conf: &NetConf) -> Result<(), CniError> {
    let Some(path) = env.netns.as_deref() else {
        tracing::info!(container = %env.container_id, "DEL without a namespace: nothing to remove");
        return Ok(());
    };
    let ns = match Netns::open(path) {
        Ok(ns) => ns,
        Err(_) => {
            tracing::info!(netns = path, "DEL: the namespace is already gone");
            return Ok(());
        }
    };
    // Mark and routing table from the plugin's settings (Istio's defaults otherwise).
    let cfg = pod::static_settings(&conf.redirect)
        .ok()
        .and_then(|r| r.validate(&HostGroups::default()).ok())
        .unwrap_or_else(|| {
            crate::config::RawConfig::default()
                .validate(&HostGroups::default())
                .expect("defaults are valid")
        });
    let report = engine::remove(&ns, &cfg).map_err(|e| engine_error(e, "remove the redirect"))?;
    tracing::info!(
        netns = ns.path(),
        tables = report.tables_removed.len(),
        routes = report.routes_removed.len(),
        "redirect removed"
    );
    Ok(())
}

fn check(env: &Environment, conf: &NetConf) -> Result<(), CniError> {
    match expected(env, conf)? {
        Expected::Skip(why) => {
            tracing::info!(container = %env.container_id, "CHECK: no redirect expected: {why}");
            Ok(())
        }
        Expected::Redirect { cfg, pod } => {
            let ns = open_netns(env.netns.as_deref().unwrap_or_default())?;
            let engine::VerifyReport {
                decision,
                differences,
            } = engine::verify(&ns, &cfg, conf.backend)
                .map_err(|e| engine_error(e, "read the rules back"))?;
            if differences.is_empty() {
                tracing::info!(pod = %pod, backend = decision.backend.name(), "CHECK: the redirect is in place");
                Ok(())
            } else {
                Err(CniError::new(
                    Code::Drift,
                    format!(
                        "the redirect of pod {pod} drifted ({} differences)",
                        differences.len()
                    ),
                    differences.join("\n"),
                ))
            }
        }
    }
}

/// Ready when, in Kubernetes mode, the kubeconfig can be read and parsed.
fn status(conf: &NetConf) -> Result<(), CniError> {
    if conf.mode == Mode::Kubernetes {
        kube::KubeConfig::load(&conf.kubeconfig).map_err(|e| {
            CniError::new(
                Code::PluginNotAvailable,
                format!("kubeconfig {} is not usable", conf.kubeconfig.display()),
                e.to_string(),
            )
        })?;
    }
    Ok(())
}
