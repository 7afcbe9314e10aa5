//! The CRDs generated from `crates/api` in the real apiserver: they install, the design
//! document's examples are accepted without losing a field, and the invalid-spec table in
//! `crates/api/testdata/invalid.yaml` is rejected by the apiserver where the table says so; and
//! `plugin-webhook validate` agrees: it accepts what the apiserver accepts and finds every case
//! of the table, naming the same field.

use std::path::PathBuf;

use anyhow::{Context as _, Result, ensure};
use kosmos_e2e::{Cluster, TestNamespace, dynamic_api, host, install_crds, parse_yaml, repo_dir};
use kosmos_webhook::authoring::{self, Document};
use kosmos_webhook::mutation::Settings;
use kube::Client;
use kube::api::{DynamicObject, GroupVersionKind, PostParams};
use kube::core::Status;
use serde::Deserialize;
use serde_json::Value;

/// The webhook's settings with hostPath allowed anywhere (an admin's explicit choice): the
/// design's examples use hostPath.
fn any_host_path() -> Settings {
    Settings {
        allowed_host_path_prefixes: vec!["/".into()],
        ..Settings::default()
    }
}

fn testdata() -> PathBuf {
    repo_dir().join("crates/api/testdata")
}

/// One row of `invalid.yaml`.
#[derive(Debug, Deserialize)]
struct InvalidCase {
    name: String,
    /// The field the error must name.
    field: String,
    /// Part of the error message.
    message: String,
    /// Who rejects it in the apiserver: `cel` (a CEL rule in the CRD, with exactly this message),
    /// `schema` (the OpenAPI schema, in the apiserver's own words), or `none` (the apiserver
    /// accepts it; only the Rust validation in the operator and webhook rejects it).
    apiserver: String,
    object: DynamicObject,
}

/// Creates `object` in `namespace` (POST, as `kubectl create` would). The outer error is a
/// failure of the test itself; the inner one is the apiserver's refusal.
async fn create(
    client: &Client,
    namespace: &str,
    object: &DynamicObject,
) -> Result<Result<DynamicObject, Status>> {
    let types = object
        .types
        .as_ref()
        .context("an object without apiVersion/kind")?;
    let gvk = GroupVersionKind::try_from(types)?;
    let api = dynamic_api(client, &gvk, namespace).await?;
    match api.create(&PostParams::default(), object).await {
        Ok(stored) => Ok(Ok(stored)),
        Err(kube::Error::Api(status)) => Ok(Err(*status)),
        Err(error) => Err(error).context("sending the object to the apiserver"),
    }
}

/// Appends to `lost` every path under `path` whose value in `sent` is missing or different in
/// `stored`: what schema pruning or a wrong type would have dropped. Defaults the apiserver adds
/// are not losses.
fn lost_fields(sent: &Value, stored: &Value, path: &str, lost: &mut Vec<String>) {
    match (sent, stored) {
        (Value::Object(sent), Value::Object(stored)) => {
            for (key, value) in sent {
                let child = format!("{path}.{key}");
                match stored.get(key) {
                    Some(kept) => lost_fields(value, kept, &child, lost),
                    None => lost.push(format!("{child} was dropped")),
                }
            }
        }
        (Value::Array(sent), Value::Array(stored)) if sent.len() == stored.len() => {
            for (i, (value, kept)) in sent.iter().zip(stored).enumerate() {
                lost_fields(value, kept, &format!("{path}[{i}]"), lost);
            }
        }
        _ if sent == stored => {}
        _ => lost.push(format!("{path}: sent {sent}, stored {stored}")),
    }
}

#[tokio::test]
async fn crds_install_and_become_established() -> Result<()> {
    let client = host().await?;
    let mut names = install_crds(&client).await?;
    names.sort();
    ensure!(
        names
            == [
                "virtualclusterplugins.kosmos.io",
                "virtualclusters.kosmos.io"
            ],
        "the chart installs {names:?}"
    );
    Ok(())
}

