//! Writing the VirtualCluster's status: the fields this operator owns, by server-side apply,
//! only when they changed.

use kosmos_api::{VirtualCluster, VirtualClusterStatus, contract};
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::debug;

use crate::error::{Error, kube_err};

/// The status fields this operator owns, for comparison.
fn owned_view(status: &VirtualClusterStatus, types: &[&str]) -> serde_json::Value {
    let mut conditions: Vec<_> = status
        .conditions
        .iter()
        .filter(|c| types.contains(&c.type_.as_str()))
        .map(|c| serde_json::to_value(c).unwrap_or_default())
        .collect();
    conditions.sort_by_key(|c| c["type"].as_str().unwrap_or_default().to_owned());
    json!({
        "phase": status.phase,
        "reason": status.reason,
        "updateTime": status.update_time,
        "pluginProgress": status.plugin_progress,
        "conditions": conditions,
        "plugins": status.plugins,
    })
}

/// Writes the status by server-side apply on the main resource (the CRD has no status
/// subresource, as Kosmos's), only when it changed, and only if the object is still the
/// version the decision was made on.
pub(crate) async fn write_status(
    api: &Api<VirtualCluster>,
    vc: &VirtualCluster,
    status: &VirtualClusterStatus,
) -> Result<(), Error> {
    let name = vc.name_any();
    let current = vc.status.clone().unwrap_or_default();
    let all_types = [
        kosmos_api::condition::PLUGINS_RESOLVED,
        kosmos_api::condition::KUBECONFIG_AVAILABLE,
        kosmos_api::condition::WEBHOOK_MUTATING,
        kosmos_api::condition::JOBS_VERIFIED,
        kosmos_api::condition::PLUGINS_INSTALLED,
        kosmos_api::condition::VIRTUAL_CLUSTER_READY,
    ];
    if owned_view(&current, &all_types) == owned_view(status, &all_types) {
        return Ok(());
    }
    let body = json!({
        "apiVersion": "kosmos.io/v1alpha1",
        "kind": "VirtualCluster",
        "metadata": {
            "name": name,
            "namespace": vc.namespace(),
            // Optimistic concurrency: the phase may have been changed by Kosmos meanwhile.
            "resourceVersion": vc.resource_version(),
        },
        "status": status,
    });
    api.patch(
        &name,
        &PatchParams::apply(contract::OPERATOR_FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map_err(kube_err(format!(
        "writing the status of virtualcluster {name}"
    )))?;
    debug!(phase = ?status.phase, progress = ?status.plugin_progress, "status written");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use k8s_openapi::jiff::Timestamp;

    fn status(phase: &str, plugins: usize) -> VirtualClusterStatus {
        VirtualClusterStatus {
            phase: Some(phase.into()),
            plugin_progress: Some(format!("0/{plugins}")),
            port: Some(6443),
            ..VirtualClusterStatus::default()
        }
    }

    #[test]
    fn owned_view_ignores_fields_of_others() {
        let types = [kosmos_api::condition::PLUGINS_INSTALLED];
        let mut theirs = status("AllNodeReady", 1);
        theirs.port = Some(1234);
        theirs
            .conditions
            .push(k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: "KosmosOwn".into(),
                status: "True".into(),
                reason: "x".into(),
                message: String::new(),
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    Timestamp::UNIX_EPOCH,
                ),
                observed_generation: None,
            });
        assert_eq!(
            owned_view(&theirs, &types),
            owned_view(&status("AllNodeReady", 1), &types)
        );
        assert_ne!(
            owned_view(&status("Completed", 1), &types),
            owned_view(&status("AllNodeReady", 1), &types)
        );
        assert_ne!(
            owned_view(&status("AllNodeReady", 2), &types),
            owned_view(&status("AllNodeReady", 1), &types)
        );
    }
}
