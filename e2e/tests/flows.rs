//! Full flows on the real node, each ending with the VirtualCluster checked in the host apiserver
//! and what the plugins installed checked in the virtual apiserver:
//! - every kind of source: YAML from a hostPath pinned to its node, a kustomization, YAML from a
//!   `uri` served by a pod in the cluster's network namespace (with its sha256), a chart from a
//!   chart repository served by that pod (with `values`), a chart on a claim with a `valuesFile`;
//! - `successStateCommand`: one that passes only once the installed claim is really bound, one
//!   that never passes (the plugin fails with the reason, no `Completed`) and the recovery after
//!   the plugin is fixed;
//! - the source mounts really are read-only: an executor that writes into them fails;
//! - the cluster's network namespace has no way out, and the virtual nodes stay Ready.
//!
//! What runs where, and how to debug it: e2e/README.md, "Full flows".

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Stack, StackOptions};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod,
};
use kosmos_api::{PluginPhase, phase};
use kosmos_e2e::{Cluster, wait_for};
use kube::api::{DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use sha2::Digest as _;

/// A folder on this machine, which is the node's filesystem, for hostPath sources. The executor
/// runs as an unprivileged user, so the folder gets `mode`.
fn host_dir(mode: u32) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("kosmos-e2e-flows-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
    dir
}

/// Writes `text` to `dir/name` (a sub-folder made, readable by the executor; `dir` keeps its
/// mode).
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    let parent = path.parent().unwrap();
    if parent != dir {
        std::fs::create_dir_all(parent).unwrap();
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path
}

/// The name of the host cluster's (first) node.
async fn node_name(admin: &Client) -> String {
    let nodes = Api::<Node>::all(admin.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    nodes.items[0].metadata.name.clone().unwrap()
}

/// `data` of ConfigMap `namespace/name` in the virtual cluster.
async fn virtual_data(
    virtual_cluster: &Client,
    namespace: &str,
    name: &str,
) -> BTreeMap<String, String> {
    Api::<ConfigMap>::namespaced(virtual_cluster.clone(), namespace)
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("configmap {namespace}/{name} in the virtual cluster: {e}"))
        .data
        .unwrap_or_default()
}

/// Deletes namespace `name` (and what the plugins put there) from the virtual cluster.
async fn delete_virtual_namespace(virtual_cluster: &Client, name: &str) {
    let _ = Api::<Namespace>::all(virtual_cluster.clone())
        .delete(name, &DeleteParams::background())
        .await;
}

/// Runs the cached helm with `args` in `dir` (HOME there, so nothing is written elsewhere).
fn helm(dir: &Path, args: &[&str]) {
    let helm = kosmos_e2e::cached_tool_dirs()
        .into_iter()
        .map(|d| d.join("helm"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("helm"));
    let output = std::process::Command::new(&helm)
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "helm {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A busybox httpd pod in the test namespace serving `files` (name → bytes) from a ConfigMap on
/// port 8080; returns `http://<pod IP>:8080`, an address inside the cluster's network namespace.
async fn serve_files(admin: &Client, ns: &str, files: &[(&str, Vec<u8>)]) -> String {
    let mut binary = BTreeMap::new();
    for (name, bytes) in files {
        binary.insert((*name).to_owned(), ByteString(bytes.clone()));
    }
    let files_map = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("served-files".into()),
            ..Default::default()
        },
        binary_data: Some(binary),
        ..Default::default()
    };
    Api::<ConfigMap>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &files_map)
        .await
        .unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "file-server"},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "httpd",
                "image": kosmos_e2e::busybox_image(),
                "imagePullPolicy": "IfNotPresent",
                "command": ["httpd", "-f", "-v", "-p", "8080", "-h", "/www"],
                "volumeMounts": [{"name": "files", "mountPath": "/www", "readOnly": true}],
                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
            }],
            "volumes": [{"name": "files", "configMap": {"name": "served-files"}}],
        },
    }))
    .unwrap();
    Api::<Pod>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    let pod = kosmos_e2e::wait_for_pod_ready(admin, ns, "file-server", Duration::from_secs(120))
        .await
        .unwrap();
    let ip = pod.status.unwrap().pod_ip.unwrap();
    format!("http://{ip}:8080")
}

