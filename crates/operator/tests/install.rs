//! The operator against the real host control plane (real job controller, garbage collector),
//! with a kubelet stand-in finishing executor pods and a webhook stand-in that marks Jobs.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use anyhow::{Result, ensure};
use common::*;
use kosmos_api::contract;
use kosmos_api::{PluginPhase, condition, phase};
use kosmos_e2e::Cluster;
use kube::ResourceExt;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_plugins_reach_completed() -> Result<()> {
    let (ns, client, _sweep) = setup("op-three").await?;
    let n = ns.name();
    let webhook = MarkingWebhook::start(&client, n).await?;
    for p in ["dns", "proxy", "cni"] {
        apply_plugin(&client, n, p, yaml_plugin(json!({}))).await?;
    }
    let op = Operator::start(n, &[]).await?;
    create_vc(
        &client,
        n,
        "tenant1-cluster",
        phase::ALL_NODE_READY,
        json!({ "pluginSet": { "enabled": [{"name": "dns"}, {"name": "proxy"}, {"name": "cni"}] } }),
    )
    .await?;
    for p in ["dns", "proxy", "cni"] {
        let job = wait_job(&client, n, p, "install", 1).await?;
        let jobs = plugin_jobs(&client, n, p).await?;
        ensure!(jobs.len() == 1, "one job for {p}, got {}", jobs.len());
        ensure!(
            jobs[0]
                .annotations()
                .contains_key(contract::INJECTED_ANNOTATION)
        );
        ensure!(
            jobs[0]
                .annotations()
                .get(contract::KUBECONFIG_SECRET_ANNOTATION)
                == Some(&contract::kubeconfig_secret_name("tenant1-cluster"))
        );
        let vc = get_vc(&client, n, "tenant1-cluster").await?;
        ensure!(
            vc.phase() != phase::COMPLETED,
            "Completed before every plugin succeeded"
        );
        finish(&client, n, &job, ok()).await?;
    }
    let vc = wait_vc(&client, n, "tenant1-cluster", "phase Completed", |vc| {
        vc.phase() == phase::COMPLETED
    })
    .await?;
    let status = vc.status.clone().unwrap();
    ensure!(
        status.plugin_progress.as_deref() == Some("3/3"),
        "{:?}",
        status.plugin_progress
    );
    for p in ["dns", "proxy", "cni"] {
        ensure!(plugin_phase(&vc, p) == Some(PluginPhase::Succeeded), "{p}");
    }
    let (s, _, _) = condition(&vc, condition::PLUGINS_INSTALLED).unwrap();
    ensure!(s == "True");
    let (s, _, _) = condition(&vc, condition::WEBHOOK_MUTATING).unwrap();
    ensure!(s == "True");
    // The kubeconfig Secret for executor Jobs exists and is owned by the VirtualCluster.
    let secret: k8s_openapi::api::core::v1::Secret = kube::Api::namespaced(client.clone(), n)
        .get(&contract::kubeconfig_secret_name("tenant1-cluster"))
        .await?;
    ensure!(
        secret
            .owner_references()
            .iter()
            .any(|o| o.kind == "VirtualCluster")
    );
    // Every plugin named in a PluginInstalled event (plugins finishing in one pass share one).
    let events: kube::Api<k8s_openapi::api::core::v1::Event> =
        kube::Api::namespaced(client.clone(), n);
    kosmos_e2e::wait_for("PluginInstalled events for every plugin", STEP, || async {
        let list = events.list(&Default::default()).await?;
        let all = ["dns", "proxy", "cni"].iter().all(|p| {
            list.items.iter().any(|e| {
                e.reason.as_deref() == Some("PluginInstalled")
                    && e.message
                        .as_deref()
                        .is_some_and(|m| m.contains(&format!("plugin {p} ")))
            })
        });
        Ok(all.then_some(()))
    })
    .await?;
    drop(op);
    webhook.stop().await?;
    ns.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_is_reported_then_retry_succeeds() -> Result<()> {
    let (ns, client, _sweep) = setup("op-retry").await?;
    let n = ns.name();
    let webhook = MarkingWebhook::start(&client, n).await?;
    apply_plugin(&client, n, "flaky", yaml_plugin(json!({}))).await?;
    let op = Operator::start(n, &[]).await?;
    create_vc(
        &client,
        n,
        "vc",
        phase::ALL_NODE_READY,
        json!({ "pluginSet": { "enabled": [{"name": "flaky"}] } }),
    )
    .await?;
    let first = wait_job(&client, n, "flaky", "install", 1).await?;
    finish(
        &client,
        n,
        &first,
        fail("helm: chart apiserver-network-proxy not found"),
    )
    .await?;
    // The pod's termination message reaches the status (retry pending or the next attempt).
    wait_vc(&client, n, "vc", "the failure message in status", |vc| {
        entry(vc, "flaky")
            .and_then(|e| e.message.as_deref())
            .is_some_and(|m| m.contains("helm: chart apiserver-network-proxy not found"))
            || plugin_phase(vc, "flaky") == Some(PluginPhase::Installing)
                && entry(vc, "flaky").is_some_and(|e| e.attempts == 2)
    })
    .await?;
    let second = wait_job(&client, n, "flaky", "install", 2).await?;
    ensure!(second != first);
    // The event is published right after the status write that follows the Job's creation.
    let events: kube::Api<k8s_openapi::api::core::v1::Event> =
        kube::Api::namespaced(client.clone(), n);
    kosmos_e2e::wait_for("an event with the termination message", STEP, || async {
        let list = events.list(&Default::default()).await?;
        Ok(list
            .items
            .iter()
            .any(|e| {
                e.type_.as_deref() == Some("Warning")
                    && e.message
                        .as_deref()
                        .is_some_and(|m| m.contains("chart apiserver-network-proxy not found"))
            })
            .then_some(()))
    })
    .await?;
    finish(&client, n, &second, ok()).await?;
    let vc = wait_vc(&client, n, "vc", "phase Completed", |vc| {
        vc.phase() == phase::COMPLETED
    })
    .await?;
    ensure!(entry(&vc, "flaky").unwrap().attempts == 2);
    drop(op);
    webhook.stop().await?;
    ns.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gives_up_with_the_reason_after_max_attempts() -> Result<()> {
    let (ns, client, _sweep) = setup("op-giveup").await?;
    let n = ns.name();
    let webhook = MarkingWebhook::start(&client, n).await?;
    apply_plugin(&client, n, "broken", yaml_plugin(json!({}))).await?;
    let op = Operator::start(n, &["--max-attempts", "2"]).await?;
    create_vc(
        &client,
        n,
        "vc",
        phase::ALL_NODE_READY,
        json!({ "pluginSet": { "enabled": [{"name": "broken"}] } }),
    )
    .await?;
    for attempt in 1..=2 {
        let job = wait_job(&client, n, "broken", "install", attempt).await?;
        finish(&client, n, &job, fail("kubectl: error validating data")).await?;
    }
    let vc = wait_vc(&client, n, "vc", "plugin Failed", |vc| {
        plugin_phase(vc, "broken") == Some(PluginPhase::Failed)
    })
    .await?;
    let message = entry(&vc, "broken")
        .unwrap()
        .message
        .clone()
        .unwrap_or_default();
    ensure!(
        message.contains("kubectl: error validating data"),
        "{message}"
    );
    ensure!(vc.phase() == phase::ALL_NODE_READY);
    let (s, reason, _) = condition(&vc, condition::PLUGINS_INSTALLED).unwrap();
    ensure!(s == "False" && reason == "Failed");
    // No third attempt while it stays failed.
    tokio::time::sleep(Duration::from_secs(4)).await;
    ensure!(plugin_jobs(&client, n, "broken").await?.len() == 2);
    // A retry request starts over.
    let api: kube::Api<kosmos_api::VirtualCluster> = kube::Api::namespaced(client.clone(), n);
    api.patch(
        "vc",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(
            json!({"metadata": {"annotations": {contract::RETRY_ANNOTATION: "1"}}}),
        ),
    )
    .await?;
    let job = wait_job(&client, n, "broken", "install", 3).await?;
    finish(&client, n, &job, ok()).await?;
    wait_vc(&client, n, "vc", "phase Completed", |vc| {
        vc.phase() == phase::COMPLETED
    })
    .await?;
    drop(op);
    webhook.stop().await?;
    ns.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_plugin_is_reported_and_creating_it_resumes() -> Result<()> {
    let (ns, client, _sweep) = setup("op-missing").await?;
    let n = ns.name();
    let webhook = MarkingWebhook::start(&client, n).await?;
    let op = Operator::start(n, &[]).await?;
    create_vc(
        &client,
        n,
        "vc",
        phase::ALL_NODE_READY,
        json!({ "pluginSet": { "enabled": [{"name": "late"}] } }),
    )
    .await?;
    let vc = wait_vc(&client, n, "vc", "PluginsResolved=False", |vc| {
        condition(vc, condition::PLUGINS_RESOLVED).is_some_and(|(s, _, _)| s == "False")
    })
    .await?;
    let (_, reason, message) = condition(&vc, condition::PLUGINS_RESOLVED).unwrap();
    ensure!(
        reason == "PluginNotFound" && message.contains("late"),
        "{reason}: {message}"
    );
    ensure!(plugin_jobs(&client, n, "late").await?.is_empty());
    apply_plugin(&client, n, "late", yaml_plugin(json!({}))).await?;
    let job = wait_job(&client, n, "late", "install", 1).await?;
    finish(&client, n, &job, ok()).await?;
    let vc = wait_vc(&client, n, "vc", "phase Completed", |vc| {
        vc.phase() == phase::COMPLETED
    })
    .await?;
    ensure!(condition(&vc, condition::PLUGINS_RESOLVED).unwrap().0 == "True");
    drop(op);
    webhook.stop().await?;
    ns.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_and_disabled_choose_the_set() -> Result<()> {
    let (ns, client, _sweep) = setup("op-defaults").await?;
    let n = ns.name();
    let webhook = MarkingWebhook::start(&client, n).await?;
    apply_plugin(
        &client,
        n,
        "dns",
        yaml_plugin(json!({"enabledByDefault": true})),
    )
    .await?;
    apply_plugin(
        &client,
        n,
        "monitoring",
        yaml_plugin(json!({"enabledByDefault": true})),
    )
    .await?;
    apply_plugin(&client, n, "cni", yaml_plugin(json!({}))).await?;
    apply_plugin(&client, n, "unused", yaml_plugin(json!({}))).await?;
    let op = Operator::start(n, &[]).await?;
    create_vc(
        &client,
        n,
        "vc",
        phase::ALL_NODE_READY,
        json!({ "pluginSet": { "enabled": [{"name": "cni"}], "disabled": [{"name": "monitoring"}] } }),
    )
    .await?;
    for p in ["dns", "cni"] {
        let job = wait_job(&client, n, p, "install", 1).await?;
        finish(&client, n, &job, ok()).await?;
    }
    let vc = wait_vc(&client, n, "vc", "phase Completed", |vc| {
        vc.phase() == phase::COMPLETED
    })
    .await?;
    ensure!(vc.status.as_ref().unwrap().plugin_progress.as_deref() == Some("2/2"));
    for p in ["monitoring", "unused"] {
        ensure!(
            plugin_jobs(&client, n, p).await?.is_empty(),
            "{p} got a job"
        );
        ensure!(entry(&vc, p).is_none(), "{p} in status");
    }
    drop(op);
    webhook.stop().await?;
    ns.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depends_on_orders_the_installs() -> Result<()> {
    let (ns, client, _sweep) = setup("op-deps").await?;
    let n = ns.name();
    let webhook = MarkingWebhook::start(&client, n).await?;
    apply_plugin(&client, n, "cni", yaml_plugin(json!({}))).await?;
    apply_plugin(
        &client,
        n,
        "dns",
        yaml_plugin(json!({"dependsOn": [{"name": "cni"}]})),
    )
    .await?;
    let op = Operator::start(n, &[]).await?;
    create_vc(
        &client,
        n,
        "vc",
        phase::ALL_NODE_READY,
        json!({ "pluginSet": { "enabled": [{"name": "dns"}, {"name": "cni"}] } }),
    )
    .await?;
    let cni = wait_job(&client, n, "cni", "install", 1).await?;
    let vc = wait_vc(&client, n, "vc", "dns waiting for cni", |vc| {
        entry(vc, "dns").and_then(|e| e.message.as_deref()) == Some("waiting for cni")
    })
    .await?;
    ensure!(plugin_phase(&vc, "dns") == Some(PluginPhase::Pending));
    ensure!(
        plugin_jobs(&client, n, "dns").await?.is_empty(),
        "dns started before cni succeeded"
    );
    finish(&client, n, &cni, ok()).await?;
    let dns = wait_job(&client, n, "dns", "install", 1).await?;
    finish(&client, n, &dns, ok()).await?;
    wait_vc(&client, n, "vc", "phase Completed", |vc| {
        vc.phase() == phase::COMPLETED
    })
    .await?;
    drop(op);
    webhook.stop().await?;
    ns.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_webhook_jobs_are_deleted_and_never_completed() -> Result<()> {
    let (ns, client, _sweep) = setup("op-nowebhook").await?;
    let n = ns.name();
    apply_plugin(&client, n, "dns", yaml_plugin(json!({}))).await?;
    let op = Operator::start(n, &[]).await?;
    create_vc(
        &client,
        n,
        "vc",
        phase::ALL_NODE_READY,
        json!({ "pluginSet": { "enabled": [{"name": "dns"}] } }),
    )
    .await?;
    let vc = wait_vc(&client, n, "vc", "WebhookMutating=False", |vc| {
        condition(vc, condition::WEBHOOK_MUTATING).is_some_and(|(s, _, _)| s == "False")
    })
    .await?;
    let (_, reason, message) = condition(&vc, condition::WEBHOOK_MUTATING).unwrap();
    ensure!(
        reason == "NotMutated" && message.contains("not mutated by the plugin webhook"),
        "{message}"
    );
    // Over several retries: never Completed, never a surviving unmarked Job.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(750)).await;
        let vc = get_vc(&client, n, "vc").await?;
        ensure!(
            vc.phase() != phase::COMPLETED,
            "Completed without the webhook"
        );
        ensure!(plugin_phase(&vc, "dns") != Some(PluginPhase::Succeeded));
        for job in plugin_jobs(&client, n, "dns").await? {
            // A Job may exist for the instant between create and delete; it must go.
            let name = job.name_any();
            kosmos_e2e::wait_for(&format!("unmarked job {name} to be deleted"), STEP, || {
                let client = client.clone();
                let name = name.clone();
                async move {
                    let api: kube::Api<k8s_openapi::api::batch::v1::Job> =
                        kube::Api::namespaced(client, n);
                    Ok(api
                        .get_opt(&name)
                        .await?
                        .is_none_or(|j| j.metadata.deletion_timestamp.is_some())
                        .then_some(()))
                }
            })
            .await?;
        }
    }
    drop(op);
    ns.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_the_webhook_denies_is_reported_on_the_cluster() -> Result<()> {
    let (ns, client, _sweep) = setup("op-denied").await?;
    let n = ns.name();
    let webhook = MarkingWebhook::start(&client, n).await?;
    apply_plugin(&client, n, DENIED_PLUGIN, yaml_plugin(json!({}))).await?;
    let op = Operator::start(n, &[]).await?;
    create_vc(
        &client,
        n,
        "vc",
        phase::ALL_NODE_READY,
        json!({ "pluginSet": { "enabled": [{"name": DENIED_PLUGIN}] } }),
    )
    .await?;
    let vc = wait_vc(
        &client,
        n,
        "vc",
        "the denial in the plugin's status",
        |vc| {
            entry(vc, DENIED_PLUGIN)
                .and_then(|e| e.message.as_deref())
                .is_some_and(|m| m.contains("not under an allowed prefix"))
        },
    )
    .await?;
    ensure!(plugin_phase(&vc, DENIED_PLUGIN) == Some(PluginPhase::Pending));
    ensure!(vc.phase() == phase::ALL_NODE_READY);
    ensure!(plugin_jobs(&client, n, DENIED_PLUGIN).await?.is_empty());
    let events: kube::Api<k8s_openapi::api::core::v1::Event> =
        kube::Api::namespaced(client.clone(), n);
    kosmos_e2e::wait_for("a JobRejected event", STEP, || async {
        let list = events.list(&Default::default()).await?;
        Ok(list
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("JobRejected"))
            .then_some(()))
    })
    .await?;
    drop(op);
    webhook.stop().await?;
    ns.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeconfig_from_the_kosmos_admin_secret() -> Result<()> {
    let (ns, client, _sweep) = setup("op-kubeconfig").await?;
    let n = ns.name();
    let webhook = MarkingWebhook::start(&client, n).await?;
    apply_plugin(&client, n, "dns", yaml_plugin(json!({}))).await?;
    let op = Operator::start(n, &[]).await?;
    create_vc(
        &client,
        n,
        "vc",
        phase::ALL_NODE_READY,
        json!({ "kubeconfig": null, "pluginSet": { "enabled": [{"name": "dns"}] } }),
    )
    .await?;
    let vc = wait_vc(&client, n, "vc", "KubeconfigAvailable=False", |vc| {
        condition(vc, condition::KUBECONFIG_AVAILABLE).is_some_and(|(s, _, _)| s == "False")
    })
    .await?;
    let (_, _, message) = condition(&vc, condition::KUBECONFIG_AVAILABLE).unwrap();
    ensure!(
        message.contains(&contract::kosmos_admin_secret_name("vc")),
        "{message}"
    );
    ensure!(plugin_jobs(&client, n, "dns").await?.is_empty());

    // Kosmos publishes the kubeconfig in <name>-admin-config; the operator polls for it.
    let text = kosmos_e2e::kubeconfig_yaml(Cluster::Virtual).await?;
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client.clone(), n);
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": { "name": contract::kosmos_admin_secret_name("vc") },
        "stringData": { contract::KUBECONFIG_SECRET_KEY: text },
    }))?;
    secrets.create(&Default::default(), &secret).await?;
    let job = wait_job(&client, n, "dns", "install", 1).await?;
    let copy = secrets.get(&contract::kubeconfig_secret_name("vc")).await?;
    let data = copy.data.unwrap_or_default();
    // What was checked, written out again: the same cluster, user and context.
    let checked = kosmos_api::kubeconfig::check(text.as_bytes())
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .to_yaml();
    ensure!(
        data.get(contract::KUBECONFIG_SECRET_KEY)
            .map(|b| b.0.as_slice())
            == Some(checked.as_bytes()),
        "the operator's kubeconfig Secret differs from Kosmos's"
    );
    finish(&client, n, &job, ok()).await?;
    let vc = wait_vc(&client, n, "vc", "phase Completed", |vc| {
        vc.phase() == phase::COMPLETED
    })
    .await?;
    ensure!(condition(&vc, condition::KUBECONFIG_AVAILABLE).unwrap().0 == "True");
    ensure!(
        !op.log_text().contains("certificate-authority-data"),
        "the log leaks the kubeconfig"
    );
    drop(op);
    webhook.stop().await?;
    ns.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_parallel_jobs_bounds_the_jobs_in_flight() -> Result<()> {
    let (ns, client, _sweep) = setup("op-parallel").await?;
    let n = ns.name();
    let webhook = MarkingWebhook::start(&client, n).await?;
    for p in ["a", "b"] {
        apply_plugin(&client, n, p, yaml_plugin(json!({}))).await?;
    }
    let op = Operator::start(n, &["--max-parallel-jobs", "1"]).await?;
    create_vc(
        &client,
        n,
        "vc",
        phase::ALL_NODE_READY,
        json!({ "pluginSet": { "enabled": [{"name": "a"}, {"name": "b"}] } }),
    )
    .await?;
    let a = wait_job(&client, n, "a", "install", 1).await?;
    let vc = wait_vc(&client, n, "vc", "b waiting for a free slot", |vc| {
        entry(vc, "b")
            .and_then(|e| e.message.as_deref())
            .is_some_and(|m| m.contains("free slot"))
    })
    .await?;
    ensure!(plugin_phase(&vc, "b") == Some(PluginPhase::Pending));
    ensure!(
        plugin_jobs(&client, n, "b").await?.is_empty(),
        "b started while a ran"
    );
    finish(&client, n, &a, ok()).await?;
    let b = wait_job(&client, n, "b", "install", 1).await?;
    finish(&client, n, &b, ok()).await?;
    wait_vc(&client, n, "vc", "phase Completed", |vc| {
        vc.phase() == phase::COMPLETED
    })
    .await?;
    drop(op);
    webhook.stop().await?;
    ns.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_depends_on_cycle_is_reported_and_nothing_starts() -> Result<()> {
    let (ns, client, _sweep) = setup("op-cycle").await?;
    let n = ns.name();
    apply_plugin(
        &client,
        n,
        "a",
        yaml_plugin(json!({"dependsOn": [{"name": "b"}]})),
    )
    .await?;
    apply_plugin(
        &client,
        n,
        "b",
        yaml_plugin(json!({"dependsOn": [{"name": "a"}]})),
    )
    .await?;
    let op = Operator::start(n, &[]).await?;
    create_vc(
        &client,
        n,
        "vc",
        phase::ALL_NODE_READY,
        json!({ "pluginSet": { "enabled": [{"name": "a"}, {"name": "b"}] } }),
    )
    .await?;
    let vc = wait_vc(&client, n, "vc", "PluginsResolved=False", |vc| {
        condition(vc, condition::PLUGINS_RESOLVED).is_some_and(|(s, _, _)| s == "False")
    })
    .await?;
    let (_, reason, message) = condition(&vc, condition::PLUGINS_RESOLVED).unwrap();
    ensure!(
        reason == "DependencyCycle" && message.contains("a, b"),
        "{reason}: {message}"
    );
    let events: kube::Api<k8s_openapi::api::core::v1::Event> =
        kube::Api::namespaced(client.clone(), n);
    kosmos_e2e::wait_for("a DependencyCycle event", STEP, || async {
        let list = events.list(&Default::default()).await?;
        Ok(list
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("DependencyCycle"))
            .then_some(()))
    })
    .await?;
    for p in ["a", "b"] {
        ensure!(
            plugin_jobs(&client, n, p).await?.is_empty(),
            "{p} started despite the cycle"
        );
    }
    ensure!(vc.phase() == phase::ALL_NODE_READY);
    drop(op);
    ns.delete().await
}
