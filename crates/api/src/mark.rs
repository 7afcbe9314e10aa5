//! The webhook's mark on an executor Job: an HMAC-SHA256 (ring's, no crypto of our own) over what
//! makes the Job what it is, keyed with a secret only the webhook and the operator read.
//!
//! The webhook signs the Job it hands back ([`sign`]); the operator counts a Job only if the mark
//! verifies against one of the keys in the key Secret ([`verify`]). Anyone who can read Jobs sees
//! marks, but a mark is bound to one Job: copied onto another Job (another namespace, name,
//! owner, plugin, spec, attempt, or another command, image, environment or volume), it no longer
//! verifies, and without the key no new one can be made.
//!
//! What is signed ([`message`]) are values the webhook or the operator write verbatim and the
//! apiserver never defaults: the namespace and name, the VirtualCluster owner's uid, the
//! contract's labels and annotations, and per container (init containers too) its name, image,
//! command, args, environment and mounts, the pod's volumes by what they refer to, its affinity
//! and `automountServiceAccountToken`. Other fields (resources, pull secrets, defaults) may
//! differ without breaking the mark.
//!
//! The key Secret holds [`KEY_DATA`] (signs and verifies) and optionally [`PREVIOUS_KEY_DATA`]
//! (verifies only): rotate by moving `key` to `previous` and writing a new `key`.
//!
//! Two versions of the message: `v1` writes every value whole; `v2` (signed since 2026-12) writes
//! a value longer than [`LONG_VALUE`] bytes as its SHA-256. The executor script is most of a
//! Job's signed bytes and the same in every Job, so a signer that knows it ([`KnownValues`])
//! hashes it once per process instead of once per Job. Both versions verify: Jobs signed by a
//! webhook before the upgrade keep counting.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, Secret, Volume};
use ring::hmac;
use ring::rand::{SecureRandom as _, SystemRandom};
use sha2::{Digest as _, Sha256};

use crate::contract;

/// Data key of the key Secret holding the key the webhook signs with.
pub const KEY_DATA: &str = "key";
/// Data key of the key Secret holding the key before the last rotation: marks made with it
/// still verify, nothing new is signed with it.
pub const PREVIOUS_KEY_DATA: &str = "previous";
/// Default name of the key Secret (in the webhook's namespace).
pub const DEFAULT_KEY_SECRET: &str = "plugin-webhook-mark-key";
/// Bytes of a generated key, and the fewest a key may have (the size of the SHA-256 block's
/// security level: a shorter key would be the weak point).
pub const KEY_BYTES: usize = 32;
/// The versions of the message; what a signed mark starts with (an unsigned one, made without a
/// key, starts otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    /// Every value whole (marks signed before 2026-12, still verified).
    V1,
    /// Long values by their SHA-256 (what [`sign`] makes).
    V2,
}

impl Version {
    fn prefix(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        }
    }

    /// Domain separation: these bytes are a mark of this contract and version and nothing else.
    fn domain(self) -> &'static str {
        match self {
            Self::V1 => "kosmos.io/executor-job-mark/v1",
            Self::V2 => "kosmos.io/executor-job-mark/v2",
        }
    }
}

/// In a `v2` message, a value longer than this many bytes is written as its SHA-256 (after its
/// length, so the two forms cannot be confused).
pub const LONG_VALUE: usize = 64;

