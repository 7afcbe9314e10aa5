//! The webhook against the real host kube-apiserver of `e2e/cluster.sh` (or your cluster through
//! `KUBECONFIG`): registered with a URL client config and its caBundle, it mutates an executor
//! Job created as the operator's service account (and the apiserver's validation accepts the
//! result), denies the same Job from anyone else, and the Pod the real job controller creates
//! carries the volumes, mounts, environment and command.
//!
//! Each test scopes its MutatingWebhookConfiguration to its own namespace, so tests (and other
//! engineers' tests creating executor Jobs) never see each other's webhook.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kosmos_api::contract::{self, Action};
use kosmos_api::{VirtualCluster, VirtualClusterPlugin};
use kosmos_e2e::{Cluster, Identity, TestNamespace, wait_for};
use kosmos_webhook::mutation::EXECUTOR_SCRIPT;
use kosmos_webhook::server::{self, ServeArgs};
use kosmos_webhook::tls;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client, ResourceExt};

const VC: &str = "tenant1-cluster";
const OPERATOR_NAMESPACE: &str = "kosmos-system";
const OPERATOR_ACCOUNT: &str = "virtual-cluster-operator";

/// The address at which the apiserver reaches this test process (see kosmos_e2e::webhook_host).
fn webhook_host() -> String {
    kosmos_e2e::webhook_host()
}

fn operator() -> Identity {
    // system:masters stands in for the operator's RBAC (creating Jobs); the webhook sees the
    // service account's user name, which is what it checks.
    Identity::service_account(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT).with_group("system:masters")
}

/// A webhook running in this process, registered for one namespace; unregistered on drop.
struct Registered {
    running: server::Running,
    name: String,
    client: Client,
    /// ca.crt, tls.crt and tls.key of the webhook's serving certificate.
    certs: tempfile::TempDir,
    unregistered: bool,
}

impl Registered {
    async fn start(client: &Client, namespace: &str) -> Self {
        Self::start_with(client, namespace, |args| args).await
    }

    /// Like [`Registered::start`], with the webhook's settings changed by `adjust`.
    async fn start_with(
        client: &Client,
        namespace: &str,
        adjust: impl FnOnce(ServeArgs) -> ServeArgs,
    ) -> Self {
        let certs_dir = tempfile::tempdir().unwrap();
        let host = webhook_host();
        let certs = tls::generate(&["localhost".into(), host.clone()], 1).unwrap();
        tls::write(&certs, certs_dir.path()).unwrap();
        let args = ServeArgs {
            operator_user: operator().user,
            watch_namespace: vec![namespace.to_owned()],
            ..ServeArgs::local(
                certs_dir.path().join("tls.crt"),
                certs_dir.path().join("tls.key"),
            )
        };
        let args = ServeArgs {
            listen: kosmos_e2e::webhook_listen_addr(),
            ..args
        };
        let running = server::start(&adjust(args), client.clone()).await.unwrap();
        let state = running.state.clone();
        wait_for(
            "the webhook's caches to sync",
            Duration::from_secs(30),
            || {
                let synced = state.is_synced();
                async move { Ok(synced.then_some(())) }
            },
        )
        .await
        .unwrap();

        let name = format!("plugin-webhook-{namespace}");
        // UPDATE too: the webhook denies contract changes on UPDATE (see the tests below).
        let config = kosmos_e2e::executor_webhook_configuration(
            &name,
            namespace,
            &format!("https://{host}:{}/mutate", running.addr.port()),
            &certs.ca_pem,
            &["CREATE", "UPDATE"],
        );
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .create(&PostParams::default(), &config)
            .await
            .unwrap();
        Self {
            running,
            name,
            client: client.clone(),
            certs: certs_dir,
            unregistered: false,
        }
    }

    async fn unregister(mut self) {
        let _ = Api::<MutatingWebhookConfiguration>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::default())
            .await;
        self.running.shutdown(Duration::from_secs(1));
        self.unregistered = true;
    }
}

impl Drop for Registered {
    /// A failed test still removes its configuration.
    fn drop(&mut self) {
        if !self.unregistered {
            kosmos_e2e::delete_webhook_configuration_on_drop(&self.name);
        }
    }
}

const SEED_PLUGIN: &str = "metadata:\n  name: apiserver-network-proxy\nspec:\n  successStateCommand: kubectl get ns kube-system\n  pluginSources:\n    yaml:\n      path:\n        pvPath: plugin-store-ubuntu-statefulset-0:/pv\n";

async fn setup(namespace: &str, client: &Client) -> VirtualClusterPlugin {
    setup_with(namespace, client, SEED_PLUGIN).await
}

