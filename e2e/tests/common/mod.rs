//! The whole system in one test namespace, shared by the full-flow tests (full_stack.rs,
//! flows.rs): the webhook (TLS, registered with the host apiserver for that namespace, mutating
//! only Jobs of the operator's ServiceAccount) and the operator (as that ServiceAccount, with the
//! rights docs/operator.md lists, in the default `external` readiness mode), both in the test
//! process; executor pods run on the real node.

#![allow(clippy::unwrap_used)] // a panic is how a test fails
#![allow(dead_code)] // each test binary uses part of it

use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kosmos_api::{PluginPhase, VirtualCluster, VirtualClusterPlugin, phase};
use kosmos_e2e::{Cluster, TestNamespace, wait_for, webhook_host};
use kosmos_operator::server;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

pub const OPERATOR_ACCOUNT: &str = "virtual-cluster-operator";

/// What differs between the full-flow tests.
pub struct StackOptions {
    /// Folders the webhook allows for hostPath sources.
    pub allowed_host_path_prefixes: Vec<String>,
    /// Failed attempts of a plugin before it stays Failed (the operator's `--max-attempts`).
    pub max_attempts: u32,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            allowed_host_path_prefixes: Vec::new(),
            max_attempts: kosmos_operator::plan::Settings::default().max_attempts,
        }
    }
}

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

