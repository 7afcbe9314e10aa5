//! The Helm chart (`charts/kosmos-plugins`) against the real host apiserver:
//! - `helm lint --strict` with the default values and every `ci/*-values.yaml`;
//! - `helm template` of each certificate mode and of a values file that sets every value, each
//!   rendered object accepted by a server-side dry run with strict field validation;
//! - bad values files refused by `values.schema.json`, naming the key;
//! - the chart installed for real: its operator and webhook pods, from the images, on the node,
//!   carrying the demo's VirtualCluster to `Completed` (the RBAC is enough; every counted Job's
//!   mark verifies with the key the webhook wrote into the chart's key Secret), a plain Job
//!   patched into an executor Job denied (the registration covers UPDATE), then actions outside
//!   their job refused with the ServiceAccounts' tokens (the RBAC is not too much: the operator
//!   may not change the key, the webhook may not list Secrets), `helm upgrade` of values (the key survives; mutual TLS with
//!   `webhook.clientCA`: the apiserver still reaches the webhook, curl without a client
//!   certificate does not), and `helm uninstall` leaving nothing of the release but the CRDs it
//!   keeps on purpose.
//!
//! The images come from `make images` (images/out), which `make test` builds first.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod chart_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Secret, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kosmos_api::{PluginPhase, VirtualCluster, VirtualClusterPlugin, phase};
use kosmos_e2e::{Cluster, TestNamespace, wait_for};
use kube::api::{
    DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
    ValidationDirective,
};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use chart_support::{
    ClientCertificate, OPERATOR, RELEASE, UninstallOnDrop, VC, WEBHOOK, adopt_crds, chart_dir,
    component_pods, every_replica_serves_a_trusted_certificate, helm, helm_output,
    images_on_the_node, is_forbidden, release_report, secret_data, wait_for_rollout,
    webhook_answers_through_its_service,
};

fn testdata() -> PathBuf {
    kosmos_e2e::e2e_dir().join("testdata/chart")
}

fn values_file(name: &str) -> String {
    chart_dir().join("ci").join(name).display().to_string()
}

#[tokio::test]
async fn the_chart_lints_clean_with_every_values_file() -> Result<()> {
    let chart = chart_dir().display().to_string();
    let mut files = vec![None];
    for entry in std::fs::read_dir(chart_dir().join("ci"))? {
        files.push(Some(entry?.path().display().to_string()));
    }
    ensure!(
        files.len() >= 4,
        "expected the ci/ values files, found {files:?}"
    );
    for file in files {
        let mut args = vec!["lint", "--strict", chart.as_str()];
        if let Some(file) = &file {
            args.extend(["-f", file.as_str()]);
        }
        let out = helm(&args).await?;
        ensure!(
            out.contains("1 chart(s) linted, 0 chart(s) failed") && !out.contains("[WARNING]"),
            "helm lint with {file:?}:\n{out}"
        );
    }
    Ok(())
}

/// Every object of a rendered chart, parsed.
fn objects(rendered: &str) -> Result<Vec<DynamicObject>> {
    kosmos_e2e::parse_yaml::<DynamicObject>(rendered)
}

fn kind_of(object: &DynamicObject) -> String {
    object
        .types
        .as_ref()
        .map(|t| t.kind.clone())
        .unwrap_or_default()
}

/// Server-side dry run of every object (in `namespace` unless it names its own), with strict
/// field validation: an unknown or misplaced field is an error, not silently dropped.
async fn dry_run_apply(client: &Client, namespace: &str, objects: &[DynamicObject]) -> Result<()> {
    let mut params = PatchParams::apply("kosmos-e2e-chart").force().dry_run();
    params.field_validation = Some(ValidationDirective::Strict);
    for object in objects {
        let types = object.types.clone().context("object without a kind")?;
        let gvk = GroupVersionKind::try_from(&types)?;
        let name = object.name_any();
        // A rendered object that names its namespace (a Role in a watched namespace) goes there.
        let namespace = object.namespace().unwrap_or_else(|| namespace.to_owned());
        let api = kosmos_e2e::dynamic_api(client, &gvk, &namespace).await?;
        api.patch(&name, &params, &Patch::Apply(object))
            .await
            .with_context(|| format!("the apiserver refused {} {name}", types.kind))?;
    }
    Ok(())
}

