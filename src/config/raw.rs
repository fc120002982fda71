//! The unvalidated configuration: strings as the user gave them, each remembering where it
//! came from (flag, environment variable, configuration key) so that a rejection names it.

use super::knobs::{self, Knob};
use super::parse::{self, split, Cidr, IfName};
use super::{
    Config, ConfigError, DnsCapture, Group, GroupDatabase, InboundPorts, InterceptionMode,
    OutboundRanges, OwnerGroups,
};
use std::net::IpAddr;

/// One raw value and the name of the place it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The value as given.
    pub value: String,
    /// The flag, variable or key that carried it (named in error messages).
    pub origin: String,
}

impl Setting {
    /// `value`, given through `origin`.
    pub fn new(origin: impl Into<String>, value: impl Into<String>) -> Setting {
        Setting {
            value: value.into(),
            origin: origin.into(),
        }
    }
}

/// Istio's knobs (`config.Config`), unparsed. `None` means "not given": the default applies.
/// Field names follow Istio's; each is fed by one entry of the knob table ([`knobs::ALL`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawConfig {
    /// `-p` (`knobs::ENVOY_PORT`).
    pub proxy_port: Option<Setting>,
    /// `-z` (`knobs::INBOUND_CAPTURE_PORT`).
    pub inbound_capture_port: Option<Setting>,
    /// `-e` (`knobs::INBOUND_TUNNEL_PORT`).
    pub inbound_tunnel_port: Option<Setting>,
    /// `-u` (`knobs::PROXY_UID`).
    pub proxy_uid: Option<Setting>,
    /// `-g` (`knobs::PROXY_GID`).
    pub proxy_gid: Option<Setting>,
    /// `-m` (`knobs::INTERCEPTION_MODE`).
    pub inbound_interception_mode: Option<Setting>,
    /// `-t` (`knobs::TPROXY_MARK`).
    pub inbound_tproxy_mark: Option<Setting>,
    /// `-r` (`knobs::TPROXY_ROUTE_TABLE`).
    pub inbound_tproxy_route_table: Option<Setting>,
    /// `-b` (`knobs::INBOUND_PORTS`).
    pub inbound_ports_include: Option<Setting>,
    /// `-d` (`knobs::LOCAL_EXCLUDE_PORTS`).
    pub inbound_ports_exclude: Option<Setting>,
    /// `-q` (`knobs::OUTBOUND_PORTS`).
    pub outbound_ports_include: Option<Setting>,
    /// `-o` (`knobs::LOCAL_OUTBOUND_PORTS_EXCLUDE`).
    pub outbound_ports_exclude: Option<Setting>,
    /// `-i` (`knobs::SERVICE_CIDR`).
    pub outbound_ip_ranges_include: Option<Setting>,
    /// `-x` (`knobs::SERVICE_EXCLUDE_CIDR`).
    pub outbound_ip_ranges_exclude: Option<Setting>,
    /// `-k` (`knobs::KUBE_VIRT_INTERFACES`).
    pub reroute_virtual_interfaces: Option<Setting>,
    /// `-c` (`knobs::EXCLUDE_INTERFACES`).
    pub exclude_interfaces: Option<Setting>,
    /// `--redirect-dns` (`knobs::REDIRECT_DNS`).
    pub redirect_dns: Option<Setting>,
    /// `--capture-all-dns` (`knobs::CAPTURE_ALL_DNS`).
    pub capture_all_dns: Option<Setting>,
    /// `--drop-invalid` (`knobs::DROP_INVALID`).
    pub drop_invalid: Option<Setting>,
    /// `--ipv6` (`knobs::IPV6`).
    pub enable_ipv6: Option<Setting>,
    /// `--dns-servers-v4` (`knobs::DNS_SERVERS_V4`).
    pub dns_servers_v4: Option<Setting>,
    /// `--dns-servers-v6` (`knobs::DNS_SERVERS_V6`).
    pub dns_servers_v6: Option<Setting>,
    /// `ISTIO_OUTBOUND_OWNER_GROUPS` (`knobs::OWNER_GROUPS`).
    pub owner_groups_include: Option<Setting>,
    /// `ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE` (`knobs::OWNER_GROUPS_EXCLUDE`).
    pub owner_groups_exclude: Option<Setting>,
    /// `ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR` (`knobs::IPV4_LOOPBACK_CIDR`).
    pub host_ipv4_loopback_cidr: Option<Setting>,
}

/// Istio's limit on an owner-group include list (`validation.go`).
pub const MAX_OWNER_GROUPS: usize = 64;

