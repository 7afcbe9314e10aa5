//! The virtual cluster is a second, separate control plane with its own controllers, reachable
//! through the kubeconfig that a VirtualCluster's `spec.kubeconfig` would carry.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kosmos_e2e::{
    Cluster, DEFAULT_TIMEOUT, TestNamespace, config, host, kubeconfig_yaml, virtual_cluster,
    wait_for,
};
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;

/// Fails when the user points both at one cluster: there is nothing to tell apart.
async fn ensure_two_clusters() -> Result<()> {
    let host = config(Cluster::Host).await?.cluster_url;
    let virt = config(Cluster::Virtual).await?.cluster_url;
    if host == virt {
        // Never a silent pass: the separation checks mean nothing on one cluster.
        anyhow::bail!("host and virtual cluster are both {host}: these checks need two clusters");
    }
    Ok(())
}

#[tokio::test]
async fn objects_in_the_virtual_cluster_are_not_in_the_host() -> Result<()> {
    ensure_two_clusters().await?;
    let ns = TestNamespace::create(Cluster::Virtual, "virtual-only").await?;
    let virt = virtual_cluster().await?;
    let map = ConfigMap {
        metadata: ObjectMeta {
            name: Some("installed-by-plugin".into()),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    };
    Api::<ConfigMap>::namespaced(virt, ns.name())
        .create(&PostParams::default(), &map)
        .await?;

    let in_host = Api::<Namespace>::all(host().await?)
        .get_opt(ns.name())
        .await?;
    ensure!(
        in_host.is_none(),
        "namespace {} leaked into the host cluster",
        ns.name()
    );
    ns.delete().await
}

#[tokio::test]
async fn the_virtual_cluster_runs_its_own_controllers() -> Result<()> {
    let ns = TestNamespace::create(Cluster::Virtual, "virtual-controllers").await?;
    let virt = virtual_cluster().await?;
    // A plugin's manifests typically hold a Deployment: the deployment controller must turn it
    // into a ReplicaSet (no pods run; there are no nodes).
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "konnectivity-agent" },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": "konnectivity-agent" } },
            "template": {
                "metadata": { "labels": { "app": "konnectivity-agent" } },
                "spec": { "containers": [{ "name": "agent", "image": "registry.invalid/agent:e2e" }] },
            },
        },
    }))?;
    Api::<Deployment>::namespaced(virt.clone(), ns.name())
        .create(&PostParams::default(), &deployment)
        .await?;
    let replica_sets: Api<ReplicaSet> = Api::namespaced(virt, ns.name());
    wait_for(
        "a ReplicaSet for the Deployment",
        DEFAULT_TIMEOUT,
        || async {
            let list = replica_sets
                .list(&ListParams::default().labels("app=konnectivity-agent"))
                .await?;
            Ok((!list.items.is_empty()).then_some(()))
        },
    )
    .await?;
    ns.delete().await
}

#[tokio::test]
async fn the_virtual_kubeconfig_text_reaches_the_virtual_cluster() -> Result<()> {
    // What the operator will do with a VirtualCluster's spec.kubeconfig (after base64 decoding).
    let text = kubeconfig_yaml(Cluster::Virtual).await?;
    let kubeconfig = Kubeconfig::from_yaml(&text).context("parsing the virtual kubeconfig")?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let client = Client::try_from(config)?;
    let version = tokio::time::timeout(Duration::from_secs(20), client.apiserver_version())
        .await
        .context("the virtual apiserver did not answer within 20 s")??;
    ensure!(
        version.major == "1",
        "virtual cluster reports version {version:?}"
    );
    Ok(())
}
