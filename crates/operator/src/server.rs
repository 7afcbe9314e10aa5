//! Wiring: settings (flags with environment variables), the admin port, leader election and the
//! controller. [`start`] runs it all in the calling process and returns a [`Running`] handle, so
//! tests run the operator as `main.rs` does, leader election included.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use clap::Parser;
use k8s_openapi::api::core::v1::ResourceRequirements;
use kosmos_api::{contract, validation};
use kosmos_runtime::LogFormat;
use kosmos_runtime::admin::{self, AdminPort, Health};
use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info};

use crate::context::{Config, Context, ReadinessMode};
use crate::controller;
use crate::jobs::ExecutorPod;
use crate::metrics::Metrics;
use crate::plan::Settings;

/// Installs each VirtualCluster's plugins with executor Jobs and sets it Completed.
#[derive(Clone, Debug, Parser)]
#[command(name = "virtual-cluster-operator", version, args_override_self = true)]
pub struct Args {
    /// How a VirtualCluster reaches AllNodeReady: `external` (another controller, e.g. Kosmos,
    /// sets it) or `builtin` (the operator checks the virtual API and the promoted nodes).
    #[arg(
        long,
        env = "OPERATOR_READINESS",
        value_enum,
        default_value = "external"
    )]
    pub readiness: ReadinessMode,
    /// Executor image for plugins that do not set spec.executorImage.
    #[arg(
        long,
        env = "OPERATOR_EXECUTOR_IMAGE",
        default_value = kosmos_api::contract::DEFAULT_EXECUTOR_IMAGE
    )]
    pub executor_image: String,
    /// Secrets to pull executor images with (comma-separated names; each must exist in the
    /// namespaces of the VirtualClusters).
    #[arg(
        long,
        env = "OPERATOR_EXECUTOR_IMAGE_PULL_SECRETS",
        value_delimiter = ','
    )]
    pub executor_image_pull_secrets: Vec<String>,
    /// Requests and limits of the executor container, as JSON, e.g.
    /// '{"requests":{"cpu":"100m","memory":"128Mi"},"limits":{"memory":"1Gi"}}'.
    #[arg(long, env = "OPERATOR_EXECUTOR_RESOURCES", value_parser = parse_resources)]
    pub executor_resources: Option<ResourceRequirements>,
    /// Failed attempts per plugin (and spec, and retry request) before it stays Failed.
    #[arg(long, env = "OPERATOR_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,
    /// Executor Jobs running at once per VirtualCluster.
    #[arg(long, env = "OPERATOR_MAX_PARALLEL_JOBS", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_parallel_jobs: u16,
    /// VirtualClusters reconciled at once, per watched namespace. A thousand turning ready
    /// together then queue here instead of sending a thousand requests to the apiserver at once.
    #[arg(long, env = "OPERATOR_CONCURRENT_RECONCILES", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrent_reconciles: u16,
    /// Milliseconds a VirtualCluster's reconciliation waits after the last change that woke it
    /// (0: none). Sibling Jobs often end moments apart: waiting a moment makes their ends one
    /// reconciliation instead of several, each reading the VirtualCluster and its Jobs and
    /// writing the status again.
    #[arg(long, env = "OPERATOR_RECONCILE_DEBOUNCE_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub reconcile_debounce_ms: u64,
    /// Seconds before the first retry of a failed plugin; doubles with each failure.
    #[arg(long, env = "OPERATOR_BACKOFF_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub backoff_seconds: u64,
    /// Upper bound of the retry delay in seconds.
    #[arg(long, env = "OPERATOR_MAX_BACKOFF_SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_backoff_seconds: u64,
    /// Address of the admin port (/healthz, /readyz, /metrics).
    #[arg(long, env = "OPERATOR_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "OPERATOR_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Run uninstall Jobs when a VirtualCluster is deleted (the VirtualCluster's
    /// plugin.kosmos.io/uninstall-on-delete annotation overrides it).
    #[arg(long, env = "OPERATOR_UNINSTALL_ON_DELETE", default_value_t = false)]
    pub uninstall_on_delete: bool,
    /// Seconds to wait for uninstall Jobs of a deleted VirtualCluster before letting it go.
    #[arg(
        long,
        env = "OPERATOR_UNINSTALL_TIMEOUT_SECONDS",
        default_value_t = 300
    )]
    pub uninstall_timeout_seconds: u64,
    /// Watch only these namespaces (comma-separated, or the flag repeated; default: all
    /// namespaces). Each gets its own watches, so the RBAC may be Roles in just these.
    #[arg(
        long,
        env = "OPERATOR_NAMESPACE",
        value_delimiter = ',',
        value_parser = validation::watched_namespace
    )]
    pub namespace: Vec<String>,
    /// Elect a leader on a Lease so that only one replica acts.
    #[arg(long, env = "OPERATOR_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the Lease.
    #[arg(
        long,
        env = "OPERATOR_LEASE_NAME",
        default_value = "virtual-cluster-operator"
    )]
    pub lease_name: String,
    /// Namespace of the Lease (in a pod: its own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Secret with the keys the webhook signs its mark on executor Jobs with (the webhook's
    /// --mark-key-secret): only Jobs whose mark verifies count.
    #[arg(
        long,
        env = "OPERATOR_MARK_KEY_SECRET",
        default_value = kosmos_api::mark::DEFAULT_KEY_SECRET
    )]
    pub mark_key_secret: String,
    /// Namespace of that Secret (the webhook's); default: the operator's own (--lease-namespace).
    #[arg(long, env = "OPERATOR_MARK_KEY_NAMESPACE")]
    pub mark_key_namespace: Option<String>,
    /// This replica's name in the Lease (in a pod: its name); default
    /// `virtual-cluster-operator-<pid>`.
    #[arg(long, env = "POD_NAME")]
    pub lease_identity: Option<String>,
    /// Seconds a leader holds the Lease without renewing it.
    #[arg(long, env = "OPERATOR_LEASE_DURATION_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..))]
    pub lease_duration_seconds: u64,
}

