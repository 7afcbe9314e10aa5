//! Bare executor Jobs (what the operator creates for the webhook to mutate) and what it reads
//! back from Jobs and their Pods. Pure: the controller does the API calls.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{LocalObjectReference, Pod, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kosmos_api::VirtualCluster;
use kosmos_api::contract::{self, ExecutorJobId};
use kosmos_api::mark;
use kube::Resource;

use crate::plan::{JobOutcome, JobView, NewJob};

/// Longest failure message kept in status and events (events cap their note at 1 kB).
const MAX_MESSAGE: usize = 800;

/// An owner reference that makes the VirtualCluster own (and garbage-collect) an object.
pub fn owner_reference(vc: &VirtualCluster) -> Option<OwnerReference> {
    let mut owner = vc.controller_owner_ref(&())?;
    // Deleting the VirtualCluster must not wait on its Jobs (foreground deletion would block on
    // Jobs whose pods never finish when the virtual cluster is gone).
    owner.block_owner_deletion = Some(false);
    Some(owner)
}

/// What the cluster admin sets for every executor pod (the chart's `executor.imagePullSecrets`
/// and `executor.resources`). The webhook's mutation leaves both alone.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExecutorPod {
    /// Secrets (in the VirtualCluster's namespace) to pull the executor image with.
    pub image_pull_secrets: Vec<String>,
    /// Requests and limits of the executor container.
    pub resources: Option<ResourceRequirements>,
}

/// `job` with the admin's executor pod settings; settings left empty change nothing.
pub fn with_executor_pod(mut job: Job, settings: &ExecutorPod) -> Job {
    let Some(pod) = job.spec.as_mut().and_then(|s| s.template.spec.as_mut()) else {
        return job;
    };
    if !settings.image_pull_secrets.is_empty() {
        pod.image_pull_secrets = Some(
            settings
                .image_pull_secrets
                .iter()
                .map(|name| LocalObjectReference { name: name.clone() })
                .collect(),
        );
    }
    if let Some(resources) = &settings.resources {
        for container in &mut pod.containers {
            container.resources = Some(resources.clone());
        }
    }
    job
}

/// The bare executor Job for `new` ([`ExecutorJobId::bare_job`]), owned by the VirtualCluster.
pub fn bare_job(vc: &VirtualCluster, new: &NewJob, default_image: &str) -> Job {
    let image = new.executor_image.as_deref().unwrap_or(default_image);
    let namespace = vc.metadata.namespace.as_deref().unwrap_or_default();
    let mut job = new.id.bare_job(namespace, new.timeout_seconds, image);
    job.metadata.owner_references = owner_reference(vc).map(|o| vec![o]);
    job
}

/// Whether the Job carries a mark at all (whether it verifies is [`job_view`]'s question).
pub fn has_mark(job: &Job) -> bool {
    job.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(contract::INJECTED_ANNOTATION))
}

/// True when the Job has condition `type_` with status True.
fn has_condition(job: &Job, type_: &str) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

/// Whether the Job has failed (so its pod's termination message is worth reading).
pub fn has_failed(job: &Job) -> bool {
    has_condition(job, "Failed")
}

/// What the operator needs of an executor Job, or None when it is not one (labels or
/// annotations missing or garbled, see [`ExecutorJobId::parse`]: such a Job is ignored, never
/// counted). `pod_message` is the executor pod's
/// termination message, read by the caller for failed Jobs.
///
/// A mark counts only if it verifies with one of `keys` (the mark key Secret's; the caller reads
/// them when the Job has a mark at all, see [`has_mark`]).
pub fn job_view(job: &Job, pod_message: Option<String>, keys: &[mark::Key]) -> Option<JobView> {
    let id = ExecutorJobId::parse(&job.metadata).ok()?;
    let (injected, forged) = if has_mark(job) {
        match mark::verify(keys, job) {
            Ok(()) => (true, None),
            Err(e) => (false, Some(e.to_string())),
        }
    } else {
        (false, None)
    };
    let status = job.status.clone().unwrap_or_default();
    let outcome = if has_condition(job, "Complete") {
        JobOutcome::Succeeded
    } else if has_failed(job) {
        let condition = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Failed" && c.status == "True");
        let from_job = condition.map(|c| {
            format!(
                "job failed: {} {}",
                c.reason.as_deref().unwrap_or_default(),
                c.message.as_deref().unwrap_or_default()
            )
            .trim()
            .to_owned()
        });
        JobOutcome::Failed {
            message: cut(&pod_message
                .or(from_job)
                .unwrap_or_else(|| "job failed".to_owned())),
        }
    } else {
        JobOutcome::Running
    };
    let finished_at = status.completion_time.map(|t| t.0).or_else(|| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Failed" && c.status == "True")
            .and_then(|c| c.last_transition_time.clone())
            .map(|t| t.0)
    });
    Some(JobView {
        name: job.metadata.name.clone()?,
        id,
        injected,
        forged,
        taken_names: job
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(contract::TAKEN_NAMES_ANNOTATION))
            .map(|names| {
                names
                    .split(',')
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        deleting: job.metadata.deletion_timestamp.is_some(),
        outcome,
        started_at: job.metadata.creation_timestamp.as_ref().map(|t| t.0),
        finished_at: finished_at.filter(|_| job.status.is_some()),
    })
}

