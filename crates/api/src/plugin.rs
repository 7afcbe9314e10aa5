//! `VirtualClusterPlugin`: one add-on, described once by a platform team.

// kube's printcolumn(...) repeats `type_ = ...` by design; clippy takes it for a duplicate.
#![allow(clippy::duplicated_attributes)]

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Default for `spec.timeoutSeconds`: install plus success wait.
pub const DEFAULT_TIMEOUT_SECONDS: i64 = 600;

/// A plugin (add-on) that the operator installs into virtual clusters.
///
/// Its sources (`chart`, `yaml`, or both) say what to install. The executor Job that installs it
/// runs in the host cluster and talks to the virtual cluster through its kubeconfig.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "kosmos.io",
    version = "v1alpha1",
    kind = "VirtualClusterPlugin",
    namespaced,
    shortname = "vp",
    doc = "A plugin (add-on) that the operator installs into virtual clusters with an executor Job.",
    printcolumn(
        name = "Default",
        type_ = "boolean",
        json_path = ".spec.enabledByDefault"
    ),
    printcolumn(
        name = "Chart",
        type_ = "string",
        json_path = ".spec.pluginSources.chart.name"
    ),
    printcolumn(
        name = "Version",
        type_ = "string",
        json_path = ".spec.pluginSources.chart.version"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualClusterPluginSpec {
    /// Shell command run in the executor after the install, repeated until it exits 0 or
    /// `timeoutSeconds` runs out. Its exit status is the verdict, not what it prints: a command
    /// that echoes in both branches always succeeds. Runs with KUBECONFIG set to the virtual
    /// cluster. Empty means the install step's own exit status decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8192))]
    pub success_state_command: Option<String>,

    /// What to install: a `chart`, `yaml` manifests, or both (chart first).
    pub plugin_sources: PluginSources,

    /// Install this plugin in every virtual cluster of the namespace unless the VirtualCluster
    /// lists it in `spec.pluginSet.disabled`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub enabled_by_default: bool,

    /// Plugins that must have succeeded before this one starts (same namespace). A missing
    /// plugin or a cycle is reported on the VirtualCluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub depends_on: Vec<PluginRef>,

    /// Time limit in seconds for one attempt: fetching sources, the install and the wait for
    /// `successStateCommand`. Default 600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: Option<i64>,

    /// Container image of the executor (must provide sh, kubectl, helm, kustomize and curl or
    /// wget). Empty means the operator's default image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub executor_image: Option<String>,
}

/// Where a plugin's files come from. With both, the chart is installed first, then the yaml.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.chart) || has(self.yaml)")
    .message("at least one of chart or yaml must be set"))]
pub struct PluginSources {
    /// A Helm chart, from a repository or from storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart: Option<ChartSource>,
    /// Plain manifests (a file, a folder, or a kustomization), applied with kubectl.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yaml: Option<YamlSource>,
}

/// A Helm chart installed with `helm upgrade --install`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.repo) != has(self.storage)")
    .message("exactly one of repo or storage must be set"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.repo) || has(self.name)")
    .message("name (the chart's name in the repository) is required with repo"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.version) || has(self.repo)")
    .message("version applies only to a chart from repo"))]
pub struct ChartSource {
    /// Chart name in `repo`. With `storage`, the chart is the stored folder or archive and
    /// `name` is unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[A-Za-z0-9][A-Za-z0-9._/-]*$')")
        .message("name must start with a letter or digit and hold only letters, digits and . _ - /"))]
    pub name: Option<String>,
    /// Helm repository URL (http, https or oci).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^(https?|oci)://[^\\\\s]+$')")
        .message("repo must be an http, https or oci URL"))]
    #[x_kube(validation = no_control_characters())]
    pub repo: Option<String>,
    /// Chart version in `repo`; empty means the latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = no_control_characters())]
    pub version: Option<String>,
    /// Where the chart (an unpacked folder or a .tgz archive) is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,
    /// Helm values as inline YAML text (a mapping), passed with `--values`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 262144))]
    pub values: Option<String>,
    /// A values file from storage, passed with `--values` before `values`, so `values` wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values_file: Option<Storage>,
    /// Pass `--wait`: Helm waits until the release's resources are ready (within the plugin's
    /// time limit).
    #[serde(default, skip_serializing_if = "is_false")]
    pub wait: bool,
    /// Helm release name. Default: the plugin's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 53))]
    #[x_kube(validation = dns_label("releaseName"))]
    pub release_name: Option<String>,
    /// Namespace in the virtual cluster for the release; created if missing. Default: `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = dns_label("namespace"))]
    pub namespace: Option<String>,
}

