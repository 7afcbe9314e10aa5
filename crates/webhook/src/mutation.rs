//! The mutation: a pure function from (bare executor Job, plugin, VirtualCluster, settings) to a
//! JSON patch that turns the Job into an install (or uninstall), or to a denial that names the
//! object and field at fault. No I/O happens here, so every rule is unit-tested.
//!
//! What the patch injects into the executor pod:
//! - one read-only volume per storage: a PersistentVolumeClaim for `pvPath` (mounted at the
//!   first component of its path, so `claim:/pv/sub/x.yaml` is the claim's `sub/x.yaml`), a
//!   hostPath under `/kosmos/host/<n>` (the pod pinned to `nodeName`); `uri` sources are fetched
//!   by the executor into the writable work folder;
//! - the virtual cluster's kubeconfig Secret at `/kosmos/kubeconfig` and `KUBECONFIG`;
//! - an emptyDir work folder at `/kosmos/work` for HOME, Helm's caches and downloads;
//! - environment variables carrying every plugin value, and the command
//!   `/bin/sh -c <executor.sh>`; the script reads only the environment.

use std::collections::{BTreeMap, HashMap};
use std::sync::{LazyLock, Mutex};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    Affinity, Container, EmptyDirVolumeSource, EnvVar, HostPathVolumeSource, NodeAffinity,
    NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PersistentVolumeClaimVolumeSource,
    PodSpec, SecretVolumeSource, Volume, VolumeMount,
};
use kosmos_api::contract::{self, Action, ExecutorJobId};
use kosmos_api::validation::is_dns_label;
use kosmos_api::{Storage, VirtualCluster, VirtualClusterPlugin, validate_plugin};
use kube::ResourceExt;
use serde::Serialize;

use crate::executor_env as env;

/// The executor script: one constant, so what runs is reviewed once and never built from CR
/// values. It is `src/executor.sh` without its comment and blank lines (`build.rs`).
pub const EXECUTOR_SCRIPT: &str = include_str!(concat!(env!("OUT_DIR"), "/executor.sh"));

/// Folder of the kubeconfig Secret volume.
pub const KUBECONFIG_DIR: &str = "/kosmos/kubeconfig";
/// The writable work folder (an emptyDir): HOME, caches, fetched sources, the values file.
pub const WORK_DIR: &str = "/kosmos/work";
/// Parent of the hostPath mounts.
pub const HOST_DIR: &str = "/kosmos/host";

/// Largest inline `values` passed as an environment variable: Linux refuses a single
/// environment string over 128 KiB when the container starts.
pub const MAX_INLINE_VALUES_BYTES: usize = 100 * 1024;

/// Top-level folders a `pvPath` claim may not be mounted over: hiding them would break the
/// executor's tools (or the webhook's own mounts).
const RESERVED_MOUNT_POINTS: &[&str] = &[
    "bin", "boot", "dev", "etc", "kosmos", "lib", "lib32", "lib64", "libx32", "proc", "run",
    "sbin", "sys", "tmp", "usr", "var",
];

const KUBECONFIG_VOLUME: &str = "kosmos-kubeconfig";
const WORK_VOLUME: &str = "kosmos-work";

/// What the webhook may do, beyond what the plugin asks.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// hostPath sources must lie under one of these folders; empty allows no hostPath at all
    /// (`/` allows every path). Closed by default: a hostPath reaches the node's files, the
    /// kubelet's and its credentials included.
    pub allowed_host_path_prefixes: Vec<String>,
    /// `recursiveReadOnly` of the storage mounts.
    pub recursive_read_only: RecursiveReadOnly,
    /// The key the mark is signed with ([`kosmos_api::mark`]); without one the mark is an
    /// unsigned hash of the injection, which the operator does not count (`render`, tests).
    pub mark_key: Option<std::sync::Arc<kosmos_api::mark::Key>>,
}

