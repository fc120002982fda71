//! Every redirect knob, defined once: Istio's `istio-iptables` flag (long and short form),
//! its environment variables, its default, its help text and the [`RawConfig`] field it
//! feeds. The command line (`cli::RedirectArgs`), the flag → [`RawConfig`] mapping, the
//! defaults [`RawConfig::validate`] applies and the README's "Redirect flags" table are all
//! derived from [`ALL`], so adding a knob is one entry here (plus its parser in `raw.rs`).

use super::{RawConfig, Setting};

/// How a knob's flag takes its value on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// `--flag VALUE` (or `-s VALUE`); the string is what `--help` shows as `<VALUE>`.
    Value(&'static str),
    /// `--flag[=BOOL]`: a bare flag means `true`, a value must be attached with `=`.
    Bool,
}

/// What applies when a knob is given neither as a flag nor in the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Nothing: an empty value (an empty list, `false`).
    Empty,
    /// This value, parsed like a given one (Istio's CNI-plugin sidecar defaults,
    /// `docs/istio-semantics.md` §7.1).
    Value(&'static str),
    /// Derived from another knob; the text says from what (for `--help` and the README).
    Derived(&'static str),
}

impl Fallback {
    /// The value parsed when the knob is not given (`""` when there is none to parse).
    pub fn value(self) -> &'static str {
        match self {
            Fallback::Value(v) => v,
            Fallback::Empty | Fallback::Derived(_) => "",
        }
    }
}

/// Reads and writes the [`RawConfig`] field a knob feeds.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// The field, to read.
    pub get: fn(&RawConfig) -> &Option<Setting>,
    /// The field, to write.
    pub get_mut: fn(&mut RawConfig) -> &mut Option<Setting>,
}

/// The [`Field`] accessors of one `RawConfig` field.
macro_rules! field {
    ($name:ident) => {
        Field {
            get: |raw| &raw.$name,
            get_mut: |raw| &mut raw.$name,
        }
    };
}

/// One of Istio's capture knobs: where it can be given, and what it means.
#[derive(Debug, Clone, Copy)]
pub struct Knob {
    /// The long flag with its dashes (`--envoy-port`); `None` for knobs Istio only reads
    /// from the environment.
    pub flag: Option<&'static str>,
    /// `istio-iptables`' one-letter form (`-p`).
    pub short: Option<char>,
    /// Environment variables, in Istio's precedence: a later one beats an earlier one, and
    /// the flag beats them all.
    pub env: &'static [&'static str],
    /// How the flag takes its value.
    pub syntax: Syntax,
    /// What applies when the knob is not given.
    pub fallback: Fallback,
    /// One line for `--help` and the README, without a final period.
    pub help: &'static str,
    /// The [`RawConfig`] field the knob feeds (its parser is in `RawConfig::validate`).
    pub field: Field,
}

impl Knob {
    /// The name a message uses when the knob was not given: the flag, else the first variable.
    pub fn name(&self) -> &'static str {
        self.flag.or(self.env.first().copied()).unwrap_or("")
    }

    /// The long flag without its dashes (clap's `long` and argument id).
    pub fn long(&self) -> Option<&'static str> {
        self.flag.map(|f| f.trim_start_matches("--"))
    }

    /// The value that counts: the flag's, else the environment's by Istio's precedence,
    /// each with the place it came from.
    pub fn pick(
        &self,
        flag_value: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Option<Setting> {
        if let (Some(flag), Some(v)) = (self.flag, flag_value) {
            return Some(Setting::new(flag, v));
        }
        self.env
            .iter()
            .rev()
            .find_map(|name| env(name).map(|v| Setting::new(*name, v)))
    }
}

/// `-p`: Envoy's outbound listener.
pub const ENVOY_PORT: Knob = Knob {
    flag: Some("--envoy-port"),
    short: Some('p'),
    env: &[],
    syntax: Syntax::Value("ENVOY_PORT"),
    fallback: Fallback::Value("15001"),
    help: "Outbound capture port (Envoy's outbound listener)",
    field: field!(proxy_port),
};

/// `-z`: Envoy's inbound listener.
pub const INBOUND_CAPTURE_PORT: Knob = Knob {
    flag: Some("--inbound-capture-port"),
    short: Some('z'),
    env: &["INBOUND_CAPTURE_PORT"],
    syntax: Syntax::Value("INBOUND_CAPTURE_PORT"),
    fallback: Fallback::Value("15006"),
    help: "Inbound capture port (Envoy's inbound listener)",
    field: field!(inbound_capture_port),
};

