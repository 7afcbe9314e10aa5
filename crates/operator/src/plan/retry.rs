//! When a failed plugin is tried again: which failures count, the backoff, and the retry time.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kosmos_api::contract::Action;
use kosmos_api::{PluginStatus, condition};

use super::{JobOutcome, JobView, Planner, Settings, WEBHOOK_UNAVAILABLE, add, until};

/// Delay before retry number `failures` (1 = after the first failure): base, doubling, capped.
pub fn backoff(settings: &Settings, failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    settings
        .backoff_base
        .saturating_mul(1u32 << exponent)
        .min(settings.backoff_max)
}

/// Delay before the next Job after the webhook could not be called, for an outage that began
/// at `since`: as long as the outage has lasted so far, at least the base and at most the
/// maximum. Retries so come at base, 2·base, 4·base, … after the outage began: exponential and
/// bounded, with nothing to count but the condition's transition time.
pub fn outage_backoff(settings: &Settings, since: Timestamp, now: Timestamp) -> Duration {
    until(since, now).clamp(
        settings.backoff_base,
        settings.backoff_max.max(settings.backoff_base),
    )
}

impl Planner<'_, '_> {
    /// When the current webhook outage began: the transition time of `WebhookMutating=False`
    /// with reason `WebhookUnavailable`, or now for a new one.
    pub(super) fn outage_since(&self) -> Timestamp {
        self.old
            .conditions
            .iter()
            .find(|c| {
                c.type_ == condition::WEBHOOK_MUTATING
                    && c.status == "False"
                    && c.reason == WEBHOOK_UNAVAILABLE
            })
            .map_or(self.obs.now, |c| c.last_transition_time.0)
    }

    /// The failed attempts of `job`'s action that count against `max_attempts`, among the
    /// plugin's `jobs`: those under the current retry request (a failure before it counts for
    /// nothing, so the request starts afresh); for an install, those of the same spec that the
    /// webhook mutated (an unmutated Job never ran the plugin); for an uninstall, those since
    /// the last install.
    pub(super) fn failures(&self, jobs: &[&JobView], job: &JobView) -> u32 {
        let last_install = jobs
            .iter()
            .filter(|j| j.id.action == Action::Install)
            .map(|j| j.id.attempt)
            .max()
            .unwrap_or(0);
        let counted = jobs
            .iter()
            .filter(|j| {
                j.id.action == job.id.action
                    && j.id.retry == self.retry
                    && matches!(j.outcome, JobOutcome::Failed { .. })
                    && match job.id.action {
                        Action::Install => j.id.spec_hash == job.id.spec_hash && j.injected,
                        Action::Uninstall => j.id.attempt > last_install,
                    }
            })
            .count();
        u32::try_from(counted).unwrap_or(u32::MAX)
    }

    /// When to start the attempt after failed `job`, with `failures` counted: now when none
    /// counts, else the backoff from the Job's end. Once written into the status (`old`, while
    /// it follows this Job) the time stays put: a Job without a finish time would otherwise push
    /// it forward on every pass and never retry.
    pub(super) fn retry_at(
        &self,
        job: &JobView,
        old: Option<&PluginStatus>,
        failures: u32,
    ) -> Timestamp {
        if failures == 0 {
            return self.obs.now;
        }
        let known = old
            .filter(|o| o.job_name.as_deref() == Some(job.name.as_str()))
            .and_then(|o| o.next_retry_at.as_ref())
            .map(|t| t.0);
        known.unwrap_or_else(|| {
            add(
                job.finished_at.unwrap_or(self.obs.now),
                backoff(self.settings, failures),
            )
        })
    }
}
