//! The plugin's entry in a `.conflist`: the standard keys, Istio's `istio-cni` keys
//! (unchanged, so an existing istio-cni configuration works), and ours.
//!
//! ```json
//! {"type":"mesh-redirect","exclude_namespaces":["kube-system"],
//!  "cni_agent_run_dir":"/var/run/istio-cni","plugin_log_level":"info","native_nftables":true,
//!  "backend":"auto","api_timeout":"10s","log_file":"/var/log/mesh-redirect.log",
//!  "mode":"kubernetes","redirect":{"excludeOutboundPorts":"15020"}}
//! ```
//!
//! Unknown keys are ignored (other plugins' and future keys share the object); a known key
//! with a bad value is error 7 naming it.

use super::protocol::{valid_id, CniError, Code, SUPPORTED_VERSIONS};
use crate::engine::BackendChoice;
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::time::Duration;

/// Where redirect settings come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The pod from the Kubernetes API (annotations, istio-proxy container).
    Kubernetes,
    /// The plugin configuration alone (runtimes without Kubernetes, e.g. podman).
    Static,
}

/// How much the plugin logs (`plugin_log_level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Nothing.
    Off,
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Informational messages too (the default).
    Info,
    /// Debugging detail too.
    Debug,
    /// Everything.
    Trace,
}

/// The plugin's configuration, parsed from stdin.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// The `cniVersion` of the request (one of [`SUPPORTED_VERSIONS`]).
    pub cni_version: String,
    /// The network name.
    pub name: String,
    /// The previous plugin's result, passed through unchanged.
    pub prev_result: Option<Value>,
    /// Namespaces whose pods are left alone (top level and `kubernetes.`).
    pub exclude_namespaces: Vec<String>,
    /// The kubeconfig used to read pods.
    pub kubeconfig: PathBuf,
    /// Which rule backend to program.
    pub backend: BackendChoice,
    /// How long the pod read may take in all.
    pub api_timeout: Duration,
    /// How much to log.
    pub log_level: LogLevel,
    /// Where to log (besides stderr), if anywhere.
    pub log_file: Option<PathBuf>,
    /// Where redirect settings come from.
    pub mode: Mode,
    /// The node agent's socket (`agent_socket`), asked before the API server.
    pub agent_socket: PathBuf,
    /// Redirect settings: defaults for absent annotations, or the whole setting in static mode.
    pub redirect: Map<String, Value>,
    /// Top-level keys neither the CNI spec nor we know: ignored, as CNI expects, and logged.
    pub unknown_keys: Vec<String>,
}

/// `api_timeout` when the configuration does not set it.
pub const DEFAULT_API_TIMEOUT: Duration = Duration::from_secs(10);
/// istio-cni's file name for the kubeconfig install-cni writes into `cni_agent_run_dir`.
pub const KUBECONFIG_NAME: &str = "istio-cni-kubeconfig";

fn invalid(key: &str, value: &Value, why: &str) -> CniError {
    CniError::new(
        Code::InvalidConfig,
        format!("invalid value for {key}"),
        format!("{key}={value}: {why}"),
    )
}

fn string<'a>(m: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, CniError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(invalid(key, v, "expected a string")),
    }
}

fn boolean(m: &Map<String, Value>, key: &str) -> Result<Option<bool>, CniError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(invalid(key, v, "expected true or false")),
    }
}

fn namespaces(m: &Map<String, Value>, key: &str) -> Result<Vec<String>, CniError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(|s| s.trim().to_string())
                    .ok_or_else(|| invalid(key, v, "expected a list of namespace names"))
            })
            .filter(|r| r.as_ref().map(|s| !s.is_empty()).unwrap_or(true))
            .collect(),
        Some(v) => Err(invalid(key, v, "expected a list of namespace names")),
    }
}

/// `10s`, `1500ms`, `2m`, or a number of seconds.
pub fn duration(key: &str, v: &Value) -> Result<Duration, CniError> {
    let bad = || {
        invalid(
            key,
            v,
            "expected a duration such as \"10s\" or \"500ms\", between 100ms and 10m",
        )
    };
    let secs = match v {
        Value::Number(n) => n.as_f64().ok_or_else(bad)?,
        Value::String(s) => {
            let (num, unit) = s.trim().split_at(
                s.trim()
                    .find(|c: char| !c.is_ascii_digit() && c != '.')
                    .unwrap_or(s.trim().len()),
            );
            let n: f64 = num.parse().map_err(|_| bad())?;
            match unit {
                "ms" => n / 1000.0,
                "s" | "" => n,
                "m" => n * 60.0,
                _ => return Err(bad()),
            }
        }
        _ => return Err(bad()),
    };
    // Checked as a number first: `Duration::from_secs_f64` panics on values it cannot hold
    // (1e20, infinity, NaN), and a panic would leave the runtime without a CNI answer.
    if !(secs.is_finite() && (0.1..=600.0).contains(&secs)) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The object at `key`, if set; anything else but null is error 7 saying `why`.
fn object<'a>(
    m: &'a Map<String, Value>,
    key: &str,
    why: &str,
) -> Result<Option<&'a Map<String, Value>>, CniError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(v) => Err(invalid(key, v, why)),
    }
}