/// The failure reason from the newest failed executor pod: its termination message (what the
/// executor wrote to /dev/termination-log, or its log tail), exit code and reason.
pub fn termination_message(pods: &[Pod]) -> Option<String> {
    let mut failed: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed"))
        .collect();
    failed.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let pod = failed.last()?;
    let status = pod.status.as_ref()?;
    let container = status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == contract::EXECUTOR_CONTAINER)
        .or_else(|| status.container_statuses.as_ref()?.last());
    let Some(terminated) = container
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref())
    else {
        // Evicted, deadline exceeded, …: the pod's own reason says it.
        let reason = status.reason.clone().unwrap_or_default();
        let message = status.message.clone().unwrap_or_default();
        let text = format!("{reason} {message}").trim().to_owned();
        return (!text.is_empty()).then(|| cut(&text));
    };
    let detail = format!(
        "exit code {}{}",
        terminated.exit_code,
        terminated
            .reason
            .as_deref()
            .map(|r| format!(", {r}"))
            .unwrap_or_default()
    );
    let message = terminated.message.as_deref().map(str::trim).unwrap_or("");
    Some(cut(&if message.is_empty() {
        format!("executor failed ({detail})")
    } else {
        format!("{message} ({detail})")
    }))
}

/// At most [`MAX_MESSAGE`] characters, cut at a character boundary.
fn cut(text: &str) -> String {
    if text.chars().count() <= MAX_MESSAGE {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(MAX_MESSAGE).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use kosmos_api::VirtualClusterSpec;
    use kosmos_api::contract::Action;
    use serde_json::json;

    use super::*;

    fn vc() -> VirtualCluster {
        let mut vc = VirtualCluster::new("tenant1-cluster", VirtualClusterSpec::default());
        vc.metadata.namespace = Some("ns".into());
        vc.metadata.uid = Some("uid-1".into());
        vc
    }

    fn new_job(image: Option<&str>) -> NewJob {
        NewJob {
            id: ExecutorJobId::new("tenant1-cluster", "dns", Action::Install, "h1", 2, "r"),
            timeout_seconds: 600,
            executor_image: image.map(Into::into),
        }
    }

    #[test]
    fn executor_pod_settings_reach_the_pod_and_empty_ones_change_nothing() {
        let bare = bare_job(&vc(), &new_job(None), "img");
        assert_eq!(
            with_executor_pod(bare.clone(), &ExecutorPod::default()),
            bare
        );
        let resources: ResourceRequirements = serde_json::from_value(
            serde_json::json!({"requests": {"cpu": "100m"}, "limits": {"memory": "1Gi"}}),
        )
        .unwrap();
        let job = with_executor_pod(
            bare,
            &ExecutorPod {
                image_pull_secrets: vec!["regcred".into()],
                resources: Some(resources.clone()),
            },
        );
        let pod = job.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "regcred");
        assert_eq!(pod.containers[0].resources.as_ref(), Some(&resources));
    }

    #[test]
    fn bare_job_follows_the_contract() {
        let job = bare_job(&vc(), &new_job(None), "docker.io/alpine/k8s:1.34.1");
        let labels = job.metadata.labels.clone().unwrap();
        assert_eq!(labels[contract::EXECUTOR_LABEL], "true");
        assert_eq!(labels[contract::VIRTUAL_CLUSTER_LABEL], "tenant1-cluster");
        assert_eq!(labels[contract::PLUGIN_LABEL], "dns");
        assert_eq!(labels[contract::ACTION_LABEL], "install");
        let annotations = job.metadata.annotations.clone().unwrap();
        assert_eq!(annotations[contract::SPEC_HASH_ANNOTATION], "h1");
        assert_eq!(annotations[contract::ATTEMPT_ANNOTATION], "2");
        assert_eq!(
            annotations[contract::KUBECONFIG_SECRET_ANNOTATION],
            contract::kubeconfig_secret_name("tenant1-cluster")
        );
        assert!(!annotations.contains_key(contract::INJECTED_ANNOTATION));
        let owner = &job.metadata.owner_references.clone().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("VirtualCluster", "uid-1")
        );
        assert_eq!(owner.controller, Some(true));
        let spec = job.spec.clone().unwrap();
        assert_eq!(spec.backoff_limit, Some(0));
        assert_eq!(spec.active_deadline_seconds, Some(720));
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        let c = &pod.containers[0];
        assert_eq!(c.name, contract::EXECUTOR_CONTAINER);
        assert_eq!(c.image.as_deref(), Some("docker.io/alpine/k8s:1.34.1"));
        assert_eq!(c.command.clone().unwrap(), contract::UNMUTATED_COMMAND);
    }

    #[test]
    fn plugin_image_wins_over_the_default() {
        let job = bare_job(&vc(), &new_job(Some("registry.local/exec:1")), "default");
        let image = job.spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .clone();
        assert_eq!(image.as_deref(), Some("registry.local/exec:1"));
    }

    fn key() -> mark::Key {
        mark::Key::new(&[3; mark::KEY_BYTES]).unwrap()
    }

    fn with_status(status: serde_json::Value, injected: bool) -> Job {
        let mut job = bare_job(&vc(), &new_job(None), "img");
        if injected {
            let signed = mark::sign(&key(), &job);
            job.metadata
                .annotations
                .as_mut()
                .unwrap()
                .insert(contract::INJECTED_ANNOTATION.into(), signed);
        }
        job.status = Some(serde_json::from_value(status).unwrap());
        job
    }

    #[test]
    fn job_view_reads_labels_annotations_and_outcome() {
        let running = job_view(&with_status(json!({}), true), None, &[key()]).unwrap();
        assert_eq!(running.id.plugin, "dns");
        assert_eq!(running.id.action, Action::Install);
        assert_eq!(running.id.attempt, 2);
        assert_eq!(running.id.retry, "r");
        assert!(running.injected);
        assert_eq!(running.forged, None);
        assert_eq!(running.outcome, JobOutcome::Running);
        // A mark copied onto another Job, or made with another key, is forged, never injected.
        let mut copied = with_status(json!({}), true);
        copied
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(contract::ATTEMPT_ANNOTATION.into(), "3".into());
        let view = job_view(&copied, None, &[key()]).unwrap();
        assert!(!view.injected);
        assert!(view.forged.unwrap().contains("does not match this Job"));
        let other = mark::Key::new(&[4; mark::KEY_BYTES]).unwrap();
        let view = job_view(&with_status(json!({}), true), None, &[other]).unwrap();
        assert!(!view.injected && view.forged.is_some());

        let done = with_status(
            json!({"completionTime": "2026-01-01T00:00:00Z",
                   "conditions": [{"type": "Complete", "status": "True"}]}),
            false,
        );
        let done = job_view(&done, None, &[key()]).unwrap();
        assert_eq!(done.outcome, JobOutcome::Succeeded);
        assert!(!done.injected);
        assert!(done.finished_at.is_some());

        let failed = with_status(
            json!({"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                   "message": "Job was active longer than specified deadline",
                   "lastTransitionTime": "2026-01-01T00:00:00Z"}]}),
            true,
        );
        let view = job_view(&failed, None, &[key()]).unwrap();
        assert_eq!(
            view.outcome,
            JobOutcome::Failed {
                message:
                    "job failed: DeadlineExceeded Job was active longer than specified deadline"
                        .into()
            }
        );
        let view = job_view(
            &failed,
            Some("helm: boom (exit code 1, Error)".into()),
            &[key()],
        )
        .unwrap();
        assert_eq!(
            view.outcome,
            JobOutcome::Failed {
                message: "helm: boom (exit code 1, Error)".into()
            }
        );
    }

    #[test]
    fn a_job_without_contract_labels_is_not_ours() {
        let mut job = with_status(json!({}), true);
        job.metadata
            .labels
            .as_mut()
            .unwrap()
            .remove(contract::PLUGIN_LABEL);
        assert!(job_view(&job, None, &[]).is_none());
    }

    #[test]
    fn termination_message_of_the_newest_failed_pod() {
        let pod = |name: &str, created: &str, phase: &str, message: &str| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": name, "creationTimestamp": created},
                "status": {"phase": phase, "containerStatuses": [{
                    "name": contract::EXECUTOR_CONTAINER, "image": "i", "imageID": "", "ready": false,
                    "restartCount": 0,
                    "state": {"terminated": {"exitCode": 3, "reason": "Error", "message": message}}
                }]}
            }))
            .unwrap()
        };
        let pods = [
            pod("a", "2026-01-01T00:00:00Z", "Failed", "old"),
            pod("b", "2026-01-01T00:01:00Z", "Failed", "  chart not found\n"),
            pod("c", "2026-01-01T00:02:00Z", "Running", "none"),
        ];
        assert_eq!(
            termination_message(&pods).as_deref(),
            Some("chart not found (exit code 3, Error)")
        );
        assert_eq!(termination_message(&pods[2..]), None);
        let empty = [pod("d", "2026-01-01T00:00:00Z", "Failed", "")];
        assert_eq!(
            termination_message(&empty).as_deref(),
            Some("executor failed (exit code 3, Error)")
        );
    }

    #[test]
    fn long_messages_are_cut() {
        let long = "é".repeat(2000);
        assert_eq!(cut(&long).chars().count(), MAX_MESSAGE + 1);
    }
}
