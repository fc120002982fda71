//! From a Pod object to "redirect or not" and the redirect settings, exactly as Istio's CNI
//! plugin decides (`docs/istio-semantics.md` §8.3 steps 10–12, §8.4).
//!
//! Settings keep the annotation (or container field) they came from as their origin, so a
//! bad value is rejected naming it:
//! `invalid value "80,x" for traffic.sidecar.istio.io/includeInboundPorts: …`.

use super::protocol::{CniError, Code};
use crate::config::{RawConfig, Setting};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The name of Istio's sidecar container.
pub const PROXY_CONTAINER: &str = "istio-proxy";
/// The name of Istio's init container (a pod with it programs its own rules).
pub const INIT_CONTAINER: &str = "istio-init";

/// The pod annotations (and label) Istio's CNI plugin reads.
pub mod annotation {
    /// Injection on/off (label or annotation).
    pub const INJECT: &str = "sidecar.istio.io/inject";
    /// Set by the injector on an injected pod.
    pub const STATUS: &str = "sidecar.istio.io/status";
    /// REDIRECT or TPROXY.
    pub const INTERCEPTION_MODE: &str = "sidecar.istio.io/interceptionMode";
    /// Outbound CIDRs to capture.
    pub const INCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
    /// Outbound CIDRs to leave alone.
    pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
    /// Inbound ports to capture.
    pub const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
    /// Inbound ports to leave alone.
    pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
    /// Outbound ports to capture regardless of address.
    pub const INCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeOutboundPorts";
    /// Outbound ports to leave alone.
    pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
    /// Interfaces whose traffic is not captured.
    pub const EXCLUDE_INTERFACES: &str = "traffic.sidecar.istio.io/excludeInterfaces";
    /// The old name of [`REROUTE_VIRTUAL_INTERFACES`].
    pub const KUBEVIRT_INTERFACES: &str = "traffic.sidecar.istio.io/kubevirtInterfaces";
    /// Interfaces whose inbound traffic is sent to the proxy as outbound.
    pub const REROUTE_VIRTUAL_INTERFACES: &str = "istio.io/reroute-virtual-interfaces";
}

/// What the plugin reads of a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodInfo {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// Names of `spec.containers`.
    pub containers: Vec<String>,
    /// Names of `spec.initContainers`.
    pub init_containers: Vec<String>,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// The istio-proxy container's env (`valueFrom` entries read as `""`, like Istio).
    pub proxy_env: BTreeMap<String, String>,
    /// `args[1]` when `args[0] == "proxy"` (`sidecar`, `router`).
    pub proxy_type: Option<String>,
    /// istio-proxy's `securityContext.runAsUser`.
    pub run_as_user: Option<i64>,
    /// istio-proxy's `securityContext.runAsGroup`.
    pub run_as_group: Option<i64>,
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

