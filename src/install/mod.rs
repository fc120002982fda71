//! The node installer: puts the plugin on a node and keeps it there.
//!
//! Run from a DaemonSet that mounts the host's CNI directories, it does what istio-cni's
//! install-cni does for `istio-cni` (`docs/istio-semantics.md` §8.2):
//! 1. copies this binary to `<cni_bin_dir>/mesh-redirect` (the name is the plugin `type`);
//! 2. writes the plugin's kubeconfig from the pod's service account
//!    ([`kubeconfig`]) into the CNI configuration directory;
//! 3. chains `{"type": "mesh-redirect", ...}` at the end of the primary CNI's plugin list
//!    ([`conflist`], [`confdir`]).
//!
//! The order matters: the configuration is what makes the runtime call us, so it is written
//! last, when the binary and its kubeconfig are already in place.
//!
//! Then [`run`] stays, because the node does not stay put (`docs/field-pains.md` §2, §5): the
//! primary CNI rewrites its configuration on restart or upgrade and drops our entry, the
//! primary may not have written anything yet when we start, kubelet rotates the token, and
//! an upgrade can remove the binary. [`run_until`] repairs each of these from inotify events.
//!
//! Every write is atomic ([`files`]), and a pass that finds everything in place writes
//! nothing, so repairing never triggers further events (ours or the runtime's).

pub mod confdir;
pub mod conflist;
mod error;
pub mod files;
pub mod kubeconfig;
mod watch;

pub use error::InstallError;
pub use watch::{run_until, Stopper};

use serde_json::{Map, Value};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The installed binary's name: the `type` runtimes look up in the CNI bin directory.
pub const BINARY_NAME: &str = conflist::PLUGIN_TYPE;
/// Executable for the runtime, writable by root only.
const BINARY_MODE: u32 = 0o755;

/// Where to install, and what.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// The host's CNI bin directory, as mounted in this container.
    pub cni_bin_dir: PathBuf,
    /// The host's CNI configuration directory, as mounted in this container.
    pub cni_conf_dir: PathBuf,
    /// The same directory as the host (and so the plugin) sees it: the kubeconfig path written
    /// into our entry is `<host_cni_conf_dir>/mesh-redirect-kubeconfig`.
    pub host_cni_conf_dir: PathBuf,
    /// Holds `token`, `ca.crt` and `namespace`.
    pub service_account_dir: PathBuf,
    /// `KUBERNETES_SERVICE_HOST`.
    pub kubernetes_service_host: Option<String>,
    /// `KUBERNETES_SERVICE_PORT` (443 when unset).
    pub kubernetes_service_port: Option<String>,
    /// Our entry's settings (`backend`, `exclude_namespaces`, `plugin_log_level`,
    /// `api_timeout`, ...), without `type`. Checked with the plugin's own parser before
    /// anything is written, so a bad value cannot break every pod's ADD.
    pub plugin: Map<String, Value>,
    /// The binary to install, normally `std::env::current_exe()`.
    pub binary: PathBuf,
    /// Written (atomically) while the node is configured, removed when it is not and on exit.
    pub ready_file: Option<PathBuf>,
    /// On SIGTERM/SIGINT (or [`Stopper::stop`]), take the plugin off the node.
    pub cleanup_on_exit: bool,
    /// [`run`] makes one pass and returns, without watching (and without a ready file).
    pub once: bool,
}

impl Default for InstallOptions {
    /// The DaemonSet layout: host directories mounted under `/host`, the standard service
    /// account mount, the running executable. The API server address is left unset (see
    /// [`InstallOptions::with_env`]).
    fn default() -> Self {
        InstallOptions {
            cni_bin_dir: "/host/opt/cni/bin".into(),
            cni_conf_dir: "/host/etc/cni/net.d".into(),
            host_cni_conf_dir: "/etc/cni/net.d".into(),
            service_account_dir: "/var/run/secrets/kubernetes.io/serviceaccount".into(),
            kubernetes_service_host: None,
            kubernetes_service_port: None,
            plugin: Map::new(),
            // /proc/self/exe opens the running image even if its file was replaced.
            binary: std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into()),
            ready_file: None,
            cleanup_on_exit: false,
            once: false,
        }
    }
}

impl InstallOptions {
    /// Fills the API server address from `KUBERNETES_SERVICE_HOST`/`KUBERNETES_SERVICE_PORT`.
    pub fn with_env(mut self) -> Self {
        self.kubernetes_service_host = std::env::var("KUBERNETES_SERVICE_HOST").ok();
        self.kubernetes_service_port = std::env::var("KUBERNETES_SERVICE_PORT").ok();
        self
    }

