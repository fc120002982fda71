//! `mesh-redirect`: apply, render, verify and remove Istio's sidecar redirect rules; validate
//! a pod; install the CNI plugin on a node. One function per subcommand; every failure is an
//! [`Error`] that knows its exit code (`mesh_redirect::error` lists them all).

use clap::Parser;
use mesh_redirect::cli::{Backend, Cli, Command, NodeArgs, RedirectArgs, Target, ValidateArgs};
use mesh_redirect::config::{parse, Config, HostGroups};
use mesh_redirect::engine;
use mesh_redirect::error::{Error, Operation};
use mesh_redirect::netns::Netns;
use mesh_redirect::nft::render::render;
use mesh_redirect::xt::render::render as render_iptables;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn config(args: &RedirectArgs) -> Result<Config, Error> {
    // A value that is not UTF-8 is kept (lossily) so that validation rejects it naming the
    // variable, instead of silently falling back to the default.
    let raw = args.to_raw(&|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()));
    raw.validate(&HostGroups::default()).map_err(Error::from)
}

/// The validated configuration and the opened namespace of a namespace command.
fn target(target: &Target, redirect: &RedirectArgs) -> Result<(Config, Netns), Error> {
    let cfg = config(redirect)?;
    let ns = Netns::open(&target.netns)?;
    Ok((cfg, ns))
}

fn engine_error(
    operation: Operation,
    netns: &str,
) -> impl FnOnce(engine::EngineError) -> Error + '_ {
    move |source| Error::Engine {
        operation,
        netns: netns.to_string(),
        source,
    }
}

/// The installer's options from flags and environment; plugin settings are checked by the
/// installer itself before anything is written.
fn install_options(
    node: &mesh_redirect::cli::NodeArgs,
) -> Result<mesh_redirect::install::InstallOptions, Error> {
    // The only refusal: --plugin-config is not a JSON object.
    let plugin = node.plugin_settings().map_err(|_| Error::InvalidFlag {
        flag: "--plugin-config",
        value: node.plugin_config.clone().unwrap_or_default(),
        expected: "expected a JSON object",
    })?;
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
    mesh_redirect::cli::init_stderr_logging(level);
}

