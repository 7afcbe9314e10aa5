//! The operator's decisions, apart from any API call: from what it observed of one VirtualCluster
//! (the cluster, the plugins of its namespace, the executor Jobs it owns, the time) this module
//! decides which plugins make up the set, in which order they install, what to do next for each
//! (create a Job, wait, delete an unmarked Job, retry after backoff, give up, uninstall), and the
//! status to write. The reconciler only observes, calls [`plan`], and carries the result out.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kosmos_api::contract::{self, Action};
use kosmos_api::{
    PluginPhase, PluginStatus, VirtualCluster, VirtualClusterPlugin, VirtualClusterStatus,
    condition, phase, validate_plugin,
};

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
    /// Value of [`contract::PLUGIN_LABEL`].
    pub plugin: String,
    /// Value of [`contract::ACTION_LABEL`].
    pub action: Action,
    /// Value of [`contract::SPEC_HASH_ANNOTATION`].
    pub spec_hash: String,
    /// Value of [`contract::ATTEMPT_ANNOTATION`]: the Job's place in the plugin's sequence.
    pub attempt: u32,
    /// Value of [`contract::RETRY_ANNOTATION`] on the Job: the VirtualCluster's retry request
    /// the Job was created under.
    pub retry: String,
    /// Whether the Job carries the webhook's [`contract::INJECTED_ANNOTATION`].
    pub injected: bool,
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
    pub rejected: &'a [(String, String)],
    /// The time of the decision.
    pub now: Timestamp,
}

/// A bare executor Job to create (the `jobs` module turns it into a Job).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewJob {
    /// Name from [`contract::job_name`].
    pub name: String,
    /// The plugin.
    pub plugin: String,
    /// Install or uninstall.
    pub action: Action,
    /// The plugin's current spec hash.
    pub spec_hash: String,
    /// Place in the plugin's sequence of Jobs.
    pub attempt: u32,
    /// The VirtualCluster's retry request at creation.
    pub retry: String,
    /// The plugin's time limit for one attempt.
    pub timeout_seconds: i64,
    /// The plugin's executor image, if it names one.
    pub executor_image: Option<String>,
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
    pub installed: Vec<(String, Duration)>,
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