async fn setup_with(namespace: &str, client: &Client, plugin_yaml: &str) -> VirtualClusterPlugin {
    kosmos_e2e::install_crds(client).await.unwrap();
    let plugin = common::plugin_from_yaml(namespace, plugin_yaml);
    let plugin = Api::<VirtualClusterPlugin>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &plugin)
        .await
        .unwrap();
    let vc = common::virtual_cluster(namespace, VC);
    Api::<VirtualCluster>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &vc)
        .await
        .unwrap();
    let kubeconfig = kosmos_e2e::kubeconfig_yaml(Cluster::Virtual).await.unwrap();
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(contract::kubeconfig_secret_name(VC)),
            ..Default::default()
        },
        string_data: Some([(contract::KUBECONFIG_SECRET_KEY.to_owned(), kubeconfig)].into()),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    plugin
}

/// The apiserver picks up a new webhook configuration within a moment; dry-run creates show when
/// it has (the answer comes back mutated), without leaving anything behind.
async fn wait_until_webhook_active(client: &Client, namespace: &str, job: &Job) {
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    wait_for(
        "the apiserver to call the webhook",
        Duration::from_secs(30),
        || {
            let (jobs, dry) = (jobs.clone(), dry.clone());
            async move {
                Ok(jobs
                    .create(&dry, job)
                    .await
                    .ok()
                    .filter(|j| j.annotations().contains_key(contract::INJECTED_ANNOTATION))
                    .map(|_| ()))
            }
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn executor_jobs_are_mutated_for_the_operator_and_denied_for_others() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let admin = kosmos_e2e::host().await.unwrap();
    let ns = TestNamespace::create(Cluster::Host, "webhook-e2e")
        .await
        .unwrap();
    let plugin = setup(ns.name(), &admin).await;
    let webhook = Registered::start(&admin, ns.name()).await;

    let as_operator = kosmos_e2e::client_as(Cluster::Host, &operator())
        .await
        .unwrap();
    let job = common::bare_job(ns.name(), VC, &plugin, Action::Install);
    wait_until_webhook_active(&as_operator, ns.name(), &job).await;

    // Created as the operator: mutated, and accepted by the apiserver's own validation.
    let jobs: Api<Job> = Api::namespaced(as_operator.clone(), ns.name());
    let created = jobs.create(&PostParams::default(), &job).await.unwrap();
    let mark = created.annotations()[contract::INJECTED_ANNOTATION].clone();
    assert_eq!(mark.len(), 16);
    let pod_spec = created
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    assert_eq!(
        pod_spec.containers[0].command.as_deref().unwrap(),
        ["/bin/sh", "-c", EXECUTOR_SCRIPT]
    );

    // The same Job from someone else (even an admin) is denied, saying why.
    let mallory = Identity::user("mallory").with_group("system:masters");
    let as_mallory = kosmos_e2e::client_as(Cluster::Host, &mallory)
        .await
        .unwrap();
    let mut stolen = job.clone();
    stolen.metadata.name = Some(format!("{}-copy", job.name_any()));
    let error = Api::<Job>::namespaced(as_mallory.clone(), ns.name())
        .create(&PostParams::default(), &stolen)
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("only system:serviceaccount:kosmos-system:virtual-cluster-operator")
            && message.contains("not mallory"),
        "{message}"
    );

    // ... nor can they turn a plain Job into one the operator counts by a later patch.
    let mut forged = stolen.clone();
    forged.metadata.name = Some("forged-job".into());
    forged.metadata.labels = None;
    forged.metadata.annotations = None;
    forged.spec.as_mut().unwrap().template.metadata = None;
    let mallory_jobs = Api::<Job>::namespaced(as_mallory.clone(), ns.name());
    mallory_jobs
        .create(&PostParams::default(), &forged)
        .await
        .unwrap();
    let patch = serde_json::json!({"metadata": {
        "labels": {contract::EXECUTOR_LABEL: "true"},
        "annotations": {contract::INJECTED_ANNOTATION: mark.clone()},
    }});
    let error = mallory_jobs
        .patch(
            "forged-job",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("only the operator may change"),
        "{error}"
    );

    // A Job without the executor label is not the webhook's business.
    let mut plain = stolen.clone();
    plain.metadata.name = Some("plain-job".into());
    plain.metadata.labels = None;
    plain.metadata.annotations = None;
    // The apiserver copies template labels to a Job without labels: drop them there too.
    plain.spec.as_mut().unwrap().template.metadata = None;
    let plain = Api::<Job>::namespaced(as_mallory, ns.name())
        .create(&PostParams::default(), &plain)
        .await
        .unwrap();
    assert!(
        !plain
            .annotations()
            .contains_key(contract::INJECTED_ANNOTATION)
    );

    // The real job controller makes the Pod from the mutated template.
    let pod = kosmos_e2e::wait_for_job_pod(
        &admin,
        ns.name(),
        &created.name_any(),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let spec = pod.spec.unwrap();
    let container = &spec.containers[0];
    assert_eq!(
        container.command.as_deref().unwrap(),
        ["/bin/sh", "-c", EXECUTOR_SCRIPT]
    );
    let env: std::collections::BTreeMap<_, _> = container
        .env
        .clone()
        .unwrap()
        .into_iter()
        .map(|e| (e.name, e.value.unwrap_or_default()))
        .collect();
    assert_eq!(env["YAML_PATH"], "/pv");
    assert_eq!(env["KUBECONFIG"], "/kosmos/kubeconfig/kubeconfig");
    assert_eq!(env["SUCCESS_STATE_COMMAND"], "kubectl get ns kube-system");
    let volumes = spec.volumes.unwrap();
    let claim = volumes
        .iter()
        .find_map(|v| v.persistent_volume_claim.as_ref())
        .unwrap();
    assert_eq!(claim.claim_name, "plugin-store-ubuntu-statefulset-0");
    assert_eq!(claim.read_only, Some(true));
    let secret = volumes.iter().find_map(|v| v.secret.as_ref()).unwrap();
    assert_eq!(
        secret.secret_name.as_deref(),
        Some(contract::kubeconfig_secret_name(VC).as_str())
    );
    let mounts = container.volume_mounts.clone().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m.mount_path == "/pv" && m.read_only == Some(true))
    );
    assert!(mounts.iter().any(|m| m.mount_path == "/kosmos/kubeconfig"));
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert_eq!(
        pod.metadata.annotations.unwrap()[contract::INJECTED_ANNOTATION],
        mark
    );
    // Our webhook answered for this namespace. (Another plugin webhook registered for every
    // namespace, e.g. by `make demo` in the same cluster, may have mutated or denied first; it
    // injects the same thing, so ours then finds its own mark.)
    let metrics = webhook.running.state.metrics.encode();
    assert!(
        metrics.contains("decision=\"mutated\"") || metrics.contains("decision=\"unchanged\""),
        "{metrics}"
    );

    webhook.unregister().await;
    ns.delete().await.unwrap();
}