/// The `value` of `key` as a string, refused with `why`.
fn bad_value(key: &str, value: &str, why: &str) -> CniError {
    invalid(key, &Value::String(value.into()), why)
}

/// stdin as a JSON object (error 6 otherwise).
fn decode_object(stdin: &[u8]) -> Result<Map<String, Value>, CniError> {
    let v: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            Code::Decode,
            "cannot decode the network configuration",
            e.to_string(),
        )
    })?;
    let Value::Object(m) = v else {
        return Err(CniError::new(
            Code::Decode,
            "cannot decode the network configuration",
            "expected a JSON object",
        ));
    };
    Ok(m)
}

/// `cniVersion` (default 0.1.0), which must be one we support (error 1 otherwise).
fn cni_version(m: &Map<String, Value>) -> Result<String, CniError> {
    let cni_version = string(m, "cniVersion")?.unwrap_or("0.1.0").to_string();
    if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            "incompatible CNI versions",
            format!(
                "config is {cni_version:?}, plugin supports {}",
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    Ok(cni_version)
}

/// The namespaces to leave alone (top level and `kubernetes.`), and the kubeconfig path.
fn kubernetes_settings(m: &Map<String, Value>) -> Result<(Vec<String>, PathBuf), CniError> {
    let empty = Map::new();
    let kubernetes = object(m, "kubernetes", "expected an object")?.unwrap_or(&empty);
    let mut exclude_namespaces = namespaces(m, "exclude_namespaces")?;
    exclude_namespaces.extend(
        namespaces(kubernetes, "exclude_namespaces").map_err(|mut e| {
            e.msg = e
                .msg
                .replace("exclude_namespaces", "kubernetes.exclude_namespaces");
            e
        })?,
    );
    let run_dir = string(m, "cni_agent_run_dir")?.unwrap_or("");
    let kubeconfig = match string(kubernetes, "kubeconfig")? {
        Some(k) if !k.is_empty() => PathBuf::from(k),
        _ => PathBuf::from(run_dir).join(KUBECONFIG_NAME),
    };
    Ok((exclude_namespaces, kubeconfig))
}

/// `backend`, with istio-cni's `native_nftables: true` meaning nftables.
fn backend(m: &Map<String, Value>) -> Result<BackendChoice, CniError> {
    let native_nftables = boolean(m, "native_nftables")?;
    Ok(match (string(m, "backend")?, native_nftables) {
        (Some("nftables"), _) => BackendChoice::Nftables,
        (Some("iptables-legacy"), Some(true)) => {
            return Err(bad_value(
                "backend",
                "iptables-legacy",
                "native_nftables is true: the two settings contradict",
            ))
        }
        (Some("iptables-legacy"), _) => BackendChoice::IptablesLegacy,
        (Some("auto"), Some(true)) | (None, Some(true)) => BackendChoice::Nftables,
        (Some("auto"), _) | (None, _) => BackendChoice::Auto,
        (Some(other), _) => {
            return Err(bad_value(
                "backend",
                other,
                "expected nftables, iptables-legacy or auto",
            ))
        }
    })
}

/// `plugin_log_level` (istio-cni's key), else `log_level`; Go level names are accepted.
fn log_level(m: &Map<String, Value>) -> Result<LogLevel, CniError> {
    let level_key = if m.contains_key("plugin_log_level") {
        "plugin_log_level"
    } else {
        "log_level"
    };
    Ok(
        match string(m, level_key)?
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("") | Some("info") => LogLevel::Info,
            Some("none") => LogLevel::Off,
            Some("fatal") | Some("error") => LogLevel::Error,
            Some("warn") | Some("warning") => LogLevel::Warn,
            Some("debug") => LogLevel::Debug,
            Some("trace") => LogLevel::Trace,
            Some(other) => {
                return Err(bad_value(
                    level_key,
                    other,
                    "expected none, error, warn, info, debug or trace",
                ))
            }
        },
    )
}

/// `mode`: kubernetes (the default) or static.
fn mode(m: &Map<String, Value>) -> Result<Mode, CniError> {
    match string(m, "mode")? {
        None | Some("kubernetes") => Ok(Mode::Kubernetes),
        Some("static") => Ok(Mode::Static),
        Some(other) => Err(bad_value("mode", other, "expected kubernetes or static")),
    }
}

