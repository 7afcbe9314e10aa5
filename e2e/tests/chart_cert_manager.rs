//! The chart's `certificates.mode=certManager` for real: cert-manager's controller and CA
//! injector run as pods on the local node (e2e/manifests/cert-manager.yaml, with the release's
//! own CRDs), and the chart, installed from the images `make images` built, gets its webhook's
//! serving certificate from them:
//! - the chart's Certificate becomes Ready, issued by the self-signed Issuer the chart makes, into
//!   the chart's Secret;
//! - the CA injector writes that Secret's CA into the registration (`cert-manager.io/inject-ca-from`);
//! - both webhook replicas serve that certificate, checked against the issued CA (and a check
//!   against another CA fails), directly and through the Service;
//! - the apiserver calls the webhook through the Service with the injected caBundle: the
//!   operator's executor Jobs are mutated through it and carry the demo's VirtualCluster to
//!   `Completed`; with a wrong caBundle the apiserver refuses executor Jobs ("failed calling
//!   webhook"), and the injector puts the right one back;
//! - a renewal (a new CA from the self-signed Issuer) is added to the bundle next to the old
//!   CA, and every replica serves the renewed certificate within a bounded, printed time;
//! - `helm uninstall` leaves nothing of the release (the Secret cert-manager filled included).
//!
//! On a cluster of your own, cert-manager (v1.21 or any release serving `cert-manager.io/v1`,
//! with its CA injector) must be installed first.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod chart_support;

use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use base64::Engine as _;
use chart_support::{
    OPERATOR, RELEASE, UninstallOnDrop, VC, WEBHOOK, adopt_crds, chart_dir,
    every_replica_serves_a_trusted_certificate, helm, images_on_the_node, release_report,
    secret_data, wait_for_rollout, webhook_answers_through_its_service,
};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kosmos_api::contract;
use kosmos_api::{PluginPhase, VirtualCluster, VirtualClusterPlugin, phase};
use kosmos_e2e::{Cluster, TestNamespace, wait_for};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// Where e2e/cluster.sh runs cert-manager.
const CERT_MANAGER_NAMESPACE: &str = "kosmos-e2e-cert-manager";
const INJECT_ANNOTATION: &str = "cert-manager.io/inject-ca-from";

fn certificates(admin: &Client, namespace: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "cert-manager.io",
        "v1",
        "Certificate",
    ));
    Api::namespaced_with(admin.clone(), namespace, &resource)
}

/// cert-manager's controller and CA injector are running (the local cluster starts them; on a
/// cluster of your own, its cert-manager must serve `cert-manager.io/v1` Certificates).
async fn cert_manager_runs(admin: &Client) -> Result<()> {
    if kosmos_e2e::uses_own_cluster() {
        certificates(admin, "default")
            .list(&Default::default())
            .await
            .context("cert-manager's Certificate API is not served: install cert-manager first")?;
        return Ok(());
    }
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), CERT_MANAGER_NAMESPACE);
    for name in ["cert-manager", "cert-manager-cainjector"] {
        wait_for(
            &format!("deployment {CERT_MANAGER_NAMESPACE}/{name} to be available"),
            Duration::from_secs(120),
            || {
                let deployments = deployments.clone();
                async move {
                    let status = deployments.get(name).await?.status.unwrap_or_default();
                    Ok((status.available_replicas == Some(1)).then_some(()))
                }
            },
        )
        .await?;
    }
    Ok(())
}

/// The registration's one webhook.
async fn registration(
    mwcs: &Api<MutatingWebhookConfiguration>,
    name: &str,
) -> Result<(MutatingWebhookConfiguration, Vec<u8>)> {
    let mwc = mwcs.get(name).await?;
    let bundle = mwc
        .webhooks
        .as_ref()
        .and_then(|w| w.first())
        .and_then(|w| w.client_config.ca_bundle.as_ref())
        .map(|b| b.0.clone())
        .unwrap_or_default();
    Ok((mwc, bundle))
}

