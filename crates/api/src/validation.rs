//! Validation of specs, shared by the operator and the webhook.
//!
//! The CRD carries the same rules as CEL and OpenAPI constraints, so the apiserver rejects most
//! bad input at the door; this module repeats them (and adds the ones CEL cannot express) for
//! objects that reached us some other way: a cluster running Kosmos's own, looser CRD, or an
//! older version of ours. Every error names the field.

use std::collections::BTreeSet;
use std::fmt;

use crate::plugin::{ChartSource, Storage, VirtualClusterPlugin, VirtualClusterPluginSpec};
use crate::virtual_cluster::{
    MAX_OPTION_VALUE_BYTES, PluginOption, VirtualCluster, VirtualClusterSpec,
};

/// One problem with one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `spec.pluginSources.yaml.path.pvPath`.
    pub field: String,
    /// What is wrong, and what is expected.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// All problems of one object, named by kind and name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {name} is invalid: {}", join(.errors))]
pub struct InvalidSpec {
    /// `VirtualClusterPlugin` or `VirtualCluster`.
    pub kind: &'static str,
    /// `namespace/name` of the object.
    pub name: String,
    /// Every problem found, in field order.
    pub errors: Vec<FieldError>,
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Checks a plugin; the error lists every problem.
pub fn validate_plugin(plugin: &VirtualClusterPlugin) -> Result<(), InvalidSpec> {
    let name = plugin.metadata.name.as_deref().unwrap_or_default();
    let mut errors = Vec::new();
    // The apiserver enforces this for every object; an object that reached us otherwise (a test,
    // a fuzzer, a forged review) must not carry a name that labels and messages cannot hold.
    if !name.is_empty() && !is_dns_subdomain(name) {
        errors.push(err(
            "metadata.name",
            "must be a lower-case DNS subdomain of at most 253 characters",
        ));
    }
    errors.extend(plugin_spec_errors(&plugin.spec));
    if plugin.spec.depends_on.iter().any(|d| d.name == name) {
        errors.push(err(
            "spec.dependsOn",
            format!("plugin {name} cannot depend on itself"),
        ));
    }
    finish("VirtualClusterPlugin", &plugin.metadata, errors)
}

/// Checks a VirtualCluster's plugin-related fields; the error lists every problem.
pub fn validate_virtual_cluster(vc: &VirtualCluster) -> Result<(), InvalidSpec> {
    finish(
        "VirtualCluster",
        &vc.metadata,
        virtual_cluster_spec_errors(&vc.spec),
    )
}

fn finish(
    kind: &'static str,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    errors: Vec<FieldError>,
) -> Result<(), InvalidSpec> {
    if errors.is_empty() {
        return Ok(());
    }
    let name = match (&meta.namespace, &meta.name) {
        (Some(ns), Some(n)) => format!("{ns}/{n}"),
        (None, Some(n)) => n.clone(),
        _ => "<unnamed>".to_string(),
    };
    Err(InvalidSpec { kind, name, errors })
}

fn err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// Problems in a plugin spec, without the checks that need the plugin's name.
pub fn plugin_spec_errors(spec: &VirtualClusterPluginSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(cmd) = &spec.success_state_command {
        if cmd.trim().is_empty() {
            errors.push(err(
                "spec.successStateCommand",
                "must not be blank; leave it out to skip the success check",
            ));
        } else if cmd.len() > 8192 {
            errors.push(err(
                "spec.successStateCommand",
                "must be at most 8192 bytes",
            ));
        } else if cmd.contains('\0') {
            // It reaches the executor as an environment variable, which cannot hold a NUL.
            errors.push(err(
                "spec.successStateCommand",
                "must not contain a NUL character",
            ));
        }
    }
    let sources = &spec.plugin_sources;
    if sources.chart.is_none() && sources.yaml.is_none() {
        errors.push(err(
            "spec.pluginSources",
            "at least one of chart or yaml must be set",
        ));
    }
    if let Some(chart) = &sources.chart {
        chart_errors(chart, "spec.pluginSources.chart", &mut errors);
    }
    if let Some(yaml) = &sources.yaml {
        storage_errors(&yaml.path, "spec.pluginSources.yaml.path", &mut errors);
        if let Some(ns) = &yaml.namespace {
            dns_label(
                ns,
                "spec.pluginSources.yaml.namespace",
                "namespace",
                &mut errors,
            );
        }
    }
    let mut seen = BTreeSet::new();
    for (i, dep) in spec.depends_on.iter().enumerate() {
        let field = format!("spec.dependsOn[{i}].name");
        not_empty(&dep.name, &field, &mut errors);
        max_len(&dep.name, 253, &field, &mut errors);
        if !seen.insert(dep.name.as_str()) {
            errors.push(err(field, format!("{} is listed twice", dep.name)));
        }
    }
    if let Some(t) = spec.timeout_seconds
        && !(1..=86400).contains(&t)
    {
        errors.push(err(
            "spec.timeoutSeconds",
            "must be between 1 and 86400 seconds",
        ));
    }
    if let Some(image) = &spec.executor_image
        && (image.trim().is_empty()
            || image.contains(|c: char| c.is_whitespace() || c.is_control())
            || image.len() > 512)
    {
        errors.push(err(
            "spec.executorImage",
            "must be an image reference without spaces or control characters, at most 512 \
             characters; leave it out for the default",
        ));
    }
    errors
}

fn chart_errors(chart: &ChartSource, at: &str, errors: &mut Vec<FieldError>) {
    if chart.repo.is_some() == chart.storage.is_some() {
        errors.push(err(at, "exactly one of repo or storage must be set"));
    }
    if chart.repo.is_some() && chart.name.is_none() {
        errors.push(err(
            at,
            "name (the chart's name in the repository) is required with repo",
        ));
    }
    if chart.version.is_some() && chart.repo.is_none() {
        errors.push(err(at, "version applies only to a chart from repo"));
    }
    if let Some(name) = &chart.name {
        max_len(name, 253, &format!("{at}.name"), errors);
        if !is_chart_name(name) {
            errors.push(err(format!("{at}.name"), CHART_NAME_MESSAGE));
        }
    }
    if let Some(version) = &chart.version {
        max_len(version, 128, &format!("{at}.version"), errors);
        no_control_chars(version, &format!("{at}.version"), errors);
    }
    if let Some(repo) = &chart.repo {
        let field = format!("{at}.repo");
        max_len(repo, 2048, &field, errors);
        no_control_chars(repo, &field, errors);
        if !is_url(repo, &["http://", "https://", "oci://"]) {
            errors.push(err(field, "repo must be an http, https or oci URL"));
        }
    }
    if let Some(storage) = &chart.storage {
        storage_errors(storage, &format!("{at}.storage"), errors);
    }
    if let Some(storage) = &chart.values_file {
        storage_errors(storage, &format!("{at}.valuesFile"), errors);
    }
    if let Some(values) = &chart.values
        && max_len(values, 262_144, &format!("{at}.values"), errors)
    {
        // serde_yaml bounds nesting depth and alias expansion, so a YAML bomb is an error here,
        // not a hang; Helm never sees it.
        match serde_yaml::from_str::<serde_yaml::Value>(values) {
            Ok(serde_yaml::Value::Mapping(_) | serde_yaml::Value::Null) => {}
            Ok(_) => errors.push(err(
                format!("{at}.values"),
                "must be YAML text of a mapping of Helm values, e.g. `replicaCount: 2`",
            )),
            Err(e) => errors.push(err(
                format!("{at}.values"),
                format!("is not valid YAML: {e}"),
            )),
        }
    }
    if let Some(release) = &chart.release_name {
        if release.len() > 53 {
            errors.push(err(
                format!("{at}.releaseName"),
                "must be at most 53 characters (a Helm limit)",
            ));
        }
        dns_label(release, &format!("{at}.releaseName"), "releaseName", errors);
    }
    if let Some(ns) = &chart.namespace {
        dns_label(ns, &format!("{at}.namespace"), "namespace", errors);
    }
}

fn storage_errors(storage: &Storage, at: &str, errors: &mut Vec<FieldError>) {
    let set = [
        storage.pv_path.is_some(),
        storage.host_path.is_some(),
        storage.uri.is_some(),
    ];
    if set.iter().filter(|s| **s).count() != 1 {
        errors.push(err(
            at,
            "exactly one of pvPath, hostPath or uri must be set",
        ));
    }
    if let Some(pv_path) = &storage.pv_path {
        let field = format!("{at}.pvPath");
        max_len(pv_path, 4096, &field, errors);
        no_control_chars(pv_path, &field, errors);
        match pv_path.split_once(':') {
            Some((claim, path)) if is_dns_subdomain(claim) && path.starts_with('/') => {
                no_parent_dirs(path, &field, errors);
            }
            _ => errors.push(err(
                field,
                "pvPath must be <claim>:<absolute path>, e.g. plugin-store-ubuntu-statefulset-0:/pv",
            )),
        }
    }
    if let Some(host_path) = &storage.host_path {
        let field = format!("{at}.hostPath.path");
        max_len(&host_path.path, 4096, &field, errors);
        no_control_chars(&host_path.path, &field, errors);
        if host_path.path.starts_with('/') {
            no_parent_dirs(&host_path.path, &field, errors);
        } else {
            errors.push(err(field, "hostPath.path must be an absolute path"));
        }
        if let Some(node) = &host_path.node_name {
            dns_subdomain(node, &format!("{at}.hostPath.nodeName"), "nodeName", errors);
        }
    }
    if let Some(uri) = &storage.uri {
        let field = format!("{at}.uri");
        max_len(uri, 4096, &field, errors);
        no_control_chars(uri, &field, errors);
        if !is_url(uri, &["http://", "https://"]) {
            errors.push(err(field, "uri must be an http or https URL"));
        }
    }
    if let Some(sha) = &storage.sha256 {
        if storage.uri.is_none() {
            errors.push(err(at, "sha256 applies only to uri"));
        }
        if sha.len() != 64 || !sha.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
            errors.push(err(
                format!("{at}.sha256"),
                "sha256 must be 64 lower-case hex digits",
            ));
        }
    }
}

