//! What the chart tests share (chart.rs, chart_cert_manager.rs, chart_secret.rs): helm against the host cluster,
//! the images on the node, the release's rollout, the webhook reached through its Service and
//! serving a trusted certificate from every replica, and what `helm uninstall` leaves.
//!
//! The files are separate test binaries on purpose: each installs release `kosmos-plugins`,
//! which owns the cluster-wide plugin CRDs, so two installs must never run at once (cargo runs
//! test binaries one after another).

#![allow(clippy::unwrap_used)] // a panic is how a test fails
#![allow(dead_code)] // each test binary uses part of it

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kosmos_api::contract;
use kosmos_e2e::{Cluster, cached_tool_dirs, wait_for};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

pub const RELEASE: &str = "kosmos-plugins";
pub const OPERATOR: &str = "kosmos-plugins-operator";
pub const WEBHOOK: &str = "kosmos-plugins-webhook";
pub const VC: &str = "tenant1-cluster";

pub fn chart_dir() -> PathBuf {
    kosmos_e2e::repo_dir().join("charts/kosmos-plugins")
}

pub fn helm_binary() -> PathBuf {
    cached_tool_dirs()
        .into_iter()
        .map(|dir| dir.join("helm"))
        .find(|p| p.is_file())
        .expect("helm is not in the e2e cache; run e2e/build.sh")
}