/// YAML from a hostPath pinned to the node, a kustomization from a hostPath, YAML from a `uri`
/// and a chart from a repository (both served by a pod in the cluster's network namespace), a
/// chart on a claim with a values file: one VirtualCluster, `Completed`, every object there.
#[tokio::test]
async fn every_kind_of_source_installs_from_the_cluster() {
    let files = host_dir(0o755);
    let stack = Stack::start(
        "flows-sources",
        StackOptions {
            allowed_host_path_prefixes: vec![files.path().display().to_string()],
            ..StackOptions::default()
        },
    )
    .await;
    let (admin, ns) = (stack.admin.clone(), stack.name().to_owned());
    // The virtual namespace is as unique as the test's own, so nothing from an earlier run counts.
    let vns = ns.clone();
    let node = node_name(&admin).await;

    // hostPath, pinned: the namespace and a ConfigMap.
    write(
        files.path(),
        "pinned/manifests.yaml",
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {vns}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: pinned\n  namespace: {vns}\n\
             data:\n  source: hostPath\n"
        ),
    );
    // A kustomization: the prefix and label prove kustomize built it.
    write(
        files.path(),
        "kustomize/kustomization.yaml",
        &format!(
            "namespace: {vns}\nnamePrefix: kustomized-\nlabels:\n- pairs:\n    \
             flows.kosmos.io/built-by: kustomize\nresources:\n- configmap.yaml\n"
        ),
    );
    write(
        files.path(),
        "kustomize/configmap.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: greeting\ndata:\n  source: kustomization\n",
    );

    // The chart repository: `helm package` and `helm repo index` (relative URLs) of the demo's
    // chart, and a manifest for the uri source, all served by one pod.
    let repo = tempfile::tempdir().unwrap();
    let chart = kosmos_e2e::e2e_dir().join("demo/charts/hello");
    helm(
        repo.path(),
        &["package", chart.to_str().unwrap(), "-d", "."],
    );
    helm(repo.path(), &["repo", "index", "."]);
    let fetched = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: fetched\n  namespace: {vns}\n\
         data:\n  source: uri\n"
    );
    let fetched_sha = hex(&sha2::Sha256::digest(fetched.as_bytes()));
    let served = [
        ("manifests.yaml", fetched.into_bytes()),
        (
            "index.yaml",
            std::fs::read(repo.path().join("index.yaml")).unwrap(),
        ),
        (
            "hello-0.1.0.tgz",
            std::fs::read(repo.path().join("hello-0.1.0.tgz")).unwrap(),
        ),
    ];
    let url = serve_files(&admin, &ns, &served).await;

    // The chart and a values file on a claim, copied there with kubectl cp.
    let values = tempfile::tempdir().unwrap();
    let values_file = write(
        values.path(),
        "values.yaml",
        "greeting: from a values file on a claim\n",
    );
    kosmos_e2e::fill_claim(
        &admin,
        &ns,
        "flows-store",
        &[
            (chart.as_path(), "hello"),
            (values_file.as_path(), "values.yaml"),
        ],
    )
    .await
    .unwrap();

    let wrong_sha = "0".repeat(64);
    let dir = files.path().display();
    stack
        .create_plugins(&format!(
            r#"
apiVersion: kosmos.io/v1alpha1
kind: VirtualClusterPlugin
metadata: {{name: pinned-yaml}}
spec:
  pluginSources:
    yaml:
      path:
        hostPath: {{path: "{dir}/pinned", nodeName: "{node}"}}
---
apiVersion: kosmos.io/v1alpha1
kind: VirtualClusterPlugin
metadata: {{name: pinned-elsewhere}}
spec:
  pluginSources:
    yaml:
      path:
        hostPath: {{path: "{dir}/pinned", nodeName: "no-such-node"}}
---
apiVersion: kosmos.io/v1alpha1
kind: VirtualClusterPlugin
metadata: {{name: kustomized}}
spec:
  dependsOn: [{{name: pinned-yaml}}]
  pluginSources:
    yaml:
      path:
        hostPath: {{path: "{dir}/kustomize"}}
---
apiVersion: kosmos.io/v1alpha1
kind: VirtualClusterPlugin
metadata: {{name: fetched-yaml}}
spec:
  dependsOn: [{{name: pinned-yaml}}]
  pluginSources:
    yaml:
      path:
        uri: "{url}/manifests.yaml"
        sha256: "{fetched_sha}"
---
apiVersion: kosmos.io/v1alpha1
kind: VirtualClusterPlugin
metadata: {{name: fetched-tampered}}
spec:
  pluginSources:
    yaml:
      path:
        uri: "{url}/manifests.yaml"
        sha256: "{wrong_sha}"
---
apiVersion: kosmos.io/v1alpha1
kind: VirtualClusterPlugin
metadata: {{name: repo-chart}}
spec:
  dependsOn: [{{name: pinned-yaml}}]
  timeoutSeconds: 120
  successStateCommand: |
    test "$(kubectl get configmap repo-chart -n {vns} -o jsonpath='{{.data.greeting}}')" = "from the repository"
  pluginSources:
    chart:
      repo: "{url}"
      name: hello
      version: 0.1.0
      namespace: {vns}
      values: |
        greeting: from the repository
---
apiVersion: kosmos.io/v1alpha1
kind: VirtualClusterPlugin
metadata: {{name: claim-chart}}
spec:
  dependsOn: [{{name: pinned-yaml}}]
  pluginSources:
    chart:
      storage: {{pvPath: "flows-store:/pv/hello"}}
      valuesFile: {{pvPath: "flows-store:/pv/values.yaml"}}
      namespace: {vns}
"#
        ))
        .await;
    let plugins = [
        "pinned-yaml",
        "kustomized",
        "fetched-yaml",
        "repo-chart",
        "claim-chart",
    ];
    stack
        .create_ready_virtual_cluster("sources", &plugins)
        .await;
    // The same files pinned to a node that does not exist: the scheduler never places the pod
    // (with one node, only this shows the pin is a requirement and not a coincidence).
    stack
        .create_ready_virtual_cluster("elsewhere", &["pinned-elsewhere"])
        .await;
    // The same uri with a sha256 it does not have: the download is refused.
    stack
        .create_ready_virtual_cluster("tampered", &["fetched-tampered"])
        .await;
    let done = stack
        .wait_for_completed("sources", Duration::from_secs(300))
        .await;
    let status = done.status.as_ref().unwrap();
    assert_eq!(status.plugin_progress.as_deref(), Some("5/5"));

    // In the virtual cluster.
    let vcl = &stack.virtual_cluster;
    assert_eq!(
        virtual_data(vcl, &vns, "pinned").await["source"],
        "hostPath"
    );
    let kustomized = Api::<ConfigMap>::namespaced(vcl.clone(), &vns)
        .get("kustomized-greeting")
        .await
        .unwrap();
    assert_eq!(
        kustomized.metadata.labels.unwrap()["flows.kosmos.io/built-by"],
        "kustomize"
    );
    assert_eq!(kustomized.data.unwrap()["source"], "kustomization");
    assert_eq!(virtual_data(vcl, &vns, "fetched").await["source"], "uri");
    assert_eq!(
        virtual_data(vcl, &vns, "repo-chart").await["greeting"],
        "from the repository"
    );
    assert_eq!(
        virtual_data(vcl, &vns, "claim-chart").await["greeting"],
        "from a values file on a claim"
    );

    // The pinned executor ran on the node its hostPath names, and was required to.
    let pods = stack.executor_pods(&done, "pinned-yaml").await;
    let pod = pods
        .iter()
        .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded"))
        .expect("a succeeded executor pod of pinned-yaml");
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.node_name.as_deref(), Some(node.as_str()));
    let affinity = serde_json::to_value(&spec.affinity).unwrap();
    assert_eq!(
        affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            [0]["matchFields"][0],
        json!({"key": "metadata.name", "operator": "In", "values": [node]}),
        "{affinity}"
    );

    let elsewhere = stack
        .wait_for_plugin_phase(
            "elsewhere",
            "pinned-elsewhere",
            PluginPhase::Installing,
            Duration::from_secs(60),
        )
        .await;
    let pods = Api::<Pod>::namespaced(admin.clone(), &ns);
    let job = elsewhere.status.as_ref().unwrap().plugins[0]
        .job_name
        .clone()
        .unwrap();
    wait_for(
        "the pod pinned to no-such-node to be unschedulable",
        Duration::from_secs(60),
        || async {
            let list = pods
                .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
                .await?;
            Ok(list.items.into_iter().find(|p| {
                p.spec.as_ref().is_some_and(|s| s.node_name.is_none())
                    && p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| {
                            c.iter().any(|c| {
                                c.type_ == "PodScheduled"
                                    && c.status == "False"
                                    && c.reason.as_deref() == Some("Unschedulable")
                            })
                        })
            }))
        },
    )
    .await
    .unwrap();
    assert_ne!(
        stack
            .virtual_clusters()
            .get("elsewhere")
            .await
            .unwrap()
            .phase(),
        phase::COMPLETED
    );
    let tampered = stack
        .wait_for_plugin_phase(
            "tampered",
            "fetched-tampered",
            PluginPhase::Failed,
            Duration::from_secs(120),
        )
        .await;
    assert_ne!(tampered.phase(), phase::COMPLETED);
    let entry = &tampered.status.as_ref().unwrap().plugins[0];
    assert!(
        entry
            .message
            .as_deref()
            .unwrap_or_default()
            .contains(&format!(
                "sha256 of {url}/manifests.yaml is {fetched_sha}, expected {wrong_sha}"
            )),
        "{entry:?}"
    );

    delete_virtual_namespace(vcl, &vns).await;
    stack.stop().await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A successStateCommand that passes only once the claim the plugin installed is bound (the
/// virtual controller manager binds it once the test adds a volume); one that never passes (the
/// plugin fails with the reason, the VirtualCluster is not Completed), then the same plugin
/// fixed and installed again.
#[tokio::test]
async fn success_state_commands_gate_fail_and_recover() {
    let files = host_dir(0o755);
    let stack = Stack::start(
        "flows-success",
        StackOptions {
            allowed_host_path_prefixes: vec![files.path().display().to_string()],
            max_attempts: 1,
        },
    )
    .await;
    let ns = stack.name().to_owned();
    let gated_ns = format!("{ns}-gated");
    let never_ns = format!("{ns}-never");
    write(
        files.path(),
        "claim/manifests.yaml",
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {gated_ns}\n---\n\
             apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: data\n  namespace: \
             {gated_ns}\nspec:\n  storageClassName: \"\"\n  accessModes: [ReadWriteOnce]\n  \
             resources:\n    requests:\n      storage: 1Mi\n"
        ),
    );
    write(
        files.path(),
        "never/manifests.yaml",
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {never_ns}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: installed\n  namespace: \
             {never_ns}\ndata:\n  ok: \"yes\"\n"
        ),
    );
    let dir = files.path().display();
    stack
        .create_plugins(&format!(
            r#"
apiVersion: kosmos.io/v1alpha1
kind: VirtualClusterPlugin
metadata: {{name: bound-claim}}
spec:
  timeoutSeconds: 240
  successStateCommand: |
    test "$(kubectl get pvc data -n {gated_ns} -o jsonpath='{{.status.phase}}')" = Bound
  pluginSources:
    yaml:
      path:
        hostPath: {{path: "{dir}/claim"}}
---
apiVersion: kosmos.io/v1alpha1
kind: VirtualClusterPlugin
metadata: {{name: never-ready}}
spec:
  timeoutSeconds: 15
  successStateCommand: kubectl get configmap never-made -n {never_ns}
  pluginSources:
    yaml:
      path:
        hostPath: {{path: "{dir}/never"}}
"#
        ))
        .await;
    stack
        .create_ready_virtual_cluster("gated", &["bound-claim"])
        .await;
    stack
        .create_ready_virtual_cluster("never", &["never-ready"])
        .await;
    let vcl = stack.virtual_cluster.clone();
    let vcs = stack.virtual_clusters();

    // Gated: the claim is installed, unbound, and the plugin keeps waiting on it.
    let claims = Api::<PersistentVolumeClaim>::namespaced(vcl.clone(), &gated_ns);
    wait_for(
        "the plugin's claim in the virtual cluster",
        Duration::from_secs(180),
        || async { Ok(claims.get_opt("data").await?) },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let waiting = vcs.get("gated").await.unwrap();
    assert_ne!(waiting.phase(), phase::COMPLETED);
    let entry = &waiting.status.as_ref().unwrap().plugins[0];
    assert_eq!(entry.phase, PluginPhase::Installing, "{entry:?}");
    let claim = claims.get("data").await.unwrap();
    assert_eq!(
        claim.status.and_then(|s| s.phase).as_deref(),
        Some("Pending")
    );
    // A volume for it: the virtual controller manager's binder binds the claim.
    let volume_name = format!("{gated_ns}-data");
    let volume: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": volume_name},
        "spec": {
            "capacity": {"storage": "1Mi"},
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "",
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": "/kosmos-e2e/unused"},
            "claimRef": {"namespace": gated_ns, "name": "data"},
        },
    }))
    .unwrap();
    let volumes = Api::<PersistentVolume>::all(vcl.clone());
    volumes
        .create(&PostParams::default(), &volume)
        .await
        .unwrap();
    let gated = stack
        .wait_for_completed("gated", Duration::from_secs(180))
        .await;
    assert_eq!(
        gated.status.unwrap().plugins[0].phase,
        PluginPhase::Succeeded
    );
    let claim = claims.get("data").await.unwrap();
    assert_eq!(claim.status.and_then(|s| s.phase).as_deref(), Some("Bound"));

    // Never: the plugin fails with the executor's reason; the cluster is not Completed.
    let failed = stack
        .wait_for_plugin_phase(
            "never",
            "never-ready",
            PluginPhase::Failed,
            Duration::from_secs(180),
        )
        .await;
    assert_ne!(failed.phase(), phase::COMPLETED);
    let entry = &failed.status.as_ref().unwrap().plugins[0];
    let message = entry.message.clone().unwrap_or_default();
    assert!(
        message.contains("successStateCommand did not exit 0 within 15s"),
        "{entry:?}"
    );
    let failed_job = entry.job_name.clone().unwrap();
    // It stays failed: no further attempt (max attempts 1), no Completed.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let still = vcs.get("never").await.unwrap();
    assert_ne!(still.phase(), phase::COMPLETED);
    assert_eq!(still.status.unwrap().plugins[0].phase, PluginPhase::Failed);

    // Fixed: the command checks what the plugin does install; a new attempt completes.
    stack
        .plugins()
        .patch(
            "never-ready",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "successStateCommand": format!("kubectl get configmap installed -n {never_ns}"),
            }})),
        )
        .await
        .unwrap();
    let recovered = stack
        .wait_for_completed("never", Duration::from_secs(180))
        .await;
    let entry = &recovered.status.as_ref().unwrap().plugins[0];
    assert_eq!(entry.phase, PluginPhase::Succeeded, "{entry:?}");
    assert_ne!(entry.job_name.as_deref(), Some(failed_job.as_str()));

    delete_virtual_namespace(&vcl, &gated_ns).await;
    delete_virtual_namespace(&vcl, &never_ns).await;
    let _ = volumes.delete(&volume_name, &DeleteParams::default()).await;
    stack.stop().await;
}