fn no_parent_dirs(path: &str, field: &str, errors: &mut Vec<FieldError>) {
    if path.split('/').any(|part| part == "..") {
        errors.push(err(field, "path must not contain '..'"));
    }
}

fn virtual_cluster_spec_errors(spec: &VirtualClusterSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(set) = &spec.plugin_set {
        for (list, refs) in [("enabled", &set.enabled), ("disabled", &set.disabled)] {
            let mut seen = BTreeSet::new();
            for (i, r) in refs.iter().enumerate() {
                let field = format!("spec.pluginSet.{list}[{i}].name");
                not_empty(&r.name, &field, &mut errors);
                max_len(&r.name, 253, &field, &mut errors);
                if !seen.insert(r.name.as_str()) {
                    errors.push(err(field, format!("{} is listed twice", r.name)));
                }
            }
        }
        let both: Vec<&str> = set
            .enabled
            .iter()
            .filter(|e| set.disabled.iter().any(|d| d.name == e.name))
            .map(|e| e.name.as_str())
            .collect();
        if !both.is_empty() {
            errors.push(err(
                "spec.pluginSet",
                format!(
                    "a plugin cannot be both in pluginSet.enabled and pluginSet.disabled: {}",
                    both.join(", ")
                ),
            ));
        }
    }
    errors.extend(plugin_option_errors(spec.options()));
    errors
}

