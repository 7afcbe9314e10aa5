//! `virtual-cluster-operator`: parses the flags, sets up logging, and runs the operator from the
//! library ([`kosmos_operator::server`]) until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Parser;
use kosmos_operator::server::{self, Args};
use kube::Client;
use tracing::{error, info};

// musl's allocator (the images are static musl builds) halved the webhook's throughput against
// the same code on glibc; with mimalloc the shipped binary comes within ~10% of it
// (docs/benchmarks.md, "Findings (2026-12-07 evening …)").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    kosmos_runtime::init_logging(args.log_format);
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = format!("{e:#}"), "virtual-cluster-operator stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the host cluster (in-cluster config or KUBECONFIG)")?;
    let mut running = server::start(&args, client).await?;
    tokio::select! {
        result = running.wait() => result,
        () = kosmos_runtime::shutdown_signal() => {
            info!("shutting down");
            running.stop().await
        }
    }
}