/// The webhook mounts every source read-only: an executor whose successStateCommand writes into
/// its hostPath folder (world-writable on the node, so only the mount can refuse) or into its
/// claim fails with "Read-only file system", and nothing is written.
#[tokio::test]
async fn an_executor_cannot_write_into_its_sources() {
    let files = host_dir(0o777);
    let stack = Stack::start(
        "flows-read-only",
        StackOptions {
            allowed_host_path_prefixes: vec![files.path().display().to_string()],
            max_attempts: 1,
        },
    )
    .await;
    let (admin, ns) = (stack.admin.clone(), stack.name().to_owned());
    // One namespace per plugin: two executors applying the same Namespace at once may race.
    let vns = format!("{ns}-ro");
    let claim_vns = format!("{ns}-ro-claim");
    write(
        files.path(),
        "manifests.yaml",
        &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {vns}\n"),
    );
    let claim_files = tempfile::tempdir().unwrap();
    let claim_manifest = write(
        claim_files.path(),
        "manifests.yaml",
        &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {claim_vns}\n"),
    );
    kosmos_e2e::fill_claim(
        &admin,
        &ns,
        "ro-store",
        &[(claim_manifest.as_path(), "manifests.yaml")],
    )
    .await
    .unwrap();
    let dir = files.path().display();
    // Each command first writes into the work folder (so the write itself works), then into the
    // source; `touch` prints why it failed into the pod's log.
    stack
        .create_plugins(&format!(
            r#"
apiVersion: kosmos.io/v1alpha1
kind: VirtualClusterPlugin
metadata: {{name: writes-host-path}}
spec:
  timeoutSeconds: 10
  successStateCommand: touch "$PLUGIN_WORK_DIR/written" && touch "$YAML_PATH/written"
  pluginSources:
    yaml:
      path:
        hostPath: {{path: "{dir}"}}
---
apiVersion: kosmos.io/v1alpha1
kind: VirtualClusterPlugin
metadata: {{name: writes-claim}}
spec:
  timeoutSeconds: 10
  successStateCommand: touch "$PLUGIN_WORK_DIR/written" && touch /pv/written
  pluginSources:
    yaml:
      path:
        pvPath: "ro-store:/pv/manifests.yaml"
"#
        ))
        .await;
    stack
        .create_ready_virtual_cluster("read-only", &["writes-host-path", "writes-claim"])
        .await;
    for plugin in ["writes-host-path", "writes-claim"] {
        let vc = stack
            .wait_for_plugin_phase(
                "read-only",
                plugin,
                PluginPhase::Failed,
                Duration::from_secs(180),
            )
            .await;
        assert_ne!(vc.phase(), phase::COMPLETED);
        let entry = vc
            .status
            .as_ref()
            .unwrap()
            .plugins
            .iter()
            .find(|p| p.name == plugin)
            .unwrap();
        assert!(
            entry
                .message
                .as_deref()
                .unwrap_or_default()
                .contains("successStateCommand did not exit 0"),
            "{entry:?}"
        );
        let pods = stack.executor_pods(&vc, plugin).await;
        let pod = pods.first().unwrap_or_else(|| panic!("no pod of {plugin}"));
        let log = Api::<Pod>::namespaced(admin.clone(), &ns)
            .logs(pod.metadata.name.as_deref().unwrap(), &LogParams::default())
            .await
            .unwrap();
        assert!(log.contains("Read-only file system"), "{plugin}: {log}");
        assert!(!log.contains("/kosmos/work/written"), "{plugin}: {log}");
    }
    // The control: a pod of the same user mounting the same folder writable does write there,
    // so what stopped the executor was the read-only mount, not the folder's permissions.
    let control: Pod = serde_json::from_value(json!({
        "metadata": {"name": "writable-control"},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "securityContext": {"runAsUser": 65532, "runAsGroup": 65532},
            "containers": [{
                "name": "write",
                "image": kosmos_e2e::busybox_image(),
                "imagePullPolicy": "IfNotPresent",
                "command": ["touch", "/source/control"],
                "volumeMounts": [{"name": "source", "mountPath": "/source"}],
            }],
            "volumes": [{"name": "source", "hostPath": {"path": files.path(), "type": "Directory"}}],
        },
    }))
    .unwrap();
    let pods = Api::<Pod>::namespaced(admin.clone(), &ns);
    pods.create(&PostParams::default(), &control).await.unwrap();
    let finished = wait_for(
        "the control pod to finish",
        Duration::from_secs(120),
        || async {
            let pod = pods.get("writable-control").await?;
            let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
            Ok(matches!(phase.as_deref(), Some("Succeeded" | "Failed")).then_some(phase))
        },
    )
    .await
    .unwrap();
    assert_eq!(finished.as_deref(), Some("Succeeded"));
    assert!(files.path().join("control").exists());

    // Installed before the command ran: the read-only sources were read.
    for name in [&vns, &claim_vns] {
        Api::<Namespace>::all(stack.virtual_cluster.clone())
            .get(name)
            .await
            .unwrap();
    }
    assert!(!files.path().join("written").exists());

    delete_virtual_namespace(&stack.virtual_cluster, &vns).await;
    delete_virtual_namespace(&stack.virtual_cluster, &claim_vns).await;
    stack.stop().await;
}

