//! Bootstrap-mode certificates: the webhook makes its own CA and serving certificate, keeps them
//! in one Secret shared by every replica (the first replica to create it wins, the others use
//! its content), renews them before they expire, and puts the CA into the
//! MutatingWebhookConfiguration's `caBundle` by server-side apply.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kosmos_api::contract;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use crate::tls;

/// Secret key of the CA certificate(s) to trust: the current CA, then the previous one, so
/// replicas still serving the old certificate stay trusted during a renewal.
pub const CA_BUNDLE_KEY: &str = "ca-bundle.crt";
/// Secret keys of the serving certificate and key (as in a kubernetes.io/tls Secret).
pub const CERT_KEY: &str = "tls.crt";
/// See [`CERT_KEY`].
pub const KEY_KEY: &str = "tls.key";
/// Secret key of the current CA certificate alone.
pub const CA_KEY: &str = "ca.crt";

/// What bootstrap mode manages, and for how long certificates live.
#[derive(Clone, Debug)]
pub struct BootstrapConfig {
    /// Namespace of the Secret (the webhook's own).
    pub namespace: String,
    /// Name of the shared Secret.
    pub secret: String,
    /// MutatingWebhookConfiguration whose webhooks get the `caBundle`.
    pub webhook_configuration: String,
    /// DNS names and IPs of the serving certificate.
    pub names: Vec<String>,
    /// Validity of new certificates, in days.
    pub days: u32,
    /// Renew when fewer than this many days are left.
    pub renew_before_days: u32,
}

/// The PEM texts in use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Material {
    /// Serving certificate.
    pub cert_pem: String,
    /// Serving key.
    pub key_pem: String,
    /// CAs to trust (current first).
    pub ca_bundle_pem: String,
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    let data = secret.data.as_ref()?.get(key)?;
    String::from_utf8(data.0.clone()).ok()
}

/// The Secret's material if complete and not due for renewal.
fn usable(secret: &Secret, config: &BootstrapConfig) -> Option<Material> {
    let material = Material {
        cert_pem: text(secret, CERT_KEY)?,
        key_pem: text(secret, KEY_KEY)?,
        ca_bundle_pem: text(secret, CA_BUNDLE_KEY)?,
    };
    let cert = rustls_pemfile::certs(&mut material.cert_pem.as_bytes())
        .next()?
        .ok()?;
    let not_after = tls::not_after(&cert).ok()?;
    let renew_before = SignedDuration::from_hours(24 * i64::from(config.renew_before_days));
    (not_after.duration_since(Timestamp::now()) > renew_before).then_some(material)
}

fn new_secret_data(
    config: &BootstrapConfig,
    previous_ca: Option<String>,
) -> Result<(std::collections::BTreeMap<String, ByteString>, Material)> {
    let certs = tls::generate(&config.names, config.days)?;
    let mut bundle = certs.ca_pem.clone();
    if let Some(previous) = previous_ca.filter(|p| !p.trim().is_empty()) {
        bundle.push_str(&previous);
    }
    let data = [
        (CA_KEY, certs.ca_pem.clone()),
        (CA_BUNDLE_KEY, bundle.clone()),
        (CERT_KEY, certs.cert_pem.clone()),
        (KEY_KEY, certs.key_pem.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), ByteString(v.into_bytes())))
    .collect();
    Ok((
        data,
        Material {
            cert_pem: certs.cert_pem,
            key_pem: certs.key_pem,
            ca_bundle_pem: bundle,
        },
    ))
}

/// Returns the certificate every replica should serve, creating or renewing the shared Secret
/// if needed. Races between replicas are settled by the apiserver: a create that finds the
/// Secret, or a replace that finds it changed, re-reads and uses what the winner wrote.
pub async fn ensure_secret(client: &Client, config: &BootstrapConfig) -> Result<Material> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &config.namespace);
    let what = format!("Secret {}/{}", config.namespace, config.secret);
    for _ in 0..5 {
        let existing = secrets
            .get_opt(&config.secret)
            .await
            .with_context(|| format!("reading {what}"))?;
        if let Some(material) = existing.as_ref().and_then(|s| usable(s, config)) {
            return Ok(material);
        }
        let previous_ca = existing.as_ref().and_then(|s| text(s, CA_KEY));
        let (data, material) = new_secret_data(config, previous_ca)?;
        let result = match existing {
            None => {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(config.secret.clone()),
                        namespace: Some(config.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    data: Some(data),
                    ..Secret::default()
                };
                secrets.create(&PostParams::default(), &secret).await
            }
            Some(mut secret) => {
                // resourceVersion stays set: a replica that renewed first makes this a conflict.
                secret.data = Some(data);
                secrets
                    .replace(&config.secret, &PostParams::default(), &secret)
                    .await
            }
        };
        match result {
            Ok(_) => {
                tracing::info!(secret = %what, "wrote a new webhook CA and serving certificate");
                return Ok(material);
            }
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e).with_context(|| format!("writing {what}")),
        }
    }
    bail!("{what} kept changing under us; giving up for now")
}