/// `--executor-resources`: a ResourceRequirements as JSON (the Kubernetes field names).
fn parse_resources(text: &str) -> Result<ResourceRequirements, String> {
    serde_json::from_str(text).map_err(|e| {
        format!("not a JSON ResourceRequirements ({{\"requests\": {{\"cpu\": \"100m\"}}}}): {e}")
    })
}

impl Args {
    /// Settings for an operator watching `namespace` (its Lease there too), with its admin port
    /// on a loopback port the system chooses, known in the Lease as `identity`, and every other
    /// setting at its default: for tests and local runs. `extra` adds or overrides flags.
    pub fn local(namespace: &str, identity: &str, extra: &[&str]) -> Result<Self> {
        let fixed = [
            "--namespace",
            namespace,
            "--lease-namespace",
            namespace,
            "--lease-identity",
            identity,
            "--admin-addr",
            "127.0.0.1:0",
        ];
        let argv = std::iter::once("virtual-cluster-operator")
            .chain(fixed)
            .chain(extra.iter().copied());
        Self::try_parse_from(argv).map_err(|e| anyhow!("operator flags {extra:?}: {e}"))
    }

    /// The reconciler's settings these flags give.
    pub fn config(&self) -> Config {
        Config {
            plan: Settings {
                max_attempts: self.max_attempts,
                max_parallel_jobs: usize::from(self.max_parallel_jobs),
                backoff_base: Duration::from_secs(self.backoff_seconds),
                backoff_max: Duration::from_secs(
                    self.max_backoff_seconds.max(self.backoff_seconds),
                ),
            },
            executor_image: self.executor_image.clone(),
            executor_pod: ExecutorPod {
                image_pull_secrets: self
                    .executor_image_pull_secrets
                    .iter()
                    .filter(|s| !s.is_empty())
                    .cloned()
                    .collect(),
                resources: self.executor_resources.clone(),
            },
            readiness: self.readiness,
            concurrent_reconciles: self.concurrent_reconciles,
            reconcile_debounce: Duration::from_millis(self.reconcile_debounce_ms),
            uninstall_on_delete: self.uninstall_on_delete,
            uninstall_timeout: Duration::from_secs(self.uninstall_timeout_seconds),
            namespaces: validation::watched_namespaces(&self.namespace),
            mark_key_secret: kosmos_api::mark::KeySecret {
                namespace: self
                    .mark_key_namespace
                    .clone()
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| self.lease_namespace.clone()),
                name: self.mark_key_secret.clone(),
            },
        }
    }

    /// This replica's name in the Lease.
    pub fn identity(&self) -> String {
        self.lease_identity
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("virtual-cluster-operator-{}", std::process::id()))
    }
}

/// What the admin port reports.
struct Admin {
    /// True once the controller watches, or, with leader election, once this replica takes
    /// part in it: a standby is healthy and ready to take over.
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl Health for Admin {
    fn ready(&self) -> Result<(), String> {
        if self.ready.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err("not ready".to_owned())
        }
    }

    fn metrics(&self) -> String {
        self.metrics.encode()
    }
}

/// A running operator: where its admin port listens and how to stop it.
pub struct Running {
    /// Bound address of the admin port.
    pub admin_addr: SocketAddr,
    /// This replica's name in the Lease (also when leader election is off).
    pub identity: String,
    /// What every reconciliation shares (client, settings, metrics).
    pub context: Arc<Context>,
    stopping: watch::Sender<bool>,
    /// Leadership rounds and the controller; ends on [`Running::stop`] or when leader election
    /// fails.
    work: JoinHandle<Result<()>>,
    admin: JoinHandle<()>,
}