impl PodInfo {
    /// Reads a Pod object (`GET /api/v1/namespaces/NS/pods/NAME`).
    pub fn from_pod(pod: &Value) -> PodInfo {
        let meta = &pod["metadata"];
        let spec = &pod["spec"];
        let names = |key: &str| -> Vec<String> {
            spec[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|c| c["name"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut info = PodInfo {
            name: meta["name"].as_str().unwrap_or_default().to_string(),
            namespace: meta["namespace"].as_str().unwrap_or_default().to_string(),
            containers: names("containers"),
            init_containers: names("initContainers"),
            labels: string_map(meta.get("labels")),
            annotations: string_map(meta.get("annotations")),
            ..Default::default()
        };
        let proxy = spec["containers"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == PROXY_CONTAINER));
        if let Some(c) = proxy {
            for e in c["env"].as_array().into_iter().flatten() {
                if let Some(n) = e["name"].as_str() {
                    info.proxy_env.insert(
                        n.to_string(),
                        e["value"].as_str().unwrap_or_default().to_string(),
                    );
                }
            }
            let args: Vec<&str> = c["args"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if args.len() >= 2 && args[0] == "proxy" {
                info.proxy_type = Some(args[1].to_string());
            }
            info.run_as_user = c["securityContext"]["runAsUser"].as_i64();
            info.run_as_group = c["securityContext"]["runAsGroup"].as_i64();
        }
        info
    }
}

/// Go's `strconv.ParseBool`.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Why a pod gets no redirect (it is passed through untouched), in Istio's check order.
pub fn skip_reason(pod: &PodInfo) -> Option<String> {
    if pod
        .init_containers
        .iter()
        .chain(&pod.containers)
        .any(|c| c == INIT_CONTAINER)
    {
        return Some("the pod has an istio-init container, which programs the rules itself".into());
    }
    if pod
        .proxy_env
        .get("DISABLE_ENVOY")
        .and_then(|v| parse_bool(v))
        == Some(true)
    {
        return Some("DISABLE_ENVOY is set on istio-proxy".into());
    }
    if !pod.containers.iter().any(|c| c == PROXY_CONTAINER) {
        return Some("the pod has no istio-proxy container".into());
    }
    if pod.containers.len() < 2 {
        return Some("the pod has no container besides istio-proxy".into());
    }
    if let Some(t) = pod
        .proxy_type
        .as_deref()
        .filter(|t| !t.is_empty() && *t != "sidecar")
    {
        return Some(format!("the proxy is a {t}, not a sidecar"));
    }
    let inject = pod
        .labels
        .get(annotation::INJECT)
        .or_else(|| pod.annotations.get(annotation::INJECT));
    if inject.and_then(|v| parse_bool(v)) == Some(false) {
        return Some(format!("{} is false", annotation::INJECT));
    }
    if !pod.annotations.contains_key(annotation::STATUS) {
        return Some(format!(
            "the pod has no {} annotation (not injected)",
            annotation::STATUS
        ));
    }
    None
}

fn invalid(key: &str, value: &str, why: &str) -> CniError {
    CniError::new(
        Code::InvalidConfig,
        format!("invalid value {value:?} for {key}"),
        why.to_string(),
    )
}

/// A port list as the annotation validation reads it: trimmed as a whole, each element
/// trimmed, no empty element; `*` allowed where `star` says so.
fn ports(key: &str, value: &str, star: bool) -> Result<String, CniError> {
    let v = value.trim();
    if v.is_empty() || (star && v == "*") {
        return Ok(v.to_string());
    }
    let mut out = Vec::new();
    for p in v.split(',') {
        let p = p.trim();
        if p.is_empty() {
            return Err(invalid(key, value, "empty port in the list"));
        }
        if p.parse::<u16>().is_err() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(key, value, &format!("{p:?} is not a port")));
        }
        out.push(p);
    }
    Ok(out.join(","))
}

fn interfaces(key: &str, value: &str) -> Result<String, CniError> {
    if value.is_empty() {
        return Ok(String::new());
    }
    let mut out = Vec::new();
    for i in value.split(',') {
        let i = i.trim();
        let ok = !i.is_empty()
            && i.len() <= 15
            && i.starts_with(|c: char| c.is_ascii_alphabetic())
            && i.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !ok {
            return Err(invalid(
                key,
                value,
                &format!("{i:?} is not an interface name"),
            ));
        }
        out.push(i);
    }
    Ok(out.join(","))
}

fn cidrs(key: &str, value: &str, star: bool) -> Result<String, CniError> {
    if value.is_empty() || (star && value == "*") {
        return Ok(value.to_string());
    }
    if value.split(',').any(|c| c.is_empty()) {
        return Err(invalid(key, value, "empty range in the list"));
    }
    if !star && value.split(',').any(|c| c == "*") {
        return Err(invalid(key, value, "'*' cannot be excluded"));
    }
    Ok(value.to_string())
}

/// Settings from the plugin configuration's `redirect` object (their origin names the key).
fn default_of(defaults: &Map<String, Value>, key: &str) -> Option<(String, String)> {
    defaults.get(key).map(|v| {
        let s = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        (format!("redirect.{key}"), s)
    })
}

/// The excluded inbound ports Istio's plugin derives: the annotation (or 15020), then
/// 15020, 15021 and 15090, first occurrence kept.
fn exclude_inbound(value: &str) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for p in value
        .split(',')
        .chain(["15020", "15021", "15090"])
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        if !seen.contains(&p) {
            seen.push(p);
        }
    }
    seen.join(",")
}