/// `-e`: the HBONE tunnel port.
pub const INBOUND_TUNNEL_PORT: Knob = Knob {
    flag: Some("--inbound-tunnel-port"),
    short: Some('e'),
    env: &["INBOUND_TUNNEL_PORT"],
    syntax: Syntax::Value("INBOUND_TUNNEL_PORT"),
    fallback: Fallback::Value("15008"),
    help: "HBONE tunnel port, never redirected",
    field: field!(inbound_tunnel_port),
};

/// `-u`: the proxy's uids.
pub const PROXY_UID: Knob = Knob {
    flag: Some("--proxy-uid"),
    short: Some('u'),
    env: &["PROXY_UID"],
    syntax: Syntax::Value("PROXY_UID"),
    fallback: Fallback::Value("1337"),
    help: "Proxy uids whose traffic is not captured",
    field: field!(proxy_uid),
};

/// `-g`: the proxy's gids.
pub const PROXY_GID: Knob = Knob {
    flag: Some("--proxy-gid"),
    short: Some('g'),
    env: &["PROXY_GID"],
    syntax: Syntax::Value("PROXY_GID"),
    fallback: Fallback::Derived("the uids"),
    help: "Proxy gids whose traffic is not captured",
    field: field!(proxy_gid),
};

/// `-m`: REDIRECT or TPROXY.
pub const INTERCEPTION_MODE: Knob = Knob {
    flag: Some("--istio-inbound-interception-mode"),
    short: Some('m'),
    env: &["ISTIO_INBOUND_INTERCEPTION_MODE"],
    syntax: Syntax::Value("INTERCEPTION_MODE"),
    fallback: Fallback::Value("REDIRECT"),
    help: "REDIRECT or TPROXY",
    field: field!(inbound_interception_mode),
};

/// `-t`: the TPROXY packet mark.
pub const TPROXY_MARK: Knob = Knob {
    flag: Some("--istio-inbound-tproxy-mark"),
    short: Some('t'),
    env: &["ISTIO_INBOUND_TPROXY_MARK"],
    syntax: Syntax::Value("TPROXY_MARK"),
    fallback: Fallback::Value("1337"),
    help: "TPROXY packet mark",
    field: field!(inbound_tproxy_mark),
};

/// `-r`: the TPROXY policy-routing table.
pub const TPROXY_ROUTE_TABLE: Knob = Knob {
    flag: Some("--istio-inbound-tproxy-route-table"),
    short: Some('r'),
    env: &["ISTIO_INBOUND_TPROXY_ROUTE_TABLE"],
    syntax: Syntax::Value("TPROXY_ROUTE_TABLE"),
    fallback: Fallback::Value("133"),
    help: "TPROXY policy-routing table",
    field: field!(inbound_tproxy_route_table),
};

/// `-b`: inbound ports captured.
pub const INBOUND_PORTS: Knob = Knob {
    flag: Some("--istio-inbound-ports"),
    short: Some('b'),
    env: &["ISTIO_INBOUND_PORTS"],
    syntax: Syntax::Value("INBOUND_PORTS"),
    fallback: Fallback::Value("*"),
    help: "Inbound ports to capture: '*', a list, or '' for none",
    field: field!(inbound_ports_include),
};

/// `-d`: inbound ports spared from `-b '*'`.
pub const LOCAL_EXCLUDE_PORTS: Knob = Knob {
    flag: Some("--istio-local-exclude-ports"),
    short: Some('d'),
    env: &["ISTIO_LOCAL_EXCLUDE_PORTS"],
    syntax: Syntax::Value("LOCAL_EXCLUDE_PORTS"),
    fallback: Fallback::Value("15020,15021,15090"),
    help: "Inbound ports not captured when -b is '*'",
    field: field!(inbound_ports_exclude),
};

/// `-i`: outbound destinations captured.
pub const SERVICE_CIDR: Knob = Knob {
    flag: Some("--istio-service-cidr"),
    short: Some('i'),
    env: &["ISTIO_SERVICE_CIDR"],
    syntax: Syntax::Value("SERVICE_CIDR"),
    fallback: Fallback::Value("*"),
    help: "Outbound destinations to capture: '*', CIDRs (IPv4 and IPv6), or ''",
    field: field!(outbound_ip_ranges_include),
};

/// `-x`: outbound destinations never captured.
pub const SERVICE_EXCLUDE_CIDR: Knob = Knob {
    flag: Some("--istio-service-exclude-cidr"),
    short: Some('x'),
    env: &["ISTIO_SERVICE_EXCLUDE_CIDR"],
    syntax: Syntax::Value("SERVICE_EXCLUDE_CIDR"),
    fallback: Fallback::Empty,
    help: "Outbound destinations never captured (CIDRs)",
    field: field!(outbound_ip_ranges_exclude),
};