/// Runs `e2e/cluster.sh exec ARGS` (inside the cluster's network namespace) and returns stdout.
async fn in_cluster_netns(args: &[&str]) -> String {
    let output = tokio::process::Command::new("bash")
        .arg(kosmos_e2e::e2e_dir().join("cluster.sh"))
        .arg("exec")
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "cluster.sh exec {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The cluster's network namespace has no default route (so no packet can leave it for the
/// machine's network), and a pod reaches the apiserver's Service inside it but neither a port
/// this test listens on at the machine's end of the veth nor a TEST-NET address.
#[tokio::test]
async fn pods_cannot_leave_the_cluster_network_namespace() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let admin = kosmos_e2e::host().await.unwrap();
    for family in ["-4", "-6"] {
        let routes = in_cluster_netns(&["ip", family, "route", "show"]).await;
        assert!(
            !routes.lines().any(|r| r.starts_with("default")),
            "a default route ({family}) in the cluster's network namespace:\n{routes}"
        );
    }
    // Only now is probing an outside address harmless: nothing routes it out.
    let listener = tokio::net::TcpListener::bind((kosmos_e2e::webhook_host(), 0))
        .await
        .unwrap();
    let machine = listener.local_addr().unwrap();

    let ns = kosmos_e2e::TestNamespace::create(Cluster::Host, "flows-isolation")
        .await
        .unwrap();
    let script = format!(
        r#"probe() {{ if nc -w 3 "$2" "$3" -e true < /dev/null; then echo "$1 open"; else echo "$1 closed"; fi; }}
{{ probe apiserver "$KUBERNETES_SERVICE_HOST" "$KUBERNETES_SERVICE_PORT"
  probe machine {} {}
  probe test-net 192.0.2.1 80; }} > /dev/termination-log"#,
        machine.ip(),
        machine.port()
    );
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "probe"},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "probe",
                "image": kosmos_e2e::busybox_image(),
                "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", script],
            }],
        },
    }))
    .unwrap();
    let pods = Api::<Pod>::namespaced(admin.clone(), ns.name());
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let done = wait_for(
        "the probe pod to finish",
        Duration::from_secs(120),
        || async {
            let pod = pods.get("probe").await?;
            let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
            Ok(matches!(phase.as_deref(), Some("Succeeded" | "Failed")).then_some(pod))
        },
    )
    .await
    .unwrap();
    let report = kosmos_e2e::termination_message(&done).unwrap_or_default();
    assert_eq!(
        report.lines().collect::<Vec<_>>(),
        ["apiserver open", "machine closed", "test-net closed"],
        "{report}"
    );
    drop(listener);
    ns.delete().await.unwrap();
}