const HOST_PATH_PLUGIN: &str = "metadata:\n  name: node-files\nspec:\n  pluginSources:\n    yaml:\n      path:\n        hostPath:\n          path: /srv/kosmos-e2e/manifests\n    chart:\n      storage:\n        pvPath: plugin-store:/charts/demo\n      valuesFile:\n        hostPath:\n          path: /srv/kosmos-e2e/values.yaml\n";

#[tokio::test]
async fn host_path_is_closed_by_default_and_typed_and_recursively_read_only_when_allowed() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let admin = kosmos_e2e::host().await.unwrap();
    let ns = TestNamespace::create(Cluster::Host, "webhook-e2e-hostpath")
        .await
        .unwrap();
    let plugin = setup_with(ns.name(), &admin, HOST_PATH_PLUGIN).await;
    let as_operator = kosmos_e2e::client_as(Cluster::Host, &operator())
        .await
        .unwrap();
    let jobs: Api<Job> = Api::namespaced(as_operator.clone(), ns.name());
    let job = common::bare_job(ns.name(), VC, &plugin, Action::Install);

    // Default settings: no hostPath at all, even from the operator.
    let closed = Registered::start(&admin, ns.name()).await;
    let message = wait_for(
        "the webhook to deny the hostPath Job",
        Duration::from_secs(30),
        || {
            let (jobs, job) = (jobs.clone(), job.clone());
            async move {
                Ok(match jobs.create(&PostParams::default(), &job).await {
                    Err(e) if e.to_string().contains("allows no hostPath") => Some(e.to_string()),
                    Err(_) => None,
                    Ok(created) => panic!("created a hostPath Job by default: {created:?}"),
                })
            }
        },
    )
    .await
    .unwrap();
    assert!(
        message.contains("spec.pluginSources.chart.valuesFile.hostPath"),
        "{message}"
    );
    closed.unregister().await;

    // The admin lists a folder: accepted by the apiserver's validation, typed so the kubelet
    // creates nothing, and recursively read-only in the Pod the job controller makes.
    let open = Registered::start_with(&admin, ns.name(), |args| ServeArgs {
        allowed_host_path_prefixes: vec!["/srv/kosmos-e2e".into()],
        ..args
    })
    .await;
    wait_until_webhook_active(&as_operator, ns.name(), &job).await;
    let created = jobs.create(&PostParams::default(), &job).await.unwrap();
    let pod = kosmos_e2e::wait_for_job_pod(
        &admin,
        ns.name(),
        &created.name_any(),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let spec = pod.spec.unwrap();
    let types: std::collections::BTreeMap<_, _> = spec
        .volumes
        .unwrap()
        .into_iter()
        .filter_map(|v| v.host_path)
        .map(|h| (h.path, h.type_.unwrap_or_default()))
        .collect();
    assert_eq!(
        types,
        [
            (
                "/srv/kosmos-e2e/manifests".to_owned(),
                "Directory".to_owned()
            ),
            ("/srv/kosmos-e2e/values.yaml".to_owned(), "File".to_owned()),
        ]
        .into()
    );
    let recursive: std::collections::BTreeMap<_, _> = spec.containers[0]
        .volume_mounts
        .clone()
        .unwrap()
        .into_iter()
        .map(|m| (m.name, m.recursive_read_only))
        .collect();
    for name in ["kosmos-host-0", "kosmos-host-1", "kosmos-pv-0"] {
        assert_eq!(
            recursive[name].as_deref(),
            Some("IfPossible"),
            "{name}: {recursive:?}"
        );
    }
    open.unregister().await;
    ns.delete().await.unwrap();
}