/// Runs helm against the host cluster; returns stdout, or fails with stderr.
pub async fn helm(args: &[&str]) -> Result<String> {
    let output = helm_output(args).await?;
    if !output.status.success() {
        bail!(
            "helm {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

pub async fn helm_output(args: &[&str]) -> Result<std::process::Output> {
    let kubeconfig = kosmos_e2e::kubeconfig_path(Cluster::Host).await?;
    let home = std::env::temp_dir().join("kosmos-e2e-helm");
    tokio::process::Command::new(helm_binary())
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running helm {}", args.join(" ")))
}

// ---------------------------------------------------------------------------------------------
// The chart installed on the node: its own pods, from the images `make images` built

/// The archives `make images` wrote (`IMAGES_OUT` moves them, as for images/build.sh).
pub fn images_dir() -> PathBuf {
    std::env::var_os("IMAGES_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| kosmos_e2e::repo_dir().join("images/out"))
}

/// Puts the operator, webhook and executor images of `make images` on the node. On the local
/// cluster `e2e/cluster.sh import-images` imports every archive that changed since it was last
/// imported (`cluster.sh up` did that when the cluster started; the archives may be newer). On
/// a cluster of your own, load `images/out/*.oci.tar` into its nodes first (e.g.
/// `kind load image-archive`).
pub async fn images_on_the_node() -> Result<()> {
    for name in [
        "virtual-cluster-operator",
        "plugin-webhook",
        "plugin-executor",
    ] {
        let archive = images_dir().join(format!("{name}.oci.tar"));
        ensure!(
            archive.is_file(),
            "{} is missing: run `make images` first (`make test` does)",
            archive.display()
        );
    }
    if kosmos_e2e::uses_own_cluster() {
        return Ok(());
    }
    let output = tokio::process::Command::new(kosmos_e2e::e2e_dir().join("cluster.sh"))
        .arg("import-images")
        .stdin(Stdio::null())
        .output()
        .await
        .context("running e2e/cluster.sh import-images")?;
    ensure!(
        output.status.success(),
        "e2e/cluster.sh import-images failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// The data of Secret `name`, empty when it has none.
pub async fn secret_data(secrets: &Api<Secret>, name: &str) -> Result<BTreeMap<String, Vec<u8>>> {
    let secret = secrets
        .get(name)
        .await
        .with_context(|| format!("reading Secret {name}"))?;
    Ok(secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect())
}

pub fn is_forbidden<T: std::fmt::Debug>(result: &kube::Result<T>) -> bool {
    matches!(result, Err(kube::Error::Api(status)) if status.is_forbidden())
}

/// Marks the chart's CRDs as belonging to this release, as an admin adopting CRDs installed
/// before (here: by other tests on the same cluster) would; Helm refuses to take over objects it
/// did not make otherwise.
pub async fn adopt_crds(admin: &Client, namespace: &str) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for name in [
        "virtualclusters.kosmos.io",
        "virtualclusterplugins.kosmos.io",
    ] {
        let patch = json!({"metadata": {
            "labels": {"app.kubernetes.io/managed-by": "Helm"},
            "annotations": {"meta.helm.sh/release-name": RELEASE, "meta.helm.sh/release-namespace": namespace},
        }});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("adopting CRD {name}"))?;
    }
    Ok(())
}

/// What the release's pods, their events and logs say: the message of a failed wait.
pub async fn release_report(namespace: &str) -> String {
    let selector = format!("app.kubernetes.io/instance={RELEASE}");
    let mut report = String::new();
    for args in [
        vec![
            "-n",
            namespace,
            "get",
            "deployments,pods,pdb,endpointslices",
            "-o",
            "wide",
        ],
        vec![
            "-n",
            namespace,
            "get",
            "events",
            "--sort-by",
            ".lastTimestamp",
        ],
        vec![
            "-n",
            namespace,
            "logs",
            "-l",
            selector.as_str(),
            "--all-containers",
            "--prefix",
            "--tail",
            "40",
        ],
    ] {
        let text = kosmos_e2e::kubectl(Cluster::Host, &args)
            .await
            .unwrap_or_else(|e| format!("{e:#}"));
        report.push_str(&format!("\n$ kubectl {}\n{text}", args.join(" ")));
    }
    report
}

/// Waits until Deployment `namespace/name` runs `replicas` pods of its current template, all
/// ready (their readiness probes pass) and no old one left.
pub async fn wait_for_rollout(
    admin: &Client,
    namespace: &str,
    name: &str,
    replicas: i32,
) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), namespace);
    let rolled_out = wait_for(
        &format!("deployment {namespace}/{name} to run {replicas} ready pods"),
        Duration::from_secs(180),
        || {
            let deployments = deployments.clone();
            async move {
                let deployment = deployments.get(name).await?;
                let generation = deployment.metadata.generation.unwrap_or_default();
                let status = deployment.status.unwrap_or_default();
                let done = status.observed_generation.unwrap_or_default() >= generation
                    && status.replicas == Some(replicas)
                    && status.updated_replicas == Some(replicas)
                    && status.ready_replicas == Some(replicas)
                    && status.available_replicas == Some(replicas);
                Ok(done.then_some(()))
            }
        },
    )
    .await;
    if let Err(e) = rolled_out {
        bail!("{e:#}{}", release_report(namespace).await);
    }
    Ok(())
}

/// The running pods of one component of the release.
pub async fn component_pods(admin: &Client, namespace: &str, component: &str) -> Result<Vec<Pod>> {
    let selector =
        format!("app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component={component}");
    let pods = Api::<Pod>::namespaced(admin.clone(), namespace)
        .list(&ListParams::default().labels(&selector))
        .await?;
    Ok(pods
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect())
}

/// The webhook, called by the apiserver through the chart's registration and Service, answers:
/// an executor Job it cannot read is denied by the webhook itself (a webhook the apiserver could
/// not reach or did not trust would give "failed calling webhook" instead). A dry run, so
/// nothing is created.
pub async fn webhook_answers_through_its_service(
    admin: &Client,
    release_namespace: &str,
    namespace: &str,
) -> Result<()> {
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "not-an-executor", "labels": {(contract::EXECUTOR_LABEL): "true"}},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "x", "image": "registry.invalid/x"}]}}},
    }))?;
    let jobs: Api<Job> = Api::namespaced(admin.clone(), namespace);
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    // A refused connection means kube-proxy has not programmed the Service yet (a moment after
    // the pods are ready): asked again. A hang or a TLS failure is not.
    let mut created = jobs.create(&dry_run, &job).await;
    for _ in 0..30 {
        if !matches!(&created, Err(kube::Error::Api(s)) if s.message.contains("connection refused"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        created = jobs.create(&dry_run, &job).await;
    }
    let denied_by_webhook = |status: &kube::core::Status| {
        status.message.contains("executor-jobs.plugin.kosmos.io")
            && status.message.contains("denied the request")
    };
    match created {
        Err(kube::Error::Api(status)) if denied_by_webhook(&status) => {}
        other => bail!(
            "a Job with the executor label but no contract was not denied by the webhook: {other:?}{}",
            release_report(release_namespace).await
        ),
    }

    // Registered for UPDATE too: a plain Job cannot be patched into an executor Job by anyone
    // but the operator (an admin here).
    let plain: Job = serde_json::from_value(json!({
        "metadata": {"name": "plain-job"},
        "spec": {"suspend": true, "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "x", "image": "registry.invalid/x"}]}}},
    }))?;
    jobs.create(&PostParams::default(), &plain).await?;
    let patch = json!({"metadata": {"labels": {(contract::EXECUTOR_LABEL): "true"}}});
    let patched = jobs
        .patch("plain-job", &PatchParams::default(), &Patch::Merge(&patch))
        .await;
    jobs.delete("plain-job", &DeleteParams::background())
        .await?;
    match patched {
        Err(kube::Error::Api(status)) if denied_by_webhook(&status) => Ok(()),
        other => bail!(
            "a plain Job patched into an executor Job was not denied by the webhook: {other:?}{}",
            release_report(release_namespace).await
        ),
    }
}

/// A client certificate for the TLS check: the one the apiserver presents to webhooks.
pub struct ClientCertificate {
    pub cert_pem: String,
    pub key_pem: String,
}

/// From a pod on the node, `curl` each webhook pod and the Service's ClusterIP by the Service's
/// DNS name, trusting only `ca_bundle` (what the registration gives the apiserver): every replica
/// serves a certificate of the mode in use, valid for the name the apiserver calls. With
/// `client`, the webhook must require mutual TLS: each target refuses curl without a client
/// certificate and answers it with `client`'s. The pod satisfies the restricted Pod Security
/// Standard of the release namespace.
pub async fn every_replica_serves_a_trusted_certificate(
    admin: &Client,
    namespace: &str,
    ca_bundle: &[u8],
    client: Option<&ClientCertificate>,
) -> Result<()> {
    let service = Api::<Service>::namespaced(admin.clone(), namespace)
        .get(WEBHOOK)
        .await?;
    let cluster_ip = service
        .spec
        .and_then(|s| s.cluster_ip)
        .context("the webhook Service has no ClusterIP")?;
    let mut targets = vec![format!("{cluster_ip}:443")];
    for pod in component_pods(admin, namespace, "webhook").await? {
        let ip = pod
            .status
            .and_then(|s| s.pod_ip)
            .context("a webhook pod without an IP")?;
        targets.push(format!("{ip}:8443"));
    }
    ensure!(targets.len() == 3, "expected two webhook pods: {targets:?}");
    let configmaps: Api<ConfigMap> = Api::namespaced(admin.clone(), namespace);
    let ca: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "served-ca"},
        "data": {"ca.crt": String::from_utf8(ca_bundle.to_vec())?},
    }))?;
    configmaps
        .patch(
            "served-ca",
            &PatchParams::apply(kosmos_e2e::FIELD_MANAGER).force(),
            &Patch::Apply(&ca),
        )
        .await?;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), namespace);
    if let Some(client) = client {
        let cert: Secret = serde_json::from_value(json!({
            "metadata": {"name": "served-client"},
            "stringData": {"tls.crt": client.cert_pem, "tls.key": client.key_pem},
        }))?;
        secrets
            .patch(
                "served-client",
                &PatchParams::apply(kosmos_e2e::FIELD_MANAGER).force(),
                &Patch::Apply(&cert),
            )
            .await?;
    }
    // GET on the admission path: 405 from our server is the answer; curl fails (exit 60, 51)
    // before any HTTP when the certificate is not trusted or does not name the host. Refused
    // connections (exit 7) are retried for a while: kube-proxy programs the ClusterIP a moment
    // after the pods are ready (until then the Service rejects connections). With a client
    // certificate in /client, each target is first asked without one, which must fail in TLS
    // (any exit but 0 and 7; the server's alert ends the handshake), then with it.
    let script = r#"set -u
