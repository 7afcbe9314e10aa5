//! `virtual-cluster-operator`: flags, logging, the admin port, leader election, and the
//! controller from the library.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser;
use k8s_openapi::api::core::v1::ResourceRequirements;
use kosmos_operator::admin::{self, AdminState};
use kosmos_operator::context::{self, Config, Context, ReadinessMode};
use kosmos_operator::controller;
use kosmos_operator::jobs::ExecutorPod;
use kosmos_operator::metrics::Metrics;
use kosmos_operator::plan::Settings;
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

/// Installs each VirtualCluster's plugins with executor Jobs and sets it Completed.
#[derive(Debug, Parser)]
#[command(name = "virtual-cluster-operator", version, args_override_self = true)]
struct Args {
    /// How a VirtualCluster reaches AllNodeReady: `external` (another controller, e.g. Kosmos,
    /// sets it) or `builtin` (the operator checks the virtual API and the promoted nodes).
    #[arg(
        long,
        env = "OPERATOR_READINESS",
        value_enum,
        default_value = "external"
    )]
    readiness: ReadinessMode,
    /// Executor image for plugins that do not set spec.executorImage.
    #[arg(
        long,
        env = "OPERATOR_EXECUTOR_IMAGE",
        default_value = kosmos_api::contract::DEFAULT_EXECUTOR_IMAGE
    )]
    executor_image: String,
    /// Secrets to pull executor images with (comma-separated names; each must exist in the
    /// namespaces of the VirtualClusters).
    #[arg(
        long,
        env = "OPERATOR_EXECUTOR_IMAGE_PULL_SECRETS",
        value_delimiter = ','
    )]
    executor_image_pull_secrets: Vec<String>,
    /// Requests and limits of the executor container, as JSON, e.g.
    /// '{"requests":{"cpu":"100m","memory":"128Mi"},"limits":{"memory":"1Gi"}}'.
    #[arg(long, env = "OPERATOR_EXECUTOR_RESOURCES", value_parser = parse_resources)]
    executor_resources: Option<ResourceRequirements>,
    /// Failed attempts per plugin (and spec, and retry request) before it stays Failed.
    #[arg(long, env = "OPERATOR_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    max_attempts: u32,
    /// Executor Jobs running at once per VirtualCluster.
    #[arg(long, env = "OPERATOR_MAX_PARALLEL_JOBS", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    max_parallel_jobs: u16,
    /// Seconds before the first retry of a failed plugin; doubles with each failure.
    #[arg(long, env = "OPERATOR_BACKOFF_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    backoff_seconds: u64,
    /// Upper bound of the retry delay in seconds.
    #[arg(long, env = "OPERATOR_MAX_BACKOFF_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    max_backoff_seconds: u64,
    /// Address of the admin port (/healthz, /readyz, /metrics).
    #[arg(long, env = "OPERATOR_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    admin_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "OPERATOR_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Run uninstall Jobs when a VirtualCluster is deleted (the VirtualCluster's
    /// plugin.kosmos.io/uninstall-on-delete annotation overrides it).
    #[arg(long, env = "OPERATOR_UNINSTALL_ON_DELETE", default_value_t = false)]
    uninstall_on_delete: bool,
    /// Seconds to wait for uninstall Jobs of a deleted VirtualCluster before letting it go.
    #[arg(
        long,
        env = "OPERATOR_UNINSTALL_TIMEOUT_SECONDS",
        default_value_t = 300
    )]
    uninstall_timeout_seconds: u64,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "OPERATOR_NAMESPACE")]
    namespace: Option<String>,
    /// Elect a leader on a Lease so that only one replica acts.
    #[arg(long, env = "OPERATOR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the Lease.
    #[arg(
        long,
        env = "OPERATOR_LEASE_NAME",
        default_value = "virtual-cluster-operator"
    )]
    lease_name: String,
    /// Namespace of the Lease (in a pod: its own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Seconds a leader holds the Lease without renewing it.
    #[arg(long, env = "OPERATOR_LEASE_DURATION_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..))]
    lease_duration_seconds: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// `--executor-resources`: a ResourceRequirements as JSON (the Kubernetes field names).