fn cmd_render(redirect: &RedirectArgs, backend: Backend) -> Result<(), Error> {
    let cfg = config(redirect)?;
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

/// `apply` is the last thing this process does in a namespace: its own thread enters it and
/// stays there (no thread is made: `engine::apply_as_last`).
fn cmd_apply(t: &Target, redirect: &RedirectArgs) -> Result<(), Error> {
    let (cfg, ns) = target(t, redirect)?;
    let path = ns.path().to_string();
    let report = engine::apply_as_last(ns, &cfg, t.backend.choice())
        .map_err(engine_error(Operation::Apply, &path))?;
    tracing::info!(
        netns = path,
        backend = report.decision.backend.name(),
        because = report.decision.reason,
        objects = report.objects,
        messages = report.messages,
        replaced = report.replaced,
        routes = report.routes_added.len(),
        retries = report.retries,
        migrated_from = report.migrated_from.map(|b| b.name()).unwrap_or("-"),
        apply_us = report.elapsed.as_micros() as u64,
        "applied"
    );
    Ok(())
}

fn cmd_verify(t: &Target, redirect: &RedirectArgs) -> Result<(), Error> {
    let (cfg, ns) = target(t, redirect)?;
    let report = engine::verify(&ns, &cfg, t.backend.choice())
        .map_err(engine_error(Operation::Verify, ns.path()))?;
    let backend = report.decision.backend.name();
    if report.differences.is_empty() {
        tracing::info!(
            netns = ns.path(),
            backend,
            because = report.decision.reason,
            "the kernel matches the expected rules"
        );
        return Ok(());
    }
    for d in &report.differences {
        println!("{d}");
    }
    tracing::warn!(
        netns = ns.path(),
        backend,
        differences = report.differences.len(),
        "drift"
    );
    Err(Error::Drift(report.differences.len()))
}

fn cmd_remove(t: &Target, redirect: &RedirectArgs) -> Result<(), Error> {
    let (cfg, ns) = target(t, redirect)?;
    let report = engine::remove(&ns, &cfg).map_err(engine_error(Operation::Remove, ns.path()))?;
    tracing::info!(
        netns = ns.path(),
        tables = report.tables_removed.len(),
        routes = report.routes_removed.len(),
        "removed"
    );
    Ok(())
}

fn validate_options(a: &ValidateArgs) -> Result<mesh_redirect::validate::ValidateOptions, Error> {
    let uid = parse::number_u32("--proxy-uid", &a.uid, "uid")?;
    let timeout = mesh_redirect::cni::netconf::duration(
        "--probe-timeout",
        &serde_json::Value::String(a.timeout.clone()),
    )
    .map_err(|_| Error::InvalidFlag {
        flag: "--probe-timeout",
        value: a.timeout.clone(),
        expected: "expected a duration such as 5s",
    })?;
    Ok(mesh_redirect::validate::ValidateOptions {
        probe_port: parse::port("--iptables-probe-port", &a.probe_port)?,
        inbound_capture_port: parse::port("--inbound-capture-port", &a.inbound_capture_port)?,
        proxy_port: parse::port("--envoy-port", &a.proxy_port)?,
        uid,
        gid: match &a.gid {
            Some(g) => parse::number_u32("--proxy-gid", g, "gid")?,
            None => uid,
        },
        ipv6: a.ipv6,
        timeout,
    })
}

fn cmd_validate(a: ValidateArgs) -> Result<(), Error> {
    use mesh_redirect::validate::validate;
    let opts = validate_options(&a)?;
    let result = match &a.netns {
        Some(n) => Netns::open(n)?.run(|| validate(&opts))?,
        None => validate(&opts),
    };
    let v = result?;
    println!(
        "redirect validated: a connection to {} as uid {} landed on {} (original destination {})",
        v.probe, opts.uid, v.landed_on, v.original_destination
    );
    Ok(())
}

fn cmd_install(
    node: &NodeArgs,
    once: bool,
    ready_file: Option<PathBuf>,
    cleanup_on_exit: Option<&str>,
) -> Result<(), Error> {
    let mut opts = install_options(node)?;
    opts.once = once;
    opts.ready_file = ready_file;
    opts.cleanup_on_exit = match cleanup_on_exit {
        None => false,
        Some(v) => parse::boolean("--cleanup-on-exit", v)?,
    };
    Ok(mesh_redirect::install::run(&opts)?)
}

fn cmd_uninstall(node: &NodeArgs) -> Result<(), Error> {
    let opts = install_options(node)?;
    let report = mesh_redirect::install::uninstall(&opts)?;
    tracing::info!(
        conflists_updated = report.conflists_updated.len(),
        conflists_deleted = report.conflists_deleted.len(),
        kubeconfig_removed = report.kubeconfig_removed,
        binary_removed = report.binary_removed,
        "uninstalled"
    );
    Ok(())
}

/// The readiness probe: the installer writes its ready file once the node is configured and
/// removes it when it cannot repair it.
fn cmd_ready(file: &Path) -> Result<(), Error> {
    if let Err(e) = std::fs::metadata(file) {
        eprintln!("not ready: {}: {e}", file.display());
        std::process::exit(1);
    }
    Ok(())
}

/// `mesh-redirect agent ARGS`: replaces this process with `mesh-redirect-agent ARGS` from
/// the same directory.
fn cmd_agent(args: &[std::ffi::OsString]) -> Result<(), Error> {
    use std::os::unix::process::CommandExt;
    let here = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let agent = here.with_file_name("mesh-redirect-agent");
    let e = std::process::Command::new(&agent).args(args).exec();
    eprintln!("cannot run {}: {e}", agent.display());
    std::process::exit(5);
}

fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Render { redirect, backend } => cmd_render(&redirect, backend),
        Command::Apply { target, redirect } => cmd_apply(&target, &redirect),
        Command::Verify { target, redirect } => cmd_verify(&target, &redirect),
        Command::Remove { target, redirect } => cmd_remove(&target, &redirect),
        Command::Validate(args) => cmd_validate(args),
        Command::Install {
            node,
            once,
            ready_file,
            cleanup_on_exit,
        } => cmd_install(&node, once, ready_file, cleanup_on_exit.as_deref()),
        Command::Uninstall { node } => cmd_uninstall(&node),
        Command::Ready { file } => cmd_ready(&file),
        Command::Agent { args } => cmd_agent(&args),
    }
}

/// `--ipv6 true`: an on/off flag takes its value attached (`--ipv6=true`), so clap sees a
/// stray `true`; say how to write it.
fn detached_bool_hint(args: impl Iterator<Item = String>) -> Option<String> {
    let args: Vec<String> = args.collect();
    args.windows(2).find_map(|w| {
        let is_bool_flag = mesh_redirect::config::knobs::ALL.iter().any(|k| {
            k.syntax == mesh_redirect::config::knobs::Syntax::Bool && k.flag == Some(w[0].as_str())
        });
        let is_bool = matches!(w[1].as_str(), "true" | "false" | "1" | "0");
        (is_bool_flag && is_bool).then(|| {
            format!(
                "hint: write {}={} (the value of an on/off flag is attached with '=')",
                w[0], w[1]
            )
        })
    })
}

fn main() -> ExitCode {
    // Run by a container runtime as a CNI plugin.
    if std::env::var_os("CNI_COMMAND").is_some() {
        return mesh_redirect::cni::main();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            if let Some(hint) = detached_bool_hint(std::env::args()) {
                eprintln!("{hint}");
            }
            return ExitCode::from(code);
        }
    };
    init_logging(cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Drift was printed line by line on stdout already.
            if !matches!(e, Error::Drift(_)) {
                tracing::error!("{e}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}