/// The virtual cluster's nodes, which have no kubelet, stay Ready past the controller manager's
/// node-monitor grace period (50 s) thanks to cluster.sh's heartbeat, untainted.
#[tokio::test]
async fn the_virtual_nodes_stay_ready_past_the_grace_period() {
    const GRACE: i64 = 50;
    let virtual_cluster = kosmos_e2e::virtual_cluster().await.unwrap();
    let nodes = Api::<Node>::all(virtual_cluster);
    // Wait until both have existed longer than the grace period (at once when the cluster has
    // run for a while, as under `make test`).
    for name in ["node1", "node2"] {
        let created = nodes
            .get(name)
            .await
            .unwrap()
            .metadata
            .creation_timestamp
            .unwrap()
            .0;
        let age = k8s_openapi::jiff::Timestamp::now().as_second() - created.as_second();
        if age < GRACE + 15 {
            tokio::time::sleep(Duration::from_secs((GRACE + 15 - age) as u64)).await;
        }
    }
    // Ready and untainted now, or within one heartbeat round of Ready updates: a test that
    // stopped the virtual apiserver just before (e2e/tests/drills.rs) leaves the nodes Unknown
    // until the heartbeat's next Ready update after the apiserver is back. Without the
    // heartbeat they never come back, and this times out.
    for name in ["node1", "node2"] {
        let result = kosmos_e2e::wait_for(
            &format!("{name} to be Ready and untainted"),
            HEARTBEAT_RECOVERY,
            || {
                let nodes = nodes.clone();
                async move {
                    let node = nodes.get(name).await?;
                    let ready = node
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                        .is_some_and(|c| c.status == "True");
                    let untainted = node
                        .spec
                        .as_ref()
                        .and_then(|s| s.taints.as_ref())
                        .is_none_or(|t| t.is_empty());
                    Ok((ready && untainted).then_some(()))
                }
            },
        )
        .await;
        if let Err(error) = result {
            let node = nodes.get(name).await.unwrap();
            panic!(
                "{error:#}: {:?}, taints {:?}",
                node.status.and_then(|s| s.conditions),
                node.spec.and_then(|s| s.taints)
            );
        }
    }
}

/// Bound on the virtual nodes being Ready again after an outage of the virtual apiserver: the
/// heartbeat writes their Ready condition every 40 s, and the controller manager lifts the
/// unreachable taint on its next pass.
const HEARTBEAT_RECOVERY: Duration = Duration::from_secs(120);