/// Whether the read-only storage mounts are read-only all the way down: a plain read-only bind
/// mount leaves mounts below it (say a claim or a node folder with something mounted inside)
/// writable. Kubernetes 1.33+ (beta from 1.31) with a runtime that supports it; an older
/// apiserver drops the field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RecursiveReadOnly {
    /// `Enabled`: the pod does not start on a node whose runtime cannot do it.
    Enabled,
    /// `IfPossible`: recursive where the node's runtime can, plain read-only elsewhere.
    #[default]
    IfPossible,
    /// Leave the field out: plain read-only mounts.
    Disabled,
}

impl RecursiveReadOnly {
    /// The value of `volumeMounts[].recursiveReadOnly`.
    pub fn field(self) -> Option<&'static str> {
        match self {
            Self::Enabled => Some("Enabled"),
            Self::IfPossible => Some("IfPossible"),
            Self::Disabled => None,
        }
    }
}

/// Why a Job is refused; the message names the object and the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denial(pub String);

/// The outcome of a successful mutation.
#[derive(Clone, Debug, PartialEq)]
pub struct Mutation {
    /// JSON patch to apply to the Job; empty when the Job already carries this injection.
    pub patch: json_patch::Patch,
    /// The value of [`contract::INJECTED_ANNOTATION`]: a hash of what was injected.
    pub mark: String,
    /// Install or uninstall.
    pub action: Action,
}

impl Mutation {
    /// The patch as the JSON an AdmissionReview answer carries: `serde_json::to_vec(&patch)`
    /// byte for byte, but with the executor script (the patch's largest value by far) pasted in
    /// escaped once per process instead of escaped again for every review.
    pub fn patch_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        self.patch_json_script_at().map(|(json, _)| json)
    }

    /// [`Self::patch_json`], and where in it the escaped script ([`script_json`]) starts, if
    /// it is there: the answer's base64 of that part is encoded once per process.
    pub fn patch_json_script_at(&self) -> Result<(Vec<u8>, Option<usize>), serde_json::Error> {
        use json_patch::{AddOperation, PatchOperation};
        let mut out = Vec::with_capacity(SCRIPT_JSON.len() + 4096);
        let mut script_at = None;
        out.push(b'[');
        for (i, op) in self.patch.0.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            match op {
                PatchOperation::Add(AddOperation { path, value }) => {
                    out.extend_from_slice(br#"{"op":"add","path":"#);
                    serde_json::to_writer(&mut out, path)?;
                    out.extend_from_slice(br#","value":"#);
                    write_value(&mut out, value, &mut script_at)?;
                    out.push(b'}');
                }
                other => serde_json::to_writer(&mut out, other)?,
            }
        }
        out.push(b']');
        Ok((out, script_at))
    }

    /// `job` with the patch applied: the Job the apiserver stores (what `plugin-webhook render`
    /// prints). The error says why the patch does not apply to this Job.
    pub fn apply(&self, job: &Job) -> Result<Job, String> {
        let mut value = serde_json::to_value(job).map_err(|e| e.to_string())?;
        json_patch::patch(&mut value, &self.patch).map_err(|e| e.to_string())?;
        serde_json::from_value(value).map_err(|e| e.to_string())
    }
}

/// Writes `value` as serde_json would, the executor script pre-escaped; `script_at` is set to
/// where the script went (its first copy).
fn write_value(
    out: &mut Vec<u8>,
    value: &serde_json::Value,
    script_at: &mut Option<usize>,
) -> Result<(), serde_json::Error> {
    match value {
        serde_json::Value::String(s)
            if kosmos_api::bytes::equal(s.as_bytes(), EXECUTOR_SCRIPT.as_bytes()) =>
        {
            script_at.get_or_insert(out.len());
            out.extend_from_slice(SCRIPT_JSON.as_bytes());
        }
        serde_json::Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item, script_at)?;
            }
            out.push(b']');
        }
        other => serde_json::to_writer(out, other)?,
    }
    Ok(())
}

/// Everything injected into the pod; its hash is the mark.
#[derive(Clone, Debug, Default, Serialize)]
struct Injection {
    volumes: Vec<Volume>,
    mounts: Vec<VolumeMount>,
    env: Vec<EnvVar>,
    node_name: Option<String>,
    script: &'static str,
}