/// Whether `name` can be a plugin option's name: it becomes a Helm value key and a ConfigMap
/// key, and reaches the executor's command lines, so only letters, digits, '_' and '-'.
pub fn is_option_name(name: &str) -> bool {
    name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Problems in a VirtualCluster's `spec.pluginOptions`.
pub fn plugin_option_errors(options: &[PluginOption]) -> Vec<FieldError> {
    let mut found = Vec::new();
    let errors = &mut found;
    if options.len() > 64 {
        errors.push(err("spec.pluginOptions", "must have at most 64 items"));
    }
    let mut seen = BTreeSet::new();
    for (i, option) in options.iter().enumerate() {
        let at = format!("spec.pluginOptions[{i}]");
        if !is_option_name(&option.name) {
            errors.push(err(
                format!("{at}.name"),
                "name must start with a letter and hold only letters, digits, '_' and '-'",
            ));
        }
        if !seen.insert(option.name.as_str()) {
            errors.push(err(&at, format!("option {} is listed twice", option.name)));
        }
        if option.value.is_some() == option.value_from.is_some() {
            errors.push(err(&at, "exactly one of value or valueFrom must be set"));
        }
        if let Some(value) = &option.value
            && value.len() > MAX_OPTION_VALUE_BYTES
        {
            errors.push(err(
                format!("{at}.value"),
                format!(
                    "must be at most {MAX_OPTION_VALUE_BYTES} bytes; put a larger value in a \
                     Secret or ConfigMap and use valueFrom"
                ),
            ));
        }
        if let Some(from) = &option.value_from {
            let at = format!("{at}.valueFrom");
            let refs = [
                ("secretKeyRef", &from.secret_key_ref),
                ("configMapKeyRef", &from.config_map_key_ref),
            ];
            if refs.iter().filter(|(_, r)| r.is_some()).count() != 1 {
                errors.push(err(
                    &at,
                    "exactly one of secretKeyRef or configMapKeyRef must be set",
                ));
            }
            for (what, key_ref) in refs {
                let Some(key_ref) = key_ref else { continue };
                dns_subdomain(&key_ref.name, &format!("{at}.{what}.name"), "name", errors);
                let key_ok = !key_ref.key.is_empty()
                    && key_ref.key.len() <= 253
                    && key_ref
                        .key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
                if !key_ok {
                    errors.push(err(
                        format!("{at}.{what}.key"),
                        "key must hold only letters, digits, '-', '_' and '.'",
                    ));
                }
            }
        }
    }
    found
}

fn not_empty(s: &str, field: &str, errors: &mut Vec<FieldError>) {
    if s.is_empty() {
        errors.push(err(field, "name must not be empty"));
    }
}

/// The message of a control character in a path, URL or name (the CRD's CEL rule says the same).
pub const CONTROL_CHARS_MESSAGE: &str = "must not contain control characters";

/// The message of a chart name of the wrong form (the CRD's CEL rule says the same).
pub const CHART_NAME_MESSAGE: &str = "name must start with a letter or digit and hold only \
     letters, digits and . _ - /";

/// Control characters (newline, NUL, escape, DEL…) have no place in a path, URL or name: they
/// reach the executor as environment variables (which cannot hold a NUL) and end up in logs.
fn no_control_chars(s: &str, field: &str, errors: &mut Vec<FieldError>) {
    if s.contains(char::is_control) {
        errors.push(err(field, CONTROL_CHARS_MESSAGE));
    }
}

/// Adds an error when `s` is longer than `max` characters (the CRD's `maxLength` counts
/// characters); returns whether it fits.
fn max_len(s: &str, max: usize, field: &str, errors: &mut Vec<FieldError>) -> bool {
    let fits = s.chars().count() <= max;
    if !fits {
        errors.push(err(field, format!("must be at most {max} characters")));
    }
    fits
}

/// A chart's name as Helm repositories and OCI registries spell it. The first character is never
/// `-`, so the name can never be taken for a flag of `helm`.
pub fn is_chart_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
}