impl RawConfig {
    /// Parses and checks every value. Nothing here touches the kernel or the network; the
    /// group database is only consulted for owner-group names.
    ///
    /// Knobs are checked in a fixed order (the first bad one is reported), one helper each.
    pub fn validate(&self, groups: &dyn GroupDatabase) -> Result<Config, ConfigError> {
        let proxy_port = self.port(&knobs::ENVOY_PORT)?;
        let inbound_capture_port = self.port(&knobs::INBOUND_CAPTURE_PORT)?;
        let inbound_tunnel_port = self.port(&knobs::INBOUND_TUNNEL_PORT)?;
        let proxy_uids = self.proxy_uids()?;
        let proxy_gids = self.proxy_gids(&proxy_uids)?;
        let interception = self.interception()?;
        let tproxy_mark = self.tproxy_mark()?;
        let tproxy_route_table = self.tproxy_route_table()?;
        let inbound_ports = self.inbound_ports()?;
        let outbound_ports_include = self.port_list(&knobs::OUTBOUND_PORTS)?;
        let outbound_ports_exclude = self.port_list(&knobs::LOCAL_OUTBOUND_PORTS_EXCLUDE)?;
        let outbound_ranges_include = self.outbound_ranges_include()?;
        let (outbound_ranges_exclude_v4, outbound_ranges_exclude_v6) =
            self.outbound_ranges_exclude()?;
        let reroute_interfaces = self.iface_list(&knobs::KUBE_VIRT_INTERFACES)?;
        let exclude_interfaces = self.iface_list(&knobs::EXCLUDE_INTERFACES)?;
        let redirect_dns = self.boolean(&knobs::REDIRECT_DNS)?;
        let capture_all_dns = self.boolean(&knobs::CAPTURE_ALL_DNS)?;
        let drop_invalid = self.boolean(&knobs::DROP_INVALID)?;
        let enable_ipv6 = self.boolean(&knobs::IPV6)?;
        let dns = self.dns(redirect_dns, capture_all_dns)?;
        let owner_groups = self.owner_groups(groups)?;
        let host_ipv4_loopback = self.host_ipv4_loopback()?;
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

    /// The knob's value and where it came from; its name and default when it was not given.
    fn given<'a>(&'a self, knob: &Knob) -> (&'a str, &'a str) {
        match (knob.field.get)(self) {
            Some(s) => (s.origin.as_str(), s.value.as_str()),
            None => (knob.name(), knob.fallback.value()),
        }
    }

    /// `-p`, `-z`, `-e`: one port.
    fn port(&self, knob: &Knob) -> Result<u16, ConfigError> {
        let (f, v) = self.given(knob);
        parse::port(f, v)
    }

    /// `-q`, `-o`: a port list.
    fn port_list(&self, knob: &Knob) -> Result<Vec<u16>, ConfigError> {
        let (f, v) = self.given(knob);
        parse::port_list(f, v)
    }

    /// `-k`, `-c`: an interface list.
    fn iface_list(&self, knob: &Knob) -> Result<Vec<IfName>, ConfigError> {
        let (f, v) = self.given(knob);
        iface_list(f, v)
    }

    /// `--redirect-dns`, `--capture-all-dns`, `--drop-invalid`, `--ipv6`: Go's `ParseBool`.
    fn boolean(&self, knob: &Knob) -> Result<bool, ConfigError> {
        let (f, v) = self.given(knob);
        parse::boolean(f, v)
    }

    /// `-u`: at least one uid.
    fn proxy_uids(&self) -> Result<Vec<u32>, ConfigError> {
        let (f, v) = self.given(&knobs::PROXY_UID);
        // Istio: an empty uid means "look up istio-proxy, else 1337"; we take the 1337.
        let v = if v.is_empty() {
            knobs::PROXY_UID.fallback.value()
        } else {
            v
        };
        let proxy_uids = parse::id_list(f, v, "uid")?;
        if proxy_uids.is_empty() {
            return Err(ConfigError::invalid(
                f,
                v,
                "no uid listed: the proxy's own traffic would loop back into it",
            ));
        }
        Ok(proxy_uids)
    }

    /// `-g`: at least one gid; the uids when not given (or empty).
    fn proxy_gids(&self, proxy_uids: &[u32]) -> Result<Vec<u32>, ConfigError> {
        match &self.proxy_gid {
            Some(s) if !s.value.is_empty() => {
                let gids = parse::id_list(&s.origin, &s.value, "gid")?;
                if gids.is_empty() {
                    return Err(ConfigError::invalid(&s.origin, &s.value, "no gid listed"));
                }
                Ok(gids)
            }
            _ => Ok(proxy_uids.to_vec()),
        }
    }

