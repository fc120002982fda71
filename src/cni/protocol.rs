//! The CNI protocol surface (CNI spec 1.1 and the versions before it that we implement):
//! the environment, version negotiation, error and result documents.
//!
//! ```text
//! CNI_COMMAND=ADD CNI_CONTAINERID=… CNI_NETNS=/run/netns/… CNI_IFNAME=eth0 CNI_PATH=…
//! stdin:  {"cniVersion":"1.0.0","name":"k8s-pod-network","type":"mesh-redirect",
//!          "prevResult":{…}, …plugin keys…}
//! stdout: the prevResult, unchanged, under the request's cniVersion
//!         or {"cniVersion":"1.0.0","code":11,"msg":"…","details":"…"} and a non-zero exit
//! ```

use serde_json::{json, Value};
use std::fmt;

/// The versions we implement, oldest first. 0.1.0/0.2.0 are left out on purpose: their
/// result format cannot carry a modern prevResult.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest version we implement, used when the caller's is unknown.
pub const LATEST: &str = "1.1.0";

/// Error codes: the spec's well-known ones, and ours from 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The configuration's `cniVersion` is not one we implement.
    IncompatibleVersion = 1,
    /// A configuration field we do not support.
    UnsupportedField = 2,
    /// The container is unknown.
    UnknownContainer = 3,
    /// A `CNI_*` variable is missing or invalid.
    InvalidEnvironment = 4,
    /// Reading or writing failed.
    Io = 5,
    /// stdin is not valid JSON.
    Decode = 6,
    /// A configuration value is invalid.
    InvalidConfig = 7,
    /// A transient failure: the runtime may retry.
    TryAgainLater = 11,
    /// The plugin cannot serve requests now (STATUS).
    PluginNotAvailable = 50,
    /// The kernel refused the rules; nothing was changed.
    RulesRefused = 100,
    /// The Kubernetes API refused our credentials.
    ApiUnauthorized = 101,
    /// The Kubernetes API answered something that is not a Pod.
    ApiInvalidResponse = 102,
    /// CHECK: the namespace does not hold the expected rules.
    Drift = 103,
    /// Not permitted to read or change the namespace's state (a missing capability).
    PermissionDenied = 104,
    /// The kernel's state could not be read (a failed socket or dump).
    KernelIo = 105,
    /// The plugin failed unexpectedly (a bug: it panicked); the answer still reaches the runtime.
    Internal = 106,
}

/// An error as the spec's JSON document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// The error code.
    pub code: Code,
    /// A short message.
    pub msg: String,
    /// Details: the value at fault, the underlying error.
    pub details: String,
}

impl CniError {
    /// An error with its code, message and details.
    pub fn new(code: Code, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error document, under `version`.
    pub fn to_json(&self, version: &str) -> Value {
        json!({ "cniVersion": version, "code": self.code as u32, "msg": self.msg, "details": self.details })
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CNI error {}: {}", self.code as u32, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

/// The operation requested by `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Program the redirect for a new container.
    Add,
    /// The container is going away.
    Del,
    /// Verify that the rules are still in place.
    Check,
    /// Report the versions we implement.
    Version,
    /// Garbage-collect attachments (no state is kept, so nothing to collect).
    Gc,
    /// Whether the plugin can serve ADD requests.
    Status,
}

impl Command {
    fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            _ => return None,
        })
    }
}

