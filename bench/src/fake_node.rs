//! A node without a kubelet, for the operator's scale run: thousands of executor pods at once
//! are more than the real node's two cores can start, and their image is not on it. The bench
//! registers a Node that it keeps Ready by renewing its Lease (as a kubelet's heartbeat does),
//! taints it so nothing else lands there, and steers the pods of its namespaces to it with the
//! apiserver's PodNodeSelector and PodTolerationRestriction annotations (`e2e/cluster.sh`
//! enables both). The real scheduler binds the pods, the real job controller counts them; the
//! stand-in only does the kubelet's part once a pod is bound here: it writes the pod's status as
//! a kubelet would when every container exited 0.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use futures::TryStreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt as _};
use serde_json::{Value, json};

/// The node's name, its label and its taint key: one name for the one thing.
pub const NAME: &str = "kosmos-bench-fake-node";
const KEY: &str = "bench.kosmos.io/fake-node";
const FIELD_MANAGER: &str = "kosmos-bench";

/// The node's heartbeat: how often its Lease is renewed. The node lifecycle controller marks a
/// node unreachable when its Lease is older than the grace period (40 s by default).
const RENEW: Duration = Duration::from_secs(10);

/// The registered node; its heartbeat stops when dropped. [`FakeNode::remove`] deletes it.
pub struct FakeNode {
    client: Client,
    heartbeat: tokio::task::JoinHandle<()>,
    removed: bool,
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.heartbeat.abort();
        // A run that failed half-way: no Ready node without a kubelet may stay behind.
        if !self.removed {
            kosmos_e2e::cleanup_on_drop(
                &format!("node {NAME}"),
                Duration::from_secs(15),
                || async { delete(kosmos_e2e::host().await?).await },
            );
        }
    }
}

async fn delete(client: Client) -> Result<()> {
    match Api::<Node>::all(client)
        .delete(NAME, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("deleting node {NAME}")),
    }
}

fn now() -> String {
    Timestamp::from_second(Timestamp::now().as_second())
        .unwrap_or_else(|_| Timestamp::now())
        .to_string()
}

/// The status a kubelet reports for a node with room for every pod of the run.
fn node_status() -> Value {
    let capacity =
        json!({"cpu": "1k", "memory": "4Ti", "pods": "100k", "ephemeral-storage": "100Ti"});
    json!({"status": {
        "capacity": capacity,
        "allocatable": capacity,
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "KosmosBenchHeartbeat",
            "message": "kept Ready by kosmos-bench (no kubelet: the bench finishes its pods)",
            "lastHeartbeatTime": now(), "lastTransitionTime": now(),
        }],
        "nodeInfo": {
            "architecture": "amd64", "operatingSystem": "linux", "bootID": "", "containerRuntimeVersion": "",
            "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": "", "machineID": "",
            "osImage": "", "systemUUID": "",
        },
    }})
}

async fn renew(client: &Client, uid: &str) -> Result<()> {
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": NAME, "namespace": "kube-node-lease",
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": NAME, "uid": uid}]},
        "spec": {"holderIdentity": NAME, "leaseDurationSeconds": 40,
            "renewTime": MicroTime(Timestamp::now())},
    });
    Api::<Lease>::namespaced(client.clone(), "kube-node-lease")
        .patch(
            NAME,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(lease),
        )
        .await
        .context("renewing the fake node's Lease")?;
    Ok(())
}