fn is_url(s: &str, schemes: &[&str]) -> bool {
    schemes
        .iter()
        .any(|scheme| s.strip_prefix(scheme).is_some_and(|rest| !rest.is_empty()))
        && !s.contains(char::is_whitespace)
}

/// A lower-case RFC 1123 label: what Kubernetes accepts as a namespace or release name.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// One entry of a watched-namespace list (the operator's `--namespace`, the webhook's
/// `--watch-namespace`), as the flags' value parser: trimmed; empty (from an empty variable or a
/// trailing comma) is kept for [`watched_namespaces`] to drop; anything else must be a namespace
/// name, so that a typo stops the binary at its start instead of watching nothing.
pub fn watched_namespace(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() || is_dns_label(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a namespace name (a lower-case DNS label: a-z, 0-9 and '-', at most 63 characters)"
        ))
    }
}

/// The watched namespaces of a list given on the command line: each once, in order, empty
/// entries dropped. Empty: every namespace.
pub fn watched_namespaces(given: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for ns in given.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        if !out.iter().any(|o| o == ns) {
            out.push(ns.to_owned());
        }
    }
    out
}

/// A lower-case RFC 1123 subdomain: what Kubernetes accepts as most object names.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn dns_label(s: &str, field: &str, what: &str, errors: &mut Vec<FieldError>) {
    if !is_dns_label(s) {
        errors.push(err(field, format!("{what} must be a lower-case DNS label")));
    }
}

fn dns_subdomain(s: &str, field: &str, what: &str, errors: &mut Vec<FieldError>) {
    if !is_dns_subdomain(s) {
        errors.push(err(
            field,
            format!("{what} must be a lower-case DNS subdomain"),
        ));
    }
}