/// The `CNI_*` environment of one invocation, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`, when set and not empty.
    pub netns: Option<String>,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`, unparsed.
    pub args: String,
    /// `CNI_PATH`.
    pub path: String,
}

/// libcni's container-id and network-name rule.
pub fn valid_id(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// The value of `var` (empty if unset), refused when the command needs it and it is not
/// `valid`.
fn checked(
    var: &str,
    get: impl Fn(&str) -> String,
    needs: impl Fn(&str) -> bool,
    valid: fn(&str) -> bool,
) -> Result<String, CniError> {
    let value = get(var);
    if needs(var) && !valid(&value) {
        return Err(CniError::new(
            Code::InvalidEnvironment,
            format!("invalid {var}"),
            format!("{var}={value:?}"),
        ));
    }
    Ok(value)
}

impl Environment {
    /// Reads and checks the environment through `env` (a variable lookup).
    pub fn from(env: &dyn Fn(&str) -> Option<String>) -> Result<Environment, CniError> {
        let get = |k: &str| env(k).unwrap_or_default();
        let raw = get("CNI_COMMAND");
        let command = Command::parse(&raw).ok_or_else(|| {
            CniError::new(
                Code::InvalidEnvironment,
                "invalid CNI_COMMAND",
                format!("CNI_COMMAND={raw:?}: expected ADD, DEL, CHECK, VERSION, GC or STATUS"),
            )
        })?;
        let needs = |var: &str| -> bool {
            match var {
                "CNI_CONTAINERID" | "CNI_IFNAME" => {
                    matches!(command, Command::Add | Command::Del | Command::Check)
                }
                "CNI_NETNS" => matches!(command, Command::Add | Command::Check),
                "CNI_PATH" => !matches!(command, Command::Version),
                _ => false,
            }
        };
        let missing: Vec<&str> = ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"]
            .into_iter()
            .filter(|v| needs(v) && env(v).map(|x| x.is_empty()).unwrap_or(true))
            .collect();
        if !missing.is_empty() {
            return Err(CniError::new(
                Code::InvalidEnvironment,
                "required environment variables missing",
                missing.join(", "),
            ));
        }
        let container_id = checked("CNI_CONTAINERID", get, needs, valid_id)?;
        let ifname = checked("CNI_IFNAME", get, needs, valid_ifname)?;
        Ok(Environment {
            command,
            container_id,
            netns: env("CNI_NETNS").filter(|n| !n.is_empty()),
            ifname,
            args: get("CNI_ARGS"),
            path: get("CNI_PATH"),
        })
    }
}

/// `CNI_ARGS`: `K=V;K=V`. Unknown keys are an error unless `IgnoreUnknown=1|true`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct K8sArgs {
    /// `K8S_POD_NAME`.
    pub pod_name: String,
    /// `K8S_POD_NAMESPACE`.
    pub pod_namespace: String,
    /// `K8S_POD_UID` (empty when the runtime does not pass it): the agent's cache answers
    /// only for this UID.
    pub pod_uid: String,
}

/// Parses `CNI_ARGS`.
pub fn parse_args(args: &str) -> Result<K8sArgs, CniError> {
    let bad = |d: String| CniError::new(Code::InvalidEnvironment, "invalid CNI_ARGS", d);
    let mut out = K8sArgs::default();
    let mut unknown = Vec::new();
    let mut ignore_unknown = false;
    for pair in args.split(';').filter(|p| !p.is_empty()) {
        let mut kv = pair.split('=');
        let (Some(k), Some(v), None) = (kv.next(), kv.next(), kv.next()) else {
            return Err(bad(format!("{pair:?} is not KEY=VALUE")));
        };
        match k {
            "K8S_POD_NAME" => out.pod_name = v.to_string(),
            "K8S_POD_NAMESPACE" => out.pod_namespace = v.to_string(),
            "K8S_POD_UID" => out.pod_uid = v.to_string(),
            "K8S_POD_INFRA_CONTAINER_ID" => {}
            "IgnoreUnknown" => {
                ignore_unknown = match v.to_ascii_lowercase().as_str() {
                    "1" | "true" => true,
                    "0" | "false" => false,
                    _ => {
                        return Err(bad(format!(
                            "IgnoreUnknown={v:?}: expected 1, true, 0 or false"
                        )))
                    }
                }
            }
            _ => unknown.push(k.to_string()),
        }
    }
    if !unknown.is_empty() && !ignore_unknown {
        return Err(bad(format!(
            "unknown keys {} (set IgnoreUnknown=1)",
            unknown.join(", ")
        )));
    }
    Ok(out)
}

/// The VERSION answer: what we implement, under the version the caller asked with.
pub fn version_result(requested: Option<&str>) -> Value {
    let v = requested
        .filter(|r| SUPPORTED_VERSIONS.contains(r))
        .unwrap_or(LATEST);
    json!({ "cniVersion": v, "supportedVersions": SUPPORTED_VERSIONS })
}

/// Whether a config version is at least `min` (versions are `X.Y.Z`).
pub fn at_least(version: &str, min: &str) -> bool {
    let parse = |s: &str| {
        s.split('.')
            .map(|p| p.parse::<u32>().unwrap_or(0))
            .collect::<Vec<_>>()
    };
    parse(version) >= parse(min)
}

/// ADD's output: the previous result untouched (every field, 1.1-only ones included) under
/// the request's `cniVersion`; an empty result when there was none.
pub fn pass_through(prev_result: Option<&Value>, version: &str) -> Value {
    match prev_result {
        Some(Value::Object(m)) => {
            let mut m = m.clone();
            m.insert("cniVersion".into(), Value::String(version.to_string()));
            Value::Object(m)
        }
        _ => json!({ "cniVersion": version, "dns": {} }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn environment_rules_per_command() {
        let full = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "ABCdef-1"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ];
        assert!(
            Environment::from(&env(&full)).is_ok(),
            "upper-case container ids are valid"
        );
        let e = Environment::from(&env(&full[..4])).unwrap_err();
        assert_eq!(
            (e.code, e.details.as_str()),
            (Code::InvalidEnvironment, "CNI_PATH")
        );
        let del = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "a"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/p"),
        ];
        assert!(Environment::from(&env(&del)).is_ok(), "DEL needs no netns");
        assert!(Environment::from(&env(&[("CNI_COMMAND", "VERSION")])).is_ok());
        assert_eq!(
            Environment::from(&env(&[("CNI_COMMAND", "UP")]))
                .unwrap_err()
                .code,
            Code::InvalidEnvironment
        );
        let mut bad = full;
        bad[1] = ("CNI_CONTAINERID", "-x");
        assert!(Environment::from(&env(&bad)).is_err());
        bad = full;
        bad[3] = ("CNI_IFNAME", "eth0:1");
        assert!(Environment::from(&env(&bad)).is_err());
    }

    #[test]
    fn cni_args() {
        let a = parse_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;FOO=bar").unwrap();
        assert_eq!((a.pod_namespace.as_str(), a.pod_name.as_str()), ("ns", "p"));
        assert!(parse_args("K8S_POD_NAME=p;FOO=bar").is_err());
        assert!(parse_args("K8S_POD_NAME").is_err());
        assert!(parse_args("IgnoreUnknown=maybe").is_err());
        assert_eq!(parse_args("").unwrap(), K8sArgs::default());
    }

    #[test]
    fn versions() {
        assert_eq!(version_result(Some("0.4.0"))["cniVersion"], "0.4.0");
        assert_eq!(version_result(Some("9.9.9"))["cniVersion"], LATEST);
        assert!(
            at_least("1.1.0", "1.1.0") && at_least("1.0.0", "0.4.0") && !at_least("0.3.1", "0.4.0")
        );
    }

    #[test]
    fn pass_through_keeps_every_field() {
        let prev = json!({"cniVersion":"1.1.0","interfaces":[{"name":"eth0","mtu":1400,"socketPath":"/s","pciID":"0000:00:01.0"}],
            "routes":[{"dst":"0.0.0.0/0","mtu":1400,"table":100,"scope":0,"priority":5}]});
        let out = pass_through(Some(&prev), "1.1.0");
        assert_eq!(out, prev);
        assert_eq!(pass_through(Some(&prev), "1.0.0")["cniVersion"], "1.0.0");
        assert_eq!(pass_through(None, "0.4.0")["cniVersion"], "0.4.0");
    }
}