    /// `<cni_bin_dir>/mesh-redirect`.
    pub fn installed_binary(&self) -> PathBuf {
        self.cni_bin_dir.join(BINARY_NAME)
    }

    /// `<cni_conf_dir>/mesh-redirect-kubeconfig` (our view of it).
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.cni_conf_dir.join(kubeconfig::KUBECONFIG_FILE)
    }

    /// `<host_cni_conf_dir>/mesh-redirect-kubeconfig` (the plugin's view of it).
    pub fn host_kubeconfig_path(&self) -> PathBuf {
        self.host_cni_conf_dir.join(kubeconfig::KUBECONFIG_FILE)
    }

    /// Our plugin entry, checked with the plugin's own configuration parser.
    pub fn plugin_entry(&self) -> Result<Map<String, Value>, InstallError> {
        let host_path = self.host_kubeconfig_path();
        let path = host_path.to_str().ok_or_else(|| {
            InstallError::InvalidSettings(format!(
                "the kubeconfig path {} is not UTF-8",
                host_path.display()
            ))
        })?;
        let entry = conflist::plugin_entry(&self.plugin, path)
            .map_err(|e| InstallError::InvalidSettings(e.to_string()))?;
        // As libcni would hand it to the plugin: the list's name and version added.
        let mut probe = entry.clone();
        probe.insert("cniVersion".into(), "1.0.0".into());
        probe.insert("name".into(), conflist::WRAPPED_NAME.into());
        let bytes = serde_json::to_vec(&probe).expect("JSON always serializes");
        crate::cni::netconf::NetConf::parse(&bytes)
            .map_err(|e| InstallError::InvalidSettings(e.to_string()))?;
        Ok(entry)
    }
}

/// Whether a step changed the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Already as wanted: nothing was written.
    Unchanged,
    /// Written (created or replaced).
    Written,
}

impl Change {
    fn from_written(written: bool) -> Change {
        if written {
            Change::Written
        } else {
            Change::Unchanged
        }
    }
}

/// What one [`install`] pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallReport {
    /// Where the plugin binary was installed.
    pub binary: PathBuf,
    /// Whether it was written.
    pub binary_change: Change,
    /// Where the plugin's kubeconfig was written.
    pub kubeconfig: PathBuf,
    /// Whether it was written.
    pub kubeconfig_change: Change,
    /// The plugin list holding our entry.
    pub conflist: PathBuf,
    /// Whether it was written.
    pub conflist_change: Change,
    /// The single-plugin configuration that was wrapped into `conflist` and removed.
    pub converted_from: Option<PathBuf>,
}

/// What [`uninstall`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UninstallReport {
    /// Lists our entry was removed from.
    pub conflists_updated: Vec<PathBuf>,
    /// Lists that held only our entry, deleted.
    pub conflists_deleted: Vec<PathBuf>,
    /// The plugin's kubeconfig was deleted.
    pub kubeconfig_removed: bool,
    /// The plugin binary was deleted.
    pub binary_removed: bool,
}

fn ensure_dir(dir: &Path) -> Result<(), InstallError> {
    // Normally a mounted host directory; creating it is what the runtime would do anyway, and
    // lets `run` watch it before the primary CNI shows up.
    fs::create_dir_all(dir).map_err(|e| InstallError::io("cannot create", dir, e))
}

/// A step's outcome, with the stamp of the file it wrote (if it replaced one).
type Stepped = (Change, Option<files::Stamp>);

/// Step 1: the binary, atomically, unless the installed one is byte-identical.
pub(crate) fn install_binary(opts: &InstallOptions) -> Result<Stepped, InstallError> {
    ensure_dir(&opts.cni_bin_dir)?;
    files::clean_stale_temps(&opts.cni_bin_dir, files::STALE_TEMP_AGE);
    let target = opts.installed_binary();
    let same = files::same_contents(&opts.binary, &target)
        .map_err(|e| InstallError::io("cannot compare", &opts.binary, e))?;
    if same {
        let meta =
            fs::metadata(&target).map_err(|e| InstallError::io("cannot examine", &target, e))?;
        if meta.permissions().mode() & 0o7777 != BINARY_MODE {
            // Right bytes, wrong mode: a chmod is enough, and cannot expose a partial file.
            fs::set_permissions(&target, fs::Permissions::from_mode(BINARY_MODE))
                .map_err(|e| InstallError::io("cannot chmod", &target, e))?;
            return Ok((Change::Written, None));
        }
        return Ok((Change::Unchanged, None));
    }
    let stamp = files::copy_atomic(&opts.binary, &target, BINARY_MODE)
        .map_err(|e| InstallError::io("cannot install the binary as", &target, e))?;
    tracing::info!(path = %target.display(), "installed the plugin binary");
    Ok((Change::Written, Some(stamp)))
}