/// One POST of a plain review straight to the webhook, as a pod that reaches its port would
/// send it, presenting `client` (certificate and key PEM) if given. Ok(answer) only if the
/// webhook answered.
async fn post_directly(
    webhook: &Registered,
    client: Option<(String, String)>,
) -> Result<String, String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let ca = std::fs::read(webhook.certs.path().join("ca.crt")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                rustls_pemfile::certs(&mut cert.as_bytes())
                    .map(Result::unwrap)
                    .collect(),
                rustls_pemfile::private_key(&mut key.as_bytes())
                    .unwrap()
                    .unwrap(),
            )
            .unwrap(),
    };
    let body = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"direct","kind":{"group":"","version":"v1","kind":"ConfigMap"},"resource":{"group":"","version":"v1","resource":"configmaps"},"operation":"CREATE","userInfo":{"username":"system:serviceaccount:kosmos-system:virtual-cluster-operator"},"object":{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"}}}}"#;
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(webhook.running.addr)
            .await
            .map_err(|e| e.to_string())?;
        let mut stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(
                rustls::pki_types::ServerName::try_from(webhook_host()).unwrap(),
                tcp,
            )
            .await
            .map_err(|e| e.to_string())?;
        let head = format!(
            "POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        stream.write_all(body).await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        // TLS 1.3 reports a refused client certificate only on the first read.
        stream
            .read_to_end(&mut out)
            .await
            .map_err(|e| e.to_string())?;
        let answer = String::from_utf8_lossy(&out).into_owned();
        if answer.starts_with("HTTP/1.1 200") {
            Ok(answer)
        } else {
            Err(format!("no answer: {answer:?}"))
        }
    };
    tokio::time::timeout(Duration::from_secs(20), attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

#[tokio::test]
async fn with_mutual_tls_only_the_apiserver_is_answered() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let admin = kosmos_e2e::host().await.unwrap();
    let pki = kosmos_e2e::admission_client_dir().await.unwrap();
    let ns = TestNamespace::create(Cluster::Host, "webhook-e2e-mtls")
        .await
        .unwrap();
    let plugin = setup(ns.name(), &admin).await;
    let webhook = Registered::start_with(&admin, ns.name(), |args| ServeArgs {
        client_ca: Some(pki.join("admission-client-ca.crt")),
        ..args
    })
    .await;

    // The apiserver presents its admission client certificate: executor Jobs are mutated.
    let as_operator = kosmos_e2e::client_as(Cluster::Host, &operator())
        .await
        .unwrap();
    let job = common::bare_job(ns.name(), VC, &plugin, Action::Install);
    wait_until_webhook_active(&as_operator, ns.name(), &job).await;
    let created = Api::<Job>::namespaced(as_operator, ns.name())
        .create(&PostParams::default(), &job)
        .await
        .unwrap();
    assert!(
        created
            .annotations()
            .contains_key(contract::INJECTED_ANNOTATION)
    );

    // Anyone else who reaches the port, claiming to be the operator, gets no answer: not
    // without a certificate, not with one from another CA.
    let refused = post_directly(&webhook, None).await;
    assert!(
        refused.is_err(),
        "answered without a client certificate: {refused:?}"
    );
    let other = tls::generate(&["mallory".into()], 1).unwrap();
    let refused = post_directly(&webhook, Some((other.cert_pem, other.key_pem))).await;
    assert!(
        refused.is_err(),
        "answered a certificate of another CA: {refused:?}"
    );
    // The apiserver's own credentials are what makes the difference.
    let read = |name: &str| std::fs::read_to_string(pki.join(name)).unwrap();
    let answer = post_directly(
        &webhook,
        Some((read("admission-client.crt"), read("admission-client.key"))),
    )
    .await
    .unwrap();
    assert!(answer.contains("\"allowed\":true"), "{answer}");

    webhook.unregister().await;
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn a_job_for_a_changed_plugin_spec_is_denied_naming_the_annotation() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let admin = kosmos_e2e::host().await.unwrap();
    let ns = TestNamespace::create(Cluster::Host, "webhook-e2e-stale")
        .await
        .unwrap();
    let plugin = setup(ns.name(), &admin).await;
    let webhook = Registered::start(&admin, ns.name()).await;
    let as_operator = kosmos_e2e::client_as(Cluster::Host, &operator())
        .await
        .unwrap();
    wait_until_webhook_active(
        &as_operator,
        ns.name(),
        &common::bare_job(ns.name(), VC, &plugin, Action::Install),
    )
    .await;

    let mut old = plugin.clone();
    old.spec.success_state_command = Some("true".into());
    let job = common::bare_job(ns.name(), VC, &old, Action::Install);
    let error = Api::<Job>::namespaced(as_operator, ns.name())
        .create(&PostParams::default(), &job)
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains(contract::SPEC_HASH_ANNOTATION) && message.contains("older spec"),
        "{message}"
    );
    webhook.unregister().await;
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn a_mutated_job_really_installs_into_the_virtual_cluster() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let admin = kosmos_e2e::host().await.unwrap();
    let ns = TestNamespace::create(Cluster::Host, "webhook-e2e-install")
        .await
        .unwrap();
    let target = TestNamespace::create(Cluster::Virtual, "webhook-e2e-target")
        .await
        .unwrap();
    let plugin_yaml = format!(
        "metadata:\n  name: apiserver-network-proxy\nspec:\n  timeoutSeconds: 60\n  successStateCommand: kubectl get configmap proxy-settings -n {t}\n  pluginSources:\n    yaml:\n      namespace: {t}\n      path:\n        pvPath: plugin-store-ubuntu-statefulset-0:/pv\n",
        t = target.name()
    );
    let plugin = setup_with(ns.name(), &admin, &plugin_yaml).await;
    let webhook = Registered::start(&admin, ns.name()).await;
    let as_operator = kosmos_e2e::client_as(Cluster::Host, &operator())
        .await
        .unwrap();
    let mut job = common::bare_job(ns.name(), VC, &plugin, Action::Install);
    // The image the operator would name: the executor image on the node.
    job.spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .image = Some(kosmos_e2e::executor_image());
    wait_until_webhook_active(&as_operator, ns.name(), &job).await;

    // What the seed's walk-through copies into the claim with `kubectl cp`.
    let scratch = tempfile::tempdir().unwrap();
    let manifest = scratch.path().join("test.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: proxy-settings\ndata:\n  mode: grpc\n",
    )
    .unwrap();
    kosmos_e2e::fill_claim(
        &admin,
        ns.name(),
        "plugin-store-ubuntu-statefulset-0",
        &[(manifest.as_path(), "test.yaml")],
    )
    .await
    .unwrap();

    let created = Api::<Job>::namespaced(as_operator, ns.name())
        .create(&PostParams::default(), &job)
        .await
        .unwrap();
    // The kubelet runs the mutated pod: the executor image, the claim, the kubeconfig Secret.
    kosmos_e2e::wait_for_job_condition(
        &admin,
        ns.name(),
        &created.name_any(),
        "Complete",
        Duration::from_secs(120),
    )
    .await
    .unwrap();
    let pods = kosmos_e2e::job_pods(&admin, ns.name(), &created.name_any())
        .await
        .unwrap();
    let messages: Vec<String> = pods
        .iter()
        .filter_map(kosmos_e2e::termination_message)
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m.trim() == "plugin apiserver-network-proxy installed"),
        "{messages:?}"
    );
    let virtual_client = kosmos_e2e::virtual_cluster().await.unwrap();
    let cm =
        Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(virtual_client, target.name())
            .get("proxy-settings")
            .await
            .unwrap();
    assert_eq!(cm.data.unwrap()["mode"], "grpc");

    webhook.unregister().await;
    target.delete().await.unwrap();
    ns.delete().await.unwrap();
}