/// Sets `caBundle` on every webhook of the configuration by server-side apply, as the
/// webhook's field manager (forced: the CA is ours to manage in bootstrap mode), and checks that
/// the apiserver's copy of every webhook now trusts the first (current) CA of `ca_bundle`.
pub async fn apply_ca_bundle(
    client: &Client,
    config: &BootstrapConfig,
    ca_bundle: &str,
) -> Result<()> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let name = &config.webhook_configuration;
    let current = api
        .get(name)
        .await
        .with_context(|| format!("reading MutatingWebhookConfiguration {name}"))?;
    let webhooks: Vec<_> = current
        .webhooks
        .unwrap_or_default()
        .iter()
        .map(|w| {
            json!({
                "name": w.name,
                "clientConfig": {"caBundle": ByteString(ca_bundle.as_bytes().to_vec())},
            })
        })
        .collect();
    if webhooks.is_empty() {
        bail!("MutatingWebhookConfiguration {name} has no webhooks to give the CA to");
    }
    let patch = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": webhooks,
    });
    let applied = api
        .patch(
            name,
            &PatchParams::apply(contract::WEBHOOK_FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .with_context(|| format!("applying caBundle to MutatingWebhookConfiguration {name}"))?;
    let current_ca = first_certificate(ca_bundle)
        .with_context(|| format!("the CA bundle for {name} holds no certificate"))?;
    for webhook in applied.webhooks.unwrap_or_default() {
        let trusted = webhook
            .client_config
            .ca_bundle
            .as_ref()
            .and_then(|b| std::str::from_utf8(&b.0).ok())
            .is_some_and(|b| b.contains(current_ca));
        if !trusted {
            bail!(
                "MutatingWebhookConfiguration {name}: webhook {} does not trust the new CA \
                 after the apply (another field manager may own its caBundle)",
                webhook.name
            );
        }
    }
    Ok(())
}

/// The first PEM certificate of a bundle, markers included.
fn first_certificate(bundle: &str) -> Option<&str> {
    const END: &str = "-----END CERTIFICATE-----";
    let start = bundle.find("-----BEGIN CERTIFICATE-----")?;
    let end = bundle[start..].find(END)? + start + END.len();
    Some(&bundle[start..end])
}

/// Writes the serving pair where the file-based server reads it, if it changed. The key goes
/// first and each file is renamed into place (the key created readable by its owner only), so a
/// reader sees whole files (a mismatched pair in between is rejected by the loader and retried).
pub fn write_files(material: &Material, cert: &Path, key: &Path) -> Result<bool> {
    let same = std::fs::read_to_string(cert).ok().as_deref() == Some(material.cert_pem.as_str())
        && std::fs::read_to_string(key).ok().as_deref() == Some(material.key_pem.as_str());
    if same {
        return Ok(false);
    }
    for (path, text, private) in [
        (key, &material.key_pem, true),
        (cert, &material.cert_pem, false),
    ] {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        tls::write_file(path, text, private)?;
    }
    Ok(true)
}

/// One round of bootstrap: the Secret, then the caBundle, then the files. The files come last,
/// so a certificate is served only once the apiserver's configuration trusts its CA; if the
/// caBundle cannot be applied, the old certificate stays in use.
pub async fn reconcile(
    client: &Client,
    config: &BootstrapConfig,
    cert: &Path,
    key: &Path,
) -> Result<Material> {
    let material = ensure_secret(client, config).await?;
    apply_ca_bundle(client, config, &material.ca_bundle_pem).await?;
    write_files(&material, cert, key)?;
    Ok(material)
}
