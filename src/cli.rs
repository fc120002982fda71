//! The command line: `istio-iptables` flag names, short forms and environment variables, with
//! Istio's precedence (`docs/istio-semantics.md` §2.1): a flag beats the environment, and a
//! second ("additional") variable beats the first (`ISTIO_META_DNS_CAPTURE` over
//! `REDIRECT_DNS`). The redirect flags are not declared here: [`RedirectArgs`] builds them from
//! the knob table ([`knobs::ALL`]).

use crate::config::knobs::{self, Fallback, Knob, Syntax};
use crate::config::RawConfig;
use clap::{Arg, ArgAction, ArgMatches, Args, FromArgMatches, Parser, Subcommand, ValueEnum};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The whole command line: a subcommand and the log level.
#[derive(Debug, Parser)]
#[command(
    name = "mesh-redirect",
    version,
    about = "Istio sidecar traffic redirection, programmed natively into a network namespace"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// More logging on stderr (-v debug, -vv trace); MESH_REDIRECT_LOG=error/warn/info/debug/trace overrides.
    #[arg(short = 'v', long = "verbose", global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Program the redirect rules into a network namespace (one atomic batch).
    Apply {
        /// The namespace and backend.
        #[command(flatten)]
        target: Target,
        /// Istio's capture knobs.
        #[command(flatten)]
        redirect: RedirectArgs,
    },
    /// Print what `apply` would program, in the format of Istio's goldens (nft transaction,
    /// or iptables-restore payloads with --backend iptables-legacy).
    Render {
        /// Which generator's format to print.
        #[arg(long, value_enum, default_value_t = Backend::Nftables)]
        backend: Backend,
        /// Istio's capture knobs.
        #[command(flatten)]
        redirect: RedirectArgs,
    },
    /// Compare the namespace with the expected rules: exit 0 when they match, 1 with a diff.
    Verify {
        /// The namespace and backend.
        #[command(flatten)]
        target: Target,
        /// Istio's capture knobs.
        #[command(flatten)]
        redirect: RedirectArgs,
    },
    /// Prove the redirect works from inside a pod's namespace (what istio-validation does):
    /// exit 0 when a probe connection is redirected, 126 with the reason when it is not.
    Validate(ValidateArgs),
    /// Node installer (run by the DaemonSet): copy this binary into the CNI bin dir, write
    /// the plugin's kubeconfig, chain the plugin into the primary CNI configuration; then
    /// watch and repair until SIGTERM (unless --once).
    Install {
        /// The node's CNI directories and the plugin settings.
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
        /// The node's CNI directories and the plugin settings.
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Delete our tables and policy routes (only ours); succeeds when there is nothing to delete.
    Remove {
        /// The namespace and backend.
        #[command(flatten)]
        target: Target,
        /// Istio's capture knobs.
        #[command(flatten)]
        redirect: RedirectArgs,
    },
    /// The node agent (pod cache for the plugin, metrics, installer): runs
    /// `mesh-redirect-agent` from this binary's directory with the given arguments (see
    /// `mesh-redirect-agent --help`). A binary of its own so that the plugin stays lean.
    #[command(disable_help_flag = true)]
    Agent {
        /// The agent's arguments.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<std::ffi::OsString>,
    },
    /// The installer pod's readiness probe (the image has no shell or `cat`): exit 0 when the
    /// ready file exists, 1 with the reason on stderr when it does not.
    Ready {
        /// The installer's --ready-file.
        #[arg(long, env = "READY_FILE", value_name = "PATH")]
        file: PathBuf,
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

impl NodeArgs {
    /// The plugin settings these flags stand for: `--plugin-config`'s object with the
    /// dedicated flags on top (what `install` and the agent write into our conflist entry).
    /// `Err` carries what is wrong with `--plugin-config`.
    pub fn plugin_settings(&self) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        use serde_json::Value;
        let mut plugin = match self.plugin_config.as_deref() {
            None | Some("") => serde_json::Map::new(),
            Some(text) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(m)) => m,
                _ => return Err("expected a JSON object".into()),
            },
        };
        if let Some(b) = &self.backend {
            plugin.insert("backend".into(), Value::String(b.clone()));
        }
        if let Some(ns) = &self.exclude_namespaces {
            let list: Vec<Value> = ns
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| Value::String(s.into()))
                .collect();
            plugin.insert("exclude_namespaces".into(), Value::Array(list));
        }
        if let Some(l) = &self.log_level {
            plugin.insert("plugin_log_level".into(), Value::String(l.clone()));
        }
        if let Some(t) = &self.api_timeout {
            plugin.insert("api_timeout".into(), Value::String(t.clone()));
        }
        Ok(plugin)
    }
}

/// `--backend`: which kernel interface programs the rules.
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
    /// The engine's backend choice for this flag value.
    pub fn choice(self) -> crate::engine::BackendChoice {
        match self {
            Backend::Nftables => crate::engine::BackendChoice::Nftables,
            Backend::IptablesLegacy => crate::engine::BackendChoice::IptablesLegacy,
            Backend::Auto => crate::engine::BackendChoice::Auto,
        }
    }
}

