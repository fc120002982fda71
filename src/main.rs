//! `mesh-redirect`: apply, render, verify and remove Istio's sidecar redirect rules.
//!
//! Exit codes: 0 success; 1 `verify` found differences; 2 invalid input (nothing touched);
//! 3 the namespace could not be entered; 4 the kernel refused (nothing changed); 5 the node
//! installer could not configure the node; 126 `validate` found the redirect not working.

use clap::Parser;
use mesh_redirect::cli::{Backend, Cli, Command, RedirectArgs};
use mesh_redirect::config::{Config, ConfigError, HostGroups};
use mesh_redirect::engine::{self, EngineError};
use mesh_redirect::netns::Netns;
use mesh_redirect::nft::batch::FaultInjection;
use mesh_redirect::nft::render::render;
use mesh_redirect::xt::render::render as render_iptables;
use std::process::ExitCode;

fn config(args: &RedirectArgs) -> Result<Config, ConfigError> {
    // A value that is not UTF-8 is kept (lossily) so that validation rejects it naming the
    // variable, instead of silently falling back to the default.
    let raw = args.to_raw(&|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()));
    raw.validate(&HostGroups::default())
}

/// The installer's options from flags and environment; plugin settings are checked by the
/// installer itself before anything is written.
fn install_options(
    node: &mesh_redirect::cli::NodeArgs,
) -> Result<mesh_redirect::install::InstallOptions, Failure> {
    use serde_json::Value;
    let mut plugin = match node.plugin_config.as_deref() {
        None | Some("") => serde_json::Map::new(),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => m,
            _ => {
                return Err(Failure::Input(format!(
                    "invalid value {text:?} for --plugin-config: expected a JSON object"
                )))
            }
        },
    };
    if let Some(b) = &node.backend {
        plugin.insert("backend".into(), Value::String(b.clone()));
    }
    if let Some(ns) = &node.exclude_namespaces {
        let list: Vec<Value> = ns
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| Value::String(s.into()))
            .collect();
        plugin.insert("exclude_namespaces".into(), Value::Array(list));
    }
    if let Some(l) = &node.log_level {
        plugin.insert("plugin_log_level".into(), Value::String(l.clone()));
    }
    if let Some(t) = &node.api_timeout {
        plugin.insert("api_timeout".into(), Value::String(t.clone()));
    }
    Ok(mesh_redirect::install::InstallOptions {
        cni_bin_dir: node.cni_bin_dir.clone(),
        cni_conf_dir: node.cni_conf_dir.clone(),
        host_cni_conf_dir: node.host_cni_conf_dir.clone(),
        service_account_dir: node.service_account_dir.clone(),
        plugin,
        ..mesh_redirect::install::InstallOptions::default().with_env()
    })
}

fn init_logging(verbose: u8) {
    use tracing::Level;
    // A plain level (no filter expressions): building a regex-based filter would cost more
    // than the whole apply.
    let level = match std::env::var("MESH_REDIRECT_LOG")
        .ok()
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("error") => Level::ERROR,
        Some("warn") => Level::WARN,
        Some("debug") => Level::DEBUG,
        Some("trace") => Level::TRACE,
        Some(_) | None => match verbose {
            0 => Level::INFO,
            1 => Level::DEBUG,
            _ => Level::TRACE,
        },
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .init();
}

fn fault_injection() -> FaultInjection {
    #[cfg(feature = "fault-injection")]
    {
        // MESH_REDIRECT_FAULT=last-message,race (test builds only)
        let fault = std::env::var("MESH_REDIRECT_FAULT").unwrap_or_default();
        FaultInjection {
            fail_last_message: fault.split(',').any(|f| f == "last-message"),
            race_first_write: fault.split(',').any(|f| f == "race"),
        }
    }
    #[cfg(not(feature = "fault-injection"))]
    FaultInjection::default()
}

enum Failure {
    /// install/uninstall could not configure the node.
    Node(String),
    /// The redirect does not work (validate): Istio's exit code 126.
    NotRedirected(String),
    Input(String),
    Netns(String),
    Kernel(String),
    Drift,
}

