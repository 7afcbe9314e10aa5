//! Helpers shared by the webhook's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;

use k8s_openapi::api::batch::v1::Job;
use kosmos_api::contract::Action;
use kosmos_api::{VirtualCluster, VirtualClusterPlugin};

/// A bare executor Job for `plugin` as the operator creates it (first attempt).
pub fn bare_job(
    namespace: &str,
    virtual_cluster: &str,
    plugin: &VirtualClusterPlugin,
    action: Action,
) -> Job {
    bare_job_for(
        &self::virtual_cluster(namespace, virtual_cluster),
        plugin,
        action,
    )
}

/// Like [`bare_job`], for a VirtualCluster whose options count in the Job's hash.
pub fn bare_job_for(vc: &VirtualCluster, plugin: &VirtualClusterPlugin, action: Action) -> Job {
    kosmos_webhook::authoring::bare_job(
        plugin,
        vc,
        action,
        kosmos_webhook::authoring::DEFAULT_EXECUTOR_IMAGE,
    )
}

/// A VirtualCluster called `name` in `namespace` with an empty spec.
pub fn virtual_cluster(namespace: &str, name: &str) -> VirtualCluster {
    let mut vc = VirtualCluster::new(name, Default::default());
    vc.metadata.namespace = Some(namespace.into());
    vc
}

/// `plugin` parsed from YAML text, placed in `namespace`.
pub fn plugin_from_yaml(namespace: &str, text: &str) -> VirtualClusterPlugin {
    let mut value: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
    let map = value.as_mapping_mut().unwrap();
    map.entry("apiVersion".into())
        .or_insert_with(|| "kosmos.io/v1alpha1".into());
    map.entry("kind".into())
        .or_insert_with(|| "VirtualClusterPlugin".into());
    let mut plugin: VirtualClusterPlugin = serde_yaml::from_value(value).unwrap();
    plugin.metadata.namespace = Some(namespace.into());
    plugin
}

/// The webhook's settings in tests: hostPath allowed anywhere, as an admin must say explicitly
/// (`--allowed-host-path-prefixes=/`); everything else at its default.
pub fn any_host_path() -> kosmos_webhook::Settings {
    kosmos_webhook::Settings {
        allowed_host_path_prefixes: vec!["/".into()],
        ..kosmos_webhook::Settings::default()
    }
}

/// Folders holding kubectl, helm and kustomize as `e2e/build.sh` caches them.
pub fn tool_dirs() -> Vec<PathBuf> {
    kosmos_e2e::cached_tool_dirs()
}
