//! The "nothing left behind" invariant of the drills: after VirtualClusters are deleted, no
//! VirtualCluster (so no finalizer holding one), no executor Job and no kubeconfig Secret of
//! theirs may remain in their namespace.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, anyhow};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kosmos_api::{VirtualCluster, contract};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use crate::wait_for;

/// Waits, within `bound`, until `namespace` holds no VirtualCluster, no executor Job and none of
/// the kubeconfig Secrets of the named VirtualClusters. Each look counts one check in `checks`.
/// The error lists what was still there at the last look (each VirtualCluster with its
/// finalizers), so a drill can report it as the broken invariant.
pub async fn wait_for_nothing_left(
    client: &Client,
    namespace: &str,
    virtual_clusters: &[String],
    bound: Duration,
    checks: &AtomicU64,
) -> Result<()> {
    let vcs: Api<VirtualCluster> = Api::namespaced(client.clone(), namespace);
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let executor = format!("{}=true", contract::EXECUTOR_LABEL);
    let wanted: BTreeSet<String> = virtual_clusters
        .iter()
        .map(|n| contract::kubeconfig_secret_name(n))
        .collect();
    let last = Mutex::new(String::new());
    let result = wait_for("nothing left after deletion", bound, || async {
        let left_vcs: Vec<String> = vcs
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .map(|vc| format!("{} finalizers {:?}", vc.name_any(), vc.finalizers()))
            .collect();
        let left_jobs: Vec<String> = jobs
            .list(&ListParams::default().labels(&executor))
            .await?
            .items
            .iter()
            .map(ResourceExt::name_any)
            .collect();
        let left_secrets: Vec<String> = secrets
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .map(ResourceExt::name_any)
            .filter(|s| wanted.contains(s))
            .collect();
        checks.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = last.lock() {
            *last = format!(
                "VirtualClusters {left_vcs:?}\nJobs {left_jobs:?}\nSecrets {left_secrets:?}"
            );
        }
        Ok((left_vcs.is_empty() && left_jobs.is_empty() && left_secrets.is_empty()).then_some(()))
    })
    .await;
    result.map_err(|e| {
        let left = last.lock().map(|l| l.clone()).unwrap_or_default();
        anyhow!("{e:#}; left in namespace {namespace}:\n{left}")
    })
}
