//! The Helm chart (`charts/kosmos-plugins`) against the real host apiserver:
//! - `helm lint --strict` with the default values and every `ci/*-values.yaml`;
//! - `helm template` of each certificate mode and of a values file that sets every value, each
//!   rendered object accepted by a server-side dry run with strict field validation;
//! - bad values files refused by `values.schema.json`, naming the key;
//! - the chart installed for real, the operator and webhook binaries *from the images* started
//!   with the Deployments' own arguments and the chart's ServiceAccounts' tokens, carrying the
//!   demo's VirtualCluster to `Completed` (the RBAC is enough), then actions outside their job
//!   refused (the RBAC is not too much), `helm upgrade` of a value, and `helm uninstall` leaving
//!   nothing of the release but the CRDs it keeps on purpose.
//!
//! The images come from `make images` (images/out), which `make test` builds first.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kosmos_api::contract;
use kosmos_api::{PluginPhase, VirtualCluster, VirtualClusterPlugin, phase};
use kosmos_e2e::cached_tool_dirs;
use kosmos_e2e::{Cluster, TestNamespace, wait_for};
use kube::api::{
    DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
    ValidationDirective,
};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

const RELEASE: &str = "kosmos-plugins";
const OPERATOR: &str = "kosmos-plugins-operator";
const WEBHOOK: &str = "kosmos-plugins-webhook";
const VC: &str = "tenant1-cluster";

fn chart_dir() -> PathBuf {
    kosmos_e2e::repo_dir().join("charts/kosmos-plugins")
}

fn testdata() -> PathBuf {
    kosmos_e2e::e2e_dir().join("testdata/chart")
}

fn helm_binary() -> PathBuf {
    cached_tool_dirs()
        .into_iter()
        .map(|dir| dir.join("helm"))
        .find(|p| p.is_file())
        .expect("helm is not in the e2e cache; run e2e/build.sh")
}

