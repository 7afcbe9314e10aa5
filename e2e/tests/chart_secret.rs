//! The chart's `certificates.mode=secret` for real: the admin brings a `kubernetes.io/tls` Secret
//! and its CA, the chart (installed from the images `make images` built) mounts the Secret into
//! the webhook pods and gives the CA to the apiserver:
//! - both webhook replicas start as their non-root user and serve that certificate (checked
//!   against the admin's CA, and a check against another CA fails), directly and through the
//!   Service; the apiserver calls the webhook through the Service with that CA;
//! - the admin rotates: a new CA and certificate into the same Secret and the new CA into the
//!   release (`helm upgrade --reuse-values`); the webhook serves the new pair without a restart;
//! - `helm uninstall` leaves nothing of the release, and leaves the admin's Secret alone.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod chart_support;

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use base64::Engine as _;
use chart_support::{
    OPERATOR, RELEASE, UninstallOnDrop, WEBHOOK, adopt_crds, chart_dir,
    every_replica_serves_a_trusted_certificate, helm, images_on_the_node, wait_for_rollout,
    webhook_answers_through_its_service,
};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kosmos_e2e::{Cluster, TestNamespace, wait_for};
use kosmos_webhook::tls::{self, DevCerts};
use kube::Api;
use kube::api::{Patch, PatchParams};

/// The admin's Secret: not made by the chart, so not removed with it.
const ADMIN_SECRET: &str = "webhook-serving-cert";

/// A CA and a certificate it signed for the chart's webhook Service in `namespace`.
fn admin_certificate(namespace: &str) -> Result<DevCerts> {
    tls::generate(&tls::dev_names(WEBHOOK, namespace), 30)
}

/// The admin's `kubernetes.io/tls` Secret holding `certs`, written with server-side apply so the
/// rotation below replaces it the same way.
async fn apply_admin_secret(secrets: &Api<Secret>, certs: &DevCerts) -> Result<()> {
    let secret = Secret {
        metadata: kube::core::ObjectMeta {
            name: Some(ADMIN_SECRET.into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                ("tls.crt", &certs.cert_pem),
                ("tls.key", &certs.key_pem),
                ("ca.crt", &certs.ca_pem),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), ByteString(v.clone().into_bytes())))
            .collect(),
        ),
        ..Default::default()
    };
    secrets
        .patch(
            ADMIN_SECRET,
            &PatchParams::apply("chart-secret-test").force(),
            &Patch::Apply(&secret),
        )
        .await
        .context("applying the admin's TLS Secret")?;
    Ok(())
}

/// The registration's caBundle.
async fn ca_bundle(mwcs: &Api<MutatingWebhookConfiguration>, name: &str) -> Result<Vec<u8>> {
    let mwc = mwcs.get(name).await?;
    mwc.webhooks
        .as_ref()
        .and_then(|w| w.first())
        .and_then(|w| w.client_config.ca_bundle.as_ref())
        .map(|b| b.0.clone())
        .with_context(|| format!("registration {name} has no caBundle"))
}

