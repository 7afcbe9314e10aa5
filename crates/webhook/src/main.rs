//! `plugin-webhook`: serves the mutating admission webhook (default), writes development
//! certificates (`certs`), or runs the plugin author's offline loop (`validate`, `render`).
//! Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kosmos_api::contract::Action;
use kosmos_webhook::authoring::{self, RenderError, RenderOptions, RenderRequest};
use kosmos_webhook::mutation::{RecursiveReadOnly, Settings};
use kosmos_webhook::server::{self, ServeArgs};
use kosmos_webhook::tls;

// musl's allocator (the images are static musl builds) halved the webhook's throughput against
// the same code on glibc; with mimalloc the shipped binary comes within ~10% of it
// (docs/benchmarks.md, "Findings (2026-12-07 evening …)").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Mutating admission webhook that turns bare executor Jobs into plugin installs.
#[derive(Parser)]
#[command(
    name = "plugin-webhook",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the webhook (the default).
    Serve(Box<ServeArgs>),
    /// Write a development CA (ca.crt) and serving certificate (tls.crt, tls.key).
    Certs(CertsArgs),
    /// Check plugins and VirtualClusters offline, as the apiserver and the webhook would.
    /// Exit 0: valid; 1: findings (one line each: file, object, field, message); 2: cannot run.
    Validate(ValidateArgs),
    /// Print the executor Job the webhook makes of a plugin, without a cluster.
    /// Exit 0: the Job on stdout; 1: the webhook's denial (or findings) on stderr; 2: cannot run.
    Render(RenderArgs),
}

#[derive(clap::Args)]
struct ValidateArgs {
    /// Files to check (YAML or JSON, several documents each); a folder means its .yaml, .yml and
    /// .json files; `-` reads standard input.
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    files: Vec<PathBuf>,
    /// Namespace of objects that name none.
    #[arg(short, long, default_value = authoring::DEFAULT_NAMESPACE)]
    namespace: String,
    /// The webhook's --allowed-host-path-prefixes, to check hostPath sources against.
    #[arg(
        long,
        env = "PLUGIN_WEBHOOK_ALLOWED_HOST_PATH_PREFIXES",
        value_delimiter = ','
    )]
    allowed_host_path_prefixes: Vec<String>,
}

#[derive(clap::Args)]
struct RenderArgs {
    /// The plugin's file and optionally a VirtualCluster's (several documents each are fine);
    /// without a VirtualCluster, a stand-in called example-cluster is used.
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    files: Vec<PathBuf>,
    /// Which plugin, when the files hold several.
    #[arg(long)]
    plugin: Option<String>,
    /// Which VirtualCluster, when the files hold several.
    #[arg(long)]
    virtual_cluster: Option<String>,
    /// Render the install Job or the uninstall Job.
    #[arg(long, value_enum, default_value = "install")]
    action: ActionArg,
    /// Namespace of objects that name none.
    #[arg(short, long, default_value = authoring::DEFAULT_NAMESPACE)]
    namespace: String,
    /// The operator's --executor-image, for plugins that set no spec.executorImage.
    #[arg(long, env = "OPERATOR_EXECUTOR_IMAGE", default_value = authoring::DEFAULT_EXECUTOR_IMAGE)]
    executor_image: String,
    /// The webhook's --allowed-host-path-prefixes.
    #[arg(
        long,
        env = "PLUGIN_WEBHOOK_ALLOWED_HOST_PATH_PREFIXES",
        value_delimiter = ','
    )]
    allowed_host_path_prefixes: Vec<String>,
    /// The webhook's --recursive-read-only.
    #[arg(
        long,
        env = "PLUGIN_WEBHOOK_RECURSIVE_READ_ONLY",
        value_enum,
        default_value = "if-possible"
    )]
    recursive_read_only: RecursiveReadOnly,
    /// Output format of the Job.
    #[arg(short, long, value_enum, default_value = "yaml")]
    output: OutputArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ActionArg {
    Install,
    Uninstall,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OutputArg {
    Yaml,
    Json,
}

#[derive(clap::Args)]
struct CertsArgs {
    /// Folder to write into.
    #[arg(long, env = "PLUGIN_WEBHOOK_CERTS_OUT", default_value = "certs")]
    out: PathBuf,
    /// Name of the webhook's Service (its DNS names go into the certificate).
    #[arg(long, env = "PLUGIN_WEBHOOK_SERVICE", default_value = "plugin-webhook")]
    service: String,
    /// Namespace of the webhook's Service.
    #[arg(
        long,
        env = "PLUGIN_WEBHOOK_NAMESPACE",
        default_value = "kosmos-system"
    )]
    namespace: String,
    /// More DNS names or IP addresses for the certificate (comma-separated).
    #[arg(long, env = "PLUGIN_WEBHOOK_EXTRA_NAMES", value_delimiter = ',')]
    extra_names: Vec<String>,
    /// Validity in days.
    #[arg(long, env = "PLUGIN_WEBHOOK_CERT_DAYS", default_value_t = 365)]
    days: u32,
}

