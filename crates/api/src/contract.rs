//! The contract between the operator and the webhook: how an executor Job is named, labelled
//! and annotated, and what each side may rely on. Both binaries use only these names.
//!
//! The operator creates a *bare* executor Job: labels and annotations below, one container named
//! [`EXECUTOR_CONTAINER`] running [`UNMUTATED_COMMAND`], which fails. The webhook recognises the
//! Job by [`EXECUTOR_LABEL`], replaces the command with the install (or uninstall), adds volumes,
//! mounts and environment, and sets [`INJECTED_ANNOTATION`]. The operator deletes any executor
//! Job that lacks that mark, so a Job the webhook never saw can neither succeed nor count.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sha2::{Digest, Sha256};

use crate::plugin::VirtualClusterPluginSpec;
use crate::validation::is_dns_subdomain;
use crate::virtual_cluster::PluginOption;

/// Label on every executor Job (value `"true"`); the webhook's objectSelector matches it.
pub const EXECUTOR_LABEL: &str = "plugin.kosmos.io/executor";
/// Label: the VirtualCluster the Job works for, as [`label_value`] of its name; the annotation
/// of the same key holds the name in full (see [`name_in`]).
pub const VIRTUAL_CLUSTER_LABEL: &str = "plugin.kosmos.io/virtual-cluster";
/// Label: the VirtualClusterPlugin the Job installs or uninstalls, as [`label_value`] of its
/// name; the annotation of the same key holds the name in full (see [`name_in`]).
pub const PLUGIN_LABEL: &str = "plugin.kosmos.io/plugin";
/// Label: [`Action::Install`] or [`Action::Uninstall`].
pub const ACTION_LABEL: &str = "plugin.kosmos.io/action";
/// Annotation: the plugin's [`spec_hash`] the Job was created for. The webhook refuses a Job
/// whose hash no longer matches the plugin it finds, so an old Job never installs a new spec
/// under an old name.
pub const SPEC_HASH_ANNOTATION: &str = "plugin.kosmos.io/spec-hash";
/// Annotation: the Job's number (1, 2, …) in its plugin's sequence of executor Jobs for one
/// VirtualCluster, over installs, uninstalls and spec hashes: the newest Job has the highest.
pub const ATTEMPT_ANNOTATION: &str = "plugin.kosmos.io/attempt";
/// Annotation: name of the Secret (in the Job's namespace) holding the virtual cluster's
/// kubeconfig under [`KUBECONFIG_SECRET_KEY`].
pub const KUBECONFIG_SECRET_ANNOTATION: &str = "plugin.kosmos.io/kubeconfig-secret";
/// Annotation the webhook sets on every Job it mutated: a hash of what it injected. Its
/// presence is the mark the operator checks; the same value on a Job means the injection is
/// already there (reinvocation), so the webhook returns an empty patch.
pub const INJECTED_ANNOTATION: &str = "plugin.kosmos.io/injected";

/// Annotation the operator sets on an executor Job it had to create under a later attempt's name
/// because the names before were held by Jobs the VirtualCluster does not own: those names,
/// comma-separated, so the plugin's status keeps saying why while it follows the Job.
pub const TAKEN_NAMES_ANNOTATION: &str = "plugin.kosmos.io/taken-names";

/// Annotation on a VirtualCluster: setting it to a new value retries every failed plugin. The
/// operator copies the value onto each executor Job, so it counts failures per retry request.
pub const RETRY_ANNOTATION: &str = "plugin.kosmos.io/retry";
/// Annotation on a VirtualCluster: `"true"` runs uninstall Jobs when it is deleted.
pub const UNINSTALL_ON_DELETE_ANNOTATION: &str = "plugin.kosmos.io/uninstall-on-delete";
/// Finalizer the operator keeps on a VirtualCluster while it has plugin work to clean up.
pub const FINALIZER: &str = "plugin.kosmos.io/cleanup";