/// Step 2: the kubeconfig, rewritten only when its contents (e.g. the token) change.
pub(crate) fn install_kubeconfig(opts: &InstallOptions) -> Result<Stepped, InstallError> {
    let server = kubeconfig::server_url(
        opts.kubernetes_service_host.as_deref(),
        opts.kubernetes_service_port.as_deref(),
    )?;
    let sa = kubeconfig::read_service_account(&opts.service_account_dir)?;
    let text = kubeconfig::render(&server, &sa);
    ensure_dir(&opts.cni_conf_dir)?;
    let path = opts.kubeconfig_path();
    let current =
        files::read_optional(&path).map_err(|e| InstallError::io("cannot read", &path, e))?;
    let mode_ok = fs::metadata(&path)
        .is_ok_and(|m| m.permissions().mode() & 0o7777 == kubeconfig::KUBECONFIG_MODE);
    if current.as_deref() == Some(text.as_slice()) && mode_ok {
        return Ok((Change::Unchanged, None));
    }
    let stamp = files::write_atomic(&path, &text, kubeconfig::KUBECONFIG_MODE)
        .map_err(|e| InstallError::io("cannot write", &path, e))?;
    tracing::info!(path = %path.display(), server = %server, "wrote the plugin's kubeconfig");
    Ok((Change::Written, Some(stamp)))
}

/// Step 3: our entry in the primary configuration.
pub(crate) fn install_conflist(opts: &InstallOptions) -> Result<confdir::Applied, InstallError> {
    let entry = opts.plugin_entry()?;
    let applied = confdir::apply(&opts.cni_conf_dir, &entry)?;
    if applied.written {
        tracing::info!(
            path = %applied.conflist.display(),
            converted_from = ?applied.converted_from,
            "chained the plugin into the primary CNI configuration"
        );
    }
    Ok(applied)
}

/// One pass: binary, kubeconfig, configuration. Idempotent: a second pass writes nothing.
pub fn install(opts: &InstallOptions) -> Result<InstallReport, InstallError> {
    // The entry is checked first, so bad settings fail before anything is touched.
    opts.plugin_entry()?;
    let (binary_change, _) = install_binary(opts)?;
    let (kubeconfig_change, _) = install_kubeconfig(opts)?;
    let applied = install_conflist(opts)?;
    Ok(InstallReport {
        binary: opts.installed_binary(),
        binary_change,
        kubeconfig: opts.kubeconfig_path(),
        kubeconfig_change,
        conflist: applied.conflist,
        conflist_change: Change::from_written(applied.written),
        converted_from: applied.converted_from,
    })
}

/// The reverse of [`install`], in reverse order (the configuration first, so the runtime
/// stops calling the plugin before its files go). Idempotent; touches no other plugin.
///
/// A `.conflist` made from a single-plugin `.conf` is left as a one-plugin `.conflist`
/// (see [`confdir::remove`]).
pub fn uninstall(opts: &InstallOptions) -> Result<UninstallReport, InstallError> {
    let removed = confdir::remove(&opts.cni_conf_dir)?;
    let kubeconfig = opts.kubeconfig_path();
    let kubeconfig_removed = files::remove_if_exists(&kubeconfig)
        .map_err(|e| InstallError::io("cannot remove", &kubeconfig, e))?;
    let binary = opts.installed_binary();
    let binary_removed = files::remove_if_exists(&binary)
        .map_err(|e| InstallError::io("cannot remove", &binary, e))?;
    files::clean_stale_temps(&opts.cni_bin_dir, files::STALE_TEMP_AGE);
    let report = UninstallReport {
        conflists_updated: removed.updated,
        conflists_deleted: removed.deleted,
        kubeconfig_removed,
        binary_removed,
    };
    tracing::info!(?report, "uninstalled the plugin");
    Ok(report)
}

/// [`install`], then (unless `once`) keep the node configured until SIGTERM/SIGINT; see
/// [`run_until`]. Call it before starting other threads: SIGTERM/SIGINT are blocked in the
/// calling thread and taken from a signalfd, and a thread that does not block them would
/// die of them instead.
pub fn run(opts: &InstallOptions) -> Result<(), InstallError> {
    if opts.once {
        let report = install(opts)?;
        tracing::info!(?report, "installed");
        return Ok(());
    }
    run_until(opts, &Stopper::new()?)
}