#[tokio::test]
async fn every_rendered_object_is_accepted_by_the_apiserver_in_each_certificate_mode() -> Result<()>
{
    let admin = kosmos_e2e::host().await?;
    kosmos_e2e::install_crds(&admin).await?;
    // cert-manager's CRDs are the real ones the local cluster runs cert-manager with (on a
    // cluster of your own, install cert-manager first); the ServiceMonitor CRD is a stand-in.
    let third_party = std::fs::read_to_string(testdata().join("third-party-crds.yaml"))?;
    for crd in kosmos_e2e::parse_yaml::<CustomResourceDefinition>(&third_party)? {
        let api: Api<CustomResourceDefinition> = Api::all(admin.clone());
        api.patch(
            &crd.name_any(),
            &PatchParams::apply(kosmos_e2e::FIELD_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await?;
    }
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for name in [
        "certificates.cert-manager.io",
        "issuers.cert-manager.io",
        "servicemonitors.monitoring.coreos.com",
    ] {
        wait_for(
            "a third-party CRD to be served",
            Duration::from_secs(60),
            || {
                let crds = crds.clone();
                async move {
                    let crd = crds.get(name).await?;
                    let established = crd.status.and_then(|s| s.conditions).is_some_and(|c| {
                        c.iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    });
                    Ok(established.then_some(()))
                }
            },
        )
        .await?;
    }

    let ns = TestNamespace::create(Cluster::Host, "chart-render").await?;
    let ns2 = TestNamespace::create(Cluster::Host, "chart-render-b").await?;
    let chart = chart_dir().display().to_string();
    let watch = format!("watchNamespaces={{{},{}}}", ns.name(), ns2.name());
    // (values file, extra --set, kinds the mode must render)
    let cases: Vec<(Option<String>, Option<&str>, &[&str])> = vec![
        (None, None, &["Secret", "Lease", "PodDisruptionBudget"]),
        (
            Some(values_file("cert-manager-values.yaml")),
            None,
            &["Certificate", "Issuer"],
        ),
        (Some(values_file("secret-values.yaml")), None, &[]),
        (
            Some(values_file("everything-values.yaml")),
            Some(watch.as_str()),
            &["Certificate", "ServiceMonitor", "NetworkPolicy", "Role"],
        ),
    ];
    for (file, set, kinds) in cases {
        let mut args = vec![
            "template",
            RELEASE,
            chart.as_str(),
            "--namespace",
            ns.name(),
        ];
        if let Some(file) = &file {
            args.extend(["-f", file.as_str()]);
        }
        if let Some(set) = set {
            args.extend(["--set", set]);
        }
        let rendered = helm(&args).await?;
        let objects = objects(&rendered)?;
        let rendered_kinds: Vec<String> = objects.iter().map(kind_of).collect();
        for kind in kinds.iter().chain(&[
            "Deployment",
            "MutatingWebhookConfiguration",
            "ServiceAccount",
        ]) {
            ensure!(
                rendered_kinds.iter().any(|k| k == kind),
                "{file:?} rendered no {kind}: {rendered_kinds:?}"
            );
        }
        dry_run_apply(&admin, ns.name(), &objects)
            .await
            .with_context(|| format!("values {file:?}"))?;
        if set.is_some() {
            // Watched namespaces: the watch rights are a Role and RoleBinding per component in
            // each of them, and nothing cluster-wide.
            for namespace in [ns.name(), ns2.name()] {
                for kind in ["Role", "RoleBinding"] {
                    let count = objects
                        .iter()
                        .filter(|o| {
                            kind_of(o) == kind && o.namespace().as_deref() == Some(namespace)
                        })
                        .filter(|o| ["kp-operator", "kp-webhook"].contains(&o.name_any().as_str()))
                        .count();
                    ensure!(
                        count == 2,
                        "{count} {kind}s of the components in {namespace}"
                    );
                }
            }
            ensure!(
                !objects
                    .iter()
                    .any(|o| kind_of(o) == "ClusterRole" && !o.name_any().ends_with("-ca-bundle")),
                "a ClusterRole with watched namespaces: {rendered_kinds:?}"
            );
        }
        // The mode decides where the caBundle comes from.
        let mwc = objects
            .iter()
            .find(|o| kind_of(o) == "MutatingWebhookConfiguration")
            .unwrap();
        let ca_bundle = &mwc.data["webhooks"][0]["clientConfig"]["caBundle"];
        let inject = mwc.annotations().get("cert-manager.io/inject-ca-from");
        match file
            .as_deref()
            .map(|f| Path::new(f).file_name().unwrap().to_str().unwrap())
        {
            Some("secret-values.yaml") => ensure!(ca_bundle.is_string(), "secret mode: {mwc:?}"),
            Some("cert-manager-values.yaml" | "everything-values.yaml") => {
                ensure!(
                    inject.is_some() && ca_bundle.is_null(),
                    "certManager: {mwc:?}"
                )
            }
            _ => ensure!(
                inject.is_none() && ca_bundle.is_null(),
                "bootstrap: {mwc:?}"
            ),
        }
    }
    ns2.delete().await?;
    ns.delete().await
}

/// Renders the chart with the values file `file` of the test data, which must fail; returns
/// helm's error output.
async fn refusal(file: &str) -> Result<String> {
    let (chart, path) = (chart_dir(), testdata().join(file));
    let (chart, path) = (chart.display().to_string(), path.display().to_string());
    let output = helm_output(&["template", RELEASE, chart.as_str(), "-f", path.as_str()]).await?;
    ensure!(!output.status.success(), "{file} was accepted");
    Ok(String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test]
async fn bad_values_are_refused_by_the_schema_naming_the_key() -> Result<()> {
    for (file, names) in [
        ("bad-unknown-key.yaml", "timeoutSecond"),
        ("bad-wrong-type.yaml", "/webhook/replicas"),
        ("bad-mode.yaml", "/certificates/mode"),
        (
            "bad-secret-without-ca.yaml",
            "/certificates/secret/caBundle",
        ),
    ] {
        let stderr = refusal(file).await?;
        ensure!(
            stderr.contains("values don't meet the specifications of the schema")
                && stderr.contains(names),
            "{file}: the error does not name {names}:\n{stderr}"
        );
    }
    Ok(())
}

/// Values the schema cannot judge alone (they depend on each other) are refused by the templates,
/// naming the keys and what to change.
#[tokio::test]
async fn values_that_cannot_work_together_are_refused_saying_why() -> Result<()> {
    for (file, says) in [
        (
            "bad-connections-below-burst.yaml",
            "webhook.maxConnections (128) × webhook.replicas (2) = 256 is below the operator's Job creates in flight (8 × operator.concurrentReconciles × 2 controller(s), one per watched namespace = 512)",
        ),
        (
            "bad-replicas-without-leader.yaml",
            "operator.replicas above 1 needs operator.leaderElection.enabled",
        ),
    ] {
        let stderr = refusal(file).await?;
        ensure!(
            stderr.contains(says),
            "{file}: the error does not say {says}:\n{stderr}"
        );
    }
    Ok(())
}

/// The guard on `webhook.maxConnections` writes the operator's Job creates in flight per
/// reconciliation as a literal (a template cannot read Rust): rendered exactly at the boundary
/// that `CREATES_AT_ONCE` gives, it accepts, and one connection below it, it refuses.
#[tokio::test]
async fn the_connection_guard_counts_the_creates_the_operator_makes_at_once() -> Result<()> {
    let per_reconcile = kosmos_operator::controller::CREATES_AT_ONCE;
    // Two webhook replicas (the default) and four reconciles: the cap per replica is half the
    // burst, so the replicas are counted too.
    let (replicas, reconciles) = (2, 4);
    let boundary = per_reconcile * reconciles / replicas;
    let chart = chart_dir().display().to_string();
    for (max, accepted) in [(boundary, true), (boundary - 1, false)] {
        let output = helm_output(&[
            "template",
            RELEASE,
            chart.as_str(),
            "--set",
            &format!("webhook.replicas={replicas}"),
            "--set",
            &format!("operator.concurrentReconciles={reconciles}"),
            "--set",
            &format!("webhook.maxConnections={max}"),
        ])
        .await?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(
            output.status.success() == accepted,
            "webhook.maxConnections={max} with {replicas} replicas and {reconciles} reconciles \
             of {per_reconcile} creates: accepted {}, expected {accepted}:\n{stderr}",
            output.status.success()
        );
        if !accepted {
            let says =
                format!("Job creates in flight ({per_reconcile} × operator.concurrentReconciles");
            ensure!(
                stderr.contains(&says),
                "the error does not say {says}:\n{stderr}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_installed_chart_runs_a_plugin_install_as_its_service_accounts_and_nothing_more()
-> Result<()> {
    let admin = kosmos_e2e::host().await?;
    let virtual_cluster = kosmos_e2e::virtual_cluster().await?;
    kosmos_e2e::install_crds(&admin).await?;
    images_on_the_node().await?;
    let release_ns = TestNamespace::create(Cluster::Host, "chart").await?;
    let vc_ns = TestNamespace::create(Cluster::Host, "chart-vc").await?;
    let (rns, pns) = (release_ns.name().to_owned(), vc_ns.name().to_owned());
    // A second watched namespace: the release serves a list of them.
    let vc_ns2 = TestNamespace::create(Cluster::Host, "chart-vc2").await?;
    let pns2 = vc_ns2.name().to_owned();

    adopt_crds(&admin, &rns).await?;
    // The restricted Pod Security Standard, enforced: the chart's pods exist only if the
    // apiserver's PodSecurity admission accepts their templates.
    Api::<Namespace>::all(admin.clone())
        .patch(
            &rns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
            }}})),
        )
        .await?;
    // It is enforced: a pod that may escalate privileges is refused.
    let loose: Pod = serde_json::from_value(json!({
        "metadata": {"name": "loose"},
        "spec": {"containers": [{"name": "x", "image": kosmos_e2e::busybox_image()}]},
    }))?;
    let refused = Api::<Pod>::namespaced(admin.clone(), &rns)
        .create(
            &PostParams {
                dry_run: true,
                ..PostParams::default()
            },
            &loose,
        )
        .await;
    ensure!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.message.contains("violates PodSecurity \"restricted")),
        "the release namespace does not enforce the restricted standard: {refused:?}"
    );

    let chart = chart_dir().display().to_string();
    let watch = format!("watchNamespaces={{{pns},{pns2}}}");
    // The demo's hostPath plugin reads e2e/demo: the one folder this install allows.
    let demo = kosmos_e2e::e2e_dir().join("demo");
    let host_paths = format!("webhook.allowedHostPathPrefixes={{{}}}", demo.display());
    let install = helm(&[
        "install",
        RELEASE,
        chart.as_str(),
        "--namespace",
        rns.as_str(),
        "--set",
        watch.as_str(),
        "--set",
        host_paths.as_str(),
        // Two operators: one leads through the chart's Lease, the other stands by.
        "--set",
        "operator.replicas=2",
        "--set",
        "executor.imagePullSecrets={executor-registry}",
        "--set",
        "executor.resources.requests.cpu=10m",
    ])
    .await;
    let uninstall_guard = UninstallOnDrop(rns.clone());
    install?;
    let configuration = format!("{WEBHOOK}-{rns}");

    // Both Deployments ready on the node: the images are there, the pods pass the restricted
    // standard, the readiness probes on the admin port pass (the webhook's only after its
    // certificate is loaded and its caches are synced).
    wait_for_rollout(&admin, &rns, OPERATOR, 2).await?;
    wait_for_rollout(&admin, &rns, WEBHOOK, 2).await?;
    let node = Api::<Node>::all(admin.clone())
        .list(&ListParams::default())
        .await?;
    for pod in component_pods(&admin, &rns, "operator")
        .await?
        .iter()
        .chain(&component_pods(&admin, &rns, "webhook").await?)
    {
        let spec = pod.spec.as_ref().context("a pod without a spec")?;
        ensure!(
            spec.node_name
                .as_ref()
                .is_some_and(|n| node.items.iter().any(|node| node.name_any() == *n)),
            "{} is not on a node",
            pod.name_any()
        );
        let image = &spec.containers[0].image;
        ensure!(
            image
                .as_deref()
                .is_some_and(|i| i.starts_with("localhost/kosmos/")
                    && i.ends_with(&format!(":{}", env!("CARGO_PKG_VERSION")))),
            "{} runs {image:?}, not the image `make images` built",
            pod.name_any()
        );
    }

    // Bootstrap mode: the webhook filled the chart's Secret and gave its CA to the chart's
    // registration, which calls the Service (no URL).
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &rns);
    let bootstrap = secrets.get(&format!("{WEBHOOK}-bootstrap")).await?;
    let bootstrap_ca = bootstrap
        .data
        .as_ref()
        .and_then(|d| d.get("ca.crt"))
        .map(|c| c.0.clone())
        .context("the bootstrap Secret was not filled")?;
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());
    let hook = mwcs
        .get(&configuration)
        .await?
        .webhooks
        .unwrap_or_default()
        .into_iter()
        .next()
        .context("a registration without a webhook")?;
    let service = hook.client_config.service.as_ref();
    ensure!(
        hook.client_config.url.is_none()
            && service.is_some_and(|s| s.name == WEBHOOK && s.namespace == rns),
        "the registration does not call the chart's Service: {:?}",
        hook.client_config
    );
    let ca_bundle = hook
        .client_config
        .ca_bundle
        .context("the webhook did not set the caBundle")?
        .0;
    ensure!(
        String::from_utf8_lossy(&ca_bundle).contains(String::from_utf8_lossy(&bootstrap_ca).trim()),
        "the caBundle does not hold the bootstrap Secret's CA"
    );
    ensure!(
        hook.rules
            .unwrap_or_default()
            .iter()
            .any(
                |r| r.operations.as_ref().is_some_and(|o| ["CREATE", "UPDATE"]
                    .iter()
                    .all(|want| o.iter().any(|o| o == want)))
            ),
        "the registration does not cover Job creation and update"
    );
    every_replica_serves_a_trusted_certificate(&admin, &rns, &ca_bundle, None).await?;
    webhook_answers_through_its_service(&admin, &rns, &pns).await?;

    // Tokens of the chart's ServiceAccounts, for the checks of what they may not do.
    let operator_token = kosmos_e2e::service_account_token(&admin, &rns, OPERATOR).await?;
    let webhook_token = kosmos_e2e::service_account_token(&admin, &rns, WEBHOOK).await?;
    let as_operator = kosmos_e2e::client_with_token(Cluster::Host, &operator_token).await?;
    let as_webhook = kosmos_e2e::client_with_token(Cluster::Host, &webhook_token).await?;

    // The executor pull secret the chart names (the image is on the node; a real registry would
    // need it).
    let registry: Secret = serde_json::from_value(json!({
        "metadata": {"name": "executor-registry"},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": "{\"auths\":{}}"},
    }))?;
    Api::<Secret>::namespaced(admin.clone(), &pns)
        .create(&PostParams::default(), &registry)
        .await?;
    // The walk-through's claim, filled with kubectl cp.
    let manifest = demo.join("claims/plugin-store-ubuntu-statefulset-0/test.yaml");
    kosmos_e2e::fill_claim(
        &admin,
        &pns,
        "plugin-store-ubuntu-statefulset-0",
        &[(manifest.as_path(), "test.yaml")],
    )
    .await?;

    // The demo's plugins and VirtualCluster, installed by the chart's pods alone.
    let plugins_yaml = std::fs::read_to_string(demo.join("plugins.yaml"))?
        .replace("HOSTPATH_DIR", &demo.display().to_string());
    let plugins: Api<VirtualClusterPlugin> = Api::namespaced(admin.clone(), &pns);
    for plugin in kosmos_e2e::parse_yaml::<VirtualClusterPlugin>(&plugins_yaml)? {
        plugins.create(&PostParams::default(), &plugin).await?;
    }
    let kubeconfig = kosmos_e2e::kubeconfig_yaml(Cluster::Virtual).await?;
    let vc_yaml = std::fs::read_to_string(demo.join("virtual-cluster.yaml"))?.replace(
        "KUBECONFIG_BASE64",
        &base64::engine::general_purpose::STANDARD.encode(kubeconfig),
    );
    let vc: VirtualCluster = serde_yaml::from_str(&vc_yaml)?;
    let vcs: Api<VirtualCluster> = Api::namespaced(admin.clone(), &pns);
    let done = ready_and_completed(&vcs, &vc, &rns).await?;
    let status = done.status.context("no status")?;
    ensure!(
        status.plugin_progress.as_deref() == Some("3/3"),
        "{status:?}"
    );
    ensure!(
        status
            .plugins
            .iter()
            .all(|p| p.phase == PluginPhase::Succeeded),
        "{:?}",
        status.plugins
    );
    let jobs: Api<Job> = Api::namespaced(admin.clone(), &pns);
    // The webhook filled the chart's empty key Secret, and every Job that counted carries the
    // webhook's mark for that very Job under that key (the operator verified it, and so do we).
    let key_secret = format!("{WEBHOOK}-mark-key");
    let key_data = secret_data(&secrets, &key_secret).await?;
    let keys = kosmos_api::mark::keys_of(&key_data)
        .map_err(|e| anyhow::anyhow!("the chart's key Secret {rns}/{key_secret}: {e}"))?;
    for plugin in &status.plugins {
        let job_name = plugin.job_name.as_deref().context("no job name")?;
        let job = jobs.get(job_name).await?;
        let verified = kosmos_api::mark::verify(&keys, &job);
        ensure!(
            verified.is_ok(),
            "{job_name}'s mark does not verify with the key Secret: {verified:?}"
        );
        // The chart's executor settings reached the pod, through the webhook's mutation.
        let pod = job
            .spec
            .and_then(|s| s.template.spec)
            .context("a Job without a pod")?;
        ensure!(
            pod.image_pull_secrets
                .unwrap_or_default()
                .iter()
                .any(|s| s.name == "executor-registry"),
            "{}: no executor pull secret",
            plugin.name
        );
        let cpu = pod.containers[0]
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("cpu"))
            .map(|q| q.0.clone());
        ensure!(
            cpu.as_deref() == Some("10m"),
            "{}: executor cpu request {cpu:?}",
            plugin.name
        );
        // The executor pod really ran on the node.
        let ran = kosmos_e2e::job_pods(&admin, &pns, job_name).await?;
        ensure!(
            ran.iter()
                .any(
                    |p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded")
                        && p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
                ),
            "{job_name}: no executor pod succeeded on the node"
        );
    }
    Api::<ConfigMap>::namespaced(virtual_cluster, "demo")
        .get("hello")
        .await
        .context("the hello plugin's ConfigMap in the virtual cluster")?;
    a_second_watched_namespace_is_served(&admin, &as_operator, &rns, &pns, &pns2, &keys).await?;
    // One operator pod led, through the chart's Lease.
    let operator_pods: Vec<String> = component_pods(&admin, &rns, "operator")
        .await?
        .iter()
        .map(|p| p.name_any())
        .collect();
    let lease = Api::<Lease>::namespaced(admin.clone(), &rns)
        .get(OPERATOR)
        .await?;
    let holder = lease.spec.and_then(|s| s.holder_identity);
    ensure!(
        holder.as_ref().is_some_and(|h| operator_pods.contains(h)),
        "the chart's Lease is held by {holder:?}, not by an operator pod of {operator_pods:?}"
    );

    // The key: the operator reads it (the install above) but cannot change it; the webhook
    // reads and fills it by name but cannot list the release namespace's Secrets.
    let key_update = Api::<Secret>::namespaced(as_operator.clone(), &rns)
        .patch(
            &key_secret,
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {(kosmos_api::mark::KEY_DATA): ""}})),
        )
        .await;
    ensure!(
        is_forbidden(&key_update),
        "the operator changed the mark key Secret: {key_update:?}"
    );
    let webhook_lists = Api::<Secret>::namespaced(as_webhook.clone(), &rns)
        .list(&ListParams::default())
        .await;
    ensure!(
        is_forbidden(&webhook_lists),
        "the webhook listed the release namespace's Secrets: {webhook_lists:?}"
    );
    // The operator may delete a Secret of the namespaces it serves (a refused kubeconfig takes
    // the executor's copy away).
    let scratch: Secret =
        serde_json::from_value(json!({"metadata": {"name": "scratch-kubeconfig"}}))?;
    Api::<Secret>::namespaced(admin.clone(), &pns)
        .create(&PostParams::default(), &scratch)
        .await?;
    Api::<Secret>::namespaced(as_operator.clone(), &pns)
        .delete("scratch-kubeconfig", &DeleteParams::default())
        .await
        .context("the operator may not delete a Secret of the namespace it serves")?;

    // Not their job: refused.
    let other = Api::<Secret>::namespaced(as_operator.clone(), &rns)
        .get(&format!("{WEBHOOK}-bootstrap"))
        .await;
    ensure!(
        is_forbidden(&other),
        "the operator read the webhook's Secret: {other:?}"
    );
    let default_secrets = Api::<Secret>::namespaced(as_operator.clone(), "default")
        .list(&ListParams::default())
        .await;
    ensure!(
        is_forbidden(&default_secrets),
        "the operator listed Secrets in default: {default_secrets:?}"
    );
    let new_lease: Lease = serde_json::from_value(json!({"metadata": {"name": "another"}}))?;
    let created = Api::<Lease>::namespaced(as_operator.clone(), &rns)
        .create(&PostParams::default(), &new_lease)
        .await;
    ensure!(
        is_forbidden(&created),
        "the operator created a Lease: {created:?}"
    );
    let mwc_patch = Api::<MutatingWebhookConfiguration>::all(as_operator.clone())
        .patch(
            &configuration,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await;
    ensure!(
        is_forbidden(&mwc_patch),
        "the operator patched the webhook registration: {mwc_patch:?}"
    );
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "from-the-webhook"},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "x", "image": "registry.invalid/x"}]}}},
    }))?;
    let job_result = Api::<Job>::namespaced(as_webhook.clone(), &pns)
        .create(&PostParams::default(), &job)
        .await;
    ensure!(
        is_forbidden(&job_result),
        "the webhook created a Job: {job_result:?}"
    );
    let spec_patch = Api::<VirtualCluster>::namespaced(as_webhook.clone(), &pns)
        .patch(
            VC,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"pluginSet": {"enabled": []}}})),
        )
        .await;
    ensure!(
        is_forbidden(&spec_patch),
        "the webhook patched a VirtualCluster: {spec_patch:?}"
    );
    let kubeconfig_secret = Api::<Secret>::namespaced(as_webhook.clone(), &pns)
        .get(&format!("{VC}-plugin-kubeconfig"))
        .await;
    ensure!(
        is_forbidden(&kubeconfig_secret),
        "the webhook read a kubeconfig Secret: {kubeconfig_secret:?}"
    );
    let other_ns = Api::<VirtualClusterPlugin>::namespaced(as_webhook.clone(), "default")
        .list(&ListParams::default())
        .await;
    ensure!(
        is_forbidden(&other_ns),
        "the webhook listed plugins outside its namespace: {other_ns:?}"
    );
    let sa_create = Api::<ServiceAccount>::namespaced(as_operator, &pns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "x"}}))?,
        )
        .await;
    ensure!(
        is_forbidden(&sa_create),
        "the operator created a ServiceAccount: {sa_create:?}"
    );
    drop(as_webhook);

    // The pods stayed healthy (no liveness failure, no crash) and the PDB guards the two
    // webhook replicas: one may be evicted, not both.
    for pod in component_pods(&admin, &rns, "operator")
        .await?
        .iter()
        .chain(&component_pods(&admin, &rns, "webhook").await?)
    {
        let restarts: i32 = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|c| c.iter().map(|c| c.restart_count).sum())
            .unwrap_or_default();
        ensure!(
            restarts == 0,
            "{} restarted {restarts} times{}",
            pod.name_any(),
            release_report(&rns).await
        );
    }
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(admin.clone(), &rns);
    let pdb_ok = wait_for("the webhook's PDB status", Duration::from_secs(30), || {
        let pdbs = pdbs.clone();
        async move {
            let status = pdbs.get(WEBHOOK).await?.status.unwrap_or_default();
            Ok((status.expected_pods == 2
                && status.current_healthy == 2
                && status.desired_healthy == 1
                && status.disruptions_allowed == 1)
                .then_some(()))
        }
    })
    .await;
    if let Err(e) = pdb_ok {
        bail!("{e:#}: {:?}", pdbs.get(WEBHOOK).await?.status);
    }

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

    // helm upgrade to changed values: the registration's timeout changes and the webhook pods
    // roll (a new log level); the new pods take the certificate the Secret keeps, so the
    // caBundle stays valid and the apiserver still reaches the webhook right after the rollout
    // (the old pods keep serving for `webhook.shutdownDelaySeconds` while kube-proxy forgets
    // them: without that, a review sent then hung until the timeout).
    let old_webhook_pods: Vec<String> = component_pods(&admin, &rns, "webhook")
        .await?
        .iter()
        .map(|p| p.name_any())
        .collect();
    // The upgrade also turns on mutual TLS: the CA of the client certificate this cluster's
    // apiservers present to every webhook (their admission configuration).
    let client_dir = kosmos_e2e::admission_client_dir().await?;
    let client_ca = client_dir.join("admission-client-ca.crt");
    let client_ca_value = format!("webhook.clientCA={}", client_ca.display());
    helm(&[
        "upgrade",
        RELEASE,
        chart.as_str(),
        "--namespace",
        rns.as_str(),
        "--reuse-values",
        "--set",
        "webhook.timeoutSeconds=17",
        "--set",
        "webhook.logLevel=debug",
        "--set-file",
        client_ca_value.as_str(),
    ])
    .await?;
    wait_for_rollout(&admin, &rns, WEBHOOK, 2).await?;
    let new_webhook_pods = component_pods(&admin, &rns, "webhook").await?;
    ensure!(
        new_webhook_pods
            .iter()
            .all(|p| !old_webhook_pods.contains(&p.name_any())),
        "the webhook pods did not roll: {old_webhook_pods:?}"
    );
    ensure!(
        new_webhook_pods.iter().all(|p| {
            p.spec.as_ref().is_some_and(|s| {
                s.containers[0]
                    .env
                    .iter()
                    .flatten()
                    .any(|e| e.name == "RUST_LOG" && e.value.as_deref() == Some("debug"))
            })
        }),
        "the new webhook pods lack the upgraded log level"
    );
    let hook = mwcs
        .get(&configuration)
        .await?
        .webhooks
        .unwrap_or_default()
        .into_iter()
        .next()
        .context("no webhook")?;
    ensure!(
        hook.timeout_seconds == Some(17),
        "upgrade did not change timeoutSeconds"
    );
    ensure!(
        hook.client_config.ca_bundle.map(|b| b.0) == Some(ca_bundle.clone()),
        "upgrade changed or dropped the caBundle"
    );
    let kept = secrets.get(&format!("{WEBHOOK}-bootstrap")).await?;
    ensure!(
        kept.data
            .as_ref()
            .and_then(|d| d.get("ca.crt"))
            .map(|c| &c.0)
            == Some(&bootstrap_ca),
        "upgrade replaced or emptied the bootstrap Secret"
    );
    // The key survived the upgrade (Helm's three-way merge leaves the data the webhook wrote).
    let key_after = secret_data(&secrets, &key_secret).await?;
    ensure!(
        key_after.contains_key(kosmos_api::mark::KEY_DATA)
            && key_after.get(kosmos_api::mark::KEY_DATA)
                == key_data.get(kosmos_api::mark::KEY_DATA),
        "upgrade changed or emptied the mark key"
    );
    // Mutual TLS: the chart's ConfigMap holds the CA, the new pods require a client certificate
    // of it, and the apiserver, presenting one, still reaches the webhook.
    let mounted = Api::<ConfigMap>::namespaced(admin.clone(), &rns)
        .get(&format!("{WEBHOOK}-client-ca"))
        .await?;
    ensure!(
        mounted
            .data
            .as_ref()
            .and_then(|d| d.get("ca.crt"))
            .map(|c| c.trim())
            == Some(std::fs::read_to_string(&client_ca)?.trim()),
        "the chart's client CA ConfigMap does not hold the CA it was given"
    );
    let client = ClientCertificate {
        cert_pem: std::fs::read_to_string(client_dir.join("admission-client.crt"))?,
        key_pem: std::fs::read_to_string(client_dir.join("admission-client.key"))?,
    };
    // The old pods (no client CA) keep serving through the Service while they terminate
    // (`webhook.shutdownDelaySeconds`): asked only once they are gone.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &rns);
    let gone = wait_for(
        "the old webhook pods to be gone",
        Duration::from_secs(120),
        || {
            let (pods, old) = (pods.clone(), old_webhook_pods.clone());
            async move {
                let mut left = Vec::new();
                for name in &old {
                    if pods.get_opt(name).await?.is_some() {
                        left.push(name.clone());
                    }
                }
                Ok(left.is_empty().then_some(()))
            }
        },
    )
    .await;
    if let Err(e) = gone {
        bail!("{e:#}{}", release_report(&rns).await);
    }
    every_replica_serves_a_trusted_certificate(&admin, &rns, &ca_bundle, Some(&client)).await?;
    webhook_answers_through_its_service(&admin, &rns, &pns).await?;

    // helm uninstall: nothing of the release is left but the CRDs it keeps on purpose.
    uninstall_guard
        .uninstall_leaves_only(&[&pns, &pns2], &[], &configuration, &admin)
        .await?;
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    ensure!(
        crds.get_opt("virtualclusterplugins.kosmos.io")
            .await?
            .is_some(),
        "uninstall deleted the plugin CRD"
    );

    vc_ns2.delete().await?;
    vc_ns.delete().await?;
    release_ns.delete().await
}

