//! The operator's watched namespaces against the real host control plane: given a list, it
//! serves each listed namespace and leaves every other alone; given none, it serves every
//! namespace. One test in a binary of its own: an operator over every namespace would act on
//! the VirtualClusters of tests running beside it.

#![allow(clippy::unwrap_used)]

mod common;

use anyhow::{Context as _, Result, ensure};
use common::*;
use k8s_openapi::api::core::v1::Secret;
use kosmos_api::{contract, mark, phase};
use kosmos_e2e::{Cluster, TestNamespace};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

const VC: &str = "tenant1-cluster";

/// Installs plugin `dns` into `namespace`'s VirtualCluster: its Job, finished, and the cluster
/// Completed.
async fn install(client: &kube::Client, namespace: &str) -> Result<()> {
    let job = wait_job(client, namespace, "dns", "install", 1).await?;
    finish(client, namespace, &job, ok()).await?;
    wait_vc(client, namespace, VC, "phase Completed", |vc| {
        vc.phase() == phase::COMPLETED
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_namespaces_are_served_and_an_empty_list_serves_every_one() -> Result<()> {
    let (a, client, _sweep_a) = setup("op-ns-a").await?;
    let b = TestNamespace::create(Cluster::Host, "op-ns-b").await?;
    let _sweep_b = FinalizerSweep::new(b.name());
    let c = TestNamespace::create(Cluster::Host, "op-ns-c").await?;
    let _sweep_c = FinalizerSweep::new(c.name());
    let names = [a.name(), b.name(), c.name()];

    // One mark key for the three stand-in webhooks: the operator reads it in `a` only.
    let webhook_a = MarkingWebhook::start(&client, names[0]).await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), names[0]);
    let key = secrets.get(mark::DEFAULT_KEY_SECRET).await?;
    let mut webhooks = vec![webhook_a];
    for ns in &names[1..] {
        let copy = Secret {
            metadata: ObjectMeta {
                name: Some(mark::DEFAULT_KEY_SECRET.to_owned()),
                ..ObjectMeta::default()
            },
            data: key.data.clone(),
            ..Secret::default()
        };
        Api::<Secret>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &copy)
            .await
            .with_context(|| format!("the mark key Secret in {ns}"))?;
        webhooks.push(MarkingWebhook::start(&client, ns).await?);
    }
    for ns in names {
        apply_plugin(&client, ns, "dns", yaml_plugin(json!({}))).await?;
        create_vc(
            &client,
            ns,
            VC,
            phase::ALL_NODE_READY,
            json!({ "pluginSet": { "enabled": [{"name": "dns"}] } }),
        )
        .await?;
    }

    // Two listed: both served by one operator.
    let listed = Operator::start_watching(names[0], &names[..2], &[]).await?;
    for ns in &names[..2] {
        install(&client, ns)
            .await
            .with_context(|| format!("namespace {ns} (listed); log:\n{}", listed.log_text()))?;
    }
    // The third, never listed, was left alone: no Job, no status, no finalizer.
    ensure!(
        plugin_jobs(&client, names[2], "dns").await?.is_empty(),
        "a Job in {}, which is not listed",
        names[2]
    );
    let untouched = get_vc(&client, names[2], VC).await?;
    ensure!(
        untouched
            .status
            .as_ref()
            .and_then(|s| s.plugin_progress.as_ref())
            .is_none()
            && !untouched
                .finalizers()
                .iter()
                .any(|f| f == contract::FINALIZER),
        "the operator of {:?} acted on {}: {:?}",
        &names[..2],
        names[2],
        untouched.status
    );
    listed.kill().await?;

    // None listed: every namespace, the third included; the two done stay done.
    let every = Operator::start_watching(names[0], &[], &[]).await?;
    install(&client, names[2]).await.with_context(|| {
        format!(
            "namespace {} (every namespace); log:\n{}",
            names[2],
            every.log_text()
        )
    })?;
    for ns in &names[..2] {
        let jobs = plugin_jobs(&client, ns, "dns").await?;
        ensure!(
            jobs.len() == 1,
            "{} Jobs in {ns} after a second operator",
            jobs.len()
        );
        ensure!(
            get_vc(&client, ns, VC).await?.phase() == phase::COMPLETED,
            "{ns}"
        );
    }
    drop(every);
    for webhook in webhooks {
        webhook.stop().await?;
    }
    c.delete().await?;
    b.delete().await?;
    a.delete().await
}