/// What a plugin author's `plugin-webhook render` prints is what the real webhook, called by the
/// real apiserver, makes of the operator's Job: every plugin of docs/examples, for a
/// VirtualCluster without options and one with them, install and uninstall. Both Jobs go through
/// the apiserver (the rendered one by a dry run in a namespace no webhook watches), so its
/// defaults are on both sides and the comparison is of whole objects.
#[tokio::test]
async fn render_prints_what_the_real_webhook_makes_of_every_docs_example() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let admin = kosmos_e2e::host().await.unwrap();
    kosmos_e2e::install_crds(&admin).await.unwrap();
    let watched = TestNamespace::create(Cluster::Host, "webhook-render")
        .await
        .unwrap();
    let unwatched = TestNamespace::create(Cluster::Host, "webhook-render-plain")
        .await
        .unwrap();
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples");
    let cluster_files = [
        examples.join("virtual-cluster.yaml"),
        examples.join("virtual-cluster-options.yaml"),
    ];
    let plugin_files: Vec<PathBuf> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml")
                && std::fs::read_to_string(p)
                    .unwrap()
                    .contains("kind: VirtualClusterPlugin")
        })
        .collect();
    assert!(plugin_files.len() >= 7, "{plugin_files:?}");

    let kubeconfig = kosmos_e2e::kubeconfig_yaml(Cluster::Virtual).await.unwrap();
    let mut clusters = Vec::new();
    for file in &cluster_files {
        let vc: VirtualCluster = from_file(file);
        let vc = Api::<VirtualCluster>::namespaced(admin.clone(), watched.name())
            .create(&PostParams::default(), &vc)
            .await
            .unwrap();
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(contract::kubeconfig_secret_name(&vc.name_any())),
                ..Default::default()
            },
            string_data: Some(
                [(
                    contract::KUBECONFIG_SECRET_KEY.to_owned(),
                    kubeconfig.clone(),
                )]
                .into(),
            ),
            ..Default::default()
        };
        Api::<Secret>::namespaced(admin.clone(), watched.name())
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        clusters.push((file, vc));
    }
    let mut plugins = Vec::new();
    for file in &plugin_files {
        let plugin: VirtualClusterPlugin = from_file(file);
        let plugin = Api::<VirtualClusterPlugin>::namespaced(admin.clone(), watched.name())
            .create(&PostParams::default(), &plugin)
            .await
            .unwrap();
        plugins.push((file, plugin));
    }

    let webhook = Registered::start_with(&admin, watched.name(), |args| ServeArgs {
        allowed_host_path_prefixes: vec!["/".into()],
        ..args
    })
    .await;
    let as_operator = kosmos_e2e::client_as(Cluster::Host, &operator())
        .await
        .unwrap();
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let mut compared = 0;
    for (plugin_file, plugin) in &plugins {
        for (cluster_file, vc) in &clusters {
            for action in [Action::Install, Action::Uninstall] {
                let what = format!(
                    "{} of {} into {}",
                    action.as_str(),
                    plugin.name_any(),
                    vc.name_any()
                );
                // The real webhook: the operator's bare Job, created (dry run) as the operator.
                // Retried until the webhook's caches hold the plugin and the VirtualCluster.
                let bare = common::bare_job_for(vc, plugin, action);
                let jobs = Api::<Job>::namespaced(as_operator.clone(), watched.name());
                let mutated = wait_for(&what, Duration::from_secs(30), || {
                    let (jobs, dry_run, bare) = (jobs.clone(), dry_run.clone(), bare.clone());
                    let what = what.clone();
                    async move {
                        match jobs.create(&dry_run, &bare).await {
                            Ok(job) => Ok(job
                                .annotations()
                                .contains_key(contract::INJECTED_ANNOTATION)
                                .then_some(job)),
                            Err(e) => {
                                // Shown if the wait times out.
                                println!("{what}: {e}");
                                Ok(None)
                            }
                        }
                    }
                })
                .await
                .unwrap();

                // The plugin author's command, on the same files.
                let output = std::process::Command::new(env!("CARGO_BIN_EXE_plugin-webhook"))
                    .args(["render", "-f"])
                    .arg(plugin_file)
                    .arg("-f")
                    .arg(cluster_file)
                    .args(["--namespace", watched.name(), "--action", action.as_str()])
                    .args(["--allowed-host-path-prefixes", "/", "--output", "json"])
                    .output()
                    .unwrap();
                assert!(
                    output.status.success(),
                    "{what}: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                let mut rendered: Job = serde_json::from_slice(&output.stdout).unwrap();
                rendered.metadata.namespace = Some(unwatched.name().to_owned());
                let rendered = Api::<Job>::namespaced(admin.clone(), unwatched.name())
                    .create(&dry_run, &rendered)
                    .await
                    .unwrap_or_else(|e| panic!("{what}: the rendered Job is refused: {e}"));

                assert_eq!(
                    comparable(&rendered),
                    comparable(&mutated),
                    "{what}: render and the real webhook disagree"
                );
                compared += 1;
            }
        }
    }
    assert_eq!(compared, plugin_files.len() * cluster_files.len() * 2);
    webhook.unregister().await;
}