/// The namespace to program and the backend to program it with.
#[derive(Debug, Args)]
pub struct Target {
    /// Network namespace: a path (/var/run/netns/NAME, /proc/PID/ns/net) or a name as `ip netns` shows it.
    #[arg(long, value_name = "PATH|NAME")]
    pub netns: String,
    /// The backend; `auto` picks the one already in use, else nftables when it answers.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub backend: Backend,
}

/// Istio's capture knobs as flags, one per entry of [`knobs::ALL`] that has a flag. Lists
/// are comma separated; an empty value (`-b ''`) means none.
#[derive(Debug, Clone, Default)]
pub struct RedirectArgs {
    /// The value given for each flag, by long name (`envoy-port`).
    given: BTreeMap<&'static str, String>,
}

/// The knobs that have a flag, with its long name.
fn flagged() -> impl Iterator<Item = (&'static Knob, &'static str)> {
    knobs::ALL
        .iter()
        .filter_map(|k| k.long().map(|long| (*k, long)))
}

/// The `--help` line of a knob: its help text, then its variables and default.
fn help(knob: &Knob) -> String {
    let mut notes = Vec::new();
    if !knob.env.is_empty() {
        notes.push(format!("[env: {}]", knob.env.join(", ")));
    }
    match knob.fallback {
        Fallback::Empty => {}
        Fallback::Value(v) | Fallback::Derived(v) => notes.push(format!("[default: {v}]")),
    }
    if notes.is_empty() {
        knob.help.to_string()
    } else {
        format!("{}. {}", knob.help, notes.join(" "))
    }
}

/// The clap argument of a knob that has a flag.
fn arg(knob: &Knob, long: &'static str) -> Arg {
    let arg = Arg::new(long)
        .long(long)
        .help(help(knob))
        .action(ArgAction::Set)
        .value_parser(clap::value_parser!(String));
    let arg = match knob.short {
        Some(short) => arg.short(short),
        None => arg,
    };
    match knob.syntax {
        Syntax::Value(name) => arg.value_name(name),
        Syntax::Bool => arg
            .value_name("BOOL")
            .num_args(0..=1)
            .require_equals(true)
            .default_missing_value("true"),
    }
}

impl Args for RedirectArgs {
    /// The redirect flags are declared only when their subcommand is the one parsed
    /// (`defer`): ≈ 40 flags with their help lines, in four subcommands, cost every
    /// invocation ≈ 0.1 ms of its ≈ 1.5 ms otherwise.
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.defer(|cmd| flagged().fold(cmd, |cmd, (knob, long)| cmd.arg(arg(knob, long))))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for RedirectArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = RedirectArgs::default();
        args.update_from_arg_matches(matches)?;
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        for (_, long) in flagged() {
            if let Some(value) = matches.get_one::<String>(long) {
                self.given.insert(long, value.clone());
            }
        }
        Ok(())
    }
}