/// Long values a signer expects in most Jobs, with their SHA-256 computed once: a value equal to
/// one of them is not hashed again. Knowing a value only saves time; the mark is the same.
#[derive(Clone, Debug, Default)]
pub struct KnownValues(Vec<(&'static str, [u8; 32])>);

impl KnownValues {
    /// The digests of `values` (those not longer than [`LONG_VALUE`] are never hashed, and left
    /// out).
    pub fn new(values: &[&'static str]) -> Self {
        Self(
            values
                .iter()
                .filter(|v| v.len() > LONG_VALUE)
                .map(|v| (*v, Sha256::digest(v.as_bytes()).into()))
                .collect(),
        )
    }

    fn digest(&self, value: &str) -> [u8; 32] {
        let known = self
            .0
            .iter()
            .find(|(known, _)| crate::bytes::equal(known.as_bytes(), value.as_bytes()));
        match known {
            Some((_, digest)) => *digest,
            None => Sha256::digest(value.as_bytes()).into(),
        }
    }
}

/// The Secret holding the keys: `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySecret {
    /// Its namespace (the webhook's).
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl std::fmt::Display for KeySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One key of the key Secret.
pub struct Key {
    id: String,
    key: hmac::Key,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself.
        f.debug_struct("Key").field("id", &self.id).finish()
    }
}

/// Why a key or a mark is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MarkError {
    /// The key is too short.
    #[error("a mark key needs at least {KEY_BYTES} bytes, this one has {0}")]
    ShortKey(usize),
    /// The system's random source failed.
    #[error("the system's random source failed")]
    Random,
    /// The Job carries no mark.
    #[error("annotation {} is missing", contract::INJECTED_ANNOTATION)]
    Missing,
    /// The mark is not of the signed form (an unsigned mark, or garbage).
    #[error("annotation {} is not a signed mark", contract::INJECTED_ANNOTATION)]
    Unsigned,
    /// No key of the key Secret has this id.
    #[error("annotation {annotation} was signed with key {0}, which the key Secret does not hold", annotation = contract::INJECTED_ANNOTATION)]
    UnknownKey(String),
    /// The signature does not match the Job.
    #[error(
        "annotation {} does not match this Job: it was not made by the webhook for it",
        contract::INJECTED_ANNOTATION
    )]
    Mismatch,
}

impl Key {
    /// A key from the Secret's bytes.
    pub fn new(bytes: &[u8]) -> Result<Self, MarkError> {
        if bytes.len() < KEY_BYTES {
            return Err(MarkError::ShortKey(bytes.len()));
        }
        let digest = Sha256::new()
            .chain_update(b"kosmos.io/executor-job-mark-key-id")
            .chain_update(bytes)
            .finalize();
        let mut id = hex::encode(digest);
        id.truncate(8);
        Ok(Self {
            id,
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        })
    }

    /// A short public name of the key (8 hex digits of a hash of it), written into marks so the
    /// operator knows which key to check and messages can say which one signed.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Fresh random bytes for a new key.
pub fn generate() -> Result<Vec<u8>, MarkError> {
    let mut bytes = vec![0u8; KEY_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| MarkError::Random)?;
    Ok(bytes)
}

/// The keys of a key Secret's data: [`KEY_DATA`] first (the signing key), then
/// [`PREVIOUS_KEY_DATA`] if present. Errors name the data key.
pub fn keys_of(data: &BTreeMap<String, Vec<u8>>) -> Result<Vec<Key>, String> {
    keys_from(|name| data.get(name).map(Vec::as_slice))
}

/// [`keys_of`] the Secret as the API returns it.
pub fn keys_of_secret(secret: &Secret) -> Result<Vec<Key>, String> {
    keys_from(|name| Some(secret.data.as_ref()?.get(name)?.0.as_slice()))
}

fn keys_from<'a>(data: impl Fn(&str) -> Option<&'a [u8]>) -> Result<Vec<Key>, String> {
    let mut keys = Vec::new();
    for name in [KEY_DATA, PREVIOUS_KEY_DATA] {
        match data(name) {
            Some(bytes) => keys.push(Key::new(bytes).map_err(|e| format!("data.{name}: {e}"))?),
            None if name == KEY_DATA => return Err(format!("data.{KEY_DATA} is missing")),
            None => {}
        }
    }
    Ok(keys)
}

/// The mark of `job` under `key`: `v2.<key id>.<hex of the HMAC over [`message`]>`.
pub fn sign(key: &Key, job: &Job) -> String {
    sign_knowing(key, job, &KnownValues::default())
}

/// [`sign`], with the digests of `known` long values taken instead of computed.
pub fn sign_knowing(key: &Key, job: &Job, known: &KnownValues) -> String {
    sign_as(Version::V2, key, job, known)
}

fn sign_as(version: Version, key: &Key, job: &Job, known: &KnownValues) -> String {
    let tag = hmac::sign(&key.key, &message(version, job, known));
    format!(
        "{}.{}.{}",
        version.prefix(),
        key.id,
        hex::encode(tag.as_ref())
    )
}

