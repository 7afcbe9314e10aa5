//! Each plugin's next step: install in order, follow an install, a Job without the webhook's
//! mark, plugins leaving the set, uninstall, and which Job names were taken.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kosmos_api::contract::{self, Action, ExecutorJobId};
use kosmos_api::{PluginPhase, PluginStatus, VirtualClusterPlugin, phase};

use super::retry::{backoff, outage_backoff};
use super::{
    Installed, JobOutcome, JobView, Kubeconfig, NewJob, Note, NoteKind, Planner, Readiness,
    Rejection, Resolved, Step, WebhookSeen, add, until,
};

impl<'a, 'o> Planner<'a, 'o> {
    fn old_entry(&self, plugin: &str) -> Option<&PluginStatus> {
        self.old.plugins.iter().find(|e| e.name == plugin)
    }

    fn plugin(&self, name: &str) -> Option<&'a VirtualClusterPlugin> {
        self.obs
            .plugins
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(name))
    }

    /// The VirtualCluster's plugin options: every install receives them, so they are part of
    /// the hash its Jobs are made for.
    fn options(&self) -> &'a [kosmos_api::PluginOption] {
        self.obs.vc.spec.options()
    }

    /// The plugin's Jobs, in sequence order; Jobs with a forged mark are not among them.
    fn jobs_of(&self, plugin: &str) -> Vec<&'a JobView> {
        let mut jobs: Vec<&JobView> = self
            .obs
            .jobs
            .iter()
            .filter(|j| j.id.plugin == plugin && j.forged.is_none())
            .collect();
        jobs.sort_by_key(|j| j.id.attempt);
        jobs
    }

    /// The attempt number of the plugin's next Job: past every Job it has, forged ones included,
    /// so the new Job never takes the name of one of them.
    fn next_attempt(&self, plugin: &str) -> u32 {
        self.obs
            .jobs
            .iter()
            .filter(|j| j.id.plugin == plugin)
            .map(|j| j.id.attempt)
            .max()
            .map_or(1, |a| a.saturating_add(1))
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

    /// Decides each plugin's next step: those of the resolved set install (in order), those
    /// that left it uninstall.
    pub(super) fn run(&mut self, resolved: &Resolved<'a>) {
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
        match (resolved, &self.obs.deletion) {
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
        self.taken_names();
    }

    /// Says, in an event and in the plugin's status, which Job held a name the operator meant
    /// to use and which Job it created instead.
    fn taken_names(&mut self) {
        let ns = self.obs.vc.metadata.namespace.clone().unwrap_or_default();
        let vc = self.obs.vc.metadata.name.clone().unwrap_or_default();
        let taken = |job: &str, instead: &str| {
            format!(
                "job name {ns}/{job} is taken by a Job that VirtualCluster {vc} does not own; \
                 created job {instead} instead"
            )
        };
        // The status, for as long as the plugin follows a Job that had to move.
        for entry in &mut self.entries {
            let Some(job) = self.obs.jobs.iter().find(|j| {
                Some(j.name.as_str()) == entry.job_name.as_deref() && !j.taken_names.is_empty()
            }) else {
                continue;
            };
            let said: Vec<String> = job
                .taken_names
                .iter()
                .map(|t| taken(t, &job.name))
                .collect();
            let said = said.join("; ");
            entry.message = Some(match entry.message.take() {
                Some(m) => format!("{said}; {m}"),
                None => said,
            });
        }
        // The event, once: in the reconciliation that moved the Job.
        for taken_name in self.obs.taken {
            let message = match &taken_name.instead {
                Some(instead) => taken(&taken_name.job, instead),
                None => format!(
                    "job name {ns}/{} is taken by a Job that VirtualCluster {vc} does not own",
                    taken_name.job
                ),
            };
            let taken = taken_name;
            self.note(
                &taken.plugin.clone(),
                NoteKind::Warning,
                "JobNameTaken",
                format!("plugin {}: {message}", taken.plugin),
            );
        }
    }

    /// Decides for one plugin of the set.
    fn install(&mut self, plugin: &'a VirtualClusterPlugin, may_act: bool) {
        let name = plugin.metadata.name.clone().unwrap_or_default();
        let hash = contract::install_hash(&plugin.spec, self.options());
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
        let next_attempt = self.next_attempt(&name);
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
        let current = latest.filter(|j| j.id.action == Action::Install && j.id.spec_hash == hash);
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
                Kubeconfig::Missing(why) | Kubeconfig::Refused(why) => {
                    format!("waiting for the kubeconfig: {why}")
                }
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
        if let (Some(why), true) = (
            self.obs.webhook_unavailable.as_ref(),
            self.obs.rejected.iter().any(|r| r.plugin == name),
        ) {
            // The webhook is down: not this plugin's fault, and the same for every plugin. One
            // event for the outage (see finish), retries spaced by how long it has lasted.
            let at = add(
                self.obs.now,
                outage_backoff(self.settings, self.outage_since(), self.obs.now),
            );
            entry.message = Some(format!(
                "the API server could not call the webhook for the {action} job: {why}"
            ));
            entry.next_retry_at = Some(Time(at));
            if action == Action::Uninstall {
                entry.phase = PluginPhase::Uninstalling;
            }
            self.wake_at(at);
            self.entries.push(entry);
            return;
        }
        if let Some(Rejection { message: why, .. }) =
            self.obs.rejected.iter().find(|r| r.plugin == name)
        {
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
        let forged = self
            .obs
            .jobs
            .iter()
            .filter(|j| {
                j.id.plugin == name
                    && j.id.action == action
                    && j.id.spec_hash == hash
                    && j.id.retry == self.retry
                    && j.forged.is_some()
            })
            .count();
        if forged >= usize::try_from(self.settings.max_attempts).unwrap_or(usize::MAX) {
            // Not a stream of Jobs when every mark fails (another mutating webhook changing the
            // Job after plugin-webhook signed it, or a key Secret out of step): stop and say so.
            entry.phase = PluginPhase::Failed;
            entry.message = Some(format!(
                "{forged} {action} jobs carry marks that do not verify (see condition {}): \
                 check that no other mutating webhook changes executor Jobs after plugin-webhook \
                 and that the operator reads the webhook's mark key Secret; then set annotation \
                 {} to retry",
                kosmos_api::condition::JOBS_VERIFIED,
                contract::RETRY_ANNOTATION
            ));
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
        let id = ExecutorJobId::new(&vc, &name, action, hash, attempt, &self.retry);
        let job_name = id.job_name();
        self.steps.push(Step::CreateJob(NewJob {
            id,
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
        self.webhook = Some(WebhookSeen::Mutating);
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
                    j.id.action == Action::Install
                        && j.id.spec_hash != job.id.spec_hash
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
                        self.installed.push(Installed {
                            plugin: name.clone(),
                            took: until(s, f),
                        });
                    }
                }
                self.entries.push(entry);
            }
            JobOutcome::Failed { message } => {
                let Some(entry) = self.failed_attempt(jobs, job, old, entry, message) else {
                    return;
                };
                let hash = job.id.spec_hash.clone();
                self.start(
                    plugin,
                    &hash,
                    Action::Install,
                    self.next_attempt(&name),
                    entry,
                    may_act,
                );
            }
        }
    }

    /// A failed attempt of `job` (install or uninstall): after `max_attempts` failures the plugin
    /// stays Failed, else the next attempt waits for its retry time. Either way the entry is
    /// recorded here and None returned; Some(entry) when the next attempt may start now.
    fn failed_attempt(
        &mut self,
        jobs: &[&JobView],
        job: &JobView,
        old: Option<&PluginStatus>,
        mut entry: PluginStatus,
        message: &str,
    ) -> Option<PluginStatus> {
        let name = entry.name.clone();
        let install = job.id.action == Action::Install;
        entry.finished_at = job.finished_at.map(Time);
        let failures = self.failures(jobs, job);
        if failures >= self.settings.max_attempts {
            entry.phase = PluginPhase::Failed;
            let (reason, event, status) = if install {
                (
                    "PluginFailed",
                    format!("plugin {name} failed: {message} (job {})", job.name),
                    format!(
                        "{message} (job {}, {failures} failed attempts; change the plugin or set annotation {} on the VirtualCluster to retry)",
                        job.name,
                        contract::RETRY_ANNOTATION
                    ),
                )
            } else {
                (
                    "UninstallFailed",
                    format!(
                        "plugin {name}: uninstall failed: {message} (job {})",
                        job.name
                    ),
                    format!(
                        "uninstall failed: {message} (job {}, {failures} failed attempts)",
                        job.name
                    ),
                )
            };
            entry.message = Some(status);
            if old.is_none_or(|o| o.phase != PluginPhase::Failed) {
                self.note(&name, NoteKind::Warning, reason, event);
            }
            self.entries.push(entry);
            return None;
        }
        let at = self.retry_at(job, old, failures);
        let was_failed = old.is_some_and(|o| {
            o.job_name.as_deref() == Some(job.name.as_str())
                && matches!(o.phase, PluginPhase::Failed | PluginPhase::Pending)
        });
        if install && !was_failed && failures > 0 {
            self.note(
                &name,
                NoteKind::Warning,
                "InstallFailed",
                format!(
                    "plugin {name}: job {} failed: {message}; retrying",
                    job.name
                ),
            );
        }
        entry.message = Some(if install {
            format!("attempt failed: {message}")
        } else {
            format!("uninstall attempt failed: {message}")
        });
        if at > self.obs.now {
            entry.next_retry_at = Some(Time(at));
            self.wake_at(at);
            self.entries.push(entry);
            return None;
        }
        Some(entry)
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
        self.webhook = Some(WebhookSeen::Missing(message.clone()));
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

    /// While deleting: nothing is left to wait for, so the finalizer may go (no uninstall asked,
    /// its time is up, or no plugin is still uninstalling).
    pub(super) fn cleanup_done(&self) -> bool {
        self.obs.deletion.as_ref().is_some_and(|d| {
            !d.uninstall
                || d.deadline_passed
                || !self
                    .entries
                    .iter()
                    .any(|e| e.phase == PluginPhase::Uninstalling)
        })
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
        let hash = contract::install_hash(&plugin.spec, self.options());
        let latest = jobs.last().copied();
        let next_attempt = self.next_attempt(&name);
        let mut entry = PluginStatus {
            phase: PluginPhase::Uninstalling,
            spec_hash: Some(hash.clone()),
            next_retry_at: None,
            ..old.clone()
        };
        match latest {
            Some(job) if job.id.action == Action::Uninstall => {
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
                self.webhook = Some(WebhookSeen::Mutating);
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
                        let Some(entry) =
                            self.failed_attempt(jobs, job, Some(&old), entry, message)
                        else {
                            return;
                        };
                        self.start(
                            plugin,
                            &hash,
                            Action::Uninstall,
                            self.next_attempt(&name),
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
}
