//! The operator's decisions, apart from any API call: from what it observed of one VirtualCluster
//! (the cluster, the plugins of its namespace, the executor Jobs it owns, the time) this module
//! decides which plugins make up the set, in which order they install, what to do next for each
//! (create a Job, wait, delete an unmarked Job, retry after backoff, give up, uninstall), and the
//! status to write. The reconciler only observes, calls [`plan`], and carries the result out.
//!
//! [`plan`] resolves the set once ([`resolve`]), then decides each plugin's next step
//! (`steps.rs`, with the retry rules in `retry.rs`), then writes the status (`status.rs`).

mod resolve;
mod retry;
mod status;
mod steps;

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kosmos_api::contract::{self, ExecutorJobId};
use kosmos_api::{PluginStatus, VirtualCluster, VirtualClusterPlugin, VirtualClusterStatus};

pub use resolve::{concerns, resolve};
pub use retry::{backoff, outage_backoff};

/// Settings that shape the decisions (flags of the binary).
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Failed attempts of one plugin (per spec hash and retry request) before it stays Failed.
    pub max_attempts: u32,
    /// Executor Jobs running at once for one VirtualCluster.
    pub max_parallel_jobs: usize,
    /// Delay before the first retry; it doubles with each further failure.
    pub backoff_base: Duration,
    /// Upper bound of the retry delay.
    pub backoff_max: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            max_parallel_jobs: 4,
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
        }
    }
}

/// How an observed executor Job ended, if it did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    /// Neither Complete nor Failed yet.
    Running,
    /// The Job completed.
    Succeeded,
    /// The Job failed; `message` says why (the executor pod's termination message when there is
    /// one, else the Job's condition).
    Failed {
        /// Why, in a few words.
        message: String,
    },
}

/// What the operator observed of one executor Job it owns.
#[derive(Clone, Debug, PartialEq)]
pub struct JobView {
    /// The Job's name.
    pub name: String,
    /// Its labels and annotations, parsed.
    pub id: ExecutorJobId,
    /// Whether the Job carries the webhook's [`contract::INJECTED_ANNOTATION`] and it verifies
    /// ([`kosmos_api::mark::verify`]).
    pub injected: bool,
    /// Set when the Job carries a mark that does not verify (why): the webhook did not make it for
    /// this Job. Such a Job is never counted, never followed, and left alone; the plugin goes on
    /// with a Job under another name.
    pub forged: Option<String>,
    /// Names the Job's earlier attempts would have had, held by Jobs the VirtualCluster does not
    /// own ([`contract::TAKEN_NAMES_ANNOTATION`]).
    pub taken_names: Vec<String>,
    /// Whether the Job is being deleted.
    pub deleting: bool,
    /// How it ended, if it did.
    pub outcome: JobOutcome,
    /// When it was created.
    pub started_at: Option<Timestamp>,
    /// When it finished.
    pub finished_at: Option<Timestamp>,
}

/// Whether the virtual cluster's kubeconfig is in the operator's Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kubeconfig {
    /// The Secret holds it.
    Available,
    /// It could not be found or read; the message says where the operator looked.
    Missing(String),
    /// It was found but asks its client to run, read or send something
    /// ([`kosmos_api::kubeconfig::check`]): neither the operator nor an executor uses it. The
    /// message names where it came from and the refused field.
    Refused(String),
}

/// Result of the `builtin` readiness check (none with `external` readiness).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Another controller sets `AllNodeReady`.
    External,
    /// The virtual API answers and every promoted node is Ready.
    Ready,
    /// Not yet; the message says what is missing.
    NotReady(String),
}

/// The VirtualCluster is being deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deletion {
    /// Uninstall the plugins before letting go (flag or annotation).
    pub uninstall: bool,
    /// The bounded wait for uninstall Jobs is over.
    pub deadline_passed: bool,
}

