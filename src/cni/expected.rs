//! What the plugin programs for a pod: Istio's eligibility rules, the annotation mapping and
//! the IPv6 decision, from the pod object and the plugin's configuration. One code path for
//! the CNI ADD/CHECK and the node agent's reconciler, so that a repaired pod gets exactly what
//! an ADD would have given it.

use super::netconf::NetConf;
use super::pod::{self, PodInfo};
use super::protocol::{CniError, Code};
use crate::config::{Config, HostGroups, RawConfig, Setting};
use serde_json::Value;
use std::net::IpAddr;

/// The redirect configuration a pod or container stands for, or why there is none.
#[derive(Debug)]
pub enum Expected {
    /// Program this configuration; `pod` names the pod (`ns/name`) or container in logs.
    Redirect {
        /// The validated configuration.
        cfg: Box<Config>,
        /// `namespace/name`, or `container ID` in static mode.
        pod: String,
    },
    /// No redirect, and why.
    Skip(String),
}

/// Why pods of `namespace` get no redirect, if the configuration excludes it.
pub fn excluded(conf: &NetConf, namespace: &str) -> Option<String> {
    conf.exclude_namespaces
        .iter()
        .any(|n| n == namespace)
        .then(|| format!("namespace {namespace} is excluded"))
}

/// What a Kubernetes pod gets. `ipv6(dual_stack)` decides IPv6 from the pod's addresses
/// (see [`ipv6_from_addresses`]); it is asked only when the configuration does not say.
pub fn for_pod(
    conf: &NetConf,
    object: &Value,
    ipv6: impl FnOnce(bool) -> Option<bool>,
) -> Result<Expected, CniError> {
    let info = PodInfo::from_pod(object);
    if let Some(why) = excluded(conf, &info.namespace) {
        return Ok(Expected::Skip(why));
    }
    if let Some(why) = pod::skip_reason(&info) {
        return Ok(Expected::Skip(why));
    }
    let raw = pod::redirect_settings(&info, &conf.redirect)?;
    let name = format!("{}/{}", info.namespace, info.name);
    finish(conf, raw, pod::dual_stack(&info), name, ipv6)
}

/// Sets IPv6 (the configuration's `ipv6`, else `ipv6(dual_stack)`, else off) and validates.
pub fn finish(
    conf: &NetConf,
    mut raw: RawConfig,
    dual_stack: bool,
    pod: String,
    ipv6: impl FnOnce(bool) -> Option<bool>,
) -> Result<Expected, CniError> {
    let ipv6 = match conf.redirect.get("ipv6") {
        Some(Value::Bool(b)) => Some(*b),
        _ => ipv6(dual_stack),
    };
    raw.enable_ipv6 = Some(Setting::new(
        "pod addresses",
        ipv6.unwrap_or(false).to_string(),
    ));
    let cfg = raw
        .validate(&HostGroups::default())
        .map_err(|e| CniError::new(Code::InvalidConfig, e.to_string(), format!("pod {pod}")))?;
    Ok(Expected::Redirect {
        cfg: Box::new(cfg),
        pod,
    })
}

/// IPv6 as Istio decides it (`getLocalIP`): addresses in order, loopback and link-local
/// skipped; without dual stack the first one decides, with it any IPv6 address counts.
pub fn ipv6_from_addresses(addrs: &[IpAddr], dual_stack: bool) -> Option<bool> {
    let usable: Vec<&IpAddr> = addrs
        .iter()
        .filter(|a| match a {
            IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
            IpAddr::V6(v6) => {
                !v6.is_loopback()
                    && (v6.segments()[0] & 0xffc0) != 0xfe80
                    && v6.to_ipv4_mapped().is_none()
            }
        })
        .collect();
    if dual_stack {
        (!usable.is_empty()).then(|| usable.iter().any(|a| a.is_ipv6()))
    } else {
        usable.first().map(|a| a.is_ipv6())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_detection_follows_istio() {
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            ipv6_from_addresses(&[a("127.0.0.1"), a("10.0.0.5"), a("fd00::5")], false),
            Some(false)
        );
        assert_eq!(
            ipv6_from_addresses(&[a("fe80::1"), a("fd00::5"), a("10.0.0.5")], false),
            Some(true)
        );
        assert_eq!(
            ipv6_from_addresses(&[a("10.0.0.5"), a("fd00::5")], true),
            Some(true)
        );
        assert_eq!(ipv6_from_addresses(&[a("::1")], false), None);
    }
}
