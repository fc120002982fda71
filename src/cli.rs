//! The command line: `istio-iptables` flag names, short forms and environment variables, with
//! Istio's precedence (spec §2.1): a flag beats the environment, and a second ("additional")
//! variable beats the first (`ISTIO_META_DNS_CAPTURE` over `REDIRECT_DNS`).

use crate::config::{RawConfig, Setting};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "mesh-redirect",
    version,
    about = "Istio sidecar traffic redirection, programmed natively into a network namespace"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// More logging on stderr (-v debug, -vv trace); MESH_REDIRECT_LOG=error/warn/info/debug/trace overrides.
    #[arg(short = 'v', long = "verbose", global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Program the redirect rules into a network namespace (one atomic batch).
    Apply {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        redirect: RedirectArgs,
    },
    /// Print what `apply` would program, in the format of Istio's goldens (nft transaction,
    /// or iptables-restore payloads with --backend iptables-legacy).
    Render {
        #[arg(long, value_enum, default_value_t = Backend::Nftables)]
        backend: Backend,
        #[command(flatten)]
        redirect: RedirectArgs,
    },
    /// Compare the namespace with the expected rules: exit 0 when they match, 1 with a diff.
    Verify {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        redirect: RedirectArgs,
    },
    /// Prove the redirect works from inside a pod's namespace (what istio-validation does):
    /// exit 0 when a probe connection is redirected, 126 with the reason when it is not.
    Validate {
        /// Run in this namespace (default: the one we are in, as an init container).
        #[arg(long, value_name = "PATH|NAME")]
        netns: Option<String>,
        /// The port the probe connects to (on 127.0.0.6, or ::6 with --ipv6).
        #[arg(
            long = "iptables-probe-port",
            default_value = "15002",
            value_name = "PORT"
        )]
        probe_port: String,
        /// The inbound capture port the probe must land on.
        #[arg(
            short = 'z',
            long = "inbound-capture-port",
            default_value = "15006",
            value_name = "PORT"
        )]
        inbound_capture_port: String,
        /// The outbound capture port (also listened on).
        #[arg(
            short = 'p',
            long = "envoy-port",
            default_value = "15001",
            value_name = "PORT"
        )]
        proxy_port: String,
        /// The proxy's uid and gid the probe connects as.
        #[arg(
            short = 'u',
            long = "proxy-uid",
            default_value = "1337",
            value_name = "UID"
        )]
        uid: String,
        #[arg(short = 'g', long = "proxy-gid", value_name = "GID")]
        gid: Option<String>,
        /// Probe over IPv6 (::6 → [::1]:15006).
        #[arg(long)]
        ipv6: bool,
        /// How long to keep trying.
        #[arg(long = "probe-timeout", default_value = "5s", value_name = "DURATION")]
        timeout: String,
    },
    /// Node installer (run by the DaemonSet): copy this binary into the CNI bin dir, write
    /// the plugin's kubeconfig, chain the plugin into the primary CNI configuration; then
    /// watch and repair until SIGTERM (unless --once).
    Install {
        #[command(flatten)]
        node: NodeArgs,
        /// One pass, then exit.
        #[arg(long)]
        once: bool,
        /// File written once the node is configured (for the readiness probe).
        #[arg(long, env = "READY_FILE", value_name = "PATH")]
        ready_file: Option<PathBuf>,
        /// On SIGTERM, remove our entry, kubeconfig and binary from the node.
        #[arg(long, env = "CLEANUP_ON_EXIT", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
        cleanup_on_exit: Option<String>,
    },
    /// The installer's reverse: remove our entry, kubeconfig and binary. Idempotent.
    Uninstall {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Delete our tables and policy routes (only ours); succeeds when there is nothing to delete.
    Remove {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        redirect: RedirectArgs,
    },
}