/// Name of the executor container in the bare Job.
pub const EXECUTOR_CONTAINER: &str = "executor";
/// Key of the kubeconfig in the operator's kubeconfig Secret and in Kosmos's admin Secret.
pub const KUBECONFIG_SECRET_KEY: &str = "kubeconfig";
/// Field manager of the operator for server-side apply.
pub const OPERATOR_FIELD_MANAGER: &str = "virtual-cluster-operator";
/// Field manager of the webhook (certificate Secret, caBundle).
pub const WEBHOOK_FIELD_MANAGER: &str = "plugin-webhook";

/// What the bare Job runs: it fails on purpose, with a message saying why, so a Job that the
/// webhook did not mutate can never report success.
pub const UNMUTATED_COMMAND: [&str; 3] = [
    "/bin/sh",
    "-c",
    "msg='this executor Job was not mutated by the plugin webhook: check that plugin-webhook is running and its MutatingWebhookConfiguration matches the Job'; \
     echo \"$msg\" >&2; echo \"$msg\" > /dev/termination-log; exit 1",
];

/// Seconds added to a plugin's time limit for the Job's `activeDeadlineSeconds`: the executor
/// applies the limit to the install and success wait itself; this margin covers pulling the image
/// and fetching sources, so the executor's own (clearer) timeout message usually wins.
pub const DEADLINE_MARGIN_SECONDS: i64 = 120;

/// The executor image for plugins that name none (`--executor-image` of the operator): kubectl,
/// helm and kustomize in one image.
pub const DEFAULT_EXECUTOR_IMAGE: &str = "docker.io/alpine/k8s:1.34.1";

/// Whether an executor Job installs or removes a plugin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Install (or upgrade) the plugin.
    Install,
    /// Remove the plugin from the virtual cluster.
    Uninstall,
}

impl Action {
    /// The value of [`ACTION_LABEL`].
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Install => "install",
            Self::Uninstall => "uninstall",
        }
    }

    /// Parses the value of [`ACTION_LABEL`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "install" => Some(Self::Install),
            "uninstall" => Some(Self::Uninstall),
            _ => None,
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Longest label value Kubernetes accepts.
const MAX_LABEL_VALUE: usize = 63;

/// The value a name takes in a label (and so in a label selector). An object name may have 253
/// characters, a label value 63: a name that fits is its own value; a longer one becomes its
/// first 30 characters, `_`, and 32 hex digits of its SHA-256. `_` cannot occur in an object
/// name, so a hashed value never equals another object's name. Every label value of the
/// contract is written by this one function.
pub fn label_value(name: &str) -> String {
    let fits = name.len() <= MAX_LABEL_VALUE
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if fits || name.is_empty() {
        return name.to_owned();
    }
    let hash = short_hash(&[name.as_bytes()], 32);
    let prefix: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
        .take(30)
        .collect();
    let prefix = prefix
        .trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
        .trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    if prefix.is_empty() {
        format!("h_{hash}")
    } else {
        format!("{prefix}_{hash}")
    }
}

/// The full name behind label `key` of an executor Job: the annotation of the same key, which
/// must agree with the label ([`label_value`]); for Jobs made before names moved into
/// annotations, the label itself when it is not a hash. None when neither says it, or they
/// disagree.
pub fn name_in(
    labels: &std::collections::BTreeMap<String, String>,
    annotations: &std::collections::BTreeMap<String, String>,
    key: &str,
) -> Option<String> {
    let label = labels.get(key).filter(|v| !v.is_empty())?;
    match annotations.get(key).filter(|v| !v.is_empty()) {
        Some(name) => (label_value(name) == *label).then(|| name.clone()),
        None => (!label.contains('_')).then(|| label.clone()),
    }
}

/// The identity of one executor Job: every label and annotation the operator writes on it and the
/// webhook and operator read back. The operator builds a Job's metadata from it
/// ([`Self::labels`], [`Self::annotations`]); the webhook and the operator read a Job through
/// [`Self::parse`], once, and pass the typed value on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutorJobId {
    /// Name of the VirtualCluster the Job works for ([`VIRTUAL_CLUSTER_LABEL`]).
    pub virtual_cluster: String,
    /// Name of the VirtualClusterPlugin it installs or uninstalls ([`PLUGIN_LABEL`]).
    pub plugin: String,
    /// Install or uninstall ([`ACTION_LABEL`]).
    pub action: Action,
    /// The plugin's [`spec_hash`] the Job was made for ([`SPEC_HASH_ANNOTATION`]).
    pub spec_hash: String,
    /// The Job's place in its plugin's sequence of Jobs ([`ATTEMPT_ANNOTATION`]).
    pub attempt: u32,
    /// The VirtualCluster's retry request the Job was created under ([`RETRY_ANNOTATION`];
    /// empty when the VirtualCluster has none).
    pub retry: String,
    /// The Secret with the virtual cluster's kubeconfig ([`KUBECONFIG_SECRET_ANNOTATION`]).
    pub kubeconfig_secret: String,
}