/// Reads the executor Job's identity from its labels and annotations, once, at the edge; the
/// denial names the Job and the label or annotation at fault.
pub fn parse_job(job: &Job) -> Result<ExecutorJobId, Denial> {
    ExecutorJobId::parse(&job.metadata).map_err(|e| Denial(format!("{}: {e}", job_ref(job))))
}

/// [`parse_job`] then [`mutate`]: for callers that hold only the Job (tests, documentation
/// examples); the admission endpoint parses first because it needs the identity to look up the
/// plugin.
pub fn mutate_job(
    job: &Job,
    plugin: &VirtualClusterPlugin,
    virtual_cluster: &VirtualCluster,
    settings: &Settings,
) -> Result<Mutation, Denial> {
    mutate(job, &parse_job(job)?, plugin, virtual_cluster, settings)
}

/// Turns a bare executor Job (whose identity `id` the caller parsed with [`parse_job`]) into an
/// install or uninstall of `plugin` into `virtual_cluster`.
pub fn mutate(
    job: &Job,
    id: &ExecutorJobId,
    plugin: &VirtualClusterPlugin,
    virtual_cluster: &VirtualCluster,
    settings: &Settings,
) -> Result<Mutation, Denial> {
    let job_ref = job_ref(job);
    let plugin_ref = format!(
        "VirtualClusterPlugin {}/{}",
        plugin.namespace().unwrap_or_default(),
        plugin.name_any()
    );
    if id.plugin != plugin.name_any() {
        return Err(Denial(format!(
            "{job_ref}: label {} does not name {plugin_ref}",
            contract::PLUGIN_LABEL
        )));
    }
    if id.virtual_cluster != virtual_cluster.name_any() {
        return Err(Denial(format!(
            "{job_ref}: label {} does not name VirtualCluster {}",
            contract::VIRTUAL_CLUSTER_LABEL,
            virtual_cluster.name_any()
        )));
    }
    let action = id.action;
    let want_hash = contract::install_hash(&plugin.spec, virtual_cluster.spec.options());
    if id.spec_hash != want_hash {
        // The current hash is not echoed: a caller that is not the apiserver (no mutual TLS)
        // could otherwise learn it and forge a Job for the current spec.
        return Err(Denial(format!(
            "{job_ref}: annotation {} is {}, which is not the current spec of {plugin_ref} with \
             the options of VirtualCluster {}; the Job was made for an older spec or options and \
             the operator will create a new one",
            contract::SPEC_HASH_ANNOTATION,
            id.spec_hash,
            virtual_cluster.name_any()
        )));
    }
    let secret = &id.kubeconfig_secret;

    validate_plugin(plugin).map_err(|e| Denial(e.to_string()))?;
    // The options may come from a looser CRD (Kosmos's own); they reach command lines and file
    // names, so the same rules as ours apply.
    let option_errors =
        kosmos_api::validation::plugin_option_errors(virtual_cluster.spec.options());
    if !option_errors.is_empty() {
        return Err(Denial(
            kosmos_api::InvalidSpec {
                kind: "VirtualCluster",
                name: format!(
                    "{}/{}",
                    virtual_cluster.namespace().unwrap_or_default(),
                    virtual_cluster.name_any()
                ),
                errors: option_errors,
            }
            .to_string(),
        ));
    }

    let injection = build_injection(plugin, virtual_cluster, secret, action, settings)
        .map_err(|e| Denial(format!("{plugin_ref}: {e}")))?;
    let mut mutated = job.clone();
    // A signed mark replaces the unsigned one, which the signature does not cover (the mark
    // annotation is not part of `mark::message`): with a key, the hash of the whole injection
    // would be computed only to be overwritten.
    let unsigned = match &settings.mark_key {
        Some(_) => String::new(),
        None => mark_of(&injection),
    };
    let container = apply(&mut mutated, &injection, &unsigned)
        .map_err(|e| Denial(format!("{job_ref}: {e}")))?;
    // Signed over the Job as it leaves the webhook (the mark itself is not part of what is
    // signed), so the operator can check it against the Job it reads back.
    let mark = match &settings.mark_key {
        Some(key) => {
            let mark = kosmos_api::mark::sign_knowing(key, &mutated, &KNOWN_VALUES);
            set_mark(&mut mutated, &mark);
            mark
        }
        None => unsigned,
    };

    if job.annotations().get(contract::INJECTED_ANNOTATION) == Some(&mark) {
        // Reinvocation: the Job already is what this mutation makes of it (the mark binds it).
        return Ok(Mutation {
            patch: json_patch::Patch(Vec::new()),
            mark,
            action,
        });
    }
    let patch =
        patch::between(job, &mutated, container).map_err(|e| Denial(format!("{job_ref}: {e}")))?;
    Ok(Mutation {
        patch,
        mark,
        action,
    })
}