/// Where the node's CNI files are, and the plugin settings to write.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The host's CNI binary directory, as mounted in the installer's container.
    #[arg(
        long,
        env = "CNI_BIN_DIR",
        default_value = "/host/opt/cni/bin",
        value_name = "DIR"
    )]
    pub cni_bin_dir: PathBuf,
    /// The host's CNI configuration directory, as mounted.
    #[arg(
        long,
        env = "CNI_CONF_DIR",
        default_value = "/host/etc/cni/net.d",
        value_name = "DIR"
    )]
    pub cni_conf_dir: PathBuf,
    /// The same directory as the host sees it (written into the plugin's configuration).
    #[arg(
        long,
        env = "HOST_CNI_CONF_DIR",
        default_value = "/etc/cni/net.d",
        value_name = "DIR"
    )]
    pub host_cni_conf_dir: PathBuf,
    /// The service account's token and CA.
    #[arg(
        long,
        env = "SERVICE_ACCOUNT_DIR",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount",
        value_name = "DIR"
    )]
    pub service_account_dir: PathBuf,
    /// Plugin setting: nftables, iptables-legacy or auto.
    #[arg(long, env = "BACKEND", value_name = "BACKEND")]
    pub backend: Option<String>,
    /// Plugin setting: namespaces whose pods are never redirected (comma separated).
    #[arg(long, env = "EXCLUDE_NAMESPACES", value_name = "NS,NS")]
    pub exclude_namespaces: Option<String>,
    /// Plugin setting: none, error, warn, info, debug or trace.
    #[arg(long = "log-level", env = "PLUGIN_LOG_LEVEL", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Plugin setting: the deadline for the pod lookup, e.g. 10s.
    #[arg(long, env = "API_TIMEOUT", value_name = "DURATION")]
    pub api_timeout: Option<String>,
    /// Further plugin settings as a JSON object (e.g. '{"log_file":"/var/log/mr.log"}').
    #[arg(long, env = "PLUGIN_CONFIG", value_name = "JSON")]
    pub plugin_config: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// Native nf_tables over netlink.
    Nftables,
    /// Legacy xtables through the kernel's socket interface.
    IptablesLegacy,
    /// The backend whose rules exist already; else nftables if nf_tables answers; else legacy.
    Auto,
}

impl Backend {
    pub fn choice(self) -> crate::engine::BackendChoice {
        match self {
            Backend::Nftables => crate::engine::BackendChoice::Nftables,
            Backend::IptablesLegacy => crate::engine::BackendChoice::IptablesLegacy,
            Backend::Auto => crate::engine::BackendChoice::Auto,
        }
    }
}

#[derive(Debug, Args)]
pub struct Target {
    /// Network namespace: a path (/var/run/netns/NAME, /proc/PID/ns/net) or a name as `ip netns` shows it.
    #[arg(long, value_name = "PATH|NAME")]
    pub netns: String,
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub backend: Backend,
}

/// Istio's capture knobs. Lists are comma separated; an empty value (`-b ''`) means none.
#[derive(Debug, Args, Default)]
pub struct RedirectArgs {
    /// Outbound capture port (Envoy's outbound listener). [default: 15001]
    #[arg(short = 'p', long = "envoy-port")]
    pub envoy_port: Option<String>,
    /// Inbound capture port (Envoy's inbound listener). [env: INBOUND_CAPTURE_PORT] [default: 15006]
    #[arg(short = 'z', long = "inbound-capture-port")]
    pub inbound_capture_port: Option<String>,
    /// HBONE tunnel port, never redirected. [env: INBOUND_TUNNEL_PORT] [default: 15008]
    #[arg(short = 'e', long = "inbound-tunnel-port")]
    pub inbound_tunnel_port: Option<String>,
    /// Proxy uids whose traffic is not captured. [env: PROXY_UID] [default: 1337]
    #[arg(short = 'u', long = "proxy-uid")]
    pub proxy_uid: Option<String>,
    /// Proxy gids whose traffic is not captured. [env: PROXY_GID] [default: the uids]
    #[arg(short = 'g', long = "proxy-gid")]
    pub proxy_gid: Option<String>,
    /// REDIRECT or TPROXY. [env: ISTIO_INBOUND_INTERCEPTION_MODE] [default: REDIRECT]
    #[arg(short = 'm', long = "istio-inbound-interception-mode")]
    pub interception_mode: Option<String>,
    /// TPROXY packet mark. [env: ISTIO_INBOUND_TPROXY_MARK] [default: 1337]
    #[arg(short = 't', long = "istio-inbound-tproxy-mark")]
    pub tproxy_mark: Option<String>,
    /// TPROXY policy-routing table. [env: ISTIO_INBOUND_TPROXY_ROUTE_TABLE] [default: 133]
    #[arg(short = 'r', long = "istio-inbound-tproxy-route-table")]
    pub tproxy_route_table: Option<String>,
    /// Inbound ports to capture: '*', a list, or '' for none. [env: ISTIO_INBOUND_PORTS] [default: *]
    #[arg(short = 'b', long = "istio-inbound-ports")]
    pub inbound_ports: Option<String>,
    /// Inbound ports not captured when -b is '*'. [env: ISTIO_LOCAL_EXCLUDE_PORTS] [default: 15020,15021,15090]
    #[arg(short = 'd', long = "istio-local-exclude-ports")]
    pub local_exclude_ports: Option<String>,
    /// Outbound destinations to capture: '*', CIDRs (IPv4 and IPv6), or ''. [env: ISTIO_SERVICE_CIDR] [default: *]
    #[arg(short = 'i', long = "istio-service-cidr")]
    pub service_cidr: Option<String>,
    /// Outbound destinations never captured (CIDRs). [env: ISTIO_SERVICE_EXCLUDE_CIDR]
    #[arg(short = 'x', long = "istio-service-exclude-cidr")]
    pub service_exclude_cidr: Option<String>,
    /// Outbound TCP ports always captured. [env: ISTIO_OUTBOUND_PORTS]
    #[arg(short = 'q', long = "istio-outbound-ports")]
    pub outbound_ports: Option<String>,
    /// Outbound TCP/UDP ports never captured. [env: ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE] [default: 15020]
    #[arg(short = 'o', long = "istio-local-outbound-ports-exclude")]
    pub local_outbound_ports_exclude: Option<String>,
    /// Interfaces whose inbound traffic is treated as outbound. [env: KUBE_VIRT_INTERFACES]
    #[arg(short = 'k', long = "kube-virt-interfaces")]
    pub kube_virt_interfaces: Option<String>,
    /// Interfaces whose traffic is never captured. [env: ISTIO_EXCLUDE_INTERFACES]
    #[arg(short = 'c', long = "istio-exclude-interfaces")]
    pub exclude_interfaces: Option<String>,
    /// Capture DNS to the agent on 15053. [env: REDIRECT_DNS, ISTIO_META_DNS_CAPTURE]
    #[arg(long = "redirect-dns", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub redirect_dns: Option<String>,
    /// Capture every destination on port 53, not only the listed resolvers. [env: CAPTURE_ALL_DNS]
    #[arg(long = "capture-all-dns", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub capture_all_dns: Option<String>,
    /// Drop packets conntrack marks INVALID. [env: DROP_INVALID, INVALID_DROP]
    #[arg(long = "drop-invalid", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub drop_invalid: Option<String>,
    /// Program IPv6 rules as well (Istio detects this from the pod's addresses).
    #[arg(long = "ipv6", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub ipv6: Option<String>,
    /// IPv4 DNS resolvers to capture (Istio reads them from resolv.conf).
    #[arg(long = "dns-servers-v4", value_name = "A,B")]
    pub dns_servers_v4: Option<String>,
    /// IPv6 DNS resolvers to capture.
    #[arg(long = "dns-servers-v6", value_name = "A,B")]
    pub dns_servers_v6: Option<String>,
}