/// Everything the decisions depend on.
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    /// The VirtualCluster, as just read.
    pub vc: &'a VirtualCluster,
    /// Every VirtualClusterPlugin of its namespace.
    pub plugins: &'a [VirtualClusterPlugin],
    /// Every executor Job it owns.
    pub jobs: &'a [JobView],
    /// Whether executor Jobs can get the kubeconfig.
    pub kubeconfig: Kubeconfig,
    /// The readiness check's result.
    pub readiness: Readiness,
    /// Set while the VirtualCluster is being deleted.
    pub deletion: Option<Deletion>,
    /// Plugins whose Job the API server refused in this reconciliation (an admission webhook
    /// denied it, or it was invalid), with the server's message.
    pub rejected: &'a [Rejection],
    /// Set when the API server refused a Job in this reconciliation because it could not call
    /// an admission webhook (down, unreachable, timing out), with the server's message.
    pub webhook_unavailable: Option<String>,
    /// Job names this reconciliation found taken by a Job the VirtualCluster does not own (a
    /// squatter, or a Job of an earlier VirtualCluster of the same name).
    pub taken: &'a [TakenName],
    /// The time of the decision.
    pub now: Timestamp,
}

/// A plugin whose executor Job the API server refused in this reconciliation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The plugin.
    pub plugin: String,
    /// The API server's message.
    pub message: String,
}

/// The name of a Job the operator was about to create was taken by a Job the VirtualCluster does
/// not own: the operator moved on to the next attempt's name (see the controller's `settle`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TakenName {
    /// The plugin the Job was for.
    pub plugin: String,
    /// The taken name (the Job that holds it).
    pub job: String,
    /// The Job created instead, if a free name was found.
    pub instead: Option<String>,
}

/// A plugin that succeeded in this decision, for the install-duration metric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Installed {
    /// The plugin.
    pub plugin: String,
    /// From the Job's creation to its completion.
    pub took: Duration,
}

/// What this decision saw of the webhook's mark on executor Jobs.
#[derive(Clone, Debug, PartialEq, Eq)]
enum WebhookSeen {
    /// A Job carries the mark.
    Mutating,
    /// A Job lacked the mark; the message says which and what to check.
    Missing(String),
}

/// A bare executor Job to create (the `jobs` module turns it into a Job).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewJob {
    /// Its labels and annotations.
    pub id: ExecutorJobId,
    /// The plugin's time limit for one attempt.
    pub timeout_seconds: i64,
    /// The plugin's executor image, if it names one.
    pub executor_image: Option<String>,
}

impl NewJob {
    /// The Job's name, from [`contract::job_name`].
    pub fn name(&self) -> String {
        self.id.job_name()
    }
}

/// One thing to do against the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Create a bare executor Job (AlreadyExists means it is there already).
    CreateJob(NewJob),
    /// Delete a Job (background propagation); `why` goes to the log.
    DeleteJob {
        /// The Job.
        name: String,
        /// The reason, for the log.
        why: String,
    },
}

/// Kind of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoteKind {
    /// Progress.
    Normal,
    /// Something to look at.
    Warning,
}

/// An event to publish on the VirtualCluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// Normal or Warning.
    pub kind: NoteKind,
    /// CamelCase reason.
    pub reason: &'static str,
    /// What happened, naming the plugin and Job.
    pub message: String,
    /// The plugin it concerns, for the log's `plugin` field.
    pub plugin: Option<String>,
}

/// What to do and what to write.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// API calls to make, in order.
    pub steps: Vec<Step>,
    /// The status fields the operator owns, complete (server-side apply drops what is omitted).
    pub status: VirtualClusterStatus,
    /// Events to publish.
    pub notes: Vec<Note>,
    /// Look again after this long even if nothing changes (retry timers).
    pub requeue_after: Option<Duration>,
    /// While deleting: nothing is left to wait for, the finalizer may go.
    pub cleanup_done: bool,
    /// Plugins that succeeded in this decision, with the install's duration (for the metric).
    pub installed: Vec<Installed>,
}

/// Why the plugin set cannot be resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// A plugin is named in both `enabled` and `disabled`.
    EnabledAndDisabled(String),
    /// `enabled` names a plugin that does not exist in the namespace.
    NotFound(String),
    /// A plugin depends on one that does not exist.
    DependencyNotFound {
        /// The dependent plugin.
        plugin: String,
        /// The missing dependency.
        dependency: String,
    },
    /// A plugin depends on one that is not in this VirtualCluster's set.
    DependencyNotInSet {
        /// The dependent plugin.
        plugin: String,
        /// The dependency outside the set.
        dependency: String,
    },
    /// `dependsOn` forms a cycle among these plugins.
    Cycle(Vec<String>),
    /// A plugin's spec is invalid.
    Invalid(String),
}