/// The plugins to install, in an order where every plugin comes after its dependencies (ties
/// by name), or every problem found.
pub fn resolve<'p>(
    vc: &VirtualCluster,
    plugins: &'p [VirtualClusterPlugin],
) -> Result<Vec<&'p VirtualClusterPlugin>, Vec<Problem>> {
    let by_name: BTreeMap<&str, &VirtualClusterPlugin> = plugins
        .iter()
        .filter_map(|p| p.metadata.name.as_deref().map(|n| (n, p)))
        .collect();
    let set = vc.spec.plugin_set.clone().unwrap_or_default();
    let disabled: BTreeSet<&str> = set.disabled.iter().map(|r| r.name.as_str()).collect();
    let mut problems = Vec::new();
    let mut wanted: BTreeSet<&str> = by_name
        .iter()
        .filter(|(_, p)| p.spec.enabled_by_default)
        .map(|(n, _)| *n)
        .collect();
    for r in &set.enabled {
        if disabled.contains(r.name.as_str()) {
            problems.push(Problem::EnabledAndDisabled(r.name.clone()));
        } else if by_name.contains_key(r.name.as_str()) {
            wanted.insert(r.name.as_str());
        } else {
            problems.push(Problem::NotFound(r.name.clone()));
        }
    }
    wanted.retain(|n| !disabled.contains(n));
    for name in &wanted {
        let Some(plugin) = by_name.get(name) else {
            continue;
        };
        if let Err(invalid) = validate_plugin(plugin) {
            problems.push(Problem::Invalid(invalid.to_string()));
        }
        for dep in &plugin.spec.depends_on {
            if !by_name.contains_key(dep.name.as_str()) {
                problems.push(Problem::DependencyNotFound {
                    plugin: (*name).to_owned(),
                    dependency: dep.name.clone(),
                });
            } else if !wanted.contains(dep.name.as_str()) {
                problems.push(Problem::DependencyNotInSet {
                    plugin: (*name).to_owned(),
                    dependency: dep.name.clone(),
                });
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    // Kahn's algorithm over the wanted plugins; the BTreeSet keeps ties in name order so the
    // order (and the status list) is the same every time.
    let deps = |n: &str| -> BTreeSet<&str> {
        by_name
            .get(n)
            .map(|p| p.spec.depends_on.iter().map(|d| d.name.as_str()).collect())
            .unwrap_or_default()
    };
    let mut remaining: BTreeMap<&str, BTreeSet<&str>> =
        wanted.iter().map(|n| (*n, deps(n))).collect();
    let mut order = Vec::new();
    loop {
        let ready: Vec<&str> = remaining
            .iter()
            .filter(|(_, d)| d.is_empty())
            .map(|(n, _)| *n)
            .collect();
        if ready.is_empty() {
            break;
        }
        for name in ready {
            remaining.remove(name);
            for d in remaining.values_mut() {
                d.remove(name);
            }
            if let Some(p) = by_name.get(name) {
                order.push(*p);
            }
        }
    }
    if !remaining.is_empty() {
        return Err(vec![Problem::Cycle(
            remaining.keys().map(|n| (*n).to_owned()).collect(),
        )]);
    }
    Ok(order)
}

/// Delay before retry number `failures` (1 = after the first failure): base, doubling, capped.
pub fn backoff(settings: &Settings, failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    settings
        .backoff_base
        .saturating_mul(1u32 << exponent)
        .min(settings.backoff_max)
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2);
    Timestamp::from_second(t.as_second().saturating_add(secs)).unwrap_or(t)
}

fn until(now: Timestamp, t: Timestamp) -> Duration {
    Duration::from_secs(u64::try_from(t.as_second() - now.as_second()).unwrap_or(0))
}

/// Decides what to do for one VirtualCluster.
pub fn plan(obs: &Observed<'_>, settings: &Settings) -> Plan {
    let mut p = Planner::new(obs, settings);
    p.run();
    p.finish()
}

struct Planner<'a, 'o> {
    obs: &'o Observed<'a>,
    settings: &'o Settings,
    old: VirtualClusterStatus,
    retry: String,
    slots: usize,
    steps: Vec<Step>,
    notes: Vec<Note>,
    entries: Vec<PluginStatus>,
    wake: Option<Timestamp>,
    webhook: Option<(bool, String)>,
    installed: Vec<(String, Duration)>,
}

impl<'a, 'o> Planner<'a, 'o> {
    fn new(obs: &'o Observed<'a>, settings: &'o Settings) -> Self {
        let running = obs
            .jobs
            .iter()
            .filter(|j| !j.deleting && j.outcome == JobOutcome::Running)
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

    fn old_entry(&self, plugin: &str) -> Option<&PluginStatus> {
        self.old.plugins.iter().find(|e| e.name == plugin)
    }

    fn plugin(&self, name: &str) -> Option<&'a VirtualClusterPlugin> {
        self.obs
            .plugins
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
    }

    /// The plugin's Jobs, in sequence order.
    fn jobs_of(&self, plugin: &str) -> Vec<&'a JobView> {
        let mut jobs: Vec<&JobView> = self
            .obs
            .jobs
            .iter()
            .filter(|j| j.plugin == plugin)
            .collect();
        jobs.sort_by_key(|j| j.attempt);
        jobs
    }

    fn wake_at(&mut self, t: Timestamp) {
        self.wake = Some(self.wake.map_or(t, |w| w.min(t)));
    }

    fn note(&mut self, plugin: &str, kind: NoteKind, reason: &'static str, message: String) {
        self.notes.push(Note {
            kind,
            reason,
            message,
            plugin: Some(plugin.to_owned()),
        });
    }

    fn run(&mut self) {
        let resolved = resolve(self.obs.vc, self.obs.plugins);
        let current = self.obs.vc.phase();
        let may_act = match &self.obs.deletion {
            Some(_) => false,
            None => {
                current == phase::ALL_NODE_READY
                    || current == phase::COMPLETED
                    || self.obs.readiness == Readiness::Ready
            }
        };
        let kubeconfig_ok = self.obs.kubeconfig == Kubeconfig::Available;
        match (&resolved, &self.obs.deletion) {
            (_, Some(deletion)) => {
                // Everything leaves the set; uninstall only when asked and still in time.
                let act = deletion.uninstall && !deletion.deadline_passed && kubeconfig_ok;
                self.leaving(&BTreeSet::new(), act);
            }
            (Ok(order), None) => {
                let names: BTreeSet<String> = order
                    .iter()
                    .filter_map(|p| p.metadata.name.clone())
                    .collect();
                for plugin in order {
                    self.install(plugin, may_act && kubeconfig_ok);
                }
                self.leaving(&names, may_act && kubeconfig_ok);
            }
            (Err(_), None) => {
                // The set is unknown: keep what the status says, start nothing.
                self.entries = self.old.plugins.clone();
            }
        }
    }

    /// Decides for one plugin of the set.
    fn install(&mut self, plugin: &'a VirtualClusterPlugin, may_act: bool) {
        let name = plugin.metadata.name.clone().unwrap_or_default();
        let hash = contract::spec_hash(&plugin.spec);
        let now = self.obs.now;
        let old = self
            .old_entry(&name)
            .filter(|e| {
                e.spec_hash.as_deref() == Some(hash.as_str())
                    && !matches!(
                        e.phase,
                        PluginPhase::Uninstalling | PluginPhase::Uninstalled
                    )
            })
            .cloned();
        let jobs = self.jobs_of(&name);
        let latest = jobs.last().copied();
        let next_attempt = latest.map_or(1, |j| j.attempt + 1);
        let mut entry = PluginStatus {
            name: name.clone(),
            phase: PluginPhase::Pending,
            spec_hash: Some(hash.clone()),
            job_name: old.as_ref().and_then(|e| e.job_name.clone()),
            attempts: old.as_ref().map_or(0, |e| e.attempts),
            message: None,
            started_at: None,
            finished_at: None,
            next_retry_at: None,
        };
        let current = latest.filter(|j| j.action == Action::Install && j.spec_hash == hash);
        match current {
            Some(job) => {
                if entry.job_name.as_deref() != Some(job.name.as_str()) {
                    // A Job the status does not know yet (created just before a restart).
                    entry.attempts += 1;
                    entry.job_name = Some(job.name.clone());
                }
                entry.started_at = job.started_at.map(Time);
                self.follow_install(plugin, job, &jobs, old.as_ref(), entry, may_act);
            }
            None => {
                if let Some(stale) =
                    latest.filter(|j| !j.deleting && j.outcome == JobOutcome::Running)
                {
                    // A Job for another spec (or an uninstall) is still running: stop it first,
                    // its spec is no longer what the plugin says.
                    self.steps.push(Step::DeleteJob {
                        name: stale.name.clone(),
                        why: format!(
                            "plugin {name} changed; job {} is for an older spec",
                            stale.name
                        ),
                    });
                    entry.message = Some(format!("stopping job {} for an older spec", stale.name));
                    self.entries.push(entry);
                    return;
                }
                if let Some(prev) = old.as_ref().filter(|e| e.phase == PluginPhase::Succeeded) {
                    // Succeeded before; its Job was removed since. The status is the record.
                    self.entries.push(prev.clone());
                    return;
                }
                if let Some(unmarked) = latest.filter(|j| j.deleting && !j.injected) {
                    self.webhook_missing(unmarked, &mut entry, old.as_ref());
                    self.entries.push(entry);
                    return;
                }
                if let Some(at) = old
                    .as_ref()
                    .and_then(|e| e.next_retry_at.clone())
                    .filter(|at| at.0 > now)
                {
                    entry.message = old.as_ref().and_then(|e| e.message.clone());
                    entry.next_retry_at = Some(at.clone());
                    self.wake_at(at.0);
                    self.entries.push(entry);
                    return;
                }
                if latest.is_some_and(|j| j.deleting) {
                    entry.message = Some("waiting for the previous job to be deleted".into());
                    self.entries.push(entry);
                    return;
                }
                self.start(plugin, &hash, Action::Install, next_attempt, entry, may_act);
            }
        }
    }

    /// Creates the next Job when dependencies, the cluster and a free slot allow.
    fn start(
        &mut self,
        plugin: &'a VirtualClusterPlugin,
        hash: &str,
        action: Action,
        attempt: u32,
        mut entry: PluginStatus,
        may_act: bool,
    ) {
        let name = entry.name.clone();
        if action == Action::Install {
            let waiting: Vec<String> = plugin
                .spec
                .depends_on
                .iter()
                .filter(|d| {
                    !self
                        .entries
                        .iter()
                        .any(|e| e.name == d.name && e.phase == PluginPhase::Succeeded)
                })
                .map(|d| d.name.clone())
                .collect();
            if !waiting.is_empty() {
                entry.message = Some(format!("waiting for {}", waiting.join(", ")));
                self.entries.push(entry);
                return;
            }
        }
        if !may_act {
            entry.message = Some(match self.obs.kubeconfig.clone() {
                Kubeconfig::Missing(why) => format!("waiting for the kubeconfig: {why}"),
                Kubeconfig::Available => {
                    "waiting for the virtual cluster to be AllNodeReady".into()
                }
            });
            if action == Action::Uninstall {
                entry.phase = PluginPhase::Uninstalling;
            }
            self.entries.push(entry);
            return;
        }
        if let Some((_, why)) = self.obs.rejected.iter().find(|(p, _)| *p == name) {
            // Not a plugin failure the executor could report: the Job never existed. Try again
            // after backoff; the message tells what the API server (often the webhook) said.
            let attempts = u32::try_from(entry.attempts.max(1)).unwrap_or(1);
            let at = add(self.obs.now, backoff(self.settings, attempts));
            let message = format!("the API server refused the {action} job: {why}");
            self.note(
                &name,
                NoteKind::Warning,
                "JobRejected",
                format!("plugin {name}: {message}"),
            );
            entry.message = Some(message);
            entry.next_retry_at = Some(Time(at));
            if action == Action::Uninstall {
                entry.phase = PluginPhase::Uninstalling;
            }
            self.wake_at(at);
            self.entries.push(entry);
            return;
        }
        if self.slots == 0 {
            entry.message = Some(format!(
                "waiting for a free slot ({} jobs at once)",
                self.settings.max_parallel_jobs
            ));
            if action == Action::Uninstall {
                entry.phase = PluginPhase::Uninstalling;
            }
            self.entries.push(entry);
            return;
        }
        self.slots -= 1;
        let vc = self.obs.vc.metadata.name.clone().unwrap_or_default();
        let job_name = contract::job_name(&vc, &name, hash, action, attempt);
        self.steps.push(Step::CreateJob(NewJob {
            name: job_name.clone(),
            plugin: name.clone(),
            action,
            spec_hash: hash.to_owned(),
            attempt,
            retry: self.retry.clone(),
            timeout_seconds: plugin.spec.timeout_seconds(),
            executor_image: plugin.spec.executor_image.clone(),
        }));
        self.note(
            &name.clone(),
            NoteKind::Normal,
            if action == Action::Install {
                "InstallStarted"
            } else {
                "UninstallStarted"
            },
            format!("plugin {name}: created {action} job {job_name} (attempt {attempt})"),
        );
        entry.phase = match action {
            Action::Install => PluginPhase::Installing,
            Action::Uninstall => PluginPhase::Uninstalling,
        };
        entry.attempts += 1;
        entry.job_name = Some(job_name);
        entry.started_at = Some(Time(self.obs.now));
        entry.message = Some(format!("{action} job created"));
        self.entries.push(entry);
    }

    /// The plugin's current install Job exists: follow it.
    fn follow_install(
        &mut self,
        plugin: &'a VirtualClusterPlugin,
        job: &'a JobView,
        jobs: &[&'a JobView],
        old: Option<&PluginStatus>,
        mut entry: PluginStatus,
        may_act: bool,
    ) {
        let name = entry.name.clone();
        if !job.injected {
            if !job.deleting {
                self.steps.push(Step::DeleteJob {
                    name: job.name.clone(),
                    why: "the webhook did not mutate it".into(),
                });
            }
            self.webhook_missing(job, &mut entry, old);
            self.entries.push(entry);
            return;
        }
        self.webhook = Some((true, String::new()));
        if job.deleting {
            entry.message = Some(format!("job {} is being deleted", job.name));
            self.entries.push(entry);
            return;
        }
        match &job.outcome {
            JobOutcome::Running => {
                entry.phase = PluginPhase::Installing;
                entry.message = Some(format!("job {} is running", job.name));
                self.entries.push(entry);
            }
            JobOutcome::Succeeded => {
                entry.phase = PluginPhase::Succeeded;
                entry.finished_at = job.finished_at.map(Time);
                entry.message = Some("installed".into());
                // Finished installs of older specs have served their purpose; without this
                // every spec change would leave a Job behind for the cluster's lifetime.
                for old_job in jobs.iter().filter(|j| {
                    j.action == Action::Install
                        && j.spec_hash != job.spec_hash
                        && !j.deleting
                        && j.outcome != JobOutcome::Running
                }) {
                    self.steps.push(Step::DeleteJob {
                        name: old_job.name.clone(),
                        why: format!("superseded by job {} for the current spec", job.name),
                    });
                }
                if old.is_none_or(|o| o.phase != PluginPhase::Succeeded) {
                    self.note(
                        &name.clone(),
                        NoteKind::Normal,
                        "PluginInstalled",
                        format!("plugin {name} installed by job {}", job.name),
                    );
                    if let (Some(s), Some(f)) = (job.started_at, job.finished_at) {
                        self.installed.push((name.clone(), until(s, f)));
                    }
                }
                self.entries.push(entry);
            }
            JobOutcome::Failed { message } => {
                entry.finished_at = job.finished_at.map(Time);
                let failures = jobs
                    .iter()
                    .filter(|j| {
                        j.action == Action::Install
                            && j.spec_hash == job.spec_hash
                            && j.retry == self.retry
                            && j.injected
                            && matches!(j.outcome, JobOutcome::Failed { .. })
                    })
                    .count();
                let failures = u32::try_from(failures).unwrap_or(u32::MAX);
                let was_failed = old.is_some_and(|o| {
                    o.job_name.as_deref() == Some(job.name.as_str())
                        && matches!(o.phase, PluginPhase::Failed | PluginPhase::Pending)
                });
                if failures == 0 || failures >= self.settings.max_attempts {
                    // Attempts used up (or the failed Job predates the current retry request
                    // and so counts for nothing: then the retry starts below).
                    if failures >= self.settings.max_attempts {
                        entry.phase = PluginPhase::Failed;
                        entry.message = Some(format!(
                            "{message} (job {}, {failures} failed attempts; change the plugin or set annotation {} on the VirtualCluster to retry)",
                            job.name,
                            contract::RETRY_ANNOTATION
                        ));
                        if old.is_none_or(|o| o.phase != PluginPhase::Failed) {
                            self.note(
                                &name.clone(),
                                NoteKind::Warning,
                                "PluginFailed",
                                format!("plugin {name} failed: {message} (job {})", job.name),
                            );
                        }
                        self.entries.push(entry);
                        return;
                    }
                }
                // Once written, the retry time stays put (a Job without a finish time would
                // otherwise push it forward on every pass and never retry).
                let known = old
                    .filter(|o| o.job_name.as_deref() == Some(job.name.as_str()))
                    .and_then(|o| o.next_retry_at.as_ref())
                    .map(|t| t.0);
                let at = if failures == 0 {
                    self.obs.now
                } else {
                    known.unwrap_or_else(|| {
                        let from = job.finished_at.unwrap_or(self.obs.now);
                        add(from, backoff(self.settings, failures))
                    })
                };
                if !was_failed && failures > 0 {
                    self.note(
                        &name.clone(),
                        NoteKind::Warning,
                        "InstallFailed",
                        format!(
                            "plugin {name}: job {} failed: {message}; retrying",
                            job.name
                        ),
                    );
                }
                if at > self.obs.now {
                    entry.message = Some(format!("attempt failed: {message}"));
                    entry.next_retry_at = Some(Time(at));
                    self.wake_at(at);
                    self.entries.push(entry);
                    return;
                }
                entry.message = Some(format!("attempt failed: {message}"));
                let hash = job.spec_hash.clone();
                self.start(
                    plugin,
                    &hash,
                    Action::Install,
                    job.attempt + 1,
                    entry,
                    may_act,
                );
            }
        }
    }

    /// A Job without the webhook's mark: say so and wait for the retry time.
    fn webhook_missing(
        &mut self,
        job: &JobView,
        entry: &mut PluginStatus,
        old: Option<&PluginStatus>,
    ) {
        let message = format!(
            "job {} was not mutated by the plugin webhook and was deleted: check that plugin-webhook is running and its MutatingWebhookConfiguration matches executor Jobs",
            job.name
        );
        self.webhook = Some((false, message.clone()));
        let known = old
            .filter(|o| o.job_name.as_deref() == Some(job.name.as_str()))
            .and_then(|o| o.next_retry_at.clone());
        let at = match known {
            Some(at) => at.0,
            None => {
                self.note(
                    &entry.name.clone(),
                    NoteKind::Warning,
                    "WebhookNotMutating",
                    message.clone(),
                );
                add(
                    self.obs.now,
                    backoff(
                        self.settings,
                        u32::try_from(entry.attempts.max(1)).unwrap_or(1),
                    ),
                )
            }
        };
        entry.phase = PluginPhase::Pending;
        entry.message = Some(message);
        entry.next_retry_at = Some(Time(at));
        self.wake_at(at);
    }

    /// Plugins with a status entry that are no longer in the set.
    fn leaving(&mut self, wanted: &BTreeSet<String>, may_act: bool) {
        let old: Vec<PluginStatus> = self
            .old
            .plugins
            .iter()
            .filter(|e| !wanted.contains(&e.name))
            .cloned()
            .collect();
        for e in old {
            let jobs = self.jobs_of(&e.name);
            if e.phase == PluginPhase::Uninstalled {
                self.entries.push(e);
                continue;
            }
            if jobs.is_empty() && matches!(e.phase, PluginPhase::Pending) {
                // Never got a Job: nothing to remove from the virtual cluster.
                continue;
            }
            let Some(plugin) = self.plugin(&e.name) else {
                self.note(
                    &e.name.clone(),
                    NoteKind::Warning,
                    "UninstallSkipped",
                    format!(
                        "plugin {} left the set but its VirtualClusterPlugin is gone: it cannot be uninstalled",
                        e.name
                    ),
                );
                continue;
            };
            self.uninstall(plugin, e, &jobs, wanted, may_act);
        }
    }

    fn uninstall(
        &mut self,
        plugin: &'a VirtualClusterPlugin,
        old: PluginStatus,
        jobs: &[&'a JobView],
        wanted: &BTreeSet<String>,
        may_act: bool,
    ) {
        let name = old.name.clone();
        let hash = contract::spec_hash(&plugin.spec);
        let latest = jobs.last().copied();
        let next_attempt = latest.map_or(1, |j| j.attempt + 1);
        let mut entry = PluginStatus {
            phase: PluginPhase::Uninstalling,
            spec_hash: Some(hash.clone()),
            next_retry_at: None,
            ..old.clone()
        };
        match latest {
            Some(job) if job.action == Action::Uninstall => {
                if entry.job_name.as_deref() != Some(job.name.as_str()) {
                    entry.job_name = Some(job.name.clone());
                }
                entry.started_at = job.started_at.map(Time);
                if !job.injected {
                    if !job.deleting {
                        self.steps.push(Step::DeleteJob {
                            name: job.name.clone(),
                            why: "the webhook did not mutate it".into(),
                        });
                    }
                    self.webhook_missing(job, &mut entry, Some(&old));
                    entry.phase = PluginPhase::Uninstalling;
                    self.entries.push(entry);
                    return;
                }
                self.webhook = Some((true, String::new()));
                match &job.outcome {
                    _ if job.deleting => {
                        entry.message = Some(format!("job {} is being deleted", job.name));
                        self.entries.push(entry);
                    }
                    JobOutcome::Running => {
                        entry.message = Some(format!("uninstall job {} is running", job.name));
                        self.entries.push(entry);
                    }
                    JobOutcome::Succeeded => {
                        entry.phase = PluginPhase::Uninstalled;
                        entry.finished_at = job.finished_at.map(Time);
                        entry.message = Some("uninstalled".into());
                        self.note(
                            &name.clone(),
                            NoteKind::Normal,
                            "PluginUninstalled",
                            format!("plugin {name} uninstalled by job {}", job.name),
                        );
                        self.entries.push(entry);
                    }
                    JobOutcome::Failed { message } => {
                        entry.finished_at = job.finished_at.map(Time);
                        let last_install = jobs
                            .iter()
                            .filter(|j| j.action == Action::Install)
                            .map(|j| j.attempt)
                            .max()
                            .unwrap_or(0);
                        let failures = jobs
                            .iter()
                            .filter(|j| {
                                j.action == Action::Uninstall
                                    && j.attempt > last_install
                                    && j.retry == self.retry
                                    && matches!(j.outcome, JobOutcome::Failed { .. })
                            })
                            .count();
                        let failures = u32::try_from(failures).unwrap_or(u32::MAX);
                        if failures >= self.settings.max_attempts {
                            entry.phase = PluginPhase::Failed;
                            entry.message = Some(format!(
                                "uninstall failed: {message} (job {}, {failures} failed attempts)",
                                job.name
                            ));
                            if old.phase != PluginPhase::Failed {
                                self.note(
                                    &name.clone(),
                                    NoteKind::Warning,
                                    "UninstallFailed",
                                    format!(
                                        "plugin {name}: uninstall failed: {message} (job {})",
                                        job.name
                                    ),
                                );
                            }
                            self.entries.push(entry);
                            return;
                        }
                        let known = (old.job_name.as_deref() == Some(job.name.as_str()))
                            .then(|| old.next_retry_at.as_ref().map(|t| t.0))
                            .flatten();
                        let at = if failures == 0 {
                            self.obs.now
                        } else {
                            known.unwrap_or_else(|| {
                                add(
                                    job.finished_at.unwrap_or(self.obs.now),
                                    backoff(self.settings, failures),
                                )
                            })
                        };
                        entry.message = Some(format!("uninstall attempt failed: {message}"));
                        if at > self.obs.now {
                            entry.next_retry_at = Some(Time(at));
                            self.wake_at(at);
                            self.entries.push(entry);
                            return;
                        }
                        self.start(
                            plugin,
                            &hash,
                            Action::Uninstall,
                            job.attempt + 1,
                            entry,
                            may_act,
                        );
                    }
                }
            }
            Some(job) if !job.deleting && job.outcome == JobOutcome::Running => {
                self.steps.push(Step::DeleteJob {
                    name: job.name.clone(),
                    why: format!("plugin {name} left the set; its install job is stopped"),
                });
                entry.message = Some(format!("stopping install job {}", job.name));
                self.entries.push(entry);
            }
            Some(job) if job.deleting => {
                if !job.injected {
                    self.webhook_missing(job, &mut entry, Some(&old));
                    entry.phase = PluginPhase::Uninstalling;
                } else {
                    entry.message = Some(format!("waiting for job {} to be deleted", job.name));
                }
                self.entries.push(entry);
            }
            _ => {
                if let Some(at) = old.next_retry_at.clone().filter(|at| at.0 > self.obs.now) {
                    entry.next_retry_at = Some(at.clone());
                    self.wake_at(at.0);
                    self.entries.push(entry);
                    return;
                }
                // Plugins that depend on this one and leave too go first, the reverse of the
                // install order.
                let dependents: Vec<String> = self
                    .old
                    .plugins
                    .iter()
                    .filter(|o| {
                        o.name != name
                            && !wanted.contains(&o.name)
                            && o.phase != PluginPhase::Uninstalled
                            && (o.phase != PluginPhase::Pending
                                || !self.jobs_of(&o.name).is_empty())
                            && self
                                .plugin(&o.name)
                                .is_some_and(|q| q.spec.depends_on.iter().any(|d| d.name == name))
                    })
                    .map(|o| o.name.clone())
                    .collect();
                if !dependents.is_empty() {
                    entry.message = Some(format!(
                        "waiting for {} to be uninstalled first",
                        dependents.join(", ")
                    ));
                    self.entries.push(entry);
                    return;
                }
                entry.attempts = 0;
                self.start(
                    plugin,
                    &hash,
                    Action::Uninstall,
                    next_attempt,
                    entry,
                    may_act,
                );
            }
        }
    }

    fn finish(mut self) -> Plan {
        let obs = self.obs;
        let now = obs.now;
        let resolved = resolve(obs.vc, obs.plugins);
        let wanted: BTreeSet<String> = match &resolved {
            Ok(order) => order
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .collect(),
            Err(_) => BTreeSet::new(),
        };
        let in_set: Vec<&PluginStatus> = self
            .entries
            .iter()
            .filter(|e| wanted.contains(&e.name))
            .collect();
        let succeeded = in_set
            .iter()
            .filter(|e| e.phase == PluginPhase::Succeeded)
            .count();
        let total = in_set.len();
        let any_failed = in_set.iter().any(|e| e.phase == PluginPhase::Failed);
        let uninstalling = self
            .entries
            .iter()
            .any(|e| !wanted.contains(&e.name) && e.phase == PluginPhase::Uninstalling);
        let all_done = resolved.is_ok() && succeeded == total && !uninstalling;

        let mut conditions = Vec::new();
        let old_conditions = self.old.conditions.clone();
        let mut set = |type_: &str, ok: bool, reason: &str, message: String| {
            conditions.push(condition_at(
                &old_conditions,
                now,
                type_,
                ok,
                reason,
                message,
            ));
        };
        match &resolved {
            Ok(order) => set(
                condition::PLUGINS_RESOLVED,
                true,
                "Resolved",
                format!("{} plugins to install", order.len()),
            ),
            Err(problems) => {
                let message = problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ");
                let reason = problems.first().map_or("Unresolved", Problem::reason);
                let was = self
                    .old
                    .conditions
                    .iter()
                    .find(|c| c.type_ == condition::PLUGINS_RESOLVED)
                    .map(|c| c.message.clone());
                if was.as_deref() != Some(message.as_str()) {
                    self.notes.push(Note {
                        kind: NoteKind::Warning,
                        reason,
                        message: message.clone(),
                        plugin: None,
                    });
                }
                set(condition::PLUGINS_RESOLVED, false, reason, message);
            }
        }
        match &obs.kubeconfig {
            Kubeconfig::Available => set(
                condition::KUBECONFIG_AVAILABLE,
                true,
                "Available",
                "the kubeconfig Secret for executor Jobs is up to date".into(),
            ),
            Kubeconfig::Missing(why) => set(
                condition::KUBECONFIG_AVAILABLE,
                false,
                "KubeconfigMissing",
                why.clone(),
            ),
        }
        match self.webhook.clone() {
            Some((true, _)) => set(
                condition::WEBHOOK_MUTATING,
                true,
                "Mutated",
                "executor Jobs carry the webhook's mark".into(),
            ),
            Some((false, message)) => {
                set(condition::WEBHOOK_MUTATING, false, "NotMutated", message)
            }
            None => {
                // No Job seen this time: keep what was last learnt.
                if let Some(c) = old_conditions
                    .iter()
                    .find(|c| c.type_ == condition::WEBHOOK_MUTATING)
                {
                    set(
                        condition::WEBHOOK_MUTATING,
                        c.status == "True",
                        &c.reason.clone(),
                        c.message.clone(),
                    );
                }
            }
        }
        let current = obs.vc.phase().to_owned();
        let ready = current == phase::ALL_NODE_READY
            || current == phase::COMPLETED
            || obs.readiness == Readiness::Ready;
        let (ok, reason, message) = if all_done {
            (
                true,
                "AllSucceeded",
                format!("{succeeded}/{total} plugins installed"),
            )
        } else if resolved.is_err() {
            (
                false,
                "Waiting",
                "the plugin set does not resolve (see PluginsResolved)".into(),
            )
        } else if any_failed {
            let failed: Vec<&str> = in_set
                .iter()
                .filter(|e| e.phase == PluginPhase::Failed)
                .map(|e| e.name.as_str())
                .collect();
            (false, "Failed", format!("failed: {}", failed.join(", ")))
        } else if obs.deletion.is_some() {
            (
                false,
                "Deleting",
                "the virtual cluster is being deleted".into(),
            )
        } else if !ready {
            (
                false,
                "Waiting",
                format!(
                    "waiting for phase {} (now {:?})",
                    phase::ALL_NODE_READY,
                    current
                ),
            )
        } else if uninstalling {
            (
                false,
                "Uninstalling",
                "uninstalling plugins that left the set".into(),
            )
        } else {
            (
                false,
                "Installing",
                format!("{succeeded}/{total} plugins installed"),
            )
        };
        set(condition::PLUGINS_INSTALLED, ok, reason, message);
        match &obs.readiness {
            Readiness::External => {}
            Readiness::Ready => set(
                condition::VIRTUAL_CLUSTER_READY,
                true,
                "Ready",
                "the virtual API answers and the promoted nodes are Ready".into(),
            ),
            Readiness::NotReady(why) => set(
                condition::VIRTUAL_CLUSTER_READY,
                false,
                "NotReady",
                why.clone(),
            ),
        }

        // The phase: Completed only when every plugin of a resolved set succeeded; back to
        // AllNodeReady while plugins (re)install or uninstall, so Completed never lies.
        let mut new_phase = current.clone();
        let mut reason_text = self.old.reason.clone();
        if obs.deletion.is_none() && ready {
            if all_done {
                new_phase = phase::COMPLETED.to_owned();
                if current != phase::COMPLETED {
                    reason_text = Some(format!("all {total} plugins installed"));
                    self.notes.push(Note {
                        kind: NoteKind::Normal,
                        reason: "Completed",
                        message: format!("all {total} plugins installed"),
                        plugin: None,
                    });
                }
            } else {
                new_phase = phase::ALL_NODE_READY.to_owned();
                if current != phase::ALL_NODE_READY {
                    reason_text = Some(if current == phase::COMPLETED {
                        "plugins changed: installing again".to_owned()
                    } else {
                        "promoted nodes are ready: installing plugins".to_owned()
                    });
                }
            }
        }
        let update_time = if new_phase != current {
            Some(Time(now))
        } else {
            self.old.update_time.clone()
        };
        let cleanup_done = match &obs.deletion {
            None => false,
            Some(d) => {
                !d.uninstall
                    || d.deadline_passed
                    || !self
                        .entries
                        .iter()
                        .any(|e| e.phase == PluginPhase::Uninstalling)
            }
        };
        let requeue_after = self.wake.map(|t| until(now, t).max(Duration::from_secs(1)));
        Plan {
            steps: self.steps,
            status: VirtualClusterStatus {
                phase: (!new_phase.is_empty()).then_some(new_phase),
                reason: reason_text,
                update_time,
                plugin_progress: Some(format!("{succeeded}/{total}")),
                conditions,
                plugins: self.entries,
                ..VirtualClusterStatus::default()
            },
            notes: self.notes,
            requeue_after,
            cleanup_done,
            installed: self.installed,
        }
    }
}

/// A condition, keeping its last transition time while its status stays the same.
fn condition_at(
    old: &[Condition],
    now: Timestamp,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let since = match old.iter().find(|c| c.type_ == type_) {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(now),
    };
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time: since,
        observed_generation: None,
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
