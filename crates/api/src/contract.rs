//! The contract between the operator and the webhook: how an executor Job is named, labelled
//! and annotated, and what each side may rely on. Both binaries use only these names.
//!
//! The operator creates a *bare* executor Job: labels and annotations below, one container named
//! [`EXECUTOR_CONTAINER`] running [`UNMUTATED_COMMAND`], which fails. The webhook recognises the
//! Job by [`EXECUTOR_LABEL`], replaces the command with the install (or uninstall), adds volumes,
//! mounts and environment, and sets [`INJECTED_ANNOTATION`]. The operator deletes any executor
//! Job that lacks that mark, so a Job the webhook never saw can neither succeed nor count.

use sha2::{Digest, Sha256};

use crate::plugin::VirtualClusterPluginSpec;

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

    #[test]
    fn action_round_trips() {
        for a in [Action::Install, Action::Uninstall] {
            assert_eq!(Action::parse(a.as_str()), Some(a));
        }
        assert_eq!(Action::parse("delete"), None);
    }
}
