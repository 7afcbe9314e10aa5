//! What every reconciliation shares: the settings of the reconciler and its [`Context`].

use std::sync::Arc;
use std::time::Duration;

use kosmos_api::contract;
use kube::Client;
use kube::runtime::events::Reporter;

use crate::jobs;
use crate::kubeconfig::SeenSecrets;
use crate::mark_keys::MarkKeys;
use crate::metrics::Metrics;
use crate::plan;
use crate::readiness::Probes;

/// How the operator learns that a VirtualCluster is ready for plugins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadinessMode {
    /// Another controller (Kosmos) sets `AllNodeReady`.
    External,
    /// The operator checks the virtual cluster itself and sets `AllNodeReady`.
    Builtin,
}

/// Settings of the reconciler.
#[derive(Clone, Debug)]
pub struct Config {
    /// Decision settings.
    pub plan: plan::Settings,
    /// Executor image for plugins that name none.
    pub executor_image: String,
    /// Pull secrets and resources of every executor pod.
    pub executor_pod: jobs::ExecutorPod,
    /// How `AllNodeReady` is reached.
    pub readiness: ReadinessMode,
    /// VirtualClusters reconciled at once (per watched namespace).
    pub concurrent_reconciles: u16,
    /// How long a woken VirtualCluster waits for further changes before it is reconciled.
    pub reconcile_debounce: Duration,
    /// Uninstall plugins when a VirtualCluster is deleted (the annotation overrides it).
    pub uninstall_on_delete: bool,
    /// Bound on waiting for uninstall Jobs when a VirtualCluster is deleted.
    pub uninstall_timeout: Duration,
    /// Watch only these namespaces (all when empty).
    pub namespaces: Vec<String>,
    /// The Secret with the keys the webhook's marks are verified with.
    pub mark_key_secret: kosmos_api::mark::KeySecret,
}

/// What every reconciliation shares.
pub struct Context {
    /// Client of the host cluster.
    pub client: Client,
    /// Names this operator (and replica) on the events it publishes.
    pub reporter: Reporter,
    /// Metrics for the admin port.
    pub metrics: Arc<Metrics>,
    /// Settings.
    pub config: Config,
    /// Builtin readiness probes, run beside the reconciler.
    pub probes: Arc<Probes>,
    /// The keys of [`Config::mark_key_secret`], read at most once a minute.
    pub mark_keys: MarkKeys,
    /// The executor kubeconfig Secrets seen up to date, read again at most once a minute.
    pub kubeconfig_secrets: SeenSecrets,
}

impl Context {
    /// The context of a controller acting with `client` under `config`.
    pub fn new(client: Client, metrics: Arc<Metrics>, config: Config) -> Self {
        Self {
            mark_keys: MarkKeys::new(config.mark_key_secret.clone()),
            client,
            reporter: reporter(),
            metrics,
            config,
            probes: Arc::default(),
            kubeconfig_secrets: SeenSecrets::default(),
        }
    }
}

/// The reporter of this operator's events: the controller name and, in a pod, the pod's name.
pub fn reporter() -> Reporter {
    Reporter {
        controller: contract::OPERATOR_FIELD_MANAGER.to_owned(),
        instance: std::env::var("POD_NAME").ok().filter(|s| !s.is_empty()),
    }
}