impl RedirectArgs {
    /// The raw configuration from these flags and the given environment.
    pub fn to_raw(&self, env: &dyn Fn(&str) -> Option<String>) -> RawConfig {
        let mut raw = RawConfig::default();
        for knob in knobs::ALL {
            let flag = knob.long().and_then(|long| self.given.get(long));
            *(knob.field.get_mut)(&mut raw) = knob.pick(flag.map(String::as_str), env);
        }
        raw
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

/// The README's "Redirect flags" table, rendered from the knob table ([`knobs::ALL`]).
pub fn redirect_flags_markdown() -> String {
    let code = |s: &str| format!("`{s}`");
    let mut out = String::from("| flag | env | default | meaning |\n|---|---|---|---|\n");
    for knob in knobs::ALL {
        let flag = match (knob.flag, knob.short, knob.syntax) {
            (None, ..) => "—".to_string(),
            (Some(f), _, Syntax::Bool) => code(&format!("{f}[=BOOL]")),
            (Some(f), Some(s), _) => code(&format!("-{s}, {f}")),
            (Some(f), None, Syntax::Value(name)) => code(&format!("{f} {name}")),
        };
        let env = match knob.env {
            [] => "—".to_string(),
            names => names.iter().map(|n| code(n)).collect::<Vec<_>>().join(", "),
        };
        let default = match knob.fallback {
            Fallback::Empty => "—".to_string(),
            Fallback::Value(v) => code(v),
            Fallback::Derived(text) => text.to_string(),
        };
        out.push_str(&format!("| {flag} | {env} | {default} | {} |\n", knob.help));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Setting;
    use std::collections::HashMap;

    fn redirect(args: &[&str]) -> RedirectArgs {
        let mut full = vec!["mesh-redirect", "render"];
        full.extend_from_slice(args);
        match Cli::try_parse_from(full).unwrap().command {
            Command::Render { redirect, .. } => redirect,
            _ => unreachable!(),
        }
    }

    /// The one field a knob feeds, after parsing `flags` with `env`; every other field empty.
    fn only_field(knob: &Knob, flags: &[&str], env: &dyn Fn(&str) -> Option<String>) -> Setting {
        let mut raw = redirect(flags).to_raw(env);
        let setting = (knob.field.get_mut)(&mut raw).take();
        assert_eq!(raw, RawConfig::default(), "{flags:?} set another field");
        setting.unwrap_or_else(|| panic!("{flags:?} did not set {}", knob.name()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
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
            Some(Setting::new("--istio-inbound-ports", "443"))
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

    #[test]
    fn every_flag_round_trips_through_clap_into_its_field() {
        let none = |_: &str| None;
        for (knob, long) in flagged() {
            let flag = knob.flag.unwrap();
            let (forms, value): (Vec<Vec<String>>, _) = match knob.syntax {
                Syntax::Value(_) => {
                    let mut forms = vec![vec![flag.to_string(), "7".into()]];
                    forms.extend(knob.short.map(|s| vec![format!("-{s}"), "7".into()]));
                    (forms, "7")
                }
                Syntax::Bool => (vec![vec![format!("--{long}=false")]], "false"),
            };
            for form in forms {
                let form: Vec<&str> = form.iter().map(String::as_str).collect();
                assert_eq!(only_field(knob, &form, &none), Setting::new(flag, value));
            }
            if knob.syntax == Syntax::Bool {
                assert_eq!(only_field(knob, &[flag], &none), Setting::new(flag, "true"));
                assert!(Cli::try_parse_from(["mesh-redirect", "render", flag, "true"]).is_err());
            }
        }
    }

    #[test]
    fn every_variable_feeds_its_field_and_the_flag_beats_it() {
        for knob in knobs::ALL {
            for name in knob.env {
                let env = |n: &str| (n == *name).then(|| "9".to_string());
                assert_eq!(only_field(knob, &[], &env), Setting::new(*name, "9"));
                if let Some(flag) = knob.flag {
                    let set = format!("{flag}=1");
                    assert_eq!(only_field(knob, &[&set], &env), Setting::new(flag, "1"));
                }
            }
            if let Some(later) = knob.env.get(1) {
                let env = |n: &str| knob.env.contains(&n).then(|| n.to_string());
                assert_eq!(only_field(knob, &[], &env), Setting::new(*later, *later));
            }
        }
    }

    /// The "Redirect flags" table in README.md: from its header line through its last row.
    fn readme_table(readme: &str) -> std::ops::Range<usize> {
        let section = readme
            .find("### Redirect flags")
            .expect("a Redirect flags section");
        let start = section + readme[section..].find("\n| flag |").expect("a table") + 1;
        let len: usize = readme[start..]
            .split_inclusive('\n')
            .take_while(|line| line.starts_with('|'))
            .map(str::len)
            .sum();
        start..start + len
    }

    #[test]
    fn readme_lists_exactly_the_knob_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
        let readme = std::fs::read_to_string(path).unwrap();
        let span = readme_table(&readme);
        let expected = redirect_flags_markdown();
        if std::env::var_os("MESH_REDIRECT_REGENERATE").is_some() {
            let mut updated = readme.clone();
            updated.replace_range(span.clone(), &expected);
            std::fs::write(path, updated).unwrap();
            return;
        }
        assert_eq!(
            readme[span].trim_end(),
            expected.trim_end(),
            "README's Redirect flags table differs from config::knobs; \
             regenerate it with MESH_REDIRECT_REGENERATE=1 cargo test --lib readme"
        );
    }
}

/// `validate`'s flags (Istio's `istio-iptables` probe flags).
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Run in this namespace (default: the one we are in, as an init container).
    #[arg(long, value_name = "PATH|NAME")]
    pub netns: Option<String>,
    /// The port the probe connects to (on 127.0.0.6, or ::6 with --ipv6).
    #[arg(
        long = "iptables-probe-port",
        default_value = "15002",
        value_name = "PORT"
    )]
    pub probe_port: String,
    /// The inbound capture port the probe must land on.
    #[arg(
        short = 'z',
        long = "inbound-capture-port",
        default_value = "15006",
        value_name = "PORT"
    )]
    pub inbound_capture_port: String,
    /// The outbound capture port (also listened on).
    #[arg(
        short = 'p',
        long = "envoy-port",
        default_value = "15001",
        value_name = "PORT"
    )]
    pub proxy_port: String,
    /// The proxy's uid and gid the probe connects as.
    #[arg(
        short = 'u',
        long = "proxy-uid",
        default_value = "1337",
        value_name = "UID"
    )]
    pub uid: String,
    /// The proxy's gid the probe connects as (default: the uid).
    #[arg(short = 'g', long = "proxy-gid", value_name = "GID")]
    pub gid: Option<String>,
    /// Probe over IPv6 (::6 → [::1]:15006).
    #[arg(long)]
    pub ipv6: bool,
    /// How long to keep trying.
    #[arg(long = "probe-timeout", default_value = "5s", value_name = "DURATION")]
    pub timeout: String,
}

/// Logs to stderr at `level`, plain (no colours, no module targets): what `kubectl logs`
/// and a terminal read. A plain level, not a filter expression: building a regex-based
/// filter would cost more than a whole apply.
pub fn init_stderr_logging(level: tracing::Level) {
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .init();
}