/// Picks a value: the flag, else the last set variable of `envs` (later ones win).
fn pick(
    flag: &Option<String>,
    flag_name: &str,
    envs: &[&str],
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<Setting> {
    if let Some(v) = flag {
        return Some(Setting::new(flag_name, v.clone()));
    }
    envs.iter()
        .rev()
        .find_map(|name| env(name).map(|v| Setting::new(*name, v)))
}

impl RedirectArgs {
    /// The raw configuration from these flags and the given environment.
    pub fn to_raw(&self, env: &dyn Fn(&str) -> Option<String>) -> RawConfig {
        let p = |flag: &Option<String>, name: &str, envs: &[&str]| pick(flag, name, envs, env);
        RawConfig {
            proxy_port: p(&self.envoy_port, "--envoy-port", &[]),
            inbound_capture_port: p(
                &self.inbound_capture_port,
                "--inbound-capture-port",
                &["INBOUND_CAPTURE_PORT"],
            ),
            inbound_tunnel_port: p(
                &self.inbound_tunnel_port,
                "--inbound-tunnel-port",
                &["INBOUND_TUNNEL_PORT"],
            ),
            proxy_uid: p(&self.proxy_uid, "--proxy-uid", &["PROXY_UID"]),
            proxy_gid: p(&self.proxy_gid, "--proxy-gid", &["PROXY_GID"]),
            inbound_interception_mode: p(
                &self.interception_mode,
                "--istio-inbound-interception-mode",
                &["ISTIO_INBOUND_INTERCEPTION_MODE"],
            ),
            inbound_tproxy_mark: p(
                &self.tproxy_mark,
                "--istio-inbound-tproxy-mark",
                &["ISTIO_INBOUND_TPROXY_MARK"],
            ),
            inbound_tproxy_route_table: p(
                &self.tproxy_route_table,
                "--istio-inbound-tproxy-route-table",
                &["ISTIO_INBOUND_TPROXY_ROUTE_TABLE"],
            ),
            inbound_ports_include: p(
                &self.inbound_ports,
                "--istio-inbound-ports",
                &["ISTIO_INBOUND_PORTS"],
            ),
            inbound_ports_exclude: p(
                &self.local_exclude_ports,
                "--istio-local-exclude-ports",
                &["ISTIO_LOCAL_EXCLUDE_PORTS"],
            ),
            outbound_ports_include: p(
                &self.outbound_ports,
                "--istio-outbound-ports",
                &["ISTIO_OUTBOUND_PORTS"],
            ),
            outbound_ports_exclude: p(
                &self.local_outbound_ports_exclude,
                "--istio-local-outbound-ports-exclude",
                &["ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE"],
            ),
            outbound_ip_ranges_include: p(
                &self.service_cidr,
                "--istio-service-cidr",
                &["ISTIO_SERVICE_CIDR"],
            ),
            outbound_ip_ranges_exclude: p(
                &self.service_exclude_cidr,
                "--istio-service-exclude-cidr",
                &["ISTIO_SERVICE_EXCLUDE_CIDR"],
            ),
            reroute_virtual_interfaces: p(
                &self.kube_virt_interfaces,
                "--kube-virt-interfaces",
                &["KUBE_VIRT_INTERFACES"],
            ),
            exclude_interfaces: p(
                &self.exclude_interfaces,
                "--istio-exclude-interfaces",
                &["ISTIO_EXCLUDE_INTERFACES"],
            ),
            redirect_dns: p(
                &self.redirect_dns,
                "--redirect-dns",
                &["REDIRECT_DNS", "ISTIO_META_DNS_CAPTURE"],
            ),
            capture_all_dns: p(
                &self.capture_all_dns,
                "--capture-all-dns",
                &["CAPTURE_ALL_DNS"],
            ),
            drop_invalid: p(
                &self.drop_invalid,
                "--drop-invalid",
                &["DROP_INVALID", "INVALID_DROP"],
            ),
            enable_ipv6: p(&self.ipv6, "--ipv6", &[]),
            dns_servers_v4: p(&self.dns_servers_v4, "--dns-servers-v4", &[]),
            dns_servers_v6: p(&self.dns_servers_v6, "--dns-servers-v6", &[]),
            owner_groups_include: p(&None, "", &["ISTIO_OUTBOUND_OWNER_GROUPS"]),
            owner_groups_exclude: p(&None, "", &["ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"]),
            host_ipv4_loopback_cidr: p(&None, "", &["ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR"]),
        }
    }
}

/// The raw configuration for redirect flags (as `render` takes them) and an environment:
/// the command line's own mapping, for tests and benchmarks that start from flags.
pub fn raw_config<S: AsRef<str>>(
    flags: &[S],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RawConfig, clap::Error> {
    let argv = ["mesh-redirect", "render"]
        .into_iter()
        .map(str::to_string)
        .chain(flags.iter().map(|f| f.as_ref().to_string()));
    match Cli::try_parse_from(argv)?.command {
        Command::Render { redirect, .. } => Ok(redirect.to_raw(env)),
        _ => unreachable!("render was parsed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn redirect(args: &[&str]) -> RedirectArgs {
        let mut full = vec!["mesh-redirect", "render"];
        full.extend_from_slice(args);
        match Cli::try_parse_from(full).unwrap().command {
            Command::Render { redirect, .. } => redirect,
            _ => unreachable!(),
        }
    }

    #[test]
    fn flags_beat_env_and_additional_env_beats_primary() {
        let env: HashMap<&str, &str> = [
            ("REDIRECT_DNS", "false"),
            ("ISTIO_META_DNS_CAPTURE", "true"),
            ("ISTIO_INBOUND_PORTS", "80"),
        ]
        .into();
        let get = |k: &str| env.get(k).map(|v| v.to_string());
        let raw = redirect(&["-b", "443"]).to_raw(&get);
        assert_eq!(
            raw.inbound_ports_include,
            Some(Setting::new(
                "-b".replace("-b", "--istio-inbound-ports"),
                "443"
            ))
        );
        assert_eq!(
            raw.redirect_dns,
            Some(Setting::new("ISTIO_META_DNS_CAPTURE", "true"))
        );
        let raw = redirect(&[]).to_raw(&get);
        assert_eq!(
            raw.inbound_ports_include,
            Some(Setting::new("ISTIO_INBOUND_PORTS", "80"))
        );
    }

    #[test]
    fn short_forms_empty_values_and_bare_booleans() {
        let raw =
            redirect(&["-b", "", "-i", "*", "--redirect-dns", "-p", "15001"]).to_raw(&|_| None);
        assert_eq!(raw.inbound_ports_include.unwrap().value, "");
        assert_eq!(raw.outbound_ip_ranges_include.unwrap().value, "*");
        assert_eq!(raw.redirect_dns.unwrap().value, "true");
        let raw = redirect(&["--drop-invalid=false"]).to_raw(&|_| None);
        assert_eq!(raw.drop_invalid.unwrap().value, "false");
    }
}