fn parse_resources(text: &str) -> Result<ResourceRequirements, String> {
    serde_json::from_str(text).map_err(|e| {
        format!("not a JSON ResourceRequirements ({{\"requests\": {{\"cpu\": \"100m\"}}}}): {e}")
    })
}

fn init_logging(format: LogFormat) {
    // hyper and h2 talk a lot at debug; keep them quiet unless asked by RUST_LOG.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,hyper=warn,h2=warn,tower=warn,rustls=warn"));
    // Colours only for a terminal: log collectors and files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
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
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));

    let listener = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("binding the admin port {}", args.admin_addr))?;
    info!(addr = %listener.local_addr().unwrap_or(args.admin_addr), "admin port listening");
    let app = admin::router(AdminState {
        ready: ready.clone(),
        metrics: metrics.clone(),
    });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            error!(error = %e, "admin port stopped");
        }
    });

    let config = Config {
        plan: Settings {
            max_attempts: args.max_attempts,
            max_parallel_jobs: usize::from(args.max_parallel_jobs),
            backoff_base: Duration::from_secs(args.backoff_seconds),
            backoff_max: Duration::from_secs(args.max_backoff_seconds.max(args.backoff_seconds)),
        },
        executor_image: args.executor_image.clone(),
        executor_pod: ExecutorPod {
            image_pull_secrets: args
                .executor_image_pull_secrets
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect(),
            resources: args.executor_resources.clone(),
        },
        readiness: args.readiness,
        uninstall_on_delete: args.uninstall_on_delete,
        uninstall_timeout: Duration::from_secs(args.uninstall_timeout_seconds),
        namespace: args.namespace.clone(),
    };
    info!(?config, "starting");
    let ctx = Arc::new(Context {
        client: client.clone(),
        reporter: context::reporter(),
        metrics,
        config,
        probes: Arc::default(),
    });

    if !args.leader_election {
        ready.store(true, std::sync::atomic::Ordering::SeqCst);
        controller::run(ctx, ready, shutdown_signal()).await;
        return Ok(());
    }

    let identity = std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("virtual-cluster-operator-{}", std::process::id()));
    let manager = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_identity(&identity)
        .with_duration(args.lease_duration_seconds)
        .with_grace((args.lease_duration_seconds / 3).max(1))
        .with_field_manager(kosmos_api::contract::OPERATOR_FIELD_MANAGER)
        .build()
        .await
        .context("setting up leader election")?;
    let (mut leader, lease_task) = manager.watch().await;
    // A standby is healthy: ready for the Service and probes, just not acting.
    ready.store(true, std::sync::atomic::Ordering::SeqCst);
    // One shutdown signal, observed by every round of leadership below.
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stopping_tx.send(true);
    });
    loop {
        info!(lease = %args.lease_name, namespace = %args.lease_namespace, %identity, "waiting for leadership");
        let mut stop_wait = stopping.clone();
        tokio::select! {
            got = leader.wait_for(|is| *is) => { got.context("leader election stopped")?; }
            _ = stop_wait.wait_for(|s| *s) => break,
        }
        info!(%identity, "leading");
        let mut lost = leader.clone();
        let mut stop_run = stopping.clone();
        let stop = async move {
            tokio::select! {
                _ = lost.wait_for(|is| !*is) => {
                    error!("lost the lease; stopping the controller until leading again");
                }
                _ = stop_run.wait_for(|s| *s) => {}
            }
        };
        // In-flight reconciliations finish before run returns; deterministic Job names keep a
        // short overlap with the next leader harmless.
        controller::run(ctx.clone(), ready.clone(), stop).await;
        if *stopping.borrow() {
            break;
        }
    }
    // Dropping the receivers lets the lease task release the Lease for the next replica.
    drop(leader);
    match tokio::time::timeout(Duration::from_secs(5), lease_task).await {
        Ok(Ok(Ok(_))) => info!("lease released"),
        _ => info!("lease not released cleanly; it expires on its own"),
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
