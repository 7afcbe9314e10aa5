//! `VirtualCluster`: a Kosmos kube-in-kube cluster, with the fields of Kosmos's published CRD
//! (so replacing that CRD with ours prunes nothing) plus what the plugin system reports.

// kube's printcolumn(...) repeats `type_ = ...` by design; clippy takes it for a duplicate.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::plugin::PluginRef;

/// A virtual Kubernetes cluster whose control plane runs in this (host) cluster.
///
/// Once `status.phase` is `AllNodeReady`, the plugin operator installs the plugins named by
/// `spec.pluginSet` (plus the namespace's default plugins) and then sets `Completed`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "kosmos.io",
    version = "v1alpha1",
    kind = "VirtualCluster",
    namespaced,
    shortname = "vc",
    doc = "A virtual Kubernetes cluster (Kosmos kube-in-kube) and the plugins installed into it.",
    status = "VirtualClusterStatus",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Plugins",
        type_ = "string",
        json_path = ".status.pluginProgress"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.reason",
        priority = "1"
    ),
    printcolumn(name = "Update-Time", type_ = "date", json_path = ".status.updateTime"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.pluginSet) || !has(self.pluginSet.enabled) || !has(self.pluginSet.disabled) || \
     !self.pluginSet.enabled.exists(e, self.pluginSet.disabled.exists(d, d.name == e.name))")
    .message("a plugin cannot be both in pluginSet.enabled and pluginSet.disabled")
    .field_path(".pluginSet"))]
pub struct VirtualClusterSpec {
    /// Admin kubeconfig of the virtual cluster, base64-encoded. Kosmos writes it here and into
    /// the Secret `<name>-admin-config` (key `kubeconfig`); either is enough.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<String>,

    /// External IP of the virtual control plane (Kosmos).
    #[serde(
        default,
        rename = "externalIP",
        skip_serializing_if = "Option::is_none"
    )]
    pub external_ip: Option<String>,

    /// External IPs of the virtual control plane (Kosmos).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_ips: Option<Vec<String>>,

    /// Kosmos's kube-in-kube settings, kept as written; the plugin system does not read them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserved_object")]
    pub kube_in_kube_config: Option<serde_json::Map<String, serde_json::Value>>,

    /// Policies that choose host nodes to promote into the virtual cluster (Kosmos).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote_policies: Option<Vec<PromotePolicy>>,

    /// Nodes and resources promoted into the virtual cluster. The operator's `builtin` readiness
    /// check waits for every named node to be Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote_resources: Option<PromoteResources>,

    /// Which plugins to install (`enabled`) or skip (`disabled`), on top of the namespace's
    /// plugins with `enabledByDefault`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_set: Option<PluginSet>,

    /// Options every plugin install of this cluster receives, as name/value pairs (Kosmos's
    /// field), a value possibly taken from a Secret or ConfigMap of this namespace (`valueFrom`).
    /// Helm sees them as values `kosmos.options.<name>`, a kustomization as ConfigMap
    /// `kosmos-options` in the file `kosmos-options.yaml`; plain YAML takes none. Changing them
    /// reinstalls the cluster's plugins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub plugin_options: Option<Vec<PluginOption>>,
}

/// Plugins to install or skip.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct PluginSet {
    /// Plugins to install, in addition to the default ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub enabled: Vec<PluginRef>,
    /// Default plugins not to install.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub disabled: Vec<PluginRef>,
}

/// Largest `value` of one plugin option: every option reaches the executor as an environment
/// variable, and the container runtime refuses a single one over 128 KiB.
pub const MAX_OPTION_VALUE_BYTES: usize = 32 * 1024;

/// A name/value option for plugins (Kosmos), or a name whose value lives in a Secret or
/// ConfigMap (`valueFrom`), for passwords and tokens that must not sit in the VirtualCluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.value) != has(self.valueFrom)")
    .message("exactly one of value or valueFrom must be set"))]