/// The version, key id and tag of `job`'s mark.
fn parts(job: &Job) -> Result<(Version, &str, &str), MarkError> {
    let mark = job
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(contract::INJECTED_ANNOTATION))
        .filter(|m| !m.is_empty())
        .ok_or(MarkError::Missing)?;
    let mut parts = mark.splitn(3, '.');
    let (Some(prefix), Some(id), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(MarkError::Unsigned);
    };
    let version = [Version::V1, Version::V2]
        .into_iter()
        .find(|v| v.prefix() == prefix)
        .ok_or(MarkError::Unsigned)?;
    Ok((version, id, tag))
}

/// The id of the key `job`'s mark names, if it has a signed mark at all (nothing verified): lets
/// a holder of keys see whether it holds that one before it checks.
pub fn key_id(job: &Job) -> Option<&str> {
    parts(job).ok().map(|(_, id, _)| id)
}

/// Whether `job`'s mark was made by the webhook for this very Job with one of `keys`
/// (constant-time comparison, ring's).
pub fn verify(keys: &[Key], job: &Job) -> Result<(), MarkError> {
    let (version, id, tag) = parts(job)?;
    let tag = hex::decode(tag).map_err(|_| MarkError::Unsigned)?;
    let key = keys
        .iter()
        .find(|k| k.id == id)
        .ok_or_else(|| MarkError::UnknownKey(id.to_owned()))?;
    let message = message(version, job, &KnownValues::default());
    hmac::verify(&key.key, &message, &tag).map_err(|_| MarkError::Mismatch)
}

/// The signed bytes: each value length-prefixed (so no two different Jobs give the same bytes),
/// absent values distinct from empty ones.
fn message(version: Version, job: &Job, known: &KnownValues) -> Vec<u8> {
    let mut m = Message {
        bytes: Vec::with_capacity(1024),
        version,
        known,
    };
    m.str(version.domain());
    let meta = &job.metadata;
    m.opt(meta.namespace.as_deref());
    m.opt(meta.name.as_deref());
    // The VirtualCluster that owns the Job (the operator sets it before the webhook sees the Job;
    // uids are never reused).
    let owner = meta.owner_references.iter().flatten().find(|o| {
        o.controller == Some(true)
            && o.kind == "VirtualCluster"
            && o.api_version.starts_with("kosmos.io/")
    });
    m.opt(owner.map(|o| o.uid.as_str()));
    let empty = BTreeMap::new();
    let labels = meta.labels.as_ref().unwrap_or(&empty);
    let annotations = meta.annotations.as_ref().unwrap_or(&empty);
    for key in [
        contract::EXECUTOR_LABEL,
        contract::VIRTUAL_CLUSTER_LABEL,
        contract::PLUGIN_LABEL,
        contract::ACTION_LABEL,
    ] {
        m.opt(labels.get(key).map(String::as_str));
    }
    for key in [
        contract::VIRTUAL_CLUSTER_LABEL,
        contract::PLUGIN_LABEL,
        contract::SPEC_HASH_ANNOTATION,
        contract::ATTEMPT_ANNOTATION,
        contract::KUBECONFIG_SECRET_ANNOTATION,
        contract::RETRY_ANNOTATION,
    ] {
        m.opt(annotations.get(key).map(String::as_str));
    }
    let pod = job.spec.as_ref().and_then(|s| s.template.spec.as_ref());
    let Some(pod) = pod else {
        m.str("no pod");
        return m.bytes;
    };
    m.json(&pod.automount_service_account_token);
    m.json(&pod.affinity);
    for (kind, containers) in [
        ("init", pod.init_containers.as_deref().unwrap_or_default()),
        ("main", pod.containers.as_slice()),
    ] {
        m.str(kind);
        m.len(containers.len());
        for c in containers {
            container(&mut m, c);
        }
    }
    let volumes = pod.volumes.as_deref().unwrap_or_default();
    m.len(volumes.len());
    for v in volumes {
        volume(&mut m, v);
    }
    m.bytes
}