/// The keys of our `redirect` object: the annotations' names without their prefix. A typo
/// here would silently apply a default, so an unknown key is an error.
pub const REDIRECT_KEYS: [&str; 15] = [
    "interceptionMode",
    "includeOutboundIPRanges",
    "excludeOutboundIPRanges",
    "includeInboundPorts",
    "excludeInboundPorts",
    "includeOutboundPorts",
    "excludeOutboundPorts",
    "excludeInterfaces",
    "rerouteVirtualInterfaces",
    "proxyUID",
    "proxyGID",
    "dnsCapture",
    "invalidDrop",
    "dualStack",
    "ipv6",
];

/// Top-level keys that are not logged as unknown: the CNI spec's and ours (Istio's included).
const TOP_LEVEL_KEYS: [&str; 21] = [
    "cniVersion",
    "cniVersions",
    "name",
    "type",
    "args",
    "capabilities",
    "runtimeConfig",
    "prevResult",
    "disableCheck",
    "exclude_namespaces",
    "kubernetes",
    "cni_agent_run_dir",
    "plugin_log_level",
    "log_level",
    "native_nftables",
    "backend",
    "api_timeout",
    "log_file",
    "agent_socket",
    "mode",
    "redirect",
];

/// The known name closest to `key` (Levenshtein distance, case-insensitive).
fn closest<'k>(key: &str, known: &[&'k str]) -> &'k str {
    let distance = |a: &str, b: &str| {
        let (a, b): (Vec<char>, Vec<char>) = (
            a.to_lowercase().chars().collect(),
            b.to_lowercase().chars().collect(),
        );
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.iter().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let cur = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
                prev = cur;
            }
        }
        row[b.len()]
    };
    known
        .iter()
        .min_by_key(|k| distance(key, k))
        .copied()
        .unwrap_or_default()
}