async fn operator_client(admin: &Client, ns: &str) -> Client {
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

async fn register_webhook(admin: &Client, ns: &str, port: u16, ca_pem: &str) -> Registration {
    let name = format!("kosmos-e2e-stack-{ns}");
    let config = kosmos_e2e::executor_webhook_configuration(
        &name,
        ns,
        &format!("https://{}:{port}/mutate", webhook_host()),
        ca_pem,
        // As the chart registers it: a later patch cannot turn a plain Job into an executor Job.
        &["CREATE", "UPDATE"],
    );
    Api::<MutatingWebhookConfiguration>::all(admin.clone())
        .create(&PostParams::default(), &config)
        .await
        .unwrap();
    Registration { name }
}

/// The webhook and operator serving one fresh test namespace on the host cluster.
pub struct Stack {
    pub admin: Client,
    pub virtual_cluster: Client,
    pub ns: TestNamespace,
    webhook: kosmos_webhook::server::Running,
    registration: Registration,
    operator: server::Running,
}

impl Stack {
    /// Namespace `<prefix>-<suffix>` with the webhook registered for it and the operator
    /// watching it.
    pub async fn start(prefix: &str, options: StackOptions) -> Stack {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let admin = kosmos_e2e::host().await.unwrap();
        let virtual_cluster = kosmos_e2e::virtual_cluster().await.unwrap();
        kosmos_e2e::install_crds(&admin).await.unwrap();
        let ns = TestNamespace::create(Cluster::Host, prefix).await.unwrap();
        let ns_name = ns.name().to_owned();

        // The webhook, mutating only Jobs created by the operator's ServiceAccount.
        let certs_dir = tempfile::tempdir().unwrap();
        let certs =
            kosmos_webhook::tls::generate(&["localhost".into(), webhook_host()], 1).unwrap();
        kosmos_webhook::tls::write(&certs, certs_dir.path()).unwrap();
        let mut args = kosmos_webhook::server::ServeArgs {
            operator_user: format!("system:serviceaccount:{ns_name}:{OPERATOR_ACCOUNT}"),
            watch_namespace: vec![ns_name.clone()],
            allowed_host_path_prefixes: options.allowed_host_path_prefixes,
            // Its mark key in the test namespace, where the operator reads it (Args::local: the
            // default Secret name in the operator's own namespace).
            mark_key_secret: Some(kosmos_api::mark::DEFAULT_KEY_SECRET.to_owned()),
            namespace: ns_name.clone(),
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
        let registration =
            register_webhook(&admin, &ns_name, webhook.addr.port(), &certs.ca_pem).await;

        // The operator, as main.rs runs it, as its ServiceAccount with the documented rights
        // only (no Lease rights: one replica, no leader election).
        let max_attempts = options.max_attempts.to_string();
        let executor_image = kosmos_e2e::executor_image();
        let args = server::Args::local(
            &ns_name,
            "e2e-operator",
            &[
                "--leader-election",
                "false",
                "--backoff-seconds",
                "1",
                "--max-backoff-seconds",
                "2",
                "--uninstall-timeout-seconds",
                "5",
                "--max-attempts",
                &max_attempts,
                "--executor-image",
                &executor_image,
            ],
        )
        .unwrap();
        let operator = server::start(&args, operator_client(&admin, &ns_name).await)
            .await
            .unwrap();
        Stack {
            admin,
            virtual_cluster,
            ns,
            webhook,
            registration,
            operator,
        }
    }

    /// The test namespace's name.
    pub fn name(&self) -> &str {
        self.ns.name()
    }

    pub fn plugins(&self) -> Api<VirtualClusterPlugin> {
        Api::namespaced(self.admin.clone(), self.name())
    }

    pub fn virtual_clusters(&self) -> Api<VirtualCluster> {
        Api::namespaced(self.admin.clone(), self.name())
    }

    /// Creates every VirtualClusterPlugin in `yaml` (a multi-document stream).
    pub async fn create_plugins(&self, yaml: &str) {
        for plugin in kosmos_e2e::parse_yaml::<VirtualClusterPlugin>(yaml).unwrap() {
            self.plugins()
                .create(&PostParams::default(), &plugin)
                .await
                .unwrap();
        }
    }

    /// Creates VirtualCluster `name` enabling `plugins`, pointed at the virtual control plane,
    /// and marks it `AllNodeReady` as Kosmos would (a plain update of the main resource).
    pub async fn create_ready_virtual_cluster(&self, name: &str, plugins: &[&str]) {
        let kubeconfig = kosmos_e2e::kubeconfig_yaml(Cluster::Virtual).await.unwrap();
        let enabled: Vec<_> = plugins.iter().map(|p| json!({"name": p})).collect();
        let vc: VirtualCluster = serde_json::from_value(json!({
            "apiVersion": "kosmos.io/v1alpha1",
            "kind": "VirtualCluster",
            "metadata": {"name": name},
            "spec": {
                "kubeconfig": base64::engine::general_purpose::STANDARD.encode(kubeconfig),
                "promoteResources": {"nodes": ["node1", "node2"]},
                "pluginSet": {"enabled": enabled},
            },
        }))
        .unwrap();
        let vcs = self.virtual_clusters();
        vcs.create(&PostParams::default(), &vc).await.unwrap();
        vcs.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": phase::ALL_NODE_READY}})),
        )
        .await
        .unwrap();
    }

    /// Waits until VirtualCluster `name` is `Completed`; on timeout the panic shows its status.
    pub async fn wait_for_completed(&self, name: &str, timeout: Duration) -> VirtualCluster {
        let vcs = self.virtual_clusters();
        let done = wait_for(&format!("{name} to be Completed"), timeout, || async {
            let vc = vcs.get(name).await?;
            Ok((vc.phase() == phase::COMPLETED).then_some(vc))
        })
        .await;
        match done {
            Ok(vc) => vc,
            Err(e) => {
                let vc = vcs.get(name).await.unwrap();
                panic!(
                    "{e:#}\nstatus: {}\npods:\n{}",
                    serde_json::to_string_pretty(&vc.status).unwrap(),
                    self.pods_report().await
                );
            }
        }
    }

    /// Waits until plugin `plugin` of VirtualCluster `name` has `phase` in the status, and
    /// returns the VirtualCluster.
    pub async fn wait_for_plugin_phase(
        &self,
        name: &str,
        plugin: &str,
        phase: PluginPhase,
        timeout: Duration,
    ) -> VirtualCluster {
        let vcs = self.virtual_clusters();
        let seen = wait_for(
            &format!("plugin {plugin} of {name} to be {phase:?}"),
            timeout,
            || async {
                let vc = vcs.get(name).await?;
                let reached = vc.status.as_ref().is_some_and(|s| {
                    s.plugins
                        .iter()
                        .any(|p| p.name == plugin && p.phase == phase)
                });
                Ok(reached.then_some(vc))
            },
        )
        .await;
        match seen {
            Ok(vc) => vc,
            Err(e) => {
                let vc = vcs.get(name).await.unwrap();
                panic!(
                    "{e:#}\nstatus: {}\npods:\n{}",
                    serde_json::to_string_pretty(&vc.status).unwrap(),
                    self.pods_report().await
                );
            }
        }
    }

    /// Every pod of the test namespace: name, phase, node, termination message (for panics: the
    /// namespace is gone after the test).
    pub async fn pods_report(&self) -> String {
        let pods = match Api::<Pod>::namespaced(self.admin.clone(), self.name())
            .list(&ListParams::default())
            .await
        {
            Ok(pods) => pods.items,
            Err(e) => return format!("listing pods: {e}"),
        };
        pods.iter()
            .map(|p| {
                let status = p.status.as_ref();
                format!(
                    "  {} {} on {}: {}",
                    p.metadata.name.as_deref().unwrap_or_default(),
                    status.and_then(|s| s.phase.as_deref()).unwrap_or("-"),
                    p.spec
                        .as_ref()
                        .and_then(|s| s.node_name.as_deref())
                        .unwrap_or("-"),
                    kosmos_e2e::termination_message(p)
                        .unwrap_or_default()
                        .trim()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The executor pods of plugin `plugin`'s current Job in VirtualCluster `vc`.
    pub async fn executor_pods(&self, vc: &VirtualCluster, plugin: &str) -> Vec<Pod> {
        let status = vc.status.as_ref().unwrap();
        let entry = status.plugins.iter().find(|p| p.name == plugin).unwrap();
        let job = entry
            .job_name
            .as_deref()
            .unwrap_or_else(|| panic!("plugin {plugin} has no job: {entry:?}"));
        kosmos_e2e::job_pods(&self.admin, self.name(), job)
            .await
            .unwrap()
    }

    /// Stops the operator and the webhook, removes the registration and deletes the namespace.
    pub async fn stop(self) {
        let Stack {
            ns,
            webhook,
            registration,
            operator,
            ..
        } = self;
        operator.stop().await.unwrap();
        webhook.stop(Duration::from_secs(1)).await;
        drop(registration);
        ns.delete().await.unwrap();
    }
}