#[tokio::test]
async fn design_examples_are_accepted_without_losing_a_field() -> Result<()> {
    let client = host().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(Cluster::Host, "crd-valid").await?;

    let dir = testdata().join("valid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    ensure!(!files.is_empty(), "no examples in {}", dir.display());

    let mut problems = Vec::new();
    let mut accepted = 0;
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        let shown = file.file_name().unwrap_or_default().to_string_lossy();
        for object in parse_yaml::<DynamicObject>(&text)? {
            // What the apiserver accepts, `plugin-webhook validate` accepts too.
            let document = Document {
                source: shown.to_string(),
                value: serde_json::to_value(&object)?,
            };
            let report = authoring::validate(&[document], ns.name(), &any_host_path());
            for finding in report.findings {
                problems.push(format!("plugin-webhook validate: {finding}"));
            }
            match create(&client, ns.name(), &object).await? {
                Ok(stored) => {
                    accepted += 1;
                    let mut lost = Vec::new();
                    lost_fields(&object.data, &stored.data, "", &mut lost);
                    for loss in lost {
                        problems.push(format!("{shown}: {loss}"));
                    }
                }
                Err(status) => problems.push(format!("{shown}: rejected: {}", status.message)),
            }
        }
    }
    ensure!(
        problems.is_empty(),
        "examples not kept as written:\n{}",
        problems.join("\n")
    );
    ensure!(
        accepted >= 3,
        "only {accepted} example objects found in {}",
        dir.display()
    );
    ns.delete().await
}

#[tokio::test]
async fn invalid_specs_are_rejected_by_the_apiserver_where_the_schema_says_so() -> Result<()> {
    let client = host().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(Cluster::Host, "crd-invalid").await?;

    let path = testdata().join("invalid.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let cases: Vec<InvalidCase> =
        serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let cel_cases = cases.iter().filter(|c| c.apiserver == "cel").count();
    ensure!(
        cel_cases > 0,
        "{} has no case that CEL rejects",
        path.display()
    );

    let mut problems = Vec::new();
    for case in &cases {
        let verdict = create(&client, ns.name(), &case.object).await?;
        let name = &case.name;
        // `plugin-webhook validate` must find every case, naming the same field, whoever
        // rejects it here (the apiserver, or only the operator and webhook).
        let document = Document {
            source: "invalid.yaml".into(),
            value: serde_json::to_value(&case.object)?,
        };
        let report = authoring::validate(&[document], ns.name(), &Settings::default());
        if !report.findings.iter().any(|f| f.field == case.field) {
            problems.push(format!(
                "{name}: plugin-webhook validate does not name {}: {:?}",
                case.field, report.findings
            ));
        }
        match (case.apiserver.as_str(), verdict) {
            ("cel" | "schema", Ok(_)) => {
                problems.push(format!("{name}: accepted, but {} must reject it", case.apiserver));
            }
            ("cel" | "schema", Err(status)) => {
                // 422 Invalid is validation; anything else (403, 500) means the case never
                // reached the schema.
                if !status.is_invalid() {
                    problems.push(format!("{name}: {} {}, not 422 Invalid", status.code, status.message));
                } else if !status.message.contains(&case.field) {
                    problems.push(format!("{name}: error does not name {}: {}", case.field, status.message));
                } else if case.apiserver == "cel" && !status.message.contains(&case.message) {
                    problems.push(format!("{name}: error lacks {:?}: {}", case.message, status.message));
                }
            }
            ("none", Ok(_)) => {}
            ("none", Err(status)) => problems.push(format!(
                "{name}: the table says only the Rust validation rejects it, but the apiserver did: {}",
                status.message
            )),
            (other, _) => problems.push(format!("{name}: unknown apiserver value {other:?}")),
        }
    }
    ensure!(
        problems.is_empty(),
        "{} of {} cases disagree with {}:\n{}",
        problems.len(),
        cases.len(),
        path.display(),
        problems.join("\n")
    );
    ns.delete().await
}

#[test]
fn lost_fields_finds_dropped_and_changed_values() {
    let sent = serde_json::json!({"spec": {"a": 1, "b": {"c": "x"}, "l": [1, 2]}});
    let stored = serde_json::json!({"spec": {"a": 1, "b": {}, "l": [1, 3], "default": true}});
    let mut lost = Vec::new();
    lost_fields(&sent, &stored, "", &mut lost);
    assert_eq!(
        lost,
        [".spec.b.c was dropped", ".spec.l[1]: sent 2, stored 3"]
    );
}