/// `Job <namespace>/<name>`, for messages; a Job named by the server shows its prefix.
pub fn job_ref(job: &Job) -> String {
    format!(
        "Job {}/{}",
        job.namespace().unwrap_or_default(),
        job_name(job)
    )
}

/// The Job's name, or `<prefix><generated>` when the server is to name it.
pub fn job_name(job: &Job) -> String {
    match (&job.metadata.name, &job.metadata.generate_name) {
        (Some(name), _) if !name.is_empty() => name.clone(),
        (_, Some(prefix)) => format!("{prefix}<generated>"),
        _ => "<unnamed>".to_owned(),
    }
}

fn mark_of(injection: &Injection) -> String {
    let Some(head) = injection_head(injection) else {
        return contract::short_hash(&[&injection_json(injection)], 16);
    };
    // Hashing the script with every review was a quarter of `mutate`'s time; the injections of
    // one plugin into one VirtualCluster repeat, so their marks are kept, by a digest of all
    // the injection but the constant script.
    let key = contract::short_hash(&[&head], 64);
    if let Some(mark) = MARKS.lock().ok().and_then(|marks| marks.get(&key).cloned()) {
        return mark;
    }
    let mark = contract::short_hash(&[&with_script(head)], 16);
    if let Ok(mut marks) = MARKS.lock() {
        if marks.len() >= MAX_MARKS {
            marks.clear();
        }
        marks.insert(key, mark.clone());
    }
    mark
}

/// Marks by a digest of the injection without the script; about 100 bytes each.
static MARKS: LazyLock<Mutex<HashMap<String, String>>> = LazyLock::new(Default::default);

/// Marks kept at most (then all are dropped): a few thousand plugin installs' worth.
const MAX_MARKS: usize = 4096;

/// The executor script's digest for the mark, computed once: hashing it with every review was
/// a tenth of the webhook's CPU under load.
static KNOWN_VALUES: LazyLock<kosmos_api::mark::KnownValues> =
    LazyLock::new(|| kosmos_api::mark::KnownValues::new(&[EXECUTOR_SCRIPT]));

/// The executor script as a JSON string, escaped once: it is most of an injection's bytes.
static SCRIPT_JSON: LazyLock<String> =
    LazyLock::new(|| serde_json::to_string(EXECUTOR_SCRIPT).unwrap_or_default());

/// The executor script as a JSON string (with its quotes), as it appears in every patch.
pub fn script_json() -> &'static str {
    &SCRIPT_JSON
}

/// `serde_json::to_vec(injection)`, byte for byte (the mark is its hash, and marks already on
/// Jobs must keep matching), with the constant script pasted in pre-escaped instead of being
/// escaped again on every review.
fn injection_json(injection: &Injection) -> Vec<u8> {
    match injection_head(injection) {
        Some(head) => with_script(head),
        None => serde_json::to_vec(injection).unwrap_or_default(),
    }
}

/// The JSON of `injection` up to its last field, the script, without the closing brace; `None`
/// when the injection does not carry [`EXECUTOR_SCRIPT`].
fn injection_head(injection: &Injection) -> Option<Vec<u8>> {
    /// [`Injection`] up to its last field, `script`.
    #[derive(Serialize)]
    struct Head<'a> {
        volumes: &'a [Volume],
        mounts: &'a [VolumeMount],
        env: &'a [EnvVar],
        node_name: &'a Option<String>,
    }
    if !kosmos_api::bytes::equal(injection.script.as_bytes(), EXECUTOR_SCRIPT.as_bytes()) {
        return None;
    }
    let head = Head {
        volumes: &injection.volumes,
        mounts: &injection.mounts,
        env: &injection.env,
        node_name: &injection.node_name,
    };
    let mut json = serde_json::to_vec(&head).ok()?;
    (json.pop() == Some(b'}')).then_some(json)
}

