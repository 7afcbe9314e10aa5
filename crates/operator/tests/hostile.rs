//! What a tenant who may write a VirtualCluster must not get from the operator: a command run
//! by it, a file of its host sent away, or an executor that reads its own pod's files; and what
//! someone who may create Jobs in its namespace must not get: a plugin held up by a Job that
//! squats the name of the operator's next Job.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use base64::Engine as _;
use common::*;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Secret};
use kosmos_api::contract::Action;
use kosmos_api::{PluginPhase, VirtualCluster, VirtualClusterPlugin, condition, contract, phase};
use kosmos_e2e::{Cluster, wait_for};
use kube::Api;
use serde_json::json;

/// The virtual cluster's own kubeconfig with its user replaced by `user`.
async fn kubeconfig_with_user(user: serde_json::Value) -> Result<String> {
    let text = kosmos_e2e::kubeconfig_yaml(Cluster::Virtual).await?;
    let mut doc: serde_json::Value = serde_yaml::from_str(&text)?;
    doc["users"][0]["user"] = user;
    Ok(serde_yaml::to_string(&doc)?)
}

/// Waits for KubeconfigAvailable=False with reason KubeconfigRefused, and returns its message.
async fn refused(client: &kube::Client, ns: &str, vc: &str) -> Result<String> {
    let vc = wait_vc(
        client,
        ns,
        vc,
        "KubeconfigAvailable=False (refused)",
        |vc| {
            condition(vc, condition::KUBECONFIG_AVAILABLE)
                .is_some_and(|(s, r, _)| s == "False" && r == "KubeconfigRefused")
        },
    )
    .await?;
    Ok(condition(&vc, condition::KUBECONFIG_AVAILABLE).unwrap().2)
}

/// Nothing the refused kubeconfig could have led to exists: no Secret for executors, no Job,
/// the phase unchanged, and a Warning event that names the field.
async fn nothing_follows(
    client: &kube::Client,
    ns: &str,
    vc: &str,
    plugin: &str,
    field: &str,
) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let copy = secrets
        .get_opt(&contract::kubeconfig_secret_name(vc))
        .await?;
    ensure!(
        copy.is_none(),
        "the refused kubeconfig was copied for executors"
    );
    ensure!(plugin_jobs(client, ns, plugin).await?.is_empty());
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    wait_for(
        "a KubeconfigRefused event naming the field",
        STEP,
        || async {
            let list = events.list(&Default::default()).await?;
            Ok(list
                .items
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("KubeconfigRefused")
                        && e.type_.as_deref() == Some("Warning")
                        && e.involved_object.name.as_deref() == Some(vc)
                        && e.message.as_deref().is_some_and(|m| m.contains(field))
                })
                .then_some(()))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_kubeconfig_runs_nothing_and_the_condition_says_why() -> Result<()> {
    let (ns, client, _sweep) = setup("op-exec-kubeconfig").await?;
    let n = ns.name();
    let dir = tempfile::tempdir()?;
    let marker = dir.path().join("the-operator-ran-a-command");
    // A valid ExecCredential, so a client that runs it goes on to use it.
    let script = format!(
        "touch '{}'; echo '{{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":{{\"token\":\"x\"}}}}'",
        marker.display()
    );
    let kubeconfig = kubeconfig_with_user(json!({
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": "/bin/sh",
            "args": ["-c", script],
            "interactiveMode": "Never",
        }
    }))
    .await?;
    apply_plugin(&client, n, "dns", yaml_plugin(json!({}))).await?;
    let op = Operator::start(n, &["--readiness", "builtin"]).await?;
    create_vc(
        &client,
        n,
        "vc",
        phase::INITIALIZED,
        json!({
            "kubeconfig": base64::engine::general_purpose::STANDARD.encode(&kubeconfig),
            "pluginSet": { "enabled": [{"name": "dns"}] },
        }),
    )
    .await?;
    let message = refused(&client, n, "vc").await?;
    ensure!(
        message.contains("spec.kubeconfig") && message.contains("users[0].user.exec"),
        "{message}"
    );
    nothing_follows(&client, n, "vc", "dns", "users[0].user.exec").await?;
    // Long enough for a probe (every 10 s, first at once) to have run the command.
    tokio::time::sleep(Duration::from_secs(12)).await;
    ensure!(
        !marker.exists(),
        "the operator ran the kubeconfig's exec command"
    );
    let vc: VirtualCluster = get_vc(&client, n, "vc").await?;
    ensure!(vc.phase() == phase::INITIALIZED, "{}", vc.phase());
    let (ready, _, why) = condition(&vc, condition::VIRTUAL_CLUSTER_READY).unwrap();
    ensure!(ready == "False" && why.contains("kubeconfig"), "{why}");
    ensure!(
        !op.log_text().contains(&script),
        "the log repeats the kubeconfig"
    );

    // Fixed by its owner: the same VirtualCluster goes on with an inline kubeconfig.
    let good = kosmos_e2e::kubeconfig_yaml(Cluster::Virtual).await?;
    let vcs: Api<VirtualCluster> = Api::namespaced(client.clone(), n);
    vcs.patch(
        "vc",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"spec": {
            "kubeconfig": base64::engine::general_purpose::STANDARD.encode(good),
        }})),
    )
    .await?;
    wait_vc(&client, n, "vc", "KubeconfigAvailable=True", |vc| {
        condition(vc, condition::KUBECONFIG_AVAILABLE).is_some_and(|(s, _, _)| s == "True")
    })
    .await?;
    drop(op);
    ns.delete().await
}

