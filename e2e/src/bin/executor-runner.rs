//! `executor-runner`: runs the host cluster's executor pods as local processes (see
//! `kosmos_e2e::runner`). Used by `make demo`; the host cluster comes from `KUBECONFIG`.
//!
//! Usage: executor-runner [--namespace NS] [--work-dir DIR] [--claims-dir DIR]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use kosmos_e2e::runner::{RunnerConfig, cached_tool_dirs, run};

#[tokio::main]
async fn main() -> Result<()> {
    let state = kosmos_e2e::e2e_dir().join(".state/runner");
    let mut config = RunnerConfig {
        work_dir: state.join("pods"),
        claims_dir: state.join("claims"),
        tool_dirs: cached_tool_dirs(),
        namespace: None,
        max_run: Duration::from_secs(900),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--namespace" => config.namespace = Some(value()?),
            "--work-dir" => config.work_dir = PathBuf::from(value()?),
            "--claims-dir" => config.claims_dir = PathBuf::from(value()?),
            other => bail!(
                "unknown argument {other}; usage: executor-runner [--namespace NS] [--work-dir DIR] [--claims-dir DIR]"
            ),
        }
    }
    let client = kube::Client::try_default()
        .await
        .context("connecting to the host cluster (KUBECONFIG)")?;
    eprintln!(
        "executor-runner: running executor pods as local processes; claims under {}",
        config.claims_dir.display()
    );
    run(client, config).await
}