/// Runs helm against the host cluster; returns stdout, or fails with stderr.
async fn helm(args: &[&str]) -> Result<String> {
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

async fn helm_output(args: &[&str]) -> Result<std::process::Output> {
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

/// Server-side dry run of every object, with strict field validation: an unknown or misplaced
/// field is an error, not silently dropped.
async fn dry_run_apply(client: &Client, namespace: &str, objects: &[DynamicObject]) -> Result<()> {
    let mut params = PatchParams::apply("kosmos-e2e-chart").force().dry_run();
    params.field_validation = Some(ValidationDirective::Strict);
    for object in objects {
        let types = object.types.clone().context("object without a kind")?;
        let gvk = GroupVersionKind::try_from(&types)?;
        let name = object.name_any();
        let api = kosmos_e2e::dynamic_api(client, &gvk, namespace).await?;
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
            "a stand-in CRD to be served",
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
    let chart = chart_dir().display().to_string();
    let watch = format!("watchNamespace={}", ns.name());
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
    ns.delete().await
}

#[tokio::test]
async fn bad_values_are_refused_by_the_schema_naming_the_key() -> Result<()> {
    let chart = chart_dir().display().to_string();
    for (file, names) in [
        ("bad-unknown-key.yaml", "timeoutSecond"),
        ("bad-wrong-type.yaml", "/webhook/replicas"),
        ("bad-mode.yaml", "/certificates/mode"),
        (
            "bad-secret-without-ca.yaml",
            "/certificates/secret/caBundle",
        ),
    ] {
        let path = testdata().join(file).display().to_string();
        let output =
            helm_output(&["template", RELEASE, chart.as_str(), "-f", path.as_str()]).await?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(!output.status.success(), "{file} was accepted");
        ensure!(
            stderr.contains("values don't meet the specifications of the schema")
                && stderr.contains(names),
            "{file}: the error does not name {names}:\n{stderr}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The chart installed, its components running as its ServiceAccounts

/// Unpacks the one layer of an OCI archive made by images/build.sh into `into`.
fn unpack_image(archive: &Path, into: &Path) -> Result<()> {
    ensure!(
        archive.is_file(),
        "{} is missing: run `make images` first (`make test` does)",
        archive.display()
    );
    let layout = into.join("layout");
    std::fs::create_dir_all(&layout)?;
    let untar = |file: &Path, dir: &Path, gzip: bool| -> Result<()> {
        let status = Command::new("tar")
            .arg(if gzip { "-xzf" } else { "-xf" })
            .arg(file)
            .arg("-C")
            .arg(dir)
            .status()?;
        ensure!(status.success(), "unpacking {}", file.display());
        Ok(())
    };
    untar(archive, &layout, false)?;
    let blob = |digest: &str| {
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .context("index.json without a manifest")?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(manifest_digest))?)?;
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .context("manifest without a layer")?;
    let rootfs = into.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    untar(&blob(layer), &rootfs, true)
}

fn images_dir() -> PathBuf {
    std::env::var_os("IMAGES_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| kosmos_e2e::repo_dir().join("images/out"))
}

/// The address at which the apiserver reaches this test process (see kosmos_e2e::webhook_host).
fn webhook_host() -> String {
    kosmos_e2e::webhook_host()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The container's args in the installed Deployment, with the flags in `replace` swapped.
async fn deployment_args(
    admin: &Client,
    ns: &str,
    name: &str,
    replace: &BTreeMap<&str, String>,
) -> Result<Vec<String>> {
    let deployment = Api::<Deployment>::namespaced(admin.clone(), ns)
        .get(name)
        .await?;
    let container = deployment
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.into_iter().next())
        .context("a Deployment without a container")?;
    let mut args = container.args.unwrap_or_default();
    for arg in &mut args {
        if let Some((flag, _)) = arg.split_once('=')
            && let Some(value) = replace.get(flag)
        {
            *arg = format!("{flag}={value}");
        }
    }
    for flag in replace.keys() {
        ensure!(
            args.iter().any(|a| a.starts_with(&format!("{flag}="))),
            "{name} has no {flag} argument: {args:?}"
        );
    }
    Ok(args)
}

/// A kubeconfig that authenticates with `token` only, as a pod of that ServiceAccount would.
async fn token_kubeconfig(path: &Path, token: &str) -> Result<()> {
    let admin = kosmos_e2e::kubeconfig_yaml(Cluster::Host).await?;
    let mut config: serde_yaml::Value = serde_yaml::from_str(&admin)?;
    config["users"] = serde_yaml::from_str(&format!(
        "[{{name: sa, user: {{token: {}}}}}]",
        serde_json::to_string(token)?
    ))?;
    config["contexts"][0]["context"]["user"] = "sa".into();
    std::fs::write(path, serde_yaml::to_string(&config)?)?;
    Ok(())
}

/// A process that is killed when the test ends, however it ends.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(
    binary: &Path,
    args: &[String],
    kubeconfig: &Path,
    env: &[(&str, &str)],
    log: &Path,
) -> Result<Process> {
    let log_file = std::fs::File::create(log)?;
    let child = Command::new(binary)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    Ok(Process(child))
}

fn is_forbidden<T: std::fmt::Debug>(result: &kube::Result<T>) -> bool {
    matches!(result, Err(kube::Error::Api(status)) if status.is_forbidden())
}

/// Marks the chart's CRDs as belonging to this release, as an admin adopting CRDs installed
/// before (here: by other tests on the same cluster) would; Helm refuses to take over objects it
/// did not make otherwise.
async fn adopt_crds(admin: &Client, namespace: &str) -> Result<()> {
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

#[ignore = "needs rework for the real node (issue 10): the webhook process's bootstrap certificate does not name the machine-side veth address the apiserver now calls (x509 error), and the chart's own Deployment pods now really run on the node; chart helper (issue 11) to adapt"]
#[tokio::test]
async fn the_installed_chart_runs_a_plugin_install_as_its_service_accounts_and_nothing_more()
-> Result<()> {
    let admin = kosmos_e2e::host().await?;
    let virtual_cluster = kosmos_e2e::virtual_cluster().await?;
    kosmos_e2e::install_crds(&admin).await?;
    let release_ns = TestNamespace::create(Cluster::Host, "chart").await?;
    let vc_ns = TestNamespace::create(Cluster::Host, "chart-vc").await?;
    let (rns, pns) = (release_ns.name().to_owned(), vc_ns.name().to_owned());
    let work = tempfile::tempdir()?;

    // The binaries exactly as the images ship them.
    unpack_image(
        &images_dir().join("virtual-cluster-operator.oci.tar"),
        &work.path().join("operator"),
    )?;
    unpack_image(
        &images_dir().join("plugin-webhook.oci.tar"),
        &work.path().join("webhook"),
    )?;
    let operator_bin = work
        .path()
        .join("operator/rootfs/usr/local/bin/virtual-cluster-operator");
    let webhook_bin = work
        .path()
        .join("webhook/rootfs/usr/local/bin/plugin-webhook");

    adopt_crds(&admin, &rns).await?;
    // The restricted Pod Security Standard, enforced: the ReplicaSets' pods exist only if the
    // apiserver's PodSecurity admission accepts the chart's pod templates.
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
    let chart = chart_dir().display().to_string();
    let watch = format!("watchNamespace={pns}");
    // The demo's hostPath plugin reads e2e/demo: the one folder this install allows.
    let demo = kosmos_e2e::e2e_dir().join("demo");
    let host_paths = format!("webhook.allowedHostPathPrefixes={{{}}}", demo.display());
    // Mutual TLS: the CA of the client certificate this cluster's apiservers present to webhooks.
    let client_ca = kosmos_e2e::admission_client_dir()
        .await?
        .join("admission-client-ca.crt");
    let client_ca_value = format!("webhook.clientCA={}", client_ca.display());
    helm(&[
        "install",
        RELEASE,
        chart.as_str(),
        "--namespace",
        rns.as_str(),
        "--set",
        watch.as_str(),
        "--set",
        host_paths.as_str(),
        "--set-file",
        client_ca_value.as_str(),
        "--set",
        "executor.imagePullSecrets={executor-registry}",
        "--set",
        "executor.resources.requests.cpu=10m",
    ])
    .await?;
    let configuration = format!("{WEBHOOK}-{rns}");
    let uninstall_guard = UninstallOnDrop(rns.clone());
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &rns);
    let release_pods =
        ListParams::default().labels(&format!("app.kubernetes.io/instance={RELEASE}"));
    // One operator and two webhook pods (nothing runs them here: no node).
    let admitted = wait_for(
        "the chart's pods to be admitted",
        Duration::from_secs(60),
        || {
            let (pods, release_pods) = (pods.clone(), release_pods.clone());
            async move { Ok((pods.list(&release_pods).await?.items.len() == 3).then_some(())) }
        },
    )
    .await;
    if let Err(e) = admitted {
        let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(admin.clone(), &rns)
            .list(&ListParams::default())
            .await?;
        let messages: Vec<String> = events.items.into_iter().filter_map(|e| e.message).collect();
        bail!("{e:#}; events: {messages:#?}");
    }

    // Tokens of the chart's ServiceAccounts: the components act as exactly these.
    let operator_token = kosmos_e2e::service_account_token(&admin, &rns, OPERATOR).await?;
    let webhook_token = kosmos_e2e::service_account_token(&admin, &rns, WEBHOOK).await?;
    let operator_kubeconfig = work.path().join("operator.kubeconfig");
    let webhook_kubeconfig = work.path().join("webhook.kubeconfig");
    token_kubeconfig(&operator_kubeconfig, &operator_token).await?;
    token_kubeconfig(&webhook_kubeconfig, &webhook_token).await?;
    let as_operator = kosmos_e2e::client_with_token(Cluster::Host, &operator_token).await?;
    let as_webhook = kosmos_e2e::client_with_token(Cluster::Host, &webhook_token).await?;

    // The webhook with the Deployment's arguments (bootstrap mode), listening here instead of in
    // a pod: no node runs pods on this cluster.
    let (https, admin_port) = (free_port(), free_port());
    let tls = work.path().join("tls");
    let webhook_args = deployment_args(
        &admin,
        &rns,
        WEBHOOK,
        &BTreeMap::from([
            ("--listen", format!("{}:{https}", webhook_host())),
            ("--admin-listen", format!("127.0.0.1:{admin_port}")),
            ("--tls-cert", tls.join("tls.crt").display().to_string()),
            ("--tls-key", tls.join("tls.key").display().to_string()),
            // The chart mounts its ConfigMap there; here the same file, from the host.
            ("--client-ca", client_ca.display().to_string()),
        ]),
    )
    .await?;
    let mounted = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(admin.clone(), &rns)
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
    ensure!(
        webhook_args.contains(&format!(
            "--operator-user=system:serviceaccount:{rns}:{OPERATOR}"
        )),
        "the chart does not name the operator's ServiceAccount: {webhook_args:?}"
    );
    let mut webhook = start(
        &webhook_bin,
        &webhook_args,
        &webhook_kubeconfig,
        &[("RUST_LOG", "info")],
        &work.path().join("webhook.log"),
    )?;
    let readyz = format!("http://127.0.0.1:{admin_port}/readyz");
    let ready = wait_for("the webhook to be ready", Duration::from_secs(60), || {
        let readyz = readyz.clone();
        async move {
            let ok = tokio::process::Command::new("curl")
                .args(["-fsS", "--max-time", "2", &readyz])
                .output()
                .await
                .is_ok_and(|o| o.status.success());
            Ok(ok.then_some(()))
        }
    })
    .await;
    if let Err(e) = ready {
        bail!(
            "{e:#}\nwebhook log:\n{}",
            std::fs::read_to_string(work.path().join("webhook.log"))?
        );
    }

    // Bootstrap mode, as the webhook's ServiceAccount: it filled the chart's Secret and set the
    // caBundle of the chart's registration.
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &rns);
    let bootstrap = secrets.get(&format!("{WEBHOOK}-bootstrap")).await?;
    ensure!(
        bootstrap
            .data
            .as_ref()
            .is_some_and(|d| d.contains_key("tls.crt")),
        "the bootstrap Secret was not filled"
    );
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());
    let ca_bundle = wait_for("the caBundle", Duration::from_secs(30), || {
        let mwcs = mwcs.clone();
        let name = configuration.clone();
        async move {
            let mwc = mwcs.get(&name).await?;
            Ok(mwc
                .webhooks
                .unwrap_or_default()
                .into_iter()
                .next()
                .and_then(|w| w.client_config.ca_bundle))
        }
    })
    .await?;
    // Point the chart's registration (its rules, selectors, policies, the caBundle the webhook
    // set) at the process: the Service has no pods behind it here. Undone before the upgrade.
    let chart_client_config = serde_json::to_value(
        &mwcs.get(&configuration).await?.webhooks.unwrap_or_default()[0].client_config,
    )?;
    ensure!(
        chart_client_config["service"]["name"] == WEBHOOK,
        "{chart_client_config}"
    );
    let url = format!("https://{}:{https}/mutate", webhook_host());
    mwcs.patch(
        &configuration,
        &PatchParams::default(),
        &Patch::<()>::Json(serde_json::from_value(json!([
            {"op": "replace", "path": "/webhooks/0/clientConfig", "value": {
                "url": url,
                "caBundle": base64::engine::general_purpose::STANDARD.encode(&ca_bundle.0),
            }},
        ]))?),
    )
    .await?;

    // The walk-through's claim, filled with kubectl cp; the executor pods run on the node.
    let manifest = demo.join("claims/plugin-store-ubuntu-statefulset-0/test.yaml");
    kosmos_e2e::fill_claim(
        &admin,
        &pns,
        "plugin-store-ubuntu-statefulset-0",
        &[(manifest.as_path(), "test.yaml")],
    )
    .await?;

    // The operator with the Deployment's arguments, leader election on the chart's Lease.
    let operator_args = deployment_args(
        &admin,
        &rns,
        OPERATOR,
        &BTreeMap::from([
            ("--admin-addr", format!("127.0.0.1:{}", free_port())),
            ("--backoff-seconds", "1".to_owned()),
            ("--max-backoff-seconds", "2".to_owned()),
        ]),
    )
    .await?;
    let mut operator = start(
        &operator_bin,
        &operator_args,
        &operator_kubeconfig,
        &[
            ("POD_NAMESPACE", rns.as_str()),
            ("POD_NAME", "operator-0"),
            ("RUST_LOG", "info"),
        ],
        &work.path().join("operator.log"),
    )?;

    // Both still run: a flag the binary does not know (the chart out of step) ends it at once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (name, process, log) in [
        ("operator", &mut operator, "operator.log"),
        ("webhook", &mut webhook, "webhook.log"),
    ] {
        if let Some(status) = process.0.try_wait()? {
            bail!(
                "the {name} exited ({status}):\n{}",
                std::fs::read_to_string(work.path().join(log))?
            );
        }
    }

    // The demo's plugins and VirtualCluster.
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
                "{e:#}\nstatus: {}\noperator log:\n{}\nwebhook log:\n{}",
                serde_json::to_string_pretty(&vc.status)?,
                std::fs::read_to_string(work.path().join("operator.log"))?,
                std::fs::read_to_string(work.path().join("webhook.log"))?
            );
        }
    };
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
    // The webhook filled the chart's empty key Secret; every counted Job's mark verifies with it.
    let key_secret_name = format!("{WEBHOOK}-mark-key");
    let key_data: BTreeMap<String, Vec<u8>> = secrets
        .get(&key_secret_name)
        .await?
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    let keys = kosmos_api::mark::keys_of(&key_data)
        .map_err(|e| anyhow::anyhow!("{key_secret_name}: {e}"))?;
    for plugin in &status.plugins {
        let job = jobs
            .get(plugin.job_name.as_deref().context("no job name")?)
            .await?;
        ensure!(
            kosmos_api::mark::verify(&keys, &job).is_ok(),
            "{} lacks the webhook's mark: {:?}",
            job.name_any(),
            kosmos_api::mark::verify(&keys, &job)
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
    }
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(virtual_cluster, "demo")
        .get("hello")
        .await
        .context("the hello plugin's ConfigMap in the virtual cluster")?;
    // The operator led through the chart's Lease.
    let lease = Api::<Lease>::namespaced(admin.clone(), &rns)
        .get(OPERATOR)
        .await?;
    ensure!(
        lease.spec.and_then(|s| s.holder_identity).as_deref() == Some("operator-0"),
        "the chart's Lease is not held by the operator"
    );

    // The registration covers UPDATE: nobody but the operator adds the executor label to a Job.
    let plain: Job = serde_json::from_value(json!({
        "metadata": {"name": "plain"},
        "spec": {"suspend": true, "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "x", "image": "registry.invalid/x"}]}}},
    }))?;
    jobs.create(&PostParams::default(), &plain).await?;
    let relabel = jobs
        .patch(
            "plain",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {contract::EXECUTOR_LABEL: "true"}}})),
        )
        .await;
    ensure!(
        matches!(&relabel, Err(kube::Error::Api(s)) if s.message.contains("only the operator may change")),
        "adding the executor label by a patch was not denied: {relabel:?}"
    );
    // The operator may delete the executors' kubeconfig Secret (when a kubeconfig is refused).
    let scratch: Secret =
        serde_json::from_value(json!({"metadata": {"name": "scratch-kubeconfig"}}))?;
    Api::<Secret>::namespaced(admin.clone(), &pns)
        .create(&PostParams::default(), &scratch)
        .await?;
    Api::<Secret>::namespaced(as_operator.clone(), &pns)
        .delete("scratch-kubeconfig", &Default::default())
        .await
        .context("the operator may not delete a Secret of its namespace")?;
    // The key: the operator reads it, nobody else of theirs changes it.
    let key_update = Api::<Secret>::namespaced(as_operator.clone(), &rns)
        .patch(
            &key_secret_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await;
    ensure!(
        is_forbidden(&key_update),
        "the operator changed the mark key Secret: {key_update:?}"
    );
    let webhook_reads_other = Api::<Secret>::namespaced(as_webhook.clone(), &rns)
        .list(&ListParams::default())
        .await;
    ensure!(
        is_forbidden(&webhook_reads_other),
        "the webhook listed the release namespace's Secrets: {webhook_reads_other:?}"
    );

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

    // helm upgrade to a changed value: applied, and what the components wrote survives.
    mwcs.patch(
        &configuration,
        &PatchParams::default(),
        &Patch::<()>::Json(serde_json::from_value(json!([
            {"op": "replace", "path": "/webhooks/0/clientConfig", "value": chart_client_config},
        ]))?),
    )
    .await?;
    helm(&[
        "upgrade",
        RELEASE,
        chart.as_str(),
        "--namespace",
        rns.as_str(),
        "--reuse-values",
        "--set",
        "webhook.timeoutSeconds=17",
    ])
    .await?;
    let mwc = mwcs.get(&configuration).await?;
    let hook = mwc
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
        hook.client_config.ca_bundle.is_some(),
        "upgrade dropped the caBundle"
    );
    let bootstrap = secrets.get(&format!("{WEBHOOK}-bootstrap")).await?;
    ensure!(
        bootstrap
            .data
            .as_ref()
            .is_some_and(|d| d.contains_key("tls.crt")),
        "upgrade emptied the bootstrap Secret"
    );
    let key_after = secrets
        .get(&key_secret_name)
        .await?
        .data
        .unwrap_or_default();
    ensure!(
        key_after.get(kosmos_api::mark::KEY_DATA).map(|k| &k.0)
            == key_data.get(kosmos_api::mark::KEY_DATA),
        "upgrade changed or emptied the mark key"
    );

    // helm uninstall: nothing of the release is left but the CRDs it keeps.
    std::mem::forget(uninstall_guard);
    helm(&[
        "uninstall",
        RELEASE,
        "--namespace",
        rns.as_str(),
        "--wait",
        "--timeout",
        "60s",
    ])
    .await?;
    let selector = ListParams::default().labels(&format!("app.kubernetes.io/instance={RELEASE}"));
    ensure!(
        secrets.list(&selector).await?.items.is_empty(),
        "a Secret of the release is left"
    );
    ensure!(
        Api::<Lease>::namespaced(admin.clone(), &rns)
            .list(&selector)
            .await?
            .items
            .is_empty(),
        "the Lease is left"
    );
    ensure!(
        Api::<ServiceAccount>::namespaced(admin.clone(), &rns)
            .list(&selector)
            .await?
            .items
            .is_empty(),
        "a ServiceAccount is left"
    );
    ensure!(
        mwcs.get_opt(&configuration).await?.is_none(),
        "the registration is left"
    );
    for kind in [
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    ] {
        let (group, version) = match kind {
            "Deployment" => ("apps", "v1"),
            "Service" => ("", "v1"),
            "PodDisruptionBudget" => ("policy", "v1"),
            _ => ("rbac.authorization.k8s.io", "v1"),
        };
        let gvk = GroupVersionKind::gvk(group, version, kind);
        for ns in [rns.as_str(), pns.as_str()] {
            let api = kosmos_e2e::dynamic_api(&admin, &gvk, ns).await?;
            let left: Vec<String> = api
                .list(&selector)
                .await?
                .items
                .iter()
                .map(|o| o.name_any())
                .collect();
            // ClusterRoles of other installs on a shared cluster carry the same instance label.
            let ours: Vec<&String> = left.iter().filter(|n| n.starts_with(RELEASE)).collect();
            ensure!(ours.is_empty(), "{kind} left after uninstall: {ours:?}");
        }
    }
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    ensure!(
        crds.get_opt("virtualclusterplugins.kosmos.io")
            .await?
            .is_some(),
        "uninstall deleted the plugin CRD"
    );

    vc_ns.delete().await?;
    release_ns.delete().await
}

/// Uninstalls the release when the test fails half-way.
struct UninstallOnDrop(String);

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