fn from_file<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> T {
    let text = std::fs::read_to_string(path).unwrap();
    let first = serde_yaml::Deserializer::from_str(&text)
        .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap())
        .find(|v| !v.is_null())
        .unwrap();
    serde_yaml::from_value(first).unwrap()
}

/// A Job as JSON without what differs between two creations of the same object: its namespace,
/// identity and the apiserver's bookkeeping (uid, selector and the labels derived from them).
fn comparable(job: &Job) -> serde_json::Value {
    let mut value = serde_json::to_value(job).unwrap();
    let metadata = value["metadata"].as_object_mut().unwrap();
    for key in [
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "generation",
        "managedFields",
    ] {
        metadata.remove(key);
    }
    // The mark says which webhook made the Job; render is not that webhook, so only its
    // presence is compared.
    if let Some(mark) = value
        .pointer_mut("/metadata/annotations")
        .and_then(|a| a.get_mut(contract::INJECTED_ANNOTATION))
    {
        *mark = serde_json::Value::String("present".into());
    }
    value["spec"].as_object_mut().unwrap().remove("selector");
    for labels in ["/metadata/labels", "/spec/template/metadata/labels"] {
        if let Some(labels) = value.pointer_mut(labels).and_then(|l| l.as_object_mut()) {
            for key in [
                "controller-uid",
                "batch.kubernetes.io/controller-uid",
                "job-name",
                "batch.kubernetes.io/job-name",
            ] {
                labels.remove(key);
            }
        }
    }
    value.as_object_mut().unwrap().remove("status");
    value
}