/// Why a Job's metadata does not describe an executor Job; names the label or annotation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    /// A label the contract requires is absent or empty.
    #[error("label {0} is missing")]
    MissingLabel(&'static str),
    /// An annotation the contract requires is absent or empty.
    #[error("annotation {0} is missing")]
    MissingAnnotation(&'static str),
    /// A label holds a value the contract does not allow.
    #[error("label {key} is {value:?}, expected {expected}")]
    InvalidLabel {
        /// The label.
        key: &'static str,
        /// What it holds.
        value: String,
        /// What it should hold.
        expected: &'static str,
    },
    /// A name label is not the label value of the name in the annotation of the same key.
    #[error("label {key} does not name {name:?}, the name in annotation {key}")]
    Disagree {
        /// The label (and annotation) key.
        key: &'static str,
        /// The name in the annotation.
        name: String,
    },
    /// An annotation holds a value the contract does not allow.
    #[error("annotation {key} is {value:?}, expected {expected}")]
    InvalidAnnotation {
        /// The annotation.
        key: &'static str,
        /// What it holds.
        value: String,
        /// What it should hold.
        expected: &'static str,
    },
}

/// Label selector of every executor Job (and executor pod: the template carries the label).
pub const EXECUTOR_SELECTOR: &str = "plugin.kosmos.io/executor=true";

impl ExecutorJobId {
    /// The identity of a new Job; its kubeconfig Secret is the operator's for `virtual_cluster`.
    pub fn new(
        virtual_cluster: &str,
        plugin: &str,
        action: Action,
        spec_hash: &str,
        attempt: u32,
        retry: &str,
    ) -> Self {
        Self {
            virtual_cluster: virtual_cluster.to_owned(),
            plugin: plugin.to_owned(),
            action,
            spec_hash: spec_hash.to_owned(),
            attempt,
            retry: retry.to_owned(),
            kubeconfig_secret: kubeconfig_secret_name(virtual_cluster),
        }
    }

    /// The Job's name (see [`job_name`]).
    pub fn job_name(&self) -> String {
        job_name(
            &self.virtual_cluster,
            &self.plugin,
            &self.spec_hash,
            self.action,
            self.attempt,
        )
    }

    /// Label selector of every executor Job of one VirtualCluster.
    pub fn selector(virtual_cluster: &str) -> String {
        format!(
            "{EXECUTOR_SELECTOR},{VIRTUAL_CLUSTER_LABEL}={}",
            label_value(virtual_cluster)
        )
    }

    /// The labels of the Job (and of its pod template).
    pub fn labels(&self) -> BTreeMap<String, String> {
        [
            (EXECUTOR_LABEL, "true".to_owned()),
            (VIRTUAL_CLUSTER_LABEL, label_value(&self.virtual_cluster)),
            (PLUGIN_LABEL, label_value(&self.plugin)),
            (ACTION_LABEL, self.action.as_str().to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// The annotations of the Job.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        [
            // The full names, under the label keys: a label holds a hash of a long name.
            (VIRTUAL_CLUSTER_LABEL, self.virtual_cluster.clone()),
            (PLUGIN_LABEL, self.plugin.clone()),
            (SPEC_HASH_ANNOTATION, self.spec_hash.clone()),
            (ATTEMPT_ANNOTATION, self.attempt.to_string()),
            (KUBECONFIG_SECRET_ANNOTATION, self.kubeconfig_secret.clone()),
            (RETRY_ANNOTATION, self.retry.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// The bare executor Job in `namespace` (without owner; the operator adds the VirtualCluster):
    /// the labels (also on the pod template) and annotations of `self`, one container running
    /// `image` that fails on purpose until the webhook replaces its command, and bounds in time
    /// and retries.
    pub fn bare_job(&self, namespace: &str, timeout_seconds: i64, image: &str) -> Job {
        let labels = self.labels();
        Job {
            metadata: ObjectMeta {
                name: Some(self.job_name()),
                namespace: Some(namespace.to_owned()),
                labels: Some(labels.clone()),
                annotations: Some(self.annotations()),
                ..ObjectMeta::default()
            },
            spec: Some(JobSpec {
                // One pod per Job: the operator retries with a new Job after its own backoff, so
                // every attempt has its own name, status entry and pod log.
                backoff_limit: Some(0),
                active_deadline_seconds: Some(
                    timeout_seconds.saturating_add(DEADLINE_MARGIN_SECONDS),
                ),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        restart_policy: Some("Never".into()),
                        automount_service_account_token: Some(false),
                        containers: vec![Container {
                            name: EXECUTOR_CONTAINER.into(),
                            image: Some(image.to_owned()),
                            command: Some(
                                UNMUTATED_COMMAND.iter().map(|s| (*s).to_owned()).collect(),
                            ),
                            termination_message_policy: Some("FallbackToLogsOnError".into()),
                            ..Container::default()
                        }],
                        ..PodSpec::default()
                    }),
                },
                ..JobSpec::default()
            }),
            status: None,
        }
    }

    /// Reads the identity back from a Job's metadata; the error names the first label or
    /// annotation that is missing or malformed.
    pub fn parse(meta: &ObjectMeta) -> Result<Self, ContractError> {
        let empty = BTreeMap::new();
        let labels = meta.labels.as_ref().unwrap_or(&empty);
        let annotations = meta.annotations.as_ref().unwrap_or(&empty);
        let label = |key: &'static str| -> Result<&String, ContractError> {
            labels
                .get(key)
                .filter(|v| !v.is_empty())
                .ok_or(ContractError::MissingLabel(key))
        };
        let annotation = |key: &'static str| -> Result<&String, ContractError> {
            annotations
                .get(key)
                .filter(|v| !v.is_empty())
                .ok_or(ContractError::MissingAnnotation(key))
        };
        label(EXECUTOR_LABEL)?;
        let name = |key: &'static str| -> Result<String, ContractError> {
            label(key)?;
            name_in(labels, annotations, key).ok_or_else(|| {
                match annotations.get(key).filter(|v| !v.is_empty()) {
                    Some(name) => ContractError::Disagree {
                        key,
                        name: name.clone(),
                    },
                    None => ContractError::MissingAnnotation(key),
                }
            })
        };
        let plugin = name(PLUGIN_LABEL)?;
        let virtual_cluster = name(VIRTUAL_CLUSTER_LABEL)?;
        let action_value = label(ACTION_LABEL)?;
        let action = Action::parse(action_value).ok_or_else(|| ContractError::InvalidLabel {
            key: ACTION_LABEL,
            value: action_value.clone(),
            expected: "install or uninstall",
        })?;
        let spec_hash = annotation(SPEC_HASH_ANNOTATION)?.clone();
        let attempt_value = annotation(ATTEMPT_ANNOTATION)?;
        let attempt = attempt_value
            .parse()
            .map_err(|_| ContractError::InvalidAnnotation {
                key: ATTEMPT_ANNOTATION,
                value: attempt_value.clone(),
                expected: "a whole number",
            })?;
        let kubeconfig_secret = annotation(KUBECONFIG_SECRET_ANNOTATION)?.clone();
        if !is_dns_subdomain(&kubeconfig_secret) {
            return Err(ContractError::InvalidAnnotation {
                key: KUBECONFIG_SECRET_ANNOTATION,
                value: kubeconfig_secret,
                expected: "a Secret name",
            });
        }
        Ok(Self {
            virtual_cluster,
            plugin,
            action,
            spec_hash,
            attempt,
            retry: annotations
                .get(RETRY_ANNOTATION)
                .cloned()
                .unwrap_or_default(),
            kubeconfig_secret,
        })
    }
}