/// `-q`: outbound TCP ports always captured.
pub const OUTBOUND_PORTS: Knob = Knob {
    flag: Some("--istio-outbound-ports"),
    short: Some('q'),
    env: &["ISTIO_OUTBOUND_PORTS"],
    syntax: Syntax::Value("OUTBOUND_PORTS"),
    fallback: Fallback::Empty,
    help: "Outbound TCP ports always captured",
    field: field!(outbound_ports_include),
};

/// `-o`: outbound ports never captured.
pub const LOCAL_OUTBOUND_PORTS_EXCLUDE: Knob = Knob {
    flag: Some("--istio-local-outbound-ports-exclude"),
    short: Some('o'),
    env: &["ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE"],
    syntax: Syntax::Value("LOCAL_OUTBOUND_PORTS_EXCLUDE"),
    fallback: Fallback::Value("15020"),
    help: "Outbound TCP/UDP ports never captured",
    field: field!(outbound_ports_exclude),
};

/// `-k`: interfaces whose inbound traffic counts as outbound.
pub const KUBE_VIRT_INTERFACES: Knob = Knob {
    flag: Some("--kube-virt-interfaces"),
    short: Some('k'),
    env: &["KUBE_VIRT_INTERFACES"],
    syntax: Syntax::Value("KUBE_VIRT_INTERFACES"),
    fallback: Fallback::Empty,
    help: "Interfaces whose inbound traffic is treated as outbound",
    field: field!(reroute_virtual_interfaces),
};

/// `-c`: interfaces never captured.
pub const EXCLUDE_INTERFACES: Knob = Knob {
    flag: Some("--istio-exclude-interfaces"),
    short: Some('c'),
    env: &["ISTIO_EXCLUDE_INTERFACES"],
    syntax: Syntax::Value("EXCLUDE_INTERFACES"),
    fallback: Fallback::Empty,
    help: "Interfaces whose traffic is never captured",
    field: field!(exclude_interfaces),
};

/// `--redirect-dns`: DNS capture to the agent.
pub const REDIRECT_DNS: Knob = Knob {
    flag: Some("--redirect-dns"),
    short: None,
    env: &["REDIRECT_DNS", "ISTIO_META_DNS_CAPTURE"],
    syntax: Syntax::Bool,
    fallback: Fallback::Value("false"),
    help: "Capture DNS to the agent on 15053",
    field: field!(redirect_dns),
};

/// `--capture-all-dns`: every port-53 destination, not only the resolvers.
pub const CAPTURE_ALL_DNS: Knob = Knob {
    flag: Some("--capture-all-dns"),
    short: None,
    env: &["CAPTURE_ALL_DNS"],
    syntax: Syntax::Bool,
    fallback: Fallback::Value("false"),
    help: "Capture every destination on port 53, not only the listed resolvers",
    field: field!(capture_all_dns),
};

/// `--drop-invalid`: drop conntrack-INVALID packets.
pub const DROP_INVALID: Knob = Knob {
    flag: Some("--drop-invalid"),
    short: None,
    env: &["DROP_INVALID", "INVALID_DROP"],
    syntax: Syntax::Bool,
    fallback: Fallback::Value("false"),
    help: "Drop packets conntrack marks INVALID",
    field: field!(drop_invalid),
};

/// `--ipv6`: IPv6 rules as well.
pub const IPV6: Knob = Knob {
    flag: Some("--ipv6"),
    short: None,
    env: &[],
    syntax: Syntax::Bool,
    fallback: Fallback::Value("false"),
    help: "Program IPv6 rules as well (Istio detects this from the pod's addresses)",
    field: field!(enable_ipv6),
};

/// `--dns-servers-v4`: the IPv4 resolvers captured.
pub const DNS_SERVERS_V4: Knob = Knob {
    flag: Some("--dns-servers-v4"),
    short: None,
    env: &[],
    syntax: Syntax::Value("A,B"),
    fallback: Fallback::Empty,
    help: "IPv4 DNS resolvers to capture (Istio reads them from resolv.conf)",
    field: field!(dns_servers_v4),
};

/// `--dns-servers-v6`: the IPv6 resolvers captured.
pub const DNS_SERVERS_V6: Knob = Knob {
    flag: Some("--dns-servers-v6"),
    short: None,
    env: &[],
    syntax: Syntax::Value("A,B"),
    fallback: Fallback::Empty,
    help: "IPv6 DNS resolvers to capture",
    field: field!(dns_servers_v6),
};

