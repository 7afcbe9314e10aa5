//! The status a decision writes: conditions, phase, progress and the plugin entries.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kosmos_api::{PluginPhase, PluginStatus, VirtualClusterStatus, condition, phase};

use super::{
    Kubeconfig, Note, NoteKind, Planner, Problem, Readiness, Resolved, WEBHOOK_UNAVAILABLE,
    WebhookSeen,
};

impl<'a> Planner<'a, '_> {
    /// The status to write after this decision's steps: conditions, phase, progress and the
    /// plugin entries (moved out of the planner). May add events (a condition that changed).
    pub(super) fn status(&mut self, resolved: &Resolved<'a>) -> VirtualClusterStatus {
        let obs = self.obs;
        let now = obs.now;
        let wanted: BTreeSet<String> = match resolved {
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
        let mut outage_began = false;
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
        match resolved {
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
            Kubeconfig::Refused(why) => {
                let was = old_conditions
                    .iter()
                    .find(|c| c.type_ == condition::KUBECONFIG_AVAILABLE)
                    .map(|c| c.message.as_str());
                if was != Some(why.as_str()) {
                    self.notes.push(Note {
                        kind: NoteKind::Warning,
                        reason: "KubeconfigRefused",
                        message: why.clone(),
                        plugin: None,
                    });
                }
                set(
                    condition::KUBECONFIG_AVAILABLE,
                    false,
                    "KubeconfigRefused",
                    why.clone(),
                );
            }
        }
        let webhook_was = old_conditions
            .iter()
            .find(|c| c.type_ == condition::WEBHOOK_MUTATING)
            .map(|c| (c.status.clone(), c.reason.clone()));
        let outage = obs.webhook_unavailable.clone().map(|why| {
            WebhookSeen::Missing(format!(
                "the API server could not call the webhook to create executor Jobs: {why}"
            ))
        });
        match outage.or_else(|| self.webhook.clone()) {
            Some(WebhookSeen::Mutating) => {
                if webhook_was.as_ref().is_some_and(|(s, _)| s == "False") {
                    self.notes.push(Note {
                        kind: NoteKind::Normal,
                        reason: "WebhookMutating",
                        message: "executor Jobs carry the webhook's mark again".into(),
                        plugin: None,
                    });
                }
                set(
                    condition::WEBHOOK_MUTATING,
                    true,
                    "Mutated",
                    "executor Jobs carry the webhook's mark".into(),
                );
            }
            Some(WebhookSeen::Missing(message)) if obs.webhook_unavailable.is_some() => {
                let ongoing = webhook_was
                    .as_ref()
                    .is_some_and(|(s, r)| s == "False" && r == WEBHOOK_UNAVAILABLE);
                if !ongoing {
                    self.notes.push(Note {
                        kind: NoteKind::Warning,
                        reason: WEBHOOK_UNAVAILABLE,
                        message: format!("{message}; retrying with backoff"),
                        plugin: None,
                    });
                }
                outage_began = !ongoing;
                set(
                    condition::WEBHOOK_MUTATING,
                    false,
                    WEBHOOK_UNAVAILABLE,
                    message,
                );
            }
            Some(WebhookSeen::Missing(message)) => {
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
        // Jobs whose mark does not verify: said in a condition (and an event when the set
        // changes) for as long as they exist; nothing else of ours looks at them.
        let ns = obs.vc.metadata.namespace.clone().unwrap_or_default();
        let forged: Vec<String> = obs
            .jobs
            .iter()
            .filter(|j| !j.deleting)
            .filter_map(|j| {
                j.forged
                    .as_ref()
                    .map(|why| format!("job {ns}/{} ({why})", j.name))
            })
            .collect();
        let verified_was = old_conditions
            .iter()
            .find(|c| c.type_ == condition::JOBS_VERIFIED);
        if !forged.is_empty() {
            let message = format!(
                "{}: the webhook did not mark these Jobs, so they are not counted and the plugins \
                 go on with Jobs under other names; delete them and find out who made them",
                forged.join("; ")
            );
            if verified_was.is_none_or(|c| c.message != message) {
                self.notes.push(Note {
                    kind: NoteKind::Warning,
                    reason: "JobMarkInvalid",
                    message: message.clone(),
                    plugin: None,
                });
            }
            set(condition::JOBS_VERIFIED, false, "MarkInvalid", message);
        } else if verified_was.is_some() {
            set(
                condition::JOBS_VERIFIED,
                true,
                "Verified",
                "every executor Job's mark verifies".into(),
            );
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

        if outage_began {
            // The transition time marks the outage's start (the backoff grows from it), even
            // when the condition was already False for another reason.
            for c in conditions
                .iter_mut()
                .filter(|c| c.type_ == condition::WEBHOOK_MUTATING)
            {
                c.last_transition_time = Time(now);
            }
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
        VirtualClusterStatus {
            phase: (!new_phase.is_empty()).then_some(new_phase),
            reason: reason_text,
            update_time,
            plugin_progress: Some(format!("{succeeded}/{total}")),
            conditions,
            plugins: std::mem::take(&mut self.entries),
            ..VirtualClusterStatus::default()
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
