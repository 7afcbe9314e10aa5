//! The plugin author's loop without a cluster: `plugin-webhook validate` checks plugins and
//! VirtualClusters offline, `plugin-webhook render` prints the executor Job the webhook would
//! make of a plugin. Both run the code the cluster runs: the CRD's own schema (for unknown
//! fields), `kosmos_api`'s validation (the CRD's CEL rules and what CEL cannot express) and the
//! pure [`mutate`](crate::mutation::mutate) of the webhook, on the operator's bare Job.
//!
//! Every finding names the file, the object and the field, so a CI log points at the line to fix.

use std::fmt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kosmos_api::contract::{self, Action, ExecutorJobId};
use kosmos_api::validation::is_dns_subdomain;
use kosmos_api::{
    InvalidSpec, VirtualCluster, VirtualClusterPlugin, validate_plugin, validate_virtual_cluster,
};
use kube::{CustomResourceExt, ResourceExt};
use serde::Deserialize;

use crate::mutation::{Settings, mutate_job};

/// API version of both kinds.
const API_VERSION: &str = "kosmos.io/v1alpha1";
/// Name of the stand-in VirtualCluster when render is given none.
pub const STAND_IN_VIRTUAL_CLUSTER: &str = "example-cluster";
/// Namespace of objects that name none (as kubectl would use).
pub const DEFAULT_NAMESPACE: &str = "default";

/// One YAML document of one input file.
#[derive(Clone, Debug)]
pub struct Document {
    /// Where it came from: `file.yaml`, or `file.yaml#2` for the second document of a file.
    pub source: String,
    /// The document as parsed.
    pub value: serde_json::Value,
}

/// One problem, located by file, object and field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// `file.yaml` or `file.yaml#2`.
    pub source: String,
    /// `VirtualClusterPlugin ns/name`, or empty when the document is not readable as an object.
    pub object: String,
    /// Path of the field, e.g. `spec.pluginSources.yaml.path.pvPath`; empty for the whole object.
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.source)?;
        if !self.object.is_empty() {
            write!(f, " {}:", self.object)?;
        }
        if !self.field.is_empty() {
            write!(f, " {}:", self.field)?;
        }
        write!(f, " {}", self.message)
    }
}

/// An input that cannot be read at all (missing file, unreadable folder): the command cannot
/// run, which CI must tell apart from a finding.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct InputError {
    /// The file or folder.
    pub path: String,
    /// Why it cannot be read.
    pub message: String,
}

/// Reads every document of the given files. A folder stands for its `.yaml`, `.yml` and
/// `.json` files (not recursive), `-` for standard input. A document that is not YAML is a
/// [`Finding`], not an error: the other files are still checked.
pub fn read_inputs(paths: &[PathBuf]) -> Result<(Vec<Document>, Vec<Finding>), InputError> {
    let mut documents = Vec::new();
    let mut findings = Vec::new();
    for path in paths {
        for file in expand(path)? {
            let shown = file.display().to_string();
            let text = if file == Path::new("-") {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map_err(|e| {
                    InputError {
                        path: "-".into(),
                        message: format!("cannot read standard input: {e}"),
                    }
                })?;
                text
            } else {
                std::fs::read_to_string(&file).map_err(|e| InputError {
                    path: shown.clone(),
                    message: format!("cannot read: {e}"),
                })?
            };
            parse_documents(&shown, &text, &mut documents, &mut findings);
        }
    }
    Ok((documents, findings))
}

