//! The host cluster's real job controller, kubelet and garbage collector at work on pods whose
//! end the test decides (busybox exiting on cue): what the operator's executor Jobs rely on.

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kosmos_e2e::{
    Cluster, DEFAULT_TIMEOUT, PodOutcome, TestNamespace, finish_pod, host, job_pods, make_obedient,
    termination_message, wait_for, wait_for_job_condition, wait_for_job_pod,
};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;

/// A bare Job like the operator's executor Jobs: one container, never restarted, that runs until
/// the test tells it how to end.
fn job(name: &str, backoff_limit: i32) -> Result<Job> {
    let mut job: Job = serde_json::from_value(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": { "name": name },
        "spec": {
            "backoffLimit": backoff_limit,
            "template": { "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "install"}],
            }},
        },
    }))?;
    let spec = job
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .context("the job has no pod template")?;
    make_obedient(spec, 0)?;
    Ok(job)
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

#[tokio::test]
async fn job_gets_a_pod_and_completes_when_the_pod_succeeds() -> Result<()> {
    let ns = TestNamespace::create(Cluster::Host, "job-complete").await?;
    let client = host().await?;
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns.name());
    jobs.create(&PostParams::default(), &job("install", 0)?)
        .await?;

    let pod = wait_for_job_pod(&client, ns.name(), "install", DEFAULT_TIMEOUT).await?;
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .context("the job controller's pod has no controller reference")?;
    ensure!(
        owner.kind == "Job" && owner.name == "install",
        "pod owned by {} {}",
        owner.kind,
        owner.name
    );
    ensure!(
        matches!(phase(&pod), Some("Pending" | "Running")),
        "new pod in phase {:?}",
        phase(&pod)
    );

    let name = pod.metadata.name.clone().context("pod without a name")?;
    let outcome = PodOutcome::Succeeded {
        message: "installed apiserver-network-proxy".into(),
    };
    let finished = finish_pod(&client, ns.name(), &name, &outcome).await?;
    ensure!(
        phase(&finished) == Some("Succeeded"),
        "pod ended in phase {:?}",
        phase(&finished)
    );
    ensure!(
        finished
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some(),
        "the scheduler bound the pod to a node"
    );

    wait_for_job_condition(&client, ns.name(), "install", "Complete", DEFAULT_TIMEOUT).await?;
    let status = jobs
        .get("install")
        .await?
        .status
        .context("job without status")?;
    ensure!(
        status.succeeded == Some(1),
        "succeeded = {:?}",
        status.succeeded
    );
    ensure!(
        status.failed.unwrap_or(0) == 0,
        "failed = {:?}",
        status.failed
    );
    ensure!(
        !status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Failed" && c.status == "True"),
        "a completed job must not also be Failed"
    );
    ensure!(
        status.completion_time.is_some(),
        "the job controller sets completionTime when a Job completes"
    );

    // The termination message stays on the pod for whoever debugs an install.
    let pod: Pod = Api::namespaced(client.clone(), ns.name())
        .get(&name)
        .await?;
    let message = termination_message(&pod);
    ensure!(
        message.as_deref() == Some("installed apiserver-network-proxy"),
        "termination message {message:?}"
    );
    ns.delete().await
}

#[tokio::test]
async fn job_fails_when_its_only_pod_fails() -> Result<()> {
    let ns = TestNamespace::create(Cluster::Host, "job-fail").await?;
    let client = host().await?;
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns.name());
    jobs.create(&PostParams::default(), &job("install", 0)?)
        .await?;

    let pod = wait_for_job_pod(&client, ns.name(), "install", DEFAULT_TIMEOUT).await?;
    let name = pod.metadata.name.context("pod without a name")?;
    let outcome = PodOutcome::Failed {
        exit_code: 2,
        message: "helm: chart not found".into(),
    };
    let finished = finish_pod(&client, ns.name(), &name, &outcome).await?;
    let exit_code = finished
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.into_iter().next())
        .and_then(|c| c.state?.terminated)
        .map(|t| t.exit_code);
    ensure!(
        exit_code == Some(2),
        "the kubelet reported exit code {exit_code:?}"
    );

    let failed =
        wait_for_job_condition(&client, ns.name(), "install", "Failed", DEFAULT_TIMEOUT).await?;
    ensure!(
        failed.reason.as_deref() == Some("BackoffLimitExceeded"),
        "Failed condition with reason {:?}",
        failed.reason
    );
    let status = jobs
        .get("install")
        .await?
        .status
        .context("job without status")?;
    ensure!(status.failed == Some(1), "failed = {:?}", status.failed);
    ensure!(
        status.succeeded.unwrap_or(0) == 0,
        "succeeded = {:?}",
        status.succeeded
    );
    ensure!(
        !status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Complete" && c.status == "True"),
        "a failed job must not also be Complete"
    );
    ns.delete().await
}

#[tokio::test]
async fn job_retries_a_failed_pod_within_its_backoff_limit() -> Result<()> {
    let ns = TestNamespace::create(Cluster::Host, "job-retry").await?;
    let client = host().await?;
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns.name());
    jobs.create(&PostParams::default(), &job("install", 1)?)
        .await?;

    let first = wait_for_job_pod(&client, ns.name(), "install", DEFAULT_TIMEOUT).await?;
    let first_name = first.metadata.name.context("pod without a name")?;
    let failure = PodOutcome::Failed {
        exit_code: 1,
        message: "webhook not ready".into(),
    };
    finish_pod(&client, ns.name(), &first_name, &failure).await?;

    // The job controller replaces the failed pod (after its back-off) with a new one.
    let second = wait_for_job_pod(&client, ns.name(), "install", DEFAULT_TIMEOUT).await?;
    let second_name = second.metadata.name.context("pod without a name")?;
    ensure!(second_name != first_name, "the failed pod was not replaced");
    let success = PodOutcome::Succeeded {
        message: "ok".into(),
    };
    finish_pod(&client, ns.name(), &second_name, &success).await?;

    wait_for_job_condition(&client, ns.name(), "install", "Complete", DEFAULT_TIMEOUT).await?;
    let status = jobs
        .get("install")
        .await?
        .status
        .context("job without status")?;
    ensure!(
        status.failed == Some(1) && status.succeeded == Some(1),
        "failed = {:?}, succeeded = {:?}",
        status.failed,
        status.succeeded
    );
    ns.delete().await
}

#[tokio::test]
async fn deleting_a_job_garbage_collects_its_pods() -> Result<()> {
    let ns = TestNamespace::create(Cluster::Host, "job-gc").await?;
    let client = host().await?;
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns.name());
    jobs.create(&PostParams::default(), &job("install", 0)?)
        .await?;
    wait_for_job_pod(&client, ns.name(), "install", DEFAULT_TIMEOUT).await?;

    jobs.delete("install", &DeleteParams::background()).await?;
    // Only the garbage collector deletes a pod through its ownerReference.
    wait_for(
        "the job's pods to be garbage-collected",
        DEFAULT_TIMEOUT,
        || async {
            Ok(job_pods(&client, ns.name(), "install")
                .await?
                .is_empty()
                .then_some(()))
        },
    )
    .await?;
    ns.delete().await
}
