//! The unvalidated configuration: strings as the user gave them, each remembering where it
//! came from (flag, environment variable, configuration key) so that a rejection names it.

use super::parse::{self, split, Cidr, IfName};
use super::{
    Config, ConfigError, DnsCapture, Group, GroupDatabase, InboundPorts, InterceptionMode,
    OutboundRanges, OwnerGroups,
};
use std::net::IpAddr;

/// One raw value and the name of the place it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub value: String,
    pub origin: String,
}

impl Setting {
    pub fn new(origin: impl Into<String>, value: impl Into<String>) -> Setting {
        Setting {
            value: value.into(),
            origin: origin.into(),
        }
    }
}

/// Istio's knobs (`config.Config`), unparsed. `None` means "not given": the default applies.
/// Field names follow Istio's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawConfig {
    pub proxy_port: Option<Setting>,
    pub inbound_capture_port: Option<Setting>,
    pub inbound_tunnel_port: Option<Setting>,
    pub proxy_uid: Option<Setting>,
    pub proxy_gid: Option<Setting>,
    pub inbound_interception_mode: Option<Setting>,
    pub inbound_tproxy_mark: Option<Setting>,
    pub inbound_tproxy_route_table: Option<Setting>,
    pub inbound_ports_include: Option<Setting>,
    pub inbound_ports_exclude: Option<Setting>,
    pub outbound_ports_include: Option<Setting>,
    pub outbound_ports_exclude: Option<Setting>,
    pub outbound_ip_ranges_include: Option<Setting>,
    pub outbound_ip_ranges_exclude: Option<Setting>,
    pub reroute_virtual_interfaces: Option<Setting>,
    pub exclude_interfaces: Option<Setting>,
    pub redirect_dns: Option<Setting>,
    pub capture_all_dns: Option<Setting>,
    pub drop_invalid: Option<Setting>,
    pub enable_ipv6: Option<Setting>,
    pub dns_servers_v4: Option<Setting>,
    pub dns_servers_v6: Option<Setting>,
    pub owner_groups_include: Option<Setting>,
    pub owner_groups_exclude: Option<Setting>,
    pub host_ipv4_loopback_cidr: Option<Setting>,
}

/// Istio's limit on an owner-group include list (`validation.go`).
pub const MAX_OWNER_GROUPS: usize = 64;

/// Defaults when a knob is not given: Istio's CNI-plugin sidecar defaults (spec §8.1).
mod default {
    pub const PROXY_PORT: &str = "15001";
    pub const INBOUND_CAPTURE_PORT: &str = "15006";
    pub const INBOUND_TUNNEL_PORT: &str = "15008";
    pub const PROXY_UID: &str = "1337";
    pub const TPROXY_MARK: &str = "1337";
    pub const TPROXY_ROUTE_TABLE: &str = "133";
    pub const INBOUND_PORTS: &str = "*";
    pub const INBOUND_PORTS_EXCLUDE: &str = "15020,15021,15090";
    pub const OUTBOUND_PORTS_EXCLUDE: &str = "15020";
    pub const OUTBOUND_RANGES: &str = "*";
    pub const OWNER_GROUPS_INCLUDE: &str = "*";
    pub const HOST_IPV4_LOOPBACK_CIDR: &str = "127.0.0.1/32";
}

fn get<'a>(s: &'a Option<Setting>, origin: &'a str, default: &'a str) -> (&'a str, &'a str) {
    match s {
        Some(s) => (s.origin.as_str(), s.value.as_str()),
        None => (origin, default),
    }
}

