//! The operator across changes and restarts: killed mid-install, plugin spec changed, plugin
//! option changed, plugin disabled, VirtualCluster deleted while its virtual API is gone, builtin readiness.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use anyhow::{Result, ensure};
use common::*;
use k8s_openapi::api::core::v1::Node;
use kosmos_api::contract;
use kosmos_api::{PluginPhase, VirtualCluster, condition, phase};
use kosmos_e2e::{virtual_cluster, wait_for};
use kosmos_operator::server::{self, Args};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_and_restarted_mid_install_creates_no_duplicate() -> Result<()> {
    let (ns, client, _sweep) = setup("op-restart").await?;
    let n = ns.name();
    let webhook = MarkingWebhook::start(&client, n).await?;
    for p in ["a", "b"] {
        apply_plugin(&client, n, p, yaml_plugin(json!({}))).await?;
    }
    let op = Operator::start(n, &[]).await?;
    create_vc(
        &client,
        n,
        "vc",
        phase::ALL_NODE_READY,
        json!({ "pluginSet": { "enabled": [{"name": "a"}, {"name": "b"}] } }),
    )
    .await?;
    let a = wait_job(&client, n, "a", "install", 1).await?;
    let b = wait_job(&client, n, "b", "install", 1).await?;
    op.kill().await?;
    // While it is down, one install finishes.
    finish(&client, n, &a, ok()).await?;
    let op = Operator::start(n, &[]).await?;
    // The new process waits for the dead one's lease to expire (3 s), then takes over.
    wait_vc(&client, n, "vc", "a Succeeded after the restart", |vc| {
        plugin_phase(vc, "a") == Some(PluginPhase::Succeeded)
    })
    .await?;
    for p in ["a", "b"] {
        let jobs = plugin_jobs(&client, n, p).await?;
        ensure!(
            jobs.len() == 1,
            "plugin {p} has {} jobs: {:?}",
            jobs.len(),
            jobs.iter().map(|j| j.name_any()).collect::<Vec<_>>()
        );
    }
    finish(&client, n, &b, ok()).await?;
    let vc = wait_vc(&client, n, "vc", "phase Completed", |vc| {
        vc.phase() == phase::COMPLETED
    })
    .await?;
    ensure!(entry(&vc, "b").unwrap().job_name.as_deref() == Some(b.as_str()));
    ensure!(entry(&vc, "b").unwrap().attempts == 1);
    // Restarted again after Completed: nothing new happens.
    op.kill().await?;
    let op = Operator::start(n, &[]).await?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    for p in ["a", "b"] {
        ensure!(plugin_jobs(&client, n, p).await?.len() == 1);
    }
    ensure!(get_vc(&client, n, "vc").await?.phase() == phase::COMPLETED);
    drop(op);
    webhook.stop().await?;
    ns.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_change_reinstalls() -> Result<()> {
    let (ns, client, _sweep) = setup("op-respec").await?;
    let n = ns.name();
    let webhook = MarkingWebhook::start(&client, n).await?;
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
    let first = wait_job(&client, n, "dns", "install", 1).await?;
    finish(&client, n, &first, ok()).await?;
    let vc = wait_vc(&client, n, "vc", "phase Completed", |vc| {
        vc.phase() == phase::COMPLETED
    })
    .await?;
    let old_hash = entry(&vc, "dns").unwrap().spec_hash.clone();

    apply_plugin(
        &client,
        n,
        "dns",
        yaml_plugin(json!({"timeoutSeconds": 60})),
    )
    .await?;
    let second = wait_job(&client, n, "dns", "install", 2).await?;
    let job = plugin_jobs(&client, n, "dns")
        .await?
        .into_iter()
        .find(|j| j.name_any() == second)
        .unwrap();
    let new_hash = job
        .annotations()
        .get(contract::SPEC_HASH_ANNOTATION)
        .cloned();
    ensure!(
        new_hash != old_hash,
        "the new job carries the old spec hash"
    );
    ensure!(job.spec.as_ref().unwrap().active_deadline_seconds == Some(60 + 120));
    let vc = wait_vc(
        &client,
        n,
        "vc",
        "back to AllNodeReady while reinstalling",
        |vc| vc.phase() == phase::ALL_NODE_READY,
    )
    .await?;
    ensure!(vc.status.as_ref().unwrap().plugin_progress.as_deref() == Some("0/1"));
    finish(&client, n, &second, ok()).await?;
    let vc = wait_vc(&client, n, "vc", "phase Completed again", |vc| {
        vc.phase() == phase::COMPLETED
    })
    .await?;
    ensure!(entry(&vc, "dns").unwrap().spec_hash == new_hash);
    // The finished Job of the old spec is removed once the new one succeeded.
    wait_for("the old spec's job to go", STEP, || async {
        let jobs = plugin_jobs(&client, n, "dns").await?;
        Ok((jobs.len() == 1 && jobs[0].name_any() == second).then_some(()))
    })
    .await?;
    drop(op);
    webhook.stop().await?;
    ns.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_plugin_option_reinstalls() -> Result<()> {
    let (ns, client, _sweep) = setup("op-reoption").await?;
    let n = ns.name();
    let webhook = MarkingWebhook::start(&client, n).await?;
    apply_plugin(&client, n, "dns", yaml_plugin(json!({}))).await?;
    let op = Operator::start(n, &[]).await?;
    create_vc(
        &client,
        n,
        "vc",
        phase::ALL_NODE_READY,
        json!({
            "pluginSet": { "enabled": [{"name": "dns"}] },
            "pluginOptions": [{"name": "dnsIP", "value": "10.96.0.10"}],
        }),
    )
    .await?;
    let first = wait_job(&client, n, "dns", "install", 1).await?;
    finish(&client, n, &first, ok()).await?;
    let vc = wait_vc(&client, n, "vc", "phase Completed", |vc| {
        vc.phase() == phase::COMPLETED
    })
    .await?;
    let old_hash = entry(&vc, "dns").unwrap().spec_hash.clone();

    // The same plugin, another value of an option: a new install Job.
    Api::<VirtualCluster>::namespaced(client.clone(), n)
        .patch(
            "vc",
            &PatchParams::default(),
            &Patch::Merge(json!({
                "spec": {"pluginOptions": [{"name": "dnsIP", "value": "10.96.0.11"}]}
            })),
        )
        .await?;
    let second = wait_job(&client, n, "dns", "install", 2).await?;
    let job = plugin_jobs(&client, n, "dns")
        .await?
        .into_iter()
        .find(|j| j.name_any() == second)
        .unwrap();
    let new_hash = job
        .annotations()
        .get(contract::SPEC_HASH_ANNOTATION)
        .cloned();
    ensure!(new_hash != old_hash, "the new job carries the old hash");
    finish(&client, n, &second, ok()).await?;
    let vc = wait_vc(&client, n, "vc", "phase Completed again", |vc| {
        vc.phase() == phase::COMPLETED
    })
    .await?;
    ensure!(entry(&vc, "dns").unwrap().spec_hash == new_hash);
    drop(op);
    webhook.stop().await?;
    ns.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_plugin_uninstalls_it() -> Result<()> {
    let (ns, client, _sweep) = setup("op-disable").await?;
    let n = ns.name();
    let webhook = MarkingWebhook::start(&client, n).await?;
    apply_plugin(
        &client,
        n,
        "dns",
        yaml_plugin(json!({"enabledByDefault": true})),
    )
    .await?;
    apply_plugin(&client, n, "cni", yaml_plugin(json!({}))).await?;
    let op = Operator::start(n, &[]).await?;
    create_vc(
        &client,
        n,
        "vc",
        phase::ALL_NODE_READY,
        json!({ "pluginSet": { "enabled": [{"name": "cni"}] } }),
    )
    .await?;
    for p in ["dns", "cni"] {
        let job = wait_job(&client, n, p, "install", 1).await?;
        finish(&client, n, &job, ok()).await?;
    }
    wait_vc(&client, n, "vc", "phase Completed", |vc| {
        vc.phase() == phase::COMPLETED
    })
    .await?;

    let api: Api<VirtualCluster> = Api::namespaced(client.clone(), n);
    api.patch(
        "vc",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"pluginSet": {"enabled": [{"name": "cni"}], "disabled": [{"name": "dns"}]}}})),
    )
    .await?;
    let uninstall = wait_job(&client, n, "dns", "uninstall", 2).await?;
    let vc = wait_vc(&client, n, "vc", "dns Uninstalling", |vc| {
        plugin_phase(vc, "dns") == Some(PluginPhase::Uninstalling)
    })
    .await?;
    ensure!(
        vc.phase() != phase::COMPLETED,
        "Completed while uninstalling"
    );
    finish(&client, n, &uninstall, ok()).await?;
    let vc = wait_vc(&client, n, "vc", "dns Uninstalled and Completed", |vc| {
        plugin_phase(vc, "dns") == Some(PluginPhase::Uninstalled) && vc.phase() == phase::COMPLETED
    })
    .await?;
    ensure!(vc.status.as_ref().unwrap().plugin_progress.as_deref() == Some("1/1"));
    drop(op);
    webhook.stop().await?;
    ns.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_cluster_whose_virtual_api_is_gone_finishes() -> Result<()> {
    let (ns, client, _sweep) = setup("op-delete").await?;
    let n = ns.name();
    let webhook = MarkingWebhook::start(&client, n).await?;
    apply_plugin(&client, n, "dns", yaml_plugin(json!({}))).await?;
    // Long enough that a slow machine still creates the uninstall Job before the bound passes.
    let op = Operator::start(n, &["--uninstall-timeout-seconds", "15"]).await?;
    // A kubeconfig for an API that does not answer (nothing listens on port 1).
    let dead = "apiVersion: v1\nkind: Config\nclusters:\n- name: gone\n  cluster:\n    server: https://127.0.0.1:1\ncontexts:\n- name: gone\n  context:\n    cluster: gone\n    user: admin\ncurrent-context: gone\nusers:\n- name: admin\n  user:\n    token: x\n";
    use base64::Engine as _;
    create_vc(
        &client,
        n,
        "vc",
        phase::ALL_NODE_READY,
        json!({
            "kubeconfig": base64::engine::general_purpose::STANDARD.encode(dead),
            "pluginSet": { "enabled": [{"name": "dns"}] },
        }),
    )
    .await?;
    let job = wait_job(&client, n, "dns", "install", 1).await?;
    finish(&client, n, &job, ok()).await?;
    let vc = wait_vc(&client, n, "vc", "phase Completed", |vc| {
        vc.phase() == phase::COMPLETED
    })
    .await?;
    ensure!(vc.finalizers().iter().any(|f| f == contract::FINALIZER));
    let api: Api<VirtualCluster> = Api::namespaced(client.clone(), n);
    api.patch(
        "vc",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {contract::UNINSTALL_ON_DELETE_ANNOTATION: "true"}}})),
    )
    .await?;
    api.delete("vc", &DeleteParams::default()).await?;
    // The uninstall Job starts; its pod never finishes (the virtual API is gone), and the
    // bounded wait (15 s here) lets the VirtualCluster go anyway.
    wait_job(&client, n, "dns", "uninstall", 2).await?;
    wait_for("the VirtualCluster to be gone", STEP, || async {
        Ok(api.get_opt("vc").await?.is_none().then_some(()))
    })
    .await?;
    drop(op);
    webhook.stop().await?;
    ns.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_without_uninstall_removes_the_finalizer_at_once() -> Result<()> {
    let (ns, client, _sweep) = setup("op-delete-plain").await?;
    let n = ns.name();
    let op = Operator::start(n, &[]).await?;
    create_vc(&client, n, "vc", phase::ALL_NODE_READY, json!({})).await?;
    wait_vc(&client, n, "vc", "phase Completed", |vc| {
        vc.phase() == phase::COMPLETED
    })
    .await?;
    let api: Api<VirtualCluster> = Api::namespaced(client.clone(), n);
    api.delete("vc", &DeleteParams::default()).await?;
    wait_for(
        "the VirtualCluster to be gone",
        Duration::from_secs(20),
        || async { Ok(api.get_opt("vc").await?.is_none().then_some(())) },
    )
    .await?;
    drop(op);
    ns.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_readiness_waits_for_promoted_nodes() -> Result<()> {
    let (ns, client, _sweep) = setup("op-builtin").await?;
    let n = ns.name();
    let webhook = MarkingWebhook::start(&client, n).await?;
    apply_plugin(&client, n, "dns", yaml_plugin(json!({}))).await?;
    let op = Operator::start(n, &["--readiness", "builtin"]).await?;
    // A node in the virtual cluster, named after the test namespace so parallel runs differ.
    let virt = virtual_cluster().await?;
    let nodes: Api<Node> = Api::all(virt.clone());
    let node_name = format!("{n}-node1");
    let node: Node = serde_json::from_value(json!({"metadata": {"name": node_name}}))?;
    nodes.create(&PostParams::default(), &node).await?;

    create_vc(
        &client,
        n,
        "vc",
        phase::INITIALIZED,
        json!({
            "promoteResources": { "nodeInfos": [{"nodeName": node_name}] },
            "pluginSet": { "enabled": [{"name": "dns"}] },
        }),
    )
    .await?;
    // The probe runs beside the reconciler: its first answer follows a "probing" status.
    let vc = wait_vc(&client, n, "vc", "VirtualClusterReady=False", |vc| {
        condition(vc, condition::VIRTUAL_CLUSTER_READY)
            .is_some_and(|(s, _, m)| s == "False" && m.contains(&node_name))
    })
    .await?;
    let (_, _, message) = condition(&vc, condition::VIRTUAL_CLUSTER_READY).unwrap();
    ensure!(message.contains(&node_name), "{message}");
    ensure!(vc.phase() == phase::INITIALIZED);
    ensure!(plugin_jobs(&client, n, "dns").await?.is_empty());

    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    nodes
        .patch_status(
            &node_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "e2e", "lastHeartbeatTime": now, "lastTransitionTime": now,
            }]}})),
        )
        .await?;
    // The operator polls readiness every 10 s.
    let job = wait_job(&client, n, "dns", "install", 1).await?;
    // The status (phase AllNodeReady) is written right after the Jobs are created.
    wait_vc(&client, n, "vc", "phase AllNodeReady", |vc| {
        vc.phase() == phase::ALL_NODE_READY
    })
    .await?;
    finish(&client, n, &job, ok()).await?;
    let vc = wait_vc(&client, n, "vc", "phase Completed", |vc| {
        vc.phase() == phase::COMPLETED
    })
    .await?;
    ensure!(condition(&vc, condition::VIRTUAL_CLUSTER_READY).unwrap().0 == "True");
    let _ = nodes.delete(&node_name, &DeleteParams::default()).await;
    drop(op);
    webhook.stop().await?;
    ns.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_port_serves_probes_and_metrics() -> Result<()> {
    let (ns, client, _sweep) = setup("op-admin").await?;
    let n = ns.name();
    let webhook = MarkingWebhook::start(&client, n).await?;
    apply_plugin(&client, n, "dns", yaml_plugin(json!({}))).await?;
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let op = Operator::start(n, &["--admin-addr", &addr, "--log-format", "json"]).await?;
    wait_for("the admin port", STEP, || async {
        Ok(http_get(port, "/healthz")
            .await
            .ok()
            .filter(|(c, _)| *c == 200)
            .map(|_| ()))
    })
    .await?;
    // Live first, ready once the controller watches (or takes part in leader election): a
    // probe right after the port opens may still see 503, as a kubelet's would.
    wait_for("/readyz to answer 200", STEP, || async {
        Ok(http_get(port, "/readyz")
            .await
            .ok()
            .filter(|(c, _)| *c == 200)
            .map(|_| ()))
    })
    .await?;
    create_vc(
        &client,
        n,
        "vc",
        phase::ALL_NODE_READY,
        json!({ "pluginSet": { "enabled": [{"name": "dns"}] } }),
    )
    .await?;
    let job = wait_job(&client, n, "dns", "install", 1).await?;
    wait_for("jobs_in_flight 1", STEP, || async {
        let (_, body) = http_get(port, "/metrics").await?;
        Ok(body
            .contains("virtual_cluster_operator_jobs_in_flight 1")
            .then_some(()))
    })
    .await?;
    finish(&client, n, &job, ok()).await?;
    wait_vc(&client, n, "vc", "phase Completed", |vc| {
        vc.phase() == phase::COMPLETED
    })
    .await?;
    let body = wait_for("the install in the duration histogram", STEP, || async {
        let (_, body) = http_get(port, "/metrics").await?;
        Ok(body
            .contains("virtual_cluster_operator_plugin_install_duration_seconds_count 1")
            .then_some(body))
    })
    .await?;
    ensure!(
        body.contains("virtual_cluster_operator_reconciles_total"),
        "{body}"
    );
    ensure!(
        body.contains("virtual_cluster_operator_jobs_in_flight 0"),
        "{body}"
    );
    // JSON logs carry the virtualcluster and plugin fields.
    let log = op.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("executor job created"))
        .unwrap_or_default();
    let parsed: serde_json::Value = serde_json::from_str(line)?;
    ensure!(parsed["plugin"] == "dns", "{line}");
    ensure!(
        parsed["span"]["virtualcluster"] == format!("{n}/vc").as_str(),
        "{line}"
    );
    ensure!(
        !log.contains("certificate-authority-data"),
        "the log leaks the kubeconfig"
    );
    drop(op);
    webhook.stop().await?;
    ns.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_leader_and_the_other_takes_over() -> Result<()> {
    let (ns, client, _sweep) = setup("op-replicas").await?;
    let n = ns.name();
    let webhook = MarkingWebhook::start(&client, n).await?;
    apply_plugin(&client, n, "dns", yaml_plugin(json!({}))).await?;
    // The default lease (15 s, renewed 5 s before it runs out): a busy machine does not hand it
    // over by accident, as it can with the 3 s lease the other tests use.
    let lease = ["--lease-duration-seconds", "15"];
    let first = Operator::start(n, &lease).await?;
    let second = Operator::start(n, &lease).await?;
    create_vc(
        &client,
        n,
        "vc",
        phase::ALL_NODE_READY,
        json!({ "pluginSet": { "enabled": [{"name": "dns"}] } }),
    )
    .await?;
    let job = wait_job(&client, n, "dns", "install", 1).await?;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client.clone(), n);
    let holder = leases
        .get("virtual-cluster-operator")
        .await?
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    let identity = |op: &Operator| format!("virtual-cluster-operator-{}", op.pid().unwrap_or(0));
    let (leader, standby) = if holder == identity(&first) {
        (first, second)
    } else {
        ensure!(holder == identity(&second), "lease held by {holder:?}");
        (second, first)
    };
    ensure!(
        !standby.log_text().contains("executor job created"),
        "the standby acted"
    );
    leader.kill().await?;
    finish(&client, n, &job, ok()).await?;
    wait_vc(
        &client,
        n,
        "vc",
        "phase Completed through the standby",
        |vc| vc.phase() == phase::COMPLETED,
    )
    .await?;
    ensure!(plugin_jobs(&client, n, "dns").await?.len() == 1);
    drop(standby);
    webhook.stop().await?;
    ns.delete().await
}