/// Whether PEM bundle `bundle` holds the certificate(s) of PEM `ca`.
fn holds(bundle: &[u8], ca: &[u8]) -> bool {
    let ca = String::from_utf8_lossy(ca);
    let ca = ca.trim();
    !ca.is_empty() && String::from_utf8_lossy(bundle).contains(ca)
}

/// Waits until the registration's caBundle holds `want`: what the CA injector wrote.
async fn wait_for_ca_bundle(
    admin: &Client,
    rns: &str,
    mwcs: &Api<MutatingWebhookConfiguration>,
    name: &str,
    want: &[u8],
    what: &str,
) -> Result<()> {
    let injected = wait_for(what, Duration::from_secs(90), || {
        let mwcs = mwcs.clone();
        async move {
            let (_, bundle) = registration(&mwcs, name).await?;
            Ok(holds(&bundle, want).then_some(()))
        }
    })
    .await;
    if let Err(e) = injected {
        let (mwc, bundle) = registration(mwcs, name).await?;
        let digest = |b: &[u8]| hex_digest(b);
        let secret = secret_data(
            &Api::<Secret>::namespaced(admin.clone(), rns),
            &format!("{WEBHOOK}-tls"),
        )
        .await?;
        let in_secret = secret.get("ca.crt").map(|c| digest(c)).unwrap_or_default();
        let cert = certificates(admin, rns).get_opt(WEBHOOK).await?;
        let controller = kosmos_e2e::kubectl(
            Cluster::Host,
            &[
                "-n",
                CERT_MANAGER_NAMESPACE,
                "logs",
                "deployment/cert-manager",
                "--tail",
                "30",
            ],
        )
        .await
        .unwrap_or_else(|e| format!("{e:#}"));
        eprintln!(
            "caBundle sha256 {} ({} bytes), wanted {} ({} bytes), the Secret's ca.crt now {in_secret}\nCertificate status: {}\ncontroller:\n{controller}",
            digest(&bundle),
            bundle.len(),
            digest(want),
            want.len(),
            serde_json::to_string_pretty(&cert.map(|c| c.data["status"].clone()))?
        );
        let injector = kosmos_e2e::kubectl(
            Cluster::Host,
            &[
                "-n",
                CERT_MANAGER_NAMESPACE,
                "logs",
                "deployment/cert-manager-cainjector",
                "--tail",
                "30",
            ],
        )
        .await
        .unwrap_or_else(|e| format!("{e:#}"));
        bail!(
            "{e:#}\nregistration: {}\nCA injector:\n{injector}",
            serde_json::to_string_pretty(&mwc.metadata)?
        );
    }
    Ok(())
}

fn hex_digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An executor Job the apiserver must send to the webhook; a dry run, so nothing is created.
/// Returns what the apiserver answered.
async fn executor_job_dry_run(admin: &Client, namespace: &str) -> Result<kube::Result<Job>> {
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "reaches-the-webhook", "labels": {(contract::EXECUTOR_LABEL): "true"}},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "x", "image": "registry.invalid/x"}]}}},
    }))?;
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    Ok(Api::<Job>::namespaced(admin.clone(), namespace)
        .create(&dry_run, &job)
        .await)
}