pub struct PluginOption {
    /// Option name: a letter, then letters, digits, '_' or '-' (it becomes a Helm value key and
    /// a ConfigMap key).
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[A-Za-z][A-Za-z0-9_-]*$')")
        .message("name must start with a letter and hold only letters, digits, '_' and '-'"))]
    pub name: String,
    /// Option value, passed to Helm and kustomize as a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32768))]
    pub value: Option<String>,
    /// Take the value from a key of a Secret or ConfigMap in the VirtualCluster's namespace. The
    /// executor pod mounts it; neither the operator nor the webhook reads or logs it. A change of
    /// its content is used by the next install; change the reference to reinstall now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<OptionValueSource>,
}

/// Where an option's value comes from: exactly one of `secretKeyRef` or `configMapKeyRef`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.secretKeyRef) != has(self.configMapKeyRef)")
    .message("exactly one of secretKeyRef or configMapKeyRef must be set"))]
pub struct OptionValueSource {
    /// A key of a Secret in the VirtualCluster's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeyRef>,
    /// A key of a ConfigMap in the VirtualCluster's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeyRef>,
}

/// One key of a Secret or ConfigMap.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct KeyRef {
    /// Name of the Secret or ConfigMap.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = kube::core::Rule::new(
        "self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')")
        .message("name must be a lower-case DNS subdomain"))]
    pub name: String,
    /// The key; its value must be UTF-8 text.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[-._a-zA-Z0-9]+$')")
        .message("key must hold only letters, digits, '-', '_' and '.'"))]
    pub key: String,
}

impl OptionValueSource {
    /// `Secret <name> key <key>` (or ConfigMap), as messages name it.
    pub fn describe(&self) -> String {
        match (&self.secret_key_ref, &self.config_map_key_ref) {
            (Some(r), _) => format!("Secret {} key {}", r.name, r.key),
            (None, Some(r)) => format!("ConfigMap {} key {}", r.name, r.key),
            (None, None) => "nothing".to_owned(),
        }
    }
}

/// Nodes and resources promoted into the virtual cluster.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PromoteResources {
    /// Nodes promoted into the virtual cluster (Kosmos's form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_infos: Option<Vec<NodeInfo>>,
    /// Names of nodes promoted into the virtual cluster (the design document's form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<String>>,
    /// Resources promoted into the virtual cluster, e.g. `cpu: 10`, `memory: 100Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<BTreeMap<String, Quantity>>,
}

/// A node promoted into the virtual cluster.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    /// Name of the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
}

/// A policy that promotes host nodes by label (Kosmos).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PromotePolicy {
    /// Which nodes qualify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
    /// How many nodes to promote.
    pub node_count: i32,
}

impl PromoteResources {
    /// Every node named in either form, in order, without repeats.
    pub fn node_names(&self) -> Vec<String> {
        let from_infos = self
            .node_infos
            .iter()
            .flatten()
            .filter_map(|n| n.node_name.clone());
        let mut names: Vec<String> = Vec::new();
        for name in from_infos.chain(self.nodes.iter().flatten().cloned()) {
            if !name.is_empty() && !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }
}

/// Phases of a VirtualCluster, as Kosmos defines them. The plugin system adds none: progress
/// and failures go to `status.conditions` and `status.plugins`.
pub mod phase {
    /// Kosmos is creating the control plane.
    pub const PREPARING: &str = "Preparing";
    /// The control plane exists.
    pub const INITIALIZED: &str = "Initialized";
    /// Every promoted node is ready: plugins install now.
    pub const ALL_NODE_READY: &str = "AllNodeReady";
    /// Every plugin has been installed.
    pub const COMPLETED: &str = "Completed";
    /// Kosmos is changing the cluster.
    pub const UPDATING: &str = "Updating";
    /// The cluster is being deleted.
    pub const DELETING: &str = "Deleting";
    /// Nodes have been released.
    pub const ALL_NODE_DELETED: &str = "AllNodeDeleted";
    /// Waiting for resources.
    pub const PENDING: &str = "Pending";
    /// Every phase Kosmos defines.
    pub const ALL: [&str; 8] = [
        PREPARING,
        INITIALIZED,
        ALL_NODE_READY,
        COMPLETED,
        UPDATING,
        DELETING,
        ALL_NODE_DELETED,
        PENDING,
    ];
}

/// Observed state of a VirtualCluster.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualClusterStatus {
    /// Kosmos phase: Preparing, Initialized, AllNodeReady, Completed, Updating, Deleting,
    /// AllNodeDeleted or Pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Why the cluster is in this phase, in a few words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the phase last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<Time>,
    /// Port of the virtual apiserver (Kosmos).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    /// Ports of the virtual control plane's components (Kosmos).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_map: Option<BTreeMap<String, i32>>,
    /// Virtual IPs of the virtual control plane (Kosmos).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip_map: Option<BTreeMap<String, String>>,
    /// Plugin progress as `<succeeded>/<total>`, for `kubectl get vc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_progress: Option<String>,
    /// Conditions of the plugin installation: PluginsResolved, KubeconfigAvailable,
    /// WebhookMutating, PluginsInstalled and (builtin readiness) VirtualClusterReady.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// One entry per plugin the cluster installs (or uninstalls).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub plugins: Vec<PluginStatus>,
}