host="$1"; shift
ask() {
  tries=0
  while :; do
    rc=0
    code="$(curl -sS --max-time 10 --cacert /ca/ca.crt "$@" --resolve "${host}:${port}:${target%:*}" \
      -o /dev/null -w '%{http_code}' "https://${host}:${port}/mutate")" || rc=$?
    tries=$((tries + 1))
    [ "${rc}" = 7 ] && [ "${tries}" -lt 30 ] || break
    sleep 1
  done
}
for target in "$@"; do
  port="${target##*:}"
  if [ -f /client/tls.crt ]; then
    ask
    [ "${rc}" != 0 ] && [ "${rc}" != 7 ] || { echo "${target} served a client without a certificate (curl exit ${rc}, HTTP ${code})"; exit 1; }
    echo "${target} refused without a client certificate (curl exit ${rc})"
    ask --cert /client/tls.crt --key /client/tls.key
  else
    ask
  fi
  [ "${rc}" = 0 ] || { echo "${target} failed (curl exit ${rc})"; exit 1; }
  echo "${target} ${code}"
done"#;
    let mut command = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        script.to_owned(),
        "check".to_owned(),
        format!("{WEBHOOK}.{namespace}.svc"),
    ];
    command.extend(targets.iter().cloned());
    let name = format!("check-tls-{}", std::process::id());
    let mut mounts = vec![json!({"name": "ca", "mountPath": "/ca", "readOnly": true})];
    let mut volumes = vec![json!({"name": "ca", "configMap": {"name": "served-ca"}})];
    if client.is_some() {
        mounts.push(json!({"name": "client", "mountPath": "/client", "readOnly": true}));
        volumes.push(json!({"name": "client", "secret": {"secretName": "served-client"}}));
    }
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 0,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532,
                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "curl",
                "image": kosmos_e2e::executor_image(),
                "imagePullPolicy": "IfNotPresent",
                "command": command,
                "securityContext": {"allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": mounts,
            }],
            "volumes": volumes,
        },
    }))?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), namespace);
    pods.create(&PostParams::default(), &pod).await?;
    let finished = wait_for(
        "the certificate check pod to finish",
        Duration::from_secs(120),
        || {
            let (pods, name) = (pods.clone(), name.clone());
            async move {
                let pod = pods.get(&name).await?;
                let status = pod.status.unwrap_or_default();
                let phase = status.phase.clone().unwrap_or_default();
                Ok(matches!(phase.as_str(), "Succeeded" | "Failed").then_some((phase, status)))
            }
        },
    )
    .await?;
    let logs = pods.logs(&name, &Default::default()).await?;
    pods.delete(&name, &Default::default()).await?;
    configmaps.delete("served-ca", &Default::default()).await?;
    if client.is_some() {
        secrets.delete("served-client", &Default::default()).await?;
    }
    let (phase, status) = finished;
    ensure!(
        phase == "Succeeded",
        "the webhook's TLS check failed:\n{logs}\n{:?}",
        status.container_statuses
    );
    for target in &targets {
        ensure!(
            logs.lines().any(|l| l == format!("{target} 405")),
            "{target} did not answer with the admission server's 405:\n{logs}"
        );
        if client.is_some() {
            ensure!(
                logs.lines()
                    .any(|l| l
                        .starts_with(&format!("{target} refused without a client certificate"))),
                "{target} was not checked without a client certificate:\n{logs}"
            );
        }
    }
    Ok(())
}