impl Running {
    /// Stops: the controller lets in-flight reconciliations finish, then the Lease is released
    /// so the next replica need not wait for it to expire. Returns once that is done.
    pub async fn stop(mut self) -> Result<()> {
        let _ = self.stopping.send(true);
        let result = (&mut self.work)
            .await
            .map_err(|e| anyhow!("the operator's controller task failed: {e}"))
            .and_then(|result| result);
        self.admin.abort();
        result
    }

    /// Returns only if the operator stopped working on its own (leader election failed, the
    /// admin port stopped), which never happens while it is healthy.
    pub async fn wait(&mut self) -> Result<()> {
        tokio::select! {
            result = &mut self.work => match result {
                Ok(Ok(())) => Err(anyhow!("the controller stopped; see the log above")),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(anyhow!("the operator's controller task failed: {e}")),
            },
            _ = &mut self.admin => Err(anyhow!("the admin port stopped; see the log above")),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.work.abort();
        self.admin.abort();
    }
}

/// Starts the admin port, joins leader election (when on) and runs the controller whenever this
/// replica leads; returns once the admin port listens and the Lease is set up.
pub async fn start(args: &Args, client: Client) -> Result<Running> {
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let AdminPort {
        addr: admin_addr,
        task: admin,
    } = admin::serve(
        args.admin_addr,
        Arc::new(Admin {
            ready: ready.clone(),
            metrics: metrics.clone(),
        }),
    )
    .await?;
    info!(addr = %admin_addr, "admin port listening");

    let config = args.config();
    info!(?config, "starting");
    let context = Arc::new(Context::new(client.clone(), metrics, config));
    let identity = args.identity();
    let (stopping, stopped) = watch::channel(false);
    let work = if args.leader_election {
        let manager = LeaseManagerBuilder::new(client, &args.lease_name)
            .with_namespace(&args.lease_namespace)
            .with_identity(&identity)
            .with_duration(args.lease_duration_seconds)
            .with_grace((args.lease_duration_seconds / 3).max(1))
            .with_field_manager(lease_field_manager(&identity))
            .build()
            .await
            .context("setting up leader election")?;
        let lease = Lease {
            name: args.lease_name.clone(),
            namespace: args.lease_namespace.clone(),
            identity: identity.clone(),
        };
        tokio::spawn(lead(manager, lease, context.clone(), ready, stopped))
    } else {
        let context = context.clone();
        tokio::spawn(async move {
            controller::run(context, ready, stop_requested(stopped)).await;
            Ok(())
        })
    };
    Ok(Running {
        admin_addr,
        identity,
        context,
        stopping,
        work,
        admin,
    })
}

/// Completes once a stop is requested (or the [`Running`] that could request it is gone).
async fn stop_requested(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// The field manager a replica takes the Lease with. It must differ between replicas: a free
/// Lease is taken by a server-side apply of `holderIdentity`, and only an apply by another field
/// manager conflicts with the holder's. With one shared manager, two replicas starting together
/// both took the Lease and both acted until the next renewal.
pub fn lease_field_manager(identity: &str) -> String {
    format!(
        "{}-lease-{}",
        contract::OPERATOR_FIELD_MANAGER,
        contract::label_value(identity)
    )
}

/// Which Lease, and who this replica is in it: for the log.
struct Lease {
    name: String,
    namespace: String,
    identity: String,
}

/// Runs the controller whenever this replica holds the Lease, until a stop is requested; then
/// releases the Lease.
async fn lead(
    manager: LeaseManager,
    lease: Lease,
    ctx: Arc<Context>,
    ready: Arc<AtomicBool>,
    stopped: watch::Receiver<bool>,
) -> Result<()> {
    let Lease {
        name,
        namespace,
        identity,
    } = &lease;
    let (mut leader, lease_task) = manager.watch().await;
    // A standby is healthy: ready for the Service and probes, just not acting.
    ready.store(true, Ordering::SeqCst);
    let result = async {
        loop {
            info!(lease = %name, %namespace, %identity, "waiting for leadership");
            tokio::select! {
                got = leader.wait_for(|is| *is) => { got.context("leader election stopped")?; }
                () = stop_requested(stopped.clone()) => return Ok(()),
            }
            info!(%identity, "leading");
            let mut lost = leader.clone();
            let stop_run = stopped.clone();
            let stop = async move {
                tokio::select! {
                    _ = lost.wait_for(|is| !*is) => {
                        error!("lost the lease; stopping the controller until leading again");
                    }
                    () = stop_requested(stop_run) => {}
                }
            };
            // In-flight reconciliations finish before run returns; deterministic Job names keep
            // a short overlap with the next leader harmless.
            controller::run(ctx.clone(), ready.clone(), stop).await;
            if *stopped.borrow() {
                return Ok(());
            }
        }
    }
    .await;
    // Dropping the receivers lets the lease task release the Lease for the next replica.
    drop(leader);
    match tokio::time::timeout(Duration::from_secs(5), lease_task).await {
        Ok(Ok(Ok(_))) => info!("lease released"),
        _ => info!("lease not released cleanly; it expires on its own"),
    }
    result
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn namespaces_are_a_list_from_the_flag_or_the_variable() {
        let parse = |argv: &[&str]| {
            Args::try_parse_from(
                std::iter::once("virtual-cluster-operator").chain(argv.iter().copied()),
            )
            .unwrap()
            .config()
            .namespaces
        };
        assert!(parse(&[]).is_empty(), "no flag: every namespace");
        assert_eq!(parse(&["--namespace", "a,b"]), ["a", "b"]);
        assert_eq!(
            parse(&["--namespace", "a", "--namespace", "b,a", "--namespace", ""]),
            ["a", "b"]
        );
        assert!(
            parse(&["--namespace", ""]).is_empty(),
            "empty: every namespace"
        );
        assert_eq!(
            parse(&["--namespace", " team-a "]),
            ["team-a"],
            "one, trimmed"
        );
        let refused = Args::try_parse_from(["virtual-cluster-operator", "--namespace", "a,Team_B"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            refused.contains("--namespace")
                && refused.contains("\"Team_B\" is not a namespace name"),
            "{refused}"
        );
    }

    #[test]
    fn local_args_give_the_config_and_identity() {
        let args = Args::local(
            "ns1",
            "replica-a",
            &[
                "--backoff-seconds",
                "20",
                "--max-backoff-seconds",
                "5",
                "--executor-image-pull-secrets",
                "a,,b",
                "--executor-resources",
                r#"{"requests":{"cpu":"100m"}}"#,
                "--concurrent-reconciles",
                "5",
                "--reconcile-debounce-ms",
                "0",
            ],
        )
        .unwrap();
        assert_eq!(args.identity(), "replica-a");
        assert_eq!(args.admin_addr, SocketAddr::from(([127, 0, 0, 1], 0)));
        assert_eq!(args.lease_namespace, "ns1");
        let config = args.config();
        assert_eq!(config.namespaces, ["ns1"]);
        // The ceiling is never below the first delay.
        assert_eq!(config.plan.backoff_max, Duration::from_secs(20));
        assert_eq!(config.executor_pod.image_pull_secrets, ["a", "b"]);
        assert!(config.executor_pod.resources.is_some());
        assert_eq!(config.executor_image, contract::DEFAULT_EXECUTOR_IMAGE);
        assert_eq!(config.concurrent_reconciles, 5);
        assert_eq!(config.reconcile_debounce, Duration::ZERO);
        let defaults = Args::local("ns1", "replica-a", &[]).unwrap().config();
        assert_eq!(defaults.concurrent_reconciles, 32);
        assert_eq!(defaults.reconcile_debounce, Duration::from_millis(500));
    }

    #[test]
    fn bad_flags_are_named() {
        let e = Args::local("ns1", "r", &["--executor-resources", "{"])
            .err()
            .unwrap();
        assert!(
            format!("{e}").contains("not a JSON ResourceRequirements"),
            "{e}"
        );
        let e = Args::local("ns1", "r", &["--max-attempts", "0"])
            .err()
            .unwrap();
        assert!(format!("{e}").contains("--max-attempts"), "{e}");
        // Zero would be kube's "unbounded", the opposite of what a zero asks for.
        let e = Args::local("ns1", "r", &["--concurrent-reconciles", "0"])
            .err()
            .unwrap();
        assert!(format!("{e}").contains("--concurrent-reconciles"), "{e}");
    }

    #[test]
    fn each_replica_takes_the_lease_as_its_own_field_manager() {
        let long = "r".repeat(253);
        let managers = ["replica-a", "replica-b", &long].map(lease_field_manager);
        assert_ne!(managers[0], managers[1]);
        // The apiserver refuses field managers longer than 128 characters.
        assert!(managers.iter().all(|m| m.len() <= 128), "{managers:?}");
    }

    #[test]
    fn without_an_identity_the_pid_names_the_replica() {
        let mut args = Args::local("ns1", "", &[]).unwrap();
        assert_eq!(
            args.identity(),
            format!("virtual-cluster-operator-{}", std::process::id())
        );
        args.lease_identity = None;
        assert!(args.identity().ends_with(&std::process::id().to_string()));
    }
}