#[tokio::test]
async fn cert_manager_issues_the_webhook_certificate_and_injects_its_ca() -> Result<()> {
    let admin = kosmos_e2e::host().await?;
    let virtual_cluster = kosmos_e2e::virtual_cluster().await?;
    kosmos_e2e::install_crds(&admin).await?;
    cert_manager_runs(&admin).await?;
    images_on_the_node().await?;
    let release_ns = TestNamespace::create(Cluster::Host, "chart-cm").await?;
    let vc_ns = TestNamespace::create(Cluster::Host, "chart-cm-vc").await?;
    let (rns, pns) = (release_ns.name().to_owned(), vc_ns.name().to_owned());
    adopt_crds(&admin, &rns).await?;

    let chart = chart_dir().display().to_string();
    let watch = format!("watchNamespaces={{{pns}}}");
    let demo = kosmos_e2e::e2e_dir().join("demo");
    let host_paths = format!("webhook.allowedHostPathPrefixes={{{}}}", demo.display());
    let install = helm(&[
        "install",
        RELEASE,
        chart.as_str(),
        "--namespace",
        rns.as_str(),
        "--set",
        "certificates.mode=certManager",
        "--set",
        watch.as_str(),
        "--set",
        host_paths.as_str(),
    ])
    .await;
    let uninstall_guard = UninstallOnDrop(rns.clone());
    install?;
    let configuration = format!("{WEBHOOK}-{rns}");

    // The Certificate is Ready: issued by the chart's self-signed Issuer.
    let certs = certificates(&admin, &rns);
    let ready = wait_for(
        "the chart's Certificate to be Ready",
        Duration::from_secs(120),
        || {
            let certs = certs.clone();
            async move {
                let cert = certs.get(WEBHOOK).await?;
                let conditions = cert.data["status"]["conditions"].as_array().cloned();
                let ready = conditions.iter().flatten().any(|c| {
                    c["type"] == "Ready"
                        && c["status"] == "True"
                        && c["observedGeneration"] == json!(cert.metadata.generation)
                });
                Ok(ready.then_some(cert))
            }
        },
    )
    .await;
    let cert = match ready {
        Ok(cert) => cert,
        Err(e) => {
            let cert = certs.get_opt(WEBHOOK).await?;
            let controller = kosmos_e2e::kubectl(
                Cluster::Host,
                &[
                    "-n",
                    CERT_MANAGER_NAMESPACE,
                    "logs",
                    "deployment/cert-manager",
                    "--tail",
                    "40",
                ],
            )
            .await
            .unwrap_or_else(|e| format!("{e:#}"));
            bail!(
                "{e:#}\nCertificate: {}\ncontroller:\n{controller}",
                serde_json::to_string_pretty(&cert.map(|c| c.data))?
            );
        }
    };
    let issuer = &cert.data["spec"]["issuerRef"];
    ensure!(
        issuer["name"] == format!("{WEBHOOK}-selfsigned") && issuer["kind"] == "Issuer",
        "the Certificate names {issuer}, not the chart's Issuer"
    );

    // The Secret is the chart's, filled by cert-manager: a key, the certificate, its CA.
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &rns);
    let tls_secret = format!("{WEBHOOK}-tls");
    let secret = secrets.get(&tls_secret).await?;
    ensure!(
        secret.annotations().get("cert-manager.io/certificate-name") == Some(&WEBHOOK.to_owned())
            && secret.labels().get("app.kubernetes.io/managed-by") == Some(&"Helm".to_owned()),
        "Secret {rns}/{tls_secret} is not the chart's Secret filled by cert-manager: {:?}",
        secret.metadata
    );
    let data = secret_data(&secrets, &tls_secret).await?;
    let issued_ca = data
        .get("ca.crt")
        .filter(|c| !c.is_empty())
        .cloned()
        .with_context(|| format!("Secret {rns}/{tls_secret} has no ca.crt"))?;
    for key in ["tls.crt", "tls.key"] {
        ensure!(
            data.get(key).is_some_and(|v| !v.is_empty()),
            "Secret {rns}/{tls_secret} has no {key}"
        );
    }

    // The CA injector wrote the issued CA into the chart's registration.
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());
    let (mwc, _) = registration(&mwcs, &configuration).await?;
    ensure!(
        mwc.annotations().get(INJECT_ANNOTATION) == Some(&format!("{rns}/{WEBHOOK}")),
        "the registration does not ask for the Certificate's CA: {:?}",
        mwc.metadata.annotations
    );
    wait_for_ca_bundle(
        &admin,
        &rns,
        &mwcs,
        &configuration,
        &issued_ca,
        "the CA injector to write the issued CA into the registration",
    )
    .await?;

    // Both webhook replicas serve that certificate: curl trusting only the issued CA reaches
    // each pod and the Service; trusting another CA (the cluster's), it does not.
    wait_for_rollout(&admin, &rns, OPERATOR, 1).await?;
    wait_for_rollout(&admin, &rns, WEBHOOK, 2).await?;
    every_replica_serves_a_trusted_certificate(&admin, &rns, &issued_ca, None).await?;
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
        "the webhook's certificate verified against the cluster's CA, not only the issued one: {untrusted:?}"
    );

    // The apiserver reaches the webhook through the Service with the injected caBundle.
    webhook_answers_through_its_service(&admin, &rns, &pns).await?;

    // The demo through the chart: the operator's executor Jobs go through that webhook.
    run_the_demo(&admin, &virtual_cluster, &rns, &pns).await?;

    // A renewal, as `cmctl renew` asks for one: a new key and, from the self-signed Issuer, a new
    // CA. The injector adds it to the registration's bundle and keeps the previous CA there
    // until it expires (cert-manager's CA injector merges since v1.17, by default in the version
    // we run), so the apiserver trusts the old and the new certificate alike and the webhook
    // stays reachable while its pods pick the new pair up (the kubelet refreshes the mounted
    // Secret, their poller reads it). That pick-up is measured and bounded.
    let renewed_ca = renew(&admin, &rns, &secrets, &tls_secret, &issued_ca).await?;
    wait_for_ca_bundle(
        &admin,
        &rns,
        &mwcs,
        &configuration,
        &renewed_ca,
        "the CA injector to add the renewed CA to the registration",
    )
    .await?;
    let (_, bundle) = registration(&mwcs, &configuration).await?;
    ensure!(
        holds(&bundle, &issued_ca),
        "the CA injector dropped the previous CA at the renewal: webhook pods still serving the \
         old certificate would be refused until they reload"
    );
    let renewal = std::time::Instant::now();
    wait_for(
        "every webhook replica to serve the renewed certificate",
        Duration::from_secs(240),
        || {
            let (admin, rns, ca) = (admin.clone(), rns.clone(), renewed_ca.clone());
            async move {
                Ok(
                    every_replica_serves_a_trusted_certificate(&admin, &rns, &ca, None)
                        .await
                        .ok(),
                )
            }
        },
    )
    .await?;
    eprintln!(
        "every webhook replica served the renewed certificate {:.0?} after the injector added its CA",
        renewal.elapsed()
    );
    webhook_answers_through_its_service(&admin, &rns, &pns).await?;
    let issued_ca = renewed_ca;

    // A wrong caBundle (the injector told to keep off): the apiserver no longer trusts the
    // webhook and, failurePolicy Fail, refuses executor Jobs.
    let (mut mwc, _) = registration(&mwcs, &configuration).await?;
    mwc.annotations_mut().remove(INJECT_ANNOTATION);
    let hook = mwc
        .webhooks
        .as_mut()
        .and_then(|w| w.first_mut())
        .context("a registration without a webhook")?;
    hook.client_config.ca_bundle = Some(k8s_openapi::ByteString(cluster_ca.clone().into_bytes()));
    mwcs.replace(&configuration, &PostParams::default(), &mwc)
        .await?;
    // The apiserver reads registrations through an informer: the new caBundle is in use a
    // moment after the write.
    let refused = wait_for(
        "the apiserver to refuse executor Jobs with the wrong caBundle",
        Duration::from_secs(30),
        || {
            let (admin, pns) = (admin.clone(), pns.clone());
            async move {
                Ok(match executor_job_dry_run(&admin, &pns).await? {
                    Err(kube::Error::Api(s)) if s.message.contains("failed calling webhook") => {
                        Some(s.message)
                    }
                    _ => None,
                })
            }
        },
    )
    .await?;
    ensure!(
        refused.contains("executor-jobs.plugin.kosmos.io") && refused.contains("x509"),
        "with a wrong caBundle the apiserver refused the executor Job, but not for its certificate: {refused}"
    );
    // The annotation back: the injector writes the issued CA again and the webhook answers.
    mwcs.patch(
        &configuration,
        &PatchParams::default(),
        &Patch::Merge(
            json!({"metadata": {"annotations": {(INJECT_ANNOTATION): format!("{rns}/{WEBHOOK}")}}}),
        ),
    )
    .await?;
    wait_for_ca_bundle(
        &admin,
        &rns,
        &mwcs,
        &configuration,
        &issued_ca,
        "the CA injector to put the issued CA back",
    )
    .await?;
    wait_for(
        "the apiserver to reach the webhook with the restored caBundle",
        Duration::from_secs(30),
        || {
            let (admin, pns) = (admin.clone(), pns.clone());
            async move {
                Ok(match executor_job_dry_run(&admin, &pns).await? {
                    Err(kube::Error::Api(s)) if s.message.contains("failed calling webhook") => {
                        None
                    }
                    _ => Some(()),
                })
            }
        },
    )
    .await?;
    webhook_answers_through_its_service(&admin, &rns, &pns).await?;

    // helm uninstall: nothing of the release is left, the Secret cert-manager filled included
    // (the chart made it), and cert-manager's CertificateRequests go with their Certificate.
    uninstall_guard
        .uninstall_leaves_only(&[&pns], &[], &configuration, &admin)
        .await?;
    vc_ns.delete().await?;
    release_ns.delete().await
}