fn container(m: &mut Message<'_>, c: &Container) {
    m.str(&c.name);
    m.opt(c.image.as_deref());
    for list in [&c.command, &c.args] {
        let list = list.as_deref().unwrap_or_default();
        m.len(list.len());
        for item in list {
            m.str(item);
        }
    }
    let env = c.env.as_deref().unwrap_or_default();
    m.len(env.len());
    for e in env {
        m.str(&e.name);
        m.opt(e.value.as_deref());
        // What the variable refers to, without the fields the apiserver defaults (a fieldRef's
        // apiVersion).
        let from = e.value_from.as_ref();
        m.opt(
            from.and_then(|f| f.secret_key_ref.as_ref())
                .map(|r| r.name.as_str()),
        );
        m.opt(
            from.and_then(|f| f.secret_key_ref.as_ref())
                .map(|r| r.key.as_str()),
        );
        m.opt(
            from.and_then(|f| f.config_map_key_ref.as_ref())
                .map(|r| r.name.as_str()),
        );
        m.opt(
            from.and_then(|f| f.config_map_key_ref.as_ref())
                .map(|r| r.key.as_str()),
        );
        m.opt(
            from.and_then(|f| f.field_ref.as_ref())
                .map(|r| r.field_path.as_str()),
        );
        m.opt(
            from.and_then(|f| f.resource_field_ref.as_ref())
                .map(|r| r.resource.as_str()),
        );
    }
    m.json(&c.env_from);
    let mounts = c.volume_mounts.as_deref().unwrap_or_default();
    m.len(mounts.len());
    for mount in mounts {
        m.str(&mount.name);
        m.str(&mount.mount_path);
        m.opt(mount.sub_path.as_deref());
        m.json(&mount.read_only);
    }
}

/// A volume by what it refers to: the fields the apiserver defaults (a Secret volume's
/// `defaultMode`) stay out.
fn volume(m: &mut Message<'_>, v: &Volume) {
    m.str(&v.name);
    if let Some(s) = &v.secret {
        m.str("secret");
        m.opt(s.secret_name.as_deref());
        m.json(&s.items);
    } else if let Some(c) = &v.persistent_volume_claim {
        m.str("claim");
        m.str(&c.claim_name);
        m.json(&c.read_only);
    } else if let Some(h) = &v.host_path {
        m.str("hostPath");
        m.str(&h.path);
        m.opt(h.type_.as_deref());
    } else if v.empty_dir.is_some() {
        m.str("emptyDir");
    } else {
        // Kinds the webhook never writes: only which kind (their contents get defaults, e.g. a
        // downwardAPI volume's defaultMode and fieldRef apiVersion).
        m.str("other");
        let kind = serde_json::to_value(v)
            .ok()
            .and_then(|value| {
                value
                    .as_object()
                    .and_then(|o| o.keys().find(|k| k.as_str() != "name").cloned())
            })
            .unwrap_or_default();
        m.str(&kind);
    }
}

struct Message<'a> {
    bytes: Vec<u8>,
    version: Version,
    known: &'a KnownValues,
}