impl NetConf {
    /// Parses stdin. Undecodable JSON is error 6, an unsupported `cniVersion` error 1, a bad
    /// value error 7.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let m = decode_object(stdin)?;
        let cni_version = cni_version(&m)?;
        let name = string(&m, "name")?.unwrap_or_default().to_string();
        if !valid_id(&name) {
            return Err(bad_value("name", &name, "a network name starts with a letter or digit and holds only letters, digits, '_', '.', '-'"));
        }
        let prev_result =
            object(&m, "prevResult", "expected an object")?.map(|p| Value::Object(p.clone()));
        let (exclude_namespaces, kubeconfig) = kubernetes_settings(&m)?;
        let backend = backend(&m)?;
        let api_timeout = match m.get("api_timeout") {
            None | Some(Value::Null) => DEFAULT_API_TIMEOUT,
            Some(v) => duration("api_timeout", v)?,
        };
        let log_level = log_level(&m)?;
        let log_file = string(&m, "log_file")?.filter(|s| !s.is_empty());
        if let Some(f) = log_file.filter(|f| f.contains('\0')) {
            return Err(bad_value("log_file", f, "a path cannot contain a NUL byte"));
        }
        let log_file = log_file.map(PathBuf::from);
        let mode = mode(&m)?;
        let agent_socket = match string(&m, "agent_socket")?.filter(|s| !s.is_empty()) {
            Some(s) if s.contains('\0') => {
                return Err(bad_value(
                    "agent_socket",
                    s,
                    "a path cannot contain a NUL byte",
                ))
            }
            Some(s) => PathBuf::from(s),
            None => PathBuf::from(crate::agent::protocol::DEFAULT_SOCKET),
        };
        let redirect = object(&m, "redirect", "expected an object of redirect settings")?
            .cloned()
            .unwrap_or_default();
        if let Some(key) = redirect
            .keys()
            .find(|k| !REDIRECT_KEYS.contains(&k.as_str()))
        {
            let closest = closest(key, &REDIRECT_KEYS);
            return Err(bad_value(
                &format!("redirect.{key}"),
                &redirect[key].to_string(),
                &format!(
                    "unknown setting (did you mean {closest:?}?); known: {}",
                    REDIRECT_KEYS.join(", ")
                ),
            ));
        }
        let unknown_keys = m
            .keys()
            .filter(|k| !TOP_LEVEL_KEYS.contains(&k.as_str()))
            .cloned()
            .collect();
        Ok(NetConf {
            cni_version,
            name,
            prev_result,
            exclude_namespaces,
            kubeconfig,
            backend,
            api_timeout,
            log_level,
            log_file,
            mode,
            agent_socket,
            redirect,
            unknown_keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NetConf, CniError> {
        NetConf::parse(s.as_bytes())
    }

    #[test]
    fn a_typo_in_redirect_names_the_closest_key_and_unknown_top_level_keys_are_kept() {
        let e = parse(r#"{"cniVersion":"1.0.0","name":"n","redirect":{"excludeOutbondIPRanges":"10.0.0.0/8"}}"#)
            .unwrap_err();
        assert_eq!(e.code, Code::InvalidConfig);
        assert!(
            e.details.contains("\"excludeOutboundIPRanges\""),
            "{}",
            e.details
        );
        let c = parse(r#"{"cniVersion":"1.0.0","name":"n","type":"mesh-redirect","someFutureKey":1,"ipam":{}}"#)
            .unwrap();
        assert_eq!(c.unknown_keys, ["someFutureKey", "ipam"]);
    }

    #[test]
    fn istio_cni_keys_work_unchanged() {
        let c = parse(r#"{"cniVersion":"0.3.1","name":"k8s-pod-network","type":"istio-cni","plugin_log_level":"debug",
            "cni_agent_run_dir":"/var/run/istio-cni","exclude_namespaces":[" kube-system ",""],"native_nftables":true,
            "kubernetes":{"exclude_namespaces":["istio-system"]},"ambient_enabled":false}"#)
        .unwrap();
        assert_eq!(c.exclude_namespaces, vec!["kube-system", "istio-system"]);
        assert_eq!(
            c.kubeconfig,
            PathBuf::from("/var/run/istio-cni/istio-cni-kubeconfig")
        );
        assert_eq!(c.backend, BackendChoice::Nftables);
        assert_eq!(c.log_level, LogLevel::Debug);
        assert_eq!(c.mode, Mode::Kubernetes);
        let c = parse(r#"{"cniVersion":"1.0.0","name":"n","kubernetes":{"kubeconfig":"/etc/k.conf"},"log_level":"warn"}"#).unwrap();
        assert_eq!(c.kubeconfig, PathBuf::from("/etc/k.conf"));
        assert_eq!(c.log_level, LogLevel::Warn);
        assert_eq!(c.backend, BackendChoice::Auto);
    }

    // Long by design: a table, one row per rejected configuration.
    #[test]
    fn each_bad_value_is_error_7_naming_the_key() {
        for (conf, key) in [
            (
                r#"{"cniVersion":"1.0.0","name":"n","backend":"ipvs"}"#,
                "backend",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","backend":"iptables-legacy","native_nftables":true}"#,
                "backend",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","native_nftables":"yes"}"#,
                "native_nftables",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","api_timeout":"soon"}"#,
                "api_timeout",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","api_timeout":"20m"}"#,
                "api_timeout",
            ),
            // A typo inside our own object would silently apply a default.
            (
                r#"{"cniVersion":"1.0.0","name":"n","redirect":{"excludeOutbondIPRanges":"10.0.0.0/8"}}"#,
                "redirect.excludeOutbondIPRanges",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","log_file":"/var/log/a\u0000b"}"#,
                "log_file",
            ),
            // Values `Duration::from_secs_f64` cannot hold: rejected, never a panic.
            (
                r#"{"cniVersion":"1.0.0","name":"n","api_timeout":1e20}"#,
                "api_timeout",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","api_timeout":"99999999999999999910s"}"#,
                "api_timeout",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","api_timeout":-5}"#,
                "api_timeout",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","exclude_namespaces":"kube-system"}"#,
                "exclude_namespaces",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","plugin_log_level":"loud"}"#,
                "plugin_log_level",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","mode":"magic"}"#,
                "mode",
            ),
            (r#"{"cniVersion":"1.0.0","name":"-n"}"#, "name"),
            (
                r#"{"cniVersion":"1.0.0","name":"n","prevResult":[]}"#,
                "prevResult",
            ),
        ] {
            let e = parse(conf).unwrap_err();
            assert_eq!(e.code, Code::InvalidConfig, "{conf}");
            assert!(
                e.msg.contains(key) || e.details.contains(key),
                "{conf}: {e}"
            );
        }
        assert_eq!(parse("{").unwrap_err().code, Code::Decode);
        assert_eq!(
            parse(r#"{"cniVersion":"0.2.0","name":"n"}"#)
                .unwrap_err()
                .code,
            Code::IncompatibleVersion
        );
        assert_eq!(
            parse(r#"{"name":"n"}"#).unwrap_err().code,
            Code::IncompatibleVersion
        );
    }

    #[test]
    fn durations() {
        assert_eq!(
            duration("t", &Value::String("1500ms".into())).unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(
            duration("t", &Value::String("2s".into())).unwrap(),
            Duration::from_secs(2)
        );
        assert_eq!(
            duration("t", &serde_json::json!(3)).unwrap(),
            Duration::from_secs(3)
        );
        assert!(duration("t", &Value::String("1h".into())).is_err());
    }
}
