//! The whole system on the real node: the design document's walk-through step by step (the
//! `ubuntu-statefulset` whose claim on `openebs-hostpath` is filled with `kubectl cp`, then the
//! plugin with `pvPath`), the demo's other plugins (YAML and a chart from hostPath), the operator
//! (as its own ServiceAccount, with the RBAC that docs/operator.md lists, in the default
//! `external` readiness mode), the webhook (TLS, registered with the host apiserver), the job
//! controller and the kubelet running the executor image carry the VirtualCluster to
//! `Completed`, and the plugins' objects exist in the virtual cluster afterwards.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolume, PersistentVolumeClaim, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kosmos_api::contract;
use kosmos_api::{PluginPhase, VirtualCluster, VirtualClusterPlugin, phase};
use kosmos_e2e::{Cluster, TestNamespace, wait_for};
use kosmos_operator::context::{self, Config, Context, ReadinessMode};
use kosmos_operator::controller;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

const OPERATOR_ACCOUNT: &str = "virtual-cluster-operator";
const VC: &str = "tenant1-cluster";

/// The operator's rights as docs/operator.md lists them, namespaced to the test.
fn operator_role(ns: &str) -> Role {
    serde_json::from_value(json!({
        "metadata": {"name": OPERATOR_ACCOUNT, "namespace": ns},
        "rules": [
            {"apiGroups": ["kosmos.io"], "resources": ["virtualclusters"], "verbs": ["get", "list", "watch", "patch"]},
            {"apiGroups": ["kosmos.io"], "resources": ["virtualclusterplugins"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch", "create", "delete"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "patch", "delete"]},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        ],
    }))
    .unwrap()
}

async fn start_operator_as_service_account(admin: &Client, ns: &str) -> Client {
    Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": OPERATOR_ACCOUNT}})).unwrap(),
        )
        .await
        .unwrap();
    Api::<Role>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &operator_role(ns))
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": OPERATOR_ACCOUNT},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": OPERATOR_ACCOUNT},
        "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_ACCOUNT, "namespace": ns}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let token = kosmos_e2e::service_account_token(admin, ns, OPERATOR_ACCOUNT)
        .await
        .unwrap();
    kosmos_e2e::client_with_token(Cluster::Host, &token)
        .await
        .unwrap()
}

/// The webhook's registration, removed even when the test fails.
struct Registration {
    name: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        kosmos_e2e::delete_webhook_configuration_on_drop(&self.name);
    }
}

use kosmos_e2e::webhook_host;

/// The walk-through's first steps: the StatefulSet, its claim bound on `openebs-hostpath`, and
/// `kubectl cp test.yaml ubuntu-statefulset-0:/pv`.
async fn walk_through_claim(admin: &Client, ns: &str) {
    let demo = kosmos_e2e::e2e_dir().join("demo");
    let yaml = std::fs::read_to_string(demo.join("ubuntu-statefulset.yaml"))
        .unwrap()
        .replace("BUSYBOX_IMAGE", &kosmos_e2e::busybox_image());
    let sts: StatefulSet = serde_yaml::from_str(&yaml).unwrap();
    Api::<StatefulSet>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &sts)
        .await
        .unwrap();
    kosmos_e2e::wait_for_pod_ready(admin, ns, "ubuntu-statefulset-0", Duration::from_secs(120))
        .await
        .unwrap();
    // "Check pv": the provisioner made a volume for the claim, of the class the design names.
    let claim = Api::<PersistentVolumeClaim>::namespaced(admin.clone(), ns)
        .get("plugin-store-ubuntu-statefulset-0")
        .await
        .unwrap();
    let volume = claim.spec.as_ref().unwrap().volume_name.clone().unwrap();
    let pv = Api::<PersistentVolume>::all(admin.clone())
        .get(&volume)
        .await
        .unwrap();
    let pv_spec = pv.spec.unwrap();
    assert_eq!(
        pv_spec.storage_class_name.as_deref(),
        Some(kosmos_e2e::STORAGE_CLASS)
    );
    assert_eq!(
        pv_spec.claim_ref.unwrap().name.as_deref(),
        Some("plugin-store-ubuntu-statefulset-0")
    );
    let manifest = demo.join("claims/plugin-store-ubuntu-statefulset-0/test.yaml");
    kosmos_e2e::kubectl(
        Cluster::Host,
        &[
            "cp",
            manifest.to_str().unwrap(),
            &format!("{ns}/ubuntu-statefulset-0:/pv"),
        ],
    )
    .await
    .unwrap();
}