impl FakeNode {
    /// Registers the node (again, if a run before left it), starts its heartbeat, and waits
    /// until the node lifecycle controller has it Ready with no taint but ours.
    pub async fn register(client: &Client) -> Result<Self> {
        let nodes: Api<Node> = Api::all(client.clone());
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": NAME, "labels": {KEY: "true", "kubernetes.io/hostname": NAME, "kubernetes.io/os": "linux"}},
            "spec": {"taints": [{"key": KEY, "value": "true", "effect": "NoSchedule"}]},
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let stored = nodes
            .patch(NAME, &params, &Patch::Apply(node))
            .await
            .with_context(|| format!("registering node {NAME}"))?;
        let uid = stored.uid().context("the apiserver gave the node no uid")?;
        nodes
            .patch_status(NAME, &PatchParams::default(), &Patch::Merge(node_status()))
            .await
            .with_context(|| format!("writing the status of node {NAME}"))?;
        renew(client, &uid).await?;
        let heartbeat = {
            let client = client.clone();
            tokio::spawn(async move {
                let nodes: Api<Node> = Api::all(client.clone());
                let mut round = 0u32;
                loop {
                    tokio::time::sleep(RENEW).await;
                    round += 1;
                    if let Err(e) = renew(&client, &uid).await {
                        eprintln!("fake node: {e:#}");
                    }
                    // The Ready condition too, now and then, as a kubelet does.
                    if round.is_multiple_of(4)
                        && let Err(e) = nodes
                            .patch_status(
                                NAME,
                                &PatchParams::default(),
                                &Patch::Merge(node_status()),
                            )
                            .await
                    {
                        eprintln!("fake node: writing the status of node {NAME}: {e}");
                    }
                }
            })
        };
        let registered = Self {
            client: client.clone(),
            heartbeat,
            removed: false,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let node = nodes.get(NAME).await?;
            let taints: Vec<String> = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .into_iter()
                .flatten()
                .map(|t| t.key.clone())
                .collect();
            let ready = node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if ready && taints == [KEY] {
                return Ok(registered);
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "node {NAME} is not Ready with only taint {KEY} after 60 s (taints: {taints:?})"
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Steers every pod created in namespace `ns` to this node: the namespace's PodNodeSelector
    /// and default-toleration annotations. Waits until a dry-run pod comes back steered, which
    /// also says whether the apiserver runs both admission plugins.
    pub async fn steer(&self, ns: &str) -> Result<()> {
        let toleration =
            json!([{"key": KEY, "operator": "Equal", "value": "true", "effect": "NoSchedule"}]);
        Api::<Namespace>::all(self.client.clone())
            .patch(
                ns,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {
                    "scheduler.alpha.kubernetes.io/node-selector": format!("{KEY}=true"),
                    "scheduler.alpha.kubernetes.io/defaultTolerations": toleration.to_string(),
                }}})),
            )
            .await
            .with_context(|| format!("annotating namespace {ns} for the fake node"))?;
        let probe: Pod = serde_json::from_value(json!({
            "metadata": {"name": "fake-node-probe"},
            "spec": {"containers": [{"name": "x", "image": "registry.invalid/x"}]},
        }))?;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let params = PostParams {
            dry_run: true,
            field_manager: None,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let pod = pods.create(&params, &probe).await?;
            let spec = pod.spec.unwrap_or_default();
            let selected = spec
                .node_selector
                .as_ref()
                .is_some_and(|s| s.get(KEY).map(String::as_str) == Some("true"));
            let tolerated = spec
                .tolerations
                .iter()
                .flatten()
                .any(|t| t.key.as_deref() == Some(KEY));
            if selected && tolerated {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "pods in namespace {ns} are not steered to node {NAME} (nodeSelector {:?}): the \
                     host apiserver needs admission plugins PodNodeSelector and \
                     PodTolerationRestriction (e2e/cluster.sh enables them; restart an older \
                     cluster with `e2e/cluster.sh down && e2e/cluster.sh up`)",
                    spec.node_selector
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The kubelet's part for the pods of `ns` bound to this node: each container exited 0, the
    /// pod Succeeded; and a pod being deleted is removed for good (grace period 0), as a kubelet
    /// does once its containers have stopped. Without that last part, a pod bound after the round
    /// (a target's backlog) and then deleted with its namespace would keep the namespace for
    /// ever. Runs until aborted.
    pub fn finish_pods(&self, ns: &str) -> tokio::task::JoinHandle<()> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let config = watcher::Config::default().fields(&format!("spec.nodeName={NAME}"));
        tokio::spawn(async move {
            let outcome = watcher(pods.clone(), config)
                .applied_objects()
                .try_filter(|pod| {
                    let pending = pod
                        .status
                        .as_ref()
                        .and_then(|s| s.phase.as_deref())
                        .is_none_or(|p| p == "Pending");
                    std::future::ready(pending || pod.metadata.deletion_timestamp.is_some())
                })
                .map_err(anyhow::Error::from)
                .try_for_each_concurrent(32, |pod| {
                    let pods = pods.clone();
                    async move {
                        let name = pod.name_any();
                        let (doing, result) = if pod.metadata.deletion_timestamp.is_some() {
                            let now = DeleteParams {
                                grace_period_seconds: Some(0),
                                ..DeleteParams::default()
                            };
                            ("removing", pods.delete(&name, &now).await.map(|_| ()))
                        } else {
                            let patch = Patch::Strategic(succeeded(&pod));
                            let params = PatchParams::default();
                            let done = pods.patch_status(&name, &params, &patch).await;
                            ("finishing", done.map(|_| ()))
                        };
                        // A pod deleted meanwhile, or a second event for one already done.
                        if let Err(e) = result
                            && !matches!(&e, kube::Error::Api(s) if s.code == 404)
                        {
                            eprintln!("kubelet stand-in: {doing} pod {name}: {e}");
                        }
                        Ok(())
                    }
                })
                .await;
            if let Err(e) = outcome {
                eprintln!("kubelet stand-in: watching pods on {NAME}: {e:#}");
            }
        })
    }

    /// Deletes the node (its Lease goes with it, by owner reference); its pods are gone with
    /// their namespaces by then.
    pub async fn remove(mut self) -> Result<()> {
        self.removed = true;
        delete(self.client.clone()).await
    }
}

/// What a kubelet writes when every container of `pod` has exited 0.
fn succeeded(pod: &Pod) -> Value {
    let now = now();
    let spec = pod.spec.clone().unwrap_or_default();
    let terminated = |c: &k8s_openapi::api::core::v1::Container| {
        json!({
            "name": c.name, "image": c.image, "imageID": "", "ready": false, "restartCount": 0,
            "started": false,
            "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}},
        })
    };
    let init: Vec<Value> = spec
        .init_containers
        .iter()
        .flatten()
        .map(terminated)
        .collect();
    let containers: Vec<Value> = spec.containers.iter().map(terminated).collect();
    let condition = |type_: &str, status: &str| {
        let mut c = BTreeMap::from([
            ("type", json!(type_)),
            ("status", json!(status)),
            ("lastTransitionTime", json!(now)),
        ]);
        if status == "False" {
            c.insert("reason", json!("PodCompleted"));
        }
        c
    };
    json!({"status": {
        "phase": "Succeeded",
        "startTime": now,
        "conditions": [
            condition("Initialized", "True"),
            condition("Ready", "False"),
            condition("ContainersReady", "False"),
        ],
        "initContainerStatuses": init,
        "containerStatuses": containers,
    }})
}