/// Asks cert-manager to issue the chart's Certificate again (what `cmctl renew` does: the
/// Issuing condition, set on the status) and returns the CA of the new Secret contents.
async fn renew(
    admin: &Client,
    rns: &str,
    secrets: &Api<Secret>,
    tls_secret: &str,
    old_ca: &[u8],
) -> Result<Vec<u8>> {
    let certs = certificates(admin, rns);
    let cert = certs.get(WEBHOOK).await?;
    eprintln!(
        "asking for a renewal at {}",
        k8s_openapi::jiff::Timestamp::now()
    );
    let mut conditions = cert.data["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    conditions.push(json!({
        "type": "Issuing",
        "status": "True",
        "reason": "ManuallyTriggered",
        "message": "renewal asked for by the chart test",
        "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().to_string(),
        "observedGeneration": cert.metadata.generation,
    }));
    certs
        .patch_status(
            WEBHOOK,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": conditions}})),
        )
        .await
        .with_context(|| format!("setting Issuing on Certificate {rns}/{WEBHOOK}"))?;
    // Done when the Certificate's revision has moved on and it is Ready again with no issuance
    // under way: the Secret read then is the one the CA injector settles on (the first change
    // of the Secret seen mid-issuance may not be the last).
    let old_revision = cert.data["status"]["revision"].as_i64().unwrap_or(0);
    wait_for(
        "cert-manager to issue the renewed certificate",
        Duration::from_secs(120),
        || {
            let certs = certs.clone();
            async move {
                let cert = certs.get(WEBHOOK).await?;
                let status = &cert.data["status"];
                let conditions = status["conditions"].as_array().cloned().unwrap_or_default();
                let has = |kind: &str| {
                    conditions
                        .iter()
                        .any(|c| c["type"] == kind && c["status"] == "True")
                };
                let settled = status["revision"].as_i64().unwrap_or(0) > old_revision
                    && has("Ready")
                    && !has("Issuing");
                Ok(settled.then_some(()))
            }
        },
    )
    .await?;
    let data = secret_data(secrets, tls_secret).await?;
    let ca = data
        .get("ca.crt")
        .filter(|ca| !ca.is_empty())
        .cloned()
        .with_context(|| format!("Secret {rns}/{tls_secret} has no ca.crt after the renewal"))?;
    ensure!(
        ca != old_ca,
        "the renewal of Certificate {rns}/{WEBHOOK} kept the old CA (the self-signed Issuer makes a new one)"
    );
    Ok(ca)
}