/// Name of the Secret the operator keeps with the virtual cluster's kubeconfig.
pub fn kubeconfig_secret_name(virtual_cluster: &str) -> String {
    let plain = format!("{virtual_cluster}-plugin-kubeconfig");
    if plain.len() <= 253 {
        return plain;
    }
    // Cut, so two long names with the same beginning would share a Secret without the hash.
    let hash = short_hash(&[virtual_cluster.as_bytes()], 16);
    bounded_name(virtual_cluster, &format!("plugin-kubeconfig-{hash}"), 253)
}

/// Name of the Secret in which Kosmos publishes a virtual cluster's admin kubeconfig.
pub fn kosmos_admin_secret_name(virtual_cluster: &str) -> String {
    format!("{virtual_cluster}-admin-config")
}

/// A short, stable hash of a plugin spec: a change of any field changes it.
pub fn spec_hash(spec: &VirtualClusterPluginSpec) -> String {
    // serde writes struct fields in declaration order, so the JSON is canonical for a spec.
    let json = serde_json::to_vec(spec).unwrap_or_default();
    short_hash(&[&json], 16)
}

/// The hash an executor Job is made for ([`SPEC_HASH_ANNOTATION`], `status.plugins[].specHash`):
/// of the plugin's spec and of the VirtualCluster's `pluginOptions`, which every install
/// receives, so a change of either reinstalls the plugin. Without options it is [`spec_hash`], so
/// clusters that set none keep their hashes. An option's `valueFrom` counts by its reference, not
/// the Secret's content (which neither the operator nor the webhook reads).
pub fn install_hash(spec: &VirtualClusterPluginSpec, options: &[PluginOption]) -> String {
    if options.is_empty() {
        return spec_hash(spec);
    }
    let spec_json = serde_json::to_vec(spec).unwrap_or_default();
    let options_json = serde_json::to_vec(options).unwrap_or_default();
    short_hash(&[&spec_json, &options_json], 16)
}