fn engine_failure(e: EngineError) -> Failure {
    match e {
        EngineError::Netns(e) => Failure::Netns(e.to_string()),
        other => Failure::Kernel(other.to_string()),
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Render { redirect, backend } => {
            let cfg = config(&redirect).map_err(|e| Failure::Input(e.to_string()))?;
            match backend {
                Backend::IptablesLegacy => print!(
                    "{}",
                    render_iptables(&engine::plan(&cfg, engine::Backend::IptablesLegacy))
                ),
                Backend::Nftables | Backend::Auto => {
                    print!("{}", render(&engine::plan(&cfg, engine::Backend::Nftables)))
                }
            }
            Ok(())
        }
        Command::Apply { target, redirect } => {
            let cfg = config(&redirect).map_err(|e| Failure::Input(e.to_string()))?;
            let ns = Netns::open(&target.netns).map_err(|e| Failure::Netns(e.to_string()))?;
            let report = engine::apply(&ns, &cfg, target.backend.choice(), fault_injection())
                .map_err(engine_failure)?;
            tracing::info!(
                netns = ns.path(),
                backend = report.decision.backend.name(),
                because = report.decision.reason,
                objects = report.objects,
                messages = report.messages,
                replaced = report.replaced,
                routes = report.routes_added.len(),
                retries = report.retries,
                apply_us = report.elapsed.as_micros() as u64,
                "applied"
            );
            Ok(())
        }
        Command::Verify { target, redirect } => {
            let cfg = config(&redirect).map_err(|e| Failure::Input(e.to_string()))?;
            let ns = Netns::open(&target.netns).map_err(|e| Failure::Netns(e.to_string()))?;
            let (decision, differences) =
                engine::verify(&ns, &cfg, target.backend.choice()).map_err(engine_failure)?;
            let backend = decision.backend.name();
            if differences.is_empty() {
                tracing::info!(
                    netns = ns.path(),
                    backend,
                    because = decision.reason,
                    "the kernel matches the expected rules"
                );
                return Ok(());
            }
            for d in &differences {
                println!("{d}");
            }
            tracing::warn!(
                netns = ns.path(),
                backend,
                differences = differences.len(),
                "drift"
            );
            Err(Failure::Drift)
        }
        Command::Validate {
            netns,
            probe_port,
            inbound_capture_port,
            proxy_port,
            uid,
            gid,
            ipv6,
            timeout,
        } => {
            use mesh_redirect::config::parse;
            let input = |e: ConfigError| Failure::Input(e.to_string());
            let uid = parse::number_u32("--proxy-uid", &uid, "uid").map_err(input)?;
            let opts = mesh_redirect::validate::ValidateOptions {
                probe_port: parse::port("--iptables-probe-port", &probe_port).map_err(input)?,
                inbound_capture_port: parse::port("--inbound-capture-port", &inbound_capture_port).map_err(input)?,
                proxy_port: parse::port("--envoy-port", &proxy_port).map_err(input)?,
                uid,
                gid: match gid {
                    Some(g) => parse::number_u32("--proxy-gid", &g, "gid").map_err(input)?,
                    None => uid,
                },
                ipv6,
                timeout: mesh_redirect::cni::netconf::duration("--probe-timeout", &serde_json::Value::String(timeout.clone()))
                    .map_err(|_| Failure::Input(format!("invalid value {timeout:?} for --probe-timeout: expected a duration such as 5s")))?,
            };
            let result = match netns {
                Some(n) => {
                    let ns = Netns::open(&n).map_err(|e| Failure::Netns(e.to_string()))?;
                    ns.run(|| mesh_redirect::validate::validate(&opts))
                        .map_err(|e| Failure::Netns(e.to_string()))?
                }
                None => mesh_redirect::validate::validate(&opts),
            };
            match result {
                Ok(v) => {
                    println!(
                        "redirect validated: a connection to {} as uid {} landed on {} (original destination {})",
                        v.probe, opts.uid, v.landed_on, v.original_destination
                    );
                    Ok(())
                }
                Err(e @ mesh_redirect::validate::ValidateError::Listen { .. }) => {
                    Err(Failure::Input(e.to_string()))
                }
                Err(e) => Err(Failure::NotRedirected(e.to_string())),
            }
        }
        Command::Install {
            node,
            once,
            ready_file,
            cleanup_on_exit,
        } => {
            let mut opts = install_options(&node)?;
            opts.once = once;
            opts.ready_file = ready_file;
            opts.cleanup_on_exit = match cleanup_on_exit.as_deref() {
                None => false,
                Some(v) => mesh_redirect::config::parse::boolean("--cleanup-on-exit", v)
                    .map_err(|e| Failure::Input(e.to_string()))?,
            };
            mesh_redirect::install::run(&opts).map_err(|e| Failure::Node(e.to_string()))
        }
        Command::Uninstall { node } => {
            let opts = install_options(&node)?;
            let report = mesh_redirect::install::uninstall(&opts)
                .map_err(|e| Failure::Node(e.to_string()))?;
            tracing::info!(
                conflists_updated = report.conflists_updated.len(),
                conflists_deleted = report.conflists_deleted.len(),
                kubeconfig_removed = report.kubeconfig_removed,
                binary_removed = report.binary_removed,
                "uninstalled"
            );
            Ok(())
        }
        Command::Remove { target, redirect } => {
            let cfg = config(&redirect).map_err(|e| Failure::Input(e.to_string()))?;
            let ns = Netns::open(&target.netns).map_err(|e| Failure::Netns(e.to_string()))?;
            let report = engine::remove(&ns, &cfg).map_err(engine_failure)?;
            tracing::info!(
                netns = ns.path(),
                tables = report.tables_removed.len(),
                routes = report.routes_removed.len(),
                "removed"
            );
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    // Run by a container runtime as a CNI plugin.
    if std::env::var_os("CNI_COMMAND").is_some() {
        return mesh_redirect::cni::main(fault_injection());
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_logging(cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Drift) => ExitCode::from(1),
        Err(Failure::Node(m)) => {
            tracing::error!("{m}");
            ExitCode::from(5)
        }
        Err(Failure::NotRedirected(m)) => {
            tracing::error!("{m}");
            ExitCode::from(126)
        }
        Err(Failure::Input(m)) => {
            tracing::error!("{m}");
            ExitCode::from(2)
        }
        Err(Failure::Netns(m)) => {
            tracing::error!("{m}");
            ExitCode::from(3)
        }
        Err(Failure::Kernel(m)) => {
            tracing::error!("{m}");
            ExitCode::from(4)
        }
    }
}