fn expand(path: &Path) -> Result<Vec<PathBuf>, InputError> {
    if path == Path::new("-") || !path.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let entries = std::fs::read_dir(path).map_err(|e| InputError {
        path: path.display().to_string(),
        message: format!("cannot list the folder: {e}"),
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Splits `text` into documents; empty documents (`---` at the end) are skipped.
pub fn parse_documents(
    source: &str,
    text: &str,
    documents: &mut Vec<Document>,
    findings: &mut Vec<Finding>,
) {
    let mut index = 0;
    for document in serde_yaml::Deserializer::from_str(text) {
        index += 1;
        let shown = if index == 1 {
            source.to_owned()
        } else {
            format!("{source}#{index}")
        };
        match serde_json::Value::deserialize(document) {
            Ok(serde_json::Value::Null) => {}
            Ok(value) => documents.push(Document {
                source: shown,
                value,
            }),
            Err(e) => {
                findings.push(Finding {
                    source: shown,
                    object: String::new(),
                    field: String::new(),
                    message: format!("not valid YAML: {e}"),
                });
                // After a syntax error the rest of the stream cannot be trusted.
                break;
            }
        }
    }
}

/// The kinds this project defines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `VirtualClusterPlugin`.
    Plugin,
    /// `VirtualCluster`.
    VirtualCluster,
}

impl Kind {
    fn of(value: &serde_json::Value) -> Option<Self> {
        match value.get("kind").and_then(|k| k.as_str()) {
            Some("VirtualClusterPlugin") => Some(Self::Plugin),
            Some("VirtualCluster") => Some(Self::VirtualCluster),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Plugin => "VirtualClusterPlugin",
            Self::VirtualCluster => "VirtualCluster",
        }
    }

    fn crd(self) -> CustomResourceDefinition {
        match self {
            Self::Plugin => VirtualClusterPlugin::crd(),
            Self::VirtualCluster => VirtualCluster::crd(),
        }
    }
}

/// A document read as one of our kinds.
#[derive(Clone, Debug)]
pub enum Object {
    /// A plugin, with its namespace filled in.
    Plugin(Box<VirtualClusterPlugin>),
    /// A VirtualCluster, with its namespace filled in.
    VirtualCluster(Box<VirtualCluster>),
}

/// `Kind namespace/name` as messages show an object.
fn object_ref(kind: Kind, value: &serde_json::Value, namespace: &str) -> String {
    let meta = value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("<unnamed>");
    let ns = meta
        .and_then(|m| m.get("namespace"))
        .and_then(|n| n.as_str())
        .unwrap_or(namespace);
    format!("{} {ns}/{name}", kind.name())
}

/// The checks the apiserver makes before any CEL rule, and then the typed reading: the kind's
/// apiVersion, a valid name, no field the CRD's schema does not know (kubectl's default strict
/// field validation refuses those; without it the apiserver silently drops them), and the
/// types. Returns the object, or the findings. `None` for a document of another kind.
pub fn read_object(document: &Document, namespace: &str) -> Option<Result<Object, Vec<Finding>>> {
    let kind = Kind::of(&document.value)?;
    let object = object_ref(kind, &document.value, namespace);
    let finding = |field: &str, message: String| Finding {
        source: document.source.clone(),
        object: object.clone(),
        field: field.to_owned(),
        message,
    };
    let mut findings = Vec::new();
    let api_version = document.value.get("apiVersion").and_then(|v| v.as_str());
    if api_version != Some(API_VERSION) {
        findings.push(finding(
            "apiVersion",
            format!("must be {API_VERSION}, not {api_version:?}"),
        ));
    }
    let meta = document.value.get("metadata");
    match meta.and_then(|m| m.get("name")).and_then(|n| n.as_str()) {
        Some(name) if is_dns_subdomain(name) => {}
        Some(_) => findings.push(finding(
            "metadata.name",
            "must be a lower-case DNS subdomain (a-z, 0-9, '-', '.'), at most 253 characters"
                .into(),
        )),
        None => findings.push(finding("metadata.name", "is required".into())),
    }
    if let Some(ns) = meta
        .and_then(|m| m.get("namespace"))
        .and_then(|n| n.as_str())
        && !kosmos_api::validation::is_dns_label(ns)
    {
        findings.push(finding(
            "metadata.namespace",
            "must be a lower-case DNS label".into(),
        ));
    }
    let crd = kind.crd();
    if let Some(schema) = crd
        .spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
    {
        let mut unknown = Vec::new();
        unknown_fields(&document.value, schema, "", &mut unknown);
        for field in unknown {
            findings.push(finding(
                &field,
                "unknown field: the CRD has no such field (kubectl refuses it; a client without \
                 strict validation loses it silently); check the spelling"
                    .into(),
            ));
        }
    }
    if !findings.is_empty() {
        return Some(Err(findings));
    }
    // Reading text (not a value) makes serde_yaml name the field of a type error.
    let text = match serde_yaml::to_string(&document.value) {
        Ok(text) => text,
        Err(e) => return Some(Err(vec![finding("", format!("cannot be read: {e}"))])),
    };
    let typed = match kind {
        Kind::Plugin => serde_yaml::from_str::<VirtualClusterPlugin>(&text).map(|mut p| {
            p.metadata
                .namespace
                .get_or_insert_with(|| namespace.to_owned());
            Object::Plugin(Box::new(p))
        }),
        Kind::VirtualCluster => serde_yaml::from_str::<VirtualCluster>(&text).map(|mut vc| {
            vc.metadata
                .namespace
                .get_or_insert_with(|| namespace.to_owned());
            Object::VirtualCluster(Box::new(vc))
        }),
    };
    Some(typed.map_err(|e| {
        // serde_yaml says `spec.timeoutSeconds: invalid type: ...`: split off the field.
        let text = e.to_string();
        let (mut field, message) = match text.split_once(": ") {
            Some((field, message)) if !field.contains(' ') => {
                (field.to_owned(), message.to_owned())
            }
            _ => (String::new(), text),
        };
        // "missing field `spec`" is about the field itself, not its parent.
        if let Some(missing) = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            field = if field.is_empty() {
                missing.to_owned()
            } else {
                format!("{field}.{missing}")
            };
        }
        vec![finding(&field, message)]
    }))
}

/// Appends to `out` the path of every field of `value` that `schema` does not declare, as the
/// apiserver's pruning decides it: below `x-kubernetes-preserve-unknown-fields` anything goes,
/// and `apiVersion`, `kind` and `metadata` at the top are the apiserver's own.
fn unknown_fields(
    value: &serde_json::Value,
    schema: &JSONSchemaProps,
    path: &str,
    out: &mut Vec<String>,
) {
    if schema.x_kubernetes_preserve_unknown_fields == Some(true) {
        return;
    }
    let join = |key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match value {
        serde_json::Value::Object(map) => {
            if let Some(properties) = &schema.properties {
                for (key, child) in map {
                    if path.is_empty() && ["apiVersion", "kind", "metadata"].contains(&key.as_str())
                    {
                        continue;
                    }
                    match properties.get(key) {
                        Some(child_schema) => unknown_fields(child, child_schema, &join(key), out),
                        None => out.push(join(key)),
                    }
                }
            } else if let Some(JSONSchemaPropsOrBool::Schema(child_schema)) =
                &schema.additional_properties
            {
                for (key, child) in map {
                    unknown_fields(child, child_schema, &join(key), out);
                }
            }
        }
        serde_json::Value::Array(items) => {
            if let Some(JSONSchemaPropsOrArray::Schema(item_schema)) = &schema.items {
                for (i, item) in items.iter().enumerate() {
                    unknown_fields(item, item_schema, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// The findings of `kosmos_api`'s validation (the CRD's CEL rules and more), one per field.
fn invalid_findings(source: &str, invalid: InvalidSpec) -> Vec<Finding> {
    invalid
        .errors
        .into_iter()
        .map(|e| Finding {
            source: source.to_owned(),
            object: format!("{} {}", invalid.kind, invalid.name),
            field: e.field,
            message: e.message,
        })
        .collect()
}

/// A denial of the webhook as a finding: its message already names the object and the field.
fn denial_finding(source: &str, object: &str, message: &str) -> Finding {
    let rest = message
        .strip_prefix(object)
        .and_then(|r| r.strip_prefix(": "))
        .unwrap_or(message);
    let (field, message) = match rest.split_once(": ") {
        Some((field, message)) if field.starts_with("spec.") && !field.contains(' ') => {
            (field.to_owned(), message.to_owned())
        }
        _ => (String::new(), rest.to_owned()),
    };
    Finding {
        source: source.to_owned(),
        object: object.to_owned(),
        field,
        message: format!("the webhook would refuse it: {message}"),
    }
}

/// What `validate` found in a set of documents.
#[derive(Debug, Default)]
pub struct Report {
    /// Objects of our kinds that were checked.
    pub checked: usize,
    /// Documents of other kinds, left alone.
    pub skipped: usize,
    /// Every problem; empty means valid.
    pub findings: Vec<Finding>,
}

/// Checks every plugin and VirtualCluster among `documents` as the apiserver (schema and CEL),
/// the operator and the webhook would: a plugin is also turned into an install and an uninstall
/// Job by [`mutate`](crate::mutation::mutate), so a source the webhook would refuse is found here.
pub fn validate(documents: &[Document], namespace: &str, settings: &Settings) -> Report {
    let mut report = Report::default();
    for document in documents {
        let Some(read) = read_object(document, namespace) else {
            report.skipped += 1;
            continue;
        };
        report.checked += 1;
        match read {
            Err(findings) => report.findings.extend(findings),
            Ok(Object::VirtualCluster(vc)) => {
                if let Err(invalid) = validate_virtual_cluster(&vc) {
                    report
                        .findings
                        .extend(invalid_findings(&document.source, invalid));
                }
            }
            Ok(Object::Plugin(plugin)) => {
                if let Err(invalid) = validate_plugin(&plugin) {
                    report
                        .findings
                        .extend(invalid_findings(&document.source, invalid));
                    continue;
                }
                let vc = stand_in_virtual_cluster(&plugin.namespace().unwrap_or_default());
                for action in [Action::Install, Action::Uninstall] {
                    if let Err(denial) =
                        render_job(&plugin, &vc, action, &RenderOptions::new(settings.clone()))
                    {
                        let object = format!(
                            "VirtualClusterPlugin {}/{}",
                            plugin.namespace().unwrap_or_default(),
                            plugin.name_any()
                        );
                        report
                            .findings
                            .push(denial_finding(&document.source, &object, &denial));
                        break;
                    }
                }
            }
        }
    }
    report
}

/// A VirtualCluster that stands for "any cluster" when render is given none.
pub fn stand_in_virtual_cluster(namespace: &str) -> VirtualCluster {
    let mut vc = VirtualCluster::new(STAND_IN_VIRTUAL_CLUSTER, Default::default());
    vc.metadata.namespace = Some(namespace.to_owned());
    vc
}

/// What render needs beyond the plugin and the VirtualCluster.
#[derive(Clone, Debug)]
pub struct RenderOptions {
    /// The webhook's settings (hostPath prefixes).
    pub settings: Settings,
    /// The operator's default executor image, for plugins that name none.
    pub executor_image: String,
}

pub use kosmos_api::contract::DEFAULT_EXECUTOR_IMAGE;

impl RenderOptions {
    /// Options with the operator's default image.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            executor_image: DEFAULT_EXECUTOR_IMAGE.to_owned(),
        }
    }
}

/// The executor Job the webhook makes of `plugin` for `virtual_cluster`: the operator's bare
/// Job (first attempt) with the webhook's patch applied. The error is the webhook's denial.
pub fn render_job(
    plugin: &VirtualClusterPlugin,
    virtual_cluster: &VirtualCluster,
    action: Action,
    options: &RenderOptions,
) -> Result<Job, String> {
    let job = bare_job(plugin, virtual_cluster, action, &options.executor_image);
    mutate_job(&job, plugin, virtual_cluster, &options.settings)
        .map_err(|d| d.0)?
        .apply(&job)
}

/// The operator's bare Job for the first attempt of `action` ([`ExecutorJobId::bare_job`]).
pub fn bare_job(
    plugin: &VirtualClusterPlugin,
    virtual_cluster: &VirtualCluster,
    action: Action,
    default_image: &str,
) -> Job {
    let id = ExecutorJobId::new(
        &virtual_cluster.name_any(),
        &plugin.name_any(),
        action,
        &contract::install_hash(&plugin.spec, virtual_cluster.spec.options()),
        1,
        "",
    );
    let image = plugin
        .spec
        .executor_image
        .as_deref()
        .unwrap_or(default_image);
    id.bare_job(
        &virtual_cluster.namespace().unwrap_or_default(),
        plugin.spec.timeout_seconds(),
        image,
    )
}

/// What render was asked for.
#[derive(Clone, Debug)]
pub struct RenderRequest {
    /// Which plugin, when the files hold several.
    pub plugin: Option<String>,
    /// Which VirtualCluster, when the files hold several.
    pub virtual_cluster: Option<String>,
    /// Install or uninstall.
    pub action: Action,
    /// Namespace for objects that name none.
    pub namespace: String,
    /// Settings and image.
    pub options: RenderOptions,
}

/// Why render printed no Job.
#[derive(Debug)]
pub enum RenderError {
    /// The files hold findings (or not the objects asked for).
    Findings(Vec<Finding>),
    /// The webhook would deny the Job, with this message (it names the object and the field).
    Denied {
        /// The file of the plugin.
        source: String,
        /// The webhook's message, word for word.
        message: String,
    },
}

/// Renders the Job for the one plugin (and at most one VirtualCluster) among `documents`.
pub fn render(documents: &[Document], request: &RenderRequest) -> Result<Job, RenderError> {
    let mut plugins = Vec::new();
    let mut clusters = Vec::new();
    let mut findings = Vec::new();
    for document in documents {
        match read_object(document, &request.namespace) {
            None => {}
            Some(Err(more)) => findings.extend(more),
            Some(Ok(Object::Plugin(p))) => plugins.push((document.source.clone(), p)),
            Some(Ok(Object::VirtualCluster(vc))) => clusters.push((document.source.clone(), vc)),
        }
    }
    if !findings.is_empty() {
        return Err(RenderError::Findings(findings));
    }
    let (source, plugin) = pick(
        "VirtualClusterPlugin",
        plugins,
        request.plugin.as_deref(),
        "--plugin",
    )?;
    let plugin_ns = plugin.namespace().unwrap_or_default();
    let vc = match pick_optional(clusters, request.virtual_cluster.as_deref())? {
        Some((vc_source, vc)) => {
            let vc_ns = vc.namespace().unwrap_or_default();
            if vc_ns != plugin_ns {
                return Err(RenderError::Findings(vec![Finding {
                    source: vc_source,
                    object: format!("VirtualCluster {vc_ns}/{}", vc.name_any()),
                    field: "metadata.namespace".into(),
                    message: format!(
                        "differs from the plugin's namespace {plugin_ns}; the operator looks \
                         plugins up in the VirtualCluster's namespace"
                    ),
                }]));
            }
            *vc
        }
        None => stand_in_virtual_cluster(&plugin_ns),
    };
    render_job(&plugin, &vc, request.action, &request.options)
        .map_err(|message| RenderError::Denied { source, message })
}

fn pick<T>(
    kind: &str,
    found: Vec<(String, Box<T>)>,
    wanted: Option<&str>,
    flag: &str,
) -> Result<(String, Box<T>), RenderError>
where
    T: ResourceExt,
{
    let names: Vec<String> = found.iter().map(|(_, o)| o.name_any()).collect();
    let no_object = |message: String| {
        RenderError::Findings(vec![Finding {
            source: String::from("input"),
            object: String::new(),
            field: String::new(),
            message,
        }])
    };
    match wanted {
        Some(name) => found
            .into_iter()
            .find(|(_, o)| o.name_any() == name)
            .ok_or_else(|| {
                no_object(format!(
                    "no {kind} named {name} (found: {})",
                    names.join(", ")
                ))
            }),
        None if found.len() == 1 => Ok(found
            .into_iter()
            .next()
            .ok_or_else(|| no_object(String::new()))?),
        None if found.is_empty() => Err(no_object(format!("no {kind} in the files"))),
        None => Err(no_object(format!(
            "{} {kind}s in the files ({}); choose one with {flag}",
            names.len(),
            names.join(", ")
        ))),
    }
}

fn pick_optional(
    found: Vec<(String, Box<VirtualCluster>)>,
    wanted: Option<&str>,
) -> Result<Option<(String, Box<VirtualCluster>)>, RenderError> {
    if found.is_empty() && wanted.is_none() {
        return Ok(None);
    }
    pick("VirtualCluster", found, wanted, "--virtual-cluster").map(Some)
}

#[cfg(test)]
mod tests;
