//! The operator's finalizer on a VirtualCluster, added and removed by JSON patches with a `test`
//! op, so a concurrent change of the list makes the patch fail (and the reconciler read again)
//! instead of dropping someone else's finalizer. (`kube::runtime::finalizer` removes the
//! finalizer as soon as cleanup returns; ours stays until the uninstall Jobs are done, which the
//! planner decides over several reconciliations.)

use kosmos_api::{VirtualCluster, contract};
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::error::{Error, is_status};

/// Adds the finalizer; the VirtualCluster as it is now, None when it is gone.
pub(crate) async fn add_finalizer(
    api: &Api<VirtualCluster>,
    vc: &VirtualCluster,
) -> Result<Option<VirtualCluster>, Error> {
    let name = vc.name_any();
    // JSON patch with a test: fails (and we retry) if someone changed the list meanwhile.
    let patch = if vc.finalizers().is_empty() {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [contract::FINALIZER]},
        ])
    } else {
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": vc.finalizers()},
            {"op": "add", "path": "/metadata/finalizers/-", "value": contract::FINALIZER},
        ])
    };
    patch_json(api, &name, patch, "adding the finalizer to").await
}

pub(crate) async fn remove_finalizer(
    api: &Api<VirtualCluster>,
    vc: &VirtualCluster,
) -> Result<(), Error> {
    let name = vc.name_any();
    let Some(index) = vc
        .finalizers()
        .iter()
        .position(|f| f == contract::FINALIZER)
    else {
        return Ok(());
    };
    let path = format!("/metadata/finalizers/{index}");
    let patch = json!([
        {"op": "test", "path": path, "value": contract::FINALIZER},
        {"op": "remove", "path": path},
    ]);
    patch_json(api, &name, patch, "removing the finalizer from")
        .await
        .map(drop)
}

async fn patch_json(
    api: &Api<VirtualCluster>,
    name: &str,
    patch: serde_json::Value,
    what: &str,
) -> Result<Option<VirtualCluster>, Error> {
    let patch: json_patch::Patch = serde_json::from_value(patch)
        .map_err(|e| Error::Internal(format!("{what} {name}: {e}")))?;
    match api
        .patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
    {
        Ok(vc) => Ok(Some(vc)),
        Err(e) if is_status(&e, 404) => Ok(None),
        // A failed test op answers 422 (Invalid) or 409: the list changed, read again.
        Err(e) if is_status(&e, 422) || is_status(&e, 409) => {
            Err(Error::Conflict(format!("virtualcluster {name}")))
        }
        Err(e) => Err(Error::Kube {
            what: format!("{what} virtualcluster {name}"),
            source: e,
        }),
    }
}