/// The operator run in this process the way main.rs runs it (`server::start`): two replicas on
/// one Lease, both ready, only the holder acts; the holder stopped gracefully releases the Lease
/// at once, and the other takes over and finishes the install.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_replicas_share_one_lease_and_a_stopped_leader_releases_it() -> Result<()> {
    let (ns, client, _sweep) = setup("op-inproc").await?;
    let n = ns.name();
    let webhook = MarkingWebhook::start(&client, n).await?;
    apply_plugin(&client, n, "dns", yaml_plugin(json!({}))).await?;
    let lease = ["--lease-duration-seconds", "10"];
    let first = server::start(&Args::local(n, "replica-a", &lease)?, client.clone()).await?;
    let second = server::start(&Args::local(n, "replica-b", &lease)?, client.clone()).await?;
    for replica in [&first, &second] {
        wait_for("both replicas ready, leader or not", STEP, || async {
            let (code, _) = http_get(replica.admin_addr.port(), "/readyz").await?;
            Ok((code == 200).then_some(()))
        })
        .await?;
    }
    create_vc(
        &client,
        n,
        "vc",
        phase::ALL_NODE_READY,
        json!({ "pluginSet": { "enabled": [{"name": "dns"}] } }),
    )
    .await?;
    let job = wait_job(&client, n, "dns", "install", 1).await?;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client.clone(), n);
    let holder = || async {
        Ok::<_, anyhow::Error>(
            leases
                .get("virtual-cluster-operator")
                .await?
                .spec
                .and_then(|s| s.holder_identity),
        )
    };
    let (leader, standby) = match holder().await?.as_deref() {
        Some("replica-a") => (first, second),
        Some("replica-b") => (second, first),
        other => anyhow::bail!("lease held by {other:?}"),
    };
    let (_, metrics) = http_get(standby.admin_addr.port(), "/metrics").await?;
    ensure!(
        metrics.contains("virtual_cluster_operator_reconciles_total 0"),
        "the standby reconciled: {metrics}"
    );
    let leader_identity = leader.identity.clone();
    leader.stop().await?;
    let after_stop = holder().await?;
    ensure!(
        after_stop.as_deref() != Some(leader_identity.as_str()),
        "the stopped leader still holds the lease"
    );
    finish(&client, n, &job, ok()).await?;
    wait_vc(
        &client,
        n,
        "vc",
        "phase Completed through the standby",
        |vc| vc.phase() == phase::COMPLETED,
    )
    .await?;
    ensure!(holder().await?.as_deref() == Some(standby.identity.as_str()));
    ensure!(plugin_jobs(&client, n, "dns").await?.len() == 1);
    standby.stop().await?;
    webhook.stop().await?;
    ns.delete().await
}