/// One more registration of a running webhook, for `namespace`; removed on drop (which waits
/// until it is deleted).
struct AlsoRegistered {
    name: String,
}

impl AlsoRegistered {
    async fn new(client: &Client, webhook: &Registered, namespace: &str) -> Self {
        let name = format!("plugin-webhook-also-{namespace}");
        let ca = std::fs::read_to_string(webhook.certs.path().join("ca.crt")).unwrap();
        let config = kosmos_e2e::executor_webhook_configuration(
            &name,
            namespace,
            &format!(
                "https://{}:{}/mutate",
                webhook_host(),
                webhook.running.addr.port()
            ),
            &ca,
            &["CREATE"],
        );
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .create(&PostParams::default(), &config)
            .await
            .unwrap();
        Self { name }
    }
}

impl Drop for AlsoRegistered {
    fn drop(&mut self) {
        kosmos_e2e::delete_webhook_configuration_on_drop(&self.name);
    }
}

/// Waits until the apiserver, calling the webhook, denies `job` in `namespace` with a message
/// that contains `expected`; returns the message.
async fn wait_until_denied(client: &Client, namespace: &str, job: &Job, expected: &str) -> String {
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    wait_for(
        &format!("the webhook to deny the Job in {namespace} with {expected:?}"),
        Duration::from_secs(30),
        || {
            let (jobs, dry) = (jobs.clone(), dry.clone());
            async move {
                Ok(match jobs.create(&dry, job).await {
                    Err(e) if e.to_string().contains(expected) => Some(e.to_string()),
                    _ => None,
                })
            }
        },
    )
    .await
    .unwrap()
}

/// With watched namespaces the webhook serves each listed one and no other: a Job elsewhere is
/// denied because its plugin is not in the caches, though the apiserver sends it. With none
/// listed it serves every namespace, one watch over all.
#[tokio::test]
async fn listed_namespaces_are_served_and_an_empty_list_serves_every_one() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let admin = kosmos_e2e::host().await.unwrap();
    let mut namespaces = Vec::new();
    let mut plugins = Vec::new();
    for prefix in ["webhook-ns-a", "webhook-ns-b", "webhook-ns-c"] {
        let ns = TestNamespace::create(Cluster::Host, prefix).await.unwrap();
        plugins.push(setup(ns.name(), &admin).await);
        namespaces.push(ns);
    }
    let names: Vec<String> = namespaces.iter().map(|n| n.name().to_owned()).collect();
    let as_operator = kosmos_e2e::client_as(Cluster::Host, &operator())
        .await
        .unwrap();
    let job = |i: usize| common::bare_job(&names[i], VC, &plugins[i], Action::Install);

    let listed = Registered::start_with(&admin, &names[0], |args| ServeArgs {
        watch_namespace: vec![names[0].clone(), names[1].clone()],
        ..args
    })
    .await;
    let also: Vec<AlsoRegistered> = futures::future::join_all(
        names[1..]
            .iter()
            .map(|ns| AlsoRegistered::new(&admin, &listed, ns)),
    )
    .await;
    for (i, ns) in names.iter().enumerate().take(2) {
        wait_until_webhook_active(&as_operator, ns, &job(i)).await;
    }
    let message = wait_until_denied(&as_operator, &names[2], &job(2), "not found").await;
    assert!(
        message.contains(&format!(
            "VirtualClusterPlugin {}/{}",
            names[2],
            plugins[2].name_any()
        )),
        "{message}"
    );
    // Its registrations go before another webhook serves the third namespace: a stopped
    // webhook's registration fails every call.
    drop(also);
    listed.unregister().await;

    let every = Registered::start_with(&admin, &names[2], |args| ServeArgs {
        watch_namespace: Vec::new(),
        ..args
    })
    .await;
    wait_until_webhook_active(&as_operator, &names[2], &job(2)).await;
    every.unregister().await;
    for ns in namespaces {
        ns.delete().await.unwrap();
    }
}