/// [`injection_head`] completed with the pre-escaped script.
fn with_script(mut head: Vec<u8>) -> Vec<u8> {
    head.reserve(SCRIPT_JSON.len() + 12);
    head.extend_from_slice(b",\"script\":");
    head.extend_from_slice(SCRIPT_JSON.as_bytes());
    head.push(b'}');
    head
}

/// Which input of the install a storage feeds; names the environment variables.
#[derive(Clone, Copy, Debug)]
enum Role {
    Chart,
    Values,
    Yaml,
}

impl Role {
    fn env(self) -> env::Source {
        match self {
            Self::Chart => env::CHART,
            Self::Values => env::VALUES,
            Self::Yaml => env::YAML,
        }
    }

    fn folder(self) -> &'static str {
        match self {
            Self::Chart => "chart",
            Self::Values => "values",
            Self::Yaml => "yaml",
        }
    }
}

#[derive(Default)]
struct Builder {
    injection: Injection,
    /// pvPath mount point -> (claim, volume name).
    claims: BTreeMap<String, (String, String)>,
    host_paths: usize,
    node_field: Option<String>,
}

impl Builder {
    fn env(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.injection.env.push(EnvVar {
            name: name.into(),
            value: Some(value.into()),
            value_from: None,
        });
    }

    /// Adds `volume`, mounted read-only at `mount_path` (recursively so if `recursive` says).
    fn volume(&mut self, volume: Volume, mount_path: String, recursive: RecursiveReadOnly) {
        self.injection.mounts.push(VolumeMount {
            name: volume.name.clone(),
            mount_path,
            read_only: Some(true),
            recursive_read_only: recursive.field().map(str::to_owned),
            ..VolumeMount::default()
        });
        self.injection.volumes.push(volume);
    }