/// `ISTIO_OUTBOUND_OWNER_GROUPS`: the owner groups captured.
pub const OWNER_GROUPS: Knob = Knob {
    flag: None,
    short: None,
    env: &["ISTIO_OUTBOUND_OWNER_GROUPS"],
    syntax: Syntax::Value("GROUPS"),
    fallback: Fallback::Value("*"),
    help: "Owner groups captured: '*' or at most 64 names (from /etc/group) or gids",
    field: field!(owner_groups_include),
};

/// `ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE`: the owner groups not captured.
pub const OWNER_GROUPS_EXCLUDE: Knob = Knob {
    flag: None,
    short: None,
    env: &["ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"],
    syntax: Syntax::Value("GROUPS"),
    fallback: Fallback::Empty,
    help: "Owner groups not captured (when the include list is '*')",
    field: field!(owner_groups_exclude),
};

/// `ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR`: what counts as IPv4 localhost.
pub const IPV4_LOOPBACK_CIDR: Knob = Knob {
    flag: None,
    short: None,
    env: &["ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR"],
    syntax: Syntax::Value("CIDR"),
    fallback: Fallback::Value("127.0.0.1/32"),
    help: "The \"localhost\" prefix (IPv4 loopback, /8 to /32)",
    field: field!(host_ipv4_loopback_cidr),
};

/// Every knob, in `--help` and README order (Istio's `config.Config` order).
pub const ALL: &[&Knob] = &[
    &ENVOY_PORT,
    &INBOUND_CAPTURE_PORT,
    &INBOUND_TUNNEL_PORT,
    &PROXY_UID,
    &PROXY_GID,
    &INTERCEPTION_MODE,
    &TPROXY_MARK,
    &TPROXY_ROUTE_TABLE,
    &INBOUND_PORTS,
    &LOCAL_EXCLUDE_PORTS,
    &SERVICE_CIDR,
    &SERVICE_EXCLUDE_CIDR,
    &OUTBOUND_PORTS,
    &LOCAL_OUTBOUND_PORTS_EXCLUDE,
    &KUBE_VIRT_INTERFACES,
    &EXCLUDE_INTERFACES,
    &REDIRECT_DNS,
    &CAPTURE_ALL_DNS,
    &DROP_INVALID,
    &IPV6,
    &DNS_SERVERS_V4,
    &DNS_SERVERS_V6,
    &OWNER_GROUPS,
    &OWNER_GROUPS_EXCLUDE,
    &IPV4_LOOPBACK_CIDR,
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_raw_config_field_is_fed_by_exactly_one_knob() {
        let mut raw = RawConfig::default();
        let fields = format!("{raw:?}").matches("None").count();
        assert_eq!(ALL.len(), fields, "one knob per RawConfig field");
        for (i, knob) in ALL.iter().enumerate() {
            let slot = (knob.field.get_mut)(&mut raw);
            assert!(
                slot.is_none(),
                "{} feeds a field another knob feeds",
                knob.name()
            );
            *slot = Some(Setting::new(knob.name(), i.to_string()));
            assert_eq!(
                (knob.field.get)(&raw).as_ref().unwrap().value,
                i.to_string()
            );
        }
        assert!(!format!("{raw:?}").contains("None"));
    }

    #[test]
    fn names_short_forms_and_variables_are_unique() {
        let mut seen = HashSet::new();
        for knob in ALL {
            assert!(!knob.name().is_empty(), "a knob needs a flag or a variable");
            if let Some(s) = knob.short {
                assert!(seen.insert(format!("-{s}")), "-{s} twice");
            }
            for env in knob.env {
                assert!(seen.insert(env.to_string()), "{env} twice");
            }
            if let Some(flag) = knob.flag {
                assert!(flag.starts_with("--") && !flag.ends_with('-'), "{flag}");
                assert!(seen.insert(flag.to_string()), "{flag} twice");
            }
            assert!(
                !knob.help.ends_with('.'),
                "{}: help ends with '.'",
                knob.name()
            );
        }
    }

    #[test]
    fn flag_beats_env_and_a_later_variable_beats_an_earlier_one() {
        let env = |name: &str| Some(format!("{name}-value"));
        let picked = DROP_INVALID.pick(None, &env).unwrap();
        assert_eq!(picked, Setting::new("INVALID_DROP", "INVALID_DROP-value"));
        let picked = DROP_INVALID.pick(Some("false"), &env).unwrap();
        assert_eq!(picked, Setting::new("--drop-invalid", "false"));
        assert_eq!(IPV6.pick(None, &env), None);
        assert_eq!(OWNER_GROUPS.name(), "ISTIO_OUTBOUND_OWNER_GROUPS");
    }
}
