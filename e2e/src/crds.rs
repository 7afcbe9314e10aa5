//! Installing the chart's CRDs and applying arbitrary YAML, as a user would with kubectl.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::{Scope, pinned_kind};
use kube::{Api, Client};
use serde::Deserialize;

use crate::{FIELD_MANAGER, repo_dir, wait_for};

/// Bound on a CRD becoming Established (names accepted, API served).
const ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(60);

/// The chart's CRD folder, which the generator in `crates/api` writes.
pub fn chart_crd_dir() -> PathBuf {
    repo_dir().join("charts/kosmos-plugins/files/crds")
}

/// Every YAML document in `text` (separated by `---`), skipping empty ones.
pub fn parse_yaml<T: for<'de> Deserialize<'de>>(text: &str) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(document)
            .with_context(|| format!("parsing YAML document {}", i + 1))?;
        if value.is_null() {
            continue;
        }
        out.push(
            serde_yaml::from_value(value)
                .with_context(|| format!("reading YAML document {}", i + 1))?,
        );
    }
    Ok(out)
}

/// The CRDs in every `*.yaml` file of `dir`, in file-name order.
pub fn load_crds(dir: &Path) -> Result<Vec<CustomResourceDefinition>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading CRD folder {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut crds = Vec::new();
    for file in &files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        crds.extend(
            parse_yaml::<CustomResourceDefinition>(&text)
                .with_context(|| format!("reading CRDs from {}", file.display()))?,
        );
    }
    if crds.is_empty() {
        bail!(
            "no CRDs in {}: generate them from crates/api first (see README.md)",
            dir.display()
        );
    }
    Ok(crds)
}

/// Server-side applies the chart's CRDs and waits until each is Established. Returns their
/// names. Safe to call from many tests at once: the apply is idempotent.
pub async fn install_crds(client: &Client) -> Result<Vec<String>> {
    let crds = load_crds(&chart_crd_dir())?;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut names = Vec::new();
    for crd in &crds {
        let name = crd
            .metadata
            .name
            .clone()
            .context("a CRD in the chart has no name")?;
        api.patch(&name, &params, &Patch::Apply(crd))
            .await
            .with_context(|| format!("applying CRD {name}"))?;
        names.push(name);
    }
    for name in &names {
        wait_for(
            &format!("CRD {name} to be Established"),
            ESTABLISHED_TIMEOUT,
            || async {
                let crd = api.get(name).await?;
                let established = crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                Ok(established.then_some(()))
            },
        )
        .await?;
    }
    Ok(names)
}

/// An API for objects of `gvk`, found by discovery: namespaced in `namespace` when the kind is
/// namespaced, cluster-wide otherwise.
pub async fn dynamic_api(
    client: &Client,
    gvk: &GroupVersionKind,
    namespace: &str,
) -> Result<Api<DynamicObject>> {
    let (resource, capabilities) = pinned_kind(client, gvk)
        .await
        .with_context(|| format!("discovering {gvk:?}"))?;
    Ok(match capabilities.scope {
        Scope::Namespaced => Api::namespaced_with(client.clone(), namespace, &resource),
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    })
}

/// Server-side applies every object in `yaml` (namespaced ones into `namespace`, whatever their
/// manifest says) and returns what the apiserver stored.
pub async fn apply_yaml(
    client: &Client,
    namespace: &str,
    yaml: &str,
) -> Result<Vec<DynamicObject>> {
    let mut applied = Vec::new();
    for mut object in parse_yaml::<DynamicObject>(yaml)? {
        let types = object
            .types
            .clone()
            .context("an object without apiVersion/kind")?;
        let gvk = GroupVersionKind::try_from(&types)
            .with_context(|| format!("reading apiVersion {}", types.api_version))?;
        let name = object
            .metadata
            .name
            .clone()
            .with_context(|| format!("a {} without a name", types.kind))?;
        let api = dynamic_api(client, &gvk, namespace).await?;
        object.metadata.namespace = None;
        applied.push(
            api.patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER),
                &Patch::Apply(&object),
            )
            .await
            .with_context(|| format!("applying {} {name}", types.kind))?,
        );
    }
    Ok(applied)
}