/// Where a pod's settings come from: its annotations, container and env, then the plugin
/// configuration's `redirect` defaults.
struct Sources<'a> {
    pod: &'a PodInfo,
    defaults: &'a Map<String, Value>,
}

impl Sources<'_> {
    /// The annotation `ann`, else the plugin default `key`, else Istio's default `istio`:
    /// (origin, value).
    fn pick(&self, ann: &str, key: &str, istio: &str) -> (String, String) {
        if let Some(v) = self.pod.annotations.get(ann) {
            (ann.to_string(), v.clone())
        } else if let Some(d) = default_of(self.defaults, key) {
            d
        } else {
            (ann.to_string(), istio.to_string())
        }
    }

    /// [`Sources::pick`], with the value checked and normalised by `check(origin, value)`.
    fn checked(
        &self,
        ann: &str,
        key: &str,
        istio: &str,
        check: impl FnOnce(&str, &str) -> Result<String, CniError>,
    ) -> Result<Setting, CniError> {
        let (o, v) = self.pick(ann, key, istio);
        let v = check(&o, &v)?;
        Ok(Setting::new(&o, v))
    }

    /// The proxy's uid or gid: the container's securityContext when set and not root.
    fn proxy_id(&self, v: Option<i64>, what: &str, key: &str) -> Setting {
        let (o, v) = match v {
            Some(id) if id != 0 => (
                format!("{PROXY_CONTAINER} securityContext.{what}"),
                id.to_string(),
            ),
            _ => default_of(self.defaults, key)
                .unwrap_or_else(|| ("CNI plugin".into(), "1337".into())),
        };
        Setting::new(o, v)
    }

    /// An istio-proxy env flag: an unparsable value is false (Istio warns and goes on).
    fn env_flag(&self, name: &str, key: &str) -> Setting {
        match self.pod.proxy_env.get(name) {
            Some(v) => {
                let b = parse_bool(v).unwrap_or_else(|| {
                    tracing::warn!(variable = name, value = %v, "not a boolean; taken as false, as Istio does");
                    false
                });
                Setting::new(format!("{PROXY_CONTAINER} env {name}"), b.to_string())
            }
            None => default_of(self.defaults, key)
                .map(|(o, v)| Setting::new(o, v))
                .unwrap_or_else(|| Setting::new("CNI plugin", "false")),
        }
    }
}

/// Checks and normalises a setting's value: `(origin, value)` to the value kept.
type Check = fn(&str, &str) -> Result<String, CniError>;

/// Where a setting goes in [`RawConfig`].
type Field = fn(&mut RawConfig) -> &mut Option<Setting>;

fn interception_mode(o: &str, v: &str) -> Result<String, CniError> {
    match v {
        "REDIRECT" | "TPROXY" => Ok(v.to_string()),
        _ => Err(invalid(o, v, "expected REDIRECT or TPROXY")),
    }
}