/// Creates `vc` with `vcs`, marks it `AllNodeReady` as Kosmos would, and waits until it is
/// `Completed`; on timeout the error shows its status and the release's pods (namespace `rns`).
async fn ready_and_completed(
    vcs: &Api<VirtualCluster>,
    vc: &VirtualCluster,
    rns: &str,
) -> Result<VirtualCluster> {
    let name = vc.name_any();
    vcs.create(&PostParams::default(), vc).await?;
    vcs.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": phase::ALL_NODE_READY}})),
    )
    .await?;
    let done = wait_for(
        &format!("{name} to be Completed"),
        Duration::from_secs(240),
        || {
            let (vcs, name) = (vcs.clone(), name.clone());
            async move {
                let vc = vcs.get(&name).await?;
                Ok((vc.phase() == phase::COMPLETED).then_some(vc))
            }
        },
    )
    .await;
    match done {
        Ok(vc) => Ok(vc),
        Err(e) => {
            let vc = vcs.get(&name).await?;
            bail!(
                "{e:#}\nstatus: {}{}",
                serde_json::to_string_pretty(&vc.status)?,
                release_report(rns).await
            );
        }
    }
}

/// The release serves its second watched namespace `pns2` as it serves the first (`pns`): the
/// components' rights there are a Role each (the same as in `pns`, none cluster-wide), and a
/// VirtualCluster there with the demo's default plugin (YAML from a hostPath) goes to Completed
/// through the chart's pods: the operator and the webhook watch both namespaces, and its Job's
/// mark verifies with the release's `keys`. A namespace that is not listed stays closed to the
/// operator.
async fn a_second_watched_namespace_is_served(
    admin: &Client,
    as_operator: &Client,
    rns: &str,
    pns: &str,
    pns2: &str,
    keys: &[kosmos_api::mark::Key],
) -> Result<()> {
    for namespace in [pns, pns2] {
        for name in [OPERATOR, WEBHOOK] {
            Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(admin.clone(), namespace)
                .get(name)
                .await
                .with_context(|| format!("Role {namespace}/{name}"))?;
            Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(admin.clone(), namespace)
                .get(name)
                .await
                .with_context(|| format!("RoleBinding {namespace}/{name}"))?;
        }
    }
    for name in [OPERATOR, WEBHOOK] {
        let cluster_role = Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(admin.clone())
            .get_opt(name)
            .await?;
        ensure!(
            cluster_role.is_none(),
            "ClusterRole {name} with watched namespaces"
        );
    }
    let unlisted = Api::<VirtualCluster>::namespaced(as_operator.clone(), "default")
        .list(&ListParams::default())
        .await;
    ensure!(
        is_forbidden(&unlisted),
        "the operator listed VirtualClusters of a namespace it does not serve: {unlisted:?}"
    );

    let demo = kosmos_e2e::e2e_dir().join("demo");
    let plugins_yaml = std::fs::read_to_string(demo.join("plugins.yaml"))?
        .replace("HOSTPATH_DIR", &demo.display().to_string());
    let plugin = kosmos_e2e::parse_yaml::<VirtualClusterPlugin>(&plugins_yaml)?
        .into_iter()
        .find(|p| p.name_any() == "demo-namespace")
        .context("the demo's hostPath plugin")?;
    Api::<VirtualClusterPlugin>::namespaced(admin.clone(), pns2)
        .create(&PostParams::default(), &plugin)
        .await?;
    let kubeconfig = kosmos_e2e::kubeconfig_yaml(Cluster::Virtual).await?;
    let vc: VirtualCluster = serde_json::from_value(json!({
        "metadata": {"name": "tenant2-cluster"},
        "spec": {"kubeconfig": base64::engine::general_purpose::STANDARD.encode(kubeconfig)},
    }))?;
    let vcs: Api<VirtualCluster> = Api::namespaced(admin.clone(), pns2);
    let done = ready_and_completed(&vcs, &vc, rns).await?;
    let status = done.status.context("no status")?;
    ensure!(
        status.plugin_progress.as_deref() == Some("1/1")
            && status
                .plugins
                .iter()
                .all(|p| p.phase == PluginPhase::Succeeded),
        "{status:?}"
    );
    let job_name = status.plugins[0]
        .job_name
        .as_deref()
        .context("no job name")?;
    let job = Api::<Job>::namespaced(admin.clone(), pns2)
        .get(job_name)
        .await?;
    let verified = kosmos_api::mark::verify(keys, &job);
    ensure!(
        verified.is_ok(),
        "{job_name} in {pns2}: its mark does not verify with the key Secret: {verified:?}"
    );
    // Gone again while the release runs: the operator releases its finalizer there too.
    vcs.delete("tenant2-cluster", &Default::default()).await?;
    wait_for(
        "tenant2-cluster to be deleted",
        Duration::from_secs(60),
        || {
            let vcs = vcs.clone();
            async move {
                Ok(vcs
                    .get_opt("tenant2-cluster")
                    .await?
                    .is_none()
                    .then_some(()))
            }
        },
    )
    .await?;
    Ok(())
}