/// The demo's plugins and VirtualCluster in `pns`, installed by the release's pods alone: the
/// VirtualCluster reaches `Completed` with every plugin Succeeded, and every Job that counted
/// carries the webhook's mark (it went through the webhook) and ran on the node.
async fn run_the_demo(
    admin: &Client,
    virtual_cluster: &Client,
    rns: &str,
    pns: &str,
) -> Result<()> {
    let demo = kosmos_e2e::e2e_dir().join("demo");
    let manifest = demo.join("claims/plugin-store-ubuntu-statefulset-0/test.yaml");
    kosmos_e2e::fill_claim(
        admin,
        pns,
        "plugin-store-ubuntu-statefulset-0",
        &[(manifest.as_path(), "test.yaml")],
    )
    .await?;
    let plugins_yaml = std::fs::read_to_string(demo.join("plugins.yaml"))?
        .replace("HOSTPATH_DIR", &demo.display().to_string());
    let plugins: Api<VirtualClusterPlugin> = Api::namespaced(admin.clone(), pns);
    for plugin in kosmos_e2e::parse_yaml::<VirtualClusterPlugin>(&plugins_yaml)? {
        plugins.create(&PostParams::default(), &plugin).await?;
    }
    let kubeconfig = kosmos_e2e::kubeconfig_yaml(Cluster::Virtual).await?;
    let vc_yaml = std::fs::read_to_string(demo.join("virtual-cluster.yaml"))?.replace(
        "KUBECONFIG_BASE64",
        &base64::engine::general_purpose::STANDARD.encode(kubeconfig),
    );
    let vc: VirtualCluster = serde_yaml::from_str(&vc_yaml)?;
    let vcs: Api<VirtualCluster> = Api::namespaced(admin.clone(), pns);
    vcs.create(&PostParams::default(), &vc).await?;
    vcs.patch(
        VC,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": phase::ALL_NODE_READY}})),
    )
    .await?;
    let done = wait_for(
        "tenant1-cluster to be Completed",
        Duration::from_secs(240),
        || {
            let vcs = vcs.clone();
            async move {
                let vc = vcs.get(VC).await?;
                Ok((vc.phase() == phase::COMPLETED).then_some(vc))
            }
        },
    )
    .await;
    let done = match done {
        Ok(vc) => vc,
        Err(e) => {
            let vc = vcs.get(VC).await?;
            bail!(
                "{e:#}\nstatus: {}{}",
                serde_json::to_string_pretty(&vc.status)?,
                release_report(rns).await
            );
        }
    };
    let status = done.status.context("no status")?;
    ensure!(
        status.plugin_progress.as_deref() == Some("3/3")
            && status
                .plugins
                .iter()
                .all(|p| p.phase == PluginPhase::Succeeded),
        "{status:?}"
    );
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), rns);
    let key_secret = format!("{WEBHOOK}-mark-key");
    let keys = kosmos_api::mark::keys_of(&secret_data(&secrets, &key_secret).await?)
        .map_err(|e| anyhow::anyhow!("the chart's key Secret {rns}/{key_secret}: {e}"))?;
    let jobs: Api<Job> = Api::namespaced(admin.clone(), pns);
    for plugin in &status.plugins {
        let job_name = plugin.job_name.as_deref().context("no job name")?;
        let job = jobs.get(job_name).await?;
        let verified = kosmos_api::mark::verify(&keys, &job);
        ensure!(
            verified.is_ok(),
            "{job_name}'s mark does not verify with the key Secret: {verified:?}"
        );
        let ran = kosmos_e2e::job_pods(admin, pns, job_name).await?;
        ensure!(
            ran.iter()
                .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded")),
            "{job_name}: no executor pod succeeded on the node"
        );
    }
    Api::<ConfigMap>::namespaced(virtual_cluster.clone(), "demo")
        .get("hello")
        .await
        .context("the hello plugin's ConfigMap in the virtual cluster")?;
    // The VirtualCluster goes while the release runs: its operator releases the finalizer.
    vcs.delete(VC, &Default::default()).await?;
    wait_for(
        "tenant1-cluster to be deleted",
        Duration::from_secs(60),
        || {
            let vcs = vcs.clone();
            async move { Ok(vcs.get_opt(VC).await?.is_none().then_some(())) }
        },
    )
    .await?;
    Ok(())
}
