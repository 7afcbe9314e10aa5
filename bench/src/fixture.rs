//! What the benchmarks load into the host apiserver: plugins, VirtualClusters, and the
//! AdmissionReviews the apiserver would send for their executor Jobs.

use anyhow::{Context as _, Result};
use base64::Engine as _;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::batch::v1::Job;
use kosmos_api::contract::{self, Action, ExecutorJobId};
use kosmos_api::{VirtualCluster, VirtualClusterPlugin};
use kosmos_operator::plan::NewJob;
use kube::api::PostParams;
use kube::{Api, Client, Resource, ResourceExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// The design's walk-through plugin: manifests in a claim (`pvPath`), applied as they are.
pub const PV_PATH_PLUGIN: &str = "apiserver-network-proxy";
/// A chart fetched from a `uri`, with inline values.
pub const URI_CHART_PLUGIN: &str = "metrics-server";

/// The user the benchmarks' webhooks accept executor Jobs from.
pub const OPERATOR_USER: &str = kosmos_webhook::server::DEFAULT_OPERATOR_USER;

/// The two plugins whose reviews are sent, then `fillers` more manifest plugins of the same
/// shape (each in its own claim), so the caches hold `fillers + 2` plugins.
pub fn plugins(namespace: &str, fillers: usize) -> Result<Vec<VirtualClusterPlugin>> {
    let mut plugins = vec![
        plugin(
            namespace,
            PV_PATH_PLUGIN,
            json!({"pluginSources": {"yaml": {"path": {
                "pvPath": "plugin-store-ubuntu-statefulset-0:/pv"}}}}),
        )?,
        plugin(
            namespace,
            URI_CHART_PLUGIN,
            json!({"pluginSources": {"chart": {
                "storage": {
                    "uri": "https://charts.example.com/metrics-server-3.12.2.tgz",
                    "sha256": "8f1c0b2a9d3e4f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c"
                },
                "namespace": "kube-system",
                "values": "args:\n  - --kubelet-insecure-tls\nreplicas: 1\n"
            }}}),
        )?,
    ];
    for i in 0..fillers {
        plugins.push(plugin(
            namespace,
            &format!("plugin-{i:04}"),
            json!({"pluginSources": {"yaml": {"path": {
                "pvPath": format!("plugin-store-{i}:/pv/plugin-{i:04}")}}}}),
        )?);
    }
    Ok(plugins)
}

fn plugin(namespace: &str, name: &str, spec: Value) -> Result<VirtualClusterPlugin> {
    let mut plugin: VirtualClusterPlugin = serde_json::from_value(json!({
        "apiVersion": "kosmos.io/v1alpha1",
        "kind": "VirtualClusterPlugin",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }))
    .with_context(|| format!("VirtualClusterPlugin {name}"))?;
    kosmos_api::validate_plugin(&plugin).with_context(|| format!("VirtualClusterPlugin {name}"))?;
    plugin.metadata.namespace = Some(namespace.to_owned());
    Ok(plugin)
}

/// `count` VirtualClusters named `tenant-NNNN` that enable `enabled`, each carrying `kubeconfig`
/// in `spec.kubeconfig` (base64) as Kosmos writes it.
pub fn virtual_clusters(
    namespace: &str,
    count: usize,
    enabled: &[String],
    kubeconfig: &str,
) -> Result<Vec<VirtualCluster>> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(kubeconfig);
    let enabled: Vec<Value> = enabled.iter().map(|name| json!({"name": name})).collect();
    (0..count)
        .map(|i| {
            serde_json::from_value(json!({
                "apiVersion": "kosmos.io/v1alpha1",
                "kind": "VirtualCluster",
                "metadata": {"name": format!("tenant-{i:04}"), "namespace": namespace},
                "spec": {
                    "kubeconfig": encoded,
                    "promoteResources": {
                        "nodes": ["node1", "node2"],
                        "resources": {"cpu": "10", "memory": "100Gi"}
                    },
                    "pluginSet": {"enabled": enabled}
                }
            }))
            .context("VirtualCluster fixture")
        })
        .collect()
}

/// Tries of one create in [`create_all`].
const SEND_TRIES: u32 = 3;

/// Creates `objects` with `concurrency` requests in flight; an object that exists is kept. A
/// request lost on the way (the apiserver closing a kept-alive connection as it was reused) is
/// sent again, up to [`SEND_TRIES`] times: a full run makes tens of thousands of these, and one
/// lost connection must not end it (a create that did arrive answers 409 the second time).
pub async fn create_all<K>(
    client: &Client,
    namespace: &str,
    objects: Vec<K>,
    concurrency: usize,
) -> Result<()>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + Serialize
        + DeserializeOwned,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    futures::stream::iter(objects.into_iter().map(|object| {
        let api = api.clone();
        async move {
            let mut tries = 1;
            let created = loop {
                match api.create(&PostParams::default(), &object).await {
                    Err(kube::Error::Service(_) | kube::Error::HyperError(_))
                        if tries < SEND_TRIES =>
                    {
                        tries += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                    other => break other,
                }
            };
            match created {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                Err(e) => Err(e).with_context(|| {
                    format!(
                        "creating {} {namespace}/{}",
                        K::kind(&K::DynamicType::default()),
                        object.name_any()
                    )
                }),
            }
        }
    }))
    .buffer_unordered(concurrency)
    .try_collect::<Vec<()>>()
    .await?;
    Ok(())
}

/// The executor Job the operator would create for `plugin` in `vc`, as the apiserver hands it to
/// mutating webhooks: built by the operator's own code, then defaulted by a dry-run create.
pub async fn admitted_job(
    client: &Client,
    vc: &VirtualCluster,
    plugin: &VirtualClusterPlugin,
) -> Result<Job> {
    let namespace = vc.namespace().unwrap_or_default();
    let job = bare_job(vc, plugin);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
    let dry_run = PostParams {
        dry_run: true,
        field_manager: Some(contract::OPERATOR_FIELD_MANAGER.to_owned()),
    };
    jobs.create(&dry_run, &job)
        .await
        .with_context(|| format!("dry-run create of Job {namespace}/{}", job.name_any()))
}

/// The bare executor Job the operator creates for the first install of `plugin` in `vc`
/// (options play no part: the fixtures' VirtualClusters set none).
pub fn bare_job(vc: &VirtualCluster, plugin: &VirtualClusterPlugin) -> Job {
    let new = NewJob {
        id: ExecutorJobId::new(
            &vc.name_any(),
            &plugin.name_any(),
            Action::Install,
            &contract::spec_hash(&plugin.spec),
            1,
            "",
        ),
        timeout_seconds: plugin.spec.timeout_seconds(),
        executor_image: plugin.spec.executor_image.clone(),
    };
    kosmos_operator::jobs::bare_job(vc, &new, contract::DEFAULT_EXECUTOR_IMAGE)
}

/// The AdmissionReview the apiserver sends for the creation of `job` by `user`.
pub fn review(job: &Job, user: &str) -> Value {
    let gvk = json!({"group": "batch", "version": "v1", "kind": "Job"});
    let gvr = json!({"group": "batch", "version": "v1", "resource": "jobs"});
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0b6f3c9e-8d1a-4c2e-9f3b-6a7d5e4c3b21",
            "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
            "name": job.name_any(),
            "namespace": job.namespace(),
            "operation": "CREATE",
            "userInfo": {
                "username": user,
                "uid": "5b0c3c1e-2f7a-4c59-8a3e-8f2d1f0e6a11",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kosmos-system", "system:authenticated"]
            },
            "object": job,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}
