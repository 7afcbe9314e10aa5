//! The virtual cluster's kubeconfig: found (in `spec.kubeconfig` or Kosmos's admin Secret),
//! checked, and kept in the operator's Secret for executor Jobs.

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kosmos_api::VirtualCluster;
use kosmos_api::contract;
use kosmos_api::kubeconfig::SafeKubeconfig;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::context::Context;
use crate::error::{Error, is_status, kube_err};
use crate::jobs;
use crate::plan::Kubeconfig;

/// Finds the virtual cluster's kubeconfig, checks that it is data and not code
/// ([`kosmos_api::kubeconfig::check`]), and keeps the checked copy in the operator's Secret for
/// executor Jobs. A refused kubeconfig removes that Secret, so no Job mounts an older copy.
/// Never logs it.
pub(crate) async fn ensure_kubeconfig(
    ctx: &Context,
    vc: &VirtualCluster,
) -> Result<(Kubeconfig, Option<SafeKubeconfig>), Error> {
    let ns = vc.namespace().unwrap_or_default();
    let name = vc.name_any();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let admin = contract::kosmos_admin_secret_name(&name);
    let (source, found): (String, Result<Vec<u8>, String>) = match decode_spec_kubeconfig(
        vc.spec.kubeconfig.as_deref(),
    ) {
        Some(decoded) => ("spec.kubeconfig".to_owned(), decoded),
        None => {
            let secret = secrets
                .get_opt(&admin)
                .await
                .map_err(kube_err(format!("reading secret {ns}/{admin}")))?;
            let found = secret
                    .and_then(|s| s.data)
                    .and_then(|d| d.get(contract::KUBECONFIG_SECRET_KEY).cloned())
                    .map(|b| b.0)
                    .ok_or_else(|| {
                        format!(
                            "neither spec.kubeconfig nor secret {ns}/{admin} (key {}) holds the virtual cluster's kubeconfig",
                            contract::KUBECONFIG_SECRET_KEY
                        )
                    });
            (
                format!(
                    "secret {ns}/{admin} (key {})",
                    contract::KUBECONFIG_SECRET_KEY
                ),
                found,
            )
        }
    };
    let bytes = match found {
        Ok(b) if !b.is_empty() => b,
        Ok(_) => return Ok((Kubeconfig::Missing("the kubeconfig is empty".into()), None)),
        Err(why) => return Ok((Kubeconfig::Missing(why), None)),
    };
    let target = contract::kubeconfig_secret_name(&name);
    let safe = match kosmos_api::kubeconfig::check(&bytes) {
        Ok(safe) => safe,
        Err(refused) => {
            let why = format!("the kubeconfig in {source} is refused: {refused}");
            // Best effort: without a usable kubeconfig no Job is created anyway, and the
            // condition says why; a missing `delete` right must not stop that from being said.
            match secrets.delete(&target, &DeleteParams::default()).await {
                Ok(_) => {
                    info!(secret = %target, "kubeconfig secret for executor jobs removed: {why}")
                }
                Err(e) if is_status(&e, 404) => {}
                Err(error) => {
                    warn!(secret = %target, %error, "could not remove the kubeconfig secret for executor jobs")
                }
            }
            return Ok((Kubeconfig::Refused(why), None));
        }
    };
    // The executor reads what was checked, not what was written: see SafeKubeconfig::to_yaml.
    let bytes = safe.to_yaml().into_bytes();
    let current = secrets
        .get_opt(&target)
        .await
        .map_err(kube_err(format!("reading secret {ns}/{target}")))?;
    let up_to_date = current
        .as_ref()
        .and_then(|s| s.data.as_ref())
        .and_then(|d| d.get(contract::KUBECONFIG_SECRET_KEY))
        .is_some_and(|b| b.0 == bytes);
    if !up_to_date {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(target.clone()),
                namespace: Some(ns.clone()),
                labels: Some(BTreeMap::from([(
                    contract::VIRTUAL_CLUSTER_LABEL.to_owned(),
                    contract::label_value(&name),
                )])),
                owner_references: jobs::owner_reference(vc).map(|o| vec![o]),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(
                contract::KUBECONFIG_SECRET_KEY.to_owned(),
                ByteString(bytes),
            )])),
            type_: Some("Opaque".into()),
            ..Secret::default()
        };
        let mut body = serde_json::to_value(&secret).unwrap_or_default();
        body["apiVersion"] = json!("v1");
        body["kind"] = json!("Secret");
        secrets
            .patch(
                &target,
                &PatchParams::apply(contract::OPERATOR_FIELD_MANAGER).force(),
                &Patch::Apply(body),
            )
            .await
            .map_err(kube_err(format!("applying secret {ns}/{target}")))?;
        info!(secret = %target, "kubeconfig secret for executor jobs updated");
    }
    Ok((Kubeconfig::Available, Some(safe)))
}

/// The kubeconfig from `spec.kubeconfig` (base64, possibly wrapped over lines), None when the
/// field is empty, or why it cannot be read. The error never contains the value.
pub fn decode_spec_kubeconfig(field: Option<&str>) -> Option<Result<Vec<u8>, String>> {
    let text = field.map(str::trim).filter(|t| !t.is_empty())?;
    Some(
        base64::engine::general_purpose::STANDARD
            .decode(text.replace(['\n', '\r', ' ', '\t'], ""))
            .map_err(|_| {
                "spec.kubeconfig is not valid base64 (Kosmos writes it base64-encoded)".to_owned()
            }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_kubeconfig_is_base64_possibly_wrapped() {
        assert_eq!(decode_spec_kubeconfig(None), None);
        assert_eq!(decode_spec_kubeconfig(Some("  ")), None);
        let wrapped = "YXBpVmVyc2lv\nbjogdjE=\n";
        assert_eq!(
            decode_spec_kubeconfig(Some(wrapped)),
            Some(Ok(b"apiVersion: v1".to_vec()))
        );
        let err = decode_spec_kubeconfig(Some("apiVersion: v1"))
            .unwrap()
            .unwrap_err();
        assert!(
            err.contains("not valid base64") && !err.contains("apiVersion"),
            "{err}"
        );
    }
}
