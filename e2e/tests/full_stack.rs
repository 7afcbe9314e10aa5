//! The whole system on the real node: the design document's walk-through step by step (the
//! `ubuntu-statefulset` whose claim on `openebs-hostpath` is filled with `kubectl cp`, then the
//! plugin with `pvPath`), the demo's other plugins (YAML and a chart from hostPath), the operator
//! (as its own  with the RBAC that docs/operator.md lists, in the default
//! `external` readiness mode), the webhook (TLS, registered with the host apiserver), the job
//! controller and the kubelet running the executor image carry the VirtualCluster to
//! `Completed`, and the plugins' objects exist in the virtual cluster afterwards.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim};
use kosmos_api::contract;
use kosmos_api::{PluginPhase, VirtualCluster, phase};
use kosmos_e2e::Cluster;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

mod common;

use common::{Stack, StackOptions};

const VC: &str = "tenant1-cluster";

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

#[tokio::test]
async fn the_design_walk_through_completes_on_the_real_node() {
    let demo = kosmos_e2e::e2e_dir().join("demo");
    let stack = Stack::start(
        "full-stack",
        StackOptions {
            // The demo's hostPath plugin reads e2e/demo; no hostPath is allowed unless listed.
            allowed_host_path_prefixes: vec![demo.display().to_string()],
            ..StackOptions::default()
        },
    )
    .await;
    let (admin, ns_name) = (stack.admin.clone(), stack.name().to_owned());
    let virtual_cluster = stack.virtual_cluster.clone();

    // The walk-through: the StatefulSet's claim, filled with kubectl cp.
    walk_through_claim(&admin, &ns_name).await;

    // The demo's plugins and VirtualCluster, pointed at the virtual control plane.
    let plugins_yaml = std::fs::read_to_string(demo.join("plugins.yaml"))
        .unwrap()
        .replace("HOSTPATH_DIR", &demo.display().to_string());
    stack.create_plugins(&plugins_yaml).await;
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

    let done = stack.wait_for_completed(VC, Duration::from_secs(180)).await;
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

    // Every Job that counted was mutated by the webhook and really completed; its mark is the
    // webhook's signature with the key the webhook wrote into the key Secret itself.
    let key_secret = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(admin.clone(), &ns_name)
        .get(kosmos_api::mark::DEFAULT_KEY_SECRET)
        .await
        .unwrap();
    let key_data = key_secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    let keys = kosmos_api::mark::keys_of(&key_data).unwrap();
    for plugin in &status.plugins {
        let job = jobs.get(plugin.job_name.as_deref().unwrap()).await.unwrap();
        assert!(
            job.annotations()
                .contains_key(contract::INJECTED_ANNOTATION),
            "{} lacks the mark",
            job.name_any()
        );
        assert_eq!(
            kosmos_api::mark::verify(&keys, &job),
            Ok(()),
            "{}",
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

    stack.stop().await;
}