/// The settings that come from one annotation each: the field, the annotation, the plugin
/// default's key, Istio's default and the check, in Istio's order.
const ANNOTATED: [(Field, &str, &str, &str, Check); 8] = {
    use annotation as a;
    [
        (
            |r| &mut r.inbound_interception_mode,
            a::INTERCEPTION_MODE,
            "interceptionMode",
            "REDIRECT",
            interception_mode,
        ),
        (
            |r| &mut r.outbound_ip_ranges_include,
            a::INCLUDE_OUTBOUND_IP_RANGES,
            "includeOutboundIPRanges",
            "*",
            |o, v| cidrs(o, v, true),
        ),
        (
            |r| &mut r.outbound_ip_ranges_exclude,
            a::EXCLUDE_OUTBOUND_IP_RANGES,
            "excludeOutboundIPRanges",
            "",
            |o, v| cidrs(o, v, false),
        ),
        (
            |r| &mut r.inbound_ports_exclude,
            a::EXCLUDE_INBOUND_PORTS,
            "excludeInboundPorts",
            "15020",
            |o, v| Ok(exclude_inbound(&ports(o, v, false)?)),
        ),
        (
            |r| &mut r.inbound_ports_include,
            a::INCLUDE_INBOUND_PORTS,
            "includeInboundPorts",
            "*",
            |o, v| ports(o, v, true),
        ),
        (
            |r| &mut r.outbound_ports_exclude,
            a::EXCLUDE_OUTBOUND_PORTS,
            "excludeOutboundPorts",
            "15020",
            |o, v| ports(o, v, false),
        ),
        (
            |r| &mut r.outbound_ports_include,
            a::INCLUDE_OUTBOUND_PORTS,
            "includeOutboundPorts",
            "",
            |o, v| ports(o, v, false),
        ),
        (
            |r| &mut r.exclude_interfaces,
            a::EXCLUDE_INTERFACES,
            "excludeInterfaces",
            "",
            interfaces,
        ),
    ]
};

/// The annotation-driven settings: interception mode, address ranges, ports, interfaces.
fn traffic_settings(src: &Sources<'_>, raw: &mut RawConfig) -> Result<(), CniError> {
    use annotation as a;
    for (field, ann, key, istio, check) in ANNOTATED {
        *field(raw) = Some(src.checked(ann, key, istio, check)?);
    }
    let (o, v) = if let Some(v) = src.pod.annotations.get(a::REROUTE_VIRTUAL_INTERFACES) {
        (a::REROUTE_VIRTUAL_INTERFACES.to_string(), v.clone())
    } else {
        src.pick(a::KUBEVIRT_INTERFACES, "rerouteVirtualInterfaces", "")
    };
    raw.reroute_virtual_interfaces = Some(Setting::new(&o, interfaces(&o, &v)?));
    Ok(())
}

/// The redirect settings for a pod: annotations over plugin defaults over Istio's defaults.
pub fn redirect_settings(
    pod: &PodInfo,
    defaults: &Map<String, Value>,
) -> Result<RawConfig, CniError> {
    let src = Sources { pod, defaults };
    let mut raw = RawConfig {
        proxy_port: Some(Setting::new("CNI plugin", "15001")),
        ..Default::default()
    };
    traffic_settings(&src, &mut raw)?;
    raw.proxy_uid = Some(src.proxy_id(pod.run_as_user, "runAsUser", "proxyUID"));
    raw.proxy_gid = Some(src.proxy_id(pod.run_as_group, "runAsGroup", "proxyGID"));
    let dns = src.env_flag("ISTIO_META_DNS_CAPTURE", "dnsCapture");
    // The plugin cannot read the pod's resolv.conf: DNS capture is always "all port 53".
    raw.capture_all_dns = Some(dns.clone());
    raw.redirect_dns = Some(dns);
    raw.drop_invalid = Some(src.env_flag("INVALID_DROP", "invalidDrop"));
    Ok(raw)
}

/// Whether Istio's dual-stack mode is on for the pod (changes IPv6 detection).
pub fn dual_stack(pod: &PodInfo) -> bool {
    pod.proxy_env
        .get("ISTIO_DUAL_STACK")
        .and_then(|v| parse_bool(v))
        .unwrap_or(false)
}