    /// Makes `storage` available to the executor and sets `<ROLE>_PATH` (and `_URI`, …).
    fn storage(
        &mut self,
        storage: &Storage,
        field: &str,
        role: Role,
        settings: &Settings,
    ) -> Result<(), String> {
        if let Some(pv_path) = &storage.pv_path {
            let field = format!("{field}.pvPath");
            let (claim, path) = pv_path
                .split_once(':')
                .ok_or_else(|| format!("{field}: must be <claim>:<absolute path>"))?;
            // "." would make the mount point "/." (the root); say so rather than guess.
            if path.split('/').any(|part| part == ".") {
                return Err(format!(
                    "{field}: {pv_path:?} contains a '.' folder; write the path without it"
                ));
            }
            let first = path
                .split('/')
                .find(|part| !part.is_empty())
                .ok_or_else(|| {
                    format!(
                        "{field}: {pv_path:?} would mount the claim over /; name a folder, \
                         e.g. {claim}:/pv"
                    )
                })?;
            if RESERVED_MOUNT_POINTS.contains(&first) {
                return Err(format!(
                    "{field}: the claim is mounted at /{first}, which would hide the \
                     executor's /{first}; use another first folder, e.g. {claim}:/pv{}",
                    path.strip_prefix(&format!("/{first}")).unwrap_or_default()
                ));
            }
            let mount_path = format!("/{first}");
            match self.claims.get(&mount_path) {
                Some((other, _)) if other != claim => {
                    return Err(format!(
                        "{field}: claim {claim} and claim {other} would both be mounted at \
                         {mount_path}; give them different first folders"
                    ));
                }
                Some(_) => {}
                None => {
                    let name = format!("kosmos-pv-{}", self.claims.len());
                    self.claims
                        .insert(mount_path.clone(), (claim.to_owned(), name.clone()));
                    self.volume(
                        Volume {
                            name,
                            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                                claim_name: claim.to_owned(),
                                read_only: Some(true),
                            }),
                            ..Volume::default()
                        },
                        mount_path,
                        settings.recursive_read_only,
                    );
                }
            }
            self.env(role.env().path, normalize(path));
        } else if let Some(host_path) = &storage.host_path {
            let field = format!("{field}.hostPath");
            let path = normalize(&host_path.path);
            let allowed = &settings.allowed_host_path_prefixes;
            if allowed.is_empty() {
                return Err(format!(
                    "{field}: this webhook allows no hostPath (its \
                     --allowed-host-path-prefixes is empty); ask the cluster admin to allow a \
                     folder, or store the files on a claim (pvPath) or at a uri"
                ));
            }
            if !allowed.iter().any(|prefix| is_under(&path, prefix)) {
                return Err(format!(
                    "{field}.path: {path} is outside the folders this webhook allows for \
                     hostPath ({}); ask the cluster admin or store the files elsewhere",
                    allowed.join(", ")
                ));
            }
            if let Some(node) = &host_path.node_name {
                match (&self.injection.node_name, &self.node_field) {
                    (Some(other), Some(other_field)) if other != node => {
                        return Err(format!(
                            "{field}.nodeName: {node} differs from {other} in {other_field}; \
                             one executor pod cannot run on two nodes"
                        ));
                    }
                    _ => {
                        self.injection.node_name = Some(node.clone());
                        self.node_field = Some(format!("{field}.nodeName"));
                    }
                }
            }
            let name = format!("kosmos-host-{}", self.host_paths);
            let mount_path = format!("{HOST_DIR}/{}", self.host_paths);
            self.host_paths += 1;
            // A type, so the kubelet checks what is there and never creates a missing path on
            // the node (no type creates nothing itself, but lets the runtime make a folder).
            let type_ = host_path_type(&path, role);
            self.volume(
                Volume {
                    name,
                    host_path: Some(HostPathVolumeSource {
                        path,
                        type_: Some(type_.to_owned()),
                    }),
                    ..Volume::default()
                },
                mount_path.clone(),
                settings.recursive_read_only,
            );
            self.env(role.env().path, mount_path);
        } else if let Some(uri) = &storage.uri {
            let dir = format!("{WORK_DIR}/fetched/{}", role.folder());
            let bare = uri
                .split(['?', '#'])
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            let archive = bare.ends_with(".tgz") || bare.ends_with(".tar.gz");
            let (download, path, unpack) = match role {
                Role::Chart => (
                    format!("{dir}/chart.tgz"),
                    format!("{dir}/chart.tgz"),
                    false,
                ),
                Role::Values => (
                    format!("{dir}/values.yaml"),
                    format!("{dir}/values.yaml"),
                    false,
                ),
                Role::Yaml if archive => (
                    format!("{dir}/manifests.tgz"),
                    format!("{dir}/manifests"),
                    true,
                ),
                Role::Yaml => {
                    let ext = if bare.ends_with(".json") {
                        "json"
                    } else {
                        "yaml"
                    };
                    let file = format!("{dir}/manifests.{ext}");
                    (file.clone(), file, false)
                }
            };
            self.env(role.env().uri, uri.clone());
            if let Some(sha) = &storage.sha256 {
                self.env(role.env().sha256, sha.clone());
            }
            self.env(role.env().download, download);
            if unpack {
                self.env(role.env().unpack, "true");
            }
            self.env(role.env().path, path);
        } else {
            return Err(format!(
                "{field}: exactly one of pvPath, hostPath or uri must be set"
            ));
        }
        Ok(())
    }
}

/// The hostPath `type` of a storage: `File` or `Directory`, both of which fail the pod when the
/// path is missing or of the other kind, rather than create it. A values file is a file; a chart
/// is a file when it is an archive (`.tgz`, `.tar.gz`), else a folder; manifests are a file when
/// they end in `.yaml`, `.yml` or `.json`, else a folder.
fn host_path_type(path: &str, role: Role) -> &'static str {
    let lower = path.to_ascii_lowercase();
    let file = match role {
        Role::Values => true,
        Role::Chart => lower.ends_with(".tgz") || lower.ends_with(".tar.gz"),
        Role::Yaml => [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| lower.ends_with(ext)),
    };
    if file { "File" } else { "Directory" }
}

/// `/a//b/` -> `/a/b`: the form used in mount paths and messages.
fn normalize(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    format!("/{}", parts.join("/"))
}