/// What became of a burst of executor Job creates through the apiserver.
#[derive(Debug)]
struct Burst {
    /// Creates that came back mutated.
    mutated: usize,
    /// The error of every other create.
    failures: Vec<String>,
    /// The most connections the webhook had open at once, sampled every few milliseconds.
    peak_open: i64,
    /// Connections the webhook closed at once because its cap was reached.
    refused: u64,
}

/// Creates `count` executor Jobs at once (dry run: each still goes through the webhook) as the
/// operator does when many VirtualClusters become ready together.
async fn burst(
    webhook: &Registered,
    as_operator: &Client,
    namespace: &str,
    job: &Job,
    count: usize,
) -> Burst {
    let metrics = webhook.running.state.metrics.clone();
    let refused_before = metrics.connections_refused.get();
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn({
        let (metrics, sampling) = (metrics.clone(), sampling.clone());
        async move {
            let mut peak = 0;
            while sampling.load(Ordering::Relaxed) {
                peak = peak.max(metrics.connections_open.get());
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            peak
        }
    });
    let jobs: Api<Job> = Api::namespaced(as_operator.clone(), namespace);
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let results = futures::future::join_all((0..count).map(|i| {
        let mut job = job.clone();
        job.metadata.name = Some(format!("{}-{i}", job.name_any()));
        let (jobs, dry) = (jobs.clone(), dry.clone());
        async move { jobs.create(&dry, &job).await }
    }))
    .await;
    sampling.store(false, Ordering::Relaxed);
    let peak_open = sampler.await.unwrap();
    let mut outcome = Burst {
        mutated: 0,
        failures: Vec::new(),
        peak_open,
        refused: metrics.connections_refused.get() - refused_before,
    };
    for result in results {
        match result {
            Ok(job)
                if job
                    .annotations()
                    .contains_key(contract::INJECTED_ANNOTATION) =>
            {
                outcome.mutated += 1
            }
            Ok(job) => outcome
                .failures
                .push(format!("{} came back unmutated", job.name_any())),
            Err(e) => outcome.failures.push(e.to_string()),
        }
    }
    outcome
}

/// The apiserver opens about one connection to the webhook per review in flight (377 at most
/// for this burst of 512 on the 2-core machine it was written on): a burst of creates (the
/// operator has up to 8 × --concurrent-reconciles, 256 by default, in flight) must fit under
/// the default connection cap, while a cap below the burst fails creates (the test would see
/// it) and counts each refusal.
#[tokio::test]
async fn a_burst_of_executor_jobs_fits_under_the_default_connection_cap() {
    const BURST: usize = 512;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let admin = kosmos_e2e::host().await.unwrap();
    let as_operator = kosmos_e2e::client_as(Cluster::Host, &operator())
        .await
        .unwrap();

    let ns = TestNamespace::create(Cluster::Host, "webhook-burst")
        .await
        .unwrap();
    let plugin = setup(ns.name(), &admin).await;
    let job = common::bare_job(ns.name(), VC, &plugin, Action::Install);
    let webhook = Registered::start(&admin, ns.name()).await;
    wait_until_webhook_active(&as_operator, ns.name(), &job).await;
    let at_default = burst(&webhook, &as_operator, ns.name(), &job, BURST).await;
    webhook.unregister().await;
    ns.delete().await.unwrap();
    assert!(
        at_default.failures.is_empty() && at_default.refused == 0,
        "{at_default:?}"
    );
    assert_eq!(at_default.mutated, BURST);

    let ns = TestNamespace::create(Cluster::Host, "webhook-burst-capped")
        .await
        .unwrap();
    let plugin = setup(ns.name(), &admin).await;
    let job = common::bare_job(ns.name(), VC, &plugin, Action::Install);
    let capped = Registered::start_with(&admin, ns.name(), |args| ServeArgs {
        max_connections: 16,
        ..args
    })
    .await;
    wait_until_webhook_active(&as_operator, ns.name(), &job).await;
    let over_cap = burst(&capped, &as_operator, ns.name(), &job, BURST).await;
    capped.unregister().await;
    ns.delete().await.unwrap();
    eprintln!(
        "burst of {BURST}: at the default cap {} connections at most; capped at 16: {} refused, {} creates failed",
        at_default.peak_open,
        over_cap.refused,
        over_cap.failures.len()
    );
    assert!(over_cap.refused > 0, "{over_cap:?}");
    assert!(
        over_cap
            .failures
            .iter()
            .any(|f| f.contains("failed calling webhook")),
        "{:?}",
        over_cap.failures.first()
    );
}