    /// `-m`: REDIRECT (also when empty) or TPROXY.
    fn interception(&self) -> Result<InterceptionMode, ConfigError> {
        match self.given(&knobs::INTERCEPTION_MODE) {
            (_, "" | "REDIRECT") => Ok(InterceptionMode::Redirect),
            (_, "TPROXY") => Ok(InterceptionMode::Tproxy),
            (f, v) => Err(ConfigError::invalid(f, v, "expected REDIRECT or TPROXY")),
        }
    }

    /// `-t`: a non-zero mark.
    fn tproxy_mark(&self) -> Result<u32, ConfigError> {
        let (f, v) = self.given(&knobs::TPROXY_MARK);
        let tproxy_mark = parse::number_u32(f, v, "mark")?;
        if tproxy_mark == 0 {
            return Err(ConfigError::invalid(f, v, "the TPROXY mark must not be 0"));
        }
        Ok(tproxy_mark)
    }

    /// `-r`: a routing table that is not reserved.
    fn tproxy_route_table(&self) -> Result<u32, ConfigError> {
        let (f, v) = self.given(&knobs::TPROXY_ROUTE_TABLE);
        let table = parse::number_u32(f, v, "routing table")?;
        if table == 0 || (252..=255).contains(&table) {
            return Err(ConfigError::invalid(
                f,
                v,
                "routing tables 0 and 252-255 are reserved",
            ));
        }
        Ok(table)
    }

    /// `-b` with `-d`: `*` minus the exclusions, a list, or none (`-d` is checked first).
    fn inbound_ports(&self) -> Result<InboundPorts, ConfigError> {
        let exclude = self.port_list(&knobs::LOCAL_EXCLUDE_PORTS)?;
        let (f, v) = self.given(&knobs::INBOUND_PORTS);
        Ok(if v == "*" {
            InboundPorts::All { exclude }
        } else if split(v).is_empty() {
            InboundPorts::None
        } else {
            InboundPorts::Only(parse::port_list(f, v)?)
        })
    }

    /// `-i`: `*` or CIDRs of both families.
    fn outbound_ranges_include(&self) -> Result<OutboundRanges, ConfigError> {
        let (f, v) = self.given(&knobs::SERVICE_CIDR);
        if v == "*" {
            return Ok(OutboundRanges::All);
        }
        let (v4, v6) = cidr_list(f, v)?;
        Ok(OutboundRanges::Only { v4, v6 })
    }

    /// `-x`: CIDRs, split by family; `*` is refused.
    fn outbound_ranges_exclude(&self) -> Result<(Vec<Cidr>, Vec<Cidr>), ConfigError> {
        let (f, v) = self.given(&knobs::SERVICE_EXCLUDE_CIDR);
        if v == "*" {
            return Err(ConfigError::invalid(
                f,
                v,
                "'*' cannot be excluded (it would disable capture); list CIDRs",
            ));
        }
        cidr_list(f, v)
    }

    /// `--dns-servers-v4` / `--dns-servers-v6` after Istio's gate (`docs/istio-semantics.md`
    /// §3.5): resolver-only capture with no resolvers captures nothing.
    fn dns(&self, redirect_dns: bool, capture_all_dns: bool) -> Result<DnsCapture, ConfigError> {
        let v4 = self.dns_servers(&knobs::DNS_SERVERS_V4, &knobs::DNS_SERVERS_V6, true)?;
        let v6 = self.dns_servers(&knobs::DNS_SERVERS_V6, &knobs::DNS_SERVERS_V4, false)?;
        Ok(if !redirect_dns {
            DnsCapture::Off
        } else if capture_all_dns {
            DnsCapture::All
        } else if v4.is_empty() && v6.is_empty() {
            tracing::warn!("DNS redirection requested without --capture-all-dns and without DNS servers: DNS capture is off");
            DnsCapture::Off
        } else {
            DnsCapture::Servers { v4, v6 }
        })
    }

    /// Resolver addresses of one family (`v4` or not) as host prefixes, as written;
    /// an address of the other family points at `other`.
    fn dns_servers(&self, knob: &Knob, other: &Knob, v4: bool) -> Result<Vec<Cidr>, ConfigError> {
        let (f, v) = self.given(knob);
        let (this, that) = if v4 {
            ("IPv4", "IPv6")
        } else {
            ("IPv6", "IPv4")
        };
        split(v)
            .into_iter()
            .map(|s| match s.parse::<IpAddr>() {
                Ok(a) if a.is_ipv4() == v4 => Ok(Cidr::host_as_written(a, s)),
                Ok(_) => Err(ConfigError::invalid(
                    f,
                    v,
                    format!("{s} is an {that} address; use {}", other.name()),
                )),
                Err(_) => Err(ConfigError::invalid(
                    f,
                    v,
                    format!("{s:?} is not an {this} address"),
                )),
            })
            .collect()
    }