/// Every object that outlived `helm uninstall`: anything in the release namespace but what
/// Kubernetes puts in every namespace (the `default` ServiceAccount, the `kube-root-ca.crt`
/// ConfigMap, events), and anything elsewhere (the watched namespace, cluster-scoped) that
/// Helm recorded as the release's, but the CRDs it keeps. Every listable resource type is
/// asked, so a kind the chart starts making later is covered too.
pub async fn release_leftovers(rns: &str, watched: &[&str]) -> Result<Vec<String>> {
    let mut left = Vec::new();
    for namespaced in [true, false] {
        let types = kosmos_e2e::kubectl(
            Cluster::Host,
            &[
                "api-resources",
                "--verbs=list",
                &format!("--namespaced={namespaced}"),
                "-o",
                "name",
            ],
        )
        .await?;
        let types: Vec<&str> = types
            .lines()
            .filter(|t| !t.is_empty() && !t.starts_with("events"))
            .collect();
        let mut args = vec!["get", "--ignore-not-found", "-o", "json"];
        let joined = types.join(",");
        args.push(&joined);
        let scopes: Vec<Option<&str>> = if namespaced {
            std::iter::once(rns)
                .chain(watched.iter().copied())
                .map(Some)
                .collect()
        } else {
            vec![None]
        };
        for scope in scopes {
            let mut args = args.clone();
            if let Some(ns) = scope {
                args.extend(["-n", ns]);
            }
            let list: serde_json::Value =
                serde_json::from_str(&kosmos_e2e::kubectl(Cluster::Host, &args).await?)?;
            for item in list["items"].as_array().into_iter().flatten() {
                let kind = item["kind"].as_str().unwrap_or_default();
                let name = item["metadata"]["name"].as_str().unwrap_or_default();
                let ours = item["metadata"]["annotations"]["meta.helm.sh/release-namespace"] == rns;
                let stray = match scope {
                    Some(ns) if ns == rns => !matches!(
                        (kind, name),
                        ("ServiceAccount", "default") | ("ConfigMap", "kube-root-ca.crt")
                    ),
                    _ => ours && kind != "CustomResourceDefinition",
                };
                if stray {
                    let mut entry = format!("{kind} {}/{name}", scope.unwrap_or(""));
                    // Why it is still there while being deleted.
                    if let Some(since) = item["metadata"]["deletionTimestamp"].as_str() {
                        entry.push_str(&format!(
                            " (deleting since {since}, finalizers {})",
                            item["metadata"]["finalizers"]
                        ));
                    }
                    left.push(entry);
                }
            }
        }
    }
    Ok(left)
}