impl RawConfig {
    /// Parses and checks every value. Nothing here touches the kernel or the network; the
    /// group database is only consulted for owner-group names.
    pub fn validate(&self, groups: &dyn GroupDatabase) -> Result<Config, ConfigError> {
        let (f, v) = get(&self.proxy_port, "--envoy-port", default::PROXY_PORT);
        let proxy_port = parse::port(f, v)?;
        let (f, v) = get(
            &self.inbound_capture_port,
            "--inbound-capture-port",
            default::INBOUND_CAPTURE_PORT,
        );
        let inbound_capture_port = parse::port(f, v)?;
        let (f, v) = get(
            &self.inbound_tunnel_port,
            "--inbound-tunnel-port",
            default::INBOUND_TUNNEL_PORT,
        );
        let inbound_tunnel_port = parse::port(f, v)?;

        let (f, v) = get(&self.proxy_uid, "--proxy-uid", default::PROXY_UID);
        // Istio: an empty uid means "look up istio-proxy, else 1337"; we take the 1337.
        let v = if v.is_empty() { default::PROXY_UID } else { v };
        let proxy_uids = parse::id_list(f, v, "uid")?;
        if proxy_uids.is_empty() {
            return Err(ConfigError::invalid(
                f,
                v,
                "no uid listed: the proxy's own traffic would loop back into it",
            ));
        }
        let proxy_gids = match &self.proxy_gid {
            Some(s) if !s.value.is_empty() => {
                let gids = parse::id_list(&s.origin, &s.value, "gid")?;
                if gids.is_empty() {
                    return Err(ConfigError::invalid(&s.origin, &s.value, "no gid listed"));
                }
                gids
            }
            _ => proxy_uids.clone(),
        };

        let (f, v) = get(
            &self.inbound_interception_mode,
            "--istio-inbound-interception-mode",
            "",
        );
        let interception = match v {
            "" | "REDIRECT" => InterceptionMode::Redirect,
            "TPROXY" => InterceptionMode::Tproxy,
            _ => return Err(ConfigError::invalid(f, v, "expected REDIRECT or TPROXY")),
        };
        let (f, v) = get(
            &self.inbound_tproxy_mark,
            "--istio-inbound-tproxy-mark",
            default::TPROXY_MARK,
        );
        let tproxy_mark = parse::number_u32(f, v, "mark")?;
        if tproxy_mark == 0 {
            return Err(ConfigError::invalid(f, v, "the TPROXY mark must not be 0"));
        }
        let (f, v) = get(
            &self.inbound_tproxy_route_table,
            "--istio-inbound-tproxy-route-table",
            default::TPROXY_ROUTE_TABLE,
        );
        let tproxy_route_table = parse::number_u32(f, v, "routing table")?;
        if tproxy_route_table == 0 || (252..=255).contains(&tproxy_route_table) {
            return Err(ConfigError::invalid(
                f,
                v,
                "routing tables 0 and 252-255 are reserved",
            ));
        }

        let (ef, ev) = get(
            &self.inbound_ports_exclude,
            "--istio-local-exclude-ports",
            default::INBOUND_PORTS_EXCLUDE,
        );
        let inbound_exclude = parse::port_list(ef, ev)?;
        let (f, v) = get(
            &self.inbound_ports_include,
            "--istio-inbound-ports",
            default::INBOUND_PORTS,
        );
        let inbound_ports = if v == "*" {
            InboundPorts::All {
                exclude: inbound_exclude,
            }
        } else if split(v).is_empty() {
            InboundPorts::None
        } else {
            InboundPorts::Only(parse::port_list(f, v)?)
        };

        let (f, v) = get(&self.outbound_ports_include, "--istio-outbound-ports", "");
        let outbound_ports_include = parse::port_list(f, v)?;
        let (f, v) = get(
            &self.outbound_ports_exclude,
            "--istio-local-outbound-ports-exclude",
            default::OUTBOUND_PORTS_EXCLUDE,
        );
        let outbound_ports_exclude = parse::port_list(f, v)?;

        let (f, v) = get(
            &self.outbound_ip_ranges_include,
            "--istio-service-cidr",
            default::OUTBOUND_RANGES,
        );
        let outbound_ranges_include = if v == "*" {
            OutboundRanges::All
        } else {
            let (v4, v6) = cidr_list(f, v)?;
            OutboundRanges::Only { v4, v6 }
        };
        let (f, v) = get(
            &self.outbound_ip_ranges_exclude,
            "--istio-service-exclude-cidr",
            "",
        );
        if v == "*" {
            return Err(ConfigError::invalid(
                f,
                v,
                "'*' cannot be excluded (it would disable capture); list CIDRs",
            ));
        }
        let (outbound_ranges_exclude_v4, outbound_ranges_exclude_v6) = cidr_list(f, v)?;

        let (f, v) = get(
            &self.reroute_virtual_interfaces,
            "--kube-virt-interfaces",
            "",
        );
        let reroute_interfaces = iface_list(f, v)?;
        let (f, v) = get(&self.exclude_interfaces, "--istio-exclude-interfaces", "");
        let exclude_interfaces = iface_list(f, v)?;

        let redirect_dns = flag(&self.redirect_dns)?;
        let capture_all_dns = flag(&self.capture_all_dns)?;
        let drop_invalid = flag(&self.drop_invalid)?;
        let enable_ipv6 = flag(&self.enable_ipv6)?;
        let (f, v) = get(&self.dns_servers_v4, "--dns-servers-v4", "");
        let dns_v4 = split(v)
            .into_iter()
            .map(|s| match s.parse::<IpAddr>() {
                Ok(a @ IpAddr::V4(_)) => Ok(Cidr::host_as_written(a, s)),
                Ok(IpAddr::V6(_)) => Err(ConfigError::invalid(
                    f,
                    v,
                    format!("{s} is an IPv6 address; use --dns-servers-v6"),
                )),
                Err(_) => Err(ConfigError::invalid(
                    f,
                    v,
                    format!("{s:?} is not an IPv4 address"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (f, v) = get(&self.dns_servers_v6, "--dns-servers-v6", "");
        let dns_v6 = split(v)
            .into_iter()
            .map(|s| match s.parse::<IpAddr>() {
                Ok(a @ IpAddr::V6(_)) => Ok(Cidr::host_as_written(a, s)),
                Ok(IpAddr::V4(_)) => Err(ConfigError::invalid(
                    f,
                    v,
                    format!("{s} is an IPv4 address; use --dns-servers-v4"),
                )),
                Err(_) => Err(ConfigError::invalid(
                    f,
                    v,
                    format!("{s:?} is not an IPv6 address"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Istio's gate (§3.5): resolver-only capture with no resolvers captures nothing.
        let dns = if !redirect_dns {
            DnsCapture::Off
        } else if capture_all_dns {
            DnsCapture::All
        } else if dns_v4.is_empty() && dns_v6.is_empty() {
            tracing::warn!("DNS redirection requested without --capture-all-dns and without DNS servers: DNS capture is off");
            DnsCapture::Off
        } else {
            DnsCapture::Servers {
                v4: dns_v4,
                v6: dns_v6,
            }
        };

        let (inc_f, inc_v) = get(
            &self.owner_groups_include,
            "ISTIO_OUTBOUND_OWNER_GROUPS",
            default::OWNER_GROUPS_INCLUDE,
        );
        let (exc_f, exc_v) = get(
            &self.owner_groups_exclude,
            "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
            "",
        );
        let excluded = group_list(exc_f, exc_v, groups)?;
        let owner_groups = if inc_v == "*" {
            OwnerGroups::AllExcept(excluded)
        } else {
            let included = group_list(inc_f, inc_v, groups)?;
            if included.len() > MAX_OWNER_GROUPS {
                return Err(ConfigError::invalid(
                    inc_f,
                    inc_v,
                    format!(
                        "at most {MAX_OWNER_GROUPS} owner groups can be listed, got {}",
                        included.len()
                    ),
                ));
            }
            OwnerGroups::Only(included)
        };

        let (f, v) = get(
            &self.host_ipv4_loopback_cidr,
            "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
            default::HOST_IPV4_LOOPBACK_CIDR,
        );
        let host_ipv4_loopback = Cidr::parse(f, v)?;
        if !host_ipv4_loopback.is_v4() || !host_ipv4_loopback.addr.is_loopback() {
            return Err(ConfigError::invalid(
                f,
                v,
                "must be an IPv4 loopback prefix (127.0.0.0/8)",
            ));
        }
        if !(8..=32).contains(&host_ipv4_loopback.len) {
            return Err(ConfigError::invalid(
                f,
                v,
                "prefix length must be between 8 and 32",
            ));
        }

        Ok(Config {
            proxy_port,
            inbound_capture_port,
            inbound_tunnel_port,
            proxy_uids,
            proxy_gids,
            interception,
            tproxy_mark,
            tproxy_route_table,
            inbound_ports,
            outbound_ports_include,
            outbound_ports_exclude,
            outbound_ranges_include,
            outbound_ranges_exclude_v4,
            outbound_ranges_exclude_v6,
            reroute_interfaces,
            exclude_interfaces,
            dns,
            drop_invalid,
            enable_ipv6,
            owner_groups,
            host_ipv4_loopback,
        })
    }
}

fn flag(s: &Option<Setting>) -> Result<bool, ConfigError> {
    match s {
        Some(s) => parse::boolean(&s.origin, &s.value),
        None => Ok(false),
    }
}

fn cidr_list(field: &str, value: &str) -> Result<(Vec<Cidr>, Vec<Cidr>), ConfigError> {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for element in split(value) {
        if element == "*" {
            return Err(ConfigError::invalid(
                field,
                value,
                "'*' must be the whole value, not a list element",
            ));
        }
        let cidr = Cidr::parse(field, element).map_err(|e| match e {
            ConfigError::Invalid { reason, .. } => {
                ConfigError::invalid(field, value, format!("{element:?}: {reason}"))
            }
            other => other,
        })?;
        if cidr.is_v4() {
            v4.push(cidr)
        } else {
            v6.push(cidr)
        }
    }
    Ok((v4, v6))
}

fn iface_list(field: &str, value: &str) -> Result<Vec<IfName>, ConfigError> {
    split(value)
        .into_iter()
        .map(|name| {
            IfName::parse(field, name).map_err(|e| match e {
                ConfigError::Invalid { reason, .. } => {
                    ConfigError::invalid(field, value, format!("{name:?}: {reason}"))
                }
                other => other,
            })
        })
        .collect()
}

fn group_list(field: &str, value: &str, db: &dyn GroupDatabase) -> Result<Vec<Group>, ConfigError> {
    split(value)
        .into_iter()
        .map(|g| {
            let gid = match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => db.gid_of(g).ok_or_else(|| {
                    ConfigError::invalid(
                        field,
                        value,
                        format!("group {g:?} does not exist on this host"),
                    )
                })?,
            };
            Ok(Group {
                spelling: g.to_string(),
                gid,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GroupFile;

    fn groups() -> GroupFile {
        GroupFile::parse("java:x:3000:\nftp:x:3001:\n")
    }

    fn with(f: impl FnOnce(&mut RawConfig)) -> Result<Config, ConfigError> {
        let mut raw = RawConfig::default();
        f(&mut raw);
        raw.validate(&groups())
    }

    #[test]
    fn defaults_are_the_cni_sidecar_defaults() {
        let c = with(|_| {}).unwrap();
        assert_eq!(c.proxy_port, 15001);
        assert_eq!(c.inbound_capture_port, 15006);
        assert_eq!(c.inbound_tunnel_port, 15008);
        assert_eq!(c.proxy_uids, vec![1337]);
        assert_eq!(c.proxy_gids, vec![1337]);
        assert_eq!(
            c.inbound_ports,
            InboundPorts::All {
                exclude: vec![15020, 15021, 15090]
            }
        );
        assert_eq!(c.outbound_ports_exclude, vec![15020]);
        assert_eq!(c.outbound_ranges_include, OutboundRanges::All);
        assert_eq!(c.owner_groups, OwnerGroups::AllExcept(vec![]));
        assert_eq!(c.dns, DnsCapture::Off);
        assert!(!c.enable_ipv6);
    }

    #[test]
    fn gid_defaults_to_the_uid_list() {
        let c = with(|r| r.proxy_uid = Some(Setting::new("-u", "3,4"))).unwrap();
        assert_eq!(c.proxy_gids, vec![3, 4]);
    }

    #[test]
    fn mixed_family_ranges_are_separated_in_order() {
        let c = with(|r| {
            r.outbound_ip_ranges_include =
                Some(Setting::new("-i", "10.0.0.0/8,fd00::/8,192.168.0.0/16"))
        })
        .unwrap();
        let OutboundRanges::Only { v4, v6 } = c.outbound_ranges_include else {
            panic!()
        };
        assert_eq!(v4.len(), 2);
        assert_eq!(v6.len(), 1);
    }

    #[test]
    fn owner_groups_resolve_names_and_keep_spelling() {
        let c = with(|r| {
            r.owner_groups_include = Some(Setting::new("ISTIO_OUTBOUND_OWNER_GROUPS", "java,202"))
        })
        .unwrap();
        assert_eq!(
            c.owner_groups,
            OwnerGroups::Only(vec![
                Group {
                    spelling: "java".into(),
                    gid: 3000
                },
                Group {
                    spelling: "202".into(),
                    gid: 202
                }
            ])
        );
        let err = with(|r| {
            r.owner_groups_exclude = Some(Setting::new(
                "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
                "nosuch",
            ))
        })
        .unwrap_err();
        assert_eq!(err.field(), "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE");
        let many = (0..65).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
        let err = with(|r| {
            r.owner_groups_include = Some(Setting::new("ISTIO_OUTBOUND_OWNER_GROUPS", many))
        })
        .unwrap_err();
        assert!(err.to_string().contains("at most 64"));
    }

    #[test]
    fn dns_gate_turns_capture_off_without_servers() {
        let c = with(|r| r.redirect_dns = Some(Setting::new("--redirect-dns", "true"))).unwrap();
        assert_eq!(c.dns, DnsCapture::Off);
        let c = with(|r| {
            r.redirect_dns = Some(Setting::new("--redirect-dns", "true"));
            r.capture_all_dns = Some(Setting::new("--capture-all-dns", "true"));
        })
        .unwrap();
        assert_eq!(c.dns, DnsCapture::All);
    }

    #[test]
    fn each_bad_value_names_its_field() {
        type Case = (fn(&mut RawConfig), &'static str);
        let cases: Vec<Case> = vec![
            (
                |r| r.proxy_port = Some(Setting::new("--envoy-port", "abc")),
                "--envoy-port",
            ),
            (
                |r| r.inbound_tunnel_port = Some(Setting::new("-e", "70000")),
                "-e",
            ),
            (
                |r| r.proxy_uid = Some(Setting::new("--proxy-uid", "istio")),
                "--proxy-uid",
            ),
            (
                |r| r.inbound_interception_mode = Some(Setting::new("-m", "NONE")),
                "-m",
            ),
            (
                |r| r.inbound_tproxy_mark = Some(Setting::new("-t", "mark")),
                "-t",
            ),
            (
                |r| r.outbound_ip_ranges_exclude = Some(Setting::new("-x", "*")),
                "-x",
            ),
            (
                |r| r.outbound_ip_ranges_include = Some(Setting::new("-i", "10.0.0.0")),
                "-i",
            ),
            (
                |r| r.exclude_interfaces = Some(Setting::new("-c", "waytoolonginterfacename")),
                "-c",
            ),
            (
                |r| r.dns_servers_v4 = Some(Setting::new("--dns-servers-v4", "::1")),
                "--dns-servers-v4",
            ),
            (
                |r| {
                    r.host_ipv4_loopback_cidr = Some(Setting::new(
                        "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
                        "10.0.0.0/8",
                    ))
                },
                "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
            ),
            (
                |r| {
                    r.host_ipv4_loopback_cidr = Some(Setting::new(
                        "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
                        "127.0.0.1/4",
                    ))
                },
                "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
            ),
            (
                |r| r.redirect_dns = Some(Setting::new("REDIRECT_DNS", "yes")),
                "REDIRECT_DNS",
            ),
        ];
        for (set, field) in cases {
            let err = with(set).unwrap_err();
            assert_eq!(err.field(), field, "{err}");
            assert!(err.to_string().contains(field));
        }
    }
}