/// Plain manifests applied with `kubectl apply` (or `kubectl apply -k` for a kustomization).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct YamlSource {
    /// Where the manifests are stored: one file, or a folder (applied recursively, or with
    /// kustomize when it holds a kustomization.yaml).
    pub path: Storage,
    /// Default namespace in the virtual cluster for manifests that name none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = dns_label("namespace"))]
    pub namespace: Option<String>,
}

/// A storage location: exactly one of `pvPath`, `hostPath` or `uri`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "(has(self.pvPath) ? 1 : 0) + (has(self.hostPath) ? 1 : 0) + (has(self.uri) ? 1 : 0) == 1")
    .message("exactly one of pvPath, hostPath or uri must be set"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.sha256) || has(self.uri)")
    .message("sha256 applies only to uri"))]
pub struct Storage {
    /// `<claim>:<path>`: a PersistentVolumeClaim in the plugin's namespace, mounted read-only at
    /// `<path>` in the executor, e.g. `plugin-store-ubuntu-statefulset-0:/pv`. The files are found
    /// under `<path>` as they were copied into the claim; to point at one file or a sub-folder,
    /// append it: `plugin-store-ubuntu-statefulset-0:/pv/test.yaml`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 4096))]
    #[x_kube(validation = kube::core::Rule::new(
        "self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?:/.*$')")
        .message("pvPath must be <claim>:<absolute path>, e.g. plugin-store-ubuntu-statefulset-0:/pv"))]
    #[x_kube(validation = kube::core::Rule::new("!self.matches('(^|/)\\\\.\\\\.(/|$)')")
        .message("path must not contain '..'"))]
    #[x_kube(validation = no_control_characters())]
    pub pv_path: Option<String>,
    /// A file or folder on a node of the host cluster, mounted read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<HostPath>,
    /// An http or https URL fetched by the executor before the install (object storage is
    /// reached through such URLs). A `.tgz`/`.tar.gz` is unpacked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 8, max = 4096))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^https?://[^\\\\s]+$')")
        .message("uri must be an http or https URL"))]
    #[x_kube(validation = no_control_characters())]
    pub uri: Option<String>,
    /// Expected SHA-256 of the file fetched from `uri`, 64 hex digits; a mismatch fails the
    /// install.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 64, max = 64))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[0-9a-f]{64}$')")
        .message("sha256 must be 64 lower-case hex digits"))]
    pub sha256: Option<String>,
}

/// A path on a host-cluster node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HostPath {
    /// Absolute path of a file or folder on the node.
    #[schemars(length(min = 1, max = 4096))]
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('/')")
        .message("hostPath.path must be an absolute path"))]
    #[x_kube(validation = kube::core::Rule::new("!self.matches('(^|/)\\\\.\\\\.(/|$)')")
        .message("path must not contain '..'"))]
    #[x_kube(validation = no_control_characters())]
    pub path: String,
    /// The node that holds `path`; the executor pod is pinned to it. Empty means any node,
    /// which only works when every node has the files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = kube::core::Rule::new(
        "self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')")
        .message("nodeName must be a lower-case DNS subdomain"))]
    pub node_name: Option<String>,
}

/// A reference to a VirtualClusterPlugin by name, in the namespace of the referring object.
#[derive(
    KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub struct PluginRef {
    /// Name of the VirtualClusterPlugin. Not checked for form here (the design document's own
    /// example says `pluginA`): a name no plugin can have is reported as a missing plugin.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

impl PluginRef {
    /// A reference to the plugin called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }
}

/// CEL rule: `field` is a lower-case DNS label (RFC 1123), as namespaces and Helm releases are.
fn dns_label(field: &str) -> kube::core::Rule {
    kube::core::Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message(format!("{field} must be a lower-case DNS label").as_str())
}

/// CEL rule: no control characters, which would let a value break out of the executor's
/// command line or log lines.
fn no_control_characters() -> kube::core::Rule {
    kube::core::Rule::new("!self.matches('[\\\\x00-\\\\x1f\\\\x7f]')")
        .message("must not contain control characters")
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl VirtualClusterPluginSpec {
    /// The time limit of one attempt, with the default applied.
    pub fn timeout_seconds(&self) -> i64 {
        self.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS)
    }
}