    /// `ISTIO_OUTBOUND_OWNER_GROUPS` (`*` or at most 64) with `..._EXCLUDE` (checked first).
    fn owner_groups(&self, groups: &dyn GroupDatabase) -> Result<OwnerGroups, ConfigError> {
        let (exc_f, exc_v) = self.given(&knobs::OWNER_GROUPS_EXCLUDE);
        let excluded = group_list(exc_f, exc_v, groups)?;
        let (inc_f, inc_v) = self.given(&knobs::OWNER_GROUPS);
        if inc_v == "*" {
            return Ok(OwnerGroups::AllExcept(excluded));
        }
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
        Ok(OwnerGroups::Only(included))
    }

    /// `ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR`: an IPv4 loopback prefix, /8 to /32.
    fn host_ipv4_loopback(&self) -> Result<Cidr, ConfigError> {
        let (f, v) = self.given(&knobs::IPV4_LOOPBACK_CIDR);
        let cidr = Cidr::parse(f, v)?;
        if !cidr.is_v4() || !cidr.addr.is_loopback() {
            return Err(ConfigError::invalid(
                f,
                v,
                "must be an IPv4 loopback prefix (127.0.0.0/8)",
            ));
        }
        if !(8..=32).contains(&cidr.len) {
            return Err(ConfigError::invalid(
                f,
                v,
                "prefix length must be between 8 and 32",
            ));
        }
        Ok(cidr)
    }
}

/// Re-states a list element's rejection against the whole value (`"eth 0": not an …`).
fn element_error(field: &str, value: &str, element: &str, e: ConfigError) -> ConfigError {
    match e {
        ConfigError::Invalid { reason, .. } => {
            ConfigError::invalid(field, value, format!("{element:?}: {reason}"))
        }
        other => other,
    }
}

/// A CIDR list split by family, each in the order given; `*` is not an element.
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
        let cidr =
            Cidr::parse(field, element).map_err(|e| element_error(field, value, element, e))?;
        if cidr.is_v4() {
            v4.push(cidr)
        } else {
            v6.push(cidr)
        }
    }
    Ok((v4, v6))
}

/// An interface-name list.
fn iface_list(field: &str, value: &str) -> Result<Vec<IfName>, ConfigError> {
    split(value)
        .into_iter()
        .map(|name| IfName::parse(field, name).map_err(|e| element_error(field, value, name, e)))
        .collect()
}

/// Owner groups by gid or by name (resolved through `db`), keeping the spelling.
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
        let cases: [(&Knob, &str, &str); 12] = [
            (&knobs::ENVOY_PORT, "--envoy-port", "abc"),
            (&knobs::INBOUND_TUNNEL_PORT, "-e", "70000"),
            (&knobs::PROXY_UID, "--proxy-uid", "istio"),
            (&knobs::INTERCEPTION_MODE, "-m", "NONE"),
            (&knobs::TPROXY_MARK, "-t", "mark"),
            (&knobs::SERVICE_EXCLUDE_CIDR, "-x", "*"),
            (&knobs::SERVICE_CIDR, "-i", "10.0.0.0"),
            (&knobs::EXCLUDE_INTERFACES, "-c", "waytoolonginterfacename"),
            (&knobs::DNS_SERVERS_V4, "--dns-servers-v4", "::1"),
            (
                &knobs::IPV4_LOOPBACK_CIDR,
                "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
                "10.0.0.0/8",
            ),
            (
                &knobs::IPV4_LOOPBACK_CIDR,
                "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
                "127.0.0.1/4",
            ),
            (&knobs::REDIRECT_DNS, "REDIRECT_DNS", "yes"),
        ];
        for (knob, field, value) in cases {
            let err =
                with(|r| *(knob.field.get_mut)(r) = Some(Setting::new(field, value))).unwrap_err();
            assert_eq!(err.field(), field, "{err}");
            assert!(err.to_string().contains(field));
        }
    }

    #[test]
    fn an_absent_knob_is_its_default_under_its_name() {
        // Not given, the default applies and a message would name the flag or variable.
        let raw = RawConfig::default();
        assert_eq!(raw.given(&knobs::ENVOY_PORT), ("--envoy-port", "15001"));
        assert_eq!(
            raw.given(&knobs::OWNER_GROUPS),
            ("ISTIO_OUTBOUND_OWNER_GROUPS", "*")
        );
        assert_eq!(raw.given(&knobs::PROXY_GID), ("--proxy-gid", ""));
    }
}