/// What keeps two replicas from both taking a free Lease (kube-lease-manager takes it by a
/// server-side apply of `holderIdentity`): once one replica holds it, the other's apply of itself
/// as holder conflicts. With one field manager shared by all replicas the second apply won, and
/// both replicas acted at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lease_cannot_be_taken_by_another_replicas_apply() -> Result<()> {
    let (ns, client, _sweep) = setup("op-lease-ssa").await?;
    let n = ns.name();
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client.clone(), n);
    let take = |identity: &'static str| {
        let leases = leases.clone();
        async move {
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "spec": { "holderIdentity": identity, "leaseDurationSeconds": 10 },
            });
            leases
                .patch(
                    "virtual-cluster-operator",
                    &PatchParams::apply(&server::lease_field_manager(identity)),
                    &Patch::Apply(lease),
                )
                .await
        }
    };
    // The replicas create the Lease empty (as kube-lease-manager does) and then apply.
    let empty = serde_json::from_value(json!({
        "metadata": { "name": "virtual-cluster-operator" },
        "spec": {},
    }))?;
    leases.create(&PostParams::default(), &empty).await?;
    take("replica-a").await?;
    match take("replica-b").await {
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        other => anyhow::bail!("replica-b took a lease replica-a holds: {other:?}"),
    }
    let holder = leases
        .get("virtual-cluster-operator")
        .await?
        .spec
        .and_then(|s| s.holder_identity);
    ensure!(holder.as_deref() == Some("replica-a"), "{holder:?}");
    ns.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_outage_is_reported_backed_off_and_recovered_from() -> Result<()> {
    let (ns, client, _sweep) = setup("op-outage").await?;
    let n = ns.name();
    let dead = DeadWebhook::register(&client, n).await?;
    apply_plugin(&client, n, "dns", yaml_plugin(json!({}))).await?;
    let op = Operator::start(n, &["--backoff-seconds", "2", "--max-backoff-seconds", "8"]).await?;
    create_vc(
        &client,
        n,
        "vc",
        phase::ALL_NODE_READY,
        json!({ "pluginSet": { "enabled": [{"name": "dns"}] } }),
    )
    .await?;
    let vc = wait_vc(
        &client,
        n,
        "vc",
        "WebhookMutating=False (unavailable)",
        |vc| {
            condition(vc, condition::WEBHOOK_MUTATING)
                .is_some_and(|(s, r, _)| s == "False" && r == "WebhookUnavailable")
        },
    )
    .await?;
    let (_, _, message) = condition(&vc, condition::WEBHOOK_MUTATING).unwrap();
    ensure!(message.contains("failed calling webhook"), "{message}");
    ensure!(
        entry(&vc, "dns")
            .and_then(|e| e.message.clone())
            .is_some_and(|m| m.contains("could not call the webhook")),
        "{:?}",
        entry(&vc, "dns")
    );

    // Retries back off: the retry times the status shows move apart, up to the bound.
    let mut retries: Vec<i64> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while retries.len() < 5 {
        ensure!(
            std::time::Instant::now() < deadline,
            "only these retry times within 60 s: {retries:?}"
        );
        let vc = get_vc(&client, n, "vc").await?;
        if let Some(at) = entry(&vc, "dns").and_then(|e| e.next_retry_at.clone()) {
            let at = at.0.as_second();
            if retries.last() != Some(&at) {
                retries.push(at);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let gaps: Vec<i64> = retries.windows(2).map(|w| w[1] - w[0]).collect();
    // Planned 2, 4, 8, 8 s apart (each retry plus how long the outage has lasted, at most 8).
    ensure!(
        gaps.iter().all(|g| *g <= 8 + 3),
        "a gap exceeds the bound: {gaps:?}"
    );
    ensure!(
        gaps.last().unwrap() >= &(2 * gaps[0]),
        "the retries do not back off: {gaps:?}"
    );
    ensure!(plugin_jobs(&client, n, "dns").await?.is_empty());
    // One event for the outage, not one per retry.
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), n);
    let outage_events = events
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("WebhookUnavailable"))
        .collect::<Vec<_>>();
    ensure!(
        outage_events.len() == 1 && outage_events[0].type_.as_deref() == Some("Warning"),
        "{outage_events:?}"
    );

    // The webhook comes back; nobody touches the operator or the VirtualCluster.
    dead.stop().await?;
    let webhook = MarkingWebhook::start(&client, n).await?;
    let job = wait_for("an install job after the outage", STEP, || async {
        Ok(plugin_jobs(&client, n, "dns").await?.into_iter().next())
    })
    .await?;
    ensure!(
        job.annotations()
            .contains_key(contract::INJECTED_ANNOTATION)
    );
    finish(&client, n, &job.name_any(), ok()).await?;
    let vc = wait_vc(&client, n, "vc", "phase Completed", |vc| {
        vc.phase() == phase::COMPLETED
    })
    .await?;
    ensure!(condition(&vc, condition::WEBHOOK_MUTATING).unwrap().0 == "True");
    drop(op);
    webhook.stop().await?;
    ns.delete().await
}

