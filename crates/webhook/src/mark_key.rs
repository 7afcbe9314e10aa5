//! The key the webhook signs its marks with ([`kosmos_api::mark`]), kept in a Secret that only
//! the webhook and the operator may read.
//!
//! At start the webhook reads the Secret; if it is missing (no chart) it creates it, and if it
//! holds no key (the chart creates it empty) it writes a fresh random one, so every replica and
//! the operator share one key and no person ever handles it. Afterwards it reads the Secret again
//! every [`REFRESH`], so a rotation (a new `key`, the old one moved to `previous`) reaches every
//! replica within that time; the operator accepts both meanwhile.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use arc_swap::ArcSwapOption;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kosmos_api::contract;
pub use kosmos_api::mark::KeySecret;
use kosmos_api::mark::{self, Key};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

/// How often the Secret is read again for a rotated key.
pub const REFRESH: Duration = Duration::from_secs(60);
/// Wait between attempts while no key could be loaded yet.
const RETRY: Duration = Duration::from_secs(3);

/// The signing key the admission endpoint uses; empty until loaded.
#[derive(Debug, Default)]
pub struct MarkKey {
    /// Where the key comes from; None: marks are not signed (tests, local runs).
    pub secret: Option<KeySecret>,
    /// The current signing key.
    pub key: ArcSwapOption<Key>,
}

impl MarkKey {
    /// A slot for the key of `secret`, empty until [`run`] loads it.
    pub fn from_secret(secret: KeySecret) -> Self {
        Self {
            secret: Some(secret),
            key: ArcSwapOption::empty(),
        }
    }

    /// Whether executor Jobs can be marked: no Secret configured, or its key loaded.
    pub fn is_ready(&self) -> bool {
        self.secret.is_none() || self.key.load().is_some()
    }
}

/// Reads the signing key from the Secret, creating the Secret or writing a key into it first when
/// there is none. Two replicas starting at once both end up with the one that was stored first.
pub async fn load_or_create(client: &Client, secret: &KeySecret) -> Result<Key> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &secret.namespace);
    let params = PostParams {
        field_manager: Some(contract::WEBHOOK_FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    for _ in 0..5 {
        let existing = api
            .get_opt(&secret.name)
            .await
            .with_context(|| format!("reading the mark key Secret {secret}"))?;
        let fresh = || -> Result<BTreeMap<String, ByteString>> {
            Ok(BTreeMap::from([(
                mark::KEY_DATA.to_owned(),
                ByteString(mark::generate()?),
            )]))
        };
        let result = match existing {
            Some(found)
                if found
                    .data
                    .as_ref()
                    .is_some_and(|d| d.contains_key(mark::KEY_DATA)) =>
            {
                let mut keys = mark::keys_of_secret(&found)
                    .map_err(|e| anyhow!("mark key Secret {secret}: {e}"))?;
                return Ok(keys.remove(0));
            }
            Some(mut found) => {
                // The chart's empty Secret: fill it. The resourceVersion makes a concurrent
                // writer's key win instead of being overwritten.
                let mut data = found.data.take().unwrap_or_default();
                data.extend(fresh()?);
                found.data = Some(data);
                api.replace(&secret.name, &params, &found).await.map(|_| ())
            }
            None => {
                let new = Secret {
                    metadata: ObjectMeta {
                        name: Some(secret.name.clone()),
                        namespace: Some(secret.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    type_: Some("Opaque".to_owned()),
                    data: Some(fresh()?),
                    ..Secret::default()
                };
                api.create(&params, &new).await.map(|_| ())
            }
        };
        match result {
            Ok(()) => {
                tracing::info!(secret = %secret, "wrote a new mark key");
            }
            // Another replica was faster: read what it stored.
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => {
                return Err(e).with_context(|| format!("writing the mark key Secret {secret}"));
            }
        }
    }
    Err(anyhow!(
        "mark key Secret {secret}: kept changing while it was being written; giving up for now"
    ))
}

/// Loads the key into `slot` (retrying until it can) and then reads it again every [`REFRESH`]
/// for a rotation. Runs until aborted.
pub async fn run(client: Client, slot: Arc<MarkKey>) {
    let Some(secret) = slot.secret.clone() else {
        return std::future::pending().await;
    };
    loop {
        let wait = match load_or_create(&client, &secret).await {
            Ok(key) => {
                let changed = slot.key.load().as_ref().is_none_or(|k| k.id() != key.id());
                if changed {
                    tracing::info!(secret = %secret, key = key.id(), "signing marks with this key");
                    slot.key.store(Some(Arc::new(key)));
                }
                REFRESH
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "no mark key; executor Jobs are denied until there is one");
                if slot.key.load().is_some() {
                    REFRESH
                } else {
                    RETRY
                }
            }
        };
        tokio::time::sleep(wait).await;
    }
}
