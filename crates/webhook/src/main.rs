//! `plugin-webhook`: serves the mutating admission webhook (default), or writes development
//! certificates (`certs`). Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kosmos_webhook::server::{self, ServeArgs};
use kosmos_webhook::tls;

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

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    server::init_logging(args.log_format);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let client = kube::Client::try_default().await?;
        let mut running = server::start(&args, client).await?;
        let failed = tokio::select! {
            result = running.wait() => Some(result),
            _ = shutdown_signal() => None,
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

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
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