/// A legal name of 253 characters (a DNS subdomain), distinct per `seed`.
fn name_of_253(seed: &str) -> String {
    let mut name = format!("{seed}-");
    while name.len() < 253 {
        name.push_str("long-name.");
    }
    name.truncate(252);
    name.push('x');
    name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_of_253_characters_install_complete_and_delete() -> Result<()> {
    let (ns, client, _sweep) = setup("op-long-names").await?;
    let n = ns.name();
    let webhook = MarkingWebhook::start(&client, n).await?;
    let vc_name = name_of_253("vc");
    let plugin = name_of_253("plugin");
    apply_plugin(&client, n, &plugin, yaml_plugin(json!({}))).await?;
    let op = Operator::start(n, &[]).await?;
    create_vc(
        &client,
        n,
        &vc_name,
        phase::ALL_NODE_READY,
        json!({ "pluginSet": { "enabled": [{"name": plugin}] } }),
    )
    .await?;
    let install = wait_job(&client, n, &plugin, "install", 1).await?;
    let jobs = plugin_jobs(&client, n, &plugin).await?;
    let job = &jobs[0];
    // Labels are label values; the names are in the annotations under the same keys.
    for (key, value) in job.labels() {
        ensure!(
            value.len() <= 63,
            "label {key} is {} characters",
            value.len()
        );
    }
    ensure!(
        job.annotations().get(contract::VIRTUAL_CLUSTER_LABEL) == Some(&vc_name)
            && job.annotations().get(contract::PLUGIN_LABEL) == Some(&plugin),
        "{:?}",
        job.annotations()
    );
    finish(&client, n, &install, ok()).await?;
    let vc = wait_vc(&client, n, &vc_name, "phase Completed", |vc| {
        vc.phase() == phase::COMPLETED
    })
    .await?;
    ensure!(entry(&vc, &plugin).is_some_and(|e| e.phase == PluginPhase::Succeeded));
    // Events about it are published (their names are bounded too).
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), n);
    wait_for("a PluginInstalled event", STEP, || async {
        let list = events.list(&Default::default()).await?;
        Ok(list
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("PluginInstalled")
                    && e.involved_object.name.as_deref() == Some(vc_name.as_str())
            })
            .then_some(()))
    })
    .await?;

    // Deleted with uninstall: the uninstall Job runs, and the VirtualCluster goes away.
    let vcs: Api<VirtualCluster> = Api::namespaced(client.clone(), n);
    vcs.patch(
        &vc_name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {
            contract::UNINSTALL_ON_DELETE_ANNOTATION: "true",
        }}})),
    )
    .await?;
    vcs.delete(&vc_name, &DeleteParams::default()).await?;
    let uninstall = wait_job(&client, n, &plugin, "uninstall", 2).await?;
    tell(&client, n, &uninstall, ok()).await?;
    wait_for("the VirtualCluster to be gone", STEP, || async {
        Ok(vcs.get_opt(&vc_name).await?.is_none().then_some(()))
    })
    .await?;
    drop(op);
    webhook.stop().await?;
    ns.delete().await
}
