//! `kosmos-bench`: the benchmarks behind `make bench`. Every figure is measured side by side
//! with a ceiling (the least the same work can cost here) and a peer (how others do it), in the
//! same run, alternating, over several rounds; reports give the median and the spread.

mod ceiling;
mod criterion;
mod fake_node;
mod machine;
mod operator;
mod reviews;
mod webhook;

use kosmos_bench::{fixture, load, proc, stats};

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Benchmarks of the webhook and the operator against their ceilings and peers.
#[derive(Parser)]
#[command(name = "kosmos-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The webhook against the ceiling and the controller-runtime peer.
    Webhook(webhook::WebhookArgs),
    /// The operator's scale run against a plain client and helm-controller.
    Operator(operator::OperatorArgs),
    /// Joins the sections in --out into report.md.
    Report {
        /// Folder of the sections.
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
    },
    /// Reads the criterion results of one review into mutate.md.
    Criterion(criterion::CriterionArgs),
    /// The ceiling server (started by `webhook`).
    Ceiling(ceiling::CeilingArgs),
    /// One review answered in a loop, for callgrind.
    Reviews(reviews::ReviewsArgs),
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ceiling(args) => ceiling::run(&args),
        Command::Report { out } => report(&out),
        Command::Criterion(args) => criterion::run(&args),
        Command::Reviews(args) => reviews::run(&args),
        Command::Webhook(args) => {
            runtime().and_then(|rt| rt.block_on(until_stopped(webhook::run(&args))))
        }
        Command::Operator(args) => {
            runtime().and_then(|rt| rt.block_on(until_stopped(operator::run(&args))))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kosmos-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `run` until it ends or the bench is told to stop (TERM or INT). Stopping drops the run,
/// and with it the servers it started (`proc::Server` kills its process when dropped): a killed
/// bench would otherwise leave an operator and a webhook running against the next cluster.
async fn until_stopped(run: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        result = run => result,
        _ = term.recv() => anyhow::bail!("stopped (TERM); the servers it started are stopped too"),
        _ = int.recv() => anyhow::bail!("stopped (INT); the servers it started are stopped too"),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Runtime::new()?)
}

/// report.md: the machine, then each section that exists.
fn report(out: &std::path::Path) -> anyhow::Result<()> {
    let machine = machine::Machine::now();
    let mut md = format!("## Benchmarks\n\n{}\n\n", machine.line());
    let mut found = 0;
    for section in ["webhook.md", "mutate.md", "operator.md"] {
        if let Ok(text) = std::fs::read_to_string(out.join(section)) {
            md.push_str(&text);
            found += 1;
        }
    }
    anyhow::ensure!(
        found > 0,
        "no sections in {}: run a benchmark first",
        out.display()
    );
    std::fs::write(out.join("report.md"), &md)?;
    print!("{md}");
    Ok(())
}