/// A listener that records whether anything connected to it.
async fn tripwire() -> Result<(u16, Arc<AtomicBool>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let touched = Arc::new(AtomicBool::new(false));
    let flag = touched.clone();
    tokio::spawn(async move {
        while let Ok((_, _)) = listener.accept().await {
            flag.store(true, Ordering::SeqCst);
        }
    });
    Ok((port, touched))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_kubeconfig_sends_nothing_anywhere() -> Result<()> {
    let (ns, client, _sweep) = setup("op-tokenfile-kubeconfig").await?;
    let n = ns.name();
    // Stands for the operator's own ServiceAccount token: a file of its host.
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "the-operator-s-own-token")?;
    let (port, touched) = tripwire().await?;
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\n\
         clusters:\n- name: elsewhere\n  cluster:\n    server: https://127.0.0.1:{port}\n\
         users:\n- name: thief\n  user:\n    tokenFile: {}\n\
         contexts:\n- name: steal\n  context: {{cluster: elsewhere, user: thief}}\n\
         current-context: steal\n",
        token_file.display()
    );
    // Where Kosmos publishes it, not spec.kubeconfig: the same rule for both.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), n);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": { "name": contract::kosmos_admin_secret_name("vc") },
        "stringData": { contract::KUBECONFIG_SECRET_KEY: kubeconfig },
    }))?;
    secrets
        .create(&Default::default(), &secret)
        .await
        .context("creating the admin secret")?;
    apply_plugin(&client, n, "dns", yaml_plugin(json!({}))).await?;
    let op = Operator::start(n, &["--readiness", "builtin"]).await?;
    create_vc(
        &client,
        n,
        "vc",
        phase::INITIALIZED,
        // No spec.kubeconfig: the operator reads the admin Secret.
        json!({ "kubeconfig": "", "pluginSet": { "enabled": [{"name": "dns"}] } }),
    )
    .await?;
    let message = refused(&client, n, "vc").await?;
    ensure!(
        message.contains(&contract::kosmos_admin_secret_name("vc")),
        "{message}"
    );
    ensure!(message.contains("users[0].user.tokenFile"), "{message}");
    nothing_follows(&client, n, "vc", "dns", "users[0].user.tokenFile").await?;
    tokio::time::sleep(Duration::from_secs(12)).await;
    ensure!(
        !touched.load(Ordering::SeqCst),
        "the operator connected to the kubeconfig's server"
    );
    ensure!(
        !op.log_text().contains("the-operator-s-own-token"),
        "the log holds the token"
    );
    drop(op);
    ns.delete().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_squatting_the_next_names_are_reported_and_passed_by() -> Result<()> {
    let (ns, client, _sweep) = setup("op-squat").await?;
    let n = ns.name();
    let webhook = MarkingWebhook::start(&client, n).await?;
    apply_plugin(&client, n, "dns", yaml_plugin(json!({}))).await?;
    let plugin = Api::<VirtualClusterPlugin>::namespaced(client.clone(), n)
        .get("dns")
        .await?;
    let hash = contract::spec_hash(&plugin.spec);
    // Someone who may create Jobs takes the names of attempts 1 and 2 first: no owner
    // reference, no labels (the webhook refuses executor labels from anyone but the operator).
    let jobs: Api<Job> = Api::namespaced(client.clone(), n);
    let squatted: Vec<String> = (1..=2)
        .map(|attempt| contract::job_name("vc", "dns", &hash, Action::Install, attempt))
        .collect();
    for name in &squatted {
        let squatter: Job = serde_json::from_value(json!({
            "metadata": { "name": name },
            "spec": { "suspend": true, "template": { "spec": {
                "restartPolicy": "Never",
                "containers": [{ "name": "x", "image": "registry.invalid/x" }],
            }}},
        }))?;
        jobs.create(&Default::default(), &squatter).await?;
    }
    let op = Operator::start(n, &[]).await?;
    create_vc(
        &client,
        n,
        "vc",
        phase::ALL_NODE_READY,
        json!({ "pluginSet": { "enabled": [{"name": "dns"}] } }),
    )
    .await
    .context("creating the virtual cluster")?;
    // The operator moves past both names to attempt 3's.
    let job = wait_job(&client, n, "dns", "install", 3).await?;
    ensure!(!squatted.contains(&job), "{job} is a squatted name");
    let vc = wait_vc(
        &client,
        n,
        "vc",
        "a status that names the squatted jobs",
        |vc| {
            entry(vc, "dns")
                .and_then(|e| e.message.as_deref())
                .is_some_and(|m| squatted.iter().all(|s| m.contains(s.as_str())))
        },
    )
    .await?;
    let message = entry(&vc, "dns")
        .unwrap()
        .message
        .clone()
        .unwrap_or_default();
    ensure!(message.contains(&job), "{message}");
    let events: Api<Event> = Api::namespaced(client.clone(), n);
    wait_for("a JobNameTaken event per squatted name", STEP, || async {
        let list = events.list(&Default::default()).await?;
        Ok(squatted
            .iter()
            .all(|s| {
                list.items.iter().any(|e| {
                    e.reason.as_deref() == Some("JobNameTaken")
                        && e.type_.as_deref() == Some("Warning")
                        && e.message.as_deref().is_some_and(|m| m.contains(s.as_str()))
                })
            })
            .then_some(()))
    })
    .await?;
    // The squatters are left alone; the plugin goes on with the Job of its own.
    for name in &squatted {
        let squatter = jobs.get(name).await?;
        ensure!(squatter.metadata.deletion_timestamp.is_none(), "{name}");
    }
    finish(&client, n, &job, ok()).await?;
    let vc = wait_vc(&client, n, "vc", "phase Completed", |vc| {
        vc.phase() == phase::COMPLETED
    })
    .await?;
    ensure!(plugin_phase(&vc, "dns") == Some(PluginPhase::Succeeded));
    ensure!(
        !op.log_text().contains("reconcile failed"),
        "the operator spun on the taken names:\n{}",
        op.log_text()
    );
    drop(op);
    webhook.stop().await?;
    ns.delete().await
}