/// Whether `path` is `prefix` or lies below it (by whole components: /data is not under /dat).
fn is_under(path: &str, prefix: &str) -> bool {
    let prefix = normalize(prefix);
    prefix == "/" || path == prefix || path.starts_with(&format!("{prefix}/"))
}

fn build_injection(
    plugin: &VirtualClusterPlugin,
    virtual_cluster: &VirtualCluster,
    kubeconfig_secret: &str,
    action: Action,
    settings: &Settings,
) -> Result<Injection, String> {
    let spec = &plugin.spec;
    let mut b = Builder::default();
    b.injection.script = EXECUTOR_SCRIPT;
    b.volume(
        Volume {
            name: KUBECONFIG_VOLUME.to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(kubeconfig_secret.to_owned()),
                items: Some(vec![k8s_openapi::api::core::v1::KeyToPath {
                    key: contract::KUBECONFIG_SECRET_KEY.to_owned(),
                    path: contract::KUBECONFIG_SECRET_KEY.to_owned(),
                    mode: None,
                }]),
                optional: Some(false),
                default_mode: None,
            }),
            ..Volume::default()
        },
        KUBECONFIG_DIR.to_owned(),
        // A Secret volume has nothing mounted below it.
        RecursiveReadOnly::Disabled,
    );
    b.injection.volumes.push(Volume {
        name: WORK_VOLUME.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    });
    b.injection.mounts.push(VolumeMount {
        name: WORK_VOLUME.to_owned(),
        mount_path: WORK_DIR.to_owned(),
        ..VolumeMount::default()
    });

    b.env(env::PLUGIN_ACTION, action.as_str());
    b.env(env::PLUGIN_NAME, plugin.name_any());
    b.env(env::VIRTUAL_CLUSTER, virtual_cluster.name_any());
    options::inject(&mut b, virtual_cluster);
    b.env(
        env::PLUGIN_TIMEOUT_SECONDS,
        spec.timeout_seconds().to_string(),
    );
    b.env(env::PLUGIN_WORK_DIR, WORK_DIR);
    b.env(
        env::KUBECONFIG,
        format!("{KUBECONFIG_DIR}/{}", contract::KUBECONFIG_SECRET_KEY),
    );
    // Helm and kubectl write caches and config below HOME/XDG; the image's may be read-only.
    b.env(env::HOME, format!("{WORK_DIR}/home"));
    b.env(env::XDG_CACHE_HOME, format!("{WORK_DIR}/home/.cache"));
    b.env(env::XDG_CONFIG_HOME, format!("{WORK_DIR}/home/.config"));
    b.env(env::XDG_DATA_HOME, format!("{WORK_DIR}/home/.local/share"));

    if let Some(chart) = &spec.plugin_sources.chart {
        let at = "spec.pluginSources.chart";
        let release = match &chart.release_name {
            Some(release) => release.clone(),
            None if plugin.name_any().len() <= 53 && is_dns_label(&plugin.name_any()) => {
                plugin.name_any()
            }
            None => {
                return Err(format!(
                    "{at}.releaseName: the plugin's name {} cannot be a Helm release name \
                     (a lower-case DNS label of at most 53 characters); set releaseName",
                    plugin.name_any()
                ));
            }
        };
        b.env(env::CHART_RELEASE, release);
        b.env(
            env::CHART_NAMESPACE,
            chart.namespace.clone().unwrap_or_else(|| "default".into()),
        );
        if let Some(storage) = &chart.storage {
            b.storage(storage, &format!("{at}.storage"), Role::Chart, settings)?;
        } else {
            if let Some(repo) = &chart.repo {
                b.env(env::CHART_REPO, repo.clone());
            }
            if let Some(name) = &chart.name {
                b.env(env::CHART_NAME, name.clone());
            }
            if let Some(version) = &chart.version {
                b.env(env::CHART_VERSION, version.clone());
            }
        }
        if action == Action::Install {
            if let Some(values_file) = &chart.values_file {
                b.storage(
                    values_file,
                    &format!("{at}.valuesFile"),
                    Role::Values,
                    settings,
                )?;
            }
            if let Some(values) = &chart.values {
                if values.len() > MAX_INLINE_VALUES_BYTES {
                    return Err(format!(
                        "{at}.values: {} bytes is more than the {MAX_INLINE_VALUES_BYTES} an \
                         executor can take inline; move them to valuesFile",
                        values.len()
                    ));
                }
                b.env(env::CHART_VALUES, values.clone());
            }
            if chart.wait {
                b.env(env::CHART_WAIT, "true");
            }
        }
    }
    if let Some(yaml) = &spec.plugin_sources.yaml {
        b.storage(
            &yaml.path,
            "spec.pluginSources.yaml.path",
            Role::Yaml,
            settings,
        )?;
        if let Some(ns) = &yaml.namespace {
            b.env(env::YAML_NAMESPACE, ns.clone());
        }
    }
    if action == Action::Install
        && let Some(command) = &spec.success_state_command
    {
        b.env(env::SUCCESS_STATE_COMMAND, command.clone());
    }
    Ok(b.injection)
}