/// The executor Job's name: readable, at most 63 characters (Pods get it as a label value),
/// and the same for the same inputs, so a restarted operator finds its Job instead of creating
/// a second one.
pub fn job_name(
    virtual_cluster: &str,
    plugin: &str,
    spec_hash: &str,
    action: Action,
    attempt: u32,
) -> String {
    let hash = short_hash(
        &[
            virtual_cluster.as_bytes(),
            plugin.as_bytes(),
            spec_hash.as_bytes(),
            action.as_str().as_bytes(),
            attempt.to_string().as_bytes(),
        ],
        8,
    );
    let base = format!("{virtual_cluster}-{plugin}");
    bounded_name(&base, &format!("{}-{hash}", action.as_str()), 63)
}

/// `<base>-<suffix>`, with `base` cut so the whole fits in `max` and still ends in an
/// alphanumeric character.
fn bounded_name(base: &str, suffix: &str, max: usize) -> String {
    let room = max.saturating_sub(suffix.len() + 1);
    let cut: String = base.chars().take(room).collect();
    let cut = cut.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    format!("{cut}-{suffix}")
}

/// Hex of the SHA-256 over the parts (each length-prefixed so `("ab","c") != ("a","bc")`),
/// cut to `len` characters.
pub fn short_hash(parts: &[&[u8]], len: usize) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    let mut hex = hex::encode(hasher.finalize());
    hex.truncate(len);
    hex
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn job_names_are_short_stable_and_distinct() {
        let long = "a".repeat(100);
        let name = job_name(&long, &long, "h", Action::Install, 1);
        assert!(name.len() <= 63, "{name} is {} long", name.len());
        assert_eq!(name, job_name(&long, &long, "h", Action::Install, 1));
        assert_ne!(name, job_name(&long, &long, "h", Action::Install, 2));
        assert_ne!(name, job_name(&long, &long, "h2", Action::Install, 1));
        assert_ne!(name, job_name(&long, &long, "h", Action::Uninstall, 1));
        let short = job_name(
            "tenant1-cluster",
            "apiserver-network-proxy",
            "h",
            Action::Install,
            1,
        );
        assert!(short.starts_with("tenant1-cluster-apiserver-network-proxy-install-"));
    }

    #[test]
    fn names_never_end_in_a_dash_after_cutting() {
        let base = format!("{}-{}", "a".repeat(43), "b".repeat(20));
        let name = job_name(&base, "p", "h", Action::Uninstall, 1);
        assert!(!name.contains("--"), "{name}");
        assert!(name.len() <= 63);
    }

    #[test]
    fn kubeconfig_secret_names_of_long_names_fit_and_differ() {
        assert_eq!(
            kubeconfig_secret_name("tenant1-cluster"),
            "tenant1-cluster-plugin-kubeconfig"
        );
        let a = format!("{}a", "v".repeat(252));
        let b = format!("{}b", "v".repeat(252));
        for name in [&a, &b] {
            let secret = kubeconfig_secret_name(name);
            assert!(secret.len() <= 253, "{} characters", secret.len());
            assert!(crate::validation::is_dns_subdomain(&secret), "{secret}");
        }
        assert_ne!(kubeconfig_secret_name(&a), kubeconfig_secret_name(&b));
    }

    #[test]
    fn label_values_of_long_names_are_short_stable_distinct_hashes() {
        assert_eq!(label_value("tenant1-cluster"), "tenant1-cluster");
        let sixty_three = "a".repeat(63);
        assert_eq!(label_value(&sixty_three), sixty_three);
        let a = format!("{}a", "v.".repeat(126));
        let b = format!("{}b", "v.".repeat(126));
        let (va, vb) = (label_value(&a), label_value(&b));
        assert_ne!(va, vb);
        assert_eq!(va, label_value(&a));
        for v in [&va, &vb, &label_value(&"x".repeat(64))] {
            assert!(v.len() <= 63, "{v}");
            assert!(v.contains('_'), "{v}");
            assert!(
                v.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && v.ends_with(|c: char| c.is_ascii_alphanumeric()),
                "{v}"
            );
        }
    }

    #[test]
    fn names_come_from_annotations_and_must_agree_with_labels() {
        let long = "p".repeat(200);
        let key = PLUGIN_LABEL.to_owned();
        let labels = BTreeMap::from([(key.clone(), label_value(&long))]);
        let annotations = BTreeMap::from([(key.clone(), long.clone())]);
        assert_eq!(name_in(&labels, &annotations, PLUGIN_LABEL), Some(long));
        // A label that is not the annotation's value: neither is believed.
        let other = BTreeMap::from([(key.clone(), "q".repeat(200))]);
        assert_eq!(name_in(&labels, &other, PLUGIN_LABEL), None);
        // Jobs of an older operator: short names in labels only.
        let short = BTreeMap::from([(key.clone(), "dns".to_owned())]);
        assert_eq!(
            name_in(&short, &BTreeMap::new(), PLUGIN_LABEL).as_deref(),
            Some("dns")
        );
        // A hash without its name names nothing.
        assert_eq!(name_in(&labels, &BTreeMap::new(), PLUGIN_LABEL), None);
        assert_eq!(name_in(&BTreeMap::new(), &annotations, PLUGIN_LABEL), None);
    }

    #[test]
    fn spec_hash_follows_every_field() {
        let mut spec = VirtualClusterPluginSpec::default();
        let before = spec_hash(&spec);
        spec.success_state_command = Some("true".into());
        assert_ne!(before, spec_hash(&spec));
        assert_eq!(spec_hash(&spec), spec_hash(&spec.clone()));
    }

    fn id() -> ExecutorJobId {
        ExecutorJobId::new("tenant1-cluster", "dns", Action::Install, "h1", 2, "r")
    }

    fn meta(id: &ExecutorJobId) -> ObjectMeta {
        ObjectMeta {
            labels: Some(id.labels()),
            annotations: Some(id.annotations()),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn executor_job_id_round_trips_through_metadata() {
        let id = id();
        assert_eq!(ExecutorJobId::parse(&meta(&id)), Ok(id.clone()));
        let labels = id.labels();
        assert_eq!(labels[EXECUTOR_LABEL], "true");
        assert_eq!(labels[VIRTUAL_CLUSTER_LABEL], "tenant1-cluster");
        assert_eq!(labels[PLUGIN_LABEL], "dns");
        assert_eq!(labels[ACTION_LABEL], "install");
        let annotations = id.annotations();
        assert_eq!(annotations[SPEC_HASH_ANNOTATION], "h1");
        assert_eq!(annotations[ATTEMPT_ANNOTATION], "2");
        assert_eq!(annotations[RETRY_ANNOTATION], "r");
        assert_eq!(
            annotations[KUBECONFIG_SECRET_ANNOTATION],
            kubeconfig_secret_name("tenant1-cluster")
        );
        assert_eq!(
            id.job_name(),
            job_name("tenant1-cluster", "dns", "h1", Action::Install, 2)
        );
        assert_eq!(EXECUTOR_SELECTOR, format!("{EXECUTOR_LABEL}=true"));
        assert_eq!(
            ExecutorJobId::selector("vc"),
            "plugin.kosmos.io/executor=true,plugin.kosmos.io/virtual-cluster=vc"
        );
    }

    #[test]
    fn parse_names_what_is_missing_or_malformed() {
        type Change = Box<dyn Fn(&mut ObjectMeta)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "label plugin.kosmos.io/plugin is missing",
                Box::new(|m| {
                    m.labels.as_mut().map(|l| l.remove(PLUGIN_LABEL));
                }),
            ),
            (
                "label plugin.kosmos.io/action is \"delete\", expected install or uninstall",
                Box::new(|m| {
                    m.labels
                        .as_mut()
                        .map(|l| l.insert(ACTION_LABEL.into(), "delete".into()));
                }),
            ),
            (
                "annotation plugin.kosmos.io/attempt is \"x\", expected a whole number",
                Box::new(|m| {
                    m.annotations
                        .as_mut()
                        .map(|a| a.insert(ATTEMPT_ANNOTATION.into(), "x".into()));
                }),
            ),
            (
                "annotation plugin.kosmos.io/kubeconfig-secret is missing",
                Box::new(|m| {
                    m.annotations
                        .as_mut()
                        .map(|a| a.remove(KUBECONFIG_SECRET_ANNOTATION));
                }),
            ),
            (
                "annotation plugin.kosmos.io/kubeconfig-secret is \"Not/A/Name\", expected a Secret name",
                Box::new(|m| {
                    m.annotations.as_mut().map(|a| {
                        a.insert(KUBECONFIG_SECRET_ANNOTATION.into(), "Not/A/Name".into())
                    });
                }),
            ),
        ];
        for (expected, change) in cases {
            let mut m = meta(&id());
            change(&mut m);
            let err = ExecutorJobId::parse(&m).map(|_| ()).err();
            assert_eq!(err.map(|e| e.to_string()).as_deref(), Some(expected));
        }
        // The retry request is optional: a VirtualCluster without one gives an empty value.
        let mut m = meta(&id());
        m.annotations.as_mut().map(|a| a.remove(RETRY_ANNOTATION));
        assert_eq!(
            ExecutorJobId::parse(&m).map(|id| id.retry),
            Ok(String::new())
        );
    }

    #[test]
    fn install_hash_follows_the_options_and_is_the_spec_hash_without() {
        let spec = VirtualClusterPluginSpec::default();
        assert_eq!(install_hash(&spec, &[]), spec_hash(&spec));
        let option = |value: &str| PluginOption {
            name: "dnsIP".into(),
            value: Some(value.into()),
            value_from: None,
        };
        let a = install_hash(&spec, &[option("10.96.0.10")]);
        assert_ne!(a, spec_hash(&spec));
        assert_ne!(a, install_hash(&spec, &[option("10.96.0.11")]));
        assert_eq!(a, install_hash(&spec, &[option("10.96.0.10")]));
        assert_eq!(a.len(), 16);
    }

    #[test]
    fn action_round_trips() {
        for a in [Action::Install, Action::Uninstall] {
            assert_eq!(Action::parse(a.as_str()), Some(a));
        }
        assert_eq!(Action::parse("delete"), None);
    }
}
