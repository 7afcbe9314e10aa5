//! Pods on the real node whose end the test decides: an *obedient* container (busybox) waits
//! until the test writes an outcome into an annotation of its pod, which the kubelet hands to it
//! through a downward-API file; it then writes the message to its termination log and exits with
//! the code. The kubelet reports the exit, the job controller counts the pod: nothing plays the
//! kubelet. Tests of the operator use this to make an executor Job succeed or fail on cue.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::batch::v1::{Job, JobCondition};
use k8s_openapi::api::core::v1::{Pod, PodSpec, Volume, VolumeMount};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::wait_for;

/// The annotation an obedient pod reads its outcome from: `<exit code> <message>`.
pub const OUTCOME_ANNOTATION: &str = "e2e.kosmos.io/outcome";

/// Where the obedient container sees the annotation.
const OUTCOME_DIR: &str = "/e2e-outcome";
const OUTCOME_VOLUME: &str = "e2e-outcome";

/// What the obedient container runs: wait for the outcome, report it, exit with it.
const OBEDIENT_SCRIPT: &str = r#"until [ -s /e2e-outcome/outcome ]; do sleep 0.2; done
read -r code message < /e2e-outcome/outcome
printf '%s' "$message" > /dev/termination-log
exit "$code""#;

/// How a pod ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodOutcome {
    /// The container exits 0; `message` becomes its termination message.
    Succeeded {
        /// What the container writes to its termination-message path.
        message: String,
    },
    /// The container exits with `exit_code` (non-zero).
    Failed {
        /// The container's exit code.
        exit_code: i32,
        /// What the container writes to its termination-message path.
        message: String,
    },
}

impl PodOutcome {
    /// The annotation value the obedient container parses.
    fn annotation(&self) -> Result<String> {
        let (code, message) = match self {
            Self::Succeeded { message } => (0, message),
            Self::Failed { exit_code, message } => {
                if *exit_code == 0 {
                    bail!("a failed pod needs a non-zero exit code");
                }
                (*exit_code, message)
            }
        };
        if message.contains('\n') {
            bail!("an outcome message is one line");
        }
        Ok(format!("{code} {message}"))
    }
}

/// Turns `container` into the obedient one (busybox image, the waiting script) and adds the
/// downward-API volume to `spec`. The container keeps its name.
pub fn make_obedient(spec: &mut PodSpec, container: usize) -> Result<()> {
    let c = spec
        .containers
        .get_mut(container)
        .with_context(|| format!("the pod has no container #{container}"))?;
    c.image = Some(crate::busybox_image());
    c.image_pull_policy = Some("IfNotPresent".into());
    c.command = Some(vec!["/bin/sh".into(), "-c".into(), OBEDIENT_SCRIPT.into()]);
    c.args = None;
    c.volume_mounts
        .get_or_insert_with(Vec::new)
        .push(VolumeMount {
            name: OUTCOME_VOLUME.into(),
            mount_path: OUTCOME_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    spec.volumes
        .get_or_insert_with(Vec::new)
        .push(outcome_volume()?);
    Ok(())
}

fn outcome_volume() -> Result<Volume> {
    Ok(serde_json::from_value(json!({
        "name": OUTCOME_VOLUME,
        "downwardAPI": { "items": [{
            "path": "outcome",
            "fieldRef": { "fieldPath": format!("metadata.annotations['{OUTCOME_ANNOTATION}']") },
        }]},
    }))?)
}

/// The JSON patch operations (RFC 6902) that make container #0 of a Job's pod template obedient:
/// what a stand-in admission webhook returns.
pub fn obedient_job_patch(job: &Value) -> Result<Value> {
    let template_spec = &job["spec"]["template"]["spec"];
    let mut spec: PodSpec =
        serde_json::from_value(template_spec.clone()).context("reading the Job's pod template")?;
    make_obedient(&mut spec, 0)?;
    Ok(json!([{
        "op": "replace",
        "path": "/spec/template/spec",
        "value": serde_json::to_value(&spec)?,
    }]))
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
    matches!(phase(pod), Some("Succeeded" | "Failed"))
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
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
            Ok(pods.into_iter().find(|p| {
                !is_terminal(p)
                    && p.metadata.deletion_timestamp.is_none()
                    && p.metadata
                        .annotations
                        .as_ref()
                        .is_none_or(|a| !a.contains_key(OUTCOME_ANNOTATION))
            }))
        },
    )
    .await
}

