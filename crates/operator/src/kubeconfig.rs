//! The virtual cluster's kubeconfig: found (in `spec.kubeconfig` or Kosmos's admin Secret),
//! checked, and kept in the operator's Secret for executor Jobs.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash as _, Hasher as _};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// How long a kubeconfig Secret seen to hold what the operator would write is taken to still
/// hold it: the reconciliations of a VirtualCluster's Jobs (one per Job's end, seconds apart)
/// skip reading it again, and one deleted or edited by hand is written back by the first
/// reconciliation after this.
pub const SEEN_FOR: Duration = Duration::from_secs(60);

/// The executor kubeconfig Secrets seen up to date, by VirtualCluster uid: the hash of the
/// bytes and when.
#[derive(Default)]
pub struct SeenSecrets {
    seen: Mutex<HashMap<String, (u64, Instant)>>,
}

impl SeenSecrets {
    fn is_fresh(&self, uid: &str, bytes: &[u8], now: Instant) -> bool {
        let seen = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        seen.get(uid).is_some_and(|(hash, at)| {
            *hash == hash_of(bytes) && now.saturating_duration_since(*at) < SEEN_FOR
        })
    }

    fn saw(&self, uid: &str, bytes: &[u8], now: Instant) {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Dropping the stale entries here bounds the map by the VirtualClusters of a minute.
        seen.retain(|_, (_, at)| now.saturating_duration_since(*at) < SEEN_FOR);
        seen.insert(uid.to_owned(), (hash_of(bytes), now));
    }

    fn forget(&self, uid: &str) {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        seen.remove(uid);
    }
}

fn hash_of(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

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
    let uid = vc.uid().unwrap_or_default();
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
            ctx.kubeconfig_secrets.forget(&uid);
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
    if ctx
        .kubeconfig_secrets
        .is_fresh(&uid, &bytes, Instant::now())
    {
        return Ok((Kubeconfig::Available, Some(safe)));
    }
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
                ByteString(bytes.clone()),
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
    ctx.kubeconfig_secrets.saw(&uid, &bytes, Instant::now());
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
    fn a_secret_seen_is_fresh_for_its_bytes_for_a_while() {
        let seen = SeenSecrets::default();
        let now = Instant::now();
        assert!(!seen.is_fresh("uid-a", b"one", now));
        seen.saw("uid-a", b"one", now);
        assert!(seen.is_fresh("uid-a", b"one", now));
        assert!(
            !seen.is_fresh("uid-a", b"two", now),
            "other bytes are read again"
        );
        assert!(
            !seen.is_fresh("uid-b", b"one", now),
            "another VirtualCluster's is its own"
        );
        let later = now + SEEN_FOR;
        assert!(
            !seen.is_fresh("uid-a", b"one", later),
            "read again after a minute"
        );
        seen.saw("uid-b", b"one", later);
        assert!(
            !seen.seen.lock().unwrap().contains_key("uid-a"),
            "stale entries are dropped"
        );
        seen.forget("uid-b");
        assert!(!seen.is_fresh("uid-b", b"one", later));
    }

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