async fn register_webhook(admin: &Client, ns: &str, port: u16, ca_pem: &str) -> Registration {
    let name = format!("kosmos-e2e-full-stack-{ns}");
    let config = kosmos_e2e::executor_webhook_configuration(
        &name,
        ns,
        &format!("https://{}:{port}/mutate", webhook_host()),
        ca_pem,
        &["CREATE"],
    );
    Api::<MutatingWebhookConfiguration>::all(admin.clone())
        .create(&PostParams::default(), &config)
        .await
        .unwrap();
    Registration { name }
}

#[tokio::test]
async fn the_design_walk_through_completes_on_the_real_node() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let admin = kosmos_e2e::host().await.unwrap();
    let virtual_cluster = kosmos_e2e::virtual_cluster().await.unwrap();
    kosmos_e2e::install_crds(&admin).await.unwrap();
    let ns = TestNamespace::create(Cluster::Host, "full-stack")
        .await
        .unwrap();
    let ns_name = ns.name().to_owned();

    // The webhook, mutating only Jobs created by the operator's ServiceAccount.
    let certs_dir = tempfile::tempdir().unwrap();
    let certs = kosmos_webhook::tls::generate(&["localhost".into(), webhook_host()], 1).unwrap();
    kosmos_webhook::tls::write(&certs, certs_dir.path()).unwrap();
    let mut args = kosmos_webhook::server::ServeArgs {
        operator_user: format!("system:serviceaccount:{ns_name}:{OPERATOR_ACCOUNT}"),
        watch_namespace: Some(ns_name.clone()),
        // The demo's hostPath plugin reads e2e/demo; no hostPath is allowed unless listed.
        allowed_host_path_prefixes: vec![kosmos_e2e::e2e_dir().join("demo").display().to_string()],
        ..kosmos_webhook::server::ServeArgs::local(
            certs_dir.path().join("tls.crt"),
            certs_dir.path().join("tls.key"),
        )
    };
    args.listen = kosmos_e2e::webhook_listen_addr();
    let webhook = kosmos_webhook::server::start(&args, admin.clone())
        .await
        .unwrap();
    let state = webhook.state.clone();
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
    let _registration =
        register_webhook(&admin, &ns_name, webhook.addr.port(), &certs.ca_pem).await;

    // The walk-through: the StatefulSet's claim, filled with kubectl cp.
    walk_through_claim(&admin, &ns_name).await;
    let demo = kosmos_e2e::e2e_dir().join("demo");

    // The operator, as its ServiceAccount with the documented rights only.
    let operator_client = start_operator_as_service_account(&admin, &ns_name).await;
    let ctx = Arc::new(Context {
        client: operator_client,
        reporter: context::reporter(),
        metrics: Arc::default(),
        config: Config {
            plan: kosmos_operator::plan::Settings {
                backoff_base: Duration::from_secs(1),
                backoff_max: Duration::from_secs(2),
                ..Default::default()
            },
            executor_image: kosmos_e2e::executor_image(),
            executor_pod: Default::default(),
            readiness: ReadinessMode::External,
            uninstall_on_delete: false,
            uninstall_timeout: Duration::from_secs(5),
            namespace: Some(ns_name.clone()),
        },
        probes: Arc::default(),
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let operator = tokio::spawn(controller::run(
        ctx,
        Arc::new(AtomicBool::new(false)),
        async {
            let _ = stopped.await;
        },
    ));

    // The demo's plugins and VirtualCluster, pointed at the virtual control plane.
    let plugins_yaml = std::fs::read_to_string(demo.join("plugins.yaml"))
        .unwrap()
        .replace("HOSTPATH_DIR", &demo.display().to_string());
    let plugins: Api<VirtualClusterPlugin> = Api::namespaced(admin.clone(), &ns_name);
    for plugin in kosmos_e2e::parse_yaml::<VirtualClusterPlugin>(&plugins_yaml).unwrap() {
        plugins
            .create(&PostParams::default(), &plugin)
            .await
            .unwrap();
    }
    let kubeconfig = kosmos_e2e::kubeconfig_yaml(Cluster::Virtual).await.unwrap();
    let vc_yaml = std::fs::read_to_string(demo.join("virtual-cluster.yaml"))
        .unwrap()
        .replace(
            "KUBECONFIG_BASE64",
            &base64::engine::general_purpose::STANDARD.encode(kubeconfig),
        );
    let vc: VirtualCluster = serde_yaml::from_str(&vc_yaml).unwrap();
    let vcs: Api<VirtualCluster> = Api::namespaced(admin.clone(), &ns_name);
    vcs.create(&PostParams::default(), &vc).await.unwrap();

    // Nothing installs before the cluster is ready.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let jobs: Api<Job> = Api::namespaced(admin.clone(), &ns_name);
    assert!(
        jobs.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "executor jobs before AllNodeReady"
    );

    // Kosmos marks the cluster ready (a plain update of the main resource, no status subresource).
    vcs.patch(
        VC,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": phase::ALL_NODE_READY}})),
    )
    .await
    .unwrap();

    let done = wait_for(
        "tenant1-cluster to be Completed",
        Duration::from_secs(180),
        || async {
            let vc = vcs.get(VC).await?;
            Ok((vc.phase() == phase::COMPLETED).then_some(vc))
        },
    )
    .await;
    let _ = stop.send(());
    let done = match done {
        Ok(vc) => vc,
        Err(e) => {
            let vc = vcs.get(VC).await.unwrap();
            panic!(
                "{e:#}\nstatus: {}",
                serde_json::to_string_pretty(&vc.status).unwrap()
            );
        }
    };
    let status = done.status.unwrap();
    assert_eq!(status.plugin_progress.as_deref(), Some("3/3"));
    let mut names: Vec<&str> = status.plugins.iter().map(|p| p.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["apiserver-network-proxy", "demo-namespace", "hello"]
    );
    assert!(
        status
            .plugins
            .iter()
            .all(|p| p.phase == PluginPhase::Succeeded),
        "{:?}",
        status.plugins
    );

    // Every Job that counted was mutated by the webhook and really completed.
    for plugin in &status.plugins {
        let job = jobs.get(plugin.job_name.as_deref().unwrap()).await.unwrap();
        assert!(
            job.annotations()
                .contains_key(contract::INJECTED_ANNOTATION),
            "{} lacks the mark",
            job.name_any()
        );
        assert_eq!(
            job.status.and_then(|s| s.succeeded),
            Some(1),
            "{}",
            plugin.name
        );
    }

    // What the plugins installed is in the virtual cluster.
    let greeting = Api::<ConfigMap>::namespaced(virtual_cluster.clone(), "demo")
        .get("hello")
        .await
        .unwrap();
    assert_eq!(greeting.data.unwrap()["greeting"], "hello from the demo");
    Api::<ConfigMap>::namespaced(virtual_cluster, "konnectivity")
        .get("apiserver-network-proxy")
        .await
        .unwrap();

    // The executor pods really ran on the node, and said what they did.
    for plugin in &status.plugins {
        let job = plugin.job_name.as_deref().unwrap();
        let pods = kosmos_e2e::job_pods(&admin, &ns_name, job).await.unwrap();
        let pod = pods
            .iter()
            .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded"))
            .unwrap_or_else(|| panic!("no succeeded pod of job {job}"));
        assert!(pod.spec.as_ref().unwrap().node_name.is_some());
        let message = kosmos_e2e::termination_message(pod).unwrap_or_default();
        assert!(message.contains("installed"), "{job}: {message}");
    }

    let _ = operator.await;
    webhook.stop(Duration::from_secs(1)).await;
    ns.delete().await.unwrap();
}
