//! A stand-in for the kubelet until the cluster has one: it writes an executor pod's final status
//! the way a kubelet would after the container exited, so the real job controller counts the pod
//! and finishes (or fails) its Job.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::batch::v1::{Job, JobCondition};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::wait_for;

/// How an executor pod ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodOutcome {
    /// Every container exited 0; `message` becomes the last container's termination message.
    Succeeded {
        /// What the container wrote to its termination-message path.
        message: String,
    },
    /// The last container exited with `exit_code` (non-zero); the others exited 0.
    Failed {
        /// The failing container's exit code.
        exit_code: i32,
        /// What the container wrote to its termination-message path.
        message: String,
    },
}

/// The pods the job controller created for Job `namespace/job`, by the label it sets on them.
pub async fn job_pods(client: &Client, namespace: &str, job: &str) -> Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await
        .with_context(|| format!("listing the pods of job {namespace}/{job}"))?;
    Ok(list.items)
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Waits until the job controller has created a pod for Job `namespace/job` that has not
/// finished yet, and returns it.
pub async fn wait_for_job_pod(
    client: &Client,
    namespace: &str,
    job: &str,
    timeout: Duration,
) -> Result<Pod> {
    wait_for(
        &format!("a running pod of job {namespace}/{job}"),
        timeout,
        || async {
            let pods = job_pods(client, namespace, job).await?;
            Ok(pods
                .into_iter()
                .find(|p| !is_terminal(p) && p.metadata.deletion_timestamp.is_none()))
        },
    )
    .await
}

/// Writes pod `namespace/name`'s status as a kubelet would once its containers exited with
/// `outcome`: phase, and a terminated state with exit code and message for every container
/// (init containers exited 0 before them).
pub async fn finish_pod(
    client: &Client,
    namespace: &str,
    name: &str,
    outcome: &PodOutcome,
) -> Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = pods
        .get(name)
        .await
        .with_context(|| format!("reading pod {namespace}/{name}"))?;
    let status = final_status(&pod, outcome, Timestamp::now())?;
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .with_context(|| format!("writing the final status of pod {namespace}/{name}"))
}

/// Waits for the next pod of Job `namespace/job` and finishes it with `outcome`.
pub async fn wait_for_job_pod_and_finish(
    client: &Client,
    namespace: &str,
    job: &str,
    outcome: &PodOutcome,
    timeout: Duration,
) -> Result<Pod> {
    let pod = wait_for_job_pod(client, namespace, job, timeout).await?;
    let name = pod
        .metadata
        .name
        .context("the job controller made a pod without a name")?;
    finish_pod(client, namespace, &name, outcome).await
}

/// Waits until Job `namespace/job` has condition `condition_type` (`Complete`, `Failed`, ...)
/// with status `True`, and returns that condition.
pub async fn wait_for_job_condition(
    client: &Client,
    namespace: &str,
    job: &str,
    condition_type: &str,
    timeout: Duration,
) -> Result<JobCondition> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    wait_for(
        &format!("condition {condition_type}=True on job {namespace}/{job}"),
        timeout,
        || async {
            let job = jobs.get(job).await?;
            Ok(job
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.type_ == condition_type && c.status == "True"))
        },
    )
    .await
}

/// The status object the kubelet would write; pure so that it is unit-tested.
fn final_status(pod: &Pod, outcome: &PodOutcome, now: Timestamp) -> Result<Value> {
    let spec = pod.spec.as_ref().context("the pod has no spec")?;
    if spec.containers.is_empty() {
        bail!("the pod has no containers");
    }
    let (phase, exit_code, message) = match outcome {
        PodOutcome::Succeeded { message } => ("Succeeded", 0, message.as_str()),
        PodOutcome::Failed { exit_code, message } => {
            if *exit_code == 0 {
                bail!("a failed pod needs a non-zero exit code");
            }
            ("Failed", *exit_code, message.as_str())
        }
    };
    let now = now.to_string();
    let terminated = |name: &str, image: &str, code: i32, message: &str| {
        json!({
            "name": name,
            "image": image,
            "imageID": "",
            "ready": false,
            "restartCount": 0,
            "started": false,
            "state": { "terminated": {
                "exitCode": code,
                "reason": if code == 0 { "Completed" } else { "Error" },
                "message": message,
                "startedAt": now,
                "finishedAt": now,
            }},
        })
    };
    let init: Vec<Value> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| terminated(&c.name, c.image.as_deref().unwrap_or_default(), 0, ""))
        .collect();
    let last = spec.containers.len() - 1;
    let containers: Vec<Value> = spec
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let image = c.image.as_deref().unwrap_or_default();
            if i == last {
                terminated(&c.name, image, exit_code, message)
            } else {
                terminated(&c.name, image, 0, "")
            }
        })
        .collect();
    let mut status = json!({
        "phase": phase,
        "containerStatuses": containers,
        "conditions": [
            { "type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now },
            { "type": "ContainersReady", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now },
        ],
    });
    if !init.is_empty() {
        status["initContainerStatuses"] = Value::Array(init);
    }
    if phase == "Failed" {
        status["reason"] = json!("Error");
        status["message"] = json!(message);
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Result<Pod> {
        Ok(serde_json::from_value(json!({
            "metadata": { "name": "p" },
            "spec": {
                "initContainers": [{ "name": "fetch", "image": "busybox" }],
                "containers": [
                    { "name": "sidecar", "image": "busybox" },
                    { "name": "install", "image": "kosmos/executor" },
                ],
            },
        }))?)
    }

    #[test]
    fn failed_pod_reports_the_exit_code_on_the_last_container() -> Result<()> {
        let outcome = PodOutcome::Failed {
            exit_code: 3,
            message: "helm said no".into(),
        };
        let status = final_status(&pod()?, &outcome, Timestamp::UNIX_EPOCH)?;
        assert_eq!(status["phase"], "Failed");
        let install = &status["containerStatuses"][1]["state"]["terminated"];
        assert_eq!(install["exitCode"], 3);
        assert_eq!(install["message"], "helm said no");
        assert_eq!(
            status["containerStatuses"][0]["state"]["terminated"]["exitCode"],
            0
        );
        assert_eq!(status["initContainerStatuses"][0]["name"], "fetch");
        Ok(())
    }

    #[test]
    fn succeeded_pod_has_exit_code_zero_everywhere() -> Result<()> {
        let outcome = PodOutcome::Succeeded {
            message: "ok".into(),
        };
        let status = final_status(&pod()?, &outcome, Timestamp::UNIX_EPOCH)?;
        assert_eq!(status["phase"], "Succeeded");
        for c in status["containerStatuses"].as_array().into_iter().flatten() {
            assert_eq!(c["state"]["terminated"]["exitCode"], 0);
        }
        Ok(())
    }

    #[test]
    fn failure_with_exit_code_zero_is_refused() -> Result<()> {
        let outcome = PodOutcome::Failed {
            exit_code: 0,
            message: String::new(),
        };
        assert!(final_status(&pod()?, &outcome, Timestamp::UNIX_EPOCH).is_err());
        Ok(())
    }
}