/// Where one plugin stands in one virtual cluster.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PluginStatus {
    /// Name of the VirtualClusterPlugin.
    pub name: String,
    /// Pending, Installing, Succeeded, Failed, Uninstalling or Uninstalled.
    pub phase: PluginPhase,
    /// Hash of the plugin spec this entry refers to; a change means a reinstall.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_hash: Option<String>,
    /// Name of the current (or last) executor Job in the VirtualCluster's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// Attempts made for the current spec hash.
    #[serde(default)]
    pub attempts: i32,
    /// Last outcome in a few words, from the executor pod's termination message where there is
    /// one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the current attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the last attempt finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// When a failed attempt will be retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry_at: Option<Time>,
}

/// Phase of one plugin in one virtual cluster.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PluginPhase {
    /// Not started: waiting for the cluster, a dependency, or a retry.
    #[default]
    Pending,
    /// An install Job is running.
    Installing,
    /// The install Job succeeded.
    Succeeded,
    /// Attempts are used up; the message says why. Changing the plugin's spec or the retry
    /// annotation starts over.
    Failed,
    /// An uninstall Job is running.
    Uninstalling,
    /// The plugin was removed from the virtual cluster.
    Uninstalled,
}

impl PluginPhase {
    /// The name written in `status.plugins[].phase`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Installing => "Installing",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::Uninstalling => "Uninstalling",
            Self::Uninstalled => "Uninstalled",
        }
    }
}

impl std::fmt::Display for PluginPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl VirtualClusterSpec {
    /// The `pluginOptions`, empty when none are set: what every install receives and what the
    /// install hash covers ([`crate::contract::install_hash`]).
    pub fn options(&self) -> &[PluginOption] {
        self.plugin_options.as_deref().unwrap_or_default()
    }
}

impl VirtualCluster {
    /// The Kosmos phase, or "" when none is set yet.
    pub fn phase(&self) -> &str {
        self.status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("")
    }
}

fn preserved_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Condition types the operator writes in `status.conditions`. Each is `True` when things are
/// well; `False` carries a reason and a message that say what to fix.
pub mod condition {
    /// The plugin set resolved: every named plugin exists, no name is both enabled and
    /// disabled, and `dependsOn` has no cycle.
    pub const PLUGINS_RESOLVED: &str = "PluginsResolved";
    /// The operator has the virtual cluster's kubeconfig (from `spec.kubeconfig` or Kosmos's
    /// admin Secret) in its Secret for executor Jobs.
    pub const KUBECONFIG_AVAILABLE: &str = "KubeconfigAvailable";
    /// The webhook mutates executor Jobs. `False` means a Job arrived without the webhook's mark
    /// and was deleted; the operator retries with backoff.
    pub const WEBHOOK_MUTATING: &str = "WebhookMutating";
    /// Every executor Job that carries a mark carries one the webhook made for it
    /// (`kosmos_api::mark`). Written only once a Job's mark failed to verify: `False` names the
    /// Jobs (never counted; the plugin went on under another Job name), `True` again once they
    /// are gone.
    pub const JOBS_VERIFIED: &str = "JobsVerified";
    /// Every plugin succeeded. `False` with reason `Installing`, `Failed` or `Waiting` while not.
    pub const PLUGINS_INSTALLED: &str = "PluginsInstalled";
    /// (`builtin` readiness only) the virtual API answers and the promoted nodes are Ready.
    pub const VIRTUAL_CLUSTER_READY: &str = "VirtualClusterReady";
}