fn main() -> ExitCode {
    // One crypto provider for the whole process (kube's client and our server), chosen
    // explicitly so nothing picks another at run time.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Validate(args)) => return validate(&args),
        Some(Command::Render(args)) => return render(args),
        Some(Command::Certs(args)) => certs(&args),
        Some(Command::Serve(args)) => serve(*args),
        None => serve(cli.serve),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plugin-webhook: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn certs(args: &CertsArgs) -> anyhow::Result<()> {
    let mut names = tls::dev_names(&args.service, &args.namespace);
    names.extend(args.extra_names.iter().filter(|n| !n.is_empty()).cloned());
    let certs = tls::generate(&names, args.days)?;
    tls::write(&certs, &args.out)?;
    println!(
        "wrote {0}/ca.crt, {0}/tls.crt, {0}/tls.key for {1}",
        args.out.display(),
        names.join(", ")
    );
    Ok(())
}

/// Exit status of validate and render when the command could not run (unreadable input).
const CANNOT_RUN: u8 = 2;

fn validate(args: &ValidateArgs) -> ExitCode {
    let (documents, mut findings) = match authoring::read_inputs(&args.files) {
        Ok(read) => read,
        Err(e) => {
            eprintln!("plugin-webhook validate: {e}");
            return ExitCode::from(CANNOT_RUN);
        }
    };
    let settings = Settings {
        allowed_host_path_prefixes: args.allowed_host_path_prefixes.clone(),
        ..Settings::default()
    };
    let report = authoring::validate(&documents, &args.namespace, &settings);
    findings.extend(report.findings);
    for finding in &findings {
        println!("{finding}");
    }
    eprintln!(
        "plugin-webhook validate: {} object(s) checked, {} other document(s) skipped, {} finding(s)",
        report.checked,
        report.skipped,
        findings.len()
    );
    if findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn render(args: RenderArgs) -> ExitCode {
    let (documents, findings) = match authoring::read_inputs(&args.files) {
        Ok(read) => read,
        Err(e) => {
            eprintln!("plugin-webhook render: {e}");
            return ExitCode::from(CANNOT_RUN);
        }
    };
    let request = RenderRequest {
        plugin: args.plugin,
        virtual_cluster: args.virtual_cluster,
        action: match args.action {
            ActionArg::Install => Action::Install,
            ActionArg::Uninstall => Action::Uninstall,
        },
        namespace: args.namespace,
        options: RenderOptions {
            settings: Settings {
                allowed_host_path_prefixes: args.allowed_host_path_prefixes,
                recursive_read_only: args.recursive_read_only,
                // Offline: no key, so the mark is the unsigned hash of the injection.
                mark_key: None,
            },
            executor_image: args.executor_image,
        },
    };
    let result = if findings.is_empty() {
        authoring::render(&documents, &request)
    } else {
        Err(RenderError::Findings(findings))
    };
    let job = match result {
        Ok(job) => job,
        Err(RenderError::Findings(findings)) => {
            for finding in findings {
                eprintln!("{finding}");
            }
            return ExitCode::FAILURE;
        }
        Err(RenderError::Denied { source, message }) => {
            eprintln!("{source}: denied by the webhook: {message}");
            return ExitCode::FAILURE;
        }
    };
    let text = match args.output {
        OutputArg::Yaml => serde_yaml::to_string(&job).map_err(|e| e.to_string()),
        OutputArg::Json => serde_json::to_string_pretty(&job)
            .map(|t| t + "\n")
            .map_err(|e| e.to_string()),
    };
    match text {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("plugin-webhook render: cannot print the Job: {e}");
            ExitCode::from(CANNOT_RUN)
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    kosmos_runtime::init_logging(args.log_format);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let client = kube::Client::try_default().await?;
        let mut running = server::start(&args, client).await?;
        let failed = tokio::select! {
            result = running.wait() => Some(result),
            () = kosmos_runtime::shutdown_signal() => None,
        };
        match failed {
            Some(result) => result,
            None => {
                tracing::info!("shutting down");
                running.stop(std::time::Duration::from_secs(10)).await;
                Ok(())
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn flags_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_is_the_default_and_certs_parses() {
        let cli = Cli::try_parse_from(["plugin-webhook", "--listen", "127.0.0.1:9443"]);
        assert!(matches!(cli, Ok(Cli { command: None, .. })));
        let cli = Cli::try_parse_from(["plugin-webhook", "certs", "--out", "x"]);
        assert!(matches!(
            cli,
            Ok(Cli {
                command: Some(Command::Certs(_)),
                ..
            })
        ));
    }
}