/// Static mode: the plugin configuration's `redirect` object is the whole setting, on top
/// of Istio's CNI defaults (no pod, no annotations).
pub fn static_settings(defaults: &Map<String, Value>) -> Result<RawConfig, CniError> {
    redirect_settings(&PodInfo::default(), defaults)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(annotations: Value, env: Value, extra_containers: &[&str]) -> PodInfo {
        let mut containers = vec![
            json!({"name":"test"}),
            json!({"name":"istio-proxy","env":env,"args":["proxy","sidecar"]}),
        ];
        containers.extend(extra_containers.iter().map(|c| json!({"name": c})));
        PodInfo::from_pod(
            &json!({"metadata":{"name":"p","namespace":"ns","annotations":annotations},"spec":{"containers":containers}}),
        )
    }

    #[test]
    fn exclude_inbound_ports_follow_istio() {
        assert_eq!(exclude_inbound("15020"), "15020,15021,15090");
        assert_eq!(exclude_inbound("22"), "22,15020,15021,15090");
        assert_eq!(exclude_inbound("15090,22,"), "15090,22,15020,15021");
    }

    #[test]
    fn skips() {
        let ok = pod(json!({"sidecar.istio.io/status":"{}"}), json!([]), &[]);
        assert_eq!(skip_reason(&ok), None);
        let no_status = pod(json!({}), json!([]), &[]);
        assert!(skip_reason(&no_status).unwrap().contains("status"));
        let off = pod(
            json!({"sidecar.istio.io/status":"{}","sidecar.istio.io/inject":"false"}),
            json!([]),
            &[],
        );
        assert!(skip_reason(&off).unwrap().contains("inject"));
        let not_bool = pod(
            json!({"sidecar.istio.io/status":"{}","sidecar.istio.io/inject":"enabled"}),
            json!([]),
            &[],
        );
        assert_eq!(
            skip_reason(&not_bool),
            None,
            "a non-boolean inject value does not skip"
        );
        let disabled = pod(
            json!({"sidecar.istio.io/status":"{}"}),
            json!([{"name":"DISABLE_ENVOY","value":"true"}]),
            &[],
        );
        assert!(skip_reason(&disabled).unwrap().contains("DISABLE_ENVOY"));
        let init = pod(
            json!({"sidecar.istio.io/status":"{}"}),
            json!([]),
            &["istio-init"],
        );
        assert!(skip_reason(&init).unwrap().contains("istio-init"));
        let alone = PodInfo::from_pod(
            &json!({"metadata":{"annotations":{"sidecar.istio.io/status":"{}"}},"spec":{"containers":[{"name":"istio-proxy"}]}}),
        );
        assert!(skip_reason(&alone).unwrap().contains("besides"));
        let gateway = PodInfo::from_pod(
            &json!({"metadata":{"annotations":{"sidecar.istio.io/status":"{}"}},
            "spec":{"containers":[{"name":"a"},{"name":"istio-proxy","args":["proxy","router"]}]}}),
        );
        assert!(skip_reason(&gateway).unwrap().contains("router"));
    }

    #[test]
    fn bad_annotations_name_the_annotation() {
        for (k, v) in [
            (annotation::INTERCEPTION_MODE, "NONE"),
            (annotation::INCLUDE_INBOUND_PORTS, "80,,90"),
            (annotation::EXCLUDE_INBOUND_PORTS, "http"),
            (annotation::EXCLUDE_OUTBOUND_IP_RANGES, "*"),
            (annotation::INCLUDE_OUTBOUND_IP_RANGES, "10.0.0.0/8,"),
            (annotation::EXCLUDE_INTERFACES, "0eth"),
            (annotation::REROUTE_VIRTUAL_INTERFACES, " "),
        ] {
            let p = pod(
                json!({ k: v, "sidecar.istio.io/status": "{}" }),
                json!([]),
                &[],
            );
            let e = redirect_settings(&p, &Map::new()).unwrap_err();
            assert!(e.msg.contains(k), "{k}: {e}");
            assert_eq!(e.code, Code::InvalidConfig);
        }
    }
}