/// Uninstalls the release when the test fails half-way.
pub struct UninstallOnDrop(pub String);

impl Drop for UninstallOnDrop {
    fn drop(&mut self) {
        let namespace = self.0.clone();
        kosmos_e2e::cleanup_on_drop(
            "the chart's release",
            Duration::from_secs(90),
            move || async move {
                helm(&[
                    "uninstall",
                    RELEASE,
                    "--namespace",
                    namespace.as_str(),
                    "--ignore-not-found",
                ])
                .await
                .map(|_| ())
            },
        );
    }
}

impl UninstallOnDrop {
    /// `helm uninstall --wait`, then waits until nothing of the release is left but `kept`
    /// (`Kind namespace/name`, as [`release_leftovers`] names them; the CRDs are always kept)
    /// in the release namespace, `watched` or cluster-wide, and the webhook registration
    /// `configuration` is gone. Consumes the guard: the release is uninstalled either way.
    pub async fn uninstall_leaves_only(
        self,
        watched: &[&str],
        kept: &[String],
        configuration: &str,
        admin: &Client,
    ) -> Result<()> {
        let rns = self.0.clone();
        std::mem::forget(self);
        let uninstalled = helm(&[
            "uninstall",
            RELEASE,
            "--namespace",
            rns.as_str(),
            "--wait",
            "--timeout",
            "120s",
        ])
        .await;
        if let Err(e) = uninstalled {
            // What helm was still waiting for, and why (a finalizer, a pod still terminating).
            let pods =
                kosmos_e2e::kubectl(Cluster::Host, &["get", "pods", "-n", &rns, "-o", "wide"])
                    .await
                    .unwrap_or_else(|e| format!("{e:#}"));
            let left = release_leftovers(&rns, watched).await;
            bail!("{e:#}\nleft: {left:#?}\npods in {rns}:\n{pods}");
        }
        let rns = rns.as_str();
        let left = wait_for(
            "the release's objects to be gone",
            Duration::from_secs(90),
            || async move {
                let left = release_leftovers(rns, watched).await?;
                Ok((left == kept).then_some(()))
            },
        )
        .await;
        if let Err(e) = left {
            bail!(
                "{e:#}: left {:#?}, want only {kept:#?}",
                release_leftovers(rns, watched).await?
            );
        }
        let mwcs: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());
        ensure!(
            mwcs.get_opt(configuration).await?.is_none(),
            "the registration {configuration} is left after helm uninstall"
        );
        Ok(())
    }
}