impl Message<'_> {
    fn len(&mut self, n: usize) {
        self.bytes.extend_from_slice(&(n as u64).to_be_bytes());
    }
    fn str(&mut self, s: &str) {
        self.len(s.len());
        if self.version == Version::V2 && s.len() > LONG_VALUE {
            let digest = self.known.digest(s);
            self.bytes.extend_from_slice(&digest);
        } else {
            self.bytes.extend_from_slice(s.as_bytes());
        }
    }
    fn opt(&mut self, s: Option<&str>) {
        match s {
            Some(s) => {
                self.bytes.push(1);
                self.str(s);
            }
            None => self.bytes.push(0),
        }
    }
    fn json<T: serde::Serialize>(&mut self, value: &T) {
        // Plain data always serializes; the empty fallback still goes through the length.
        let text = serde_json::to_string(value).unwrap_or_default();
        self.str(&text);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    use super::*;
    use crate::contract::{Action, ExecutorJobId};

    fn key(byte: u8) -> Key {
        Key::new(&[byte; KEY_BYTES]).unwrap()
    }

    fn job() -> Job {
        let id = ExecutorJobId::new("vc", "dns", Action::Install, "h1", 1, "");
        let mut job = id.bare_job("ns", 600, "registry.invalid/executor");
        job.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "kosmos.io/v1alpha1".into(),
            kind: "VirtualCluster".into(),
            name: "vc".into(),
            uid: "uid-1".into(),
            controller: Some(true),
            block_owner_deletion: Some(false),
        }]);
        job
    }

    fn marked(key: &Key, mut job: Job) -> Job {
        let mark = sign(key, &job);
        job.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(contract::INJECTED_ANNOTATION.into(), mark);
        job
    }

    #[test]
    fn a_mark_verifies_for_its_job_and_key_only() {
        let k = key(1);
        let job = marked(&k, job());
        assert_eq!(verify(&[k], &job), Ok(()));
        // Another key with the same id cannot exist; a Secret without the signing key says so.
        assert_eq!(
            verify(&[key(2)], &job),
            Err(MarkError::UnknownKey(key(1).id().to_owned()))
        );
        // Rotation: the old key as `previous` still verifies.
        assert_eq!(verify(&[key(2), key(1)], &job), Ok(()));
        assert_eq!(key_id(&job), Some(key(1).id()));
        assert_eq!(key_id(&self::job()), None, "no mark, no key id");
    }

    #[test]
    fn a_mark_copied_onto_another_job_does_not_verify() {
        let k = key(1);
        let good = marked(&k, job());
        type Change = fn(&mut Job);
        let changes: [(&str, Change); 9] = [
            ("namespace", |j| j.metadata.namespace = Some("other".into())),
            ("name", |j| j.metadata.name = Some("other".into())),
            ("owner", |j| {
                j.metadata.owner_references.as_mut().unwrap()[0].uid = "uid-2".into()
            }),
            ("attempt", |j| {
                j.metadata
                    .annotations
                    .as_mut()
                    .unwrap()
                    .insert(contract::ATTEMPT_ANNOTATION.into(), "2".into());
            }),
            ("spec hash", |j| {
                j.metadata
                    .annotations
                    .as_mut()
                    .unwrap()
                    .insert(contract::SPEC_HASH_ANNOTATION.into(), "h2".into());
            }),
            ("plugin label", |j| {
                j.metadata
                    .labels
                    .as_mut()
                    .unwrap()
                    .insert(contract::PLUGIN_LABEL.into(), "other".into());
            }),
            ("command", |j| {
                let pod = j.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
                pod.containers[0].command = Some(vec!["true".into()]);
            }),
            ("image", |j| {
                let pod = j.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
                pod.containers[0].image = Some("evil".into());
            }),
            ("extra container", |j| {
                let pod = j.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
                let extra = pod.containers[0].clone();
                pod.containers.push(extra);
            }),
        ];
        for (what, change) in changes {
            let mut copy = good.clone();
            change(&mut copy);
            assert_eq!(verify(&[key(1)], &copy), Err(MarkError::Mismatch), "{what}");
        }
        // What the apiserver or the admin may add leaves the mark intact.
        let mut copy = good.clone();
        let pod = copy.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
        pod.dns_policy = Some("ClusterFirst".into());
        pod.containers[0].termination_message_path = Some("/dev/termination-log".into());
        pod.containers[0].resources = Some(Default::default());
        assert_eq!(verify(&[k], &copy), Ok(()));
        // Volumes of kinds the webhook never writes count by kind, so their defaults do not
        // matter; adding one does.
        let mut with_volume = good.clone();
        let pod = with_volume
            .spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap();
        pod.volumes = Some(vec![serde_json::from_value(serde_json::json!({
            "name": "outcome", "downwardAPI": {"items": [{"path": "o", "fieldRef": {"fieldPath": "metadata.name"}}]},
        }))
        .unwrap()]);
        let signed = sign(&key(1), &with_volume);
        with_volume
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(contract::INJECTED_ANNOTATION.into(), signed);
        let mut defaulted = with_volume.clone();
        let pod = defaulted
            .spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap();
        pod.volumes = Some(vec![
            serde_json::from_value(serde_json::json!({
                "name": "outcome", "downwardAPI": {"defaultMode": 420, "items": [{"path": "o",
                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}]},
            }))
            .unwrap(),
        ]);
        assert_eq!(verify(&[key(1)], &defaulted), Ok(()));
        assert_eq!(verify(&[key(1)], &good), Ok(()));
    }

    /// A Job whose command carries a script as long as the executor's.
    fn job_with_script(script: &str) -> Job {
        let mut job = job();
        let pod = job.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
        pod.containers[0].command = Some(vec!["/bin/sh".into(), "-c".into(), script.into()]);
        job
    }

    #[test]
    fn a_signer_that_knows_a_long_value_makes_the_same_mark() {
        static SCRIPT: LazyLock<String> = LazyLock::new(|| "echo install\n".repeat(1000));
        let job = job_with_script(&SCRIPT);
        let known = KnownValues::new(&[SCRIPT.as_str(), "short"]);
        assert_eq!(
            known.0.len(),
            1,
            "a short value is never hashed, so never kept"
        );
        let mark = sign_knowing(&key(1), &job, &known);
        assert!(mark.starts_with("v2."), "{mark}");
        assert_eq!(mark, sign(&key(1), &job));
        // Verifying hashes the script itself: the mark holds.
        let mut marked = job.clone();
        marked
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(contract::INJECTED_ANNOTATION.into(), mark.clone());
        assert_eq!(verify(&[key(1)], &marked), Ok(()));
        // One byte of the long value changed: the digest differs, the mark does not verify,
        // whatever the signer knew.
        let mut changed = job_with_script(&SCRIPT.replacen("install", "instalL", 1));
        changed.metadata.annotations = marked.metadata.annotations.clone();
        assert_eq!(verify(&[key(1)], &changed), Err(MarkError::Mismatch));
        assert_ne!(sign_knowing(&key(1), &changed, &known), mark);
    }

    #[test]
    fn marks_signed_as_v1_still_verify_and_the_version_is_bound() {
        let script = "echo install\n".repeat(100);
        let job = job_with_script(&script);
        let v1 = sign_as(Version::V1, &key(1), &job, &KnownValues::default());
        assert!(v1.starts_with("v1."), "{v1}");
        let with = |mark: &str| {
            let mut j = job.clone();
            j.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(contract::INJECTED_ANNOTATION.into(), mark.to_owned());
            j
        };
        assert_eq!(verify(&[key(1)], &with(&v1)), Ok(()));
        // The same tag claimed for the other version is another message's tag.
        let relabelled = v1.replacen("v1.", "v2.", 1);
        assert_eq!(
            verify(&[key(1)], &with(&relabelled)),
            Err(MarkError::Mismatch)
        );
        let v2 = sign(&key(1), &job);
        assert_ne!(v2.split('.').nth(2), v1.split('.').nth(2));
        assert_eq!(
            verify(&[key(1)], &with(&v2.replacen("v2.", "v1.", 1))),
            Err(MarkError::Mismatch)
        );
        // A v1 mark copied onto another Job is refused as before.
        let mut copy = with(&v1);
        copy.metadata.name = Some("other".into());
        assert_eq!(verify(&[key(1)], &copy), Err(MarkError::Mismatch));
    }

    #[test]
    fn unsigned_and_garbled_marks_are_refused() {
        let mut job = job();
        assert_eq!(verify(&[key(1)], &job), Err(MarkError::Missing));
        for bad in [
            "e2e",
            "v1.abc",
            "v1.abc.zz",
            "v3.abc.00",
            "0123456789abcdef",
        ] {
            job.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(contract::INJECTED_ANNOTATION.into(), bad.into());
            assert!(
                matches!(
                    verify(&[key(1)], &job),
                    Err(MarkError::Unsigned | MarkError::UnknownKey(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn keys_are_long_random_and_never_printed() {
        assert_eq!(Key::new(&[0; 16]).err(), Some(MarkError::ShortKey(16)));
        let (a, b) = (generate().unwrap(), generate().unwrap());
        assert_eq!(a.len(), KEY_BYTES);
        assert_ne!(a, b);
        let k = Key::new(&a).unwrap();
        assert!(!format!("{k:?}").contains(&hex::encode(&a)));
        let data = BTreeMap::from([(PREVIOUS_KEY_DATA.to_owned(), a)]);
        assert_eq!(keys_of(&data).err().as_deref(), Some("data.key is missing"));
    }

    #[test]
    fn a_secrets_keys_are_the_signing_key_then_the_previous_one() {
        let (now, before) = (generate().unwrap(), generate().unwrap());
        let mut secret = Secret::default();
        assert_eq!(
            keys_of_secret(&secret).err().as_deref(),
            Some("data.key is missing")
        );
        secret.data = Some(BTreeMap::from([
            (KEY_DATA.to_owned(), k8s_openapi::ByteString(now.clone())),
            (
                PREVIOUS_KEY_DATA.to_owned(),
                k8s_openapi::ByteString(before.clone()),
            ),
        ]));
        let ids: Vec<String> = keys_of_secret(&secret)
            .unwrap()
            .iter()
            .map(|k| k.id().to_owned())
            .collect();
        let expected = [Key::new(&now).unwrap(), Key::new(&before).unwrap()];
        assert_eq!(ids, expected.map(|k| k.id().to_owned()));
        assert_ne!(ids[0], ids[1]);
    }
}