/// The route the UPDATE registration closes, taken where it is missing (the stand-in webhook is
/// registered for CREATE only, as old registrations were): a Job created without the executor
/// labels, with the VirtualCluster as owner and a real mark copied from another Job, gets the
/// labels by a patch and "succeeds". Its mark does not verify, so it never counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_a_copied_mark_never_counts() -> Result<()> {
    let (ns, client, _sweep) = setup("op-forged-mark").await?;
    let n = ns.name();
    let webhook = MarkingWebhook::start(&client, n).await?;
    apply_plugin(&client, n, "dns", yaml_plugin(json!({}))).await?;
    let plugin = Api::<VirtualClusterPlugin>::namespaced(client.clone(), n)
        .get("dns")
        .await?;
    let hash = contract::spec_hash(&plugin.spec);
    create_vc(
        &client,
        n,
        "vc",
        phase::ALL_NODE_READY,
        json!({ "pluginSet": { "enabled": [{"name": "dns"}] } }),
    )
    .await?;
    let vc = get_vc(&client, n, "vc").await?;
    let uid = vc.metadata.uid.clone().context("no uid")?;

    // A genuine mark, as anyone who may read Jobs sees on the webhook's Jobs: here of attempt 9.
    let key = mark_key(&client, n).await?;
    let id =
        |attempt| contract::ExecutorJobId::new("vc", "dns", Action::Install, &hash, attempt, "");
    let owner = json!([{ "apiVersion": "kosmos.io/v1alpha1", "kind": "VirtualCluster",
        "name": "vc", "uid": uid, "controller": true, "blockOwnerDeletion": false }]);
    let mut genuine = id(9).bare_job(n, 600, "registry.invalid/x");
    genuine.metadata.owner_references = Some(serde_json::from_value(owner.clone())?);
    let copied = kosmos_api::mark::sign(&key, &genuine);

    let forged = id(1);
    let mut annotations = forged.annotations();
    annotations.insert(contract::INJECTED_ANNOTATION.to_owned(), copied);
    let name = forged.job_name();
    let mut job = json!({
        "metadata": { "name": name, "annotations": annotations, "ownerReferences": owner },
        "spec": { "backoffLimit": 0, "template": { "spec": {
            "restartPolicy": "Never",
            "containers": [{ "name": contract::EXECUTOR_CONTAINER, "image": "registry.invalid/x",
                             "command": ["true"] }],
        }}},
    });
    // A pod the test's node runs and ends when told (kosmos_e2e::finish_pod).
    let runnable: json_patch::Patch =
        serde_json::from_value(kosmos_e2e::obedient_job_patch(&job)?)?;
    json_patch::patch(&mut job, &runnable)?;
    let job: Job = serde_json::from_value(job)?;
    let jobs: Api<Job> = Api::namespaced(client.clone(), n);
    jobs.create(&Default::default(), &job).await?;
    jobs.patch(
        &name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({ "metadata": { "labels": forged.labels() } })),
    )
    .await
    .context("adding the executor labels by a patch")?;
    finish(&client, n, &name, ok()).await?;

    let op = Operator::start(n, &[]).await?;
    // Not counted: the plugin goes on under attempt 2's name.
    let second = wait_job(&client, n, "dns", "install", 2).await?;
    ensure!(second != name);
    let vc = wait_vc(
        &client,
        n,
        "vc",
        "JobsVerified=False naming the Job",
        |vc| {
            condition(vc, condition::JOBS_VERIFIED)
                .is_some_and(|(s, r, m)| s == "False" && r == "MarkInvalid" && m.contains(&name))
        },
    )
    .await?;
    ensure!(
        vc.phase() != phase::COMPLETED,
        "a forged Job completed the VirtualCluster"
    );
    ensure!(plugin_phase(&vc, "dns") != Some(PluginPhase::Succeeded));
    let events: Api<Event> = Api::namespaced(client.clone(), n);
    wait_for("a JobMarkInvalid event naming the Job", STEP, || async {
        let list = events.list(&Default::default()).await?;
        Ok(list
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("JobMarkInvalid")
                    && e.type_.as_deref() == Some("Warning")
                    && e.message.as_deref().is_some_and(|m| m.contains(&name))
            })
            .then_some(()))
    })
    .await?;
    // The forged Job is left for the admin; the genuine one installs.
    ensure!(jobs.get(&name).await?.metadata.deletion_timestamp.is_none());
    finish(&client, n, &second, ok()).await?;
    let vc = wait_vc(&client, n, "vc", "phase Completed", |vc| {
        vc.phase() == phase::COMPLETED
    })
    .await?;
    let entry = entry(&vc, "dns").context("no status entry")?;
    ensure!(
        entry.job_name.as_deref() == Some(second.as_str()),
        "{entry:?}"
    );
    drop(op);
    webhook.stop().await?;
    ns.delete().await
}