/// Tells obedient pod `namespace/name` to end with `outcome`, without waiting for it: for a pod
/// whose end removes it (an uninstall that lets its VirtualCluster and so the Job be collected).
pub async fn tell_pod(
    client: &Client,
    namespace: &str,
    name: &str,
    outcome: &PodOutcome,
) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let patch =
        json!({ "metadata": { "annotations": { OUTCOME_ANNOTATION: outcome.annotation()? } } });
    pods.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("annotating pod {namespace}/{name} with its outcome"))?;
    Ok(())
}

/// Tells obedient pod `namespace/name` to end with `outcome`, and waits until the kubelet
/// reports it finished; returns the finished pod.
pub async fn finish_pod(
    client: &Client,
    namespace: &str,
    name: &str,
    outcome: &PodOutcome,
) -> Result<Pod> {
    tell_pod(client, namespace, name, outcome).await?;
    wait_until_finished(client, namespace, name).await
}

/// Waits until the kubelet reports pod `namespace/name` finished; returns the finished pod.
async fn wait_until_finished(client: &Client, namespace: &str, name: &str) -> Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    // Image already on the node, container start, the kubelet's next status update.
    wait_for(
        &format!("pod {namespace}/{name} to finish"),
        Duration::from_secs(90),
        || async {
            let pod = pods.get(name).await?;
            Ok(is_terminal(&pod).then_some(pod))
        },
    )
    .await
}

/// Waits for the next pod of Job `namespace/job` and tells it to end with `outcome`, without
/// waiting for it to end; returns the pod's name.
pub async fn wait_for_job_pod_and_tell(
    client: &Client,
    namespace: &str,
    job: &str,
    outcome: &PodOutcome,
    timeout: Duration,
) -> Result<String> {
    let pod = wait_for_job_pod(client, namespace, job, timeout).await?;
    let name = pod
        .metadata
        .name
        .context("the job controller made a pod without a name")?;
    tell_pod(client, namespace, &name, outcome).await?;
    Ok(name)
}

/// Waits for the next pod of Job `namespace/job` and finishes it with `outcome`.
pub async fn wait_for_job_pod_and_finish(
    client: &Client,
    namespace: &str,
    job: &str,
    outcome: &PodOutcome,
    timeout: Duration,
) -> Result<Pod> {
    let name = wait_for_job_pod_and_tell(client, namespace, job, outcome, timeout).await?;
    wait_until_finished(client, namespace, &name).await
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

/// The termination message of the first container of `pod` that has terminated.
pub fn termination_message(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find_map(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_annotation_is_code_then_message() -> Result<()> {
        let ok = PodOutcome::Succeeded {
            message: "installed".into(),
        };
        assert_eq!(ok.annotation()?, "0 installed");
        let failed = PodOutcome::Failed {
            exit_code: 3,
            message: "helm said no".into(),
        };
        assert_eq!(failed.annotation()?, "3 helm said no");
        Ok(())
    }

    #[test]
    fn failure_with_exit_code_zero_is_refused() {
        let outcome = PodOutcome::Failed {
            exit_code: 0,
            message: String::new(),
        };
        assert!(outcome.annotation().is_err());
    }

    #[test]
    fn the_job_patch_replaces_the_image_and_adds_the_outcome_volume() -> Result<()> {
        let job = json!({"spec": {"template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "install", "image": "registry.invalid/x"}],
        }}}});
        let patch = obedient_job_patch(&job)?;
        let spec = &patch[0]["value"];
        assert_eq!(spec["containers"][0]["name"], "install");
        assert_eq!(spec["containers"][0]["image"], crate::busybox_image());
        assert_eq!(spec["volumes"][0]["name"], OUTCOME_VOLUME);
        assert_eq!(spec["restartPolicy"], "Never");
        Ok(())
    }
}