/// Replaces items with the same name and appends the rest, so applying twice never duplicates.
fn upsert<T: Clone>(list: &mut Option<Vec<T>>, items: &[T], name: impl Fn(&T) -> &str) {
    let list = list.get_or_insert_with(Vec::new);
    for item in items {
        match list.iter_mut().find(|x| name(x) == name(item)) {
            Some(slot) => *slot = item.clone(),
            None => list.push(item.clone()),
        }
    }
}

/// Writes the mark on the Job and its pod template.
fn set_mark(job: &mut Job, mark: &str) {
    job.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(contract::INJECTED_ANNOTATION.to_owned(), mark.to_owned());
    if let Some(spec) = job.spec.as_mut() {
        spec.template
            .metadata
            .get_or_insert_with(Default::default)
            .annotations
            .get_or_insert_with(Default::default)
            .insert(contract::INJECTED_ANNOTATION.to_owned(), mark.to_owned());
    }
}

/// Writes the injection and the mark into `job`: what the patch does, on the typed Job (the
/// patch is computed from the Job before and after). Returns the index of the executor container.
fn apply(job: &mut Job, injection: &Injection, mark: &str) -> Result<usize, String> {
    set_mark(job, mark);
    let spec = job
        .spec
        .as_mut()
        .ok_or_else(|| "spec is missing".to_owned())?;
    let template = &mut spec.template;
    let pod: &mut PodSpec = template
        .spec
        .as_mut()
        .ok_or_else(|| "spec.template.spec is missing".to_owned())?;
    upsert(&mut pod.volumes, &injection.volumes, |v: &Volume| &v.name);
    // The executor talks only to the virtual cluster; a host-cluster token would be a needless
    // credential in a pod that runs plugin-supplied commands.
    pod.automount_service_account_token = Some(false);
    if let Some(node) = &injection.node_name {
        let affinity = pod.affinity.get_or_insert_with(Affinity::default);
        let node_affinity = affinity
            .node_affinity
            .get_or_insert_with(NodeAffinity::default);
        node_affinity.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
            node_selector_terms: vec![NodeSelectorTerm {
                match_fields: Some(vec![NodeSelectorRequirement {
                    key: "metadata.name".to_owned(),
                    operator: "In".to_owned(),
                    values: Some(vec![node.clone()]),
                }]),
                match_expressions: None,
            }],
        });
    }
    let index = pod
        .containers
        .iter()
        .position(|c| c.name == contract::EXECUTOR_CONTAINER)
        .ok_or_else(|| {
            format!(
                "spec.template.spec.containers has no container named {}",
                contract::EXECUTOR_CONTAINER
            )
        })?;
    let container: &mut Container = &mut pod.containers[index];
    container.command = Some(vec![
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        EXECUTOR_SCRIPT.to_owned(),
    ]);
    container.args = None;
    upsert(&mut container.env, &injection.env, |e: &EnvVar| &e.name);
    upsert(
        &mut container.volume_mounts,
        &injection.mounts,
        |m: &VolumeMount| &m.name,
    );
    Ok(index)
}

pub mod options;
mod patch;

#[cfg(test)]
mod tests;