impl Problem {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::EnabledAndDisabled(_) => "EnabledAndDisabled",
            Self::NotFound(_) => "PluginNotFound",
            Self::DependencyNotFound { .. } => "DependencyNotFound",
            Self::DependencyNotInSet { .. } => "DependencyNotInSet",
            Self::Cycle(_) => "DependencyCycle",
            Self::Invalid(_) => "InvalidPlugin",
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::EnabledAndDisabled(name) => write!(
                f,
                "plugin {name} is in both spec.pluginSet.enabled and spec.pluginSet.disabled"
            ),
            Self::NotFound(name) => write!(
                f,
                "plugin {name} (spec.pluginSet.enabled) does not exist in this namespace: create the VirtualClusterPlugin"
            ),
            Self::DependencyNotFound { plugin, dependency } => write!(
                f,
                "plugin {plugin} depends on {dependency}, which does not exist in this namespace"
            ),
            Self::DependencyNotInSet { plugin, dependency } => write!(
                f,
                "plugin {plugin} depends on {dependency}, which this virtual cluster does not install: enable it"
            ),
            Self::Cycle(names) => write!(f, "dependsOn forms a cycle among {}", names.join(", ")),
            Self::Invalid(message) => f.write_str(message),
        }
    }
}

/// Reason of `WebhookMutating=False` while the API server cannot call the webhook.
const WEBHOOK_UNAVAILABLE: &str = "WebhookUnavailable";

fn add(t: Timestamp, d: Duration) -> Timestamp {
    let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2);
    Timestamp::from_second(t.as_second().saturating_add(secs)).unwrap_or(t)
}

fn until(now: Timestamp, t: Timestamp) -> Duration {
    Duration::from_secs(u64::try_from(t.as_second() - now.as_second()).unwrap_or(0))
}

/// Decides what to do for one VirtualCluster.
pub fn plan(obs: &Observed<'_>, settings: &Settings) -> Plan {
    let resolved = resolve(obs.vc, obs.plugins);
    let mut planner = Planner::new(obs, settings);
    planner.run(&resolved);
    let cleanup_done = planner.cleanup_done();
    let status = planner.status(&resolved);
    let Planner {
        steps,
        notes,
        wake,
        installed,
        ..
    } = planner;
    Plan {
        steps,
        status,
        notes,
        requeue_after: wake.map(|t| until(obs.now, t).max(Duration::from_secs(1))),
        cleanup_done,
        installed,
    }
}

/// The plugins to install in order, or why the set does not resolve.
type Resolved<'p> = Result<Vec<&'p VirtualClusterPlugin>, Vec<Problem>>;

/// One decision in the making: what was observed, and the steps, events and plugin entries
/// decided so far.
struct Planner<'a, 'o> {
    obs: &'o Observed<'a>,
    settings: &'o Settings,
    /// The status as it was.
    old: VirtualClusterStatus,
    /// The VirtualCluster's retry request (annotation), empty when none.
    retry: String,
    /// Jobs that may still start in this decision.
    slots: usize,
    steps: Vec<Step>,
    notes: Vec<Note>,
    /// The plugin entries of the new status.
    entries: Vec<PluginStatus>,
    /// The earliest retry time: look again then.
    wake: Option<Timestamp>,
    webhook: Option<WebhookSeen>,
    installed: Vec<Installed>,
}

impl<'a, 'o> Planner<'a, 'o> {
    fn new(obs: &'o Observed<'a>, settings: &'o Settings) -> Self {
        let running = obs
            .jobs
            .iter()
            .filter(|j| !j.deleting && j.forged.is_none() && j.outcome == JobOutcome::Running)
            .count();
        Self {
            obs,
            settings,
            old: obs.vc.status.clone().unwrap_or_default(),
            retry: obs
                .vc
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(contract::RETRY_ANNOTATION))
                .cloned()
                .unwrap_or_default(),
            slots: settings.max_parallel_jobs.saturating_sub(running),
            steps: Vec::new(),
            notes: Vec::new(),
            entries: Vec::new(),
            wake: None,
            webhook: None,
            installed: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