#[tokio::test]
async fn the_admins_secret_serves_the_webhook_and_rotates_with_an_upgrade() -> Result<()> {
    let admin = kosmos_e2e::host().await?;
    kosmos_e2e::install_crds(&admin).await?;
    images_on_the_node().await?;
    let release_ns = TestNamespace::create(Cluster::Host, "chart-secret").await?;
    let vc_ns = TestNamespace::create(Cluster::Host, "chart-secret-vc").await?;
    let (rns, pns) = (release_ns.name().to_owned(), vc_ns.name().to_owned());
    adopt_crds(&admin, &rns).await?;

    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &rns);
    let first = admin_certificate(&rns)?;
    apply_admin_secret(&secrets, &first).await?;

    let chart = chart_dir().display().to_string();
    let watch = format!("watchNamespaces={{{pns}}}");
    let secret_name = format!("certificates.secret.name={ADMIN_SECRET}");
    let ca_value = |certs: &DevCerts| {
        format!(
            "certificates.secret.caBundle={}",
            base64::engine::general_purpose::STANDARD.encode(&certs.ca_pem)
        )
    };
    let first_ca = ca_value(&first);
    let install = helm(&[
        "install",
        RELEASE,
        chart.as_str(),
        "--namespace",
        rns.as_str(),
        "--set",
        "certificates.mode=secret",
        "--set",
        secret_name.as_str(),
        "--set",
        first_ca.as_str(),
        "--set",
        watch.as_str(),
    ])
    .await;
    let uninstall_guard = UninstallOnDrop(rns.clone());
    install?;
    let configuration = format!("{WEBHOOK}-{rns}");
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());
    ensure!(
        ca_bundle(&mwcs, &configuration).await? == first.ca_pem.as_bytes(),
        "the registration does not carry the admin's CA"
    );

    // Both replicas read the 0440 key as their non-root user (the pod's fsGroup) and serve it.
    wait_for_rollout(&admin, &rns, OPERATOR, 1).await?;
    wait_for_rollout(&admin, &rns, WEBHOOK, 2).await?;
    every_replica_serves_a_trusted_certificate(&admin, &rns, first.ca_pem.as_bytes(), None).await?;
    // Another CA, with another subject (one of the same name would make OpenSSL try its key on
    // the signature and fail differently): the cluster's.
    let cluster_ca = Api::<ConfigMap>::namespaced(admin.clone(), &rns)
        .get("kube-root-ca.crt")
        .await?
        .data
        .and_then(|d| d.get("ca.crt").cloned())
        .context("no kube-root-ca.crt")?;
    let untrusted =
        every_replica_serves_a_trusted_certificate(&admin, &rns, cluster_ca.as_bytes(), None).await;
    ensure!(
        matches!(&untrusted, Err(e) if format!("{e:#}").contains("curl exit 60")),
        "the webhook's certificate verified against a CA that did not sign it: {untrusted:?}"
    );
    webhook_answers_through_its_service(&admin, &rns, &pns).await?;

    // The admin rotates: a new pair in the same Secret, the new CA into the release.
    let second = admin_certificate(&rns)?;
    apply_admin_secret(&secrets, &second).await?;
    let second_ca = ca_value(&second);
    helm(&[
        "upgrade",
        RELEASE,
        chart.as_str(),
        "--namespace",
        rns.as_str(),
        "--reuse-values",
        "--set",
        second_ca.as_str(),
    ])
    .await?;
    ensure!(
        ca_bundle(&mwcs, &configuration).await? == second.ca_pem.as_bytes(),
        "helm upgrade did not put the new CA into the registration"
    );
    // The kubelet refreshes the mounted Secret within its sync period, and the webhook's
    // poller then loads the new pair: until both have happened the apiserver, trusting only the
    // new CA, cannot reach it.
    let rotation = std::time::Instant::now();
    wait_for(
        "every webhook replica to serve the rotated certificate",
        Duration::from_secs(240),
        || {
            let (admin, rns, ca) = (admin.clone(), rns.clone(), second.ca_pem.clone());
            async move {
                Ok(
                    every_replica_serves_a_trusted_certificate(&admin, &rns, ca.as_bytes(), None)
                        .await
                        .ok(),
                )
            }
        },
    )
    .await?;
    eprintln!(
        "the webhook served the rotated certificate {:.0?} after the upgrade",
        rotation.elapsed()
    );
    webhook_answers_through_its_service(&admin, &rns, &pns).await?;

    // helm uninstall: nothing of the release is left; the admin's Secret is the admin's.
    uninstall_guard
        .uninstall_leaves_only(
            &[&pns],
            &[format!("Secret {rns}/{ADMIN_SECRET}")],
            &configuration,
            &admin,
        )
        .await?;
    vc_ns.delete().await?;
    release_ns.delete().await
}
