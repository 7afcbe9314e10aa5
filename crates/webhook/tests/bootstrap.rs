//! Bootstrap-mode certificates against the real host apiserver: replicas racing to create the
//! shared Secret agree on one certificate, the caBundle is applied to the
//! MutatingWebhookConfiguration, the server serves the bootstrapped certificate, and a
//! certificate due for renewal is replaced while the previous CA stays trusted; the key file is
//! never readable by others, and no certificate is written for serving before the
//! configuration's caBundle trusts its CA.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kosmos_e2e::{Cluster, TestNamespace};
use kosmos_webhook::bootstrap::{self, BootstrapConfig};
use kosmos_webhook::server::{self, ServeArgs};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use rustls::pki_types::ServerName;

/// A configuration that can never intercept anything: it matches only a label nobody sets, in
/// the test's namespace, and ignores failures.
async fn inert_configuration(client: &Client, name: &str, namespace: &str) {
    let config = MutatingWebhookConfiguration {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        webhooks: Some(vec![MutatingWebhook {
            name: "bootstrap-test.plugin.kosmos.io".into(),
            admission_review_versions: vec!["v1".into()],
            client_config: WebhookClientConfig {
                url: Some("https://127.0.0.1:9/mutate".into()),
                ..Default::default()
            },
            object_selector: Some(LabelSelector {
                match_labels: Some([("e2e.kosmos.io/never".to_owned(), "set".to_owned())].into()),
                match_expressions: None,
            }),
            namespace_selector: Some(LabelSelector {
                match_labels: Some(
                    [(
                        "kubernetes.io/metadata.name".to_owned(),
                        namespace.to_owned(),
                    )]
                    .into(),
                ),
                match_expressions: None,
            }),
            failure_policy: Some("Ignore".into()),
            side_effects: "None".into(),
            ..Default::default()
        }]),
    };
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &config)
        .await
        .unwrap();
}

async fn ca_bundle_of(client: &Client, name: &str) -> String {
    let config = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get(name)
        .await
        .unwrap();
    let bundle = config.webhooks.unwrap()[0]
        .client_config
        .ca_bundle
        .clone()
        .unwrap();
    String::from_utf8(bundle.0).unwrap()
}

fn count_certs(pem: &str) -> usize {
    pem.matches("BEGIN CERTIFICATE").count()
}

#[tokio::test]
async fn replicas_share_one_bootstrapped_certificate_and_renew_it() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kosmos_e2e::host().await.unwrap();
    let ns = TestNamespace::create(Cluster::Host, "webhook-bootstrap")
        .await
        .unwrap();
    let configuration = format!("plugin-webhook-{}", ns.name());
    inert_configuration(&client, &configuration, ns.name()).await;
    let config = BootstrapConfig {
        namespace: ns.name().to_owned(),
        secret: "plugin-webhook-certs".into(),
        webhook_configuration: configuration.clone(),
        names: vec!["localhost".into(), "127.0.0.1".into()],
        days: 365,
        renew_before_days: 30,
    };

    // Two replicas start at once.
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a_cert, a_key) = (a.path().join("tls.crt"), a.path().join("tls.key"));
    let (b_cert, b_key) = (b.path().join("tls.crt"), b.path().join("tls.key"));
    let (ra, rb) = tokio::join!(
        bootstrap::reconcile(&client, &config, &a_cert, &a_key),
        bootstrap::reconcile(&client, &config, &b_cert, &b_key),
    );
    let (ma, mb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ma, mb, "both replicas serve the same certificate");
    for key in [&a_key, &b_key] {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is readable by others", key.display());
    }
    assert_eq!(
        std::fs::read_to_string(b.path().join("tls.crt")).unwrap(),
        ma.cert_pem
    );
    let secret = Api::<Secret>::namespaced(client.clone(), ns.name())
        .get("plugin-webhook-certs")
        .await
        .unwrap();
    let keys: Vec<_> = secret.data.unwrap().into_keys().collect();
    assert_eq!(keys, ["ca-bundle.crt", "ca.crt", "tls.crt", "tls.key"]);
    let bundle = ca_bundle_of(&client, &configuration).await;
    assert_eq!(bundle, ma.ca_bundle_pem);
    assert_eq!(count_certs(&bundle), 1);

    // A server in bootstrap mode serves it, trusted through the caBundle.
    let dir = tempfile::tempdir().unwrap();
    let args = ServeArgs {
        bootstrap_secret: Some(config.secret.clone()),
        namespace: ns.name().to_owned(),
        webhook_configuration: configuration.clone(),
        watch_namespace: vec![ns.name().to_owned()],
        ..ServeArgs::local(dir.path().join("tls.crt"), dir.path().join("tls.key"))
    };
    let running = server::start(&args, client.clone()).await.unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut bundle.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .expect("the bootstrapped certificate is trusted through the caBundle");
    running.shutdown(std::time::Duration::from_secs(1));

    // Due for renewal (a window longer than the validity): a new CA and certificate, and the
    // caBundle trusts both the new and the previous CA while replicas switch over.
    let renewing = BootstrapConfig {
        renew_before_days: 400,
        ..config.clone()
    };
    let renewed = bootstrap::reconcile(
        &client,
        &renewing,
        &a.path().join("tls.crt"),
        &a.path().join("tls.key"),
    )
    .await
    .unwrap();
    assert_ne!(renewed.cert_pem, ma.cert_pem);
    assert_eq!(
        std::fs::read_to_string(a.path().join("tls.crt")).unwrap(),
        renewed.cert_pem
    );
    let bundle = ca_bundle_of(&client, &configuration).await;
    assert_eq!(count_certs(&bundle), 2);
    assert!(
        bundle.ends_with(&ma.ca_bundle_pem),
        "the previous CA is still trusted"
    );

    // Not due: nothing changes.
    let again = bootstrap::reconcile(
        &client,
        &config,
        &a.path().join("tls.crt"),
        &a.path().join("tls.key"),
    )
    .await
    .unwrap();
    assert_eq!(again, renewed);

    // A certificate is served only once the apiserver trusts its CA: with the configuration
    // gone, a renewal writes the Secret but cannot apply the caBundle, and the files keep the
    // certificate the apiserver still trusts.
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .delete(&configuration, &DeleteParams::default())
        .await
        .unwrap();
    let failed = bootstrap::reconcile(&client, &renewing, &a_cert, &a_key).await;
    assert!(failed.is_err(), "the caBundle was applied to nothing");
    assert_eq!(std::fs::read_to_string(&a_cert).unwrap(), renewed.cert_pem);
    assert_eq!(std::fs::read_to_string(&a_key).unwrap(), renewed.key_pem);
    let fresh = tempfile::tempdir().unwrap();
    let (fresh_cert, fresh_key) = (fresh.path().join("tls.crt"), fresh.path().join("tls.key"));
    assert!(
        bootstrap::reconcile(&client, &config, &fresh_cert, &fresh_key)
            .await
            .is_err()
    );
    assert!(
        !fresh_cert.exists() && !fresh_key.exists(),
        "a replica starting now must not serve a certificate nobody trusts"
    );

    let _ = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .delete(&configuration, &DeleteParams::default())
        .await;
    ns.delete().await.unwrap();
}
